/*
 * A JSON checker that takes exactly the texts jansson's json_loadb takes,
 * without building a tree: it calls back once per value, and its memory is
 * the nesting depth plus the keys of the objects open at one time, so a
 * tensor of millions of numbers costs nothing.  Pure: no sockets, no libuv.
 */
#ifndef BT_COMMON_JSCAN_H
#define BT_COMMON_JSCAN_H

#include <jansson.h>
#include <stddef.h>

/* What jansson's flags change: integers are read as reals (no range). */
#define BT_JSCAN_INT_AS_REAL 1
/* Give each value: reals in bt_jvalue.real, strings decoded in .str. */
#define BT_JSCAN_VALUES 2

/* jansson's JSON_PARSER_MAX_DEPTH: values nested deeper are refused. */
#define BT_JSCAN_MAX_DEPTH 2048

enum bt_jtype {
	BT_J_OBJECT,
	BT_J_ARRAY,
	BT_J_STRING,
	BT_J_INTEGER,
	BT_J_REAL,
	BT_J_TRUE,
	BT_J_FALSE,
	BT_J_NULL,
};

struct bt_jvalue {
	enum bt_jtype type;
	int end;	   /* 1: the closing bracket of an object or array */
	int depth;	   /* 1 for the document itself, as jansson counts */
	size_t start;	   /* offset of its first byte (at an end: of the bracket) */
	size_t stop;	   /* offset past its last byte (at an opening: the bracket's) */
	const char *key;   /* the member's name, decoded and NUL-terminated, or NULL */
	size_t keylen;	   /* (outside an object, and at an end) */
	long long integer; /* BT_J_INTEGER without BT_JSCAN_INT_AS_REAL */
	double real;	   /* BT_J_REAL with BT_JSCAN_VALUES */
	const char *str;   /* BT_J_STRING with BT_JSCAN_VALUES: decoded, */
	size_t strlen;	   /* NUL-terminated */
};

/*
 * Called at each value in document order: a scalar once, an object or an
 * array at its opening and (end = 1) its closing.  *v and its key are valid
 * during the call only.  Nonzero stops the scan, which returns it.
 */
typedef int (*bt_jscan_cb)(void *ctx, const struct bt_jvalue *v);

/*
 * Checks that text[0..len) is one JSON object or array, by jansson's rules
 * with JSON_REJECT_DUPLICATES (UTF-8, no \u0000, no duplicate keys, integers
 * within long long unless BT_JSCAN_INT_AS_REAL, numbers within a double,
 * BT_JSCAN_MAX_DEPTH levels).  Returns 0; a callback's nonzero value; or -1
 * with "WHAT at position N" in err when the text is not JSON (the callback
 * may have run on the values before the fault).
 */
int bt_jscan_check(const char *text, size_t len, int flags, bt_jscan_cb cb, void *ctx, char *err,
		   size_t errlen);

/* Where the text of one "data" array is; stop 0 when there is none. */
struct bt_jspan {
	size_t start, stop;
};

struct bt_jspans {
	struct bt_jspan *v; /* by index in the list */
	size_t n;
	size_t values; /* JSON values outside the data arrays (each array counts 1) */
	/* The search's own state. */
	const char *list;
	int in_list;
	size_t item, start;
};

/*
 * Checks text as bt_jscan_check does (flags the same) and finds the "data"
 * arrays of the objects in the document's top-level array named list
 * ("inputs" of a request, "outputs" of an answer): sp->v[i] is where the
 * i-th object's is.  The caller zeroes *sp first and releases it after,
 * also after an error.
 */
int bt_jscan_find_data(const char *text, size_t len, int flags, const char *list,
		       struct bt_jspans *sp, char *err, size_t errlen);
void bt_jscan_spans_release(struct bt_jspans *sp);

/*
 * Loads text with json_loadb (jflags) with each found "data" array read as
 * [], so that the tree holds everything but the tensors.  After
 * bt_jscan_find_data took the text this fails only if the scanner took
 * something jansson would not; NULL then, with jerr filled.
 */
json_t *bt_jscan_load_without_data(const char *text, size_t len, const struct bt_jspans *sp,
				   size_t jflags, json_error_t *jerr);

/*
 * Dumps root (a tree from bt_jscan_load_without_data of text, since
 * changed) with jansson's dflags, each found "data" array back as its
 * original text: the objects of root's list keep their order.  Returns a
 * malloc'd text of *outlen bytes (NUL-terminated), or NULL when jansson
 * cannot dump root.
 */
char *bt_jscan_dump_with_data(json_t *root, const char *list, const char *text,
			      const struct bt_jspans *sp, size_t dflags, size_t *outlen);

#endif
