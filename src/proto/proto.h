/*
 * Worker protocol v1 framing (docs/protocol.md is normative; bump
 * BT_PROTO_VERSION when the wire format changes).  A message is one line of
 * compact JSON, then exactly "len" raw bytes when the header says len > 0.
 * This module only cuts bytes into frames and writes frames into buffers; it
 * knows no sockets, and what a message means is decided by its callers.
 */
#ifndef BT_PROTO_H
#define BT_PROTO_H

#include <jansson.h>
#include <stddef.h>
#include <sys/types.h>

#include "../common/common.h"

#define BT_PROTO_VERSION 1
#define BT_PROTO_MAX_HEADER (64 * 1024) /* bytes of a header line, '\n' included */

/*
 * The fast header (docs/protocol.md, "Fast headers"): an alternative
 * encoding of "req" and "res" that a worker offers in its "ready"
 * ("fast":1).  16 bytes, little-endian: magic 0xBA, kind, flags, id
 * length; u32 meta length; u64 payload length.  Then the id, the meta (a
 * JSON object's text, or nothing) and the payload.  A JSON header starts
 * with '{', so the first byte tells the encodings apart frame by frame.
 */
#define BT_FAST_MAGIC 0xBA
#define BT_FAST_HEADER 16
#define BT_FAST_REQ 'q' /* baton -> worker: a request */
#define BT_FAST_RES 'r' /* worker -> baton: success, payload is the answer */
#define BT_FAST_ERR 'e' /* worker -> baton: failure, payload is the error text */
#define BT_FAST_RETRY 0x01 /* flags of BT_FAST_ERR: transient */
#define BT_FAST_VERSION 1

struct bt_frame {
	json_t *hdr; /* the JSON header object; NULL for a fast frame */
	const char *type; /* hdr's "t" ("req"/"res" for a fast frame) */
	char *payload; /* len bytes (malloc'd, NUL-terminated) or NULL */
	size_t len;
	int fast; /* a fast frame: BT_FAST_REQ, _RES or _ERR; 0 for JSON */
	int retry; /* a fast BT_FAST_ERR with BT_FAST_RETRY */
	json_t *meta; /* a fast frame's meta object, or NULL */
	char id[256]; /* a fast frame's id, NUL-terminated */
	int memfd; /* the header said "memfd": len bytes are in a descriptor
		      passed with it, and payload is NULL */
};

struct bt_frame_decoder {
	size_t max_payload; /* largest "len" accepted */
	int fast; /* fast headers are accepted (the worker offered them) */
	struct bt_buf line; /* header line (or fast header, id, meta) gathered so far */
	json_t *hdr; /* parsed header whose payload is still arriving */
	struct bt_frame pending; /* a fast frame whose payload is still arriving */
	size_t want; /* a fast frame: bytes of header + id + meta, once known */
	char *payload;
	size_t len, have;
	int memfd; /* the pending header carries a memfd of fdlen bytes */
	size_t fdlen;
	char err[256]; /* what was wrong, after a negative return */
};

void bt_frame_decoder_init(struct bt_frame_decoder *dec, size_t max_payload);
void bt_frame_decoder_release(struct bt_frame_decoder *dec);

/*
 * Consumes bytes from buf.  Returns how many were consumed (possibly fewer
 * than len, when a frame completed: call again with the rest), and fills
 * *out when a frame is complete (bt_frame_complete(out)), which the caller then
 * owns and frees with bt_frame_release().  Returns BT_EPROTO when the bytes
 * break the protocol (dec->err says how); the decoder is then unusable.
 */
ssize_t bt_frame_decode(struct bt_frame_decoder *dec, const char *buf,
			size_t len, struct bt_frame *out);

void bt_frame_release(struct bt_frame *f);

static inline int bt_frame_complete(const struct bt_frame *f)
{
	return f->hdr != NULL || f->fast != 0;
}

/*
 * Appends one message to out: hdr (a JSON object, "len" is set here from
 * len) as a compact line, then the payload.  Returns 0, or BT_ETOOBIG when
 * the header would exceed BT_PROTO_MAX_HEADER (nothing is appended then).
 */
int bt_frame_encode(struct bt_buf *out, json_t *hdr, const void *payload,
		    size_t len);

/*
 * Appends one fast frame to out: kind (BT_FAST_*), flags, id (1 to 255
 * bytes), meta (a JSON object, or NULL for none), then the payload.
 * Returns 0, BT_ETOOBIG when id and meta would exceed BT_PROTO_MAX_HEADER,
 * or -EINVAL for an empty id or one over 255 bytes (nothing is appended
 * then).
 */
int bt_frame_encode_fast(struct bt_buf *out, int kind, int flags, const char *id,
			 json_t *meta, const void *payload, size_t len);

/*
 * Loads a fast frame's meta text as json_loadb(JSON_REJECT_DUPLICATES |
 * JSON_ALLOW_NUL) does, the same tree (key order included) or the same
 * refusal in *jerr; flat objects of plain strings, integers and literals
 * without jansson's lexer.
 */
json_t *bt_frame_meta_load(const char *text, size_t len, json_error_t *jerr);

/*
 * Appends v as compact JSON text to out: the bytes json_dumps(v,
 * JSON_COMPACT) gives, key order included, in one pass and without its
 * per-character checks.  Returns 0, or -1 when jansson cannot dump a value
 * (out then holds part of the text).
 */
int bt_json_append(struct bt_buf *out, json_t *v);

#endif
