"""The stations example's `validate` stage: compares what recognise saw with
the order in orders.json and answers the session's verdict.

The items found are counted per frame; for each item the count is the one
most frames agree on (a frame that misses or doubles a card is outvoted).
Answer (application/json), the session's result:
    {"order_id": "1042", "station": "station1", "known": true,
     "expected": {"fries": 1, "cola": 2}, "found": {"fries": 1, "cola": 2},
     "missing": {}, "extra": {}, "correct": true, "frames": 3,
     "total": 6.3}
An order id that orders.json does not list gets "known": false and
"correct": false. ORDERS and INVENTORY name the files.
"""

import collections
import json
import os

import baton_worker as bw


def init():
    with open(os.environ.get("ORDERS", "orders.json")) as f:
        orders = {o["id"]: o for o in json.load(f)["orders"]}
    with open(os.environ.get("INVENTORY", "inventory.json")) as f:
        prices = {i["name"]: i["price"] for i in json.load(f)["items"]}
    bw.log("validate: %d orders, %d items in the inventory" % (len(orders), len(prices)))
    return orders, prices


def vote(frames):
    """Per item name, the count that most frames show (ties: the larger)."""
    names = {n for labels in frames for n in labels}
    found = {}
    for n in sorted(names):
        counts = collections.Counter(labels.count(n) for labels in frames)
        best = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
        if best:
            found[n] = best
    return found


def handle(payload, meta, state):
    orders, prices = state
    try:
        m = json.loads(payload)
        frames = [it.get("labels", []) for it in m["items"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise bw.Reject("not a recognised session manifest: %s" % e)
    oid = m.get("session")
    order = orders.get(oid)
    expected = dict(collections.Counter(order["items"])) if order else {}
    found = vote(frames)
    missing = {n: c - found.get(n, 0) for n, c in expected.items() if c > found.get(n, 0)}
    extra = {n: c - expected.get(n, 0) for n, c in found.items() if c > expected.get(n, 0)}
    unknown = sorted(n for n in found if n not in prices)
    return {"order_id": oid, "station": m.get("station"), "known": order is not None,
            "expected_station": order["station"] if order else None,
            "expected": expected, "found": found, "missing": missing, "extra": extra,
            "unknown_items": unknown,
            "correct": order is not None and not missing and not extra,
            "frames": len(frames), "frames_seen": m.get("frames_seen"),
            "close_reason": m.get("close_reason"),
            "total": round(sum(prices.get(n, 0) * c for n, c in found.items()), 2)}


if __name__ == "__main__":
    bw.run(handle, init=init)
