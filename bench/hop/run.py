#!/usr/bin/python3
"""bench/hop: what one hop through baton costs.

1 KiB requests through a one-stage pipeline over HTTP (wrk), with a C and a
Python echo worker, at concurrency 1 and 32; in the same run the floor (the
bare socketpair round trip between two processes) and the seed-000 approach
(a new Python process per request with JSON files). Prints figures, never
pass/fail: compare the ratios, which travel between machines better than
the absolute numbers.

    /usr/bin/python3 bench/hop/run.py --build build [--duration 5] [--json out.json]
"""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PY = "/usr/bin/python3"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http_status(url):
    try:
        return urllib.request.urlopen(url, timeout=2).status
    except Exception as e:  # noqa: BLE001 - any failure means "not yet"
        return getattr(e, "code", 0)


class Daemon:
    def __init__(self, build, cfg_text, tmp):
        self.port = free_port()
        self.cfg = os.path.join(tmp, "hop-%d.yaml" % self.port)
        with open(self.cfg, "w") as f:
            f.write("log_level: warn\n" + cfg_text)
        self.log = open(os.path.join(tmp, "hop-%d.log" % self.port), "wb")
        self.proc = subprocess.Popen(
            [os.path.join(build, "baton"), "serve", self.cfg, "--listen",
             "127.0.0.1:%d" % self.port], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = "http://127.0.0.1:%d" % self.port
        end = time.monotonic() + 60
        while http_status(self.url + "/v2/health/ready") != 200:
            if time.monotonic() > end or self.proc.poll() is not None:
                sys.exit("baton did not become ready; see " + self.log.name)
            time.sleep(0.05)
        self.wait_all_ready()

    def status(self):
        with urllib.request.urlopen(self.url + "/v1/status", timeout=5) as r:
            return json.load(r)

    def wait_all_ready(self):
        end = time.monotonic() + 60
        while time.monotonic() < end:
            st = self.status()
            if all(r["state"] == "ready" for s in st["stages"].values() for r in s["replicas"]):
                return
            time.sleep(0.05)

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


UNITS = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def parse_wrk(out):
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))

    def us(v):
        m = re.match(r"([\d.]+)(\w+)", v)
        return float(m.group(1)) * UNITS[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {"p50_us": us(lat["50"]), "p99_us": us(lat["99"]), "per_s": rps, "total": total,
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sock.group(1) if sock else ""}


def wrk_once(url, conns, threads, duration):
    out = subprocess.run(
        ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration, "--latency",
         "-s", os.path.join(HERE, "post1k.lua"), url],
        capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def wrk(url, conns, threads, duration, runs=3):
    """The median of several runs: on a 2-core VM where the scheduler puts
    the three processes decides much, single runs vary by 2-3x."""
    rs = [wrk_once(url, conns, threads, duration) for _ in range(runs)]
    out = {k: statistics.median(r[k] for r in rs) for k in ("p50_us", "p99_us", "per_s")}
    out["p50_range_us"] = [min(r["p50_us"] for r in rs), max(r["p50_us"] for r in rs)]
    out["non_2xx"] = sum(r["non_2xx"] for r in rs)
    return out


def floor(build):
    runs = [json.loads(subprocess.run([os.path.join(build, "bench", "rtt"), "20000", "1024"],
                                      capture_output=True, text=True, check=True).stdout)
            for _ in range(3)]
    return {"p50_us": statistics.median(r["p50_us"] for r in runs),
            "p99_us": statistics.median(r["p99_us"] for r in runs),
            "per_s": statistics.median(r["per_s"] for r in runs)}


def stage(name, worker, replicas, max_ongoing):
    if worker == "c":
        cmd = "[%s]" % os.path.join(BUILD, "bench", "echo-c")
        env = "{}"
    else:
        cmd = "[%s, %s]" % (PY, os.path.join(HERE, "echo.py"))
        env = "{PYTHONPATH: %s}" % os.path.join(ROOT, "sdk", "python")
    return ("  %s:\n    command: %s\n    env: %s\n    replicas: %d\n    max_ongoing: %d\n"
            % (name, cmd, env, replicas, max_ongoing))


def seed000(n, numpy, tmp):
    lat = []
    data = "x" * 1024
    t0 = time.monotonic()
    for i in range(n):
        inp = os.path.join(tmp, "in-%d.json" % i)
        out = os.path.join(tmp, "out-%d.json" % i)
        t = time.monotonic()
        with open(inp, "w") as f:
            json.dump({"data": data}, f)
        argv = [PY, os.path.join(HERE, "seed000_worker.py"), "--input", inp, "--output", out]
        subprocess.run(argv + (["--numpy"] if numpy else []), check=True)
        with open(out) as f:
            assert json.load(f)["data"] == data
        lat.append((time.monotonic() - t) * 1e6)
        os.unlink(inp)
        os.unlink(out)
    return {"p50_us": statistics.median(lat), "per_s": n / (time.monotonic() - t0)}


# --- side by side (issue 16): baton against a minimal server and FastAPI ------

def cpu_ticks(pid):
    """utime + stime of one process, in clock ticks (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def measured(url, pid, conns, threads, duration):
    """One wrk run, with the CPU time process pid spent per request, and
    that of its children (the workers) together."""
    kids = children(pid)
    t0, k0 = cpu_ticks(pid), sum(cpu_ticks(k) for k in kids)
    r = wrk_once(url, conns, threads, duration)
    per = 1e6 / os.sysconf("SC_CLK_TCK") / max(r["total"], 1)
    r["cpu_us"] = (cpu_ticks(pid) - t0) * per
    r["workers_cpu_us"] = (sum(cpu_ticks(k) for k in kids) - k0) * per
    return r


class Minimal:
    """bench/hop/minimal.c with n Python children."""

    def __init__(self, n):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [os.path.join(BUILD, "bench", "minimal"), str(self.port), str(n), PY,
             os.path.join(HERE, "minimal_child.py")], stdout=subprocess.PIPE)
        if self.proc.stdout.readline() != b"ready\n":
            sys.exit("bench/minimal did not start")
        self.url = "http://127.0.0.1:%d/" % self.port

    def stop(self):
        self.proc.kill()  # its children see EOF and exit
        self.proc.wait(10)


class FastAPI:
    """bench/hop/fastapi_pipeline.py: two stages, one process each."""

    def __init__(self, tmp):
        self.port = free_port()
        self.log = open(os.path.join(tmp, "fastapi-%d.log" % self.port), "wb")
        self.proc = subprocess.Popen([PY, os.path.join(HERE, "fastapi_pipeline.py"),
                                      str(self.port)], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.url = "http://127.0.0.1:%d/pipeline" % self.port
        end = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(self.url, data=b"x"), timeout=2)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > end or self.proc.poll() is not None:
                    sys.exit("FastAPI did not start; see " + self.log.name)
                time.sleep(0.1)

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)  # uvicorn and its stage processes
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


def side_by_side(a, tmp):
    """Each round runs every configuration once, so that a change in the
    machine's load hits all of them alike; figures are medians over rounds."""
    have_fastapi = subprocess.run([PY, "-c", "import fastapi, uvicorn"],
                                  capture_output=True).returncode == 0
    configs = [
        ("min_c1", "minimal server, 1 Python child, c1", 1, 1),
        ("baton_c1", "baton, 1 Python stage, c1", 1, 1),
        ("min_c32", "minimal server, 2 Python children, c32", 32, 2),
        ("baton_c32", "baton, 1 Python stage (2 replicas), c32", 32, 2),
        ("baton2_c32", "baton, 2 Python stages, c32", 32, 2),
    ]
    if have_fastapi:
        configs.append(("fastapi_c32", "FastAPI+uvicorn, 2 stages, c32", 32, 2))
    if a.baseline:
        configs += [("old_baton_c1", "baseline baton, 1 Python stage, c1", 1, 1),
                    ("old_baton_c32", "baseline baton, 1 Python stage, c32", 32, 2)]
    if a.only:
        configs = [c for c in configs if c[0] in a.only.split(",")]
    runs = {k: [] for k, *_ in configs}
    loads = []
    for _ in range(a.rounds):
        loads.append(os.getloadavg()[0])
        for name, _label, conns, threads in configs:
            key = name
            if key.startswith("min"):
                srv = Minimal(1 if conns == 1 else 2)
                url, pid = srv.url, srv.proc.pid
            elif key == "fastapi_c32":
                srv = FastAPI(tmp)
                url, pid = srv.url, srv.proc.pid
            else:
                build = BUILD
                if key.startswith("old_"):
                    build = os.path.abspath(a.baseline)
                    key = key[len("old_"):]
                if key == "baton_c1":
                    stages = stage("echo", "python", 1, 1)
                    pipe = "[echo]"
                elif key == "baton_c32":
                    stages = stage("echo", "python", 2, 16)
                    pipe = "[echo]"
                else:
                    stages = stage("a", "python", 1, 16) + stage("b", "python", 1, 16)
                    pipe = "[a, b]"
                srv = Daemon(build, "stages:\n" + stages + "pipelines:\n  p: %s\n" % pipe, tmp)
                url, pid = srv.url + "/v1/pipelines/p", srv.proc.pid
            wrk_once(url, conns, threads, 1)  # warm up
            runs[name].append(measured(url, pid, conns, threads, a.duration))
            srv.stop()
    res = {"load_avg_1m": loads}
    for key, *_ in configs:
        rs = runs[key]
        res[key] = {k: statistics.median(r[k] for r in rs)
                    for k in ("p50_us", "p99_us", "per_s", "cpu_us", "workers_cpu_us")}
        res[key]["p50_range_us"] = [min(r["p50_us"] for r in rs), max(r["p50_us"] for r in rs)]
        res[key]["per_s_range"] = [min(r["per_s"] for r in rs), max(r["per_s"] for r in rs)]
        res[key]["non_2xx"] = sum(r["non_2xx"] for r in rs)
        res[key]["cpu_us_each"] = [round(r["cpu_us"], 1) for r in rs]
    print("bench/hop side by side — %s — %s" % (platform.node(), time.strftime("%Y-%m-%d %H:%M")))
    print("%d interleaved rounds of %ds; medians; load average (1 min) at each round: %s"
          % (a.rounds, a.duration, " ".join("%.2f" % x for x in loads)))
    print("CPU µs/req: the daemon's own (baton, minimal, uvicorn); workers: its children's")
    print("%-42s %8s %8s %10s %14s %9s %9s" % ("", "p50 µs", "p99 µs", "req/s", "req/s range",
                                                "CPU µs/req", "workers"))
    for key, label, *_ in configs:
        r = res[key]
        print("%-42s %8.0f %8.0f %10.0f %6.0f..%-6.0f %9.1f %9.1f%s" % (
            label, r["p50_us"], r["p99_us"], r["per_s"], r["per_s_range"][0],
            r["per_s_range"][1], r["cpu_us"], r["workers_cpu_us"],
            "  (non-2xx: %d)" % r["non_2xx"] if r["non_2xx"] else ""))
    if "min_c1" in res and "baton_c1" in res and "min_c32" in res and "baton_c32" in res:
        print("targets: c1 p50 baton/minimal %.2f (<= 1.3); c32 req/s baton/minimal %.2f "
              "(>= 0.85)" % (res["baton_c1"]["p50_us"] / res["min_c1"]["p50_us"],
                             res["baton_c32"]["per_s"] / res["min_c32"]["per_s"]))
    if "fastapi_c32" in res and "baton2_c32" in res:
        print("         two stages baton/FastAPI %.1fx (>= 5)"
              % (res["baton2_c32"]["per_s"] / res["fastapi_c32"]["per_s"]))
    elif not have_fastapi:
        print("FastAPI not installed (apt-get install python3-fastapi python3-uvicorn): skipped")
    return res


def main():
    global BUILD
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--side-by-side", action="store_true",
                    help="only the comparison of issue 16: baton against bench/hop/minimal.c "
                    "and a FastAPI pipeline, interleaved, with baton's CPU per request")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of --side-by-side")
    ap.add_argument("--only", help="with --side-by-side: a comma-separated subset of "
                    "min_c1,baton_c1,min_c32,baton_c32,baton2_c32,fastapi_c32,old_baton_c1,"
                    "old_baton_c32")
    ap.add_argument("--baseline", help="with --side-by-side: also run the one-stage figures "
                    "with the baton of this build directory (before/after a change)")
    a = ap.parse_args()
    BUILD = os.path.abspath(a.build)
    if not shutil.which("wrk"):
        sys.exit("bench/hop needs wrk (apt-get install wrk)")
    tmp = tempfile.mkdtemp(prefix="baton-hop-")
    if a.side_by_side:
        res = side_by_side(a, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(res, fh, indent=2)
        return
    res = {"machine": "%s, %d cores, %s" % (platform.node(), os.cpu_count(), platform.release()),
           "date": time.strftime("%Y-%m-%d")}

    res["floor"] = floor(BUILD)
    for worker in ("c", "python"):
        # c=1: one replica, one request at a time — pure latency.
        d = Daemon(BUILD, "stages:\n" + stage("echo", worker, 1, 1) +
                   "pipelines:\n  echo: [echo]\n", tmp)
        wrk_once(d.url + "/v1/pipelines/echo", 1, 1, 1)  # warm the connection path
        res["%s_c1" % worker] = wrk(d.url + "/v1/pipelines/echo", 1, 1, a.duration)
        d.stop()
        # c=32: two replicas (one per core), several requests in flight each,
        # so a replica never idles waiting for the next one.
        d = Daemon(BUILD, "stages:\n" + stage("echo", worker, 2, 16) +
                   "pipelines:\n  echo: [echo]\n", tmp)
        res["%s_c32" % worker] = wrk(d.url + "/v1/pipelines/echo", 32, 2, a.duration)
        d.stop()

    d = Daemon(BUILD, "stages:\n" + stage("echo", "c", 8, 1) + "pipelines:\n  echo: [echo]\n", tmp)
    time.sleep(1)
    res["rss_kb_8_idle_replicas"] = d.rss_kb()
    d.stop()

    res["seed000"] = seed000(30, False, tmp)
    res["seed000_numpy"] = seed000(15, True, tmp)
    shutil.rmtree(tmp, ignore_errors=True)

    f = res["floor"]
    print("bench/hop — %s — %s" % (res["machine"], res["date"]))
    print("medians of 3 runs of %ds each; p50 range in brackets" % a.duration)
    print("%-34s %10s %10s %12s %9s" % ("", "p50 µs", "p99 µs", "requests/s", "p50/floor"))
    print("%-34s %10.1f %10.1f %12.0f %9s" % ("floor: socketpair round trip", f["p50_us"],
                                               f["p99_us"], f["per_s"], "1.0"))
    for key, label in (("c_c1", "HTTP, C echo, concurrency 1"),
                       ("python_c1", "HTTP, Python echo, concurrency 1"),
                       ("c_c32", "HTTP, C echo, concurrency 32"),
                       ("python_c32", "HTTP, Python echo, concurrency 32")):
        r = res[key]
        print("%-34s %10.1f %10.1f %12.0f %9.1f  [%.0f..%.0f]%s" % (
            label, r["p50_us"], r["p99_us"], r["per_s"], r["p50_us"] / f["p50_us"],
            r["p50_range_us"][0], r["p50_range_us"][1],
            "  (non-2xx: %d)" % r["non_2xx"] if r["non_2xx"] else ""))
    for key, label in (("seed000", "seed 000: process per request"),
                       ("seed000_numpy", "seed 000, worker imports numpy")):
        r = res[key]
        print("%-34s %10.0f %10s %12.1f %9.0f" % (label, r["p50_us"], "", r["per_s"],
                                                  r["p50_us"] / f["p50_us"]))
    print("baton RSS with 8 idle replicas: %.1f MB" % (res["rss_kb_8_idle_replicas"] / 1024))
    print("persistent Python vs process per request (concurrency 1): %.0fx throughput" %
          (res["python_c1"]["per_s"] / res["seed000"]["per_s"]))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
