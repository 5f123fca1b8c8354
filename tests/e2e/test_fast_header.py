"""Fast headers (docs/protocol.md#fast-headers): negotiated in "ready", an
alternative encoding of req and res next to JSON. A worker that offers them
gets its requests in them and may answer in them; one that does not offer
them gets JSON; a malformed fast header is a protocol violation handled like
a malformed JSON one (the replica is restarted, the request retried)."""
import os
import struct
import threading

from conftest import PYTHON, SDK_PY, config, fake_stage, wait_for

FAST = struct.Struct("<BBBBIQ")

# A raw worker (no SDK): offers fast headers unless OFFER=0, checks how
# each request arrives, and answers as the payload says. MISBEHAVE names a
# malformed answer it sends once (a marker file remembers it did).
RAW = r'''
import json, os, struct, sys
FAST = struct.Struct("<BBBBIQ")
ch = os.fdopen(3, "rb+", buffering=0)
offer = os.environ.get("OFFER", "1") == "1"
bad = os.environ.get("MISBEHAVE", "")
marker = os.environ.get("MARKER", "")
def read(n):
    data = b""
    while len(data) < n:
        c = ch.read(n - len(data))
        if not c:
            sys.exit(0)
        data += c
    return data
def send_json(obj, payload=b""):
    obj["len"] = len(payload)
    ch.write(json.dumps(obj).encode() + b"\n" + payload)
def send_fast(kind, flags, rid, meta, payload):
    rid = rid.encode()
    ch.write(FAST.pack(0xBA, kind, flags, len(rid), len(meta), len(payload)) + rid + meta
             + payload)
send_json({"t": "ready", "proto": 1, **({"fast": 1} if offer else {})})
while True:
    first = read(1)
    if first[0] == 0xBA:
        magic, kind, flags, idlen, mlen, n = FAST.unpack(first + read(15))
        assert kind == ord("q") and flags == 0, (kind, flags)
        rid = read(idlen).decode()
        meta = json.loads(read(mlen)) if mlen else {}
        data = read(n)
        how = "fast"
    else:
        line = first
        while not line.endswith(b"\n"):
            line += read(1)
        hdr = json.loads(line)
        if hdr["t"] == "ping":
            send_json({"t": "pong", "seq": hdr["seq"]})
            continue
        if hdr["t"] == "stop":
            sys.exit(0)
        if hdr["t"] != "req":
            continue
        rid, meta, data = hdr["id"], hdr.get("meta", {}), read(hdr.get("len", 0))
        how = "json"
    if bad and not os.path.exists(marker):
        open(marker, "w").close()
        if bad == "kind":
            ch.write(FAST.pack(0xBA, ord("x"), 0, len(rid), 0, 0) + rid.encode())
        elif bad == "retry-on-success":
            send_fast(ord("r"), 1, rid, b"", data)
        elif bad == "meta-not-object":
            send_fast(ord("r"), 0, rid, b"[1,2]", data)
        elif bad == "nul-in-id":
            send_fast(ord("r"), 0, rid + "\0", b"", data)
        elif bad == "unoffered":
            send_fast(ord("r"), 0, rid, b"", data)
        continue
    if data == b"reject":
        send_fast(ord("e"), 0, rid, b"", b"bad input: \xc3\xa9")
    elif data == b"retry":
        send_fast(ord("e"), 1, rid, b"", ("busy, attempt %d" % meta["attempt"]).encode())
    elif how == "fast":
        send_fast(ord("r"), 0, rid, json.dumps({"content_type": "text/plain", "via": how,
                                                "stage_seen": meta["stage"]}).encode(), data)
    else:
        send_json({"t": "res", "id": rid, "meta": {"content_type": "text/plain", "via": how}},
                  data)
'''

# Prints how each request arrived, through the Python SDK.
SDK = r'''
import baton_worker as bw
bw.run(lambda payload, meta: (payload, {"content_type": "text/plain"}))
'''


def raw_stage(tmp_path, name="w", retries=1, **env):
    script = tmp_path / "raw_worker.py"
    script.write_text(RAW)
    env.setdefault("MARKER", str(tmp_path / "misbehaved"))
    lines = ["  %s:" % name, "    command: [%s, %s]" % (PYTHON, script),
             "    env: {%s}" % ", ".join('%s: "%s"' % kv for kv in env.items()),
             "    retries: %d" % retries, "    ping_interval_ms: 200",
             "    restart: {backoff_ms: 100}"]
    return "\n".join(lines) + "\n"


def test_a_worker_that_offers_gets_fast_requests_and_its_fast_answers_work(baton, tmp_path):
    b = baton(config(raw_stage(tmp_path), {"p": ["w"]}))
    r = b.post("p", b"hello")
    # The worker answers JSON to JSON requests: "fast" shows baton sent fast.
    assert r.status == 200 and r.body == b"hello", r
    assert r.headers["content-type"] == "text/plain"
    r = b.post("p", b"reject")
    assert r.status == 422 and "bad input: é" in r.json()["error"], r
    r = b.post("p", b"retry")
    assert r.status == 500 and "busy, attempt 2" in r.json()["error"], r
    # Pings (every 200 ms) still go as JSON and are answered: no restart.
    r = b.post("p", b"again")
    assert r.status == 200 and r.body == b"again", r
    assert b.replicas("w")[0]["restarts"] == 0, b.replicas("w")
    assert b.stop() == 0


def test_fast_meta_reaches_the_next_stage(baton, tmp_path):
    # The raw stage got its request fast (with its meta: it saw its stage's
    # name) and answered fast with meta; the fake worker's stage after it
    # answers "meta" with the metadata it got, that meta merged in.
    b = baton(config(raw_stage(tmp_path) + fake_stage("f"), {"p": ["w", "f"]}))
    r = b.post("p", b"meta")
    assert r.status == 200, r
    meta = r.json()
    assert meta["via"] == "fast" and meta["stage_seen"] == "w" and meta["stage"] == "f", meta
    assert b.stop() == 0


def test_a_worker_that_does_not_offer_gets_json(baton, tmp_path):
    b = baton(config(raw_stage(tmp_path, OFFER="0") + fake_stage("f"), {"p": ["w", "f"]}))
    r = b.post("p", b"meta")
    assert r.status == 200 and r.json()["via"] == "json", r
    assert b.stop() == 0


def test_sdk_workers_with_and_without_fast_headers(baton, tmp_path):
    # The Python SDK offers fast headers; BW_FAST_HEADERS=0 keeps it to
    # JSON. Either way requests come back whole, through two stages.
    script = tmp_path / "sdk_worker.py"
    script.write_text(SDK)
    stages = ""
    for name, fast in (("a", "1"), ("b", "0")):
        stages += ("  %s:\n    command: [%s, %s]\n    env: {PYTHONPATH: %s, "
                   "BW_FAST_HEADERS: \"%s\"}\n" % (name, PYTHON, script, SDK_PY, fast))
    b = baton(config(stages, {"p": ["a", "b"]}))
    for body in (b"x", bytes(range(256)) * 300, b""):
        r = b.post("p", body)
        assert r.status == 200 and r.body == body, (len(body), r.status)
    assert [x["restarts"] for x in b.replicas("a") + b.replicas("b")] == [0, 0]
    assert b.stop() == 0


def test_malformed_fast_answers_are_violations_and_the_request_is_retried(baton, tmp_path):
    # One stage per malformed form, each worker misbehaving on its first
    # answer only: baton kills it, restarts it and retries the request on
    # the new process, which answers properly.
    cases = {"kind": ("1", "fast header of an unknown kind"),
             "retry-on-success": ("1", "fast header with unknown flags"),
             "meta-not-object": ("1", "meta is not a JSON object"),
             "unoffered": ("0", "did not offer them")}
    stages = ""
    for i, (bad, (offer, _)) in enumerate(cases.items()):
        stages += raw_stage(tmp_path, name="w%d" % i, MISBEHAVE=bad, OFFER=offer,
                            MARKER=str(tmp_path / ("misbehaved-%d" % i)))
    b = baton(config(stages, {"p%d" % i: ["w%d" % i] for i in range(len(cases))}))
    replies = [None] * len(cases)

    def post(i):
        replies[i] = b.post("p%d" % i, b"hello %d" % i)
    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    log = b.log()
    for i, (bad, (_, what)) in enumerate(cases.items()):
        r = replies[i]
        assert r is not None and r.status == 200 and r.body == b"hello %d" % i, (bad, r)
        assert what in log, (bad, b.log_tail())
        assert b.replicas("w%d" % i)[0]["restarts"] == 1, (bad, b.replicas("w%d" % i))
    assert log.count('msg="protocol violation"') == len(cases), b.log_tail()
    assert b.stop() == 0
