/*
 * Metrics: the histogram (pure: buckets and sums, unit-tested) and the
 * Prometheus text exposition of the daemon's counters, gauges and
 * histograms at GET /metrics.  Counters live in the structs they count
 * (stages, pipelines, replicas); this module only reads and formats them.
 */
#ifndef BT_METRICS_H
#define BT_METRICS_H

#include <stdint.h>

#include "../common/common.h"

#define BT_HIST_MAX_BUCKETS 24

struct bt_hist {
	const double *bounds; /* upper bounds, ascending; +Inf is implicit */
	int nbounds;
	uint64_t counts[BT_HIST_MAX_BUCKETS + 1]; /* per bucket, not cumulative */
	uint64_t count;
	double sum;
};

/* Bucket bounds for durations in seconds, and for batch sizes. */
extern const double bt_hist_seconds[];
extern const int bt_hist_seconds_n;
extern const double bt_hist_sizes[];
extern const int bt_hist_sizes_n;

void bt_hist_init(struct bt_hist *h, const double *bounds, int nbounds);
void bt_hist_observe(struct bt_hist *h, double v);
/*
 * Appends the histogram's _bucket (cumulative, with le="+Inf"), _sum and
 * _count lines.  labels is `key="value"` pairs without braces, or "".
 */
void bt_hist_write(struct bt_buf *out, const char *name, const char *labels,
		   const struct bt_hist *h);
/* Value of quantile q (0..1) estimated from the buckets, as Prometheus does. */
double bt_hist_quantile(const struct bt_hist *h, double q);

struct bt_daemon;
/* Appends the whole /metrics document. */
void bt_metrics_write(struct bt_daemon *d, struct bt_buf *out);

#endif
