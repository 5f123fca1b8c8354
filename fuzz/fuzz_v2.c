/*
 * libFuzzer target of the KServe v2 request checks and answer completion
 * (src/http/v2.c): the bytes an HTTP client or a worker may send.  Besides
 * memory safety it checks what callers rely on: an accepted request's
 * header length lies inside the body, and a completed answer is the
 * worker's JSON with "model_name" and "id" added, its binary tail intact.
 * And that the tree-less scanner (src/common/jscan.c) decides as jansson
 * does: an answer is taken exactly when jansson takes it, and a request
 * gets the same verdict and sentence whether its data is scanned or loaded.
 */
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/wire.h"
#include "http/v2.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int verbose; /* BT_FUZZ_VERBOSE=1: print each outcome (to check seeds) */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	verbose = getenv("BT_FUZZ_VERBOSE") != NULL;
	return 0;
}

static void broken(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_v2: property broken: %s%s%s\n", what, detail ? ": " : "",
		detail ? detail : "");
	abort();
}

/*
 * The Inference-Header-Content-Length of the input: the first 4 bytes,
 * little-endian.  0xffffffff is "no header"; values up to len + 1 are
 * taken as they are (so a seed can name its exact JSON length); the 15
 * values below 0xffffffff pick edge cases (0xfffffffb: len + 1); anything
 * else is folded into 0..len+1.
 */
static long long header_len_of(uint32_t sel, size_t len)
{
	/* Refused (negative, zero, past the body), then the extremes of accepted. */
	const long long past = (long long)len + 1, all = (long long)len;
	const long long edge[] = {-2, LLONG_MIN, 0, LLONG_MAX, past, all, 1};
	if (sel == UINT32_MAX)
		return -1;
	if (sel >= UINT32_MAX - 15)
		return edge[(UINT32_MAX - sel) % (sizeof(edge) / sizeof(edge[0]))];
	if (sel <= len + 1)
		return (long long)sel;
	return (long long)(sel % (len + 2));
}

static int has_string(const json_t *o, const char *key, const char *want)
{
	const json_t *v = json_object_get(o, key);
	return json_is_string(v) && (!want || !strcmp(json_string_value(v), want));
}

/* Completes body as a worker's answer and checks the result against it. */
static void finish(const char *body, size_t len, long long header_len, const char *model,
		   const char *id)
{
	char *out, err[256] = "";
	size_t outlen;
	long long out_hl;

	if (bt_v2_finish_response(body, len, header_len, model, id, &out, &outlen, &out_hl, err,
				  sizeof(err))) {
		if (verbose)
			fprintf(stderr, "fuzz_v2: as an answer: %s\n", err);
		if (out || !err[0])
			broken("a refused answer left output or gave no reason", err);
		return;
	}
	if (!out)
		broken("an accepted answer has no output", NULL);
	size_t jlen = header_len < 0 ? len : (size_t)header_len;
	size_t out_jlen = out_hl < 0 ? outlen : (size_t)out_hl;
	if ((header_len < 0) != (out_hl < 0) || out_jlen > outlen || outlen < len)
		broken("the answer's header length is off", NULL);
	if (outlen - out_jlen != len - jlen || memcmp(out + out_jlen, body + jlen, len - jlen))
		broken("the binary part of the answer changed", NULL);

	json_error_t jerr;
	json_t *orig = json_loadb(body, jlen, JSON_DECODE_INT_AS_REAL, NULL);
	json_t *doc =
	    json_loadb(out, out_jlen, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &jerr);
	if (!doc || !json_is_object(doc))
		broken("the completed answer is not a JSON object", jerr.text);
	if (model && !json_object_get(orig, "model_name") && !has_string(doc, "model_name", model))
		broken("\"model_name\" was not added", model);
	if (id && !json_object_get(orig, "id") && !has_string(doc, "id", id))
		broken("\"id\" was not added", id);
	/* Nothing of the worker's may be lost or changed. */
	const char *key;
	json_t *v;
	json_object_foreach(orig, key, v)
	{
		if (!json_equal(v, json_object_get(doc, key)))
			broken("a member of the answer changed", key);
	}
	json_decref(orig);
	json_decref(doc);
	free(out);
}

/* The answer's verdict is jansson's (what bt_v2_finish_response took before). */
static void same_as_jansson(const char *body, size_t len, long long header_len)
{
	char *out = NULL, err[256] = "";
	size_t outlen, jlen = header_len < 0 ? len : (size_t)header_len;
	long long out_hl;
	int r;

	if (header_len == 0 || header_len < -1 || (header_len > 0 && (size_t)header_len > len))
		return;
	r = bt_v2_finish_response(body, len, header_len, "m", "r", &out, &outlen, &out_hl, err,
				  sizeof(err));
	free(out);
	json_t *v = json_loadb(body, jlen, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, NULL);
	json_t *mn = json_object_get(v, "model_name");
	int ok = json_is_object(v) && (!mn || json_is_string(mn));
	json_decref(v);
	if ((r == 0) != ok)
		broken(ok ? "the scanner refused an answer jansson takes"
			  : "the scanner took an answer jansson refuses",
		       err);
}

/* A request's verdict and sentence do not depend on scanning or loading. */
static void same_both_ways(const char *body, size_t len, long long header_len)
{
	struct bt_v2_request a, b;
	char ea[256] = "", eb[256] = "";
	size_t keep = bt_v2_scan_min;

	bt_v2_scan_min = 0;
	int rs = bt_v2_parse_infer(body, len, header_len, &a, ea, sizeof(ea));
	bt_v2_scan_min = SIZE_MAX;
	int rl = bt_v2_parse_infer(body, len, header_len, &b, eb, sizeof(eb));
	bt_v2_scan_min = keep;
	if (rs != rl)
		broken("a request's verdict depends on scanning", rs ? ea : eb);
	if (rs && strcmp(ea, eb) && !(strstr(ea, "is not JSON") && strstr(eb, "is not JSON")))
		broken("a request's sentence depends on scanning", ea);
	if (!rs) {
		bt_v2_request_release(&a);
		bt_v2_request_release(&b);
	}
	/*
	 * The gRPC side's tree conversion (the reference fuzz_grpc holds the
	 * tree-less one to) converts the same outputs either way.
	 */
	uint8_t *oa = NULL, *ob = NULL;
	size_t la = 0, lb = 0;
	bt_v2_scan_min = 0;
	rs = bt_grpc_response_encode_loaded(body, len, header_len, "m", "r", &oa, &la, ea,
					    sizeof(ea));
	bt_v2_scan_min = SIZE_MAX;
	rl = bt_grpc_response_encode_loaded(body, len, header_len, "m", "r", &ob, &lb, eb,
					    sizeof(eb));
	bt_v2_scan_min = keep;
	if (rs != rl || (!rs && (la != lb || memcmp(oa, ob, la))))
		broken("a gRPC answer depends on scanning", rs ? ea : eb);
	free(oa);
	free(ob);
}

/*
 * Input: 4 bytes choosing the header length (see header_len_of), then the
 * body.  The body is read both as a request and as a worker's answer.
 */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bt_v2_request req;
	char err[256] = "";

	if (size < 4)
		return 0;
	uint32_t sel = (uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
		       (uint32_t)data[3] << 24;
	/* A copy of exactly the body's size, so that ASan sees any read past it. */
	size_t len = size - 4;
	char *body = malloc(len ? len : 1);
	memcpy(body, data + 4, len);
	long long hl = header_len_of(sel, len);

	same_as_jansson(body, len, hl);
	same_both_ways(body, len, hl);

	int r = bt_v2_parse_infer(body, len, hl, &req, err, sizeof(err));
	if (verbose)
		fprintf(stderr, "fuzz_v2: header_len %lld: %s\n", hl, r ? err : "valid");
	if (r == 0) {
		if (req.header_len == 0 || req.header_len > len)
			broken("an accepted request's header length is outside the body", NULL);
		if (hl >= 0 && req.header_len != (size_t)hl)
			broken("header_len is not the header's value", NULL);
		if (req.binary && hl < 0)
			broken("binary inputs accepted without a header length", NULL);
		finish(body, len, hl, "m", req.id);
		bt_v2_request_release(&req);
		if (req.id)
			broken("release left the id", NULL);
	} else {
		if (!err[0] || req.id)
			broken("a refused request gave no reason or kept an id", err);
		finish(body, len, hl, "model-1", "req-7");
	}
	/* A worker's answer with nothing to add, and a bad UTF-8 id. */
	finish(body, len, hl, NULL, NULL);
	finish(body, len, hl, NULL, "\xff");
	free(body);
	return 0;
}
