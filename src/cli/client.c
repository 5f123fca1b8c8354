/* The CLI's blocking HTTP client; see client.h. */
#include "client.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "../common/common.h"

static int connect_to(const char *host, const char *port, char *err, size_t errlen)
{
	struct addrinfo hints, *res;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	int e = getaddrinfo(host, port, &hints, &res);
	if (e) {
		snprintf(err, errlen, "%s", gai_strerror(e));
		return -1;
	}
	int fd = -1;
	for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype, 0);
		if (fd < 0)
			continue;
		struct timeval tv = {30, 0};
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(fd, a->ai_addr, a->ai_addrlen)) {
			snprintf(err, errlen, "%s", strerror(errno));
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(res);
	return fd;
}

int bt_client_request(const char *base, const char *token, const char *method,
		      const char *path, const void *body, size_t len,
		      struct bt_http_reply *out, char *err, size_t errlen)
{
	char host[256], port[16] = "80";
	memset(out, 0, sizeof(*out));
	if (strncmp(base, "http://", 7)) {
		snprintf(err, errlen, "only http:// URLs are supported");
		return -1;
	}
	const char *h = base + 7;
	size_t hl = strcspn(h, ":/");
	snprintf(host, sizeof(host), "%.*s", (int)BT_MIN(hl, sizeof(host) - 1), h);
	if (h[hl] == ':')
		snprintf(port, sizeof(port), "%.*s", (int)strcspn(h + hl + 1, "/"), h + hl + 1);
	int fd = connect_to(host, port, err, errlen);
	if (fd < 0)
		return -1;
	struct bt_buf req = BT_BUF_INIT;
	bt_buf_printf(&req, "%s %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n"
			    "Content-Length: %zu\r\n", method, path, host, port, len);
	if (token)
		bt_buf_printf(&req, "Authorization: Bearer %s\r\n", token);
	bt_buf_puts(&req, "\r\n");
	bt_buf_append(&req, body, len);
	size_t off = 0;
	while (off < req.len) {
		ssize_t n = write(fd, req.data + off, req.len - off);
		if (n <= 0) {
			snprintf(err, errlen, "write: %s", strerror(errno));
			bt_buf_release(&req);
			close(fd);
			return -1;
		}
		off += (size_t)n;
	}
	bt_buf_release(&req);
	struct bt_buf resp = BT_BUF_INIT;
	char chunk[16384];
	ssize_t n;
	while ((n = read(fd, chunk, sizeof(chunk))) > 0)
		bt_buf_append(&resp, chunk, (size_t)n);
	close(fd);
	char *sep = resp.data ? strstr(resp.data, "\r\n\r\n") : NULL;
	if (!sep || sscanf(resp.data, "HTTP/1.%*d %d", &out->status) != 1) {
		snprintf(err, errlen, "malformed HTTP answer");
		bt_buf_release(&resp);
		return -1;
	}
	size_t hdr = (size_t)(sep + 4 - resp.data);
	out->len = resp.len - hdr;
	out->body = bt_malloc(out->len + 1);
	memcpy(out->body, resp.data + hdr, out->len);
	out->body[out->len] = '\0';
	bt_buf_release(&resp);
	return 0;
}

void bt_client_reply_release(struct bt_http_reply *r)
{
	free(r->body);
	r->body = NULL;
}
