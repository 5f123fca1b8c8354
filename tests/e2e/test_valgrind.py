"""A whole serve lifecycle under valgrind's memcheck: start, 1,000 requests
with failures, a crash and restarts, SIGTERM.  No definitely lost bytes, no
invalid access.  (The ASan run covers the rest of the suite; valgrind
checks the normal build, without instrumentation.)"""
import os
import re
import shutil
import signal
import threading

import pytest

from conftest import SANITIZED, config, fake_stage

pytestmark = pytest.mark.skipif(SANITIZED or not shutil.which("valgrind"),
                                reason="valgrind runs on the normal build")


def test_serve_lifecycle_has_no_leaks_under_valgrind(baton, tmp_path, state_dir):
    vglog = tmp_path / "valgrind.log"
    wrapper = ["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite",
               "--show-leak-kinds=definite", "--error-exitcode=99", "--trace-children=no",
               "--log-file=%s" % vglog]
    cfg = config(fake_stage("a", replicas=2, retries=1, env={"FAKE_STATE_DIR": state_dir},
                            restart="{backoff_ms: 20, max_failures: 1000}") +
                 fake_stage("b", batch="{max_size: 4, window_ms: 5}",
                            env={"FAKE_STATE_DIR": state_dir}),
                 {"p": ["a", "b"]}, top="max_request_bytes: 100000\n")
    b = baton(cfg, wrapper=wrapper)
    payloads = (["ok %d" % i for i in range(900)] + ["reject:no"] * 50 + ["retry:t"] * 40 +
                ["crash-once:c%d" % i for i in range(10)])
    statuses = []
    lock = threading.Lock()

    def client(chunk):
        for p in chunk:
            s = b.post("p", p, timeout=120).status
            with lock:
                statuses.append(s)

    threads = [threading.Thread(target=client, args=(payloads[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert len(statuses) == 1000
    assert statuses.count(200) == 910 and statuses.count(422) == 50, sorted(set(statuses))
    # Also the other routes, and a client error.
    assert b.get("/metrics").status == 200 and b.get("/v1/status").status == 200
    assert b.post("p", b"x" * 200000).status == 413
    assert b.stop(signal.SIGTERM, timeout=120) == 0, open(vglog).read()[-3000:]
    report = open(vglog).read()
    assert "ERROR SUMMARY: 0 errors" in report, report[-3000:]
    m = re.search(r"definitely lost: ([\d,]+) bytes", report)
    assert m is None or m.group(1) == "0", report[-3000:]
