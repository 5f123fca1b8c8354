#!/usr/bin/python3
"""A one-shot script in seed 003's convention: a JSON request on stdin, the
JSON answer on stdout, logs on stderr."""
import json
import sys

req = json.load(sys.stdin)
print("got %d keys" % len(req), file=sys.stderr)
if req.get("action") == "crash":
    sys.exit(1)
if req.get("action") == "chunks":   # small, large, small: nothing may be spliced
    for size, ch in ((100, "A"), (5000, "B"), (50, "C")):
        sys.stdout.write(ch * size)
        sys.stdout.flush()
    sys.exit(0)
json.dump({"doubled": [2 * x for x in req.get("values", [])]}, sys.stdout)
