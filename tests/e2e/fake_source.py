"""A source for the stream tests, speaking protocol v1 by hand (no SDK, so
that what reaches baton is exactly what a test wrote).  BATON_SOURCE_URL is
the path of a JSON script, a list of steps run in order:

  {"emit": "A", "n": 3, "interval_ms": 10}  n items "key=A;n=i" (text/plain)
  {"emit_key": 5}          one item whose payload asks for a non-string key
  {"emit_nokey": 2}        items with no key at all
  {"eos": true} / {"eos": "A"}               end of session (of A)
  {"flood": 2000, "size": 65536}             items as fast as credit allows
  {"raw": "text"}          a raw header line, as is (bad input)
  {"sleep_ms": 100}
  {"wait_file": "/path"}   waits until the file exists
  {"exit": 3}

When the steps are done the source idles until baton says stop.  With
"resume": true at the top ({"resume": true, "steps": [...]}), the index of
the next step is kept in SCRIPT.pos, so a restarted source goes on where
the killed one was instead of starting over.
"""
import json
import os
import select
import socket
import sys
import time

sock = socket.socket(fileno=int(os.environ.get("BATON_FD", "3")))
buf = b""
credit = 0  # -1: unlimited
stopping = False


def send(hdr, payload=b""):
    if payload:
        hdr["len"] = len(payload)
    sock.sendall(json.dumps(hdr, separators=(",", ":")).encode() + b"\n" + payload)


def handle(line):
    global credit, stopping
    msg = json.loads(line)
    if msg.get("t") == "credit":
        credit = -1 if msg["n"] < 0 else (credit + msg["n"] if credit >= 0 else -1)
    elif msg.get("t") == "stop":
        stopping = True


def pump(timeout):
    """Reads what baton sent, waiting up to timeout seconds."""
    global buf
    r, _, _ = select.select([sock], [], [], timeout)
    if not r:
        return
    data = sock.recv(65536)
    if not data:
        sys.exit(0)
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        handle(line)


def emit(payload, meta):
    global credit
    while credit == 0 and not stopping:
        pump(1.0)
    if stopping:
        finish()
    if credit > 0:
        credit -= 1
    send({"t": "emit", "meta": meta}, payload)
    pump(0)


def finish():
    sys.exit(0)


def main():
    path = os.environ["BATON_SOURCE_URL"]
    with open(path) as f:
        script = json.load(f)
    resume = isinstance(script, dict) and script.get("resume")
    steps = script["steps"] if isinstance(script, dict) else script
    pos_path = path + ".pos." + os.environ.get("BATON_STATION", "")
    start = 0
    if resume and os.path.exists(pos_path):
        with open(pos_path) as f:
            start = int(f.read() or 0)
    send({"t": "ready", "proto": 1})
    pump(0.2)
    for i in range(start, len(steps)):
        if resume:
            with open(pos_path, "w") as f:
                f.write(str(i))
        step = steps[i]
        if "emit" in step:
            for n in range(1, step.get("n", 1) + 1):
                emit(b"key=%s;n=%d" % (step["emit"].encode(), n), {"content_type": "text/plain"})
                if step.get("interval_ms"):
                    time.sleep(step["interval_ms"] / 1000.0)
        elif "emit_key" in step:
            emit(b"key=#int;n=1", {"content_type": "text/plain"})
        elif "emit_nokey" in step:
            for n in range(step["emit_nokey"]):
                emit(b"key=;n=%d" % n, {"content_type": "text/plain"})
        elif "eos" in step:
            hdr = {"t": "eos"}
            if isinstance(step["eos"], str):
                hdr["session"] = step["eos"]
            send(hdr)
        elif "flood" in step:
            body = b"key=F;" + b"x" * step.get("size", 1024)
            for _ in range(step["flood"]):
                emit(body, {"content_type": "application/octet-stream"})
        elif "raw" in step:
            sock.sendall(step["raw"].encode() + b"\n")
        elif "sleep_ms" in step:
            end = time.monotonic() + step["sleep_ms"] / 1000.0
            while time.monotonic() < end and not stopping:
                pump(max(0.0, end - time.monotonic()))
        elif "wait_file" in step:
            while not os.path.exists(step["wait_file"]) and not stopping:
                pump(0.05)
        elif "exit" in step:
            sys.exit(step["exit"])
        if stopping:
            finish()
    if resume:
        with open(pos_path, "w") as f:
            f.write(str(len(steps)))
    while not stopping:
        pump(1.0)
    finish()


main()
