/*
 * Unit tests of large v2 tensors in JSON form (src/http/v2.c): a worker's
 * JSON answer keeps every number and string exactly as the worker wrote it,
 * for every datatype, and what baton takes as JSON (in answers and in
 * requests) is exactly what jansson takes.  Written against the jansson-tree
 * code first, so that they prove the bounded-memory scanner changed nothing.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "grpc/wire.h"
#include "common/jscan.h"
#include "http/v2.h"

TestSuite(v2json, .timeout = 60);

static char err[512];

/* Completes an exact-size copy of text (no NUL after it, for ASan). */
static int finish(const char *text, size_t len, char **out, size_t *outlen)
{
	char *b = malloc(len ? len : 1);
	long long hl;
	int r;

	cr_assert_not_null(b);
	memcpy(b, text, len);
	err[0] = '\0';
	r = bt_v2_finish_response(b, len, -1, "m", "r1", out, outlen, &hl, err, sizeof(err));
	free(b);
	return r;
}

/* The answer goes out as the worker wrote it, with model_name and id added. */
static void passes_unchanged(const char *datatype, const char *data)
{
	char in[2048], want[2048], *out;
	size_t outlen;

	snprintf(in, sizeof(in),
		 "{\"outputs\":[{\"name\":\"y\",\"datatype\":\"%s\",\"shape\":[1],\"data\":%s}]}",
		 datatype, data);
	snprintf(want, sizeof(want), "%.*s,\"model_name\":\"m\",\"id\":\"r1\"}",
		 (int)strlen(in) - 1, in);
	cr_assert_eq(finish(in, strlen(in), &out, &outlen), 0, "%s rejected: %s", datatype, err);
	cr_assert_eq(outlen, strlen(want), "%s: got '%.*s'", datatype, (int)outlen, out);
	cr_assert_arr_eq(out, want, outlen, "%s: got '%.*s'", datatype, (int)outlen, out);
	free(out);
}

Test(v2json, answer_numbers_of_every_datatype_pass_unchanged)
{
	passes_unchanged("BOOL", "[true,false,[true]]");
	passes_unchanged("INT8", "[-128,0,127]");
	passes_unchanged("INT16", "[-32768,32767]");
	passes_unchanged("INT32", "[-2147483648,2147483647]");
	passes_unchanged("INT64", "[-9223372036854775808,9223372036854775807]");
	passes_unchanged("UINT8", "[0,255,[1,2],[[3]]]");
	passes_unchanged("UINT16", "[65535]");
	passes_unchanged("UINT32", "[4294967295]");
	/* Above LLONG_MAX: jansson reads it as a real, and the text stays. */
	passes_unchanged("UINT64", "[0,18446744073709551615,99999999999999999999999]");
	passes_unchanged("FP16", "[65504.0,-0.0,6.103515625e-05,5.960464477539063e-08]");
	passes_unchanged("FP32", "[3.4028234663852886e+38,1.401298464324817e-45,"
				 "0.10000000149011612,-1.5,1E+2,1e-7]");
	passes_unchanged("FP64", "[1.7976931348623157e+308,5e-324,2.2250738585072014e-308,"
				 "0.1,-0.0,0.30000000000000004,123456789012345678901234567890]");
	passes_unchanged("BF16", "[3.3895313892515355e+38,1.0,-2]");
	passes_unchanged("FP64", "[ 1 , 2.5e0\t,\n-3E-1 ]");
	/* Underflow is not an error for jansson: it reads 0. */
	passes_unchanged("FP64", "[1e-400,-1e-400]");
}

Test(v2json, answer_strings_of_bytes_tensors_pass_unchanged)
{
	passes_unchanged("BYTES", "[\"\",\"plain\",\"a\\\"b\\\\c\\/d\"]");
	passes_unchanged("BYTES", "[\"\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\"]");
	passes_unchanged("BYTES", "[\"\\u00e9\\uD83D\\uDE00\\uffff\"]");
	passes_unchanged("BYTES", "[\"\xc3\xa9\xf0\x9f\x98\x80\xe2\x82\xac\xf4\x8f\xbf\xbf\"]");
	passes_unchanged("BYTES", "[\"\x7f\"]");
}

/* What baton answers today for a number JSON has no text for: a 500. */
static void refused(const char *data)
{
	char in[512], *out = NULL;
	size_t outlen;

	snprintf(in, sizeof(in), "{\"outputs\":[{\"name\":\"y\",\"data\":%s}]}", data);
	cr_assert_eq(finish(in, strlen(in), &out, &outlen), -1, "accepted %s", in);
	cr_assert_null(out);
	cr_assert_not_null(strstr(err, "worker answer is not JSON"), "%s: err is '%s'", data, err);
}

Test(v2json, answer_with_nan_infinity_or_overflow_is_refused)
{
	refused("[NaN]");
	refused("[nan]");
	refused("[Infinity]");
	refused("[-Infinity]");
	refused("[inf]");
	refused("[1e400]");
	refused("[-1e400]");
	{
		/* 1 and 309 zeros: past DBL_MAX without an exponent. */
		char big[320] = "[1";

		memset(big + 2, '0', 309);
		strcpy(big + 311, "]");
		refused(big);
		big[310] = ']';
		big[311] = '\0';
		passes_unchanged("FP64", big); /* 308 zeros: 1e308 fits */
	}
	refused("[1.]");
	refused("[.5]");
	refused("[01]");
	refused("[+1]");
	refused("[1e]");
	refused("[-]");
	refused("[0x10]");
}

/* A small deterministic generator: the same cases on every run. */
static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint32_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 16);
}

static const char *const seeds[] = {
    "{\"outputs\":[{\"name\":\"y\",\"datatype\":\"FP32\",\"shape\":[2,2],"
    "\"data\":[[1.5,-2e3],[0,1E-2]]}],\"model_name\":\"w\",\"id\":\"x\"}",
    "{\"outputs\":[{\"name\":\"s\",\"datatype\":\"BYTES\",\"shape\":[3],"
    "\"data\":[\"a\\u00e9\\ud83d\\ude00\",\"\\n\",\"\xc3\xa9\"]}],\"parameters\":{\"k\":true}}",
    "{\"a\":{\"b\":[null,true,false,{\"c\":{}}],\"d\":[]},\"e\":-0.0}",
    "{\"model_name\":\"m\",\"outputs\":[],\"x\":{\"y\":1,\"z\":2}}",
    "[1,2,{\"a\":3}]",
    " {\"k\" : [ 1 , 2 ] } \n",
};

/* Bytes a mutation inserts: JSON's own, and the ones its rules turn on. */
static const char alphabet[] = "{}[]\":,\\ \t\n0123456789-+.eEunlltrfasN\x00\x01\x1f\x7f"
			       "\x80\xbf\xc0\xc3\xa9\xe0\xed\xa0\xf0\xf4\x90\xff";

static size_t mutate(char *buf, size_t len, size_t cap)
{
	int edits = 1 + next() % 3;

	while (edits--) {
		size_t at = len ? next() % (len + 1) : 0;
		char c = alphabet[next() % (sizeof(alphabet) - 1)];

		switch (next() % 4) {
		case 0: /* delete */
			if (at < len) {
				memmove(buf + at, buf + at + 1, len - at - 1);
				len--;
			}
			break;
		case 1: /* replace */
			if (at < len)
				buf[at] = c;
			break;
		case 2: /* insert */
			if (len < cap) {
				memmove(buf + at + 1, buf + at, len - at);
				buf[at] = c;
				len++;
			}
			break;
		default: { /* duplicate a slice elsewhere: keys twice, deeper nesting */
			size_t from = len ? next() % len : 0, n = 1 + next() % 12;

			if (from + n > len)
				n = len - from;
			if (len + n <= cap && n) {
				char tmp[16];

				memcpy(tmp, buf + from, n);
				memmove(buf + at + n, buf + at, len - at);
				memcpy(buf + at, tmp, n);
				len += n;
			}
		}
		}
	}
	return len;
}

/* jansson's verdict on an answer, as bt_v2_finish_response gave it before. */
static int jansson_takes_answer(const char *b, size_t len)
{
	json_t *v = json_loadb(b, len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, NULL);
	json_t *mn = json_object_get(v, "model_name");
	int ok = json_is_object(v) && (!mn || json_is_string(mn));

	json_decref(v);
	return v ? ok : -1;
}

static void same_verdict_on_answer(const char *b, size_t len)
{
	int want = jansson_takes_answer(b, len);
	char *out = NULL;
	size_t outlen;
	int r = finish(b, len, &out, &outlen);

	cr_assert_eq(r == 0, want == 1, "'%.*s': jansson says %d, baton %d (%s)", (int)len, b, want,
		     r, err);
	if (want < 0)
		cr_assert_not_null(strstr(err, "worker answer is not JSON"), "'%.*s': %s", (int)len,
				   b, err);
	free(out);
}

Test(v2json, answer_verdicts_match_jansson_on_mutated_documents)
{
	char buf[512];

	for (size_t s = 0; s < sizeof(seeds) / sizeof(seeds[0]); s++) {
		same_verdict_on_answer(seeds[s], strlen(seeds[s]));
		for (int i = 0; i < 6000; i++) {
			size_t len = strlen(seeds[s]);

			memcpy(buf, seeds[s], len);
			len = mutate(buf, len, sizeof(buf));
			same_verdict_on_answer(buf, len);
		}
	}
}

/* Edge cases one by one: each is a rule of jansson's parser. */
Test(v2json, answer_verdicts_match_jansson_on_edge_cases)
{
	static const char *const cases[] = {
	    "",
	    " ",
	    "{",
	    "}",
	    "{}",
	    "[]",
	    "{} x",
	    "{}{}",
	    "{},",
	    "\"s\"",
	    "1",
	    "null",
	    "true",
	    "{\"a\":1,}",
	    "{,}",
	    "{\"a\"}",
	    "{\"a\":}",
	    "{a:1}",
	    "{'a':1}",
	    "{\"a\":1 \"b\":2}",
	    "{\"a\":1,\"a\":2}",
	    "{\"a\":{\"b\":1,\"b\":1}}",
	    "{\"a\":1,\"\\u0061\":2}",
	    "{\"\":1,\"\":2}",
	    "{\"a\":[1,,2]}",
	    "{\"a\":[1 2]}",
	    "{\"a\":[,]}",
	    "{\"a\":[1,]}",
	    "{\"a\":tru}",
	    "{\"a\":truee}",
	    "{\"a\":True}",
	    "{\"a\":nul}",
	    "{\"a\":-0}",
	    "{\"a\":-01}",
	    "{\"a\":1.5e+}",
	    "{\"a\":1.5e+5}",
	    "{\"a\":1.5E-05}",
	    "{\"a\":\"\\u0000\"}",
	    "{\"a\":\"\\ud800\"}",
	    "{\"a\":\"\\udc00\"}",
	    "{\"a\":\"\\ud800\\u0041\"}",
	    "{\"a\":\"\\ud800x\"}",
	    "{\"a\":\"\\uD83D\\uDE00\"}",
	    "{\"a\":\"\\u12\"}",
	    "{\"a\":\"\\u12g4\"}",
	    "{\"a\":\"\\x41\"}",
	    "{\"a\":\"\\'\"}",
	    "{\"a\":\"\t\"}",
	    "{\"a\":\"\n\"}",
	    "{\"a\":\"\x1f\"}",
	    "{\"a\":\"\x7f\"}",
	    "{\"a\":\"\xc0\x80\"}",
	    "{\"a\":\"\xc1\xbf\"}",
	    "{\"a\":\"\xc2\x80\"}",
	    "{\"a\":\"\xe0\x80\x80\"}",
	    "{\"a\":\"\xe0\xa0\x80\"}",
	    "{\"a\":\"\xed\xa0\x80\"}",
	    "{\"a\":\"\xed\x9f\xbf\"}",
	    "{\"a\":\"\xf0\x80\x80\x80\"}",
	    "{\"a\":\"\xf0\x90\x80\x80\"}",
	    "{\"a\":\"\xf4\x8f\xbf\xbf\"}",
	    "{\"a\":\"\xf4\x90\x80\x80\"}",
	    "{\"a\":\"\xf5\"}",
	    "{\"a\":\"\xff\"}",
	    "{\"a\":\"\x80\"}",
	    "{\"a\":\"\xc3\"}",
	    "{\"a\":\"\xe2\x82\"}",
	    "{\"\xc3\":1}",
	    "{\"a\":1}\xef\xbb\xbf",
	    "\xef\xbb\xbf{}",
	    "{\"a\":1}\x00",
	    "\x00{}",
	    "{\"a\":\"x\x00y\"}",
	    "{\"a\":1}\r\n\t ",
	    "\v{}",
	    "{}\f",
	    "{\"a\":1e309}",
	    "{\"a\":-1e309}",
	    "{\"a\":1e-400}",
	    "{\"a\":4.9e-324}",
	    "{\"a\":1.7976931348623157e308}",
	    "{\"a\":1.7976931348623159e308}",
	    "{\"a\":[[[[[[[[[[]]]]]]]]]]}",
	    "{\"a\":[[[[[[[[[[]]]]]]]]]}",
	    "{\"a\":[]]}",
	    "{\"model_name\":null}",
	    "{\"model_name\":\"\"}",
	    "{\"model_name\":[]}",
	    "{\"x\":{\"model_name\":1}}",
	    "{\"model_name\":\"a\",\"model_name\":\"a\"}",
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len = strlen(cases[i]);

		/* The cases with a NUL in them: it is part of the text. */
		if (!strcmp(cases[i], "{\"a\":1}"))
			same_verdict_on_answer("{\"a\":1}\0", 8);
		if (!len)
			same_verdict_on_answer("\0{}", 3);
		same_verdict_on_answer(cases[i], len);
	}
	same_verdict_on_answer("{\"a\":\"x\0y\"}", 11);
}

/* jansson's nesting limit (2048 levels) holds as before. */
Test(v2json, answer_nesting_limit_matches_jansson)
{
	static char doc[2 * 2100 + 16];

	for (int depth = 2040; depth <= 2056; depth++) {
		size_t n = 0;

		doc[n++] = '{';
		memcpy(doc + n, "\"a\":", 4);
		n += 4;
		for (int i = 1; i < depth; i++)
			doc[n++] = '[';
		for (int i = 1; i < depth; i++)
			doc[n++] = ']';
		doc[n++] = '}';
		same_verdict_on_answer(doc, n);
	}
}

/* Checks a request the given way: loaded (scan_min SIZE_MAX) or scanned (0). */
static int parse_way(const char *b, size_t len, size_t scan_min, char *why, size_t whylen)
{
	struct bt_v2_request r;
	char *copy = malloc(len ? len : 1);
	int ret;

	memcpy(copy, b, len);
	bt_v2_scan_min = scan_min;
	ret = bt_v2_parse_infer(copy, len, -1, &r, why, whylen);
	bt_v2_scan_min = 64 * 1024;
	free(copy);
	if (!ret)
		bt_v2_request_release(&r);
	return ret;
}

/*
 * The request side: what is "not JSON" is what jansson refuses, and every
 * other verdict and sentence is the same whether the inputs' data was
 * loaded or scanned.
 */
static void same_verdict_on_request(const char *b, size_t len)
{
	json_t *v = json_loadb(b, len, JSON_REJECT_DUPLICATES, NULL);
	char loaded[512] = "", scanned[512] = "";
	int rl = parse_way(b, len, SIZE_MAX, loaded, sizeof(loaded));
	int rs = parse_way(b, len, 0, scanned, sizeof(scanned));

	cr_assert_eq(rl, rs, "'%.*s': loaded %d (%s), scanned %d (%s)", (int)len, b, rl, loaded, rs,
		     scanned);
	if (!v)
		cr_assert(rs == -1 && strstr(scanned, "request body is not JSON"),
			  "'%.*s': jansson refuses it, baton says %d (%s)", (int)len, b, rs,
			  scanned);
	else
		cr_assert_str_eq(loaded, scanned, "'%.*s'", (int)len, b);
	json_decref(v);
}

Test(v2json, request_verdicts_match_jansson_on_mutated_documents)
{
	static const char *const reqs[] = {
	    "{\"id\":\"a\",\"inputs\":[{\"name\":\"x\",\"datatype\":\"FP32\",\"shape\":[2,2],"
	    "\"data\":[[1.5,-2e3],[0,1E-2]]}],\"parameters\":{\"priority\":1}}",
	    "{\"inputs\":[{\"name\":\"s\",\"datatype\":\"BYTES\",\"shape\":[2],"
	    "\"data\":[\"\\u00e9\\ud83d\\ude00\",\"\xc3\xa9\"]},{\"name\":\"b\",\"datatype\":"
	    "\"BOOL\",\"shape\":[2],\"data\":[true,false]}],\"outputs\":[{\"name\":\"o\"}]}",
	    "{\"inputs\":[{\"name\":\"u\",\"datatype\":\"UINT64\",\"shape\":[3],"
	    "\"data\":[0,9223372036854775807,1]},{\"name\":\"i\",\"datatype\":\"INT8\","
	    "\"shape\":[1,3],\"data\":[[-128,127,[0]]]}]}",
	    "{\"inputs\":[{\"data\":[1,2],\"name\":\"u\",\"datatype\":\"UINT16\",\"shape\":[2]},"
	    "{\"name\":\"f\",\"datatype\":\"FP16\",\"shape\":[],\"data\":7}]}",
	};
	char buf[512];

	for (size_t s = 0; s < sizeof(reqs) / sizeof(reqs[0]); s++) {
		same_verdict_on_request(reqs[s], strlen(reqs[s]));
		for (int i = 0; i < 5000; i++) {
			size_t len = strlen(reqs[s]);

			memcpy(buf, reqs[s], len);
			len = mutate(buf, len, sizeof(buf));
			same_verdict_on_request(buf, len);
		}
	}
}

/* A data array of a million elements is checked from its text, element by element. */
Test(v2json, large_request_data_is_checked_from_its_text)
{
	size_t n = 1000000, len;
	struct bt_buf b = BT_BUF_INIT;
	char why[512];

	bt_buf_printf(&b,
		      "{\"inputs\":[{\"name\":\"x\",\"datatype\":\"INT8\",\"shape\":[%zu],"
		      "\"data\":[",
		      n);
	for (size_t i = 0; i < n; i++)
		bt_buf_puts(&b, i ? ",7" : "7");
	bt_buf_puts(&b, "]}]}");
	len = b.len;
	cr_assert_eq(parse_way(b.data, len, 64 * 1024, why, sizeof(why)), 0, "%s", why);
	/* "...,7,7]}]}" becomes "...,7,128]}]}": its last element is out of range. */
	memcpy(b.data + len - 7, "128", 3);
	cr_assert_eq(parse_way(b.data, len, 64 * 1024, why, sizeof(why)), -1);
	cr_assert_not_null(strstr(why, "data element 999998 is 128, outside the INT8 range"), "%s",
			   why);
	bt_buf_release(&b);
}

/* --- the gRPC side: a worker's JSON outputs become raw_output_contents ---- */

/*
 * Encodes an answer: loaded as a tree (scan_min SIZE_MAX), loaded with its
 * "data" arrays scanned (0), or by the tree-less scan (SCANNED).
 */
#define SCANNED 1
static int grpc_way(const char *b, size_t len, size_t scan_min, uint8_t **out, size_t *outlen,
		    char *why, size_t whylen)
{
	char *copy = malloc(len ? len : 1);
	int r;

	memcpy(copy, b, len);
	why[0] = '\0';
	if (scan_min == SCANNED) {
		r = bt_grpc_response_encode(copy, len, -1, "m", "r1", out, outlen, why, whylen);
	} else {
		bt_v2_scan_min = scan_min;
		r = bt_grpc_response_encode_loaded(copy, len, -1, "m", "r1", out, outlen, why,
						   whylen);
		bt_v2_scan_min = 64 * 1024;
	}
	free(copy);
	return r;
}

/*
 * The same message, or the same refusal, whichever way the answer goes;
 * the tree-less scan gives jansson's own sentence for text that is not
 * JSON, the tree with scanned data arrays the scanner's.
 */
static void grpc_same(const char *b, size_t len)
{
	static const size_t ways[] = {0, SCANNED};
	char wl[512], ws[512];
	uint8_t *ol = NULL, *os = NULL;
	size_t ll = 0, ls = 0;
	int rl = grpc_way(b, len, SIZE_MAX, &ol, &ll, wl, sizeof(wl));

	for (size_t w = 0; w < 2; w++) {
		int rs = grpc_way(b, len, ways[w], &os, &ls, ws, sizeof(ws));

		cr_assert_eq(rl, rs, "'%.*s': loaded %d (%s), way %zu %d (%s)", (int)len, b, rl, wl,
			     w, rs, ws);
		if (!rl) {
			cr_assert_eq(ll, ls, "'%.*s'", (int)len, b);
			cr_assert_arr_eq(ol, os, ll, "'%.*s'", (int)len, b);
		} else if (ways[w] == SCANNED || !strstr(wl, "not a JSON object")) {
			cr_assert_str_eq(wl, ws, "'%.*s'", (int)len, b);
		} else {
			cr_assert_not_null(strstr(ws, "not a JSON object"), "'%.*s': %s", (int)len,
					   b, ws);
		}
		free(os);
		os = NULL;
	}
	free(ol);
}

static const char *const grpc_answers[] = {
    "{\"outputs\":[{\"name\":\"b\",\"datatype\":\"BOOL\",\"shape\":[3],\"data\":[true,false,[true]]"
    "},"
    "{\"name\":\"i8\",\"datatype\":\"INT8\",\"shape\":[2],\"data\":[-128,127]},"
    "{\"name\":\"u16\",\"datatype\":\"UINT16\",\"shape\":[2],\"data\":[[0],[65535]]}]}",
    "{\"outputs\":[{\"name\":\"i64\",\"datatype\":\"INT64\",\"shape\":[2],"
    "\"data\":[-9223372036854775808,9223372036854775807]},{\"name\":\"u64\",\"datatype\":"
    "\"UINT64\",\"shape\":[1],\"data\":[9223372036854775807]},{\"name\":\"u32\",\"datatype\":"
    "\"UINT32\",\"shape\":[1],\"data\":[4294967295]}],\"id\":\"w\",\"model_name\":\"x\"}",
    "{\"outputs\":[{\"name\":\"f\",\"datatype\":\"FP32\",\"shape\":[4],"
    "\"data\":[0.1,3.4028234663852886e+38,-1e-45,7]},{\"name\":\"d\",\"datatype\":\"FP64\","
    "\"shape\":[4],\"data\":[1.7976931348623157e308,5e-324,-0.0,2]}]}",
    "{\"outputs\":[{\"name\":\"s\",\"datatype\":\"BYTES\",\"shape\":[3],"
    "\"data\":[\"\",\"a\\\"\\u00e9\\ud83d\\ude00\",\"\xc3\xa9\\n\"]}],\"parameters\":{\"k\":1}}",
    "{\"outputs\":[{\"name\":\"bad\",\"datatype\":\"INT8\",\"shape\":[1],\"data\":[128]}]}",
    "{\"outputs\":[{\"name\":\"h\",\"datatype\":\"FP16\",\"shape\":[1],\"data\":[1.0]}]}",
    "{\"outputs\":[{\"name\":\"o\",\"datatype\":\"FP32\",\"shape\":[1],\"data\":[{}]}]}",
    "{\"outputs\":[{\"name\":\"n\",\"datatype\":\"FP64\",\"shape\":[1],\"data\":[null]}]}",
    /* What the tree-less scan keeps apart: members in any order, scalars
       and containers where others are expected, parameters of every kind. */
    "{\"parameters\":{\"b\":true,\"f\":false,\"i\":-3,\"r\":2.5,\"s\":\"x\\u00e9\",\"o\":{},"
    "\"a\":[1],\"z\":null},\"model_version\":\"7\",\"outputs\":[{\"data\":[1,2],\"shape\":"
    "[2],\"datatype\":\"INT32\",\"parameters\":{\"x\":[{}]},\"name\":\"late\"},{\"name\":"
    "\"z\",\"datatype\":\"UINT8\",\"shape\":[],\"data\":5,\"extra\":[[1]]}],\"id\":7}",
    "{\"outputs\":[{\"name\":\"e\",\"datatype\":\"INT8\",\"shape\":[0],\"data\":[],"
    "\"parameters\":{\"binary_data_size\":0}},{\"name\":\"s\",\"datatype\":\"BYTES\","
    "\"shape\":[1],\"data\":\"one\"}]}",
    "{\"outputs\":[{\"name\":\"d\",\"datatype\":\"INT8\",\"shape\":[1,[2],3],\"data\":[1]}]}",
    "{\"outputs\":[{\"name\":\"d\",\"datatype\":\"INT8\",\"shape\":[1,2.0],\"data\":[1]}]}",
    "{\"outputs\":[{\"name\":\"p\",\"datatype\":\"INT8\",\"shape\":[1],"
    "\"parameters\":{\"binary_data_size\":\"1\"}}]}",
    "{\"outputs\":[{\"name\":\"p\",\"datatype\":\"INT8\",\"shape\":[1],"
    "\"parameters\":[{\"binary_data_size\":1}],\"data\":{\"a\":1}}]}",
    "{\"outputs\":[[{\"name\":\"a\",\"datatype\":\"INT8\",\"shape\":[1],\"data\":[1]}]]}",
    "{\"outputs\":{\"name\":\"a\"},\"model_name\":\"q\"}",
    "[{\"outputs\":[]}]",
    "{\"outputs\":[],\"outputs\":[]}",
};

Test(v2json, grpc_answers_convert_the_same_loaded_or_scanned)
{
	char buf[640];

	for (size_t s = 0; s < sizeof(grpc_answers) / sizeof(grpc_answers[0]); s++) {
		grpc_same(grpc_answers[s], strlen(grpc_answers[s]));
		for (int i = 0; i < 3000; i++) {
			size_t len = strlen(grpc_answers[s]);

			memcpy(buf, grpc_answers[s], len);
			len = mutate(buf, len, sizeof(buf));
			grpc_same(buf, len);
		}
	}
}

/* data_walk's limit of 64 nested levels holds in the scanned way too. */
Test(v2json, grpc_answer_data_nesting_limit_is_the_same)
{
	char doc[512];

	for (int depth = 62; depth <= 68; depth++) {
		size_t n = (size_t)snprintf(doc, sizeof(doc),
					    "{\"outputs\":[{\"name\":\"y\",\"datatype\":\"INT8\","
					    "\"shape\":[1],\"data\":");

		for (int i = 0; i < depth; i++)
			doc[n++] = '[';
		doc[n++] = '1';
		for (int i = 0; i < depth; i++)
			doc[n++] = ']';
		memcpy(doc + n, "}]}", 3);
		grpc_same(doc, n + 3);
	}
}

/*
 * An answer's outputs, shape dimensions and parameters: 65,536 in all, as a
 * request's fields; one more is refused, also by the scan, which keeps
 * nothing past the bound ("{}" outputs took 68 times their text).
 */
static char *repeated(const char *head, const char *item, size_t n, const char *tail, size_t *len)
{
	size_t hl = strlen(head), il = strlen(item) + 24, tl = strlen(tail), at = hl;
	char *doc = malloc(hl + n * (il + 1) + tl + 1);

	memcpy(doc, head, hl);
	for (size_t i = 0; i < n; i++) {
		if (i)
			doc[at++] = ',';
		at += (size_t)snprintf(doc + at, il, item, i); /* an item may number itself */
	}
	memcpy(doc + at, tail, tl + 1);
	*len = at + tl;
	return doc;
}

Test(v2json, grpc_answer_fields_are_bounded_the_same_loaded_or_scanned)
{
	static const struct {
		const char *head, *item, *tail;
		size_t n;
		int over; /* 1: over the bound; 2: not JSON */
	} cases[] = {
	    {"{\"outputs\":[", "{}", "]}", 65536, 0},
	    {"{\"outputs\":[", "{}", "]}", 65537, 1},
	    {"{\"outputs\":[", "[]", "]}", 65537, 1},
	    {"{\"parameters\":{\"p\":1},\"outputs\":[", "{}", "]}", 65536, 1},
	    {"{\"outputs\":[{\"name\":\"o\",\"datatype\":\"INT8\",\"data\":[1],\"shape\":[", "1",
	     "]}]}", 65536, 1},
	    {"{\"outputs\":[{\"name\":\"o\",\"datatype\":\"INT8\",\"data\":[1],\"shape\":[", "1",
	     "]}]}", 65535, 0},
	    {"{\"outputs\":[{\"name\":\"o\",\"datatype\":\"INT8\",\"shape\":[1.5,", "[1]", "]}]}",
	     65536, 1},
	    {"{\"outputs\":[],\"parameters\":{\"a\":1,", "\"k%zu\":null", "}}", 65535, 0},
	    {"{\"outputs\":[],\"parameters\":{\"a\":1,", "\"k%zu\":null", "}}", 65536, 1},
	    {"{\"outputs\":[", "{\"name\":\"b\",\"datatype\":\"BOOL\",\"shape\":[],\"data\":true}",
	     "]}", 65536, 0},
	    {"{\"outputs\":[", "{\"name\":\"b\",\"datatype\":\"BOOL\",\"shape\":[],\"data\":true}",
	     "]}", 65537, 1},
	    /* Text that is not JSON is refused as such, however many fields before. */
	    {"{\"outputs\":[", "{}", "]", 65537, 2},
	};
	char why[512];

	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		size_t len, outlen;
		uint8_t *out = NULL;
		char *doc = repeated(cases[c].head, cases[c].item, cases[c].n, cases[c].tail, &len);
		/* (Large text that is not JSON gets the scanner's sentence, not jansson's.) */
		if (cases[c].over < 2)
			grpc_same(doc, len);
		int r = grpc_way(doc, len, SCANNED, &out, &outlen, why, sizeof(why));
		cr_assert_eq(cases[c].over == 1,
			     r && strstr(why, "at most 65536 are taken") != NULL, "case %zu: %d %s",
			     c, r, why);
		cr_assert_eq(cases[c].over == 2, r && strstr(why, "not a JSON object: ") != NULL,
			     "case %zu: %d %s", c, r, why);
		free(out);
		free(doc);
	}
}

/* --- shared memory rewrites a tree without the data, then puts it back ---- */

Test(v2json, rewritten_document_gets_its_data_text_back)
{
	static const char text[] =
	    "{\"inputs\":[{\"name\":\"a\",\"data\":[1,2,[3]],\"parameters\":{\"k\":1}},"
	    "{\"name\":\"b\",\"shape\":[1]},{\"name\":\"c\",\"data\":[\"\\u00e9\", 1.50, 1E2 ]}],"
	    "\"x\":\"\\u00e9\",\"outputs\":[{\"name\":\"o\",\"data\":[9]}]}";
	static const char want[] =
	    "{\"inputs\":[{\"name\":\"a\",\"data\":[1,2,[3]],\"parameters\":{\"k\":1,"
	    "\"binary_data_size\":4}},{\"name\":\"b\",\"shape\":[1]},{\"name\":\"c\","
	    "\"data\":[\"\\u00e9\", 1.50, 1E2 ]}],\"x\":\"\xc3\xa9\",\"outputs\":[{\"name\":\"o\","
	    "\"data\":[9]}]}";
	struct bt_jspans sp = {0};
	json_t *root;
	char *out;
	size_t len;

	cr_assert_eq(bt_jscan_find_data(text, strlen(text), 0, "inputs", &sp, err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_eq(sp.n, 3);
	cr_assert(sp.v[0].stop && !sp.v[1].stop && sp.v[2].stop);
	root = bt_jscan_load_without_data(text, strlen(text), &sp, JSON_REJECT_DUPLICATES, NULL);
	cr_assert_not_null(root);
	cr_assert_eq(json_array_size(json_object_get(
			 json_array_get(json_object_get(root, "inputs"), 0), "data")),
		     0);
	/* What the shared-memory rewrite does to an input. */
	json_object_set_new(
	    json_object_get(json_array_get(json_object_get(root, "inputs"), 0), "parameters"),
	    "binary_data_size", json_integer(4));
	out = bt_jscan_dump_with_data(root, "inputs", text, &sp, JSON_COMPACT, &len);
	cr_assert_not_null(out);
	cr_assert_eq(len, strlen(want), "got %s", out);
	cr_assert_str_eq(out, want);
	free(out);
	json_decref(root);
	bt_jscan_spans_release(&sp);
}

/*
 * Values outside the data arrays are loaded as a tree: a large request may
 * hold at most BT_V2_MAX_VALUES of them (9 here besides the junk's).
 */
static int with_junk(size_t k, char *why, size_t whylen)
{
	struct bt_buf b = BT_BUF_INIT;
	int r;

	bt_buf_puts(&b, "{\"inputs\":[{\"name\":\"x\",\"datatype\":\"INT8\",\"shape\":[1],"
			"\"data\":[1]}],\"junk\":[");
	for (size_t i = 0; i < k; i++)
		bt_buf_puts(&b, i ? ",0" : "0");
	bt_buf_puts(&b, "]}");
	r = parse_way(b.data, b.len, 64 * 1024, why, whylen);
	bt_buf_release(&b);
	return r;
}

Test(v2json, large_request_values_outside_data_are_bounded)
{
	char why[512] = "";

	cr_assert_eq(with_junk(BT_V2_MAX_VALUES - 9, why, sizeof(why)), 0, "%s", why);
	cr_assert_eq(with_junk(BT_V2_MAX_VALUES - 8, why, sizeof(why)), -1);
	cr_assert_str_eq(why, "request body holds 65537 JSON values outside its inputs' \"data\" "
			      "arrays; at most 65536 are read");
}
