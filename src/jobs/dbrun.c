/*
 * `baton run` with a PostgreSQL source and sink (the config's `run:`):
 * pages read by key range, each row or page a request, results upserted.
 * Exactly-once effect comes from one rule: pages commit in key order, and
 * a commit holds the upsert of some whole pages, their failures and the
 * checkpoint (the last key of the last page) in one transaction.  A rerun
 * starts after the checkpoint, so nothing committed is redone and nothing
 * uncommitted is lost.  The database work goes through src/io/ on the
 * daemon's loop; this file owns the pages and the requests.
 */
#include "jobs.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../daemon/daemon.h"
#include "../common/jscan.h"
#include "../io/io.h"

#define COMMIT_MAX_PAGES 64 /* pages in one transaction at most */
/*
 * A result may hold at most this many JSON values per row it answers: it
 * is loaded as a tree (about 21 times its text: a 50 MiB result of
 * numbers grew `baton run` by 1 GiB) and kept until its page commits.
 * Counted, without a tree, only from RESULT_SCAN_MIN bytes (fewer cannot
 * hold so many values).
 */
#define RESULT_VALUES_PER_ROW 65536
#define RESULT_SCAN_MIN (64 * 1024)

struct dbjob;

struct page {
	struct dbjob *job;
	char *last_key; /* the source key of its last row */
	json_t *rows; /* source rows (objects), in key order */
	json_t *keys; /* their keys as text */
	size_t nrows;
	size_t next_row; /* row mode: the next row to send */
	int sent; /* every request of the page is submitted */
	size_t pending; /* requests submitted and not ended */
	json_t *results; /* objects to upsert */
	json_t *failures; /* {key, code, error, attempts, stage} */
	struct page *next;
};

/* One request: a row of a page, or the whole page (row = -1). */
struct ref {
	struct page *page;
	long row;
	struct ref *next; /* in the overloaded list */
};

/* The transaction in flight: pages head .. head+npages-1. */
struct unit {
	int npages;
	json_t *rows; /* mapped objects {"0": …, "1": …}, deduplicated by key */
	json_t *rkeys; /* the sink key of each, as text, for messages */
	json_t *failures;
	char *last_key;
	size_t nrows, nfailed;
	int probes; /* rows still to try alone */
	size_t probe_row; /* the row being tried */
	int probe_col; /* -1: the whole row; else the column whose cast is tried */
	char *probe_error; /* the row's refusal, while its columns are tried */
	int attempt;
};

struct dbjob {
	struct bt_daemon *d;
	struct bt_pipeline *pl;
	const struct bt_config *cfg;
	const struct bt_run_config *run;
	struct bt_pg_sink_plan plan; /* the sink's columns and types, learnt at the start */
	struct bt_pg *src, *sink; /* one connection each; NULL once closed */
	struct page *head, *tail; /* uncommitted pages, in key order */
	int npages;
	struct page *feed; /* the page whose requests are being sent */
	struct ref *again; /* refused as overloaded: sent again first */
	int held; /* an overload was met: feeding waits for a request to end */
	char *read_after; /* the next read starts after this key; NULL = from the start */
	int reading, source_done; /* a read in flight; the last page was read */
	struct unit *unit; /* the commit in flight, or NULL */
	int max_pages; /* read-ahead bound: pages held uncommitted */
	size_t inflight; /* requests submitted and not ended */
	int jobs; /* bound on inflight */
	size_t total; /* source rows after the checkpoint at the start (progress) */
	size_t committed_rows, ok, failed; /* source rows, sink rows, failures committed */
	int fatal; /* the run stops: fatal_msg says why */
	char fatal_msg[640];
	int tty;
	uv_timer_t progress_timer;
	uint64_t start_ms, last_line_ms;
	int finished; /* everything read was committed */
};

static void wake(struct dbjob *job)
{
	bt_daemon_wake(job->d);
}

static void stop_with(struct dbjob *job, const char *msg)
{
	if (job->fatal)
		return;
	job->fatal = 1;
	snprintf(job->fatal_msg, sizeof(job->fatal_msg), "%s", msg);
	bt_error("run stopped", "reason=\"%s\"", msg);
	bt_daemon_shutdown(job->d);
	wake(job);
}

static void add_failure(struct page *pg, const char *key, const char *code, const char *error,
			int attempts, const char *stage)
{
	json_t *f = json_pack("{s:s, s:s, s:s, s:i}", "key", key ? key : "", "code", code, "error",
			      error ? error : "", "attempts", attempts);
	if (!f) /* the error is not UTF-8 */
		f = json_pack("{s:s, s:s, s:s, s:i}", "key", key ? key : "", "code", code, "error",
			      "(not UTF-8)", "attempts", attempts);
	if (stage)
		json_object_set_new(f, "stage", json_string(stage));
	json_array_append_new(pg->failures, f);
	bt_warn("row failed", "key=%s code=%s error=\"%s\"", key ? key : "?", code,
		error ? error : "");
}

static void free_page(struct page *pg)
{
	free(pg->last_key);
	json_decref(pg->rows);
	json_decref(pg->keys);
	json_decref(pg->results);
	json_decref(pg->failures);
	free(pg);
}

/* ---- reading the source ------------------------------------------------------- */

static void read_page(struct dbjob *job);

static void page_read_cb(struct bt_pg *pgc, PGresult *res, const char *error, int lost,
			 void *arg)
{
	(void)pgc;
	struct dbjob *job = arg;
	job->reading = 0;
	if (lost) {
		read_page(job); /* a read is safe to repeat */
		return;
	}
	if (error) {
		char msg[640];
		snprintf(msg, sizeof(msg), "the source query failed: %s", error);
		stop_with(job, msg);
		return;
	}
	int kcol = bt_pg_field(res, job->run->src_key);
	if (kcol < 0) {
		char msg[256];
		snprintf(msg, sizeof(msg), "the source query has no column '%s' (source.key)",
			 job->run->src_key);
		stop_with(job, msg);
		return;
	}
	int n = PQntuples(res);
	if (n < job->run->page_rows)
		job->source_done = 1;
	if (n == 0) {
		wake(job);
		return;
	}
	struct page *pg = bt_calloc(1, sizeof(*pg));
	pg->job = job;
	pg->rows = json_array();
	pg->keys = json_array();
	pg->results = json_array();
	pg->failures = json_array();
	const char *prev = NULL;
	for (int i = 0; i < n; i++) {
		const char *key = PQgetvalue(res, i, kcol);
		if (PQgetisnull(res, i, kcol)) {
			add_failure(pg, "", "bad_key", "the source key is NULL", 0, NULL);
			continue;
		}
		/* Paging by key needs unique keys: a repeat would be skipped at a page edge. */
		if (prev && !strcmp(prev, key)) {
			add_failure(pg, key, "duplicate_key",
				    "the source key is not unique; this row was not processed", 0,
				    NULL);
			continue;
		}
		prev = key;
		json_array_append_new(pg->rows, bt_pg_row_json(res, i));
		json_array_append_new(pg->keys, json_string(key));
	}
	pg->nrows = json_array_size(pg->rows);
	pg->sent = pg->nrows == 0;
	pg->last_key = bt_strdup(PQgetvalue(res, n - 1, kcol));
	free(job->read_after);
	job->read_after = bt_strdup(pg->last_key);
	if (job->tail)
		job->tail->next = pg;
	else
		job->head = pg;
	job->tail = pg;
	job->npages++;
	if (!job->feed)
		job->feed = pg;
	wake(job);
}

/* SELECT * FROM (query) q [WHERE key > $1] ORDER BY key LIMIT n: never OFFSET. */
static void read_page(struct dbjob *job)
{
	struct bt_buf sql = BT_BUF_INIT;
	bt_buf_printf(&sql, "SELECT * FROM (%s) AS q", job->run->src_query);
	if (job->read_after) {
		bt_buf_puts(&sql, " WHERE q.");
		bt_pg_ident(&sql, job->run->src_key);
		bt_buf_puts(&sql, " > $1");
	}
	bt_buf_puts(&sql, " ORDER BY q.");
	bt_pg_ident(&sql, job->run->src_key);
	bt_buf_printf(&sql, " LIMIT %d", job->run->page_rows);
	const char *param = job->read_after;
	job->reading = 1;
	bt_pg_query(job->src, sql.data, job->read_after ? 1 : 0, &param, page_read_cb, job);
	bt_buf_release(&sql);
}

/* ---- requests ------------------------------------------------------------------- */

static const char *ref_key(const struct ref *r, char *buf, size_t len)
{
	const struct page *pg = r->page;
	if (r->row >= 0)
		return json_string_value(json_array_get(pg->keys, (size_t)r->row));
	snprintf(buf, len, "%s..%s", json_string_value(json_array_get(pg->keys, 0)),
		 pg->last_key);
	return buf;
}

/* Takes one result object; row mode fills missing key fields from the source row. */
static void take_result(struct ref *r, json_t *obj)
{
	struct page *pg = r->page;
	const struct bt_pg_sink_plan *plan = &pg->job->plan;
	char buf[256];
	if (!json_is_object(obj)) {
		add_failure(pg, ref_key(r, buf, sizeof(buf)), "invalid_result",
			    "a result row is not a JSON object", 1, NULL);
		return;
	}
	json_t *src = r->row >= 0 ? json_array_get(pg->rows, (size_t)r->row) : NULL;
	for (int k = 0; k < pg->job->run->nsink_key; k++) {
		const char *f = plan->cols[k].field;
		json_t *v = json_object_get(obj, f);
		if ((!v || json_is_null(v)) && src && json_object_get(src, f))
			json_object_set(obj, f, json_object_get(src, f));
		v = json_object_get(obj, f);
		if (!v || json_is_null(v)) {
			char msg[256];
			snprintf(msg, sizeof(msg), "a result row has no key field '%.100s'", f);
			add_failure(pg, ref_key(r, buf, sizeof(buf)), "invalid_result", msg, 1, NULL);
			return;
		}
	}
	json_array_append(pg->results, obj);
}

struct value_count {
	size_t n, max;
};

static int count_value(void *ctx, const struct bt_jvalue *v)
{
	struct value_count *c = ctx;
	return !v->end && ++c->n > c->max;
}

/*
 * Whether a large result holds more values than rows rows may: 0, or 1
 * with why in msg.  An object or array the scanner does not take is said
 * as it says (with JSON_REJECT_DUPLICATES: jansson's tree would keep the
 * last of a duplicate key).
 */
static int too_many_values(const char *text, size_t len, size_t rows, char *msg, size_t size)
{
	if (len < RESULT_SCAN_MIN)
		return 0;
	size_t i = 0;
	while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r'))
		i++;
	/* A scalar is one value, however long: loaded as before. */
	if (i == len || (text[i] != '[' && text[i] != '{'))
		return 0;
	struct value_count c = {0, rows * RESULT_VALUES_PER_ROW};
	char err[200];
	int r = bt_jscan_check(text, len, 0, count_value, &c, err, sizeof(err));
	if (r > 0)
		snprintf(msg, size, "the result holds more than %zu JSON values (%d per row it answers)",
			 c.max, RESULT_VALUES_PER_ROW);
	else if (r < 0)
		snprintf(msg, size, "the result is not JSON: %s", err);
	return r != 0;
}

static void request_done(struct bt_request *req, void *arg)
{
	struct ref *r = arg;
	struct page *pg = r->page;
	struct dbjob *job = pg->job;
	char buf[256];
	job->inflight--;
	if (req->code == BT_OVERLOADED && job->inflight > 0) {
		r->next = job->again;
		job->again = r;
		job->held = 1;
		bt_request_free(req);
		wake(job);
		return;
	}
	job->held = 0;
	pg->pending--;
	if (req->code == BT_STAGE_FAILED || req->code == BT_SHUTTING_DOWN) {
		/*
		 * Not the row's fault: committing it as failed would move the
		 * checkpoint past it.  Stop instead; a rerun does it again.
		 */
		char msg[640];
		snprintf(msg, sizeof(msg), "%s%s%s: %s", bt_code_name(req->code),
			 req->error_stage ? " in stage " : "",
			 req->error_stage ? req->error_stage : "", req->error ? req->error : "");
		if (req->code == BT_STAGE_FAILED)
			stop_with(job, msg);
		pg->pending++; /* the page never completes, so it is never committed */
	} else if (req->code != BT_OK) {
		add_failure(pg, ref_key(r, buf, sizeof(buf)), bt_code_name(req->code), req->error,
			    req->attempts, req->error_stage);
	} else {
		json_error_t jerr;
		char msg[300];
		json_t *out = NULL;
		if (too_many_values(req->payload, req->len, r->row >= 0 ? 1 : pg->nrows, msg,
				    sizeof(msg))) {
			add_failure(pg, ref_key(r, buf, sizeof(buf)), "invalid_result", msg,
				    req->attempts, NULL);
		} else if (!(out = json_loadb(req->payload ? req->payload : "", req->len,
					      JSON_DECODE_ANY, &jerr))) {
			snprintf(msg, sizeof(msg), "the result is not JSON: %s", jerr.text);
			add_failure(pg, ref_key(r, buf, sizeof(buf)), "invalid_result", msg,
				    req->attempts, NULL);
		} else if (json_is_array(out)) {
			size_t i;
			json_t *v;
			json_array_foreach(out, i, v)
				take_result(r, v);
		} else {
			take_result(r, out);
		}
		json_decref(out);
	}
	bt_request_free(req);
	free(r);
	wake(job);
}

static void submit(struct dbjob *job, struct ref *r)
{
	struct page *pg = r->page;
	json_t *payload_json, *meta;
	if (r->row >= 0) {
		payload_json = json_incref(json_array_get(pg->rows, (size_t)r->row));
		meta = json_pack("{s:O}", "key", json_array_get(pg->keys, (size_t)r->row));
	} else {
		payload_json = json_incref(pg->rows);
		meta = json_pack("{s:O, s:s, s:I}", "key", json_array_get(pg->keys, 0), "last_key",
				 pg->last_key, "rows", (json_int_t)pg->nrows);
	}
	char *payload = json_dumps(payload_json, JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(payload_json);
	json_object_set_new(meta, "content_type", json_string("application/json"));
	struct bt_request *req = bt_request_new(job->pl, payload, strlen(payload), meta);
	job->inflight++;
	bt_pipeline_submit(req, request_done, r);
}

/* The next request to send, or NULL. */
static struct ref *next_ref(struct dbjob *job)
{
	if (job->again) {
		struct ref *r = job->again;
		job->again = r->next;
		return r;
	}
	while (job->feed && job->feed->sent)
		job->feed = job->feed->next;
	struct page *pg = job->feed;
	if (!pg)
		return NULL;
	struct ref *r = bt_calloc(1, sizeof(*r));
	r->page = pg;
	if (job->run->unit == BT_RUN_ROW) {
		r->row = (long)pg->next_row++;
		pg->sent = pg->next_row >= pg->nrows;
	} else {
		r->row = -1;
		pg->sent = 1;
	}
	pg->pending++;
	return r;
}

/* ---- committing ----------------------------------------------------------------- */

static void send_commit(struct dbjob *job);

static int page_complete(const struct page *pg)
{
	return (pg->sent || pg->nrows == 0) && pg->pending == 0;
}

static void free_unit(struct unit *u)
{
	json_decref(u->rows);
	json_decref(u->rkeys);
	json_decref(u->failures);
	free(u->last_key);
	free(u->probe_error);
	free(u);
}

/* The sink key of a result as text: the value, or a JSON array of values. */
static char *sink_key_text(const struct dbjob *job, json_t *obj)
{
	int n = job->run->nsink_key;
	if (n == 1) {
		json_t *v = json_object_get(obj, job->plan.cols[0].field);
		if (json_is_string(v))
			return bt_strdup(json_string_value(v));
		return json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
	}
	json_t *a = json_array();
	for (int k = 0; k < n; k++)
		json_array_append(a, json_object_get(obj, job->plan.cols[k].field));
	char *s = json_dumps(a, JSON_COMPACT);
	json_decref(a);
	return s;
}

/* Gathers the complete pages at the head into a unit; NULL when none is complete. */
static struct unit *gather(struct dbjob *job)
{
	if (!job->head || !page_complete(job->head))
		return NULL;
	struct unit *u = bt_calloc(1, sizeof(*u));
	json_t *byk = json_object(); /* sink key → index in u->rows: a later result wins */
	u->rows = json_array();
	u->rkeys = json_array();
	u->failures = json_array();
	for (struct page *pg = job->head; pg && page_complete(pg) && u->npages < COMMIT_MAX_PAGES;
	     pg = pg->next) {
		u->npages++;
		free(u->last_key);
		u->last_key = bt_strdup(pg->last_key);
		u->nrows += pg->nrows;
		json_array_extend(u->failures, pg->failures);
		size_t i;
		json_t *obj;
		json_array_foreach(pg->results, i, obj) {
			json_t *m = json_object();
			char num[16];
			for (int c = 0; c < job->plan.ncols; c++) {
				snprintf(num, sizeof(num), "%d", c);
				if (job->plan.has_jsonb && c == job->plan.ncols - 1)
					json_object_set(m, num, obj);
				else if (json_object_get(obj, job->plan.cols[c].field))
					json_object_set(m, num, json_object_get(obj, job->plan.cols[c].field));
			}
			char *k = sink_key_text(job, obj);
			json_t *at = json_object_get(byk, k);
			if (at) {
				json_array_set_new(u->rows, (size_t)json_integer_value(at), m);
			} else {
				json_object_set_new(byk, k, json_integer((json_int_t)json_array_size(u->rows)));
				json_array_append_new(u->rows, m);
				json_array_append_new(u->rkeys, json_string(k));
			}
			free(k);
		}
	}
	json_decref(byk);
	u->nfailed = json_array_size(u->failures);
	return u;
}

/* INSERT … SELECT … FROM jsonb_to_recordset(rows) ON CONFLICT (key) DO UPDATE. */
static void upsert_sql(const struct dbjob *job, struct bt_buf *b, json_t *rows)
{
	const struct bt_pg_sink_plan *p = &job->plan;
	bt_buf_printf(b, "INSERT INTO %s (", p->table);
	for (int c = 0; c < p->ncols; c++) {
		bt_buf_puts(b, c ? ", " : "");
		bt_pg_ident(b, p->cols[c].name);
	}
	bt_buf_puts(b, ") SELECT ");
	for (int c = 0; c < p->ncols; c++)
		bt_buf_printf(b, "%sr.\"%d\"", c ? ", " : "", c);
	char *text = json_dumps(rows, JSON_COMPACT);
	bt_buf_puts(b, " FROM jsonb_to_recordset(");
	bt_pg_quote(b, text, strlen(text));
	free(text);
	bt_buf_puts(b, "::jsonb) AS r(");
	for (int c = 0; c < p->ncols; c++)
		bt_buf_printf(b, "%s\"%d\" %s", c ? ", " : "", c, p->cols[c].type);
	bt_buf_puts(b, ") ON CONFLICT (");
	for (int k = 0; k < job->run->nsink_key; k++) {
		bt_buf_puts(b, k ? ", " : "");
		bt_pg_ident(b, p->cols[k].name);
	}
	if (p->ncols == job->run->nsink_key) {
		bt_buf_puts(b, ") DO NOTHING;\n");
		return;
	}
	bt_buf_puts(b, ") DO UPDATE SET ");
	for (int c = job->run->nsink_key; c < p->ncols; c++) {
		bt_buf_puts(b, c > job->run->nsink_key ? ", " : "");
		bt_pg_ident(b, p->cols[c].name);
		bt_buf_puts(b, " = EXCLUDED.");
		bt_pg_ident(b, p->cols[c].name);
	}
	bt_buf_puts(b, ";\n");
}

static void commit_sql(const struct dbjob *job, const struct unit *u, struct bt_buf *b)
{
	const struct bt_run_config *run = job->run;
	bt_buf_puts(b, "BEGIN;\n");
	if (json_array_size(u->rows))
		upsert_sql(job, b, u->rows);
	if (json_array_size(u->failures)) {
		bt_buf_puts(b, "INSERT INTO ");
		bt_pg_ident(b, run->failures_table);
		bt_buf_puts(b, " (name, key, code, error, attempts, stage) SELECT ");
		bt_pg_quote(b, run->checkpoint_name, strlen(run->checkpoint_name));
		bt_buf_puts(b, ", key, code, error, attempts, stage FROM jsonb_to_recordset(");
		char *text = json_dumps(u->failures, JSON_COMPACT);
		bt_pg_quote(b, text, strlen(text));
		free(text);
		bt_buf_puts(b, "::jsonb) AS f(key text, code text, error text, attempts int, "
			       "stage text);\n");
	}
	bt_buf_puts(b, "INSERT INTO ");
	bt_pg_ident(b, run->checkpoint_table);
	bt_buf_puts(b, " AS c (name, last_key, rows, failed) VALUES (");
	bt_pg_quote(b, run->checkpoint_name, strlen(run->checkpoint_name));
	bt_buf_puts(b, ", ");
	bt_pg_quote(b, u->last_key, strlen(u->last_key));
	bt_buf_printf(b, ", %zu, %zu) ON CONFLICT (name) DO UPDATE SET last_key = "
			 "EXCLUDED.last_key, rows = c.rows + EXCLUDED.rows, failed = c.failed + "
			 "EXCLUDED.failed, updated_at = now();\nCOMMIT;",
		      u->nrows, u->nfailed);
}

static void committed(struct dbjob *job)
{
	struct unit *u = job->unit;
	for (int i = 0; i < u->npages; i++) {
		struct page *pg = job->head;
		job->head = pg->next;
		if (!job->head)
			job->tail = NULL;
		if (job->feed == pg)
			job->feed = pg->next;
		free_page(pg);
		job->npages--;
	}
	job->committed_rows += u->nrows;
	job->ok += json_array_size(u->rows);
	job->failed += u->nfailed;
	bt_debug("pages committed", "pages=%d rows=%zu last_key=%s", u->npages, u->nrows,
		 u->last_key);
	free_unit(u);
	job->unit = NULL;
	wake(job);
}

static void ignore_cb(struct bt_pg *pg, PGresult *res, const char *error, int lost, void *arg)
{
	(void)pg, (void)res, (void)error, (void)lost, (void)arg;
}

static void verify_cb(struct bt_pg *pg, PGresult *res, const char *error, int lost, void *arg);

/* Asks the checkpoint whether the commit in flight happened (queued until reconnected). */
static void verify(struct dbjob *job)
{
	struct bt_buf b = BT_BUF_INIT;
	bt_buf_puts(&b, "SELECT last_key FROM ");
	bt_pg_ident(&b, job->run->checkpoint_table);
	bt_buf_puts(&b, " WHERE name = $1");
	const char *param = job->run->checkpoint_name;
	bt_pg_query(job->sink, b.data, 1, &param, verify_cb, job);
	bt_buf_release(&b);
}

/* After a lost COMMIT: the checkpoint says whether it happened. */
static void verify_cb(struct bt_pg *pg, PGresult *res, const char *error, int lost, void *arg)
{
	(void)pg;
	struct dbjob *job = arg;
	struct unit *u = job->unit;
	if (lost) {
		verify(job);
		return;
	}
	if (error) {
		stop_with(job, error);
		return;
	}
	if (PQntuples(res) == 1 && !strcmp(PQgetvalue(res, 0, 0), u->last_key)) {
		bt_info("the lost commit had committed", "last_key=%s", u->last_key);
		committed(job);
	} else {
		bt_info("the lost commit had not committed: again", "last_key=%s", u->last_key);
		send_commit(job);
	}
}

static void probe_cb(struct bt_pg *pgc, PGresult *res, const char *error, int lost, void *arg);

/*
 * Tries row i of the unit alone, in a transaction rolled back (col -1), or
 * only the cast of its column col, to say which column a refused row's
 * value does not fit.  One at a time: after a refusal the session needs
 * its ROLLBACK before the next.  The probe's place is kept in the unit.
 */
static void send_probe(struct dbjob *job, size_t i, int col)
{
	struct bt_buf b = BT_BUF_INIT;
	json_t *one = json_array();
	json_array_append(one, json_array_get(job->unit->rows, i));
	if (col < 0) {
		bt_buf_puts(&b, "BEGIN;\n");
		upsert_sql(job, &b, one);
		bt_buf_puts(&b, "ROLLBACK;");
	} else {
		char *text = json_dumps(one, JSON_COMPACT);
		bt_buf_printf(&b, "SELECT r.\"%d\" FROM jsonb_to_recordset(", col);
		bt_pg_quote(&b, text, strlen(text));
		bt_buf_printf(&b, "::jsonb) AS r(\"%d\" %s)", col, job->plan.cols[col].type);
		free(text);
	}
	json_decref(one);
	job->unit->probe_row = i;
	job->unit->probe_col = col;
	bt_pg_query(job->sink, b.data, 0, NULL, probe_cb, job);
	bt_buf_release(&b);
}

static void reject_row(struct dbjob *job, size_t i, const char *error)
{
	struct unit *u = job->unit;
	const char *key = json_string_value(json_array_get(u->rkeys, i));
	json_t *f = json_pack("{s:s, s:s, s:s, s:i}", "key", key, "code", "sink_rejected",
			      "error", error, "attempts", 1);
	json_array_append_new(u->failures, f ? f
					      : json_pack("{s:s, s:s, s:s}", "key", key, "code",
							  "sink_rejected", "error", "?"));
	bt_warn("row not written", "key=%s error=\"%s\"", key, error);
	json_array_set_new(u->rows, i, json_null());
}

/* The probes' answers: does the table take the row, and if not, which column refuses? */
static void probe_cb(struct bt_pg *pgc, PGresult *res, const char *error, int lost, void *arg)
{
	(void)pgc, (void)res;
	struct dbjob *job = arg;
	struct unit *u = job->unit;
	size_t i = u->probe_row;
	int col = u->probe_col;
	if (col < 0 && error && !lost) {
		bt_pg_query(job->sink, "ROLLBACK", 0, NULL, ignore_cb, NULL);
		u->probe_error = bt_strdup(error);
		send_probe(job, i, 0);
		return;
	}
	if (col >= 0) {
		const struct bt_pg_column *c = &job->plan.cols[col];
		if (error && !lost) {
			char msg[1024];
			snprintf(msg, sizeof(msg), "column '%s' (%s) cannot take field '%s': %s",
				 c->name, c->type, c->field[0] ? c->field : "(the whole result)",
				 error);
			reject_row(job, i, msg);
		} else if (col + 1 < job->plan.ncols) {
			send_probe(job, i, col + 1);
			return;
		} else {
			reject_row(job, i, u->probe_error); /* every cast works: a constraint refused it */
		}
		free(u->probe_error);
		u->probe_error = NULL;
	}
	if (--u->probes > 0) {
		send_probe(job, i + 1, -1);
		return;
	}
	/* Every row tried: commit the unit without the rejected ones. */
	json_t *rows = json_array(), *keys = json_array();
	for (size_t k = 0; k < json_array_size(u->rows); k++) {
		if (json_is_null(json_array_get(u->rows, k)))
			continue;
		json_array_append(rows, json_array_get(u->rows, k));
		json_array_append(keys, json_array_get(u->rkeys, k));
	}
	json_decref(u->rows);
	json_decref(u->rkeys);
	u->rows = rows;
	u->rkeys = keys;
	u->nfailed = json_array_size(u->failures);
	send_commit(job);
}

static void commit_cb(struct bt_pg *pgc, PGresult *res, const char *error, int lost, void *arg)
{
	(void)pgc, (void)res;
	struct dbjob *job = arg;
	struct unit *u = job->unit;
	if (lost) {
		verify(job);
		return;
	}
	if (!error) {
		committed(job);
		return;
	}
	bt_pg_query(job->sink, "ROLLBACK", 0, NULL, ignore_cb, NULL);
	if (u->attempt > 1 || json_array_size(u->rows) == 0) {
		char msg[640];
		snprintf(msg, sizeof(msg), "cannot commit to the sink: %s", error);
		stop_with(job, msg);
		return;
	}
	/* Find the rows the table refuses, each alone; the rest commits. */
	bt_info("commit refused: trying the rows one by one", "rows=%zu error=\"%s\"",
		json_array_size(u->rows), error);
	u->probes = (int)json_array_size(u->rows);
	send_probe(job, 0, -1);
}

static void send_commit(struct dbjob *job)
{
	struct bt_buf sql = BT_BUF_INIT;
	job->unit->attempt++;
	commit_sql(job, job->unit, &sql);
	bt_pg_query(job->sink, sql.data, 0, NULL, commit_cb, job);
	bt_buf_release(&sql);
}

/* ---- the loop turn ------------------------------------------------------------- */

static int pipeline_startable(const struct bt_pipeline *pl)
{
	for (int i = 0; i < pl->nstages; i++)
		if (!pl->stages[i]->up && !pl->stages[i]->failed)
			return 0;
	return 1;
}

static void feed(struct bt_daemon *d, void *arg)
{
	struct dbjob *job = arg;
	if (job->fatal || job->finished)
		return;
	int running = d->state == BT_DAEMON_RUNNING;
	if (running && !job->source_done && !job->reading && job->npages < job->max_pages)
		read_page(job);
	while (running && pipeline_startable(job->pl) && !job->held &&
	       job->inflight < (size_t)job->jobs) {
		struct ref *r = next_ref(job);
		if (!r)
			break;
		submit(job, r);
	}
	if (!job->unit && (job->unit = gather(job)))
		send_commit(job);
	if (running && job->source_done && !job->reading && !job->head && !job->unit) {
		job->finished = 1;
		bt_daemon_shutdown(d);
	}
}

/* ---- progress, start, end ------------------------------------------------------- */

static void progress(struct dbjob *job, int final)
{
	double elapsed = (double)(bt_now_ms() - job->start_ms) / 1000.0;
	double rate = elapsed > 0 ? (double)job->committed_rows / elapsed : 0;
	double left = job->total > job->committed_rows ? (double)(job->total - job->committed_rows) : 0;
	double eta = rate > 0 ? left / rate : NAN;
	char etas[32];
	if (!isfinite(eta))
		snprintf(etas, sizeof(etas), "--:--");
	else
		snprintf(etas, sizeof(etas), "%d:%02d", (int)eta / 60, (int)eta % 60);
	if (job->tty) {
		int width = 24;
		int fill = job->total ? (int)(width * BT_MIN(job->committed_rows, job->total) / job->total)
				      : width;
		char bar[32];
		for (int i = 0; i < width; i++)
			bar[i] = i < fill ? '#' : '.';
		bar[width] = '\0';
		fprintf(stderr, "\r\033[K[%s] %zu/%zu rows  written %zu  failed %zu  %.1f rows/s  ETA %s%s",
			bar, job->committed_rows, job->total, job->ok, job->failed, rate, etas,
			final ? "\n" : "");
	} else if (final || bt_now_ms() - job->last_line_ms >= 5000) {
		job->last_line_ms = bt_now_ms();
		fprintf(stderr,
			"progress: %zu/%zu rows committed, %zu written, %zu failed, %.1f rows/s, ETA %s\n",
			job->committed_rows, job->total, job->ok, job->failed, rate, etas);
	}
	fflush(stderr);
}

static void progress_cb(uv_timer_t *t)
{
	progress(t->data, 0);
}

static void pg_fatal_cb(struct bt_pg *pg, const char *error, void *arg)
{
	(void)pg;
	stop_with(arg, error);
}

/* Blocking, before the loop: the checkpoint (or its reset) and the rows left. */
static int prepare(struct dbjob *job, int force, size_t *skipped, char *err, size_t errlen)
{
	const struct bt_run_config *run = job->run;
	PGconn *conn = PQconnectdb(run->sink_connect);
	struct bt_buf sql = BT_BUF_INIT;
	int r = 0;
	const char *name = run->checkpoint_name;
	if (PQstatus(conn) != CONNECTION_OK) {
		snprintf(err, errlen, "cannot connect to the sink database: %s", PQerrorMessage(conn));
		PQfinish(conn);
		return -1;
	}
	if (force) {
		bt_buf_puts(&sql, "DELETE FROM ");
		bt_pg_ident(&sql, run->checkpoint_table);
		bt_buf_puts(&sql, " WHERE name = $1");
		PQclear(PQexecParams(conn, sql.data, 1, NULL, &name, NULL, NULL, 0));
		sql.len = 0;
		bt_buf_puts(&sql, "DELETE FROM ");
		bt_pg_ident(&sql, run->failures_table);
		bt_buf_puts(&sql, " WHERE name = $1");
		PQclear(PQexecParams(conn, sql.data, 1, NULL, &name, NULL, NULL, 0));
		sql.len = 0;
	}
	bt_buf_puts(&sql, "SELECT last_key, rows FROM ");
	bt_pg_ident(&sql, run->checkpoint_table);
	bt_buf_puts(&sql, " WHERE name = $1");
	PGresult *res = PQexecParams(conn, sql.data, 1, NULL, &name, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		snprintf(err, errlen, "cannot read the checkpoint: %s", PQresultErrorMessage(res));
		r = -1;
	} else if (PQntuples(res) == 1) {
		job->read_after = bt_strdup(PQgetvalue(res, 0, 0));
		*skipped = (size_t)strtoull(PQgetvalue(res, 0, 1), NULL, 10);
	}
	PQclear(res);
	PQfinish(conn);
	bt_buf_release(&sql);
	if (r)
		return r;
	/* The total is for progress only: a failure to count is not an error. */
	conn = PQconnectdb(run->src_connect);
	struct bt_buf cnt = BT_BUF_INIT;
	bt_buf_printf(&cnt, "SELECT count(*) FROM (%s) AS q", run->src_query);
	if (job->read_after) {
		bt_buf_puts(&cnt, " WHERE q.");
		bt_pg_ident(&cnt, run->src_key);
		bt_buf_puts(&cnt, " > $1");
	}
	const char *param = job->read_after;
	res = PQexecParams(conn, cnt.data, job->read_after ? 1 : 0, NULL, &param, NULL, NULL, 0);
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
		job->total = (size_t)strtoull(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	PQfinish(conn);
	bt_buf_release(&cnt);
	return 0;
}

int bt_jobs_run_db(struct bt_config *cfg, const struct bt_job_options *opt)
{
	struct dbjob job;
	char err[1024];
	size_t skipped = 0;
	memset(&job, 0, sizeof(job));
	job.cfg = cfg;
	job.run = &cfg->run;
	const char *pname = opt->pipeline ? opt->pipeline : cfg->run.pipeline;
	int pi = pname ? bt_config_pipeline_index(cfg, pname) : -1;
	if (pi < 0) {
		if (pname)
			fprintf(stderr, "baton run: no pipeline named '%s' in the config\n", pname);
		else
			fprintf(stderr, "baton run: name the pipeline with --pipeline or run.pipeline\n");
		return 2;
	}
	if (bt_pg_check(cfg, 1, &job.plan, err, sizeof(err))) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	if (prepare(&job, opt->force, &skipped, err, sizeof(err))) {
		fprintf(stderr, "baton run: %s\n", err);
		bt_pg_sink_plan_release(&job.plan);
		return 2;
	}
	bt_log_threshold = cfg->log_level;
	uv_loop_t loop;
	struct bt_daemon d;
	uv_loop_init(&loop);
	bt_daemon_init(&d, &loop, cfg);
	job.d = &d;
	job.pl = &d.pipelines[pi];
	/*
	 * Every stage busy at once: a page per free slot along the whole
	 * pipeline, twice over so that the next is queued when one ends.
	 */
	int cap = 0;
	for (int s = 0; s < job.pl->nstages; s++)
		cap += job.pl->stages[s]->nreplicas * job.pl->stages[s]->cfg->max_ongoing *
		       job.pl->stages[s]->cfg->batch_max_size;
	job.jobs = opt->jobs > 0 ? opt->jobs : BT_MAX(2, 2 * cap);
	/* Enough pages read ahead to keep every request slot busy, and one more. */
	int per_page = job.run->unit == BT_RUN_ROW ? job.run->page_rows : 1;
	job.max_pages = (job.jobs + per_page - 1) / per_page + 2;
	job.tty = opt->progress < 0 ? isatty(2) : opt->progress;
	job.start_ms = job.last_line_ms = bt_now_ms();
	uint64_t max_down = cfg->run.reconnect_max_s * 1000;
	job.src = bt_pg_new(&loop, cfg->run.src_connect, "source", max_down, pg_fatal_cb, NULL, &job);
	job.sink = bt_pg_new(&loop, cfg->run.sink_connect, "sink", max_down, pg_fatal_cb, NULL, &job);
	d.no_http = 1;
	d.on_idle = feed;
	d.on_idle_arg = &job;
	bt_info("run starting", "pipeline=%s rows=%zu after_key=%s jobs=%d", pname, job.total,
		job.read_after ? job.read_after : "-", job.jobs);
	uv_timer_init(&loop, &job.progress_timer);
	job.progress_timer.data = &job;
	if (bt_daemon_start(&d, err, sizeof(err))) {
		fprintf(stderr, "baton run: %s\n", err);
		bt_daemon_shutdown(&d);
		d.hard_stop = 1;
	}
	uv_timer_start(&job.progress_timer, progress_cb, job.tty ? 200 : 1000, job.tty ? 200 : 1000);
	bt_daemon_wake(&d);
	while (uv_run(&loop, UV_RUN_ONCE)) {
		if (d.state == BT_DAEMON_CLOSING && job.src) {
			uv_close((uv_handle_t *)&job.progress_timer, NULL);
			bt_pg_close(job.src);
			bt_pg_close(job.sink);
			job.src = job.sink = NULL;
		}
	}
	progress(&job, 1);
	int complete = job.finished && !job.fatal;
	double wall = (double)(bt_now_ms() - job.start_ms) / 1000.0;
	printf("baton run: pipeline '%s', %s into %s\n", pname, complete ? "done" : "stopped",
	       job.plan.table);
	printf("  rows %zu (skipped %zu before the checkpoint)   written %zu   failed %zu   wall "
	       "%.1fs   %.1f rows/s\n",
	       job.committed_rows, skipped, job.ok, job.failed, wall,
	       wall > 0 ? (double)job.committed_rows / wall : 0.0);
	if (job.failed)
		printf("  failures: table %s, name = '%s'\n", cfg->run.failures_table,
		       cfg->run.checkpoint_name);
	if (job.fatal)
		fprintf(stderr, "baton run: %s\n", job.fatal_msg);
	bt_info("run finished", "rows=%zu written=%zu failed=%zu", job.committed_rows, job.ok,
		job.failed);
	bt_daemon_release(&d);
	if (uv_loop_close(&loop))
		bt_error("loop closed with handles still open", "%s", "");
	while (job.head) {
		struct page *pg = job.head;
		job.head = pg->next;
		free_page(pg);
	}
	while (job.again) {
		struct ref *r = job.again;
		job.again = r->next;
		free(r);
	}
	if (job.unit)
		free_unit(job.unit);
	free(job.read_after);
	bt_pg_sink_plan_release(&job.plan);
	return complete && !job.failed ? 0 : 1;
}
