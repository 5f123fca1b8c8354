#!/usr/bin/python3
"""`make demo-timeseries`: starts a throw-away PostgreSQL (initdb in a
temporary directory, a Unix socket only), generates the sensor table,
checks the run: section against it, runs the pipeline with `baton run`,
kills it midway and reruns it to show the checkpoint, and prints rows/s.
The server is stopped by PID at the end, whatever happens."""
import argparse
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from tmp_postgres import TmpPostgres  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(HERE, "..", "..", "build"))
    ap.add_argument("--sensors", type=int, default=40)
    ap.add_argument("--days", type=int, default=7)
    args = ap.parse_args()
    baton = os.path.join(os.path.abspath(args.build), "baton")
    cfg = os.path.join(HERE, "baton.yaml")
    pg = TmpPostgres()
    try:
        pg.start()
        env = dict(os.environ, **pg.env)
        print("demo: PostgreSQL pid %d on %s (socket only)" % (pg.proc.pid, pg.dir))
        pg.psql(file=os.path.join(HERE, "schema.sql"))
        t = time.monotonic()
        pg.psql(file=os.path.join(HERE, "generate.sql"), sensors=args.sensors, days=args.days)
        readings, windows = pg.psql("SELECT count(*), count(DISTINCT window_id) FROM readings").split()
        readings, windows = int(readings), int(windows)
        print("demo: generated %d readings in %d sensor-hours (%.1fs), with gaps"
              % (readings, windows, time.monotonic() - t))
        print("demo: $ baton check --connect examples/timeseries/baton.yaml")
        r = subprocess.run([baton, "check", "--connect", cfg], env=env, capture_output=True,
                           text=True)
        if r.returncode:
            sys.exit("demo: check failed:\n" + r.stderr)
        print("  " + [l for l in r.stdout.splitlines() if l.startswith("run:")][0])

        print("demo: $ baton run examples/timeseries/baton.yaml   (killed with -9 midway)")
        p = subprocess.Popen([baton, "run", cfg, "--no-progress"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 120
        done = 0
        while time.monotonic() < end and p.poll() is None:
            out = pg.psql("SELECT coalesce(max(rows), 0) FROM "
                          "(SELECT rows FROM baton_checkpoints) c") if _has_cp(pg) else "0"
            done = int(out or 0)
            if done >= windows // 3:
                break
            time.sleep(0.1)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
        cp = pg.psql("SELECT last_key, rows FROM baton_checkpoints").split()
        print("  killed; checkpoint at window_id %s after %s windows, features rows: %s"
              % (cp[0], cp[1], pg.psql("SELECT count(*) FROM features").strip()))

        print("demo: $ baton run examples/timeseries/baton.yaml   (again: resumes)")
        t = time.monotonic()
        r = subprocess.run([baton, "run", cfg, "--no-progress"], env=env, capture_output=True,
                           text=True)
        wall = time.monotonic() - t
        print("\n".join("  " + l for l in r.stdout.splitlines()))
        if r.returncode:
            sys.exit("demo: the run failed:\n" + r.stderr[-3000:])
        n, twice = pg.psql("SELECT count(*), count(*) - count(DISTINCT window_id) FROM features").split()
        print("demo: features has %s rows for %d sensor-hours (%s duplicates)" % (n, windows, twice))
        print(pg.psql("SELECT sensor, window_start, round(mean::numeric, 2), round(slope::numeric, 4),"
                      " round(filled_frac::numeric, 3), n_samples FROM features "
                      "ORDER BY filled_frac DESC, window_id LIMIT 3"))
        # Once more from scratch for a clean figure.
        t = time.monotonic()
        r = subprocess.run([baton, "run", cfg, "--no-progress", "--force"], env=env,
                           capture_output=True, text=True)
        wall = time.monotonic() - t
        m = re.search(r"wall ([0-9.]+)s", r.stdout)
        print("demo: full run with --force: %d readings (%d windows) in %.1fs (baton's wall %ss): "
              "%.0f readings/s end to end" % (readings, windows, wall, m.group(1) if m else "?",
                                              readings / wall))
        if r.returncode:
            sys.exit("demo: the run failed:\n" + r.stderr[-3000:])
    finally:
        pg.destroy()
        print("demo: PostgreSQL stopped")


def _has_cp(pg):
    return pg.psql("SELECT to_regclass('baton_checkpoints') IS NOT NULL").strip() == "t"


if __name__ == "__main__":
    main()
