/*
 * The spool's pure parts: session keys as directory names, item file
 * extensions, all-or-nothing marker files, and the repair of a results
 * file that a crash cut mid-line.  No libuv, no requests: unit-tested alone.
 */
#include "stream.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

void bt_spool_encode_key(const char *key, char *out, size_t size)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;
	BT_ASSERT(size >= 3 * 128 + 1);
	for (size_t i = 0; key[i] && i < 128; i++) {
		unsigned char ch = (unsigned char)key[i];
		int keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
			   (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' ||
			   (ch == '.' && i > 0);
		if (keep) {
			out[o++] = (char)ch;
		} else {
			out[o++] = '%';
			out[o++] = hex[ch >> 4];
			out[o++] = hex[ch & 15];
		}
	}
	if (o == 0) /* the empty key still needs a name */
		o = (size_t)snprintf(out, size, "%%");
	out[o] = '\0';
}

const char *bt_spool_ext(const char *ct)
{
	if (!ct)
		return "bin";
	static const struct {
		const char *type, *ext;
	} known[] = {
		{"image/jpeg", "jpg"}, {"image/png", "png"},	    {"application/json", "json"},
		{"text/plain", "txt"}, {"image/x-portable-pixmap", "ppm"},
	};
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		size_t n = strlen(known[i].type);
		/* Parameters (";charset=…") do not change the kind of file. */
		if (!strncasecmp(ct, known[i].type, n) && (ct[n] == '\0' || ct[n] == ';'))
			return known[i].ext;
	}
	return "bin";
}

int bt_spool_write_atomic(const char *dir, const char *name, const char *data, size_t len)
{
	char tmp[4096], dst[4096];
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name) >= sizeof(tmp) ||
	    (size_t)snprintf(dst, sizeof(dst), "%s/%s", dir, name) >= sizeof(dst))
		return -ENAMETOOLONG;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	size_t off = 0;
	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? -errno : -EIO;
			close(fd);
			unlink(tmp);
			return e;
		}
		off += (size_t)n;
	}
	if (close(fd) != 0 || rename(tmp, dst) != 0) {
		int e = -errno;
		unlink(tmp);
		return e;
	}
	return 0;
}

long bt_spool_repair_lines(const char *path)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	long lines = 0;
	off_t good = 0, pos = 0;
	char buf[65536];
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		for (ssize_t i = 0; i < n; i++) {
			if (buf[i] == '\n') {
				lines++;
				good = pos + i + 1;
			}
		}
		pos += n;
	}
	int e = n < 0 ? -errno : 0;
	if (!e && good != pos && ftruncate(fd, good) != 0)
		e = -errno;
	close(fd);
	return e ? e : lines;
}
