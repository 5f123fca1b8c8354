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
