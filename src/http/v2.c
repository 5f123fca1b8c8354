/*
 * The Open Inference Protocol (KServe v2) request checks, with Triton's
 * binary tensor extension, and the completion of a worker's v2 answer.
 * Pure: it reads bytes and writes bytes and error sentences; which HTTP
 * status to answer and where the request goes is decided in http.c.
 */
#include "v2.h"

#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../common/jscan.h"

enum kind { K_BOOL, K_INT, K_UINT, K_FLOAT, K_BYTES };

struct dtype {
	const char *name;
	enum kind kind;
	unsigned size;	    /* bytes of one binary element; 0 for BYTES */
	long long min, max; /* the range of K_INT and K_UINT */
};

/*
 * UINT64 stops at LLONG_MAX because that is the largest integer jansson
 * parses; larger values are refused by the JSON parser before we see them.
 */
static const struct dtype dtypes[] = {
    {"BOOL", K_BOOL, 1, 0, 0},
    {"UINT8", K_UINT, 1, 0, UINT8_MAX},
    {"UINT16", K_UINT, 2, 0, UINT16_MAX},
    {"UINT32", K_UINT, 4, 0, UINT32_MAX},
    {"UINT64", K_UINT, 8, 0, LLONG_MAX},
    {"INT8", K_INT, 1, INT8_MIN, INT8_MAX},
    {"INT16", K_INT, 2, INT16_MIN, INT16_MAX},
    {"INT32", K_INT, 4, INT32_MIN, INT32_MAX},
    {"INT64", K_INT, 8, LLONG_MIN, LLONG_MAX},
    {"FP16", K_FLOAT, 2, 0, 0},
    {"FP32", K_FLOAT, 4, 0, 0},
    {"FP64", K_FLOAT, 8, 0, 0},
    {"BYTES", K_BYTES, 0, 0, 0},
    {"BF16", K_FLOAT, 2, 0, 0},
};

size_t bt_v2_scan_min = 64 * 1024;

/* What the binary pass needs to know of each input, in request order. */
struct input {
	const char *name; /* borrowed from the parsed JSON */
	const struct dtype *dt;
	uint64_t count; /* elements, the product of the shape */
	int binary;	/* it has parameters.binary_data_size */
	uint64_t size;	/* binary_data_size */
};

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -1;
}

static const struct dtype *dtype_find(const char *name)
{
	for (size_t i = 0; i < BT_ARRAY_SIZE(dtypes); i++)
		if (!strcmp(dtypes[i].name, name))
			return &dtypes[i];
	return NULL;
}

/*
 * Renders a shape that has already been checked as "[2,3]" for error
 * sentences.  The caller frees the text.
 */
static char *shape_text(const json_t *shape)
{
	struct bt_buf b = BT_BUF_INIT;
	size_t i;
	json_t *d;

	bt_buf_puts(&b, "[");
	for (i = 0; i < json_array_size(shape); i++) {
		d = json_array_get(shape, i);
		bt_buf_printf(&b, "%s%lld", i ? "," : "", (long long)json_integer_value(d));
	}
	bt_buf_puts(&b, "]");
	return bt_buf_detach(&b, NULL);
}

/* The context of one input while its "data" is walked. */
struct walk {
	const char *name;
	const struct dtype *dt;
	uint64_t n; /* elements seen so far */
	char *err;
	size_t errlen;
};

/* How an error sentence names a scanned value, as what() names a loaded one. */
static const char *scanned(enum bt_jtype t)
{
	switch (t) {
	case BT_J_OBJECT:
		return "an object";
	case BT_J_ARRAY:
		return "an array";
	case BT_J_STRING:
		return "a string";
	case BT_J_INTEGER:
		return "an integer";
	case BT_J_REAL:
		return "a real number";
	case BT_J_TRUE:
	case BT_J_FALSE:
		return "a boolean";
	default:
		return "null";
	}
}

/* The scanned type of a loaded value. */
static enum bt_jtype jtype(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return BT_J_OBJECT;
	case JSON_ARRAY:
		return BT_J_ARRAY;
	case JSON_STRING:
		return BT_J_STRING;
	case JSON_INTEGER:
		return BT_J_INTEGER;
	case JSON_REAL:
		return BT_J_REAL;
	case JSON_TRUE:
		return BT_J_TRUE;
	case JSON_FALSE:
		return BT_J_FALSE;
	default:
		return BT_J_NULL;
	}
}

/* How an error sentence names the JSON value that was found instead. */
static const char *what(const json_t *v)
{
	return scanned(jtype(v));
}

/* Checks one element of "data", loaded or scanned: its type and integer value. */
static int check_element(struct walk *w, enum bt_jtype t, long long x)
{
	const struct dtype *dt = w->dt;

	switch (dt->kind) {
	case K_BOOL:
		if (t == BT_J_TRUE || t == BT_J_FALSE)
			return 0;
		return fail(w->err, w->errlen,
			    "input '%s': data element %llu is %s, BOOL takes true or false",
			    w->name, (unsigned long long)w->n, scanned(t));
	case K_FLOAT:
		if (t == BT_J_INTEGER || t == BT_J_REAL)
			return 0;
		return fail(w->err, w->errlen,
			    "input '%s': data element %llu is %s, %s takes numbers", w->name,
			    (unsigned long long)w->n, scanned(t), dt->name);
	case K_BYTES:
		if (t == BT_J_STRING)
			return 0;
		return fail(w->err, w->errlen,
			    "input '%s': data element %llu is %s, BYTES takes strings", w->name,
			    (unsigned long long)w->n, scanned(t));
	case K_INT:
	case K_UINT:
		if (t != BT_J_INTEGER)
			return fail(w->err, w->errlen,
				    "input '%s': data element %llu is %s, %s takes integers",
				    w->name, (unsigned long long)w->n, scanned(t), dt->name);
		if (x < dt->min || x > dt->max)
			return fail(w->err, w->errlen,
				    "input '%s': data element %llu is %lld, outside the %s range "
				    "[%lld, %lld]",
				    w->name, (unsigned long long)w->n, x, dt->name, dt->min,
				    dt->max);
		return 0;
	}
	return 0;
}

/* Each scanned value of a large "data" array, as walk_data does for a loaded one. */
static int walk_scanned(void *ctx, const struct bt_jvalue *v)
{
	struct walk *w = ctx;

	if (v->type == BT_J_ARRAY)
		return 0;
	if (check_element(w, v->type, v->integer) < 0)
		return -1;
	w->n++;
	return 0;
}

/*
 * Counts and checks the elements of "data", flattening nested arrays as
 * Triton does.  The recursion is bounded by jansson's own nesting limit.
 */
static int walk_data(struct walk *w, const json_t *v)
{
	size_t i;

	if (json_is_array(v)) {
		for (i = 0; i < json_array_size(v); i++)
			if (walk_data(w, json_array_get(v, i)) < 0)
				return -1;
		return 0;
	}
	if (check_element(w, jtype(v), json_is_integer(v) ? json_integer_value(v) : 0) < 0)
		return -1;
	w->n++;
	return 0;
}

/* Reads an optional non-negative integer member of a "parameters" object. */
static int param_count(const json_t *params, const char *key, int *has, long long *val,
		       const char *where, char *err, size_t errlen)
{
	json_t *v = json_object_get(params, key);

	*has = 0;
	if (!v)
		return 0;
	if (!json_is_integer(v))
		return fail(err, errlen,
			    "%s\"parameters\".\"%s\" must be a non-negative integer, not %s", where,
			    key, what(v));
	if (json_integer_value(v) < 0)
		return fail(err, errlen,
			    "%s\"parameters\".\"%s\" must be a non-negative integer, not %lld",
			    where, key, (long long)json_integer_value(v));
	*has = 1;
	*val = json_integer_value(v);
	return 0;
}

/* Checks one element of "inputs" and fills *in for the binary pass. */
static int check_input(const json_t *o, size_t idx, json_t *seen, const struct bt_jspan *span,
		       const char *body, struct input *in, char *err, size_t errlen)
{
	json_t *name, *dt, *shape, *params, *data, *d;
	struct walk w;
	char *st;
	size_t i;
	int has_size;
	long long size;
	int r;

	if (!json_is_object(o))
		return fail(err, errlen, "inputs[%zu] is %s, not an object", idx, what(o));

	name = json_object_get(o, "name");
	if (!name)
		return fail(err, errlen, "inputs[%zu]: \"name\" is missing", idx);
	if (!json_is_string(name) || !json_string_length(name))
		return fail(err, errlen, "inputs[%zu]: \"name\" must be a non-empty string", idx);
	in->name = json_string_value(name);
	/* A JSON object as a set keeps the check linear in the input count. */
	if (json_object_get(seen, in->name))
		return fail(err, errlen, "inputs[%zu]: input '%s' appears twice", idx, in->name);
	json_object_set_new(seen, in->name, json_true());

	dt = json_object_get(o, "datatype");
	if (!dt)
		return fail(err, errlen, "inputs[%zu]: \"datatype\" is missing", idx);
	if (!json_is_string(dt))
		return fail(err, errlen, "inputs[%zu]: \"datatype\" must be a string, not %s", idx,
			    what(dt));
	in->dt = dtype_find(json_string_value(dt));
	if (!in->dt)
		return fail(err, errlen, "inputs[%zu]: unknown datatype '%s'", idx,
			    json_string_value(dt));

	shape = json_object_get(o, "shape");
	if (!shape)
		return fail(err, errlen, "inputs[%zu]: \"shape\" is missing", idx);
	if (!json_is_array(shape))
		return fail(err, errlen, "inputs[%zu]: \"shape\" must be an array, not %s", idx,
			    what(shape));
	for (i = 0; i < json_array_size(shape); i++) {
		d = json_array_get(shape, i);
		if (!json_is_integer(d) || json_integer_value(d) < 0)
			return fail(err, errlen,
				    "inputs[%zu]: \"shape\"[%zu] must be a non-negative integer",
				    idx, i);
	}
	/* The empty shape is a scalar: one element. */
	in->count = 1;
	for (i = 0; i < json_array_size(shape); i++) {
		d = json_array_get(shape, i);
		if (__builtin_mul_overflow(in->count, (uint64_t)json_integer_value(d),
					   &in->count)) {
			st = shape_text(shape);
			fail(err, errlen, "input '%s': shape %s has too many elements to count",
			     in->name, st);
			free(st);
			return -1;
		}
	}

	params = json_object_get(o, "parameters");
	has_size = 0;
	if (params && !json_is_object(params))
		return fail(err, errlen, "inputs[%zu]: \"parameters\" must be an object, not %s",
			    idx, what(params));
	if (params) {
		char where[48];

		snprintf(where, sizeof(where), "inputs[%zu]: ", idx);
		if (param_count(params, "binary_data_size", &has_size, &size, where, err, errlen) <
		    0)
			return -1;
	}

	data = json_object_get(o, "data");
	if (has_size) {
		uint64_t want;
		int over;

		if (data)
			return fail(err, errlen,
				    "input '%s': \"data\" and the binary_data_size parameter "
				    "exclude each other",
				    in->name);
		in->binary = 1;
		in->size = (uint64_t)size;
		/* BYTES elements vary in size; the binary pass counts them. */
		if (in->dt->kind == K_BYTES)
			return 0;
		over = __builtin_mul_overflow(in->count, (uint64_t)in->dt->size, &want);
		if (!over && want == in->size)
			return 0;
		st = shape_text(shape);
		if (over)
			r = fail(err, errlen,
				 "input '%s': %s of shape %s has too many bytes to count", in->name,
				 in->dt->name, st);
		else
			r = fail(err, errlen,
				 "input '%s': binary_data_size is %llu but %s of shape %s takes "
				 "%llu bytes",
				 in->name, (unsigned long long)in->size, in->dt->name, st,
				 (unsigned long long)want);
		free(st);
		return r;
	}
	if (!data)
		return fail(err, errlen,
			    "inputs[%zu]: \"data\" is missing (and no binary_data_size parameter)",
			    idx);

	w = (struct walk){in->name, in->dt, 0, err, errlen};
	if (span && span->stop) {
		/* Left out of the loaded skeleton: checked from its text. */
		if (bt_jscan_check(body + span->start, span->stop - span->start, 0, walk_scanned, &w,
				   NULL, 0))
			return -1;
	} else if (walk_data(&w, data) < 0) {
		return -1;
	}
	r = 0;
	if (w.n != in->count) {
		st = shape_text(shape);
		r = fail(err, errlen, "input '%s': shape %s has %llu element%s but data has %llu",
			 in->name, st, (unsigned long long)in->count, in->count == 1 ? "" : "s",
			 (unsigned long long)w.n);
		free(st);
	}
	return r;
}

static int check_outputs(const json_t *outputs, char *err, size_t errlen)
{
	json_t *o, *name, *params, *bin;
	size_t i;

	if (!json_is_array(outputs))
		return fail(err, errlen, "\"outputs\" must be an array, not %s", what(outputs));
	for (i = 0; i < json_array_size(outputs); i++) {
		o = json_array_get(outputs, i);
		if (!json_is_object(o))
			return fail(err, errlen, "outputs[%zu] is %s, not an object", i, what(o));
		name = json_object_get(o, "name");
		if (!json_is_string(name))
			return fail(err, errlen, "outputs[%zu]: \"name\" must be a string%s", i,
				    name ? "" : " and is missing");
		params = json_object_get(o, "parameters");
		if (params && !json_is_object(params))
			return fail(err, errlen,
				    "outputs[%zu]: \"parameters\" must be an object, not %s", i,
				    what(params));
		bin = params ? json_object_get(params, "binary_data") : NULL;
		if (bin && !json_is_boolean(bin))
			return fail(err, errlen,
				    "outputs[%zu]: \"parameters\".\"binary_data\" must be a "
				    "boolean, not %s",
				    i, what(bin));
	}
	return 0;
}

/*
 * Walks one BYTES input's binary region: each element is a 4-byte
 * little-endian length and that many bytes, and the elements must fill
 * the region exactly.  p holds in->size bytes (checked by the caller).
 */
static int check_bytes_region(const struct input *in, const unsigned char *p, char *err,
			      size_t errlen)
{
	uint64_t off = 0, n = 0;
	uint32_t l;

	while (off < in->size) {
		if (in->size - off < 4)
			return fail(err, errlen,
				    "input '%s': binary BYTES element %llu is cut short: %llu "
				    "bytes left for its 4-byte length",
				    in->name, (unsigned long long)n,
				    (unsigned long long)(in->size - off));
		l = (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 | (uint32_t)p[off + 2] << 16 |
		    (uint32_t)p[off + 3] << 24;
		off += 4;
		if (l > in->size - off)
			return fail(err, errlen,
				    "input '%s': binary BYTES element %llu claims %lu bytes but "
				    "only %llu remain of its binary_data_size",
				    in->name, (unsigned long long)n, (unsigned long)l,
				    (unsigned long long)(in->size - off));
		off += l;
		n++;
	}
	if (n != in->count)
		return fail(err, errlen,
			    "input '%s': shape has %llu element%s but binary data has %llu",
			    in->name, (unsigned long long)in->count, in->count == 1 ? "" : "s",
			    (unsigned long long)n);
	return 0;
}

/*
 * Matches the bytes after the JSON header against the inputs that claim
 * binary data, in request order.
 */
static int check_binary(const struct input *ins, size_t n, const char *body, size_t len,
			long long header_len, char *err, size_t errlen)
{
	uint64_t total = 0, off;
	size_t i, follow;

	for (i = 0; i < n; i++) {
		if (!ins[i].binary)
			continue;
		if (header_len < 0)
			return fail(err, errlen,
				    "input '%s' has binary_data_size but the request has no "
				    "Inference-Header-Content-Length header",
				    ins[i].name);
		/* Many huge claims could wrap the sum into a plausible size. */
		if (__builtin_add_overflow(total, ins[i].size, &total))
			return fail(err, errlen,
				    "binary data: inputs declare more bytes than can be counted");
	}
	if (header_len < 0)
		return 0;
	follow = len - (size_t)header_len;
	if (total != follow)
		return fail(err, errlen,
			    "binary data: inputs declare %llu bytes but %zu follow the JSON header",
			    (unsigned long long)total, follow);

	off = (uint64_t)header_len;
	for (i = 0; i < n; i++) {
		if (!ins[i].binary)
			continue;
		if (ins[i].dt->kind == K_BYTES &&
		    check_bytes_region(&ins[i], (const unsigned char *)body + off, err, errlen) < 0)
			return -1;
		off += ins[i].size;
	}
	return 0;
}

static int check_request(const json_t *root, const struct bt_jspans *sp, struct bt_v2_request *r,
			 const char *body, size_t len, long long header_len, char *err,
			 size_t errlen)
{
	json_t *id, *params, *inputs, *outputs, *bo, *seen;
	struct input *ins;
	size_t i, n;
	int ret = -1;

	if (!json_is_object(root))
		return fail(err, errlen, "request body must be a JSON object, not %s", what(root));

	id = json_object_get(root, "id");
	if (id && !json_is_string(id))
		return fail(err, errlen, "\"id\" must be a string, not %s", what(id));

	params = json_object_get(root, "parameters");
	if (params) {
		if (!json_is_object(params))
			return fail(err, errlen, "\"parameters\" must be an object, not %s",
				    what(params));
		if (param_count(params, "timeout", &r->has_timeout, &r->timeout_us, "", err,
				errlen) < 0 ||
		    param_count(params, "priority", &r->has_priority, &r->priority, "", err,
				errlen) < 0)
			return -1;
		bo = json_object_get(params, "binary_data_output");
		if (bo && !json_is_boolean(bo))
			return fail(
			    err, errlen,
			    "\"parameters\".\"binary_data_output\" must be a boolean, not %s",
			    what(bo));
		r->binary_output = json_is_true(bo);
	}

	inputs = json_object_get(root, "inputs");
	if (!inputs)
		return fail(err, errlen, "\"inputs\" is missing");
	if (!json_is_array(inputs))
		return fail(err, errlen, "\"inputs\" must be an array, not %s", what(inputs));
	n = json_array_size(inputs);
	if (!n)
		return fail(err, errlen, "\"inputs\" is empty");

	outputs = json_object_get(root, "outputs");
	if (outputs && check_outputs(outputs, err, errlen) < 0)
		return -1;

	ins = bt_calloc(n, sizeof(*ins));
	seen = json_object();
	for (i = 0; i < n; i++)
		if (check_input(json_array_get(inputs, i), i, seen, i < sp->n ? &sp->v[i] : NULL,
				body, &ins[i], err, errlen) < 0)
			goto out;
	if (check_binary(ins, n, body, len, header_len, err, errlen) < 0)
		goto out;
	for (i = 0; i < n; i++)
		r->binary |= ins[i].binary;
	if (id)
		r->id = bt_strdup(json_string_value(id));
	ret = 0;
out:
	json_decref(seen);
	free(ins);
	return ret;
}

int bt_v2_parse_infer(const char *body, size_t len, long long header_len, struct bt_v2_request *out,
		      char *err, size_t errlen)
{
	static const char header_text[] =
	    "header (the first Inference-Header-Content-Length bytes)";
	struct bt_v2_request r = {0};
	struct bt_jspans sp = {0};
	json_error_t jerr;
	json_t *root;
	char why[160];
	size_t jlen;
	int ret;

	memset(out, 0, sizeof(*out));
	if (header_len == 0 || header_len < -1)
		return fail(
		    err, errlen,
		    "Inference-Header-Content-Length must be a positive byte count, not %lld",
		    header_len);
	if (header_len > 0 && (unsigned long long)header_len > len)
		return fail(err, errlen,
			    "Inference-Header-Content-Length is %lld but the body has %zu bytes",
			    header_len, len);
	jlen = header_len < 0 ? len : (size_t)header_len;

	if (jlen < bt_v2_scan_min) {
		root = json_loadb(body, jlen, JSON_REJECT_DUPLICATES, &jerr);
		if (!root)
			return fail(err, errlen, "request %s is not JSON: %s at position %d",
				    header_len < 0 ? "body" : header_text, jerr.text, jerr.position);
	} else {
		/*
		 * The inputs' "data" arrays are checked from their text: loaded, a
		 * tensor of millions of numbers took 21 times its text (bench/v2json).
		 */
		if (bt_jscan_find_data(body, jlen, 0, "inputs", &sp, why, sizeof(why))) {
			bt_jscan_spans_release(&sp);
			return fail(err, errlen, "request %s is not JSON: %s",
				    header_len < 0 ? "body" : header_text, why);
		}
		/* Bulk outside the data arrays would be a tree again: bounded. */
		if (sp.values > BT_V2_MAX_VALUES) {
			fail(err, errlen,
			     "request %s holds %zu JSON values outside its inputs' \"data\" "
			     "arrays; at most %d are read",
			     header_len < 0 ? "body" : header_text, sp.values, BT_V2_MAX_VALUES);
			bt_jscan_spans_release(&sp);
			return -1;
		}
		root = bt_jscan_load_without_data(body, jlen, &sp, JSON_REJECT_DUPLICATES, &jerr);
		if (!root) {
			bt_jscan_spans_release(&sp);
			return fail(err, errlen, "request %s is not JSON: %s",
				    header_len < 0 ? "body" : header_text, jerr.text);
		}
	}
	r.header_len = jlen;
	ret = check_request(root, &sp, &r, body, len, header_len, err, errlen);
	json_decref(root);
	bt_jscan_spans_release(&sp);
	if (ret < 0) {
		bt_v2_request_release(&r);
		return -1;
	}
	*out = r;
	return 0;
}

int bt_v2_check_infer(const json_t *root, const char *body, size_t len, long long header_len,
		      struct bt_v2_request *out, char *err, size_t errlen)
{
	struct bt_v2_request r = {0};
	struct bt_jspans sp = {0};

	/* Lengths out of range, and headers the text path scans, go that way. */
	if (header_len == 0 || header_len < -1 ||
	    (header_len > 0 && (unsigned long long)header_len > len) ||
	    (header_len < 0 ? len : (size_t)header_len) >= bt_v2_scan_min)
		return bt_v2_parse_infer(body, len, header_len, out, err, errlen);
	memset(out, 0, sizeof(*out));
	r.header_len = header_len < 0 ? len : (size_t)header_len;
	if (check_request(root, &sp, &r, body, len, header_len, err, errlen) < 0) {
		bt_v2_request_release(&r);
		return -1;
	}
	*out = r;
	return 0;
}

json_t *bt_v2_meta(const struct bt_v2_request *r, const char *model)
{
	/* Built by hand: json_pack read its format again for every request. */
	json_t *m = json_object();
	json_object_set_new_nocheck(m, "content_type", json_stringn_nocheck("application/json", 16));
	json_object_set_new_nocheck(m, "protocol", json_stringn_nocheck("v2", 2));
	json_object_set_new_nocheck(m, "model_name", json_string(model));
	if (r->binary)
		json_object_set_new_nocheck(m, "v2_header_length",
					    json_integer((json_int_t)r->header_len));
	if (r->binary_output)
		json_object_set_new_nocheck(m, "v2_binary_output", json_true());
	return m;
}

void bt_v2_request_release(struct bt_v2_request *r)
{
	free(r->id);
	r->id = NULL;
}

/* Appends s as a JSON string literal. */
static int put_string(struct bt_buf *b, const char *s)
{
	json_t *v = json_string(s);
	char *t;

	if (!v)
		return -1;
	t = json_dumps(v, JSON_ENCODE_ANY);
	json_decref(v);
	if (!t)
		return -1;
	bt_buf_puts(b, t);
	free(t);
	return 0;
}

/* What completing an answer needs to know of its top level. */
struct top {
	int object;	    /* the document is an object */
	size_t members;	    /* its members */
	int model;	    /* 1 + the bt_jtype of its "model_name", 0 without one */
	int id;		    /* it has an "id" */
};

static int top_member(void *ctx, const struct bt_jvalue *v)
{
	struct top *t = ctx;

	if (v->end)
		return 0;
	if (v->depth == 1)
		t->object = v->type == BT_J_OBJECT;
	if (v->depth != 2 || !t->object)
		return 0;
	t->members++;
	if (v->keylen == 10 && !memcmp(v->key, "model_name", 10))
		t->model = 1 + (int)v->type;
	else if (v->keylen == 2 && !memcmp(v->key, "id", 2))
		t->id = 1;
	return 0;
}

/*
 * The members are spliced in before the closing brace instead of dumping
 * the parsed object again: a re-dump would print 0.1 as
 * 0.10000000000000001 and could not print the UINT64 values above
 * LLONG_MAX, so the worker's text is kept as is.  Appending at the end
 * gives the key order a jansson re-dump would give.  The answer is checked
 * by the scanner, never loaded: a tensor of millions of numbers as a
 * jansson tree took 13 times its text (docs/benchmarks.md, bench/v2json).
 */
int bt_v2_finish_response(const char *body, size_t len, long long header_len, const char *model,
			  const char *id, char **out, size_t *outlen, long long *out_header_len,
			  char *err, size_t errlen)
{
	struct bt_buf b = BT_BUF_INIT;
	struct top top = {0};
	char why[160];
	size_t jlen, end;
	int add_model, add_id;

	*out = NULL;
	*outlen = 0;
	*out_header_len = -1;
	if (header_len == 0 || header_len < -1 ||
	    (header_len > 0 && (unsigned long long)header_len > len))
		return fail(
		    err, errlen,
		    "worker answer: JSON header length %lld is out of range for a %zu-byte body",
		    header_len, len);
	jlen = header_len < 0 ? len : (size_t)header_len;

	/* Integers as reals, so that a UINT64 output above LLONG_MAX passes. */
	if (bt_jscan_check(body, jlen, BT_JSCAN_INT_AS_REAL, top_member, &top, why, sizeof(why)))
		return fail(err, errlen, "worker answer is not JSON: %s", why);
	if (!top.object)
		return fail(err, errlen, "worker answer must be a JSON object, not an array");
	if (top.model && top.model - 1 != BT_J_STRING)
		return fail(err, errlen, "worker answer: \"model_name\" must be a string, not %s",
			    top.model - 1 == BT_J_REAL ? "a number"
							: scanned((enum bt_jtype)(top.model - 1)));
	add_model = !top.model && model;
	add_id = id && !top.id;

	/* The scanner took the text, so its last non-blank byte is the '}'. */
	end = jlen;
	while (end > 0 && (body[end - 1] == ' ' || body[end - 1] == '\t' || body[end - 1] == '\r' ||
			   body[end - 1] == '\n'))
		end--;
	BT_ASSERT(end > 0 && body[end - 1] == '}');
	end--;

	bt_buf_reserve(&b, len + 64);
	bt_buf_append(&b, body, end);
	if (add_model) {
		bt_buf_puts(&b, top.members ? ",\"model_name\":" : "\"model_name\":");
		if (put_string(&b, model) < 0) {
			fail(err, errlen, "model name is not valid UTF-8");
			goto fail;
		}
	}
	if (add_id) {
		bt_buf_puts(&b, top.members || add_model ? ",\"id\":" : "\"id\":");
		if (put_string(&b, id) < 0) {
			fail(err, errlen, "request id is not valid UTF-8");
			goto fail;
		}
	}
	bt_buf_append(&b, body + end, len - end);
	if (header_len >= 0)
		*out_header_len = (long long)(jlen + (b.len - len));
	*out = bt_buf_detach(&b, outlen);
	return 0;
fail:
	bt_buf_release(&b);
	return -1;
}
