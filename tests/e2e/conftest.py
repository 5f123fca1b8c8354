"""Fixtures for the end-to-end tests: start the real baton binary on a
temporary directory and a port picked here, talk to it over HTTP, stop it by
PID, and prove that no replica process outlives it.

Two checks run after every test, whatever it started and however (the
baton fixture, subprocess.run of `baton run`/`check`/`env`/`bench`, ...):
- no orphan: pytest is the child subreaper of everything its tests start,
  so a process whose parent died (a replica or a script's child left behind
  by baton) becomes pytest's child; none may be alive once the test is done.
- no sanitizer report: under BATON_SANITIZED, ASan and UBSan write their
  reports to files in one directory (log_path), which must stay empty.

BATON_BUILD names the build directory (default: build/ at the repo root).
"""
import ctypes
import glob
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
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
# Under CI a test that cannot run where it must (root-only) fails: see needs_root().
CI = os.environ.get("CI") == "true"

PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

# Every sanitized process a test starts reports into SANITIZER_DIR.
SANITIZER_DIR = tempfile.mkdtemp(prefix="baton-sanitizer-") if SANITIZED else None
if SANITIZED:
    for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        opts = [o for o in os.environ.get(var, "").split(":") if o]
        os.environ[var] = ":".join(opts + ["log_path=" + os.path.join(SANITIZER_DIR, "report")])


def needs_root(why="needs root"):
    """Skips a test that needs root when not root, but fails it under CI
    (CI=true), where every test must run."""
    if os.geteuid() != 0:
        cannot_run(why)


def cannot_run(why):
    if CI:
        pytest.fail("cannot run under CI: " + why)
    pytest.skip(why)


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


def status_kib(pid, key):
    """A kB figure of /proc/PID/status: VmRSS, VmHWM (the peak), ..."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (key, pid))


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


def live_processes():
    """(pid, ppid, pgid) of every live (non-zombie) process, in one pass."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z":
            yield int(entry), int(fields[1]), int(fields[2])


def group_alive(pgid):
    """True if any live (non-zombie) process is in process group pgid."""
    for _, _, group in live_processes():
        if group == pgid:
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
        self.orphans = []   # groups still alive after baton was gone

    def start(self, wait_ready=True):
        for attempt in range(3):
            self.logf = open(self.log_path, "wb")
            self.proc = subprocess.Popen(
                self.wrapper + [BATON, "serve", self.config_path, "--listen",
                                "127.0.0.1:%d" % self.port],
                stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env)
            try:
                wait_for(self._listening, 60 if self.wrapper else 20,
                         what="baton to listen\n" + self.log_tail())
                break
            except AssertionError:
                # Another test's server took the port picked here meanwhile.
                if (attempt == 2 or self.proc.poll() is None
                        or "Address already in use" not in self.log()):
                    raise
                self.logf.close()
                self.port = free_port()
        if wait_ready:
            self.wait_ready()
        return self

    def _listening(self):
        if self.proc.poll() is not None:
            raise AssertionError("baton exited with %s:\n%s" % (self.proc.returncode, self.log_tail()))
        # Our baton's own word that it listens: the port picked here may have
        # been taken meanwhile by another test's server, which would answer a
        # connection just as well (one answered a test for a baton that had
        # failed with "Address already in use").
        try:
            with open(self.log_path, "rb") as f:
                if b"msg=listening addr=127.0.0.1:%d " % self.port not in f.read():
                    return False
        except OSError:
            return False
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

    def remember_children(self):
        """Adds the group of every child of baton (replicas and spawn jobs,
        each the leader of its own group) to pgids, read from /proc."""
        if not self.proc:
            return
        for pid, ppid, group in live_processes():
            # A child caught between baton's vfork and its setsid() is still in
            # baton's group, which is this test run's own: killing that group
            # killed the whole CI job once.
            if ppid == self.proc.pid and group == pid:
                self.pgids.add(group)

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
            self.remember_children()
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
        """Stops baton if the test left it running (SIGTERM, then SIGKILL),
        notes the replica groups that outlived it in orphans, and kills them."""
        if self.proc and self.proc.poll() is None:
            self.remember_children()
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15 * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc:
            try:
                wait_for(lambda: not self.leftover_groups(), 5, interval=0.05)
            except AssertionError:
                self.orphans = self.leftover_groups()
        for g in self.pgids:
            if g == os.getpgid(0):
                continue  # never the test run's own group
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
        assert not b.orphans, "process groups outlived baton (%s): %s\n%s" % (
            b.log_path, b.orphans, b.log_tail(20))
        # Sanitizer reports that did not change an exit status still fail.
        if os.path.exists(b.log_path):
            log = b.log()
            for marker in ("runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer"):
                assert marker not in log, "sanitizer report in %s:\n%s" % (b.log_path, b.log_tail(60))


# Processes that outlive a test on purpose (a module's database server).
SHARED_PIDS = set()


def keep_running(pid):
    """Tells the orphan check that pid belongs to a fixture wider than one test."""
    SHARED_PIDS.add(pid)


def live_children():
    """{pid: command} of pytest's live (non-zombie) children."""
    me, out = os.getpid(), {}
    for pid, ppid, _ in live_processes():
        if ppid != me:
            continue
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                out[pid] = f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


@pytest.fixture(autouse=True)
def no_orphans_and_no_sanitizer_reports():
    """After every test: nothing it started is still running (orphans of
    baton or of its workers come to pytest, the subreaper), and no
    sanitized process it started wrote a report."""
    before = set(live_children())
    yield
    left = {}

    def settled():
        left.clear()
        left.update({p: c for p, c in live_children().items()
                     if p not in before and p not in SHARED_PIDS})
        return not left

    try:
        wait_for(settled, 5, interval=0.05)
    except AssertionError:
        pass
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    reports = sorted(glob.glob(os.path.join(SANITIZER_DIR, "report*"))) if SANITIZER_DIR else []
    texts = []
    for path in reports:
        with open(path, errors="replace") as f:
            texts.append("%s:\n%s" % (path, f.read()[-4000:]))
        os.unlink(path)
    assert not left, "processes left running after the test: %s" % left
    assert not texts, "sanitizer reports:\n" + "\n".join(texts)
