#!/usr/bin/python3
"""bench/persistent-vs-spawn: what keeping workers warm buys.

The same OCR-like Python worker (ocrlike.py: imports cv2, loads Haar
cascades, processes a page) runs over 100 generated page images with
`baton run`, in spawn mode (a new process per file, seed 000's way) and in
persistent mode with 1 and 2 replicas.  Prints wall time, files/s, the p50
per file as baton measured it (the stage's run time), and the ratios.

    /usr/bin/python3 bench/persistent-vs-spawn/run.py --build build [--files 100]
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


def make_pages(directory, n):
    import cv2
    import numpy as np
    rng = np.random.default_rng(7)
    for i in range(n):
        img = np.full((600, 800), 255, np.uint8)
        for _ in range(12):
            x, y = int(rng.integers(0, 700)), int(rng.integers(0, 560))
            cv2.putText(img, "TAG-%d" % rng.integers(100, 999), (x, y),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.9, 0, 2)
            cv2.rectangle(img, (x - 5, y - 30), (x + 130, y + 10), 0, 1)
        cv2.imwrite(os.path.join(directory, "page%03d.png" % i), img)


def config(mode, replicas):
    worker = os.path.join(HERE, "ocrlike.py")
    if mode == "spawn":
        cmd = "[/usr/bin/python3, %s, --input, '{input}', --output, '{output}']" % worker
        extra = "    mode: spawn\n"
    else:
        cmd = "[/usr/bin/python3, %s]" % worker
        extra = "    env: {PYTHONPATH: %s}\n" % os.path.join(ROOT, "sdk", "python")
    return ("log_level: warn\nstages:\n  ocr:\n    command: %s\n%s"
            "    replicas: %d\n    timeout_ms: 120000\npipelines:\n  pages: [ocr]\n"
            % (cmd, extra, replicas))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--json")
    a = ap.parse_args()
    baton = os.path.join(os.path.abspath(a.build), "baton")
    tmp = tempfile.mkdtemp(prefix="baton-pvs-")
    pages = os.path.join(tmp, "pages")
    os.mkdir(pages)
    make_pages(pages, a.files)
    res = {"machine": "%s, %d cores" % (platform.node(), os.cpu_count()),
           "date": time.strftime("%Y-%m-%d"), "files": a.files, "runs": {}}
    for label, mode, replicas in (("spawn, 1 at a time", "spawn", 1),
                                  ("spawn, 2 at a time", "spawn", 2),
                                  ("persistent, 1 replica", "persistent", 1),
                                  ("persistent, 2 replicas", "persistent", 2)):
        cfg = os.path.join(tmp, "%s-%d.yaml" % (mode, replicas))
        with open(cfg, "w") as f:
            f.write(config(mode, replicas))
        out = os.path.join(tmp, "out-%s-%d" % (mode, replicas))
        t0 = time.monotonic()
        r = subprocess.run([baton, "run", cfg, "--pipeline", "pages", "--input", pages,
                            "--output", out, "--no-progress"], capture_output=True, text=True)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            sys.exit("baton run failed:\n" + r.stdout + r.stderr)
        p50 = float(re.search(r"^\s+ocr\s+([\d.]+)ms", r.stdout, re.M).group(1))
        res["runs"][label] = {"wall_s": wall, "per_s": a.files / wall, "p50_ms": p50}
    shutil.rmtree(tmp, ignore_errors=True)
    print("bench/persistent-vs-spawn — %d pages, OCR-like Python worker; %s — %s"
          % (a.files, res["machine"], res["date"]))
    print("%-26s %8s %9s %12s" % ("", "wall s", "files/s", "p50 ms/file"))
    for label, r in res["runs"].items():
        print("%-26s %8.1f %9.1f %12.1f" % (label, r["wall_s"], r["per_s"], r["p50_ms"]))
    runs = res["runs"]
    for n in (1, 2):
        s = runs["spawn, %d at a time" % n]
        p = runs["persistent, %d replica%s" % (n, "s" if n > 1 else "")]
        print("persistence, %d process%s: %.1fx throughput, p50 %.1fx lower"
              % (n, "es" if n > 1 else "", p["per_s"] / s["per_s"], s["p50_ms"] / p["p50_ms"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
