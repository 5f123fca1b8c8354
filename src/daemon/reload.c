/*
 * SIGHUP: the config file read again and applied to the running daemon.
 * Validation and a plan come first and change nothing: a file that is not
 * valid, or a change this code cannot apply while serving, is logged and
 * the whole reload refused.  The plan compares each section as written
 * (its JSON) key by key against tables of what may change, so a key or
 * section these tables do not name is refused, never silently ignored.
 * Nothing is freed here: replaced configs and routes stay until the daemon
 * is released, since requests and replicas still point at them.
 */
#include <stdlib.h>
#include <string.h>

#include "../proc/proc.h"
#include "daemon.h"

/* Top-level keys whose new value applies at once: they are read where used. */
static const char *const top_apply[] = {"log_level", "auth", "max_request_bytes",
					"max_payload_bytes", "memfd_min_bytes", NULL};
static const char *const http_apply[] = {"max_buffered_bytes", "write_timeout_s", NULL};
/* Stage keys that need new processes: the replicas are rolled. */
static const char *const stage_roll[] = {"command", "workdir", "venv", "env", "user", "group",
					 NULL};
/* Stage keys read at each use or at the next start: applied in place. */
static const char *const stage_apply[] = {
	"replicas", "queue_max", "timeout_ms", "retries", "start_timeout_ms", "restart", "stop",
	"ping_interval_ms", "ping_timeout_ms", "autoscale", "log_limit", "health_check",
	"setup", "spawn", "warmup", "batch", "resources", NULL};

enum change { SAME, APPLY, ROLL };

static int listed(const char *const *list, const char *k)
{
	for (int i = 0; list[i]; i++)
		if (!strcmp(list[i], k))
			return 1;
	return 0;
}

/* What one comparison found, and why it refused. */
struct cmp {
	char *why;
	size_t whylen;
	json_t *old_top, *new_top;
	const struct bt_stage_config *old, *new; /* the stage being compared */
	enum change change;
};

/*
 * Calls differs(k) for each key whose value is not the same in objects a
 * and b (either may be NULL); stops at the first non-zero return.
 */
static int diff_keys(json_t *a, json_t *b, int (*differs)(const char *k, struct cmp *c),
		     struct cmp *c)
{
	const char *k;
	json_t *v;
	int r;
	json_object_foreach(a, k, v)
		if (!json_equal(v, json_object_get(b, k)) && (r = differs(k, c)))
			return r;
	json_object_foreach(b, k, v)
		if (!json_object_get(a, k) && (r = differs(k, c)))
			return r;
	return 0;
}

static int http_differs(const char *k, struct cmp *c)
{
	if (listed(http_apply, k))
		return 0;
	snprintf(c->why, c->whylen, "'http.%s' cannot change by a reload: restart baton for it", k);
	return -1;
}

static int top_differs(const char *k, struct cmp *c)
{
	if (listed(top_apply, k))
		return 0;
	if (!strcmp(k, "http"))
		return diff_keys(json_object_get(c->old_top, k), json_object_get(c->new_top, k),
				 http_differs, c);
	snprintf(c->why, c->whylen, "'%s' cannot change by a reload: restart baton for it", k);
	return -1;
}

static int stage_differs(const char *k, struct cmp *c)
{
	const struct bt_stage_config *o = c->old, *n = c->new;
	const char *bad = NULL;
	if (listed(stage_roll, k)) {
		/* A spawn stage's processes start per request: the new ones are the new config's. */
		c->change = n->mode == BT_MODE_SPAWN ? BT_MAX(c->change, APPLY) : ROLL;
		return 0;
	}
	if (!listed(stage_apply, k))
		bad = k; /* mode, max_ongoing, priority_levels, and keys not known here */
	else if (!strcmp(k, "batch") && o->batch_max_size != n->batch_max_size)
		bad = "batch.max_size";
	else if (!strcmp(k, "resources") &&
		 (o->gpu_fraction != n->gpu_fraction || o->gpu_memory_mb != n->gpu_memory_mb))
		bad = "resources.gpu and gpu_memory_mb";
	if (bad) {
		snprintf(c->why, c->whylen,
			 "'%s' of stage '%s' cannot change by a reload (its queues, slots or placement are sized by it): restart baton for it",
			 bad, n->name);
		return -1;
	}
	c->change = BT_MAX(c->change, APPLY);
	return 0;
}

/* The stage slot named name: a live one first, else one a reload removed. */
static struct bt_stage *stage_slot(struct bt_daemon *d, const char *name)
{
	struct bt_stage *st = bt_daemon_stage(d, name);
	for (int i = 0; !st && i < d->nstages; i++)
		if (!strcmp(d->stages[i].cfg->name, name))
			st = &d->stages[i];
	return st;
}

static struct bt_pipeline *pipeline_slot(struct bt_daemon *d, const char *name)
{
	for (int i = 0; i < d->npipelines; i++)
		if (!strcmp(d->pipelines[i].cfg->name, name))
			return &d->pipelines[i];
	return NULL;
}

/* Checks everything and sets changes[j] for each stage of nc; -1 with why. */
static int plan(struct bt_daemon *d, const struct bt_config *nc, enum change *changes,
		char *why, size_t whylen)
{
	struct cmp c = {why, whylen, d->cfg->written, nc->written, NULL, NULL, SAME};
	if (diff_keys(d->cfg->written, nc->written, top_differs, &c))
		return -1;
	int new_stages = 0, new_pipelines = 0;
	for (int j = 0; j < nc->nstages; j++) {
		struct bt_stage *st = stage_slot(d, nc->stages[j].name);
		changes[j] = SAME;
		if (!st) {
			if (nc->stages[j].queue_backend == BT_QUEUE_REDIS) {
				snprintf(why, whylen,
					 "new stage '%s' would have its queue in redis, which only a start sets up: restart baton for it",
					 nc->stages[j].name);
				return -1;
			}
			new_stages++;
			continue;
		}
		c.old = st->cfg;
		c.new = &nc->stages[j];
		c.change = SAME;
		if (diff_keys(st->cfg->written, nc->stages[j].written, stage_differs, &c))
			return -1;
		changes[j] = c.change;
		/* A source's replicas are its stream's stations, bound to their slots. */
		if (c.change != SAME && (st->cfg->source || nc->stages[j].source)) {
			snprintf(why, whylen,
				 "stage '%s' is a stream's source: its stations cannot change by a reload (restart baton)",
				 nc->stages[j].name);
			return -1;
		}
	}
	for (int j = 0; j < nc->npipelines; j++)
		new_pipelines += !pipeline_slot(d, nc->pipelines[j].name);
	if (new_stages > d->stages_cap - d->nstages ||
	    new_pipelines > d->pipelines_cap - d->npipelines) {
		snprintf(why, whylen,
			 "reloads have added more stages or pipelines than baton keeps room for (%d each): restart baton",
			 BT_RELOAD_SPARE);
		return -1;
	}
	return 0;
}

/* One more replica slot, stopped (replicas are allocated one by one: the array may move). */
static struct bt_replica *new_slot(struct bt_stage *st)
{
	st->replicas = bt_realloc(st->replicas, (size_t)(st->nreplicas + 1) * sizeof(*st->replicas));
	struct bt_replica *r = bt_replica_new(st, st->nreplicas + 1);
	r->state = BT_REPLICA_EXITED;
	st->replicas[st->nreplicas++] = r;
	return r;
}

/* A slot for one more replica: a free one (stopped for good), else a new one. */
static struct bt_replica *free_slot(struct bt_stage *st)
{
	for (int i = 0; i < st->nreplicas; i++) {
		struct bt_replica *r = st->replicas[i];
		if (!r->active && r->state == BT_REPLICA_EXITED && !bt_replica_has_process(r))
			return r;
	}
	return new_slot(st);
}

/*
 * A changed command or environment: as many new replicas as are active
 * start now; each old one keeps serving until a new one is ready, then
 * drains (bt_reload_advance).
 */
static void roll(struct bt_stage *st)
{
	int n = 0;
	for (int i = 0; i < st->nreplicas; i++) {
		struct bt_replica *r = st->replicas[i];
		if (r->active) {
			r->active = 0;
			r->retiring = 1;
			n++;
		}
	}
	for (int i = 0; i < n; i++) {
		struct bt_replica *r = free_slot(st);
		r->active = 1;
		r->retiring = 0;
		r->failures = 0;
		bt_replica_start(r);
	}
	st->rolling = 1;
	bt_info("rolling replicas", "stage=%s replicas=%d", st->cfg->name, n);
}

/* A stage's replica bounds changed: keep its count within them. */
static void rescale(struct bt_daemon *d, struct bt_stage *st,
		    const struct bt_stage_config *was)
{
	const struct bt_stage_config *c = st->cfg;
	if (was->replicas_initial == c->replicas_initial && was->replicas_min == c->replicas_min &&
	    was->replicas_max == c->replicas_max)
		return;
	while (st->nreplicas < c->replicas_max)
		new_slot(st);
	int active = bt_stage_active(st);
	int to = c->autoscale.policy == BT_POLICY_NONE ? c->replicas_initial
						      : BT_MAX(c->replicas_min, BT_MIN(active, c->replicas_max));
	if (st->manual)
		to = BT_MIN(active, c->replicas_max);
	bt_daemon_scale(d, st, to, "reload: replicas changed");
}

static int same_route(const struct bt_pipeline *pl, const struct bt_config *nc,
		      const struct bt_pipeline_config *pc)
{
	if (pl->nstages != pc->nstages)
		return 0;
	for (int s = 0; s < pc->nstages; s++)
		if (strcmp(pl->stages[s]->cfg->name, nc->stages[pc->stages[s]].name))
			return 0;
	return 1;
}

static void apply(struct bt_daemon *d, struct bt_config *nc, const enum change *changes)
{
	int added = 0, removed = 0, changed = 0, rolled = 0;
	int pl_added = 0, pl_removed = 0, pl_changed = 0;
	d->reloaded = bt_realloc(d->reloaded, (size_t)(d->nreloaded + 1) * sizeof(*d->reloaded));
	d->reloaded[d->nreloaded++] = nc;
	d->cfg = nc;
	bt_log_threshold = nc->log_level;

	for (int i = 0; i < d->nstages; i++) {
		struct bt_stage *st = &d->stages[i];
		if (!st->removed && bt_config_stage_index(nc, st->cfg->name) < 0) {
			st->removed = 1;
			st->rolling = 0;
			removed++;
			bt_info("stage removed", "stage=%s queued=%zu running=%llu", st->cfg->name,
				st->queue.len, (unsigned long long)st->running);
		}
	}
	for (int j = 0; j < nc->nstages; j++) {
		const struct bt_stage_config *sc = &nc->stages[j];
		struct bt_stage *st = stage_slot(d, sc->name);
		if (!st) {
			st = &d->stages[d->nstages];
			bt_stage_init(st, d, d->nstages, sc);
			d->nstages++;
			for (int r = 0; r < st->nreplicas; r++)
				if (st->replicas[r]->active)
					bt_replica_start(st->replicas[r]);
			added++;
			bt_info("stage added", "stage=%s replicas=%d", sc->name, sc->replicas_initial);
			continue;
		}
		const struct bt_stage_config *was = st->cfg;
		int back = st->removed;
		st->cfg = sc;
		st->queue.max = sc->queue_max;
		if (back) {
			/* Removed by an earlier reload and named again: the same slot serves. */
			st->removed = 0;
			added++;
			bt_info("stage added again", "stage=%s", sc->name);
			if (st->retired) {
				st->retired = 0;
				st->target = 0;
				bt_daemon_scale(d, st, sc->replicas_initial, "reload: stage added again");
				continue;
			}
		}
		if (changes[j] == SAME)
			continue;
		changed++;
		rescale(d, st, was);
		if (changes[j] == ROLL) {
			roll(st);
			rolled++;
		}
	}

	for (int i = 0; i < d->npipelines; i++) {
		struct bt_pipeline *pl = &d->pipelines[i];
		if (!pl->removed && bt_config_pipeline_index(nc, pl->cfg->name) < 0) {
			pl->removed = 1;
			pl_removed++;
			bt_info("pipeline removed", "pipeline=%s in_flight=%llu", pl->cfg->name,
				(unsigned long long)pl->in_flight);
		}
	}
	for (int j = 0; j < nc->npipelines; j++) {
		const struct bt_pipeline_config *pc = &nc->pipelines[j];
		struct bt_pipeline *pl = pipeline_slot(d, pc->name);
		if (!pl) {
			pl = &d->pipelines[d->npipelines];
			bt_daemon_pipeline_init(d, pl, d->npipelines, pc);
			d->npipelines++;
			pl_added++;
			bt_info("pipeline added", "pipeline=%s", pc->name);
			continue;
		}
		pl->removed = 0;
		pl->cfg = pc;
		if (same_route(pl, nc, pc))
			continue;
		/* Requests in flight keep the route they were accepted on. */
		d->old_routes = bt_realloc(d->old_routes,
					   (size_t)(d->nold_routes + 1) * sizeof(*d->old_routes));
		d->old_routes[d->nold_routes++] = pl->stages;
		pl->old_in_flight = pl->in_flight;
		pl->nstages = pc->nstages;
		pl->stages = bt_calloc((size_t)pl->nstages, sizeof(*pl->stages));
		for (int s = 0; s < pl->nstages; s++)
			pl->stages[s] = bt_daemon_stage(d, nc->stages[pc->stages[s]].name);
		pl_changed++;
		bt_info("pipeline changed", "pipeline=%s stages=%d", pc->name, pl->nstages);
	}
	for (int i = 0; i < d->nstages; i++)
		if (!d->stages[i].removed)
			bt_stage_replicas_changed(&d->stages[i]);
	bt_info("config reloaded",
		"stages_added=%d stages_removed=%d stages_changed=%d stages_rolled=%d pipelines_added=%d pipelines_removed=%d pipelines_changed=%d",
		added, removed, changed, rolled, pl_added, pl_removed, pl_changed);
	bt_daemon_wake(d);
}

int bt_daemon_reload(struct bt_daemon *d)
{
	struct bt_config *nc = bt_calloc(1, sizeof(*nc));
	char err[1024], q[1100];
	bt_info("reloading the config", "file=%s", bt_logfmt_quote(q, sizeof(q), d->cfg->path,
								   strlen(d->cfg->path)));
	int e = bt_config_load(d->cfg->path, nc, err, sizeof(err));
	if (!e)
		e = bt_config_check_runnable(nc, err, sizeof(err));
	enum change *changes = NULL;
	if (!e) {
		/* What the command line set stays: --listen, and the connection cap. */
		free(nc->listen_host);
		nc->listen_host = bt_strdup(d->cfg->listen_host);
		nc->listen_port = d->cfg->listen_port;
		nc->http_max_connections = d->cfg->http_max_connections;
		changes = bt_calloc((size_t)nc->nstages, sizeof(*changes));
		e = plan(d, nc, changes, err, sizeof(err));
	}
	if (e) {
		bt_error("reload refused: still running the config loaded before", "reason=%s",
			 bt_logfmt_quote(q, sizeof(q), err, strlen(err)));
		bt_config_release(nc);
		free(nc);
		free(changes);
		return BT_ECONFIG;
	}
	apply(d, nc, changes);
	free(changes);
	return 0;
}

/* ---- after the reload: rolls and removals, one step per loop turn ---------- */

static void advance_roll(struct bt_stage *st)
{
	int ready_new = 0, leaving = 0, left = 0;
	for (int i = 0; i < st->nreplicas; i++) {
		const struct bt_replica *r = st->replicas[i];
		ready_new += r->active && r->state == BT_REPLICA_READY;
		leaving += r->retiring && r->state != BT_REPLICA_READY;
	}
	for (int i = 0; i < st->nreplicas; i++) {
		struct bt_replica *r = st->replicas[i];
		if (!r->retiring)
			continue;
		switch (r->state) {
		case BT_REPLICA_READY:
			/* One old replica leaves for each new one ready: capacity never dips. */
			if (leaving < ready_new) {
				leaving++;
				bt_replica_drain(r);
			}
			break;
		case BT_REPLICA_PENDING:
		case BT_REPLICA_STARTING:
		case BT_REPLICA_WARMING:
		case BT_REPLICA_BACKOFF:
		case BT_REPLICA_FAILED:
			bt_replica_stop(r, 0); /* not serving: nothing to wait for */
			break;
		default:
			break;
		}
		left += r->state != BT_REPLICA_EXITED;
	}
	if (!left) {
		for (int i = 0; i < st->nreplicas; i++)
			st->replicas[i]->retiring = 0;
		st->rolling = 0;
		bt_info("replicas rolled", "stage=%s replicas=%d", st->cfg->name, bt_stage_active(st));
	}
}

/* Can a request still come to removed stage st? */
static int reachable(const struct bt_daemon *d, const struct bt_stage *st)
{
	if (st->queue.len || st->running)
		return 1;
	for (int i = 0; i < d->npipelines; i++) {
		const struct bt_pipeline *pl = &d->pipelines[i];
		/* Requests on a replaced route may go anywhere it went: wait for them. */
		if (pl->old_in_flight)
			return 1;
		if (pl->removed && pl->in_flight)
			for (int s = 0; s < pl->nstages; s++)
				if (pl->stages[s] == st)
					return 1;
	}
	return 0;
}

void bt_reload_advance(struct bt_daemon *d)
{
	for (int i = 0; i < d->nstages; i++) {
		struct bt_stage *st = &d->stages[i];
		if (st->rolling)
			advance_roll(st);
		if (st->removed && !st->retired && !reachable(d, st)) {
			st->retired = 1;
			st->target = 0;
			for (int r = 0; r < st->nreplicas; r++) {
				st->replicas[r]->retiring = 0;
				if (st->replicas[r]->state != BT_REPLICA_EXITED)
					bt_replica_drain(st->replicas[r]);
			}
			bt_info("stage retired: no request can reach it", "stage=%s", st->cfg->name);
		}
	}
}
