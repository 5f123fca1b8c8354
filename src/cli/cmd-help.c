/* `baton help [COMMAND]`: the commands and where to read more. */
#include <string.h>

#include "cli.h"

static int run(int argc, char **argv)
{
	if (argc > 1) {
		for (int i = 0; bt_commands[i]; i++) {
			if (!strcmp(bt_commands[i]->name, argv[1])) {
				bt_cli_usage(bt_commands[i], stdout);
				printf("  %s\n", bt_commands[i]->summary);
				return BT_EXIT_OK;
			}
		}
		fprintf(stderr, "baton: unknown command '%s'\n", argv[1]);
		return BT_EXIT_USAGE;
	}
	printf("baton runs multi-stage ML pipelines of isolated, persistent, supervised workers.\n\n"
	       "usage: baton COMMAND [ARGS]\n\ncommands:\n");
	/* Usage on its own line, the summary under it: usages are too long for columns. */
	for (int i = 0; bt_commands[i]; i++)
		printf("  %s%s%s\n      %s\n", bt_commands[i]->name, bt_commands[i]->usage[0] ? " " : "",
		       bt_commands[i]->usage, bt_commands[i]->summary);
	printf("\nexit codes: 0 success, 1 the work failed, 2 usage or configuration error\n"
	       "docs: docs/config.md (the YAML file), docs/protocol.md (writing a worker),\n"
	       "      docs/operations.md (HTTP API, signals, logs)\n");
	return BT_EXIT_OK;
}

const struct bt_cmd bt_cmd_help = {"help", "[COMMAND]", "show this help", run};
