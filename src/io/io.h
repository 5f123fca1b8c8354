/*
 * Databases as sources and sinks of `baton run`: an asynchronous libpq
 * connection driven by a libuv loop (uv_poll on PQsocket, no threads),
 * with reconnection and backoff, and the synchronous checks that `baton
 * check --connect` and the start of a run make.  This module knows SQL and
 * libpq, not requests or pipelines: src/jobs/ drives it.
 */
#ifndef BT_IO_H
#define BT_IO_H

#include <jansson.h>
#include <libpq-fe.h>
#include <uv.h>

#include "../config/config.h"

struct bt_pg;

/*
 * A query's end.  res is the last result of the query (owned by the
 * connection, valid during the call) or NULL; error is NULL on success,
 * else the server's or libpq's message.  lost is 1 when the connection
 * broke before the answer: the query may or may not have taken effect.
 */
typedef void (*bt_pg_result_cb)(struct bt_pg *pg, PGresult *res, const char *error, int lost,
				void *arg);
/* The connection stayed down longer than its limit; error says why. */
typedef void (*bt_pg_fatal_cb)(struct bt_pg *pg, const char *error, void *arg);
/* The connection came back after being lost (not called on the first connect). */
typedef void (*bt_pg_up_cb)(struct bt_pg *pg, void *arg);

/*
 * Starts connecting to conninfo ("" = the PG* environment) under name (for
 * logs; the conninfo itself is never logged).  Connection failures are
 * retried with backoff (100 ms doubling to 5 s); after max_down_ms down,
 * fatal is called once.  Never calls back synchronously.
 */
struct bt_pg *bt_pg_new(uv_loop_t *loop, const char *conninfo, const char *name,
			uint64_t max_down_ms, bt_pg_fatal_cb fatal, bt_pg_up_cb up, void *arg);
/*
 * Queues sql (with nparams text parameters, copied; with none it may hold
 * several statements, run as one simple query).  Queries run one at a time
 * in order.  cb is called once, never synchronously, unless the
 * connection is closed first (then never).
 */
void bt_pg_query(struct bt_pg *pg, const char *sql, int nparams, const char *const *params,
		 bt_pg_result_cb cb, void *arg);
/* Closes the connection; queued queries are dropped; freed in a close callback. */
void bt_pg_close(struct bt_pg *pg);

/* ---- synchronous checks (start of a run, `baton check --connect`) ---- */

/* A sink column: name, SQL type (format_type) and JSON field it takes. */
struct bt_pg_column {
	char *name;
	char *type;
	char *field;
};

/* What the start of a run learns about the sink table. */
struct bt_pg_sink_plan {
	char *table; /* the table's name as the server prints it (quoted as needed) */
	struct bt_pg_column *cols; /* written columns, key columns first */
	int ncols;
	int has_jsonb; /* the last column takes the whole result object */
};
void bt_pg_sink_plan_release(struct bt_pg_sink_plan *plan);

/*
 * Connects (blocking) and checks the source query has the key column and
 * the sink table has the columns, a unique index on the key and a json or
 * jsonb column for `jsonb:`.  With create, makes the checkpoint and
 * failures tables when missing.  0, or BT_ECONFIG with a FILE:LINE:COL
 * message in err.  plan may be NULL.
 */
int bt_pg_check(const struct bt_config *cfg, int create, struct bt_pg_sink_plan *plan,
		char *err, size_t errlen);

/*
 * A row of a result as a JSON object: numbers and booleans typed, json
 * and jsonb parsed, NULL as null, everything else as text.
 */
json_t *bt_pg_row_json(const PGresult *res, int row);

/* The column of res named exactly name (PQfnumber folds case), or -1. */
int bt_pg_field(const PGresult *res, const char *name);

/* Quotes a name from the config ("a""b"; a dot separates schema and table). */
void bt_pg_ident(struct bt_buf *b, const char *name);
/* Quotes a literal as E'...', whatever standard_conforming_strings says. */
void bt_pg_quote(struct bt_buf *b, const char *s, size_t len);

#endif
