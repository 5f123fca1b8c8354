/*
 * GPU signals from NVML, loaded with dlopen at run time so that baton
 * builds without nvml.h and runs on machines without an NVIDIA driver.
 * Owns the library handle and the device handles; it neither chooses
 * GPUs nor logs: callers decide what a missing GPU or a failed read means.
 */
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scale.h"

#include "../common/common.h"

/*
 * The few NVML types we use, declared here because nvml.h is not
 * installed.  They match the NVML ABI: nvmlReturn_t is an int-sized enum,
 * memory is in bytes, utilisation in percent.
 */
typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct {
	unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
	unsigned int gpu, memory;
} nvmlUtilization_t;

#define NVML_DEFAULT_PATH "libnvidia-ml.so.1"

struct bt_nvml {
	void *lib; /* from dlopen */
	nvmlReturn_t (*init)(void);
	nvmlReturn_t (*shutdown)(void);
	nvmlReturn_t (*get_count)(unsigned int *count);
	nvmlReturn_t (*get_handle)(unsigned int index, nvmlDevice_t *device);
	nvmlReturn_t (*get_memory)(nvmlDevice_t device, nvmlMemory_t *memory);
	nvmlReturn_t (*get_util)(nvmlDevice_t device, nvmlUtilization_t *util);
	const char *(*error_string)(nvmlReturn_t rc); /* NULL when absent */
	int count;
	nvmlDevice_t *devices; /* count of them; NULL for a device NVML refused */
};

/*
 * ISO C has no conversion between void * and function pointers; POSIX
 * promises they have the same representation, so copy the bits rather
 * than cast, which keeps -Wpedantic quiet too.
 */
_Static_assert(sizeof(void *) == sizeof(void (*)(void)),
	       "dlsym needs function pointers the size of void *");

static void *find(void *lib, const char *name, void *fn)
{
	void *p = dlsym(lib, name);
	if (p)
		memcpy(fn, &p, sizeof p);
	return p;
}

static const char *rc_text(const struct bt_nvml *n, nvmlReturn_t rc, char *buf, size_t len)
{
	const char *s = n->error_string ? n->error_string(rc) : NULL;
	if (s)
		snprintf(buf, len, "%s (NVML error %d)", s, rc);
	else
		snprintf(buf, len, "NVML error %d", rc);
	return buf;
}

struct bt_nvml *bt_nvml_open(const char *path, char *err, size_t errlen)
{
	static const struct {
		const char *name;
		size_t off;
	} need[] = {
	    {"nvmlInit_v2", offsetof(struct bt_nvml, init)},
	    {"nvmlShutdown", offsetof(struct bt_nvml, shutdown)},
	    {"nvmlDeviceGetCount_v2", offsetof(struct bt_nvml, get_count)},
	    {"nvmlDeviceGetHandleByIndex_v2", offsetof(struct bt_nvml, get_handle)},
	    {"nvmlDeviceGetMemoryInfo", offsetof(struct bt_nvml, get_memory)},
	    {"nvmlDeviceGetUtilizationRates", offsetof(struct bt_nvml, get_util)},
	};
	struct bt_nvml *n = bt_calloc(1, sizeof *n);
	char why[160];
	unsigned int count = 0;
	nvmlReturn_t rc;
	int inited = 0;

	if (!path)
		path = NVML_DEFAULT_PATH;
	/*
	 * RTLD_LOCAL: NVML's symbols must not satisfy anyone else's
	 * references.  RTLD_NOW: a broken library fails here, once, rather
	 * than at some later tick.
	 */
	n->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!n->lib) {
		const char *e = dlerror();
		snprintf(err, errlen, "%s not found: %s", path, e ? e : "dlopen failed");
		goto fail;
	}
	/* Every symbol before nvmlInit, so that a failure needs no shutdown. */
	for (size_t i = 0; i < BT_ARRAY_SIZE(need); i++) {
		if (!find(n->lib, need[i].name, (char *)n + need[i].off)) {
			snprintf(err, errlen, "missing symbol %s in %s", need[i].name, path);
			goto fail;
		}
	}
	find(n->lib, "nvmlErrorString", &n->error_string);

	rc = n->init();
	if (rc != NVML_SUCCESS) {
		snprintf(err, errlen, "nvmlInit failed: %s", rc_text(n, rc, why, sizeof why));
		goto fail;
	}
	inited = 1;
	rc = n->get_count(&count);
	if (rc != NVML_SUCCESS) {
		snprintf(err, errlen, "nvmlDeviceGetCount failed: %s",
			 rc_text(n, rc, why, sizeof why));
		goto fail;
	}
	/* No machine has this many GPUs; a larger count is a broken library. */
	if (count > 4096) {
		snprintf(err, errlen, "nvmlDeviceGetCount failed: implausible count %u", count);
		goto fail;
	}
	n->count = (int)count;
	n->devices = bt_calloc(count, sizeof *n->devices);
	/*
	 * A device NVML refuses (no permission under a cgroup, lost GPU) keeps
	 * a NULL handle: its samples fail, but the other GPUs stay visible
	 * and the indices keep NVML's numbering.
	 */
	for (unsigned int i = 0; i < count; i++)
		if (n->get_handle(i, &n->devices[i]) != NVML_SUCCESS)
			n->devices[i] = NULL;
	return n;

fail:
	if (inited)
		n->shutdown();
	if (n->lib)
		dlclose(n->lib);
	free(n->devices);
	free(n);
	return NULL;
}

int bt_nvml_count(const struct bt_nvml *n)
{
	return n ? n->count : 0;
}

int bt_nvml_sample(struct bt_nvml *n, int index, struct bt_gpu_sample *out)
{
	nvmlMemory_t mem;
	nvmlUtilization_t util;

	if (!n || index < 0 || index >= n->count || !n->devices[index])
		return -1;
	if (n->get_util(n->devices[index], &util) != NVML_SUCCESS)
		return -1;
	if (n->get_memory(n->devices[index], &mem) != NVML_SUCCESS)
		return -1;
	/* NVML's percent is 0-100 already; clamp so a driver quirk cannot lie. */
	out->util_percent = util.gpu > 100 ? 100 : util.gpu;
	out->mem_total_mb = mem.total >> 20;
	out->mem_used_mb = mem.used >> 20;
	return 0;
}

void bt_nvml_close(struct bt_nvml *n)
{
	if (!n)
		return;
	n->shutdown();
	dlclose(n->lib);
	free(n->devices);
	free(n);
}
