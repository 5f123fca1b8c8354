/*
 * The exec shim.  libuv's uv_spawn has no hook that runs in the child
 * before exec, and what must happen there happens here instead: close the
 * descriptors baton inherited from its launcher (they would leak into every
 * worker), join the unit's cgroup (while still root: the stage's user may
 * not move itself), switch to the stage's user, then set the parent-death
 * signal, which a change of credentials clears, and become the worker.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "proc.h"

static void die(const char *what, const char *arg)
{
	fprintf(stderr, "baton: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "",
		strerror(errno));
	_exit(127);
}

/* Closes every descriptor from lowfd up. */
static void close_from(int lowfd)
{
	if (close_range((unsigned)lowfd, ~0u, 0) == 0)
		return;
	/* Before Linux 5.9: what /proc lists (the directory's own fd last). */
	DIR *d = opendir("/proc/self/fd");
	if (!d) {
		for (long fd = lowfd, max = sysconf(_SC_OPEN_MAX); fd < max && fd < 65536; fd++)
			close((int)fd);
		return;
	}
	int own = dirfd(d);
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' && atoi(e->d_name) >= lowfd && atoi(e->d_name) != own)
			close(atoi(e->d_name));
	closedir(d);
}

int bt_proc_shim_main(int argc, char **argv)
{
	if (argc < 7) {
		fprintf(stderr, "baton: the exec shim needs PPID NFDS CGROUP USER and a command\n");
		_exit(127);
	}
	pid_t ppid = (pid_t)atol(argv[2]);
	close_from(atoi(argv[3]));
	if (strcmp(argv[4], "-")) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/cgroup.procs", argv[4]);
		int fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, "0", 1) != 1)
			die("cannot join the cgroup", argv[4]);
		close(fd);
	}
	if (strcmp(argv[5], "-")) {
		unsigned uid, gid;
		if (sscanf(argv[5], "%u:%u", &uid, &gid) != 2) {
			errno = EINVAL;
			die("bad user", argv[5]);
		}
		if (setgroups(0, NULL) || setgid((gid_t)gid) || setuid((uid_t)uid))
			die("cannot switch to user", argv[5]);
	}
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
		die("cannot set the parent-death signal", NULL);
	/* baton may have died between fork and prctl: then nobody supervises. */
	if (getppid() != ppid)
		_exit(127);
	execv(argv[6], argv + 6);
	fprintf(stderr, "baton: cannot execute '%s': %s\n", argv[6], strerror(errno));
	_exit(127);
}
