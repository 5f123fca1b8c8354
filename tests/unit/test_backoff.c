/*
 * Unit tests of the restart delay schedule, bt_backoff_delay_ms
 * (src/proc/backoff.c): doubling from base, capped at max, never overflowing.
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <stdint.h>

#include "proc/proc.h"

TestSuite(backoff, .timeout = 20);

#define ULL(x) ((unsigned long long)(x))

Test(backoff, first_failure_waits_the_base_delay)
{
	cr_assert_eq(bt_backoff_delay_ms(2000, 60000, 1), 2000);
	cr_assert_eq(bt_backoff_delay_ms(1, 60000, 1), 1);
}

Test(backoff, delay_doubles_from_base_up_to_max)
{
	const uint64_t want[] = {2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000};
	for (int f = 1; f <= (int)(sizeof(want) / sizeof(want[0])); f++) {
		uint64_t got = bt_backoff_delay_ms(2000, 60000, f);
		cr_assert_eq(got, want[f - 1], "failure %d: %llu ms, want %llu", f,
			     ULL(got), ULL(want[f - 1]));
	}
}

Test(backoff, delay_never_decreases_and_never_exceeds_max)
{
	uint64_t prev = 0;
	for (int f = 1; f <= 200; f++) {
		uint64_t d = bt_backoff_delay_ms(300, 45000, f);
		cr_assert_geq(d, prev, "failure %d: %llu < previous %llu", f, ULL(d),
			      ULL(prev));
		cr_assert_leq(d, 45000, "failure %d: %llu over max", f, ULL(d));
		prev = d;
	}
	cr_assert_eq(prev, 45000);
}

Test(backoff, max_that_is_not_a_power_of_two_times_base_is_reached_exactly)
{
	cr_assert_eq(bt_backoff_delay_ms(3000, 10000, 1), 3000);
	cr_assert_eq(bt_backoff_delay_ms(3000, 10000, 2), 6000);
	cr_assert_eq(bt_backoff_delay_ms(3000, 10000, 3), 10000);
	cr_assert_eq(bt_backoff_delay_ms(3000, 10000, 4), 10000);
}

Test(backoff, failures_below_one_count_as_one)
{
	cr_assert_eq(bt_backoff_delay_ms(2000, 60000, 0), 2000);
	cr_assert_eq(bt_backoff_delay_ms(2000, 60000, -1), 2000);
	cr_assert_eq(bt_backoff_delay_ms(2000, 60000, INT_MIN), 2000);
}

Test(backoff, zero_base_stays_zero)
{
	cr_assert_eq(bt_backoff_delay_ms(0, 60000, 1), 0);
	cr_assert_eq(bt_backoff_delay_ms(0, 60000, 2), 0);
	cr_assert_eq(bt_backoff_delay_ms(0, 60000, 1000), 0);
}

Test(backoff, huge_failure_counts_do_not_overflow)
{
	cr_assert_eq(bt_backoff_delay_ms(2000, 60000, 1000), 60000);
	cr_assert_eq(bt_backoff_delay_ms(2000, 60000, INT_MAX), 60000);
	/* Where doubling would wrap a uint64_t, the cap must hold. */
	const uint64_t max = UINT64_MAX, base = UINT64_MAX / 3;
	cr_assert_eq(bt_backoff_delay_ms(base, max, 2), base * 2);
	cr_assert_eq(bt_backoff_delay_ms(base, max, 3), max);
	cr_assert_eq(bt_backoff_delay_ms(base, max, 1000), max);
	cr_assert_eq(bt_backoff_delay_ms(1, max, 64), 1ull << 63);
	cr_assert_eq(bt_backoff_delay_ms(1, max, 65), max);
	cr_assert_eq(bt_backoff_delay_ms(1, max, 1000), max);
	cr_assert_eq(bt_backoff_delay_ms(1, UINT64_MAX - 1, 1000), UINT64_MAX - 1);
}

Test(backoff, base_above_max_is_capped_to_max)
{
	cr_assert_eq(bt_backoff_delay_ms(90000, 60000, 1), 60000);
	cr_assert_eq(bt_backoff_delay_ms(90000, 60000, 5), 60000);
}

Test(backoff, max_equal_to_base_gives_a_constant_delay)
{
	for (int f = 1; f < 10; f++)
		cr_assert_eq(bt_backoff_delay_ms(5000, 5000, f), 5000);
}

Test(backoff, zero_max_gives_zero)
{
	cr_assert_eq(bt_backoff_delay_ms(2000, 0, 1), 0);
	cr_assert_eq(bt_backoff_delay_ms(2000, 0, 7), 0);
}
