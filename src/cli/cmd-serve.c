/* `baton serve CONFIG`: run the daemon until SIGTERM or SIGINT. */
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config/config.h"
#include "../daemon/daemon.h"
#include "../notify/notify.h"
#include "../proc/proc.h"
#include "cli.h"

/*
 * What serve tells systemd (Type=notify): READY=1 once every stage has
 * had its initial replicas ready, a STATUS= line whenever the stages'
 * picture changes, WATCHDOG=1 from a timer of the loop (so a stuck loop
 * stops the pings), STOPPING=1 when the drain begins.
 */
struct notifier {
	struct bt_notify n;
	struct bt_daemon *d;
	uv_timer_t timer; /* unref'd: it never keeps the loop alive */
	int ready_sent, stopping_sent;
	char status[1100]; /* the last STATUS= sent */
};

/*
 * "upper 2/2 ready, rev 0/1 ready (backoff)": each stage's ready replicas.
 * Returns whether every stage has as many ready as it starts with.
 */
static int stage_summary(const struct bt_daemon *d, char *out, size_t size)
{
	size_t o = 0;
	int all = 1;
	out[0] = '\0';
	for (int i = 0; i < d->nstages && o < size; i++) {
		const struct bt_stage *st = &d->stages[i];
		int ready = 0, active = 0, backoff = 0;
		for (int r = 0; r < st->nreplicas; r++) {
			if (!st->replicas[r]->active)
				continue;
			active++;
			ready += st->replicas[r]->state == BT_REPLICA_READY;
			backoff += st->replicas[r]->state == BT_REPLICA_BACKOFF;
		}
		o += (size_t)snprintf(out + o, size - o, "%s%s %d/%d ready%s", i ? ", " : "",
				      st->cfg->name, ready, active,
				      st->failed ? " (failed)" : backoff ? " (backoff)" : "");
		if (st->failed || ready < BT_MIN(st->cfg->replicas_initial, active))
			all = 0;
	}
	return all;
}

static void notify_update(struct notifier *nt)
{
	struct bt_daemon *d = nt->d;
	char text[1100], stages[900];
	/* Ready once, when every stage has its initial replicas: a restart later is not "starting". */
	int up = stage_summary(d, stages, sizeof(stages)) && bt_daemon_ready(d);
	if (d->state == BT_DAEMON_RUNNING)
		snprintf(text, sizeof(text), "STATUS=%s: %s",
			 nt->ready_sent ? (bt_daemon_ready(d) ? "serving" : "not ready")
					: (up ? "serving" : "starting"),
			 stages);
	else
		snprintf(text, sizeof(text), "STATUS=stopping: %llu in flight",
			 (unsigned long long)d->in_flight);
	if (d->state != BT_DAEMON_RUNNING && !nt->stopping_sent) {
		nt->stopping_sent = 1;
		bt_notify_send(&nt->n, "STOPPING=1");
	}
	if (strcmp(text, nt->status)) {
		snprintf(nt->status, sizeof(nt->status), "%s", text);
		bt_notify_send(&nt->n, text);
	}
	if (!nt->ready_sent && up && d->state == BT_DAEMON_RUNNING) {
		nt->ready_sent = 1;
		bt_notify_send(&nt->n, "READY=1");
		bt_info("notified systemd: ready", "status=\"%s\"", text + 7);
	}
}

/*
 * After each loop turn, for a prompt READY=1 and STOPPING=1; once ready and
 * while running, the timer's pace is enough for STATUS= (a busy loop turns
 * thousands of times a second).
 */
static void notify_idle(struct bt_daemon *d, void *arg)
{
	struct notifier *nt = arg;
	if (!nt->ready_sent || d->state != BT_DAEMON_RUNNING)
		notify_update(nt);
}

static void notify_timer_cb(uv_timer_t *t)
{
	struct notifier *nt = t->data;
	if (nt->n.watchdog_usec)
		bt_notify_send(&nt->n, "WATCHDOG=1");
	if (nt->d->state < BT_DAEMON_CLOSING)
		notify_update(nt);
}

static int run(int argc, char **argv)
{
	const char *path = NULL, *listen = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--listen") && i + 1 < argc)
			listen = argv[++i];
		else if (argv[i][0] != '-' && !path)
			path = argv[i];
		else
			return bt_cli_bad_arg(&bt_cmd_serve, argc, argv, i);
	}
	if (!path)
		return bt_cli_missing(&bt_cmd_serve, "CONFIG");
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
	/*
	 * Blocks up to 32 MiB come from the heap, and a free() never gives its
	 * memory back: the next large payload reuses it with no page fault.
	 * The daemon's tick gives freed memory back once it rests
	 * (give_back_memory in daemon/tick.c). A mapping per large block (a
	 * 1 MiB threshold, tried before) cost a fault per 4 KiB of every
	 * payload: 4,700 for a 6 MB one through one stage.
	 */
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	mallopt(M_TRIM_THRESHOLD, INT_MAX);

	uv_loop_t loop;
	struct bt_daemon d;
	struct notifier nt;
	int code = BT_EXIT_OK;
	memset(&nt, 0, sizeof(nt));
	int ne = bt_notify_init(&nt.n);
	if (ne)
		bt_warn("cannot use NOTIFY_SOCKET", "error=\"%s\"", strerror(-ne));
	uv_loop_init(&loop);
	bt_daemon_init(&d, &loop, &cfg);
	nt.d = &d;
	if (nt.n.fd >= 0) {
		d.on_idle = notify_idle;
		d.on_idle_arg = &nt;
		/* Twice per watchdog period, as systemd advises; else for STATUS= alone. */
		uint64_t every = nt.n.watchdog_usec ? BT_MAX(nt.n.watchdog_usec / 2000, 1) : 1000;
		uv_timer_init(&loop, &nt.timer);
		nt.timer.data = &nt;
		uv_timer_start(&nt.timer, notify_timer_cb, every, every);
		uv_unref((uv_handle_t *)&nt.timer);
	}
	if (bt_daemon_start(&d, err, sizeof(err))) {
		bt_error("cannot start", "error=%s", BT_LOGQ(err));
		code = BT_EXIT_FAIL;
		bt_daemon_shutdown(&d);
		d.hard_stop = 1;
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	if (nt.n.fd >= 0) {
		uv_close((uv_handle_t *)&nt.timer, NULL);
		uv_run(&loop, UV_RUN_NOWAIT);
	}
	bt_notify_release(&nt.n);
	bt_daemon_release(&d);
	if (uv_loop_close(&loop))
		bt_error("loop closed with handles still open", "%s", "");
	bt_config_release(&cfg);
	return code;
}

const struct bt_cmd bt_cmd_serve = {
	"serve", "CONFIG [--listen HOST:PORT]", "run the pipelines of CONFIG and serve them over HTTP and gRPC (SIGHUP reloads CONFIG)",
	run,
	"Starts every stage's replicas, supervises them (restarts with backoff) and\n"
	"answers HTTP until SIGTERM or SIGINT, then drains: requests in flight finish,\n"
	"new ones get 503.  SIGHUP reloads CONFIG (docs/operations.md).  With\n"
	"streams:, it also runs the stations and their sessions (docs/streams.md);\n"
	"each station finishes its open session first.\n"
	"With grpc: {listen: HOST:PORT} it also serves the KServe v2 gRPC service\n"
	"(inference.GRPCInferenceService, docs/grpc.md) on that address.\n"
	"With queue: {backend: redis, url: redis://HOST:PORT/DB, namespace: NAME} its\n"
	"stages' queues are Redis streams that every node of the same namespace\n"
	"serves (docs/scaleout.md); a node started while Redis is unreachable exits 1.\n"
	"Logs go to stderr, one logfmt line per event.  Under\n"
	"systemd (Type=notify) it reports READY=1 once every stage has its initial\n"
	"replicas ready, STATUS= lines, and WATCHDOG=1 when WatchdogSec is set.\n"
	"\n"
	"options:\n"
	"  CONFIG              the YAML file (see baton.yaml(5) or docs/config.md)\n"
	"  --listen HOST:PORT  overrides the file's listen: (default 127.0.0.1:8080);\n"
	"                      port 0 picks a free port, logged at start\n"
	"\n"
	"exit status: 0 after a clean stop, 1 if it could not start (port in use),\n"
	"2 on a usage or configuration error.\n"
	"\n"
	"examples:\n"
	"  baton serve examples/echo/baton.yaml\n"
	"  baton serve examples/echo/baton.yaml --listen 127.0.0.1:9000\n"};
