/*
 * Unit tests of src/io's pure helpers: quoting names and literals for the
 * SQL baton builds, and a result row → JSON by column type (on a PGresult
 * built in memory, no server).
 */
#include <criterion/criterion.h>
#include <string.h>

#include "io/io.h"

TestSuite(io, .timeout = 20);

static char *quoted(void (*fn)(struct bt_buf *, const char *, size_t), const char *s)
{
	struct bt_buf b = BT_BUF_INIT;
	fn(&b, s, strlen(s));
	return bt_buf_detach(&b, NULL);
}

static char *ident(const char *s)
{
	struct bt_buf b = BT_BUF_INIT;
	bt_pg_ident(&b, s);
	return bt_buf_detach(&b, NULL);
}

Test(io, literals_double_quotes_and_backslashes)
{
	char *q = quoted(bt_pg_quote, "it's a \\ test");
	cr_assert_str_eq(q, "E'it''s a \\\\ test'");
	free(q);
	q = quoted(bt_pg_quote, "");
	cr_assert_str_eq(q, "E''");
	free(q);
}

Test(io, identifiers_are_quoted_and_a_dot_separates_the_schema)
{
	char *q = ident("features");
	cr_assert_str_eq(q, "\"features\"");
	free(q);
	q = ident("an\"odd");
	cr_assert_str_eq(q, "\"an\"\"odd\"");
	free(q);
	q = ident("analytics.Features");
	cr_assert_str_eq(q, "\"analytics\".\"Features\"");
	free(q);
}

/* A one-row result with the given column types (OIDs) and text values (NULL = SQL NULL). */
static PGresult *one_row(int n, const char *const *names, const Oid *types,
			 const char *const *values)
{
	PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
	PGresAttDesc *att = calloc((size_t)n, sizeof(*att));
	for (int i = 0; i < n; i++) {
		att[i].name = (char *)names[i];
		att[i].typid = types[i];
		att[i].typlen = -1;
		att[i].atttypmod = -1;
	}
	cr_assert(PQsetResultAttrs(res, n, att));
	free(att);
	for (int i = 0; i < n; i++)
		cr_assert(PQsetvalue(res, 0, i, (char *)values[i], values[i] ? (int)strlen(values[i]) : -1));
	return res;
}

Test(io, a_row_becomes_json_by_column_type)
{
	const char *names[] = {"b", "i", "big", "f", "nan", "num", "j", "jb", "ts", "t", "nul", "badj"};
	const Oid types[] = {16, 23, 20, 701, 701, 1700, 114, 3802, 1184, 25, 25, 114};
	const char *values[] = {"t", "-42", "9007199254740993", "2.5", "NaN", "12.25",
				"{\"a\": [1, 2]}", "[true]", "2026-01-01 00:00:00+00", "text", NULL,
				"{not json"};
	PGresult *res = one_row(12, names, types, values);
	json_t *o = bt_pg_row_json(res, 0);
	char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	cr_assert_str_eq(s, "{\"b\":true,\"badj\":\"{not json\",\"big\":9007199254740993,"
			    "\"f\":2.5,\"i\":-42,\"j\":{\"a\":[1,2]},\"jb\":[true],\"nan\":\"NaN\","
			    "\"nul\":null,\"num\":12.25,\"t\":\"text\","
			    "\"ts\":\"2026-01-01 00:00:00+00\"}",
			 "got %s", s);
	free(s);
	json_decref(o);
	cr_assert_eq(bt_pg_field(res, "big"), 2);
	cr_assert_eq(bt_pg_field(res, "BIG"), -1, "names are matched exactly, not folded");
	PQclear(res);
}
