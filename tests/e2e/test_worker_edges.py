"""Edges between baton and its workers: baton's own log lines stay valid
logfmt whatever a worker sends, a pong that answers no ping is a protocol
violation (docs/protocol.md), and workers get no descriptor baton inherited
from whoever started it."""
import json
import os
import re

from conftest import PYTHON, ROOT, wait_for

ESCAPE = os.path.join(ROOT, "tests", "e2e", "escape_worker.py")

# A raw worker: ready, then each request's payload names a misbehaviour.
RAW = r'''
import json, os, sys
ch = os.fdopen(3, "rb+", buffering=0)
def send(obj, payload=b""):
    if payload:
        obj["len"] = len(payload)
    ch.write(json.dumps(obj).encode() + b"\n" + payload)
send({"t": "ready", "proto": 1})
f = os.fdopen(3, "rb", buffering=0, closefd=False)
while True:
    line = b""
    while not line.endswith(b"\n"):
        c = f.read(1)
        if not c:
            sys.exit(0)
        line += c
    hdr = json.loads(line)
    if hdr["t"] == "ping":
        send({"t": "pong", "seq": hdr["seq"]})
        continue
    if hdr["t"] != "req":
        continue
    n = hdr.get("len", 0)
    data = b""
    while len(data) < n:
        data += f.read(n - len(data))
    if data == b"ready-again":
        send({"t": "ready", "proto": 1})
    elif data == b"pong":
        send({"t": "pong", "seq": 10 ** 9})
    else:
        send({"t": "res", "id": hdr["id"]}, data)
'''

LOGFMT_PAIR = re.compile(r'([^\s="]+)=(?:"((?:[^"\\]|\\["\\nt]|\\x[0-9a-f]{2})*)"|([^\s"=]*))(?: |$)')


def logfmt_valid(line):
    """True when line is key=value pairs, values bare or quoted with escapes."""
    pos = 0
    while pos < len(line):
        m = LOGFMT_PAIR.match(line, pos)
        if not m:
            return False
        pos = m.end()
    return True


def raw_config(tmp_path, extra=""):
    script = tmp_path / "raw_worker.py"
    script.write_text(RAW)
    return ("stages:\n  w:\n    command: [%s, %s]\n    retries: 0\n"
            "    restart: {backoff_ms: 100}\n%s"
            "pipelines:\n  p: [w]\n" % (PYTHON, script, extra))


def test_logfmt_parser_of_this_test_rejects_a_bare_quote():
    assert logfmt_valid('level=error msg="protocol violation" error="a second \\"ready\\""')
    assert not logfmt_valid('level=error msg="protocol violation" error="a second "ready""')


def test_baton_log_lines_are_valid_logfmt_when_a_worker_misbehaves(baton, tmp_path):
    b = baton(raw_config(tmp_path))
    r = b.post("p", "ready-again")
    assert r.status == 502, r
    wait_for(lambda: "protocol violation" in b.log(), 10, what="the violation logged")
    b.wait_ready()
    assert b.stop() == 0
    lines = [l for l in b.log().splitlines() if l.startswith("ts=")]
    bad = [l for l in lines if not logfmt_valid(l)]
    assert bad == []
    assert any('error="a second \\"ready\\""' in l for l in lines)


def test_pong_that_answers_no_ping_is_a_protocol_violation(baton, tmp_path):
    b = baton(raw_config(tmp_path, "    ping_interval_ms: 100\n"))
    # Pings answered in time keep the replica alive...
    first = b.pids("w")[0]
    assert b.post("p", "hello").body == b"hello"
    # ...a pong nobody asked for kills it.
    r = b.post("p", "pong")
    assert r.status == 502, r
    wait_for(lambda: "a pong that answers no ping" in b.log(), 10, what="the violation")
    b.wait_ready()
    assert b.pids("w")[0] != first
    metrics = b.get("/metrics").body.decode()
    assert re.search(r'baton_replica_failures_total\{stage="w",reason="protocol"\} 1', metrics)
    assert b.stop() == 0


def test_workers_get_no_descriptor_baton_inherited(baton, tmp_path):
    fds = str(tmp_path / "fds")
    cfg = ("stages:\n"
           "  w:\n    command: [%s, %s]\n    env: {ESCAPE_FDS: %s}\n"
           "  s:\n    command: [%s, %s]\n    mode: spawn\n    env: {ESCAPE_FDS: %s}\n"
           "pipelines:\n  p: [w]\n  q: [s]\n" % (PYTHON, ESCAPE, fds + "-w", PYTHON, ESCAPE,
                                                 fds + "-s"))
    # baton inherits descriptors 5 and 9 (not close-on-exec) from its launcher.
    wrapper = ["/bin/sh", "-c", 'exec 5</dev/null 9>/dev/null; exec "$@"', "sh"]
    b = baton(cfg, wrapper=wrapper)
    assert b.post("q", "{}").status == 200
    assert b.stop() == 0
    seen = {}
    for name in os.listdir(str(tmp_path)):
        if name.startswith("fds-"):
            with open(os.path.join(str(tmp_path), name)) as f:
                seen.setdefault(name.split(".")[0], []).append(json.load(f))
    assert seen["fds-w"] == [[0, 1, 2, 3]]
    assert seen["fds-s"] == [[0, 1, 2]]
