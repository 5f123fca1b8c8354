"""The stations example's setup: trains the item classifier (itemnet.py) on
generated pictures and reports its accuracy on pictures it has not seen.

    python3 train.py --out model/items.pt [--pictures 800 --epochs 4]

The pictures are cards drawn as scenes.render draws them, blurred, noisy and
JPEG-compressed like the camera's frames, then found and cropped with
scenes.find_cards as recognise.py does. Nothing is
downloaded. Exits 1 if held-out accuracy is below --min-accuracy.
"""

import argparse
import os
import random
import sys
import time

import cv2
import numpy as np
import torch
from torch import nn

import itemnet
import scenes


def samples(n, seed):
    """(crops, labels): n cards, each drawn alone on a patch of counter the
    way scenes.render draws them in a frame (noise, motion blur, JPEG), then
    found and cropped with scenes.find_cards as recognise.py does."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    xs, ys = [], []
    side = scenes.CARD + 60
    for _ in range(n):
        label = rng.randrange(len(scenes.ITEMS))
        img = np.empty((side, side, 3), np.uint8)
        img[:] = scenes.BACKGROUND
        scenes.draw_card(img, scenes.ITEMS[label], rng.randint(5, 55), rng.randint(5, 55), rng)
        blur = rng.choice((0, 0, 0, 5, 9, 13, 15))
        if blur:
            img = cv2.blur(img, (blur, 1))
        img = np.clip(img + noise.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, rng.randint(60, 92)])
        img = cv2.imdecode(jpg, cv2.IMREAD_COLOR)
        boxes = scenes.find_cards(img)
        if len(boxes) == 1:
            xs.append(scenes.crop(img, boxes[0], itemnet.SIZE))
            ys.append(label)
    return np.stack(xs), np.array(ys, np.int64)


def main(argv):
    ap = argparse.ArgumentParser(description="train the stations example's item classifier")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pictures", type=int, default=800)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--min-accuracy", type=float, default=0.97)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    t0 = time.monotonic()
    x, y = samples(a.pictures, a.seed)
    xt, yt = samples(max(200, a.pictures // 4), a.seed + 1000)   # held out: other pictures
    print("train: %d pictures for training, %d held out (%.1fs to draw)"
          % (len(x), len(xt), time.monotonic() - t0), flush=True)

    model = itemnet.ItemNet(scenes.ITEMS)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(a.epochs):
        model.train()
        perm = torch.randperm(len(X))
        total = 0.0
        for i in range(0, len(X), 64):
            idx = perm[i:i + 64]
            xb = X[idx]
            # Brightness and contrast jitter: the camera's exposure drifts.
            xb = (xb * torch.empty(len(xb), 1, 1, 1).uniform_(0.8, 1.2)
                  + torch.empty(len(xb), 1, 1, 1).uniform_(-0.08, 0.08)).clamp(0, 1)
            opt.zero_grad()
            loss = loss_fn(model(xb), Y[idx])
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        model.eval()
        labels, _ = itemnet.predict(model, list(xt))
        acc = np.mean([scenes.ITEMS.index(l) == t for l, t in zip(labels, yt)])
        print("train: epoch %d loss %.3f held-out accuracy %.1f%%"
              % (epoch + 1, total / len(X), 100 * acc), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    itemnet.save(model, a.out)
    print("train: saved %s in %.1fs; held-out accuracy %.1f%% on %d pictures"
          % (a.out, time.monotonic() - t0, 100 * acc, len(xt)), flush=True)
    return 0 if acc >= a.min_accuracy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
