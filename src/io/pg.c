/*
 * An asynchronous libpq connection on the loop: connect with
 * PQconnectStart/PQconnectPoll, send with PQsendQuery(Params), read with
 * PQconsumeInput/PQisBusy/PQgetResult, each step when uv_poll says the
 * socket is ready.  One query at a time, the rest queued.  A broken
 * connection fails the query in flight as "lost" and reconnects with
 * backoff; the queue waits.
 */
#include "io.h"

#include <stdlib.h>
#include <string.h>

struct query {
	char *sql;
	char **params;
	int nparams;
	bt_pg_result_cb cb;
	void *arg;
	struct query *next;
};

enum pg_state { PG_CONNECTING, PG_IDLE, PG_BUSY, PG_DOWN, PG_CLOSED };

struct bt_pg {
	uv_loop_t *loop;
	char *conninfo;
	char *name;
	PGconn *conn;
	uv_poll_t *poll; /* on PQsocket; heap, freed in its close callback */
	int poll_fd;
	uv_timer_t timer; /* backoff, and the first connect's deferral */
	enum pg_state state;
	struct query *head, *tail; /* head is in flight when PG_BUSY */
	PGresult *last; /* the query in flight's last result so far */
	char *first_error; /* its first error */
	int failures; /* consecutive failed connects */
	uint64_t down_since; /* 0 when up */
	uint64_t max_down_ms;
	int ever_up;
	int fatal_called;
	bt_pg_fatal_cb fatal;
	bt_pg_up_cb up;
	void *arg;
};

static void start_connect(struct bt_pg *pg);
static void poll_cb(uv_poll_t *h, int status, int events);

static void free_query(struct query *q)
{
	for (int i = 0; i < q->nparams; i++)
		free(q->params[i]);
	free(q->params);
	free(q->sql);
	free(q);
}

static void free_poll_cb(uv_handle_t *h)
{
	free(h);
}

/* Stops watching the socket; libpq may close or replace it after this. */
static void drop_poll(struct bt_pg *pg)
{
	if (!pg->poll)
		return;
	uv_poll_stop(pg->poll);
	uv_close((uv_handle_t *)pg->poll, free_poll_cb);
	pg->poll = NULL;
	pg->poll_fd = -1;
}

/* Watches PQsocket for events, following libpq to a new socket if it changed. */
static void watch(struct bt_pg *pg, int events)
{
	int fd = PQsocket(pg->conn);
	if (pg->poll && pg->poll_fd != fd)
		drop_poll(pg);
	if (!pg->poll) {
		pg->poll = bt_malloc(sizeof(*pg->poll));
		if (uv_poll_init(pg->loop, pg->poll, fd)) {
			free(pg->poll);
			pg->poll = NULL;
			return;
		}
		pg->poll->data = pg;
		pg->poll_fd = fd;
	}
	uv_poll_start(pg->poll, events, poll_cb);
}

static void clean_message(char *s)
{
	size_t n = strlen(s);
	while (n && (s[n - 1] == '\n' || s[n - 1] == ' '))
		s[--n] = '\0';
	for (char *p = s; *p; p++)
		if (*p == '\n')
			*p = ' ';
}

static void retry_cb(uv_timer_t *t)
{
	start_connect(t->data);
}

/* The connection failed or broke: fail what was in flight, back off, reconnect. */
static void go_down(struct bt_pg *pg, const char *why)
{
	char msg[512];
	snprintf(msg, sizeof(msg), "%s", why && *why ? why : "the connection was lost");
	clean_message(msg);
	drop_poll(pg);
	if (pg->conn)
		PQfinish(pg->conn);
	pg->conn = NULL;
	struct query *q = pg->state == PG_BUSY ? pg->head : NULL;
	pg->state = PG_DOWN;
	if (!pg->down_since)
		pg->down_since = bt_now_ms();
	if (pg->last)
		PQclear(pg->last);
	pg->last = NULL;
	free(pg->first_error);
	pg->first_error = NULL;
	if (q) {
		pg->head = q->next;
		if (!pg->head)
			pg->tail = NULL;
		bt_warn("database connection lost", "db=%s error=\"%s\"", pg->name, msg);
		q->cb(pg, NULL, msg, 1, q->arg);
		free_query(q);
		if (pg->state == PG_CLOSED)
			return;
	}
	uint64_t down = bt_now_ms() - pg->down_since;
	if (down > pg->max_down_ms) {
		if (!pg->fatal_called) {
			char full[640];
			pg->fatal_called = 1;
			snprintf(full, sizeof(full), "database '%s' unreachable for %llu s: %s",
				 pg->name, (unsigned long long)(down / 1000), msg);
			pg->fatal(pg, full, pg->arg);
		}
		return;
	}
	uint64_t delay = 100;
	for (int i = 0; i < pg->failures && delay < 5000; i++)
		delay *= 2;
	delay = BT_MIN(delay, 5000);
	pg->failures++;
	bt_info("database unreachable: retrying", "db=%s in_ms=%llu error=\"%s\"", pg->name,
		(unsigned long long)delay, msg);
	uv_timer_start(&pg->timer, retry_cb, delay, 0);
}

/* Sends the head of the queue when idle. */
static void send_next(struct bt_pg *pg)
{
	if (pg->state != PG_IDLE || !pg->head)
		return;
	struct query *q = pg->head;
	int ok = q->nparams ? PQsendQueryParams(pg->conn, q->sql, q->nparams, NULL,
						(const char *const *)q->params, NULL, NULL, 0)
			    : PQsendQuery(pg->conn, q->sql);
	if (!ok) {
		pg->state = PG_BUSY;
		go_down(pg, PQerrorMessage(pg->conn));
		return;
	}
	pg->state = PG_BUSY;
	int f = PQflush(pg->conn);
	watch(pg, UV_READABLE | (f == 1 ? UV_WRITABLE : 0));
}

/* Reads what arrived; ends the query in flight when its last result is in. */
static void read_results(struct bt_pg *pg)
{
	if (!PQconsumeInput(pg->conn)) {
		go_down(pg, PQerrorMessage(pg->conn));
		return;
	}
	while (!PQisBusy(pg->conn)) {
		PGresult *res = PQgetResult(pg->conn);
		if (!res)
			break;
		ExecStatusType st = PQresultStatus(res);
		if ((st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE) && !pg->first_error) {
			/* The server's sentence without "ERROR:  ", and its detail. */
			const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
			const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
			pg->first_error = primary ? bt_asprintf("%s%s%s%s", primary,
								detail ? " (" : "",
								detail ? detail : "", detail ? ")" : "")
						  : bt_strdup(PQresultErrorMessage(res));
			clean_message(pg->first_error);
		}
		if (pg->last)
			PQclear(pg->last);
		pg->last = res;
		if (PQstatus(pg->conn) == CONNECTION_BAD)
			break;
	}
	if (PQstatus(pg->conn) == CONNECTION_BAD) {
		go_down(pg, PQerrorMessage(pg->conn));
		return;
	}
	if (PQisBusy(pg->conn))
		return;
	/* PQgetResult returned NULL: the query is over. */
	struct query *q = pg->head;
	pg->head = q->next;
	if (!pg->head)
		pg->tail = NULL;
	pg->state = PG_IDLE;
	PGresult *res = pg->last;
	char *error = pg->first_error;
	pg->last = NULL;
	pg->first_error = NULL;
	q->cb(pg, error ? NULL : res, error, 0, q->arg);
	free_query(q);
	if (res)
		PQclear(res);
	free(error);
	send_next(pg);
}

static void connect_step(struct bt_pg *pg)
{
	switch (PQconnectPoll(pg->conn)) {
	case PGRES_POLLING_READING:
		watch(pg, UV_READABLE);
		return;
	case PGRES_POLLING_WRITING:
		watch(pg, UV_WRITABLE);
		return;
	case PGRES_POLLING_OK:
		break;
	default:
		go_down(pg, PQerrorMessage(pg->conn));
		return;
	}
	PQsetnonblocking(pg->conn, 1);
	pg->state = PG_IDLE;
	pg->failures = 0;
	pg->down_since = 0;
	watch(pg, UV_READABLE);
	int again = pg->ever_up;
	pg->ever_up = 1;
	bt_info(again ? "database connection restored" : "database connected", "db=%s", pg->name);
	if (again && pg->up)
		pg->up(pg, pg->arg);
	send_next(pg);
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
	struct bt_pg *pg = h->data;
	if (pg->state == PG_CONNECTING) {
		connect_step(pg);
		return;
	}
	if (status < 0) {
		go_down(pg, uv_strerror(status));
		return;
	}
	if (events & UV_WRITABLE) {
		int f = PQflush(pg->conn);
		if (f < 0) {
			go_down(pg, PQerrorMessage(pg->conn));
			return;
		}
		if (f == 0)
			watch(pg, UV_READABLE);
	}
	if (events & UV_READABLE) {
		if (pg->state == PG_BUSY) {
			read_results(pg);
		} else if (!PQconsumeInput(pg->conn) || PQstatus(pg->conn) == CONNECTION_BAD) {
			/* Idle: only a notice or the server hanging up arrives. */
			go_down(pg, PQerrorMessage(pg->conn));
		} else {
			PGresult *r;
			while (!PQisBusy(pg->conn) && (r = PQgetResult(pg->conn)))
				PQclear(r);
		}
	}
}

/* libpq prints notices to stderr by default; ours go to the log at debug. */
static void notice_cb(void *arg, const char *message)
{
	char msg[512];
	snprintf(msg, sizeof(msg), "%s", message);
	clean_message(msg);
	bt_debug("database notice", "db=%s notice=\"%s\"", (const char *)arg, msg);
}

static void start_connect(struct bt_pg *pg)
{
	pg->state = PG_CONNECTING;
	pg->conn = PQconnectStart(pg->conninfo);
	if (!pg->conn || PQstatus(pg->conn) == CONNECTION_BAD) {
		go_down(pg, pg->conn ? PQerrorMessage(pg->conn) : "out of memory");
		return;
	}
	PQsetNoticeProcessor(pg->conn, notice_cb, pg->name);
	connect_step(pg);
}

struct bt_pg *bt_pg_new(uv_loop_t *loop, const char *conninfo, const char *name,
			uint64_t max_down_ms, bt_pg_fatal_cb fatal, bt_pg_up_cb up, void *arg)
{
	struct bt_pg *pg = bt_calloc(1, sizeof(*pg));
	pg->loop = loop;
	pg->conninfo = bt_strdup(conninfo);
	pg->name = bt_strdup(name);
	pg->poll_fd = -1;
	pg->max_down_ms = max_down_ms;
	pg->fatal = fatal;
	pg->up = up;
	pg->arg = arg;
	pg->state = PG_DOWN;
	uv_timer_init(loop, &pg->timer);
	pg->timer.data = pg;
	/* Deferred: the caller must not be called back from inside this call. */
	uv_timer_start(&pg->timer, retry_cb, 0, 0);
	return pg;
}

void bt_pg_query(struct bt_pg *pg, const char *sql, int nparams, const char *const *params,
		 bt_pg_result_cb cb, void *arg)
{
	struct query *q = bt_calloc(1, sizeof(*q));
	q->sql = bt_strdup(sql);
	q->nparams = nparams;
	q->params = nparams ? bt_calloc((size_t)nparams, sizeof(char *)) : NULL;
	for (int i = 0; i < nparams; i++)
		q->params[i] = params[i] ? bt_strdup(params[i]) : NULL;
	q->cb = cb;
	q->arg = arg;
	if (pg->tail)
		pg->tail->next = q;
	else
		pg->head = q;
	pg->tail = q;
	send_next(pg);
}

static void free_pg_cb(uv_handle_t *h)
{
	struct bt_pg *pg = h->data;
	free(pg->conninfo);
	free(pg->name);
	free(pg);
}

void bt_pg_close(struct bt_pg *pg)
{
	if (!pg || pg->state == PG_CLOSED)
		return;
	pg->state = PG_CLOSED;
	drop_poll(pg);
	if (pg->conn)
		PQfinish(pg->conn);
	pg->conn = NULL;
	while (pg->head) {
		struct query *q = pg->head;
		pg->head = q->next;
		free_query(q);
	}
	if (pg->last)
		PQclear(pg->last);
	free(pg->first_error);
	uv_timer_stop(&pg->timer);
	uv_close((uv_handle_t *)&pg->timer, free_pg_cb);
}

/* ---- quoting and rows ---------------------------------------------------------- */

int bt_pg_field(const PGresult *res, const char *name)
{
	for (int i = 0; i < PQnfields(res); i++)
		if (!strcmp(PQfname(res, i), name))
			return i;
	return -1;
}

void bt_pg_ident(struct bt_buf *b, const char *name)
{
	/* "schema.table" names two identifiers. */
	bt_buf_puts(b, "\"");
	for (const char *p = name; *p; p++) {
		if (*p == '"')
			bt_buf_puts(b, "\"\"");
		else if (*p == '.')
			bt_buf_puts(b, "\".\"");
		else
			bt_buf_append(b, p, 1);
	}
	bt_buf_puts(b, "\"");
}

void bt_pg_quote(struct bt_buf *b, const char *s, size_t len)
{
	bt_buf_puts(b, "E'");
	size_t start = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] != '\'' && s[i] != '\\')
			continue;
		bt_buf_append(b, s + start, i - start);
		bt_buf_puts(b, s[i] == '\'' ? "''" : "\\\\");
		start = i + 1;
	}
	bt_buf_append(b, s + start, len - start);
	bt_buf_puts(b, "'");
}

/* Type OIDs from pg_type.h (stable across versions). */
enum {
	OID_BOOL = 16,
	OID_INT8 = 20,
	OID_INT2 = 21,
	OID_INT4 = 23,
	OID_JSON = 114,
	OID_FLOAT4 = 700,
	OID_FLOAT8 = 701,
	OID_NUMERIC = 1700,
	OID_JSONB = 3802,
};

json_t *bt_pg_row_json(const PGresult *res, int row)
{
	json_t *o = json_object();
	for (int c = 0; c < PQnfields(res); c++) {
		const char *v = PQgetvalue(res, row, c);
		json_t *j = NULL;
		if (PQgetisnull(res, row, c)) {
			j = json_null();
		} else {
			switch (PQftype(res, c)) {
			case OID_BOOL:
				j = json_boolean(v[0] == 't');
				break;
			case OID_INT2:
			case OID_INT4:
			case OID_INT8:
				j = json_integer(strtoll(v, NULL, 10));
				break;
			case OID_FLOAT4:
			case OID_FLOAT8:
			case OID_NUMERIC: {
				char *end;
				double d = strtod(v, &end);
				/* NaN and Infinity have no JSON number: keep the text. */
				j = (*end || d != d || d > 1.7e308 || d < -1.7e308) ? json_string(v)
										    : json_real(d);
				break;
			}
			case OID_JSON:
			case OID_JSONB:
				j = json_loads(v, JSON_DECODE_ANY, NULL);
				break;
			}
			if (!j)
				j = json_string(v);
		}
		json_object_set_new(o, PQfname(res, c), j ? j : json_null());
	}
	return o;
}
