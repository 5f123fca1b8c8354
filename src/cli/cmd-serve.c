/* `baton serve CONFIG`: run the daemon until SIGTERM or SIGINT. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config/config.h"
#include "../daemon/daemon.h"
#include "cli.h"

static int run(int argc, char **argv)
{
	const char *path = NULL, *listen = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--listen") && i + 1 < argc)
			listen = argv[++i];
		else if (argv[i][0] != '-' && !path)
			path = argv[i];
		else
			path = NULL, i = argc;
	}
	if (!path) {
		bt_cli_usage(&bt_cmd_serve, stderr);
		return BT_EXIT_USAGE;
	}
	struct bt_config cfg;
	char err[1024];
	if (bt_config_load(path, &cfg, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		return BT_EXIT_USAGE;
	}
	if (listen) {
		char *host, why[256];
		int port;
		if (bt_listen_parse(listen, &host, &port, why, sizeof(why))) {
			fprintf(stderr, "baton: --listen %s\n", why);
			bt_config_release(&cfg);
			return BT_EXIT_USAGE;
		}
		free(cfg.listen_host);
		cfg.listen_host = host;
		cfg.listen_port = port;
	}
	if (bt_config_check_runnable(&cfg, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		bt_config_release(&cfg);
		return BT_EXIT_USAGE;
	}
	bt_log_threshold = cfg.log_level;

	uv_loop_t loop;
	struct bt_daemon d;
	int code = BT_EXIT_OK;
	uv_loop_init(&loop);
	if (bt_daemon_init(&d, &loop, &cfg, err, sizeof(err))) {
		fprintf(stderr, "baton: %s\n", err);
		return BT_EXIT_FAIL;
	}
	if (bt_daemon_start(&d, err, sizeof(err))) {
		bt_error("cannot start", "error=\"%s\"", err);
		code = BT_EXIT_FAIL;
		bt_daemon_shutdown(&d);
		d.hard_stop = 1;
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	bt_daemon_release(&d);
	if (uv_loop_close(&loop))
		bt_error("loop closed with handles still open", "%s", "");
	bt_config_release(&cfg);
	return code;
}

const struct bt_cmd bt_cmd_serve = {"serve", "CONFIG [--listen HOST:PORT]",
				    "run the pipelines of CONFIG and serve them over HTTP (SIGHUP reloads CONFIG)", run};
