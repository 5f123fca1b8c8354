/*
 * HTTP/1.1 connections on the loop (h1conn.h).  Each connection is in one
 * state at a time: reading a head, reading a body, waiting for the caller's
 * answer, sending it, or lingering after its last answer.  Input that
 * arrives while an answer is awaited is kept (pipelined requests, up to
 * PIPELINE_MAX, then reading pauses) and parsed once the answer is out.
 * Bytes are parsed straight from the read buffer; only what a read leaves
 * incomplete is copied into the connection's own.  Sockets are watched
 * with uv_poll and read and written with recv and sendmsg (one call for
 * the answer's head and body, the body never copied).
 *
 * A head must be all in within http.idle_timeout_s of its first byte: a
 * client that trickles one byte now and then is never idle, and enough of
 * them would hold every connection (slowloris).  A body gets as long, and
 * a second more for every BODY_MIN_RATE bytes that came (Apache's
 * mod_reqtimeout does the same): a slow upload goes on, a trickle does not.
 */
#include "h1conn.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../common/common.h"
#include "../config/config.h"

/* Input kept while a request runs; past it, reading pauses. */
#define PIPELINE_MAX (64 * 1024)
/* How long a closing connection's input is drained, so that its last answer is not reset. */
#define LINGER_MS 2000
#define SWEEP_MS 500
#define READ_BUF (64 * 1024)
/* Bytes a second a body must average once http.idle_timeout_s has passed. */
#define BODY_MIN_RATE 500

enum state {
	S_HEAD, /* waiting for a request's head */
	S_BODY, /* reading its body */
	S_APP, /* the body is in; the caller has not answered yet */
	S_SEND, /* the answer is being written */
	S_LINGER, /* the write side is shut; input is read and dropped until EOF */
};

struct bt_h1_server {
	uv_loop_t *loop;
	struct bt_config *const *cfgp;
	const struct bt_h1_ops *ops;
	void *arg;
	int lfd; /* the listening socket */
	uv_poll_t listener;
	uv_timer_t sweep;
	int port;
	int handles; /* open: the listener, the sweep timer */
	int closing;
	int accepting; /* the listener is watched (not at the connection limit) */
	unsigned nconns;
	struct bt_h1_conn *conns;
	struct bt_h1_conn *ready; /* answered outside advance(): bt_h1_flush moves them on */
	char rbuf[READ_BUF];
	char date[40]; /* "Date: ...\r\n" for date_s */
	time_t date_s;
};

struct bt_h1_conn {
	struct bt_h1_server *s;
	int fd;
	uv_poll_t poll;
	int events; /* what poll watches: UV_READABLE, UV_WRITABLE */
	struct bt_h1_conn *next, *prev; /* s->conns */
	struct bt_h1_conn *rnext; /* s->ready */
	int in_ready;
	enum state state;
	struct bt_buf in; /* received, not yet parsed */
	size_t scanned; /* how far bt_h1_head_end looked in in */
	struct bt_h1_head head;
	struct bt_h1_body body;
	void *ctx; /* the current request's, from ops->head */
	int busy; /* inside advance() */
	int reading;
	int eof; /* the client shut its side */
	int broken; /* a write failed: close at the next chance */
	int close_after; /* no request after the one being answered */
	int closing;
	uint64_t active_ms; /* the last read, or write progress */
	uint64_t head_ms; /* the first byte of the head being read came then (0: none yet) */
	uint64_t body_ms; /* the body being read began then */
	uint64_t body_got; /* bytes of it (framing included) so far */
	uint64_t linger_ms;
	/* The answer going out. */
	struct bt_buf out; /* its status line and header fields (and a 100 Continue) */
	size_t out_off; /* of out, sent */
	char *answer; /* its body */
	size_t answer_len;
	size_t send_len; /* of the body, to send (0 for HEAD) */
	size_t answer_off; /* of that, sent */
	void (*release)(void *, char *, size_t);
	void *rarg;
};

#define CFG(s) (*(s)->cfgp)

static void advance(struct bt_h1_conn *c, const char *extra, size_t n);

/* ---- closing -------------------------------------------------------------- */

static void release_body(struct bt_h1_conn *c)
{
	if (c->release)
		c->release(c->rarg, c->answer, c->answer_len);
	c->release = NULL;
	c->answer = NULL;
	c->answer_len = 0;
}

static void watch_listener(struct bt_h1_server *s);

static void conn_closed_cb(uv_handle_t *h)
{
	struct bt_h1_conn *c = h->data;
	close(c->fd);
	release_body(c);
	bt_buf_release(&c->in);
	bt_buf_release(&c->out);
	bt_h1_head_release(&c->head);
	free(c);
}

static void ready_remove(struct bt_h1_conn *c)
{
	if (!c->in_ready)
		return;
	for (struct bt_h1_conn **p = &c->s->ready; *p; p = &(*p)->rnext)
		if (*p == c) {
			*p = c->rnext;
			break;
		}
	c->in_ready = 0;
}

/* Closes at once; the request's ended is called before this returns. */
static void conn_close(struct bt_h1_conn *c)
{
	struct bt_h1_server *s = c->s;
	if (c->closing)
		return;
	c->closing = 1;
	ready_remove(c);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->nconns--;
	void *ctx = c->ctx;
	c->ctx = NULL;
	if (ctx)
		s->ops->ended(ctx);
	uv_close((uv_handle_t *)&c->poll, conn_closed_cb);
	watch_listener(s);
}

static size_t unsent(const struct bt_h1_conn *c)
{
	return c->out.len - c->out_off + c->send_len - c->answer_off;
}

static void poll_cb(uv_poll_t *p, int status, int events);

/* Watches what c waits for: input while reading, writability while output waits. */
static void set_events(struct bt_h1_conn *c)
{
	int want = (c->reading ? UV_READABLE : 0) | (unsent(c) ? UV_WRITABLE : 0);
	if (c->closing || want == c->events)
		return;
	c->events = want;
	if (want)
		uv_poll_start(&c->poll, want, poll_cb);
	else
		uv_poll_stop(&c->poll);
}

static void start_reading(struct bt_h1_conn *c)
{
	if (!c->reading && !c->eof && !c->closing) {
		c->reading = 1;
		set_events(c);
	}
}

static void stop_reading(struct bt_h1_conn *c)
{
	if (c->reading) {
		c->reading = 0;
		set_events(c);
	}
}

/*
 * The last answer is out (or there was none to give): the write side is
 * shut and input drained until the client closes, because closing a
 * socket with unread input resets it and the client could lose the answer.
 */
static void linger(struct bt_h1_conn *c)
{
	if (c->eof) {
		conn_close(c);
		return;
	}
	c->state = S_LINGER;
	c->linger_ms = bt_now_ms();
	if (shutdown(c->fd, SHUT_WR) < 0) {
		conn_close(c);
		return;
	}
	start_reading(c);
}

/* ---- answers -------------------------------------------------------------- */

static const char *date_line(struct bt_h1_server *s)
{
	time_t now = time(NULL);
	if (now != s->date_s) {
		struct tm tm;
		gmtime_r(&now, &tm);
		strftime(s->date, sizeof(s->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
		s->date_s = now;
	}
	return s->date;
}

/*
 * Sends what is unsent, as far as the socket takes it; the rest waits for
 * writability.  sendmsg, not writev: MSG_NOSIGNAL, and it is the socket
 * call (a socket's bytes are not file I/O in /proc/PID/io).
 */
static void flush_out(struct bt_h1_conn *c)
{
	while (!c->broken && unsent(c)) {
		struct iovec iov[2];
		int n = 0;
		if (c->out_off < c->out.len)
			iov[n++] = (struct iovec){c->out.data + c->out_off, c->out.len - c->out_off};
		if (c->answer_off < c->send_len)
			iov[n++] = (struct iovec){c->answer + c->answer_off, c->send_len - c->answer_off};
		struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
		ssize_t k = sendmsg(c->fd, &m, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (k < 0) {
			c->broken = 1;
			break;
		}
		c->active_ms = bt_now_ms();
		size_t done = (size_t)k, a = BT_MIN(done, c->out.len - c->out_off);
		c->out_off += a;
		c->answer_off += done - a;
	}
	if (c->out_off == c->out.len)
		c->out.len = c->out_off = 0;
	set_events(c);
}

static void schedule(struct bt_h1_conn *c)
{
	if (c->busy || c->in_ready)
		return;
	c->in_ready = 1;
	c->rnext = c->s->ready;
	c->s->ready = c;
	c->s->ops->wake(c->s->arg);
}

void bt_h1_answer(struct bt_h1_conn *c, int status, const char *ctype,
		  const char *const *headers, char *body, size_t len,
		  void (*release)(void *rarg, char *body, size_t len), void *rarg)
{
	struct bt_h1_server *s = c->s;
	if (c->closing || c->state == S_SEND || c->state == S_LINGER) {
		/* Gone, or answered twice (a bug): the body is still given back. */
		if (release)
			release(rarg, body, len);
		return;
	}
	/* A body not read to its end leaves the connection unframed. */
	if (c->state == S_HEAD || (c->state == S_BODY && !c->body.done) || !c->head.keep_alive ||
	    c->eof || s->closing)
		c->close_after = 1;
	c->state = S_SEND;
	c->answer = body;
	c->answer_len = len;
	c->release = release;
	c->rarg = rarg;
	struct bt_buf *o = &c->out;
	/* By hand: printf was a visible share of an answer's cost. */
	char num[24];
	int i = sizeof(num);
	bt_buf_puts(o, "HTTP/1.1 ");
	status = status >= 100 && status <= 999 ? status : 500;
	num[0] = (char)('0' + status / 100);
	num[1] = (char)('0' + status / 10 % 10);
	num[2] = (char)('0' + status % 10);
	bt_buf_append(o, num, 3);
	bt_buf_puts(o, " ");
	bt_buf_puts(o, bt_h1_reason(status));
	bt_buf_puts(o, "\r\n");
	if (ctype) {
		bt_buf_puts(o, "Content-Type: ");
		bt_buf_puts(o, ctype);
		bt_buf_puts(o, "\r\n");
	}
	for (int i = 0; headers && headers[i]; i += 2) {
		if (!headers[i + 1])
			continue;
		bt_buf_puts(o, headers[i]);
		bt_buf_puts(o, ": ");
		bt_buf_puts(o, headers[i + 1]);
		bt_buf_puts(o, "\r\n");
	}
	bt_buf_puts(o, "Content-Length: ");
	size_t v = len;
	do {
		num[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	bt_buf_append(o, num + i, sizeof(num) - (size_t)i);
	bt_buf_puts(o, "\r\n");
	bt_buf_puts(o, date_line(s));
	if (c->close_after)
		bt_buf_puts(o, "Connection: close\r\n");
	else if (c->head.minor == 0)
		bt_buf_puts(o, "Connection: keep-alive\r\n");
	bt_buf_puts(o, "\r\n");
	/* HEAD: the length the body would have, without it. */
	int head_only = c->head.method && !strcmp(c->head.method, "HEAD");
	c->send_len = head_only ? 0 : len;
	c->answer_off = 0;
	flush_out(c);
	schedule(c);
}

void bt_h1_abort(struct bt_h1_conn *c)
{
	conn_close(c);
}

/* ---- reading requests ----------------------------------------------------- */

static void refuse(struct bt_h1_conn *c, int status, const char *why)
{
	if (c->state == S_HEAD) {
		/* What the parser left of the head is not this request's. */
		c->head.method = NULL;
		c->head.keep_alive = 0;
	}
	c->s->ops->refuse(c->s->arg, c, status, why);
	if (c->state != S_SEND) /* not answered after all */
		linger(c);
}

/*
 * One step for c in its state, over input p[0..n): returns how much of it
 * was used, or -1 when c must wait (for input, the caller or the socket).
 */
static long step(struct bt_h1_conn *c, const char *p, size_t n)
{
	struct bt_h1_server *s = c->s;
	const char *why;
	switch (c->state) {
	case S_HEAD: {
		size_t skip = c->scanned ? 0 : bt_h1_skip_empty(p, n);
		if (skip)
			return (long)skip;
		size_t end = bt_h1_head_end(p, n, &c->scanned);
		if (!end) {
			if (n > BT_H1_HEAD_MAX) {
				refuse(c, 431, "the request's line and headers are over the 32 KiB limit");
				return (long)n;
			}
			if (c->eof && !c->closing)
				conn_close(c); /* ended, or cut off halfway */
			return -1;
		}
		c->scanned = 0;
		c->head_ms = 0;
		int st = bt_h1_parse_head(&c->head, p, end, &why);
		if (st < 0) {
			linger(c); /* not HTTP: nothing to answer */
			return (long)end;
		}
		if (st > 0) {
			refuse(c, st, why);
			return (long)end;
		}
		bt_h1_body_init(&c->body, &c->head);
		c->body_ms = bt_now_ms();
		c->body_got = 0;
		c->state = S_BODY;
		c->close_after = 0;
		c->ctx = s->ops->head(s->arg, c, &c->head);
		if (c->state == S_BODY && !c->body.done && c->head.expect_continue && end == n) {
			bt_buf_puts(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
			flush_out(c);
		}
		return (long)end;
	}
	case S_BODY: {
		if (c->body.done) {
			c->state = S_APP;
			s->ops->complete(c->ctx);
			return 0;
		}
		if (!n) {
			if (c->eof)
				conn_close(c); /* the body was cut off */
			return -1;
		}
		const char *data;
		size_t dlen;
		long k = bt_h1_body_step(&c->body, p, n, &data, &dlen, &why);
		if (k < 0) {
			refuse(c, 400, why);
			return (long)n;
		}
		c->body_got += (uint64_t)k;
		if (dlen)
			s->ops->body(c->ctx, data, dlen);
		return k;
	}
	case S_APP:
		return -1;
	case S_SEND: {
		if (c->broken) {
			conn_close(c);
			return -1;
		}
		if (unsent(c))
			return -1;
		release_body(c);
		void *ctx = c->ctx;
		c->ctx = NULL;
		if (ctx)
			s->ops->ended(ctx);
		if (c->close_after) {
			linger(c);
			return -1;
		}
		c->state = S_HEAD;
		return 0;
	}
	case S_LINGER:
		return n ? (long)n : -1; /* dropped */
	}
	return -1;
}

/*
 * Moves c on as far as its input allows.  extra is new input (the shared
 * read buffer): parsed in place when nothing is kept from before, and what
 * is left of it is kept.
 */
static void advance(struct bt_h1_conn *c, const char *extra, size_t n)
{
	if (c->busy) {
		if (n)
			bt_buf_append(&c->in, extra, n);
		return;
	}
	const char *p;
	int own = !n || c->in.len;
	if (own) {
		if (n)
			bt_buf_append(&c->in, extra, n);
		p = c->in.data;
		n = c->in.len;
	} else {
		p = extra;
	}
	c->busy = 1;
	size_t off = 0;
	while (!c->closing) {
		if (c->broken) {
			conn_close(c); /* a write failed: the client is gone */
			break;
		}
		long k = step(c, p + off, n - off);
		if (k < 0)
			break;
		off += (size_t)k;
	}
	c->busy = 0;
	if (c->closing)
		return;
	/* Kept input stays, less what was used; what is left of new input is kept. */
	if (own) {
		if (off)
			bt_buf_consume(&c->in, off);
	} else if (off < n) {
		bt_buf_append(&c->in, p + off, n - off);
	}
	if (c->state == S_LINGER)
		c->in.len = 0;
	if (c->state == S_HEAD && c->in.len && !c->head_ms)
		c->head_ms = bt_now_ms();
	/* Pipelined input waits; past PIPELINE_MAX, so does the client. */
	if (c->in.len > PIPELINE_MAX && (c->state == S_APP || c->state == S_SEND))
		stop_reading(c);
	else
		start_reading(c);
}

/* Reads what has arrived: one read, or a few while they fill the buffer. */
static void read_input(struct bt_h1_conn *c)
{
	struct bt_h1_server *s = c->s;
	for (int i = 0; i < 8 && c->reading && !c->closing; i++) {
		ssize_t n = recv(c->fd, s->rbuf, sizeof(s->rbuf), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n < 0) {
			conn_close(c);
			return;
		}
		if (n == 0) {
			c->eof = 1;
			stop_reading(c);
			/*
			 * A client that closes while its request waits has gone,
			 * as nginx takes it (499): the request is ended (ended),
			 * which takes it out of its queue.  A client that only
			 * shut its writing side would lose its answer; HTTP
			 * clients do not do that.
			 */
			if (c->state == S_LINGER || c->state == S_APP)
				conn_close(c);
			else
				advance(c, NULL, 0);
			return;
		}
		c->active_ms = bt_now_ms();
		/* Empty lines before a request count as its head's first bytes. */
		if (c->state == S_HEAD && !c->head_ms)
			c->head_ms = c->active_ms;
		advance(c, s->rbuf, (size_t)n);
		if ((size_t)n < sizeof(s->rbuf))
			return; /* most likely all there was: no read just to hear EAGAIN */
	}
}

static void poll_cb(uv_poll_t *p, int status, int events)
{
	struct bt_h1_conn *c = p->data;
	if (status < 0) {
		conn_close(c);
		return;
	}
	if (events & UV_WRITABLE) {
		flush_out(c);
		if (!unsent(c))
			advance(c, NULL, 0);
	}
	if ((events & UV_READABLE) && !c->closing)
		read_input(c);
}

/* ---- the server ----------------------------------------------------------- */

static void accept_cb(uv_poll_t *p, int status, int events);

/*
 * The listener is watched while connections may be added: at the limit
 * the rest wait in the kernel's backlog until one closes.
 */
static void watch_listener(struct bt_h1_server *s)
{
	int want = !s->closing && s->nconns < CFG(s)->http_max_connections;
	if (want == s->accepting)
		return;
	s->accepting = want;
	if (want)
		uv_poll_start(&s->listener, UV_READABLE, accept_cb);
	else
		uv_poll_stop(&s->listener);
}

static void accept_cb(uv_poll_t *p, int status, int events)
{
	struct bt_h1_server *s = p->data;
	(void)events;
	while (status == 0 && !s->closing && s->nconns < CFG(s)->http_max_connections) {
		int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				/*
				 * Out of descriptors or memory: the listener rests until
				 * the next sweep, or it would wake the loop over and over.
				 */
				bt_debug("http", "accept=%s", BT_LOGQ(strerror(errno)));
				s->accepting = 0;
				uv_poll_stop(&s->listener);
				return;
			}
			break;
		}
		struct bt_h1_conn *c = bt_calloc(1, sizeof(*c));
		c->s = s;
		c->fd = fd;
		if (uv_poll_init_socket(s->loop, &c->poll, fd) < 0) {
			close(fd);
			free(c);
			continue;
		}
		c->poll.data = c;
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
		s->nconns++;
		c->active_ms = bt_now_ms();
		start_reading(c);
	}
	watch_listener(s);
}

/* Idle connections, heads and bodies too slow to come, connections lingering too long. */
static void sweep_cb(uv_timer_t *t)
{
	struct bt_h1_server *s = t->data;
	uint64_t now = bt_now_ms(), idle = (uint64_t)CFG(s)->http_idle_timeout_s * 1000;
	struct bt_h1_conn *next;
	for (struct bt_h1_conn *c = s->conns; c; c = next) {
		next = c->next;
		if (c->state == S_LINGER) {
			if (now - c->linger_ms >= LINGER_MS)
				conn_close(c);
		} else if (c->state == S_HEAD && c->head_ms && now - c->head_ms >= idle) {
			refuse(c, 408, "the request's line and headers did not all arrive "
				       "within http.idle_timeout_s");
		} else if (c->state == S_BODY && !c->body.done &&
			   now - c->body_ms >= idle + c->body_got * 1000 / BODY_MIN_RATE) {
			refuse(c, 408, "the request's body came slower than 500 bytes a second "
				       "once http.idle_timeout_s had passed");
		} else if (c->state != S_APP && idle && now - c->active_ms >= idle) {
			conn_close(c);
		}
	}
	watch_listener(s); /* after a rest for want of descriptors */
	s->ops->tick(s->arg);
}

void bt_h1_flush(struct bt_h1_server *s)
{
	if (!s)
		return;
	while (s->ready) {
		struct bt_h1_conn *c = s->ready;
		s->ready = c->rnext;
		c->in_ready = 0;
		advance(c, NULL, 0);
	}
}

int bt_h1_port(const struct bt_h1_server *s)
{
	return s->port;
}

unsigned bt_h1_connections(const struct bt_h1_server *s)
{
	return s ? s->nconns : 0;
}

int bt_h1_listen(uv_loop_t *loop, struct bt_config *const *cfgp, const struct bt_h1_ops *ops,
		 void *arg, struct bt_h1_server **out, char *err, size_t errlen)
{
	const struct bt_config *cfg = *cfgp;
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(struct sockaddr_in);
	if (uv_ip4_addr(cfg->listen_host, cfg->listen_port, (struct sockaddr_in *)&ss)) {
		/* Never fall back to the any-address: that would publish baton. */
		if (uv_ip6_addr(cfg->listen_host, cfg->listen_port, (struct sockaddr_in6 *)&ss)) {
			snprintf(err, errlen, "cannot listen on '%s': not an IP address",
				 cfg->listen_host);
			return -EINVAL;
		}
		sslen = sizeof(struct sockaddr_in6);
	}
	int one = 1;
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int e = fd < 0 ? -errno : 0;
	if (!e && (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
		   (ss.ss_family == AF_INET6 &&
		    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one))) ||
		   bind(fd, (struct sockaddr *)&ss, sslen) || listen(fd, 1024)))
		e = -errno;
	if (e) {
		snprintf(err, errlen, "cannot listen on %s:%d: %s", cfg->listen_host,
			 cfg->listen_port, strerror(-e));
		if (fd >= 0)
			close(fd);
		return e;
	}
	struct bt_h1_server *s = bt_calloc(1, sizeof(*s));
	s->loop = loop;
	s->cfgp = cfgp;
	s->ops = ops;
	s->arg = arg;
	s->lfd = fd;
	uv_poll_init_socket(loop, &s->listener, fd);
	uv_timer_init(loop, &s->sweep);
	s->listener.data = s;
	s->sweep.data = s;
	s->handles = 2;
	struct sockaddr_storage bound;
	socklen_t blen = sizeof(bound);
	getsockname(fd, (struct sockaddr *)&bound, &blen);
	s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
						    : ((struct sockaddr_in *)&bound)->sin_port);
	watch_listener(s);
	uv_timer_start(&s->sweep, sweep_cb, SWEEP_MS, SWEEP_MS);
	*out = s;
	return 0;
}

static void server_closed_cb(uv_handle_t *h)
{
	struct bt_h1_server *s = h->data;
	if (--s->handles == 0) {
		close(s->lfd);
		free(s);
	}
}

void bt_h1_close(struct bt_h1_server *s)
{
	if (!s || s->closing)
		return;
	s->closing = 1;
	while (s->conns)
		conn_close(s->conns);
	s->ready = NULL;
	uv_close((uv_handle_t *)&s->listener, server_closed_cb);
	uv_close((uv_handle_t *)&s->sweep, server_closed_cb);
}
