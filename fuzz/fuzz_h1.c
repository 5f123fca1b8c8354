/*
 * libFuzzer target of the HTTP/1.1 request parser (src/http/h1.c): the
 * bytes any client may send.  Besides memory safety it checks what the
 * connection layer relies on: a stream of requests parses the same whether
 * it arrives whole or cut in two at a point the input chooses (its first
 * two bytes), every body byte handed out lies within the input, and the
 * body decoder always makes progress.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/h1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void broken(const char *what)
{
	fprintf(stderr, "fuzz_h1: property broken: %s\n", what);
	abort();
}

/* What a stream came to: each request's line, body length and checksum, then how it ended. */
struct outcome {
	char text[8192];
	size_t len;
};

static void note(struct outcome *o, const char *s, size_t n)
{
	n = n < sizeof(o->text) - o->len ? n : sizeof(o->text) - o->len;
	memcpy(o->text + o->len, s, n);
	o->len += n;
}

struct feeder {
	char *in; /* exactly len bytes: ASan sees a read past them */
	size_t len, scanned;
	int in_body, stopped;
	struct bt_h1_head head;
	struct bt_h1_body body;
	uint64_t sum, blen;
	struct outcome *o;
};

static void drain(struct feeder *f)
{
	size_t off = 0;
	char line[256];
	while (!f->stopped) {
		const char *p = f->in + off;
		size_t n = f->len - off;
		const char *why = NULL;
		if (!f->in_body) {
			size_t skip = f->scanned ? 0 : bt_h1_skip_empty(p, n);
			if (skip) {
				off += skip;
				continue;
			}
			size_t end = bt_h1_head_end(p, n, &f->scanned);
			if (!end) {
				if (n > BT_H1_HEAD_MAX) {
					note(f->o, "431;", 4);
					f->stopped = 1;
				}
				break;
			}
			if (end > n)
				broken("a head ends past the input");
			f->scanned = 0;
			int st = bt_h1_parse_head(&f->head, p, end, &why);
			if (st) {
				int k = snprintf(line, sizeof(line), "refused %d %s;", st,
						 st > 0 && why ? why : "");
				note(f->o, line, (size_t)k);
				f->stopped = 1;
				break;
			}
			int k = snprintf(line, sizeof(line), "%.32s %.64s %d %d %d %lld|",
					 f->head.method, f->head.path, f->head.keep_alive,
					 f->head.chunked, f->head.nargs, (long long)f->head.length);
			note(f->o, line, (size_t)k);
			off += end;
			bt_h1_body_init(&f->body, &f->head);
			f->in_body = 1;
			f->sum = f->blen = 0;
			continue;
		}
		if (f->body.done) {
			int k = snprintf(line, sizeof(line), "%llu %llx;", (unsigned long long)f->blen,
					 (unsigned long long)f->sum);
			note(f->o, line, (size_t)k);
			f->in_body = 0;
			continue;
		}
		if (!n)
			break;
		const char *d;
		size_t dl;
		long k = bt_h1_body_step(&f->body, p, n, &d, &dl, &why);
		if (k < 0) {
			note(f->o, "bad body;", 9);
			f->stopped = 1;
			break;
		}
		if (k == 0 || (size_t)k > n)
			broken("the body decoder took nothing, or more than it had");
		if (dl && (d < p || d + dl > p + k))
			broken("body data outside the bytes taken");
		for (size_t i = 0; i < dl; i++)
			f->sum = f->sum * 31 + (unsigned char)d[i];
		f->blen += dl;
		off += (size_t)k;
	}
	size_t rn = f->len - off;
	char *rest = rn ? malloc(rn) : NULL;
	if (rn)
		memcpy(rest, f->in + off, rn);
	free(f->in);
	f->in = rest;
	f->len = rn;
}

static void feed(const uint8_t *s, size_t n, size_t cut, struct outcome *o)
{
	struct feeder f;
	memset(&f, 0, sizeof(f));
	f.o = o;
	size_t parts[2][2] = {{0, cut}, {cut, n}};
	for (int i = 0; i < 2 && !f.stopped; i++) {
		size_t a = parts[i][0], b = parts[i][1];
		if (b <= a)
			continue;
		char *m = malloc(f.len + b - a);
		if (f.len)
			memcpy(m, f.in, f.len);
		memcpy(m + f.len, s + a, b - a);
		free(f.in);
		f.in = m;
		f.len += b - a;
		drain(&f);
	}
	free(f.in);
	bt_h1_head_release(&f.head);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	size_t n = size - 2, cut = ((size_t)data[0] << 8 | data[1]) % (n + 1);
	static struct outcome whole, split;
	whole.len = split.len = 0;
	feed(data + 2, n, n, &whole);
	feed(data + 2, n, cut, &split);
	if (whole.len != split.len || memcmp(whole.text, split.text, whole.len)) {
		fprintf(stderr, "whole: %.*s\nsplit at %zu: %.*s\n", (int)whole.len, whole.text,
			cut, (int)split.len, split.text);
		broken("a stream cut in two parses differently");
	}
	return 0;
}
