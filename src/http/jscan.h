/*
 * A JSON checker that takes exactly the texts jansson's json_loadb takes,
 * without building a tree: it calls back once per value, and its memory is
 * the nesting depth plus the keys of the objects open at one time, so a
 * tensor of millions of numbers costs nothing.  Pure: no sockets, no libuv.
 */
#ifndef BT_HTTP_JSCAN_H
#define BT_HTTP_JSCAN_H

#include <stddef.h>

/* What jansson's flags change: integers are read as reals (no range). */
#define BT_JSCAN_INT_AS_REAL 1

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

#endif
