/* `baton version`: the version and the protocol it speaks. */
#include <stdio.h>

#include "../proto/proto.h"
#include "cli.h"

#ifndef BATON_VERSION
#define BATON_VERSION "0.0.0"
#endif

static int run(int argc, char **argv)
{
	(void)argv;
	if (argc > 1) {
		bt_cli_usage(&bt_cmd_version, stderr);
		return BT_EXIT_USAGE;
	}
	printf("baton %s (worker protocol %d)\n", BATON_VERSION, BT_PROTO_VERSION);
	return BT_EXIT_OK;
}

const struct bt_cmd bt_cmd_version = {
	"version", "", "print the version", run,
	"Prints baton's version and the worker protocol version it speaks.\n"
	"\n"
	"examples:\n"
	"  baton version\n"};
