#!/usr/bin/python3
"""bench/autoscale's worker: every request costs 50 ms of wall time
(time.sleep, so it holds its replica without loading the CPU; BENCH_COST_MS
changes it) and is answered with its own payload."""
import os
import time

import baton_worker as bw

COST = float(os.environ.get("BENCH_COST_MS", "50")) / 1000


def handle(payload, meta):
    time.sleep(COST)
    return payload


bw.run(handle)
