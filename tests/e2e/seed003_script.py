#!/usr/bin/python3
"""A one-shot script in seed 003's convention: a JSON request on stdin, the
JSON answer on stdout, logs on stderr."""
import json
import sys

req = json.load(sys.stdin)
print("got %d keys" % len(req), file=sys.stderr)
if req.get("action") == "crash":
    sys.exit(1)
json.dump({"doubled": [2 * x for x in req.get("values", [])]}, sys.stdout)
