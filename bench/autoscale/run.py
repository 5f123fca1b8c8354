#!/usr/bin/python3
"""bench/autoscale: how the `demand` policy follows a step in load.

One stage whose worker takes 50 ms per request (time.sleep), max_ongoing 1,
replicas {min 1, max 8, initial 1}, autoscale {policy demand,
target_ongoing 1, upscale_delay_s 2, downscale_delay_s 10}, interval_ms 250.
An open-loop load at a constant rate per phase:

    baseline  10 req/s for 10 s   (half a replica)
    step     120 req/s for 30 s   (6 replicas' worth at 50 ms each)
    drop      10 req/s for 25 s

While it runs, GET /v1/status every 250 ms records the replicas (active:
scaling.active, slots started or starting; serving: replicas ready or
busy), the queue and the requests on replicas. Every request's scheduled
send time and latency (measured from the scheduled time, as
bench/batching/loadgen.py does) are kept. Prints the reaction times, the
replicas reached, latency per phase, failures and the scaling events; writes
a CSV and a chart (gnuplot). Prints figures, never pass/fail.

    /usr/bin/python3 bench/autoscale/run.py --build build
        [--csv bench/autoscale/last-run.csv] [--chart docs/img/autoscale.png]
        [--json out.json]

Times are seconds from the first scheduled request; the step starts at
t = 10 s, the drop at t = 40 s.
"""
import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench", "batching"))
import loadgen  # noqa: E402  (its _one: one request on a pooled keep-alive connection)

PHASES = [("baseline", 10.0, 10.0), ("step", 120.0, 30.0), ("drop", 10.0, 25.0)]
STEP_AT = PHASES[0][2]
DROP_AT = STEP_AT + PHASES[1][2]
END_AT = DROP_AT + PHASES[2][2]
NEEDED = 6          # 120 req/s x 50 ms
SETTLE_S = 5.0      # "step first 5 s" vs "step rest"
POLL_S = 0.25
TAIL_S = 30.0       # after the load, how long to wait for the stage to be back at 1
STAGE, PIPELINE = "work", "p"

CONFIG = """\
log_level: info
interval_ms: 250
stages:
  %(stage)s:
    command: [/usr/bin/python3, %(worker)s]
    env: {PYTHONPATH: %(sdk)s}
    replicas: {min: 1, max: 8, initial: 1}
    max_ongoing: 1
    queue_max: 100000
    autoscale: {policy: demand, target_ongoing: 1, upscale_delay_s: 2, downscale_delay_s: 10}
pipelines:
  %(pipeline)s: [%(stage)s]
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get_status(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/v1/status" % port, timeout=2) as r:
        return json.load(r)


def start(build, tmp):
    port = free_port()
    cfg = os.path.join(tmp, "autoscale.yaml")
    with open(cfg, "w") as f:
        f.write(CONFIG % {"stage": STAGE, "pipeline": PIPELINE,
                          "worker": os.path.join(HERE, "worker.py"),
                          "sdk": os.path.join(ROOT, "sdk", "python")})
    log = open(os.path.join(tmp, "baton.log"), "wb")
    proc = subprocess.Popen([os.path.join(build, "baton"), "serve", cfg, "--listen",
                             "127.0.0.1:%d" % port], stdout=log, stderr=subprocess.STDOUT)
    end = time.monotonic() + 30
    while True:
        try:
            st = get_status(port)
            if all(r["state"] == "ready" for r in st["stages"][STAGE]["replicas"]) \
                    and st["stages"][STAGE]["replicas"]:
                break
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > end or proc.poll() is not None:
            sys.exit("baton did not start; see " + log.name)
        time.sleep(0.05)
    return proc, port, log.name


class Poller(threading.Thread):
    """GET /v1/status every POLL_S; rows of (t, active, serving, queued, in_flight)."""

    def __init__(self, port, t0):
        super().__init__(daemon=True)
        self.port, self.t0 = port, t0
        self.rows, self.errors = [], 0
        self.stop = threading.Event()

    def run(self):
        nxt = time.monotonic()
        while not self.stop.is_set():
            try:
                s = get_status(self.port)["stages"][STAGE]
                self.rows.append((time.monotonic() - self.t0, s["scaling"]["active"],
                                  sum(r["state"] in ("ready", "busy") for r in s["replicas"]),
                                  s["queued"], s["running"]))
            except Exception:  # noqa: BLE001 - counted, the run goes on
                self.errors += 1
            nxt += POLL_S
            self.stop.wait(max(0.0, nxt - time.monotonic()))


async def offer(port, body, t0):
    """Open loop over PHASES; returns [(scheduled t, latency s or None)]."""
    pool, tasks, out = [], [], []

    async def one(t):
        stats = {"lat": [], "errors": 0}
        await loadgen._one(pool, "127.0.0.1", port, "/v1/pipelines/" + PIPELINE, body, stats,
                           t0 + t)
        out.append((t, stats["lat"][0] if stats["lat"] else None))

    begin = 0.0
    for _, rate, seconds in PHASES:
        for i in range(int(round(rate * seconds))):
            t = begin + i / rate
            delay = t0 + t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(t)))
        begin += seconds
    await asyncio.gather(*tasks)
    for _, w in pool:
        w.close()
    return sorted(out)


def offered_rate(t):
    begin = 0.0
    for _, rate, seconds in PHASES:
        if begin <= t < begin + seconds:
            return rate
        begin += seconds
    return 0.0


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")


def first(rows, cond, after):
    for r in rows:
        if r[0] >= after and cond(r):
            return r[0]
    return None


def fmt_s(v):
    return "%.2f s" % v if v is not None else "not reached"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--csv", default=os.path.join(HERE, "last-run.csv"))
    ap.add_argument("--chart", default=os.path.join(ROOT, "docs", "img", "autoscale.png"))
    ap.add_argument("--json")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    tmp = tempfile.mkdtemp(prefix="baton-autoscale-")
    machine = "%s, %d cores" % (platform.node(), os.cpu_count())
    print("bench/autoscale — worker 50 ms/request, max_ongoing 1, demand policy "
          "(target_ongoing 1, up 2 s, down 10 s, interval 250 ms), replicas 1..8; %s — %s"
          % (machine, time.strftime("%Y-%m-%d")))
    print("load: %s" % ", ".join("%s %g req/s for %g s" % p for p in PHASES))

    proc, port, logname = start(build, tmp)
    try:
        t0 = time.monotonic() + 0.5
        wall0 = time.time() + (t0 - time.monotonic())
        poller = Poller(port, t0)
        poller.start()
        sent = asyncio.run(offer(port, b"x" * 64, t0))
        # Let the stage come back down if it has not yet.
        end = time.monotonic() + TAIL_S
        while time.monotonic() < end:
            rows = list(poller.rows)
            if rows and rows[-1][0] >= DROP_AT and rows[-1][1] == 1:
                break
            time.sleep(POLL_S)
        time.sleep(2 * POLL_S)
        poller.stop.set()
        poller.join()
        final = get_status(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

    rows = poller.rows
    history = [dict(h, t=h["time"] - wall0) for h in final["scaling_history"]
               if h["stage"] == STAGE]
    applied = [h for h in history if h["applied"]]
    refused = [h for h in history if not h["applied"]]
    failed = sum(1 for _, lat in sent if lat is None)
    codes = final["pipelines"][PIPELINE]["failures"]

    # Reaction to the step.
    up_hist = next((h["t"] for h in applied if h["t"] >= STEP_AT and h["to"] > h["from"]), None)
    up_poll = first(rows, lambda r: r[1] > 1, STEP_AT)
    max_active = max(r[1] for r in rows if STEP_AT <= r[0] < DROP_AT)
    goal = min(NEEDED, max_active)
    goal_active = first(rows, lambda r: r[1] >= goal, STEP_AT)
    goal_serving = first(rows, lambda r: r[2] >= goal, STEP_AT)
    # Reaction to the drop: the first poll at 1 replica after the drop.
    back_poll = first(rows, lambda r: r[1] == 1, DROP_AT)
    back_hist = next((h["t"] for h in applied if h["t"] >= DROP_AT and h["to"] == 1), None)
    # Flapping: applied changes during the steady part of the step.
    steady = [h for h in applied if STEP_AT + SETTLE_S <= h["t"] < DROP_AT]
    in_step = [h for h in applied if STEP_AT <= h["t"] < DROP_AT]
    dirs = [1 if h["to"] > h["from"] else -1 for h in in_step]
    flips = sum(1 for i in range(1, len(dirs)) if dirs[i] != dirs[i - 1]
                and in_step[i]["t"] >= STEP_AT + SETTLE_S)

    phases = [("baseline", 0, STEP_AT), ("step, first %g s" % SETTLE_S, STEP_AT, STEP_AT + SETTLE_S),
              ("step, rest", STEP_AT + SETTLE_S, DROP_AT), ("drop", DROP_AT, END_AT)]
    lat_rows = []
    print()
    print("%-18s %8s %9s %9s %9s %7s" % ("phase", "requests", "p50 ms", "p95 ms", "max ms",
                                          "failed"))
    for name, lo, hi in phases:
        ok = [lat for t, lat in sent if lo <= t < hi and lat is not None]
        bad = sum(1 for t, lat in sent if lo <= t < hi and lat is None)
        n = sum(1 for t, _ in sent if lo <= t < hi)
        r = {"phase": name, "requests": n, "p50_ms": pct(ok, 0.5), "p95_ms": pct(ok, 0.95),
             "max_ms": max(ok) * 1000 if ok else float("nan"), "failed": bad}
        lat_rows.append(r)
        print("%-18s %8d %9.1f %9.1f %9.1f %7d" % (name, n, r["p50_ms"], r["p95_ms"],
                                                    r["max_ms"], bad))
    print()
    print("step at t=%.0f s -> first scale-up decision: +%s (history), replicas > 1: +%s (polls)"
          % (STEP_AT, fmt_s(up_hist - STEP_AT if up_hist is not None else None),
             fmt_s(up_poll - STEP_AT if up_poll is not None else None)))
    print("step -> %d replicas%s: +%s active, +%s serving (ready or busy)"
          % (goal, "" if goal == NEEDED else " (the max reached)",
             fmt_s(goal_active - STEP_AT if goal_active is not None else None),
             fmt_s(goal_serving - STEP_AT if goal_serving is not None else None)))
    print("max replicas during the step: %d (needed %d)" % (max_active, NEEDED))
    print("drop at t=%.0f s -> back at 1 replica: +%s (polls), decision +%s (history)"
          % (DROP_AT, fmt_s(back_poll - DROP_AT if back_poll is not None else None),
             fmt_s(back_hist - DROP_AT if back_hist is not None else None)))
    print("failed requests: %d of %d%s" % (failed, len(sent),
                                           " (%s)" % json.dumps(codes) if codes else ""))
    print("steady part of the step (t=%.0f..%.0f s): %d applied scaling events, %d direction "
          "changes" % (STEP_AT + SETTLE_S, DROP_AT, len(steady), flips))
    print("scaling history (%d applied, %d refused):" % (len(applied), len(refused)))
    for h in history:
        print("  t=%6.2f s  %d -> %d  %s  %s" % (h["t"], h["from"], h["to"],
                                                "applied" if h["applied"] else "REFUSED",
                                                h["reason"]))
    if poller.errors:
        print("status polls that failed: %d" % poller.errors)

    # CSV: one row per poll; latency p95 of the requests *sent* in that second.
    buckets = {}
    for t, lat in sent:
        if lat is not None:
            buckets.setdefault(int(math.floor(t)), []).append(lat)
    os.makedirs(os.path.dirname(os.path.abspath(a.csv)), exist_ok=True)
    with open(a.csv, "w") as f:
        f.write("time_s,replicas,queued,in_flight,latency_p95_window_ms,offered_rate\n")
        for t, active, _, queued, running in rows:
            b = buckets.get(int(math.floor(t)))
            f.write("%.3f,%d,%d,%d,%s,%g\n" % (t, active, queued, running,
                                               "%.1f" % pct(b, 0.95) if b else "",
                                               offered_rate(t)))
    print("csv: %s" % os.path.relpath(a.csv))
    gp = shutil.which("gnuplot")
    if gp:
        os.makedirs(os.path.dirname(os.path.abspath(a.chart)), exist_ok=True)
        subprocess.run([gp, "-e", "csv='%s'; out='%s'; step=%g; drop=%g; title='%s'"
                        % (a.csv, a.chart, STEP_AT, DROP_AT,
                           "baton demand autoscaling, 50 ms worker, %s" % machine),
                        os.path.join(HERE, "chart.gp")], check=True)
        print("chart: %s" % os.path.relpath(a.chart))
    else:
        print("chart: skipped (no gnuplot; apt-get install gnuplot-nox)")
    print("baton log: %s" % logname)

    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine, "date": time.strftime("%Y-%m-%d"),
                       "phases": lat_rows, "history": history, "failed": failed,
                       "failures": codes, "max_replicas": max_active,
                       "first_upscale_s": up_hist - STEP_AT if up_hist is not None else None,
                       "to_needed_s": goal_active - STEP_AT if goal_active is not None else None,
                       "back_to_one_s": back_poll - DROP_AT if back_poll is not None else None,
                       "steady_events": len(steady), "steady_direction_changes": flips,
                       "polls": rows}, f, indent=1)


if __name__ == "__main__":
    main()
