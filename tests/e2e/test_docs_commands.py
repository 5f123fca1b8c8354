"""The commands the documentation quotes work: the README's five-minute
example runs as written right after a build, and every `baton …` command
quoted in README.md, docs/ and the examples' READMEs names a real command
with real options, on configs that `baton check` accepts."""
import functools
import glob
import os
import re
import shlex
import signal
import socket
import subprocess

import pytest

from conftest import BATON, BUILD, ROOT, SLOW, free_port, wait_for

DOCS = ([os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) +
        sorted(glob.glob(os.path.join(ROOT, "examples", "*", "README.md"))))
BLOCK_CMD = re.compile(r"^(?:\$ )?((?:[\w./-]*/)?baton [a-z-]+(?: .*)?)$")
INLINE_CMD = re.compile(r"`((?:[\w./-]*/)?baton [a-z][^`]*)`")


def quoted_commands():
    """(doc, line number, command text) for each `baton …` the docs quote."""
    found = []
    for doc in DOCS:
        in_block = False
        with open(doc) as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if line.startswith("```"):
                    in_block = not in_block
                    continue
                if in_block:
                    m = BLOCK_CMD.match(line.strip())
                    if m:
                        found.append((doc, n, m.group(1)))
                else:
                    found.extend((doc, n, m.group(1)) for m in INLINE_CMD.finditer(line))
    return found


@functools.lru_cache(maxsize=None)
def usage_of(name):
    out = subprocess.run([BATON, name, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, (name, out.stderr)
    return out.stdout


def test_every_quoted_baton_command_parses():
    commands = quoted_commands()
    assert len(commands) > 30  # the scan itself still finds the quotes
    checked = {}
    problems = []
    for doc, n, text in commands:
        where = "%s:%d: `%s`" % (os.path.relpath(doc, ROOT), n, text)
        text = re.sub(r"\s+#.*$", "", text).replace("\\|", "|").rstrip(" &")
        try:
            words = shlex.split(text)
        except ValueError:
            words = text.split()
        name = words[1]
        try:
            page = usage_of(name)
        except AssertionError:
            problems.append("%s: no command '%s'" % (where, name))
            continue
        if name == "env" and len(words) > 2 and words[2] not in ("setup", "check", "setup|check"):
            problems.append("%s: env has no '%s'" % (where, words[2]))
        for opt in re.findall(r"(?<![\w-])--[a-z][a-z-]*", text):
            if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(opt), page):
                problems.append("%s: 'baton %s' has no option %s" % (where, name, opt))
        # Quoted configs that exist must be valid (relative to the root or the doc).
        for w in words:
            if not w.endswith(".yaml"):
                continue
            for base in (ROOT, os.path.dirname(doc)):
                path = os.path.normpath(os.path.join(base, w))
                if os.path.exists(path):
                    break
            else:
                continue
            if path not in checked:
                out = subprocess.run([BATON, "check", path], capture_output=True, text=True,
                                     timeout=30)
                checked[path] = out.returncode == 0 and out.stderr
            if checked[path] is False:
                problems.append("%s: baton check %s fails" % (where, path))
    assert not problems, "\n".join(problems)
    assert os.path.join(ROOT, "examples", "echo", "baton.yaml") in checked


def five_minute_lines():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## In five minutes", 1)[1]
    block = re.search(r"Run and call it.*?```sh\n(.*?)```", section, re.S).group(1)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines() if line.strip()]


def echo_layout(tmp_path):
    """A checkout's layout in a scratch directory: the echo example's own
    files, the build and the SDK, so that relative paths hold and the venv
    the example gets lands here, not in the source tree."""
    echo = tmp_path / "examples" / "echo"
    echo.mkdir(parents=True)
    for name in ("baton.yaml", "upper.py"):
        with open(os.path.join(ROOT, "examples", "echo", name)) as f:
            (echo / name).write_text(f.read())
    os.symlink(BUILD, tmp_path / "build")
    os.symlink(os.path.join(ROOT, "sdk"), tmp_path / "sdk")
    return echo


def test_what_check_prints_in_config_md_is_a_real_run(tmp_path):
    with open(os.path.join(ROOT, "docs", "config.md")) as f:
        doc = f.read()
    block = re.search(r"```\n\$ (baton check examples/echo/baton\.yaml)\n(.*?)```", doc, re.S)
    assert block, "docs/config.md shows no `baton check` of the echo example any more"
    echo_layout(tmp_path)
    setup = subprocess.run([BATON, "env", "setup", "examples/echo/baton.yaml"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120 * SLOW)
    assert setup.returncode == 0, setup.stdout
    out = subprocess.run([BATON] + shlex.split(block.group(1))[1:], cwd=tmp_path,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and not out.stderr, out.stderr
    assert out.stdout.replace(str(tmp_path), "/srv/baton") == block.group(2)


def test_the_readme_five_minute_example_runs_as_written(tmp_path):
    echo = echo_layout(tmp_path)
    port = free_port()
    env = dict(os.environ, BATON_URL="http://127.0.0.1:%d" % port)
    lines = five_minute_lines()
    assert [ln.split()[:2] for ln in lines] == [
        ["build/baton", "check"], ["build/baton", "env"], ["build/baton", "serve"],
        ["curl", "--data"], ["build/baton", "status"]], lines
    server = None
    try:
        for line in lines:
            argv = shlex.split(line.rstrip(" &"))
            if argv[0] == "curl":
                argv = [a.replace(":8080", ":%d" % port) for a in argv]
                argv[1:1] = ["-sS", "--fail-with-body", "--max-time", str(60 * SLOW)]
            if line.endswith("&"):
                # The README's 127.0.0.1:8080 may be taken here: the test's port instead.
                server = subprocess.Popen(argv + ["--listen", "127.0.0.1:%d" % port],
                                          cwd=tmp_path, stdout=subprocess.DEVNULL,
                                          stderr=open(tmp_path / "serve.log", "wb"), env=env)
                wait_for(lambda: listening(port, server), 30,
                         what="serve to listen: " + (tmp_path / "serve.log").read_text())
                continue
            out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                                 timeout=120 * SLOW, env=env)
            assert out.returncode == 0, (line, out.stdout, out.stderr,
                                         (tmp_path / "serve.log").read_text() if server else "")
            if argv[0] == "curl":
                assert out.stdout.startswith("OLLEH"), out.stdout  # upper, then rev
            if argv[1] == "status":
                assert re.search(r"^upper\s+ok\b", out.stdout, re.M), out.stdout
        assert (echo / ".venv-upper" / "bin" / "python").exists()
    finally:
        if server:
            server.send_signal(signal.SIGTERM)
            server.wait(60 * SLOW)
    assert server.returncode == 0


def listening(port, proc):
    if proc.poll() is not None:
        raise AssertionError("serve exited with %s" % proc.returncode)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def help_examples(name):
    """The example lines of `baton NAME --help` that run the echo example."""
    page = usage_of(name).split("\nexamples:\n", 1)[1]
    return [ln.strip() for ln in page.splitlines()
            if ln.strip().startswith("baton %s examples/echo/" % name) and "--scenarios" not in ln]


@pytest.mark.parametrize("name", ["run", "bench"])
def test_the_help_pages_echo_examples_run_as_written(tmp_path, name):
    """A newcomer pastes the examples of `baton run --help` and `baton bench
    --help` at the top of a checkout: they must succeed (exit 0), not fail
    on files the example did not mean to send."""
    echo_layout(tmp_path)
    for rel in ("docs", "README.md"):
        os.symlink(os.path.join(ROOT, rel), tmp_path / rel)
    setup = subprocess.run([BATON, "env", "setup", "examples/echo/baton.yaml"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120 * SLOW)
    assert setup.returncode == 0, setup.stdout
    examples = help_examples(name)
    assert examples, usage_of(name)
    for line in examples:
        argv = [BATON] + shlex.split(line)[1:]
        argv = [str(tmp_path / "out") if a == "/tmp/echo-out" else a for a in argv]
        out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                             timeout=120 * SLOW)
        failed = tmp_path / "out" / "_failed.jsonl"
        assert out.returncode == 0, (line, out.stdout, out.stderr,
                                     failed.read_text() if failed.exists() else "")


def heading_anchors(path):
    """The anchors GitHub makes of a Markdown file's headings."""
    found = set()
    with open(path) as f:
        for line in f:
            m = re.match(r"#+ (.*)", line)
            if m:
                text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
                found.add(text.replace(" ", "-"))
    return found


def test_every_relative_link_and_anchor_of_the_docs_resolves():
    problems = []
    for doc in DOCS:
        with open(doc) as f:
            text = f.read()
        for m in re.finditer(r"\]\(([^)#\s]*)(#[^)\s]+)?\)", text):
            target, anchor = m.group(1), m.group(2)
            if re.match(r"[a-z]+:", target):
                continue
            path = os.path.normpath(os.path.join(os.path.dirname(doc), target)) if target else doc
            where = "%s: (%s%s)" % (os.path.relpath(doc, ROOT), target, anchor or "")
            if not os.path.exists(path):
                problems.append(where + ": no such file")
            elif anchor and path.endswith(".md") and anchor[1:] not in heading_anchors(path):
                problems.append(where + ": no such heading")
    assert not problems, "\n".join(problems)
