/*
 * Unit tests of src/proc/process.c on real processes and a real loop: what
 * holds when a process's exit callback runs.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
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

static void bound_cb(uv_timer_t *t)
{
	uv_stop(t->loop);
}

static pid_t run(char **argv)
{
	uv_loop_t loop;
	uv_timer_t bound;
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
	/* A bound, not a timing: an exit that is missed is never seen. */
	uv_timer_init(&loop, &bound);
	uv_timer_start(&bound, bound_cb, 10000, 0);
	uv_unref((uv_handle_t *)&bound);
	while (!seen.closed && uv_run(&loop, UV_RUN_ONCE) && uv_is_active((uv_handle_t *)&bound))
		;
	cr_assert(seen.closed, "the exit of process %d was never reported", (int)pid);
	uv_close((uv_handle_t *)&bound, NULL);
	uv_run(&loop, UV_RUN_DEFAULT);
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

/* pidfd_open fails with ENOSYS in this (test) process, as under valgrind or before Linux 5.3. */
static void without_pidfds(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pidfd_open, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
	cr_assert_eq(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
	cr_assert_eq(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog), 0);
	cr_assert_eq(syscall(SYS_pidfd_open, getpid(), 0), -1);
	cr_assert_eq(errno, ENOSYS);
}

static void work_cb(uv_work_t *w)
{
	(void)w;
}

static void after_work_cb(uv_work_t *w, int status)
{
	(void)w;
	(void)status;
}

/* Whether a SIGCHLD is pending for the process as a whole (no thread took it yet). */
static int sigchld_pending(void)
{
	char line[256];
	unsigned long long mask = 0;
	FILE *f = fopen("/proc/self/status", "r");
	cr_assert(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "ShdPnd: %llx", &mask) == 1)
			break;
	fclose(f);
	return (mask >> (SIGCHLD - 1)) & 1;
}

/*
 * Answers the pidfd_open of bt_process_spawn with ENOSYS, but only once its
 * child has exited and another thread has taken the SIGCHLD: the worst case
 * of the race between an early exit and the start of the watcher, made
 * certain.
 */
static void *late_enosys(void *arg)
{
	int listener = *(int *)arg;
	struct seccomp_notif req;
	struct seccomp_notif_resp resp;
	memset(&req, 0, sizeof(req));
	if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req))
		return NULL;
	pid_t pid = (pid_t)req.data.args[0];
	for (int i = 0; i < 10000; i++) { /* a bound of 10 s */
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
		    si.si_pid == pid && !sigchld_pending())
			break;
		nanosleep(&(struct timespec){0, 1000000}, NULL);
	}
	memset(&resp, 0, sizeof(resp));
	resp.id = req.id;
	resp.error = -ENOSYS;
	ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
	return NULL;
}

/*
 * Without pidfds an exit is seen on SIGCHLD.  baton has other threads
 * (libuv's thread pool, which blocks no signal): the SIGCHLD of a child
 * that fails before its exec can go to one of them before the process's
 * watcher exists.
 */
Test(process, without_pidfds_an_exit_before_the_watcher_is_still_seen)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pidfd_open, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
	uv_work_t w;
	cr_assert_eq(uv_queue_work(uv_default_loop(), &w, work_cb, after_work_cb), 0);
	uv_run(uv_default_loop(), UV_RUN_DEFAULT); /* the pool's threads now exist */
	cr_assert_eq(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
	int listener = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
				    SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
	cr_assert_geq(listener, 0, "seccomp listener: %s", strerror(errno));
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, late_enosys, &listener), 0);
	char *argv[] = {"/nonexistent/baton-test-program", NULL};
	pid_t pid = run(argv);
	pthread_join(t, NULL);
	cr_assert_eq(seen.calls, 1);
	cr_assert_eq(seen.status, 127);
	cr_assert_eq(waitpid(pid, NULL, WNOHANG), -1, "a zombie was left behind");
}

Test(process, without_pidfds_an_exit_is_seen_and_reaped)
{
	without_pidfds();
	char *argv[] = {"/bin/sh", "-c", "exit 5", NULL};
	pid_t pid = run(argv);
	cr_assert_eq(seen.calls, 1);
	cr_assert_eq(seen.status, 5);
	cr_assert(seen.pid_held);
	cr_assert_eq(waitpid(pid, NULL, WNOHANG), -1, "a zombie was left behind");
	cr_assert_eq(errno, ECHILD);
}

/*
 * Linux 5.3 has pidfd_open but not waitid(P_PIDFD) (5.4): EINVAL, as this
 * filter answers.  The exit must still be seen, with its status, on SIGCHLD.
 */
Test(process, without_waitid_on_pidfds_the_status_is_still_read)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_waitid, 0, 3),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 3 /* P_PIDFD */, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EINVAL),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
	cr_assert_eq(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
	cr_assert_eq(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog), 0);
	char *argv[] = {"/bin/sh", "-c", "exit 6", NULL};
	pid_t pid = run(argv);
	cr_assert_eq(seen.calls, 1);
	cr_assert_eq(seen.status, 6);
	cr_assert_eq(waitpid(pid, NULL, WNOHANG), -1, "a zombie was left behind");
	cr_assert_eq(errno, ECHILD);
}
