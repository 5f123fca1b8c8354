/*
 * Starting a process.  uv_spawn has no hook between fork and exec, so every
 * worker used to go through an exec of baton itself (a shim linking some
 * thirty libraries, ~15 ms of CPU each) to join its cgroup, switch user
 * and set its parent-death signal; and it fork()s, copying baton's page
 * tables, then waits for the child's exec.  256 replicas took ~8 s.
 *
 * Here the child does that setup itself, between a vfork() and the exec
 * of the command: no copy of baton's memory, and the loop waits only until
 * the child's exec has begun (the kernel resumes the parent when the child
 * lets go of the shared memory), not for the worker's own start, which
 * runs in parallel with the others'.  Measured on the 2-core VM of
 * docs/benchmarks.md, load 6: a fork() that does not wait at all cost the
 * loop ~3.7 ms of CPU per process (page tables and the copy-on-write
 * faults that follow, with TLB shootdowns), vfork() ~1 ms and ~5 ms of
 * waiting; forking from 8 to 32 threads at once did not start processes
 * faster (the machine's CPU is the limit), so there is no spawner thread.
 *
 * What fails in the child it writes to its stderr and exits 127.  An exit
 * is seen through a pidfd polled by the loop and reaped with
 * waitid(P_PIDFD), no zombie taken by pid; without pidfds, on SIGCHLD.
 */
#include "proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3 /* linux/wait.h: glibc 2.36's sys/wait.h lacks it */
#endif

#define MAX_STDIO 8

/*
 * Every process started here and not yet reaped.  The children of an OS
 * process are one set whatever loop watches them, so this list is too:
 * containment's reaper of adopted orphans asks it which zombies are not
 * orphans (bt_process_waits_for).
 */
static struct bt_process *live;

static void unlist(struct bt_process *p)
{
	if (!p->listed)
		return;
	*p->prevp = p->next;
	if (p->next)
		p->next->prevp = p->prevp;
	p->listed = 0;
}

int bt_process_waits_for(pid_t pid)
{
	for (const struct bt_process *p = live; p; p = p->next)
		if (p->pid == pid)
			return 1;
	return 0;
}

/* ---- the child, between vfork and exec: async-signal-safe calls only ---- */

static void say(const char *s)
{
	ssize_t n = write(2, s, strlen(s));
	(void)n;
}

static void __attribute__((noreturn)) child_fail(const char *what, const char *arg, int e)
{
	say("baton: cannot ");
	say(what);
	if (arg) {
		say(" '");
		say(arg);
		say("'");
	}
	say(": ");
	/* strerrordesc_np, unlike strerror, reads no locale: safe after vfork. */
	const char *desc = strerrordesc_np(e);
	say(desc ? desc : "unknown error");
	say("\n");
	_exit(127);
}

/* What the parent prepares, so that the child needs no allocation. */
struct plan {
	pid_t parent;
	char procs[4096]; /* the cgroup's cgroup.procs, or "" */
	int maxfd;	  /* for closing without close_range */
};

/* Every descriptor from lowfd up, inherited ones without CLOEXEC included. */
static void close_from(int lowfd, int maxfd)
{
	if (syscall(SYS_close_range, (unsigned)lowfd, ~0u, 0) == 0)
		return;
	for (int fd = lowfd; fd < maxfd; fd++)
		close(fd);
}

/*
 * The child of vfork(): it shares baton's memory until exec, so it writes
 * nothing but its own stack frames (errno aside, which belongs to the
 * suspended loop thread) and never returns.
 */
static void __attribute__((noreturn))
child(const struct bt_process_options *o, const struct plan *pl, const int *given, int n)
{
	int fds[MAX_STDIO];
	/* Move every descriptor above the targets first, or a dup2 could clobber one. */
	for (int i = 0; i < n; i++) {
		fds[i] = given[i];
		if (fds[i] < n && (fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, n)) < 0)
			child_fail("set up descriptors", NULL, errno);
	}
	for (int i = 0; i < n; i++)
		if (dup2(fds[i], i) < 0)
			child_fail("set up descriptors", NULL, errno);
	close_from(n, pl->maxfd);
	if (o->setsid && setsid() < 0)
		child_fail("start a session", NULL, errno);
	/* As root: the workdir may be closed to the stage's user. */
	if (o->cwd && chdir(o->cwd))
		child_fail("change to directory", o->cwd, errno);
	/* Joining needs root too: the stage's user may not move itself. */
	if (pl->procs[0]) {
		int fd = open(pl->procs, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, "0", 1) != 1)
			child_fail("join the cgroup", o->cgroup, errno);
		close(fd);
	}
	/*
	 * Raw system calls: glibc's wrappers would signal every thread of the
	 * parent, and the child has only this one.
	 */
	if (o->uid >= 0 &&
	    (syscall(SYS_setgroups, 0, NULL) || syscall(SYS_setresgid, o->gid, o->gid, o->gid) ||
	     syscall(SYS_setresuid, o->uid, o->uid, o->uid)))
		child_fail("switch to user", NULL, errno);
	if (o->parent_death) {
		/* After the switch: a change of credentials clears it. */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL))
			child_fail("set the parent-death signal", NULL, errno);
		/* baton may have died before prctl: then nobody would supervise it. */
		if (getppid() != pl->parent)
			_exit(127);
	}
	/*
	 * baton's handlers would run here until exec (libuv's writes to the
	 * loop's signal pipe, which the child shares), and ignored signals stay
	 * ignored across exec: defaults first, then nothing blocked.  Raw
	 * calls: a sanitizer's sigaction interceptor keeps state in the memory
	 * the child shares with baton.
	 */
	struct {
		void (*handler)(int);
		unsigned long flags;
		void (*restorer)(void);
		uint64_t mask;
	} dfl = {SIG_DFL, 0, NULL, 0};
	uint64_t none = 0;
	for (int sig = 1; sig <= 64; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof(dfl.mask));
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof(none));
	execve(o->file, o->args, o->env);
	child_fail("execute", o->file, errno);
}

/* ---- the parent ------------------------------------------------------------ */

static int wait_for(const struct bt_process *p, siginfo_t *si, int flags)
{
	return p->pidfd >= 0 ? waitid(P_PIDFD, (id_t)p->pidfd, si, WEXITED | WNOHANG | flags)
			     : waitid(P_PID, (id_t)p->pid, si, WEXITED | WNOHANG | flags);
}

/*
 * Reports how p exited, if it has, then reaps it: the zombie holds its pid
 * and process group id while exit_cb kills what is left of the group by
 * that id, which, once reaped, another process could have taken.
 */
static void check_exit(struct bt_process *p)
{
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	int r = wait_for(p, &si, WNOWAIT);
	if (r == 0 && si.si_pid == 0)
		return; /* not an exit yet (or, without a pidfd, another child's) */
	int64_t code = 0;
	int sig = 0;
	if (r) {
		/* Reaped by someone else: a bug of baton's, but not a reason to stop. */
		bt_error("lost the exit status of a process", "pid=%d error=%s", p->pid,
			 BT_LOGQ(strerror(errno)));
		code = -1;
	} else if (si.si_code == CLD_EXITED) {
		code = si.si_status;
	} else {
		sig = si.si_status;
	}
	if (p->pidfd >= 0)
		uv_poll_stop(&p->poll);
	else
		uv_signal_stop(&p->sigchld);
	unlist(p);
	p->exited = 1;
	p->exit_cb(p, code, sig); /* p stays valid: closing it ends in a callback */
	if (r == 0)
		wait_for(p, &si, 0);
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
	(void)status;
	(void)events;
	check_exit((struct bt_process *)h);
}

static void sigchld_cb(uv_signal_t *h, int signum)
{
	(void)signum;
	check_exit((struct bt_process *)h);
}

/*
 * Watches p's exit: its pidfd polled, or where pidfd_open does not exist
 * (valgrind 3.19 does not know it) or waitid cannot take a pidfd, every
 * SIGCHLD, as libuv does.  Called
 * with signals blocked.  The SIGCHLD of a child that is already gone (an
 * exec that failed) may have gone to another thread (libuv's pool blocks
 * none) before the handle was there: this thread gets one of its own,
 * which comes once signals are unblocked.
 */
static int watch(uv_loop_t *loop, struct bt_process *p)
{
	p->pidfd = pidfd_open(p->pid, 0);
	siginfo_t si;
	if (p->pidfd >= 0 &&
	    waitid(P_PIDFD, (id_t)p->pidfd, &si, WEXITED | WNOHANG | WNOWAIT) && errno == EINVAL) {
		/* Linux 5.3: pidfds, but no waitid(P_PIDFD) (5.4) to read a status with. */
		close(p->pidfd);
		p->pidfd = -1;
		errno = ENOSYS;
	}
	if (p->pidfd < 0 && errno == ENOSYS) {
		uv_signal_init(loop, &p->sigchld);
		int e = uv_signal_start(&p->sigchld, sigchld_cb, SIGCHLD);
		if (!e)
			raise(SIGCHLD);
		return e;
	}
	if (p->pidfd < 0)
		return -errno;
	int e = uv_poll_init(loop, &p->poll, p->pidfd);
	if (e) {
		close(p->pidfd);
		p->pidfd = -1;
		return e;
	}
	return uv_poll_start(&p->poll, UV_READABLE, poll_cb);
}

int bt_process_spawn(uv_loop_t *loop, struct bt_process *p, const struct bt_process_options *o,
		     bt_process_exit_cb exit_cb)
{
	struct plan pl = {.parent = getpid(), .maxfd = 65536};
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)pl.maxfd)
		pl.maxfd = (int)rl.rlim_cur;
	if (o->cgroup && (size_t)snprintf(pl.procs, sizeof(pl.procs), "%s/cgroup.procs",
					  o->cgroup) >= sizeof(pl.procs))
		return -ENAMETOOLONG;
	int fds[MAX_STDIO], ours[MAX_STDIO], n = o->stdio_count, e = 0;
	BT_ASSERT(n <= MAX_STDIO);
	void *data = p->poll.data;
	memset(p, 0, sizeof(*p));
	p->pidfd = -1;
	p->exit_cb = exit_cb;
	for (int i = 0; i < n; i++)
		fds[i] = ours[i] = -1;
	for (int i = 0; i < n && !e; i++) {
		const uv_stdio_container_t *s = &o->stdio[i];
		BT_ASSERT(s->flags == UV_IGNORE || (s->flags & UV_CREATE_PIPE));
		if (s->flags & UV_CREATE_PIPE) {
			/* A socketpair, as uv_spawn made: a channel is read and written. */
			int sv[2];
			if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
				e = -errno;
				break;
			}
			ours[i] = sv[0];
			fds[i] = sv[1];
			e = uv_pipe_open((uv_pipe_t *)s->data.stream, ours[i]);
			if (e)
				close(ours[i]);
		} else if ((fds[i] = open("/dev/null",
					  i ? O_RDWR | O_CLOEXEC : O_RDONLY | O_CLOEXEC)) < 0) {
			e = -errno;
		}
	}
	/*
	 * Signals stay blocked from before the vfork until the child has reset
	 * its handlers (a handler of baton's must never run in the child), and
	 * in baton until the exit is watched.
	 */
	sigset_t all, old;
	sigfillset(&all);
	if (!e) {
		pthread_sigmask(SIG_BLOCK, &all, &old);
		p->pid = vfork();
		if (p->pid == 0)
			child(o, &pl, fds, n);
		if (p->pid < 0)
			e = -errno;
		else if ((e = watch(loop, p))) {
			/* Unwatchable: it must not run unsupervised. */
			kill(p->pid, SIGKILL);
			waitpid(p->pid, NULL, 0);
		}
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (e)
		return e; /* the caller closes its pipes, and with them our ends */
	p->poll.data = data;
	p->next = live;
	if (live)
		live->prevp = &p->next;
	p->prevp = &live;
	live = p;
	p->listed = 1;
	return 0;
}

static void closed_cb(uv_handle_t *h)
{
	struct bt_process *p = (struct bt_process *)h;
	if (p->pidfd >= 0)
		close(p->pidfd);
	p->pidfd = -1;
	p->close_cb(h);
}

void bt_process_close(struct bt_process *p, uv_close_cb cb)
{
	if (uv_is_closing((uv_handle_t *)&p->poll))
		return;
	/* Not reaped yet: it is an orphan now, which containment reaps. */
	unlist(p);
	p->close_cb = cb;
	uv_close((uv_handle_t *)&p->poll, closed_cb);
}
