/*
 * Requests, stages and pipelines: admission at a pipeline's entry, one
 * bounded queue per stage, dispatch to the least-loaded eligible replica,
 * deadlines by one timer over a heap, retries, and each request's single
 * outcome.  Replica processes themselves belong to proc/; this module only
 * decides who runs what and what happens to a request next.
 */
#ifndef BT_SCHED_H
#define BT_SCHED_H

#include <jansson.h>
#include <uv.h>

#include "../common/common.h"
#include "../config/config.h"
#include "../metrics/metrics.h"
#include "queue.h"

struct bt_daemon;
struct bt_replica;
struct bt_pipeline;

enum bt_request_state {
	BT_REQ_NEW,
	BT_REQ_QUEUED,
	BT_REQ_RUNNING,
	BT_REQ_DONE,
};

struct bt_stage_timing {
	uint64_t queue_us; /* time spent waiting in the stage's queue(s) */
	uint64_t run_us; /* time between dispatch and result, all attempts */
};

struct bt_request;
typedef void (*bt_request_done_cb)(struct bt_request *req, void *arg);

struct bt_request {
	uint64_t id;
	char idstr[24]; /* "r42": the id workers and clients see */
	struct bt_pipeline *pipeline;
	struct bt_stage **route; /* the pipeline's stages when it was accepted (a reload may change them) */
	int nroute;
	int step; /* index of the current stage in route */
	enum bt_request_state state;
	json_t *meta; /* metadata; result metas are merged in */
	char *payload; /* current payload (owned): malloc'd, or a mapping of payload_fd */
	size_t len;
	int payload_fd; /* a sealed memfd holding the payload, or -1 (bt_payload_free) */
	/*
	 * Or NULL: the payload's last tail->len bytes are in a client's
	 * shared-memory object, not in payload (which holds len - tail->len
	 * bytes).  Only a worker that takes it sees it as is; bt_request_flatten
	 * makes one ordinary payload of the two for everyone else.
	 */
	struct bt_payload_tail *tail;
	struct bt_out_places *places; /* or NULL: outputs the last stage may write itself */
	int attempts; /* dispatches in the current stage */
	int priority; /* queue level, 0 = served first */
	uint64_t client_deadline_ms; /* absolute, 0 = none */
	uint64_t accepted_us;
	uint64_t enqueued_us; /* when it entered the current queue */
	uint64_t dispatched_us;
	struct bt_qlink qlink; /* in its stage's queue */
	struct bt_heap_node deadline; /* in the daemon's deadline heap */
	struct bt_replica *replica; /* running on, while RUNNING */
	int batch_slot; /* which of its replica's batches it belongs to */
	int in_stage; /* entered its current stage and not yet left it */
	struct bt_stage_timing *timings; /* one per pipeline step */
	enum bt_code code; /* the outcome, once DONE */
	char *error; /* its sentence, when code != BT_OK */
	const char *error_stage; /* stage that produced the error, or NULL */
	bt_request_done_cb done;
	void *done_arg;
	int internal; /* baton's own (a stream's item or session): runs while draining */
	/*
	 * Optional: called when the last stage has answered (its meta merged),
	 * before the request counts as succeeded.  It may rewrite the result; non-zero fails the
	 * request as worker_error of the last stage, with err as the sentence.
	 * check_data is the ingress's (owned, freed with the request).
	 */
	int (*check)(struct bt_request *req, char *err, size_t errlen);
	char *check_data;
	void (*check_free)(char *check_data); /* frees check_data; NULL: free() */
	/* Shared queues (cluster/, docs/scaleout.md). */
	int remote; /* waiting at its origin for a shared queue's answer */
	int shadow; /* runs another node's entry: one stage, no pipeline, no local retry */
	int retry_elsewhere; /* shadow: lost or retry:true with attempts left */
	struct bt_stage *own_route; /* a shadow's route */
	struct bt_request *remote_next; /* cluster/'s table of requests waiting */
	void *remote_data; /* cluster/'s: a shadow's entry, or at the origin its shared file */
};

/*
 * A stage whose queue is shared by several nodes (cluster/): the daemon
 * sets st->remote, and the scheduler calls it instead of using the local
 * queue at the request's origin.  None of these may call back into the
 * scheduler synchronously.
 */
struct bt_remote_queue {
	/*
	 * Hands req (queued, its deadline set) to the shared queue.  0, or
	 * non-zero with a sentence in why: req then fails as stage_failed.
	 */
	int (*submit)(void *arg, struct bt_stage *st, struct bt_request *req, char *why,
		      size_t whylen);
	/* req ends at its origin before the shared queue answered (timeout, stop). */
	void (*forget)(void *arg, struct bt_request *req);
	/* Once per loop turn: the stage's free slots may have changed. */
	void (*pump)(void *arg, struct bt_stage *st);
	void *arg;
};

struct bt_source_ops;

struct bt_stage {
	struct bt_daemon *d;
	const struct bt_stage_config *cfg;
	const struct bt_source_ops *source_ops; /* kind: source, set by stream/ */
	void *source_arg;
	int index;
	const struct bt_remote_queue *remote; /* NULL: the local queue */
	struct bt_queue queue;
	struct bt_replica **replicas;
	int nreplicas;
	struct bt_heap pickable; /* replicas that can take work, least loaded first */
	uint64_t pick_seq; /* orders equally loaded replicas: the latest filed first */
	int failed; /* every replica exhausted its restarts */
	char last_stderr[256]; /* the last line a worker wrote to stderr (BT_LINES_LAST) */
	int removed; /* gone from the config: serves what can still reach it, hidden */
	int retired; /* removed, and its replicas told to stop */
	int rolling; /* a reload is replacing its replicas */
	int up; /* a replica became ready since start or the last revival */
	int dirty; /* dispatch pending this loop turn */
	uv_timer_t retry_timer; /* retry_failed_after_ms */
	uint64_t running; /* requests on replicas */
	uint64_t completed, errors; /* results received from workers */
	uint64_t retried; /* re-dispatches after a crash or retry:true */
	uv_timer_t batch_timer; /* the batch window of the oldest request */
	uint64_t batch_due_us; /* what batch_timer is set for, 0 = idle */
	struct bt_request **scratch; /* batch_max_size slots for dispatch */
	uint64_t entered; /* requests that entered this stage */
	uint64_t failed_codes[BT_CODE_COUNT]; /* requests that ended here, by error */
	uint64_t failures[8]; /* replica failures by enum bt_fail_reason */
	struct bt_hist queue_hist, run_hist, batch_hist;
	/* autoscaling */
	int target; /* replicas it should have */
	int manual; /* set by POST /v1/stages/{s}/scale: the policy is off */
	struct bt_scale_state scale_state;
#define BT_LATENCY_WINDOW 30 /* ticks of queue + run time kept for p50/p95 */
	struct bt_hist latency_window[BT_LATENCY_WINDOW];
	int window_pos;
	uint64_t entered_at_tick; /* entered, at the previous tick */
	double arrival_rate; /* requests entering per second */
	double latency_p50_s, latency_p95_s; /* over the window, -1 when empty */
};

struct bt_pipeline {
	struct bt_daemon *d;
	const struct bt_pipeline_config *cfg;
	int index;
	struct bt_stage **stages;
	int nstages;
	int removed; /* gone by a reload: finishes its requests, hidden */
	uint64_t in_flight;
	uint64_t old_in_flight; /* of in_flight, those on a route a reload replaced */
	uint64_t accepted, succeeded;
	uint64_t failed[BT_CODE_COUNT];
	struct bt_hist duration_hist; /* accepted to answered, every outcome */
};

/*
 * A new request for pl, owning payload (malloc'd, may be NULL when len is 0)
 * and meta (may be NULL).  It is not yet submitted.
 */
struct bt_request *bt_request_new(struct bt_pipeline *pl, char *payload,
				  size_t len, json_t *meta);
void bt_request_free(struct bt_request *req);
/*
 * A request that runs one stage for another node (an entry of a shared
 * queue), owning payload and meta like bt_request_new.
 */
struct bt_request *bt_request_new_shadow(struct bt_stage *st, char *payload, size_t len,
					 json_t *meta);
/*
 * Runs a shadow on this node's replicas of its stage.  req->attempts holds
 * the attempts already made across the cluster.  done is called exactly
 * once; a crash or retry:true with attempts left is not retried here but
 * ends with req->retry_elsewhere set.
 */
void bt_stage_execute(struct bt_request *req, bt_request_done_cb done, void *arg);
/*
 * The shared queue answered req (at its origin): payload and meta are
 * owned (meta may be NULL), error is a sentence when code != BT_OK.  The
 * request goes on to its next stage or ends.
 */
void bt_stage_remote_answer(struct bt_request *req, enum bt_code code, char *payload,
			    size_t len, json_t *meta, const char *error, uint64_t queue_us,
			    uint64_t run_us);
/* Requests this node's replicas of st can take now, beyond those already waiting. */
int bt_stage_free_slots(const struct bt_stage *st);

/*
 * Submits req.  done is called exactly once with the outcome in req->code
 * (and the result in req->payload / req->meta), possibly before this
 * returns (when admission refuses it).  done's owner frees req.
 */
void bt_pipeline_submit(struct bt_request *req, bt_request_done_cb done,
			void *arg);

/* cfg (borrowed) must outlive the stage. */
void bt_stage_init(struct bt_stage *st, struct bt_daemon *d, int index,
		   const struct bt_stage_config *cfg);
void bt_stage_close(struct bt_stage *st);
/* Something changed that may allow dispatch: decided once per loop turn. */
void bt_stage_kick(struct bt_stage *st);
/* Runs pending dispatches of every stage (called once per loop turn). */
void bt_sched_flush(struct bt_daemon *d);

/*
 * From proc/: the worker answered req.  Takes ownership of payload (may be
 * NULL).  result_meta is borrowed.  error is NULL on success.
 */
void bt_stage_result(struct bt_request *req, char *payload, size_t len,
		     json_t *result_meta, const char *error, int retry);
/*
 * The same for an answer in a sealed memfd: payload is fd's mapping (NULL
 * when len is 0); both become the request's (or are freed on error).
 */
void bt_stage_result_fd(struct bt_request *req, char *payload, size_t len, int fd,
			json_t *result_meta, const char *error, int retry);
/*
 * From proc/: the worker answered req with its own payload, unchanged
 * ("same", docs/protocol.md): only result_meta (borrowed) is new.
 */
void bt_stage_result_same(struct bt_request *req, json_t *result_meta);
/*
 * Copies a payload's tail (see struct bt_request) into one sealed memfd
 * with the rest.  0 (also when there is none), or -errno with a sentence
 * in why; req is unchanged then.
 */
int bt_request_flatten(struct bt_request *req, char *why, size_t whylen);
/*
 * Hands req's payload to the caller as *fd (a sealed memfd, or -1 when the
 * payload is malloc'd) and returns its bytes; req keeps none of it.  Free
 * with bt_payload_free(p, req->len, fd).
 */
char *bt_request_take_payload(struct bt_request *req, int *fd);
/*
 * From proc/: req could not be framed for the worker (its metadata is over
 * the header limit, grown by earlier stages); it fails as worker_error.
 */
void bt_stage_unsendable(struct bt_request *req, const char *why);
/*
 * From proc/: the replica holding req died.  charge says whether this
 * counts against the request's attempts (not when another request's
 * timeout caused the kill).
 */
void bt_stage_lost(struct bt_request *req, int charge, const char *why);
/*
 * From proc/: r's load (batches in flight) changed or its spawn process
 * ended: it is filed again for dispatch, behind replicas as loaded as it.
 */
void bt_stage_replica_changed(struct bt_replica *r);
/*
 * From proc/: a replica changed state; re-evaluates whether the stage
 * failed and which replicas dispatch may pick.  O(replicas).
 */
void bt_stage_replicas_changed(struct bt_stage *st);
/*
 * req's client went away (its connection closed, its call was reset).
 * Waiting in a queue, it leaves it now and ends as cancelled (done is
 * called before this returns): it never runs, and no stage after it
 * either.  Running, it runs on and its answer goes nowhere; a worker is
 * not interrupted mid-batch.
 */
void bt_request_cancel(struct bt_request *req);
/* Fails every queued request of the stage with code. */
void bt_stage_fail_queued(struct bt_stage *st, enum bt_code code,
			  const char *why);

/* Deadline handling: re-arms the daemon's timer after heap changes. */
void bt_sched_arm_deadline(struct bt_daemon *d);
void bt_sched_deadline_cb(uv_timer_t *t);

#endif
