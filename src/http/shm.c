/*
 * Triton's system shared-memory extension: a registry of the regions
 * clients registered, and the rewriting of the infer requests and answers
 * that name them.  A region is read and written through its descriptor
 * (pread/pwrite), never mapped: a client that shrinks its object under
 * baton gets an error, not baton a SIGBUS.  A large input that is a whole
 * object is not copied: it stays there as the request's tail, and workers
 * get a read-only descriptor of the object (which then holds nothing
 * else).  Any other input is copied once, at admission, into the
 * request's own payload (a sealed memfd when large), and no worker sees
 * its region.
 */
#include "shm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/common.h"
#include "../common/jscan.h"
#include "v2.h"

#define MAX_REGIONS 256
#define NAME_MAX_LEN 127

struct region {
	char *name, *key;
	uint64_t offset, size; /* the registered part of the object */
	int fd; /* the object, read-write */
	int rofd; /* the same object, read-only: what workers may get */
	int refs; /* the registry's (while registered) and each request's that uses it */
	struct region *next;
};

struct bt_shm {
	struct region *list; /* registered regions */
	size_t bytes; /* their sizes, added */
	int count;
};

struct placement {
	char *output; /* the output's name */
	struct region *r; /* referenced */
	uint64_t offset, size; /* within the region */
	int done;
};

struct bt_shm_outputs {
	struct placement *v;
	size_t n;
	const struct bt_out_places *places; /* the request's: which of v its last stage may write */
};

static int fail(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

static void unref(struct region *r)
{
	if (--r->refs > 0)
		return;
	close(r->fd);
	close(r->rofd);
	free(r->name);
	free(r->key);
	free(r);
}

struct bt_shm *bt_shm_new(void)
{
	return bt_calloc(1, sizeof(struct bt_shm));
}

void bt_shm_free(struct bt_shm *s)
{
	if (!s)
		return;
	bt_shm_unregister(s, NULL, NULL, 0);
	free(s);
}

size_t bt_shm_bytes(const struct bt_shm *s)
{
	return s ? s->bytes : 0;
}

static struct region *find(const struct bt_shm *s, const char *name)
{
	for (struct region *r = s->list; r; r = r->next)
		if (!strcmp(r->name, name))
			return r;
	return NULL;
}

/* A non-negative integer member of o, when present: 1, 0 when absent, -1 when not one. */
static int get_u64(const json_t *o, const char *key, uint64_t *out)
{
	json_t *v = json_object_get(o, key);
	if (!v)
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return -1;
	*out = (uint64_t)json_integer_value(v);
	return 1;
}

static int valid_name(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n > NAME_MAX_LEN)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)name[i] < 0x21 || name[i] == '/' || (unsigned char)name[i] > 0x7e)
			return 0;
	return 1;
}

int bt_shm_register(struct bt_shm *s, const char *name, const char *body, size_t len,
		    size_t room, char *err, size_t errlen)
{
	json_error_t jerr;
	uint64_t offset = 0, size = 0;
	struct stat st;
	if (!valid_name(name))
		return fail(err, errlen, "a region name is 1 to %d printable characters without '/'",
			    NAME_MAX_LEN);
	if (find(s, name))
		return fail(err, errlen, "shared memory region '%s' is already registered", name);
	if (s->count >= MAX_REGIONS)
		return fail(err, errlen, "%d shared memory regions are registered: unregister one first",
			    MAX_REGIONS);
	json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(doc)) {
		json_decref(doc);
		return fail(err, errlen, "the body must be {\"key\": \"/name\", \"offset\": N, "
			    "\"byte_size\": N}");
	}
	const char *key = json_string_value(json_object_get(doc, "key"));
	int bad_key = !key || json_string_length(json_object_get(doc, "key")) != strlen(key) ||
		      !key[0] || strlen(key) > 255 || strchr(key + 1, '/');
	if (bad_key || get_u64(doc, "offset", &offset) < 0 ||
	    get_u64(doc, "byte_size", &size) != 1 || size == 0) {
		json_decref(doc);
		return fail(err, errlen, bad_key ? "\"key\" must name a POSIX shared memory object, "
						   "as \"/name\""
						 : "\"offset\" must be a non-negative integer and "
						   "\"byte_size\" a positive one");
	}
	if (size > room) {
		json_decref(doc);
		return fail(err, errlen, "region '%s' of %llu bytes does not fit in what is left of "
			    "http.max_buffered_bytes (%zu bytes)", name, (unsigned long long)size, room);
	}
	int fd = shm_open(key, O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
	if (fd < 0) {
		fail(err, errlen, "cannot open shared memory key '%.255s': %s", key, strerror(errno));
		json_decref(doc);
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < offset ||
	    size > (uint64_t)st.st_size - offset) {
		fail(err, errlen, "shared memory key '%.255s' holds %lld bytes: offset %llu + byte_size "
		     "%llu is outside it", key, (long long)st.st_size,
		     (unsigned long long)offset, (unsigned long long)size);
		close(fd);
		json_decref(doc);
		return -1;
	}
	/* A new open of the same object, read-only (not a dup: that would share O_RDWR). */
	char self[48];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
	int rofd = open(self, O_RDONLY | O_CLOEXEC);
	if (rofd < 0) {
		fail(err, errlen, "cannot open shared memory key '%.255s' read-only: %s", key,
		     strerror(errno));
		close(fd);
		json_decref(doc);
		return -1;
	}
	struct region *r = bt_calloc(1, sizeof(*r));
	r->rofd = rofd;
	r->name = bt_strdup(name);
	r->key = bt_strdup(key);
	r->offset = offset;
	r->size = size;
	r->fd = fd;
	r->refs = 1;
	r->next = s->list;
	s->list = r;
	s->bytes += size;
	s->count++;
	json_decref(doc);
	return 0;
}

json_t *bt_shm_status(const struct bt_shm *s, const char *name, char *err, size_t errlen)
{
	json_t *a = json_array();
	for (struct region *r = s->list; r; r = r->next) {
		if (name && strcmp(r->name, name))
			continue;
		json_array_append_new(a, json_pack("{s:s, s:s, s:I, s:I}", "name", r->name, "key",
						   r->key, "offset", (json_int_t)r->offset,
						   "byte_size", (json_int_t)r->size));
	}
	if (name && !json_array_size(a)) {
		json_decref(a);
		fail(err, errlen, "no shared memory region named '%.128s'", name);
		return NULL;
	}
	return a;
}

int bt_shm_unregister(struct bt_shm *s, const char *name, char *err, size_t errlen)
{
	struct region **p = &s->list;
	int found = 0;
	while (*p) {
		struct region *r = *p;
		if (name && strcmp(r->name, name)) {
			p = &r->next;
			continue;
		}
		*p = r->next;
		s->bytes -= r->size;
		s->count--;
		found = 1;
		unref(r); /* requests that use it hold their own references */
	}
	if (name && !found)
		return fail(err, errlen, "no shared memory region named '%.128s'", name);
	return 0;
}

/* ---- infer requests ------------------------------------------------------ */

/* A piece of the new body: bytes of a region, or of the client's body. */
struct piece {
	struct region *r; /* NULL: from p */
	const char *p;
	uint64_t offset, size;
	int bytes; /* a BYTES tensor, which baton reads to check */
};

/*
 * The shared-memory parameters of a tensor's parameters: 1 when it names
 * a region (checked: known, and offset + size inside it), 0 when none,
 * -1 with err.
 */
static int shm_params(const struct bt_shm *s, json_t *params, const char *what,
		      const char *name, struct region **r, uint64_t *offset, uint64_t *size,
		      char *err, size_t errlen)
{
	json_t *jreg = params ? json_object_get(params, "shared_memory_region") : NULL;
	int has_size = 0, has_off = 0;
	*offset = 0;
	if (params) {
		has_size = get_u64(params, "shared_memory_byte_size", size);
		has_off = get_u64(params, "shared_memory_offset", offset);
	}
	if (!jreg && !has_size && !has_off)
		return 0;
	if (!jreg || !has_size)
		return fail(err, errlen, "%s '%s': shared_memory_region and shared_memory_byte_size "
			    "go together", what, name);
	if (!json_is_string(jreg) || has_size < 0 || has_off < 0)
		return fail(err, errlen, "%s '%s': shared_memory_region must be a string, "
			    "shared_memory_byte_size and shared_memory_offset non-negative integers",
			    what, name);
	*r = find(s, json_string_value(jreg));
	if (!*r)
		return fail(err, errlen, "%s '%s': unknown shared memory region '%.128s'", what, name,
			    json_string_value(jreg));
	/* A client names only what it registered: offset + size within the region. */
	if (*offset > (*r)->size || *size > (*r)->size - *offset)
		return fail(err, errlen, "%s '%s': offset %llu + byte size %llu is outside shared "
			    "memory region '%s' (%llu bytes)", what, name,
			    (unsigned long long)*offset, (unsigned long long)*size, (*r)->name,
			    (unsigned long long)(*r)->size);
	json_object_del(params, "shared_memory_region");
	json_object_del(params, "shared_memory_byte_size");
	json_object_del(params, "shared_memory_offset");
	return 1;
}

static int pread_full(int fd, char *p, size_t n, uint64_t off)
{
	while (n > 0) {
		ssize_t k = pread(fd, p, n, (off_t)off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		p += k;
		n -= (size_t)k;
		off += (uint64_t)k;
	}
	return 0;
}

static int fill(char *dst, const char *hdr, size_t hlen, const struct piece *pc, size_t n,
		char *err, size_t errlen)
{
	memcpy(dst, hdr, hlen);
	dst += hlen;
	for (size_t i = 0; i < n; i++) {
		if (!pc[i].r)
			memcpy(dst, pc[i].p, pc[i].size);
		else if (pread_full(pc[i].r->fd, dst, pc[i].size, pc[i].r->offset + pc[i].offset))
			return fail(err, errlen, "shared memory region '%s' cannot be read: its object "
				    "is shorter than when it was registered", pc[i].r->name);
		dst += pc[i].size;
	}
	return 0;
}

static int pwrite_full(int fd, const char *p, size_t n, uint64_t off);

/*
 * The new body in a sealed memfd (*out its read-only mapping), written
 * with file-to-file copies: a fresh mapping would fault its pages in one
 * by one.
 */
static int build_memfd(size_t total, const char *hdr, size_t hlen, const struct piece *pc,
		       size_t n, char **out, int *outfd, char *err, size_t errlen)
{
	int fd = memfd_create("baton-shm-input", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0 || pwrite_full(fd, hdr, hlen, 0)) {
		if (fd >= 0)
			close(fd);
		return fail(err, errlen, "cannot make a memfd of %zu bytes: %s", total,
			    strerror(errno));
	}
	uint64_t at = hlen;
	for (size_t i = 0; i < n; i++) {
		int e = pc[i].r ? bt_file_copy(pc[i].r->fd, pc[i].r->offset + pc[i].offset, fd, at,
					       pc[i].size)
				: pwrite_full(fd, pc[i].p, pc[i].size, at) ? -errno : 0;
		if (e) {
			close(fd);
			if (e == -ENODATA && pc[i].r)
				return fail(err, errlen, "shared memory region '%s' cannot be read: its "
					    "object is shorter than when it was registered",
					    pc[i].r->name);
			return fail(err, errlen, "cannot fill a memfd: %s", strerror(-e));
		}
		at += pc[i].size;
	}
	if (fcntl(fd, F_ADD_SEALS, BT_MEMFD_SEALS) < 0 || !(*out = bt_memfd_map(fd, total))) {
		close(fd);
		return fail(err, errlen, "cannot seal or map a memfd: %s", strerror(errno));
	}
	*outfd = fd;
	return 0;
}

/*
 * A place for an output its last stage may write itself, when that costs
 * no confinement: a large slot that is its object's whole content, so
 * that the writable descriptor the worker gets shows nothing else.
 */
static void place_add(struct bt_out_places **pl, const struct region *r, const char *name,
		      uint64_t off, uint64_t size, size_t memfd_min)
{
	struct stat st;
	if (!memfd_min || size < memfd_min || r->offset + off != 0 || fstat(r->fd, &st) < 0 ||
	    (uint64_t)st.st_size != size)
		return;
	int fd = fcntl(r->fd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (!*pl)
		*pl = bt_calloc(1, sizeof(**pl));
	(*pl)->v = bt_realloc((*pl)->v, ((*pl)->n + 1) * sizeof(*(*pl)->v));
	(*pl)->v[(*pl)->n++] = (struct bt_out_place){bt_strdup(name), fd, (size_t)size};
}

/* Whether the last stage was handed the place of output name. */
static int handed(const struct bt_shm_outputs *o, const char *name)
{
	for (size_t i = 0; o->places && o->places->handed && i < o->places->n; i++)
		if (!strcmp(o->places->v[i].name, name))
			return 1;
	return 0;
}

static void outputs_add(struct bt_shm_outputs *o, const char *name, struct region *r,
			uint64_t offset, uint64_t size)
{
	o->v = bt_realloc(o->v, (o->n + 1) * sizeof(*o->v));
	o->v[o->n++] = (struct placement){bt_strdup(name), r, offset, size, 0};
	r->refs++;
}

/*
 * The last piece as a tail (left in its object) when that costs no
 * confinement: a large, non-BYTES input that is its whole object, so that
 * the read-only descriptor workers get shows nothing else.  NULL: copy it.
 */
static struct bt_payload_tail *tail_of(const struct piece *pc, size_t n, size_t memfd_min)
{
	struct stat st;
	const struct piece *p = n ? &pc[n - 1] : NULL;
	if (!p || !p->r || p->bytes || !memfd_min || p->size < memfd_min ||
	    p->r->offset + p->offset != 0 || fstat(p->r->fd, &st) < 0 ||
	    (uint64_t)st.st_size != p->size)
		return NULL;
	int fd = fcntl(p->r->rofd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	struct bt_payload_tail *t = bt_calloc(1, sizeof(*t));
	*t = (struct bt_payload_tail){fd, 0, p->size};
	return t;
}

int bt_shm_rewrite_infer(struct bt_shm *s, const char *body, size_t len, long long hl,
			 size_t memfd_min, size_t max_bytes, char **out, size_t *outlen, int *outfd,
			 struct bt_payload_tail **tail, struct bt_out_places **places,
			 long long *out_hl, struct bt_shm_outputs **outs, char *err, size_t errlen)
{
	size_t jlen = hl >= 0 ? (size_t)hl : len;
	*out = NULL;
	*outfd = -1;
	*tail = NULL;
	*places = NULL;
	*outs = NULL;
	/* Malformed requests are left to bt_v2_parse_infer, which says what is wrong. */
	if ((hl >= 0 && (unsigned long long)hl > len) || !memmem(body, jlen, "shared_memory_", 14))
		return 0;
	/* Large inputs' "data" arrays stay text (bench/v2json: 21 times it as a tree). */
	struct bt_jspans sp = {0};
	json_t *root = jlen < bt_v2_scan_min
			   ? json_loadb(body, jlen, JSON_REJECT_DUPLICATES, NULL)
		       : bt_jscan_find_data(body, jlen, 0, "inputs", &sp, NULL, 0) ||
				 sp.values > BT_V2_MAX_VALUES
			   ? NULL
			   : bt_jscan_load_without_data(body, jlen, &sp, JSON_REJECT_DUPLICATES, NULL);
	json_t *inputs = json_object_get(root, "inputs");
	json_t *outputs = json_object_get(root, "outputs");
	if (!json_is_object(root) || !json_is_array(inputs)) {
		json_decref(root);
		bt_jscan_spans_release(&sp);
		return 0;
	}
	size_t nin = json_array_size(inputs), npieces = 0, pos = jlen, total = 0;
	struct piece *pc = bt_calloc(nin ? nin : 1, sizeof(*pc));
	struct bt_shm_outputs *o = bt_calloc(1, sizeof(*o));
	int any = 0, e = -1;
	char *hdr = NULL;
	for (size_t i = 0; i < nin; i++) {
		json_t *in = json_array_get(inputs, i);
		json_t *params = json_object_get(in, "parameters");
		const char *name = json_string_value(json_object_get(in, "name"));
		struct region *r;
		uint64_t off, size;
		int k = shm_params(s, json_is_object(params) ? params : NULL, "input",
				   name ? name : "?", &r, &off, &size, err, errlen);
		if (k < 0)
			goto done;
		if (k > 0) {
			if (json_object_get(in, "data") || json_object_get(params, "binary_data_size")) {
				fail(err, errlen, "input '%s': shared memory excludes \"data\" and "
				     "binary_data_size", name ? name : "?");
				goto done;
			}
			json_object_set_new(params, "binary_data_size", json_integer((json_int_t)size));
			const char *dt = json_string_value(json_object_get(in, "datatype"));
			pc[npieces++] = (struct piece){r, NULL, off, size, !dt || !strcmp(dt, "BYTES")};
			any = 1;
		} else if (get_u64(json_is_object(params) ? params : NULL, "binary_data_size",
				   &size) == 1) {
			/* The client's own binary tensor, moved to its place in the new body. */
			if (size > len - pos) {
				fail(err, errlen, "input '%s': binary_data_size %llu goes past the end of "
				     "the body", name ? name : "?", (unsigned long long)size);
				goto done;
			}
			pc[npieces++] = (struct piece){NULL, body + pos, 0, size, 0};
			pos += size;
		}
	}
	for (size_t i = 0; i < json_array_size(outputs); i++) {
		json_t *ot = json_array_get(outputs, i);
		json_t *params = json_object_get(ot, "parameters");
		const char *name = json_string_value(json_object_get(ot, "name"));
		struct region *r;
		uint64_t off, size;
		int k = shm_params(s, json_is_object(params) ? params : NULL, "output",
				   name ? name : "?", &r, &off, &size, err, errlen);
		if (k < 0)
			goto done;
		if (k > 0) {
			if (!name) {
				fail(err, errlen, "outputs[%zu]: a shared memory output needs a \"name\"", i);
				goto done;
			}
			json_object_set_new(params, "binary_data", json_true());
			outputs_add(o, name, r, off, size);
			place_add(places, r, name, off, size, memfd_min);
			any = 1;
		}
	}
	if (!any) {
		e = 0;
		goto done;
	}
	if (hl >= 0 && pos != len) {
		fail(err, errlen, "the body has %zu bytes after its binary tensors", len - pos);
		goto done;
	}
	size_t hlen;
	hdr = bt_jscan_dump_with_data(root, "inputs", body, &sp, JSON_COMPACT, &hlen);
	BT_ASSERT(hdr);
	total = hlen;
	for (size_t i = 0; i < npieces; i++) {
		if (total > max_bytes || pc[i].size > max_bytes - total) {
			fail(err, errlen, "the request with its shared-memory inputs is over "
			     "max_request_bytes (%zu)", max_bytes);
			goto done;
		}
		total += pc[i].size;
	}
	*out_hl = npieces ? (long long)hlen : -1;
	if ((*tail = tail_of(pc, npieces, memfd_min))) {
		/* The head in memory; the rest stays in the client's object. */
		*out = bt_malloc(total - (*tail)->len + 1);
		if (fill(*out, hdr, hlen, pc, npieces - 1, err, errlen)) {
			free(*out);
			*out = NULL;
			bt_payload_tail_free(*tail);
			*tail = NULL;
			goto done;
		}
		(*out)[total - (*tail)->len] = '\0';
	} else if (memfd_min && total >= memfd_min) {
		if (build_memfd(total, hdr, hlen, pc, npieces, out, outfd, err, errlen))
			goto done;
	} else {
		*out = bt_malloc(total + 1);
		if (fill(*out, hdr, hlen, pc, npieces, err, errlen)) {
			free(*out);
			*out = NULL;
			goto done;
		}
		(*out)[total] = '\0';
	}
	*outlen = total;
	e = 1;
done:
	free(hdr);
	free(pc);
	json_decref(root);
	bt_jscan_spans_release(&sp);
	if (e == 1 && o->n) {
		o->places = *places;
		*outs = o;
	} else {
		bt_shm_outputs_free(o);
		bt_out_places_free(*places);
		*places = NULL;
	}
	return e;
}

/* ---- infer answers ------------------------------------------------------- */

static struct placement *placement_of(struct bt_shm_outputs *o, const char *name)
{
	for (size_t i = 0; name && i < o->n; i++)
		if (!strcmp(o->v[i].output, name))
			return &o->v[i];
	return NULL;
}

static int pwrite_full(int fd, const char *p, size_t n, uint64_t off)
{
	while (n > 0) {
		ssize_t k = pwrite(fd, p, n, (off_t)off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		p += k;
		n -= (size_t)k;
		off += (uint64_t)k;
	}
	return 0;
}

int bt_shm_place_outputs(struct bt_shm_outputs *o, const char *body, size_t len, int body_fd,
			 long long hl, char **out, size_t *outlen, long long *out_hl, char *err,
			 size_t errlen)
{
	size_t jlen = hl >= 0 ? (size_t)hl : len, pos = jlen;
	if (hl > (long long)len)
		return fail(err, errlen, "JSON header length %lld is past the %zu-byte answer", hl,
			    len);
	/* Large outputs' "data" arrays stay text (bench/v2json: 13 times it as a tree). */
	struct bt_jspans sp = {0};
	json_t *root = jlen < bt_v2_scan_min ? json_loadb(body, jlen, 0, NULL)
		       : bt_jscan_find_data(body, jlen, 0, "outputs", &sp, NULL, 0)
			   ? NULL
			   : bt_jscan_load_without_data(body, jlen, &sp, 0, NULL);
	json_t *outputs = json_object_get(root, "outputs");
	struct bt_buf bin = BT_BUF_INIT;
	int e = -1;
	if (!json_is_object(root)) {
		fail(err, errlen, "the answer is not a JSON object");
		goto done;
	}
	for (size_t i = 0; i < json_array_size(outputs); i++) {
		json_t *ot = json_array_get(outputs, i);
		json_t *params = json_object_get(ot, "parameters");
		json_t *jsz = json_object_get(params, "binary_data_size");
		struct placement *p = placement_of(o, json_string_value(json_object_get(ot, "name")));
		double dsz = json_number_value(jsz);
		json_t *jplaced = json_object_get(params, "baton_placed");
		if (!jsz && p && jplaced) {
			/* The last stage wrote it into the region itself (docs/protocol.md). */
			json_int_t n = json_integer_value(jplaced);
			if (!handed(o, p->output) || !json_is_integer(jplaced) || n < 0 ||
			    (uint64_t)n > p->size) {
				fail(err, errlen, "output '%s': the last stage says it wrote %s bytes into "
				     "shared memory it was not given, or more than the slot",
				     p->output, json_is_integer(jplaced) ? "some" : "a non-integer of");
				goto done;
			}
			json_object_del(params, "baton_placed");
			json_object_set_new(params, "shared_memory_region", json_string(p->r->name));
			json_object_set_new(params, "shared_memory_byte_size", json_integer(n));
			p->done = 1;
			continue;
		}
		if (!jsz) {
			if (p) {
				fail(err, errlen, "output '%s' was asked into shared memory but the "
				     "last stage answered it as JSON \"data\"", p->output);
				goto done;
			}
			continue;
		}
		if (!json_is_number(jsz) || dsz < 0 || dsz > (double)(len - pos)) {
			fail(err, errlen, "the answer's binary_data_size values do not fit its body");
			goto done;
		}
		size_t size = (size_t)dsz;
		if (!p) {
			bt_buf_append(&bin, body + pos, size);
		} else if (size > p->size) {
			fail(err, errlen, "output '%s' is %zu bytes, more than its "
			     "shared_memory_byte_size %llu", p->output, size,
			     (unsigned long long)p->size);
			goto done;
		} else if (body_fd >= 0 ? bt_file_copy(body_fd, pos, p->r->fd, p->r->offset + p->offset,
						       size) < 0
					: pwrite_full(p->r->fd, body + pos, size, p->r->offset + p->offset)) {
			fail(err, errlen, "cannot write output '%s' into shared memory region '%s'",
			     p->output, p->r->name);
			goto done;
		} else {
			json_object_del(params, "binary_data_size");
			json_object_set_new(params, "shared_memory_region", json_string(p->r->name));
			json_object_set_new(params, "shared_memory_byte_size",
					    json_integer((json_int_t)size));
			if (p->offset)
				json_object_set_new(params, "shared_memory_offset",
						    json_integer((json_int_t)p->offset));
			p->done = 1;
		}
		pos += size;
	}
	for (size_t i = 0; i < o->n; i++) {
		if (!o->v[i].done) {
			fail(err, errlen, "the answer has no output '%s', asked into shared memory",
			     o->v[i].output);
			goto done;
		}
	}
	size_t hlen;
	char *hdr = bt_jscan_dump_with_data(root, "outputs", body, &sp, JSON_COMPACT, &hlen);
	struct bt_buf nb = BT_BUF_INIT;
	if (!hdr) {
		fail(err, errlen, "the answer cannot be written again as JSON");
		goto done;
	}
	bt_buf_append(&nb, hdr, hlen);
	*out_hl = bin.len ? (long long)nb.len : -1;
	bt_buf_append(&nb, bin.data, bin.len);
	free(hdr);
	*out = bt_buf_detach(&nb, outlen);
	e = 0;
done:
	bt_buf_release(&bin);
	json_decref(root);
	bt_jscan_spans_release(&sp);
	return e;
}

void bt_shm_outputs_free(struct bt_shm_outputs *o)
{
	if (!o)
		return;
	for (size_t i = 0; i < o->n; i++) {
		free(o->v[i].output);
		unref(o->v[i].r);
	}
	free(o->v);
	free(o);
}
