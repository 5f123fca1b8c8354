/*
 * Batch jobs (`baton run`): run a pipeline over files with the daemon's
 * scheduler and supervision but no HTTP.  This module walks the inputs,
 * feeds requests within a bound, writes each result atomically, records
 * failures, draws progress and prints the summary.  Resuming is by
 * existence: an input whose output exists is skipped.
 */
#ifndef BT_JOBS_H
#define BT_JOBS_H

#include <stddef.h>
#include <stdint.h>

#include "../config/config.h"

struct bt_job_options {
	const char *pipeline;
	char **inputs; /* files or directories */
	int ninputs;
	char **include, **exclude; /* globs for files found in directories */
	int ninclude, nexclude;
	const char *outdir;
	int jobs; /* requests in flight; 0 picks from the first stage's capacity */
	int force; /* redo inputs whose output exists */
	int progress; /* 1 bar, 0 plain lines, -1 decide from isatty(stderr) */
};

/* Runs the job; returns the exit status (0 all succeeded, 1 not, 2 usage). */
int bt_jobs_run(struct bt_config *cfg, const struct bt_job_options *opt);

/*
 * The same over the config's `run:` section (dbrun.c): a PostgreSQL source
 * and sink; opt->pipeline may be NULL (run.pipeline), inputs and outdir
 * are unused.  0 all rows written, 1 some failed or the run stopped, 2
 * usage or configuration (with FILE:LINE:COL).
 */
int bt_jobs_run_db(struct bt_config *cfg, const struct bt_job_options *opt);

struct bt_bench_options {
	const char *pipeline;
	char **inputs; /* payload files, sent in turn */
	int ninputs;
	int concurrency; /* requests kept in flight */
	unsigned seconds; /* how long to send, when requests is 0 */
	uint64_t requests; /* how many to send, or 0 */
	const char *json_path, *csv_path; /* optional outputs */
};

/* `baton bench` (bench.c): 0 when it measured something, 1 if not, 2 usage. */
int bt_bench_run(struct bt_config *cfg, const struct bt_bench_options *opt);

/* Pure helpers, exposed for unit tests (safe extensions: bt_ext_is_safe). */
/* Output path of an input: outdir/relpath + ext (malloc'd). */
char *bt_jobs_output_path(const char *outdir, const char *relpath, const char *ext);
/* Nearest-rank percentile of sorted values (n > 0). */
double bt_jobs_percentile(const double *sorted, size_t n, double q);

/* ---- benchmark scenarios (scenario.c, loadgen.c, report.c) ---------------- */

#define BT_SCENARIO_REPLICAS_MAX 1024
#define BT_SCENARIO_CONNECTIONS_MAX 10000

enum bt_load_kind { BT_LOAD_CLOSED, BT_LOAD_OPEN };

struct bt_scale_setting {
	char *stage;
	int replicas;
	size_t line, col; /* where the scenario file set it, for errors found later */
};

struct bt_batch_setting {
	char *stage;
	int max_size;
	long window_ms;
	size_t line, col;
};

struct bt_scenario {
	char *name;
	char *pipeline;
	enum bt_load_kind load;
	int concurrency; /* closed loop: requests kept in flight */
	double rate; /* open loop: requests per second */
	int poisson; /* open loop: exponential gaps instead of constant ones */
	int connections; /* open loop: the most connections it opens */
	int replicas_all; /* every stage of the pipeline gets this many; 0: unset */
	struct bt_scale_setting *scale; /* per stage, after replicas_all */
	int nscale;
	struct bt_batch_setting *batch; /* needs a fresh daemon */
	int nbatch;
	double duration_s, warmup_s, timeout_s;
	size_t line, col; /* the scenario's place in its file; 0 for built-in ones */
};

struct bt_scenario_set {
	struct bt_scenario *s;
	int n;
	char **payloads; /* request bodies, sent in turn */
	size_t *lens;
	int npayloads;
};

/*
 * Parses a scenario file (text of len bytes, named path in errors).
 * Returns 0, or BT_ECONFIG with "FILE:LINE:COL: ..." in err and *set empty.
 * Input files are read relative to the file's directory.
 */
int bt_scenarios_parse(const char *path, const char *text, size_t len,
		       struct bt_scenario_set *set, char *err, size_t errlen);
int bt_scenarios_load(const char *path, struct bt_scenario_set *set, char *err, size_t errlen);
/* Appends the built-in `standard` suite: replicas 1, 2, 4, 6, 8 of the pipeline. */
void bt_scenarios_standard(struct bt_scenario_set *set, const char *pipeline,
			   double duration_s, double warmup_s);
/* Takes data (malloc'd) as one more request body. */
void bt_scenario_set_add_payload(struct bt_scenario_set *set, char *data, size_t len);
void bt_scenarios_release(struct bt_scenario_set *set);

/* What one scenario measured (loadgen.c fills it, report.c writes it). */
struct bt_scenario_result {
	const struct bt_scenario *sc;
	char error[512]; /* not empty: the scenario could not run */
	int replicas; /* the most replicas a stage of the pipeline had while measured */
	uint64_t sent, ok, failed;
	/* Failures: connection, 4xx, 500, 502, 503, 504, other, unfinished when the bound ran out. */
	uint64_t by_status[8];
	double seconds, rps, success_rate;
	double *latency_ms; /* every measured success, sorted */
	size_t nlatency;
	double lat_avg, p50, p90, p95, p99, max;
	double cpu_avg, cpu_max, gpu_avg, gpu_max; /* NAN when not sampled */
	double rss_max_mb;
	/* From Server-Timing, means over successes: time queued, running, in baton besides. */
	double queue_ms, run_ms, baton_ms, http_ms;
};

struct bt_scenario_options {
	const char *url; /* a running daemon; NULL: start one per scenario from cfg */
	const char *token; /* bearer token, or NULL */
	const char *out; /* PREFIX: PREFIX.json, PREFIX.csv, PREFIX.svg */
	const char *scenario_path; /* for FILE:LINE:COL in errors found while running */
};

/*
 * Runs every scenario of set in turn (loadgen.c), prints a line per
 * scenario and writes the outputs.  cfg may be NULL with opt->url.
 * Returns 0 when every scenario ran and had successes, 1 if not.
 */
int bt_scenarios_run(struct bt_config *cfg, const struct bt_scenario_set *set,
		     const struct bt_scenario_options *opt);

/* report.c: the outputs.  Each returns 0 or -errno. */
int bt_report_json(const char *path, const struct bt_scenario_result *res, int n);
int bt_report_csv(const char *path, const struct bt_scenario_result *res, int n);
int bt_report_svg(const char *path, const struct bt_scenario_result *res, int n);
/* The x-axis of the chart: "replicas", "concurrency", "rate" or "scenario". */
const char *bt_report_varied(const struct bt_scenario_result *res, int n);

#endif
