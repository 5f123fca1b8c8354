/*
 * The KServe v2 gRPC ingress (inference.GRPCInferenceService): HTTP/2
 * through nghttp2 on baton's one libuv loop, protobuf through protobuf-c.
 * It turns each call into the same pipeline request the HTTP ingress
 * makes and answers with its outcome.  It does not know the daemon: the
 * daemon passes what it needs as callbacks (struct bt_grpc_ops).
 */
#ifndef BT_GRPC_H
#define BT_GRPC_H

#include <stddef.h>
#include <uv.h>

#include "wire.h"

struct bt_buf;
struct bt_config;
struct bt_pipeline;
struct bt_grpc;

struct bt_grpc_ops {
	/* The pipeline serving model `name`, or NULL. */
	struct bt_pipeline *(*pipeline)(void *arg, const char *name);
	/* ServerReady and ModelReady, with the HTTP ingress's meanings. */
	int (*server_ready)(void *arg);
	int (*model_ready)(void *arg, struct bt_pipeline *pl);
	/* Asks for bt_grpc_flush before the loop next blocks. */
	void (*wake)(void *arg);
	/* A request was answered or an answer written: shutdown may advance. */
	void (*progress)(void *arg);
};

/*
 * Binds grpc_listen_host:grpc_listen_port of *cfgp on loop and serves.
 * ops and cfgp are borrowed for the server's life; limits and the token
 * are read from *cfgp at each use, so a reload that swaps it applies.  Returns 0 and sets *out,
 * or a negative code with a sentence in err.
 */
int bt_grpc_start(uv_loop_t *loop, struct bt_config *const *cfgp, const struct bt_grpc_ops *ops,
		  void *arg, struct bt_grpc **out, char *err, size_t errlen);
/* Sends what answers were completed since the last call (once per loop turn). */
void bt_grpc_flush(struct bt_grpc *g);
/*
 * Pipeline requests not yet answered, plus connections with answers not
 * yet written (0 for NULL): shutdown waits for both.
 */
unsigned bt_grpc_pending(const struct bt_grpc *g);
/* Bytes held for gRPC clients: messages being read, answers not yet sent. */
size_t bt_grpc_buffered(const struct bt_grpc *g);
int bt_grpc_port(const struct bt_grpc *g);
/* Appends the baton_grpc_* families to a /metrics page (nothing for NULL). */
void bt_grpc_metrics(const struct bt_grpc *g, struct bt_buf *out);
/* Stops listening, drops every connection; frees itself asynchronously. */
void bt_grpc_close(struct bt_grpc *g);

#endif
