/* The histogram: buckets, Prometheus output and quantile estimates. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "metrics/metrics.h"

static const double bounds[] = {1, 2, 5};

Test(histogram, values_fall_in_the_first_bucket_whose_bound_they_do_not_exceed)
{
	struct bt_hist h;
	bt_hist_init(&h, bounds, 3);
	bt_hist_observe(&h, 0.5);
	bt_hist_observe(&h, 1); /* le is inclusive */
	bt_hist_observe(&h, 1.5);
	bt_hist_observe(&h, 5);
	bt_hist_observe(&h, 7); /* +Inf */
	cr_assert_eq(h.counts[0], 2);
	cr_assert_eq(h.counts[1], 1);
	cr_assert_eq(h.counts[2], 1);
	cr_assert_eq(h.counts[3], 1);
	cr_assert_eq(h.count, 5);
	cr_assert_float_eq(h.sum, 15.0, 1e-9);
}

Test(histogram, output_is_cumulative_with_inf_sum_and_count)
{
	struct bt_hist h;
	struct bt_buf out = BT_BUF_INIT;
	bt_hist_init(&h, bounds, 3);
	bt_hist_observe(&h, 0.5);
	bt_hist_observe(&h, 3);
	bt_hist_observe(&h, 9);
	bt_hist_write(&out, "x_seconds", "stage=\"s\"", &h);
	cr_assert_str_eq(out.data,
			 "x_seconds_bucket{stage=\"s\",le=\"1\"} 1\n"
			 "x_seconds_bucket{stage=\"s\",le=\"2\"} 1\n"
			 "x_seconds_bucket{stage=\"s\",le=\"5\"} 2\n"
			 "x_seconds_bucket{stage=\"s\",le=\"+Inf\"} 3\n"
			 "x_seconds_sum{stage=\"s\"} 12.5\n"
			 "x_seconds_count{stage=\"s\"} 3\n");
	bt_buf_release(&out);
}

Test(histogram, output_without_labels_has_no_empty_braces_for_sum)
{
	struct bt_hist h;
	struct bt_buf out = BT_BUF_INIT;
	bt_hist_init(&h, bounds, 3);
	bt_hist_write(&out, "y", "", &h);
	cr_assert(strstr(out.data, "y_bucket{le=\"+Inf\"} 0\n"));
	cr_assert(strstr(out.data, "y_sum 0\n"));
	cr_assert(strstr(out.data, "y_count 0\n"));
	bt_buf_release(&out);
}

Test(histogram, quantile_interpolates_within_the_bucket)
{
	struct bt_hist h;
	bt_hist_init(&h, bounds, 3);
	cr_assert(isnan(bt_hist_quantile(&h, 0.5)));
	for (int i = 0; i < 10; i++)
		bt_hist_observe(&h, 3); /* all in (2, 5] */
	/* Linear within (2, 5]: half of the bucket's count is half way up. */
	cr_assert_float_eq(bt_hist_quantile(&h, 0.5), 3.5, 1e-9);
	cr_assert_float_eq(bt_hist_quantile(&h, 0.1), 2.3, 1e-9);
	cr_assert_float_eq(bt_hist_quantile(&h, 1.0), 5.0, 1e-9);
}

Test(histogram, quantile_in_the_inf_bucket_is_the_highest_bound)
{
	struct bt_hist h;
	bt_hist_init(&h, bounds, 3);
	bt_hist_observe(&h, 100);
	cr_assert_float_eq(bt_hist_quantile(&h, 0.99), 5.0, 1e-9);
}

Test(histogram, the_standard_bounds_ascend)
{
	for (int i = 1; i < bt_hist_seconds_n; i++)
		cr_assert(bt_hist_seconds[i] > bt_hist_seconds[i - 1]);
	for (int i = 1; i < bt_hist_sizes_n; i++)
		cr_assert(bt_hist_sizes[i] > bt_hist_sizes[i - 1]);
	cr_assert(bt_hist_seconds_n <= BT_HIST_MAX_BUCKETS);
}
