/*
 * `baton run CONFIG --pipeline P --input PATH... --output DIR`: batch jobs
 * over files; `baton run CONFIG` alone: over the config's `run:` section
 * (a PostgreSQL source and sink).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config/config.h"
#include "../jobs/jobs.h"
#include "cli.h"

static int run(int argc, char **argv)
{
	struct bt_job_options opt;
	const char *path = NULL;
	memset(&opt, 0, sizeof(opt));
	opt.progress = -1;
	opt.inputs = calloc((size_t)argc, sizeof(char *));
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--pipeline") && i + 1 < argc) {
			opt.pipeline = argv[++i];
		} else if (!strcmp(a, "--output") && i + 1 < argc) {
			opt.outdir = argv[++i];
		} else if (!strcmp(a, "--jobs") && i + 1 < argc) {
			char *end;
			errno = 0;
			long n = strtol(argv[++i], &end, 10);
			opt.jobs = n >= 1 && n <= 1000000 && !errno && end != argv[i] && !*end ? (int)n : 0;
			if (opt.jobs < 1)
				path = NULL, i = argc, opt.pipeline = NULL;
		} else if (!strcmp(a, "--force")) {
			opt.force = 1;
		} else if (!strcmp(a, "--progress")) {
			opt.progress = 1;
		} else if (!strcmp(a, "--no-progress")) {
			opt.progress = 0;
		} else if (!strcmp(a, "--input")) {
			while (i + 1 < argc && argv[i + 1][0] != '-')
				opt.inputs[opt.ninputs++] = argv[++i];
		} else if (a[0] != '-' && !path) {
			path = a;
		} else {
			fprintf(stderr, "baton run: unknown argument '%s'\n", a);
			path = NULL;
			break;
		}
	}
	/* Without --input, the config's `run:` section says what to read (checked once loaded). */
	int from_config = path && opt.ninputs == 0 && !opt.outdir;
	if (!path || (!from_config && (!opt.pipeline || !opt.outdir || opt.ninputs == 0))) {
		bt_cli_usage(&bt_cmd_run, stderr);
		free(opt.inputs);
		return BT_EXIT_USAGE;
	}
	struct bt_config cfg;
	char err[1024];
	if (bt_config_load(path, &cfg, err, sizeof(err)) ||
	    bt_config_check_runnable(&cfg, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		if (cfg.path)
			bt_config_release(&cfg);
		free(opt.inputs);
		return BT_EXIT_USAGE;
	}
	if (from_config && !cfg.run.present) {
		fprintf(stderr, "baton run: %s has no 'run:' section; give --input and --output\n",
			path);
		bt_config_release(&cfg);
		free(opt.inputs);
		return BT_EXIT_USAGE;
	}
	int code = from_config ? bt_jobs_run_db(&cfg, &opt) : bt_jobs_run(&cfg, &opt);
	bt_config_release(&cfg);
	free(opt.inputs);
	return code;
}

const struct bt_cmd bt_cmd_run = {
	"run",
	"CONFIG [--pipeline P --input PATH... --output DIR] [--jobs N] [--force] [--progress | --no-progress]",
	"run a pipeline over files, or over the config's run: source and sink (resumable)", run};
