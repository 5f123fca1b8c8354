#!/usr/bin/python3
"""bench/replicas: what supervising many replicas costs baton.

One stage of bench/hop's C echo worker with 1, 16, 64, 128 and 256 replicas,
the replica count being the only change. For each count: the time from
`baton serve` to the last "replica ready" line, baton's own CPU while idle
(from /proc/PID/stat deltas, all of its threads) with nobody reading status
and again while per-replica sampling is on (one GET /v1/status starts it
for a minute), the p50 of sequential 1 KiB requests (wrk, concurrency 1),
and baton's CPU per request at concurrency 32 (baton's CPU time over the
run divided by the requests answered, so the figure is baton's and not the
two cores' scheduling of hundreds of workers). While replicas start,
GET /v2/health/live is timed (does the loop answer while it spawns?), and
the log says how long spawning took and the slowest replica's own start
(spawn to ready). When all are ready, the CPU time the workers spent
starting and baton's loop spent spawning, summed and divided by the
cores, gives the shortest time the machine could have started them in
("CPU floor"). Prints figures, never pass/fail.

    /usr/bin/python3 bench/replicas/run.py --build build [--counts 1,16,64,128,256]
        [--idle 10] [--duration 5] [--json out.json]
"""
import argparse
import json
import os
import platform
import re
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
POST1K = os.path.join(ROOT, "bench", "hop", "post1k.lua")
HZ = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_s(pid):
    """utime + stime of a process (every thread), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


class Daemon:
    def __init__(self, build, n, tmp):
        self.port = free_port()
        self.n = n
        cfg = os.path.join(tmp, "replicas-%d.yaml" % n)
        with open(cfg, "w") as f:
            f.write("log_level: info\nstages:\n  echo:\n    command: [%s]\n"
                    "    replicas: {initial: %d, max: %d}\npipelines:\n  echo: [echo]\n"
                    % (os.path.join(build, "bench", "echo-c"), n, n))
        self.log_path = os.path.join(tmp, "replicas-%d.log" % n)
        self.log = open(self.log_path, "wb")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [os.path.join(build, "baton"), "serve", cfg, "--listen", "127.0.0.1:%d" % self.port],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.url = "http://127.0.0.1:%d" % self.port

    def ready_lines(self):
        with open(self.log_path, "rb") as f:
            return f.read().count(b'msg="replica ready"')

    def wait_all_ready(self, limit=120):
        """Seconds from the start until every replica said ready, read from
        the log so that no status request turns sampling on; meanwhile
        GET /v2/health/live is timed, to see whether the loop answers while
        it starts replicas (the longest answer is kept)."""
        end = self.t0 + limit
        self.live_max_s = 0
        while self.ready_lines() < self.n:
            if time.monotonic() > end or self.proc.poll() is not None:
                sys.exit("replicas did not become ready; see " + self.log_path)
            t = time.monotonic()
            try:
                urllib.request.urlopen(self.url + "/v2/health/live", timeout=60).read()
                self.live_max_s = max(self.live_max_s, time.monotonic() - t)
            except OSError:
                pass  # not listening yet
            time.sleep(0.01)
        return time.monotonic() - self.t0

    def spawn_and_slowest_start(self):
        """From the log: seconds between the first and the last "replica
        starting" (baton spawning one process after the other: a vfork, then
        waiting until the child's exec begins), and the longest startup_ms of a
        replica (spawn to ready: the worker's own start, plus its wait for
        a core)."""
        starts, slowest = [], 0
        with open(self.log_path, "rb") as f:
            for line in f:
                if b'msg="replica starting"' in line:
                    ts = re.search(rb"ts=\S+T(\d+):(\d+):([\d.]+)Z", line)
                    h, m, s = ts.groups()
                    starts.append(int(h) * 3600 + int(m) * 60 + float(s))
                elif b'msg="replica ready"' in line:
                    slowest = max(slowest, int(re.search(rb"startup_ms=(\d+)", line).group(1)))
        return max(starts) - min(starts), slowest / 1000

    def idle_cpu_percent(self, seconds):
        c0, t0 = cpu_s(self.proc.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_s(self.proc.pid), time.monotonic()
        return 100.0 * (c1 - c0) / (t1 - t0)

    def stop(self):
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self.log.close()
        return time.monotonic() - t


UNITS = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def wrk(url, conns, threads, duration):
    out = subprocess.run(
        ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration, "--latency",
         "--timeout", "10s", "-s", POST1K, url],
        capture_output=True, text=True, check=True).stdout
    m = re.search(r"^\s+50%\s+([\d.]+)(\w+)", out, re.M)
    done = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    timeouts = re.search(r"timeout (\d+)", out)
    return {"p50_us": float(m.group(1)) * UNITS[m.group(2)] if m else float("nan"),
            "requests": int(done.group(1)),
            "per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "errors": (int(errors.group(1)) if errors else 0) +
                      (int(timeouts.group(1)) if timeouts else 0)}


def on_cpu_s(pid):
    """Seconds the task pid (a single-threaded worker, or baton's loop
    thread) has run on a CPU (/proc/PID/schedstat: nanoseconds, not ticks)."""
    with open("/proc/%d/schedstat" % pid) as f:
        return int(f.read().split()[0]) / 1e9


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except OSError:
                pass
    return out


def start_cpu(pid):
    """CPU seconds spent so far by the workers (their own start: exec,
    dynamic linking, the ready message) and by baton, read as soon as all
    are ready. Their sum over the machine's cores is the shortest time in
    which the fleet could have started, however baton spawned it."""
    workers = 0.0
    for k in children(pid):
        try:
            workers += on_cpu_s(k)
        except OSError:
            pass
    return workers, on_cpu_s(pid)


def measure(build, n, tmp, idle, duration):
    d = Daemon(build, n, tmp)
    r = {"replicas": n, "ready_s": d.wait_all_ready()}
    r["workers_cpu_s"], r["baton_cpu_s"] = start_cpu(d.proc.pid)
    r["cpu_floor_s"] = (r["workers_cpu_s"] + r["baton_cpu_s"]) / os.cpu_count()
    r["spawning_s"], r["slowest_start_s"] = d.spawn_and_slowest_start()
    r["live_max_ms"] = d.live_max_s * 1000
    time.sleep(2)  # the last replicas' first pings and the first ticks
    r["idle_cpu_percent"] = d.idle_cpu_percent(idle)
    with urllib.request.urlopen(d.url + "/v1/status", timeout=30) as resp:
        st = json.load(resp)
    assert len(st["stages"]["echo"]["replicas"]) == n
    r["idle_sampling_cpu_percent"] = d.idle_cpu_percent(idle)
    url = d.url + "/v1/pipelines/echo"
    wrk(url, 1, 1, 1)  # warm the path
    # The median of three: one run on a busy 2-core VM can be off by 10x.
    seqs = [wrk(url, 1, 1, duration) for _ in range(3)]
    r["seq_p50_us"] = sorted(s["p50_us"] for s in seqs)[1]
    seq = {"errors": sum(s["errors"] for s in seqs)}
    c0 = cpu_s(d.proc.pid)
    conc = wrk(url, 32, 2, duration)
    r["c32_cpu_us_per_request"] = (cpu_s(d.proc.pid) - c0) * 1e6 / max(conc["requests"], 1)
    r["c32_per_s"] = conc["per_s"]
    r["errors"] = seq["errors"] + conc["errors"]
    r["stop_s"] = d.stop()
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--counts", default="1,16,64,128,256")
    ap.add_argument("--idle", type=int, default=10, help="seconds of each idle measurement")
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    if not shutil.which("wrk"):
        sys.exit("bench/replicas needs wrk (apt-get install wrk)")
    tmp = tempfile.mkdtemp(prefix="baton-replicas-")
    res = {"machine": "%s, %d cores, %s" % (platform.node(), os.cpu_count(), platform.release()),
           "date": time.strftime("%Y-%m-%d"), "load_before": os.getloadavg()[0], "runs": []}
    for n in (int(x) for x in a.counts.split(",")):
        res["runs"].append(measure(build, n, tmp, a.idle, a.duration))
    shutil.rmtree(tmp, ignore_errors=True)

    print("bench/replicas — %s — %s (load average %.1f at the start)" %
          (res["machine"], res["date"], res["load_before"]))
    print("%8s %8s %9s %9s %11s %9s %9s %10s %14s %9s %15s %9s %7s %7s" % (
        "replicas", "ready s", "spawning", "slowest", "workers CPU", "baton CPU", "CPU floor",
        "idle CPU%", "idle+sampl. %", "seq p50", "CPU µs/req c32", "req/s c32", "stop s",
        "errors"))
    for r in res["runs"]:
        print("%8d %8.2f %9.2f %9.2f %10.2fs %8.2fs %8.2fs %10.2f %14.2f %7.2fms %15.1f %9.0f "
              "%7.2f %7d" % (
            r["replicas"], r["ready_s"], r["spawning_s"], r["slowest_start_s"],
            r["workers_cpu_s"], r["baton_cpu_s"], r["cpu_floor_s"],
            r["idle_cpu_percent"], r["idle_sampling_cpu_percent"],
            r["seq_p50_us"] / 1000, r["c32_cpu_us_per_request"], r["c32_per_s"], r["stop_s"],
            r["errors"]))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
