/*
 * The life of a request: admission, a queue per stage, dispatch, the
 * result or the loss of its replica, the next stage, and finally exactly
 * one call of its done callback.  Every path that ends a request goes
 * through finish(), which keeps accepted = succeeded + failed + in flight.
 */
#include "sched.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "../daemon/daemon.h"
#include "../proc/proc.h"

static struct bt_request *from_qlink(struct bt_qlink *l)
{
	return bt_container_of(l, struct bt_request, qlink);
}

static struct bt_stage *stage_of(const struct bt_request *req)
{
	return req->route[req->step];
}

struct bt_request *bt_request_new(struct bt_pipeline *pl, char *payload,
				  size_t len, json_t *meta)
{
	struct bt_request *req = bt_calloc(1, sizeof(*req));
	req->id = ++pl->d->next_request_id;
	snprintf(req->idstr, sizeof(req->idstr), "r%llu", (unsigned long long)req->id);
	req->pipeline = pl;
	req->route = pl->stages;
	req->nroute = pl->nstages;
	req->payload = payload;
	req->len = len;
	req->payload_fd = -1;
	req->meta = meta ? meta : json_object();
	/* baton's keys, whatever the client sent: only baton's warm-ups carry "warmup". */
	json_object_set_new(req->meta, "pipeline", json_string(pl->cfg->name));
	json_object_del(req->meta, "warmup");
	req->state = BT_REQ_NEW;
	bt_qlink_init(&req->qlink);
	bt_heap_node_init(&req->deadline);
	req->timings = bt_calloc((size_t)pl->nstages, sizeof(*req->timings));
	return req;
}

void bt_request_free(struct bt_request *req)
{
	if (!req)
		return;
	BT_ASSERT(!bt_qlink_queued(&req->qlink) && !bt_heap_contains(&req->deadline));
	json_decref(req->meta);
	bt_payload_free(req->payload, req->len, req->payload_fd);
	bt_payload_tail_free(req->tail);
	free(req->error);
	free(req->timings);
	if (req->check_free)
		req->check_free(req->check_data);
	else
		free(req->check_data);
	bt_out_places_free(req->places); /* after check_data, which may point to it */
	free(req);
}

struct bt_request *bt_request_new_shadow(struct bt_stage *st, char *payload, size_t len,
					 json_t *meta)
{
	struct bt_request *req = bt_calloc(1, sizeof(*req));
	req->id = ++st->d->next_request_id;
	snprintf(req->idstr, sizeof(req->idstr), "r%llu", (unsigned long long)req->id);
	req->shadow = 1;
	req->own_route = st;
	req->route = &req->own_route;
	req->nroute = 1;
	req->payload = payload;
	req->len = len;
	req->payload_fd = -1;
	req->meta = meta ? meta : json_object();
	json_object_del(req->meta, "warmup");
	req->state = BT_REQ_NEW;
	bt_qlink_init(&req->qlink);
	bt_heap_node_init(&req->deadline);
	req->timings = bt_calloc(1, sizeof(*req->timings));
	return req;
}

static void finish(struct bt_request *req, enum bt_code code,
		   const char *stage, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* The request leaves its current stage: its timings go to the histograms. */
static void leave_stage(struct bt_request *req, enum bt_code code)
{
	struct bt_stage *st = stage_of(req);
	if (!req->in_stage)
		return;
	req->in_stage = 0;
	bt_hist_observe(&st->queue_hist, (double)req->timings[req->step].queue_us / 1e6);
	if (req->attempts)
		bt_hist_observe(&st->run_hist, (double)req->timings[req->step].run_us / 1e6);
	if (code != BT_OK)
		st->failed_codes[code]++;
	bt_hist_observe(&st->latency_window[st->window_pos],
			(double)(req->timings[req->step].queue_us + req->timings[req->step].run_us) / 1e6);
}

static void finish(struct bt_request *req, enum bt_code code,
		   const char *stage, const char *fmt, ...)
{
	struct bt_pipeline *pl = req->pipeline; /* NULL for a shadow */
	struct bt_daemon *d = stage_of(req)->d;
	BT_ASSERT(req->state != BT_REQ_DONE);
	leave_stage(req, code);
	if (pl)
		bt_hist_observe(&pl->duration_hist, (double)(bt_now_us() - req->accepted_us) / 1e6);
	if (req->remote) {
		req->remote = 0;
		stage_of(req)->remote->forget(stage_of(req)->remote->arg, req);
	}
	if (bt_qlink_queued(&req->qlink))
		bt_queue_remove(&stage_of(req)->queue, &req->qlink);
	if (bt_heap_contains(&req->deadline))
		bt_heap_remove(&d->deadlines, &req->deadline);
	req->state = BT_REQ_DONE;
	req->code = code;
	req->error_stage = stage;
	if (code != BT_OK) {
		va_list ap;
		char msg[1024];
		va_start(ap, fmt);
		vsnprintf(msg, sizeof(msg), fmt, ap);
		va_end(ap);
		free(req->error);
		req->error = bt_strdup(bt_utf8_clean(msg)); /* it becomes JSON */
		if (pl)
			pl->failed[code]++;
	} else if (pl) {
		pl->succeeded++;
	}
	if (pl) {
		pl->in_flight--;
		if (req->route != pl->stages)
			pl->old_in_flight--; /* accepted before a reload changed the pipeline */
	}
	d->in_flight--;
	req->done(req, req->done_arg);
	bt_daemon_progress(d);
}

static uint64_t cap_deadline(const struct bt_request *req, uint64_t deadline)
{
	if (req->client_deadline_ms && req->client_deadline_ms < deadline)
		return req->client_deadline_ms;
	return deadline;
}

/* Puts req in its current stage's queue; retries go first, never refused. */
static void enqueue(struct bt_request *req, int retry)
{
	struct bt_stage *st = stage_of(req);
	struct bt_daemon *d = st->d;
	if (retry) {
		bt_queue_push_front(&st->queue, &req->qlink, req->priority);
	} else if (bt_queue_push(&st->queue, &req->qlink, req->priority)) {
		finish(req, BT_OVERLOADED, st->cfg->name,
		       "stage '%s' has %zu requests waiting (queue_max %zu)",
		       st->cfg->name, st->queue.len, st->cfg->queue_max);
		return;
	}
	req->state = BT_REQ_QUEUED;
	req->enqueued_us = bt_now_us();
	bt_heap_update(&d->deadlines, &req->deadline,
		       cap_deadline(req, req->enqueued_us / 1000 + st->cfg->timeout_ms));
	bt_stage_kick(st);
}

/*
 * The stage's queue is shared (cluster/): the request waits here for the
 * answer of whichever node runs it, at most every attempt's timeout plus
 * a wait in the queue and a claim (docs/scaleout.md).
 */
static void enqueue_remote(struct bt_request *req)
{
	struct bt_stage *st = stage_of(req);
	struct bt_daemon *d = st->d;
	char why[512];
	req->state = BT_REQ_QUEUED;
	req->enqueued_us = bt_now_us();
	uint64_t wait = st->cfg->timeout_ms * (uint64_t)(st->cfg->retries + 2) +
			d->cfg->queue.claim_after_ms;
	bt_heap_update(&d->deadlines, &req->deadline,
		       cap_deadline(req, req->enqueued_us / 1000 + wait));
	/* Another node cannot see this machine's shared memory. */
	if (bt_request_flatten(req, why, sizeof(why)) ||
	    st->remote->submit(st->remote->arg, st, req, why, sizeof(why))) {
		finish(req, BT_STAGE_FAILED, st->cfg->name, "%s", why);
		return;
	}
	req->remote = 1;
}

static void enter_stage(struct bt_request *req, int step)
{
	req->step = step;
	req->attempts = 0;
	struct bt_stage *st = stage_of(req);
	if (st->remote && !req->shadow) {
		enqueue_remote(req);
		return;
	}
	st->entered++;
	req->in_stage = 1;
	if (st->failed) {
		finish(req, BT_STAGE_FAILED, st->cfg->name,
		       "stage '%s' has failed: every replica exhausted its restarts",
		       st->cfg->name);
		return;
	}
	enqueue(req, 0);
}

void bt_pipeline_submit(struct bt_request *req, bt_request_done_cb done,
			void *arg)
{
	struct bt_pipeline *pl = req->pipeline;
	struct bt_daemon *d = pl->d;
	req->done = done;
	req->done_arg = arg;
	req->accepted_us = bt_now_us();
	pl->accepted++;
	pl->in_flight++;
	d->in_flight++;
	/* While draining, baton's own requests still finish what was started. */
	if (d->state != BT_DAEMON_RUNNING &&
	    !(req->internal && d->state == BT_DAEMON_DRAINING && !d->hard_stop)) {
		finish(req, BT_SHUTTING_DOWN, NULL, "baton is shutting down");
		return;
	}
	if (pl->cfg->max_inflight && pl->in_flight > pl->cfg->max_inflight) {
		finish(req, BT_OVERLOADED, NULL,
		       "pipeline '%s' has %zu requests in flight (max_inflight)",
		       pl->cfg->name, pl->cfg->max_inflight);
		return;
	}
	/* Fail fast when any stage on the way is down, not after the others ran. */
	for (int i = 0; i < pl->nstages; i++) {
		/* A shared queue's stage may fail here and serve on other nodes. */
		if (pl->stages[i]->failed && !pl->stages[i]->remote) {
			finish(req, BT_STAGE_FAILED, pl->stages[i]->cfg->name,
			       "stage '%s' has failed: every replica exhausted its restarts",
			       pl->stages[i]->cfg->name);
			return;
		}
	}
	enter_stage(req, 0);
}

void bt_stage_execute(struct bt_request *req, bt_request_done_cb done, void *arg)
{
	struct bt_stage *st = stage_of(req);
	BT_ASSERT(req->shadow);
	req->done = done;
	req->done_arg = arg;
	req->accepted_us = bt_now_us();
	st->d->in_flight++;
	st->entered++;
	req->in_stage = 1;
	/* Taken because a slot was free: never refused by queue_max. */
	enqueue(req, 1);
}

void bt_stage_remote_answer(struct bt_request *req, enum bt_code code, char *payload,
			    size_t len, json_t *meta, const char *error, uint64_t queue_us,
			    uint64_t run_us)
{
	struct bt_stage *st = stage_of(req);
	BT_ASSERT(req->state == BT_REQ_QUEUED && !req->remote);
	req->timings[req->step].queue_us += queue_us;
	req->timings[req->step].run_us += run_us;
	if (code != BT_OK) {
		free(payload);
		json_decref(meta);
		finish(req, code, st->cfg->name, "%s", error ? error : bt_code_name(code));
		return;
	}
	free(req->payload);
	req->payload = payload;
	req->len = len;
	if (json_is_object(meta)) {
		/* The other node merged the answer's meta into the request's (bt_stage_result). */
		json_t *pipeline = json_incref(json_object_get(req->meta, "pipeline"));
		json_decref(req->meta);
		req->meta = meta;
		json_object_set_new(req->meta, "pipeline", pipeline);
		json_object_del(req->meta, "warmup");
	} else {
		json_decref(meta);
	}
	int last = req->step + 1 == req->nroute;
	char bad[512];
	if (last && req->check && req->check(req, bad, sizeof(bad))) {
		finish(req, BT_WORKER_ERROR, st->cfg->name, "%s", bad);
		return;
	}
	if (!last)
		enter_stage(req, req->step + 1);
	else
		finish(req, BT_OK, NULL, NULL);
}

int bt_stage_free_slots(const struct bt_stage *st)
{
	long slots = 0;
	if (st->failed || st->removed)
		return 0;
	for (int i = 0; i < st->nreplicas; i++) {
		const struct bt_replica *r = st->replicas[i];
		if (bt_replica_can_take(r, st->cfg->max_ongoing))
			slots += (long)(st->cfg->max_ongoing - r->nbatches) * st->cfg->batch_max_size;
	}
	slots -= (long)st->queue.len;
	return slots > 0 ? (int)BT_MIN(slots, 1L << 20) : 0;
}

void bt_stage_init(struct bt_stage *st, struct bt_daemon *d, int index,
		   const struct bt_stage_config *cfg)
{
	memset(st, 0, sizeof(*st));
	st->d = d;
	st->index = index;
	st->cfg = cfg;
	bt_queue_init(&st->queue, st->cfg->priority_levels, st->cfg->queue_max);
	uv_timer_init(d->loop, &st->retry_timer);
	uv_timer_init(d->loop, &st->batch_timer);
	st->retry_timer.data = st->batch_timer.data = st;
	st->scratch = bt_calloc((size_t)st->cfg->batch_max_size, sizeof(*st->scratch));
	bt_hist_init(&st->queue_hist, bt_hist_seconds, bt_hist_seconds_n);
	bt_hist_init(&st->run_hist, bt_hist_seconds, bt_hist_seconds_n);
	bt_hist_init(&st->batch_hist, bt_hist_sizes, bt_hist_sizes_n);
	/* A slot per possible replica; the first `initial` are active. */
	st->nreplicas = st->cfg->replicas_max;
	st->replicas = bt_calloc((size_t)st->nreplicas, sizeof(*st->replicas));
	for (int i = 0; i < st->nreplicas; i++) {
		st->replicas[i] = bt_replica_new(st, i + 1);
		st->replicas[i]->active = i < st->cfg->replicas_initial;
		if (!st->replicas[i]->active)
			st->replicas[i]->state = BT_REPLICA_EXITED;
	}
	st->target = st->cfg->replicas_initial;
	st->latency_p50_s = st->latency_p95_s = -1; /* no sample yet */
	for (int i = 0; i < BT_LATENCY_WINDOW; i++)
		bt_hist_init(&st->latency_window[i], bt_hist_seconds, bt_hist_seconds_n);
	bt_heap_init(&st->pickable);
}

void bt_stage_close(struct bt_stage *st)
{
	for (int i = 0; i < st->nreplicas; i++)
		bt_replica_close(st->replicas[i]);
	uv_close((uv_handle_t *)&st->retry_timer, NULL);
	uv_close((uv_handle_t *)&st->batch_timer, NULL);
	bt_heap_release(&st->pickable);
}

void bt_stage_kick(struct bt_stage *st)
{
	if (!st->dirty) {
		st->dirty = 1;
		bt_daemon_wake(st->d);
	}
}

/*
 * Dispatch's index (DESIGN §6, O(log n) per pick): a min-heap of the
 * replicas that can take work, keyed by load (batches in flight), then by
 * when each was filed, latest first.  The least loaded comes first, and
 * among equals the one whose load changed last: at low load the replica
 * that has just answered takes the next request while its worker is still
 * on a core with its memory in the caches, instead of waking the one that
 * has slept longest (with 256 idle replicas that cost 1.4-2x the
 * sequential latency of one; docs/benchmarks.md, bench/replicas).  Under
 * load every replica is busy and this order does not matter.  A replica
 * is filed again when its load changes and when replica states change;
 * one that stopped being able to take work without telling (it began
 * draining or stopping) is dropped by pick() when it surfaces.
 */
#define LOAD_SHIFT 48 /* max_ongoing is at most 1024: the load fits above */
#define SEQ_MASK (((uint64_t)1 << LOAD_SHIFT) - 1)

static void file_replica(struct bt_stage *st, struct bt_replica *r, int again)
{
	if (!bt_replica_can_take(r, st->cfg->max_ongoing)) {
		if (bt_heap_contains(&r->pick_node))
			bt_heap_remove(&st->pickable, &r->pick_node);
		return;
	}
	if (!again && bt_heap_contains(&r->pick_node))
		return; /* keeps its turn */
	uint64_t latest_first = SEQ_MASK - (++st->pick_seq & SEQ_MASK);
	bt_heap_update(&st->pickable, &r->pick_node, (uint64_t)r->nbatches << LOAD_SHIFT | latest_first);
}

void bt_stage_replica_changed(struct bt_replica *r)
{
	struct bt_stage *st = r->stage;
	file_replica(st, r, 1);
	/* A slot freed outside a result (a spawn job killed on timeout) must not wait. */
	if (st->queue.len && bt_heap_contains(&r->pick_node))
		bt_stage_kick(st);
}

/* The least-loaded replica that can take work, the latest filed of equals. */
static struct bt_replica *pick(struct bt_stage *st)
{
	struct bt_heap_node *n;
	while ((n = bt_heap_min(&st->pickable))) {
		struct bt_replica *r = bt_container_of(n, struct bt_replica, pick_node);
		if (bt_replica_can_take(r, st->cfg->max_ongoing) &&
		    n->key >> LOAD_SHIFT == (uint64_t)r->nbatches)
			return r;
		file_replica(st, r, 1);
	}
	return NULL;
}

static void batch_timer_cb(uv_timer_t *t)
{
	struct bt_stage *st = t->data;
	st->batch_due_us = 0;
	bt_stage_kick(st);
}

/* When the oldest waiting request entered the queue, over all levels. */
static uint64_t oldest_enqueued(const struct bt_stage *st)
{
	uint64_t oldest = UINT64_MAX;
	for (int l = 0; l < st->queue.levels; l++) {
		struct bt_qlink *h = bt_queue_level_head(&st->queue, l);
		if (h && from_qlink(h)->enqueued_us < oldest)
			oldest = from_qlink(h)->enqueued_us;
	}
	return oldest;
}

/*
 * The earliest queue deadline of the waiting requests, in µs.  Called only
 * while fewer than max_size wait, so the walk is short.
 */
static uint64_t earliest_deadline_us(struct bt_stage *st)
{
	uint64_t first = UINT64_MAX;
	for (int l = 0; l < st->queue.levels; l++)
		for (struct bt_qlink *q = st->queue.heads[l].next; q != &st->queue.heads[l];
		     q = q->next) {
			const struct bt_request *req = from_qlink(q);
			if (bt_heap_contains(&req->deadline) && req->deadline.key * 1000 < first)
				first = req->deadline.key * 1000;
		}
	return first;
}

/*
 * Triton's dynamic batcher: when a replica can take work, take up to
 * max_size waiting requests; with fewer waiting, wait until the batch is
 * full or the oldest request's window closes, whichever comes first.
 * Returns 0 when the stage should wait (the timer is armed).
 */
static int batch_ready(struct bt_stage *st, uint64_t now)
{
	const struct bt_stage_config *cfg = st->cfg;
	if (cfg->batch_max_size <= 1 || cfg->batch_window_ms == 0 ||
	    st->queue.len >= (size_t)cfg->batch_max_size)
		return 1;
	uint64_t due = oldest_enqueued(st) + cfg->batch_window_ms * 1000;
	/*
	 * A request whose deadline (timeout_ms or the client's) comes before
	 * the window closes is not kept waiting for company until it times
	 * out: the batch leaves 20 ms before that deadline (timers fire in
	 * whole milliseconds, and the deadline's must not win the race).
	 */
	uint64_t deadline = earliest_deadline_us(st);
	if (deadline < due + 20000)
		due = deadline > 20000 ? deadline - 20000 : 0;
	if (now >= due)
		return 1;
	if (st->batch_due_us != due) {
		/*
		 * Rounded down: a timer that fires a little early finds the window
		 * still open and re-arms for the rest, rather than keeping a
		 * request up to a millisecond past its window.
		 */
		st->batch_due_us = due;
		uv_timer_start(&st->batch_timer, batch_timer_cb, (due - now) / 1000, 0);
	}
	return 0;
}

static void dispatch(struct bt_stage *st)
{
	struct bt_daemon *d = st->d;
	while (st->queue.len) {
		struct bt_replica *r = pick(st);
		if (!r)
			break;
		uint64_t now = bt_now_us();
		if (!batch_ready(st, now))
			break;
		int n = 0;
		while (n < st->cfg->batch_max_size && st->queue.len) {
			struct bt_request *req = from_qlink(bt_queue_pop(&st->queue));
			req->timings[req->step].queue_us += now - req->enqueued_us;
			if (++req->attempts > 1)
				st->retried++;
			req->state = BT_REQ_RUNNING;
			req->dispatched_us = now;
			req->replica = r;
			/*
			 * Running, only the stage's timeout_ms can kill the replica: a
			 * client's own timeout bounds its waits in queues (as Triton's
			 * does) and reaches the worker as deadline_ms, but a client must
			 * not be able to make baton kill and charge a healthy worker.
			 */
			uint64_t run_deadline = now / 1000 + st->cfg->timeout_ms;
			bt_heap_update(&d->deadlines, &req->deadline, run_deadline);
			uint64_t deadline = cap_deadline(req, run_deadline);
			json_object_set_new(req->meta, "stage", json_string(st->cfg->name));
			json_object_set_new(req->meta, "attempt", json_integer(req->attempts));
			/* A client deadline may already have passed: 0 left, not a wrap. */
			json_object_set_new(req->meta, "deadline_ms",
					    json_integer(deadline > now / 1000
								 ? (json_int_t)(deadline - now / 1000)
								 : 0));
			st->scratch[n++] = req;
		}
		st->running += (uint64_t)n;
		int sent = bt_replica_send(r, st->scratch, n);
		if (sent) /* the batch a worker received */
			bt_hist_observe(&st->batch_hist, sent);
	}
}

void bt_sched_flush(struct bt_daemon *d)
{
	for (int i = 0; i < d->nstages; i++) {
		struct bt_stage *st = &d->stages[i];
		if (st->dirty) {
			st->dirty = 0;
			dispatch(st);
		}
		if (st->remote)
			st->remote->pump(st->remote->arg, st);
	}
	bt_sched_arm_deadline(d);
}

/* The request left its replica (answer, loss or abandon). */
static void left_replica(struct bt_request *req)
{
	struct bt_stage *st = stage_of(req);
	BT_ASSERT(req->state == BT_REQ_RUNNING && st->running > 0);
	st->running--;
	req->replica = NULL;
	req->timings[req->step].run_us += bt_now_us() - req->dispatched_us;
	bt_stage_kick(st);
}

char *bt_request_take_payload(struct bt_request *req, int *fd)
{
	char *p = req->payload;
	*fd = req->payload_fd;
	req->payload = NULL;
	req->payload_fd = -1;
	return p;
}

void bt_stage_result(struct bt_request *req, char *payload, size_t len,
		     json_t *result_meta, const char *error, int retry)
{
	bt_stage_result_fd(req, payload, len, -1, result_meta, error, retry);
}

int bt_request_flatten(struct bt_request *req, char *why, size_t whylen)
{
	if (!req->tail)
		return 0;
	size_t hlen = req->len - req->tail->len;
	char *map = NULL;
	int fd;
	int e = bt_payload_flatten(req->payload, hlen, req->tail, &fd, &map);
	if (e) {
		snprintf(why, whylen, "cannot read the request's shared memory input: %s",
			 e == -ENODATA ? "the client's object is shorter than when the request came"
				       : bt_strerror(e));
		return e;
	}
	bt_payload_free(req->payload, hlen, req->payload_fd);
	bt_payload_tail_free(req->tail);
	req->tail = NULL;
	req->payload = map;
	req->payload_fd = fd;
	return 0;
}

static void apply_result(struct bt_request *req, int same, char *payload, size_t len, int fd,
			 json_t *result_meta, const char *error, int retry);

void bt_stage_result_same(struct bt_request *req, json_t *result_meta)
{
	apply_result(req, 1, NULL, 0, -1, result_meta, NULL, 0);
}

void bt_stage_result_fd(struct bt_request *req, char *payload, size_t len, int fd,
			json_t *result_meta, const char *error, int retry)
{
	apply_result(req, 0, payload, len, fd, result_meta, error, retry);
}

static void apply_result(struct bt_request *req, int same, char *payload, size_t len, int fd,
			 json_t *result_meta, const char *error, int retry)
{
	struct bt_stage *st = stage_of(req);
	left_replica(req);
	if (error) {
		bt_payload_free(payload, len, fd);
		st->errors++;
		if (retry && req->attempts <= st->cfg->retries) {
			if (req->shadow) { /* the next attempt may go to any node */
				req->retry_elsewhere = 1;
				finish(req, BT_WORKER_ERROR, st->cfg->name, "%s", error);
				return;
			}
			enqueue(req, 1);
			return;
		}
		finish(req, retry ? BT_WORKER_ERROR : BT_REJECTED, st->cfg->name, "%s",
		       error);
		return;
	}
	if (!same) {
		bt_payload_free(req->payload, req->len - (req->tail ? req->tail->len : 0),
				req->payload_fd);
		bt_payload_tail_free(req->tail);
		req->tail = NULL;
		req->payload = payload;
		req->len = len;
		req->payload_fd = fd;
	}
	/*
	 * These keys describe the payload, which was just replaced (or passed
	 * on, "same"): only the answer that produced it may say what it is.
	 */
	json_object_del(req->meta, "content_type");
	json_object_del(req->meta, "v2_header_length");
	if (json_is_object(result_meta)) {
		/* An answer cannot rename the pipeline or make the request a warm-up. */
		json_t *pipeline = json_incref(json_object_get(req->meta, "pipeline"));
		json_object_update(req->meta, result_meta);
		json_object_set_new(req->meta, "pipeline", pipeline);
		json_object_del(req->meta, "warmup");
	}
	int last = req->step + 1 == req->nroute;
	char bad[512];
	/* An answer leaves baton as one payload: the client reads it whole. */
	if (last && bt_request_flatten(req, bad, sizeof(bad))) {
		st->errors++;
		finish(req, BT_WORKER_ERROR, st->cfg->name, "%s", bad);
		return;
	}
	if (last && req->check && req->check(req, bad, sizeof(bad))) {
		/* The worker answered, but not what the client's protocol needs. */
		st->errors++;
		finish(req, BT_WORKER_ERROR, st->cfg->name, "%s", bad);
		return;
	}
	st->completed++;
	leave_stage(req, BT_OK);
	if (!last)
		enter_stage(req, req->step + 1);
	else
		finish(req, BT_OK, NULL, NULL);
}

void bt_stage_unsendable(struct bt_request *req, const char *why)
{
	struct bt_stage *st = stage_of(req);
	left_replica(req);
	st->errors++;
	/* Not the input's fault (rejected) and no retry could fix it. */
	finish(req, BT_WORKER_ERROR, st->cfg->name, "%s", why);
}

void bt_stage_lost(struct bt_request *req, int charge, const char *why)
{
	struct bt_stage *st = stage_of(req);
	left_replica(req);
	if (!charge)
		req->attempts--;
	if (st->d->hard_stop) {
		finish(req, BT_SHUTTING_DOWN, st->cfg->name,
		       "baton stopped before the request finished");
		return;
	}
	if (req->attempts > st->cfg->retries) {
		bt_warn("request exhausted its attempts",
			"stage=%s request=%s bytes=%zu attempts=%d", st->cfg->name,
			req->idstr, req->len, req->attempts);
		finish(req, BT_WORKER_CRASHED, st->cfg->name,
		       "the replica running this request died %d time%s (last: %s)",
		       req->attempts, req->attempts == 1 ? "" : "s", why);
		return;
	}
	/*
	 * Its deadline passed while the replica was dying (the timer had not
	 * run yet): a retry would give it a second full timeout_ms.
	 */
	if (bt_heap_contains(&req->deadline) && req->deadline.key <= bt_now_ms()) {
		finish(req, BT_TIMEOUT, st->cfg->name,
		       "no answer from stage '%s' before the deadline; the replica was restarted",
		       st->cfg->name);
		return;
	}
	if (req->shadow) { /* the next attempt may go to any node */
		req->retry_elsewhere = 1;
		finish(req, BT_WORKER_CRASHED, st->cfg->name,
		       "the replica running this request died (%s)", why);
		return;
	}
	enqueue(req, 1);
}

void bt_request_cancel(struct bt_request *req)
{
	if (req->state != BT_REQ_QUEUED)
		return;
	struct bt_stage *st = stage_of(req);
	uint64_t waited = (bt_now_us() - req->enqueued_us) / 1000;
	if (!req->remote)
		req->timings[req->step].queue_us += waited * 1000;
	finish(req, BT_CANCELLED, st->cfg->name,
	       "the client went away after %llums in the queue of stage '%s'; it did not run",
	       (unsigned long long)waited, st->cfg->name);
}

void bt_stage_fail_queued(struct bt_stage *st, enum bt_code code,
			  const char *why)
{
	struct bt_qlink *l;
	while ((l = bt_queue_peek(&st->queue)))
		finish(from_qlink(l), code, st->cfg->name, "%s", why);
}

static void retry_failed_cb(uv_timer_t *t)
{
	struct bt_stage *st = t->data;
	if (!st->failed || st->d->state >= BT_DAEMON_STOPPING)
		return;
	bt_info("retrying failed stage", "stage=%s", st->cfg->name);
	for (int i = 0; i < st->nreplicas; i++)
		if (st->replicas[i]->active)
			bt_replica_revive(st->replicas[i]);
}

void bt_stage_replicas_changed(struct bt_stage *st)
{
	int all_failed = 0, active = 0, old_serving = 0;
	for (int i = 0; i < st->nreplicas; i++) {
		struct bt_replica *r = st->replicas[i];
		file_replica(st, r, 0);
		if (r->state == BT_REPLICA_READY)
			st->up = 1;
		if (!r->active) {
			/* Replaced by a reload and still serving until the new ones are up. */
			old_serving |= r->state == BT_REPLICA_READY;
			continue;
		}
		if (!active++)
			all_failed = 1;
		all_failed &= r->state == BT_REPLICA_FAILED;
	}
	all_failed &= !old_serving;
	if (all_failed && !st->failed) {
		st->failed = 1;
		bt_error("stage failed",
			 "stage=%s replicas=%d queued=%zu retry_after_ms=%llu", st->cfg->name,
			 st->nreplicas, st->queue.len,
			 (unsigned long long)st->cfg->retry_failed_after_ms);
		bt_stage_fail_queued(st, BT_STAGE_FAILED,
				     "stage has failed: every replica exhausted its restarts");
		if (st->cfg->retry_failed_after_ms)
			uv_timer_start(&st->retry_timer, retry_failed_cb,
				       st->cfg->retry_failed_after_ms, 0);
	} else if (!all_failed && st->failed) {
		st->failed = 0;
		st->up = 0;
		uv_timer_stop(&st->retry_timer);
		bt_info("stage recovering", "stage=%s", st->cfg->name);
	}
	bt_stage_kick(st);
}

void bt_sched_arm_deadline(struct bt_daemon *d)
{
	struct bt_heap_node *n = bt_heap_min(&d->deadlines);
	if (!n) {
		if (d->armed_deadline) {
			uv_timer_stop(&d->deadline_timer);
			d->armed_deadline = 0;
		}
		return;
	}
	if (d->armed_deadline == n->key)
		return;
	uint64_t now = bt_now_ms();
	uv_timer_start(&d->deadline_timer, bt_sched_deadline_cb,
		       n->key > now ? n->key - now : 0, 0);
	d->armed_deadline = n->key;
}

void bt_sched_deadline_cb(uv_timer_t *t)
{
	struct bt_daemon *d = t->data;
	/*
	 * A batch timer that fired in this same loop turn has only marked its
	 * stage: dispatch first, so that a batch sent before its requests'
	 * deadlines is not judged late by a stalled loop.
	 */
	bt_sched_flush(d);
	uint64_t now = bt_now_ms();
	struct bt_heap_node *n;
	d->armed_deadline = 0;
	while ((n = bt_heap_min(&d->deadlines)) && n->key <= now) {
		struct bt_request *req = bt_container_of(n, struct bt_request, deadline);
		struct bt_stage *st = stage_of(req);
		bt_heap_remove(&d->deadlines, n);
		if (req->state == BT_REQ_QUEUED && req->remote) {
			finish(req, BT_TIMEOUT, st->cfg->name,
			       "no node answered for stage '%s' within %llums (its shared queue's wait, every attempt and a claim)",
			       st->cfg->name,
			       (unsigned long long)((bt_now_us() - req->enqueued_us) / 1000));
		} else if (req->state == BT_REQ_QUEUED) {
			uint64_t waited = (bt_now_us() - req->enqueued_us) / 1000;
			req->timings[req->step].queue_us += waited * 1000;
			finish(req, BT_TIMEOUT, st->cfg->name,
			       "waited %llums in the queue of stage '%s' without a free replica",
			       (unsigned long long)waited, st->cfg->name);
		} else {
			BT_ASSERT(req->state == BT_REQ_RUNNING);
			struct bt_replica *r = req->replica;
			uint64_t ran = (bt_now_us() - req->dispatched_us) / 1000;
			char why[160];
			snprintf(why, sizeof(why), "request %s ran %llums (timeout_ms %llu)",
				 req->idstr, (unsigned long long)ran,
				 (unsigned long long)st->cfg->timeout_ms);
			left_replica(req);
			bt_replica_abandon(r, req, why);
			finish(req, BT_TIMEOUT, st->cfg->name,
			       "no answer from stage '%s' after %llums; the replica was restarted",
			       st->cfg->name, (unsigned long long)ran);
		}
	}
	bt_sched_arm_deadline(d);
}
