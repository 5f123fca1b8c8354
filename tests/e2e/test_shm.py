"""Large payloads between baton and its workers as sealed memfds
(docs/protocol.md, "Large payloads"): a 6 MB body crosses three stages
without baton copying it, in Python and in C, workers that do not announce
memfds still get bytes, a worker cannot hand baton a memfd it could still
change, and a worker that dies holding one leaks no descriptor in baton.

"Without copying" is read from baton's own /proc/PID/io: rchar and wchar
count the bytes that went through its read and write calls.  Sent as bytes,
each hop would add the payload to wchar (to the worker) and to rchar (its
answer); as memfds only the HTTP body and the answer count.
"""
import hashlib
import json
import os

from conftest import BUILD, PYTHON, SDK_PY, SLOW, config, wait_for

WORKER = os.path.join(os.path.dirname(__file__), "shm_worker.py")
C_WORKER = os.path.join(BUILD, "tests", "c_echo_worker")
SIZE = 6 * 1024 * 1024


def py_stage(name, views=True, raw=False, **extra):
    env = {"PYTHONPATH": SDK_PY, "SHM_VIEWS": "1" if views else "0", "RAW": "1" if raw else "0"}
    lines = ["  %s:" % name, "    command: [%s, %s]" % (PYTHON, WORKER),
             "    env: %s" % json.dumps(env)]
    lines += ["    %s: %s" % kv for kv in extra.items()]
    return "\n".join(lines) + "\n"


def c_stage(name):
    return "  %s:\n    command: [%s]\n" % (name, C_WORKER)


def frame(seed=b"frame"):
    """SIZE bytes that are not all alike (a shifted byte would show)."""
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    return (block * (SIZE // len(block) + 1))[:SIZE]


def io(pid):
    with open("/proc/%d/io" % pid) as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def post_counted(b, pipeline, body, headers=None):
    """Posts body and returns (reply, bytes baton read, bytes baton wrote)."""
    r0, w0 = io(b.proc.pid)
    reply = b.post(pipeline, body, headers=headers)
    r1, w1 = io(b.proc.pid)
    return reply, r1 - r0, w1 - w0


def test_large_payload_crosses_three_python_stages_as_one_memfd(baton):
    b = baton(config(py_stage("a") + py_stage("b") + py_stage("c"), {"p": ["a", "b", "c"]}))
    body = frame()
    reply, read, wrote = post_counted(b, "p", body)
    assert reply.status == 200, reply
    assert reply.body == body
    assert reply.headers["content-type"] == "application/x-hops-mmm"  # a view at every stage
    # Three hops as bytes would be 4 x SIZE each way; memfds leave the body and the answer.
    assert read < 1.5 * SIZE and wrote < 1.5 * SIZE, (read, wrote)
    # Small payloads still travel as bytes.
    small = b.post("p", b"hello")
    assert small.status == 200 and small.body == b"hello"
    assert small.headers["content-type"] == "application/x-hops-bbb"


def test_large_payload_crosses_c_sdk_stages_intact(baton):
    b = baton(config(c_stage("c1") + c_stage("c2") + py_stage("py", views=False) + c_stage("c3"),
                     {"p": ["c1", "c2", "py", "c3"]}))
    body = frame(b"c")
    # The C worker answers with the request's own bytes (the same memfd) ...
    reply, read, wrote = post_counted(b, "p", body)
    assert reply.status == 200 and reply.body == body, reply
    assert read < 1.5 * SIZE and wrote < 1.5 * SIZE, (read, wrote)
    # ... or with a copy of its own, which the SDK puts in a new sealed memfd.
    reply, read, wrote = post_counted(b, "p", body, {"Baton-Meta": '{"copy": "yes"}'})
    assert reply.status == 200 and reply.body == body, reply
    assert read < 1.5 * SIZE and wrote < 1.5 * SIZE, (read, wrote)


def test_workers_that_do_not_announce_memfds_get_bytes(baton):
    # An old worker between two new ones, and an SDK worker under a baton with memfds off.
    b = baton(config(py_stage("a") + py_stage("old", raw=True) + py_stage("c"),
                     {"p": ["a", "old", "c"]}))
    body = frame(b"old")
    reply = b.post("p", body)
    assert reply.status == 200 and reply.body == body, reply
    assert reply.headers["content-type"] == "application/x-hops-mbm"
    off = baton(config(py_stage("a") + py_stage("b"), {"p": ["a", "b"]},
                       top="memfd_min_bytes: 0\n"), name="off")
    reply, read, wrote = post_counted(off, "p", body)
    assert reply.status == 200 and reply.body == body, reply
    assert reply.headers["content-type"] == "application/x-hops-bb"
    assert wrote > 2 * SIZE  # bytes, as before memfds


def test_unsealed_memfd_from_a_worker_is_a_protocol_violation(baton):
    b = baton(config(py_stage("a", retries=0, **{"restart": "{backoff_ms: 50}"}), {"p": ["a"]}))
    reply = b.post("p", b"unsealed" + bytes(SIZE))
    assert reply.status == 502, reply
    assert reply.json()["code"] == "worker_crashed"
    assert "not sealed against write" in b.log()


def test_worker_crash_holding_a_memfd_answers_once_and_leaks_no_descriptor(baton):
    b = baton(config(py_stage("a", retries=1, **{"restart": "{backoff_ms: 50}"}) + py_stage("b"),
                     {"p": ["a", "b"]}))
    body = frame(b"x")
    assert b.post("p", body).status == 200  # every lazy allocation of the path made once
    before = fds(b.proc.pid)
    for _ in range(2):
        reply = b.post("p", b"crash" + body)
        assert reply.status == 502 and reply.json()["code"] == "worker_crashed", reply
    wait_for(b.all_replicas_ready, 20, what="the crashed replica back")
    assert b.post("p", body).body == body
    metrics = b.get("/metrics").body.decode()
    accepted = [l for l in metrics.splitlines()
                if l.startswith("baton_requests_accepted_total") and 'pipeline="p"' in l]
    assert accepted and accepted[0].endswith(" 4"), accepted
    # Each crash freed the memfds it held: baton has what it had before.
    wait_for(lambda: fds(b.proc.pid) == before, 10,
             what="baton's descriptors back to %d (now %d)" % (before, fds(b.proc.pid)))
