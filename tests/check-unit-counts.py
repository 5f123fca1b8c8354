#!/usr/bin/python3
"""Fails unless every unit test binary of the last `meson test --suite unit` in BUILD ran
at least one test: Criterion exits 0 when it finds none to run (a filter, a
broken registration), and meson counts that as a pass.

usage: check-unit-counts.py BUILD
"""
import json
import os
import re
import sys

log = os.path.join(sys.argv[1], "meson-logs", "testlog.json")
bad, n = [], 0
with open(log) as f:
    for line in f:
        t = json.loads(line)
        n += 1
        m = re.search(r"Synthesis: Tested: (\d+)", (t.get("stderr") or "") + (t.get("stdout") or ""))
        if not m or int(m.group(1)) == 0:
            bad.append(t["name"])
if n == 0:
    sys.exit("%s: no unit test ran" % log)
if bad:
    sys.exit("%s: ran zero tests (or no Criterion summary): %s" % (log, ", ".join(bad)))
print("unit tests: %d binaries, each ran at least one test" % n)
