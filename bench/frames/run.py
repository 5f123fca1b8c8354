#!/usr/bin/python3
"""bench/frames: large payloads (camera frames) through baton.

6 MB bodies over HTTP at concurrency 2 through Python echo stages, one and
three stages, in three ways: as bytes (memfd_min_bytes: 0, how every hop
worked before memfds), as memfds with handlers that take bytes (the SDK's
default), and as memfds with handlers that take views (views=True: no copy
anywhere); and over KServe v2 with Triton's system shared memory, with a
client's input and output regions in one object (baton copies the input
in and the output out) or each region an object of its own (baton copies
neither: workers get the objects). Then baton's own CPU per request
(the scheduler's nanoseconds from /proc; its idle rate shown apart and taken out) at
1 KiB and at 6 MB through three stages. Prints figures, never pass/fail.

    /usr/bin/python3 bench/frames/run.py --build build [--duration 8]
"""
import argparse
import http.client
import json
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
            f.write("log_level: warn\nmax_request_bytes: 67108864\n")
            if not memfd:
                f.write("memfd_min_bytes: 0\n")
            f.write("stages:\n")
            for s in ("s1", "s2", "s3"):
                f.write("  %s:\n%s" % (s, stage))
            v2 = ("    command: [%s, %s]\n    env: {FRAMES_V2_LAST: \"%%d\"}\n"
                  % (PY, os.path.join(HERE, "v2echo.py")))
            f.write("  v1:\n" + v2 % 0 + "  v2:\n" + v2 % 0 + "  v3:\n" + v2 % 1)
            f.write("pipelines:\n  one: [s1]\n  three: [s1, s2, s3]\n")
            f.write("  m:\n    stages: [v1, v2, v3]\n")
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
        """baton's CPU time so far, all its threads: the scheduler's
        nanoseconds (/proc/PID/task/*/schedstat), not utime + stime's 10 ms
        ticks, which a few hundred requests would round to a tick."""
        total = 0
        for tid in os.listdir("/proc/%d/task" % self.proc.pid):
            try:
                with open("/proc/%d/task/%s/schedstat" % (self.proc.pid, tid)) as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:  # a thread that ended meanwhile
                pass
        return total / 1e9

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
                errors.append((r.status, out[:200]))
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


def load_shm(port, body, concurrency, duration, whole=False, rate=None):
    """Closed loop over KServe v2 with Triton's system shared memory: each
    client writes its frame into its input region (as a camera client
    would, every time), posts a small JSON request naming the regions, and
    reads the answer from its output region. whole: each region is an
    object of its own, as Triton's clients make them (baton then hands the
    input's object to the workers instead of copying it); else one object
    holds a client's input and output regions (the input is copied).
    rate: requests per second over all clients, paced (else as fast as the
    answers come)."""
    lat, errors = [], []
    lock = threading.Lock()
    regions = []
    n = len(body)

    def request(method, path, doc=None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request(method, path, body=json.dumps(doc).encode() if doc is not None else None)
        r = conn.getresponse()
        out = r.read()
        conn.close()
        if r.status != 200:
            raise SystemExit("%s %s: %d %s" % (method, path, r.status, out[:200]))
        return out

    def make(key, size):
        fd = os.open("/dev/shm" + key, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
        os.ftruncate(fd, size)
        regions.append((key, fd))
        return fd

    fds = []
    for i in range(concurrency):
        key = "/bench-frames-%d-%d" % (os.getpid(), i)
        fd = make(key, n if whole else 2 * n)
        okey, ofd, ooff = (key + "-out", make(key + "-out", n), 0) if whole else (key, fd, n)
        fds.append((fd, ofd, ooff))
        request("POST", "/v2/systemsharedmemory/region/in%d/register" % i,
                {"key": key, "offset": 0, "byte_size": n})
        request("POST", "/v2/systemsharedmemory/region/out%d/register" % i,
                {"key": okey, "offset": ooff, "byte_size": n})
    stop_at = time.monotonic() + duration

    def client(i):
        fd, ofd, ooff = fds[i]
        doc = json.dumps({
            "inputs": [{"name": "x", "datatype": "UINT8", "shape": [n], "parameters": {
                "shared_memory_region": "in%d" % i, "shared_memory_byte_size": n}}],
            "outputs": [{"name": "out_x", "parameters": {
                "shared_memory_region": "out%d" % i, "shared_memory_byte_size": n}}]}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        due = time.monotonic() + (i / rate if rate else 0)
        while time.monotonic() < stop_at:
            if rate:
                time.sleep(max(0.0, due - time.monotonic()))
                due += concurrency / rate
            t0 = time.monotonic()
            os.pwrite(fd, body, 0)
            conn.request("POST", "/v2/models/m/infer", body=doc,
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            out = r.read()
            got = os.pread(ofd, 16, ooff)
            dt = time.monotonic() - t0
            if r.status != 200 or got != body[:16]:
                errors.append((r.status, out[:200]))
                return
            with lock:
                lat.append(dt)
        conn.close()

    try:
        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        secs = time.monotonic() - t0
    finally:
        request("POST", "/v2/systemsharedmemory/unregister")
        for key, fd in regions:
            os.close(fd)
            os.unlink("/dev/shm" + key)
    if errors:
        raise SystemExit("requests failed: %r" % errors[:3])
    return len(lat), secs, lat


def sizes(build, duration, rate):
    """baton's CPU and bytes read and written per request against the
    frame's size, client shm with an object per region (above
    memfd_min_bytes nothing is copied through baton): as fast as the
    answers come (larger frames: fewer requests per loop wake-up), and
    paced at the same rate for every size, which isolates the size."""
    tmp = tempfile.mkdtemp(prefix="bench-frames-")
    d = Daemon(build, tmp, True, 1)

    def io():
        with open("/proc/%d/io" % d.proc.pid) as f:
            v = dict(line.split(": ") for line in f.read().splitlines())
        return int(v["rchar"]) + int(v["wchar"])

    def measure(body, pace):
        c0, b0 = d.cpu_s(), io()
        reqs, secs, _ = load_shm(d.port, body, 2, duration, True, pace)
        return reqs / secs, (d.cpu_s() - c0) / reqs * 1e6, (io() - b0) / reqs

    print("client shm, an object per region, three stages, concurrency 2, %.0f s each"
          % duration)
    print("%10s %8s %11s %16s   %s" % ("frame", "req/s", "CPU us/req", "read+written/req",
                                        "paced at %g req/s: CPU us/req" % rate))
    try:
        for size in (1024, 512 * 1024, 6 * 1024 * 1024, 24 * 1024 * 1024):
            body = os.urandom(size)
            load_shm(d.port, body, 2, 1, True)
            got, cpu, moved = measure(body, None)
            pgot, pcpu, _ = measure(body, rate)
            print("%9.0fK %8.1f %11.0f %16.0f   %8.0f%s" % (
                size / 1024, got, cpu, moved, pcpu,
                "" if pgot > 0.9 * rate else "  (reached %.1f req/s only)" % pgot), flush=True)
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--duration", type=float, default=8,
                    help="seconds of load per figure, over all rounds")
    ap.add_argument("--rounds", type=int, default=4,
                    help="slices each figure's load is cut into, interleaved")
    ap.add_argument("--sizes", action="store_true",
                    help="only baton's CPU per request of client shm with an object per "
                         "region, from 1 KiB to 24 MB")
    ap.add_argument("--rate", type=float, default=20,
                    help="with --sizes: the paced rate, the same for every size")
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    if args.sizes:
        return sizes(build, args.duration, args.rate)
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
    shm_name = "client shm, one object for in+out"
    whole_name = "client shm, an object per region"
    daemons = []
    try:
        for name, memfd, views in ways:
            daemons.append(Daemon(build, tmp, memfd, views))
        # Interleaved: every figure gets slices spread over the whole run, so
        # that the load of a shared machine drifting does not favour one.
        runs = [(i, pl) for i in range(len(ways)) for pl in ("one", "three")] + [
            (2, "shm"), (2, "whole")]
        acc = {r: [0, 0.0, []] for r in runs}
        for d in daemons:
            load(d.port, "one", body, 2, 1)  # warm up
        load_shm(daemons[2].port, body, 2, 1)
        for _ in range(args.rounds):
            for r in runs:
                d = daemons[r[0]]
                if r[1] in ("shm", "whole"):
                    reqs, secs, lat = load_shm(d.port, body, 2, args.duration / args.rounds,
                                               r[1] == "whole")
                else:
                    reqs, secs, lat = load(d.port, r[1], body, 2, args.duration / args.rounds)
                acc[r][0] += reqs
                acc[r][1] += secs
                acc[r][2] += lat
        rate = {r: a[0] / a[1] for r, a in acc.items()}
        for i, (name, _, _) in enumerate(ways):
            for pl, n in (("one", 1), ("three", 3)):
                print("%-34s %8d %8.1f %9.1f %9s" % (
                    name, n, rate[(i, pl)], statistics.median(acc[(i, pl)][2]) * 1000,
                    "%.2f" % (rate[(i, "three")] / rate[(i, "one")]) if n == 3 else ""))
        for name, key in ((shm_name, "shm"), (whole_name, "whole")):
            print("%-34s %8d %8.1f %9.1f" % (name, 3, rate[(2, key)],
                                              statistics.median(acc[(2, key)][2]) * 1000))
        print("\nclient shm against bytes through three stages: %.1fx (one object), "
              "%.1fx (an object per region)" % (rate[(2, "shm")] / rate[(0, "three")],
                                                rate[(2, "whole")] / rate[(0, "three")]))
        # What baton spends with no request at all (ticks, pings, /proc scans):
        # it is spread over fewer requests when they are large, so it is shown
        # apart and taken out of the last column.
        idle = {}
        for i in (0, 2):
            c0, t0 = daemons[i].cpu_s(), time.monotonic()
            time.sleep(6)
            idle[i] = (daemons[i].cpu_s() - c0) / (time.monotonic() - t0)
        print("\nbaton's CPU per request, three stages, concurrency 2 (idle: %.1f and %.1f ms/s)"
              % (idle[0] * 1000, idle[2] * 1000))
        print("%-34s %10s %14s %14s" % ("how", "payload", "CPU us/req", "less idle"))
        cpu_runs = [(0, None, "1 KiB", small), (0, None, "6 MB", body),
                    (2, None, "1 KiB", small), (2, None, "6 MB", body),
                    (2, "shm", "1 KiB", small), (2, "shm", "6 MB", body),
                    (2, "whole", "1 KiB", small), (2, "whole", "6 MB", body)]
        for i, how, label, b in cpu_runs:
            d = daemons[i]
            c0, t0 = d.cpu_s(), time.monotonic()
            if how:
                reqs, _, _ = load_shm(d.port, b, 2, args.duration / 2, how == "whole")
            else:
                reqs, _, _ = load(d.port, "three", b, 2, args.duration / 2)
            cpu, secs = d.cpu_s() - c0, time.monotonic() - t0
            name = {None: ways[i][0], "shm": shm_name, "whole": whole_name}[how]
            print("%-34s %10s %14.0f %14.0f" % (name, label, cpu / reqs * 1e6,
                                                (cpu - idle[i] * secs) / reqs * 1e6), flush=True)
    finally:
        for d in daemons:
            d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
