/*
 * The frame codec of protocol v1: header line + raw payload, or a fast
 * header + id + meta + raw payload.  The decoder is a small state machine
 * (gathering a header line or a fast header, gathering a payload) and
 * never trusts a length before checking it against its limit.
 */
#include "proto.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void bt_frame_decoder_init(struct bt_frame_decoder *dec, size_t max_payload)
{
	memset(dec, 0, sizeof(*dec));
	dec->max_payload = max_payload;
}

void bt_frame_decoder_release(struct bt_frame_decoder *dec)
{
	bt_buf_release(&dec->line);
	json_decref(dec->hdr);
	json_decref(dec->pending.meta);
	free(dec->payload);
	dec->hdr = NULL;
	dec->pending.meta = NULL;
	dec->payload = NULL;
}

void bt_frame_release(struct bt_frame *f)
{
	json_decref(f->hdr);
	json_decref(f->meta);
	free(f->payload);
	f->hdr = f->meta = NULL;
	f->payload = NULL;
	f->fast = 0;
}

static ssize_t violation(struct bt_frame_decoder *dec, const char *what,
			 const char *detail)
{
	snprintf(dec->err, sizeof(dec->err), "%s%s%s", what,
		 detail ? ": " : "", detail ? detail : "");
	return BT_EPROTO;
}

static ssize_t complete(struct bt_frame_decoder *dec, struct bt_frame *out)
{
	if (dec->pending.fast) {
		if (dec->pending.fast == BT_FAST_ERR && memchr(dec->payload, 0, dec->len))
			return violation(dec, "fast error text contains a NUL character", NULL);
		*out = dec->pending;
		memset(&dec->pending, 0, sizeof(dec->pending));
	} else {
		out->hdr = dec->hdr;
		out->type = json_string_value(json_object_get(dec->hdr, "t"));
	}
	out->payload = dec->payload;
	out->len = dec->memfd ? dec->fdlen : dec->len;
	out->memfd = dec->memfd;
	dec->memfd = 0;
	dec->fdlen = 0;
	dec->hdr = NULL;
	dec->payload = NULL;
	dec->len = dec->have = 0;
	return 0;
}

/* A string with a NUL inside: as a C string it would read as something else. */
static int has_nul(json_t *s)
{
	return json_is_string(s) && strlen(json_string_value(s)) != json_string_length(s);
}

/*
 * Parses the gathered line (without its '\n') into dec->hdr.  "\u0000" is
 * valid JSON and is allowed in the metadata and texts a worker sends, but
 * not in "t" and "id", which are compared as C strings.
 */
static ssize_t parse_header(struct bt_frame_decoder *dec)
{
	json_error_t jerr;
	json_t *hdr = json_loadb(dec->line.data, dec->line.len,
				 JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
	if (!hdr)
		return violation(dec, "header is not JSON", jerr.text);
	if (!json_is_object(hdr)) {
		json_decref(hdr);
		return violation(dec, "header is not a JSON object", NULL);
	}
	if (!json_is_string(json_object_get(hdr, "t"))) {
		json_decref(hdr);
		return violation(dec, "header has no string \"t\"", NULL);
	}
	if (has_nul(json_object_get(hdr, "t")) || has_nul(json_object_get(hdr, "id"))) {
		json_decref(hdr);
		return violation(dec, "\"t\" or \"id\" contains a NUL character", NULL);
	}
	json_t *jlen = json_object_get(hdr, "len");
	json_int_t len = 0;
	if (jlen) {
		if (!json_is_integer(jlen) || json_integer_value(jlen) < 0) {
			json_decref(hdr);
			return violation(dec, "\"len\" is not a non-negative integer",
					 NULL);
		}
		len = json_integer_value(jlen);
		if ((unsigned long long)len > dec->max_payload) {
			char d[96];
			snprintf(d, sizeof(d), "%lld bytes, limit %zu", (long long)len,
				 dec->max_payload);
			json_decref(hdr);
			return violation(dec, "payload over the limit", d);
		}
	}
	json_t *jfd = json_object_get(hdr, "memfd");
	/* In "ready", "memfd": true announces that the worker takes memfds. */
	if (jfd && strcmp(json_string_value(json_object_get(hdr, "t")), "ready")) {
		/* The payload travels as a descriptor: no bytes follow the header. */
		const char *bad = NULL;
		if (!json_is_integer(jfd) || json_integer_value(jfd) < 0)
			bad = "\"memfd\" is not a non-negative integer";
		else if (len > 0)
			bad = "both \"len\" and \"memfd\"";
		else if ((unsigned long long)json_integer_value(jfd) > dec->max_payload)
			bad = "memfd payload over the limit";
		if (bad) {
			json_decref(hdr);
			return violation(dec, bad, NULL);
		}
		dec->memfd = 1;
		dec->fdlen = (size_t)json_integer_value(jfd);
	}
	dec->hdr = hdr;
	dec->len = (size_t)len;
	dec->have = 0;
	dec->payload = NULL;
	if (len > 0) {
		/* Allocated only now that the length passed the limit check. */
		dec->payload = malloc((size_t)len + 1);
		if (!dec->payload) {
			json_decref(hdr);
			dec->hdr = NULL;
			return violation(dec, "cannot allocate payload", NULL);
		}
		dec->payload[len] = '\0';
	}
	dec->line.len = 0;
	return 0;
}

static uint64_t get_le(const unsigned char *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void put_le(char *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++, v >>= 8)
		p[i] = (char)(v & 0xff);
}

/* The 16 fixed bytes of a fast header are in dec->line: check them. */
static ssize_t parse_fast_fixed(struct bt_frame_decoder *dec)
{
	const unsigned char *h = (const unsigned char *)dec->line.data;
	int kind = h[1], flags = h[2], idlen = h[3];
	uint64_t metalen = get_le(h + 4, 4), len = get_le(h + 8, 8);
	if (kind != BT_FAST_REQ && kind != BT_FAST_RES && kind != BT_FAST_ERR)
		return violation(dec, "fast header of an unknown kind", NULL);
	if (flags & ~BT_FAST_RETRY || (flags && kind != BT_FAST_ERR))
		return violation(dec, "fast header with unknown flags", NULL);
	if (idlen == 0)
		return violation(dec, "fast header without an id", NULL);
	if (kind == BT_FAST_ERR && metalen)
		return violation(dec, "fast error with a meta", NULL);
	if (BT_FAST_HEADER + idlen + metalen > BT_PROTO_MAX_HEADER)
		return violation(dec, "header line over 65536 bytes", NULL);
	if (len > dec->max_payload || (kind == BT_FAST_ERR && len > BT_PROTO_MAX_HEADER)) {
		char d[96];
		snprintf(d, sizeof(d), "%llu bytes, limit %zu", (unsigned long long)len,
			 kind == BT_FAST_ERR ? (size_t)BT_PROTO_MAX_HEADER : dec->max_payload);
		return violation(dec, "payload over the limit", d);
	}
	dec->want = BT_FAST_HEADER + idlen + (size_t)metalen;
	dec->len = (size_t)len;
	return 0;
}

/* A byte a JSON string may hold as it is, that needs no check of jansson's. */
static int plain(unsigned char c)
{
	return c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
}

static size_t skip_ws(const char *p, size_t i, size_t n)
{
	while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
		i++;
	return i;
}

/* A value of a flat meta at p[*i]; NULL for what only json_loadb may judge. */
static json_t *flat_value(const char *p, size_t *i, size_t n)
{
	size_t at = *i, k = at;
	if (p[at] == '"') {
		for (k = at + 1; k < n && plain((unsigned char)p[k]); k++)
			;
		if (k >= n || p[k] != '"')
			return NULL;
		*i = k + 1;
		return json_stringn_nocheck(p + at + 1, k - at - 1);
	}
	static const struct {
		const char *word;
		size_t len;
	} words[] = {{"true", 4}, {"false", 5}, {"null", 4}};
	for (size_t w = 0; w < BT_ARRAY_SIZE(words); w++)
		if (n - at > words[w].len && !memcmp(p + at, words[w].word, words[w].len) &&
		    !(p[at + words[w].len] >= 'a' && p[at + words[w].len] <= 'z')) {
			*i = at + words[w].len;
			return w == 0 ? json_true() : w == 1 ? json_false() : json_null();
		}
	/* Integers of at most 18 digits, which no long long overflows; no "-0", "01". */
	k += p[at] == '-';
	size_t digits = k;
	long long v = 0;
	while (k < n && p[k] >= '0' && p[k] <= '9' && k - digits < 18)
		v = v * 10 + (p[k++] - '0');
	if (k == digits || k >= n || (p[digits] == '0' && (k - digits > 1 || p[at] == '-')) ||
	    (p[k] >= '0' && p[k] <= '9') || p[k] == '.' || p[k] == 'e' || p[k] == 'E')
		return NULL;
	*i = k;
	return json_integer(p[at] == '-' ? -v : v);
}

/*
 * A fast answer's meta is nearly always a flat object of short ASCII
 * strings, integers and literals ({"content_type":"application/json",
 * "v2_header_length":123}): built here straight into a tree, it costs a
 * fraction of json_loadb's lexer.  Anything else (nesting, escapes, bytes
 * over 0x7f, reals, a repeated key, trailing bytes) goes to json_loadb,
 * which takes or refuses it, and words the refusal, as it always did.
 */
json_t *bt_frame_meta_load(const char *p, size_t n, json_error_t *jerr)
{
	json_t *o = json_object();
	size_t i = skip_ws(p, 0, n);
	if (i >= n || p[i] != '{')
		goto slow;
	i = skip_ws(p, i + 1, n);
	if (i < n && p[i] == '}')
		goto end;
	for (;;) {
		size_t k = i + 1;
		if (i >= n || p[i] != '"')
			goto slow;
		while (k < n && plain((unsigned char)p[k]))
			k++;
		if (k >= n || p[k] != '"')
			goto slow;
		const char *key = p + i + 1;
		size_t keylen = k - i - 1;
		i = skip_ws(p, k + 1, n);
		if (i >= n || p[i] != ':')
			goto slow;
		i = skip_ws(p, i + 1, n);
		json_t *v = NULL;
		if (i < n && !json_object_getn(o, key, keylen))
			v = flat_value(p, &i, n);
		if (!v)
			goto slow;
		json_object_setn_new_nocheck(o, key, keylen, v);
		i = skip_ws(p, i, n);
		if (i < n && p[i] == ',') {
			i = skip_ws(p, i + 1, n);
			continue;
		}
		if (i < n && p[i] == '}')
			goto end;
		goto slow;
	}
end:
	if (skip_ws(p, i + 1, n) == n)
		return o;
slow:
	json_decref(o);
	return json_loadb(p, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, jerr);
}

/* A fast frame's id and meta are in dec->line too: take them. */
static ssize_t parse_fast_rest(struct bt_frame_decoder *dec)
{
	const unsigned char *h = (const unsigned char *)dec->line.data;
	struct bt_frame *f = &dec->pending;
	size_t idlen = h[3];
	const char *id = dec->line.data + BT_FAST_HEADER;
	size_t metalen = dec->want - BT_FAST_HEADER - idlen;
	if (memchr(id, 0, idlen))
		return violation(dec, "\"t\" or \"id\" contains a NUL character", NULL);
	if (metalen) {
		json_error_t jerr;
		f->meta = bt_frame_meta_load(id + idlen, metalen, &jerr);
		if (!f->meta)
			return violation(dec, "fast header's meta is not JSON", jerr.text);
		if (!json_is_object(f->meta)) {
			json_decref(f->meta);
			f->meta = NULL;
			return violation(dec, "fast header's meta is not a JSON object", NULL);
		}
	}
	memcpy(f->id, id, idlen);
	f->id[idlen] = '\0';
	f->fast = h[1];
	f->retry = h[2] & BT_FAST_RETRY;
	f->type = f->fast == BT_FAST_REQ ? "req" : "res";
	dec->have = 0;
	dec->payload = NULL;
	if (dec->len > 0 || f->fast == BT_FAST_ERR) {
		/* An error's text is a string even when empty. */
		dec->payload = malloc(dec->len + 1);
		if (!dec->payload)
			return violation(dec, "cannot allocate payload", NULL);
		dec->payload[dec->len] = '\0';
	}
	dec->line.len = 0;
	dec->want = 0;
	return 0;
}

/* Gathers a fast frame's header, id and meta; *done once they are all in. */
static ssize_t gather_fast(struct bt_frame_decoder *dec, const char *buf, size_t len,
			   size_t *used, int *done)
{
	*done = 0;
	if (!dec->want)
		dec->want = BT_FAST_HEADER;
	size_t n = BT_MIN(len - *used, dec->want - dec->line.len);
	bt_buf_append(&dec->line, buf + *used, n);
	*used += n;
	if (dec->line.len < dec->want)
		return 0;
	if (dec->want == BT_FAST_HEADER) {
		ssize_t r = parse_fast_fixed(dec);
		if (r < 0 || dec->line.len < dec->want)
			return r;
	}
	ssize_t r = parse_fast_rest(dec);
	*done = r == 0;
	return r;
}

ssize_t bt_frame_decode(struct bt_frame_decoder *dec, const char *buf,
			size_t len, struct bt_frame *out)
{
	size_t used = 0;
	out->hdr = out->meta = NULL;
	out->payload = NULL;
	out->type = NULL;
	out->len = 0;
	out->fast = out->retry = 0;
	while (used < len) {
		if (dec->hdr || dec->pending.fast) {
			size_t n = BT_MIN(len - used, dec->len - dec->have);
			memcpy(dec->payload + dec->have, buf + used, n);
			dec->have += n;
			used += n;
			if (dec->have == dec->len) {
				ssize_t r = complete(dec, out);
				return r < 0 ? r : (ssize_t)used;
			}
			continue;
		}
		int magic = dec->line.len == 0 && (unsigned char)buf[used] == BT_FAST_MAGIC;
		if (magic && !dec->fast)
			return violation(dec, "a fast header from a worker that did not offer them",
					 NULL);
		if (dec->want || magic) {
			int done;
			ssize_t r = gather_fast(dec, buf, len, &used, &done);
			if (r < 0)
				return r;
			if (done && dec->len == 0) {
				r = complete(dec, out);
				return r < 0 ? r : (ssize_t)used;
			}
			continue;
		}
		const char *nl = memchr(buf + used, '\n', len - used);
		size_t n = nl ? (size_t)(nl - (buf + used)) : len - used;
		if (dec->line.len + n + (nl ? 1 : 0) > BT_PROTO_MAX_HEADER)
			return violation(dec, "header line over 65536 bytes", NULL);
		bt_buf_append(&dec->line, buf + used, n);
		used += n;
		if (!nl)
			break;
		used++; /* the newline */
		if (dec->line.len == 0)
			return violation(dec, "empty header line", NULL);
		ssize_t r = parse_header(dec);
		if (r < 0)
			return r;
		if (dec->len == 0) {
			complete(dec, out);
			return (ssize_t)used;
		}
	}
	return (ssize_t)used;
}

static int append_cb(const char *buf, size_t size, void *data)
{
	bt_buf_append(data, buf, size);
	return 0;
}

/* Takes back what was appended past start (a bt_buf stays NUL-terminated). */
static int rollback(struct bt_buf *out, size_t start, int e)
{
	out->len = start;
	if (out->data)
		out->data[start] = '\0';
	return e;
}

/* Appends JSON text of doc to out in one pass (json_dumpb would need two). */
static int dump_into(struct bt_buf *out, json_t *doc)
{
	return json_dump_callback(doc, append_cb, out, JSON_COMPACT);
}

/*
 * Compact JSON of a request's metadata, for fast headers: jansson's dump
 * cost a fifth of baton's own instructions per request.  Strings, integers
 * and literals are written here; reals go through jansson (their shortest
 * exact form is its business).  Same text as jansson's compact dump, key
 * order included.
 */
static void put_string(struct bt_buf *out, const char *s, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t run = 0, i = 0;
	/* Nearly every string needs no escape: copied as it is checked. */
	bt_buf_reserve(out, n + 2);
	char *d = out->data + out->len;
	*d++ = '"';
	while (i < n && (unsigned char)s[i] >= 0x20 && s[i] != '"' && s[i] != '\\') {
		d[i] = s[i];
		i++;
	}
	if (i == n) {
		d[n] = '"';
		out->len += n + 2;
		out->data[out->len] = '\0';
		return;
	}
	out->len++; /* the opening quote; the rest as it comes */
	for (; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		bt_buf_append(out, s + run, i - run);
		run = i + 1;
		char e[6] = {'\\', (char)c};
		size_t en = 2;
		switch (c) {
		case '"': case '\\': break;
		case '\b': e[1] = 'b'; break;
		case '\f': e[1] = 'f'; break;
		case '\n': e[1] = 'n'; break;
		case '\r': e[1] = 'r'; break;
		case '\t': e[1] = 't'; break;
		default:
			memcpy(e + 1, "u00", 3);
			e[4] = hex[c >> 4];
			e[5] = hex[c & 15];
			en = 6;
		}
		bt_buf_append(out, e, en);
	}
	bt_buf_append(out, s + run, n - run);
	bt_buf_append(out, "\"", 1);
}

static void put_integer(struct bt_buf *out, json_int_t v)
{
	char d[24];
	int i = sizeof(d);
	/* Negated as unsigned: the most negative value has no positive twin. */
	unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
	do {
		d[--i] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		d[--i] = '-';
	bt_buf_append(out, d + i, sizeof(d) - (size_t)i);
}

int bt_json_append(struct bt_buf *out, json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		const char *key;
		size_t klen;
		json_t *item;
		int first = 1;
		bt_buf_append(out, "{", 1);
		json_object_keylen_foreach(v, key, klen, item) {
			if (!first)
				bt_buf_append(out, ",", 1);
			first = 0;
			put_string(out, key, klen);
			bt_buf_append(out, ":", 1);
			if (bt_json_append(out, item))
				return -1;
		}
		bt_buf_append(out, "}", 1);
		return 0;
	}
	case JSON_ARRAY:
		bt_buf_append(out, "[", 1);
		for (size_t i = 0; i < json_array_size(v); i++) {
			if (i)
				bt_buf_append(out, ",", 1);
			if (bt_json_append(out, json_array_get(v, i)))
				return -1;
		}
		bt_buf_append(out, "]", 1);
		return 0;
	case JSON_STRING:
		put_string(out, json_string_value(v), json_string_length(v));
		return 0;
	case JSON_INTEGER:
		put_integer(out, json_integer_value(v));
		return 0;
	case JSON_TRUE:
		bt_buf_append(out, "true", 4);
		return 0;
	case JSON_FALSE:
		bt_buf_append(out, "false", 5);
		return 0;
	case JSON_NULL:
		bt_buf_append(out, "null", 4);
		return 0;
	default:
		return json_dump_callback(v, append_cb, out, JSON_COMPACT | JSON_ENCODE_ANY);
	}
}

int bt_frame_encode(struct bt_buf *out, json_t *hdr, const void *payload,
		    size_t len)
{
	size_t start = out->len;
	json_object_set_new(hdr, "len", json_integer((json_int_t)len));
	if (dump_into(out, hdr) != 0 || out->len == start ||
	    out->len - start + 1 > BT_PROTO_MAX_HEADER)
		return rollback(out, start, BT_ETOOBIG);
	bt_buf_reserve(out, 1 + len);
	out->data[out->len++] = '\n';
	bt_buf_append(out, payload, len);
	return 0;
}

int bt_frame_encode_fast(struct bt_buf *out, int kind, int flags, const char *id,
			 json_t *meta, const void *payload, size_t len)
{
	size_t idlen = strlen(id), start = out->len;
	if (idlen == 0 || idlen > 255)
		return -EINVAL;
	bt_buf_reserve(out, BT_FAST_HEADER + idlen + 256 + len);
	out->len += BT_FAST_HEADER;
	bt_buf_append(out, id, idlen);
	size_t mstart = out->len;
	if (meta && bt_json_append(out, meta) != 0)
		return rollback(out, start, BT_ETOOBIG);
	size_t metalen = out->len - mstart;
	if (BT_FAST_HEADER + idlen + metalen > BT_PROTO_MAX_HEADER)
		return rollback(out, start, BT_ETOOBIG);
	char *h = out->data + start;
	h[0] = (char)BT_FAST_MAGIC;
	h[1] = (char)kind;
	h[2] = (char)flags;
	h[3] = (char)idlen;
	put_le(h + 4, metalen, 4);
	put_le(h + 8, len, 8);
	bt_buf_append(out, payload, len);
	return 0;
}
