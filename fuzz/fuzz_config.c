/*
 * libFuzzer target of the configuration loader (src/config): YAML text as
 * an operator may write it.  The loader resolves paths against the config
 * file's directory, so the file is named /tmp/fuzz-config/baton.yaml and
 * that directory holds a few fixtures (a workdir, a venv, a warm-up
 * payload, a token, an executable) that let valid configurations get deep.
 * The loader must never write: its fopen is ours (see build.sh).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"

#define FUZZ_DIR  "/tmp/fuzz-config"
#define FUZZ_PATH FUZZ_DIR "/baton.yaml"
#define MAX_READ  (1 << 20) /* bytes of a file the loader may read */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
FILE *bt_fuzz_fopen(const char *restrict path, const char *restrict mode);

static FILE *devnull;	    /* where the resolved plan is printed */
static int home_fd, cwd_fd; /* libFuzzer's working directory, and the loader's */
static int verbose;	    /* BT_FUZZ_VERBOSE=1: print each outcome (to check seeds) */

/*
 * config.c is compiled with -Dfopen=bt_fuzz_fopen.  The loader only reads
 * (warm-up payloads, token files); a write would be a bug, and a read of
 * something that is not a small regular file (/dev/zero, a FIFO, a
 * terminal) would hang the fuzzer without telling us anything new.
 */
FILE *bt_fuzz_fopen(const char *restrict path, const char *restrict mode)
{
	struct stat st;

	if (strpbrk(mode, "wa+")) {
		fprintf(stderr, "fuzz_config: the config loader opened '%s' with mode '%s'\n", path,
			mode);
		abort();
	}
	if (stat(path, &st) != 0)
		return NULL; /* errno from stat: ENOENT, EACCES … */
	if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
		errno = EACCES;
		return NULL;
	}
	if (st.st_size > MAX_READ) {
		errno = EFBIG;
		return NULL;
	}
	return fopen(path, mode);
}

static void put_file(const char *name, const char *text, mode_t mode)
{
	char path[256], tmp[256];
	snprintf(path, sizeof(path), "%s/%s", FUZZ_DIR, name);
	snprintf(tmp, sizeof(tmp), "%s.%ld", path, (long)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text) || close(fd) ||
	    chmod(tmp, mode) || rename(tmp, path)) {
		perror(path);
		exit(1);
	}
}

/* Builds the fixtures once; later runs find them in place. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const char *const dirs[] = {FUZZ_DIR,
					   FUZZ_DIR "/w",
					   FUZZ_DIR "/bin",
					   FUZZ_DIR "/envs",
					   FUZZ_DIR "/envs/detect",
					   FUZZ_DIR "/envs/detect/bin",
					   FUZZ_DIR "/wheels",
					   FUZZ_DIR "/cwd",
					   FUZZ_DIR "/cwd/bin",
					   NULL};
	(void)argc;
	(void)argv;
	for (const char *const *d = dirs; *d; d++) {
		if (mkdir(*d, 0755) != 0 && errno != EEXIST) {
			perror(*d);
			exit(1);
		}
	}
	put_file("bin/worker", "#!/bin/sh\nexit 0\n", 0755);
	put_file("cwd/bin/worker", "#!/bin/sh\nexit 0\n", 0755);
	put_file("envs/detect/bin/python3", "#!/bin/sh\nexit 0\n", 0755);
	put_file("w/data.txt", "not a program\n", 0644);
	put_file("warmup.json", "{\"warmup\": true}\n", 0644);
	put_file("token", "0123456789abcdef0123456789abcdef\n", 0600);
	put_file("requirements.txt", "bt_probe\n", 0644);
	/*
	 * The loader runs in FUZZ_DIR/cwd, which is neither the config's
	 * directory nor a workdir: a path resolved against baton's own working
	 * directory finds cwd/bin/worker there and comes out relative, which
	 * exercise() catches.  libFuzzer keeps its own cwd for its file names.
	 */
	home_fd = open(".", O_RDONLY | O_DIRECTORY);
	cwd_fd = open(FUZZ_DIR "/cwd", O_RDONLY | O_DIRECTORY);
	if (home_fd < 0 || cwd_fd < 0) {
		perror(FUZZ_DIR "/cwd");
		exit(1);
	}
	/* The same PATH on every machine, so that a crash reproduces. */
	setenv("PATH", FUZZ_DIR "/bin:/usr/bin:/bin", 1);
	verbose = getenv("BT_FUZZ_VERBOSE") != NULL;
	devnull = fopen("/dev/null", "w");
	if (!devnull) {
		perror("/dev/null");
		exit(1);
	}
	/* A buffer of ours: stdio's own, allocated at the first print, looks like a leak. */
	static char devnull_buf[BUFSIZ];
	setvbuf(devnull, devnull_buf, _IOFBF, sizeof(devnull_buf));
	return 0;
}

static void broken(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_config: property broken: %s: %s\n", what, detail);
	abort();
}

/* Uses what the daemon uses of a loaded configuration. */
static void exercise(const struct bt_config *cfg)
{
	char err[1024];
	char *const extra[] = {"BATON_FD=3", "PATH=/nowhere", NULL};
	char *const parent[] = {"PATH=/usr/bin", "PYTHONHOME=/x", "HOME=/root", NULL};

	bt_config_print_plan(cfg, devnull);
	(void)bt_config_check_runnable(cfg, err, sizeof(err));
	for (int i = 0; i < cfg->nstages; i++) {
		const struct bt_stage_config *st = &cfg->stages[i];
		if (!st->argv || !st->argv[0] || st->argv[0][0] != '/')
			broken("argv[0] is not absolute (config.h)",
			       st->argv && st->argv[0] ? st->argv[0] : "(none)");
		if (!st->workdir || st->workdir[0] != '/')
			broken("workdir is not absolute (config.h)", st->name);
		if (bt_config_stage_index(cfg, st->name) != i)
			broken("two stages have one name", st->name);
		bt_config_free_environ(bt_config_stage_environ(st, parent, extra));
		char *p = bt_config_find_program(st, st->argv[0]);
		free(p);
	}
	for (int i = 0; i < cfg->npipelines; i++) {
		const struct bt_pipeline_config *pl = &cfg->pipelines[i];
		if (bt_config_pipeline_index(cfg, pl->name) != i)
			broken("two pipelines have one name", pl->name);
		for (int s = 0; s < pl->nstages; s++)
			if (pl->stages[s] < 0 || pl->stages[s] >= cfg->nstages)
				broken("a pipeline names a stage out of range", pl->name);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bt_config cfg;
	char err[1024] = "";

	/* A copy of exactly the input's size, so that ASan sees any read past it. */
	char *text = malloc(size ? size : 1);
	memcpy(text, data, size);
	if (fchdir(cwd_fd))
		abort();
	int r = bt_config_parse(FUZZ_PATH, text, size, &cfg, err, sizeof(err));
	if (verbose)
		fprintf(stderr, "fuzz_config: %s\n", r ? err : "valid");
	if (r == 0) {
		if (verbose)
			bt_config_print_plan(&cfg, stderr);
		exercise(&cfg);
		bt_config_release(&cfg);
	} else if (strncmp(err, FUZZ_PATH, strlen(FUZZ_PATH)) != 0) {
		/* Every error names the file first (STYLE.md). */
		broken("an error does not start with the file name", err);
	}
	free(text);
	if (fchdir(home_fd))
		abort();
	return 0;
}
