/*
 * A test double of libnvidia-ml.so.1: the seven NVML calls baton makes,
 * answered from the text file named by FAKE_NVML_FILE.  The file is read
 * again on every call, so a test changes the GPUs while baton runs.  It
 * has no driver and no threads; it mimics only the return codes baton
 * must handle.  Not thread-safe, as baton calls NVML from one thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The file, one directive a line; blank lines and '#' comments are skipped:
 *
 *   gpu INDEX UTIL_PERCENT MEM_TOTAL_MB MEM_USED_MB
 *	a device; the device count is the number of gpu lines.
 *   fail FUNCTION CODE
 *	FUNCTION (e.g. nvmlDeviceGetUtilizationRates) returns CODE and does
 *	nothing else.  nvmlShutdown and nvmlErrorString never read the file.
 *
 * A missing or unreadable file (or FAKE_NVML_FILE unset) looks like a
 * machine without the driver: every call that reads it returns
 * NVML_ERROR_DRIVER_NOT_LOADED.  A malformed line is reported on stderr and
 * the call returns NVML_ERROR_UNKNOWN, so that a typo in a test shows.
 */

typedef int nvmlReturn_t;
enum {
	NVML_SUCCESS = 0,
	NVML_ERROR_UNINITIALIZED = 1,
	NVML_ERROR_INVALID_ARGUMENT = 2,
	NVML_ERROR_NOT_SUPPORTED = 3,
	NVML_ERROR_DRIVER_NOT_LOADED = 9,
	NVML_ERROR_GPU_IS_LOST = 15,
	NVML_ERROR_UNKNOWN = 999,
};

/* Device handles are addresses in this array, indexed by device. */
#define MAX_GPUS 64
struct nvmlDevice_st {
	unsigned int index;
};
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct {
	unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
	unsigned int gpu, memory;
} nvmlUtilization_t;

static struct nvmlDevice_st handles[MAX_GPUS];
/* NVML counts nvmlInit calls and really shuts down on the last nvmlShutdown. */
static int init_count;

struct gpu {
	unsigned int index, util;
	unsigned long long total_mb, used_mb;
};

struct state {
	int ngpus;
	struct gpu gpus[MAX_GPUS];
};

static int parse_line(const char *fn, char *p, struct state *st, nvmlReturn_t *forced)
{
	char word[32], name[64];
	int end = -1, code;
	struct gpu g;

	if (sscanf(p, "%31s", word) != 1 || word[0] == '#')
		return 0;
	if (!strcmp(word, "gpu")) {
		if (sscanf(p, " gpu %u %u %llu %llu %n", &g.index, &g.util, &g.total_mb, &g.used_mb,
			   &end) != 4 ||
		    end < 0 || p[end] != '\0')
			return -1;
		if (st->ngpus == MAX_GPUS || g.index >= MAX_GPUS || g.used_mb > g.total_mb)
			return -1;
		for (int i = 0; i < st->ngpus; i++)
			if (st->gpus[i].index == g.index)
				return -1;
		st->gpus[st->ngpus++] = g;
		return 0;
	}
	if (!strcmp(word, "fail")) {
		if (sscanf(p, " fail %63s %d %n", name, &code, &end) != 2 || end < 0 ||
		    p[end] != '\0')
			return -1;
		if (!strcmp(name, fn))
			*forced = code;
		return 0;
	}
	return -1;
}

/*
 * Reads the file for the call named fn.  Returns NVML_SUCCESS, or the code
 * fn must return: the driver is "absent", a line is bad, or a fail line
 * names fn.
 */
static nvmlReturn_t load(const char *fn, struct state *st)
{
	const char *path = getenv("FAKE_NVML_FILE");
	nvmlReturn_t forced = NVML_SUCCESS;
	char line[256];
	int lineno = 0;
	FILE *f;

	st->ngpus = 0;
	if (!path || !(f = fopen(path, "r")))
		return NVML_ERROR_DRIVER_NOT_LOADED;
	while (fgets(line, sizeof line, f)) {
		lineno++;
		if (parse_line(fn, line, st, &forced) < 0) {
			fprintf(stderr, "fake-nvml: %s:%d: bad line: %s", path, lineno, line);
			fclose(f);
			return NVML_ERROR_UNKNOWN;
		}
	}
	fclose(f);
	return forced;
}

static const struct gpu *find_gpu(const struct state *st, unsigned int index)
{
	for (int i = 0; i < st->ngpus; i++)
		if (st->gpus[i].index == index)
			return &st->gpus[i];
	return NULL;
}

/* The checks every device call starts with; *g is the device's line. */
static nvmlReturn_t device_call(const char *fn, nvmlDevice_t dev, const void *out, struct state *st,
				const struct gpu **g)
{
	nvmlReturn_t rc;

	if (init_count == 0)
		return NVML_ERROR_UNINITIALIZED;
	if (!out || dev < handles || dev >= handles + MAX_GPUS)
		return NVML_ERROR_INVALID_ARGUMENT;
	rc = load(fn, st);
	if (rc != NVML_SUCCESS)
		return rc;
	/* A device whose line went away is what NVML calls a lost GPU. */
	*g = find_gpu(st, dev->index);
	return *g ? NVML_SUCCESS : NVML_ERROR_GPU_IS_LOST;
}

nvmlReturn_t nvmlInit_v2(void)
{
	struct state st;
	nvmlReturn_t rc = load(__func__, &st);

	if (rc == NVML_SUCCESS)
		init_count++;
	return rc;
}

nvmlReturn_t nvmlShutdown(void)
{
	if (init_count == 0)
		return NVML_ERROR_UNINITIALIZED;
	init_count--;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
	struct state st;
	nvmlReturn_t rc;

	if (init_count == 0)
		return NVML_ERROR_UNINITIALIZED;
	if (!count)
		return NVML_ERROR_INVALID_ARGUMENT;
	rc = load(__func__, &st);
	if (rc == NVML_SUCCESS)
		*count = (unsigned int)st.ngpus;
	return rc;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
	struct state st;
	nvmlReturn_t rc;

	if (init_count == 0)
		return NVML_ERROR_UNINITIALIZED;
	if (!device)
		return NVML_ERROR_INVALID_ARGUMENT;
	rc = load(__func__, &st);
	if (rc != NVML_SUCCESS)
		return rc;
	if (!find_gpu(&st, index))
		return NVML_ERROR_INVALID_ARGUMENT;
	handles[index].index = index;
	*device = &handles[index];
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
	struct state st;
	const struct gpu *g;
	nvmlReturn_t rc = device_call(__func__, device, memory, &st, &g);

	if (rc != NVML_SUCCESS)
		return rc;
	memory->total = g->total_mb << 20;
	memory->used = g->used_mb << 20;
	memory->free = memory->total - memory->used;
	return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
	struct state st;
	const struct gpu *g;
	nvmlReturn_t rc = device_call(__func__, device, utilization, &st, &g);

	if (rc != NVML_SUCCESS)
		return rc;
	utilization->gpu = g->util;
	utilization->memory = 0; /* memory-controller busy; baton does not read it */
	return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result)
{
	switch (result) {
	case NVML_SUCCESS:
		return "Success";
	case NVML_ERROR_UNINITIALIZED:
		return "Uninitialized";
	case NVML_ERROR_INVALID_ARGUMENT:
		return "Invalid Argument";
	case NVML_ERROR_NOT_SUPPORTED:
		return "Not Supported";
	case NVML_ERROR_DRIVER_NOT_LOADED:
		return "Driver Not Loaded";
	case NVML_ERROR_GPU_IS_LOST:
		return "GPU is lost";
	default:
		return "Unknown Error";
	}
}

/*
 * Not NVML: lets a test that dlopens this same file see whether every
 * nvmlInit was matched by an nvmlShutdown.
 */
int fake_nvml_init_count(void)
{
	return init_count;
}
