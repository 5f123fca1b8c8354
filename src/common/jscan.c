/*
 * The tree-less JSON checker (jscan.h).  It follows jansson's parser rule by
 * rule, so that a text baton used to load with json_loadb is taken or
 * refused exactly as before (tests/unit/test_v2json.c compares the two on
 * edge cases and mutated documents); it owns no document, only a stack of
 * open levels and, per open object, a table of its keys' hashes.
 */
#include "jscan.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "../common/common.h"

/* One key of an open object: its hash, and where its text starts. */
struct slot {
	uint64_t hash;
	size_t off; /* offset of the opening quote; SIZE_MAX when empty */
};

struct level {
	int object;
	struct slot *keys; /* open addressing; kept for the next object at this depth */
	size_t nkeys, cap;
};

struct scan {
	const char *p;
	size_t len, pos;
	int flags;
	struct level *lv; /* lv[0] is the document's own value */
	int depth, maxdepth;
	struct bt_buf key, other; /* decoded key, and one to compare it with */
	struct bt_buf val;	  /* a decoded string value (BT_JSCAN_VALUES) */
	uint64_t hash;		  /* of the last decoded key */
	char *err;
	size_t errlen;
};

static int fault(struct scan *s, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fault(struct scan *s, size_t at, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (s->err && s->errlen) {
		va_start(ap, fmt);
		n = vsnprintf(s->err, s->errlen, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n < s->errlen)
			snprintf(s->err + n, s->errlen - (size_t)n, " at position %zu", at);
	}
	return -1;
}

/*
 * A seeded hash: a client chooses the keys of its request, and keys made to
 * collide under a hash it can compute would make each new key compare with
 * all the others.
 */
static uint64_t seed(void)
{
	static uint64_t s;

	if (!s && getrandom(&s, sizeof(s), GRND_NONBLOCK) != sizeof(s))
		s = (uint64_t)(uintptr_t)&s ^ 0x9e3779b97f4a7c15ULL;
	return s | 1;
}

static uint64_t mix(uint64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	return h ^ (h >> 33);
}

static int is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void skip_ws(struct scan *s)
{
	while (s->pos < s->len && is_ws(s->p[s->pos]))
		s->pos++;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The four hex digits at p (checked by the caller). */
static unsigned hex4(const char *p)
{
	return (unsigned)(hexval(p[0]) << 12 | hexval(p[1]) << 8 | hexval(p[2]) << 4 |
			  hexval(p[3]));
}

/* jansson's UTF-8 rules: no overlong forms, no surrogates, nothing past U+10FFFF. */
static size_t utf8_len(const unsigned char *p, size_t avail)
{
	unsigned char u = p[0];
	size_t n, i;
	uint32_t v;

	if (u >= 0xc2 && u <= 0xdf)
		n = 2, v = u & 0x1f;
	else if (u >= 0xe0 && u <= 0xef)
		n = 3, v = u & 0x0f;
	else if (u >= 0xf0 && u <= 0xf4)
		n = 4, v = u & 0x07;
	else
		return 0;
	if (avail < n)
		return 0;
	for (i = 1; i < n; i++) {
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
		v = v << 6 | (p[i] & 0x3f);
	}
	if (v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff) || (n == 3 && v < 0x800) ||
	    (n == 4 && v < 0x10000))
		return 0;
	return n;
}

static void put_utf8(struct bt_buf *b, uint32_t v)
{
	unsigned char o[4];
	size_t n;

	if (v < 0x80) {
		o[0] = (unsigned char)v;
		n = 1;
	} else if (v < 0x800) {
		o[0] = (unsigned char)(0xc0 | v >> 6);
		o[1] = (unsigned char)(0x80 | (v & 0x3f));
		n = 2;
	} else if (v < 0x10000) {
		o[0] = (unsigned char)(0xe0 | v >> 12);
		o[1] = (unsigned char)(0x80 | (v >> 6 & 0x3f));
		o[2] = (unsigned char)(0x80 | (v & 0x3f));
		n = 3;
	} else {
		o[0] = (unsigned char)(0xf0 | v >> 18);
		o[1] = (unsigned char)(0x80 | (v >> 12 & 0x3f));
		o[2] = (unsigned char)(0x80 | (v >> 6 & 0x3f));
		o[3] = (unsigned char)(0x80 | (v & 0x3f));
		n = 4;
	}
	bt_buf_append(b, o, n);
}

/*
 * Checks the string whose opening quote is at s->pos and moves past it.
 * With out, decodes it there (NUL-terminated, its length in out->len) and
 * hashes it into s->hash.  A \u0000 is refused, as jansson refuses it in
 * keys and, without JSON_ALLOW_NUL, in values.
 */
static int string(struct scan *s, struct bt_buf *out)
{
	const unsigned char *p = (const unsigned char *)s->p;
	size_t at = s->pos++, n, run;
	uint32_t v, lo;

	if (out)
		out->len = 0;
	for (;;) {
		/* The plain bytes up to the next quote, escape or other byte. */
		run = s->pos;
		while (s->pos < s->len && p[s->pos] >= 0x20 && p[s->pos] < 0x80 &&
		       p[s->pos] != '"' && p[s->pos] != '\\')
			s->pos++;
		if (out)
			bt_buf_append(out, p + run, s->pos - run);
		if (s->pos >= s->len)
			return fault(s, at, "premature end of input in a string");
		if (p[s->pos] == '"')
			break;
		if (p[s->pos] < 0x20)
			return fault(s, s->pos, "control character 0x%x in a string", p[s->pos]);
		if (p[s->pos] >= 0x80) {
			n = utf8_len(p + s->pos, s->len - s->pos);
			if (!n)
				return fault(s, s->pos, "invalid UTF-8 byte 0x%x", p[s->pos]);
			if (out)
				bt_buf_append(out, p + s->pos, n);
			s->pos += n;
			continue;
		}
		/* A backslash. */
		if (s->pos + 1 >= s->len)
			return fault(s, at, "premature end of input in a string");
		switch (p[s->pos + 1]) {
		case '"':
		case '\\':
		case '/':
			v = p[s->pos + 1];
			break;
		case 'b':
			v = '\b';
			break;
		case 'f':
			v = '\f';
			break;
		case 'n':
			v = '\n';
			break;
		case 'r':
			v = '\r';
			break;
		case 't':
			v = '\t';
			break;
		case 'u':
			if (s->len - s->pos < 6 || hexval(s->p[s->pos + 2]) < 0 ||
			    hexval(s->p[s->pos + 3]) < 0 || hexval(s->p[s->pos + 4]) < 0 ||
			    hexval(s->p[s->pos + 5]) < 0)
				return fault(s, s->pos, "invalid escape");
			v = hex4(s->p + s->pos + 2);
			if (v >= 0xdc00 && v <= 0xdfff)
				return fault(s, s->pos, "invalid Unicode '\\u%04X'", v);
			if (v >= 0xd800 && v <= 0xdbff) {
				if (s->len - s->pos < 12 || s->p[s->pos + 6] != '\\' ||
				    s->p[s->pos + 7] != 'u' || hexval(s->p[s->pos + 8]) < 0 ||
				    hexval(s->p[s->pos + 9]) < 0 || hexval(s->p[s->pos + 10]) < 0 ||
				    hexval(s->p[s->pos + 11]) < 0)
					return fault(s, s->pos, "invalid Unicode '\\u%04X'", v);
				lo = hex4(s->p + s->pos + 8);
				if (lo < 0xdc00 || lo > 0xdfff)
					return fault(s, s->pos, "invalid Unicode '\\u%04X\\u%04X'",
						     v, lo);
				v = ((v - 0xd800) << 10) + (lo - 0xdc00) + 0x10000;
				s->pos += 6;
			}
			if (!v)
				return fault(s, s->pos, "\\u0000 is not allowed");
			if (out)
				put_utf8(out, v);
			s->pos += 6;
			continue;
		default:
			return fault(s, s->pos, "invalid escape");
		}
		if (out)
			bt_buf_append(out, &(char){(char)v}, 1);
		s->pos += 2;
	}
	s->pos++;
	if (out) {
		uint64_t h = seed();

		for (size_t i = 0; i < out->len; i++)
			h = (h ^ (unsigned char)out->data[i]) * 0x100000001b3ULL;
		s->hash = mix(h);
		bt_buf_append(out, "", 1);
		out->len--;
	}
	return 0;
}

/*
 * jansson drops one NUL byte right after a number or a word: it puts the
 * byte back to read it again, and a NUL in its one-character buffer reads
 * as "nothing buffered".  Keeping that quirk keeps every verdict the same.
 */
static void after_token(struct scan *s)
{
	if (s->pos < s->len && s->p[s->pos] == '\0')
		s->pos++;
}

static int is_digit(const struct scan *s, size_t i)
{
	return i < s->len && s->p[i] >= '0' && s->p[i] <= '9';
}

/* A number at s->pos: its type, and its value when it is a long long. */
static int number(struct scan *s, struct bt_jvalue *v)
{
	size_t at = s->pos, digits;
	int neg = 0, real = 0, exp = 0;
	uint64_t mag = 0, limit;

	if (s->p[s->pos] == '-') {
		neg = 1;
		s->pos++;
	}
	if (!is_digit(s, s->pos))
		return fault(s, at, "invalid token");
	if (s->p[s->pos] == '0' && is_digit(s, s->pos + 1))
		return fault(s, at, "invalid token");
	digits = s->pos;
	limit = neg ? (uint64_t)LLONG_MAX + 1 : (uint64_t)LLONG_MAX;
	while (is_digit(s, s->pos)) {
		unsigned d = (unsigned)(s->p[s->pos++] - '0');

		if (mag > (limit - d) / 10)
			mag = limit + 1; /* over; stays over */
		else
			mag = mag * 10 + d;
	}
	digits = s->pos - digits;
	if (s->pos < s->len && s->p[s->pos] == '.') {
		s->pos++;
		if (!is_digit(s, s->pos))
			return fault(s, at, "invalid token");
		while (is_digit(s, s->pos))
			s->pos++;
		real = 1;
	}
	if (s->pos < s->len && (s->p[s->pos] == 'e' || s->p[s->pos] == 'E')) {
		s->pos++;
		if (s->pos < s->len && (s->p[s->pos] == '+' || s->p[s->pos] == '-'))
			s->pos++;
		if (!is_digit(s, s->pos))
			return fault(s, at, "invalid token");
		while (is_digit(s, s->pos))
			s->pos++;
		real = exp = 1;
	}
	v->start = at;
	v->stop = s->pos;
	if (!real && !(s->flags & BT_JSCAN_INT_AS_REAL)) {
		if (mag > limit)
			return fault(s, at, "too big %sinteger", neg ? "negative " : "");
		v->type = BT_J_INTEGER;
		v->integer = neg ? (long long)(0 - mag) : (long long)mag;
	} else {
		v->type = BT_J_REAL;
		/* Only an exponent or 309 digits can go past DBL_MAX: strtod then. */
		if (exp || digits > 300 || (s->flags & BT_JSCAN_VALUES)) {
			size_t n = s->pos - at;
			char small[64], *t = n < sizeof(small) ? small : bt_malloc(n + 1);
			double d;

			memcpy(t, s->p + at, n);
			t[n] = '\0';
			errno = 0;
			d = strtod(t, NULL);
			if (t != small)
				free(t);
			if (errno == ERANGE && isinf(d))
				return fault(s, at, "real number overflow");
			v->real = d;
		}
	}
	after_token(s);
	return 0;
}

static int word(struct scan *s, struct bt_jvalue *v)
{
	size_t at = s->pos, n;

	while (s->pos < s->len && ((s->p[s->pos] >= 'a' && s->p[s->pos] <= 'z') ||
				   (s->p[s->pos] >= 'A' && s->p[s->pos] <= 'Z')))
		s->pos++;
	n = s->pos - at;
	if (n == 4 && !memcmp(s->p + at, "true", 4))
		v->type = BT_J_TRUE;
	else if (n == 5 && !memcmp(s->p + at, "false", 5))
		v->type = BT_J_FALSE;
	else if (n == 4 && !memcmp(s->p + at, "null", 4))
		v->type = BT_J_NULL;
	else
		return fault(s, at, "invalid token");
	v->start = at;
	v->stop = s->pos;
	after_token(s);
	return 0;
}

/* Empties a level's key table for the next object at its depth. */
static void level_reset(struct level *l)
{
	if (l->cap > 64) {
		/* A big table would cost its size to clear at every small object. */
		free(l->keys);
		l->keys = NULL;
		l->cap = 0;
	}
	for (size_t i = 0; i < l->cap; i++)
		l->keys[i].off = SIZE_MAX;
	l->nkeys = 0;
}

static void table_put(struct slot *t, size_t cap, uint64_t hash, size_t off)
{
	size_t i = hash & (cap - 1);

	while (t[i].off != SIZE_MAX)
		i = (i + 1) & (cap - 1);
	t[i].hash = hash;
	t[i].off = off;
}

/*
 * Adds the key just decoded into s->key (its quote at off) to the open
 * object's table; -1 when the object has it already.
 */
static int key_add(struct scan *s, struct level *l, size_t off)
{
	uint64_t hash = s->hash;
	size_t i, save;

	if (2 * (l->nkeys + 1) > l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 8;
		struct slot *t = bt_malloc(cap * sizeof(*t));

		for (i = 0; i < cap; i++)
			t[i].off = SIZE_MAX;
		for (i = 0; i < l->cap; i++)
			if (l->keys[i].off != SIZE_MAX)
				table_put(t, cap, l->keys[i].hash, l->keys[i].off);
		free(l->keys);
		l->keys = t;
		l->cap = cap;
	}
	for (i = hash & (l->cap - 1); l->keys[i].off != SIZE_MAX; i = (i + 1) & (l->cap - 1)) {
		if (l->keys[i].hash != hash)
			continue;
		/* Decode the older key again; it was valid then, it is now. */
		save = s->pos;
		s->pos = l->keys[i].off;
		string(s, &s->other);
		s->pos = save;
		if (s->other.len == s->key.len && !memcmp(s->other.data, s->key.data, s->key.len))
			return fault(s, off, "duplicate object key '%.64s'", s->key.data);
	}
	table_put(l->keys, l->cap, hash, off);
	l->nkeys++;
	return 0;
}

/* Opens an object or array one level deeper than s->depth. */
static void push(struct scan *s, int object)
{
	if (s->depth == s->maxdepth) {
		int n = s->maxdepth ? 2 * s->maxdepth : 16;

		s->lv = bt_realloc(s->lv, (size_t)n * sizeof(*s->lv));
		memset(s->lv + s->maxdepth, 0, (size_t)(n - s->maxdepth) * sizeof(*s->lv));
		s->maxdepth = n;
	}
	s->lv[s->depth].object = object;
	level_reset(&s->lv[s->depth]);
	s->depth++;
}

enum want { VALUE, FIRST_MEMBER, MEMBER, FIRST_ELEMENT, NEXT };

int bt_jscan_check(const char *text, size_t len, int flags, bt_jscan_cb cb, void *ctx, char *err,
		   size_t errlen)
{
	struct scan s = {.p = text, .len = len, .flags = flags, .err = err, .errlen = errlen};
	enum want want = VALUE;
	struct bt_jvalue v;
	int r = 0, key = 0;
	char c;

	skip_ws(&s);
	if (s.pos >= len || (text[s.pos] != '{' && text[s.pos] != '['))
		return fault(&s, s.pos, "'[' or '{' expected");
	for (;;) {
		switch (want) {
		case VALUE:
			skip_ws(&s);
			memset(&v, 0, sizeof(v));
			v.depth = s.depth + 1;
			if (key) {
				v.key = s.key.data;
				v.keylen = s.key.len;
			}
			key = 0;
			if (v.depth > BT_JSCAN_MAX_DEPTH) {
				r = fault(&s, s.pos, "maximum parsing depth reached");
				goto out;
			}
			if (s.pos >= len) {
				r = fault(&s, s.pos, "unexpected end of input");
				goto out;
			}
			c = text[s.pos];
			v.start = s.pos;
			if (c == '{' || c == '[') {
				v.type = c == '{' ? BT_J_OBJECT : BT_J_ARRAY;
				v.stop = ++s.pos;
				push(&s, c == '{');
				want = c == '{' ? FIRST_MEMBER : FIRST_ELEMENT;
			} else {
				if (c == '"') {
					v.type = BT_J_STRING;
					r = string(&s, flags & BT_JSCAN_VALUES ? &s.val : NULL);
					v.stop = s.pos;
					v.str = s.val.data ? s.val.data : "";
					v.strlen = s.val.len;
				} else if (c == '-' || (c >= '0' && c <= '9')) {
					r = number(&s, &v);
				} else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
					r = word(&s, &v);
				} else {
					r = fault(&s, s.pos, "unexpected token");
				}
				if (r)
					goto out;
				want = NEXT;
			}
			if (cb && (r = cb(ctx, &v)))
				goto out;
			continue;
		case FIRST_MEMBER:
		case FIRST_ELEMENT:
			skip_ws(&s);
			if (s.pos < len && text[s.pos] == (want == FIRST_MEMBER ? '}' : ']'))
				break; /* empty: closed below */
			want = want == FIRST_MEMBER ? MEMBER : VALUE;
			continue;
		case MEMBER:
			skip_ws(&s);
			if (s.pos >= len || text[s.pos] != '"') {
				r = fault(&s, s.pos, "string or '}' expected");
				goto out;
			}
			{
				size_t at = s.pos;

				if ((r = string(&s, &s.key)) ||
				    (r = key_add(&s, &s.lv[s.depth - 1], at)))
					goto out;
			}
			skip_ws(&s);
			if (s.pos >= len || text[s.pos] != ':') {
				r = fault(&s, s.pos, "':' expected");
				goto out;
			}
			s.pos++;
			key = 1;
			want = VALUE;
			continue;
		case NEXT:
			skip_ws(&s);
			if (!s.depth) {
				if (s.pos < len) {
					r = fault(&s, s.pos, "end of file expected");
					goto out;
				}
				goto out;
			}
			c = s.pos < len ? text[s.pos] : 0;
			if (c == ',' && s.pos < len) {
				s.pos++;
				want = s.lv[s.depth - 1].object ? MEMBER : VALUE;
				continue;
			}
			if (s.pos >= len || c != (s.lv[s.depth - 1].object ? '}' : ']')) {
				r = fault(&s, s.pos, "',' or '%c' expected",
					  s.lv[s.depth - 1].object ? '}' : ']');
				goto out;
			}
			break;
		}
		/* The closing bracket at s.pos of the innermost level. */
		memset(&v, 0, sizeof(v));
		v.type = s.lv[s.depth - 1].object ? BT_J_OBJECT : BT_J_ARRAY;
		v.end = 1;
		v.depth = s.depth;
		v.start = s.pos;
		v.stop = ++s.pos;
		s.depth--;
		want = NEXT;
		if (cb && (r = cb(ctx, &v)))
			goto out;
	}
out:
	for (int i = 0; i < s.maxdepth; i++)
		free(s.lv[i].keys);
	free(s.lv);
	bt_buf_release(&s.key);
	bt_buf_release(&s.other);
	bt_buf_release(&s.val);
	return r;
}

static int find_data(void *ctx, const struct bt_jvalue *v)
{
	struct bt_jspans *sp = ctx;

	if (!v->end && sp->start == SIZE_MAX)
		sp->values++;
	if (v->depth == 2) {
		sp->in_list = !v->end && v->type == BT_J_ARRAY && v->keylen == strlen(sp->list) &&
			      !memcmp(v->key, sp->list, v->keylen);
		sp->start = SIZE_MAX;
		return 0;
	}
	if (!sp->in_list)
		return 0;
	if (v->depth == 3 && !v->end)
		sp->item++;
	if (v->depth != 4 || v->type != BT_J_ARRAY)
		return 0;
	if (!v->end && v->keylen == 4 && !memcmp(v->key, "data", 4)) {
		sp->start = v->start;
	} else if (v->end && sp->start != SIZE_MAX) {
		if (sp->n < sp->item) {
			sp->v = bt_realloc(sp->v, sp->item * sizeof(*sp->v));
			memset(sp->v + sp->n, 0, (sp->item - sp->n) * sizeof(*sp->v));
			sp->n = sp->item;
		}
		sp->v[sp->item - 1] = (struct bt_jspan){sp->start, v->stop};
		sp->start = SIZE_MAX;
	}
	return 0;
}

int bt_jscan_find_data(const char *text, size_t len, int flags, const char *list,
		       struct bt_jspans *sp, char *err, size_t errlen)
{
	sp->list = list;
	sp->start = SIZE_MAX;
	return bt_jscan_check(text, len, flags, find_data, sp, err, errlen);
}

void bt_jscan_spans_release(struct bt_jspans *sp)
{
	free(sp->v);
	sp->v = NULL;
	sp->n = 0;
}

json_t *bt_jscan_load_without_data(const char *text, size_t len, const struct bt_jspans *sp,
				   size_t jflags, json_error_t *jerr)
{
	struct bt_buf b = BT_BUF_INIT;
	size_t at = 0;
	json_t *root;

	for (size_t i = 0; i < sp->n; i++) {
		if (!sp->v[i].stop)
			continue;
		bt_buf_append(&b, text + at, sp->v[i].start - at);
		bt_buf_puts(&b, "[]");
		at = sp->v[i].stop;
	}
	bt_buf_append(&b, text + at, len - at);
	root = json_loadb(b.data ? b.data : "", b.len, jflags, jerr);
	bt_buf_release(&b);
	return root;
}

char *bt_jscan_dump_with_data(json_t *root, const char *list, const char *text,
			      const struct bt_jspans *sp, size_t dflags, size_t *outlen)
{
	/*
	 * A string holding one NUL marks each array: jansson dumps it as
	 * "\u0000", a text no loaded string can dump to (jansson refuses
	 * \u0000 on load), so each marker found is one of ours, in order.
	 */
	static const char mark[] = "\"\\u0000\"";
	json_t *items = json_object_get(root, list);
	struct bt_buf b = BT_BUF_INIT;
	char *d, *at, *m;
	size_t i, next = 0, n;

	for (i = 0; i < sp->n; i++) {
		json_t *o = json_array_get(items, i);

		if (sp->v[i].stop && json_is_object(o))
			json_object_set_new(o, "data", json_stringn("", 1));
	}
	d = json_dumps(root, dflags);
	if (!d)
		return NULL;
	n = strlen(d);
	at = d;
	while ((m = memmem(at, n - (size_t)(at - d), mark, sizeof(mark) - 1))) {
		while (next < sp->n && !sp->v[next].stop)
			next++;
		BT_ASSERT(next < sp->n);
		bt_buf_append(&b, at, (size_t)(m - at));
		bt_buf_append(&b, text + sp->v[next].start, sp->v[next].stop - sp->v[next].start);
		next++;
		at = m + sizeof(mark) - 1;
	}
	bt_buf_append(&b, at, n - (size_t)(at - d));
	free(d);
	bt_buf_append(&b, "", 1);
	b.len--;
	return bt_buf_detach(&b, outlen);
}
