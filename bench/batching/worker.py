#!/usr/bin/python3
"""bench/batching's worker: a batch costs a fixed 5 ms plus 0.5 ms per item,
like a GPU kernel launch plus per-sample work (BENCH_FIXED_MS, BENCH_ITEM_MS)."""
import os
import time

import baton_worker as bw

FIXED = float(os.environ.get("BENCH_FIXED_MS", "5")) / 1000
ITEM = float(os.environ.get("BENCH_ITEM_MS", "0.5")) / 1000


@bw.batch_handler
def handle(reqs):
    time.sleep(FIXED + ITEM * len(reqs))
    return [r.payload for r in reqs]


bw.run(handle)
