"""Stations on shared queues (docs/scaleout.md): a stream's item stage whose
queue is in Redis, served by the replicas of two nodes, while the stations,
their sessions and the process stage stay on the node that runs the stream.
Real redis-server (test_scaleout's fixture), real baton nodes, real source
processes (fake_source.py)."""
import json

from conftest import PYTHON, SDK_PY, Baton, wait_for
import test_scaleout as so
import test_streams as ts

redis = so.redis  # the fixture: a redis-server on a port and in a dir of this test


def test_item_stage_on_a_shared_queue_serves_one_nodes_stations(baton, redis, tmp_path):
    script = ([{"emit": "A", "n": 8}, {"emit": "B", "n": 8}, {"eos": True}])
    text = ts.stream_config(tmp_path, {"s1": script},
                            item_env={"STREAM_ITEM_DELAY_MS": "40"},
                            source_extra="    queue: {backend: local}\n")
    # The item stage takes the top-level Redis queue; the process stage stays local.
    text = text.replace("    command: [%s, %s, session]\n" % (PYTHON, ts.WORKER),
                        "    command: [%s, %s, session]\n    queue: {backend: local}\n"
                        % (PYTHON, ts.WORKER))
    queue = ("queue: {backend: redis, url: \"%s\", namespace: t, node: %%s, "
             "claim_after_ms: 2000}\ninterval_ms: 200\n" % redis.url)
    helper = Baton(tmp_path, queue % "n2" + """stages:
  ocr:
    command: [%s, %s, item]
    env: %s
    replicas: {initial: 2}
pipelines:
  p: [ocr]
""" % (PYTHON, ts.WORKER, json.dumps({"PYTHONPATH": SDK_PY, "STREAM_ITEM_DELAY_MS": "40"})),
        name="n2")
    try:
        helper.start()
        b = baton(queue % "n1" + text, name="n1")
        res = ts.wait_results(b, 2, timeout=60)
        got = [(r["session"], r["close_reason"], r["items"], r["result"]["items"]) for r in res]
        # Items come back from either node in emission order, each in its session.
        assert got == [("A", "key_change", 8, ["n=%d" % i for i in range(1, 9)]),
                       ("B", "eos", 8, ["n=%d" % i for i in range(1, 9)])], got
        assert all(r["code"] == "ok" for r in res)
        # The other node's replicas did some of the stations' items.
        assert helper.status()["stages"]["ocr"]["completed"] > 0
        wait_for(lambda: so.pending(redis, "ocr") == 0, 10, what="nothing pending")
        assert b.stop() == 0
        assert helper.stop() == 0
    finally:
        helper.cleanup()
