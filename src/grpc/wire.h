/*
 * The pure half of the gRPC ingress: gRPC message framing, grpc-timeout,
 * and the translation between KServe v2 protobuf messages and the v2
 * JSON + binary tensor bodies the HTTP ingress hands to pipelines.  No
 * sockets, no libuv; grpc.c decides what to answer and where to send it.
 */
#ifndef BT_GRPC_WIRE_H
#define BT_GRPC_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* gRPC status codes (the subset baton answers). */
enum bt_grpc_status {
	BT_GRPC_OK = 0,
	BT_GRPC_CANCELLED = 1,
	BT_GRPC_UNKNOWN = 2,
	BT_GRPC_INVALID_ARGUMENT = 3,
	BT_GRPC_DEADLINE_EXCEEDED = 4,
	BT_GRPC_NOT_FOUND = 5,
	BT_GRPC_RESOURCE_EXHAUSTED = 8,
	BT_GRPC_UNIMPLEMENTED = 12,
	BT_GRPC_INTERNAL = 13,
	BT_GRPC_UNAVAILABLE = 14,
	BT_GRPC_UNAUTHENTICATED = 16,
	BT_GRPC_STATUS_COUNT = 17
};
/* "OK", "NOT_FOUND", … as the metrics label them. */
const char *bt_grpc_status_name(int status);

#define BT_GRPC_PREFIX 5 /* compressed flag, 4-byte big-endian length */

/*
 * Looks for one whole length-prefixed message at the start of data.
 * Returns 1 and sets *msg_len (the message starts at data + 5), 0 when
 * more bytes are needed, -1 when the announced length is over max (set in
 * *msg_len too), -2 when the message is compressed (baton announces no
 * compression, so a client must not send one).
 */
int bt_grpc_frame_next(const uint8_t *data, size_t len, size_t max, size_t *msg_len);
/* Writes the 5-byte prefix of an uncompressed message of len bytes. */
void bt_grpc_frame_prefix(uint8_t out[BT_GRPC_PREFIX], size_t len);

/*
 * Parses a grpc-timeout value ("<1-8 digits><H|M|S|m|u|n>") into
 * microseconds (at least 1).  Returns 0, or -1 when it is malformed.
 */
int bt_grpc_timeout_parse(const char *v, uint64_t *us);

/*
 * 1 when a top-level length-delimited field of the serialized message
 * whose number is in `fields` (bit n for field n, n < 32) holds a NUL
 * byte, -1 when the message cannot be walked, else 0.  protobuf-c hands
 * strings over NUL-terminated: "m\0x" would otherwise name model "m".
 */
int bt_grpc_string_has_nul(const uint8_t *msg, size_t len, uint32_t fields);

/*
 * Fields a request may hold in all (tensors, shape dimensions, parameters,
 * unknown fields; not tensor data): each costs hundreds of bytes once
 * unpacked and translated, whatever it weighs on the wire.
 */
#define BT_GRPC_MAX_FIELDS 65536
/*
 * Counts the fields of a serialized message (a ModelInferRequest when
 * infer_request, else every top-level field) into *count (-1 when it
 * cannot be walked); 1 when there are over BT_GRPC_MAX_FIELDS.
 */
int bt_grpc_fields_over(const uint8_t *msg, size_t len, int infer_request, long long *count);

/* A ModelInferRequest turned into what the HTTP ingress would have received. */
struct bt_grpc_infer {
	char *model;   /* model_name */
	char *version; /* model_version ("" when absent) */
	char *id;      /* id ("" when absent); model and id are set, when they can
			  be read, even when decoding fails (NULL otherwise) */
	char *body;    /* v2 JSON header, then the binary tensors */
	size_t len;
	size_t header_len; /* JSON bytes at the start of body */
	int binary;	   /* tensors follow the JSON */
	struct json_t *doc; /* that JSON as the tree it was built as */
};

/*
 * Decodes a serialized ModelInferRequest into *out: inputs with
 * raw_input_contents or typed contents become binary tensors
 * (binary_data_size), parameters become JSON parameters, every output is
 * asked for in binary.  Returns 0, or a gRPC status (INVALID_ARGUMENT)
 * with one sentence in err.  out is released by bt_grpc_infer_release in
 * both cases.
 */
int bt_grpc_infer_decode(const uint8_t *msg, size_t len, struct bt_grpc_infer *out, char *err,
			 size_t errlen);
void bt_grpc_infer_release(struct bt_grpc_infer *in);

/*
 * Turns a worker's v2 answer (JSON, then binary tensors when header_len
 * >= 0) into a serialized ModelInferResponse: every output's bytes go to
 * raw_output_contents, whether the worker sent them binary or as JSON
 * "data".  model and id fill what the worker left out.  Returns 0 with a
 * malloc'd message in *out, or -1 with a sentence in err.
 */
int bt_grpc_response_encode(const char *body, size_t len, long long header_len, const char *model,
			    const char *id, uint8_t **out, size_t *outlen, char *err,
			    size_t errlen);
/*
 * The same conversion through a jansson tree of the answer (its "data"
 * arrays scanned from bt_v2_scan_min bytes on): the reference the tests and
 * fuzz_grpc hold bt_grpc_response_encode to, message for message.
 */
int bt_grpc_response_encode_loaded(const char *body, size_t len, long long header_len,
				   const char *model, const char *id, uint8_t **out, size_t *outlen,
				   char *err, size_t errlen);

/*
 * Wraps a serialized ModelInferResponse and, when error is not NULL, an
 * error sentence as one framed ModelStreamInferResponse (the 5-byte gRPC
 * prefix included in the malloc'd bytes and in *outlen).
 */
uint8_t *bt_grpc_stream_wrap(const uint8_t *resp, size_t resp_len, const char *error,
			     size_t *outlen);
/*
 * A serialized ModelInferResponse naming only the model and the request
 * id: what a stream's error answer carries so the client can match it.
 */
uint8_t *bt_grpc_response_stub(const char *model, const char *id, size_t *outlen);

#endif
