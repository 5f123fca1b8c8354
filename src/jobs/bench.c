/*
 * `baton bench`: measure a pipeline's capacity the way `baton run` runs
 * it — the daemon's scheduler and supervision, no HTTP — by keeping a
 * fixed number of requests in flight (closed loop) for a duration or a
 * count, cycling over the given input files.  Prints throughput, latency
 * percentiles end to end and per stage, and the outcome counts; optionally
 * writes them as JSON and one CSV row (seed 002's benchmark mode).
 */
#include <fcntl.h>
#include <math.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../daemon/daemon.h"
#include "jobs.h"

struct samples {
	double *v;
	size_t n, cap;
};

struct bench {
	struct bt_daemon *d;
	struct bt_pipeline *pl;
	const struct bt_bench_options *opt;
	char **data; /* the input files, read once */
	size_t *len;
	int ninputs;
	uint64_t sent, done, ok;
	uint64_t failed[BT_CODE_COUNT];
	int inflight;
	uint64_t start_ms, end_ms;
	int started;
	struct samples total;
	struct samples *queue, *run; /* per pipeline step */
	int nsteps;
};

static void add(struct samples *s, double v)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 1024;
		s->v = bt_realloc(s->v, s->cap * sizeof(double));
	}
	s->v[s->n++] = v;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double pct(struct samples *s, double q)
{
	if (!s->n)
		return NAN;
	return bt_jobs_percentile(s->v, s->n, q);
}

static void done_cb(struct bt_request *req, void *arg)
{
	struct bench *b = arg;
	b->inflight--;
	b->done++;
	if (req->code == BT_OK) {
		b->ok++;
		add(&b->total, (double)(bt_now_us() - req->accepted_us) / 1000.0);
		for (int s = 0; s < b->nsteps; s++) {
			add(&b->queue[s], (double)req->timings[s].queue_us / 1000.0);
			add(&b->run[s], (double)req->timings[s].run_us / 1000.0);
		}
	} else {
		b->failed[req->code]++;
	}
	bt_request_free(req);
	bt_daemon_wake(b->d);
}

static int finished_sending(const struct bench *b)
{
	if (b->opt->requests)
		return b->sent >= b->opt->requests;
	return bt_now_ms() >= b->start_ms + b->opt->seconds * 1000;
}

static void feed(struct bt_daemon *d, void *arg)
{
	struct bench *b = arg;
	if (d->state != BT_DAEMON_RUNNING)
		return;
	if (!b->started) {
		/* The clock starts once every stage has a replica ready. */
		for (int i = 0; i < b->pl->nstages; i++)
			if (!b->pl->stages[i]->up)
				return;
		b->started = 1;
		b->start_ms = bt_now_ms();
	}
	while (b->inflight < b->opt->concurrency && !finished_sending(b)) {
		int i = (int)(b->sent % (uint64_t)b->ninputs);
		char *copy = bt_malloc(b->len[i] ? b->len[i] : 1);
		memcpy(copy, b->data[i], b->len[i]);
		const char *base = strrchr(b->opt->inputs[i], '/');
		json_t *meta = json_pack("{s:s}", "name", base ? base + 1 : b->opt->inputs[i]);
		struct bt_request *req = bt_request_new(b->pl, copy, b->len[i], meta);
		b->sent++;
		b->inflight++;
		bt_pipeline_submit(req, done_cb, b);
	}
	if (b->inflight == 0 && finished_sending(b)) {
		b->end_ms = bt_now_ms();
		bt_daemon_shutdown(d);
	}
}

/* A 1-second tick so that a duration-bound run notices the end. */
static void timer_cb(uv_timer_t *t)
{
	bt_daemon_wake(t->data);
}

static void report(struct bench *b, FILE *out)
{
	double secs = (double)(b->end_ms - b->start_ms) / 1000.0;
	uint64_t failed = b->done - b->ok;
	qsort(b->total.v, b->total.n, sizeof(double), cmp);
	fprintf(out, "baton bench: pipeline '%s', %d input%s, concurrency %d\n", b->pl->cfg->name,
		b->ninputs, b->ninputs == 1 ? "" : "s", b->opt->concurrency);
	fprintf(out, "  requests %llu   succeeded %llu   failed %llu   %.1fs   %.1f requests/s\n",
		(unsigned long long)b->done, (unsigned long long)b->ok,
		(unsigned long long)failed, secs, secs > 0 ? (double)b->ok / secs : 0.0);
	for (int c = 1; c < BT_CODE_COUNT; c++)
		if (b->failed[c])
			fprintf(out, "    %s: %llu\n", bt_code_name((enum bt_code)c),
				(unsigned long long)b->failed[c]);
	fprintf(out, "  latency ms       p50       p95       p99       max\n");
	fprintf(out, "  %-12s %9.2f %9.2f %9.2f %9.2f\n", "end to end", pct(&b->total, 0.5),
		pct(&b->total, 0.95), pct(&b->total, 0.99), pct(&b->total, 1.0));
	for (int s = 0; s < b->nsteps; s++) {
		qsort(b->queue[s].v, b->queue[s].n, sizeof(double), cmp);
		qsort(b->run[s].v, b->run[s].n, sizeof(double), cmp);
		const char *name = b->pl->stages[s]->cfg->name;
		fprintf(out, "  %-12.12s %9.2f %9.2f %9.2f %9.2f   run\n", name, pct(&b->run[s], 0.5),
			pct(&b->run[s], 0.95), pct(&b->run[s], 0.99), pct(&b->run[s], 1.0));
		fprintf(out, "  %-12s %9.2f %9.2f %9.2f %9.2f   queue\n", "", pct(&b->queue[s], 0.5),
			pct(&b->queue[s], 0.95), pct(&b->queue[s], 0.99), pct(&b->queue[s], 1.0));
	}
}

static json_t *num(double v)
{
	return isfinite(v) ? json_real(v) : json_null();
}

static json_t *as_json(struct bench *b)
{
	double secs = (double)(b->end_ms - b->start_ms) / 1000.0;
	json_t *failures = json_object();
	for (int c = 1; c < BT_CODE_COUNT; c++)
		if (b->failed[c])
			json_object_set_new(failures, bt_code_name((enum bt_code)c),
					    json_integer((json_int_t)b->failed[c]));
	json_t *stages = json_array();
	for (int s = 0; s < b->nsteps; s++)
		json_array_append_new(
			stages, json_pack("{s:s, s:o, s:o, s:o, s:o}", "stage",
					  b->pl->stages[s]->cfg->name, "run_p50_ms",
					  num(pct(&b->run[s], 0.5)), "run_p95_ms",
					  num(pct(&b->run[s], 0.95)), "queue_p50_ms",
					  num(pct(&b->queue[s], 0.5)), "queue_p95_ms",
					  num(pct(&b->queue[s], 0.95))));
	return json_pack("{s:s, s:i, s:I, s:I, s:o, s:f, s:o, s:o, s:o, s:o, s:o}", "pipeline",
			 b->pl->cfg->name, "concurrency", b->opt->concurrency, "requests",
			 (json_int_t)b->done, "succeeded", (json_int_t)b->ok, "failures", failures,
			 "seconds", secs, "requests_per_s", num(secs > 0 ? (double)b->ok / secs : NAN),
			 "p50_ms", num(pct(&b->total, 0.5)), "p95_ms", num(pct(&b->total, 0.95)),
			 "p99_ms", num(pct(&b->total, 0.99)), "stages", stages);
}

static int write_outputs(struct bench *b)
{
	int r = 0;
	if (b->opt->json_path) {
		json_t *doc = as_json(b);
		if (json_dump_file(doc, b->opt->json_path, JSON_INDENT(2))) {
			fprintf(stderr, "baton bench: cannot write '%s'\n", b->opt->json_path);
			r = -1;
		}
		json_decref(doc);
	}
	if (b->opt->csv_path) {
		FILE *f = fopen(b->opt->csv_path, "a");
		if (!f) {
			fprintf(stderr, "baton bench: cannot write '%s'\n", b->opt->csv_path);
			return -1;
		}
		/* One row per run, appended, so runs at several settings make one table. */
		if (ftell(f) == 0)
			fprintf(f, "pipeline,concurrency,requests,succeeded,failed,seconds,"
				   "requests_per_s,p50_ms,p95_ms,p99_ms\n");
		double secs = (double)(b->end_ms - b->start_ms) / 1000.0;
		fprintf(f, "%s,%d,%llu,%llu,%llu,%.3f,%.2f,%.3f,%.3f,%.3f\n", b->pl->cfg->name,
			b->opt->concurrency, (unsigned long long)b->done, (unsigned long long)b->ok,
			(unsigned long long)(b->done - b->ok), secs,
			secs > 0 ? (double)b->ok / secs : 0.0, pct(&b->total, 0.5),
			pct(&b->total, 0.95), pct(&b->total, 0.99));
		int bad = ferror(f);
		if (fclose(f) || bad) {
			fprintf(stderr, "baton bench: cannot write '%s': %s\n", b->opt->csv_path,
				strerror(errno));
			r = -1;
		}
	}
	return r;
}

static int read_input(const char *path, char **data, size_t *len)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	struct bt_buf buf = BT_BUF_INIT;
	char chunk[65536];
	ssize_t n;
	while ((n = read(fd, chunk, sizeof(chunk))) > 0)
		bt_buf_append(&buf, chunk, (size_t)n);
	close(fd);
	if (n < 0) {
		bt_buf_release(&buf);
		return -1;
	}
	bt_buf_reserve(&buf, 0);
	*data = bt_buf_detach(&buf, len);
	return 0;
}

int bt_bench_run(struct bt_config *cfg, const struct bt_bench_options *opt)
{
	struct bench b;
	char err[512];
	int code = 0;
	memset(&b, 0, sizeof(b));
	b.opt = opt;
	int pi = bt_config_pipeline_index(cfg, opt->pipeline);
	if (pi < 0) {
		fprintf(stderr, "baton bench: no pipeline named '%s' in the config\n", opt->pipeline);
		return 2;
	}
	b.ninputs = opt->ninputs;
	b.data = bt_calloc((size_t)b.ninputs, sizeof(char *));
	b.len = bt_calloc((size_t)b.ninputs, sizeof(size_t));
	for (int i = 0; i < b.ninputs; i++) {
		if (read_input(opt->inputs[i], &b.data[i], &b.len[i])) {
			fprintf(stderr, "baton bench: cannot read input '%s'\n", opt->inputs[i]);
			code = 2;
			goto out;
		}
	}
	bt_log_threshold = BT_LOG_WARN; /* the figures are the output */
	uv_loop_t loop;
	struct bt_daemon d;
	uv_loop_init(&loop);
	bt_daemon_init(&d, &loop, cfg);
	b.d = &d;
	b.pl = &d.pipelines[pi];
	b.nsteps = b.pl->nstages;
	b.queue = bt_calloc((size_t)b.nsteps, sizeof(*b.queue));
	b.run = bt_calloc((size_t)b.nsteps, sizeof(*b.run));
	d.no_http = 1;
	d.no_streams = 1;
	d.on_idle = feed;
	d.on_idle_arg = &b;
	uv_timer_t timer;
	uv_timer_init(&loop, &timer);
	timer.data = &d;
	if (bt_daemon_start(&d, err, sizeof(err))) {
		fprintf(stderr, "baton bench: %s\n", err);
		bt_daemon_shutdown(&d);
		d.hard_stop = 1;
	}
	uv_timer_start(&timer, timer_cb, 1000, 1000);
	bt_daemon_wake(&d);
	while (uv_run(&loop, UV_RUN_ONCE))
		if (d.state == BT_DAEMON_CLOSING && !uv_is_closing((uv_handle_t *)&timer))
			uv_close((uv_handle_t *)&timer, NULL);
	if (!b.end_ms)
		b.end_ms = bt_now_ms();
	report(&b, stdout);
	if (write_outputs(&b))
		code = 1;
	if (b.ok == 0 || !b.started)
		code = 1;
	bt_daemon_release(&d);
	uv_loop_close(&loop);
out:
	for (int i = 0; i < b.ninputs; i++)
		free(b.data[i]);
	free(b.data);
	free(b.len);
	free(b.total.v);
	for (int s = 0; s < b.nsteps; s++) {
		free(b.queue[s].v);
		free(b.run[s].v);
	}
	free(b.queue);
	free(b.run);
	return code;
}
