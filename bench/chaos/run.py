#!/usr/bin/python3
"""bench/chaos: the chaos scenario at load, measured.

A three-stage pipeline of Python echo workers (two replicas each, retries
3) takes N requests at concurrency 32, once undisturbed and once while a
random replica is killed with SIGKILL every 300 ms.  Prints requests
answered per second, the share of requests that needed a retry, p50/p99
latency with and without chaos, and the number lost (requests without
exactly one answer), which must be zero.

    /usr/bin/python3 bench/chaos/run.py --build build [--requests 20000]

With --mode escape the workers escape supervision as daemonizers do (fork,
setsid(), fork again: tests/e2e/escape_worker.py), once at start and on
every tenth request, while replicas are killed with SIGKILL; then baton
itself is killed with SIGKILL under load and started again.  For each
containment mode (cgroup where writable, and subreaper) it prints how many
escaped processes were left after each phase, which must be 0:

    /usr/bin/python3 bench/chaos/run.py --build build --mode escape [--requests 3000]
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


def start(build, tmp, escape=None, top="", env=None):
    port = free_port()
    echo = os.path.join(ROOT, "bench", "hop", "echo.py")
    worker_env = {"PYTHONPATH": os.path.join(ROOT, "sdk", "python")}
    if escape:
        echo = os.path.join(ROOT, "tests", "e2e", "escape_worker.py")
        worker_env.update({"ESCAPE_PIDS": escape, "ESCAPE_AT_START": "1"})
    stage = ("  %s:\n    command: [/usr/bin/python3, " + echo + "]\n"
             "    env: " + json.dumps(worker_env).replace("%", "%%") + "\n"
             "    replicas: 2\n    max_ongoing: 4\n    retries: 3\n"
             "    restart: {backoff_ms: 20, backoff_max_ms: 200, max_failures: 1000000, "
             "reset_after_ms: 1000}\n")
    cfg = os.path.join(tmp, "chaos.yaml")
    with open(cfg, "w") as f:
        f.write(top + "log_level: warn\nstages:\n" + stage % "a" + stage % "b" + stage % "c" +
                "pipelines:\n  p: [a, b, c]\n")
    log = open(cfg + ".log", "ab")
    proc = subprocess.Popen([os.path.join(build, "baton"), "serve", cfg, "--listen",
                             "127.0.0.1:%d" % port], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
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


def load(port, total, concurrency, escape_every=0):
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
            body = b"escape" if escape_every and i % escape_every == 0 else b"req-%d" % i
            try:
                conn.request("POST", "/v1/pipelines/p", body)
                r = conn.getresponse()
                body = r.read()
            except (OSError, http.client.HTTPException):
                if not escape_every:
                    raise
                break  # escape mode: baton was killed under us
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


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(") ", 1)[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def escaped_alive(path):
    try:
        with open(path) as f:
            pids = [int(x) for x in f.read().split()]
    except FileNotFoundError:
        pids = []
    return len(pids), [p for p in pids if alive(p)]


def wait_until(cond, seconds):
    end = time.monotonic() + seconds
    while not cond() and time.monotonic() < end:
        time.sleep(0.05)
    return cond()


def escape_phases(build, tmp, total, top, label):
    """Replica kills under load, SIGTERM, then kill -9 of baton under load and the next start."""
    pids = os.path.join(tmp, "escaped-" + label)
    env = dict(os.environ, BATON_RUNTIME_DIR=os.path.join(tmp, "run-" + label))
    out = {"mode": label}
    # 1: replicas killed with SIGKILL while their workers escape.
    proc, port = start(build, tmp, pids, top, env)
    mode = json.loads(get(port, "/v1/status")).get("containment", {}).get("mode", "none")
    stop, kills = threading.Event(), [0]
    k = threading.Thread(target=killer, args=(port, stop, kills))
    k.start()
    t0 = time.monotonic()
    load(port, total, 16, escape_every=10)
    out["per_s"] = total / (time.monotonic() - t0)
    stop.set()
    k.join()
    # Escaped processes of dead replicas end within a tick or two; the live
    # replicas' own stay (they count in the status as theirs).
    time.sleep(2.5)
    doc = json.loads(get(port, "/v1/status"))
    owned = sum(max(0, r.get("processes", 1) - 1) for s in doc["stages"].values()
                for r in s["replicas"])
    n, live = escaped_alive(pids)
    out.update(escaped=n, kills=kills[0], unowned_after_kills=max(0, len(live) - owned))
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    out["left_after_sigterm"] = len(escaped_alive(pids)[1])
    # 2: baton itself killed with SIGKILL under load, then started again.
    proc, port = start(build, tmp, pids, top, env)
    t = threading.Thread(target=load, args=(port, total, 16, 10))
    t.start()
    time.sleep(3)
    proc.kill()
    proc.wait(10)
    t.join()
    left = set(escaped_alive(pids)[1])
    out["left_after_kill9"] = len(left)
    # The next start ends what the killed one left before it listens.
    proc, port = start(build, tmp, pids, top, env)
    wait_until(lambda: not any(alive(p) for p in left), 5)
    out["left_after_next_start"] = sum(1 for p in left if alive(p))
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    out["left_at_end"] = len(escaped_alive(pids)[1])
    out["mode"] = mode
    return out


def main_escape(build, tmp, total):
    rows = [escape_phases(build, tmp, total, "", "auto")]
    if rows[0]["mode"] != "none":  # a baton from before containment knows no cgroup key
        rows.append(escape_phases(build, tmp, total, "cgroup: off\n", "off"))
    print("bench/chaos --mode escape — %d requests per phase, 3 stages x 2 escaping Python "
          "replicas, concurrency 16; %s, %d cores — %s"
          % (total, platform.node(), os.cpu_count(), time.strftime("%Y-%m-%d")))
    print("%-10s %8s %8s %6s %14s %10s %10s %12s %7s" % (
        "mode", "answer/s", "escaped", "kills", "unowned/kills", "left/TERM", "left/KILL",
        "left/restart", "left"))
    for r in rows:
        print("%-10s %8.0f %8d %6d %14d %10d %10d %12d %7d" % (
            r["mode"], r["per_s"], r["escaped"], r["kills"], r["unowned_after_kills"],
            r["left_after_sigterm"], r["left_after_kill9"], r["left_after_next_start"],
            r["left_at_end"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--mode", choices=["chaos", "escape"], default="chaos")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    tmp = tempfile.mkdtemp(prefix="baton-chaos-")
    if a.mode == "escape":
        main_escape(build, tmp, a.requests or 3000)
        return
    a.requests = a.requests or 20000
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
