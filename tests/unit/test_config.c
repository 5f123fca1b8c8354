/*
 * Unit tests of the configuration loader (src/config): defaults, every
 * rejection with its FILE:LINE:COL, path and command resolution against a
 * temporary directory, and the environment a stage's replicas get.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"

/* The temporary directory of the running test (realpath) and its config. */
static char dir[PATH_MAX];
static char cfgpath[PATH_MAX + 16];
static char err[1024];
static struct bt_config cfg;

static void setup(void)
{
	char tmpl[] = "/tmp/baton-unit-config-XXXXXX";
	cr_assert_not_null(mkdtemp(tmpl), "mkdtemp: %s", strerror(errno));
	cr_assert_not_null(realpath(tmpl, dir));
	snprintf(cfgpath, sizeof(cfgpath), "%s/baton.yaml", dir);
	memset(&cfg, 0, sizeof(cfg));
	err[0] = '\0';
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void teardown(void)
{
	bt_config_release(&cfg);
	if (dir[0])
		nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(config, .init = setup, .fini = teardown, .timeout = 20);

/* ---- helpers ---- */

static char *path_in(const char *rel)
{
	return bt_asprintf("%s/%s", dir, rel);
}

static void make_dir(const char *rel)
{
	char *p = path_in(rel);
	cr_assert_eq(mkdir(p, 0755), 0, "mkdir %s: %s", p, strerror(errno));
	free(p);
}

static void put_file(const char *rel, const char *text, mode_t mode)
{
	char *p = path_in(rel);
	FILE *f = fopen(p, "w");
	cr_assert_not_null(f, "cannot create %s: %s", p, strerror(errno));
	fputs(text, f);
	fclose(f);
	cr_assert_eq(chmod(p, mode), 0);
	free(p);
}

static int parse(const char *text)
{
	bt_config_release(&cfg);
	return bt_config_parse(cfgpath, text, strlen(text), &cfg, err, sizeof(err));
}

static void expect_ok(const char *text)
{
	int r = parse(text);
	cr_assert_eq(r, 0, "config refused: %s", err);
}

/* A failed load reports BT_ECONFIG and leaves nothing in cfg. */
static void expect_failed(int r)
{
	cr_assert_eq(r, BT_ECONFIG, "config accepted or wrong error %d", r);
	cr_assert_null(cfg.stages);
	cr_assert_null(cfg.pipelines);
	cr_assert_null(cfg.path);
	cr_assert_eq(cfg.nstages, 0);
}

/*
 * Expects an error that starts with "CFGPATH:LINE:COL: " and contains each
 * of the NULL-terminated needles.
 */
static void expect_error_at(const char *text, int line, int col, ...)
{
	expect_failed(parse(text));
	char prefix[PATH_MAX + 64];
	snprintf(prefix, sizeof(prefix), "%s:%d:%d: ", cfgpath, line, col);
	cr_assert(!strncmp(err, prefix, strlen(prefix)), "error '%s' does not start with '%s'",
		  err, prefix);
	va_list ap;
	va_start(ap, col);
	for (const char *needle; (needle = va_arg(ap, const char *));)
		cr_assert_not_null(strstr(err, needle), "error '%s' lacks '%s'", err, needle);
	va_end(ap);
}

/* The same without a position (file-level errors). */
static void expect_error(const char *text, const char *needle)
{
	expect_failed(parse(text));
	cr_assert(!strncmp(err, cfgpath, strlen(cfgpath)), "error '%s' does not name %s",
		  err, cfgpath);
	cr_assert_not_null(strstr(err, needle), "error '%s' lacks '%s'", err, needle);
}

/*
 * argv[0] must be absolute and name want; "DIR/./x" is accepted as well as
 * "DIR/x" (the loader joins without normalising).
 */
static void expect_same_file(const char *argv0, const char *want)
{
	char real[PATH_MAX];
	cr_assert_eq(argv0[0], '/', "argv[0] '%s' is not absolute", argv0);
	cr_assert_not_null(realpath(argv0, real), "argv[0] '%s': %s", argv0,
			   strerror(errno));
	cr_assert_str_eq(real, want, "argv[0] is '%s', want '%s'", argv0, want);
}

#define PIPELINE_P "pipelines:\n  p: [s]\n"
#define MINIMAL "stages:\n  s:\n    command: [true]\n" PIPELINE_P

/* ---- valid configurations ---- */

Test(config, minimal_config_gets_the_documented_defaults)
{
	expect_ok(MINIMAL);
	cr_assert_str_eq(cfg.path, cfgpath);
	cr_assert_str_eq(cfg.dir, dir);
	cr_assert_str_eq(cfg.listen_host, "127.0.0.1");
	cr_assert_eq(cfg.listen_port, 8080);
	cr_assert_eq(cfg.log_level, BT_LOG_INFO);
	cr_assert_eq(cfg.nstages, 1);
	const struct bt_stage_config *st = &cfg.stages[0];
	cr_assert_str_eq(st->name, "s");
	cr_assert_eq(st->line, 2);
	cr_assert_eq(st->col, 3);
	cr_assert_eq(st->argc, 1);
	cr_assert_eq(st->argv[0][0], '/', "argv[0] '%s' is not absolute", st->argv[0]);
	cr_assert_not_null(strstr(st->argv[0], "/true"));
	cr_assert_eq(access(st->argv[0], X_OK), 0);
	cr_assert_null(st->argv[1]);
	cr_assert_str_eq(st->workdir, dir);
	cr_assert_null(st->venv);
	cr_assert_eq(st->venv_missing, 0);
	cr_assert_eq(st->nenv, 0);
	cr_assert_eq(st->replicas_initial, 1);
	cr_assert_eq(st->max_ongoing, 1);
	cr_assert_eq(st->queue_max, 1024);
	cr_assert_eq(st->timeout_ms, 60000);
	cr_assert_eq(st->retries, 1);
	cr_assert_eq(st->start_timeout_ms, 120000);
	cr_assert_eq(st->backoff_ms, 2000);
	cr_assert_eq(st->backoff_max_ms, 60000);
	cr_assert_eq(st->max_failures, 5);
	cr_assert_eq(st->reset_after_ms, 60000);
	cr_assert_eq(st->retry_failed_after_ms, 0);
	cr_assert_eq(st->grace_ms, 5000);
	cr_assert_null(st->warmup_file);
	cr_assert_eq(cfg.npipelines, 1);
	cr_assert_str_eq(cfg.pipelines[0].name, "p");
	cr_assert_eq(cfg.pipelines[0].nstages, 1);
	cr_assert_eq(cfg.pipelines[0].stages[0], 0);
	cr_assert_eq(cfg.pipelines[0].max_inflight, 0);
}

Test(config, every_stage_key_is_read_into_its_field)
{
	put_file("warm.bin", "WARM", 0644);
	expect_ok("stages:\n"
		  "  s:\n"
		  "    command: [true, --flag, 'two words']\n"
		  "    mode: persistent\n"
		  "    replicas: {initial: 3}\n"
		  "    max_ongoing: 4\n"
		  "    queue_max: 50\n"
		  "    timeout_ms: 1500\n"
		  "    retries: 0\n"
		  "    start_timeout_ms: 9000\n"
		  "    ping_interval_ms: 0\n"
		  "    ping_timeout_ms: 700\n"
		  "    warmup: {payload_file: warm.bin, required: true}\n"
		  "    restart: {backoff_ms: 100, backoff_max_ms: 800, max_failures: 9,\n"
		  "              reset_after_ms: 3000, retry_failed_after_ms: 4000}\n"
		  "    stop: {grace_ms: 250}\n" PIPELINE_P);
	const struct bt_stage_config *st = &cfg.stages[0];
	cr_assert_eq(st->argc, 3);
	cr_assert_str_eq(st->argv[1], "--flag");
	cr_assert_str_eq(st->argv[2], "two words");
	cr_assert_null(st->argv[3]);
	cr_assert_eq(st->replicas_initial, 3);
	cr_assert_eq(st->max_ongoing, 4);
	cr_assert_eq(st->queue_max, 50);
	cr_assert_eq(st->timeout_ms, 1500);
	cr_assert_eq(st->retries, 0);
	cr_assert_eq(st->start_timeout_ms, 9000);
	cr_assert_eq(st->ping_interval_ms, 0);
	cr_assert_eq(st->ping_timeout_ms, 700);
	cr_assert_eq(st->backoff_ms, 100);
	cr_assert_eq(st->backoff_max_ms, 800);
	cr_assert_eq(st->max_failures, 9);
	cr_assert_eq(st->reset_after_ms, 3000);
	cr_assert_eq(st->retry_failed_after_ms, 4000);
	cr_assert_eq(st->grace_ms, 250);
	char *warm = path_in("warm.bin");
	cr_assert_str_eq(st->warmup_file, warm);
	free(warm);
	cr_assert_eq(st->warmup_len, 4);
	cr_assert_arr_eq(st->warmup_payload, "WARM", 4);
	cr_assert_eq(st->warmup_required, 1);
}

Test(config, replicas_may_be_a_plain_number)
{
	expect_ok("stages:\n  s:\n    command: [true]\n    replicas: 7\n" PIPELINE_P);
	cr_assert_eq(cfg.stages[0].replicas_initial, 7);
}

Test(config, top_level_keys_are_read)
{
	expect_ok("listen: 127.0.0.1:9123\n"
		  "log_level: debug\n"
		  "max_request_bytes: 1000\n"
		  "max_payload_bytes: 2000\n" MINIMAL);
	cr_assert_str_eq(cfg.listen_host, "127.0.0.1");
	cr_assert_eq(cfg.listen_port, 9123);
	cr_assert_eq(cfg.log_level, BT_LOG_DEBUG);
	cr_assert_eq(cfg.max_request_bytes, 1000);
	cr_assert_eq(cfg.max_payload_bytes, 2000);
}

Test(config, backoff_max_below_backoff_is_raised_to_it)
{
	expect_ok("stages:\n  s:\n    command: [true]\n"
		  "    restart: {backoff_ms: 5000, backoff_max_ms: 10}\n" PIPELINE_P);
	cr_assert_eq(cfg.stages[0].backoff_ms, 5000);
	cr_assert_eq(cfg.stages[0].backoff_max_ms, 5000);
}

Test(config, stage_and_pipeline_indexes_are_found_by_name)
{
	expect_ok("stages:\n"
		  "  a:\n    command: [true]\n"
		  "  b:\n    command: [true]\n"
		  "pipelines:\n  one: [b, a]\n  two: [a]\n");
	cr_assert_eq(bt_config_stage_index(&cfg, "a"), 0);
	cr_assert_eq(bt_config_stage_index(&cfg, "b"), 1);
	cr_assert_eq(bt_config_stage_index(&cfg, "c"), -1);
	cr_assert_eq(bt_config_pipeline_index(&cfg, "two"), 1);
	cr_assert_eq(bt_config_pipeline_index(&cfg, "three"), -1);
	cr_assert_eq(cfg.pipelines[0].nstages, 2);
	cr_assert_eq(cfg.pipelines[0].stages[0], 1);
	cr_assert_eq(cfg.pipelines[0].stages[1], 0);
	cr_assert_eq(cfg.stages[1].line, 4);
	cr_assert_eq(cfg.stages[1].col, 3);
}

Test(config, short_and_long_pipeline_forms_with_max_inflight)
{
	expect_ok("stages:\n"
		  "  detect:\n    command: [true]\n"
		  "  ocr:\n    command: [true]\n"
		  "pipelines:\n"
		  "  documents: [detect, ocr]\n"
		  "  receipts:\n"
		  "    stages: [ocr]\n"
		  "    max_inflight: 256\n"
		  "  block:\n"
		  "    max_inflight: 0\n"
		  "    stages:\n"
		  "      - detect\n"
		  "      - ocr\n"
		  "      - detect\n");
	cr_assert_eq(cfg.npipelines, 3);
	const struct bt_pipeline_config *pl = cfg.pipelines;
	cr_assert_str_eq(pl[0].name, "documents");
	cr_assert_eq(pl[0].nstages, 2);
	cr_assert_eq(pl[0].stages[0], 0);
	cr_assert_eq(pl[0].stages[1], 1);
	cr_assert_eq(pl[0].max_inflight, 0);
	cr_assert_str_eq(pl[1].name, "receipts");
	cr_assert_eq(pl[1].nstages, 1);
	cr_assert_eq(pl[1].stages[0], 1);
	cr_assert_eq(pl[1].max_inflight, 256);
	cr_assert_eq(pl[2].nstages, 3);
	cr_assert_eq(pl[2].stages[2], 0);
	cr_assert_eq(pl[2].max_inflight, 0);
}

Test(config, env_values_are_kept_in_order_as_strings)
{
	expect_ok("stages:\n  s:\n    command: [true]\n"
		  "    env: {OMP_NUM_THREADS: \"1\", MODE: fast, N: 3, EMPTY: ''}\n" PIPELINE_P);
	const struct bt_stage_config *st = &cfg.stages[0];
	cr_assert_eq(st->nenv, 4);
	const char *want[][2] = {{"OMP_NUM_THREADS", "1"}, {"MODE", "fast"}, {"N", "3"},
				 {"EMPTY", ""}};
	for (int i = 0; i < 4; i++) {
		cr_assert_str_eq(st->env[i].name, want[i][0]);
		cr_assert_str_eq(st->env[i].value, want[i][1]);
	}
}

Test(config, listen_accepts_ipv6_and_localhost)
{
	expect_ok("listen: '[::1]:9000'\n" MINIMAL);
	cr_assert_str_eq(cfg.listen_host, "::1");
	cr_assert_eq(cfg.listen_port, 9000);
	expect_ok("listen: localhost:81\n" MINIMAL);
	cr_assert_str_eq(cfg.listen_host, "127.0.0.1");
	cr_assert_eq(cfg.listen_port, 81);
}

Test(config, relative_config_path_resolves_against_the_cwd)
{
	bt_config_release(&cfg);
	int r = bt_config_parse("baton.yaml", MINIMAL, strlen(MINIMAL), &cfg, err,
				sizeof(err));
	cr_assert_eq(r, 0, "%s", err);
	char cwd[PATH_MAX];
	cr_assert_not_null(getcwd(cwd, sizeof(cwd)));
	cr_assert_str_eq(cfg.dir, cwd);
	cr_assert_str_eq(cfg.stages[0].workdir, cwd);
}

/* ---- paths and commands ---- */

Test(config, load_reads_the_file_and_resolves_paths_against_its_directory)
{
	/* The test's cwd is tests/unit: "sub" must be found next to the file. */
	make_dir("sub");
	put_file("sub/worker.sh", "#!/bin/sh\nexit 0\n", 0755);
	put_file("baton.yaml",
		 "stages:\n  s:\n    command: [./worker.sh, x]\n    workdir: sub\n" PIPELINE_P,
		 0644);
	int r = bt_config_load(cfgpath, &cfg, err, sizeof(err));
	cr_assert_eq(r, 0, "%s", err);
	char *wd = path_in("sub"), *cmd = path_in("sub/worker.sh");
	cr_assert_str_eq(cfg.stages[0].workdir, wd);
	expect_same_file(cfg.stages[0].argv[0], cmd);
	cr_assert_str_eq(cfg.stages[0].argv[1], "x");
	free(wd);
	free(cmd);
}

Test(config, load_of_a_missing_file_is_an_error_naming_it)
{
	char *p = path_in("nope.yaml");
	expect_failed(bt_config_load(p, &cfg, err, sizeof(err)));
	cr_assert(!strncmp(err, p, strlen(p)), "error '%s'", err);
	cr_assert_not_null(strstr(err, "cannot read"), "error '%s'", err);
	free(p);
}

Test(config, absolute_workdir_is_kept)
{
	make_dir("abs");
	char *abs = path_in("abs");
	char *text = bt_asprintf("stages:\n  s:\n    command: [true]\n    workdir: %s\n" PIPELINE_P,
				 abs);
	expect_ok(text);
	cr_assert_str_eq(cfg.stages[0].workdir, abs);
	free(text);
	free(abs);
}

Test(config, workdir_that_does_not_exist_is_an_error_at_its_value)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n    workdir: missing\n" PIPELINE_P,
			4, 14, "workdir", "missing", "'s'", NULL);
}

Test(config, workdir_that_is_a_file_is_an_error)
{
	put_file("afile", "", 0644);
	expect_error_at("stages:\n  s:\n    command: [true]\n    workdir: afile\n" PIPELINE_P,
			4, 14, "workdir", "not a directory", NULL);
}

Test(config, command_with_a_slash_is_resolved_against_the_workdir)
{
	make_dir("w");
	put_file("w/run", "#!/bin/sh\n", 0755);
	put_file("run", "#!/bin/sh\n", 0755); /* the wrong one, next to the config */
	expect_ok("stages:\n  s:\n    command: [./run]\n    workdir: w\n" PIPELINE_P);
	char *want = path_in("w/run");
	expect_same_file(cfg.stages[0].argv[0], want);
	free(want);
}

Test(config, command_not_found_in_path_is_an_error_at_the_command)
{
	expect_error_at("stages:\n  s:\n    command: [baton-no-such-command-xyz]\n" PIPELINE_P,
			3, 14, "baton-no-such-command-xyz", "not found", "'s'", NULL);
}

Test(config, command_path_that_does_not_exist_is_an_error)
{
	expect_error_at("stages:\n  s:\n    command: [./nothing.sh]\n" PIPELINE_P, 3, 14,
			"./nothing.sh", "does not exist", NULL);
}

Test(config, command_that_is_not_executable_is_an_error)
{
	put_file("worker.py", "print('hi')\n", 0644);
	expect_error_at("stages:\n  s:\n    command: [./worker.py]\n" PIPELINE_P, 3, 14,
			"./worker.py", "not an executable file", NULL);
}

Test(config, command_that_is_a_directory_is_an_error)
{
	make_dir("adir");
	expect_error_at("stages:\n  s:\n    command: [./adir]\n" PIPELINE_P, 3, 14,
			"not an executable file", NULL);
}

Test(config, command_is_searched_in_the_stage_env_path)
{
	make_dir("tools");
	put_file("tools/mytool", "#!/bin/sh\n", 0755);
	char *tools = path_in("tools");
	char *text = bt_asprintf("stages:\n  s:\n    command: [mytool]\n"
				 "    env: {PATH: '/nonexistent:%s'}\n" PIPELINE_P,
				 tools);
	expect_ok(text);
	char *want = path_in("tools/mytool");
	cr_assert_str_eq(cfg.stages[0].argv[0], want);
	free(want);
	free(text);
	free(tools);
}

Test(config, missing_venv_sets_venv_missing)
{
	expect_ok("stages:\n  s:\n    command: [true]\n    venv: envs/none\n" PIPELINE_P);
	char *venv = path_in("envs/none");
	cr_assert_str_eq(cfg.stages[0].venv, venv);
	cr_assert_eq(cfg.stages[0].venv_missing, 1);
	free(venv);
}

Test(config, existing_venv_is_searched_first_for_the_command)
{
	make_dir("venv");
	make_dir("venv/bin");
	put_file("venv/bin/true", "#!/bin/sh\n", 0755);
	expect_ok("stages:\n  s:\n    command: [true]\n    venv: venv\n" PIPELINE_P);
	const struct bt_stage_config *st = &cfg.stages[0];
	char *venv = path_in("venv"), *cmd = path_in("venv/bin/true");
	cr_assert_str_eq(st->venv, venv);
	cr_assert_eq(st->venv_missing, 0);
	cr_assert_str_eq(st->argv[0], cmd);
	free(venv);
	free(cmd);
}

Test(config, missing_warmup_file_is_an_error_at_its_name)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n"
			"    warmup: {payload_file: nope.png}\n" PIPELINE_P,
			4, 28, "nope.png", "warm-up", NULL);
}

Test(config, warmup_without_payload_file_is_an_error)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n"
			"    warmup: {required: true}\n" PIPELINE_P,
			4, 13, "payload_file", NULL);
}

/* ---- rejections with their position ---- */

Test(config, unknown_top_level_key_is_an_error_at_its_line_and_column)
{
	expect_error_at("listen: 127.0.0.1:8080\ncolour: blue\n" MINIMAL, 2, 1,
			"unknown key 'colour'", "listen", NULL);
}

Test(config, unknown_stage_key_is_an_error_at_its_line_and_column)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n    comand: [true]\n" PIPELINE_P,
			4, 5, "unknown key 'comand'", "stage 's'", "command", NULL);
}

Test(config, unknown_key_in_a_nested_section_is_an_error)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n    restart: {backof_ms: 1}\n" PIPELINE_P,
			4, 15, "unknown key 'backof_ms'", "backoff_ms", NULL);
}

Test(config, unknown_pipeline_key_is_an_error)
{
	expect_error_at(
		"stages:\n  s:\n    command: [true]\npipelines:\n  p:\n    stages: [s]\n    inflight: 3\n",
		7, 5, "unknown key 'inflight'", "pipeline 'p'", NULL);
}

Test(config, quoted_string_for_an_integer_is_an_error_at_the_value)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n    timeout_ms: \"abc\"\n" PIPELINE_P,
			4, 17, "'timeout_ms'", "integer", NULL);
}

Test(config, quoted_number_for_an_integer_says_to_drop_the_quotes)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n    retries: \"2\"\n" PIPELINE_P,
			4, 14, "'retries' must be an integer", "quoted", "'2'", "drop the quotes",
			NULL);
}

Test(config, pipeline_that_is_a_scalar_names_both_forms)
{
	expect_error_at("stages:\n  s:\n    command: [true]\npipelines:\n  p: s\n", 5, 6,
			"pipeline 'p'", "list of stages", "mapping with 'stages'", "a scalar", NULL);
}

Test(config, word_for_an_integer_is_an_error_at_the_value)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n    timeout_ms: abc\n" PIPELINE_P,
			4, 17, "'timeout_ms' must be an integer", "abc", NULL);
}

Test(config, integer_with_a_unit_suffix_is_an_error)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n    timeout_ms: 10s\n" PIPELINE_P,
			4, 17, "'timeout_ms'", "10s", NULL);
}

Test(config, list_for_replicas_is_an_error)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n    replicas: [1]\n" PIPELINE_P,
			4, 15, "'replicas'", "a list", NULL);
}

Test(config, out_of_range_integers_are_errors)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n    replicas: 0\n" PIPELINE_P, 4,
			15, "'replicas'", "between 1 and 256", NULL);
	expect_error_at("stages:\n  s:\n    command: [true]\n    retries: -1\n" PIPELINE_P, 4,
			14, "'retries'", "between 0", NULL);
	expect_error_at("stages:\n  s:\n    command: [true]\n    queue_max: 0\n" PIPELINE_P, 4,
			16, "'queue_max'", NULL);
	expect_error_at("stages:\n  s:\n    command: [true]\n"
			"    timeout_ms: 99999999999999999999999\n" PIPELINE_P,
			4, 17, "'timeout_ms'", NULL);
}

Test(config, non_boolean_for_a_flag_is_an_error)
{
	put_file("w.bin", "x", 0644);
	expect_error_at("stages:\n  s:\n    command: [true]\n"
			"    warmup: {payload_file: w.bin, required: maybe}\n" PIPELINE_P,
			4, 45, "warmup.required", "true or false", NULL);
}

Test(config, missing_command_is_an_error_at_the_stage)
{
	expect_error_at("stages:\n  s:\n    retries: 2\n" PIPELINE_P, 2, 3, "'s'",
			"no 'command'", NULL);
}

Test(config, command_as_a_string_is_an_error)
{
	expect_error_at("stages:\n  s:\n    command: python3 worker.py\n" PIPELINE_P, 3, 14,
			"'command'", "list", NULL);
}

Test(config, empty_command_is_an_error)
{
	expect_error_at("stages:\n  s:\n    command: []\n" PIPELINE_P, 3, 14,
			"'command'", "empty", NULL);
}

Test(config, pipeline_naming_an_unknown_stage_is_an_error_at_the_name)
{
	expect_error_at("stages:\n  s:\n    command: [true]\npipelines:\n  p: [s, nope]\n", 5,
			10, "unknown stage 'nope'", "'p'", NULL);
}

Test(config, long_pipeline_naming_an_unknown_stage_is_an_error_at_the_name)
{
	expect_error_at("stages:\n  s:\n    command: [true]\npipelines:\n  p:\n    stages:\n"
			"      - s\n      - ghost\n",
			8, 9, "unknown stage 'ghost'", NULL);
}

Test(config, pipeline_without_stages_is_an_error)
{
	expect_error_at("stages:\n  s:\n    command: [true]\npipelines:\n  p:\n    max_inflight: 2\n",
			5, 3, "'p'", "no 'stages'", NULL);
	expect_error_at("stages:\n  s:\n    command: [true]\npipelines:\n  p: []\n", 5, 6,
			"no stages", NULL);
}

Test(config, duplicate_top_level_key_is_an_error_at_the_second)
{
	expect_error_at("listen: 127.0.0.1:1\n" MINIMAL "listen: 127.0.0.1:2\n", 7, 1,
			"duplicate key 'listen'", NULL);
}

Test(config, duplicate_stage_key_is_an_error)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n    retries: 1\n    retries: 2\n" PIPELINE_P,
			5, 5, "duplicate key 'retries'", NULL);
}

Test(config, duplicate_stage_name_is_an_error)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n  s:\n    command: [true]\n" PIPELINE_P,
			4, 3, "duplicate key 's'", NULL);
}

Test(config, invalid_stage_name_is_an_error)
{
	expect_error_at("stages:\n  'a b':\n    command: [true]\n" PIPELINE_P, 2, 3,
			"stage name 'a b'", NULL);
}

Test(config, bad_listen_values_are_errors_at_the_value)
{
	static const char *const bad[] = {
		"nohost",         ":8080",         "127.0.0.1:",   "127.0.0.1:99999",
		"127.0.0.1:-1",   "127.0.0.1:http", "example.com:80", "[::1:80",
		"300.1.1.1:80",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *text = bt_asprintf("listen: '%s'\n" MINIMAL, bad[i]);
		expect_error_at(text, 1, 9, "'listen'", NULL);
		free(text);
	}
	expect_error_at("listen: [127.0.0.1, 80]\n" MINIMAL, 1, 9, "'listen' must be a string",
			NULL);
}

Test(config, bad_log_level_is_an_error)
{
	expect_error_at("log_level: loud\n" MINIMAL, 1, 12, "'log_level'", "loud", NULL);
}

Test(config, yaml_syntax_error_names_its_line)
{
	expect_error_at("stages:\n  s:\n    command: [true\n" PIPELINE_P, 4, 10, "YAML", NULL);
	expect_error_at("stages:\n  s:\n    command: [true]\n   bad: 1\n" PIPELINE_P, 4, 4,
			"YAML", NULL);
}

Test(config, tab_indentation_is_a_syntax_error)
{
	expect_error_at("stages:\n\ts:\n" PIPELINE_P, 2, 1, "YAML", NULL);
}

Test(config, empty_file_is_an_error)
{
	expect_error("", "empty");
	expect_error("# just a comment\n\n", "empty");
}

Test(config, top_level_that_is_not_a_mapping_is_an_error)
{
	expect_error_at("- a\n- b\n", 1, 1, "top level", "mapping", NULL);
}

Test(config, missing_stages_or_pipelines_is_an_error)
{
	expect_error(PIPELINE_P, "missing required key 'stages'");
	expect_error("stages:\n  s:\n    command: [true]\n", "missing required key 'pipelines'");
	expect_error_at("stages: {}\n" PIPELINE_P, 1, 9, "'stages' is empty", NULL);
}

Test(config, env_value_that_is_not_a_string_is_an_error)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n    env: {A: [1, 2]}\n" PIPELINE_P,
			4, 14, "env 'A'", NULL);
}

Test(config, venv_that_is_a_file_is_an_error)
{
	put_file("afile", "", 0644);
	expect_error_at("stages:\n  s:\n    command: [true]\n    venv: afile\n" PIPELINE_P, 4,
			11, "venv", "is not a directory", NULL);
}

Test(config, env_cannot_set_batons_own_variables)
{
	expect_error_at("stages:\n  s:\n    command: [true]\n    env: {A: b, BATON_FD: \"7\"}\n"
			PIPELINE_P, 4, 17, "env 'BATON_FD'", "set by baton", NULL);
}

Test(config, error_text_is_truncated_to_the_buffer_and_terminated)
{
	char small[24];
	memset(small, 'Z', sizeof(small));
	int r = bt_config_parse(cfgpath, "bogus: 1\n", 9, &cfg, small, sizeof(small));
	cr_assert_eq(r, BT_ECONFIG);
	cr_assert_eq(strlen(small), sizeof(small) - 1);
}

/* ---- the replica environment ---- */

/* Counts the entries of env named name; *value gets the first one's value. */
static int env_count(char **env, const char *name, const char **value)
{
	size_t n = strlen(name);
	int count = 0;
	*value = NULL;
	for (size_t i = 0; env[i]; i++) {
		if (!strncmp(env[i], name, n) && env[i][n] == '=') {
			if (!count)
				*value = env[i] + n + 1;
			count++;
		}
	}
	return count;
}

static void expect_env(char **env, const char *name, const char *want)
{
	const char *v;
	int n = env_count(env, name, &v);
	if (!want) {
		cr_assert_eq(n, 0, "%s is set to '%s'", name, v);
		return;
	}
	cr_assert_eq(n, 1, "%s appears %d times", name, n);
	cr_assert_str_eq(v, want, "%s is '%s', want '%s'", name, v, want);
}

static size_t env_len(char **env)
{
	size_t n = 0;
	while (env[n])
		n++;
	return n;
}

Test(config, stage_environ_with_venv_puts_its_bin_first_and_layers_overrides)
{
	cr_assert_eq(setenv("PATH", "/usr/bin:/bin", 1), 0);
	expect_ok("stages:\n  s:\n    command: [true]\n    venv: venv\n"
		  "    env: {A: stage, B: stage}\n" PIPELINE_P);
	char *const parent[] = {"HOME=/home/u", "PATH=/usr/bin:/bin", "PYTHONHOME=/opt/py",
				"VIRTUAL_ENV=/old", "A=parent", "B=parent", "C=parent",
				"KEEP=1", NULL};
	char *const extra[] = {"B=extra", "C=extra", "BATON_FD=3", NULL};
	char **env = bt_config_stage_environ(&cfg.stages[0], parent, extra);
	char *venv = path_in("venv");
	char *path = bt_asprintf("%s/bin:/usr/bin:/bin", venv);
	expect_env(env, "PATH", path);
	expect_env(env, "VIRTUAL_ENV", venv);
	expect_env(env, "PYTHONHOME", NULL);
	expect_env(env, "HOME", "/home/u");
	expect_env(env, "KEEP", "1");
	expect_env(env, "A", "stage");
	expect_env(env, "B", "extra");
	expect_env(env, "C", "extra");
	expect_env(env, "BATON_FD", "3");
	cr_assert_eq(env_len(env), 8);
	bt_config_free_environ(env);
	free(path);
	free(venv);
}

Test(config, stage_environ_with_venv_builds_path_on_the_stage_path)
{
	expect_ok("stages:\n  s:\n    command: [true]\n    venv: v\n"
		  "    env: {PATH: '/opt/tools:/bin'}\n" PIPELINE_P);
	char *const parent[] = {"PATH=/usr/bin", NULL};
	char **env = bt_config_stage_environ(&cfg.stages[0], parent, NULL);
	char *want = bt_asprintf("%s/v/bin:/opt/tools:/bin", dir);
	expect_env(env, "PATH", want);
	bt_config_free_environ(env);
	free(want);
}

Test(config, stage_environ_without_venv_keeps_the_parent_path_and_pythonhome)
{
	expect_ok("stages:\n  s:\n    command: [true]\n    env: {OMP_NUM_THREADS: '1'}\n" PIPELINE_P);
	char *const parent[] = {"PATH=/p", "PYTHONHOME=/opt/py", "OMP_NUM_THREADS=8", NULL};
	char *const extra[] = {"BATON_STAGE=s", NULL};
	char **env = bt_config_stage_environ(&cfg.stages[0], parent, extra);
	expect_env(env, "PATH", "/p");
	expect_env(env, "PYTHONHOME", "/opt/py");
	expect_env(env, "VIRTUAL_ENV", NULL);
	expect_env(env, "OMP_NUM_THREADS", "1");
	expect_env(env, "BATON_STAGE", "s");
	cr_assert_eq(env_len(env), 4);
	bt_config_free_environ(env);
}

Test(config, stage_environ_matches_whole_names_only)
{
	expect_ok("stages:\n  s:\n    command: [true]\n    env: {AB: stage}\n" PIPELINE_P);
	char *const parent[] = {"A=1", "ABC=2", "AB=3", "NOEQUALS", NULL};
	char *const extra[] = {"ABCD=4", NULL};
	char **env = bt_config_stage_environ(&cfg.stages[0], parent, extra);
	expect_env(env, "A", "1");
	expect_env(env, "ABC", "2");
	expect_env(env, "AB", "stage");
	expect_env(env, "ABCD", "4");
	cr_assert_eq(env_len(env), 5);
	bt_config_free_environ(env);
}

Test(config, stage_environ_with_no_parent_and_no_extra)
{
	expect_ok("stages:\n  s:\n    command: [true]\n    env: {X: y}\n" PIPELINE_P);
	char **env = bt_config_stage_environ(&cfg.stages[0], NULL, NULL);
	expect_env(env, "X", "y");
	cr_assert_eq(env_len(env), 1);
	bt_config_free_environ(env);
}

/* Regressions: each of these was a bug once. */

/* The venv's PATH must give way to extra's. */
Test(config, extra_path_overrides_the_venv_path)
{
	expect_ok("stages:\n  s:\n    command: [true]\n    venv: venv\n" PIPELINE_P);
	char *const parent[] = {"PATH=/usr/bin", NULL};
	char *const extra[] = {"PATH=/only/this", NULL};
	char **env = bt_config_stage_environ(&cfg.stages[0], parent, extra);
	expect_env(env, "PATH", "/only/this");
	bt_config_free_environ(env);
}

/* ... nor VIRTUAL_ENV against the stage's own env. */
Test(config, stage_env_virtual_env_overrides_the_venv_one)
{
	expect_ok("stages:\n  s:\n    command: [true]\n    venv: venv\n"
		  "    env: {VIRTUAL_ENV: /mine}\n" PIPELINE_P);
	char *const parent[] = {"PATH=/usr/bin", NULL};
	char **env = bt_config_stage_environ(&cfg.stages[0], parent, NULL);
	expect_env(env, "VIRTUAL_ENV", "/mine");
	bt_config_free_environ(env);
}

/* parse_command copies argv items with strdup, cutting at an escaped NUL. */
Test(config, command_item_with_a_nul_byte_is_an_error)
{
	expect_error_at("stages:\n  s:\n    command: [\"tr\\0ue\"]\n" PIPELINE_P, 3, 15,
			"NUL", NULL);
}

/* Only the first YAML document is read; the rest is silently ignored. */
Test(config, a_second_yaml_document_is_an_error)
{
	expect_failed(parse(MINIMAL "---\nbogus: 1\n"));
}

/* strtol accepts leading blanks and a sign in the port. */
Test(config, listen_port_with_blanks_or_sign_is_an_error)
{
	expect_error_at("listen: '127.0.0.1: 80'\n" MINIMAL, 1, 9, "'listen'", NULL);
	expect_error_at("listen: '127.0.0.1:+80'\n" MINIMAL, 1, 9, "'listen'", NULL);
}

/* ---- streams ---- */

#define STREAM_STAGES                                                                    \
	"stages:\n"                                                                      \
	"  cam:\n"                                                                       \
	"    kind: source\n"                                                             \
	"    command: [true, '{url}']\n"                                                 \
	"  ocr:\n"                                                                       \
	"    command: [true]\n"                                                          \
	"  proc:\n"                                                                      \
	"    command: [true]\n"

Test(config, a_stream_makes_its_pipelines_and_one_slot_per_station)
{
	expect_ok(STREAM_STAGES "streams:\n"
				"  orders:\n"
				"    source: cam\n"
				"    stations:\n"
				"      - {name: s1, url: 'rtsp://127.0.0.1:8554/a'}\n"
				"      - rtsp://127.0.0.1:8554/b\n"
				"    items: [ocr]\n"
				"    session: {key: order_id, idle_timeout_ms: 2500, max_items: 7,\n"
				"              missing_key: close}\n"
				"    process: [ocr, proc]\n"
				"    flow: {credits: 3, overflow: drop_oldest}\n");
	cr_assert_eq(cfg.nstreams, 1);
	const struct bt_stream_config *s = &cfg.streams[0];
	cr_assert_str_eq(s->name, "orders");
	cr_assert_eq(s->nstations, 2);
	cr_assert_str_eq(s->stations[1].name, "station2");
	cr_assert_str_eq(s->stations[1].url, "rtsp://127.0.0.1:8554/b");
	cr_assert_str_eq(s->key, "order_id");
	cr_assert_eq(s->idle_timeout_ms, 2500);
	cr_assert_eq(s->max_items, 7);
	cr_assert_eq(s->missing_key, BT_MISSING_CLOSE);
	cr_assert_eq(s->credits, 3);
	cr_assert_eq(s->overflow, BT_OVERFLOW_DROP_OLDEST);
	cr_assert_eq(cfg.npipelines, 2);
	cr_assert_str_eq(cfg.pipelines[s->items_pipeline].name, "orders.items");
	cr_assert_str_eq(cfg.pipelines[s->process_pipeline].name, "orders.process");
	cr_assert_eq(cfg.pipelines[s->process_pipeline].nstages, 2);
	/* Without `replicas:`, every listed station runs. */
	const struct bt_stage_config *cam = &cfg.stages[s->source];
	cr_assert(cam->source);
	cr_assert_eq(cam->replicas_initial, 2);
	cr_assert_eq(cam->replicas_max, 2);
	cr_assert_eq(cam->ping_interval_ms, 0);
	char *spool = path_in("spool");
	cr_assert_str_eq(s->spool, spool);
	free(spool);
	char *results = path_in("spool/results.jsonl");
	cr_assert_str_eq(s->results, results);
	free(results);
}

Test(config, stream_defaults_follow_the_seed)
{
	expect_ok(STREAM_STAGES "streams:\n"
				"  o:\n"
				"    source: cam\n"
				"    stations: [x]\n"
				"    process: [proc]\n");
	const struct bt_stream_config *s = &cfg.streams[0];
	cr_assert_eq(s->idle_timeout_ms, 10000);
	cr_assert_eq(s->items_pipeline, -1);
	cr_assert_str_eq(s->key, "session");
	cr_assert_eq(s->overflow, BT_OVERFLOW_BLOCK);
	cr_assert_eq(s->credits, 8);
	cr_assert_eq(s->missing_key, BT_MISSING_IGNORE);
}

Test(config, stream_errors_name_the_line_and_the_key)
{
	const char *head = STREAM_STAGES "streams:\n  o:\n    source: cam\n";
	char text[2048];
#define STREAM_ERROR(tail, line, col, needle)                                      \
	do {                                                                       \
		snprintf(text, sizeof(text), "%s%s", head, tail);                  \
		expect_error_at(text, line, col, needle, NULL);                    \
	} while (0)
	STREAM_ERROR("    stations: [x]\n    process: [proc]\n    sesion: {}\n", 14, 5,
		     "unknown key 'sesion' in stream 'o'");
	STREAM_ERROR("    stations: [x]\n    process: [proc]\n    flow: {overflow: drop}\n", 14,
		     22, "'flow.overflow' must be 'block' or 'drop_oldest'");
	STREAM_ERROR("    stations: [x]\n    process: [proc]\n    session: {missing_key: 3}\n",
		     14, 28, "'session.missing_key' must be 'ignore' or 'close'");
	STREAM_ERROR("    stations: []\n    process: [proc]\n", 12, 15,
		     "'stations' of stream 'o' must be a non-empty list");
	STREAM_ERROR("    stations: [{name: a, url: x}, {name: a, url: y}]\n    process: [proc]\n",
		     12, 35, "two stations of stream 'o' are named 'a'");
	STREAM_ERROR("    stations: [{name: a}]\n    process: [proc]\n", 12, 16,
		     "a station of stream 'o' needs 'url'");
	STREAM_ERROR("    stations: [x]\n    process: [cam]\n", 13, 14,
		     "names source stage 'cam'");
	STREAM_ERROR("    stations: [x]\n    process: []\n", 13, 14,
		     "'process' of stream 'o' has no stages");
	STREAM_ERROR("    stations: [x]\n", 10, 3, "stream 'o' needs 'process'");
#undef STREAM_ERROR
	expect_error_at(STREAM_STAGES "streams:\n  o:\n    source: ocr\n    stations: [x]\n"
				      "    process: [proc]\n",
			11, 13, "stage 'ocr' is not a source: give it 'kind: source'", NULL);
	expect_error_at(STREAM_STAGES "pipelines:\n  p: [cam]\n", 10, 3,
			"pipeline 'p' names source stage 'cam'", NULL);
	expect_error_at(STREAM_STAGES "pipelines:\n  p: [ocr]\n", 1, 1,
			"source stage 'cam' feeds no stream", NULL);
	expect_error_at("stages:\n  cam:\n    kind: camera\n    command: [true]\npipelines:\n"
			"  p: [cam]\n",
			3, 11, "'kind' must be 'worker' or 'source'", NULL);
	expect_error_at("stages:\n  cam:\n    kind: source\n    command: [true]\n"
			"    batch: {max_size: 2}\nstreams:\n  o: {source: cam, stations: [x], "
			"process: [cam]}\n",
			5, 12, "is a source (kind: source)", NULL);
	expect_error_at("stages:\n  cam:\n    kind: source\n    command: [true]\n"
			"    replicas: {initial: 3}\n  proc:\n    command: [true]\nstreams:\n"
			"  o:\n    source: cam\n    stations: [x, y]\n    process: [proc]\n",
			5, 15, "starts 3 stations (replicas.initial) but stream 'o' lists 2",
			NULL);
}

/* ---- run: (PostgreSQL source and sink) ---- */

#define RUN_HEAD MINIMAL "run:\n"
#define RUN_SRC "  source:\n    postgresql:\n      query: SELECT id, v FROM t\n      key: id\n"
#define RUN_SINK "  sink:\n    postgresql:\n      table: out\n"

Test(config, run_section_gets_its_defaults)
{
	expect_ok(RUN_HEAD RUN_SRC RUN_SINK);
	const struct bt_run_config *run = &cfg.run;
	cr_assert(run->present);
	cr_assert_null(run->pipeline);
	cr_assert_str_eq(run->src_query, "SELECT id, v FROM t");
	cr_assert_str_eq(run->src_key, "id");
	cr_assert_eq(run->page_rows, 1000);
	cr_assert_eq(run->unit, BT_RUN_PAGE);
	cr_assert_str_eq(run->src_connect, "");
	cr_assert_str_eq(run->sink_table, "out");
	cr_assert_eq(run->nsink_key, 1);
	cr_assert_str_eq(run->sink_key[0], "id");
	cr_assert_eq(run->nsink_columns, 0);
	cr_assert_str_eq(run->checkpoint_name, "out");
	cr_assert_str_eq(run->failures_table, "baton_failures");
	cr_assert_str_eq(run->checkpoint_table, "baton_checkpoints");
	cr_assert_eq(run->reconnect_max_s, 60);
}

Test(config, run_section_reads_every_key)
{
	expect_ok(RUN_HEAD "  pipeline: p\n  checkpoint: c1\n  reconnect_max_s: 5\n"
			   "  source:\n    postgresql:\n      connect: service=src\n"
			   "      query: SELECT 1 AS k\n      key: k\n      page_rows: 7\n"
			   "      request: row\n"
			   "  sink:\n    postgresql:\n      connect: dbname=x\n      table: s.out\n"
			   "      key: [a, b]\n      columns: {c: f, d: d}\n      jsonb: doc\n"
			   "      failures_table: f\n      checkpoint_table: cp\n");
	const struct bt_run_config *run = &cfg.run;
	cr_assert_str_eq(run->pipeline, "p");
	cr_assert_str_eq(run->checkpoint_name, "c1");
	cr_assert_eq(run->reconnect_max_s, 5);
	cr_assert_str_eq(run->src_connect, "service=src");
	cr_assert_eq(run->page_rows, 7);
	cr_assert_eq(run->unit, BT_RUN_ROW);
	cr_assert_eq(run->nsink_key, 2);
	cr_assert_str_eq(run->sink_key[1], "b");
	cr_assert_eq(run->nsink_columns, 2);
	cr_assert_str_eq(run->sink_columns[0], "c");
	cr_assert_str_eq(run->sink_fields[0], "f");
	cr_assert_str_eq(run->sink_jsonb, "doc");
	cr_assert_str_eq(run->failures_table, "f");
	cr_assert_str_eq(run->checkpoint_table, "cp");
}

Test(config, run_connect_with_a_password_is_refused_without_echoing_it)
{
	expect_error_at(RUN_HEAD "  source:\n    postgresql:\n      connect: host=db password=s3cret\n"
				 "      query: SELECT 1 AS k\n      key: k\n" RUN_SINK,
			9, 16, "must not hold a password", NULL);
	cr_assert_null(strstr(err, "s3cret"));
	expect_error_at(RUN_HEAD RUN_SRC "  sink:\n    postgresql:\n"
				 "      connect: postgresql://me:s3cret@db/x\n      table: out\n",
			13, 16, "must not hold a password", NULL);
	cr_assert_null(strstr(err, "s3cret"));
}

Test(config, run_errors_name_the_key_and_position)
{
	expect_error_at(RUN_HEAD "  source:\n    postgresql:\n      query: SELECT 1\n" RUN_SINK, 9, 7,
			"needs 'query' and 'key'", NULL);
	expect_error_at(RUN_HEAD RUN_SRC, 7, 3, "needs both 'source' and 'sink'", NULL);
	expect_error_at(RUN_HEAD RUN_SRC "  sink:\n    mysql: {}\n", 12, 5,
			"unknown key 'mysql'", "postgresql", NULL);
	expect_error_at(RUN_HEAD RUN_SRC RUN_SINK "  pipeline: nope\n", 7, 3,
			"'run.pipeline' names unknown pipeline 'nope'", NULL);
	expect_error_at(RUN_HEAD "  source:\n    postgresql:\n      query: SELECT 1\n      key: k\n"
				 "      request: batch\n" RUN_SINK,
			11, 16, "'source.request' must be page or row", NULL);
	expect_error_at(RUN_HEAD RUN_SRC RUN_SINK "      key: []\n", 14, 12,
			"'sink.key' must be a column name or a non-empty list", NULL);
}
