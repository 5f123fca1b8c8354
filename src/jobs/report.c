/*
 * The outputs of `baton bench --scenarios`: JSON with every scenario's
 * full latency histogram, CSV with one row per scenario (seed 002's
 * columns first), and an SVG chart of throughput and p95 against the
 * parameter that varies.  Pure: it formats results and writes files.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "jobs.h"

static json_t *num(double v)
{
	return isfinite(v) ? json_real(v) : json_null();
}

static double total_replicas_x(const struct bt_scenario_result *r)
{
	return r->replicas;
}

static double concurrency_x(const struct bt_scenario_result *r)
{
	return r->sc->load == BT_LOAD_CLOSED ? r->sc->concurrency : NAN;
}

static double rate_x(const struct bt_scenario_result *r)
{
	return r->sc->load == BT_LOAD_OPEN ? r->sc->rate : NAN;
}

static int differs(const struct bt_scenario_result *res, int n,
		   double (*x)(const struct bt_scenario_result *))
{
	for (int i = 1; i < n; i++) {
		double a = x(&res[0]), b = x(&res[i]);
		if (!(a == b) && !(isnan(a) && isnan(b)))
			return 1;
	}
	return 0;
}

const char *bt_report_varied(const struct bt_scenario_result *res, int n)
{
	if (differs(res, n, total_replicas_x))
		return "replicas";
	if (differs(res, n, concurrency_x))
		return "concurrency";
	if (differs(res, n, rate_x))
		return "rate";
	return "scenario";
}

static double x_value(const char *varied, const struct bt_scenario_result *r, int i)
{
	if (!strcmp(varied, "replicas"))
		return r->replicas;
	if (!strcmp(varied, "concurrency"))
		return concurrency_x(r);
	if (!strcmp(varied, "rate"))
		return rate_x(r);
	return i + 1;
}

/*
 * Buckets of 1, 2 and 5 times a power of ten, from 10 µs up: a bucket
 * holds the samples at most its bound and over the one before.
 */
static json_t *histogram(const struct bt_scenario_result *r)
{
	json_t *buckets = json_array();
	static const double steps[] = {1, 2, 5};
	size_t i = 0;
	for (double decade = 0.01; i < r->nlatency; decade *= 10) {
		for (int s = 0; s < 3 && i < r->nlatency; s++) {
			double le = decade * steps[s];
			size_t count = 0;
			while (i < r->nlatency && r->latency_ms[i] <= le)
				i++, count++;
			if (count)
				json_array_append_new(buckets, json_pack("{s:f, s:I}", "le_ms", le,
									 "count", (json_int_t)count));
		}
	}
	return buckets;
}

static json_t *settings(const struct bt_scenario *sc)
{
	json_t *o = json_pack("{s:s, s:s, s:s}", "name", sc->name, "pipeline", sc->pipeline,
			      "load", sc->load == BT_LOAD_OPEN ? "open" : "closed");
	if (sc->load == BT_LOAD_OPEN) {
		json_object_set_new(o, "rate", json_real(sc->rate));
		json_object_set_new(o, "arrival", json_string(sc->poisson ? "poisson" : "constant"));
		json_object_set_new(o, "connections", json_integer(sc->connections));
	} else {
		json_object_set_new(o, "concurrency", json_integer(sc->concurrency));
	}
	json_t *rep = json_object();
	for (int i = 0; i < sc->nscale; i++)
		json_object_set_new(rep, sc->scale[i].stage, json_integer(sc->scale[i].replicas));
	if (sc->replicas_all)
		json_object_set_new(o, "replicas_all", json_integer(sc->replicas_all));
	json_object_set_new(o, "replicas", rep);
	json_t *b = json_object();
	for (int i = 0; i < sc->nbatch; i++)
		json_object_set_new(b, sc->batch[i].stage,
				    json_pack("{s:i, s:I}", "max_size", sc->batch[i].max_size,
					      "window_ms", (json_int_t)sc->batch[i].window_ms));
	json_object_set_new(o, "batch", b);
	json_object_set_new(o, "duration_s", json_real(sc->duration_s));
	json_object_set_new(o, "warmup_s", json_real(sc->warmup_s));
	return o;
}

int bt_report_json(const char *path, const struct bt_scenario_result *res, int n)
{
	json_t *list = json_array();
	static const char *kinds[] = {"connection", "4xx", "500", "502", "503", "504", "other", "unfinished"};
	for (int i = 0; i < n; i++) {
		const struct bt_scenario_result *r = &res[i];
		json_t *o = json_pack("{s:o}", "scenario", settings(r->sc));
		if (r->error[0]) {
			json_object_set_new(o, "error", json_string(r->error));
			json_array_append_new(list, o);
			continue;
		}
		json_t *fails = json_object();
		for (int k = 0; k < 8; k++)
			if (r->by_status[k])
				json_object_set_new(fails, kinds[k],
						    json_integer((json_int_t)r->by_status[k]));
		json_object_update_new(
			o, json_pack("{s:i, s:I, s:I, s:I, s:o, s:f, s:o, s:o}", "replicas",
				     r->replicas, "sent", (json_int_t)r->sent, "succeeded",
				     (json_int_t)r->ok, "failed", (json_int_t)r->failed, "failures",
				     fails, "seconds", r->seconds, "throughput_rps", num(r->rps),
				     "success_rate", num(r->success_rate)));
		json_object_set_new(
			o, "latency_ms",
			json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:o}", "avg",
				  num(r->lat_avg), "p50", num(r->p50), "p90", num(r->p90), "p95",
				  num(r->p95), "p99", num(r->p99), "max", num(r->max), "samples",
				  (json_int_t)r->nlatency, "histogram", histogram(r)));
		json_object_set_new(o, "resources",
				    json_pack("{s:o, s:o, s:o, s:o, s:o}", "cpu_avg_percent",
					      num(r->cpu_avg), "cpu_max_percent", num(r->cpu_max),
					      "gpu_avg_percent", num(r->gpu_avg), "gpu_max_percent",
					      num(r->gpu_max), "rss_max_mb", num(r->rss_max_mb)));
		json_object_set_new(o, "server_timing_ms",
				    json_pack("{s:o, s:o, s:o, s:o}", "queue", num(r->queue_ms),
					      "run", num(r->run_ms), "baton", num(r->baton_ms),
					      "http_and_client", num(r->http_ms)));
		json_array_append_new(list, o);
	}
	json_t *doc = json_pack("{s:s, s:o}", "varied", bt_report_varied(res, n), "scenarios",
				list);
	int r = json_dump_file(doc, path, JSON_INDENT(2)) ? -EIO : 0;
	json_decref(doc);
	return r;
}

/* An empty field for a figure that was not measured. */
static void field(FILE *f, const char *fmt, double v)
{
	fputc(',', f);
	if (isfinite(v))
		fprintf(f, fmt, v);
}

int bt_report_csv(const char *path, const struct bt_scenario_result *res, int n)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -errno;
	/* Seed 002's summary columns first, in its order; then ours. */
	fprintf(f, "scenario,replicas,duration_s,requests,success_rate,throughput_rps,"
		   "latency_avg_ms,latency_p95_ms,latency_p99_ms,cpu_avg,cpu_max,gpu_avg,gpu_max,"
		   "load,concurrency,rate,latency_p50_ms,latency_p90_ms,latency_max_ms,"
		   "rss_max_mb,queue_ms,run_ms,baton_ms,http_ms,error\n");
	for (int i = 0; i < n; i++) {
		const struct bt_scenario_result *r = &res[i];
		const struct bt_scenario *sc = r->sc;
		fprintf(f, "%s,%d,%.3f,%llu", sc->name, r->replicas, r->seconds,
			(unsigned long long)r->sent);
		field(f, "%.4f", r->success_rate);
		field(f, "%.2f", r->rps);
		field(f, "%.3f", r->lat_avg);
		field(f, "%.3f", r->p95);
		field(f, "%.3f", r->p99);
		field(f, "%.1f", r->cpu_avg);
		field(f, "%.1f", r->cpu_max);
		field(f, "%.1f", r->gpu_avg);
		field(f, "%.1f", r->gpu_max);
		fprintf(f, ",%s", sc->load == BT_LOAD_OPEN ? (sc->poisson ? "open-poisson" : "open")
							   : "closed");
		field(f, "%.0f", concurrency_x(r));
		field(f, "%.2f", rate_x(r));
		field(f, "%.3f", r->p50);
		field(f, "%.3f", r->p90);
		field(f, "%.3f", r->max);
		field(f, "%.1f", r->rss_max_mb);
		field(f, "%.3f", r->queue_ms);
		field(f, "%.3f", r->run_ms);
		field(f, "%.3f", r->baton_ms);
		field(f, "%.3f", r->http_ms);
		/* The error is free text: quoted, its quotes doubled. */
		fputc(',', f);
		if (r->error[0]) {
			fputc('"', f);
			for (const char *c = r->error; *c; c++)
				fputs(*c == '"' ? "\"\"" : (char[]){*c, 0}, f);
			fputc('"', f);
		}
		fputc('\n', f);
	}
	return fclose(f) ? -errno : 0;
}

/* A round step for about five ticks over [0, max]. */
static double tick_step(double max)
{
	if (!(max > 0))
		return 1;
	double raw = max / 5, mag = pow(10, floor(log10(raw)));
	double norm = raw / mag;
	return mag * (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10);
}

static void xml_text(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '<')
			fputs("&lt;", f);
		else if (*s == '>')
			fputs("&gt;", f);
		else if (*s == '&')
			fputs("&amp;", f);
		else
			fputc(*s, f);
	}
}

int bt_report_svg(const char *path, const struct bt_scenario_result *res, int n)
{
	const double W = 720, H = 430, L = 70, R = 70, T = 52, B = 60;
	const double pw = W - L - R, ph = H - T - B;
	const char *varied = bt_report_varied(res, n);
	double xmin = INFINITY, xmax = -INFINITY, ymax = 0, pmax = 0;
	for (int i = 0; i < n; i++) {
		if (res[i].error[0])
			continue;
		double x = x_value(varied, &res[i], i);
		xmin = fmin(xmin, x);
		xmax = fmax(xmax, x);
		if (isfinite(res[i].rps))
			ymax = fmax(ymax, res[i].rps);
		if (isfinite(res[i].p95))
			pmax = fmax(pmax, res[i].p95);
	}
	if (!isfinite(xmin))
		xmin = 0, xmax = 1;
	if (xmax == xmin)
		xmin -= 1, xmax += 1;
	double ystep = tick_step(ymax), pstep = tick_step(pmax);
	double ytop = ystep * ceil((ymax > 0 ? ymax : 1) / ystep);
	double ptop = pstep * ceil((pmax > 0 ? pmax : 1) / pstep);
	FILE *f = fopen(path, "w");
	if (!f)
		return -errno;
#define PX(x) (L + ((x) - xmin) / (xmax - xmin) * pw)
#define PY(y, top) (T + ph - (y) / (top) * ph)
	fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
		   "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"12\">\n",
		W, H, W, H);
	fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
	fprintf(f, "<text x=\"%.0f\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">"
		   "throughput and p95 latency by %s</text>\n", W / 2, varied);
	/* Grid and both y axes. */
	for (double y = 0; y <= ytop + ystep / 2; y += ystep) {
		double py = PY(y, ytop);
		fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n",
			L, py, L + pw, py);
		fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"#1f5fa8\">%g</text>\n",
			L - 6, py + 4, y);
	}
	for (double p = 0; p <= ptop + pstep / 2; p += pstep)
		fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"#c25b00\">%g</text>\n", L + pw + 6,
			PY(p, ptop) + 4, p);
	fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
		   "stroke=\"#444\"/>\n", L, T, pw, ph);
	fprintf(f, "<text transform=\"translate(18 %.1f) rotate(-90)\" text-anchor=\"middle\" "
		   "fill=\"#1f5fa8\">throughput (requests/s)</text>\n", T + ph / 2);
	fprintf(f, "<text transform=\"translate(%.1f %.1f) rotate(90)\" text-anchor=\"middle\" "
		   "fill=\"#c25b00\">p95 latency (ms)</text>\n", W - 18, T + ph / 2);
	fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", L + pw / 2,
		H - 14, varied);
	/* x ticks at each scenario's value, labelled with it (or the scenario's name). */
	for (int i = 0; i < n; i++) {
		if (res[i].error[0])
			continue;
		double px = PX(x_value(varied, &res[i], i));
		fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444\"/>\n",
			px, T + ph, px, T + ph + 5);
		fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", px, T + ph + 19);
		if (!strcmp(varied, "scenario"))
			xml_text(f, res[i].sc->name);
		else
			fprintf(f, "%g", x_value(varied, &res[i], i));
		fprintf(f, "</text>\n");
	}
	/* The two series: a line through the points, then the points. */
	for (int series = 0; series < 2; series++) {
		const char *color = series ? "#c25b00" : "#1f5fa8";
		fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"",
			color, series ? " stroke-dasharray=\"6 4\"" : "");
		for (int i = 0; i < n; i++) {
			double v = series ? res[i].p95 : res[i].rps;
			if (!res[i].error[0] && isfinite(v))
				fprintf(f, "%.1f,%.1f ", PX(x_value(varied, &res[i], i)),
					PY(v, series ? ptop : ytop));
		}
		fprintf(f, "\"/>\n");
		for (int i = 0; i < n; i++) {
			double v = series ? res[i].p95 : res[i].rps;
			if (!res[i].error[0] && isfinite(v))
				fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>\n",
					PX(x_value(varied, &res[i], i)), PY(v, series ? ptop : ytop),
					color);
		}
	}
	fprintf(f, "<g transform=\"translate(%.1f %.1f)\">"
		   "<line x1=\"0\" y1=\"0\" x2=\"24\" y2=\"0\" stroke=\"#1f5fa8\" stroke-width=\"2\"/>"
		   "<text x=\"30\" y=\"4\">throughput</text>"
		   "<line x1=\"110\" y1=\"0\" x2=\"134\" y2=\"0\" stroke=\"#c25b00\" stroke-width=\"2\" "
		   "stroke-dasharray=\"6 4\"/><text x=\"140\" y=\"4\">p95 latency</text></g>\n",
		L + pw - 230, T - 12);
	fprintf(f, "</svg>\n");
#undef PX
#undef PY
	return fclose(f) ? -errno : 0;
}
