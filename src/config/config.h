/*
 * The configuration file (DESIGN §2, contract): YAML in, a validated and
 * resolved struct bt_config out, or one error naming FILE:LINE:COL and the
 * key.  Paths that baton opens are resolved against the config file's
 * directory; commands are resolved to absolute paths here, so that
 * `baton check` shows exactly what will run.  No libuv, no processes.
 */
#ifndef BT_CONFIG_H
#define BT_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <stdio.h>

#include "../common/common.h"
#include "../scale/scale.h"

#define BT_MAX_PRIORITY_LEVELS 16

struct bt_env_var {
	char *name;
	char *value;
};

enum bt_stage_mode {
	BT_MODE_PERSISTENT, /* long-lived workers speaking the protocol */
	BT_MODE_SPAWN, /* one process per request: files or stdin/stdout */
};

/* Where a stage's queue lives: this process, or a Redis stream (docs/scaleout.md). */
enum bt_queue_backend { BT_QUEUE_LOCAL, BT_QUEUE_REDIS };

struct bt_stage_config {
	char *name;
	enum bt_stage_mode mode;
	int source; /* kind: source: its replicas are a stream's stations */
	int replicas_given; /* `replicas:` was in the file */
	const void *replicas_node; /* where, for errors found after the stage (yaml_node_t) */
	char *spawn_status_key; /* spawn: JSON key whose "error" value rejects */
	char *spawn_output_ext; /* spawn: extension of the {output} file */
	int spawn_files; /* spawn: the argv has {input}/{output} placeholders */
	char **health_check; /* argv for `baton env check`, NULL-terminated, or NULL */
	char *user; /* run replicas as this user (baton must be root), or NULL */
	unsigned uid, gid; /* of user (its primary group, or `group`) */
	int has_setup; /* `setup:` present: `baton env setup` builds the venv */
	char *setup_python; /* interpreter that creates the venv */
	char *setup_requirements; /* absolute, or NULL */
	char *setup_wheels; /* absolute wheel directory, or NULL */
	int setup_system_site_packages;
	int line, col; /* where the stage's key is */
	char **argv; /* NULL-terminated; argv[0] absolute */
	int argc;
	char *workdir; /* absolute */
	char *venv; /* absolute, or NULL */
	int venv_missing; /* venv is set but has no bin/ yet */
	struct bt_env_var *env; /* from `env:`, applied after venv */
	int nenv;
	int replicas_initial;
	int replicas_min, replicas_max; /* bounds of autoscaling and manual scaling */
	struct bt_autoscale_config autoscale; /* policy NONE without `autoscale:` */
	double gpu_fraction; /* resources.gpu: share of one GPU, 0 = none */
	uint64_t gpu_memory_mb; /* resources.gpu_memory_mb */
	uint64_t memory_mb; /* resources.memory_mb: RSS limit of the group, 0 = none */
	int max_ongoing; /* requests in flight per replica */
	size_t queue_max;
	uint64_t timeout_ms; /* per attempt */
	int retries;
	uint64_t start_timeout_ms;
	char *warmup_file; /* absolute, or NULL */
	char *warmup_payload; /* its bytes, read at load time */
	size_t warmup_len;
	int warmup_required;
	uint64_t backoff_ms, backoff_max_ms;
	int max_failures;
	uint64_t reset_after_ms;
	uint64_t retry_failed_after_ms; /* 0: wait for an explicit restart */
	uint64_t grace_ms;
	uint64_t ping_interval_ms; /* 0: no pings */
	uint64_t ping_timeout_ms;
	int batch_max_size; /* 1: no batching */
	uint64_t batch_window_ms;
	int priority_levels; /* FIFOs, level 0 served first */
	uint64_t log_interval_ms; /* log_limit: per stream of each process, at most */
	uint64_t log_lines, log_bytes; /* these many lines and bytes per interval */
	json_t *written; /* the stage's mapping as written (JSON), for reloads to compare */
	enum bt_queue_backend queue_backend; /* `queue.backend`, else the top level's */
	int queue_given; /* `queue:` was in the stage */
	int queue_line, queue_col; /* of the stage's `queue:`, else of the stage */
};

/*
 * Where a stage's queue lives (docs/scaleout.md): in this process
 * (local, the default) or in a Redis stream shared by every node of a
 * cluster.
 */
/* The top-level `queue:` section: the default backend and the Redis server. */
struct bt_queue_config {
	int present; /* the file has a `queue:` section */
	int line, col; /* of `queue.url` (or `queue:`), for errors at start */
	enum bt_queue_backend backend; /* for stages that do not say */
	char *url; /* as written, or NULL */
	char *host; /* from url */
	int port; /* from url, default 6379 */
	int db; /* from url's path, default 0 */
	char *user; /* `user`: a Redis ACL user to AUTH as, or NULL (the default user) */
	char *password; /* the first line of `password_file`, or NULL: no AUTH */
	char *ns; /* `namespace`: prefix of every key, default "baton" */
	char *node; /* this node's name, NULL: the host name */
	uint64_t claim_after_ms; /* a node silent this long loses its entries */
	size_t inline_max_bytes; /* larger payloads go by reference to shared_dir */
	char *shared_dir; /* absolute, or NULL: every payload inline */
};

struct bt_pipeline_config {
	char *name;
	int *stages; /* indexes into bt_config.stages */
	int nstages;
	size_t max_inflight; /* 0: no limit but the stages' queues */
	json_t *io_inputs; /* `io.inputs` as JSON (v2 model metadata), or NULL */
	json_t *io_outputs;
};

/* One camera (or file) a source stage's replica reads: a station. */
struct bt_station_config {
	char *name;
	char *url;
};

enum bt_overflow { BT_OVERFLOW_BLOCK, BT_OVERFLOW_DROP_OLDEST };
enum bt_missing_key { BT_MISSING_IGNORE, BT_MISSING_CLOSE };

/*
 * A stream (docs/streams.md): a source stage's items go through the `items`
 * stages, are grouped into sessions by a metadata key, spooled on disk, and
 * each closed session goes through the `process` stages as one request.
 * The two stage lists become the pipelines "<name>.items" (absent when the
 * list is empty) and "<name>.process".
 */
struct bt_stream_config {
	char *name;
	int source; /* index of the source stage */
	struct bt_station_config *stations;
	int nstations;
	int items_pipeline; /* index into bt_config.pipelines, -1: no item stages */
	int process_pipeline;
	char *key; /* metadata key that names an item's session */
	uint64_t idle_timeout_ms;
	uint64_t max_duration_ms; /* 0: no limit */
	int max_items; /* 0: no limit */
	enum bt_missing_key missing_key;
	int credits; /* items a station may have in baton at once */
	enum bt_overflow overflow;
	char *spool; /* absolute */
	char *results; /* absolute */
	int spool_line, spool_col; /* of `spool:`, or of the stream's name */
};

enum bt_gpus_mode { BT_GPUS_AUTO, BT_GPUS_NONE, BT_GPUS_LIST };

/*
 * `run:` (docs/config.md): a PostgreSQL source and sink for `baton run
 * CONFIG` without --input.  Connection strings never hold a password (the
 * loader refuses one): credentials come from PG* variables, a service file
 * or a password file.
 */
enum bt_run_unit { BT_RUN_PAGE, BT_RUN_ROW }; /* what one request carries */

struct bt_run_config {
	int present; /* the file has a `run:` section */
	int line, col; /* of `run:` */
	char *pipeline; /* or NULL: --pipeline names it */
	char *src_connect; /* libpq conninfo, "" = the PG* environment */
	char *src_query;
	char *src_key; /* a unique, ordered column of the query */
	int page_rows;
	enum bt_run_unit unit;
	int src_line, src_col, key_line, key_col;
	char *sink_connect;
	char *sink_table;
	char **sink_key; /* columns of a unique index of the table */
	int nsink_key;
	char **sink_columns, **sink_fields; /* column <- result field; n = 0: all by name */
	int nsink_columns;
	char *sink_jsonb; /* column that receives the whole result object, or NULL */
	char *failures_table, *checkpoint_table;
	char *checkpoint_name; /* the run's row in checkpoint_table */
	int sink_line, sink_col;
	uint64_t reconnect_max_s; /* a database down longer fails the run */
};

struct bt_gpu_config {
	int id;
	uint64_t memory_mb;
};

struct bt_config {
	char *path; /* as given */
	enum bt_gpus_mode gpus_mode;
	struct bt_gpu_config *gpus; /* BT_GPUS_LIST */
	int ngpus;
	uint64_t interval_ms; /* signal sampling and autoscaling tick */
	char *auth_token; /* from auth.token_file: Bearer token for HTTP, or NULL */
	char *cgroup; /* NULL ("auto"), "off", or an absolute cgroup v2 directory */
	unsigned http_max_connections;
	unsigned http_idle_timeout_s;
	size_t http_max_buffered_bytes; /* request bodies and answers held, all clients */
	unsigned http_write_timeout_s; /* an answer not taken by then: the client is dropped */
	char *grpc_listen_host; /* grpc.listen: the gRPC ingress, NULL = off */
	int grpc_listen_port;
	unsigned grpc_max_connections;
	unsigned grpc_max_streams; /* per connection; also requests in flight per stream call */
	char *dir; /* absolute directory of the file */
	char *listen_host;
	int listen_port;
	enum bt_log_level log_level;
	size_t max_request_bytes;
	size_t max_payload_bytes; /* largest payload a worker may send */
	size_t memfd_min_bytes; /* payloads from this size go to workers as memfds; 0: never */
	struct bt_stage_config *stages;
	int nstages;
	struct bt_pipeline_config *pipelines;
	int npipelines;
	struct bt_stream_config *streams;
	int nstreams;
	struct bt_run_config run;
	struct bt_queue_config queue;
	json_t *written; /* top-level keys but stages and pipelines, as written (JSON) */
};

/*
 * Loads and validates path.  Returns 0 and fills *cfg, or BT_ECONFIG with a
 * one-line "FILE:LINE:COL: message" in err.  On failure *cfg holds nothing.
 */
int bt_config_load(const char *path, struct bt_config *cfg, char *err,
		   size_t errlen);
void bt_config_release(struct bt_config *cfg);

/* Same, from text in memory (path is used in messages and for resolving). */
int bt_config_parse(const char *path, const char *text, size_t len,
		    struct bt_config *cfg, char *err, size_t errlen);

/*
 * Where cmd is for a stage, as execvp would find it in the stage's
 * environment (venv/bin first; with a '/', relative to the workdir), or
 * NULL.  Malloc'd.
 */
char *bt_config_find_program(const struct bt_stage_config *st, const char *cmd);

/*
 * What `serve` and `run` need beyond a valid file: BT_ECONFIG with a
 * FILE:LINE:COL message when a stage's venv is missing or a stage's user
 * cannot be switched to.
 */
/* What check_runnable says of `user:` stages: baton is root, the user can reach the files. */
int bt_config_check_users(const struct bt_config *cfg, char *err, size_t errlen);
int bt_config_check_runnable(const struct bt_config *cfg, char *err, size_t errlen);

/* Parses "HOST:PORT" (an IP address or "localhost"); on error, why says what. */
int bt_listen_parse(const char *text, char **host, int *port, char *why, size_t whylen);
int bt_config_stage_index(const struct bt_config *cfg, const char *name);
int bt_config_pipeline_index(const struct bt_config *cfg, const char *name);
int bt_config_stream_index(const struct bt_config *cfg, const char *name);
/* The stream that source stage `stage` (an index) feeds, or -1. */
int bt_config_stream_index_of_source(const struct bt_config *cfg, int stage);

/*
 * Parses a Redis URL, redis://HOST[:PORT][/DB]; host is malloc'd.
 * BT_ECONFIG with why (a phrase) when it is not one.
 */
int bt_redis_url_parse(const char *url, char **host, int *port, int *db, char *why,
		       size_t whylen);
/* True when some stage's queue is in Redis. */
int bt_config_uses_redis(const struct bt_config *cfg);

/* Prints the resolved plan (what `baton check` shows). */
void bt_config_print_plan(const struct bt_config *cfg, FILE *out);

/*
 * The environment a stage's replicas get: parent's environ, then the venv's
 * PATH and VIRTUAL_ENV, then the stage's env, then extra ("K=V" strings,
 * NULL-terminated, may be NULL), each overriding what came before.
 */
char **bt_config_stage_environ(const struct bt_stage_config *st,
			       char *const *parent, char *const *extra);
void bt_config_free_environ(char **env);

#endif
