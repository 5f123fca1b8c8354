#!/usr/bin/python3
"""bench/batching: what dynamic batching buys on a GPU-like worker.

The worker costs 5 ms per batch plus 0.5 ms per item.  Offered load (open
loop) is swept from low to past saturation, with batching off and on
(max_size 8, window_ms 10), one replica.  Prints throughput and p50/p99
per load; compare saturation throughput with the ideal
max_size / (5 ms + 0.5 ms × max_size) = 889 requests/s per replica.

    /usr/bin/python3 bench/batching/run.py --build build [--seconds 4]
"""
import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import loadgen  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(build, batch, tmp):
    port = free_port()
    cfg = os.path.join(tmp, "batching-%d.yaml" % port)
    with open(cfg, "w") as f:
        f.write("log_level: warn\nstages:\n  gpu:\n"
                "    command: [/usr/bin/python3, %s]\n"
                "    env: {PYTHONPATH: %s}\n"
                "    queue_max: 100000\n"
                "%s"
                "pipelines:\n  p: [gpu]\n"
                % (os.path.join(HERE, "worker.py"), os.path.join(ROOT, "sdk", "python"),
                   "    batch: {max_size: %d, window_ms: %d}\n" % batch if batch else ""))
    log = open(cfg + ".log", "wb")
    proc = subprocess.Popen([os.path.join(build, "baton"), "serve", cfg, "--listen",
                             "127.0.0.1:%d" % port], stdout=log, stderr=subprocess.STDOUT)
    end = time.monotonic() + 30
    while True:
        try:
            if urllib.request.urlopen("http://127.0.0.1:%d/v2/health/ready" % port,
                                      timeout=1).status == 200:
                break
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > end:
            sys.exit("baton did not start; see " + log.name)
        time.sleep(0.05)
    return proc, port


def pct(lat, q):
    return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--json")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    tmp = tempfile.mkdtemp(prefix="baton-batching-")
    loads = [50, 100, 150, 180, 250, 400, 600, 800, 900, 1000]
    results = {"machine": "%s, %d cores" % (platform.node(), os.cpu_count()),
               "date": time.strftime("%Y-%m-%d"), "runs": []}
    print("bench/batching — worker 5 ms + 0.5 ms/item, one replica; %s — %s"
          % (results["machine"], results["date"]))
    print("%-22s %8s %10s %9s %9s %7s" % ("", "offered", "answered/s", "p50 ms", "p99 ms", "errors"))
    for label, batch in (("batching off", None), ("max_size 8, window 10", (8, 10))):
        proc, port = start(build, batch, tmp)
        for rate in loads:
            # Past saturation queues grow without bound: stop sweeping there.
            lat, errors, elapsed = loadgen.run("127.0.0.1", port, "/v1/pipelines/p", b"x" * 64,
                                               rate, a.seconds)
            r = {"mode": label, "offered": rate, "answered_per_s": len(lat) / elapsed,
                 "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "errors": errors}
            results["runs"].append(r)
            print("%-22s %8d %10.0f %9.1f %9.1f %7d" % (label, rate, r["answered_per_s"],
                                                        r["p50_ms"], r["p99_ms"], errors))
            if r["p50_ms"] > 2000:
                break
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    best = max(r["answered_per_s"] for r in results["runs"] if r["mode"] != "batching off")
    ideal = 8 / (0.005 + 0.0005 * 8)
    print("saturation with batching: %.0f/s = %.0f%% of the ideal %.0f/s" % (best, 100 * best / ideal, ideal))
    low_off = [r for r in results["runs"] if r["mode"] == "batching off"][0]
    low_on = [r for r in results["runs"] if r["mode"] != "batching off"][0]
    print("p50 added by batching at %d/s: %.1f ms (window 10 ms)"
          % (loads[0], low_on["p50_ms"] - low_off["p50_ms"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
