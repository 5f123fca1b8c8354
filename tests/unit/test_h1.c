/*
 * Unit tests of the HTTP/1.1 request parser (src/http/h1.c): requests fed
 * as a connection feeds them, cut at every byte boundary; chunked bodies;
 * the limits; and the answer (a status and a sentence, or none) each
 * malformed request gets.  Input sits in exact-size buffers so that ASan
 * sees any read past it.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/h1.h"

TestSuite(h1, .timeout = 60);

/* What a stream of requests came to. */
struct got {
	int nreq;
	int status; /* of the refusal that ended the stream: -1 not HTTP, 0 none */
	const char *why;
	char line[8][300]; /* per request: "METHOD path len body" */
};

struct feeder {
	char *in; /* exactly len bytes */
	size_t len, scanned;
	int in_body;
	struct bt_h1_head head;
	struct bt_h1_body body;
	char data[4096];
	size_t dlen;
	struct got *g;
};

static void append(struct feeder *f, const char *p, size_t n)
{
	char *b = malloc(f->len + n);
	cr_assert_not_null(b);
	if (f->len)
		memcpy(b, f->in, f->len);
	memcpy(b + f->len, p, n);
	free(f->in);
	f->in = b;
	f->len += n;
}

/* Parses what it can of f's input, as h1conn.c does; 0, or 1 when refused. */
static int drain(struct feeder *f)
{
	size_t off = 0;
	int stop = 0;
	while (!stop) {
		const char *p = f->in + off;
		size_t n = f->len - off;
		if (!f->in_body) {
			size_t skip = f->scanned ? 0 : bt_h1_skip_empty(p, n);
			if (skip) {
				off += skip;
				continue;
			}
			size_t end = bt_h1_head_end(p, n, &f->scanned);
			if (!end) {
				if (n > BT_H1_HEAD_MAX) {
					f->g->status = 431;
					stop = 1;
				}
				break;
			}
			f->scanned = 0;
			int st = bt_h1_parse_head(&f->head, p, end, &f->g->why);
			if (st) {
				f->g->status = st;
				stop = 1;
				break;
			}
			off += end;
			bt_h1_body_init(&f->body, &f->head);
			f->in_body = 1;
			f->dlen = 0;
			continue;
		}
		if (f->body.done) {
			cr_assert_lt(f->g->nreq, 8);
			snprintf(f->g->line[f->g->nreq++], sizeof(f->g->line[0]), "%s %s %zu %.*s",
				 f->head.method, f->head.path, f->dlen, (int)f->dlen, f->data);
			f->in_body = 0;
			continue;
		}
		if (!n)
			break;
		const char *d;
		size_t dl;
		long k = bt_h1_body_step(&f->body, p, n, &d, &dl, &f->g->why);
		if (k < 0) {
			f->g->status = 400;
			stop = 1;
			break;
		}
		cr_assert_gt(k, 0, "no progress over %zu bytes", n);
		cr_assert_leq(f->dlen + dl, sizeof(f->data));
		if (dl) /* d may be NULL when no data came (memcpy from NULL is UB) */
			memcpy(f->data + f->dlen, d, dl);
		f->dlen += dl;
		off += (size_t)k;
	}
	/* What is left is kept, in an exact-size buffer again. */
	char *rest = NULL;
	size_t rn = f->len - off;
	if (rn) {
		rest = malloc(rn);
		memcpy(rest, f->in + off, rn);
	}
	free(f->in);
	f->in = rest;
	f->len = rn;
	return stop;
}

/* Feeds s in pieces that end at the given cut points (ascending). */
static void feed(const char *s, size_t n, const size_t *cuts, int ncuts, struct got *g)
{
	struct feeder f = {0};
	size_t from = 0;
	memset(g, 0, sizeof(*g));
	f.g = g;
	for (int i = 0; i <= ncuts; i++) {
		size_t to = i < ncuts ? cuts[i] : n;
		if (to > from) {
			append(&f, s + from, to - from);
			if (drain(&f))
				break;
		}
		from = to;
	}
	free(f.in);
	bt_h1_head_release(&f.head);
}

static void feed_whole(const char *s, struct got *g)
{
	feed(s, strlen(s), NULL, 0, g);
}

static const char pipelined[] =
	"POST /v1/pipelines/p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
	"\r\n" /* an empty line between requests is allowed */
	"POST /a%20b?x=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
	"3;name=value\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer-One: 1\r\nT2: 2\r\n\r\n"
	"GET /v1/status HTTP/1.1\nHost: x\n\n"; /* bare LFs */

static void check_pipelined(const struct got *g)
{
	cr_assert_eq(g->status, 0, "refused: %d %s after %d", g->status, g->why ? g->why : "", g->nreq);
	cr_assert_eq(g->nreq, 3);
	cr_assert_str_eq(g->line[0], "POST /v1/pipelines/p 5 hello");
	cr_assert_str_eq(g->line[1], "POST /a b 19 abc0123456789abcdef");
	cr_assert_str_eq(g->line[2], "GET /v1/status 0 ");
}

Test(h1, pipelined_requests_split_at_every_byte_boundary_parse_the_same)
{
	size_t n = strlen(pipelined);
	struct got g;
	feed(pipelined, n, NULL, 0, &g);
	check_pipelined(&g);
	for (size_t cut = 1; cut < n; cut++) {
		feed(pipelined, n, &cut, 1, &g);
		check_pipelined(&g);
	}
	for (size_t a = 1; a < n; a += 7)
		for (size_t b = a + 1; b < n; b += 5) {
			size_t cuts[] = {a, b};
			feed(pipelined, n, cuts, 2, &g);
			check_pipelined(&g);
		}
	/* One byte at a time. */
	size_t *every = malloc(n * sizeof(*every));
	for (size_t i = 0; i < n; i++)
		every[i] = i + 1;
	feed(pipelined, n, every, (int)n, &g);
	check_pipelined(&g);
	free(every);
}

static int parse(const char *s, struct bt_h1_head *h, const char **why)
{
	size_t scanned = 0, n = strlen(s);
	char *copy = malloc(n);
	memcpy(copy, s, n);
	size_t end = bt_h1_head_end(copy, n, &scanned);
	cr_assert_eq(end, n, "the head of '%s' ends at %zu", s, end);
	*why = "";
	int st = bt_h1_parse_head(h, copy, end, why);
	free(copy);
	return st;
}

Test(h1, fields_are_looked_up_case_insensitively_and_trimmed)
{
	struct bt_h1_head h = {0};
	const char *why;
	cr_assert_eq(parse("GET /x/%41%00b?after=5&wait_ms=1%30&flag&sp=a+b HTTP/1.1\r\n"
			   "HOST: x\r\nBaton-Meta: \t {\"k\": 1} \t\r\nEmpty:\r\n\r\n",
			   &h, &why),
		     0, "%s", why);
	cr_assert_str_eq(h.method, "GET");
	cr_assert_str_eq(h.path, "/x/A%00b"); /* %00 stays: a NUL would cut the path */
	cr_assert_str_eq(bt_h1_field(&h, "baton-meta"), "{\"k\": 1}");
	cr_assert_str_eq(bt_h1_field(&h, "host"), "x");
	cr_assert_str_eq(bt_h1_field(&h, "empty"), "");
	cr_assert_null(bt_h1_field(&h, "after"));
	cr_assert_str_eq(bt_h1_arg(&h, "after"), "5");
	cr_assert_str_eq(bt_h1_arg(&h, "wait_ms"), "10");
	cr_assert_str_eq(bt_h1_arg(&h, "flag"), "");
	cr_assert_str_eq(bt_h1_arg(&h, "sp"), "a b");
	cr_assert_null(bt_h1_arg(&h, "Host"));
	cr_assert_eq(h.keep_alive, 1);
	cr_assert_eq(h.length, -1);
	bt_h1_head_release(&h);
}

Test(h1, absolute_form_targets_are_taken_as_their_path)
{
	static const struct {
		const char *target, *path, *arg;
	} cases[] = {
		{"http://localhost:8080/v1/status", "/v1/status", NULL},
		{"HTTPS://h/a%20b?x=1", "/a b", "1"},
		{"http://h", "/", NULL},
		{"http://h?x=2", "/", "2"},
		{"http:///p", "/p", NULL},
		{"http://?x=3", "/", "3"},
		{"/http://h/p", "/http://h/p", NULL}, /* origin-form: as it is */
		{"ftp://h/p", "ftp://h/p", NULL},
	};
	struct bt_h1_head h = {0};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char req[200];
		const char *why;
		snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", cases[i].target);
		cr_assert_eq(parse(req, &h, &why), 0, "%s: %s", cases[i].target, why);
		cr_assert_str_eq(h.path, cases[i].path, "%s", cases[i].target);
		const char *x = bt_h1_arg(&h, "x");
		if (cases[i].arg)
			cr_assert(x && !strcmp(x, cases[i].arg), "%s: x=%s", cases[i].target, x);
		else
			cr_assert_null(x, "%s", cases[i].target);
	}
	bt_h1_head_release(&h);
}

Test(h1, keep_alive_follows_the_version_and_connection)
{
	struct bt_h1_head h = {0};
	const char *why;
	cr_assert_eq(parse("GET / HTTP/1.0\r\n\r\n", &h, &why), 0);
	cr_assert_eq(h.keep_alive, 0);
	cr_assert_eq(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &h, &why), 0);
	cr_assert_eq(h.keep_alive, 1);
	cr_assert_eq(parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n",
			   &h, &why), 0);
	cr_assert_eq(h.keep_alive, 0);
	cr_assert_eq(parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: closed\r\n\r\n", &h, &why), 0);
	cr_assert_eq(h.keep_alive, 1);
	cr_assert_eq(parse("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n"
			   "Content-Length: 3\r\n\r\n", &h, &why), 0);
	cr_assert_eq(h.expect_continue, 1);
	cr_assert_eq(h.length, 3);
	cr_assert_eq(parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", &h, &why), 0);
	cr_assert_eq(h.expect_continue, 0); /* HTTP/1.0 clients do not wait for it */
	cr_assert_eq(parse("GET / HTTP/1.7\r\nHost: x\r\n\r\n", &h, &why), 0);
	cr_assert_eq(h.minor, 1);
	bt_h1_head_release(&h);
}

struct refusal {
	const char *head;
	int status;
	const char *sentence; /* in why */
};

Test(h1, malformed_heads_get_their_status_and_sentence)
{
	static const struct refusal cases[] = {
		/* Not HTTP at all: closed without an answer. */
		{"GET\r\n\r\n", -1, NULL},
		{"\x01\x02garbage\r\n\r\n", -1, NULL},
		{"GET /\r\n\r\n", -1, NULL},
		{"GET  / HTTP/1.1\r\n\r\n", -1, NULL},
		{"GET / HTTP/1.1 \r\n\r\n", -1, NULL},
		{"GET / HTTP/1.1\rX\r\n\r\n", -1, NULL},
		{"GET / http/1.1\r\n\r\n", -1, NULL},
		{"GET / HTTP/11\r\n\r\n", -1, NULL},
		{"G(T / HTTP/1.1\r\n\r\n", -1, NULL},
		{"GET /a\x7f HTTP/1.1\r\n\r\n", -1, NULL},
		/* HTTP, another version. */
		{"POST / HTTP/9.9\r\n\r\n", 505, "HTTP/1.0 and HTTP/1.1"},
		{"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, "HTTP/1.0 and HTTP/1.1"},
		/* Bad fields. */
		{"GET / HTTP/1.1\r\n\r\n", 400, "Host"},
		{"GET / HTTP/1.1\r\nHost: x\r\nNo colon\r\n\r\n", 400, "'name: value'"},
		{"GET / HTTP/1.1\r\nHost: x\r\nhost: y\r\n\r\n", 400, "one Host"},
		{"GET / HTTP/1.0\r\nHost: x\r\nHost: x\r\n\r\n", 400, "one Host"},
		{"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, "'name: value'"},
		{"GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", 400, "'name: value'"},
		{"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n folded\r\n\r\n", 400, "folding"},
		{"GET / HTTP/1.1\r\nHost: x\r\nA: b\x01\r\n\r\n", 400, "control character"},
		{"GET / HTTP/1.1\r\nHost: x\r\nA: b\rc\r\n\r\n", 400, "bare CR"},
		/* Framing beyond doubt, or refused. */
		{"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400,
		 "Content-Length headers that disagree"},
		{"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, "whole number"},
		{"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", 400, "whole number"},
		{"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5 5\r\n\r\n", 400, "whole number"},
		{"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", 400, "whole number"},
		{"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n", 400, "whole number"},
		{"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400,
		 "too large"},
		{"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775808\r\n\r\n", 400,
		 "too large"},
		{"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
		 400, "both Transfer-Encoding and Content-Length"},
		{"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: identity\r\n\r\n",
		 400, "both"},
		{"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "HTTP/1.0"},
		{"POST / HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
		 "HTTP/1.0"},
		{"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501,
		 "other than chunked"},
		{"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
		 "Transfer-Encoding: chunked\r\n\r\n", 501, "other than chunked"},
	};
	struct bt_h1_head h = {0};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *why;
		int st = parse(cases[i].head, &h, &why);
		cr_assert_eq(st, cases[i].status, "'%s': %d (%s), not %d", cases[i].head, st, why,
			     cases[i].status);
		if (cases[i].sentence)
			cr_assert(strstr(why, cases[i].sentence), "'%s': '%s'", cases[i].head, why);
	}
	/* The same length twice is merely redundant; the largest length is taken. */
	const char *why;
	cr_assert_eq(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
			   "content-length: 3\r\n\r\n", &h, &why), 0, "%s", why);
	cr_assert_eq(h.length, 3);
	cr_assert_eq(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775807\r\n\r\n",
			   &h, &why), 0, "%s", why);
	cr_assert_eq(h.length, INT64_MAX);
	cr_assert_eq(parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n",
			   &h, &why), 0, "%s", why);
	cr_assert_eq(h.chunked, 1);
	bt_h1_head_release(&h);
}

Test(h1, a_nul_byte_after_the_request_line_gets_400_and_in_it_no_answer)
{
	static const char in_field[] = "GET / HTTP/1.1\r\nHost: x\r\nA: b\0c\r\n\r\n";
	static const char in_name[] = "GET / HTTP/1.1\r\nHost: x\r\nA\0: bc\r\n\r\n";
	static const char in_line[] = "GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n";
	struct bt_h1_head h = {0};
	const char *why = "";
	cr_assert_eq(bt_h1_parse_head(&h, in_field, sizeof(in_field) - 1, &why), 400);
	cr_assert(strstr(why, "NUL"), "%s", why);
	cr_assert_eq(bt_h1_parse_head(&h, in_name, sizeof(in_name) - 1, &why), 400);
	cr_assert_eq(bt_h1_parse_head(&h, in_line, sizeof(in_line) - 1, &why), -1);
	bt_h1_head_release(&h);
}

Test(h1, heads_over_32_kib_are_refused_and_up_to_it_pass)
{
	struct bt_h1_head h = {0};
	const char *why;
	const char *pre = "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ";
	size_t fixed = strlen(pre) + 4; /* and "\r\n\r\n" */
	for (size_t total = BT_H1_HEAD_MAX - 1; total <= BT_H1_HEAD_MAX + 1; total++) {
		size_t pad = total - fixed;
		char *s = malloc(total + 1);
		strcpy(s, pre);
		memset(s + strlen(pre), 'a', pad);
		strcpy(s + strlen(pre) + pad, "\r\n\r\n");
		cr_assert_eq(strlen(s), total);
		int st = parse(s, &h, &why);
		cr_assert_eq(st, total > BT_H1_HEAD_MAX ? 431 : 0, "%zu bytes: %d", total, st);
		if (st)
			cr_assert(strstr(why, "32 KiB limit"));
		free(s);
	}
	/* A head still unterminated past the limit is refused by whoever feeds it. */
	size_t n = 40000;
	char *s = malloc(n + 1);
	strcpy(s, pre);
	memset(s + strlen(pre), 'a', n - strlen(pre));
	s[n] = '\0';
	struct got g;
	feed_whole(s, &g);
	cr_assert_eq(g.status, 431);
	cr_assert_eq(g.nreq, 0);
	free(s);
	bt_h1_head_release(&h);
}

/* Decodes body after a chunked head; returns the data, or NULL with *why. */
static char *chunked(const char *body, const char **why, size_t *used)
{
	struct bt_h1_head h = {0};
	h.chunked = 1;
	struct bt_h1_body b;
	bt_h1_body_init(&b, &h);
	size_t n = strlen(body), off = 0, out_len = 0;
	char *copy = malloc(n), *out = calloc(1, n + 1);
	memcpy(copy, body, n);
	while (off < n && !b.done) {
		const char *d;
		size_t dl;
		long k = bt_h1_body_step(&b, copy + off, n - off, &d, &dl, why);
		if (k < 0) {
			free(copy);
			free(out);
			return NULL;
		}
		if (dl)
			memcpy(out + out_len, d, dl);
		out_len += dl;
		off += (size_t)k;
	}
	*used = b.done ? off : 0;
	free(copy);
	return out;
}

Test(h1, chunked_bodies_with_extensions_and_trailers)
{
	const char *why = NULL;
	size_t used;
	char *d = chunked("5;a=b;c=\"quoted; value\"\r\nhello\r\n1 ; x\r\n!\r\n"
			  "0;last=1\r\nTrailer: yes\r\nT2:\r\n\r\nNEXT", &why, &used);
	cr_assert_not_null(d, "%s", why);
	cr_assert_str_eq(d, "hello!");
	cr_assert_eq(used, strlen("5;a=b;c=\"quoted; value\"\r\nhello\r\n1 ; x\r\n!\r\n"
				  "0;last=1\r\nTrailer: yes\r\nT2:\r\n\r\n"));
	free(d);
	d = chunked("000A\r\nabcdefghij\r\n0\r\n\r\n", &why, &used); /* leading zeros, uppercase */
	cr_assert_not_null(d, "%s", why);
	cr_assert_str_eq(d, "abcdefghij");
	free(d);
	d = chunked("0\r\n\r\n", &why, &used);
	cr_assert_str_eq(d, "");
	cr_assert_eq(used, 5);
	free(d);

	static const struct {
		const char *body, *sentence;
	} bad[] = {
		{"x\r\n", "hexadecimal"},
		{";ext\r\n", "hexadecimal"},
		{"5\r\nhello!\r\n", "longer than its size"},
		{"5\r\nhelloXY", "longer than its size"},
		{"5\rX", "bare CR"},
		{"1000000000000000\r\n", "too large"},
		{"0\r\nTrailer\rX", "bare CR"},
		{"0\r\n\rX", "empty line"},
		/* Only CRLF ends a line of the framing (what a proxy may take). */
		{"5\nhello\r\n", "bare LF"},
		{"5;a\nhello\r\n", "bare LF"},
		{"5\r\nhello\n0\r\n\r\n", "not followed by CRLF"},
		{"5\r\nhello\r\n0\r\n\n", "bare LF"},
		{"0\r\nT: v\n\r\n", "bare LF"},
		{"5 junk\r\n", "other than an extension"},
		{"5;a\x01b\r\n", "control character"},
		{"0\r\nT: a\x7f\r\n\r\n", "control character"},
		{"00000000000000000000000000000000000000000000000001000000000000000\r\n", "too large"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		d = chunked(bad[i].body, &why, &used);
		cr_assert_null(d, "'%s' was taken", bad[i].body);
		cr_assert(strstr(why, bad[i].sentence), "'%s': '%s'", bad[i].body, why);
	}
	/* Extensions and trailers are bounded. */
	size_t n = 10000;
	char *s = malloc(n + 1);
	memset(s, 'e', n);
	memcpy(s, "1;", 2);
	s[n] = '\0';
	cr_assert_null(chunked(s, &why, &used));
	cr_assert(strstr(why, "extensions are too long"), "%s", why);
	free(s);
	n = BT_H1_HEAD_MAX + 100;
	s = malloc(n + 1);
	memset(s, 't', n);
	memcpy(s, "0\r\nT:", 5);
	s[n] = '\0';
	cr_assert_null(chunked(s, &why, &used));
	cr_assert(strstr(why, "trailer fields"), "%s", why);
	free(s);
}

Test(h1, a_content_length_body_ends_where_it_says)
{
	struct got g;
	/* "def" is the next request's line: not HTTP, so the stream ends there. */
	feed_whole("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcdef\r\n\r\n", &g);
	cr_assert_eq(g.nreq, 1);
	cr_assert_str_eq(g.line[0], "POST /p 3 abc");
	cr_assert_eq(g.status, -1);
	feed_whole("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
		   "POST /q HTTP/1.1\r\nHost: x\r\n\r\n", &g);
	cr_assert_eq(g.nreq, 2);
	cr_assert_str_eq(g.line[1], "POST /q 0 ");
}

Test(h1, reason_phrases)
{
	cr_assert_str_eq(bt_h1_reason(200), "OK");
	cr_assert_str_eq(bt_h1_reason(431), "Request Header Fields Too Large");
	cr_assert_str_eq(bt_h1_reason(299), "Unknown");
}
