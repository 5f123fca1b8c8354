"""The stations example's `recognise` stage: names the items on the tray in
each selected frame of a session, with the CNN of itemnet.py (PyTorch, CPU).

A batch handler: baton hands it several sessions at once (batch: in the
config), from any station, and every card of every frame of all of them goes
through the network in one forward pass.

Input: select's manifest. Output: the manifest with, per item, "labels"
(the item names found on its cards, left to right) and "confidence" (the
lowest of its cards' probabilities). ITEMS_MODEL names the model file that
train.py wrote.
"""

import json
import os
import time

import cv2
import torch

import baton_worker as bw
import itemnet
import scenes


def init():
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    path = os.environ.get("ITEMS_MODEL", "model/items.pt")
    if not os.path.exists(path):
        raise SystemExit("recognise: no model at %s; run the example's setup "
                         "(python3 train.py --out %s)" % (path, path))
    model = itemnet.load(path)
    bw.log("recognise: model %s, classes %s" % (path, ", ".join(model.classes)))
    return model


@bw.batch_handler
def handle_batch(requests, model):
    began = time.monotonic()
    results = [None] * len(requests)
    crops, owners = [], []      # owners[i] = (request index, item index)
    manifests = []
    for r, req in enumerate(requests):
        try:
            m = json.loads(req.payload)
            items = m["items"]
        except (ValueError, KeyError, TypeError) as e:
            results[r] = bw.Reject("not a session manifest: %s" % e)
            manifests.append(None)
            continue
        manifests.append(m)
        for i, it in enumerate(items):
            it["labels"], it["confidence"] = [], None
            img = cv2.imread(it["path"], cv2.IMREAD_COLOR)
            if img is None:
                continue
            for box in scenes.find_cards(img):
                crops.append(scenes.crop(img, box, itemnet.SIZE))
                owners.append((r, i))
    labels, conf = itemnet.predict(model, crops)
    for (r, i), name, p in zip(owners, labels, conf):
        it = manifests[r]["items"][i]
        it["labels"].append(name)
        it["confidence"] = round(min(p, it["confidence"] or 1.0), 3)
    ms = round((time.monotonic() - began) * 1000, 1)
    for r, m in enumerate(manifests):
        if m is not None:
            m["recognise"] = {"batch": len(requests), "cards": len(crops), "ms": ms}
            results[r] = m
    return results


if __name__ == "__main__":
    bw.run(handle_batch, init=init)
