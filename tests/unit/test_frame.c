/*
 * Unit tests of the protocol v1 frame codec (src/proto): how the decoder
 * cuts arbitrary reads into frames, which inputs it refuses as protocol
 * violations, and that the encoder writes what the decoder reads back.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "proto/proto.h"

#define MAX_PAYLOAD (1u << 20)

TestSuite(frame, .timeout = 20);

/* A decoder that every test releases, so that ASan sees no leak. */
static struct bt_frame_decoder dec;

static void dec_setup(void)
{
	bt_frame_decoder_init(&dec, MAX_PAYLOAD);
}

static void dec_teardown(void)
{
	bt_frame_decoder_release(&dec);
}

/* Feeds all of buf in one call, which must consume it all and end one frame. */
static void decode_one(const char *buf, size_t len, struct bt_frame *f)
{
	ssize_t r = bt_frame_decode(&dec, buf, len, f);
	cr_assert_eq(r, (ssize_t)len, "decode returned %zd of %zu bytes (%s)", r,
		     len, dec.err);
	cr_assert_not_null(f->hdr, "no frame after %zu bytes", len);
}

/* Feeds buf in one call and expects a protocol violation. */
static void decode_bad(const char *buf, size_t len, const char *what)
{
	struct bt_frame f;
	ssize_t r = bt_frame_decode(&dec, buf, len, &f);
	cr_assert_eq(r, BT_EPROTO, "expected BT_EPROTO, got %zd", r);
	cr_assert_null(f.hdr);
	cr_assert_not_null(strstr(dec.err, what), "err is '%s', expected '%s' in it",
			   dec.err, what);
}

#define S(lit) lit, sizeof(lit) - 1

Test(frame, single_frame_in_one_buffer_is_decoded, .init = dec_setup,
     .fini = dec_teardown)
{
	struct bt_frame f;
	decode_one(S("{\"t\":\"req\",\"id\":\"r1\",\"len\":5}\nhello"), &f);
	cr_assert_str_eq(f.type, "req");
	cr_assert_str_eq(json_string_value(json_object_get(f.hdr, "id")), "r1");
	cr_assert_eq(f.len, 5);
	cr_assert_arr_eq(f.payload, "hello", 5);
	bt_frame_release(&f);
	cr_assert_null(f.hdr);
	cr_assert_null(f.payload);
}

Test(frame, payload_is_nul_terminated, .init = dec_setup, .fini = dec_teardown)
{
	struct bt_frame f;
	decode_one(S("{\"t\":\"res\",\"len\":3}\nabc"), &f);
	cr_assert_eq(f.payload[3], '\0');
	cr_assert_str_eq(f.payload, "abc");
	bt_frame_release(&f);
}

Test(frame, frame_fed_one_byte_at_a_time_is_reassembled, .init = dec_setup,
     .fini = dec_teardown)
{
	static const char msg[] = "{\"t\":\"res\",\"id\":\"r7\",\"len\":5}\nab\ncd";
	size_t len = sizeof(msg) - 1;
	struct bt_frame f;
	for (size_t i = 0; i < len; i++) {
		ssize_t r = bt_frame_decode(&dec, msg + i, 1, &f);
		cr_assert_eq(r, 1, "byte %zu: decode returned %zd (%s)", i, r, dec.err);
		if (i + 1 < len)
			cr_assert_null(f.hdr, "frame completed early, at byte %zu", i);
	}
	cr_assert_not_null(f.hdr);
	cr_assert_str_eq(f.type, "res");
	cr_assert_eq(f.len, 5);
	cr_assert_arr_eq(f.payload, "ab\ncd", 5);
	bt_frame_release(&f);
}

Test(frame, header_split_across_reads_is_reassembled, .init = dec_setup,
     .fini = dec_teardown)
{
	static const char msg[] = "{\"t\":\"req\",\"id\":\"x\",\"len\":3}\nxyz";
	size_t len = sizeof(msg) - 1;
	/* Every cut point, including inside the header and just after '\n'. */
	for (size_t cut = 1; cut < len; cut++) {
		struct bt_frame f;
		struct bt_frame_decoder d;
		bt_frame_decoder_init(&d, MAX_PAYLOAD);
		ssize_t r = bt_frame_decode(&d, msg, cut, &f);
		cr_assert_eq(r, (ssize_t)cut, "cut %zu: first part gave %zd", cut, r);
		cr_assert_null(f.hdr, "cut %zu: frame before all bytes", cut);
		r = bt_frame_decode(&d, msg + cut, len - cut, &f);
		cr_assert_eq(r, (ssize_t)(len - cut), "cut %zu: second part gave %zd",
			     cut, r);
		cr_assert_not_null(f.hdr, "cut %zu: no frame", cut);
		cr_assert_str_eq(json_string_value(json_object_get(f.hdr, "id")), "x");
		cr_assert_arr_eq(f.payload, "xyz", 3);
		bt_frame_release(&f);
		bt_frame_decoder_release(&d);
	}
}

Test(frame, two_frames_in_one_buffer_are_returned_one_per_call, .init = dec_setup,
     .fini = dec_teardown)
{
	static const char msg[] = "{\"t\":\"res\",\"id\":\"a\",\"len\":2}\nAA"
				  "{\"t\":\"pong\",\"seq\":7}\n"
				  "{\"t\":\"res\",\"id\":\"b\",\"len\":1}\nB";
	size_t len = sizeof(msg) - 1, used = 0;
	const char *types[] = {"res", "pong", "res"};
	const char *payloads[] = {"AA", NULL, "B"};
	for (int i = 0; i < 3; i++) {
		struct bt_frame f;
		ssize_t r = bt_frame_decode(&dec, msg + used, len - used, &f);
		cr_assert_gt(r, 0, "frame %d: decode returned %zd (%s)", i, r, dec.err);
		used += (size_t)r;
		cr_assert_not_null(f.hdr, "frame %d missing", i);
		cr_assert_str_eq(f.type, types[i]);
		if (payloads[i]) {
			cr_assert_eq(f.len, strlen(payloads[i]));
			cr_assert_str_eq(f.payload, payloads[i]);
		} else {
			cr_assert_eq(f.len, 0);
			cr_assert_null(f.payload);
		}
		if (i < 2)
			cr_assert_lt(used, len, "frame %d consumed the next frame", i);
		bt_frame_release(&f);
	}
	cr_assert_eq(used, len);
}

Test(frame, payload_with_newlines_and_nul_bytes_is_binary_safe, .init = dec_setup,
     .fini = dec_teardown)
{
	static const char payload[] = "\n\0{\"t\":\"x\"}\n\0\r\n\xff";
	size_t plen = sizeof(payload) - 1;
	char msg[128];
	int h = snprintf(msg, sizeof(msg), "{\"t\":\"req\",\"len\":%zu}\n", plen);
	memcpy(msg + h, payload, plen);
	struct bt_frame f;
	decode_one(msg, (size_t)h + plen, &f);
	cr_assert_eq(f.len, plen);
	cr_assert_arr_eq(f.payload, payload, plen);
	bt_frame_release(&f);
}

Test(frame, len_zero_frame_completes_at_the_newline, .init = dec_setup,
     .fini = dec_teardown)
{
	static const char msg[] = "{\"t\":\"stop\",\"len\":0}\n{\"t\":\"ping\"}\n";
	struct bt_frame f;
	ssize_t r = bt_frame_decode(&dec, msg, sizeof(msg) - 1, &f);
	cr_assert_eq(r, (ssize_t)strlen("{\"t\":\"stop\",\"len\":0}\n"));
	cr_assert_not_null(f.hdr);
	cr_assert_str_eq(f.type, "stop");
	cr_assert_eq(f.len, 0);
	cr_assert_null(f.payload);
	bt_frame_release(&f);
}

Test(frame, header_without_len_is_a_frame_without_payload, .init = dec_setup,
     .fini = dec_teardown)
{
	struct bt_frame f;
	decode_one(S("{\"t\":\"ready\",\"proto\":1}\n"), &f);
	cr_assert_str_eq(f.type, "ready");
	cr_assert_eq(json_integer_value(json_object_get(f.hdr, "proto")), 1);
	cr_assert_eq(f.len, 0);
	cr_assert_null(f.payload);
	bt_frame_release(&f);
}

Test(frame, empty_input_consumes_nothing, .init = dec_setup, .fini = dec_teardown)
{
	struct bt_frame f;
	cr_assert_eq(bt_frame_decode(&dec, "", 0, &f), 0);
	cr_assert_null(f.hdr);
}

Test(frame, partial_frame_is_freed_by_decoder_release, .init = dec_setup,
     .fini = dec_teardown)
{
	/* Header parsed, payload half there: release must free both (ASan). */
	struct bt_frame f;
	ssize_t r = bt_frame_decode(&dec, S("{\"t\":\"res\",\"len\":10}\n12345"), &f);
	cr_assert_eq(r, (ssize_t)strlen("{\"t\":\"res\",\"len\":10}\n12345"));
	cr_assert_null(f.hdr);
	cr_assert_not_null(dec.hdr);
	cr_assert_not_null(dec.payload);
	bt_frame_decoder_release(&dec);
	cr_assert_null(dec.hdr);
	cr_assert_null(dec.payload);
}

/* A header line of exactly total bytes, '\n' included, with "len":0. */
static char *header_of_size(size_t total)
{
	static const char pre[] = "{\"t\":\"req\",\"pad\":\"";
	static const char post[] = "\"}\n";
	size_t fixed = sizeof(pre) - 1 + sizeof(post) - 1;
	cr_assert_geq(total, fixed);
	char *s = malloc(total + 1);
	cr_assert_not_null(s);
	memcpy(s, pre, sizeof(pre) - 1);
	memset(s + sizeof(pre) - 1, 'p', total - fixed);
	memcpy(s + total - (sizeof(post) - 1), post, sizeof(post) - 1);
	s[total] = '\0';
	return s;
}

Test(frame, header_line_of_exactly_64k_is_accepted, .init = dec_setup,
     .fini = dec_teardown)
{
	char *s = header_of_size(BT_PROTO_MAX_HEADER);
	struct bt_frame f;
	decode_one(s, BT_PROTO_MAX_HEADER, &f);
	cr_assert_str_eq(f.type, "req");
	bt_frame_release(&f);
	free(s);
}

Test(frame, header_line_over_64k_is_rejected, .init = dec_setup,
     .fini = dec_teardown)
{
	char *s = header_of_size(BT_PROTO_MAX_HEADER + 1);
	decode_bad(s, BT_PROTO_MAX_HEADER + 1, "header line over 65536 bytes");
	free(s);
}

Test(frame, header_line_over_64k_is_rejected_before_its_newline_arrives,
     .init = dec_setup, .fini = dec_teardown)
{
	/* A peer that never sends '\n' must not make the decoder grow forever. */
	char chunk[4096];
	memset(chunk, 'x', sizeof(chunk));
	struct bt_frame f;
	size_t fed = 0;
	ssize_t r = 0;
	while (fed <= BT_PROTO_MAX_HEADER + sizeof(chunk)) {
		r = bt_frame_decode(&dec, chunk, sizeof(chunk), &f);
		if (r < 0)
			break;
		cr_assert_eq(r, (ssize_t)sizeof(chunk));
		fed += sizeof(chunk);
	}
	cr_assert_eq(r, BT_EPROTO, "no error after %zu bytes without a newline", fed);
	cr_assert_leq(fed, BT_PROTO_MAX_HEADER);
	cr_assert_not_null(strstr(dec.err, "header line over"), "err: %s", dec.err);
}

Test(frame, len_above_max_payload_is_rejected_without_allocating,
     .init = dec_setup, .fini = dec_teardown)
{
	/* 4 GiB: allocating it first would be the bug this guards against. */
	decode_bad(S("{\"t\":\"res\",\"len\":4294967296}\n"), "payload over the limit");
	cr_assert_null(dec.payload);
	cr_assert_null(dec.hdr);
	cr_assert_not_null(strstr(dec.err, "4294967296"), "err: %s", dec.err);
}

Test(frame, len_of_exactly_max_payload_is_accepted)
{
	struct bt_frame_decoder d;
	bt_frame_decoder_init(&d, 4);
	struct bt_frame f;
	ssize_t r = bt_frame_decode(&d, S("{\"t\":\"res\",\"len\":4}\nabcd"), &f);
	cr_assert_eq(r, (ssize_t)strlen("{\"t\":\"res\",\"len\":4}\nabcd"), "%s", d.err);
	cr_assert_not_null(f.hdr);
	bt_frame_release(&f);
	bt_frame_decoder_release(&d);

	bt_frame_decoder_init(&d, 4);
	r = bt_frame_decode(&d, S("{\"t\":\"res\",\"len\":5}\nabcde"), &f);
	cr_assert_eq(r, BT_EPROTO);
	bt_frame_decoder_release(&d);
}

Test(frame, non_json_header_is_rejected, .init = dec_setup, .fini = dec_teardown)
{
	decode_bad(S("hello there\n"), "header is not JSON");
}

Test(frame, truncated_json_header_is_rejected, .init = dec_setup,
     .fini = dec_teardown)
{
	decode_bad(S("{\"t\":\"res\"\n"), "header is not JSON");
}

Test(frame, trailing_bytes_after_the_json_object_are_rejected, .init = dec_setup,
     .fini = dec_teardown)
{
	decode_bad(S("{\"t\":\"res\"} {}\n"), "header is not JSON");
}

Test(frame, duplicate_keys_in_header_are_rejected, .init = dec_setup,
     .fini = dec_teardown)
{
	decode_bad(S("{\"t\":\"res\",\"t\":\"req\"}\n"), "header is not JSON");
}

Test(frame, json_array_header_is_rejected, .init = dec_setup, .fini = dec_teardown)
{
	decode_bad(S("[\"t\",\"res\"]\n"), "header is not a JSON object");
}

Test(frame, json_scalar_header_is_rejected, .init = dec_setup, .fini = dec_teardown)
{
	/* jansson refuses a top-level scalar itself; either text will do. */
	decode_bad(S("42\n"), "header is not");
}

Test(frame, header_without_t_is_rejected, .init = dec_setup, .fini = dec_teardown)
{
	decode_bad(S("{\"id\":\"r1\",\"len\":0}\n"), "no string \"t\"");
}

Test(frame, header_with_non_string_t_is_rejected, .init = dec_setup,
     .fini = dec_teardown)
{
	decode_bad(S("{\"t\":1}\n"), "no string \"t\"");
}

Test(frame, nul_in_metadata_and_error_text_is_valid_json_and_accepted, .init = dec_setup,
     .fini = dec_teardown)
{
	struct bt_frame f;
	decode_one(S("{\"t\":\"res\",\"id\":\"r1\",\"error\":\"bad\\u0000input\","
		     "\"meta\":{\"note\":\"a\\u0000b\"}}\n"), &f);
	cr_assert_eq(json_string_length(json_object_get(f.hdr, "error")), 9);
	bt_frame_release(&f);
}

Test(frame, nul_in_t_or_id_is_rejected, .init = dec_setup, .fini = dec_teardown)
{
	decode_bad(S("{\"t\":\"res\",\"id\":\"r1\\u0000x\"}\n"), "contains a NUL");
	bt_frame_decoder_release(&dec);
	bt_frame_decoder_init(&dec, MAX_PAYLOAD);
	decode_bad(S("{\"t\":\"res\\u0000\"}\n"), "contains a NUL");
}

Test(frame, negative_len_is_rejected, .init = dec_setup, .fini = dec_teardown)
{
	decode_bad(S("{\"t\":\"res\",\"len\":-1}\n"), "\"len\" is not a non-negative integer");
}

Test(frame, fractional_len_is_rejected, .init = dec_setup, .fini = dec_teardown)
{
	decode_bad(S("{\"t\":\"res\",\"len\":1.5}\nx"), "\"len\" is not a non-negative integer");
}

Test(frame, string_len_is_rejected, .init = dec_setup, .fini = dec_teardown)
{
	decode_bad(S("{\"t\":\"res\",\"len\":\"3\"}\nabc"),
		   "\"len\" is not a non-negative integer");
}

Test(frame, empty_line_is_rejected, .init = dec_setup, .fini = dec_teardown)
{
	decode_bad(S("\n"), "empty header line");
}

Test(frame, empty_line_after_a_frame_is_rejected_on_the_next_call,
     .init = dec_setup, .fini = dec_teardown)
{
	static const char msg[] = "{\"t\":\"pong\"}\n\n";
	struct bt_frame f;
	ssize_t r = bt_frame_decode(&dec, msg, sizeof(msg) - 1, &f);
	cr_assert_eq(r, (ssize_t)sizeof(msg) - 2);
	bt_frame_release(&f);
	r = bt_frame_decode(&dec, msg + r, 1, &f);
	cr_assert_eq(r, BT_EPROTO);
	cr_assert_str_eq(dec.err, "empty header line");
}

Test(frame, encode_then_decode_round_trips, .init = dec_setup, .fini = dec_teardown)
{
	static const char payload[] = "bin\0ary\npay\nload";
	size_t plen = sizeof(payload) - 1;
	json_t *hdr = json_pack("{s:s, s:s, s:{s:s, s:i}}", "t", "req", "id", "r42",
				"meta", "pipeline", "docs", "attempt", 1);
	struct bt_buf out = BT_BUF_INIT;
	cr_assert_eq(bt_frame_encode(&out, hdr, payload, plen), 0);
	json_t *empty = json_pack("{s:s}", "t", "stop");
	cr_assert_eq(bt_frame_encode(&out, empty, NULL, 0), 0);

	struct bt_frame f;
	ssize_t r = bt_frame_decode(&dec, out.data, out.len, &f);
	cr_assert_gt(r, 0, "%s", dec.err);
	cr_assert_not_null(f.hdr);
	cr_assert(json_equal(f.hdr, hdr), "decoded header differs from the encoded one");
	cr_assert_eq(json_integer_value(json_object_get(f.hdr, "len")), (json_int_t)plen);
	cr_assert_eq(f.len, plen);
	cr_assert_arr_eq(f.payload, payload, plen);
	bt_frame_release(&f);

	size_t used = (size_t)r;
	r = bt_frame_decode(&dec, out.data + used, out.len - used, &f);
	cr_assert_eq(r, (ssize_t)(out.len - used), "%s", dec.err);
	cr_assert_str_eq(f.type, "stop");
	cr_assert_eq(f.len, 0);
	bt_frame_release(&f);

	json_decref(hdr);
	json_decref(empty);
	bt_buf_release(&out);
}

Test(frame, encode_writes_one_compact_line_with_len_then_payload)
{
	json_t *hdr = json_pack("{s:s}", "t", "res");
	struct bt_buf out = BT_BUF_INIT;
	bt_buf_puts(&out, "old");
	cr_assert_eq(bt_frame_encode(&out, hdr, "xyz", 3), 0);
	cr_assert_eq(out.len, strlen("old{\"t\":\"res\",\"len\":3}\nxyz"));
	cr_assert_str_eq(out.data, "old{\"t\":\"res\",\"len\":3}\nxyz");
	json_decref(hdr);
	bt_buf_release(&out);
}

Test(frame, encode_overrides_a_wrong_len_in_the_header)
{
	json_t *hdr = json_pack("{s:s, s:i}", "t", "res", "len", 99);
	struct bt_buf out = BT_BUF_INIT;
	cr_assert_eq(bt_frame_encode(&out, hdr, "ab", 2), 0);
	cr_assert_str_eq(out.data, "{\"t\":\"res\",\"len\":2}\nab");
	json_decref(hdr);
	bt_buf_release(&out);
}

/* A header object whose compact line, '\n' included, is exactly total bytes. */
static json_t *hdr_of_line_size(size_t total)
{
	/* {"t":"req","pad":"PPP","len":0}\n */
	size_t fixed = strlen("{\"t\":\"req\",\"pad\":\"\",\"len\":0}\n");
	cr_assert_geq(total, fixed);
	char *pad = malloc(total - fixed + 1);
	cr_assert_not_null(pad);
	memset(pad, 'p', total - fixed);
	pad[total - fixed] = '\0';
	json_t *hdr = json_pack("{s:s, s:s}", "t", "req", "pad", pad);
	free(pad);
	return hdr;
}

Test(frame, encode_of_a_header_over_64k_is_too_big_and_appends_nothing)
{
	json_t *hdr = hdr_of_line_size(BT_PROTO_MAX_HEADER + 1);
	struct bt_buf out = BT_BUF_INIT;
	bt_buf_puts(&out, "keep");
	cr_assert_eq(bt_frame_encode(&out, hdr, "abc", 3), BT_ETOOBIG);
	cr_assert_eq(out.len, 4);
	cr_assert_str_eq(out.data, "keep");
	json_decref(hdr);
	bt_buf_release(&out);
}

Test(frame, encode_of_a_header_of_exactly_64k_is_decodable, .init = dec_setup,
     .fini = dec_teardown)
{
	/* The encoder and the decoder must agree on where the limit is. */
	json_t *hdr = hdr_of_line_size(BT_PROTO_MAX_HEADER);
	struct bt_buf out = BT_BUF_INIT;
	cr_assert_eq(bt_frame_encode(&out, hdr, NULL, 0), 0);
	cr_assert_eq(out.len, BT_PROTO_MAX_HEADER);
	struct bt_frame f;
	decode_one(out.data, out.len, &f);
	cr_assert(json_equal(f.hdr, hdr));
	bt_frame_release(&f);
	json_decref(hdr);
	bt_buf_release(&out);
}

/* ---- fast headers ------------------------------------------------------- */

/* A fast frame as a worker would write it. */
static size_t fast(char *out, int kind, int flags, const char *id, const char *meta,
		   const char *payload, size_t plen)
{
	size_t idlen = strlen(id), mlen = meta ? strlen(meta) : 0;
	unsigned char h[BT_FAST_HEADER] = {BT_FAST_MAGIC, (unsigned char)kind,
					   (unsigned char)flags, (unsigned char)idlen};
	for (int i = 0; i < 4; i++)
		h[4 + i] = (unsigned char)(mlen >> (8 * i));
	for (int i = 0; i < 8; i++)
		h[8 + i] = (unsigned char)((unsigned long long)plen >> (8 * i));
	memcpy(out, h, sizeof(h));
	memcpy(out + BT_FAST_HEADER, id, idlen);
	memcpy(out + BT_FAST_HEADER + idlen, meta ? meta : "", mlen);
	memcpy(out + BT_FAST_HEADER + idlen + mlen, payload, plen);
	return BT_FAST_HEADER + idlen + mlen + plen;
}

static void fast_setup(void)
{
	bt_frame_decoder_init(&dec, MAX_PAYLOAD);
	dec.fast = 1;
}

static void decode_bad_fast(const char *buf, size_t len, const char *what)
{
	struct bt_frame f;
	ssize_t r = bt_frame_decode(&dec, buf, len, &f);
	cr_assert_eq(r, BT_EPROTO, "expected BT_EPROTO, got %zd", r);
	cr_assert_not(bt_frame_complete(&f));
	cr_assert_not_null(strstr(dec.err, what), "err is '%s', expected '%s' in it",
			   dec.err, what);
}

Test(frame, fast_success_with_meta_is_decoded, .init = fast_setup, .fini = dec_teardown)
{
	char buf[256];
	size_t n = fast(buf, BT_FAST_RES, 0, "r42", "{\"content_type\":\"text/plain\"}",
			"hello", 5);
	struct bt_frame f;
	cr_assert_eq(bt_frame_decode(&dec, buf, n, &f), (ssize_t)n, "%s", dec.err);
	cr_assert(bt_frame_complete(&f));
	cr_assert_null(f.hdr);
	cr_assert_eq(f.fast, BT_FAST_RES);
	cr_assert_str_eq(f.type, "res");
	cr_assert_str_eq(f.id, "r42");
	cr_assert_str_eq(json_string_value(json_object_get(f.meta, "content_type")),
			 "text/plain");
	cr_assert_eq(f.len, 5);
	cr_assert_arr_eq(f.payload, "hello", 5);
	cr_assert_not(f.retry);
	bt_frame_release(&f);
	cr_assert_not(bt_frame_complete(&f));
}

Test(frame, fast_error_carries_its_text_and_retry_flag, .init = fast_setup,
     .fini = dec_teardown)
{
	char buf[256];
	size_t n = fast(buf, BT_FAST_ERR, BT_FAST_RETRY, "r1", NULL, "busy", 4);
	struct bt_frame f;
	cr_assert_eq(bt_frame_decode(&dec, buf, n, &f), (ssize_t)n, "%s", dec.err);
	cr_assert_eq(f.fast, BT_FAST_ERR);
	cr_assert(f.retry);
	cr_assert_null(f.meta);
	cr_assert_str_eq(f.payload, "busy");
	bt_frame_release(&f);
	/* An empty error text is still an error: a string, not NULL. */
	n = fast(buf, BT_FAST_ERR, 0, "r2", NULL, "", 0);
	cr_assert_eq(bt_frame_decode(&dec, buf, n, &f), (ssize_t)n, "%s", dec.err);
	cr_assert_not_null(f.payload);
	cr_assert_str_eq(f.payload, "");
	cr_assert_not(f.retry);
	bt_frame_release(&f);
}

Test(frame, fast_and_json_frames_mix_and_split_anywhere, .init = fast_setup,
     .fini = dec_teardown)
{
	char buf[512];
	size_t n = fast(buf, BT_FAST_RES, 0, "r1", "{\"a\":1}", "abc", 3);
	const char *js = "{\"t\":\"pong\",\"seq\":3}\n";
	memcpy(buf + n, js, strlen(js));
	n += strlen(js);
	n += fast(buf + n, BT_FAST_RES, 0, "r2", NULL, "", 0);
	/* Every split point, fed one byte at a time after it: three frames. */
	for (size_t cut = 0; cut <= n; cut++) {
		struct bt_frame_decoder d;
		bt_frame_decoder_init(&d, MAX_PAYLOAD);
		d.fast = 1;
		const char *want[] = {"r1", NULL, "r2"};
		int got = 0;
		size_t used = 0;
		while (used < n) {
			size_t chunk = used < cut ? cut - used : 1;
			struct bt_frame f;
			ssize_t r = bt_frame_decode(&d, buf + used, chunk, &f);
			cr_assert_geq(r, 0, "cut %zu: %s", cut, d.err);
			used += (size_t)r;
			if (!bt_frame_complete(&f))
				continue;
			cr_assert_lt(got, 3);
			if (want[got])
				cr_assert_str_eq(f.id, want[got], "cut %zu", cut);
			else
				cr_assert_str_eq(f.type, "pong", "cut %zu", cut);
			got++;
			bt_frame_release(&f);
		}
		cr_assert_eq(got, 3, "cut %zu: %d frames", cut, got);
		bt_frame_decoder_release(&d);
	}
}

Test(frame, fast_header_is_a_violation_unless_offered, .init = dec_setup,
     .fini = dec_teardown)
{
	char buf[64];
	/* Refused at its first byte: without a newline it would wait forever. */
	size_t n = fast(buf, BT_FAST_RES, 0, "r1", NULL, "x", 1);
	decode_bad(buf, 1, "did not offer");
	(void)n;
}

Test(frame, malformed_fast_headers_are_violations, .fini = dec_teardown)
{
	char buf[512];
	struct {
		int kind, flags;
		const char *id, *meta, *what;
	} bad[] = {
		{'x', 0, "r1", NULL, "unknown kind"},
		{BT_FAST_RES, BT_FAST_RETRY, "r1", NULL, "unknown flags"},
		{BT_FAST_ERR, 0x02, "r1", NULL, "unknown flags"},
		{BT_FAST_RES, 0, "", NULL, "without an id"},
		{BT_FAST_RES, 0, "r1", "[1]", "meta is not a JSON object"},
		{BT_FAST_RES, 0, "r1", "{\"a\":", "meta is not JSON"},
		{BT_FAST_RES, 0, "r1", "{\"a\":1,\"a\":2}", "meta is not JSON"},
		{BT_FAST_ERR, 0, "r1", "{}", "fast error with a meta"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		fast_setup();
		size_t n = fast(buf, bad[i].kind, bad[i].flags, bad[i].id, bad[i].meta, "x", 1);
		decode_bad_fast(buf, n, bad[i].what);
		bt_frame_decoder_release(&dec);
	}
	/* A NUL inside the id: it would compare as a shorter one. */
	fast_setup();
	size_t n = fast(buf, BT_FAST_RES, 0, "r1X", NULL, "x", 1);
	buf[BT_FAST_HEADER + 2] = '\0';
	decode_bad_fast(buf, n, "NUL");
	bt_frame_decoder_release(&dec);
	/* A NUL inside an error text. */
	fast_setup();
	n = fast(buf, BT_FAST_ERR, 0, "r1", NULL, "a\0b", 3);
	decode_bad_fast(buf, n, "NUL");
	bt_frame_decoder_release(&dec);
	fast_setup(); /* for .fini */
}

Test(frame, fast_lengths_are_checked_before_anything_is_allocated, .init = fast_setup,
     .fini = dec_teardown)
{
	char buf[64];
	/* Claims 4 GiB of payload: refused from the 16 bytes alone. */
	size_t n = fast(buf, BT_FAST_RES, 0, "r1", NULL, "", 0);
	for (int i = 0; i < 8; i++)
		buf[8 + i] = i == 4 ? 1 : 0;
	decode_bad_fast(buf, BT_FAST_HEADER, "payload over the limit");
	bt_frame_decoder_release(&dec);
	/* Meta past the 64 KiB header limit. */
	fast_setup();
	n = fast(buf, BT_FAST_RES, 0, "r1", NULL, "", 0);
	buf[4] = 0;
	buf[5] = 0;
	buf[6] = 1; /* 65536 bytes */
	decode_bad_fast(buf, BT_FAST_HEADER, "over 65536");
	bt_frame_decoder_release(&dec);
	/* An error text over 64 KiB, though the payload limit is higher. */
	fast_setup();
	n = fast(buf, BT_FAST_ERR, 0, "r1", NULL, "", 0);
	buf[10] = 2; /* 131072 bytes */
	decode_bad_fast(buf, BT_FAST_HEADER, "payload over the limit");
	(void)n;
}

Test(frame, fast_encode_round_trips_and_refuses_what_does_not_fit, .init = fast_setup,
     .fini = dec_teardown)
{
	struct bt_buf out = BT_BUF_INIT;
	json_t *meta = json_pack("{s:s, s:i}", "stage", "ocr", "attempt", 2);
	cr_assert_eq(bt_frame_encode_fast(&out, BT_FAST_REQ, 0, "r7", meta, "data", 4), 0);
	struct bt_frame f;
	cr_assert_eq(bt_frame_decode(&dec, out.data, out.len, &f), (ssize_t)out.len, "%s",
		     dec.err);
	cr_assert_eq(f.fast, BT_FAST_REQ);
	cr_assert_str_eq(f.type, "req");
	cr_assert_str_eq(f.id, "r7");
	cr_assert(json_equal(f.meta, meta));
	cr_assert_arr_eq(f.payload, "data", 4);
	bt_frame_release(&f);
	/* Too long an id, an empty one, meta over 64 KiB: nothing appended. */
	size_t before = out.len;
	char id[300];
	memset(id, 'i', sizeof(id) - 1);
	id[sizeof(id) - 1] = '\0';
	cr_assert_lt(bt_frame_encode_fast(&out, BT_FAST_REQ, 0, id, NULL, "", 0), 0);
	cr_assert_lt(bt_frame_encode_fast(&out, BT_FAST_REQ, 0, "", NULL, "", 0), 0);
	char *pad = malloc(BT_PROTO_MAX_HEADER);
	memset(pad, 'p', BT_PROTO_MAX_HEADER - 1);
	pad[BT_PROTO_MAX_HEADER - 1] = '\0';
	json_object_set_new(meta, "pad", json_string(pad));
	free(pad);
	cr_assert_eq(bt_frame_encode_fast(&out, BT_FAST_REQ, 0, "r8", meta, "", 0), BT_ETOOBIG);
	cr_assert_eq(out.len, before);
	cr_assert_eq(out.data[before], '\0');
	json_decref(meta);
	bt_buf_release(&out);
}

Test(frame, fast_meta_text_is_jansson_compact_text, .init = fast_setup, .fini = dec_teardown)
{
	/* baton writes a fast header's meta itself: it must read as jansson writes it. */
	json_error_t jerr;
	const char *text = "{\"s\":\"a\\\"b\\\\c/\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f é中😀\","
			   "\"nul\":\"x\\u0000y\",\"i\":-9223372036854775808,\"max\":9223372036854775807,"
			   "\"zero\":0,\"r\":0.1,\"big\":1e300,\"t\":true,\"f\":false,\"n\":null,"
			   "\"a\":[1,[],{},\"\",[2,{\"k\":\"v\"}]],\"o\":{\"ke\\ny\":{\"x\":[null]}},"
			   "\"last\":1}";
	json_t *meta = json_loads(text, JSON_ALLOW_NUL, &jerr);
	cr_assert_not_null(meta, "%s", jerr.text);
	struct bt_buf out = BT_BUF_INIT;
	cr_assert_eq(bt_frame_encode_fast(&out, BT_FAST_REQ, 0, "r1", meta, "", 0), 0);
	size_t mlen = (unsigned char)out.data[4] | (unsigned char)out.data[5] << 8 |
		      (unsigned char)out.data[6] << 16;
	char *want = json_dumps(meta, JSON_COMPACT);
	cr_assert_eq(mlen, strlen(want));
	cr_assert_arr_eq(out.data + BT_FAST_HEADER + 2, want, mlen, "%.*s\nvs\n%s", (int)mlen,
			 out.data + BT_FAST_HEADER + 2, want);
	free(want);
	json_decref(meta);
	bt_buf_release(&out);
}

/* Large payloads as memfds (docs/protocol.md): the header says "memfd": N. */
Test(frame, memfd_header_completes_at_its_newline_with_no_bytes_after,
     .init = dec_setup, .fini = dec_teardown)
{
	const char buf[] = "{\"t\":\"res\",\"id\":\"r1\",\"memfd\":622080}\n";
	struct bt_frame f;
	decode_one(buf, sizeof(buf) - 1, &f);
	cr_assert(f.memfd);
	cr_assert_eq(f.len, 622080);
	cr_assert_null(f.payload);
	bt_frame_release(&f);
}

Test(frame, memfd_true_in_ready_is_an_announcement_not_a_payload, .init = dec_setup,
     .fini = dec_teardown)
{
	const char buf[] = "{\"t\":\"ready\",\"proto\":1,\"memfd\":true}\n";
	struct bt_frame f;
	decode_one(buf, sizeof(buf) - 1, &f);
	cr_assert_not(f.memfd);
	cr_assert_eq(f.len, 0);
	bt_frame_release(&f);
}

Test(frame, bad_memfd_sizes_are_rejected, .init = dec_setup, .fini = dec_teardown)
{
	const char neg[] = "{\"t\":\"res\",\"id\":\"r1\",\"memfd\":-1}\n";
	decode_bad(neg, sizeof(neg) - 1, "not a non-negative integer");
}

Test(frame, memfd_with_inline_bytes_is_rejected, .init = dec_setup, .fini = dec_teardown)
{
	const char both[] = "{\"t\":\"res\",\"id\":\"r1\",\"len\":3,\"memfd\":3}\nabc";
	decode_bad(both, sizeof(both) - 1, "both \"len\" and \"memfd\"");
}

Test(frame, memfd_over_max_payload_is_rejected, .init = dec_setup, .fini = dec_teardown)
{
	const char big[] = "{\"t\":\"res\",\"id\":\"r1\",\"memfd\":4294967296}\n";
	decode_bad(big, sizeof(big) - 1, "memfd payload over the limit");
}

/* --- a fast meta: the flat path builds json_loadb's tree, or defers to it ---- */

static void meta_same(const char *text, size_t len)
{
	json_error_t je, jf;
	json_t *want = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
	json_t *got = bt_frame_meta_load(text, len, &jf);

	cr_assert_eq(!want, !got, "'%.*s': json_loadb %s, meta_load %s", (int)len, text,
		     want ? "takes it" : je.text, got ? "takes it" : jf.text);
	if (want) {
		/* The same tree, key order included: compact dumps keep insertion order. */
		char *a = json_dumps(want, JSON_COMPACT | JSON_ENCODE_ANY);
		char *b = json_dumps(got, JSON_COMPACT | JSON_ENCODE_ANY);
		cr_assert_str_eq(a, b, "'%.*s'", (int)len, text);
		free(a);
		free(b);
	} else {
		cr_assert_str_eq(je.text, jf.text, "'%.*s'", (int)len, text);
	}
	json_decref(want);
	json_decref(got);
}

static const char *const metas[] = {
    "{\"content_type\":\"application/json\",\"v2_header_length\":123}",
    " {\r\n\t\"a\" : 1 , \"b\":-17,\"c\":true,\"d\":false,\"e\":null , \"\":\"\"}\n ",
    "{}",
    " { } ",
    "{\"n\":999999999999999999,\"m\":-999999999999999999}",
    "{\"n\":9223372036854775807}",
    "{\"n\":9223372036854775808}",
    "{\"n\":0,\"z\":-0,\"l\":01}",
    "{\"r\":1.5,\"e\":1e3,\"E\":2E-1}",
    "{\"s\":\"a\\\"b\\u00e9\\u0000\"}",
    "{\"u\":\"\xc3\xa9\",\"bad\":\"\xc3\"}",
    "{\"a\":1,\"a\":2}",
    "{\"o\":{\"x\":[1,2]},\"a\":[]}",
    "{\"t\":truex}",
    "{\"t\":true1}",
    "{\"t\":tru}",
    "{\"a\":1}x",
    "{\"a\":1,}",
    "{\"a\" 1}",
    "[1,2]",
    "",
    "{\"tab\":\"a\tb\"}",
    "{\"del\":\"\x7f\"}",
};

Test(frame, fast_meta_loads_as_json_loadb_does)
{
	char buf[256];
	unsigned long long seed = 88172645463325252ull;

	for (size_t m = 0; m < sizeof(metas) / sizeof(metas[0]); m++) {
		size_t len = strlen(metas[m]);

		meta_same(metas[m], len);
		/* And a few thousand edits of it: bytes deleted, replaced, inserted. */
		for (int i = 0; i < 2000; i++) {
			static const char alphabet[] =
			    "{}[]\":,-.0123456789eEtrufalsn \\x\x7f\xc3\xa9";
			size_t n = len;
			memcpy(buf, metas[m], len);
			for (int e = 0; e < 1 + i % 3; e++) {
				seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
				size_t at = n ? seed % (n + 1) : 0;
				char c = alphabet[(seed >> 20) % (sizeof(alphabet) - 1)];
				if ((seed >> 40) % 3 == 0 && at < n) {
					memmove(buf + at, buf + at + 1, n - at - 1);
					n--;
				} else if ((seed >> 40) % 3 == 1 && at < n) {
					buf[at] = c;
				} else if (n < sizeof(buf)) {
					memmove(buf + at + 1, buf + at, n - at);
					buf[at] = c;
					n++;
				}
			}
			meta_same(buf, n);
		}
	}
}
