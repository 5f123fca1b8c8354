/*
 * `baton status [--url URL]`: the daemon's /v1/status as a terminal table;
 * with --watch, redrawn in place every interval, like top.
 */
#include <jansson.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/common.h"
#include "cli.h"
#include "client.h"

/* Stations, their open sessions and the last results of each stream. */
/* The nodes sharing queues in Redis (docs/scaleout.md), when there are any. */
static void print_cluster(json_t *cl)
{
	if (!cl)
		return;
	json_t *rq = json_object_get(cl, "requests");
	printf("\nCLUSTER %s via %s: this node %s, %s; %lld waiting, %lld duplicates and %lld outcomes dropped\n",
	       json_string_value(json_object_get(cl, "namespace")),
	       json_string_value(json_object_get(cl, "url")),
	       json_string_value(json_object_get(cl, "node")),
	       json_is_true(json_object_get(cl, "connected")) ? "connected" : "NOT CONNECTED",
	       json_integer_value(json_object_get(rq, "waiting")),
	       json_integer_value(json_object_get(rq, "duplicates_dropped")),
	       json_integer_value(json_object_get(rq, "outcomes_dropped")));
	if (json_is_string(json_object_get(cl, "error")))
		printf("  %s\n", json_string_value(json_object_get(cl, "error")));
	const char *name;
	json_t *q, *n;
	size_t i;
	printf("%-16s %8s %8s %8s %8s\n", "SHARED QUEUE", "DEPTH", "HELD", "TAKEN", "CLAIMED");
	json_object_foreach(json_object_get(cl, "queues"), name, q) {
		json_t *depth = json_object_get(q, "depth");
		char ds[24] = "?";
		if (json_is_integer(depth))
			snprintf(ds, sizeof(ds), "%lld", json_integer_value(depth));
		printf("%-16s %8s %8lld %8lld %8lld\n", name, ds,
		       json_integer_value(json_object_get(q, "held")),
		       json_integer_value(json_object_get(q, "taken")),
		       json_integer_value(json_object_get(q, "claimed")));
	}
	printf("%-28s %-22s %7s  %s\n", "NODE", "HTTP", "PID", "STAGES (ready/replicas, running)");
	json_array_foreach(json_object_get(cl, "nodes"), i, n) {
		char http[64];
		snprintf(http, sizeof(http), "%s:%lld", json_string_value(json_object_get(n, "host")),
			 json_integer_value(json_object_get(n, "port")));
		printf("%-28s %-22s %7lld ", json_string_value(json_object_get(n, "id")), http,
		       json_integer_value(json_object_get(n, "pid")));
		const char *sn;
		json_t *s;
		json_object_foreach(json_object_get(n, "stages"), sn, s)
			printf(" %s %lld/%lld, %lld", sn, json_integer_value(json_object_get(s, "ready")),
			       json_integer_value(json_object_get(s, "replicas")),
			       json_integer_value(json_object_get(s, "running")));
		printf("%s\n", json_is_true(json_object_get(n, "draining")) ? "  (draining)" : "");
	}
}

static void print_streams(json_t *streams)
{
	const char *name;
	json_t *s;
	json_object_foreach(streams, name, s) {
		printf("\nSTREAM %s (source %s, spool %s): %lld results, %lld sessions processing\n", name,
		       json_string_value(json_object_get(s, "source")),
		       json_string_value(json_object_get(s, "spool")),
		       json_integer_value(json_object_get(s, "results_total")),
		       json_integer_value(json_object_get(s, "sessions_processing")));
		printf("%-14s %-9s %7s %8s %8s  %s\n", "STATION", "SOURCE", "PID", "ITEMS", "DROPPED",
		       "OPEN SESSION");
		size_t i;
		json_t *st;
		json_array_foreach(json_object_get(s, "stations"), i, st) {
			long long dropped = 0;
			const char *k;
			json_t *v;
			json_object_foreach(json_object_get(st, "dropped"), k, v)
				dropped += json_integer_value(v);
			json_t *ses = json_object_get(st, "session");
			char open[160] = "-";
			if (json_is_object(ses))
				snprintf(open, sizeof(open), "%s (%lld items, %.0fs)",
					 json_string_value(json_object_get(ses, "id")),
					 json_integer_value(json_object_get(ses, "items")),
					 json_number_value(json_object_get(ses, "age_s")));
			printf("%-14s %-9s %7lld %8lld %8lld  %s%s\n",
			       json_string_value(json_object_get(st, "name")),
			       json_string_value(json_object_get(st, "state")),
			       json_integer_value(json_object_get(st, "pid")),
			       json_integer_value(json_object_get(st, "items")), dropped, open,
			       json_is_true(json_object_get(st, "draining")) ? "  [stopping]" : "");
		}
		json_t *r;
		json_array_foreach(json_object_get(s, "results"), i, r) {
			json_t *res = json_object_get(r, "result");
			char *text = res ? json_dumps(res, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
			printf("  #%lld %s/%s %s, %lld items, %lld ms: %s %.120s\n",
			       json_integer_value(json_object_get(r, "seq")),
			       json_string_value(json_object_get(r, "station")),
			       json_string_value(json_object_get(r, "session_id")),
			       json_string_value(json_object_get(r, "close_reason")),
			       json_integer_value(json_object_get(r, "items")),
			       json_integer_value(json_object_get(r, "latency_ms")),
			       json_string_value(json_object_get(r, "code")),
			       text ? text : json_string_value(json_object_get(r, "error")));
			free(text);
		}
	}
}

static void print_status(json_t *doc)
{
	json_t *req = json_object_get(doc, "requests");
	printf("baton %s  %s%s  pid %lld  uptime %.0fs\n",
	       json_string_value(json_object_get(doc, "version")),
	       json_string_value(json_object_get(doc, "state")),
	       json_is_true(json_object_get(doc, "ready")) ? " (ready)" : " (not ready)",
	       json_integer_value(json_object_get(doc, "pid")),
	       json_real_value(json_object_get(doc, "uptime_s")));
	printf("requests: %lld accepted, %lld succeeded, %lld failed, %lld in flight\n",
	       json_integer_value(json_object_get(req, "accepted")),
	       json_integer_value(json_object_get(req, "succeeded")),
	       json_integer_value(json_object_get(req, "failed")),
	       json_integer_value(json_object_get(req, "in_flight")));
	json_t *ct = json_object_get(doc, "containment");
	const char *cg = json_string_value(json_object_get(ct, "cgroup"));
	if (ct)
		printf("containment: %s%s%s%s\n", json_string_value(json_object_get(ct, "mode")),
		       cg ? " " : "", cg ? cg : "",
		       json_is_true(json_object_get(ct, "memory_max")) ? " (memory.max)" : "");
	printf("\n");
	printf("cpu %.0f%%", json_real_value(json_object_get(doc, "cpu_percent")));
	size_t gi;
	json_t *g;
	json_array_foreach(json_object_get(doc, "gpus"), gi, g) {
		printf("   gpu%lld: %lld MB, placed %.2g / %lld MB", json_integer_value(json_object_get(g, "id")),
		       json_integer_value(json_object_get(g, "memory_mb")),
		       json_real_value(json_object_get(g, "placed_fraction")),
		       json_integer_value(json_object_get(g, "placed_memory_mb")));
		if (json_integer_value(json_object_get(g, "external_memory_mb")))
			printf(", %lld MB used outside baton",
			       json_integer_value(json_object_get(g, "external_memory_mb")));
		if (json_object_get(g, "util_percent"))
			printf(", busy %lld%%, %lld MB used",
			       json_integer_value(json_object_get(g, "util_percent")),
			       json_integer_value(json_object_get(g, "memory_used_mb")));
	}
	printf("\n\n%-16s %-8s %7s %7s %8s %9s %8s  %s\n", "STAGE", "STATE", "QUEUED", "RUNNING",
	       "REQ/S", "P95", "SCALING", "REPLICAS");
	const char *name;
	json_t *st;
	json_object_foreach(json_object_get(doc, "stages"), name, st) {
		json_t *sc = json_object_get(st, "scaling"), *sig = json_object_get(st, "signals");
		char scaling[48], p95[16] = "-";
		snprintf(scaling, sizeof(scaling), "%lld/%lld %s%s",
			 json_integer_value(json_object_get(sc, "active")),
			 json_integer_value(json_object_get(sc, "target")),
			 json_string_value(json_object_get(sc, "policy")),
			 json_is_true(json_object_get(sc, "manual")) ? "(manual)" : "");
		if (json_is_number(json_object_get(sig, "latency_p95_s")))
			snprintf(p95, sizeof(p95), "%.3fs",
				 json_number_value(json_object_get(sig, "latency_p95_s")));
		printf("%-16s %-8s %7lld %7lld %8.1f %9s %8s ", name,
		       json_string_value(json_object_get(st, "state")),
		       json_integer_value(json_object_get(st, "queued")),
		       json_integer_value(json_object_get(st, "running")),
		       json_number_value(json_object_get(sig, "arrival_rate")), p95, scaling);
		size_t i;
		json_t *r;
		json_array_foreach(json_object_get(st, "replicas"), i, r) {
			printf(" %lld:%s(pid %lld, up %.0fs, restarts %lld, cpu %.0f%%, %.0f MB",
			       json_integer_value(json_object_get(r, "id")),
			       json_string_value(json_object_get(r, "state")),
			       json_integer_value(json_object_get(r, "pid")),
			       json_real_value(json_object_get(r, "uptime_s")),
			       json_integer_value(json_object_get(r, "restarts")),
			       json_real_value(json_object_get(r, "cpu_percent")),
			       (double)json_integer_value(json_object_get(r, "rss_bytes")) / (1 << 20));
			if (json_is_integer(json_object_get(r, "gpu")))
				printf(", gpu %lld", json_integer_value(json_object_get(r, "gpu")));
			if (json_object_get(r, "pending_reason"))
				printf(", %s", json_string_value(json_object_get(r, "pending_reason")));
			printf(")");
		}
		printf("\n");
		if (!json_is_true(json_object_get(st, "serving")))
			printf("%-16s not serving%s%s\n", "",
			       json_is_string(json_object_get(st, "reason")) ? ": " : "",
			       json_is_string(json_object_get(st, "reason"))
				   ? json_string_value(json_object_get(st, "reason"))
				   : "");
	}
	printf("\n%-16s %9s %9s %9s %9s  %s\n", "PIPELINE", "IN FLIGHT", "ACCEPTED",
	       "SUCCEEDED", "FAILED", "STAGES");
	json_t *pl;
	json_object_foreach(json_object_get(doc, "pipelines"), name, pl) {
		printf("%-16s %9lld %9lld %9lld %9lld  ", name,
		       json_integer_value(json_object_get(pl, "in_flight")),
		       json_integer_value(json_object_get(pl, "accepted")),
		       json_integer_value(json_object_get(pl, "succeeded")),
		       json_integer_value(json_object_get(pl, "failed")));
		size_t i;
		json_t *s;
		json_array_foreach(json_object_get(pl, "stages"), i, s)
			printf("%s%s", i ? " -> " : "", json_string_value(s));
		printf("\n");
	}
	json_t *hist = json_object_get(doc, "scaling_history");
	if (json_array_size(hist)) {
		printf("\nSCALING (latest last)\n");
		size_t n = json_array_size(hist), first = n > 10 ? n - 10 : 0;
		for (size_t i = first; i < n; i++) {
			json_t *e = json_array_get(hist, i);
			time_t t = (time_t)json_number_value(json_object_get(e, "time"));
			struct tm tm;
			char when[32];
			localtime_r(&t, &tm);
			strftime(when, sizeof(when), "%H:%M:%S", &tm);
			printf("%s  %-12s %lld -> %lld  %s%s\n", when,
			       json_string_value(json_object_get(e, "stage")),
			       json_integer_value(json_object_get(e, "from")),
			       json_integer_value(json_object_get(e, "to")),
			       json_is_true(json_object_get(e, "applied")) ? "" : "refused: ",
			       json_string_value(json_object_get(e, "reason")));
		}
	}
	print_streams(json_object_get(doc, "streams"));
	print_cluster(json_object_get(doc, "cluster"));
}

/* One fetch and print; errors go to stdout when watching, so they stay on screen. */
static int show(const char *url, const char *token, int as_json, double watching)
{
	FILE *errf = watching ? stdout : stderr;
	struct bt_http_reply rep;
	char err[256];
	if (bt_client_request(url, token[0] ? token : NULL, "GET", "/v1/status", NULL, 0, &rep,
			      err, sizeof(err))) {
		fprintf(errf, "baton: cannot get status from %s: %s\n", url, err);
		return BT_EXIT_FAIL;
	}
	json_error_t jerr;
	json_t *doc = rep.status == 200 ? json_loadb(rep.body, rep.len, 0, &jerr) : NULL;
	if (!doc) {
		fprintf(errf, "baton: %s answered %d, not a status document%s\n", url, rep.status,
			rep.status != 401 ? ""
			: token[0]	  ? " (the token was refused)"
					  : " (it needs a token: --token-file F or $BATON_TOKEN_FILE)");
		bt_client_reply_release(&rep);
		return BT_EXIT_FAIL;
	}
	if (watching) {
		time_t now = time(NULL);
		char when[32];
		strftime(when, sizeof(when), "%H:%M:%S", localtime(&now));
		printf("%s  %s  every %gs, Ctrl-C to stop\n\n", when, url, watching);
	}
	if (as_json)
		json_dumpf(doc, stdout, JSON_INDENT(2)), printf("\n");
	else
		print_status(doc);
	json_decref(doc);
	bt_client_reply_release(&rep);
	return BT_EXIT_OK;
}

static int run(int argc, char **argv)
{
	const char *url = getenv("BATON_URL");
	const char *token_file = getenv("BATON_TOKEN_FILE");
	char token[512] = "";
	int as_json = 0, watch = 0;
	long count = 0;
	double interval = 1;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--url") && i + 1 < argc) {
			url = argv[++i];
		} else if (!strcmp(argv[i], "--token-file") && i + 1 < argc) {
			token_file = argv[++i];
		} else if (!strcmp(argv[i], "--json")) {
			as_json = 1;
		} else if (!strcmp(argv[i], "--watch")) {
			watch = 1;
		} else if (!strcmp(argv[i], "--interval") && i + 1 < argc) {
			interval = atof(argv[++i]);
			if (!(interval >= 0.1 && interval <= 3600)) {
				fprintf(stderr, "baton: --interval must be between 0.1 and 3600 seconds\n");
				return BT_EXIT_USAGE;
			}
		} else if (!strcmp(argv[i], "--count") && i + 1 < argc) {
			count = atol(argv[++i]);
			if (count < 1) {
				fprintf(stderr, "baton: --count must be at least 1\n");
				return BT_EXIT_USAGE;
			}
		} else {
			return bt_cli_bad_arg(&bt_cmd_status, argc, argv, i);
		}
	}
	if (!url)
		url = "http://127.0.0.1:8080";
	if (token_file) {
		FILE *f = fopen(token_file, "r");
		if (!f || !fgets(token, sizeof(token), f)) {
			fprintf(stderr, "baton: cannot read the token file '%s'\n", token_file);
			if (f)
				fclose(f);
			return BT_EXIT_USAGE;
		}
		fclose(f);
		/* The first line, without trailing blanks, as the daemon reads it. */
		size_t n = strcspn(token, "\r\n");
		while (n && (token[n - 1] == ' ' || token[n - 1] == '\t'))
			n--;
		token[n] = '\0';
	}
	if (!watch)
		return show(url, token, as_json, 0);
	/* Until interrupted (or --count): a failed fetch is shown and retried. */
	for (long i = 0; count == 0 || i < count; i++) {
		if (i)
			usleep((useconds_t)(interval * 1e6));
		printf("\033[H\033[2J"); /* home, clear: the view stays at the top */
		show(url, token, as_json, interval);
		fflush(stdout);
	}
	return BT_EXIT_OK;
}

const struct bt_cmd bt_cmd_status = {
	"status", "[--url URL] [--token-file F] [--json] [--watch [--interval S] [--count N]]",
	"show a running daemon's stages, replicas and pipelines (--watch: live)", run,
	"Reads GET /v1/status and prints it as tables: each stage's state (ok, or why\n"
	"it is not serving: starting, backoff or failed, with the worker's last stderr\n"
	"line), replicas with pid, uptime, restarts, CPU and memory, the pipelines'\n"
	"counters and the latest scaling decisions.\n"
	"\n"
	"options:\n"
	"  --url URL          the daemon (default $BATON_URL, then http://127.0.0.1:8080)\n"
	"  --token-file F     bearer token for auth: (default $BATON_TOKEN_FILE)\n"
	"  --json             print the status document as JSON\n"
	"  --watch            redraw the view in place, like top, until interrupted\n"
	"  --interval S       seconds between views with --watch (default 1)\n"
	"  --count N          with --watch, stop after N views\n"
	"\n"
	"exit status: 0, 1 if the daemon cannot be reached, 2 on a usage error.\n"
	"\n"
	"examples:\n"
	"  baton status\n"
	"  baton status --url http://127.0.0.1:9000 --json\n"
	"  baton status --watch --interval 2\n"};
