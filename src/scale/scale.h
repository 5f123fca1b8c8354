/*
 * Resources and autoscaling (DESIGN §7): what the machine and the
 * replicas use (/proc, NVML), where a replica fits (GPU placement), and
 * how many replicas a stage should have (the demand and headroom
 * policies).  Policies and placement are pure and unit-tested; signals
 * read /proc and NVML; the daemon's tick applies the decisions.
 */
#ifndef BT_SCALE_H
#define BT_SCALE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- policies (pure) ---------------------------------------------------- */

enum bt_policy { BT_POLICY_NONE, BT_POLICY_DEMAND, BT_POLICY_HEADROOM };

struct bt_autoscale_config {
	enum bt_policy policy;
	int min, max; /* replicas */
	double target_ongoing; /* demand: requests per replica */
	uint64_t upscale_delay_ms, downscale_delay_ms; /* demand */
	double max_cpu, max_gpu; /* demand: no scale-up at or above (percent) */
	/* headroom: up when ALL below the up_* marks, down when ANY above down_* */
	double up_gpu, up_cpu, up_latency_s;
	double down_gpu, down_cpu, down_latency_s;
	uint64_t hysteresis_ms; /* a condition must hold this long; also a cooldown */
};

/* What a policy sees of a stage and the machine at one tick. */
struct bt_scale_input {
	uint64_t now_ms;
	int current; /* replicas counted (not draining or exited) */
	uint64_t queued, in_flight;
	double cpu_percent; /* system, 0-100 */
	double gpu_percent; /* busiest GPU the stage uses, 0-100; <0 when none */
	double latency_p95_s; /* <0 when no sample yet */
	int can_place; /* one more replica would fit (GPU placement) */
	const char *place_reason; /* why not, when !can_place */
};

/* A policy's memory between ticks. */
struct bt_scale_state {
	int want_up, want_down; /* a wish is held since ..._since */
	uint64_t want_up_since, want_down_since;
	int down_peak; /* demand: the highest desired count while wanting down */
	int changed; /* last_change_ms is set */
	uint64_t last_change_ms;
	/*
	 * What the last refusal was about ("cpu", "gpu", or the placement
	 * reason), so that a refusal is recorded once, not at every tick
	 * while the reading moves.
	 */
	char last_refusal[256];
};

struct bt_scale_decision {
	int to; /* the replica count to go to (== current: nothing to do) */
	int refused; /* wanted to scale up but something stood in the way */
	char reason[256];
};

/*
 * demand: desired = ceil((queued + in_flight) / target_ongoing) clamped to
 * [min, max]; up once desired stayed above current for upscale_delay and
 * there is headroom (cpu < max_cpu, gpu < max_gpu, placement); down once
 * it stayed below for downscale_delay, to the highest desired count seen
 * in that time (not the last reading, which would undershoot and flap).
 */
void bt_policy_demand(const struct bt_autoscale_config *c, const struct bt_scale_input *in,
		      struct bt_scale_state *s, struct bt_scale_decision *out);
/*
 * headroom (seed 002): one up when ALL of gpu, cpu, latency are below the
 * up marks, one down when ANY is above the down marks, each only after the
 * condition held for hysteresis_ms and hysteresis_ms after the last change.
 */
void bt_policy_headroom(const struct bt_autoscale_config *c, const struct bt_scale_input *in,
			struct bt_scale_state *s, struct bt_scale_decision *out);

/* ---- GPU placement (pure) --------------------------------------------------- */

struct bt_gpu_slot {
	int id; /* CUDA device index */
	uint64_t memory_mb; /* capacity */
	double used_fraction; /* by placed replicas */
	uint64_t used_mb;     /* reserved by placed replicas */
	uint64_t external_mb; /* in use beyond those reservations (other processes) */
};

/*
 * Best fit: the GPU with enough free fraction and memory (capacity minus
 * reservations minus external use) that leaves the least memory free.
 * Returns its index in gpus, or -1 with a sentence in reason.  Does not
 * reserve.
 */
int bt_place_gpu(const struct bt_gpu_slot *gpus, int n, double fraction, uint64_t memory_mb,
		 char *reason, size_t reason_len);
/*
 * Records what NVML says is in use on g: what exceeds baton's own
 * reservations belongs to someone else (external_mb = max(0, used -
 * used_mb)) and is not free for placement.
 */
void bt_gpu_observe(struct bt_gpu_slot *g, uint64_t nvml_used_mb);

/*
 * Whether a replica could ever be placed: bt_place_gpu() as if nothing
 * were placed on any of the n GPUs (their used_* are ignored).  Returns
 * the index, or -1 with a sentence in reason: then waiting cannot help.
 */
int bt_place_gpu_when_idle(const struct bt_gpu_slot *gpus, int n, double fraction,
			   uint64_t memory_mb, char *reason, size_t reason_len);

/* ---- signals ------------------------------------------------------------------ */

/* System CPU busy percent between two /proc/stat readings. */
struct bt_cpu_counters {
	uint64_t busy, total; /* jiffies */
};
int bt_read_system_cpu(struct bt_cpu_counters *out);
/* Parses the "cpu " line that opens /proc/stat's text; 0 or -EINVAL.  Pure. */
int bt_parse_system_cpu(const char *text, struct bt_cpu_counters *out);
double bt_cpu_percent(const struct bt_cpu_counters *prev, const struct bt_cpu_counters *now);

/* What one process's /proc/PID/stat says. */
struct bt_proc_stat {
	pid_t pgrp;
	uint64_t cpu_jiffies; /* utime + stime */
	uint64_t rss_pages; /* 0 when the kernel reports a negative count */
	int zombie;
};
/*
 * Parses the NUL-terminated text of /proc/PID/stat, whose command name may
 * hold spaces and parentheses; 0, or -EINVAL when a field is missing.  Pure.
 */
int bt_parse_proc_stat(const char *text, struct bt_proc_stat *out);

/* CPU time (jiffies) and RSS of every process in a process group. */
struct bt_group_usage {
	uint64_t cpu_jiffies;
	uint64_t rss_bytes;
	int processes;
};
/* One pass over /proc: every live process group's usage, sorted by pgid. */
struct bt_group_entry {
	pid_t pgid;
	struct bt_group_usage u;
};
struct bt_usage_table {
	struct bt_group_entry *v;
	size_t len, cap;
	unsigned processes_read; /* /proc/PID/stat files read by the last scan */
};
/*
 * Refills t from one pass over /proc (every process's stat read once,
 * zombies left out); 0, or -errno when /proc cannot be read or memory
 * runs out (t is then empty).  Touches nothing but t: safe off the loop.
 */
int bt_usage_scan(struct bt_usage_table *t);
/* The group's usage in t, or NULL when no live process of it was seen.  O(log n). */
const struct bt_group_usage *bt_usage_find(const struct bt_usage_table *t, pid_t pgid);
void bt_usage_table_release(struct bt_usage_table *t);
/* One group alone (a whole pass over /proc for it); 0 or -errno. */
int bt_read_group_usage(pid_t pgid, struct bt_group_usage *out);

/* ---- NVML, loaded at run time ------------------------------------------------- */

struct bt_gpu_sample {
	unsigned util_percent; /* GPU busy, 0-100 */
	uint64_t mem_total_mb, mem_used_mb;
};

struct bt_nvml;
/*
 * dlopens path (NULL: "libnvidia-ml.so.1") and initialises NVML.  Returns
 * NULL with a sentence in err when the library or a GPU driver is absent;
 * baton then runs without GPU signals.
 */
struct bt_nvml *bt_nvml_open(const char *path, char *err, size_t errlen);
int bt_nvml_count(const struct bt_nvml *n);
/* Reads device index now; 0, or -1 with the failure logged once by the caller. */
int bt_nvml_sample(struct bt_nvml *n, int index, struct bt_gpu_sample *out);
void bt_nvml_close(struct bt_nvml *n);

#endif
