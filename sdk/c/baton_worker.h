/*
 * libbatonworker: write a baton worker in C.  It speaks worker protocol v1
 * (docs/protocol.md) on fd 3: says "ready" after your init, hands you each
 * request (or each batch), answers pings and honours "stop".
 *
 *     static int handle(void *user, struct baton_request *req)
 *     {
 *             size_t len;
 *             const char *in = baton_request_data(req, &len);
 *             return baton_respond(req, in, len, NULL);   // echo
 *     }
 *     int main(void)
 *     {
 *             struct baton_worker_ops ops = {.handle = handle};
 *             return baton_worker_run(&ops, NULL) ? 1 : 0;
 *     }
 *
 * The library lives in your process: it never aborts and never prints to
 * stdout; errors come back as negative errno values.  Not thread-safe:
 * answer requests from the thread that runs baton_worker_run().
 * It offers baton fast headers (docs/protocol.md#fast-headers) unless the
 * environment has BW_FAST_HEADERS=0; nothing else changes for you.
 * Bump BATON_WORKER_PROTO when the wire protocol changes.
 */
#ifndef BATON_WORKER_H
#define BATON_WORKER_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BATON_WORKER_PROTO 1

struct baton_request; /* one request; valid while the callback that got it runs */

/* The request's id ("r42"). */
const char *baton_request_id(const struct baton_request *req);
/* The payload bytes (NUL-terminated for convenience; *len excludes it). */
const void *baton_request_data(const struct baton_request *req, size_t *len);
/* The metadata object as compact JSON text. */
const char *baton_request_meta(const struct baton_request *req);
/* A top-level string of the metadata, or NULL. */
const char *baton_request_meta_string(const struct baton_request *req,
				      const char *key);
/* A top-level integer of the metadata; returns 0, or -ENOENT. */
int baton_request_meta_int(const struct baton_request *req, const char *key,
			   long long *out);

/*
 * Answers req with len bytes of data and, optionally, metadata to merge
 * (meta_json: a JSON object as text, or NULL).  Returns 0, -EINVAL when
 * meta_json is not an object, -EALREADY when req was already answered.
 */
int baton_respond(struct baton_request *req, const void *data, size_t len,
		  const char *meta_json);
/*
 * Fails req with a message.  retry != 0 marks a transient failure worth
 * another attempt; 0 says the input is bad for this model.  The message is
 * sent as at most 4000 bytes of UTF-8 (invalid bytes shown as '?').
 */
int baton_fail(struct baton_request *req, const char *message, int retry);

struct baton_worker_ops {
	/* Optional: load models; runs before "ready".  Non-zero aborts. */
	int (*init)(void *user);
	/*
	 * One request: call baton_respond() or baton_fail() before returning.
	 * Returning non-zero without answering fails it with retry.
	 */
	int (*handle)(void *user, struct baton_request *req);
	/*
	 * Optional: a batch of n requests; answer each (in any order).
	 * Without it, handle() is called n times.
	 */
	int (*handle_batch)(void *user, struct baton_request **reqs, size_t n);
	/* Optional: called once when baton says stop, before returning. */
	void (*stop)(void *user);
};

/*
 * Runs the worker until baton says stop or closes the channel (returns 0),
 * or until an error: -ENOTCONN when not started by baton (no BATON_FD),
 * -EPROTO on a malformed message, -ECANCELED when init failed, or the
 * errno of a failed read or write.
 */
int baton_worker_run(const struct baton_worker_ops *ops, void *user);

/*
 * Sources (stages with kind: source) produce items unprompted, such as a
 * camera's frames; baton groups them into sessions.
 *
 *     static int produce(struct baton_source *src, void *arg)
 *     {
 *             while (have_frame()) {
 *                     int r = baton_source_emit(src, jpeg, len,
 *                                               "{\"content_type\":\"image/jpeg\"}");
 *                     if (r <= 0)
 *                             return r;      // 0: baton said stop
 *             }
 *             return baton_source_eos(src, NULL) < 0;
 *     }
 *     int main(void) { return baton_source_run(produce, NULL) ? 1 : 0; }
 *
 * Single-threaded: emit reads what baton sent whenever it is called and
 * waits only while baton has granted no credit.
 */
struct baton_source; /* the connection; valid while fn runs */
typedef int (*baton_source_fn)(struct baton_source *src, void *arg);

/*
 * Sends "ready", then calls fn(src, arg) and returns what it returned.
 * -ENOTCONN when not started by baton (no BATON_FD), or the negative errno
 * of writing "ready" (fn is not called then).
 */
int baton_source_run(baton_source_fn fn, void *arg);
/*
 * Emits one item of n bytes with metadata (meta_json: a JSON object as
 * text, or NULL).  Waits while baton has granted no credit.  Returns 1
 * when sent, 0 when baton said stop or closed the channel (nothing is sent
 * then, and every later call returns 0), -EINVAL when meta_json is not an
 * object, -E2BIG when the header would pass 64 KiB, -EPROTO on a malformed
 * message from baton, or the negative errno of a failed read or write.
 */
int baton_source_emit(struct baton_source *src, const void *p, size_t n,
		      const char *meta_json);
/*
 * Ends the current session; with session (may be NULL), only if that
 * session is the open one.  Needs no credit.  Returns as baton_source_emit.
 */
int baton_source_eos(struct baton_source *src, const char *session);
/*
 * Reads baton's messages, waiting up to timeout_ms (-1: until one comes)
 * when none is there.  Returns 1, 0 once baton said stop, or an error as
 * baton_source_emit.  For an idle source, so that it notices "stop".
 */
int baton_source_poll(struct baton_source *src, int timeout_ms);
/* Non-zero once baton said stop (or closed the channel). */
int baton_source_stopping(const struct baton_source *src);
/* This station's url (BATON_SOURCE_URL) and name (BATON_STATION), or "". */
const char *baton_source_url(const struct baton_source *src);
const char *baton_source_station(const struct baton_source *src);

#ifdef __cplusplus
}
#endif

#endif
