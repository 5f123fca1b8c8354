#!/usr/bin/python3
"""make mutants: break baton on purpose, one named mutant at a time, and
check that the tests named after the broken behaviour fail.

The mutants are in tests/mutants/mutants.txt (see its header). Each one is
applied to a scratch copy of the tree (build-mutants/tree, built in
build-mutants/tree/build), never to the checkout; the copy is brought back
in step with the checkout before every mutant, rewriting only the files that
differ so that ninja rebuilds little. First the tests of all the chosen
mutants run once on the unbroken copy (they must pass, or a failure would
prove nothing); then, for each mutant, only its own tests run. A mutant is
caught when at least one of its tests fails.

usage: run.py [--fast] [--list] [--no-baseline] [NAME...]
Exit status: 0 when every chosen mutant was caught, 1 otherwise.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TABLE = os.path.join(ROOT, "tests", "mutants", "mutants.txt")
SCRATCH = os.environ.get("MUTANTS_DIR", os.path.join(ROOT, "build-mutants"))
TREE = os.path.join(SCRATCH, "tree")
BUILD = os.path.join(TREE, "build")
PY = "/usr/bin/python3"
TEST_TIMEOUT = 600  # seconds for one mutant's tests; a hang counts as caught


class Mutant:
    def __init__(self, name, line):
        self.name = name
        self.line = line
        self.fields = {}
        self.old = None
        self.new = None

    def field(self, key):
        if key not in self.fields:
            sys.exit("%s:%d: mutant %s has no '%s:'" % (TABLE, self.line, self.name, key))
        return self.fields[key]

    @property
    def file(self):
        return self.field("file")

    @property
    def tests(self):
        return self.field("tests").split()

    @property
    def fast(self):
        return self.fields.get("fast", "no") == "yes"


def parse(path):
    """Blocks of 'mutant NAME', 'key: value' lines, then 'from:' and 'to:'
    each followed by verbatim lines, closed by 'end'."""
    mutants, cur, into = [], None, None
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if cur is None:
                if not line.strip() or line.startswith("#"):
                    continue
                if not line.startswith("mutant "):
                    sys.exit("%s:%d: expected 'mutant NAME'" % (path, n))
                cur = Mutant(line.split(None, 1)[1].strip(), n)
                continue
            if into is not None and line.startswith("mutant "):
                # A lost 'end' (a merge that joined two blocks) would
                # otherwise swallow the next mutant into this one's text.
                sys.exit("%s:%d: mutant %s has no 'end' before this line" % (path, n, cur.name))
            if into is not None and line not in ("to:", "end"):
                into.append(line)
            elif line == "from:":
                cur.old, into = [], None
                into = cur.old
            elif line == "to:":
                cur.new = []
                into = cur.new
            elif line == "end":
                if cur.old is None or cur.new is None:
                    sys.exit("%s:%d: mutant %s needs 'from:' and 'to:'" % (path, n, cur.name))
                cur.old, cur.new = "\n".join(cur.old), "\n".join(cur.new)
                mutants.append(cur)
                cur, into = None, None
            elif ":" in line:
                k, v = line.split(":", 1)
                cur.fields[k.strip()] = v.strip()
            elif line.strip():
                sys.exit("%s:%d: unexpected line in mutant %s" % (path, n, cur.name))
    if cur is not None:
        sys.exit("%s: mutant %s has no 'end'" % (path, cur.name))
    names = [m.name for m in mutants]
    dup = {x for x in names if names.count(x) > 1}
    if dup:
        sys.exit("%s: duplicate mutant names: %s" % (path, ", ".join(sorted(dup))))
    return mutants


def tracked_files():
    out = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(ROOT, p))]


def sync_tree(files):
    """Makes the scratch tree's copy of every file equal to the checkout's,
    writing only what differs (unchanged files keep their mtimes)."""
    for rel in files:
        src, dst = os.path.join(ROOT, rel), os.path.join(TREE, rel)
        with open(src, "rb") as f:
            data = f.read()
        try:
            with open(dst, "rb") as f:
                if f.read() == data:
                    continue
        except FileNotFoundError:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(data)
        shutil.copymode(src, dst)


def run(cmd, log, timeout=None, **kw):
    """Runs cmd in its own process group, output to log; returns (rc, secs).
    rc is None when it timed out (the whole group is killed)."""
    t0 = time.monotonic()
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = None
        except BaseException:  # stopped ourselves: take the child's group along
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise
    return rc, time.monotonic() - t0


# What the end-to-end tests run besides baton; the examples, benchmarks and
# the rest are not built (a test that needs one fails the baseline run).
E2E_TARGETS = ["baton", "tests/c_batch_worker", "tests/c_echo_worker", "tests/c_source",
               "examples/stations/ocr_order", "examples/echo/rev",
               "tests/fake-nvml/libnvidia-ml.so.1"]


def targets_for(tests):
    return E2E_TARGETS + ["tests/test_" + t.split(":", 1)[1] for t in tests
                          if t.startswith("unit:")]


def build(log, targets):
    if not os.path.exists(os.path.join(BUILD, "build.ninja")):
        rc, _ = run(["meson", "setup", BUILD], log, cwd=TREE)
        if rc != 0:
            return rc
    rc, _ = run(["nice", "-n", "10", "ninja", "-C", BUILD, "-j2"] + targets, log)
    return rc


def unit_results(build):
    """The results meson wrote for the tests it just ran: {name: result}."""
    out = {}
    try:
        with open(os.path.join(build, "meson-logs", "testlog.json")) as f:
            for line in f:
                doc = json.loads(line)
                out[doc["name"]] = doc["result"]
    except FileNotFoundError:
        pass
    return out


def e2e_results(xml):
    """(tests, failed) from pytest's JUnit XML; (0, 0) when there is none.
    Errors (a fixture's check after the test) count as failures."""
    try:
        root = ET.parse(xml).getroot()
    except (FileNotFoundError, ET.ParseError):
        return 0, 0
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = sum(int(x.get("tests", 0)) for x in suites)
    failed = sum(int(x.get("failures", 0)) + int(x.get("errors", 0)) for x in suites)
    return tests, failed


def run_tests(tests, log):
    """Runs unit tests ('unit:NAME', by meson) then e2e tests (pytest node
    ids), both on the scratch build. Returns ('pass'|'fail'|'error'|'hang',
    secs): 'error' when a test did not run at all (a missing test or tool
    must not look like a caught mutant)."""
    unit = [t.split(":", 1)[1] for t in tests if t.startswith("unit:")]
    e2e = [t for t in tests if not t.startswith("unit:")]
    total = 0.0
    env = dict(os.environ, BATON_BUILD=BUILD)
    env.pop("BATON_SANITIZED", None)
    if unit:
        rc, secs = run(["meson", "test", "-C", BUILD, "--no-rebuild", "--print-errorlogs"]
                       + unit, log + ".unit", TEST_TIMEOUT)
        total += secs
        if rc is None:
            return "hang", total
        got = unit_results(BUILD)
        if set(got) != set(unit):
            return "error", total
        if any(v != "OK" for v in got.values()):
            return "fail", total
    if e2e:
        xml = log + ".xml"
        if os.path.exists(xml):
            os.unlink(xml)
        rc, secs = run(["nice", "-n", "10", PY, "-m", "pytest", "-q", "-x", "-p",
                        "no:cacheprovider", "--junitxml", xml] + e2e, log + ".e2e",
                       TEST_TIMEOUT, cwd=TREE, env=env)
        total += secs
        if rc is None:
            return "hang", total
        ran, failed = e2e_results(xml)
        if rc == 1 and failed:
            return "fail", total
        # -x stops at the first failure; without one, every test must have run.
        if rc != 0 or ran != len(e2e):
            return "error", total
    return "pass", total


def main():
    # Stopped by SIGTERM, still restore the mutated file (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="only the mutants marked fast: yes")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the run of the tests on the unbroken tree")
    ap.add_argument("names", nargs="*")
    a = ap.parse_args()
    mutants = parse(TABLE)
    if a.names:
        unknown = set(a.names) - {m.name for m in mutants}
        if unknown:
            sys.exit("no such mutant: %s" % ", ".join(sorted(unknown)))
        mutants = [m for m in mutants if m.name in a.names]
    if a.fast:
        mutants = [m for m in mutants if m.fast]
    if a.list:
        for m in mutants:
            print("%-28s %-4s %-34s %s" % (m.name, "fast" if m.fast else "", m.field("guarantee"),
                                           m.file))
        return 0

    t_start = time.monotonic()
    os.makedirs(TREE, exist_ok=True)
    logs = os.path.join(SCRATCH, "logs")
    os.makedirs(logs, exist_ok=True)
    files = tracked_files()
    sync_tree(files)
    for m in mutants:  # every mutant must still apply to today's code
        with open(os.path.join(TREE, m.file)) as f:
            n = f.read().count(m.old)
        if n != 1:
            sys.exit("mutant %s: its 'from:' text occurs %d times in %s (must be once); "
                     "update tests/mutants/mutants.txt" % (m.name, n, m.file))
    alltests = []
    for m in mutants:
        alltests += [t for t in m.tests if t not in alltests]
    targets = targets_for(alltests)
    print("building the scratch copy in %s" % BUILD, flush=True)
    if build(os.path.join(logs, "build.log"), targets) != 0:
        sys.exit("the unbroken tree does not build; see %s/build.log" % logs)

    if not a.no_baseline:
        res, secs = run_tests(alltests, os.path.join(logs, "baseline"))
        print("baseline (%d tests, unbroken tree): %s in %.0fs" % (len(alltests), res, secs),
              flush=True)
        if res != "pass":
            sys.exit("the mutants' tests do not pass on the unbroken tree; see %s/baseline.*"
                     % logs)

    results = []
    for m in mutants:
        path = os.path.join(TREE, m.file)
        with open(path) as f:
            orig = f.read()
        t0 = time.monotonic()
        try:
            with open(path, "w") as f:
                f.write(orig.replace(m.old, m.new, 1))
            log = os.path.join(logs, m.name)
            if build(log + ".build", targets_for(m.tests)) != 0:
                res = "no build"
            else:
                res, _ = run_tests(m.tests, log)
        finally:
            with open(path, "w") as f:
                f.write(orig)
        verdict = {"fail": "caught", "hang": "caught (hang)", "pass": "MISSED",
                   "error": "ERROR", "no build": "NO BUILD"}[res]
        secs = time.monotonic() - t0
        results.append((m, verdict, secs))
        print("%-28s %-14s %5.0fs  %s" % (m.name, verdict, secs, m.field("guarantee")),
              flush=True)

    # The tree is left unbroken: rebuild it so that build-mutants/ matches HEAD.
    build(os.path.join(logs, "build.log"), targets)
    caught = sum(1 for _, v, _ in results if v.startswith("caught"))
    print("\n%d mutants, %d caught, %d not, in %.0fs (logs in %s)"
          % (len(results), caught, len(results) - caught, time.monotonic() - t_start, logs))
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
