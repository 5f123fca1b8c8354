"""`make demo-stations`: the stations example end to end.

    python3 examples/stations/demo.py --build build [--stations 2 --orders 6]

Trains the item classifier if there is none yet, starts the RTSP server (a
port picked here), writes a baton config for it in a work directory, runs
`baton serve`, waits until every order of orders.json has its result in
the results file, prints each order's verdict and the accuracy, then stops
baton and the server by PID. Exits 0 when at least --min-accuracy of the
orders were validated correct.

The Stations class does the same for tests/e2e/test_stations.py and
bench/stations/run.py.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PYTHON = "/usr/bin/python3"
sys.path.insert(0, HERE)

import scenes  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def train_if_missing(model, log=print):
    """Runs the example's setup step (train.py) unless model exists. A lock
    next to the model makes concurrent callers (tests run two at a time)
    train once: the others wait for it and find the model there."""
    import fcntl
    if os.path.exists(model):
        return
    os.makedirs(os.path.dirname(model), exist_ok=True)
    with open(model + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(model):
            return
        log("$ python3 examples/stations/train.py --out %s" % os.path.relpath(model, ROOT))
        subprocess.run([PYTHON, "train.py", "--out", model], cwd=HERE, check=True)


class Stations:
    """One run of the example: orders, RTSP server, baton, all in work.

    file_stations lists station numbers (from 1) read from an MJPEG file
    (file://) instead of RTSP; station_urls replaces the urls altogether.
    extra (keyword arguments) goes to scenes.config_text.
    """

    def __init__(self, work, build, stations=2, orders=6, seed=1, model=None,
                 file_stations=(), order_s=5.0, gap_s=3.0, lead_s=2.0, env=None,
                 station_urls=None, live=False, **extra):
        self.work = os.path.abspath(work)
        self.build = os.path.abspath(build)
        self.stations = stations
        self.model = model or os.path.join(HERE, "model", "items.pt")
        self.procs = {}
        self.env = env
        os.makedirs(self.work, exist_ok=True)
        scenes.write_data(self.work, stations, orders, seed)
        with open(os.path.join(self.work, "orders.json")) as f:
            self.orders = json.load(f)["orders"]
        self.timing = ["--order-s", str(order_s), "--gap-s", str(gap_s), "--lead-s", str(lead_s)]
        if live:
            self.timing.append("--live")
        self.rtsp_port = free_port()
        self.http_port = free_port()
        urls = []
        for i in range(1, stations + 1):
            if i in file_stations:
                path = os.path.join(self.work, "station%d.avi" % i)
                mine = [o for o in self.orders if o["station"] == "station%d" % i]
                scenes.write_video(path, mine, order_s=order_s, gap_s=gap_s, lead_s=lead_s)
                urls.append("file://" + path)
            else:
                urls.append("rtsp://127.0.0.1:%d/s%d" % (self.rtsp_port, i))
        self.urls = station_urls or urls
        self.spool = os.path.join(self.work, "spool")
        self.results_path = os.path.join(self.spool, "results.jsonl")
        self.config = os.path.join(self.work, "baton.yaml")
        with open(self.config, "w") as f:
            f.write(scenes.config_text(
                workdir=HERE, spool=self.spool, data=self.work, model=self.model,
                build=self.build, listen="127.0.0.1:%d" % self.http_port,
                station_urls=self.urls, **extra))

    # --- processes -----------------------------------------------------------

    def _start(self, name, argv, cwd=None):
        log = open(os.path.join(self.work, name + ".log"), "ab")
        p = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, env=self.env)
        log.close()
        self.procs[name] = p
        return p

    def start_server(self, timeout=120):
        p = self._start("rtsp", [PYTHON, "-u", "rtsp_server.py", "--orders",
                                 os.path.join(self.work, "orders.json"),
                                 "--port", str(self.rtsp_port)] + self.timing, cwd=HERE)
        self._wait(lambda: "ready %d" % self.rtsp_port in self.log("rtsp"), timeout,
                   "the RTSP server", p)

    def start_baton(self, timeout=120):
        p = self._start("baton", [os.path.join(self.build, "baton"), "serve", self.config])
        self._wait(self._listening, timeout, "baton to listen", p)
        return p

    def start(self):
        self.start_server()
        self.start_baton()
        return self

    def _listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.http_port), timeout=1).close()
            return True
        except OSError:
            return False

    def _wait(self, cond, timeout, what, proc=None):
        end = time.monotonic() + timeout
        while not cond():
            if proc is not None and proc.poll() is not None:
                raise RuntimeError("%s: exited with %s\n%s" % (what, proc.returncode,
                                                               self.tail(proc)))
            if time.monotonic() > end:
                raise RuntimeError("timed out after %ds waiting for %s" % (timeout, what))
            time.sleep(0.2)

    def log(self, name):
        try:
            with open(os.path.join(self.work, name + ".log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, proc, n=30):
        for name, p in self.procs.items():
            if p is proc:
                return "\n".join(self.log(name).splitlines()[-n:])
        return ""

    def stop(self, name, sig=signal.SIGTERM, timeout=30):
        """Stops one process by its PID; returns its exit status."""
        p = self.procs.get(name)
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        return p.returncode

    def close(self):
        codes = {}
        for name in ("baton", "rtsp"):
            codes[name] = self.stop(name)
        return codes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- results ---------------------------------------------------------------

    def results(self):
        """The lines of the results file so far (a partial last line is
        left for later)."""
        try:
            with open(self.results_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        out = []
        for line in data.split(b"\n")[:-1]:
            if line.strip():
                out.append(json.loads(line))
        return out

    def verdicts(self):
        """Per order id of orders.json, the first result line of its session."""
        ids = {o["id"] for o in self.orders}
        got = {}
        for r in self.results():
            if r.get("session") in ids and r["session"] not in got:
                got[r["session"]] = r
        return got

    def wait_all(self, timeout, proc_check=True):
        """Waits until every order has a result; returns verdicts()."""
        self._wait(lambda: len(self.verdicts()) == len(self.orders), timeout,
                   "a result for each of the %d orders (have %d)"
                   % (len(self.orders), len(self.verdicts())),
                   self.procs.get("baton") if proc_check else None)
        return self.verdicts()

    def timeline_s(self, order_s=5.0, gap_s=3.0, lead_s=2.0):
        per = max(sum(1 for o in self.orders if o["station"] == s)
                  for s in {o["station"] for o in self.orders})
        return lead_s + per * (order_s + gap_s)


def report(orders, verdicts, out=sys.stdout):
    """Prints one line per order and the totals; returns the accuracy."""
    correct = items_ok = items_all = 0
    for o in orders:
        r = verdicts.get(o["id"])
        res = (r or {}).get("result") or {}
        expected = res.get("expected") or {n: o["items"].count(n) for n in set(o["items"])}
        found = res.get("found", {})
        n_exp = sum(expected.values())
        n_ok = sum(min(c, found.get(n, 0)) for n, c in expected.items())
        items_ok += n_ok
        items_all += n_exp
        ok = bool(res.get("correct"))
        correct += ok
        if r is None:
            state = "no result"
        elif r.get("code") != "ok":
            state = "%s: %s" % (r.get("code"), r.get("error"))
        else:
            state = "ok " if ok else "WRONG"
        out.write("  order %-5s %-9s %-5s items %d/%d  expected %s  found %s  (%s, %d frames, %s ms)\n"
                  % (o["id"], o["station"], state, n_ok, n_exp,
                     _fmt(expected), _fmt(found), (r or {}).get("close_reason", "-"),
                     (r or {}).get("items", 0), (r or {}).get("latency_ms", "-")))
    acc = correct / len(orders) if orders else 0.0
    out.write("orders correct: %d/%d = %.1f%%   items: %d/%d = %.1f%%\n"
              % (correct, len(orders), 100 * acc, items_ok, items_all,
                 100 * items_ok / max(1, items_all)))
    return acc


def _fmt(counts):
    return ",".join("%s%s" % (n, "x%d" % c if c > 1 else "") for n, c in sorted(counts.items())) or "-"


def main(argv):
    ap = argparse.ArgumentParser(description="the stations example, end to end")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--work", default=None, help="default: BUILD/demo-stations")
    ap.add_argument("--stations", type=int, default=2)
    ap.add_argument("--orders", type=int, default=6, help="orders per station")
    ap.add_argument("--file-station", type=int, action="append", default=[],
                    help="read station N from an MJPEG file (file://) instead of RTSP")
    ap.add_argument("--min-accuracy", type=float, default=0.95)
    a = ap.parse_args(argv)
    work = a.work or os.path.join(os.path.abspath(a.build), "demo-stations")
    if os.path.isdir(os.path.join(work, "spool")):
        import shutil
        shutil.rmtree(os.path.join(work, "spool"))
    train_if_missing(os.path.join(HERE, "model", "items.pt"))
    run = Stations(work, a.build, stations=a.stations, orders=a.orders,
                   file_stations=a.file_station, ocr_replicas=2 if a.stations > 2 else 1)
    print("work dir %s; RTSP on 127.0.0.1:%d, baton on 127.0.0.1:%d"
          % (run.work, run.rtsp_port, run.http_port))
    for i, u in enumerate(run.urls, 1):
        print("  station%d  %s" % (i, u))
    try:
        run.start()
        print("$ baton serve %s   (log: %s/baton.log)" % (run.config, run.work))
        began = time.monotonic()
        budget = run.timeline_s() + 120
        last = -1
        while len(run.verdicts()) < len(run.orders):
            n = len(run.verdicts())
            if n != last:
                print("  %d/%d orders have a result (%.0fs)" % (n, len(run.orders),
                                                               time.monotonic() - began))
                last = n
            if run.procs["baton"].poll() is not None:
                raise RuntimeError("baton exited:\n" + run.tail(run.procs["baton"]))
            if time.monotonic() - began > budget:
                print("gave up after %ds" % budget)
                break
            time.sleep(0.5)
        acc = report(run.orders, run.verdicts())
    finally:
        codes = run.close()
    print("stopped: baton exit %s, RTSP server exit %s" % (codes["baton"], codes["rtsp"]))
    return 0 if acc >= a.min_accuracy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
