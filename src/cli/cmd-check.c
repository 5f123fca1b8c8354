/*
 * `baton check [--connect] CONFIG`: validate the file and print the
 * resolved plan; with --connect, also check the `run:` section against its
 * databases (the query has the key, the table the columns and index).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../config/config.h"
#include "../io/io.h"
#include "../scale/scale.h"
#include "cli.h"

/*
 * Warns about each stage whose replicas no declared GPU could hold even
 * idle (or that needs a GPU under `gpus: none`): they would stay pending.
 * With `gpus: auto` the GPUs are only known at run time, so nothing is said.
 */
static void warn_unplaceable(const struct bt_config *cfg, const char *path)
{
	if (cfg->gpus_mode == BT_GPUS_AUTO)
		return;
	int n = cfg->gpus_mode == BT_GPUS_LIST ? cfg->ngpus : 0;
	struct bt_gpu_slot *slots = bt_calloc((size_t)(n > 0 ? n : 1), sizeof(*slots));
	for (int i = 0; i < n; i++) {
		slots[i].id = cfg->gpus[i].id;
		slots[i].memory_mb = cfg->gpus[i].memory_mb;
	}
	for (int i = 0; i < cfg->nstages; i++) {
		const struct bt_stage_config *st = &cfg->stages[i];
		char reason[256];
		if (!(st->gpu_fraction > 0 || st->gpu_memory_mb > 0))
			continue;
		if (bt_place_gpu_when_idle(slots, n, st->gpu_fraction, st->gpu_memory_mb, reason,
					   sizeof(reason)) >= 0)
			continue;
		if (n == 0)
			snprintf(reason, sizeof(reason),
				 "it needs a GPU and the config says gpus: none");
		fprintf(stderr,
			"%s:%d:%d: warning: stage '%s' cannot be placed on any GPU (%s); its "
			"replicas would stay pending\n",
			path, st->line, st->col, st->name, reason);
	}
	free(slots);
}

static int run(int argc, char **argv)
{
	/* --connect: also reach the run: section's databases and check the query and table. */
	int connect = 0;
	const char *path = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--connect"))
			connect = 1;
		else if (argv[i][0] != '-' && !path)
			path = argv[i];
		else
			return bt_cli_bad_arg(&bt_cmd_check, argc, argv, i);
	}
	if (!path)
		return bt_cli_missing(&bt_cmd_check, "CONFIG");
	struct bt_config cfg;
	char err[1024];
	if (bt_config_load(path, &cfg, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		return BT_EXIT_USAGE;
	}
	/*
	 * As root, serve would refuse a stage user who cannot reach its files,
	 * so check does too.  (Not as another user: the config may be checked
	 * before it is deployed to run as root.)
	 */
	if (geteuid() == 0 && bt_config_check_users(&cfg, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		bt_config_release(&cfg);
		return BT_EXIT_USAGE;
	}
	bt_config_print_plan(&cfg, stdout);
	for (int i = 0; i < cfg.nstages; i++)
		if (cfg.stages[i].venv_missing)
			fprintf(stderr, "%s:%d:%d: warning: venv '%s' of stage '%s' does not exist yet\n",
				path, cfg.stages[i].line, cfg.stages[i].col, cfg.stages[i].venv,
				cfg.stages[i].name);
	warn_unplaceable(&cfg, path);
	for (int i = 0; i < cfg.nstages; i++) {
		const struct bt_stage_config *st = &cfg.stages[i];
		/* Requests waiting for their batch to fill count against queue_max. */
		if (st->batch_max_size > 1 && st->queue_max < (size_t)st->batch_max_size)
			fprintf(stderr,
				"%s:%d:%d: warning: stage '%s' has queue_max %zu below batch.max_size "
				"%d: its batches can never fill, and requests beyond %zu waiting get "
				"503\n",
				path, st->line, st->col, st->name, st->queue_max, st->batch_max_size,
				st->queue_max);
	}
	for (int i = 0; i < cfg.nstages; i++) {
		const struct bt_stage_config *st = &cfg.stages[i];
		int used = st->source;
		for (int j = 0; j < cfg.npipelines && !used; j++)
			for (int k = 0; k < cfg.pipelines[j].nstages && !used; k++)
				used = cfg.pipelines[j].stages[k] == i;
		/* Its replicas would start (and hold their models) for nothing. */
		if (!used)
			fprintf(stderr,
				"%s:%d:%d: warning: stage '%s' is in no pipeline or stream: its "
				"replicas would start and never get a request\n",
				path, st->line, st->col, st->name);
	}
	if (cfg.run.present) {
		const struct bt_run_config *rc = &cfg.run;
		printf("\nrun %s: postgresql query by key '%s', pages of %d rows, one request per %s\n"
		       "  -> postgresql table '%s' (upsert on ",
		       rc->pipeline ? rc->pipeline : "(--pipeline)", rc->src_key, rc->page_rows,
		       rc->unit == BT_RUN_ROW ? "row" : "page", rc->sink_table);
		for (int i = 0; i < rc->nsink_key; i++)
			printf("%s%s", i ? ", " : "", rc->sink_key[i]);
		printf("), checkpoint '%s' in %s, failures in %s\n", rc->checkpoint_name,
		       rc->checkpoint_table, rc->failures_table);
	}
	if (connect && cfg.run.present) {
		struct bt_pg_sink_plan plan;
		if (bt_pg_check(&cfg, 0, &plan, err, sizeof(err))) {
			fprintf(stderr, "%s\n", err);
			bt_config_release(&cfg);
			return BT_EXIT_USAGE;
		}
		printf("\nrun: source key '%s', sink %s:", cfg.run.src_key, plan.table);
		for (int i = 0; i < plan.ncols; i++)
			printf(" %s %s <- %s%s", plan.cols[i].name, plan.cols[i].type,
			       plan.has_jsonb && i == plan.ncols - 1 ? "(the whole result)"
								      : plan.cols[i].field,
			       i + 1 < plan.ncols ? "," : "\n");
		bt_pg_sink_plan_release(&plan);
	} else if (connect) {
		fprintf(stderr, "%s: warning: --connect: no 'run:' section, nothing to connect to\n",
			path);
	}
	printf("\nok\n");
	bt_config_release(&cfg);
	return BT_EXIT_OK;
}

const struct bt_cmd bt_cmd_check = {
	"check", "[--connect] CONFIG",
	"validate a config file and print the resolved plan (--connect: reach the run: databases)",
	run,
	"Loads CONFIG as serve would, without starting anything, and prints each stage's\n"
	"absolute argv, workdir, environment changes and policies, then the pipelines.\n"
	"Errors name FILE:LINE:COL and the key.  Warnings (on stderr) cover venvs that\n"
	"do not exist yet, stages no declared GPU could hold, queue_max below\n"
	"batch.max_size, and stages that no pipeline or stream uses.\n"
	"\n"
	"options:\n"
	"  --connect  also connect to the run: section's databases: the query runs and\n"
	"             has the key column, the sink table has the mapped columns and a\n"
	"             unique index on the key\n"
	"  CONFIG     the YAML file (see baton.yaml(5) or docs/config.md)\n"
	"\n"
	"exit status: 0 when the file is valid, 2 with FILE:LINE:COL: message if not.\n"
	"\n"
	"examples:\n"
	"  baton check examples/echo/baton.yaml\n"};
