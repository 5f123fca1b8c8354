/*
 * libFuzzer target of the gRPC ingress's pure half (src/grpc/wire.c): the
 * bytes a gRPC client sends on a call (length-prefixed messages holding
 * ModelInferRequests) and the answers a worker may give.  Besides memory
 * safety it checks what grpc.c relies on: a decoded request is a body whose
 * JSON header lies inside it, and an encoded answer is a ModelInferResponse
 * protobuf-c reads back.
 *
 * Input: one byte choosing the mode, then the data.
 *   mode even: a call's DATA, split into messages (max 64 KiB each), each
 *              decoded as a ModelInferRequest and checked as the HTTP path does;
 *   mode odd:  4 bytes of JSON header length (little-endian, 0xffffffff =
 *              none), then a worker's v2 answer, encoded as a response both
 *              by the tree-less scan and through a jansson tree, which must
 *              agree byte for byte and sentence for sentence.
 * The first 12 data bytes are also read as a grpc-timeout value.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "grpc/wire.h"
#include "http/v2.h"
#include "inference.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void broken(const char *what)
{
	fprintf(stderr, "fuzz_grpc: property broken: %s\n", what);
	abort();
}

static void timeout_value(const uint8_t *data, size_t size)
{
	char v[13];
	size_t n = size < 12 ? size : 12;
	uint64_t us;
	memcpy(v, data, n);
	v[n] = '\0';
	if (bt_grpc_timeout_parse(v, &us) == 0 && us == 0)
		broken("a parsed grpc-timeout is at least 1 us");
}

static void requests(const uint8_t *data, size_t size)
{
	size_t off = 0, n;
	int r;
	while ((r = bt_grpc_frame_next(data + off, size - off, 65536, &n)) != 0) {
		if (r < 0)
			return; /* over the limit or compressed: refused before decoding */
		if (off + BT_GRPC_PREFIX + n > size)
			broken("a whole message lies inside the input");
		struct bt_grpc_infer in;
		char err[512];
		if (bt_grpc_infer_decode(data + off + BT_GRPC_PREFIX, n, &in, err, sizeof(err)) ==
		    0) {
			if (!in.body || in.header_len > in.len || !in.model || !in.version)
				broken("a decoded request is a body with its header inside");
			/* The header's text is jansson's compact dump of the tree. */
			char *dump = json_dumps(in.doc, JSON_COMPACT);
			if (!dump || strlen(dump) != in.header_len ||
			    memcmp(dump, in.body, in.header_len))
				broken("a request's header is written as jansson dumps its tree");
			free(dump);
			/* The tree gRPC checks decides as its text would. */
			struct bt_v2_request v2, t2;
			char terr[512];
			long long hl = in.binary ? (long long)in.header_len : -1;
			int rt = bt_v2_parse_infer(in.body, in.len, hl, &v2, err, sizeof(err));
			int rc = bt_v2_check_infer(in.doc, in.body, in.len, hl, &t2, terr,
						   sizeof(terr));
			if (rt != rc || (rt && strcmp(err, terr)))
				broken("the built tree is checked as its text is");
			if (!rt && (v2.binary != t2.binary || v2.binary_output != t2.binary_output ||
				    v2.header_len != t2.header_len ||
				    v2.has_priority != t2.has_priority ||
				    v2.has_timeout != t2.has_timeout || !v2.id != !t2.id ||
				    (v2.id && strcmp(v2.id, t2.id))))
				broken("the built tree reads as its text does");
			if (!rt) {
				bt_v2_request_release(&v2);
				bt_v2_request_release(&t2);
			}
		}
		bt_grpc_infer_release(&in);
		off += BT_GRPC_PREFIX + n;
	}
}

static void answer(const uint8_t *data, size_t size)
{
	if (size < 4)
		return;
	uint32_t sel = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
		       (uint32_t)data[3] << 24;
	size_t len = size - 4;
	long long hl = sel == UINT32_MAX ? -1 : (long long)(sel % (len + 2));
	uint8_t *out;
	size_t outlen;
	char err[256];
	/* A copy of exactly len bytes, so that ASan sees any read past the answer. */
	char *body = malloc(len ? len : 1);
	memcpy(body, data + 4, len);
	/* The tree-less conversion answers as the loaded one, sentence for sentence. */
	uint8_t *ref;
	size_t reflen;
	char referr[256];
	int rr = bt_grpc_response_encode_loaded(body, len, hl, "m", "id", &ref, &reflen, referr,
						sizeof(referr));
	int rc = bt_grpc_response_encode(body, len, hl, "m", "id", &out, &outlen, err, sizeof(err));
	if (rr != rc)
		broken("the scanned answer is taken exactly when the loaded one is");
	if (rc && len < bt_v2_scan_min && strcmp(err, referr))
		broken("the scanned answer is refused with the loaded one's sentence");
	if (!rc && (outlen != reflen || memcmp(out, ref, outlen)))
		broken("the scanned answer encodes as the loaded one");
	if (!rr)
		free(ref);
	if (rc == 0) {
		Inference__ModelInferResponse *m =
		    inference__model_infer_response__unpack(NULL, outlen, out);
		if (!m || m->n_outputs != m->n_raw_output_contents)
			broken("an encoded answer reads back, one raw tensor per output");
		inference__model_infer_response__free_unpacked(m, NULL);
		size_t wl;
		uint8_t *w = bt_grpc_stream_wrap(out, outlen, "e", &wl);
		if (wl < BT_GRPC_PREFIX + outlen)
			broken("a wrapped answer holds the answer");
		free(w);
		free(out);
	}
	free(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	timeout_value(data + 1, size - 1);
	if (data[0] % 2 == 0)
		requests(data + 1, size - 1);
	else
		answer(data + 1, size - 1);
	return 0;
}
