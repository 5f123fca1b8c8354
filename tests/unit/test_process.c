/*
 * Unit tests of src/proc/process.c on real processes and a real loop: what
 * holds when a process's exit callback runs.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc/proc.h"

TestSuite(process, .timeout = 30);

struct seen {
	int calls;
	int64_t status;
	int sig;
	int pid_held; /* kill(pid, 0) succeeded inside the callback */
	int group_held; /* kill(-pid, 0) succeeded inside the callback */
	int closed;
};

static struct seen seen;

static void closed_cb(uv_handle_t *h)
{
	(void)h;
	seen.closed = 1;
}

static void exited_cb(struct bt_process *p, int64_t status, int sig)
{
	seen.calls++;
	seen.status = status;
	seen.sig = sig;
	seen.pid_held = kill(p->pid, 0) == 0;
	seen.group_held = kill(-p->pid, 0) == 0;
	bt_process_close(p, closed_cb);
}

static pid_t run(char **argv)
{
	uv_loop_t loop;
	struct bt_process p;
	uv_stdio_container_t stdio[3];
	struct bt_process_options o;
	char *env[] = {NULL};
	memset(&seen, 0, sizeof(seen));
	memset(&p, 0, sizeof(p));
	memset(&o, 0, sizeof(o));
	for (int i = 0; i < 3; i++)
		stdio[i].flags = UV_IGNORE;
	o.file = argv[0];
	o.args = argv;
	o.env = env;
	o.stdio_count = 3;
	o.stdio = stdio;
	o.setsid = 1;
	o.uid = o.gid = -1;
	cr_assert_eq(uv_loop_init(&loop), 0);
	cr_assert_eq(bt_process_spawn(&loop, &p, &o, exited_cb), 0);
	pid_t pid = p.pid;
	while (!seen.closed)
		uv_run(&loop, UV_RUN_ONCE);
	cr_assert_eq(uv_loop_close(&loop), 0);
	return pid;
}

/*
 * The callback ends the process's group by its id (bt_unit_end kills
 * -pid): the leader must still be a zombie then, or the id may already
 * belong to another process.  And once the callback returned, it is reaped.
 */
Test(process, exit_callback_runs_while_the_pid_is_still_held)
{
	char *argv[] = {"/bin/sh", "-c", "exit 3", NULL};
	pid_t pid = run(argv);
	cr_assert_eq(seen.calls, 1);
	cr_assert_eq(seen.status, 3);
	cr_assert_eq(seen.sig, 0);
	cr_assert(seen.pid_held, "the pid was released before the exit callback");
	cr_assert(seen.group_held, "the process group id was released before the exit callback");
	cr_assert_eq(waitpid(pid, NULL, WNOHANG), -1, "a zombie was left behind");
	cr_assert_eq(errno, ECHILD);
	cr_assert_eq(bt_process_waits_for(pid), 0);
}

Test(process, a_signal_is_reported_and_the_process_reaped)
{
	char *argv[] = {"/bin/sh", "-c", "kill -9 $$", NULL};
	pid_t pid = run(argv);
	cr_assert_eq(seen.calls, 1);
	cr_assert_eq(seen.sig, SIGKILL);
	cr_assert(seen.pid_held);
	cr_assert_eq(waitpid(pid, NULL, WNOHANG), -1, "a zombie was left behind");
	cr_assert_eq(errno, ECHILD);
}
