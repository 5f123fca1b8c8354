"""JSON bodies outside the v2 routes: baton's memory stays bounded.

A control route (scale, stations, shared-memory register) takes a document
of a few fields, and jansson's tree of a body costs about 21 times its text,
so such a body is refused past 64 KiB with 413, before it is read."""
import json
import os
import socket
import threading

from conftest import SLOW, fake_stage, status_kib, wait_for

CONTROL_MAX = 65536


def padded(doc, size):
    """doc as JSON text of exactly size bytes (spaces after it)."""
    text = json.dumps(doc).encode()
    return text + b" " * (size - len(text))


def chunked_answer(b, path, total):
    """POSTs path a chunked body that would be `total` bytes of one JSON
    document (never its end), and returns (status, body) of the answer."""
    s = socket.create_connection(("127.0.0.1", b.port), timeout=20 * SLOW)
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" % path.encode())
    piece = b"4000\r\n" + b" " * 0x4000 + b"\r\n"

    def pump():
        try:
            s.sendall(b"5\r\n[0,0,\r\n")
            for _ in range(total // 0x4000):
                s.sendall(piece)
        except OSError:
            pass  # baton closed after its answer
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "closed with %r" % data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                  if ln.lower().startswith(b"content-length:")][0])
    while len(rest) < length:
        chunk = s.recv(65536)
        assert chunk, "closed with %r" % rest
        rest += chunk
    s.close()
    t.join(30)
    return int(head.split()[1]), rest[:length]


def test_control_route_bodies_over_64_kib_are_refused_before_they_are_read(baton, tmp_path):
    b = baton("max_request_bytes: 67108864\nstages:\n" +
              fake_stage("w", replicas="{min: 1, max: 2}") + "pipelines:\n  m: [w]\n")
    # At the limit, as before: taken and answered.
    r = b.request("POST", "/v1/stages/w/scale", padded({"replicas": 2}, CONTROL_MAX))
    assert r.status == 200 and r.json() == {"stage": "w", "replicas": 2}, r
    before = status_kib(b.proc.pid, "VmRSS")
    # One byte past it, and far past it: 413 by the announced length.
    for path, doc, size in [
            ("/v1/stages/w/scale", {"replicas": 1}, CONTROL_MAX + 1),
            ("/v1/stages/w/scale", {"replicas": 1, "pad": [0] * (4 << 20)}, None),
            ("/v2/systemsharedmemory/region/r/register",
             {"key": "/baton-none", "byte_size": 1, "pad": [0] * (4 << 20)}, None)]:
        body = padded(doc, size) if size else json.dumps(doc).encode()
        r = b.request("POST", path, body)
        assert r.status == 413, (path, r)
        assert r.json()["error"] == ("request body of %d bytes is over 65536 bytes, the most a "
                                     "control route reads" % len(body)), r
    # Chunked (no length up front): as soon as the body passes the limit.
    status, body = chunked_answer(b, "/v1/stages/w/scale", 8 << 20)
    assert status == 413, body
    assert json.loads(body)["error"] == \
        "request body is over 65536 bytes, the most a control route reads"
    # Nothing of those bodies was loaded: a tree of the 8 MiB ones is ~170 MiB.
    grew = (status_kib(b.proc.pid, "VmHWM") - before) * 1024
    assert grew < (16 << 20), "baton grew by %d bytes" % grew
    # Still serving, and the stage is where the first request put it.
    assert b.request("POST", "/v1/stages/w/scale", json.dumps({"replicas": 1})).status == 200
    assert b.stop() == 0


# Sanitizers add redzones and keep freed blocks in quarantine for a while.
FACTOR = 16 if os.environ.get("BATON_SANITIZED") else 8


def test_a_stream_result_over_1_mib_is_kept_beside_its_session_not_loaded(baton, tmp_path):
    from test_streams import stream_config, wait_results
    pad = 4 << 20  # zeros, "0, " each: 12 MiB of JSON, a ~250 MiB tree
    b = baton(stream_config(tmp_path, {"s1": [{"emit": "A", "n": 2}, {"eos": True}]},
                            session_env={"STREAM_SESSION_PAD": str(pad)}))
    before = status_kib(b.proc.pid, "VmRSS")
    res = wait_results(b, 1, timeout=60)[0]
    grew = (status_kib(b.proc.pid, "VmHWM") - before) * 1024
    # Checked first: loaded into its line, the result would still be shown.
    assert grew < FACTOR * 3 * pad, \
        "baton grew by %d bytes for a result of ~%d bytes" % (grew, 3 * pad)
    assert res["code"] == "ok" and res["session"] == "A" and "result" not in res, \
        {k: v for k, v in res.items() if k != "result"}
    path = res["result_file"]
    assert path == str(tmp_path / "spool" / "s1" / "A" / "result.json")
    with open(path, "rb") as f:
        text = f.read()
    assert res["result_bytes"] == len(text) > (1 << 20)
    doc = json.loads(text)
    assert doc["session"] == "A" and doc["items"] == ["n=1", "n=2"] and len(doc["pad"]) == pad
    # The line on disk says the same, and is short.
    line = (tmp_path / "spool" / "results.jsonl").read_bytes()
    assert len(line) < 4096 and json.loads(line)["result_file"] == path
    # Adding a station is a control route too: its body is at most 64 KiB.
    body = padded({"name": "s9", "url": str(tmp_path / "none.json")}, CONTROL_MAX + 1)
    r = b.request("POST", "/v1/streams/orders/stations", body)
    assert r.status == 413 and "the most a control route reads" in r.json()["error"], r
    assert b.stop() == 0


SPAWN_SCRIPT = '''import json, sys
ask = json.load(sys.stdin)
doc = {ask["key"]: ask["status"], "message": "page %d is unreadable" % ask["n"], "pad": [0] * ask["n"]}
sys.stdout.write(json.dumps(doc))
'''


def test_a_large_json_answer_of_a_spawned_script_is_scanned_not_loaded(baton, tmp_path):
    from conftest import PYTHON
    script = tmp_path / "script.py"
    script.write_text(SPAWN_SCRIPT)
    b = baton("stages:\n  s:\n    mode: spawn\n    command: [%s, %s]\n"
              "    spawn: {status_key: status}\n    timeout_ms: 60000\n"
              "pipelines:\n  p: [s]\n" % (PYTHON, script))
    n = 4 << 20  # zeros, "0, " each: 12 MiB of JSON, a ~250 MiB tree
    before = status_kib(b.proc.pid, "VmRSS")
    r = b.post("p", json.dumps({"key": "status", "status": "ok", "n": n}), timeout=120)
    grew = (status_kib(b.proc.pid, "VmHWM") - before) * 1024
    # Checked first: loaded, the answer would still be right.
    assert grew < FACTOR * len(r.body), \
        "baton grew by %d bytes for a %d-byte answer" % (grew, len(r.body))
    assert r.status == 200 and r.headers["content-type"] == "application/json", r.headers
    doc = json.loads(r.body)
    assert doc["status"] == "ok" and len(doc["pad"]) == n
    # Its status_key read from the scan: "error" is a rejection with the
    # script's words, as for a short answer; another key is not the status.
    for n in (8, 1 << 16):
        r = b.post("p", json.dumps({"key": "status", "status": "error", "n": n}))
        assert r.status == 422 and r.json()["error"] == "page %d is unreadable" % n, r
        r = b.post("p", json.dumps({"key": "state", "status": "error", "n": n}))
        assert r.status == 200 and r.headers["content-type"] == "application/json", r
    assert b.stop() == 0


def test_the_results_ring_keeps_only_the_newest_results_that_fit_its_bytes(baton, tmp_path):
    from test_streams import stream_config, wait_results
    sessions, pad = 16, 300000  # each ~0.9 MiB of JSON, ~20 MB as the ring reckons
    steps = [{"emit": "K%d" % i, "n": 1} for i in range(1, sessions + 1)] + [{"eos": True}]
    b = baton(stream_config(tmp_path, {"s1": steps},
                            session_env={"STREAM_SESSION_PAD": str(pad)}))
    before = status_kib(b.proc.pid, "VmRSS")
    path = tmp_path / "spool" / "results.jsonl"
    wait_for(lambda: path.exists() and path.read_bytes().count(b"\n") == sessions, 120,
             interval=0.1, what="%d results\n%s" % (sessions, b.log_tail()))
    grew = (status_kib(b.proc.pid, "VmHWM") - before) * 1024
    # The file has every result, inline (each is under 1 MiB).
    lines = [json.loads(x) for x in path.read_bytes().splitlines()]
    assert [x["session"] for x in lines] == ["K%d" % i for i in range(1, sessions + 1)]
    assert all(len(x["result"]["pad"]) == pad for x in lines)
    # In memory: the newest three (64 MiB of tree, as the ring reckons).
    res = wait_results(b, 1)
    assert [r["seq"] for r in res] == [sessions - 2, sessions - 1, sessions], \
        [r["seq"] for r in res]
    assert [r["session"] for r in res] == ["K%d" % i for i in range(sessions - 2, sessions + 1)]
    status = b.status()["streams"]["orders"]
    assert status["results_total"] == sessions and len(status["results"]) == 3
    # Under sanitizers the evicted trees wait in ASan's quarantine (256 MiB).
    assert os.environ.get("BATON_SANITIZED") or grew < 2 * (64 << 20), \
        "baton grew by %d bytes" % grew
    assert b.stop() == 0
