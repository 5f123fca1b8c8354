/*
 * Unit tests of the spool's pure parts (src/stream/spool.c): session keys
 * as directory names, item extensions, all-or-nothing writes and the
 * repair of a results file cut mid-line.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "stream/stream.h"

TestSuite(spool, .timeout = 20);

static void expect_key(const char *key, const char *want)
{
	char out[3 * 128 + 1];
	bt_spool_encode_key(key, out, sizeof(out));
	cr_assert_str_eq(out, want, "key '%s' became '%s', not '%s'", key, out, want);
}

Test(spool, keys_become_names_that_cannot_climb_or_hide)
{
	expect_key("384", "384");
	expect_key("ORDER_12-b.x", "ORDER_12-b.x");
	expect_key("../etc", "%2E.%2Fetc");
	expect_key(".hidden", "%2Ehidden");
	expect_key("a/b", "a%2Fb");
	expect_key("a b", "a%20b");
	expect_key("", "%");
	expect_key("\xc3\xa9", "%C3%A9");
	/* At most 128 bytes of key are used. */
	char long_key[300], out[3 * 128 + 1];
	memset(long_key, 'k', sizeof(long_key) - 1);
	long_key[sizeof(long_key) - 1] = '\0';
	bt_spool_encode_key(long_key, out, sizeof(out));
	cr_assert_eq(strlen(out), 128);
}

Test(spool, item_extensions_follow_the_content_type)
{
	cr_assert_str_eq(bt_spool_ext("image/jpeg"), "jpg");
	cr_assert_str_eq(bt_spool_ext("IMAGE/PNG"), "png");
	cr_assert_str_eq(bt_spool_ext("text/plain; charset=utf-8"), "txt");
	cr_assert_str_eq(bt_spool_ext("image/jpegx"), "bin");
	cr_assert_str_eq(bt_spool_ext(NULL), "bin");
}

static char dir[64];

static void mkdir_tmp(void)
{
	snprintf(dir, sizeof(dir), "/tmp/baton-unit-spool-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
}

Test(spool, a_results_file_cut_mid_line_is_cut_back_to_its_last_line)
{
	mkdir_tmp();
	char path[128];
	snprintf(path, sizeof(path), "%s/results.jsonl", dir);
	cr_assert_eq(bt_spool_repair_lines(path), 0); /* no file: no lines */
	FILE *f = fopen(path, "w");
	fputs("{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3,\"stre", f);
	fclose(f);
	cr_assert_eq(bt_spool_repair_lines(path), 2);
	struct stat sb;
	stat(path, &sb);
	cr_assert_eq(sb.st_size, 20);
	cr_assert_eq(bt_spool_repair_lines(path), 2);
	unlink(path);
	rmdir(dir);
}

Test(spool, an_atomic_write_leaves_the_whole_file_and_no_temporary)
{
	mkdir_tmp();
	cr_assert_eq(bt_spool_write_atomic(dir, "__EOS__", "{\"a\":1}", 7), 0);
	char path[128];
	snprintf(path, sizeof(path), "%s/__EOS__", dir);
	FILE *f = fopen(path, "r");
	char buf[16] = "";
	cr_assert_eq(fread(buf, 1, sizeof(buf), f), 7);
	fclose(f);
	cr_assert_str_eq(buf, "{\"a\":1}");
	snprintf(path, sizeof(path), "%s/.__EOS__.tmp", dir);
	cr_assert_neq(access(path, F_OK), 0);
	cr_assert_eq(bt_spool_write_atomic("/nonexistent-baton-dir", "x", "y", 1), -ENOENT);
	snprintf(path, sizeof(path), "%s/__EOS__", dir);
	unlink(path);
	rmdir(dir);
}
