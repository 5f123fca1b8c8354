/*
 * A minimal blocking HTTP/1.1 client for the CLI (`baton status`): one
 * request per connection, Content-Length or close-delimited bodies.  Not
 * for the daemon, which never blocks.
 */
#ifndef BT_CLI_CLIENT_H
#define BT_CLI_CLIENT_H

#include <stddef.h>

struct bt_http_reply {
	int status;
	char *body;
	size_t len;
};

/*
 * base is "http://HOST:PORT"; token, when not NULL, goes in an
 * Authorization: Bearer header.  Returns 0 or -1 with a sentence in err.
 */
int bt_client_request(const char *base, const char *token, const char *method,
		      const char *path, const void *body, size_t len,
		      struct bt_http_reply *out, char *err, size_t errlen);
void bt_client_reply_release(struct bt_http_reply *r);

#endif
