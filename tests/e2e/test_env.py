"""`baton env setup|check`: per-stage venvs built from a local wheel
directory (never the network), idempotently; health checks run inside each
stage's environment and a broken one is reported with its error."""
import base64
import hashlib
import os
import subprocess
import zipfile

from conftest import BATON, SDK_PY, SLOW


def make_wheel(directory, name="bt_probe", version="1.0"):
    """A minimal pure-Python wheel, built by hand (no network, no tools)."""
    dist = "%s-%s" % (name, version)
    path = os.path.join(directory, "%s-py3-none-any.whl" % dist)
    files = {
        "%s.py" % name: "VALUE = 'probe %s'\n" % version,
        "%s.dist-info/METADATA" % dist: "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version),
        "%s.dist-info/WHEEL" % dist: "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(path, "w") as z:
        for arc, text in files.items():
            data = text.encode()
            z.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append("%s,sha256=%s,%d" % (arc, digest, len(data)))
        record.append("%s.dist-info/RECORD,," % dist)
        z.writestr("%s.dist-info/RECORD" % dist, "\n".join(record) + "\n")
    return path


def baton(*args, timeout=300):
    return subprocess.run([BATON, *args], capture_output=True, text=True, timeout=timeout * SLOW)


def write_config(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(str(wheels))
    (tmp_path / "requirements.txt").write_text("bt_probe==1.0\n")
    cfg = tmp_path / "baton.yaml"
    cfg.write_text("""
stages:
  model:
    command: [python3, -c, "import bt_probe"]
    venv: envs/model
    setup: {requirements: requirements.txt, wheels: wheels}
    health_check: [python3, -c, "import bt_probe; print(bt_probe.VALUE)"]
  vision:
    command: [python3, -c, "pass"]
    venv: envs/vision
    setup: {system_site_packages: true}
    health_check: [python3, -c, "import cv2"]
  broken:
    command: [python3, -c, "pass"]
    venv: envs/broken
    setup: {}
    health_check: [python3, -c, "import cv2"]
  plain:
    command: [/bin/true]
pipelines:
  p: [model]
""")
    return str(cfg)


def test_setup_twice_is_idempotent_and_check_reports_each_stage(tmp_path):
    cfg = write_config(tmp_path)
    r = baton("check", cfg)
    assert r.returncode == 0 and "does not exist yet" in r.stderr
    r = baton("env", "check", cfg)
    assert r.returncode == 1 and "venv does not exist" in r.stdout
    r = baton("env", "setup", cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = {l.split()[0]: l for l in r.stdout.splitlines()}
    assert "created" in lines["model"] and "requirements installed" in lines["model"]
    assert "system site packages" in lines["vision"]
    assert "nothing to set up" in lines["plain"]
    r = baton("env", "setup", cfg)
    assert r.returncode == 0
    lines = {l.split()[0]: l for l in r.stdout.splitlines()}
    assert "exists" in lines["model"] and "requirements up to date" in lines["model"]
    assert "installed" not in r.stdout and "created" not in r.stdout
    r = baton("env", "check", cfg)
    assert r.returncode == 1, r.stdout
    rows = {l.split()[0]: l for l in r.stdout.splitlines()[1:]}
    assert " ok " in rows["model"] and " ok " in rows["vision"]
    assert " failed " in rows["broken"] and "No module named 'cv2'" in rows["broken"]
    assert "no health_check" in rows["plain"]
    # One stage at a time.
    r = baton("env", "check", cfg, "--stage", "model")
    assert r.returncode == 0 and "broken" not in r.stdout


def test_changed_requirements_are_reinstalled_and_recreate_starts_over(tmp_path):
    cfg = write_config(tmp_path)
    assert baton("env", "setup", cfg, "--stage", "model").returncode == 0
    make_wheel(str(tmp_path / "wheels"), version="2.0")
    (tmp_path / "requirements.txt").write_text("bt_probe==2.0\n")
    r = baton("env", "setup", cfg, "--stage", "model")
    assert r.returncode == 0 and "requirements installed" in r.stdout
    out = subprocess.run([str(tmp_path / "envs/model/bin/python"), "-c",
                          "import bt_probe; print(bt_probe.VALUE)"], capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "probe 2.0"
    r = baton("env", "setup", cfg, "--stage", "model", "--force-recreate")
    assert r.returncode == 0 and "removed" in r.stdout and "created" in r.stdout


def test_missing_wheel_fails_that_stage_only(tmp_path):
    cfg = write_config(tmp_path)
    (tmp_path / "requirements.txt").write_text("not_a_local_package==1.0\n")
    r = baton("env", "setup", cfg)
    assert r.returncode == 1
    lines = {l.split()[0]: l for l in r.stdout.splitlines()}
    assert "failed: pip install" in lines["model"]
    assert "ok:" in lines["vision"]


def test_requirements_without_wheels_is_a_config_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stages:\n  s:\n    command: [/bin/true]\n    venv: v\n"
                   "    setup: {requirements: r.txt}\npipelines:\n  p: [s]\n")
    r = baton("check", str(cfg))
    assert r.returncode == 2 and "never from the network" in r.stderr and ":5:12:" in r.stderr


def test_serve_uses_the_venv_that_setup_built(tmp_path, request):
    baton_serve = request.getfixturevalue("baton")  # conftest's; baton() here runs the CLI
    cfg = write_config(tmp_path)
    assert baton("env", "setup", cfg, "--stage", "model").returncode == 0
    r = baton("check", cfg)
    assert "envs/model/bin/python3 -c" in r.stdout
    # And serve runs the stage with that venv's python, where the wheel is.
    (tmp_path / "probe_worker.py").write_text(
        "import sys, bt_probe, baton_worker as bw\n"
        "bw.run(lambda payload, meta: ('%s|%s' % (bt_probe.VALUE, sys.prefix)).encode())\n")
    b = baton_serve(open(cfg).read().split("  vision:")[0].replace(
        'command: [python3, -c, "import bt_probe"]',
        "command: [python3, %s]\n    env: {PYTHONPATH: %s}" % (tmp_path / "probe_worker.py", SDK_PY))
        + "pipelines:\n  p: [model]\n")
    value, prefix = b.post("p", "x").body.decode().split("|")
    assert value == "probe 1.0" and prefix == str(tmp_path / "envs" / "model"), (value, prefix)
    assert b.stop() == 0


def test_check_reports_the_first_error_line_not_the_last_line(tmp_path):
    # A traceback whose frames mention "error" (indented, so not the error),
    # then the exception line, then more output that a last-line rule would pick.
    (tmp_path / "traceback.py").write_text(r'''import sys
sys.stdout.write("loading the model\n")
sys.stderr.write("""Traceback (most recent call last):
  File "/srv/error_handling.py", line 3, in <module>
    import cv2  # error-prone
ModuleNotFoundError: No module named 'cv2'

During handling of the above exception, another exception occurred:
RuntimeError: the second one
hint: pip install opencv-python-headless
""")
sys.exit(1)
''')
    (tmp_path / "quiet.py").write_text(
        'import sys\nprint("first words")\nprint("the last words")\nprint()\nsys.exit(3)\n')
    cfg = tmp_path / "baton.yaml"
    cfg.write_text("""
stages:
  tb:
    command: [/bin/true]
    health_check: [/usr/bin/python3, traceback.py]
  quiet:
    command: [/bin/true]
    health_check: [/usr/bin/python3, quiet.py]
pipelines:
  p: [tb]
""")
    r = baton("env", "check", str(cfg), timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    header, *rest = r.stdout.splitlines()
    assert header.rstrip().endswith("FIRST ERROR")
    rows = {l.split()[0]: l for l in rest}
    assert rows["tb"].rstrip().endswith("ModuleNotFoundError: No module named 'cv2'"), rows["tb"]
    # Nothing says "error": the last non-empty line stands in.
    assert rows["quiet"].rstrip().endswith(" the last words"), rows["quiet"]


def test_silent_failures_show_the_exit_status_and_background_children_do_not_hang(tmp_path):
    # A check that fails without a word reports its status (the column once
    # showed whatever the empty buffer held); a check that exits 0 while a
    # process it started keeps the output open is ok, not a 60 s timeout.
    cfg = tmp_path / "baton.yaml"
    cfg.write_text("""
stages:
  silent:
    command: [/bin/true]
    health_check: [/bin/sh, -c, "exit 7"]
  crashed:
    command: [/bin/true]
    health_check: [/bin/sh, -c, "kill -SEGV $$"]
  lingering:
    command: [/bin/true]
    health_check: [/bin/sh, -c, "sleep 30 & echo started"]
pipelines:
  p: [silent]
""")
    r = baton("env", "check", str(cfg), timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    rows = {l.split()[0]: l for l in r.stdout.splitlines()[1:]}
    assert rows["silent"].rstrip().endswith("exit status 7"), rows["silent"]
    assert rows["crashed"].rstrip().endswith("exit status %d" % (128 + 11)), rows["crashed"]
    assert " ok " in rows["lingering"], rows["lingering"]
    assert float(rows["lingering"].split()[3].rstrip("s")) < 20, rows["lingering"]
