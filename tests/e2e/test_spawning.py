"""Starting processes (src/proc/process.c): what fails in the child between
vfork and exec is reported with its reason and backs off like any crash,
and restarts leave neither zombies nor descriptors behind, in baton or in
the workers, whose signals are all back to their defaults. The
256-replica start is test_many_replicas.py's."""
import os
import signal

from conftest import BUILD, config, wait_for

WORKER = os.path.join(BUILD, "tests", "c_batch_worker")


def stage_of(b):
    return b.status()["stages"]["w"]


def zombie_children(pid):
    """Children of pid that exited and were not reaped."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def descriptors(pid):
    return sorted(int(fd) for fd in os.listdir("/proc/%d/fd" % pid))


def signal_masks(pid):
    """The blocked and ignored signal sets of pid, as hex masks."""
    with open("/proc/%d/status" % pid) as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(fields[k], 16) for k in ("SigBlk", "SigIgn")}


def test_a_missing_program_is_reported_then_backs_off_and_recovers(baton, tmp_path):
    prog = tmp_path / "worker.sh"
    prog.write_text("#!/bin/sh\nexec %s\n" % WORKER)
    prog.chmod(0o755)
    stage = ("  w:\n    command: [%s]\n"
             "    restart: {backoff_ms: 100, backoff_max_ms: 400, max_failures: 4}\n" % prog)
    b = baton(config(stage, {"p": ["w"]}))
    first = b.pids("w")[0]
    prog.unlink()
    os.kill(first, signal.SIGKILL)
    # The kill is failure 1; the next starts fail at exec (2 and 3), the 4th fails the stage.
    wait_for(lambda: stage_of(b)["state"] == "failed", 30, what="the stage to fail")
    st = stage_of(b)
    why = "baton: cannot execute '%s': No such file or directory" % prog
    assert st["reason"] == "exited with status 127: " + why, st
    assert st["replicas"][0]["last_exit"] == "exited with status 127"
    log = b.log()
    assert log.count('reason="exited with status 127"') == 3, b.log_tail()
    # Backoff as for any crash: 100, 200, 400 ms, then failed.
    for ms in (100, 200, 400):
        assert "restart_in_ms=%d " % ms in log, b.log_tail()
    assert 'msg="replica failed" stage=w replica=1' in log
    # The child's line is in the log, tagged like any worker output.
    assert "stream=stderr" in log and why in log
    assert not zombie_children(b.proc.pid)

    # The program is back: a restart of the failed stage serves again.
    prog.write_text("#!/bin/sh\nexec %s\n" % WORKER)
    prog.chmod(0o755)
    assert b.request("POST", "/v1/stages/w/restart", b"").status in (200, 202)
    wait_for(lambda: stage_of(b)["state"] == "ok", 30, what="the stage to serve again")
    assert b.post("p", "back").status == 200
    assert b.stop() == 0


def test_many_restarts_leave_no_zombie_and_no_descriptor(baton):
    stage = ("  w:\n    command: [%s]\n"
             "    restart: {backoff_ms: 10, backoff_max_ms: 10, max_failures: 1000}\n" % WORKER)
    b = baton(config(stage, {"p": ["w"]}))
    pid = b.pids("w")[0]
    # A worker gets its stdio and its channel, nothing else of baton's, and
    # no signal blocked or ignored (baton ignores SIGPIPE; exec keeps that).
    assert descriptors(pid) == [0, 1, 2, 3]
    assert signal_masks(pid) == {"SigBlk": 0, "SigIgn": 0}
    before = len(descriptors(b.proc.pid))
    for i in range(40):
        os.kill(pid, signal.SIGKILL)
        pid = wait_for(lambda: [r["pid"] for r in b.replicas("w")
                                if r["state"] == "ready" and r["pid"] != pid], 30,
                       what="restart %d" % (i + 1))[0]
    assert descriptors(pid) == [0, 1, 2, 3]
    assert b.replicas("w")[0]["restarts"] == 40
    # The last death may still be on its way; then nothing is left of any.
    wait_for(lambda: not zombie_children(b.proc.pid), 10, what="no zombie children of baton")
    wait_for(lambda: len(descriptors(b.proc.pid)) <= before, 10,
             what="baton's descriptors back to %d (now %s)" % (before, descriptors(b.proc.pid)))
    assert b.post("p", "still serving").status == 200
    assert b.stop() == 0
