"""Fixtures for the end-to-end tests: start the real baton binary on a
temporary directory and a port picked here, talk to it over HTTP, stop it by
PID, and prove that no replica process outlives it.

BATON_BUILD names the build directory (default: build/ at the repo root).
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("BATON_BUILD", os.path.join(ROOT, "build"))
BATON = os.path.join(BUILD, "baton")
FAKE = os.path.join(ROOT, "tests", "e2e", "fake_worker.py")
PYTHON = "/usr/bin/python3"
SDK_PY = os.path.join(ROOT, "sdk", "python")
SANITIZED = bool(os.environ.get("BATON_SANITIZED"))
# Bounds for waits; generous because the suite also runs under ASan on a
# loaded 2-core machine.  They bound waits, they are not timing claims.
SLOW = 3 if SANITIZED else 1


def wait_for(cond, timeout, interval=0.02, what="condition"):
    """Polls cond() until it is truthy or timeout seconds pass."""
    end = time.monotonic() + timeout * SLOW
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout * SLOW, what))
        time.sleep(interval)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ")[-1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False  # it went away while we looked


def group_alive(pgid):
    """True if any live (non-zombie) process is in process group pgid."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


class Gate:
    """A file the fake worker's "gate:PATH" requests wait for. A test holds
    replicas busy with gate requests for as long as its checks take, however
    slow the machine, then opens the gate; leaving the with block opens it
    in any case, so no worker is left waiting."""

    def __init__(self, tmp_path, name="gate"):
        self.path = os.path.join(str(tmp_path), name)
        self.payload = "gate:" + self.path

    def open(self):
        open(self.path, "w").close()

    def hold(self, b, n, replies, pipeline="p"):
        """Posts n gate requests, each from its own thread, appending the
        replies to replies; returns the started threads."""
        threads = [threading.Thread(target=lambda: replies.append(b.post(pipeline, self.payload)))
                   for _ in range(n)]
        for t in threads:
            t.start()
        return threads

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.open()


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Reply(%d, %r)" % (self.status, self.body[:200])


class Baton:
    """One baton daemon under test."""

    def __init__(self, tmp_path, config, name="baton", wrapper=(), env=None):
        self.dir = tmp_path
        self.wrapper = list(wrapper)  # e.g. valgrind and its options
        self.env = env
        self.port = free_port()
        self.config_path = os.path.join(str(tmp_path), name + ".yaml")
        with open(self.config_path, "w") as f:
            f.write(config)
        self.log_path = os.path.join(str(tmp_path), name + ".log")
        self.proc = None
        self.pgids = set()  # every replica group seen, checked at the end

    def start(self, wait_ready=True):
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.wrapper + [BATON, "serve", self.config_path, "--listen",
                            "127.0.0.1:%d" % self.port],
            stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        wait_for(self._listening, 60 if self.wrapper else 20,
                 what="baton to listen\n" + self.log_tail())
        if wait_ready:
            self.wait_ready()
        return self

    def _listening(self):
        if self.proc.poll() is not None:
            raise AssertionError("baton exited with %s:\n%s" % (self.proc.returncode, self.log_tail()))
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def wait_ready(self, timeout=30):
        """Waits for /v2/health/ready and for every replica to be ready, so
        that tests start from a known pool."""
        wait_for(lambda: self.get("/v2/health/ready").status == 200, timeout,
                 interval=0.05, what="ready\n" + self.log_tail())
        wait_for(self.all_replicas_ready, timeout, interval=0.05,
                 what="every replica ready\n" + self.log_tail())

    def all_replicas_ready(self):
        doc = self.status()
        return all(r["state"] in ("ready", "busy")
                   for st in doc["stages"].values() for r in st["replicas"])

    token = None  # sent as Authorization: Bearer when set

    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout * SLOW)
        headers = dict(headers or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = "Bearer " + self.token
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, pipeline, body=b"", headers=None, timeout=60):
        if isinstance(body, str):
            body = body.encode()
        return self.request("POST", "/v1/pipelines/" + pipeline, body, headers, timeout)

    def status(self):
        doc = self.get("/v1/status").json()
        for st in doc["stages"].values():
            for r in st["replicas"]:
                if r["pid"]:
                    self.pgids.add(r["pid"])
        return doc

    def remember_groups(self):
        self.status()

    def replicas(self, stage):
        return self.status()["stages"][stage]["replicas"]

    def pids(self, stage):
        return [r["pid"] for r in self.replicas(stage) if r["pid"]]

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n=40):
        try:
            return "\n".join(self.log().splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stops baton by PID and returns its exit status."""
        if self.proc.poll() is None:
            self.remember_groups_quietly()
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("baton did not stop within %ds:\n%s" % (timeout * SLOW, self.log_tail()))
        return self.proc.returncode

    def remember_groups_quietly(self):
        try:
            self.remember_groups()
        except Exception:
            pass

    def leftover_groups(self):
        return [g for g in self.pgids if group_alive(g)]

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for g in self.pgids:
            try:
                os.killpg(g, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if getattr(self, "logf", None):
            self.logf.close()


def fake_stage(name="work", **extra):
    """A YAML stage block running the fake worker; extra keys are YAML lines."""
    lines = ["  %s:" % name,
             "    command: [%s, %s]" % (PYTHON, FAKE)]
    env = {"PYTHONPATH": SDK_PY}
    env.update(extra.pop("env", {}))
    lines.append("    env: %s" % json.dumps(env))
    for k, v in extra.items():
        lines.append("    %s: %s" % (k, v))
    return "\n".join(lines) + "\n"


def config(stages, pipelines, top=""):
    """Builds a config: stages is text from fake_stage(), pipelines a dict."""
    text = top + "stages:\n" + stages + "pipelines:\n"
    for name, st in pipelines.items():
        text += "  %s: [%s]\n" % (name, ", ".join(st))
    return text


@pytest.fixture
def state_dir(tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    return str(d)


@pytest.fixture
def baton(tmp_path):
    """Factory: baton(config_text) -> a started Baton; cleaned up afterwards."""
    made = []

    def make(cfg, start=True, wait_ready=True, name="baton", wrapper=(), env=None):
        b = Baton(tmp_path, cfg, name=name, wrapper=wrapper, env=env)
        made.append(b)
        if start:
            b.start(wait_ready=wait_ready)
        return b

    yield make
    for b in made:
        b.cleanup()
    for b in made:
        # Sanitizer reports that did not change an exit status still fail.
        if os.path.exists(b.log_path):
            log = b.log()
            for marker in ("runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer"):
                assert marker not in log, "sanitizer report in %s:\n%s" % (b.log_path, b.log_tail(60))
