"""The stations example's `select` stage: keeps the sharpest frames of a
session (OpenCV, variance of the Laplacian: a blurred frame has few edges).

Input and output: the session manifest baton sends (docs: streams), JSON
    {"stream", "station", "session", ..., "items": [{"seq", "path", "meta"}, ...]}
The answer is the same manifest with at most SELECT_KEEP items (default 3),
the sharpest, in their stream order, each with its "sharpness", plus
"frames_seen" (how many the session had). A session with no readable frame
is rejected.
"""

import json
import os

import cv2

import baton_worker as bw

KEEP = int(os.environ.get("SELECT_KEEP", "3"))


def sharpness(path):
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None:
        return None
    return float(cv2.Laplacian(img, cv2.CV_64F).var())


def order_in_session(item):
    """An item's place in its session: "n" in baton's manifest ("seq" in
    early drafts of the spec)."""
    return item.get("n", item.get("seq", 0))


def handle(payload, meta):
    try:
        manifest = json.loads(payload)
        items = manifest["items"]
    except (ValueError, KeyError, TypeError) as e:
        raise bw.Reject("not a session manifest: %s" % e)
    scored = []
    for it in items:
        s = sharpness(it["path"])
        if s is not None:
            scored.append(dict(it, sharpness=round(s, 1)))
    if not scored:
        raise bw.Reject("none of the session's %d frames could be read" % len(items))
    best = sorted(scored, key=lambda it: -it["sharpness"])[:KEEP]
    manifest["frames_seen"] = len(items)
    manifest["items"] = sorted(best, key=order_in_session)
    return manifest


if __name__ == "__main__":
    bw.run(handle)
