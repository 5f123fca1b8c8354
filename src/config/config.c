/*
 * YAML → struct bt_config.  libyaml builds a node tree that keeps each
 * node's line and column; the walk below checks every key against the
 * section's list of known keys, so that an error can always say where and
 * what was expected.  The first error stops the load.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

struct ctx {
	const char *path;
	yaml_document_t *doc;
	char *err;
	size_t errlen;
	struct bt_config *cfg;
};

static int fail(struct ctx *c, const yaml_node_t *n, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct ctx *c, const yaml_node_t *n, const char *fmt, ...)
{
	char msg[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n)
		snprintf(c->err, c->errlen, "%s:%zu:%zu: %s", c->path,
			 n->start_mark.line + 1, n->start_mark.column + 1, msg);
	else
		snprintf(c->err, c->errlen, "%s: %s", c->path, msg);
	return BT_ECONFIG;
}

static yaml_node_t *node(struct ctx *c, int id)
{
	return yaml_document_get_node(c->doc, id);
}

static const char *type_name(const yaml_node_t *n)
{
	switch (n->type) {
	case YAML_SCALAR_NODE:
		return "a scalar";
	case YAML_SEQUENCE_NODE:
		return "a list";
	case YAML_MAPPING_NODE:
		return "a mapping";
	default:
		return "nothing";
	}
}

static const char *scalar(const yaml_node_t *n)
{
	return (const char *)n->data.scalar.value;
}

static int is_null(const yaml_node_t *n)
{
	if (n->type != YAML_SCALAR_NODE ||
	    n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return 0;
	const char *s = scalar(n);
	return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
	       !strcmp(s, "NULL");
}

static int has_nul(const yaml_node_t *n)
{
	return n->type == YAML_SCALAR_NODE && strlen(scalar(n)) != n->data.scalar.length;
}

static int get_string(struct ctx *c, const yaml_node_t *n, const char *key,
		      char **out)
{
	if (n->type != YAML_SCALAR_NODE || is_null(n))
		return fail(c, n, "'%s' must be a string, not %s", key,
			    is_null(n) ? "empty" : type_name(n));
	if (has_nul(n))
		return fail(c, n, "'%s' contains a NUL byte", key);
	free(*out);
	*out = bt_strdup(scalar(n));
	return 0;
}

static int get_int(struct ctx *c, const yaml_node_t *n, const char *key,
		   long long min, long long max, long long *out)
{
	if (n->type != YAML_SCALAR_NODE || is_null(n))
		return fail(c, n, "'%s' must be an integer, not %s", key,
			    is_null(n) ? "empty" : type_name(n));
	const char *s = scalar(n);
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || end == s || *end)
		return fail(c, n, "'%s' must be an integer, not '%s'", key, s);
	/* "2" reads as a number to a person: say why it is refused. */
	if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return fail(c, n, "'%s' must be an integer, not the quoted string '%s' (drop the quotes)",
			    key, s);
	if (v < min || v > max)
		return fail(c, n, "'%s' must be between %lld and %lld, not %lld", key,
			    min, max, v);
	*out = v;
	return 0;
}

static int get_u64(struct ctx *c, const yaml_node_t *n, const char *key,
		   long long min, long long max, uint64_t *out)
{
	long long v;
	int r = get_int(c, n, key, min, max, &v);
	if (!r)
		*out = (uint64_t)v;
	return r;
}

static int get_i(struct ctx *c, const yaml_node_t *n, const char *key,
		 long long min, long long max, int *out)
{
	long long v;
	int r = get_int(c, n, key, min, max, &v);
	if (!r)
		*out = (int)v;
	return r;
}

static int get_size(struct ctx *c, const yaml_node_t *n, const char *key,
		    long long min, long long max, size_t *out)
{
	long long v;
	int r = get_int(c, n, key, min, max, &v);
	if (!r)
		*out = (size_t)v;
	return r;
}

static int get_double(struct ctx *c, const yaml_node_t *n, const char *key, double min,
		      double max, double *out)
{
	if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE ||
	    is_null(n))
		return fail(c, n, "'%s' must be a number", key);
	char *end;
	errno = 0;
	double v = strtod(scalar(n), &end);
	if (errno || end == scalar(n) || *end)
		return fail(c, n, "'%s' must be a number, not '%s'", key, scalar(n));
	if (!(v >= min && v <= max))
		return fail(c, n, "'%s' must be between %g and %g, not %g", key, min, max, v);
	*out = v;
	return 0;
}

static int get_bool(struct ctx *c, const yaml_node_t *n, const char *key,
		    int *out)
{
	if (n->type == YAML_SCALAR_NODE &&
	    n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
		const char *s = scalar(n);
		if (!strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "on")) {
			*out = 1;
			return 0;
		}
		if (!strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "off")) {
			*out = 0;
			return 0;
		}
	}
	return fail(c, n, "'%s' must be true or false", key);
}

/*
 * Edits (insert, delete, substitute, swap two neighbours) that turn a
 * into b, or a number above limit once it must be larger (keys are short).
 */
static size_t edit_distance(const char *a, const char *b, size_t limit)
{
	size_t n = strlen(a), m = strlen(b);
	if (n > 48 || m > 48 || (n > m ? n - m : m - n) > limit)
		return limit + 1;
	size_t d[49][49];
	for (size_t i = 0; i <= n; i++)
		d[i][0] = i;
	for (size_t j = 0; j <= m; j++)
		d[0][j] = j;
	for (size_t i = 1; i <= n; i++) {
		for (size_t j = 1; j <= m; j++) {
			size_t cost = a[i - 1] != b[j - 1];
			size_t best = BT_MIN(d[i - 1][j] + 1, d[i][j - 1] + 1);
			best = BT_MIN(best, d[i - 1][j - 1] + cost);
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
				best = BT_MIN(best, d[i - 2][j - 2] + 1);
			d[i][j] = best;
		}
	}
	return d[n][m];
}

/*
 * The known key a typo most likely meant: the closest within two edits
 * (one for keys of up to four letters, where two edits reach anything),
 * or NULL.
 */
static const char *nearest_key(const char *key, const char *const *known)
{
	size_t limit = strlen(key) <= 4 ? 1 : 2, best = limit + 1;
	const char *found = NULL;
	for (const char *const *kk = known; *kk; kk++) {
		size_t dist = edit_distance(key, *kk, limit);
		if (dist < best)
			best = dist, found = *kk;
	}
	return found;
}

/*
 * Checks that n is a mapping with scalar, unique keys that all appear in
 * known (NULL-terminated).  what names the section in messages.
 */
static int check_mapping(struct ctx *c, const yaml_node_t *n, const char *what,
			 const char *const *known)
{
	if (n->type != YAML_MAPPING_NODE)
		return fail(c, n, "%s must be a mapping, not %s", what, type_name(n));
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
	     p < n->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node(c, p->key);
		if (k->type != YAML_SCALAR_NODE || has_nul(k))
			return fail(c, k, "keys of %s must be strings without NUL bytes", what);
		for (yaml_node_pair_t *q = n->data.mapping.pairs.start; q < p; q++) {
			if (!strcmp(scalar(node(c, q->key)), scalar(k)))
				return fail(c, k, "duplicate key '%s' in %s",
					    scalar(k), what);
		}
		if (!known)
			continue;
		int found = 0;
		for (const char *const *kk = known; *kk; kk++)
			found |= !strcmp(*kk, scalar(k));
		if (!found) {
			const char *near = nearest_key(scalar(k), known);
			char list[512] = "";
			size_t o = 0;
			for (const char *const *kk = known; *kk && o < sizeof(list); kk++)
				o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s",
						      kk == known ? "" : ", ", *kk);
			if (near)
				return fail(c, k, "unknown key '%s' in %s: did you mean '%s'? (expected one of: %s)",
					    scalar(k), what, near, list);
			return fail(c, k, "unknown key '%s' in %s (expected one of: %s)",
				    scalar(k), what, list);
		}
	}
	return 0;
}

static int valid_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 64)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
			 (ch >= '0' && ch <= '9') ||
			 (i > 0 && (ch == '_' || ch == '-' || ch == '.'));
		if (!ok)
			return 0;
	}
	return 1;
}

static char *join_path(const char *dir, const char *p)
{
	if (p[0] == '/')
		return bt_strdup(p);
	return bt_asprintf("%s/%s", dir, p);
}

static int is_executable_file(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISREG(st.st_mode) && access(p, X_OK) == 0;
}

static const char *stage_env_get(const struct bt_stage_config *st,
				 const char *name)
{
	for (int i = 0; i < st->nenv; i++)
		if (!strcmp(st->env[i].name, name))
			return st->env[i].value;
	return NULL;
}

char *bt_config_find_program(const struct bt_stage_config *st, const char *cmd)
{
	if (strchr(cmd, '/')) {
		char *p = join_path(st->workdir, cmd);
		if (is_executable_file(p))
			return p;
		free(p);
		return NULL;
	}
	const char *path = stage_env_get(st, "PATH");
	if (!path)
		path = getenv("PATH");
	if (!path)
		path = "/usr/local/bin:/usr/bin:/bin";
	if (st->venv) {
		char *p = bt_asprintf("%s/bin/%s", st->venv, cmd);
		if (is_executable_file(p))
			return p;
		free(p);
	}
	for (const char *s = path; *s;) {
		const char *e = strchr(s, ':');
		size_t len = e ? (size_t)(e - s) : strlen(s);
		if (len) {
			/* A relative entry means the replica's cwd, which is its workdir. */
			char *p = s[0] == '/' ? bt_asprintf("%.*s/%s", (int)len, s, cmd)
					      : bt_asprintf("%s/%.*s/%s", st->workdir, (int)len, s, cmd);
			if (is_executable_file(p))
				return p;
			free(p);
		}
		s += len + (e ? 1 : 0);
	}
	return NULL;
}

/* Resolves argv[0] the way execvp would in the replica's environment. */
static int resolve_command(struct ctx *c, const yaml_node_t *n,
			   struct bt_stage_config *st)
{
	const char *cmd = st->argv[0];
	char *found = bt_config_find_program(st, cmd);
	if (!found && strchr(cmd, '/')) {
		char *p = join_path(st->workdir, cmd);
		struct stat sb;
		int r = stat(p, &sb) != 0
				? fail(c, n, "command '%s' of stage '%s' does not exist (%s)", cmd,
				       st->name, p)
				: fail(c, n, "command '%s' of stage '%s' is not an executable file (%s)",
				       cmd, st->name, p);
		free(p);
		return r;
	}
	if (!found)
		return fail(c, n, "command '%s' of stage '%s' not found in %sPATH", cmd, st->name,
			    st->venv ? "the venv's bin/ or " : "");
	free(st->argv[0]);
	st->argv[0] = found;
	return 0;
}

static int parse_command(struct ctx *c, const yaml_node_t *n,
			 struct bt_stage_config *st)
{
	if (n->type != YAML_SEQUENCE_NODE)
		return fail(c, n,
			    "'command' of stage '%s' must be a list of strings (an argv; it never goes through a shell)",
			    st->name);
	int argc = (int)(n->data.sequence.items.top - n->data.sequence.items.start);
	if (argc == 0)
		return fail(c, n, "'command' of stage '%s' is empty", st->name);
	st->argv = bt_calloc((size_t)argc + 1, sizeof(char *));
	st->argc = argc;
	for (int i = 0; i < argc; i++) {
		yaml_node_t *a = node(c, n->data.sequence.items.start[i]);
		if (a->type != YAML_SCALAR_NODE)
			return fail(c, a, "'command' items must be strings, not %s",
				    type_name(a));
		if (has_nul(a))
			return fail(c, a, "'command' item contains a NUL byte");
		st->argv[i] = bt_strdup(scalar(a));
	}
	return 0;
}

static int parse_env(struct ctx *c, const yaml_node_t *n,
		     struct bt_stage_config *st)
{
	int r = check_mapping(c, n, "'env'", NULL);
	if (r)
		return r;
	size_t count = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
	st->env = bt_calloc(count, sizeof(*st->env));
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
	     p < n->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node(c, p->key), *v = node(c, p->value);
		const char *name = scalar(k);
		if (has_nul(k) || has_nul(v))
			return fail(c, has_nul(k) ? k : v, "env contains a NUL byte");
		if (!*name || strchr(name, '='))
			return fail(c, k, "environment variable name '%s' is not valid",
				    name);
		/* baton sets these itself; a value here would be silently replaced. */
		if (!strncmp(name, "BATON_", 6))
			return fail(c, k, "env '%s': BATON_* variables are set by baton and "
				    "cannot be overridden", name);
		if (v->type != YAML_SCALAR_NODE)
			return fail(c, v, "value of env '%s' must be a string, not %s",
				    name, type_name(v));
		st->env[st->nenv].name = bt_strdup(name);
		st->env[st->nenv].value = bt_strdup(scalar(v));
		st->nenv++;
	}
	return 0;
}

/* A FIFO or /dev/zero named in a config must not hang baton. */
static int read_file(const char *path, char **data, size_t *len)
{
	return bt_read_file_at(AT_FDCWD, path, 0, (size_t)256 << 20, data, len, NULL);
}

static const char *const stage_keys[] = {
	"command", "workdir", "venv", "env", "mode", "replicas", "max_ongoing",
	"queue_max", "timeout_ms", "retries", "start_timeout_ms", "warmup",
	"restart", "stop", "ping_interval_ms", "ping_timeout_ms", "batch",
	"priority_levels", "spawn", "health_check", "setup", "resources", "autoscale", "user",
	"group", "kind", "log_limit", "queue", NULL};
static const char *const log_limit_keys[] = {"interval_ms", "lines", "bytes", NULL};
static const char *const setup_keys[] = {"python", "requirements", "wheels",
					 "system_site_packages", NULL};
static const char *const spawn_keys[] = {"status_key", "output_ext", NULL};
static const char *const batch_keys[] = {"max_size", "window_ms", NULL};
static const char *const replicas_keys[] = {"initial", "min", "max", NULL};
static const char *const resources_keys[] = {"gpu", "gpu_memory_mb", "memory_mb", NULL};
static const char *const autoscale_keys[] = {
	"policy", "target_ongoing", "upscale_delay_s", "downscale_delay_s", "max_cpu", "max_gpu",
	"up_gpu", "up_cpu", "up_latency_s", "down_gpu", "down_cpu", "down_latency_s",
	"hysteresis_s", NULL};
static const char *const warmup_keys[] = {"payload_file", "required", NULL};
static const char *const restart_keys[] = {"backoff_ms", "backoff_max_ms",
					   "max_failures", "reset_after_ms",
					   "retry_failed_after_ms", NULL};
static const char *const stop_keys[] = {"grace_ms", NULL};
static const char *const stage_queue_keys[] = {"backend", NULL};
static const char *const queue_keys[] = {"backend",	   "url",	     "namespace",
					 "node",	   "claim_after_ms", "inline_max_bytes",
					 "shared_dir",	   "user",	     "password_file",
					 NULL};

static int get_backend(struct ctx *c, const yaml_node_t *n, const char *key,
		       enum bt_queue_backend *out)
{
	char *s = NULL;
	int r = get_string(c, n, key, &s);
	if (!r && !strcmp(s, "local"))
		*out = BT_QUEUE_LOCAL;
	else if (!r && !strcmp(s, "redis"))
		*out = BT_QUEUE_REDIS;
	else if (!r)
		r = fail(c, n, "'%s' must be local or redis, not '%s'", key, s);
	free(s);
	return r;
}

#define DAY_MS (24LL * 3600 * 1000)

static int parse_autoscale(struct ctx *c, const yaml_node_t *n, struct bt_stage_config *st)
{
	struct bt_autoscale_config *a = &st->autoscale;
	int r = check_mapping(c, n, "'autoscale'", autoscale_keys);
	a->policy = BT_POLICY_DEMAND;
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
	     !r && p < n->data.mapping.pairs.top; p++) {
		const char *k = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		char key[48];
		snprintf(key, sizeof(key), "autoscale.%s", k);
		uint64_t secs = 0;
		if (!strcmp(k, "policy")) {
			char *pol = NULL;
			r = get_string(c, v, key, &pol);
			if (!r && !strcmp(pol, "headroom"))
				a->policy = BT_POLICY_HEADROOM;
			else if (!r && strcmp(pol, "demand"))
				r = fail(c, v, "'autoscale.policy' must be 'demand' or 'headroom', not '%s'", pol);
			free(pol);
		} else if (!strcmp(k, "target_ongoing")) {
			r = get_double(c, v, key, 0.001, 1e6, &a->target_ongoing);
		} else if (!strcmp(k, "upscale_delay_s") || !strcmp(k, "downscale_delay_s") ||
			   !strcmp(k, "hysteresis_s")) {
			r = get_u64(c, v, key, 0, 86400, &secs);
			uint64_t *dst = k[0] == 'u' ? &a->upscale_delay_ms
					: k[0] == 'd' ? &a->downscale_delay_ms : &a->hysteresis_ms;
			*dst = secs * 1000;
		} else if (!strcmp(k, "up_latency_s") || !strcmp(k, "down_latency_s")) {
			r = get_double(c, v, key, 0, 86400, k[0] == 'u' ? &a->up_latency_s
								       : &a->down_latency_s);
		} else {
			double *dst = !strcmp(k, "max_cpu") ? &a->max_cpu
				      : !strcmp(k, "max_gpu") ? &a->max_gpu
				      : !strcmp(k, "up_gpu") ? &a->up_gpu
				      : !strcmp(k, "up_cpu") ? &a->up_cpu
				      : !strcmp(k, "down_gpu") ? &a->down_gpu : &a->down_cpu;
			r = get_double(c, v, key, 0, 100, dst);
		}
	}
	return r;
}

static void stage_defaults(struct bt_stage_config *st)
{
	/* Autoscaling defaults: DESIGN §7 and seed 002's station policy. */
	st->autoscale.policy = BT_POLICY_NONE;
	st->autoscale.target_ongoing = 2;
	st->autoscale.upscale_delay_ms = 5000;
	st->autoscale.downscale_delay_ms = 30000;
	st->autoscale.max_cpu = 90;
	st->autoscale.max_gpu = 95;
	st->autoscale.up_gpu = 85;
	st->autoscale.up_cpu = 80;
	st->autoscale.up_latency_s = 5;
	st->autoscale.down_gpu = 95;
	st->autoscale.down_cpu = 90;
	st->autoscale.down_latency_s = 5;
	st->autoscale.hysteresis_ms = 30000;
	st->replicas_initial = 1;
	st->max_ongoing = 1;
	st->queue_max = 1024;
	st->timeout_ms = 60000;
	st->retries = 1;
	st->start_timeout_ms = 120000;
	st->backoff_ms = 2000;
	st->backoff_max_ms = 60000;
	st->max_failures = 5;
	st->reset_after_ms = 60000;
	st->retry_failed_after_ms = 0;
	st->grace_ms = 5000;
	st->ping_interval_ms = 5000;
	st->ping_timeout_ms = 10000;
	st->batch_max_size = 1;
	st->batch_window_ms = 0;
	/* Output rate limit per stream, journald-like: a chatty worker cannot fill the disk. */
	st->log_interval_ms = 10000;
	st->log_lines = 2000;
	st->log_bytes = 1 << 20;
	st->priority_levels = 1;
}

static int parse_stage(struct ctx *c, const yaml_node_t *key,
		       const yaml_node_t *n, struct bt_stage_config *st)
{
	const yaml_node_t *command = NULL, *warmup_file = NULL, *mode_node = NULL;
	const yaml_node_t *spawn_node = NULL, *batch_node = NULL, *ongoing_node = NULL;
	const yaml_node_t *setup_node = NULL, *replicas_node = NULL, *group_node = NULL;
	const yaml_node_t *workdir_node = NULL, *kind_node = NULL;
	int rep_initial = 0, rep_min = -1, rep_max = 0;
	char *workdir = NULL, *venv = NULL;
	const yaml_node_t *venv_node = NULL;
	char what[128];
	int r;

	st->name = bt_strdup(scalar(key));
	st->line = (int)key->start_mark.line + 1;
	st->col = (int)key->start_mark.column + 1;
	st->queue_line = st->line;
	st->queue_col = st->col;
	stage_defaults(st);
	if (!valid_name(st->name))
		return fail(c, key,
			    "stage name '%s' is not valid (letters, digits, '_', '-', '.'; at most 64)",
			    st->name);
	snprintf(what, sizeof(what), "stage '%s'", st->name);
	if ((r = check_mapping(c, n, what, stage_keys)))
		return r;

	for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
	     p < n->data.mapping.pairs.top && !r; p++) {
		const char *k = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		if (!strcmp(k, "command")) {
			command = v;
			r = parse_command(c, v, st);
		} else if (!strcmp(k, "workdir")) {
			workdir_node = v;
			r = get_string(c, v, k, &workdir);
		} else if (!strcmp(k, "venv")) {
			venv_node = v;
			r = get_string(c, v, k, &venv);
		} else if (!strcmp(k, "env")) {
			r = parse_env(c, v, st);
		} else if (!strcmp(k, "mode")) {
			char *mode = NULL;
			r = get_string(c, v, k, &mode);
			mode_node = v;
			if (!r && !strcmp(mode, "spawn"))
				st->mode = BT_MODE_SPAWN;
			else if (!r && strcmp(mode, "persistent"))
				r = fail(c, v, "'mode' must be 'persistent' or 'spawn', not '%s'", mode);
			free(mode);
		} else if (!strcmp(k, "kind")) {
			char *kind = NULL;
			r = get_string(c, v, k, &kind);
			kind_node = v;
			if (!r && !strcmp(kind, "source"))
				st->source = 1;
			else if (!r && strcmp(kind, "worker"))
				r = fail(c, v, "'kind' must be 'worker' or 'source', not '%s'", kind);
			free(kind);
		} else if (!strcmp(k, "user")) {
			r = get_string(c, v, k, &st->user);
			struct passwd *pw = r ? NULL : getpwnam(st->user);
			if (!r && !pw)
				r = fail(c, v, "no user named '%s' on this machine", st->user);
			if (!r) {
				st->uid = pw->pw_uid;
				if (!group_node)
					st->gid = pw->pw_gid;
			}
		} else if (!strcmp(k, "group")) {
			char *name = NULL;
			group_node = v;
			r = get_string(c, v, k, &name);
			struct group *gr = r ? NULL : getgrnam(name);
			if (!r && !gr)
				r = fail(c, v, "no group named '%s' on this machine", name);
			if (!r)
				st->gid = gr->gr_gid;
			free(name);
		} else if (!strcmp(k, "health_check")) {
			if (v->type != YAML_SEQUENCE_NODE ||
			    v->data.sequence.items.top == v->data.sequence.items.start) {
				r = fail(c, v, "'health_check' of stage '%s' must be a non-empty list of strings (an argv)",
					 st->name);
				break;
			}
			size_t hn = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
			st->health_check = bt_calloc(hn + 1, sizeof(char *));
			for (size_t h = 0; h < hn && !r; h++) {
				yaml_node_t *a = node(c, v->data.sequence.items.start[h]);
				if (a->type != YAML_SCALAR_NODE || has_nul(a))
					r = fail(c, a, "'health_check' items must be strings");
				else
					st->health_check[h] = bt_strdup(scalar(a));
			}
		} else if (!strcmp(k, "setup")) {
			setup_node = v;
			st->has_setup = 1;
			if ((r = check_mapping(c, v, "'setup'", setup_keys)))
				break;
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
			     q < v->data.mapping.pairs.top && !r; q++) {
				const char *sk = scalar(node(c, q->key));
				yaml_node_t *sv = node(c, q->value);
				if (!strcmp(sk, "python"))
					r = get_string(c, sv, "setup.python", &st->setup_python);
				else if (!strcmp(sk, "requirements"))
					r = get_string(c, sv, "setup.requirements", &st->setup_requirements);
				else if (!strcmp(sk, "wheels"))
					r = get_string(c, sv, "setup.wheels", &st->setup_wheels);
				else
					r = get_bool(c, sv, "setup.system_site_packages",
						     &st->setup_system_site_packages);
			}
		} else if (!strcmp(k, "spawn")) {
			spawn_node = v;
			if ((r = check_mapping(c, v, "'spawn'", spawn_keys)))
				break;
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
			     q < v->data.mapping.pairs.top && !r; q++) {
				const char *sk = scalar(node(c, q->key));
				yaml_node_t *sv = node(c, q->value);
				if (!strcmp(sk, "status_key")) {
					r = get_string(c, sv, "spawn.status_key", &st->spawn_status_key);
				} else {
					r = get_string(c, sv, "spawn.output_ext", &st->spawn_output_ext);
					if (!r && !bt_ext_is_safe(st->spawn_output_ext))
						r = fail(c, sv, "'spawn.output_ext' must be '.' and 1-16 of A-Za-z0-9_-");
				}
			}
		} else if (!strcmp(k, "replicas")) {
			replicas_node = v;
			st->replicas_given = 1;
			st->replicas_node = v;
			if (v->type == YAML_SCALAR_NODE) {
				r = get_i(c, v, k, 1, 256, &rep_initial);
				continue;
			}
			if ((r = check_mapping(c, v, "'replicas'", replicas_keys)))
				break;
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
			     q < v->data.mapping.pairs.top && !r; q++) {
				const char *rk = scalar(node(c, q->key));
				int *dst = !strcmp(rk, "min") ? &rep_min
					   : !strcmp(rk, "max") ? &rep_max : &rep_initial;
				char key[32];
				snprintf(key, sizeof(key), "replicas.%s", rk);
				r = get_i(c, node(c, q->value), key, 1, 256, dst);
			}
		} else if (!strcmp(k, "resources")) {
			if ((r = check_mapping(c, v, "'resources'", resources_keys)))
				break;
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
			     q < v->data.mapping.pairs.top && !r; q++) {
				const char *rk = scalar(node(c, q->key));
				yaml_node_t *rv = node(c, q->value);
				if (!strcmp(rk, "gpu"))
					r = get_double(c, rv, "resources.gpu", 0, 1, &st->gpu_fraction);
				else if (!strcmp(rk, "gpu_memory_mb"))
					r = get_u64(c, rv, "resources.gpu_memory_mb", 0, 1LL << 30,
						    &st->gpu_memory_mb);
				else
					r = get_u64(c, rv, "resources.memory_mb", 1, 1LL << 30,
						    &st->memory_mb);
			}
		} else if (!strcmp(k, "autoscale")) {
			r = parse_autoscale(c, v, st);
		} else if (!strcmp(k, "queue")) {
			st->queue_given = 1;
			r = check_mapping(c, v, "'queue' of a stage", stage_queue_keys);
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
			     !r && q < v->data.mapping.pairs.top; q++)
				r = get_backend(c, node(c, q->value), "queue.backend",
						&st->queue_backend);
			st->queue_line = (int)v->start_mark.line + 1;
			st->queue_col = (int)v->start_mark.column + 1;
		} else if (!strcmp(k, "max_ongoing")) {
			ongoing_node = v;
			r = get_i(c, v, k, 1, 1024, &st->max_ongoing);
		} else if (!strcmp(k, "queue_max")) {
			r = get_size(c, v, k, 1, 10000000, &st->queue_max);
		} else if (!strcmp(k, "timeout_ms")) {
			r = get_u64(c, v, k, 1, DAY_MS, &st->timeout_ms);
		} else if (!strcmp(k, "retries")) {
			r = get_i(c, v, k, 0, 100, &st->retries);
		} else if (!strcmp(k, "start_timeout_ms")) {
			r = get_u64(c, v, k, 1, DAY_MS, &st->start_timeout_ms);
		} else if (!strcmp(k, "ping_interval_ms")) {
			r = get_u64(c, v, k, 0, DAY_MS, &st->ping_interval_ms);
		} else if (!strcmp(k, "ping_timeout_ms")) {
			r = get_u64(c, v, k, 1, DAY_MS, &st->ping_timeout_ms);
		} else if (!strcmp(k, "priority_levels")) {
			r = get_i(c, v, k, 1, BT_MAX_PRIORITY_LEVELS, &st->priority_levels);
		} else if (!strcmp(k, "batch")) {
			batch_node = v;
			if ((r = check_mapping(c, v, "'batch'", batch_keys)))
				break;
			int have_size = 0;
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
			     q < v->data.mapping.pairs.top && !r; q++) {
				const char *bk = scalar(node(c, q->key));
				yaml_node_t *bv = node(c, q->value);
				if (!strcmp(bk, "max_size")) {
					have_size = 1;
					r = get_i(c, bv, "batch.max_size", 1, 4096,
						  &st->batch_max_size);
				} else {
					r = get_u64(c, bv, "batch.window_ms", 0, 60000,
						    &st->batch_window_ms);
				}
			}
			if (!r && !have_size)
				r = fail(c, v, "'batch' of stage '%s' needs 'max_size'", st->name);
		} else if (!strcmp(k, "warmup")) {
			if ((r = check_mapping(c, v, "'warmup'", warmup_keys)))
				break;
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
			     q < v->data.mapping.pairs.top && !r; q++) {
				const char *wk = scalar(node(c, q->key));
				yaml_node_t *wv = node(c, q->value);
				if (!strcmp(wk, "payload_file")) {
					warmup_file = wv;
					r = get_string(c, wv, "warmup.payload_file",
						       &st->warmup_file);
				} else {
					r = get_bool(c, wv, "warmup.required",
						     &st->warmup_required);
				}
			}
			if (!r && !warmup_file)
				r = fail(c, v, "'warmup' of stage '%s' needs 'payload_file'",
					 st->name);
		} else if (!strcmp(k, "restart")) {
			if ((r = check_mapping(c, v, "'restart'", restart_keys)))
				break;
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
			     q < v->data.mapping.pairs.top && !r; q++) {
				const char *rk = scalar(node(c, q->key));
				yaml_node_t *rv = node(c, q->value);
				if (!strcmp(rk, "backoff_ms"))
					r = get_u64(c, rv, rk, 0, DAY_MS, &st->backoff_ms);
				else if (!strcmp(rk, "backoff_max_ms"))
					r = get_u64(c, rv, rk, 0, DAY_MS, &st->backoff_max_ms);
				else if (!strcmp(rk, "max_failures"))
					r = get_i(c, rv, rk, 1, 1000000, &st->max_failures);
				else if (!strcmp(rk, "reset_after_ms"))
					r = get_u64(c, rv, rk, 0, DAY_MS, &st->reset_after_ms);
				else
					r = get_u64(c, rv, rk, 0, DAY_MS,
						    &st->retry_failed_after_ms);
			}
		} else if (!strcmp(k, "log_limit")) {
			if ((r = check_mapping(c, v, "'log_limit'", log_limit_keys)))
				break;
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
			     q < v->data.mapping.pairs.top && !r; q++) {
				const char *lk = scalar(node(c, q->key));
				yaml_node_t *lv = node(c, q->value);
				if (!strcmp(lk, "interval_ms"))
					r = get_u64(c, lv, "log_limit.interval_ms", 1, DAY_MS,
						    &st->log_interval_ms);
				else if (!strcmp(lk, "lines"))
					r = get_u64(c, lv, "log_limit.lines", 1, 1LL << 40,
						    &st->log_lines);
				else
					r = get_u64(c, lv, "log_limit.bytes", 1, 1LL << 50,
						    &st->log_bytes);
			}
		} else if (!strcmp(k, "stop")) {
			if ((r = check_mapping(c, v, "'stop'", stop_keys)))
				break;
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
			     q < v->data.mapping.pairs.top && !r; q++)
				r = get_u64(c, node(c, q->value), "stop.grace_ms", 0,
					    DAY_MS, &st->grace_ms);
		}
	}
	if (r)
		goto out;
	if (!command) {
		r = fail(c, key, "stage '%s' has no 'command'", st->name);
		goto out;
	}
	if (st->backoff_max_ms < st->backoff_ms)
		st->backoff_max_ms = st->backoff_ms;
	/* replicas: min defaults to 1, initial to min (at least 1), max to both. */
	if (rep_min < 0)
		rep_min = 1;
	if (!rep_initial)
		rep_initial = BT_MAX(rep_min, 1);
	if (!rep_max)
		rep_max = BT_MAX(rep_initial, rep_min);
	if (rep_min > rep_initial || rep_initial > rep_max) {
		r = fail(c, replicas_node, "replicas of stage '%s' must have min <= initial <= max (%d, %d, %d)",
			 st->name, rep_min, rep_initial, rep_max);
		goto out;
	}
	st->replicas_initial = rep_initial;
	st->replicas_min = rep_min;
	st->replicas_max = rep_max;
	st->autoscale.min = rep_min;
	st->autoscale.max = rep_max;

	if (st->mode == BT_MODE_SPAWN) {
		/* One process per request: the pool is the replicas, one request each. */
		const yaml_node_t *bad = batch_node ? batch_node : ongoing_node ? ongoing_node
						 : warmup_file;
		if (bad) {
			r = fail(c, bad,
				 "stage '%s' is in spawn mode: it runs one process per request, so 'batch', 'max_ongoing' and 'warmup' do not apply (replicas is the number of processes at once)",
				 st->name);
			goto out;
		}
		if (!st->spawn_output_ext)
			st->spawn_output_ext = bt_strdup(".json");
	} else if (spawn_node) {
		r = fail(c, spawn_node, "'spawn' needs 'mode: spawn' in stage '%s'", st->name);
		goto out;
	}
	if (st->source) {
		/* A source's replicas produce items: nothing is sent to them. */
		const yaml_node_t *bad = mode_node && st->mode == BT_MODE_SPAWN ? mode_node
					 : batch_node ? batch_node : ongoing_node ? ongoing_node
					 : warmup_file;
		if (bad) {
			r = fail(c, bad,
				 "stage '%s' is a source (kind: source): 'mode: spawn', 'batch', 'max_ongoing' and 'warmup' do not apply to it",
				 st->name);
			goto out;
		}
		st->ping_interval_ms = 0; /* a source is busy by nature; its exit is what counts */
	}
	(void)kind_node;

	/* Paths baton opens are relative to the config file's directory. */
	char *wd = join_path(c->cfg->dir, workdir ? workdir : ".");
	char real[PATH_MAX];
	struct stat sb;
	if (!realpath(wd, real) || stat(real, &sb) || !S_ISDIR(sb.st_mode)) {
		r = fail(c, workdir_node ? workdir_node : key,
			 "workdir '%s' of stage '%s' is not a directory", wd, st->name);
		free(wd);
		goto out;
	}
	free(wd);
	st->workdir = bt_strdup(real);
	if (venv) {
		st->venv = join_path(c->cfg->dir, venv);
		if (stat(st->venv, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
			r = fail(c, venv_node, "venv '%s' of stage '%s' is not a directory", st->venv,
				 st->name);
			goto out;
		}
		char *bin = bt_asprintf("%s/bin", st->venv);
		st->venv_missing = stat(bin, &sb) != 0 || !S_ISDIR(sb.st_mode);
		free(bin);
	}
	if (group_node && !st->user) {
		r = fail(c, group_node, "'group' of stage '%s' needs 'user'", st->name);
		goto out;
	}
	if (setup_node) {
		if (!st->venv) {
			r = fail(c, setup_node, "'setup' of stage '%s' needs 'venv' (the environment it builds)",
				 st->name);
			goto out;
		}
		if (st->setup_requirements && !st->setup_wheels) {
			r = fail(c, setup_node,
				 "'setup.requirements' of stage '%s' needs 'setup.wheels': baton installs from a local wheel directory, never from the network",
				 st->name);
			goto out;
		}
		char *p;
		if (st->setup_requirements) {
			p = join_path(c->cfg->dir, st->setup_requirements);
			free(st->setup_requirements);
			st->setup_requirements = p;
		}
		if (st->setup_wheels) {
			p = join_path(c->cfg->dir, st->setup_wheels);
			free(st->setup_wheels);
			st->setup_wheels = p;
		}
		if (!st->setup_python)
			st->setup_python = bt_strdup(access("/usr/bin/python3", X_OK) == 0
							     ? "/usr/bin/python3"
							     : "python3");
	}
	if ((r = resolve_command(c, command, st)))
		goto out;
	for (int i = 1; i < st->argc; i++)
		if (strstr(st->argv[i], "{input}") || strstr(st->argv[i], "{output}"))
			st->spawn_files = 1;
	if (st->spawn_files && st->mode != BT_MODE_SPAWN) {
		r = fail(c, command, "'{input}'/'{output}' in the command of stage '%s' need 'mode: spawn'",
			 st->name);
		goto out;
	}
	if (st->warmup_file) {
		char *p = join_path(c->cfg->dir, st->warmup_file);
		free(st->warmup_file);
		st->warmup_file = p;
		int e = read_file(p, &st->warmup_payload, &st->warmup_len);
		if (e)
			r = fail(c, warmup_file, "cannot read warm-up payload '%s': %s",
				 p, bt_strerror(e));
	}
out:
	free(workdir);
	free(venv);
	return r;
}

static const char *const pipeline_keys[] = {"stages", "max_inflight", "io", NULL};
static const char *const io_keys[] = {"inputs", "outputs", NULL};
static const char *const tensor_keys[] = {"name", "datatype", "shape", "parameters", NULL};

/*
 * YAML → JSON with YAML 1.1 plain-scalar typing (ints, floats, booleans,
 * null).  Bounded: an alias may point into itself (a cycle) or be
 * repeated until the expansion is exponential ("billion laughs"), so depth
 * and the number of nodes produced are capped.  NULL after fail().
 */
static json_t *to_json(struct ctx *c, const yaml_node_t *n, int depth, int *budget)
{
	if (depth > 32 || --*budget < 0) {
		fail(c, n, "this value is nested too deep or expands too much (YAML aliases?)");
		return NULL;
	}
	if (n->type == YAML_SEQUENCE_NODE) {
		json_t *a = json_array();
		for (yaml_node_item_t *i = n->data.sequence.items.start;
		     i < n->data.sequence.items.top; i++) {
			json_t *v = to_json(c, node(c, *i), depth + 1, budget);
			if (!v) {
				json_decref(a);
				return NULL;
			}
			json_array_append_new(a, v);
		}
		return a;
	}
	if (n->type == YAML_MAPPING_NODE) {
		if (check_mapping(c, n, "a mapping", NULL))
			return NULL;
		json_t *o = json_object();
		for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
		     p < n->data.mapping.pairs.top; p++) {
			json_t *v = to_json(c, node(c, p->value), depth + 1, budget);
			if (!v || json_object_set_new(o, scalar(node(c, p->key)), v)) {
				if (v)
					fail(c, node(c, p->key), "keys must be UTF-8 text");
				json_decref(o);
				return NULL;
			}
		}
		return o;
	}
	const char *s = scalar(n);
	if (has_nul(n)) {
		fail(c, n, "text contains a NUL byte");
		return NULL;
	}
	json_t *out;
	char *end;
	if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
		out = json_string(s);
	} else if (is_null(n)) {
		return json_null();
	} else if (!strcmp(s, "true")) {
		return json_true();
	} else if (!strcmp(s, "false")) {
		return json_false();
	} else {
		errno = 0;
		long long i = strtoll(s, &end, 10);
		if (!errno && end != s && !*end)
			return json_integer(i);
		double d = strtod(s, &end);
		if (end != s && !*end && isfinite(d))
			return json_real(d);
		out = json_string(s);
	}
	if (!out)
		fail(c, n, "text is not valid UTF-8");
	return out;
}

static const char *const v2_datatypes[] = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64",
					   "INT8", "INT16", "INT32", "INT64", "FP16",
					   "FP32", "FP64", "BYTES", "BF16", NULL};

/* `io:` declares the v2 model metadata: lists of {name, datatype, shape}. */
static int parse_io(struct ctx *c, const yaml_node_t *n, struct bt_pipeline_config *pl)
{
	int r = check_mapping(c, n, "'io'", io_keys);
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
	     !r && p < n->data.mapping.pairs.top; p++) {
		const char *k = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		if (v->type != YAML_SEQUENCE_NODE)
			return fail(c, v, "'io.%s' must be a list of tensors", k);
		for (yaml_node_item_t *i = v->data.sequence.items.start;
		     !r && i < v->data.sequence.items.top; i++) {
			yaml_node_t *t = node(c, *i);
			if ((r = check_mapping(c, t, "a tensor of 'io'", tensor_keys)))
				break;
			int have_name = 0, have_type = 0, have_shape = 0;
			for (yaml_node_pair_t *q = t->data.mapping.pairs.start;
			     !r && q < t->data.mapping.pairs.top; q++) {
				const char *tk = scalar(node(c, q->key));
				yaml_node_t *tv = node(c, q->value);
				if (!strcmp(tk, "name")) {
					char *s = NULL;
					have_name = 1;
					r = get_string(c, tv, "name", &s);
					free(s);
				} else if (!strcmp(tk, "datatype")) {
					char *s = NULL;
					have_type = 1;
					r = get_string(c, tv, "datatype", &s);
					int known = 0;
					for (int d = 0; !r && v2_datatypes[d]; d++)
						known |= !strcmp(s, v2_datatypes[d]);
					if (!r && !known)
						r = fail(c, tv, "unknown datatype '%s' (expected BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BF16 or BYTES)", s);
					free(s);
				} else if (!strcmp(tk, "shape")) {
					have_shape = 1;
					if (tv->type != YAML_SEQUENCE_NODE)
						r = fail(c, tv, "'shape' must be a list of integers (-1 for any size)");
					for (yaml_node_item_t *d = tv->data.sequence.items.start;
					     !r && tv->type == YAML_SEQUENCE_NODE &&
					     d < tv->data.sequence.items.top; d++) {
						long long dim;
						r = get_int(c, node(c, *d), "shape", -1, 1LL << 40, &dim);
					}
				} else if (tv->type != YAML_MAPPING_NODE) {
					r = fail(c, tv, "'parameters' must be a mapping");
				}
			}
			if (!r && !(have_name && have_type && have_shape))
				r = fail(c, t, "a tensor of 'io' needs 'name', 'datatype' and 'shape'");
		}
		if (r)
			break;
		int budget = 10000;
		json_t *list = to_json(c, v, 0, &budget);
		if (!list) {
			r = BT_ECONFIG;
			break;
		}
		if (!strcmp(k, "inputs"))
			json_decref(pl->io_inputs), pl->io_inputs = list;
		else
			json_decref(pl->io_outputs), pl->io_outputs = list;
	}
	return r;
}

static int parse_stage_list(struct ctx *c, const yaml_node_t *n,
			    struct bt_pipeline_config *pl)
{
	if (n->type != YAML_SEQUENCE_NODE)
		return fail(c, n, "pipeline '%s' must be a list of stage names, not %s",
			    pl->name, type_name(n));
	int count = (int)(n->data.sequence.items.top - n->data.sequence.items.start);
	if (count == 0)
		return fail(c, n, "pipeline '%s' has no stages", pl->name);
	pl->stages = bt_calloc((size_t)count, sizeof(int));
	for (int i = 0; i < count; i++) {
		yaml_node_t *s = node(c, n->data.sequence.items.start[i]);
		if (s->type != YAML_SCALAR_NODE || has_nul(s))
			return fail(c, s, "stages of pipeline '%s' must be names",
				    pl->name);
		int idx = bt_config_stage_index(c->cfg, scalar(s));
		if (idx < 0)
			return fail(c, s, "pipeline '%s' names unknown stage '%s'",
				    pl->name, scalar(s));
		pl->stages[pl->nstages++] = idx;
	}
	return 0;
}

static int parse_pipeline(struct ctx *c, const yaml_node_t *key,
			  const yaml_node_t *n, struct bt_pipeline_config *pl)
{
	char what[128];
	int r;
	pl->name = bt_strdup(scalar(key));
	if (!valid_name(pl->name))
		return fail(c, key,
			    "pipeline name '%s' is not valid (letters, digits, '_', '-', '.'; at most 64)",
			    pl->name);
	if (n->type == YAML_SEQUENCE_NODE)
		return parse_stage_list(c, n, pl);
	if (n->type != YAML_MAPPING_NODE)
		return fail(c, n,
			    "pipeline '%s' must be a list of stages ([a, b]) or a mapping with "
			    "'stages', not %s",
			    pl->name, is_null(n) ? "empty" : type_name(n));
	snprintf(what, sizeof(what), "pipeline '%s'", pl->name);
	if ((r = check_mapping(c, n, what, pipeline_keys)))
		return r;
	const yaml_node_t *stages = NULL;
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
	     p < n->data.mapping.pairs.top && !r; p++) {
		const char *k = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		if (!strcmp(k, "stages")) {
			stages = v;
			r = parse_stage_list(c, v, pl);
		} else if (!strcmp(k, "io")) {
			r = parse_io(c, v, pl);
		} else {
			r = get_size(c, v, k, 0, 100000000, &pl->max_inflight);
		}
	}
	if (!r && !stages)
		r = fail(c, key, "pipeline '%s' has no 'stages'", pl->name);
	return r;
}

/*
 * "HOST:PORT" where HOST is an IPv4 or IPv6 address (brackets allowed) or
 * "localhost".  Names are refused rather than resolved: a name that maps
 * to several addresses would make "where does baton listen" a guess.
 */
int bt_listen_parse(const char *text, char **host_out, int *port_out, char *why,
		    size_t whylen)
{
	char *s = bt_strdup(text);
	char *colon = strrchr(s, ':');
	char *host = s;
	int r = -EINVAL;
	if (!colon || colon == s) {
		snprintf(why, whylen, "must be HOST:PORT, not '%s'", text);
		goto out;
	}
	*colon = '\0';
	if (host[0] == '[') {
		size_t hl = strlen(host);
		if (host[hl - 1] != ']') {
			snprintf(why, whylen, "has a bad IPv6 address '%s'", host);
			goto out;
		}
		host[hl - 1] = '\0';
		host++;
	}
	if (!strcmp(host, "localhost"))
		host = "127.0.0.1";
	unsigned char addr[16];
	if (inet_pton(AF_INET, host, addr) != 1 && inet_pton(AF_INET6, host, addr) != 1) {
		snprintf(why, whylen, "host '%s' is not an IP address (or 'localhost')", host);
		goto out;
	}
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (colon[1] < '0' || colon[1] > '9' || *end || port > 65535) {
		snprintf(why, whylen, "port '%s' is not a port number", colon + 1);
		goto out;
	}
	*host_out = bt_strdup(host);
	*port_out = (int)port;
	r = 0;
out:
	free(s);
	return r;
}

static int parse_listen(struct ctx *c, const yaml_node_t *n)
{
	char *s = NULL, *host = NULL, why[256];
	int port, r = get_string(c, n, "listen", &s);
	if (r)
		return r;
	if (bt_listen_parse(s, &host, &port, why, sizeof(why))) {
		r = fail(c, n, "'listen' %s", why);
	} else {
		free(c->cfg->listen_host);
		c->cfg->listen_host = host;
		c->cfg->listen_port = port;
	}
	free(s);
	return r;
}

static const char *const top_keys[] = {"listen", "log_level", "max_request_bytes",
				       "max_payload_bytes", "memfd_min_bytes", "stages", "pipelines",
				       "gpus", "interval_ms", "auth", "http", "cgroup", "streams",
				       "run", "grpc", "queue", NULL};
static const char *const auth_keys[] = {"token_file", NULL};
static const char *const grpc_keys[] = {"listen", "max_connections", "max_streams", NULL};
static const char *const http_keys[] = {"max_connections", "idle_timeout_s",
					"max_buffered_bytes", "write_timeout_s", NULL};

int bt_redis_url_parse(const char *url, char **host, int *port, int *db, char *why,
		       size_t whylen)
{
	const char *p = url;
	if (strncmp(p, "redis://", 8)) {
		snprintf(why, whylen, "must start with redis://");
		return BT_ECONFIG;
	}
	p += 8;
	size_t hl = strcspn(p, ":/");
	if (hl == 0 || hl > 253 || strchr(p, '@')) {
		snprintf(why, whylen,
			 strchr(p, '@')
			     ? "has a user or password: put the password in queue.password_file "
			       "and an ACL user in queue.user, out of the url that logs and status show"
			     : "names no host");
		return BT_ECONFIG;
	}
	long pv = 6379, dv = 0;
	const char *q = p + hl;
	char *end;
	if (*q == ':') {
		errno = 0;
		pv = strtol(q + 1, &end, 10);
		if (errno || end == q + 1 || pv < 1 || pv > 65535 || (*end && *end != '/')) {
			snprintf(why, whylen, "has a bad port (1 to 65535)");
			return BT_ECONFIG;
		}
		q = end;
	}
	if (*q == '/' && q[1]) {
		errno = 0;
		dv = strtol(q + 1, &end, 10);
		if (errno || end == q + 1 || *end || dv < 0 || dv > 1000) {
			snprintf(why, whylen, "has a bad database number after '/'");
			return BT_ECONFIG;
		}
	} else if (*q && strcmp(q, "/")) {
		snprintf(why, whylen, "is not redis://HOST[:PORT][/DB]");
		return BT_ECONFIG;
	}
	*host = bt_strndup(p, hl);
	*port = (int)pv;
	*db = (int)dv;
	return 0;
}

int bt_config_uses_redis(const struct bt_config *cfg)
{
	for (int i = 0; i < cfg->nstages; i++)
		if (cfg->stages[i].queue_backend == BT_QUEUE_REDIS)
			return 1;
	return 0;
}

/*
 * queue.password_file: the password is the file's first line, as it is
 * (only the line's end is cut), so that it stays out of the config that
 * status, logs and the dashboard show.
 */
static int read_password(struct ctx *c, const yaml_node_t *v, char **out)
{
	char *file = NULL, *path, *text = NULL;
	int r = get_string(c, v, "queue.password_file", &file);
	if (r)
		return r;
	path = join_path(c->cfg->dir, file);
	size_t size;
	int e = read_file(path, &text, &size);
	if (e) {
		r = fail(c, v, "cannot read queue.password_file '%s': %s", path, bt_strerror(e));
	} else {
		size_t len = strcspn(text, "\r\n");
		if (!len || memchr(text, '\0', len))
			r = fail(c, v, "queue.password_file '%s' must hold the password on its first line",
				 path);
		else
			*out = bt_strndup(text, len);
		explicit_bzero(text, size);
	}
	free(text);
	free(path);
	free(file);
	return r;
}

/* queue: the default backend of the stages and the Redis server they share. */
static int parse_queue(struct ctx *c, const yaml_node_t *n)
{
	struct bt_queue_config *q = &c->cfg->queue;
	int r = check_mapping(c, n, "'queue'", queue_keys);
	q->present = 1;
	q->line = (int)n->start_mark.line + 1;
	q->col = (int)n->start_mark.column + 1;
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
	     !r && p < n->data.mapping.pairs.top; p++) {
		const char *k = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		char key[48], why[256];
		snprintf(key, sizeof(key), "queue.%s", k);
		if (!strcmp(k, "backend")) {
			r = get_backend(c, v, key, &q->backend);
		} else if (!strcmp(k, "url")) {
			if (!(r = get_string(c, v, key, &q->url)) &&
			    bt_redis_url_parse(q->url, &q->host, &q->port, &q->db, why, sizeof(why)))
				r = fail(c, v, "'queue.url' %s: '%s'", why, q->url);
			q->line = (int)v->start_mark.line + 1;
			q->col = (int)v->start_mark.column + 1;
		} else if (!strcmp(k, "namespace") || !strcmp(k, "node")) {
			char **out = k[0] == 'n' && k[1] == 'a' ? &q->ns : &q->node;
			if (!(r = get_string(c, v, key, out)) && !valid_name(*out))
				r = fail(c, v, "'%s' must be letters, digits, '_', '-', '.' (at most 64), not '%s'",
					 key, *out);
		} else if (!strcmp(k, "claim_after_ms")) {
			r = get_u64(c, v, key, 100, DAY_MS, &q->claim_after_ms);
		} else if (!strcmp(k, "inline_max_bytes")) {
			r = get_size(c, v, key, 0, 1LL << 29, &q->inline_max_bytes);
		} else if (!strcmp(k, "user")) {
			if (!(r = get_string(c, v, key, &q->user)) &&
			    (!q->user[0] || q->user[strcspn(q->user, " \t\r\n")]))
				r = fail(c, v, "'queue.user' must be a Redis user name (no spaces), not '%s'",
					 q->user);
		} else if (!strcmp(k, "password_file")) {
			r = read_password(c, v, &q->password);
		} else {
			char *dir = NULL;
			if (!(r = get_string(c, v, key, &dir))) {
				q->shared_dir = join_path(c->cfg->dir, dir);
				struct stat sb;
				if (stat(q->shared_dir, &sb) || !S_ISDIR(sb.st_mode))
					r = fail(c, v, "'queue.shared_dir' '%s' is not a directory",
						 q->shared_dir);
			}
			free(dir);
		}
	}
	if (!r && q->backend == BT_QUEUE_REDIS && !q->url)
		r = fail(c, n, "'queue' with backend redis needs 'url' (redis://HOST:PORT/DB)");
	if (!r && q->user && !q->password)
		r = fail(c, n, "'queue.user' needs 'queue.password_file' (the user's password)");
	return r;
}

/* auth: {token_file}: the token is the file's first line, at least 16 bytes. */
static int parse_auth(struct ctx *c, const yaml_node_t *n)
{
	int r = check_mapping(c, n, "'auth'", auth_keys);
	char *file = NULL;
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
	     !r && p < n->data.mapping.pairs.top; p++)
		r = get_string(c, node(c, p->value), "auth.token_file", &file);
	if (!r && !file)
		r = fail(c, n, "'auth' needs 'token_file'");
	if (r) {
		free(file);
		return r;
	}
	char *path = join_path(c->cfg->dir, file), *text = NULL;
	size_t len;
	int e = read_file(path, &text, &len);
	if (e) {
		r = fail(c, n, "cannot read auth.token_file '%s': %s", path, bt_strerror(e));
	} else {
		len = strcspn(text, "\r\n");
		while (len && (text[len - 1] == ' ' || text[len - 1] == '\t'))
			len--;
		if (len < 16 || memchr(text, '\0', len))
			r = fail(c, n, "auth.token_file '%s' must hold a token of at least 16 characters on its first line",
				 path);
		else
			c->cfg->auth_token = bt_strndup(text, len);
	}
	free(text);
	free(path);
	free(file);
	return r;
}

static int parse_http(struct ctx *c, const yaml_node_t *n)
{
	int r = check_mapping(c, n, "'http'", http_keys);
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
	     !r && p < n->data.mapping.pairs.top; p++) {
		const char *k = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		long long val;
		char key[48];
		snprintf(key, sizeof(key), "http.%s", k);
		if (!strcmp(k, "max_buffered_bytes")) {
			r = get_size(c, v, key, 1 << 20, 1LL << 40, &c->cfg->http_max_buffered_bytes);
			if (!r && c->cfg->http_max_buffered_bytes < c->cfg->max_request_bytes)
				r = fail(c, v, "'http.max_buffered_bytes' (%zu) must be at least max_request_bytes (%zu), or no request of that size could ever be taken",
					 c->cfg->http_max_buffered_bytes, c->cfg->max_request_bytes);
			continue;
		}
		int conns = !strcmp(k, "max_connections");
		r = get_int(c, v, key, 1, conns ? 100000 : 3600, &val);
		if (!r && conns)
			c->cfg->http_max_connections = (unsigned)val;
		else if (!r && !strcmp(k, "write_timeout_s"))
			c->cfg->http_write_timeout_s = (unsigned)val;
		else if (!r)
			c->cfg->http_idle_timeout_s = (unsigned)val;
	}
	return r;
}
/* grpc: {listen, max_connections, max_streams}: the gRPC ingress, off without listen. */
static int parse_grpc(struct ctx *c, const yaml_node_t *n)
{
	int r = check_mapping(c, n, "'grpc'", grpc_keys);
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
	     !r && p < n->data.mapping.pairs.top; p++) {
		const char *k = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		long long val;
		char key[48], *s = NULL, *host = NULL, why[256];
		int port;
		snprintf(key, sizeof(key), "grpc.%s", k);
		if (!strcmp(k, "listen")) {
			r = get_string(c, v, key, &s);
			if (!r && bt_listen_parse(s, &host, &port, why, sizeof(why))) {
				r = fail(c, v, "'grpc.listen' %s", why);
			} else if (!r) {
				free(c->cfg->grpc_listen_host);
				c->cfg->grpc_listen_host = host;
				c->cfg->grpc_listen_port = port;
			}
			free(s);
			continue;
		}
		int conns = !strcmp(k, "max_connections");
		r = get_int(c, v, key, 1, conns ? 100000 : 10000, &val);
		if (!r && conns)
			c->cfg->grpc_max_connections = (unsigned)val;
		else if (!r)
			c->cfg->grpc_max_streams = (unsigned)val;
	}
	if (!r && !c->cfg->grpc_listen_host)
		r = fail(c, n, "'grpc' needs 'listen' (HOST:PORT)");
	return r;
}

static const char *const gpu_keys[] = {"id", "memory_mb", NULL};

/* gpus: auto | none | [{id, memory_mb}, ...] */
static int parse_gpus(struct ctx *c, const yaml_node_t *n)
{
	struct bt_config *cfg = c->cfg;
	if (n->type == YAML_SCALAR_NODE) {
		if (!strcmp(scalar(n), "auto"))
			cfg->gpus_mode = BT_GPUS_AUTO;
		else if (!strcmp(scalar(n), "none"))
			cfg->gpus_mode = BT_GPUS_NONE;
		else
			return fail(c, n, "'gpus' must be auto, none or a list of {id, memory_mb}, not '%s'",
				    scalar(n));
		return 0;
	}
	if (n->type != YAML_SEQUENCE_NODE)
		return fail(c, n, "'gpus' must be auto, none or a list of {id, memory_mb}");
	size_t count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
	cfg->gpus_mode = BT_GPUS_LIST;
	cfg->gpus = bt_calloc(count, sizeof(*cfg->gpus));
	for (size_t i = 0; i < count; i++) {
		yaml_node_t *g = node(c, n->data.sequence.items.start[i]);
		int r = check_mapping(c, g, "a GPU of 'gpus'", gpu_keys);
		int have_id = 0, have_mem = 0;
		for (yaml_node_pair_t *p = g->data.mapping.pairs.start;
		     !r && p < g->data.mapping.pairs.top; p++) {
			const char *k = scalar(node(c, p->key));
			yaml_node_t *v = node(c, p->value);
			if (!strcmp(k, "id")) {
				have_id = 1;
				r = get_i(c, v, "gpus.id", 0, 1024, &cfg->gpus[i].id);
			} else {
				have_mem = 1;
				r = get_u64(c, v, "gpus.memory_mb", 1, 1LL << 30, &cfg->gpus[i].memory_mb);
			}
		}
		if (!r && !(have_id && have_mem))
			r = fail(c, g, "a GPU of 'gpus' needs 'id' and 'memory_mb'");
		for (size_t j = 0; !r && j < i; j++)
			if (cfg->gpus[j].id == cfg->gpus[i].id)
				r = fail(c, g, "GPU id %d is listed twice", cfg->gpus[i].id);
		if (r)
			return r;
		cfg->ngpus++;
	}
	return 0;
}


/* ---- streams ------------------------------------------------------------- */

static const char *const stream_keys[] = {"source", "stations", "items", "session", "process",
					  "flow", "spool", "results", NULL};
static const char *const session_keys[] = {"key", "idle_timeout_ms", "max_duration_ms",
					   "max_items", "missing_key", NULL};
static const char *const flow_keys[] = {"credits", "overflow", NULL};
static const char *const station_keys[] = {"name", "url", NULL};

/* A pipeline made from one of a stream's stage lists; -1 for an empty list. */
static int stream_pipeline(struct ctx *c, struct bt_stream_config *sc, const yaml_node_t *n,
			   const char *suffix, int *out)
{
	struct bt_config *cfg = c->cfg;
	char name[96];
	snprintf(name, sizeof(name), "%s.%s", sc->name, suffix);
	*out = -1;
	if (n->type != YAML_SEQUENCE_NODE)
		return fail(c, n, "'%s' of stream '%s' must be a list of stage names, not %s", suffix,
			    sc->name, type_name(n));
	if (n->data.sequence.items.top == n->data.sequence.items.start) {
		if (!strcmp(suffix, "process"))
			return fail(c, n, "'process' of stream '%s' has no stages", sc->name);
		return 0;
	}
	if (bt_config_pipeline_index(cfg, name) >= 0)
		return fail(c, n, "stream '%s' needs the pipeline name '%s', which 'pipelines' already uses",
			    sc->name, name);
	struct bt_pipeline_config *pl = &cfg->pipelines[cfg->npipelines];
	memset(pl, 0, sizeof(*pl));
	pl->name = bt_strdup(name);
	cfg->npipelines++;
	int r = parse_stage_list(c, n, pl);
	for (int i = 0; !r && i < pl->nstages; i++)
		if (cfg->stages[pl->stages[i]].source)
			r = fail(c, n, "'%s' of stream '%s' names source stage '%s': a source feeds a stream, it takes no requests",
				 suffix, sc->name, cfg->stages[pl->stages[i]].name);
	*out = cfg->npipelines - 1;
	return r;
}

static int parse_station(struct ctx *c, struct bt_stream_config *sc, const yaml_node_t *n,
			 struct bt_station_config *out, int index)
{
	if (n->type == YAML_SCALAR_NODE) {
		if (has_nul(n) || !scalar(n)[0])
			return fail(c, n, "a station of stream '%s' needs a URL", sc->name);
		out->url = bt_strdup(scalar(n));
		out->name = bt_asprintf("station%d", index + 1);
		return 0;
	}
	char what[128];
	snprintf(what, sizeof(what), "a station of stream '%s'", sc->name);
	int r = check_mapping(c, n, what, station_keys);
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
	     !r && p < n->data.mapping.pairs.top; p++) {
		const char *k = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		r = get_string(c, v, k, !strcmp(k, "name") ? &out->name : &out->url);
		if (!r && !strcmp(k, "name") && !valid_name(out->name))
			r = fail(c, v, "station name '%s' is not valid (letters, digits, '_', '-', '.'; at most 64)",
				 out->name);
		if (!r && !strcmp(k, "url") && !out->url[0])
			r = fail(c, v, "'url' of a station of stream '%s' is empty", sc->name);
	}
	if (!r && !out->url)
		r = fail(c, n, "a station of stream '%s' needs 'url'", sc->name);
	if (!r && !out->name)
		out->name = bt_asprintf("station%d", index + 1);
	return r;
}

static int parse_stream(struct ctx *c, const yaml_node_t *key, const yaml_node_t *n,
			struct bt_stream_config *sc)
{
	struct bt_config *cfg = c->cfg;
	const yaml_node_t *source = NULL, *stations = NULL, *items = NULL, *process = NULL;
	char what[128];
	char *spool = NULL, *results = NULL;
	int r;
	sc->name = bt_strdup(scalar(key));
	sc->source = sc->items_pipeline = sc->process_pipeline = -1;
	sc->idle_timeout_ms = 10000; /* seed 001's order timeout */
	sc->credits = 8;
	sc->spool_line = (int)key->start_mark.line + 1;
	sc->spool_col = (int)key->start_mark.column + 1;
	if (!valid_name(sc->name))
		return fail(c, key,
			    "stream name '%s' is not valid (letters, digits, '_', '-', '.'; at most 64)",
			    sc->name);
	snprintf(what, sizeof(what), "stream '%s'", sc->name);
	if ((r = check_mapping(c, n, what, stream_keys)))
		return r;
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
	     !r && p < n->data.mapping.pairs.top; p++) {
		const char *k = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		if (!strcmp(k, "source")) {
			source = v;
		} else if (!strcmp(k, "stations")) {
			stations = v;
		} else if (!strcmp(k, "items")) {
			items = v;
		} else if (!strcmp(k, "process")) {
			process = v;
		} else if (!strcmp(k, "spool")) {
			r = get_string(c, v, k, &spool);
			sc->spool_line = (int)v->start_mark.line + 1;
			sc->spool_col = (int)v->start_mark.column + 1;
		} else if (!strcmp(k, "results")) {
			r = get_string(c, v, k, &results);
		} else if (!strcmp(k, "session")) {
			r = check_mapping(c, v, "'session'", session_keys);
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
			     !r && q < v->data.mapping.pairs.top; q++) {
				const char *sk = scalar(node(c, q->key));
				yaml_node_t *sv = node(c, q->value);
				char full[48];
				snprintf(full, sizeof(full), "session.%s", sk);
				if (!strcmp(sk, "key")) {
					r = get_string(c, sv, full, &sc->key);
					if (!r && !sc->key[0])
						r = fail(c, sv, "'session.key' is empty");
				} else if (!strcmp(sk, "idle_timeout_ms")) {
					r = get_u64(c, sv, full, 1, DAY_MS, &sc->idle_timeout_ms);
				} else if (!strcmp(sk, "max_duration_ms")) {
					r = get_u64(c, sv, full, 0, DAY_MS, &sc->max_duration_ms);
				} else if (!strcmp(sk, "max_items")) {
					r = get_i(c, sv, full, 0, 1000000, &sc->max_items);
				} else {
					char *mk = NULL;
					r = get_string(c, sv, full, &mk);
					if (!r && !strcmp(mk, "close"))
						sc->missing_key = BT_MISSING_CLOSE;
					else if (!r && strcmp(mk, "ignore"))
						r = fail(c, sv, "'session.missing_key' must be 'ignore' or 'close', not '%s'",
							 mk);
					free(mk);
				}
			}
		} else {
			r = check_mapping(c, v, "'flow'", flow_keys);
			for (yaml_node_pair_t *q = v->data.mapping.pairs.start;
			     !r && q < v->data.mapping.pairs.top; q++) {
				const char *fk = scalar(node(c, q->key));
				yaml_node_t *fv = node(c, q->value);
				if (!strcmp(fk, "credits")) {
					r = get_i(c, fv, "flow.credits", 1, 65536, &sc->credits);
				} else {
					char *ov = NULL;
					r = get_string(c, fv, "flow.overflow", &ov);
					if (!r && !strcmp(ov, "drop_oldest"))
						sc->overflow = BT_OVERFLOW_DROP_OLDEST;
					else if (!r && strcmp(ov, "block"))
						r = fail(c, fv, "'flow.overflow' must be 'block' or 'drop_oldest', not '%s'",
							 ov);
					free(ov);
				}
			}
		}
	}
	if (r)
		goto out;
	if (!source || !stations || !process) {
		r = fail(c, key, "stream '%s' needs '%s'", sc->name,
			 !source ? "source" : !stations ? "stations" : "process");
		goto out;
	}
	if (source->type != YAML_SCALAR_NODE || has_nul(source) ||
	    (sc->source = bt_config_stage_index(cfg, scalar(source))) < 0) {
		r = fail(c, source, "'source' of stream '%s' must name a stage", sc->name);
		goto out;
	}
	struct bt_stage_config *src = &cfg->stages[sc->source];
	if (!src->source) {
		r = fail(c, source, "stage '%s' is not a source: give it 'kind: source'", src->name);
		goto out;
	}
	for (int i = 0; i < c->cfg->nstreams; i++) {
		if (&cfg->streams[i] != sc && cfg->streams[i].source == sc->source) {
			r = fail(c, source, "source stage '%s' already feeds stream '%s'", src->name,
				 cfg->streams[i].name);
			goto out;
		}
	}
	if (stations->type != YAML_SEQUENCE_NODE ||
	    stations->data.sequence.items.top == stations->data.sequence.items.start) {
		r = fail(c, stations, "'stations' of stream '%s' must be a non-empty list", sc->name);
		goto out;
	}
	int ns = (int)(stations->data.sequence.items.top - stations->data.sequence.items.start);
	sc->stations = bt_calloc((size_t)ns, sizeof(*sc->stations));
	for (int i = 0; i < ns && !r; i++) {
		yaml_node_t *sn = node(c, stations->data.sequence.items.start[i]);
		r = parse_station(c, sc, sn, &sc->stations[i], i);
		sc->nstations++;
		for (int j = 0; !r && j < i; j++)
			if (!strcmp(sc->stations[j].name, sc->stations[i].name))
				r = fail(c, sn, "two stations of stream '%s' are named '%s'", sc->name,
					 sc->stations[i].name);
	}
	if (r)
		goto out;
	/* One replica slot per station: listed ones, and room for those added at run time. */
	if (!src->replicas_given) {
		src->replicas_initial = src->replicas_min = ns;
		src->replicas_max = ns;
	} else if (src->replicas_initial > ns) {
		r = fail(c, src->replicas_node,
			 "stage '%s' starts %d stations (replicas.initial) but stream '%s' lists %d",
			 src->name, src->replicas_initial, sc->name, ns);
		goto out;
	}
	if (src->replicas_max < ns)
		src->replicas_max = ns;
	src->autoscale.min = src->replicas_min;
	src->autoscale.max = src->replicas_max;
	if (items && (r = stream_pipeline(c, sc, items, "items", &sc->items_pipeline)))
		goto out;
	if ((r = stream_pipeline(c, sc, process, "process", &sc->process_pipeline)))
		goto out;
	if (!sc->key)
		sc->key = bt_strdup("session");
	sc->spool = join_path(cfg->dir, spool ? spool : "spool");
	sc->results = join_path(sc->spool, results ? results : "results.jsonl");
	{
		/* Two streams writing one spool would mix their stations' sessions. */
		for (int i = 0; i < cfg->nstreams; i++)
			if (&cfg->streams[i] != sc && cfg->streams[i].spool &&
			    !strcmp(cfg->streams[i].spool, sc->spool))
				r = fail(c, key, "streams '%s' and '%s' share the spool '%s'",
					 cfg->streams[i].name, sc->name, sc->spool);
	}
out:
	free(spool);
	free(results);
	return r;
}

static int parse_streams(struct ctx *c, const yaml_node_t *n)
{
	struct bt_config *cfg = c->cfg;
	int r = check_mapping(c, n, "'streams'", NULL);
	if (r)
		return r;
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
	     !r && p < n->data.mapping.pairs.top; p++)
		r = parse_stream(c, node(c, p->key), node(c, p->value),
				 &cfg->streams[cfg->nstreams++]);
	for (int i = 0; !r && i < cfg->nstages; i++) {
		const struct bt_stage_config *st = &cfg->stages[i];
		if (st->source && bt_config_stream_index_of_source(cfg, i) < 0)
			r = fail(c, n, "source stage '%s' feeds no stream", st->name);
	}
	return r;
}

static const char *const run_keys[] = {"pipeline", "source", "sink", "checkpoint",
				       "reconnect_max_s", NULL};
static const char *const run_source_keys[] = {"connect", "query", "key", "page_rows",
					      "request", NULL};
static const char *const run_sink_keys[] = {"connect", "table", "key", "columns", "jsonb",
					    "failures_table", "checkpoint_table", NULL};

/*
 * A libpq connection string must not carry a password: the config is read
 * by `baton check`, copied around and quoted in errors.  Looks for the
 * keyword and for a URI's "user:password@".
 */
static int check_connect(struct ctx *c, const yaml_node_t *n, const char *s)
{
	char *lower = bt_strdup(s);
	for (char *p = lower; *p; p++)
		*p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
	const char *uri = strstr(lower, "://");
	const char *at = uri ? strchr(uri, '@') : NULL;
	int bad = strstr(lower, "password") != NULL ||
		  (at && memchr(uri + 3, ':', (size_t)(at - uri - 3)) != NULL);
	free(lower);
	if (bad)
		return fail(c, n, "'connect' must not hold a password: put it in ~/.pgpass (or "
				  "PGPASSFILE), a service file or PGPASSWORD");
	return 0;
}

/* A name, or a list of names (sink.key); at least one. */
static int get_names(struct ctx *c, const yaml_node_t *n, const char *key, char ***out,
		     int *count)
{
	if (n->type == YAML_SCALAR_NODE) {
		*out = bt_calloc(1, sizeof(char *));
		*count = 1;
		return get_string(c, n, key, &(*out)[0]);
	}
	if (n->type != YAML_SEQUENCE_NODE || n->data.sequence.items.top == n->data.sequence.items.start)
		return fail(c, n, "'%s' must be a column name or a non-empty list of them", key);
	size_t k = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
	*out = bt_calloc(k, sizeof(char *));
	for (size_t i = 0; i < k; i++) {
		int r = get_string(c, node(c, n->data.sequence.items.start[i]), key, &(*out)[i]);
		(*count)++;
		if (r)
			return r;
	}
	return 0;
}

/* sink.columns: a list of names (field = column) or a mapping column: field. */
static int parse_run_columns(struct ctx *c, const yaml_node_t *n, struct bt_run_config *run)
{
	if (n->type == YAML_SEQUENCE_NODE) {
		int r = get_names(c, n, "sink.columns", &run->sink_columns, &run->nsink_columns);
		run->sink_fields = bt_calloc((size_t)run->nsink_columns + 1, sizeof(char *));
		for (int i = 0; i < run->nsink_columns; i++)
			if (run->sink_columns[i])
				run->sink_fields[i] = bt_strdup(run->sink_columns[i]);
		return r;
	}
	int r = check_mapping(c, n, "'sink.columns'", NULL);
	if (r)
		return r;
	size_t k = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
	if (k == 0)
		return fail(c, n, "'sink.columns' is empty");
	run->sink_columns = bt_calloc(k, sizeof(char *));
	run->sink_fields = bt_calloc(k, sizeof(char *));
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start; !r && p < n->data.mapping.pairs.top;
	     p++) {
		int i = run->nsink_columns++;
		run->sink_columns[i] = bt_strdup(scalar(node(c, p->key)));
		r = get_string(c, node(c, p->value), "sink.columns", &run->sink_fields[i]);
	}
	return r;
}

/* run: {pipeline, source: {postgresql: {...}}, sink: {postgresql: {...}}, ...} */
static int parse_run(struct ctx *c, const yaml_node_t *n)
{
	struct bt_run_config *run = &c->cfg->run;
	int r = check_mapping(c, n, "'run'", run_keys);
	const yaml_node_t *src = NULL, *sink = NULL;
	run->present = 1;
	run->line = (int)n->start_mark.line + 1;
	run->col = (int)n->start_mark.column + 1;
	run->page_rows = 1000;
	run->reconnect_max_s = 60;
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start; !r && p < n->data.mapping.pairs.top;
	     p++) {
		const char *k = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		if (!strcmp(k, "pipeline"))
			r = get_string(c, v, "run.pipeline", &run->pipeline);
		else if (!strcmp(k, "checkpoint"))
			r = get_string(c, v, "run.checkpoint", &run->checkpoint_name);
		else if (!strcmp(k, "reconnect_max_s"))
			r = get_u64(c, v, "run.reconnect_max_s", 0, 86400, &run->reconnect_max_s);
		else if (!strcmp(k, "source"))
			src = v;
		else
			sink = v;
	}
	static const char *const pg_only[] = {"postgresql", NULL};
	if (!r && (!src || !sink))
		r = fail(c, n, "'run' needs both 'source' and 'sink' (postgresql)");
	if (!r && !(r = check_mapping(c, src, "'run.source'", pg_only)) &&
	    src->data.mapping.pairs.top == src->data.mapping.pairs.start)
		r = fail(c, src, "'run.source' needs 'postgresql'");
	if (!r && !(r = check_mapping(c, sink, "'run.sink'", pg_only)) &&
	    sink->data.mapping.pairs.top == sink->data.mapping.pairs.start)
		r = fail(c, sink, "'run.sink' needs 'postgresql'");
	if (r)
		return r;
	src = node(c, src->data.mapping.pairs.start->value);
	sink = node(c, sink->data.mapping.pairs.start->value);
	if ((r = check_mapping(c, src, "'run.source.postgresql'", run_source_keys)) ||
	    (r = check_mapping(c, sink, "'run.sink.postgresql'", run_sink_keys)))
		return r;
	run->src_line = (int)src->start_mark.line + 1;
	run->src_col = (int)src->start_mark.column + 1;
	run->sink_line = (int)sink->start_mark.line + 1;
	run->sink_col = (int)sink->start_mark.column + 1;
	for (yaml_node_pair_t *p = src->data.mapping.pairs.start;
	     !r && p < src->data.mapping.pairs.top; p++) {
		const char *k = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		if (!strcmp(k, "connect")) {
			r = get_string(c, v, "source.connect", &run->src_connect);
			r = r ? r : check_connect(c, v, run->src_connect);
		} else if (!strcmp(k, "query")) {
			r = get_string(c, v, "source.query", &run->src_query);
		} else if (!strcmp(k, "key")) {
			r = get_string(c, v, "source.key", &run->src_key);
			run->key_line = (int)v->start_mark.line + 1;
			run->key_col = (int)v->start_mark.column + 1;
		} else if (!strcmp(k, "page_rows")) {
			r = get_i(c, v, "source.page_rows", 1, 1000000, &run->page_rows);
		} else {
			char *s = NULL;
			r = get_string(c, v, "source.request", &s);
			if (!r && !strcmp(s, "row"))
				run->unit = BT_RUN_ROW;
			else if (!r && strcmp(s, "page"))
				r = fail(c, v, "'source.request' must be page or row, not '%s'", s);
			free(s);
		}
	}
	if (!r && (!run->src_query || !run->src_key))
		r = fail(c, src, "'run.source.postgresql' needs 'query' and 'key'");
	for (yaml_node_pair_t *p = sink->data.mapping.pairs.start;
	     !r && p < sink->data.mapping.pairs.top; p++) {
		const char *k = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		if (!strcmp(k, "connect")) {
			r = get_string(c, v, "sink.connect", &run->sink_connect);
			r = r ? r : check_connect(c, v, run->sink_connect);
		} else if (!strcmp(k, "table")) {
			r = get_string(c, v, "sink.table", &run->sink_table);
		} else if (!strcmp(k, "key")) {
			r = get_names(c, v, "sink.key", &run->sink_key, &run->nsink_key);
		} else if (!strcmp(k, "columns")) {
			r = parse_run_columns(c, v, run);
		} else if (!strcmp(k, "jsonb")) {
			r = get_string(c, v, "sink.jsonb", &run->sink_jsonb);
		} else if (!strcmp(k, "failures_table")) {
			r = get_string(c, v, "sink.failures_table", &run->failures_table);
		} else {
			r = get_string(c, v, "sink.checkpoint_table", &run->checkpoint_table);
		}
	}
	if (!r && !run->sink_table)
		r = fail(c, sink, "'run.sink.postgresql' needs 'table'");
	if (r)
		return r;
	if (!run->nsink_key) {
		run->sink_key = bt_calloc(1, sizeof(char *));
		run->sink_key[0] = bt_strdup(run->src_key);
		run->nsink_key = 1;
	}
	if (!run->src_connect)
		run->src_connect = bt_strdup("");
	if (!run->sink_connect)
		run->sink_connect = bt_strdup("");
	if (!run->failures_table)
		run->failures_table = bt_strdup("baton_failures");
	if (!run->checkpoint_table)
		run->checkpoint_table = bt_strdup("baton_checkpoints");
	if (!run->checkpoint_name)
		run->checkpoint_name = bt_asprintf("%s", run->sink_table);
	return 0;
}

static int parse_root(struct ctx *c, yaml_node_t *root)
{
	struct bt_config *cfg = c->cfg;
	const yaml_node_t *stages = NULL, *pipelines = NULL, *streams = NULL, *http = NULL;
	int r;
	if (!root)
		return fail(c, NULL, "the file is empty");
	if ((r = check_mapping(c, root, "the top level", top_keys)))
		return r;
	cfg->written = json_object();
	for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
	     p < root->data.mapping.pairs.top && !r; p++) {
		const char *k = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		if (strcmp(k, "stages") && strcmp(k, "pipelines")) {
			/* As written, for a reload to compare key by key. */
			int budget = 100000;
			json_t *j = to_json(c, v, 0, &budget);
			if (!j)
				return BT_ECONFIG;
			json_object_set_new(cfg->written, k, j);
		}
		if (!strcmp(k, "listen")) {
			r = parse_listen(c, v);
		} else if (!strcmp(k, "log_level")) {
			char *s = NULL;
			r = get_string(c, v, k, &s);
			if (!r && bt_log_level_parse(s, &cfg->log_level))
				r = fail(c, v, "'log_level' must be debug, info, warn or error, not '%s'",
					 s);
			free(s);
		} else if (!strcmp(k, "max_request_bytes")) {
			r = get_size(c, v, k, 1, 1LL << 30, &cfg->max_request_bytes);
		} else if (!strcmp(k, "max_payload_bytes")) {
			r = get_size(c, v, k, 1, 1LL << 30, &cfg->max_payload_bytes);
		} else if (!strcmp(k, "memfd_min_bytes")) {
			r = get_size(c, v, k, 0, 1LL << 30, &cfg->memfd_min_bytes);
		} else if (!strcmp(k, "gpus")) {
			r = parse_gpus(c, v);
		} else if (!strcmp(k, "interval_ms")) {
			r = get_u64(c, v, k, 50, 60000, &cfg->interval_ms);
		} else if (!strcmp(k, "auth")) {
			r = parse_auth(c, v);
		} else if (!strcmp(k, "http")) {
			http = v; /* after max_request_bytes, which it is checked against */
		} else if (!strcmp(k, "cgroup")) {
			r = get_string(c, v, k, &cfg->cgroup);
			if (!r && strcmp(cfg->cgroup, "auto") && strcmp(cfg->cgroup, "off") &&
			    cfg->cgroup[0] != '/')
				r = fail(c, v, "'cgroup' must be auto, off or an absolute path, not '%s'",
					 cfg->cgroup);
		} else if (!strcmp(k, "run")) {
			r = parse_run(c, v);
		} else if (!strcmp(k, "grpc")) {
			r = parse_grpc(c, v);
		} else if (!strcmp(k, "queue")) {
			r = parse_queue(c, v);
		} else if (!strcmp(k, "stages")) {
			stages = v;
		} else if (!strcmp(k, "streams")) {
			streams = v;
		} else {
			pipelines = v;
		}
	}
	if (!r && http)
		r = parse_http(c, http);
	if (r)
		return r;
	/* Room for several of the largest requests at once, at the least. */
	if (!cfg->http_max_buffered_bytes)
		cfg->http_max_buffered_bytes = BT_MAX((size_t)256 << 20, 4 * cfg->max_request_bytes);
	if (!stages)
		return fail(c, root, "missing required key 'stages'");
	if (!pipelines && !streams)
		return fail(c, root, "missing required key 'pipelines' (or 'streams')");
	if ((r = check_mapping(c, stages, "'stages'", NULL)))
		return r;
	size_t n = (size_t)(stages->data.mapping.pairs.top - stages->data.mapping.pairs.start);
	if (n == 0)
		return fail(c, stages, "'stages' is empty");
	cfg->stages = bt_calloc(n, sizeof(*cfg->stages));
	for (yaml_node_pair_t *p = stages->data.mapping.pairs.start;
	     p < stages->data.mapping.pairs.top; p++) {
		struct bt_stage_config *st = &cfg->stages[cfg->nstages++];
		r = parse_stage(c, node(c, p->key), node(c, p->value), st);
		if (r)
			return r;
		/* As written, for a reload to compare key by key. */
		int budget = 100000;
		if (!(st->written = to_json(c, node(c, p->value), 0, &budget)))
			return BT_ECONFIG;
		if (!st->queue_given)
			st->queue_backend = cfg->queue.backend;
		if (st->queue_backend == BT_QUEUE_REDIS && !cfg->queue.url) {
			snprintf(c->err, c->errlen,
				 "%s:%d:%d: stage '%s' has its queue in redis: the top-level 'queue' needs 'url' (redis://HOST:PORT/DB)",
				 c->path, st->queue_line, st->queue_col, st->name);
			return BT_ECONFIG;
		}
		if (st->queue_backend == BT_QUEUE_REDIS && st->source) {
			snprintf(c->err, c->errlen,
				 "%s:%d:%d: source stage '%s' takes no requests: its queue cannot be in redis (give it 'queue: {backend: local}')",
				 c->path, st->line, st->col, st->name);
			return BT_ECONFIG;
		}
	}
	size_t nstreams = 0;
	if (streams) {
		if ((r = check_mapping(c, streams, "'streams'", NULL)))
			return r;
		nstreams = (size_t)(streams->data.mapping.pairs.top -
				    streams->data.mapping.pairs.start);
		if (nstreams == 0)
			return fail(c, streams, "'streams' is empty");
	}
	n = 0;
	if (pipelines) {
		if ((r = check_mapping(c, pipelines, "'pipelines'", NULL)))
			return r;
		n = (size_t)(pipelines->data.mapping.pairs.top -
			     pipelines->data.mapping.pairs.start);
		if (n == 0)
			return fail(c, pipelines, "'pipelines' is empty");
	}
	/* Each stream adds up to two pipelines of its own. */
	cfg->pipelines = bt_calloc(n + 2 * nstreams, sizeof(*cfg->pipelines));
	for (yaml_node_pair_t *p = pipelines ? pipelines->data.mapping.pairs.start : NULL;
	     pipelines && p < pipelines->data.mapping.pairs.top; p++) {
		r = parse_pipeline(c, node(c, p->key), node(c, p->value),
				   &cfg->pipelines[cfg->npipelines++]);
		if (r)
			return r;
		const struct bt_pipeline_config *pl = &cfg->pipelines[cfg->npipelines - 1];
		for (int i = 0; i < pl->nstages; i++)
			if (cfg->stages[pl->stages[i]].source)
				return fail(c, node(c, p->key),
					    "pipeline '%s' names source stage '%s': a source feeds a stream, it takes no requests",
					    pl->name, cfg->stages[pl->stages[i]].name);
	}
	if (streams) {
		cfg->streams = bt_calloc(nstreams, sizeof(*cfg->streams));
		if ((r = parse_streams(c, streams)))
			return r;
	} else {
		for (int i = 0; i < cfg->nstages; i++)
			if (cfg->stages[i].source)
				return fail(c, root, "source stage '%s' feeds no stream (add 'streams')",
					    cfg->stages[i].name);
	}
	if (cfg->run.pipeline && bt_config_pipeline_index(cfg, cfg->run.pipeline) < 0) {
		snprintf(c->err, c->errlen, "%s:%d:%d: 'run.pipeline' names unknown pipeline '%s'",
			 c->path, cfg->run.line, cfg->run.col, cfg->run.pipeline);
		return BT_ECONFIG;
	}
	return 0;
}

/*
 * A sentence for libyaml's messages that name the parser's state rather
 * than the mistake, which is nearly always indentation.  "" when libyaml's
 * own words are clear enough.
 */
static const char *yaml_hint(const yaml_parser_t *p)
{
	if (!p->problem)
		return "";
	if (!strcmp(p->problem, "did not find expected key"))
		return "this line is indented differently from the keys of the mapping it "
		       "belongs to: align it with the keys above, or indent it under one "
		       "(a value that goes on after ': ' needs quotes) -- ";
	if (!strcmp(p->problem, "mapping values are not allowed in this context"))
		return "this line is indented deeper than the keys above it, so its 'key:' "
		       "cannot start here (or a value contains ': ' and needs quotes) -- ";
	if (!strcmp(p->problem, "did not find expected '-' indicator"))
		return "a list item is indented differently from the items above it -- ";
	return "";
}

int bt_config_parse(const char *path, const char *text, size_t len,
		    struct bt_config *cfg, char *err, size_t errlen)
{
	yaml_parser_t parser;
	yaml_document_t doc;
	struct ctx c = {path, &doc, err, errlen, cfg};
	int r;

	memset(cfg, 0, sizeof(*cfg));
	cfg->path = bt_strdup(path);
	cfg->listen_host = bt_strdup("127.0.0.1");
	cfg->listen_port = 8080;
	cfg->log_level = BT_LOG_INFO;
	cfg->max_request_bytes = 64u << 20;
	cfg->max_payload_bytes = 256u << 20;
	cfg->memfd_min_bytes = 256u << 10;
	cfg->gpus_mode = BT_GPUS_AUTO;
	cfg->interval_ms = 1000;
	cfg->http_max_connections = 1000;
	cfg->http_idle_timeout_s = 60;
	cfg->http_write_timeout_s = 30;
	cfg->grpc_max_connections = 1000;
	cfg->grpc_max_streams = 100;
	cfg->queue.port = 6379;
	cfg->queue.claim_after_ms = 30000;
	cfg->queue.inline_max_bytes = 1 << 20;
	{
		char *copy = bt_strdup(path);
		char *slash = strrchr(copy, '/');
		const char *d = slash ? (slash == copy ? "/" : (*slash = '\0', copy)) : ".";
		char real[PATH_MAX];
		cfg->dir = bt_strdup(realpath(d, real) ? real : d);
		free(copy);
	}

	if (!yaml_parser_initialize(&parser)) {
		snprintf(err, errlen, "%s: cannot initialise the YAML parser", path);
		bt_config_release(cfg);
		return BT_ECONFIG;
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	if (!yaml_parser_load(&parser, &doc)) {
		snprintf(err, errlen, "%s:%zu:%zu: %sYAML: %s%s%s", path,
			 parser.problem_mark.line + 1, parser.problem_mark.column + 1,
			 yaml_hint(&parser), parser.problem ? parser.problem : "syntax error",
			 parser.context ? " " : "", parser.context ? parser.context : "");
		yaml_parser_delete(&parser);
		bt_config_release(cfg);
		return BT_ECONFIG;
	}
	r = parse_root(&c, yaml_document_get_root_node(&doc));
	yaml_document_delete(&doc);
	if (!r) {
		/* A second document would be silently ignored: refuse it. */
		yaml_document_t more;
		if (!yaml_parser_load(&parser, &more)) {
			r = fail(&c, NULL, "YAML: %s", parser.problem ? parser.problem : "syntax error");
		} else {
			yaml_node_t *root = yaml_document_get_root_node(&more);
			if (root)
				r = fail(&c, root, "a second YAML document; the configuration is one document");
			yaml_document_delete(&more);
		}
	}
	yaml_parser_delete(&parser);
	if (r)
		bt_config_release(cfg);
	return r;
}

int bt_config_load(const char *path, struct bt_config *cfg, char *err,
		   size_t errlen)
{
	char *text;
	size_t len;
	int e = read_file(path, &text, &len);
	if (e) {
		memset(cfg, 0, sizeof(*cfg));
		snprintf(err, errlen, "%s: cannot read: %s", path, bt_strerror(e));
		return BT_ECONFIG;
	}
	int r = bt_config_parse(path, text, len, cfg, err, errlen);
	free(text);
	return r;
}

static void free_names(char **v, int n)
{
	for (int i = 0; v && i < n; i++)
		free(v[i]);
	free(v);
}

static void run_release(struct bt_run_config *run)
{
	free(run->pipeline);
	free(run->src_connect);
	free(run->src_query);
	free(run->src_key);
	free(run->sink_connect);
	free(run->sink_table);
	free_names(run->sink_key, run->nsink_key);
	free_names(run->sink_columns, run->nsink_columns);
	free_names(run->sink_fields, run->nsink_columns);
	free(run->sink_jsonb);
	free(run->failures_table);
	free(run->checkpoint_table);
	free(run->checkpoint_name);
}

void bt_config_release(struct bt_config *cfg)
{
	for (int i = 0; i < cfg->nstages; i++) {
		struct bt_stage_config *st = &cfg->stages[i];
		free(st->name);
		for (int a = 0; st->argv && a < st->argc; a++)
			free(st->argv[a]);
		free(st->argv);
		free(st->workdir);
		free(st->venv);
		for (int e = 0; e < st->nenv; e++) {
			free(st->env[e].name);
			free(st->env[e].value);
		}
		free(st->env);
		free(st->warmup_file);
		free(st->warmup_payload);
		free(st->spawn_status_key);
		free(st->spawn_output_ext);
		for (int h = 0; st->health_check && st->health_check[h]; h++)
			free(st->health_check[h]);
		free(st->health_check);
		free(st->setup_python);
		free(st->user);
		free(st->setup_requirements);
		free(st->setup_wheels);
		json_decref(st->written);
	}
	free(cfg->stages);
	free(cfg->queue.url);
	free(cfg->queue.host);
	free(cfg->queue.user);
	if (cfg->queue.password)
		explicit_bzero(cfg->queue.password, strlen(cfg->queue.password));
	free(cfg->queue.password);
	free(cfg->queue.ns);
	free(cfg->queue.node);
	free(cfg->queue.shared_dir);
	json_decref(cfg->written);
	for (int i = 0; i < cfg->npipelines; i++) {
		free(cfg->pipelines[i].name);
		free(cfg->pipelines[i].stages);
		json_decref(cfg->pipelines[i].io_inputs);
		json_decref(cfg->pipelines[i].io_outputs);
	}
	free(cfg->pipelines);
	for (int i = 0; i < cfg->nstreams; i++) {
		struct bt_stream_config *sc = &cfg->streams[i];
		free(sc->name);
		for (int s = 0; s < sc->nstations; s++) {
			free(sc->stations[s].name);
			free(sc->stations[s].url);
		}
		free(sc->stations);
		free(sc->key);
		free(sc->spool);
		free(sc->results);
	}
	free(cfg->streams);
	free(cfg->gpus);
	free(cfg->auth_token);
	free(cfg->cgroup);
	free(cfg->path);
	free(cfg->dir);
	free(cfg->listen_host);
	free(cfg->grpc_listen_host);
	run_release(&cfg->run);
	memset(cfg, 0, sizeof(*cfg));
}

/*
 * Whether uid/gid (with no supplementary groups: baton drops them) may use
 * path: search every directory on the way, then want (R_OK/X_OK bits) on
 * path itself.  On refusal, blocker names the path that stops it.
 */
static int user_can(const char *path, uid_t uid, gid_t gid, int want, char *blocker,
		    size_t size)
{
	char buf[PATH_MAX];
	if (uid == 0)
		return 1; /* permission bits do not stop root */
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *slash = buf;; slash++) {
		char *end = strchr(slash, '/');
		int last = !end;
		if (end)
			*end = '\0';
		const char *part = buf[0] ? buf : "/";
		struct stat sb;
		int need = last ? want : X_OK;
		if (stat(part, &sb) == 0 && need) {
			mode_t bits = sb.st_uid == uid ? sb.st_mode >> 6
				      : sb.st_gid == gid ? sb.st_mode >> 3
							  : sb.st_mode;
			if ((bits & 7 & (mode_t)need) != (mode_t)need) {
				snprintf(blocker, size, "%s", part);
				return 0;
			}
		}
		if (last)
			return 1;
		*end = '/';
		slash = end;
	}
}

/*
 * The paths a stage's user must reach: the command and its files.  Not
 * the workdir (the child enters it before giving up root), nor baton's own
 * binary (workers start without going through it).
 */
static int check_user_reach(const struct bt_config *cfg, const struct bt_stage_config *st,
			    char *err, size_t errlen)
{
	char blocker[PATH_MAX];
	const char *what = NULL;
	for (int a = 0; !what && st->argv[a]; a++) {
		struct stat sb;
		if (st->argv[a][0] != '/' || stat(st->argv[a], &sb))
			continue;
		int want = a == 0 ? X_OK : S_ISDIR(sb.st_mode) ? X_OK : R_OK;
		if (!user_can(st->argv[a], st->uid, st->gid, want, blocker, sizeof(blocker)))
			what = st->argv[a];
	}
	if (!what)
		return 0;
	snprintf(err, errlen,
		 "%s:%d:%d: stage '%s' runs as user '%s' (uid %u, gid %u), who cannot reach '%s': "
		 "'%s' does not allow it; put baton and the stage's files where that user can read "
		 "and execute them",
		 cfg->path, st->line, st->col, st->name, st->user, (unsigned)st->uid,
		 (unsigned)st->gid, what, blocker);
	return BT_ECONFIG;
}

int bt_config_check_users(const struct bt_config *cfg, char *err, size_t errlen)
{
	for (int i = 0; i < cfg->nstages; i++) {
		const struct bt_stage_config *st = &cfg->stages[i];
		if (st->user && geteuid() != 0 && geteuid() != st->uid) {
			snprintf(err, errlen,
				 "%s:%d:%d: stage '%s' runs as user '%s', which needs baton to run as root",
				 cfg->path, st->line, st->col, st->name, st->user);
			return BT_ECONFIG;
		}
		if (st->user && geteuid() == 0 && check_user_reach(cfg, st, err, errlen))
			return BT_ECONFIG;
	}
	return 0;
}

int bt_config_check_runnable(const struct bt_config *cfg, char *err, size_t errlen)
{
	if (bt_config_check_users(cfg, err, errlen))
		return BT_ECONFIG;
	for (int i = 0; i < cfg->nstages; i++) {
		const struct bt_stage_config *st = &cfg->stages[i];
		if (st->venv_missing) {
			snprintf(err, errlen,
				 st->has_setup ? "%s:%d:%d: venv '%s' of stage '%s' does not exist (create it with `baton env setup %s`)"
					       : "%s:%d:%d: venv '%s' of stage '%s' does not exist (add `setup: {}` to the stage and run `baton env setup %s`, or create it yourself)",
				 cfg->path, st->line, st->col, st->venv, st->name, cfg->path);
			return BT_ECONFIG;
		}
	}
	return 0;
}

int bt_config_stage_index(const struct bt_config *cfg, const char *name)
{
	for (int i = 0; i < cfg->nstages; i++)
		if (cfg->stages[i].name && !strcmp(cfg->stages[i].name, name))
			return i;
	return -1;
}

int bt_config_stream_index(const struct bt_config *cfg, const char *name)
{
	for (int i = 0; i < cfg->nstreams; i++)
		if (!strcmp(cfg->streams[i].name, name))
			return i;
	return -1;
}

int bt_config_stream_index_of_source(const struct bt_config *cfg, int stage)
{
	for (int i = 0; i < cfg->nstreams; i++)
		if (cfg->streams[i].source == stage)
			return i;
	return -1;
}

int bt_config_pipeline_index(const struct bt_config *cfg, const char *name)
{
	for (int i = 0; i < cfg->npipelines; i++)
		if (!strcmp(cfg->pipelines[i].name, name))
			return i;
	return -1;
}

static void print_quoted_argv(FILE *out, char *const *argv)
{
	for (int i = 0; argv[i]; i++) {
		const char *a = argv[i];
		int plain = *a != '\0';
		for (const char *p = a; *p && plain; p++)
			plain = !strchr(" \t\n'\"\\$`*?[]{}()<>|&;#~", *p);
		if (plain) {
			fprintf(out, "%s%s", i ? " " : "", a);
			continue;
		}
		fprintf(out, "%s'", i ? " " : "");
		for (const char *p = a; *p; p++) {
			if (*p == '\'')
				fputs("'\\''", out);
			else
				fputc(*p, out);
		}
		fputc('\'', out);
	}
}

void bt_config_print_plan(const struct bt_config *cfg, FILE *out)
{
	fprintf(out, "config:  %s/%s\n", cfg->dir,
		strrchr(cfg->path, '/') ? strrchr(cfg->path, '/') + 1 : cfg->path);
	fprintf(out, "listen:  %s:%d\n", cfg->listen_host, cfg->listen_port);
	if (cfg->grpc_listen_host)
		fprintf(out, "grpc:    %s:%d (max_connections %u, max_streams %u)\n",
			cfg->grpc_listen_host, cfg->grpc_listen_port, cfg->grpc_max_connections,
			cfg->grpc_max_streams);
	fprintf(out, "limits:  max_request_bytes=%zu max_payload_bytes=%zu http.max_connections=%u http.idle_timeout_s=%u http.max_buffered_bytes=%zu http.write_timeout_s=%u\n",
		cfg->max_request_bytes, cfg->max_payload_bytes, cfg->http_max_connections,
		cfg->http_idle_timeout_s, cfg->http_max_buffered_bytes, cfg->http_write_timeout_s);
	fprintf(out, "auth:    %s\n", cfg->auth_token ? "bearer token required (except /v2/health/*)"
						 : "none: anyone who can reach the address can use it");
	for (int i = 0; i < cfg->nstages; i++) {
		const struct bt_stage_config *st = &cfg->stages[i];
		fprintf(out, "\nstage %s\n  argv:      ", st->name);
		print_quoted_argv(out, st->argv);
		fprintf(out, "\n  workdir:   %s\n", st->workdir);
		if (st->user)
			fprintf(out, "  user:      %s (uid %u, gid %u)\n", st->user, st->uid, st->gid);
		if (st->venv)
			fprintf(out, "  venv:      %s%s\n  env:       PATH=%s/bin:$PATH VIRTUAL_ENV=%s (PYTHONHOME unset)\n",
				st->venv, st->venv_missing ? "  (does not exist yet)" : "",
				st->venv, st->venv);
		for (int e = 0; e < st->nenv; e++)
			fprintf(out, "  env:       %s=%s\n", st->env[e].name, st->env[e].value);
		if (st->mode == BT_MODE_SPAWN)
			fprintf(out, "  mode:      spawn: a new process per request, %s%s%s\n",
				st->spawn_files ? "{input}/{output} files" : "JSON on stdin, answer on stdout",
				st->spawn_status_key ? ", status key " : "",
				st->spawn_status_key ? st->spawn_status_key : "");
		fprintf(out, "  replicas:  %d (min %d, max %d), max_ongoing %d, queue_max %zu\n",
			st->replicas_initial, st->replicas_min, st->replicas_max, st->max_ongoing,
			st->queue_max);
		if (st->queue_backend == BT_QUEUE_REDIS)
			fprintf(out, "  queue:     redis stream %s:q:%s at %s, shared with every node\n",
				cfg->queue.ns ? cfg->queue.ns : "baton", st->name, cfg->queue.url);
		if (st->autoscale.policy == BT_POLICY_DEMAND)
			fprintf(out, "  autoscale: demand, target_ongoing %g, up after %llus, down after %llus, max_cpu %g%%, max_gpu %g%%\n",
				st->autoscale.target_ongoing,
				(unsigned long long)st->autoscale.upscale_delay_ms / 1000,
				(unsigned long long)st->autoscale.downscale_delay_ms / 1000,
				st->autoscale.max_cpu, st->autoscale.max_gpu);
		else if (st->autoscale.policy == BT_POLICY_HEADROOM)
			fprintf(out, "  autoscale: headroom, up when gpu<%g%% cpu<%g%% p95<%gs, down when gpu>%g%% or cpu>%g%% or p95>%gs, hysteresis %llus\n",
				st->autoscale.up_gpu, st->autoscale.up_cpu, st->autoscale.up_latency_s,
				st->autoscale.down_gpu, st->autoscale.down_cpu,
				st->autoscale.down_latency_s,
				(unsigned long long)st->autoscale.hysteresis_ms / 1000);
		if (st->gpu_fraction > 0 || st->gpu_memory_mb || st->memory_mb)
			fprintf(out, "  resources: gpu %g, gpu_memory_mb %llu, memory_mb %llu\n",
				st->gpu_fraction, (unsigned long long)st->gpu_memory_mb,
				(unsigned long long)st->memory_mb);
		fprintf(out, "  timeouts:  attempt %llums, start %llums, stop grace %llums; retries %d\n",
			(unsigned long long)st->timeout_ms,
			(unsigned long long)st->start_timeout_ms,
			(unsigned long long)st->grace_ms, st->retries);
		fprintf(out, "  restart:   backoff %llu..%llums, failed after %d failures, reset after %llums, %s\n",
			(unsigned long long)st->backoff_ms,
			(unsigned long long)st->backoff_max_ms, st->max_failures,
			(unsigned long long)st->reset_after_ms,
			st->retry_failed_after_ms ? "automatic retry of a failed stage"
						  : "failed stage waits for POST /v1/stages/{s}/restart");
		if (st->batch_max_size > 1)
			fprintf(out, "  batch:     up to %d requests, window %llums\n",
				st->batch_max_size, (unsigned long long)st->batch_window_ms);
		if (st->priority_levels > 1)
			fprintf(out, "  priority:  %d levels\n", st->priority_levels);
		if (st->warmup_file)
			fprintf(out, "  warmup:    %s (%zu bytes, %s)\n", st->warmup_file,
				st->warmup_len, st->warmup_required ? "required" : "optional");
	}
	fprintf(out, "\n");
	for (int i = 0; i < cfg->npipelines; i++) {
		const struct bt_pipeline_config *pl = &cfg->pipelines[i];
		fprintf(out, "pipeline %s: ", pl->name);
		for (int s = 0; s < pl->nstages; s++)
			fprintf(out, "%s%s", s ? " -> " : "", cfg->stages[pl->stages[s]].name);
		if (pl->max_inflight)
			fprintf(out, " (max_inflight %zu)", pl->max_inflight);
		fprintf(out, "\n");
	}
	for (int i = 0; i < cfg->nstreams; i++) {
		const struct bt_stream_config *sc = &cfg->streams[i];
		const struct bt_stage_config *src = &cfg->stages[sc->source];
		fprintf(out, "\nstream %s: source %s, stations %d to %d (%d at start)\n", sc->name,
			src->name, src->replicas_min, src->replicas_max, src->replicas_initial);
		for (int s = 0; s < sc->nstations; s++)
			fprintf(out, "  station %s: %s\n", sc->stations[s].name, sc->stations[s].url);
		fprintf(out, "  items:     %s\n",
			sc->items_pipeline >= 0 ? cfg->pipelines[sc->items_pipeline].name
						: "(none: the key comes from the source)");
		fprintf(out, "  sessions:  key '%s', idle %llums, max duration %llums, max items %d, missing key: %s\n",
			sc->key, (unsigned long long)sc->idle_timeout_ms,
			(unsigned long long)sc->max_duration_ms, sc->max_items,
			sc->missing_key == BT_MISSING_CLOSE ? "close" : "ignore");
		fprintf(out, "  process:   %s\n", cfg->pipelines[sc->process_pipeline].name);
		fprintf(out, "  flow:      %d credits per station, overflow %s\n", sc->credits,
			sc->overflow == BT_OVERFLOW_BLOCK ? "block" : "drop_oldest");
		fprintf(out, "  spool:     %s (results %s)\n", sc->spool, sc->results);
	}
}

/* Sets "K=V" in a NULL-terminated list, replacing an earlier K. */
static void env_put(char **env, size_t *n, char *kv)
{
	size_t klen = strcspn(kv, "=") + 1;
	for (size_t i = 0; i < *n; i++) {
		if (!strncmp(env[i], kv, klen)) {
			free(env[i]);
			env[i] = kv;
			return;
		}
	}
	env[(*n)++] = kv;
	env[*n] = NULL;
}

static const char *env_lookup(char *const *env, const char *name)
{
	size_t nl = strlen(name);
	for (size_t i = 0; env && env[i]; i++)
		if (!strncmp(env[i], name, nl) && env[i][nl] == '=')
			return env[i] + nl + 1;
	return NULL;
}

char **bt_config_stage_environ(const struct bt_stage_config *st,
			       char *const *parent, char *const *extra)
{
	size_t np = 0, nextra = 0, n = 0;
	while (parent && parent[np])
		np++;
	while (extra && extra[nextra])
		nextra++;
	char **env = bt_calloc(np + (size_t)st->nenv + nextra + 3, sizeof(char *));
	/* Layers, each overriding the ones before: parent, venv, env:, extra. */
	for (size_t i = 0; i < np; i++)
		if (!(st->venv && !strncmp(parent[i], "PYTHONHOME=", 11)))
			env_put(env, &n, bt_strdup(parent[i]));
	if (st->venv) {
		const char *base = stage_env_get(st, "PATH");
		if (!base)
			base = env_lookup(parent, "PATH");
		env_put(env, &n, bt_asprintf("PATH=%s/bin:%s", st->venv,
					     base ? base : "/usr/local/bin:/usr/bin:/bin"));
		env_put(env, &n, bt_asprintf("VIRTUAL_ENV=%s", st->venv));
	}
	for (int i = 0; i < st->nenv; i++) {
		/* With a venv, the stage's PATH is already under the venv's bin/. */
		if (st->venv && !strcmp(st->env[i].name, "PATH"))
			continue;
		env_put(env, &n, bt_asprintf("%s=%s", st->env[i].name, st->env[i].value));
	}
	for (size_t i = 0; i < nextra; i++)
		env_put(env, &n, bt_strdup(extra[i]));
	return env;
}

void bt_config_free_environ(char **env)
{
	for (size_t i = 0; env && env[i]; i++)
		free(env[i]);
	free(env);
}
