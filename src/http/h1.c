/*
 * The HTTP/1.1 request parser (h1.h): heads parsed whole once their empty
 * line is in, bodies decoded a byte range at a time.  What is refused and
 * why is decided here; answering is the connection's business.
 */
#include "h1.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../common/common.h"

/* A chunk-size line with its extensions; longer is not a client's mistake. */
#define CHUNK_LINE_MAX 4096

size_t bt_h1_skip_empty(const char *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		if (p[i] == '\n')
			i++;
		else if (p[i] == '\r' && i + 1 < n && p[i + 1] == '\n')
			i += 2;
		else
			break;
	}
	return i;
}

size_t bt_h1_head_end(const char *p, size_t n, size_t *scanned)
{
	/* A lone CR may yet be an empty line to skip: not scanned past. */
	if (n < 2)
		return 0;
	for (size_t i = *scanned; i < n; i++) {
		if (p[i] != '\n')
			continue;
		if (i + 1 < n && p[i + 1] == '\n')
			return i + 2;
		if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n')
			return i + 3;
		if (i + 2 >= n) {
			/* What follows this line's end has not all arrived. */
			*scanned = i;
			return 0;
		}
	}
	*scanned = n;
	return 0;
}

/* RFC 9110 §5.6.2: the characters of a token (methods, field names). */
static int tchar(unsigned char c)
{
	if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
		return 1;
	return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0'
	       : c >= 'a' && c <= 'f' ? c - 'a' + 10
	       : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

size_t bt_h1_unescape(char *s)
{
	char *w = s;
	for (const char *r = s; *r; r++) {
		int hi, lo;
		if (r[0] == '%' && (hi = hexval(r[1])) >= 0 && (lo = hexval(r[2])) >= 0 &&
		    (hi || lo)) {
			*w++ = (char)(hi * 16 + lo);
			r += 2;
		} else {
			*w++ = *r;
		}
	}
	*w = '\0';
	return (size_t)(w - s);
}

static struct bt_h1_field *add_field(struct bt_h1_head *h, int *n)
{
	if (*n == h->fields_cap) {
		h->fields_cap = h->fields_cap ? h->fields_cap * 2 : 32;
		h->fields = bt_realloc(h->fields, (size_t)h->fields_cap * sizeof(*h->fields));
	}
	return &h->fields[(*n)++];
}

/*
 * The next line of s, NUL-terminated in place: its end (without CR) and
 * where the one after starts.  Returns -1 for a CR that does not end it.
 */
static int next_line(char *s, char **after)
{
	char *lf = strchr(s, '\n');
	char *end = lf;
	if (end > s && end[-1] == '\r')
		end--;
	if (memchr(s, '\r', (size_t)(end - s)))
		return -1;
	*end = '\0';
	*after = lf + 1;
	return 0;
}

/* "GET /path?q HTTP/1.1": -1 when it is not a request line at all. */
static int request_line(struct bt_h1_head *h, char *line, char **target, const char **why)
{
	char *sp = line;
	while (tchar((unsigned char)*sp))
		sp++;
	if (sp == line || *sp != ' ')
		return -1;
	*sp = '\0';
	h->method = line;
	char *t = sp + 1, *e = t;
	while ((unsigned char)*e > 0x20 && *e != 0x7f)
		e++;
	if (e == t || *e != ' ')
		return -1;
	*e = '\0';
	*target = t;
	const char *v = e + 1;
	if (strncmp(v, "HTTP/", 5) || hexval(v[5]) < 0 || v[5] > '9' || v[6] != '.' ||
	    hexval(v[7]) < 0 || v[7] > '9' || v[8])
		return -1;
	if (v[5] != '1') {
		*why = "only HTTP/1.0 and HTTP/1.1 are served";
		return 505;
	}
	h->minor = v[7] == '0' ? 0 : 1;
	return 0;
}

/* "name: value": 0, or 400 with *why. */
static int field_line(struct bt_h1_head *h, char *line, const char **why)
{
	if (*line == ' ' || *line == '\t') {
		*why = "a header line starts with whitespace (obsolete line folding is refused)";
		return 400;
	}
	char *c = line;
	while (tchar((unsigned char)*c))
		c++;
	if (c == line || *c != ':') {
		*why = "a header line is not 'name: value'";
		return 400;
	}
	*c++ = '\0';
	while (*c == ' ' || *c == '\t')
		c++;
	char *end = c + strlen(c);
	while (end > c && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	*end = '\0';
	for (const unsigned char *u = (const unsigned char *)c; *u; u++)
		if ((*u < 0x20 && *u != '\t') || *u == 0x7f) {
			*why = "a header value holds a control character";
			return 400;
		}
	struct bt_h1_field *f = add_field(h, &h->nfields);
	f->name = line;
	f->value = c;
	return 0;
}

/* Does the comma-separated list v hold token tok (case-insensitively)? */
static int has_token(const char *v, const char *tok)
{
	size_t n = strlen(tok);
	while (*v) {
		while (*v == ' ' || *v == '\t' || *v == ',')
			v++;
		size_t k = strcspn(v, ",");
		size_t t = k;
		while (t && (v[t - 1] == ' ' || v[t - 1] == '\t'))
			t--;
		if (t == n && !strncasecmp(v, tok, n))
			return 1;
		v += k;
	}
	return 0;
}

/* How the body is framed, beyond doubt (else a proxy could frame it otherwise). */
static int framing(struct bt_h1_head *h, const char **why)
{
	const char *cl = NULL, *te = NULL;
	int ntes = 0;
	for (int i = 0; i < h->nfields; i++) {
		const struct bt_h1_field *f = &h->fields[i];
		if (!strcasecmp(f->name, "Content-Length")) {
			if (cl && strcmp(cl, f->value)) {
				*why = "the request has Content-Length headers that disagree";
				return 400;
			}
			cl = f->value;
		} else if (!strcasecmp(f->name, "Transfer-Encoding")) {
			te = f->value;
			ntes++;
		}
	}
	/* RFC 9112 §6.1: an HTTP/1.0 hop may have passed it on unframed. */
	if (te && h->minor == 0) {
		*why = "Transfer-Encoding in an HTTP/1.0 request: its body's length is in doubt";
		return 400;
	}
	if (te && cl) {
		*why = "the request has both Transfer-Encoding and Content-Length";
		return 400;
	}
	if (te) {
		if (ntes > 1 || strcasecmp(te, "chunked")) {
			*why = "Transfer-Encoding other than chunked is not supported";
			return 501;
		}
		h->chunked = 1;
	}
	if (cl) {
		uint64_t v = 0;
		const char *d = cl;
		for (; *d >= '0' && *d <= '9'; d++) {
			if (v > ((uint64_t)INT64_MAX - (uint64_t)(*d - '0')) / 10) {
				*why = "Content-Length is too large";
				return 400;
			}
			v = v * 10 + (uint64_t)(*d - '0');
		}
		if (d == cl || *d) {
			*why = "Content-Length must be a whole number";
			return 400;
		}
		h->length = (int64_t)v;
	}
	return 0;
}

/*
 * The target in absolute-form ("http://host:port/path?q", which a server
 * must take, RFC 9112 §3.2.2) as origin-form ("/path?q"), in place; any
 * other target as it is.
 */
static char *origin_form(char *t)
{
	char *a;
	if (!strncasecmp(t, "http://", 7))
		a = t + 7;
	else if (!strncasecmp(t, "https://", 8))
		a = t + 8;
	else
		return t;
	char *end = a + strcspn(a, "/?");
	if (*end == '/')
		return end;
	/* No path: "/" over the authority's last byte (with none, "//"'s second). */
	end[-1] = '/';
	return end - 1;
}

/* "a=1&b=%20x": the arguments, decoded in place, after the fields. */
static void query_args(struct bt_h1_head *h, char *q)
{
	int n = h->nfields;
	while (q && *q) {
		char *amp = strchr(q, '&');
		if (amp)
			*amp = '\0';
		if (*q) {
			for (char *p = q; *p; p++)
				if (*p == '+')
					*p = ' ';
			char *eq = strchr(q, '=');
			if (eq)
				*eq++ = '\0';
			struct bt_h1_field *f = add_field(h, &n);
			bt_h1_unescape(q);
			if (eq)
				bt_h1_unescape(eq);
			f->name = q;
			f->value = eq ? eq : "";
		}
		q = amp ? amp + 1 : NULL;
	}
	h->nargs = n - h->nfields;
}

int bt_h1_parse_head(struct bt_h1_head *h, const char *p, size_t len, const char **why)
{
	h->method = h->path = NULL;
	h->minor = 1;
	h->keep_alive = 0;
	h->chunked = 0;
	h->length = -1;
	h->expect_continue = 0;
	h->nfields = h->nargs = 0;
	h->args = NULL;
	if (len > BT_H1_HEAD_MAX) {
		*why = "the request's line and headers are over the 32 KiB limit";
		return 431;
	}
	if (len + 1 > h->text_cap) {
		h->text_cap = len + 1;
		h->text = bt_realloc(h->text, h->text_cap);
	}
	memcpy(h->text, p, len);
	h->text[len] = '\0';
	/*
	 * A NUL would end the text early, and what follows would go unchecked:
	 * in the request line, it is not HTTP; after it, a request refused.
	 */
	const char *lf = memchr(h->text, '\n', len), *nul = memchr(h->text, '\0', len);
	if (!lf || (nul && nul < lf))
		return -1;
	char *line = h->text, *next, *target;
	if (next_line(line, &next))
		return -1;
	int st = request_line(h, line, &target, why);
	if (st)
		return st;
	if (nul) {
		*why = "a header line holds a NUL byte";
		return 400;
	}
	for (line = next; *line; line = next) {
		if (!strchr(line, '\n') || next_line(line, &next)) {
			*why = "a header line holds a bare CR";
			return 400;
		}
		if (!*line)
			break; /* the empty line */
		if ((st = field_line(h, line, why)))
			return st;
	}
	if ((st = framing(h, why)))
		return st;
	const char *conn = bt_h1_field(h, "Connection");
	int close = conn && has_token(conn, "close");
	h->keep_alive = !close && (h->minor == 1 || (conn && has_token(conn, "keep-alive")));
	const char *expect = bt_h1_field(h, "Expect");
	h->expect_continue = h->minor == 1 && expect && !strcasecmp(expect, "100-continue");
	int hosts = 0;
	for (int i = 0; i < h->nfields; i++)
		hosts += !strcasecmp(h->fields[i].name, "Host");
	if (h->minor == 1 && !hosts) {
		*why = "an HTTP/1.1 request must have a Host header";
		return 400;
	}
	/* RFC 9112 §3.2: which one a proxy went by is not known. */
	if (hosts > 1) {
		*why = "a request must have one Host header, not several";
		return 400;
	}
	target = origin_form(target);
	char *q = strchr(target, '?');
	if (q)
		*q++ = '\0';
	bt_h1_unescape(target);
	h->path = target;
	query_args(h, q);
	h->args = h->fields ? h->fields + h->nfields : NULL; /* NULL: none at all */
	return 0;
}

void bt_h1_head_release(struct bt_h1_head *h)
{
	free(h->text);
	free(h->fields);
	memset(h, 0, sizeof(*h));
}

static const char *lookup(const struct bt_h1_field *f, int n, const char *name)
{
	for (int i = 0; i < n; i++)
		if (!strcasecmp(f[i].name, name))
			return f[i].value;
	return NULL;
}

const char *bt_h1_field(const struct bt_h1_head *h, const char *name)
{
	return lookup(h->fields, h->nfields, name);
}

const char *bt_h1_arg(const struct bt_h1_head *h, const char *name)
{
	return lookup(h->args, h->nargs, name);
}

/* ---- bodies --------------------------------------------------------------- */

enum {
	CH_SIZE, /* the chunk size's hex digits */
	CH_BWS, /* whitespace after them, before ';' or the line's end */
	CH_EXT, /* extensions, up to the line's end */
	CH_SIZE_LF, /* a CR ended the size line */
	CH_DATA,
	CH_DATA_CR, /* the CRLF after a chunk's data */
	CH_DATA_LF,
	CH_TRAILER, /* the start of a trailer line, or of the final empty line */
	CH_TRAILER_LINE,
	CH_TRAILER_LF,
	CH_END_LF,
};

void bt_h1_body_init(struct bt_h1_body *b, const struct bt_h1_head *h)
{
	memset(b, 0, sizeof(*b));
	b->chunked = h->chunked;
	b->state = CH_SIZE;
	if (!h->chunked) {
		b->left = h->length > 0 ? (uint64_t)h->length : 0;
		b->done = b->left == 0;
	}
}

/*
 * Lines of the chunked framing end in CRLF only, unlike the head's: a proxy
 * in front that took a bare LF for part of an extension or a trailer, or
 * skipped any two bytes after a chunk's data, would see another end of the
 * body than baton does, and bytes after it as a request of its own.
 */
static const char bare_lf[] = "a line of the chunked framing ends in a bare LF, not CRLF";

/* A control character (but HTAB), as no extension or trailer holds. */
static int ctl(char c)
{
	unsigned char u = (unsigned char)c;
	return (u < 0x20 && u != '\t') || u == 0x7f;
}

static long fail(const char **why, const char *msg)
{
	*why = msg;
	return -1;
}

long bt_h1_body_step(struct bt_h1_body *b, const char *p, size_t n, const char **data,
		     size_t *dlen, const char **why)
{
	*dlen = 0;
	*data = NULL;
	if (b->done || n == 0)
		return 0;
	if (!b->chunked) {
		size_t k = (size_t)BT_MIN((uint64_t)n, b->left);
		b->left -= k;
		b->done = b->left == 0;
		*data = p;
		*dlen = k;
		return (long)k;
	}
	size_t i = 0;
	while (i < n && !b->done) {
		char c = p[i];
		if (b->state == CH_DATA) {
			size_t k = (size_t)BT_MIN((uint64_t)(n - i), b->left);
			b->left -= k;
			if (!b->left)
				b->state = CH_DATA_CR;
			*data = p + i;
			*dlen = k;
			return (long)(i + k);
		}
		i++;
		switch (b->state) {
		case CH_SIZE: {
			int v = hexval(c);
			if (v >= 0) {
				/* Under 2^60, far past any body baton takes; leading zeros are fine. */
				if (b->left >> 56)
					return fail(why, "a chunk size is too large");
				if (++b->line > CHUNK_LINE_MAX)
					return fail(why, "a chunk's size line is too long");
				b->left = b->left * 16 + (uint64_t)v;
				break;
			}
			if (b->line == 0)
				return fail(why, "a chunk size must be hexadecimal");
			if (c == ';')
				b->state = CH_EXT;
			else if (c == ' ' || c == '\t')
				b->state = CH_BWS;
			else if (c == '\r')
				b->state = CH_SIZE_LF;
			else if (c == '\n')
				return fail(why, bare_lf);
			else
				return fail(why, "a chunk size must be hexadecimal");
			break;
		}
		case CH_BWS:
			if (c == ';')
				b->state = CH_EXT;
			else if (c == '\r')
				b->state = CH_SIZE_LF;
			else if (c != ' ' && c != '\t')
				return fail(why, "a chunk size is followed by something other than "
						 "an extension");
			else if (++b->line > CHUNK_LINE_MAX)
				return fail(why, "a chunk's extensions are too long");
			break;
		case CH_EXT:
			if (c == '\r')
				b->state = CH_SIZE_LF;
			else if (c == '\n')
				return fail(why, bare_lf);
			else if (ctl(c))
				return fail(why, "a chunk extension holds a control character");
			else if (++b->line > CHUNK_LINE_MAX)
				return fail(why, "a chunk's extensions are too long");
			break;
		case CH_SIZE_LF:
			if (c != '\n')
				return fail(why, "a chunk's size line holds a bare CR");
			b->line = 0;
			b->state = b->left ? CH_DATA : CH_TRAILER;
			break;
		case CH_DATA_CR:
			if (c != '\r')
				return fail(why, "a chunk's data is longer than its size, or not "
						 "followed by CRLF");
			b->state = CH_DATA_LF;
			break;
		case CH_DATA_LF:
			if (c != '\n')
				return fail(why, "a chunk's data is longer than its size, or not "
						 "followed by CRLF");
			b->state = CH_SIZE;
			break;
		case CH_TRAILER:
			if (c == '\r') {
				b->state = CH_END_LF;
				break;
			}
			b->state = CH_TRAILER_LINE;
			__attribute__((fallthrough)); /* with the line's first byte */
		case CH_TRAILER_LINE:
			/* Trailer fields are read and dropped, within the headers' limit. */
			if (++b->trailer > BT_H1_HEAD_MAX)
				return fail(why, "the trailer fields are over the 32 KiB limit");
			if (c == '\r')
				b->state = CH_TRAILER_LF;
			else if (c == '\n')
				return fail(why, bare_lf);
			else if (ctl(c))
				return fail(why, "a trailer field holds a control character");
			break;
		case CH_TRAILER_LF:
			if (c != '\n')
				return fail(why, "a trailer line holds a bare CR");
			b->state = CH_TRAILER;
			break;
		case CH_END_LF:
			if (c != '\n')
				return fail(why, "the chunked body does not end with an empty line");
			b->done = 1;
			break;
		}
	}
	return (long)i;
}

const char *bt_h1_reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 410: return "Gone";
	case 413: return "Content Too Large";
	case 415: return "Unsupported Media Type";
	case 422: return "Unprocessable Content";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 499: return "Client Closed Request";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	case 507: return "Insufficient Storage";
	}
	return "Unknown";
}
