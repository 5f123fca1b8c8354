#!/usr/bin/python3
"""bench/stations: baton's persistent stations against the seed's "before"
design (a GStreamer pipeline started per order), with 1, 2 and 4 stations.

Both read the same live RTSP streams (examples/stations/rtsp_server.py
--live: every client sees one wall-clock timeline, as with real cameras, so
what is shown while a pipeline starts is lost) and run the same stage code
(the example's OCR worker, select, the PyTorch recogniser, validate).

    baton   examples/stations with `baton serve`: one persistent camera
            source per station, shared OCR, sessions, select -> recognise
            (batched across stations) -> validate
    before  bench/stations/before.py, one process per station: models
            loaded once, but a gst-launch pipeline started for every order

Prints per design and station count: orders validated (and correct) out of
those shown, frames per validated order (5 shown at 1 FPS), orders/min (validated orders over the time from the first
order's appearance to the last result), latency from session close to
validated result (p50/p95, the results file's latency_ms), and time for a
new station to produce its first item: for baton, a station added over
HTTP once the others run (source spawn -> first item, baton's
first_item_after_ms); for before, a new station process (spawn -> first
frame on disk), and the per-order pipeline start -> first frame.

    /usr/bin/python3 bench/stations/run.py --build build [--stations 1,2,4]
        [--orders 4] [--order-s 5] [--gap-s 2] [--lead-s 25] [--designs before,baton]
        [--kill]

--kill also kills station1's camera with SIGKILL in the middle of an order
(baton runs) and reports when it produced again, how often and with how
many frames that order came out, and how many results the other stations
delivered meanwhile.

Figures, not pass/fail. Needs examples/stations/model/items.pt (trained on
first use).
"""

import argparse
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
EXAMPLE = os.path.join(ROOT, "examples", "stations")
sys.path.insert(0, EXAMPLE)

import demo  # noqa: E402
import scenes  # noqa: E402

PYTHON = "/usr/bin/python3"


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def http_json(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"} if body is not None else {})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


def summarise(design, n, orders, results, t_first_order_ms, first_items, pipeline_starts=None):
    """One row of figures from result lines in the results-file format."""
    ids = {o["id"] for o in orders}
    mine = {}
    for r in results:
        if r.get("session") in ids and r["session"] not in mine:
            mine[r["session"]] = r
    ok = [r for r in mine.values() if r.get("code") == "ok"]
    correct = [r for r in ok if (r.get("result") or {}).get("correct")]
    done_ms = [r["closed_unix_ms"] + r["latency_ms"] for r in ok]
    span_min = (max(done_ms) - t_first_order_ms) / 60000.0 if done_ms else None
    lat = [r["latency_ms"] for r in ok]
    frames = [r.get("items", 0) for r in ok]
    row = {"design": design, "stations": n, "shown": len(orders), "validated": len(ok),
           "correct": len(correct),
           "frames_per_order": round(sum(frames) / len(frames), 1) if frames else None,
           "orders_per_min": round(len(ok) / span_min, 1) if span_min else None,
           "latency_p50_ms": pct(lat, 50), "latency_p95_ms": pct(lat, 95),
           "new_station_first_item_ms": first_items,
           "pipeline_first_frame_ms": pipeline_starts}
    return row


def run_baton(args, n, work):
    run = demo.Stations(work, args.build, stations=n + 1, orders=args.orders, seed=11,
                        order_s=args.order_s, gap_s=args.gap_s, lead_s=args.lead_s, live=True,
                        ocr_replicas=2 if n > 1 else 1)
    # Only n stations in the config (max n + 1): the last is added over HTTP.
    extra_url = run.urls[-1]
    with open(run.config, "w") as f:
        f.write(scenes.config_text(workdir=EXAMPLE, spool=run.spool, data=run.work,
                                   model=run.model, build=os.path.abspath(args.build),
                                   listen="127.0.0.1:%d" % run.http_port,
                                   station_urls=run.urls[:n], camera_max=n + 1,
                                   ocr_replicas=2 if n > 1 else 1))
    shown = [o for o in run.orders if o["station"] != "station%d" % (n + 1)]
    with run:
        run.start_server()
        t0_ms = int(time.time() * 1000)
        run.start_baton()
        budget = args.lead_s + args.orders * (args.order_s + args.gap_s) + 60
        end = time.monotonic() + budget
        killed = kill_mid_order(run) if args.kill else None
        while time.monotonic() < end and len(run.verdicts()) < len(run.orders) - args.orders:
            time.sleep(0.5)
        # A new station, once the others are running.
        name = "station%d" % (n + 1)
        st, doc = http_json(run.http_port, "POST", "/v1/streams/orders/stations",
                            {"name": name, "url": extra_url})
        first = None
        if st == 201:
            end = time.monotonic() + 60
            while time.monotonic() < end and first is None:
                _, s = http_json(run.http_port, "GET", "/v1/status")
                for x in s["streams"]["orders"]["stations"]:
                    if x["name"] == name and x.get("first_item_after_ms") is not None:
                        first = x["first_item_after_ms"]
                time.sleep(0.2)
        else:
            print("  (adding a station answered %d: %s)" % (st, doc))
        results = run.results()
    t_first_order = t0_ms + int(args.lead_s * 1000)
    row = summarise("baton", n, shown, results, t_first_order, first)
    if killed:
        key = killed.pop("order")
        mine = [r for r in results if r.get("session") == key]
        killed.update(order=key, results=len(mine),
                      frames=[r.get("items") for r in mine],
                      correct=[(r.get("result") or {}).get("correct") for r in mine])
        row["kill"] = killed
    return row


def kill_mid_order(run, timeout=120):
    """kill -9 of station1's camera once its open session has two frames;
    returns what happened: the order, when its camera produced again."""
    def stations():
        _, doc = http_json(run.http_port, "GET", "/v1/status")
        return doc["streams"]["orders"]["stations"]

    def station1():
        return next(x for x in stations() if x["name"] == "station1")

    def others_items():
        return sum(x["items"] for x in stations() if x["name"] != "station1")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = station1()
        if st.get("session") and st["session"]["items"] >= 2 and st.get("pid"):
            break
        time.sleep(0.1)
    else:
        return None
    key, pid, items = st["session"]["key"], st["pid"], st["items"]
    others = others_items()
    os.kill(pid, signal.SIGKILL)
    t = time.monotonic()
    killed_ms = int(time.time() * 1000)
    while time.monotonic() < end:
        st = station1()
        if st.get("pid") and st["pid"] != pid and st["items"] > items:
            break
        time.sleep(0.1)
    return {"order": key, "killed_unix_ms": killed_ms,
            "back_after_ms": int((time.monotonic() - t) * 1000), "restarts": st["restarts"],
            "other_stations_items_meanwhile": others_items() - others}


def run_before(args, n, work):
    run = demo.Stations(work, args.build, stations=n, orders=args.orders, seed=11,
                        order_s=args.order_s, gap_s=args.gap_s, lead_s=args.lead_s, live=True)
    procs = []
    with run:
        run.start_server()
        t0_ms = int(time.time() * 1000)
        spawned_ms = []
        for i in range(1, n + 1):
            log = open(os.path.join(run.work, "before-%d.log" % i), "wb")
            spawned_ms.append(int(time.time() * 1000))
            procs.append(subprocess.Popen(
                [PYTHON, os.path.join(HERE, "before.py"), "--url", run.urls[i - 1],
                 "--station", "station%d" % i, "--out", run.spool,
                 "--ocr", os.path.join(os.path.abspath(args.build), "examples", "stations",
                                       "ocr_order"),
                 "--model", run.model, "--orders", os.path.join(run.work, "orders.json"),
                 "--inventory", os.path.join(run.work, "inventory.json")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            log.close()
        budget = args.lead_s + args.orders * (args.order_s + args.gap_s) + 60
        end = time.monotonic() + budget
        while time.monotonic() < end and len(run.verdicts()) < len(run.orders):
            time.sleep(0.5)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
    starts, firsts = [], []
    try:
        with open(os.path.join(run.spool, "startup.jsonl")) as f:
            for line in f:
                d = json.loads(line)
                if d.get("first_frame_s") is not None:
                    starts.append(int(d["first_frame_s"] * 1000))
                if "first_frame_unix_ms" in d:
                    i = int(d["station"].replace("station", ""))
                    firsts.append(d["first_frame_unix_ms"] - spawned_ms[i - 1])
    except FileNotFoundError:
        pass
    t_first_order = t0_ms + int(args.lead_s * 1000)
    row = summarise("before", n, run.orders, run.results(), t_first_order,
                    max(firsts) if firsts else None,
                    {"p50": pct(starts, 50), "p95": pct(starts, 95), "n": len(starts)})
    return row


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--stations", default="1,2,4")
    ap.add_argument("--orders", type=int, default=4, help="orders per station")
    ap.add_argument("--order-s", type=float, default=5.0)
    ap.add_argument("--gap-s", type=float, default=2.0)
    ap.add_argument("--lead-s", type=float, default=25.0,
                    help="empty counter before the first order: time for everything to start")
    ap.add_argument("--designs", default="before,baton")
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--kill", action="store_true",
                    help="baton runs: kill -9 station1's camera mid-order and report how "
                         "its order came out and whether the other stations went on")
    a = ap.parse_args(argv)
    a.build = os.path.abspath(a.build)
    work = a.work or os.path.join(a.build, "bench-stations")
    demo.train_if_missing(os.path.join(EXAMPLE, "model", "items.pt"))
    print("bench/stations on %s, %d CPUs, %s; orders of %.0f s (%d frames at 1 FPS), "
          "gaps of %.0f s, %d orders per station"
          % (platform.node(), os.cpu_count(), platform.platform(), a.order_s, int(a.order_s),
             a.gap_s, a.orders))
    rows = []
    for n in [int(x) for x in a.stations.split(",")]:
        for design in a.designs.split(","):
            d = os.path.join(work, "%s-%d" % (design, n))
            if os.path.isdir(d):
                import shutil
                shutil.rmtree(d)
            fn = run_baton if design == "baton" else run_before
            row = fn(a, n, d)
            rows.append(row)
            print("  %s" % json.dumps(row), flush=True)
    print()
    print("%-7s %8s %16s %8s %11s %8s %8s %15s %16s"
          % ("design", "stations", "validated/shown", "frames", "orders/min", "p50 ms",
             "p95 ms", "new station ms", "per-order start"))
    for r in rows:
        ps = r["pipeline_first_frame_ms"]
        print("%-7s %8d %16s %8s %11s %8s %8s %15s %16s"
              % (r["design"], r["stations"],
                 "%d/%d (%d ok)" % (r["validated"], r["shown"], r["correct"]),
                 r["frames_per_order"], r["orders_per_min"], r["latency_p50_ms"],
                 r["latency_p95_ms"], r["new_station_first_item_ms"],
                 "-" if not ps else "p50 %s ms" % ps["p50"]))
    for r in rows:
        if r.get("kill"):
            k = r["kill"]
            print("kill -9 of station1's camera mid-order %s (%d stations): producing again "
                  "after %d ms (restarts %d); the order has %d result(s), frames %s, correct %s; "
                  "frames the other stations delivered meanwhile: %d"
                  % (k["order"], r["stations"], k["back_after_ms"], k["restarts"], k["results"],
                     k["frames"], k["correct"], k["other_stations_items_meanwhile"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
