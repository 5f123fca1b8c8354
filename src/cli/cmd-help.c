/* `baton help [COMMAND]`: the commands and where to read more. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"

#include "cli.h"

/* Text as roff: a leading '.' or '\'' would be a request, a backslash an escape. */
static void roff_line(const char *s)
{
	if (s[0] == '.' || s[0] == '\'')
		fputs("\\&", stdout);
	for (; *s; s++) {
		if (*s == '\\')
			fputs("\\e", stdout);
		else if (*s == '-')
			fputs("\\-", stdout);
		else
			putchar(*s);
	}
	putchar('\n');
}

/*
 * baton(1) from the command table, so the man page and `--help` cannot
 * drift apart.  Pages are shown as written (no fill), section by section.
 */
static void print_man(void)
{
	printf(".TH BATON 1 \"\" \"baton\" \"User Commands\"\n"
	       ".SH NAME\nbaton \\- run multi-stage ML pipelines of isolated, persistent, supervised workers\n"
	       ".SH SYNOPSIS\n");
	for (int i = 0; bt_commands[i]; i++) {
		printf(".B baton %s\n", bt_commands[i]->name);
		if (bt_commands[i]->usage[0])
			roff_line(bt_commands[i]->usage);
		printf(".br\n");
	}
	printf(".SH DESCRIPTION\n"
	       "baton starts the stages of a YAML configuration as worker processes, each in its\n"
	       "own environment, keeps them warm and supervised, and routes requests through\n"
	       "them over HTTP or from files.  The configuration is described in\n"
	       ".BR baton.yaml (5).\n"
	       ".SH COMMANDS\n");
	for (int i = 0; bt_commands[i]; i++) {
		const struct bt_cmd *c = bt_commands[i];
		printf(".SS baton %s\n", c->name);
		roff_line(c->summary);
		printf(".PP\n.nf\n");
		char *page = bt_strdup(c->page ? c->page : "");
		for (char *line = page, *nl; line && *line; line = nl) {
			nl = strchr(line, '\n');
			if (nl)
				*nl++ = '\0';
			roff_line(line);
		}
		free(page);
		printf(".fi\n");
	}
	printf(".SH EXIT STATUS\n0 success, 1 the work failed, 2 usage or configuration error.\n"
	       ".SH ENVIRONMENT\n.TP\n.B BATON_URL\ndefault \\-\\-url of baton status\n"
	       ".TP\n.B BATON_TOKEN_FILE\ndefault \\-\\-token\\-file of baton status\n"
	       ".SH SEE ALSO\n.BR baton.yaml (5),\n.BR systemd.service (5)\n");
}

static int run(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "--man")) {
		print_man();
		return BT_EXIT_OK;
	}
	if (argc > 1) {
		for (int i = 0; bt_commands[i]; i++) {
			if (!strcmp(bt_commands[i]->name, argv[1])) {
				bt_cli_help(bt_commands[i], stdout);
				return BT_EXIT_OK;
			}
		}
		fprintf(stderr, "baton: unknown command '%s' (see 'baton help')\n", argv[1]);
		return BT_EXIT_USAGE;
	}
	printf("baton runs multi-stage ML pipelines of isolated, persistent, supervised workers.\n\n"
	       "usage: baton COMMAND [ARGS]\n\ncommands:\n");
	/* Usage on its own line, the summary under it: usages are too long for columns. */
	for (int i = 0; bt_commands[i]; i++)
		printf("  %s%s%s\n      %s\n", bt_commands[i]->name, bt_commands[i]->usage[0] ? " " : "",
		       bt_commands[i]->usage, bt_commands[i]->summary);
	printf("\n'baton COMMAND --help' shows a command's options, defaults and examples.\n"
	       "exit codes: 0 success, 1 the work failed, 2 usage or configuration error\n"
	       "docs: baton.yaml(5) or docs/config.md (the YAML file), docs/protocol.md\n"
	       "      (writing a worker), docs/operations.md (HTTP API, signals, logs)\n");
	return BT_EXIT_OK;
}

const struct bt_cmd bt_cmd_help = {
	"help", "[COMMAND | --man]", "show this help, or a command's page", run,
	"Without arguments, lists the commands.  With a command, prints its page (the\n"
	"same as 'baton COMMAND --help').\n"
	"\n"
	"options:\n"
	"  COMMAND   print that command's page\n"
	"  --man     print baton(1) in roff, made from these pages\n"
	"\n"
	"examples:\n"
	"  baton help run\n"
	"  baton run --help\n"};
