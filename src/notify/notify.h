/*
 * systemd's readiness protocol (sd_notify) written directly: datagrams of
 * "KEY=VALUE\n" lines to the AF_UNIX socket named by $NOTIFY_SOCKET, so
 * that baton needs no libsystemd.  Owns the socket; knows nothing of the
 * daemon (cmd-serve.c decides what to say and when).
 */
#ifndef BT_NOTIFY_H
#define BT_NOTIFY_H

#include <stdint.h>

struct bt_notify {
	int fd; /* -1 when not under a service manager */
	char path[108]; /* sun_path; a leading '\0' for an abstract socket */
	unsigned path_len; /* bytes of path that count */
	uint64_t watchdog_usec; /* from $WATCHDOG_USEC when meant for us, else 0 */
};

/*
 * Reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID and removes them
 * from the environment, so that workers do not inherit them.  Without
 * $NOTIFY_SOCKET, n is inert and every send is a no-op.  Returns 0, or a
 * negative errno when the variable is set but unusable (n is then inert).
 */
int bt_notify_init(struct bt_notify *n);

/* Sends text ("READY=1", "STATUS=...", lines joined by '\n'); 0 or -errno. */
int bt_notify_send(struct bt_notify *n, const char *text);

void bt_notify_release(struct bt_notify *n);

#endif
