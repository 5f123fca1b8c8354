/*
 * libbatonworker: the worker side of protocol v1.  Reads whole messages
 * from a buffer, hands requests to the user, and collects answers in an
 * output buffer written once no complete message is left to handle (so a
 * burst of pipelined requests costs one write, not one per answer).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "baton_worker.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_HEADER (64 * 1024)

struct baton_request {
	char *id;
	char *data;
	size_t len;
	json_t *meta;
	char *meta_text;
	int answered;
	struct worker *w;
};

struct buf {
	char *data;
	size_t len, cap;
};

struct worker {
	int fd;
	struct buf in; /* bytes read, not yet parsed */
	size_t pos; /* parse position in in */
	struct buf out; /* answers not yet written */
	int err; /* first error while answering */
};

static int buf_reserve(struct buf *b, size_t extra)
{
	if (b->len + extra <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 65536;
	while (cap < b->len + extra)
		cap *= 2;
	char *p = realloc(b->data, cap);
	if (!p)
		return -ENOMEM;
	b->data = p;
	b->cap = cap;
	return 0;
}

static int buf_append(struct buf *b, const void *p, size_t n)
{
	int e = buf_reserve(b, n);
	if (e)
		return e;
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

/* Appends one frame: header (len set here) + payload. */
static int put_frame(struct worker *w, json_t *hdr, const void *payload, size_t len)
{
	if (json_object_set_new(hdr, "len", json_integer((json_int_t)len)))
		return -ENOMEM;
	char *text = json_dumps(hdr, JSON_COMPACT);
	if (!text)
		return -ENOMEM;
	size_t n = strlen(text);
	int e = n + 1 > MAX_HEADER ? -E2BIG : 0;
	if (!e)
		e = buf_append(&w->out, text, n);
	if (!e)
		e = buf_append(&w->out, "\n", 1);
	if (!e)
		e = buf_append(&w->out, payload, len);
	free(text);
	return e;
}

static int flush_out(struct worker *w)
{
	size_t off = 0;
	while (off < w->out.len) {
		ssize_t n = write(w->fd, w->out.data + off, w->out.len - off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		off += (size_t)n;
	}
	w->out.len = 0;
	return 0;
}

const char *baton_request_id(const struct baton_request *req)
{
	return req->id;
}

const void *baton_request_data(const struct baton_request *req, size_t *len)
{
	if (len)
		*len = req->len;
	return req->data ? req->data : "";
}

const char *baton_request_meta(const struct baton_request *req)
{
	struct baton_request *r = (struct baton_request *)req;
	if (!r->meta_text)
		r->meta_text = json_dumps(r->meta, JSON_COMPACT);
	return r->meta_text ? r->meta_text : "{}";
}

const char *baton_request_meta_string(const struct baton_request *req,
				      const char *key)
{
	return json_string_value(json_object_get(req->meta, key));
}

int baton_request_meta_int(const struct baton_request *req, const char *key,
			   long long *out)
{
	json_t *v = json_object_get(req->meta, key);
	if (!json_is_integer(v))
		return -ENOENT;
	*out = json_integer_value(v);
	return 0;
}

int baton_respond(struct baton_request *req, const void *data, size_t len,
		  const char *meta_json)
{
	if (req->answered)
		return -EALREADY;
	json_t *meta = NULL;
	if (meta_json) {
		meta = json_loads(meta_json, 0, NULL);
		if (!json_is_object(meta)) {
			json_decref(meta);
			return -EINVAL;
		}
	}
	json_t *hdr = json_pack("{s:s, s:s}", "t", "res", "id", req->id);
	if (!hdr) {
		json_decref(meta);
		return -ENOMEM;
	}
	if (meta)
		json_object_set_new(hdr, "meta", meta);
	int e = put_frame(req->w, hdr, data, len);
	json_decref(hdr);
	if (!e)
		req->answered = 1;
	return e;
}

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
					  : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
	if (len == 0 || len > n)
		return 0;
	/* The second byte's range excludes overlong forms and surrogates. */
	unsigned char lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
	unsigned char hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
	if (len > 1 && (s[1] < lo || s[1] > hi))
		return 0;
	for (size_t i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	return len;
}

/*
 * The message as an error text can always be sent: at most 4000 bytes
 * (cut at a character) and valid UTF-8, anything else shown as '?'.
 */
static void clean_message(const char *in, char *out, size_t size)
{
	const unsigned char *s = (const unsigned char *)in;
	size_t n = strlen(in), o = 0;
	for (size_t i = 0; i < n;) {
		size_t len = utf8_seq(s + i, n - i);
		if (o + (len ? len : 1) >= size)
			break;
		if (len) {
			memcpy(out + o, s + i, len);
			o += len;
			i += len;
		} else {
			out[o++] = '?';
			i++;
		}
	}
	out[o] = '\0';
}

int baton_fail(struct baton_request *req, const char *message, int retry)
{
	if (req->answered)
		return -EALREADY;
	char text[4001];
	clean_message(message ? message : "failed", text, sizeof(text));
	json_t *hdr = json_pack("{s:s, s:s, s:s, s:b}", "t", "res", "id", req->id,
				"error", text, "retry", retry);
	if (!hdr)
		return -ENOMEM;
	int e = put_frame(req->w, hdr, NULL, 0);
	json_decref(hdr);
	if (!e)
		req->answered = 1;
	return e;
}

static void request_free(struct baton_request *req)
{
	if (!req)
		return;
	free(req->id);
	free(req->data);
	json_decref(req->meta);
	free(req->meta_text);
	free(req);
}

/*
 * Parses the next complete message at w->in[w->pos].  Returns 1 and sets
 * *hdr (and the payload) when one is complete, 0 when more bytes are
 * needed, -EPROTO when the bytes are not a message.
 */
static int next_message(struct worker *w, json_t **hdr, char **payload, size_t *len)
{
	size_t avail = w->in.len - w->pos;
	if (avail == 0)
		return 0; /* also: nothing was ever read, and data is NULL */
	char *start = w->in.data + w->pos;
	char *nl = memchr(start, '\n', avail);
	if (!nl)
		return avail >= MAX_HEADER ? -EPROTO : 0;
	size_t hlen = (size_t)(nl - start);
	json_t *h = json_loadb(start, hlen, 0, NULL);
	if (!json_is_object(h) || !json_is_string(json_object_get(h, "t"))) {
		json_decref(h);
		return -EPROTO;
	}
	json_t *jlen = json_object_get(h, "len");
	json_int_t n = jlen ? json_integer_value(jlen) : 0;
	if ((jlen && !json_is_integer(jlen)) || n < 0) {
		json_decref(h);
		return -EPROTO;
	}
	if (avail - hlen - 1 < (size_t)n) {
		json_decref(h);
		return 0;
	}
	*payload = NULL;
	if (n > 0) {
		*payload = malloc((size_t)n + 1);
		if (!*payload) {
			json_decref(h);
			return -ENOMEM;
		}
		memcpy(*payload, nl + 1, (size_t)n);
		(*payload)[n] = '\0';
	}
	*len = (size_t)n;
	*hdr = h;
	w->pos += hlen + 1 + (size_t)n;
	return 1;
}

static int read_more(struct worker *w)
{
	/* Compact what was parsed, then read. */
	if (w->pos) {
		memmove(w->in.data, w->in.data + w->pos, w->in.len - w->pos);
		w->in.len -= w->pos;
		w->pos = 0;
	}
	int e = buf_reserve(&w->in, 65536);
	if (e)
		return e;
	for (;;) {
		ssize_t n = read(w->fd, w->in.data + w->in.len, w->in.cap - w->in.len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		w->in.len += (size_t)n;
		return n == 0 ? 1 : 0; /* 1: EOF */
	}
}

static struct baton_request *make_request(struct worker *w, json_t *hdr,
					  char *payload, size_t len)
{
	const char *id = json_string_value(json_object_get(hdr, "id"));
	struct baton_request *req = calloc(1, sizeof(*req));
	if (!req || !id || !(req->id = strdup(id))) {
		free(req);
		free(payload);
		return NULL;
	}
	json_t *meta = json_object_get(hdr, "meta");
	req->meta = json_is_object(meta) ? json_incref(meta) : json_object();
	req->data = payload;
	req->len = len;
	req->w = w;
	return req;
}

static int call_handler(const struct baton_worker_ops *ops, void *user,
			struct baton_request **reqs, size_t n)
{
	if (ops->handle_batch && n > 1) {
		int r = ops->handle_batch(user, reqs, n);
		for (size_t i = 0; i < n; i++)
			if (!reqs[i]->answered)
				baton_fail(reqs[i], r ? "the batch handler failed"
						     : "the batch handler did not answer this item",
					   1);
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		int r = ops->handle ? ops->handle(user, reqs[i])
				    : ops->handle_batch(user, &reqs[i], 1);
		if (!reqs[i]->answered)
			baton_fail(reqs[i], r ? "the handler failed"
					     : "the handler did not answer", 1);
	}
	return 0;
}

int baton_worker_run(const struct baton_worker_ops *ops, void *user)
{
	const char *fdenv = getenv("BATON_FD");
	if (!fdenv || !ops || (!ops->handle && !ops->handle_batch)) {
		if (!fdenv)
			fprintf(stderr, "this is a baton worker; run it under `baton serve`\n");
		return -ENOTCONN;
	}
	struct worker w;
	memset(&w, 0, sizeof(w));
	w.fd = atoi(fdenv);
	if (ops->init && ops->init(user))
		return -ECANCELED;
	json_t *ready = json_pack("{s:s, s:i}", "t", "ready", "proto", BATON_WORKER_PROTO);
	int e = put_frame(&w, ready, NULL, 0);
	json_decref(ready);
	/* "ready" has len 0; the protocol allows it, and baton ignores it. */
	if (!e)
		e = flush_out(&w);

	struct baton_request **batch = NULL;
	size_t want = 0, have = 0; /* a batch being gathered */
	int stopping = 0, eof = 0;
	while (!e && !stopping) {
		json_t *hdr = NULL;
		char *payload = NULL;
		size_t len = 0;
		int r = next_message(&w, &hdr, &payload, &len);
		if (r < 0) {
			fprintf(stderr, "baton_worker: malformed message from baton\n");
			e = r;
			break;
		}
		if (r == 0) {
			/* Nothing complete is buffered: answer what we have, then wait. */
			if ((e = flush_out(&w)))
				break;
			if (eof)
				break;
			r = read_more(&w);
			if (r < 0)
				e = r;
			else if (r == 1)
				eof = 1;
			continue;
		}
		const char *t = json_string_value(json_object_get(hdr, "t"));
		if (!strcmp(t, "req")) {
			struct baton_request *req = make_request(&w, hdr, payload, len);
			if (!req) {
				e = -EPROTO;
			} else if (want) {
				batch[have++] = req;
				if (have == want) {
					call_handler(ops, user, batch, have);
					for (size_t i = 0; i < have; i++)
						request_free(batch[i]);
					want = have = 0;
				}
			} else {
				call_handler(ops, user, &req, 1);
				request_free(req);
			}
		} else if (!strcmp(t, "batch")) {
			json_int_t n = json_integer_value(json_object_get(hdr, "n"));
			free(payload);
			if (want || n < 1 || n > 1000000) {
				e = -EPROTO;
			} else {
				struct baton_request **nb = realloc(batch, (size_t)n * sizeof(*nb));
				if (!nb) {
					e = -ENOMEM; /* batch is still ours, freed on the way out */
				} else {
					batch = nb;
					want = (size_t)n;
					have = 0;
				}
			}
		} else if (!strcmp(t, "ping")) {
			free(payload);
			json_t *pong = json_pack("{s:s, s:O}", "t", "pong", "seq",
						 json_object_get(hdr, "seq"));
			e = pong ? put_frame(&w, pong, NULL, 0) : -ENOMEM;
			json_decref(pong);
		} else if (!strcmp(t, "stop")) {
			free(payload);
			stopping = 1;
		} else {
			free(payload); /* unknown messages are ignored (a newer baton may send more) */
		}
		json_decref(hdr);
	}
	if (!e)
		e = flush_out(&w);
	for (size_t i = 0; i < have; i++)
		request_free(batch[i]);
	free(batch);
	free(w.in.data);
	free(w.out.data);
	if (stopping && ops->stop)
		ops->stop(user);
	return e;
}
