"""Dynamic batching and shared stages: batches fill under load, a lone
request waits no longer than the window, pipelines sharing a stage mix in
its batches, and one failing item fails alone."""
import json
import re
import threading

from conftest import SLOW, Gate, config, fake_stage, wait_for


def batch_stage(name="w", **kw):
    env = dict(kw.pop("env", {}), FAKE_BATCH="1")
    return fake_stage(name, env=env, **kw)


def post_all(b, items, headers=None):
    """Posts (pipeline, payload) pairs concurrently; returns replies in order."""
    out = [None] * len(items)

    def send(i, pipeline, payload):
        out[i] = b.post(pipeline, payload, headers=headers)

    threads = [threading.Thread(target=send, args=(i, p, d)) for i, (p, d) in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60 * SLOW)
    return out


def server_timing(reply):
    return {k: float(v) for k, v in re.findall(r"([\w.-]+);dur=([\d.]+)",
                                               reply.headers["server-timing"])}


def metric(b, name, **labels):
    text = b.get("/metrics").body.decode()
    want = ",".join('%s="%s"' % kv for kv in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{" + want + "}") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name + str(labels))


def test_eight_concurrent_requests_make_one_batch(baton):
    # A long window: the batch must leave because it is full, not because
    # the window closed.
    b = baton(config(batch_stage(batch="{max_size: 8, window_ms: 3000}"), {"p": ["w"]}))
    replies = post_all(b, [("p", "item %d" % i) for i in range(8)])
    docs = [r.json() for r in replies]
    assert [d["echo"] for d in docs] == ["item %d" % i for i in range(8)]
    assert {d["batch_size"] for d in docs} == {8}
    assert len({d["batch"] for d in docs}) == 1
    assert all(server_timing(r)["w-queue"] < 2900 for r in replies)
    assert metric(b, "baton_stage_batch_size_count", stage="w") == 1
    assert metric(b, "baton_stage_batch_size_bucket", stage="w", le="4") == 0
    assert metric(b, "baton_stage_batch_size_bucket", stage="w", le="8") == 1
    assert b.stop() == 0


def test_with_a_50ms_window_eight_waiting_requests_leave_as_one_batch(baton, tmp_path):
    # The configuration. Eight threads cannot be relied on to arrive
    # within 50 ms on a loaded machine, so the replica is held busy (one
    # batch at a time) while they queue; when it frees, they leave together.
    b = baton(config(batch_stage(batch="{max_size: 8, window_ms: 50}", max_ongoing=1),
                     {"p": ["w"]}))
    out = [None] * 8

    def send(i):
        out[i] = b.post("p", "item %d" % i)

    with Gate(tmp_path) as gate:
        busy = threading.Thread(target=lambda: b.post("p", gate.payload))
        busy.start()
        wait_for(lambda: b.status()["stages"]["w"]["running"] == 1, 10)
        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        wait_for(lambda: b.status()["stages"]["w"]["queued"] == 8, 10,
                 what="eight requests queued")
    for t in threads:
        t.join(60 * SLOW)
    busy.join(60 * SLOW)
    docs = [r.json() for r in out]
    assert [d["echo"] for d in docs] == ["item %d" % i for i in range(8)]
    assert {d["batch_size"] for d in docs} == {8}
    assert len({d["batch"] for d in docs}) == 1
    assert b.stop() == 0


def test_lone_request_with_a_50ms_window_is_answered_within_it(baton):
    b = baton(config(batch_stage(batch="{max_size: 8, window_ms: 50}"), {"p": ["w"]}))
    r = b.post("p", "alone")
    assert r.status == 200 and r.json()["batch_size"] == 1
    # baton's own measure of the wait (Server-Timing), both ways: the whole
    # window, and not a window several times longer (4 x 50 = 200 ms).
    waited = server_timing(r)["w-queue"]
    assert 49 <= waited < 50 + 130 * SLOW, waited
    assert b.stop() == 0


def test_lone_request_waits_the_window_and_no_longer(baton):
    b = baton(config(batch_stage(batch="{max_size: 8, window_ms: 200}"), {"p": ["w"]}))
    r = b.post("p", "alone")
    assert r.status == 200 and r.json()["batch_size"] == 1
    waited = server_timing(r)["w-queue"]
    # It waited for company (the window), then left alone: less than twice
    # the window (a timer a few ms late is fine; 800 ms is not).
    assert 199 <= waited < 200 + 200 * SLOW, waited
    assert b.stop() == 0


def test_a_deadline_shorter_than_the_window_sends_the_batch_in_time(baton):
    # A lone request must not wait for company until it times out with the
    # replica idle: the batch leaves just before its deadline.
    b = baton(config(batch_stage(batch="{max_size: 4, window_ms: 3000}", timeout_ms=1000),
                     {"p": ["w"]}))
    r = b.post("p", "alone")
    assert r.status == 200 and r.json()["batch_size"] == 1, r
    # 980 ms. A loop stalled on a loaded machine may dispatch a little past
    # the deadline (its timer dispatches before it judges): the 200 is the
    # claim then, and the bound only shows the 3 s window was not waited.
    late = 300 * SLOW
    assert 900 - 2 <= server_timing(r)["w-queue"] < 1000 + late, server_timing(r)
    # The client's own timeout counts the same way.
    r = b.post("p", "hurried", headers={"Baton-Timeout-Ms": "500"})
    assert r.status == 200 and r.json()["batch_size"] == 1, r
    assert 400 - 2 <= server_timing(r)["w-queue"] < 500 + late, server_timing(r)
    assert b.stop() == 0


def test_without_window_a_free_replica_takes_what_is_there(baton):
    b = baton(config(batch_stage(batch="{max_size: 8, window_ms: 0}"), {"p": ["w"]}))
    r = b.post("p", "alone")
    assert r.json()["batch_size"] == 1
    assert server_timing(r)["w-queue"] < 400 * SLOW
    assert b.stop() == 0


def test_steady_flood_makes_full_batches(baton):
    b = baton(config(batch_stage(batch="{max_size: 8, window_ms: 20}", max_ongoing=1),
                     {"p": ["w"]}))
    replies = post_all(b, [("p", "slow:40") for _ in range(96)])
    assert all(r.status == 200 for r in replies)
    sizes = [r.json()["batch_size"] for r in replies]
    full = sizes.count(8)
    assert full >= 48, sizes  # at least half the requests travelled in full batches
    batches = metric(b, "baton_stage_batch_size_count", stage="w")
    assert metric(b, "baton_stage_batch_size_sum", stage="w") == 96
    assert batches <= 24, batches
    assert b.stop() == 0


def test_two_pipelines_sharing_a_stage_mix_in_its_batches(baton):
    cfg = ("stages:\n" + batch_stage("shared", batch="{max_size: 8, window_ms: 2000}") +
           fake_stage("pre") + "pipelines:\n  a: [shared]\n  b: [pre, shared]\n")
    b = baton(cfg)
    items = [("a" if i % 2 else "b", "req-%d" % i) for i in range(8)]
    replies = post_all(b, items)
    for (pipeline, payload), r in zip(items, replies):
        assert r.status == 200, r
        doc = r.json()
        assert doc["echo"] == payload  # each answer went back to its own request
        assert doc["batch_size"] == 8
        assert doc["batch_pipelines"] == ["a", "b"]
    assert b.stop() == 0


def test_one_failing_item_in_a_batch_fails_alone(baton):
    b = baton(config(batch_stage(batch="{max_size: 4, window_ms: 3000}"), {"p": ["w"]}))
    replies = post_all(b, [("p", "ok-0"), ("p", "reject:bad one"), ("p", "ok-2"), ("p", "ok-3")])
    assert [r.status for r in replies] == [200, 422, 200, 200]
    assert replies[1].json()["error"] == "bad one"
    assert {r.json()["batch_size"] for r in replies if r.status == 200} == {4}
    assert b.stop() == 0


def test_crash_mid_batch_retries_every_item_in_new_batches(baton, state_dir):
    b = baton(config(batch_stage(batch="{max_size: 4, window_ms: 3000}", retries=1,
                                 restart="{backoff_ms: 50}",
                                 env={"FAKE_STATE_DIR": state_dir}), {"p": ["w"]}))
    replies = post_all(b, [("p", "a"), ("p", "crash-once:c1"), ("p", "b"), ("p", "c")])
    assert [r.status for r in replies] == [200, 200, 200, 200], replies
    assert [r.json()["echo"] for r in replies] == ["a", "crash-once:c1", "b", "c"]
    assert metric(b, "baton_stage_retries_total", stage="w") == 4
    assert b.stop() == 0


def test_max_ongoing_counts_batches(baton, tmp_path):
    # Two batches in flight on one replica at most: of 3 full batches of 2,
    # the third waits. The six posts arrive one by one, so the check waits
    # for one status snapshot that holds all six, while every item waits at
    # a gate; a long window lets each batch fill however slowly they come.
    b = baton(config(batch_stage(batch="{max_size: 2, window_ms: 5000}", max_ongoing=2),
                     {"p": ["w"]}))
    results = []
    snap = {}

    def all_six_accepted():
        snap.update(b.status()["stages"]["w"])
        return snap["queued"] + snap["running"] == 6

    with Gate(tmp_path) as gate:
        t = threading.Thread(target=lambda: results.extend(
            post_all(b, [("p", gate.payload) for _ in range(6)])))
        t.start()
        wait_for(all_six_accepted, 10, what="six requests queued or running")
    assert snap["running"] == 4 and snap["queued"] == 2, snap
    assert snap["replicas"][0]["in_flight"] == 4, snap
    t.join(60 * SLOW)
    assert [r.status for r in results] == [200] * 6
    assert b.stop() == 0


def test_batch_mates_of_a_timed_out_request_time_out_with_it(baton):
    # Both requests of the batch reach their deadline together. The first one's
    # timeout restarts the replica; the second times out too, rather than being
    # sent again as an innocent victim of the restart (a second batch).
    b = baton(config(batch_stage(batch="{max_size: 2, window_ms: 3000}", timeout_ms=1000,
                                 retries=2), {"p": ["w"]}))
    replies = post_all(b, [("p", "hang"), ("p", "hang")])
    assert [r.status for r in replies] == [504, 504], replies
    assert metric(b, "baton_stage_batch_size_count", stage="w") == 1
    assert b.status()["stages"]["w"]["retried"] == 0
    assert b.stop() == 0


def test_check_warns_when_queue_max_is_below_the_batch_size(tmp_path):
    from conftest import BATON
    import subprocess
    cfg = tmp_path / "b.yaml"
    cfg.write_text(config(batch_stage(batch="{max_size: 4, window_ms: 50}", queue_max=2),
                          {"p": ["w"]}))
    r = subprocess.run([BATON, "check", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "b.yaml:2:3: warning: stage 'w' has queue_max 2 below batch.max_size 4" in r.stderr, \
        r.stderr
    cfg.write_text(config(batch_stage(batch="{max_size: 4, window_ms: 50}"), {"p": ["w"]}))
    r = subprocess.run([BATON, "check", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
