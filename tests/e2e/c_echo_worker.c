/*
 * The C SDK's worker for the large-payload tests (tests/e2e/test_shm.py):
 * it answers each request with its own bytes, so that a memfd it was given
 * goes back unchanged; with "copy" in the request's metadata it answers a
 * copy of its own instead (a new memfd from the SDK).  meta "c_hops" counts
 * the C stages a request went through, and a v2 request's
 * v2_header_length goes on with its bytes.  C_V2_LAST=1: see v2_last.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton_worker.h"

/*
 * C_V2_LAST=1: a v2 request of one binary input x is answered as the
 * binary output out_x holding x's bytes (the SDK writes it into the
 * client's object when baton hands one over).
 */
static int v2_last(struct baton_request *req)
{
	size_t len;
	long long hl;
	const char *in = baton_request_data(req, &len);
	if (baton_request_meta_int(req, "v2_header_length", &hl) || hl < 0 || (size_t)hl > len)
		return baton_fail(req, "not a binary v2 request", 0);
	size_t size = len - (size_t)hl;
	char head[256], meta[96];
	int n = snprintf(head, sizeof(head), "{\"outputs\":[{\"name\":\"out_x\",\"datatype\":"
			 "\"UINT8\",\"shape\":[%zu],\"parameters\":{\"binary_data_size\":%zu}}]}",
			 size, size);
	snprintf(meta, sizeof(meta), "{\"content_type\":\"application/octet-stream\","
		 "\"v2_header_length\":%d}", n);
	char *out = malloc((size_t)n + size + 1);
	if (!out)
		return baton_fail(req, "out of memory", 1);
	memcpy(out, head, (size_t)n);
	memcpy(out + n, in + hl, size);
	int e = baton_respond(req, out, (size_t)n + size, meta);
	free(out);
	return e;
}

static int handle(void *user, struct baton_request *req)
{
	const char *last = getenv("C_V2_LAST");
	if (last && !strcmp(last, "1"))
		return v2_last(req);
	size_t len;
	const char *in = baton_request_data(req, &len);
	long long hops = 0, hl;
	char meta[96];
	(void)user;
	baton_request_meta_int(req, "c_hops", &hops);
	int n = snprintf(meta, sizeof(meta), "{\"c_hops\":%lld", hops + 1);
	/* A v2 request's framing goes on with its bytes. */
	if (baton_request_meta_int(req, "v2_header_length", &hl) == 0)
		n += snprintf(meta + n, sizeof(meta) - (size_t)n, ",\"v2_header_length\":%lld", hl);
	snprintf(meta + n, sizeof(meta) - (size_t)n, "}");
	if (!baton_request_meta_string(req, "copy"))
		return baton_respond(req, in, len, meta);
	char *out = malloc(len ? len : 1);
	if (!out)
		return baton_fail(req, "out of memory", 1);
	memcpy(out, in, len);
	int e = baton_respond(req, out, len, meta);
	free(out);
	return e;
}

int main(void)
{
	struct baton_worker_ops ops = {.handle = handle};
	return baton_worker_run(&ops, NULL) ? 1 : 0;
}
