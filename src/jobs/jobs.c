/*
 * `baton run`: the daemon's scheduler over files.  Feeding happens once
 * per loop turn (the daemon's on_idle hook), never from inside a request's
 * callback; results are written with write-fsync-rename, so a run killed
 * at any point leaves only whole outputs, and a re-run skips them.
 */
#include "jobs.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <search.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../daemon/daemon.h"
#include "../proc/proc.h"

#define FAILED_LOG "_failed.jsonl"
#define RUN_LOG "_baton.log"
#define TMP_MARK ".baton-tmp."

struct job;

/* One input; its address is the done_arg of its request. */
struct item {
	char *abspath;
	char *relpath; /* relative to its input root; never has ".." */
	struct job *job; /* owner, set once items stop moving */
	char *duplicate; /* why it fails unsent: an earlier input has its relpath */
};

struct job {
	struct bt_daemon *d;
	struct bt_pipeline *pl;
	const struct bt_job_options *opt;
	char *outdir; /* absolute */
	struct item *items; /* to do, in a stable order */
	size_t nitems, next;
	/*
	 * Items the pipeline refused as overloaded (a queue_max or max_inflight
	 * below --jobs): fed again, first, once a request in flight has ended.
	 */
	struct item **again;
	size_t again_head, again_len, again_cap;
	int held; /* an overload was met: feeding waits for a request to end */
	size_t inflight, ok, failed, skipped;
	int jobs;
	int finished; /* every item has an outcome */
	int failed_fd; /* _failed.jsonl, -1 until opened */
	off_t failed_size; /* its length after the last whole line */
	char *write_error; /* the first write that failed: the run stops, exits 1 */
	int tty;
	uv_timer_t progress_timer;
	uint64_t start_ms, last_line_ms;
	double **run_ms; /* per pipeline step, successful requests' run times */
	int nsteps; /* steps of the pipeline (it is freed before run_ms) */
	size_t *nrun, *caprun;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- walking the inputs --------------------------------------------------- */

struct list {
	char **v;
	size_t n, cap;
};

static void list_add(struct list *l, char *s)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->v = bt_realloc(l->v, l->cap * sizeof(char *));
	}
	l->v[l->n++] = s;
}

static void list_release(struct list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	memset(l, 0, sizeof(*l));
}

/* A directory's identity, for the set of those already walked (a tsearch tree). */
struct dir_id {
	dev_t dev;
	ino_t ino;
};

static int cmp_dir_id(const void *a, const void *b)
{
	const struct dir_id *x = a, *y = b;
	if (x->dev != y->dev)
		return x->dev < y->dev ? -1 : 1;
	return x->ino < y->ino ? -1 : x->ino > y->ino;
}

/*
 * True the first time a directory is seen.  stat() follows symlinks, so
 * a link back to an ancestor (`in/loop -> .`) would otherwise be walked
 * again and again until PATH_MAX stops it.
 */
static int first_visit(void **seen, const struct stat *st)
{
	struct dir_id *id = bt_malloc(sizeof(*id));
	id->dev = st->st_dev;
	id->ino = st->st_ino;
	struct dir_id **found = tsearch(id, seen, cmp_dir_id);
	if (!found)
		abort(); /* out of memory: bt_malloc's policy */
	if (*found == id)
		return 1;
	free(id);
	return 0;
}

/*
 * Collects regular files under dir (relative names in rel, "" at the top)
 * in sorted order, skipping dot files and the output directory itself.
 * Each directory is walked once (the first name it is reached by).  With
 * report, what cannot be walked or is not a regular file (an unreadable
 * directory, a path too long, a FIFO, a dangling link) is collected too:
 * reading it fails, so it is not lost without a word.  -errno when dir
 * itself cannot be opened.
 */
static int walk_dir(const char *dir, const char *rel, const char *skip, void **seen,
		    int report, struct list *abs, struct list *rels)
{
	DIR *dh = opendir(dir);
	if (!dh)
		return -errno;
	struct list names = {0};
	struct dirent *e;
	while ((e = readdir(dh)))
		if (e->d_name[0] != '.')
			list_add(&names, bt_strdup(e->d_name));
	closedir(dh);
	if (names.n)
		qsort(names.v, names.n, sizeof(char *), cmp_str);
	for (size_t i = 0; i < names.n; i++) {
		char *path = bt_asprintf("%s/%s", dir, names.v[i]);
		char *r = rel[0] ? bt_asprintf("%s/%s", rel, names.v[i]) : bt_strdup(names.v[i]);
		struct stat st;
		char real[PATH_MAX];
		int keep = 0;
		if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
			if (!(realpath(path, real) && !strcmp(real, skip)) &&
			    first_visit(seen, &st))
				keep = walk_dir(path, r, skip, seen, report, abs, rels) < 0 && report;
		} else {
			keep = report || (stat(path, &st) == 0 && S_ISREG(st.st_mode));
		}
		if (keep) {
			list_add(abs, path);
			list_add(rels, r);
		} else {
			free(path);
			free(r);
		}
	}
	list_release(&names);
	return 0;
}

/*
 * Whether --include/--exclude keep a file found in a directory: a glob
 * without '/' looks at the file name, one with '/' at the relative path.
 */
static int glob_hit(const char *glob, const char *rel)
{
	const char *base = strrchr(rel, '/');
	if (strchr(glob, '/'))
		return fnmatch(glob, rel, FNM_PATHNAME) == 0;
	return fnmatch(glob, base ? base + 1 : rel, 0) == 0;
}

static int selected(const struct bt_job_options *opt, const char *rel)
{
	int keep = opt->ninclude == 0;
	for (int i = 0; i < opt->ninclude && !keep; i++)
		keep = glob_hit(opt->include[i], rel);
	for (int i = 0; i < opt->nexclude && keep; i++)
		keep = !glob_hit(opt->exclude[i], rel);
	return keep;
}

/* walk_dir() from one root, which counts as visited itself. */
static int walk(const char *dir, const char *skip, int report, struct list *abs,
		struct list *rels)
{
	void *seen = NULL;
	struct stat st;
	int e = stat(dir, &st) ? -errno : 0;
	if (!e && first_visit(&seen, &st))
		e = walk_dir(dir, "", skip, &seen, report, abs, rels);
	tdestroy(seen, free);
	return e;
}

/* An input's relative path and its position among the inputs. */
struct rel_ref {
	const char *rel;
	size_t index;
};

static int cmp_rel_ref(const void *a, const void *b)
{
	const struct rel_ref *x = a, *y = b;
	int c = strcmp(x->rel, y->rel);
	if (c)
		return c;
	return x->index < y->index ? -1 : x->index > y->index;
}

/*
 * For each input, the index of the first input with the same relative
 * path (so the same output), or SIZE_MAX when it is that first one.
 * Returns a malloc'd array of rels->n entries.
 */
static size_t *find_duplicates(const struct list *rels)
{
	size_t *first = bt_calloc(rels->n, sizeof(size_t));
	if (rels->n == 0)
		return first;
	struct rel_ref *refs = bt_calloc(rels->n, sizeof(*refs));
	for (size_t i = 0; i < rels->n; i++) {
		refs[i].rel = rels->v[i];
		refs[i].index = i;
		first[i] = SIZE_MAX;
	}
	qsort(refs, rels->n, sizeof(*refs), cmp_rel_ref);
	/* Sorted by path, then position: each run of equal paths starts with the first. */
	for (size_t i = 1, head = refs[0].index; i < rels->n; i++) {
		if (strcmp(refs[i].rel, refs[i - 1].rel))
			head = refs[i].index;
		else
			first[refs[i].index] = head;
	}
	free(refs);
	return first;
}

/*
 * The outputs that exist: relative input paths whose "<path><ext>" is in
 * outdir with a safe extension.  Sorted, for bsearch.
 */
static void existing_outputs(const char *outdir, struct list *done)
{
	struct list abs = {0}, rels = {0};
	walk(outdir, "", 0, &abs, &rels);
	for (size_t i = 0; i < rels.n; i++) {
		/* The run's own files are nobody's output. */
		if (!strcmp(rels.v[i], FAILED_LOG) || !strcmp(rels.v[i], RUN_LOG))
			continue;
		char *dot = strrchr(rels.v[i], '.');
		char *slash = strrchr(rels.v[i], '/');
		if (dot && (!slash || dot > slash) && bt_ext_is_safe(dot) &&
		    dot != rels.v[i] && !(slash && dot == slash + 1))
			list_add(done, bt_strndup(rels.v[i], (size_t)(dot - rels.v[i])));
	}
	list_release(&abs);
	list_release(&rels);
	if (done->n)
		qsort(done->v, done->n, sizeof(char *), cmp_str);
}

/* Removes temporary files a killed run left behind (ours only, by name). */
static void remove_stale_temps(const char *dir)
{
	DIR *dh = opendir(dir);
	if (!dh)
		return;
	struct dirent *e;
	while ((e = readdir(dh))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char *path = bt_asprintf("%s/%s", dir, e->d_name);
		struct stat st;
		if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
			remove_stale_temps(path);
		else if (e->d_name[0] == '.' && strstr(e->d_name, TMP_MARK))
			unlink(path);
		free(path);
	}
	closedir(dh);
}

static int mkdir_p(const char *path)
{
	char *p = bt_strdup(path);
	int r = 0;
	for (char *s = p + 1; *s && !r; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0755) && errno != EEXIST)
			r = -errno;
		*s = '/';
	}
	if (!r && mkdir(p, 0755) && errno != EEXIST)
		r = -errno;
	free(p);
	return r;
}

/* ---- results ----------------------------------------------------------------- */

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/*
 * Writes data to path through a temporary file: never a partial output.
 * The temporary name keeps at most 200 bytes of the output's, so that a
 * name near NAME_MAX still has one; the file gets the mode a plain
 * creation would (0666 less the umask), not mkstemp's 0600.
 */
static int write_atomically(const char *path, const char *data, size_t len)
{
	static int mode = -1;
	if (mode < 0) {
		mode_t mask = umask(0);
		umask(mask);
		mode = 0666 & ~(int)mask;
	}
	char *dir = bt_strdup(path);
	char *slash = strrchr(dir, '/');
	*slash = '\0';
	int r = mkdir_p(dir);
	char *tmp = bt_asprintf("%s/.%.200s" TMP_MARK "XXXXXX", dir, slash + 1);
	int fd = r ? -1 : mkstemp(tmp);
	if (!r && fd < 0)
		r = -errno;
	if (!r && fchmod(fd, (mode_t)mode))
		r = -errno;
	if (!r)
		r = write_all(fd, data, len);
	if (!r && fsync(fd))
		r = -errno;
	if (fd >= 0 && close(fd) && !r)
		r = -errno;
	if (!r && rename(tmp, path))
		r = -errno;
	if (r && fd >= 0)
		unlink(tmp);
	if (!r) {
		/* The rename itself must survive a crash too. */
		int dfd = open(dir, O_RDONLY | O_DIRECTORY);
		if (dfd >= 0) {
			fsync(dfd);
			close(dfd);
		}
	}
	free(tmp);
	free(dir);
	return r;
}

/*
 * Removes the outputs an earlier run wrote for relpath (DIR/<relpath><ext>,
 * any safe ext): with --force, an input that now fails must not keep an
 * old output, which the next run would take for this one's and skip.
 */
static void remove_outputs(const struct job *job, const char *relpath)
{
	char *out = bt_asprintf("%s/%s", job->outdir, relpath);
	char *slash = strrchr(out, '/');
	*slash = '\0';
	const char *base = slash + 1;
	size_t blen = strlen(base);
	DIR *dh = opendir(out);
	struct dirent *e;
	int top = !strcmp(out, job->outdir); /* where the run's own files live */
	while (dh && (e = readdir(dh)))
		if (!strncmp(e->d_name, base, blen) && bt_ext_is_safe(e->d_name + blen) &&
		    !(top && (!strcmp(e->d_name, FAILED_LOG) || !strcmp(e->d_name, RUN_LOG))) &&
		    unlinkat(dirfd(dh), e->d_name, 0) == 0) {
			char path[4096 + 256];
			snprintf(path, sizeof(path), "%s/%s", out, e->d_name);
			bt_info("removed the output of an earlier run", "path=%s", BT_LOGQ(path));
		}
	if (dh)
		closedir(dh);
	free(out);
}

/*
 * A write the run depends on failed (the disk is full, the log cannot be
 * written): later outputs would fail the same way, so the run stops after
 * what is in flight, says why, and exits 1.  Only the first is reported.
 */
static void storage_failed(struct job *job, const char *path, int e)
{
	if (job->write_error)
		return;
	job->write_error = bt_asprintf("cannot write '%s': %s", path, bt_strerror(e));
	fprintf(stderr, "%sbaton run: %s; stopping\n", job->tty ? "\r\033[K" : "",
		job->write_error);
	bt_error("run stopping: a write failed", "reason=\"%s\"", job->write_error);
	if (job->d)
		bt_daemon_shutdown(job->d);
}

/* Errors of the file system rather than of one output's name or place. */
static int storage_error(int e)
{
	return e == -ENOSPC || e == -EDQUOT || e == -EIO || e == -EROFS || e == -EFBIG;
}

/*
 * Appends one line to _failed.jsonl with a single write; a line the disk
 * took only in part is cut off again, so the file stays valid JSON Lines.
 */
static void append_failed_line(struct job *job, const char *text)
{
	char *line = bt_asprintf("%s\n", text);
	int e = write_all(job->failed_fd, line, strlen(line));
	if (e) {
		if (ftruncate(job->failed_fd, job->failed_size))
			bt_error("cannot cut a partial line off", "file=%s error=\"%s\"", FAILED_LOG,
				 strerror(errno));
		char *path = bt_asprintf("%s/%s", job->outdir, FAILED_LOG);
		storage_failed(job, path, e);
		free(path);
	} else {
		job->failed_size += (off_t)strlen(line);
	}
	free(line);
}

static void record_failure(struct job *job, const char *relpath, const char *code,
			   const char *error, int attempts, const char *stage)
{
	/* A duplicate's output is the first input's: it stays. */
	if (job->opt->force && relpath && strcmp(code, "duplicate_output") != 0)
		remove_outputs(job, relpath);
	/* File names need not be UTF-8; JSON must be. */
	char path[PATH_MAX], msg[1024];
	snprintf(path, sizeof(path), "%s", relpath ? relpath : "?");
	snprintf(msg, sizeof(msg), "%s", error ? error : "");
	json_t *line = json_pack("{s:s, s:s, s:s, s:i}", "path", bt_utf8_clean(path), "code",
				 code, "error", bt_utf8_clean(msg), "attempts", attempts);
	if (stage)
		json_object_set_new(line, "stage", json_string(stage));
	char *text = json_dumps(line, JSON_COMPACT);
	append_failed_line(job, text);
	free(text);
	json_decref(line);
	job->failed++;
}

static void add_sample(struct job *job, int step, double ms)
{
	if (job->nrun[step] == job->caprun[step]) {
		job->caprun[step] = job->caprun[step] ? job->caprun[step] * 2 : 256;
		job->run_ms[step] = bt_realloc(job->run_ms[step], job->caprun[step] * sizeof(double));
	}
	job->run_ms[step][job->nrun[step]++] = ms;
}

static void request_done(struct bt_request *req, void *arg)
{
	/*
	 * The output path comes from the item, never from req->meta: workers'
	 * reply metas are merged into it, so meta.path is theirs to change.
	 */
	struct item *it = arg;
	struct job *job = it->job;
	const char *relpath = it->relpath;
	job->inflight--;
	if (req->code == BT_OVERLOADED && job->inflight > 0) {
		/*
		 * A batch runner holds work back rather than failing it; with
		 * nothing else in flight, waiting would change nothing.
		 */
		if (!job->held && !job->again_len)
			bt_info("the pipeline is full: inputs wait", "stage=%s reason=%s",
				req->error_stage ? req->error_stage : "?", BT_LOGQ(req->error));
		if (job->again_len == job->again_cap) {
			job->again_cap = job->again_cap ? job->again_cap * 2 : 16;
			job->again = bt_realloc(job->again, job->again_cap * sizeof(*job->again));
		}
		job->again[job->again_len++] = it;
		job->held = 1;
	} else if (req->code != BT_OK) {
		record_failure(job, relpath, bt_code_name(req->code), req->error, req->attempts,
			       req->error_stage);
	} else {
		const char *ext = json_string_value(json_object_get(req->meta, "ext"));
		if (!ext)
			ext = ".out";
		if (!bt_ext_is_safe(ext)) {
			char msg[160];
			snprintf(msg, sizeof(msg),
				 "meta.ext '%.40s' is not a safe extension ('.' and 1-16 of A-Za-z0-9_-)",
				 ext);
			record_failure(job, relpath, "invalid_output", msg, req->attempts, NULL);
		} else {
			char *path = bt_jobs_output_path(job->outdir, relpath, ext);
			int e = write_atomically(path, req->payload ? req->payload : "", req->len);
			if (e) {
				char msg[PATH_MAX + 64];
				snprintf(msg, sizeof(msg), "cannot write '%s': %s", path, bt_strerror(e));
				record_failure(job, relpath, "write_failed", msg, req->attempts, NULL);
				if (storage_error(e))
					storage_failed(job, path, e);
			} else {
				job->ok++;
				for (int s = 0; s < job->pl->nstages; s++)
					add_sample(job, s, (double)req->timings[s].run_us / 1000.0);
			}
			free(path);
		}
	}
	if (req->code != BT_OVERLOADED || job->inflight == 0)
		job->held = 0;
	bt_request_free(req);
	bt_daemon_wake(job->d);
}

/* The next item to send: one refused as overloaded first, else a new one. */
static struct item *next_item(struct job *job)
{
	if (job->again_head < job->again_len) {
		struct item *it = job->again[job->again_head++];
		if (job->again_head == job->again_len)
			job->again_head = job->again_len = 0;
		return it;
	}
	return job->next < job->nitems ? &job->items[job->next++] : NULL;
}

static int items_left(const struct job *job)
{
	return job->again_head < job->again_len || job->next < job->nitems;
}

/* ---- feeding ------------------------------------------------------------------- */

enum read_result { READ_OK, READ_UNREADABLE, READ_TOO_LARGE };

/*
 * Reads an input of at most max bytes, saying why not in why.  Only
 * regular files: a FIFO or a device could block the event loop (open
 * waits for a writer, read for data) or never end (/dev/zero).
 */
static enum read_result read_file(const char *path, size_t max, char **data, size_t *len,
				  char *why, size_t whylen)
{
	struct stat st;
	int e = bt_read_file_at(AT_FDCWD, path, 0, max, data, len, &st);
	if (e == -EINVAL)
		snprintf(why, whylen, "not a regular file (%s)",
			 S_ISDIR(st.st_mode)    ? "a directory that could not be walked"
			 : S_ISFIFO(st.st_mode) ? "a FIFO"
			 : S_ISSOCK(st.st_mode) ? "a socket"
						: "a device");
	else if (e == BT_ETOOBIG && (unsigned long long)st.st_size > max)
		snprintf(why, whylen, "the file has %lld bytes, over max_request_bytes %zu",
			 (long long)st.st_size, max);
	else if (e == BT_ETOOBIG)
		snprintf(why, whylen, "the file grew over max_request_bytes %zu as it was read", max);
	else if (e)
		snprintf(why, whylen, "%s", bt_strerror(e));
	return !e ? READ_OK : e == BT_ETOOBIG ? READ_TOO_LARGE : READ_UNREADABLE;
}

/* Ready to feed: each stage has had a replica up, or failed (then fail fast). */
static int pipeline_startable(const struct bt_pipeline *pl)
{
	for (int i = 0; i < pl->nstages; i++)
		if (!pl->stages[i]->up && !pl->stages[i]->failed)
			return 0;
	return 1;
}

/*
 * A stage that will not come up because its replicas wait for a GPU place:
 * every replica pending for placement and none ever up, and either no GPU
 * could hold one even idle, or start_timeout_ms has passed since the run
 * began (another stage holds the room).  Says why in msg.
 */
static int stage_unplaceable(const struct job *job, const struct bt_stage *st, char *msg,
			     size_t len)
{
	const struct bt_stage_config *c = st->cfg;
	if (st->up || st->failed || st->nreplicas == 0)
		return 0;
	for (int i = 0; i < st->nreplicas; i++)
		if (st->replicas[i]->state != BT_REPLICA_PENDING ||
		    !st->replicas[i]->pending_reason[0])
			return 0;
	char reason[256];
	if (bt_place_gpu_when_idle(job->d->gpus, job->d->ngpus, c->gpu_fraction, c->gpu_memory_mb,
				   reason, sizeof(reason)) < 0) {
		snprintf(msg, len, "stage '%s' cannot be placed: %s", c->name, reason);
		return 1;
	}
	if (bt_now_ms() - job->start_ms < c->start_timeout_ms)
		return 0;
	snprintf(msg, len, "stage '%s' has no replica placed after start_timeout_ms %llu: %s",
		 c->name, (unsigned long long)c->start_timeout_ms, st->replicas[0]->pending_reason);
	return 1;
}

/* An input that shares its output with an earlier one fails unsent: returns 1. */
static int fail_if_duplicate(struct job *job, const struct item *it)
{
	if (!it->duplicate)
		return 0;
	record_failure(job, it->relpath, "duplicate_output", it->duplicate, 0, NULL);
	return 1;
}

/* Fails every input not yet sent, e.g. when a stage will never come up. */
static void fail_unsent(struct job *job, const char *error, const char *stage)
{
	struct item *it;
	while ((it = next_item(job))) {
		if (!fail_if_duplicate(job, it))
			record_failure(job, it->relpath, bt_code_name(BT_STAGE_FAILED), error, 0,
				       stage);
	}
}

static void feed(struct bt_daemon *d, void *arg)
{
	struct job *job = arg;
	if (bt_log_write_error && !job->write_error) {
		char *path = bt_asprintf("%s/%s", job->outdir, RUN_LOG);
		storage_failed(job, path, bt_log_write_error);
		free(path);
	}
	if (d->state != BT_DAEMON_RUNNING || job->finished)
		return;
	/* Waiting for such a stage would be forever: fail what is left instead. */
	int placeable = 1;
	for (int i = 0; i < job->pl->nstages && placeable && items_left(job); i++) {
		char msg[512];
		if (stage_unplaceable(job, job->pl->stages[i], msg, sizeof(msg))) {
			bt_error("run cannot start", "reason=%s", BT_LOGQ(msg));
			fprintf(stderr, "%sbaton run: %s\n", job->tty ? "\r\033[K" : "", msg);
			fail_unsent(job, msg, job->pl->stages[i]->cfg->name);
			placeable = 0;
		}
	}
	if (placeable && !pipeline_startable(job->pl))
		return;
	while (!job->held && job->inflight < (size_t)job->jobs && items_left(job)) {
		struct item *it = next_item(job);
		if (fail_if_duplicate(job, it))
			continue;
		char *data, why[256];
		size_t len;
		/* The same limit as over HTTP: workers and spawn scripts rely on it. */
		enum read_result rr = read_file(it->abspath, d->cfg->max_request_bytes, &data,
						&len, why, sizeof(why));
		if (rr != READ_OK) {
			record_failure(job, it->relpath,
				       rr == READ_TOO_LARGE ? "too_large" : "unreadable", why, 0, NULL);
			continue;
		}
		const char *base = strrchr(it->relpath, '/');
		json_t *meta = json_pack("{s:s, s:s}", "path", it->relpath, "name",
					 base ? base + 1 : it->relpath);
		if (!meta) {
			free(data);
			record_failure(job, it->relpath, "unreadable",
				       "the file name is not valid UTF-8, so it cannot go in meta.path",
				       0, NULL);
			continue;
		}
		struct bt_request *req = bt_request_new(job->pl, data, len, meta);
		job->inflight++;
		bt_pipeline_submit(req, request_done, it);
	}
	if (!items_left(job) && job->inflight == 0) {
		job->finished = 1;
		bt_daemon_shutdown(d);
	}
}

/* ---- progress and summary -------------------------------------------------------- */

static void format_eta(char *out, size_t size, double secs)
{
	if (!isfinite(secs) || secs < 0)
		snprintf(out, size, "--:--");
	else if (secs >= 3600)
		snprintf(out, size, "%d:%02d:%02d", (int)secs / 3600, ((int)secs / 60) % 60,
			 (int)secs % 60);
	else
		snprintf(out, size, "%d:%02d", (int)secs / 60, (int)secs % 60);
}

/*
 * Replicas of the pipeline's stages that are ready, out of those meant to
 * run, for "starting workers (2/3 ready)" while nothing has finished yet.
 */
static void count_ready(const struct job *job, int *ready, int *active)
{
	*ready = *active = 0;
	for (int s = 0; s < job->pl->nstages; s++) {
		const struct bt_stage *st = job->pl->stages[s];
		for (int i = 0; i < st->nreplicas; i++) {
			const struct bt_replica *r = st->replicas[i];
			if (!r->active)
				continue;
			(*active)++;
			*ready += r->state == BT_REPLICA_READY;
		}
	}
}

static void progress(struct job *job, int final)
{
	size_t done = job->ok + job->failed;
	double elapsed = (double)(bt_now_ms() - job->start_ms) / 1000.0;
	double rate = elapsed > 0 ? (double)done / elapsed : 0;
	double eta = rate > 0 ? (double)(job->nitems - done) / rate : NAN;
	char etas[32], starting[64] = "";
	format_eta(etas, sizeof(etas), eta);
	/*
	 * Until the first result, the wait is the workers' start-up: say so.
	 * (Only while running: once the daemon closes, replicas are freed.)
	 */
	int ready, active;
	if (done == 0 && !final && job->d->state == BT_DAEMON_RUNNING) {
		count_ready(job, &ready, &active);
		if (ready < active)
			snprintf(starting, sizeof(starting), "starting workers (%d/%d ready)", ready,
				 active);
	}
	if (job->tty) {
		int width = 24, fill = job->nitems ? (int)(width * done / job->nitems) : width;
		char bar[32];
		for (int i = 0; i < width; i++)
			bar[i] = i < fill ? '#' : '.';
		bar[width] = '\0';
		if (starting[0])
			fprintf(stderr, "\r\033[K[%s] %zu/%zu  %s", bar, done, job->nitems, starting);
		else
			fprintf(stderr,
				"\r\033[K[%s] %zu/%zu  ok %zu  failed %zu  skipped %zu  %.1f/s  ETA %s%s",
				bar, done, job->nitems, job->ok, job->failed, job->skipped, rate,
				etas, final ? "\n" : "");
	} else if (final || bt_now_ms() - job->last_line_ms >= 5000) {
		job->last_line_ms = bt_now_ms();
		if (starting[0])
			fprintf(stderr, "progress: %s, 0/%zu done\n", starting, job->nitems);
		else
			fprintf(stderr,
				"progress: %zu/%zu done, %zu ok, %zu failed, %zu skipped, %.1f/s, ETA %s\n",
				done, job->nitems, job->ok, job->failed, job->skipped, rate, etas);
	}
	fflush(stderr);
}

static void progress_cb(uv_timer_t *t)
{
	struct job *job = t->data;
	progress(job, 0);
	/* feed() also decides on time (a stage never placed): let it look at least this often. */
	bt_daemon_wake(job->d);
}

static void summary(struct job *job, int interrupted)
{
	double wall = (double)(bt_now_ms() - job->start_ms) / 1000.0;
	printf("baton run: pipeline '%s', %zu input%s, output in %s\n", job->pl->cfg->name,
	       job->nitems + job->skipped, job->nitems + job->skipped == 1 ? "" : "s", job->outdir);
	printf("  succeeded %zu   failed %zu   skipped %zu%s   wall %.1fs   %.2f files/s\n",
	       job->ok, job->failed, job->skipped,
	       interrupted ? "   (interrupted: the rest was not started)" : "", wall,
	       wall > 0 ? (double)(job->ok + job->failed) / wall : 0.0);
	if (job->ok) {
		printf("  %-16s %10s %10s\n", "stage", "p50 run", "p95 run");
		for (int s = 0; s < job->pl->nstages; s++) {
			if (job->nrun[s])
				qsort(job->run_ms[s], job->nrun[s], sizeof(double), cmp_double);
			printf("  %-16s %8.1fms %8.1fms\n", job->pl->stages[s]->cfg->name,
			       bt_jobs_percentile(job->run_ms[s], job->nrun[s], 0.50),
			       bt_jobs_percentile(job->run_ms[s], job->nrun[s], 0.95));
		}
	}
	if (job->failed)
		printf("  failures: %s/%s\n", job->outdir, FAILED_LOG);
	if (job->write_error)
		printf("  stopped: %s\n", job->write_error);
	printf("  log: %s/%s\n", job->outdir, RUN_LOG);
}

/* ---- the run ------------------------------------------------------------------------ */

static int usage_error(const char *fmt, const char *a)
{
	fprintf(stderr, "baton run: ");
	fprintf(stderr, fmt, a);
	fprintf(stderr, "\n");
	return 2;
}

int bt_jobs_run(struct bt_config *cfg, const struct bt_job_options *opt)
{
	struct job job;
	char real[PATH_MAX], err[512];
	int code = 0, logfd = -1;
	memset(&job, 0, sizeof(job));
	job.opt = opt;
	job.failed_fd = -1;

	int pi = bt_config_pipeline_index(cfg, opt->pipeline);
	if (pi < 0)
		return usage_error("no pipeline named '%s' in the config", opt->pipeline);
	if (mkdir_p(opt->outdir) || !realpath(opt->outdir, real))
		return usage_error("cannot create the output directory '%s'", opt->outdir);
	job.outdir = bt_strdup(real);

	struct list abs = {0}, rels = {0}, done = {0};
	for (int i = 0; i < opt->ninputs; i++) {
		struct stat st;
		if (stat(opt->inputs[i], &st)) {
			code = usage_error("input '%s' does not exist", opt->inputs[i]);
			goto out;
		}
		if (S_ISDIR(st.st_mode)) {
			size_t from = abs.n;
			int e = walk(opt->inputs[i], job.outdir, 1, &abs, &rels);
			/* Filter what this walk found, keeping the order. */
			size_t to = from;
			for (size_t k = from; k < abs.n; k++) {
				if (selected(opt, rels.v[k])) {
					abs.v[to] = abs.v[k];
					rels.v[to++] = rels.v[k];
				} else {
					free(abs.v[k]);
					free(rels.v[k]);
				}
			}
			abs.n = rels.n = to;
			if (e) {
				snprintf(err, sizeof(err), "cannot read the input directory '%s': %s",
					 opt->inputs[i], bt_strerror(e));
				code = usage_error("%s", err);
				goto out;
			}
		} else {
			const char *base = strrchr(opt->inputs[i], '/');
			list_add(&abs, bt_strdup(opt->inputs[i]));
			list_add(&rels, bt_strdup(base ? base + 1 : opt->inputs[i]));
		}
	}
	remove_stale_temps(job.outdir);
	if (!opt->force)
		existing_outputs(job.outdir, &done);
	/*
	 * Two inputs with one relative path would write one output, the later
	 * silently replacing the earlier: the later ones fail instead, even
	 * when that output exists, so the loss shows in every run.
	 */
	size_t *first = find_duplicates(&rels);
	job.items = bt_calloc(abs.n ? abs.n : 1, sizeof(*job.items));
	for (size_t i = 0; i < abs.n; i++) {
		struct item *it = &job.items[job.nitems];
		if (first[i] != SIZE_MAX) {
			const char *earlier = abs.v[first[i]];
			it->duplicate =
			    bt_asprintf("input '%s' has the same relative path as input "
					"'%s', so its output would replace that one's",
					abs.v[i], earlier);
		} else if (done.n && bsearch(&rels.v[i], done.v, done.n, sizeof(char *), cmp_str)) {
			job.skipped++;
			continue;
		}
		it->abspath = bt_strdup(abs.v[i]);
		it->relpath = bt_strdup(rels.v[i]);
		it->job = &job;
		job.nitems++;
	}
	free(first);

	char *failed_path = bt_asprintf("%s/%s", job.outdir, FAILED_LOG);
	job.failed_fd = open(failed_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
	free(failed_path);
	char *log_path = bt_asprintf("%s/%s", job.outdir, RUN_LOG);
	logfd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	free(log_path);
	if (job.failed_fd < 0 || logfd < 0) {
		code = usage_error("cannot write in '%s'", job.outdir);
		goto out;
	}
	bt_log_fd = logfd;
	bt_log_threshold = cfg->log_level;

	uv_loop_t loop;
	struct bt_daemon d;
	uv_loop_init(&loop);
	bt_daemon_init(&d, &loop, cfg);
	job.d = &d;
	job.pl = &d.pipelines[pi];
	int cap = job.pl->stages[0]->nreplicas * job.pl->stages[0]->cfg->max_ongoing *
		  job.pl->stages[0]->cfg->batch_max_size;
	job.jobs = opt->jobs > 0 ? opt->jobs : BT_MAX(2, 2 * cap);
	job.nsteps = job.pl->nstages;
	job.run_ms = bt_calloc((size_t)job.pl->nstages, sizeof(double *));
	job.nrun = bt_calloc((size_t)job.pl->nstages, sizeof(size_t));
	job.caprun = bt_calloc((size_t)job.pl->nstages, sizeof(size_t));
	job.tty = opt->progress < 0 ? isatty(2) : opt->progress;
	job.start_ms = job.last_line_ms = bt_now_ms();
	d.no_http = 1;
	d.no_streams = 1;
	d.on_idle = feed;
	d.on_idle_arg = &job;
	bt_info("run starting", "pipeline=%s inputs=%zu skipped=%zu jobs=%d", opt->pipeline,
		job.nitems, job.skipped, job.jobs);
	uv_timer_init(&loop, &job.progress_timer);
	job.progress_timer.data = &job;
	if (bt_daemon_start(&d, err, sizeof(err))) {
		fprintf(stderr, "baton run: %s\n", err);
		bt_daemon_shutdown(&d);
		d.hard_stop = 1;
	}
	uv_timer_start(&job.progress_timer, progress_cb, job.tty ? 200 : 1000,
		       job.tty ? 200 : 1000);
	bt_daemon_wake(&d);
	/* The daemon closes its handles when it stops; ours goes with the loop. */
	while (uv_run(&loop, UV_RUN_ONCE)) {
		if (d.state == BT_DAEMON_CLOSING && uv_is_active((uv_handle_t *)&job.progress_timer))
			uv_close((uv_handle_t *)&job.progress_timer, NULL);
	}
	progress(&job, 1);
	int interrupted = job.ok + job.failed < job.nitems;
	summary(&job, interrupted);
	bt_info("run finished", "succeeded=%zu failed=%zu skipped=%zu", job.ok, job.failed,
		job.skipped);
	bt_daemon_release(&d);
	job.d = NULL;
	if (uv_loop_close(&loop))
		bt_error("loop closed with handles still open", "%s", "");
	if (bt_log_write_error && !job.write_error) {
		char *path = bt_asprintf("%s/%s", job.outdir, RUN_LOG);
		storage_failed(&job, path, bt_log_write_error);
		free(path);
	}
	if (fflush(stdout) || ferror(stdout)) {
		fprintf(stderr, "baton run: cannot write the summary to stdout: %s\n",
			strerror(errno));
		code = 1;
	}
	code = (code || job.failed || interrupted || job.write_error) ? 1 : 0;
out:
	bt_log_fd = 2;
	if (logfd >= 0)
		close(logfd);
	if (job.failed_fd >= 0 && close(job.failed_fd) && !code) {
		fprintf(stderr, "baton run: cannot write '%s/%s': %s\n", job.outdir, FAILED_LOG,
			strerror(errno));
		code = 1;
	}
	free(job.write_error);
	for (size_t i = 0; i < job.nitems; i++) {
		free(job.items[i].abspath);
		free(job.items[i].relpath);
		free(job.items[i].duplicate);
	}
	free(job.items);
	free(job.again);
	for (int s = 0; job.run_ms && s < job.nsteps; s++)
		free(job.run_ms[s]);
	free(job.run_ms);
	free(job.nrun);
	free(job.caprun);
	list_release(&abs);
	list_release(&rels);
	list_release(&done);
	free(job.outdir);
	return code;
}
