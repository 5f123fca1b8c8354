"""Containment: a worker or a spawn-mode script that double-forks and calls
setsid() leaves nothing behind -- not after its replica restarts, not after
baton stops, not after a kill -9 of baton and the next start -- and the
memory of such a grandchild counts against memory_mb.  Each test runs in
both modes baton has: "subreaper" (cgroup: off; /proc walks and a pid
record) and "cgroup" (a cgroup v2 directory the test makes, skipped where
none is writable)."""
import json
import os
import re
import signal
import uuid

import pytest

from conftest import PYTHON, ROOT, Baton, pid_alive, wait_for

ESCAPE = os.path.join(ROOT, "tests", "e2e", "escape_worker.py")


def cgroup2_dir():
    """The cgroup v2 directory this process runs in, when writable."""
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
        with open("/proc/self/cgroup") as f:
            own = [line.strip()[3:] for line in f if line.startswith("0::")]
    except OSError:
        return None
    for m in mounts:
        sep = m.index("-")
        if m[sep + 1] == "cgroup2" and m[3] == "/" and own:
            d = m[4] + (own[0] if own[0] != "/" else "")
            return d if os.access(d, os.W_OK) else None
    return None


def remove_cgroup_tree(path):
    """Kills and removes a cgroup tree the test made (after a failed test)."""
    if not os.path.isdir(path):
        return
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
    except OSError:
        pass
    for _ in range(200):
        try:
            for root, dirs, _files in os.walk(path, topdown=False):
                for d in dirs:
                    os.rmdir(os.path.join(root, d))
            os.rmdir(path)
            return
        except OSError:
            import time
            time.sleep(0.01)


@pytest.fixture(params=["subreaper", "cgroup"])
def mode(request, tmp_path):
    """Yields the config line that picks the containment mode."""
    if request.param == "subreaper":
        yield "cgroup: off\n", "subreaper"
        return
    base = cgroup2_dir()
    if not base:
        pytest.skip("no writable cgroup v2 directory on this machine")
    d = os.path.join(base, "baton-test-" + uuid.uuid4().hex[:12])
    os.mkdir(d)
    try:
        yield "cgroup: %s\n" % d, "cgroup"
    finally:
        remove_cgroup_tree(d)


def escape_config(top, tmp_path, spawn=False, extra=""):
    env = {"ESCAPE_PIDS": str(tmp_path / "escaped")}
    if not spawn:
        env["ESCAPE_AT_START"] = "1"
    return (top + "stages:\n  w:\n    command: [%s, %s]\n    env: %s\n%s%s"
            "    restart: {backoff_ms: 100}\n"
            "pipelines:\n  p: [w]\n" % (PYTHON, ESCAPE, json.dumps(env),
                                         "    mode: spawn\n" if spawn else "", extra))


def escaped(tmp_path, n=1):
    """The pids of escaped grandchildren, once at least n are recorded."""
    path = str(tmp_path / "escaped")

    def read():
        try:
            with open(path) as f:
                pids = [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return None
        return pids if len(pids) >= n else None
    return wait_for(read, 20, what="%d escaped grandchildren" % n)


def runtime_env(tmp_path):
    env = dict(os.environ)
    env["BATON_RUNTIME_DIR"] = str(tmp_path / "run")
    return env


def test_setsid_grandchild_ends_when_its_replica_restarts(baton, tmp_path, mode):
    b = baton(escape_config(mode[0], tmp_path), env=runtime_env(tmp_path))
    assert b.status()["containment"]["mode"] == mode[1]
    grandchild = escaped(tmp_path)[0]
    assert pid_alive(grandchild)
    worker = b.pids("w")[0]
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: not pid_alive(grandchild), 20, what="the grandchild to end with its replica")
    # The next incarnation escapes again, and is contained again.
    second = escaped(tmp_path, 2)[1]
    b.wait_ready()
    assert pid_alive(second)
    assert b.stop() == 0
    assert not pid_alive(second)


def test_setsid_grandchild_ends_before_baton_says_stopped(baton, tmp_path, mode):
    b = baton(escape_config(mode[0], tmp_path, extra="    replicas: 2\n"), env=runtime_env(tmp_path))
    grandchildren = escaped(tmp_path, 2)
    r = b.post("p", "escape")
    assert r.status == 200
    grandchildren.append(int(r.body))
    assert all(pid_alive(p) for p in grandchildren)
    assert b.stop() == 0
    # Not eventually: baton ended them before it logged "stopped" and exited.
    assert [p for p in grandchildren if pid_alive(p)] == []
    assert re.search(r'msg=stopped uptime_s=\d+ processes_left=0', b.log())
    if mode[1] == "cgroup":
        base = mode[0].split(": ", 1)[1].strip()
        assert [d for d in os.listdir(base) if d.startswith("baton-")] == []
    else:
        assert os.listdir(str(tmp_path / "run")) == []


def test_kill9_of_baton_then_the_next_start_ends_what_it_left(baton, tmp_path, mode):
    cfg = escape_config(mode[0], tmp_path)
    env = runtime_env(tmp_path)
    b = baton(cfg, env=env)
    grandchild = escaped(tmp_path)[0]
    # Once baton counts the grandchild as the replica's, it has recorded it.
    wait_for(lambda: b.replicas("w")[0].get("processes", 0) >= 2, 20,
             what="the grandchild counted in the replica")
    b.proc.kill()
    b.proc.wait(10)
    # The worker dies with baton (PDEATHSIG); the setsid grandchild does not.
    assert pid_alive(grandchild)
    b2 = baton(cfg, name="second", env=env)
    wait_for(lambda: not pid_alive(grandchild), 20, what="the next start to end the leftover")
    assert "ended what a previous baton left" in b2.log()
    assert b2.stop() == 0


def test_spawn_script_that_double_forks_leaks_nothing(baton, tmp_path, mode):
    b = baton(escape_config(mode[0], tmp_path, spawn=True), env=runtime_env(tmp_path))
    pids = []
    for _ in range(3):
        r = b.post("p", "{}")
        assert r.status == 200, r
        pids.append(json.loads(r.body)["escaped"])
    # baton still runs: each script's leftovers ended with the script.
    wait_for(lambda: not any(pid_alive(p) for p in pids), 20,
             what="the scripts' grandchildren to end")
    assert b.stop() == 0


def test_memory_of_a_setsid_grandchild_counts_against_memory_mb(baton, tmp_path, mode):
    cfg = escape_config(mode[0], tmp_path, extra="    resources: {memory_mb: 60}\n")
    cfg = cfg.replace('"ESCAPE_AT_START": "1"', '"ESCAPE_AT_START": "1", "ESCAPE_MB": "120"')
    b = baton(cfg, wait_ready=False, env=runtime_env(tmp_path))
    grandchild = escaped(tmp_path)[0]
    wait_for(lambda: "over memory_mb 60" in b.log(), 20,
             what="the replica killed over memory_mb\n" + b.log_tail())
    wait_for(lambda: not pid_alive(grandchild), 20, what="the grandchild to end with it")
    metrics = b.get("/metrics").body.decode()
    assert re.search(r'baton_replica_failures_total\{stage="w",reason="memory"\} [1-9]', metrics)
    b.stop()


def start_time(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(") ", 1)[1].split()[19])


def test_next_start_ends_what_a_dead_baton_left_and_nothing_else(baton, tmp_path):
    """A record left by a dead baton names processes by pid and start time:
    a pid now used by another process (another start time) is spared.  A
    process carrying the BATON_INSTANCE of a dead baton is ended; one
    carrying that of a live process is not."""
    import subprocess
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen(["/bin/true"])
    dead.wait()
    me = "%d-%d" % (os.getpid(), start_time(os.getpid()))

    def sleeper(instance=None):
        env = dict(os.environ)
        if instance:
            env["BATON_INSTANCE"] = instance
        return subprocess.Popen(["/bin/sleep", "300"], env=env)
    left, reused = sleeper(), sleeper()
    marked, live_marked = sleeper("%d-1" % dead.pid), sleeper(me)
    try:
        (run / ("baton-%d-1.pids" % dead.pid)).write_text(
            "%d %d\n%d %d\n" % (left.pid, start_time(left.pid), reused.pid, start_time(reused.pid) + 1))
        b = baton(escape_config("cgroup: off\n", tmp_path), env=runtime_env(tmp_path))
        wait_for(lambda: left.poll() is not None, 20, what="the recorded process to be ended")
        wait_for(lambda: marked.poll() is not None, 20, what="the marked process to be ended")
        assert reused.poll() is None
        assert live_marked.poll() is None
        assert not (run / ("baton-%d-1.pids" % dead.pid)).exists()
        assert b.stop() == 0
    finally:
        for p in (left, reused, marked, live_marked):
            p.kill()
            p.wait()


def test_cgroup_key_must_be_auto_off_or_a_usable_directory(tmp_path):
    import subprocess
    from conftest import BATON, free_port
    cfg = tmp_path / "c.yaml"
    cfg.write_text(escape_config("cgroup: relative/dir\n", tmp_path))
    out = subprocess.run([BATON, "check", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "c.yaml:1:9: 'cgroup' must be auto, off or an absolute path" in out.stderr
    missing = str(tmp_path / "no-such-cgroup")
    cfg.write_text(escape_config("cgroup: %s\n" % missing, tmp_path))
    out = subprocess.run([BATON, "serve", str(cfg), "--listen", "127.0.0.1:%d" % free_port()],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "cannot use cgroup '%s'" % missing in out.stderr
    assert not os.path.exists(str(tmp_path / "escaped"))  # no worker started
