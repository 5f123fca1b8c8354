#!/usr/bin/python3
"""The Python worker of the large-payload tests (tests/e2e/test_shm.py).

It answers each request with its own payload, unchanged, and appends to the
request's content_type a letter saying how the payload reached it: "m" for a
memoryview (a memfd, with SHM_VIEWS=1), "b" for bytes; so the answer's
Content-Type after three stages is "application/x-hops-mmm". Payloads that
begin with a command choose something else:
  crash      SIGKILL itself while holding the request (and its memfd)
  unsealed   answer with a memfd that is not sealed (a protocol violation)
SHM_GATE=PATH holds every request until the file PATH exists.
SHM_CRASH_ONCE=PATH: SIGKILL itself holding the first request, unless the
file PATH exists (it makes it first), so that the request is retried.
SHM_V2_LAST=1 answers a v2 request of one binary input x with the binary
output out_x holding x's bytes, and rejects a payload whose length is not
exactly its JSON header plus x (more bytes would mean a worker sees memory
beyond its range). It also records, in the output's parameters, what this
process holds of the client's object (SHM_KEY): its descriptors (none: the
SDK closes them) and its mappings (r--s: read-only, and their size).
SHM_V2_SDK=1 answers the same through bw.v2.parse and bw.v2.response, and
records the anonymous memory that cost (SHM_RSS_FILE).
SHM_V2_FANOUT=N answers x as N outputs out_0 ... out_{N-1} the same way.
SHM_VIEWS=1 runs with bw.run(..., views=True); RAW=1 speaks protocol v1
without the SDK and never announces memfds (an old worker).
"""
import array
import json
import os
import signal
import socket
import sys
import time


def kind_meta(payload, meta):
    ct = meta.get("content_type") or "application/x-hops-"
    out = {"content_type": ct + ("m" if isinstance(payload, memoryview) else "b")}
    if "v2_header_length" in meta:  # the payload is passed on unchanged: so is its framing
        out["v2_header_length"] = meta["v2_header_length"]
    return out


def unsealed_answer(rid, payload):
    """Writes, behind the SDK's back, an answer in an unsealed memfd."""
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, bytes(payload))
    head = json.dumps({"t": "res", "id": rid, "memfd": len(payload)}).encode() + b"\n"
    s = socket.socket(fileno=os.dup(int(os.environ["BATON_FD"])))
    s.sendmsg([head], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    s.detach()
    os.close(fd)


def v2_last(payload, meta):
    import baton_worker as bw
    hl = meta["v2_header_length"]
    req = json.loads(bytes(payload[:hl]))
    size = req["inputs"][0]["parameters"]["binary_data_size"]
    if len(payload) != hl + size:
        raise bw.Reject("payload of %d bytes, not %d + %d" % (len(payload), hl, size))
    key = os.environ.get("SHM_KEY", "")
    maps = []
    with open("/proc/self/maps") as f:
        for line in f:
            if key and line.rstrip().endswith("/dev/shm" + key):
                span, perms = line.split()[:2]
                lo, hi = (int(x, 16) for x in span.split("-"))
                maps.append([perms, hi - lo])
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if key and os.readlink("/proc/self/fd/" + fd).endswith(key):
                fds.append(fd)
        except OSError:
            pass
    head = json.dumps({"outputs": [{"name": "out_x", "datatype": "UINT8", "shape": [size],
                                    "parameters": {"binary_data_size": size, "maps": maps,
                                                   "fds": fds,
                                                   "view": isinstance(payload, memoryview)}}]}
                      ).encode()
    return b"".join((head, payload[hl:])), {"content_type": "application/octet-stream",
                                            "v2_header_length": len(head)}


def rss_anon_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def v2_sdk(payload, meta):
    """The last stage through the SDK's v2 helpers: x back as out_x. Appends
    to SHM_RSS_FILE how much anonymous memory the answer made this process
    hold (a copy of x in parse or in response would show as x's size)."""
    import baton_worker as bw
    before = rss_anon_kb()
    req = bw.v2.parse(payload, meta)
    x = req.input("x")
    result = bw.v2.response([bw.v2.Tensor("out_x", "UINT8", x.shape, raw=x.raw)], req)
    with open(os.environ["SHM_RSS_FILE"], "a") as f:
        f.write("%d %s\n" % (rss_anon_kb() - before, type(x.raw).__name__))
    return result


def v2_fanout(payload, meta):
    """x back as out_0 ... out_{N-1} (SHM_V2_FANOUT=N) through the SDK's v2
    helpers, each into the place the request gave it, if any."""
    import baton_worker as bw
    req = bw.v2.parse(payload, meta)
    x = req.input("x")
    n = int(os.environ["SHM_V2_FANOUT"])
    return bw.v2.response([bw.v2.Tensor("out_%d" % i, "UINT8", x.shape, raw=x.raw)
                           for i in range(n)], req)


def run_sdk():
    import baton_worker as bw

    gate = os.environ.get("SHM_GATE")

    @bw.batch_handler
    def handle(requests):
        out = []
        for r in requests:
            for _ in range(6000):   # at most 60 s: a test that forgets its gate ends
                if not gate or os.path.exists(gate):
                    break
                time.sleep(0.01)
            head = bytes(r.payload[:8])
            once = os.environ.get("SHM_CRASH_ONCE")
            if once and not os.path.exists(once):
                open(once, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            if head.startswith(b"crash"):
                os.kill(os.getpid(), signal.SIGKILL)
            if head.startswith(b"unsealed"):
                unsealed_answer(r.id, r.payload)
                signal.pause()      # baton kills us for it
            if os.environ.get("SHM_V2_FANOUT"):
                out.append(v2_fanout(r.payload, r.meta))
                continue
            if os.environ.get("SHM_V2_SDK") == "1":
                out.append(v2_sdk(r.payload, r.meta))
                continue
            if os.environ.get("SHM_V2_LAST") == "1":
                try:
                    out.append(v2_last(r.payload, r.meta))
                except bw.Reject as e:
                    out.append(e)
                continue
            out.append((r.payload, kind_meta(r.payload, r.meta)))
        return out

    bw.run(handle, views=os.environ.get("SHM_VIEWS") == "1")


def run_raw():
    """A worker written before memfds: readline + read(n), bytes only."""
    s = socket.socket(fileno=int(os.environ["BATON_FD"]))
    r = s.makefile("rb")

    def send(hdr, payload=b""):
        hdr["len"] = len(payload)
        s.sendall(json.dumps(hdr, separators=(",", ":")).encode() + b"\n" + payload)

    send({"t": "ready", "proto": 1})
    while True:
        line = r.readline()
        if not line:
            return
        hdr = json.loads(line)
        body = r.read(hdr.get("len", 0))
        if hdr["t"] == "req":
            send({"t": "res", "id": hdr["id"], "meta": kind_meta(body, hdr.get("meta", {}))},
                 body)
        elif hdr["t"] == "ping":
            send({"t": "pong", "seq": hdr["seq"]})
        elif hdr["t"] == "stop":
            return


if __name__ == "__main__":
    sys.exit(run_raw() if os.environ.get("RAW") == "1" else run_sdk())
