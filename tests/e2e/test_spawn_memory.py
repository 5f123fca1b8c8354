"""resources.memory_mb in spawn mode: a script whose process group goes over
the limit is killed like a persistent replica over it, and its request is
retried, then failed with worker_crashed; the stage keeps serving."""
import json
import re

from conftest import PYTHON, SLOW, group_alive, wait_for

# A one-shot script (stdin/stdout convention) whose input chooses how much
# memory it touches: {"alloc_mb": N} holds N MB for "hold_s" seconds before
# answering; with "once": TOKEN it does so only the first time TOKEN is seen.
SCRIPT = r'''
import json, os, sys, time
req = json.load(sys.stdin)
mb = req.get("alloc_mb", 0)
token = req.get("once")
if token:
    mark = os.path.join(os.environ["STATE_DIR"], token)
    if os.path.exists(mark):
        mb = 0
    else:
        open(mark, "w").close()
if mb:
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    print("holding %d MB" % mb, file=sys.stderr, flush=True)
    time.sleep(req.get("hold_s", 30))
json.dump({"ok": True, "pid": os.getpid()}, sys.stdout)
'''


def spawn_cfg(tmp_path, state_dir, retries):
    script = tmp_path / "hog.py"
    script.write_text(SCRIPT)
    return ("interval_ms: 100\n"
            "stages:\n  legacy:\n    mode: spawn\n"
            "    command: [%s, %s]\n"
            "    env: {STATE_DIR: %s}\n"
            "    replicas: 1\n    retries: %d\n"
            # Longer than the test waits: an unenforced limit shows as a 504.
            "    timeout_ms: %d\n"
            "    resources: {memory_mb: 100}\n"
            "pipelines:\n  p: [legacy]\n" % (PYTHON, script, state_dir, retries, 40000 * SLOW))


def killed_pids(log):
    return [int(p) for p in re.findall(r'msg="killing spawn process" stage=legacy replica=1 '
                                       r'pid=(\d+) reason="its processes use \d+ MB, '
                                       r'over memory_mb 100', log)]


def memory_failures(b):
    metrics = b.get("/metrics").body.decode()
    m = re.search(r'baton_replica_failures_total\{stage="legacy",reason="memory"\} (\d+)', metrics)
    return int(m.group(1)) if m else 0


def test_spawn_job_over_memory_is_killed_and_its_request_retried(baton, tmp_path, state_dir):
    b = baton(spawn_cfg(tmp_path, state_dir, retries=1))
    r = b.post("p", json.dumps({"alloc_mb": 300, "once": "m1", "hold_s": 15}), timeout=30)
    assert r.status == 200 and r.json()["ok"] is True, r
    pids = killed_pids(b.log())
    assert len(pids) == 1, b.log_tail()
    # The retry ran in a new process, and the killed one left nothing behind.
    assert r.json()["pid"] != pids[0]
    assert not group_alive(pids[0])
    assert memory_failures(b) == 1
    assert b.status()["stages"]["legacy"]["retried"] == 1
    assert b.stop() == 0


def test_spawn_job_always_over_memory_fails_and_the_stage_keeps_serving(baton, tmp_path,
                                                                        state_dir):
    b = baton(spawn_cfg(tmp_path, state_dir, retries=1))
    r = b.post("p", json.dumps({"alloc_mb": 300, "hold_s": 15}), timeout=30)
    assert r.status == 502 and r.json()["code"] == "worker_crashed", r
    assert "killed by baton" in r.json()["error"] and "memory_mb" in r.json()["error"], r
    pids = killed_pids(b.log())
    assert len(pids) == 2 and len(set(pids)) == 2, b.log_tail()  # retries + 1 attempts
    assert memory_failures(b) == 2
    wait_for(lambda: not any(group_alive(p) for p in pids), 10, what="the killed groups to end")
    r = b.post("p", json.dumps({"alloc_mb": 0}))
    assert r.status == 200 and r.json()["ok"] is True, r
    assert memory_failures(b) == 2
    assert b.stop() == 0
