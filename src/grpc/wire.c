/*
 * gRPC message framing and the KServe v2 protobuf <-> v2 JSON translation.
 * A ModelInferRequest becomes exactly the body an HTTP client of
 * POST /v2/models/{m}/infer would send with binary tensors, so workers
 * cannot tell the two ingresses apart; the worker's v2 answer becomes a
 * ModelInferResponse whose tensors are all in raw_output_contents.
 * Pure: bytes in, bytes out (the checks of the v2 body stay in http/v2.c).
 */
#include "wire.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../common/jscan.h"
#include "../http/v2.h"
#include "../proto/proto.h"
#include "inference.pb-c.h"

static const char *const status_names[BT_GRPC_STATUS_COUNT] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *bt_grpc_status_name(int status)
{
	return status >= 0 && status < BT_GRPC_STATUS_COUNT ? status_names[status] : "UNKNOWN";
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

/* ---- framing ------------------------------------------------------------- */

int bt_grpc_frame_next(const uint8_t *data, size_t len, size_t max, size_t *msg_len)
{
	if (len < BT_GRPC_PREFIX)
		return 0;
	size_t n = (size_t)data[1] << 24 | (size_t)data[2] << 16 | (size_t)data[3] << 8 | data[4];
	*msg_len = n;
	if (data[0] != 0)
		return -2;
	if (n > max)
		return -1;
	return len - BT_GRPC_PREFIX >= n ? 1 : 0;
}

void bt_grpc_frame_prefix(uint8_t out[BT_GRPC_PREFIX], size_t len)
{
	out[0] = 0;
	out[1] = (uint8_t)(len >> 24);
	out[2] = (uint8_t)(len >> 16);
	out[3] = (uint8_t)(len >> 8);
	out[4] = (uint8_t)len;
}

int bt_grpc_timeout_parse(const char *v, uint64_t *us)
{
	uint64_t n = 0;
	size_t i;
	for (i = 0; v[i] >= '0' && v[i] <= '9'; i++)
		n = n * 10 + (uint64_t)(v[i] - '0');
	/* The protocol allows at most 8 digits: no overflow below. */
	if (i == 0 || i > 8 || !v[i] || v[i + 1])
		return -1;
	switch (v[i]) {
	case 'H':
		n *= 3600ULL * 1000000;
		break;
	case 'M':
		n *= 60ULL * 1000000;
		break;
	case 'S':
		n *= 1000000;
		break;
	case 'm':
		n *= 1000;
		break;
	case 'u':
		break;
	case 'n':
		n /= 1000;
		break;
	default:
		return -1;
	}
	*us = n ? n : 1;
	return 0;
}

/* Reads a varint at *p (bounded by end); -1 when it is cut or over 64 bits. */
static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	*v = 0;
	for (unsigned shift = 0; shift < 64 && *p < end; shift += 7) {
		uint8_t b = *(*p)++;
		*v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return 0;
	}
	return -1;
}

int bt_grpc_string_has_nul(const uint8_t *msg, size_t len, uint32_t fields)
{
	const uint8_t *p = msg, *end = msg + len;
	uint64_t key, n;
	while (p < end) {
		if (get_varint(&p, end, &key))
			return -1;
		switch (key & 7) {
		case 0:
			if (get_varint(&p, end, &n))
				return -1;
			break;
		case 1:
			if (end - p < 8)
				return -1;
			p += 8;
			break;
		case 5:
			if (end - p < 4)
				return -1;
			p += 4;
			break;
		case 2:
			if (get_varint(&p, end, &n) || n > (uint64_t)(end - p))
				return -1;
			if ((key >> 3) < 32 && (fields >> (key >> 3) & 1) &&
			    memchr(p, 0, (size_t)n))
				return 1;
			p += n;
			break;
		default:
			return 1; /* groups: not in these messages */
		}
	}
	return 0;
}

/*
 * What protobuf-c and the JSON translation allocate per field, counted on
 * the wire before anything is unpacked.  An empty input tensor costs two
 * bytes on the wire but hundreds in memory (its struct, then a JSON object
 * built and parsed again), so bytes alone do not bound a request: a
 * 14 MB message of empty inputs once took 3 GB.  Every field occurrence in
 * the messages that are unpacked counts one, and each packed shape
 * dimension one; the tensor data (raw_input_contents, the typed contents)
 * cost about what they weigh and are not counted.
 */
enum shape_of { S_PLAIN, S_REQUEST, S_INPUT, S_OUTPUT, S_PARAM_ENTRY, S_CONTENTS };

static long long fields_count(const uint8_t *p, const uint8_t *end, enum shape_of s)
{
	long long count = 0;
	uint64_t key, n;
	while (p < end) {
		if (get_varint(&p, end, &key))
			return -1;
		unsigned f = (unsigned)(key >> 3), wt = (unsigned)(key & 7);
		const uint8_t *body = p;
		if (wt == 0) {
			if (get_varint(&p, end, &n))
				return -1;
		} else if (wt == 1 || wt == 5) {
			if (end - p < (wt == 1 ? 8 : 4))
				return -1;
			p += wt == 1 ? 8 : 4;
		} else if (wt == 2) {
			if (get_varint(&p, end, &n) || n > (uint64_t)(end - p))
				return -1;
			body = p;
			p += n;
		} else {
			return -1; /* groups: in none of these messages */
		}
		/* The submessages protobuf-c unpacks, and what they are. */
		int sub = -1;
		if (wt == 2 && s == S_REQUEST)
			sub = f == 4 ? S_PARAM_ENTRY : f == 5 ? S_INPUT : f == 6 ? S_OUTPUT : -1;
		else if (wt == 2 && s == S_INPUT)
			sub = f == 4 ? S_PARAM_ENTRY : f == 5 ? S_CONTENTS : -1;
		else if (wt == 2 && s == S_OUTPUT && f == 2)
			sub = S_PARAM_ENTRY;
		else if (wt == 2 && s == S_PARAM_ENTRY && f == 2)
			sub = S_PLAIN; /* the InferParameter */
		long long c = 1;
		if (s == S_CONTENTS && f >= 1 && f <= 8) {
			c = 0; /* tensor data */
		} else if (s == S_INPUT && f == 3 && wt == 2) {
			c = 0; /* packed shape: one per dimension */
			for (const uint8_t *q = body; q < p; c++)
				if (get_varint(&q, p, &n))
					return -1;
		} else if (sub >= 0) {
			long long inner = fields_count(body, p, (enum shape_of)sub);
			if (inner < 0)
				return -1;
			c += inner;
		}
		count += c;
	}
	return count;
}

int bt_grpc_fields_over(const uint8_t *msg, size_t len, int infer_request, long long *count)
{
	*count = fields_count(msg, msg + len, infer_request ? S_REQUEST : S_PLAIN);
	return *count > BT_GRPC_MAX_FIELDS;
}

/* ---- request: protobuf to v2 JSON + binary ---------------------------------- */

/* A protobuf string as JSON; NULL when it is not UTF-8. */
static json_t *jstr(const char *s)
{
	return json_string(s ? s : "");
}

static json_t *param_json(const Inference__InferParameter *p)
{
	if (!p)
		return NULL;
	switch (p->parameter_choice_case) {
	case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM:
		return json_boolean(p->bool_param);
	case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM:
		return json_integer((json_int_t)p->int64_param);
	case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM:
		return jstr(p->string_param);
	case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM:
		return isfinite(p->double_param) ? json_real(p->double_param) : NULL;
	case INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_UINT64_PARAM:
		return p->uint64_param <= (uint64_t)INT64_MAX
			   ? json_integer((json_int_t)p->uint64_param)
			   : NULL;
	default:
		return NULL;
	}
}

/*
 * The three parameter maps have distinct generated types of one layout
 * (key, value): read them through this one.
 */
struct param_entry {
	ProtobufCMessage base;
	char *key;
	Inference__InferParameter *value;
};

/* kind "input" or "output" and its name, or NULL for the request's own. */
static int params_json(struct param_entry **entries, size_t n, json_t *into, const char *kind,
		       const char *name, char *err, size_t errlen)
{
	char where[96] = "";
	for (size_t i = 0; i < n; i++) {
		json_t *v = param_json(entries[i]->value);
		int bad_key = v && json_object_set_new(into, entries[i]->key, v);
		if (v && !bad_key)
			continue;
		if (kind)
			snprintf(where, sizeof(where), "%s '%.64s': ", kind, name);
		if (bad_key)
			return fail(err, errlen, "%sparameter name is not UTF-8", where);
		return fail(err, errlen,
			    "%sparameter '%.64s' has no value, or one JSON cannot hold (a "
			    "string not UTF-8, a uint64 over 2^63-1, a double not finite)",
			    where, entries[i]->key);
	}
	return 0;
}

/* Little-endian writers for typed contents. */
static void put_le(struct bt_buf *b, uint64_t v, unsigned size)
{
	uint8_t tmp[8];
	for (unsigned i = 0; i < size; i++)
		tmp[i] = (uint8_t)(v >> (8 * i));
	bt_buf_append(b, tmp, size);
}

static void put_bytes(struct bt_buf *b, const void *data, size_t n)
{
	put_le(b, (uint64_t)n, 4);
	bt_buf_append(b, data, n);
}

/* Which field of InferTensorContents a datatype uses, and its element size. */
enum field { F_BOOL, F_INT, F_INT64, F_UINT, F_UINT64, F_FP32, F_FP64, F_BYTES, F_NONE };

static const struct {
	const char *name;
	enum field field;
	unsigned size;
	long long min, max;
} types[] = {
    {"BOOL", F_BOOL, 1, 0, 1},
    {"UINT8", F_UINT, 1, 0, UINT8_MAX},
    {"UINT16", F_UINT, 2, 0, UINT16_MAX},
    {"UINT32", F_UINT, 4, 0, UINT32_MAX},
    {"UINT64", F_UINT64, 8, 0, 0},
    {"INT8", F_INT, 1, INT8_MIN, INT8_MAX},
    {"INT16", F_INT, 2, INT16_MIN, INT16_MAX},
    {"INT32", F_INT, 4, INT32_MIN, INT32_MAX},
    {"INT64", F_INT64, 8, 0, 0},
    {"FP16", F_NONE, 2, 0, 0},
    {"BF16", F_NONE, 2, 0, 0},
    {"FP32", F_FP32, 4, 0, 0},
    {"FP64", F_FP64, 8, 0, 0},
    {"BYTES", F_BYTES, 0, 0, 0},
};

static int type_find(const char *name)
{
	for (size_t i = 0; i < BT_ARRAY_SIZE(types); i++)
		if (!strcmp(types[i].name, name))
			return (int)i;
	return -1;
}

/* Elements present in each field of c, so that a wrong field is named. */
static size_t field_count(const Inference__InferTensorContents *c, enum field f)
{
	switch (f) {
	case F_BOOL:
		return c->n_bool_contents;
	case F_INT:
		return c->n_int_contents;
	case F_INT64:
		return c->n_int64_contents;
	case F_UINT:
		return c->n_uint_contents;
	case F_UINT64:
		return c->n_uint64_contents;
	case F_FP32:
		return c->n_fp32_contents;
	case F_FP64:
		return c->n_fp64_contents;
	case F_BYTES:
		return c->n_bytes_contents;
	default:
		return 0;
	}
}

/* Appends the typed contents of one input as its binary tensor bytes. */
static int contents_binary(const Inference__ModelInferRequest__InferInputTensor *t, int ti,
			   struct bt_buf *b, char *err, size_t errlen)
{
	const Inference__InferTensorContents *c = t->contents;
	enum field f = types[ti].field;
	unsigned size = types[ti].size;
	if (f == F_NONE)
		return fail(err, errlen,
			    "input '%.64s': %s tensors travel in raw_input_contents only", t->name,
			    types[ti].name);
	for (int g = F_BOOL; g < F_NONE; g++)
		if ((enum field)g != f && field_count(c, (enum field)g))
			return fail(err, errlen,
				    "input '%.64s': contents of another datatype than %s", t->name,
				    types[ti].name);
	for (size_t i = 0; i < field_count(c, f); i++) {
		long long v = 0;
		switch (f) {
		case F_BOOL:
			put_le(b, c->bool_contents[i] ? 1 : 0, 1);
			continue;
		case F_INT64:
			put_le(b, (uint64_t)c->int64_contents[i], 8);
			continue;
		case F_UINT64:
			put_le(b, c->uint64_contents[i], 8);
			continue;
		case F_FP32:
			bt_buf_append(b, &c->fp32_contents[i], 4);
			continue;
		case F_FP64:
			bt_buf_append(b, &c->fp64_contents[i], 8);
			continue;
		case F_BYTES:
			put_bytes(b, c->bytes_contents[i].data, c->bytes_contents[i].len);
			continue;
		case F_INT:
			v = c->int_contents[i];
			break;
		case F_UINT:
			v = c->uint_contents[i];
			break;
		default:
			break;
		}
		if (v < types[ti].min || v > types[ti].max)
			return fail(
			    err, errlen,
			    "input '%.64s': element %zu is %lld, outside the %s range [%lld, %lld]",
			    t->name, i, v, types[ti].name, types[ti].min, types[ti].max);
		put_le(b, (uint64_t)v, size);
	}
	return 0;
}

static json_t *shape_json(const int64_t *shape, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_integer((json_int_t)shape[i]));
	return a;
}

static int build_request(const Inference__ModelInferRequest *m, struct bt_grpc_infer *out,
			 char *err, size_t errlen)
{
	json_t *root = json_object(), *inputs = json_array(), *params = json_object();
	struct bt_buf tensors = BT_BUF_INIT;
	int r = -1;
	int raw = m->n_raw_input_contents > 0;
	size_t raw_bytes = 0;

	if (raw && m->n_raw_input_contents != m->n_inputs) {
		fail(err, errlen, "raw_input_contents has %zu entries for %zu inputs",
		     m->n_raw_input_contents, m->n_inputs);
		goto done;
	}
	if (m->id && *m->id && json_object_set_new(root, "id", jstr(m->id))) {
		fail(err, errlen, "the request id is not UTF-8");
		goto done;
	}
	if (params_json((struct param_entry **)m->parameters, m->n_parameters, params, NULL, NULL,
			err, errlen))
		goto done;
	/* Every output comes back binary: nothing to parse twice. */
	json_object_set_new(params, "binary_data_output", json_true());
	json_object_set_new(root, "parameters", params);
	params = NULL;
	for (size_t i = 0; i < m->n_inputs; i++) {
		const Inference__ModelInferRequest__InferInputTensor *t = m->inputs[i];
		json_t *in = json_object(), *ip = json_object();
		json_array_append_new(inputs, in);
		json_object_set_new(in, "parameters", ip);
		if (json_object_set_new(in, "name", jstr(t->name)) ||
		    json_object_set_new(in, "datatype", jstr(t->datatype))) {
			fail(err, errlen, "inputs[%zu]: its name or datatype is not UTF-8", i);
			goto done;
		}
		json_object_set_new(in, "shape", shape_json(t->shape, t->n_shape));
		if (params_json((struct param_entry **)t->parameters, t->n_parameters, ip, "input",
				t->name, err, errlen))
			goto done;
		/* Typed contents only: raw ones go straight to the body. */
		size_t before = tensors.len;
		size_t size = 0;
		if (raw) {
			if (t->contents) {
				fail(err, errlen,
				     "input '%.64s' has contents while raw_input_contents is used",
				     t->name);
				goto done;
			}
			size = m->raw_input_contents[i].len;
			raw_bytes += size;
		} else {
			int ti = type_find(t->datatype);
			if (!t->contents) {
				fail(err, errlen, "input '%.64s' has no contents", t->name);
				goto done;
			}
			/* An unknown datatype is left to the v2 checks, which name it. */
			if (ti >= 0 && contents_binary(t, ti, &tensors, err, errlen))
				goto done;
			size = tensors.len - before;
		}
		json_object_set_new(ip, "binary_data_size", json_integer((json_int_t)size));
	}
	json_object_set_new(root, "inputs", inputs);
	inputs = NULL;
	if (m->n_outputs) {
		json_t *outs = json_array();
		json_object_set_new(root, "outputs", outs);
		for (size_t i = 0; i < m->n_outputs; i++) {
			json_t *o = json_object(), *op = json_object();
			json_array_append_new(outs, o);
			json_object_set_new(o, "parameters", op);
			if (json_object_set_new(o, "name", jstr(m->outputs[i]->name))) {
				fail(err, errlen, "outputs[%zu]: its name is not UTF-8", i);
				goto done;
			}
			if (params_json((struct param_entry **)m->outputs[i]->parameters,
					m->outputs[i]->n_parameters, op, "output",
					m->outputs[i]->name, err, errlen))
				goto done;
			json_object_set_new(op, "binary_data", json_true());
		}
	}
	struct bt_buf body = BT_BUF_INIT;
	bt_buf_reserve(&body, 256 + tensors.len + raw_bytes);
	if (bt_json_append(&body, root)) {
		bt_buf_release(&body);
		fail(err, errlen, "the request header cannot be written as JSON");
		goto done;
	}
	out->header_len = body.len;
	out->binary = m->n_inputs > 0;
	bt_buf_append(&body, tensors.data, tensors.len);
	for (size_t i = 0; raw && i < m->n_inputs; i++)
		bt_buf_append(&body, m->raw_input_contents[i].data, m->raw_input_contents[i].len);
	out->body = bt_buf_detach(&body, &out->len);
	out->doc = root;
	root = NULL;
	r = 0;
done:
	json_decref(root);
	json_decref(inputs);
	json_decref(params);
	bt_buf_release(&tensors);
	return r;
}

/*
 * The last top-level string field `field` of a message that cannot be
 * unpacked (malloc'd), so that a stream's error answer still names the
 * request; NULL when the message cannot be walked or the string holds a NUL.
 */
static char *wire_string(const uint8_t *msg, size_t len, unsigned field)
{
	const uint8_t *p = msg, *end = msg + len, *found = NULL;
	uint64_t key, n, flen = 0;
	while (p < end) {
		if (get_varint(&p, end, &key))
			return NULL;
		switch (key & 7) {
		case 0:
			if (get_varint(&p, end, &n))
				return NULL;
			break;
		case 1:
		case 5:
			if (end - p < ((key & 7) == 1 ? 8 : 4))
				return NULL;
			p += (key & 7) == 1 ? 8 : 4;
			break;
		case 2:
			if (get_varint(&p, end, &n) || n > (uint64_t)(end - p))
				return NULL;
			if (key >> 3 == field) {
				found = p;
				flen = n;
			}
			p += n;
			break;
		default:
			return NULL;
		}
	}
	if (!found || memchr(found, 0, (size_t)flen))
		return NULL;
	return bt_strndup((const char *)found, (size_t)flen);
}

int bt_grpc_infer_decode(const uint8_t *msg, size_t len, struct bt_grpc_infer *out, char *err,
			 size_t errlen)
{
	memset(out, 0, sizeof(*out));
	/* model_name, model_version, id: a NUL inside would cut them short. */
	int nul = bt_grpc_string_has_nul(msg, len, 1u << 1 | 1u << 2 | 1u << 3);
	long long fields = 0;
	Inference__ModelInferRequest *m = NULL;
	if (nul > 0)
		fail(err, errlen, "model_name, model_version and id may not hold a NUL byte");
	else if (!nul && bt_grpc_fields_over(msg, len, 1, &fields))
		fail(err, errlen,
		     "the request has %lld tensors, dimensions, parameters and other fields; at "
		     "most %d are taken",
		     fields, BT_GRPC_MAX_FIELDS);
	else if (nul || fields < 0 || !(m = inference__model_infer_request__unpack(NULL, len, msg)))
		fail(err, errlen, "the message is not a ModelInferRequest");
	if (!m) {
		/* What a stream's error answer names, when it can be read. */
		out->model = wire_string(msg, len, 1);
		out->id = wire_string(msg, len, 3);
		return BT_GRPC_INVALID_ARGUMENT;
	}
	out->model = bt_strdup(m->model_name ? m->model_name : "");
	out->version = bt_strdup(m->model_version ? m->model_version : "");
	out->id = bt_strdup(m->id ? m->id : "");
	int r = build_request(m, out, err, errlen);
	inference__model_infer_request__free_unpacked(m, NULL);
	return r ? BT_GRPC_INVALID_ARGUMENT : 0;
}

void bt_grpc_infer_release(struct bt_grpc_infer *in)
{
	free(in->model);
	free(in->version);
	free(in->id);
	free(in->body);
	json_decref(in->doc);
	memset(in, 0, sizeof(*in));
}

/* ---- response: v2 JSON + binary to protobuf --------------------------------- */

struct resp {
	Inference__ModelInferResponse m;
	Inference__ModelInferResponse__InferOutputTensor *outs;
	Inference__ModelInferResponse__InferOutputTensor **outp;
	ProtobufCBinaryData *raw;
	struct bt_buf *converted; /* bytes of outputs the worker sent as JSON data */
	size_t nconverted;
	int borrowed_shapes; /* the outputs' shapes are not theirs to free */
	Inference__ModelInferResponse__ParametersEntry *pe;
	Inference__ModelInferResponse__ParametersEntry **pep;
	Inference__InferParameter *pv;
};

/*
 * Each output, shape dimension and parameter of an answer costs a hundred
 * bytes or more in the message and its checks, whatever it weighs in the
 * text, as in a request (BT_GRPC_MAX_FIELDS).
 */
#define ANSWER_FIELDS_OVER                                                                         \
	"the answer has %zu outputs, shape dimensions and parameters; at most %d are taken"

/* The arrays of n outputs and np parameters, in one zeroed block (at outs). */
static void resp_alloc(struct resp *r, size_t n, size_t np)
{
	/* Every element holds a pointer: the offsets below stay aligned. */
	size_t so = n * sizeof(*r->outs), sp = n * sizeof(*r->outp), sr = n * sizeof(*r->raw),
	       sc = n * sizeof(*r->converted), se = np * sizeof(*r->pe), sep = np * sizeof(*r->pep),
	       sv = np * sizeof(*r->pv);
	char *b = bt_calloc(1, so + sp + sr + sc + se + sep + sv + 1);
	r->outs = (void *)b;
	r->outp = (void *)(b += so);
	r->raw = (void *)(b += sp);
	r->converted = (void *)(b += sr);
	r->pe = (void *)(b += sc);
	r->pep = (void *)(b += se);
	r->pv = (void *)(b + sep);
	r->nconverted = n;
}

static int json_param(json_t *v, Inference__InferParameter *p)
{
	inference__infer_parameter__init(p);
	if (json_is_boolean(v)) {
		p->parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
		p->bool_param = json_is_true(v);
	} else if (json_is_integer(v)) {
		p->parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM;
		p->int64_param = json_integer_value(v);
	} else if (json_is_real(v)) {
		p->parameter_choice_case =
		    INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM;
		p->double_param = json_real_value(v);
	} else if (json_is_string(v)) {
		p->parameter_choice_case =
		    INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM;
		p->string_param = (char *)json_string_value(v);
	} else {
		return -1; /* objects, arrays, null: no InferParameter holds them */
	}
	return 0;
}

/*
 * Appends one element of an output's "data" in the datatype's layout, from
 * a loaded value or a scanned one (v2 answers of 64 KiB or more).
 */
static int element(struct bt_buf *b, int ti, const struct bt_jvalue *v)
{
	int is_int = v->type == BT_J_INTEGER, is_num = is_int || v->type == BT_J_REAL;

	switch (types[ti].field) {
	case F_BOOL:
		if (v->type != BT_J_TRUE && v->type != BT_J_FALSE)
			return -1;
		put_le(b, v->type == BT_J_TRUE, 1);
		return 0;
	case F_INT:
	case F_UINT:
		if (!is_int || v->integer < types[ti].min || v->integer > types[ti].max)
			return -1;
		put_le(b, (uint64_t)v->integer, types[ti].size);
		return 0;
	case F_INT64:
	case F_UINT64:
		if (!is_int || (types[ti].field == F_UINT64 && v->integer < 0))
			return -1;
		put_le(b, (uint64_t)v->integer, 8);
		return 0;
	case F_FP32: {
		if (!is_num)
			return -1;
		float f = (float)(is_int ? (double)v->integer : v->real);
		bt_buf_append(b, &f, 4);
		return 0;
	}
	case F_FP64: {
		if (!is_num)
			return -1;
		double d = is_int ? (double)v->integer : v->real;
		bt_buf_append(b, &d, 8);
		return 0;
	}
	case F_BYTES:
		if (v->type != BT_J_STRING)
			return -1;
		put_bytes(b, v->str, v->strlen);
		return 0;
	default:
		return -1;
	}
}

static int data_element(struct bt_buf *b, int ti, json_t *j)
{
	struct bt_jvalue v = {.type = BT_J_NULL};

	if (json_is_true(j))
		v.type = BT_J_TRUE;
	else if (json_is_false(j))
		v.type = BT_J_FALSE;
	else if (json_is_integer(j))
		v.type = BT_J_INTEGER, v.integer = json_integer_value(j);
	else if (json_is_real(j))
		v.type = BT_J_REAL, v.real = json_real_value(j);
	else if (json_is_string(j))
		v.type = BT_J_STRING, v.str = json_string_value(j), v.strlen = json_string_length(j);
	else if (json_is_object(j))
		v.type = BT_J_OBJECT;
	return element(b, ti, &v);
}

/* A scanned "data" array, converted as data_walk converts a loaded one. */
struct scanned {
	struct bt_buf *b;
	int ti;
};

static int scanned_element(void *ctx, const struct bt_jvalue *v)
{
	struct scanned *x = ctx;

	if (v->type == BT_J_ARRAY)
		return v->depth > 65 && !v->end ? -1 : 0; /* data_walk's 64 levels */
	return element(x->b, x->ti, v);
}

/* Flattens nested "data" arrays as the v2 JSON form allows. */
static int data_walk(struct bt_buf *b, int ti, json_t *v, int depth)
{
	if (!json_is_array(v))
		return data_element(b, ti, v);
	if (depth > 64)
		return -1;
	for (size_t i = 0; i < json_array_size(v); i++)
		if (data_walk(b, ti, json_array_get(v, i), depth + 1))
			return -1;
	return 0;
}

/* Where an answer's JSON ends (*jlen), when header_len is in range; no message yet. */
static int answer_start(const char **body, size_t len, long long header_len, size_t *jlen,
			uint8_t **out, size_t *outlen, char *err, size_t errlen)
{
	*out = NULL;
	*outlen = 0;
	if (header_len == 0 || header_len < -1 ||
	    (header_len > 0 && (unsigned long long)header_len > len))
		return fail(err, errlen,
			    "JSON header length %lld is out of range for a %zu-byte answer",
			    header_len, len);
	*jlen = header_len < 0 ? len : (size_t)header_len;
	/* An empty answer may come as NULL, which json_loadb calls "wrong arguments". */
	*body = *body ? *body : "";
	return 0;
}

/* The answer's message, once every binary byte (left unclaimed: none) has its output. */
static int resp_pack(struct resp *r, size_t n, size_t left, uint8_t **out, size_t *outlen,
		     char *err, size_t errlen)
{
	if (left)
		return fail(err, errlen, "the answer has %zu binary bytes that no output claims",
			    left);
	r->m.outputs = r->outp;
	r->m.n_raw_output_contents = n;
	r->m.raw_output_contents = r->raw;
	*outlen = inference__model_infer_response__get_packed_size(&r->m);
	*out = bt_malloc(*outlen);
	inference__model_infer_response__pack(&r->m, *out);
	return 0;
}

static void resp_release(struct resp *r)
{
	for (size_t i = 0; i < r->nconverted; i++)
		bt_buf_release(&r->converted[i]);
	if (r->outs && !r->borrowed_shapes)
		for (size_t i = 0; i < r->m.n_outputs; i++)
			free(r->outs[i].shape);
	free(r->outs);
}

int bt_grpc_response_encode_loaded(const char *body, size_t len, long long header_len,
				   const char *model, const char *id, uint8_t **out, size_t *outlen,
				   char *err, size_t errlen)
{
	struct resp r;
	json_error_t jerr;
	int rc = -1;
	memset(&r, 0, sizeof(r));
	size_t jlen = 0;
	if (answer_start(&body, len, header_len, &jlen, out, outlen, err, errlen))
		return -1;
	size_t off = jlen; /* where the next binary output starts */
	struct bt_jspans sp = {0};
	json_t *root;
	/*
	 * An answer's outputs in JSON form: their "data" arrays are converted
	 * from their text, never loaded (13 times their text as a tree).
	 */
	if (jlen < bt_v2_scan_min) {
		root = json_loadb(body, jlen, JSON_REJECT_DUPLICATES, &jerr);
	} else if (bt_jscan_find_data(body, jlen, BT_JSCAN_VALUES, "outputs", &sp, jerr.text,
				      sizeof(jerr.text))) {
		root = NULL;
	} else {
		root = bt_jscan_load_without_data(body, jlen, &sp, JSON_REJECT_DUPLICATES, &jerr);
	}
	if (!json_is_object(root)) {
		fail(err, errlen, "the answer is not a JSON object%s%s", root ? "" : ": ",
		     root ? "" : jerr.text);
		goto done;
	}
	json_t *outputs = json_object_get(root, "outputs");
	if (!json_is_array(outputs)) {
		fail(err, errlen, "the answer has no \"outputs\" array");
		goto done;
	}
	json_t *params = json_object_get(root, "parameters");
	size_t n = json_array_size(outputs), np = json_object_size(params), fields = n + np;
	for (size_t i = 0; i < n; i++)
		fields += json_array_size(json_object_get(json_array_get(outputs, i), "shape"));
	if (fields > BT_GRPC_MAX_FIELDS) {
		fail(err, errlen, ANSWER_FIELDS_OVER, fields, BT_GRPC_MAX_FIELDS);
		goto done;
	}
	inference__model_infer_response__init(&r.m);
	json_t *mn = json_object_get(root, "model_name"),
	       *mv = json_object_get(root, "model_version");
	json_t *jid = json_object_get(root, "id");
	r.m.model_name = (char *)(json_is_string(mn) ? json_string_value(mn) : model ? model : "");
	r.m.model_version = (char *)(json_is_string(mv) ? json_string_value(mv) : "1");
	r.m.id = (char *)(json_is_string(jid) ? json_string_value(jid) : id ? id : "");

	resp_alloc(&r, n, np);
	const char *key;
	json_t *val;
	if (np)
		json_object_foreach(params, key, val)
		{
			if (json_param(val, &r.pv[r.m.n_parameters]))
				continue;
			inference__model_infer_response__parameters_entry__init(
			    &r.pe[r.m.n_parameters]);
			r.pe[r.m.n_parameters].key = (char *)key;
			r.pe[r.m.n_parameters].value = &r.pv[r.m.n_parameters];
			r.pep[r.m.n_parameters] = &r.pe[r.m.n_parameters];
			r.m.n_parameters++;
		}
	r.m.parameters = r.pep;

	for (size_t i = 0; i < n; i++) {
		json_t *o = json_array_get(outputs, i);
		json_t *name = json_object_get(o, "name"), *dt = json_object_get(o, "datatype");
		json_t *shape = json_object_get(o, "shape"), *data = json_object_get(o, "data");
		json_t *bsize =
		    json_object_get(json_object_get(o, "parameters"), "binary_data_size");
		Inference__ModelInferResponse__InferOutputTensor *t = &r.outs[i];
		inference__model_infer_response__infer_output_tensor__init(t);
		r.outp[i] = t;
		r.m.n_outputs = i + 1;
		if (!json_is_string(name) || !json_is_string(dt) || !json_is_array(shape)) {
			fail(err, errlen,
			     "outputs[%zu] needs a string name and datatype and a shape array", i);
			goto done;
		}
		t->name = (char *)json_string_value(name);
		t->datatype = (char *)json_string_value(dt);
		t->n_shape = json_array_size(shape);
		t->shape = bt_calloc(t->n_shape, sizeof(*t->shape));
		for (size_t k = 0; k < t->n_shape; k++) {
			json_t *d = json_array_get(shape, k);
			if (!json_is_integer(d)) {
				fail(err, errlen, "output '%.64s': shape[%zu] is not an integer",
				     t->name, k);
				goto done;
			}
			t->shape[k] = json_integer_value(d);
		}
		if (bsize) {
			if (!json_is_integer(bsize) || json_integer_value(bsize) < 0 ||
			    (unsigned long long)json_integer_value(bsize) > len - off) {
				fail(err, errlen,
				     "output '%.64s': binary_data_size is not within the answer's "
				     "%zu binary bytes",
				     t->name, len - jlen);
				goto done;
			}
			r.raw[i].data = (uint8_t *)body + off;
			r.raw[i].len = (size_t)json_integer_value(bsize);
			off += r.raw[i].len;
		} else {
			int ti = type_find(t->datatype);
			struct scanned x = {&r.converted[i], ti};
			const struct bt_jspan *span = i < sp.n && sp.v[i].stop ? &sp.v[i] : NULL;
			if (ti < 0 || !data ||
			    (span ? bt_jscan_check(body + span->start, span->stop - span->start,
						   BT_JSCAN_VALUES, scanned_element, &x, NULL, 0)
				  : data_walk(&r.converted[i], ti, data, 0))) {
				fail(err, errlen,
				     "output '%.64s': its \"data\" is missing or not %s elements",
				     t->name, t->datatype);
				goto done;
			}
			r.raw[i].data = (uint8_t *)(r.converted[i].data ? r.converted[i].data : "");
			r.raw[i].len = r.converted[i].len;
		}
	}
	rc = resp_pack(&r, n, len - off, out, outlen, err, errlen);
done:
	resp_release(&r);
	json_decref(root);
	bt_jscan_spans_release(&sp);
	return rc;
}

/*
 * The same conversion from one scan of the answer's text, without a tree:
 * loading a 1 KiB answer as a jansson tree cost as much as all of baton's
 * HTTP/2 framing.  The scan keeps what the checks need of each output, in
 * the answer's order; the checks then run as the loaded conversion runs
 * them, so that both refuse the same answers with the same sentence.
 */
enum { TOP_OTHER, TOP_OUTPUTS, TOP_PARAMS };
enum { SUB_OTHER, SUB_SHAPE, SUB_DATA, SUB_PARAMS };

struct scanned_out {
	size_t name, datatype; /* 1 + offset in strs; 0: missing or not a string */
	int object, shape_array;
	size_t shape_at, n_shape; /* in dims */
	long long bad_dim;	  /* the first dimension that is not an integer, or -1 */
	int data;		  /* 0: none; 1: a scalar; 2: an array or object */
	struct bt_jvalue scalar;  /* a scalar "data" (its string: scalar_str) */
	size_t scalar_str;
	size_t data_start, data_stop;
	int has_bsize, bsize_int;
	long long bsize;
};

struct scanned_param {
	size_t key, str; /* 1 + offset in strs */
	enum bt_jtype type;
	long long integer;
	double real;
};

struct answer_scan {
	struct bt_buf strs, outs, dims, params;
	int object, outputs; /* outputs: 0 missing, 1 an array, -1 something else */
	size_t model_name, model_version, id;
	size_t fields; /* outputs, shape dimensions and parameters, kept or not */
	int top, sub;
};

/*
 * Past BT_GRPC_MAX_FIELDS the answer is refused: the scan goes on to find
 * a fault in the text, counting, and keeps nothing more (a 3-byte "{}"
 * output took 200 bytes of what the checks need).
 */
static int full(const struct answer_scan *a)
{
	return a->fields > BT_GRPC_MAX_FIELDS;
}

static size_t keep_str(struct answer_scan *a, const struct bt_jvalue *v)
{
	size_t at = a->strs.len;
	if (full(a))
		return 0;
	bt_buf_append(&a->strs, v->str, v->strlen + 1);
	return at + 1;
}

static const char *kept(const struct answer_scan *a, size_t at)
{
	return at ? a->strs.data + at - 1 : NULL;
}

static struct scanned_out *current_out(struct answer_scan *a)
{
	size_t n = a->outs.len / sizeof(struct scanned_out);
	return n ? (struct scanned_out *)a->outs.data + n - 1 : NULL;
}

/* Counts a member of the answer's parameters, and keeps it if it is a scalar. */
static void keep_param(struct answer_scan *a, const struct bt_jvalue *v)
{
	struct scanned_param p = {.type = v->type, .integer = v->integer, .real = v->real};
	a->fields++;
	if (full(a) || v->type == BT_J_OBJECT || v->type == BT_J_ARRAY || v->type == BT_J_NULL)
		return; /* no InferParameter holds them */
	p.key = keep_str(a, &(struct bt_jvalue){.str = v->key, .strlen = v->keylen});
	if (v->type == BT_J_STRING)
		p.str = keep_str(a, v);
	bt_buf_append(&a->params, &p, sizeof(p));
}

/* A member of an output object (depth 4) or of its shape or parameters (5). */
static void output_value(struct answer_scan *a, struct scanned_out *o, const struct bt_jvalue *v)
{
	int container = v->type == BT_J_OBJECT || v->type == BT_J_ARRAY;
	if (v->depth == 4 && v->end) {
		if (a->sub == SUB_DATA)
			o->data_stop = v->stop;
		a->sub = SUB_OTHER;
	} else if (v->depth == 4) {
		if (!strcmp(v->key, "name") && v->type == BT_J_STRING) {
			o->name = keep_str(a, v);
		} else if (!strcmp(v->key, "datatype") && v->type == BT_J_STRING) {
			o->datatype = keep_str(a, v);
		} else if (!strcmp(v->key, "shape")) {
			o->shape_array = v->type == BT_J_ARRAY;
			o->shape_at = a->dims.len / sizeof(int64_t);
			a->sub = o->shape_array ? SUB_SHAPE : SUB_OTHER;
		} else if (!strcmp(v->key, "data")) {
			o->data = container ? 2 : 1;
			o->data_start = v->start;
			o->scalar = *v;
			o->scalar_str = v->type == BT_J_STRING ? keep_str(a, v) : 0;
			a->sub = container ? SUB_DATA : SUB_OTHER;
		} else if (!strcmp(v->key, "parameters")) {
			a->sub = v->type == BT_J_OBJECT ? SUB_PARAMS : SUB_OTHER;
		} /* a member's container ends at depth 4, and puts sub back */
	} else if (v->depth == 5 && !v->end && a->sub == SUB_SHAPE) {
		if (++a->fields > BT_GRPC_MAX_FIELDS || o->bad_dim >= 0) {
			/* counted only */
		} else if (v->type != BT_J_INTEGER) {
			o->bad_dim = (long long)o->n_shape;
		} else {
			int64_t d = v->integer;
			bt_buf_append(&a->dims, &d, sizeof(d));
			o->n_shape++;
		}
	} else if (v->depth == 5 && !v->end && a->sub == SUB_PARAMS &&
		   !strcmp(v->key, "binary_data_size")) {
		o->has_bsize = 1;
		o->bsize_int = v->type == BT_J_INTEGER;
		o->bsize = v->integer;
	}
}

static int answer_value(void *ctx, const struct bt_jvalue *v)
{
	struct answer_scan *a = ctx;
	if (v->depth == 1) {
		a->object = v->type == BT_J_OBJECT;
	} else if (!a->object) {
		return 0; /* refused after the scan, which still looks for a fault */
	} else if (v->depth == 2 && v->end) {
		a->top = TOP_OTHER;
	} else if (v->depth == 2) {
		if (!strcmp(v->key, "outputs")) {
			a->outputs = v->type == BT_J_ARRAY ? 1 : -1;
			a->top = a->outputs > 0 ? TOP_OUTPUTS : TOP_OTHER;
		} else if (!strcmp(v->key, "parameters") && v->type == BT_J_OBJECT) {
			a->top = TOP_PARAMS;
		} else if (v->type == BT_J_STRING && !strcmp(v->key, "model_name")) {
			a->model_name = keep_str(a, v);
		} else if (v->type == BT_J_STRING && !strcmp(v->key, "model_version")) {
			a->model_version = keep_str(a, v);
		} else if (v->type == BT_J_STRING && !strcmp(v->key, "id")) {
			a->id = keep_str(a, v);
		}
	} else if (v->depth == 3 && !v->end && a->top == TOP_PARAMS) {
		keep_param(a, v);
	} else if (v->depth == 3 && !v->end && a->top == TOP_OUTPUTS) {
		struct scanned_out o = {.object = v->type == BT_J_OBJECT, .bad_dim = -1};
		a->fields++;
		if (full(a) && current_out(a))
			*current_out(a) = o; /* one slot serves the outputs that are only counted */
		else
			bt_buf_append(&a->outs, &o, sizeof(o));
		a->sub = SUB_OTHER;
	} else if (v->depth >= 4 && a->top == TOP_OUTPUTS && current_out(a)->object) {
		output_value(a, current_out(a), v);
	}
	return 0;
}

static void scanned_param_set(const struct answer_scan *a, const struct scanned_param *sp,
			      Inference__InferParameter *p)
{
	inference__infer_parameter__init(p);
	switch (sp->type) {
	case BT_J_TRUE:
	case BT_J_FALSE:
		p->parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_BOOL_PARAM;
		p->bool_param = sp->type == BT_J_TRUE;
		break;
	case BT_J_INTEGER:
		p->parameter_choice_case = INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_INT64_PARAM;
		p->int64_param = sp->integer;
		break;
	case BT_J_REAL:
		p->parameter_choice_case =
		    INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_DOUBLE_PARAM;
		p->double_param = sp->real;
		break;
	default:
		p->parameter_choice_case =
		    INFERENCE__INFER_PARAMETER__PARAMETER_CHOICE_STRING_PARAM;
		p->string_param = (char *)kept(a, sp->str);
	}
}

/* One output's bytes, from its binary part or its "data"; -1 with err set. */
static int output_bytes(const char *body, size_t len, size_t jlen, size_t *off,
			const struct answer_scan *a, struct scanned_out *o,
			Inference__ModelInferResponse__InferOutputTensor *t,
			ProtobufCBinaryData *raw, struct bt_buf *converted, char *err,
			size_t errlen)
{
	if (o->has_bsize) {
		if (!o->bsize_int || o->bsize < 0 || (unsigned long long)o->bsize > len - *off)
			return fail(err, errlen,
				    "output '%.64s': binary_data_size is not within the answer's "
				    "%zu binary bytes",
				    t->name, len - jlen);
		raw->data = (uint8_t *)body + *off;
		raw->len = (size_t)o->bsize;
		*off += raw->len;
		return 0;
	}
	int ti = type_find(t->datatype);
	struct scanned x = {converted, ti};
	if (o->data == 1 && o->scalar.type == BT_J_STRING)
		o->scalar.str = kept(a, o->scalar_str);
	if (ti < 0 || !o->data ||
	    (o->data == 1 ? element(converted, ti, &o->scalar)
			  : bt_jscan_check(body + o->data_start, o->data_stop - o->data_start,
					   BT_JSCAN_VALUES, scanned_element, &x, NULL, 0)))
		return fail(err, errlen,
			    "output '%.64s': its \"data\" is missing or not %s elements", t->name,
			    t->datatype);
	raw->data = (uint8_t *)(converted->data ? converted->data : "");
	raw->len = converted->len;
	return 0;
}

int bt_grpc_response_encode(const char *body, size_t len, long long header_len, const char *model,
			    const char *id, uint8_t **out, size_t *outlen, char *err, size_t errlen)
{
	struct resp r;
	struct answer_scan a;
	char why[JSON_ERROR_TEXT_LENGTH];
	int rc = -1;
	memset(&r, 0, sizeof(r));
	memset(&a, 0, sizeof(a));
	size_t jlen = 0;
	if (answer_start(&body, len, header_len, &jlen, out, outlen, err, errlen))
		return -1;
	size_t off = jlen; /* where the next binary output starts */
	if (bt_jscan_check(body, jlen, BT_JSCAN_VALUES, answer_value, &a, why, sizeof(why))) {
		/* jansson's own sentence, as the loaded conversion gives it. */
		json_error_t jerr;
		json_t *root = jlen < bt_v2_scan_min
				   ? json_loadb(body, jlen, JSON_REJECT_DUPLICATES, &jerr)
				   : NULL;
		fail(err, errlen, "the answer is not a JSON object: %s", root ? why : jerr.text);
		json_decref(root);
		goto done;
	}
	if (!a.object) {
		fail(err, errlen, "the answer is not a JSON object");
		goto done;
	}
	if (a.outputs <= 0) {
		fail(err, errlen, "the answer has no \"outputs\" array");
		goto done;
	}
	if (full(&a)) {
		fail(err, errlen, ANSWER_FIELDS_OVER, a.fields, BT_GRPC_MAX_FIELDS);
		goto done;
	}
	inference__model_infer_response__init(&r.m);
	r.m.model_name = (char *)(kept(&a, a.model_name) ?: model ? model : "");
	r.m.model_version = (char *)(kept(&a, a.model_version) ?: "1");
	r.m.id = (char *)(kept(&a, a.id) ?: id ? id : "");

	size_t np = a.params.len / sizeof(struct scanned_param);
	size_t n = a.outs.len / sizeof(struct scanned_out);
	resp_alloc(&r, n, np);
	r.borrowed_shapes = 1; /* in a.dims */
	for (size_t i = 0; i < np; i++) {
		const struct scanned_param *sp = (const struct scanned_param *)a.params.data + i;
		scanned_param_set(&a, sp, &r.pv[i]);
		inference__model_infer_response__parameters_entry__init(&r.pe[i]);
		r.pe[i].key = (char *)kept(&a, sp->key);
		r.pe[i].value = &r.pv[i];
		r.pep[i] = &r.pe[i];
	}
	r.m.n_parameters = np;
	r.m.parameters = r.pep;

	for (size_t i = 0; i < n; i++) {
		struct scanned_out *o = (struct scanned_out *)a.outs.data + i;
		Inference__ModelInferResponse__InferOutputTensor *t = &r.outs[i];
		inference__model_infer_response__infer_output_tensor__init(t);
		r.outp[i] = t;
		r.m.n_outputs = i + 1;
		if (!o->object || !o->name || !o->datatype || !o->shape_array) {
			fail(err, errlen,
			     "outputs[%zu] needs a string name and datatype and a shape array", i);
			goto done;
		}
		t->name = (char *)kept(&a, o->name);
		t->datatype = (char *)kept(&a, o->datatype);
		if (o->bad_dim >= 0) {
			fail(err, errlen, "output '%.64s': shape[%lld] is not an integer", t->name,
			     o->bad_dim);
			goto done;
		}
		t->n_shape = o->n_shape;
		t->shape = o->n_shape ? (int64_t *)a.dims.data + o->shape_at : NULL;
		if (output_bytes(body, len, jlen, &off, &a, o, t, &r.raw[i], &r.converted[i], err,
				 errlen))
			goto done;
	}
	rc = resp_pack(&r, n, len - off, out, outlen, err, errlen);
done:
	resp_release(&r);
	bt_buf_release(&a.strs);
	bt_buf_release(&a.outs);
	bt_buf_release(&a.dims);
	bt_buf_release(&a.params);
	return rc;
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
	size_t n = 0;
	do {
		p[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v);
	return n;
}

uint8_t *bt_grpc_stream_wrap(const uint8_t *resp, size_t resp_len, const char *error,
			     size_t *outlen)
{
	/* Field 1 (error_message) and 2 (infer_response), both length-delimited. */
	size_t elen = error ? strlen(error) : 0;
	uint8_t *out = bt_malloc(BT_GRPC_PREFIX + 22 + elen + resp_len);
	size_t o = BT_GRPC_PREFIX;
	if (elen) {
		out[o++] = 0x0a;
		o += put_varint(out + o, elen);
		memcpy(out + o, error, elen);
		o += elen;
	}
	out[o++] = 0x12;
	o += put_varint(out + o, resp_len);
	if (resp_len)
		memcpy(out + o, resp, resp_len);
	o += resp_len;
	bt_grpc_frame_prefix(out, o - BT_GRPC_PREFIX);
	*outlen = o;
	return out;
}

uint8_t *bt_grpc_response_stub(const char *model, const char *id, size_t *outlen)
{
	Inference__ModelInferResponse m = INFERENCE__MODEL_INFER_RESPONSE__INIT;
	m.model_name = (char *)(model ? model : "");
	m.model_version = "1";
	m.id = (char *)(id ? id : "");
	*outlen = inference__model_infer_response__get_packed_size(&m);
	uint8_t *out = bt_malloc(*outlen ? *outlen : 1);
	inference__model_infer_response__pack(&m, out);
	return out;
}
