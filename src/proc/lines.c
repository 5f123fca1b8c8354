/*
 * Worker output into the log, line by line.  A worker that prints without
 * newlines or megabytes at once costs a bounded buffer, never a block.
 */
#include <string.h>

#include "proc.h"

void bt_lines_init(struct bt_lines *l, const char *stage, int replica, int pid,
		   const char *stream)
{
	memset(&l->partial, 0, sizeof(l->partial));
	l->stage = stage;
	l->replica = replica;
	l->pid = pid;
	l->stream = stream;
	l->last = NULL;
}

static void emit(struct bt_lines *l, const char *s, size_t n)
{
	char line[BT_LINES_MAX + 1];
	if (n && s[n - 1] == '\r')
		n--;
	n = BT_MIN(n, (size_t)BT_LINES_MAX);
	memcpy(line, s, n);
	line[n] = '\0';
	/* A worker writes to stderr when something is wrong: say it at that level. */
	int level = strcmp(l->stream, "stderr") ? BT_LOG_INFO : BT_LOG_WARN;
	bt_log(level, line, "stage=%s replica=%d pid=%d stream=%s", l->stage, l->replica,
	       l->pid, l->stream);
	if (l->last && n) {
		size_t keep = BT_MIN(n, (size_t)BT_LINES_LAST - 1);
		memcpy(l->last, line, keep);
		l->last[keep] = '\0';
		bt_utf8_clean(l->last); /* the cut may split a character */
	}
}

void bt_lines_feed(struct bt_lines *l, const char *p, size_t n)
{
	struct bt_buf *b = &l->partial;
	while (n > 0) {
		const char *nl = memchr(p, '\n', n);
		size_t take = nl ? (size_t)(nl - p) : n;
		if (b->len + take > BT_LINES_MAX)
			take = BT_LINES_MAX - b->len;
		bt_buf_append(b, p, take);
		p += take;
		n -= take;
		if (nl && p == nl) {
			p++;
			n--;
		} else if (b->len < BT_LINES_MAX) {
			break; /* an unfinished line: wait for the rest */
		}
		emit(l, b->data, b->len);
		b->len = 0;
	}
}

void bt_lines_flush(struct bt_lines *l)
{
	if (l->partial.len)
		emit(l, l->partial.data, l->partial.len);
	l->partial.len = 0;
}

void bt_lines_release(struct bt_lines *l)
{
	bt_buf_release(&l->partial);
}
