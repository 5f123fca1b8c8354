/*
 * A test source for tests/e2e/test_sdk_source.py, linked against
 * libbatonworker.  Its arguments are a script of actions, run in order
 * (the Python twin in the test file reads the same script):
 *
 *   emit:K        emit K items; item i (counted over the run, from 1) is
 *                 "item-i\n\0\xff" with meta {"i":i,"content_type":
 *                 "application/octet-stream"}; stops early when emit
 *                 returns 0 ("stopped before i")
 *   emit-forever  emit until emit returns 0 ("stopped before i")
 *   eos / eos:S   end the session (named S)
 *   whoami        emit one item "URL|STATION"
 *   badmeta       emit with meta "[1]" and with "{", print both results
 *   wait-stop     poll until baton says stop ("stop seen")
 *   return:N      return N from the produce callback at once
 *
 * Every result goes to stderr as "ev: ..." lines for the test to read.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton_worker.h"

struct script {
	int argc;
	char **argv;
	int next; /* number of the next item */
};

static int emit_one(struct baton_source *src, struct script *s)
{
	char payload[64], meta[128];
	int n = snprintf(payload, sizeof(payload), "item-%d\n", s->next);
	payload[n++] = '\0';
	payload[n++] = (char)0xff;
	snprintf(meta, sizeof(meta), "{\"i\":%d,\"content_type\":\"application/octet-stream\"}",
		 s->next);
	int r = baton_source_emit(src, payload, (size_t)n, meta);
	if (r == 1)
		s->next++;
	else if (r == 0)
		fprintf(stderr, "ev: stopped before %d\n", s->next);
	else
		fprintf(stderr, "ev: emit error %d\n", r);
	return r;
}

static int produce(struct baton_source *src, void *arg)
{
	struct script *s = arg;
	for (int a = 1; a < s->argc; a++) {
		const char *act = s->argv[a];
		int r = 1;
		if (!strncmp(act, "emit:", 5)) {
			for (int k = atoi(act + 5); k > 0 && r == 1; k--)
				r = emit_one(src, s);
		} else if (!strcmp(act, "emit-forever")) {
			while ((r = emit_one(src, s)) == 1)
				;
		} else if (!strcmp(act, "eos") || !strncmp(act, "eos:", 4)) {
			r = baton_source_eos(src, act[3] ? act + 4 : NULL);
			fprintf(stderr, "ev: eos -> %d\n", r);
		} else if (!strcmp(act, "whoami")) {
			char who[512];
			int n = snprintf(who, sizeof(who), "%s|%s", baton_source_url(src),
					 baton_source_station(src));
			r = baton_source_emit(src, who, (size_t)n, NULL);
		} else if (!strcmp(act, "badmeta")) {
			int a1 = baton_source_emit(src, "x", 1, "[1]");
			int a2 = baton_source_emit(src, "x", 1, "{");
			fprintf(stderr, "ev: badmeta %d %d\n", a1, a2);
		} else if (!strcmp(act, "wait-stop")) {
			while ((r = baton_source_poll(src, -1)) == 1)
				;
			fprintf(stderr, "ev: stop seen %d stopping=%d\n", r,
				baton_source_stopping(src));
		} else if (!strncmp(act, "return:", 7)) {
			return atoi(act + 7);
		}
		if (r < 0)
			return r;
	}
	fprintf(stderr, "ev: done\n");
	return 0;
}

int main(int argc, char **argv)
{
	struct script s = {argc, argv, 1};
	int r = baton_source_run(produce, &s);
	fprintf(stderr, "ev: run returned %d\n", r);
	return r ? 1 : 0;
}
