/*
 * Benchmark scenario files (`baton bench --scenarios FILE`): the YAML
 * parser, its FILE:LINE:COL errors, and the built-in `standard` suite.
 * Pure: no libuv and no sockets; running the scenarios is loadgen.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "../common/common.h"
#include "jobs.h"

struct ctx {
	const char *path;
	yaml_document_t *doc;
	char *err;
	size_t errlen;
};

static int fail(struct ctx *c, const yaml_node_t *n, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct ctx *c, const yaml_node_t *n, const char *fmt, ...)
{
	char msg[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n)
		snprintf(c->err, c->errlen, "%s:%zu:%zu: %s", c->path, n->start_mark.line + 1,
			 n->start_mark.column + 1, msg);
	else
		snprintf(c->err, c->errlen, "%s: %s", c->path, msg);
	return BT_ECONFIG;
}

static yaml_node_t *node(struct ctx *c, int id)
{
	return yaml_document_get_node(c->doc, id);
}

static const char *scalar(const yaml_node_t *n)
{
	return (const char *)n->data.scalar.value;
}

static int plain(const yaml_node_t *n)
{
	return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

static int get_string(struct ctx *c, const yaml_node_t *n, const char *key, char **out)
{
	if (n->type != YAML_SCALAR_NODE || !*scalar(n) ||
	    strlen(scalar(n)) != n->data.scalar.length)
		return fail(c, n, "'%s' must be a non-empty string", key);
	free(*out);
	*out = bt_strdup(scalar(n));
	return 0;
}

static int get_number(struct ctx *c, const yaml_node_t *n, const char *key, double min,
		      double max, int integer, double *out)
{
	char *end;
	if (!plain(n))
		return fail(c, n, "'%s' must be a number", key);
	errno = 0;
	double v = integer ? (double)strtoll(scalar(n), &end, 10) : strtod(scalar(n), &end);
	if (errno || end == scalar(n) || *end)
		return fail(c, n, "'%s' must be %s, not '%s'", key,
			    integer ? "an integer" : "a number", scalar(n));
	if (!(v >= min && v <= max))
		return fail(c, n, "'%s' must be between %g and %g, not %g", key, min, max, v);
	*out = v;
	return 0;
}

static int get_int(struct ctx *c, const yaml_node_t *n, const char *key, int min, int max,
		   int *out)
{
	double v;
	int r = get_number(c, n, key, min, max, 1, &v);
	if (!r)
		*out = (int)v;
	return r;
}

/* n must be a mapping with unique scalar keys, all in known (when given). */
static int check_mapping(struct ctx *c, const yaml_node_t *n, const char *what,
			 const char *const *known)
{
	if (n->type != YAML_MAPPING_NODE)
		return fail(c, n, "%s must be a mapping", what);
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
	     p++) {
		yaml_node_t *k = node(c, p->key);
		if (k->type != YAML_SCALAR_NODE || strlen(scalar(k)) != k->data.scalar.length)
			return fail(c, k, "keys of %s must be strings", what);
		for (yaml_node_pair_t *q = n->data.mapping.pairs.start; q < p; q++)
			if (!strcmp(scalar(node(c, q->key)), scalar(k)))
				return fail(c, k, "duplicate key '%s' in %s", scalar(k), what);
		if (!known)
			continue;
		int found = 0;
		for (const char *const *kk = known; *kk; kk++)
			found |= !strcmp(*kk, scalar(k));
		if (!found) {
			char list[400] = "";
			size_t o = 0;
			for (const char *const *kk = known; *kk && o < sizeof(list); kk++)
				o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s",
						      kk == known ? "" : ", ", *kk);
			return fail(c, k, "unknown key '%s' in %s (expected one of: %s)",
				    scalar(k), what, list);
		}
	}
	return 0;
}

/* The keys a scenario may set; the top level may set them too, as defaults. */
static const char *const scenario_keys[] = {
	"name", "pipeline", "load", "concurrency", "rate", "arrival", "connections",
	"replicas", "batch", "duration_s", "warmup_s", "timeout_s", NULL};
static const char *const top_keys[] = {
	"pipeline", "load", "concurrency", "rate", "arrival", "connections", "replicas",
	"batch", "duration_s", "warmup_s", "timeout_s", "input", "payload", "scenarios", NULL};
static const char *const batch_keys[] = {"max_size", "window_ms", NULL};

static void set_scale(struct bt_scenario *s, const char *stage, int replicas, size_t line,
		      size_t col)
{
	for (int i = 0; i < s->nscale; i++)
		if (!strcmp(s->scale[i].stage, stage)) {
			s->scale[i].replicas = replicas;
			return;
		}
	s->scale = bt_realloc(s->scale, (size_t)(s->nscale + 1) * sizeof(*s->scale));
	s->scale[s->nscale++] = (struct bt_scale_setting){bt_strdup(stage), replicas, line, col};
}

static int parse_replicas(struct ctx *c, const yaml_node_t *v, struct bt_scenario *s)
{
	if (v->type == YAML_SCALAR_NODE)
		return get_int(c, v, "replicas", 1, BT_SCENARIO_REPLICAS_MAX, &s->replicas_all);
	if (check_mapping(c, v, "'replicas' (a number, or stage: number)", NULL))
		return BT_ECONFIG;
	for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top;
	     p++) {
		yaml_node_t *k = node(c, p->key);
		int n;
		if (get_int(c, node(c, p->value), scalar(k), 1, BT_SCENARIO_REPLICAS_MAX, &n))
			return BT_ECONFIG;
		set_scale(s, scalar(k), n, k->start_mark.line + 1, k->start_mark.column + 1);
	}
	return 0;
}

static int parse_batch(struct ctx *c, const yaml_node_t *v, struct bt_scenario *s)
{
	if (check_mapping(c, v, "'batch' (stage: {max_size, window_ms})", NULL))
		return BT_ECONFIG;
	for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top;
	     p++) {
		yaml_node_t *k = node(c, p->key), *b = node(c, p->value);
		struct bt_batch_setting set = {NULL, 1, 0, k->start_mark.line + 1,
					       k->start_mark.column + 1};
		double w = 0;
		if (check_mapping(c, b, "a stage's batch settings", batch_keys))
			return BT_ECONFIG;
		for (yaml_node_pair_t *q = b->data.mapping.pairs.start;
		     q < b->data.mapping.pairs.top; q++) {
			const char *key = scalar(node(c, q->key));
			yaml_node_t *val = node(c, q->value);
			if (!strcmp(key, "max_size") ? get_int(c, val, key, 1, 65536, &set.max_size)
						     : get_number(c, val, key, 0, 3600000, 1, &w))
				return BT_ECONFIG;
		}
		set.window_ms = (long)w;
		set.stage = bt_strdup(scalar(k));
		s->batch = bt_realloc(s->batch, (size_t)(s->nbatch + 1) * sizeof(*s->batch));
		s->batch[s->nbatch++] = set;
	}
	return 0;
}

/* One key of a scenario or of the defaults. */
static int parse_key(struct ctx *c, const char *key, const yaml_node_t *v,
		     struct bt_scenario *s)
{
	if (!strcmp(key, "name"))
		return get_string(c, v, key, &s->name);
	if (!strcmp(key, "pipeline"))
		return get_string(c, v, key, &s->pipeline);
	if (!strcmp(key, "load")) {
		if (plain(v) && !strcmp(scalar(v), "closed"))
			s->load = BT_LOAD_CLOSED;
		else if (plain(v) && !strcmp(scalar(v), "open"))
			s->load = BT_LOAD_OPEN;
		else
			return fail(c, v, "'load' must be closed or open");
		return 0;
	}
	if (!strcmp(key, "arrival")) {
		if (plain(v) && !strcmp(scalar(v), "constant"))
			s->poisson = 0;
		else if (plain(v) && !strcmp(scalar(v), "poisson"))
			s->poisson = 1;
		else
			return fail(c, v, "'arrival' must be constant or poisson");
		return 0;
	}
	if (!strcmp(key, "concurrency"))
		return get_int(c, v, key, 1, BT_SCENARIO_CONNECTIONS_MAX, &s->concurrency);
	if (!strcmp(key, "connections"))
		return get_int(c, v, key, 1, BT_SCENARIO_CONNECTIONS_MAX, &s->connections);
	if (!strcmp(key, "rate"))
		return get_number(c, v, key, 0.01, 1e6, 0, &s->rate);
	if (!strcmp(key, "duration_s"))
		return get_number(c, v, key, 0.1, 86400, 0, &s->duration_s);
	if (!strcmp(key, "warmup_s"))
		return get_number(c, v, key, 0, 86400, 0, &s->warmup_s);
	if (!strcmp(key, "timeout_s"))
		return get_number(c, v, key, 0.1, 86400, 0, &s->timeout_s);
	if (!strcmp(key, "replicas"))
		return parse_replicas(c, v, s);
	if (!strcmp(key, "batch"))
		return parse_batch(c, v, s);
	return 0;
}

static void scenario_copy(struct bt_scenario *to, const struct bt_scenario *from)
{
	*to = *from;
	to->name = from->name ? bt_strdup(from->name) : NULL;
	to->pipeline = from->pipeline ? bt_strdup(from->pipeline) : NULL;
	to->scale = NULL;
	to->nscale = 0;
	to->batch = NULL;
	to->nbatch = 0;
	for (int i = 0; i < from->nscale; i++)
		set_scale(to, from->scale[i].stage, from->scale[i].replicas, from->scale[i].line,
			  from->scale[i].col);
	if (from->nbatch) {
		to->batch = bt_calloc((size_t)from->nbatch, sizeof(*to->batch));
		for (int i = 0; i < from->nbatch; i++) {
			to->batch[i] = from->batch[i];
			to->batch[i].stage = bt_strdup(from->batch[i].stage);
		}
		to->nbatch = from->nbatch;
	}
}

static void scenario_release(struct bt_scenario *s)
{
	free(s->name);
	free(s->pipeline);
	for (int i = 0; i < s->nscale; i++)
		free(s->scale[i].stage);
	free(s->scale);
	for (int i = 0; i < s->nbatch; i++)
		free(s->batch[i].stage);
	free(s->batch);
	memset(s, 0, sizeof(*s));
}

static void scenario_defaults(struct bt_scenario *s)
{
	memset(s, 0, sizeof(*s));
	s->load = BT_LOAD_CLOSED;
	s->duration_s = 10;
	s->warmup_s = 2;
	s->timeout_s = 60;
}

/* What only the whole scenario can tell: the keys that go together. */
static int check_scenario(struct ctx *c, const yaml_node_t *n, struct bt_scenario *s,
			  int have_rate, int have_concurrency)
{
	if (s->load == BT_LOAD_OPEN && s->rate <= 0)
		return fail(c, n, "scenario '%s': load: open needs 'rate' (requests per second)",
			    s->name);
	if (s->load == BT_LOAD_CLOSED && have_rate)
		return fail(c, n, "scenario '%s': 'rate' is for load: open; a closed loop sets "
			    "'concurrency'", s->name);
	if (s->load == BT_LOAD_OPEN && have_concurrency)
		return fail(c, n, "scenario '%s': 'concurrency' is for load: closed; an open loop "
			    "sets 'rate' (and 'connections', the most it opens)", s->name);
	if (!s->pipeline)
		return fail(c, n, "scenario '%s' names no 'pipeline' (here or at the top level)",
			    s->name);
	if (!s->concurrency)
		s->concurrency = 8;
	if (!s->connections)
		s->connections = 256;
	return 0;
}

static int parse_payloads(struct ctx *c, const yaml_node_t *v, const char *dir,
			  struct bt_scenario_set *set)
{
	const yaml_node_t *one = v;
	int n = 1;
	if (v->type == YAML_SEQUENCE_NODE) {
		n = (int)(v->data.sequence.items.top - v->data.sequence.items.start);
		if (n == 0)
			return fail(c, v, "'input' must name at least one file");
	}
	for (int i = 0; i < n; i++) {
		if (v->type == YAML_SEQUENCE_NODE)
			one = node(c, v->data.sequence.items.start[i]);
		char *name = NULL;
		if (get_string(c, one, "input", &name))
			return BT_ECONFIG;
		char *path = name[0] == '/' ? bt_strdup(name) : bt_asprintf("%s/%s", dir, name);
		free(name);
		char *data;
		size_t len;
		int r = bt_read_file_at(AT_FDCWD, path, 0, 256u << 20, &data, &len, NULL);
		if (r) {
			fail(c, one, "cannot read input '%s': %s", path,
			     r == BT_ETOOBIG ? "over 256 MiB" : strerror(-r));
			free(path);
			return BT_ECONFIG;
		}
		free(path);
		bt_scenario_set_add_payload(set, data, len);
	}
	return 0;
}

void bt_scenario_set_add_payload(struct bt_scenario_set *set, char *data, size_t len)
{
	set->payloads = bt_realloc(set->payloads, (size_t)(set->npayloads + 1) *
							  sizeof(*set->payloads));
	set->lens = bt_realloc(set->lens, (size_t)(set->npayloads + 1) * sizeof(*set->lens));
	set->payloads[set->npayloads] = data;
	set->lens[set->npayloads++] = len;
}

static int parse_root(struct ctx *c, yaml_node_t *root, struct bt_scenario_set *set)
{
	struct bt_scenario defaults;
	yaml_node_t *list = NULL;
	int r = 0;
	if (!root)
		return fail(c, NULL, "the file is empty; it needs 'scenarios'");
	if (check_mapping(c, root, "the scenario file", top_keys))
		return BT_ECONFIG;
	char *dir = bt_strdup(c->path), *slash = strrchr(dir, '/');
	if (slash)
		*slash = '\0';
	else
		strcpy(dir, ".");
	scenario_defaults(&defaults);
	for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
	     p < root->data.mapping.pairs.top && !r; p++) {
		const char *key = scalar(node(c, p->key));
		yaml_node_t *v = node(c, p->value);
		if (!strcmp(key, "scenarios"))
			list = v;
		else if (!strcmp(key, "input"))
			r = parse_payloads(c, v, dir, set);
		else if (!strcmp(key, "payload")) {
			if (v->type != YAML_SCALAR_NODE)
				r = fail(c, v, "'payload' must be a string");
			else
				bt_scenario_set_add_payload(set, bt_strndup(scalar(v), v->data.scalar.length),
							    v->data.scalar.length);
		} else {
			r = parse_key(c, key, v, &defaults);
		}
	}
	free(dir);
	if (!r && !list)
		r = fail(c, root, "the scenario file has no 'scenarios' list");
	if (!r && (list->type != YAML_SEQUENCE_NODE ||
		   list->data.sequence.items.top == list->data.sequence.items.start))
		r = fail(c, list, "'scenarios' must be a non-empty list");
	if (!r && set->npayloads == 0)
		r = fail(c, root, "the scenario file needs 'input' (files) or 'payload' (text)");
	for (yaml_node_item_t *it = r ? NULL : list->data.sequence.items.start;
	     it && it < list->data.sequence.items.top && !r; it++) {
		yaml_node_t *sn = node(c, *it);
		struct bt_scenario s;
		int rate = 0, conc = 0;
		if (check_mapping(c, sn, "a scenario", scenario_keys)) {
			r = BT_ECONFIG;
			break;
		}
		scenario_copy(&s, &defaults);
		free(s.name);
		s.name = NULL;
		s.line = sn->start_mark.line + 1;
		s.col = sn->start_mark.column + 1;
		for (yaml_node_pair_t *p = sn->data.mapping.pairs.start;
		     p < sn->data.mapping.pairs.top && !r; p++) {
			const char *key = scalar(node(c, p->key));
			/* Only a scenario's own keys can contradict its load kind. */
			rate |= !strcmp(key, "rate");
			conc |= !strcmp(key, "concurrency");
			r = parse_key(c, key, node(c, p->value), &s);
		}
		if (!r && !s.name)
			s.name = bt_asprintf("scenario-%d", set->n + 1);
		for (int i = 0; !r && i < set->n; i++)
			if (!strcmp(set->s[i].name, s.name))
				r = fail(c, sn, "a second scenario named '%s'", s.name);
		if (!r)
			r = check_scenario(c, sn, &s, rate, conc);
		if (r) {
			scenario_release(&s);
			break;
		}
		set->s = bt_realloc(set->s, (size_t)(set->n + 1) * sizeof(*set->s));
		set->s[set->n++] = s;
	}
	scenario_release(&defaults);
	return r;
}

int bt_scenarios_parse(const char *path, const char *text, size_t len,
		       struct bt_scenario_set *set, char *err, size_t errlen)
{
	yaml_parser_t parser;
	yaml_document_t doc;
	struct ctx c = {path, &doc, err, errlen};
	int r;
	memset(set, 0, sizeof(*set));
	if (!yaml_parser_initialize(&parser)) {
		snprintf(err, errlen, "%s: cannot initialise the YAML parser", path);
		return BT_ECONFIG;
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	if (!yaml_parser_load(&parser, &doc)) {
		snprintf(err, errlen, "%s:%zu:%zu: YAML: %s", path, parser.problem_mark.line + 1,
			 parser.problem_mark.column + 1,
			 parser.problem ? parser.problem : "syntax error");
		yaml_parser_delete(&parser);
		return BT_ECONFIG;
	}
	r = parse_root(&c, yaml_document_get_root_node(&doc), set);
	yaml_document_delete(&doc);
	yaml_parser_delete(&parser);
	if (r)
		bt_scenarios_release(set);
	return r;
}

int bt_scenarios_load(const char *path, struct bt_scenario_set *set, char *err, size_t errlen)
{
	char *text;
	size_t len;
	int r = bt_read_file_at(AT_FDCWD, path, 0, 1u << 20, &text, &len, NULL);
	if (r) {
		memset(set, 0, sizeof(*set));
		snprintf(err, errlen, "%s: cannot read: %s", path,
			 r == BT_ETOOBIG ? "over 1 MiB" : strerror(-r));
		return BT_ECONFIG;
	}
	r = bt_scenarios_parse(path, text, len, set, err, errlen);
	free(text);
	return r;
}

void bt_scenarios_standard(struct bt_scenario_set *set, const char *pipeline,
			   double duration_s, double warmup_s)
{
	static const int sweep[] = {1, 2, 4, 6, 8};
	for (size_t i = 0; i < sizeof(sweep) / sizeof(sweep[0]); i++) {
		struct bt_scenario s;
		scenario_defaults(&s);
		s.name = bt_asprintf("replicas-%d", sweep[i]);
		s.pipeline = bt_strdup(pipeline);
		s.replicas_all = sweep[i];
		/* Two requests per replica keep every replica busy between answers. */
		s.concurrency = 2 * sweep[i];
		s.connections = 256;
		s.duration_s = duration_s;
		s.warmup_s = warmup_s;
		set->s = bt_realloc(set->s, (size_t)(set->n + 1) * sizeof(*set->s));
		set->s[set->n++] = s;
	}
}

void bt_scenarios_release(struct bt_scenario_set *set)
{
	for (int i = 0; i < set->n; i++)
		scenario_release(&set->s[i]);
	free(set->s);
	for (int i = 0; i < set->npayloads; i++)
		free(set->payloads[i]);
	free(set->payloads);
	free(set->lens);
	memset(set, 0, sizeof(*set));
}
