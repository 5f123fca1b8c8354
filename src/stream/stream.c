/*
 * Stations, items and sessions.  A station is one slot of a source stage;
 * what its process emits is kept in emission order in the station's list
 * (items waiting for credit, running through the item stages, done, and
 * end-of-session markers), and folded into sessions from the head of the
 * list only, so that a key change is seen in the order the camera saw it.
 * Sessions live in the spool; a closed session is one request to the
 * stream's process pipeline, and its outcome one line of the results file.
 *
 * Exactly once across a crash of baton: __EOS__ marks a session closed,
 * __DONE__ (written after the result line) marks it processed; a restart
 * processes what is closed and not done, unless its line is already in the
 * results file.
 */
#include "stream.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../metrics/metrics.h"
#include "../proc/proc.h"
#include "../sched/sched.h"

#define RING 1000 /* results kept in memory for HTTP */
/*
 * A session's result longer than this is written beside its items, not
 * into its line: the last RING lines are kept in memory as JSON trees
 * (about 21 times their text: a 50 MiB result held 1 GiB), and each is
 * a line of the results file and of every results answer.
 */
#define RESULT_INLINE_MAX (1u << 20)
/*
 * The ring keeps the newest results that fit in this many bytes of tree,
 * reckoned as their text plus RING_VALUE_BYTES per JSON value (what
 * jansson spends on one, with malloc's own): 1000 results of 1 MiB of
 * small numbers would otherwise hold 21 GiB.  The file has them all.
 */
#define RING_BYTES (64u << 20)
#define RING_VALUE_BYTES 64

enum item_state { ITEM_QUEUED, ITEM_RUNNING, ITEM_READY, ITEM_DROPPED, ITEM_EOS };

enum drop_reason { DROP_OVERFLOW, DROP_NO_KEY, DROP_BAD_KEY, DROP_STOPPING, DROP_FAILED,
		   DROP_SPOOL, DROP_COUNT };
static const char *const drop_names[DROP_COUNT] = {"overflow", "no_key",  "bad_key",
						   "stopping", "failed", "spool"};

enum close_reason { CLOSE_EOS, CLOSE_KEY_CHANGE, CLOSE_IDLE, CLOSE_MAX_DURATION,
		    CLOSE_MAX_ITEMS, CLOSE_MISSING_KEY, CLOSE_STOPPED, CLOSE_RECOVERED,
		    CLOSE_COUNT };
static const char *const close_names[CLOSE_COUNT] = {
	"eos",	     "key_change",   "idle",	       "max_duration",
	"max_items", "missing_key", "station_stopped", "recovered"};

struct station;

struct item {
	struct item *next;
	struct station *st;
	enum item_state state;
	uint64_t seq;
	char *payload; /* the source's bytes: what the spool keeps */
	size_t len;
	json_t *meta; /* emit meta, then the item stages' merged meta; eos: its header */
	char *ctype; /* the emitted bytes' content_type: the spooled file's kind */
};

struct session {
	char *key;
	char *id; /* directory name */
	char *dir;
	int nitems;
	uint64_t opened_ms, last_ms;
	int items_fd; /* items.jsonl */
};

/* A closed session on its way through the process pipeline. */
struct closed {
	struct closed *next;
	struct bt_stream *s;
	struct station *st; /* NULL: a station no longer configured */
	char *station, *key, *id, *dir;
	enum close_reason reason;
	int nitems;
	uint64_t closed_unix_ms;
};

struct station {
	struct bt_stream *s;
	struct bt_replica *r;
	char *name, *url; /* NULL: a free slot */
	struct item *head, *tail;
	int queued; /* ITEM_QUEUED in the list */
	int held; /* running or done, not yet folded */
	int nevents; /* every entry of the list */
	int granted; /* block: credits the source still holds */
	uint64_t next_seq;
	struct session *open;
	int draining; /* finishing its session before its source stops */
	int removing; /* the slot is freed once drained */
	int finishing; /* its closed sessions still being processed */
	int pumping; /* in pump(): a nested call (a synchronous answer) leaves it to the outer loop */
	int bad_key_logged; /* logged once per station */
	int bad_eos_logged; /* bits: eos with no session, eos for another: logged once each */
	uv_timer_t timer; /* idle and max_duration of the open session */
	uint64_t started_ms, first_item_ms; /* for "productive after" */
	uint64_t items, dropped[DROP_COUNT], sessions[CLOSE_COUNT];
};

struct bt_stream_watch {
	struct bt_stream_watch *next;
	struct bt_stream *s;
	uv_timer_t timer;
	uint64_t after;
	void (*cb)(void *arg);
	void *arg;
};

struct bt_stream {
	struct bt_streams *ss;
	const struct bt_stream_config *cfg;
	struct bt_stage *source;
	struct bt_pipeline *items_pl, *process_pl;
	struct station *stations; /* one per replica slot of the source stage */
	int nslots;
	int results_fd;
	uint64_t results_seq; /* lines in the results file */
	json_t *ring[RING]; /* the last results; seq of ring[i % RING] is i + 1 */
	size_t ring_cost[RING]; /* what each costs, as RING_BYTES reckons */
	size_t ring_bytes; /* their sum */
	struct closed *inflight; /* closed sessions being processed */
	struct closed *recovered; /* found at start, not yet submitted */
	struct bt_stream_watch *watches;
	struct bt_hist latency; /* close → result */
};

struct bt_streams {
	uv_loop_t *loop;
	struct bt_stream *v;
	int n;
	int draining;
	int open_handles;
};

static void fold(struct station *st);
static void watches_fire_if(struct bt_stream *s, int all);
static void pump(struct station *st);
static void grant(struct station *st);
static void try_finish(struct station *st);
static void timer_cb(uv_timer_t *t);

/* Wall-clock milliseconds: what the spool and the results file record. */
static uint64_t unix_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- the spool --------------------------------------------------------- */

static int mkdir_p(const char *path)
{
	char buf[4096];
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0755) && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, 0755) && errno != EEXIST)
		return -errno;
	return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int file_exists(const char *dir, const char *name)
{
	char *p = bt_asprintf("%s/%s", dir, name);
	struct stat sb;
	int yes = stat(p, &sb) == 0;
	free(p);
	return yes;
}

static json_t *load_json(const char *dir, const char *name)
{
	char *p = bt_asprintf("%s/%s", dir, name);
	json_t *doc = json_load_file(p, 0, NULL);
	free(p);
	return doc;
}

static int count_lines(const char *path)
{
	long n = bt_spool_repair_lines(path);
	return n < 0 ? 0 : (int)n;
}

/* ---- sessions ------------------------------------------------------------ */

static void session_free(struct session *ses)
{
	if (!ses)
		return;
	if (ses->items_fd >= 0)
		close(ses->items_fd);
	free(ses->key);
	free(ses->id);
	free(ses->dir);
	free(ses);
}

static void arm(struct station *st)
{
	struct session *ses = st->open;
	if (!ses) {
		uv_timer_stop(&st->timer);
		return;
	}
	const struct bt_stream_config *cfg = st->s->cfg;
	uint64_t due = ses->last_ms + cfg->idle_timeout_ms;
	if (cfg->max_duration_ms && ses->opened_ms + cfg->max_duration_ms < due)
		due = ses->opened_ms + cfg->max_duration_ms;
	uint64_t now = bt_now_ms();
	uv_timer_start(&st->timer, timer_cb, due > now ? due - now : 0, 0);
}

static int open_session(struct station *st, const char *key)
{
	struct bt_stream *s = st->s;
	char enc[3 * 128 + 1], dir[4096];
	bt_spool_encode_key(key, enc, sizeof(enc));
	/* The station's directory may have been cleaned away meanwhile. */
	snprintf(dir, sizeof(dir), "%s/%s", s->cfg->spool, st->name);
	mkdir_p(dir);
	/* A key seen again after its session closed gets a fresh directory. */
	int made = 0;
	for (int n = 1; n < 100000 && !made; n++) {
		if (n == 1)
			snprintf(dir, sizeof(dir), "%s/%s/%s", s->cfg->spool, st->name, enc);
		else
			snprintf(dir, sizeof(dir), "%s/%s/%s.%d", s->cfg->spool, st->name, enc, n);
		if (mkdir(dir, 0755) == 0)
			made = 1;
		else if (errno != EEXIST)
			break;
	}
	if (!made) {
		bt_error("cannot create a session directory", "stream=%s station=%s dir=\"%s\" error=\"%s\"",
			 s->cfg->name, st->name, dir, strerror(errno));
		return -1;
	}
	struct session *ses = bt_calloc(1, sizeof(*ses));
	ses->key = bt_strdup(key);
	ses->dir = bt_strdup(dir);
	ses->id = bt_strdup(strrchr(dir, '/') + 1);
	ses->opened_ms = ses->last_ms = bt_now_ms();
	json_t *info = json_pack("{s:s, s:s, s:I}", "key", key, "station", st->name,
				 "opened_unix_ms", (json_int_t)unix_ms());
	char *text = json_dumps(info, JSON_COMPACT);
	json_decref(info);
	int e = bt_spool_write_atomic(dir, "__SESSION__", text, strlen(text));
	free(text);
	char *p = bt_asprintf("%s/items.jsonl", dir);
	ses->items_fd = e ? -1 : open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	free(p);
	if (ses->items_fd < 0) {
		bt_error("cannot write a session's spool", "stream=%s station=%s dir=\"%s\" error=\"%s\"",
			 s->cfg->name, st->name, dir, e ? bt_strerror(e) : strerror(errno));
		session_free(ses);
		return -1;
	}
	st->open = ses;
	bt_info("session opened", "stream=%s station=%s session=%s", s->cfg->name, st->name,
		ses->id);
	return 0;
}

/* The manifest a session's request carries: its items as files. */
static json_t *manifest(struct closed *c)
{
	json_t *items = json_array();
	char *list = bt_asprintf("%s/items.jsonl", c->dir);
	FILE *f = fopen(list, "re");
	free(list);
	char *line = NULL;
	size_t cap = 0;
	while (f && getline(&line, &cap, f) > 0) {
		json_t *it = json_loads(line, 0, NULL);
		const char *file = json_string_value(json_object_get(it, "file"));
		if (file) {
			char *p = bt_asprintf("%s/%s", c->dir, file);
			json_object_set_new(it, "path", json_string(p));
			free(p);
			json_object_del(it, "file");
			json_array_append(items, it);
		}
		json_decref(it);
	}
	free(line);
	if (f)
		fclose(f);
	return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:o}", "stream", c->s->cfg->name,
			 "station", c->station, "session", c->key, "session_id", c->id,
			 "close_reason", close_names[c->reason], "dir", c->dir, "items", items);
}

static void closed_free(struct closed *c)
{
	free(c->station);
	free(c->key);
	free(c->id);
	free(c->dir);
	free(c);
}

static void watches_fire(struct bt_stream *s);

static size_t json_values(json_t *v)
{
	size_t n = 1;
	const char *key;
	json_t *m;
	size_t i;
	if (json_is_object(v))
		json_object_foreach(v, key, m)
			n += json_values(m);
	else if (json_is_array(v))
		json_array_foreach(v, i, m)
			n += json_values(m);
	return n;
}

/* Keeps line (a reference taken), the result of seq results_seq, len bytes of text. */
static void ring_put(struct bt_stream *s, json_t *line, size_t len)
{
	uint64_t seq = s->results_seq;
	size_t k = (seq - 1) % RING;
	json_decref(s->ring[k]);
	s->ring_bytes -= s->ring_cost[k];
	s->ring[k] = line;
	s->ring_cost[k] = len + RING_VALUE_BYTES * json_values(line);
	s->ring_bytes += s->ring_cost[k];
	/* The oldest go first; the newest stays, whatever it costs. */
	for (uint64_t old = seq > RING ? seq - RING + 1 : 1; s->ring_bytes > RING_BYTES && old < seq;
	     old++) {
		size_t j = (old - 1) % RING;
		json_decref(s->ring[j]);
		s->ring[j] = NULL;
		s->ring_bytes -= s->ring_cost[j];
		s->ring_cost[j] = 0;
	}
}

/* Appends the session's result line, then marks it done. */
static void record_result(struct closed *c, struct bt_request *req)
{
	struct bt_stream *s = c->s;
	uint64_t now = unix_ms();
	json_t *line = json_pack("{s:I, s:s, s:s, s:s, s:s, s:s, s:i, s:I, s:I, s:s}", "seq",
				 (json_int_t)(s->results_seq + 1), "stream", s->cfg->name,
				 "station", c->station, "session", c->key, "session_id", c->id,
				 "close_reason", close_names[c->reason], "items", c->nitems,
				 "closed_unix_ms", (json_int_t)c->closed_unix_ms, "latency_ms",
				 (json_int_t)(now > c->closed_unix_ms ? now - c->closed_unix_ms : 0),
				 "code", bt_code_name(req->code));
	if (req->code == BT_OK && req->len > RESULT_INLINE_MAX) {
		char name[32];
		snprintf(name, sizeof(name), "result.%s",
			 bt_spool_ext(json_string_value(json_object_get(req->meta, "content_type"))));
		int e = bt_spool_write_atomic(c->dir, name, req->payload, req->len);
		if (e) {
			/* Not done, as when its line cannot be appended. */
			bt_error("cannot write a session's result", "stream=%s dir=\"%s\" error=\"%s\"",
				 s->cfg->name, c->dir, bt_strerror(e));
			json_decref(line);
			return;
		}
		char *path = bt_asprintf("%s/%s", c->dir, name);
		json_object_set_new(line, "result_file", json_string(path));
		json_object_set_new(line, "result_bytes", json_integer((json_int_t)req->len));
		free(path);
	} else if (req->code == BT_OK) {
		json_t *res = json_loadb(req->payload ? req->payload : "", req->len,
					 JSON_DECODE_ANY, NULL);
		if (!res) {
			/* Not JSON: kept as text when it is text, else only its size. */
			char *text = bt_strndup(req->payload ? req->payload : "", req->len);
			res = strlen(text) == req->len && json_string(text)
				      ? json_string(text)
				      : json_pack("{s:I}", "bytes", (json_int_t)req->len);
			free(text);
		}
		json_object_set_new(line, "result", res);
	} else {
		json_object_set_new(line, "error", json_string(req->error ? req->error : ""));
		if (req->error_stage)
			json_object_set_new(line, "stage", json_string(req->error_stage));
	}
	char *text = json_dumps(line, JSON_COMPACT);
	size_t n = strlen(text);
	text = bt_realloc(text, n + 2);
	text[n++] = '\n';
	text[n] = '\0';
	int e = s->results_fd >= 0 ? write_all(s->results_fd, text, n) : -EBADF;
	if (e) {
		/* Not done: a restart processes it again, rather than lose it. */
		bt_error("cannot append to the results file", "stream=%s path=\"%s\" error=\"%s\"",
			 s->cfg->name, s->cfg->results, bt_strerror(e));
		free(text);
		json_decref(line);
		return;
	}
	s->results_seq++;
	if ((e = bt_spool_write_atomic(c->dir, "__DONE__", text, n)))
		bt_error("cannot mark a session done", "stream=%s dir=\"%s\" error=\"%s\"",
			 s->cfg->name, c->dir, bt_strerror(e));
	free(text);
	ring_put(s, line, n);
	double secs = now > c->closed_unix_ms ? (double)(now - c->closed_unix_ms) / 1000.0 : 0;
	bt_hist_observe(&s->latency, secs);
	/* The source stage's latency is its orders': what `headroom` scales stations on. */
	bt_hist_observe(&s->source->latency_window[s->source->window_pos], secs);
	bt_info("session processed", "stream=%s station=%s session=%s items=%d code=%s latency_ms=%llu",
		s->cfg->name, c->station, c->id, c->nitems, bt_code_name(req->code),
		(unsigned long long)(now > c->closed_unix_ms ? now - c->closed_unix_ms : 0));
	watches_fire(s);
}

static void closed_done_cb(struct bt_request *req, void *arg)
{
	struct closed *c = arg;
	struct bt_stream *s = c->s;
	/* Ended by the stop itself, not by its own fault: the next start processes it. */
	if (req->code == BT_SHUTTING_DOWN ||
	    (s->ss->draining && req->code == BT_WORKER_CRASHED))
		bt_warn("session left for the next start", "stream=%s station=%s session=%s",
			s->cfg->name, c->station, c->id);
	else
		record_result(c, req);
	bt_request_free(req);
	for (struct closed **p = &s->inflight; *p; p = &(*p)->next) {
		if (*p == c) {
			*p = c->next;
			break;
		}
	}
	struct station *st = c->st;
	closed_free(c);
	if (st) {
		st->finishing--;
		try_finish(st);
	}
}

static void submit_closed(struct closed *c)
{
	struct bt_stream *s = c->s;
	json_t *doc = manifest(c);
	char *payload = json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	json_t *meta = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:s}", "stream", s->cfg->name,
				 "station", c->station, "session", c->key, "session_id", c->id,
				 "close_reason", close_names[c->reason], "items", c->nitems,
				 "content_type", "application/json");
	struct bt_request *req = bt_request_new(s->process_pl, payload, strlen(payload), meta);
	req->internal = 1;
	c->next = s->inflight;
	s->inflight = c;
	if (c->st)
		c->st->finishing++;
	bt_pipeline_submit(req, closed_done_cb, c);
}

static struct closed *closed_new(struct bt_stream *s, struct station *st, const char *station,
				 const char *key, const char *id, const char *dir,
				 enum close_reason reason, int nitems, uint64_t closed_unix_ms)
{
	struct closed *c = bt_calloc(1, sizeof(*c));
	c->s = s;
	c->st = st;
	c->station = bt_strdup(station);
	c->key = bt_strdup(key);
	c->id = bt_strdup(id);
	c->dir = bt_strdup(dir);
	c->reason = reason;
	c->nitems = nitems;
	c->closed_unix_ms = closed_unix_ms;
	return c;
}

/* Marks a session closed on disk (all or nothing) and returns its record. */
static struct closed *mark_closed(struct bt_stream *s, struct station *st, const char *station,
				  const char *key, const char *id, const char *dir,
				  enum close_reason reason, int nitems)
{
	uint64_t now = unix_ms();
	json_t *eos = json_pack("{s:s, s:s, s:i, s:I}", "key", key, "reason", close_names[reason],
				"items", nitems, "closed_unix_ms", (json_int_t)now);
	char *text = json_dumps(eos, JSON_COMPACT);
	json_decref(eos);
	int e = bt_spool_write_atomic(dir, "__EOS__", text, strlen(text));
	free(text);
	if (e)
		bt_error("cannot mark a session closed", "stream=%s dir=\"%s\" error=\"%s\"",
			 s->cfg->name, dir, bt_strerror(e));
	return closed_new(s, st, station, key, id, dir, reason, nitems, now);
}

static void close_session(struct station *st, enum close_reason reason)
{
	struct session *ses = st->open;
	struct bt_stream *s = st->s;
	if (!ses)
		return;
	st->open = NULL;
	uv_timer_stop(&st->timer);
	st->sessions[reason]++;
	bt_info("session closed", "stream=%s station=%s session=%s reason=%s items=%d",
		s->cfg->name, st->name, ses->id, close_names[reason], ses->nitems);
	struct closed *c = mark_closed(s, st, st->name, ses->key, ses->id, ses->dir, reason,
				       ses->nitems);
	session_free(ses);
	submit_closed(c);
}

static void timer_cb(uv_timer_t *t)
{
	struct station *st = t->data;
	struct session *ses = st->open;
	const struct bt_stream_config *cfg = st->s->cfg;
	if (!ses)
		return;
	uint64_t now = bt_now_ms();
	if (cfg->max_duration_ms && now >= ses->opened_ms + cfg->max_duration_ms) {
		close_session(st, CLOSE_MAX_DURATION);
	} else if (now >= ses->last_ms + cfg->idle_timeout_ms) {
		/* Items on their way through the item stages are not idleness. */
		if (st->held > 0) {
			ses->last_ms = now;
			arm(st);
			return;
		}
		close_session(st, CLOSE_IDLE);
	} else {
		arm(st);
		return;
	}
	try_finish(st);
}

/* ---- items ---------------------------------------------------------------- */

static void drop(struct station *st, enum drop_reason why)
{
	st->dropped[why]++;
}

static void item_free(struct item *it)
{
	free(it->ctype);
	free(it->payload);
	json_decref(it->meta);
	free(it);
}

/* Puts a folded item into its station's session, opening or closing sessions. */
static void add_item(struct station *st, struct item *it)
{
	struct bt_stream *s = st->s;
	const struct bt_stream_config *cfg = s->cfg;
	json_t *k = json_object_get(it->meta, cfg->key);
	if (!k || json_is_null(k)) {
		drop(st, DROP_NO_KEY);
		if (cfg->missing_key == BT_MISSING_CLOSE)
			close_session(st, CLOSE_MISSING_KEY);
		return;
	}
	/* A NUL inside would cut the key short and merge two sessions. */
	if (!json_is_string(k) || strlen(json_string_value(k)) != json_string_length(k)) {
		if (!st->bad_key_logged++)
			bt_warn("an item's session key is not a string without NUL bytes: item dropped",
				"stream=%s station=%s key=%s item=%llu", cfg->name, st->name, cfg->key,
				(unsigned long long)it->seq);
		drop(st, DROP_BAD_KEY);
		return;
	}
	const char *key = json_string_value(k);
	if (st->open && strcmp(st->open->key, key))
		close_session(st, CLOSE_KEY_CHANGE);
	if (!st->open && open_session(st, key)) {
		drop(st, DROP_SPOOL);
		return;
	}
	struct session *ses = st->open;
	char name[64], path[4096];
	snprintf(name, sizeof(name), "item-%06d.%s", ses->nitems + 1, bt_spool_ext(it->ctype));
	snprintf(path, sizeof(path), "%s/%s", ses->dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int e = fd < 0 ? -errno : write_all(fd, it->payload ? it->payload : "", it->len);
	if (fd >= 0 && close(fd) && !e)
		e = -errno;
	json_t *meta = json_copy(it->meta);
	static const char *const ours[] = {"pipeline", "stage", "attempt", "deadline_ms"};
	for (size_t i = 0; i < BT_ARRAY_SIZE(ours); i++)
		json_object_del(meta, ours[i]);
	json_t *line = json_pack("{s:i, s:s, s:o}", "n", ses->nitems + 1, "file", name, "meta",
				 meta);
	char *text = e ? NULL : json_dumps(line, JSON_COMPACT);
	json_decref(line);
	if (text) {
		size_t n = strlen(text);
		text = bt_realloc(text, n + 2);
		text[n++] = '\n';
		e = write_all(ses->items_fd, text, n);
		free(text);
	}
	if (e) {
		bt_error("cannot spool an item", "stream=%s station=%s path=\"%s\" error=\"%s\"",
			 cfg->name, st->name, path, bt_strerror(e));
		unlink(path);
		drop(st, DROP_SPOOL);
		return;
	}
	ses->nitems++;
	ses->last_ms = bt_now_ms();
	if (cfg->max_items && ses->nitems >= cfg->max_items)
		close_session(st, CLOSE_MAX_ITEMS);
	else
		arm(st);
}

static void on_eos_event(struct station *st, struct item *it)
{
	const char *name = json_string_value(json_object_get(it->meta, "session"));
	/* A source that sends them by the thousand gets one line per station. */
	if (!st->open) {
		if (!(st->bad_eos_logged & 1)) {
			st->bad_eos_logged |= 1;
			bt_warn("eos with no open session (further ones are not logged)",
				"stream=%s station=%s session=\"%s\"", st->s->cfg->name, st->name,
				name ? name : "");
		}
		return;
	}
	if (name && strcmp(name, st->open->key)) {
		char q[300];
		if (!(st->bad_eos_logged & 2)) {
			st->bad_eos_logged |= 2;
			bt_warn("eos for unknown session (further ones are not logged)",
				"stream=%s station=%s session=%s open=%s", st->s->cfg->name, st->name,
				bt_logfmt_quote(q, sizeof(q), name, strlen(name)), st->open->id);
		}
		return;
	}
	close_session(st, CLOSE_EOS);
}

/* Folds the done head of the list into sessions, in emission order. */
static void fold(struct station *st)
{
	struct item *it;
	while ((it = st->head) && it->state != ITEM_QUEUED && it->state != ITEM_RUNNING) {
		st->head = it->next;
		if (!st->head)
			st->tail = NULL;
		st->nevents--;
		if (it->state == ITEM_EOS) {
			on_eos_event(st, it);
		} else {
			st->held--;
			if (it->state == ITEM_READY && st->name)
				add_item(st, it);
		}
		item_free(it);
	}
}

static void item_done_cb(struct bt_request *req, void *arg)
{
	struct item *it = arg;
	struct station *st = it->st;
	if (req->code == BT_OK) {
		json_decref(it->meta);
		it->meta = json_incref(req->meta);
		it->state = ITEM_READY;
	} else {
		char q[600];
		const char *err = req->error ? req->error : "";
		bt_warn("an item failed in the item stages: dropped",
			"stream=%s station=%s item=%llu code=%s error=%s", st->s->cfg->name,
			st->name ? st->name : "", (unsigned long long)it->seq, bt_code_name(req->code),
			bt_logfmt_quote(q, sizeof(q), err, strlen(err)));
		it->state = ITEM_DROPPED;
		drop(st, req->code == BT_SHUTTING_DOWN ? DROP_STOPPING : DROP_FAILED);
	}
	bt_request_free(req);
	fold(st);
	pump(st);
	grant(st);
	try_finish(st);
}

/* Sends waiting items into the item stages while the station holds room. */
static void pump(struct station *st)
{
	struct bt_stream *s = st->s;
	/* The outer loop re-reads the counts after each submit, nested answers included. */
	if (st->pumping)
		return;
	st->pumping = 1;
	while (st->queued > 0 && st->held < s->cfg->credits) {
		struct item *it = st->head;
		while (it && it->state != ITEM_QUEUED)
			it = it->next;
		BT_ASSERT(it);
		st->queued--;
		st->held++;
		if (!s->items_pl) {
			it->state = ITEM_READY;
			fold(st);
			continue;
		}
		it->state = ITEM_RUNNING;
		char *copy = NULL;
		if (it->len) {
			copy = bt_malloc(it->len);
			memcpy(copy, it->payload, it->len);
		}
		struct bt_request *req = bt_request_new(s->items_pl, copy, it->len,
							json_deep_copy(it->meta));
		req->internal = 1;
		bt_pipeline_submit(req, item_done_cb, it);
	}
	st->pumping = 0;
}

/* Block mode: the source may hold as many credits as the station has room. */
static void grant(struct station *st)
{
	struct bt_stream *s = st->s;
	if (s->cfg->overflow != BT_OVERFLOW_BLOCK || st->draining || s->ss->draining || !st->r ||
	    st->r->state != BT_REPLICA_READY)
		return;
	int items = st->queued + st->held;
	int room = s->cfg->credits - items - st->granted;
	if (room > 0) {
		st->granted += room;
		bt_replica_credit(st->r, room);
	}
}

static struct station *station_of(struct bt_stream *s, struct bt_replica *r)
{
	return &s->stations[r->id - 1];
}

static int on_emit(void *arg, struct bt_replica *r, char *payload, size_t len, json_t *meta,
		   char *why, size_t whylen)
{
	struct bt_stream *s = arg;
	struct station *st = station_of(s, r);
	if (s->cfg->overflow == BT_OVERFLOW_BLOCK) {
		if (st->granted <= 0) {
			free(payload);
			snprintf(why, whylen, "\"emit\" without credit (flow.overflow is block)");
			return -1;
		}
		st->granted--;
	}
	if (!st->name || st->draining || s->ss->draining) {
		free(payload);
		drop(st, DROP_STOPPING);
		return 0;
	}
	struct item *it = bt_calloc(1, sizeof(*it));
	it->st = st;
	it->seq = ++st->next_seq;
	it->payload = payload;
	it->len = len;
	it->meta = meta ? json_deep_copy(meta) : json_object();
	const char *ct = json_string_value(json_object_get(it->meta, "content_type"));
	it->ctype = ct ? bt_strdup(ct) : NULL;
	json_object_set_new(it->meta, "stream", json_string(s->cfg->name));
	json_object_set_new(it->meta, "station", json_string(st->name));
	json_object_set_new(it->meta, "seq", json_integer((json_int_t)it->seq));
	it->state = ITEM_QUEUED;
	if (st->tail)
		st->tail->next = it;
	else
		st->head = it;
	st->tail = it;
	st->nevents++;
	st->queued++;
	st->items++;
	if (!st->first_item_ms) {
		st->first_item_ms = bt_now_ms();
		bt_info("station productive", "stream=%s station=%s first_item_ms=%llu",
			s->cfg->name, st->name,
			(unsigned long long)(st->first_item_ms - st->started_ms));
	}
	if (s->cfg->overflow == BT_OVERFLOW_DROP_OLDEST && st->queued > s->cfg->credits) {
		/* The oldest waiting item goes: a camera's newest frame matters most. */
		struct item **p = &st->head, *prev = NULL;
		while ((*p)->state != ITEM_QUEUED) {
			prev = *p;
			p = &(*p)->next;
		}
		struct item *old = *p;
		*p = old->next;
		if (st->tail == old)
			st->tail = prev;
		st->nevents--;
		st->queued--;
		item_free(old);
		drop(st, DROP_OVERFLOW);
	}
	pump(st);
	return 0;
}

static int on_eos(void *arg, struct bt_replica *r, json_t *hdr, char *why, size_t whylen)
{
	struct bt_stream *s = arg;
	struct station *st = station_of(s, r);
	json_t *name = json_object_get(hdr, "session");
	if (name && !json_is_string(name) && !json_is_null(name)) {
		snprintf(why, whylen, "\"session\" of \"eos\" is not a string");
		return -1;
	}
	if (!st->name)
		return 0;
	struct item *it = bt_calloc(1, sizeof(*it));
	it->st = st;
	it->state = ITEM_EOS;
	it->meta = json_object();
	if (json_is_string(name))
		json_object_set(it->meta, "session", name);
	if (st->tail)
		st->tail->next = it;
	else
		st->head = it;
	st->tail = it;
	st->nevents++;
	fold(st);
	try_finish(st);
	return 0;
}

static void on_up(void *arg, struct bt_replica *r)
{
	struct bt_stream *s = arg;
	struct station *st = station_of(s, r);
	st->granted = 0; /* a new process holds no credit */
	if (!st->started_ms || !st->first_item_ms)
		st->started_ms = r->spawned_ms;
	if (s->cfg->overflow == BT_OVERFLOW_DROP_OLDEST) {
		if (!st->draining && !s->ss->draining)
			bt_replica_credit(r, -1);
		return;
	}
	grant(st);
}

static void on_down(void *arg, struct bt_replica *r)
{
	struct bt_stream *s = arg;
	struct station *st = station_of(s, r);
	st->granted = 0;
	/*
	 * The open session stays open: a restarted source that sees the same
	 * key goes on with it, another key or the idle timeout closes it.
	 */
	if (st->open)
		bt_info("station's source is gone; its session stays open", "stream=%s station=%s session=%s",
			s->cfg->name, st->name ? st->name : "", st->open->id);
}

static int on_drain(void *arg, struct bt_replica *r)
{
	struct bt_stream *s = arg;
	struct station *st = station_of(s, r);
	st->draining = 1;
	try_finish(st);
	/* try_finish may have finished already; then the replica stops now. */
	return st->draining;
}

static const struct bt_source_ops source_ops = {on_up, on_emit, on_eos, on_down, on_drain};

/*
 * A draining station: once every item it emitted is folded, its session is
 * closed; once that session is processed, its source may stop.
 */
static void try_finish(struct station *st)
{
	if (!st->draining || st->nevents > 0)
		return;
	if (st->open)
		close_session(st, CLOSE_STOPPED);
	if (st->finishing > 0)
		return;
	st->draining = st->s->ss->draining;
	struct bt_replica *r = st->r;
	if (r->state == BT_REPLICA_DRAINING && r->source_hold) {
		bt_info("station drained", "stream=%s station=%s", st->s->cfg->name,
			st->name ? st->name : "");
		bt_replica_stop(r, 0);
	}
	if (st->removing) {
		bt_info("station removed", "stream=%s station=%s", st->s->cfg->name, st->name);
		st->removing = 0;
		free(st->name);
		free(st->url);
		st->name = st->url = NULL;
		r->station = r->url = NULL;
		st->first_item_ms = st->started_ms = 0;
	}
}

/* ---- recovery -------------------------------------------------------------- */

static struct station *station_named(struct bt_stream *s, const char *name)
{
	for (int i = 0; i < s->nslots; i++)
		if (s->stations[i].name && !strcmp(s->stations[i].name, name))
			return &s->stations[i];
	return NULL;
}

/* One session directory left by an earlier baton. */
static void recover_session(struct bt_stream *s, const char *station, const char *dir,
			    const char *id)
{
	if (file_exists(dir, "__DONE__"))
		return;
	struct station *st = station_named(s, station);
	char *items = bt_asprintf("%s/items.jsonl", dir);
	int nitems = count_lines(items);
	free(items);
	json_t *eos = load_json(dir, "__EOS__");
	if (eos) {
		const char *key = json_string_value(json_object_get(eos, "key"));
		const char *reason = json_string_value(json_object_get(eos, "reason"));
		enum close_reason why = CLOSE_RECOVERED;
		for (int i = 0; reason && i < CLOSE_COUNT; i++)
			if (!strcmp(reason, close_names[i]))
				why = (enum close_reason)i;
		struct closed *c = closed_new(
			s, st, station, key ? key : id, id, dir, why,
			(int)json_integer_value(json_object_get(eos, "items")),
			(uint64_t)json_integer_value(json_object_get(eos, "closed_unix_ms")));
		c->next = s->recovered;
		s->recovered = c;
		json_decref(eos);
		return;
	}
	json_t *info = load_json(dir, "__SESSION__");
	const char *key = json_string_value(json_object_get(info, "key"));
	if (!key || nitems == 0) {
		/* Opened and never given an item (or never described): nothing to do. */
		bt_warn("an empty or unreadable session in the spool is left alone",
			"stream=%s dir=\"%s\"", s->cfg->name, dir);
		json_decref(info);
		return;
	}
	if (st && !st->open) {
		/* Adopted: the restarted source goes on with it, or it closes as usual. */
		struct session *ses = bt_calloc(1, sizeof(*ses));
		ses->key = bt_strdup(key);
		ses->id = bt_strdup(id);
		ses->dir = bt_strdup(dir);
		ses->nitems = nitems;
		ses->opened_ms = ses->last_ms = bt_now_ms();
		items = bt_asprintf("%s/items.jsonl", dir);
		ses->items_fd = open(items, O_WRONLY | O_APPEND | O_CLOEXEC);
		free(items);
		if (ses->items_fd >= 0) {
			st->open = ses;
			bt_info("open session recovered", "stream=%s station=%s session=%s items=%d",
				s->cfg->name, station, id, nitems);
			json_decref(info);
			return;
		}
		session_free(ses);
	}
	struct closed *c = mark_closed(s, st, station, key, id, dir, CLOSE_RECOVERED, nitems);
	c->next = s->recovered;
	s->recovered = c;
	json_decref(info);
}

static void recover(struct bt_stream *s)
{
	DIR *top = opendir(s->cfg->spool);
	struct dirent *e;
	while (top && (e = readdir(top))) {
		if (e->d_name[0] == '.')
			continue;
		char sdir[4096];
		snprintf(sdir, sizeof(sdir), "%s/%s", s->cfg->spool, e->d_name);
		DIR *sd = opendir(sdir);
		struct dirent *f;
		while (sd && (f = readdir(sd))) {
			if (f->d_name[0] == '.')
				continue;
			char *dir = bt_asprintf("%s/%s", sdir, f->d_name);
			struct stat sb;
			if (stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode))
				recover_session(s, e->d_name, dir, f->d_name);
			free(dir);
		}
		if (sd)
			closedir(sd);
	}
	if (top)
		closedir(top);
}

/*
 * Reads the results file back: the ring for HTTP, the count, and which of
 * the recovered sessions already have their line (a crash between the
 * append and __DONE__): those are only marked done.
 */
static void read_results(struct bt_stream *s)
{
	long n = bt_spool_repair_lines(s->cfg->results);
	if (n < 0) {
		bt_warn("cannot read the results file", "stream=%s path=\"%s\" error=\"%s\"",
			s->cfg->name, s->cfg->results, bt_strerror((int)n));
		return;
	}
	FILE *f = fopen(s->cfg->results, "re");
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	while (f && (len = getline(&line, &cap, f)) > 0) {
		json_t *doc = json_loadb(line, (size_t)len, 0, NULL);
		s->results_seq++;
		const char *station = json_string_value(json_object_get(doc, "station"));
		const char *id = json_string_value(json_object_get(doc, "session_id"));
		for (struct closed **p = &s->recovered; station && id && *p;) {
			struct closed *c = *p;
			if (!strcmp(c->station, station) && !strcmp(c->id, id)) {
				bt_spool_write_atomic(c->dir, "__DONE__", line, (size_t)len);
				*p = c->next;
				closed_free(c);
			} else {
				p = &c->next;
			}
		}
		ring_put(s, doc, (size_t)len);
	}
	free(line);
	if (f)
		fclose(f);
}

/* ---- the streams ------------------------------------------------------------ */

static void streams_free(struct bt_streams *ss)
{
	for (int i = 0; i < ss->n; i++) {
		struct bt_stream *s = &ss->v[i];
		for (int j = 0; j < s->nslots; j++) {
			struct station *st = &s->stations[j];
			while (st->head) {
				struct item *it = st->head;
				st->head = it->next;
				item_free(it);
			}
			session_free(st->open);
			free(st->name);
			free(st->url);
		}
		free(s->stations);
		for (int k = 0; k < RING; k++)
			json_decref(s->ring[k]);
		while (s->recovered) {
			struct closed *c = s->recovered;
			s->recovered = c->next;
			closed_free(c);
		}
		if (s->results_fd >= 0)
			close(s->results_fd);
	}
	free(ss->v);
	free(ss);
}

static void handle_closed_cb(uv_handle_t *h)
{
	struct station *st = h->data;
	struct bt_streams *ss = st->s->ss;
	if (--ss->open_handles == 0)
		streams_free(ss);
}

int bt_streams_new(uv_loop_t *loop, const struct bt_config *cfg, struct bt_stage *stages,
		   struct bt_pipeline *pipelines, struct bt_streams **out, char *err,
		   size_t errlen)
{
	*out = NULL;
	if (!cfg->nstreams)
		return 0;
	struct bt_streams *ss = bt_calloc(1, sizeof(*ss));
	ss->loop = loop;
	ss->n = cfg->nstreams;
	ss->v = bt_calloc((size_t)ss->n, sizeof(*ss->v));
	int r = 0;
	for (int i = 0; i < ss->n; i++) {
		struct bt_stream *s = &ss->v[i];
		const struct bt_stream_config *sc = &cfg->streams[i];
		s->ss = ss;
		s->cfg = sc;
		s->results_fd = -1;
		s->source = &stages[sc->source];
		s->items_pl = sc->items_pipeline >= 0 ? &pipelines[sc->items_pipeline] : NULL;
		s->process_pl = &pipelines[sc->process_pipeline];
		bt_hist_init(&s->latency, bt_hist_seconds, bt_hist_seconds_n);
		s->nslots = s->source->nreplicas;
		s->stations = bt_calloc((size_t)s->nslots, sizeof(*s->stations));
		for (int j = 0; j < s->nslots; j++) {
			struct station *st = &s->stations[j];
			st->s = s;
			st->r = s->source->replicas[j];
			uv_timer_init(loop, &st->timer);
			st->timer.data = st;
			ss->open_handles++;
			if (j < sc->nstations) {
				st->name = bt_strdup(sc->stations[j].name);
				st->url = bt_strdup(sc->stations[j].url);
				st->r->station = st->name;
				st->r->url = st->url;
			}
		}
		s->source->source_ops = &source_ops;
		s->source->source_arg = s;
		if (r)
			continue;
		char dir[4096];
		snprintf(dir, sizeof(dir), "%s", sc->spool);
		int e = mkdir_p(dir);
		for (int j = 0; !e && j < sc->nstations; j++) {
			snprintf(dir, sizeof(dir), "%s/%s", sc->spool, sc->stations[j].name);
			e = mkdir_p(dir);
		}
		if (!e) {
			char *slash = strrchr(sc->results, '/');
			snprintf(dir, sizeof(dir), "%.*s", (int)(slash - sc->results), sc->results);
			e = mkdir_p(dir);
		}
		if (e) {
			snprintf(err, errlen, "%s:%d:%d: stream '%s': cannot create the spool directory '%s': %s",
				 cfg->path, sc->spool_line, sc->spool_col, sc->name, dir,
				 bt_strerror(e));
			r = BT_ECONFIG;
			continue;
		}
		recover(s);
		read_results(s);
		s->results_fd = open(sc->results, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (s->results_fd < 0) {
			snprintf(err, errlen, "stream '%s': cannot open the results file '%s': %s",
				 sc->name, sc->results, strerror(errno));
			r = BT_ECONFIG;
		}
	}
	if (r) {
		bt_streams_close(ss);
		return r;
	}
	*out = ss;
	return 0;
}

void bt_streams_start(struct bt_streams *ss)
{
	for (int i = 0; ss && i < ss->n; i++) {
		struct bt_stream *s = &ss->v[i];
		int n = 0;
		while (s->recovered) {
			struct closed *c = s->recovered;
			s->recovered = c->next;
			n++;
			submit_closed(c);
		}
		for (int j = 0; j < s->nslots; j++)
			arm(&s->stations[j]);
		if (n)
			bt_info("recovered sessions resubmitted", "stream=%s sessions=%d", s->cfg->name,
				n);
	}
}

void bt_streams_drain(struct bt_streams *ss)
{
	if (!ss || ss->draining)
		return;
	ss->draining = 1;
	for (int i = 0; i < ss->n; i++) {
		struct bt_stream *s = &ss->v[i];
		watches_fire_if(s, 1); /* long polls answer now: HTTP is closing */
		for (int j = 0; j < s->nslots; j++) {
			struct station *st = &s->stations[j];
			if (!st->name)
				continue;
			st->draining = 1;
			try_finish(st);
		}
	}
}

int bt_streams_busy(const struct bt_streams *ss)
{
	for (int i = 0; ss && i < ss->n; i++) {
		const struct bt_stream *s = &ss->v[i];
		if (s->inflight || s->recovered)
			return 1;
		for (int j = 0; j < s->nslots; j++)
			if (s->stations[j].nevents || s->stations[j].open)
				return 1;
	}
	return 0;
}

void bt_streams_close(struct bt_streams *ss)
{
	if (!ss)
		return;
	for (int i = 0; i < ss->n; i++) {
		struct bt_stream *s = &ss->v[i];
		/* Their owners are told (and forget them) rather than left holding freed ones. */
		watches_fire_if(s, 1);
		if (s->source)
			s->source->source_ops = NULL;
	}
	if (ss->open_handles == 0) {
		streams_free(ss);
		return;
	}
	for (int i = 0; i < ss->n; i++)
		for (int j = 0; j < ss->v[i].nslots; j++)
			uv_close((uv_handle_t *)&ss->v[i].stations[j].timer, handle_closed_cb);
}

struct bt_stream *bt_streams_find(struct bt_streams *ss, const char *name)
{
	for (int i = 0; ss && i < ss->n; i++)
		if (!strcmp(ss->v[i].cfg->name, name))
			return &ss->v[i];
	return NULL;
}

/* ---- results over HTTP -------------------------------------------------------- */

json_t *bt_stream_results(struct bt_stream *s, uint64_t after, uint64_t *next)
{
	json_t *out = json_array();
	uint64_t first = s->results_seq > RING ? s->results_seq - RING + 1 : 1;
	uint64_t from = after + 1 > first ? after + 1 : first;
	for (uint64_t seq = from; seq <= s->results_seq && json_array_size(out) < RING; seq++) {
		json_t *r = s->ring[(seq - 1) % RING];
		if (r)
			json_array_append(out, r);
	}
	*next = s->results_seq > after ? s->results_seq : after;
	return out;
}

static void watch_closed_cb(uv_handle_t *h)
{
	free(h->data);
}

static void watch_remove(struct bt_stream_watch *w)
{
	for (struct bt_stream_watch **p = &w->s->watches; *p; p = &(*p)->next) {
		if (*p == w) {
			*p = w->next;
			break;
		}
	}
	uv_close((uv_handle_t *)&w->timer, watch_closed_cb);
}

static void watch_timer_cb(uv_timer_t *t)
{
	struct bt_stream_watch *w = t->data;
	watch_remove(w);
	w->cb(w->arg);
}

static void watches_fire_if(struct bt_stream *s, int all)
{
	/* Collect first, call back second: a callback may add a watch. */
	struct bt_stream_watch *ready = NULL;
	for (struct bt_stream_watch **p = &s->watches; *p;) {
		struct bt_stream_watch *w = *p;
		if (all || w->after < s->results_seq) {
			*p = w->next;
			w->next = ready;
			ready = w;
		} else {
			p = &w->next;
		}
	}
	while (ready) {
		struct bt_stream_watch *w = ready;
		ready = w->next;
		uv_timer_stop(&w->timer);
		uv_close((uv_handle_t *)&w->timer, watch_closed_cb);
		w->cb(w->arg);
	}
}

static void watches_fire(struct bt_stream *s)
{
	watches_fire_if(s, 0);
}

struct bt_stream_watch *bt_stream_watch(struct bt_stream *s, uint64_t after,
					uint64_t timeout_ms, void (*cb)(void *arg), void *arg)
{
	struct bt_stream_watch *w = bt_calloc(1, sizeof(*w));
	w->s = s;
	w->after = after;
	w->cb = cb;
	w->arg = arg;
	uv_timer_init(s->ss->loop, &w->timer);
	w->timer.data = w;
	/* Never synchronously: a result already there fires at the next turn. */
	uv_timer_start(&w->timer, watch_timer_cb, after < s->results_seq ? 0 : timeout_ms, 0);
	w->next = s->watches;
	s->watches = w;
	return w;
}

void bt_stream_unwatch(struct bt_stream_watch *w)
{
	watch_remove(w);
}

/* ---- stations at run time ----------------------------------------------------- */

static int valid_station_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 64)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		      (i > 0 && (ch == '_' || ch == '-' || ch == '.'))))
			return 0;
	}
	return 1;
}

int bt_stream_add_station(struct bt_stream *s, const char *name, const char *url, char *err,
			  size_t errlen)
{
	if (s->ss->draining) {
		snprintf(err, errlen, "baton is shutting down");
		return BT_ESTATE;
	}
	if (!valid_station_name(name)) {
		snprintf(err, errlen,
			 "station name '%.64s' is not valid (letters, digits, '_', '-', '.'; at most 64)",
			 name);
		return -EINVAL;
	}
	if (!url[0]) {
		snprintf(err, errlen, "a station needs a non-empty 'url'");
		return -EINVAL;
	}
	if (station_named(s, name)) {
		snprintf(err, errlen, "stream '%s' already has a station named '%s'", s->cfg->name,
			 name);
		return BT_ESTATE;
	}
	struct station *st = NULL;
	for (int i = 0; i < s->nslots && !st; i++) {
		struct station *c = &s->stations[i];
		if (!c->name && !c->r->active && c->r->state == BT_REPLICA_EXITED &&
		    !bt_replica_has_process(c->r))
			st = c;
	}
	if (!st) {
		snprintf(err, errlen,
			 "stream '%s' has no free station slot: stage '%s' allows %d (replicas.max)",
			 s->cfg->name, s->source->cfg->name, s->nslots);
		return BT_ESTATE;
	}
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s/%s", s->cfg->spool, name);
	int e = mkdir_p(dir);
	if (e) {
		snprintf(err, errlen, "cannot create '%s': %s", dir, bt_strerror(e));
		return e;
	}
	st->name = bt_strdup(name);
	st->url = bt_strdup(url);
	st->r->station = st->name;
	st->r->url = st->url;
	st->draining = 0;
	st->started_ms = st->first_item_ms = 0;
	struct bt_stage *src = s->source;
	st->r->active = 1;
	st->r->failures = 0;
	int active = 0;
	for (int i = 0; i < src->nreplicas; i++)
		active += src->replicas[i]->active;
	src->target = active;
	bt_info("station added", "stream=%s station=%s url=\"%s\"", s->cfg->name, name, url);
	bt_replica_start(st->r);
	return 0;
}

int bt_stream_remove_station(struct bt_stream *s, const char *name)
{
	struct station *st = station_named(s, name);
	if (!st || st->removing)
		return -ENOENT;
	st->removing = 1;
	bt_info("station removal requested", "stream=%s station=%s open_session=%s", s->cfg->name,
		name, st->open ? st->open->id : "none");
	struct bt_stage *src = s->source;
	if (st->r->active) {
		bt_replica_drain(st->r);
		int active = 0;
		for (int i = 0; i < src->nreplicas; i++)
			active += src->replicas[i]->active;
		src->target = active;
	} else {
		st->draining = 1;
		try_finish(st);
	}
	return 0;
}

/* ---- status and metrics ------------------------------------------------------- */

static json_t *drops_json(const struct station *st)
{
	json_t *o = json_object();
	for (int i = 0; i < DROP_COUNT; i++)
		if (st->dropped[i])
			json_object_set_new(o, drop_names[i], json_integer((json_int_t)st->dropped[i]));
	return o;
}

json_t *bt_streams_status(struct bt_streams *ss)
{
	json_t *doc = json_object();
	uint64_t now = bt_now_ms();
	for (int i = 0; ss && i < ss->n; i++) {
		struct bt_stream *s = &ss->v[i];
		json_t *stations = json_array();
		for (int j = 0; j < s->nslots; j++) {
			struct station *st = &s->stations[j];
			if (!st->name)
				continue;
			const char *state = bt_replica_state_name(st->r->state);
			json_t *o = json_pack("{s:s, s:s, s:i, s:s, s:i, s:i, s:I, s:o, s:i, s:b}",
					      "name", st->name, "url", st->url, "replica", st->r->id,
					      "state", state, "pid", bt_replica_pid(st->r), "restarts",
					      (int)st->r->restarts, "items", (json_int_t)st->items,
					      "dropped", drops_json(st), "pending_items", st->nevents,
					      "draining", st->draining || st->removing);
			json_object_set_new(o, "last_exit", st->r->last_exit[0]
							     ? json_string(st->r->last_exit)
							     : json_null());
			json_object_set_new(o, "first_item_after_ms",
					    st->first_item_ms && st->started_ms
						    ? json_integer((json_int_t)(st->first_item_ms -
										 st->started_ms))
						    : json_null());
			if (st->open)
				json_object_set_new(
					o, "session",
					json_pack("{s:s, s:s, s:i, s:f}", "key", st->open->key, "id",
						  st->open->id, "items", st->open->nitems, "age_s",
						  (double)(now - st->open->opened_ms) / 1000.0));
			else
				json_object_set_new(o, "session", json_null());
			json_t *closed = json_object();
			for (int k = 0; k < CLOSE_COUNT; k++)
				if (st->sessions[k])
					json_object_set_new(closed, close_names[k],
							    json_integer((json_int_t)st->sessions[k]));
			json_object_set_new(o, "sessions", closed);
			json_array_append_new(stations, o);
		}
		uint64_t next;
		json_t *all = bt_stream_results(s, s->results_seq > 10 ? s->results_seq - 10 : 0,
						&next);
		int processing = 0;
		for (struct closed *c = s->inflight; c; c = c->next)
			processing++;
		json_t *o = json_pack("{s:s, s:s, s:o, s:I, s:i, s:o}", "source", s->source->cfg->name,
				      "spool", s->cfg->spool, "stations", stations, "results_total",
				      (json_int_t)s->results_seq, "sessions_processing", processing,
				      "results", all);
		json_object_set_new(o, "results_file", json_string(s->cfg->results));
		json_object_set_new(o, "session_latency_p50_s",
				    s->latency.count ? json_real(bt_hist_quantile(&s->latency, 0.5))
						     : json_null());
		json_object_set_new(o, "session_latency_p95_s",
				    s->latency.count ? json_real(bt_hist_quantile(&s->latency, 0.95))
						     : json_null());
		json_object_set_new(doc, s->cfg->name, o);
	}
	return doc;
}

/*
 * One counter family over every station, by reason: counts(st) gives the
 * station's n counters, named by names (NULL: one counter, no reason label).
 */
static void station_family(struct bt_streams *ss, struct bt_buf *out, const char *name,
			   const char *help, const char *const *names, int n,
			   const uint64_t *(*counts)(const struct station *st))
{
	bt_buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
	for (int i = 0; i < ss->n; i++) {
		for (int j = 0; j < ss->v[i].nslots; j++) {
			const struct station *st = &ss->v[i].stations[j];
			const uint64_t *v = counts(st);
			for (int k = 0; st->name && k < n; k++) {
				bt_buf_printf(out, "%s{stream=\"%s\",station=\"%s\"", name,
					      ss->v[i].cfg->name, st->name);
				if (names)
					bt_buf_printf(out, ",reason=\"%s\"", names[k]);
				bt_buf_printf(out, "} %llu\n", (unsigned long long)v[k]);
			}
		}
	}
}

static const uint64_t *items_of(const struct station *st)
{
	return &st->items;
}

static const uint64_t *drops_of(const struct station *st)
{
	return st->dropped;
}

static const uint64_t *closes_of(const struct station *st)
{
	return st->sessions;
}

void bt_streams_metrics(struct bt_streams *ss, struct bt_buf *out)
{
	if (!ss)
		return;
	station_family(ss, out, "baton_stream_items_total", "Items emitted by a station's source.",
		       NULL, 1, items_of);
	station_family(ss, out, "baton_stream_items_dropped_total",
		       "Items that reached no session, by reason.", drop_names, DROP_COUNT, drops_of);
	station_family(ss, out, "baton_stream_sessions_total", "Sessions closed, by close reason.",
		       close_names, CLOSE_COUNT, closes_of);
	bt_buf_printf(out, "# HELP baton_stream_session_latency_seconds From a session's close to its result.\n"
			   "# TYPE baton_stream_session_latency_seconds histogram\n");
	for (int i = 0; i < ss->n; i++) {
		char labels[160];
		snprintf(labels, sizeof(labels), "stream=\"%s\"", ss->v[i].cfg->name);
		bt_hist_write(out, "baton_stream_session_latency_seconds", labels, &ss->v[i].latency);
	}
}
