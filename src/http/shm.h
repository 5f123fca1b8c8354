/*
 * Triton's system shared-memory extension for clients on the same machine
 * (docs/protocol-v2.md, "Shared memory"): the registry of regions a client
 * registered (a POSIX shared-memory object, an offset and a size), and the
 * rewriting of infer requests and answers whose tensors name a region.
 * No sockets, no libuv: http.c routes the requests and answers.
 */
#ifndef BT_HTTP_SHM_H
#define BT_HTTP_SHM_H

#include <jansson.h>
#include <stddef.h>

#include "../common/common.h"

struct bt_shm; /* the registry */
struct bt_shm_outputs; /* outputs of one request that go into regions */

struct bt_shm *bt_shm_new(void);
/* Unregisters every region; those still used by requests live until released. */
void bt_shm_free(struct bt_shm *s);
/* Bytes of every registered region (they count against http.max_buffered_bytes). */
size_t bt_shm_bytes(const struct bt_shm *s);

/*
 * Registers region name from a register request's body ({"key", "offset",
 * "byte_size"}), refusing it past room bytes.  0, or -1 with a sentence in
 * err (a 400 answer).
 */
int bt_shm_register(struct bt_shm *s, const char *name, const char *body, size_t len,
		    size_t room, char *err, size_t errlen);
/* The status array of one region (name) or all (NULL); NULL with err when unknown. */
json_t *bt_shm_status(const struct bt_shm *s, const char *name, char *err, size_t errlen);
/*
 * Unregisters one region (name) or all (NULL).  A request that uses it
 * keeps it until it is answered.  0, or -1 with err when name is unknown.
 */
int bt_shm_unregister(struct bt_shm *s, const char *name, char *err, size_t errlen);

/*
 * Rewrites an infer request (body, len, its JSON header length hl or -1)
 * whose inputs or outputs name regions: each such input becomes a binary
 * tensor read from its region, each such output a binary output that
 * bt_shm_place_outputs will move into its region.  Returns 0 when the
 * request names no region (nothing is made); 1 with the new body in *out
 * (a sealed memfd's read-only mapping in *outfd when it is memfd_min bytes
 * or more and memfd_min > 0, else malloc'd with *outfd = -1; or, when
 * *tail is not NULL, malloc'd and holding all but the tail's last bytes,
 * which stay in a client's object: see struct bt_payload_tail), *places
 * (NULL, or outputs whose slot is a whole object, which the last stage may
 * write itself; *outs refers to it, so it must outlive *outs), its header
 * length in *out_hl (-1: JSON only) and *outs (NULL when no output names
 * a region); -1 with a sentence in err (a 400 answer), also when the
 * request with its regions' bytes would be over max_bytes (a region named
 * many times would otherwise be copied as many times).
 */
int bt_shm_rewrite_infer(struct bt_shm *s, const char *body, size_t len, long long hl,
			 size_t memfd_min, size_t max_bytes, char **out, size_t *outlen, int *outfd,
			 struct bt_payload_tail **tail, struct bt_out_places **places,
			 long long *out_hl, struct bt_shm_outputs **outs, char *err, size_t errlen);
/*
 * Moves the binary outputs of a worker's v2 answer (body, len, JSON header
 * length hl or -1; body_fd, when >= 0, a file holding body, copied from
 * without touching the mapping) that o names into their regions, and makes the answer
 * that says where they are: 0 with *out malloc'd (*out_hl -1 when no
 * binary output is left), or -1 with err.  Run before
 * bt_v2_finish_response, which then has only the small rest to copy.
 */
int bt_shm_place_outputs(struct bt_shm_outputs *o, const char *body, size_t len, int body_fd,
			 long long hl, char **out, size_t *outlen, long long *out_hl, char *err,
			 size_t errlen);
void bt_shm_outputs_free(struct bt_shm_outputs *o);

#endif
