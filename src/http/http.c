/*
 * The HTTP routes, on h1conn.h's connections.  A request's head routes it
 * (and answers at once when it can), its body is gathered, and a pipeline
 * request then runs while its connection waits; the request's done
 * callback puts it on a list that bt_http_flush answers from, once per
 * loop turn.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../daemon/daemon.h"
#include "../metrics/metrics.h"
#include "../proc/proc.h"
#include "../stream/stream.h"
#include "h1conn.h"
#include "shm.h"
#include "v2.h"

#ifndef BATON_VERSION
#define BATON_VERSION "0.0.0"
#endif

/* A worker's content_type longer than this is not a media type. */
#define CONTENT_TYPE_MAX 256

struct bt_http {
	struct bt_daemon *d;
	struct bt_shm *shm; /* clients' shared-memory regions (shm.h) */
	struct bt_h1_server *srv;
	struct conn *resumed; /* requests whose outcome came: bt_http_flush answers */
	unsigned pending; /* pipeline answers not yet fully sent */
	unsigned polls; /* results long polls waiting (suspended connections) */
	int closing;
	/*
	 * Bytes held for clients (bodies read, answers not yet taken), against
	 * http.max_buffered_bytes: past it new requests are refused, so slow
	 * or absent readers cannot grow baton without bound.
	 */
	size_t buffered;
	struct conn *sending; /* answers queued, oldest first: the write timeout */
	struct conn *sending_tail;
};

enum route {
	R_NONE, /* answered already */
	R_PIPELINE, /* POST /v1/pipelines/{p} */
	R_INFER, /* POST /v2/models/{m}/infer */
	R_STAGE_RESTART,
	R_STAGE_SCALE, /* POST /v1/stages/{s}/scale {"replicas": n | "auto"} */
	R_STREAM_RESULTS, /* GET /v1/streams/{s}/results?after=N&wait_ms=M */
	R_STATION_ADD, /* POST /v1/streams/{s}/stations {"name": …, "url": …} */
	R_SHM_REGISTER, /* POST /v2/systemsharedmemory/region/{r}/register */
};

struct conn {
	struct bt_http *h;
	struct bt_h1_conn *mc;
	const struct bt_h1_head *hd; /* the request's line and header fields */
	enum route route;
	struct bt_pipeline *pl;
	char stage[72]; /* for R_STAGE_RESTART and R_STAGE_SCALE */
	char *region; /* for R_SHM_REGISTER */
	struct bt_buf body;
	int waiting; /* the connection waits while the request runs */
	int counted; /* included in h->pending */
	struct bt_request *req; /* in flight, or finished and not yet answered */
	int finished;
	struct bt_stream *stream; /* R_STREAM_RESULTS, R_STATION_ADD */
	uint64_t after, wait_ms;
	struct bt_stream_watch *watch; /* a long poll waiting for results */
	int woken;
	int polling; /* counted in h->polls */
	size_t charged; /* bytes counted in h->buffered for this connection */
	uint64_t send_deadline_ms; /* while in h->sending */
	int in_sending; /* in h->sending */
	/*
	 * The body when it is not in body: received into a memfd (body_fd,
	 * then sealed and mapped here), or rewritten for shared memory (shm.h).
	 */
	char *shm_body;
	size_t shm_len;
	int shm_fd; /* shm_body's memfd, or -1 */
	struct bt_payload_tail *shm_tail; /* the rest of shm_body, in a client's object */
	struct bt_out_places *shm_places; /* outputs the last stage may write itself */
	int body_fd; /* a large body being received into a memfd, or -1 */
	size_t body_fd_len;
	struct conn *snext, *sprev;
	struct conn *rnext, *rprev; /* h->resumed */
	int in_resumed;
};

/* ---- the buffer budget ---------------------------------------------------- */

static void charge(struct conn *cn, size_t n)
{
	cn->charged += n;
	cn->h->buffered += n;
}

static void uncharge(struct conn *cn)
{
	struct bt_http *h = cn->h;
	h->buffered -= cn->charged;
	cn->charged = 0;
}

static int over_budget(const struct bt_http *h, size_t more)
{
	/* Registered shared-memory regions count against the same budget. */
	return h->buffered + bt_shm_bytes(h->shm) + more > h->d->cfg->http_max_buffered_bytes;
}

static void sending_remove(struct conn *cn)
{
	struct bt_http *h = cn->h;
	if (!cn->in_sending)
		return;
	if (cn->sprev)
		cn->sprev->snext = cn->snext;
	else
		h->sending = cn->snext;
	if (cn->snext)
		cn->snext->sprev = cn->sprev;
	else
		h->sending_tail = cn->sprev;
	cn->snext = cn->sprev = NULL;
	cn->in_sending = 0;
}

/* The answer is queued: it counts instead of the body, until it is taken. */
static void sending_add(struct conn *cn, size_t answer_len)
{
	struct bt_http *h = cn->h;
	h->buffered -= cn->charged;
	cn->charged = 0;
	charge(cn, answer_len);
	cn->send_deadline_ms = bt_now_ms() + (uint64_t)h->d->cfg->http_write_timeout_s * 1000;
	cn->sprev = h->sending_tail;
	cn->snext = NULL;
	if (h->sending_tail)
		h->sending_tail->snext = cn;
	else
		h->sending = cn;
	h->sending_tail = cn;
	cn->in_sending = 1;
}

/*
 * Drops clients that did not take their answer within http.write_timeout_s:
 * closing the connection ends the request (ended_cb), which frees the answer.
 */
static void cut_slow_readers(struct bt_http *h)
{
	uint64_t now = bt_now_ms();
	/* Deadlines grow along the list: stop at the first one not yet due. */
	while (h->sending && h->sending->send_deadline_ms <= now) {
		struct conn *cn = h->sending;
		bt_warn("client did not take its answer in time: dropped",
			"bytes=%zu write_timeout_s=%u", cn->charged, h->d->cfg->http_write_timeout_s);
		sending_remove(cn);
		bt_h1_abort(cn->mc); /* ends the request: ended_cb frees cn */
	}
}

/* ---- answers -------------------------------------------------------------- */

/* The answer's body once it is sent: malloc'd, or a memfd's mapping (rarg the fd + 1). */
static void release_body(void *rarg, char *body, size_t len)
{
	int fd = (int)(intptr_t)rarg - 1;
	if (fd >= 0)
		bt_payload_free(body, len, fd);
	else
		free(body);
}

static int send_answer_fd(struct bt_h1_conn *mc, int status,
				      const char *ctype, char *body, size_t len, int fd,
				      const char *const *headers);

/* Queues an answer; headers are name/value pairs, NULL-terminated. */
static int send_answer(struct bt_h1_conn *mc, int status,
				   const char *ctype, char *body, size_t len,
				   const char *const *headers)
{
	return send_answer_fd(mc, status, ctype, body, len, -1, headers);
}

/*
 * The same with a payload that may be in a memfd (fd >= 0, body its
 * mapping): sent from the mapping, with no copy in baton.
 */
static int send_answer_fd(struct bt_h1_conn *mc, int status,
				      const char *ctype, char *body, size_t len, int fd,
				      const char *const *headers)
{
	if (fd >= 0 && len > 0)
		bt_memfd_prefault(body, len);
	bt_h1_answer(mc, status, ctype, headers, body, len, release_body,
		     (void *)(intptr_t)(fd >= 0 ? fd + 1 : 0));
	return 0;
}

static char *dump_line(json_t *doc, size_t *len)
{
	/* A NULL doc is a bug in building it; the client still gets an answer. */
	char *text = doc ? json_dumps(doc, JSON_COMPACT)
			 : bt_strdup("{\"error\":\"internal error: the answer could not be built\"}");
	json_decref(doc);
	*len = strlen(text);
	char *body = bt_realloc(text, *len + 2);
	body[(*len)++] = '\n';
	return body;
}

static int send_json(struct bt_h1_conn *mc, int status,
				 json_t *doc, const char *const *headers)
{
	size_t len;
	char *body = dump_line(doc, &len);
	return send_answer(mc, status, "application/json", body, len, headers);
}

static json_t *error_doc(enum bt_code code, const char *stage, const char *request_id,
			 const char *msg)
{
	char clean[1024];
	snprintf(clean, sizeof(clean), "%s", msg);
	json_t *doc = json_pack("{s:s, s:s}", "error", bt_utf8_clean(clean), "code",
				bt_code_name(code));
	if (stage)
		json_object_set_new(doc, "stage", json_string(stage));
	if (request_id)
		json_object_set_new(doc, "request_id", json_string(request_id));
	return doc;
}

static int send_error(struct bt_h1_conn *mc, enum bt_code code,
				  const char *msg)
{
	return send_json(mc, bt_code_http_status(code), error_doc(code, NULL, NULL, msg), NULL);
}

/* why: NULL for the buffer budget, else what kept baton from holding the body. */
static int send_overloaded(struct conn *cn, const char *why)
{
	char msg[256];
	size_t shm = bt_shm_bytes(cn->h->shm);
	cn->route = R_NONE;
	if (why)
		snprintf(msg, sizeof(msg), "baton cannot hold the request's body now (%s): try again later",
			 why);
	else if (shm)
		snprintf(msg, sizeof(msg),
			 "baton holds %zu bytes for clients and %zu in shared memory regions, at its "
			 "http.max_buffered_bytes (%zu): try again later",
			 cn->h->buffered, shm, cn->h->d->cfg->http_max_buffered_bytes);
	else
		snprintf(msg, sizeof(msg),
			 "baton holds %zu bytes for clients, at its http.max_buffered_bytes (%zu): try "
			 "again later",
			 cn->h->buffered, cn->h->d->cfg->http_max_buffered_bytes);
	const char *hdrs[] = {"Retry-After", "1", NULL};
	return send_json(cn->mc, 503, error_doc(BT_OVERLOADED, NULL, NULL, msg), hdrs);
}

/* The v2 protocol's error body is {"error": "..."} alone. */
static int send_v2_error(struct bt_h1_conn *mc, int status, const char *msg)
{
	char clean[1024];
	snprintf(clean, sizeof(clean), "%s", msg);
	return send_json(mc, status, json_pack("{s:s}", "error", bt_utf8_clean(clean)), NULL);
}

static int send_empty(struct bt_h1_conn *mc, int status)
{
	return send_answer(mc, status, NULL, NULL, 0, NULL);
}

/*
 * Server-Timing: each stage's queue and run time, so that clients see
 * where the time went without any code (seed 000 printed these by hand).
 */
/*
 * Server-Timing is built by hand: with snprintf it cost a sixth of baton's
 * own instructions per request.  put() copies what fits and always leaves
 * out NUL-terminated.
 */
struct timing_out {
	char *p;
	size_t o, size;
};

static void put(struct timing_out *t, const char *s, size_t n)
{
	if (t->o + 1 >= t->size)
		return;
	n = BT_MIN(n, t->size - 1 - t->o);
	memcpy(t->p + t->o, s, n);
	t->o += n;
	t->p[t->o] = '\0';
}

/* Microseconds as milliseconds with three decimals: "12.345". */
static void put_ms(struct timing_out *t, uint64_t us)
{
	char d[32];
	int i = sizeof(d);
	uint64_t ms = us / 1000, frac = us % 1000;
	for (int k = 0; k < 3; k++, frac /= 10)
		d[--i] = (char)('0' + frac % 10);
	d[--i] = '.';
	do {
		d[--i] = (char)('0' + ms % 10);
		ms /= 10;
	} while (ms);
	put(t, d + i, sizeof(d) - (size_t)i);
}

#define PUTS(t, lit) put(t, lit, sizeof(lit) - 1)

static void server_timing(const struct bt_request *req, char *out, size_t size)
{
	struct timing_out t = {out, 0, size};
	int last = req->step;
	out[0] = '\0';
	for (int i = 0; i <= last && i < req->nroute; i++) {
		const char *name = req->route[i]->cfg->name;
		size_t n = strlen(name);
		if (i)
			PUTS(&t, ", ");
		put(&t, name, n);
		PUTS(&t, "-queue;dur=");
		put_ms(&t, req->timings[i].queue_us);
		PUTS(&t, ", ");
		put(&t, name, n);
		PUTS(&t, "-run;dur=");
		put_ms(&t, req->timings[i].run_us);
	}
	if (t.o)
		PUTS(&t, ", ");
	PUTS(&t, "total;dur=");
	put_ms(&t, bt_now_us() - req->accepted_us);
}

/*
 * The last stage's answer becomes the v2 response here, before the request
 * counts as succeeded: a worker that answered anything else fails it
 * (worker_error), in the metrics as in the HTTP status.
 */
static int v2_finish(struct bt_request *req, const char *id, struct bt_shm_outputs *outs,
		     char *err, size_t errlen)
{
	json_t *jhl = json_object_get(req->meta, "v2_header_length");
	long long hl = json_is_integer(jhl) ? json_integer_value(jhl) : -1;
	char *body, *placed = NULL, why[256];
	const char *in = req->payload;
	size_t len, in_len = req->len;
	long long out_hl;
	/* Outputs into shared memory first: what is left to complete is small. */
	if (outs && bt_shm_place_outputs(outs, in ? in : "", in_len, req->payload_fd, hl, &placed,
					 &in_len, &hl, why, sizeof(why)) == 0)
		in = placed;
	if ((outs && !placed) ||
	    bt_v2_finish_response(in, in_len, hl, req->pipeline->cfg->name, id, &body, &len,
				  &out_hl, why, sizeof(why))) {
		free(placed);
		snprintf(err, errlen, "the pipeline's last stage did not answer a v2 response: %s",
			 why);
		return 1;
	}
	free(placed);
	bt_payload_free(req->payload, req->len, req->payload_fd);
	req->payload = body;
	req->len = len;
	req->payload_fd = -1;
	if (out_hl >= 0)
		json_object_set_new(req->meta, "v2_header_length", json_integer(out_hl));
	else
		json_object_del(req->meta, "v2_header_length");
	return 0;
}

static int v2_check(struct bt_request *req, char *err, size_t errlen)
{
	return v2_finish(req, req->check_data, NULL, err, errlen);
}

/* A v2 request whose outputs go into shared memory: its id and where they go. */
struct v2_shm_ctx {
	char *id;
	struct bt_shm_outputs *outs;
};

static int v2_shm_check(struct bt_request *req, char *err, size_t errlen)
{
	struct v2_shm_ctx *x = (struct v2_shm_ctx *)req->check_data;
	return v2_finish(req, x->id, x->outs, err, errlen);
}

static void v2_shm_ctx_free(char *data)
{
	struct v2_shm_ctx *x = (struct v2_shm_ctx *)data;
	free(x->id);
	bt_shm_outputs_free(x->outs); /* the regions it used may be unregistered now */
	free(x);
}

static int answer_v2(struct conn *cn, struct bt_request *req,
				 const char *timing)
{
	json_t *jhl = json_object_get(req->meta, "v2_header_length");
	char hlen[32];
	snprintf(hlen, sizeof(hlen), "%lld", (long long)json_integer_value(jhl));
	const char *hdrs[] = {"Baton-Request-Id", req->idstr, "Server-Timing", timing,
			      "Inference-Header-Content-Length", jhl ? hlen : NULL, NULL};
	int fd;
	char *body = bt_request_take_payload(req, &fd);
	return send_answer_fd(cn->mc, 200, jhl ? "application/octet-stream" : "application/json",
			      body, req->len, fd, hdrs);
}

/*
 * Short, and printable ASCII: anything else (a NUL inside included) would
 * not be a header value.
 */
static int valid_content_type(json_t *v)
{
	const char *s = json_string_value(v);
	size_t n = json_string_length(v);
	if (!s || n == 0 || n > CONTENT_TYPE_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			return 0;
	return 1;
}

static int answer_request(struct conn *cn)
{
	struct bt_request *req = cn->req;
	int r;
	char timing[1024];
	cn->req = NULL;
	server_timing(req, timing, sizeof(timing));
	if (req->code != BT_OK) {
		char retry[24];
		snprintf(retry, sizeof(retry), "1");
		const char *hdrs[] = {"Server-Timing", timing, "Retry-After",
				      req->code == BT_OVERLOADED ? retry : NULL, NULL};
		size_t len;
		char *body = dump_line(error_doc(req->code, req->error_stage, req->idstr, req->error),
				       &len);
		r = send_answer(cn->mc, bt_code_http_status(req->code), "application/json", body,
				len, hdrs);
	} else if (cn->route == R_INFER) {
		sending_add(cn, req->len);
		r = answer_v2(cn, req, timing);
	} else {
		json_t *jct = json_object_get(req->meta, "content_type");
		/* A worker's nonsense is not sent: the bytes go as bytes. */
		const char *ctype = valid_content_type(jct) ? json_string_value(jct) : NULL;
		const char *hdrs[] = {"Baton-Request-Id", req->idstr, "Server-Timing", timing, NULL};
		int fd;
		char *body = bt_request_take_payload(req, &fd);
		size_t len = req->len;
		sending_add(cn, len);
		r = send_answer_fd(cn->mc, 200, ctype ? ctype : "application/octet-stream", body,
				   len, fd, hdrs);
	}
	bt_request_free(req);
	return r;
}

/* ---- pipeline requests ----------------------------------------------------- */

/* A waiting request's outcome came: it is answered from bt_http_flush. */
static void resume(struct conn *cn)
{
	struct bt_http *h = cn->h;
	if (!cn->waiting)
		return;
	cn->waiting = 0;
	cn->in_resumed = 1;
	cn->rprev = NULL;
	cn->rnext = h->resumed;
	if (h->resumed)
		h->resumed->rprev = cn;
	h->resumed = cn;
	bt_daemon_wake(h->d);
}

static void resumed_remove(struct conn *cn)
{
	if (!cn->in_resumed)
		return;
	if (cn->rprev)
		cn->rprev->rnext = cn->rnext;
	else
		cn->h->resumed = cn->rnext;
	if (cn->rnext)
		cn->rnext->rprev = cn->rprev;
	cn->in_resumed = 0;
}

static void request_done_cb(struct bt_request *req, void *arg)
{
	struct conn *cn = arg;
	if (!cn) {
		/* The client went away meanwhile: nobody to tell. */
		bt_request_free(req);
		return;
	}
	cn->finished = 1;
	resume(cn);
}

/* check and check_data: see struct bt_request (NULL for plain requests). */
static void submit(struct conn *cn, json_t *meta, int priority, long long timeout_us,
		   int (*check)(struct bt_request *, char *, size_t), char *check_data)
{
	size_t len;
	char *payload = bt_buf_detach(&cn->body, &len);
	cn->req = bt_request_new(cn->pl, payload, len, meta);
	if (cn->shm_body || cn->shm_fd >= 0) {
		/* A body received into a memfd, or rewritten for shared memory. */
		bt_payload_free(cn->req->payload, cn->req->len, -1);
		cn->req->payload = cn->shm_body;
		cn->req->len = cn->shm_len;
		cn->req->payload_fd = cn->shm_fd;
		cn->req->tail = cn->shm_tail;
		cn->req->places = cn->shm_places;
		cn->shm_body = NULL;
		cn->shm_fd = -1;
		cn->shm_tail = NULL;
		cn->shm_places = NULL;
	}
	cn->req->priority = priority;
	cn->req->check = check;
	cn->req->check_data = check_data;
	if (check == v2_shm_check)
		cn->req->check_free = v2_shm_ctx_free;
	/* A client's timeout only shortens the stage's; past a day it means nothing. */
	if (timeout_us > 0)
		cn->req->client_deadline_ms =
			bt_now_ms() + (uint64_t)((BT_MIN(timeout_us, BT_V2_TIMEOUT_MAX_US) + 999) / 1000);
	cn->counted = 1;
	cn->h->pending++;
	bt_pipeline_submit(cn->req, request_done_cb, cn);
}

static int wait_or_answer(struct conn *cn)
{
	if (cn->finished)
		return answer_request(cn);
	cn->waiting = 1;
	return 0;
}

static const char *header(struct conn *cn, const char *name)
{
	return bt_h1_field(cn->hd, name);
}

/* Parses an optional integer header; -1 when it is there but not a number. */
static int int_header(struct conn *cn, const char *name, long long *out)
{
	const char *v = header(cn, name);
	char *end;
	if (!v)
		return 0;
	errno = 0;
	*out = strtoll(v, &end, 10);
	return (errno || end == v || *end || *out < 0) ? -1 : 1;
}

static int start_pipeline_request(struct conn *cn)
{
	char msg[256];
	json_t *meta = NULL;
	const char *hmeta = header(cn, "Baton-Meta");
	if (hmeta) {
		json_error_t jerr;
		meta = json_loads(hmeta, 0, &jerr);
		if (!json_is_object(meta)) {
			json_decref(meta);
			snprintf(msg, sizeof(msg), "the Baton-Meta header must be a JSON object%s%s",
				 meta ? "" : ": ", meta ? "" : jerr.text);
			return send_error(cn->mc, BT_BAD_REQUEST, msg);
		}
	}
	long long priority = 0, timeout_ms = 0;
	const char *bad = NULL;
	if (int_header(cn, "Baton-Priority", &priority) < 0)
		bad = "Baton-Priority";
	else if (int_header(cn, "Baton-Timeout-Ms", &timeout_ms) < 0)
		bad = "Baton-Timeout-Ms";
	if (bad) {
		json_decref(meta);
		snprintf(msg, sizeof(msg), "the %s header must be a non-negative integer", bad);
		return send_error(cn->mc, BT_BAD_REQUEST, msg);
	}
	if (!meta)
		meta = json_object();
	const char *ctype = header(cn, "Content-Type");
	if (ctype && !json_object_get(meta, "content_type"))
		json_object_set_new(meta, "content_type", json_string(ctype));
	submit(cn, meta, bt_v2_priority_level(priority),
	       BT_MIN(timeout_ms, BT_V2_TIMEOUT_MAX_US / 1000) * 1000, NULL, NULL);
	return wait_or_answer(cn);
}

static int start_infer(struct conn *cn)
{
	struct bt_v2_request v2;
	char err[512];
	long long hl = -1;
	int r = int_header(cn, "Inference-Header-Content-Length", &hl);
	if (r < 0)
		return send_v2_error(cn->mc, 400,
				     "Inference-Header-Content-Length must be a non-negative integer");
	if (r == 0)
		hl = -1;
	struct bt_shm_outputs *outs = NULL;
	const char *body = cn->shm_fd >= 0 ? cn->shm_body : cn->body.data;
	size_t len = cn->shm_fd >= 0 ? cn->shm_len : cn->body.len;
	char *nbody;
	size_t nlen;
	int nfd;
	const struct bt_config *cfg = cn->h->d->cfg;
	r = bt_shm_rewrite_infer(cn->h->shm, body ? body : "", len, hl, cfg->memfd_min_bytes,
				 cfg->max_request_bytes, &nbody, &nlen, &nfd, &cn->shm_tail,
				 &cn->shm_places, &hl, &outs, err, sizeof(err));
	if (r < 0)
		return send_v2_error(cn->mc, 400, err);
	if (r > 0) {
		bt_payload_free(cn->shm_body, cn->shm_len, cn->shm_fd);
		cn->shm_body = nbody;
		cn->shm_len = nlen;
		cn->shm_fd = nfd;
		body = nbody;
		len = nlen;
	}
	if (bt_v2_parse_infer(body ? body : "", len, hl, &v2, err, sizeof(err))) {
		bt_shm_outputs_free(outs);
		return send_v2_error(cn->mc, 400, err);
	}
	json_t *meta = bt_v2_meta(&v2, cn->pl->cfg->name);
	if (outs) {
		struct v2_shm_ctx *x = bt_calloc(1, sizeof(*x));
		x->id = v2.id;
		x->outs = outs;
		submit(cn, meta, bt_v2_priority_level(v2.has_priority ? v2.priority : 0),
		       v2.has_timeout ? v2.timeout_us : 0, v2_shm_check, (char *)x);
	} else {
		submit(cn, meta, bt_v2_priority_level(v2.has_priority ? v2.priority : 0),
		       v2.has_timeout ? v2.timeout_us : 0, v2_check, v2.id);
	}
	v2.id = NULL; /* the request's now */
	bt_v2_request_release(&v2);
	return wait_or_answer(cn);
}

/* ---- other routes ---------------------------------------------------------- */

static int restart_stage(struct conn *cn)
{
	struct bt_stage *st = bt_daemon_stage(cn->h->d, cn->stage);
	char msg[200];
	if (!st) {
		snprintf(msg, sizeof(msg), "no stage named '%s'", cn->stage);
		return send_error(cn->mc, BT_NOT_FOUND, msg);
	}
	int revived = 0;
	for (int i = 0; i < st->nreplicas; i++) {
		struct bt_replica *r = st->replicas[i];
		if (r->active && (r->state == BT_REPLICA_FAILED || r->state == BT_REPLICA_BACKOFF)) {
			bt_replica_revive(r);
			revived++;
		}
	}
	bt_info("stage restart requested", "stage=%s replicas_restarted=%d",
		st->cfg->name, revived);
	return send_json(cn->mc, 200,
			 json_pack("{s:s, s:i}", "stage", st->cfg->name, "restarted", revived),
			 NULL);
}

static int scale_stage(struct conn *cn)
{
	struct bt_daemon *d = cn->h->d;
	struct bt_stage *st = bt_daemon_stage(d, cn->stage);
	char msg[256];
	if (!st) {
		snprintf(msg, sizeof(msg), "no stage named '%s'", cn->stage);
		return send_error(cn->mc, BT_NOT_FOUND, msg);
	}
	/* Draining, baton starts nothing: a 200 would promise replicas that never come. */
	if (d->state != BT_DAEMON_RUNNING)
		return send_error(cn->mc, BT_SHUTTING_DOWN,
				  "baton is shutting down: replicas are no longer scaled");
	json_error_t jerr;
	json_t *doc = json_loadb(cn->body.data ? cn->body.data : "", cn->body.len, 0, &jerr);
	json_t *n = json_object_get(doc, "replicas");
	int max = st->cfg->replicas_max, from = bt_stage_active(st);
	int r;
	if (json_is_string(n) && !strcmp(json_string_value(n), "auto")) {
		st->manual = 0;
		memset(&st->scale_state, 0, sizeof(st->scale_state));
		bt_daemon_record_scaling(d, st, from, from, 1, "manual: policy back on");
		r = send_json(cn->mc, 200, json_pack("{s:s, s:s}", "stage", st->cfg->name,
						     "replicas", "auto"), NULL);
	} else if (json_is_integer(n) && json_integer_value(n) >= 1 && json_integer_value(n) <= max) {
		int to = (int)json_integer_value(n);
		st->manual = 1;
		char why[64];
		snprintf(why, sizeof(why), "manual: %d replicas, policy off", to);
		if (to == from)
			bt_daemon_record_scaling(d, st, from, to, 1, why);
		else
			bt_daemon_scale(d, st, to, why);
		r = send_json(cn->mc, 200, json_pack("{s:s, s:i}", "stage", st->cfg->name,
						     "replicas", to), NULL);
	} else {
		snprintf(msg, sizeof(msg),
			 "the body must be {\"replicas\": N} with N from 1 to %d (replicas.max), or {\"replicas\": \"auto\"}",
			 max);
		r = send_error(cn->mc, BT_BAD_REQUEST, msg);
	}
	json_decref(doc);
	return r;
}

static int send_metrics(struct bt_h1_conn *mc, struct bt_daemon *d)
{
	struct bt_buf out = BT_BUF_INIT;
	bt_metrics_write(d, &out);
	size_t len;
	char *body = bt_buf_detach(&out, &len);
	return send_answer(mc, 200, "text/plain; version=0.0.4; charset=utf-8", body, len, NULL);
}

static int pipeline_ready(const struct bt_pipeline *pl)
{
	if (pl->d->state != BT_DAEMON_RUNNING)
		return 0;
	for (int i = 0; i < pl->nstages; i++)
		if (pl->stages[i]->failed || !pl->stages[i]->up)
			return 0;
	return 1;
}

static json_t *model_metadata(const struct bt_pipeline *pl)
{
	const struct bt_pipeline_config *c = pl->cfg;
	json_t *in = c->io_inputs ? json_incref(c->io_inputs) : json_array();
	json_t *out = c->io_outputs ? json_incref(c->io_outputs) : json_array();
	return json_pack("{s:s, s:[s], s:s, s:o, s:o}", "name", c->name, "versions", "1",
			 "platform", "baton", "inputs", in, "outputs", out);
}

static int has_prefix(const char *s, const char *prefix, const char **rest)
{
	size_t n = strlen(prefix);
	if (strncmp(s, prefix, n))
		return 0;
	*rest = s + n;
	return 1;
}

static int method_not_allowed(struct bt_h1_conn *mc,
					  const char *allow)
{
	const char *hdrs[] = {"Allow", allow, NULL};
	json_t *doc = json_pack("{s:s, s:s}", "error", "method not allowed here",
				"code", "bad_request");
	return send_json(mc, 405, doc, hdrs);
}

/* Splits "NAME[/versions/V][/ACTION]"; returns 0 when it is not of that form. */
static int split_model_url(const char *rest, char *name, size_t nlen,
			   const char **version, const char **action)
{
	const char *p = strchr(rest, '/');
	size_t n = p ? (size_t)(p - rest) : strlen(rest);
	if (n == 0 || n >= nlen)
		return 0;
	memcpy(name, rest, n);
	name[n] = '\0';
	*version = NULL;
	*action = "";
	if (!p)
		return 1;
	p++;
	if (!strncmp(p, "versions/", 9)) {
		*version = p + 9;
		p = strchr(*version, '/');
		if (!p)
			return **version != '\0';
		p++;
	}
	if (strchr(p, '/'))
		return 0;
	*action = p;
	return 1;
}

/*
 * Triton's system shared-memory extension: rest is what follows
 * /v2/systemsharedmemory.  Register reads a body (*answered = 0); status
 * and unregister answer at once.
 */
static int route_shm(struct conn *cn, const char *rest, int get, int post,
				 int *answered)
{
	char name[160], err[400];
	const char *action = rest;
	struct bt_h1_conn *mc = cn->mc;
	int one = 0;
	if (!strncmp(rest, "/region/", 8)) {
		const char *slash = strchr(rest + 8, '/');
		size_t n = slash ? (size_t)(slash - (rest + 8)) : 0;
		if (!slash || n == 0 || n >= sizeof(name))
			return send_v2_error(mc, 404, "no such route");
		memcpy(name, rest + 8, n);
		name[n] = '\0';
		action = slash;
		one = 1;
	}
	if (!strcmp(action, "/status")) {
		if (!get)
			return method_not_allowed(mc, "GET");
		json_t *doc = bt_shm_status(cn->h->shm, one ? name : NULL, err, sizeof(err));
		return doc ? send_json(mc, 200, doc, NULL) : send_v2_error(mc, 400, err);
	}
	if (!strcmp(action, "/unregister")) {
		if (!post)
			return method_not_allowed(mc, "POST");
		if (bt_shm_unregister(cn->h->shm, one ? name : NULL, err, sizeof(err)))
			return send_v2_error(mc, 400, err);
		bt_info("shared memory unregistered", "region=%s", BT_LOGQ(one ? name : "(all)"));
		return send_empty(mc, 200);
	}
	if (one && !strcmp(action, "/register")) {
		if (!post)
			return method_not_allowed(mc, "POST");
		cn->route = R_SHM_REGISTER;
		cn->region = bt_strdup(name);
		*answered = 0;
		return 0;
	}
	return send_v2_error(mc, 404, "no such route");
}

static int shm_register(struct conn *cn)
{
	struct bt_http *h = cn->h;
	char err[400];
	size_t max = h->d->cfg->http_max_buffered_bytes, used = h->buffered + bt_shm_bytes(h->shm);
	if (bt_shm_register(h->shm, cn->region, cn->body.data ? cn->body.data : "", cn->body.len,
			    used < max ? max - used : 0, err, sizeof(err)))
		return send_v2_error(cn->mc, 400, err);
	bt_info("shared memory registered", "region=%s bytes=%zu", BT_LOGQ(cn->region),
		bt_shm_bytes(h->shm));
	return send_empty(cn->mc, 200);
}

/* GET and POST under /v2/models/; sets *answered = 0 for an infer to run. */
static int route_v2_model(struct conn *cn, const char *rest, int get, int post,
				      int *answered)
{
	char name[128], msg[300];
	const char *version, *action;
	struct bt_h1_conn *mc = cn->mc;
	if (!split_model_url(rest, name, sizeof(name), &version, &action))
		return send_v2_error(mc, 404, "no such route");
	cn->pl = bt_daemon_pipeline(cn->h->d, name);
	if (!cn->pl) {
		snprintf(msg, sizeof(msg), "unknown model '%.100s' (models are baton's pipelines)", name);
		return send_v2_error(mc, 404, msg);
	}
	size_t vlen = version ? strcspn(version, "/") : 0;
	if (version && (vlen != 1 || version[0] != '1')) {
		snprintf(msg, sizeof(msg), "model '%s' has no version '%.*s' (only '1')", name,
			 (int)BT_MIN(vlen, 64), version);
		return send_v2_error(mc, 404, msg);
	}
	if (!strcmp(action, "")) {
		return get ? send_json(mc, 200, model_metadata(cn->pl), NULL)
			   : method_not_allowed(mc, "GET");
	}
	if (!strcmp(action, "ready")) {
		return get ? send_empty(mc, pipeline_ready(cn->pl) ? 200 : 400)
			   : method_not_allowed(mc, "GET");
	}
	if (!strcmp(action, "infer")) {
		if (!post)
			return method_not_allowed(mc, "POST");
		cn->route = R_INFER;
		*answered = 0;
		return 0;
	}
	return send_v2_error(mc, 404, "no such route");
}

/* With auth configured, everything but the health probes needs the token. */
/* ---- streams ------------------------------------------------------------- */

/* A long poll ends: woken, timed out, or its connection gone. */
static void poll_done(struct conn *cn)
{
	if (cn->polling) {
		cn->polling = 0;
		cn->h->polls--;
	}
}

static void results_watch_cb(void *arg)
{
	struct conn *cn = arg;
	cn->watch = NULL;
	cn->woken = 1;
	poll_done(cn);
	resume(cn);
}

/* Answers with what is newer than `after`, or waits up to wait_ms for it. */
static int stream_results(struct conn *cn)
{
	uint64_t next;
	json_t *res = bt_stream_results(cn->stream, cn->after, &next);
	/*
	 * A waiting connection cannot tell a client that left from one that
	 * only shut its sending side, so it is kept: long polls
	 * may hold only a quarter of the connections, or clients that gave up
	 * waiting could lock everyone out until their wait_ms ran out.  Past
	 * that, a poll is answered at once (the client simply polls again).
	 */
	unsigned max_polls = BT_MAX(1u, cn->h->d->cfg->http_max_connections / 4);
	if (json_array_size(res) || cn->wait_ms == 0 || cn->woken ||
	    cn->h->d->state != BT_DAEMON_RUNNING || cn->h->polls >= max_polls) {
		cn->route = R_NONE;
		return send_json(cn->mc, 200, json_pack("{s:o, s:I}", "results", res, "next",
							(json_int_t)next), NULL);
	}
	json_decref(res);
	cn->polling = 1;
	cn->h->polls++;
	cn->watch = bt_stream_watch(cn->stream, cn->after, cn->wait_ms, results_watch_cb, cn);
	cn->waiting = 1;
	return 0;
}

static int add_station(struct conn *cn)
{
	json_error_t jerr;
	json_t *doc = json_loadb(cn->body.data ? cn->body.data : "", cn->body.len, 0, &jerr);
	const char *name = json_string_value(json_object_get(doc, "name"));
	const char *url = json_string_value(json_object_get(doc, "url"));
	char msg[300];
	int r;
	if (!json_is_object(doc) || !name || !url) {
		r = send_error(cn->mc, BT_BAD_REQUEST,
			       "the body must be {\"name\": \"station3\", \"url\": \"rtsp://…\"}");
	} else {
		int e = bt_stream_add_station(cn->stream, name, url, msg, sizeof(msg));
		if (e == 0)
			r = send_json(cn->mc, 201,
				      json_pack("{s:s, s:s}", "station", name, "url", url),
				      NULL);
		else if (e == BT_ESTATE)
			r = send_json(cn->mc, 409, error_doc(BT_BAD_REQUEST, NULL, NULL, msg), NULL);
		else
			r = send_error(cn->mc, BT_BAD_REQUEST, msg);
	}
	json_decref(doc);
	return r;
}

/* /v1/streams/{s}/… : rest is what follows /v1/streams/. */
static int route_stream(struct conn *cn, const char *rest, const char *method,
				    int *answered)
{
	struct bt_h1_conn *mc = cn->mc;
	int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
	char name[72], msg[300];
	const char *slash = strchr(rest, '/');
	size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
	snprintf(name, sizeof(name), "%.*s", (int)BT_MIN(n, sizeof(name) - 1), rest);
	cn->stream = bt_streams_find(cn->h->d->streams, name);
	if (!cn->stream) {
		snprintf(msg, sizeof(msg), "no stream named '%.64s'", name);
		return send_error(mc, BT_NOT_FOUND, msg);
	}
	const char *station;
	if (slash && !strcmp(slash, "/results")) {
		if (!get)
			return method_not_allowed(mc, "GET");
		const char *a = bt_h1_arg(cn->hd, "after");
		const char *w = bt_h1_arg(cn->hd, "wait_ms");
		char *end;
		if (a) {
			errno = 0;
			cn->after = strtoull(a, &end, 10);
			if (!*a || *end || *a == '-' || errno == ERANGE || cn->after > INT64_MAX)
				return send_error(mc, BT_BAD_REQUEST,
						  "'after' must be a whole number (a result's seq)");
		}
		if (w) {
			cn->wait_ms = strtoull(w, &end, 10);
			if (!*w || *end || cn->wait_ms > 600000)
				return send_error(mc, BT_BAD_REQUEST,
						  "'wait_ms' must be a whole number up to 600000");
		}
		cn->route = R_STREAM_RESULTS;
		*answered = 0;
		return 0;
	}
	if (slash && !strcmp(slash, "/stations")) {
		if (strcmp(method, "POST"))
			return method_not_allowed(mc, "POST");
		cn->route = R_STATION_ADD;
		*answered = 0;
		return 0;
	}
	if (slash && has_prefix(slash, "/stations/", &station)) {
		if (strcmp(method, "DELETE"))
			return method_not_allowed(mc, "DELETE");
		if (bt_stream_remove_station(cn->stream, station)) {
			snprintf(msg, sizeof(msg), "stream '%s' has no station named '%.64s'", name,
				 station);
			return send_error(mc, BT_NOT_FOUND, msg);
		}
		return send_json(mc, 202,
				 json_pack("{s:s, s:s, s:b}", "stream", name, "station", station,
					   "removing", 1),
				 NULL);
	}
	snprintf(msg, sizeof(msg), "no route for %.16s /v1/streams/%.200s", method, rest);
	return send_error(mc, BT_NOT_FOUND, msg);
}

static int authorized(struct conn *cn, const char *url)
{
	const char *token = cn->h->d->cfg->auth_token;
	if (!token || !strncmp(url, "/v2/health/", 11) || bt_dashboard_is_route(url))
		return 1; /* the dashboard page holds no data; what it fetches needs the token */
	const char *v = header(cn, "Authorization");
	/* RFC 7235: the scheme is case-insensitive, then one or more spaces. */
	if (!v || strncasecmp(v, "Bearer", 6) || v[6] != ' ')
		return 0;
	v += 6;
	while (*v == ' ')
		v++;
	return bt_secure_equal(v, strlen(v), token, strlen(token));
}

/* First call for a request: route it; answers right away when it can. */
static int route(struct conn *cn, const char *url, const char *method,
			     int *answered)
{
	struct bt_daemon *d = cn->h->d;
	struct bt_h1_conn *mc = cn->mc;
	int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
	int post = !strcmp(method, "POST");
	const char *rest;
	char msg[300];

	*answered = 1;
	if (!authorized(cn, url)) {
		const char *hdrs[] = {"WWW-Authenticate", "Bearer realm=\"baton\"", NULL};
		return send_json(mc, 401,
				 json_pack("{s:s, s:s}", "error",
					   "this baton requires Authorization: Bearer <token>", "code",
					   "unauthorized"),
				 hdrs);
	}
	if (!strcmp(url, "/v2/health/live"))
		return get ? send_empty(mc, 200) : method_not_allowed(mc, "GET");
	if (!strcmp(url, "/v2/health/ready"))
		return get ? send_empty(mc, bt_daemon_ready(d) ? 200 : 400)
			   : method_not_allowed(mc, "GET");
	if (!strcmp(url, "/v2") || !strcmp(url, "/v2/")) {
		return get ? send_json(mc, 200,
				       json_pack("{s:s, s:s, s:[s, s]}", "name", "baton", "version",
						 BATON_VERSION, "extensions", "binary_tensor_data",
						 "system_shared_memory"),
				       NULL)
			   : method_not_allowed(mc, "GET");
	}
	if (has_prefix(url, "/v2/models/", &rest))
		return route_v2_model(cn, rest, get, post, answered);
	if (has_prefix(url, "/v2/systemsharedmemory", &rest))
		return route_shm(cn, rest, get, post, answered);
	if (bt_dashboard_is_route(url))
		return get ? bt_dashboard_send(mc) : method_not_allowed(mc, "GET");
	if (!strcmp(url, "/v1/status"))
		return get ? send_json(mc, 200, bt_daemon_status(d), NULL)
			   : method_not_allowed(mc, "GET");
	if (!strcmp(url, "/metrics"))
		return get ? send_metrics(mc, d) : method_not_allowed(mc, "GET");
	if (!strcmp(url, "/v1/streams"))
		return get ? send_json(mc, 200,
				       json_pack("{s:o}", "streams",
						 d->streams ? bt_streams_status(d->streams)
							    : json_object()),
				       NULL)
			   : method_not_allowed(mc, "GET");
	if (has_prefix(url, "/v1/streams/", &rest))
		return route_stream(cn, rest, method, answered);
	if (has_prefix(url, "/v1/pipelines/", &rest)) {
		cn->pl = bt_daemon_pipeline(d, rest);
		if (!cn->pl) {
			snprintf(msg, sizeof(msg), "no pipeline named '%.200s'", rest);
			return send_error(mc, BT_NOT_FOUND, msg);
		}
		if (!post)
			return method_not_allowed(mc, "POST");
		cn->route = R_PIPELINE;
		*answered = 0;
		return 0;
	}
	if (has_prefix(url, "/v1/stages/", &rest)) {
		const char *slash = strchr(rest, '/');
		if (slash && (!strcmp(slash, "/restart") || !strcmp(slash, "/scale"))) {
			if (!post)
				return method_not_allowed(mc, "POST");
			snprintf(cn->stage, sizeof(cn->stage), "%.*s",
				 (int)BT_MIN((size_t)(slash - rest), sizeof(cn->stage) - 1), rest);
			cn->route = !strcmp(slash, "/restart") ? R_STAGE_RESTART : R_STAGE_SCALE;
			*answered = 0;
			return 0;
		}
	}
	snprintf(msg, sizeof(msg), "no route for %.16s %.200s", method, url);
	return send_error(mc, BT_NOT_FOUND, msg);
}

/*
 * The most a control route (scale, stations, shared-memory register, and
 * the results poll, which ignores it) reads: its document is a few
 * fields, and jansson's tree of a body costs about 21 times its text,
 * 1.3 GiB for one of max_request_bytes (docs/config.md).
 */
#define CONTROL_BODY_MAX 65536

static int control_route(const struct conn *cn)
{
	return cn->route != R_PIPELINE && cn->route != R_INFER;
}

/* The longest body cn's route reads. */
static size_t body_max(const struct conn *cn)
{
	size_t max = cn->h->d->cfg->max_request_bytes;
	return control_route(cn) ? BT_MIN(max, (size_t)CONTROL_BODY_MAX) : max;
}

static int too_big(struct conn *cn, const char *announced)
{
	char msg[200];
	size_t max = cn->h->d->cfg->max_request_bytes;
	int control = body_max(cn) < max;
	cn->route = R_NONE;
	if (control && announced)
		snprintf(msg, sizeof(msg),
			 "request body of %.24s bytes is over %d bytes, the most a control route reads",
			 announced, CONTROL_BODY_MAX);
	else if (control)
		snprintf(msg, sizeof(msg), "request body is over %d bytes, the most a control route reads",
			 CONTROL_BODY_MAX);
	else if (announced)
		snprintf(msg, sizeof(msg), "request body of %.24s bytes is over max_request_bytes (%zu)",
			 announced, max);
	else
		snprintf(msg, sizeof(msg), "request body is over max_request_bytes (%zu)", max);
	return send_json(cn->mc, 413, error_doc(BT_BAD_REQUEST, NULL, NULL, msg), NULL);
}

/* Appends to the body being received: 0, or -errno (the memfd could not grow). */
static int body_add(struct conn *cn, const char *p, size_t n)
{
	if (cn->body_fd < 0) {
		bt_buf_append(&cn->body, p, n);
		return 0;
	}
	for (size_t off = 0; off < n;) {
		ssize_t k = pwrite(cn->body_fd, p + off, n - off, (off_t)cn->body_fd_len);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		off += (size_t)k;
		cn->body_fd_len += (size_t)k;
	}
	return 0;
}

static void body_drop(struct conn *cn)
{
	bt_buf_release(&cn->body);
	if (cn->body_fd >= 0)
		close(cn->body_fd);
	cn->body_fd = -1;
	cn->body_fd_len = 0;
}

/* A body received into a memfd, complete: sealed and mapped as shm_body; else -errno. */
static int body_seal(struct conn *cn)
{
	if (cn->body_fd < 0)
		return 0;
	int fd = cn->body_fd;
	size_t len = cn->body_fd_len;
	cn->body_fd = -1;
	cn->body_fd_len = 0;
	char *p = NULL;
	if (fcntl(fd, F_ADD_SEALS, BT_MEMFD_SEALS) < 0 || (len && !(p = bt_memfd_map(fd, len)))) {
		int e = -errno;
		close(fd);
		return e ? e : -ENOMEM;
	}
	cn->shm_body = p;
	cn->shm_len = len;
	cn->shm_fd = fd;
	return 0;
}

/* ---- requests, as h1conn.h hands them over -------------------------------- */

/* A request's head: routed, and answered at once when it can be. */
static void *head_cb(void *arg, struct bt_h1_conn *c, const struct bt_h1_head *hd)
{
	struct bt_http *h = arg;
	struct conn *cn = bt_calloc(1, sizeof(*cn));
	cn->shm_fd = -1;
	cn->body_fd = -1;
	cn->h = h;
	cn->mc = c;
	cn->hd = hd;
	int answered;
	route(cn, hd->path, hd->method, &answered);
	if (answered) {
		cn->route = R_NONE;
		return cn;
	}
	const char *clen = header(cn, "Content-Length");
	size_t announced = hd->length > 0 ? (size_t)hd->length : 0;
	/* Refused before reading: the connection closes after the answer. */
	if (cn->route != R_STAGE_RESTART && announced > body_max(cn)) {
		too_big(cn, clen);
		return cn;
	}
	if ((cn->route == R_PIPELINE || cn->route == R_INFER) &&
	    over_budget(h, hd->length >= 0 ? announced : 1)) {
		send_overloaded(cn, NULL);
		return cn;
	}
	size_t min = h->d->cfg->memfd_min_bytes;
	if ((cn->route == R_PIPELINE || cn->route == R_INFER) && min && hd->length >= 0 &&
	    announced >= min) {
		/* Received straight into the memfd the stages will share: no copy. */
		cn->body_fd = memfd_create("baton-body", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	}
	return cn;
}

static void body_cb(void *ctx, const char *p, size_t n)
{
	struct conn *cn = ctx;
	struct bt_http *h = cn->h;
	/* Already answered (the rest is dropped), or a route that reads no body. */
	if (cn->route == R_NONE || cn->route == R_STAGE_RESTART)
		return;
	size_t have = cn->body.len + cn->body_fd_len;
	int e;
	/*
	 * Past a limit (a chunked body says nothing up front): answered now,
	 * as nginx does, and the connection closes after the answer, the rest
	 * unread; a body of any length would otherwise be read to its end.
	 */
	if (have + n > body_max(cn)) {
		body_drop(cn);
		uncharge(cn);
		too_big(cn, NULL);
	} else if (over_budget(h, n)) {
		body_drop(cn);
		uncharge(cn);
		send_overloaded(cn, NULL);
	} else if ((e = body_add(cn, p, n))) {
		/* No memory left for the memfd, most likely: said as it is. */
		bt_warn("cannot hold a request body", "error=%s", BT_LOGQ(bt_strerror(e)));
		body_drop(cn);
		uncharge(cn);
		send_overloaded(cn, bt_strerror(e));
	} else {
		charge(cn, n);
	}
}

/* The body is in: the request runs, or is answered. */
static void complete_cb(void *ctx)
{
	struct conn *cn = ctx;
	enum route r = cn->route;
	int e;
	if (r == R_NONE)
		return;
	if (r != R_STREAM_RESULTS && r != R_PIPELINE && r != R_INFER)
		cn->route = R_NONE;
	if (r == R_STAGE_RESTART)
		restart_stage(cn);
	else if (r == R_STAGE_SCALE)
		scale_stage(cn);
	else if (r == R_STATION_ADD)
		add_station(cn);
	else if (r == R_SHM_REGISTER)
		shm_register(cn);
	else if (r == R_STREAM_RESULTS)
		stream_results(cn);
	else if ((e = body_seal(cn)))
		send_overloaded(cn, bt_strerror(e));
	else if (r == R_INFER)
		start_infer(cn);
	else
		start_pipeline_request(cn);
}

/* The answer is out, or the connection gone: the request's state goes. */
static void ended_cb(void *ctx)
{
	struct conn *cn = ctx;
	struct bt_http *h = cn->h;
	if (cn->watch)
		bt_stream_unwatch(cn->watch);
	poll_done(cn);
	resumed_remove(cn);
	if (cn->req) {
		if (cn->finished) {
			bt_request_free(cn->req);
		} else {
			/* Waiting in a queue, it ends now; running, it frees itself. */
			cn->req->done_arg = NULL;
			bt_request_cancel(cn->req);
		}
	}
	if (cn->counted) {
		h->pending--;
		bt_daemon_progress(h->d);
	}
	sending_remove(cn);
	body_drop(cn);
	uncharge(cn);
	free(cn->region);
	bt_payload_free(cn->shm_body, cn->shm_len, cn->shm_fd);
	bt_payload_tail_free(cn->shm_tail);
	bt_out_places_free(cn->shm_places);
	free(cn);
}

/* A request the parser refused: the connection closes after this answer. */
static void refuse_cb(void *arg, struct bt_h1_conn *c, int status, const char *why)
{
	(void)arg;
	bt_debug("http", "status=%d detail=%s", status, BT_LOGQ(why));
	send_json(c, status, error_doc(BT_BAD_REQUEST, NULL, NULL, why), NULL);
}

static void wake_cb(void *arg)
{
	struct bt_http *h = arg;
	bt_daemon_wake(h->d);
}

static void tick_cb(void *arg)
{
	struct bt_http *h = arg;
	cut_slow_readers(h);
}

static const struct bt_h1_ops h1_ops = {head_cb, body_cb, complete_cb, ended_cb,
					refuse_cb, wake_cb, tick_cb};

/* ---- the server ------------------------------------------------------------- */

void bt_http_flush(struct bt_http *h)
{
	if (!h)
		return;
	/* Answers for requests whose outcome came; a long poll may wait again. */
	while (h->resumed) {
		struct conn *cn = h->resumed;
		resumed_remove(cn);
		if (cn->route == R_STREAM_RESULTS)
			stream_results(cn);
		else if (cn->req)
			wait_or_answer(cn);
	}
	bt_h1_flush(h->srv);
}

unsigned bt_http_pending(const struct bt_http *h)
{
	return h ? h->pending : 0;
}

size_t bt_http_buffered(const struct bt_http *h)
{
	return h ? h->buffered : 0;
}

int bt_http_port(const struct bt_http *h)
{
	return bt_h1_port(h->srv);
}

int bt_http_start(struct bt_daemon *d, struct bt_http **out, char *err,
		  size_t errlen)
{
	struct bt_http *h = bt_calloc(1, sizeof(*h));
	h->d = d;
	h->shm = bt_shm_new();
	int e = bt_h1_listen(d->loop, &d->cfg, &h1_ops, h, &h->srv, err, errlen);
	if (e) {
		bt_shm_free(h->shm);
		free(h);
		return e;
	}
	*out = h;
	return 0;
}

void bt_http_close(struct bt_http *h)
{
	h->closing = 1;
	/* Every connection's ended_cb runs in there: nothing refers to h after. */
	bt_h1_close(h->srv);
	bt_shm_free(h->shm);
	free(h);
}
