/*
 * The daemon's periodic work, one tick every interval_ms: read the
 * signals (system CPU, NVML, and, in one pass over /proc on a thread,
 * every replica's process group, but only what a policy, memory_mb or a
 * recent reader needs), enforce memory_mb, retry pending placements, stop
 * drained replicas, and run each stage's scaling policy.  Decisions are
 * recorded in a history.
 */
#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "../proc/proc.h"
#include "daemon.h"

#include "../cluster/cluster.h"

/* ---- GPUs and placement --------------------------------------------------- */

static void gpus_init(struct bt_daemon *d)
{
	const struct bt_config *cfg = d->cfg;
	char err[256];
	if (cfg->gpus_mode != BT_GPUS_NONE) {
		d->nvml = bt_nvml_open(getenv("BATON_NVML_LIBRARY"), err, sizeof(err));
		if (!d->nvml)
			bt_info("no GPU signals", "reason=%s", BT_LOGQ(err));
	}
	if (cfg->gpus_mode == BT_GPUS_LIST) {
		d->ngpus = cfg->ngpus;
		d->gpus = bt_calloc((size_t)d->ngpus, sizeof(*d->gpus));
		for (int i = 0; i < d->ngpus; i++) {
			d->gpus[i].id = cfg->gpus[i].id;
			d->gpus[i].memory_mb = cfg->gpus[i].memory_mb;
		}
	} else if (d->nvml) {
		d->ngpus = bt_nvml_count(d->nvml);
		d->gpus = bt_calloc((size_t)(d->ngpus ? d->ngpus : 1), sizeof(*d->gpus));
		for (int i = 0; i < d->ngpus; i++) {
			struct bt_gpu_sample g;
			d->gpus[i].id = i;
			if (bt_nvml_sample(d->nvml, i, &g) == 0) {
				d->gpus[i].memory_mb = g.mem_total_mb;
				bt_gpu_observe(&d->gpus[i], g.mem_used_mb);
			}
		}
	}
	d->gpu_samples = bt_calloc((size_t)(d->ngpus ? d->ngpus : 1), sizeof(*d->gpu_samples));
	for (int i = 0; i < d->ngpus; i++)
		bt_info("gpu", "id=%d memory_mb=%llu source=%s", d->gpus[i].id,
			(unsigned long long)d->gpus[i].memory_mb,
			cfg->gpus_mode == BT_GPUS_LIST ? "config" : "nvml");
}

static int needs_gpu(const struct bt_stage_config *c)
{
	return c->gpu_fraction > 0 || c->gpu_memory_mb > 0;
}

int bt_daemon_place(struct bt_daemon *d, struct bt_replica *r, char *reason, size_t len)
{
	const struct bt_stage_config *c = r->stage->cfg;
	if (!needs_gpu(c) || r->gpu >= 0)
		return 0;
	int i = bt_place_gpu(d->gpus, d->ngpus, c->gpu_fraction, c->gpu_memory_mb, reason, len);
	if (i < 0)
		return -1;
	d->gpus[i].used_fraction += c->gpu_fraction;
	d->gpus[i].used_mb += c->gpu_memory_mb;
	r->gpu = i;
	return 0;
}

void bt_daemon_unplace(struct bt_daemon *d, struct bt_replica *r)
{
	const struct bt_stage_config *c = r->stage->cfg;
	if (r->gpu < 0)
		return;
	d->gpus[r->gpu].used_fraction -= c->gpu_fraction;
	if (d->gpus[r->gpu].used_fraction < 1e-9)
		d->gpus[r->gpu].used_fraction = 0;
	d->gpus[r->gpu].used_mb -= c->gpu_memory_mb;
	r->gpu = -1;
}

/* ---- scaling ------------------------------------------------------------------ */

int bt_stage_active(const struct bt_stage *st)
{
	int n = 0;
	for (int i = 0; i < st->nreplicas; i++)
		n += st->replicas[i]->active;
	return n;
}

const char *bt_scale_kind_name(enum bt_scale_kind k)
{
	static const char *names[BT_SCALE_KINDS] = {[BT_SCALE_UP] = "up",
						    [BT_SCALE_DOWN] = "down",
						    [BT_SCALE_REFUSED] = "refused",
						    [BT_SCALE_NONE] = "none"};
	return names[k];
}

void bt_daemon_record_scaling(struct bt_daemon *d, struct bt_stage *st, int from, int to,
			      int applied, const char *reason)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	struct bt_scale_event *e = &d->history[d->history_next];
	d->history_next = (d->history_next + 1) % BT_SCALE_HISTORY;
	if (d->history_len < BT_SCALE_HISTORY)
		d->history_len++;
	e->unix_ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
	e->stage = st->cfg->name;
	e->from = from;
	e->to = to;
	e->applied = applied;
	snprintf(e->reason, sizeof(e->reason), "%s", reason);
	/* "auto" and a manual scale to the current count are decisions, not moves. */
	d->scale_counts[!applied    ? BT_SCALE_REFUSED
			: to > from ? BT_SCALE_UP
			: to < from ? BT_SCALE_DOWN
				    : BT_SCALE_NONE]++;
	if (applied)
		bt_info("scaling", "stage=%s from=%d to=%d reason=%s", st->cfg->name, from, to,
			BT_LOGQ(reason));
	else
		bt_warn("not scaling", "stage=%s replicas=%d reason=%s", st->cfg->name, from,
			BT_LOGQ(reason));
}

/* Which replica goes first on scale-down: not serving, then least busy, then newest. */
static int victim_rank(const struct bt_replica *r)
{
	switch (r->state) {
	case BT_REPLICA_PENDING:
		return 0;
	case BT_REPLICA_FAILED:
	case BT_REPLICA_BACKOFF:
		return 1;
	case BT_REPLICA_STARTING:
	case BT_REPLICA_WARMING:
		return 2;
	default:
		return 3;
	}
}

void bt_daemon_scale(struct bt_daemon *d, struct bt_stage *st, int to, const char *reason)
{
	int from = bt_stage_active(st);
	/* Policies keep to [min, max]; an operator may go below min. */
	if (to < 1)
		to = 1;
	if (to > st->cfg->replicas_max)
		to = st->cfg->replicas_max;
	st->target = to;
	if (to == from || d->state != BT_DAEMON_RUNNING)
		return;
	int n = from;
	/* A replica still draining is warm and serving: taking it back is free. */
	for (int i = 0; i < st->nreplicas && n < to; i++) {
		struct bt_replica *r = st->replicas[i];
		if (r->active || r->state != BT_REPLICA_DRAINING || r->source_hold || r->retiring)
			continue;
		r->active = 1;
		r->state = BT_REPLICA_READY;
		n++;
		bt_info("replica drain cancelled", "stage=%s replica=%d", st->cfg->name, r->id);
	}
	for (int i = 0; i < st->nreplicas && n < to; i++) {
		struct bt_replica *r = st->replicas[i];
		/* A free slot: never started, or stopped for good. */
		if (r->active || r->state != BT_REPLICA_EXITED || bt_replica_has_process(r) ||
		    (st->source_ops && !r->station))
			continue;
		r->active = 1;
		r->retiring = 0;
		r->failures = 0;
		n++;
		bt_replica_start(r);
	}
	while (n > to) {
		struct bt_replica *victim = NULL;
		for (int i = st->nreplicas - 1; i >= 0; i--) {
			struct bt_replica *r = st->replicas[i];
			if (!r->active)
				continue;
			if (!victim || victim_rank(r) < victim_rank(victim) ||
			    (victim_rank(r) == victim_rank(victim) && r->ninflight < victim->ninflight))
				victim = r;
		}
		if (!victim)
			break;
		bt_replica_drain(victim);
		n--;
	}
	if (n < to) {
		/* Every slot (replicas.max) holds a replica still stopping. */
		char more[320];
		snprintf(more, sizeof(more), "%s; %d more once stopping replicas have exited", reason,
			 to - n);
		bt_daemon_record_scaling(d, st, from, n, 1, more);
	} else {
		bt_daemon_record_scaling(d, st, from, n, 1, reason);
	}
	bt_stage_replicas_changed(st);
}

/* A slot freed since a scale-up found none: start what the target still lacks. */
static void catch_up(struct bt_daemon *d, struct bt_stage *st)
{
	if (d->state != BT_DAEMON_RUNNING || bt_stage_active(st) >= st->target)
		return;
	for (int i = 0; i < st->nreplicas; i++) {
		struct bt_replica *r = st->replicas[i];
		if (!r->active && r->state == BT_REPLICA_EXITED && !bt_replica_has_process(r)) {
			bt_daemon_scale(d, st, st->target, "a stopped replica freed its slot");
			return;
		}
	}
}

/* ---- the tick ----------------------------------------------------------------- */

/*
 * Test seam (docs/operations.md): BATON_TEST_SIGNALS names a JSON file,
 * re-read every tick, whose "cpu_percent", "gpu_percent" and
 * "latency_p95_s": {stage: seconds} replace the measured signals.  It
 * lets tests drive the headroom policy without loading the machine.
 */
static json_t *test_signals(void)
{
	const char *path = getenv("BATON_TEST_SIGNALS");
	if (!path)
		return NULL;
	json_error_t err;
	return json_load_file(path, 0, &err);
}

/*
 * The busiest GPU the stage's replicas are placed on; before any is
 * placed, the busiest of all (where the next one may land).  Another
 * stage's busy card must not stop this one from growing.
 */
static double stage_gpu_percent(struct bt_daemon *d, const struct bt_stage *st)
{
	if (!needs_gpu(st->cfg) || d->ngpus == 0)
		return -1;
	double max = -1;
	for (int i = 0; i < st->nreplicas; i++) {
		int g = st->replicas[i]->gpu;
		if (g >= 0 && d->gpu_samples[g].util_percent > max)
			max = d->gpu_samples[g].util_percent;
	}
	if (max >= 0)
		return max;
	max = 0;
	for (int i = 0; i < d->ngpus; i++)
		if (d->gpu_samples[i].util_percent > max)
			max = d->gpu_samples[i].util_percent;
	return max;
}

/*
 * resources.memory_mb: the process group of a replica went over it.  A
 * persistent replica is killed and restarts with backoff, its requests
 * retried.  A spawn slot has no process between requests, so only its
 * job's group is killed: the request is then lost like that of any killed
 * script, retried up to `retries` times, then answered worker_crashed.
 */
static void over_memory(struct bt_replica *r, int pid, const struct bt_group_usage *u)
{
	const struct bt_stage_config *c = r->stage->cfg;
	char why[200];
	snprintf(why, sizeof(why),
		 "its processes use %llu MB, over memory_mb %llu (%d processes)",
		 (unsigned long long)(u->rss_bytes >> 20), (unsigned long long)c->memory_mb,
		 u->processes);
	if (r->child) {
		bt_replica_kill(r, BT_FAIL_MEMORY, why);
		return;
	}
	/*
	 * A group that was sent SIGKILL at an earlier tick may still be
	 * exiting (its memory is freed last): count and log it once.
	 */
	if (!r->job || r->memory_killed_pid == pid)
		return;
	r->memory_killed_pid = pid;
	r->stage->failures[BT_FAIL_MEMORY]++;
	bt_warn("killing spawn process", "stage=%s replica=%d pid=%d reason=%s", c->name, r->id,
		pid, BT_LOGQ(why));
	bt_spawn_kill(r, why);
}

/* ---- sampling replicas, off the loop ------------------------------------------- */

/*
 * One pass over /proc per tick at most, run on libuv's thread pool: the
 * scan reads every process's stat file (hundreds with hundreds of
 * replicas), which the loop must not wait for.  Only one scan is ever in
 * flight, and the thread touches nothing but the table; the results are
 * applied to the replicas on the loop, in after_scan.
 */
struct bt_sampler {
	uv_work_t work;
	struct bt_daemon *d;
	struct bt_usage_table table; /* the thread's while busy */
	int err; /* of the last scan */
	uint64_t scan_ns, prev_scan_ns; /* when the last two scans began (uv_hrtime) */
	int busy; /* a scan is in flight */
	int closing; /* the daemon is closing: free, apply nothing */
	int memory_limits; /* some stage has memory_mb: sample at every tick */
};

/* How long a read of /v1/status or /metrics keeps per-replica sampling on. */
#define SIGNALS_LEASE_MS 60000
/*
 * How often per-replica usage is sampled for readers alone (no memory_mb):
 * a pass over /proc costs ~1 % of a core a second with a few hundred
 * processes on a small VM, and a reader's CPU figure is an average anyway.
 */
#define SIGNALS_READER_PERIOD_MS 5000

static void scan_work(uv_work_t *w)
{
	struct bt_sampler *s = w->data;
	s->scan_ns = uv_hrtime();
	s->err = bt_usage_scan(&s->table);
}

static void apply_usage(struct bt_daemon *d, const struct bt_usage_table *t, double secs)
{
	long hz = sysconf(_SC_CLK_TCK);
	for (int i = 0; i < d->nstages; i++) {
		struct bt_stage *st = &d->stages[i];
		for (int j = 0; j < st->nreplicas; j++) {
			struct bt_replica *r = st->replicas[j];
			int pid = bt_replica_pid(r);
			if (!pid) {
				r->cpu_percent = 0;
				r->rss_bytes = 0;
				r->cpu_jiffies = 0;
				r->sampled_pid = 0;
				r->processes = 0;
				continue;
			}
			/*
			 * Containment's view counts what left the process group too
			 * (its cgroup, or what the subreaper tracked); the scan's
			 * process group is the fallback.
			 */
			struct bt_group_usage cu;
			const struct bt_group_usage *u = NULL;
			if (bt_replica_usage(r, &cu) == 0 && cu.processes > 0)
				u = &cu;
			else
				u = bt_usage_find(t, pid);
			/* Started after the scan, or gone before it: nothing to say yet. */
			if (!u)
				continue;
			r->processes = u->processes;
			/* Jiffies of another process (a restart) are no baseline. */
			if (r->sampled_pid == pid && u->cpu_jiffies >= r->cpu_jiffies && secs > 0)
				r->cpu_percent = 100.0 * (double)(u->cpu_jiffies - r->cpu_jiffies) /
						 ((double)hz * secs);
			else
				r->cpu_percent = 0;
			r->sampled_pid = pid;
			r->cpu_jiffies = u->cpu_jiffies;
			r->rss_bytes = u->rss_bytes;
			if (st->cfg->memory_mb && u->rss_bytes > st->cfg->memory_mb << 20)
				over_memory(r, pid, u);
		}
	}
}

static void after_scan(uv_work_t *w, int status)
{
	struct bt_sampler *s = w->data;
	s->busy = 0;
	if (s->closing) {
		bt_usage_table_release(&s->table);
		free(s);
		return;
	}
	if (status || s->err) {
		bt_debug("cannot sample replicas", "error=\"%s\"",
			 bt_strerror(status ? status : s->err));
		return;
	}
	double secs = s->prev_scan_ns ? (double)(s->scan_ns - s->prev_scan_ns) / 1e9 : 0;
	s->prev_scan_ns = s->scan_ns;
	apply_usage(s->d, &s->table, secs);
}

static void scan_start(struct bt_daemon *d)
{
	struct bt_sampler *s = d->sampler;
	if (!s || s->busy || s->closing)
		return;
	s->work.data = s;
	if (uv_queue_work(d->loop, &s->work, scan_work, after_scan) == 0)
		s->busy = 1;
}

static int usage_wanted(const struct bt_daemon *d, uint64_t now)
{
	const struct bt_sampler *s = d->sampler;
	if (s->memory_limits) /* memory_mb is enforced at every tick */
		return 1;
	if (now >= d->signals_wanted_until_ms)
		return 0;
	uint64_t since = (uv_hrtime() - s->prev_scan_ns) / 1000000;
	/* A tick's jitter must not skip a whole period. */
	return !s->prev_scan_ns || since + d->cfg->interval_ms / 2 >= SIGNALS_READER_PERIOD_MS;
}

void bt_daemon_want_signals(struct bt_daemon *d)
{
	uint64_t now = bt_now_ms();
	int was = now < d->signals_wanted_until_ms;
	d->signals_wanted_until_ms = now + SIGNALS_LEASE_MS;
	/* Sampling was off: the next read should not wait a tick for numbers. */
	if (!was && d->sampler)
		scan_start(d);
}

static void stage_signals(struct bt_stage *st, double secs)
{
	struct bt_hist merged;
	bt_hist_init(&merged, bt_hist_seconds, bt_hist_seconds_n);
	for (int i = 0; i < BT_LATENCY_WINDOW; i++) {
		const struct bt_hist *h = &st->latency_window[i];
		for (int b = 0; b <= h->nbounds; b++)
			merged.counts[b] += h->counts[b];
		merged.count += h->count;
		merged.sum += h->sum;
	}
	st->latency_p50_s = merged.count ? bt_hist_quantile(&merged, 0.5) : -1;
	st->latency_p95_s = merged.count ? bt_hist_quantile(&merged, 0.95) : -1;
	st->window_pos = (st->window_pos + 1) % BT_LATENCY_WINDOW;
	bt_hist_init(&st->latency_window[st->window_pos], bt_hist_seconds, bt_hist_seconds_n);
	if (secs > 0)
		st->arrival_rate = (double)(st->entered - st->entered_at_tick) / secs;
	st->entered_at_tick = st->entered;
}

/*
 * Large blocks come from glibc's heap (cmd-serve.c), where a freed one is
 * reused at once by the next large payload (a fresh mapping costs a page
 * fault per 4 KiB written: on this project's VM, ~25 ms per 6 MB), and
 * stays in baton until given back here, at most once a second: when the
 * heap holds 8 MiB or more unused and no request came since the last
 * look, or 64 MiB or more unused and over twice what is in use at two
 * looks in a row (a spike followed by a light load). docs/operations.md,
 * "Memory".
 */
#define GIVE_BACK_QUIET ((size_t)8 << 20)
#define GIVE_BACK_SPIKE ((size_t)64 << 20)

static void give_back_memory(struct bt_daemon *d, uint64_t now)
{
	if (now - d->mem_looked_ms < 1000)
		return;
	d->mem_looked_ms = now;
	struct mallinfo2 mi = mallinfo2();
	size_t unused = mi.fordblks, used = mi.uordblks + mi.hblkhd;
	int quiet = d->next_request_id == d->mem_seen_request_id;
	int spike = unused >= GIVE_BACK_SPIKE && unused / 2 > used;
	d->mem_seen_request_id = d->next_request_id;
	if ((quiet && unused >= GIVE_BACK_QUIET) || (spike && d->mem_spike)) {
		malloc_trim(0);
		spike = 0;
	}
	d->mem_spike = spike;
}

static void housekeeping(struct bt_daemon *d)
{
	for (int i = 0; i < d->nstages; i++) {
		struct bt_stage *st = &d->stages[i];
		for (int j = 0; j < st->nreplicas; j++) {
			struct bt_replica *r = st->replicas[j];
			if (r->state == BT_REPLICA_DRAINING && r->ninflight == 0 && !r->job &&
			    !r->source_hold)
				bt_replica_stop(r, 0);
			else if (r->state == BT_REPLICA_PENDING && r->active && r->pending_reason[0])
				bt_replica_start(r); /* placement is tried again */
		}
		catch_up(d, st);
	}
}

static void autoscale(struct bt_daemon *d, struct bt_stage *st, json_t *overrides)
{
	const struct bt_autoscale_config *c = &st->cfg->autoscale;
	if (st->manual || c->policy == BT_POLICY_NONE)
		return;
	struct bt_scale_input in;
	char place_reason[256] = "";
	memset(&in, 0, sizeof(in));
	in.now_ms = bt_now_ms();
	in.current = bt_stage_active(st);
	in.queued = st->queue.len;
	in.in_flight = st->running;
	if (st->remote && d->cluster) {
		/* A shared queue: this node's share of the cluster's depth (docs/scaleout.md). */
		int nodes = 0;
		long depth = bt_cluster_depth(d->cluster, st, &nodes);
		if (depth >= 0) {
			uint64_t share = ((uint64_t)depth + (uint64_t)BT_MAX(nodes, 1) - 1) /
					 (uint64_t)BT_MAX(nodes, 1);
			in.queued = share > st->running ? share - st->running : 0;
		}
	}
	in.cpu_percent = d->cpu_percent;
	in.gpu_percent = stage_gpu_percent(d, st);
	in.latency_p95_s = st->latency_p95_s;
	in.can_place = !needs_gpu(st->cfg) ||
		       bt_place_gpu(d->gpus, d->ngpus, st->cfg->gpu_fraction,
				    st->cfg->gpu_memory_mb, place_reason, sizeof(place_reason)) >= 0;
	in.place_reason = place_reason;
	if (overrides) {
		json_t *v;
		if ((v = json_object_get(overrides, "cpu_percent")) && json_is_number(v))
			in.cpu_percent = json_number_value(v);
		if ((v = json_object_get(overrides, "gpu_percent")) && json_is_number(v))
			in.gpu_percent = json_number_value(v);
		v = json_object_get(json_object_get(overrides, "latency_p95_s"), st->cfg->name);
		if (json_is_number(v))
			in.latency_p95_s = json_number_value(v);
	}
	struct bt_scale_decision dec;
	if (c->policy == BT_POLICY_DEMAND)
		bt_policy_demand(c, &in, &st->scale_state, &dec);
	else
		bt_policy_headroom(c, &in, &st->scale_state, &dec);
	if (dec.refused)
		bt_daemon_record_scaling(d, st, in.current, in.current, 0, dec.reason);
	else if (dec.to != in.current)
		bt_daemon_scale(d, st, dec.to, dec.reason);
}

static void tick_cb(uv_timer_t *t)
{
	struct bt_daemon *d = t->data;
	uint64_t now = bt_now_ms();
	double secs = d->last_tick_ms ? (double)(now - d->last_tick_ms) / 1000.0 : 0;
	d->last_tick_ms = now;
	/* Policies read system CPU at every tick; status only while someone reads it. */
	struct bt_cpu_counters cpu;
	if ((d->policies || now < d->signals_wanted_until_ms) && bt_read_system_cpu(&cpu) == 0) {
		if (d->cpu_prev.total)
			d->cpu_percent = bt_cpu_percent(&d->cpu_prev, &cpu);
		d->cpu_prev = cpu;
	}
	for (int i = 0; d->nvml && i < d->ngpus; i++) {
		int listed = d->cfg->gpus_mode == BT_GPUS_LIST;
		int dev = listed ? d->gpus[i].id : i;
		/*
		 * A declared memory_mb is the operator's budget for baton; a
		 * detected card's memory is shared with whoever else uses it.
		 */
		if (dev < bt_nvml_count(d->nvml) &&
		    bt_nvml_sample(d->nvml, dev, &d->gpu_samples[i]) == 0 && !listed)
			bt_gpu_observe(&d->gpus[i], d->gpu_samples[i].mem_used_mb);
	}
	json_t *overrides = test_signals();
	if (overrides) {
		json_t *v = json_object_get(overrides, "cpu_percent");
		if (json_is_number(v))
			d->cpu_percent = json_number_value(v);
	}
	int want = usage_wanted(d, now);
	bt_contain_tick(d->contain, want);
	if (want)
		scan_start(d);
	for (int i = 0; i < d->nstages; i++)
		stage_signals(&d->stages[i], secs);
	if (d->state == BT_DAEMON_RUNNING) {
		housekeeping(d);
		for (int i = 0; i < d->nstages; i++)
			if (!d->stages[i].removed)
				autoscale(d, &d->stages[i], overrides);
	}
	json_decref(overrides);
	give_back_memory(d, now);
}

void bt_tick_start(struct bt_daemon *d)
{
	gpus_init(d);
	d->sampler = bt_calloc(1, sizeof(*d->sampler));
	d->sampler->d = d;
	for (int i = 0; i < d->nstages; i++) {
		d->sampler->memory_limits |= d->stages[i].cfg->memory_mb != 0;
		d->policies |= d->stages[i].cfg->autoscale.policy != BT_POLICY_NONE;
	}
	uv_timer_start(&d->tick, tick_cb, d->cfg->interval_ms, d->cfg->interval_ms);
}

void bt_tick_close(struct bt_daemon *d)
{
	uv_close((uv_handle_t *)&d->tick, NULL);
	if (d->sampler) {
		/* A scan in flight keeps the loop alive; its callback frees the sampler. */
		d->sampler->closing = 1;
		if (!d->sampler->busy) {
			bt_usage_table_release(&d->sampler->table);
			free(d->sampler);
		}
		d->sampler = NULL;
	}
	if (d->nvml)
		bt_nvml_close(d->nvml);
	d->nvml = NULL;
}
