"""The source side of both worker SDKs (bw.run_source, baton_source_*) against
a harness that plays baton: a socketpair whose far end is the source's fd 3.

No daemon here. Each test starts a source whose command-line arguments are a
script of actions (tests/e2e/c_source.c says what each does; SOURCE_PY below
is its Python twin), then speaks protocol v1 from baton's end: reads "ready",
grants credit, reads emit/eos frames, sends stop. Every test runs once per
SDK. Every wait is bounded by a socket timeout or a process wait timeout.
"""

import json
import os
import select
import socket
import subprocess

import pytest

from conftest import BUILD, PYTHON, SDK_PY, SLOW

C_SOURCE = os.path.join(BUILD, "tests", "c_source")
TIMEOUT = 10.0 * SLOW

SOURCE_PY = r'''
import sys
import baton_worker as bw

def ev(*a):
    print("ev:", *a, file=sys.stderr, flush=True)

def produce(src, state):
    assert state == {"loaded": True}
    nxt = 1
    def emit_one():
        nonlocal nxt
        payload = b"item-%d\n\x00\xff" % nxt
        if src.emit(payload, {"i": nxt, "content_type": "application/octet-stream"}):
            nxt += 1
            return True
        ev("stopped before %d" % nxt)
        return False
    for act in sys.argv[1:]:
        if act.startswith("emit:"):
            for _ in range(int(act[5:])):
                if not emit_one():
                    break
        elif act == "emit-forever":
            while emit_one():
                pass
        elif act == "eos" or act.startswith("eos:"):
            ev("eos -> %d" % src.eos(act[4:] if act.startswith("eos:") else None))
        elif act == "whoami":
            src.emit("%s|%s" % (src.url, src.station))
        elif act == "badmeta":
            got = []
            for meta in ([1], "{"):
                try:
                    src.emit(b"x", meta)
                    got.append("sent")
                except TypeError:
                    got.append("TypeError")
            ev("badmeta", *got)
        elif act == "wait-stop":
            while src.poll(None):
                pass
            ev("stop seen 0 stopping=%d" % src.stopping)
        elif act.startswith("return:"):
            return
        elif act == "raise":
            raise RuntimeError("the camera is unplugged")
    ev("done")

bw.run_source(produce, init=lambda: {"loaded": True})
'''


class Harness:
    """baton's end of one source's channel."""

    def __init__(self, tmp_path, sdk, script, env=None):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = ours
        self.sock.settimeout(TIMEOUT)
        self.buf = bytearray()
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "BATON_FD": "3", "BATON_PROTO": "1", "BATON_STAGE": "camera",
                    "BATON_REPLICA": "1", "PYTHONPATH": SDK_PY}
        full_env.update(env or {})
        if sdk == "c":
            argv = [C_SOURCE] + script
        else:
            path = os.path.join(str(tmp_path), "source.py")
            with open(path, "w") as f:
                f.write(SOURCE_PY)
            argv = [PYTHON, path] + script
        self.errpath = os.path.join(str(tmp_path), "source.err")
        self.errf = open(self.errpath, "wb")
        fd = theirs.fileno()
        # fd 3 in the child, as baton gives it; close_fds then keeps only it.
        self.proc = subprocess.Popen(argv, env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.errf,
                                     pass_fds=(3,) if fd != 3 else (fd,),
                                     preexec_fn=(lambda: os.dup2(fd, 3)) if fd != 3 else None)
        theirs.close()

    def send(self, hdr, payload=b""):
        if payload:
            hdr = dict(hdr, len=len(payload))
        self.sock.sendall(json.dumps(hdr).encode() + b"\n" + payload)

    def _fill(self):
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def read(self):
        """The next message: (header, payload), "len" dropped when 0 (the SDKs
        may write it or not); (None, b"") at EOF."""
        while b"\n" not in self.buf:
            if not self._fill():
                assert not self.buf, "EOF inside a header: %r" % bytes(self.buf)
                return None, b""
        nl = self.buf.index(b"\n")
        hdr = json.loads(bytes(self.buf[:nl]))
        n = hdr.get("len", 0)
        while len(self.buf) < nl + 1 + n:
            assert self._fill(), "EOF inside a payload"
        body = bytes(self.buf[nl + 1:nl + 1 + n])
        del self.buf[:nl + 1 + n]
        if n == 0:
            hdr.pop("len", None)
        return hdr, body

    def ready(self):
        hdr, body = self.read()
        assert hdr == {"t": "ready", "proto": 1} and body == b"", hdr

    def quiet_for(self, seconds):
        """True if nothing arrives for seconds: the only way to see a source
        hold back. Short, and a wrong answer shows up at once, not late."""
        if self.buf:
            return False
        r, _, _ = select.select([self.sock], [], [], seconds)
        return not r

    def wait(self):
        try:
            return self.proc.wait(TIMEOUT)
        finally:
            self.errf.close()

    def events(self):
        with open(self.errpath, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        return [l[4:] for l in text.splitlines() if l.startswith("ev: ")], text

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self.errf.closed:
            self.errf.close()
        self.sock.close()


@pytest.fixture(params=["python", "c"])
def source(request, tmp_path):
    made = []

    def start(script, env=None):
        h = Harness(tmp_path, request.param, script, env)
        made.append(h)
        return h

    start.sdk = request.param
    yield start
    for h in made:
        h.close()


def item(i):
    return b"item-%d\n\x00\xff" % i


def test_source_sends_ready_then_emits_only_what_credit_allows(source):
    h = source(["emit:5", "wait-stop"])
    h.ready()
    assert h.quiet_for(0.3), "emitted before any credit"
    h.send({"t": "credit", "n": 2})
    for i in (1, 2):
        hdr, body = h.read()
        assert hdr == {"t": "emit", "len": len(item(i)),
                       "meta": {"i": i, "content_type": "application/octet-stream"}}, hdr
        assert body == item(i)
    assert h.quiet_for(0.3), "emitted a third item with a credit of 2"
    h.send({"t": "credit", "n": 3})
    assert [h.read()[1] for _ in range(3)] == [item(3), item(4), item(5)]
    h.send({"t": "stop"})
    assert h.read() == (None, b"")
    assert h.wait() == 0
    ev, text = h.events()
    assert ev == ["stop seen 0 stopping=1", "done"] + (["run returned 0"] if source.sdk == "c" else []), text


def test_stop_while_waiting_for_credit_makes_emit_return_false(source):
    h = source(["emit:3", "wait-stop"])
    h.ready()
    h.send({"t": "credit", "n": 1})
    assert h.read()[1] == item(1)
    h.send({"t": "stop"})
    assert h.read() == (None, b"")   # nothing more is emitted after stop
    assert h.wait() == 0
    ev, text = h.events()
    assert ev[0] == "stopped before 2", text
    assert "done" in ev


def test_unlimited_credit_needs_no_more_credit_and_stop_ends_it(source):
    h = source(["emit-forever"])
    h.ready()
    h.send({"t": "credit", "n": -1})
    for i in range(1, 201):
        hdr, body = h.read()
        assert hdr["t"] == "emit" and hdr["meta"]["i"] == i and body == item(i), hdr
    h.send({"t": "stop"})
    # Items already in flight are read out; then the channel closes. The
    # socket buffers hold far fewer than 100,000 of them.
    last = 200
    while True:
        hdr, body = h.read()
        if hdr is None:
            break
        last += 1
        assert hdr["meta"]["i"] == last and body == item(last)
        assert last < 100200, "still emitting long after stop"
    assert h.wait() == 0
    ev, text = h.events()
    assert ev[0] == "stopped before %d" % (last + 1), text


def test_eos_frames_with_and_without_session_need_no_credit(source):
    h = source(["eos", "eos:order 384/é", "emit:1", "eos", "wait-stop"])
    h.ready()
    assert h.read()[0] == {"t": "eos"}
    hdr, _ = h.read()
    assert hdr == {"t": "eos", "session": "order 384/é"}, hdr
    h.send({"t": "credit", "n": 1})
    assert h.read()[1] == item(1)
    assert h.read()[0] == {"t": "eos"}
    h.send({"t": "stop"})
    assert h.wait() == 0
    ev, text = h.events()
    assert ev[:3] == ["eos -> 1"] * 3, text


def test_unknown_messages_and_payloads_from_baton_are_skipped(source):
    h = source(["emit:2", "wait-stop"])
    h.ready()
    # An unknown type with a payload that looks like a header, a req (not for
    # sources), then credit in two messages that arrive in one write.
    h.send({"t": "newfangled", "x": 1}, b'{"t":"stop"}\n')
    h.send({"t": "req", "id": "r1"}, b"ignored")
    h.sock.sendall(b'{"t":"credit","n":1}\n{"t":"credit","n":1}\n')
    assert [h.read()[1] for _ in range(2)] == [item(1), item(2)]
    h.send({"t": "ping", "seq": 7})
    hdr, _ = h.read()
    assert hdr["t"] == "pong" and hdr["seq"] == 7, hdr
    h.send({"t": "stop"})
    assert h.wait() == 0


def test_url_and_station_come_from_the_environment(source):
    h = source(["whoami", "wait-stop"],
               env={"BATON_SOURCE_URL": "rtsp://127.0.0.1:8554/s1", "BATON_STATION": "station1"})
    h.ready()
    h.send({"t": "credit", "n": 1})
    hdr, body = h.read()
    assert body == b"rtsp://127.0.0.1:8554/s1|station1" and "meta" not in hdr, (hdr, body)
    h.send({"t": "stop"})
    assert h.wait() == 0


def test_bad_meta_is_refused_without_sending_anything(source):
    h = source(["badmeta", "emit:1", "wait-stop"])
    h.ready()
    h.send({"t": "credit", "n": 1})
    hdr, body = h.read()
    assert hdr["t"] == "emit" and body == item(1), (hdr, body)  # the bad ones sent nothing
    h.send({"t": "stop"})
    assert h.wait() == 0
    ev, text = h.events()
    expect = "badmeta TypeError TypeError" if source.sdk == "python" else "badmeta -22 -22"
    assert ev[0] == expect, text


def test_baton_closing_the_channel_while_the_source_waits_ends_it_cleanly(source):
    h = source(["emit:3", "return:0"])
    h.ready()
    h.send({"t": "credit", "n": 1})
    assert h.read()[1] == item(1)
    h.sock.shutdown(socket.SHUT_RDWR)
    assert h.wait() == 0
    ev, text = h.events()
    if source.sdk == "c":   # C: emit returned 0 and produce went on to its end
        assert ev[0] == "stopped before 2", text


def test_a_malformed_credit_from_baton_is_a_protocol_error(source):
    h = source(["emit:1"])
    h.ready()
    h.send({"t": "credit", "n": "lots"})
    code = h.wait()
    ev, text = h.events()
    if source.sdk == "python":   # exit 2, as for any protocol error from baton
        assert code == 2 and "protocol error from baton: credit without a valid n" in text, text
    else:                        # emit returns -EPROTO, and the program says so
        assert code == 1 and "credit without a valid n" in text and "emit error -71" in text, text


def test_python_produce_that_raises_exits_1_with_the_traceback(tmp_path):
    h = Harness(tmp_path, "python", ["raise"])
    try:
        h.ready()
        assert h.wait() == 1
        _, text = h.events()
        assert "produce() failed" in text and "the camera is unplugged" in text, text
    finally:
        h.close()


def test_sources_refuse_to_run_outside_baton(tmp_path):
    path = os.path.join(str(tmp_path), "source.py")
    with open(path, "w") as f:
        f.write(SOURCE_PY)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": SDK_PY}
    py = subprocess.run([PYTHON, path, "emit:1"], env=env, capture_output=True,
                        timeout=TIMEOUT)
    assert py.returncode == 2 and b"baton" in py.stderr, py
    c = subprocess.run([C_SOURCE, "emit:1"], env=env, capture_output=True, timeout=TIMEOUT)
    assert c.returncode == 1 and b"run returned -107" in c.stderr, c  # -ENOTCONN
