/*
 * The pure parts of `baton run`: where an output goes, percentiles.  No I/O; unit-tested in tests/unit/test_jobs.c.
 */
#include "jobs.h"

#include <math.h>
#include <string.h>

char *bt_jobs_output_path(const char *outdir, const char *relpath, const char *ext)
{
	return bt_asprintf("%s/%s%s", outdir, relpath, ext);
}

double bt_jobs_percentile(const double *sorted, size_t n, double q)
{
	size_t rank = (size_t)ceil(q * (double)n);
	return sorted[rank ? rank - 1 : 0];
}

