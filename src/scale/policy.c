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

/* A refusal is reported once per distinct reason, not at every tick. */
static void refuse(struct bt_scale_state *s, struct bt_scale_decision *out, const char *why)
{
	if (strcmp(s->last_refusal, why)) {
		snprintf(s->last_refusal, sizeof(s->last_refusal), "%s", why);
		out->refused = 1;
		snprintf(out->reason, sizeof(out->reason), "%s", why);
	}
}

/* Why one more replica cannot start now, or NULL. */
static const char *no_headroom(const struct bt_autoscale_config *c,
			       const struct bt_scale_input *in, char *buf, size_t len)
{
	if (in->cpu_percent >= c->max_cpu) {
		snprintf(buf, len, "CPU at %.0f%% (max_cpu %.0f%%)", in->cpu_percent, c->max_cpu);
		return buf;
	}
	if (in->gpu_percent >= 0 && in->gpu_percent >= c->max_gpu) {
		snprintf(buf, len, "GPU at %.0f%% (max_gpu %.0f%%)", in->gpu_percent, c->max_gpu);
		return buf;
	}
	if (!in->can_place) {
		snprintf(buf, len, "%s", in->place_reason ? in->place_reason : "does not fit");
		return buf;
	}
	return NULL;
}

void bt_policy_demand(const struct bt_autoscale_config *c, const struct bt_scale_input *in,
		      struct bt_scale_state *s, struct bt_scale_decision *out)
{
	nothing(in, out);
	double load = (double)(in->queued + in->in_flight);
	int desired = clamp((int)ceil(load / c->target_ongoing), c->min, c->max);
	if (in->current < c->min || in->current > c->max)
		desired = clamp(in->current, c->min, c->max);
	if (desired > in->current) {
		s->want_down_since = 0;
		if (!s->want_up_since)
			s->want_up_since = in->now_ms;
		if (in->current >= c->min && in->now_ms - s->want_up_since < c->upscale_delay_ms)
			return;
		char buf[160];
		const char *why = no_headroom(c, in, buf, sizeof(buf));
		if (why) {
			char msg[200];
			snprintf(msg, sizeof(msg), "wanted %d: %s", desired, why);
			refuse(s, out, msg);
			return;
		}
		out->to = desired;
		snprintf(out->reason, sizeof(out->reason),
			 "demand: %llu queued + in flight over target_ongoing %.3g",
			 (unsigned long long)(in->queued + in->in_flight), c->target_ongoing);
	} else if (desired < in->current) {
		s->want_up_since = 0;
		if (!s->want_down_since)
			s->want_down_since = in->now_ms;
		if (in->current <= c->max && in->now_ms - s->want_down_since < c->downscale_delay_ms)
			return;
		out->to = desired;
		snprintf(out->reason, sizeof(out->reason),
			 "demand: %llu queued + in flight for %.0fs",
			 (unsigned long long)(in->queued + in->in_flight),
			 (double)(in->now_ms - s->want_down_since) / 1000.0);
	} else {
		s->want_up_since = s->want_down_since = 0;
		s->last_refusal[0] = '\0';
		return;
	}
	s->want_up_since = s->want_down_since = 0;
	s->last_change_ms = in->now_ms;
	s->last_refusal[0] = '\0';
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
		s->last_change_ms = in->now_ms;
		return;
	}
	if (down && in->current > c->min) {
		s->want_up_since = 0;
		if (!s->want_down_since)
			s->want_down_since = in->now_ms;
	} else if (up && in->current < c->max) {
		s->want_down_since = 0;
		if (!s->want_up_since)
			s->want_up_since = in->now_ms;
	} else {
		s->want_up_since = s->want_down_since = 0;
		return;
	}
	int cooled = !s->last_change_ms || in->now_ms - s->last_change_ms >= c->hysteresis_ms;
	if (s->want_down_since && in->now_ms - s->want_down_since >= c->hysteresis_ms && cooled) {
		out->to = in->current - 1;
		snprintf(out->reason, sizeof(out->reason),
			 "headroom: gpu %.0f%% cpu %.0f%% p95 %.2fs over a limit for %.0fs", gpu,
			 in->cpu_percent, lat, (double)c->hysteresis_ms / 1000.0);
	} else if (s->want_up_since && in->now_ms - s->want_up_since >= c->hysteresis_ms &&
		   cooled) {
		if (!in->can_place) {
			char msg[200];
			snprintf(msg, sizeof(msg), "wanted %d: %s", in->current + 1,
				 in->place_reason ? in->place_reason : "does not fit");
			refuse(s, out, msg);
			return;
		}
		out->to = in->current + 1;
		snprintf(out->reason, sizeof(out->reason),
			 "headroom: gpu %.0f%% cpu %.0f%% p95 %.2fs all under the limits for %.0fs",
			 gpu, in->cpu_percent, lat, (double)c->hysteresis_ms / 1000.0);
	} else {
		return;
	}
	s->want_up_since = s->want_down_since = 0;
	s->last_change_ms = in->now_ms;
	s->last_refusal[0] = '\0';
}
