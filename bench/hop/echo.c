/* bench/hop's C echo worker: answers each request with its own bytes. */
#include "baton_worker.h"

static int handle(void *user, struct baton_request *req)
{
	size_t len;
	const void *in = baton_request_data(req, &len);
	(void)user;
	return baton_respond(req, in, len, NULL);
}

int main(void)
{
	struct baton_worker_ops ops = {.handle = handle};
	return baton_worker_run(&ops, 0) ? 1 : 0;
}
