/*
 * The codec of stream messages (docs/scaleout.md): a struct bt_entry to
 * and from Redis field/value pairs.  Pure: no Redis, no loop; the unit test
 * tests/unit/test_cluster.c drives it.  Every field is checked on the way
 * in, since another node (of another version, or a person with redis-cli)
 * may have written it.
 */
#include "cluster.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENTRY_VERSION "1"

int bt_entry_fields(const struct bt_entry *e, const char **argv, size_t *lens, char *scratch)
{
	int n = 0;
	char *sp = scratch;
#define PUT(name, val, vlen)                                                                       \
	do {                                                                                       \
		argv[n] = (name);                                                                  \
		lens[n++] = strlen(name);                                                          \
		argv[n] = (val);                                                                   \
		lens[n++] = (vlen);                                                                \
	} while (0)
#define PUTS(name, s) PUT(name, s, strlen(s))
#define PUTN(name, fmt, v)                                                                         \
	do {                                                                                       \
		int w = snprintf(sp, 24, fmt, v);                                                  \
		PUT(name, sp, (size_t)w);                                                          \
		sp += w + 1;                                                                       \
	} while (0)
	PUTS("v", ENTRY_VERSION);
	PUTS("o", e->origin);
	PUTN("r", "%" PRIu64, e->req);
	PUTN("s", "%d", e->step);
	if (!e->reply) {
		PUTS("st", e->stage);
		PUTS("p", e->pipeline);
		PUTN("t", "%d", e->tries);
		PUTN("dl", "%" PRId64, e->deadline_unix_ms);
		PUTN("pr", "%d", e->priority);
	} else {
		PUTS("n", e->node);
		PUTN("c", "%d", e->code);
		if (e->error)
			PUTS("e", e->error);
		PUTN("qu", "%" PRIu64, e->queue_us);
		PUTN("ru", "%" PRIu64, e->run_us);
	}
	if (e->meta)
		PUTS("m", e->meta);
	PUTN("l", "%zu", e->len);
	if (e->ref)
		PUTS("ref", e->ref);
	else
		PUT("b", e->payload ? e->payload : "", e->payload ? e->len : 0);
#undef PUT
#undef PUTS
#undef PUTN
	return n;
}

void bt_entry_release(struct bt_entry *e)
{
	free(e->origin);
	free(e->stage);
	free(e->pipeline);
	free(e->meta);
	free(e->payload);
	free(e->ref);
	free(e->node);
	free(e->error);
	memset(e, 0, sizeof(*e));
}

/* A decimal integer in [min, max] from exactly len bytes. */
static int number(const char *s, size_t len, long long min, long long max, long long *out)
{
	char buf[32];
	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	char *end;
	errno = 0;
	long long v = strtoll(buf, &end, 10);
	if (errno || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/* A text field: no NUL inside (it becomes a C string). */
static int text(const char *s, size_t len, char **out)
{
	if (memchr(s, '\0', len))
		return -1;
	free(*out);
	*out = bt_strndup(s, len);
	return 0;
}

int bt_entry_decode(struct bt_entry *e, int reply, const char *const *fields, const size_t *lens,
		    int n, char *why, size_t whylen)
{
	enum {
		F_V = 1,
		F_O = 2,
		F_R = 4,
		F_S = 8,
		F_ST = 16,
		F_P = 32,
		F_T = 64,
		F_C = 128,
		F_N = 256,
		F_L = 512,
		F_B = 1024
	};
	unsigned seen = 0;
	size_t blen = 0;
	long long v;
	const char *bad = NULL;
	memset(e, 0, sizeof(*e));
	e->reply = reply;
	if (n % 2) {
		snprintf(why, whylen, "an odd number of fields");
		return BT_EPROTO;
	}
	for (int i = 0; i < n && !bad; i += 2) {
		const char *k = fields[i], *s = fields[i + 1];
		size_t kl = lens[i], sl = lens[i + 1];
#define IS(name) (kl == strlen(name) && !memcmp(k, name, kl))
		if (IS("v")) {
			seen |= F_V;
			if (sl != 1 || s[0] != ENTRY_VERSION[0])
				bad = "version (v) is not " ENTRY_VERSION;
		} else if (IS("o")) {
			seen |= F_O;
			if (text(s, sl, &e->origin) || !sl)
				bad = "origin (o)";
		} else if (IS("r")) {
			seen |= F_R;
			if (number(s, sl, 1, INT64_MAX, &v))
				bad = "request id (r)";
			e->req = (uint64_t)v;
		} else if (IS("s")) {
			seen |= F_S;
			if (number(s, sl, 0, 1000, &v))
				bad = "step (s)";
			e->step = (int)v;
		} else if (IS("st")) {
			seen |= F_ST;
			if (text(s, sl, &e->stage) || !sl)
				bad = "stage (st)";
		} else if (IS("p")) {
			seen |= F_P;
			if (text(s, sl, &e->pipeline))
				bad = "pipeline (p)";
		} else if (IS("t")) {
			seen |= F_T;
			if (number(s, sl, 0, 1000, &v))
				bad = "tries (t)";
			e->tries = (int)v;
		} else if (IS("dl")) {
			if (number(s, sl, 0, INT64_MAX, &v))
				bad = "deadline (dl)";
			e->deadline_unix_ms = v;
		} else if (IS("pr")) {
			if (number(s, sl, 0, INT32_MAX, &v))
				bad = "priority (pr)";
			e->priority = (int)v;
		} else if (IS("m")) {
			if (text(s, sl, &e->meta))
				bad = "metadata (m)";
		} else if (IS("l")) {
			seen |= F_L;
			if (number(s, sl, 0, INT64_MAX, &v))
				bad = "length (l)";
			e->len = (size_t)v;
		} else if (IS("b")) {
			seen |= F_B;
			free(e->payload);
			e->payload = bt_malloc(sl + 1);
			memcpy(e->payload, s, sl);
			e->payload[sl] = '\0';
			blen = sl;
		} else if (IS("ref")) {
			seen |= F_B;
			if (text(s, sl, &e->ref) || sl == 0 || s[0] != '/')
				bad = "reference (ref), not an absolute path";
		} else if (IS("n")) {
			seen |= F_N;
			if (text(s, sl, &e->node))
				bad = "node (n)";
		} else if (IS("c")) {
			seen |= F_C;
			if (number(s, sl, 0, BT_CODE_COUNT - 1, &v))
				bad = "code (c)";
			e->code = (int)v;
		} else if (IS("e")) {
			if (text(s, sl, &e->error))
				bad = "error (e)";
		} else if (IS("qu") || IS("ru")) {
			if (number(s, sl, 0, INT64_MAX, &v))
				bad = "timing (qu, ru)";
			*(k[0] == 'q' ? &e->queue_us : &e->run_us) = (uint64_t)v;
		}
		/* Unknown fields are a newer writer's additions: ignored. */
#undef IS
	}
	unsigned need =
	    F_V | F_O | F_R | F_S | F_L | F_B | (reply ? (F_C | F_N) : (F_ST | F_P | F_T));
	if (!bad && (seen & need) != need)
		bad = "a required field (missing)";
	if (!bad && e->payload && blen != e->len)
		bad = "payload (b) whose size is not its length (l)";
	if (!bad && e->meta) {
		json_t *m = json_loads(e->meta, 0, NULL);
		if (!json_is_object(m))
			bad = "metadata (m), not a JSON object";
		json_decref(m);
	}
	if (bad) {
		snprintf(why, whylen, "bad %s", bad);
		bt_entry_release(e);
		return BT_EPROTO;
	}
	return 0;
}
