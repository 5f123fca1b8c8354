/*
 * GET /metrics: Prometheus text format 0.0.4.  Every family has HELP and
 * TYPE lines, counters end in _total and units are in the names, so that
 * `promtool check metrics` has nothing to say.  The document is built in
 * one loop turn, so accepted = succeeded + failed + in_flight holds in it.
 */
#include "metrics.h"

#include <string.h>
#include <unistd.h>

#include "../cluster/cluster.h"
#include "../daemon/daemon.h"
#include "../grpc/grpc.h"
#include "../proc/proc.h"
#include "../stream/stream.h"

#ifndef BATON_VERSION
#define BATON_VERSION "0.0.0"
#endif

static void family(struct bt_buf *out, const char *name, const char *type,
		   const char *help)
{
	bt_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The outcome codes an accepted request can end with. */
static const enum bt_code failure_codes[] = {
	BT_REJECTED, BT_WORKER_ERROR, BT_WORKER_CRASHED, BT_TIMEOUT,
	BT_OVERLOADED, BT_STAGE_FAILED, BT_SHUTTING_DOWN, BT_CANCELLED,
};

static void pipeline_counter(struct bt_daemon *d, struct bt_buf *out, const char *name,
			     const char *type, const char *help, size_t offset)
{
	family(out, name, type, help);
	for (int i = 0; i < d->npipelines; i++) {
		const struct bt_pipeline *pl = &d->pipelines[i];
		uint64_t v = *(const uint64_t *)((const char *)pl + offset);
		bt_buf_printf(out, "%s{pipeline=\"%s\"} %llu\n", name, pl->cfg->name,
			      (unsigned long long)v);
	}
}

static void pipelines(struct bt_daemon *d, struct bt_buf *out)
{
	pipeline_counter(d, out, "baton_requests_accepted_total", "counter",
			 "Requests accepted by a pipeline (each ends succeeded or failed).",
			 offsetof(struct bt_pipeline, accepted));
	pipeline_counter(d, out, "baton_requests_succeeded_total", "counter",
			 "Requests answered with the last stage's result.",
			 offsetof(struct bt_pipeline, succeeded));
	family(out, "baton_requests_failed_total", "counter",
	       "Requests answered with an error, by error code.");
	for (int i = 0; i < d->npipelines; i++)
		for (size_t c = 0; c < BT_ARRAY_SIZE(failure_codes); c++)
			bt_buf_printf(out,
				      "baton_requests_failed_total{pipeline=\"%s\",code=\"%s\"} %llu\n",
				      d->pipelines[i].cfg->name, bt_code_name(failure_codes[c]),
				      (unsigned long long)d->pipelines[i].failed[failure_codes[c]]);
	pipeline_counter(d, out, "baton_requests_in_flight", "gauge",
			 "Requests accepted and not yet answered.",
			 offsetof(struct bt_pipeline, in_flight));
	family(out, "baton_request_duration_seconds", "histogram",
	       "Time from acceptance to answer, every outcome.");
	for (int i = 0; i < d->npipelines; i++) {
		char labels[128];
		snprintf(labels, sizeof(labels), "pipeline=\"%s\"", d->pipelines[i].cfg->name);
		bt_hist_write(out, "baton_request_duration_seconds", labels,
			      &d->pipelines[i].duration_hist);
	}
}

static void stage_counter(struct bt_daemon *d, struct bt_buf *out, const char *name,
			  const char *type, const char *help, size_t offset)
{
	family(out, name, type, help);
	for (int i = 0; i < d->nstages; i++) {
		const struct bt_stage *st = &d->stages[i];
		uint64_t v = *(const uint64_t *)((const char *)st + offset);
		bt_buf_printf(out, "%s{stage=\"%s\"} %llu\n", name, st->cfg->name,
			      (unsigned long long)v);
	}
}

static void stages(struct bt_daemon *d, struct bt_buf *out)
{
	stage_counter(d, out, "baton_stage_requests_entered_total", "counter",
		      "Requests that entered the stage's queue.",
		      offsetof(struct bt_stage, entered));
	stage_counter(d, out, "baton_stage_requests_succeeded_total", "counter",
		      "Successful results from the stage's workers.",
		      offsetof(struct bt_stage, completed));
	family(out, "baton_stage_requests_failed_total", "counter",
	       "Requests that ended with an error in this stage, by error code.");
	for (int i = 0; i < d->nstages; i++)
		for (size_t c = 0; c < BT_ARRAY_SIZE(failure_codes); c++)
			bt_buf_printf(out,
				      "baton_stage_requests_failed_total{stage=\"%s\",code=\"%s\"} %llu\n",
				      d->stages[i].cfg->name, bt_code_name(failure_codes[c]),
				      (unsigned long long)d->stages[i].failed_codes[failure_codes[c]]);
	stage_counter(d, out, "baton_stage_retries_total", "counter",
		      "Re-dispatches after a replica died or a worker asked for a retry.",
		      offsetof(struct bt_stage, retried));
	family(out, "baton_stage_queue_depth", "gauge", "Requests waiting for a replica.");
	for (int i = 0; i < d->nstages; i++)
		bt_buf_printf(out, "baton_stage_queue_depth{stage=\"%s\"} %zu\n",
			      d->stages[i].cfg->name, d->stages[i].queue.len);
	stage_counter(d, out, "baton_stage_in_flight", "gauge",
		      "Requests sent to the stage's replicas and not yet answered.",
		      offsetof(struct bt_stage, running));
	family(out, "baton_stage_failed", "gauge",
	       "1 when every replica of the stage exhausted its restarts.");
	for (int i = 0; i < d->nstages; i++)
		bt_buf_printf(out, "baton_stage_failed{stage=\"%s\"} %d\n",
			      d->stages[i].cfg->name, d->stages[i].failed);
	static const struct {
		const char *name, *help;
		size_t offset;
	} hists[] = {
		{"baton_stage_queue_duration_seconds",
		 "Time a request waited in the stage's queue (all attempts).",
		 offsetof(struct bt_stage, queue_hist)},
		{"baton_stage_run_duration_seconds",
		 "Time from dispatch to result in the stage (all attempts).",
		 offsetof(struct bt_stage, run_hist)},
		{"baton_stage_batch_size", "Requests per batch sent to a replica.",
		 offsetof(struct bt_stage, batch_hist)},
	};
	for (size_t h = 0; h < BT_ARRAY_SIZE(hists); h++) {
		family(out, hists[h].name, "histogram", hists[h].help);
		for (int i = 0; i < d->nstages; i++) {
			char labels[128];
			snprintf(labels, sizeof(labels), "stage=\"%s\"", d->stages[i].cfg->name);
			bt_hist_write(out, hists[h].name, labels,
				      (const struct bt_hist *)((const char *)&d->stages[i] +
							       hists[h].offset));
		}
	}
}

static void replicas(struct bt_daemon *d, struct bt_buf *out)
{
	family(out, "baton_replicas", "gauge", "Replicas by state.");
	for (int i = 0; i < d->nstages; i++) {
		const struct bt_stage *st = &d->stages[i];
		int count[BT_REPLICA_FAILED + 2] = {0}; /* the last one is "busy" */
		for (int r = 0; r < st->nreplicas; r++) {
			const struct bt_replica *rep = st->replicas[r];
			if (rep->state == BT_REPLICA_READY && rep->ninflight)
				count[BT_REPLICA_FAILED + 1]++;
			else
				count[rep->state]++;
		}
		for (int s = 0; s <= BT_REPLICA_FAILED + 1; s++)
			bt_buf_printf(out, "baton_replicas{stage=\"%s\",state=\"%s\"} %d\n",
				      st->cfg->name,
				      s <= BT_REPLICA_FAILED ? bt_replica_state_name(s) : "busy",
				      count[s]);
	}
	family(out, "baton_replica_restarts_total", "counter",
	       "Processes started to replace one that ended.");
	for (int i = 0; i < d->nstages; i++) {
		unsigned long long n = 0;
		for (int r = 0; r < d->stages[i].nreplicas; r++)
			n += d->stages[i].replicas[r]->restarts;
		bt_buf_printf(out, "baton_replica_restarts_total{stage=\"%s\"} %llu\n",
			      d->stages[i].cfg->name, n);
	}
	family(out, "baton_replica_failures_total", "counter",
	       "Replica processes lost against baton's will, by reason.");
	for (int i = 0; i < d->nstages; i++)
		for (int f = 0; f < BT_FAIL_COUNT; f++)
			bt_buf_printf(out,
				      "baton_replica_failures_total{stage=\"%s\",reason=\"%s\"} %llu\n",
				      d->stages[i].cfg->name, bt_fail_reason_name(f),
				      (unsigned long long)d->stages[i].failures[f]);
}

static void resources(struct bt_daemon *d, struct bt_buf *out)
{
	family(out, "baton_system_cpu_ratio", "gauge", "Busy share of all CPUs, 0-1.");
	bt_buf_printf(out, "baton_system_cpu_ratio %.4f\n", d->cpu_percent / 100.0);
	family(out, "baton_replica_cpu_ratio", "gauge",
	       "CPU used by a replica's process group, in cores.");
	for (int i = 0; i < d->nstages; i++)
		for (int r = 0; r < d->stages[i].nreplicas; r++)
			if (bt_replica_pid(d->stages[i].replicas[r]))
				bt_buf_printf(out, "baton_replica_cpu_ratio{stage=\"%s\",replica=\"%d\"} %.4f\n",
					      d->stages[i].cfg->name, d->stages[i].replicas[r]->id,
					      d->stages[i].replicas[r]->cpu_percent / 100.0);
	family(out, "baton_replica_resident_memory_bytes", "gauge",
	       "RSS of a replica's whole process group.");
	for (int i = 0; i < d->nstages; i++)
		for (int r = 0; r < d->stages[i].nreplicas; r++)
			if (bt_replica_pid(d->stages[i].replicas[r]))
				bt_buf_printf(out,
					      "baton_replica_resident_memory_bytes{stage=\"%s\",replica=\"%d\"} %llu\n",
					      d->stages[i].cfg->name, d->stages[i].replicas[r]->id,
					      (unsigned long long)d->stages[i].replicas[r]->rss_bytes);
	family(out, "baton_stage_arrival_rate", "gauge",
	       "Requests entering the stage per second, last tick.");
	for (int i = 0; i < d->nstages; i++)
		bt_buf_printf(out, "baton_stage_arrival_rate{stage=\"%s\"} %.3f\n",
			      d->stages[i].cfg->name, d->stages[i].arrival_rate);
	static const char *lat_names[] = {"baton_stage_latency_p50_seconds",
					  "baton_stage_latency_p95_seconds"};
	for (int q = 0; q < 2; q++) {
		family(out, lat_names[q], "gauge",
		       q ? "p95 of queue + run time in the stage over the last 30 ticks."
			 : "p50 of queue + run time in the stage over the last 30 ticks.");
		for (int i = 0; i < d->nstages; i++) {
			const struct bt_stage *st = &d->stages[i];
			if (st->latency_p50_s >= 0)
				bt_buf_printf(out, "%s{stage=\"%s\"} %.6f\n", lat_names[q],
					      st->cfg->name, q ? st->latency_p95_s : st->latency_p50_s);
		}
	}
	family(out, "baton_stage_replicas_target", "gauge",
	       "Replicas the stage should have (policy or manual).");
	for (int i = 0; i < d->nstages; i++)
		bt_buf_printf(out, "baton_stage_replicas_target{stage=\"%s\"} %d\n",
			      d->stages[i].cfg->name, d->stages[i].target);
	family(out, "baton_scaling_decisions_total", "counter",
	       "Scaling decisions taken (up, down, none: count unchanged) and refused.");
	for (int k = 0; k < BT_SCALE_KINDS; k++)
		bt_buf_printf(out, "baton_scaling_decisions_total{decision=\"%s\"} %llu\n",
			      bt_scale_kind_name((enum bt_scale_kind)k),
			      (unsigned long long)d->scale_counts[k]);
	if (d->ngpus) {
		family(out, "baton_gpu_placed_ratio", "gauge",
		       "Share of each GPU reserved by placed replicas.");
		for (int g = 0; g < d->ngpus; g++)
			bt_buf_printf(out, "baton_gpu_placed_ratio{gpu=\"%d\"} %.4f\n", d->gpus[g].id,
				      d->gpus[g].used_fraction);
	}
	if (d->nvml && d->ngpus) {
		family(out, "baton_gpu_utilization_ratio", "gauge", "GPU busy share from NVML, 0-1.");
		for (int g = 0; g < d->ngpus; g++)
			bt_buf_printf(out, "baton_gpu_utilization_ratio{gpu=\"%d\"} %.2f\n",
				      d->gpus[g].id, d->gpu_samples[g].util_percent / 100.0);
		family(out, "baton_gpu_memory_used_bytes", "gauge", "GPU memory in use, from NVML.");
		for (int g = 0; g < d->ngpus; g++)
			bt_buf_printf(out, "baton_gpu_memory_used_bytes{gpu=\"%d\"} %llu\n",
				      d->gpus[g].id,
				      (unsigned long long)d->gpu_samples[g].mem_used_mb << 20);
		family(out, "baton_gpu_memory_total_bytes", "gauge", "GPU memory, from NVML.");
		for (int g = 0; g < d->ngpus; g++)
			bt_buf_printf(out, "baton_gpu_memory_total_bytes{gpu=\"%d\"} %llu\n",
				      d->gpus[g].id,
				      (unsigned long long)d->gpu_samples[g].mem_total_mb << 20);
	}
}

void bt_metrics_write(struct bt_daemon *d, struct bt_buf *out)
{
	bt_daemon_want_signals(d);
	family(out, "baton_build_info", "gauge", "Version of the running baton.");
	bt_buf_printf(out, "baton_build_info{version=\"%s\"} 1\n", BATON_VERSION);
	family(out, "baton_uptime_seconds", "gauge", "Seconds since baton started.");
	bt_buf_printf(out, "baton_uptime_seconds %.3f\n",
		      (double)(bt_now_ms() - d->started_ms) / 1000.0);
	pipelines(d, out);
	stages(d, out);
	replicas(d, out);
	resources(d, out);
	bt_streams_metrics(d->streams, out);
	bt_grpc_metrics(d->grpc, out);
	if (d->cluster)
		bt_cluster_metrics(d->cluster, out);
}
