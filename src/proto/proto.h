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

struct bt_frame {
	json_t *hdr; /* the header object; NULL while no frame is complete */
	const char *type; /* hdr's "t", valid while hdr lives */
	char *payload; /* len bytes (malloc'd, NUL-terminated) or NULL */
	size_t len;
	int memfd; /* the header said "memfd": len bytes are in a descriptor
		      passed with it, and payload is NULL */
};

struct bt_frame_decoder {
	size_t max_payload; /* largest "len" accepted */
	struct bt_buf line; /* header line gathered so far */
	json_t *hdr; /* parsed header whose payload is still arriving */
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
 * *out when a frame is complete (out->hdr != NULL), which the caller then
 * owns and frees with bt_frame_release().  Returns BT_EPROTO when the bytes
 * break the protocol (dec->err says how); the decoder is then unusable.
 */
ssize_t bt_frame_decode(struct bt_frame_decoder *dec, const char *buf,
			size_t len, struct bt_frame *out);

void bt_frame_release(struct bt_frame *f);

/*
 * Appends one message to out: hdr (a JSON object, "len" is set here from
 * len) as a compact line, then the payload.  Returns 0, or BT_ETOOBIG when
 * the header would exceed BT_PROTO_MAX_HEADER (nothing is appended then).
 */
int bt_frame_encode(struct bt_buf *out, json_t *hdr, const void *payload,
		    size_t len);

#endif
