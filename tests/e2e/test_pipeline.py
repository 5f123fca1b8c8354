"""Pipelines over HTTP: composition across environments, metadata, errors
with their HTTP status, admission and queue bounds."""
import json
import os
import subprocess

from conftest import BUILD, PYTHON, ROOT, SDK_PY, SLOW, Gate, config, fake_stage, wait_for

REV = os.path.join(BUILD, "examples", "echo", "rev")
UPPER = os.path.join(ROOT, "examples", "echo", "upper.py")


def test_python_stage_in_venv_and_c_stage_compose(baton, tmp_path):
    venv = tmp_path / "venv-upper"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    cfg = f"""
stages:
  upper:
    command: [python3, {UPPER}]
    venv: {venv}
    env: {{PYTHONPATH: {SDK_PY}}}
  rev:
    command: [{REV}]
    env: {{REV_SUFFIX: "!"}}
  probe:
    command: [python3, {os.path.join(ROOT, 'tests', 'e2e', 'fake_worker.py')}]
    venv: {venv}
    env: {{PYTHONPATH: {SDK_PY}}}
pipelines:
  echo: [upper, rev]
  probe: [probe]
"""
    b = baton(cfg)
    r = b.post("echo", "hello baton")
    assert r.status == 200, r
    assert r.body == b"NOTAB OLLEH!"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    # The venv stage really runs inside its venv, with baton's variables.
    env = b.post("probe", "env").json()
    assert env["VIRTUAL_ENV"] == str(venv)
    assert env["PATH"].startswith(str(venv) + "/bin:")
    assert env["BATON_FD"] == "3" and env["BATON_PROTO"] == "1"
    assert env["BATON_STAGE"] == "probe" and env["BATON_REPLICA"] == "1"
    assert b.stop() == 0
    assert b.leftover_groups() == []


def test_result_meta_merges_into_next_stage_metadata(baton):
    b = baton(config(fake_stage("a") + fake_stage("b"), {"p": ["a", "b"]}))
    r = b.post("p", 'setmeta:{"from_a": 1, "content_type": "text/x-a"}',
               headers={"Baton-Meta": '{"client": "yes"}'})
    assert r.status == 200, r
    meta = r.json()  # stage b answers with the metadata it received
    assert meta["from_a"] == 1 and meta["client"] == "yes"
    assert meta["stage"] == "b" and meta["pipeline"] == "p"
    assert meta["content_type"] == "text/x-a"
    # b's own answer set application/json, which the response carries.
    assert r.headers["content-type"] == "application/json"
    assert b.stop() == 0


def test_a_stage_or_a_client_cannot_rewrite_batons_own_keys(baton):
    # An earlier stage's answer (or Baton-Meta) cannot rename the pipeline
    # or make a real request look like baton's warm-up to later stages.
    b = baton(config(fake_stage("a") + fake_stage("b"), {"p": ["a", "b"]}))
    r = b.post("p", 'setmeta:{"pipeline": "evil", "warmup": true, "stage": "evil"}',
               headers={"Baton-Meta": '{"warmup": true}'})
    assert r.status == 200 and r.body != b"warm", r
    meta = r.json()
    assert meta["pipeline"] == "p" and meta["stage"] == "b" and "warmup" not in meta, meta
    assert b.stop() == 0


def test_content_type_comes_from_result_meta(baton):
    b = baton(config(fake_stage("a"), {"p": ["a"]}))
    r = b.post("p", 'setmeta:{"content_type": "text/x-probe"}')
    assert r.status == 200 and r.body == b"meta"
    assert r.headers["content-type"] == "text/x-probe"
    assert b.stop() == 0


def test_metadata_reaches_worker(baton):
    b = baton(config(fake_stage("w"), {"p": ["w"]}))
    r = b.post("p", "meta", headers={"Baton-Meta": '{"path": "in/a.png"}',
                                     "Content-Type": "image/png"})
    assert r.status == 200
    meta = r.json()
    assert meta["pipeline"] == "p" and meta["stage"] == "w" and meta["attempt"] == 1
    assert 0 < meta["deadline_ms"] <= 60000
    assert meta["path"] == "in/a.png"
    assert meta["content_type"] == "image/png"
    assert r.headers["baton-request-id"].startswith("r")
    assert b.stop() == 0


def test_binary_payload_round_trips(baton):
    b = baton(config(fake_stage("w"), {"p": ["w"]}))
    data = bytes(range(256)) * 4096 + b"\n\x00end"
    r = b.post("p", data)
    assert r.status == 200 and r.body == data
    assert r.headers["content-type"] == "application/octet-stream"
    assert b.stop() == 0


def test_http_errors_have_status_and_sentence(baton):
    b = baton(config(fake_stage("w"), {"p": ["w"]}, top="max_request_bytes: 1000\n"))
    r = b.post("nope", "x")
    assert r.status == 404 and r.json()["code"] == "bad_request"
    assert "nope" in r.json()["error"]
    r = b.post("p", b"x" * 2000)
    assert r.status == 413 and "max_request_bytes" in r.json()["error"]
    r = b.post("p", "x", headers={"Baton-Meta": "not json"})
    assert r.status == 400 and "Baton-Meta" in r.json()["error"]
    r = b.get("/v1/pipelines/p")
    assert r.status == 405 and r.headers["allow"] == "POST"
    r = b.get("/no/such/route")
    assert r.status == 404
    r = b.request("POST", "/v1/stages/nope/restart")
    assert r.status == 404
    # And it still serves.
    assert b.post("p", "fine").body == b"fine"
    assert b.stop() == 0


def test_body_over_limit_is_refused_before_it_is_read(baton):
    import socket
    b = baton(config(fake_stage("w"), {"p": ["w"]}, top="max_request_bytes: 1000\n"))
    s = socket.create_connection(("127.0.0.1", b.port), timeout=10 * SLOW)
    # Announce 1 GB and send only the headers: the answer must come anyway.
    s.sendall(b"POST /v1/pipelines/p HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
    data = s.recv(4096)
    s.close()
    assert data.startswith(b"HTTP/1.1 413"), data
    assert b.stop() == 0


def test_full_queue_answers_503_with_retry_after(baton, tmp_path):
    b = baton(config(fake_stage("w", queue_max=2, max_ongoing=1), {"p": ["w"]}))
    results = []
    with Gate(tmp_path) as gate:
        threads = gate.hold(b, 3, results)
        wait_for(lambda: b.status()["stages"]["w"]["queued"] == 2, 10, what="2 queued")
        r = b.post("p", "one too many")
    assert r.status == 503, r
    assert r.json()["code"] == "overloaded"
    assert r.headers["retry-after"] == "1"
    for t in threads:
        t.join(60 * SLOW)
    assert [x.status for x in results] == [200, 200, 200]
    st = b.status()
    assert st["pipelines"]["p"]["failures"] == {"overloaded": 1}
    assert b.stop() == 0


def test_max_inflight_admission_at_the_entry(baton, tmp_path):
    cfg = ("stages:\n" + fake_stage("w", replicas=2, max_ongoing=2) +
           "pipelines:\n  p:\n    stages: [w]\n    max_inflight: 2\n")
    b = baton(cfg)
    results = []
    with Gate(tmp_path) as gate:
        threads = gate.hold(b, 2, results)
        wait_for(lambda: b.status()["pipelines"]["p"]["in_flight"] == 2, 10)
        # Refused at once; admitted, it would wait behind a gate (fail in 10 s, not 60).
        r = b.post("p", "third", timeout=10)
    assert r.status == 503 and r.json()["code"] == "overloaded"
    assert "max_inflight" in r.json()["error"]
    for t in threads:
        t.join(60 * SLOW)
    assert sorted(x.status for x in results) == [200, 200]
    assert b.stop() == 0


def test_least_loaded_replica_gets_the_work(baton, tmp_path):
    b = baton(config(fake_stage("w", replicas=3, max_ongoing=4), {"p": ["w"]}))
    results = []
    with Gate(tmp_path) as gate:
        threads = gate.hold(b, 6, results)
        wait_for(lambda: b.status()["stages"]["w"]["running"] == 6, 10)
        loads = sorted(r["in_flight"] for r in b.replicas("w"))
    assert loads == [2, 2, 2], loads
    for t in threads:
        t.join(60 * SLOW)
    assert all(r.status == 200 for r in results)
    assert b.stop() == 0


def test_counters_add_up(baton):
    b = baton(config(fake_stage("w", retries=0), {"p": ["w"]}))
    for payload in ["a", "reject:x", "b", "exit:1", "c"]:
        b.post("p", payload)
    st = b.status()
    req = st["requests"]
    assert req["accepted"] == 5
    assert req["succeeded"] == 3 and req["failed"] == 2 and req["in_flight"] == 0
    assert st["pipelines"]["p"]["failures"] == {"rejected": 1, "worker_crashed": 1}
    assert b.stop() == 0


def test_status_command_prints_a_table(baton):
    from conftest import BATON
    b = baton(config(fake_stage("w"), {"p": ["w"]}))
    out = subprocess.run([BATON, "status", "--url", "http://127.0.0.1:%d" % b.port],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "STAGE" in out.stdout and "w " in out.stdout and "ready(pid" in out.stdout
    out = subprocess.run([BATON, "status", "--url", "http://127.0.0.1:1"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert b.stop() == 0


def test_metadata_grown_past_the_header_limit_fails_as_worker_error(baton):
    # Two stages add 40 KB of metadata each: the third stage's request header
    # would pass 64 KiB. That is not the input's fault (rejected) but the
    # pipeline's, and nothing was sent to the third stage's worker.
    b = baton(config(fake_stage("a") + fake_stage("b") + fake_stage("c"),
                     {"p": ["a", "b", "c"]}))
    r = b.post("p", "padmeta:40000")
    assert r.status == 500 and r.json()["code"] == "worker_error", r
    assert r.json()["stage"] == "c" and "64 KiB" in r.json()["error"], r
    assert b.post("p", "padmeta:10").status == 200
    assert b.status()["stages"]["c"]["replicas"][0]["restarts"] == 0
    # Only the batch the worker received counts in the batch-size histogram.
    metrics = b.get("/metrics").body.decode()
    assert 'baton_stage_batch_size_count{stage="c"} 1\n' in metrics, \
        [l for l in metrics.splitlines() if "batch_size_count" in l]
    assert b.stop() == 0
