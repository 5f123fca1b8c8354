/*
 * Unit tests of src/scale (DESIGN §7): the demand and headroom autoscaling
 * policies (policy.c), best-fit GPU placement (placement.c), the CPU
 * percent arithmetic and, as smoke tests against the real /proc, the
 * system CPU and process-group readers (signals.c).
 *
 * The policies are driven tick by tick, as the daemon does, with a clock
 * that starts well away from 0 (0 is the policies' "not wanted" marker;
 * see demand.tick_at_time_zero_counts_toward_the_delay).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "scale/scale.h"

TestSuite(demand, .timeout = 30);
TestSuite(headroom, .timeout = 30);
TestSuite(placement, .timeout = 30);
TestSuite(signals, .timeout = 60);

#define T0 ((uint64_t)1000000) /* the first tick, in ms */
#define SEC ((uint64_t)1000)
#define ULL(x) ((unsigned long long)(x))

/* ---- helpers -------------------------------------------------------------- */

static struct bt_autoscale_config demand_config(void)
{
	struct bt_autoscale_config c;
	memset(&c, 0, sizeof(c));
	c.policy = BT_POLICY_DEMAND;
	c.min = 1;
	c.max = 8;
	c.target_ongoing = 2;
	c.upscale_delay_ms = 5 * SEC;
	c.downscale_delay_ms = 30 * SEC;
	c.max_cpu = 90;
	c.max_gpu = 95;
	return c;
}

/* Seed 002's station policy: the defaults of DESIGN §7. */
static struct bt_autoscale_config headroom_config(void)
{
	struct bt_autoscale_config c;
	memset(&c, 0, sizeof(c));
	c.policy = BT_POLICY_HEADROOM;
	c.min = 1;
	c.max = 4;
	c.up_gpu = 85;
	c.up_cpu = 80;
	c.up_latency_s = 5;
	c.down_gpu = 95;
	c.down_cpu = 90;
	c.down_latency_s = 5;
	c.hysteresis_ms = 30 * SEC;
	return c;
}

/* A quiet machine: low CPU, no GPU, no latency sample, room to place. */
static struct bt_scale_input quiet(uint64_t now, int current, uint64_t load)
{
	struct bt_scale_input in;
	memset(&in, 0, sizeof(in));
	in.now_ms = now;
	in.current = current;
	in.queued = load;
	in.in_flight = 0;
	in.cpu_percent = 10;
	in.gpu_percent = -1;
	in.latency_p95_s = -1;
	in.can_place = 1;
	in.place_reason = NULL;
	return in;
}

/* Headroom signals: everything comfortably under the up marks. */
static struct bt_scale_input calm(uint64_t now, int current)
{
	struct bt_scale_input in = quiet(now, current, 0);
	in.cpu_percent = 40;
	in.gpu_percent = 50;
	in.latency_p95_s = 1.0;
	return in;
}

/* Between the up and the down marks: neither condition. */
static struct bt_scale_input neutral(uint64_t now, int current)
{
	struct bt_scale_input in = calm(now, current);
	in.cpu_percent = 85;
	return in;
}

/* One mark above the down marks (CPU). */
static struct bt_scale_input hot(uint64_t now, int current)
{
	struct bt_scale_input in = calm(now, current);
	in.cpu_percent = 97;
	return in;
}

/*
 * Calls a policy with a decision full of garbage, so that a field the
 * policy forgets to write shows up.
 */
static struct bt_scale_decision run(void (*policy)(const struct bt_autoscale_config *,
						   const struct bt_scale_input *,
						   struct bt_scale_state *,
						   struct bt_scale_decision *),
				    const struct bt_autoscale_config *c,
				    const struct bt_scale_input *in, struct bt_scale_state *s)
{
	struct bt_scale_decision d;
	memset(&d, 0xA5, sizeof(d));
	d.reason[sizeof(d.reason) - 1] = '\0';
	policy(c, in, s, &d);
	return d;
}

static struct bt_scale_decision demand(const struct bt_autoscale_config *c,
				       const struct bt_scale_input *in, struct bt_scale_state *s)
{
	return run(bt_policy_demand, c, in, s);
}

static struct bt_scale_decision headroom(const struct bt_autoscale_config *c,
					 const struct bt_scale_input *in, struct bt_scale_state *s)
{
	return run(bt_policy_headroom, c, in, s);
}

static void fresh(struct bt_scale_state *s)
{
	memset(s, 0, sizeof(*s));
}

/* Asserts that a tick decided nothing at all. */
#define assert_nothing(d, in, t)                                                            \
	do {                                                                                \
		cr_assert_eq((d).to, (in).current, "t=+%llums: went to %d from %d (%s)",   \
			     ULL((t) - T0), (d).to, (in).current, (d).reason);             \
		cr_assert_eq((d).refused, 0, "t=+%llums: refused (%s)", ULL((t) - T0),     \
			     (d).reason);                                                   \
	} while (0)

static int contains_nocase(const char *hay, const char *needle)
{
	return strcasestr(hay, needle) != NULL;
}

/* ---- demand: the desired count -------------------------------------------- */

Test(demand, desired_is_ceil_of_queued_plus_in_flight_over_target_clamped_to_min_max)
{
	static const struct {
		uint64_t queued, in_flight;
		double target;
		int min, max, current, want;
	} cases[] = {
		{5, 0, 2, 1, 8, 1, 3},	  /* 2.5 rounds up */
		{4, 0, 2, 1, 8, 1, 2},	  /* exact: no extra replica */
		{3, 4, 1, 1, 8, 1, 7},	  /* queued and in flight both count */
		{0, 6, 3, 1, 8, 1, 2},	  /* in flight alone counts */
		{1, 0, 3, 0, 8, 0, 1},	  /* any load needs one replica */
		{3, 0, 0.5, 1, 8, 1, 6},  /* fractional target */
		{1, 0, 2, 1, 8, 3, 1},	  /* down to the desired count */
		{0, 0, 2, 0, 8, 2, 0},	  /* no load, min 0: to zero */
		{0, 0, 2, 2, 8, 4, 2},	  /* no load: down to min, not below */
		{100, 0, 2, 1, 8, 1, 8},  /* much load: up to max, not above */
		{60, 40, 2, 1, 16, 10, 16} /* 50 wanted, max 16 */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct bt_autoscale_config c = demand_config();
		c.target_ongoing = cases[i].target;
		c.min = cases[i].min;
		c.max = cases[i].max;
		c.upscale_delay_ms = c.downscale_delay_ms = 0; /* decide at the first tick */
		struct bt_scale_state s;
		fresh(&s);
		struct bt_scale_input in = quiet(T0, cases[i].current, cases[i].queued);
		in.in_flight = cases[i].in_flight;
		struct bt_scale_decision d = demand(&c, &in, &s);
		cr_assert_eq(d.to, cases[i].want,
			     "case %zu: %llu queued + %llu in flight / %g in [%d, %d] from %d: "
			     "went to %d, want %d",
			     i, ULL(cases[i].queued), ULL(cases[i].in_flight), cases[i].target,
			     cases[i].min, cases[i].max, cases[i].current, d.to, cases[i].want);
		cr_assert_eq(d.refused, 0, "case %zu: refused (%s)", i, d.reason);
		if (d.to != cases[i].current)
			cr_assert_neq(d.reason[0], '\0', "case %zu: a change without a reason", i);
	}
}

/*
 * A queue at the configured limit (queue_max up to 10,000,000) over the
 * smallest target_ongoing the config accepts (0.001) asks for 10^10
 * replicas: far more than an int holds.  DESIGN §7 says desired is
 * clamped to [min, max], so that must be max.
 *
 * Regression: desired was converted to int before clamping, and a double
 * beyond INT_MAX became INT_MIN on x86-64: the policy scaled down.
 */
Test(demand, load_beyond_int_range_still_clamps_to_max)
{
	struct bt_autoscale_config c = demand_config();
	c.target_ongoing = 0.001;
	c.upscale_delay_ms = c.downscale_delay_ms = 0;
	struct bt_scale_state s;
	fresh(&s);
	struct bt_scale_input in = quiet(T0, 4, 10000000);
	in.in_flight = 1024;
	struct bt_scale_decision d = demand(&c, &in, &s);
	cr_assert_eq(d.to, c.max, "10,001,024 requests over 0.001 from 4: went to %d, want %d",
		     d.to, c.max);
}

Test(demand, steady_load_at_exactly_current_decides_nothing_over_many_ticks)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	/* 3 replicas, 6 requests, 2 per replica: exactly right.  Even with
	   the machine saturated there is nothing to refuse. */
	for (uint64_t t = T0; t <= T0 + 600 * SEC; t += SEC) {
		struct bt_scale_input in = quiet(t, 3, 2);
		in.in_flight = 4;
		if ((t / SEC) % 2) {
			in.cpu_percent = 100;
			in.gpu_percent = 100;
			in.can_place = 0;
			in.place_reason = "no GPU fits";
		}
		struct bt_scale_decision d = demand(&c, &in, &s);
		assert_nothing(d, in, t);
		cr_assert_str_empty(d.reason, "t=+%llums: reason '%s' with nothing to do",
				    ULL(t - T0), d.reason);
	}
}

/* ---- demand: scaling up ----------------------------------------------------- */

Test(demand, no_scale_up_before_upscale_delay_then_straight_to_desired)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	/* 1 replica, 14 requests, 2 per replica: 7 wanted, from T0 on. */
	for (uint64_t t = T0; t < T0 + c.upscale_delay_ms; t += 100) {
		struct bt_scale_input in = quiet(t, 1, 14);
		struct bt_scale_decision d = demand(&c, &in, &s);
		assert_nothing(d, in, t);
	}
	struct bt_scale_input in = quiet(T0 + c.upscale_delay_ms, 1, 14);
	struct bt_scale_decision d = demand(&c, &in, &s);
	cr_assert_eq(d.to, 7, "after the delay: went to %d, want 7 (desired, not +1)", d.to);
	cr_assert_eq(d.refused, 0);
	cr_assert_neq(d.reason[0], '\0', "a scale-up without a reason");
}

Test(demand, desired_changing_while_above_current_keeps_the_timer_and_uses_the_latest)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	static const struct {
		uint64_t at, load;
	} ticks[] = {{0, 6}, {1000, 10}, {2000, 4}, {3000, 12}, {4000, 16}, {4999, 16}};
	for (size_t i = 0; i < sizeof(ticks) / sizeof(ticks[0]); i++) {
		struct bt_scale_input in = quiet(T0 + ticks[i].at, 1, ticks[i].load);
		struct bt_scale_decision d = demand(&c, &in, &s);
		assert_nothing(d, in, T0 + ticks[i].at);
	}
	/* Above current (1) continuously since T0, whatever the amount. */
	struct bt_scale_input in = quiet(T0 + 5000, 1, 10);
	struct bt_scale_decision d = demand(&c, &in, &s);
	cr_assert_eq(d.to, 5, "went to %d, want 5 (ceil(10 / 2), this tick's desired)", d.to);
}

Test(demand, upscale_timer_restarts_when_demand_drops_back_to_current)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	/* Above for 4 s, back at current (2 replicas, 4 requests) once, above again. */
	for (uint64_t t = T0; t <= T0 + 4000; t += SEC) {
		struct bt_scale_input in = quiet(t, 2, 10);
		assert_nothing(demand(&c, &in, &s), in, t);
	}
	struct bt_scale_input back = quiet(T0 + 4500, 2, 4);
	assert_nothing(demand(&c, &back, &s), back, T0 + 4500);
	uint64_t again = T0 + 5000;
	for (uint64_t t = again; t < again + c.upscale_delay_ms; t += 500) {
		struct bt_scale_input in = quiet(t, 2, 10);
		assert_nothing(demand(&c, &in, &s), in, t);
	}
	struct bt_scale_input in = quiet(again + c.upscale_delay_ms, 2, 10);
	struct bt_scale_decision d = demand(&c, &in, &s);
	cr_assert_eq(d.to, 5, "5 s after demand rose again: went to %d, want 5", d.to);
}

Test(demand, upscale_timer_restarts_when_demand_drops_below_current)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	for (uint64_t t = T0; t <= T0 + 4000; t += SEC) {
		struct bt_scale_input in = quiet(t, 2, 10);
		assert_nothing(demand(&c, &in, &s), in, t);
	}
	struct bt_scale_input below = quiet(T0 + 4500, 2, 0);
	assert_nothing(demand(&c, &below, &s), below, T0 + 4500);
	struct bt_scale_input up = quiet(T0 + 6000, 2, 10);
	assert_nothing(demand(&c, &up, &s), up, T0 + 6000);
	up.now_ms = T0 + 10999;
	assert_nothing(demand(&c, &up, &s), up, T0 + 10999);
	up.now_ms = T0 + 11000;
	cr_assert_eq(demand(&c, &up, &s).to, 5);
}

/*
 * Small noise around the target: the load alternates between a value whose
 * desired count is current and one whose desired count is current + 1,
 * each excursion shorter than upscale_delay.  Ten minutes of that must not
 * move the stage.
 */
Test(demand, noise_above_current_shorter_than_upscale_delay_never_scales)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	unsigned seed = 12345;
	uint64_t t = T0;
	int excursions = 0;
	while (t < T0 + 600 * SEC) {
		/* above for 1 to 5 ticks (0 to 4 s, under the 5 s delay) ... */
		seed = seed * 1103515245u + 12345u;
		int above = 1 + (int)((seed >> 16) % 5);
		for (int i = 0; i < above; i++, t += SEC) {
			struct bt_scale_input in = quiet(t, 3, (seed >> 8) & 1 ? 7 : 8);
			assert_nothing(demand(&c, &in, &s), in, t);
		}
		excursions++;
		/* ... then at current for 1 to 3 ticks (6 or 5 requests: 3 replicas) */
		seed = seed * 1103515245u + 12345u;
		int at = 1 + (int)((seed >> 16) % 3);
		for (int i = 0; i < at; i++, t += SEC) {
			struct bt_scale_input in = quiet(t, 3, i % 2 ? 5 : 6);
			assert_nothing(demand(&c, &in, &s), in, t);
		}
	}
	cr_assert_gt(excursions, 50);
}

Test(demand, noise_below_current_shorter_than_downscale_delay_never_scales)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	uint64_t t = T0;
	for (int round = 0; round < 40; round++) {
		/* 29 s below (3 or 4 requests for 3 replicas: 2 wanted) ... */
		for (int i = 0; i < 30; i++, t += SEC) {
			struct bt_scale_input in = quiet(t, 3, i % 2 ? 3 : 4);
			assert_nothing(demand(&c, &in, &s), in, t);
		}
		/* ... and one tick at current */
		struct bt_scale_input in = quiet(t, 3, 6);
		assert_nothing(demand(&c, &in, &s), in, t);
		t += SEC;
	}
}

/* ---- demand: scaling down --------------------------------------------------- */

Test(demand, scale_down_only_after_downscale_delay_continuously_below)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	/* 4 replicas, 2 requests: 1 wanted.  20 s below, a blip at current, then below. */
	for (uint64_t t = T0; t <= T0 + 20 * SEC; t += SEC) {
		struct bt_scale_input in = quiet(t, 4, 2);
		assert_nothing(demand(&c, &in, &s), in, t);
	}
	struct bt_scale_input blip = quiet(T0 + 20500, 4, 8);
	assert_nothing(demand(&c, &blip, &s), blip, T0 + 20500);
	uint64_t again = T0 + 21 * SEC;
	for (uint64_t t = again; t < again + c.downscale_delay_ms; t += SEC / 2) {
		struct bt_scale_input in = quiet(t, 4, 2);
		assert_nothing(demand(&c, &in, &s), in, t);
	}
	struct bt_scale_input in = quiet(again + c.downscale_delay_ms, 4, 2);
	struct bt_scale_decision d = demand(&c, &in, &s);
	cr_assert_eq(d.to, 1, "30 s continuously below: went to %d, want 1", d.to);
	cr_assert_eq(d.refused, 0);
	cr_assert_neq(d.reason[0], '\0', "a scale-down without a reason");
}

Test(demand, downscale_timer_restarts_when_demand_rises_above_current)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	for (uint64_t t = T0; t <= T0 + 20 * SEC; t += SEC) {
		struct bt_scale_input in = quiet(t, 4, 2);
		assert_nothing(demand(&c, &in, &s), in, t);
	}
	/* one tick above current (4 replicas, 10 requests: 5 wanted) */
	struct bt_scale_input blip = quiet(T0 + 20500, 4, 10);
	assert_nothing(demand(&c, &blip, &s), blip, T0 + 20500);
	uint64_t again = T0 + 21 * SEC;
	for (uint64_t t = again; t < again + c.downscale_delay_ms; t += SEC) {
		struct bt_scale_input in = quiet(t, 4, 2);
		assert_nothing(demand(&c, &in, &s), in, t);
	}
	struct bt_scale_input in = quiet(again + c.downscale_delay_ms, 4, 2);
	cr_assert_eq(demand(&c, &in, &s).to, 1);
}

Test(demand, scale_down_is_never_refused_for_lack_of_headroom)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	struct bt_scale_decision d;
	for (uint64_t t = T0;; t += SEC) {
		struct bt_scale_input in = quiet(t, 4, 0);
		in.cpu_percent = 100;
		in.gpu_percent = 100;
		in.can_place = 0;
		in.place_reason = "no GPU fits";
		d = demand(&c, &in, &s);
		cr_assert_eq(d.refused, 0, "t=+%llums: a scale-down refused (%s)", ULL(t - T0),
			     d.reason);
		if (d.to != 4 || t > T0 + 60 * SEC)
			break;
	}
	cr_assert_eq(d.to, 1);
}

/* ---- demand: refusals --------------------------------------------------------- */

/* Runs a demand stage (1 replica, 6 requests: 3 wanted) past its delay. */
static struct bt_scale_decision demand_after_delay(const struct bt_autoscale_config *c,
						   struct bt_scale_input in)
{
	struct bt_scale_state s;
	fresh(&s);
	in.now_ms = T0;
	in.current = 1;
	in.queued = 6;
	struct bt_scale_decision d = demand(c, &in, &s);
	cr_assert_eq(d.to, 1);
	in.now_ms = T0 + c->upscale_delay_ms;
	return demand(c, &in, &s);
}

Test(demand, cpu_at_or_above_max_cpu_refuses_scale_up)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_input in = quiet(0, 1, 6);
	in.cpu_percent = 90; /* == max_cpu */
	struct bt_scale_decision d = demand_after_delay(&c, in);
	cr_assert_eq(d.to, 1, "cpu at max_cpu: went to %d", d.to);
	cr_assert_eq(d.refused, 1);
	cr_assert(contains_nocase(d.reason, "cpu"), "reason '%s' does not name the CPU", d.reason);
	in.cpu_percent = 99.5;
	d = demand_after_delay(&c, in);
	cr_assert_eq(d.to, 1);
	cr_assert_eq(d.refused, 1);
	in.cpu_percent = 89.9;
	d = demand_after_delay(&c, in);
	cr_assert_eq(d.to, 3, "cpu just under max_cpu: went to %d, want 3", d.to);
	cr_assert_eq(d.refused, 0);
}

Test(demand, gpu_at_or_above_max_gpu_refuses_scale_up)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_input in = quiet(0, 1, 6);
	in.gpu_percent = 95; /* == max_gpu */
	struct bt_scale_decision d = demand_after_delay(&c, in);
	cr_assert_eq(d.to, 1, "gpu at max_gpu: went to %d", d.to);
	cr_assert_eq(d.refused, 1);
	cr_assert(contains_nocase(d.reason, "gpu"), "reason '%s' does not name the GPU", d.reason);
	in.gpu_percent = 100;
	d = demand_after_delay(&c, in);
	cr_assert_eq(d.refused, 1);
	in.gpu_percent = 94.9;
	d = demand_after_delay(&c, in);
	cr_assert_eq(d.to, 3, "gpu just under max_gpu: went to %d, want 3", d.to);
	cr_assert_eq(d.refused, 0);
}

Test(demand, negative_gpu_percent_means_no_gpu_and_never_refuses)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_input in = quiet(0, 1, 6);
	in.gpu_percent = -1;
	struct bt_scale_decision d = demand_after_delay(&c, in);
	cr_assert_eq(d.to, 3);
	cr_assert_eq(d.refused, 0, "refused without a GPU: %s", d.reason);
	/* Even with max_gpu 0, where an idle GPU (0 %) would refuse. */
	c.max_gpu = 0;
	d = demand_after_delay(&c, in);
	cr_assert_eq(d.to, 3, "no GPU, max_gpu 0: went to %d (%s)", d.to, d.reason);
	cr_assert_eq(d.refused, 0);
	in.gpu_percent = 0;
	d = demand_after_delay(&c, in);
	cr_assert_eq(d.refused, 1, "an idle GPU at max_gpu 0 should refuse");
}

Test(demand, placement_failure_refuses_scale_up_with_the_placement_reason)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_input in = quiet(0, 1, 6);
	in.can_place = 0;
	in.place_reason = "no GPU fits gpu 0.5 and 4096 MB: gpu0 has 0.2 and 1024 MB free";
	struct bt_scale_decision d = demand_after_delay(&c, in);
	cr_assert_eq(d.to, 1);
	cr_assert_eq(d.refused, 1);
	cr_assert(strstr(d.reason, in.place_reason), "reason '%s' lacks the placement reason",
		  d.reason);
	in.place_reason = NULL;
	d = demand_after_delay(&c, in);
	cr_assert_eq(d.to, 1);
	cr_assert_eq(d.refused, 1);
	cr_assert_neq(d.reason[0], '\0', "a refusal without a reason");
}

Test(demand, no_refusal_is_reported_before_upscale_delay)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	for (uint64_t t = T0; t < T0 + c.upscale_delay_ms; t += 250) {
		struct bt_scale_input in = quiet(t, 1, 6);
		in.cpu_percent = 100;
		assert_nothing(demand(&c, &in, &s), in, t);
	}
	struct bt_scale_input in = quiet(T0 + c.upscale_delay_ms, 1, 6);
	in.cpu_percent = 100;
	cr_assert_eq(demand(&c, &in, &s).refused, 1);
}

Test(demand, refusal_is_reported_once_per_distinct_reason_then_scales_when_clear)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	uint64_t t = T0;
	struct bt_scale_input in = quiet(t, 1, 6);
	in.cpu_percent = 95;
	assert_nothing(demand(&c, &in, &s), in, t);

	/* CPU: reported at the first tick past the delay, then silent. */
	t = T0 + c.upscale_delay_ms;
	in.now_ms = t;
	struct bt_scale_decision d = demand(&c, &in, &s);
	cr_assert_eq(d.to, 1);
	cr_assert_eq(d.refused, 1, "first refusal not reported");
	cr_assert(contains_nocase(d.reason, "cpu"), "reason '%s'", d.reason);
	for (int i = 0; i < 20; i++) {
		in.now_ms = t += SEC;
		d = demand(&c, &in, &s);
		cr_assert_eq(d.to, 1);
		cr_assert_eq(d.refused, 0, "tick %d: the same refusal reported again (%s)", i,
			     d.reason);
	}

	/* Placement instead of CPU: a new reason, reported once. */
	in.cpu_percent = 10;
	in.can_place = 0;
	in.place_reason = "no GPU fits gpu 0.5 and 2048 MB";
	in.now_ms = t += SEC;
	d = demand(&c, &in, &s);
	cr_assert_eq(d.to, 1);
	cr_assert_eq(d.refused, 1, "a new reason not reported");
	cr_assert(strstr(d.reason, in.place_reason), "reason '%s'", d.reason);
	for (int i = 0; i < 20; i++) {
		in.now_ms = t += SEC;
		d = demand(&c, &in, &s);
		cr_assert_eq(d.to, 1);
		cr_assert_eq(d.refused, 0, "tick %d: placement refusal reported again", i);
	}

	/* Back to the CPU: changed again, reported again. */
	in.can_place = 1;
	in.cpu_percent = 95;
	in.now_ms = t += SEC;
	d = demand(&c, &in, &s);
	cr_assert_eq(d.refused, 1, "the CPU reason, back after another, not reported");
	cr_assert(contains_nocase(d.reason, "cpu"), "reason '%s'", d.reason);

	/* The blocker goes: up at once (the delay has long elapsed), to desired. */
	in.cpu_percent = 30;
	in.now_ms = t += SEC;
	d = demand(&c, &in, &s);
	cr_assert_eq(d.to, 3, "blocker gone: went to %d, want 3", d.to);
	cr_assert_eq(d.refused, 0);
}

Test(demand, gpu_refusal_then_cpu_refusal_are_two_reasons)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	struct bt_scale_input in = quiet(T0, 1, 6);
	in.gpu_percent = 99;
	demand(&c, &in, &s);
	in.now_ms = T0 + c.upscale_delay_ms;
	struct bt_scale_decision d = demand(&c, &in, &s);
	cr_assert_eq(d.refused, 1);
	cr_assert(contains_nocase(d.reason, "gpu"), "reason '%s'", d.reason);
	in.now_ms += SEC;
	cr_assert_eq(demand(&c, &in, &s).refused, 0);
	in.gpu_percent = 10;
	in.cpu_percent = 99;
	in.now_ms += SEC;
	d = demand(&c, &in, &s);
	cr_assert_eq(d.refused, 1, "GPU to CPU: the new reason not reported");
	cr_assert(contains_nocase(d.reason, "cpu"), "reason '%s'", d.reason);
}

/*
 * The header (scale.h: last_refusal "to record a refusal once, not every
 * tick") and the brief both mean: one report while the same thing (here
 * the CPU) blocks.  A real CPU reading is never constant.
 *
 * Regression: refusals were compared by their whole text, which embeds
 * the reading, so a moving CPU reading was refused at every tick.
 */
Test(demand, refusal_for_cpu_is_reported_once_while_cpu_stays_above_max_cpu)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	static const double cpu[] = {93, 97, 92, 99, 95, 91, 96, 98};
	struct bt_scale_input in = quiet(T0, 1, 6);
	in.cpu_percent = cpu[0];
	demand(&c, &in, &s);
	int reported = 0;
	for (size_t i = 0; i < sizeof(cpu) / sizeof(cpu[0]); i++) {
		in.cpu_percent = cpu[i];
		in.now_ms = T0 + c.upscale_delay_ms + i * SEC;
		struct bt_scale_decision d = demand(&c, &in, &s);
		cr_assert_eq(d.to, 1);
		reported += d.refused;
	}
	cr_assert_eq(reported, 1, "CPU above max_cpu for 8 ticks: %d refusals reported, want 1",
		     reported);
}

/* ---- demand: out of range ------------------------------------------------------ */

Test(demand, current_below_min_is_raised_at_once)
{
	struct bt_autoscale_config c = demand_config();
	c.min = 2;
	struct bt_scale_state s;
	fresh(&s);
	struct bt_scale_input in = quiet(T0, 0, 0);
	struct bt_scale_decision d = demand(&c, &in, &s);
	cr_assert_eq(d.to, 2, "0 replicas, min 2: went to %d at the first tick", d.to);
	cr_assert_eq(d.refused, 0);
	/* with load too: at once, and within [min, max] */
	fresh(&s);
	in = quiet(T0, 1, 100);
	d = demand(&c, &in, &s);
	cr_assert(d.to >= c.min && d.to <= c.max, "1 replica, min 2: went to %d at the first tick",
		  d.to);
}

Test(demand, current_above_max_is_lowered_at_once)
{
	struct bt_autoscale_config c = demand_config();
	c.max = 4;
	struct bt_scale_state s;
	fresh(&s);
	struct bt_scale_input in = quiet(T0, 6, 100); /* load wants even more */
	struct bt_scale_decision d = demand(&c, &in, &s);
	cr_assert_eq(d.to, 4, "6 replicas, max 4, heavy load: went to %d at the first tick", d.to);
	fresh(&s);
	in = quiet(T0, 6, 0);
	d = demand(&c, &in, &s);
	cr_assert_eq(d.to, 4, "6 replicas, max 4, no load: went to %d at the first tick", d.to);
}

/*
 * A tick at time 0 is a time like any other: wanted since 0, the delay has
 * elapsed at upscale_delay_ms.
 *
 * Regression: 0 used to mean "not wanted", so a wish starting at 0 was
 * lost for a tick.
 */
Test(demand, tick_at_time_zero_counts_toward_the_delay)
{
	struct bt_autoscale_config c = demand_config();
	struct bt_scale_state s;
	fresh(&s);
	for (uint64_t t = 0; t < c.upscale_delay_ms; t += SEC) {
		struct bt_scale_input in = quiet(t, 1, 6);
		demand(&c, &in, &s);
	}
	struct bt_scale_input in = quiet(c.upscale_delay_ms, 1, 6);
	struct bt_scale_decision d = demand(&c, &in, &s);
	cr_assert_eq(d.to, 3, "wanted since t=0, at t=5000: went to %d, want 3", d.to);
}

/* ---- headroom ----------------------------------------------------------------- */

Test(headroom, up_by_one_once_all_below_the_up_marks_for_hysteresis)
{
	struct bt_autoscale_config c = headroom_config();
	struct bt_scale_state s;
	fresh(&s);
	for (uint64_t t = T0; t < T0 + c.hysteresis_ms; t += SEC / 2) {
		struct bt_scale_input in = calm(t, 2);
		assert_nothing(headroom(&c, &in, &s), in, t);
	}
	struct bt_scale_input in = calm(T0 + c.hysteresis_ms, 2);
	struct bt_scale_decision d = headroom(&c, &in, &s);
	cr_assert_eq(d.to, 3, "30 s all below: went to %d from 2, want 3", d.to);
	cr_assert_eq(d.refused, 0);
	cr_assert_neq(d.reason[0], '\0', "a scale-up without a reason");
}

Test(headroom, up_needs_all_three_below_their_marks)
{
	struct bt_autoscale_config c = headroom_config();
	static const struct {
		double gpu, cpu, lat;
	} cases[] = {
		{85, 40, 1},	/* gpu at its mark */
		{90, 40, 1},	/* gpu above */
		{50, 80, 1},	/* cpu at its mark */
		{50, 88, 1},	/* cpu above */
		{50, 40, 5},	/* latency at its mark */
		{50, 40, 4.99}, /* ...just under: control, see below */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct bt_scale_state s;
		fresh(&s);
		int changed = 0;
		for (uint64_t t = T0; t <= T0 + 120 * SEC; t += SEC) {
			struct bt_scale_input in = calm(t, 2);
			in.gpu_percent = cases[i].gpu;
			in.cpu_percent = cases[i].cpu;
			in.latency_p95_s = cases[i].lat;
			struct bt_scale_decision d = headroom(&c, &in, &s);
			cr_assert_eq(d.refused, 0);
			if (d.to != 2) {
				cr_assert_eq(d.to, 3, "case %zu went to %d", i, d.to);
				changed = 1;
				break;
			}
		}
		int want = i == 5;
		cr_assert_eq(changed, want, "gpu %g cpu %g p95 %g s: %s", cases[i].gpu,
			     cases[i].cpu, cases[i].lat, changed ? "scaled up" : "did not scale up");
	}
}

Test(headroom, down_by_one_once_any_above_a_down_mark_for_hysteresis)
{
	struct bt_autoscale_config c = headroom_config();
	static const struct {
		double gpu, cpu, lat;
	} cases[] = {
		{96, 40, 1},  /* gpu alone */
		{50, 91, 1},  /* cpu alone */
		{50, 40, 6},  /* latency alone */
		{99, 99, 9},  /* all */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct bt_scale_state s;
		fresh(&s);
		for (uint64_t t = T0; t < T0 + c.hysteresis_ms; t += SEC) {
			struct bt_scale_input in = calm(t, 3);
			in.gpu_percent = cases[i].gpu;
			in.cpu_percent = cases[i].cpu;
			in.latency_p95_s = cases[i].lat;
			assert_nothing(headroom(&c, &in, &s), in, t);
		}
		struct bt_scale_input in = calm(T0 + c.hysteresis_ms, 3);
		in.gpu_percent = cases[i].gpu;
		in.cpu_percent = cases[i].cpu;
		in.latency_p95_s = cases[i].lat;
		struct bt_scale_decision d = headroom(&c, &in, &s);
		cr_assert_eq(d.to, 2, "gpu %g cpu %g p95 %g s for 30 s: went to %d from 3, want 2",
			     cases[i].gpu, cases[i].cpu, cases[i].lat, d.to);
		cr_assert_eq(d.refused, 0);
		cr_assert_neq(d.reason[0], '\0', "a scale-down without a reason");
	}
}

Test(headroom, exactly_at_the_down_marks_is_not_down)
{
	struct bt_autoscale_config c = headroom_config();
	struct bt_scale_state s;
	fresh(&s);
	for (uint64_t t = T0; t <= T0 + 300 * SEC; t += SEC) {
		struct bt_scale_input in = calm(t, 3);
		in.gpu_percent = 95;
		in.cpu_percent = 90;
		in.latency_p95_s = 5;
		assert_nothing(headroom(&c, &in, &s), in, t);
	}
}

Test(headroom, between_the_marks_nothing_ever_happens)
{
	struct bt_autoscale_config c = headroom_config();
	struct bt_scale_state s;
	fresh(&s);
	for (uint64_t t = T0; t <= T0 + 600 * SEC; t += SEC) {
		struct bt_scale_input in = neutral(t, 2);
		in.gpu_percent = 85 + (double)(t / SEC % 10); /* 85..94 */
		assert_nothing(headroom(&c, &in, &s), in, t);
	}
}

Test(headroom, condition_must_hold_continuously_for_hysteresis)
{
	struct bt_autoscale_config c = headroom_config();
	struct bt_scale_state s;
	fresh(&s);
	/* up: 25 s calm, one neutral tick, calm again */
	for (uint64_t t = T0; t <= T0 + 25 * SEC; t += SEC) {
		struct bt_scale_input in = calm(t, 2);
		assert_nothing(headroom(&c, &in, &s), in, t);
	}
	struct bt_scale_input blip = neutral(T0 + 26 * SEC, 2);
	assert_nothing(headroom(&c, &blip, &s), blip, blip.now_ms);
	uint64_t again = T0 + 27 * SEC;
	for (uint64_t t = again; t < again + c.hysteresis_ms; t += SEC) {
		struct bt_scale_input in = calm(t, 2);
		assert_nothing(headroom(&c, &in, &s), in, t);
	}
	struct bt_scale_input in = calm(again + c.hysteresis_ms, 2);
	cr_assert_eq(headroom(&c, &in, &s).to, 3);

	/* down: 25 s hot, one neutral tick, hot again */
	fresh(&s);
	for (uint64_t t = T0; t <= T0 + 25 * SEC; t += SEC) {
		in = hot(t, 3);
		assert_nothing(headroom(&c, &in, &s), in, t);
	}
	blip = neutral(T0 + 26 * SEC, 3);
	assert_nothing(headroom(&c, &blip, &s), blip, blip.now_ms);
	for (uint64_t t = again; t < again + c.hysteresis_ms; t += SEC) {
		in = hot(t, 3);
		assert_nothing(headroom(&c, &in, &s), in, t);
	}
	in = hot(again + c.hysteresis_ms, 3);
	cr_assert_eq(headroom(&c, &in, &s).to, 2);
}

Test(headroom, a_flip_from_up_to_down_restarts_the_window)
{
	struct bt_autoscale_config c = headroom_config();
	struct bt_scale_state s;
	fresh(&s);
	for (uint64_t t = T0; t <= T0 + 25 * SEC; t += SEC) {
		struct bt_scale_input in = calm(t, 2);
		assert_nothing(headroom(&c, &in, &s), in, t);
	}
	uint64_t flip = T0 + 26 * SEC;
	for (uint64_t t = flip; t < flip + c.hysteresis_ms; t += SEC) {
		struct bt_scale_input in = hot(t, 2);
		assert_nothing(headroom(&c, &in, &s), in, t);
	}
	struct bt_scale_input in = hot(flip + c.hysteresis_ms, 2);
	cr_assert_eq(headroom(&c, &in, &s).to, 1);
}

/*
 * Simulates a stage that follows every decision: changes are one step at
 * a time, at least hysteresis_ms apart, and stop at max (up) and min
 * (down).
 */
static void follow(const struct bt_autoscale_config *c, int start,
		   struct bt_scale_input (*signals)(uint64_t, int), int want_end, int want_changes)
{
	struct bt_scale_state s;
	fresh(&s);
	int current = start, changes = 0;
	uint64_t last = 0;
	for (uint64_t t = T0; t <= T0 + 600 * SEC; t += SEC) {
		struct bt_scale_input in = signals(t, current);
		struct bt_scale_decision d = headroom(c, &in, &s);
		cr_assert_eq(d.refused, 0);
		if (d.to == current)
			continue;
		cr_assert_eq(abs(d.to - current), 1, "t=+%llums: %d -> %d, more than one step",
			     ULL(t - T0), current, d.to);
		cr_assert(d.to >= c->min && d.to <= c->max, "t=+%llums: %d -> %d, outside [%d, %d]",
			  ULL(t - T0), current, d.to, c->min, c->max);
		if (changes)
			cr_assert_geq(t - last, c->hysteresis_ms,
				      "t=+%llums: %d -> %d only %llu ms after the last change",
				      ULL(t - T0), current, d.to, ULL(t - last));
		last = t;
		changes++;
		current = d.to;
	}
	cr_assert_eq(current, want_end);
	cr_assert_eq(changes, want_changes);
}

Test(headroom, calm_for_long_climbs_one_step_per_window_and_stops_at_max)
{
	struct bt_autoscale_config c = headroom_config();
	follow(&c, 1, calm, 4, 3);
	c.max = 7;
	follow(&c, 1, calm, 7, 6);
}

Test(headroom, hot_for_long_descends_one_step_per_window_and_stops_at_min)
{
	struct bt_autoscale_config c = headroom_config();
	follow(&c, 4, hot, 1, 3);
	c.min = 3;
	follow(&c, 4, hot, 3, 1);
}

Test(headroom, no_second_change_within_hysteresis_of_the_last)
{
	struct bt_autoscale_config c = headroom_config();
	struct bt_scale_state s;
	fresh(&s);
	struct bt_scale_input in = calm(T0, 2);
	headroom(&c, &in, &s);
	in.now_ms = T0 + c.hysteresis_ms;
	cr_assert_eq(headroom(&c, &in, &s).to, 3);
	uint64_t changed = in.now_ms;
	/* still calm (and then hot) at every 100 ms: nothing until 30 s later */
	for (uint64_t t = changed + 100; t < changed + c.hysteresis_ms; t += 100) {
		struct bt_scale_input x = t < changed + 10 * SEC ? calm(t, 3) : hot(t, 3);
		assert_nothing(headroom(&c, &x, &s), x, t);
	}
}

/*
 * The cooldown on its own: the down condition has held since T0, an
 * out-of-range count is corrected at +20 s (a change), and the down step
 * that was due at +30 s must wait until +50 s.
 */
Test(headroom, a_correction_into_range_starts_the_cooldown_too)
{
	struct bt_autoscale_config c = headroom_config();
	struct bt_scale_state s;
	fresh(&s);
	for (uint64_t t = T0; t < T0 + 20 * SEC; t += SEC) {
		struct bt_scale_input in = hot(t, 3);
		assert_nothing(headroom(&c, &in, &s), in, t);
	}
	struct bt_scale_input in = hot(T0 + 20 * SEC, 5); /* above max 4 */
	cr_assert_eq(headroom(&c, &in, &s).to, 4);
	uint64_t t = T0 + 21 * SEC;
	struct bt_scale_decision d;
	for (;; t += SEC) {
		in = hot(t, 4);
		d = headroom(&c, &in, &s);
		if (d.to != 4 || t > T0 + 120 * SEC)
			break;
	}
	cr_assert_eq(d.to, 3);
	cr_assert(t >= T0 + 50 * SEC, "down at +%llu ms, only %llu ms after the correction",
		  ULL(t - T0), ULL(t - T0 - 20 * SEC));
	cr_assert(t <= T0 + 51 * SEC, "down only at +%llu ms", ULL(t - T0));
}

Test(headroom, never_above_max_nor_below_min)
{
	struct bt_autoscale_config c = headroom_config();
	struct bt_scale_state s;
	fresh(&s);
	for (uint64_t t = T0; t <= T0 + 300 * SEC; t += SEC) {
		struct bt_scale_input in = calm(t, c.max);
		assert_nothing(headroom(&c, &in, &s), in, t);
	}
	fresh(&s);
	for (uint64_t t = T0; t <= T0 + 300 * SEC; t += SEC) {
		struct bt_scale_input in = hot(t, c.min);
		assert_nothing(headroom(&c, &in, &s), in, t);
	}
}

Test(headroom, current_outside_min_max_is_corrected_at_once)
{
	struct bt_autoscale_config c = headroom_config();
	c.min = 2;
	struct bt_scale_state s;
	fresh(&s);
	struct bt_scale_input in = hot(T0, 0);
	cr_assert_eq(headroom(&c, &in, &s).to, 2, "0 replicas, min 2, hot: not raised at once");
	fresh(&s);
	in = calm(T0, 7);
	cr_assert_eq(headroom(&c, &in, &s).to, 4, "7 replicas, max 4, calm: not lowered at once");
}

Test(headroom, negative_gpu_and_latency_count_as_zero)
{
	struct bt_autoscale_config c = headroom_config();
	struct bt_scale_state s;
	fresh(&s);
	struct bt_scale_input in = calm(T0, 2);
	in.gpu_percent = -1;
	in.latency_p95_s = -1;
	headroom(&c, &in, &s);
	in.now_ms = T0 + c.hysteresis_ms;
	struct bt_scale_decision d = headroom(&c, &in, &s);
	cr_assert_eq(d.to, 3, "no GPU, no latency sample, low CPU: went to %d, want 3", d.to);
	/* reported as 0, not as the -1 markers */
	cr_assert_null(strstr(d.reason, "-1"), "reason '%s' shows a -1", d.reason);
	/* and they never push down */
	fresh(&s);
	for (uint64_t t = T0; t <= T0 + 120 * SEC; t += SEC) {
		struct bt_scale_input x = neutral(t, 3);
		x.gpu_percent = -1;
		x.latency_p95_s = -1;
		assert_nothing(headroom(&c, &x, &s), x, t);
	}
}

Test(headroom, placement_failure_refuses_the_up_step_once_per_reason)
{
	struct bt_autoscale_config c = headroom_config();
	struct bt_scale_state s;
	fresh(&s);
	struct bt_scale_input in = calm(T0, 2);
	in.can_place = 0;
	in.place_reason = "no GPU fits gpu 0.5 and 4096 MB: gpu0 has 0.25 and 1024 MB free";
	for (uint64_t t = T0; t < T0 + c.hysteresis_ms; t += SEC) {
		in.now_ms = t;
		assert_nothing(headroom(&c, &in, &s), in, t);
	}
	in.now_ms = T0 + c.hysteresis_ms;
	struct bt_scale_decision d = headroom(&c, &in, &s);
	cr_assert_eq(d.to, 2);
	cr_assert_eq(d.refused, 1, "placement failure not reported");
	cr_assert(strstr(d.reason, in.place_reason), "reason '%s' lacks the placement reason",
		  d.reason);
	for (int i = 1; i <= 10; i++) {
		in.now_ms = T0 + c.hysteresis_ms + i * SEC;
		d = headroom(&c, &in, &s);
		cr_assert_eq(d.to, 2);
		cr_assert_eq(d.refused, 0, "tick %d: the same refusal reported again", i);
	}
	in.place_reason = "no GPU fits gpu 0.5 and 4096 MB: gpu0 has 0.1 and 512 MB free";
	in.now_ms += SEC;
	d = headroom(&c, &in, &s);
	cr_assert_eq(d.refused, 1, "a new placement reason not reported");
	in.place_reason = NULL;
	in.now_ms += SEC;
	d = headroom(&c, &in, &s);
	cr_assert_eq(d.to, 2);
	cr_assert_eq(d.refused, 1);
	cr_assert_neq(d.reason[0], '\0', "a refusal without a reason");
	/* room again: up by one at once */
	in.can_place = 1;
	in.now_ms += SEC;
	d = headroom(&c, &in, &s);
	cr_assert_eq(d.to, 3, "room again: went to %d, want 3", d.to);
	cr_assert_eq(d.refused, 0);
}

Test(headroom, placement_failure_does_not_block_the_down_step)
{
	struct bt_autoscale_config c = headroom_config();
	struct bt_scale_state s;
	fresh(&s);
	struct bt_scale_input in = hot(T0, 3);
	in.can_place = 0;
	in.place_reason = "no GPU fits";
	headroom(&c, &in, &s);
	in.now_ms = T0 + c.hysteresis_ms;
	struct bt_scale_decision d = headroom(&c, &in, &s);
	cr_assert_eq(d.to, 2);
	cr_assert_eq(d.refused, 0);
}

/* ---- placement ------------------------------------------------------------------ */

Test(placement, best_fit_picks_the_gpu_left_with_the_least_free_memory)
{
	const struct bt_gpu_slot gpus[] = {
		{.id = 7, .memory_mb = 16384, .used_fraction = 0, .used_mb = 0},
		{.id = 3, .memory_mb = 8192, .used_fraction = 0, .used_mb = 0},
		{.id = 5, .memory_mb = 24576, .used_fraction = 0.5, .used_mb = 20000},
		{.id = 1, .memory_mb = 8192, .used_fraction = 0.25, .used_mb = 4000},
	};
	/* left after 2048 MB: 14336, 6144, 2528, 2144 */
	char reason[256] = "untouched";
	cr_assert_eq(bt_place_gpu(gpus, 4, 0.25, 2048, reason, sizeof(reason)), 3,
		     "want index 3 (id 1, 2144 MB left)");
	/* the order does not matter */
	const struct bt_gpu_slot rev[] = {gpus[3], gpus[2], gpus[1], gpus[0]};
	cr_assert_eq(bt_place_gpu(rev, 4, 0.25, 2048, reason, sizeof(reason)), 0);
	/* 4096 MB: index 3 has only 4192 free -> 96 left, still the best */
	cr_assert_eq(bt_place_gpu(gpus, 4, 0.25, 4096, reason, sizeof(reason)), 3);
	/* 4500 MB: no longer fits on id 1 (4192 free); id 5 (4576 free) leaves 76 */
	cr_assert_eq(bt_place_gpu(gpus, 4, 0.25, 4500, reason, sizeof(reason)), 2);
	/* 5000 MB: only the empty cards: the 8 GB one */
	cr_assert_eq(bt_place_gpu(gpus, 4, 0.25, 5000, reason, sizeof(reason)), 1);
}

Test(placement, fraction_must_fit_too)
{
	const struct bt_gpu_slot gpus[] = {
		{.id = 0, .memory_mb = 8192, .used_fraction = 0.8, .used_mb = 6000}, /* tightest */
		{.id = 1, .memory_mb = 16384, .used_fraction = 0.0, .used_mb = 0},
	};
	cr_assert_eq(bt_place_gpu(gpus, 2, 0.3, 1024, NULL, 0), 1,
		     "0.3 on a GPU with 0.2 free");
	cr_assert_eq(bt_place_gpu(gpus, 2, 0.2, 1024, NULL, 0), 0, "0.2 exactly fills it");
	cr_assert_eq(bt_place_gpu(gpus, 2, 0.21, 1024, NULL, 0), 1);
}

Test(placement, memory_must_fit_and_an_exact_fit_fits)
{
	const struct bt_gpu_slot gpus[] = {
		{.id = 0, .memory_mb = 8192, .used_fraction = 0, .used_mb = 6144}, /* 2048 free */
		{.id = 1, .memory_mb = 16384, .used_fraction = 0, .used_mb = 0},
	};
	cr_assert_eq(bt_place_gpu(gpus, 2, 0.1, 2048, NULL, 0), 0, "2048 MB into 2048 free");
	cr_assert_eq(bt_place_gpu(gpus, 2, 0.1, 2049, NULL, 0), 1, "2049 MB into 2048 free");
	cr_assert_eq(bt_place_gpu(gpus, 1, 0.1, 2049, NULL, 0), -1);
}

Test(placement, when_idle_ignores_what_is_placed_and_says_why_nothing_ever_fits)
{
	const struct bt_gpu_slot gpus[] = {
	    {.id = 0, .memory_mb = 8192, .used_fraction = 1.0, .used_mb = 8192}, /* full now */
	    {.id = 1, .memory_mb = 4096, .used_fraction = 0.9, .used_mb = 4000},
	};
	char reason[256] = "";
	cr_assert_eq(bt_place_gpu(gpus, 2, 0.5, 4096, reason, sizeof(reason)), -1);
	cr_assert_eq(bt_place_gpu_when_idle(gpus, 2, 0.5, 4096, reason, sizeof(reason)), 1,
		     "best fit on idle cards: 4096 MB exactly fills id 1");
	cr_assert_eq(bt_place_gpu_when_idle(gpus, 2, 0.5, 8192, reason, sizeof(reason)), 0);
	cr_assert_eq(bt_place_gpu_when_idle(gpus, 2, 0.5, 8193, reason, sizeof(reason)), -1);
	cr_assert(strstr(reason, "gpu0 has 1 and 8192 MB free"), "reason: '%s'", reason);
	cr_assert_eq(bt_place_gpu_when_idle(NULL, 0, 0.5, 0, reason, sizeof(reason)), -1);
	cr_assert(strstr(reason, "no GPU"), "reason: '%s'", reason);
}

Test(placement, an_overcommitted_gpu_is_skipped_without_wrapping)
{
	/* used_mb above capacity (a declared list smaller than reality) */
	const struct bt_gpu_slot gpus[] = {
		{.id = 0, .memory_mb = 8192, .used_fraction = 0, .used_mb = 9000},
	};
	char reason[256] = "";
	cr_assert_eq(bt_place_gpu(gpus, 1, 0.1, 100, reason, sizeof(reason)), -1);
	cr_assert_null(strstr(reason, "18446744"), "free memory wrapped: '%s'", reason);
	cr_assert(strstr(reason, " 0 MB"), "reason '%s' should show 0 MB free", reason);
}

/* Places `fraction` on one GPU again and again, as the daemon does (+=). */
static int count_placements(double fraction)
{
	struct bt_gpu_slot g = {.id = 0, .memory_mb = 1000000, .used_fraction = 0, .used_mb = 0};
	int n = 0;
	while (n < 1000 && bt_place_gpu(&g, 1, fraction, 1, NULL, 0) == 0) {
		g.used_fraction += fraction;
		g.used_mb += 1;
		n++;
	}
	return n;
}

Test(placement, fractions_that_add_up_to_one_all_fit_despite_rounding)
{
	static const struct {
		double fraction;
		int fits;
	} cases[] = {
		{0.2, 5}, {0.1, 10}, {0.25, 4}, {1.0 / 3, 3}, {1.0 / 9, 9},
		{0.05, 20}, /* sums to 1.0000000000000002 */
		{0.04, 25}, {0.02, 50}, {0.025, 40},
		{0.3, 3}, {0.4, 2}, {0.6, 1}, {1.0, 1},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int n = count_placements(cases[i].fraction);
		cr_assert_eq(n, cases[i].fits, "%g of a GPU: %d fit, want %d", cases[i].fraction, n,
			     cases[i].fits);
	}
}

Test(placement, the_slack_is_only_for_rounding)
{
	const struct bt_gpu_slot g = {.id = 0, .memory_mb = 8192, .used_fraction = 0.5,
				      .used_mb = 0};
	cr_assert_eq(bt_place_gpu(&g, 1, 0.5, 1, NULL, 0), 0);
	cr_assert_eq(bt_place_gpu(&g, 1, 0.501, 1, NULL, 0), -1);
	cr_assert_eq(bt_place_gpu(&g, 1, 0.5000001, 1, NULL, 0), -1);
}

Test(placement, nothing_fits_gives_minus_one_and_each_gpus_free_share_and_memory)
{
	const struct bt_gpu_slot gpus[] = {
		{.id = 3, .memory_mb = 8192, .used_fraction = 0.75, .used_mb = 6000},
		{.id = 7, .memory_mb = 16384, .used_fraction = 0.5, .used_mb = 15000},
	};
	/* gpu3: 0.25 and 2192 MB free; gpu7: 0.5 and 1384 MB free */
	char reason[512];
	memset(reason, 'x', sizeof(reason));
	cr_assert_eq(bt_place_gpu(gpus, 2, 0.6, 1000, reason, sizeof(reason)), -1);
	cr_assert(memchr(reason, '\0', sizeof(reason)), "reason not terminated");
	static const char *const want[] = {"gpu3", "0.25", "2192", "gpu7", "0.5", "1384"};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		cr_assert(strstr(reason, want[i]), "reason '%s' lacks '%s'", reason, want[i]);
	/* each GPU's numbers come after its name */
	const char *g3 = strstr(reason, "gpu3"), *g7 = strstr(reason, "gpu7");
	cr_assert(strstr(g3, "2192") && strstr(g3, "2192") < g7, "reason '%s'", reason);
	cr_assert(strstr(g7, "1384"), "reason '%s'", reason);
}

Test(placement, no_gpus_gives_minus_one_with_a_reason)
{
	char reason[256] = "";
	cr_assert_eq(bt_place_gpu(NULL, 0, 0.5, 1024, reason, sizeof(reason)), -1);
	cr_assert_neq(reason[0], '\0', "no reason for n == 0");
	const struct bt_gpu_slot g = {.id = 0, .memory_mb = 8192};
	reason[0] = '\0';
	cr_assert_eq(bt_place_gpu(&g, 0, 0.5, 1024, reason, sizeof(reason)), -1,
		     "n == 0 must not look at gpus");
	cr_assert_neq(reason[0], '\0');
}

Test(placement, reason_may_be_null)
{
	const struct bt_gpu_slot g = {.id = 0, .memory_mb = 8192, .used_fraction = 1.0,
				      .used_mb = 8192};
	cr_assert_eq(bt_place_gpu(&g, 1, 0.5, 1024, NULL, 0), -1);
	cr_assert_eq(bt_place_gpu(&g, 1, 0.5, 1024, NULL, 256), -1);
	cr_assert_eq(bt_place_gpu(NULL, 0, 0.5, 1024, NULL, 0), -1);
}

Test(placement, a_short_reason_buffer_is_truncated_and_terminated)
{
	const struct bt_gpu_slot gpus[] = {
		{.id = 0, .memory_mb = 8192, .used_fraction = 0.9, .used_mb = 8000},
		{.id = 1, .memory_mb = 8192, .used_fraction = 0.9, .used_mb = 8000},
		{.id = 2, .memory_mb = 8192, .used_fraction = 0.9, .used_mb = 8000},
	};
	/* heap buffers of the exact size, so that ASan sees any overrun */
	static const size_t sizes[] = {1, 8, 24, 40, 64, 80};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		char *reason = malloc(sizes[i]);
		cr_assert_not_null(reason);
		memset(reason, 'x', sizes[i]);
		cr_assert_eq(bt_place_gpu(gpus, 3, 0.5, 1024, reason, sizes[i]), -1);
		cr_assert(memchr(reason, '\0', sizes[i]), "size %zu: not terminated", sizes[i]);
		free(reason);
	}
	char *reason = malloc(8);
	cr_assert_not_null(reason);
	cr_assert_eq(bt_place_gpu(NULL, 0, 0.5, 1024, reason, 8), -1);
	cr_assert(memchr(reason, '\0', 8));
	free(reason);
}

Test(placement, memory_used_outside_baton_is_not_free)
{
	struct bt_gpu_slot gpus[] = {
		{.id = 0, .memory_mb = 8192, .used_mb = 0, .external_mb = 7000}, /* 1192 free */
		{.id = 1, .memory_mb = 16384, .used_mb = 0, .external_mb = 0},
	};
	/* Without the external use gpu0 would be the best fit. */
	cr_assert_eq(bt_place_gpu(gpus, 2, 0.1, 2000, NULL, 0), 1);
	cr_assert_eq(bt_place_gpu(gpus, 2, 0.1, 1192, NULL, 0), 0, "an exact fit still fits");
	char reason[256] = "";
	cr_assert_eq(bt_place_gpu(gpus, 1, 0.1, 2000, reason, sizeof(reason)), -1);
	cr_assert(strstr(reason, "gpu0 has 1 and 1192 MB free (7000 MB used outside baton)"),
		  "reason '%s'", reason);
	/* Reservations and external use together. */
	gpus[0].external_mb = 3000;
	gpus[0].used_mb = 4000;
	cr_assert_eq(bt_place_gpu(gpus, 1, 0.1, 1192, NULL, 0), 0);
	cr_assert_eq(bt_place_gpu(gpus, 1, 0.1, 1193, NULL, 0), -1);
}

Test(placement, observed_use_beyond_reservations_is_external)
{
	struct bt_gpu_slot g = {.id = 0, .memory_mb = 8192, .used_mb = 3000};
	bt_gpu_observe(&g, 5000); /* our 3000 MB and someone else's 2000 */
	cr_assert_eq(g.external_mb, 2000);
	bt_gpu_observe(&g, 1000); /* replicas not using all they reserved */
	cr_assert_eq(g.external_mb, 0, "never below zero");
	bt_gpu_observe(&g, 3000);
	cr_assert_eq(g.external_mb, 0);
	g.used_mb = 0;
	bt_gpu_observe(&g, 8192);
	cr_assert_eq(g.external_mb, 8192);
	cr_assert_eq(bt_place_gpu(&g, 1, 0.1, 1, NULL, 0), -1, "a full card fits nothing");
}

/* ---- bt_cpu_percent -------------------------------------------------------------- */

Test(signals, cpu_percent_is_busy_delta_over_total_delta)
{
	const struct bt_cpu_counters prev = {.busy = 100, .total = 1000};
	struct bt_cpu_counters now = {.busy = 350, .total = 2000};
	cr_assert_float_eq(bt_cpu_percent(&prev, &now), 25.0, 1e-9);
	now = (struct bt_cpu_counters){.busy = 100, .total = 1400};
	cr_assert_float_eq(bt_cpu_percent(&prev, &now), 0.0, 1e-9);
	now = (struct bt_cpu_counters){.busy = 500, .total = 1400};
	cr_assert_float_eq(bt_cpu_percent(&prev, &now), 100.0, 1e-9);
	now = (struct bt_cpu_counters){.busy = 101, .total = 1003};
	cr_assert_float_eq(bt_cpu_percent(&prev, &now), 100.0 / 3, 1e-9);
}

Test(signals, cpu_percent_is_exact_with_large_counters)
{
	/* Counters beyond a double's 53-bit mantissa: subtract first. */
	const uint64_t big = (uint64_t)1 << 60;
	const struct bt_cpu_counters prev = {.busy = big, .total = big + 1000};
	const struct bt_cpu_counters now = {.busy = big + 50, .total = big + 1100};
	cr_assert_float_eq(bt_cpu_percent(&prev, &now), 50.0, 1e-9);
}

Test(signals, cpu_percent_is_zero_when_total_does_not_increase)
{
	const struct bt_cpu_counters prev = {.busy = 500, .total = 1000};
	struct bt_cpu_counters now = prev;
	cr_assert_float_eq(bt_cpu_percent(&prev, &now), 0.0, 1e-9, "same reading twice");
	now.busy = 600; /* would divide by zero */
	cr_assert_float_eq(bt_cpu_percent(&prev, &now), 0.0, 1e-9, "busy up, total same");
	now = (struct bt_cpu_counters){.busy = 10, .total = 20}; /* counters restarted */
	cr_assert_float_eq(bt_cpu_percent(&prev, &now), 0.0, 1e-9, "total went back");
}

/* ---- signals on the real /proc -------------------------------------------------------- */

static double cpu_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static volatile uint64_t sink;

/* Spends `seconds` of this process's CPU time. */
static void burn(double seconds)
{
	double until = cpu_seconds() + seconds;
	uint64_t x = 1;
	while (cpu_seconds() < until)
		for (int i = 0; i < 10000; i++)
			x = x * 6364136223846793005u + 1442695040888963407u;
	sink = x;
}

Test(signals, system_cpu_reads_proc_stat_and_moves_forward)
{
	struct bt_cpu_counters a, b;
	memset(&a, 0xff, sizeof(a));
	cr_assert_eq(bt_read_system_cpu(&a), 0);
	cr_assert_gt(a.total, 0);
	cr_assert_lt(a.busy, a.total, "busy %llu, total %llu: no idle time since boot?", ULL(a.busy),
		     ULL(a.total));
	burn(0.3);
	cr_assert_eq(bt_read_system_cpu(&b), 0);
	cr_assert_gt(b.total, a.total, "total did not move over 0.3 s of CPU");
	cr_assert_gt(b.busy, a.busy, "busy did not move over 0.3 s of CPU");
	cr_assert_leq(b.busy, b.total);
	double p = bt_cpu_percent(&a, &b);
	cr_assert(p > 0 && p <= 100, "cpu percent %g", p);
}

Test(signals, group_usage_of_this_process_group)
{
	struct bt_group_usage u;
	memset(&u, 0xff, sizeof(u));
	cr_assert_eq(bt_read_group_usage(getpgrp(), &u), 0);
	cr_assert_geq(u.processes, 1);
	cr_assert_gt(u.rss_bytes, 0);
	cr_assert_eq(u.rss_bytes % (uint64_t)sysconf(_SC_PAGESIZE), 0, "rss not in pages");
}

Test(signals, group_usage_of_an_empty_group_is_zero)
{
	struct bt_group_usage u;
	memset(&u, 0xff, sizeof(u));
	/* above any pid_max (at most 2^22) */
	cr_assert_eq(bt_read_group_usage((pid_t)1 << 30, &u), 0);
	cr_assert_eq(u.processes, 0);
	cr_assert_eq(u.rss_bytes, 0);
	cr_assert_eq(u.cpu_jiffies, 0);
}

/* ---- parsing /proc by hand ------------------------------------------------------------- */

Test(signals, proc_stat_fields_come_after_the_last_parenthesis)
{
	struct bt_proc_stat s;
	memset(&s, 0xff, sizeof(s));
	/* A command name with spaces and parentheses; nice is negative. */
	const char *text = "4321 (a) b (c) d) S 1 4321 4321 0 -1 4194560 100 0 0 0 7 5 3 2 20 -5 1 0 "
			   "12345 1000000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1\n";
	cr_assert_eq(bt_parse_proc_stat(text, &s), 0);
	cr_assert_eq(s.pgrp, 4321);
	cr_assert_eq(s.cpu_jiffies, 12, "utime 7 + stime 5, not %llu", ULL(s.cpu_jiffies));
	cr_assert_eq(s.rss_pages, 250);
	cr_assert_eq(s.zombie, 0);
}

Test(signals, proc_stat_of_a_zombie_with_negative_rss)
{
	struct bt_proc_stat s;
	const char *text = "77 (w) Z 1 70 70 0 -1 0 0 0 0 0 40 2 0 0 20 0 1 0 9 0 -1 0\n";
	cr_assert_eq(bt_parse_proc_stat(text, &s), 0);
	cr_assert_eq(s.pgrp, 70);
	cr_assert_eq(s.cpu_jiffies, 42);
	cr_assert_eq(s.rss_pages, 0);
	cr_assert_eq(s.zombie, 1);
}

Test(signals, proc_stat_cut_short_is_refused)
{
	struct bt_proc_stat s;
	cr_assert_eq(bt_parse_proc_stat("", &s), -EINVAL);
	cr_assert_eq(bt_parse_proc_stat("12 (no close paren S 1 2", &s), -EINVAL);
	cr_assert_eq(bt_parse_proc_stat("12 (w) S 1 12 12 0 -1 0 0 0 0 0 7", &s), -EINVAL,
		     "ends before stime");
	cr_assert_eq(bt_parse_proc_stat("12 (w) S 1 12 12 0 -1 0 0 0 0 0 7 5 0 0 20 0 1 0 9 9", &s),
		     -EINVAL, "ends before rss");
	cr_assert_eq(bt_parse_proc_stat("12 (w) S 1 x 12 0 -1 0 0 0 0 0 7 5 0 0 20 0 1 0 9 9 1", &s),
		     -EINVAL, "pgrp is not a number");
}

Test(signals, system_cpu_line_parsed_by_hand)
{
	struct bt_cpu_counters c;
	cr_assert_eq(bt_parse_system_cpu("cpu  10 20 30 40 50 60 70 80 90 100\ncpu0 1 2 3 4\n", &c), 0);
	cr_assert_eq(c.total, 360, "user..steal, guest excluded: %llu", ULL(c.total));
	cr_assert_eq(c.busy, 270, "total minus idle and iowait: %llu", ULL(c.busy));
	cr_assert_eq(bt_parse_system_cpu("cpu  1 2 3 4\n", &c), 0, "old kernels have 4 fields");
	cr_assert_eq(c.total, 10);
	cr_assert_eq(c.busy, 6);
	cr_assert_eq(bt_parse_system_cpu("cpu  1 2 3\n", &c), -EINVAL);
	cr_assert_eq(bt_parse_system_cpu("intr 1 2 3 4 5\n", &c), -EINVAL);
}

Test(signals, one_scan_holds_every_group_sorted_and_finds_them)
{
	struct bt_usage_table t = {0};
	cr_assert_eq(bt_usage_scan(&t), 0);
	cr_assert_gt(t.len, 0);
	cr_assert_geq(t.processes_read, t.len);
	for (size_t i = 1; i < t.len; i++)
		cr_assert_lt(t.v[i - 1].pgid, t.v[i].pgid, "not sorted, or a group twice, at %zu", i);
	const struct bt_group_usage *u = bt_usage_find(&t, getpgrp());
	cr_assert_not_null(u, "this process's group was not seen");
	cr_assert_geq(u->processes, 1);
	cr_assert_gt(u->rss_bytes, 0);
	for (size_t i = 0; i < t.len; i++)
		cr_assert_eq(bt_usage_find(&t, t.v[i].pgid), &t.v[i].u);
	cr_assert_null(bt_usage_find(&t, (pid_t)1 << 30));
	cr_assert_null(bt_usage_find(&t, 0));
	bt_usage_table_release(&t);
}

/*
 * A group of its own: a leader and its child, both named with parentheses
 * and spaces (the name sits in /proc/PID/stat between parentheses), each
 * burning 0.2 s of CPU.  Exactly these two are counted, with their CPU.
 */
static void run_member(int ready, int hold)
{
	prctl(PR_SET_NAME, "a) b (c) d", 0, 0, 0);
	burn(0.2);
	char c = 'r';
	if (write(ready, &c, 1) != 1)
		_exit(2);
	while (read(hold, &c, 1) > 0)
		;
}

Test(signals, group_usage_counts_every_process_of_the_group_and_only_those)
{
	int ready[2], hold[2];
	cr_assert_eq(pipe(ready), 0);
	cr_assert_eq(pipe(hold), 0);
	pid_t leader = fork();
	cr_assert_neq(leader, -1);
	if (leader == 0) {
		setpgid(0, 0);
		close(ready[0]);
		close(hold[1]);
		pid_t child = fork();
		if (child < 0)
			_exit(2);
		run_member(ready[1], hold[0]);
		if (child > 0)
			waitpid(child, NULL, 0);
		_exit(0);
	}
	setpgid(leader, leader); /* either side may win the race */
	close(ready[1]);
	close(hold[0]);
	char c;
	int got = 0;
	while (got < 2 && read(ready[0], &c, 1) == 1)
		got++;
	cr_assert_eq(got, 2, "the group did not start");

	struct bt_group_usage u;
	int r = bt_read_group_usage(leader, &u);

	close(hold[1]); /* both exit */
	close(ready[0]);
	int status;
	waitpid(leader, &status, 0);

	cr_assert_eq(r, 0);
	cr_assert_eq(u.processes, 2, "counted %d processes in a group of 2", u.processes);
	cr_assert_gt(u.rss_bytes, 0);
	long hz = sysconf(_SC_CLK_TCK);
	uint64_t least = (uint64_t)(0.4 * (double)hz / 2); /* half of 2 x 0.2 s */
	cr_assert_geq(u.cpu_jiffies, least, "%llu jiffies for 0.4 s of CPU at %ld Hz",
		      ULL(u.cpu_jiffies), hz);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/*
 * A downscale goes to the highest demand seen during the delay, not to the
 * last reading: with 8 replicas and demand 6, 3, then 1 over the delay, a
 * scale to 1 would undershoot what the stage needed moments ago and flap
 * back up (bench/autoscale saw 8 -> 6 -> 8 this way).
 */
Test(demand, scale_down_goes_to_the_peak_of_the_delay_window)
{
	struct bt_autoscale_config c = demand_config(); /* target 2, down after 30 s */
	struct bt_scale_state s;
	struct bt_scale_decision d;
	memset(&s, 0, sizeof(s));
	{ struct bt_scale_input in = quiet(1 * SEC, 8, 12); bt_policy_demand(&c, &in, &s, &d); } /* desired 6 */
	cr_assert_eq(d.to, 8);
	{ struct bt_scale_input in = quiet(11 * SEC, 8, 6); bt_policy_demand(&c, &in, &s, &d); } /* desired 3 */
	{ struct bt_scale_input in = quiet(21 * SEC, 8, 0); bt_policy_demand(&c, &in, &s, &d); } /* desired 1 */
	cr_assert_eq(d.to, 8);
	{ struct bt_scale_input in = quiet(31 * SEC, 8, 0); bt_policy_demand(&c, &in, &s, &d); }
	cr_assert_eq(d.to, 6, "went to %d, not the window's peak 6", d.to);
	/* Then a new window starts for the rest of the way down. */
	{ struct bt_scale_input in = quiet(32 * SEC, 6, 0); bt_policy_demand(&c, &in, &s, &d); }
	cr_assert_eq(d.to, 6);
	{ struct bt_scale_input in = quiet(62 * SEC, 6, 0); bt_policy_demand(&c, &in, &s, &d); }
	cr_assert_eq(d.to, 1);
}
