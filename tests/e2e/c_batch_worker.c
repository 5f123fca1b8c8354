/*
 * The C SDK's end-to-end test worker: it exercises libbatonworker's single
 * and batch callbacks, baton_fail() and the stop callback, and lets the
 * payload choose what happens (see answer()).  The SDK itself answers pings.
 * Each answer is the JSON {"echo": payload, "batch_size": n, "batch": k},
 * where k numbers the handler calls of this process.  With START_GATE=PATH
 * in its environment it says ready only once PATH exists, so that a test
 * can see every replica spawned while none has finished starting.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "baton_worker.h"

#define GATE_POLL_MS	   10
#define GATE_MAX_MS	   20000 /* bounds a test that forgets to open the gate */
#define START_GATE_POLL_MS 50	 /* hundreds of replicas poll it at once */

static unsigned long calls; /* handler calls so far, the "batch" of an answer */

/* Waits until path exists; returns 0, or -ETIMEDOUT after GATE_MAX_MS. */
static int gate_wait(const char *path)
{
	const struct timespec poll = {0, GATE_POLL_MS * 1000000L};
	for (int waited = 0; waited < GATE_MAX_MS; waited += GATE_POLL_MS) {
		if (access(path, F_OK) == 0)
			return 0;
		nanosleep(&poll, NULL);
	}
	return -ETIMEDOUT;
}

/*
 * Answers one request of a batch of n:
 *   fail...     fails it with the payload as message, retry false
 *   gate:PATH   echoes once PATH exists: a test holds the replica busy with
 *               it while it queues a whole batch behind
 *   otherwise   echoes it
 */
static int answer(struct baton_request *req, size_t n, unsigned long batch)
{
	size_t len;
	const char *in = baton_request_data(req, &len);
	if (len >= 4 && !memcmp(in, "fail", 4))
		return baton_fail(req, in, 0);
	if (len > 5 && !memcmp(in, "gate:", 5) && gate_wait(in + 5))
		return baton_fail(req, "the gate was never opened", 0);
	json_t *doc = json_pack("{s:s%, s:I, s:I}", "echo", in, len, "batch_size", (json_int_t)n,
				"batch", (json_int_t)batch);
	char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	json_decref(doc);
	if (!text)
		return baton_fail(req, "cannot encode the answer (is the payload UTF-8?)", 0);
	int e = baton_respond(req, text, strlen(text), "{\"content_type\":\"application/json\"}");
	free(text);
	return e;
}

static int handle(void *user, struct baton_request *req)
{
	(void)user;
	return answer(req, 1, ++calls);
}

static int handle_batch(void *user, struct baton_request **reqs, size_t n)
{
	unsigned long batch = ++calls;
	int err = 0;
	(void)user;
	/* Answer every item even when one cannot be: each fails alone. */
	for (size_t i = 0; i < n; i++) {
		int e = answer(reqs[i], n, batch);
		if (e && !err)
			err = e;
	}
	return err;
}

static void stop(void *user)
{
	(void)user;
	fprintf(stderr, "c_batch_worker: stop callback\n");
}

int main(void)
{
	const char *start_gate = getenv("START_GATE");
	const struct timespec poll = {0, START_GATE_POLL_MS * 1000000L};
	/* Not bounded here: baton's start_timeout_ms is. */
	while (start_gate && access(start_gate, F_OK) != 0)
		nanosleep(&poll, NULL);
	struct baton_worker_ops ops = {
	    .handle = handle,
	    .handle_batch = handle_batch,
	    .stop = stop,
	};
	int e = baton_worker_run(&ops, NULL);
	if (e)
		fprintf(stderr, "c_batch_worker: %s\n", strerror(-e));
	return e ? 1 : 0;
}
