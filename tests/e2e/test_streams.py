"""Streams end to end: real baton, real source processes (fake_source.py,
speaking the protocol by hand), item and session stages (stream_worker.py).
A source's script decides what it emits; the session stage checks that
every spooled item of a session belongs to it."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import BATON, PYTHON, ROOT, SDK_PY, pid_alive, wait_for

SOURCE = os.path.join(ROOT, "tests", "e2e", "fake_source.py")
WORKER = os.path.join(ROOT, "tests", "e2e", "stream_worker.py")


def stream_config(tmp_path, scripts, overflow="block", credits=8, idle_ms=1000, extra="",
                  source_extra="", session_env=None, item_env=None, replicas=None,
                  item_stages=True, missing_key=None):
    """scripts: {station: [steps]}; each becomes a script file and a station."""
    stations = []
    for name, steps in scripts.items():
        path = tmp_path / ("%s.json" % name)
        path.write_text(json.dumps(steps))
        stations.append("      - {name: %s, url: %s}" % (name, path))
    env_s = {"PYTHONPATH": SDK_PY}
    env_s.update(session_env or {})
    env_i = {"PYTHONPATH": SDK_PY}
    env_i.update(item_env or {})
    session = "{key: order_id, idle_timeout_ms: %d%s}" % (
        idle_ms, ", missing_key: %s" % missing_key if missing_key else "")
    text = """stages:
  cam:
    kind: source
    command: [%s, %s]
    restart: {backoff_ms: 100, backoff_max_ms: 400}
    stop: {grace_ms: 2000}
%s%s  ocr:
    command: [%s, %s, item]
    env: %s
    queue_max: 100000
  proc:
    command: [%s, %s, session]
    env: %s
streams:
  orders:
    source: cam
    stations:
%s
%s    session: %s
    process: [proc]
    flow: {credits: %d, overflow: %s}
%s""" % (PYTHON, SOURCE, ("    replicas: %s\n" % replicas) if replicas else "", source_extra,
         PYTHON, WORKER, json.dumps(env_i), PYTHON, WORKER, json.dumps(env_s),
         "\n".join(stations), "    items: [ocr]\n" if item_stages else "    items: []\n",
         session, credits, overflow, extra)
    return text


def results(b, after=0, wait_ms=0):
    r = b.get("/v1/streams/orders/results?after=%d&wait_ms=%d" % (after, wait_ms))
    assert r.status == 200, r
    return r.json()


def all_results(b):
    return results(b)["results"]


def wait_results(b, n, timeout=30):
    return wait_for(lambda: len(all_results(b)) >= n and all_results(b), timeout,
                    interval=0.05, what="%d results\n%s" % (n, b.log_tail()))


def station(b, name):
    for s in b.status()["streams"]["orders"]["stations"]:
        if s["name"] == name:
            return s
    return None


def metric(b, name, **labels):
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in b.get("/metrics").body.decode().splitlines():
        if line.startswith(name + "{"):
            lab = line[len(name) + 1:line.index("}")]
            if ",".join(sorted(lab.split(","))) == want:
                return float(line.rsplit(" ", 1)[1])
    return None


def test_items_are_grouped_by_key_eos_and_idle(baton, tmp_path):
    b = baton(stream_config(tmp_path, {"s1": [
        {"emit": "A", "n": 3, "interval_ms": 5},
        {"emit": "B", "n": 2},
        {"eos": True},
        {"emit": "C", "n": 4}]}))
    res = wait_results(b, 3)
    got = [(r["session"], r["close_reason"], r["items"], r["result"]["items"]) for r in res]
    assert got == [("A", "key_change", 3, ["n=1", "n=2", "n=3"]),
                   ("B", "eos", 2, ["n=1", "n=2"]),
                   ("C", "idle", 4, ["n=1", "n=2", "n=3", "n=4"])]
    assert [r["seq"] for r in res] == [1, 2, 3] and all(r["code"] == "ok" for r in res)
    # The spool as the seed lays it out, each session marked closed and done.
    spool = tmp_path / "spool" / "s1"
    assert sorted(os.listdir(spool)) == ["A", "B", "C"]
    for d in ("A", "B", "C"):
        names = set(os.listdir(spool / d))
        assert {"__EOS__", "__DONE__", "items.jsonl", "item-000001.txt"} <= names
    lines = (tmp_path / "spool" / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["session"] for x in lines] == ["A", "B", "C"]
    assert metric(b, "baton_stream_sessions_total", stream="orders", station="s1",
                  reason="key_change") == 1
    assert metric(b, "baton_stream_sessions_total", stream="orders", station="s1",
                  reason="idle") == 1
    assert metric(b, "baton_stream_items_total", stream="orders", station="s1") == 9
    assert b.stop() == 0


def test_key_order_holds_when_item_stages_answer_out_of_order(baton, tmp_path):
    # Three OCR replicas, each slower than the one before, finish items out
    # of order; sessions must still be cut where the key changes in the stream.
    steps = [{"emit": k, "n": 4} for k in "ABCDEF"]
    cfg = stream_config(tmp_path, {"s1": steps},
                        item_env={"STREAM_ITEM_DELAY_PER_REPLICA_MS": "7"})
    cfg = cfg.replace("    queue_max: 100000\n", "    queue_max: 100000\n    replicas: 3\n", 1)
    b = baton(cfg)
    res = wait_results(b, 6)
    assert [(r["session"], r["items"]) for r in res] == [(k, 4) for k in "ABCDEF"]
    assert all(r["result"]["items"] == ["n=1", "n=2", "n=3", "n=4"] for r in res)
    assert b.stop() == 0


def test_killed_source_restarts_and_its_session_is_processed_once(baton, tmp_path):
    gate = tmp_path / "go"
    # s1 emits two items of A, waits for the test, then (after its restart,
    # resuming its script) two more of A and one of B.  s2 keeps emitting.
    s1 = {"resume": True, "steps": [
        {"emit": "A", "n": 2}, {"wait_file": str(gate)}, {"emit": "A", "n": 2},
        {"emit": "B", "n": 1}, {"eos": True}]}
    s2 = [{"emit": "X%d" % i, "n": 2, "interval_ms": 20} for i in range(40)]
    b = baton(stream_config(tmp_path, {"s1": s1, "s2": s2}, idle_ms=5000))
    wait_for(lambda: (station(b, "s1")["session"] or {}).get("items") == 2, 20,
             what="s1's first two items")
    pid = station(b, "s1")["pid"]
    before_s2 = station(b, "s2")["items"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10)
    # s2 never stalls while s1 is down.
    wait_for(lambda: station(b, "s2")["items"] >= before_s2 + 6, 20, what="s2 keeps going")
    wait_for(lambda: station(b, "s1")["state"] == "ready" and station(b, "s1")["pid"] != pid,
             20, what="s1 restarted")
    assert station(b, "s1")["restarts"] == 1
    gate.write_text("")
    wait_for(lambda: [r for r in all_results(b) if r["station"] == "s1"], 20)
    wait_for(lambda: len([r for r in all_results(b) if r["station"] == "s1"]) >= 2, 20)
    s1res = [r for r in all_results(b) if r["station"] == "s1"]
    # A went on across the restart: one session of four items, processed once.
    assert [(r["session"], r["items"], r["close_reason"]) for r in s1res] == [
        ("A", 4, "key_change"), ("B", 1, "eos")]
    assert b.stop() == 0


def test_kill9_of_baton_then_restart_processes_every_closed_session_once(baton, tmp_path):
    gate = tmp_path / "open"
    log = tmp_path / "processed.log"
    script = [{"emit": k, "n": 2} for k in ("A", "B", "C", "D")] + [{"emit": "E", "n": 1}]
    cfg = stream_config(tmp_path, {"s1": script}, idle_ms=60000,
                        session_env={"STREAM_SESSION_GATE": str(gate),
                                     "STREAM_SESSION_LOG": str(log)})
    b = baton(cfg)
    # A..D close by key change; E stays open.  A is held in the process stage.
    wait_for(lambda: (station(b, "s1")["session"] or {}).get("key") == "E", 20,
             what="E open\n" + b.log_tail())
    wait_for(lambda: sum(station(b, "s1")["sessions"].values()) == 4, 20)
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    for g in list(b.pgids):
        wait_for(lambda: not pid_alive(g), 10, what="replica %d to die with baton" % g)
    assert not log.exists() and all_results_on_disk(tmp_path) == []
    spool = tmp_path / "spool" / "s1"
    assert sorted(os.listdir(spool)) == ["A", "B", "C", "D", "E"]
    assert not (spool / "E" / "__EOS__").exists()
    # A crash between a result line and its __DONE__: the line is there.
    line = json.dumps({"seq": 1, "stream": "orders", "station": "s1", "session": "A",
                       "session_id": "A", "close_reason": "key_change", "items": 2,
                       "code": "ok", "result": {"session": "A", "items": ["n=1", "n=2"]}})
    with open(tmp_path / "spool" / "results.jsonl", "w") as f:
        f.write(line + "\n" + '{"seq": 2, "stream": "ord')  # and a torn second line
    gate.write_text("")
    # The same spool, a source that emits nothing more.
    (tmp_path / "s1.json").write_text(json.dumps([]))
    b2 = baton(cfg.replace("idle_timeout_ms: 60000", "idle_timeout_ms: 1000"), name="again")
    res = wait_results(b2, 5)
    assert sorted(r["session"] for r in res) == ["A", "B", "C", "D", "E"]
    e = [r for r in res if r["session"] == "E"][0]
    assert e["close_reason"] == "idle" and e["items"] == 1
    # Processed once each: A was not run again (its line was there already).
    processed = sorted(log.read_text().split())
    assert processed == ["s1/B", "s1/C", "s1/D", "s1/E"]
    lines = [json.loads(x) for x in (tmp_path / "spool" / "results.jsonl").read_text().splitlines()]
    assert sorted(x["session"] for x in lines) == ["A", "B", "C", "D", "E"]
    for d in "ABCDE":
        assert (spool / d / "__DONE__").exists()
    assert b2.stop() == 0


def all_results_on_disk(tmp_path):
    p = tmp_path / "spool" / "results.jsonl"
    return p.read_text().splitlines() if p.exists() else []


def test_sigterm_finishes_the_open_session_before_exit(baton, tmp_path):
    b = baton(stream_config(tmp_path, {"s1": [{"emit": "A", "n": 3}]}, idle_ms=60000))
    wait_for(lambda: (station(b, "s1")["session"] or {}).get("items") == 3, 20)
    assert b.stop() == 0
    lines = [json.loads(x) for x in all_results_on_disk(tmp_path)]
    assert [(x["session"], x["close_reason"], x["items"]) for x in lines] == [
        ("A", "station_stopped", 3)]
    log = b.log()
    assert log.index("session processed") < log.index("stopping replicas")


def test_fast_source_with_drop_oldest_stays_bounded_and_counts_drops(baton, tmp_path):
    b = baton(stream_config(tmp_path, {"s1": [{"flood": 3000, "size": 32768}]},
                            overflow="drop_oldest", credits=4,
                            item_env={"STREAM_ITEM_DELAY_MS": "20"}, idle_ms=60000))
    wait_for(lambda: station(b, "s1")["items"] >= 3000, 60, what="the flood\n" + b.log_tail())
    st = station(b, "s1")
    dropped = st["dropped"].get("overflow", 0)
    assert dropped > 1000  # 20 ms per item cannot keep up with a flood
    assert metric(b, "baton_stream_items_dropped_total", stream="orders", station="s1",
                  reason="overflow") == dropped
    # Held in baton at most: credits running + credits waiting.
    assert st["pending_items"] <= 8
    with open("/proc/%d/status" % b.proc.pid) as f:
        rss_kb = int([x for x in f if x.startswith("VmRSS")][0].split()[1])
    if not os.environ.get("BATON_SANITIZED"):
        assert rss_kb < 64 * 1024, rss_kb  # 3000 × 32 KiB = 94 MiB went through
    assert b.stop() == 0


def test_block_mode_source_waits_for_credit(baton, tmp_path):
    b = baton(stream_config(tmp_path, {"s1": [{"flood": 300, "size": 100}]}, credits=2,
                            item_env={"STREAM_ITEM_DELAY_MS": "5"}, idle_ms=60000))
    held = []

    def done():
        st = station(b, "s1")
        held.append(st["pending_items"])
        return (st["session"] or {}).get("items") == 300
    wait_for(done, 60, what="300 items\n" + b.log_tail())
    st = station(b, "s1")
    assert st["dropped"] == {} and st["restarts"] == 0
    # The source never had more in baton than its credits, and used them.
    assert max(held) == 2, held
    assert b.stop() == 0


def test_emit_without_credit_is_a_protocol_violation(baton, tmp_path):
    raw = '{"t":"emit","len":0}'
    b = baton(stream_config(tmp_path, {"s1": [{"sleep_ms": 300}, {"raw": raw}] * 1},
                            credits=1, item_stages=False), wait_ready=False)
    # With credit 1 the first raw emit is fine; scripts repeat after a restart.
    (tmp_path / "s1.json").write_text(json.dumps([{"raw": raw}, {"raw": raw}]))
    wait_for(lambda: "without credit" in b.log(), 20, what="the violation\n" + b.log_tail())
    assert "protocol violation" in b.log()
    b.stop()


@pytest.mark.parametrize("line,expect", [
    ('{"t":"emit","meta":[1],"len":0}', ("meta", "emit", "is not an object")),
    ('{"t":"eos","session":5}', ("session", "eos", "is not a string")),
    ('{"t":"res","id":"r1"}', ("answer for a request it does not hold",)),
])
def test_malformed_source_messages_are_violations(baton, tmp_path, line, expect):
    b = baton(stream_config(tmp_path, {"s1": [{"sleep_ms": 200}, {"raw": line}]},
                            item_stages=False), wait_ready=False)

    def said():
        return [x for x in b.log().splitlines()
                if 'msg="protocol violation" stage=cam' in x and all(e in x for e in expect)]
    wait_for(said, 20, what=repr(expect) + "\n" + b.log_tail())
    b.stop()


def test_eos_for_unknown_session_and_non_string_key_are_logged(baton, tmp_path):
    b = baton(stream_config(tmp_path, {"s1": [
        {"eos": "nobody"},
        {"emit": "A", "n": 1}, {"emit_key": 1}, {"eos": "Z"}, {"eos": "A"}]}))
    res = wait_results(b, 1)
    assert [(r["session"], r["close_reason"], r["items"]) for r in res] == [("A", "eos", 1)]
    log = b.log()
    assert "eos with no open session" in log
    assert 'msg="eos for unknown session (further ones are not logged)"' in log
    assert "session=Z" in log
    assert "is not a string" in log
    assert station(b, "s1")["dropped"] == {"bad_key": 1}
    assert b.stop() == 0


def test_missing_key_close_ends_a_session_at_a_gap(baton, tmp_path):
    b = baton(stream_config(tmp_path, {"s1": [
        {"emit": "A", "n": 2}, {"emit_nokey": 2}, {"emit": "A", "n": 1}]},
        missing_key="close", idle_ms=60000))
    wait_for(lambda: (station(b, "s1")["session"] or {}).get("id") == "A.2", 20,
             what="A seen again\n" + b.log_tail())
    res = wait_results(b, 1)
    assert [(r["session"], r["session_id"], r["close_reason"], r["items"]) for r in res] == [
        ("A", "A", "missing_key", 2)]
    assert station(b, "s1")["dropped"] == {"no_key": 2}
    assert b.stop() == 0


def test_source_that_cannot_start_is_retried_with_backoff(baton, tmp_path):
    cfg = stream_config(tmp_path, {"s1": [{"emit": "A", "n": 1}]})
    cfg = cfg.replace("url: %s" % (tmp_path / "s1.json"),
                      "url: %s" % (tmp_path / "no-such-camera.json"))
    b = baton(cfg, wait_ready=False)
    wait_for(lambda: station(b, "s1")["restarts"] >= 2, 20, what="restarts\n" + b.log_tail())
    log = b.log()
    assert "no-such-camera.json" in log  # the worker's own complaint, in baton's log
    assert 'msg="replica died" stage=cam' in log
    b.stop()


def test_stations_scale_under_headroom_and_removal_finishes_the_open_order(
        baton, tmp_path, monkeypatch):
    signals = tmp_path / "signals.json"
    signals.write_text(json.dumps({"cpu_percent": 10, "gpu_percent": 0,
                                   "latency_p95_s": {"cam": 0.1}}))
    monkeypatch.setenv("BATON_TEST_SIGNALS", str(signals))
    gate = tmp_path / "more"
    scripts = {"s%d" % i: [{"emit": "O%d" % i, "n": 2}, {"wait_file": str(gate)},
                           {"emit": "P%d" % i, "n": 1}] for i in (1, 2, 3)}
    cfg = stream_config(tmp_path, scripts, replicas="{min: 1, max: 3, initial: 1}",
                        source_extra="    autoscale: {policy: headroom, hysteresis_s: 1}\n",
                        idle_ms=60000)
    b = baton(cfg)
    wait_for(lambda: all(station(b, n)["state"] == "ready" for n in ("s1", "s2", "s3")), 30,
             what="three stations\n" + b.log_tail())
    hist = [(e["from"], e["to"]) for e in b.status()["scaling_history"]
            if e["stage"] == "cam" and e["applied"]]
    assert hist[:2] == [(1, 2), (2, 3)]
    wait_for(lambda: (station(b, "s2")["session"] or {}).get("items") == 2, 20)
    # Freeze the count, then remove s2 mid-order: its open order is finished.
    assert b.request("POST", "/v1/stages/cam/scale", json.dumps({"replicas": 3})).status == 200
    pid = station(b, "s2")["pid"]
    r = b.request("DELETE", "/v1/streams/orders/stations/s2")
    assert r.status == 202, r
    wait_for(lambda: station(b, "s2") is None, 20, what="s2 removed\n" + b.log_tail())
    wait_for(lambda: not pid_alive(pid), 20)
    res = [r for r in all_results(b) if r["station"] == "s2"]
    assert [(r["session"], r["close_reason"], r["items"]) for r in res] == [
        ("O2", "station_stopped", 2)]
    assert b.request("DELETE", "/v1/streams/orders/stations/s2").status == 404
    # A station added at run time takes the free slot and produces.
    s4 = tmp_path / "s4.json"
    s4.write_text(json.dumps([{"emit": "Q", "n": 1}, {"eos": True}]))
    r = b.request("POST", "/v1/streams/orders/stations", json.dumps({"name": "s4", "url": str(s4)}))
    assert r.status == 201, r
    wait_for(lambda: [x for x in all_results(b) if x["station"] == "s4"], 20,
             what="s4's order\n" + b.log_tail())
    assert b.request("POST", "/v1/streams/orders/stations",
                     json.dumps({"name": "s5", "url": str(s4)})).status == 409  # no slot
    assert b.request("POST", "/v1/streams/orders/stations",
                     json.dumps({"name": "s1", "url": "x"})).status == 409
    assert b.request("POST", "/v1/streams/orders/stations", "{").status == 400
    assert b.stop() == 0


def test_results_long_poll_answers_when_a_session_ends(baton, tmp_path):
    gate = tmp_path / "go"
    b = baton(stream_config(tmp_path, {"s1": [{"wait_file": str(gate)}, {"emit": "A", "n": 1},
                                              {"eos": True}]}))
    assert results(b)["results"] == [] and results(b)["next"] == 0
    import threading
    got = []
    t = threading.Thread(target=lambda: got.append(results(b, after=0, wait_ms=30000)))
    t.start()
    time.sleep(0.3)
    assert not got  # still waiting
    gate.write_text("")
    t.join(40)
    assert got and [r["session"] for r in got[0]["results"]] == ["A"] and got[0]["next"] == 1
    assert results(b, after=1)["results"] == []
    assert b.get("/v1/streams/nope/results").status == 404
    assert b.get("/v1/streams/orders/results?after=x").status == 400
    assert b.stop() == 0


def test_sighup_refuses_changes_to_a_source_and_keeps_the_stations(baton, tmp_path):
    b = baton(stream_config(tmp_path, {"s1": [{"emit": "A", "n": 2}, {"eos": True}]}))
    wait_results(b, 1)
    pid = station(b, "s1")["pid"]
    with open(b.config_path) as f:
        text = f.read()
    with open(b.config_path, "w") as f:
        f.write(text.replace("    stop: {grace_ms: 2000}\n", "    stop: {grace_ms: 3000}\n", 1))
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in b.log(), 20, what="the refusal\n" + b.log_tail())
    assert "stations cannot change by a reload" in b.log()
    assert station(b, "s1")["pid"] == pid and b.proc.poll() is None
    # The streams section itself cannot change either.
    with open(b.config_path, "w") as f:
        f.write(text.replace("idle_timeout_ms: 1000", "idle_timeout_ms: 2000"))
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: b.log().count("reload refused") >= 2, 20, what="the second refusal")
    assert "'streams' cannot change by a reload" in b.log()
    assert station(b, "s1")["pid"] == pid
    assert b.stop() == 0


def test_abandoned_long_polls_cannot_lock_the_api_out(baton, tmp_path):
    # A suspended connection does not notice its client leave: without a
    # cap, 25 polls abandoned at max_connections 20 hold every slot for
    # their whole wait_ms, and nothing else gets an answer.
    import socket
    cfg = stream_config(tmp_path, {"s1": []}, extra="http: {max_connections: 20}\n")
    cfg = "http: {max_connections: 20}\n" + cfg.replace("http: {max_connections: 20}\n", "")
    b = baton(cfg)
    socks = []
    for _ in range(25):
        s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
        s.sendall(b"GET /v1/streams/orders/results?after=0&wait_ms=600000 HTTP/1.1\r\n"
                  b"Host: x\r\n\r\n")
        socks.append(s)
    time.sleep(0.5)
    for s in socks:
        s.close()
    r = b.request("GET", "/v1/status", timeout=10)
    assert r.status == 200
    # Those over the cap were answered at once rather than held.
    assert b.get("/v1/streams/orders/results?after=0&wait_ms=1").status == 200
    for bad in ("-1", "18446744073709551615", "99999999999999999999999", "9223372036854775808"):
        assert b.get("/v1/streams/orders/results?after=" + bad).status == 400, bad
    assert b.stop() == 0


def test_uncreatable_spool_is_a_config_error_naming_the_line(baton, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the spool's parent should be\n")
    cfg = stream_config(tmp_path, {"st1": [{"emit": 1, "key": "A"}]},
                        extra="    spool: %s\n" % (blocker / "spool"))
    b = baton(cfg, start=False)
    proc = subprocess.run([BATON, "serve", b.config_path, "--listen", "127.0.0.1:%d" % b.port],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0, proc
    line = [i + 1 for i, l in enumerate(cfg.splitlines()) if l.strip().startswith("spool:")][0]
    want = "%s:%d:12: stream 'orders': cannot create the spool directory '%s'" % (
        b.config_path, line, blocker / "spool")
    assert want in proc.stderr, proc.stderr
