#!/usr/bin/python3
"""The item and session stages of the stream tests (argv[1] says which).

item:     reads "key=K;n=N" and answers meta {"order_id": K} (no key when K
          is empty, the integer 7 when K is "#int"); STREAM_ITEM_DELAY_MS
          slows each item down (a slow OCR), STREAM_ITEM_DELAY_PER_REPLICA_MS
          by that much times the replica number (replicas finish out of order).
session:  reads the manifest of a closed session, checks that every item
          file exists and holds an item of that session, and answers
          {"session", "station", "close_reason", "items": ["n=1", ...]}.
          STREAM_SESSION_GATE: while that file does not exist, wait (a test
          holds sessions in the process stage).  STREAM_SESSION_LOG: append
          "station/session_id" of every session processed (to count
          processings, not results).  STREAM_SESSION_PAD: N zeros more in
          the answer, as "pad" (a large result).
"""
import json
import os
import sys
import time

import baton_worker as bw

MODE = sys.argv[1]


def item(payload, meta):
    delay = int(os.environ.get("STREAM_ITEM_DELAY_MS", "0"))
    delay += int(os.environ.get("STREAM_ITEM_DELAY_PER_REPLICA_MS", "0")) * int(bw.replica())
    if delay:
        time.sleep(delay / 1000.0)
    fields = dict(f.split("=", 1) for f in payload.decode().split(";") if "=" in f)
    key = fields.get("key", "")
    out = {}
    if key == "#int":
        out["order_id"] = 7
    elif key:
        out["order_id"] = key
    return payload, out


def session(payload, meta):
    gate = os.environ.get("STREAM_SESSION_GATE")
    end = time.monotonic() + 120
    while gate and not os.path.exists(gate) and time.monotonic() < end:
        time.sleep(0.02)
    doc = json.loads(payload)
    names = []
    for it in doc["items"]:
        with open(it["path"], "rb") as f:
            body = f.read()
        fields = dict(f.split("=", 1) for f in body.decode().split(";") if "=" in f)
        if fields.get("key") != doc["session"]:
            raise bw.Reject("item %s of session %s is of key %r" % (it["path"], doc["session"],
                                                                   fields.get("key")))
        names.append("n=" + fields["n"])
    log = os.environ.get("STREAM_SESSION_LOG")
    if log:
        with open(log, "a") as f:
            f.write("%s/%s\n" % (doc["station"], doc["session_id"]))
    answer = {"session": doc["session"], "station": doc["station"],
              "close_reason": doc["close_reason"], "items": names,
              "meta_items": meta.get("items")}
    pad = int(os.environ.get("STREAM_SESSION_PAD", "0"))
    if pad:
        answer["pad"] = [0] * pad
    return json.dumps(answer).encode(), {"content_type": "application/json"}


bw.run(item if MODE == "item" else session)
