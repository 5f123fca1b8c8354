/*
 * Replica supervision: spawning (bt_process_spawn), the worker
 * protocol on the channel, worker output into the log, start timeouts,
 * pings, backoff, failure, and the stop escalation.
 *
 * A process ends in several ways that arrive in any order: its exit
 * (SIGCHLD), EOF on its channel, a protocol violation, a kill we decided.
 * The first one detaches the child from its replica (child_lost) and the
 * replica moves on at once; the child itself lives until its process has
 * exited and its handles are closed, then frees itself.
 */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../daemon/daemon.h"
#include "../sched/sched.h"

/*
 * Descriptors a worker may have sent ahead of the headers that claim
 * them; one is all a worker that follows the protocol ever has.  Beyond
 * this, it is flooding baton's descriptor table.
 */
#define BT_RECV_FDS 4
/* Descriptors sent with one message: the Python SDK receives up to 4 at once. */
#define BT_SEND_FDS 4

struct bt_child {
	struct bt_replica *replica; /* NULL once detached */
	struct bt_daemon *d;
	const char *stage; /* names kept for logging after detach */
	int replica_id;
	struct bt_process proc; /* its poll handle counts in handles */
	struct bt_unit *unit; /* everything it starts, however it forks */
	uv_pipe_t chan, out, err;
	uv_timer_t eof_timer; /* bounds the wait for exit after EOF on chan */
	int handles; /* open handles; the child is freed at 0 */
	int pid;
	int exited;
	int charge; /* whether in-flight requests pay an attempt for this death */
	uint64_t first_ping; /* the seq of the first ping sent to this process */
	enum bt_fail_reason reason; /* counted when the death is a failure */
	struct bt_frame_decoder dec;
	struct bt_buf wbuf; /* frames for the next flush */
	struct bt_buf wbusy; /* frames being written */
	size_t wbusy_chunk; /* the part of wbusy that uv_write has */
	uv_write_t wreq;
	int writing;
	int dirty;
	struct bt_child *next_dirty;
	struct bt_lines lines[2]; /* stdout and stderr, into the log */
	char warmup_id[32]; /* id of the warm-up request, while WARMING */
	/*
	 * Large payloads as sealed memfds (docs/protocol.md, "Large payloads").
	 * A descriptor rides on the first bytes of its header, so it arrives
	 * no later than the header is complete; both directions keep them in
	 * order.  wout counts the bytes written so far, so that each
	 * descriptor to send knows where in the stream its header begins.
	 */
	int memfd; /* it said "memfd": true in "ready" */
	int region; /* it said "region": true too: it takes shared-memory tails and answers "same" */
	int place; /* and "place": true: it writes outputs into shared memory itself */
	uint64_t wout; /* bytes of the channel written so far */
	/* Descriptors to send, by position; borrowed ones are the request's, never closed here. */
	struct bt_sendfd { uint64_t pos; int fd; int borrowed; } *sendq;
	int nsend, capsend;
	uv_pipe_t *sending; /* the descriptor the current write carries, closed after it */
	int recvq[BT_RECV_FDS]; /* descriptors received, not yet claimed by a header */
	int nrecv;
	int frame_fd; /* the descriptor of the message being handled, or -1 */
};

static const char *state_names[] = {
	[BT_REPLICA_PENDING] = "pending",   [BT_REPLICA_STARTING] = "starting",
	[BT_REPLICA_WARMING] = "warming",   [BT_REPLICA_READY] = "ready",
	[BT_REPLICA_DRAINING] = "draining", [BT_REPLICA_STOPPING] = "stopping",
	[BT_REPLICA_EXITED] = "exited",     [BT_REPLICA_BACKOFF] = "backoff",
	[BT_REPLICA_FAILED] = "failed",
};

const char *bt_replica_state_name(enum bt_replica_state s)
{
	return state_names[s];
}

const char *bt_fail_reason_name(enum bt_fail_reason r)
{
	static const char *names[BT_FAIL_COUNT] = {
		[BT_FAIL_CRASH] = "crash",	 [BT_FAIL_START_TIMEOUT] = "start_timeout",
		[BT_FAIL_PROTOCOL] = "protocol", [BT_FAIL_PING] = "ping",
		[BT_FAIL_TIMEOUT] = "timeout",	 [BT_FAIL_WARMUP] = "warmup",
		[BT_FAIL_SPAWN] = "spawn",	 [BT_FAIL_MEMORY] = "memory",
	};
	return names[r];
}

static struct bt_request *release_slot(struct bt_replica *r, int i);

void bt_replica_release(struct bt_replica *r, struct bt_request *req)
{
	for (int i = 0; i < r->ninflight; i++) {
		if (r->inflight[i] == req) {
			release_slot(r, i);
			return;
		}
	}
}

/* Takes the request in slot i out of the replica, closing its batch when last. */
static void shrink_if_empty(struct bt_buf *b)
{
	if (!b->len && b->cap > (1u << 20))
		bt_buf_release(b);
}

static struct bt_request *release_slot(struct bt_replica *r, int i)
{
	struct bt_request *req = r->inflight[i];
	r->inflight[i] = r->inflight[--r->ninflight];
	if (--r->batch_left[req->batch_slot] == 0) {
		r->nbatches--;
		bt_stage_replica_changed(r);
	}
	/* Large payloads' buffers go back when the replica is idle: an idle replica holds none. */
	if (!r->ninflight && r->child && !r->child->writing) {
		shrink_if_empty(&r->child->wbuf);
		shrink_if_empty(&r->child->wbusy);
	}
	return req; /* a draining replica left empty is stopped by the tick */
}

static struct bt_daemon *daemon_of(const struct bt_replica *r)
{
	return r->stage->d;
}

static const struct bt_stage_config *cfg_of(const struct bt_replica *r)
{
	return r->stage->cfg;
}

struct bt_replica *bt_replica_new(struct bt_stage *st, int id)
{
	struct bt_replica *r = bt_calloc(1, sizeof(*r));
	r->stage = st;
	r->id = id;
	r->state = BT_REPLICA_PENDING;
	r->gpu = -1;
	bt_heap_node_init(&r->pick_node);
	r->cap = st->cfg->max_ongoing * st->cfg->batch_max_size;
	r->inflight = bt_calloc((size_t)r->cap, sizeof(*r->inflight));
	r->batch_left = bt_calloc((size_t)st->cfg->max_ongoing, sizeof(*r->batch_left));
	uv_timer_init(st->d->loop, &r->timer);
	uv_timer_init(st->d->loop, &r->ping_timer);
	r->timer.data = r;
	r->ping_timer.data = r;
	return r;
}

int bt_replica_has_process(const struct bt_replica *r)
{
	return r->child != NULL || r->job != NULL;
}

int bt_replica_pid(const struct bt_replica *r)
{
	return r->child ? r->child->pid : bt_spawn_pid(r);
}

int bt_replica_usage(const struct bt_replica *r, struct bt_group_usage *out)
{
	return bt_unit_usage(r->child ? r->child->unit : bt_spawn_unit(r), out);
}

static void mark_dirty(struct bt_child *c)
{
	if (!c->dirty) {
		c->dirty = 1;
		c->next_dirty = c->d->dirty;
		c->d->dirty = c;
		bt_daemon_wake(c->d);
	}
}

static void child_free_if_done(struct bt_child *c)
{
	if (c->handles > 0)
		return;
	struct bt_daemon *d = c->d;
	/* A child still on the dirty list would dangle: unlink it first. */
	for (struct bt_child **p = &d->dirty; *p; p = &(*p)->next_dirty) {
		if (*p == c) {
			*p = c->next_dirty;
			break;
		}
	}
	bt_frame_decoder_release(&c->dec);
	for (int i = 0; i < c->nsend; i++)
		if (c->sendq[i].fd >= 0 && !c->sendq[i].borrowed)
			close(c->sendq[i].fd);
	free(c->sendq);
	for (int i = 0; i < c->nrecv; i++)
		if (c->recvq[i] >= 0)
			close(c->recvq[i]);
	bt_buf_release(&c->wbuf);
	bt_buf_release(&c->wbusy);
	bt_lines_release(&c->lines[0]);
	bt_lines_release(&c->lines[1]);
	bt_unit_release(c->unit);
	free(c);
	d->live_children--;
	bt_daemon_progress(d);
}

static void handle_closed_cb(uv_handle_t *h)
{
	struct bt_child *c = h->data;
	c->handles--;
	child_free_if_done(c);
}

static void close_handle(uv_handle_t *h)
{
	if (!uv_is_closing(h))
		uv_close(h, handle_closed_cb);
}

/* ---- death ---------------------------------------------------------- */

static void ping_stop(struct bt_replica *r)
{
	uv_timer_stop(&r->ping_timer);
	r->ping_outstanding = 0;
}

static void backoff_cb(uv_timer_t *t);

/* Retries of a spawn that failed for lack of descriptors or memory. */
#define RESOURCE_BACKOFF_MS 100
#define RESOURCE_BACKOFF_MAX_MS 5000

/* The replica lost its process: requeue its requests, then decide what next. */
static void replica_died(struct bt_replica *r, int pid, int charge,
			 enum bt_fail_reason reason, const char *why)
{
	struct bt_daemon *d = daemon_of(r);
	const struct bt_stage_config *cfg = cfg_of(r);
	uint64_t now = bt_now_ms();
	int was_ready = r->ready_ms != 0;
	uint64_t up_ms = was_ready ? now - r->ready_ms : 0;

	uv_timer_stop(&r->timer);
	ping_stop(r);
	snprintf(r->last_exit, sizeof(r->last_exit), "%s", why);
	bt_utf8_clean(r->last_exit);

	/* Collect first, call back second: bt_stage_lost may re-dispatch. */
	int n = r->ninflight;
	struct bt_request **lost = NULL;
	if (n) {
		lost = bt_malloc((size_t)n * sizeof(*lost));
		memcpy(lost, r->inflight, (size_t)n * sizeof(*lost));
		r->ninflight = 0;
	}
	r->nbatches = 0;
	memset(r->batch_left, 0, (size_t)cfg->max_ongoing * sizeof(*r->batch_left));

	if (r->state == BT_REPLICA_STOPPING || r->state == BT_REPLICA_DRAINING ||
	    d->state >= BT_DAEMON_STOPPING) {
		r->state = BT_REPLICA_EXITED;
		bt_daemon_unplace(d, r);
		bt_info("replica stopped", "stage=%s replica=%d pid=%d how=%s",
			cfg->name, r->id, pid, BT_LOGQ(why));
	} else {
		if (was_ready && up_ms >= cfg->reset_after_ms)
			r->failures = 0;
		r->failures++;
		r->stage->failures[reason]++;
		r->ready_ms = 0;
		if (r->failures >= cfg->max_failures) {
			r->state = BT_REPLICA_FAILED;
			bt_daemon_unplace(d, r);
			bt_error("replica failed",
				 "stage=%s replica=%d pid=%d failures=%d reason=%s",
				 cfg->name, r->id, pid, r->failures, BT_LOGQ(why));
		} else {
			uint64_t delay = bt_backoff_delay_ms(cfg->backoff_ms,
							     cfg->backoff_max_ms, r->failures);
			r->state = BT_REPLICA_BACKOFF;
			bt_warn("replica died",
				"stage=%s replica=%d pid=%d failures=%d restart_in_ms=%llu in_flight=%d reason=%s",
				cfg->name, r->id, pid, r->failures,
				(unsigned long long)delay, n, BT_LOGQ(why));
			uv_timer_start(&r->timer, backoff_cb, delay, 0);
		}
	}
	for (int i = 0; i < n; i++)
		bt_stage_lost(lost[i], charge, why);
	free(lost);
	if (r->stage->source_ops)
		r->stage->source_ops->down(r->stage->source_arg, r);
	bt_stage_replicas_changed(r->stage);
}

/* First ending of a process: detach it from its replica. */
static void child_lost(struct bt_child *c, const char *why)
{
	struct bt_replica *r = c->replica;
	if (!r)
		return;
	c->replica = NULL;
	r->child = NULL;
	c->warmup_id[0] = '\0';
	if (!c->exited) {
		/* Whatever it is doing, it is no longer ours: make sure it ends. */
		bt_unit_end(c->unit);
		uv_read_stop((uv_stream_t *)&c->chan);
	}
	replica_died(r, c->pid, c->charge, c->reason, why);
}

static void child_kill(struct bt_child *c, enum bt_fail_reason reason, const char *why)
{
	c->reason = reason;
	if (c->replica)
		bt_warn("killing replica", "stage=%s replica=%d pid=%d reason=%s",
			c->stage, c->replica_id, c->pid, BT_LOGQ(why));
	child_lost(c, why);
}

static void violation(struct bt_child *c, const char *what, const char *sent,
		      size_t sentlen)
{
	char q[256];
	bt_error("protocol violation", "stage=%s replica=%d pid=%d error=%s sent=%s",
		 c->stage, c->replica_id, c->pid, BT_LOGQ(what),
		 bt_logfmt_quote(q, sizeof(q), sent ? sent : "", sent ? BT_MIN(sentlen, 160) : 0));
	char why[320];
	snprintf(why, sizeof(why), "protocol violation: %s", what);
	c->reason = BT_FAIL_PROTOCOL;
	child_lost(c, why);
}

/* ---- the channel ----------------------------------------------------- */

static void send_frame(struct bt_child *c, json_t *hdr, const void *payload,
		       size_t len)
{
	int e = bt_frame_encode(&c->wbuf, hdr, payload, len);
	BT_ASSERT(e == 0); /* only our own small headers come here */
	json_decref(hdr);
	mark_dirty(c);
}

static void timer_warmup_cb(uv_timer_t *t)
{
	struct bt_replica *r = t->data;
	if (r->child)
		child_kill(r->child, BT_FAIL_WARMUP, "warm-up did not finish within timeout_ms");
}

static void ping_cb(uv_timer_t *t);

/*
 * The delay before a replica's first ping.  Replicas that became ready
 * together must not be pinged together: hundreds of pings and pongs in one
 * burst every interval stall the loop.  Nor should each have a phase of
 * its own: in a VM every wake-up of the loop costs more than the ping.  So
 * ping_interval_ms is cut into slots of PING_SLOT_MS, the replicas of a
 * stage are spread evenly over the slots, and the replicas of one slot
 * have the same due time on the loop's clock, so libuv runs their timers
 * in one pass (their repeats stay together).  Never later than one interval.
 */
#define PING_SLOT_MS 100

static uint64_t ping_phase(const struct bt_replica *r)
{
	uint64_t every = cfg_of(r)->ping_interval_ms;
	uint64_t slot_ms = BT_MIN(every, (uint64_t)PING_SLOT_MS);
	uint64_t slots = every / slot_ms;
	uint64_t slot = (uint64_t)(r->id - 1) * slots / (uint64_t)r->stage->nreplicas;
	uint64_t at = uv_now(daemon_of(r)->loop) % every;
	uint64_t delay = (slot * slot_ms + every - at) % every;
	return delay ? delay : every;
}

static void on_ready(struct bt_child *c, struct bt_replica *r, json_t *hdr)
{
	const struct bt_stage_config *cfg = cfg_of(r);
	json_t *proto = json_object_get(hdr, "proto");
	if (r->state == BT_REPLICA_STOPPING && !r->ready_ms)
		return; /* told to stop while starting: its first ready is moot */
	if (r->state != BT_REPLICA_STARTING) {
		violation(c, "a second \"ready\"", NULL, 0);
		return;
	}
	if (proto && (!json_is_integer(proto) ||
		      json_integer_value(proto) != BT_PROTO_VERSION)) {
		violation(c, "unsupported protocol version (baton speaks 1)", NULL, 0);
		return;
	}
	/*
	 * A worker that offers fast headers gets its requests in them and may
	 * answer in them (docs/protocol.md); sources hold no requests.
	 */
	json_t *fast = json_object_get(hdr, "fast");
	if (json_is_integer(fast) && json_integer_value(fast) == BT_FAST_VERSION &&
	    !r->stage->source_ops)
		c->dec.fast = 1;
	uv_timer_stop(&r->timer);
	/* Only a worker that says it reads them gets memfds (old workers get bytes). */
	c->memfd = json_is_true(json_object_get(hdr, "memfd")) &&
		   daemon_of(r)->cfg->memfd_min_bytes > 0;
	c->region = c->memfd && json_is_true(json_object_get(hdr, "region"));
	c->place = c->region && json_is_true(json_object_get(hdr, "place"));
	r->ready_ms = bt_now_ms();
	r->stage->last_stderr[0] = '\0'; /* what it said loading is no reason for a later crash */
	bt_info("replica ready", "stage=%s replica=%d pid=%d startup_ms=%llu",
		cfg->name, r->id, c->pid,
		(unsigned long long)(r->ready_ms - r->spawned_ms));
	if (cfg->ping_interval_ms)
		uv_timer_start(&r->ping_timer, ping_cb, ping_phase(r),
			       cfg->ping_interval_ms);
	if (cfg->warmup_payload) {
		r->state = BT_REPLICA_WARMING;
		snprintf(c->warmup_id, sizeof(c->warmup_id), "warmup-%d-%u", r->id,
			 r->starts);
		json_t *meta = json_pack("{s:b, s:s, s:i, s:I}", "warmup", 1, "stage",
					 cfg->name, "attempt", 1, "deadline_ms",
					 (json_int_t)cfg->timeout_ms);
		send_frame(c, json_pack("{s:s, s:s, s:o}", "t", "req", "id", c->warmup_id,
					"meta", meta),
			   cfg->warmup_payload, cfg->warmup_len);
		uv_timer_start(&r->timer, timer_warmup_cb, cfg->timeout_ms, 0);
		return;
	}
	r->state = BT_REPLICA_READY;
	if (r->stage->source_ops)
		r->stage->source_ops->up(r->stage->source_arg, r);
	bt_stage_replicas_changed(r->stage);
}

static void on_warmup_result(struct bt_child *c, struct bt_replica *r,
			     const char *error)
{
	const struct bt_stage_config *cfg = cfg_of(r);
	uv_timer_stop(&r->timer);
	c->warmup_id[0] = '\0';
	if (error) {
		char q[512];
		bt_warn("warm-up failed", "stage=%s replica=%d pid=%d required=%s error=%s",
			cfg->name, r->id, c->pid, cfg->warmup_required ? "true" : "false",
			bt_logfmt_quote(q, sizeof(q), error, strlen(error)));
		if (cfg->warmup_required) {
			child_kill(c, BT_FAIL_WARMUP, "required warm-up failed");
			return;
		}
	} else {
		bt_info("replica warmed up", "stage=%s replica=%d pid=%d warmup_ms=%llu",
			cfg->name, r->id, c->pid,
			(unsigned long long)(bt_now_ms() - r->ready_ms));
	}
	r->state = BT_REPLICA_READY;
	bt_stage_replicas_changed(r->stage);
}

/* Where r holds the request with this id, or -1. */
static int find_slot(struct bt_replica *r, const char *id)
{
	for (int i = 0; i < r->ninflight; i++)
		if (!strcmp(r->inflight[i]->idstr, id))
			return i;
	return -1;
}

static void on_result(struct bt_child *c, struct bt_replica *r,
		      struct bt_frame *f)
{
	const char *id, *error;
	json_t *meta;
	int retry;
	if (f->fast) {
		/* The decoder checked the id, the meta and the error text. */
		id = f->id;
		meta = f->meta;
		error = f->fast == BT_FAST_ERR ? f->payload : NULL;
		retry = f->retry;
	} else {
		json_t *hdr = f->hdr;
		json_t *jerr = json_object_get(hdr, "error");
		id = json_string_value(json_object_get(hdr, "id"));
		meta = json_object_get(hdr, "meta");
		if (!id) {
			violation(c, "\"res\" without a string \"id\"", NULL, 0);
			return;
		}
		if (jerr && !json_is_string(jerr)) {
			violation(c, "\"error\" is not a string", id, strlen(id));
			return;
		}
		if (meta && !json_is_object(meta)) {
			violation(c, "\"meta\" is not an object", id, strlen(id));
			return;
		}
		error = json_string_value(jerr);
		retry = json_is_true(json_object_get(hdr, "retry"));
		json_t *same = json_object_get(hdr, "same");
		if (same && (!c->region || !json_is_true(same) || jerr || f->memfd ||
			     json_integer_value(json_object_get(hdr, "len")))) {
			violation(c, c->region ? "\"same\" is not true, or comes with an error or a "
						 "payload"
					       : "\"same\" from a worker that did not announce "
						 "\"region\"", id, strlen(id));
			return;
		}
		if (same && strcmp(id, c->warmup_id)) {
			int slot = find_slot(r, id);
			if (slot < 0) {
				violation(c, "answer for a request it does not hold", id, strlen(id));
				return;
			}
			bt_stage_result_same(release_slot(r, slot), meta);
			return;
		}
	}
	if (c->warmup_id[0] && !strcmp(id, c->warmup_id)) {
		on_warmup_result(c, r, error);
		return;
	}
	int slot = find_slot(r, id);
	if (slot < 0) {
		violation(c, "answer for a request it does not hold", id, strlen(id));
		return;
	}
	char *payload = NULL;
	size_t len = 0;
	int fd = -1;
	if (f->memfd) {
		/* Only JSON headers carry memfds: error and retry came from hdr. */
		char why[128];
		fd = c->frame_fd;
		c->frame_fd = -1;
		if (fd < 0) {
			bt_stage_result(release_slot(r, slot), NULL, 0, NULL,
					"baton had no descriptor left for the answer's memfd", 1);
			return;
		}
		if (bt_memfd_check(fd, f->len, why, sizeof(why))) {
			close(fd);
			violation(c, why, id, strlen(id));
			return;
		}
		payload = bt_memfd_map(fd, f->len);
		if (!payload && f->len) {
			/* baton's own lack (address space): a transient failure. */
			close(fd);
			bt_stage_result(release_slot(r, slot), NULL, 0, NULL,
					"baton cannot map the answer's memfd", 1);
			return;
		}
		len = f->len;
	} else if (!error) {
		/* A fast failure's payload is its error text, not an answer. */
		payload = f->payload;
		len = f->len;
		f->payload = NULL;
	}
	struct bt_request *req = release_slot(r, slot);
	bt_stage_result_fd(req, payload, len, fd, meta, error, retry);
}

/* A source's item or end of session, handed to its stream. */
static void on_source_message(struct bt_child *c, struct bt_replica *r, struct bt_frame *f)
{
	const struct bt_source_ops *ops = r->stage->source_ops;
	char why[256] = "";
	int e;
	if (r->state != BT_REPLICA_READY && r->state != BT_REPLICA_DRAINING &&
	    r->state != BT_REPLICA_STOPPING) {
		violation(c, "an item before \"ready\"", f->type, strlen(f->type));
		return;
	}
	if (!strcmp(f->type, "emit")) {
		json_t *meta = json_object_get(f->hdr, "meta");
		if (meta && !json_is_object(meta)) {
			violation(c, "\"meta\" of \"emit\" is not an object", NULL, 0);
			return;
		}
		char *payload = f->payload;
		f->payload = NULL;
		e = ops->emit(r->stage->source_arg, r, payload, f->len, meta, why, sizeof(why));
	} else {
		e = ops->eos(r->stage->source_arg, r, f->hdr, why, sizeof(why));
	}
	if (e)
		violation(c, why, f->type, strlen(f->type));
}

static void on_message(struct bt_child *c, struct bt_frame *f)
{
	struct bt_replica *r = c->replica;
	const char *t = f->type;
	if (f->memfd && (!c->memfd || strcmp(t, "res"))) {
		violation(c, c->memfd ? "\"memfd\" on a message other than \"res\""
				      : "\"memfd\" from a worker that did not announce it",
			  t, strlen(t));
	} else if (!strcmp(t, "ready")) {
		on_ready(c, r, f->hdr);
	} else if (r->state == BT_REPLICA_STARTING) {
		violation(c, "a message before \"ready\"", t, strlen(t));
	} else if (r->stage->source_ops && (!strcmp(t, "emit") || !strcmp(t, "eos"))) {
		on_source_message(c, r, f);
	} else if (!strcmp(t, "res")) {
		on_result(c, r, f);
	} else if (!strcmp(t, "pong")) {
		/*
		 * A pong answers a ping this process was sent: the outstanding one,
		 * or an earlier one answered late (it was busy, or is stopping).
		 * Anything else was not asked for.
		 */
		json_t *seq = json_object_get(f->hdr, "seq");
		json_int_t n = json_is_integer(seq) ? json_integer_value(seq) : 0;
		if (n < (json_int_t)c->first_ping || n < 1 || (uint64_t)n > r->ping_seq) {
			char *sent = json_dumps(f->hdr, JSON_COMPACT);
			violation(c, "a pong that answers no ping", sent, sent ? strlen(sent) : 0);
			free(sent);
		} else if ((uint64_t)n == r->ping_seq)
			r->ping_outstanding = 0;
	} else {
		violation(c, "unknown message type", t, strlen(t));
	}
}

static void feed_channel(struct bt_child *c, const char *p, size_t n)
{
	while (n > 0 && c->replica) {
		struct bt_frame f;
		ssize_t used = bt_frame_decode(&c->dec, p, n, &f);
		if (used < 0) {
			violation(c, c->dec.err, c->dec.line.data, c->dec.line.len);
			return;
		}
		p += used;
		n -= (size_t)used;
		if (!bt_frame_complete(&f))
			continue;
		if (f.memfd) {
			if (!c->nrecv) {
				bt_frame_release(&f);
				violation(c, "a \"memfd\" header without a descriptor", NULL, 0);
				return;
			}
			c->frame_fd = c->recvq[0];
			memmove(c->recvq, c->recvq + 1, (size_t)--c->nrecv * sizeof(int));
		}
		on_message(c, &f);
		bt_frame_release(&f);
		if (c->frame_fd >= 0) /* not claimed: the message was refused */
			close(c->frame_fd);
		c->frame_fd = -1;
	}
}

/*
 * Keeps a descriptor the worker sent, in order (-1 holds the place of one
 * baton had no room for); false when it sent too many.
 */
static int keep_fd(struct bt_child *c, int fd)
{
	if (c->nrecv == BT_RECV_FDS) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	c->recvq[c->nrecv++] = fd;
	return 1;
}

static void fd_holder_closed_cb(uv_handle_t *h)
{
	free(h);
}

/*
 * Takes the descriptors libuv received on the channel.  libuv hands them
 * out only through uv_accept into a handle: the handle's is duplicated
 * and the handle closed.
 */
static int collect_fds(struct bt_child *c)
{
	int ok = 1;
	while (uv_pipe_pending_count(&c->chan) > 0) {
		uv_pipe_t *h = bt_malloc(sizeof(*h));
		uv_os_fd_t fd = -1;
		uv_pipe_init(c->d->loop, h, 0);
		if (uv_accept((uv_stream_t *)&c->chan, (uv_stream_t *)h) == 0 &&
		    uv_fileno((uv_handle_t *)h, &fd) == 0) {
			/* Out of descriptors, the dup fails: baton's lack, not the worker's fault. */
			if (!keep_fd(c, fcntl(fd, F_DUPFD_CLOEXEC, 0)))
				ok = 0;
		}
		uv_close((uv_handle_t *)h, fd_holder_closed_cb);
	}
	return ok;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	buf->base = bt_read_buf();
	buf->len = BT_READ_BUF_SIZE;
}

static void eof_timeout_cb(uv_timer_t *t)
{
	child_lost(t->data, "closed its channel (fd 3) without exiting");
}

static void chan_read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct bt_child *c = s->data;
	if (n > 0) {
		if (!collect_fds(c)) {
			violation(c, "descriptors that no header announced", NULL, 0);
			return;
		}
		feed_channel(c, buf->base, (size_t)n);
	} else if (n < 0) {
		uv_read_stop(s);
		if (n != UV_EOF) {
			child_lost(c, "error reading its channel");
			return;
		}
		/*
		 * EOF usually means the process is exiting: wait a little for its
		 * exit status, which says more than "closed its channel".  A
		 * worker told to stop is waited for by the stop escalation.
		 */
		if (c->replica && c->replica->state != BT_REPLICA_STOPPING)
			uv_timer_start(&c->eof_timer, eof_timeout_cb, 1000, 0);
	}
}

/* ---- worker output ----------------------------------------------------- */

static void consume_output(struct bt_child *c, int which, const char *p, size_t n)
{
	bt_lines_feed(&c->lines[which], p, n);
}

static void flush_output(struct bt_child *c)
{
	bt_lines_flush(&c->lines[0]);
	bt_lines_flush(&c->lines[1]);
}

static void out_read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct bt_child *c = s->data;
	if (n > 0)
		consume_output(c, s == (uv_stream_t *)&c->err, buf->base, (size_t)n);
	else if (n < 0)
		uv_read_stop(s);
}

/* Reads what a dead process left in a pipe, without blocking. */
static void drain(struct bt_child *c, uv_pipe_t *p, int which)
{
	int fd;
	if (uv_is_closing((uv_handle_t *)p) || uv_fileno((uv_handle_t *)p, &fd))
		return;
	for (int i = 0; i < 64; i++) {
		ssize_t n;
		if (which < 0) {
			/* The channel's descriptors come with its bytes: take both. */
			union {
				struct cmsghdr h;
				char space[CMSG_SPACE(sizeof(int) * BT_RECV_FDS)];
			} ctl;
			struct iovec iov = {bt_read_buf(), BT_READ_BUF_SIZE};
			struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
					     .msg_control = ctl.space,
					     .msg_controllen = sizeof(ctl.space)};
			n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
			int ok = 1;
			for (struct cmsghdr *h = n > 0 ? CMSG_FIRSTHDR(&msg) : NULL; h;
			     h = CMSG_NXTHDR(&msg, h)) {
				if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
					continue;
				size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
				for (size_t j = 0; j < k; j++) {
					int rfd;
					memcpy(&rfd, CMSG_DATA(h) + j * sizeof(int), sizeof(int));
					ok &= keep_fd(c, rfd);
				}
			}
			if (n <= 0 || !c->replica)
				break;
			if (!ok) {
				violation(c, "descriptors that no header announced", NULL, 0);
				break;
			}
			feed_channel(c, bt_read_buf(), (size_t)n);
			continue;
		}
		n = read(fd, bt_read_buf(), BT_READ_BUF_SIZE);
		if (n <= 0)
			break;
		consume_output(c, which, bt_read_buf(), (size_t)n);
	}
}

static void exit_cb(struct bt_process *p, int64_t status, int sig)
{
	struct bt_child *c = p->poll.data;
	char why[96];
	c->exited = 1;
	if (sig == SIGKILL && bt_unit_oom_killed(c->unit) && c->replica) {
		/* memory.max: the kernel ended the unit, as baton's own check would. */
		c->reason = BT_FAIL_MEMORY;
		snprintf(why, sizeof(why), "killed by the kernel: over memory_mb %llu (cgroup memory.max)",
			 (unsigned long long)cfg_of(c->replica)->memory_mb);
	} else if (sig)
		snprintf(why, sizeof(why), "killed by signal %d (%s)", sig, strsignal(sig));
	else
		snprintf(why, sizeof(why), "exited with status %lld", (long long)status);
	/* The leader is gone; anything it left, in its group or not, goes with it. */
	bt_unit_end(c->unit);
	/* Results written just before exiting are still in the socket. */
	drain(c, &c->chan, -1);
	drain(c, &c->out, 0);
	drain(c, &c->err, 1);
	flush_output(c);
	child_lost(c, why);
	close_handle((uv_handle_t *)&c->eof_timer);
	bt_process_close(&c->proc, handle_closed_cb);
	close_handle((uv_handle_t *)&c->chan);
	close_handle((uv_handle_t *)&c->out);
	close_handle((uv_handle_t *)&c->err);
}

/* ---- writing --------------------------------------------------------------- */

static void child_write(struct bt_child *c);

/* libuv lengths are unsigned int and results int: write at most this at once. */
#define WRITE_CHUNK ((size_t)1 << 30)

static void start_busy_write(struct bt_child *c);

/*
 * How much of the avail bytes from wout the next write may take: up to
 * the next descriptor's header, or, when that header starts at wout, up
 * to the one after (*with_fd set: the write carries sendq[0]).
 */
static size_t next_chunk(const struct bt_child *c, size_t avail, int *with_fd)
{
	size_t chunk = BT_MIN(avail, WRITE_CHUNK);
	*with_fd = 0;
	if (!c->nsend)
		return chunk;
	if (c->sendq[0].pos > c->wout)
		return BT_MIN(chunk, (size_t)(c->sendq[0].pos - c->wout));
	*with_fd = 1;
	if (c->nsend > 1)
		chunk = BT_MIN(chunk, (size_t)(c->sendq[1].pos - c->wout));
	return chunk;
}

static void fd_sent_cb(uv_handle_t *h)
{
	free(h);
}

static void write_cb(uv_write_t *w, int status)
{
	struct bt_child *c = w->data;
	c->writing = 0;
	if (c->sending) {
		/* Sent (the worker has its own copy) or never will be: ours goes. */
		uv_close((uv_handle_t *)c->sending, fd_sent_cb);
		c->sending = NULL;
	}
	if (status < 0) {
		c->wbusy.len = 0;
		if (status != UV_ECANCELED)
			child_kill(c, BT_FAIL_CRASH, "cannot write to its channel");
		return;
	}
	bt_buf_consume(&c->wbusy, c->wbusy_chunk);
	c->wout += c->wbusy_chunk;
	if (c->wbusy.len) { /* a batch over WRITE_CHUNK, or a descriptor's turn */
		start_busy_write(c);
		return;
	}
	if (c->wbuf.len)
		child_write(c);
}

static void start_busy_write(struct bt_child *c)
{
	int with_fd, e;
	c->wbusy_chunk = next_chunk(c, c->wbusy.len, &with_fd);
	uv_buf_t b = uv_buf_init(c->wbusy.data, (unsigned)c->wbusy_chunk);
	c->wreq.data = c;
	if (with_fd) {
		/*
		 * libuv sends a descriptor only as a stream handle's (uv_write2,
		 * SCM_RIGHTS with the first bytes written): wrap ours in one.
		 */
		int fd = c->sendq[0].fd;
		memmove(c->sendq, c->sendq + 1, (size_t)--c->nsend * sizeof(*c->sendq));
		c->sending = bt_malloc(sizeof(*c->sending));
		uv_pipe_init(c->d->loop, c->sending, 0);
		e = uv_pipe_open(c->sending, fd);
		if (e)
			close(fd);
		else
			e = uv_write2(&c->wreq, (uv_stream_t *)&c->chan, &b, 1,
				      (uv_stream_t *)c->sending, write_cb);
		if (e) {
			uv_close((uv_handle_t *)c->sending, fd_sent_cb);
			c->sending = NULL;
		}
	} else {
		e = uv_write(&c->wreq, (uv_stream_t *)&c->chan, &b, 1, write_cb);
	}
	if (e == 0)
		c->writing = 1;
	else
		child_kill(c, BT_FAIL_CRASH, "cannot write to its channel");
}

/*
 * Writes up to chunk bytes of wbuf with the descriptors whose headers
 * start within them (at most BT_SEND_FDS: what a receiver takes in one
 * recvmsg) attached to the first byte, as uv_try_write would: the bytes
 * written, or UV_EAGAIN. A descriptor may so arrive before its header,
 * never after (docs/protocol.md); once a byte is written, every attached
 * one has gone. *chunk is cut where a descriptor that did not fit starts.
 */
static int try_write_fds(struct bt_child *c, size_t *chunk)
{
	int fds[BT_SEND_FDS], k = 0, sock;
	while (k < c->nsend && k < BT_SEND_FDS && c->sendq[k].pos < c->wout + *chunk) {
		fds[k] = c->sendq[k].fd;
		if (fds[k++] < 0)
			return UV_EMFILE; /* one that could not be kept (own_fds) */
	}
	if (k < c->nsend && c->sendq[k].pos < c->wout + *chunk)
		*chunk = (size_t)(c->sendq[k].pos - c->wout);
	if (uv_fileno((uv_handle_t *)&c->chan, &sock))
		return UV_EBADF;
	union {
		struct cmsghdr h;
		char space[CMSG_SPACE(sizeof(int) * BT_SEND_FDS)];
	} ctl;
	memset(&ctl, 0, sizeof(ctl));
	struct iovec iov = {c->wbuf.data, *chunk};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.space,
			     .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)k)};
	struct cmsghdr *h = CMSG_FIRSTHDR(&msg);
	h->cmsg_level = SOL_SOCKET;
	h->cmsg_type = SCM_RIGHTS;
	h->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)k);
	memcpy(CMSG_DATA(h), fds, sizeof(int) * (size_t)k);
	ssize_t n;
	do
		n = sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK ? UV_EAGAIN : -errno;
	/* Sent: the worker has its own copies. */
	for (int i = 0; i < k; i++)
		if (!c->sendq[i].borrowed)
			close(fds[i]);
	c->nsend -= k;
	memmove(c->sendq, c->sendq + k, (size_t)c->nsend * sizeof(*c->sendq));
	return (int)n;
}

/*
 * Writes what the channel takes now of wbuf, with its descriptors: 0, or
 * a libuv error the channel cannot recover from.
 */
static int write_some(struct bt_child *c)
{
	int n;
	size_t chunk;
	do {
		chunk = BT_MIN(c->wbuf.len, WRITE_CHUNK);
		if (c->nsend && c->sendq[0].pos < c->wout + chunk) {
			n = try_write_fds(c, &chunk);
		} else {
			uv_buf_t b = uv_buf_init(c->wbuf.data, (unsigned)chunk);
			n = uv_try_write((uv_stream_t *)&c->chan, &b, 1);
		}
		if (n < 0 && n != UV_EAGAIN)
			return n;
		if (n > 0) {
			bt_buf_consume(&c->wbuf, (size_t)n);
			c->wout += (size_t)n;
		}
	} while (c->wbuf.len && n == (int)chunk);
	return 0;
}

static void child_write(struct bt_child *c)
{
	if (c->writing || !c->wbuf.len || !c->replica ||
	    uv_is_closing((uv_handle_t *)&c->chan))
		return;
	int e = write_some(c);
	if (e) {
		child_kill(c, BT_FAIL_CRASH, e == UV_EMFILE
						     ? "cannot pass a descriptor on: out of descriptors"
						     : "cannot write to its channel");
		return;
	}
	if (!c->wbuf.len)
		return;
	struct bt_buf tmp = c->wbusy;
	c->wbusy = c->wbuf;
	c->wbuf = tmp;
	c->wbuf.len = 0;
	start_busy_write(c);
}

void bt_proc_flush(struct bt_daemon *d)
{
	struct bt_child *c;
	while ((c = d->dirty)) {
		d->dirty = c->next_dirty;
		c->dirty = 0;
		c->next_dirty = NULL;
		child_write(c);
	}
}

/* ---- starting ---------------------------------------------------------- */

static void start_timeout_cb(uv_timer_t *t)
{
	struct bt_replica *r = t->data;
	char why[96];
	snprintf(why, sizeof(why), "did not say ready within %llums (start_timeout_ms)",
		 (unsigned long long)cfg_of(r)->start_timeout_ms);
	if (r->child)
		child_kill(r->child, BT_FAIL_START_TIMEOUT, why);
}

static void ping_cb(uv_timer_t *t)
{
	struct bt_replica *r = t->data;
	const struct bt_stage_config *cfg = cfg_of(r);
	struct bt_child *c = r->child;
	if (!c || r->state != BT_REPLICA_READY)
		return;
	uint64_t now = bt_now_ms();
	if (r->ping_outstanding) {
		if (now - r->ping_sent_ms >= cfg->ping_timeout_ms) {
			char why[96];
			snprintf(why, sizeof(why), "no pong within %llums (ping_timeout_ms)",
				 (unsigned long long)(now - r->ping_sent_ms));
			child_kill(c, BT_FAIL_PING, why);
		}
		return;
	}
	if (r->ninflight)
		return;
	r->ping_outstanding = 1;
	r->ping_sent_ms = now;
	send_frame(c, json_pack("{s:s, s:I}", "t", "ping", "seq", (json_int_t)++r->ping_seq),
		   NULL, 0);
}

/* arg with "{station}" and "{url}" replaced (malloc'd). */
static char *substitute(const char *arg, const char *station, const char *url)
{
	struct bt_buf b = BT_BUF_INIT;
	while (*arg) {
		if (!strncmp(arg, "{station}", 9)) {
			bt_buf_puts(&b, station);
			arg += 9;
		} else if (!strncmp(arg, "{url}", 5)) {
			bt_buf_puts(&b, url);
			arg += 5;
		} else {
			bt_buf_append(&b, arg++, 1);
		}
	}
	bt_buf_append(&b, "", 1);
	return bt_buf_detach(&b, NULL);
}

static int spawn(struct bt_replica *r)
{
	struct bt_daemon *d = daemon_of(r);
	const struct bt_stage_config *cfg = cfg_of(r);
	int e = 0;
	struct bt_unit *unit = bt_unit_new(d->contain, cfg->name, r->id, cfg->memory_mb, &e);
	if (!unit)
		return e;
	struct bt_child *c = bt_calloc(1, sizeof(*c));
	c->unit = unit;
	c->d = d;
	c->stage = cfg->name;
	c->replica_id = r->id;
	c->charge = 1;
	c->frame_fd = -1;
	/* ipc: libuv then reads with recvmsg and keeps the descriptors a worker sends. */
	uv_pipe_init(d->loop, &c->chan, 1);
	uv_pipe_init(d->loop, &c->out, 0);
	uv_pipe_init(d->loop, &c->err, 0);
	uv_timer_init(d->loop, &c->eof_timer);
	c->proc.poll.data = c->chan.data = c->out.data = c->err.data = c->eof_timer.data = c;

	uv_stdio_container_t stdio[4];
	stdio[0].flags = UV_IGNORE;
	stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
	stdio[1].data.stream = (uv_stream_t *)&c->out;
	stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
	stdio[2].data.stream = (uv_stream_t *)&c->err;
	stdio[3].flags = UV_CREATE_PIPE | UV_READABLE_PIPE | UV_WRITABLE_PIPE;
	stdio[3].data.stream = (uv_stream_t *)&c->chan;

	struct bt_launch l;
	char *extra[] = {"BATON_FD=3", "BATON_PROTO=1", NULL, NULL, NULL, NULL};
	char **argv = cfg->argv;
	char memfd_env[48];
	/* From this size a worker may answer with a memfd (docs/protocol.md). */
	snprintf(memfd_env, sizeof(memfd_env), "BATON_MEMFD_MIN=%zu", d->cfg->memfd_min_bytes);
	if (r->station) {
		/* A station's source learns which camera it reads. */
		extra[2] = bt_asprintf("BATON_STATION=%s", r->station);
		extra[3] = bt_asprintf("BATON_SOURCE_URL=%s", r->url);
		argv = bt_calloc((size_t)cfg->argc + 1, sizeof(*argv));
		for (int i = 0; i < cfg->argc; i++)
			argv[i] = substitute(cfg->argv[i], r->station, r->url);
	}
	if (d->cfg->memfd_min_bytes)
		extra[r->station ? 4 : 2] = memfd_env;
	bt_launch_init(&l, r, argv, extra, c->unit);
	l.opts.stdio_count = 4;
	l.opts.stdio = stdio;

	c->handles = 5;
	d->live_children++;
	e = bt_process_spawn(d->loop, &c->proc, &l.opts, exit_cb);
	bt_launch_release(&l);
	if (argv != cfg->argv) {
		for (int i = 0; i < cfg->argc; i++)
			free(argv[i]);
		free(argv);
	}
	if (r->station) {
		free(extra[2]);
		free(extra[3]);
	}
	if (e) {
		/* No process: close the other handles; the child frees itself. */
		c->exited = 1;
		c->handles--;
		close_handle((uv_handle_t *)&c->eof_timer);
		close_handle((uv_handle_t *)&c->chan);
		close_handle((uv_handle_t *)&c->out);
		close_handle((uv_handle_t *)&c->err);
		return e;
	}
	c->pid = c->proc.pid;
	bt_unit_started(c->unit, c->pid);
	bt_lines_init(&c->lines[0], cfg->name, r->id, c->pid, "stdout");
	bt_lines_init(&c->lines[1], cfg->name, r->id, c->pid, "stderr");
	c->lines[1].last = r->stage->last_stderr; /* the stage outlives its processes */
	_Static_assert(sizeof(r->stage->last_stderr) == BT_LINES_LAST, "last_stderr size");
	for (int i = 0; i < 2; i++)
		bt_lines_limit(&c->lines[i], cfg->log_interval_ms, cfg->log_lines, cfg->log_bytes);
	bt_frame_decoder_init(&c->dec, d->cfg->max_payload_bytes);
	uv_read_start((uv_stream_t *)&c->chan, alloc_cb, chan_read_cb);
	uv_read_start((uv_stream_t *)&c->out, alloc_cb, out_read_cb);
	uv_read_start((uv_stream_t *)&c->err, alloc_cb, out_read_cb);
	c->replica = r;
	c->first_ping = r->ping_seq + 1;
	r->child = c;
	return 0;
}

void bt_replica_start(struct bt_replica *r)
{
	const struct bt_stage_config *cfg = cfg_of(r);
	BT_ASSERT(!r->child);
	if (daemon_of(r)->state >= BT_DAEMON_STOPPING)
		return;
	uv_timer_stop(&r->timer);
	char reason[sizeof(r->pending_reason)];
	if (r->gpu < 0 && bt_daemon_place(daemon_of(r), r, reason, sizeof(reason))) {
		/* Waiting for room is not a failure: the tick tries again. */
		if (r->state != BT_REPLICA_PENDING || strcmp(reason, r->pending_reason))
			bt_warn("replica pending", "stage=%s replica=%d reason=%s", cfg->name,
				r->id, BT_LOGQ(reason));
		memcpy(r->pending_reason, reason, sizeof(reason));
		r->state = BT_REPLICA_PENDING;
		bt_stage_replicas_changed(r->stage);
		return;
	}
	r->pending_reason[0] = '\0';
	if (cfg->mode == BT_MODE_SPAWN) {
		/* A slot: its processes start with their requests. */
		r->state = BT_REPLICA_READY;
		r->ready_ms = bt_now_ms();
		bt_stage_replicas_changed(r->stage);
		return;
	}
	r->state = BT_REPLICA_STARTING;
	r->spawned_ms = bt_now_ms();
	r->ready_ms = 0;
	r->ping_outstanding = 0;
	if (r->starts++)
		r->restarts++;
	int e = spawn(r);
	if (e && bt_resource_error(e)) {
		/* baton's lack, not the worker's fault: try again later, uncounted. */
		uint64_t delay = bt_backoff_delay_ms(RESOURCE_BACKOFF_MS, RESOURCE_BACKOFF_MAX_MS,
						     ++r->resource_waits);
		bt_warn("cannot spawn replica for lack of resources: will retry",
			"stage=%s replica=%d error=\"%s\" retry_in_ms=%llu", cfg->name, r->id,
			uv_strerror(e), (unsigned long long)delay);
		snprintf(r->last_exit, sizeof(r->last_exit), "cannot spawn: %s", uv_strerror(e));
		r->state = BT_REPLICA_BACKOFF;
		uv_timer_start(&r->timer, backoff_cb, delay, 0);
		bt_stage_replicas_changed(r->stage);
		return;
	}
	if (e) {
		char why[160];
		snprintf(why, sizeof(why), "cannot spawn: %s", uv_strerror(e));
		bt_error("cannot spawn replica", "stage=%s replica=%d error=%s",
			 cfg->name, r->id, BT_LOGQ(uv_strerror(e)));
		replica_died(r, 0, 1, BT_FAIL_SPAWN, why);
		return;
	}
	r->resource_waits = 0;
	bt_info("replica starting", "stage=%s replica=%d pid=%d", cfg->name, r->id,
		r->child->pid);
	uv_timer_start(&r->timer, start_timeout_cb, cfg->start_timeout_ms, 0);
	bt_stage_replicas_changed(r->stage);
}

static void backoff_cb(uv_timer_t *t)
{
	struct bt_replica *r = t->data;
	if (r->state == BT_REPLICA_BACKOFF)
		bt_replica_start(r);
}

void bt_replica_revive(struct bt_replica *r)
{
	if (r->state != BT_REPLICA_FAILED && r->state != BT_REPLICA_BACKOFF)
		return;
	r->failures = 0;
	bt_replica_start(r);
}

/* ---- requests ------------------------------------------------------------ */

/* Appends a descriptor to send with the frame byte at pos. */
static void add_fd(struct bt_sendfd **fds, int *n, int *cap, size_t pos, int fd, int borrowed)
{
	if (*n == *cap) {
		*cap = *cap ? 2 * *cap : 4;
		*fds = bt_realloc(*fds, (size_t)*cap * sizeof(**fds));
	}
	(*fds)[(*n)++] = (struct bt_sendfd){pos, fd, borrowed};
}

/* fd itself when borrowed (sent before this turn ends), else a copy of it to queue. */
static int fd_to_send(int fd, int borrow)
{
	return borrow ? fd : fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

/*
 * The borrowed descriptors the channel did not take at once become copies
 * of their own: their requests may end before they go. One that cannot be
 * copied is marked -1, and the channel's next write ends the worker (its
 * requests go elsewhere, as after a crash).
 */
static void own_fds(struct bt_child *c)
{
	for (int i = 0; i < c->nsend; i++) {
		if (!c->sendq[i].borrowed)
			continue;
		c->sendq[i].fd = fcntl(c->sendq[i].fd, F_DUPFD_CLOEXEC, 0);
		c->sendq[i].borrowed = 0;
	}
}

/*
 * The "place" member of req's frame to c ([[output, bytes], ...], one
 * descriptor each), when c is the last stage and writes outputs into
 * shared memory itself (docs/protocol.md); NULL otherwise.
 */
static json_t *place_for(struct bt_child *c, const struct bt_request *req)
{
	if (!req->places || !c->place || req->step + 1 != req->nroute)
		return NULL;
	json_t *a = json_array();
	for (size_t i = 0; i < req->places->n; i++)
		json_array_append_new(a, json_pack("[s,I]", req->places->v[i].name,
						   (json_int_t)req->places->v[i].len));
	return a;
}

/*
 * A descriptor of req's payload to send to c (a copy of the request's
 * sealed memfd, made at the first hop that can use one), or -1: send bytes.
 */
static int memfd_for(struct bt_child *c, struct bt_request *req, int borrow)
{
	size_t min = c->d->cfg->memfd_min_bytes;
	if (!c->memfd || !min || req->len < min)
		return -1;
	if (req->payload_fd < 0) {
		int fd = bt_memfd_from(req->payload, req->len);
		char *map = fd >= 0 ? bt_memfd_map(fd, req->len) : NULL;
		if (!map) {
			/* Bytes still work: no memfd this time. */
			if (fd >= 0)
				close(fd);
			return -1;
		}
		free(req->payload);
		req->payload = map;
		req->payload_fd = fd;
	}
	return fd_to_send(req->payload_fd, borrow);
}

int bt_replica_send(struct bt_replica *r, struct bt_request **reqs, int n)
{
	struct bt_child *c = r->child;
	const struct bt_stage_config *cfg = cfg_of(r);
	if (cfg->mode == BT_MODE_SPAWN) {
		BT_ASSERT(n == 1 && !r->job && r->nbatches == 0);
		char why[256];
		if (bt_request_flatten(reqs[0], why, sizeof(why))) {
			bt_stage_unsendable(reqs[0], why);
			return 0;
		}
		reqs[0]->batch_slot = 0;
		r->batch_left[0] = 1;
		r->nbatches = 1;
		r->inflight[r->ninflight++] = reqs[0];
		int e = bt_spawn_start(r, reqs[0]);
		if (e && bt_resource_error(e)) {
			/* Not the script's fault: the slot rests, the request waits uncharged. */
			uint64_t delay = bt_backoff_delay_ms(RESOURCE_BACKOFF_MS,
							     RESOURCE_BACKOFF_MAX_MS,
							     ++r->resource_waits);
			bt_warn("cannot spawn for lack of resources: will retry",
				"stage=%s replica=%d error=\"%s\" retry_in_ms=%llu", cfg->name,
				r->id, bt_strerror(e), (unsigned long long)delay);
			bt_replica_release(r, reqs[0]);
			r->state = BT_REPLICA_BACKOFF;
			uv_timer_start(&r->timer, backoff_cb, delay, 0);
			bt_stage_lost(reqs[0], 0, "cannot spawn for lack of resources");
			bt_stage_replicas_changed(r->stage);
			return 0;
		}
		r->resource_waits = 0;
		if (e) {
			char why[160];
			snprintf(why, sizeof(why), "cannot spawn: %s", bt_strerror(e));
			bt_error("cannot spawn", "stage=%s replica=%d error=%s", cfg->name, r->id,
				 BT_LOGQ(bt_strerror(e)));
			bt_replica_release(r, reqs[0]);
			r->stage->failures[BT_FAIL_SPAWN]++;
			bt_stage_lost(reqs[0], 1, why);
			return 0;
		}
		bt_stage_replica_changed(r);
		return 1;
	}
	BT_ASSERT(c && r->state == BT_REPLICA_READY && r->nbatches < cfg->max_ongoing);
	int b = 0;
	while (r->batch_left[b])
		b++;
	/*
	 * A batch's frames wait in a buffer of their own behind the batch header
	 * their count decides; one request's go straight into wbuf (a 6 MB
	 * payload sent as bytes is then copied once on its way, not twice).
	 */
	struct bt_buf batch = BT_BUF_INIT;
	struct bt_buf *out = n > 1 ? &batch : &c->wbuf;
	size_t origin = out->len; /* where this call's frames start in *out */
	struct unsendable {
		struct bt_request *req;
		char why[256];
	} *unsendable = NULL;
	struct bt_sendfd *fds = NULL; /* positions within *out, from origin */
	int sent = 0, nunsendable = 0, nfds = 0, capfds = 0;
	/*
	 * A channel with nothing queued is written before this returns: its
	 * descriptors can be the requests' own, not copies (no dup, no close).
	 */
	int borrow = !c->writing && !c->wbuf.len && !c->nsend;
	for (int i = 0; i < n; i++) {
		struct bt_request *req = reqs[i];
		char why[256] = "request metadata does not fit in a 64 KiB header";
		/*
		 * A tail goes as it is only to a worker that takes it, and only while
		 * its descriptor shows nothing else (the client may have grown it).
		 */
		int e = req->tail && !(c->region && bt_payload_tail_confined(req->tail))
				? bt_request_flatten(req, why, sizeof(why))
				: 0;
		int fd = e ? -1 : req->tail ? fd_to_send(req->tail->fd, borrow)
					    : memfd_for(c, req, borrow);
		size_t at = out->len - origin;
		/* The last stage may write outputs into their regions itself. */
		json_t *place = place_for(c, req);
		if (e) {
			/* Failed below, with why. */
		} else if (req->tail) {
			/* The head in the frame, the tail behind the descriptor (docs/protocol.md). */
			if (fd < 0) {
				e = -errno;
				snprintf(why, sizeof(why), "cannot pass the shared memory input on: %s",
					 bt_strerror(e));
			} else {
				json_t *hdr = json_pack("{s:s, s:s, s:O, s:[I,I]}", "t", "req", "id",
							req->idstr, "meta", req->meta, "region",
							(json_int_t)req->tail->off,
							(json_int_t)req->tail->len);
				if (place)
					json_object_set(hdr, "place", place);
				e = bt_frame_encode(out, hdr, req->payload,
						    req->len - req->tail->len);
				json_decref(hdr);
			}
		} else if (fd < 0 && c->dec.fast && !place) {
			/* Frames that carry a descriptor keep the JSON header. */
			e = bt_frame_encode_fast(out, BT_FAST_REQ, 0, req->idstr, req->meta,
						 req->payload, req->len);
		} else {
			json_t *hdr = json_pack("{s:s, s:s, s:O}", "t", "req", "id", req->idstr,
						"meta", req->meta);
			if (place)
				json_object_set(hdr, "place", place);
			if (fd >= 0) {
				json_object_set_new(hdr, "memfd", json_integer((json_int_t)req->len));
				e = bt_frame_encode(out, hdr, NULL, 0);
			} else {
				e = bt_frame_encode(out, hdr, req->payload, req->len);
			}
			json_decref(hdr);
		}
		if (fd >= 0 && e) {
			if (!borrow)
				close(fd);
		} else if (fd >= 0) {
			add_fd(&fds, &nfds, &capfds, at, fd, borrow);
		}
		if (place && !e) {
			/* After the payload's, one byte apart: in order, each no later than the header. */
			size_t k = fd >= 0 ? 1 : 0;
			for (size_t j = 0; j < req->places->n && !e; j++) {
				int pfd = fd_to_send(req->places->v[j].fd, borrow);
				if (pfd < 0) {
					e = -errno;
					snprintf(why, sizeof(why), "cannot pass a shared memory output on: %s",
						 bt_strerror(e));
				} else {
					add_fd(&fds, &nfds, &capfds, at + k++, pfd, borrow);
				}
			}
			if (e) { /* the frame is in *out already: take it and its descriptors back */
				while (nfds && fds[nfds - 1].pos >= at)
					if (!fds[--nfds].borrowed)
						close(fds[nfds].fd);
				out->len = origin + at;
				out->data[out->len] = '\0';
			}
		}
		json_decref(place);
		if (req->places)
			req->places->handed = place && !e;
		if (e) {
			/* Failed alone, once the rest of the batch is on its way. */
			if (!unsendable)
				unsendable = bt_malloc((size_t)n * sizeof(*unsendable));
			unsendable[nunsendable].req = req;
			snprintf(unsendable[nunsendable++].why, sizeof(why), "%s", why);
			continue;
		}
		req->batch_slot = b;
		r->inflight[r->ninflight++] = req;
		sent++;
	}
	if (sent) {
		r->batch_left[b] = sent;
		r->nbatches++;
		bt_stage_replica_changed(r);
		if (sent > 1) {
			char hdr[64];
			int hl = snprintf(hdr, sizeof(hdr), "{\"t\":\"batch\",\"n\":%d}\n", sent);
			bt_buf_append(&c->wbuf, hdr, (size_t)hl);
		}
		/* Where the stream stands once what is queued before these frames is written. */
		uint64_t base = c->wout + c->wbusy.len + (out == &batch ? c->wbuf.len : origin);
		for (int i = 0; i < nfds; i++) {
			if (c->nsend == c->capsend) {
				c->capsend = c->capsend ? 2 * c->capsend : 4;
				c->sendq = bt_realloc(c->sendq, (size_t)c->capsend * sizeof(*c->sendq));
			}
			c->sendq[c->nsend++] = (struct bt_sendfd){base + fds[i].pos, fds[i].fd,
								  fds[i].borrowed};
		}
		if (out == &batch)
			bt_buf_append(&c->wbuf, batch.data, batch.len);
		if (borrow && nfds) {
			/* A failed write is found again, and acted on, by the next. */
			if (c->replica && !uv_is_closing((uv_handle_t *)&c->chan))
				(void)write_some(c);
			own_fds(c);
		}
		mark_dirty(c);
	}
	free(fds);
	bt_buf_release(&batch);
	for (int i = 0; i < nunsendable; i++)
		bt_stage_unsendable(unsendable[i].req, unsendable[i].why);
	free(unsendable);
	return sent;
}

void bt_replica_abandon(struct bt_replica *r, struct bt_request *req,
			const char *why)
{
	for (int i = 0; i < r->ninflight; i++) {
		if (r->inflight[i] == req) {
			release_slot(r, i);
			break;
		}
	}
	if (r->job) {
		bt_spawn_abandon(r);
		return;
	}
	if (!r->child)
		return;
	/* The others on this replica did nothing wrong: they keep their attempt. */
	r->child->charge = 0;
	child_kill(r->child, BT_FAIL_TIMEOUT, why);
}

void bt_replica_kill(struct bt_replica *r, enum bt_fail_reason reason, const char *why)
{
	if (r->child)
		child_kill(r->child, reason, why);
}

void bt_replica_drain(struct bt_replica *r)
{
	r->active = 0;
	const struct bt_source_ops *ops = r->stage->source_ops;
	if (ops) {
		/* A station finishes its open session before its source goes. */
		int wait = ops->drain(r->stage->source_arg, r);
		if (wait && r->state == BT_REPLICA_READY) {
			r->state = BT_REPLICA_DRAINING;
			r->source_hold = 1;
			bt_info("station draining", "stage=%s replica=%d station=%s", cfg_of(r)->name,
				r->id, r->station ? r->station : "");
			return;
		}
		bt_replica_stop(r, 0);
		return;
	}
	if (r->state == BT_REPLICA_READY && (r->ninflight || r->job)) {
		r->state = BT_REPLICA_DRAINING;
		bt_info("replica draining", "stage=%s replica=%d in_flight=%d", cfg_of(r)->name,
			r->id, r->ninflight);
		return;
	}
	bt_replica_stop(r, 0);
}

/* ---- stopping ------------------------------------------------------------ */

static void stop_escalate_cb(uv_timer_t *t)
{
	struct bt_replica *r = t->data;
	struct bt_child *c = r->child;
	if (r->job && r->state == BT_REPLICA_STOPPING) {
		bt_spawn_signal(r, r->stop_phase++ == 0 ? SIGTERM : SIGKILL);
		if (r->stop_phase < 2)
			uv_timer_start(&r->timer, stop_escalate_cb, cfg_of(r)->grace_ms, 0);
		return;
	}
	if (!c || r->state != BT_REPLICA_STOPPING)
		return;
	if (r->stop_phase == 0) {
		r->stop_phase = 1;
		bt_warn("replica did not stop in time, sending SIGTERM",
			"stage=%s replica=%d pid=%d grace_ms=%llu", c->stage, r->id, c->pid,
			(unsigned long long)cfg_of(r)->grace_ms);
		bt_unit_signal(c->unit, SIGTERM);
		uv_timer_start(&r->timer, stop_escalate_cb, cfg_of(r)->grace_ms, 0);
	} else {
		r->stop_phase = 2;
		bt_warn("replica ignored SIGTERM, sending SIGKILL",
			"stage=%s replica=%d pid=%d", c->stage, r->id, c->pid);
		bt_unit_signal(c->unit, SIGKILL);
	}
}

void bt_replica_credit(struct bt_replica *r, int n)
{
	if (r->child && r->state == BT_REPLICA_READY)
		send_frame(r->child, json_pack("{s:s, s:i}", "t", "credit", "n", n), NULL, 0);
}

void bt_replica_stop(struct bt_replica *r, int now)
{
	struct bt_child *c = r->child;
	r->source_hold = 0;
	ping_stop(r);
	if (r->job) {
		/* A script cannot be asked to stop: give it grace_ms, then signals. */
		r->state = BT_REPLICA_STOPPING;
		r->stop_phase = 0;
		if (now)
			bt_spawn_signal(r, SIGKILL);
		else
			uv_timer_start(&r->timer, stop_escalate_cb, cfg_of(r)->grace_ms, 0);
		return;
	}
	if (!c) {
		uv_timer_stop(&r->timer);
		/* A failed replica scaled away frees its slot; an active one stays failed. */
		if (r->state != BT_REPLICA_FAILED || !r->active)
			r->state = BT_REPLICA_EXITED;
		bt_daemon_unplace(daemon_of(r), r);
		bt_stage_replicas_changed(r->stage);
		return;
	}
	if (r->state == BT_REPLICA_STOPPING && !now)
		return;
	r->state = BT_REPLICA_STOPPING;
	uv_timer_stop(&r->timer);
	if (now || cfg_of(r)->grace_ms == 0) {
		r->stop_phase = 2;
		bt_unit_signal(c->unit, SIGKILL);
		return;
	}
	r->stop_phase = 0;
	send_frame(c, json_pack("{s:s}", "t", "stop"), NULL, 0);
	uv_timer_start(&r->timer, stop_escalate_cb, cfg_of(r)->grace_ms, 0);
}

static void replica_handle_closed_cb(uv_handle_t *h)
{
	struct bt_replica *r = h->data;
	if (--r->closing == 0) {
		free(r->inflight);
		free(r->batch_left);
		free(r);
	}
}

void bt_replica_close(struct bt_replica *r)
{
	BT_ASSERT(!r->child && r->ninflight == 0);
	r->closing = 2;
	uv_close((uv_handle_t *)&r->timer, replica_handle_closed_cb);
	uv_close((uv_handle_t *)&r->ping_timer, replica_handle_closed_cb);
}
