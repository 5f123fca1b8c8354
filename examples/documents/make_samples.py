#!/usr/bin/python3
"""Generates the documents example's sample pages: P&ID / PLC-like diagram
sheets (equipment boxes, connecting lines with arrows, instrument bubbles,
line numbers, notes and a title block), rendered with a real TrueType font
so that OCR can read them.

    /usr/bin/python3 make_samples.py DIR [--pages 6]

writes into DIR, for each page N:

    page-N.png          the page, 1754x1240 (A4 landscape at 150 dpi)
    page-N.pdf          odd pages only: the same page as a one-page PDF
    page-N.truth.json   {"words": [...]} every word drawn, in drawing order

Output is deterministic (fixed seed, no timestamps): with the same Pillow
and fonts, pages and truth files are the same on every run.  Needs Pillow (Debian: python3-pil) and
DejaVu fonts (Debian: fonts-dejavu-core); nothing from PyPI.
"""
import argparse
import json
import os
import random
import sys

from PIL import Image, ImageChops, ImageDraw, ImageFont

SEED = 20240318
WIDTH, HEIGHT = 1754, 1240   # A4 landscape at 150 dpi, as drawings usually are
DPI = 150
FONT_DIR = "/usr/share/fonts/truetype/dejavu"

# (kind, tag prefix, tag digits, specs): labels look like "PUMP P-101"; a
# spec is a format and the values it may take.
EQUIPMENT = [
    ("PUMP", "P", 3, [("FLOW {} M3/H", [45, 80, 120, 350]), ("HEAD {} M", [12, 25, 40])]),
    ("VALVE", "V", 4, [("SIZE DN{}", [25, 50, 80, 150]), ("FAIL CLOSED", [0])]),
    ("TANK", "T", 1, [("LEVEL {} PCT", [40, 65, 80]), ("VOLUME {} M3", [12, 45, 120])]),
    ("HEAT EXCHANGER", "E", 3, [("DUTY {} KW", [250, 480, 1200])]),
    ("COMPRESSOR", "C", 3, [("PRESSURE {} BAR", [6, 8, 12]), ("SPEED {} RPM", [1450, 2900])]),
    ("FILTER", "F", 3, [("MESH {} MICRON", [25, 50, 100])]),
    ("MOTOR", "M", 3, [("POWER {} KW", [4, 15, 45, 90]), ("SPEED {} RPM", [960, 1450])]),
    ("PLC CPU", "PLC", 2, [("INPUT 24 VDC", [0]), ("SLOT {}", [1, 2, 3])]),
    ("ANALOG INPUT", "AI", 2, [("RANGE 4-20 MA", [0]), ("CHANNEL {}", [1, 4, 8, 16])]),
    ("COOLER", "K", 3, [("OUTLET {} DEGC", [25, 35, 45])]),
]
INSTRUMENTS = ["FT", "PT", "TT", "LT", "FIC", "PIC", "LIC", "TIC"]
LINE_SERVICES = ["CW", "PW", "ST", "IA", "HW"]
SYSTEMS = ["COOLING WATER LOOP", "FEED WATER SYSTEM", "STEAM HEADER",
           "COMPRESSED AIR SUPPLY", "RAW WATER INTAKE", "HOT WATER RETURN"]
NOTES = [
    "All valves are shown in their normal position.",
    "Check the pump seal before every start.",
    "Drain the tank before opening the manway.",
    "Interlock trips the motor on high level.",
    "Flow transmitters report to the PLC every second.",
    "Keep the bypass valve locked closed.",
    "Relief valve setting is ten percent above design.",
    "Vent the exchanger after each shutdown.",
    "Operators confirm the setpoint on the panel.",
    "Spare pump starts when the duty pump fails.",
]


def font(name, size):
    return ImageFont.truetype(os.path.join(FONT_DIR, name), size)


class Page:
    """One sheet being drawn; remembers every word it writes."""

    def __init__(self, scanned):
        self.scanned = scanned
        self.img = Image.new("L", (WIDTH, HEIGHT), 255)
        self.draw = ImageDraw.Draw(self.img)
        self.words = []
        self.label = font("DejaVuSans-Bold.ttf", 30)
        self.body = font("DejaVuSans.ttf", 28)
        self.title = font("DejaVuSans-Bold.ttf", 40)
        self.mono = font("DejaVuSansMono.ttf", 28)

    def text(self, xy, s, f, anchor="la"):
        self.draw.text(xy, s, font=f, fill=0, anchor=anchor)
        self.words.extend(s.split())

    def arrow(self, a, b):
        """A straight pipe from a to b (axis-aligned) with an open arrowhead."""
        self.draw.line([a, b], fill=0, width=3)
        (x0, y0), (x1, y1) = a, b
        dx = (x1 > x0) - (x1 < x0)
        dy = (y1 > y0) - (y1 < y0)
        # Two short strokes back from the tip, at right angles to each other.
        back = 16
        for side in (-1, 1):
            tail = (x1 - dx * back + dy * side * back, y1 - dy * back + dx * side * back)
            self.draw.line([tail, (x1, y1)], fill=0, width=3)


def draw_page(n, total, rng):
    page = Page(scanned=(n in (4, 5)))
    system = SYSTEMS[(n - 1) % len(SYSTEMS)]
    drawing = "PID-%04d" % rng.randint(1000, 9999)

    page.text((80, 50), "PROCESS AND INSTRUMENTATION DIAGRAM", page.title)
    page.text((80, 105), "AREA %d %s" % (rng.randint(1, 9) * 100, system), page.body)

    # Equipment: two rows of three boxes, connected left to right and down.
    # Each box fits its label; the rows span the sheet between the margins.
    margin, box_h, pad = 80, 136, 24
    ys = [220, 560]
    boxes = []   # (x, y, width) of each box
    chosen = rng.sample(EQUIPMENT, 6)
    for row in range(2):
        items = []
        for kind, prefix, digits, specs in chosen[3 * row:3 * row + 3]:
            tag = "%s-%d" % (prefix, rng.randint(10 ** (digits - 1), 10 ** digits - 1))
            fmt, values = rng.choice(specs)
            items.append(("%s %s" % (kind, tag), fmt.format(rng.choice(values))))
        widths = [max(300, int(page.label.getlength(label)) + 2 * pad) for label, _ in items]
        gap = (WIDTH - 2 * margin - sum(widths)) // 2
        x = margin
        for (label, spec), w in zip(items, widths):
            y = ys[row]
            page.draw.rectangle([x, y, x + w, y + box_h], outline=0, width=3)
            page.text((x + pad, y + 22), label, page.label)
            page.text((x + pad, y + 78), spec, page.body)
            boxes.append((x, y, w))
            x += w + gap

    def connect(i, j):
        (x0, y0, w0), (x1, y1, w1) = boxes[i], boxes[j]
        if y0 == y1:   # same row: a horizontal pipe with its line number above
            a, b = (x0 + w0, y0 + box_h // 2), (x1 - 2, y1 + box_h // 2)
            page.arrow(a, b)
            number = "%s-%d" % (rng.choice(LINE_SERVICES), rng.randint(100, 999))
            page.text(((a[0] + b[0]) // 2, a[1] - 20), number, page.mono, anchor="mb")
            return a, b
        # Down the right-hand column, where both boxes end at the margin.
        x = WIDTH - margin - min(w0, w1) // 2
        a, b = (x, y0 + box_h), (x, y1 - 2)
        page.arrow(a, b)
        return a, b

    pipes = [connect(0, 1), connect(1, 2), connect(2, 5), connect(3, 4), connect(4, 5)]

    # Instrument bubbles (ISA style): a circle on a stub below a pipe, the
    # function letters above the loop number.
    for a, b in rng.sample([p for p in pipes if p[0][1] == p[1][1]], 2):
        cx, cy, r = (a[0] + b[0]) // 2, a[1] + 120, 50
        page.draw.line([(cx, a[1]), (cx, cy - r)], fill=0, width=2)
        page.draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=0, width=3)
        page.text((cx, cy - 4), rng.choice(INSTRUMENTS), page.body, anchor="mb")
        page.text((cx, cy + 4), str(rng.randint(100, 999)), page.body, anchor="mt")

    # Notes, bottom left.
    page.text((80, 860), "NOTES", page.label)
    for k, note in enumerate(rng.sample(NOTES, 3)):
        page.text((80, 915 + 52 * k), "%d. %s" % (k + 1, note), page.body)

    # Title block, bottom right.
    tx, ty = 1150, 880
    page.draw.rectangle([tx, ty, WIDTH - 60, HEIGHT - 60], outline=0, width=3)
    page.draw.line([(tx, ty + 100), (WIDTH - 60, ty + 100)], fill=0, width=2)
    page.text((tx + 24, ty + 24), "DRAWING %s" % drawing, page.label)
    page.text((tx + 24, ty + 124), "SHEET %d OF %d" % (n, total), page.body)
    page.text((tx + 24, ty + 180), "REV %s" % rng.choice("ABCDE"), page.body)
    page.text((tx + 24, ty + 236), "DATE 2024-0%d-%02d" % (rng.randint(1, 9), rng.randint(10, 28)),
              page.body)

    if page.scanned:
        page.img = scan(page.img, rng)
    return page


def scan(img, rng):
    """Makes a page look scanned: grey paper and sparse dark speckles.
    random.Random.randbytes keeps it deterministic (Image.effect_noise is not)."""
    paper = img.point(lambda v: 40 + v * 195 // 255)   # ink 40, paper 235
    noise = Image.frombytes("L", img.size, rng.randbytes(img.size[0] * img.size[1]))
    speckles = noise.point(lambda v: 90 if v == 0 else 255)  # about 1 pixel in 256
    return ImageChops.darker(paper, speckles)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--pages", type=int, default=6)
    args = ap.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    rng = random.Random(SEED)
    for n in range(1, args.pages + 1):
        page = draw_page(n, args.pages, rng)
        base = os.path.join(args.dir, "page-%d" % n)
        page.img.save(base + ".png", dpi=(DPI, DPI))
        if n % 2:
            # Scanner-style PDF: the page as an image, at its true resolution
            # so that rasterising at 150 dpi gives the same pixels back.
            # No dates, so that the file is the same on every run.
            page.img.save(base + ".pdf", resolution=DPI, creationDate=None, modDate=None)
        with open(base + ".truth.json", "w") as f:
            json.dump({"words": page.words}, f, indent=1)
            f.write("\n")
    print("wrote %d pages to %s" % (args.pages, args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
