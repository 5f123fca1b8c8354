/* `baton check CONFIG`: validate the file and print the resolved plan. */
#include <stdio.h>

#include "../config/config.h"
#include "cli.h"

static int run(int argc, char **argv)
{
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
	bt_config_print_plan(&cfg, stdout);
	for (int i = 0; i < cfg.nstages; i++)
		if (cfg.stages[i].venv_missing)
			fprintf(stderr, "%s:%d:%d: warning: venv '%s' of stage '%s' does not exist yet\n",
				argv[1], cfg.stages[i].line, cfg.stages[i].col, cfg.stages[i].venv,
				cfg.stages[i].name);
	printf("\nok\n");
	bt_config_release(&cfg);
	return BT_EXIT_OK;
}

const struct bt_cmd bt_cmd_check = {"check", "CONFIG",
				    "validate a config file and print the resolved plan", run};
