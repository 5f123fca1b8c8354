/*
 * The gRPC server: TCP through libuv, HTTP/2 through nghttp2's callback
 * API fed from the read callback (no thread, no second loop), gRPC calls
 * as HTTP/2 streams.  A call's answer is queued on its stream and written
 * once per loop turn (bt_grpc_flush).  What a client may hold is bounded
 * like HTTP's: message size (max_request_bytes), concurrent streams,
 * header bytes, bytes buffered for all clients, output a client does not
 * read (write_timeout_s) and idle connections (idle_timeout_s).
 */
#include "grpc.h"

#include <arpa/inet.h>
#include <limits.h>
#include <nghttp2/nghttp2.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../common/common.h"
#include "../config/config.h"
#include "../http/v2.h"
#include "../sched/sched.h"
#include "inference.pb-c.h"

#ifndef BATON_VERSION
#define BATON_VERSION "0.0.0"
#endif

#define HEADERS_MAX   (32 * 1024)  /* request header bytes per call, as HTTP */
#define OUT_HIGH      (256 * 1024) /* bytes in socket writes before reading pauses */
#define STREAM_WINDOW (1 << 20)
#define CONN_WINDOW   (4 << 20)

enum method {
	M_SERVER_LIVE,
	M_SERVER_READY,
	M_MODEL_READY,
	M_SERVER_METADATA,
	M_MODEL_METADATA,
	M_MODEL_INFER,
	M_MODEL_STREAM_INFER,
	M_COUNT,
	M_UNKNOWN = M_COUNT,
};

static const char *const method_names[M_COUNT] = {
    "ServerLive",    "ServerReady", "ModelReady",	"ServerMetadata",
    "ModelMetadata", "ModelInfer",  "ModelStreamInfer",
};

#define CFG(g) (*(g)->cfgp)

#define SERVICE_PREFIX "/inference.GRPCInferenceService/"

struct bt_grpc {
	uv_loop_t *loop;
	struct bt_config *const *cfgp; /* the daemon's current config (a reload replaces it) */
	const struct bt_grpc_ops *ops;
	void *arg;
	uv_tcp_t listener;
	uv_timer_t sweep; /* idle connections and clients that do not read */
	int port;
	int closing, handles; /* handles still to be closed */
	struct gconn *conns;
	unsigned nconns;
	struct gconn *dirty; /* connections with output to send this loop turn */
	unsigned inflight;   /* pipeline requests not yet answered */
	size_t buffered;     /* messages being read and answers not yet sent */
	uint64_t counts[M_COUNT][BT_GRPC_STATUS_COUNT];
	uint64_t refused_conns;
	struct bt_buf obuf; /* frames gathered for one write (reused) */
	char rbuf[64 * 1024];
};

struct gconn {
	struct bt_grpc *g;
	uv_tcp_t tcp;
	nghttp2_session *s;
	struct gconn *next, *prev;
	struct gconn *dnext;
	int in_dirty;
	int closing;
	int reading;
	uint64_t lingering_ms; /* ended by a protocol error: draining input since */
	uv_shutdown_t shutdown;
	struct call *calls;
	unsigned ncalls;
	size_t writing;	     /* bytes handed to uv_write, not yet written */
	size_t out_pending;  /* answer bytes not yet taken by nghttp2 */
	uint64_t active_ms;  /* last request bytes in or answer bytes out */
	uint64_t stalled_ms; /* output waiting since, 0 = none */
};

struct job;

struct call {
	struct gconn *c;
	int32_t id;
	enum method method;
	struct call *next, *prev;
	size_t header_bytes;
	int post, grpc_ctype, authorized, bad_timeout;
	uint64_t timeout_us;  /* grpc-timeout, 0 = none */
	uint64_t deadline_ms; /* when it runs out, from the call's start; 0 = none */
	struct bt_buf in;     /* message bytes received, not yet decoded */
	size_t charged_in;
	int discard;	   /* answered already: further input is dropped */
	int half_closed;   /* the client ended its side */
	unsigned messages; /* decoded so far */
	int started;	   /* response headers submitted */
	int finished;	   /* final status decided */
	int status;
	char message[300];
	struct bt_buf out; /* framed messages not yet taken by nghttp2 */
	size_t out_off;
	struct job *jobs; /* pipeline requests in flight */
	unsigned inflight;
};

struct job {
	struct call *call; /* NULL once the call is gone */
	struct bt_request *req;
	struct bt_grpc *g;
	struct job *next, *prev;
};

/* ---- output ------------------------------------------------------------- */

static void conn_dirty(struct gconn *c)
{
	if (c->in_dirty || c->closing)
		return;
	c->in_dirty = 1;
	c->dnext = c->g->dirty;
	c->g->dirty = c;
	c->g->ops->wake(c->g->arg);
}

/* grpc-message is percent-encoded: printable ASCII but '%' goes as is. */
static void percent_encode(const char *in, char *out, size_t size)
{
	size_t o = 0;
	for (const unsigned char *p = (const unsigned char *)in; *p && o + 4 < size; p++) {
		if (*p >= 0x20 && *p <= 0x7e && *p != '%') {
			out[o++] = (char)*p;
		} else {
			snprintf(out + o, size - o, "%%%02X", *p);
			o += 3;
		}
	}
	out[o] = '\0';
}

#define NV(n, v)                                                                                   \
	{                                                                                          \
		(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE     \
	}

static ssize_t read_out_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
			   uint32_t *flags, nghttp2_data_source *src, void *user)
{
	struct call *call = src->ptr;
	struct gconn *c = user;
	size_t avail = call->out.len - call->out_off;
	if (avail) {
		size_t n = BT_MIN(avail, length);
		memcpy(buf, call->out.data + call->out_off, n);
		call->out_off += n;
		c->out_pending -= n;
		c->g->buffered -= n;
		c->stalled_ms = 0; /* the client takes its answers */
		c->active_ms = bt_now_ms();
		if (call->out_off == call->out.len) {
			call->out.len = 0;
			call->out_off = 0;
		}
		return (ssize_t)n;
	}
	if (!call->finished)
		return NGHTTP2_ERR_DEFERRED;
	char status[12], msg[sizeof(call->message) * 3];
	snprintf(status, sizeof(status), "%d", call->status);
	percent_encode(call->message, msg, sizeof(msg));
	nghttp2_nv trailers[] = {NV("grpc-status", status), NV("grpc-message", msg)};
	*flags |= NGHTTP2_DATA_FLAG_EOF;
	if (nghttp2_submit_trailer(s, id, trailers, call->message[0] ? 2 : 1) == 0)
		*flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
	return 0;
}

/* Response headers with the data provider: messages and trailers follow. */
static void start_response(struct call *call)
{
	if (call->started)
		return;
	call->started = 1;
	nghttp2_nv hdrs[] = {NV(":status", "200"), NV("content-type", "application/grpc"),
			     NV("grpc-accept-encoding", "identity")};
	nghttp2_data_provider dp = {.source.ptr = call, .read_callback = read_out_cb};
	nghttp2_submit_response(call->c->s, call->id, hdrs, BT_ARRAY_SIZE(hdrs), &dp);
}

static void count(struct call *call, int status)
{
	if (call->method < M_COUNT && status >= 0 && status < BT_GRPC_STATUS_COUNT)
		call->c->g->counts[call->method][status]++;
}

/*
 * The call's final status.  Before any response it is a trailers-only
 * answer; input still arriving is cut with RST_STREAM(NO_ERROR), as gRPC
 * servers do once they have answered.
 */
static void finish(struct call *call, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void finish(struct call *call, int status, const char *fmt, ...)
{
	struct gconn *c = call->c;
	if (call->finished)
		return;
	call->finished = 1;
	call->discard = 1;
	call->status = status;
	call->message[0] = '\0';
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(call->message, sizeof(call->message), fmt, ap);
		va_end(ap);
		/* The cut (and a name cut with %.64s) may split a character. */
		bt_utf8_clean(call->message);
	}
	if (call->method != M_MODEL_STREAM_INFER || status != BT_GRPC_OK)
		count(call, status);
	if (call->started) {
		nghttp2_session_resume_data(c->s, call->id);
	} else {
		char st[12], msg[sizeof(call->message) * 3];
		snprintf(st, sizeof(st), "%d", status);
		percent_encode(call->message, msg, sizeof(msg));
		nghttp2_nv hdrs[] = {NV(":status", "200"), NV("content-type", "application/grpc"),
				     NV("grpc-status", st), NV("grpc-message", msg)};
		call->started = 1;
		nghttp2_submit_response(c->s, call->id, hdrs, call->message[0] ? 4 : 3, NULL);
	}
	conn_dirty(c);
}

/* Queues one framed message (prefix included) on the call's stream. */
static void send_message(struct call *call, uint8_t *framed, size_t len)
{
	struct gconn *c = call->c;
	bt_buf_append(&call->out, framed, len);
	c->out_pending += len;
	c->g->buffered += len;
	start_response(call);
	nghttp2_session_resume_data(c->s, call->id);
	conn_dirty(c);
}

/* Packs a protobuf-c message as the call's one answer, then status OK. */
static void answer(struct call *call, const ProtobufCMessage *m)
{
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = bt_malloc(BT_GRPC_PREFIX + n);
	bt_grpc_frame_prefix(buf, n);
	protobuf_c_message_pack(m, buf + BT_GRPC_PREFIX);
	send_message(call, buf, BT_GRPC_PREFIX + n);
	free(buf);
	finish(call, BT_GRPC_OK, NULL);
}

/* ---- pipeline requests ---------------------------------------------------- */

/*
 * Triton's mapping of failures to gRPC codes: the client's fault is
 * INVALID_ARGUMENT, a missing model NOT_FOUND, a full or stopping server
 * UNAVAILABLE, a queue deadline DEADLINE_EXCEEDED, the model's own
 * failure INTERNAL.
 */
static int status_of(enum bt_code code)
{
	switch (code) {
	case BT_OK:
		return BT_GRPC_OK;
	case BT_BAD_REQUEST:
		return BT_GRPC_INVALID_ARGUMENT;
	case BT_NOT_FOUND:
		return BT_GRPC_NOT_FOUND;
	case BT_REJECTED:
		return BT_GRPC_INVALID_ARGUMENT;
	case BT_TIMEOUT:
		return BT_GRPC_DEADLINE_EXCEEDED;
	case BT_OVERLOADED:
	case BT_STAGE_FAILED:
	case BT_SHUTTING_DOWN:
		return BT_GRPC_UNAVAILABLE;
	case BT_CANCELLED:
		return BT_GRPC_CANCELLED;
	case BT_WORKER_ERROR:
	case BT_WORKER_CRASHED:
	default:
		return BT_GRPC_INTERNAL;
	}
}

static void job_unlink(struct job *j)
{
	struct call *call = j->call;
	if (!call)
		return;
	if (j->prev)
		j->prev->next = j->next;
	else
		call->jobs = j->next;
	if (j->next)
		j->next->prev = j->prev;
	call->inflight--;
	j->call = NULL;
}

/* A stream whose client is done and whose answers are all sent ends OK. */
static void maybe_end_stream(struct call *call)
{
	if (call->method == M_MODEL_STREAM_INFER && call->half_closed && !call->inflight)
		finish(call, BT_GRPC_OK, NULL);
}

static void request_done_cb(struct bt_request *req, void *arg)
{
	struct job *j = arg;
	struct call *call = j->call;
	if (call)
		job_unlink(j);
	/* A call already ended (a later message was refused) takes nothing more. */
	if (call && !call->finished) {
		int st = status_of(req->code);
		if (call->method == M_MODEL_STREAM_INFER) {
			size_t n;
			uint8_t *m;
			char msg[600];
			count(call, st);
			if (req->code == BT_OK) {
				m = bt_grpc_stream_wrap((uint8_t *)req->payload, req->len, NULL,
							&n);
			} else {
				/*
				 * As Triton, a stream's failed request is answered in
				 * error_message; its id comes along to match it.
				 */
				size_t sl;
				uint8_t *stub = bt_grpc_response_stub(req->pipeline->cfg->name,
								      req->check_data, &sl);
				snprintf(msg, sizeof(msg), "%s: %s", bt_code_name(req->code),
					 req->error ? req->error : "");
				/* Cut short, it may end inside a character. */
				m = bt_grpc_stream_wrap(stub, sl, bt_utf8_clean(msg), &n);
				free(stub);
			}
			send_message(call, m, n);
			free(m);
			maybe_end_stream(call);
		} else if (req->code == BT_OK) {
			uint8_t prefix[BT_GRPC_PREFIX];
			bt_grpc_frame_prefix(prefix, req->len);
			bt_buf_reserve(&call->out, BT_GRPC_PREFIX + req->len);
			bt_buf_append(&call->out, prefix, BT_GRPC_PREFIX);
			send_message(call, (uint8_t *)req->payload, req->len);
			call->c->out_pending += BT_GRPC_PREFIX;
			call->c->g->buffered += BT_GRPC_PREFIX;
			finish(call, BT_GRPC_OK, NULL);
		} else {
			finish(call, st, "%s: %s", bt_code_name(req->code),
			       req->error ? req->error : "");
		}
	}
	bt_request_free(req);
	j->g->inflight--;
	j->g->ops->progress(j->g->arg);
	free(j);
}

/*
 * The last stage's v2 answer becomes the ModelInferResponse here, before
 * the request counts as succeeded: an answer that is not a v2 response
 * fails it as worker_error, in the metrics as in the status (INTERNAL).
 */
static int response_check(struct bt_request *req, char *err, size_t errlen)
{
	json_t *jhl = json_object_get(req->meta, "v2_header_length");
	long long hl = json_is_integer(jhl) ? json_integer_value(jhl) : -1;
	uint8_t *msg;
	size_t len;
	char why[256];
	if (bt_grpc_response_encode(req->payload, req->len, hl, req->pipeline->cfg->name,
				    req->check_data, &msg, &len, why, sizeof(why))) {
		snprintf(err, errlen, "the pipeline's last stage did not answer a v2 response: %s",
			 why);
		return 1;
	}
	/* The worker's answer may be a mapped memfd (docs/protocol.md). */
	bt_payload_free(req->payload, req->len, req->payload_fd);
	req->payload = (char *)msg;
	req->len = len;
	req->payload_fd = -1;
	return 0;
}

/* One ModelInferRequest of the call: checked, then submitted. */
static void infer(struct call *call, const uint8_t *msg, size_t len)
{
	struct bt_grpc *g = call->c->g;
	struct bt_grpc_infer in;
	struct bt_v2_request v2;
	char err[512];
	int stream = call->method == M_MODEL_STREAM_INFER;
	int st = bt_grpc_infer_decode(msg, len, &in, err, sizeof(err));
	struct bt_pipeline *pl = NULL;
	if (!st) {
		pl = g->ops->pipeline(g->arg, in.model);
		if (!pl) {
			st = BT_GRPC_NOT_FOUND;
			snprintf(err, sizeof(err),
				 "unknown model '%.100s' (models are baton's pipelines)", in.model);
		} else if (in.version[0] && strcmp(in.version, "1")) {
			st = BT_GRPC_NOT_FOUND;
			snprintf(err, sizeof(err),
				 "model '%.100s' has no version '%.64s' (only '1')", in.model,
				 in.version);
		}
	}
	/* The header is checked as the tree it was built as, not reloaded from its text. */
	if (!st && bt_v2_check_infer(in.doc, in.body, in.len,
				     in.binary ? (long long)in.header_len : -1, &v2, err, sizeof(err)))
		st = BT_GRPC_INVALID_ARGUMENT;
	if (st) {
		if (!stream) {
			finish(call, st, "%s", err);
		} else {
			/*
			 * As a worker's failure: "code: sentence", with the request's
			 * id; both are protobuf strings, which must be UTF-8 or the
			 * client cannot read the stream (a refused id may be none).
			 */
			size_t n, sl;
			char msg[sizeof(err) + 32];
			uint8_t *stub =
			    bt_grpc_response_stub(in.model ? bt_utf8_clean(in.model) : NULL,
						  in.id ? bt_utf8_clean(in.id) : NULL, &sl);
			snprintf(msg, sizeof(msg), "%s: %s", bt_code_name(BT_BAD_REQUEST), err);
			uint8_t *m = bt_grpc_stream_wrap(stub, sl, bt_utf8_clean(msg), &n);
			free(stub);
			count(call, st);
			send_message(call, m, n);
			free(m);
		}
		bt_grpc_infer_release(&in);
		return;
	}
	json_t *meta = bt_v2_meta(&v2, pl->cfg->name);
	struct bt_request *req = bt_request_new(pl, in.body, in.len, meta);
	in.body = NULL; /* the request's now */
	bt_grpc_infer_release(&in);
	req->priority = bt_v2_priority_level(v2.has_priority ? v2.priority : 0);
	req->check = response_check;
	req->check_data = v2.id;
	v2.id = NULL;
	/*
	 * The sooner of the call's deadline (grpc-timeout counts from the
	 * call's start, for every request of a stream) and parameters.timeout;
	 * past a day means a day.
	 */
	long long timeout_us = v2.has_timeout ? v2.timeout_us : 0;
	bt_v2_request_release(&v2);
	if (call->deadline_ms) {
		uint64_t now = bt_now_ms();
		long long left =
		    call->deadline_ms > now ? (long long)(call->deadline_ms - now) * 1000 : 1;
		if (!timeout_us || left < timeout_us)
			timeout_us = left;
	}
	if (timeout_us > 0)
		req->client_deadline_ms =
		    bt_now_ms() +
		    (uint64_t)((BT_MIN(timeout_us, BT_V2_TIMEOUT_MAX_US) + 999) / 1000);
	struct job *j = bt_calloc(1, sizeof(*j));
	j->call = call;
	j->req = req;
	j->g = g;
	j->next = call->jobs;
	if (call->jobs)
		call->jobs->prev = j;
	call->jobs = j;
	call->inflight++;
	g->inflight++;
	if (stream)
		start_response(call);
	bt_pipeline_submit(req, request_done_cb, j);
}

/* ---- the other RPCs -------------------------------------------------------- */

static void metadata_tensors(json_t *list, Inference__ModelMetadataResponse__TensorMetadata ***out,
			     size_t *n, Inference__ModelMetadataResponse__TensorMetadata **store)
{
	size_t k = json_array_size(list);
	*store = bt_calloc(k, sizeof(**store));
	*out = bt_calloc(k, sizeof(**out));
	*n = k;
	for (size_t i = 0; i < k; i++) {
		json_t *t = json_array_get(list, i), *shape = json_object_get(t, "shape");
		Inference__ModelMetadataResponse__TensorMetadata *m = &(*store)[i];
		inference__model_metadata_response__tensor_metadata__init(m);
		m->name = (char *)(json_string_value(json_object_get(t, "name")) ?: "");
		m->datatype = (char *)(json_string_value(json_object_get(t, "datatype")) ?: "");
		m->n_shape = json_array_size(shape);
		m->shape = bt_calloc(m->n_shape, sizeof(*m->shape));
		for (size_t d = 0; d < m->n_shape; d++)
			m->shape[d] = json_integer_value(json_array_get(shape, d));
		(*out)[i] = m;
	}
}

static void free_tensors(Inference__ModelMetadataResponse__TensorMetadata **p,
			 Inference__ModelMetadataResponse__TensorMetadata *store, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(store[i].shape);
	free(store);
	free(p);
}

/* A model named in a request: found, and of version "" or "1", or answered. */
static struct bt_pipeline *model(struct call *call, const char *name, const char *version)
{
	struct bt_grpc *g = call->c->g;
	struct bt_pipeline *pl = g->ops->pipeline(g->arg, name ? name : "");
	if (!pl)
		finish(call, BT_GRPC_NOT_FOUND,
		       "unknown model '%.100s' (models are baton's pipelines)", name ? name : "");
	else if (version && version[0] && strcmp(version, "1")) {
		finish(call, BT_GRPC_NOT_FOUND, "model '%.100s' has no version '%.64s' (only '1')",
		       name, version);
		pl = NULL;
	}
	return pl;
}

/* A message protobuf-c would unpack into more than BT_GRPC_MAX_FIELDS fields. */
static int fields_over(const uint8_t *msg, size_t len)
{
	long long n;
	return bt_grpc_fields_over(msg, len, 0, &n);
}

static void simple_rpc(struct call *call, const uint8_t *msg, size_t len)
{
	struct bt_grpc *g = call->c->g;
	switch (call->method) {
	case M_SERVER_LIVE: {
		Inference__ServerLiveResponse r = INFERENCE__SERVER_LIVE_RESPONSE__INIT;
		r.live = 1;
		answer(call, &r.base);
		return;
	}
	case M_SERVER_READY: {
		Inference__ServerReadyResponse r = INFERENCE__SERVER_READY_RESPONSE__INIT;
		r.ready = g->ops->server_ready(g->arg) != 0;
		answer(call, &r.base);
		return;
	}
	case M_SERVER_METADATA: {
		Inference__ServerMetadataResponse r = INFERENCE__SERVER_METADATA_RESPONSE__INIT;
		char *ext[] = {"binary_tensor_data"};
		r.name = "baton";
		r.version = BATON_VERSION;
		r.n_extensions = 1;
		r.extensions = ext;
		answer(call, &r.base);
		return;
	}
	case M_MODEL_READY: {
		Inference__ModelReadyRequest *q =
		    bt_grpc_string_has_nul(msg, len, 1u << 1 | 1u << 2) || fields_over(msg, len)
			? NULL
			: inference__model_ready_request__unpack(NULL, len, msg);
		if (!q) {
			finish(call, BT_GRPC_INVALID_ARGUMENT,
			       "the message is not a ModelReadyRequest");
			return;
		}
		struct bt_pipeline *pl = model(call, q->name, q->version);
		if (pl) {
			Inference__ModelReadyResponse r = INFERENCE__MODEL_READY_RESPONSE__INIT;
			r.ready = g->ops->model_ready(g->arg, pl) != 0;
			answer(call, &r.base);
		}
		inference__model_ready_request__free_unpacked(q, NULL);
		return;
	}
	case M_MODEL_METADATA: {
		Inference__ModelMetadataRequest *q =
		    bt_grpc_string_has_nul(msg, len, 1u << 1 | 1u << 2) || fields_over(msg, len)
			? NULL
			: inference__model_metadata_request__unpack(NULL, len, msg);
		if (!q) {
			finish(call, BT_GRPC_INVALID_ARGUMENT,
			       "the message is not a ModelMetadataRequest");
			return;
		}
		struct bt_pipeline *pl = model(call, q->name, q->version);
		if (pl) {
			Inference__ModelMetadataResponse r =
			    INFERENCE__MODEL_METADATA_RESPONSE__INIT;
			Inference__ModelMetadataResponse__TensorMetadata *si, *so;
			char *versions[] = {"1"};
			r.name = (char *)pl->cfg->name;
			r.n_versions = 1;
			r.versions = versions;
			r.platform = "baton";
			metadata_tensors(pl->cfg->io_inputs, &r.inputs, &r.n_inputs, &si);
			metadata_tensors(pl->cfg->io_outputs, &r.outputs, &r.n_outputs, &so);
			answer(call, &r.base);
			free_tensors(r.inputs, si, r.n_inputs);
			free_tensors(r.outputs, so, r.n_outputs);
		}
		inference__model_metadata_request__free_unpacked(q, NULL);
		return;
	}
	default:
		return;
	}
}

/* ---- calls ------------------------------------------------------------------ */

static void uncharge_in(struct call *call)
{
	call->c->g->buffered -= call->charged_in;
	call->charged_in = 0;
}

/* The request's headers are complete: may it run? */
static void headers_done(struct call *call)
{
	struct bt_grpc *g = call->c->g;
	if (call->method == M_UNKNOWN) {
		finish(call, BT_GRPC_UNIMPLEMENTED, "no such method (baton serves %s*)",
		       SERVICE_PREFIX);
		return;
	}
	if (!call->post || !call->grpc_ctype) {
		finish(call, BT_GRPC_INVALID_ARGUMENT,
		       "a gRPC call is a POST with content-type application/grpc");
		return;
	}
	if (!call->authorized && CFG(g)->auth_token && call->method != M_SERVER_LIVE &&
	    call->method != M_SERVER_READY) {
		finish(call, BT_GRPC_UNAUTHENTICATED,
		       "this baton requires the metadata authorization: Bearer <token>");
		return;
	}
	if (call->bad_timeout)
		finish(call, BT_GRPC_INVALID_ARGUMENT,
		       "grpc-timeout is not <1-8 digits><H|M|S|m|u|n>");
	else if (call->timeout_us)
		call->deadline_ms =
		    bt_now_ms() +
		    (BT_MIN(call->timeout_us, (uint64_t)BT_V2_TIMEOUT_MAX_US) + 999) / 1000;
}

/* Takes the whole messages at the start of buf; returns the bytes they held. */
static size_t take_messages(struct call *call, const uint8_t *buf, size_t len)
{
	struct bt_grpc *g = call->c->g;
	size_t max = CFG(g)->max_request_bytes, n, off = 0;
	int r;
	while (!call->discard && (r = bt_grpc_frame_next(buf + off, len - off, max, &n))) {
		if (r == -1) {
			finish(call, BT_GRPC_RESOURCE_EXHAUSTED,
			       "a message of %zu bytes is over max_request_bytes (%zu)", n, max);
			break;
		}
		if (r == -2) {
			finish(call, BT_GRPC_UNIMPLEMENTED,
			       "compressed messages are not supported (grpc-accept-encoding: "
			       "identity)");
			break;
		}
		const uint8_t *msg = buf + off + BT_GRPC_PREFIX;
		off += BT_GRPC_PREFIX + n;
		call->messages++;
		if (call->method == M_MODEL_STREAM_INFER) {
			/* A stream may not queue without bound: past the cap, it ends. */
			if (call->inflight >= CFG(g)->grpc_max_streams) {
				finish(call, BT_GRPC_RESOURCE_EXHAUSTED,
				       "over %u requests in flight on one stream",
				       CFG(g)->grpc_max_streams);
				break;
			}
			infer(call, msg, n);
		} else if (call->messages > 1) {
			finish(call, BT_GRPC_INVALID_ARGUMENT, "a unary call carries one message");
		} else if (call->method == M_MODEL_INFER) {
			infer(call, msg, n);
		} else {
			simple_rpc(call, msg, n);
		}
	}
	return off;
}

/* Takes every whole message out of call->in. */
static void messages(struct call *call)
{
	size_t off = take_messages(call, (uint8_t *)call->in.data, call->in.len);
	if (call->discard) {
		bt_buf_release(&call->in);
		uncharge_in(call);
		return;
	}
	bt_buf_consume(&call->in, off);
	call->c->g->buffered -= BT_MIN(off, call->charged_in);
	call->charged_in -= BT_MIN(off, call->charged_in);
}

static void input_ended(struct call *call)
{
	call->half_closed = 1;
	if (call->discard)
		return;
	if (call->in.len)
		finish(call, BT_GRPC_INVALID_ARGUMENT, "the call ended inside a message");
	else if (call->method == M_MODEL_STREAM_INFER)
		maybe_end_stream(call);
	else if (call->messages == 0)
		finish(call, BT_GRPC_INVALID_ARGUMENT, "a unary call carries one message");
}

static void call_free(struct call *call)
{
	struct gconn *c = call->c;
	struct bt_grpc *g = c->g;
	/*
	 * The client is gone: what still waits in a queue is cancelled (its
	 * done callback, with no call left, only frees it); what runs, runs
	 * on and frees itself.
	 */
	while (call->jobs) {
		struct bt_request *req = call->jobs->req;
		job_unlink(call->jobs);
		bt_request_cancel(req);
	}
	uncharge_in(call);
	bt_buf_release(&call->in);
	size_t unsent = call->out.len - call->out_off;
	c->out_pending -= unsent;
	g->buffered -= unsent;
	bt_buf_release(&call->out);
	if (call->prev)
		call->prev->next = call->next;
	else
		c->calls = call->next;
	if (call->next)
		call->next->prev = call->prev;
	c->ncalls--;
	c->active_ms = bt_now_ms();
	free(call);
}

/* ---- nghttp2 callbacks -------------------------------------------------------- */

static int begin_headers_cb(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
	struct gconn *c = user;
	if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	struct call *call = bt_calloc(1, sizeof(*call));
	call->c = c;
	call->id = f->hd.stream_id;
	call->method = M_UNKNOWN;
	call->next = c->calls;
	if (c->calls)
		c->calls->prev = call;
	c->calls = call;
	c->ncalls++;
	c->active_ms = bt_now_ms();
	nghttp2_session_set_stream_user_data(s, f->hd.stream_id, call);
	return 0;
}

static int authorized(const char *token, const uint8_t *v, size_t n)
{
	/* RFC 7235: the scheme is case-insensitive, then one or more spaces. */
	if (n < 7 || strncasecmp((const char *)v, "Bearer", 6) || v[6] != ' ')
		return 0;
	size_t i = 6;
	while (i < n && v[i] == ' ')
		i++;
	return bt_secure_equal((const char *)v + i, n - i, token, strlen(token));
}

static int header_cb(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
		     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
		     void *user)
{
	struct gconn *c = user;
	(void)flags;
	if (f->hd.type != NGHTTP2_HEADERS)
		return 0;
	struct call *call = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
	if (!call)
		return 0;
	call->header_bytes += namelen + valuelen + 32;
	if (call->header_bytes > HEADERS_MAX)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* the stream is reset */
	if (f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0; /* request trailers: nothing in them matters */
#define IS(lit) (namelen == sizeof(lit) - 1 && !memcmp(name, lit, namelen))
	if (IS(":method")) {
		call->post = valuelen == 4 && !memcmp(value, "POST", 4);
	} else if (IS(":path")) {
		size_t pl = sizeof(SERVICE_PREFIX) - 1;
		if (valuelen > pl && !memcmp(value, SERVICE_PREFIX, pl))
			for (int m = 0; m < M_COUNT; m++)
				if (valuelen - pl == strlen(method_names[m]) &&
				    !memcmp(value + pl, method_names[m], valuelen - pl))
					call->method = (enum method)m;
	} else if (IS("content-type")) {
		/* application/grpc, optionally +proto or ;params */
		call->grpc_ctype = valuelen >= 16 && !memcmp(value, "application/grpc", 16) &&
				   (valuelen == 16 || value[16] == '+' || value[16] == ';');
	} else if (IS("authorization")) {
		const char *token = CFG(c->g)->auth_token;
		call->authorized = token && authorized(token, value, valuelen);
	} else if (IS("grpc-timeout")) {
		char v[16];
		if (valuelen >= sizeof(v)) {
			call->bad_timeout = 1;
		} else {
			memcpy(v, value, valuelen);
			v[valuelen] = '\0';
			call->bad_timeout = bt_grpc_timeout_parse(v, &call->timeout_us) != 0;
		}
	} else if (IS("grpc-encoding")) {
		/* identity is all baton takes; a compressed message is refused on arrival. */
	}
#undef IS
	return 0;
}

static int data_chunk_cb(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
			 size_t len, void *user)
{
	struct gconn *c = user;
	struct bt_grpc *g = c->g;
	(void)flags;
	struct call *call = nghttp2_session_get_stream_user_data(s, id);
	if (!call || call->discard)
		return 0;
	c->active_ms = bt_now_ms();
	if (g->buffered + len > CFG(g)->http_max_buffered_bytes) {
		finish(call, BT_GRPC_UNAVAILABLE,
		       "baton holds %zu bytes for clients, at its http.max_buffered_bytes (%zu): "
		       "try again later",
		       g->buffered, CFG(g)->http_max_buffered_bytes);
		return 0;
	}
	if (!call->in.len) {
		/* Whole messages are decoded where nghttp2 holds them, never copied. */
		size_t used = take_messages(call, data, len);
		if (call->discard || used == len)
			return 0;
		data += used;
		len -= used;
	}
	bt_buf_append(&call->in, data, len);
	call->charged_in += len;
	g->buffered += len;
	messages(call);
	return 0;
}

static int frame_recv_cb(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
	(void)user;
	if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
		return 0;
	struct call *call = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
	if (!call)
		return 0;
	if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST)
		headers_done(call);
	if (f->hd.flags & NGHTTP2_FLAG_END_STREAM)
		input_ended(call);
	return 0;
}

/*
 * Once the answer has gone, a client still sending is stopped with
 * RST_STREAM(NO_ERROR), as gRPC servers do; sent earlier, the reset could
 * overtake the answer and the client would see INTERNAL instead.
 */
static int frame_send_cb(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
	(void)user;
	if (f->hd.type != NGHTTP2_HEADERS || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
		return 0;
	struct call *call = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
	if (call && !call->half_closed)
		nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, call->id, NGHTTP2_NO_ERROR);
	return 0;
}

static int stream_close_cb(nghttp2_session *s, int32_t id, uint32_t code, void *user)
{
	(void)code;
	(void)user;
	struct call *call = nghttp2_session_get_stream_user_data(s, id);
	if (call) {
		if (!call->finished)
			count(call, BT_GRPC_CANCELLED);
		call_free(call);
	}
	return 0;
}

/* ---- connections ---------------------------------------------------------- */

static void conn_closed_cb(uv_handle_t *h)
{
	struct gconn *c = h->data;
	free(c);
}

static void conn_close(struct gconn *c)
{
	struct bt_grpc *g = c->g;
	if (c->closing)
		return;
	c->closing = 1;
	for (struct gconn **p = &g->dirty; *p; p = &(*p)->dnext)
		if (*p == c) {
			*p = c->dnext;
			break;
		}
	while (c->calls) {
		if (!c->calls->finished)
			count(c->calls, BT_GRPC_CANCELLED);
		call_free(c->calls);
	}
	nghttp2_session_del(c->s);
	c->s = NULL;
	if (c->prev)
		c->prev->next = c->next;
	else
		g->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	g->nconns--;
	uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
}

struct wreq {
	uv_write_t w;
	struct gconn *c;
	size_t len;
	char data[];
};

static void conn_send(struct gconn *c);
static void start_reading(struct gconn *c);
static void linger(struct gconn *c);

static void write_done(uv_write_t *w, int status)
{
	struct wreq *r = (struct wreq *)w;
	struct gconn *c = r->c;
	size_t len = r->len;
	free(r);
	if (c->closing)
		return;
	c->writing -= len;
	if (status < 0) {
		conn_close(c);
		return;
	}
	if (!c->out_pending && !c->writing) {
		c->stalled_ms = 0;
		c->g->ops->progress(c->g->arg); /* shutdown may have waited for this */
	}
	if (!c->reading && c->writing < OUT_HIGH / 2)
		start_reading(c);
	conn_send(c);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct gconn *c = h->data;
	(void)suggested;
	buf->base = c->g->rbuf;
	buf->len = sizeof(c->g->rbuf);
}

/*
 * Everything nghttp2 wants to send, in writes of up to OUT_HIGH bytes,
 * until it has no more or OUT_HIGH bytes wait in the socket's queue (the
 * write callback then sends the rest).  Returns -1 when c was closed.
 */
static int flush_out(struct gconn *c)
{
	struct bt_buf out = c->g->obuf;
	int more = 1;
	while (more && !c->closing && c->writing < OUT_HIGH) {
		out.len = 0;
		more = 0;
		while (out.len < OUT_HIGH) {
			const uint8_t *data;
			ssize_t n = nghttp2_session_mem_send(c->s, &data);
			if (n < 0) {
				c->g->obuf = out;
				conn_close(c);
				return -1;
			}
			if (n == 0)
				break;
			bt_buf_append(&out, data, (size_t)n);
			more = 1;
		}
		if (!out.len)
			break;
		uv_buf_t b = uv_buf_init(out.data, (unsigned)out.len);
		int w = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
		size_t done = w > 0 ? (size_t)w : 0;
		if (w < 0 && w != UV_EAGAIN) {
			c->g->obuf = out;
			conn_close(c);
			return -1;
		}
		if (done < out.len) {
			struct wreq *r = bt_malloc(sizeof(*r) + out.len - done);
			r->c = c;
			r->len = out.len - done;
			memcpy(r->data, out.data + done, r->len);
			uv_buf_t rb = uv_buf_init(r->data, (unsigned)r->len);
			c->writing += r->len;
			if (uv_write(&r->w, (uv_stream_t *)&c->tcp, &rb, 1, write_done) < 0) {
				c->writing -= r->len;
				free(r);
				c->g->obuf = out;
				conn_close(c);
				return -1;
			}
		}
	}
	c->g->obuf = out;
	return c->closing ? -1 : 0;
}

/* Sends what is pending; reading pauses past OUT_HIGH bytes unwritten. */
static void conn_send(struct gconn *c)
{
	if (c->lingering_ms || c->closing || flush_out(c))
		return;
	if (c->writing >= OUT_HIGH && c->reading) {
		c->reading = 0;
		uv_read_stop((uv_stream_t *)&c->tcp);
	}
	if (c->out_pending || c->writing) {
		if (!c->stalled_ms)
			c->stalled_ms = bt_now_ms();
	}
	/* A GOAWAY was sent and nothing more is wanted: done, once the peer has read it. */
	if (!nghttp2_session_want_read(c->s) && !nghttp2_session_want_write(c->s))
		linger(c);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
	(void)req;
	(void)status;
}

/*
 * A protocol error or a flood: nghttp2 queued a GOAWAY.  It is sent, then
 * the write side is shut; input is drained until the peer closes (or the
 * sweep gives up), because closing a socket with unread input resets it
 * and the peer would lose the GOAWAY that says why.
 */
static void linger(struct gconn *c)
{
	if (c->closing || c->lingering_ms)
		return;
	c->lingering_ms = bt_now_ms();
	if (flush_out(c))
		return;
	while (c->calls) {
		if (!c->calls->finished)
			count(c->calls, BT_GRPC_CANCELLED);
		call_free(c->calls);
	}
	if (!c->reading)
		start_reading(c);
	uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, shutdown_cb);
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
	struct gconn *c = st->data;
	if (n < 0) {
		conn_close(c);
		return;
	}
	if (n == 0)
		return;
	if (c->lingering_ms)
		return; /* input after the GOAWAY is read and dropped */
	ssize_t r = nghttp2_session_mem_recv(c->s, (const uint8_t *)buf->base, (size_t)n);
	if (r < 0) {
		bt_debug("grpc", "detail=%s", BT_LOGQ(nghttp2_strerror((int)r)));
		linger(c);
		return;
	}
	conn_send(c);
}

static void start_reading(struct gconn *c)
{
	c->reading = 1;
	uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

static nghttp2_session_callbacks *callbacks(void)
{
	static nghttp2_session_callbacks *cbs;
	if (!cbs) {
		nghttp2_session_callbacks_new(&cbs);
		nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, begin_headers_cb);
		nghttp2_session_callbacks_set_on_header_callback(cbs, header_cb);
		nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, data_chunk_cb);
		nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, frame_recv_cb);
		nghttp2_session_callbacks_set_on_stream_close_callback(cbs, stream_close_cb);
		nghttp2_session_callbacks_set_on_frame_send_callback(cbs, frame_send_cb);
	}
	return cbs;
}

static void accept_cb(uv_stream_t *server, int status)
{
	struct bt_grpc *g = server->data;
	if (status < 0 || g->closing)
		return;
	struct gconn *c = bt_calloc(1, sizeof(*c));
	c->g = g;
	uv_tcp_init(g->loop, &c->tcp);
	c->tcp.data = c;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
		uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
		return;
	}
	if (g->nconns >= CFG(g)->grpc_max_connections) {
		/* Accepted only to be closed: the backlog must not hold it either. */
		g->refused_conns++;
		uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
		return;
	}
	uv_tcp_nodelay(&c->tcp, 1);
	nghttp2_option *opt;
	nghttp2_option_new(&opt);
	/* Bounds what a peer that sends SETTINGS or PINGs and never reads can queue. */
	nghttp2_option_set_max_outbound_ack(opt, 100);
	nghttp2_option_set_max_settings(opt, 16);
	nghttp2_session_server_new2(&c->s, callbacks(), c, opt);
	nghttp2_option_del(opt);
	nghttp2_settings_entry iv[] = {
	    {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, CFG(g)->grpc_max_streams},
	    {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
	    {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, HEADERS_MAX},
	};
	nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, BT_ARRAY_SIZE(iv));
	nghttp2_session_set_local_window_size(c->s, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW);
	c->next = g->conns;
	if (g->conns)
		g->conns->prev = c;
	g->conns = c;
	g->nconns++;
	c->active_ms = bt_now_ms();
	start_reading(c);
	conn_send(c);
}

/*
 * Waiting for baton (a request in flight, an answer going out) is not
 * idleness; a call whose client stopped sending halfway is, as a half-sent
 * HTTP request is.
 */
static int busy(const struct gconn *c)
{
	if (c->out_pending || c->writing)
		return 1;
	for (const struct call *call = c->calls; call; call = call->next)
		if (call->inflight)
			return 1;
	return 0;
}

/* Once a second: connections idle past idle_timeout_s, clients not reading. */
static void sweep_cb(uv_timer_t *t)
{
	struct bt_grpc *g = t->data;
	uint64_t now = bt_now_ms();
	struct gconn *next;
	for (struct gconn *c = g->conns; c; c = next) {
		next = c->next;
		if (c->lingering_ms) {
			if (now - c->lingering_ms >= 2000)
				conn_close(c);
		} else if (c->stalled_ms &&
			   now - c->stalled_ms >= (uint64_t)CFG(g)->http_write_timeout_s * 1000) {
			bt_warn("gRPC client did not take its answers in time: dropped",
				"bytes=%zu write_timeout_s=%u", c->out_pending + c->writing,
				CFG(g)->http_write_timeout_s);
			conn_close(c);
		} else if (!busy(c) &&
			   now - c->active_ms >= (uint64_t)CFG(g)->http_idle_timeout_s * 1000) {
			nghttp2_session_terminate_session(c->s, NGHTTP2_NO_ERROR);
			linger(c);
		}
	}
}

/* ---- the server ----------------------------------------------------------- */

void bt_grpc_flush(struct bt_grpc *g)
{
	if (!g)
		return;
	while (g->dirty) {
		struct gconn *c = g->dirty;
		g->dirty = c->dnext;
		c->in_dirty = 0;
		if (!c->closing)
			conn_send(c);
	}
}

unsigned bt_grpc_pending(const struct bt_grpc *g)
{
	if (!g)
		return 0;
	/* Answers still to go out count too: shutdown must not cut them off. */
	unsigned n = g->inflight;
	for (const struct gconn *c = g->conns; c; c = c->next)
		n += !c->lingering_ms && (c->out_pending || c->writing);
	return n;
}

size_t bt_grpc_buffered(const struct bt_grpc *g)
{
	return g ? g->buffered : 0;
}

int bt_grpc_port(const struct bt_grpc *g)
{
	return g->port;
}

void bt_grpc_metrics(const struct bt_grpc *g, struct bt_buf *out)
{
	if (!g)
		return;
	bt_buf_puts(out, "# HELP baton_grpc_calls_total gRPC calls (and ModelStreamInfer answers) "
			 "by method and status.\n"
			 "# TYPE baton_grpc_calls_total counter\n");
	for (int m = 0; m < M_COUNT; m++)
		for (int s = 0; s < BT_GRPC_STATUS_COUNT; s++)
			if (g->counts[m][s])
				bt_buf_printf(
				    out, "baton_grpc_calls_total{method=\"%s\",code=\"%s\"} %llu\n",
				    method_names[m], bt_grpc_status_name(s),
				    (unsigned long long)g->counts[m][s]);
	bt_buf_printf(out,
		      "# HELP baton_grpc_connections Open gRPC connections.\n"
		      "# TYPE baton_grpc_connections gauge\nbaton_grpc_connections %u\n",
		      g->nconns);
	bt_buf_printf(out,
		      "# HELP baton_grpc_connections_refused_total gRPC connections closed at "
		      "grpc.max_connections.\n"
		      "# TYPE baton_grpc_connections_refused_total counter\n"
		      "baton_grpc_connections_refused_total %llu\n",
		      (unsigned long long)g->refused_conns);
}

int bt_grpc_start(uv_loop_t *loop, struct bt_config *const *cfgp, const struct bt_grpc_ops *ops,
		  void *arg, struct bt_grpc **out, char *err, size_t errlen)
{
	const struct bt_config *cfg = *cfgp;
	struct sockaddr_storage ss;
	if (uv_ip4_addr(cfg->grpc_listen_host, cfg->grpc_listen_port, (struct sockaddr_in *)&ss) &&
	    uv_ip6_addr(cfg->grpc_listen_host, cfg->grpc_listen_port, (struct sockaddr_in6 *)&ss)) {
		snprintf(err, errlen, "cannot listen for gRPC on '%s': not an IP address",
			 cfg->grpc_listen_host);
		return -EINVAL;
	}
	struct bt_grpc *g = bt_calloc(1, sizeof(*g));
	g->loop = loop;
	g->cfgp = cfgp;
	g->ops = ops;
	g->arg = arg;
	uv_tcp_init(loop, &g->listener);
	uv_timer_init(loop, &g->sweep);
	g->listener.data = g;
	g->sweep.data = g;
	g->handles = 2;
	int e = uv_tcp_bind(&g->listener, (struct sockaddr *)&ss, 0);
	if (!e)
		e = uv_listen((uv_stream_t *)&g->listener, 1024, accept_cb);
	if (e) {
		snprintf(err, errlen, "cannot listen for gRPC on %s:%d: %s", cfg->grpc_listen_host,
			 cfg->grpc_listen_port, uv_strerror(e));
		bt_grpc_close(g);
		return e;
	}
	struct sockaddr_storage bound;
	int blen = sizeof(bound);
	uv_tcp_getsockname(&g->listener, (struct sockaddr *)&bound, &blen);
	g->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
						    : ((struct sockaddr_in *)&bound)->sin_port);
	uv_timer_start(&g->sweep, sweep_cb, 1000, 1000);
	*out = g;
	return 0;
}

static void server_closed_cb(uv_handle_t *h)
{
	struct bt_grpc *g = h->data;
	if (--g->handles == 0) {
		bt_buf_release(&g->obuf);
		free(g);
	}
}

void bt_grpc_close(struct bt_grpc *g)
{
	if (!g || g->closing)
		return;
	g->closing = 1;
	while (g->conns)
		conn_close(g->conns);
	g->dirty = NULL;
	uv_close((uv_handle_t *)&g->listener, server_closed_cb);
	uv_close((uv_handle_t *)&g->sweep, server_closed_cb);
}
