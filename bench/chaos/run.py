#!/usr/bin/python3
"""bench/chaos: the chaos scenario at load, measured.

A three-stage pipeline of Python echo workers (two replicas each, retries
3) takes N requests at concurrency 32, once undisturbed and once while a
random replica is killed with SIGKILL every 300 ms.  Prints requests
answered per second, the share of requests that needed a retry, p50/p99
latency with and without chaos, and the number lost (requests without
exactly one answer), which must be zero.

    /usr/bin/python3 bench/chaos/run.py --build build [--requests 20000]
"""
import argparse
import http.client
import json
import os
import platform
import random
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


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
        return r.read()


def start(build, tmp):
    port = free_port()
    echo = os.path.join(ROOT, "bench", "hop", "echo.py")
    stage = ("  %s:\n    command: [/usr/bin/python3, " + echo + "]\n"
             "    env: {PYTHONPATH: " + os.path.join(ROOT, "sdk", "python") + "}\n"
             "    replicas: 2\n    max_ongoing: 4\n    retries: 3\n"
             "    restart: {backoff_ms: 20, backoff_max_ms: 200, max_failures: 1000000, "
             "reset_after_ms: 1000}\n")
    cfg = os.path.join(tmp, "chaos.yaml")
    with open(cfg, "w") as f:
        f.write("log_level: warn\nstages:\n" + stage % "a" + stage % "b" + stage % "c" +
                "pipelines:\n  p: [a, b, c]\n")
    log = open(cfg + ".log", "wb")
    proc = subprocess.Popen([os.path.join(build, "baton"), "serve", cfg, "--listen",
                             "127.0.0.1:%d" % port], stdout=log, stderr=subprocess.STDOUT)
    end = time.monotonic() + 30
    while True:
        try:
            doc = json.loads(get(port, "/v1/status"))
            if all(r["state"] == "ready" for s in doc["stages"].values() for r in s["replicas"]):
                break
        except OSError:
            pass
        if time.monotonic() > end:
            sys.exit("baton did not start")
        time.sleep(0.05)
    return proc, port


def load(port, total, concurrency):
    lat, answers = [], {}
    lock = threading.Lock()
    counter = iter(range(total))

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.monotonic()
            conn.request("POST", "/v1/pipelines/p", b"req-%d" % i)
            r = conn.getresponse()
            body = r.read()
            with lock:
                lat.append(time.monotonic() - t0)
                answers.setdefault(i, []).append((r.status, body))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, answers, time.monotonic() - t0


def killer(port, stop, count):
    rng = random.Random(1)
    while not stop.is_set():
        time.sleep(0.3)
        doc = json.loads(get(port, "/v1/status"))
        pids = [r["pid"] for s in doc["stages"].values() for r in s["replicas"] if r["pid"]]
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                count[0] += 1
            except ProcessLookupError:
                pass


def phase(build, tmp, total, chaos):
    proc, port = start(build, tmp)
    stop, kills = threading.Event(), [0]
    k = threading.Thread(target=killer, args=(port, stop, kills)) if chaos else None
    if k:
        k.start()
    lat, answers, wall = load(port, total, 32)
    stop.set()
    if k:
        k.join()
    doc = json.loads(get(port, "/v1/status"))
    retried = sum(s["retried"] for s in doc["stages"].values())
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    lat.sort()
    lost = sum(1 for i in range(total) if len(answers.get(i, [])) != 1)
    ok = sum(1 for a in answers.values() if a[0][0] == 200)
    return {"per_s": total / wall, "p50_ms": lat[len(lat) // 2] * 1000,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1000, "lost": lost, "ok": ok,
            "failed": total - ok - lost, "retried": retried, "kills": kills[0],
            "accepted": doc["requests"]["accepted"], "succeeded": doc["requests"]["succeeded"],
            "failed_baton": doc["requests"]["failed"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--requests", type=int, default=20000)
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    tmp = tempfile.mkdtemp(prefix="baton-chaos-")
    calm = phase(build, tmp, a.requests, False)
    storm = phase(build, tmp, a.requests, True)
    print("bench/chaos — %d requests, 3 stages x 2 Python replicas, concurrency 32; %s, %d cores — %s"
          % (a.requests, platform.node(), os.cpu_count(), time.strftime("%Y-%m-%d")))
    print("%-22s %10s %9s %9s %10s %8s %6s %7s" % ("", "answered/s", "p50 ms", "p99 ms",
                                                  "retried %", "failed", "lost", "kills"))
    for label, r in (("no chaos", calm), ("SIGKILL every 300 ms", storm)):
        print("%-22s %10.0f %9.1f %9.1f %10.2f %8d %6d %7d" % (
            label, r["per_s"], r["p50_ms"], r["p99_ms"], 100.0 * r["retried"] / a.requests,
            r["failed"], r["lost"], r["kills"]))
        assert r["accepted"] == r["succeeded"] + r["failed_baton"]


if __name__ == "__main__":
    main()
