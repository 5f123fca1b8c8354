"""The Python worker SDK (sdk/python/baton_worker.py) against a fake baton.

No daemon here: each test makes a socketpair, starts a worker script with its end
as fd 3, and speaks protocol v1 from the other end. The fake workers let the
payload choose what happens (reject, retry, raise, bad result ...). Every wait is
bounded by a socket timeout or a process wait timeout.
"""

import json
import os
import signal
import socket
import subprocess
import struct
import sys
import threading
import time

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SDK_DIR = os.path.join(REPO, "sdk", "python")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
TIMEOUT = 10.0          # any single wait; generous for slow CI machines
MAX_HEADER = 64 * 1024

# Moves the inherited socket to fd 3, where the protocol says it is, then runs the
# worker script as __main__, as `python3 script.py` would.
LAUNCHER = (
    "import os, runpy, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "sys.argv = sys.argv[2:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)

# One fake, many behaviours: the payload's "command:" prefix chooses.
SINGLE_WORKER = r'''
import time
import baton_worker as bw

def init():
    return {"model": "m1"}

def handle(payload, meta, state):
    cmd, _, arg = payload.partition(b":")
    if cmd == b"reject":
        raise bw.Reject(arg.decode())
    if cmd == b"retry":
        raise bw.Retry(arg.decode())
    if cmd == b"boom":
        raise ValueError(arg.decode())
    if cmd == b"json":
        return {"model": state["model"], "stage": meta.get("stage"), "text": "é"}
    if cmd == b"meta":
        return arg, {"tag": "x"}
    if cmd == b"text":
        return arg.decode()
    if cmd == b"none":
        return None
    if cmd == b"bad":
        return 42
    if cmd == b"where":
        return {"stage": bw.stage(), "replica": bw.replica()}
    if cmd == b"sleep":
        time.sleep(float(arg))
        return b"slept"
    if cmd == b"print":
        print("noise {\"t\":\"res\"}\n" * 100)
        return b"printed"
    return payload
bw.run(handle, init=init)
'''

ECHO_WORKER = r'''
import baton_worker as bw
bw.run(lambda payload, meta: payload)
'''

BATCH_WORKER = r'''
import baton_worker as bw

@bw.batch_handler
def handle(reqs):
    out = []
    for r in reqs:
        if r.payload == b"reject":
            out.append(bw.Reject("bad item"))
        elif r.payload == b"fail-all":
            raise bw.Retry("whole batch")
        elif r.payload == b"crash-all":
            raise RuntimeError("model fell over")
        else:
            out.append((r.payload.upper(), {"batch": len(reqs), "id": r.id}))
    return out
bw.run(handle)
'''

BAD_INIT_WORKER = r'''
import baton_worker as bw
def init():
    raise OSError("weights not found")
bw.run(lambda p, m: p, init=init)
'''


class Peer:
    """baton's end of the socket: framed sends, framed receives, strict checks."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(TIMEOUT)
        self.buf = bytearray()

    def send(self, hdr, payload=b""):
        self.sock.sendall(frame(hdr, payload))

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("worker closed the socket")
        self.buf += chunk

    def recv(self):
        scanned = 0
        while True:
            nl = self.buf.find(b"\n", scanned)
            if nl >= 0:
                break
            scanned = len(self.buf)
            assert scanned < MAX_HEADER, "worker header over 64 KiB"
            self._fill()
        line = bytes(self.buf[:nl])
        assert nl + 1 <= MAX_HEADER
        hdr = json.loads(line)
        # Compact JSON: re-encoding compactly gives back the same bytes.
        assert line == json.dumps(hdr, separators=(",", ":")).encode(), line
        n = hdr.get("len", 0)
        while len(self.buf) < nl + 1 + n:
            self._fill()
        payload = bytes(self.buf[nl + 1:nl + 1 + n])
        del self.buf[:nl + 1 + n]
        return hdr, payload

    def expect_eof(self):
        assert not self.buf
        assert self.sock.recv(1) == b""


class Worker:
    def __init__(self, proc, peer, stdout, stderr):
        self.proc, self.peer = proc, peer
        self._stdout, self._stderr = stdout, stderr

    def stderr(self):
        with open(self._stderr) as f:
            return f.read()

    def stdout(self):
        with open(self._stdout) as f:
            return f.read()

    def wait(self, timeout=5):
        return self.proc.wait(timeout=timeout)


def frame(hdr, payload=b""):
    if payload:
        hdr = dict(hdr, len=len(payload))
    return json.dumps(hdr, separators=(",", ":")).encode() + b"\n" + payload


def req(rid, payload=b"", **meta):
    base = {"pipeline": "p", "stage": "s", "attempt": 1, "deadline_ms": 30000}
    return frame({"t": "req", "id": rid, "len": len(payload),
                  "meta": dict(base, **meta)}, payload)


@pytest.fixture
def spawn(tmp_path):
    workers = []

    def start(source, env_extra=None, expect_ready=True):
        script = tmp_path / ("worker%d.py" % len(workers))
        script.write_text(source)
        ours, theirs = socket.socketpair()
        env = dict(os.environ, BATON_FD="3", BATON_PROTO="1", BATON_STAGE="ocr",
                   BATON_REPLICA="2", PYTHONPATH=SDK_DIR)
        env.update(env_extra or {})
        out = tmp_path / ("worker%d.out" % len(workers))
        err = tmp_path / ("worker%d.err" % len(workers))
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen(
                [PYTHON, "-c", LAUNCHER, str(theirs.fileno()), str(script)],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
                stdout=fo, stderr=fe)
        theirs.close()
        w = Worker(proc, Peer(ours), str(out), str(err))
        workers.append(w)
        if expect_ready:
            hdr, payload = w.peer.recv()
            # Fast headers are offered unless the worker is told not to.
            offers = env.get("BW_FAST_HEADERS") != "0"
            assert hdr == dict({"t": "ready", "proto": 1}, **({"fast": 1} if offers else {}))
            assert payload == b""
        return w

    yield start
    for w in workers:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait(timeout=5)
        w.peer.sock.close()


def roundtrip(w, payload, rid="r1", **meta):
    w.peer.sock.sendall(req(rid, payload, **meta))
    hdr, body = w.peer.recv()
    assert hdr["t"] == "res" and hdr["id"] == rid
    return hdr, body


# --- single-item handler -----------------------------------------------------------

def test_request_is_echoed_with_len(spawn):
    w = spawn(SINGLE_WORKER)
    hdr, body = roundtrip(w, b"hello", rid="r42")
    assert hdr == {"t": "res", "id": "r42", "len": 5}
    assert body == b"hello"


def test_empty_payload_and_none_result_answer_len_zero(spawn):
    w = spawn(SINGLE_WORKER)
    w.peer.sock.sendall(frame({"t": "req", "id": "e", "meta": {}}))
    assert w.peer.recv() == ({"t": "res", "id": "e", "len": 0}, b"")
    hdr, body = roundtrip(w, b"none:")
    assert hdr == {"t": "res", "id": "r1", "len": 0} and body == b""


def test_dict_result_is_json_with_content_type_and_state_from_init(spawn):
    w = spawn(SINGLE_WORKER)
    hdr, body = roundtrip(w, b"json:")
    assert hdr["meta"] == {"content_type": "application/json"}
    assert json.loads(body) == {"model": "m1", "stage": "s", "text": "é"}


def test_tuple_result_carries_meta_and_str_is_utf8(spawn):
    w = spawn(SINGLE_WORKER)
    hdr, body = roundtrip(w, b"meta:abc")
    assert hdr["meta"] == {"tag": "x"} and body == b"abc"
    hdr, body = roundtrip(w, "text:żółw".encode())
    assert body == "żółw".encode() and "meta" not in hdr


def test_stage_and_replica_come_from_env(spawn):
    w = spawn(SINGLE_WORKER)
    _, body = roundtrip(w, b"where:")
    assert json.loads(body) == {"stage": "ocr", "replica": 2}


def test_reject_fails_without_retry(spawn):
    w = spawn(SINGLE_WORKER)
    hdr, body = roundtrip(w, b"reject:no faces in image")
    assert hdr == {"t": "res", "id": "r1", "error": "no faces in image", "retry": False}
    assert body == b""


def test_retry_fails_with_retry(spawn):
    w = spawn(SINGLE_WORKER)
    hdr, _ = roundtrip(w, b"retry:gpu busy")
    assert hdr == {"t": "res", "id": "r1", "error": "gpu busy", "retry": True}


def test_unexpected_exception_retries_and_logs_traceback(spawn):
    w = spawn(SINGLE_WORKER)
    hdr, _ = roundtrip(w, b"boom:bad\nthing")
    assert hdr == {"t": "res", "id": "r1", "error": "ValueError: bad\nthing", "retry": True}
    # The worker keeps serving after a failure.
    assert roundtrip(w, b"still here")[1] == b"still here"
    w.peer.sock.sendall(frame({"t": "stop"}))
    assert w.wait() == 0
    err = w.stderr()
    assert "Traceback" in err and "ValueError: bad" in err


def test_unsupported_result_type_is_an_error(spawn):
    w = spawn(SINGLE_WORKER)
    hdr, _ = roundtrip(w, b"bad:")
    assert hdr["retry"] is True and hdr["error"].startswith("TypeError: ")


def test_ping_is_answered_with_same_seq(spawn):
    w = spawn(SINGLE_WORKER)
    w.peer.send({"t": "ping", "seq": 7})
    assert w.peer.recv() == ({"t": "pong", "seq": 7}, b"")


def test_binary_payload_round_trips(spawn):
    w = spawn(SINGLE_WORKER)
    payload = b"\n\n\x00{\"t\":\"req\"}\n\x00" + bytes(range(256)) * 8 + b"\r\n"
    _, body = roundtrip(w, payload)
    assert body == payload


def test_payload_larger_than_the_receive_buffer_round_trips(spawn):
    w = spawn(SINGLE_WORKER)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    # Sent from a thread: the worker only answers once it has it all.
    sender = threading.Thread(target=w.peer.sock.sendall, args=(req("big", payload),))
    sender.start()
    hdr, body = w.peer.recv()
    sender.join(TIMEOUT)
    assert hdr == {"t": "res", "id": "big", "len": len(payload)}
    assert body == payload


def test_printing_on_stdout_does_not_touch_the_protocol(spawn):
    w = spawn(SINGLE_WORKER)
    assert roundtrip(w, b"print:")[1] == b"printed"
    w.peer.send({"t": "stop"})
    assert w.wait() == 0
    assert w.stdout().count("noise") == 100


def test_many_pipelined_requests_are_all_answered(spawn):
    w = spawn(SINGLE_WORKER)
    n = 1000
    data = b"".join(req("r%d" % i, b"x%d" % i * (i % 50)) for i in range(n))
    # A thread sends while we read, so neither side can fill its buffer and stall.
    sender = threading.Thread(target=w.peer.sock.sendall, args=(data,))
    sender.start()
    seen = {}
    for _ in range(n):
        hdr, body = w.peer.recv()
        seen[hdr["id"]] = body
    sender.join(TIMEOUT)
    assert seen == {"r%d" % i: b"x%d" % i * (i % 50) for i in range(n)}


def test_slow_handler_answers_are_not_held_back_for_later_ones(spawn):
    # Answers are coalesced into shared writes only while handlers are fast; the
    # first of three pipelined 1 s requests must not wait for the other two
    # (held back, it would arrive after 3 s; the bound leaves 1 s of slack).
    w = spawn(SINGLE_WORKER)
    t0 = time.monotonic()
    w.peer.sock.sendall(b"".join(req("s%d" % i, b"sleep:1.0") for i in range(3)))
    hdr, _ = w.peer.recv()
    first = time.monotonic() - t0
    assert hdr["id"] == "s0" and first < 2.0, first
    assert [w.peer.recv()[0]["id"] for _ in range(2)] == ["s1", "s2"]


def test_single_handler_is_called_for_each_request_of_a_batch(spawn):
    w = spawn(SINGLE_WORKER)
    w.peer.sock.sendall(frame({"t": "batch", "n": 3}) + req("a", b"1")
                        + req("b", b"reject:no") + req("c", b"3"))
    got = {}
    for _ in range(3):
        hdr, body = w.peer.recv()
        got[hdr["id"]] = (hdr, body)
    assert got["a"][1] == b"1" and got["c"][1] == b"3"
    assert got["b"][0]["retry"] is False


# --- batch handler ----------------------------------------------------------------

def recv_n(w, n):
    got = {}
    for _ in range(n):
        hdr, body = w.peer.recv()
        key = hdr["id"] if hdr["t"] == "res" else hdr["t"]
        assert key not in got, "answered twice"
        got[key] = (hdr, body)
    return got


def test_batch_handler_gets_the_batch_together(spawn):
    w = spawn(BATCH_WORKER)
    w.peer.sock.sendall(frame({"t": "batch", "n": 3}) + req("a", b"x")
                        + req("b", b"y") + req("c", b"z"))
    got = recv_n(w, 3)
    assert {k: v[1] for k, v in got.items()} == {"a": b"X", "b": b"Y", "c": b"Z"}
    assert all(v[0]["meta"] == {"batch": 3, "id": k} for k, v in got.items())


def test_batch_handler_gets_a_lone_request_as_a_list_of_one(spawn):
    w = spawn(BATCH_WORKER)
    hdr, body = roundtrip(w, b"solo")
    assert body == b"SOLO" and hdr["meta"]["batch"] == 1


def test_exception_instance_fails_only_its_item(spawn):
    w = spawn(BATCH_WORKER)
    w.peer.sock.sendall(frame({"t": "batch", "n": 3}) + req("a", b"x")
                        + req("b", b"reject") + req("c", b"z"))
    got = recv_n(w, 3)
    assert got["b"][0] == {"t": "res", "id": "b", "error": "bad item", "retry": False}
    assert got["a"][1] == b"X" and got["c"][1] == b"Z"


def test_batch_handler_exception_fails_every_item(spawn):
    w = spawn(BATCH_WORKER)
    w.peer.sock.sendall(frame({"t": "batch", "n": 2}) + req("a", b"x")
                        + req("b", b"fail-all"))
    got = recv_n(w, 2)
    assert all(v[0]["error"] == "whole batch" and v[0]["retry"] is True
               for v in got.values())
    w.peer.sock.sendall(frame({"t": "batch", "n": 2}) + req("c", b"crash-all")
                        + req("d", b"x"))
    got = recv_n(w, 2)
    assert all(v[0]["error"] == "RuntimeError: model fell over" and v[0]["retry"]
               for v in got.values())


def test_ping_inside_a_batch_is_answered(spawn):
    w = spawn(BATCH_WORKER)
    w.peer.sock.sendall(frame({"t": "batch", "n": 2}) + req("a", b"x")
                        + frame({"t": "ping", "seq": 9}) + req("b", b"y"))
    got = recv_n(w, 3)
    assert got["pong"][0] == {"t": "pong", "seq": 9}
    assert got["a"][1] == b"X" and got["b"][1] == b"Y"


# --- life cycle -------------------------------------------------------------------

def test_stop_answers_what_was_sent_then_exits_zero(spawn):
    w = spawn(ECHO_WORKER)
    w.peer.sock.sendall(b"".join(req("r%d" % i, b"p%d" % i) for i in range(10))
                        + frame({"t": "stop"}))
    got = recv_n(w, 10)
    assert sorted(got) == sorted("r%d" % i for i in range(10))
    w.peer.expect_eof()
    assert w.wait(timeout=5) == 0


def test_eof_exits_zero_quietly(spawn):
    w = spawn(ECHO_WORKER)
    w.peer.sock.close()
    assert w.wait(timeout=5) == 0
    assert w.stderr() == ""


def test_sigterm_ends_a_busy_worker_at_once(spawn):
    w = spawn(SINGLE_WORKER)
    w.peer.sock.sendall(req("long", b"sleep:30"))
    w.proc.send_signal(signal.SIGTERM)
    assert w.wait(timeout=5) == -signal.SIGTERM


def test_unknown_message_type_is_skipped_with_its_payload(spawn):
    w = spawn(ECHO_WORKER)
    w.peer.sock.sendall(frame({"t": "future"}, b"skip\nme") + req("r1", b"ok"))
    assert w.peer.recv() == ({"t": "res", "id": "r1", "len": 2}, b"ok")
    assert "unknown message type" in w.stderr()


def test_header_of_exactly_64k_is_accepted(spawn):
    w = spawn(ECHO_WORKER)
    head = {"t": "req", "id": "edge", "len": 1, "meta": {"pad": ""}}
    size = len(json.dumps(head, separators=(",", ":"))) + 1
    head["meta"]["pad"] = "a" * (MAX_HEADER - size)
    data = frame(head, b"!")
    assert data.index(b"\n") + 1 == MAX_HEADER
    w.peer.sock.sendall(data)
    assert w.peer.recv() == ({"t": "res", "id": "edge", "len": 1}, b"!")


def test_header_over_64k_exits_2(spawn):
    w = spawn(ECHO_WORKER)
    w.peer.sock.sendall(b'{"t":"req","id":"x","meta":{"pad":"' + b"a" * MAX_HEADER)
    assert w.wait(timeout=5) == 2
    assert "protocol error" in w.stderr()


def test_non_json_header_exits_2(spawn):
    w = spawn(ECHO_WORKER)
    w.peer.sock.sendall(b"hello baton\n")
    assert w.wait(timeout=5) == 2
    assert "not JSON" in w.stderr()


def test_batch_interrupted_by_other_message_exits_2(spawn):
    w = spawn(BATCH_WORKER)
    w.peer.sock.sendall(frame({"t": "batch", "n": 2}) + req("a", b"x")
                        + frame({"t": "stop"}))
    assert w.wait(timeout=5) == 2


def test_failing_init_exits_1_without_ready(spawn):
    w = spawn(BAD_INIT_WORKER, expect_ready=False)
    with pytest.raises(EOFError):
        w.peer.recv()
    assert w.wait(timeout=5) == 1
    assert "weights not found" in w.stderr()


def test_started_by_hand_says_so_and_exits_2(tmp_path):
    script = tmp_path / "w.py"
    script.write_text(ECHO_WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env["PYTHONPATH"] = SDK_DIR
    p = subprocess.run([PYTHON, str(script)], env=env, capture_output=True, text=True,
                       timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert p.returncode == 2
    assert "this is a baton worker; run it under `baton serve`" in p.stderr


# --- fast headers (docs/protocol.md#fast-headers) ------------------------------

FAST = struct.Struct("<BBBBIQ")


def fast_req(rid, payload=b"", **meta):
    base = {"pipeline": "p", "stage": "s", "attempt": 1, "deadline_ms": 30000}
    m = json.dumps(dict(base, **meta), separators=(",", ":")).encode()
    return FAST.pack(0xBA, ord("q"), 0, len(rid), len(m), len(payload)) + rid.encode() + m \
        + payload


def recv_fast(peer):
    """(kind, flags, id, meta or None, payload) of the next frame, which must be fast."""
    while len(peer.buf) < 16:
        peer._fill()
    magic, kind, flags, idlen, mlen, n = FAST.unpack_from(peer.buf)
    assert magic == 0xBA, bytes(peer.buf[:40])
    while len(peer.buf) < 16 + idlen + mlen + n:
        peer._fill()
    at = 16 + idlen + mlen
    rid = bytes(peer.buf[16:16 + idlen]).decode()
    meta = json.loads(bytes(peer.buf[16 + idlen:at])) if mlen else None
    payload = bytes(peer.buf[at:at + n])
    del peer.buf[:at + n]
    return chr(kind), flags, rid, meta, payload


def test_fast_requests_get_fast_answers_after_json_ones_got_json(spawn):
    w = spawn(SINGLE_WORKER)
    # Before baton sent a fast header, answers are JSON (an older baton).
    assert roundtrip(w, b"first")[1] == b"first"
    w.peer.sock.sendall(fast_req("r9", b"hello"))
    assert recv_fast(w.peer) == ("r", 0, "r9", None, b"hello")
    w.peer.sock.sendall(fast_req("r10", b"meta:abc"))
    assert recv_fast(w.peer) == ("r", 0, "r10", {"tag": "x"}, b"abc")
    w.peer.sock.sendall(fast_req("r11", b"json:", stage="ocr"))
    kind, _, _, meta, body = recv_fast(w.peer)
    assert meta == {"content_type": "application/json"} and json.loads(body)["stage"] == "ocr"
    w.peer.sock.sendall(fast_req("r12", b"reject:no \xc3\xa9"))
    assert recv_fast(w.peer) == ("e", 0, "r12", None, "no é".encode())
    w.peer.sock.sendall(fast_req("r13", b"retry:later"))
    assert recv_fast(w.peer) == ("e", 1, "r13", None, b"later")
    # Pings stay JSON; a JSON request now gets a fast answer (baton accepts both).
    w.peer.send({"t": "ping", "seq": 3})
    assert w.peer.recv() == ({"t": "pong", "seq": 3}, b"")
    w.peer.sock.sendall(req("r14", b"late json"))
    assert recv_fast(w.peer) == ("r", 0, "r14", None, b"late json")


def test_fast_requests_inside_a_batch(spawn):
    w = spawn(BATCH_WORKER)
    w.peer.sock.sendall(frame({"t": "batch", "n": 2}) + fast_req("a", b"x") + fast_req("b", b"y"))
    got = sorted(recv_fast(w.peer)[2] for _ in range(2))
    assert got == ["a", "b"]


def test_malformed_fast_request_exits_2(spawn):
    w = spawn(ECHO_WORKER)
    bad = bytearray(fast_req("r1", b"x"))
    bad[1] = ord("r")   # a fast "res" sent to a worker
    w.peer.sock.sendall(bytes(bad))
    assert w.wait(timeout=5) == 2
    assert "bad fast header" in w.stderr()


def test_a_worker_told_not_to_offer_fast_headers_reads_none(spawn):
    w = spawn(ECHO_WORKER, env_extra={"BW_FAST_HEADERS": "0"})
    assert roundtrip(w, b"plain")[1] == b"plain"
    w.peer.sock.sendall(fast_req("r1", b"x"))   # baton would never: it was not offered
    assert w.wait(timeout=5) == 2
    assert "did not offer" in w.stderr()
