"""The stations example's camera: a baton source (kind: source) that reads
one station's video with GStreamer and emits one JPEG frame a second.

    rtsp://...   rtspsrc (RTP over TCP) ! rtpjpegdepay ! videorate: the
                 camera's own JPEG frames, not decoded or encoded again
    file://...   uridecodebin ! videoconvert ! videorate ! jpegenc: any
                 video GStreamer can decode; read as fast as baton takes it

The url is BATON_SOURCE_URL (the station's, from the config); CAMERA_FPS
sets the rate (default 1). Each frame is emitted with meta {"content_type":
"image/jpeg", "ts_ms": wall clock, "pts_ms": the stream's time}.

When the stream fails (the server does not answer, the connection drops)
the camera says why on stderr and exits 1: baton restarts it with backoff.
At the end of a file it sends eos and waits for baton's stop, so that the
file is not played again.
"""

import os
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
from gi.repository import Gst, GstApp  # noqa: E402,F401

import baton_worker as bw  # noqa: E402

PULL_NS = 200 * 1000 * 1000    # wait at most this long for a frame between polls


def pipeline_for(url, fps):
    sink = "appsink name=sink sync=false emit-signals=false"
    if url.startswith("rtsp://"):
        # A live camera: keep the newest frames when baton holds us back,
        # so that the RTSP session never stalls.
        return ("rtspsrc location=%s protocols=tcp latency=200 ! rtpjpegdepay ! "
                "videorate drop-only=true ! image/jpeg,framerate=%d/1 ! "
                "%s max-buffers=2 drop=true" % (url, fps, sink))
    if url.startswith("file://"):
        return ("uridecodebin uri=%s ! videoconvert ! videorate ! "
                "video/x-raw,framerate=%d/1 ! jpegenc quality=90 ! "
                "%s max-buffers=2 drop=false" % (url, fps, sink))
    raise SystemExit("camera: unsupported url %r (rtsp:// or file://)" % url)


def bus_error(pipeline):
    """The text of the first error on the pipeline's bus, or None."""
    msg = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
    if msg is None:
        return None
    err, debug = msg.parse_error()
    return "%s (%s)" % (err.message, (debug or "").split("\n")[0])


def init():
    Gst.init(None)
    url = os.environ.get("BATON_SOURCE_URL", "")
    fps = int(os.environ.get("CAMERA_FPS", "1"))
    pipeline = Gst.parse_launch(pipeline_for(url, fps))
    return pipeline


def produce(src, pipeline):
    sink = pipeline.get_by_name("sink")
    url = src.url
    began = time.monotonic()
    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        raise SystemExit("camera %s: cannot start the pipeline for %s" % (src.station, url))
    frames = 0
    try:
        while True:
            sample = sink.try_pull_sample(PULL_NS)
            if sample is None:
                err = bus_error(pipeline)
                if err:
                    bw.log("camera %s: %s: %s" % (src.station, url, err))
                    raise SystemExit(1)
                if not sink.is_eos():
                    if not src.poll(0):
                        return
                    continue
                if url.startswith("rtsp://"):
                    bw.log("camera %s: the stream %s ended" % (src.station, url))
                    raise SystemExit(1)
                bw.log("camera %s: end of %s after %d frames" % (src.station, url, frames))
                src.eos()
                while src.poll(1.0):
                    pass
                return
            buf = sample.get_buffer()
            ok, info = buf.map(Gst.MapFlags.READ)
            if not ok:
                continue
            try:
                data = bytes(info.data)
            finally:
                buf.unmap(info)
            meta = {"content_type": "image/jpeg", "ts_ms": int(time.time() * 1000)}
            if buf.pts != Gst.CLOCK_TIME_NONE:
                meta["pts_ms"] = buf.pts // Gst.MSECOND
            if frames == 0:
                bw.log("camera %s: first frame from %s after %.2fs"
                       % (src.station, url, time.monotonic() - began))
            if not src.emit(data, meta):
                return
            frames += 1
    finally:
        pipeline.set_state(Gst.State.NULL)


if __name__ == "__main__":
    bw.run_source(produce, init=init)
