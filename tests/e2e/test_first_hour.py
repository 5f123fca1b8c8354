"""The first hour of a new user: every command has a real --help page, a
missing argument is named, config mistakes get a sentence (did you mean,
indentation) with FILE:LINE:COL, `baton run` filters inputs and says when
it is waiting for workers, and a stage that cannot serve says why."""
import os
import re
import signal
import shlex
import subprocess
import threading

import pytest

from conftest import BATON, FAKE, PYTHON, SDK_PY, SLOW, fake_stage, wait_for


def baton_cli(*args, timeout=30):
    return subprocess.run([BATON, *args], capture_output=True, text=True, timeout=timeout * SLOW)


def command_names():
    out = baton_cli("help")
    assert out.returncode == 0
    block = out.stdout.split("commands:\n", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in block.splitlines() if line.startswith("  ") and
            not line.startswith("      ")]


def test_every_command_answers_help_and_h_with_a_page():
    names = command_names()
    assert {"serve", "check", "run", "env", "bench", "status", "version", "help"} <= set(names)
    for name in names:
        for flag in ("--help", "-h"):
            out = baton_cli(name, flag)
            assert out.returncode == 0, (name, flag, out.stderr)
            assert out.stdout.startswith("usage: baton %s" % name), out.stdout
            assert "examples:\n  baton " in out.stdout, (name, out.stdout)
            usage = out.stdout.splitlines()[0]
            page = out.stdout.split("\n", 1)[1]
            # Every option of the usage line is explained on the page.
            for opt in re.findall(r"--[a-z][a-z-]*", usage):
                assert re.search(r"^  %s\b" % re.escape(opt), page, re.M), (name, opt)
        assert baton_cli("help", name).stdout == baton_cli(name, "--help").stdout
    # --help wins wherever it is, even after other arguments.
    out = baton_cli("run", "cfg.yaml", "--pipeline", "p", "--help")
    assert out.returncode == 0 and "--include GLOB" in out.stdout


@pytest.mark.parametrize("args,missing", [
    (["run", "x.yaml", "--input", "in", "--output", "out"], "--pipeline P"),
    (["run", "x.yaml", "--pipeline", "p", "--input", "in"], "--output DIR"),
    (["run", "x.yaml", "--pipeline", "p", "--output", "out"], "--input PATH..."),
    (["check"], "CONFIG"),
    (["serve"], "CONFIG"),
    (["env"], "setup or check"),
    (["env", "setup"], "CONFIG"),
    (["bench", "x.yaml", "--input", "f"], "--pipeline P"),
])
def test_a_missing_required_argument_is_named(args, missing):
    out = baton_cli(*args)
    assert out.returncode == 2
    assert out.stderr.splitlines()[0] == "baton %s: missing %s" % (args[0], missing), out.stderr


STAGE = f"""stages:
  w:
    command: [{PYTHON}, {FAKE}]
"""


@pytest.mark.parametrize("text,line,col,wanted", [
    (STAGE + "    replica: {initial: 1}\npipelines: {p: [w]}\n", 4, 5, "'replicas'"),
    (STAGE + "    timout_ms: 10\npipelines: {p: [w]}\n", 4, 5, "'timeout_ms'"),
    ("lisen: 127.0.0.1:1\n" + STAGE + "pipelines: {p: [w]}\n", 1, 1, "'listen'"),
    (STAGE + "    restart: {backof_ms: 1}\npipelines: {p: [w]}\n", 4, 15, "'backoff_ms'"),
])
def test_a_near_miss_key_gets_did_you_mean(tmp_path, text, line, col, wanted):
    path = tmp_path / "baton.yaml"
    path.write_text(text)
    out = baton_cli("check", str(path))
    assert out.returncode == 2
    first = out.stderr.splitlines()[0]
    assert first.startswith("%s:%d:%d: unknown key" % (path, line, col)), first
    assert "did you mean %s?" % wanted in first, first


def test_a_key_far_from_every_known_one_gets_no_guess(tmp_path):
    path = tmp_path / "baton.yaml"
    path.write_text(STAGE + "    frobnicate: 1\npipelines: {p: [w]}\n")
    out = baton_cli("check", str(path))
    assert out.returncode == 2 and "did you mean" not in out.stderr, out.stderr
    assert "unknown key 'frobnicate'" in out.stderr


@pytest.mark.parametrize("text,line,col,sentence,raw", [
    # A key indented one column deeper than its siblings.
    (STAGE + "     timeout_ms: 10\npipelines: {p: [w]}\n", 4, 6,
     "this line is indented differently", "did not find expected key"),
    # A key indented less than its siblings, but not back to the parent's level.
    (STAGE + "   timeout_ms: 10\npipelines: {p: [w]}\n", 4, 4,
     "this line is indented differently", "did not find expected key"),
    # A key indented under a key that already has a value.
    (STAGE + "    mode: persistent\n      timeout_ms: 10\npipelines: {p: [w]}\n", 5, 17,
     "this line is indented deeper", "mapping values are not allowed"),
])
def test_an_indentation_mistake_is_explained_with_file_line_col(tmp_path, text, line, col,
                                                               sentence, raw):
    path = tmp_path / "baton.yaml"
    path.write_text(text)
    out = baton_cli("check", str(path))
    assert out.returncode == 2
    first = out.stderr.splitlines()[0]
    prefix = "%s:%d:%d: " % (path, line, col)
    assert first.startswith(prefix), first
    message = first[len(prefix):]
    assert message.startswith(sentence), first
    assert "YAML: " + raw in message  # libyaml's own words are kept


def test_run_include_and_exclude_filter_the_files_of_a_directory(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("stages:\n" + fake_stage("w") + "pipelines:\n  p: [w]\n")
    for rel in ("page-1.png", "page-1.truth.json", "page-2.pdf", "page-2.truth.json",
                "old/page-0.png", "notes.txt"):
        p = tmp_path / "in" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rel)
    out = tmp_path / "out"
    r = baton_cli("run", str(cfg), "--pipeline", "p", "--input", str(tmp_path / "in"),
                  "--output", str(out), "--include", "*.png", "--include", "*.pdf",
                  "--exclude", "old/*", timeout=120)
    assert r.returncode == 0, r.stderr
    written = sorted(os.path.relpath(os.path.join(d, n), out) for d, _, ns in os.walk(out)
                     for n in ns if not n.startswith(("_", ".")))
    assert written == ["page-1.png.out", "page-2.pdf.out"]
    assert "succeeded 2 " in r.stdout, r.stdout


def test_run_says_it_is_starting_workers_until_they_are_ready(tmp_path):
    gate = tmp_path / "gate"
    # The worker starts only once the test has seen the message.
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""stages:
  w:
    command: [sh, -c, 'while [ ! -e {gate} ]; do sleep 0.05; done; exec {PYTHON} {FAKE}']
    env: {{PYTHONPATH: {SDK_PY}}}
pipelines:
  p: [w]
""")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    proc = subprocess.Popen([BATON, "run", str(cfg), "--pipeline", "p", "--input",
                             str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("starting workers (0/1 ready)" in line for line in seen), 30,
                 what="'starting workers' in %r" % seen)
    finally:
        gate.write_text("")
    assert proc.wait(timeout=60 * SLOW) == 0
    reader.join(10)
    assert not any("starting workers" in line for line in seen[-1:])


def test_a_stage_in_backoff_is_not_serving_and_says_why(baton, tmp_path):
    # The typo of the issue: the worker's file does not exist.
    cfg = f"""stages:
  upper:
    command: [{PYTHON}, uper.py]
    restart: {{backoff_ms: 60000, max_failures: 5}}
pipelines:
  p: [upper]
"""
    b = baton(cfg, wait_ready=False)
    wait_for(lambda: b.status()["stages"]["upper"]["state"] == "backoff", 30,
             what="the stage in backoff")
    st = b.status()["stages"]["upper"]
    assert st["serving"] is False
    assert st["reason"].startswith("exited with status 2: "), st
    assert "can't open file" in st["reason"] and "uper.py" in st["reason"], st
    out = baton_cli("status", "--url", "http://127.0.0.1:%d" % b.port)
    assert out.returncode == 0
    row = [line for line in out.stdout.splitlines() if line.startswith("upper ")][0]
    assert row.split()[1] == "backoff", out.stdout
    assert re.search(r"^\s+not serving: .*can't open file .*uper\.py", out.stdout, re.M), out.stdout
    # The worker's stderr line is in the log at warn.
    assert re.search(r"level=warn msg=\".*can't open file.*stream=stderr", b.log()), b.log_tail()


def test_the_missing_venv_hint_leads_to_a_config_that_runs(tmp_path):
    # A stage with a venv that does not exist and no setup: the hint says
    # what to add and what to run; doing exactly that makes the run work.
    cfg = tmp_path / "baton.yaml"
    stage = f"""stages:
  w:
    command: [python3, {FAKE}]
    venv: .venv-w
    env: {{PYTHONPATH: {SDK_PY}}}
"""
    cfg.write_text(stage + "pipelines:\n  p: [w]\n")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    run = ["run", str(cfg), "--pipeline", "p", "--input", str(tmp_path / "in"),
           "--output", str(tmp_path / "out")]
    out = baton_cli(*run)
    assert out.returncode == 2
    hint = re.search(r"\(add `(setup: \{\})` to the stage and run `(baton env setup [^`]+)`", out.stderr)
    assert hint, out.stderr
    # `baton env setup` without the key says the same, and fails.
    out = baton_cli("env", "setup", str(cfg))
    assert out.returncode == 1 and "add `setup: {}`" in out.stdout, out.stdout
    cfg.write_text(stage + "    " + hint.group(1) + "\npipelines:\n  p: [w]\n")
    out = baton_cli(*shlex.split(hint.group(2))[1:], timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / ".venv-w" / "bin" / "python").exists()
    out = baton_cli(*run, timeout=120)
    assert out.returncode == 0, out.stderr


def test_what_a_worker_said_while_loading_is_no_reason_for_a_later_crash(baton):
    cfg = f"""stages:
  w:
    command: [sh, -c, 'echo loading the model >&2; exec {PYTHON} {FAKE}']
    env: {{PYTHONPATH: {SDK_PY}}}
    restart: {{backoff_ms: 60000}}
pipelines:
  p: [w]
"""
    b = baton(cfg)
    os.kill(b.pids("w")[0], signal.SIGKILL)
    wait_for(lambda: b.status()["stages"]["w"]["state"] == "backoff", 30, what="backoff")
    reason = b.status()["stages"]["w"]["reason"]
    assert reason.startswith("killed by signal 9"), reason
    assert "loading the model" not in reason
