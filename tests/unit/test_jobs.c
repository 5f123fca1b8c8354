/* The pure parts of `baton run`: safe extensions, output paths, percentiles. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "jobs/jobs.h"

Test(jobs, ordinary_extensions_are_safe)
{
	cr_assert(bt_ext_is_safe(".json"));
	cr_assert(bt_ext_is_safe(".out"));
	cr_assert(bt_ext_is_safe(".tar-gz_2"));
	cr_assert(bt_ext_is_safe(".abcdefghijklmnop")); /* 16 characters */
}

Test(jobs, extensions_that_could_escape_or_hide_are_refused)
{
	const char *bad[] = {"", ".", "json", "../x", ".a/b", "/etc/passwd", ".a.b", "..",
			     ".a b", ".a\\b", ".abcdefghijklmnopq", ".\n", ".é"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert(!bt_ext_is_safe(bad[i]), "accepted '%s'", bad[i]);
}

Test(jobs, output_path_keeps_the_relative_path_and_appends_the_extension)
{
	char *p = bt_jobs_output_path("/out", "scans/2024/p1.png", ".json");
	cr_assert_str_eq(p, "/out/scans/2024/p1.png.json");
	free(p);
}

Test(jobs, percentile_is_nearest_rank)
{
	double v[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
	cr_assert_float_eq(bt_jobs_percentile(v, 10, 0.5), 5, 1e-9);
	cr_assert_float_eq(bt_jobs_percentile(v, 10, 0.95), 10, 1e-9);
	cr_assert_float_eq(bt_jobs_percentile(v, 10, 0.0), 1, 1e-9);
	double one = 42;
	cr_assert_float_eq(bt_jobs_percentile(&one, 1, 0.95), 42, 1e-9);
}
