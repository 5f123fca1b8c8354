/*
 * HTTP/1.1 connections on baton's loop: accepts (at most
 * http.max_connections at a time; the rest wait in the listen backlog),
 * reads requests with h1.h's parser, hands each to the caller through
 * bt_h1_ops, and writes the answers, one request at a time per connection,
 * pipelined ones in order.  Idle connections are closed after
 * http.idle_timeout_s, and so are (with a 408) those whose request head
 * takes longer than that to arrive, or whose body comes slower (h1conn.c).
 * What a request means is the caller's (http.c).
 */
#ifndef BT_H1CONN_H
#define BT_H1CONN_H

#include <stddef.h>
#include <uv.h>

#include "h1.h"

struct bt_config;
struct bt_h1_server;
struct bt_h1_conn;

/*
 * The caller's side.  No callback is called from inside bt_h1_answer: an
 * answer given in head or complete (or later) takes effect after it returns.
 */
struct bt_h1_ops {
	/*
	 * A request's head is in: returns the request's context, which the
	 * calls below get.  May answer at once (bt_h1_answer); an answer given
	 * before the body is all read closes the connection after it.
	 */
	void *(*head)(void *arg, struct bt_h1_conn *c, const struct bt_h1_head *h);
	/* Some of the body; may answer too (a body over a limit), as head may. */
	void (*body)(void *ctx, const char *p, size_t n);
	/* The body is all in: answer now or later. */
	void (*complete)(void *ctx);
	/* The answer is out, or the connection is gone: ctx is not called again. */
	void (*ended)(void *ctx);
	/*
	 * A request refused by the parser (status 400, 431, 501, 505; why says
	 * why), or whose head or body came too slowly (408): the caller answers
	 * it with bt_h1_answer.  The connection closes after that answer.
	 */
	void (*refuse)(void *arg, struct bt_h1_conn *c, int status, const char *why);
	/* Asks for bt_h1_flush within this loop turn. */
	void (*wake)(void *arg);
	/* Twice a second. */
	void (*tick)(void *arg);
};

/*
 * Listens on (*cfgp)->listen_host:listen_port (an IPv4 or IPv6 address);
 * limits are read from *cfgp as they are needed, so that a reload changes
 * them.  Returns 0 and sets *out, or a negative code with a sentence in err.
 */
int bt_h1_listen(uv_loop_t *loop, struct bt_config *const *cfgp, const struct bt_h1_ops *ops,
		 void *arg, struct bt_h1_server **out, char *err, size_t errlen);
int bt_h1_port(const struct bt_h1_server *s);
unsigned bt_h1_connections(const struct bt_h1_server *s);

/*
 * Answers c's current request: status, the Content-Type (or NULL), other
 * header fields as name/value pairs ending in NULL (a NULL value skips the
 * pair), and a body of len bytes that c sends without copying and then
 * gives back to release(rarg, body, len) (release NULL: the body is
 * static).  Called once per request, from any callback or later.
 */
void bt_h1_answer(struct bt_h1_conn *c, int status, const char *ctype,
		  const char *const *headers, char *body, size_t len,
		  void (*release)(void *rarg, char *body, size_t len), void *rarg);

/* Closes c now, its answer unsent; its request's ended is called before this returns. */
void bt_h1_abort(struct bt_h1_conn *c);

/* Moves on the connections whose answers were given since the last call. */
void bt_h1_flush(struct bt_h1_server *s);

/* Stops listening, closes every connection (calling ended); frees itself asynchronously. */
void bt_h1_close(struct bt_h1_server *s);

#endif
