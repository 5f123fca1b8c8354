/*
 * `baton env setup|check CONFIG`: build each stage's environment, and
 * prove it works.  Setup creates the venv and installs requirements from
 * a local wheel directory only, idempotently (a stamp records what was
 * installed).  Check runs each stage's health_check inside its
 * environment, as a replica would run, and prints a table.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../config/config.h"
#include "cli.h"

extern char **environ;

#define CHECK_TIMEOUT_MS 60000
#define SETUP_TIMEOUT_MS (30 * 60 * 1000)
#define STAMP ".baton-requirements"

struct outcome {
	int status; /* exit status, or -1 when it did not run or timed out */
	char *output; /* stdout and stderr, together */
	double seconds;
	int timed_out;
};

/*
 * Runs argv (argv[0] absolute) in dir with env, its own process group,
 * capturing its output; kills the group at the timeout.
 */
static void run_program(char *const *argv, char *const *env, const char *dir, int timeout_ms,
			struct outcome *out)
{
	int fds[2];
	struct bt_buf buf = BT_BUF_INIT;
	uint64_t start = bt_now_ms();
	memset(out, 0, sizeof(*out));
	out->status = -1;
	if (pipe2(fds, O_CLOEXEC)) {
		out->output = bt_asprintf("pipe: %s", strerror(errno));
		return;
	}
	pid_t pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		out->output = bt_asprintf("fork: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		signal(SIGPIPE, SIG_DFL); /* baton ignores it; the check must not inherit that */
		setpgid(0, 0);
		int devnull = open("/dev/null", O_RDONLY);
		dup2(devnull, 0);
		dup2(fds[1], 1);
		dup2(fds[1], 2);
		if (chdir(dir)) {
			fprintf(stderr, "cannot enter '%s': %s\n", dir, strerror(errno));
			_exit(127);
		}
		execve(argv[0], argv, env);
		fprintf(stderr, "cannot execute '%s': %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(fds[1]);
	/*
	 * Until the check exits: a background process it left may hold the
	 * pipe open for ever, and only the check's own status counts.
	 */
	int ws, exited = 0;
	for (;;) {
		int left = timeout_ms - (int)(bt_now_ms() - start);
		if (!exited && waitpid(pid, &ws, WNOHANG) == pid)
			exited = 1;
		if (left <= 0) {
			if (!exited) {
				kill(-pid, SIGKILL);
				out->timed_out = 1;
			}
			break;
		}
		struct pollfd p = {fds[0], POLLIN, 0};
		/* Once it has exited, only what is already in the pipe is read. */
		if (poll(&p, 1, exited ? 0 : BT_MIN(left, 100)) <= 0) {
			if (exited)
				break;
			continue;
		}
		char chunk[4096];
		ssize_t n = read(fds[0], chunk, sizeof(chunk));
		if (n <= 0)
			break;
		if (buf.len < 1 << 20)
			bt_buf_append(&buf, chunk, (size_t)n);
	}
	close(fds[0]);
	if (!exited)
		waitpid(pid, &ws, 0);
	kill(-pid, SIGKILL); /* anything it left behind */
	if (!out->timed_out)
		out->status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
	out->seconds = (double)(bt_now_ms() - start) / 1000.0;
	bt_buf_reserve(&buf, 0);
	out->output = bt_buf_detach(&buf, NULL);
}

/* The last non-empty line of text, trimmed (errors usually end there). */
static void last_line(const char *text, char *out, size_t size)
{
	const char *end = text + strlen(text);
	while (end > text && (end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\r'))
		end--;
	const char *start = end;
	while (start > text && start[-1] != '\n')
		start--;
	snprintf(out, size, "%.*s", (int)(end - start), start);
}

/*
 * The first line that says it is an error: not indented (a traceback's
 * frames and source lines are) and containing "error" in any case, as
 * Python's "ModuleNotFoundError: ..." after "Traceback (most recent call
 * last):".  Without one, the last non-empty line.
 */
static void first_error_line(const char *text, char *out, size_t size)
{
	for (const char *line = text; *line;) {
		const char *end = strchr(line, '\n');
		if (!end)
			end = line + strlen(line);
		size_t n = (size_t)(end - line);
		while (n && (line[n - 1] == '\r' || line[n - 1] == ' '))
			n--;
		int found = 0;
		for (size_t k = 0; !found && n && line[0] != ' ' && line[0] != '\t' && k + 5 <= n; k++)
			found = !strncasecmp(line + k, "error", 5);
		if (found) {
			snprintf(out, size, "%.*s", (int)n, line);
			return;
		}
		line = *end ? end + 1 : end;
	}
	last_line(text, out, size);
}

/* ---- setup ----------------------------------------------------------------- */

static int file_exists(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0;
}

static char *read_text(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	struct bt_buf b = BT_BUF_INIT;
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		bt_buf_append(&b, chunk, n);
	fclose(f);
	bt_buf_reserve(&b, 0);
	return bt_buf_detach(&b, NULL);
}

/* What the requirements stamp records: the file and the wheels offered. */
static char *requirements_fingerprint(const struct bt_stage_config *st)
{
	char *req = read_text(st->setup_requirements);
	if (!req)
		return NULL;
	struct bt_buf b = BT_BUF_INIT;
	bt_buf_printf(&b, "requirements %s\n%s\nwheels %s\n", st->setup_requirements, req,
		      st->setup_wheels);
	free(req);
	DIR *dh = opendir(st->setup_wheels);
	struct dirent *e;
	while (dh && (e = readdir(dh)))
		if (e->d_name[0] != '.')
			bt_buf_printf(&b, "%s\n", e->d_name);
	if (dh)
		closedir(dh);
	return bt_buf_detach(&b, NULL);
}

static int venv_has_system_site_packages(const char *venv)
{
	char *cfgpath = bt_asprintf("%s/pyvenv.cfg", venv);
	char *text = read_text(cfgpath);
	free(cfgpath);
	int yes = text && strstr(text, "include-system-site-packages = true");
	free(text);
	return yes;
}

static void remove_tree(const char *path)
{
	char *argv[] = {"/bin/rm", "-rf", "--", (char *)path, NULL};
	struct outcome o;
	run_program(argv, environ, "/", 600000, &o);
	free(o.output);
}

/* Sets up one stage; prints one line; returns 0 or 1 (failed). */
static int setup_stage(const struct bt_stage_config *st, int force)
{
	char line[1024] = "";
	size_t o = 0;
	struct outcome out;
	char *python = bt_strdup(st->setup_python);
	if (!strchr(python, '/')) {
		/* The interpreter that makes the venv is outside it. */
		struct bt_stage_config outside = *st;
		outside.venv = NULL;
		char *found = bt_config_find_program(&outside, python);
		if (!found) {
			printf("%-16s failed: setup.python '%s' not found\n", st->name, python);
			free(python);
			return 1;
		}
		free(python);
		python = found;
	}
	if (force && file_exists(st->venv)) {
		remove_tree(st->venv);
		o += (size_t)snprintf(line + o, sizeof(line) - o, "removed; ");
	}
	char *venv_python = bt_asprintf("%s/bin/python", st->venv);
	int rc = 0;
	if (!file_exists(venv_python)) {
		char *argv[] = {python, "-m", "venv", NULL, NULL, NULL, NULL};
		int a = 3;
		if (st->setup_system_site_packages)
			argv[a++] = "--system-site-packages";
		if (!st->setup_requirements)
			argv[a++] = "--without-pip"; /* nothing to install: no pip needed */
		argv[a] = st->venv;
		run_program(argv, environ, "/", SETUP_TIMEOUT_MS, &out);
		if (out.status != 0) {
			char err[300];
			last_line(out.output, err, sizeof(err));
			printf("%-16s failed: cannot create venv %s: %s\n", st->name, st->venv,
			       out.timed_out ? "timed out" : err);
			rc = 1;
		} else {
			o += (size_t)snprintf(line + o, sizeof(line) - o, "venv %s created%s (%.1fs)",
					      st->venv,
					      st->setup_system_site_packages ? " with system site packages"
									     : "",
					      out.seconds);
		}
		free(out.output);
	} else if (venv_has_system_site_packages(st->venv) != st->setup_system_site_packages) {
		printf("%-16s failed: venv %s exists with system_site_packages %s; use --force-recreate\n",
		       st->name, st->venv, st->setup_system_site_packages ? "false" : "true");
		rc = 1;
	} else {
		o += (size_t)snprintf(line + o, sizeof(line) - o, "venv %s exists", st->venv);
	}
	if (!rc && st->setup_requirements) {
		char *fp = requirements_fingerprint(st);
		char *stamp_path = bt_asprintf("%s/" STAMP, st->venv);
		char *stamp = read_text(stamp_path);
		if (!fp) {
			printf("%-16s failed: cannot read %s\n", st->name, st->setup_requirements);
			rc = 1;
		} else if (stamp && !strcmp(stamp, fp)) {
			o += (size_t)snprintf(line + o, sizeof(line) - o, "; requirements up to date");
		} else {
			char *argv[] = {venv_python, "-m", "pip", "install", "--no-index",
					"--find-links", st->setup_wheels, "-r",
					st->setup_requirements, NULL};
			char **env = bt_config_stage_environ(st, environ,
							     (char *[]){"PIP_DISABLE_PIP_VERSION_CHECK=1",
									NULL});
			run_program(argv, env, st->workdir, SETUP_TIMEOUT_MS, &out);
			bt_config_free_environ(env);
			if (out.status != 0) {
				char err[300];
				last_line(out.output, err, sizeof(err));
				printf("%-16s failed: pip install from %s: %s\n", st->name,
				       st->setup_wheels, out.timed_out ? "timed out" : err);
				rc = 1;
			} else {
				/* Without its stamp the venv would be rebuilt next time: say so. */
				FILE *f = fopen(stamp_path, "w");
				int bad = !f || fputs(fp, f) < 0;
				if ((f && fclose(f)) || bad) {
					printf("%-16s failed: cannot write '%s': %s\n", st->name,
					       stamp_path, strerror(errno));
					rc = 1;
				}
				o += (size_t)snprintf(line + o, sizeof(line) - o,
						      "; requirements installed from %s (%.1fs)",
						      st->setup_wheels, out.seconds);
			}
			free(out.output);
		}
		free(fp);
		free(stamp);
		free(stamp_path);
	}
	if (!rc)
		printf("%-16s ok: %s\n", st->name, line);
	free(venv_python);
	free(python);
	return rc;
}

/* ---- check -------------------------------------------------------------------- */

static int check_stage(const struct bt_stage_config *st, const char *venv_state)
{
	char err[200] = "";
	const char *env_name = st->venv ? st->venv : "system";
	if (!st->health_check) {
		printf("%-16s %-40s %-8s %7s  %s\n", st->name, env_name, "-", "", "no health_check");
		return 0;
	}
	if (st->venv && venv_state) {
		printf("%-16s %-40s %-8s %7s  %s\n", st->name, env_name, "failed", "", venv_state);
		return 1;
	}
	char *prog = bt_config_find_program(st, st->health_check[0]);
	if (!prog) {
		snprintf(err, sizeof(err), "'%s' not found in the stage's environment",
			 st->health_check[0]);
		printf("%-16s %-40s %-8s %7s  %s\n", st->name, env_name, "failed", "", err);
		return 1;
	}
	int n = 0;
	while (st->health_check[n])
		n++;
	char **argv = bt_calloc((size_t)n + 1, sizeof(char *));
	argv[0] = prog;
	for (int i = 1; i < n; i++)
		argv[i] = st->health_check[i];
	char **env = bt_config_stage_environ(st, environ, NULL);
	struct outcome out;
	run_program(argv, env, st->workdir, CHECK_TIMEOUT_MS, &out);
	bt_config_free_environ(env);
	int ok = out.status == 0;
	if (!ok) {
		if (out.timed_out)
			snprintf(err, sizeof(err), "timed out after %ds", CHECK_TIMEOUT_MS / 1000);
		else
			first_error_line(out.output, err, sizeof(err));
		if (!err[0])
			snprintf(err, sizeof(err), "exit status %d", out.status);
	}
	printf("%-16s %-40s %-8s %6.2fs  %s\n", st->name, env_name, ok ? "ok" : "failed",
	       out.seconds, err);
	free(out.output);
	free(argv);
	free(prog);
	return !ok;
}

static int run(int argc, char **argv)
{
	const char *sub = argc > 1 ? argv[1] : NULL, *path = NULL, *only = NULL;
	int force = 0;
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--stage") && i + 1 < argc)
			only = argv[++i];
		else if (!strcmp(argv[i], "--force-recreate"))
			force = 1;
		else if (argv[i][0] != '-' && !path)
			path = argv[i];
		else
			return bt_cli_bad_arg(&bt_cmd_env, argc, argv, i);
	}
	if (!sub || sub[0] == '-')
		return bt_cli_missing(&bt_cmd_env, "setup or check");
	if (strcmp(sub, "setup") && strcmp(sub, "check")) {
		fprintf(stderr, "baton env: unknown subcommand '%s': setup or check\n", sub);
		bt_cli_usage(&bt_cmd_env, stderr);
		return BT_EXIT_USAGE;
	}
	if (!path)
		return bt_cli_missing(&bt_cmd_env, "CONFIG");
	if (force && strcmp(sub, "setup")) {
		fprintf(stderr, "baton env: --force-recreate is only for 'baton env setup'\n");
		return BT_EXIT_USAGE;
	}
	struct bt_config cfg;
	char err[1024];
	if (bt_config_load(path, &cfg, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		return BT_EXIT_USAGE;
	}
	if (only && bt_config_stage_index(&cfg, only) < 0) {
		fprintf(stderr, "baton env: no stage named '%s'\n", only);
		bt_config_release(&cfg);
		return BT_EXIT_USAGE;
	}
	int failed = 0;
	if (!strcmp(sub, "check"))
		printf("%-16s %-40s %-8s %7s  %s\n", "STAGE", "ENVIRONMENT", "RESULT", "TIME",
		       "FIRST ERROR");
	for (int i = 0; i < cfg.nstages; i++) {
		const struct bt_stage_config *st = &cfg.stages[i];
		if (only && strcmp(only, st->name))
			continue;
		if (!strcmp(sub, "setup")) {
			if (st->has_setup) {
				failed += setup_stage(st, force);
			} else if (st->venv_missing) {
				/* Said rather than guessed: how to build it is the config's to say. */
				printf("%-16s failed: venv %s does not exist and the stage has no `setup:`; "
				       "add `setup: {}` to it (a bare venv; see docs/config.md for "
				       "requirements), or create the venv yourself\n",
				       st->name, st->venv);
				failed++;
			} else {
				printf("%-16s ok: nothing to set up (%s)\n", st->name,
				       st->venv ? "its venv is managed by hand" : "plain environment");
			}
		} else {
			failed += check_stage(st, st->venv_missing ? "venv does not exist (run `baton env setup`)"
								   : NULL);
		}
	}
	bt_config_release(&cfg);
	return failed ? BT_EXIT_FAIL : BT_EXIT_OK;
}

const struct bt_cmd bt_cmd_env = {
	"env", "setup|check CONFIG [--stage S] [--force-recreate]",
	"create each stage's venv from local wheels, or run each stage's health_check", run,
	"setup: for each stage with setup:, creates its venv (with system site packages\n"
	"if asked) and installs its requirements from the local wheel directory, never\n"
	"from the network; what is already done is not done again.  A stage with a venv\n"
	"but no setup: is reported as failed while its venv does not exist.\n"
	"check: runs each stage's health_check inside its environment (venv, env,\n"
	"workdir; 60 s limit) and prints stage, environment, result, time, first error.\n"
	"\n"
	"options:\n"
	"  --stage S          only stage S\n"
	"  --force-recreate   setup: delete and recreate the venvs\n"
	"\n"
	"exit status: 0, 1 if a stage failed, 2 on a usage or configuration error.\n"
	"\n"
	"examples:\n"
	"  baton env setup examples/echo/baton.yaml\n"
	"  baton env check examples/documents/baton.yaml --stage detect\n"};
