/*
 * Fixed-bucket histograms with Prometheus semantics (cumulative buckets
 * on output, an implicit +Inf bucket, sum and count).
 */
#include "metrics.h"

#include <math.h>
#include <string.h>

const double bt_hist_seconds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
				  0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
const int bt_hist_seconds_n = (int)BT_ARRAY_SIZE(bt_hist_seconds);
const double bt_hist_sizes[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
const int bt_hist_sizes_n = (int)BT_ARRAY_SIZE(bt_hist_sizes);

void bt_hist_init(struct bt_hist *h, const double *bounds, int nbounds)
{
	BT_ASSERT(nbounds <= BT_HIST_MAX_BUCKETS);
	memset(h, 0, sizeof(*h));
	h->bounds = bounds;
	h->nbounds = nbounds;
}

void bt_hist_observe(struct bt_hist *h, double v)
{
	int i = 0;
	/* A linear scan: at most 24 comparisons, cheaper than bisecting here. */
	while (i < h->nbounds && v > h->bounds[i])
		i++;
	h->counts[i]++;
	h->count++;
	h->sum += v;
}

static void write_le(struct bt_buf *out, const char *name, const char *labels,
		     const char *le, uint64_t n)
{
	bt_buf_printf(out, "%s_bucket{%s%sle=\"%s\"} %llu\n", name, labels,
		      labels[0] ? "," : "", le, (unsigned long long)n);
}

void bt_hist_write(struct bt_buf *out, const char *name, const char *labels,
		   const struct bt_hist *h)
{
	uint64_t cum = 0;
	char le[32];
	for (int i = 0; i < h->nbounds; i++) {
		cum += h->counts[i];
		snprintf(le, sizeof(le), "%g", h->bounds[i]);
		write_le(out, name, labels, le, cum);
	}
	write_le(out, name, labels, "+Inf", h->count);
	if (labels[0]) {
		bt_buf_printf(out, "%s_sum{%s} %.9g\n", name, labels, h->sum);
		bt_buf_printf(out, "%s_count{%s} %llu\n", name, labels,
			      (unsigned long long)h->count);
	} else {
		bt_buf_printf(out, "%s_sum %.9g\n", name, h->sum);
		bt_buf_printf(out, "%s_count %llu\n", name, (unsigned long long)h->count);
	}
}

double bt_hist_quantile(const struct bt_hist *h, double q)
{
	if (h->count == 0)
		return NAN;
	double rank = q * (double)h->count;
	uint64_t cum = 0;
	for (int i = 0; i <= h->nbounds; i++) {
		uint64_t prev = cum;
		cum += h->counts[i];
		if ((double)cum >= rank && h->counts[i]) {
			if (i == h->nbounds) /* in +Inf: the highest finite bound */
				return h->nbounds ? h->bounds[h->nbounds - 1] : NAN;
			double lo = i ? h->bounds[i - 1] : 0;
			double hi = h->bounds[i];
			return lo + (hi - lo) * (rank - (double)prev) / (double)h->counts[i];
		}
	}
	return h->nbounds ? h->bounds[h->nbounds - 1] : NAN;
}
