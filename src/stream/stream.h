/*
 * Streams (docs/streams.md): the stations of a source stage, the items they
 * emit, sessions grouped by a metadata key, the on-disk spool that makes
 * sessions survive a crash of baton, and the results file.  This module
 * owns stations and sessions; the replicas that run the sources belong to
 * proc/, the requests that carry items and sessions to sched/.
 */
#ifndef BT_STREAM_H
#define BT_STREAM_H

#include <jansson.h>
#include <uv.h>

#include "../common/common.h"
#include "../config/config.h"

struct bt_stage;
struct bt_pipeline;
struct bt_streams;
struct bt_stream;

/* ---- spool.c: the pure parts (no libuv, no requests) --------------------- */

/*
 * A session key as a directory name: [A-Za-z0-9._-] kept, anything else
 * (and a leading '.') as %XX; at most 128 bytes of key are used.  out must
 * hold 3 * 128 + 1 bytes.
 */
void bt_spool_encode_key(const char *key, char *out, size_t size);
/* File extension (without the dot) for an item's content type. */
const char *bt_spool_ext(const char *content_type);
/*
 * Writes data to dir/name through a temporary file and rename(2), so that
 * a reader (or a restarted baton) sees all of it or nothing.  0 or -errno.
 */
int bt_spool_write_atomic(const char *dir, const char *name, const char *data, size_t len);
/*
 * Cuts a results file back to its last complete line (a crash may leave
 * half a line).  Returns the number of complete lines, or -errno.
 */
long bt_spool_repair_lines(const char *path);

/* ---- stream.c -------------------------------------------------------------- */

/*
 * Builds every stream of cfg over the daemon's stages and pipelines
 * (arrays indexed as in cfg): creates the spool, reads back what a previous
 * baton left (sessions closed but not processed, the open session of each
 * station), and hooks into the source stages.  Returns 0 or BT_ECONFIG with
 * a sentence in err.  *out is NULL when cfg has no streams.
 */
int bt_streams_new(uv_loop_t *loop, const struct bt_config *cfg, struct bt_stage *stages,
		   struct bt_pipeline *pipelines, struct bt_streams **out, char *err,
		   size_t errlen);
/* Submits the sessions recovered from the spool (after the daemon started). */
void bt_streams_start(struct bt_streams *ss);
/*
 * The daemon is draining: every station stops taking items, closes its open
 * session and has it processed.  bt_streams_busy says when that is done.
 */
void bt_streams_drain(struct bt_streams *ss);
int bt_streams_busy(const struct bt_streams *ss);
/* Closes the timers; the streams free themselves once they are closed. */
void bt_streams_close(struct bt_streams *ss);

json_t *bt_streams_status(struct bt_streams *ss);
void bt_streams_metrics(struct bt_streams *ss, struct bt_buf *out);

struct bt_stream *bt_streams_find(struct bt_streams *ss, const char *name);
/*
 * Results with a sequence number above `after`, oldest first, at most 1000
 * (an array, new reference); *next is the number to ask after next time.
 */
json_t *bt_stream_results(struct bt_stream *s, uint64_t after, uint64_t *next);
/*
 * Calls cb(arg) once, when a result newer than `after` exists or after
 * timeout_ms, whichever comes first (never synchronously).  Returns a
 * handle for bt_stream_unwatch, which must not be used after cb ran.
 */
struct bt_stream_watch;
struct bt_stream_watch *bt_stream_watch(struct bt_stream *s, uint64_t after,
					uint64_t timeout_ms, void (*cb)(void *arg), void *arg);
void bt_stream_unwatch(struct bt_stream_watch *w);
/*
 * Adds a station at run time and starts its source: 0, or BT_ESTATE /
 * BT_EINVAL with a sentence in err (name taken, no free slot, bad name).
 */
int bt_stream_add_station(struct bt_stream *s, const char *name, const char *url, char *err,
			  size_t errlen);
/*
 * Removes a station: its open session is closed and processed, then its
 * source is stopped.  0, or BT_ENOENT when no such station runs.
 */
int bt_stream_remove_station(struct bt_stream *s, const char *name);

#endif
