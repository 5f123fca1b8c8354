/*
 * Reading the machine: system CPU from /proc/stat, and a replica's whole
 * process group (its CPU time and RSS) from /proc/PID/stat, since a
 * worker's children spend its memory too.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scale.h"

int bt_read_system_cpu(struct bt_cpu_counters *out)
{
	FILE *f = fopen("/proc/stat", "r");
	if (!f)
		return -errno;
	unsigned long long v[10] = {0};
	int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
		       &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
	fclose(f);
	if (n < 4)
		return -EINVAL;
	/* user nice system idle iowait irq softirq steal (guest is in user already) */
	uint64_t idle = v[3] + v[4];
	uint64_t total = 0;
	for (int i = 0; i < 8; i++)
		total += v[i];
	out->total = total;
	out->busy = total - idle;
	return 0;
}

double bt_cpu_percent(const struct bt_cpu_counters *prev, const struct bt_cpu_counters *now)
{
	if (now->total <= prev->total)
		return 0;
	return 100.0 * (double)(now->busy - prev->busy) / (double)(now->total - prev->total);
}

/*
 * Fields of /proc/PID/stat after the command name (which may contain
 * spaces and parentheses, hence the search for the last ')').
 */
static int read_stat(const char *pid, int *pgrp, uint64_t *jiffies, uint64_t *rss_pages)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%s/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	char state;
	int ppid, pg;
	unsigned long utime, stime;
	long rss;
	/* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
	   cutime cstime priority nice threads itrealvalue starttime vsize rss */
	if (sscanf(p + 2,
		   "%c %d %d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d %*d %*u %*u %ld",
		   &state, &ppid, &pg, &utime, &stime, &rss) != 6)
		return -1;
	*pgrp = pg;
	*jiffies = utime + stime;
	*rss_pages = rss > 0 ? (uint64_t)rss : 0;
	return state == 'Z' ? -1 : 0;
}

int bt_read_group_usage(pid_t pgid, struct bt_group_usage *out)
{
	memset(out, 0, sizeof(*out));
	DIR *d = opendir("/proc");
	if (!d)
		return -errno;
	long page = sysconf(_SC_PAGESIZE);
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		int pg;
		uint64_t jiffies, pages;
		if (read_stat(e->d_name, &pg, &jiffies, &pages) || pg != pgid)
			continue;
		out->cpu_jiffies += jiffies;
		out->rss_bytes += pages * (uint64_t)page;
		out->processes++;
	}
	closedir(d);
	return 0;
}
