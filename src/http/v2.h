/*
 * The Open Inference Protocol (KServe v2) request checks and response
 * completion, pure: no sockets, no libuv (DESIGN §8, docs/protocol-v2.md).
 */
#ifndef BT_HTTP_V2_H
#define BT_HTTP_V2_H

#include <limits.h>
#include <stddef.h>

/* The longest wait a client may ask for, in microseconds (one day). */
#define BT_V2_TIMEOUT_MAX_US (86400LL * 1000 * 1000)

/*
 * The queue level of a client's priority, for HTTP and gRPC alike: 1 is the
 * highest, as in Triton; 0 or none is the lowest level of each stage.
 * Levels are clamped to each stage's priority_levels.
 */
static inline int bt_v2_priority_level(long long p)
{
	return p < 1 ? INT_MAX : p - 1 > INT_MAX ? INT_MAX : (int)(p - 1);
}

struct bt_v2_request {
	char *id; /* the request's "id", or NULL */
	int has_priority;
	long long priority; /* parameters.priority */
	int has_timeout;
	long long timeout_us; /* parameters.timeout, microseconds */
	size_t header_len; /* bytes of JSON at the start of the body */
	int binary; /* binary tensors follow the JSON */
	int binary_output; /* parameters.binary_data_output is true */
};

/*
 * From this many bytes of request JSON on, the inputs' "data" arrays are
 * checked from their text, never loaded as a jansson tree (21 bytes of tree
 * for each byte of a tensor's text).  Below it, loading is faster.  A
 * variable so that the unit tests can run every check through both ways.
 */
extern size_t bt_v2_scan_min;

/*
 * The most JSON values a request may hold outside its inputs' "data"
 * arrays (names, shapes, parameters: what baton loads as a tree, about 100
 * bytes each).  A request under bt_v2_scan_min cannot hold so many.
 */
#define BT_V2_MAX_VALUES 65536

/*
 * Validates an infer request body.  header_len is the value of the
 * Inference-Header-Content-Length header, or -1 when absent.  Returns 0
 * and fills *out, or -1 with one sentence in err (for a 400 answer).
 */
int bt_v2_parse_infer(const char *body, size_t len, long long header_len,
		      struct bt_v2_request *out, char *err, size_t errlen);
void bt_v2_request_release(struct bt_v2_request *r);
/*
 * bt_v2_parse_infer for a header its caller loaded or built already (root,
 * the JSON at the start of body): the same checks and answer, without a
 * round trip through text. gRPC's decoder builds the header as a tree.
 */
struct json_t;
int bt_v2_check_infer(const struct json_t *root, const char *body, size_t len,
		      long long header_len, struct bt_v2_request *out, char *err, size_t errlen);

/*
 * The metadata a checked request r of pipeline model goes to the workers
 * with, for HTTP and gRPC alike: content_type, protocol "v2", model_name,
 * and v2_header_length and v2_binary_output when they apply.
 */
struct json_t *bt_v2_meta(const struct bt_v2_request *r, const char *model);

/*
 * Completes a worker's v2 answer (JSON, followed by binary tensors when
 * header_len >= 0): sets "model_name" and "id" when the worker left them
 * out.  Returns 0 with a new malloc'd body in *out (and the new JSON
 * length in *out_header_len when header_len >= 0), or -1 with a sentence
 * in err when the answer is not a v2 response object.
 */
int bt_v2_finish_response(const char *body, size_t len, long long header_len,
			  const char *model, const char *id, char **out,
			  size_t *outlen, long long *out_header_len, char *err,
			  size_t errlen);

#endif
