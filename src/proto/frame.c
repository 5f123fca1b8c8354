/*
 * The frame codec of protocol v1: header line + raw payload.  The decoder
 * is a two-state machine (gathering a header line, gathering a payload)
 * and never trusts a length before checking it against its limit.
 */
#include "proto.h"

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
	free(dec->payload);
	dec->hdr = NULL;
	dec->payload = NULL;
}

void bt_frame_release(struct bt_frame *f)
{
	json_decref(f->hdr);
	free(f->payload);
	memset(f, 0, sizeof(*f));
}

static ssize_t violation(struct bt_frame_decoder *dec, const char *what,
			 const char *detail)
{
	snprintf(dec->err, sizeof(dec->err), "%s%s%s", what,
		 detail ? ": " : "", detail ? detail : "");
	return BT_EPROTO;
}

static void complete(struct bt_frame_decoder *dec, struct bt_frame *out)
{
	out->hdr = dec->hdr;
	out->type = json_string_value(json_object_get(dec->hdr, "t"));
	out->payload = dec->payload;
	out->len = dec->memfd ? dec->fdlen : dec->len;
	out->memfd = dec->memfd;
	dec->memfd = 0;
	dec->fdlen = 0;
	dec->hdr = NULL;
	dec->payload = NULL;
	dec->len = dec->have = 0;
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

ssize_t bt_frame_decode(struct bt_frame_decoder *dec, const char *buf,
			size_t len, struct bt_frame *out)
{
	size_t used = 0;
	memset(out, 0, sizeof(*out));
	while (used < len) {
		if (dec->hdr) {
			size_t n = BT_MIN(len - used, dec->len - dec->have);
			memcpy(dec->payload + dec->have, buf + used, n);
			dec->have += n;
			used += n;
			if (dec->have == dec->len) {
				complete(dec, out);
				return (ssize_t)used;
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

int bt_frame_encode(struct bt_buf *out, json_t *hdr, const void *payload,
		    size_t len)
{
	json_object_set_new(hdr, "len", json_integer((json_int_t)len));
	size_t need = json_dumpb(hdr, NULL, 0, JSON_COMPACT);
	if (need == 0 || need + 1 > BT_PROTO_MAX_HEADER)
		return BT_ETOOBIG;
	bt_buf_reserve(out, need + 1 + len);
	json_dumpb(hdr, out->data + out->len, need, JSON_COMPACT);
	out->len += need;
	out->data[out->len++] = '\n';
	bt_buf_append(out, payload, len);
	return 0;
}
