#!/usr/bin/python3
"""bench/v2json: what a large KServe v2 tensor in JSON form costs baton, in
peak memory (VmHWM, from /proc) and CPU (user + system), one fresh baton per
case so that each peak is its own.  Cases:

  answer  a UINT8 tensor of --mib MiB sent binary, echoed by a Python SDK
          stage and asked back as JSON: baton receives and completes a JSON
          answer of about 2-4 bytes of text per element;
  input   the same number of elements sent as a JSON "data" array (as much
          as fits in max_request_bytes), answered binary: baton checks a
          JSON request of about 2 bytes of text per element.

Prints figures, never pass/fail.

    /usr/bin/python3 bench/v2json/run.py --build build [--mib 16] [--json out.json]
"""
import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PY = "/usr/bin/python3"
WORKER = os.path.join(ROOT, "bench", "grpc", "v2_echo.py")


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


def status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_case(build, tmp, body, headers, limit):
    port = free_port()
    cfg = os.path.join(tmp, "baton.yaml")
    with open(cfg, "w") as f:
        f.write("log_level: warn\nmax_request_bytes: %d\n" % limit +
                "stages:\n  echo:\n    command: [%s, %s]\n    env: {PYTHONPATH: %s}\n"
                "    timeout_ms: 300000\n" % (PY, WORKER, os.path.join(ROOT, "sdk", "python")) +
                "pipelines:\n  echo: [echo]\n")
    logf = open(os.path.join(tmp, "baton.log"), "ab")
    proc = subprocess.Popen([os.path.join(build, "baton"), "serve", cfg, "--listen",
                             "127.0.0.1:%d" % port], stdout=logf, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 60
        while not ready("http://127.0.0.1:%d/v2/health/ready" % port):
            if time.monotonic() > end or proc.poll() is not None:
                sys.exit("baton did not become ready (log: %s)" % logf.name)
            time.sleep(0.1)
        rss0, cpu0 = status_kib(proc.pid, "VmRSS"), cpu_s(proc.pid)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        c.request("POST", "/v2/models/echo/infer", body, headers)
        r = c.getresponse()
        answer = r.read()
        cpu = cpu_s(proc.pid) - cpu0
        hwm = status_kib(proc.pid, "VmHWM")
        c.close()
        if r.status != 200:
            sys.exit("answer %d: %s" % (r.status, answer[:300]))
        return {"status": r.status, "body_bytes": len(body), "answer_bytes": len(answer),
                "rss_before_mib": rss0 / 1024, "peak_rss_mib": hwm / 1024,
                "growth_mib": (hwm - rss0) / 1024, "cpu_s": cpu}, answer
    finally:
        proc.terminate()
        proc.wait(60)
        logf.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--mib", type=int, default=16, help="tensor size in MiB (elements)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    tmp = tempfile.mkdtemp(prefix="bench-v2json-")
    n = args.mib << 20
    # Values 0..255 as a camera frame has them: 1-3 digits of text each.
    tensor = bytes(i * 7 % 256 for i in range(256)) * (n // 256)
    hdr = json.dumps({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [n],
                                  "parameters": {"binary_data_size": n}}]},
                     separators=(",", ":")).encode()
    figures = {"machine": "%s, %d cores, %s" % (platform.node(), os.cpu_count(),
                                                platform.platform()), "elements": n}
    res, answer = run_case(build, tmp, hdr + tensor,
                           {"Inference-Header-Content-Length": str(len(hdr)),
                            "Content-Type": "application/octet-stream"}, 64 << 20)
    doc = json.loads(answer)
    assert len(doc["outputs"][0]["data"]) == n
    del doc, answer
    figures["answer"] = res
    # The request side: "data" as JSON text, one digit and a comma an element.
    body = (b'{"inputs":[{"name":"x","datatype":"UINT8","shape":[%d],"data":[' % n +
            b"7," * (n - 1) + b'7]}],"parameters":{"binary_data_output":true}}')
    res, _ = run_case(build, tmp, body, {"Content-Type": "application/json"},
                      max(64 << 20, len(body)))
    figures["input"] = res
    for k in ("answer", "input"):
        f = figures[k]
        text = f["answer_bytes"] if k == "answer" else f["body_bytes"]
        print("%-6s %5.1f MiB of JSON: baton peak RSS %7.1f MiB (+%7.1f MiB over %5.1f idle, "
              "%4.1fx the text), CPU %.2f s" % (k, text / 2**20, f["peak_rss_mib"], f["growth_mib"],
                                              f["rss_before_mib"], f["growth_mib"] * 2**20 / text,
                                              f["cpu_s"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
