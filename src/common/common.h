/*
 * Small things every module uses: error codes and their text, request
 * outcome codes, a growable byte buffer, allocation that aborts on
 * out-of-memory, monotonic time and the logfmt logger.
 * Nothing here touches libuv, so pure modules can link it in unit tests.
 */
#ifndef BT_COMMON_H
#define BT_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#define BT_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define BT_MIN(a, b) ((a) < (b) ? (a) : (b))
#define BT_MAX(a, b) ((a) > (b) ? (a) : (b))

/* A broken invariant is a bug in baton: log where and abort. */
#define BT_ASSERT(cond)                                                        \
	do {                                                                   \
		if (!(cond))                                                   \
			bt_assert_fail(#cond, __FILE__, __LINE__);             \
	} while (0)
void bt_assert_fail(const char *cond, const char *file, int line)
	__attribute__((noreturn));

/*
 * Errors are negative ints: -errno, or one of these, which sit far below
 * any errno value.  bt_strerror() maps both to text.
 */
enum {
	BT_EPROTO = -10001, /* a peer broke the worker protocol */
	BT_ETOOBIG = -10002, /* a size limit was exceeded */
	BT_EFULL = -10003, /* a bounded queue is full */
	BT_ECONFIG = -10004, /* the configuration is invalid */
	BT_ESTATE = -10005, /* the object is in the wrong state for this */
};
const char *bt_strerror(int err);

/* Outcomes of a request (DESIGN §4, contract). */
enum bt_code {
	BT_OK = 0,
	BT_BAD_REQUEST,
	BT_NOT_FOUND, /* "bad_request" on the wire, HTTP 404 */
	BT_REJECTED,
	BT_WORKER_ERROR,
	BT_WORKER_CRASHED,
	BT_TIMEOUT,
	BT_OVERLOADED,
	BT_STAGE_FAILED,
	BT_SHUTTING_DOWN,
	BT_CANCELLED, /* its client went away while it waited in a queue: never ran */
	BT_CODE_COUNT
};
const char *bt_code_name(enum bt_code code);
int bt_code_http_status(enum bt_code code);

/* Allocation that aborts on out-of-memory (the daemon only; never the SDK). */
void *bt_malloc(size_t n);
void *bt_calloc(size_t n, size_t size);
void *bt_realloc(void *p, size_t n);
char *bt_strdup(const char *s);
char *bt_strndup(const char *s, size_t n);
char *bt_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A growable byte buffer; data[len] is always a NUL so text can be read. */
struct bt_buf {
	char *data;
	size_t len;
	size_t cap;
};
#define BT_BUF_INIT {NULL, 0, 0}
void bt_buf_reserve(struct bt_buf *b, size_t extra);
void bt_buf_append(struct bt_buf *b, const void *data, size_t n);
void bt_buf_puts(struct bt_buf *b, const char *s);
void bt_buf_printf(struct bt_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Drops the first n bytes. */
void bt_buf_consume(struct bt_buf *b, size_t n);
/* Hands the bytes to the caller, who frees them; the buffer is empty after. */
char *bt_buf_detach(struct bt_buf *b, size_t *len);

struct stat;
/*
 * Reads a whole regular file of at most max bytes: path relative to dirfd
 * (AT_FDCWD for a plain path), opened without blocking (a FIFO must not
 * hang the event loop) and with the extra open flags (O_NOFOLLOW, say).
 * Returns 0 with a malloc'd, NUL-terminated *data; -errno; -EINVAL when it
 * is not a regular file; BT_ETOOBIG past max, also when it grows while
 * read.  *st, when not NULL, gets the file's status whenever it was opened.
 */
int bt_read_file_at(int dirfd, const char *path, int flags, size_t max, char **data,
		    size_t *len, struct stat *st);
void bt_buf_release(struct bt_buf *b);

/*
 * The loop thread's one read buffer, for reads whose bytes are consumed
 * (copied or parsed) before the read callback returns: a buffer per
 * pipe would cost 64 KiB per replica, cleared at each start.
 */
#define BT_READ_BUF_SIZE 65536
char *bt_read_buf(void);

/*
 * Payloads in sealed memory files (memfd), passed to workers as descriptors
 * instead of bytes (docs/protocol.md, "Large payloads").  A payload is
 * either malloc'd (fd < 0) or a read-only mapping of fd's first len bytes
 * (NULL when len is 0); whoever owns it frees it with bt_payload_free.
 */
#define BT_MEMFD_SEALS (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE)
/* A new sealed memfd holding a copy of p[0..len): the fd, or -errno. */
int bt_memfd_from(const void *p, size_t len);
/*
 * 0 when fd is a memfd sealed against writing, shrinking and growing that
 * holds at least len bytes; BT_EPROTO otherwise, with why filled in.
 */
int bt_memfd_check(int fd, size_t len, char *why, size_t whylen);
/* fd's first len bytes mapped read-only; NULL when len is 0 or on failure (errno). */
char *bt_memfd_map(int fd, size_t len);
/* Faults in a mapping's pages at once, before reading all of it. */
void bt_memfd_prefault(const char *p, size_t len);
/*
 * Copies n bytes from file from (at from_off) to file to (at to_off)
 * without mapping either: copy_file_range, else through a small buffer.
 * 0, -ENODATA when from ends first, or -errno.
 */
int bt_file_copy(int from, uint64_t from_off, int to, uint64_t to_off, size_t n);
/* Frees a payload: unmaps and closes when fd >= 0, else free(p). */
void bt_payload_free(char *p, size_t len, int fd);

/*
 * The end of a request's payload left in a client's shared-memory object
 * instead of copied (docs/protocol-v2.md, "Shared memory"): len bytes of
 * fd from off.  fd is a read-only descriptor of the object, handed to
 * workers that take it (docs/protocol.md, "Shared-memory inputs"); baton
 * never maps it, so a client that shrinks its object cannot crash baton.
 */
struct bt_payload_tail {
	int fd;
	uint64_t off;
	size_t len;
};

void bt_payload_tail_free(struct bt_payload_tail *t);
/*
 * Whether a worker given t->fd can read nothing but the tail: the object
 * holds exactly [off, off + len) with off 0 (a client may have grown it
 * since it was checked).
 */
int bt_payload_tail_confined(const struct bt_payload_tail *t);
/*
 * head[0..hlen) then the tail's bytes, copied into a new sealed memfd
 * (file to file, nothing mapped while copying): 0 with *fd and *map (its
 * read-only mapping), or -errno (-ENODATA: the object is shorter now).
 */
int bt_payload_flatten(const char *head, size_t hlen, const struct bt_payload_tail *t,
		       int *fd, char **map);

/*
 * Outputs a request's last stage may write itself, straight into the
 * client's objects (docs/protocol.md, "Shared-memory outputs"): each
 * object is exactly one output's slot.  handed: the last stage's current
 * attempt was given them (only then may its answer say it wrote one).
 */
struct bt_out_place {
	char *name; /* the output's */
	int fd;	    /* the object, read-write */
	size_t len; /* its size, the slot's */
};
struct bt_out_places {
	struct bt_out_place *v;
	size_t n;
	int handed;
};

void bt_out_places_free(struct bt_out_places *p);

/*
 * A file extension that is safe to append to a path: "." and 1 to 16 of
 * [A-Za-z0-9_-].  It can neither climb out of a directory nor hide a
 * second extension.
 */
int bt_ext_is_safe(const char *ext);

/*
 * Compares secrets in time that depends on the lengths only, so that a
 * client cannot find a token byte by byte from how fast it is refused.
 */
int bt_secure_equal(const char *a, size_t alen, const char *b, size_t blen);

/*
 * Replaces, in place, every byte that is not part of a valid UTF-8
 * sequence (including one cut short at the end) with '?'.  Text built from
 * what clients and workers send goes through it before it becomes JSON,
 * which must be valid UTF-8.  Returns s.
 */
char *bt_utf8_clean(char *s);

/* Milliseconds and microseconds of CLOCK_MONOTONIC. */
uint64_t bt_now_ms(void);
uint64_t bt_now_us(void);

/* Logging: one logfmt line per event on stderr. */
enum bt_log_level { BT_LOG_DEBUG, BT_LOG_INFO, BT_LOG_WARN, BT_LOG_ERROR };
extern enum bt_log_level bt_log_threshold;
extern int bt_log_fd; /* where log lines go: stderr unless changed */
extern int bt_log_write_error; /* -errno of the first failed or short log write, else 0 */
int bt_log_level_parse(const char *s, enum bt_log_level *out);
/*
 * Writes `ts=... level=... msg="MSG" FIELDS`, where FIELDS is the printf of
 * fmt (already `key=value` pairs; quote free text with bt_logfmt_quote).
 */
void bt_log(enum bt_log_level lvl, const char *msg, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Writes s as a logfmt value into out (quoted and escaped when needed). */
const char *bt_logfmt_quote(char *out, size_t size, const char *s, size_t len);
/* The same, always quoted (free text that usually has spaces). */
const char *bt_logfmt_string(char *out, size_t size, const char *s);
/*
 * s as a quoted logfmt value, for a log call's arguments: `reason=%s",
 * BT_LOGQ(why)`.  The buffer is a compound literal: it lives as long as
 * the enclosing block, which is longer than the call.
 */
#define BT_LOGQ(s) bt_logfmt_string((char[2048]){0}, 2048, (s))

#define bt_debug(msg, ...)                                                     \
	do {                                                                   \
		if (bt_log_threshold <= BT_LOG_DEBUG)                          \
			bt_log(BT_LOG_DEBUG, msg, __VA_ARGS__);                \
	} while (0)
#define bt_info(msg, ...) bt_log(BT_LOG_INFO, msg, __VA_ARGS__)
#define bt_warn(msg, ...) bt_log(BT_LOG_WARN, msg, __VA_ARGS__)
#define bt_error(msg, ...) bt_log(BT_LOG_ERROR, msg, __VA_ARGS__)

#endif
