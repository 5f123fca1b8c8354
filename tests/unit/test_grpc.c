/*
 * Unit tests of the gRPC ingress's pure half (src/grpc/wire.c): message
 * framing, grpc-timeout, ModelInferRequest -> v2 body (which the v2 checks
 * then accept), v2 answer -> ModelInferResponse, stream wrapping.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/wire.h"
#include "http/v2.h"
#include "inference.pb-c.h"

TestSuite(grpc, .timeout = 20);

static char err[512];

Test(grpc, framing_needs_whole_messages_and_refuses_big_or_compressed)
{
	uint8_t m[16] = {0, 0, 0, 0, 3, 'a', 'b', 'c'};
	size_t n;
	cr_expect_eq(bt_grpc_frame_next(m, 4, 100, &n), 0);
	cr_expect_eq(bt_grpc_frame_next(m, 7, 100, &n), 0);
	cr_expect_eq(bt_grpc_frame_next(m, 8, 100, &n), 1);
	cr_expect_eq(n, 3);
	cr_expect_eq(bt_grpc_frame_next(m, 8, 2, &n), -1, "over the limit, known from the prefix");
	m[0] = 1;
	cr_expect_eq(bt_grpc_frame_next(m, 8, 100, &n), -2);
	uint8_t p[5];
	bt_grpc_frame_prefix(p, 0x01020304);
	cr_expect(p[0] == 0 && p[1] == 1 && p[2] == 2 && p[3] == 3 && p[4] == 4);
}

Test(grpc, timeouts_parse_units_and_refuse_the_rest)
{
	uint64_t us;
	cr_expect_eq(bt_grpc_timeout_parse("100m", &us), 0);
	cr_expect_eq(us, 100000);
	cr_expect_eq(bt_grpc_timeout_parse("2S", &us), 0);
	cr_expect_eq(us, 2000000);
	cr_expect_eq(bt_grpc_timeout_parse("1H", &us), 0);
	cr_expect_eq(us, 3600ULL * 1000000);
	cr_expect_eq(bt_grpc_timeout_parse("5n", &us), 0);
	cr_expect_eq(us, 1, "never 0: 0 means no deadline");
	cr_expect_eq(bt_grpc_timeout_parse("99999999u", &us), 0);
	cr_expect_eq(bt_grpc_timeout_parse("123456789u", &us), -1, "9 digits");
	cr_expect_eq(bt_grpc_timeout_parse("5x", &us), -1);
	cr_expect_eq(bt_grpc_timeout_parse("m", &us), -1);
	cr_expect_eq(bt_grpc_timeout_parse("5mm", &us), -1);
	cr_expect_eq(bt_grpc_timeout_parse("", &us), -1);
}

/* A packed ModelInferRequest with one INT8 input of typed contents. */
static uint8_t *typed_request(int32_t third, size_t *len)
{
	Inference__ModelInferRequest q = INFERENCE__MODEL_INFER_REQUEST__INIT;
	Inference__ModelInferRequest__InferInputTensor t =
	    INFERENCE__MODEL_INFER_REQUEST__INFER_INPUT_TENSOR__INIT;
	Inference__ModelInferRequest__InferInputTensor *tp = &t;
	Inference__InferTensorContents c = INFERENCE__INFER_TENSOR_CONTENTS__INIT;
	int64_t shape[] = {3};
	int32_t v[] = {1, -2, third};
	q.model_name = "m";
	q.id = "r9";
	t.name = "x";
	t.datatype = "INT8";
	t.n_shape = 1;
	t.shape = shape;
	c.n_int_contents = 3;
	c.int_contents = v;
	t.contents = &c;
	q.n_inputs = 1;
	q.inputs = &tp;
	*len = inference__model_infer_request__get_packed_size(&q);
	uint8_t *out = malloc(*len);
	inference__model_infer_request__pack(&q, out);
	return out;
}

Test(grpc, typed_contents_become_the_binary_body_the_v2_checks_accept)
{
	size_t len;
	uint8_t *msg = typed_request(127, &len);
	struct bt_grpc_infer in;
	cr_assert_eq(bt_grpc_infer_decode(msg, len, &in, err, sizeof(err)), 0, "%s", err);
	cr_expect_str_eq(in.model, "m");
	cr_expect(in.binary);
	cr_expect_eq(in.len, in.header_len + 3);
	cr_expect(!memcmp(in.body + in.header_len, "\x01\xfe\x7f", 3));
	json_t *doc = json_loadb(in.body, in.header_len, 0, NULL);
	cr_assert_not_null(doc);
	cr_expect_str_eq(json_string_value(json_object_get(doc, "id")), "r9");
	json_t *p = json_object_get(
	    json_object_get(json_array_get(json_object_get(doc, "inputs"), 0), "parameters"),
	    "binary_data_size");
	cr_expect_eq(json_integer_value(p), 3);
	json_decref(doc);
	struct bt_v2_request v2;
	cr_expect_eq(
	    bt_v2_parse_infer(in.body, in.len, (long long)in.header_len, &v2, err, sizeof(err)), 0,
	    "%s", err);
	cr_expect(v2.binary_output);
	bt_v2_request_release(&v2);
	/* gRPC checks the tree it built: the same verdict as its text. */
	cr_expect_eq(bt_v2_check_infer(in.doc, in.body, in.len, (long long)in.header_len, &v2, err,
				       sizeof(err)),
		     0, "%s", err);
	cr_expect(v2.binary_output && v2.binary && v2.header_len == in.header_len);
	cr_expect_str_eq(v2.id, "r9");
	bt_v2_request_release(&v2);
	bt_grpc_infer_release(&in);
	free(msg);
	msg = typed_request(128, &len);
	cr_expect_eq(bt_grpc_infer_decode(msg, len, &in, err, sizeof(err)),
		     BT_GRPC_INVALID_ARGUMENT);
	cr_expect(strstr(err, "outside the INT8 range"), "%s", err);
	bt_grpc_infer_release(&in);
	free(msg);
	cr_expect_eq(bt_grpc_infer_decode((const uint8_t *)"\xff\xff", 2, &in, err, sizeof(err)),
		     BT_GRPC_INVALID_ARGUMENT);
	bt_grpc_infer_release(&in);
}

Test(grpc, answers_become_raw_outputs_binary_or_json)
{
	const char hdr[] =
	    "{\"outputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1],"
	    "\"parameters\":{\"binary_data_size\":4}},{\"name\":\"b\",\"datatype\":"
	    "\"INT16\",\"shape\":[2],\"data\":[[1],[-2]]}],\"parameters\":{\"k\":1}}";
	size_t hl = strlen(hdr), len = hl + 4;
	char *body = malloc(len);
	memcpy(body, hdr, hl);
	memcpy(body + hl, "\x00\x00\x80\x3f", 4);
	uint8_t *out;
	size_t outlen;
	cr_assert_eq(bt_grpc_response_encode(body, len, (long long)hl, "m", "r1", &out, &outlen,
					     err, sizeof(err)),
		     0, "%s", err);
	Inference__ModelInferResponse *r =
	    inference__model_infer_response__unpack(NULL, outlen, out);
	cr_assert_not_null(r);
	cr_expect_str_eq(r->model_name, "m");
	cr_expect_str_eq(r->id, "r1");
	cr_assert_eq(r->n_raw_output_contents, 2);
	cr_expect(r->raw_output_contents[0].len == 4 &&
		  !memcmp(r->raw_output_contents[0].data, "\x00\x00\x80\x3f", 4));
	cr_expect(r->raw_output_contents[1].len == 4 &&
		  !memcmp(r->raw_output_contents[1].data, "\x01\x00\xfe\xff", 4));
	cr_expect_eq(r->n_parameters, 1);
	inference__model_infer_response__free_unpacked(r, NULL);
	/* Wrapped for a stream, with an error sentence, it reads back. */
	size_t wl;
	uint8_t *w = bt_grpc_stream_wrap(out, outlen, "oops", &wl);
	size_t n;
	cr_assert_eq(bt_grpc_frame_next(w, wl, 1 << 20, &n), 1);
	Inference__ModelStreamInferResponse *s =
	    inference__model_stream_infer_response__unpack(NULL, n, w + BT_GRPC_PREFIX);
	cr_assert_not_null(s);
	cr_expect_str_eq(s->error_message, "oops");
	cr_expect_str_eq(s->infer_response->id, "r1");
	inference__model_stream_infer_response__free_unpacked(s, NULL);
	free(w);
	free(out);
	/* Binary bytes no output claims: not a v2 answer. */
	cr_expect_eq(bt_grpc_response_encode(body, len, (long long)hl - 0, "m", NULL, &out, &outlen,
					     err, sizeof(err)),
		     0);
	free(out);
	char *more = malloc(len + 1);
	memcpy(more, body, len);
	more[len] = 0;
	cr_expect_eq(bt_grpc_response_encode(more, len + 1, (long long)hl, "m", NULL, &out, &outlen,
					     err, sizeof(err)),
		     -1);
	cr_expect(strstr(err, "no output claims"), "%s", err);
	free(more);
	free(body);
}

Test(grpc, strings_with_a_nul_are_found_in_the_named_fields_only)
{
	/* field 1 "m\0x", field 3 "id", field 7 (bytes) "\0\0" */
	const uint8_t m[] = {0x0a, 3, 'm', 0, 'x', 0x1a, 2, 'i', 'd', 0x3a, 2, 0, 0};
	cr_expect_eq(bt_grpc_string_has_nul(m, sizeof(m), 1u << 1), 1);
	cr_expect_eq(bt_grpc_string_has_nul(m, sizeof(m), 1u << 3 | 1u << 2), 0);
	cr_expect_eq(bt_grpc_string_has_nul(m, sizeof(m), 1u << 7), 1);
	cr_expect_eq(bt_grpc_string_has_nul(m, sizeof(m) - 1, 1u << 3), -1, "a cut message");
	const uint8_t ok[] = {0x0a, 1, 'm', 0x10, 0x96, 0x01};
	cr_expect_eq(bt_grpc_string_has_nul(ok, sizeof(ok), 0xffffffffu), 0);
}

Test(grpc, fields_are_counted_by_what_unpacking_allocates_not_by_bytes)
{
	long long n;
	/*
	 * model_name "m"; input {name "x", shape packed [1,2,3], contents
	 * {fp32 packed, 2 values}}; raw_input_contents "ab"; an unknown field 100.
	 */
	const uint8_t m[] = {0x0a, 1, 'm',  0x2a, 20,	0x0a, 1,   'x',	 0x1a, 3,   1,
			     2,	   3, 0x2a, 10,	  0x32, 8,    0,   0,	 0,    0,   0,
			     0,	   0, 0,    0x3a, 2,	'a',  'b', 0xa0, 0x06, 0x00};
	cr_assert_eq(bt_grpc_fields_over(m, sizeof(m), 1, &n), 0);
	/* model_name, input (1 + name + 3 dimensions + contents), raw, unknown: the data not. */
	cr_expect_eq(n, 1 + (1 + 1 + 3 + 1) + 1 + 1);
	/* Read as another message, every top-level field counts one. */
	cr_expect_eq(bt_grpc_fields_over(m, sizeof(m), 0, &n), 0);
	cr_expect_eq(n, 4);
	cr_expect_eq(bt_grpc_fields_over(m, sizeof(m) - 1, 1, &n), 0);
	cr_expect_eq(n, -1, "a cut message cannot be walked");
	/* 65,537 empty outputs: 131 KB on the wire, over the bound. */
	size_t len = 2 * (BT_GRPC_MAX_FIELDS + 1);
	uint8_t *many = malloc(len);
	for (size_t i = 0; i < len; i += 2) {
		many[i] = 0x32;
		many[i + 1] = 0;
	}
	cr_expect_eq(bt_grpc_fields_over(many, len, 1, &n), 1);
	cr_expect_eq(n, BT_GRPC_MAX_FIELDS + 1);
	cr_expect_eq(bt_grpc_fields_over(many, len - 2, 1, &n), 0, "exactly the bound is taken");
	free(many);
}

Test(grpc, a_request_that_cannot_be_decoded_still_names_its_model_and_id)
{
	struct bt_grpc_infer in;
	char err[256];
	/* model_name "m", id "r7", then a cut field: not a ModelInferRequest. */
	const uint8_t cut[] = {0x0a, 1, 'm', 0x1a, 2, 'r', '7', 0x2a, 9, 0x0a};
	cr_expect_eq(bt_grpc_infer_decode(cut, sizeof(cut), &in, err, sizeof(err)),
		     BT_GRPC_INVALID_ARGUMENT);
	cr_expect_null(in.model, "the message cannot be walked to its end");
	bt_grpc_infer_release(&in);
	/* A NUL in model_version: refused, the id still read. */
	const uint8_t nul[] = {0x0a, 1, 'm', 0x12, 1, 0, 0x1a, 2, 'r', '8'};
	cr_expect_eq(bt_grpc_infer_decode(nul, sizeof(nul), &in, err, sizeof(err)),
		     BT_GRPC_INVALID_ARGUMENT);
	cr_expect_str_eq(in.model, "m");
	cr_expect_str_eq(in.id, "r8");
	bt_grpc_infer_release(&in);
	/* Decoded: the id comes along whether or not the v2 body is built. */
	const uint8_t ok[] = {0x0a, 1, 'm', 0x1a, 2, 'r', '9'};
	bt_grpc_infer_decode(ok, sizeof(ok), &in, err, sizeof(err));
	cr_expect_str_eq(in.id, "r9");
	bt_grpc_infer_release(&in);
}
