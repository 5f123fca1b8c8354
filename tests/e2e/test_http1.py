"""baton's own HTTP/1.1 server (src/http/h1.c, h1conn.c) over raw sockets:
pipelined requests answered in order, keep-alive, chunked request bodies,
Expect: 100-continue, HEAD, and HTTP/1.0's one request per connection."""
import socket

from conftest import SLOW, config, fake_stage


def connect(b):
    return socket.create_connection(("127.0.0.1", b.port), timeout=20 * SLOW)


class Reader:
    """Reads answers off one connection, each framed by its Content-Length."""

    def __init__(self, s):
        self.s = s
        self.buf = b""

    def fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise EOFError("closed with %r unread" % self.buf[:200])
        self.buf += chunk

    def answer(self, head_only=False):
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = 0 if head_only or status == 100 else int(headers["content-length"])
        while len(self.buf) < n:
            self.fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed(self):
        """True when baton closes the connection with nothing more sent."""
        try:
            return self.s.recv(1) == b"" and self.buf == b""
        except ConnectionResetError:
            return self.buf == b""


def post(path, body, extra=b""):
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n" %
            (path, len(body), extra)) + body


def test_pipelined_requests_are_answered_in_order_on_one_connection(baton):
    b = baton(config(fake_stage("w", replicas="{initial: 2}"), {"p": ["w"]}))
    s = connect(b)
    r = Reader(s)
    # The first runs longest: answers must still come in the order asked.
    s.sendall(post(b"/v1/pipelines/p", b"slow:300") + post(b"/v1/pipelines/p", b"second") +
              b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" +
              post(b"/v1/pipelines/p", b"fourth"))
    got = [r.answer() for _ in range(4)]
    assert [g[0] for g in got] == [200] * 4, got
    assert [g[2] for g in got] == [b"slow:300", b"second", b"", b"fourth"], got
    assert all(g[1].get("connection") != "close" for g in got), got
    # The same connection serves on, request after request.
    for i in range(30):
        s.sendall(post(b"/v1/pipelines/p", b"n%d" % i))
        assert r.answer()[2] == b"n%d" % i
    s.close()
    assert b.status()["requests"]["succeeded"] == 33
    assert b.stop() == 0


def test_requests_that_arrive_in_many_pieces_are_read_once(baton):
    # A head cut into pieces, each its own read, some while the request
    # before runs: what is kept between reads is kept once (it was appended
    # to itself when a read used none of it, and the request was garbled).
    import time
    b = baton(config(fake_stage("w"), {"p": ["w"]}))
    s = connect(b)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r = Reader(s)
    data = (post(b"/v1/pipelines/p", b"slow:200") + post(b"/v1/pipelines/p", b"in pieces") +
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    for i in range(0, len(data), 9):
        s.sendall(data[i:i + 9])
        time.sleep(0.01)  # apart, so that each is a read of its own
    got = [r.answer() for _ in range(3)]
    assert [(g[0], g[2]) for g in got] == [(200, b"slow:200"), (200, b"in pieces"), (200, b"")], got
    s.settimeout(0.5)
    try:
        extra = s.recv(100)
    except socket.timeout:
        extra = b""
    assert extra == b"", extra
    s.close()
    assert b.status()["requests"]["accepted"] == 2
    assert b.stop() == 0


def test_chunked_bodies_and_their_errors(baton):
    b = baton(config(fake_stage("w"), {"p": ["w"]}))
    s = connect(b)
    r = Reader(s)
    s.sendall(b"POST /v1/pipelines/p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nTrailer-Field: dropped\r\n\r\n")
    status, headers, body = r.answer()
    assert status == 200 and body == b"hello world", (status, body)
    # A chunk longer than its size: 400 with a sentence, and the connection ends.
    s.sendall(b"POST /v1/pipelines/p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhelloEXTRA\r\n0\r\n\r\n")
    status, headers, body = r.answer()
    assert status == 400 and b"longer than its size" in body, (status, body)
    assert headers["connection"] == "close"
    assert r.closed()
    assert b.status()["requests"]["accepted"] == 1
    assert b.stop() == 0


def test_expect_continue_head_and_http10(baton):
    b = baton(config(fake_stage("w"), {"p": ["w"]}))
    s = connect(b)
    r = Reader(s)
    s.sendall(b"POST /v1/pipelines/p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
              b"Content-Length: 5\r\n\r\n")
    assert r.answer()[0] == 100  # asked for before the body is sent
    s.sendall(b"hello")
    status, _, body = r.answer()
    assert status == 200 and body == b"hello"
    # HEAD: the headers GET would get, no body; the connection goes on.
    s.sendall(b"HEAD /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = r.answer(head_only=True)
    assert status == 200 and int(headers["content-length"]) > 100, headers
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.answer()[0] == 200
    s.close()
    # HTTP/1.0: one request, then closed; with keep-alive asked for, more.
    s = connect(b)
    r = Reader(s)
    s.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    assert r.answer()[0] == 200 and r.closed()
    s = connect(b)
    r = Reader(s)
    for _ in range(2):
        s.sendall(b"GET /v2/health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = r.answer()
        assert status == 200 and headers["connection"] == "keep-alive", headers
    s.close()
    assert b.stop() == 0


def test_a_request_whose_client_closes_while_it_waits_never_runs(baton, tmp_path):
    # The replica is held; six clients post and close their sockets while
    # their requests wait in the queue: the requests leave the queue then
    # (cancelled, as nginx's 499), instead of running for nobody later.
    from conftest import Gate, wait_for
    b = baton(config(fake_stage("w", max_ongoing=1), {"p": ["w"]}))
    with Gate(tmp_path) as gate:
        held = []
        threads = gate.hold(b, 1, held)
        wait_for(lambda: b.status()["stages"]["w"]["running"] == 1, 30 * SLOW)
        socks = []
        for i in range(6):
            s = connect(b)
            s.sendall(post(b"/v1/pipelines/p", b"gone-%d" % i))
            socks.append(s)
        wait_for(lambda: b.status()["stages"]["w"]["queued"] == 6, 30 * SLOW, what="6 queued")
        for s in socks:
            s.close()
        wait_for(lambda: b.status()["stages"]["w"]["queued"] == 0, 30 * SLOW,
                 what="the closed clients' requests to leave the queue")
        st = b.status()
        assert st["stages"]["w"]["running"] == 1, st["stages"]["w"]
        assert st["pipelines"]["p"]["failures"].get("cancelled") == 6, st["pipelines"]["p"]
    for t in threads:
        t.join(30 * SLOW)
    assert held and held[0].status == 200, held
    # Only the held request ran; an honest one after it is served.
    assert b.post("p", "after").status == 200
    assert b.status()["stages"]["w"]["completed"] == 2
    r = b.status()["requests"]
    assert r["accepted"] == r["succeeded"] + r["failed"] + r["in_flight"] == 8, r


def trickle(s, r, pieces):
    """Sends pieces one at a time, 0.2 s apart, until baton answers (the
    answer) or closes the connection (None)."""
    for piece in pieces:
        try:
            s.send(piece)
        except OSError:
            return None  # closed after its answer
        s.settimeout(0.2)
        try:
            return r.answer()
        except socket.timeout:
            pass
    return None


def test_a_head_that_trickles_in_is_cut_off_after_idle_timeout_s(baton):
    # Slowloris: one byte of the head at a time, never idle for long; then
    # empty lines (which may come before a request) one at a time. The head
    # must all be in within idle_timeout_s of its first byte: 408, and the
    # connection's slot is freed (max_connections is 1 here).
    b = baton("http: {max_connections: 1, idle_timeout_s: 1}\n" +
              config(fake_stage("w"), {"p": ["w"]}))
    s = connect(b)
    r = Reader(s)
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: y\r\n" * 400
    for pieces in ([head[i:i + 1] for i in range(len(head))], [b"\r\n"] * len(head)):
        got = trickle(s, r, pieces[:int(100 * SLOW)])  # at 0.2 s each: 20 s at most, far over 1 s
        assert got and got[0] == 408 and b"did not all arrive" in got[2], got
        s.settimeout(20 * SLOW)
        assert r.closed()
        s.close()
        s = connect(b)
        r = Reader(s)
    s.close()
    # The one connection allowed is free again.
    s = connect(b)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert Reader(s).answer()[0] == 200
    s.close()
    assert b.stop() == 0


def test_a_body_that_trickles_in_is_cut_off_and_a_slow_one_is_not(baton):
    # A body gets idle_timeout_s, and a second more per 500 bytes that came:
    # 5 bytes a second is cut off (408), a body faster than 500 is not.
    import time
    b = baton("http: {idle_timeout_s: 1}\n" + config(fake_stage("w"), {"p": ["w"]}))
    s = connect(b)
    r = Reader(s)
    s.sendall(b"POST /v1/pipelines/p HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    got = trickle(s, r, [b"z"] * int(150 * SLOW))  # at 0.2 s a byte: 30 s at most
    assert got and got[0] == 408 and b"500 bytes a second" in got[2], got
    s.close()
    # 1000 bytes at once, then 1000 every 0.5 s (2000 a second): 2 s, past
    # idle_timeout_s, and each 1000 bytes buys 2 s more.
    s = connect(b)
    s.sendall(b"POST /v1/pipelines/p HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" +
              b"y" * 1000)
    for _ in range(4):
        time.sleep(0.5)
        s.sendall(b"y" * 1000)
    status, _, body = Reader(s).answer()
    assert status == 200 and body == b"y" * 5000, (status, body[:100])
    s.close()
    assert b.stop() == 0


def test_a_chunked_body_over_max_request_bytes_is_refused_before_its_end(baton):
    # Chunked, the size is not known up front: the 413 must come as soon as
    # the body passes the limit, not after a body that may never end.
    import threading
    b = baton("max_request_bytes: 65536\n" + config(fake_stage("w"), {"p": ["w"]}))
    s = connect(b)
    r = Reader(s)
    s.sendall(b"POST /v1/pipelines/p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"4000\r\n" + b"z" * 0x4000 + b"\r\n"

    def pump():  # 16 MiB at most, and never the last chunk
        try:
            for _ in range(1024):
                s.sendall(chunk)
        except OSError:
            pass  # baton closed after its answer
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    status, headers, body = r.answer()
    assert status == 413 and b"max_request_bytes (65536)" in body, (status, body)
    assert headers["connection"] == "close"
    s.close()
    t.join(30 * SLOW)
    assert b.post("p", "after").status == 200
    assert b.status()["requests"]["accepted"] == 1
    assert b.stop() == 0


def test_a_half_closed_client_gets_answers_given_at_once_and_not_those_that_wait(baton):
    # shutdown(SHUT_WR) after a request, as docs/operations.md says: taken as
    # gone (nginx's 499) when the request waits for a worker.
    b = baton(config(fake_stage("w"), {"p": ["w"]}))
    s = connect(b)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    r = Reader(s)
    assert r.answer()[0] == 200 and r.closed()
    s = connect(b)
    s.sendall(post(b"/v1/pipelines/p", b"slow:1000"))  # its EOF is read long before
    s.shutdown(socket.SHUT_WR)
    assert Reader(s).closed()
    assert b.post("p", "after").status == 200
    assert b.stop() == 0
