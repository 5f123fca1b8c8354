/*
 * bench/hop's yardstick for baton's own cost: the least a daemon that does
 * baton's job can do.  One thread, one epoll loop, HTTP/1.1 keep-alive with
 * Content-Length bodies; each request's body goes to a persistent Python
 * child (bench/hop/minimal_child.py) over a socketpair as a 4-byte length
 * and the bytes, and the child's answer is the HTTP answer.  No routing,
 * no metadata, no limits, no supervision: a floor, not a server.
 *
 *     minimal PORT CHILDREN PYTHON CHILD_SCRIPT
 *
 * Prints "ready" on stdout once the children are started and it listens.
 * Requests are spread over the children in turn; each child answers in
 * order, so a FIFO per child says whose answer comes next.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CHILDREN 8
#define MAX_FIFO 4096

struct buf {
	char *p;
	size_t len, cap;
};

static void buf_add(struct buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 4096;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			abort();
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void buf_drop(struct buf *b, size_t n)
{
	memmove(b->p, b->p + n, b->len - n);
	b->len -= n;
}

struct conn {
	int fd;
	int closed, busy; /* busy: a request is at a child */
	struct buf in, out;
};

struct child {
	int fd;
	struct buf in, out;
	struct conn *fifo[MAX_FIFO];
	unsigned head, tail;
};

static int ep;
static struct child children[MAX_CHILDREN];
static int nchildren, next_child;

static void conn_free(struct conn *c)
{
	free(c->in.p);
	free(c->out.p);
	free(c);
}

static void conn_close(struct conn *c)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->closed = 1;
	if (!c->busy)
		conn_free(c);
}

static void flush_fd(int fd, struct buf *b)
{
	while (b->len) {
		ssize_t n = send(fd, b->p, b->len, MSG_NOSIGNAL);
		if (n <= 0)
			return; /* small answers: a full socket buffer does not happen here */
		buf_drop(b, (size_t)n);
	}
}

/* One complete request at the front of c->in: hand its body to a child. */
static void try_request(struct conn *c)
{
	if (c->busy)
		return;
	char *end = memmem(c->in.p, c->in.len, "\r\n\r\n", 4);
	if (!end)
		return;
	size_t hlen = (size_t)(end - c->in.p) + 4, clen = 0;
	for (char *l = memchr(c->in.p, '\n', hlen); l && l < end; l = memchr(l + 1, '\n', hlen)) {
		if (!strncasecmp(l + 1, "content-length:", 15))
			clen = strtoul(l + 16, NULL, 10);
	}
	if (c->in.len < hlen + clen)
		return;
	struct child *ch = &children[next_child++ % nchildren];
	uint32_t n = (uint32_t)clen;
	buf_add(&ch->out, &n, 4);
	buf_add(&ch->out, c->in.p + hlen, clen);
	ch->fifo[ch->tail++ % MAX_FIFO] = c;
	c->busy = 1;
	buf_drop(&c->in, hlen + clen);
	flush_fd(ch->fd, &ch->out);
}

static void on_conn(struct conn *c)
{
	char tmp[16384];
	for (;;) {
		ssize_t n = recv(c->fd, tmp, sizeof(tmp), 0);
		if (n > 0) {
			buf_add(&c->in, tmp, (size_t)n);
			continue;
		}
		if (n == 0 || errno != EAGAIN) {
			conn_close(c);
			return;
		}
		break;
	}
	try_request(c);
}

static void on_child(struct child *ch)
{
	char tmp[65536];
	ssize_t n;
	while ((n = recv(ch->fd, tmp, sizeof(tmp), MSG_DONTWAIT)) > 0)
		buf_add(&ch->in, tmp, (size_t)n);
	if (n == 0) {
		fprintf(stderr, "minimal: a child closed its socket\n");
		exit(1);
	}
	size_t off = 0;
	while (ch->in.len - off >= 4) {
		uint32_t len;
		memcpy(&len, ch->in.p + off, 4);
		if (ch->in.len - off - 4 < len)
			break;
		struct conn *c = ch->fifo[ch->head++ % MAX_FIFO];
		c->busy = 0;
		if (c->closed) {
			conn_free(c);
		} else {
			char h[160];
			int hl = snprintf(h, sizeof(h),
					  "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
					  "Content-Length: %u\r\n\r\n", len);
			buf_add(&c->out, h, (size_t)hl);
			buf_add(&c->out, ch->in.p + off + 4, len);
			flush_fd(c->fd, &c->out);
			try_request(c); /* a pipelined next request */
		}
		off += 4 + len;
	}
	buf_drop(&ch->in, off);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: minimal PORT CHILDREN PYTHON CHILD_SCRIPT\n");
		return 2;
	}
	nchildren = atoi(argv[2]);
	if (nchildren < 1 || nchildren > MAX_CHILDREN)
		return 2;
	ep = epoll_create1(EPOLL_CLOEXEC);
	for (int i = 0; i < nchildren; i++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
			return 1;
		pid_t pid = fork();
		if (pid == 0) {
			dup2(sv[1], 3);
			execl(argv[3], argv[3], argv[4], (char *)NULL);
			_exit(127);
		}
		close(sv[1]);
		children[i].fd = sv[0];
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &children[i]};
		epoll_ctl(ep, EPOLL_CTL_ADD, sv[0], &ev);
	}
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 1024)) {
		perror("minimal: listen");
		return 1;
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		struct epoll_event evs[64];
		int n = epoll_wait(ep, evs, 64, -1);
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (!p) {
				int fd;
				while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					struct conn *c = calloc(1, sizeof(*c));
					c->fd = fd;
					struct epoll_event ce = {.events = EPOLLIN, .data.ptr = c};
					epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce);
				}
			} else if (p >= (void *)children && p < (void *)(children + MAX_CHILDREN)) {
				on_child(p);
			} else {
				on_conn(p);
			}
		}
	}
}
