/*
 * libmicrohttpd glue and the HTTP routes.  MHD runs in external mode with
 * its own epoll fd, which a uv_poll_t watches; MHD_run() is called when it
 * is readable, when MHD's own timeout expires, and once per loop turn
 * after connections were resumed.  A pipeline request suspends its
 * connection; the request's done callback resumes it, and MHD then calls
 * the access handler again, which queues the answer.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "../daemon/daemon.h"
#include "../proc/proc.h"

struct bt_http {
	struct bt_daemon *d;
	struct MHD_Daemon *mhd;
	uv_poll_t poll;
	uv_timer_t timer;
	int port;
	int need_run; /* a connection was resumed */
	unsigned pending; /* pipeline answers not yet fully sent */
	int closing;
};

enum route {
	R_NONE,
	R_PIPELINE,
	R_STAGE_RESTART,
};

struct conn {
	struct bt_http *h;
	struct MHD_Connection *mc;
	enum route route;
	struct bt_pipeline *pl;
	struct bt_buf body;
	int too_big; /* body went over max_request_bytes: dropped */
	int waiting; /* suspended while the request runs */
	int counted; /* included in h->pending */
	struct bt_request *req; /* in flight, or finished and not yet answered */
	int finished;
};

/* ---- answers -------------------------------------------------------------- */

static enum MHD_Result send_answer(struct MHD_Connection *mc, int status,
				   const char *ctype, char *body, size_t len,
				   const char *const *headers)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(
		len, body ? body : (char *)"", body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
	if (!resp) {
		free(body);
		return MHD_NO;
	}
	if (ctype)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	for (int i = 0; headers && headers[i]; i += 2)
		MHD_add_response_header(resp, headers[i], headers[i + 1]);
	enum MHD_Result r = MHD_queue_response(mc, (unsigned)status, resp);
	MHD_destroy_response(resp);
	return r;
}

static enum MHD_Result send_json(struct MHD_Connection *mc, int status,
				 json_t *doc, const char *const *headers)
{
	char *text = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	size_t len = strlen(text);
	char *body = bt_malloc(len + 2);
	memcpy(body, text, len);
	body[len++] = '\n';
	free(text);
	return send_answer(mc, status, "application/json", body, len, headers);
}

static enum MHD_Result send_error(struct MHD_Connection *mc, enum bt_code code,
				  const char *stage, const char *request_id,
				  const char *msg)
{
	json_t *doc = json_pack("{s:s, s:s}", "error", msg, "code", bt_code_name(code));
	if (stage)
		json_object_set_new(doc, "stage", json_string(stage));
	if (request_id)
		json_object_set_new(doc, "request_id", json_string(request_id));
	const char *hdrs[] = {"Retry-After", "1", NULL};
	return send_json(mc, bt_code_http_status(code), doc,
			 code == BT_OVERLOADED ? hdrs : NULL);
}

static enum MHD_Result send_empty(struct MHD_Connection *mc, int status)
{
	return send_answer(mc, status, NULL, NULL, 0, NULL);
}

static enum MHD_Result answer_request(struct conn *cn)
{
	struct bt_request *req = cn->req;
	enum MHD_Result r;
	cn->req = NULL;
	if (req->code == BT_OK) {
		const char *ctype = json_string_value(json_object_get(req->meta, "content_type"));
		const char *hdrs[] = {"Baton-Request-Id", req->idstr, NULL};
		size_t len;
		char *body = req->payload;
		len = req->len;
		req->payload = NULL;
		r = send_answer(cn->mc, 200, ctype ? ctype : "application/octet-stream",
				body, len, hdrs);
	} else {
		r = send_error(cn->mc, req->code, req->error_stage, req->idstr, req->error);
	}
	bt_request_free(req);
	return r;
}

/* ---- routes ---------------------------------------------------------------- */

static void request_done_cb(struct bt_request *req, void *arg)
{
	struct conn *cn = arg;
	if (!cn) {
		/* The client went away meanwhile: nobody to tell. */
		bt_request_free(req);
		return;
	}
	cn->finished = 1;
	if (cn->waiting) {
		cn->waiting = 0;
		MHD_resume_connection(cn->mc);
		cn->h->need_run = 1;
		bt_daemon_wake(cn->h->d);
	}
}

static enum MHD_Result start_pipeline_request(struct conn *cn)
{
	struct bt_http *h = cn->h;
	struct MHD_Connection *mc = cn->mc;
	char msg[256];
	if (cn->too_big) {
		snprintf(msg, sizeof(msg), "request body is over max_request_bytes (%zu)",
			 h->d->cfg->max_request_bytes);
		return send_error(mc, BT_BAD_REQUEST, NULL, NULL, msg) == MHD_YES
			       ? MHD_YES : MHD_NO;
	}
	json_t *meta = NULL;
	const char *hmeta = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Baton-Meta");
	if (hmeta) {
		json_error_t jerr;
		meta = json_loads(hmeta, 0, &jerr);
		if (!json_is_object(meta)) {
			json_decref(meta);
			snprintf(msg, sizeof(msg), "the Baton-Meta header must be a JSON object%s%s",
				 meta ? "" : ": ", meta ? "" : jerr.text);
			return send_error(mc, BT_BAD_REQUEST, NULL, NULL, msg);
		}
	}
	if (!meta)
		meta = json_object();
	const char *ctype = MHD_lookup_connection_value(mc, MHD_HEADER_KIND,
							MHD_HTTP_HEADER_CONTENT_TYPE);
	if (ctype && !json_object_get(meta, "content_type"))
		json_object_set_new(meta, "content_type", json_string(ctype));
	size_t len;
	char *payload = bt_buf_detach(&cn->body, &len);
	cn->req = bt_request_new(cn->pl, payload, len, meta);
	cn->counted = 1;
	h->pending++;
	bt_pipeline_submit(cn->req, request_done_cb, cn);
	if (cn->finished)
		return answer_request(cn);
	cn->waiting = 1;
	MHD_suspend_connection(mc);
	return MHD_YES;
}

static enum MHD_Result restart_stage(struct conn *cn, const char *name)
{
	struct bt_stage *st = bt_daemon_stage(cn->h->d, name);
	char msg[200];
	if (!st) {
		snprintf(msg, sizeof(msg), "no stage named '%s'", name);
		return send_error(cn->mc, BT_NOT_FOUND, NULL, NULL, msg);
	}
	int revived = 0;
	for (int i = 0; i < st->nreplicas; i++) {
		struct bt_replica *r = st->replicas[i];
		if (r->state == BT_REPLICA_FAILED || r->state == BT_REPLICA_BACKOFF) {
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

static int has_prefix(const char *s, const char *prefix, const char **rest)
{
	size_t n = strlen(prefix);
	if (strncmp(s, prefix, n))
		return 0;
	*rest = s + n;
	return 1;
}

static enum MHD_Result method_not_allowed(struct MHD_Connection *mc,
					  const char *allow)
{
	const char *hdrs[] = {"Allow", allow, NULL};
	json_t *doc = json_pack("{s:s, s:s}", "error", "method not allowed here",
				"code", "bad_request");
	return send_json(mc, 405, doc, hdrs);
}

/* First call for a request: route it; answers right away when it can. */
static enum MHD_Result route(struct conn *cn, const char *url, const char *method,
			     int *answered)
{
	struct bt_daemon *d = cn->h->d;
	struct MHD_Connection *mc = cn->mc;
	int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
	int post = !strcmp(method, "POST");
	const char *rest;
	char msg[300];

	*answered = 1;
	if (!strcmp(url, "/v2/health/live")) {
		return get ? send_empty(mc, 200) : method_not_allowed(mc, "GET");
	}
	if (!strcmp(url, "/v2/health/ready")) {
		return get ? send_empty(mc, bt_daemon_ready(d) ? 200 : 400)
			   : method_not_allowed(mc, "GET");
	}
	if (!strcmp(url, "/v1/status")) {
		return get ? send_json(mc, 200, bt_daemon_status(d), NULL)
			   : method_not_allowed(mc, "GET");
	}
	if (has_prefix(url, "/v1/pipelines/", &rest)) {
		cn->pl = bt_daemon_pipeline(d, rest);
		if (!cn->pl) {
			snprintf(msg, sizeof(msg), "no pipeline named '%.200s'", rest);
			return send_error(mc, BT_NOT_FOUND, NULL, NULL, msg);
		}
		if (!post)
			return method_not_allowed(mc, "POST");
		const char *clen = MHD_lookup_connection_value(mc, MHD_HEADER_KIND,
							       MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (clen && strtoull(clen, NULL, 10) > d->cfg->max_request_bytes) {
			/* Refused before reading: MHD closes the connection after. */
			snprintf(msg, sizeof(msg),
				 "request body of %s bytes is over max_request_bytes (%zu)",
				 clen, d->cfg->max_request_bytes);
			json_t *doc = json_pack("{s:s, s:s}", "error", msg, "code", "bad_request");
			return send_json(mc, 413, doc, NULL);
		}
		cn->route = R_PIPELINE;
		*answered = 0;
		return MHD_YES;
	}
	if (has_prefix(url, "/v1/stages/", &rest)) {
		const char *slash = strchr(rest, '/');
		if (slash && !strcmp(slash, "/restart")) {
			if (!post)
				return method_not_allowed(mc, "POST");
			cn->route = R_STAGE_RESTART;
			*answered = 0;
			return MHD_YES;
		}
	}
	snprintf(msg, sizeof(msg), "no route for %.16s %.200s", method, url);
	return send_error(mc, BT_NOT_FOUND, NULL, NULL, msg);
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *mc,
				 const char *url, const char *method,
				 const char *version, const char *upload_data,
				 size_t *upload_data_size, void **con_cls)
{
	struct bt_http *h = cls;
	struct conn *cn = *con_cls;
	(void)version;
	if (!cn) {
		cn = bt_calloc(1, sizeof(*cn));
		cn->h = h;
		cn->mc = mc;
		*con_cls = cn;
		int answered;
		enum MHD_Result r = route(cn, url, method, &answered);
		if (answered)
			cn->route = R_NONE;
		return r;
	}
	if (cn->route == R_NONE) {
		/* Already answered: drop whatever body follows. */
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (*upload_data_size) {
		if (cn->route == R_PIPELINE && !cn->too_big) {
			if (cn->body.len + *upload_data_size > h->d->cfg->max_request_bytes) {
				cn->too_big = 1;
				bt_buf_release(&cn->body);
			} else {
				bt_buf_append(&cn->body, upload_data, *upload_data_size);
			}
		}
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (cn->route == R_STAGE_RESTART) {
		cn->route = R_NONE;
		const char *name = url + strlen("/v1/stages/");
		char stage[128];
		size_t n = strcspn(name, "/");
		snprintf(stage, sizeof(stage), "%.*s", (int)BT_MIN(n, sizeof(stage) - 1), name);
		return restart_stage(cn, stage);
	}
	if (!cn->req) {
		if (cn->too_big) {
			cn->route = R_NONE;
			char msg[128];
			snprintf(msg, sizeof(msg), "request body is over max_request_bytes (%zu)",
				 h->d->cfg->max_request_bytes);
			json_t *doc = json_pack("{s:s, s:s}", "error", msg, "code", "bad_request");
			return send_json(mc, 413, doc, NULL);
		}
		return start_pipeline_request(cn);
	}
	if (cn->finished)
		return answer_request(cn);
	/* Resumed without an outcome cannot happen; keep waiting if it does. */
	cn->waiting = 1;
	MHD_suspend_connection(mc);
	return MHD_YES;
}

static void completed_cb(void *cls, struct MHD_Connection *mc, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct bt_http *h = cls;
	struct conn *cn = *con_cls;
	(void)mc;
	(void)toe;
	if (!cn)
		return;
	*con_cls = NULL;
	if (cn->req) {
		if (cn->finished)
			bt_request_free(cn->req);
		else
			cn->req->done_arg = NULL; /* still running: it frees itself */
	}
	if (cn->counted) {
		h->pending--;
		bt_daemon_progress(h->d);
	}
	bt_buf_release(&cn->body);
	free(cn);
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
	char msg[512];
	(void)cls;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	size_t n = strlen(msg);
	while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		msg[--n] = '\0';
	bt_debug("http", "detail=\"%s\"", msg);
}

/* ---- loop glue ---------------------------------------------------------------- */

static void arm(struct bt_http *h);

static void run(struct bt_http *h)
{
	h->need_run = 0;
	MHD_run(h->mhd);
	arm(h);
}

static void timer_cb(uv_timer_t *t)
{
	run(t->data);
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
	(void)status;
	(void)events;
	run(p->data);
}

static void arm(struct bt_http *h)
{
	MHD_UNSIGNED_LONG_LONG to;
	if (h->closing)
		return;
	if (MHD_get_timeout(h->mhd, &to) == MHD_YES)
		uv_timer_start(&h->timer, timer_cb, to, 0);
	else
		uv_timer_stop(&h->timer);
}

void bt_http_flush(struct bt_http *h)
{
	if (h && !h->closing && h->need_run)
		run(h);
}

unsigned bt_http_pending(const struct bt_http *h)
{
	return h ? h->pending : 0;
}

int bt_http_port(const struct bt_http *h)
{
	return h->port;
}

int bt_http_start(struct bt_daemon *d, struct bt_http **out, char *err,
		  size_t errlen)
{
	const struct bt_config *cfg = d->cfg;
	struct sockaddr_in a4;
	struct sockaddr_in6 a6;
	struct sockaddr *sa;
	unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	memset(&a4, 0, sizeof(a4));
	memset(&a6, 0, sizeof(a6));
	if (inet_pton(AF_INET, cfg->listen_host, &a4.sin_addr) == 1) {
		a4.sin_family = AF_INET;
		a4.sin_port = htons((uint16_t)cfg->listen_port);
		sa = (struct sockaddr *)&a4;
	} else {
		inet_pton(AF_INET6, cfg->listen_host, &a6.sin6_addr);
		a6.sin6_family = AF_INET6;
		a6.sin6_port = htons((uint16_t)cfg->listen_port);
		sa = (struct sockaddr *)&a6;
		flags |= MHD_USE_IPv6;
	}
	struct bt_http *h = bt_calloc(1, sizeof(*h));
	h->d = d;
	h->mhd = MHD_start_daemon(flags, (uint16_t)cfg->listen_port, NULL, NULL,
				  access_cb, h, MHD_OPTION_SOCK_ADDR, sa,
				  MHD_OPTION_NOTIFY_COMPLETED, completed_cb, h,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)1000,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,
				  MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
				  MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, h,
				  MHD_OPTION_END);
	if (!h->mhd) {
		snprintf(err, errlen, "cannot listen on %s:%d: %s", cfg->listen_host,
			 cfg->listen_port, errno ? strerror(errno) : "libmicrohttpd refused");
		free(h);
		return -EADDRINUSE;
	}
	const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
	int epfd = info->epoll_fd;
	info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
	h->port = info ? info->port : cfg->listen_port;
	uv_poll_init(d->loop, &h->poll, epfd);
	uv_timer_init(d->loop, &h->timer);
	h->poll.data = h;
	h->timer.data = h;
	uv_poll_start(&h->poll, UV_READABLE, poll_cb);
	arm(h);
	*out = h;
	return 0;
}

static void closed_cb(uv_handle_t *handle)
{
	struct bt_http *h = handle->data;
	if (++h->closing == 3)
		free(h);
}

void bt_http_close(struct bt_http *h)
{
	h->closing = 1;
	uv_poll_stop(&h->poll);
	uv_close((uv_handle_t *)&h->poll, closed_cb);
	uv_close((uv_handle_t *)&h->timer, closed_cb);
	/* Closes the epoll fd the poll watched: after uv_poll_stop, not before. */
	MHD_stop_daemon(h->mhd);
	h->mhd = NULL;
}
