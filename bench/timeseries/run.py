#!/usr/bin/python3
"""bench/timeseries: PostgreSQL in, PostgreSQL out, rows/s end to end.

The examples/timeseries work (sensor-hours read by key range in pages of 16,
minute buckets, gap filling, numpy features, upsert with a checkpoint in the
same transaction) done four ways on one generated table (~340k readings):

  baton-1     `baton run`, the C/Python/numpy stages, 1 features replica
  baton-2     the same with 2 features replicas
  python-1    one Python process: psycopg2 + the same Python/numpy code
              (the aggregation ported to Python), a loop over pages
  per-batch   the seed's design: the same loop, but a new Python process per
              page for the numpy stage (JSON on stdin, JSON on stdout); run
              over the first --per-batch-pages pages only (it is slow)

Each run starts from an empty features table and no checkpoint.  Prints
readings/s and the ratios.  Figures, not pass/fail.

    /usr/bin/python3 bench/timeseries/run.py --build build [--sensors 40 --days 7]
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
EX = os.path.join(ROOT, "examples", "timeseries")
sys.path.insert(0, EX)
from tmp_postgres import TmpPostgres  # noqa: E402

PAGE = 16
QUERY = ("SELECT window_id, min(sensor) AS sensor, json_agg(json_build_array("
         "extract(epoch FROM ts)::bigint, value) ORDER BY ts) AS samples "
         "FROM readings GROUP BY window_id")
COLS = ["window_id", "sensor", "window_start", "mean", "std", "min", "max", "slope", "p95",
        "filled_frac", "n_samples"]


def baton_config(build, replicas):
    return """stages:
  agg:
    command: [%(build)s/examples/timeseries/agg]
  gapfill:
    command: [/usr/bin/python3, %(ex)s/gapfill.py]
    env: {PYTHONPATH: %(sdk)s}
  features:
    command: [/usr/bin/python3, %(ex)s/features.py]
    env: {PYTHONPATH: %(sdk)s, OMP_NUM_THREADS: "1", OPENBLAS_NUM_THREADS: "1"}
    replicas: {initial: %(n)d}
pipelines:
  timeseries: [agg, gapfill, features]
run:
  pipeline: timeseries
  source:
    postgresql:
      query: "%(q)s"
      key: window_id
      page_rows: %(page)d
      request: page
  sink:
    postgresql:
      table: features
""" % {"build": build, "ex": EX, "sdk": os.path.join(ROOT, "sdk", "python"), "n": replicas,
       "q": QUERY, "page": PAGE}


def agg_py(windows):
    """examples/timeseries/agg.c in Python: minute means, None where empty."""
    out = []
    for w in windows:
        start = (w["window_id"] % 1000000) * 3600
        sums, counts = [0.0] * 60, [0] * 60
        for t, v in w["samples"]:
            m = (t - start) // 60
            sums[m] += v
            counts[m] += 1
        out.append({"window_id": w["window_id"], "sensor": w["sensor"], "start": start,
                    "minutes": [s / c if c else None for s, c in zip(sums, counts)],
                    "n_samples": len(w["samples"])})
    return out


def python_loop(per_batch, max_pages=None):
    """The hand-written loop: page by key, compute, upsert + checkpoint per
    page.  Returns the readings it processed."""
    import psycopg2
    import psycopg2.extras
    import gapfill
    import features
    conn = psycopg2.connect("")  # PG* from the environment
    cur = conn.cursor()
    last = None
    pages = done = 0
    while max_pages is None or pages < max_pages:
        if last is None:
            cur.execute("SELECT * FROM (%s) q ORDER BY window_id LIMIT %d" % (QUERY, PAGE))
        else:
            cur.execute("SELECT * FROM (%s) q WHERE window_id > %%s ORDER BY window_id LIMIT %d"
                        % (QUERY, PAGE), (last,))
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
        if not rows:
            break
        pages += 1
        done += sum(len(r["samples"]) for r in rows)
        filled = gapfill.fill(agg_py(rows))
        if per_batch:
            r = subprocess.run([sys.executable, os.path.join(EX, "features.py"), "--stdin"],
                               input=json.dumps(filled), capture_output=True, text=True,
                               check=True)
            feats = json.loads(r.stdout)
        else:
            feats = features.compute(filled)
        psycopg2.extras.execute_values(
            cur, "INSERT INTO features (%s) VALUES %%s ON CONFLICT (window_id) DO UPDATE SET %s"
            % (", ".join(COLS), ", ".join("%s = EXCLUDED.%s" % (c, c) for c in COLS[1:])),
            [tuple(f[c] for c in COLS) for f in feats])
        last = rows[-1]["window_id"]
        cur.execute("INSERT INTO bench_checkpoint VALUES (1, %s) ON CONFLICT (id) DO UPDATE "
                    "SET last_key = EXCLUDED.last_key", (last,))
        conn.commit()
        if len(rows) < PAGE:
            break
    conn.close()
    return done


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--sensors", type=int, default=40)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--per-batch-pages", type=int, default=40,
                    help="pages the process-per-batch design runs (its rate is the sample's)")
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    baton = os.path.join(build, "baton")
    pg = TmpPostgres()
    tmp = tempfile.mkdtemp(prefix="bench-ts-")
    try:
        pg.start()
        os.environ.update(pg.env)
        pg.psql(file=os.path.join(EX, "schema.sql"))
        pg.psql(file=os.path.join(EX, "generate.sql"), sensors=args.sensors, days=args.days)
        pg.psql("CREATE TABLE bench_checkpoint (id int PRIMARY KEY, last_key bigint)")
        readings, windows = map(int, pg.psql(
            "SELECT count(*), count(DISTINCT window_id) FROM readings").split())
        print("bench/timeseries: %d readings, %d sensor-hours, pages of %d; %s, %d CPUs"
              % (readings, windows, PAGE, platform.processor() or platform.machine(),
                 os.cpu_count()))
        results = {}

        def reset():
            pg.psql("TRUNCATE features; DROP TABLE IF EXISTS baton_checkpoints, baton_failures;"
                    " TRUNCATE bench_checkpoint")

        for n in (1, 2):
            reset()
            cfg = os.path.join(tmp, "baton-%d.yaml" % n)
            with open(cfg, "w") as f:
                f.write(baton_config(build, n))
            t = time.monotonic()
            r = subprocess.run([baton, "run", cfg, "--no-progress"], capture_output=True,
                               text=True)
            wall = time.monotonic() - t
            if r.returncode:
                sys.exit("baton run failed:\n" + r.stderr[-3000:])
            results["baton-%d" % n] = readings / wall
            assert int(pg.psql("SELECT count(*) FROM features")) == windows
        reset()
        t = time.monotonic()
        done = python_loop(False)
        results["python-1"] = done / (time.monotonic() - t)
        assert done == readings and int(pg.psql("SELECT count(*) FROM features")) == windows
        # A process per page costs ~1 s here: a sample of pages gives the rate.
        reset()
        t = time.monotonic()
        done = python_loop(True, args.per_batch_pages)
        results["per-batch"] = done / (time.monotonic() - t)
        print("%-10s %12s" % ("design", "readings/s"))
        for name, rate in results.items():
            print("%-10s %12.0f" % (name, rate))
        print("baton-1 / per-batch: %.1fx   baton-1 / python-1: %.2fx   baton-2 / python-1: %.2fx"
              % (results["baton-1"] / results["per-batch"], results["baton-1"] / results["python-1"],
                 results["baton-2"] / results["python-1"]))
    finally:
        pg.destroy()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
