"""Stopping: SIGTERM drains, SIGKILL of baton takes every worker with it,
workers that ignore "stop" are escalated to signals, and no process of any
replica's group is left behind."""
import json
import os
import signal
import threading
import time

from conftest import SLOW, Gate, config, fake_stage, pid_alive, wait_for


def test_sigterm_under_load_answers_in_flight_and_exits_clean(baton, tmp_path):
    b = baton(config(fake_stage("w", replicas=2, max_ongoing=4), {"p": ["w"]}))
    results = []
    with Gate(tmp_path) as gate:
        threads = gate.hold(b, 8, results)
        wait_for(lambda: b.status()["requests"]["in_flight"] == 8, 10, what="8 in flight")
        pids = b.pids("w")
        b.send_signal(signal.SIGTERM)
        # The signal arrives asynchronously: once baton says it drains, new
        # work is refused while the accepted work (held at the gate) waits.
        def left_running():
            state = b.status()["state"]
            return state if state != "running" else None
        state = wait_for(left_running, 10, what="baton to leave running")
        assert state == "draining", state  # not stopping with work in flight
        late = b.post("p", "late")
        assert late.status == 503 and late.json()["code"] == "shutting_down", late
        # Nor is a stage scaled while draining: a 200 would promise replicas
        # that never start.
        scale = b.request("POST", "/v1/stages/w/scale", json.dumps({"replicas": 1}))
        assert scale.status == 503 and scale.json()["code"] == "shutting_down", scale
        assert b.get("/v2/health/ready").status == 400
    for t in threads:
        t.join(30 * SLOW)
    assert [r.status for r in results] == [200] * 8
    assert b.stop() == 0
    for pid in pids:
        assert not pid_alive(pid)
    assert b.leftover_groups() == []
    log = b.log()
    assert "shutting down" in log and "stopped" in log


def test_sigkill_of_baton_takes_every_worker_within_a_second(baton, state_dir):
    env = {"FAKE_STATE_DIR": state_dir}
    b = baton(config(fake_stage("a", replicas=2, env=env) + fake_stage("b", env=env),
                     {"p": ["a", "b"]}))
    pids = b.pids("a") + b.pids("b")
    assert len(pids) == 3
    # One worker is busy in a handler that never returns, so it does not
    # see its channel close: only the death signal baton set up takes it.
    def hang():
        try:
            b.post("p", "hang:busy", timeout=10)
        except OSError:  # baton is killed under it: no answer is expected
            pass
    threading.Thread(target=hang, daemon=True).start()
    # In the handler, not merely sent: a worker that reads its request
    # after baton died sees EOF first and exits by itself.
    wait_for(lambda: os.path.exists(os.path.join(state_dir, "hanging-busy")), 10,
             what="a worker in its handler")
    b.proc.kill()
    b.proc.wait(10)
    end = time.monotonic() + 1.0
    while time.monotonic() < end and any(pid_alive(p) for p in pids):
        time.sleep(0.01)
    assert [p for p in pids if pid_alive(p)] == []


def test_worker_ignoring_stop_is_escalated_to_sigkill(baton):
    b = baton(config(fake_stage("w", stop="{grace_ms: 200}", ping_interval_ms=0,
                                env={"FAKE_IGNORE_STOP": "1"}), {"p": ["w"]}))
    pid = b.pids("w")[0]
    assert b.stop() == 0
    assert not pid_alive(pid)
    log = b.log()
    assert "sending SIGTERM" in log and "sending SIGKILL" in log


def test_grandchildren_in_the_replica_group_are_stopped(baton):
    b = baton(config(fake_stage("w", env={"FAKE_GRANDCHILD": "1"}), {"p": ["w"]}))
    pgid = b.pids("w")[0]
    assert b.stop() == 0
    wait_for(lambda: b.leftover_groups() == [], 5, what="the group to be empty")


def test_grandchild_of_a_crashed_replica_is_killed_with_it(baton):
    from conftest import group_alive
    b = baton(config(fake_stage("w", env={"FAKE_GRANDCHILD": "1"},
                                restart="{backoff_ms: 50}"), {"p": ["w"]}))
    pgid = b.pids("w")[0]
    os.kill(pgid, signal.SIGKILL)
    wait_for(lambda: not group_alive(pgid), 5, what="the crashed replica's group to be gone")
    assert b.stop() == 0


def test_second_signal_stops_at_once_and_answers_everything(baton):
    b = baton(config(fake_stage("w", max_ongoing=2), {"p": ["w"]}))
    results = []
    threads = [threading.Thread(target=lambda: results.append(b.post("p", "hang")))
               for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: b.status()["requests"]["in_flight"] == 2, 10)
    b.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    b.send_signal(signal.SIGINT)
    for t in threads:
        t.join(30 * SLOW)
    assert [r.status for r in results] == [503, 503]
    assert all(r.json()["code"] == "shutting_down" for r in results)
    assert b.proc.wait(30 * SLOW) == 0
    assert b.leftover_groups() == []
