/*
 * The synchronous side of the PostgreSQL source and sink: before a run
 * starts (and for `baton check --connect`) connect once, check the query
 * and the table against the config, learn the sink's column types and make
 * the checkpoint and failures tables.  Blocking is fine here: nothing runs
 * yet.
 */
#include "io.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static int cfail(const struct bt_config *cfg, int line, int col, char *err, size_t errlen,
		 const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static int cfail(const struct bt_config *cfg, int line, int col, char *err, size_t errlen,
		 const char *fmt, ...)
{
	char msg[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	for (char *p = msg; *p; p++)
		if (*p == '\n')
			*p = ' ';
	size_t n = strlen(msg);
	while (n && msg[n - 1] == ' ')
		msg[--n] = '\0';
	snprintf(err, errlen, "%s:%d:%d: %s", cfg->path, line, col, msg);
	return BT_ECONFIG;
}

void bt_pg_sink_plan_release(struct bt_pg_sink_plan *plan)
{
	for (int i = 0; i < plan->ncols; i++) {
		free(plan->cols[i].name);
		free(plan->cols[i].type);
		free(plan->cols[i].field);
	}
	free(plan->cols);
	free(plan->table);
	memset(plan, 0, sizeof(*plan));
}

static void add_col(struct bt_pg_sink_plan *plan, const char *name, const char *type,
		    const char *field)
{
	plan->cols = bt_realloc(plan->cols, (size_t)(plan->ncols + 1) * sizeof(*plan->cols));
	plan->cols[plan->ncols].name = bt_strdup(name);
	plan->cols[plan->ncols].type = bt_strdup(type);
	plan->cols[plan->ncols].field = bt_strdup(field);
	plan->ncols++;
}

static int in_list(char *const *v, int n, const char *s)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(v[i], s))
			return i;
	return -1;
}

/* The source: the query runs and has the key column. */
static int check_source(const struct bt_config *cfg, PGconn *conn, char *err, size_t errlen)
{
	const struct bt_run_config *run = &cfg->run;
	char *sql = bt_asprintf("SELECT * FROM (%s) AS q LIMIT 0", run->src_query);
	PGresult *res = PQexec(conn, sql);
	free(sql);
	int r = 0;
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		r = cfail(cfg, run->src_line, run->src_col, err, errlen,
			  "source.query does not run: %s", PQresultErrorMessage(res));
	} else if (bt_pg_field(res, run->src_key) < 0) {
		struct bt_buf names = BT_BUF_INIT;
		for (int i = 0; i < PQnfields(res); i++)
			bt_buf_printf(&names, "%s%s", i ? ", " : "", PQfname(res, i));
		r = cfail(cfg, run->key_line, run->key_col, err, errlen,
			  "source.key '%s' is not a column of source.query (its columns: %s)",
			  run->src_key, names.data ? names.data : "none");
		bt_buf_release(&names);
	}
	PQclear(res);
	return r;
}

static PGresult *exec1(PGconn *conn, const char *sql, const char *param)
{
	return PQexecParams(conn, sql, 1, NULL, &param, NULL, NULL, 0);
}

/* The sink: the table, its columns and types, a unique index on the key. */
static int check_sink(const struct bt_config *cfg, PGconn *conn, struct bt_pg_sink_plan *plan,
		      char *err, size_t errlen)
{
	const struct bt_run_config *run = &cfg->run;
	int line = run->sink_line, col = run->sink_col, r = 0;
	PGresult *res = exec1(conn, "SELECT to_regclass($1)::text", run->sink_table);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQgetisnull(res, 0, 0)) {
		r = cfail(cfg, line, col, err, errlen, "sink.table '%s' does not exist%s%s",
			  run->sink_table, PQresultStatus(res) == PGRES_TUPLES_OK ? "" : ": ",
			  PQresultStatus(res) == PGRES_TUPLES_OK ? "" : PQresultErrorMessage(res));
		PQclear(res);
		return r;
	}
	plan->table = bt_strdup(PQgetvalue(res, 0, 0));
	PQclear(res);
	res = exec1(conn,
		    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typname "
		    "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
		    "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped "
		    "ORDER BY a.attnum",
		    run->sink_table);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		r = cfail(cfg, line, col, err, errlen, "cannot read the columns of '%s': %s",
			  run->sink_table, PQresultErrorMessage(res));
		PQclear(res);
		return r;
	}
	int n = PQntuples(res);
#define FIND(name, i)                                                                  \
	for (i = 0; i < n && strcmp(PQgetvalue(res, i, 0), (name)); i++)              \
		;
	int i;
	/* Key columns first, then the mapped (or all) columns, then the jsonb column. */
	for (int k = 0; !r && k < run->nsink_key; k++) {
		FIND(run->sink_key[k], i);
		if (i == n)
			r = cfail(cfg, line, col, err, errlen, "sink.key '%s' is not a column of '%s'",
				  run->sink_key[k], run->sink_table);
		else {
			int m = in_list(run->sink_columns, run->nsink_columns, run->sink_key[k]);
			add_col(plan, run->sink_key[k], PQgetvalue(res, i, 1),
				m >= 0 ? run->sink_fields[m] : run->sink_key[k]);
		}
	}
	for (int c = 0; !r && c < run->nsink_columns; c++) {
		FIND(run->sink_columns[c], i);
		if (i == n)
			r = cfail(cfg, line, col, err, errlen,
				  "sink.columns: '%s' is not a column of '%s'", run->sink_columns[c],
				  run->sink_table);
		else if (in_list(run->sink_key, run->nsink_key, run->sink_columns[c]) < 0 &&
			 !(run->sink_jsonb && !strcmp(run->sink_jsonb, run->sink_columns[c])))
			add_col(plan, run->sink_columns[c], PQgetvalue(res, i, 1),
				run->sink_fields[c]);
	}
	for (i = 0; !r && !run->nsink_columns && !run->sink_jsonb && i < n; i++) {
		const char *name = PQgetvalue(res, i, 0);
		if (in_list(run->sink_key, run->nsink_key, name) < 0)
			add_col(plan, name, PQgetvalue(res, i, 1), name);
	}
	if (!r && run->sink_jsonb) {
		FIND(run->sink_jsonb, i);
		if (i == n)
			r = cfail(cfg, line, col, err, errlen, "sink.jsonb '%s' is not a column of '%s'",
				  run->sink_jsonb, run->sink_table);
		else if (strcmp(PQgetvalue(res, i, 2), "jsonb") && strcmp(PQgetvalue(res, i, 2), "json"))
			r = cfail(cfg, line, col, err, errlen,
				  "sink.jsonb '%s' of '%s' has type %s, not json or jsonb",
				  run->sink_jsonb, run->sink_table, PQgetvalue(res, i, 1));
		else {
			add_col(plan, run->sink_jsonb, PQgetvalue(res, i, 1), "");
			plan->has_jsonb = 1;
		}
	}
#undef FIND
	PQclear(res);
	if (r)
		return r;
	/* ON CONFLICT needs a unique index on exactly the key columns. */
	res = exec1(conn,
		    "SELECT array_to_string(ARRAY(SELECT a.attname::text FROM unnest(i.indkey) k "
		    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k "
		    "ORDER BY 1), chr(1)) FROM pg_index i "
		    "WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL",
		    run->sink_table);
	char **sorted = bt_calloc((size_t)run->nsink_key, sizeof(char *));
	for (int k = 0; k < run->nsink_key; k++) {
		int at = k;
		while (at > 0 && strcmp(sorted[at - 1], run->sink_key[k]) > 0) {
			sorted[at] = sorted[at - 1];
			at--;
		}
		sorted[at] = run->sink_key[k];
	}
	struct bt_buf want = BT_BUF_INIT;
	for (int k = 0; k < run->nsink_key; k++)
		bt_buf_printf(&want, "%s%s", k ? "\001" : "", sorted[k]);
	free(sorted);
	int found = 0;
	for (i = 0; PQresultStatus(res) == PGRES_TUPLES_OK && i < PQntuples(res); i++)
		found |= !strcmp(PQgetvalue(res, i, 0), want.data);
	bt_buf_release(&want);
	PQclear(res);
	if (!found) {
		struct bt_buf keys = BT_BUF_INIT;
		for (int k = 0; k < run->nsink_key; k++)
			bt_buf_printf(&keys, "%s%s", k ? ", " : "", run->sink_key[k]);
		r = cfail(cfg, line, col, err, errlen,
			  "sink table '%s' has no unique index (or primary key) on exactly (%s), "
			  "which the upsert needs",
			  run->sink_table, keys.data);
		bt_buf_release(&keys);
	}
	return r;
}

/* Creates the checkpoint and failures tables when missing. */
static int create_tables(const struct bt_config *cfg, PGconn *conn, char *err, size_t errlen)
{
	const struct bt_run_config *run = &cfg->run;
	struct bt_buf sql = BT_BUF_INIT;
	bt_buf_puts(&sql, "CREATE TABLE IF NOT EXISTS ");
	bt_pg_ident(&sql, run->checkpoint_table);
	bt_buf_puts(&sql, " (name text PRIMARY KEY, last_key text NOT NULL, rows bigint NOT NULL "
			  "DEFAULT 0, failed bigint NOT NULL DEFAULT 0, "
			  "updated_at timestamptz NOT NULL DEFAULT now());\n"
			  "CREATE TABLE IF NOT EXISTS ");
	bt_pg_ident(&sql, run->failures_table);
	bt_buf_puts(&sql, " (name text NOT NULL, key text, code text NOT NULL, error text NOT NULL, "
			  "attempts int, stage text, failed_at timestamptz NOT NULL DEFAULT now())");
	PGresult *res = PQexec(conn, sql.data);
	bt_buf_release(&sql);
	int r = 0;
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		r = cfail(cfg, cfg->run.sink_line, cfg->run.sink_col, err, errlen,
			  "cannot create the tables '%s' and '%s': %s", run->checkpoint_table,
			  run->failures_table, PQresultErrorMessage(res));
	PQclear(res);
	return r;
}

int bt_pg_check(const struct bt_config *cfg, int create, struct bt_pg_sink_plan *plan,
		char *err, size_t errlen)
{
	const struct bt_run_config *run = &cfg->run;
	struct bt_pg_sink_plan local;
	memset(&local, 0, sizeof(local));
	if (!plan)
		plan = &local;
	memset(plan, 0, sizeof(*plan));
	PGconn *src = PQconnectdb(run->src_connect);
	int r = 0;
	if (PQstatus(src) != CONNECTION_OK)
		r = cfail(cfg, run->src_line, run->src_col, err, errlen,
			  "cannot connect to the source database: %s", PQerrorMessage(src));
	else
		r = check_source(cfg, src, err, errlen);
	PQfinish(src);
	if (r)
		return r;
	PGconn *sink = PQconnectdb(run->sink_connect);
	if (PQstatus(sink) != CONNECTION_OK)
		r = cfail(cfg, run->sink_line, run->sink_col, err, errlen,
			  "cannot connect to the sink database: %s", PQerrorMessage(sink));
	else
		r = check_sink(cfg, sink, plan, err, errlen);
	if (!r && create)
		r = create_tables(cfg, sink, err, errlen);
	PQfinish(sink);
	if (r || plan == &local)
		bt_pg_sink_plan_release(plan);
	return r;
}
