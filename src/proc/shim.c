/*
 * The exec shim.  libuv's uv_spawn has no hook that runs in the child
 * before exec, and PR_SET_PDEATHSIG must be set there (it survives exec):
 * so baton spawns itself in this hidden mode, which sets the death signal
 * and then becomes the worker.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "proc.h"

int bt_proc_shim_main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "baton: the exec shim needs PPID and a command\n");
		_exit(127);
	}
	pid_t ppid = (pid_t)atol(argv[2]);
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
		fprintf(stderr, "baton: cannot set the parent-death signal: %s\n",
			strerror(errno));
		_exit(127);
	}
	/* baton may have died between fork and prctl: then nobody supervises. */
	if (getppid() != ppid)
		_exit(127);
	execv(argv[3], argv + 3);
	fprintf(stderr, "baton: cannot execute '%s': %s\n", argv[3], strerror(errno));
	_exit(127);
}
