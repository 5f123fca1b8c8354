"""The dashboard (GET /) in a real headless chromium driven by selenium,
and `baton status --watch`.  The page must load without console errors,
show the config's stages, and follow a replica killed with kill -9 and a
scale-up, each within a bounded wait."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import BATON, SLOW, config, fake_stage, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "dashboard-token-0123456789"


@pytest.fixture
def browser(tmp_path):
    """A headless chromium with a fresh profile, quit at the end."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--user-data-dir=" + str(tmp_path / "chrome")):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def rows(driver, stage):
    """The replica rows the page shows for stage, as dicts of their data- attributes."""
    return driver.execute_script("""
        var stage = arguments[0];
        return Array.from(document.querySelectorAll('tr.replica')).filter(
            function (tr) { return tr.dataset.stage === stage; }).map(
            function (tr) { return {id: tr.dataset.id, state: tr.dataset.state,
                                    pid: +tr.dataset.pid, restarts: +tr.dataset.restarts}; });
    """, stage)


def test_dashboard_shows_stages_and_follows_a_kill_and_a_scale_up(baton, tmp_path, browser):
    (tmp_path / "token").write_text(TOKEN + "\n")
    b = baton("auth: {token_file: token}\n" + config(
        fake_stage("detect") +
        fake_stage("ocr", replicas="{initial: 1, max: 3}",
                   # Long enough that the page, polling each second, sees the backoff.
                   restart="{backoff_ms: 4000}"),
        {"p": ["detect", "ocr"]}), wait_ready=False)
    b.token = TOKEN
    b.wait_ready()

    # The page holds no data and needs no token; what it fetches does.
    b.token = None
    page = b.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b"<script" in page.body and b"http://" not in page.body.replace(
        b"http://www.w3.org/2000/svg", b"")  # nothing fetched from elsewhere
    assert b.get("/v1/status").status == 401
    b.token = TOKEN

    browser.get("http://127.0.0.1:%d/#token=%s" % (b.port, TOKEN))
    wait_for(lambda: rows(browser, "ocr") and rows(browser, "detect"), 30,
             interval=0.1, what="the page to show both stages")
    names = browser.execute_script(
        "return Array.from(document.querySelectorAll('div.stage')).map(d => d.dataset.stage)")
    assert sorted(names) == ["detect", "ocr"]
    assert "p" in browser.execute_script(
        "return Array.from(document.querySelectorAll('tr.pipeline')).map(t => t.dataset.pipeline)")
    # The token left the address bar once read.
    assert "token" not in browser.current_url

    (victim,) = b.pids("ocr")
    os.kill(victim, signal.SIGKILL)
    seen = set()

    def restarted():
        r = rows(browser, "ocr")
        seen.update(x["state"] for x in r)
        return len(r) == 1 and r[0]["restarts"] >= 1 and r[0]["pid"] != victim and \
            r[0]["state"] in ("ready", "busy")
    wait_for(restarted, 40, interval=0.1, what="the page to show the restarted replica")
    assert "backoff" in seen, seen

    r = b.request("POST", "/v1/stages/ocr/scale", json.dumps({"replicas": 3}).encode())
    assert r.status == 200, r
    wait_for(lambda: len(rows(browser, "ocr")) == 3 and
             all(x["state"] in ("ready", "busy") for x in rows(browser, "ocr")),
             40, interval=0.1, what="the page to show three ready replicas")
    history = browser.execute_script(
        "return Array.from(document.querySelectorAll('tr.scale-event')).map(t => t.textContent)")
    assert console_errors(browser) == []
    assert any("ocr" in h and "manual" in h for h in history), history
    assert console_errors(browser) == []
    assert not browser.find_element("id", "error").is_displayed()


def test_status_watch_redraws_in_place(baton):
    b = baton(config(fake_stage("work"), {"p": ["work"]}))
    r = subprocess.run([BATON, "status", "--url", "http://127.0.0.1:%d" % b.port, "--watch",
                        "--interval", "0.2", "--count", "3"],
                       capture_output=True, text=True, timeout=30 * SLOW)
    assert r.returncode == 0, r.stderr
    frames = r.stdout.split("\033[H\033[2J")
    assert frames[0] == "" and len(frames) == 4, r.stdout
    for f in frames[1:]:
        assert "work" in f and "PIPELINE" in f, f
    bad = subprocess.run([BATON, "status", "--watch", "--interval", "0"],
                         capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "--interval" in bad.stderr
