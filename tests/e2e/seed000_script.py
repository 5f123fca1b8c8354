#!/usr/bin/python3
"""A one-shot script in seed 000's convention: --input in.json --output
out.json, exit 0 even on failure with {"status": "error", "error": ...}.
The input's "action" chooses: ok, fail (status error), crash (exit 3 with a
traceback on stderr), hang (writing its pid to "pidfile" if given), slow (sleep "ms"), noout (write nothing), fifo (leave a FIFO as the output), big (an output of "bytes" bytes), leak
(start a sleeping grandchild and leave, saying its pid), link (leave a
symlink to "target" as the output)."""
import argparse
import json
import os
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--input", required=True)
ap.add_argument("--output", required=True)
a = ap.parse_args()
with open(a.input) as f:
    req = json.load(f)
action = req.get("action", "ok")
print("processing", os.path.basename(a.input), "in", os.getcwd())
if action == "crash":
    print("Traceback (most recent call last):", file=sys.stderr)
    print("RuntimeError: CUDA out of memory", file=sys.stderr)
    sys.exit(3)
if action == "hang":
    if req.get("pidfile"):   # tells a test which process group to watch
        with open(req["pidfile"], "w") as f:
            f.write(str(os.getpid()))
    time.sleep(3600)
if action == "slow":
    time.sleep(req.get("ms", 100) / 1000)
if action == "noout":
    sys.exit(0)
if action == "fifo":
    os.mkfifo(a.output)
    sys.exit(0)
if action == "big":   # an answer of "bytes" bytes
    with open(a.output, "w") as f:
        f.write("x" * req["bytes"])
    sys.exit(0)
if action == "link":
    os.symlink(req["target"], a.output)
    sys.exit(0)
grandchild = None
if action == "leak":
    grandchild = subprocess.Popen(["sleep", "1000"]).pid
result = {"status": "ok", "echo": req, "input_name": os.path.basename(a.input),
          "input_path": os.path.abspath(a.input),
          "pid": os.getpid(), "pgid": os.getpgid(0), "grandchild": grandchild}
if action == "fail":
    result = {"status": "error", "error": req.get("error", "no diagram found on this page")}
with open(a.output, "w") as f:
    json.dump(result, f)
