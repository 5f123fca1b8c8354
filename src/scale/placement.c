/*
 * GPU placement: best fit over the declared (or detected) GPUs, so that a
 * replica that would not fit waits instead of starting and running out of
 * memory (seed 004's Ray Serve replicas sharing one 8 GB card).  Memory
 * other processes use on a detected GPU is not free either.
 */
#include <stdio.h>
#include <stdlib.h>

#include "../common/common.h"
#include "scale.h"

int bt_place_gpu(const struct bt_gpu_slot *gpus, int n, double fraction, uint64_t memory_mb,
		 char *reason, size_t reason_len)
{
	int best = -1;
	uint64_t best_left = 0;
	/* Fractions are compared with a little slack: 0.2 × 5 must fit in 1.0. */
	const double eps = 1e-9;
	for (int i = 0; i < n; i++) {
		const struct bt_gpu_slot *g = &gpus[i];
		if (g->used_fraction + fraction > 1.0 + eps)
			continue;
		if (g->used_mb + g->external_mb + memory_mb > g->memory_mb)
			continue;
		uint64_t left = g->memory_mb - g->used_mb - g->external_mb - memory_mb;
		if (best < 0 || left < best_left) {
			best = i;
			best_left = left;
		}
	}
	if (best >= 0 || !reason)
		return best;
	if (n == 0) {
		snprintf(reason, reason_len, "no GPU on this machine (gpus: none, or no NVML)");
		return -1;
	}
	/* Say what was missing on the GPU closest to fitting. */
	size_t o = (size_t)snprintf(reason, reason_len, "no GPU fits gpu %.2g and %llu MB:",
				    fraction, (unsigned long long)memory_mb);
	for (int i = 0; i < n && o < reason_len; i++) {
		const struct bt_gpu_slot *g = &gpus[i];
		uint64_t taken = g->used_mb + g->external_mb;
		unsigned long long free_mb = g->memory_mb > taken ? g->memory_mb - taken : 0;
		double share = g->used_fraction < 1.0 ? 1.0 - g->used_fraction : 0.0;
		o += (size_t)snprintf(reason + o, reason_len - o,
				      " gpu%d has %.2g and %llu MB free", g->id, share, free_mb);
		if (g->external_mb && o < reason_len)
			o += (size_t)snprintf(reason + o, reason_len - o,
					      " (%llu MB used outside baton)",
					      (unsigned long long)g->external_mb);
		if (i + 1 < n && o < reason_len)
			o += (size_t)snprintf(reason + o, reason_len - o, ",");
	}
	return -1;
}

int bt_place_gpu_when_idle(const struct bt_gpu_slot *gpus, int n, double fraction,
			   uint64_t memory_mb, char *reason, size_t reason_len)
{
	struct bt_gpu_slot *idle = bt_calloc((size_t)(n > 0 ? n : 1), sizeof(*idle));
	for (int i = 0; i < n; i++) {
		idle[i].id = gpus[i].id;
		idle[i].memory_mb = gpus[i].memory_mb;
	}
	int r = bt_place_gpu(idle, n, fraction, memory_mb, reason, reason_len);
	free(idle);
	return r;
}

void bt_gpu_observe(struct bt_gpu_slot *g, uint64_t nvml_used_mb)
{
	g->external_mb = nvml_used_mb > g->used_mb ? nvml_used_mb - g->used_mb : 0;
}
