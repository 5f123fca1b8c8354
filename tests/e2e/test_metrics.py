"""GET /metrics: Prometheus text that promtool accepts, and counters that
add up (accepted = succeeded + failed + in_flight) after a run with
failures."""
import os
import re
import shutil
import subprocess
import threading

import pytest

from conftest import ROOT, SLOW, config, fake_stage, wait_for


def parse(text):
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        key, value = line.rsplit(" ", 1)
        samples[key] = float(value)
    return samples


def total(samples, name, **labels):
    n = 0.0
    for key, v in samples.items():
        m = re.match(r"(\w+)(?:\{(.*)\})?$", key)
        if m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v2 for k, v2 in labels.items()):
            n += v
    return n


def test_promtool_accepts_the_metrics(baton):
    # `make test` puts it in build-tools/ (tools/promtool.sh) when it is not on PATH.
    promtool = shutil.which("promtool") or shutil.which("promtool", path=os.path.join(ROOT, "build-tools"))
    if not promtool:
        pytest.fail("promtool is missing: `make test-deps` fetches it (tools/promtool.sh)")
    b = baton(config(fake_stage("a") + fake_stage("b", batch="{max_size: 4, window_ms: 5}"),
                     {"p": ["a", "b"], "q": ["b"]}))
    for payload in ("x", "reject:no", "y"):
        b.post("p", payload)
    # Every family present, the tick's signals included.
    wait_for(lambda: b"baton_stage_latency_p95_seconds{" in b.get("/metrics").body, 10)
    text = b.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = subprocess.run([promtool, "check", "metrics"], input=text.body,
                         capture_output=True, timeout=60)
    assert out.returncode == 0 and out.stdout == b"" and out.stderr == b"", out
    assert b.stop() == 0


def test_counters_add_up_after_failures(baton):
    # max_ongoing 1: a crash takes no bystander with it (retries is 0).
    b = baton(config(fake_stage("w", retries=0, replicas=2, max_ongoing=1), {"p": ["w"]}))
    payloads = ["ok"] * 10 + ["reject:x"] * 3 + ["exit:1"] * 2 + ["retry:t"] * 2
    threads = [threading.Thread(target=b.post, args=("p", p)) for p in payloads]
    for t in threads:
        t.start()
    # While they run, every scrape must satisfy the invariant.
    for _ in range(20):
        s = parse(b.get("/metrics").body.decode())
        acc = total(s, "baton_requests_accepted_total", pipeline="p")
        ok = total(s, "baton_requests_succeeded_total", pipeline="p")
        failed = total(s, "baton_requests_failed_total", pipeline="p")
        inflight = total(s, "baton_requests_in_flight", pipeline="p")
        assert acc == ok + failed + inflight, (acc, ok, failed, inflight)
    for t in threads:
        t.join(60 * SLOW)
    s = parse(b.get("/metrics").body.decode())
    assert total(s, "baton_requests_accepted_total", pipeline="p") == 17
    assert total(s, "baton_requests_succeeded_total", pipeline="p") == 10
    assert total(s, "baton_requests_failed_total", pipeline="p", code="rejected") == 3
    assert total(s, "baton_requests_failed_total", pipeline="p", code="worker_crashed") == 2
    assert total(s, "baton_requests_failed_total", pipeline="p", code="worker_error") == 2
    assert total(s, "baton_requests_in_flight", pipeline="p") == 0
    assert total(s, "baton_request_duration_seconds_count", pipeline="p") == 17
    # Per stage: entered = succeeded + failed.
    assert total(s, "baton_stage_requests_entered_total", stage="w") == 17
    assert total(s, "baton_stage_requests_succeeded_total", stage="w") == 10
    assert total(s, "baton_stage_requests_failed_total", stage="w") == 7
    assert total(s, "baton_stage_run_duration_seconds_count", stage="w") == 17
    wait_for(lambda: total(parse(b.get("/metrics").body.decode()),
                           "baton_replica_restarts_total", stage="w") >= 2, 20)
    s = parse(b.get("/metrics").body.decode())
    assert total(s, "baton_replica_failures_total", stage="w", reason="crash") == 2
    assert total(s, "baton_replicas", stage="w") == 2
    assert b.stop() == 0


def test_server_timing_on_errors_too(baton):
    b = baton(config(fake_stage("w"), {"p": ["w"]}))
    r = b.post("p", "reject:nope")
    assert r.status == 422
    assert re.search(r"w-queue;dur=[\d.]+, w-run;dur=[\d.]+, total;dur=[\d.]+",
                     r.headers["server-timing"]), r.headers
    assert b.stop() == 0
