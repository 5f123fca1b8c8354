"""The documents example end to end: generated diagram pages (PNG and PDF)
through examples/documents/baton.yaml — detect (Python + OpenCV, in a venv)
then ocr (C + tesseract) — and the words OCR gets back compared with the
words drawn.  The config is the example's own, with its relative paths made
absolute (the venv is made here, the ocr binary comes from BATON_BUILD).

Needs Debian's python3-opencv, python3-pil, poppler-utils, tesseract-ocr-eng
and a build with examples/documents/ocr (libtesseract-dev, libleptonica-dev).
"""
import collections
import json
import os
import re
import shlex
import subprocess

import pytest

from conftest import BUILD, PYTHON, ROOT, SANITIZED, SDK_PY, SLOW

EXAMPLE = os.path.join(ROOT, "examples", "documents")
OCR = os.path.join(BUILD, "examples", "documents", "ocr")
# The share of the words drawn on the pages that OCR must give back, over
# all pages, and on any single page.
MIN_RECALL = 0.90
MIN_PAGE_RECALL = 0.80


def words(text):
    """Comparable words: lower case, without the punctuation around them
    ("closed." and "CLOSED" are the same word; "P-101" keeps its hyphen);
    tokens with no letter or digit are dropped."""
    out = []
    for w in text.lower().split():
        w = re.sub(r"^[^0-9a-z]+|[^0-9a-z]+$", "", w)
        if w:
            out.append(w)
    return out


def recall(truth, text):
    """(words of truth found in text, words in truth, the missing ones),
    counting repeated words as often as they occur."""
    want = collections.Counter(words(" ".join(truth)))
    got = collections.Counter(words(text))
    return sum((want & got).values()), sum(want.values()), sorted((want - got).elements())


def server_timing(header):
    """{"detect-run": 41.7, ...} from a Server-Timing header."""
    out = {}
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        m = re.search(r"dur=([0-9.]+)", params)
        if m:
            out[name] = float(m.group(1))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Samples and the detect stage's venv, made once for the module."""
    if not os.access(OCR, os.X_OK):
        pytest.fail("%s is not built (needs libtesseract-dev and libleptonica-dev, "
                    "then ninja -C %s)" % (OCR, BUILD))
    d = tmp_path_factory.mktemp("documents")
    samples = d / "samples"
    subprocess.run([PYTHON, os.path.join(EXAMPLE, "make_samples.py"), str(samples)],
                   check=True, timeout=60, stdout=subprocess.DEVNULL)
    venv = d / "venv-detect"
    # --system-site-packages: Debian's cv2 and numpy, as the README says.
    subprocess.run([PYTHON, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True, timeout=120)
    with open(os.path.join(EXAMPLE, "baton.yaml")) as f:
        cfg = f.read()
    # The example's paths are relative to examples/documents; make them
    # absolute, and fail loudly if the example changed under the test.
    for old, new in [("venv: .venv-detect", "venv: %s" % venv),
                     ("detect.py]", os.path.join(EXAMPLE, "detect.py") + "]"),
                     ("../../sdk/python", SDK_PY),
                     ("../../build/examples/documents/ocr", OCR),
                     ("timeout_ms: 30000", "timeout_ms: %d" % (30000 * SLOW))]:
        assert old in cfg, "examples/documents/baton.yaml has no %r any more" % old
        cfg = cfg.replace(old, new)
    # A pipeline of the ocr stage alone, to feed it bad input directly.
    cfg += "  ocr-only: [ocr]\n"
    pages = sorted(p for p in os.listdir(samples) if p.endswith((".png", ".pdf")))
    return {"samples": str(samples), "config": cfg, "pages": pages}


def test_documents_pipeline_reads_the_pages(baton, setup):
    assert len(setup["pages"]) >= 8   # 6 PNG, 3 PDF by default
    b = baton(setup["config"])
    report, ratios, found, total, timings = [], [], 0, 0, []
    for name in setup["pages"]:
        with open(os.path.join(setup["samples"], name), "rb") as f:
            page = f.read()
        kind = name.rsplit(".", 1)[1]
        r = b.post("documents", page, headers={
            "Content-Type": "application/pdf" if kind == "pdf" else "image/png"}, timeout=60)
        assert r.status == 200, (name, r, b.log_tail())
        assert r.headers["content-type"] == "application/json"
        doc = r.json()
        assert doc["source"] == kind
        assert doc["width"] == 1754 and doc["height"] == 1240
        for reg in doc["regions"]:
            assert len(reg["box"]) == 4 and all(isinstance(v, int) for v in reg["box"])
            assert reg["text"] and isinstance(reg["confidence"], int)
        assert doc["text"] == "\n".join(reg["text"] for reg in doc["regions"])
        assert doc["timings"]["detect_ms"] > 0 and doc["timings"]["ocr_ms"] > 0

        with open(os.path.join(setup["samples"], name.rsplit(".", 1)[0] + ".truth.json")) as f:
            truth = json.load(f)["words"]
        hit, n, missing = recall(truth, doc["text"])
        found, total, ratio = found + hit, total + n, hit / n
        ratios.append(ratio)
        st = server_timing(r.headers["server-timing"])
        timings.append(st)
        report.append("%-11s %5.1f%% words  detect-run %6.1f ms  ocr-run %6.1f ms  missing %s"
                      % (name, 100 * ratio, st["detect-run"], st["ocr-run"], missing))
    overall = found / total
    summary = "\n".join(report) + "\noverall %.1f%% of %d words; mean per page: " \
        "detect-run %.1f ms, ocr-run %.1f ms, total %.1f ms" % (
            100 * overall, total,
            sum(t["detect-run"] for t in timings) / len(timings),
            sum(t["ocr-run"] for t in timings) / len(timings),
            sum(t["total"] for t in timings) / len(timings))
    print("\n" + summary)
    assert overall >= MIN_RECALL, summary
    assert min(ratios) >= MIN_PAGE_RECALL, summary
    assert b.stop() == 0
    assert b.leftover_groups() == []


def test_documents_pipeline_rejects_what_is_not_a_page(baton, setup):
    b = baton(setup["config"])
    for body in [b"hello, this is not an image", b"", b"%PDF-1.7\nnot really a PDF\n",
                 b"\x89PNG\r\n\x1a\n" + b"\0" * 64]:
        r = b.post("documents", body)
        assert r.status == 422, (body, r)
        assert r.json()["code"] == "rejected" and r.json()["stage"] == "detect", r.json()
    # The ocr stage checks its input too, rather than crash on it.
    for body, why in [(b"no header line", "JSON line"),
                      (b"[1,2]\n", "regions"),
                      (b'{"regions":[[1,2,3]]}\n' + _tiny_png(), "region 0"),
                      (b'{"regions":[]}\nnot an image', "decoded")]:
        r = b.post("ocr-only", body)
        assert r.status == 422, (body, r)
        assert r.json()["stage"] == "ocr" and why in r.json()["error"], r.json()
    # Both stages still serve after all that.
    r = b.post("ocr-only", b'{"regions":[[0,0,4,4],[-10,-10,5,5]],"source":"png"}\n'
               + _tiny_png())
    assert r.status == 200 and r.json()["source"] == "png", r
    # The box outside the page is dropped; tesseract may see a "_" in the other.
    assert all(reg["box"] == [0, 0, 4, 4] for reg in r.json()["regions"]), r
    assert r.json()["timings"]["detect_ms"] is None
    st = b.status()["stages"]
    assert all(rep["restarts"] == 0 for s in ("detect", "ocr") for rep in st[s]["replicas"])
    assert b.stop() == 0
    assert b.leftover_groups() == []


def _tiny_png():
    """A valid 8x8 white grayscale PNG, made without any imaging library."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\0" + b"\xff" * 8 for _ in range(8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_the_run_example_of_operations_md_matches_a_real_run(setup, tmp_path):
    # docs/operations.md shows a `baton run` of this example and its summary:
    # run the very command (paths made local) and compare the counts.
    if SANITIZED:
        pytest.skip("a check of the docs: the plain run makes it; ASan would add 30 s of OCR")
    with open(os.path.join(ROOT, "docs", "operations.md")) as f:
        doc = f.read()
    block = re.search(r"```\n\$ (baton run examples/documents/baton\.yaml .*?)\n(.*?)```", doc, re.S)
    assert block, "docs/operations.md has no documents `baton run` example any more"
    argv = shlex.split(block.group(1))
    shown = block.group(2)
    cfg = tmp_path / "baton.yaml"
    cfg.write_text(setup["config"])
    local = {"baton": os.path.join(BUILD, "baton"), "examples/documents/baton.yaml": str(cfg),
             "samples/": setup["samples"] + "/", "out/": str(tmp_path / "out")}
    argv = [local.get(a, a) for a in argv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300 * SLOW)
    want = re.search(r"succeeded (\d+)\s+failed (\d+)\s+skipped (\d+)", shown).groups()
    got = re.search(r"succeeded (\d+)\s+failed (\d+)\s+skipped (\d+)", r.stdout)
    assert got and got.groups() == want, (r.stdout, r.stderr)
    n = re.search(r"(\d+) inputs", shown).group(1)
    assert "%s inputs" % n in r.stdout
    assert r.returncode == (0 if want[1] == "0" else 1)
