/*
 * Sealed memory files: how a large payload travels between baton and its
 * workers without being copied through a socket.  A payload in a memfd is
 * mapped read-only where it must be read and otherwise only handed on as a
 * descriptor.  This file owns making, checking, mapping and freeing such
 * payloads; passing descriptors over a channel belongs to proc/.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

int bt_memfd_from(const void *p, size_t len)
{
	int fd = memfd_create("baton-payload", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	size_t off = 0;
	while (off < len) {
		ssize_t n = write(fd, (const char *)p + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? -errno : -EIO;
			close(fd);
			return e;
		}
		off += (size_t)n;
	}
	if (fcntl(fd, F_ADD_SEALS, BT_MEMFD_SEALS) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

int bt_memfd_check(int fd, size_t len, char *why, size_t whylen)
{
	struct stat st;
	int seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0) {
		snprintf(why, whylen, "the descriptor is not a memfd that allows sealing");
		return BT_EPROTO;
	}
	int need = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW;
	if ((seals & need) != need) {
		/* Unsealed, its writer could change or truncate it under our mapping (SIGBUS). */
		snprintf(why, whylen, "the memfd is not sealed against write, shrink and grow");
		return BT_EPROTO;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (unsigned long long)st.st_size < len) {
		snprintf(why, whylen, "the memfd holds fewer bytes than the header says");
		return BT_EPROTO;
	}
	return 0;
}

char *bt_memfd_map(int fd, size_t len)
{
	if (len == 0)
		return NULL;
	void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
	return p == MAP_FAILED ? NULL : p;
}

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14 */
#endif

void bt_memfd_prefault(const char *p, size_t len)
{
	/* One call instead of a page fault per 4 KiB (costly in a VM); best effort. */
	if (p && len)
		madvise((void *)p, len, MADV_POPULATE_READ);
}

int bt_file_copy(int from, uint64_t from_off, int to, uint64_t to_off, size_t n)
{
	loff_t in = (loff_t)from_off, out = (loff_t)to_off;
	while (n > 0) {
		/* In the kernel, page cache to page cache: no mapping, no page faults. */
		ssize_t k = copy_file_range(from, &in, to, &out, n, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
			      errno == EOPNOTSUPP))
			break; /* not between these two (two tmpfs mounts): sendfile */
		if (k < 0)
			return -errno;
		if (k == 0)
			return -ENODATA; /* from ends early */
		n -= (size_t)k;
	}
	/* sendfile splices between any two files, but writes at to's own position. */
	if (n > 0 && lseek(to, out, SEEK_SET) == out) {
		while (n > 0) {
			ssize_t k = sendfile(to, from, &in, n);
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0)
				break;
			out += k;
			n -= (size_t)k;
		}
	}
	char buf[65536];
	while (n > 0) {
		ssize_t k = pread(from, buf, BT_MIN(n, sizeof(buf)), in);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -ENODATA;
		for (ssize_t w = 0; w < k;) {
			ssize_t m = pwrite(to, buf + w, (size_t)(k - w), out);
			if (m < 0 && errno == EINTR)
				continue;
			if (m <= 0)
				return m < 0 ? -errno : -EIO;
			w += m;
			out += m;
		}
		in += k;
		n -= (size_t)k;
	}
	return 0;
}

void bt_payload_free(char *p, size_t len, int fd)
{
	if (fd < 0) {
		free(p);
		return;
	}
	if (p && len)
		munmap(p, len);
	close(fd);
}

void bt_payload_tail_free(struct bt_payload_tail *t)
{
	if (!t)
		return;
	close(t->fd);
	free(t);
}

int bt_payload_tail_confined(const struct bt_payload_tail *t)
{
	struct stat st;
	return t->off == 0 && fstat(t->fd, &st) == 0 && S_ISREG(st.st_mode) &&
	       (uint64_t)st.st_size == t->len;
}

int bt_payload_flatten(const char *head, size_t hlen, const struct bt_payload_tail *t,
		       int *fd, char **map)
{
	int f = memfd_create("baton-payload", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (f < 0)
		return -errno;
	int e = 0;
	for (size_t off = 0; off < hlen && !e;) {
		ssize_t k = pwrite(f, head + off, hlen - off, (off_t)off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			e = k < 0 ? -errno : -EIO;
		else
			off += (size_t)k;
	}
	if (!e)
		e = bt_file_copy(t->fd, t->off, f, hlen, t->len);
	if (!e && fcntl(f, F_ADD_SEALS, BT_MEMFD_SEALS) < 0)
		e = -errno;
	if (!e && !(*map = bt_memfd_map(f, hlen + t->len)) && hlen + t->len)
		e = -errno;
	if (e) {
		close(f);
		return e;
	}
	*fd = f;
	return 0;
}

void bt_out_places_free(struct bt_out_places *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n; i++) {
		free(p->v[i].name);
		close(p->v[i].fd);
	}
	free(p->v);
	free(p);
}
