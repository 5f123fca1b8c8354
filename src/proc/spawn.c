/*
 * Spawn mode: one process per request, for existing one-shot scripts.
 * Two conventions (seed 000 and seed 003): an argv with {input}/{output}
 * placeholders gets the payload in a temporary input file and leaves its
 * answer in the output file; without placeholders the payload goes to
 * stdin and the answer is read from stdout.  A replica is a slot that runs
 * at most one such process at a time; the process is started like a
 * persistent worker (bt_launch_init), in its own process group.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../daemon/daemon.h"
#include "../common/jscan.h"
#include "../sched/sched.h"
#include "proc.h"

#define ERR_TAIL 1024 /* bytes of stderr kept for the error message */
/*
 * An answer from this many bytes is scanned rather than loaded: only its
 * top level matters here, and a tree costs about 21 times its text (a
 * 50 MiB answer grew baton by 1 GiB).
 */
#define ANSWER_SCAN_MIN (64 * 1024)

struct bt_spawn_job {
	struct bt_replica *r; /* NULL once the replica let go of it */
	struct bt_request *req; /* NULL once abandoned (timeout) */
	struct bt_daemon *d;
	struct bt_process proc; /* its poll handle counts in handles */
	struct bt_unit *unit; /* the script and whatever it leaves running */
	uv_pipe_t in, out, err;
	uv_write_t wreq;
	int handles; /* open handles; freed at 0 */
	int pid;
	char *dir; /* temporary directory, removed at the end */
	int dirfd; /* it, opened once: later steps never resolve its path again */
	char *in_path, *out_path; /* file convention only */
	int files;
	struct bt_buf stdout_buf; /* the answer, stdin/stdout convention */
	int stdout_too_big; /* it passed max_payload_bytes: the answer is lost */
	char *kill_why; /* why baton killed it (memory_mb), for the error */
	char *stdin_copy; /* the payload being written: a timed-out request is freed */
	char tail[ERR_TAIL]; /* the last stderr bytes, a ring */
	size_t tail_len, tail_pos;
	struct bt_lines lines[2];
};

/*
 * Empties the directory open as dfd (and closes it), through file
 * descriptors and without following links: the tree may belong to the
 * stage's user, who must not be able to redirect root's deletions.
 */
static void empty_dir(int dfd)
{
	DIR *dh = fdopendir(dfd);
	if (!dh) {
		close(dfd);
		return;
	}
	struct dirent *e;
	while ((e = readdir(dh))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (unlinkat(dirfd(dh), e->d_name, 0) == 0 || errno != EISDIR)
			continue;
		int sub = openat(dirfd(dh), e->d_name,
				 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub >= 0)
			empty_dir(sub);
		unlinkat(dirfd(dh), e->d_name, AT_REMOVEDIR);
	}
	closedir(dh);
}

/* Removes the job's directory; a path swapped for a link is not followed. */
static void remove_job_dir(struct bt_spawn_job *j)
{
	if (j->dirfd >= 0)
		empty_dir(j->dirfd);
	j->dirfd = -1;
	rmdir(j->dir);
}

static void job_closed_cb(uv_handle_t *h)
{
	struct bt_spawn_job *j = h->data;
	if (--j->handles > 0)
		return;
	struct bt_daemon *d = j->d;
	if (j->dir)
		remove_job_dir(j);
	free(j->dir);
	free(j->in_path);
	free(j->out_path);
	free(j->stdin_copy);
	bt_buf_release(&j->stdout_buf);
	free(j->kill_why);
	bt_lines_release(&j->lines[0]);
	bt_lines_release(&j->lines[1]);
	bt_unit_release(j->unit);
	free(j);
	d->live_children--;
	bt_daemon_progress(d);
}

static void close_all(struct bt_spawn_job *j)
{
	uv_handle_t *hs[] = {(uv_handle_t *)&j->in, (uv_handle_t *)&j->out,
			     (uv_handle_t *)&j->err};
	if (j->pid)
		bt_process_close(&j->proc, job_closed_cb);
	for (size_t i = 0; i < BT_ARRAY_SIZE(hs); i++)
		if (!uv_is_closing(hs[i]))
			uv_close(hs[i], job_closed_cb);
}

static void keep_tail(struct bt_spawn_job *j, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		j->tail[j->tail_pos] = p[i];
		j->tail_pos = (j->tail_pos + 1) % ERR_TAIL;
		if (j->tail_len < ERR_TAIL)
			j->tail_len++;
	}
}

/* The last lines of stderr, newlines turned into " | ", for an error text. */
static void tail_text(const struct bt_spawn_job *j, char *out, size_t size)
{
	size_t start = (j->tail_pos + ERR_TAIL - j->tail_len) % ERR_TAIL, o = 0;
	for (size_t i = 0; i < j->tail_len && o + 4 < size; i++) {
		char ch = j->tail[(start + i) % ERR_TAIL];
		if (ch == '\n') {
			if (i + 1 < j->tail_len && o)
				o += (size_t)snprintf(out + o, size - o, " | ");
		} else if ((unsigned char)ch >= ' ') {
			out[o++] = ch;
		}
	}
	out[o] = '\0';
}

static void consume(struct bt_spawn_job *j, uv_stream_t *s, const char *p, size_t n)
{
	if (s == (uv_stream_t *)&j->err) {
		keep_tail(j, p, n);
		bt_lines_feed(&j->lines[1], p, n);
	} else if (j->files) {
		bt_lines_feed(&j->lines[0], p, n); /* stdout is only a log there */
	} else if (j->stdout_too_big || j->stdout_buf.len + n > j->d->cfg->max_payload_bytes) {
		/* Keep reading (the script must not block on a full pipe), keep nothing. */
		j->stdout_too_big = 1;
		bt_buf_release(&j->stdout_buf);
	} else {
		bt_buf_append(&j->stdout_buf, p, n);
	}
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	(void)suggested;
	buf->base = bt_read_buf();
	buf->len = BT_READ_BUF_SIZE;
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct bt_spawn_job *j = s->data;
	if (n > 0)
		consume(j, s, buf->base, (size_t)n);
	else if (n < 0)
		uv_read_stop(s);
}

static void drain(struct bt_spawn_job *j, uv_pipe_t *p)
{
	int fd;
	if (uv_is_closing((uv_handle_t *)p) || uv_fileno((uv_handle_t *)p, &fd))
		return;
	for (;;) {
		ssize_t n = read(fd, bt_read_buf(), BT_READ_BUF_SIZE);
		if (n <= 0)
			break;
		consume(j, (uv_stream_t *)p, bt_read_buf(), (size_t)n);
	}
}

/*
 * Reads the script's output file, name in the job's directory.  Only a
 * regular file, not a link, and with user: one that user owns: the script
 * may have left a FIFO (opening or reading it would block the daemon) or
 * a link to a file only root may read.
 */
static int read_whole(const struct bt_spawn_job *j, const char *name, size_t max, char **data,
		      size_t *len)
{
	const struct bt_stage_config *cfg = j->r->stage->cfg;
	struct stat st;
	int e = bt_read_file_at(j->dirfd, name, O_NOFOLLOW, max, data, len, &st);
	if (e == -ELOOP)
		return -EINVAL;
	if (!e && cfg->user && st.st_uid != cfg->uid) {
		free(*data);
		return -EINVAL;
	}
	return e;
}

/* An answer over max_payload_bytes is the script's failure, not the input's: worker_error. */
static void too_big(const struct bt_spawn_job *j, struct bt_request *req)
{
	char msg[160];
	snprintf(msg, sizeof(msg), "the script's answer is over max_payload_bytes (%zu bytes)",
		 j->d->cfg->max_payload_bytes);
	bt_stage_result(req, NULL, 0, NULL, msg, 1);
}

/* What deliver reads of a scanned answer's top-level object. */
struct answer_top {
	const char *status_key; /* spawn.status_key, or NULL */
	int error; /* its value is "error" */
	char *why[2]; /* the "error" and "message" strings, malloc'd */
};

static int answer_member(void *ctx, const struct bt_jvalue *v)
{
	struct answer_top *t = ctx;
	/* Members of the top-level object: an array's items have no key. */
	if (v->depth != 2 || !v->key || v->type != BT_J_STRING)
		return 0;
	if (t->status_key && !strcmp(v->key, t->status_key))
		t->error = !strcmp(v->str, "error");
	int k = !strcmp(v->key, "error") ? 0 : !strcmp(v->key, "message") ? 1 : -1;
	if (k >= 0) {
		free(t->why[k]); /* a key twice: the scan fails, and frees the last */
		t->why[k] = bt_strndup(v->str, v->strlen);
	}
	return 0;
}

/*
 * The answer of a process that exited 0.  With status_key, a JSON object
 * whose status_key is "error" (seed 000's scripts exit 0 on failure) is a
 * rejection carrying the script's own words.
 */
static void deliver(struct bt_spawn_job *j, struct bt_request *req)
{
	const struct bt_stage_config *cfg = j->r->stage->cfg;
	char *data = NULL;
	size_t len = 0;
	if (j->files) {
		int e = read_whole(j, strrchr(j->out_path, '/') + 1, j->d->cfg->max_payload_bytes,
				   &data, &len);
		if (e == BT_ETOOBIG) {
			too_big(j, req);
			return;
		}
		if (e) {
			char msg[300];
			snprintf(msg, sizeof(msg), "the script exited 0 but left no output file (%s)",
				 e == -EINVAL ? "not a regular file of the script's own" : bt_strerror(e));
			bt_stage_result(req, NULL, 0, NULL, msg, 1);
			return;
		}
	} else if (j->stdout_too_big) {
		too_big(j, req);
		return;
	} else {
		bt_buf_reserve(&j->stdout_buf, 0);
		data = bt_buf_detach(&j->stdout_buf, &len);
	}
	json_error_t jerr;
	json_t *doc = len < ANSWER_SCAN_MIN ? json_loadb(data, len, JSON_ALLOW_NUL, &jerr) : NULL;
	struct answer_top top = {cfg->spawn_status_key, 0, {NULL, NULL}};
	/* Scanned, a key twice or a \u0000 makes it not JSON (loaded, they passed). */
	int json = doc ? 1
		       : len >= ANSWER_SCAN_MIN &&
				 !bt_jscan_check(data, len, BT_JSCAN_VALUES, answer_member, &top, NULL, 0);
	const char *status = top.error ? "error" : NULL;
	const char *why = top.why[0] ? top.why[0] : top.why[1];
	if (cfg->spawn_status_key && json_is_object(doc)) {
		status = json_string_value(json_object_get(doc, cfg->spawn_status_key));
		why = json_string_value(json_object_get(doc, "error"));
		if (!why)
			why = json_string_value(json_object_get(doc, "message"));
	}
	if (json && status && !strcmp(status, "error")) {
		char msg[1024];
		snprintf(msg, sizeof(msg), "%s", why ? why : "the script reported an error");
		json_decref(doc);
		free(top.why[0]);
		free(top.why[1]);
		free(data);
		bt_stage_result(req, NULL, 0, NULL, msg, 0);
		return;
	}
	json_t *meta = json ? json_pack("{s:s, s:s}", "content_type", "application/json", "ext",
					".json")
			    : json_object();
	json_decref(doc);
	free(top.why[0]);
	free(top.why[1]);
	bt_stage_result(req, data, len, meta, NULL, 0);
	json_decref(meta);
}

static void exit_cb(struct bt_process *p, int64_t status, int sig)
{
	struct bt_spawn_job *j = p->poll.data;
	struct bt_replica *r = j->r;
	struct bt_request *req = j->req;
	if (sig == SIGKILL && !j->kill_why && bt_unit_oom_killed(j->unit)) {
		/* memory.max: the kernel ended it, as baton's own memory_mb check would. */
		j->kill_why = bt_strdup("over memory_mb (cgroup memory.max)");
		if (r)
			r->stage->failures[BT_FAIL_MEMORY]++;
	}
	/* Whatever the script left running, setsid() or not, ends with it. */
	bt_unit_end(j->unit);
	drain(j, &j->out);
	drain(j, &j->err);
	bt_lines_flush(&j->lines[0]);
	bt_lines_flush(&j->lines[1]);
	if (r) {
		r->job = NULL;
		if (req)
			bt_replica_release(r, req);
		if (r->state == BT_REPLICA_STOPPING) {
			uv_timer_stop(&r->timer);
			r->state = BT_REPLICA_EXITED;
		}
		bt_stage_replica_changed(r); /* the slot is free again */
	}
	if (req) {
		if (sig || status) {
			char why[ERR_TAIL + 96], tail[ERR_TAIL + 64];
			tail_text(j, tail, sizeof(tail));
			if (sig && j->kill_why)
				snprintf(why, sizeof(why), "killed by baton: %s", j->kill_why);
			else if (sig)
				snprintf(why, sizeof(why), "killed by signal %d (%s)%s%s", sig,
					 strsignal(sig), tail[0] ? ": " : "", tail);
			else
				snprintf(why, sizeof(why), "exited with status %lld%s%s",
					 (long long)status, tail[0] ? ": " : "", tail);
			bt_stage_lost(req, 1, why);
		} else {
			deliver(j, req);
		}
	}
	close_all(j);
}

static void stdin_written_cb(uv_write_t *w, int status)
{
	struct bt_spawn_job *j = w->data;
	(void)status; /* a script may exit without reading: EPIPE is not an error here */
	if (!uv_is_closing((uv_handle_t *)&j->in))
		uv_close((uv_handle_t *)&j->in, job_closed_cb);
}

/* Replaces every {input} and {output} in arg. */
static char *substitute(const char *arg, const char *in, const char *out)
{
	struct bt_buf b = BT_BUF_INIT;
	while (*arg) {
		if (!strncmp(arg, "{input}", 7)) {
			bt_buf_puts(&b, in);
			arg += 7;
		} else if (!strncmp(arg, "{output}", 8)) {
			bt_buf_puts(&b, out);
			arg += 8;
		} else {
			bt_buf_append(&b, arg++, 1);
		}
	}
	bt_buf_reserve(&b, 0);
	return bt_buf_detach(&b, NULL);
}

/* The input file keeps the input's extension, so scripts can tell PNG from PDF. */
static const char *input_ext(const struct bt_request *req)
{
	const char *name = json_string_value(json_object_get(req->meta, "name"));
	const char *dot = name ? strrchr(name, '.') : NULL;
	if (dot && bt_ext_is_safe(dot))
		return dot;
	const char *ct = json_string_value(json_object_get(req->meta, "content_type"));
	return ct && strstr(ct, "json") ? ".json" : ".bin";
}

int bt_spawn_start(struct bt_replica *r, struct bt_request *req)
{
	struct bt_daemon *d = r->stage->d;
	const struct bt_stage_config *cfg = r->stage->cfg;
	struct bt_spawn_job *j = bt_calloc(1, sizeof(*j));
	int e = 0;
	j->r = r;
	j->req = req;
	j->d = d;
	j->files = cfg->spawn_files;

	/* The stage's own TMPDIR first, as the docs promise, then baton's. */
	const char *tmp = getenv("TMPDIR"), *base = "";
	for (int i = 0; i < cfg->nenv; i++)
		if (!strcmp(cfg->env[i].name, "TMPDIR")) {
			tmp = cfg->env[i].value;
			/* A relative one is the script's: relative to the workdir it runs in. */
			if (tmp[0] && tmp[0] != '/')
				base = cfg->workdir;
		}
	char *templ = bt_asprintf("%s%s%s/baton-%s-XXXXXX", base, *base ? "/" : "",
				  tmp && *tmp ? tmp : "/tmp", cfg->name);
	if (!mkdtemp(templ)) {
		e = -errno;
		free(templ);
		free(j);
		return e;
	}
	j->dir = templ;
	j->dirfd = open(j->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	/* The script runs as the stage's user: the directory and its input are its own. */
	if (j->dirfd < 0 || (cfg->user && fchown(j->dirfd, cfg->uid, cfg->gid))) {
		e = -errno;
		remove_job_dir(j);
		free(j->dir);
		free(j);
		return e;
	}
	if (j->files) {
		char *in_name = bt_asprintf("input%s", input_ext(req));
		j->in_path = bt_asprintf("%s/%s", j->dir, in_name);
		j->out_path = bt_asprintf("%s/output%s", j->dir, cfg->spawn_output_ext);
		int fd = openat(j->dirfd, in_name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
				0600);
		free(in_name);
		if (fd >= 0 && cfg->user && fchown(fd, cfg->uid, cfg->gid)) {
			close(fd);
			fd = -1;
		}
		ssize_t w = 0;
		size_t off = 0;
		while (fd >= 0 && off < req->len && (w = write(fd, req->payload + off, req->len - off)) > 0)
			off += (size_t)w;
		if (fd < 0 || off < req->len)
			e = fd < 0 || w < 0 ? -errno : -EIO;
		if (fd >= 0)
			close(fd);
		if (e) {
			remove_job_dir(j);
			free(j->dir);
			free(j->in_path);
			free(j->out_path);
			free(j);
			return e;
		}
	}

	j->unit = bt_unit_new(d->contain, cfg->name, r->id, cfg->memory_mb, &e);
	if (!j->unit) {
		remove_job_dir(j);
		free(j->dir);
		free(j->in_path);
		free(j->out_path);
		free(j);
		return e;
	}
	uv_pipe_init(d->loop, &j->in, 0);
	uv_pipe_init(d->loop, &j->out, 0);
	uv_pipe_init(d->loop, &j->err, 0);
	j->proc.poll.data = j->in.data = j->out.data = j->err.data = j->wreq.data = j;

	char **argv = bt_calloc((size_t)cfg->argc + 1, sizeof(char *));
	for (int i = 0; i < cfg->argc; i++)
		argv[i] = j->files && i > 0 ? substitute(cfg->argv[i], j->in_path, j->out_path)
					    : cfg->argv[i];
	struct bt_launch l;
	char *extra[] = {"BATON_MODE=spawn", NULL};
	bt_launch_init(&l, r, argv, extra, j->unit);

	uv_stdio_container_t stdio[3];
	stdio[0].flags = j->files ? UV_IGNORE : UV_CREATE_PIPE | UV_READABLE_PIPE;
	stdio[0].data.stream = (uv_stream_t *)&j->in;
	stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
	stdio[1].data.stream = (uv_stream_t *)&j->out;
	stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
	stdio[2].data.stream = (uv_stream_t *)&j->err;
	l.opts.stdio_count = 3;
	l.opts.stdio = stdio;

	j->handles = 4;
	d->live_children++;
	e = bt_process_spawn(d->loop, &j->proc, &l.opts, exit_cb);
	bt_launch_release(&l);
	for (int i = 1; j->files && i < cfg->argc; i++)
		free(argv[i]);
	free(argv);
	if (e) {
		j->r = NULL;
		j->req = NULL;
		j->handles--; /* no process to watch */
		close_all(j);
		return e;
	}
	j->pid = j->proc.pid;
	bt_unit_started(j->unit, j->pid);
	bt_lines_init(&j->lines[0], cfg->name, r->id, j->pid, "stdout");
	bt_lines_init(&j->lines[1], cfg->name, r->id, j->pid, "stderr");
	j->lines[1].last = r->stage->last_stderr; /* the stage outlives its processes */
	for (int i = 0; i < 2; i++)
		bt_lines_limit(&j->lines[i], cfg->log_interval_ms, cfg->log_lines, cfg->log_bytes);
	uv_read_start((uv_stream_t *)&j->out, alloc_cb, read_cb);
	uv_read_start((uv_stream_t *)&j->err, alloc_cb, read_cb);
	if (j->files) {
		uv_close((uv_handle_t *)&j->in, job_closed_cb);
	} else {
		j->stdin_copy = bt_malloc(req->len ? req->len : 1);
		if (req->len)
			memcpy(j->stdin_copy, req->payload, req->len);
		uv_buf_t b = uv_buf_init(j->stdin_copy, (unsigned)req->len);
		if (uv_write(&j->wreq, (uv_stream_t *)&j->in, &b, 1, stdin_written_cb))
			uv_close((uv_handle_t *)&j->in, job_closed_cb);
	}
	r->job = j;
	bt_debug("spawned", "stage=%s replica=%d pid=%d request=%s", cfg->name, r->id, j->pid,
		 req->idstr);
	return 0;
}

int bt_spawn_pid(const struct bt_replica *r)
{
	return r->job ? r->job->pid : 0;
}

struct bt_unit *bt_spawn_unit(const struct bt_replica *r)
{
	return r->job ? r->job->unit : NULL;
}

void bt_spawn_abandon(struct bt_replica *r)
{
	if (!r->job)
		return;
	r->job->req = NULL;
	bt_unit_signal(r->job->unit, SIGKILL);
}

void bt_spawn_kill(struct bt_replica *r, const char *why)
{
	if (!r->job)
		return;
	free(r->job->kill_why);
	r->job->kill_why = bt_strdup(why);
	bt_unit_signal(r->job->unit, SIGKILL);
}

void bt_spawn_signal(struct bt_replica *r, int sig)
{
	if (r->job)
		bt_unit_signal(r->job->unit, sig);
}
