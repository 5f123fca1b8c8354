"""`baton run` over PostgreSQL (the config's run: section) against a real
server started here (Debian's postgresql, initdb in a temporary directory,
a Unix socket only, stopped by PID): rows upserted by key, failures
recorded with their key, kill -9 of baton and a restart of the database
midway leave every key written exactly once, bad configs fail clearly.

"Written once" is observed by a trigger on the sink table that logs every
insert and update into an audit table: a key redone by a rerun would show
twice there even though the upsert leaves one row."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import BATON, PYTHON, ROOT, SDK_PY, SLOW, keep_running, wait_for

sys.path.insert(0, os.path.join(ROOT, "examples", "timeseries"))
from tmp_postgres import TmpPostgres  # noqa: E402

WORKER = os.path.join(ROOT, "tests", "e2e", "pg_worker.py")


@pytest.fixture(scope="module")
def server():
    pg = TmpPostgres()
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture
def db(server, request):
    """A fresh database per test: the source and sink tables and the audit."""
    if not server.proc:
        server.start()
    name = "t_" + request.node.name.lower()[:50]
    server.psql("DROP DATABASE IF EXISTS %s" % name)
    # FILE_COPY: a plain copy of the small template, faster than WAL-logging it.
    server.psql("CREATE DATABASE %s STRATEGY = FILE_COPY" % name)
    server.psql("""
        CREATE TABLE src (id int PRIMARY KEY, v float8, tag text);
        CREATE TABLE dst (id int PRIMARY KEY, score float8, note text);
        CREATE TABLE audit (id int, op text);
        CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN INSERT INTO audit VALUES (NEW.id, TG_OP); RETURN NEW; END $$;
        CREATE TRIGGER dst_audit AFTER INSERT OR UPDATE ON dst
          FOR EACH ROW EXECUTE FUNCTION audit_row();""", db=name)

    class Db:
        env = dict(os.environ, **server.env)
        env["PGDATABASE"] = name

        def sql(self, text):
            return server.psql(text, db=name)

        def rows(self, text):
            return [line.split("\t") for line in self.sql(text).splitlines()]

        def fill(self, n, tags=None):
            self.sql("INSERT INTO src SELECT i, i, NULL FROM generate_series(1, %d) i" % n)
            for i, t in (tags or {}).items():
                self.sql("UPDATE src SET tag = '%s' WHERE id = %d" % (t, i))

        def checkpoint(self):
            try:
                r = self.rows("SELECT last_key FROM baton_checkpoints WHERE name = 'dst'")
            except RuntimeError:  # the table is made when the run starts
                return 0
            return int(r[0][0]) if r else 0

        def written_twice(self):
            return self.rows("SELECT id FROM audit GROUP BY id HAVING count(*) > 1")

    d = Db()
    d.name = name
    yield d
    # The server outlives the test (a test may have restarted it): it is
    # the module's, not something the test left behind.
    if server.proc and server.proc.poll() is None:
        keep_running(server.proc.pid)


def write_config(tmp_path, unit="row", page_rows=50, replicas=2, extra_src="", extra_run="",
                 sink="      columns: [score, note]\n", query="SELECT id, v, tag FROM src"):
    text = ("stages:\n"
            "  w:\n"
            "    command: [%s, %s]\n"
            "    env: {PYTHONPATH: %s}\n"
            "    replicas: {initial: %d}\n"
            "    retries: 0\n"
            "pipelines:\n"
            "  p: [w]\n"
            "run:\n"
            "  pipeline: p\n%s"
            "  source:\n"
            "    postgresql:\n"
            "      query: %s\n"
            "      key: id\n"
            "      page_rows: %d\n"
            "      request: %s\n%s"
            "  sink:\n"
            "    postgresql:\n"
            "      table: dst\n%s") % (PYTHON, WORKER, SDK_PY, replicas, extra_run, query,
                                      page_rows, unit, extra_src, sink)
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def run(cfg, db, *extra, env=None, timeout=120):
    e = dict(db.env, **(env or {}))
    return subprocess.run([BATON, "run", cfg, "--no-progress", *extra], env=e,
                          capture_output=True, text=True, timeout=timeout * SLOW)


def start(cfg, db, env=None):
    """Starts a run in the background; its stderr goes to a file (p.errpath)."""
    e = dict(db.env, **(env or {}))
    errpath = os.path.join(os.path.dirname(cfg), "stderr.txt")
    with open(errpath, "w") as errf:
        p = subprocess.Popen([BATON, "run", cfg, "--no-progress"], env=e,
                             stdout=subprocess.PIPE, stderr=errf, text=True)
    p.errpath = errpath
    return p


def open_log(p):
    with open(p.errpath, errors="replace") as f:
        return f.read()


def finish(p, timeout):
    out, _ = p.communicate(timeout=timeout * SLOW)
    return out, open_log(p)


def test_pg_rows_are_upserted_and_bad_rows_recorded_with_their_key(tmp_path, db):
    db.fill(200, {7: "reject", 150: "reject", 11: "badvalue", 180: "badvalue", 99: "nokey"})
    cfg = write_config(tmp_path)
    r = run(cfg, db)
    assert r.returncode == 1, r.stderr  # some rows failed
    assert "written 196   failed 4" in r.stdout, r.stdout
    # Row 99's result lacks the key: one request per row, so the source row's key is used.
    got = dict((int(i), float(s)) for i, s in db.rows("SELECT id, score FROM dst"))
    assert got == {i: 2.0 * i for i in range(1, 201) if i not in (7, 150, 11, 180)}
    fails = {int(k): (code, err) for k, code, err in
             db.rows("SELECT key, code, error FROM baton_failures WHERE name = 'dst'")}
    assert sorted(fails) == [7, 11, 150, 180]
    assert fails[7] == ("rejected", "row 7 is tagged reject")
    assert fails[11] == ("sink_rejected", "column 'score' (double precision) cannot take "
                         "field 'score': invalid input syntax for type double precision: "
                         "\"not a number\"")
    assert db.checkpoint() == 200
    assert db.written_twice() == []
    # A rerun finds nothing left: the checkpoint is at the end.
    r = run(cfg, db)
    assert "rows 0 (skipped 200" in r.stdout, r.stdout
    assert db.written_twice() == []


def test_pg_pages_go_as_one_request_and_jsonb_takes_the_whole_result(tmp_path, db):
    db.sql("ALTER TABLE dst ADD COLUMN doc jsonb")
    db.fill(230, {45: "nokey"})
    cfg = write_config(tmp_path, unit="page", page_rows=40,
                       sink="      columns: {score: score}\n      jsonb: doc\n")
    r = run(cfg, db)
    assert r.returncode == 1, r.stderr
    # A page's result row without the key cannot be placed: it fails, named by its page.
    assert db.rows("SELECT key, code, error FROM baton_failures") == [
        ["41..80", "invalid_result", "a result row has no key field 'id'"]]
    rows = db.rows("SELECT id, score, doc->>'score', doc->>'note' FROM dst ORDER BY id")
    assert [int(x[0]) for x in rows] == [i for i in range(1, 231) if i != 45]
    assert all(float(x[1]) == float(x[2]) == 2 * int(x[0]) for x in rows)
    assert all(x[3].startswith("pid ") for x in rows)
    assert db.written_twice() == []


def peak_kib(p):
    """Follows p's VmHWM until it exits; returns a dict whose "kib" is the last read."""
    box = {"kib": 0}

    def follow():
        while p.poll() is None:
            try:
                with open("/proc/%d/status" % p.pid) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            box["kib"] = int(line.split()[1])
            except OSError:
                pass
            time.sleep(0.02)
    t = threading.Thread(target=follow, daemon=True)
    t.start()
    box["thread"] = t
    return box


def test_pg_a_result_of_too_many_values_fails_its_row_without_being_loaded(tmp_path, db):
    # 4 Mi zeros: 12 MiB of JSON, a tree of ~250 MiB; 60,000 are within the cap.
    big = 4 << 20
    db.fill(20, {5: "big:%d" % big, 9: "big:60000"})
    p = start(write_config(tmp_path, page_rows=10), db)
    peak = peak_kib(p)
    out, log = finish(p, 120)
    peak["thread"].join(10)
    # Checked first: loaded, the result would also have been written.
    sanitized = os.environ.get("BATON_SANITIZED")
    assert peak["kib"] > 0, "baton run ended before its memory was read"
    assert peak["kib"] * 1024 < (16 if sanitized else 8) * 3 * big, \
        "baton run peaked at %d KiB for a result of ~%d bytes" % (peak["kib"], 3 * big)
    assert p.returncode == 1, log
    assert "written 19   failed 1" in out, out
    assert db.rows("SELECT key, code, error FROM baton_failures") == [
        ["5", "invalid_result",
         "the result holds more than 65536 JSON values (65536 per row it answers)"]]
    assert [int(x[0]) for x in db.rows("SELECT id FROM dst ORDER BY id")] == \
        [i for i in range(1, 21) if i != 5]


def test_pg_kill9_midrun_then_rerun_writes_every_key_once(tmp_path, db):
    n = 3000
    db.fill(n)
    cfg = write_config(tmp_path, unit="page", page_rows=25)
    slow = {"ROW_DELAY_MS": "1"}
    p = start(cfg, db, env=slow)
    try:
        wait_for(lambda: db.checkpoint() >= 500 or p.poll() is not None, 60,
                 interval=0.05, what="the checkpoint to pass 500")
        assert p.poll() is None, "the run ended before it could be killed"
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    cut = db.checkpoint()
    assert 500 <= cut < n
    # The checkpoint moved only with committed results: every key up to it
    # is there, none after it (pages commit in order with the checkpoint).
    ids = [int(x[0]) for x in db.rows("SELECT id FROM dst ORDER BY id")]
    assert ids == list(range(1, cut + 1))
    r = run(cfg, db)
    assert r.returncode == 0, r.stderr
    assert "skipped %d before the checkpoint" % cut in r.stdout, r.stdout
    assert int(db.sql("SELECT count(*) FROM dst")) == n
    assert int(db.sql("SELECT count(DISTINCT id) FROM audit")) == n
    assert db.written_twice() == []
    assert db.checkpoint() == n


def test_pg_sink_type_mismatch_fails_each_row_naming_the_column(tmp_path, db):
    # The table's note column is an integer; the worker sends text: every
    # row is refused alone, with its key and the column, and the run ends.
    db.sql("ALTER TABLE dst ALTER COLUMN note TYPE int USING NULL")
    db.fill(30)
    cfg = write_config(tmp_path, page_rows=10)
    r = run(cfg, db)
    assert r.returncode == 1, r.stderr
    assert "written 0   failed 30" in r.stdout, r.stdout
    fails = db.rows("SELECT key, error FROM baton_failures ORDER BY key::int")
    assert [int(k) for k, _ in fails] == list(range(1, 31))
    assert all(e.startswith("column 'note' (integer) cannot take field 'note': invalid input "
                            "syntax for type integer") for _, e in fails), fails[0]
    assert db.checkpoint() == 30


def test_pg_failed_stage_stops_the_run_without_moving_the_checkpoint(tmp_path, db):
    # A stage whose replicas never come up fails every request as
    # stage_failed: that is no row's fault, so nothing may be committed as failed.
    db.fill(100)
    cfg = write_config(tmp_path)
    text = open(cfg).read().replace(
        "    command: [%s, %s]\n" % (PYTHON, WORKER),
        "    command: [/bin/false]\n    restart: {backoff_ms: 20, max_failures: 2}\n")
    open(cfg, "w").write(text)
    r = run(cfg, db)
    assert r.returncode == 1
    assert "stage_failed in stage w" in r.stderr, r.stderr
    assert db.checkpoint() == 0
    assert db.sql("SELECT count(*) FROM baton_failures").strip() == "0"


class CommitCutter:
    """A TCP proxy on 127.0.0.1 to the server's Unix socket that, once, lets
    a transaction commit and then cuts the connection before the client
    reads the answer: the server sends CommandComplete "COMMIT" only after
    committing, and that is where the proxy cuts."""

    def __init__(self, unix_path):
        self.unix_path = unix_path
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.unix_path)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src, dst, from_server):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_server and b"COMMIT\x00" in data:
                    with self.lock:
                        cut = self.cuts == 0
                        self.cuts += cut
                    if cut:
                        break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.listener.close()


def test_pg_commit_whose_answer_is_lost_is_not_written_twice(tmp_path, db, server):
    # The sink goes through the proxy, which cuts the first COMMIT's answer:
    # baton must find that commit in the checkpoint, not send it again.
    db.fill(300)
    cutter = CommitCutter(os.path.join(server.dir, ".s.PGSQL.%d" % server.port))
    try:
        sink = "      columns: [score, note]\n      connect: host=127.0.0.1 port=%d\n" % cutter.port
        cfg = write_config(tmp_path, unit="page", page_rows=20, sink=sink)
        r = run(cfg, db)
    finally:
        cutter.close()
    assert r.returncode == 0, r.stderr
    assert cutter.cuts == 1
    assert "the lost commit had committed" in r.stderr, r.stderr
    assert int(db.sql("SELECT count(*) FROM dst")) == 300
    assert db.written_twice() == []


def test_pg_config_errors_name_the_key(tmp_path, db):
    db.fill(10)
    # A query without the key column: refused before anything runs.
    cfg = write_config(tmp_path, query="SELECT v, tag FROM src")
    r = run(cfg, db)
    assert r.returncode == 2
    assert "run.yaml:14:12: source.key 'id' is not a column of source.query" in r.stderr, r.stderr
    # A mapped column the table lacks; `check --connect` says so too.
    cfg = write_config(tmp_path, sink="      columns: [score, colour]\n")
    for argv in ([BATON, "check", "--connect", cfg], [BATON, "run", cfg]):
        r = subprocess.run(argv, env=db.env, capture_output=True, text=True, timeout=60 * SLOW)
        assert r.returncode == 2
        assert "sink.columns: 'colour' is not a column of 'dst'" in r.stderr, r.stderr
    # No unique index on the key: an upsert is impossible.
    cfg = write_config(tmp_path, sink="      key: note\n")
    r = run(cfg, db)
    assert r.returncode == 2 and "no unique index" in r.stderr and "(note)" in r.stderr
    # A password in the config is refused without connecting.
    cfg = write_config(tmp_path, extra_src="      connect: host=/tmp password=hunter2\n")
    r = subprocess.run([BATON, "check", cfg], capture_output=True, text=True)
    assert r.returncode == 2 and "must not hold a password" in r.stderr
    assert "hunter2" not in r.stderr
    assert int(db.sql("SELECT count(*) FROM dst")) == 0


def test_pg_database_restart_midrun_reconnects_and_writes_once(tmp_path, db, server):
    n = 3000
    db.fill(n)
    cfg = write_config(tmp_path, unit="page", page_rows=25)
    p = start(cfg, db, env={"ROW_DELAY_MS": "1"})
    try:
        wait_for(lambda: db.checkpoint() >= 400 or p.poll() is not None, 60, interval=0.05,
                 what="the checkpoint to pass 400")
        assert p.poll() is None
        server.stop(signal.SIGINT)  # fast shutdown: the run's connections are cut
        wait_for(lambda: "database unreachable: retrying" in open_log(p), 30,
                 what="baton to notice the database is down")
        server.start()
        out, err = finish(p, 120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "database connection restored" in err
    assert int(db.sql("SELECT count(*) FROM dst")) == n
    assert db.written_twice() == []
    assert db.checkpoint() == n


def test_pg_database_down_past_the_limit_stops_the_run_clearly(tmp_path, db, server):
    n = 3000
    db.fill(n)
    cfg = write_config(tmp_path, unit="page", page_rows=25, extra_run="  reconnect_max_s: 1\n")
    p = start(cfg, db, env={"ROW_DELAY_MS": "1"})
    try:
        wait_for(lambda: db.checkpoint() >= 200 or p.poll() is not None, 60, interval=0.05,
                 what="the checkpoint to pass 200")
        assert p.poll() is None
        server.stop(signal.SIGINT)
        out, err = finish(p, 60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1
    assert "unreachable for" in err and "baton run: database '" in err, err
    server.start()
    cut = db.checkpoint()
    ids = [int(x[0]) for x in db.rows("SELECT id FROM dst ORDER BY id")]
    assert ids == list(range(1, cut + 1))
    # The rerun finishes the rest, each key once.
    r = run(cfg, db)
    assert r.returncode == 0, r.stderr
    assert int(db.sql("SELECT count(*) FROM dst")) == n
    assert db.written_twice() == []


def test_pg_timeseries_example_computes_features_of_known_windows(tmp_path, db):
    # examples/timeseries's stages (C aggregation, gap filling, numpy
    # features) on two hand-made sensor-hours whose features are known.
    ex = os.path.join(ROOT, "examples", "timeseries")
    db.sql(open(os.path.join(ex, "schema.sql")).read())
    hour = 491000  # hours since 1970: 2026-01-05 08:00 UTC
    wid = 7 * 1000000 + hour
    # Hour 1: value = minute, minutes 10-19 missing (interpolation restores them exactly).
    # Hour 2: 5.0 at minutes 0 and 59 only.
    db.sql("""INSERT INTO readings (sensor, ts, window_id, value)
              SELECT 7, to_timestamp(%(h)d * 3600 + m * 60), %(w)d, m
              FROM generate_series(0, 59) m WHERE m NOT BETWEEN 10 AND 19;
              INSERT INTO readings (sensor, ts, window_id, value)
              SELECT 7, to_timestamp((%(h)d + 1) * 3600 + m * 60 + 30), %(w)d + 1, 5.0
              FROM unnest(ARRAY[0, 59]) m""" % {"h": hour, "w": wid})
    cfg = tmp_path / "ts.yaml"
    build = os.path.dirname(BATON)
    text = open(os.path.join(ex, "baton.yaml")).read()
    text = text.replace("../../build/examples/timeseries/agg",
                        os.path.join(build, "examples", "timeseries", "agg"))
    text = text.replace("[/usr/bin/python3, gapfill.py]",
                        "[/usr/bin/python3, %s/gapfill.py]" % ex)
    text = text.replace("[/usr/bin/python3, features.py]",
                        "[/usr/bin/python3, %s/features.py]" % ex)
    text = text.replace("../../sdk/python", SDK_PY)
    cfg.write_text(text)
    r = run(str(cfg), db)
    assert r.returncode == 0, r.stderr
    got = db.rows("SELECT window_id, sensor, extract(epoch FROM window_start)::bigint, mean, std, "
                  "min, max, slope, p95, filled_frac, n_samples FROM features ORDER BY window_id")
    assert len(got) == 2, got
    w1, w2 = [[float(x) for x in row] for row in got]
    assert w1[:3] == [wid, 7, hour * 3600]
    assert abs(w1[3] - 29.5) < 1e-9 and abs(w1[7] - 1.0) < 1e-9
    assert (w1[5], w1[6]) == (0.0, 59.0)
    assert abs(w1[9] - 10 / 60) < 1e-9 and w1[10] == 50
    assert w2[:3] == [wid + 1, 7, (hour + 1) * 3600]
    assert (w2[3], w2[4], w2[7]) == (5.0, 0.0, 0.0)
    assert abs(w2[9] - 58 / 60) < 1e-9 and w2[10] == 2
