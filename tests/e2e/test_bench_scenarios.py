"""`baton bench --scenarios`: scenario files, their errors, the load
generator's two loops against a forked daemon or a running one (--url),
and the JSON, CSV and SVG it writes.  Figures are not judged here (that is
bench/'s job); what is checked holds on any machine."""
import csv
import json
import os
import subprocess
import xml.etree.ElementTree as ET

from conftest import BATON, PYTHON, SDK_PY, SLOW, config, fake_stage

SEED_COLUMNS = ["scenario", "replicas", "duration_s", "requests", "success_rate",
                "throughput_rps", "latency_avg_ms", "latency_p95_ms", "latency_p99_ms",
                "cpu_avg", "cpu_max", "gpu_avg", "gpu_max"]


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def bench(*args, timeout=120):
    return subprocess.run([BATON, "bench"] + list(args), capture_output=True, text=True,
                          timeout=timeout * SLOW)


def work_config(tmp_path, extra=""):
    return write(tmp_path, "cfg.yaml",
                 config(fake_stage("work", replicas="{initial: 1, max: 4}", **(
                     {"batch": extra} if extra else {})), {"p": ["work"]}))


def test_scenario_file_errors_name_file_line_and_column(tmp_path):
    cfg = work_config(tmp_path)
    cases = [
        # (scenario file text, where, what the message says)
        ("pipeline: p\npayload: x\nscenarios:\n  - name: a\n    concurency: 4\n",
         ":5:5:", "unknown key 'concurency'"),
        ("pipeline: p\npayload: x\nscenarios:\n  - {name: a, load: open, rate: -5}\n",
         ":4:33:", "'rate' must be between"),
        ("pipeline: p\npayload: x\nscenarios:\n  - {name: a, load: open}\n",
         ":4:5:", "needs 'rate'"),
        ("pipeline: p\npayload: x\nscenarios:\n  - {name: a, replicas: {work: 0}}\n",
         ":4:32:", "between 1 and"),
        ("pipeline: p\npayload: x\nscenarios:\n  - {name: a, load: sideways}\n",
         ":4:21:", "closed or open"),
        ("pipeline: p\nscenarios:\n  - {name: a}\n", ":1:1:", "needs 'input'"),
        ("pipeline: p\npayload: x\nscenarios: []\n", ":3:12:", "non-empty list"),
        ("pipeline: p\npayload: x\nscenarios:\n  - {name: a}\n  - {name: a}\n",
         ":5:5:", "a second scenario named 'a'"),
    ]
    for text, where, what in cases:
        sc = write(tmp_path, "sc.yaml", text)
        r = bench(cfg, "--scenarios", sc, "--out", str(tmp_path / "out"))
        assert r.returncode == 2, (text, r.stdout, r.stderr)
        assert sc + where in r.stderr and what in r.stderr, (text, r.stderr)
        assert not (tmp_path / "out.csv").exists()


def test_scenarios_run_closed_and_open_and_write_json_csv_svg(tmp_path):
    cfg = work_config(tmp_path)
    (tmp_path / "in.txt").write_text("hello")
    sc = write(tmp_path, "sc.yaml", """\
pipeline: p
input: in.txt
duration_s: 1
warmup_s: 0.3
scenarios:
  - {name: one, concurrency: 2, replicas: 1}
  - {name: two, concurrency: 4, replicas: {work: 2}}
  - {name: open, load: open, rate: 40, arrival: poisson, replicas: 2}
""")
    out = str(tmp_path / "res")
    r = bench(cfg, "--scenarios", sc, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(out + ".csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][:len(SEED_COLUMNS)] == SEED_COLUMNS
    table = [dict(zip(rows[0], row)) for row in rows[1:]]
    assert [t["scenario"] for t in table] == ["one", "two", "open"]
    # The replica count is what the daemon reported while measuring.
    assert [t["replicas"] for t in table] == ["1", "2", "2"]
    assert [t["load"] for t in table] == ["closed", "closed", "open-poisson"]
    for t in table:
        assert int(t["requests"]) > 0 and float(t["success_rate"]) == 1.0, t
        assert float(t["latency_p95_ms"]) <= float(t["latency_max_ms"])
        # Server-Timing was read: the worker's run time is part of every answer.
        assert float(t["run_ms"]) > 0, t
    doc = json.load(open(out + ".json"))
    assert doc["varied"] == "replicas"
    for s in doc["scenarios"]:
        lat = s["latency_ms"]
        # The histogram holds every measured success, no more, no less.
        assert sum(b["count"] for b in lat["histogram"]) == lat["samples"] == s["succeeded"]
        assert lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    svg = ET.parse(out + ".svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    lines = svg.findall(ns + "polyline")
    assert len(lines) == 2  # throughput and p95
    assert all(len(p.get("points").split()) == 3 for p in lines)


def test_open_loop_latency_counts_from_the_scheduled_time(tmp_path):
    """One connection, a worker that needs 100 ms, 20 arrivals a second:
    requests wait in the generator for the connection.  Measured from when
    each was due, latency grows with the backlog; measured from when it was
    sent (coordinated omission), it would stay near 100 ms."""
    cfg = work_config(tmp_path)
    sc = write(tmp_path, "sc.yaml", """\
pipeline: p
payload: "slow:100"
scenarios:
  - {name: backlog, load: open, rate: 20, connections: 1, duration_s: 2, warmup_s: 0}
""")
    out = str(tmp_path / "res")
    r = bench(cfg, "--scenarios", sc, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.load(open(out + ".json"))["scenarios"][0]
    assert s["succeeded"] == s["sent"] == 40
    # 40 requests of at least 100 ms one after the other: the last was due at
    # 1.95 s and cannot finish before 4 s, so it waited at least 2 s.
    assert s["latency_ms"]["max"] > 2000, s["latency_ms"]
    assert s["latency_ms"]["p50"] > 500, s["latency_ms"]


def test_duration_and_warmup_on_the_command_line_win_over_the_file(tmp_path):
    """`--duration 1 --warmup 0` on a file that says 30 s each: 20 arrivals a
    second for one second, none held back for a warm-up (the file's values
    would make the run last a minute)."""
    cfg = work_config(tmp_path)
    sc = write(tmp_path, "sc.yaml", """\
pipeline: p
payload: x
duration_s: 30
warmup_s: 30
scenarios:
  - {name: short, load: open, rate: 20}
""")
    out = str(tmp_path / "res")
    r = bench(cfg, "--scenarios", sc, "--out", out, "--duration", "1", "--warmup", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.load(open(out + ".json"))["scenarios"][0]
    assert s["sent"] == s["succeeded"] == 20, s


def test_scenario_against_a_running_daemon_scales_it_through_the_api(baton, tmp_path):
    b = baton(config(fake_stage("work", replicas="{initial: 1, max: 4}"), {"p": ["work"]}))
    sc = write(tmp_path, "sc.yaml", """\
pipeline: p
payload: hello
duration_s: 0.5
warmup_s: 0
scenarios:
  - {name: three, concurrency: 3, replicas: {work: 3}}
  - {name: bad, concurrency: 3, replicas: {nosuch: 2}}
""")
    out = str(tmp_path / "res")
    r = bench("--scenarios", sc, "--url", "http://127.0.0.1:%d" % b.port, "--out", out)
    # The second scenario names a stage the daemon does not have: it fails, the first stands.
    assert r.returncode == 1, r.stdout + r.stderr
    st = b.status()["stages"]["work"]
    assert st["scaling"]["active"] == 3 and st["scaling"]["manual"], (st, r.stdout)
    rows = list(csv.DictReader(open(out + ".csv")))
    assert rows[0]["replicas"] == "3" and int(rows[0]["requests"]) > 0
    assert "nosuch" in rows[1]["error"] and rows[1]["requests"] == "0"


def test_batch_settings_need_a_daemon_bench_starts(baton, tmp_path):
    b = baton(config(fake_stage("work"), {"p": ["work"]}))
    sc = write(tmp_path, "sc.yaml", """\
pipeline: p
payload: hello
scenarios:
  - name: batched
    batch: {work: {max_size: 4, window_ms: 5}}
""")
    r = bench("--scenarios", sc, "--url", "http://127.0.0.1:%d" % b.port,
              "--out", str(tmp_path / "res"))
    assert r.returncode == 1
    assert sc + ":5:13: batch settings need a daemon" in r.stdout, r.stdout


BATCH_WORKER = '''
import time
import baton_worker as bw

@bw.batch_handler
def handle(reqs):
    time.sleep(0.02)  # a model's cost per batch, whatever its size
    return [(r.payload, {}) for r in reqs]

bw.run(handle)
'''


def test_batch_settings_reach_the_forked_daemon(tmp_path):
    worker = write(tmp_path, "batch_worker.py", BATCH_WORKER)
    cfg = write(tmp_path, "cfg.yaml", config(
        "  work:\n    command: [%s, %s]\n    env: {PYTHONPATH: %s}\n" % (PYTHON, worker, SDK_PY),
        {"p": ["work"]}))
    sc = write(tmp_path, "sc.yaml", """\
pipeline: p
payload: hello
duration_s: 1
warmup_s: 0.2
scenarios:
  - {name: single, concurrency: 8}
  - {name: batched, concurrency: 8, batch: {work: {max_size: 8, window_ms: 10}}}
""")
    out = str(tmp_path / "res")
    r = bench(cfg, "--scenarios", sc, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.load(open(out + ".json"))
    assert doc["scenarios"][1]["scenario"]["batch"] == {"work": {"max_size": 8, "window_ms": 10}}
    # One replica, 20 ms a batch: one request at a time cannot pass 50/s;
    # batches of up to 8 take the same 20 ms each, so they must do far better
    # on any machine (both runs suffer the same load).
    single, batched = (s["throughput_rps"] for s in doc["scenarios"])
    assert single < 55 and batched > 1.5 * single, (single, batched)


def test_requests_due_but_unanswered_when_the_bound_ends_are_failures(tmp_path):
    """20 arrivals in one second, one connection, 100 ms each, and half a
    second after the window to finish: at most 15 can be answered; the
    rest, sent or still waiting for the connection, count as failures."""
    cfg = work_config(tmp_path)
    sc = write(tmp_path, "sc.yaml", """\
pipeline: p
payload: "slow:100"
scenarios:
  - {name: cut, load: open, rate: 20, connections: 1, duration_s: 1, warmup_s: 0, timeout_s: 0.5}
""")
    out = str(tmp_path / "res")
    r = bench(cfg, "--scenarios", sc, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.load(open(out + ".json"))["scenarios"][0]
    assert s["sent"] == 20 and s["succeeded"] + s["failed"] == 20, s
    assert s["failures"].get("unfinished", 0) >= 5 and s["success_rate"] <= 0.75, s
