"""`baton run`: files through a pipeline without HTTP — failures recorded,
atomic outputs, resume after kill -9, Ctrl-C finishing what is in flight,
and outputs that cannot escape the output directory."""
import json
import os
import re
import signal
import subprocess
import time

from conftest import BATON, SLOW, Gate, fake_stage, pid_alive, wait_for


def write_config(tmp_path, **stage):
    path = tmp_path / "run.yaml"
    path.write_text("stages:\n" + fake_stage("w", **stage) + "pipelines:\n  p: [w]\n")
    return str(path)


def make_inputs(root, files):
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)


def run(cfg, inputs, out, *extra, timeout=120):
    return subprocess.run([BATON, "run", cfg, "--pipeline", "p", "--input", *inputs,
                           "--output", str(out), *extra],
                          capture_output=True, text=True, timeout=timeout * SLOW)


def outputs(out):
    found = {}
    for dirpath, _, names in os.walk(out):
        for n in names:
            # _baton.log, _failed.jsonl; and temporary files, which come and go.
            if n.startswith("_") or n.startswith("."):
                continue
            p = os.path.join(dirpath, n)
            try:
                found[os.path.relpath(p, out)] = open(p).read()
            except FileNotFoundError:
                pass
    return found


def test_failing_files_are_recorded_and_the_others_written(tmp_path):
    cfg = write_config(tmp_path, retries="0")
    make_inputs(tmp_path / "in", {"a.txt": "alpha", "b.txt": "reject:bad page",
                                  "sub/c.txt": "gamma", "sub/d.txt": "exit:3",
                                  ".hidden": "not an input"})
    r = run(cfg, [str(tmp_path / "in")], tmp_path / "out")
    assert r.returncode == 1, r.stderr
    assert outputs(tmp_path / "out") == {"a.txt.out": "alpha", "sub/c.txt.out": "gamma"}
    failed = [json.loads(line) for line in open(tmp_path / "out" / "_failed.jsonl")]
    assert sorted(f["path"] for f in failed) == ["b.txt", "sub/d.txt"]
    by_path = {f["path"]: f for f in failed}
    assert by_path["b.txt"]["code"] == "rejected" and by_path["b.txt"]["error"] == "bad page"
    assert by_path["sub/d.txt"]["code"] == "worker_crashed"
    assert by_path["sub/d.txt"]["attempts"] == 1 and by_path["sub/d.txt"]["stage"] == "w"
    assert "succeeded 2   failed 2   skipped 0" in r.stdout
    assert "p50 run" in r.stdout
    # The log went to the output directory, not the terminal.
    assert "replica ready" in open(tmp_path / "out" / "_baton.log").read()
    assert "replica ready" not in r.stderr


def test_everything_succeeding_exits_0_and_rerun_skips(tmp_path):
    cfg = write_config(tmp_path)
    make_inputs(tmp_path / "in", {"%02d.txt" % i: "doc %d" % i for i in range(12)})
    r = run(cfg, [str(tmp_path / "in")], tmp_path / "out", "--jobs", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(outputs(tmp_path / "out")) == 12
    r = run(cfg, [str(tmp_path / "in")], tmp_path / "out")
    assert r.returncode == 0 and "succeeded 0   failed 0   skipped 12" in r.stdout
    r = run(cfg, [str(tmp_path / "in")], tmp_path / "out", "--force")
    assert r.returncode == 0 and "succeeded 12" in r.stdout


def test_output_extension_comes_from_meta_ext(tmp_path):
    cfg = write_config(tmp_path)
    make_inputs(tmp_path / "in", {"page.png": 'setmeta:{"ext": ".json"}'})
    r = run(cfg, [str(tmp_path / "in" / "page.png")], tmp_path / "out")
    assert r.returncode == 0, r.stdout + r.stderr
    assert outputs(tmp_path / "out") == {"page.png.json": "meta"}


def test_path_escaping_ext_is_refused(tmp_path):
    cfg = write_config(tmp_path)
    make_inputs(tmp_path / "in", {"x.txt": 'setmeta:{"ext": "/../../escaped"}',
                                  "y.txt": 'setmeta:{"ext": ".a.b"}', "z.txt": "fine"})
    r = run(cfg, [str(tmp_path / "in")], tmp_path / "out")
    assert r.returncode == 1
    assert outputs(tmp_path / "out") == {"z.txt.out": "fine"}
    failed = [json.loads(line) for line in open(tmp_path / "out" / "_failed.jsonl")]
    assert sorted(f["path"] for f in failed) == ["x.txt", "y.txt"]
    assert all(f["code"] == "invalid_output" for f in failed)
    assert not list(tmp_path.glob("escaped*")) and not list(tmp_path.glob("**/*escaped*"))


def test_kill_9_then_rerun_completes_without_redoing_finished_items(tmp_path):
    record = tmp_path / "processed.txt"
    cfg = write_config(tmp_path, env={"FAKE_RECORD_FILE": str(record)}, replicas=2)
    files = {"doc%02d.txt" % i: "slow:150" for i in range(40)}
    make_inputs(tmp_path / "in", files)
    out = tmp_path / "out"
    proc = subprocess.Popen([BATON, "run", cfg, "--pipeline", "p", "--input",
                             str(tmp_path / "in"), "--output", str(out), "--jobs", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(outputs(out)) >= 6, 30, what="some outputs")
    proc.kill()
    proc.wait(10)
    done_before = set(outputs(out))
    assert 6 <= len(done_before) < 40
    first_run = record.read_text().split()
    record.write_text("")
    r = run(cfg, [str(tmp_path / "in")], out)
    assert r.returncode == 0, r.stdout + r.stderr
    final = outputs(out)
    assert set(final) == {n + ".out" for n in files}
    assert all(v == "slow:150" for v in final.values())
    redone = {p + ".out" for p in record.read_text().split()} & done_before
    assert redone == set(), redone
    assert "skipped %d" % len(done_before) in r.stdout
    # No temporary file survives the two runs.
    assert [n for n in os.listdir(out) if ".baton-tmp." in n] == []
    assert len(first_run) >= len(done_before)


def test_sigint_finishes_in_flight_items_then_stops(tmp_path):
    # Every item waits at a gate, so nothing finishes (and nothing more is
    # fed) until the test has interrupted the run, however slow the machine.
    busy = tmp_path / "busy"
    busy.mkdir()
    cfg = write_config(tmp_path, replicas=2, env={"FAKE_CONCURRENCY_DIR": str(busy)})
    gate = Gate(tmp_path)
    make_inputs(tmp_path / "in", {"f%02d.txt" % i: gate.payload for i in range(10)})
    out = tmp_path / "out"
    proc = subprocess.Popen([BATON, "run", cfg, "--pipeline", "p", "--input",
                             str(tmp_path / "in"), "--output", str(out), "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def log():
        return (out / "_baton.log").read_text() if (out / "_baton.log").exists() else ""

    with gate:
        # The run feeds both slots at once, so one item at a worker means two sent.
        wait_for(lambda: any(n.startswith("active-") for n in os.listdir(busy)), 20,
                 what="an item in a worker's hands")
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: "shutting down" in log(), 10, what="the run to see the signal")
    stdout, _ = proc.communicate(timeout=30 * SLOW)
    assert proc.returncode == 1
    done = outputs(out)
    assert len(done) == 2, done  # the two in flight finished and were written
    assert "interrupted" in stdout and "succeeded 2" in stdout


def test_bad_arguments_exit_2(tmp_path):
    cfg = write_config(tmp_path)
    assert run(cfg, [str(tmp_path / "missing")], tmp_path / "out").returncode == 2
    r = subprocess.run([BATON, "run", cfg, "--pipeline", "nope", "--input", cfg,
                        "--output", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "nope" in r.stderr
    r = subprocess.run([BATON, "run", cfg, "--input", cfg], capture_output=True, timeout=30)
    assert r.returncode == 2
    for jobs in ("0", "-1", "7abc", "", "abc", "99999999999"):
        r = run(cfg, [cfg], tmp_path / "out", "--jobs", jobs)
        assert r.returncode == 2 and "usage" in r.stderr.lower(), (jobs, r.stderr)


def test_workers_are_gone_after_the_run(tmp_path):
    cfg = write_config(tmp_path, replicas=2, env={"FAKE_RECORD_FILE": str(tmp_path / "rec")})
    make_inputs(tmp_path / "in", {"a.txt": "pid", "b.txt": "pid", "c.txt": "pid"})
    r = run(cfg, [str(tmp_path / "in")], tmp_path / "out")
    assert r.returncode == 0
    pids = {int(v) for v in outputs(tmp_path / "out").values()}
    assert pids and not any(pid_alive(p) for p in pids)


def test_bench_measures_a_pipeline_and_writes_json_and_csv(tmp_path):
    cfg = write_config(tmp_path, replicas=2)
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.txt").write_text("reject:not this one")
    out_json, out_csv = tmp_path / "bench.json", tmp_path / "bench.csv"
    r = subprocess.run([BATON, "bench", cfg, "--pipeline", "p", "--input",
                        str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--concurrency", "4",
                        "--requests", "200", "--json", str(out_json), "--csv", str(out_csv)],
                       capture_output=True, text=True, timeout=120 * SLOW)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "requests 200   succeeded 100   failed 100" in r.stdout
    assert "rejected: 100" in r.stdout and "end to end" in r.stdout
    doc = json.load(open(out_json))
    assert doc["requests"] == 200 and doc["succeeded"] == 100
    assert doc["failures"] == {"rejected": 100}
    assert doc["requests_per_s"] > 0 and doc["p50_ms"] > 0
    assert [s["stage"] for s in doc["stages"]] == ["w"]
    lines = open(out_csv).read().splitlines()
    assert lines[0].startswith("pipeline,concurrency,") and lines[1].startswith("p,4,200,100,100,")
    # A second run appends one row under the same header.
    subprocess.run([BATON, "bench", cfg, "--pipeline", "p", "--input", str(tmp_path / "a.txt"),
                    "--requests", "10", "--csv", str(out_csv)], capture_output=True, timeout=120 * SLOW)
    assert len(open(out_csv).read().splitlines()) == 3
    r = subprocess.run([BATON, "bench", cfg, "--pipeline", "p"], capture_output=True, timeout=30)
    assert r.returncode == 2


def test_output_path_is_the_inputs_own_not_the_workers_meta_path(tmp_path):
    cfg = write_config(tmp_path)
    make_inputs(tmp_path / "in", {"sub/x.txt": 'setmeta:{"path": "../../escaped"}',
                                  "y.txt": 'setmeta:{"path": 7}'})
    # Deep enough that "../../escaped" would still land inside tmp_path.
    out = tmp_path / "a" / "b" / "out"
    r = run(cfg, [str(tmp_path / "in")], out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert outputs(out) == {"sub/x.txt.out": "meta", "y.txt.out": "meta"}
    assert not list(tmp_path.glob("**/*escaped*")) and not list(tmp_path.glob("**/(null)*"))


def test_symlink_cycle_is_walked_once(tmp_path):
    cfg = write_config(tmp_path)
    make_inputs(tmp_path / "in", {"a.txt": "alpha", "sub/b.txt": "beta"})
    os.symlink(".", tmp_path / "in" / "loop")  # in/loop/loop/... is in/ again
    os.symlink("..", tmp_path / "in" / "sub" / "up")  # and in/sub/up is in/
    os.symlink("a.txt", tmp_path / "in" / "link.txt")  # a symlinked file stays an input
    r = run(cfg, [str(tmp_path / "in")], tmp_path / "out")
    assert r.returncode == 0, r.stdout + r.stderr
    assert outputs(tmp_path / "out") == {"a.txt.out": "alpha", "link.txt.out": "alpha",
                                         "sub/b.txt.out": "beta"}
    assert "3 inputs" in r.stdout


def test_inputs_with_one_relative_path_fail_after_the_first(tmp_path):
    cfg = write_config(tmp_path)
    make_inputs(tmp_path, {"a/x.txt": "from a", "b/x.txt": "from b",
                           "r1/sub/y.txt": "from r1", "r2/sub/y.txt": "from r2",
                           "r2/z.txt": "only r2"})
    # Two files given directly, then two roots holding the same relative file.
    r = run(cfg, [str(tmp_path / "a" / "x.txt"), str(tmp_path / "b" / "x.txt"),
                  str(tmp_path / "r1"), str(tmp_path / "r2")], tmp_path / "out")
    assert r.returncode == 1, r.stdout + r.stderr
    assert outputs(tmp_path / "out") == {"x.txt.out": "from a", "sub/y.txt.out": "from r1",
                                         "z.txt.out": "only r2"}
    failed = [json.loads(line) for line in open(tmp_path / "out" / "_failed.jsonl")]
    assert sorted(f["path"] for f in failed) == ["sub/y.txt", "x.txt"]
    by_path = {f["path"]: f for f in failed}
    assert all(f["code"] == "duplicate_output" for f in failed)
    assert str(tmp_path / "b" / "x.txt") in by_path["x.txt"]["error"]
    assert str(tmp_path / "a" / "x.txt") in by_path["x.txt"]["error"]
    assert str(tmp_path / "r1" / "sub" / "y.txt") in by_path["sub/y.txt"]["error"]
    assert "succeeded 3   failed 2" in r.stdout
    # A re-run skips what was written but still reports the collisions.
    r = run(cfg, [str(tmp_path / "a" / "x.txt"), str(tmp_path / "b" / "x.txt")],
            tmp_path / "out")
    assert r.returncode == 1 and "succeeded 0   failed 1   skipped 1" in r.stdout
    assert outputs(tmp_path / "out")["x.txt.out"] == "from a"


def gpu_config(tmp_path, top, hog=False, start_timeout_ms=None):
    """Stage w needs half a GPU; with hog, stage h (another pipeline) takes a whole one first."""
    stages = ""
    if hog:
        stages += fake_stage("h", resources="{gpu: 1.0}")
    extra = {"resources": "{gpu: 0.5}"}
    if start_timeout_ms:
        extra["start_timeout_ms"] = str(start_timeout_ms)
    stages += fake_stage("w", **extra)
    path = tmp_path / "gpu.yaml"
    path.write_text(top + "stages:\n" + stages + "pipelines:\n  p: [w]\n"
                    + ("  q: [h]\n" if hog else ""))
    return str(path)


def test_stage_that_no_gpu_could_hold_fails_the_run_at_once(tmp_path):
    cfg = gpu_config(tmp_path, "gpus: none\n")
    make_inputs(tmp_path / "in", {"a.txt": "alpha", "b.txt": "beta"})
    # The default start_timeout_ms is 2 minutes: finishing well before proves it failed fast.
    r = run(cfg, [str(tmp_path / "in")], tmp_path / "out", timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "stage 'w' cannot be placed: no GPU" in r.stderr
    assert outputs(tmp_path / "out") == {}
    failed = [json.loads(line) for line in open(tmp_path / "out" / "_failed.jsonl")]
    assert sorted(f["path"] for f in failed) == ["a.txt", "b.txt"]
    assert all(f["code"] == "stage_failed" and f["stage"] == "w" and
               "cannot be placed" in f["error"] for f in failed)
    assert "succeeded 0   failed 2" in r.stdout
    # baton check says so before any run, where the stage is declared.
    r = subprocess.run([BATON, "check", cfg], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "gpu.yaml:3:3: warning: stage 'w' cannot be placed on any GPU" in r.stderr, r.stderr
    assert "gpus: none" in r.stderr


def test_stage_left_pending_past_start_timeout_fails_the_run(tmp_path):
    cfg = gpu_config(tmp_path, "gpus: [{id: 0, memory_mb: 1000}]\n", hog=True,
                     start_timeout_ms=1000)
    make_inputs(tmp_path / "in", {"a.txt": "alpha"})
    r = run(cfg, [str(tmp_path / "in")], tmp_path / "out", timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "stage 'w' has no replica placed after start_timeout_ms 1000" in r.stderr
    failed = [json.loads(line) for line in open(tmp_path / "out" / "_failed.jsonl")]
    assert [(f["path"], f["code"]) for f in failed] == [("a.txt", "stage_failed")]
    assert "no GPU fits gpu 0.5" in failed[0]["error"]
    # Each stage fits an idle GPU, so check has nothing to say; a bigger one does.
    r = subprocess.run([BATON, "check", cfg], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    big = tmp_path / "big.yaml"
    big.write_text(open(cfg).read().replace("{gpu: 0.5}", "{gpu: 0.5, gpu_memory_mb: 2000}"))
    r = subprocess.run([BATON, "check", str(big)], capture_output=True, text=True, timeout=30)
    assert "warning: stage 'w' cannot be placed on any GPU (no GPU fits" in r.stderr, r.stderr
    assert "gpu0 has 1 and 1000 MB free" in r.stderr


def test_progress_line_and_summary_on_a_non_terminal(tmp_path):
    cfg = write_config(tmp_path, retries="0")
    make_inputs(tmp_path / "in", {"a.txt": "alpha", "b.txt": "beta", "c.txt": "reject:no"})
    out = tmp_path / "out"
    for flags in ([], ["--no-progress"]):  # stderr is a pipe: plain lines either way
        r = run(cfg, [str(tmp_path / "in")], out, "--force", *flags)
        assert r.returncode == 1, r.stdout + r.stderr
        lines = r.stderr.splitlines()
        assert lines and re.fullmatch(
            r"progress: 3/3 done, 2 ok, 1 failed, 0 skipped, [0-9.]+/s, ETA \d+:\d\d",
            lines[-1]), r.stderr
        assert "\033" not in r.stderr and "#" not in r.stderr
        summary = r.stdout.splitlines()
        assert summary[0] == "baton run: pipeline 'p', 3 inputs, output in %s" % out
        assert re.match(r"  succeeded 2   failed 1   skipped 0   wall [0-9.]+s   [0-9.]+ files/s$",
                        summary[1]), r.stdout
        assert "  failures: %s/_failed.jsonl" % out in summary
        assert summary[-1] == "  log: %s/_baton.log" % out
    # --progress draws the bar even on a pipe, ending with the final counts
    # (text mode reads its carriage returns as newlines).
    r = run(cfg, [str(tmp_path / "in")], out, "--force", "--progress")
    assert r.returncode == 1
    assert "\033[K[########################] 3/3  ok 2  failed 1  skipped 0" in r.stderr
    assert r.stderr.endswith("\n") and "progress:" not in r.stderr


def test_jobs_caps_the_requests_in_flight(tmp_path):
    counts = tmp_path / "conc"
    counts.mkdir()
    cfg = write_config(tmp_path, replicas=4, env={"FAKE_CONCURRENCY_DIR": str(counts)})
    make_inputs(tmp_path / "in", {"f%02d.txt" % i: "slow:300" for i in range(24)})

    def peak(*flags):
        (counts / "counts").write_text("")
        r = run(cfg, [str(tmp_path / "in")], tmp_path / "out", "--force", *flags)
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(outputs(tmp_path / "out")) == 24
        seen = [int(n) for n in (counts / "counts").read_text().split()]
        assert len(seen) == 24
        return max(seen)

    # Without a cap the four replicas work at once (the default allows 8 in flight)...
    uncapped = peak()
    assert uncapped > 2, uncapped
    # ...with --jobs 2 never more than two requests are in a worker's hands.
    capped = peak("--jobs", "2")
    assert capped <= 2, capped


def test_file_over_max_request_bytes_fails_like_an_http_body_would(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("max_request_bytes: 1024\nstages:\n" + fake_stage("w") +
                    "pipelines:\n  p: [w]\n")
    make_inputs(tmp_path / "in", {"small.txt": "fits", "big.txt": "x" * 4096})
    r = run(str(path), [str(tmp_path / "in")], tmp_path / "out")
    assert r.returncode == 1, r.stderr
    assert outputs(tmp_path / "out") == {"small.txt.out": "fits"}
    failed = [json.loads(line) for line in open(tmp_path / "out" / "_failed.jsonl")]
    assert [(f["path"], f["code"]) for f in failed] == [("big.txt", "too_large")]
    assert "4096 bytes" in failed[0]["error"]


def test_inputs_that_cannot_be_read_fail_by_name_and_never_block(tmp_path):
    # Only regular files are read. A FIFO would block the run in open() and
    # /dev/zero would never end; a dangling link or a directory too deep to
    # walk was skipped without a word. Each is now a failure with its reason.
    cfg = write_config(tmp_path)
    make_inputs(tmp_path / "in", {"a.txt": "fine"})
    os.mkfifo(tmp_path / "in" / "pipe")
    os.symlink(tmp_path / "nowhere", tmp_path / "in" / "dangling")
    # A directory chain longer than PATH_MAX, built one level at a time.
    fd = os.open(tmp_path / "in", os.O_RDONLY)
    for _ in range(400):
        os.mkdir("d" * 12, dir_fd=fd)
        nfd = os.open("d" * 12, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(os.open("deep.txt", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    os.close(fd)
    out = tmp_path / "out"
    r = run(cfg, [str(tmp_path / "in"), "/dev/zero"], out, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert outputs(out) == {"a.txt.out": "fine"}
    failed = {f["path"]: f for f in map(json.loads, open(out / "_failed.jsonl"))}
    assert failed["pipe"]["code"] == "unreadable" and "FIFO" in failed["pipe"]["error"]
    assert failed["zero"]["code"] == "unreadable" and "device" in failed["zero"]["error"]
    assert failed["dangling"]["code"] == "unreadable"
    deep = [p for p in failed if p.startswith("dddddddddddd/")]
    assert len(deep) == 1 and "too long" in failed[deep[0]]["error"], failed.keys()
    assert len(failed) == 4, failed.keys()



def test_force_removes_the_old_output_of_an_input_that_now_fails(tmp_path):
    # Failed inputs have no output, so the next run tries them again: an old
    # output left beside the failure would make that run skip it.
    cfg = write_config(tmp_path, retries=0)
    make_inputs(tmp_path / "in", {"x.txt": "v1", "y.txt": "stays"})
    out = tmp_path / "out"
    assert run(cfg, [str(tmp_path / "in")], out).returncode == 0
    (tmp_path / "in" / "x.txt").write_text("reject:not any more")
    r = run(cfg, [str(tmp_path / "in")], out, "--force")
    assert r.returncode == 1, r.stdout + r.stderr
    assert outputs(out) == {"y.txt.out": "stays"}
    r = run(cfg, [str(tmp_path / "in")], out)
    assert r.returncode == 1 and "skipped 1" in r.stdout, r.stdout
    failed = [json.loads(line) for line in open(out / "_failed.jsonl")]
    assert [(f["path"], f["code"]) for f in failed] == [("x.txt", "rejected")]


def test_a_full_later_stage_holds_inputs_back_instead_of_failing_them(tmp_path):
    # --jobs above what a later stage can queue: the pipeline answers
    # overloaded, and a batch runner waits rather than failing the input.
    cfg = tmp_path / "run.yaml"
    cfg.write_text("stages:\n" + fake_stage("a", replicas=2, max_ongoing=4) +
                   fake_stage("b", queue_max=1, max_ongoing=1) +
                   "pipelines:\n  p: [a, b]\n")
    make_inputs(tmp_path / "in", {"f%02d.txt" % i: "slow:20" for i in range(30)})
    out = tmp_path / "out"
    r = run(str(cfg), [str(tmp_path / "in")], out, "--jobs", "16")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(outputs(out)) == 30
    assert "succeeded 30" in r.stdout and "failed 0" in r.stdout, r.stdout
    assert "the pipeline is full: inputs wait" in (out / "_baton.log").read_text()


def test_long_names_get_outputs_with_the_umask_mode(tmp_path):
    # A 240-byte name has a legal output name (244 bytes); the temporary
    # file on the way there must fit too. Outputs are 0666 less the umask.
    cfg = write_config(tmp_path)
    name = "n" * 236 + ".txt"
    make_inputs(tmp_path / "in", {name: "long"})
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        r = run(cfg, [str(tmp_path / "in")], out)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stdout + r.stderr
    assert outputs(out) == {name + ".out": "long"}
    assert os.stat(out / (name + ".out")).st_mode & 0o777 == 0o644


def test_inputs_named_like_the_runs_own_files_are_just_inputs(tmp_path):
    # "_failed" and "_baton" would have outputs _failed.jsonl / _baton.log
    # with a chosen ext: they are neither skipped as done nor allowed to
    # remove the run's own files when they fail under --force.
    cfg = write_config(tmp_path, retries=0)
    make_inputs(tmp_path / "in", {"_failed": "reject:no", "_baton": "reject:no", "ok": "fine"})
    out = tmp_path / "out"
    r = run(cfg, [str(tmp_path / "in")], out)
    assert r.returncode == 1 and "skipped 0" in r.stdout, r.stdout
    r = run(cfg, [str(tmp_path / "in")], out, "--force")
    assert r.returncode == 1 and "skipped 0" in r.stdout, r.stdout
    failed = sorted(json.loads(line)["path"] for line in open(out / "_failed.jsonl"))
    assert failed == ["_baton", "_failed"]
    assert "replica ready" in (out / "_baton.log").read_text()
