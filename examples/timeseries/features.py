"""The timeseries example's third stage: features of each sensor-hour with
numpy, vectorised over the page (one (windows, 60) array).  compute() is
also what bench/timeseries calls, in one process and in a process per batch
(`python3 features.py --stdin`: JSON in on stdin, JSON out on stdout)."""
import datetime
import json
import sys

import numpy as np

X = np.arange(60, dtype=np.float64)
XC = X - X.mean()


def compute(windows):
    if not windows:
        return []
    m = np.array([w["minutes"] for w in windows], dtype=np.float64)
    mean = m.mean(axis=1)
    # Least-squares slope per row: sum((x - x̄)(y - ȳ)) / sum((x - x̄)²).
    slope = ((m - mean[:, None]) * XC).sum(axis=1) / (XC * XC).sum()
    std = m.std(axis=1)
    lo, hi = m.min(axis=1), m.max(axis=1)
    p95 = np.percentile(m, 95, axis=1)
    out = []
    for i, w in enumerate(windows):
        start = datetime.datetime.fromtimestamp(w["start"], datetime.timezone.utc)
        out.append({"window_id": w["window_id"], "sensor": w["sensor"],
                    "window_start": start.isoformat(), "mean": float(mean[i]),
                    "std": float(std[i]), "min": float(lo[i]), "max": float(hi[i]),
                    "slope": float(slope[i]), "p95": float(p95[i]),
                    "filled_frac": w["filled"] / 60.0, "n_samples": w["n_samples"]})
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--stdin"]:
        json.dump(compute(json.load(sys.stdin)), sys.stdout)
        sys.exit(0)
    import baton_worker as bw

    def handle(payload, meta):
        try:
            return compute(json.loads(payload))
        except (ValueError, KeyError, TypeError) as e:
            raise bw.Reject(str(e))

    bw.run(handle)
