/* `baton bench CONFIG --pipeline P --input FILE...`: a pipeline's capacity. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config/config.h"
#include "../jobs/jobs.h"
#include "cli.h"

static int run(int argc, char **argv)
{
	struct bt_bench_options opt;
	const char *path = NULL;
	int bad = 0;
	memset(&opt, 0, sizeof(opt));
	opt.concurrency = 8;
	opt.seconds = 10;
	opt.inputs = calloc((size_t)argc, sizeof(char *));
	for (int i = 1; i < argc && !bad; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--pipeline") && i + 1 < argc)
			opt.pipeline = argv[++i];
		else if (!strcmp(a, "--concurrency") && i + 1 < argc)
			bad = (opt.concurrency = atoi(argv[++i])) < 1;
		else if (!strcmp(a, "--duration") && i + 1 < argc)
			bad = (int)(opt.seconds = (unsigned)atoi(argv[++i])) < 1;
		else if (!strcmp(a, "--requests") && i + 1 < argc)
			bad = (opt.requests = strtoull(argv[++i], NULL, 10)) < 1;
		else if (!strcmp(a, "--json") && i + 1 < argc)
			opt.json_path = argv[++i];
		else if (!strcmp(a, "--csv") && i + 1 < argc)
			opt.csv_path = argv[++i];
		else if (!strcmp(a, "--input"))
			while (i + 1 < argc && argv[i + 1][0] != '-')
				opt.inputs[opt.ninputs++] = argv[++i];
		else if (a[0] != '-' && !path)
			path = a;
		else
			bad = 1;
	}
	if (bad || !path || !opt.pipeline || opt.ninputs == 0) {
		free(opt.inputs);
		if (bad) {
			bt_cli_usage(&bt_cmd_bench, stderr);
			return BT_EXIT_USAGE;
		}
		return bt_cli_missing(&bt_cmd_bench, !path ? "CONFIG" : !opt.pipeline ? "--pipeline P"
											     : "--input FILE...");
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
	int code = bt_bench_run(&cfg, &opt);
	bt_config_release(&cfg);
	free(opt.inputs);
	return code;
}

const struct bt_cmd bt_cmd_bench = {
	"bench",
	"CONFIG --pipeline P --input FILE... [--concurrency N] [--duration S | --requests N] [--json F] [--csv F]",
	"measure a pipeline's throughput and latency with N requests in flight", run,
	"Runs the pipeline in-process (as run does, no HTTP), keeps N requests in\n"
	"flight cycling over the input files, and starts the clock once every stage has\n"
	"a replica ready.  Prints requests/s, end-to-end and per-stage p50/p95/p99/max,\n"
	"and failures by error code.\n"
	"\n"
	"options:\n"
	"  --pipeline P       the pipeline to measure (required)\n"
	"  --input FILE...    payload files, sent in turn (required)\n"
	"  --concurrency N    requests in flight (default 8)\n"
	"  --duration S       seconds of sending (default 10)\n"
	"  --requests N       send N requests instead of a duration\n"
	"  --json F           write the figures as JSON to F\n"
	"  --csv F            append one row per run to F\n"
	"\n"
	"exit status: 0, 1 if nothing succeeded, 2 on a usage or configuration error.\n"
	"\n"
	"examples:\n"
	"  baton bench examples/echo/baton.yaml --pipeline echo --input README.md --requests 200\n"};
