/*
 * HTTP ingress: baton's own HTTP/1.1 server (h1conn.h) on the libuv loop
 * (one thread, no locks).  Routes requests to pipelines; a connection
 * waits while its request runs and is answered with the outcome.  It
 * knows the daemon's public functions, not how requests are scheduled.
 */
#ifndef BT_HTTP_H
#define BT_HTTP_H

#include <stddef.h>

struct bt_daemon;
struct bt_http;

/*
 * Binds cfg->listen and starts serving on d's loop.  Returns 0 and sets
 * *out, or a negative code with a sentence in err.
 */
int bt_http_start(struct bt_daemon *d, struct bt_http **out, char *err,
		  size_t errlen);
/* Answers the requests whose outcome came since the last call (once per loop turn). */
void bt_http_flush(struct bt_http *h);
/* Answers accepted but not yet completely sent. */
unsigned bt_http_pending(const struct bt_http *h);
/* Bytes held for clients now (request bodies and answers not yet taken). */
size_t bt_http_buffered(const struct bt_http *h);
/* Stops listening, closes every connection; frees itself asynchronously. */
void bt_http_close(struct bt_http *h);
int bt_http_port(const struct bt_http *h);

/* dashboard.c: GET / (the page; it fetches /v1/status itself). */
struct bt_h1_conn;
int bt_dashboard_is_route(const char *url);
/* Answers c's request with the page; returns 0. */
int bt_dashboard_send(struct bt_h1_conn *c);

#endif
