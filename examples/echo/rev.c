/*
 * The echo example's C stage: reverses the bytes it gets.  It runs in a
 * plain environment (no venv), next to a Python stage that runs in one.
 */
#include <stdlib.h>
#include <string.h>

#include "baton_worker.h"

/* Each answer says what its payload is; the input's type does not carry over. */
#define TEXT_META "{\"content_type\":\"text/plain; charset=utf-8\"}"

static int handle(void *user, struct baton_request *req)
{
	size_t len;
	const char *in = baton_request_data(req, &len);
	char *out = malloc(len ? len : 1);
	(void)user;
	if (!out)
		return baton_fail(req, "out of memory", 1);
	for (size_t i = 0; i < len; i++)
		out[i] = in[len - 1 - i];
	const char *greeting = getenv("REV_SUFFIX");
	int r;
	if (greeting && *greeting) {
		size_t gl = strlen(greeting);
		char *both = realloc(out, len + gl);
		if (!both) {
			free(out);
			return baton_fail(req, "out of memory", 1);
		}
		memcpy(both + len, greeting, gl);
		r = baton_respond(req, both, len + gl, TEXT_META);
		free(both);
		return r;
	}
	r = baton_respond(req, out, len, TEXT_META);
	free(out);
	return r;
}

int main(void)
{
	struct baton_worker_ops ops = {.handle = handle};
	return baton_worker_run(&ops, NULL) ? 1 : 0;
}
