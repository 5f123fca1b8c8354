/*
 * Stage queues shared by several nodes through Redis Streams
 * (docs/scaleout.md): the entry and reply codec (pure, entry.c) and the
 * Redis side (cluster.c): one stream and consumer group per stage, a reply
 * stream per node, claims of a dead node's entries, heartbeats.  It plugs
 * into the scheduler as a struct bt_remote_queue; the daemon wires it with
 * callbacks and this module never includes daemon/.
 */
#ifndef BT_CLUSTER_H
#define BT_CLUSTER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "../config/config.h"

/*
 * One message on a stream: a stage's entry (origin → any node) or a reply
 * (the node that ran it → the origin).  Strings are owned (malloc'd);
 * the payload travels inline (payload, len) or by reference (ref, a path).
 */
struct bt_entry {
	int reply;		   /* 0: an entry of a stage's stream, 1: a reply */
	char *origin;		   /* the node that accepted the request */
	uint64_t req;		   /* the origin's request id */
	int step;		   /* index of the stage in the request's route */
	char *stage;		   /* entry */
	char *pipeline;		   /* entry */
	int tries;		   /* entry: attempts made before it was written */
	int64_t deadline_unix_ms;  /* entry: 0 = none */
	int priority;		   /* entry */
	char *meta;		   /* JSON text, or NULL */
	char *payload;		   /* inline bytes, or NULL */
	size_t len;		   /* of the payload, inline or not */
	char *ref;		   /* path of the payload in the shared directory, or NULL */
	char *node;		   /* reply: the node that ran it */
	int code;		   /* reply: enum bt_code */
	char *error;		   /* reply: the sentence, when code != 0 */
	uint64_t queue_us, run_us; /* reply: where the time went on that node */
};

#define BT_ENTRY_MAX_FIELDS 40	/* argv slots bt_entry_fields may fill */
#define BT_ENTRY_SCRATCH    256 /* bytes of scratch it needs for numbers */

/*
 * The field/value pairs of e, as argv strings with lengths (binary-safe)
 * pointing into e and scratch (BT_ENTRY_SCRATCH bytes).  Returns how many
 * argv slots it used (even), at most BT_ENTRY_MAX_FIELDS.
 */
int bt_entry_fields(const struct bt_entry *e, const char **argv, size_t *lens, char *scratch);
/*
 * Fills e (zeroed first, copies owned) from n field/value strings.
 * BT_EPROTO with a phrase in why when a required field is missing or bad;
 * e holds nothing then.
 */
int bt_entry_decode(struct bt_entry *e, int reply, const char *const *fields, const size_t *lens,
		    int n, char *why, size_t whylen);
void bt_entry_release(struct bt_entry *e);

struct bt_cluster;
struct bt_stage;
struct bt_request;

/* What the cluster asks of the daemon (callbacks, no daemon.h). */
struct bt_cluster_hooks {
	int (*draining)(void *arg); /* stopping: take no new entries but what own requests need */
	void *arg;
};

/*
 * Connects to cfg->queue's Redis (blocking, bounded: at start only),
 * checks it has XAUTOCLAIM, creates each shared stage's consumer group,
 * then sets st->remote on those stages and connects on loop.  The stages
 * array (nstages slots) must outlive the cluster.  BT_ECONFIG with a
 * "FILE:LINE:COL: queue.url: ..." sentence in err when Redis is unusable.
 */
int bt_cluster_new(uv_loop_t *loop, const struct bt_config *cfg, struct bt_stage *stages,
		   int nstages, const struct bt_cluster_hooks *hooks, struct bt_cluster **out,
		   char *err, size_t errlen);
/* Requests of this node waiting for a shared queue's answer. */
uint64_t bt_cluster_waiting(const struct bt_cluster *cl);
/* Ends every request of this node waiting in the cluster with code (a hard stop). */
void bt_cluster_fail_waiting(struct bt_cluster *cl, int code, const char *why);
/*
 * The shared queue's depth of st (entries waiting or running anywhere) and
 * how many live nodes run st, from the last tick; -1 when unknown.
 */
long bt_cluster_depth(const struct bt_cluster *cl, const struct bt_stage *st, int *nodes);
/* The `cluster` section of /v1/status (new reference). */
json_t *bt_cluster_status(const struct bt_cluster *cl);
/* Appends the baton_cluster_* families of GET /metrics to out. */
void bt_cluster_metrics(const struct bt_cluster *cl, struct bt_buf *out);
/* Drops the connections and timers; the handles close on the loop. */
void bt_cluster_close(struct bt_cluster *cl);
/* After the loop ended. */
void bt_cluster_free(struct bt_cluster *cl);

#endif
