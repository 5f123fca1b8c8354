"""The C worker SDK (sdk/c, libbatonworker) under the real daemon: its batch
callback gets whole batches and answers each item to its own request,
baton_fail() fails one item alone, pings are answered, and "stop" ends the
worker with status 0 after its stop callback.

The worker is tests/e2e/c_batch_worker.c, built into the build directory.
"""
import os
import threading
import time

import pytest

from conftest import BUILD, SLOW, config, pid_alive, wait_for
from test_batching import post_all

WORKER = os.path.join(BUILD, "tests", "c_batch_worker")


def c_stage(name="c", **extra):
    """A YAML stage block running the C test worker; extra keys are YAML lines."""
    lines = ["  %s:" % name, "    command: [%s]" % WORKER]
    lines += ["    %s: %s" % kv for kv in extra.items()]
    return "\n".join(lines) + "\n"


def gated_batch(b, tmp_path, payloads, stage="c"):
    """Holds the stage's one replica busy with a gate request, queues the
    payloads behind it, then opens the gate: the replica, free again, finds
    them all queued, so the batches they form do not depend on how fast the
    requests arrive.  Returns the gate's reply and the payloads' replies."""
    gate = os.path.join(str(tmp_path), "gate")
    held = []
    t = threading.Thread(target=lambda: held.append(b.post("p", "gate:" + gate)))
    t.start()
    try:
        wait_for(lambda: b.status()["stages"][stage]["running"] == 1, 10,
                 what="the gate request to hold the replica")
        out = []
        sender = threading.Thread(target=lambda: out.extend(
            post_all(b, [("p", x) for x in payloads])))
        sender.start()
        wait_for(lambda: b.status()["stages"][stage]["queued"] == len(payloads), 10,
                 what="%d requests queued behind the gate" % len(payloads))
    finally:
        open(gate, "w").close()  # never leave the worker waiting
    t.join(30 * SLOW)
    sender.join(60 * SLOW)
    assert not t.is_alive() and not sender.is_alive(), "requests did not finish"
    return held[0], out


def test_batch_callback_answers_each_item_of_one_batch_to_its_own_request(baton, tmp_path):
    b = baton(config(c_stage(batch="{max_size: 8, window_ms: 50}"), {"p": ["c"]}))
    payloads = ["item %d" % i for i in range(8)]
    gate, replies = gated_batch(b, tmp_path, payloads)
    assert gate.status == 200 and gate.json()["batch_size"] == 1, gate
    assert [r.status for r in replies] == [200] * 8, replies
    docs = [r.json() for r in replies]
    assert [d["echo"] for d in docs] == payloads
    assert {d["batch_size"] for d in docs} == {8}
    assert len({d["batch"] for d in docs}) == 1  # one call of the batch callback
    assert all(r.headers["content-type"] == "application/json" for r in replies)
    assert b.stop() == 0


def test_failing_item_of_a_batch_is_rejected_alone(baton, tmp_path):
    b = baton(config(c_stage(batch="{max_size: 4, window_ms: 50}", retries=2),
                     {"p": ["c"]}))
    payloads = ["ok 0", "fail: bad input", "ok 2", "ok 3"]
    _, replies = gated_batch(b, tmp_path, payloads)
    assert [r.status for r in replies] == [200, 422, 200, 200], replies
    assert replies[1].json()["error"] == "fail: bad input"
    docs = [replies[i].json() for i in (0, 2, 3)]
    assert [d["echo"] for d in docs] == ["ok 0", "ok 2", "ok 3"]
    assert {d["batch_size"] for d in docs} == {4}
    # retry false: rejected at once, not sent again although retries allow it.
    assert b.status()["stages"]["c"]["retried"] == 0
    assert b.stop() == 0


@pytest.mark.parametrize("fast", ["1", "0"])
def test_baton_fail_with_any_message_is_a_rejection(baton, fast):
    # Invalid UTF-8 and a message over the header limit: baton_fail() cleans
    # and cuts the text, so the item is still rejected, not left unanswered.
    # With fast headers (the default) and without (BW_FAST_HEADERS=0).
    b = baton(config(c_stage(retries=2, env="{BW_FAST_HEADERS: \"%s\"}" % fast),
                     {"p": ["c"]}))
    r = b.request("POST", "/v1/pipelines/p", b"fail \xff bad")
    assert r.status == 422 and r.json()["error"] == "fail ? bad", r
    r = b.post("p", "fail" + "x" * 70000)
    assert r.status == 422 and r.json()["code"] == "rejected", r
    assert b.status()["stages"]["c"]["retried"] == 0
    assert b.stop() == 0


def test_idle_c_worker_answers_pings_and_stays_up(baton):
    # A worker that does not answer is killed ping_timeout_ms after a ping,
    # at the next interval (test_supervision proves it with these values):
    # watch for ten intervals and more than twice that.
    b = baton(config(c_stage(ping_interval_ms=100, ping_timeout_ms=300), {"p": ["c"]}))
    pid = b.pids("c")[0]
    end = time.monotonic() + 1.0 * SLOW
    while time.monotonic() < end:
        rep = b.replicas("c")[0]
        assert rep["pid"] == pid and rep["restarts"] == 0, rep
        time.sleep(0.05)
    assert "no pong" not in b.log()
    r = b.post("p", "still here")
    assert r.status == 200 and r.json()["echo"] == "still here"
    assert b.stop() == 0


def test_sigterm_stops_the_c_worker_through_stop(baton):
    # A grace longer than b.stop() waits: had the worker ignored "stop",
    # baton would not have signalled it in time, and b.stop() would fail.
    b = baton(config(c_stage(stop="{grace_ms: 60000}"), {"p": ["c"]}))
    pid = b.pids("c")[0]
    assert b.stop(timeout=10) == 0
    assert not pid_alive(pid)
    assert b.leftover_groups() == []
    mine = [line for line in b.log().splitlines() if " pid=%d " % pid in line]
    assert any('msg="c_batch_worker: stop callback"' in line for line in mine), mine
    stopped = [line for line in mine if 'msg="replica stopped"' in line]
    assert len(stopped) == 1 and 'how="exited with status 0"' in stopped[0], mine
