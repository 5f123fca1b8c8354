#!/usr/bin/python3
"""bench/frames: large payloads (camera frames) through baton.

6 MB bodies over HTTP at concurrency 2 through Python echo stages, one and
three stages, in three ways: as bytes (memfd_min_bytes: 0, how every hop
worked before memfds), as memfds with handlers that take bytes (the SDK's
default), and as memfds with handlers that take views (views=True: no copy
anywhere). Then baton's own CPU per request (utime + stime from /proc) at
1 KiB and at 6 MB through three stages. Prints figures, never pass/fail.

    /usr/bin/python3 bench/frames/run.py --build build [--duration 8]
"""
import argparse
import http.client
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"
MB6 = 6 * 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def ready(url):
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return False


class Daemon:
    def __init__(self, build, tmp, memfd, views):
        self.port = free_port()
        cfg = os.path.join(tmp, "frames-%d.yaml" % self.port)
        stage = ("    command: [%s, %s]\n    env: {FRAMES_VIEWS: \"%d\"}\n"
                 % (PY, os.path.join(HERE, "echo.py"), views))
        with open(cfg, "w") as f:
            f.write("log_level: warn\nmax_request_bytes: 16777216\n")
            if not memfd:
                f.write("memfd_min_bytes: 0\n")
            f.write("stages:\n")
            for s in ("s1", "s2", "s3"):
                f.write("  %s:\n%s" % (s, stage))
            f.write("pipelines:\n  one: [s1]\n  three: [s1, s2, s3]\n")
        self.log = open(cfg + ".log", "wb")
        self.proc = subprocess.Popen([os.path.join(build, "baton"), "serve", cfg, "--listen",
                                      "127.0.0.1:%d" % self.port],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 60
        while not ready("http://127.0.0.1:%d/v2/health/ready" % self.port):
            if time.monotonic() > end or self.proc.poll() is not None:
                raise SystemExit("baton did not become ready (%s)" % cfg)
            time.sleep(0.1)

    def cpu_s(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def load(port, pipeline, body, concurrency, duration):
    """Closed loop: each client posts body, reads the answer, again. Returns
    (requests, seconds, latencies)."""
    lat, errors = [], []
    stop_at = time.monotonic() + duration
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            conn.request("POST", "/v1/pipelines/" + pipeline, body=body)
            r = conn.getresponse()
            out = r.read()
            dt = time.monotonic() - t0
            if r.status != 200 or len(out) != len(body):
                errors.append(r.status)
                return
            with lock:
                lat.append(dt)
        conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("requests failed: %r" % errors[:5])
    return len(lat), time.monotonic() - t0, lat


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--duration", type=float, default=8)
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    body = os.urandom(MB6)
    small = os.urandom(1024)
    tmp = tempfile.mkdtemp(prefix="bench-frames-")
    print("bench/frames on %s, %d cores, %s, %.0f s per figure" % (
        platform.node(), os.cpu_count(), platform.platform(), args.duration))
    print("6 MB bodies, concurrency 2, Python echo stages\n")
    print("%-34s %8s %8s %9s %9s" % ("how", "stages", "req/s", "p50 ms", "3/1"))
    ways = [("bytes (memfd_min_bytes: 0)", False, 0),
            ("memfd, handler takes bytes", True, 0),
            ("memfd, handler takes views", True, 1)]
    try:
        for name, memfd, views in ways:
            d = Daemon(build, tmp, memfd, views)
            try:
                load(d.port, "one", body, 2, 1)  # warm up
                rates = {}
                for pl, n in (("one", 1), ("three", 3)):
                    reqs, secs, lat = load(d.port, pl, body, 2, args.duration)
                    rates[n] = reqs / secs
                    print("%-34s %8d %8.1f %9.1f %9s" % (
                        name, n, rates[n], statistics.median(lat) * 1000,
                        "%.2f" % (rates[3] / rates[1]) if n == 3 else ""), flush=True)
            finally:
                d.stop()
        print("\nbaton's CPU per request, three stages, concurrency 2")
        print("%-34s %10s %14s" % ("how", "payload", "CPU us/req"))
        for name, memfd, views in (ways[0], ways[2]):
            d = Daemon(build, tmp, memfd, views)
            try:
                for label, b in (("1 KiB", small), ("6 MB", body)):
                    load(d.port, "three", b, 2, 1)
                    c0 = d.cpu_s()
                    reqs, secs, _ = load(d.port, "three", b, 2, args.duration)
                    cpu = d.cpu_s() - c0
                    print("%-34s %10s %14.0f" % (name, label, cpu / reqs * 1e6), flush=True)
            finally:
                d.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
