"""The seed's "before" design (seed 001), for bench/stations/run.py to
compare with: one station worker process per camera that keeps its models
loaded but starts a new GStreamer pipeline for every order.

    python3 before.py --url rtsp://... --station station1 --out DIR
        --ocr BUILD/examples/stations/ocr_order --model items.pt
        --orders orders.json --inventory inventory.json [--idle-s 2.5]

Per order: start `gst-launch-1.0 rtspsrc ! rtpjpegdepay ! videorate !
multifilesink` (1 FPS) in its own process group, OCR each frame as it
lands, and when the order ends (another order id, or --idle-s without one)
stop the pipeline, then select, recognise and validate in this process
with the example's own stage code, and append the result to
DIR/results.jsonl in the results-file format baton writes (closed_unix_ms,
latency_ms). Frames shown while the next pipeline starts are lost, as
they were in the seed. The OCR runs in the example's ocr_order worker,
spoken to over a socketpair, loaded once.

Also writes DIR/startup.jsonl: for each pipeline, how long from its start
to its first frame, and the wall-clock time of the process's first frame.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
EXAMPLE = os.path.join(ROOT, "examples", "stations")
sys.path[:0] = [EXAMPLE, os.path.join(ROOT, "sdk", "python")]

import baton_worker as bw  # noqa: E402
import recognise  # noqa: E402
import select_frames  # noqa: E402
import validate  # noqa: E402


def now_ms():
    return int(time.time() * 1000)


class Ocr:
    """The example's C OCR worker, driven over a socketpair as baton would."""

    def __init__(self, path):
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        env = dict(os.environ, BATON_FD="3", BATON_PROTO="1", BATON_STAGE="ocr",
                   BATON_REPLICA="1", OMP_THREAD_LIMIT="1")
        self.proc = subprocess.Popen([path], env=env, stdin=subprocess.DEVNULL,
                                     pass_fds=(3,) if fd != 3 else (fd,),
                                     preexec_fn=(lambda: os.dup2(fd, 3)) if fd != 3 else None)
        theirs.close()
        self.sock = ours
        self.r = ours.makefile("rb")
        self.read()   # ready

    def read(self):
        hdr = json.loads(self.r.readline())
        n = hdr.get("len", 0)
        return hdr, (self.r.read(n) if n else b"")

    def order_id(self, jpeg):
        self.sock.sendall(json.dumps({"t": "req", "id": "r", "len": len(jpeg)}).encode()
                          + b"\n" + jpeg)
        hdr, _ = self.read()
        return (hdr.get("meta") or {}).get("order_id")

    def close(self):
        self.sock.sendall(b'{"t":"stop"}\n')
        self.proc.wait(10)


class Pipeline:
    """One gst-launch-1.0 process writing the camera's frames to a folder."""

    def __init__(self, url, folder):
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.started = time.monotonic()
        self.first_frame = None
        self.proc = subprocess.Popen(
            ["gst-launch-1.0", "-q", "rtspsrc", "location=" + url, "protocols=tcp",
             "latency=200", "!", "rtpjpegdepay", "!", "videorate", "drop-only=true", "!",
             "image/jpeg,framerate=1/1", "!", "multifilesink",
             "location=" + os.path.join(folder, "f%06d.jpg")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        self.seen = 0

    def new_frames(self):
        """Frames written since the last call, oldest first. A frame is taken
        once the next one exists (multifilesink may still be writing it) or
        the pipeline has been stopped."""
        names = sorted(os.listdir(self.folder))
        done = names if self.proc.poll() is not None else names[:-1]
        out = [os.path.join(self.folder, n) for n in done[self.seen:]]
        self.seen = len(done)
        if out and self.first_frame is None:
            self.first_frame = time.monotonic()
        return out

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--station", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ocr", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--orders", required=True)
    ap.add_argument("--inventory", required=True)
    ap.add_argument("--idle-s", type=float, default=2.5)
    a = ap.parse_args(argv)
    os.environ.update(ITEMS_MODEL=a.model, ORDERS=a.orders, INVENTORY=a.inventory)
    model = recognise.init()
    vstate = validate.init()
    ocr = Ocr(a.ocr)
    os.makedirs(a.out, exist_ok=True)
    results = open(os.path.join(a.out, "results.jsonl"), "a")
    startup = open(os.path.join(a.out, "startup.jsonl"), "a")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))

    seq = 0
    first_frame_of_process = None
    carried = []        # a frame of the next order, seen by the previous pipeline
    while not stopping:
        seq += 1
        pipe = Pipeline(a.url, os.path.join(a.out, a.station, "order-%04d" % seq))
        key, frames, last_item = None, [], time.monotonic()
        if carried:
            key, frames = carried[0][0], [carried[0][1]]
        carried = []
        closed = None
        while not stopping and closed is None:
            fresh = pipe.new_frames()
            if pipe.first_frame and first_frame_of_process is None:
                first_frame_of_process = pipe.first_frame
                startup.write(json.dumps({"station": a.station,
                                          "first_frame_unix_ms": now_ms()}) + "\n")
                startup.flush()
            for path in fresh:
                with open(path, "rb") as f:
                    oid = ocr.order_id(f.read())
                if oid is None:
                    continue
                if key is not None and oid != key:
                    closed, carried = "key_change", [(oid, path)]
                    break
                key = oid
                frames.append(path)
                last_item = time.monotonic()
            if closed is None and key is not None and time.monotonic() - last_item > a.idle_s:
                closed = "idle"
            if pipe.proc.poll() is not None and closed is None and not fresh:
                time.sleep(0.5)      # the pipeline failed: start another
                break
            time.sleep(0.05)
        pipe.stop()
        startup.write(json.dumps({"station": a.station, "pipeline": seq,
                                  "first_frame_s": None if pipe.first_frame is None
                                  else round(pipe.first_frame - pipe.started, 3)}) + "\n")
        startup.flush()
        if closed is None:
            continue
        closed_ms = now_ms()
        manifest = {"stream": "orders", "station": a.station, "session": key, "session_id": key,
                    "close_reason": closed,
                    "items": [{"n": i + 1, "path": p, "meta": {}} for i, p in enumerate(frames)]}
        line = {"seq": seq, "stream": "orders", "station": a.station, "session": key,
                "session_id": key, "close_reason": closed, "items": len(frames),
                "closed_unix_ms": closed_ms}
        try:
            m = select_frames.handle(json.dumps(manifest).encode(), {})
            [m] = recognise.handle_batch([bw.Request("r", json.dumps(m).encode(), {})], model)
            if isinstance(m, BaseException):
                raise m
            verdict = validate.handle(json.dumps(m).encode(), {}, vstate)
            line.update(code="ok", result=verdict)
        except Exception as e:   # a failed order is a result too
            line.update(code="worker_error", error=str(e))
        line["latency_ms"] = now_ms() - closed_ms
        results.write(json.dumps(line) + "\n")
        results.flush()
    startup.close()
    results.close()
    ocr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
