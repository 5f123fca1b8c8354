"""The stations example (examples/stations) end to end, short: a real RTSP
server on 127.0.0.1 plays station1's orders, station2 reads the same kind of
video from an MJPEG file (file://), baton runs the camera sources, OCR,
sessions and select -> recognise -> validate, and every order must come out
validated correct (the demo's bar is 95 %; with six orders that is all).

The item classifier is the example's own setup step: trained once per
checkout into examples/stations/model/ (a few minutes on a loaded machine),
then reused by this test, `make demo-stations` and the benchmark.
"""

import json
import os
import sys
import time

import pytest

from conftest import BUILD, ROOT, SLOW, pid_alive, wait_for

sys.path.insert(0, os.path.join(ROOT, "examples", "stations"))
import demo  # noqa: E402

MODEL = os.path.join(ROOT, "examples", "stations", "model", "items.pt")
SANITIZER_MARKERS = ("runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer")
CLOSE_REASONS = {"eos", "key_change", "idle", "max_duration", "max_items", "missing_key",
                 "station_stopped", "recovered"}


@pytest.fixture(scope="module")
def model():
    demo.train_if_missing(MODEL)
    return MODEL


def get_json(run, path):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", run.http_port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


def test_every_order_of_two_stations_is_validated_correct(tmp_path, model):
    run = demo.Stations(str(tmp_path / "work"), BUILD, stations=2, orders=3, seed=5,
                        model=model, file_stations=(2,), order_s=4.0, gap_s=3.0)
    with run:
        run.start()
        verdicts = run.wait_all(timeout=(run.timeline_s(4.0, 3.0) + 150) * SLOW)
        status, doc = get_json(run, "/v1/status")
        assert status == 200
        stations = doc["streams"]["orders"]["stations"]
        pids = [s.get("pid") for s in stations if s.get("pid")]
        assert {s["name"] for s in stations} == {"station1", "station2"}, stations
        assert run.stop("baton") == 0, run.log("baton")[-3000:]
    for pid in pids:   # the sources went down with baton
        wait_for(lambda: not pid_alive(pid), 10, what="source %d to exit" % pid)
    log = run.log("baton")
    for marker in SANITIZER_MARKERS:   # baton's, and the C OCR worker's (its stderr)
        assert marker not in log, log[-4000:]

    lines = []
    acc = demo.report(run.orders, verdicts, out=_Lines(lines))
    assert acc >= 0.95, "accuracy %.1f%%:\n%s\n%s" % (100 * acc, "".join(lines),
                                                     run.log("baton")[-3000:])
    for o in run.orders:
        r = verdicts[o["id"]]
        assert r["code"] == "ok" and r["station"] == o["station"], r
        assert r["close_reason"] in CLOSE_REASONS, r
        assert isinstance(r["closed_unix_ms"], int) and r["latency_ms"] >= 0, r
        res = r["result"]
        assert res["order_id"] == o["id"] and res["correct"] is True, r
        # The spool keeps the session: its frames, its index, both markers.
        d = os.path.join(run.spool, r["station"], r["session_id"])
        names = os.listdir(d)
        assert "__EOS__" in names and "__DONE__" in names and "items.jsonl" in names, names
        frames = [n for n in names if n.startswith("item-") and n.endswith(".jpg")]
        assert len(frames) == r["items"] >= res["frames"] >= 1, (names, r)
        with open(os.path.join(d, frames[0]), "rb") as f:
            assert f.read(2) == b"\xff\xd8"   # the camera's JPEG, as emitted


def test_a_camera_whose_url_does_not_answer_says_why_in_batons_log(tmp_path, model):
    port = demo.free_port()   # nothing listens there
    run = demo.Stations(str(tmp_path / "work"), BUILD, stations=1, orders=1, model=model,
                        station_urls=["rtsp://127.0.0.1:%d/s1" % port])
    with run:
        run.start_baton()
        wait_for(lambda: "Could not open resource" in run.log("baton")
                 or "Could not connect" in run.log("baton"), 60,
                 what="the camera's error in baton's log\n" + run.log("baton")[-2000:])
        log = run.log("baton")
        line = next(l for l in log.splitlines() if "rtsp://127.0.0.1:%d/s1" % port in l
                    and "camera station1" in l)
        assert "stage=camera" in line, line
    for marker in SANITIZER_MARKERS:
        assert marker not in run.log("baton"), run.log("baton")[-4000:]


class _Lines:
    def __init__(self, out):
        self.out = out

    def write(self, s):
        self.out.append(s)


def test_the_checked_in_config_is_what_scenes_writes_and_baton_accepts_it():
    import subprocess
    import scenes
    path = os.path.join(ROOT, "examples", "stations", "baton.yaml")
    with open(path) as f:
        assert f.read() == scenes.config_text(), \
            "examples/stations/baton.yaml differs from `python3 scenes.py config`"
    r = subprocess.run([os.path.join(BUILD, "baton"), "check", path], capture_output=True,
                       timeout=60 * SLOW)
    assert r.returncode == 0, r.stderr.decode()
    assert b"stream orders: source camera" in r.stdout, r.stdout
