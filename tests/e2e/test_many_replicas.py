"""A stage of 256 replicas (replicas.max's limit) of the C SDK's test worker:
every replica is spawned while none has finished starting, every replica
becomes ready, requests are answered while the fleet is idle and while most
of it is held busy, an idle fleet's requests go to the replica that answered
last, and SIGTERM stops every one of them. Bounds are generous (a loaded 2-core
machine, ASan); how long things take is bench/replicas' business.
"""
import concurrent.futures
import json
import os

from conftest import BUILD, PYTHON, ROOT, Gate, config, live_processes, pid_alive, wait_for

WORKER = os.path.join(BUILD, "tests", "c_batch_worker")
N = 256
HELD = 192  # replicas held busy on a gate; the rest keep serving


def live_groups():
    """Process groups of every live (non-zombie) process, in one pass."""
    return {group for _, _, group in live_processes()}


def states(b):
    reps = b.status()["stages"]["w"]["replicas"]
    out = {}
    for r in reps:
        out[r["state"]] = out.get(r["state"], 0) + 1
    return out


def test_256_replicas_start_serve_idle_and_busy_and_all_stop(baton, tmp_path):
    # The workers hold their "ready" until the test opens a gate: all 256
    # must be spawned while none has finished starting, which a start that
    # waited for each worker (or ran out of something at ~200) cannot do.
    gate = tmp_path / "start-gate"
    stage = ("  w:\n    command: [%s]\n    replicas: {initial: %d, max: %d}\n"
             "    queue_max: 4096\n    env: {START_GATE: '%s'}\n" % (WORKER, N, N, gate))
    b = baton(config(stage, {"p": ["w"]}), wait_ready=False)

    def spawned():
        reps = b.replicas("w")
        return [r["pid"] for r in reps if r["state"] == "starting" and r["pid"]]
    wait_for(lambda: len(spawned()) == N, 120, interval=0.2,
             what="%d replicas spawned\n%s" % (N, b.log_tail()))
    held = spawned()
    assert len(set(held)) == N and all(pid_alive(p) for p in held)
    gate.write_text("")
    wait_for(lambda: states(b).get("ready") == N, 120, interval=0.2,
             what="%d replicas ready\n%s" % (N, b.log_tail()))
    pids = [r["pid"] for r in b.replicas("w")]
    assert sorted(pids) == sorted(held), "a replica was restarted while it started"

    # Idle: one request at a time.  Each goes to the replica that answered
    # last (its worker still warm), not to one that has slept longer: one
    # process answers them all, in order ("batch" numbers a process's
    # handler calls, and every other process has answered nothing yet).
    for i in range(N):
        r = b.post("p", "idle-%d" % i)
        assert r.status == 200, r
        doc = r.json()
        assert doc["echo"] == "idle-%d" % i
        assert doc["batch"] == i + 1, \
            "request %d went to another replica than the one that answered last" % i

    # Busy: most of the fleet is held on a gate while other requests flow.
    results = []
    with Gate(tmp_path) as gate:
        threads = gate.hold(b, HELD, results)
        wait_for(lambda: states(b).get("busy") == HELD, 60, interval=0.1,
                 what="%d busy replicas" % HELD)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: b.post("p", "busy-%d" % i), range(4 * (N - HELD))))
        for i, r in enumerate(answers):
            assert r.status == 200 and r.json()["echo"] == "busy-%d" % i, r
        assert states(b).get("busy") == HELD, "a held replica was given more work"
        gate.open()
        for t in threads:
            t.join(60)
    assert len(results) == HELD and all(r.status == 200 for r in results), results

    st = b.status()
    assert st["requests"]["failed"] == 0 and st["requests"]["in_flight"] == 0, st["requests"]
    assert sum(r["restarts"] for r in st["stages"]["w"]["replicas"]) == 0

    # SIGTERM stops every replica: no process of any of the groups is left.
    assert b.stop() == 0
    left = live_groups() & set(pids)
    assert not left, "%d replica groups outlived baton: %s" % (len(left), sorted(left)[:10])
    log = b.log()
    assert log.count('msg="replica stopped"') == N, json.dumps(log[-2000:])


def read_syscalls(pid):
    """read(2)-family calls of every thread of pid so far (/proc/PID/io)."""
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith("syscr:"):
                return int(line.split()[1])
    raise AssertionError("no syscr in /proc/%d/io" % pid)


def test_idle_baton_reads_proc_only_when_something_needs_it(baton, tmp_path):
    # Reading one process's stat file is at least one read(2): a pass over
    # /proc costs at least as many reads as there are processes.
    one_pass = sum(1 for e in os.listdir("/proc") if e.isdigit())
    stage = "  w:\n    command: [" + WORKER + "]\n    ping_interval_ms: 0\n{}"
    top = "interval_ms: 100\n"
    # Readiness from the log: a status read would turn sampling on.
    idle = baton(config(stage.format(""), {"p": ["w"]}, top=top), name="idle", wait_ready=False)
    # The control: memory_mb is checked at every tick, so it samples.
    limited = baton(config(stage.format("    resources: {memory_mb: 100000}\n"), {"p": ["w"]},
                           top=top), name="limited", wait_ready=False)
    for b in (idle, limited):
        wait_for(lambda: 'msg="replica ready"' in b.log(), 30, what="the replica ready")
    i0, l0 = read_syscalls(idle.proc.pid), read_syscalls(limited.proc.pid)
    # Ten passes of the control are ten ticks of both (same interval_ms).
    wait_for(lambda: read_syscalls(limited.proc.pid) - l0 >= 10 * one_pass // 2, 30,
             what="the control to sample ten times")
    quiet = read_syscalls(idle.proc.pid) - i0
    assert quiet < one_pass // 2, (
        "an idle baton that nothing asks for signals made %d reads (a pass is ~%d)"
        % (quiet, one_pass))
    # A reader turns sampling on.
    i1 = read_syscalls(idle.proc.pid)
    idle.get("/metrics")
    wait_for(lambda: read_syscalls(idle.proc.pid) - i1 >= one_pass // 2, 10,
             what="a pass over /proc after a /metrics read")
    wait_for(lambda: idle.replicas("w")[0]["rss_bytes"] > 0, 10, what="the replica's RSS")
    assert idle.stop() == 0 and limited.stop() == 0


def test_a_spawn_slot_freed_by_a_timeout_takes_work_again(baton, tmp_path):
    # The slot's request times out and its process is killed with no request
    # left to answer: the slot must come back to dispatch by itself.
    script = os.path.join(ROOT, "tests", "e2e", "seed000_script.py")
    b = baton("stages:\n  legacy:\n    mode: spawn\n"
              "    command: [%s, %s, --input, '{input}', --output, '{output}']\n"
              "    spawn: {status_key: status}\n    replicas: 1\n    timeout_ms: 2000\n"
              "pipelines:\n  p: [legacy]\n" % (PYTHON, script))
    r = b.post("p", json.dumps({"action": "hang"}))
    assert r.status == 504, r
    for _ in range(3):
        r = b.post("p", '{"action": "ok"}', timeout=30)
        assert r.status == 200, r
    assert b.stop() == 0
