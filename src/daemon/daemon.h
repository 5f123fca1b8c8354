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

struct bt_http;
struct bt_child;

enum bt_daemon_state {
	BT_DAEMON_RUNNING,
	BT_DAEMON_DRAINING, /* answering what was accepted, refusing the rest */
	BT_DAEMON_STOPPING, /* stopping replicas */
	BT_DAEMON_CLOSING, /* closing handles; the loop ends after */
};

struct bt_daemon {
	uv_loop_t *loop;
	struct bt_config *cfg;
	char *self_exe; /* this binary, for the exec shim */
	struct bt_stage *stages;
	int nstages;
	struct bt_pipeline *pipelines;
	int npipelines;
	struct bt_http *http;
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
	uv_signal_t sigterm, sigint;
	struct bt_child *dirty; /* children with frames to write */
	int exit_code;
	int no_http; /* set before start: no ingress (`baton run`) */
	void (*on_idle)(struct bt_daemon *d, void *arg); /* run after each flush */
	void *on_idle_arg;
};

/* Builds the daemon over cfg (not started).  Returns 0 or a negative code. */
int bt_daemon_init(struct bt_daemon *d, uv_loop_t *loop, struct bt_config *cfg,
		   char *err, size_t errlen);
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
/* The /v1/status document (new reference). */
json_t *bt_daemon_status(struct bt_daemon *d);

#endif
