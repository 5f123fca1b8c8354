/*
 * The Redis side of shared stage queues (docs/scaleout.md).  Owns the
 * connections to Redis (hiredis on baton's one libuv loop), the table of
 * this node's requests waiting for an answer from the cluster, the entries
 * this node runs for others (shadow requests), claims, heartbeats and the
 * cached view of the other nodes.  It does not own requests' lifecycles:
 * the scheduler does, through struct bt_remote_queue and the bt_stage_*
 * calls.
 *
 * Connections: one for commands, one blocking reader of this node's reply
 * stream, and one blocking reader per shared stage (a blocked XREADGROUP
 * holds its connection, so each blocking reader has its own).  Any of them
 * failing takes all down (go_down), and they come back together.
 */
#include "cluster.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../proc/proc.h"
#include "../sched/sched.h"

#define BUCKETS	       4096	/* the waiting table's; chained */
#define READ_BLOCK_MS  "1000"	/* a blocked read returns this often when idle */
#define REPLY_MAXLEN   "100000" /* a dead node's reply stream stays bounded ... */
#define REPLY_TTL_MS   "600000" /* ... and goes away */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

struct bt_cluster;

struct conn {
	redisAsyncContext *ac; /* NULL: none (hiredis frees a context itself) */
	struct bt_cluster *cl;
	int connected;
	int busy;	     /* a blocking read is outstanding */
	long long client_id; /* CLIENT ID, to unblock its read; 0 = unknown */
	int unblocking;	     /* CLIENT UNBLOCK sent for the outstanding read */
};

struct shared;

/* An entry this node runs for its origin. */
struct held {
	struct held *prev, *next;
	struct shared *sh;
	char id[48]; /* the entry's stream id */
	struct bt_entry e;
	int deliveries; /* Redis's count when this node got it */
	struct bt_request *req;
};

/* A stage whose queue is a stream. */
struct shared {
	struct bt_cluster *cl;
	struct bt_stage *st;
	char *key; /* NS:q:STAGE */
	struct conn rd;
	struct held held; /* list sentinel */
	int nheld;
	int incoming;	    /* claimed, their delivery count being read */
	int claiming;	    /* an XAUTOCLAIM is outstanding */
	int claim_reserved; /* the slots it asked for */
	int claim_due;	    /* the tick asked for a claim: it goes before new entries */
	char cursor[48];    /* XAUTOCLAIM's */
	long depth;	    /* XLEN at the last tick, -1 unknown */
	uint64_t taken, claimed, retried, gave_back;
	struct bt_remote_queue ops;
};

struct bt_cluster {
	uv_loop_t *loop;
	const struct bt_config *cfg;
	const struct bt_queue_config *q;
	struct bt_cluster_hooks hooks;
	char *id; /* NAME.PID.START: this incarnation */
	char *name;
	char *reply_key, *node_key, *nodes_key, *node_prefix;
	struct conn cmd, rep;
	struct shared *sh;
	int nsh;
	int up; /* every connection ready, groups made */
	int groups_pending;
	int closing;
	int connecting; /* connect_all ran, not up yet; the retry timer bounds it */
	int ever_up;
	uv_timer_t tick, retry;
	uint64_t backoff_ms;
	uint64_t last_beat_ms, started_unix_ms;
	uint64_t ping_sent_ms;		      /* a PING awaits its answer since, 0 = none */
	uint64_t last_tick_ms;		      /* the watchdog's last look */
	char last_id[48];		      /* of the reply stream */
	char record_sha[48], refresh_sha[48]; /* the scripts, loaded on every connection */
	struct bt_request *table[BUCKETS];
	uint64_t waiting;
	uint64_t submitted, answered, duplicates, outcomes_dropped, outcomes_lost, reconnects;
	/*
	 * Entries and replies that could not be read: counted, and logged at
	 * most BAD_LOGS_PER_S a second; the rest are summed in one line.
	 */
	uint64_t bad, bad_window_ms;
	unsigned bad_logged, bad_unlogged;
	uint64_t files;
	json_t *nodes; /* the live nodes' heartbeats, from the last tick */
	char down_why[256];
};

/* Atomically: still ours?  Then append the outcome, acknowledge, delete. */
static const char record_script[] =
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)\n"
    "if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end\n"
    "if ARGV[4] == '0' then\n"
    "  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6))\n"
    "else\n"
    "  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 6))\n"
    "  redis.call('PEXPIRE', KEYS[2], ARGV[5])\n"
    "end\n"
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('XDEL', KEYS[1], ARGV[2])\n"
    "return 1\n";

/* Resets the idle time of the entries this node still owns (no delivery counted). */
static const char refresh_script[] =
    "local n = 0\n"
    "for i = 3, #ARGV do\n"
    "  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)\n"
    "  if #p > 0 and p[1][2] == ARGV[2] then\n"
    "    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

static const char GROUP[] = "baton";

static int64_t unix_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void go_down(struct bt_cluster *cl, const char *why);
static void pump_cb(void *arg, struct bt_stage *st);
static void claim(struct shared *sh, int credits);
static void read_replies(struct bt_cluster *cl);

/* ---- the table of this node's requests waiting in the cluster ------------ */

static void table_put(struct bt_cluster *cl, struct bt_request *req)
{
	struct bt_request **b = &cl->table[req->id % BUCKETS];
	req->remote_next = *b;
	*b = req;
	cl->waiting++;
}

/* Takes the request with this id out, or NULL. */
static struct bt_request *table_take(struct bt_cluster *cl, uint64_t id)
{
	for (struct bt_request **p = &cl->table[id % BUCKETS]; *p; p = &(*p)->remote_next) {
		if ((*p)->id == id) {
			struct bt_request *req = *p;
			*p = req->remote_next;
			req->remote_next = NULL;
			cl->waiting--;
			return req;
		}
	}
	return NULL;
}

/*
 * A request waiting at its origin holds the path of its payload's shared
 * file in remote_data.  Once the origin stops waiting (answered, timed out,
 * Redis lost or refusing) no one needs the file: an entry still naming it
 * fails where it is read, and that reply is a duplicate.  Deleting it here
 * is what keeps a Redis that lost its data from leaving files forever.
 */
static void drop_ref(struct bt_request *req)
{
	if (!req->remote_data)
		return;
	unlink(req->remote_data);
	free(req->remote_data);
	req->remote_data = NULL;
}

/* Ends a waiting request with an error (it was taken out of the table). */
static void answer_error(struct bt_request *req, int code, const char *why)
{
	drop_ref(req);
	req->remote = 0;
	bt_stage_remote_answer(req, (enum bt_code)code, NULL, 0, NULL, why, 0, 0);
}

void bt_cluster_fail_waiting(struct bt_cluster *cl, int code, const char *why)
{
	/* Collect first, call back second: an answer may submit the next stage. */
	struct bt_request *all = NULL;
	for (int b = 0; b < BUCKETS; b++) {
		while (cl->table[b]) {
			struct bt_request *req = table_take(cl, cl->table[b]->id);
			req->remote_next = all;
			all = req;
		}
	}
	while (all) {
		struct bt_request *req = all;
		all = req->remote_next;
		req->remote_next = NULL;
		answer_error(req, code, why);
	}
}

uint64_t bt_cluster_waiting(const struct bt_cluster *cl)
{
	return cl->waiting;
}

/* ---- connections ---------------------------------------------------------- */

static int all_connected(const struct bt_cluster *cl)
{
	if (!cl->cmd.connected || !cl->rep.connected)
		return 0;
	for (int i = 0; i < cl->nsh; i++)
		if (!cl->sh[i].rd.connected)
			return 0;
	return 1;
}

static void become_up(struct bt_cluster *cl)
{
	if (cl->up || cl->closing || cl->groups_pending || !all_connected(cl))
		return;
	cl->up = 1;
	cl->connecting = 0;
	uv_timer_stop(&cl->retry);
	cl->backoff_ms = BACKOFF_MIN_MS;
	if (cl->ever_up)
		cl->reconnects++;
	bt_info(cl->ever_up ? "reconnected to redis" : "connected to redis",
		"url=%s node=%s stages=%d", cl->q->url, cl->id, cl->nsh);
	cl->ever_up = 1;
	cl->down_why[0] = '\0';
	read_replies(cl);
	for (int i = 0; i < cl->nsh; i++)
		pump_cb(&cl->sh[i], cl->sh[i].st);
}

static void group_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct bt_cluster *cl = priv;
	redisReply *reply = r;
	(void)ac;
	if (!reply)
		return;
	if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "BUSYGROUP", 9)) {
		char why[300];
		snprintf(why, sizeof(why), "cannot create a consumer group: %s", reply->str);
		go_down(cl, why);
		return;
	}
	if (--cl->groups_pending == 0)
		become_up(cl);
}

/* The consumer groups, on the command connection (a restarted Redis lost them). */
static void make_groups(struct bt_cluster *cl)
{
	for (int i = 0; i < cl->nsh; i++) {
		if (redisAsyncCommand(cl->cmd.ac, group_cb, cl, "XGROUP CREATE %s %s 0 MKSTREAM",
				      cl->sh[i].key, GROUP) == REDIS_OK)
			cl->groups_pending++;
	}
}

static void client_id_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct conn *c = priv;
	redisReply *reply = r;
	if (reply && reply->type == REDIS_REPLY_INTEGER && c->ac == ac)
		c->client_id = reply->integer;
}

/*
 * AUTH's answer comes before every other on its connection: a refused
 * password ends the connection (and, through go_down, retries with
 * backoff: the password file is read again only by a restart).
 */
static void auth_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct conn *c = priv;
	redisReply *reply = r;
	if (!reply || c->ac != ac || reply->type != REDIS_REPLY_ERROR)
		return;
	char why[300];
	snprintf(why, sizeof(why), "refused queue.password_file's password: %s", reply->str);
	go_down(c->cl, why);
}

static void connect_cb(const redisAsyncContext *ac, int status)
{
	struct conn *c = ac->data;
	struct bt_cluster *cl = c->cl;
	if (c->ac != ac)
		return;
	if (status != REDIS_OK) {
		char why[300];
		snprintf(why, sizeof(why), "%s", ac->errstr[0] ? ac->errstr : "cannot connect");
		c->ac = NULL; /* hiredis frees it after this callback */
		go_down(cl, why);
		return;
	}
	c->connected = 1;
	if (cl->q->password && cl->q->user)
		redisAsyncCommand(c->ac, auth_cb, c, "AUTH %s %s", cl->q->user, cl->q->password);
	else if (cl->q->password)
		redisAsyncCommand(c->ac, auth_cb, c, "AUTH %s", cl->q->password);
	if (cl->q->db)
		redisAsyncCommand(c->ac, NULL, NULL, "SELECT %d", cl->q->db);
	if (c != &cl->cmd)
		redisAsyncCommand(c->ac, client_id_cb, c, "CLIENT ID");
	if (c == &cl->cmd) {
		/* Before any EVALSHA on this connection: a restarted Redis forgot them. */
		redisAsyncCommand(c->ac, NULL, NULL, "SCRIPT LOAD %s", record_script);
		redisAsyncCommand(c->ac, NULL, NULL, "SCRIPT LOAD %s", refresh_script);
		make_groups(cl);
	}
	become_up(cl);
}

static void disconnect_cb(const redisAsyncContext *ac, int status)
{
	struct conn *c = ac->data;
	(void)status;
	if (c->ac != ac)
		return; /* dropped by us */
	char why[300];
	snprintf(why, sizeof(why), "%s",
		 ac->errstr[0] ? ac->errstr : "the server closed the connection");
	c->ac = NULL;
	c->connected = 0;
	go_down(c->cl, why);
}

static int conn_open(struct bt_cluster *cl, struct conn *c)
{
	c->cl = cl;
	c->connected = c->busy = c->unblocking = 0;
	c->client_id = 0;
	redisAsyncContext *ac = redisAsyncConnect(cl->q->host, cl->q->port);
	if (!ac)
		return -1;
	if (ac->err || redisLibuvAttach(ac, cl->loop) != REDIS_OK) {
		redisAsyncFree(ac);
		return -1;
	}
	ac->data = c;
	redisAsyncSetConnectCallback(ac, connect_cb);
	redisAsyncSetDisconnectCallback(ac, disconnect_cb);
	c->ac = ac;
	return 0;
}

/* Frees c's context; its pending callbacks run now with no reply. */
static void conn_drop(struct conn *c)
{
	redisAsyncContext *ac = c->ac;
	c->ac = NULL;
	c->connected = c->busy = 0;
	if (ac)
		redisAsyncFree(ac);
}

static void retry_cb(uv_timer_t *t);

/* A command on the command connection, when there is one. */
static int cmdf(struct bt_cluster *cl, redisCallbackFn *fn, void *priv, const char *fmt, ...)
{
	va_list ap;
	if (!cl->cmd.ac || !cl->cmd.connected)
		return -1;
	va_start(ap, fmt);
	int r = redisvAsyncCommand(cl->cmd.ac, fn, priv, fmt, ap);
	va_end(ap);
	return r == REDIS_OK ? 0 : -1;
}

static void connect_timeout_cb(uv_timer_t *t)
{
	go_down(t->data, "no answer within 2 s of connecting");
}

static void connect_all(struct bt_cluster *cl)
{
	cl->groups_pending = 0;
	cl->connecting = 1;
	/*
	 * hiredis 0.14's libuv adapter drops poll errors (a refused connect
	 * comes as one), leaving the context waiting forever: the attempt is
	 * bounded here instead.
	 */
	uv_timer_start(&cl->retry, connect_timeout_cb, 2000, 0);
	int bad = conn_open(cl, &cl->cmd) || conn_open(cl, &cl->rep);
	for (int i = 0; !bad && i < cl->nsh; i++)
		bad = conn_open(cl, &cl->sh[i].rd);
	if (bad)
		go_down(cl, "cannot open a connection");
}

static void retry_cb(uv_timer_t *t)
{
	struct bt_cluster *cl = t->data;
	if (!cl->closing)
		connect_all(cl);
}

/*
 * Any connection failed: all go, every request of this node waiting in the
 * cluster is answered now (docs/scaleout.md, "When Redis is unavailable"),
 * and a reconnection is due after the backoff.
 */
static void go_down(struct bt_cluster *cl, const char *why)
{
	int was_up = cl->up;
	cl->up = 0;
	cl->ping_sent_ms = 0;
	conn_drop(&cl->cmd);
	conn_drop(&cl->rep);
	for (int i = 0; i < cl->nsh; i++)
		conn_drop(&cl->sh[i].rd);
	if (cl->closing)
		return;
	char down_why[sizeof(cl->down_why)];
	snprintf(down_why, sizeof(down_why), "lost the connection to redis at %s (%s)", cl->q->url,
		 why);
	/* Once per loss, and again when the reason changes (say, a password refused). */
	if (was_up || strcmp(down_why, cl->down_why))
		bt_warn(was_up ? "lost the connection to redis" : "cannot reach redis",
			"url=%s error=%s waiting=%llu retry_ms=%llu", cl->q->url, BT_LOGQ(why),
			(unsigned long long)cl->waiting, (unsigned long long)cl->backoff_ms);
	memcpy(cl->down_why, down_why, sizeof(down_why));
	if (cl->waiting) {
		char msg[512];
		snprintf(
		    msg, sizeof(msg),
		    "%s while the request was in the cluster's queue: it may or may not have run",
		    cl->down_why);
		bt_cluster_fail_waiting(cl, BT_STAGE_FAILED, msg);
	}
	if (was_up || cl->connecting) {
		cl->connecting = 0;
		uv_timer_start(&cl->retry, retry_cb, cl->backoff_ms, 0);
		cl->backoff_ms = BT_MIN(cl->backoff_ms * 2, (uint64_t)BACKOFF_MAX_MS);
	}
}

/* ---- payloads in the shared directory ------------------------------------- */

/* Writes a payload to the shared directory; the path (malloc'd) or NULL. */
static char *write_shared(struct bt_cluster *cl, const char *data, size_t len, uint64_t req,
			  int step, const char *what)
{
	char *path =
	    bt_asprintf("%s/%s-%llu-%d-%llu.%s", cl->q->shared_dir, cl->id, (unsigned long long)req,
			step, (unsigned long long)++cl->files, what);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	size_t off = 0;
	while (fd >= 0 && off < len) {
		ssize_t w = write(fd, data + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	if (fd < 0 || off < len || close(fd)) {
		bt_warn("cannot write a payload to the shared directory: sending it inline",
			"path=%s error=%s", path, BT_LOGQ(bt_strerror(-errno)));
		if (fd >= 0)
			unlink(path);
		free(path);
		return NULL;
	}
	return path;
}

/* Puts the payload in e: inline, or by reference when large and a shared directory is set. */
static void set_payload(struct bt_cluster *cl, struct bt_entry *e, const char *data, size_t len,
			const char *what)
{
	e->len = len;
	if (cl->q->shared_dir && len > cl->q->inline_max_bytes)
		e->ref = write_shared(cl, data, len, e->req, e->step, what);
	if (!e->ref)
		e->payload = (char *)data; /* borrowed: the caller clears it before release */
}

/*
 * Whether ref names a file directly in this node's shared directory, as
 * write_shared makes them.  A reference comes from Redis, where anyone
 * who can write may put one: the file is read for a worker, its bytes go
 * to the reply stream the entry names, and it is deleted afterwards, so
 * any other path would let a Redis client read or delete any file baton
 * can.
 */
static int shared_ref_ok(const struct bt_cluster *cl, const char *ref)
{
	const char *dir = cl->q->shared_dir;
	size_t dl = dir ? strlen(dir) : 0;
	if (!dir || strncmp(ref, dir, dl) || ref[dl] != '/')
		return 0;
	const char *name = ref + dl + 1;
	return *name && !strchr(name, '/') && strcmp(name, ".") && strcmp(name, "..");
}

/*
 * A reference outside the shared directory is dropped from e (never read,
 * never deleted) and e becomes a failure: 1 when that happened.
 */
static int refuse_foreign_ref(const struct bt_cluster *cl, struct bt_entry *e, const char *key,
			      const char *id)
{
	if (!e->ref || shared_ref_ok(cl, e->ref))
		return 0;
	bt_warn("refused a payload reference outside queue.shared_dir: the file is not touched",
		"stream=%s id=%s ref=%s shared_dir=%s", key, id, BT_LOGQ(e->ref),
		BT_LOGQ(cl->q->shared_dir ? cl->q->shared_dir : "(none)"));
	free(e->ref);
	e->ref = NULL;
	return 1;
}

/* The largest payload a stage may be given: a client's request or a worker's answer. */
static size_t payload_max(const struct bt_cluster *cl)
{
	return BT_MAX(cl->cfg->max_request_bytes, cl->cfg->max_payload_bytes);
}

/* The payload of e, owned by the caller; the shared file is removed when told. */
static int take_payload(struct bt_entry *e, size_t max, char **data, size_t *len, int remove_file,
			char *why, size_t whylen)
{
	if (!e->ref) {
		if (e->len > max) { /* the origin checked it; another Redis client may not have */
			snprintf(why, whylen, "the entry's payload of %zu bytes is over %zu",
				 e->len, max);
			return BT_EPROTO;
		}
		*data = e->payload;
		*len = e->len;
		e->payload = NULL;
		return 0;
	}
	int r = bt_read_file_at(AT_FDCWD, e->ref, O_NOFOLLOW, max, data, len, NULL);
	if (r) {
		snprintf(why, whylen, "cannot read the payload from the shared directory '%s': %s",
			 e->ref, bt_strerror(r));
		return r;
	}
	/* Truncated or replaced meanwhile: better an error than other bytes. */
	if (*len != e->len) {
		snprintf(why, whylen,
			 "the payload in the shared directory '%s' has %zu bytes, its entry says "
			 "%zu (truncated or replaced)",
			 e->ref, *len, e->len);
		free(*data);
		*data = NULL;
		return BT_EPROTO;
	}
	if (remove_file)
		unlink(e->ref);
	return 0;
}

/* ---- the origin: submit and answers --------------------------------------- */

static void submit_done_cb(redisAsyncContext *ac, void *r, void *priv)
{
	redisReply *reply = r;
	struct bt_cluster *cl = ((struct conn *)ac->data)->cl;
	if (!reply || reply->type != REDIS_REPLY_ERROR)
		return;
	struct bt_request *req = table_take(cl, (uint64_t)(uintptr_t)priv);
	if (req) {
		char why[512];
		snprintf(why, sizeof(why), "redis at %s refused the request's entry: %s",
			 cl->q->url, reply->str);
		answer_error(req, BT_STAGE_FAILED, why); /* its shared file goes too */
	}
}

static int argv_command(struct conn *c, redisCallbackFn *fn, void *priv, int argc,
			const char **argv, const size_t *lens)
{
	if (!c->ac || !c->connected)
		return -1;
	return redisAsyncCommandArgv(c->ac, fn, priv, argc, argv, lens) == REDIS_OK ? 0 : -1;
}

static int submit_cb(void *arg, struct bt_stage *st, struct bt_request *req, char *why,
		     size_t whylen)
{
	struct shared *sh = arg;
	struct bt_cluster *cl = sh->cl;
	if (!cl->up) {
		snprintf(why, whylen, "the queue of stage '%s' is unavailable: %s", st->cfg->name,
			 cl->down_why[0] ? cl->down_why : "not connected to redis yet");
		return -1;
	}
	struct bt_entry e = {0};
	e.origin = cl->id;
	e.req = req->id;
	e.step = req->step;
	e.stage = (char *)st->cfg->name;
	e.pipeline = (char *)req->pipeline->cfg->name;
	e.priority = req->priority;
	uint64_t now = bt_now_ms();
	e.deadline_unix_ms =
	    unix_ms() + (int64_t)(req->deadline.key > now ? req->deadline.key - now : 0);
	e.meta = json_dumps(req->meta, JSON_COMPACT);
	set_payload(cl, &e, req->payload, req->len, "in");
	const char *argv[BT_ENTRY_MAX_FIELDS + 3];
	size_t lens[BT_ENTRY_MAX_FIELDS + 3];
	char scratch[BT_ENTRY_SCRATCH];
	argv[0] = "XADD";
	argv[1] = sh->key;
	argv[2] = "*";
	lens[0] = 4;
	lens[1] = strlen(sh->key);
	lens[2] = 1;
	int n = 3 + bt_entry_fields(&e, argv + 3, lens + 3, scratch);
	int r = argv_command(&cl->cmd, submit_done_cb, (void *)(uintptr_t)req->id, n, argv, lens);
	free(e.meta);
	if (r) {
		if (e.ref)
			unlink(e.ref);
		free(e.ref);
		snprintf(why, whylen,
			 "the queue of stage '%s' is unavailable: cannot send to redis",
			 st->cfg->name);
		return -1;
	}
	/* The payload lives in the entry now: the answer brings the next one. */
	bt_payload_free(req->payload, req->len, req->payload_fd); /* may be a mapped memfd */
	req->payload = NULL;
	req->len = 0;
	req->payload_fd = -1;
	req->remote_data = e.ref;
	table_put(cl, req);
	cl->submitted++;
	return 0;
}

static void forget_cb(void *arg, struct bt_request *req)
{
	struct shared *sh = arg;
	table_take(sh->cl, req->id);
	drop_ref(req);
}

/* One reply on this node's reply stream. */
static void on_reply(struct bt_cluster *cl, struct bt_entry *e)
{
	struct bt_request *req = table_take(cl, e->req);
	if (req && (req->step != e->step || strcmp(e->origin, cl->id))) {
		table_put(cl, req); /* an old step's late reply */
		req = NULL;
	}
	if (!req) {
		cl->duplicates++;
		bt_debug("dropped a duplicate or late reply", "request=%llu step=%d from=%s",
			 (unsigned long long)e->req, e->step, e->node);
		if (e->ref)
			unlink(e->ref);
		return;
	}
	cl->answered++;
	drop_ref(req);
	char *payload = NULL, why[512];
	size_t len = 0;
	if (e->code == BT_OK &&
	    take_payload(e, payload_max(cl), &payload, &len, 1, why, sizeof(why))) {
		answer_error(req, BT_WORKER_ERROR, why);
		return;
	}
	json_t *meta = e->meta ? json_loads(e->meta, 0, NULL) : NULL;
	req->remote = 0;
	bt_stage_remote_answer(req, (enum bt_code)e->code, payload, len, meta, e->error,
			       e->queue_us, e->run_us);
}

/* The entries of an XREAD/XREADGROUP answer for one stream, or NULL (none, or malformed). */
static const redisReply *stream_entries(const redisReply *reply)
{
	if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 1)
		return NULL;
	const redisReply *s = reply->element[0];
	if (s->type != REDIS_REPLY_ARRAY || s->elements != 2 ||
	    s->element[1]->type != REDIS_REPLY_ARRAY)
		return NULL;
	return s->element[1];
}

/* Field/value arrays of a stream entry as argv for the codec. */
static int entry_fields(const redisReply *fields, const char **argv, size_t *lens, int max)
{
	if (!fields || fields->type != REDIS_REPLY_ARRAY || fields->elements > (size_t)max)
		return -1;
	for (size_t i = 0; i < fields->elements; i++) {
		const redisReply *f = fields->element[i];
		if (f->type != REDIS_REPLY_STRING)
			return -1;
		argv[i] = f->str;
		lens[i] = f->len;
	}
	return (int)fields->elements;
}

#define BAD_LOGS_PER_S 10

/* Says how many warnings about bad entries were left out, if any. */
static void bad_summary(struct bt_cluster *cl)
{
	if (cl->bad_unlogged)
		bt_warn("left out warnings about bad entries and replies", "count=%u total=%llu",
			cl->bad_unlogged, (unsigned long long)cl->bad);
	cl->bad_unlogged = 0;
}

/*
 * Counts one bad entry or reply; 1 when it may be logged.  A writer that
 * floods a stream with garbage must not flood the log too (nor its disk).
 */
static int bad_entry(struct bt_cluster *cl)
{
	uint64_t now = bt_now_ms();
	cl->bad++;
	if (now - cl->bad_window_ms >= 1000) {
		bad_summary(cl);
		cl->bad_window_ms = now;
		cl->bad_logged = 0;
	}
	if (cl->bad_logged < BAD_LOGS_PER_S) {
		cl->bad_logged++;
		return 1;
	}
	cl->bad_unlogged++;
	return 0;
}

#define MAX_FIELDS 64

static void replies_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct bt_cluster *cl = priv;
	redisReply *reply = r;
	(void)ac;
	cl->rep.busy = 0;
	if (!reply)
		return;
	if (reply->type == REDIS_REPLY_ERROR) {
		go_down(cl, reply->str);
		return;
	}
	const redisReply *entries = stream_entries(reply);
	if (entries) {
		const char *del[2 + 512];
		size_t dlen[2 + 512];
		int nd = 2;
		del[0] = "XDEL";
		dlen[0] = 4;
		del[1] = cl->reply_key;
		dlen[1] = strlen(cl->reply_key);
		for (size_t i = 0; i < entries->elements; i++) {
			const redisReply *en = entries->element[i];
			const char *argv[MAX_FIELDS];
			size_t lens[MAX_FIELDS];
			char why[200];
			struct bt_entry e;
			if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 ||
			    en->element[0]->type != REDIS_REPLY_STRING)
				continue;
			snprintf(cl->last_id, sizeof(cl->last_id), "%s", en->element[0]->str);
			if (nd < (int)(sizeof(del) / sizeof(del[0]))) {
				del[nd] = en->element[0]->str;
				dlen[nd++] = en->element[0]->len;
			}
			int n = entry_fields(en->element[1], argv, lens, MAX_FIELDS);
			if (n < 0 || bt_entry_decode(&e, 1, argv, lens, n, why, sizeof(why))) {
				if (bad_entry(cl))
					bt_warn("ignored a bad reply", "stream=%s id=%s error=%s",
						cl->reply_key, en->element[0]->str,
						BT_LOGQ(n < 0 ? "not fields" : why));
				continue;
			}
			if (refuse_foreign_ref(cl, &e, cl->reply_key, en->element[0]->str) &&
			    e.code == BT_OK) {
				e.code = BT_WORKER_ERROR;
				free(e.error);
				e.error =
				    bt_strdup("the reply's payload reference is not a file of "
					      "queue.shared_dir");
			}
			on_reply(cl, &e);
			bt_entry_release(&e);
			if (!cl->up)
				return; /* an answer took the connection down: the reply is gone */
		}
		argv_command(&cl->cmd, NULL, NULL, nd, del, dlen);
	}
	read_replies(cl);
}

static void read_replies(struct bt_cluster *cl)
{
	if (!cl->up || cl->rep.busy || cl->closing)
		return;
	if (redisAsyncCommand(cl->rep.ac, replies_cb, cl,
			      "XREAD COUNT 512 BLOCK " READ_BLOCK_MS " STREAMS %s %s",
			      cl->reply_key, cl->last_id) == REDIS_OK)
		cl->rep.busy = 1;
}

/* ---- running entries for other nodes -------------------------------------- */

/*
 * The shared files of an outcome being recorded: the input's, deleted once
 * the outcome is in; the answer's, deleted when it is not (no reply names it).
 */
struct recording {
	char *input, *answer;
};

static void recording_free(struct recording *rec, int recorded)
{
	if (recorded && rec->input)
		unlink(rec->input);
	if (!recorded && rec->answer)
		unlink(rec->answer);
	free(rec->input);
	free(rec->answer);
	free(rec);
}

static void recorded_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct bt_cluster *cl = ((struct conn *)ac->data)->cl;
	redisReply *reply = r;
	struct recording *rec = priv;
	int recorded = 0;
	if (!reply) {
		cl->outcomes_lost++;
		/* Whether the script ran is unknown: a reply may name the answer's file. */
		free(rec->answer);
		rec->answer = NULL;
	} else if (reply->type == REDIS_REPLY_ERROR) {
		cl->outcomes_lost++;
		bt_warn("cannot record an outcome in redis", "error=%s", BT_LOGQ(reply->str));
	} else if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0) {
		/* Claimed by another node while this one was stalled: its outcome counts. */
		cl->outcomes_dropped++;
		bt_warn("dropped an outcome: the entry was claimed by another node", "%s", "");
	} else {
		recorded = 1;
	}
	recording_free(rec, recorded);
}

/*
 * Records what became of held entry h: out (an entry for the stage's
 * stream, or a reply for the origin's) replaces it atomically, if this node
 * still owns it.  input (malloc'd or NULL) is the input's shared file, to
 * delete once recorded.
 */
static void record(struct held *h, struct bt_entry *out, const char *target, int is_reply,
		   char *input)
{
	struct shared *sh = h->sh;
	struct bt_cluster *cl = sh->cl;
	const char *argv[BT_ENTRY_MAX_FIELDS + 16];
	size_t lens[BT_ENTRY_MAX_FIELDS + 16];
	char scratch[BT_ENTRY_SCRATCH];
	const char *head[] = {"EVALSHA",   cl->record_sha, "2",
			      sh->key,	   target,	   GROUP,
			      h->id,	   cl->id,	   is_reply ? REPLY_MAXLEN : "0",
			      REPLY_TTL_MS};
	int n = (int)(sizeof(head) / sizeof(head[0]));
	for (int i = 0; i < n; i++) {
		argv[i] = head[i];
		lens[i] = strlen(head[i]);
	}
	n += bt_entry_fields(out, argv + n, lens + n, scratch);
	struct recording *rec = bt_calloc(1, sizeof(*rec));
	rec->input = input;
	/* A retry's entry names the input's own file, which stays with the entry. */
	rec->answer = is_reply && out->ref ? bt_strdup(out->ref) : NULL;
	if (!cl->up || argv_command(&cl->cmd, recorded_cb, rec, n, argv, lens)) {
		cl->outcomes_lost++;
		recording_free(rec, 0);
	}
}

static void held_free(struct held *h)
{
	bt_entry_release(&h->e);
	free(h);
}

/* An outcome without running (deadline passed, attempts used up, bad payload). */
static void reply_now(struct held *h, int code, const char *error)
{
	struct bt_cluster *cl = h->sh->cl;
	struct bt_entry out = {0};
	char *target = bt_asprintf("%s:r:%s", cl->q->ns, h->e.origin);
	out.reply = 1;
	out.origin = h->e.origin;
	out.req = h->e.req;
	out.step = h->e.step;
	out.node = cl->id;
	out.code = code;
	out.error = (char *)error;
	out.payload = "";
	record(h, &out, target, 1, h->e.ref ? bt_strdup(h->e.ref) : NULL);
	free(target);
}

static void shadow_done_cb(struct bt_request *req, void *arg)
{
	struct held *h = arg;
	struct shared *sh = h->sh;
	struct bt_cluster *cl = sh->cl;
	h->prev->next = h->next;
	h->next->prev = h->prev;
	sh->nheld--;
	if (!cl->up) {
		/* Nobody can be told: the origin answered its client when the connection went. */
		cl->outcomes_lost++;
	} else if (req->code == BT_SHUTTING_DOWN || req->code == BT_STAGE_FAILED ||
		   req->retry_elsewhere) {
		/*
		 * Back to the stage's stream for any node: a retry (this attempt
		 * counted) or a give-back (this node could not run it: not counted).
		 */
		struct bt_entry out = h->e;
		out.tries = req->retry_elsewhere ? req->attempts : h->e.tries + h->deliveries - 1;
		if (!out.ref) { /* the request holds the input it was given (a failure kept it) */
			out.payload = req->payload;
			out.len = req->len;
		}
		if (req->retry_elsewhere)
			sh->retried++;
		else
			sh->gave_back++;
		record(h, &out, sh->key, 0, NULL);
	} else {
		struct bt_entry out = {0};
		char *target = bt_asprintf("%s:r:%s", cl->q->ns, h->e.origin);
		out.reply = 1;
		out.origin = h->e.origin;
		out.req = h->e.req;
		out.step = h->e.step;
		out.node = cl->id;
		out.code = req->code;
		out.error = req->error;
		out.queue_us = req->timings[0].queue_us;
		out.run_us = req->timings[0].run_us;
		if (req->code == BT_OK) {
			out.meta = json_dumps(req->meta, JSON_COMPACT);
			set_payload(cl, &out, req->payload, req->len, "out");
		}
		record(h, &out, target, 1, h->e.ref ? bt_strdup(h->e.ref) : NULL);
		free(out.meta);
		free(out.ref);
		free(target);
	}
	bt_request_free(req);
	held_free(h);
	pump_cb(sh, sh->st);
}

/* Runs held entry h, delivered `deliveries` times so far. */
static void start_held(struct held *h, int deliveries)
{
	struct shared *sh = h->sh;
	struct bt_cluster *cl = sh->cl;
	const struct bt_stage_config *sc = sh->st->cfg;
	char why[512];
	h->deliveries = deliveries;
	int before = h->e.tries + deliveries - 1; /* attempts made anywhere */
	sh->taken++;
	if (h->e.deadline_unix_ms && unix_ms() > h->e.deadline_unix_ms) {
		reply_now(h, BT_TIMEOUT,
			  "the request waited in the cluster's queue past its deadline");
		held_free(h);
		return;
	}
	if (before > sc->retries) {
		snprintf(why, sizeof(why),
			 "the nodes running this request stopped answering (killed or stalled) "
			 "after %d attempt%s in total",
			 before, before == 1 ? "" : "s");
		bt_warn("request exhausted its attempts across the cluster",
			"stage=%s origin=%s request=%llu attempts=%d", sc->name, h->e.origin,
			(unsigned long long)h->e.req, before);
		reply_now(h, BT_WORKER_CRASHED, why);
		held_free(h);
		return;
	}
	char *payload;
	size_t len;
	if (take_payload(&h->e, payload_max(cl), &payload, &len, 0, why, sizeof(why))) {
		reply_now(h, BT_WORKER_ERROR, why);
		held_free(h);
		return;
	}
	json_t *meta = h->e.meta ? json_loads(h->e.meta, 0, NULL) : NULL;
	struct bt_request *req = bt_request_new_shadow(sh->st, payload, len, meta);
	req->attempts = before;
	req->priority = BT_MIN(h->e.priority, sc->priority_levels - 1);
	if (h->e.deadline_unix_ms)
		req->client_deadline_ms =
		    bt_now_ms() + (uint64_t)(h->e.deadline_unix_ms - unix_ms());
	req->remote_data = h;
	h->req = req;
	h->next = &sh->held;
	h->prev = sh->held.prev;
	sh->held.prev->next = h;
	sh->held.prev = h;
	sh->nheld++;
	(void)cl;
	bt_stage_execute(req, shadow_done_cb, h);
}

/* Decodes a stream entry into a held record, or acknowledges and drops a bad one. */
static struct held *take_entry(struct shared *sh, const redisReply *en)
{
	struct bt_cluster *cl = sh->cl;
	const char *argv[MAX_FIELDS];
	size_t lens[MAX_FIELDS];
	char why[200] = "not a list of fields";
	if (en->type != REDIS_REPLY_ARRAY || en->elements != 2 ||
	    en->element[0]->type != REDIS_REPLY_STRING)
		return NULL;
	const char *id = en->element[0]->str;
	struct held *h = bt_calloc(1, sizeof(*h));
	h->sh = sh;
	snprintf(h->id, sizeof(h->id), "%s", id);
	int n = entry_fields(en->element[1], argv, lens, MAX_FIELDS);
	if (n < 0 || bt_entry_decode(&h->e, 0, argv, lens, n, why, sizeof(why))) {
		if (bad_entry(cl))
			bt_warn("dropped a bad entry", "stream=%s id=%s error=%s", sh->key, id,
				BT_LOGQ(n < 0 ? "not fields" : why));
		/* Its origin, if it can be read, gets an answer rather than a timeout. */
		for (int i = 0; n > 0 && i + 1 < n; i += 2) {
			if (!strcmp(argv[i], "o") && !memchr(argv[i + 1], '\0', lens[i + 1])) {
				free(h->e.origin); /* a writer may repeat a field */
				h->e.origin = bt_strndup(argv[i + 1], lens[i + 1]);
			} else if (!strcmp(argv[i], "r"))
				h->e.req = strtoull(argv[i + 1], NULL, 10);
			else if (!strcmp(argv[i], "s"))
				h->e.step = atoi(argv[i + 1]);
		}
		if (h->e.origin && h->e.req) {
			char msg[300];
			snprintf(msg, sizeof(msg),
				 "the request's entry in redis could not be read: %s", why);
			reply_now(h, BT_WORKER_ERROR, msg);
		} else {
			cmdf(cl, NULL, NULL, "XACK %s %s %s", sh->key, GROUP, id);
			cmdf(cl, NULL, NULL, "XDEL %s %s", sh->key, id);
		}
		held_free(h);
		return NULL;
	}
	if (refuse_foreign_ref(cl, &h->e, sh->key, id)) {
		reply_now(h, BT_WORKER_ERROR,
			  "the entry's payload reference is not a file of queue.shared_dir");
		held_free(h);
		return NULL;
	}
	return h;
}

static void entries_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct shared *sh = priv;
	redisReply *reply = r;
	(void)ac;
	sh->rd.busy = sh->rd.unblocking = 0;
	if (!reply)
		return;
	if (reply->type == REDIS_REPLY_ERROR) {
		go_down(sh->cl, reply->str); /* NOGROUP: the server lost its data; start over */
		return;
	}
	const redisReply *entries = stream_entries(reply);
	if (entries) {
		for (size_t i = 0; i < entries->elements; i++) {
			struct held *h = take_entry(sh, entries->element[i]);
			if (h)
				start_held(h, 1);
		}
	}
	pump_cb(sh, sh->st);
}

/* Reads as many entries as this node has free slots for: credits, no prefetch. */
static void pump_cb(void *arg, struct bt_stage *st)
{
	struct shared *sh = arg;
	struct bt_cluster *cl = sh->cl;
	if (!cl->up || cl->closing)
		return;
	int draining = cl->hooks.draining(cl->hooks.arg);
	if (draining && cl->waiting == 0) {
		/*
		 * A read left blocked would take entries this node no longer
		 * wants, and they would wait for a claim; unblocked, it returns
		 * nothing, or what Redis had already handed over, which this
		 * node then finishes before it stops.
		 */
		if (sh->rd.busy && !sh->rd.unblocking && sh->rd.client_id &&
		    !cmdf(cl, NULL, NULL, "CLIENT UNBLOCK %lld", sh->rd.client_id))
			sh->rd.unblocking = 1;
		return;
	}
	int credits = bt_stage_free_slots(st) - sh->incoming - sh->claim_reserved;
	if (credits <= 0)
		return;
	if (sh->claim_due && !sh->claiming && !draining) {
		claim(sh, credits);
		credits -= sh->claim_reserved;
	}
	if (sh->rd.busy || credits <= 0)
		return;
	if (redisAsyncCommand(sh->rd.ac, entries_cb, sh,
			      "XREADGROUP GROUP %s %s COUNT %d BLOCK " READ_BLOCK_MS
			      " STREAMS %s >",
			      GROUP, cl->id, credits, sh->key) == REDIS_OK)
		sh->rd.busy = 1;
}

/* ---- claims ---------------------------------------------------------------- */

static void delivery_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct held *h = priv;
	redisReply *reply = r;
	struct shared *sh = h->sh;
	(void)ac;
	sh->incoming--;
	/* [[id, consumer, idle, deliveries]] while this node still owns it. */
	if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 1 ||
	    reply->element[0]->type != REDIS_REPLY_ARRAY || reply->element[0]->elements != 4 ||
	    reply->element[0]->element[1]->type != REDIS_REPLY_STRING ||
	    reply->element[0]->element[3]->type != REDIS_REPLY_INTEGER ||
	    strcmp(reply->element[0]->element[1]->str, sh->cl->id)) {
		held_free(h);
		return;
	}
	sh->claimed++;
	bt_info("claimed an entry of a silent node", "stage=%s id=%s origin=%s deliveries=%lld",
		sh->st->cfg->name, h->id, h->e.origin, reply->element[0]->element[3]->integer);
	start_held(h, (int)reply->element[0]->element[3]->integer);
	pump_cb(sh, sh->st);
}

static void claimed_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct shared *sh = priv;
	struct bt_cluster *cl = sh->cl;
	redisReply *reply = r;
	(void)ac;
	sh->claiming = 0;
	sh->claim_reserved = 0;
	if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 ||
	    reply->element[0]->type != REDIS_REPLY_STRING ||
	    reply->element[1]->type != REDIS_REPLY_ARRAY)
		return;
	snprintf(sh->cursor, sizeof(sh->cursor), "%s", reply->element[0]->str);
	const redisReply *entries = reply->element[1];
	/* Nothing more to claim until the next tick, unless the scan goes on. */
	if (!entries->elements && !strcmp(sh->cursor, "0-0"))
		sh->claim_due = 0;
	for (size_t i = 0; i < entries->elements; i++) {
		struct held *h = take_entry(sh, entries->element[i]);
		if (!h)
			continue;
		/* XAUTOCLAIM does not say how often it was delivered: XPENDING does. */
		if (!cmdf(cl, delivery_cb, h, "XPENDING %s %s %s %s 1", sh->key, GROUP, h->id,
			  h->id))
			sh->incoming++;
		else
			held_free(h);
	}
	/* The slots the claim did not fill go to new entries now, not at the next tick. */
	pump_cb(sh, sh->st);
}

/*
 * Claims entries idle longer than claim_after_ms (a dead or stalled node's)
 * for up to credits free slots.  Called before new entries are read, so
 * that a busy cluster still recovers a dead node's work promptly.
 */
static void claim(struct shared *sh, int credits)
{
	struct bt_cluster *cl = sh->cl;
	char idle[24];
	snprintf(idle, sizeof(idle), "%llu", (unsigned long long)cl->q->claim_after_ms);
	if (!cmdf(cl, claimed_cb, sh, "XAUTOCLAIM %s %s %s %s %s COUNT %d", sh->key, GROUP, cl->id,
		  idle, sh->cursor, credits)) {
		sh->claiming = 1;
		sh->claim_reserved = credits;
	}
}

/* Keeps this node's entries from looking idle, however long they run. */
static void refresh(struct shared *sh)
{
	struct bt_cluster *cl = sh->cl;
	if (!cl->up || !sh->nheld)
		return;
	int n = 0, max = 6 + sh->nheld;
	const char **argv = bt_calloc((size_t)max, sizeof(*argv));
	size_t *lens = bt_calloc((size_t)max, sizeof(*lens));
	argv[n++] = "EVALSHA";
	argv[n++] = cl->refresh_sha;
	argv[n++] = "1";
	argv[n++] = sh->key;
	argv[n++] = GROUP;
	argv[n++] = cl->id;
	for (struct held *h = sh->held.next; h != &sh->held && n < max; h = h->next)
		argv[n++] = h->id;
	for (int i = 0; i < n; i++)
		lens[i] = strlen(argv[i]);
	argv_command(&cl->cmd, NULL, NULL, n, argv, lens);
	free(argv);
	free(lens);
}

/* ---- heartbeats and the view of the cluster -------------------------------- */

static json_t *node_doc(struct bt_cluster *cl)
{
	json_t *stages = json_object();
	for (int i = 0; i < cl->nsh; i++) {
		struct bt_stage *st = cl->sh[i].st;
		int ready = 0, active = 0;
		for (int r = 0; r < st->nreplicas; r++) {
			active += st->replicas[r]->active;
			ready += st->replicas[r]->state == BT_REPLICA_READY;
		}
		json_object_set_new(stages, st->cfg->name,
				    json_pack("{s:i, s:i, s:I, s:I, s:i}", "replicas", active,
					      "ready", ready, "running", (json_int_t)st->running,
					      "queued", (json_int_t)st->queue.len, "held",
					      cl->sh[i].nheld));
	}
	json_t *doc =
	    json_pack("{s:s, s:s, s:s, s:i, s:i, s:I, s:b}", "id", cl->id, "name", cl->name, "host",
		      cl->cfg->listen_host, "port", cl->cfg->listen_port, "pid", (int)getpid(),
		      "started_unix_ms", (json_int_t)cl->started_unix_ms, "draining",
		      cl->hooks.draining(cl->hooks.arg));
	json_object_set_new(doc, "stages", stages);
	json_object_set_new(doc, "waiting", json_integer((json_int_t)cl->waiting));
	return doc;
}

static void mget_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct bt_cluster *cl = priv;
	redisReply *reply = r;
	(void)ac;
	if (!reply || reply->type != REDIS_REPLY_ARRAY)
		return;
	json_t *nodes = json_array();
	for (size_t i = 0; i < reply->elements; i++) {
		const redisReply *v = reply->element[i];
		json_t *doc = v->type == REDIS_REPLY_STRING ? json_loads(v->str, 0, NULL) : NULL;
		if (json_is_object(doc))
			json_array_append_new(nodes, doc);
		else
			json_decref(doc);
	}
	json_decref(cl->nodes);
	cl->nodes = nodes;
}

static void members_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct bt_cluster *cl = priv;
	redisReply *reply = r;
	(void)ac;
	if (!reply || reply->type != REDIS_REPLY_ARRAY || !reply->elements || !cl->up)
		return;
	size_t n = reply->elements;
	const char **argv = bt_calloc(n + 1, sizeof(*argv));
	size_t *lens = bt_calloc(n + 1, sizeof(*lens));
	char **keys = bt_calloc(n, sizeof(*keys));
	argv[0] = "MGET";
	lens[0] = 4;
	for (size_t i = 0; i < n; i++) {
		keys[i] = bt_asprintf("%s%s", cl->node_prefix, reply->element[i]->str);
		argv[i + 1] = keys[i];
		lens[i + 1] = strlen(keys[i]);
	}
	argv_command(&cl->cmd, mget_cb, cl, (int)n + 1, argv, lens);
	/* Members whose heartbeat expired leave the set (a no-op for live ones). */
	for (size_t i = 0; i < n; i++)
		cmdf(cl, NULL, NULL, "EVAL %s 2 %s %s %s",
		     "if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SREM', KEYS[1], "
		     "ARGV[1]) end",
		     cl->nodes_key, keys[i], reply->element[i]->str);
	for (size_t i = 0; i < n; i++)
		free(keys[i]);
	free(keys);
	free(argv);
	free(lens);
}

static void xlen_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct shared *sh = priv;
	redisReply *reply = r;
	(void)ac;
	if (reply && reply->type == REDIS_REPLY_INTEGER)
		sh->depth = (long)reply->integer;
}

static void heartbeat(struct bt_cluster *cl)
{
	json_t *doc = node_doc(cl);
	char *text = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	uint64_t ttl = 3 * cl->cfg->interval_ms + 1000;
	char ttls[24];
	snprintf(ttls, sizeof(ttls), "%llu", (unsigned long long)ttl);
	cmdf(cl, NULL, NULL, "SET %s %s PX %s", cl->node_key, text, ttls);
	cmdf(cl, NULL, NULL, "SADD %s %s", cl->nodes_key, cl->id);
	cmdf(cl, NULL, NULL, "PEXPIRE %s " REPLY_TTL_MS, cl->reply_key);
	cmdf(cl, members_cb, cl, "SMEMBERS %s", cl->nodes_key);
	for (int i = 0; i < cl->nsh; i++)
		cmdf(cl, xlen_cb, &cl->sh[i], "XLEN %s", cl->sh[i].key);
	free(text);
}

static void pong_cb(redisAsyncContext *ac, void *r, void *priv)
{
	struct bt_cluster *cl = priv;
	(void)ac;
	if (r)
		cl->ping_sent_ms = 0;
}

/*
 * A server that stops answering without closing the connection (stopped,
 * swapping, a partition that keeps the TCP session) is taken for lost:
 * hiredis 0.14 has no command timeout of its own.
 */
static int watchdog(struct bt_cluster *cl, uint64_t now)
{
	uint64_t limit = BT_MAX((uint64_t)3000, 3 * cl->cfg->interval_ms);
	int unread = 0;
	/*
	 * What says nothing of Redis: a late look (this process starved, or its
	 * loop busy), after which the wait starts again; and an answer that has
	 * come but waits in the socket, unread behind this turn's timers.
	 */
	if (cl->ping_sent_ms && now - cl->last_tick_ms > limit / 2)
		cl->ping_sent_ms = now;
	cl->last_tick_ms = now;
	if (cl->ping_sent_ms && now - cl->ping_sent_ms > limit &&
	    !(cl->cmd.ac && ioctl(cl->cmd.ac->c.fd, FIONREAD, &unread) == 0 && unread > 0)) {
		char why[128];
		snprintf(why, sizeof(why), "no answer to PING within %llu ms",
			 (unsigned long long)limit);
		go_down(cl, why);
		return -1;
	}
	if (!cl->ping_sent_ms && !cmdf(cl, pong_cb, cl, "PING"))
		cl->ping_sent_ms = now;
	return 0;
}

static void tick_cb(uv_timer_t *t)
{
	struct bt_cluster *cl = t->data;
	if (!cl->up || watchdog(cl, bt_now_ms()))
		return;
	for (int i = 0; i < cl->nsh; i++) {
		refresh(&cl->sh[i]);
		cl->sh[i].claim_due = 1;
		pump_cb(&cl->sh[i], cl->sh[i].st);
	}
	uint64_t now = bt_now_ms();
	if (cl->bad_unlogged && now - cl->bad_window_ms >= 1000)
		bad_summary(cl);
	if (now - cl->last_beat_ms >= cl->cfg->interval_ms) {
		cl->last_beat_ms = now;
		heartbeat(cl);
	}
}

long bt_cluster_depth(const struct bt_cluster *cl, const struct bt_stage *st, int *nodes)
{
	for (int i = 0; i < cl->nsh; i++) {
		if (cl->sh[i].st != st)
			continue;
		int n = 0;
		size_t k;
		json_t *doc;
		json_array_foreach(cl->nodes, k, doc)
		{
			json_t *s = json_object_get(json_object_get(doc, "stages"), st->cfg->name);
			n += json_integer_value(json_object_get(s, "replicas")) > 0;
		}
		if (nodes)
			*nodes = n;
		return cl->up ? cl->sh[i].depth : -1;
	}
	if (nodes)
		*nodes = 0;
	return -1;
}

json_t *bt_cluster_status(const struct bt_cluster *cl)
{
	json_t *queues = json_object();
	for (int i = 0; i < cl->nsh; i++) {
		const struct shared *sh = &cl->sh[i];
		json_object_set_new(
		    queues, sh->st->cfg->name,
		    json_pack("{s:s, s:o, s:i, s:I, s:I, s:I, s:I}", "stream", sh->key, "depth",
			      sh->depth >= 0 && cl->up ? json_integer(sh->depth) : json_null(),
			      "held", sh->nheld, "taken", (json_int_t)sh->taken, "claimed",
			      (json_int_t)sh->claimed, "retried", (json_int_t)sh->retried,
			      "gave_back", (json_int_t)sh->gave_back));
	}
	json_t *doc = json_pack("{s:s, s:s, s:s, s:s, s:b, s:I}", "node", cl->id, "name", cl->name,
				"url", cl->q->url, "namespace", cl->q->ns, "connected", cl->up,
				"claim_after_ms", (json_int_t)cl->q->claim_after_ms);
	json_object_set_new(doc, "error",
			    cl->up || !cl->down_why[0] ? json_null() : json_string(cl->down_why));
	json_object_set_new(
	    doc, "requests",
	    json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "waiting", (json_int_t)cl->waiting,
		      "submitted", (json_int_t)cl->submitted, "answered", (json_int_t)cl->answered,
		      "duplicates_dropped", (json_int_t)cl->duplicates, "outcomes_dropped",
		      (json_int_t)cl->outcomes_dropped, "outcomes_lost",
		      (json_int_t)cl->outcomes_lost, "reconnects", (json_int_t)cl->reconnects));
	json_object_set_new(doc, "queues", queues);
	json_object_set_new(doc, "nodes", cl->nodes ? json_copy(cl->nodes) : json_array());
	return doc;
}

void bt_cluster_metrics(const struct bt_cluster *cl, struct bt_buf *out)
{
	bt_buf_printf(
	    out,
	    "# HELP baton_cluster_connected 1 while the shared queues' Redis is reachable\n"
	    "# TYPE baton_cluster_connected gauge\nbaton_cluster_connected %d\n",
	    cl->up);
	bt_buf_printf(out,
		      "# HELP baton_cluster_nodes live nodes sharing the queues (heartbeats)\n"
		      "# TYPE baton_cluster_nodes gauge\nbaton_cluster_nodes %zu\n",
		      json_array_size(cl->nodes));
	bt_buf_printf(out, "# HELP baton_cluster_queue_depth entries of a shared queue waiting or "
			   "running on any node\n"
			   "# TYPE baton_cluster_queue_depth gauge\n");
	for (int i = 0; i < cl->nsh; i++)
		if (cl->up && cl->sh[i].depth >= 0)
			bt_buf_printf(out, "baton_cluster_queue_depth{stage=\"%s\"} %ld\n",
				      cl->sh[i].st->cfg->name, cl->sh[i].depth);
	static const struct {
		const char *name, *help;
		size_t off;
	} per_stage[] = {
	    {"baton_cluster_entries_taken_total",
	     "entries of a shared queue this node ran or answered", offsetof(struct shared, taken)},
	    {"baton_cluster_entries_claimed_total", "entries this node claimed from a silent node",
	     offsetof(struct shared, claimed)},
	};
	for (size_t f = 0; f < sizeof(per_stage) / sizeof(per_stage[0]); f++) {
		bt_buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n", per_stage[f].name,
			      per_stage[f].help, per_stage[f].name);
		for (int i = 0; i < cl->nsh; i++)
			bt_buf_printf(
			    out, "%s{stage=\"%s\"} %llu\n", per_stage[f].name,
			    cl->sh[i].st->cfg->name,
			    (unsigned long long)*(const uint64_t *)((const char *)&cl->sh[i] +
								    per_stage[f].off));
	}
	const struct {
		const char *name, *help;
		uint64_t v;
	} counters[] = {
	    {"baton_cluster_duplicates_dropped_total",
	     "replies for a request no longer waiting for them (after a claim or a timeout)",
	     cl->duplicates},
	    {"baton_cluster_outcomes_dropped_total",
	     "outcomes not recorded because another node had claimed the entry",
	     cl->outcomes_dropped},
	    {"baton_cluster_outcomes_lost_total",
	     "outcomes not recorded because Redis was unreachable", cl->outcomes_lost},
	    {"baton_cluster_reconnects_total", "connections to Redis made again after a loss",
	     cl->reconnects},
	    {"baton_cluster_bad_entries_total",
	     "entries of a shared queue or replies this node could not read (dropped)", cl->bad},
	};
	for (size_t f = 0; f < sizeof(counters) / sizeof(counters[0]); f++)
		bt_buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", counters[f].name,
			      counters[f].help, counters[f].name, counters[f].name,
			      (unsigned long long)counters[f].v);
}

/* ---- start and end ---------------------------------------------------------- */

/*
 * The check at start, blocking and bounded: reachable, new enough, groups
 * made.  Every later problem is handled on the loop.
 */
static int check_server(struct bt_cluster *cl, char *err, size_t errlen)
{
	const struct bt_queue_config *q = cl->q;
	struct timeval tv = {3, 0};
	char where[1200];
	snprintf(where, sizeof(where), "%s:%d:%d: queue.url: redis at %s:%d", cl->cfg->path,
		 q->line, q->col, q->host, q->port);
	redisContext *c = redisConnectWithTimeout(q->host, q->port, tv);
	if (!c || c->err) {
		snprintf(err, errlen, "%s cannot be reached: %s", where,
			 c ? c->errstr : "out of memory");
		redisFree(c);
		return BT_ECONFIG;
	}
	redisSetTimeout(c, tv);
	int r = 0;
	redisReply *reply = NULL;
	if (q->password) {
		reply = q->user ? redisCommand(c, "AUTH %s %s", q->user, q->password)
				: redisCommand(c, "AUTH %s", q->password);
		if (!reply || reply->type == REDIS_REPLY_ERROR) {
			snprintf(err, errlen, "%s refused queue.password_file's password%s%s%s: %s",
				 where, q->user ? " for user '" : "", q->user ? q->user : "",
				 q->user ? "'" : "", reply ? reply->str : c->errstr);
			r = BT_ECONFIG;
		}
		freeReplyObject(reply);
	}
	if (!r) {
		reply = q->db ? redisCommand(c, "SELECT %d", q->db) : redisCommand(c, "PING");
		if (!reply || reply->type == REDIS_REPLY_ERROR) {
			int noauth = reply && !strncmp(reply->str, "NOAUTH", 6);
			snprintf(err, errlen, "%s does not answer: %s%s", where,
				 reply ? reply->str : c->errstr,
				 noauth ? " (give its password in queue.password_file)" : "");
			r = BT_ECONFIG;
		}
		freeReplyObject(reply);
	}
	if (!r) {
		reply = redisCommand(c, "COMMAND INFO XAUTOCLAIM");
		if (!reply || reply->type != REDIS_REPLY_ARRAY || !reply->elements ||
		    reply->element[0]->type != REDIS_REPLY_ARRAY) {
			snprintf(
			    err, errlen,
			    "%s has no XAUTOCLAIM: baton needs Redis 6.2 or later (7 recommended)",
			    where);
			r = BT_ECONFIG;
		}
		freeReplyObject(reply);
	}
	const char *scripts[] = {record_script, refresh_script};
	char *shas[] = {cl->record_sha, cl->refresh_sha};
	for (int i = 0; !r && i < 2; i++) {
		reply = redisCommand(c, "SCRIPT LOAD %s", scripts[i]);
		if (!reply || reply->type != REDIS_REPLY_STRING ||
		    reply->len >= sizeof(cl->record_sha)) {
			snprintf(err, errlen, "%s refused to load a script: %s", where,
				 reply && reply->type == REDIS_REPLY_ERROR ? reply->str
									   : c->errstr);
			r = BT_ECONFIG;
		} else {
			memcpy(shas[i], reply->str, reply->len + 1);
		}
		freeReplyObject(reply);
	}
	for (int i = 0; !r && i < cl->nsh; i++) {
		reply = redisCommand(c, "XGROUP CREATE %s %s 0 MKSTREAM", cl->sh[i].key, GROUP);
		if (!reply ||
		    (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "BUSYGROUP", 9))) {
			snprintf(err, errlen, "%s refused to create consumer group of '%s': %s",
				 where, cl->sh[i].key, reply ? reply->str : c->errstr);
			r = BT_ECONFIG;
		}
		freeReplyObject(reply);
	}
	redisFree(c);
	return r;
}

int bt_cluster_new(uv_loop_t *loop, const struct bt_config *cfg, struct bt_stage *stages,
		   int nstages, const struct bt_cluster_hooks *hooks, struct bt_cluster **out,
		   char *err, size_t errlen)
{
	struct bt_cluster *cl = bt_calloc(1, sizeof(*cl));
	char host[256] = "node";
	cl->loop = loop;
	cl->cfg = cfg;
	cl->q = &cfg->queue;
	cl->hooks = *hooks;
	cl->backoff_ms = BACKOFF_MIN_MS;
	cl->started_unix_ms = (uint64_t)unix_ms();
	gethostname(host, sizeof(host) - 1);
	cl->name = bt_strdup(cfg->queue.node ? cfg->queue.node : host);
	cl->id = bt_asprintf("%s.%d.%llx", cl->name, (int)getpid(),
			     (unsigned long long)cl->started_unix_ms);
	const char *ns = cfg->queue.ns ? cfg->queue.ns : "baton";
	cl->reply_key = bt_asprintf("%s:r:%s", ns, cl->id);
	cl->node_prefix = bt_asprintf("%s:node:", ns);
	cl->node_key = bt_asprintf("%s%s", cl->node_prefix, cl->id);
	cl->nodes_key = bt_asprintf("%s:nodes", ns);
	snprintf(cl->last_id, sizeof(cl->last_id), "0-0");
	cl->nodes = json_array();
	cl->sh = bt_calloc((size_t)nstages, sizeof(*cl->sh));
	for (int i = 0; i < nstages; i++) {
		if (stages[i].cfg->queue_backend != BT_QUEUE_REDIS)
			continue;
		struct shared *sh = &cl->sh[cl->nsh++];
		sh->cl = cl;
		sh->st = &stages[i];
		sh->key = bt_asprintf("%s:q:%s", ns, stages[i].cfg->name);
		sh->held.next = sh->held.prev = &sh->held;
		sh->depth = -1;
		snprintf(sh->cursor, sizeof(sh->cursor), "0-0");
		sh->ops = (struct bt_remote_queue){submit_cb, forget_cb, pump_cb, sh};
	}
	/* The default namespace lives in the config for the status and codec. */
	if (!cfg->queue.ns)
		((struct bt_config *)cfg)->queue.ns = bt_strdup(ns);
	int r = check_server(cl, err, errlen);
	if (r) {
		cl->closing = 1;
		bt_cluster_free(cl);
		return r;
	}
	for (int i = 0; i < cl->nsh; i++)
		cl->sh[i].st->remote = &cl->sh[i].ops;
	uv_timer_init(loop, &cl->tick);
	uv_timer_init(loop, &cl->retry);
	cl->tick.data = cl->retry.data = cl;
	uint64_t every = BT_MAX((uint64_t)50, BT_MIN(cl->q->claim_after_ms / 4, cfg->interval_ms));
	uv_timer_start(&cl->tick, tick_cb, every, every);
	connect_all(cl);
	*out = cl;
	return 0;
}

void bt_cluster_close(struct bt_cluster *cl)
{
	if (!cl || cl->closing)
		return;
	/* Leave the cluster's view now rather than when the heartbeat expires. */
	if (cl->up) {
		cmdf(cl, NULL, NULL, "DEL %s %s", cl->node_key, cl->reply_key);
		cmdf(cl, NULL, NULL, "SREM %s %s", cl->nodes_key, cl->id);
		for (int i = 0; i < cl->nsh; i++)
			if (!cl->sh[i].nheld)
				cmdf(cl, NULL, NULL, "XGROUP DELCONSUMER %s %s %s", cl->sh[i].key,
				     GROUP, cl->id);
	}
	cl->closing = 1;
	cl->up = 0;
	/* The command connection sends what is queued, then closes. */
	redisAsyncContext *ac = cl->cmd.ac;
	cl->cmd.ac = NULL;
	if (ac)
		redisAsyncDisconnect(ac);
	conn_drop(&cl->rep);
	for (int i = 0; i < cl->nsh; i++)
		conn_drop(&cl->sh[i].rd);
	uv_close((uv_handle_t *)&cl->tick, NULL);
	uv_close((uv_handle_t *)&cl->retry, NULL);
}

void bt_cluster_free(struct bt_cluster *cl)
{
	if (!cl)
		return;
	for (int i = 0; i < cl->nsh; i++)
		free(cl->sh[i].key);
	free(cl->sh);
	json_decref(cl->nodes);
	free(cl->id);
	free(cl->name);
	free(cl->reply_key);
	free(cl->node_key);
	free(cl->nodes_key);
	free(cl->node_prefix);
	free(cl);
}
