/*
 * Unit tests of the Open Inference Protocol checks (src/http/v2.c): which
 * infer requests pass, with JSON and with Triton's binary tensors, the
 * sentence each malformed one gets, and how a worker's answer is completed.
 * Bodies are copied into exact-size buffers so ASan sees any over-read.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "http/v2.h"

#ifdef BT_TEST_SCAN_ALL
/* Built twice (tests/meson.build): here every request is scanned, not loaded. */
static void scan_all(void)
{
	bt_v2_scan_min = 0;
}
TestSuite(v2, .timeout = 20, .init = scan_all);
#else
TestSuite(v2, .timeout = 20);
#endif

static char err[512];

/* An exact-size copy of json followed by bin; no NUL after it. */
static char *body_of(const char *json, const void *bin, size_t binlen, size_t *len)
{
	size_t jl = strlen(json);
	char *b = malloc(jl + binlen + 1);

	cr_assert_not_null(b);
	memcpy(b, json, jl);
	if (binlen)
		memcpy(b + jl, bin, binlen);
	*len = jl + binlen;
	return b;
}

static int parse(const char *json, const void *bin, size_t binlen, long long header_len,
		 struct bt_v2_request *r)
{
	size_t len;
	char *b = body_of(json, bin, binlen, &len);
	int ret;

	err[0] = '\0';
	ret = bt_v2_parse_infer(b, len, header_len, r, err, sizeof(err));
	free(b);
	return ret;
}

/* Parses a JSON-only request that must pass; the caller releases *r. */
static void parse_ok(const char *json, struct bt_v2_request *r)
{
	int ret = parse(json, NULL, 0, -1, r);

	cr_assert_eq(ret, 0, "rejected %s: %s", json, err);
}

static void expect_fail(int ret, const struct bt_v2_request *r, const char *body, const char *want)
{
	static const struct bt_v2_request zero;

	cr_assert_eq(ret, -1, "accepted %s", body);
	cr_assert_not_null(strstr(err, want), "err is '%s', expected '%s' in it", err, want);
	cr_assert_eq(memcmp(r, &zero, sizeof(zero)), 0, "*out is not zeroed after an error");
}

static void parse_bad(const char *json, const char *want)
{
	struct bt_v2_request r;

	memset(&r, 0xa5, sizeof(r));
	expect_fail(parse(json, NULL, 0, -1, &r), &r, json, want);
}

/* A request with one input whose datatype, shape and data are given. */
static char *one_input(const char *datatype, const char *shape, const char *data)
{
	char *s;

	cr_assert_neq(asprintf(&s,
			       "{\"inputs\":[{\"name\":\"x\",\"datatype\":\"%s\","
			       "\"shape\":%s,\"data\":%s}]}",
			       datatype, shape, data),
		      -1);
	return s;
}

static void input_ok(const char *datatype, const char *shape, const char *data)
{
	struct bt_v2_request r;
	char *s = one_input(datatype, shape, data);

	parse_ok(s, &r);
	bt_v2_request_release(&r);
	free(s);
}

static void input_bad(const char *datatype, const char *shape, const char *data, const char *want)
{
	char *s = one_input(datatype, shape, data);

	parse_bad(s, want);
	free(s);
}

/* --- requests that pass ------------------------------------------------ */

Test(v2, json_fp32_request_is_accepted)
{
	static const char body[] = "{\"inputs\":[{\"name\":\"input0\",\"datatype\":\"FP32\","
				   "\"shape\":[1,3],\"data\":[1.0,2.5,3]}]}";
	struct bt_v2_request r;

	parse_ok(body, &r);
	cr_assert_null(r.id);
	cr_assert_eq(r.header_len, strlen(body));
	cr_assert_eq(r.binary, 0);
	cr_assert_eq(r.binary_output, 0);
	cr_assert_eq(r.has_timeout, 0);
	cr_assert_eq(r.has_priority, 0);
	bt_v2_request_release(&r);
}

Test(v2, nested_data_is_flattened_at_any_depth)
{
	input_ok("INT32", "[2,3]", "[[1,2,3],[4,5,6]]");
	input_ok("INT32", "[2,3]", "[1,2,3,4,5,6]");
	input_ok("INT32", "[2]", "[[[1]],[[2]]]");
	/* Only the count matters, as in Triton, not the nesting's shape. */
	input_ok("INT32", "[2,3]", "[[1,2],[3,4,5,6]]");
}

Test(v2, empty_shape_is_a_scalar_of_one_element)
{
	input_ok("FP64", "[]", "5");
	input_ok("FP64", "[]", "[5]");
	input_bad("FP64", "[]", "[5,6]", "input 'x': shape [] has 1 element but data has 2");
}

Test(v2, zero_dimension_takes_empty_data)
{
	input_ok("FP32", "[0,4]", "[]");
	input_bad("FP32", "[0]", "[1]", "has 0 elements but data has 1");
}

Test(v2, bytes_input_takes_strings)
{
	input_ok("BYTES", "[2]", "[\"hello\",\"\"]");
}

Test(v2, bool_input_takes_booleans)
{
	input_ok("BOOL", "[3]", "[true,false,true]");
}

Test(v2, integer_ranges_are_accepted_up_to_their_edges)
{
	input_ok("INT8", "[2]", "[-128,127]");
	input_ok("UINT8", "[2]", "[0,255]");
	input_ok("INT16", "[2]", "[-32768,32767]");
	input_ok("UINT16", "[1]", "[65535]");
	input_ok("INT32", "[2]", "[-2147483648,2147483647]");
	input_ok("UINT32", "[1]", "[4294967295]");
	input_ok("INT64", "[2]", "[-9223372036854775808,9223372036854775807]");
	input_ok("UINT64", "[1]", "[9223372036854775807]");
}

Test(v2, float_types_take_integers_and_reals)
{
	input_ok("FP16", "[2]", "[1,0.5]");
	input_ok("BF16", "[2]", "[-1,1e3]");
	input_ok("FP64", "[1]", "[-2.25e-300]");
}

Test(v2, id_and_parameters_are_extracted)
{
	struct bt_v2_request r;

	parse_ok("{\"id\":\"req-7\",\"parameters\":{\"timeout\":1500,"
		 "\"priority\":2,\"binary_data_output\":true,\"other\":[1]},"
		 "\"inputs\":[{\"name\":\"a\",\"datatype\":\"BOOL\",\"shape\":[1],"
		 "\"data\":[true]}]}",
		 &r);
	cr_assert_str_eq(r.id, "req-7");
	cr_assert_eq(r.has_timeout, 1);
	cr_assert_eq(r.timeout_us, 1500);
	cr_assert_eq(r.has_priority, 1);
	cr_assert_eq(r.priority, 2);
	cr_assert_eq(r.binary_output, 1);
	bt_v2_request_release(&r);
	cr_assert_null(r.id);
}

Test(v2, unknown_keys_and_outputs_are_accepted)
{
	struct bt_v2_request r;

	parse_ok("{\"future\":{\"x\":1},\"inputs\":[{\"name\":\"a\","
		 "\"datatype\":\"FP32\",\"shape\":[1],\"data\":[1],\"extra\":0}],"
		 "\"outputs\":[{\"name\":\"y\"},{\"name\":\"z\",\"parameters\":"
		 "{\"binary_data\":true}}]}",
		 &r);
	bt_v2_request_release(&r);
}

Test(v2, release_is_safe_on_zeroed_struct_and_twice)
{
	struct bt_v2_request r = {0};

	bt_v2_request_release(&r);
	parse_ok("{\"id\":\"a\",\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\","
		 "\"shape\":[1],\"data\":[1]}]}",
		 &r);
	bt_v2_request_release(&r);
	bt_v2_request_release(&r);
	cr_assert_null(r.id);
}

/* --- malformed requests ------------------------------------------------ */

Test(v2, body_that_is_not_json_is_rejected_with_position)
{
	parse_bad("{\"inputs\":", "request body is not JSON: ");
	cr_assert_not_null(strstr(err, "at position"), "err is '%s'", err);
	parse_bad("", "request body is not JSON");
	parse_bad("{} trailing", "request body is not JSON");
}

Test(v2, array_body_is_rejected)
{
	parse_bad("[{\"name\":\"a\"}]", "request body must be a JSON object, not an array");
}

Test(v2, duplicate_json_keys_are_rejected)
{
	parse_bad("{\"inputs\":[],\"inputs\":[]}", "duplicate object key");
}

Test(v2, missing_inputs_are_rejected)
{
	parse_bad("{\"id\":\"a\"}", "\"inputs\" is missing");
}

Test(v2, empty_inputs_are_rejected_and_leave_no_id)
{
	/* parse_bad also checks that *out, id included, is left zeroed. */
	parse_bad("{\"id\":\"a\",\"inputs\":[]}", "\"inputs\" is empty");
}

Test(v2, inputs_that_are_not_an_array_are_rejected)
{
	parse_bad("{\"inputs\":{}}", "\"inputs\" must be an array, not an object");
}

Test(v2, input_that_is_not_an_object_is_rejected)
{
	parse_bad("{\"inputs\":[\"a\"]}", "inputs[0] is a string, not an object");
}

Test(v2, input_without_name_is_rejected)
{
	parse_bad("{\"inputs\":[{\"datatype\":\"FP32\",\"shape\":[1],\"data\":[1]}]}",
		  "inputs[0]: \"name\" is missing");
	parse_bad("{\"inputs\":[{\"name\":\"\",\"datatype\":\"FP32\",\"shape\":[1],"
		  "\"data\":[1]}]}",
		  "inputs[0]: \"name\" must be a non-empty string");
	parse_bad("{\"inputs\":[{\"name\":3,\"datatype\":\"FP32\",\"shape\":[1],"
		  "\"data\":[1]}]}",
		  "inputs[0]: \"name\" must be a non-empty string");
}

Test(v2, input_without_datatype_is_rejected)
{
	parse_bad("{\"inputs\":[{\"name\":\"a\",\"shape\":[1],\"data\":[1]}]}",
		  "inputs[0]: \"datatype\" is missing");
}

Test(v2, input_without_shape_is_rejected)
{
	parse_bad("{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"data\":[1]}]}",
		  "inputs[0]: \"shape\" is missing");
	input_bad("FP32", "3", "[1,2,3]", "inputs[0]: \"shape\" must be an array, not an integer");
}

Test(v2, input_without_data_is_rejected)
{
	parse_bad("{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1]}]}",
		  "inputs[0]: \"data\" is missing");
}

Test(v2, duplicate_input_names_are_rejected)
{
	parse_bad("{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1],"
		  "\"data\":[1]},{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1],"
		  "\"data\":[2]}]}",
		  "inputs[1]: input 'a' appears twice");
}

Test(v2, unknown_datatype_is_rejected)
{
	parse_bad("{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1],"
		  "\"data\":[1]},{\"name\":\"b\",\"datatype\":\"FLOAT\",\"shape\":[1],"
		  "\"data\":[2]}]}",
		  "inputs[1]: unknown datatype 'FLOAT'");
	/* Datatypes are case-sensitive, as in Triton. */
	input_bad("fp32", "[1]", "[1]", "unknown datatype 'fp32'");
	input_bad("3", "[1]", "[1]", "unknown datatype '3'");
}

Test(v2, negative_or_fractional_shape_dimension_is_rejected)
{
	input_bad("FP32", "[2,-3]", "[1]",
		  "inputs[0]: \"shape\"[1] must be a non-negative integer");
	input_bad("FP32", "[2.0]", "[1,2]",
		  "inputs[0]: \"shape\"[0] must be a non-negative integer");
}

Test(v2, shape_and_data_count_mismatch_is_rejected)
{
	parse_bad("{\"inputs\":[{\"name\":\"image\",\"datatype\":\"FP32\","
		  "\"shape\":[2,3],\"data\":[[1,2,3],[4,5]]}]}",
		  "input 'image': shape [2,3] has 6 elements but data has 5");
	input_bad("FP32", "[2]", "[1,2,3]", "shape [2] has 2 elements but data has 3");
}

Test(v2, wrong_element_types_are_rejected_per_datatype)
{
	input_bad("FP32", "[2]", "[1,\"2\"]",
		  "input 'x': data element 1 is a string, FP32 takes numbers");
	input_bad("FP16", "[1]", "[null]", "is null, FP16 takes numbers");
	input_bad("BOOL", "[2]", "[true,1]",
		  "data element 1 is an integer, BOOL takes true or false");
	input_bad("INT32", "[1]", "[1.5]", "data element 0 is a real number, INT32 takes integers");
	input_bad("UINT16", "[1]", "[true]", "is a boolean, UINT16 takes integers");
	input_bad("BYTES", "[2]", "[\"a\",1]", "data element 1 is an integer, BYTES takes strings");
	input_bad("FP32", "[1]", "[{}]", "is an object, FP32 takes numbers");
}

Test(v2, out_of_range_integers_are_rejected)
{
	input_bad("INT8", "[2]", "[1,128]",
		  "data element 1 is 128, outside the INT8 range [-128, 127]");
	input_bad("INT8", "[1]", "[-129]", "outside the INT8 range");
	input_bad("UINT8", "[1]", "[-1]", "data element 0 is -1, outside the UINT8 range [0, 255]");
	input_bad("UINT8", "[1]", "[256]", "outside the UINT8 range");
	input_bad("INT16", "[1]", "[32768]", "outside the INT16 range");
	input_bad("UINT32", "[1]", "[4294967296]", "outside the UINT32 range");
	input_bad("INT32", "[1]", "[-2147483649]", "outside the INT32 range");
	input_bad("UINT64", "[1]", "[-1]", "outside the UINT64 range");
	/* Beyond json_int_t: jansson refuses it while parsing. */
	input_bad("UINT64", "[1]", "[18446744073709551615]", "request body is not JSON");
}

Test(v2, huge_shape_is_rejected_without_overflow)
{
	input_bad("FP32", "[1000000000000000000,1000000000000000000]", "[1]",
		  "input 'x': shape [1000000000000000000,1000000000000000000] "
		  "has too many elements to count");
	input_bad("FP32", "[9223372036854775807,9223372036854775807,2]", "[1]",
		  "too many elements");
	/* Counting works but the data cannot match. */
	input_bad("FP32", "[1000000000,1000000000]", "[1]",
		  "has 1000000000000000000 elements but data has 1");
}

Test(v2, data_together_with_binary_data_size_is_rejected)
{
	parse_bad("{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1],"
		  "\"data\":[1],\"parameters\":{\"binary_data_size\":4}}]}",
		  "input 'a': \"data\" and the binary_data_size parameter exclude each other");
}

Test(v2, bad_request_parameters_are_rejected)
{
	static const char in[] = "\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1],"
				 "\"data\":[1]}]}";
	char b[512];

	snprintf(b, sizeof(b), "{\"parameters\":{\"timeout\":-1},%s", in);
	parse_bad(b, "\"parameters\".\"timeout\" must be a non-negative integer, not -1");
	snprintf(b, sizeof(b), "{\"parameters\":{\"timeout\":\"5\"},%s", in);
	parse_bad(b, "\"parameters\".\"timeout\" must be a non-negative integer, not a string");
	snprintf(b, sizeof(b), "{\"parameters\":{\"priority\":1.5},%s", in);
	parse_bad(b,
		  "\"parameters\".\"priority\" must be a non-negative integer, not a real number");
	snprintf(b, sizeof(b), "{\"parameters\":{\"binary_data_output\":\"yes\"},%s", in);
	parse_bad(b, "\"parameters\".\"binary_data_output\" must be a boolean, not a string");
	snprintf(b, sizeof(b), "{\"parameters\":[],%s", in);
	parse_bad(b, "\"parameters\" must be an object, not an array");
	snprintf(b, sizeof(b), "{\"id\":5,%s", in);
	parse_bad(b, "\"id\" must be a string, not an integer");
}

Test(v2, bad_input_parameters_are_rejected)
{
	parse_bad("{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1],"
		  "\"parameters\":{\"binary_data_size\":-4}}]}",
		  "inputs[0]: \"parameters\".\"binary_data_size\" must be a non-negative integer, "
		  "not -4");
	parse_bad("{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1],"
		  "\"data\":[1],\"parameters\":7}]}",
		  "inputs[0]: \"parameters\" must be an object, not an integer");
}

Test(v2, bad_outputs_are_rejected)
{
	static const char in[] = "\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1],"
				 "\"data\":[1]}]}";
	char b[512];

	snprintf(b, sizeof(b), "{\"outputs\":{},%s", in);
	parse_bad(b, "\"outputs\" must be an array, not an object");
	snprintf(b, sizeof(b), "{\"outputs\":[1],%s", in);
	parse_bad(b, "outputs[0] is an integer, not an object");
	snprintf(b, sizeof(b), "{\"outputs\":[{\"name\":\"y\"},{}],%s", in);
	parse_bad(b, "outputs[1]: \"name\" must be a string and is missing");
	snprintf(b, sizeof(b),
		 "{\"outputs\":[{\"name\":\"y\",\"parameters\":{\"binary_data\":1}}],%s", in);
	parse_bad(b,
		  "outputs[0]: \"parameters\".\"binary_data\" must be a boolean, not an integer");
}

/* --- binary tensor data ------------------------------------------------ */

static void bin_ok(const char *json, const void *bin, size_t binlen, struct bt_v2_request *r)
{
	int ret = parse(json, bin, binlen, (long long)strlen(json), r);

	cr_assert_eq(ret, 0, "rejected %s + %zu bytes: %s", json, binlen, err);
	cr_assert_eq(r->header_len, strlen(json));
}

static void bin_bad(const char *json, const void *bin, size_t binlen, long long header_len,
		    const char *want)
{
	struct bt_v2_request r;

	memset(&r, 0xa5, sizeof(r));
	expect_fail(parse(json, bin, binlen, header_len, &r), &r, json, want);
}

#define FP32_1x3                                                                                   \
	"{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1,3],"                      \
	"\"parameters\":{\"binary_data_size\":12}}]}"

Test(v2, binary_fp32_input_with_exact_bytes_is_accepted)
{
	static const float v[3] = {1, 2, 3};
	struct bt_v2_request r;

	bin_ok(FP32_1x3, v, sizeof(v), &r);
	cr_assert_eq(r.binary, 1);
	bt_v2_request_release(&r);
}

Test(v2, json_and_binary_inputs_mix_in_request_order)
{
	/* a: 2 INT32 (8 bytes), b: JSON, c: 3 UINT8 (3 bytes). */
	static const char json[] =
	    "{\"inputs\":[{\"name\":\"a\",\"datatype\":\"INT32\",\"shape\":[2],"
	    "\"parameters\":{\"binary_data_size\":8}},"
	    "{\"name\":\"b\",\"datatype\":\"FP32\",\"shape\":[1],\"data\":[1]},"
	    "{\"name\":\"c\",\"datatype\":\"UINT8\",\"shape\":[3],"
	    "\"parameters\":{\"binary_data_size\":3}}],"
	    "\"parameters\":{\"binary_data_output\":true}}";
	static const unsigned char bin[11] = {1, 0, 0, 0, 2, 0, 0, 0, 7, 8, 9};
	struct bt_v2_request r;

	bin_ok(json, bin, sizeof(bin), &r);
	cr_assert_eq(r.binary, 1);
	cr_assert_eq(r.binary_output, 1);
	bt_v2_request_release(&r);
	bin_bad(json, bin, 10, (long long)strlen(json),
		"binary data: inputs declare 11 bytes but 10 follow the JSON header");
}

Test(v2, binary_size_that_disagrees_with_fp32_shape_is_rejected)
{
	static const char json[] =
	    "{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1,3],"
	    "\"parameters\":{\"binary_data_size\":8}}]}";
	static const char bin[8];

	bin_bad(json, bin, sizeof(bin), (long long)strlen(json),
		"input 'a': binary_data_size is 8 but FP32 of shape [1,3] takes 12 bytes");
}

Test(v2, binary_fp16_and_bool_sizes_follow_their_element_size)
{
	static const char json[] =
	    "{\"inputs\":[{\"name\":\"h\",\"datatype\":\"FP16\",\"shape\":[2],"
	    "\"parameters\":{\"binary_data_size\":4}},"
	    "{\"name\":\"t\",\"datatype\":\"BOOL\",\"shape\":[3],"
	    "\"parameters\":{\"binary_data_size\":3}},"
	    "{\"name\":\"d\",\"datatype\":\"FP64\",\"shape\":[1],"
	    "\"parameters\":{\"binary_data_size\":8}}]}";
	static const char bin[15];
	struct bt_v2_request r;

	bin_ok(json, bin, sizeof(bin), &r);
	bt_v2_request_release(&r);
}

Test(v2, declared_bytes_beyond_body_are_rejected)
{
	/* 25 FP32 declare 100 bytes; only 96 follow. */
	static const char json[] =
	    "{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[25],"
	    "\"parameters\":{\"binary_data_size\":100}}]}";
	static const char bin[96];

	bin_bad(json, bin, sizeof(bin), (long long)strlen(json),
		"binary data: inputs declare 100 bytes but 96 follow the JSON header");
}

Test(v2, huge_binary_claims_are_rejected_without_overflow)
{
	static const char fixed[] = "{\"inputs\":[{\"name\":\"a\",\"datatype\":\"UINT64\","
				    "\"shape\":[4611686018427387904],"
				    "\"parameters\":{\"binary_data_size\":0}}]}";
	static const char many[] = "{\"inputs\":["
				   "{\"name\":\"a\",\"datatype\":\"BYTES\",\"shape\":[1],"
				   "\"parameters\":{\"binary_data_size\":9223372036854775807}},"
				   "{\"name\":\"b\",\"datatype\":\"BYTES\",\"shape\":[1],"
				   "\"parameters\":{\"binary_data_size\":9223372036854775807}},"
				   "{\"name\":\"c\",\"datatype\":\"BYTES\",\"shape\":[1],"
				   "\"parameters\":{\"binary_data_size\":9223372036854775807}}]}";
	static const char bin[4];

	bin_bad(fixed, bin, sizeof(bin), (long long)strlen(fixed),
		"input 'a': UINT64 of shape [4611686018427387904] has too many bytes to count");
	bin_bad(many, bin, sizeof(bin), (long long)strlen(many),
		"binary data: inputs declare more bytes than can be counted");
}

#define BYTES_2                                                                                    \
	"{\"inputs\":[{\"name\":\"s\",\"datatype\":\"BYTES\",\"shape\":[2],"                       \
	"\"parameters\":{\"binary_data_size\":%zu}}]}"

static void bytes_bin(const void *bin, size_t binlen, const char *want)
{
	char json[256];
	struct bt_v2_request r;

	snprintf(json, sizeof(json), BYTES_2, binlen);
	if (!want) {
		bin_ok(json, bin, binlen, &r);
		cr_assert_eq(r.binary, 1);
		bt_v2_request_release(&r);
	} else {
		bin_bad(json, bin, binlen, (long long)strlen(json), want);
	}
}

Test(v2, binary_bytes_elements_with_length_prefixes_are_accepted)
{
	static const char bin[] = "\x02\0\0\0hi\0\0\0\0";

	bytes_bin(bin, sizeof(bin) - 1, NULL);
}

Test(v2, binary_bytes_element_longer_than_its_region_is_rejected)
{
	static const char bin[] = "\x02\0\0\0hi\x05\0\0\0ab";

	bytes_bin(bin, sizeof(bin) - 1,
		  "input 's': binary BYTES element 1 claims 5 bytes but only 2 remain");
}

Test(v2, binary_bytes_length_prefix_cut_short_is_rejected)
{
	static const char bin[] = "\x01\0\0\0h\0\0";

	bytes_bin(bin, sizeof(bin) - 1,
		  "binary BYTES element 1 is cut short: 2 bytes left for its 4-byte length");
}

Test(v2, binary_bytes_element_count_must_match_shape)
{
	static const char three[] = "\x01\0\0\0a\x01\0\0\0b\x01\0\0\0c";
	static const char one[] = "\x03\0\0\0abc";

	bytes_bin(three, sizeof(three) - 1,
		  "input 's': shape has 2 elements but binary data has 3");
	bytes_bin(one, sizeof(one) - 1, "shape has 2 elements but binary data has 1");
}

Test(v2, binary_bytes_region_stops_at_its_own_size)
{
	/* s is one 1-byte element; the UINT8 after it must not be read as s. */
	static const char json[] =
	    "{\"inputs\":[{\"name\":\"s\",\"datatype\":\"BYTES\",\"shape\":[1],"
	    "\"parameters\":{\"binary_data_size\":5}},"
	    "{\"name\":\"u\",\"datatype\":\"UINT8\",\"shape\":[4],"
	    "\"parameters\":{\"binary_data_size\":4}}]}";
	static const char good[] = "\x01\0\0\0z\x01\x02\x03\x04";
	static const char bad[] = "\x05\0\0\0z\x01\x02\x03\x04";
	struct bt_v2_request r;

	bin_ok(json, good, sizeof(good) - 1, &r);
	bt_v2_request_release(&r);
	bin_bad(json, bad, sizeof(bad) - 1, (long long)strlen(json),
		"binary BYTES element 0 claims 5 bytes but only 1 remain");
}

Test(v2, header_length_larger_than_body_is_rejected)
{
	static const char bin[12];

	bin_bad(FP32_1x3, bin, sizeof(bin), (long long)strlen(FP32_1x3) + 13,
		"Inference-Header-Content-Length is");
}

Test(v2, header_length_zero_or_negative_is_rejected)
{
	static const char bin[12];

	bin_bad(FP32_1x3, bin, sizeof(bin), 0,
		"Inference-Header-Content-Length must be a positive byte count, not 0");
	bin_bad(FP32_1x3, bin, sizeof(bin), -2,
		"Inference-Header-Content-Length must be a positive byte count, not -2");
}

Test(v2, header_length_that_cuts_the_json_is_rejected)
{
	static const char bin[12];

	bin_bad(FP32_1x3, bin, sizeof(bin), 10,
		"request header (the first Inference-Header-Content-Length bytes) is not JSON");
}

Test(v2, extra_bytes_without_binary_inputs_are_rejected)
{
	static const char json[] =
	    "{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1],"
	    "\"data\":[1]}]}";

	bin_bad(json, "\0\0\0\0", 4, (long long)strlen(json),
		"binary data: inputs declare 0 bytes but 4 follow the JSON header");
}

Test(v2, header_length_with_json_only_body_is_accepted)
{
	static const char json[] =
	    "{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1],"
	    "\"data\":[1]}]}";
	struct bt_v2_request r;

	bin_ok(json, NULL, 0, &r);
	cr_assert_eq(r.binary, 0);
	bt_v2_request_release(&r);
}

Test(v2, binary_input_without_header_length_is_rejected)
{
	static const float v[3];

	bin_bad(FP32_1x3, v, sizeof(v), -1, "request body is not JSON");
	bin_bad(FP32_1x3, NULL, 0, -1,
		"input 'a' has binary_data_size but the request has no "
		"Inference-Header-Content-Length header");
}

/* --- completing a worker's answer -------------------------------------- */

struct fin {
	int ret;
	char *out;
	size_t outlen;
	long long hlen;
};

static struct fin finish(const char *json, const void *bin, size_t binlen, long long header_len,
			 const char *model, const char *id)
{
	struct fin f;
	size_t len;
	char *b = body_of(json, bin, binlen, &len);

	err[0] = '\0';
	f.ret = bt_v2_finish_response(b, len, header_len, model, id, &f.out, &f.outlen, &f.hlen,
				      err, sizeof(err));
	free(b);
	return f;
}

static void finish_eq(const char *json, const char *model, const char *id, const char *want)
{
	struct fin f = finish(json, NULL, 0, -1, model, id);

	cr_assert_eq(f.ret, 0, "rejected %s: %s", json, err);
	cr_assert_eq(f.hlen, -1);
	cr_assert_eq(f.outlen, strlen(want), "got '%.*s'", (int)f.outlen, f.out);
	cr_assert_arr_eq(f.out, want, f.outlen, "got '%.*s', want '%s'", (int)f.outlen, f.out,
			 want);
	free(f.out);
}

static void finish_bad(const char *json, long long header_len, const char *want)
{
	struct fin f = finish(json, NULL, 0, header_len, "m", "r1");

	cr_assert_eq(f.ret, -1, "accepted %s", json);
	cr_assert_null(f.out);
	cr_assert_not_null(strstr(err, want), "err is '%s', expected '%s' in it", err, want);
}

Test(v2, finish_adds_model_name_and_id)
{
	finish_eq("{\"outputs\":[]}", "m", "r1",
		  "{\"outputs\":[],\"model_name\":\"m\",\"id\":\"r1\"}");
	finish_eq("{}", "m", "r1", "{\"model_name\":\"m\",\"id\":\"r1\"}");
	finish_eq(" { } \n", "m", "r1", " { \"model_name\":\"m\",\"id\":\"r1\"} \n");
	finish_eq("{\"outputs\":[]}", "m", NULL, "{\"outputs\":[],\"model_name\":\"m\"}");
	finish_eq("{}", "a\"b\\c", "\xc3\xa9",
		  "{\"model_name\":\"a\\\"b\\\\c\",\"id\":\"\xc3\xa9\"}");
}

Test(v2, finish_keeps_existing_model_name_and_id)
{
	finish_eq("{\"model_name\":\"w\",\"id\":\"x\",\"outputs\":[]}", "m", "r1",
		  "{\"model_name\":\"w\",\"id\":\"x\",\"outputs\":[]}");
	finish_eq("{\"id\":\"x\"}", "m", "r1", "{\"id\":\"x\",\"model_name\":\"m\"}");
	finish_eq("{\"model_name\":\"w\"}", "m", "r1", "{\"model_name\":\"w\",\"id\":\"r1\"}");
}

Test(v2, finish_keeps_numbers_as_the_worker_wrote_them)
{
	finish_eq("{\"outputs\":[{\"data\":[0.1,18446744073709551615,1e-7]}]}", "m", NULL,
		  "{\"outputs\":[{\"data\":[0.1,18446744073709551615,1e-7]}],"
		  "\"model_name\":\"m\"}");
}

Test(v2, finish_passes_binary_bytes_unchanged)
{
	static const char json[] = "{\"outputs\":[{\"name\":\"y\",\"parameters\":"
				   "{\"binary_data_size\":6}}]}";
	static const char want[] = "{\"outputs\":[{\"name\":\"y\",\"parameters\":"
				   "{\"binary_data_size\":6}}],\"model_name\":\"m\","
				   "\"id\":\"r1\"}";
	static const char bin[6] = {'}', 0, '{', ' ', '\n', (char)0xff};
	struct fin f = finish(json, bin, sizeof(bin), (long long)strlen(json), "m", "r1");
	json_t *v;

	cr_assert_eq(f.ret, 0, "%s", err);
	cr_assert_eq(f.hlen, (long long)strlen(want));
	cr_assert_eq(f.outlen, strlen(want) + sizeof(bin));
	cr_assert_arr_eq(f.out, want, strlen(want), "got '%.*s'", (int)f.hlen, f.out);
	cr_assert_arr_eq(f.out + f.hlen, bin, sizeof(bin));
	v = json_loadb(f.out, (size_t)f.hlen, 0, NULL);
	cr_assert(json_is_object(v));
	json_decref(v);
	free(f.out);
}

Test(v2, finish_rejects_answer_that_is_not_an_object)
{
	finish_bad("[1,2]", -1, "worker answer must be a JSON object, not an array");
	finish_bad("{\"outputs\":", -1, "worker answer is not JSON");
	finish_bad("", -1, "worker answer is not JSON");
	finish_bad("{\"model_name\":3}", -1, "\"model_name\" must be a string, not a number");
}

Test(v2, finish_rejects_header_length_out_of_range)
{
	finish_bad("{}", 3, "JSON header length 3 is out of range for a 2-byte body");
	finish_bad("{}", 0, "out of range");
	finish_bad("{}", -5, "out of range");
}
