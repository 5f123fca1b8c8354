/*
 * The daemon's wiring and its lifecycle: build stages and pipelines from
 * the config, start the ingress and replicas, run the once-per-loop-turn
 * flush, and walk the shutdown sequence (drain → stop replicas → close)
 * one step at a time from the flush, never from inside a callback that
 * may still be using what a step would free.
 */
#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "../grpc/grpc.h"
#include "../cluster/cluster.h"
#include "../http/http.h"
#include "../proc/proc.h"
#include "../stream/stream.h"

static const struct bt_grpc_ops grpc_ops; /* below, with the functions it names */

#ifndef BATON_VERSION
#define BATON_VERSION "0.0.0"
#endif

static void flush_cb(uv_handle_t *h);

static void prepare_cb(uv_prepare_t *p)
{
	flush_cb((uv_handle_t *)p);
}

static void check_cb(uv_check_t *c)
{
	flush_cb((uv_handle_t *)c);
}

static void idle_cb(uv_idle_t *i)
{
	(void)i; /* its only job is to keep the next poll from blocking */
}

static void sighup_cb(uv_signal_t *s, int signum)
{
	struct bt_daemon *d = s->data;
	(void)signum;
	if (d->no_http) {
		bt_info("SIGHUP ignored: baton run does not reload its config", "%s", "");
		return;
	}
	if (d->state != BT_DAEMON_RUNNING) {
		bt_info("SIGHUP ignored: baton is stopping", "%s", "");
		return;
	}
	bt_daemon_reload(d);
}

static void signal_cb(uv_signal_t *s, int signum)
{
	struct bt_daemon *d = s->data;
	if (d->state == BT_DAEMON_RUNNING) {
		bt_info("shutting down", "signal=%s in_flight=%llu", BT_LOGQ(strsignal(signum)),
			(unsigned long long)d->in_flight);
		bt_daemon_shutdown(d);
		return;
	}
	if (!d->hard_stop) {
		bt_warn("second signal: stopping now", "signal=%s in_flight=%llu",
			BT_LOGQ(strsignal(signum)), (unsigned long long)d->in_flight);
		d->hard_stop = 1;
		bt_daemon_progress(d);
	}
}

void bt_daemon_init(struct bt_daemon *d, uv_loop_t *loop, struct bt_config *cfg)
{
	memset(d, 0, sizeof(*d));
	d->loop = loop;
	d->cfg = cfg;
	d->started_ms = bt_now_ms();
	bt_heap_init(&d->deadlines);
	uv_timer_init(loop, &d->deadline_timer);
	d->deadline_timer.data = d;
	uv_timer_init(loop, &d->tick);
	d->tick.data = d;
	uv_timer_init(loop, &d->starter);
	d->starter.data = d;
	uv_prepare_init(loop, &d->prepare);
	uv_check_init(loop, &d->check);
	uv_idle_init(loop, &d->idle);
	uv_signal_init(loop, &d->sigterm);
	uv_signal_init(loop, &d->sigint);
	uv_signal_init(loop, &d->sighup);
	d->prepare.data = d->check.data = d->idle.data = d;
	d->sigterm.data = d->sigint.data = d->sighup.data = d;

	/* Room for what reloads add: slots never move, see struct bt_daemon. */
	d->nstages = cfg->nstages;
	d->stages_cap = cfg->nstages + BT_RELOAD_SPARE;
	d->stages = bt_calloc((size_t)d->stages_cap, sizeof(*d->stages));
	for (int i = 0; i < d->nstages; i++)
		bt_stage_init(&d->stages[i], d, i, &cfg->stages[i]);
	d->npipelines = cfg->npipelines;
	d->pipelines_cap = cfg->npipelines + BT_RELOAD_SPARE;
	d->pipelines = bt_calloc((size_t)d->pipelines_cap, sizeof(*d->pipelines));
	for (int i = 0; i < d->npipelines; i++)
		bt_daemon_pipeline_init(d, &d->pipelines[i], i, &cfg->pipelines[i]);
}

void bt_daemon_pipeline_init(struct bt_daemon *d, struct bt_pipeline *pl, int index,
			     const struct bt_pipeline_config *cfg)
{
	pl->d = d;
	pl->index = index;
	pl->cfg = cfg;
	pl->nstages = cfg->nstages;
	bt_hist_init(&pl->duration_hist, bt_hist_seconds, bt_hist_seconds_n);
	pl->stages = bt_calloc((size_t)pl->nstages, sizeof(*pl->stages));
	for (int s = 0; s < pl->nstages; s++)
		pl->stages[s] = bt_daemon_stage(d, d->cfg->stages[cfg->stages[s]].name);
}

/*
 * Descriptors: the soft limit is raised to the hard one (systemd's soft
 * default of 1024 is for select() users; baton uses epoll), and HTTP
 * connections get what is left after a reserve for baton itself, every
 * replica (channel, stdout, stderr, and a spawn's transient ones) and the
 * files it opens.  Idle clients can then never take the descriptors a
 * replica needs to restart.
 */
#define FD_RESERVE_BASE 64 /* loop, signals, epoll, listener, log, config, /proc reads */
#define FD_PER_REPLICA 8

static int fd_budget(struct bt_daemon *d, char *err, size_t errlen)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl))
		return 0;
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t was = rl.rlim_cur;
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
			bt_debug("raised the descriptor limit", "from=%llu to=%llu",
				 (unsigned long long)was, (unsigned long long)rl.rlim_max);
		else
			getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (d->no_http || rl.rlim_cur == RLIM_INFINITY)
		return 0;
	uint64_t reserve = FD_RESERVE_BASE;
	for (int i = 0; i < d->nstages; i++)
		reserve += FD_PER_REPLICA * (uint64_t)d->stages[i].cfg->replicas_max;
	uint64_t limit = rl.rlim_cur;
	if (limit < reserve + 8) {
		snprintf(err, errlen,
			 "the descriptor limit (%llu, ulimit -n) leaves no room for HTTP connections: %llu are kept for replicas and files",
			 (unsigned long long)limit, (unsigned long long)reserve);
		return BT_ECONFIG;
	}
	if (d->cfg->http_max_connections > limit - reserve) {
		bt_warn("http.max_connections lowered to fit the descriptor limit",
			"max_connections=%llu configured=%u fd_limit=%llu reserved=%llu",
			(unsigned long long)(limit - reserve), d->cfg->http_max_connections,
			(unsigned long long)limit, (unsigned long long)reserve);
		d->cfg->http_max_connections = (unsigned)(limit - reserve);
	}
	return 0;
}

/*
 * A spawn waits until the child's exec has begun (bt_process_spawn: a
 * vfork), a few milliseconds on a loaded machine where the child waits for
 * a core.  With hundreds of replicas, starting them all in one callback
 * would leave the loop, HTTP and /v2/health/live included, deaf for a
 * second; so they are started a few per loop turn, and those already
 * ready serve meanwhile.  A replica not started yet is pending with no
 * reason.
 */
#define STARTS_PER_TURN 4

static void starter_cb(uv_timer_t *t)
{
	struct bt_daemon *d = t->data;
	int started = 0;
	while (d->state == BT_DAEMON_RUNNING && d->start_stage < d->nstages) {
		struct bt_stage *st = &d->stages[d->start_stage];
		if (d->start_replica >= st->nreplicas) {
			d->start_stage++;
			d->start_replica = 0;
			continue;
		}
		if (started == STARTS_PER_TURN) {
			/*
			 * 1 ms, not 0: libuv runs a timer re-armed for "now" again in
			 * the same pass, before any I/O.
			 */
			uv_timer_start(&d->starter, starter_cb, 1, 0);
			return;
		}
		struct bt_replica *r = st->replicas[d->start_replica++];
		/* Scaling may have taken it away or started it already. */
		if (r->active && r->state == BT_REPLICA_PENDING && !r->starts &&
		    !r->pending_reason[0] && !bt_replica_has_process(r)) {
			bt_replica_start(r);
			started++;
		}
	}
}

static int cluster_draining(void *arg)
{
	const struct bt_daemon *d = arg;
	return d->state != BT_DAEMON_RUNNING;
}

/* An IPv6 address goes in brackets in the logged HOST:PORT, so that it pastes into a URL. */
static const char *v6(const char *host)
{
	return strchr(host, ':') ? "[" : "";
}

static const char *v6_end(const char *host)
{
	return strchr(host, ':') ? "]" : "";
}

int bt_daemon_start(struct bt_daemon *d, char *err, size_t errlen)
{
	int fe = fd_budget(d, err, errlen);
	if (fe)
		return fe;
	/* The flush runs the shutdown sequence too, so it starts first. */
	uv_prepare_start(&d->prepare, prepare_cb);
	uv_check_start(&d->check, check_cb);
	int ce = bt_contain_open(d->loop, d->cfg->cgroup, &d->contain, err, errlen);
	if (ce)
		return ce;
	if (bt_config_uses_redis(d->cfg)) {
		struct bt_cluster_hooks hooks = {cluster_draining, d};
		int e = bt_cluster_new(d->loop, d->cfg, d->stages, d->nstages, &hooks, &d->cluster,
				       err, errlen);
		if (e)
			return e;
	}
	if (!d->no_streams) {
		int e = bt_streams_new(d->loop, d->cfg, d->stages, d->pipelines, &d->streams, err,
				       errlen);
		if (e)
			return e;
	}
	if (!d->no_http) {
		int e = bt_http_start(d, &d->http, err, errlen);
		if (e)
			return e;
	}
	if (!d->no_http && d->cfg->grpc_listen_host) {
		int e = bt_grpc_start(d->loop, &d->cfg, &grpc_ops, d, &d->grpc, err, errlen);
		if (e)
			return e;
		bt_info("listening for gRPC", "addr=%s%s%s:%d", v6(d->cfg->grpc_listen_host),
			d->cfg->grpc_listen_host, v6_end(d->cfg->grpc_listen_host),
			bt_grpc_port(d->grpc));
	}
	uv_signal_start(&d->sigterm, signal_cb, SIGTERM);
	uv_signal_start(&d->sigint, signal_cb, SIGINT);
	uv_signal_start(&d->sighup, sighup_cb, SIGHUP);
	if (d->http)
		bt_info("listening", "addr=%s%s%s:%d pid=%d stages=%d pipelines=%d",
			v6(d->cfg->listen_host), d->cfg->listen_host, v6_end(d->cfg->listen_host),
			bt_http_port(d->http), (int)getpid(), d->nstages, d->npipelines);
	bt_tick_start(d);
	starter_cb(&d->starter);
	bt_streams_start(d->streams);
	return 0;
}

/* ---- what the gRPC ingress needs of the daemon ---- */

static struct bt_pipeline *grpc_pipeline(void *arg, const char *name)
{
	return bt_daemon_pipeline(arg, name);
}

static int grpc_server_ready(void *arg)
{
	return bt_daemon_ready(arg);
}

/* As GET /v2/models/{m}/ready: each stage up and not failed. */
static int grpc_model_ready(void *arg, struct bt_pipeline *pl)
{
	const struct bt_daemon *d = arg;
	if (d->state != BT_DAEMON_RUNNING)
		return 0;
	for (int i = 0; i < pl->nstages; i++)
		if (pl->stages[i]->failed || !pl->stages[i]->up)
			return 0;
	return 1;
}

static void grpc_wake(void *arg)
{
	bt_daemon_wake(arg);
}

static void grpc_progress(void *arg)
{
	bt_daemon_progress(arg);
}

static const struct bt_grpc_ops grpc_ops = {grpc_pipeline, grpc_server_ready, grpc_model_ready,
					    grpc_wake, grpc_progress};

void bt_daemon_wake(struct bt_daemon *d)
{
	if (!d->flush_pending) {
		d->flush_pending = 1;
		if (d->state != BT_DAEMON_CLOSING)
			uv_idle_start(&d->idle, idle_cb);
	}
}

void bt_daemon_shutdown(struct bt_daemon *d)
{
	if (d->state == BT_DAEMON_RUNNING) {
		d->state = BT_DAEMON_DRAINING;
		bt_streams_drain(d->streams);
		bt_daemon_progress(d);
	}
}

void bt_daemon_progress(struct bt_daemon *d)
{
	if (d->state != BT_DAEMON_RUNNING)
		bt_daemon_wake(d);
}

static void close_all(struct bt_daemon *d)
{
	d->state = BT_DAEMON_CLOSING;
	if (d->http)
		bt_http_close(d->http);
	d->http = NULL;
	bt_grpc_close(d->grpc);
	d->grpc = NULL;
	bt_streams_close(d->streams);
	d->streams = NULL;
	bt_cluster_close(d->cluster);
	for (int i = 0; i < d->nstages; i++)
		bt_stage_close(&d->stages[i]);
	uv_close((uv_handle_t *)&d->deadline_timer, NULL);
	bt_tick_close(d);
	uv_close((uv_handle_t *)&d->starter, NULL);
	uv_close((uv_handle_t *)&d->prepare, NULL);
	uv_close((uv_handle_t *)&d->check, NULL);
	uv_close((uv_handle_t *)&d->idle, NULL);
	uv_close((uv_handle_t *)&d->sigterm, NULL);
	uv_close((uv_handle_t *)&d->sigint, NULL);
	uv_close((uv_handle_t *)&d->sighup, NULL);
	/*
	 * libuv restored the default actions: a late signal would now kill a
	 * daemon that is already on its way out with status 0.
	 */
	signal(SIGTERM, SIG_IGN);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
}

/* One step of the shutdown sequence, taken from the flush. */
static void advance_shutdown(struct bt_daemon *d)
{
	if (d->state == BT_DAEMON_DRAINING && d->hard_stop) {
		if (d->cluster)
			bt_cluster_fail_waiting(d->cluster, BT_SHUTTING_DOWN,
						"baton stopped before the cluster answered");
		for (int i = 0; i < d->nstages; i++)
			bt_stage_fail_queued(&d->stages[i], BT_SHUTTING_DOWN,
					     "baton stopped before the request ran");
		for (int i = 0; i < d->nstages; i++)
			for (int r = 0; r < d->stages[i].nreplicas; r++)
				bt_replica_stop(d->stages[i].replicas[r], 1);
	}
	/* Stations finish their open sessions before anything stops. */
	if (d->state == BT_DAEMON_DRAINING && d->in_flight == 0 &&
	    (d->hard_stop || !bt_streams_busy(d->streams))) {
		d->state = BT_DAEMON_STOPPING;
		bt_info("stopping replicas", "live=%u", d->live_children);
		for (int i = 0; i < d->nstages; i++)
			for (int r = 0; r < d->stages[i].nreplicas; r++)
				bt_replica_stop(d->stages[i].replicas[r], d->hard_stop);
	}
	if (d->state == BT_DAEMON_STOPPING && d->hard_stop) {
		for (int i = 0; i < d->nstages; i++)
			for (int r = 0; r < d->stages[i].nreplicas; r++)
				if (d->stages[i].replicas[r]->state == BT_REPLICA_STOPPING)
					bt_replica_stop(d->stages[i].replicas[r], 1);
	}
	if (d->state == BT_DAEMON_STOPPING && d->live_children == 0 &&
	    bt_http_pending(d->http) == 0 && bt_grpc_pending(d->grpc) == 0) {
		/* What replicas left behind, setsid() or not, ends before baton says so. */
		int left = bt_contain_stop(d->contain);
		bt_info("stopped", "uptime_s=%llu processes_left=%d",
			(unsigned long long)((bt_now_ms() - d->started_ms) / 1000), left);
		close_all(d);
	}
}

static void flush_cb(uv_handle_t *h)
{
	struct bt_daemon *d = h->data;
	int rounds = 0;
	while (d->flush_pending && d->state != BT_DAEMON_CLOSING && rounds++ < 16) {
		d->flush_pending = 0;
		bt_sched_flush(d);
		if (d->state == BT_DAEMON_RUNNING)
			bt_reload_advance(d);
		bt_proc_flush(d);
		bt_http_flush(d->http);
		bt_grpc_flush(d->grpc);
		if (d->on_idle && d->state < BT_DAEMON_CLOSING)
			d->on_idle(d, d->on_idle_arg);
		if (d->state != BT_DAEMON_RUNNING)
			advance_shutdown(d);
	}
	if (!d->flush_pending && d->state != BT_DAEMON_CLOSING)
		uv_idle_stop(&d->idle);
}

void bt_daemon_release(struct bt_daemon *d)
{
	for (int i = 0; i < d->npipelines; i++)
		free(d->pipelines[i].stages);
	free(d->pipelines);
	for (int i = 0; i < d->nstages; i++) {
		free(d->stages[i].replicas);
		free(d->stages[i].scratch);
	}
	free(d->stages);
	bt_heap_release(&d->deadlines);
	free(d->gpus);
	free(d->gpu_samples);
	bt_contain_free(d->contain);
	bt_cluster_free(d->cluster);
	for (int i = 0; i < d->nreloaded; i++) {
		bt_config_release(d->reloaded[i]);
		free(d->reloaded[i]);
	}
	free(d->reloaded);
	for (int i = 0; i < d->nold_routes; i++)
		free(d->old_routes[i]);
	free(d->old_routes);
	memset(d, 0, sizeof(*d));
}

struct bt_pipeline *bt_daemon_pipeline(struct bt_daemon *d, const char *name)
{
	for (int i = 0; i < d->npipelines; i++)
		if (!d->pipelines[i].removed && !strcmp(d->pipelines[i].cfg->name, name))
			return &d->pipelines[i];
	return NULL;
}

struct bt_stage *bt_daemon_stage(struct bt_daemon *d, const char *name)
{
	for (int i = 0; i < d->nstages; i++)
		if (!d->stages[i].removed && !strcmp(d->stages[i].cfg->name, name))
			return &d->stages[i];
	return NULL;
}

int bt_daemon_ready(const struct bt_daemon *d)
{
	if (d->state != BT_DAEMON_RUNNING)
		return 0;
	/*
	 * Like a model's readiness: loaded once, not failed since, and a
	 * replica serving now (a stage whose every replica is restarting
	 * cannot answer; one scaled to none starts on demand).
	 */
	for (int i = 0; i < d->nstages; i++) {
		const struct bt_stage *st = &d->stages[i];
		if (st->removed)
			continue;
		if (st->failed || !st->up)
			return 0;
		int live = 0, active = 0;
		for (int r = 0; r < st->nreplicas && !live; r++) {
			active += st->replicas[r]->active;
			live = st->replicas[r]->state == BT_REPLICA_READY;
		}
		if (!live && active)
			return 0;
	}
	return 1;
}

static const char *daemon_state_name(enum bt_daemon_state s)
{
	static const char *names[] = {"running", "draining", "stopping", "closing"};
	return names[s];
}

static json_t *replica_status(const struct bt_replica *r, uint64_t now)
{
	const char *state = bt_replica_state_name(r->state);
	if (r->state == BT_REPLICA_READY && r->ninflight > 0)
		state = "busy";
	json_t *o = json_pack("{s:i, s:s, s:i, s:i, s:i, s:i}", "id", r->id, "state",
			      state, "pid", bt_replica_pid(r), "in_flight", r->ninflight,
			      "restarts", (int)r->restarts, "failures", r->failures);
	json_object_set_new(o, "uptime_s",
			    json_real(r->ready_ms ? (double)(now - r->ready_ms) / 1000.0 : 0.0));
	json_object_set_new(o, "last_exit", r->last_exit[0] ? json_string(r->last_exit)
							   : json_null());
	json_object_set_new(o, "cpu_percent", json_real(r->cpu_percent));
	json_object_set_new(o, "rss_bytes", json_integer((json_int_t)r->rss_bytes));
	json_object_set_new(o, "processes", json_integer(r->processes));
	json_object_set_new(o, "gpu", r->gpu >= 0 ? json_integer(r->stage->d->gpus[r->gpu].id)
						  : json_null());
	if (r->state == BT_REPLICA_PENDING && r->pending_reason[0])
		json_object_set_new(o, "pending_reason", json_string(r->pending_reason));
	return o;
}

/*
 * A stage's state as an operator needs it: "ok" while a replica can take
 * requests, else why not ("starting", "pending", "backoff", "failed"), with
 * a reason in why (size bytes, "" when none): how the last process ended
 * and the last line a worker wrote to stderr since a replica was last ready.
 */
static const char *stage_state(const struct bt_stage *st, char *why, size_t size)
{
	int starting = 0, backoff = 0, pending = 0, active = 0;
	const char *exit = NULL, *state;
	why[0] = '\0';
	for (int i = 0; i < st->nreplicas; i++) {
		const struct bt_replica *r = st->replicas[i];
		if (!r->active)
			continue;
		active++;
		if (!st->failed && (r->state == BT_REPLICA_READY ||
				    (st->cfg->mode == BT_MODE_SPAWN && r->state != BT_REPLICA_FAILED &&
				     r->state != BT_REPLICA_BACKOFF)))
			return "ok";
		starting += r->state == BT_REPLICA_STARTING || r->state == BT_REPLICA_WARMING;
		pending += r->state == BT_REPLICA_PENDING;
		backoff += r->state == BT_REPLICA_BACKOFF;
		if (r->last_exit[0])
			exit = r->last_exit;
	}
	if (st->failed)
		state = "failed";
	else if (active == 0)
		return "ok"; /* scaled to zero on purpose */
	else if (backoff)
		state = "backoff";
	else if (pending && !starting)
		return "pending"; /* the replicas say why (pending_reason) */
	else
		return "starting"; /* still loading: nothing has gone wrong */
	snprintf(why, size, "%s%s%s", exit ? exit : "", exit && st->last_stderr[0] ? ": " : "",
		 st->last_stderr);
	return state;
}

json_t *bt_daemon_status(struct bt_daemon *d)
{
	uint64_t now = bt_now_ms();
	bt_daemon_want_signals(d);
	uint64_t accepted = 0, succeeded = 0, failed = 0;
	json_t *stages = json_object();
	for (int i = 0; i < d->nstages; i++) {
		struct bt_stage *st = &d->stages[i];
		if (st->removed)
			continue;
		json_t *reps = json_array();
		/* Slots never used, or scaled away and stopped, are not shown. */
		for (int r = 0; r < st->nreplicas; r++)
			if (st->replicas[r]->active || st->replicas[r]->state != BT_REPLICA_EXITED)
				json_array_append_new(reps, replica_status(st->replicas[r], now));
		json_object_set_new(
			stages, st->cfg->name,
			json_pack("{s:s, s:I, s:I, s:I, s:i, s:I, s:I, s:I, s:o}", "state",
				  st->failed ? "failed" : "ok", "queued", (json_int_t)st->queue.len,
				  "queue_max", (json_int_t)st->cfg->queue_max, "running",
				  (json_int_t)st->running, "max_ongoing", st->cfg->max_ongoing,
				  "completed", (json_int_t)st->completed, "errors",
				  (json_int_t)st->errors, "retried", (json_int_t)st->retried,
				  "replicas", reps));
		json_t *sj = json_object_get(stages, st->cfg->name);
		char why[BT_LINES_LAST + 200];
		const char *state = stage_state(st, why, sizeof(why));
		json_object_set_new(sj, "state", json_string(state));
		json_object_set_new(sj, "serving", json_boolean(!strcmp(state, "ok")));
		json_object_set_new(sj, "reason", why[0] ? json_string(why) : json_null());
		static const char *policies[] = {"none", "demand", "headroom"};
		json_object_set_new(sj, "scaling",
				    json_pack("{s:i, s:i, s:i, s:i, s:s, s:b}", "active",
					      bt_stage_active(st), "target", st->target, "min",
					      st->cfg->replicas_min, "max", st->cfg->replicas_max,
					      "policy", policies[st->cfg->autoscale.policy], "manual",
					      st->manual));
		json_object_set_new(sj, "signals",
				    json_pack("{s:f, s:o, s:o}", "arrival_rate", st->arrival_rate,
					      "latency_p50_s",
					      st->latency_p50_s >= 0 ? json_real(st->latency_p50_s)
								     : json_null(),
					      "latency_p95_s",
					      st->latency_p95_s >= 0 ? json_real(st->latency_p95_s)
								     : json_null()));
	}
	json_t *pipelines = json_object();
	for (int i = 0; i < d->npipelines; i++) {
		struct bt_pipeline *pl = &d->pipelines[i];
		if (pl->removed) {
			/* Not shown, but its requests count: accepted = succeeded + failed + in flight. */
			accepted += pl->accepted;
			succeeded += pl->succeeded;
			for (int c = 1; c < BT_CODE_COUNT; c++)
				failed += pl->failed[c];
			continue;
		}
		json_t *names = json_array();
		for (int s = 0; s < pl->nstages; s++)
			json_array_append_new(names, json_string(pl->stages[s]->cfg->name));
		json_t *fails = json_object();
		uint64_t nfailed = 0;
		for (int c = 1; c < BT_CODE_COUNT; c++) {
			if (!pl->failed[c])
				continue;
			json_t *prev = json_object_get(fails, bt_code_name((enum bt_code)c));
			json_int_t v = (prev ? json_integer_value(prev) : 0) + (json_int_t)pl->failed[c];
			json_object_set_new(fails, bt_code_name((enum bt_code)c), json_integer(v));
			nfailed += pl->failed[c];
		}
		json_object_set_new(
			pipelines, pl->cfg->name,
			json_pack("{s:o, s:I, s:I, s:I, s:I, s:I, s:o}", "stages", names,
				  "in_flight", (json_int_t)pl->in_flight, "max_inflight",
				  (json_int_t)pl->cfg->max_inflight, "accepted",
				  (json_int_t)pl->accepted, "succeeded", (json_int_t)pl->succeeded,
				  "failed", (json_int_t)nfailed, "failures", fails));
		accepted += pl->accepted;
		succeeded += pl->succeeded;
		failed += nfailed;
	}
	json_t *doc = json_pack("{s:s, s:s, s:i, s:s, s:b}", "version", BATON_VERSION, "state",
				daemon_state_name(d->state), "pid", (int)getpid(), "config",
				d->cfg->path, "ready", bt_daemon_ready(d));
	json_object_set_new(doc, "uptime_s", json_real((double)(now - d->started_ms) / 1000.0));
	json_object_set_new(doc, "requests",
			    json_pack("{s:I, s:I, s:I, s:I}", "accepted", (json_int_t)accepted,
				      "succeeded", (json_int_t)succeeded, "failed",
				      (json_int_t)failed, "in_flight", (json_int_t)d->in_flight));
	json_object_set_new(doc, "stages", stages);
	json_object_set_new(doc, "pipelines", pipelines);
	json_object_set_new(doc, "http",
			    json_pack("{s:I, s:I, s:I}", "buffered_bytes",
				      (json_int_t)bt_http_buffered(d->http), "max_buffered_bytes",
				      (json_int_t)d->cfg->http_max_buffered_bytes,
				      "max_connections", (json_int_t)d->cfg->http_max_connections));
	json_object_set_new(doc, "cpu_percent", json_real(d->cpu_percent));
	if (d->contain)
		json_object_set_new(doc, "containment", bt_contain_status(d->contain));
	json_t *gpus = json_array();
	for (int i = 0; i < d->ngpus; i++) {
		json_t *g = json_pack("{s:i, s:I, s:f, s:I}", "id", d->gpus[i].id, "memory_mb",
				      (json_int_t)d->gpus[i].memory_mb, "placed_fraction",
				      d->gpus[i].used_fraction, "placed_memory_mb",
				      (json_int_t)d->gpus[i].used_mb);
		json_object_set_new(g, "external_memory_mb",
				    json_integer((json_int_t)d->gpus[i].external_mb));
		if (d->nvml) {
			json_object_set_new(g, "util_percent",
					    json_integer(d->gpu_samples[i].util_percent));
			json_object_set_new(g, "memory_used_mb",
					    json_integer((json_int_t)d->gpu_samples[i].mem_used_mb));
		}
		json_array_append_new(gpus, g);
	}
	json_object_set_new(doc, "gpus", gpus);
	json_t *hist = json_array();
	for (int i = 0; i < d->history_len; i++) {
		int idx = (d->history_next - d->history_len + i + BT_SCALE_HISTORY) % BT_SCALE_HISTORY;
		const struct bt_scale_event *e = &d->history[idx];
		json_array_append_new(hist, json_pack("{s:f, s:s, s:i, s:i, s:b, s:s}", "time",
						      (double)e->unix_ms / 1000.0, "stage", e->stage,
						      "from", e->from, "to", e->to, "applied",
						      e->applied, "reason", e->reason));
	}
	json_object_set_new(doc, "scaling_history", hist);
	if (d->streams)
		json_object_set_new(doc, "streams", bt_streams_status(d->streams));
	if (d->cluster)
		json_object_set_new(doc, "cluster", bt_cluster_status(d->cluster));
	return doc;
}
