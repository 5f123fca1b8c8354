/*
 * libFuzzer target of the worker protocol v1 frame decoder (src/proto): the
 * bytes a worker may send, JSON headers and (when the first byte's top bit
 * says the worker offered them) fast headers.  It checks three properties besides memory
 * safety: how the stream is cut into reads does not change the frames
 * decoded, the decoder keeps its contract (progress, NUL-terminated
 * payloads), and every decoded frame encodes to bytes that decode back to
 * the same frame; and the input read as a fast meta loads as json_loadb
 * loads it.  A broken property aborts, which the fuzzer reports.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

#define MAX_PAYLOAD (1u << 20) /* small, so that huge claimed lengths are refused */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void broken(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_frame: property broken: %s%s%s\n", what, detail ? ": " : "",
		detail ? detail : "");
	abort();
}

/* Appends what identifies a frame: its type, its header with sorted keys, its payload. */
static void record(struct bt_buf *log, const struct bt_frame *f)
{
	if (f->fast) {
		char *meta = f->meta ? json_dumps(f->meta, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
		bt_buf_printf(log, "fast %c %d %s\n%s\n%zu\n", f->fast, f->retry, f->id,
			      meta ? meta : "-", f->len);
		bt_buf_append(log, f->payload, f->len);
		free(meta);
		return;
	}
	char *hdr = json_dumps(f->hdr, JSON_COMPACT | JSON_SORT_KEYS);
	if (!hdr)
		broken("a decoded header cannot be dumped", f->type);
	bt_buf_printf(log, "%s\n%s\n%zu\n", f->type, hdr, f->len);
	if (f->payload)
		bt_buf_append(log, f->payload, f->len);
	free(hdr);
}

/* What the decoder promises about a fast frame it hands out. */
static void check_fast(const struct bt_frame *f)
{
	if (f->hdr)
		broken("a fast frame with a JSON header", NULL);
	if (f->fast != BT_FAST_REQ && f->fast != BT_FAST_RES && f->fast != BT_FAST_ERR)
		broken("a fast frame of an unknown kind", NULL);
	if (strcmp(f->type, f->fast == BT_FAST_REQ ? "req" : "res"))
		broken("a fast frame's type is not its kind's", f->type);
	if (!f->id[0] || strlen(f->id) > 255)
		broken("a fast frame's id is empty or too long", NULL);
	if (f->meta && !json_is_object(f->meta))
		broken("a fast frame's meta is not an object", f->id);
	if (f->retry && f->fast != BT_FAST_ERR)
		broken("retry on a fast frame that is no error", f->id);
	if (f->fast == BT_FAST_ERR && f->meta)
		broken("a fast error with a meta", f->id);
	if (f->fast == BT_FAST_ERR &&
	    (!f->payload || f->len > BT_PROTO_MAX_HEADER || strlen(f->payload) != f->len))
		broken("a fast error without a NUL-free text under 64 KiB", f->id);
	if (f->len > MAX_PAYLOAD)
		broken("a payload over max_payload was accepted", NULL);
	if (f->len > 0 && !f->payload)
		broken("payload and len disagree", f->id);
	if (f->payload && f->payload[f->len] != '\0')
		broken("payload is not NUL-terminated", f->id);
}

/* Encodes fast frame f, decodes the bytes in one call, and expects the same frame. */
static void round_trip_fast(const struct bt_frame *f)
{
	struct bt_buf wire = BT_BUF_INIT;
	struct bt_frame_decoder dec;
	struct bt_frame back;
	/* A meta near the limit can grow when re-dumped (reals), as with JSON headers. */
	if (bt_frame_encode_fast(&wire, f->fast, f->retry ? BT_FAST_RETRY : 0, f->id, f->meta,
				 f->payload, f->len) == BT_ETOOBIG) {
		bt_buf_release(&wire);
		return;
	}
	bt_frame_decoder_init(&dec, MAX_PAYLOAD);
	dec.fast = 1;
	ssize_t r = bt_frame_decode(&dec, wire.data, wire.len, &back);
	if (r < 0)
		broken("an encoded fast frame does not decode", dec.err);
	if ((size_t)r != wire.len || !back.fast)
		broken("an encoded fast frame does not decode in one call", f->id);
	if (back.fast != f->fast || back.retry != f->retry || strcmp(back.id, f->id))
		broken("kind, retry or id changed in a round trip", f->id);
	if (back.len != f->len || (f->len && memcmp(back.payload, f->payload, f->len)))
		broken("the payload changed in a round trip", f->id);
	if ((back.meta != NULL) != (f->meta != NULL) ||
	    (f->meta && !json_equal(back.meta, f->meta)))
		broken("the meta changed in a round trip", f->id);
	bt_frame_release(&back);
	bt_frame_decoder_release(&dec);
	bt_buf_release(&wire);
}

/* What the decoder promises about a frame it hands out. */
static void check_frame(const struct bt_frame *f)
{
	if (f->fast) {
		check_fast(f);
		return;
	}
	if (!json_is_object(f->hdr) || !f->type)
		broken("a frame without an object header and a type", NULL);
	if (strcmp(f->type, json_string_value(json_object_get(f->hdr, "t"))))
		broken("type is not the header's \"t\"", f->type);
	if (f->len > MAX_PAYLOAD)
		broken("a payload over max_payload was accepted", NULL);
	if (f->memfd) {
		/* Its bytes are in a descriptor: none inline, len from "memfd". */
		json_t *m = json_object_get(f->hdr, "memfd");
		if (f->payload || !json_is_integer(m) || (size_t)json_integer_value(m) != f->len)
			broken("a memfd frame with inline bytes or another length", f->type);
	} else if ((f->len > 0) != (f->payload != NULL)) {
		broken("payload and len disagree", f->type);
	}
	if (f->payload && f->payload[f->len] != '\0')
		broken("payload is not NUL-terminated", f->type);
}

/* Encodes f, decodes the bytes in one call, and expects the same frame. */
static void round_trip(const struct bt_frame *f)
{
	if (f->fast) {
		round_trip_fast(f);
		return;
	}
	struct bt_buf wire = BT_BUF_INIT;
	struct bt_frame_decoder dec;
	struct bt_frame back;
	json_t *hdr = json_deep_copy(f->hdr);

	if (!hdr)
		broken("a decoded header cannot be copied", f->type);
	/*
	 * A header near the 64 KiB limit can grow when re-dumped (reals get
	 * 17 digits), so BT_ETOOBIG is an answer, not a bug.
	 */
	/* A memfd frame is encoded as baton sends one: the header alone. */
	if (bt_frame_encode(&wire, hdr, f->memfd ? NULL : f->payload, f->memfd ? 0 : f->len) ==
	    BT_ETOOBIG) {
		json_decref(hdr);
		bt_buf_release(&wire);
		return;
	}
	bt_frame_decoder_init(&dec, MAX_PAYLOAD);
	ssize_t r = bt_frame_decode(&dec, wire.data, wire.len, &back);
	if (r < 0)
		broken("an encoded frame does not decode", dec.err);
	if ((size_t)r != wire.len || !back.hdr)
		broken("an encoded frame does not decode in one call", f->type);
	if (strcmp(back.type, f->type))
		broken("the type changed in a round trip", f->type);
	if (back.len != f->len || back.memfd != f->memfd ||
	    (f->payload && f->len && memcmp(back.payload, f->payload, f->len)))
		broken("the payload changed in a round trip", f->type);
	/* hdr now carries the "len" that encode set; the rest must be untouched. */
	if (!json_equal(back.hdr, hdr))
		broken("the header changed in a round trip", f->type);
	bt_frame_release(&back);
	bt_frame_decoder_release(&dec);
	json_decref(hdr);
	bt_buf_release(&wire);
}

/*
 * Decodes buf in reads of the sizes that chunk_seed chooses (0: one read of
 * everything), until the bytes end or the decoder refuses them.  Appends
 * each frame to log and returns 1 if the decoder refused the stream.
 */
static int decode_stream(const uint8_t *buf, size_t len, unsigned chunk_seed, int fast,
			 struct bt_buf *log)
{
	struct bt_frame_decoder dec;
	uint32_t state = chunk_seed * 2654435761u;
	size_t off = 0;
	int refused = 0;

	bt_frame_decoder_init(&dec, MAX_PAYLOAD);
	dec.fast = fast;
	while (off < len && !refused) {
		size_t n = len - off;
		if (chunk_seed) {
			/* Read sizes from 1 to chunk_seed bytes, varying as a socket's do. */
			state = state * 1103515245u + 12345u;
			n = BT_MIN(n, 1 + (state >> 8) % chunk_seed);
		}
		/*
		 * Each read in a buffer of its own, freed once consumed: ASan then
		 * sees a read past it, or a frame that kept a pointer into it.
		 */
		char *chunk = malloc(n);
		const char *p = chunk;
		memcpy(chunk, buf + off, n);
		off += n;
		while (n > 0) {
			struct bt_frame f;
			ssize_t r = bt_frame_decode(&dec, p, n, &f);
			if (r < 0) {
				if (bt_frame_complete(&f))
					broken("a frame handed out with an error", dec.err);
				if (!dec.err[0])
					broken("an error without a reason", NULL);
				refused = 1;
				break;
			}
			if ((size_t)r > n)
				broken("decode consumed more than it was given", NULL);
			if (r == 0 && !bt_frame_complete(&f))
				broken("decode made no progress", NULL);
			p += r;
			n -= (size_t)r;
			if (!bt_frame_complete(&f))
				continue;
			check_frame(&f);
			record(log, &f);
			round_trip(&f);
			bt_frame_release(&f);
		}
		free(chunk);
	}
	bt_buf_printf(log, "refused=%d\n", refused);
	bt_frame_decoder_release(&dec);
	return refused;
}

/*
 * Input: one byte whose top bit says whether fast headers were offered and
 * whose low 7 bits choose the read sizes (0: the whole stream at once, N:
 * reads of 1..N bytes), then the bytes a worker sends.
 */
/* The input, read as a fast meta: the flat path's tree is json_loadb's, or its refusal. */
static void meta_load(const uint8_t *data, size_t size)
{
	json_error_t je, jf;
	json_t *want =
	    json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
	json_t *got = bt_frame_meta_load((const char *)data, size, &jf);
	if (!want != !got)
		broken("a meta is taken exactly when json_loadb takes it", NULL);
	if (!want && strcmp(je.text, jf.text))
		broken("a refused meta gets json_loadb's sentence", je.text);
	if (want) {
		char *a = json_dumps(want, JSON_COMPACT), *b = json_dumps(got, JSON_COMPACT);
		if (!a || !b || strcmp(a, b))
			broken("a meta loads as json_loadb's tree, key order included", a);
		free(a);
		free(b);
	}
	json_decref(want);
	json_decref(got);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bt_buf split = BT_BUF_INIT, whole = BT_BUF_INIT;

	if (size < 1)
		return 0;
	meta_load(data + 1, size - 1);
	int fast = data[0] & 0x80;
	unsigned chunk = data[0] & 0x7f;
	decode_stream(data + 1, size - 1, chunk, fast, &split);
	if (chunk) {
		decode_stream(data + 1, size - 1, 0, fast, &whole);
		if (split.len != whole.len || memcmp(split.data, whole.data, split.len))
			broken("the frames depend on how the stream is cut into reads", NULL);
	}
	bt_buf_release(&split);
	bt_buf_release(&whole);
	return 0;
}
