"""Large KServe v2 tensors in JSON form: baton's memory stays within a few
times the JSON text it handles, an answer's numbers arrive unchanged, and a
malformed large request still gets its 400.  Before, jansson's tree of one
json_t per element took 13x (answers) and 21x (requests) the text
(bench/v2json)."""
import json
import os

import pytest

from conftest import fake_stage, status_kib

# Elements: 2 bytes of JSON text each ("7,"), ~48 bytes each as a jansson tree.
N = 2 * 1024 * 1024
# Sanitizers add redzones and keep freed blocks in quarantine for a while.
FACTOR = 16 if os.environ.get("BATON_SANITIZED") else 8


def v2_config():
    return ("max_request_bytes: 67108864\nstages:\n" + fake_stage("w", timeout_ms=120000) +
            "pipelines:\n  m:\n    stages: [w]\n")


def test_large_json_answer_stays_within_a_few_times_its_text(baton):
    b = baton(v2_config())
    tensor = bytes(range(10)) * (N // 10)
    header = json.dumps({"id": "big", "inputs": [
        {"name": "x", "datatype": "UINT8", "shape": [len(tensor)],
         "parameters": {"binary_data_size": len(tensor)}}]}).encode()
    before = status_kib(b.proc.pid, "VmRSS")
    r = b.request("POST", "/v2/models/m/infer", header + tensor,
                  {"Inference-Header-Content-Length": str(len(header)),
                   "Content-Type": "application/octet-stream"}, timeout=120)
    peak = status_kib(b.proc.pid, "VmHWM")
    assert r.status == 200, r
    assert r.headers["content-type"] == "application/json"
    doc = json.loads(r.body)
    assert doc["model_name"] == "m" and doc["id"] == "big"
    out = doc["outputs"][0]
    assert out["name"] == "out_x" and out["datatype"] == "UINT8"
    assert out["data"] == list(tensor)
    grew = (peak - before) * 1024
    assert grew < FACTOR * len(r.body), \
        "baton grew by %d bytes for a %d-byte JSON answer" % (grew, len(r.body))
    assert b.stop() == 0


# A request that names shared memory is rewritten first, by another path.
@pytest.mark.parametrize("params", [{}, {"shared_memory_note": "none used"}],
                         ids=["plain", "mentions_shared_memory"])
def test_large_json_request_stays_within_a_few_times_its_text(baton, params):
    b = baton(v2_config())
    values = [i % 10 for i in range(N)]
    body = json.dumps({"inputs": [{"name": "x", "datatype": "INT8", "shape": [N],
                                   "data": values}],
                       "parameters": dict(params, binary_data_output=True)},
                      separators=(",", ":")).encode()
    before = status_kib(b.proc.pid, "VmRSS")
    r = b.request("POST", "/v2/models/m/infer", body, {"Content-Type": "application/json"},
                  timeout=120)
    peak = status_kib(b.proc.pid, "VmHWM")
    assert r.status == 200, r
    hl = int(r.headers["inference-header-content-length"])
    out = json.loads(r.body[:hl])["outputs"][0]
    assert out["parameters"]["binary_data_size"] == N
    assert r.body[hl:] == bytes(values)
    grew = (peak - before) * 1024
    assert grew < FACTOR * len(body), \
        "baton grew by %d bytes for a %d-byte JSON request" % (grew, len(body))
    # One element out of range, far into the text: refused with its index.
    values[N - 3] = 128
    bad = json.dumps({"inputs": [{"name": "x", "datatype": "INT8", "shape": [N],
                                  "data": values}]}, separators=(",", ":")).encode()
    r = b.request("POST", "/v2/models/m/infer", bad, {"Content-Type": "application/json"},
                  timeout=120)
    assert r.status == 400, r
    assert ("input 'x': data element %d is 128, outside the INT8 range" % (N - 3)
            in r.json()["error"]), r
    assert b.stop() == 0


def test_large_request_with_bulk_outside_its_data_is_refused_within_bounds(baton):
    """Values outside the inputs' data arrays are loaded as a tree: past
    65,536 of them the request is refused (400) before any is loaded."""
    b = baton(v2_config())
    body = json.dumps({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1],
                                   "data": [1]}],
                       "junk": [0] * N}, separators=(",", ":")).encode()
    before = status_kib(b.proc.pid, "VmRSS")
    r = b.request("POST", "/v2/models/m/infer", body, {"Content-Type": "application/json"},
                  timeout=120)
    peak = status_kib(b.proc.pid, "VmHWM")
    assert r.status == 400, r
    assert r.json()["error"] == ("request body holds %d JSON values outside its inputs' "
                                 "\"data\" arrays; at most 65536 are read" % (N + 9)), r
    grew = (peak - before) * 1024
    assert grew < FACTOR * len(body), \
        "baton grew by %d bytes for a %d-byte JSON request" % (grew, len(body))
    # A small request is served as before.
    r = b.request("POST", "/v2/models/m/infer", json.dumps(
        {"inputs": [{"name": "x", "datatype": "INT8", "shape": [2], "data": [1, 2]}]}),
        {"Content-Type": "application/json"})
    assert r.status == 200 and r.json()["outputs"][0]["data"] == [1, 2], r
    assert b.stop() == 0
