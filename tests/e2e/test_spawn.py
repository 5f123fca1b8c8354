"""Spawn mode: existing one-shot scripts run unchanged, one process per
request, with the same timeouts, retries and error codes as workers."""
import glob
import json
import os
import re
import subprocess
import threading
import time

from conftest import BATON, PYTHON, ROOT, SLOW, group_alive, pid_alive, wait_for

SEED000 = os.path.join(ROOT, "tests", "e2e", "seed000_script.py")
SEED003 = os.path.join(ROOT, "tests", "e2e", "seed003_script.py")


def files_stage(tmp, extra=""):
    return ("stages:\n  legacy:\n    mode: spawn\n"
            "    command: [%s, %s, --input, '{input}', --output, '{output}']\n"
            "    spawn: {status_key: status}\n    replicas: 2\n    retries: 1\n%s"
            "pipelines:\n  p: [legacy]\n" % (PYTHON, SEED000, extra))


def test_seed000_files_convention(baton, tmp_path):
    b = baton(files_stage(tmp_path))
    r = b.post("p", json.dumps({"action": "ok", "page": 3}),
               headers={"Content-Type": "application/json"})
    assert r.status == 200, r
    doc = r.json()
    assert doc["status"] == "ok" and doc["echo"]["page"] == 3
    assert doc["input_name"] == "input.json"
    assert r.headers["content-type"] == "application/json"
    # Each request is a new process.
    pids = {b.post("p", '{"action": "ok"}').json()["pid"] for _ in range(3)}
    assert len(pids) == 3
    assert "processing input.json" in b.log()  # stdout went to the log
    assert b.stop() == 0


def test_status_error_becomes_rejected_with_the_script_text(baton, tmp_path):
    b = baton(files_stage(tmp_path))
    r = b.post("p", '{"action": "fail"}')
    assert r.status == 422, r
    assert r.json()["error"] == "no diagram found on this page"
    assert b.status()["stages"]["legacy"]["retried"] == 0
    assert b.stop() == 0


def test_status_error_with_a_nul_in_its_text_is_still_rejected(baton, tmp_path):
    # "\u0000" is valid JSON: the answer is the script's error, not bytes.
    b = baton(files_stage(tmp_path))
    r = b.post("p", json.dumps({"action": "fail", "error": "bad\u0000input"}))
    assert r.status == 422 and r.json()["code"] == "rejected", r
    assert r.json()["error"].startswith("bad")
    assert b.stop() == 0


def test_nonzero_exit_is_retried_then_fails_with_stderr(baton, tmp_path):
    b = baton(files_stage(tmp_path))
    r = b.post("p", '{"action": "crash"}')
    assert r.status == 502 and r.json()["code"] == "worker_crashed", r
    err = r.json()["error"]
    assert "exited with status 3" in err and "CUDA out of memory" in err
    assert "2 times" in err
    assert b.stop() == 0


def test_missing_output_file_is_an_error(baton, tmp_path):
    b = baton(files_stage(tmp_path))
    r = b.post("p", '{"action": "noout"}')
    assert r.status == 500 and "no output file" in r.json()["error"], r
    assert b.stop() == 0


def test_a_fifo_left_as_the_output_does_not_block_baton(baton, tmp_path):
    # Opening a FIFO for reading waits for a writer: that would freeze the
    # daemon, health checks included.
    b = baton(files_stage(tmp_path))
    r = b.post("p", '{"action": "fifo"}', timeout=30)
    assert r.status == 500 and "not a regular file" in r.json()["error"], r
    assert b.get("/v2/health/live").status == 200
    assert b.post("p", '{"action": "ok"}').status == 200
    assert b.stop() == 0


def test_timeout_kills_the_process_group(baton, tmp_path):
    b = baton(files_stage(tmp_path, "    timeout_ms: 3000\n"))
    pidfile = tmp_path / "hung.pid"
    replies = []
    t = threading.Thread(target=lambda: replies.append(
        b.post("p", json.dumps({"action": "hang", "pidfile": str(pidfile)}))))
    t.start()
    wait_for(lambda: pidfile.exists() and pidfile.read_text(), 10, what="the script's pid")
    pid = int(pidfile.read_text())
    # The group must exist while the script runs: "no live process in group
    # pid" proves nothing if the script never led a group of its own.
    assert os.getpgid(pid) == pid and group_alive(pid)
    t.join(60 * SLOW)
    assert replies[0].status == 504, replies
    # Killed at its timeout by baton's own count (Server-Timing), not later.
    ran = float(re.search(r"legacy-run;dur=([\d.]+)", replies[0].headers["server-timing"]).group(1))
    assert 3000 - 2 <= ran < 3000 + 1500 * SLOW, replies[0].headers
    wait_for(lambda: not group_alive(pid), 10, what="the hung script's group to be gone")
    assert not pid_alive(pid)
    wait_for(lambda: b.status()["stages"]["legacy"]["running"] == 0, 10)
    assert b.post("p", '{"action": "ok"}').status == 200
    assert b.stop() == 0


def test_temporary_files_are_always_removed(baton, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    cfg = files_stage(tmp_path, "    timeout_ms: 800\n    env: {TMPDIR: %s}\n" % tmpdir)
    b = baton(cfg)
    # The stage's TMPDIR is where they go (not baton's own).
    r = b.post("p", json.dumps({"action": "ok"}))
    assert r.json()["input_path"].startswith(str(tmpdir) + "/baton-legacy-"), r.json()
    for action in ("ok", "fail", "crash", "noout", "hang"):
        b.post("p", json.dumps({"action": action}))
    wait_for(lambda: os.listdir(tmpdir) == [], 10, what="no temporary files left")
    assert b.stop() == 0


def test_a_relative_tmpdir_is_relative_to_the_workdir(baton, tmp_path):
    (tmp_path / "work" / "scratch").mkdir(parents=True)
    b = baton(files_stage(tmp_path, "    workdir: work\n    env: {TMPDIR: scratch}\n"))
    r = b.post("p", json.dumps({"action": "ok"}))
    assert r.status == 200, r
    assert r.json()["input_path"].startswith(str(tmp_path / "work" / "scratch") + "/"), r.json()
    assert b.stop() == 0


def test_leftover_grandchild_is_killed(baton, tmp_path):
    b = baton(files_stage(tmp_path))
    r = b.post("p", '{"action": "leak"}')
    assert r.status == 200
    doc = r.json()
    # The script led its own group, and the sleep it left behind is the
    # process that must be gone (not merely "no process in group pid").
    assert doc["pgid"] == doc["pid"], doc
    wait_for(lambda: not pid_alive(doc["grandchild"]), 5, what="the script's grandchild to be gone")
    assert not group_alive(doc["pid"])
    assert b.stop() == 0


def test_output_left_as_a_symlink_is_not_followed(baton, tmp_path):
    # The script's output is read from the request's own directory, and a
    # link there could point anywhere baton may read.
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the client")
    b = baton(files_stage(tmp_path).replace("retries: 1", "retries: 0"))
    r = b.post("p", json.dumps({"action": "link", "target": str(secret)}))
    assert r.status == 500 and r.json()["code"] == "worker_error", r
    assert b"not for the client" not in r.body
    assert b.post("p", '{"action": "ok"}').status == 200
    assert b.stop() == 0


def test_seed003_stdin_stdout_convention(baton):
    b = baton("stages:\n  gpu:\n    mode: spawn\n    command: [%s, %s]\n"
              "pipelines:\n  p: [gpu]\n" % (PYTHON, SEED003))
    r = b.post("p", json.dumps({"values": [1, 2, 3]}))
    assert r.status == 200 and r.json() == {"doubled": [2, 4, 6]}, r
    assert "got 1 keys" in b.log()
    r = b.post("p", json.dumps({"action": "crash"}))
    assert r.status == 502 and "exited with status 1" in r.json()["error"]
    assert b.stop() == 0


def test_spawn_with_batch_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stages:\n  s:\n    mode: spawn\n    command: [%s, %s]\n"
                    "    batch: {max_size: 4}\npipelines:\n  p: [s]\n" % (PYTHON, SEED003))
    r = subprocess.run([BATON, "check", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "spawn mode" in r.stderr and ":5:" in r.stderr


def test_baton_run_over_files_in_spawn_mode(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(files_stage(tmp_path).replace("retries: 1", "retries: 0"))
    (tmp_path / "in").mkdir()
    for i, action in enumerate(["ok", "ok", "fail", "ok"]):
        (tmp_path / "in" / ("page%d.json" % i)).write_text(json.dumps({"action": action}))
    r = subprocess.run([BATON, "run", str(cfg), "--pipeline", "p", "--input",
                        str(tmp_path / "in"), "--output", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120 * SLOW)
    assert r.returncode == 1
    outs = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "out" / "*.json")))
    assert outs == ["page0.json.json", "page1.json.json", "page3.json.json"]
    assert json.load(open(tmp_path / "out" / "page0.json.json"))["input_name"] == "input.json"
    failed = [json.loads(l) for l in open(tmp_path / "out" / "_failed.jsonl")]
    assert [(f["path"], f["code"]) for f in failed] == [("page2.json", "rejected")]


def test_answer_over_max_payload_bytes_fails_instead_of_being_cut(baton, tmp_path):
    # stdin/stdout: a 5000-byte chunk between two small ones must not leave
    # "AAA...CCC" looking like a success.
    b = baton("max_payload_bytes: 1024\nstages:\n  s:\n    mode: spawn\n"
              "    command: [%s, %s]\npipelines:\n  p: [s]\n" % (PYTHON, SEED003))
    r = b.post("p", json.dumps({"action": "chunks"}))
    assert r.status == 500 and "max_payload_bytes" in r.json()["error"], r
    assert b.post("p", json.dumps({"values": [1]})).json() == {"doubled": [2]}
    assert b.stop() == 0
    # Files: an output file over the limit says so, not "no output file".
    b = baton("max_payload_bytes: 1024\n" + files_stage(tmp_path))
    r = b.post("p", json.dumps({"action": "big", "bytes": 4096}))
    assert r.status == 500 and "max_payload_bytes" in r.json()["error"], r
    assert b.stop() == 0


def test_script_that_ignores_its_stdin_does_not_kill_baton_run(tmp_path):
    # /bin/true exits without reading a 2 MB stdin: baton's write gets EPIPE,
    # which must be that request's failure, not a SIGPIPE ending baton (141).
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stages:\n  s:\n    mode: spawn\n    command: [/bin/true]\n"
                   "    retries: 0\npipelines:\n  p: [s]\n")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "big.bin").write_bytes(b"x" * (2 << 20))
    r = subprocess.run([BATON, "run", str(cfg), "--pipeline", "p", "--input",
                        str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                        "--no-progress"], capture_output=True, text=True, timeout=120 * SLOW)
    assert r.returncode in (0, 1), (r.returncode, r.stderr)
    assert "succeeded" in r.stdout
