/*
 * Containment: every process a replica or a spawn job starts, however it
 * forks, is ended with it and counted against its memory_mb.  baton is a
 * child subreaper, so orphans come back to it instead of to init.  With a
 * writable cgroup v2 directory each process incarnation (a unit) gets its
 * own cgroup, which the kernel keeps exact; without one, units are tracked
 * by walking /proc every tick (process group, descendants, and adopted
 * orphans attributed by the BATON_STAGE/BATON_REPLICA they inherited),
 * and a record of pids with start times lets the next start end what a
 * killed baton left.  This file knows nothing of replicas or the daemon.
 */
#include "proc.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../scale/scale.h"

/* Whole small files: /proc and cgroup files report size 0, so read to the end. */
#define read_file(path, max, data, len) bt_read_file_at(AT_FDCWD, path, 0, max, data, len, NULL)

struct pinfo {
	pid_t pid, ppid, pgrp;
	char state;
	uint64_t start; /* clock ticks after boot: with pid, names a process for good */
	uint64_t jiffies, rss_pages;
};

struct pidrec {
	pid_t pid, pgrp;
	uint64_t start;
};

struct bt_unit {
	struct bt_contain *c;
	struct bt_unit *next;
	char stage[128];
	int replica;
	char *cg;  /* its cgroup directory, or NULL */
	pid_t pid; /* the process baton started; 0 before it runs */
	uint64_t start;
	struct pidrec *tracked; /* subreaper mode: every process known to be its */
	int ntracked;
	struct bt_group_usage usage; /* at the last tick */
	uint64_t oom_base;	     /* memory.events oom_kill when it started */
	int ended;		     /* its process is gone: everything left is killed */
	int released;		     /* its owner let go: freed once empty */
};

struct bt_contain {
	uv_loop_t *loop;
	enum bt_contain_mode mode;
	char *inst;   /* cgroup mode: this instance's directory */
	int memory;   /* the memory controller is enabled below inst */
	char *record; /* subreaper mode: the file of pids, or NULL */
	char *why;    /* why this mode (status and log) */
	pid_t self;
	uint64_t self_start;
	char instance[64]; /* "BATON_INSTANCE=PID-START", in every worker's environment */
	struct bt_unit *units;
	uint64_t seq;
	uv_signal_t sigchld;
	uint64_t escaped;     /* orphans nobody could own, ended */
	uint64_t record_hash; /* of what the record file holds */
	long hz, page;
	struct pinfo *procs; /* the last scan, sorted by pid */
	size_t nprocs, capprocs;
	unsigned quiet_ticks; /* cgroup mode: ticks since the last scan of /proc */
};

/* ---- /proc ---------------------------------------------------------------- */

/* Fields of /proc/PID/stat after the command name, which may hold ") ". */
static int read_pinfo(pid_t pid, struct pinfo *p)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -EIO;
	buf[n] = '\0';
	char *q = strrchr(buf, ')');
	if (!q)
		return -EIO;
	int ppid, pgrp;
	unsigned long utime, stime;
	unsigned long long start;
	long rss;
	/* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
	   cutime cstime priority nice threads itrealvalue starttime vsize rss */
	if (sscanf(q + 2,
		   "%c %d %d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d %*d %llu "
		   "%*u %ld",
		   &p->state, &ppid, &pgrp, &utime, &stime, &start, &rss) != 7)
		return -EIO;
	p->pid = pid;
	p->ppid = ppid;
	p->pgrp = pgrp;
	p->start = start;
	p->jiffies = utime + stime;
	p->rss_pages = rss > 0 ? (uint64_t)rss : 0;
	return 0;
}

/* True while the process pid started at start lives (a zombie does not). */
static int same_process_alive(pid_t pid, uint64_t start)
{
	struct pinfo p;
	return pid > 0 && read_pinfo(pid, &p) == 0 && p.start == start && p.state != 'Z' &&
	       p.state != 'X';
}

static int pinfo_cmp(const void *a, const void *b)
{
	const struct pinfo *x = a, *y = b;
	return (x->pid > y->pid) - (x->pid < y->pid);
}

/* Every process of the machine. */
static void scan(struct bt_contain *c)
{
	c->nprocs = 0;
	DIR *d = opendir("/proc");
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		struct pinfo p;
		if (read_pinfo((pid_t)atoi(e->d_name), &p))
			continue;
		if (c->nprocs == c->capprocs) {
			c->capprocs = c->capprocs ? c->capprocs * 2 : 256;
			c->procs = bt_realloc(c->procs, c->capprocs * sizeof(*c->procs));
		}
		c->procs[c->nprocs++] = p;
	}
	closedir(d);
	if (c->nprocs)
		qsort(c->procs, c->nprocs, sizeof(*c->procs), pinfo_cmp);
}

static long find(const struct bt_contain *c, pid_t pid)
{
	struct pinfo key = {.pid = pid};
	if (!c->nprocs)
		return -1;
	const struct pinfo *p = bsearch(&key, c->procs, c->nprocs, sizeof(key), pinfo_cmp);
	return p ? p - c->procs : -1;
}

/*
 * Adopted orphans that exited.  waitid(WNOWAIT) shows a zombie without
 * taking it: one of baton's own children (bt_process) stops the loop (its
 * pidfd's watcher takes it with its status, and the tick collects what
 * waits behind it).
 */
static void reap(void)
{
	for (int i = 0; i < 4096; i++) {
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) || si.si_pid == 0)
			return;
		if (bt_process_waits_for(si.si_pid))
			return;
		waitpid(si.si_pid, NULL, WNOHANG);
	}
}

static void sigchld_cb(uv_signal_t *s, int signum)
{
	(void)s;
	(void)signum;
	reap();
}

/* ---- cgroup files --------------------------------------------------------- */

static int write_file(const char *dir, const char *name, const char *text)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t w = write(fd, text, strlen(text));
	int e = w < 0 ? -errno : 0;
	close(fd);
	return e;
}

/* Reads a small file of dir; returns malloc'd text or NULL. */
static char *read_small(const char *dir, const char *name)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	char *data = NULL;
	size_t len;
	if (read_file(path, 1 << 20, &data, &len))
		return NULL;
	return data;
}

uint64_t bt_cgroup_key(const char *text, const char *key)
{
	size_t klen = strlen(key);
	for (const char *p = text; p && *p;) {
		if (!strncmp(p, key, klen) && p[klen] == ' ')
			return strtoull(p + klen + 1, NULL, 10);
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return 0;
}

/* Ends every process of the cgroup dir and below (cgroup.kill, Linux 5.14). */
static int cgroup_kill(const char *dir)
{
	int e = write_file(dir, "cgroup.kill", "1");
	if (e == -ENOENT) {
		/* An older kernel: signal each process listed, leaves first. */
		char *procs = read_small(dir, "cgroup.procs");
		for (char *p = procs; p && *p;) {
			kill((pid_t)atoi(p), SIGKILL);
			p = strchr(p, '\n');
			if (p)
				p++;
		}
		free(procs);
		e = 0;
	}
	return e;
}

/* Removes dir and the cgroups below it; -EBUSY while a process is left. */
static int cgroup_remove(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	struct dirent *e;
	int busy = 0;
	while ((e = readdir(d))) {
		if (e->d_type != DT_DIR || e->d_name[0] == '.')
			continue;
		char *sub = bt_asprintf("%s/%s", dir, e->d_name);
		if (cgroup_remove(sub))
			busy = 1;
		free(sub);
	}
	closedir(d);
	if (busy)
		return -EBUSY;
	return rmdir(dir) && errno != ENOENT ? -errno : 0;
}

/* Kills and removes dir, waiting for its processes to die (at most bound_ms). */
static int cgroup_end(const char *dir, int bound_ms)
{
	cgroup_kill(dir);
	for (int waited = 0;; waited += 10) {
		int e = cgroup_remove(dir);
		if (e != -EBUSY || waited >= bound_ms)
			return e;
		usleep(10 * 1000);
	}
}

/* ---- instances left by a baton that died ------------------------------------ */

/* "baton-PID-START" or "baton-PID-START.pids": an instance, alive or not. */
static int instance_name(const char *name, const char *suffix, pid_t *pid, uint64_t *start)
{
	int ipid, used = 0;
	unsigned long long st;
	if (sscanf(name, "baton-%d-%llu%n", &ipid, &st, &used) != 2 || strcmp(name + used, suffix))
		return 0;
	*pid = ipid;
	*start = st;
	return 1;
}

static void end_dead_cgroups(struct bt_contain *c, const char *base)
{
	DIR *d = opendir(base);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		pid_t pid;
		uint64_t start;
		if (e->d_type != DT_DIR || !instance_name(e->d_name, "", &pid, &start) ||
		    same_process_alive(pid, start) || (pid == c->self && start == c->self_start))
			continue;
		char *dir = bt_asprintf("%s/%s", base, e->d_name);
		char *stat = read_small(dir, "cgroup.stat");
		uint64_t left = bt_cgroup_key(stat, "nr_descendants");
		free(stat);
		int err = cgroup_end(dir, 2000);
		if (err)
			bt_warn("cannot remove the cgroup of a previous baton", "path=%s error=%s",
				BT_LOGQ(dir), BT_LOGQ(bt_strerror(err)));
		else
			bt_warn("ended what a previous baton left", "pid=%d cgroup=%s units=%llu",
				(int)pid, BT_LOGQ(dir), (unsigned long long)left);
		free(dir);
	}
	closedir(d);
}

static void end_dead_records(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		pid_t pid;
		uint64_t start;
		if (!instance_name(e->d_name, ".pids", &pid, &start) ||
		    same_process_alive(pid, start))
			continue;
		char *path = bt_asprintf("%s/%s", dir, e->d_name);
		char *text = NULL;
		size_t len;
		int ended = 0;
		if (read_file(path, 64 << 20, &text, &len) == 0) {
			for (char *p = text; p && *p;) {
				int qpid;
				unsigned long long qstart;
				/* Never a reused pid: the start time must match too. */
				if (sscanf(p, "%d %llu", &qpid, &qstart) == 2 &&
				    same_process_alive(qpid, qstart) && kill(qpid, SIGKILL) == 0)
					ended++;
				p = strchr(p, '\n');
				if (p)
					p++;
			}
			free(text);
		}
		unlink(path);
		bt_warn("ended what a previous baton left", "pid=%d record=%s processes=%d",
			(int)pid, BT_LOGQ(path), ended);
		free(path);
	}
	closedir(d);
}

/*
 * Processes that still carry the BATON_INSTANCE of a baton that died: what
 * it left that neither a cgroup nor its record caught (forked after the
 * last tick).  A process that scrubbed its environment escapes this net.
 */
static void end_dead_by_environ(const struct bt_contain *c)
{
	char ns[64] = "", other[64];
	ssize_t nl = readlink("/proc/self/ns/pid", ns, sizeof(ns) - 1);
	DIR *d = opendir("/proc");
	if (!d || nl <= 0) {
		if (d)
			closedir(d);
		return;
	}
	ns[nl] = '\0';
	struct dirent *e;
	int ended = 0;
	while ((e = readdir(d))) {
		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		char path[300], *env = NULL;
		size_t len;
		/*
		 * The pid in BATON_INSTANCE means something only in baton's own
		 * pid namespace: a baton in a container is none of ours.
		 */
		snprintf(path, sizeof(path), "/proc/%s/ns/pid", e->d_name);
		nl = readlink(path, other, sizeof(other) - 1);
		if (nl <= 0 || (other[nl] = '\0', strcmp(ns, other)))
			continue;
		snprintf(path, sizeof(path), "/proc/%s/environ", e->d_name);
		if (read_file(path, 1 << 20, &env, &len))
			continue;
		for (size_t off = 0; off < len; off += strlen(env + off) + 1) {
			int pid;
			unsigned long long start;
			if (strncmp(env + off, "BATON_INSTANCE=", 15) ||
			    sscanf(env + off + 15, "%d-%llu", &pid, &start) != 2)
				continue;
			if ((pid != c->self || start != c->self_start) &&
			    !same_process_alive(pid, start) && kill(atoi(e->d_name), SIGKILL) == 0)
				ended++;
			break;
		}
		free(env);
	}
	closedir(d);
	if (ended)
		bt_warn("ended what a previous baton left", "processes=%d found_by=BATON_INSTANCE",
			ended);
}

/* ---- opening -------------------------------------------------------------- */

/* The cgroup v2 directory baton runs in, from mountinfo and /proc/self/cgroup. */
static char *own_cgroup(void)
{
	char *mounts = NULL, *self = NULL, *mnt = NULL, *out = NULL;
	size_t len;
	if (read_file("/proc/self/mountinfo", 1 << 20, &mounts, &len) ||
	    read_file("/proc/self/cgroup", 1 << 16, &self, &len))
		goto done;
	for (char *line = strtok(mounts, "\n"); line; line = strtok(NULL, "\n")) {
		char *sep = strstr(line, " - ");
		char point[4096], root[4096];
		/* id parent major:minor root mountpoint ... - fstype ... */
		if (sep && !strncmp(sep, " - cgroup2 ", 11) &&
		    sscanf(line, "%*s %*s %*s %4095s %4095s", root, point) == 2 &&
		    !strcmp(root, "/")) {
			mnt = bt_strdup(point);
			break;
		}
	}
	if (!mnt)
		goto done;
	for (char *line = strtok(self, "\n"); line; line = strtok(NULL, "\n"))
		if (!strncmp(line, "0::", 3)) {
			out = bt_asprintf("%s%s", mnt, strcmp(line + 3, "/") ? line + 3 : "");
			break;
		}
done:
	free(mounts);
	free(self);
	free(mnt);
	return out;
}

/* Makes this instance's cgroup under base; 0 or -errno. */
static int open_cgroup(struct bt_contain *c, const char *base)
{
	struct stat st;
	if (stat(base, &st))
		return -errno;
	if (!S_ISDIR(st.st_mode) || access(base, W_OK))
		return -EACCES;
	char *probe = read_small(base, "cgroup.procs");
	if (!probe)
		return -ENOTDIR; /* not a cgroup v2 directory */
	free(probe);
	end_dead_cgroups(c, base);
	char *inst =
	    bt_asprintf("%s/baton-%d-%llu", base, (int)c->self, (unsigned long long)c->self_start);
	if (mkdir(inst, 0755) && errno != EEXIST) {
		int e = -errno;
		free(inst);
		return e;
	}
	c->inst = inst;
	char *ctl = read_small(inst, "cgroup.controllers");
	if (ctl && strstr(ctl, "memory") &&
	    write_file(inst, "cgroup.subtree_control", "+memory") == 0)
		c->memory = 1;
	free(ctl);
	return 0;
}

/* Where the pid records live: made 0700 and ours, or NULL. */
static char *record_dir(void)
{
	const char *env = getenv("BATON_RUNTIME_DIR"), *xdg = getenv("XDG_RUNTIME_DIR");
	char *dir = env && *env	     ? bt_strdup(env)
		    : xdg && *xdg    ? bt_asprintf("%s/baton", xdg)
		    : geteuid() == 0 ? bt_strdup("/run/baton")
				     : bt_asprintf("/tmp/baton-%d", (int)geteuid());
	struct stat st;
	mkdir(dir, 0700);
	/* In a shared /tmp, a directory someone else made is not ours to trust. */
	if (lstat(dir, &st) || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
		free(dir);
		return NULL;
	}
	return dir;
}

int bt_contain_open(uv_loop_t *loop, const char *spec, struct bt_contain **out, char *err,
		    size_t errlen)
{
	struct bt_contain *c = bt_calloc(1, sizeof(*c));
	struct pinfo me;
	c->loop = loop;
	c->self = getpid();
	c->hz = sysconf(_SC_CLK_TCK);
	c->page = sysconf(_SC_PAGESIZE);
	if (read_pinfo(c->self, &me) == 0)
		c->self_start = me.start;
	snprintf(c->instance, sizeof(c->instance), "BATON_INSTANCE=%d-%llu", (int)c->self,
		 (unsigned long long)c->self_start);
	/* Orphans of workers come back to baton instead of init. */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
		bt_warn("cannot become a child subreaper", "error=%s", BT_LOGQ(strerror(errno)));

	int explicit = spec && strcmp(spec, "auto") && strcmp(spec, "off");
	if (!spec || strcmp(spec, "off")) {
		char *base = explicit ? bt_strdup(spec) : own_cgroup();
		int e = base ? open_cgroup(c, base) : -ENOENT;
		if (e && explicit) {
			snprintf(err, errlen, "cannot use cgroup '%s': %s", spec, bt_strerror(e));
			free(base);
			free(c);
			return BT_ECONFIG;
		}
		if (!e)
			c->mode = BT_CONTAIN_CGROUP;
		else
			c->why = bt_asprintf("no writable cgroup v2 directory (%s: %s)",
					     base ? base : "cgroup2 not mounted", bt_strerror(e));
		free(base);
	} else {
		c->why = bt_strdup("cgroup: off");
	}
	if (c->mode == BT_CONTAIN_SUBREAPER) {
		char *dir = record_dir();
		if (dir) {
			end_dead_records(dir);
			c->record = bt_asprintf("%s/baton-%d-%llu.pids", dir, (int)c->self,
						(unsigned long long)c->self_start);
		}
		free(dir);
	}
	end_dead_by_environ(c);
	uv_signal_init(loop, &c->sigchld);
	c->sigchld.data = c;
	uv_signal_start(&c->sigchld, sigchld_cb, SIGCHLD);
	if (c->mode == BT_CONTAIN_CGROUP)
		bt_info("containment", "mode=cgroup cgroup=%s memory_max=%s", BT_LOGQ(c->inst),
			c->memory ? "true" : "false");
	else
		bt_info("containment", "mode=subreaper record=%s reason=%s",
			BT_LOGQ(c->record ? c->record : "none"), BT_LOGQ(c->why));
	*out = c;
	return 0;
}

enum bt_contain_mode bt_contain_mode(const struct bt_contain *c)
{
	return c->mode;
}

const char *bt_contain_instance(const struct bt_contain *c)
{
	return c->instance;
}

/* ---- units ------------------------------------------------------------------ */

struct bt_unit *bt_unit_new(struct bt_contain *c, const char *stage, int replica,
			    uint64_t memory_mb, int *err)
{
	struct bt_unit *u = bt_calloc(1, sizeof(*u));
	u->c = c;
	snprintf(u->stage, sizeof(u->stage), "%s", stage);
	u->replica = replica;
	*err = 0;
	if (c->mode == BT_CONTAIN_CGROUP) {
		char name[160];
		int n = snprintf(name, sizeof(name), "%.100s", stage);
		for (int i = 0; i < n; i++)
			if (!isalnum((unsigned char)name[i]) && name[i] != '_' && name[i] != '-')
				name[i] = '_';
		u->cg = bt_asprintf("%s/%s.%d.%llu", c->inst, name, replica,
				    (unsigned long long)++c->seq);
		if (mkdir(u->cg, 0755)) {
			*err = -errno;
			free(u->cg);
			free(u);
			return NULL;
		}
		if (c->memory && memory_mb) {
			char v[32];
			snprintf(v, sizeof(v), "%llu", (unsigned long long)memory_mb << 20);
			write_file(u->cg, "memory.max", v);
			/* Over the limit the whole unit goes, as baton's own check does. */
			write_file(u->cg, "memory.oom.group", "1");
			char *ev = read_small(u->cg, "memory.events");
			u->oom_base = bt_cgroup_key(ev, "oom_kill");
			free(ev);
		}
	}
	u->next = c->units;
	c->units = u;
	return u;
}

const char *bt_unit_cgroup(const struct bt_unit *u)
{
	return u ? u->cg : NULL;
}

void bt_unit_started(struct bt_unit *u, pid_t pid)
{
	struct pinfo p;
	u->pid = pid;
	if (read_pinfo(pid, &p) == 0)
		u->start = p.start;
}

/* sig to what the unit owned at the last tick, but its group when that was signalled. */
static void kill_tracked(struct bt_unit *u, int sig, pid_t skip_pgrp)
{
	for (int i = 0; i < u->ntracked; i++)
		if (u->tracked[i].pgrp != skip_pgrp &&
		    same_process_alive(u->tracked[i].pid, u->tracked[i].start))
			kill(u->tracked[i].pid, sig);
}

void bt_unit_signal(struct bt_unit *u, int sig)
{
	if (!u || !u->pid)
		return;
	/*
	 * Each process gets sig once: a second SIGTERM may mean "now" to a
	 * worker.  The group while its leader is ours (its id cannot be reused).
	 */
	int group = !u->ended && !(u->cg && sig != SIGKILL);
	if (group)
		kill(-u->pid, sig);
	if (u->cg && sig == SIGKILL) {
		cgroup_kill(u->cg);
	} else if (u->cg) {
		char *procs = read_small(u->cg, "cgroup.procs");
		for (char *p = procs; p && *p;) {
			kill((pid_t)atoi(p), sig);
			p = strchr(p, '\n');
			if (p)
				p++;
		}
		free(procs);
	} else {
		kill_tracked(u, sig, group ? u->pid : 0);
	}
}

void bt_unit_end(struct bt_unit *u)
{
	if (!u || u->ended)
		return;
	bt_unit_signal(u, SIGKILL);
	u->ended = 1;
}

void bt_unit_release(struct bt_unit *u)
{
	if (!u)
		return;
	bt_unit_end(u);
	u->released = 1;
}

int bt_unit_oom_killed(const struct bt_unit *u)
{
	if (!u || !u->cg || !u->c->memory)
		return 0;
	char *ev = read_small(u->cg, "memory.events");
	uint64_t n = bt_cgroup_key(ev, "oom_kill");
	free(ev);
	return n > u->oom_base;
}

int bt_unit_usage(const struct bt_unit *u, struct bt_group_usage *out)
{
	if (!u || !u->pid || u->ended)
		return -ENOENT;
	*out = u->usage;
	return 0;
}

static void unit_free(struct bt_unit *u)
{
	free(u->cg);
	free(u->tracked);
	free(u);
}

/* ---- the tick --------------------------------------------------------------- */

static void track(struct bt_unit *u, const struct pinfo *p)
{
	if (u->ntracked % 16 == 0)
		u->tracked =
		    bt_realloc(u->tracked, ((size_t)u->ntracked + 16) * sizeof(*u->tracked));
	u->tracked[u->ntracked].pid = p->pid;
	u->tracked[u->ntracked].pgrp = p->pgrp;
	u->tracked[u->ntracked].start = p->start;
	u->ntracked++;
}

/* The stage and replica an orphan inherited in its environment, if it kept them. */
static int orphan_origin(pid_t pid, char *stage, size_t size, int *replica)
{
	char path[64];
	char *env = NULL;
	size_t len;
	snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
	if (read_file(path, 1 << 20, &env, &len))
		return -1;
	int have = 0;
	for (size_t off = 0; off < len; off += strlen(env + off) + 1) {
		if (!strncmp(env + off, "BATON_STAGE=", 12)) {
			snprintf(stage, size, "%s", env + off + 12);
			have |= 1;
		} else if (!strncmp(env + off, "BATON_REPLICA=", 14)) {
			*replica = atoi(env + off + 14);
			have |= 2;
		}
	}
	free(env);
	return have == 3 ? 0 : -1;
}

/*
 * Subreaper mode: who owns which process.  A unit owns its process, its
 * process group, what it owned at the last tick, and the descendants of
 * all these; an orphan baton adopted belongs to the newest unit of the
 * stage and replica in its environment started before it.  An orphan no
 * unit can own, or whose unit has ended, is ended: nobody supervises it.
 */
static void attribute(struct bt_contain *c)
{
	struct bt_unit **owner = bt_calloc(c->nprocs ? c->nprocs : 1, sizeof(*owner));
	for (struct bt_unit *u = c->units; u; u = u->next) {
		for (int i = 0; i < u->ntracked; i++) {
			long k = find(c, u->tracked[i].pid);
			if (k >= 0 && c->procs[k].start == u->tracked[i].start)
				owner[k] = u;
		}
		if (!u->pid || u->ended)
			continue;
		/* While baton has not reaped it, its pid and group id cannot be reused. */
		for (size_t k = 0; k < c->nprocs; k++)
			if (c->procs[k].pid == u->pid || c->procs[k].pgrp == u->pid)
				owner[k] = u;
	}
	for (int round = 0; round < 2; round++) {
		for (int changed = 1, pass = 0; changed && pass < 64; pass++) {
			changed = 0;
			for (size_t k = 0; k < c->nprocs; k++) {
				long pk;
				if (owner[k] || (pk = find(c, c->procs[k].ppid)) < 0 || !owner[pk])
					continue;
				owner[k] = owner[pk];
				changed = 1;
			}
		}
		if (round)
			break;
		for (size_t k = 0; k < c->nprocs; k++) {
			const struct pinfo *p = &c->procs[k];
			if (owner[k] || p->ppid != c->self || p->state == 'Z' ||
			    bt_process_waits_for(p->pid))
				continue;
			char stage[128];
			int replica = 0;
			struct bt_unit *best = NULL;
			if (orphan_origin(p->pid, stage, sizeof(stage), &replica) == 0)
				for (struct bt_unit *u = c->units; u; u = u->next)
					if (u->pid && u->replica == replica &&
					    !strcmp(u->stage, stage) && u->start <= p->start &&
					    (!best || u->start > best->start))
						best = u;
			if (best && !best->ended) {
				owner[k] = best;
				continue;
			}
			c->escaped++;
			if (best)
				bt_info("ending what a replica process left",
					"stage=%s replica=%d pid=%d", best->stage, best->replica,
					(int)p->pid);
			else
				bt_warn("ending an orphan no replica owns", "pid=%d", (int)p->pid);
			kill(p->pid, SIGKILL);
		}
	}
	for (struct bt_unit *u = c->units; u; u = u->next) {
		u->ntracked = 0;
		memset(&u->usage, 0, sizeof(u->usage));
	}
	for (size_t k = 0; k < c->nprocs; k++) {
		struct bt_unit *u = owner[k];
		const struct pinfo *p = &c->procs[k];
		if (!u || p->state == 'Z')
			continue;
		track(u, p);
		u->usage.cpu_jiffies += p->jiffies;
		u->usage.rss_bytes += p->rss_pages * (uint64_t)c->page;
		u->usage.processes++;
		if (u->ended)
			kill(p->pid, SIGKILL); /* a straggler of an ended unit */
	}
	free(owner);
}

static void cgroup_usage(struct bt_contain *c, struct bt_unit *u)
{
	memset(&u->usage, 0, sizeof(u->usage));
	char *procs = read_small(u->cg, "cgroup.procs");
	for (char *p = procs; p && *p;) {
		long k = find(c, (pid_t)atoi(p));
		if (k >= 0 && c->procs[k].state != 'Z') {
			u->usage.processes++;
			u->usage.rss_bytes += c->procs[k].rss_pages * (uint64_t)c->page;
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	free(procs);
	char *cpu = read_small(u->cg, "cpu.stat");
	u->usage.cpu_jiffies = bt_cgroup_key(cpu, "usage_usec") * (uint64_t)c->hz / 1000000;
	free(cpu);
	if (c->memory) {
		char *cur = read_small(u->cg, "memory.current");
		if (cur)
			u->usage.rss_bytes = strtoull(cur, NULL, 10);
		free(cur);
	}
}

static uint64_t hash_units(const struct bt_contain *c)
{
	uint64_t h = 1469598103934665603ull;
	for (const struct bt_unit *u = c->units; u; u = u->next)
		for (int i = 0; i < u->ntracked; i++)
			h = (h ^ ((uint64_t)u->tracked[i].pid * 31 + u->tracked[i].start)) *
			    1099511628211ull;
	return h;
}

/* The record of every process baton owns, replaced whole when it changed. */
static void write_record(struct bt_contain *c)
{
	uint64_t h = hash_units(c);
	if (!c->record || h == c->record_hash)
		return;
	struct bt_buf b = BT_BUF_INIT;
	for (const struct bt_unit *u = c->units; u; u = u->next)
		for (int i = 0; i < u->ntracked; i++)
			bt_buf_printf(&b, "%d %llu\n", (int)u->tracked[i].pid,
				      (unsigned long long)u->tracked[i].start);
	char *tmp = bt_asprintf("%s.tmp", c->record);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ssize_t w = fd >= 0 && b.len ? write(fd, b.data, b.len) : 0;
	if (fd >= 0 && (size_t)w == b.len && close(fd) == 0 && rename(tmp, c->record) == 0) {
		c->record_hash = h;
	} else {
		if (fd >= 0 && (size_t)w != b.len)
			close(fd);
		unlink(tmp);
		bt_warn("cannot write the record of worker processes", "path=%s error=%s",
			BT_LOGQ(c->record), BT_LOGQ(strerror(errno ? errno : EIO)));
	}
	free(tmp);
	bt_buf_release(&b);
}

void bt_contain_tick(struct bt_contain *c, int usage)
{
	/*
	 * The subreaper needs the whole picture at every tick.  A cgroup holds
	 * its processes by itself: an idle baton only looks at /proc now and
	 * then, for the zombies of adopted orphans (harmless until reaped).
	 */
	int full = c->mode == BT_CONTAIN_SUBREAPER || usage || ++c->quiet_ticks >= 10;
	if (full) {
		c->quiet_ticks = 0;
		scan(c);
		/* Zombies no bt_process waits for: adopted orphans. */
		for (size_t k = 0; k < c->nprocs; k++)
			if (c->procs[k].ppid == c->self && c->procs[k].state == 'Z' &&
			    !bt_process_waits_for(c->procs[k].pid))
				waitpid(c->procs[k].pid, NULL, WNOHANG);
	}
	if (c->mode == BT_CONTAIN_SUBREAPER) {
		attribute(c);
		write_record(c);
	} else if (usage) {
		for (struct bt_unit *u = c->units; u; u = u->next)
			if (!u->ended && u->pid)
				cgroup_usage(c, u);
	}
	/* Units whose owner let go are freed once nothing of them is left. */
	for (struct bt_unit **p = &c->units; *p;) {
		struct bt_unit *u = *p;
		if (u->released && (u->cg ? cgroup_remove(u->cg) == 0 : u->ntracked == 0)) {
			*p = u->next;
			unit_free(u);
		} else {
			p = &u->next;
		}
	}
}

/* ---- the end ---------------------------------------------------------------- */

int bt_contain_stop(struct bt_contain *c)
{
	int left = 0;
	if (!c)
		return 0;
	if (c->mode == BT_CONTAIN_SUBREAPER) {
		/* One more walk finds what was forked since the last tick. */
		for (struct bt_unit *u = c->units; u; u = u->next)
			bt_unit_end(u);
		for (int i = 0; i < 500; i++) {
			scan(c);
			attribute(c); /* kills what ended units still own */
			left = 0;
			for (struct bt_unit *u = c->units; u; u = u->next)
				left += u->ntracked;
			for (size_t k = 0; k < c->nprocs; k++)
				if (c->procs[k].ppid == c->self && c->procs[k].state == 'Z' &&
				    !bt_process_waits_for(c->procs[k].pid))
					waitpid(c->procs[k].pid, NULL, WNOHANG);
			if (!left)
				break;
			usleep(10 * 1000);
		}
		if (c->record)
			unlink(c->record);
	} else {
		int e = cgroup_end(c->inst, 5000);
		if (e) {
			left = 1;
			bt_warn("cannot remove baton's cgroup", "path=%s error=%s",
				BT_LOGQ(c->inst), BT_LOGQ(bt_strerror(e)));
		}
	}
	if (!uv_is_closing((uv_handle_t *)&c->sigchld))
		uv_close((uv_handle_t *)&c->sigchld, NULL);
	return left;
}

void bt_contain_free(struct bt_contain *c)
{
	if (!c)
		return;
	while (c->units) {
		struct bt_unit *u = c->units;
		c->units = u->next;
		unit_free(u);
	}
	free(c->inst);
	free(c->record);
	free(c->why);
	free(c->procs);
	free(c);
}

json_t *bt_contain_status(const struct bt_contain *c)
{
	if (c->mode == BT_CONTAIN_CGROUP)
		return json_pack("{s:s, s:s, s:b, s:I}", "mode", "cgroup", "cgroup", c->inst,
				 "memory_max", c->memory, "orphans_ended", (json_int_t)c->escaped);
	json_t *o = json_pack("{s:s, s:s, s:I}", "mode", "subreaper", "reason", c->why,
			      "orphans_ended", (json_int_t)c->escaped);
	json_object_set_new(o, "record", c->record ? json_string(c->record) : json_null());
	return o;
}
