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
	opt.include = calloc((size_t)argc, sizeof(char *));
	opt.exclude = calloc((size_t)argc, sizeof(char *));
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
			if (opt.jobs < 1) {
				fprintf(stderr, "baton run: --jobs must be an integer from 1 to 1000000, not '%s'\n",
					argv[i]);
				bt_cli_usage(&bt_cmd_run, stderr);
				free(opt.inputs);
				free(opt.include);
				free(opt.exclude);
				return BT_EXIT_USAGE;
			}
		} else if (!strcmp(a, "--include") && i + 1 < argc) {
			opt.include[opt.ninclude++] = argv[++i];
		} else if (!strcmp(a, "--exclude") && i + 1 < argc) {
			opt.exclude[opt.nexclude++] = argv[++i];
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
			free(opt.inputs);
			free(opt.include);
			free(opt.exclude);
			return bt_cli_bad_arg(&bt_cmd_run, argc, argv, i);
		}
	}
	/* Without --input, the config's `run:` section says what to read (checked once loaded). */
	int from_config = path && opt.ninputs == 0 && !opt.outdir;
	if (!path || (!from_config && (!opt.pipeline || !opt.outdir || opt.ninputs == 0))) {
		free(opt.inputs);
		free(opt.include);
		free(opt.exclude);
		return bt_cli_missing(&bt_cmd_run, !path		 ? "CONFIG"
						   : !opt.pipeline ? "--pipeline P"
						   : !opt.ninputs  ? "--input PATH..."
								   : "--output DIR");
	}
	struct bt_config cfg;
	char err[1024];
	if (bt_config_load(path, &cfg, err, sizeof(err)) ||
	    bt_config_check_runnable(&cfg, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		if (cfg.path)
			bt_config_release(&cfg);
		free(opt.inputs);
		free(opt.include);
		free(opt.exclude);
		return BT_EXIT_USAGE;
	}
	if (from_config && !cfg.run.present) {
		fprintf(stderr, "baton run: %s has no 'run:' section; give --input and --output\n",
			path);
		bt_config_release(&cfg);
		free(opt.inputs);
		free(opt.include);
		free(opt.exclude);
		return BT_EXIT_USAGE;
	}
	int code = from_config ? bt_jobs_run_db(&cfg, &opt) : bt_jobs_run(&cfg, &opt);
	bt_config_release(&cfg);
	free(opt.inputs);
	free(opt.include);
	free(opt.exclude);
	return code;
}

const struct bt_cmd bt_cmd_run = {
	"run",
	"CONFIG [--pipeline P --input PATH... --output DIR] [--include GLOB] [--exclude GLOB] [--jobs N] [--force] [--progress | --no-progress]",
	"run a pipeline over files, or over the config's run: source and sink (resumable)", run,
	"Starts the pipeline's stages as serve would (no HTTP), sends every input file\n"
	"through it and writes each result atomically to DIR/RELPATH.EXT (EXT is the\n"
	"result's meta.ext, default .out).  Failures go to DIR/_failed.jsonl, the log to\n"
	"DIR/_baton.log.  Running it again skips inputs whose output exists: a crash or\n"
	"Ctrl-C loses nothing.  Directories are walked recursively in sorted order,\n"
	"skipping dot files and DIR itself.\n"
	"\n"
	"Without --input, the config's run: section names a PostgreSQL source and sink:\n"
	"rows are read by key range and results upserted with the checkpoint in one\n"
	"transaction (docs/operations.md, Batch jobs over PostgreSQL).\n"
	"\n"
	"options:\n"
	"  --pipeline P       the pipeline to run (required, unless run: names it)\n"
	"  --input PATH...    files and directories (required, unless run: is used)\n"
	"  --output DIR       where results go, created if needed (with --input)\n"
	"  --include GLOB     in directories, take only files matching GLOB (repeatable;\n"
	"                     a GLOB without '/' matches the file name, one with '/' the\n"
	"                     path below the input directory)\n"
	"  --exclude GLOB     in directories, skip files matching GLOB (repeatable)\n"
	"  --jobs N           requests in flight (default twice the first stage's\n"
	"                     capacity, at least 2)\n"
	"  --force            redo inputs whose output exists\n"
	"  --progress         draw a progress bar (default when stderr is a terminal)\n"
	"  --no-progress      a plain line every 5 s instead\n"
	"\n"
	"exit status: 0 when every input succeeded (or was skipped), 1 otherwise or when\n"
	"interrupted, 2 on a usage or configuration error.\n"
	"\n"
	"examples:\n"
	"  baton run examples/documents/baton.yaml --pipeline documents --input samples/ --include '*.png' --include '*.pdf' --output out/\n"
	"  baton run examples/echo/baton.yaml --pipeline echo --input docs/ --include '*.md' --output /tmp/echo-out\n"};
