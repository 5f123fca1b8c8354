/*
 * Reading the machine: system CPU from /proc/stat, and the CPU time and
 * RSS of process groups from /proc/PID/stat, since a worker's children
 * spend its memory too.  One pass over /proc reads every process once and
 * sums it into its group, so sampling N replicas costs one pass, not N.
 * Parsing is by hand: these files are read hundreds of times a second.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scale.h"

/* Reads a small /proc file whole into buf (NUL-terminated); its length or -errno. */
static ssize_t read_small(int dirfd, const char *path, char *buf, size_t size)
{
	int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t n = 0;
	while (n < size - 1) {
		ssize_t got = read(fd, buf + n, size - 1 - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		n += (size_t)got;
	}
	close(fd);
	buf[n] = '\0';
	return (ssize_t)n;
}

/* Skips spaces, then reads an unsigned decimal; NULL when there is none. */
static const char *parse_u64(const char *p, uint64_t *out)
{
	while (*p == ' ')
		p++;
	if (*p < '0' || *p > '9')
		return NULL;
	uint64_t v = 0;
	while (*p >= '0' && *p <= '9')
		v = v * 10 + (uint64_t)(*p++ - '0');
	*out = v;
	return p;
}

/* Skips spaces and one field. */
static const char *skip_field(const char *p)
{
	while (*p == ' ')
		p++;
	if (!*p || *p == '\n')
		return NULL;
	while (*p && *p != ' ' && *p != '\n')
		p++;
	return p;
}

int bt_parse_system_cpu(const char *text, struct bt_cpu_counters *out)
{
	if (strncmp(text, "cpu ", 4))
		return -EINVAL;
	const char *p = text + 4;
	uint64_t v[8] = {0};
	int n = 0;
	for (; n < 8; n++) {
		const char *q = parse_u64(p, &v[n]);
		if (!q)
			break;
		p = q;
	}
	if (n < 4)
		return -EINVAL;
	/* user nice system idle iowait irq softirq steal (guest is in user already) */
	uint64_t total = 0;
	for (int i = 0; i < 8; i++)
		total += v[i];
	out->total = total;
	out->busy = total - v[3] - v[4];
	return 0;
}

int bt_read_system_cpu(struct bt_cpu_counters *out)
{
	char buf[512]; /* the first line is all we need */
	ssize_t n = read_small(AT_FDCWD, "/proc/stat", buf, sizeof(buf));
	if (n < 0)
		return (int)n;
	return bt_parse_system_cpu(buf, out);
}

double bt_cpu_percent(const struct bt_cpu_counters *prev, const struct bt_cpu_counters *now)
{
	if (now->total <= prev->total)
		return 0;
	return 100.0 * (double)(now->busy - prev->busy) / (double)(now->total - prev->total);
}

int bt_parse_proc_stat(const char *text, struct bt_proc_stat *out)
{
	/*
	 * The command name sits between parentheses and may itself hold
	 * spaces and parentheses: the fields start after the last ')'.
	 */
	const char *p = strrchr(text, ')');
	if (!p || p[1] != ' ' || !p[2])
		return -EINVAL;
	char state = p[2];
	p += 3;
	/* ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
	   cutime cstime priority nice threads itrealvalue starttime vsize rss */
	uint64_t pgrp, utime, stime, rss;
	if (!(p = skip_field(p)) || !(p = parse_u64(p, &pgrp)))
		return -EINVAL;
	for (int i = 0; i < 8; i++)
		if (!(p = skip_field(p)))
			return -EINVAL;
	if (!(p = parse_u64(p, &utime)) || !(p = parse_u64(p, &stime)))
		return -EINVAL;
	for (int i = 0; i < 8; i++)
		if (!(p = skip_field(p)))
			return -EINVAL;
	while (*p == ' ')
		p++;
	if (*p == '-') /* rss is signed; a negative one counts as none */
		rss = 0;
	else if (!parse_u64(p, &rss))
		return -EINVAL;
	out->pgrp = (pid_t)pgrp;
	out->cpu_jiffies = utime + stime;
	out->rss_pages = rss;
	out->zombie = state == 'Z';
	return 0;
}

static int by_pgid(const void *a, const void *b)
{
	pid_t x = ((const struct bt_group_entry *)a)->pgid;
	pid_t y = ((const struct bt_group_entry *)b)->pgid;
	return (x > y) - (x < y);
}

/* One pass over /proc; only group `only` when it is positive. */
static int scan(struct bt_usage_table *t, pid_t only)
{
	t->len = 0;
	t->processes_read = 0;
	DIR *dir = opendir("/proc");
	if (!dir)
		return -errno;
	int dfd = dirfd(dir);
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
	char path[32], buf[1024];
	struct dirent *e;
	while ((e = readdir(dir))) {
		const char *name = e->d_name;
		if (name[0] < '1' || name[0] > '9')
			continue;
		size_t len = strlen(name);
		if (len + sizeof("/stat") > sizeof(path))
			continue;
		memcpy(path, name, len);
		memcpy(path + len, "/stat", sizeof("/stat"));
		/* A process that exited since readdir is simply not counted. */
		struct bt_proc_stat s;
		if (read_small(dfd, path, buf, sizeof(buf)) <= 0 || bt_parse_proc_stat(buf, &s))
			continue;
		t->processes_read++;
		if (s.zombie || s.pgrp <= 0 || (only > 0 && s.pgrp != only))
			continue;
		if (t->len == t->cap) {
			t->cap = t->cap ? 2 * t->cap : 256;
			t->v = realloc(t->v, t->cap * sizeof(*t->v));
			if (!t->v) {
				closedir(dir);
				t->len = t->cap = 0;
				return -ENOMEM;
			}
		}
		struct bt_group_entry *g = &t->v[t->len++];
		g->pgid = s.pgrp;
		g->u.cpu_jiffies = s.cpu_jiffies;
		g->u.rss_bytes = s.rss_pages * page;
		g->u.processes = 1;
	}
	closedir(dir);
	/* Sorted by group, then each group's processes summed into its first entry. */
	if (t->len > 1) /* qsort may not be given the NULL of an empty table */
		qsort(t->v, t->len, sizeof(*t->v), by_pgid);
	size_t out = 0;
	for (size_t i = 0; i < t->len; i++) {
		if (out && t->v[out - 1].pgid == t->v[i].pgid) {
			struct bt_group_usage *u = &t->v[out - 1].u;
			u->cpu_jiffies += t->v[i].u.cpu_jiffies;
			u->rss_bytes += t->v[i].u.rss_bytes;
			u->processes++;
		} else {
			t->v[out++] = t->v[i];
		}
	}
	t->len = out;
	return 0;
}

int bt_usage_scan(struct bt_usage_table *t)
{
	return scan(t, 0);
}

const struct bt_group_usage *bt_usage_find(const struct bt_usage_table *t, pid_t pgid)
{
	size_t lo = 0, hi = t->len;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (t->v[mid].pgid < pgid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < t->len && t->v[lo].pgid == pgid ? &t->v[lo].u : NULL;
}

void bt_usage_table_release(struct bt_usage_table *t)
{
	free(t->v);
	memset(t, 0, sizeof(*t));
}

int bt_read_group_usage(pid_t pgid, struct bt_group_usage *out)
{
	struct bt_usage_table t = {0};
	memset(out, 0, sizeof(*out));
	int e = scan(&t, pgid > 0 ? pgid : -1);
	const struct bt_group_usage *u = e ? NULL : bt_usage_find(&t, pgid);
	if (u)
		*out = *u;
	bt_usage_table_release(&t);
	return e;
}
