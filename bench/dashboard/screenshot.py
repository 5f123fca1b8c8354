#!/usr/bin/python3
"""Makes docs/img/dashboard.png: a baton with two stages of the test suite's
fake worker under a steady open-loop load (baton bench --url), one replica
killed with kill -9 and a stage scaled up, photographed in headless chromium.

    /usr/bin/python3 bench/dashboard/screenshot.py --build build [--out docs/img/dashboard.png]
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
FAKE = os.path.join(ROOT, "tests", "e2e", "fake_worker.py")
SDK = os.path.join(ROOT, "sdk", "python")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def status(url):
    with urllib.request.urlopen(url + "/v1/status", timeout=5) as r:
        return json.load(r)


def wait(cond, timeout, what):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            sys.exit("timed out waiting for " + what)
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img", "dashboard.png"))
    a = ap.parse_args()
    baton = os.path.join(a.build, "baton")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = "http://127.0.0.1:%d" % port
        stage = ("  %s:\n    command: [/usr/bin/python3, " + FAKE + "]\n"
                 "    env: {PYTHONPATH: " + SDK + ", FAKE_DELAY_MS: \"%d\"}\n"
                 "    replicas: {initial: %d, max: 4}\n")
        cfg = os.path.join(tmp, "baton.yaml")
        with open(cfg, "w") as f:
            f.write("log_level: warn\nstages:\n" + stage % ("detect", 15, 2) +
                    stage % ("ocr", 40, 2) + "pipelines:\n  documents: [detect, ocr]\n")
        log = open(os.path.join(tmp, "baton.log"), "wb")
        daemon = subprocess.Popen([baton, "serve", cfg, "--listen", "127.0.0.1:%d" % port],
                                  stdout=log, stderr=subprocess.STDOUT)
        load = browser = None
        try:
            wait(lambda: daemon.poll() is None and all(
                r["state"] == "ready" for s in status(url)["stages"].values()
                for r in s["replicas"]) if _up(url) else False, 60, "baton to be ready")
            sc = os.path.join(tmp, "load.yaml")
            with open(sc, "w") as f:
                f.write("pipeline: documents\npayload: page\nscenarios:\n"
                        "  - {name: load, load: open, rate: 30, arrival: poisson, "
                        "duration_s: 60, warmup_s: 0}\n")
            load = subprocess.Popen([baton, "bench", "--scenarios", sc, "--url", url, "--out",
                                     os.path.join(tmp, "load")], stdout=subprocess.DEVNULL)
            opts = Options()
            opts.binary_location = "/usr/bin/chromium"
            for arg in ("--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", "--hide-scrollbars",
                        "--window-size=1280,1100", "--user-data-dir=" + os.path.join(tmp, "chrome")):
                opts.add_argument(arg)
            browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
            browser.get(url + "/")
            time.sleep(8)  # sparklines fill in
            victim = status(url)["stages"]["ocr"]["replicas"][0]["pid"]
            os.kill(victim, signal.SIGKILL)
            time.sleep(3)
            req = urllib.request.Request(url + "/v1/stages/detect/scale", method="POST",
                                         data=b'{"replicas": 3}')
            urllib.request.urlopen(req, timeout=5).read()
            time.sleep(12)
            os.makedirs(os.path.dirname(a.out), exist_ok=True)
            browser.save_screenshot(a.out)
            print("wrote", a.out)
        finally:
            if browser:
                browser.quit()
            if load:
                load.send_signal(signal.SIGTERM)
                load.wait(30)
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)


def _up(url):
    try:
        return urllib.request.urlopen(url + "/v2/health/ready", timeout=2).status == 200
    except Exception:  # noqa: BLE001 - not yet
        return False


if __name__ == "__main__":
    main()
