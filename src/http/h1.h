/*
 * HTTP/1.1 requests, parsed: the head (request line and header fields) of
 * a request whose bytes are all there, and its body, Content-Length or
 * chunked, decoded incrementally.  Pure: no sockets, no loop, no
 * allocation but the head's own storage.  The connection that feeds it is
 * h1conn.h's; what a request means is http.c's.
 *
 * The head's lines may end in CRLF or in a bare LF (RFC 9112 §2.2 lets a
 * recipient accept that); a bare CR anywhere in the head is an error.  The
 * lines of a chunked body's framing (sizes, extensions, trailers) end in
 * CRLF only (§7.1), as a proxy in front may read them.
 */
#ifndef BT_H1_H
#define BT_H1_H

#include <stddef.h>
#include <stdint.h>

/* The request line and header fields together, terminators included. */
#define BT_H1_HEAD_MAX (32 * 1024)

struct bt_h1_field {
	const char *name; /* as sent; looked up case-insensitively */
	const char *value; /* optional whitespace trimmed */
};

struct bt_h1_head {
	char *method;
	char *path; /* the target up to '?', %-decoded (bt_h1_unescape) */
	int minor; /* HTTP/1.minor: 0, or 1 (for 1.1 and any later 1.x) */
	int keep_alive; /* the connection may carry another request after this one */
	int chunked; /* Transfer-Encoding: chunked */
	int64_t length; /* Content-Length, or -1 */
	int expect_continue; /* Expect: 100-continue */
	struct bt_h1_field *fields;
	int nfields;
	struct bt_h1_field *args; /* the query string's arguments, %-decoded */
	int nargs;
	/* Storage, kept across requests by the caller. */
	char *text;
	size_t text_cap;
	int fields_cap;
};

/*
 * How many bytes of empty lines p starts with: a request may follow a
 * CRLF (RFC 9112 §2.2), and these are skipped before its line.
 */
size_t bt_h1_skip_empty(const char *p, size_t n);

/*
 * Where the head at p ends: its length up to and including the empty line,
 * or 0 when that has not arrived.  *scanned (0 at first) is how far an
 * earlier call looked, so that a head that trickles in is scanned once.
 */
size_t bt_h1_head_end(const char *p, size_t n, size_t *scanned);

/*
 * Parses the complete head p[0..len) (from bt_h1_head_end) into h, which
 * keeps a copy: h's strings stay valid until the next parse or
 * bt_h1_head_release.  Returns 0; a status to answer with *why (400 a bad
 * field or framing, 431 too long, 501 a transfer coding other than
 * chunked, 505 an HTTP version other than 1.x); or -1 when the request line
 * is not HTTP at all, which is not answered.
 */
int bt_h1_parse_head(struct bt_h1_head *h, const char *p, size_t len, const char **why);
void bt_h1_head_release(struct bt_h1_head *h);

/* A header field's value (the first of that name), or NULL. */
const char *bt_h1_field(const struct bt_h1_head *h, const char *name);
/* A query argument's value ("" for "?a"), or NULL. */
const char *bt_h1_arg(const struct bt_h1_head *h, const char *name);

/*
 * %-decodes s in place and returns its new length.  "%00" stays as it is:
 * a decoded NUL would cut the string short ("p%00x" would name "p").
 */
size_t bt_h1_unescape(char *s);

/* A request body being decoded. */
struct bt_h1_body {
	int chunked;
	int done; /* the whole body has been read */
	int state; /* chunked: where in the framing (h1.c) */
	uint64_t left; /* bytes of data left: of the body, or of the chunk */
	size_t line; /* bytes of the current chunk-size or trailer line */
	size_t trailer; /* bytes of trailer fields so far */
};

void bt_h1_body_init(struct bt_h1_body *b, const struct bt_h1_head *h);

/*
 * Decodes from p[0..n): returns how many bytes it took (more than 0 when n
 * is, unless the body was already done), and when some of them are body
 * data, *data and *dlen name them (within p; else *dlen is 0).  Returns -1
 * with *why for broken chunked framing.
 */
long bt_h1_body_step(struct bt_h1_body *b, const char *p, size_t n, const char **data,
		     size_t *dlen, const char **why);

/* The standard reason phrase of a status ("OK", "Not Found"), or "Unknown". */
const char *bt_h1_reason(int status);

#endif
