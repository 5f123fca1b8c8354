#!/usr/bin/python3
"""The documents example's `detect` stage: finds the text lines on a page.

Input: a page as PNG or JPEG (anything OpenCV decodes), or a PDF (its first
page, rasterised at 150 dpi with poppler's pdftoppm).

Output, for the `ocr` stage: one JSON line, then the page as a grayscale PNG:

    {"width":1754,"height":1240,"regions":[[x,y,w,h],...],"source":"pdf","detect_ms":12.3}\\n
    <PNG bytes>

Regions are in reading order: top to bottom, then left to right along a line.

The method is classical, with no learned model, which suits printed drawings:
binarise (Otsu), take out the long horizontal and vertical strokes (boxes,
pipes, title-block rules), drop what is too large or too small to be a
character (circles, arrowheads' stems, scanner speckles), then smear the
characters sideways so that the letters of a line merge into one blob; each
blob's bounding box is a region.  Sizes are relative to the page's median
character height, so the same code works for a 150 dpi render and a 300 dpi
scan.

Runs in its own venv (python3 -m venv --system-site-packages, for Debian's
python3-opencv and python3-numpy), with baton_worker.py on PYTHONPATH.
"""
import json
import shutil
import subprocess
import tempfile
import time

import cv2
import numpy as np

import baton_worker as bw

PDF_DPI = 150
# The OCR stage reads a PNG; level 1 is several times faster to write than
# the default and the page is only a hop away, so size matters little.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]


class Detector:
    """Per-process state: the PDF rasteriser's path and the structuring
    elements, built once per size and reused for every page."""

    def __init__(self):
        self.pdftoppm = shutil.which("pdftoppm")
        if not self.pdftoppm:
            # A missing tool is the deployment's fault, not the request's:
            # failing init keeps the stage from ever saying "ready".
            raise RuntimeError("pdftoppm not found on PATH (Debian: poppler-utils)")
        self._kernels = {}

    def kernel(self, w, h):
        k = self._kernels.get((w, h))
        if k is None:
            k = self._kernels[(w, h)] = cv2.getStructuringElement(cv2.MORPH_RECT, (w, h))
        return k

    def analyse(self, gray):
        """Returns (regions, page): the text-line boxes [x, y, w, h] of a
        grayscale page in reading order, and the page without its specks."""
        # Otsu picks the ink/paper threshold per page, so grey "scanned" paper
        # and JPEG-compressed PDFs binarise as cleanly as white PNGs.
        _, ink = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
        heights = stats[1:, cv2.CC_STAT_HEIGHT]
        areas = stats[1:, cv2.CC_STAT_AREA]
        plausible = heights[(heights >= 6) & (heights <= 200) & (areas >= 12)]
        if plausible.size == 0:
            return [], gray
        char_h = max(8, int(np.median(plausible)))
        min_area = max(4, char_h // 4)

        # Scanner specks between words read as punctuation ("setpoint-on"):
        # paint them over with the paper's grey for the OCR stage.  (A full
        # stop is several times bigger than min_area.)
        speck = stats[:, cv2.CC_STAT_AREA] < min_area
        speck[0] = False
        if speck.any():
            paper = int(cv2.mean(gray, mask=cv2.bitwise_not(ink))[0])
            gray = gray.copy()
            gray[speck[labels]] = paper

        # Long straight strokes: no character has a bar three times its height.
        line_len = 3 * char_h
        lines = cv2.morphologyEx(ink, cv2.MORPH_OPEN, self.kernel(line_len, 1))
        lines |= cv2.morphologyEx(ink, cv2.MORPH_OPEN, self.kernel(1, line_len))
        text = cv2.subtract(ink, lines)

        # Keep components sized like characters.  Recomputed after the line
        # removal, which splits boxes from what touched them.
        _, marks, stats, _ = cv2.connectedComponentsWithStats(text, connectivity=8)
        keep = ((stats[:, cv2.CC_STAT_AREA] >= min_area)
                & (stats[:, cv2.CC_STAT_HEIGHT] <= 2 * char_h)
                & (stats[:, cv2.CC_STAT_WIDTH] <= 3 * char_h))
        keep[0] = False   # the background
        text = (keep.astype(np.uint8) * 255)[marks]

        # Merge the letters and words of a line: the kernel bridges gaps up
        # to 0.8 character heights sideways (a word space is about 0.4) but
        # only 0.35 up and down, less than the space between lines.
        gap = max(3, int(0.8 * char_h)) | 1
        lead = max(3, int(0.35 * char_h)) | 1
        blobs = cv2.dilate(text, self.kernel(gap, lead))
        n_blobs, _, blob_stats, _ = cv2.connectedComponentsWithStats(blobs, connectivity=8)

        boxes = []
        for i in range(1, n_blobs):
            x, y, w, h = (int(v) for v in blob_stats[i, :4])
            # The dilation grew each blob by half a kernel on every side:
            # take that off to get the ink's own box.  (Margins are the
            # OCR stage's business.)
            x, y = x + gap // 2, y + lead // 2
            w, h = w - 2 * (gap // 2), h - 2 * (lead // 2)
            if h < char_h // 2 or w < char_h // 3 or h > 4 * char_h:
                continue
            boxes.append([x, y, w, h])
        return reading_order(boxes, char_h), gray

    def rasterise_pdf(self, data, timeout):
        """First page of a PDF as a grayscale image, or bw.Reject."""
        with tempfile.TemporaryDirectory(prefix="baton-detect-") as tmp:
            src, out = tmp + "/in.pdf", tmp + "/page"
            with open(src, "wb") as f:
                f.write(data)
            try:
                r = subprocess.run(
                    # PGM, not PNG: pdftoppm compresses PNG hard, which takes
                    # ten times longer than rendering a noisy scan.
                    [self.pdftoppm, "-r", str(PDF_DPI), "-gray", "-singlefile",
                     "-f", "1", "-l", "1", src, out],
                    stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise bw.Reject("PDF took longer than %.0f s to rasterise" % timeout)
            if r.returncode != 0:
                why = r.stderr.decode("utf-8", "replace").strip().splitlines()
                raise bw.Reject("PDF could not be rasterised: %s"
                                % (why[-1] if why else "pdftoppm exited %d" % r.returncode))
            page = cv2.imread(out + ".pgm", cv2.IMREAD_GRAYSCALE)
        if page is None:
            raise bw.Reject("PDF could not be rasterised: pdftoppm wrote no page")
        return page


def reading_order(boxes, char_h):
    """Sorts boxes into lines (top to bottom), each left to right.  A box
    joins the current line when its middle is within half a character
    height of the line's first box, so slightly uneven baselines still
    read as one line."""
    boxes.sort(key=lambda b: b[1] + b[3] / 2)
    lines, mid = [], None
    for b in boxes:
        m = b[1] + b[3] / 2
        if mid is None or m - mid > char_h / 2:
            lines.append([])
            mid = m
        lines[-1].append(b)
    return [b for line in lines for b in sorted(line, key=lambda b: b[0])]


def sniff(data):
    if data.startswith(b"%PDF"):
        return "pdf"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    return "image"   # perhaps TIFF, BMP, WebP...: OpenCV decides


def init():
    det = Detector()
    # The first calls into OpenCV allocate and dispatch lazily; a blank page
    # through the whole path keeps that out of the first request's time.
    warm = np.full((200, 300), 255, np.uint8)
    cv2.putText(warm, "warm up", (20, 100), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 0, 2)
    det.analyse(warm)
    cv2.imencode(".png", warm, PNG_PARAMS)
    return det


def handle(payload, meta, det):
    began = time.monotonic()
    if not payload:
        raise bw.Reject("empty payload: expected a page as PNG, JPEG or PDF")
    source = sniff(payload)
    if source == "pdf":
        # Leave the worker time to answer within its deadline.
        left = meta.get("deadline_ms", 30000) / 1000.0
        gray = det.rasterise_pdf(payload, timeout=max(1.0, left - 1.0))
    else:
        gray = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise bw.Reject("not an image or PDF (%d bytes starting %r)"
                            % (len(payload), bytes(payload[:16])))
    regions, gray = det.analyse(gray)
    ok, png = cv2.imencode(".png", gray, PNG_PARAMS)
    if not ok:
        raise RuntimeError("could not encode the page as PNG")
    detect_ms = round((time.monotonic() - began) * 1000.0, 1)
    header = {"width": int(gray.shape[1]), "height": int(gray.shape[0]),
              "regions": regions, "source": source, "detect_ms": detect_ms}
    body = json.dumps(header, separators=(",", ":")).encode() + b"\n" + png.tobytes()
    return body, {"content_type": "application/x-baton-regions", "detect_ms": detect_ms}


if __name__ == "__main__":
    bw.run(handle, init=init)
