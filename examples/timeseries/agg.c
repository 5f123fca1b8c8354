/*
 * The timeseries example's first stage, in C: minute buckets.  A request
 * is a page of sensor-hour windows, each with its raw samples
 * [[epoch_s, value], ...]; the answer gives each window 60 minute means
 * (null where no sample fell) and its sample count.  Pure CPU work, the
 * part the seed's native core did.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton_worker.h"

#define MINUTES 60

static json_t *bucket(json_t *win, char *err, size_t errlen)
{
	json_t *id = json_object_get(win, "window_id");
	json_t *samples = json_object_get(win, "samples");
	if (!json_is_integer(id) || !json_is_array(samples)) {
		snprintf(err, errlen, "a window needs an integer window_id and a samples list");
		return NULL;
	}
	long long start = (json_integer_value(id) % 1000000) * 3600;
	double sum[MINUTES] = {0};
	int count[MINUTES] = {0};
	size_t i;
	json_t *s;
	json_array_foreach(samples, i, s) {
		json_t *t = json_array_get(s, 0), *v = json_array_get(s, 1);
		if (!json_is_number(t) || !json_is_number(v)) {
			snprintf(err, errlen, "window %lld: sample %zu is not [epoch, value]",
				 json_integer_value(id), i);
			return NULL;
		}
		long long m = ((long long)json_number_value(t) - start) / 60;
		if (m < 0 || m >= MINUTES) {
			snprintf(err, errlen, "window %lld: sample %zu lies outside its hour",
				 json_integer_value(id), i);
			return NULL;
		}
		sum[m] += json_number_value(v);
		count[m]++;
	}
	json_t *minutes = json_array();
	for (int m = 0; m < MINUTES; m++)
		json_array_append_new(minutes, count[m] ? json_real(sum[m] / count[m]) : json_null());
	return json_pack("{s:O, s:O, s:I, s:o, s:I}", "window_id", id, "sensor",
			 json_object_get(win, "sensor"), "start", (json_int_t)start, "minutes",
			 minutes, "n_samples", (json_int_t)json_array_size(samples));
}

static int handle(void *user, struct baton_request *req)
{
	size_t len;
	const char *data = baton_request_data(req, &len);
	json_error_t jerr;
	char err[256];
	(void)user;
	json_t *page = json_loadb(data, len, 0, &jerr);
	if (!json_is_array(page)) {
		json_decref(page);
		return baton_fail(req, "the request is not a JSON list of windows", 0);
	}
	json_t *out = json_array();
	size_t i;
	json_t *win;
	json_array_foreach(page, i, win) {
		json_t *b = bucket(win, err, sizeof(err));
		if (!b) {
			json_decref(out);
			json_decref(page);
			return baton_fail(req, err, 0);
		}
		json_array_append_new(out, b);
	}
	json_decref(page);
	char *text = json_dumps(out, JSON_COMPACT);
	json_decref(out);
	if (!text)
		return baton_fail(req, "out of memory", 1);
	int r = baton_respond(req, text, strlen(text), "{\"content_type\":\"application/json\"}");
	free(text);
	return r;
}

int main(void)
{
	struct baton_worker_ops ops = {.handle = handle};
	return baton_worker_run(&ops, NULL) ? 1 : 0;
}
