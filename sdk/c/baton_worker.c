/*
 * libbatonworker: the worker side of protocol v1.  Reads whole messages
 * from a buffer, hands requests to the user, and collects answers in an
 * output buffer written once no complete message is left to handle (so a
 * burst of pipelined requests costs one write, not one per answer).  The
 * source side (baton_source_*) shares the framing and is at the end.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "baton_worker.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_HEADER (64 * 1024)
#define MAX_FDS 8 /* descriptors received ahead of their headers */
#define SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)

/*
 * Fast headers (docs/protocol.md): offered in "ready"; once baton has sent
 * a request in one, answers use them too.  16 bytes, little-endian: magic,
 * kind, flags, id length, u32 meta length, u64 payload length; then the
 * id, the meta (JSON object text) and the payload.
 */
#define FAST_HEADER 16
#define FAST_MAGIC 0xBA
#define FAST_REQ 'q'
#define FAST_RES 'r'
#define FAST_ERR 'e'
#define FAST_RETRY 0x01

struct baton_request {
	char *id;
	char *data;
	size_t len;
	int fd; /* the sealed memfd data maps, or -1 */
	size_t map_len; /* bytes mapped from data's page, or 0 (data is malloc'd) */
	int region; /* part of data is a client's shared memory: answered "same" */
	struct place {
		char *name; /* an output the answer may write into a client's object */
		int fd;	    /* the object, writable, from offset 0 */
		size_t len; /* its slot */
	} *places;
	size_t nplaces;
	json_t *meta;
	char *meta_text;
	int answered;
	struct worker *w;
};

struct buf {
	char *data;
	size_t len, cap;
};

struct outfd {
	size_t pos; /* where in out the header it goes with begins */
	int fd;
};

struct worker {
	int fd;
	struct buf in; /* bytes read, not yet parsed */
	size_t pos; /* parse position in in */
	struct buf out; /* answers not yet written */
	int err; /* first error while answering */
	int offer_fast; /* "fast":1 was offered in ready */
	int fast; /* baton sent a fast header: answers use them too */
	/* Large payloads as sealed memfds (docs/protocol.md, "Large payloads"). */
	size_t memfd_min; /* answers from this size go as memfds; 0: never */
	int rfds[MAX_FDS]; /* received, not yet claimed by a header */
	int nrfds;
	struct outfd *sfds; /* to send with out's headers, in order */
	size_t nsfds, capsfds;
};

static void put_le(unsigned char *p, unsigned long long v, int n)
{
	for (int i = 0; i < n; i++, v >>= 8)
		p[i] = (unsigned char)(v & 0xff);
}

static unsigned long long get_le(const unsigned char *p, int n)
{
	unsigned long long v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

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

/* Appends a header line announcing len payload bytes (len set here). */
static int put_header(struct worker *w, json_t *hdr, size_t len)
{
	if (json_object_set_new(hdr, "len", json_integer((json_int_t)len)))
		return -ENOMEM;
	char *text = json_dumps(hdr, JSON_COMPACT);
	if (!text)
		return -ENOMEM;
	size_t n = strlen(text);
	int e = n + 1 > MAX_HEADER ? -E2BIG : buf_reserve(&w->out, n + 1);
	if (!e) {
		buf_append(&w->out, text, n); /* cannot fail: reserved */
		buf_append(&w->out, "\n", 1);
	}
	free(text);
	return e;
}

/* Appends one frame: header (len set here) + payload. */
static int put_frame(struct worker *w, json_t *hdr, const void *payload, size_t len)
{
	int e = put_header(w, hdr, len);
	if (!e)
		e = buf_append(&w->out, payload, len);
	return e;
}

/*
 * Writes all n bytes.  send() with MSG_NOSIGNAL where fd is a socket, as
 * baton's is: a closed channel must come back as -EPIPE, not as a SIGPIPE
 * that kills the process we live in.
 */
static int write_all(int fd, const char *p, size_t n)
{
	int sock = 1;
	while (n > 0) {
		ssize_t k = sock ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOTSOCK && sock) {
				sock = 0;
				continue;
			}
			return -errno;
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

/* Sends p[0..n) with fd attached to its first bytes (SCM_RIGHTS). */
static int send_with_fd(int sock, const char *p, size_t n, int fd)
{
	union {
		struct cmsghdr h;
		char space[CMSG_SPACE(sizeof(int))];
	} ctl;
	memset(&ctl, 0, sizeof(ctl));
	struct iovec iov = {(void *)p, n};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.space,
			     .msg_controllen = sizeof(ctl.space)};
	struct cmsghdr *h = CMSG_FIRSTHDR(&msg);
	h->cmsg_level = SOL_SOCKET;
	h->cmsg_type = SCM_RIGHTS;
	h->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(h), &fd, sizeof(int));
	ssize_t k;
	do
		k = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (k < 0 && errno == EINTR);
	if (k < 0)
		return -errno;
	return write_all(sock, p + k, n - (size_t)k);
}

static int flush_out(struct worker *w)
{
	int e = 0;
	size_t at = 0;
	for (size_t i = 0; i < w->nsfds && !e; i++) {
		size_t pos = w->sfds[i].pos;
		size_t end = i + 1 < w->nsfds ? w->sfds[i + 1].pos : w->out.len;
		e = write_all(w->fd, w->out.data + at, pos - at);
		if (!e)
			e = send_with_fd(w->fd, w->out.data + pos, end - pos, w->sfds[i].fd);
		at = end;
	}
	if (!e)
		e = write_all(w->fd, w->out.data + at, w->out.len - at);
	for (size_t i = 0; i < w->nsfds; i++)
		close(w->sfds[i].fd); /* sent, or the channel is broken anyway */
	w->nsfds = 0;
	if (!e)
		w->out.len = 0;
	return e;
}

/* A new memfd holding p[0..n), sealed: the fd, or -errno. */
static int sealed_memfd(const void *p, size_t n)
{
	int fd = memfd_create("baton-res", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	for (size_t off = 0; off < n;) {
		ssize_t k = write(fd, (const char *)p + off, n - off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			int e = k < 0 ? -errno : -EIO;
			close(fd);
			return e;
		}
		off += (size_t)k;
	}
	if (fcntl(fd, F_ADD_SEALS, SEALS) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

/* Appends a header that announces a payload of len bytes in fd (owned from here). */
static int put_memfd_frame(struct worker *w, json_t *hdr, size_t len, int fd)
{
	size_t pos = w->out.len;
	int e = json_object_set_new(hdr, "memfd", json_integer((json_int_t)len)) ? -ENOMEM : 0;
	if (!e && w->nsfds == w->capsfds) {
		size_t cap = w->capsfds ? 2 * w->capsfds : 4;
		struct outfd *n = realloc(w->sfds, cap * sizeof(*n));
		if (!n)
			e = -ENOMEM;
		else {
			w->sfds = n;
			w->capsfds = cap;
		}
	}
	if (!e)
		e = put_header(w, hdr, 0);
	if (e) {
		close(fd);
		return e;
	}
	w->sfds[w->nsfds++] = (struct outfd){pos, fd};
	return 0;
}

/* The start of p's page: where a mapping that p lies in the first page of begins. */
static char *page_of(char *p)
{
	uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
	return (char *)((uintptr_t)p & ~(page - 1));
}

/*
 * Maps a received memfd of len bytes read-only, followed by a NUL as
 * every payload is: the bytes after len in its last page are zeros when
 * the file ends at len; when len fills whole pages, an anonymous page
 * behind the mapping gives the NUL.  NULL when it cannot (then copy).
 */
static char *map_payload(int fd, size_t len, size_t *map_len)
{
	struct stat st;
	long page = sysconf(_SC_PAGESIZE);
	if (fstat(fd, &st) < 0 || (size_t)st.st_size != len || page <= 0)
		return NULL;
	size_t whole = (len + (size_t)page - 1) / (size_t)page * (size_t)page;
	size_t total = len % (size_t)page ? whole : whole + (size_t)page;
	char *base = mmap(NULL, total, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED)
		return NULL;
	if (mmap(base, len, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
		munmap(base, total);
		return NULL;
	}
	*map_len = total;
	return base;
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

/* Appends a fast answer: header, id, meta text (may be NULL), payload. */
static int put_fast(struct worker *w, int kind, int flags, const char *id, const char *meta,
		    const void *payload, size_t len)
{
	size_t idlen = strlen(id), mlen = meta ? strlen(meta) : 0;
	if (FAST_HEADER + idlen + mlen > MAX_HEADER)
		return -E2BIG;
	int e = buf_reserve(&w->out, FAST_HEADER + idlen + mlen + len);
	if (e)
		return e;
	unsigned char h[FAST_HEADER] = {FAST_MAGIC, (unsigned char)kind, (unsigned char)flags,
					(unsigned char)idlen};
	put_le(h + 4, mlen, 4);
	put_le(h + 8, len, 8);
	buf_append(&w->out, h, sizeof(h)); /* cannot fail: reserved */
	buf_append(&w->out, id, idlen);
	buf_append(&w->out, meta, mlen);
	buf_append(&w->out, payload, len);
	return 0;
}

static int fast_id(const struct baton_request *req)
{
	size_t n = strlen(req->id);
	return req->w->fast && n > 0 && n <= 255;
}

static void drop_places(struct baton_request *req)
{
	for (size_t i = 0; i < req->nplaces; i++) {
		free(req->places[i].name);
		close(req->places[i].fd);
	}
	free(req->places);
	req->places = NULL;
	req->nplaces = 0;
}

static int pwrite_all(int fd, const char *p, size_t n)
{
	for (size_t off = 0; off < n;) {
		ssize_t k = pwrite(fd, p + off, n - off, (off_t)off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		off += (size_t)k;
	}
	return 0;
}

/*
 * A binary v2 answer (data, len; meta's v2_header_length) whose outputs
 * req has places for, written into them (docs/protocol.md, "Shared-memory
 * inputs"): 1 with the rest of the answer in *out (malloc'd) and its meta
 * in *out_meta, 0 when nothing was placed (the answer goes as it is).
 */
static int place_outputs(struct baton_request *req, const char *data, size_t len, json_t *meta,
			 char **out, size_t *out_len, json_t **out_meta)
{
	json_t *jhl = json_object_get(meta, "v2_header_length");
	json_int_t hl = json_integer_value(jhl);
	if (!json_is_integer(jhl) || hl <= 0 || (size_t)hl > len)
		return 0;
	json_t *doc = json_loadb(data, (size_t)hl, 0, NULL);
	json_t *outputs = json_object_get(doc, "outputs");
	size_t pos = (size_t)hl, nkeep = 0;
	struct { size_t at, n; } *keep = calloc(json_array_size(outputs) + 1, sizeof(*keep));
	int placed = 0, bad = !keep || !json_is_array(outputs);
	for (size_t i = 0; !bad && i < json_array_size(outputs); i++) {
		json_t *o = json_array_get(outputs, i);
		json_t *params = json_object_get(o, "parameters");
		json_t *jsz = json_object_get(params, "binary_data_size");
		if (!jsz)
			continue;
		json_int_t size = json_integer_value(jsz);
		if (!json_is_integer(jsz) || size < 0 || (size_t)size > len - pos) {
			bad = 1; /* baton says what is wrong with it */
			break;
		}
		const char *name = json_string_value(json_object_get(o, "name"));
		struct place *p = NULL;
		for (size_t j = 0; name && j < req->nplaces; j++)
			if (!strcmp(req->places[j].name, name))
				p = &req->places[j];
		if (p && (size_t)size <= p->len && pwrite_all(p->fd, data + pos, (size_t)size) == 0) {
			json_object_del(params, "binary_data_size");
			json_object_set_new(params, "baton_placed", json_integer(size));
			placed = 1;
		} else {
			keep[nkeep].at = pos;
			keep[nkeep++].n = (size_t)size;
		}
		pos += (size_t)size;
	}
	char *head = placed && !bad ? json_dumps(doc, JSON_COMPACT) : NULL;
	json_decref(doc);
	if (!head) {
		free(keep);
		return 0;
	}
	keep[nkeep].at = pos;
	keep[nkeep++].n = len - pos;
	size_t hlen = strlen(head), total = hlen;
	for (size_t i = 0; i < nkeep; i++)
		total += keep[i].n;
	char *b = malloc(total ? total : 1);
	*out_meta = json_deep_copy(meta);
	if (!b || !*out_meta) {
		free(b);
		free(head);
		free(keep);
		json_decref(*out_meta);
		return 0;
	}
	memcpy(b, head, hlen);
	for (size_t i = 0, at = hlen; i < nkeep; at += keep[i].n, i++)
		memcpy(b + at, data + keep[i].at, keep[i].n);
	if (total > hlen) {
		json_object_set_new(*out_meta, "v2_header_length", json_integer((json_int_t)hlen));
	} else {
		json_object_del(*out_meta, "v2_header_length");
		json_object_set_new(*out_meta, "content_type", json_string("application/json"));
	}
	free(head);
	free(keep);
	*out = b;
	*out_len = total;
	return 1;
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
	struct worker *w = req->w;
	if (req->nplaces) {
		/* The last stage: outputs that have a place go there, not to baton. */
		char *rest;
		size_t rest_len;
		json_t *rest_meta;
		int placed = meta && place_outputs(req, data, len, meta, &rest, &rest_len, &rest_meta);
		drop_places(req);
		if (placed) {
			char *text = json_dumps(rest_meta, JSON_COMPACT);
			json_decref(rest_meta);
			json_decref(meta);
			int e = text ? baton_respond(req, rest, rest_len, text) : -ENOMEM;
			free(text);
			free(rest);
			return e;
		}
	}
	if (req->region && data == req->data && len == req->len) {
		/* Its own payload, partly in a client's object: baton passes on what it has. */
		json_t *hdr = json_pack("{s:s, s:s, s:b}", "t", "res", "id", req->id, "same", 1);
		if (hdr && meta)
			json_object_set_new(hdr, "meta", meta);
		else
			json_decref(meta);
		int e = hdr ? put_frame(w, hdr, NULL, 0) : -ENOMEM;
		json_decref(hdr);
		if (!e)
			req->answered = 1;
		return e;
	}
	int as_memfd = w->memfd_min && len >= w->memfd_min;
	/* Answers that go as memfds keep the JSON header (their fd rides on it). */
	if (fast_id(req) && !as_memfd) {
		char *text = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
		json_decref(meta);
		int e = meta && !text ? -ENOMEM
				      : put_fast(req->w, FAST_RES, 0, req->id, text, data, len);
		free(text);
		if (!e)
			req->answered = 1;
		return e;
	}
	json_t *hdr = json_pack("{s:s, s:s}", "t", "res", "id", req->id);
	if (!hdr) {
		json_decref(meta);
		return -ENOMEM;
	}
	if (meta)
		json_object_set_new(hdr, "meta", meta);
	int e, fd = -1;
	if (as_memfd) {
		/* The request's own bytes go back in the memfd they came in. */
		if (req->fd >= 0 && data == req->data && len == req->len)
			fd = fcntl(req->fd, F_DUPFD_CLOEXEC, 0);
		else
			fd = sealed_memfd(data, len);
	}
	if (fd >= 0)
		e = put_memfd_frame(w, hdr, len, fd);
	else
		e = put_frame(w, hdr, data, len);
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
	if (fast_id(req)) {
		int e = put_fast(req->w, FAST_ERR, retry ? FAST_RETRY : 0, req->id, NULL, text,
				 strlen(text));
		if (!e)
			req->answered = 1;
		return e;
	}
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

static void drop_payload(char *payload, int fd, size_t map_len);

static void request_free(struct baton_request *req)
{
	if (!req)
		return;
	free(req->id);
	drop_places(req);
	drop_payload(req->data, req->fd, req->map_len);
	json_decref(req->meta);
	free(req->meta_text);
	free(req);
}

/*
 * A request in a fast header at w->in[w->pos]: 1 and *req when complete, 0
 * when more bytes are needed, -EPROTO when the header is malformed.
 */
static int next_fast(struct worker *w, struct baton_request **out)
{
	size_t avail = w->in.len - w->pos;
	const unsigned char *h = (const unsigned char *)w->in.data + w->pos;
	if (avail < FAST_HEADER)
		return 0;
	size_t idlen = h[3];
	unsigned long long mlen = get_le(h + 4, 4), n = get_le(h + 8, 8);
	if (h[1] != FAST_REQ || h[2] || !idlen || FAST_HEADER + idlen + mlen > MAX_HEADER ||
	    n > (unsigned long long)SIZE_MAX / 2)
		return -EPROTO;
	size_t head = FAST_HEADER + idlen + (size_t)mlen;
	if (avail < head || avail - head < n)
		return 0;
	const char *id = (const char *)h + FAST_HEADER;
	if (memchr(id, 0, idlen))
		return -EPROTO;
	json_t *meta = mlen ? json_loadb(id + idlen, (size_t)mlen, 0, NULL) : json_object();
	if (!json_is_object(meta)) {
		json_decref(meta);
		return -EPROTO;
	}
	struct baton_request *req = calloc(1, sizeof(*req));
	char *data = n ? malloc((size_t)n + 1) : NULL;
	if (req)
		req->id = strndup(id, idlen);
	if (!req || !req->id || (n && !data)) {
		if (req)
			free(req->id);
		free(req);
		free(data);
		json_decref(meta);
		return -ENOMEM;
	}
	if (n) {
		memcpy(data, (const char *)h + head, (size_t)n);
		data[n] = '\0';
	}
	req->meta = meta;
	req->data = data;
	req->len = (size_t)n;
	req->w = w;
	w->fast = 1;
	w->pos += head + (size_t)n;
	*out = req;
	return 1;
}

/*
 * Parses the next complete message at w->in[w->pos].  Returns 1 and sets
 * *hdr (and the payload, in a memfd when *fd >= 0) when one is complete, or
 * *fast for a request in a fast header (then *hdr is NULL), 0 when more
 * bytes are needed, -EPROTO when the bytes are not a message.
 */
static int next_message_fd(struct worker *w, json_t **hdr, char **payload, size_t *len,
			   int *fd, size_t *map_len, struct baton_request **fast);

/* Frees a payload next_message_fd gave. */
static void drop_payload(char *payload, int fd, size_t map_len)
{
	if (map_len)
		munmap(page_of(payload), map_len);
	else
		free(payload);
	if (fd >= 0)
		close(fd);
}

/* next_message_fd for messages that never carry a memfd (one is -EPROTO). */
static int next_message(struct worker *w, json_t **hdr, char **payload, size_t *len,
			struct baton_request **fast)
{
	int fd;
	size_t map_len;
	int r = next_message_fd(w, hdr, payload, len, &fd, &map_len, fast);
	if (r == 1 && (fd >= 0 || map_len)) {
		drop_payload(*payload, fd, map_len);
		json_decref(*hdr);
		return -EPROTO;
	}
	return r;
}

/*
 * The payload of a header that says "memfd": the descriptor that came with
 * it, mapped (or read, when it cannot be mapped with a NUL behind).
 */
static int memfd_payload(struct worker *w, json_t *jfd, char **payload, size_t *len,
			 int *fd, size_t *map_len)
{
	json_int_t m = json_integer_value(jfd);
	if (!json_is_integer(jfd) || m < 0 || !w->nrfds)
		return -EPROTO;
	int rfd = w->rfds[0];
	memmove(w->rfds, w->rfds + 1, (size_t)--w->nrfds * sizeof(int));
	char *p = NULL;
	*map_len = 0;
	if (m > 0 && !(p = map_payload(rfd, (size_t)m, map_len))) {
		p = malloc((size_t)m + 1);
		size_t off = 0;
		while (p && off < (size_t)m) {
			ssize_t k = pread(rfd, p + off, (size_t)m - off, (off_t)off);
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				break;
			off += (size_t)k;
		}
		if (!p || off < (size_t)m) {
			free(p);
			close(rfd);
			return p ? -EPROTO : -ENOMEM;
		}
		p[m] = '\0';
	}
	*payload = p;
	*len = (size_t)m;
	*fd = rfd;
	return 0;
}

/*
 * The payload of a request whose header says "region": [off, n]
 * (docs/protocol.md, "Shared-memory inputs"): the frame's hlen bytes, then
 * n bytes of a client's object from the read-only descriptor that came
 * with the header.  The object is mapped right behind the head, which is
 * written just before a page boundary of an anonymous mapping: no copy.
 * When the object goes on past the range (its bytes would follow instead
 * of the NUL every payload has) or cannot be mapped, a copy.  The
 * descriptor is closed either way.
 */
static int region_payload(struct worker *w, json_t *h, const char *head, size_t hlen,
			  char **payload, size_t *len, size_t *map_len)
{
	json_t *reg = json_object_get(h, "region");
	json_t *joff = json_array_get(reg, 0), *jn = json_array_get(reg, 1);
	json_int_t off = json_integer_value(joff), n = json_integer_value(jn);
	long page = sysconf(_SC_PAGESIZE);
	if (json_array_size(reg) != 2 || !json_is_integer(joff) || !json_is_integer(jn) ||
	    off < 0 || n < 0 || page <= 0 || off % page || (unsigned long long)n > SIZE_MAX / 4 ||
	    !w->nrfds || strcmp(json_string_value(json_object_get(h, "t")), "req"))
		return -EPROTO;
	int rfd = w->rfds[0];
	memmove(w->rfds, w->rfds + 1, (size_t)--w->nrfds * sizeof(int));
	size_t pg = (size_t)page, hp = (hlen + pg - 1) / pg * pg;
	size_t np = ((size_t)n + pg - 1) / pg * pg, total = hp + np + ((size_t)n % pg ? 0 : pg);
	struct stat st;
	char *p = NULL;
	*map_len = 0;
	if (fstat(rfd, &st) == 0 && (unsigned long long)st.st_size == (unsigned long long)(off + n)) {
		char *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				  -1, 0);
		if (base != MAP_FAILED && n > 0 &&
		    mmap(base + hp, (size_t)n, PROT_READ, MAP_SHARED | MAP_FIXED, rfd, (off_t)off) ==
			    MAP_FAILED) {
			munmap(base, total);
			base = MAP_FAILED;
		}
		if (base != MAP_FAILED) {
			if (hlen)
				memcpy(base + hp - hlen, head, hlen);
			mprotect(base, hp, PROT_READ);
			if (total > hp + np)
				mprotect(base + hp + np, total - hp - np, PROT_READ);
			p = base + hp - hlen;
			*map_len = total;
		}
	}
	if (!p) {
		size_t got = 0;
		p = malloc(hlen + (size_t)n + 1);
		if (p) {
			memcpy(p, head, hlen);
			while (got < (size_t)n) {
				ssize_t k = pread(rfd, p + hlen + got, (size_t)n - got, (off_t)(off + got));
				if (k < 0 && errno == EINTR)
					continue;
				if (k <= 0)
					break;
				got += (size_t)k;
			}
			p[hlen + got] = '\0';
		}
		if (!p || got < (size_t)n) {
			free(p);
			close(rfd);
			return p ? -EPROTO : -ENOMEM;
		}
	}
	close(rfd);
	*payload = p;
	*len = hlen + (size_t)n;
	return 0;
}

static int next_message_fd(struct worker *w, json_t **hdr, char **payload, size_t *len,
			   int *fd, size_t *map_len, struct baton_request **fast)
{
	*fd = -1;
	*map_len = 0;
	size_t avail = w->in.len - w->pos;
	if (avail == 0)
		return 0; /* also: nothing was ever read, and data is NULL */
	char *start = w->in.data + w->pos;
	if ((unsigned char)start[0] == FAST_MAGIC) /* never JSON: refused at once unless offered */
		return w->offer_fast ? next_fast(w, fast) : -EPROTO;
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
	json_t *jfd = json_object_get(h, "memfd");
	if (jfd && n == 0) {
		int e = memfd_payload(w, jfd, payload, len, fd, map_len);
		if (e) {
			json_decref(h);
			return e;
		}
		*hdr = h;
		w->pos += hlen + 1;
		return 1;
	}
	if (avail - hlen - 1 < (size_t)n) {
		json_decref(h);
		return 0;
	}
	if (json_object_get(h, "region")) {
		int e = region_payload(w, h, nl + 1, (size_t)n, payload, len, map_len);
		if (e) {
			json_decref(h);
			return e;
		}
		*hdr = h;
		w->pos += hlen + 1 + (size_t)n;
		return 1;
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
		/* recvmsg: descriptors come with the first bytes of their headers. */
		union {
			struct cmsghdr h;
			char space[CMSG_SPACE(sizeof(int) * MAX_FDS)];
		} ctl;
		struct iovec iov = {w->in.data + w->in.len, w->in.cap - w->in.len};
		struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.space,
				     .msg_controllen = sizeof(ctl.space)};
		ssize_t n = recvmsg(w->fd, &msg, MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == ENOTSOCK)
			n = read(w->fd, w->in.data + w->in.len, w->in.cap - w->in.len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		int over = 0;
		for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); n > 0 && h; h = CMSG_NXTHDR(&msg, h)) {
			if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
				continue;
			size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			for (size_t i = 0; i < k; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
				if (w->nrfds < MAX_FDS)
					w->rfds[w->nrfds++] = fd;
				else {
					close(fd);
					over = 1;
				}
			}
		}
		if (over)
			return -EPROTO;
		w->in.len += (size_t)n;
		return n == 0 ? 1 : 0; /* 1: EOF */
	}
}

static struct baton_request *make_request(struct worker *w, json_t *hdr,
					  char *payload, size_t len, int fd, size_t map_len)
{
	const char *id = json_string_value(json_object_get(hdr, "id"));
	struct baton_request *req = calloc(1, sizeof(*req));
	if (!req || !id || !(req->id = strdup(id))) {
		free(req);
		drop_payload(payload, fd, map_len);
		return NULL;
	}
	req->fd = fd;
	req->map_len = map_len;
	req->region = json_object_get(hdr, "region") != NULL;
	/* Places come after the payload's descriptor, in order (docs/protocol.md). */
	json_t *place = json_object_get(hdr, "place");
	if (place) {
		size_t n = json_array_size(place);
		req->places = calloc(n ? n : 1, sizeof(*req->places));
		for (size_t i = 0; req->places && i < n; i++) {
			json_t *p = json_array_get(place, i);
			json_int_t plen = json_integer_value(json_array_get(p, 1));
			const char *name = json_string_value(json_array_get(p, 0));
			if (!name || plen < 0 || !w->nrfds)
				break;
			req->places[i] = (struct place){strdup(name), w->rfds[0], (size_t)plen};
			memmove(w->rfds, w->rfds + 1, (size_t)--w->nrfds * sizeof(int));
			req->nplaces++;
			if (!req->places[i].name)
				break;
		}
		if (!json_is_array(place) || req->nplaces != n || !req->places ||
		    (n && !req->places[n - 1].name)) {
			drop_places(req);
			free(req->id);
			free(req);
			drop_payload(payload, fd, map_len);
			return NULL;
		}
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
	/* baton takes memfd answers from this size when it says so (an older one does not). */
	const char *min = getenv("BATON_MEMFD_MIN");
	w.memfd_min = min ? strtoull(min, NULL, 10) : 0;
	if (ops->init && ops->init(user))
		return -ECANCELED;
	/* BW_FAST_HEADERS=0: JSON headers only, as before fast headers. */
	const char *fastenv = getenv("BW_FAST_HEADERS");
	w.offer_fast = !fastenv || strcmp(fastenv, "0") != 0;
	json_t *ready = json_pack("{s:s, s:i}", "t", "ready", "proto", BATON_WORKER_PROTO);
	if (ready && w.offer_fast)
		json_object_set_new(ready, "fast", json_integer(1));
	if (ready && w.memfd_min) {
		json_object_set_new(ready, "memfd", json_true());
		json_object_set_new(ready, "region", json_true());
		json_object_set_new(ready, "place", json_true());
	}
	int e = ready ? put_frame(&w, ready, NULL, 0) : -ENOMEM;
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
		size_t len = 0, map_len = 0;
		int fd = -1;
		struct baton_request *fast = NULL;
		int r = next_message_fd(&w, &hdr, &payload, &len, &fd, &map_len, &fast);
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
		const char *t = hdr ? json_string_value(json_object_get(hdr, "t")) : "req";
		if (!strcmp(t, "req")) {
			struct baton_request *req =
				fast ? fast : make_request(&w, hdr, payload, len, fd, map_len);
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
		} else if (fd >= 0) {
			drop_payload(payload, fd, map_len); /* only requests carry memfds */
			e = -EPROTO;
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
	for (size_t i = 0; i < w.nsfds; i++)
		close(w.sfds[i].fd);
	free(w.sfds);
	for (int i = 0; i < w.nrfds; i++)
		close(w.rfds[i]);
	if (stopping && ops->stop)
		ops->stop(user);
	return e;
}

/* --- sources ------------------------------------------------------------ */

struct baton_source {
	struct worker w;
	long long credit; /* items baton allows now (block mode) */
	int unlimited; /* credit -1: drop_oldest mode, no waiting */
	int stopping; /* stop came, or baton closed the channel */
	const char *url, *station;
};

static int source_handle(struct baton_source *s, json_t *hdr)
{
	const char *t = json_string_value(json_object_get(hdr, "t"));
	if (!strcmp(t, "credit")) {
		json_t *n = json_object_get(hdr, "n");
		if (!json_is_integer(n) || json_integer_value(n) < -1) {
			fprintf(stderr, "baton_worker: credit without a valid n from baton\n");
			return -EPROTO;
		}
		if (json_integer_value(n) == -1)
			s->unlimited = 1;
		else
			s->credit += json_integer_value(n);
	} else if (!strcmp(t, "stop")) {
		s->stopping = 1;
	} else if (!strcmp(t, "ping")) {
		/* baton pings no source today; a pong keeps one alive if it does. */
		json_t *pong = json_pack("{s:s, s:O}", "t", "pong", "seq",
					 json_object_get(hdr, "seq"));
		int e = pong ? put_frame(&s->w, pong, NULL, 0) : -ENOMEM;
		json_decref(pong);
		return e ? e : flush_out(&s->w);
	}
	/* Anything else is ignored: a newer baton may send more. */
	return 0;
}

/*
 * Waits up to timeout_ms (-1: no limit) for baton's end to be readable,
 * reads all that is there and handles every complete message.  EOF counts
 * as stop: nobody is left to produce for.
 */
static int source_pump(struct baton_source *s, int timeout_ms)
{
	for (;;) {
		struct pollfd pfd = {.fd = s->w.fd, .events = POLLIN};
		int r = poll(&pfd, 1, timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return 0;
		r = read_more(&s->w);
		if (r < 0)
			return r;
		for (;;) {
			json_t *hdr = NULL;
			char *payload = NULL;
			size_t len = 0;
			int m = next_message(&s->w, &hdr, &payload, &len, NULL);
			if (m < 0) {
				fprintf(stderr, "baton_worker: malformed message from baton\n");
				return m;
			}
			if (m == 0)
				break;
			free(payload); /* nothing baton sends a source carries a payload it uses */
			int e = source_handle(s, hdr);
			json_decref(hdr);
			if (e)
				return e;
		}
		if (r == 1) {
			s->stopping = 1;
			return 0;
		}
		timeout_ms = 0; /* take what else is there, without waiting */
	}
}

int baton_source_run(baton_source_fn fn, void *arg)
{
	const char *fdenv = getenv("BATON_FD");
	if (!fdenv || !fn) {
		if (!fdenv)
			fprintf(stderr, "this is a baton source; run it under `baton serve`\n");
		return -ENOTCONN;
	}
	struct baton_source s;
	memset(&s, 0, sizeof(s));
	s.w.fd = atoi(fdenv);
	s.url = getenv("BATON_SOURCE_URL");
	s.station = getenv("BATON_STATION");
	json_t *ready = json_pack("{s:s, s:i}", "t", "ready", "proto", BATON_WORKER_PROTO);
	int e = ready ? put_frame(&s.w, ready, NULL, 0) : -ENOMEM;
	json_decref(ready);
	if (!e)
		e = flush_out(&s.w);
	if (!e)
		e = fn(&s, arg);
	free(s.w.in.data);
	free(s.w.out.data);
	return e;
}

/* Sends the header hdr (len set here) and then n bytes from p. */
static int source_send(struct baton_source *s, json_t *hdr, const void *p, size_t n)
{
	int e = put_header(&s->w, hdr, n);
	if (!e)
		e = flush_out(&s->w);
	if (!e && n)
		e = write_all(s->w.fd, p, n);
	if (e == -EPIPE || e == -ECONNRESET) {
		s->stopping = 1; /* baton is gone */
		return 0;
	}
	return e ? e : 1;
}

int baton_source_emit(struct baton_source *src, const void *p, size_t n,
		      const char *meta_json)
{
	if (src->stopping)
		return 0;
	json_t *hdr = json_pack("{s:s}", "t", "emit");
	if (!hdr)
		return -ENOMEM;
	if (meta_json) {
		json_t *meta = json_loads(meta_json, 0, NULL);
		if (!json_is_object(meta)) {
			json_decref(meta);
			json_decref(hdr);
			return -EINVAL;
		}
		json_object_set_new(hdr, "meta", meta);
	}
	int e = source_pump(src, 0);
	while (!e && !src->stopping && !src->unlimited && src->credit <= 0)
		e = source_pump(src, -1);
	if (!e && !src->stopping) {
		e = source_send(src, hdr, p, n);
		if (e == 1 && !src->unlimited)
			src->credit--;
	}
	json_decref(hdr);
	return e;
}

int baton_source_eos(struct baton_source *src, const char *session)
{
	if (src->stopping)
		return 0;
	int e = source_pump(src, 0);
	if (e || src->stopping)
		return e;
	json_t *hdr = session ? json_pack("{s:s, s:s}", "t", "eos", "session", session)
			      : json_pack("{s:s}", "t", "eos");
	if (!hdr)
		return -EINVAL; /* a session that is not UTF-8 */
	e = source_send(src, hdr, NULL, 0);
	json_decref(hdr);
	return e;
}

int baton_source_poll(struct baton_source *src, int timeout_ms)
{
	if (src->stopping)
		return 0;
	int e = source_pump(src, timeout_ms < 0 ? -1 : timeout_ms);
	return e ? e : !src->stopping;
}

int baton_source_stopping(const struct baton_source *src)
{
	return src->stopping;
}

const char *baton_source_url(const struct baton_source *src)
{
	return src->url ? src->url : "";
}

const char *baton_source_station(const struct baton_source *src)
{
	return src->station ? src->station : "";
}
