"""The KServe v2 / Open Inference Protocol, as Triton clients use it: health,
metadata, JSON and binary infer, malformed requests, versions, request
timeout and priority parameters."""
import json
import re
import struct
import threading

import pytest

from conftest import SLOW, Gate, fake_stage, wait_for

IO = ("    io:\n"
      "      inputs: [{name: x, datatype: FP32, shape: [-1, 3]}]\n"
      "      outputs: [{name: out_x, datatype: FP32, shape: [-1, 3]}]\n")


def v2_config(**stage):
    return ("stages:\n" + fake_stage("w", **stage) +
            "pipelines:\n  m:\n    stages: [w]\n" + IO)


def infer(b, body, headers=None, model="m", path=None):
    return b.request("POST", path or "/v2/models/%s/infer" % model, body,
                     dict({"Content-Type": "application/json"}, **(headers or {})))


def test_health_and_metadata(baton):
    b = baton(v2_config())
    live, ready = b.get("/v2/health/live"), b.get("/v2/health/ready")
    assert (live.status, live.body, ready.status, ready.body) == (200, b"", 200, b"")
    server = b.get("/v2").json()
    assert server["name"] == "baton" and "binary_tensor_data" in server["extensions"]
    meta = b.get("/v2/models/m").json()
    assert meta["name"] == "m" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["outputs"][0]["name"] == "out_x"
    assert b.get("/v2/models/m/ready").status == 200
    assert b.get("/v2/models/m/versions/1/ready").status == 200
    assert b.get("/v2/models/m/versions/1").json()["name"] == "m"
    assert b.get("/v2/models/nope").status == 404
    assert b.get("/v2/models/nope/ready").status == 404
    assert b.get("/v2/models/m/versions/2/ready").status == 404
    assert b.stop() == 0


def test_model_without_io_has_empty_lists(baton):
    b = baton("stages:\n" + fake_stage("w") + "pipelines:\n  plain: [w]\n")
    meta = b.get("/v2/models/plain").json()
    assert meta["inputs"] == [] and meta["outputs"] == []
    assert b.stop() == 0


def test_json_infer(baton):
    b = baton(v2_config())
    req = {"id": "req-7", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                                      "data": [[1, 2, 3], [4, 5, 6]]}]}
    r = infer(b, json.dumps(req))
    assert r.status == 200, r
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["model_name"] == "m" and doc["id"] == "req-7"
    out = doc["outputs"][0]
    assert out["name"] == "out_x" and out["shape"] == [2, 3]
    assert out["data"] == [1, 2, 3, 4, 5, 6]
    assert "w-run;dur=" in r.headers["server-timing"]
    # The versioned path is the same model.
    r = infer(b, json.dumps(req), path="/v2/models/m/versions/1/infer")
    assert r.status == 200 and r.json()["outputs"][0]["data"] == [1, 2, 3, 4, 5, 6]
    assert b.stop() == 0


def test_a_worker_answer_that_is_not_v2_fails_as_worker_error(baton):
    b = baton(v2_config())
    req = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
           "parameters": {"raw_answer": "not a v2 response"}}
    r = infer(b, json.dumps(req))
    assert r.status == 500 and r.json()["code"] == "worker_error", r
    assert "did not answer a v2 response" in r.json()["error"] and r.json()["stage"] == "w"
    # Counted as the failure the client saw, not as a success.
    metrics = b.get("/metrics").body.decode()
    assert 'baton_requests_failed_total{pipeline="m",code="worker_error"} 1' in metrics, \
        [l for l in metrics.splitlines() if l.startswith("baton_requests_")]
    assert 'baton_requests_succeeded_total{pipeline="m"} 0' in metrics
    st = b.status()
    assert st["requests"]["succeeded"] == 0 and st["pipelines"]["m"]["failures"] == \
        {"worker_error": 1}
    # The stage counts it once, as an error, not also as a good answer.
    assert st["stages"]["w"]["completed"] == 0 and st["stages"]["w"]["errors"] == 1, \
        st["stages"]["w"]
    # The replica is not to blame for the protocol: it keeps serving.
    req["parameters"] = {}
    assert infer(b, json.dumps(req)).status == 200
    assert b.stop() == 0


def test_binary_infer_both_ways(baton):
    b = baton(v2_config())
    values = [1.5, -2.0, 3.25]
    blob = struct.pack("<3f", *values)
    header = json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                    "parameters": {"binary_data_size": len(blob)}}],
        "outputs": [{"name": "out_x", "parameters": {"binary_data": True}}],
    }).encode()
    r = infer(b, header + blob, {"Inference-Header-Content-Length": str(len(header)),
                                 "Content-Type": "application/octet-stream"})
    assert r.status == 200, r
    hl = int(r.headers["inference-header-content-length"])
    doc = json.loads(r.body[:hl])
    assert doc["model_name"] == "m"
    out = doc["outputs"][0]
    assert out["parameters"]["binary_data_size"] == 12 and "data" not in out
    assert list(struct.unpack("<3f", r.body[hl:])) == values
    assert b.stop() == 0


def test_bytes_input_json_and_binary(baton):
    b = baton(v2_config())
    req = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["ab", "cde"]}]}
    r = infer(b, json.dumps(req))
    assert r.status == 200 and r.json()["outputs"][0]["data"] == ["ab", "cde"]
    blob = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 3) + b"cde"
    header = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2],
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    r = infer(b, header + blob, {"Inference-Header-Content-Length": str(len(header))})
    assert r.status == 200 and r.json()["outputs"][0]["data"] == ["ab", "cde"]
    assert b.stop() == 0


MALFORMED = [
    ("not_json", b"{not json", "not JSON"),
    ("not_object", b"[1, 2]", "object"),
    ("no_inputs", b'{"id": "x"}', "inputs"),
    ("empty_inputs", b'{"inputs": []}', "inputs"),
    ("missing_datatype", b'{"inputs": [{"name": "x", "shape": [1], "data": [1]}]}', "datatype"),
    ("unknown_datatype", b'{"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1], "data": [1]}]}',
     "FLOAT"),
    ("shape_mismatch", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2]}]}',
     "6 elements"),
    ("negative_dim", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}',
     "shape"),
    ("wrong_element", b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]}',
     "INT8"),
    ("missing_data", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}', "data"),
    ("duplicate_names", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},'
     b' {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}', "x"),
    ("bad_timeout", b'{"parameters": {"timeout": "soon"}, "inputs": [{"name": "x", '
     b'"datatype": "FP32", "shape": [1], "data": [1]}]}', "timeout"),
]


@pytest.mark.parametrize("name,body,needle", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_infer_is_400_with_error_body(baton, name, body, needle):
    b = baton(v2_config())
    r = infer(b, body)
    assert r.status == 400, r
    doc = r.json()
    assert list(doc) == ["error"] and needle in doc["error"], doc
    # Nothing reached a worker, and baton still serves.
    assert b.status()["requests"]["accepted"] == 0
    assert b.get("/v2/health/ready").status == 200
    assert b.stop() == 0


def test_binary_size_mismatch_is_400(baton):
    b = baton(v2_config())
    blob = struct.pack("<2f", 1, 2)
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    r = infer(b, header + blob, {"Inference-Header-Content-Length": str(len(header))})
    assert r.status == 400 and "error" in r.json()
    r = infer(b, header + blob, {"Inference-Header-Content-Length": "99999"})
    assert r.status == 400
    assert b.stop() == 0


def test_unknown_model_is_404(baton):
    b = baton(v2_config())
    r = infer(b, b'{"inputs": []}', model="nope")
    assert r.status == 404 and "nope" in r.json()["error"]
    assert b.stop() == 0


def test_request_timeout_expires_in_the_queue(baton):
    b = baton(v2_config(max_ongoing=1))
    busy = threading.Thread(target=lambda: b.post("m", "slow:3000"))
    busy.start()
    wait_for(lambda: b.status()["stages"]["w"]["running"] == 1, 10)
    req = {"parameters": {"timeout": 200000},  # µs, as Triton's
           "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}
    r = infer(b, json.dumps(req))
    assert r.status == 504 and r.json()["code"] == "timeout", r
    # At its deadline by baton's own count, not when the replica frees up.
    waited = int(re.search(r"waited (\d+)ms in the queue", r.json()["error"]).group(1))
    # Timers tick in whole milliseconds: a deadline may fire 1 ms before its exact count.
    assert 200 - 2 <= waited < 200 + 1200 * SLOW, r.json()
    busy.join(30 * SLOW)
    assert b.stop() == 0


def test_request_timeout_cannot_lengthen_the_stage_timeout(baton):
    b = baton(v2_config(timeout_ms=300))
    r = b.post("m", "hang", headers={"Baton-Timeout-Ms": "60000"})
    assert r.status == 504 and r.json()["code"] == "timeout", r
    # Killed at the stage's 300 ms by baton's own count (not at 3000, nor 60 s).
    ran = int(re.search(r"after (\d+)ms", r.json()["error"]).group(1))
    assert 300 - 2 <= ran < 300 + 1200 * SLOW, r.json()
    assert b.stop() == 0


def test_client_timeout_does_not_kill_a_running_worker(baton):
    # The client's timeout bounds waiting; once running, only the stage's
    # timeout_ms may kill a replica. Otherwise any client could take the
    # stage down (each kill counts towards max_failures).
    b = baton(v2_config(restart="{backoff_ms: 100, max_failures: 2}"))
    pid = b.pids("w")[0]
    for _ in range(3):
        r = b.post("m", "slow:300", headers={"Baton-Timeout-Ms": "50"})
        assert r.status == 200 and r.body == b"slow:300", r
    assert b.pids("w") == [pid]
    assert b.status()["stages"]["w"]["replicas"][0]["restarts"] == 0
    assert b.get("/v2/health/ready").status == 200
    # The worker is told how little time the client gave.
    meta = b.post("m", "meta", headers={"Baton-Timeout-Ms": "5000"}).json()
    assert 0 < meta["deadline_ms"] <= 5000, meta
    assert b.stop() == 0


def test_priorities_are_served_in_order_under_contention(baton, tmp_path):
    b = baton("stages:\n" + fake_stage("w", max_ongoing=1, priority_levels=3) +
              "pipelines:\n  p: [w]\n")
    results = {}
    threads = []
    with Gate(tmp_path) as gate:
        busy = threading.Thread(target=lambda: b.post("p", gate.payload))
        busy.start()
        wait_for(lambda: b.status()["stages"]["w"]["running"] == 1, 10)
        # Low priority first, then high: the high ones must still run first.
        for tag, prio in [("low1", 3), ("low2", 3), ("mid", 2), ("high1", 1), ("high2", 1)]:
            t = threading.Thread(target=lambda tag=tag, prio=prio: results.setdefault(
                tag, b.post("p", "order:" + tag, headers={"Baton-Priority": str(prio)})))
            t.start()
            threads.append(t)
            wait_for(lambda n=len(threads): b.status()["stages"]["w"]["queued"] == n, 10)
    for t in threads + [busy]:
        t.join(30 * SLOW)
    order = sorted(results, key=lambda k: int(results[k].body))
    assert order == ["high1", "high2", "mid", "low1", "low2"], order
    assert b.stop() == 0


def test_v2_priority_parameter_is_used(baton, tmp_path):
    b = baton("stages:\n" + fake_stage("w", max_ongoing=1, priority_levels=2) +
              "pipelines:\n  m: [w]\n")
    gate = Gate(tmp_path)
    busy = threading.Thread(target=lambda: b.post("m", gate.payload))
    busy.start()
    wait_for(lambda: b.status()["stages"]["w"]["running"] == 1, 10)
    served = {}

    def send(tag, prio):
        req = {"id": tag, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}
        if prio:
            req["parameters"] = {"priority": prio}
        served[tag] = infer(b, json.dumps(req)).json()["parameters"]["served"]

    with gate:
        t1 = threading.Thread(target=send, args=("default", 0))
        t1.start()
        wait_for(lambda: b.status()["stages"]["w"]["queued"] == 1, 10)
        t2 = threading.Thread(target=send, args=("urgent", 1))
        t2.start()
        wait_for(lambda: b.status()["stages"]["w"]["queued"] == 2, 10)
    for t in (t1, t2, busy):
        t.join(30 * SLOW)
    # The worker's own count, not the order the client threads woke up in.
    assert served["urgent"] < served["default"], served
    assert b.stop() == 0
