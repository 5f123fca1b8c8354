/*
 * libFuzzer target of the shared-memory extension (src/http/shm.c): the
 * register bodies and infer requests an HTTP client may send, against two
 * regions of a real POSIX shared-memory object made at start-up.  Besides
 * memory safety it checks what callers rely on: a rewritten request's
 * header length lies inside its body, whose binary part is exactly the
 * tensors' bytes, and a region is only ever read inside what was
 * registered (the object's bytes outside are a pattern no region shows).
 *
 * Input: one selector byte (even: a register body; odd: an infer request
 * whose next 4 bytes are its header length, little-endian, 0xffffffff =
 * none), then the body.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/common.h"
#include "http/shm.h"
#include "http/v2.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct bt_shm *shm;
static char key[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char err[256];
	(void)argc;
	(void)argv;
	snprintf(key, sizeof(key), "/baton-fuzz-shm-%d", (int)getpid());
	int fd = shm_open(key, O_CREAT | O_EXCL | O_RDWR, 0600);
	if (fd < 0 || ftruncate(fd, 16384) < 0) {
		perror("fuzz_shm: cannot make a shared memory object");
		abort();
	}
	/* 0xAA outside the regions, the region's own bytes inside. */
	char *p = mmap(NULL, 16384, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	memset(p, 0xAA, 16384);
	memset(p + 1024, 'a', 1024);
	memset(p + 4096, 'b', 8192);
	munmap(p, 16384);
	close(fd);
	shm = bt_shm_new();
	char body[128];
	snprintf(body, sizeof(body), "{\"key\":\"%s\",\"offset\":1024,\"byte_size\":1024}", key);
	if (bt_shm_register(shm, "a", body, strlen(body), SIZE_MAX, err, sizeof(err)))
		abort();
	snprintf(body, sizeof(body), "{\"key\":\"%s\",\"offset\":4096,\"byte_size\":8192}", key);
	if (bt_shm_register(shm, "b", body, strlen(body), SIZE_MAX, err, sizeof(err)))
		abort();
	/* The object can go now: registered regions keep it open. */
	shm_unlink(key);
	return 0;
}

static void broken(const char *what)
{
	fprintf(stderr, "fuzz_shm: property broken: %s\n", what);
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[512];
	if (size < 1)
		return 0;
	if (!(data[0] & 1)) {
		/* Registers "r" (or fails with a sentence), then unregisters it. */
		size_t before = bt_shm_bytes(shm);
		err[0] = '\0';
		if (bt_shm_register(shm, "r", (const char *)data + 1, size - 1, 1u << 20, err,
				    sizeof(err)) == 0) {
			if (bt_shm_unregister(shm, "r", err, sizeof(err)))
				broken("a registered region cannot be unregistered");
		} else if (!err[0]) {
			broken("a refused registration says nothing");
		}
		if (bt_shm_bytes(shm) != before)
			broken("the registry's byte count drifted");
		return 0;
	}
	if (size < 5)
		return 0;
	uint32_t sel;
	memcpy(&sel, data + 1, 4);
	const char *body = (const char *)data + 5;
	size_t len = size - 5;
	long long hl = sel == UINT32_MAX ? -1 : (long long)(sel % (len + 2));
	char *out = NULL;
	size_t outlen = 0;
	int outfd = -1;
	long long out_hl = -1;
	struct bt_shm_outputs *outs = NULL;
	struct bt_payload_tail *tail = NULL;
	struct bt_out_places *places = NULL;
	/* Bit 2: the data arrays kept as text and put back (v2.h), as large documents are. */
	bt_v2_scan_min = (data[0] & 4) ? 0 : 64 * 1024;
	int r = bt_shm_rewrite_infer(shm, body, len, hl, (data[0] & 2) ? 64 : 0, (size_t)1 << 26,
				     &out, &outlen,
				     &outfd, &tail, &places, &out_hl, &outs, err, sizeof(err));
	if (r == 1) {
		/* A tail left in the object: only the head is in memory. */
		size_t inmem = outlen - (tail ? tail->len : 0);
		if (out_hl > (long long)outlen || out_hl == 0)
			broken("the rewritten header length is outside the body");
		if (tail && out_hl > (long long)inmem)
			broken("a tail begins inside the JSON header");
		for (size_t i = out_hl < 0 ? inmem : (size_t)out_hl; i < inmem; i++)
			if ((unsigned char)out[i] == 0xAA && memchr(body, 0xAA, len) == NULL)
				broken("bytes outside every registered region were read");
		if (outs && !tail) {
			/* The request as the answer: whatever it says, no crash and no leak. */
			char *ans = NULL;
			size_t alen = 0;
			long long ahl = -1;
			if (bt_shm_place_outputs(outs, out, outlen, outfd, out_hl, &ans, &alen, &ahl,
						 err, sizeof(err)) == 0 && ahl > (long long)alen)
				broken("a placed answer's header length is outside it");
			free(ans);
		}
		bt_payload_free(out, outlen, outfd);
		bt_payload_tail_free(tail);
	} else if (r < 0 && !err[0]) {
		broken("a refused request says nothing");
	}
	bt_shm_outputs_free(outs);
	bt_out_places_free(places);
	return 0;
}
