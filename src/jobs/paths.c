/*
 * The pure parts of `baton run`: which extensions are safe, where an
 * output goes, percentiles.  No I/O; unit-tested in tests/unit/test_jobs.c.
 */
#include "jobs.h"

#include <math.h>
#include <string.h>

int bt_jobs_ext_is_safe(const char *ext)
{
	size_t n = strlen(ext);
	if (n < 2 || n > 17 || ext[0] != '.')
		return 0;
	for (size_t i = 1; i < n; i++) {
		char c = ext[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

char *bt_jobs_output_path(const char *outdir, const char *relpath, const char *ext)
{
	return bt_asprintf("%s/%s%s", outdir, relpath, ext);
}

double bt_jobs_percentile(const double *sorted, size_t n, double q)
{
	size_t rank = (size_t)ceil(q * (double)n);
	return sorted[rank ? rank - 1 : 0];
}

