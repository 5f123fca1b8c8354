"""Bad configuration: exit 2 and a FILE:LINE:COL message naming the key,
from both `baton check` and `baton serve`; `baton check` prints the plan."""
import os
import subprocess

import pytest

from conftest import BATON, FAKE, PYTHON, SDK_PY

GOOD_STAGE = f"""stages:
  w:
    command: [{PYTHON}, {FAKE}]
    env: {{PYTHONPATH: {SDK_PY}}}
"""

BAD = [
    ("unknown_top_key", GOOD_STAGE + "pipelines: {p: [w]}\nlisten_port: 1\n", 6, 1, "listen_port"),
    ("unknown_stage_key", GOOD_STAGE + "    replica: 2\npipelines: {p: [w]}\n", 5, 5, "replica"),
    ("wrong_type", GOOD_STAGE + "    timeout_ms: soon\npipelines: {p: [w]}\n", 5, 17, "timeout_ms"),
    ("negative_retries", GOOD_STAGE + "    retries: -1\npipelines: {p: [w]}\n", 5, 14, "retries"),
    ("missing_command", "stages:\n  w:\n    replicas: 1\npipelines: {p: [w]}\n", 2, 3, "command"),
    ("unknown_stage_in_pipeline", GOOD_STAGE + "pipelines:\n  p: [w, ocr]\n", 6, 10, "ocr"),
    ("command_not_found", "stages:\n  w:\n    command: [no-such-binary-here]\npipelines: {p: [w]}\n",
     3, 14, "no-such-binary-here"),
    ("command_not_executable", "stages:\n  w:\n    command: [./data.txt]\npipelines: {p: [w]}\n",
     3, 14, "not an executable"),
    ("command_is_a_string", "stages:\n  w:\n    command: python3 worker.py\npipelines: {p: [w]}\n",
     3, 14, "list of strings"),
    ("missing_pipelines", GOOD_STAGE, 1, 1, "pipelines"),
    ("yaml_syntax", GOOD_STAGE + "pipelines: {p: [w]\n", 6, 1, "YAML"),
    ("bad_listen", "listen: localhost\n" + GOOD_STAGE + "pipelines: {p: [w]}\n", 1, 9, "listen"),
    ("duplicate_key", GOOD_STAGE + "    retries: 1\n    retries: 2\npipelines: {p: [w]}\n", 6, 5, "duplicate"),
    ("bad_workdir", GOOD_STAGE + "    workdir: nowhere\npipelines: {p: [w]}\n", 5, 14, "workdir"),
    ("bad_stage_name", GOOD_STAGE.replace("  w:", "  'bad name':") + "pipelines: {p: [w]}\n", 2, 3, "not valid"),
]


@pytest.mark.parametrize("name,text,line,col,needle", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("command", ["check", "serve"])
def test_bad_config_exits_2_naming_line_and_key(tmp_path, command, name, text, line, col, needle):
    (tmp_path / "data.txt").write_text("not a program")
    path = tmp_path / "baton.yaml"
    path.write_text(text)
    out = subprocess.run([BATON, command, str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, (out.stdout, out.stderr)
    first = out.stderr.strip().splitlines()[0]
    assert first.startswith("%s:%d:%d: " % (path, line, col)), first
    assert needle in first, first


def test_check_prints_the_resolved_plan(tmp_path):
    path = tmp_path / "baton.yaml"
    (tmp_path / "w").mkdir()
    path.write_text(f"""
stages:
  detect:
    command: [python3, worker.py, --flag]
    workdir: w
    venv: envs/detect
    env: {{OMP_NUM_THREADS: "1"}}
pipelines:
  documents: [detect]
""")
    out = subprocess.run([BATON, "check", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # No venv yet: the command resolves on PATH, and check warns.
    assert "does not exist yet" in out.stderr
    assert "argv:      /" in out.stdout and "worker.py --flag" in out.stdout
    assert "workdir:   %s/w" % tmp_path in out.stdout
    assert "VIRTUAL_ENV=%s/envs/detect" % tmp_path in out.stdout
    assert "OMP_NUM_THREADS=1" in out.stdout
    assert "pipeline documents: detect" in out.stdout
    # serve refuses to start a stage whose venv is missing.
    out = subprocess.run([BATON, "serve", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "venv" in out.stderr


def test_usage_errors_exit_2():
    for args in (["serve"], ["check"], ["nonsense"], ["serve", "a.yaml", "--listen", "nope"]):
        out = subprocess.run([BATON] + args, capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, args


USAGE_ERRORS = [
    (["serve", "a.yaml", "--bogus"], "baton serve: unknown option '--bogus'"),
    (["serve", "--listen"], "baton serve: option '--listen' needs a value"),
    (["check", "a.yaml", "b.yaml"], "baton check: unexpected argument 'b.yaml'"),
    (["run", "a.yaml", "--bogus"], "baton run: unknown option '--bogus'"),
    (["run", "a.yaml", "--jobs", "zero"], "baton run: --jobs must be an integer"),
    (["env", "setup", "a.yaml", "--stag", "s"], "baton env: unknown option '--stag'"),
    (["env", "bogus", "a.yaml"], "baton env: unknown subcommand 'bogus'"),
    (["env", "check", "a.yaml", "--force-recreate"], "baton env: --force-recreate is only for 'baton env setup'"),
    (["bench", "a.yaml", "--concurrency", "0"], "baton bench: bad value '0' for --concurrency"),
    (["status", "--interval"], "baton status: option '--interval' needs a value"),
]


@pytest.mark.parametrize("args,first", USAGE_ERRORS, ids=["-".join(w.strip("-") for w in a) for a, _ in USAGE_ERRORS])
def test_a_bad_argument_is_named_in_the_first_line(args, first):
    """A mistyped option gets a sentence naming it, not a bare usage line
    or a 'missing CONFIG' when the config was given."""
    out = subprocess.run([BATON] + args, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, (args, out.stderr)
    assert out.stderr.splitlines()[0].startswith(first), out.stderr


def test_check_warns_of_a_stage_no_pipeline_uses(tmp_path):
    path = tmp_path / "baton.yaml"
    path.write_text(GOOD_STAGE + "  spare:\n    command: [/bin/true]\npipelines: {p: [w]}\n")
    out = subprocess.run([BATON, "check", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith("%s:5:3: warning: stage 'spare' is in no pipeline" % path), \
        out.stderr
    assert "'w'" not in out.stderr, out.stderr


def test_version_and_help():
    out = subprocess.run([BATON, "version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("baton ")
    out = subprocess.run([BATON, "help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for cmd in ("serve", "check", "status", "version"):
        assert "\n  " + cmd in out.stdout
