/*
 * Replicas: the worker processes of a stage and their supervision (DESIGN
 * §3 and §5).  A replica is a slot that outlives its processes; each
 * incarnation is a bt_child (process + channel + output pipes) freed when
 * its last handle closes.  This module speaks the worker protocol, starts,
 * restarts, pings and stops processes; sched/ decides what they run.
 */
#ifndef BT_PROC_H
#define BT_PROC_H

#include <uv.h>

#include "../common/common.h"
#include "../proto/proto.h"
#include "../sched/queue.h"

struct bt_stage;
struct bt_request;
struct bt_daemon;

enum bt_replica_state {
	BT_REPLICA_PENDING, /* not started yet */
	BT_REPLICA_STARTING, /* spawned, waiting for "ready" */
	BT_REPLICA_WARMING, /* warm-up request in flight */
	BT_REPLICA_READY, /* serving ("busy" when it holds requests) */
	BT_REPLICA_DRAINING, /* finishing its requests, gets no new ones */
	BT_REPLICA_STOPPING, /* asked to stop; escalating to signals */
	BT_REPLICA_EXITED, /* stopped on purpose; not restarted */
	BT_REPLICA_BACKOFF, /* died; waits before the next start */
	BT_REPLICA_FAILED, /* max_failures consecutive failures */
};
const char *bt_replica_state_name(enum bt_replica_state s);

/* Why a replica's process was lost against our will (counted in /metrics). */
enum bt_fail_reason {
	BT_FAIL_CRASH, /* exited, killed by a signal, closed its channel */
	BT_FAIL_START_TIMEOUT,
	BT_FAIL_PROTOCOL,
	BT_FAIL_PING,
	BT_FAIL_TIMEOUT, /* a request timed out and the replica was killed */
	BT_FAIL_WARMUP,
	BT_FAIL_SPAWN,
	BT_FAIL_MEMORY, /* its process group went over resources.memory_mb */
	BT_FAIL_COUNT
};
const char *bt_fail_reason_name(enum bt_fail_reason r);

struct bt_child; /* one process incarnation, private to proc/ */
struct bt_spawn_job; /* one process of a spawn-mode request, private to proc/ */

/*
 * A worker's stdout or stderr cut into lines, each logged with the line as
 * msg and tagged with stage, replica, pid and stream.  Lines longer than
 * BT_LINES_MAX are split.
 */
#define BT_LINES_MAX 4096
struct bt_lines {
	struct bt_buf partial;
	const char *stage; /* borrowed: the stage name outlives every process */
	int replica, pid;
	const char *stream;
};
void bt_lines_init(struct bt_lines *l, const char *stage, int replica, int pid,
		   const char *stream);
void bt_lines_feed(struct bt_lines *l, const char *p, size_t n);
/* Logs what is left of an unfinished line. */
void bt_lines_flush(struct bt_lines *l);
void bt_lines_release(struct bt_lines *l);

struct bt_replica {
	struct bt_stage *stage;
	int id; /* 1-based within its stage */
	enum bt_replica_state state;
	struct bt_child *child; /* current process, or NULL */
	struct bt_spawn_job *job; /* spawn mode: the process of its request */
	uv_timer_t timer; /* start timeout, backoff, stop escalation */
	uv_timer_t ping_timer;
	struct bt_request **inflight; /* requests sent and not answered */
	int ninflight;
	int cap; /* slots in inflight: max_ongoing × batch max_size */
	int *batch_left; /* per batch slot, its requests not yet answered */
	int nbatches; /* batches (or lone requests) in flight */
	struct bt_heap_node pick_node; /* in its stage's heap of replicas that can take work */
	int failures; /* consecutive failures */
	unsigned restarts; /* processes started after the first */
	unsigned starts;
	uint64_t spawned_ms, ready_ms;
	uint64_t ping_seq, ping_sent_ms;
	int ping_outstanding;
	int stop_phase; /* 0 stop message, 1 SIGTERM, 2 SIGKILL */
	int closing; /* handles being closed for good */
	char last_exit[160]; /* how the previous process ended */
	int active; /* counts toward the stage's replicas (not scaled away) */
	int gpu; /* index in the daemon's GPU list, -1 when none is held */
	char pending_reason[256]; /* why it waits, while PENDING */
	/* signals, refreshed every tick */
	double cpu_percent; /* of one core, whole process group */
	uint64_t rss_bytes; /* whole process group */
	uint64_t cpu_jiffies; /* at the last sample */
	int sampled_pid; /* the process cpu_jiffies belongs to */
	int memory_killed_pid; /* spawn mode: the job killed over memory_mb, counted once */
};

/* Allocates a replica slot (not started). */
struct bt_replica *bt_replica_new(struct bt_stage *st, int id);
/* Starts a process now (PENDING, BACKOFF or FAILED → STARTING). */
void bt_replica_start(struct bt_replica *r);
/*
 * Hands n requests to the replica as one batch (one request when n is 1);
 * it must be READY with fewer than max_ongoing batches in flight.  The
 * frames are written at the next bt_proc_flush.
 */
/* Sends reqs as one batch; returns how many went (the rest failed at once). */
int bt_replica_send(struct bt_replica *r, struct bt_request **reqs, int n);
/* Takes req back (it timed out) and kills the process; others are retried. */
void bt_replica_abandon(struct bt_replica *r, struct bt_request *req,
			const char *why);
/* Stops for good: stop message, grace, SIGTERM, grace, SIGKILL (grace 0: at once). */
void bt_replica_stop(struct bt_replica *r, int now);
/* Closes the replica's own handles; it frees itself when they are closed. */
void bt_replica_close(struct bt_replica *r);
/* Resets the failure count and starts a failed replica again. */
void bt_replica_revive(struct bt_replica *r);
/*
 * Scale-down: the replica takes no new work, finishes what it holds, then
 * stops (at once when it holds nothing or is not serving).
 */
void bt_replica_drain(struct bt_replica *r);
/* The replica's process group went over memory_mb: kill it, retry its work. */
void bt_replica_kill(struct bt_replica *r, enum bt_fail_reason reason, const char *why);
static inline int bt_replica_can_take(const struct bt_replica *r, int max_ongoing)
{
	/* A spawn slot is busy until its process has really ended. */
	return r->state == BT_REPLICA_READY && r->nbatches < max_ongoing && !r->job;
}
/* Takes a request out of the replica's in-flight set (it was answered). */
void bt_replica_release(struct bt_replica *r, struct bt_request *req);

/*
 * launch.c: what starting any process of a stage takes.  bt_launch_init
 * fills opts (exec shim, own process group, workdir, user, environment
 * with extra "K=V" strings); the caller sets stdio, calls uv_spawn, then
 * bt_launch_release.  argv (NULL-terminated) is borrowed until release.
 */
struct bt_launch {
	uv_process_options_t opts;
	char **args;
	char **env;
	char ppid[24];
};
void bt_launch_init(struct bt_launch *l, const struct bt_replica *r, char *const *argv,
		    char *const *extra, uv_exit_cb exit_cb);
void bt_launch_release(struct bt_launch *l);

/* Spawn mode (spawn.c): starts req's process on slot r; 0 or -errno. */
int bt_spawn_start(struct bt_replica *r, struct bt_request *req);
/* Kills the slot's process; its request is no longer its concern. */
void bt_spawn_abandon(struct bt_replica *r);
void bt_spawn_signal(struct bt_replica *r, int sig);
/* Kills the running job's group; its request fails (or is retried) with why. */
void bt_spawn_kill(struct bt_replica *r, const char *why);
int bt_spawn_pid(const struct bt_replica *r);
/* True while a process of this replica may still be alive. */
int bt_replica_has_process(const struct bt_replica *r);
int bt_replica_pid(const struct bt_replica *r);

/* Writes what replicas were sent this loop turn (called once per turn). */
void bt_proc_flush(struct bt_daemon *d);

/*
 * The exec shim: `baton __shim PPID ARGV...` sets PR_SET_PDEATHSIG, checks
 * that PPID is still its parent, and execs ARGV.  Never returns.
 */
int bt_proc_shim_main(int argc, char **argv) __attribute__((noreturn));

/*
 * Restart policy, pure: the delay before the next start after the
 * failures-th consecutive failure (1-based), doubling from base to max.
 */
uint64_t bt_backoff_delay_ms(uint64_t base, uint64_t max, int failures);

#endif
