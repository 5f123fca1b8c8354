"""A worker for the PostgreSQL run tests: takes a source row (or a page, a
list of rows) as JSON and answers {id, score: 2*v}.  The row's `tag`
chooses a failure: "reject" (the worker refuses it), "badvalue" (a score the
sink's double precision column cannot take), "nokey" (a result without the
key field), "big:N" (N zeros more in the result, as "pad").  ROW_DELAY_MS
slows each row, so a test can kill a run midway."""
import os
import time

import baton_worker as bw

DELAY = float(os.environ.get("ROW_DELAY_MS", "0")) / 1000.0


def one(row):
    if DELAY:
        time.sleep(DELAY)
    tag = row.get("tag") or ""
    if tag == "reject":
        raise bw.Reject("row %s is tagged reject" % row["id"])
    out = {"id": row["id"], "score": 2 * row["v"], "note": "pid %d" % os.getpid()}
    if tag == "badvalue":
        out["score"] = "not a number"
    if tag == "nokey":
        del out["id"]
    if tag.startswith("big:"):
        out["pad"] = [0] * int(tag[4:])
    return out


def handle(payload, meta):
    import json
    data = json.loads(payload)
    if isinstance(data, list):
        # A page: rejected rows are left out of the answer (the test checks
        # they never reach the sink).
        out = []
        for row in data:
            try:
                out.append(one(row))
            except bw.Reject:
                pass
        return out
    return one(data)


bw.run(handle)
