/*
 * Unit tests of the pure parts of shared queues (src/cluster/entry.c and
 * the `queue:` section of src/config): stream entries and replies survive
 * encoding, bad fields are refused with what was bad, and configuration
 * mistakes name FILE:LINE:COL and the key.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "cluster/cluster.h"
#include "config/config.h"

static int decode(struct bt_entry *out, int reply, const char **argv, const size_t *lens, int n,
		  char *why)
{
	return bt_entry_decode(out, reply, argv, lens, n, why, 200);
}

Test(entry, an_entry_survives_encoding_with_binary_payload)
{
	char payload[] = {'a', '\0', 'b', '\n', (char)0xff};
	struct bt_entry e = {0}, d;
	e.origin = "n1.42.abc";
	e.req = 7;
	e.step = 1;
	e.stage = "ocr";
	e.pipeline = "docs";
	e.tries = 2;
	e.deadline_unix_ms = 1796490000123LL;
	e.priority = 2147483647;
	e.meta = "{\"k\":\"v\"}";
	e.payload = payload;
	e.len = sizeof(payload);
	const char *argv[BT_ENTRY_MAX_FIELDS];
	size_t lens[BT_ENTRY_MAX_FIELDS];
	char scratch[BT_ENTRY_SCRATCH], why[200];
	int n = bt_entry_fields(&e, argv, lens, scratch);
	cr_assert(n > 0 && n <= BT_ENTRY_MAX_FIELDS && n % 2 == 0);
	cr_assert_eq(decode(&d, 0, argv, lens, n, why), 0, "%s", why);
	cr_assert_str_eq(d.origin, "n1.42.abc");
	cr_assert_eq(d.req, 7);
	cr_assert_eq(d.step, 1);
	cr_assert_str_eq(d.stage, "ocr");
	cr_assert_str_eq(d.pipeline, "docs");
	cr_assert_eq(d.tries, 2);
	cr_assert_eq(d.deadline_unix_ms, 1796490000123LL);
	cr_assert_eq(d.priority, 2147483647);
	cr_assert_str_eq(d.meta, "{\"k\":\"v\"}");
	cr_assert_eq(d.len, sizeof(payload));
	cr_assert_eq(memcmp(d.payload, payload, sizeof(payload)), 0);
	cr_assert_null(d.ref);
	bt_entry_release(&d);
}

Test(entry, a_reply_survives_encoding_with_a_reference)
{
	struct bt_entry e = {0}, d;
	e.reply = 1;
	e.origin = "n1";
	e.req = 99;
	e.step = 0;
	e.node = "n2";
	e.code = 5;
	e.error = "the replica died";
	e.queue_us = 12;
	e.run_us = 3456;
	e.ref = "/mnt/shared/x.out";
	e.len = 5000000;
	const char *argv[BT_ENTRY_MAX_FIELDS];
	size_t lens[BT_ENTRY_MAX_FIELDS];
	char scratch[BT_ENTRY_SCRATCH], why[200];
	int n = bt_entry_fields(&e, argv, lens, scratch);
	cr_assert_eq(decode(&d, 1, argv, lens, n, why), 0, "%s", why);
	cr_assert_str_eq(d.node, "n2");
	cr_assert_eq(d.code, 5);
	cr_assert_str_eq(d.error, "the replica died");
	cr_assert_eq(d.queue_us, 12);
	cr_assert_eq(d.run_us, 3456);
	cr_assert_str_eq(d.ref, "/mnt/shared/x.out");
	cr_assert_eq(d.len, 5000000);
	cr_assert_null(d.payload);
	bt_entry_release(&d);
	/* A reply is not an entry: it lacks the stage, pipeline and tries. */
	cr_assert_eq(decode(&d, 0, argv, lens, n, why), BT_EPROTO);
	cr_assert(strstr(why, "missing"), "%s", why);
}

/* Decodes a hand-written field list; returns the error phrase or "" on success. */
static const char *try_fields(int reply, const char *const *f)
{
	static char why[200];
	const char *argv[64];
	size_t lens[64];
	int n = 0;
	while (f[n]) {
		argv[n] = f[n];
		lens[n] = strlen(f[n]);
		n++;
	}
	struct bt_entry d;
	why[0] = '\0';
	if (bt_entry_decode(&d, reply, argv, lens, n, why, sizeof(why)) == 0)
		bt_entry_release(&d);
	return why;
}

#define ENTRY(...)                                                                                 \
	((const char *[]){"v", "1", "o", "n1", "r", "3", "s", "0", "st", "a", "p", "p", "t", "0",  \
			  "l", "2", __VA_ARGS__, NULL})

Test(entry, bad_fields_are_refused_with_what_was_bad)
{
	cr_assert_str_eq(try_fields(0, ENTRY("b", "hi")), "");
	cr_assert(strstr(try_fields(0, ENTRY("b", "hey")), "payload (b)"));
	cr_assert(strstr(try_fields(0, ENTRY("b", "hi", "ref", "relative/x")), "reference"));
	cr_assert(strstr(try_fields(0, ENTRY("b", "hi", "m", "[1]")), "metadata"));
	cr_assert(strstr(try_fields(0, ENTRY("b", "hi", "m", "{bad")), "metadata"));
	cr_assert(strstr(try_fields(0, ENTRY("b", "hi", "dl", "-5")), "deadline"));
	cr_assert(strstr(try_fields(0, ENTRY("b", "hi", "r", "0")), "request id"));
	cr_assert(strstr(try_fields(0, ENTRY("b", "hi", "s", "x")), "step"));
	cr_assert(strstr(try_fields(0, ENTRY("b", "hi", "v", "2")), "version"));
	cr_assert(strstr(try_fields(0, ENTRY("zz")), "odd number"));
	/* No payload at all. */
	cr_assert(strstr(try_fields(0, ENTRY("m", "{}")), "missing"));
	/* Unknown fields are a newer writer's: ignored. */
	cr_assert_str_eq(try_fields(0, ENTRY("b", "hi", "future", "x")), "");
	cr_assert(
	    strstr(try_fields(1, (const char *[]){"v", "1", "o", "n1", "r", "3", "s", "0", "n",
						  "n2", "c", "99", "l", "0", "b", "", NULL}),
		   "code"));
}

static const char *load(const char *text)
{
	static char err[1024];
	struct bt_config cfg;
	err[0] = '\0';
	if (bt_config_parse("/tmp/b.yaml", text, strlen(text), &cfg, err, sizeof(err)) == 0)
		bt_config_release(&cfg);
	return err;
}

#define STAGE "stages:\n  a:\n    command: [/bin/cat]\n"
#define PIPE  "pipelines:\n  p: [a]\n"

Test(queue_config, a_shared_queue_is_parsed)
{
	struct bt_config cfg;
	char err[1024];
	const char *text =
	    "queue: {backend: redis, url: \"redis://10.0.0.5:6390/3\", namespace: docs,"
	    " node: gpu-1, claim_after_ms: 5000, inline_max_bytes: 1000}\n" STAGE
	    "  b:\n    command: [/bin/cat]\n    queue: {backend: local}\n"
	    "pipelines:\n  p: [a, b]\n";
	cr_assert_eq(bt_config_parse("/tmp/b.yaml", text, strlen(text), &cfg, err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_str_eq(cfg.queue.host, "10.0.0.5");
	cr_assert_eq(cfg.queue.port, 6390);
	cr_assert_eq(cfg.queue.db, 3);
	cr_assert_str_eq(cfg.queue.ns, "docs");
	cr_assert_str_eq(cfg.queue.node, "gpu-1");
	cr_assert_eq(cfg.queue.claim_after_ms, 5000);
	cr_assert_eq(cfg.queue.inline_max_bytes, 1000);
	cr_assert_eq(cfg.stages[0].queue_backend, BT_QUEUE_REDIS);
	cr_assert_eq(cfg.stages[1].queue_backend, BT_QUEUE_LOCAL);
	cr_assert(bt_config_uses_redis(&cfg));
	bt_config_release(&cfg);
	/* local stays the default. */
	cr_assert_eq(
	    bt_config_parse("/tmp/b.yaml", STAGE PIPE, strlen(STAGE PIPE), &cfg, err, sizeof(err)),
	    0);
	cr_assert_not(bt_config_uses_redis(&cfg));
	bt_config_release(&cfg);
}

Test(queue_config, mistakes_name_the_line_and_the_key)
{
	cr_assert_str_eq(
	    load("queue: {backend: redis}\n" STAGE PIPE),
	    "/tmp/b.yaml:1:8: 'queue' with backend redis needs 'url' (redis://HOST:PORT/DB)");
	cr_assert_str_eq(load("queue: {backend: rabbit, url: redis://h}\n" STAGE PIPE),
			 "/tmp/b.yaml:1:18: 'queue.backend' must be local or redis, not 'rabbit'");
	cr_assert_str_eq(load("queue: {url: \"http://h:1\"}\n" STAGE PIPE),
			 "/tmp/b.yaml:1:14: 'queue.url' must start with redis://: 'http://h:1'");
	cr_assert_str_eq(
	    load("queue: {url: \"redis://h:0\"}\n" STAGE PIPE),
	    "/tmp/b.yaml:1:14: 'queue.url' has a bad port (1 to 65535): 'redis://h:0'");
	cr_assert_str_eq(load("queue: {url: \"redis://u:pw@h\"}\n" STAGE PIPE),
			 "/tmp/b.yaml:1:14: 'queue.url' has a user or password: put the password "
			 "in queue.password_file and an ACL user in queue.user, out of the url "
			 "that logs and status show: 'redis://u:pw@h'");
	cr_assert_str_eq(load("queue: {url: \"redis://h\", user: alice}\n" STAGE PIPE),
			 "/tmp/b.yaml:1:8: 'queue.user' needs 'queue.password_file' (the user's "
			 "password)");
	cr_assert_str_eq(load("queue: {url: \"redis://h\", user: \"a b\"}\n" STAGE PIPE),
			 "/tmp/b.yaml:1:33: 'queue.user' must be a Redis user name (no spaces), "
			 "not 'a b'");
	cr_assert_str_eq(
	    load("queue: {url: \"redis://h/x\"}\n" STAGE PIPE),
	    "/tmp/b.yaml:1:14: 'queue.url' has a bad database number after '/': 'redis://h/x'");
	cr_assert_str_eq(
	    load("queue: {url: \"redis://h\", claim_after_ms: 5}\n" STAGE PIPE),
	    "/tmp/b.yaml:1:43: 'queue.claim_after_ms' must be between 100 and 86400000, not 5");
	cr_assert(strstr(load("queue: {url: \"redis://h\", prefetch: 4}\n" STAGE PIPE),
			 "/tmp/b.yaml:1:27: unknown key 'prefetch' in 'queue'"));
	cr_assert_str_eq(
	    load("queue: {url: \"redis://h\", shared_dir: /nonexistent-baton}\n" STAGE PIPE),
	    "/tmp/b.yaml:1:39: 'queue.shared_dir' '/nonexistent-baton' is not a directory");
	/* A stage in redis without a server named at the top. */
	cr_assert_str_eq(load(STAGE "    queue: {backend: redis}\n" PIPE),
			 "/tmp/b.yaml:4:12: stage 'a' has its queue in redis: the top-level "
			 "'queue' needs 'url' (redis://HOST:PORT/DB)");
	cr_assert(strstr(load(STAGE "    queue: {backend: redis, url: x}\n" PIPE),
			 "/tmp/b.yaml:4:29: unknown key 'url' in 'queue' of a stage"));
}
