#!/usr/bin/python3
"""bench/dashboard: what open dashboards cost request serving, and whether
`baton bench --scenarios` agrees with an independent load generator.

1. 50 open dashboards: each one fetches the page (GET /) once and then
   /v1/status every second, exactly as the page's script does.  Request
   serving is measured with `baton bench --url` (closed loop, 16 in flight,
   1 KiB bodies, C echo worker) with no dashboard and with 50, interleaved
   A B A B ... so that drift of a shared machine hits both alike.
2. wrk against baton bench: the same daemon, the same concurrency and
   body, interleaved; throughputs should be within 10 %.

Prints figures, never pass/fail.

    /usr/bin/python3 bench/dashboard/run.py --build build [--duration 10] [--rounds 3]
"""
import argparse
import csv
import http.client
import os
import platform
import re
import resource
import signal
import socket
import statistics
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


class Daemon:
    def __init__(self, build, tmp, replicas):
        self.port = free_port()
        self.cfg = os.path.join(tmp, "dash.yaml")
        with open(self.cfg, "w") as f:
            f.write("log_level: warn\nstages:\n  echo:\n    command: [%s]\n"
                    "    replicas: {initial: %d}\npipelines:\n  p: [echo]\n"
                    % (os.path.join(build, "bench", "echo-c"), replicas))
        self.log = open(os.path.join(tmp, "dash.log"), "wb")
        self.proc = subprocess.Popen(
            [os.path.join(build, "baton"), "serve", self.cfg, "--listen",
             "127.0.0.1:%d" % self.port], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = "http://127.0.0.1:%d" % self.port
        end = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(self.url + "/v2/health/ready", timeout=2).status == 200:
                    break
            except Exception:  # noqa: BLE001 - not yet
                pass
            if time.monotonic() > end or self.proc.poll() is not None:
                sys.exit("baton did not become ready; see " + self.log.name)
            time.sleep(0.05)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


class Dashboards:
    """n simulated open pages: GET / once, then GET /v1/status every second."""

    def __init__(self, port, n):
        self.port, self.stop_flag, self.polls = port, threading.Event(), 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.page, args=(i,), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def page(self, i):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/")
        conn.getresponse().read()
        conn.close()  # the page comes with Connection: close; the polls keep one open
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        # Spread the pages over the second, as real ones opened at different times are.
        self.stop_flag.wait(i / 50.0)
        while not self.stop_flag.is_set():
            t = time.monotonic()
            conn.request("GET", "/v1/status")
            conn.getresponse().read()
            with self.lock:
                self.polls += 1
            self.stop_flag.wait(max(0.0, 1.0 - (time.monotonic() - t)))
        conn.close()

    def close(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join()


def baton_bench(build, url, tmp, conc, duration, tag):
    sc = os.path.join(tmp, "sc-%s.yaml" % tag)
    with open(sc, "w") as f:
        # No warm-up, as wrk has none: the daemon is warm already.
        f.write("pipeline: p\npayload: %s\nwarmup_s: 0\nduration_s: %d\nscenarios:\n"
                "  - {name: %s, concurrency: %d}\n" % ("x" * 1024, duration, tag, conc))
    out = os.path.join(tmp, "res-" + tag)
    subprocess.run([os.path.join(build, "baton"), "bench", "--scenarios", sc, "--url", url,
                    "--out", out], check=True, capture_output=True)
    with open(out + ".csv") as f:
        row = next(csv.DictReader(f))
    return float(row["throughput_rps"]), float(row["latency_p95_ms"])


def wrk_start(url, conc, duration):
    return subprocess.Popen(["wrk", "-t1", "-c%d" % conc, "-d%ds" % duration, "--latency", "-s",
                             os.path.join(ROOT, "bench", "hop", "post1k.lua"),
                             url + "/v1/pipelines/p"], stdout=subprocess.PIPE, text=True)


def wrk_result(proc):
    out = proc.communicate()[0]
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def wrk(url, conc, duration):
    return wrk_result(wrk_start(url, conc, duration))


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_cost(d, n=3000):
    """The daemon's own CPU time per GET /v1/status: a figure the machine's
    load does not blur the way throughput differences are blurred."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    before = cpu_seconds(d.proc.pid)
    size = 0
    for _ in range(n):
        conn.request("GET", "/v1/status")
        size = len(conn.getresponse().read())
    spent = cpu_seconds(d.proc.pid) - before
    conn.close()
    return spent / n, size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--dashboards", type=int, default=50)
    ap.add_argument("--compare-rounds", type=int, default=8)
    ap.add_argument("--compare-duration", type=int, default=4)
    a = ap.parse_args()
    print("machine: %s, %d cores, %s" % (platform.node(), os.cpu_count(), platform.platform()))
    with tempfile.TemporaryDirectory() as tmp:
        d = Daemon(a.build, tmp, 2)
        try:
            base, loaded, polls = [], [], []
            for r in range(a.rounds):
                base.append(baton_bench(a.build, d.url, tmp, a.concurrency, a.duration, "none"))
                dash = Dashboards(d.port, a.dashboards)
                try:
                    loaded.append(baton_bench(a.build, d.url, tmp, a.concurrency, a.duration,
                                              "dash"))
                finally:
                    dash.close()
                polls.append(dash.polls)
                print("round %d: no dashboard %.0f req/s p95 %.2f ms; %d dashboards %.0f req/s "
                      "p95 %.2f ms (%d status polls)" % (r + 1, base[-1][0], base[-1][1],
                                                         a.dashboards, loaded[-1][0],
                                                         loaded[-1][1], dash.polls))
            b = statistics.median(x[0] for x in base)
            l = statistics.median(x[0] for x in loaded)
            print("dashboards: median %.0f req/s without, %.0f req/s with %d open pages: %+.1f %%"
                  % (b, l, a.dashboards, 100 * (l - b) / b))
            print("            median p95 %.2f ms without, %.2f ms with"
                  % (statistics.median(x[1] for x in base), statistics.median(x[1] for x in loaded)))
            per, size = status_cost(d)
            print("daemon CPU per GET /v1/status (%d bytes): %.0f us; %d pages polling once a "
                  "second: %.2f %% of one core" % (size, per * 1e6, a.dashboards,
                                                  100 * per * a.dashboards))
            # Short runs, alternating which goes first: on a shared machine the
            # spread between runs is larger than any difference between the two.
            ours, theirs, cpu_ours, cpu_theirs = [], [], [], []
            for r in range(a.compare_rounds):
                for who in (("ours", "wrk") if r % 2 == 0 else ("wrk", "ours")):
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    if who == "ours":
                        rps, _ = baton_bench(a.build, d.url, tmp, a.concurrency,
                                             a.compare_duration, "ours")
                        ours.append(rps)
                    else:
                        rps = wrk(d.url, a.concurrency, a.compare_duration)
                        theirs.append(rps)
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                    (cpu_ours if who == "ours" else cpu_theirs).append(
                        cpu / max(1.0, rps * a.compare_duration))
                print("round %d: baton bench %.0f req/s, wrk %.0f req/s" % (r + 1, ours[-1], theirs[-1]))
            o, t = statistics.median(ours), statistics.median(theirs)
            print("load generators at concurrency %d, median of %d runs of %d s each: baton bench "
                  "%.0f req/s, wrk %.0f req/s: %+.1f %%" % (a.concurrency, a.compare_rounds,
                                                        a.compare_duration, o, t, 100 * (o - t) / t))
            print("their own CPU per request: baton bench %.1f us, wrk %.1f us" % (
                1e6 * statistics.median(cpu_ours), 1e6 * statistics.median(cpu_theirs)))
            # Both at once, each with the same number of connections: the daemon
            # serves its connections in turn, so each generator should see half
            # the throughput, whatever else the machine does in that window.
            ratios = []
            for r in range(3):
                w = wrk_start(d.url, a.concurrency, 10)
                rps, _ = baton_bench(a.build, d.url, tmp, a.concurrency, 10, "both")
                t = wrk_result(w)
                ratios.append(rps / t)
                print("together %d: baton bench %.0f req/s, wrk %.0f req/s" % (r + 1, rps, t))
            print("together, median ratio baton bench / wrk: %.3f" % statistics.median(ratios))
        finally:
            d.stop()


if __name__ == "__main__":
    main()
