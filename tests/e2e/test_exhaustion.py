"""Resource exhaustion: a worker that prints without end, clients that hold
descriptors or memory, a full disk and a SIGHUP cannot starve or stop baton
(issue 14, items 2 to 6)."""
import json
import os
import re
import resource
import signal
import socket
import subprocess
import threading

import pytest

from conftest import BATON, SANITIZED, SLOW, config, fake_stage, pid_alive, wait_for


def one_stage(**kw):
    kw.setdefault("restart", "{backoff_ms: 50, backoff_max_ms: 200}")
    return config(fake_stage("work", **kw), {"p": ["work"]})


# --- item 6: a worker's output is rate-limited --------------------------------

def test_chatty_worker_output_is_rate_limited_and_suppressions_counted(baton):
    b = baton(one_stage(log_limit="{interval_ms: 1000, lines: 50, bytes: 1000000}"))
    assert b.post("p", "print:5000").status == 200
    posts = []

    def one_more_line():
        posts.append(b.post("p", "print:1").status)
        return "suppressed" in b.log()
    # The count is reported when the next interval's first line arrives.
    wait_for(one_more_line, 30 * SLOW, interval=0.3, what="a suppressed-lines report")
    assert b.post("p", "still fine").body == b"still fine"
    # What the last interval dropped is reported when the stream ends.
    assert b.stop() == 0
    log = b.log()
    logged = len(re.findall(r'msg="line \d+ of a chatty worker"', log))
    suppressed = sum(int(n) for n in re.findall(
        r'msg="suppressed (\d+) lines of worker output" stage=work replica=1', log))
    assert 0 < logged <= 1000, logged  # 50 a second: 5000 lines take far fewer seconds
    printed = 5000 + len(posts)
    assert posts == [200] * len(posts)
    assert logged + suppressed == printed, (logged, suppressed, printed)


# --- item 5: a full disk is a clear error, _failed.jsonl stays valid ------------

@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs of the test's own (root only), unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_full_disk_stops_the_run_with_a_clear_error_and_valid_failed_jsonl(tmp_path, small_fs):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("stages:\n" + fake_stage("w", retries="0", replicas="{initial: 2}")
                   + "pipelines:\n  p: [w]\n")
    inputs = tmp_path / "in"
    inputs.mkdir()
    big = "A" * 20000
    for i in range(80):
        # Long failure lines between outputs, so the disk fills mid-line.
        text = "reject:" + "bad page %d " % i + "x" * 900 if i % 2 == 0 else big
        (inputs / ("%03d.txt" % i)).write_text(text)
    out = small_fs / "out"
    r = subprocess.run([BATON, "run", str(cfg), "--pipeline", "p", "--input", str(inputs),
                        "--output", str(out)], capture_output=True, text=True,
                       timeout=120 * SLOW)
    text = (out / "_failed.jsonl").read_text()
    assert text == "" or text.endswith("\n"), text[-200:]
    for line in text.splitlines():
        rec = json.loads(line)
        assert rec["code"] in ("rejected", "write_failed"), rec
    assert r.returncode == 1, r.stderr
    assert "No space left on device" in r.stderr, r.stderr
    assert "cannot write" in r.stderr
    written = [n for n in os.listdir(out) if n.endswith(".out")]
    assert 0 < len(written) < 40
    for n in written:
        assert (out / n).read_text() == big


# --- item 2: descriptor exhaustion -----------------------------------------------

def fd_limits(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return [int(x) for x in line.split()[3:5]]


def test_soft_descriptor_limit_is_raised_to_the_hard_one(baton):
    b = baton(one_stage(), wrapper=["prlimit", "--nofile=200:4096", "--"])
    assert fd_limits(b.proc.pid) == [4096, 4096]
    assert b.stop() == 0


def ready_lines(b):
    return b.log().count('msg="replica ready"')


def test_idle_connection_flood_cannot_stop_replicas_from_restarting(baton):
    b = baton(one_stage(replicas="{initial: 2}",
                        restart="{backoff_ms: 50, backoff_max_ms: 200, max_failures: 3}"),
              wrapper=["prlimit", "--nofile=256:256", "--"])
    pids = b.pids("work")
    flood = []
    try:
        for _ in range(400):  # more than the descriptors baton has: idle, sending nothing
            flood.append(socket.create_connection(("127.0.0.1", b.port), timeout=5))
        before = ready_lines(b)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: ready_lines(b) >= before + 2, 30 * SLOW,
                 what="both replicas back while the flood holds\n" + b.log_tail())
    finally:
        for s in flood:
            s.close()
    wait_for(lambda: b.get("/v2/health/ready").status == 200, 30 * SLOW, what="ready")
    reps = b.replicas("work")
    assert [r["state"] for r in reps] == ["ready", "ready"], reps
    assert all(r["failures"] == 1 for r in reps), reps  # the kill, nothing more
    assert b.post("p", "after the flood").body == b"after the flood"
    assert "http.max_connections lowered to fit the descriptor limit" in b.log()
    assert b.stop() == 0


def test_spawn_failing_for_lack_of_descriptors_is_retried_and_not_a_failure(baton):
    b = baton(one_stage(restart="{backoff_ms: 50, backoff_max_ms: 200, max_failures: 2}"))
    pid = b.pids("work")[0]
    soft, hard = resource.prlimit(b.proc.pid, resource.RLIMIT_NOFILE)
    # No descriptor to spare: the replica's own (3) come free when it dies,
    # fewer than a spawn takes.
    open_now = len(os.listdir("/proc/%d/fd" % b.proc.pid))
    resource.prlimit(b.proc.pid, resource.RLIMIT_NOFILE, (open_now - 1, hard))
    try:
        os.kill(pid, signal.SIGKILL)
        # More tries than max_failures allows: only uncounted retries get there.
        wait_for(lambda: b.log().count("too many open files") >= 3,
                 20 * SLOW, what="spawns retried\n" + b.log_tail())
    finally:
        resource.prlimit(b.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
    wait_for(lambda: [r["state"] for r in b.replicas("work")] == ["ready"], 20 * SLOW,
             what="the replica back")
    assert b.replicas("work")[0]["failures"] == 1  # the kill, not the retries
    assert b.post("p", "back").body == b"back"
    assert b.stop() == 0


def test_readiness_is_false_while_a_stage_has_no_live_replica(baton, tmp_path):
    hold = tmp_path / "not-yet"
    b = baton(one_stage(env={"FAKE_NEVER_READY_FILE": str(hold)}))
    assert b.get("/v2/health/ready").status == 200
    hold.write_text("")  # the next process will not say ready until this goes
    os.kill(b.pids("work")[0], signal.SIGKILL)
    wait_for(lambda: b.get("/v2/health/ready").status == 400, 20 * SLOW,
             what="readiness false while the only replica restarts")
    assert b.get("/v2/health/live").status == 200
    hold.unlink()
    wait_for(lambda: b.get("/v2/health/ready").status == 200, 20 * SLOW, what="ready again")
    assert b.stop() == 0


# --- item 3: bytes held for clients are bounded --------------------------------

def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def slow_reader(port, body):
    """Sends a whole request, then never reads the answer."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"POST /v1/pipelines/p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
              % len(body) + body)
    return s


def test_slow_readers_are_bounded_by_the_budget_and_dropped_after_the_write_timeout(baton):
    mib = 1 << 20
    # memfd_min_bytes: 0 keeps the answers in baton's own memory, which its RSS
    # shows; as memfds they would be page cache, mapped only while sent.
    b = baton(config(fake_stage("work", replicas="{initial: 2}"), {"p": ["work"]},
                     top="max_request_bytes: %d\nhttp: {max_buffered_bytes: %d, write_timeout_s: 2}\n"
                     "memfd_min_bytes: 0\n" % (10 * mib, 20 * mib)))
    http = lambda: b.status()["http"]
    assert http()["max_buffered_bytes"] == 20 * mib and http()["buffered_bytes"] == 0
    base = rss_kb(b.proc.pid)
    body = b"A" * (8 * mib)
    readers = [slow_reader(b.port, body) for _ in range(2)]
    try:
        # Both answers (8 MiB each) queued and not taken: 16 MiB held.
        wait_for(lambda: http()["buffered_bytes"] >= 16 * mib, 30 * SLOW, interval=0.1,
                 what="two answers held\n" + b.log_tail())
        peak = rss_kb(b.proc.pid)
        # A body that would take the held bytes past 20 MiB is refused before it is read.
        s = socket.create_connection(("127.0.0.1", b.port), timeout=10 * SLOW)
        s.sendall(b"POST /v1/pipelines/p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                  % len(body))
        answer = s.recv(4096)
        s.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b'"code":"overloaded"' in answer and b"Retry-After: 1" in answer, answer
        assert b.post("p", "small fits").body == b"small fits"
        # The readers never read: after write_timeout_s they are dropped, the memory freed.
        wait_for(lambda: http()["buffered_bytes"] == 0, 30 * SLOW, interval=0.1,
                 what="slow readers dropped\n" + b.log_tail())
        assert "client did not take its answer in time: dropped" in b.log()
        for s in readers:
            s.settimeout(10 * SLOW)
            got = b""
            try:
                while True:
                    chunk = s.recv(1 << 16)
                    if not chunk:
                        break
                    got += chunk
            except OSError:
                pass
            assert len(got) < 8 * mib  # cut off, not served in full
    finally:
        for s in readers:
            s.close()
    assert peak - base >= 8 * 1024  # the answers were really held (KiB)
    if not SANITIZED:  # ASan's allocator keeps freed memory in quarantine
        wait_for(lambda: rss_kb(b.proc.pid) < base + 8 * 1024, 10 * SLOW, interval=0.1,
                 what="RSS back near where it started (%d KiB, peak %d)" % (base, peak))
    assert b.post("p", body).body == body
    assert b.stop() == 0


@pytest.mark.skipif(SANITIZED, reason="ASan's allocator keeps freed memory in quarantine")
def test_freed_memory_goes_back_when_quiet_and_after_a_spike_under_a_light_load(baton):
    """Large blocks come from the heap and are reused (no page faults per
    payload); the daemon gives freed memory back once a second when no
    request came since its last look, or when 64 MiB or more lie unused,
    over twice what is in use, at two looks in a row (docs/operations.md,
    "Memory")."""
    mib = 1 << 20
    b = baton(config(fake_stage("work", replicas="{initial: 6}", max_ongoing=1), {"p": ["work"]},
                     top="max_request_bytes: %d\nmemfd_min_bytes: 0\n" % (16 * mib)))
    base = rss_kb(b.proc.pid)
    # One 4 MiB echo, then nothing: its blocks (well under 64 MiB) go back.
    body = b"Q" * (4 * mib)
    assert b.post("p", body).body == body
    wait_for(lambda: rss_kb(b.proc.pid) < base + 2 * 1024, 15 * SLOW, interval=0.2,
             what="RSS back after a quiet second (base %d KiB)" % base)
    # A small request every 100 ms (never a quiet second), and six 12 MiB
    # echoes at once among them: the spike still goes back.
    stop = threading.Event()
    small, peak = [], [0]

    def trickle():
        while not stop.is_set():
            small.append(b.post("p", "tiny").status)
            peak[0] = max(peak[0], rss_kb(b.proc.pid))
            stop.wait(0.1)
    t = threading.Thread(target=trickle)
    t.start()
    try:
        body = b"S" * (12 * mib)
        got = []
        posts = [threading.Thread(target=lambda: got.append(b.post("p", body).body == body))
                 for _ in range(6)]
        for p in posts:
            p.start()
        for p in posts:
            p.join(60 * SLOW)
        assert got == [True] * 6
        assert peak[0] - base >= 32 * 1024, "the spike was not held (%d KiB)" % (peak[0] - base)
        wait_for(lambda: rss_kb(b.proc.pid) < base + 16 * 1024, 20 * SLOW, interval=0.2,
                 what="RSS back under a light load (base %d KiB, peak %d)" % (base, peak[0]))
    finally:
        stop.set()
        t.join(10 * SLOW)
    assert len(small) >= 5 and set(small) == {200}, small
    assert b.stop() == 0


# --- item 4: SIGHUP reloads the config ---------------------------------------------

def reload(b, text, expect):
    """Rewrites the config, sends SIGHUP, waits for the log line expect."""
    seen = b.log().count(expect)
    with open(b.config_path, "w") as f:
        f.write(text)
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: b.log().count(expect) > seen, 20 * SLOW,
             what="%r after SIGHUP\n%s" % (expect, b.log_tail()))


def test_sighup_with_an_invalid_or_unappliable_config_keeps_serving_and_says_why(baton):
    text = one_stage()
    b = baton(text)
    pids = b.pids("work")
    reload(b, text.replace("stages:", "stagez:"), "reload refused")
    assert "stagez" in b.log() and ":1:1:" in b.log()  # FILE:LINE:COL of the bad key
    reload(b, text + "listen: 127.0.0.1:1\n", "reload refused")
    assert "'listen' cannot change by a reload" in b.log()
    reload(b, text.replace("    env:", "    max_ongoing: 4\n    env:"), "reload refused")
    assert "'max_ongoing' of stage 'work' cannot change" in b.log()
    assert b.post("p", "still serving").body == b"still serving"
    assert b.pids("work") == pids
    assert b.proc.poll() is None
    assert b.stop() == 0


def test_sighup_adds_removes_and_rolls_stages_without_failing_a_request(baton):
    def cfg(a_env, extra_stage, pipelines):
        return config(fake_stage("a", replicas="{initial: 2}", env={"GEN": a_env})
                      + extra_stage, pipelines, top="interval_ms: 100\n")
    b = baton(cfg("1", fake_stage("b"), {"p": ["a"], "q": ["b"]}))
    old_a, old_b = b.pids("a"), b.pids("b")
    statuses, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            statuses.append(b.post("p", "slow:30").status)
    t = threading.Thread(target=load)
    t.start()
    try:
        wait_for(lambda: len(statuses) > 3, 10 * SLOW, what="load")
        reload(b, cfg("2", fake_stage("c"), {"p": ["a"], "r": ["c", "a"]}), "config reloaded")
        wait_for(lambda: 'msg="replicas rolled" stage=a' in b.log(), 30 * SLOW,
                 what="the roll\n" + b.log_tail())
        n = len(statuses)
        wait_for(lambda: len(statuses) > n + 3, 10 * SLOW, what="load after the roll")
    finally:
        stop.set()
        t.join(30 * SLOW)
    assert statuses and set(statuses) == {200}, statuses
    # Each old replica left only after a new one was ready.
    log = b.log()
    after = log[log.index("rolling replicas"):]
    assert after.index('msg="replica ready" stage=a') < after.index('msg="replica stopped" stage=a')
    new_a = b.pids("a")
    assert len(new_a) == 2 and not set(new_a) & set(old_a), (old_a, new_a)
    assert json.loads(b.post("p", "env").body)["GEN"] == "2"
    assert b.post("r", "through c and a").body == b"through c and a"
    assert b.post("q", "x").status == 404
    wait_for(lambda: 'msg="stage retired: no request can reach it" stage=b' in b.log(),
             20 * SLOW, what="b retired")
    doc = b.status()
    assert sorted(doc["stages"]) == ["a", "c"] and sorted(doc["pipelines"]) == ["p", "r"]
    wait_for(lambda: not any(pid_alive(p) for p in old_a + old_b), 20 * SLOW,
             what="old replicas gone")
    assert b.get("/v2/health/ready").status == 200
    assert b.stop() == 0
