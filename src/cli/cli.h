/*
 * The command line (DESIGN §8, contract): one file per command, each
 * described by a table entry.  Exit codes: 0 success, 1 the work failed,
 * 2 usage or configuration error.
 */
#ifndef BT_CLI_H
#define BT_CLI_H

#include <stdio.h>

enum { BT_EXIT_OK = 0, BT_EXIT_FAIL = 1, BT_EXIT_USAGE = 2 };

struct bt_cmd {
	const char *name;
	const char *usage; /* arguments after the command name */
	const char *summary; /* one line for `baton help` */
	int (*run)(int argc, char **argv); /* argv[0] is the command name */
	/*
	 * The page of `baton COMMAND --help` and of baton(1): paragraphs, then
	 * "options:" and "examples:" sections whose lines start with two spaces.
	 */
	const char *page;
};

extern const struct bt_cmd bt_cmd_serve;
extern const struct bt_cmd bt_cmd_check;
extern const struct bt_cmd bt_cmd_run;
extern const struct bt_cmd bt_cmd_env;
extern const struct bt_cmd bt_cmd_bench;
extern const struct bt_cmd bt_cmd_status;
extern const struct bt_cmd bt_cmd_version;
extern const struct bt_cmd bt_cmd_help;

/* Every command, NULL-terminated, in the order `baton help` shows them. */
extern const struct bt_cmd *const bt_commands[];

/* Prints "usage: baton NAME USAGE" to f. */
void bt_cli_usage(const struct bt_cmd *cmd, FILE *f);

/* Prints the usage, the summary and the page of cmd to f. */
void bt_cli_help(const struct bt_cmd *cmd, FILE *f);

/* Prints "baton NAME: missing WHAT" and the usage to stderr; returns BT_EXIT_USAGE. */
int bt_cli_missing(const struct bt_cmd *cmd, const char *what);

/*
 * For argv[i], an argument cmd could not take: prints what is wrong with it
 * ("unknown option", "needs a value" for an option of cmd's usage given
 * last, "unexpected argument") and the usage to stderr; returns
 * BT_EXIT_USAGE.
 */
int bt_cli_bad_arg(const struct bt_cmd *cmd, int argc, char **argv, int i);

#endif
