/*
 * The serving daemon: owns the loop, the stages, pipelines and the HTTP
 * ingress, the per-loop-turn flush, signals and the shutdown sequence.
 * Everything reaches shared state through a struct bt_daemon passed down;
 * there are no globals, so a test can build a fresh one.
 */
#ifndef BT_DAEMON_H
#define BT_DAEMON_H

#include <jansson.h>
#include <uv.h>

#include "../config/config.h"
#include "../sched/sched.h"
#include "../scale/scale.h"

struct bt_http;
struct bt_streams;
struct bt_child;
struct bt_replica;
struct bt_sampler;

/* One scaling decision or refusal, for /v1/status (DESIGN §7). */
struct bt_scale_event {
	uint64_t unix_ms;
	const char *stage; /* borrowed from the config */
	int from, to;
	int applied; /* 0: a refusal */
	char reason[256];
};
#define BT_SCALE_HISTORY 128
#define BT_RELOAD_SPARE 64 /* stage and pipeline slots for reloads to add */

/* baton_scaling_decisions_total's label values, in this order. */
enum bt_scale_kind {
	BT_SCALE_UP,
	BT_SCALE_DOWN,
	BT_SCALE_REFUSED,
	BT_SCALE_NONE, /* applied, count unchanged: policy back on, manual scale to the count */
	BT_SCALE_KINDS
};
const char *bt_scale_kind_name(enum bt_scale_kind k);

enum bt_daemon_state {
	BT_DAEMON_RUNNING,
	BT_DAEMON_DRAINING, /* answering what was accepted, refusing the rest */
	BT_DAEMON_STOPPING, /* stopping replicas */
	BT_DAEMON_CLOSING, /* closing handles; the loop ends after */
};

struct bt_daemon {
	uv_loop_t *loop;
	struct bt_config *cfg;
	/*
	 * Stages and pipelines never move (they embed libuv handles, and
	 * requests point at them): a reload adds into spare slots, and marks
	 * what it removes (->removed) instead of freeing it.
	 */
	struct bt_stage *stages;
	int nstages, stages_cap;
	struct bt_pipeline *pipelines;
	int npipelines, pipelines_cap;
	struct bt_config **reloaded; /* configs loaded by SIGHUP, all kept until release */
	int nreloaded;
	struct bt_stage ***old_routes; /* pipelines' stage lists before a reload changed them */
	int nold_routes;
	struct bt_http *http;
	struct bt_grpc *grpc; /* NULL without grpc.listen */
	struct bt_contain *contain; /* what replicas start, however they fork */
	enum bt_daemon_state state;
	int hard_stop; /* a second signal: stop without waiting */
	uint64_t started_ms;
	uint64_t next_request_id;
	uint64_t in_flight; /* accepted, not yet answered */
	unsigned live_children; /* bt_child not yet freed */
	struct bt_heap deadlines;
	uv_timer_t deadline_timer;
	uint64_t armed_deadline; /* what deadline_timer is set for, 0 = none */
	uv_prepare_t prepare;
	uv_check_t check;
	uv_idle_t idle; /* keeps the poll from blocking while work is pending */
	int flush_pending;
	uv_signal_t sigterm, sigint, sighup;
	struct bt_child *dirty; /* children with frames to write */
	int exit_code;
	int no_http; /* set before start: no ingress (`baton run`) */
	int no_streams; /* set before start: no stations (`baton run`, `baton bench`) */
	struct bt_streams *streams; /* NULL without `streams:` */
	struct bt_cluster *cluster; /* NULL unless a stage's queue is in redis */
	/* resources and autoscaling */
	uv_timer_t tick; /* every cfg->interval_ms */
	uv_timer_t starter; /* starts the initial replicas a few per loop turn */
	int start_stage, start_replica; /* the next replica it looks at */
	struct bt_gpu_slot *gpus; /* placement view of each GPU */
	struct bt_gpu_sample *gpu_samples; /* NVML's view, when loaded */
	int ngpus;
	struct bt_nvml *nvml;
	struct bt_cpu_counters cpu_prev;
	double cpu_percent; /* system, last tick */
	uint64_t last_tick_ms;
	/* Giving freed memory back (tick.c): when last looked, what had come, a spike seen. */
	uint64_t mem_looked_ms, mem_seen_request_id;
	int mem_spike;
	struct bt_sampler *sampler; /* tick.c: the /proc scan, run off the loop */
	int policies; /* some stage has an autoscale policy: read system CPU every tick */
	uint64_t signals_wanted_until_ms; /* status or metrics were read: sample until then */
	struct bt_scale_event history[BT_SCALE_HISTORY]; /* a ring */
	int history_len, history_next;
	uint64_t scale_counts[BT_SCALE_KINDS];		 /* by enum bt_scale_kind */
	void (*on_idle)(struct bt_daemon *d, void *arg); /* run after each flush */
	void *on_idle_arg;
};

/* Builds the daemon over cfg (not started). */
void bt_daemon_init(struct bt_daemon *d, uv_loop_t *loop, struct bt_config *cfg);
/* Starts HTTP, replicas and signal handling. */
int bt_daemon_start(struct bt_daemon *d, char *err, size_t errlen);
/* Frees what init allocated, after the loop has ended. */
void bt_daemon_release(struct bt_daemon *d);

/* Asks for a flush (dispatch, writes) before the loop next blocks. */
void bt_daemon_wake(struct bt_daemon *d);
/* Begins the graceful stop (as SIGTERM does). */
void bt_daemon_shutdown(struct bt_daemon *d);
/* Called when a request ended or a child was freed: advances shutdown. */
void bt_daemon_progress(struct bt_daemon *d);

struct bt_pipeline *bt_daemon_pipeline(struct bt_daemon *d, const char *name);
struct bt_stage *bt_daemon_stage(struct bt_daemon *d, const char *name);
/* True when every stage has a way to serve and the daemon is not stopping. */
int bt_daemon_ready(const struct bt_daemon *d);
/*
 * GPU placement of a replica (a no-op for stages without GPU resources):
 * 0 when it holds a place, -1 with the reason when nothing fits.
 */
int bt_daemon_place(struct bt_daemon *d, struct bt_replica *r, char *reason, size_t len);
/* Gives a replica's GPU place back. */
void bt_daemon_unplace(struct bt_daemon *d, struct bt_replica *r);
/* Scales a stage to `to` replicas now, recording why. */
void bt_daemon_scale(struct bt_daemon *d, struct bt_stage *st, int to, const char *reason);
/* Records a decision or refusal in the history. */
void bt_daemon_record_scaling(struct bt_daemon *d, struct bt_stage *st, int from, int to,
			      int applied, const char *reason);
/* Active replicas of a stage (what scaling counts). */
int bt_stage_active(const struct bt_stage *st);
/*
 * reload.c: SIGHUP.  Loads and validates the config file again; on any
 * error, or a change it cannot apply, logs why and changes nothing.
 * Otherwise applies it: stages added, removed (once no request can reach
 * them) or changed in place, a changed command or environment rolling the
 * replicas (new ones ready before old ones drain).  0 or BT_ECONFIG.
 */
int bt_daemon_reload(struct bt_daemon *d);
/* Moves rolls and removals on; called once per loop turn. */
void bt_reload_advance(struct bt_daemon *d);
/* Builds pipeline slot pl from its config (stages found by name). */
void bt_daemon_pipeline_init(struct bt_daemon *d, struct bt_pipeline *pl, int index,
			     const struct bt_pipeline_config *cfg);

/* tick.c: signals, memory watchdog, pending placements, policies. */
void bt_tick_start(struct bt_daemon *d);
void bt_tick_close(struct bt_daemon *d);

/*
 * A reader of status or metrics wants per-replica CPU and RSS: sampling,
 * otherwise off unless a stage has memory_mb, runs for the next minute.
 */
void bt_daemon_want_signals(struct bt_daemon *d);

/* The /v1/status document (new reference). */
json_t *bt_daemon_status(struct bt_daemon *d);

#endif
