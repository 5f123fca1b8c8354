#!/usr/bin/python3
"""bench/grpc: KServe v2 ModelInfer over gRPC against the same request over
HTTP (Triton's binary tensor extension), through one pipeline with one
Python SDK stage that echoes a 1 KiB FP32 tensor.  One load generator for
both, h2load (nghttp2-client): HTTP/2 for gRPC, HTTP/1.1 (--h1) for HTTP,
each at concurrency 1 and 32 (32 connections, one request in flight on
each; for gRPC also 4 connections of 8 calls and 1 of 32, as gRPC clients
multiplex), interleaved, each figure the median of --runs runs.  Latencies come
from h2load's per-request log; baton's CPU per request from /proc (user +
system time over the run), the figure that a shared machine disturbs least.  Prints figures, never pass/fail.

    /usr/bin/python3 bench/grpc/run.py --build build [--requests 20000] [--runs 3] [--kib 1]
                                       [--json out.json]
    /usr/bin/python3 bench/grpc/run.py --build build --instructions 3000

--instructions N counts instead, with callgrind, the instructions baton
itself runs per request (by object file: baton, libc, jansson, nghttp2, ...)
over N requests at c32 of each protocol: a figure that other load on the
machine barely moves, unlike CPU time.
"""
import argparse
import json
import os
import platform
import resource
import re
import socket
import statistics
import struct
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


def ready(url):
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return False


def bodies(tmp, kib):
    """The same request twice: a gRPC-framed ModelInferRequest, and the HTTP
    binary body with its JSON header length."""
    sys.path.insert(0, tmp)
    subprocess.run([PY, "-m", "grpc_tools.protoc", "-I" + os.path.join(ROOT, "src", "grpc"),
                    "--python_out=" + tmp, os.path.join(ROOT, "src", "grpc", "inference.proto")],
                   check=True)
    import inference_pb2 as pb
    n = 256 * kib
    tensor = struct.pack("<%df" % n, *(float(i % 1000) for i in range(n)))
    q = pb.ModelInferRequest(model_name="echo")
    q.inputs.add(name="x", datatype="FP32", shape=[n])
    q.raw_input_contents.append(tensor)
    msg = q.SerializeToString()
    grpc_body = os.path.join(tmp, "grpc.bin")
    with open(grpc_body, "wb") as f:
        f.write(b"\x00" + struct.pack(">I", len(msg)) + msg)
    hdr = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [n],
                                  "parameters": {"binary_data_size": len(tensor)}}],
                      "parameters": {"binary_data_output": True}},
                     separators=(",", ":")).encode()
    http_body = os.path.join(tmp, "http.bin")
    with open(http_body, "wb") as f:
        f.write(hdr + tensor)
    return grpc_body, http_body, len(hdr)


def cpu_s(pid):
    """baton's CPU seconds so far, all its threads: the scheduler's
    nanoseconds, not utime + stime's 10 ms ticks (half a microsecond per
    request over 20,000 requests)."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return total / 1e9


def child_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def h2load(url, body, headers, conns, n, h1, tmp, pid, streams=1):
    log = os.path.join(tmp, "h2load.log")
    if os.path.exists(log):
        os.unlink(log)
    cmd = ["h2load", "-c", str(conns), "-m", str(streams), "-t", "1", "-d", body] + \
        (["--h1"] if h1 else [])
    for h in headers:
        cmd += ["-H", h]
    # A short warm-up run (connections, allocator, the workers' first requests).
    subprocess.run(cmd + ["-n", str(max(conns, 200)), url], capture_output=True, check=True)
    before, cbefore = cpu_s(pid), child_cpu_s()
    out = subprocess.run(cmd + ["-n", str(n), "--log-file=" + log, url], capture_output=True,
                         text=True, check=True).stdout
    cpu_us = (cpu_s(pid) - before) * 1e6 / n
    client_us = (child_cpu_s() - cbefore) * 1e6 / n
    lat = []
    statuses = {}
    with open(log) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                statuses[parts[1]] = statuses.get(parts[1], 0) + 1
                lat.append(int(parts[2]))
    lat.sort()
    done = len(lat)
    failed = sum(n for s, n in statuses.items() if s != "200")
    per_s = float(re.search(r"finished in [^,]+, ([\d.]+) req/s", out).group(1))
    return {"per_s": per_s, "cpu_us": cpu_us, "client_us": client_us, "p50_us": lat[done // 2] if lat else 0,
            "p99_us": lat[min(done - 1, done * 99 // 100)] if lat else 0, "non_200": failed,
            "h2load": out.strip().splitlines()[-1] if out.strip() else ""}


def median_of(rs):
    out = {k: statistics.median(r[k] for r in rs) for k in ("per_s", "cpu_us", "client_us", "p50_us",
                                                           "p99_us")}
    out["per_s_range"] = [min(r["per_s"] for r in rs), max(r["per_s"] for r in rs)]
    out["non_200"] = sum(r["non_200"] for r in rs)
    return out


def metric(url, name):
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name))


def start(build, tmp, replicas, wrapper=()):
    """baton with the echo pipeline, HTTP and gRPC listening: (process, HTTP
    URL, {protocol: (URL, body file, headers, h1)}) once it is ready."""
    hport, gport = free_port(), free_port()
    cfg = os.path.join(tmp, "baton.yaml")
    with open(cfg, "w") as f:
        f.write("log_level: warn\ngrpc:\n  listen: 127.0.0.1:%d\n" % gport +
                "stages:\n  echo:\n    command: [%s, %s]\n    env: {PYTHONPATH: %s}\n"
                "    replicas: %d\n    max_ongoing: 8\n" % (
                    PY, os.path.join(HERE, "v2_echo.py"), os.path.join(ROOT, "sdk", "python"),
                    replicas) +
                "pipelines:\n  echo: [echo]\n")
    logf = open(os.path.join(tmp, "baton.log"), "ab")
    proc = subprocess.Popen(list(wrapper) + [os.path.join(build, "baton"), "serve", cfg, "--listen",
                                             "127.0.0.1:%d" % hport],
                            stdout=logf, stderr=subprocess.STDOUT)
    hurl = "http://127.0.0.1:%d" % hport
    end = time.monotonic() + (300 if wrapper else 60)
    while not ready(hurl + "/v2/health/ready"):
        if time.monotonic() > end or proc.poll() is not None:
            proc.kill()
            sys.exit("baton did not become ready (log: %s)" % logf.name)
        time.sleep(0.1)
    return proc, hurl, gport


def kinds_of(hurl, gport, grpc_body, http_body, hlen):
    return {
        "grpc": ("http://127.0.0.1:%d/inference.GRPCInferenceService/ModelInfer" % gport,
                 grpc_body, ["content-type: application/grpc", "te: trailers"], False),
        "http": (hurl + "/v2/models/echo/infer", http_body,
                 ["Inference-Header-Content-Length: %d" % hlen,
                  "Content-Type: application/octet-stream"], True),
    }


def self_cost_by_object(path):
    """Instructions (Ir) each object file spent in its own code, read from
    a callgrind dump: cost lines count for the current ob=, except the one
    after a calls= line (a call's inclusive cost)."""
    names, costs, ob, after_call = {}, {}, None, False
    with open(path) as f:
        for line in f:
            if line.startswith(("ob=", "cob=")):
                m = re.match(r"c?ob=(?:\((\d+)\))?\s*(.*)", line.strip())
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                if line.startswith("ob="):
                    ob = os.path.basename(names.get(m.group(1), m.group(2)))
            elif line.startswith("calls="):
                after_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False
                    continue
                parts = line.split()
                if len(parts) > 1:
                    costs[ob] = costs.get(ob, 0) + int(parts[1])
    return costs


def instructions(args, build, tmp, grpc_body, http_body, hlen):
    """baton's user-space instructions per request at c32 over 32 connections,
    counted by callgrind: unlike CPU time, nearly the same on a quiet
    machine and a busy one (under valgrind baton serves about one request
    per loop turn, so per-turn costs weigh more than at full speed)."""
    n = args.instructions
    out = {}
    for kind in ("grpc", "http"):
        dump = os.path.join(tmp, "callgrind.%s" % kind)
        proc, hurl, gport = start(build, tmp, args.replicas,
                                  ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + dump])
        try:
            url, body, hdrs, h1 = kinds_of(hurl, gport, grpc_body, http_body, hlen)[kind]
            h2load(url, body, hdrs, 32, 500, h1, tmp, proc.pid)
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True,
                           check=True)
            h2load(url, body, hdrs, 32, n, h1, tmp, proc.pid)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True,
                           check=True)
        finally:
            proc.terminate()
            proc.wait(60)
        # h2load's own warm-up (200) ran after the zeroing too.
        costs = self_cost_by_object(dump + ".1")
        out[kind] = {ob: c / (n + 200) for ob, c in costs.items()}
    print("bench/grpc --instructions: baton's user-space instructions per 1 KiB request, c32 "
          "(32 connections), %d requests under callgrind" % n)
    obs = sorted({ob for k in out.values() for ob in k}, key=lambda o: -out["grpc"].get(o, 0))
    print("  %-28s %10s %10s" % ("object", "gRPC", "HTTP/1.1"))
    for ob in obs:
        if max(out["grpc"].get(ob, 0), out["http"].get(ob, 0)) >= 100:
            print("  %-28s %10.0f %10.0f" % (ob, out["grpc"].get(ob, 0), out["http"].get(ob, 0)))
    print("  %-28s %10.0f %10.0f" % ("total", sum(out["grpc"].values()),
                                     sum(out["http"].values())))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--requests", type=int, default=20000, help="per run at c32 (a tenth at c1)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--kib", type=int, default=1, help="tensor size in KiB")
    ap.add_argument("--instructions", type=int, metavar="N",
                    help="instead: count baton's instructions per request over N requests "
                         "of each protocol with callgrind (valgrind)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    tmp = tempfile.mkdtemp(prefix="bench-grpc-")
    grpc_body, http_body, hlen = bodies(tmp, args.kib)
    if args.instructions:
        out = instructions(args, build, tmp, grpc_body, http_body, hlen)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        return
    proc, hurl, gport = start(build, tmp, args.replicas)
    try:
        kinds = kinds_of(hurl, gport, grpc_body, http_body, hlen)
        # (protocol, label, connections, streams per connection); the multiplexed
        # cases are how gRPC clients work: one channel (grpcio's and Triton's
        # client: one connection) or a few, many calls multiplexed on each.
        cases = [("http", "http_c1", 1, 1), ("grpc", "grpc_c1", 1, 1),
                 ("http", "http_c32", 32, 1), ("grpc", "grpc_c32", 32, 1),
                 ("grpc", "grpc_mux_c32", 4, 8), ("grpc", "grpc_one_c32", 1, 32)]
        runs = {label: [] for _, label, _, _ in cases}
        for _ in range(args.runs):
            for kind, label, conns, streams in cases:  # interleaved
                url, body, hdrs, h1 = kinds[kind]
                n = args.requests if conns * streams > 1 else max(100, args.requests // 10)
                runs[label].append(h2load(url, body, hdrs, conns, n, h1, tmp, proc.pid, streams))
        results = {label: median_of(rs) for label, rs in runs.items()}
        # h2load sees HTTP 200 for every gRPC answer: the status is in the trailers.
        results["grpc_calls_not_ok"] = metric(hurl, "baton_grpc_calls_total") - \
            metric(hurl, 'baton_grpc_calls_total{method="ModelInfer",code="OK"}')
    finally:
        proc.terminate()
        proc.wait(30)
    cpu = ""
    try:
        cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][0]
    except (OSError, IndexError):
        pass
    results["machine"] = "%s, %d cores, %s" % (cpu, os.cpu_count(), platform.platform())
    print("bench/grpc: %d KiB FP32 echo, one Python stage (%d replicas), h2load, median of %d runs"
          % (args.kib, args.replicas, args.runs))
    print("  machine: %s" % results["machine"])
    print("  %-24s %8s %9s %10s %8s %8s %7s" % ("case", "req/s", "baton us", "client us",
                                                "p50 us", "p99 us", "non-200"))
    names = {"http_c1": "HTTP/1.1, c1", "grpc_c1": "gRPC, c1", "http_c32": "HTTP/1.1, c32 (32 conn)",
             "grpc_c32": "gRPC, c32 (32 conn)", "grpc_mux_c32": "gRPC, c32 (4 conn x 8)",
             "grpc_one_c32": "gRPC, c32 (1 conn x 32)"}
    for label, name in names.items():
        r = results[label]
        print("  %-24s %8.0f %9.1f %10.1f %8.0f %8.0f %7d" % (
            name, r["per_s"], r["cpu_us"], r["client_us"], r["p50_us"], r["p99_us"], r["non_200"]))
    print("  gRPC/HTTP throughput at c32: %.2f (32 connections), %.2f (4 x 8 streams), "
          "%.2f (1 x 32 streams); gRPC calls not OK: %d" % (
              results["grpc_c32"]["per_s"] / max(1, results["http_c32"]["per_s"]),
              results["grpc_mux_c32"]["per_s"] / max(1, results["http_c32"]["per_s"]),
              results["grpc_one_c32"]["per_s"] / max(1, results["http_c32"]["per_s"]),
              results["grpc_calls_not_ok"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
