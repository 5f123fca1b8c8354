/*
 * `baton bench --scenarios`: runs each scenario against a baton over HTTP
 * — a daemon it forks per scenario from the config (so batch settings and
 * replica counts can differ), or a running one (--url) — with a small
 * HTTP/1.1 load generator on its own libuv loop.  Closed loop keeps N
 * requests in flight; open loop schedules arrivals at a fixed rate and
 * measures each latency from its scheduled send time, so a stalled server
 * cannot hide its stall by slowing the generator (no coordinated
 * omission).  Outputs are report.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "../daemon/daemon.h"
#include "../http/http.h"
#include "jobs.h"

#define READY_WAIT_MS 180000
#define STATUS_PERIOD_MS 1000

enum { F_CONNECTION, F_4XX, F_500, F_502, F_503, F_504, F_OTHER, F_UNFINISHED };

enum conn_state { C_CLOSED, C_CONNECTING, C_IDLE, C_BUSY, C_CLOSING };

struct lg;

struct hconn {
	uv_tcp_t tcp;
	uv_connect_t connect;
	uv_write_t write;
	struct lg *lg;
	enum conn_state state;
	int is_status; /* the status sampler's connection */
	int has_request; /* a request is assigned (writing or awaiting its answer) */
	struct bt_buf in;
	char head[768];
	size_t headlen;
	int payload; /* index of the body sent */
	uint64_t sched_ns; /* when the request was due: latency counts from here */
	int measured;
	int is_free; /* on lg->free_slots */
};

struct lg {
	uv_loop_t loop;
	uv_timer_t arrivals; /* open loop: the next scheduled sends */
	uv_timer_t phase; /* the end of the sending window, then the drain bound */
	uv_timer_t sampler;
	const struct bt_scenario *sc;
	const struct bt_scenario_set *set;
	struct bt_scenario_result *res;
	struct sockaddr_storage addr;
	char host[128];
	const char *token;
	char path[300];
	struct hconn *conns;
	int nconns;
	int *free_slots; /* connections idle or closed: stack */
	int nfree;
	struct hconn status;
	uint64_t t0, warm_end, end, next_sched;
	int sending, finished;
	uint64_t *pending; /* open loop: scheduled sends waiting for a connection (ring) */
	size_t phead, plen, pcap;
	uint64_t inflight, seq, rng;
	struct bt_buf lat; /* doubles: measured successes' latency in ms */
	double sum_queue, sum_run, sum_total, sum_client;
	uint64_t nst;
	double cpu_sum, gpu_sum;
	int cpu_n, gpu_n;
	int daemon_pid;
	int replicas;
	const char *const *stages; /* of the pipeline */
	int nstages;
};

/* ---- small HTTP/1.1 parsing -------------------------------------------------- */

struct http_answer {
	int status;
	size_t head_len, body_len;
	int close;
	double queue_ms, run_ms, total_ms; /* total < 0: no Server-Timing */
};

/* Header value of name in head (which ends at the blank line), or NULL. */
static const char *find_header(const char *head, size_t len, const char *name, size_t *vlen)
{
	size_t nl = strlen(name);
	const char *p = memchr(head, '\n', len), *end = head + len;
	while (p && p + 1 < end) {
		const char *line = p + 1;
		const char *eol = memchr(line, '\n', (size_t)(end - line));
		if (!eol)
			break;
		if ((size_t)(eol - line) > nl && line[nl] == ':' && !strncasecmp(line, name, nl)) {
			const char *v = line + nl + 1;
			while (*v == ' ')
				v++;
			size_t n = (size_t)(eol - v);
			while (n && (v[n - 1] == '\r' || v[n - 1] == ' '))
				n--;
			*vlen = n;
			return v;
		}
		p = eol;
	}
	return NULL;
}

static void parse_server_timing(const char *v, size_t n, struct http_answer *a)
{
	char buf[1024];
	snprintf(buf, sizeof(buf), "%.*s", (int)(n < sizeof(buf) ? n : sizeof(buf) - 1), v);
	a->queue_ms = a->run_ms = 0;
	a->total_ms = -1;
	for (char *save, *e = strtok_r(buf, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
		while (*e == ' ')
			e++;
		char *semi = strchr(e, ';'), *dur = strstr(e, "dur=");
		if (!semi || !dur)
			continue;
		*semi = '\0';
		double d = strtod(dur + 4, NULL);
		size_t len = strlen(e);
		if (len > 6 && !strcmp(e + len - 6, "-queue"))
			a->queue_ms += d;
		else if (len > 4 && !strcmp(e + len - 4, "-run"))
			a->run_ms += d;
		else if (!strcmp(e, "total"))
			a->total_ms = d;
	}
}

/* 1: a whole answer is in buf; 0: not yet; -1: not HTTP as baton speaks it. */
static int parse_answer(const char *buf, size_t len, struct http_answer *a)
{
	const char *end = memmem(buf, len, "\r\n\r\n", 4);
	size_t vlen;
	if (!end)
		return len > 65536 ? -1 : 0;
	memset(a, 0, sizeof(*a));
	a->total_ms = -1;
	a->head_len = (size_t)(end - buf) + 4;
	if (len < 12 || strncmp(buf, "HTTP/1.", 7))
		return -1;
	a->status = atoi(buf + 9);
	const char *v = find_header(buf, a->head_len, "Content-Length", &vlen);
	if (!v)
		return -1;
	a->body_len = strtoull(v, NULL, 10);
	v = find_header(buf, a->head_len, "Connection", &vlen);
	a->close = v && vlen == 5 && !strncasecmp(v, "close", 5);
	v = find_header(buf, a->head_len, "Server-Timing", &vlen);
	if (v)
		parse_server_timing(v, vlen, a);
	return len >= a->head_len + a->body_len;
}

/* ---- a blocking client for the control requests (scale, status) ------------ */

static int ctl_request(struct lg *lg, const char *method, const char *path, const char *body,
		       int *status, struct bt_buf *out)
{
	int fd = socket(lg->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	socklen_t alen = lg->addr.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
						       : sizeof(struct sockaddr_in);
	struct timeval tv = {30, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&lg->addr, alen)) {
		int e = -errno;
		close(fd);
		return e;
	}
	struct bt_buf req = BT_BUF_INIT;
	bt_buf_printf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, path,
		      lg->host);
	if (lg->token)
		bt_buf_printf(&req, "Authorization: Bearer %s\r\n", lg->token);
	bt_buf_printf(&req, "Content-Length: %zu\r\n\r\n%s", body ? strlen(body) : 0,
		      body ? body : "");
	int r = 0;
	for (size_t off = 0; off < req.len && !r;) {
		ssize_t n = send(fd, req.data + off, req.len - off, MSG_NOSIGNAL);
		if (n < 0)
			r = -errno;
		else
			off += (size_t)n;
	}
	bt_buf_release(&req);
	struct http_answer a;
	char chunk[16384];
	while (!r) {
		ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
		if (n < 0)
			r = -errno;
		else if (n == 0)
			break;
		else
			bt_buf_append(out, chunk, (size_t)n);
	}
	close(fd);
	if (r)
		return r;
	if (parse_answer(out->data ? out->data : "", out->len, &a) != 1)
		return -EPROTO;
	*status = a.status;
	bt_buf_consume(out, a.head_len);
	return 0;
}

static json_t *get_status(struct lg *lg)
{
	struct bt_buf body = BT_BUF_INIT;
	int status = 0;
	json_t *doc = NULL;
	if (!ctl_request(lg, "GET", "/v1/status", NULL, &status, &body) && status == 200)
		doc = json_loadb(body.data, body.len, 0, NULL);
	bt_buf_release(&body);
	return doc;
}

/* ---- recording ---------------------------------------------------------------- */

static void record_failure(struct lg *lg, int kind)
{
	lg->res->failed++;
	lg->res->by_status[kind]++;
}

static void record(struct lg *lg, struct hconn *c, const struct http_answer *a)
{
	if (!c->measured)
		return;
	if (a->status < 200 || a->status > 299) {
		int kind = a->status >= 400 && a->status < 500 ? F_4XX
			   : a->status == 500			? F_500
			   : a->status == 502			? F_502
			   : a->status == 503			? F_503
			   : a->status == 504			? F_504
								: F_OTHER;
		record_failure(lg, kind);
		return;
	}
	double ms = (double)(uv_hrtime() - c->sched_ns) / 1e6;
	lg->res->ok++;
	bt_buf_append(&lg->lat, &ms, sizeof(ms));
	if (a->total_ms >= 0) {
		lg->sum_queue += a->queue_ms;
		lg->sum_run += a->run_ms;
		lg->sum_total += a->total_ms;
		lg->sum_client += ms;
		lg->nst++;
	}
}

/* ---- the connections ----------------------------------------------------------- */

static void dispatch(struct lg *lg);
static void maybe_finish(struct lg *lg);
static void send_request(struct hconn *c);

/* An idle connection that then closes must not be offered twice. */
static void put_free(struct lg *lg, struct hconn *c)
{
	if (!c->is_free) {
		c->is_free = 1;
		lg->free_slots[lg->nfree++] = (int)(c - lg->conns);
	}
}

static void closed_cb(uv_handle_t *h)
{
	struct hconn *c = h->data;
	struct lg *lg = c->lg;
	c->state = C_CLOSED;
	bt_buf_release(&c->in);
	if (c->is_status)
		return;
	put_free(lg, c);
	if (!lg->finished)
		dispatch(lg);
}

/* A connection that failed takes its request with it: a failure, never a retry. */
static void conn_fail(struct hconn *c)
{
	struct lg *lg = c->lg;
	if (c->has_request && !c->is_status) {
		c->has_request = 0;
		lg->inflight--;
		if (c->measured)
			record_failure(lg, F_CONNECTION);
	}
	c->has_request = 0;
	if (c->state != C_CLOSING && c->state != C_CLOSED) {
		c->state = C_CLOSING;
		uv_close((uv_handle_t *)&c->tcp, closed_cb);
	}
	if (!c->is_status)
		maybe_finish(lg);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct hconn *c = h->data;
	(void)suggested;
	bt_buf_reserve(&c->in, 65536);
	buf->base = c->in.data + c->in.len;
	buf->len = c->in.cap - c->in.len - 1;
}

static void status_answer(struct lg *lg, const char *body, size_t len);

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct hconn *c = s->data;
	struct lg *lg = c->lg;
	struct http_answer a;
	(void)buf;
	if (n < 0) {
		conn_fail(c);
		return;
	}
	c->in.len += (size_t)n;
	c->in.data[c->in.len] = '\0';
	int r = parse_answer(c->in.data, c->in.len, &a);
	if (r == 0)
		return;
	if (r < 0 || !c->has_request) {
		conn_fail(c);
		return;
	}
	c->has_request = 0;
	if (c->is_status) {
		if (a.status == 200)
			status_answer(lg, c->in.data + a.head_len, a.body_len);
	} else {
		lg->inflight--;
		record(lg, c, &a);
	}
	bt_buf_consume(&c->in, a.head_len + a.body_len);
	if (a.close || c->in.len) {
		conn_fail(c);
		return;
	}
	c->state = C_IDLE;
	if (c->is_status)
		return;
	put_free(lg, c);
	dispatch(lg);
	maybe_finish(lg);
}

static void write_cb(uv_write_t *w, int status)
{
	struct hconn *c = w->data;
	if (status < 0 && status != UV_ECANCELED)
		conn_fail(c);
}

static void send_request(struct hconn *c)
{
	struct lg *lg = c->lg;
	uv_buf_t bufs[2];
	int nbufs = 1;
	bufs[0] = uv_buf_init(c->head, (unsigned)c->headlen);
	if (!c->is_status) {
		bufs[1] = uv_buf_init(lg->set->payloads[c->payload], (unsigned)lg->set->lens[c->payload]);
		nbufs = lg->set->lens[c->payload] ? 2 : 1;
	}
	c->state = C_BUSY;
	c->write.data = c;
	if (uv_write(&c->write, (uv_stream_t *)&c->tcp, bufs, (unsigned)nbufs, write_cb))
		conn_fail(c);
}

static void connect_cb(uv_connect_t *req, int status)
{
	struct hconn *c = req->data;
	if (status < 0 || uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb)) {
		if (status != UV_ECANCELED)
			conn_fail(c);
		return;
	}
	send_request(c);
}

/* Puts the request (already in c->head) on the wire, connecting first if need be. */
static void start(struct hconn *c)
{
	struct lg *lg = c->lg;
	c->has_request = 1;
	if (c->state == C_IDLE) {
		send_request(c);
		return;
	}
	uv_tcp_init(&lg->loop, &c->tcp);
	c->tcp.data = c;
	c->connect.data = c;
	c->state = C_CONNECTING;
	uv_tcp_nodelay(&c->tcp, 1);
	if (uv_tcp_connect(&c->connect, &c->tcp, (struct sockaddr *)&lg->addr, connect_cb))
		conn_fail(c);
}

static void issue(struct lg *lg, uint64_t sched)
{
	struct hconn *c = &lg->conns[lg->free_slots[--lg->nfree]];
	c->is_free = 0;
	c->payload = (int)(lg->seq++ % (uint64_t)lg->set->npayloads);
	c->sched_ns = sched;
	c->measured = sched >= lg->warm_end && sched < lg->end;
	if (c->measured)
		lg->res->sent++;
	c->headlen = (size_t)snprintf(c->head, sizeof(c->head),
				      "POST %s HTTP/1.1\r\nHost: %s\r\n"
				      "Content-Type: application/octet-stream\r\n"
				      "Content-Length: %zu\r\n%s%s%s\r\n",
				      lg->path, lg->host, lg->set->lens[c->payload],
				      lg->token ? "Authorization: Bearer " : "",
				      lg->token ? lg->token : "", lg->token ? "\r\n" : "");
	lg->inflight++;
	start(c);
}

static void dispatch(struct lg *lg)
{
	if (lg->sc->load == BT_LOAD_CLOSED) {
		while (lg->sending && lg->nfree > 0)
			issue(lg, uv_hrtime());
		return;
	}
	while (lg->plen > 0 && lg->nfree > 0) {
		uint64_t sched = lg->pending[lg->phead];
		lg->phead = (lg->phead + 1) % lg->pcap;
		lg->plen--;
		issue(lg, sched);
	}
}

/* ---- the phases -------------------------------------------------------------- */

static void close_all(struct lg *lg)
{
	lg->finished = 1;
	lg->sending = 0;
	uv_timer_stop(&lg->arrivals);
	uv_timer_stop(&lg->phase);
	uv_timer_stop(&lg->sampler);
	/* Whatever is still out did not finish in time: a failure each. */
	for (size_t i = 0; i < lg->plen; i++) {
		uint64_t sched = lg->pending[(lg->phead + i) % lg->pcap];
		if (sched >= lg->warm_end && sched < lg->end) {
			lg->res->sent++; /* due in the window, never sent: counted as a failure */
			record_failure(lg, F_UNFINISHED);
		}
	}
	lg->plen = 0;
	for (int i = 0; i < lg->nconns; i++) {
		struct hconn *c = &lg->conns[i];
		if (c->has_request && c->measured)
			record_failure(lg, F_UNFINISHED);
		c->has_request = 0;
		if (c->state != C_CLOSED && c->state != C_CLOSING) {
			c->state = C_CLOSING;
			uv_close((uv_handle_t *)&c->tcp, closed_cb);
		}
	}
	if (lg->status.state != C_CLOSED && lg->status.state != C_CLOSING) {
		lg->status.state = C_CLOSING;
		uv_close((uv_handle_t *)&lg->status.tcp, closed_cb);
	}
}

static void maybe_finish(struct lg *lg)
{
	if (!lg->finished && !lg->sending && lg->plen == 0 && lg->inflight == 0) {
		lg->res->seconds = (double)(uv_hrtime() - lg->warm_end) / 1e9;
		close_all(lg);
	}
}

static void drain_timeout_cb(uv_timer_t *t)
{
	struct lg *lg = t->data;
	if (!lg->finished) {
		lg->res->seconds = (double)(uv_hrtime() - lg->warm_end) / 1e9;
		close_all(lg);
	}
}

static void end_cb(uv_timer_t *t)
{
	struct lg *lg = t->data;
	lg->sending = 0;
	uv_timer_stop(&lg->arrivals);
	uv_timer_start(&lg->phase, drain_timeout_cb, (uint64_t)(lg->sc->timeout_s * 1000), 0);
	maybe_finish(lg);
}

/* Uniform in (0, 1], from xorshift64*: the arrivals need no better. */
static double uniform(struct lg *lg)
{
	lg->rng ^= lg->rng >> 12;
	lg->rng ^= lg->rng << 25;
	lg->rng ^= lg->rng >> 27;
	return ((double)((lg->rng * 2685821657736338717ULL) >> 11) + 1.0) / 9007199254740992.0;
}

static uint64_t gap_ns(struct lg *lg)
{
	double mean = 1e9 / lg->sc->rate;
	return (uint64_t)(lg->sc->poisson ? -log(uniform(lg)) * mean : mean);
}

static void arrivals_cb(uv_timer_t *t)
{
	struct lg *lg = t->data;
	uint64_t now = uv_hrtime();
	while (lg->next_sched <= now && lg->next_sched < lg->end) {
		if (lg->plen == lg->pcap) {
			size_t cap = lg->pcap ? lg->pcap * 2 : 1024;
			uint64_t *p = bt_malloc(cap * sizeof(*p));
			for (size_t i = 0; i < lg->plen; i++)
				p[i] = lg->pending[(lg->phead + i) % lg->pcap];
			free(lg->pending);
			lg->pending = p;
			lg->pcap = cap;
			lg->phead = 0;
		}
		lg->pending[(lg->phead + lg->plen++) % lg->pcap] = lg->next_sched;
		lg->next_sched += gap_ns(lg);
	}
	dispatch(lg);
	if (lg->next_sched < lg->end)
		uv_timer_start(t, arrivals_cb, (lg->next_sched - now) / 1000000, 0);
}

/* ---- resource samples ------------------------------------------------------------- */

static double process_rss_mb(int pid)
{
	char path[64];
	long pages = 0, rss = 0;
	snprintf(path, sizeof(path), "/proc/%d/statm", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
		rss = 0;
	fclose(f);
	return (double)rss * (double)sysconf(_SC_PAGESIZE) / (1 << 20);
}

/*
 * The most replicas (scaling.active) any stage of the pipeline has: the
 * count a scenario varies, whether it scales every stage or one.
 */
static int count_replicas(struct lg *lg, json_t *doc)
{
	int n = 0;
	json_t *stages = json_object_get(doc, "stages");
	for (int i = 0; i < lg->nstages; i++) {
		int k = (int)json_integer_value(json_object_get(
			json_object_get(json_object_get(stages, lg->stages[i]), "scaling"), "active"));
		n = k > n ? k : n;
	}
	return n;
}

static void status_answer(struct lg *lg, const char *body, size_t len)
{
	json_t *doc = json_loadb(body, len, 0, NULL);
	if (!doc)
		return;
	/* Only what was asked for inside the measured window counts. */
	if (lg->status.sched_ns >= lg->warm_end && lg->status.sched_ns < lg->end) {
		struct bt_scenario_result *r = lg->res;
		double cpu = json_number_value(json_object_get(doc, "cpu_percent"));
		lg->cpu_sum += cpu;
		lg->cpu_n++;
		r->cpu_max = isnan(r->cpu_max) ? cpu : fmax(r->cpu_max, cpu);
		size_t i, ng = 0;
		json_t *g;
		double util = 0;
		json_array_foreach(json_object_get(doc, "gpus"), i, g) {
			if (json_is_integer(json_object_get(g, "util_percent"))) {
				util += (double)json_integer_value(json_object_get(g, "util_percent"));
				ng++;
			}
		}
		if (ng) {
			util /= (double)ng;
			lg->gpu_sum += util;
			lg->gpu_n++;
			r->gpu_max = isnan(r->gpu_max) ? util : fmax(r->gpu_max, util);
		}
		double rss = process_rss_mb(lg->daemon_pid);
		const char *name;
		json_t *st, *rep;
		json_object_foreach(json_object_get(doc, "stages"), name, st)
			json_array_foreach(json_object_get(st, "replicas"), i, rep)
				rss += (double)json_integer_value(json_object_get(rep, "rss_bytes")) /
				       (1 << 20);
		r->rss_max_mb = fmax(r->rss_max_mb, rss);
		lg->replicas = count_replicas(lg, doc);
	}
	json_decref(doc);
}

static void sampler_cb(uv_timer_t *t)
{
	struct lg *lg = t->data;
	struct hconn *c = &lg->status;
	if (c->has_request || c->state == C_CONNECTING || c->state == C_CLOSING)
		return;
	c->sched_ns = uv_hrtime();
	c->headlen = (size_t)snprintf(c->head, sizeof(c->head),
				      "GET /v1/status HTTP/1.1\r\nHost: %s\r\n%s%s%s\r\n", lg->host,
				      lg->token ? "Authorization: Bearer " : "",
				      lg->token ? lg->token : "", lg->token ? "\r\n" : "");
	start(c);
}

/* ---- one scenario ---------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void summarize(struct lg *lg)
{
	struct bt_scenario_result *r = lg->res;
	size_t n = lg->lat.len / sizeof(double);
	r->latency_ms = (double *)bt_buf_detach(&lg->lat, &r->nlatency);
	r->nlatency = n;
	if (n > 1) /* no samples: no buffer, and qsort may not be given NULL */
		qsort(r->latency_ms, n, sizeof(double), cmp_double);
	double sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += r->latency_ms[i];
	r->lat_avg = n ? sum / (double)n : NAN;
	r->p50 = n ? bt_jobs_percentile(r->latency_ms, n, 0.50) : NAN;
	r->p90 = n ? bt_jobs_percentile(r->latency_ms, n, 0.90) : NAN;
	r->p95 = n ? bt_jobs_percentile(r->latency_ms, n, 0.95) : NAN;
	r->p99 = n ? bt_jobs_percentile(r->latency_ms, n, 0.99) : NAN;
	r->max = n ? r->latency_ms[n - 1] : NAN;
	r->rps = r->seconds > 0 ? (double)r->ok / r->seconds : NAN;
	r->success_rate = r->sent ? (double)r->ok / (double)r->sent : NAN;
	r->cpu_avg = lg->cpu_n ? lg->cpu_sum / lg->cpu_n : NAN;
	r->gpu_avg = lg->gpu_n ? lg->gpu_sum / lg->gpu_n : NAN;
	if (lg->nst) {
		double k = (double)lg->nst;
		r->queue_ms = lg->sum_queue / k;
		r->run_ms = lg->sum_run / k;
		r->baton_ms = (lg->sum_total - lg->sum_queue - lg->sum_run) / k;
		r->http_ms = (lg->sum_client - lg->sum_total) / k;
	} else {
		r->queue_ms = r->run_ms = r->baton_ms = r->http_ms = NAN;
	}
	r->replicas = lg->replicas;
}

static void measure(struct lg *lg)
{
	const struct bt_scenario *sc = lg->sc;
	uv_loop_init(&lg->loop);
	lg->nconns = sc->load == BT_LOAD_CLOSED ? sc->concurrency : sc->connections;
	lg->conns = bt_calloc((size_t)lg->nconns, sizeof(*lg->conns));
	lg->free_slots = bt_calloc((size_t)lg->nconns, sizeof(int));
	for (int i = lg->nconns - 1; i >= 0; i--) {
		lg->conns[i].lg = lg;
		put_free(lg, &lg->conns[i]);
	}
	lg->status.lg = lg;
	lg->status.is_status = 1;
	uv_timer_init(&lg->loop, &lg->arrivals);
	uv_timer_init(&lg->loop, &lg->phase);
	uv_timer_init(&lg->loop, &lg->sampler);
	lg->arrivals.data = lg->phase.data = lg->sampler.data = lg;
	lg->t0 = uv_hrtime();
	lg->warm_end = lg->t0 + (uint64_t)(sc->warmup_s * 1e9);
	lg->end = lg->warm_end + (uint64_t)(sc->duration_s * 1e9);
	lg->rng = lg->t0 | 1;
	lg->sending = 1;
	lg->res->cpu_max = lg->res->gpu_max = NAN;
	uv_timer_start(&lg->phase, end_cb, (lg->end - lg->t0) / 1000000, 0);
	/* From the start of the measured window, at least five samples in it. */
	uint64_t period = (uint64_t)(sc->duration_s * 1000 / 5);
	period = period < STATUS_PERIOD_MS ? (period < 100 ? 100 : period) : STATUS_PERIOD_MS;
	uv_timer_start(&lg->sampler, sampler_cb, (lg->warm_end - lg->t0) / 1000000, period);
	if (sc->load == BT_LOAD_OPEN) {
		lg->next_sched = lg->t0;
		arrivals_cb(&lg->arrivals);
	} else {
		dispatch(lg);
	}
	uv_run(&lg->loop, UV_RUN_DEFAULT);
	uv_close((uv_handle_t *)&lg->arrivals, NULL);
	uv_close((uv_handle_t *)&lg->phase, NULL);
	uv_close((uv_handle_t *)&lg->sampler, NULL);
	uv_run(&lg->loop, UV_RUN_DEFAULT);
	uv_loop_close(&lg->loop);
	summarize(lg);
	free(lg->conns);
	free(lg->free_slots);
	free(lg->pending);
}

/* ---- the daemon under test --------------------------------------------------------- */

static struct bt_stage_config *stage_config(struct bt_config *cfg, const char *name)
{
	for (int i = 0; i < cfg->nstages; i++)
		if (!strcmp(cfg->stages[i].name, name))
			return &cfg->stages[i];
	return NULL;
}

static void want_replicas(struct bt_stage_config *st, int n)
{
	st->replicas_initial = n;
	if (st->replicas_max < n)
		st->replicas_max = n;
	if (st->replicas_min > n)
		st->replicas_min = n;
}

/* In the forked child: the scenario's settings over the config, then serve. */
static int serve_child(struct bt_config *cfg, const struct bt_scenario *sc, int pl, int fd)
{
	char err[1024];
	free(cfg->listen_host);
	cfg->listen_host = bt_strdup("127.0.0.1");
	cfg->listen_port = 0;
	for (int i = 0; sc->replicas_all && i < cfg->pipelines[pl].nstages; i++)
		want_replicas(&cfg->stages[cfg->pipelines[pl].stages[i]], sc->replicas_all);
	for (int i = 0; i < sc->nscale; i++)
		want_replicas(stage_config(cfg, sc->scale[i].stage), sc->scale[i].replicas);
	for (int i = 0; i < sc->nbatch; i++) {
		struct bt_stage_config *st = stage_config(cfg, sc->batch[i].stage);
		st->batch_max_size = sc->batch[i].max_size;
		st->batch_window_ms = (uint64_t)sc->batch[i].window_ms;
	}
	bt_log_threshold = BT_LOG_WARN;
	uv_loop_t loop;
	struct bt_daemon d;
	uv_loop_init(&loop);
	bt_daemon_init(&d, &loop, cfg);
	int code = 0;
	if (bt_daemon_start(&d, err, sizeof(err))) {
		fprintf(stderr, "baton bench: %s\n", err);
		bt_daemon_shutdown(&d);
		d.hard_stop = 1;
		code = 1;
	} else {
		int port = bt_http_port(d.http);
		if (write(fd, &port, sizeof(port)) != sizeof(port))
			code = 1;
	}
	close(fd);
	uv_run(&loop, UV_RUN_DEFAULT);
	bt_daemon_release(&d);
	uv_loop_close(&loop);
	return code;
}

static pid_t daemon_fork(struct bt_config *cfg, const struct bt_scenario *sc, int pl,
			 int *port, char *err, size_t errlen)
{
	int fds[2];
	if (pipe2(fds, O_CLOEXEC)) {
		snprintf(err, errlen, "cannot make a pipe: %s", strerror(errno));
		return -1;
	}
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		snprintf(err, errlen, "cannot fork the daemon: %s", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	if (pid == 0) {
		close(fds[0]);
		/* A bench killed with -9 takes its daemon (and so the workers) along. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		_exit(serve_child(cfg, sc, pl, fds[1]));
	}
	close(fds[1]);
	struct pollfd p = {fds[0], POLLIN, 0};
	ssize_t n = 0;
	if (poll(&p, 1, READY_WAIT_MS) == 1)
		n = read(fds[0], port, sizeof(*port));
	close(fds[0]);
	if (n != sizeof(*port)) {
		snprintf(err, errlen, "the daemon did not start (see its messages above)");
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return -1;
	}
	return pid;
}

/* SIGTERM drains; a daemon still there after the bound is killed. */
static void daemon_stop(pid_t pid)
{
	kill(pid, SIGTERM);
	for (int i = 0; i < 300; i++) {
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return;
		usleep(100 * 1000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

static int resolve(const char *url, struct lg *lg, char *err, size_t errlen)
{
	char host[100], port[16] = "80";
	if (strncmp(url, "http://", 7)) {
		snprintf(err, errlen, "--url '%s': only http:// URLs are supported", url);
		return -1;
	}
	const char *h = url + 7;
	size_t hl = strcspn(h, ":/");
	snprintf(host, sizeof(host), "%.*s", (int)(hl < sizeof(host) ? hl : sizeof(host) - 1), h);
	if (h[hl] == ':')
		snprintf(port, sizeof(port), "%.*s", (int)strcspn(h + hl + 1, "/"), h + hl + 1);
	struct addrinfo hints, *res;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	int e = getaddrinfo(host, port, &hints, &res);
	if (e) {
		snprintf(err, errlen, "cannot resolve '%s': %s", host, gai_strerror(e));
		return -1;
	}
	memcpy(&lg->addr, res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	snprintf(lg->host, sizeof(lg->host), "%s:%s", host, port);
	return 0;
}

static int scale(struct lg *lg, const char *stage, int n, char *err, size_t errlen)
{
	char path[200], body[64];
	struct bt_buf out = BT_BUF_INIT;
	int status = 0;
	snprintf(path, sizeof(path), "/v1/stages/%s/scale", stage);
	snprintf(body, sizeof(body), "{\"replicas\": %d}", n);
	int r = ctl_request(lg, "POST", path, body, &status, &out);
	if (!r && status != 200)
		snprintf(err, errlen, "scaling '%s' to %d was refused: %d %.*s", stage, n, status,
			 (int)BT_MIN(out.len, 300), out.data ? out.data : "");
	else if (r)
		snprintf(err, errlen, "cannot scale '%s': %s", stage, strerror(-r));
	bt_buf_release(&out);
	return r || status != 200 ? -1 : 0;
}

static int wanted(const struct bt_scenario *sc, const char *stage)
{
	int n = sc->replicas_all ? sc->replicas_all : 1;
	for (int i = 0; i < sc->nscale; i++)
		if (!strcmp(sc->scale[i].stage, stage))
			n = sc->scale[i].replicas;
	return n;
}

/* Until every stage of the pipeline has as many replicas ready as wanted. */
static int wait_ready(struct lg *lg, char *err, size_t errlen)
{
	uint64_t deadline = bt_now_ms() + READY_WAIT_MS;
	while (bt_now_ms() < deadline) {
		json_t *doc = get_status(lg);
		int ok = doc != NULL;
		json_t *stages = json_object_get(doc, "stages");
		for (int i = 0; ok && i < lg->nstages; i++) {
			json_t *st = json_object_get(stages, lg->stages[i]), *rep;
			size_t k;
			int up = 0;
			json_array_foreach(json_object_get(st, "replicas"), k, rep) {
				const char *s = json_string_value(json_object_get(rep, "state"));
				up += s && (!strcmp(s, "ready") || !strcmp(s, "busy"));
			}
			ok = up >= wanted(lg->sc, lg->stages[i]);
		}
		if (ok) {
			lg->replicas = count_replicas(lg, doc);
			lg->daemon_pid = (int)json_integer_value(json_object_get(doc, "pid"));
		}
		json_decref(doc);
		if (ok)
			return 0;
		usleep(100 * 1000);
	}
	snprintf(err, errlen, "the pipeline's replicas were not ready within %d s",
		 READY_WAIT_MS / 1000);
	return -1;
}

/* Stage names of the pipeline, from the daemon's status. */
static int pipeline_stages(struct lg *lg, json_t **keep, char *err, size_t errlen)
{
	json_t *doc = get_status(lg);
	json_t *names = json_object_get(json_object_get(json_object_get(doc, "pipelines"),
							lg->sc->pipeline), "stages");
	if (!doc) {
		snprintf(err, errlen, "cannot get /v1/status from %s", lg->host);
		return -1;
	}
	if (!json_is_array(names)) {
		snprintf(err, errlen, "the daemon has no pipeline '%s'", lg->sc->pipeline);
		json_decref(doc);
		return -1;
	}
	lg->nstages = (int)json_array_size(names);
	const char **list = bt_calloc((size_t)lg->nstages + 1, sizeof(char *));
	for (int i = 0; i < lg->nstages; i++)
		list[i] = json_string_value(json_array_get(names, (size_t)i));
	lg->stages = list;
	*keep = doc;
	return 0;
}

/* "FILE:LINE:COL: " of a place in the scenario file; empty for built-in scenarios. */
static const char *at(char *buf, size_t size, const char *file, size_t line, size_t col)
{
	if (line)
		snprintf(buf, size, "%s:%zu:%zu: ", file, line, col);
	else
		buf[0] = '\0';
	return buf;
}

static void run_one(struct bt_config *cfg, const struct bt_scenario_set *set,
		    const struct bt_scenario_options *opt, const char *where,
		    const struct bt_scenario *sc, struct bt_scenario_result *res)
{
	struct lg lg;
	char *err = res->error;
	size_t errlen = sizeof(res->error);
	pid_t pid = -1;
	json_t *keep = NULL;
	char loc[300];
	memset(&lg, 0, sizeof(lg));
	lg.sc = sc;
	lg.set = set;
	lg.res = res;
	lg.token = opt->token;
	snprintf(lg.path, sizeof(lg.path), "/v1/pipelines/%s", sc->pipeline);
	if (opt->url) {
		if (sc->nbatch) {
			snprintf(err, errlen, "%sbatch settings need a daemon baton bench starts (no --url)",
				 at(loc, sizeof(loc), where, sc->batch[0].line, sc->batch[0].col));
			return;
		}
		if (resolve(opt->url, &lg, err, errlen))
			return;
	} else {
		int pl = -1, port = 0;
		for (int i = 0; i < cfg->npipelines; i++)
			if (!strcmp(cfg->pipelines[i].name, sc->pipeline))
				pl = i;
		if (pl < 0) {
			snprintf(err, errlen, "%sno pipeline '%s' in %s",
				 at(loc, sizeof(loc), where, sc->line, sc->col), sc->pipeline, cfg->path);
			return;
		}
		for (int i = 0; i < sc->nbatch; i++)
			if (!stage_config(cfg, sc->batch[i].stage)) {
				snprintf(err, errlen, "%sno stage '%s' in %s",
					 at(loc, sizeof(loc), where, sc->batch[i].line, sc->batch[i].col),
					 sc->batch[i].stage, cfg->path);
				return;
			}
		for (int i = 0; i < sc->nscale; i++)
			if (!stage_config(cfg, sc->scale[i].stage)) {
				snprintf(err, errlen, "%sno stage '%s' in %s",
					 at(loc, sizeof(loc), where, sc->scale[i].line, sc->scale[i].col),
					 sc->scale[i].stage, cfg->path);
				return;
			}
		pid = daemon_fork(cfg, sc, pl, &port, err, errlen);
		if (pid < 0)
			return;
		char url[80];
		snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
		if (resolve(url, &lg, err, errlen))
			goto out;
	}
	if (pipeline_stages(&lg, &keep, err, errlen))
		goto out;
	/* Scaling through the API also turns the stage's autoscaler off (manual). */
	for (int i = 0; sc->replicas_all && i < lg.nstages; i++)
		if (wanted(sc, lg.stages[i]) == sc->replicas_all &&
		    scale(&lg, lg.stages[i], sc->replicas_all, err, errlen))
			goto out;
	for (int i = 0; i < sc->nscale; i++)
		if (scale(&lg, sc->scale[i].stage, sc->scale[i].replicas, err, errlen))
			goto out;
	if (wait_ready(&lg, err, errlen))
		goto out;
	if (opt->url == NULL)
		lg.daemon_pid = pid;
	else if (kill(lg.daemon_pid, 0))
		lg.daemon_pid = 0; /* not on this machine: replicas' RSS alone */
	measure(&lg);
out:
	if (pid > 0)
		daemon_stop(pid);
	bt_buf_release(&lg.lat);
	free((void *)lg.stages);
	json_decref(keep);
}

static void print_result(const struct bt_scenario_result *r)
{
	if (r->error[0]) {
		printf("%-16s error: %s\n", r->sc->name, r->error);
		return;
	}
	char cpu[32] = "-";
	if (isfinite(r->cpu_avg))
		snprintf(cpu, sizeof(cpu), "%.0f/%.0f", r->cpu_avg, r->cpu_max);
	printf("%-16s %4d %8.1f %8llu %7.2f%% %9.2f %9.2f %9.2f %9.2f %9.2f %11s %7.1f %7.3f\n",
	       r->sc->name, r->replicas, r->seconds, (unsigned long long)r->sent,
	       100 * r->success_rate, r->rps, r->lat_avg, r->p50, r->p95, r->p99, cpu,
	       r->rss_max_mb, r->baton_ms);
	fflush(stdout);
}

int bt_scenarios_run(struct bt_config *cfg, const struct bt_scenario_set *set,
		     const struct bt_scenario_options *opt)
{
	struct bt_scenario_result *res = bt_calloc((size_t)set->n, sizeof(*res));
	const char *where = cfg ? cfg->path : "scenarios";
	int code = 0;
	/* A peer that closes while we write must not kill the bench. */
	signal(SIGPIPE, SIG_IGN);
	printf("%-16s %4s %8s %8s %8s %9s %9s %9s %9s %9s %11s %7s %7s\n", "SCENARIO", "REPL",
	       "SECONDS", "REQUESTS", "OK", "REQ/S", "AVG ms", "P50 ms", "P95 ms", "P99 ms",
	       "CPU avg/max", "RSS MB", "BATON ms");
	for (int i = 0; i < set->n; i++) {
		res[i].sc = &set->s[i];
		run_one(cfg, set, opt, opt->scenario_path ? opt->scenario_path : where, &set->s[i],
			&res[i]);
		print_result(&res[i]);
		if (res[i].error[0] || res[i].ok == 0)
			code = 1;
	}
	const char *ext[] = {"json", "csv", "svg"};
	int (*writers[])(const char *, const struct bt_scenario_result *, int) = {
		bt_report_json, bt_report_csv, bt_report_svg};
	for (int k = 0; k < 3; k++) {
		char *path = bt_asprintf("%s.%s", opt->out, ext[k]);
		int r = writers[k](path, res, set->n);
		if (r) {
			fprintf(stderr, "baton bench: cannot write '%s': %s\n", path, strerror(-r));
			code = 1;
		}
		free(path);
	}
	printf("wrote %s.json, %s.csv and %s.svg\n", opt->out, opt->out, opt->out);
	for (int i = 0; i < set->n; i++)
		free(res[i].latency_ms);
	free(res);
	return code;
}
