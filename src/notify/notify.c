/*
 * sd_notify over a datagram socket.  The protocol is the manager's: one
 * datagram per message, the address from $NOTIFY_SOCKET ('/' a path, '@'
 * an abstract name), no answer.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "notify.h"

int bt_notify_init(struct bt_notify *n)
{
	memset(n, 0, sizeof(*n));
	n->fd = -1;
	const char *sock = getenv("NOTIFY_SOCKET");
	const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
	/* The watchdog is ours unless it names another process (a wrapper's child). */
	if (usec && (!pid || strtol(pid, NULL, 10) == (long)getpid())) {
		char *end;
		unsigned long long v = strtoull(usec, &end, 10);
		if (end != usec && !*end)
			n->watchdog_usec = v;
	}
	int r = 0;
	if (sock) {
		size_t len = strlen(sock);
		if ((sock[0] != '/' && sock[0] != '@') || len < 2 || len >= sizeof(n->path)) {
			r = -EINVAL;
		} else {
			memcpy(n->path, sock, len);
			if (n->path[0] == '@')
				n->path[0] = '\0';
			n->path_len = (unsigned)len;
			n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
			if (n->fd < 0)
				r = -errno;
		}
	}
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	if (r)
		n->watchdog_usec = 0;
	return r;
}

int bt_notify_send(struct bt_notify *n, const char *text)
{
	if (n->fd < 0)
		return 0;
	struct sockaddr_un addr;
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, n->path, n->path_len);
	socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n->path_len);
	/* A path is sent with its terminating NUL; an abstract name is exactly its bytes. */
	if (n->path[0])
		alen++;
	ssize_t w = sendto(n->fd, text, strlen(text), MSG_NOSIGNAL, (struct sockaddr *)&addr, alen);
	return w < 0 ? -errno : 0;
}

void bt_notify_release(struct bt_notify *n)
{
	if (n->fd >= 0)
		close(n->fd);
	n->fd = -1;
}
