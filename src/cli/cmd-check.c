/* `baton check CONFIG`: validate the file and print the resolved plan. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "../config/config.h"
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
	if (argc < 2)
		return bt_cli_missing(&bt_cmd_check, "CONFIG");
	if (argc != 2 || argv[1][0] == '-') {
		bt_cli_usage(&bt_cmd_check, stderr);
		return BT_EXIT_USAGE;
	}
	struct bt_config cfg;
	char err[1024];
	if (bt_config_load(argv[1], &cfg, err, sizeof(err))) {
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
				argv[1], cfg.stages[i].line, cfg.stages[i].col, cfg.stages[i].venv,
				cfg.stages[i].name);
	warn_unplaceable(&cfg, argv[1]);
	for (int i = 0; i < cfg.nstages; i++) {
		const struct bt_stage_config *st = &cfg.stages[i];
		/* Requests waiting for their batch to fill count against queue_max. */
		if (st->batch_max_size > 1 && st->queue_max < (size_t)st->batch_max_size)
			fprintf(stderr,
				"%s:%d:%d: warning: stage '%s' has queue_max %zu below batch.max_size "
				"%d: its batches can never fill, and requests beyond %zu waiting get "
				"503\n",
				argv[1], st->line, st->col, st->name, st->queue_max, st->batch_max_size,
				st->queue_max);
	}
	printf("\nok\n");
	bt_config_release(&cfg);
	return BT_EXIT_OK;
}

const struct bt_cmd bt_cmd_check = {
	"check", "CONFIG", "validate a config file and print the resolved plan", run,
	"Loads CONFIG as serve would, without starting anything, and prints each stage's\n"
	"absolute argv, workdir, environment changes and policies, then the pipelines.\n"
	"Errors name FILE:LINE:COL and the key.  Warnings (on stderr) cover venvs that\n"
	"do not exist yet, stages no declared GPU could hold, and queue_max below\n"
	"batch.max_size.\n"
	"\n"
	"options:\n"
	"  CONFIG  the YAML file (see baton.yaml(5) or docs/config.md)\n"
	"\n"
	"exit status: 0 when the file is valid, 2 with FILE:LINE:COL: message if not.\n"
	"\n"
	"examples:\n"
	"  baton check examples/echo/baton.yaml\n"};
