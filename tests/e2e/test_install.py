"""`make install` (meson install into a DESTDIR): every part lands where a
system looks for it and works from there — the binary, a worker built
with the installed C SDK through pkg-config, the installed Python SDK, man
pages that agree with `baton help` and docs/config.md (and config.md with
the keys the parser accepts), bash completion, a unit systemd accepts."""
import glob
import os
import re
import shutil
import subprocess

import pytest

from conftest import BATON, BUILD, ROOT, SANITIZED, SLOW

STAGE = "stages:\n  w:\n    command: [/bin/true]\n"
# One config per section of the file, each with a key no section has: the
# error lists what the parser accepts there ("expected one of: ...").
SECTIONS = {
    "": "zzq: 1\n" + STAGE + "pipelines: {p: [w]}\n",
    "stage": STAGE + "    zzq: 1\npipelines: {p: [w]}\n",
    "replicas": STAGE + "    replicas: {zzq: 1}\npipelines: {p: [w]}\n",
    "warmup": STAGE + "    warmup: {zzq: 1}\npipelines: {p: [w]}\n",
    "restart": STAGE + "    restart: {zzq: 1}\npipelines: {p: [w]}\n",
    "stop": STAGE + "    stop: {zzq: 1}\npipelines: {p: [w]}\n",
    "batch": STAGE + "    batch: {zzq: 1}\npipelines: {p: [w]}\n",
    "spawn": STAGE + "    spawn: {zzq: 1}\npipelines: {p: [w]}\n",
    "setup": STAGE + "    setup: {zzq: 1}\npipelines: {p: [w]}\n",
    "resources": STAGE + "    resources: {zzq: 1}\npipelines: {p: [w]}\n",
    "autoscale": STAGE + "    autoscale: {zzq: 1}\npipelines: {p: [w]}\n",
    "auth": "auth: {zzq: 1}\n" + STAGE + "pipelines: {p: [w]}\n",
    "http": "http: {zzq: 1}\n" + STAGE + "pipelines: {p: [w]}\n",
    "pipeline": STAGE + "pipelines:\n  p: {stages: [w], zzq: 1}\n",
    "grpc": "grpc: {zzq: 1}\n" + STAGE + "pipelines: {p: [w]}\n",
    "queue": "queue: {zzq: 1}\n" + STAGE + "pipelines: {p: [w]}\n",
    "log_limit": STAGE + "    log_limit: {zzq: 1}\npipelines: {p: [w]}\n",
    "run": "run: {zzq: 1}\n" + STAGE + "pipelines: {p: [w]}\n",
    "source": "run: {source: {postgresql: {zzq: 1}}, sink: {postgresql: {table: t}}}\n"
              + STAGE + "pipelines: {p: [w]}\n",
    "sink": "run: {source: {postgresql: {query: q, key: k}}, sink: {postgresql: {zzq: 1}}}\n"
            + STAGE + "pipelines: {p: [w]}\n",
}
NESTED = {"replicas", "warmup", "restart", "stop", "batch", "spawn", "setup", "resources",
          "autoscale", "auth", "http", "grpc", "queue", "log_limit", "run", "source", "sink"}


@pytest.fixture(scope="module")
def destdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("destdir")
    out = subprocess.run(["meson", "install", "-C", BUILD, "--no-rebuild", "--quiet",
                          "--destdir", str(d)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    prefix = subprocess.run(["meson", "introspect", "--buildoptions", BUILD], capture_output=True,
                            text=True, check=True).stdout
    prefix = re.search(r'"name": "prefix", "value": "([^"]+)"', prefix).group(1)
    return str(d) + prefix


def one(pattern):
    found = glob.glob(pattern)
    assert len(found) == 1, (pattern, found)
    return found[0]


def test_install_puts_every_part_in_place(destdir):
    out = subprocess.run([os.path.join(destdir, "bin", "baton"), "version"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("baton "), out
    for rel in ("include/baton_worker.h", "share/man/man1/baton.1", "share/man/man5/baton.yaml.5",
                "share/bash-completion/completions/baton", "lib/systemd/system/baton.service",
                "lib/sysusers.d/baton.conf", "share/doc/baton/examples/upper/baton.yaml"):
        assert os.path.isfile(os.path.join(destdir, rel)), rel
    one(destdir + "/lib/*/libbatonworker.so.1")
    one(destdir + "/lib/*/libbatonworker.a")
    one(destdir + "/lib/*/pkgconfig/batonworker.pc")
    one(destdir + "/lib/python3*/dist-packages/baton_worker.py")
    unit = open(os.path.join(destdir, "lib/systemd/system/baton.service")).read()
    assert "ExecStart=%s/bin/baton serve " % destdir[len(destdir) - len(prefix_of(destdir)):] in unit


def prefix_of(destdir):
    m = re.search(r"(/usr(?:/local)?|/opt[^/]*)$", destdir)
    return m.group(1) if m else ""


def test_installed_sdks_run_a_pipeline(destdir, tmp_path):
    # A C worker compiled against the installed header and library through
    # pkg-config, after a Python stage that imports the installed module.
    pc = os.path.dirname(one(destdir + "/lib/*/pkgconfig/batonworker.pc"))
    # The .pc file names the real prefix: the sysroot maps it into DESTDIR.
    root = destdir[:len(destdir) - len(prefix_of(destdir))]
    env = dict(os.environ, PKG_CONFIG_PATH=pc, PKG_CONFIG_SYSROOT_DIR=root)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "batonworker"],
                           capture_output=True, text=True, env=env, check=True).stdout.split()
    assert any(f.startswith("-I" + destdir) for f in flags), flags
    rev = tmp_path / "rev"
    # A sanitized build installs a sanitized library: its users must load the runtime too.
    san = ["-fsanitize=address,undefined"] if SANITIZED else []
    subprocess.run(["cc", "-o", str(rev), os.path.join(ROOT, "examples", "echo", "rev.c")] + flags
                   + san, check=True, timeout=120, capture_output=True)
    libdir = os.path.dirname(one(destdir + "/lib/*/libbatonworker.so.1"))
    pydir = os.path.dirname(one(destdir + "/lib/python3*/dist-packages/baton_worker.py"))
    ex = os.path.join(destdir, "share/doc/baton/examples/upper")
    cfg = tmp_path / "baton.yaml"
    cfg.write_text(f"""stages:
  upper:
    command: [/usr/bin/python3, {ex}/upper.py]
    env: {{PYTHONPATH: {pydir}}}
  rev:
    command: [{rev}]
    env: {{LD_LIBRARY_PATH: {libdir}}}
pipelines:
  p: [upper, rev]
""")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("hello")
    out = subprocess.run([os.path.join(destdir, "bin", "baton"), "run", str(cfg), "--pipeline", "p",
                          "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                          "--no-progress"], capture_output=True, text=True, timeout=120 * SLOW)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "a.txt.out").read_text().startswith("OLLEH")


def parser_keys():
    """Every key the config parser accepts, as 'section.key' ('' at the top)."""
    keys = set()
    for section, text in SECTIONS.items():
        path = "/tmp/baton-keys-%d.yaml" % os.getpid()
        with open(path, "w") as f:
            f.write(text)
        try:
            err = subprocess.run([BATON, "check", path], capture_output=True, text=True,
                                 timeout=30).stderr
        finally:
            os.unlink(path)
        listed = re.search(r"expected one of: ([^)]*)\)", err)
        assert listed, (section, err)
        for k in listed.group(1).split(", "):
            keys.add("%s.%s" % (section, k) if section in NESTED else k)
    return keys


def undocumented(keys, text):
    """The keys the reference does not document: a key has its own table row
    (`restart.backoff_ms`), or its section has rows and the key is named in
    code (`{min, max, initial}`, an example's `target_ongoing: 2`)."""
    rows = set(re.findall(r"^\| `([a-z_.]+)`", text, re.M))
    blocks = re.findall(r"```.*?```", text, re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    code = " ".join(blocks + spans)
    missing = []
    for k in sorted(keys):
        section, _, name = k.rpartition(".")
        if k in rows or any(r.startswith(k + ".") for r in rows):
            continue
        if section and (section in rows or any(r.startswith(section + ".") for r in rows)) \
                and re.search(r"\b%s\b" % re.escape(name), code):
            continue
        missing.append(k)
    return missing


def test_every_key_the_config_reference_lists_is_one_the_parser_takes():
    """The other way round: a row of docs/config.md names no key that the
    parser would refuse as unknown (a renamed or misspelt key)."""
    keys = parser_keys()
    with open(os.path.join(ROOT, "docs", "config.md")) as f:
        rows = re.findall(r"^\| `([a-z_.]+)`", f.read(), re.M)
    assert "restart.backoff_ms" in rows and "source.postgresql.query" in rows
    unknown = [r for r in rows
               if re.sub(r"^(source|sink)\.postgresql\.", r"\1.", r) not in keys]
    assert not unknown, "docs/config.md lists keys the parser refuses: %s" % unknown


def test_config_reference_and_man_page_document_every_key(destdir):
    keys = parser_keys()
    assert {"listen", "command", "restart.backoff_ms", "autoscale.policy"} <= keys
    with open(os.path.join(ROOT, "docs", "config.md")) as f:
        doc = f.read()
    missing = undocumented(keys, doc)
    assert not missing, "docs/config.md does not document: %s" % missing
    man = open(os.path.join(destdir, "share/man/man5/baton.yaml.5")).read()
    # The installed page is the reference as it is now.
    fresh = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tools", "man-config.py"),
                            os.path.join(ROOT, "docs", "config.md")], capture_output=True,
                           text=True, check=True).stdout
    assert man == fresh


def test_man_page_1_is_baton_help(destdir):
    man = open(os.path.join(destdir, "share/man/man1/baton.1")).read()
    assert man == subprocess.run([BATON, "help", "--man"], capture_output=True, text=True,
                                 check=True).stdout
    plain = man.replace("\\-", "-")
    for name in ("serve", "check", "run", "env", "bench", "status", "version", "help"):
        page = subprocess.run([BATON, name, "--help"], capture_output=True, text=True).stdout
        assert ".SS baton %s\n" % name in plain
        for opt in set(re.findall(r"^  (--[a-z-]+)", page, re.M)):
            assert opt in plain, (name, opt)


@pytest.mark.parametrize("page", ["man1/baton.1", "man5/baton.yaml.5"])
def test_man_pages_render_without_warnings(destdir, page):
    groff = shutil.which("groff")
    if not groff:
        pytest.fail("groff is missing (Debian's groff-base, in TEST_PKGS)")
    out = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z",
                          os.path.join(destdir, "share/man", page)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr, out.stderr


def complete(destdir, *words):
    script = os.path.join(destdir, "share/bash-completion/completions/baton")
    baton = os.path.join(destdir, "bin", "baton")
    cmd = ('source %s; COMP_WORDS=(%s); COMP_CWORD=%d; _baton; printf "%%s\\n" "${COMPREPLY[@]}"'
           % (script, " ".join([baton] + ["'%s'" % w for w in words]), len(words)))
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_bash_completion_reads_commands_and_options_from_baton(destdir):
    assert complete(destdir, "r") == ["run"]
    assert set(complete(destdir, "")) >= {"serve", "check", "run", "env", "status"}
    assert complete(destdir, "run", "--inc") == ["--include"]
    assert complete(destdir, "env", "") == ["setup", "check"]


def test_systemd_accepts_the_unit(destdir, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("no systemd-analyze on this machine")
    unit = open(os.path.join(destdir, "lib/systemd/system/baton.service")).read()
    assert "Type=notify" in unit and "NoNewPrivileges=yes" in unit
    # The ExecStart binary must exist for verify: point it into DESTDIR.
    exec_start = re.search(r"^ExecStart=(\S+)", unit, re.M).group(1)
    (tmp_path / "baton.service").write_text(
        unit.replace(exec_start, os.path.join(destdir, "bin", "baton")))
    out = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / "baton.service")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
