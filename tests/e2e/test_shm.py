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
import threading
import json
import os

from conftest import BUILD, PYTHON, SDK_PY, SLOW, config, wait_for

WORKER = os.path.join(os.path.dirname(__file__), "shm_worker.py")
C_WORKER = os.path.join(BUILD, "tests", "c_echo_worker")
SIZE = 6 * 1024 * 1024


def py_stage(name, views=True, raw=False, gate=None, env_extra=None, **extra):
    env = {"PYTHONPATH": SDK_PY, "SHM_VIEWS": "1" if views else "0", "RAW": "1" if raw else "0"}
    env.update(env_extra or {})
    if gate:
        env["SHM_GATE"] = gate
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


def fd_links(pid):
    """What pid's descriptors point to (those that close meanwhile left out)."""
    out = []
    for f in os.listdir("/proc/%d/fd" % pid):
        try:
            out.append(os.readlink("/proc/%d/fd/%s" % (pid, f)))
        except FileNotFoundError:
            pass
    return out


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
    # Each crash freed the memfds it held: baton has no more than before (fewer
    # when "before" caught a closing connection's socket).
    wait_for(lambda: fds(b.proc.pid) <= before, 10,
             what="baton's descriptors back to %d (now %d)" % (before, fds(b.proc.pid)))


# ---- Triton's system shared-memory extension (clients on this machine) ----

IO = ("    io:\n"
      "      inputs: [{name: x, datatype: UINT8, shape: [-1]}]\n"
      "      outputs: [{name: out_x, datatype: UINT8, shape: [-1]}]\n")


class Region:
    """A POSIX shared-memory object made the way a client makes one (in
    /dev/shm, as shm_open does), removed when the test ends."""

    def __init__(self, tmp_path, size):
        self.key = "/baton-test-%d-%s" % (os.getpid(), os.path.basename(str(tmp_path)))
        self.path = "/dev/shm" + self.key
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o600)
        os.ftruncate(self.fd, size)

    def write(self, offset, data):
        os.pwrite(self.fd, data, offset)

    def read(self, offset, n):
        return os.pread(self.fd, n, offset)

    def close(self):
        os.close(self.fd)
        os.unlink(self.path)


def shm_infer(b, inputs, outputs):
    doc = {"inputs": inputs, "outputs": outputs}
    return b.request("POST", "/v2/models/m/infer", json.dumps(doc).encode(),
                     {"Content-Type": "application/json"})


def shm_input(region, size, offset=0):
    p = {"shared_memory_region": region, "shared_memory_byte_size": size}
    if offset:
        p["shared_memory_offset"] = offset
    return {"name": "x", "datatype": "UINT8", "shape": [size], "parameters": p}


def test_shm_register_status_infer_and_unregister(baton, tmp_path):
    b = baton(config(py_stage("pass") + "  w:\n    command: [%s, %s]\n    env: %s\n" % (
        PYTHON, os.path.join(os.path.dirname(__file__), "fake_worker.py"),
        json.dumps({"PYTHONPATH": SDK_PY})), {}) + "  m:\n    stages: [pass, w]\n" + IO)
    assert "system_shared_memory" in b.get("/v2").json()["extensions"]
    n = 300 * 1024  # over memfd_min_bytes: the input crosses the stages as a memfd
    region = Region(tmp_path, 2 * n + 4096)
    try:
        data = frame(b"shm")[:n]
        region.write(4096, data)
        reg = lambda name, doc: b.request(  # noqa: E731
            "POST", "/v2/systemsharedmemory/region/%s/register" % name, json.dumps(doc).encode())
        assert reg("in", {"key": region.key, "offset": 0, "byte_size": n + 4096}).status == 200
        assert reg("out", {"key": region.key, "offset": n + 4096, "byte_size": n}).status == 200
        status = b.get("/v2/systemsharedmemory/status").json()
        assert sorted((s["name"], s["offset"], s["byte_size"]) for s in status) == [
            ("in", 0, n + 4096), ("out", n + 4096, n)]
        assert all(s["key"] == region.key for s in status)
        assert b.get("/v2/systemsharedmemory/region/in/status").json()[0]["name"] == "in"

        out = {"name": "out_x", "parameters": {"shared_memory_region": "out",
                                               "shared_memory_byte_size": n}}
        r = shm_infer(b, [shm_input("in", n, offset=4096)], [out])
        assert r.status == 200, r
        doc = r.json()  # no binary part: the output is in the region
        o = doc["outputs"][0]
        assert o["name"] == "out_x" and o["shape"] == [n]
        assert o["parameters"]["shared_memory_region"] == "out"
        assert o["parameters"]["shared_memory_byte_size"] == n
        assert region.read(n + 4096, n) == data

        assert b.request("POST", "/v2/systemsharedmemory/region/in/unregister").status == 200
        assert [s["name"] for s in b.get("/v2/systemsharedmemory/status").json()] == ["out"]
        assert b.request("POST", "/v2/systemsharedmemory/unregister").status == 200
        assert b.get("/v2/systemsharedmemory/status").json() == []
        r = shm_infer(b, [shm_input("in", n)], [])
        assert r.status == 400 and "unknown shared memory region 'in'" in r.json()["error"]
    finally:
        region.close()


def test_shm_errors_are_400_and_name_only_registered_memory(baton, tmp_path):
    b = baton(config(py_stage("pass"), {}) + "  m:\n    stages: [pass]\n" + IO)
    region = Region(tmp_path, 8192)
    try:
        def reg(name, doc):
            return b.request("POST", "/v2/systemsharedmemory/region/%s/register" % name,
                             json.dumps(doc).encode())
        for doc, says in [({"key": "/baton-no-such-object", "byte_size": 16}, "cannot open"),
                          ({"key": region.key + "/x", "byte_size": 16}, "\"key\""),
                          ({"key": 7, "byte_size": 16}, "\"key\""),
                          ({"key": region.key, "offset": 4096, "byte_size": 4097}, "outside"),
                          ({"key": region.key, "byte_size": 0}, "byte_size")]:
            r = reg("r", doc)
            assert r.status == 400 and says in r.json()["error"], (doc, r)
        assert reg("r", {"key": region.key, "offset": 4096, "byte_size": 4096}).status == 200
        again = reg("r", {"key": region.key, "byte_size": 16})
        assert again.status == 400 and "already registered" in again.json()["error"]
        big = reg("big", {"key": region.key, "byte_size": 8192})
        assert big.status == 200  # the object is 8 KiB: all of it may be registered too
        # Bounds: offset + size within the registered 4 KiB, not the object's 8 KiB.
        for inp, says in [(shm_input("r", 4096), None),
                          (shm_input("r", 4097), "outside"),
                          (shm_input("r", 1, offset=4096), "outside"),
                          (shm_input("r", 2 ** 62, offset=2 ** 62), "outside"),
                          (shm_input("nope", 16), "unknown shared memory region 'nope'")]:
            r = shm_infer(b, [inp], [])
            if says is None:
                assert r.status == 200, r
            else:
                assert r.status == 400 and says in r.json()["error"], (inp, r)
        half = shm_input("r", 16)
        del half["parameters"]["shared_memory_byte_size"]
        r = shm_infer(b, [half], [])
        assert r.status == 400 and "go together" in r.json()["error"]
        assert b.get("/v2/systemsharedmemory/region/nope/status").status == 400
        assert b.request("POST", "/v2/systemsharedmemory/region/nope/unregister").status == 400
    finally:
        region.close()


def fake_v2_stage():
    return "  w:\n    command: [%s, %s]\n    env: %s\n" % (
        PYTHON, os.path.join(os.path.dirname(__file__), "fake_worker.py"),
        json.dumps({"PYTHONPATH": SDK_PY}))


def test_shm_region_unregistered_while_in_use_and_never_reaches_a_worker(baton, tmp_path):
    gate = os.path.join(str(tmp_path), "gate")
    b = baton(config(py_stage("pass", gate=gate) + fake_v2_stage(), {}) +
              "  m:\n    stages: [pass, w]\n" + IO)
    n = 4096
    region = Region(tmp_path, 2 * n)
    try:
        region.write(0, bytes(range(256)) * 16)
        for name, off in (("in", 0), ("out", n)):
            assert b.request("POST", "/v2/systemsharedmemory/region/%s/register" % name,
                             json.dumps({"key": region.key, "offset": off,
                                         "byte_size": n}).encode()).status == 200
        out = {"name": "out_x", "parameters": {"shared_memory_region": "out",
                                               "shared_memory_byte_size": n}}
        replies = []
        t = threading.Thread(target=lambda: replies.append(
            shm_infer(b, [shm_input("in", n)], [out])))
        t.start()
        try:
            wait_for(lambda: b.status()["stages"]["pass"]["running"] == 1, 10,
                     what="the request held by the gated stage")
            # No worker holds a descriptor of the client's object: only baton does.
            for stage in ("pass", "w"):
                for pid in b.pids(stage):
                    links = fd_links(pid)
                    assert not [l for l in links if region.key in l], (stage, links)
            assert b.request("POST", "/v2/systemsharedmemory/unregister").status == 200
            assert b.get("/v2/systemsharedmemory/status").json() == []
        finally:
            open(gate, "w").close()
        t.join(30 * SLOW)
        assert replies and replies[0].status == 200, replies
        assert region.read(n, n) == bytes(range(256)) * 16  # written after unregister
        # Once answered, baton holds no descriptor of the object either.
        wait_for(lambda: not [l for l in fd_links(b.proc.pid) if region.key in l], 10,
                 what="baton to close the unregistered region")
    finally:
        region.close()


def test_shm_budget_and_an_output_over_its_slot(baton, tmp_path):
    b = baton(config(fake_v2_stage(), {}, top="max_request_bytes: 1048576\n"
                     "http: {max_buffered_bytes: 1048576}\n") + "  m:\n    stages: [w]\n" + IO)
    region = Region(tmp_path, 2 * 1024 * 1024)
    try:
        def reg(name, off, size):
            return b.request("POST", "/v2/systemsharedmemory/region/%s/register" % name,
                             json.dumps({"key": region.key, "offset": off,
                                         "byte_size": size}).encode())
        r = reg("huge", 0, 1536 * 1024)  # over http.max_buffered_bytes
        assert r.status == 400 and "max_buffered_bytes" in r.json()["error"], r
        assert reg("in", 0, 64).status == 200 and reg("out", 64, 63).status == 200
        region.write(0, bytes(range(64)) + b"\xee" * 64)
        out = {"name": "out_x", "parameters": {"shared_memory_region": "out",
                                               "shared_memory_byte_size": 63}}
        r = shm_infer(b, [shm_input("in", 64)], [out])
        # A 64-byte output does not fit its 63-byte slot: an error, and nothing written.
        assert r.status == 500 and "more than its shared_memory_byte_size" in r.json()["error"], r
        assert region.read(64, 64) == b"\xee" * 64
        # A last stage that says it wrote an output it was never given a place for
        # (the slot is not an object of its own) is not believed.
        claim = {"outputs": [{"name": "out_x", "parameters": {"baton_placed": 10}}]}
        doc = {"inputs": [shm_input("in", 64)], "outputs": [out],
               "parameters": {"raw_answer": json.dumps(claim)}}
        r = b.request("POST", "/v2/models/m/infer", json.dumps(doc).encode(),
                      {"Content-Type": "application/json"})
        assert r.status == 500 and "not given" in r.json()["error"], r
        # One region named again and again is copied again and again: the
        # request with its regions' bytes counts against max_request_bytes.
        assert reg("big", 1024, 600 * 1024).status == 200
        one = dict(shm_input("big", 600 * 1024), name="a")
        r = shm_infer(b, [one], [])
        assert r.status == 200, r
        r = shm_infer(b, [one, dict(one, name="b")], [])
        assert r.status == 400 and "over max_request_bytes" in r.json()["error"], r
        assert b.status()["requests"]["in_flight"] == 0
    finally:
        region.close()


def test_shm_whole_object_input_reaches_workers_without_a_copy(baton, tmp_path):
    """A 6 MB input that is a client's whole object crosses three stages
    (Python, C, Python) with no copy: baton reads none of it, and each
    worker maps exactly the object, read-only, from a descriptor the SDK
    has already closed."""
    region = Region(tmp_path, SIZE)
    env = {"SHM_KEY": region.key, "SHM_V2_LAST": "1"}
    gate = os.path.join(str(tmp_path), "gate")
    open(gate, "w").close()
    b = baton(config(py_stage("a", gate=gate) + c_stage("b") +
                     py_stage("c", env_extra=env), {}) +
              "  m:\n    stages: [a, b, c]\n" + IO)
    other = Region(tmp_path / "other", SIZE)  # another client's, never named
    outr = Region(tmp_path / "out", SIZE)
    try:
        data = frame(b"whole")
        region.write(0, data)
        other.write(0, b"\xaa" * SIZE)
        for name, r in (("in", region), ("other", other), ("out", outr)):
            assert b.request("POST", "/v2/systemsharedmemory/region/%s/register" % name,
                             json.dumps({"key": r.key, "byte_size": SIZE}).encode()
                             ).status == 200
        # The output into a region of its own: the last stage writes it there.
        out_x = {"name": "out_x", "parameters": {"shared_memory_region": "out",
                                                 "shared_memory_byte_size": SIZE}}
        r0, w0 = io(b.proc.pid)
        r = shm_infer(b, [shm_input("in", SIZE)], [out_x])
        r1, w1 = io(b.proc.pid)
        assert r.status == 200, r
        out = r.json()["outputs"][0]["parameters"]
        assert out["shared_memory_region"] == "out" and out["shared_memory_byte_size"] == SIZE
        assert "baton_placed" not in out, out
        assert outr.read(0, SIZE) == data  # exactly the range's bytes, through three stages
        # Mapped read-only and shared (the client's pages), only the object's size,
        # and no descriptor left behind by the SDK.
        assert out["view"] and out["fds"] == [], out
        assert out["maps"] and all(p == "r--s" for p, _ in out["maps"]), out
        assert sum(n for _, n in out["maps"]) == SIZE, out
        # baton read nothing of the input and copied nothing of the output (either
        # would be SIZE in rchar and wchar).
        assert r1 - r0 < SIZE // 8 and w1 - w0 < SIZE // 8, (r1 - r0, w1 - w0)
        # The output in the answer's body instead: still no copy of the input.
        r0, w0 = io(b.proc.pid)
        r = shm_infer(b, [shm_input("in", SIZE)], [])
        r1, w1 = io(b.proc.pid)
        assert r.status == 200, r
        hl = int(r.headers["inference-header-content-length"])
        assert r.body[hl:] == data
        assert r1 - r0 < SIZE // 8, (r1 - r0, w1 - w0)
        # Not the whole object (the descriptor would show more than the range):
        # copied as before, and still exactly the range's bytes.
        for off, n in ((0, SIZE - 4096), (4096, SIZE - 4096)):
            r0, _ = io(b.proc.pid)
            r = shm_infer(b, [shm_input("in", n, offset=off)], [])
            r1, _ = io(b.proc.pid)
            assert r.status == 200, r
            hl = int(r.headers["inference-header-content-length"])
            assert r.body[hl:] == data[off:off + n]
            assert json.loads(r.body[:hl])["outputs"][0]["parameters"]["maps"] == []
            assert r1 - r0 >= n, r1 - r0
        # A range outside the region is refused before anything runs.
        r = shm_infer(b, [shm_input("in", SIZE, offset=1)], [])
        assert r.status == 400 and "outside" in r.json()["error"], r
        # Unregistered, and the object grown, while a request holds its
        # descriptor: it completes with the bytes it came with, later stages get
        # them copied (the descriptor would now show more), and the next request
        # is refused.
        os.unlink(gate)
        replies = []
        t = threading.Thread(target=lambda: replies.append(
            shm_infer(b, [shm_input("in", SIZE)], [])))
        t.start()
        try:
            wait_for(lambda: b.status()["stages"]["a"]["running"] == 1, 10,
                     what="the request held by the gated stage")
            assert b.request("POST", "/v2/systemsharedmemory/region/in/unregister"
                             ).status == 200
            os.ftruncate(region.fd, 2 * SIZE)
        finally:
            open(gate, "w").close()
        t.join(30 * SLOW)
        assert replies and replies[0].status == 200, replies
        hl = int(replies[0].headers["inference-header-content-length"])
        assert replies[0].body[hl:] == data
        assert json.loads(replies[0].body[:hl])["outputs"][0]["parameters"]["maps"] == []
        r = shm_infer(b, [shm_input("in", SIZE)], [])
        assert r.status == 400 and "unknown shared memory region 'in'" in r.json()["error"]
        wait_for(lambda: not [l for l in fd_links(b.proc.pid) if region.key in l], 10,
                 what="baton to close the unregistered region")
    finally:
        region.close()
        other.close()
        outr.close()


def test_shm_whole_object_input_to_a_worker_that_does_not_take_regions(baton, tmp_path):
    """A worker that never announced "region" (an old one) gets the input
    copied, as before, and a handler that takes bytes gets them from the
    object (one copy, in the worker)."""
    region = Region(tmp_path, SIZE)
    b = baton(config(py_stage("bytes", views=False) + py_stage("old", raw=True) +
                     py_stage("c", env_extra={"SHM_V2_LAST": "1"}), {}) +
              "  m:\n    stages: [bytes, old, c]\n" + IO)
    try:
        data = frame(b"old")
        region.write(0, data)
        assert b.request("POST", "/v2/systemsharedmemory/region/in/register",
                         json.dumps({"key": region.key, "byte_size": SIZE}).encode()
                         ).status == 200
        r = shm_infer(b, [shm_input("in", SIZE)], [])
        assert r.status == 200, r
        hl = int(r.headers["inference-header-content-length"])
        assert r.body[hl:] == data
    finally:
        region.close()


def test_shm_whole_object_output_written_by_a_c_last_stage(baton, tmp_path):
    """The C SDK writes a binary output into the client's object it was
    handed: baton copies neither the input nor the output. The first stage
    dies holding the request once: the retry gets the object again."""
    region, outr = Region(tmp_path, SIZE), Region(tmp_path / "out", SIZE)
    crashed = os.path.join(str(tmp_path), "crashed")
    b = baton(config(py_stage("a", env_extra={"SHM_CRASH_ONCE": crashed}, retries=2) +
                     "  c:\n    command: [%s]\n    env: {C_V2_LAST: \"1\"}\n" % C_WORKER, {}) +
              "  m:\n    stages: [a, c]\n" + IO)
    try:
        data = frame(b"c-out")
        region.write(0, data)
        for name, r in (("in", region), ("out", outr)):
            assert b.request("POST", "/v2/systemsharedmemory/region/%s/register" % name,
                             json.dumps({"key": r.key, "byte_size": SIZE}).encode()
                             ).status == 200
        out_x = {"name": "out_x", "parameters": {"shared_memory_region": "out",
                                                 "shared_memory_byte_size": SIZE}}
        r = shm_infer(b, [shm_input("in", SIZE)], [out_x])
        assert r.status == 200, r
        assert os.path.exists(crashed)  # it was the retry that answered
        out = r.json()["outputs"][0]["parameters"]
        assert out == {"shared_memory_region": "out", "shared_memory_byte_size": SIZE}, out
        assert outr.read(0, SIZE) == data
        # Once more, counted (a crash makes baton read /proc, which counts).
        outr.write(0, bytes(SIZE))
        r0, w0 = io(b.proc.pid)
        r = shm_infer(b, [shm_input("in", SIZE)], [out_x])
        r1, w1 = io(b.proc.pid)
        assert r.status == 200 and outr.read(0, SIZE) == data, r
        assert r1 - r0 < SIZE // 8 and w1 - w0 < SIZE // 8, (r1 - r0, w1 - w0)
    finally:
        region.close()
        outr.close()


def test_shm_whole_object_output_written_by_v2_response_without_a_copy(baton, tmp_path):
    """A last stage written with the SDK's v2 helpers (views=True) answers a
    client whose input and output are objects of their own: v2.parse hands
    out x as a view of the input's object, and v2.response writes out_x into
    the output's object from it. Neither makes a copy: the worker's
    anonymous memory does not grow by the tensor's size."""
    size = 32 * 1024 * 1024
    region, outr = Region(tmp_path, size), Region(tmp_path / "out", size)
    rss = os.path.join(str(tmp_path), "rss")
    b = baton(config(py_stage("w", env_extra={"SHM_V2_SDK": "1", "SHM_RSS_FILE": rss}), {},
                     top="max_request_bytes: %d\n" % (2 * size)) +
              "  m:\n    stages: [w]\n" + IO)
    try:
        data = (hashlib.sha256(b"v2-sdk").digest() * 2048) * (size // 65536)
        region.write(0, data)
        for name, r in (("in", region), ("out", outr)):
            assert b.request("POST", "/v2/systemsharedmemory/region/%s/register" % name,
                             json.dumps({"key": r.key, "byte_size": size}).encode()
                             ).status == 200
        out_x = {"name": "out_x", "parameters": {"shared_memory_region": "out",
                                                 "shared_memory_byte_size": size}}
        for _ in range(2):
            outr.write(0, bytes(size))
            r = shm_infer(b, [shm_input("in", size)], [out_x])
            assert r.status == 200, r
            out = r.json()["outputs"][0]["parameters"]
            assert out == {"shared_memory_region": "out", "shared_memory_byte_size": size}, out
            assert outr.read(0, size) == data
        with open(rss) as f:
            grew = [line.split() for line in f.read().splitlines()]
        assert len(grew) == 2 and all(kind == "memoryview" for _, kind in grew), grew
        assert all(int(kb) < size // 1024 // 4 for kb, _ in grew), grew
    finally:
        region.close()
        outr.close()


def test_shm_six_descriptors_of_one_request_all_reach_a_python_worker(baton, tmp_path):
    """An input and five outputs that are client objects of their own give one
    request six descriptors. baton sends at most four with one message
    (docs/protocol.md), what the SDKs take in one receive; all six reach the
    last stage, which writes x into each output's object."""
    size, n = 1024 * 1024, 5
    io_outs = ", ".join("{name: out_%d, datatype: UINT8, shape: [-1]}" % i for i in range(n))
    b = baton(config(py_stage("w", env_extra={"SHM_V2_FANOUT": str(n)}), {}) +
              "  m:\n    stages: [w]\n    io:\n"
              "      inputs: [{name: x, datatype: UINT8, shape: [-1]}]\n"
              "      outputs: [%s]\n" % io_outs)
    inr = Region(tmp_path, size)
    outs = [Region(tmp_path / ("out%d" % i), size) for i in range(n)]
    try:
        data = (hashlib.sha256(b"six").digest() * 2048) * (size // 65536)
        inr.write(0, data)
        for name, r in [("in", inr)] + [("out%d" % i, o) for i, o in enumerate(outs)]:
            assert b.request("POST", "/v2/systemsharedmemory/region/%s/register" % name,
                             json.dumps({"key": r.key, "byte_size": size}).encode()
                             ).status == 200
        wanted = [{"name": "out_%d" % i, "parameters": {"shared_memory_region": "out%d" % i,
                                                        "shared_memory_byte_size": size}}
                  for i in range(n)]
        for _ in range(2):
            for o in outs:
                o.write(0, bytes(size))
            r = shm_infer(b, [shm_input("in", size)], wanted)
            assert r.status == 200, r
            got = {o["name"]: o["parameters"] for o in r.json()["outputs"]}
            for i, o in enumerate(outs):
                assert got["out_%d" % i] == {"shared_memory_region": "out%d" % i,
                                             "shared_memory_byte_size": size}, got
                assert o.read(0, size) == data, "out_%d" % i
    finally:
        inr.close()
        for o in outs:
            o.close()

