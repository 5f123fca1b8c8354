/*
 * Unit tests of the NVML loader (src/scale/nvml.c) against the fake
 * library in tests/fake-nvml, whose GPUs come from the file named by
 * FAKE_NVML_FILE.  FAKE_NVML_PATH, the fake's full path, comes from meson.
 */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "scale/scale.h"

#ifndef FAKE_NVML_PATH
#error "meson passes -DFAKE_NVML_PATH=<path of the fake libnvidia-ml.so.1>"
#endif

static char gpu_file[64];

static void setup(void)
{
	const char *dir = getenv("TMPDIR");
	int fd;

	snprintf(gpu_file, sizeof gpu_file, "%s/fake-nvml-XXXXXX", dir && *dir ? dir : "/tmp");
	fd = mkstemp(gpu_file);
	cr_assert_geq(fd, 0, "mkstemp %s", gpu_file);
	close(fd);
	cr_assert_eq(setenv("FAKE_NVML_FILE", gpu_file, 1), 0);
}

static void teardown(void)
{
	unlink(gpu_file);
}

TestSuite(nvml, .init = setup, .fini = teardown, .timeout = 20);

/* Replaces the fake's file by rename, as a reader must never see half of it. */
static void write_gpus(const char *text)
{
	char tmp[80];
	FILE *f;

	snprintf(tmp, sizeof tmp, "%s.new", gpu_file);
	f = fopen(tmp, "w");
	cr_assert_not_null(f, "fopen %s", tmp);
	fputs(text, f);
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(rename(tmp, gpu_file), 0);
}

static struct bt_nvml *open_fake(void)
{
	char err[256] = "";
	struct bt_nvml *n = bt_nvml_open(FAKE_NVML_PATH, err, sizeof err);

	cr_assert_not_null(n, "bt_nvml_open: %s", err);
	return n;
}

static void assert_sample(struct bt_nvml *n, int index, unsigned util, uint64_t total_mb,
			  uint64_t used_mb)
{
	struct bt_gpu_sample s;

	memset(&s, 0xff, sizeof s);
	cr_assert_eq(bt_nvml_sample(n, index, &s), 0, "sample of GPU %d failed", index);
	cr_assert_eq(s.util_percent, util, "GPU %d: util %u, want %u", index, s.util_percent, util);
	cr_assert_eq(s.mem_total_mb, total_mb, "GPU %d: total %llu MB, want %llu", index,
		     (unsigned long long)s.mem_total_mb, (unsigned long long)total_mb);
	cr_assert_eq(s.mem_used_mb, used_mb, "GPU %d: used %llu MB, want %llu", index,
		     (unsigned long long)s.mem_used_mb, (unsigned long long)used_mb);
}

/* The fake's own count of nvmlInit calls not yet shut down. */
static int fake_init_count(void *fake)
{
	int (*count)(void);
	void *p = dlsym(fake, "fake_nvml_init_count");

	cr_assert_not_null(p, "fake_nvml_init_count: %s", dlerror());
	memcpy(&count, &p, sizeof p);
	return count();
}

Test(nvml, two_gpus_are_counted_and_sampled_in_mb)
{
	write_gpus("# two GPUs\n"
		   "gpu 0 37 16384 2048\n"
		   "\n"
		   "gpu 1 100 81920 80000\n");
	struct bt_nvml *n = open_fake();

	cr_assert_eq(bt_nvml_count(n), 2);
	assert_sample(n, 0, 37, 16384, 2048);
	assert_sample(n, 1, 100, 81920, 80000);
	bt_nvml_close(n);
}

Test(nvml, a_changed_file_changes_the_next_sample)
{
	write_gpus("gpu 0 10 24576 1000\n");
	struct bt_nvml *n = open_fake();

	assert_sample(n, 0, 10, 24576, 1000);
	write_gpus("gpu 0 95 24576 23000\n");
	assert_sample(n, 0, 95, 24576, 23000);
	write_gpus("gpu 0 0 24576 0\n");
	assert_sample(n, 0, 0, 24576, 0);
	bt_nvml_close(n);
}

Test(nvml, missing_driver_fails_open_naming_nvmlinit)
{
	char err[256] = "";

	cr_assert_eq(unsetenv("FAKE_NVML_FILE"), 0);
	cr_assert_null(bt_nvml_open(FAKE_NVML_PATH, err, sizeof err));
	cr_assert_not_null(strstr(err, "nvmlInit failed"), "err: %s", err);
	cr_assert_not_null(strstr(err, "Driver Not Loaded"), "err: %s", err);
}

Test(nvml, wrong_path_fails_open_with_not_found_and_the_dlerror)
{
	char err[256] = "";

	cr_assert_null(bt_nvml_open("/nonexistent/libnvidia-ml.so.1", err, sizeof err));
	cr_assert_not_null(strstr(err, "/nonexistent/libnvidia-ml.so.1 not found: "), "err: %s",
			   err);
	cr_assert_not_null(strstr(err, "No such file"), "err: %s", err);
}

Test(nvml, default_path_opens_or_names_libnvidia_ml)
{
	char err[256] = "";
	struct bt_nvml *n = bt_nvml_open(NULL, err, sizeof err);

	/* The machine running the tests may have a GPU; either answer is right. */
	if (n)
		bt_nvml_close(n);
	else
		cr_assert_not_null(strstr(err, "libnvidia-ml.so.1"), "err: %s", err);
}

Test(nvml, library_without_nvml_fails_open_with_missing_symbol)
{
	char err[256] = "";

	cr_assert_null(bt_nvml_open("libm.so.6", err, sizeof err));
	cr_assert_str_eq(err, "missing symbol nvmlInit_v2 in libm.so.6");
}

Test(nvml, short_error_buffer_is_truncated_not_overrun)
{
	char err[12];

	memset(err, 'x', sizeof err);
	cr_assert_eq(unsetenv("FAKE_NVML_FILE"), 0);
	cr_assert_null(bt_nvml_open(FAKE_NVML_PATH, err, 8));
	cr_assert_str_eq(err, "nvmlIni");
	cr_assert_eq(err[8], 'x');
}

Test(nvml, close_shuts_nvml_down)
{
	void *fake = dlopen(FAKE_NVML_PATH, RTLD_NOW | RTLD_LOCAL);

	cr_assert_not_null(fake, "dlopen: %s", dlerror());
	write_gpus("gpu 0 1 1024 1\n");
	struct bt_nvml *n = open_fake();
	cr_assert_eq(fake_init_count(fake), 1);
	bt_nvml_close(n);
	cr_assert_eq(fake_init_count(fake), 0);
	dlclose(fake);
}

Test(nvml, failed_device_count_shuts_nvml_down_before_failing)
{
	void *fake = dlopen(FAKE_NVML_PATH, RTLD_NOW | RTLD_LOCAL);
	char err[256] = "";

	cr_assert_not_null(fake, "dlopen: %s", dlerror());
	write_gpus("gpu 0 1 1024 1\n"
		   "fail nvmlDeviceGetCount_v2 999\n");
	cr_assert_null(bt_nvml_open(FAKE_NVML_PATH, err, sizeof err));
	cr_assert_str_eq(err, "nvmlDeviceGetCount failed: Unknown Error (NVML error 999)");
	cr_assert_eq(fake_init_count(fake), 0);
	dlclose(fake);
}

Test(nvml, no_gpus_opens_with_a_count_of_zero)
{
	write_gpus("");
	struct bt_nvml *n = open_fake();

	cr_assert_eq(bt_nvml_count(n), 0);
	bt_nvml_close(n);
}

Test(nvml, out_of_range_index_fails_the_sample)
{
	struct bt_gpu_sample s;

	write_gpus("gpu 0 5 1024 10\n");
	struct bt_nvml *n = open_fake();

	cr_assert_eq(bt_nvml_sample(n, -1, &s), -1);
	cr_assert_eq(bt_nvml_sample(n, 1, &s), -1);
	assert_sample(n, 0, 5, 1024, 10);
	bt_nvml_close(n);
}

Test(nvml, a_lost_gpu_fails_its_own_sample_only)
{
	struct bt_gpu_sample s;

	write_gpus("gpu 0 20 8192 100\n"
		   "gpu 1 30 8192 200\n");
	struct bt_nvml *n = open_fake();

	write_gpus("gpu 0 21 8192 101\n");
	cr_assert_eq(bt_nvml_sample(n, 1, &s), -1);
	assert_sample(n, 0, 21, 8192, 101);
	bt_nvml_close(n);
}

Test(nvml, unsupported_utilization_fails_the_sample)
{
	struct bt_gpu_sample s;

	write_gpus("gpu 0 20 8192 100\n");
	struct bt_nvml *n = open_fake();

	write_gpus("gpu 0 20 8192 100\n"
		   "fail nvmlDeviceGetUtilizationRates 3\n");
	cr_assert_eq(bt_nvml_sample(n, 0, &s), -1);
	bt_nvml_close(n);
}

Test(nvml, a_device_refused_at_open_keeps_the_count_and_fails_its_samples)
{
	struct bt_gpu_sample s;

	write_gpus("gpu 0 20 8192 100\n"
		   "gpu 1 30 8192 200\n"
		   "fail nvmlDeviceGetHandleByIndex_v2 4\n");
	struct bt_nvml *n = open_fake();

	cr_assert_eq(bt_nvml_count(n), 2);
	write_gpus("gpu 0 20 8192 100\n"
		   "gpu 1 30 8192 200\n");
	cr_assert_eq(bt_nvml_sample(n, 0, &s), -1);
	cr_assert_eq(bt_nvml_sample(n, 1, &s), -1);
	bt_nvml_close(n);
}

Test(nvml, null_handle_counts_zero_and_closes)
{
	cr_assert_eq(bt_nvml_count(NULL), 0);
	bt_nvml_close(NULL);
}
