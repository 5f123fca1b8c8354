/*
 * Implementation of the shared helpers declared in common.h: error text,
 * outcome codes, allocation, the byte buffer, clocks and the logger.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum bt_log_level bt_log_threshold = BT_LOG_INFO;
int bt_log_fd = 2;
int bt_log_write_error;

void bt_assert_fail(const char *cond, const char *file, int line)
{
	fprintf(stderr, "level=error msg=\"assertion failed\" cond=%s at=%s:%d\n", BT_LOGQ(cond),
		file, line);
	abort();
}

const char *bt_strerror(int err)
{
	switch (err) {
	case BT_EPROTO:
		return "protocol violation";
	case BT_ETOOBIG:
		return "size limit exceeded";
	case BT_EFULL:
		return "queue full";
	case BT_ECONFIG:
		return "invalid configuration";
	case BT_ESTATE:
		return "wrong state";
	default:
		return strerror(-err);
	}
}

static const struct {
	const char *name;
	int http;
} codes[BT_CODE_COUNT] = {
	[BT_OK] = {"ok", 200},
	[BT_BAD_REQUEST] = {"bad_request", 400},
	[BT_NOT_FOUND] = {"bad_request", 404},
	[BT_REJECTED] = {"rejected", 422},
	[BT_WORKER_ERROR] = {"worker_error", 500},
	[BT_WORKER_CRASHED] = {"worker_crashed", 502},
	[BT_TIMEOUT] = {"timeout", 504},
	[BT_OVERLOADED] = {"overloaded", 503},
	[BT_STAGE_FAILED] = {"stage_failed", 503},
	[BT_SHUTTING_DOWN] = {"shutting_down", 503},
	/* Nobody reads it (the client is gone): nginx's "client closed request". */
	[BT_CANCELLED] = {"cancelled", 499},
};

const char *bt_code_name(enum bt_code code)
{
	BT_ASSERT(code < BT_CODE_COUNT);
	return codes[code].name;
}

int bt_code_http_status(enum bt_code code)
{
	BT_ASSERT(code < BT_CODE_COUNT);
	return codes[code].http;
}

static void oom(void)
{
	static const char msg[] = "level=error msg=\"out of memory\"\n";
	ssize_t r = write(2, msg, sizeof(msg) - 1);
	(void)r;
	abort();
}

void *bt_malloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		oom();
	return p;
}

void *bt_calloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p)
		oom();
	return p;
}

void *bt_realloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p)
		oom();
	return p;
}

char *bt_strdup(const char *s)
{
	return bt_strndup(s, strlen(s));
}

char *bt_strndup(const char *s, size_t n)
{
	char *p = bt_malloc(n + 1);
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

char *bt_asprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	BT_ASSERT(n >= 0);
	char *p = bt_malloc((size_t)n + 1);
	va_start(ap, fmt);
	vsnprintf(p, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return p;
}

void bt_buf_reserve(struct bt_buf *b, size_t extra)
{
	if (b->len + extra + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + extra + 1)
		cap *= 2;
	b->data = bt_realloc(b->data, cap);
	b->cap = cap;
	b->data[b->len] = '\0'; /* a fresh buffer is an empty string */
}

void bt_buf_append(struct bt_buf *b, const void *data, size_t n)
{
	bt_buf_reserve(b, n);
	if (n)
		memcpy(b->data + b->len, data, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void bt_buf_puts(struct bt_buf *b, const char *s)
{
	bt_buf_append(b, s, strlen(s));
}

int bt_read_file_at(int dirfd, const char *path, int flags, size_t max, char **data,
		    size_t *len, struct stat *st)
{
	struct stat own;
	if (!st)
		st = &own;
	int fd = openat(dirfd, path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | flags);
	if (fd < 0)
		return -errno;
	int e = fstat(fd, st) ? -errno
		: !S_ISREG(st->st_mode) ? -EINVAL
		: (unsigned long long)st->st_size > max ? BT_ETOOBIG
							 : 0;
	struct bt_buf b = BT_BUF_INIT;
	char chunk[65536];
	ssize_t n = 0;
	while (!e && (n = read(fd, chunk, sizeof(chunk))) > 0) {
		if (b.len + (size_t)n > max)
			e = BT_ETOOBIG;
		else
			bt_buf_append(&b, chunk, (size_t)n);
	}
	if (!e && n < 0)
		e = -errno;
	close(fd);
	if (e) {
		bt_buf_release(&b);
		return e;
	}
	bt_buf_reserve(&b, 0);
	*data = bt_buf_detach(&b, len);
	return 0;
}

void bt_buf_printf(struct bt_buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	BT_ASSERT(n >= 0);
	bt_buf_reserve(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void bt_buf_consume(struct bt_buf *b, size_t n)
{
	BT_ASSERT(n <= b->len);
	memmove(b->data, b->data + n, b->len - n);
	b->len -= n;
	if (b->data)
		b->data[b->len] = '\0';
}

char *bt_buf_detach(struct bt_buf *b, size_t *len)
{
	char *p = b->data;
	if (len)
		*len = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return p;
}

void bt_buf_release(struct bt_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

uint64_t bt_now_ms(void)
{
	return bt_now_us() / 1000;
}

uint64_t bt_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static const char *level_names[] = {"debug", "info", "warn", "error"};

int bt_log_level_parse(const char *s, enum bt_log_level *out)
{
	for (size_t i = 0; i < BT_ARRAY_SIZE(level_names); i++) {
		if (!strcmp(s, level_names[i])) {
			*out = (enum bt_log_level)i;
			return 0;
		}
	}
	return BT_ECONFIG;
}

static const char *logfmt_value(char *out, size_t size, const char *s, size_t len, int quote)
{
	quote |= len == 0;
	for (size_t i = 0; i < len && !quote; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f)
			quote = 1;
	}
	size_t o = 0;
	if (size < 8) {
		if (size)
			out[0] = '\0';
		return out;
	}
	if (!quote) {
		size_t n = BT_MIN(len, size - 1);
		memcpy(out, s, n);
		out[n] = '\0';
		return out;
	}
	out[o++] = '"';
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[8];
		size_t n;
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			n = 2;
		} else if (c == '\n') {
			memcpy(esc, "\\n", 2);
			n = 2;
		} else if (c == '\t') {
			memcpy(esc, "\\t", 2);
			n = 2;
		} else if (c < ' ' || c == 0x7f) {
			n = (size_t)snprintf(esc, sizeof(esc), "\\x%02x", c);
		} else {
			esc[0] = (char)c;
			n = 1;
		}
		if (o + n + 2 > size)
			break;
		memcpy(out + o, esc, n);
		o += n;
	}
	out[o++] = '"';
	out[o] = '\0';
	return out;
}

const char *bt_logfmt_quote(char *out, size_t size, const char *s, size_t len)
{
	return logfmt_value(out, size, s, len, 0);
}

const char *bt_logfmt_string(char *out, size_t size, const char *s)
{
	return logfmt_value(out, size, s, strlen(s), 1);
}

void bt_log(enum bt_log_level lvl, const char *msg, const char *fmt, ...)
{
	if (lvl < bt_log_threshold)
		return;
	struct timespec ts;
	struct tm tm;
	char line[8192];
	char qmsg[4096];
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof(line),
			 "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=%s",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
			 tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, level_names[lvl],
			 bt_logfmt_quote(qmsg, sizeof(qmsg), msg, strlen(msg)));
	if (n < 0)
		return;
	size_t len = BT_MIN((size_t)n, sizeof(line) - 2);
	if (fmt && fmt[0]) {
		line[len++] = ' ';
		va_list ap;
		va_start(ap, fmt);
		int m = vsnprintf(line + len, sizeof(line) - len - 1, fmt, ap);
		va_end(ap);
		if (m > 0)
			len = BT_MIN(len + (size_t)m, sizeof(line) - 2);
	}
	line[len++] = '\n';
	/* One write per line so that concurrent writers never interleave. */
	ssize_t w = write(bt_log_fd, line, len);
	if ((w < 0 || (size_t)w < len) && !bt_log_write_error)
		bt_log_write_error = w < 0 ? -errno : -ENOSPC;
}

int bt_ext_is_safe(const char *ext)
{
	size_t n = strlen(ext);
	if (n < 2 || n > 17 || ext[0] != '.')
		return 0;
	for (size_t i = 1; i < n; i++) {
		char c = ext[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

int bt_secure_equal(const char *a, size_t alen, const char *b, size_t blen)
{
	volatile unsigned char diff = alen != blen;
	for (size_t i = 0; i < blen; i++)
		diff |= (unsigned char)(i < alen ? a[i] : 0) ^ (unsigned char)b[i];
	return diff == 0;
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 when it is not one. */
static int utf8_seq(const unsigned char *s)
{
	unsigned c = s[0];
	int n;
	unsigned cp;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2, cp = c & 0x1f;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3, cp = c & 0x0f;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4, cp = c & 0x07;
	else
		return 0;
	for (int i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	/* No overlong forms, no surrogates, nothing past U+10FFFF. */
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

char *bt_utf8_clean(char *s)
{
	unsigned char *p = (unsigned char *)s;
	while (*p) {
		int n = utf8_seq(p);
		if (n == 0) {
			*p++ = '?';
			continue;
		}
		p += n;
	}
	return s;
}

char *bt_read_buf(void)
{
	static char buf[BT_READ_BUF_SIZE];
	return buf;
}
