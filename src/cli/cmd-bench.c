/*
 * `baton bench CONFIG --pipeline P --input FILE...`: a pipeline's capacity,
 * in process; with --scenarios, a series of runs over HTTP (loadgen.c).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "../config/config.h"
#include "../jobs/jobs.h"
#include "cli.h"

static int read_token(const char *path, char *token, size_t size)
{
	FILE *f = fopen(path, "r");
	if (!f || !fgets(token, (int)size, f)) {
		fprintf(stderr, "baton bench: cannot read the token file '%s'\n", path);
		if (f)
			fclose(f);
		return -1;
	}
	fclose(f);
	size_t n = strcspn(token, "\r\n");
	while (n && (token[n - 1] == ' ' || token[n - 1] == '\t'))
		n--;
	token[n] = '\0';
	return 0;
}

static int read_payload(const char *path, struct bt_scenario_set *set)
{
	char *data;
	size_t len;
	int r = bt_read_file_at(AT_FDCWD, path, 0, 256u << 20, &data, &len, NULL);
	if (r) {
		fprintf(stderr, "baton bench: cannot read input '%s': %s\n", path,
			r == BT_ETOOBIG ? "over 256 MiB" : strerror(-r));
		return -1;
	}
	bt_scenario_set_add_payload(set, data, len);
	return 0;
}

/* --scenarios FILE|standard [--url URL] [--out PREFIX] */
static int run_scenarios(const char *path, const char *scenarios, const struct bt_bench_options *b,
			 const char *url, const char *out, const char *token_file, double warmup,
			 int duration_set, int warmup_set)
{
	struct bt_config cfg;
	struct bt_scenario_set set;
	char err[1024], token[512] = "";
	int have_cfg = 0, code;
	if (token_file && read_token(token_file, token, sizeof(token)))
		return BT_EXIT_USAGE;
	if (path) {
		if (bt_config_load(path, &cfg, err, sizeof(err)) ||
		    (!url && bt_config_check_runnable(&cfg, err, sizeof(err)))) {
			fprintf(stderr, "%s\n", err);
			if (cfg.path)
				bt_config_release(&cfg);
			return BT_EXIT_USAGE;
		}
		have_cfg = 1;
	}
	if (!strcmp(scenarios, "standard")) {
		const char *pipeline = b->pipeline;
		if (!pipeline && have_cfg && cfg.npipelines == 1)
			pipeline = cfg.pipelines[0].name;
		memset(&set, 0, sizeof(set));
		code = BT_EXIT_USAGE;
		if (!pipeline || b->ninputs == 0) {
			fprintf(stderr, "baton bench: the standard suite needs --pipeline P (unless the "
					"config has one) and --input FILE...\n");
			goto out;
		}
		bt_scenarios_standard(&set, pipeline, duration_set ? b->seconds : 10, warmup);
	} else if (bt_scenarios_load(scenarios, &set, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		code = BT_EXIT_USAGE;
		goto out;
	}
	/* What the command line says wins over the file, in every scenario. */
	for (int i = 0; i < set.n; i++) {
		if (duration_set)
			set.s[i].duration_s = b->seconds;
		if (warmup_set)
			set.s[i].warmup_s = warmup;
	}
	for (int i = 0; i < b->ninputs; i++)
		if (read_payload(b->inputs[i], &set)) {
			code = BT_EXIT_USAGE;
			goto out;
		}
	/* A daemon forked from the config asks for the config's own token. */
	if (!token[0] && !url && have_cfg && cfg.auth_token)
		snprintf(token, sizeof(token), "%s", cfg.auth_token);
	struct bt_scenario_options opt = {url, token[0] ? token : NULL, out ? out : "baton-bench",
					  strcmp(scenarios, "standard") ? scenarios : NULL};
	code = bt_scenarios_run(have_cfg ? &cfg : NULL, &set, &opt) ? BT_EXIT_FAIL : BT_EXIT_OK;
out:
	bt_scenarios_release(&set);
	if (have_cfg)
		bt_config_release(&cfg);
	return code;
}

static int run(int argc, char **argv)
{
	const char *scenarios = NULL, *url = NULL, *out = NULL, *token_file = NULL;
	double warmup = 2;
	int duration_set = 0, warmup_set = 0;
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
			bad = (int)(opt.seconds = (unsigned)atoi(argv[++i])) < 1, duration_set = 1;
		else if (!strcmp(a, "--warmup") && i + 1 < argc)
			bad = (warmup = atof(argv[++i])) < 0, warmup_set = 1;
		else if (!strcmp(a, "--scenarios") && i + 1 < argc)
			scenarios = argv[++i];
		else if (!strcmp(a, "--url") && i + 1 < argc)
			url = argv[++i];
		else if (!strcmp(a, "--out") && i + 1 < argc)
			out = argv[++i];
		else if (!strcmp(a, "--token-file") && i + 1 < argc)
			token_file = argv[++i];
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
		else {
			free(opt.inputs);
			return bt_cli_bad_arg(&bt_cmd_bench, argc, argv, i);
		}
		if (bad) {
			fprintf(stderr, "baton bench: bad value '%s' for %s (see 'baton bench --help')\n",
				argv[i], a);
			free(opt.inputs);
			return BT_EXIT_USAGE;
		}
	}
	if (!bad && scenarios && (path || url)) {
		int code = run_scenarios(path, scenarios, &opt, url, out, token_file, warmup,
					 duration_set, warmup_set);
		free(opt.inputs);
		return code;
	}
	if (bad || !path || !opt.pipeline || opt.ninputs == 0 || url || out) {
		free(opt.inputs);
		if (url || out) {
			fprintf(stderr, "baton bench: %s is only for --scenarios\n", url ? "--url" : "--out");
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
	"CONFIG --pipeline P --input FILE... [--concurrency N] [--duration S | --requests N] "
	"[--json F] [--csv F]\n"
	"       baton bench [CONFIG] --scenarios FILE|standard [--url URL] [--out PREFIX] "
	"[--pipeline P] [--input FILE...] [--duration S] [--warmup S] [--token-file F]",
	"measure a pipeline's throughput and latency, in process or over HTTP by scenarios", run,
	"Runs the pipeline in-process (as run does, no HTTP), keeps N requests in\n"
	"flight cycling over the input files, and starts the clock once every stage has\n"
	"a replica ready.  Prints requests/s, end-to-end and per-stage p50/p95/p99/max,\n"
	"and failures by error code.\n"
	"\n"
	"With --scenarios FILE (or the built-in 'standard' 1/2/4/6/8 replica sweep) it\n"
	"measures over HTTP instead, each scenario against a daemon forked from CONFIG\n"
	"or, with --url, a running one (replicas set through its scale API), closed or\n"
	"open loop (latency from the scheduled send time), into PREFIX.json, .csv and\n"
	"an .svg chart (docs/benchmarks.md, baton bench --scenarios).\n"
	"\n"
	"options:\n"
	"  --pipeline P       the pipeline to measure (required; with --scenarios only\n"
	"                     for 'standard': a FILE names its own)\n"
	"  --input FILE...    payload files, sent in turn (required)\n"
	"  --concurrency N    requests in flight (default 8; a scenario FILE sets its own)\n"
	"  --duration S       seconds of sending (default 10); with --scenarios, the\n"
	"                     measured window of every scenario, over the FILE's\n"
	"  --requests N       send N requests instead of a duration\n"
	"  --json F           write the figures as JSON to F\n"
	"  --csv F            append one row per run to F\n"
	"  --scenarios FILE   run the scenarios of FILE, or 'standard'\n"
	"  --url URL          with --scenarios: a running daemon instead of CONFIG\n"
	"  --out PREFIX       with --scenarios: output files (default baton-bench)\n"
	"  --warmup S         with --scenarios: seconds before measuring (default 2),\n"
	"                     in every scenario, over the FILE's\n"
	"  --token-file F     with --url: bearer token\n"
	"\n"
	"exit status: 0, 1 if nothing succeeded, 2 on a usage or configuration error.\n"
	"\n"
	"examples:\n"
	"  baton bench examples/echo/baton.yaml --pipeline echo --input README.md --requests 200\n"
	"  baton bench examples/echo/baton.yaml --scenarios bench/scenarios/example.yaml --out /tmp/echo\n"};
