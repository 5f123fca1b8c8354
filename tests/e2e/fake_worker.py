#!/usr/bin/python3
"""The one fake worker of the end-to-end tests: the payload chooses what it
does, so every supervisor path is reachable from a test.

Payload commands (text; anything else is echoed back):
  crash             SIGKILL itself while holding the request
  crash-once:TOKEN  crash the first time TOKEN is seen, echo afterwards
  hang[:NAME]       sleep for an hour (a stuck model); with NAME, first create
                    FAKE_STATE_DIR/hanging-NAME
  garbage           write a non-protocol line on fd 3
  garbage-once:TOKEN
  hugeframe         answer with a header claiming a 4 GiB payload
  slow:MS           sleep MS milliseconds, then echo
  gate:PATH         wait until the file PATH exists (at most 120 s), then echo:
                    a test holds the replica busy exactly as long as it needs
  exit:N            exit with status N
  print:N           print N lines on stdout, then echo
  reject:TEXT       fail with retry:false
  retry:TEXT        fail with retry:true
  retry-once:TOKEN  fail with retry:true the first time, echo afterwards
  pid               answer with its pid
  surrogate         answer with meta holding a lone surrogate (a file name read
                    with surrogateescape); surrogate-reject: reject with one
  env               answer with a JSON object of its environment and cwd
  meta              answer with the request's metadata as JSON
  setmeta:JSON      answer "meta" with JSON merged into the metadata (so a
                    second fake stage answers with the metadata it got)
  padmeta:N         pass the payload on unchanged, adding N bytes of metadata
                    (key pad_<stage>): metadata grows stage after stage
  order:TAG         answer with how many order: requests this replica saw before
  alloc:MB          allocate and touch MB megabytes, hold them 3 s, then echo
  alloc-once:TOKEN:MB  the same, the first time TOKEN is seen only
  v2 requests       (meta protocol "v2") answer a v2 response (parameters.served:
                    how many v2 requests this replica has served) whose outputs are
                    the inputs renamed "out_<name>", binary when asked for; with
                    parameters.raw_answer, that text instead (not a v2 response);
                    parameters.raw_answer_file, the bytes of that file instead;
                    parameters.fake: one of crash, hang, slow:MS, gate:PATH,
                    reject:TEXT first (the same commands for v2 clients);
                    parameters.echo_deadline: the answer's parameters.deadline_ms
                    is the request's meta.deadline_ms

With FAKE_BATCH=1 the worker uses a batch handler, and each answer is the
JSON {"echo": answer, "batch_size": n, "batch_pipelines": [...], "batch": id}
describing the batch it came in (v2 answers excepted).

Environment switches:
  FAKE_STATE_DIR        where the *-once tokens are remembered
  FAKE_READY_DELAY_MS   sleep before saying ready
  FAKE_NEVER_READY_FILE never say ready while this file exists
  FAKE_WARMUP_FAIL=1    fail the warm-up request
  FAKE_IGNORE_STOP=1    ignore "stop" and SIGTERM (tests the SIGKILL step)
  FAKE_GRANDCHILD=1     start a `sleep` grandchild in its process group
  FAKE_BATCH=1          handle batches with a batch handler
  FAKE_RECORD_FILE      append each request's meta.path to this file
  FAKE_DELAY_MS         sleep this long in every request (a model's cost)
  FAKE_CONCURRENCY_DIR  hold a marker file there while handling a request,
                        and append to its "counts" file how many markers
                        (requests in hand, over every replica) it saw
"""
import json
import os
import signal
import subprocess
import sys
import time

import baton_worker as bw

STATE_DIR = os.environ.get("FAKE_STATE_DIR", "/tmp")


def first_time(token):
    """True the first time a token is seen by any replica of this test."""
    path = os.path.join(STATE_DIR, "once-" + token)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def init():
    delay = int(os.environ.get("FAKE_READY_DELAY_MS", "0"))
    if delay:
        time.sleep(delay / 1000)
    never = os.environ.get("FAKE_NEVER_READY_FILE")
    while never and os.path.exists(never):
        time.sleep(0.05)
    if os.environ.get("FAKE_GRANDCHILD"):
        subprocess.Popen(["sleep", "1000"])
    if os.environ.get("FAKE_IGNORE_STOP"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def raw_write(data):
    os.write(int(os.environ["BATON_FD"]), data)


ORDER = []


V2_SERVED = [0]


def v2_fake(cmd):
    cmd, _, arg = cmd.partition(":")
    if cmd == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if cmd == "hang":
        time.sleep(3600)
    if cmd == "slow":
        time.sleep(int(arg) / 1000)
    if cmd == "gate":
        end = time.monotonic() + 120
        while not os.path.exists(arg) and time.monotonic() < end:
            time.sleep(0.01)
    if cmd == "reject":
        raise bw.Reject(arg)


def v2_echo(payload, meta):
    req = bw.v2.parse(payload, meta)
    if "fake" in req.parameters:
        v2_fake(req.parameters["fake"])
    if "raw_answer" in req.parameters:   # a worker that does not answer v2
        return req.parameters["raw_answer"].encode()
    if "raw_answer_file" in req.parameters:   # the same, too big for a parameter
        with open(req.parameters["raw_answer_file"], "rb") as f:
            return f.read()
    outs = [bw.v2.Tensor("out_" + t.name, t.datatype, t.shape, t.data) for t in req.inputs]
    V2_SERVED[0] += 1   # the order this replica served v2 requests in
    params = {"served": V2_SERVED[0]}
    if "echo_deadline" in req.parameters:   # what baton said is left of the time
        params["deadline_ms"] = meta.get("deadline_ms")
    return bw.v2.response(outs, request=req, parameters=params)


SEEN = [0]


def handle(payload, meta):
    where = os.environ.get("FAKE_CONCURRENCY_DIR")
    if not where:
        return handle_one(payload, meta)
    SEEN[0] += 1
    marker = os.path.join(where, "active-%d-%d" % (os.getpid(), SEEN[0]))
    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    try:
        n = sum(1 for name in os.listdir(where) if name.startswith("active-"))
        fd = os.open(os.path.join(where, "counts"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"%d\n" % n)  # one write of a short line: appends do not interleave
        os.close(fd)
        return handle_one(payload, meta)
    finally:
        # Before the answer goes out, so a count never includes a finished request.
        os.unlink(marker)


DELAY_S = float(os.environ.get("FAKE_DELAY_MS", "0")) / 1000


def handle_one(payload, meta):
    if DELAY_S:
        time.sleep(DELAY_S)
    record = os.environ.get("FAKE_RECORD_FILE")
    if record and "path" in meta:
        with open(record, "a") as f:
            f.write(meta["path"] + "\n")
    if meta.get("protocol") == "v2":
        return v2_echo(payload, meta)
    if meta.get("warmup"):
        if os.environ.get("FAKE_WARMUP_FAIL"):
            raise bw.Reject("warm-up refused on purpose")
        return b"warm"
    text = payload.decode("utf-8", "replace")
    cmd, _, arg = text.partition(":")
    if cmd == "crash" or (cmd == "crash-once" and first_time(arg)):
        os.kill(os.getpid(), signal.SIGKILL)
    if cmd == "hang":
        if arg:  # hang:NAME says it is in the handler: FAKE_STATE_DIR/hanging-NAME
            open(os.path.join(STATE_DIR, "hanging-" + arg), "w").close()
        time.sleep(3600)
    if cmd == "garbage" or (cmd == "garbage-once" and first_time(arg)):
        raw_write(b"this is not a protocol message\n")
        time.sleep(3600)
    if cmd == "hugeframe":
        # The length is checked before the id: baton must refuse it unread.
        raw_write(b'{"t":"res","id":"x","len":4294967296}\n')
        time.sleep(3600)
    if cmd == "slow":
        time.sleep(int(arg) / 1000)
    if cmd == "gate":
        end = time.monotonic() + 120
        while not os.path.exists(arg) and time.monotonic() < end:
            time.sleep(0.01)
    if cmd == "alloc" or (cmd == "alloc-once" and first_time(arg.split(":")[0])):
        mb = int(arg.split(":")[-1])
        hog = bytearray(mb << 20)
        for i in range(0, len(hog), 4096):
            hog[i] = 1  # touch every page: RSS, not just address space
        time.sleep(3)
        del hog
    if cmd == "exit":
        os._exit(int(arg))
    if cmd == "print":
        out = sys.stdout
        for i in range(int(arg)):
            out.write("line %d of a chatty worker\n" % i)
        out.flush()
    if cmd == "reject":
        raise bw.Reject(arg or "rejected")
    if cmd == "retry" or (cmd == "retry-once" and first_time(arg)):
        raise bw.Retry(arg or "transient")
    if cmd == "pid":
        return str(os.getpid()).encode()
    if cmd == "surrogate":
        return b"ok", {"name": b"f\xff.txt".decode("utf-8", "surrogateescape")}
    if cmd == "surrogate-reject":
        raise bw.Reject("bad " + b"\xff".decode("utf-8", "surrogateescape") + " name")
    if cmd == "env":
        env = {k: v for k, v in os.environ.items()}
        env["cwd"] = os.getcwd()
        return json.dumps(env).encode(), {"content_type": "application/json"}
    if cmd == "meta":
        return json.dumps(meta).encode(), {"content_type": "application/json"}
    if cmd == "setmeta":
        return b"meta", json.loads(arg)
    if cmd == "padmeta":   # the same payload on, and N bytes more metadata per stage
        return payload, {"pad_" + meta.get("stage", "?"): "x" * int(arg)}
    if cmd == "order":
        ORDER.append(arg)
        return str(len(ORDER) - 1).encode()
    return payload


BATCHES = [0]


@bw.batch_handler
def handle_batch(reqs):
    BATCHES[0] += 1
    pipelines = sorted({r.meta.get("pipeline", "") for r in reqs})
    out = []
    for r in reqs:
        try:
            res = handle(r.payload, r.meta)
        except Exception as e:  # one item failing fails alone
            out.append(e)
            continue
        if r.meta.get("protocol") == "v2":
            out.append(res)
            continue
        body, meta = res if isinstance(res, tuple) else (res, {})
        doc = {"echo": body.decode("utf-8", "replace"), "batch_size": len(reqs),
               "batch_pipelines": pipelines, "batch": "%d-%d" % (os.getpid(), BATCHES[0])}
        out.append((json.dumps(doc).encode(), dict(meta, content_type="application/json")))
    return out


if os.environ.get("FAKE_IGNORE_STOP"):
    # A worker that ignores "stop": answers nothing after ready, never exits.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raw_write(b'{"t":"ready","proto":1}\n')
    while True:
        time.sleep(3600)

bw.run(handle_batch if os.environ.get("FAKE_BATCH") else handle, init=init)
