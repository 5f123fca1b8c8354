/*
 * Entry point: the command table.
 */
#include <signal.h>
#include <string.h>

#include "cli.h"

const struct bt_cmd *const bt_commands[] = {
	&bt_cmd_serve, &bt_cmd_check, &bt_cmd_run, &bt_cmd_env, &bt_cmd_bench, &bt_cmd_status, &bt_cmd_version, &bt_cmd_help, NULL,
};

void bt_cli_usage(const struct bt_cmd *cmd, FILE *f)
{
	fprintf(f, "usage: baton %s%s%s\n", cmd->name, cmd->usage[0] ? " " : "", cmd->usage);
}

void bt_cli_help(const struct bt_cmd *cmd, FILE *f)
{
	bt_cli_usage(cmd, f);
	fprintf(f, "\n%s\n", cmd->summary);
	if (cmd->page && cmd->page[0])
		fprintf(f, "\n%s", cmd->page);
}

int bt_cli_missing(const struct bt_cmd *cmd, const char *what)
{
	fprintf(stderr, "baton %s: missing %s\n", cmd->name, what);
	bt_cli_usage(cmd, stderr);
	fprintf(stderr, "(see 'baton %s --help')\n", cmd->name);
	return BT_EXIT_USAGE;
}

/* True when the usage line of cmd names option opt (a whole word). */
static int usage_names(const struct bt_cmd *cmd, const char *opt)
{
	size_t n = strlen(opt);
	for (const char *p = cmd->usage; (p = strstr(p, opt)); p += n)
		if ((p == cmd->usage || strchr(" [|", p[-1])) && strchr(" ]|", p[n] ? p[n] : ' '))
			return 1;
	return 0;
}

int bt_cli_bad_arg(const struct bt_cmd *cmd, int argc, char **argv, int i)
{
	const char *a = argv[i];
	if (a[0] == '-' && i + 1 == argc && usage_names(cmd, a))
		fprintf(stderr, "baton %s: option '%s' needs a value\n", cmd->name, a);
	else if (a[0] == '-' && a[1])
		fprintf(stderr, "baton %s: unknown option '%s'\n", cmd->name, a);
	else
		fprintf(stderr, "baton %s: unexpected argument '%s'\n", cmd->name, a);
	bt_cli_usage(cmd, stderr);
	fprintf(stderr, "(see 'baton %s --help')\n", cmd->name);
	return BT_EXIT_USAGE;
}

/* True when args (up to a "--") ask for help. */
static int asks_help(int argc, char **argv)
{
	for (int i = 0; i < argc && strcmp(argv[i], "--"); i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	/*
	 * serve, run and bench all write to workers that may die mid-write: that
	 * must be an EPIPE to handle, not a signal that ends baton.  (bt_process_spawn
	 * resets signal dispositions in children, so workers get the default back.)
	 */
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2) {
		bt_cmd_help.run(1, (char *[]){"help", NULL});
		return BT_EXIT_USAGE;
	}
	const char *name = argv[1];
	if (!strcmp(name, "--help") || !strcmp(name, "-h"))
		name = "help";
	if (!strcmp(name, "--version"))
		name = "version";
	for (int i = 0; bt_commands[i]; i++) {
		if (strcmp(bt_commands[i]->name, name))
			continue;
		if (asks_help(argc - 2, argv + 2)) {
			bt_cli_help(bt_commands[i], stdout);
			return BT_EXIT_OK;
		}
		return bt_commands[i]->run(argc - 1, argv + 1);
	}
	fprintf(stderr, "baton: unknown command '%s' (see 'baton help')\n", argv[1]);
	return BT_EXIT_USAGE;
}
