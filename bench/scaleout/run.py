#!/usr/bin/python3
"""bench/scaleout: baton nodes sharing stage queues through Redis Streams
(docs/scaleout.md). Prints figures, never pass/fail.

1. Scaling: 1, 2 and 3 nodes, two stages whose workers sleep (a model's
   cost that does not use the CPU, so capacity grows with replicas and not
   with this machine's cores); requests spread over every node's port at
   concurrency 32: throughput, p50, p99.
2. Overhead: one node, one and two stages of an echo worker, concurrency 1,
   queue `local` against `redis`: p50 and p99, and the redis backend's extra
   p50 per request per stage.
3. kill -9: three nodes under load, one killed while it holds entries: how
   long until every request the survivors had accepted is answered, and
   whether Redis is left with anything pending.

    /usr/bin/python3 bench/scaleout/run.py --build build [--requests 5000] [--json out.json]
"""
import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PY = "/usr/bin/python3"
WORKER = os.path.join(ROOT, "tests", "e2e", "cluster_worker.py")
SDK = os.path.join(ROOT, "sdk", "python")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("timed out waiting for " + what)


class Redis:
    def __init__(self, work):
        self.port = free_port()
        self.dir = os.path.join(work, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "no"],
            stdout=open(os.path.join(self.dir, "log"), "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.cli("PING") == "PONG", 10, "redis")

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), "--raw"] + list(args),
                              capture_output=True, timeout=10).stdout.decode().strip()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


class Node:
    def __init__(self, build, work, name, config):
        self.name = name
        self.port = free_port()
        self.path = os.path.join(work, name + ".yaml")
        with open(self.path, "w") as f:
            f.write(config)
        self.log = open(os.path.join(work, name + ".log"), "wb")
        self.proc = subprocess.Popen([os.path.join(build, "baton"), "serve", self.path,
                                      "--listen", "127.0.0.1:%d" % self.port],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def status(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", "/v1/status")
        return json.loads(c.getresponse().read())

    def ready(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        c.request("GET", "/v2/health/ready")
        r = c.getresponse()
        r.read()
        return r.status == 200

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self.log.close()


def config(redis, name, backend, stages, delay_ms, replicas, claim_after_ms=2000):
    env = {"PYTHONPATH": SDK, "NODE": name, "CLUSTER_DELAY_MS": str(delay_ms)}
    text = ""
    if backend == "redis":
        text += ("queue: {backend: redis, url: \"redis://127.0.0.1:%d/0\", namespace: bench, "
                 "node: %s, claim_after_ms: %d}\n" % (redis.port, name, claim_after_ms))
    text += "stages:\n"
    for i, st in enumerate(stages):
        text += ("  %s:\n    command: [%s, %s]\n    env: %s\n    replicas: {initial: %d}\n"
                 "    queue_max: 100000\n" % (st, PY, WORKER, json.dumps(env), replicas[i]))
    text += "pipelines:\n  p: [%s]\n" % ", ".join(stages)
    return text


def start(build, work, redis, names, backend, stages, delay_ms, replicas, **kw):
    nodes = [Node(build, work, n, config(redis, n, backend, stages, delay_ms, replicas, **kw))
             for n in names]
    for n in nodes:
        wait_for(n.ready, 120, "node %s ready" % n.name)
    return nodes


def drive(ports, n, concurrency, payload=b"x"):
    """n requests over ports, concurrency threads with keep-alive: latencies (s) and wall time."""
    lat, errors, lock, nxt = [], [], threading.Lock(), [0]

    def run(k):
        conns = {}
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= n:
                return
            port = ports[(i + k) % len(ports)]
            t0 = time.monotonic()
            try:
                c = conns.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                conns[port] = c
                c.request("POST", "/v1/pipelines/p", body=payload)
                r = c.getresponse()
                body = r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException) as e:
                conns.pop(port, None)
                ok, body = False, repr(e).encode()
            dt = time.monotonic() - t0
            with lock:
                (lat if ok else errors).append(dt if ok else body[:200])

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors, time.monotonic() - t0


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100 * len(v)))] if v else float("nan")


def scaling(build, work, redis, total, delay_ms):
    rows = []
    for k in (1, 2, 3):
        names = ["s%d-%d" % (k, i + 1) for i in range(k)]
        nodes = start(build, work, redis, names, "redis", ["a", "b"], delay_ms, [4, 4])
        try:
            n = total * k // 3
            drive([x.port for x in nodes], 64, 32)  # warm-up
            lat, errors, wall = drive([x.port for x in nodes], n, 32)
        finally:
            for x in nodes:
                x.stop()
        rows.append({"nodes": k, "requests": n, "errors": len(errors), "rps": len(lat) / wall,
                     "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000})
        print("  %d node%s: %6d requests  %7.1f req/s  p50 %6.1f ms  p99 %6.1f ms  errors %d"
              % (k, "s" if k > 1 else " ", n, rows[-1]["rps"], rows[-1]["p50_ms"],
                 rows[-1]["p99_ms"], len(errors)), flush=True)
    for r in rows:
        r["speedup"] = r["rps"] / rows[0]["rps"]
    print("  speedup with 2 nodes %.2fx, with 3 nodes %.2fx"
          % (rows[1]["speedup"], rows[2]["speedup"]))
    return rows


def overhead(build, work, redis, n):
    out = {}
    for stages in (["a"], ["a", "b"]):
        for backend in ("local", "redis"):
            nodes = start(build, work, redis, ["o%s%d" % (backend, len(stages))], backend, stages,
                          0, [1] * len(stages))
            try:
                drive([nodes[0].port], 200, 1)
                lat, errors, _ = drive([nodes[0].port], n, 1)
            finally:
                nodes[0].stop()
            key = "%s_%d" % (backend, len(stages))
            out[key] = {"p50_us": pct(lat, 50) * 1e6, "p99_us": pct(lat, 99) * 1e6,
                        "errors": len(errors)}
            print("  %-5s %d stage%s: p50 %7.0f us  p99 %7.0f us" % (
                backend, len(stages), "s" if len(stages) > 1 else " ", out[key]["p50_us"],
                out[key]["p99_us"]), flush=True)
        k = len(stages)
        per = (out["redis_%d" % k]["p50_us"] - out["local_%d" % k]["p50_us"]) / k
        out["extra_p50_us_per_stage_%d" % k] = per
        print("  redis backend: +%.0f us p50 per request per stage (%d-stage pipeline)" % (per, k))
    return out


def kill_recovery(build, work, redis, delay_ms, claim_after_ms):
    names = ["k1", "k2", "k3"]
    nodes = start(build, work, redis, names, "redis", ["a", "b"], delay_ms, [2, 2],
                  claim_after_ms=claim_after_ms)
    victim = nodes[2]
    survivors = [x.port for x in nodes[:2]]
    done_at, lock = {}, threading.Lock()
    sent_at = {}
    stop = threading.Event()

    def client(k):
        i = k
        while not stop.is_set():
            port = survivors[i % 2]
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            t0 = time.monotonic()
            with lock:
                sent_at[(k, i)] = t0
            try:
                c.request("POST", "/v1/pipelines/p", body=b"k")
                r = c.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
            with lock:
                done_at[(k, i)] = (time.monotonic(), ok)
            i += 1000

    # The victim gets work from the shared queue even though no client talks to it.
    threads = [threading.Thread(target=client, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    seen = [0]

    def holding():
        seen[0] = sum(q["held"] for q in victim.status()["cluster"]["queues"].values())
        return seen[0] >= 2
    wait_for(holding, 60, "the victim to hold entries")
    held = seen[0]
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    killed = time.monotonic()
    with lock:
        open_at_kill = [k for k in sent_at if k not in done_at]
    wait_for(lambda: all(k in done_at for k in open_at_kill), 120, "requests open at the kill")
    stop.set()
    for t in threads:
        t.join()
    recovery = max(done_at[k][0] for k in open_at_kill) - killed
    failed = sum(1 for k in open_at_kill if not done_at[k][1])
    consumer = victim_id(nodes[0], "k3")
    pend = sum(int((redis.cli("XPENDING", "bench:q:" + s, "baton").splitlines() or ["0"])[0])
               for s in ("a", "b"))
    for x in nodes:
        x.stop() if x is not victim else x.log.close()
    print("  killed a node holding %d entries: the %d requests open on the survivors were all "
          "answered %.2f s after the kill (claim_after_ms %d, work %d ms per stage); %d failed; "
          "XPENDING afterwards: %d (victim %s)" % (held, len(open_at_kill), recovery,
                                                   claim_after_ms, delay_ms, failed, pend,
                                                   consumer))
    return {"held_at_kill": held, "open_at_kill": len(open_at_kill), "recovery_s": recovery,
            "claim_after_ms": claim_after_ms, "failed": failed, "pending_after": pend}


def victim_id(node, name):
    for n in node.status()["cluster"]["nodes"]:
        if n["name"] == name:
            return n["id"]
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--requests", type=int, default=5000, help="for 3 nodes (fewer for 1 and 2)")
    ap.add_argument("--delay-ms", type=int, default=40, help="the workers' sleep per request")
    ap.add_argument("--overhead-requests", type=int, default=2000)
    ap.add_argument("--only", choices=["scaling", "overhead", "kill"])
    ap.add_argument("--json")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="baton-bench-scaleout-")
    redis = Redis(work)
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    print("bench/scaleout on %s, %d cores (%s), redis %s" % (
        platform.node(), os.cpu_count(), cpu, redis.cli("INFO", "server").split("redis_version:")[1].split()[0]))
    try:
        res = {}
        if a.only in (None, "scaling"):
            print("1. scaling: 2 stages x 4 replicas per node, workers sleep %d ms, concurrency 32"
                  % a.delay_ms)
            res["scaling"] = scaling(a.build, work, redis, a.requests, a.delay_ms)
        if a.only in (None, "overhead"):
            print("2. overhead: one node, echo worker, concurrency 1, %d requests"
                  % a.overhead_requests)
            res["overhead"] = overhead(a.build, work, redis, a.overhead_requests)
        if a.only in (None, "kill"):
            print("3. kill -9 of one of 3 nodes under load")
            res["kill"] = kill_recovery(a.build, work, redis, 100, 2000)
    finally:
        redis.stop()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
