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

#endif
