"""Autoscaling, GPU placement and resource signals: a stage grows under load
and shrinks after it without flapping or failing requests, replicas are
placed on GPUs best-fit or wait, NVML is read through dlopen (a test double
of libnvidia-ml.so.1), memory_mb is enforced, the headroom policy follows
its signals, and an operator can fix the count."""
import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from conftest import BATON, BUILD, ROOT, SLOW, Gate, fake_stage, pid_alive, wait_for

FAKE_NVML = os.path.join(BUILD, "tests", "fake-nvml", "libnvidia-ml.so.1")


def cfg(stage, top="interval_ms: 200\n", pipelines="pipelines:\n  p: [w]\n"):
    return top + "stages:\n" + stage + pipelines


def status_table(b):
    out = subprocess.run([BATON, "status", "--url", "http://127.0.0.1:%d" % b.port],
                         capture_output=True, timeout=30 * SLOW)
    assert out.returncode == 0, out
    return out.stdout.decode()


def active(b, stage="w"):
    return b.status()["stages"][stage]["scaling"]["active"]


def history(b):
    return b.status()["scaling_history"]


class Load:
    """n client threads sending payload in a loop until stopped."""

    def __init__(self, b, n, payload):
        self.b, self.stop_flag, self.results = b, False, []
        self.threads = [threading.Thread(target=self.run, args=(payload,)) for _ in range(n)]

    def run(self, payload):
        while not self.stop_flag:
            self.results.append(self.b.post("p", payload).status)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopped_at = time.time()  # the clock of the scaling history
        self.stop_flag = True
        for t in self.threads:
            t.join(60 * SLOW)


def test_step_load_scales_up_then_down_without_failures_or_flapping(baton):
    b = baton(cfg(fake_stage("w", replicas="{min: 1, max: 4, initial: 1}",
                             # max_cpu 100: the test machine may be busy; that
                             # refusal has its own test below (via the GPU).
                             autoscale="{policy: demand, target_ongoing: 1, max_cpu: 100, "
                                       "upscale_delay_s: 1, downscale_delay_s: 2}")))
    assert active(b) == 1
    started_at = time.time()
    with Load(b, 6, "slow:50") as load:
        t0 = time.monotonic()
        wait_for(lambda: active(b) > 1, 10, what="a scale-up")
        first_up = time.monotonic() - t0
        wait_for(lambda: active(b) == 4, 20, what="4 replicas")
        b.wait_ready()
        time.sleep(3)  # steady load: nothing may move
        steady = [e for e in history(b) if e["applied"]]
    wait_for(lambda: active(b) == 1, 20, what="the scale-down")
    assert load.results and set(load.results) == {200}, set(load.results)
    # Within upscale_delay plus an interval (and slack for a loaded machine).
    assert first_up < 1 + 0.2 + 3 * SLOW, first_up
    events = [e for e in history(b) if e["applied"]]
    ups = [e for e in events if e["to"] > e["from"]]
    downs = [e for e in events if e["to"] < e["from"]]
    assert ups and downs and all(e["stage"] == "w" for e in events)
    # Lower bounds, which a slow machine can only make later: no scale-up
    # before upscale_delay_s (1) of load, no scale-down before
    # downscale_delay_s (2) after it stopped.  A tick just before the stop
    # may already have seen a dip in demand, hence one interval (0.2) less;
    # 0.01 covers the history's millisecond timestamps.
    assert ups[0]["time"] - started_at >= 1 - 0.01, (ups[0], started_at)
    assert downs[0]["time"] - load.stopped_at >= 2 - 0.2 - 0.01, (downs[0], load.stopped_at)
    # No flapping: every change went up before load stopped, down after.
    assert all(e in steady for e in ups) and not any(e in steady for e in downs)
    assert max(e["to"] for e in ups) == 4 and downs[-1]["to"] == 1
    # Scaled-down replicas were drained and stopped: no process left.
    wait_for(lambda: len([r for r in b.replicas("w") if r["pid"]]) == 1, 10)
    metrics = b.get("/metrics").body.decode()
    assert 'baton_scaling_decisions_total{decision="up"}' in metrics
    assert b.stop() == 0
    assert b.leftover_groups() == []


def test_scale_down_with_requests_in_flight_drains_then_stops_without_failures(baton):
    # target_ongoing 2: 8 clients make 4 replicas; 4 clients, one request on
    # each replica, want 2, so the replicas scaled away hold a request.
    b = baton(cfg(fake_stage("w", replicas="{min: 1, max: 4, initial: 1}",
                             autoscale="{policy: demand, target_ongoing: 2, max_cpu: 100, "
                                       "upscale_delay_s: 1, downscale_delay_s: 2}")))
    with Load(b, 4, "slow:1000") as light:
        with Load(b, 4, "slow:1000") as extra:
            wait_for(lambda: active(b) == 4, 30, what="4 replicas")
            b.wait_ready()
        # Light load only: it keeps running through the downscale window.
        wait_for(lambda: "replica draining" in b.log(), 30, what="a replica draining")
        wait_for(lambda: active(b) == 2, 30, what="the scale-down to 2")
        # Drained replicas finish their request, then stop.
        wait_for(lambda: len(b.pids("w")) == 2, 30, what="drained replicas to stop")
        assert all(r["state"] in ("ready", "busy") for r in b.replicas("w"))
    results = light.results + extra.results
    assert results and set(results) == {200}, results
    log = b.log().splitlines()
    drained = {}
    for i, line in enumerate(log):
        m = re.search(r'msg="replica draining" stage=w replica=(\d+) in_flight=(\d+)', line)
        if m:
            assert int(m.group(2)) >= 1, line
            drained[m.group(1)] = i
    assert drained, "no replica drained"
    for rid, at in drained.items():
        stopped = [line for line in log[at:]
                   if re.search(r'msg="replica stopped" stage=w replica=%s ' % rid, line)]
        assert stopped, "replica %s drained but never stopped" % rid
        pid = int(re.search(r" pid=(\d+)", stopped[0]).group(1))
        assert not pid_alive(pid), stopped[0]
    downs = [e for e in history(b) if e["applied"] and e["to"] < e["from"]]
    assert downs and all(e["time"] < light.stopped_at for e in downs)
    assert b.stop() == 0
    assert b.leftover_groups() == []


def test_replicas_are_placed_best_fit_and_the_rest_wait(baton):
    top = ("interval_ms: 200\n"
           "gpus: [{id: 0, memory_mb: 4000}, {id: 1, memory_mb: 2000}]\n")
    b = baton(cfg(fake_stage("w", replicas=4, resources="{gpu: 0.5, gpu_memory_mb: 1500}"),
                  top=top), wait_ready=False)
    wait_for(lambda: sum(r["state"] == "ready" for r in b.replicas("w")) == 3, 20)
    reps = b.replicas("w")
    placed = sorted(r["gpu"] for r in reps if r["gpu"] is not None)
    assert placed == [0, 0, 1], reps  # gpu1 first (tightest), then gpu0 twice
    pending = [r for r in reps if r["state"] == "pending"]
    assert len(pending) == 1 and pending[0]["failures"] == 0
    assert "no GPU fits" in pending[0]["pending_reason"]
    for r in reps:
        if r["pid"]:
            env = dict(kv.split("=", 1) for kv in
                       open("/proc/%d/environ" % r["pid"]).read().split("\0") if "=" in kv)
            assert env["CUDA_VISIBLE_DEVICES"] == str(r["gpu"])
            assert env["BATON_GPU_FRACTION"] == "0.5"
    gpus = {g["id"]: g for g in b.status()["gpus"]}
    assert gpus[0]["placed_fraction"] == 1.0 and gpus[0]["placed_memory_mb"] == 3000
    assert gpus[1]["placed_memory_mb"] == 1500
    assert "replica pending" in b.log()
    # `baton status` shows the pending replica and why.
    table = status_table(b)
    assert re.search(r"\d:pending\(pid 0,.*no GPU fits gpu 0\.5 and 1500 MB:", table), table
    # The stage serves with what fits, and readiness is not held hostage.
    assert b.get("/v2/health/ready").status == 200
    assert b.post("p", "hello").status == 200
    # When a placed replica goes away, the pending one takes its place.
    b.request("POST", "/v1/stages/w/scale", json.dumps({"replicas": 3}))
    wait_for(lambda: sorted(r["state"] for r in b.replicas("w")) == ["ready"] * 3, 20)
    # ... and `baton status` shows the scaling history.
    table = status_table(b)
    assert "SCALING (latest last)" in table, table
    assert re.search(r"\d\d:\d\d:\d\d  w +4 -> 3  manual: 3 replicas, policy off", table), table
    assert "no GPU fits" not in table, table
    assert b.stop() == 0


def write_gpus(path, *gpus):
    """gpus: (util_percent, total_mb, used_mb) for devices 0, 1, ..."""
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        for i, (util, total, used) in enumerate(gpus):
            f.write("gpu %d %d %d %d\n" % (i, util, total, used))
    os.replace(tmp, str(path))  # the library never reads half a file


def use_fake_nvml(monkeypatch, path, *gpus):
    """Points baton at the NVML test double, reading the devices from path."""
    write_gpus(path, *gpus)
    monkeypatch.setenv("BATON_NVML_LIBRARY", FAKE_NVML)
    monkeypatch.setenv("FAKE_NVML_FILE", str(path))


def gpu_autoscaled_stage():
    return fake_stage("w", replicas="{min: 1, max: 3}",
                      resources="{gpu: 0.25, gpu_memory_mb: 1000}",
                      autoscale="{target_ongoing: 1, upscale_delay_s: 0, max_gpu: 90, "
                                "max_cpu: 100}")


def test_nvml_is_read_through_dlopen_and_a_busy_gpu_refuses_scale_up(baton, tmp_path, monkeypatch):
    nvml = tmp_path / "nvml.txt"
    use_fake_nvml(monkeypatch, nvml, (20, 8192, 1000))
    b = baton(cfg(gpu_autoscaled_stage()))
    wait_for(lambda: b.status()["gpus"] and b.status()["gpus"][0].get("util_percent") == 20, 10)
    g = b.status()["gpus"][0]
    assert g["memory_mb"] == 8192 and g["memory_used_mb"] == 1000
    write_gpus(nvml, (99, 8192, 7000))
    wait_for(lambda: b.status()["gpus"][0]["util_percent"] == 99, 10)
    with Load(b, 4, "slow:200"):
        wait_for(lambda: any(not e["applied"] and "GPU at 99%" in e["reason"]
                             for e in history(b)), 10, what="a refusal")
        assert active(b) == 1
        write_gpus(nvml, (30, 8192, 2000))
        wait_for(lambda: active(b) > 1, 10, what="scale-up once the GPU is free")
    metrics = b.get("/metrics").body.decode()
    assert 'baton_gpu_utilization_ratio{gpu="0"}' in metrics
    assert "baton_gpu_memory_total_bytes" in metrics
    assert b.stop() == 0


def test_gpu_signal_is_the_busiest_gpu_the_stage_is_placed_on(baton, tmp_path, monkeypatch):
    nvml = tmp_path / "nvml.txt"
    # gpu1 is the tighter fit, so the stage lands there; gpu0 is busy.
    use_fake_nvml(monkeypatch, nvml, (99, 8192, 0), (20, 4096, 0))
    b = baton(cfg(gpu_autoscaled_stage()))
    assert [r["gpu"] for r in b.replicas("w")] == [1]
    # Busy where the stage runs: refused.  (Both GPUs are read each tick.)
    write_gpus(nvml, (20, 8192, 0), (99, 4096, 0))
    wait_for(lambda: [g["util_percent"] for g in b.status()["gpus"]] == [20, 99], 10)
    with Load(b, 4, "slow:200"):
        wait_for(lambda: any(not e["applied"] and "GPU at 99%" in e["reason"]
                             for e in history(b)), 10, what="a refusal")
        assert active(b) == 1
        # Busy elsewhere only: the stage grows, on its own GPU.
        write_gpus(nvml, (99, 8192, 0), (20, 4096, 0))
        wait_for(lambda: active(b) > 1, 10, what="scale-up while another GPU is busy")
    assert all(r["gpu"] == 1 for r in b.replicas("w") if r["gpu"] is not None)
    assert b.stop() == 0


def test_memory_used_outside_baton_is_not_free_for_placement(baton, tmp_path, monkeypatch):
    nvml = tmp_path / "nvml.txt"
    use_fake_nvml(monkeypatch, nvml, (10, 8192, 7000))  # someone else holds 7000 MB
    b = baton(cfg(fake_stage("w", replicas="{min: 1, max: 2, initial: 1}",
                             resources="{gpu: 0.25, gpu_memory_mb: 2000}")), wait_ready=False)

    def gpu():
        return b.status()["gpus"][0]

    wait_for(lambda: b.replicas("w")[0].get("pending_reason"), 10, what="a pending reason")
    rep = b.replicas("w")[0]
    assert rep["state"] == "pending" and rep["pid"] == 0, rep
    assert "1192 MB free (7000 MB used outside baton)" in rep["pending_reason"], rep
    assert gpu()["external_memory_mb"] == 7000
    # The other process lets go: the replica is placed and starts.
    write_gpus(nvml, (10, 8192, 1000))
    wait_for(lambda: b.replicas("w")[0]["state"] == "ready", 20, what="the replica to start")
    assert b.replicas("w")[0]["gpu"] == 0
    # NVML's figure includes our replica's own memory: only the rest is external.
    write_gpus(nvml, (10, 8192, 2000 + 5000))
    wait_for(lambda: gpu()["external_memory_mb"] == 5000, 10, what="5000 MB external")
    b.request("POST", "/v1/stages/w/scale", json.dumps({"replicas": 2}))
    wait_for(lambda: len(b.replicas("w")) == 2 and b.replicas("w")[1].get("pending_reason"),
             10, what="the second replica pending")
    assert "used outside baton" in b.replicas("w")[1]["pending_reason"]
    write_gpus(nvml, (10, 8192, 2000 + 3000))  # 8192 - 2000 - 3000 leaves room for 2000
    wait_for(lambda: [r["state"] for r in b.replicas("w")] == ["ready", "ready"], 20,
             what="both replicas ready")
    assert gpu()["placed_memory_mb"] == 4000
    assert b.stop() == 0


def test_without_nvml_baton_runs_and_says_why(baton, monkeypatch, tmp_path):
    monkeypatch.setenv("BATON_NVML_LIBRARY", str(tmp_path / "no-such-lib.so.1"))
    b = baton(cfg(fake_stage("w")))
    assert b.status()["gpus"] == []
    assert "no GPU signals" in b.log()
    assert b.stop() == 0


def test_replica_over_memory_is_restarted_and_its_request_retried(baton, state_dir):
    b = baton(cfg(fake_stage("w", resources="{memory_mb: 200}", retries=1,
                             restart="{backoff_ms: 50}", env={"FAKE_STATE_DIR": state_dir})))
    first = b.pids("w")[0]
    r = b.post("p", "alloc-once:m1:400")
    assert r.status == 200 and r.body == b"alloc-once:m1:400", r
    assert not pid_alive(first)
    log = b.log()
    assert "over memory_mb 200" in log
    rep = b.replicas("w")[0]
    assert rep["restarts"] == 1
    metrics = b.get("/metrics").body.decode()
    assert 'baton_replica_failures_total{stage="w",reason="memory"} 1' in metrics
    assert b.stop() == 0


def test_headroom_policy_follows_its_signals(baton, tmp_path, monkeypatch):
    signals = tmp_path / "signals.json"
    signals.write_text(json.dumps({"cpu_percent": 40, "gpu_percent": 30,
                                   "latency_p95_s": {"w": 0.5}}))
    monkeypatch.setenv("BATON_TEST_SIGNALS", str(signals))
    b = baton(cfg(fake_stage("w", replicas="{min: 1, max: 3}",
                             autoscale="{policy: headroom, hysteresis_s: 1}")))
    # All under the up marks: one more replica per hysteresis window, up to max.
    wait_for(lambda: active(b) == 3, 20, what="growth to max")
    ups = [e for e in history(b) if e["applied"] and e["to"] > e["from"]]
    assert [(e["from"], e["to"]) for e in ups] == [(1, 2), (2, 3)]
    assert ups[1]["time"] - ups[0]["time"] >= 0.9  # the cooldown between steps
    # Latency over the down mark: shrink one at a time to min.
    signals.write_text(json.dumps({"cpu_percent": 40, "gpu_percent": 30,
                                   "latency_p95_s": {"w": 7}}))
    wait_for(lambda: active(b) == 1, 20, what="shrink to min")
    downs = [e for e in history(b) if e["applied"] and e["to"] < e["from"]]
    assert [(e["from"], e["to"]) for e in downs] == [(3, 2), (2, 1)]
    assert "p95" in downs[0]["reason"]
    # Between the marks (cpu 85: not < 80, not > 90): nothing moves.
    signals.write_text(json.dumps({"cpu_percent": 85, "gpu_percent": 30,
                                   "latency_p95_s": {"w": 0.5}}))
    n = len(history(b))
    time.sleep(2.5)
    assert len(history(b)) == n and active(b) == 1
    assert b.stop() == 0


def test_manual_scale_fixes_the_count_until_auto(baton, tmp_path, monkeypatch):
    signals = tmp_path / "signals.json"
    signals.write_text(json.dumps({"cpu_percent": 95}))  # headroom wants to shrink
    monkeypatch.setenv("BATON_TEST_SIGNALS", str(signals))
    b = baton(cfg(fake_stage("w", replicas="{min: 1, max: 4, initial: 1}",
                             autoscale="{policy: headroom, hysteresis_s: 1}")))
    r = b.request("POST", "/v1/stages/w/scale", json.dumps({"replicas": 3}))
    assert r.status == 200 and r.json()["replicas"] == 3
    wait_for(lambda: active(b) == 3 and all(x["state"] == "ready" for x in b.replicas("w")), 20)
    st = b.status()["stages"]["w"]["scaling"]
    assert st["manual"] is True and st["target"] == 3
    time.sleep(2.5)
    assert active(b) == 3  # the policy is off
    r = b.request("POST", "/v1/stages/w/scale", json.dumps({"replicas": "auto"}))
    assert r.status == 200
    wait_for(lambda: active(b) < 3, 20, what="the policy to act again")
    for body in ('{"replicas": 0}', '{"replicas": 99}', '{"replicas": "many"}', "nonsense"):
        r = b.request("POST", "/v1/stages/w/scale", body)
        assert r.status == 400 and "replicas" in r.json()["error"], body
    assert b.request("POST", "/v1/stages/nope/scale", '{"replicas": 1}').status == 404
    reasons = [e["reason"] for e in history(b)]
    assert any("manual: 3 replicas" in x for x in reasons)
    assert any("policy back on" in x for x in reasons)
    assert b.stop() == 0


def scale(b, n):
    r = b.request("POST", "/v1/stages/w/scale", json.dumps({"replicas": n}))
    assert r.status == 200, r
    return r


def test_scaling_back_up_takes_a_draining_replica_back(baton, tmp_path):
    # Both replicas of a full stage are busy; down to 1 drains one, and up to
    # 2 before it has finished takes it back: warm, the same process.
    b = baton(cfg(fake_stage("w", replicas="{min: 1, max: 2, initial: 2}", max_ongoing=1)))
    pids = sorted(b.pids("w"))
    replies = []
    with Gate(tmp_path) as gate:
        threads = gate.hold(b, 2, replies)
        wait_for(lambda: b.status()["stages"]["w"]["running"] == 2, 10)
        scale(b, 1)
        assert sorted(x["state"] for x in b.replicas("w")) == ["busy", "draining"]
        scale(b, 2)
        assert [x["state"] for x in b.replicas("w")] == ["busy", "busy"]
        assert active(b) == 2
    for t in threads:
        t.join(30 * SLOW)
    assert [r.status for r in replies] == [200, 200]
    time.sleep(0.6)  # three ticks: a replica still draining would have stopped
    assert sorted(b.pids("w")) == pids and active(b) == 2
    assert "replica drain cancelled" in b.log()
    assert b.stop() == 0


def test_scale_up_that_finds_every_slot_stopping_completes_once_one_exits(baton):
    # replicas.max is 2 and the second replica is told to stop while still
    # starting (1.5 s): scaling back up finds no free slot, says so, and
    # starts the replica as soon as the stopping one has exited.
    b = baton(cfg(fake_stage("w", replicas="{min: 1, max: 2, initial: 1}",
                             env={"FAKE_READY_DELAY_MS": "1500"})))
    scale(b, 2)
    scale(b, 1)
    assert sorted(x["state"] for x in b.replicas("w")) == ["ready", "stopping"]
    scale(b, 2)
    assert "1 more once stopping replicas have exited" in history(b)[-1]["reason"]
    assert b.status()["stages"]["w"]["scaling"]["target"] == 2
    wait_for(lambda: active(b) == 2 and [x["state"] for x in b.replicas("w")] ==
             ["ready", "ready"], 20, what="the second replica to be back")
    assert any("freed its slot" in e["reason"] for e in history(b))
    # Its late first "ready" is not a protocol violation.
    assert "protocol violation" not in b.log()
    assert b.post("p", "x").status == 200
    assert b.stop() == 0


def decisions(b):
    text = b.get("/metrics").body.decode()
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r'^baton_scaling_decisions_total\{decision="(\w+)"\} (\d+)$', text, re.M)}


def test_decisions_that_change_no_count_are_neither_up_nor_down(baton):
    b = baton(cfg(fake_stage("w", replicas="{min: 1, max: 3, initial: 2}")))
    assert decisions(b) == {"up": 0, "down": 0, "refused": 0, "none": 0}
    assert b.request("POST", "/v1/stages/w/scale", '{"replicas": 2}').status == 200
    assert b.request("POST", "/v1/stages/w/scale", '{"replicas": "auto"}').status == 200
    assert decisions(b) == {"up": 0, "down": 0, "refused": 0, "none": 2}
    assert [(e["from"], e["to"]) for e in history(b)] == [(2, 2), (2, 2)]
    assert b.request("POST", "/v1/stages/w/scale", '{"replicas": 1}').status == 200
    assert b.request("POST", "/v1/stages/w/scale", '{"replicas": 3}').status == 200
    assert decisions(b) == {"up": 1, "down": 1, "refused": 0, "none": 2}
    # `make test` puts it in build-tools/ (tools/promtool.sh) when it is not on PATH.
    promtool = shutil.which("promtool") or shutil.which("promtool", path=os.path.join(ROOT, "build-tools"))
    if not promtool:
        pytest.fail("promtool is missing: `make test-deps` fetches it (tools/promtool.sh)")
    out = subprocess.run([promtool, "check", "metrics"], input=b.get("/metrics").body,
                         capture_output=True, timeout=60)
    assert out.returncode == 0 and out.stdout == b"" and out.stderr == b"", out
    assert b.stop() == 0


def test_status_and_metrics_carry_the_signals(baton):
    b = baton(cfg(fake_stage("w", replicas=2)))
    # Before the first tick with samples there is no latency, not a zero.
    assert b.status()["stages"]["w"]["signals"]["latency_p95_s"] is None
    for _ in range(5):
        b.post("p", "slow:20")
    wait_for(lambda: b.status()["stages"]["w"]["signals"]["latency_p95_s"] is not None, 10)
    st = b.status()
    assert 0 <= st["cpu_percent"] <= 100
    rep = st["stages"]["w"]["replicas"][0]
    assert rep["rss_bytes"] > 1 << 20 and rep["cpu_percent"] >= 0
    metrics = b.get("/metrics").body.decode()
    for name in ("baton_system_cpu_ratio", "baton_replica_resident_memory_bytes",
                 "baton_stage_latency_p95_seconds", "baton_stage_arrival_rate",
                 "baton_stage_replicas_target"):
        assert name in metrics, name
    assert b.stop() == 0
