#!/usr/bin/python3
"""bench/hop/instructions.py: baton's own user-space instructions per
request, counted by callgrind, which neither the machine's load nor its
other tenants change (bench/hop/run.py's CPU times move with both).

One Python echo stage; N sequential 1 KiB requests over one keep-alive
connection; baton runs under valgrind --tool=callgrind twice (SMALL and
LARGE requests) and the difference, divided by LARGE - SMALL, is the cost of
one request without start-up and shutdown. libc's memset is shown apart:
libmicrohttpd (baton's HTTP server before its own, and still in older
--baseline builds) cleared its 64 KiB connection pool per request with
`rep stosb`, which valgrind counts per byte, not per instruction.

    /usr/bin/python3 bench/hop/instructions.py --build build [--baseline OTHER_BUILD]
"""
import argparse
import http.client
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PY = "/usr/bin/python3"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def drive(port, n):
    body = b"x" * 1024
    end = time.monotonic() + 120
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("POST", "/v1/pipelines/p", body)
            r = c.getresponse()
            if r.status == 200 and r.read() == body:
                break
        except OSError:
            pass
        if time.monotonic() > end:
            sys.exit("baton under callgrind did not answer")
        time.sleep(0.3)
    for _ in range(n - 1):
        c.request("POST", "/v1/pipelines/p", body)
        r = c.getresponse()
        assert r.status == 200 and r.read() == body


def counts(baton, n, tmp):
    cfg = os.path.join(tmp, "cg.yaml")
    with open(cfg, "w") as f:
        f.write("log_level: warn\nstages:\n  echo:\n    command: [%s, %s]\n"
                "    env: {PYTHONPATH: %s}\n    replicas: 1\n    max_ongoing: 1\n"
                "pipelines:\n  p: [echo]\n" % (PY, os.path.join(HERE, "echo.py"),
                                              os.path.join(ROOT, "sdk", "python")))
    out = os.path.join(tmp, "cg-%d.out" % n)
    port = free_port()
    with open(out + ".log", "w") as log:
        p = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                              baton, "serve", cfg, "--listen", "127.0.0.1:%d" % port],
                             stdout=log, stderr=subprocess.STDOUT)
        try:
            drive(port, n)
        finally:
            p.terminate()
            p.wait(120)
    with open(out) as f:
        total = int(re.search(r"^totals: (\d+)", f.read(), re.M).group(1))
    ann = subprocess.run(["callgrind_annotate", "--threshold=100", out],
                         capture_output=True, text=True).stdout
    memset = sum(int(m.group(1).replace(",", ""))
                 for m in re.finditer(r"^\s*([\d,]+) .*__memset\w*", ann, re.M))
    return total, memset


def per_request(baton, small, large, tmp):
    t1, m1 = counts(baton, small, tmp)
    t2, m2 = counts(baton, large, tmp)
    n = large - small
    return (t2 - m2 - t1 + m1) / n, (m2 - m1) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--baseline", help="another build directory, for before/after")
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--large", type=int, default=1100)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="baton-cg-")
    print("baton's user-space instructions per one-stage request (callgrind, %d - %d requests)"
          % (a.large, a.small))
    print("%-40s %14s %16s" % ("", "instructions", "memset bytes"))
    for label, build in (("this build", a.build), ("baseline", a.baseline)):
        if not build:
            continue
        ins, mem = per_request(os.path.join(os.path.abspath(build), "baton"), a.small,
                               a.large, tmp)
        print("%-40s %14.0f %16.0f" % ("%s (%s)" % (label, build), ins, mem))


if __name__ == "__main__":
    main()
