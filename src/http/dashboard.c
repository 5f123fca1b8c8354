/*
 * GET /: the dashboard, one self-contained page (dashboard.html, embedded
 * at build time by embed.py).  It holds no data: the page polls
 * /v1/status with the API's token, so serving it needs no token and adds
 * no route that could leak anything.  No SSE: polling keeps nothing
 * buffered per client, so a browser that stops reading costs nothing.
 */
#include <microhttpd.h>
#include <string.h>

#include "http.h"

extern const char bt_dashboard_html[];
extern const size_t bt_dashboard_html_len;

int bt_dashboard_is_route(const char *url)
{
	return !strcmp(url, "/") || !strcmp(url, "/index.html");
}

int bt_dashboard_send(struct MHD_Connection *mc)
{
	/* The page is static: MHD sends it from the binary without a copy. */
	struct MHD_Response *resp = MHD_create_response_from_buffer(
		bt_dashboard_html_len, (void *)bt_dashboard_html, MHD_RESPMEM_PERSISTENT);
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	/* Nothing but this page's own script and same-origin fetches. */
	MHD_add_response_header(resp, "Content-Security-Policy",
				"default-src 'none'; script-src 'unsafe-inline'; "
				"style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
				"frame-ancestors 'none'");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	enum MHD_Result r = MHD_queue_response(mc, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return r;
}
