#!/usr/bin/python3
"""An OCR-like Python worker for bench/persistent-vs-spawn, usable both ways:

  as a persistent baton worker (no arguments): the model loads once;
  as a seed-000 one-shot script (--input IN --output OUT): it loads per call.

"The model" is real work of the kind such scripts do at start-up: import
cv2 and numpy, load two Haar cascades from Debian's opencv-data, and warm
them on a blank frame.  Per page: decode, grayscale, equalise, run the
cascade, find text-like contours."""
import json
import sys
import time

T0 = time.monotonic()
import cv2  # noqa: E402
import numpy as np  # noqa: E402

CASCADES = "/usr/share/opencv4/haarcascades/"


def load_model():
    model = [cv2.CascadeClassifier(CASCADES + "haarcascade_frontalface_default.xml"),
             cv2.CascadeClassifier(CASCADES + "haarcascade_eye.xml")]
    blank = np.zeros((240, 320), np.uint8)
    for c in model:
        c.detectMultiScale(blank)
    return model


def process(model, data):
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError("not an image")
    img = cv2.equalizeHist(img)
    faces = model[0].detectMultiScale(img, scaleFactor=1.2, minNeighbors=3)
    _, bw = cv2.threshold(img, 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    bw = cv2.dilate(bw, cv2.getStructuringElement(cv2.MORPH_RECT, (15, 3)))
    contours, _ = cv2.findContours(bw, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = [cv2.boundingRect(c) for c in contours]
    return {"regions": len(boxes), "faces": len(faces),
            "largest": max((w * h for _, _, w, h in boxes), default=0)}


if "--input" in sys.argv:
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    model = load_model()
    with open(args["--input"], "rb") as f:
        result = process(model, f.read())
    result["startup_ms"] = round((time.monotonic() - T0) * 1000, 1)
    with open(args["--output"], "w") as f:
        json.dump(result, f)
else:
    import baton_worker as bw

    def handle(payload, meta, model):
        return process(model, payload)

    bw.run(handle, init=load_model)
