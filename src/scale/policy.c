/*
 * The two scaling policies, as pure functions of a tick's signals and the
 * policy's memory.  Both act only on conditions that held for a while
 * (the delays, the hysteresis window): that is what keeps them from
 * flapping.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "scale.h"

static int clamp(int v, int lo, int hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

static void nothing(const struct bt_scale_input *in, struct bt_scale_decision *out)
{
	out->to = in->current;
	out->refused = 0;
	out->reason[0] = '\0';
}

/* A refusal is reported once per kind of obstacle, not at every tick. */
static void refuse(struct bt_scale_state *s, struct bt_scale_decision *out, const char *kind,
		   const char *why)
{
	if (strcmp(s->last_refusal, kind)) {
		snprintf(s->last_refusal, sizeof(s->last_refusal), "%s", kind);
		out->refused = 1;
		snprintf(out->reason, sizeof(out->reason), "%s", why);
	}
}

/* What stands in the way of one more replica: NULL, or its kind and text. */
static const char *no_headroom(const struct bt_autoscale_config *c,
			       const struct bt_scale_input *in, char *buf, size_t len)
{
	/* 100 means "no limit": a busy machine reads 100% and would block forever. */
	if (c->max_cpu < 100 && in->cpu_percent >= c->max_cpu) {
		snprintf(buf, len, "CPU at %.0f%% (max_cpu %.0f%%)", in->cpu_percent, c->max_cpu);
		return "cpu";
	}
	if (c->max_gpu < 100 && in->gpu_percent >= 0 && in->gpu_percent >= c->max_gpu) {
		snprintf(buf, len, "GPU at %.0f%% (max_gpu %.0f%%)", in->gpu_percent, c->max_gpu);
		return "gpu";
	}
	if (!in->can_place) {
		snprintf(buf, len, "%s", in->place_reason ? in->place_reason : "does not fit");
		return in->place_reason ? in->place_reason : "place";
	}
	return NULL;
}

static void changed(struct bt_scale_state *s, uint64_t now)
{
	s->want_up = s->want_down = 0;
	s->changed = 1;
	s->last_change_ms = now;
	s->last_refusal[0] = '\0';
}

/* Starts (or keeps) a wish; returns how long it has been held. */
static uint64_t wish(int *flag, uint64_t *since, uint64_t now)
{
	if (!*flag) {
		*flag = 1;
		*since = now;
	}
	return now - *since;
}

void bt_policy_demand(const struct bt_autoscale_config *c, const struct bt_scale_input *in,
		      struct bt_scale_state *s, struct bt_scale_decision *out)
{
	nothing(in, out);
	/* Clamped as a double: a huge queue over a tiny target overflows an int. */
	double want = ceil((double)(in->queued + in->in_flight) / c->target_ongoing);
	int desired = want >= c->max ? c->max : want <= c->min ? c->min : (int)want;
	int outside = in->current < c->min || in->current > c->max;
	if (outside)
		desired = clamp(in->current, c->min, c->max);
	if (desired > in->current) {
		s->want_down = 0;
		uint64_t held = wish(&s->want_up, &s->want_up_since, in->now_ms);
		if (!outside && held < c->upscale_delay_ms)
			return;
		char buf[200], msg[240];
		const char *kind = no_headroom(c, in, buf, sizeof(buf));
		if (kind) {
			snprintf(msg, sizeof(msg), "wanted %d: %s", desired, buf);
			refuse(s, out, kind, msg);
			return;
		}
		out->to = desired;
		snprintf(out->reason, sizeof(out->reason),
			 "demand: %llu queued + in flight over target_ongoing %.3g",
			 (unsigned long long)(in->queued + in->in_flight), c->target_ongoing);
	} else if (desired < in->current) {
		s->want_up = 0;
		if (!s->want_down || desired > s->down_peak)
			s->down_peak = desired;
		uint64_t held = wish(&s->want_down, &s->want_down_since, in->now_ms);
		if (!outside && held < c->downscale_delay_ms)
			return;
		out->to = outside ? desired : s->down_peak;
		snprintf(out->reason, sizeof(out->reason),
			 "demand: at most %d replicas' worth for %.0fs (now %llu queued + in flight)",
			 out->to, (double)held / 1000.0,
			 (unsigned long long)(in->queued + in->in_flight));
	} else {
		s->want_up = s->want_down = 0;
		s->last_refusal[0] = '\0';
		return;
	}
	changed(s, in->now_ms);
}

void bt_policy_headroom(const struct bt_autoscale_config *c, const struct bt_scale_input *in,
			struct bt_scale_state *s, struct bt_scale_decision *out)
{
	nothing(in, out);
	double gpu = in->gpu_percent < 0 ? 0 : in->gpu_percent;
	double lat = in->latency_p95_s < 0 ? 0 : in->latency_p95_s;
	int up = gpu < c->up_gpu && in->cpu_percent < c->up_cpu && lat < c->up_latency_s;
	int down = gpu > c->down_gpu || in->cpu_percent > c->down_cpu || lat > c->down_latency_s;
	if (in->current < c->min || in->current > c->max) {
		out->to = clamp(in->current, c->min, c->max);
		snprintf(out->reason, sizeof(out->reason), "headroom: back within [%d, %d]", c->min,
			 c->max);
		changed(s, in->now_ms);
		return;
	}
	uint64_t held;
	if (down && in->current > c->min) {
		s->want_up = 0;
		held = wish(&s->want_down, &s->want_down_since, in->now_ms);
	} else if (up && in->current < c->max) {
		s->want_down = 0;
		held = wish(&s->want_up, &s->want_up_since, in->now_ms);
	} else {
		s->want_up = s->want_down = 0;
		s->last_refusal[0] = '\0';
		return;
	}
	int cooled = !s->changed || in->now_ms - s->last_change_ms >= c->hysteresis_ms;
	if (held < c->hysteresis_ms || !cooled)
		return;
	if (s->want_down) {
		out->to = in->current - 1;
		snprintf(out->reason, sizeof(out->reason),
			 "headroom: gpu %.0f%% cpu %.0f%% p95 %.2fs over a limit for %.0fs", gpu,
			 in->cpu_percent, lat, (double)held / 1000.0);
	} else {
		if (!in->can_place) {
			char msg[240];
			snprintf(msg, sizeof(msg), "wanted %d: %s", in->current + 1,
				 in->place_reason ? in->place_reason : "does not fit");
			refuse(s, out, in->place_reason ? in->place_reason : "place", msg);
			return;
		}
		out->to = in->current + 1;
		snprintf(out->reason, sizeof(out->reason),
			 "headroom: gpu %.0f%% cpu %.0f%% p95 %.2fs all under the limits for %.0fs",
			 gpu, in->cpu_percent, lat, (double)held / 1000.0);
	}
	changed(s, in->now_ms);
}
