"""What the stations example's cameras see, and the data that goes with it.

Shared by the RTSP server (it draws the frames), the recognise stage and its
training (they find the item cards in a frame the same way), and the demo,
test and benchmark (they make orders.json and the baton config):

    python3 scenes.py data --out DIR [--stations 2 --orders 6 --seed 1]
        writes DIR/orders.json and DIR/inventory.json
    python3 scenes.py config [--port 8554 --stations 2 ...] > baton.yaml
        prints the baton config (examples/stations/baton.yaml is its output)
    python3 scenes.py video --orders orders.json --station station2 --out s2.avi
        writes what the RTSP server would stream for station2, as a file
    python3 scenes.py frame --out f.jpg [--order 0]
        draws one frame of the default orders, to look at

A frame is 640x480: a dark counter, the order's id written large at the top
("ORDER 1042", light on dark) and one light card per item on the tray below
it, each card showing the item's picture. Between orders the counter is
empty. The camera is not perfect: every frame has sensor noise and JPEG
artefacts, and some are blurred by motion.
"""

import argparse
import json
import os
import random
import sys
import zlib

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 640, 480
CARD = 118                     # card side, pixels
BACKGROUND = (28, 30, 34)      # BGR of the counter
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"

# The menu: name -> how its picture is drawn (draw_item below).
ITEMS = ["burger", "fries", "cola", "salad", "nuggets", "shake", "wrap", "pie"]
PRICES = {"burger": 5.9, "fries": 2.5, "cola": 1.9, "salad": 4.2,
          "nuggets": 3.9, "shake": 3.1, "wrap": 4.8, "pie": 2.2}


# --- item pictures ------------------------------------------------------------

def draw_item(img, name, cx, cy, s, rng):
    """Draws item name's picture centred at (cx, cy), about s pixels wide,
    onto the BGR image img. rng varies the drawing a little (shade, tilt)."""
    j = lambda c: tuple(int(max(0, min(255, v + rng.uniform(-18, 18)))) for v in c)
    h = s // 2
    if name == "burger":
        cv2.ellipse(img, (cx, cy - h // 3), (h, h // 2), 0, 180, 360, j((40, 110, 190)), -1)
        cv2.rectangle(img, (cx - h, cy - h // 6), (cx + h, cy + h // 8), j((40, 160, 60)), -1)
        cv2.rectangle(img, (cx - h, cy + h // 8), (cx + h, cy + h // 3), j((30, 50, 120)), -1)
        cv2.ellipse(img, (cx, cy + h // 3), (h, h // 4), 0, 0, 180, j((40, 110, 190)), -1)
    elif name == "fries":
        for k in range(6):
            x = cx - h // 2 + k * h // 5
            cv2.rectangle(img, (x, cy - h), (x + h // 9, cy), j((40, 210, 240)), -1)
        pts = np.array([[cx - h * 2 // 3, cy - h // 5], [cx + h * 2 // 3, cy - h // 5],
                        [cx + h // 2, cy + h], [cx - h // 2, cy + h]], np.int32)
        cv2.fillPoly(img, [pts], j((40, 40, 200)))
    elif name == "cola":
        cv2.rectangle(img, (cx - h // 2, cy - h), (cx + h // 2, cy + h), j((30, 30, 170)), -1)
        for k in range(-h // 2, h // 2, 3):
            y = int(cy + (h // 5) * np.sin(k / max(1, h / 6)))
            cv2.circle(img, (cx + k, y), 2, j((240, 240, 240)), -1)
    elif name == "salad":
        cv2.circle(img, (cx, cy), h, j((50, 170, 70)), -1)
        for _ in range(7):
            a, r = rng.uniform(0, 6.28), rng.uniform(0, h * 0.7)
            cv2.circle(img, (int(cx + r * np.cos(a)), int(cy + r * np.sin(a))), max(2, h // 8),
                       j((50, 60, 210)), -1)
    elif name == "nuggets":
        for dx, dy in ((-h // 2, -h // 3), (h // 2, -h // 3), (0, h // 2)):
            cv2.ellipse(img, (cx + dx, cy + dy), (h // 2, h // 3), rng.uniform(-30, 30), 0, 360,
                        j((50, 140, 215)), -1)
    elif name == "shake":
        pts = np.array([[cx - h * 2 // 3, cy - h // 2], [cx + h * 2 // 3, cy - h // 2],
                        [cx + h // 3, cy + h], [cx - h // 3, cy + h]], np.int32)
        cv2.fillPoly(img, [pts], j((190, 140, 240)))
        cv2.line(img, (cx + h // 6, cy - h // 2), (cx + h // 2, cy - h), j((60, 60, 60)), max(2, s // 24))
    elif name == "wrap":
        rot = ((cx, cy), (s * 0.95, s * 0.42), 35 + rng.uniform(-8, 8))
        box = cv2.boxPoints(rot).astype(np.int32)
        cv2.fillPoly(img, [box], j((140, 200, 225)))
        for t in (-0.25, 0.0, 0.25):
            p = (int(cx + t * s * 0.8), int(cy + t * s * 0.56))
            cv2.circle(img, p, max(2, s // 16), j((60, 150, 90)), -1)
    elif name == "pie":
        pts = np.array([[cx - h, cy + h * 2 // 3], [cx + h, cy + h * 2 // 3], [cx, cy - h]], np.int32)
        cv2.fillPoly(img, [pts], j((70, 180, 230)))
        cv2.polylines(img, [pts], True, j((30, 90, 150)), max(2, s // 20))
    else:
        raise ValueError("unknown item %r" % name)


def draw_card(img, name, x, y, rng, side=CARD):
    """A light card with the item's picture, top-left corner at (x, y)."""
    shade = int(rng.uniform(205, 235))
    cv2.rectangle(img, (x, y), (x + side, y + side), (shade, shade, shade), -1)
    s = int(side * rng.uniform(0.62, 0.74))
    cx = x + side // 2 + int(rng.uniform(-6, 6))
    cy = y + side // 2 + int(rng.uniform(-6, 6))
    draw_item(img, name, cx, cy, s, rng)


# --- frames -----------------------------------------------------------------

_fonts = {}


def _seed(*parts):
    """A seed from parts that is the same in every process (hash() of a str
    is not: Python salts it per process)."""
    return zlib.crc32(repr(parts).encode())


def _font(size):
    if size not in _fonts:
        _fonts[size] = ImageFont.truetype(FONT, size)
    return _fonts[size]


def layout(order, seed):
    """Where an order's cards lie on the tray: [(item, x, y)], fixed for the
    whole order (the tray does not move), random per order."""
    rng = random.Random(seed)
    items = order["items"]
    n = len(items)
    gap = (WIDTH - 40 - n * CARD) // max(1, n)
    x = 20 + rng.randint(0, max(0, gap // 2))
    out = []
    for name in items:
        y = 215 + rng.randint(0, HEIGHT - 215 - CARD - 12)
        out.append((name, x, y))
        x += CARD + gap + rng.randint(-gap // 4, 0) if gap > 8 else CARD + 4
    return out


def render(order, frame_no, seed=0, blur=None):
    """One BGR frame of order (None: the empty counter between orders).
    frame_no and seed pick the noise; blur (None: decided by frame_no) is
    the length of the motion blur in pixels, 0 for a sharp frame."""
    rng = random.Random(_seed(seed, frame_no, order["id"] if order else ""))
    img = _still(order, seed)
    if blur is None:
        blur = (0, 0, 15, 0, 9)[frame_no % 5]    # two blurred frames in five
    if blur:
        img = cv2.blur(img, (blur, 1))           # horizontal motion blur
    return cv2.add(img, _noise(rng.randrange(len(_NOISE_SEEDS))), dtype=cv2.CV_8U)


# Sensor noise: drawing a fresh field per frame costs more than the rest of
# the frame, so frames pick one of a few drawn once (mean 0, sd 4, centred
# on 128 in an int16 field that cv2.add saturates back into 0..255).
_NOISE_SEEDS = (11, 12, 13, 14, 15, 16, 17, 18)
_noise_bank = {}


def _noise(i):
    if i not in _noise_bank:
        field = np.random.default_rng(_NOISE_SEEDS[i]).normal(0, 4, (HEIGHT, WIDTH, 3))
        _noise_bank[i] = np.round(field).astype(np.int16)
    return _noise_bank[i]


_stills = {}


def _still(order, seed):
    """The order's tray as the camera would see it standing still, without
    noise: the same for every frame of the order, so it is drawn once."""
    key = (seed, order["id"] if order else None)
    if key not in _stills:
        if len(_stills) > 16:
            _stills.clear()
        img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        img[:] = BACKGROUND
        if order is not None:
            pil = Image.fromarray(img[:, :, ::-1])
            d = ImageDraw.Draw(pil)
            d.text((40, 50), "ORDER %s" % order["id"], font=_font(68), fill=(238, 238, 232))
            img = np.array(pil)[:, :, ::-1].copy()
            card_rng = random.Random(_seed(seed, order["id"]))
            for name, x, y in layout(order, _seed(seed, order["id"], "tray")):
                draw_card(img, name, x, y, card_rng)
        img.flags.writeable = False
        _stills[key] = img
    return _stills[key]


def timeline(orders, fps, order_s, gap_s, lead_s):
    """The frames a station shows, in order: a list of (order or None, n)
    runs, n frames each: lead_s of empty counter, then each order for
    order_s seconds followed by gap_s of empty counter."""
    runs = [(None, int(lead_s * fps))]
    for o in orders:
        runs.append((o, int(order_s * fps)))
        runs.append((None, int(gap_s * fps)))
    return runs


# --- finding the cards (recognise and its training) ----------------------------

def find_cards(img):
    """Boxes (x, y, w, h) of the light, square-ish cards in a BGR frame, left
    to right. The outline of each light blob is taken with what it encloses
    (the darker picture on the card), so two cards stay two however close
    they lie; the order's text is light too, but its letters are small."""
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    _, mask = cv2.threshold(gray, 150, 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for c in contours:
        x, y, w, h = cv2.boundingRect(c)
        if w < CARD * 0.6 or h < CARD * 0.6 or w > CARD * 1.6 or h > CARD * 1.6:
            continue
        if not 0.7 < w / h < 1.4 or cv2.contourArea(c) < 0.6 * w * h:
            continue
        boxes.append((int(x), int(y), int(w), int(h)))
    return sorted(boxes)


def crop(img, box, size=48):
    """The card at box, resized to size x size, as float32 CHW in [0, 1]."""
    x, y, w, h = box
    c = cv2.resize(img[y:y + h, x:x + w], (size, size), interpolation=cv2.INTER_AREA)
    return (c[:, :, ::-1].astype(np.float32) / 255.0).transpose(2, 0, 1)


# --- orders and config ------------------------------------------------------------

def make_orders(stations, per_station, seed):
    """{"orders": [{"id", "station", "items"}]}: per_station orders for each
    of the stations, 1 to 4 items each, ids unique."""
    rng = random.Random(seed)
    ids = rng.sample(range(100, 10000), stations * per_station)
    orders = []
    for s in range(stations):
        for k in range(per_station):
            n = rng.choice((1, 2, 2, 3, 3, 4))
            items = [rng.choice(ITEMS) for _ in range(n)]
            orders.append({"id": str(ids[s * per_station + k]), "station": "station%d" % (s + 1),
                           "items": items})
    return {"orders": orders}


def inventory():
    return {"items": [{"name": n, "price": PRICES[n]} for n in ITEMS]}


def write_data(out, stations, per_station, seed):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "orders.json"), "w") as f:
        json.dump(make_orders(stations, per_station, seed), f, indent=1)
        f.write("\n")
    with open(os.path.join(out, "inventory.json"), "w") as f:
        json.dump(inventory(), f, indent=1)
        f.write("\n")


def config_text(port=8554, stations=2, workdir=None, spool="spool", data=".",
                model="model/items.pt", build="../../build", python="/usr/bin/python3",
                listen=None, idle_timeout_ms=2500, flow="block", credits=8,
                recognise_replicas=1, ocr_replicas=1, station_urls=None, camera_max=None):
    """The baton config of the example. With workdir (an absolute path to
    this folder) every stage runs there, so that the config may live
    anywhere (the demo, test and benchmark write theirs in a work dir)."""
    wd = "    workdir: %s\n" % workdir if workdir else ""
    sdk = "../../sdk/python"
    env_py = "{PYTHONPATH: %s, OMP_NUM_THREADS: \"1\"}" % sdk
    urls = station_urls or ["rtsp://127.0.0.1:%d/s%d" % (port, i + 1) for i in range(stations)]
    lines = []
    if listen:
        lines.append("listen: %s" % listen)
    lines.append("""# The stations example (README.md next to this file): camera stations read
# RTSP streams of orders; OCR reads each frame's order id; a session per
# order goes through select -> recognise -> validate.
stages:
  camera:                               # one replica = one station
    kind: source
    command: [%(py)s, camera.py]
%(wd)s    env: %(env)s
    replicas: {min: 1, max: %(max)d, initial: %(n)d}
    start_timeout_ms: 30000
    restart: {backoff_ms: 2000, backoff_max_ms: 60000, max_failures: 5}
  ocr:                                  # C, tesseract's C API
    command: [%(build)s/examples/stations/ocr_order]
%(wd)s    env: {OMP_THREAD_LIMIT: "1"}
    replicas: %(orr)d
    timeout_ms: 20000
  select:                               # OpenCV: the sharpest frames
    command: [%(py)s, select_frames.py]
%(wd)s    env: %(env)s
    timeout_ms: 20000
  recognise:                            # PyTorch CNN, batched across stations
    command: [%(py)s, recognise.py]
%(wd)s    env: {PYTHONPATH: %(sdk)s, OMP_NUM_THREADS: "1", ITEMS_MODEL: %(model)s}
    replicas: %(rr)d
    batch: {max_size: 8, window_ms: 50}
    start_timeout_ms: 120000
    timeout_ms: 30000
  validate:                             # compares with orders.json
    command: [%(py)s, validate.py]
%(wd)s    env: {PYTHONPATH: %(sdk)s, ORDERS: %(data)s/orders.json, INVENTORY: %(data)s/inventory.json}
    timeout_ms: 10000

streams:
  orders:
    source: camera
    stations:""" % {"py": python, "wd": wd, "env": env_py, "n": len(urls),
                    "max": max(camera_max or 0, len(urls)), "build": build,
                    "sdk": sdk, "model": model, "rr": recognise_replicas, "orr": ocr_replicas,
                    "data": data})
    for i, u in enumerate(urls):
        lines.append("      - {name: station%d, url: \"%s\"}" % (i + 1, u))
    lines.append("""    items: [ocr]
    session:
      key: order_id
      idle_timeout_ms: %(idle)d
      max_duration_ms: 60000
      max_items: 200
      missing_key: ignore               # frames of the empty counter
    process: [select, recognise, validate]
    flow: {credits: %(credits)d, overflow: %(flow)s}
    spool: %(spool)s
    results: results.jsonl
""" % {"idle": idle_timeout_ms, "credits": credits, "flow": flow, "spool": spool})
    return "\n".join(lines)


def write_video(path, orders, fps=2, order_s=5.0, gap_s=3.0, lead_s=2.0, seed=0):
    """The station's timeline as a Motion-JPEG AVI: what the RTSP server
    streams, as a file, for a file:// station."""
    out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (WIDTH, HEIGHT))
    if not out.isOpened():
        raise RuntimeError("cannot write %s" % path)
    k = 0
    for order, n in timeline(orders, fps, order_s, gap_s, lead_s):
        for i in range(n):
            out.write(render(order, i, seed))
            k += 1
    out.release()
    return k


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--out", required=True)
    d.add_argument("--stations", type=int, default=2)
    d.add_argument("--orders", type=int, default=6)
    d.add_argument("--seed", type=int, default=1)
    c = sub.add_parser("config")
    c.add_argument("--port", type=int, default=8554)
    c.add_argument("--stations", type=int, default=2)
    v = sub.add_parser("video")
    v.add_argument("--orders", required=True)
    v.add_argument("--station", default="station1")
    v.add_argument("--out", required=True)
    f = sub.add_parser("frame")
    f.add_argument("--out", required=True)
    f.add_argument("--order", type=int, default=0)
    f.add_argument("--frame", type=int, default=0)
    a = ap.parse_args(argv)
    if a.cmd == "data":
        write_data(a.out, a.stations, a.orders, a.seed)
    elif a.cmd == "video":
        with open(a.orders) as fh:
            orders = [o for o in json.load(fh)["orders"] if o["station"] == a.station]
        write_video(a.out, orders)
    elif a.cmd == "config":
        sys.stdout.write(config_text(port=a.port, stations=a.stations))
    else:
        orders = make_orders(2, 6, 1)["orders"]
        cv2.imwrite(a.out, render(orders[a.order], a.frame))


if __name__ == "__main__":
    main(sys.argv[1:])
