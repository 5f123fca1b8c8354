/*
 * The floor for bench/hop: the bare round trip of 1 KiB over a socketpair
 * between two unpinned processes, the cheapest possible "hop" to a worker.
 * Prints p50/p99 in microseconds and round trips per second.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int full(int fd, char *buf, size_t n, int writing)
{
	size_t off = 0;
	while (off < n) {
		ssize_t r = writing ? write(fd, buf + off, n - off) : read(fd, buf + off, n - off);
		if (r <= 0)
			return -1;
		off += (size_t)r;
	}
	return 0;
}

static int cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 20000;
	size_t size = argc > 2 ? (size_t)atoi(argv[2]) : 1024;
	int sv[2];
	char *buf = calloc(1, size);
	uint64_t *lat = calloc((size_t)n, sizeof(*lat));
	if (!buf || !lat || socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		return 1;
	pid_t pid = fork();
	if (pid == 0) {
		close(sv[0]);
		while (full(sv[1], buf, size, 0) == 0 && full(sv[1], buf, size, 1) == 0)
			;
		_exit(0);
	}
	close(sv[1]);
	uint64_t start = now_ns();
	for (int i = 0; i < n; i++) {
		uint64_t t0 = now_ns();
		if (full(sv[0], buf, size, 1) || full(sv[0], buf, size, 0))
			return 1;
		lat[i] = now_ns() - t0;
	}
	double secs = (double)(now_ns() - start) / 1e9;
	close(sv[0]);
	waitpid(pid, NULL, 0);
	qsort(lat, (size_t)n, sizeof(*lat), cmp);
	printf("{\"p50_us\": %.1f, \"p99_us\": %.1f, \"per_s\": %.0f, \"n\": %d}\n",
	       (double)lat[n / 2] / 1000.0, (double)lat[(size_t)n * 99 / 100] / 1000.0,
	       n / secs, n);
	free(buf);
	free(lat);
	return 0;
}
