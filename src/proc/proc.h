/*
 * Replicas: the worker processes of a stage and their supervision (DESIGN
 * §3 and §5).  A replica is a slot that outlives its processes; each
 * incarnation is a bt_child (process + channel + output pipes) freed when
 * its last handle closes.  This module speaks the worker protocol, starts,
 * restarts, pings and stops processes; sched/ decides what they run.
 */
#ifndef BT_PROC_H
#define BT_PROC_H

#include <jansson.h>
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
struct bt_group_usage;
struct bt_unit;
struct bt_spawn_job; /* one process of a spawn-mode request, private to proc/ */

/*
 * A worker's stdout or stderr cut into lines, each logged with the line as
 * msg and tagged with stage, replica, pid and stream.  Lines longer than
 * BT_LINES_MAX are split.  With a limit set, lines past max_lines or
 * max_bytes within an interval are dropped and counted; one warning says
 * how many when the next interval begins or the stream ends (as journald).
 */
#define BT_LINES_MAX 4096
struct bt_lines {
	struct bt_buf partial;
	const char *stage; /* borrowed: the stage name outlives every process */
	int replica, pid;
	const char *stream;
	char *last; /* optional, BT_LINES_LAST bytes: each line is also copied here */
	uint64_t interval_ms, max_lines, max_bytes; /* 0: no limit */
	uint64_t window_ms; /* start of the current interval */
	uint64_t lines, bytes; /* logged in the current interval */
	uint64_t dropped_lines, dropped_bytes; /* not yet reported */
};
#define BT_LINES_LAST 256
void bt_lines_init(struct bt_lines *l, const char *stage, int replica, int pid,
		   const char *stream);
/* Sets the rate limit (after init): at most lines and bytes per interval. */
void bt_lines_limit(struct bt_lines *l, uint64_t interval_ms, uint64_t lines, uint64_t bytes);
void bt_lines_feed(struct bt_lines *l, const char *p, size_t n);
/* Logs what is left of an unfinished line, and what the limit dropped. */
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
	int retiring; /* replaced by a reload: serves until a new replica is ready */
	int gpu; /* index in the daemon's GPU list, -1 when none is held */
	char pending_reason[256]; /* why it waits, while PENDING */
	/* signals, refreshed every tick */
	double cpu_percent; /* of one core, whole process group */
	uint64_t rss_bytes; /* every process of its unit */
	int processes; /* in its unit, at the last sample */
	uint64_t cpu_jiffies; /* at the last sample */
	int sampled_pid; /* the process cpu_jiffies belongs to */
	int memory_killed_pid; /* spawn mode: the job killed over memory_mb, counted once */
	/* kind: source (set by stream/) */
	const char *station, *url; /* the station this slot runs, borrowed; NULL: none */
	int source_hold; /* draining: its stream finishes a session before it stops */
	int resource_waits; /* spawns in a row that failed for lack of fds or memory */
};

/*
 * What a source stage's replicas send goes to its stream (stream/ sets
 * these on the stage).  Payloads passed in are the callee's; metas and
 * headers are borrowed.  emit and eos return 0, or -1 with why filled for a
 * protocol violation (the replica is then killed and restarted).
 */
struct bt_source_ops {
	void (*up)(void *arg, struct bt_replica *r); /* ready: credits may be granted */
	int (*emit)(void *arg, struct bt_replica *r, char *payload, size_t len, json_t *meta,
		    char *why, size_t whylen);
	int (*eos)(void *arg, struct bt_replica *r, json_t *hdr, char *why, size_t whylen);
	void (*down)(void *arg, struct bt_replica *r); /* its process is gone */
	/*
	 * Scale-down or removal: the stream closes the station's session.
	 * Returns 1 when it will stop the replica itself once that is done.
	 */
	int (*drain)(void *arg, struct bt_replica *r);
};

/* Grants a source n more items ({"t":"credit","n":n}; -1: no limit). */
void bt_replica_credit(struct bt_replica *r, int n);

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
 * process.c: a started process, watched without blocking the loop.  Unlike
 * uv_spawn, bt_process_spawn returns as soon as the child is forked: it
 * does not wait for the child's exec, so many start in parallel, and the
 * child sets itself up before exec (cgroup, user, parent-death signal),
 * which uv_spawn has no hook for.
 */
struct bt_process_options {
	const char *file; /* a path: no PATH search */
	char **args, **env;
	const char *cwd; /* NULL: baton's */
	int stdio_count; /* the child gets descriptors 0 .. stdio_count-1, no others */
	uv_stdio_container_t *stdio; /* UV_IGNORE (/dev/null) or UV_CREATE_PIPE */
	int setsid; /* its own session and process group */
	const char *cgroup; /* a cgroup v2 directory it joins, or NULL */
	int uid, gid; /* the user it becomes (baton must be root), or -1 */
	int parent_death; /* PR_SET_PDEATHSIG SIGKILL, and exits if baton is already gone */
};
struct bt_process;
typedef void (*bt_process_exit_cb)(struct bt_process *p, int64_t status, int sig);
struct bt_process {
	union { /* first: the one handle; poll.data is the caller's */
		uv_poll_t poll; /* on the pidfd */
		uv_signal_t sigchld; /* without pidfds (valgrind): every SIGCHLD */
	};
	int pid;
	int pidfd; /* -1 without */
	int exited;
	bt_process_exit_cb exit_cb;
	uv_close_cb close_cb;
	struct bt_process *next, **prevp; /* the list of processes not yet reaped */
	int listed;
};
/*
 * Forks a child that sets itself up as o says and execs o->file.  A
 * UV_CREATE_PIPE stdio is a socketpair whose other end is opened into the
 * caller's initialised uv_pipe_t.  Signal handlers are reset and none is
 * blocked.  Returns 0, and exit_cb is called once, on the loop, with the
 * exit status or the signal (the process reaped once it returns); or a negative errno,
 * nothing forked, nothing to close but the caller's pipes.  What fails in
 * the child (workdir, cgroup, user, exec) it writes to its stderr as one
 * "baton: cannot ..." line and exits with status 127.
 */
int bt_process_spawn(uv_loop_t *loop, struct bt_process *p, const struct bt_process_options *o,
		     bt_process_exit_cb exit_cb);
/* Closes the handle; a process not reaped yet is left to containment's reaper. */
void bt_process_close(struct bt_process *p, uv_close_cb cb);
/* Whether pid is a child a bt_process waits for (containment must not reap it). */
int bt_process_waits_for(pid_t pid);

/*
 * launch.c: what starting any process of a stage takes.  bt_launch_init
 * fills opts (own process group, workdir, cgroup, user, parent-death
 * signal, environment with extra "K=V" strings); the caller sets stdio,
 * calls bt_process_spawn, then bt_launch_release.  argv (NULL-terminated)
 * is borrowed until release.
 */
struct bt_launch {
	struct bt_process_options opts;
	char **env;
};
void bt_launch_init(struct bt_launch *l, const struct bt_replica *r, char *const *argv,
		    char *const *extra, const struct bt_unit *unit);
void bt_launch_release(struct bt_launch *l);

/*
 * Containment (contain.c): every process a replica or spawn job starts,
 * however it forks or calls setsid(), is ended with it and counted in its
 * usage.  cgroup mode: each unit (one process incarnation) has its own
 * cgroup v2 directory under this instance's; subreaper mode: baton is a
 * child subreaper and tracks units by walking /proc each tick.  Neither
 * calls back; the owner ends its units.
 */
enum bt_contain_mode { BT_CONTAIN_SUBREAPER, BT_CONTAIN_CGROUP };
struct bt_contain;
struct bt_unit;
/*
 * Becomes a child subreaper, picks the mode (spec: NULL or "auto" uses
 * the cgroup baton runs in when writable, "off" never a cgroup, a path
 * that directory or else fails), and ends what a baton that died left
 * (its cgroups, or the pids of its record whose start times still match).
 * Returns 0, or BT_ECONFIG with a sentence in err (an unusable path).
 */
int bt_contain_open(uv_loop_t *loop, const char *spec, struct bt_contain **out, char *err,
		    size_t errlen);
enum bt_contain_mode bt_contain_mode(const struct bt_contain *c);
/* "BATON_INSTANCE=PID-START" for workers' environment: the next start finds leftovers by it. */
const char *bt_contain_instance(const struct bt_contain *c);
/*
 * Every tick: reaps adopted orphans, attributes processes, frees empty units;
 * reads usage when usage is set (in cgroup mode, /proc is then scanned too).
 */
void bt_contain_tick(struct bt_contain *c, int usage);
/* Ends every unit's processes, removes baton's cgroup or record; returns processes left. */
int bt_contain_stop(struct bt_contain *c);
/* After the loop has ended. */
void bt_contain_free(struct bt_contain *c);
json_t *bt_contain_status(const struct bt_contain *c);
/* The number after "key " in a cgroup file's text ("oom_kill 2\n"), 0 when absent. */
uint64_t bt_cgroup_key(const char *text, const char *key);

/* A unit for one process to come; NULL with -errno in *err (cgroup mode). */
struct bt_unit *bt_unit_new(struct bt_contain *c, const char *stage, int replica,
			    uint64_t memory_mb, int *err);
/* Its cgroup directory (the child joins it before exec), or NULL. */
const char *bt_unit_cgroup(const struct bt_unit *u);
void bt_unit_started(struct bt_unit *u, pid_t pid);
/* sig to the unit's process group and (SIGKILL, or subreaper mode) every process it owns. */
void bt_unit_signal(struct bt_unit *u, int sig);
/* Its process is gone or must go: every process of the unit is killed, now and later. */
void bt_unit_end(struct bt_unit *u);
/* The owner lets go: ended, then freed by the tick once nothing of it is left. */
void bt_unit_release(struct bt_unit *u);
/* The kernel's OOM killer acted in the unit's cgroup (memory.max) since it started. */
int bt_unit_oom_killed(const struct bt_unit *u);
/* CPU, memory and process count of the whole unit at the last tick; -ENOENT when none. */
int bt_unit_usage(const struct bt_unit *u, struct bt_group_usage *out);
/* The current process of a replica or its spawn job: its unit's usage. */
int bt_replica_usage(const struct bt_replica *r, struct bt_group_usage *out);

/* Spawn mode (spawn.c): starts req's process on slot r; 0 or -errno. */
int bt_spawn_start(struct bt_replica *r, struct bt_request *req);
/* Kills the slot's process; its request is no longer its concern. */
void bt_spawn_abandon(struct bt_replica *r);
void bt_spawn_signal(struct bt_replica *r, int sig);
/* Kills the running job's group; its request fails (or is retried) with why. */
void bt_spawn_kill(struct bt_replica *r, const char *why);
int bt_spawn_pid(const struct bt_replica *r);
/* The unit of the slot's running job, or NULL. */
struct bt_unit *bt_spawn_unit(const struct bt_replica *r);
/* True while a process of this replica may still be alive. */
int bt_replica_has_process(const struct bt_replica *r);
int bt_replica_pid(const struct bt_replica *r);

/*
 * True for errors that say baton lacks a resource (EMFILE, ENFILE, EAGAIN,
 * ENOMEM) rather than that the worker is broken: such a spawn is retried
 * with backoff and is not counted as a failure of the worker.
 */
static inline int bt_resource_error(int e)
{
	return e == UV_EMFILE || e == UV_ENFILE || e == UV_EAGAIN || e == UV_ENOMEM;
}

/* Writes what replicas were sent this loop turn (called once per turn). */
void bt_proc_flush(struct bt_daemon *d);

/*
 * Restart policy, pure: the delay before the next start after the
 * failures-th consecutive failure (1-based), doubling from base to max.
 */
uint64_t bt_backoff_delay_ms(uint64_t base, uint64_t max, int failures);

#endif
