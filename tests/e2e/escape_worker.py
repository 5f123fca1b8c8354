#!/usr/bin/python3
"""A worker (or, with BATON_MODE=spawn, a one-shot script) that escapes its
process group the way daemonizers do: fork, setsid() in the child, fork
again, and let the middle process exit, so that the grandchild is an orphan
in its own session.  Used by tests/e2e/test_containment.py and bench/chaos.

Environment:
  ESCAPE_AT_START=1  a persistent worker escapes once before saying ready
  ESCAPE_MB=N        the escaped grandchild holds N megabytes, touched
  ESCAPE_PIDS=PATH   every escaped grandchild's pid is appended to PATH
  ESCAPE_FDS=PATH    the descriptors open when the process started, as JSON

Payload "escape" (persistent) escapes once more and answers the grandchild's
pid; a spawn-mode script escapes once per run and prints {"escaped": pid}.
"""
import json
import os
import sys
import time

# First, before Python or the SDK open anything: what this process inherited.
_fds = []
for _fd in range(0, 256):
    try:
        os.fstat(_fd)
        _fds.append(_fd)
    except OSError:
        pass
if os.environ.get("ESCAPE_FDS"):
    with open(os.environ["ESCAPE_FDS"] + ".%d" % os.getpid(), "w") as f:
        json.dump(_fds, f)


def escape():
    """Double-forks a setsid() grandchild; returns its pid once it runs."""
    r, w = os.pipe()
    mid = os.fork()
    if mid == 0:
        os.close(r)
        os.setsid()
        if os.fork() == 0:
            os.write(w, b"%d\n" % os.getpid())
            os.close(w)
            mb = int(os.environ.get("ESCAPE_MB", "0"))
            held = b"\x01" * (mb << 20) if mb else b""
            while True:
                time.sleep(3600)  # holding held
        os._exit(0)
    os.close(w)
    pid = int(os.read(r, 64).decode().strip() or 0)
    os.close(r)
    os.waitpid(mid, 0)
    if os.environ.get("ESCAPE_PIDS"):
        with open(os.environ["ESCAPE_PIDS"], "a") as f:
            f.write("%d\n" % pid)
    return pid


if os.environ.get("BATON_MODE") == "spawn":
    sys.stdin.read()
    print(json.dumps({"escaped": escape()}))
    sys.exit(0)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))
import baton_worker as bw  # noqa: E402


def init():
    if os.environ.get("ESCAPE_AT_START") == "1":
        escape()


def handle(payload, meta, *state):
    if payload == b"escape":
        return str(escape()).encode(), {}
    return payload, {}


bw.run(handle, init=init)
