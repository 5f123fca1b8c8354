/*
 * GET /: the dashboard, one self-contained page (dashboard.html, embedded
 * at build time by embed.py).  It holds no data: the page polls
 * /v1/status with the API's token, so serving it needs no token and adds
 * no route that could leak anything.  No SSE: polling keeps nothing
 * buffered per client, so a browser that stops reading costs nothing.
 */
#include <string.h>

#include "h1conn.h"
#include "http.h"

extern const char bt_dashboard_html[];
extern const size_t bt_dashboard_html_len;

int bt_dashboard_is_route(const char *url)
{
	return !strcmp(url, "/") || !strcmp(url, "/index.html");
}

int bt_dashboard_send(struct bt_h1_conn *c)
{
	/* Nothing but this page's own script and same-origin fetches. */
	static const char *const headers[] = {
	    "Cache-Control", "no-cache",
	    "Content-Security-Policy",
	    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
	    "connect-src 'self'; img-src data:; frame-ancestors 'none'",
	    "X-Content-Type-Options", "nosniff", NULL};
	/* The page is static: sent from the binary without a copy. */
	bt_h1_answer(c, 200, "text/html; charset=utf-8", headers, (char *)bt_dashboard_html,
		     bt_dashboard_html_len, NULL, NULL);
	return 0;
}
