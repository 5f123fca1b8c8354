"""An RTSP server on 127.0.0.1 that plays the stations' cameras.

    python3 rtsp_server.py --orders orders.json --port 8554 [--fps 2 ...]

serves rtsp://127.0.0.1:PORT/s1, /s2 ... one stream per station of
orders.json (station1 -> /s1). Each stream shows the station's orders one
after another, each for --order-s seconds with --gap-s seconds of empty
counter between them, then the empty counter for good. The frames are drawn
by scenes.py and fed to gst-rtsp-server through appsrc, encoded as JPEG
over RTP (Debian's base and good plugins have no H.264 encoder).

Every client gets its own media, so a camera that connects (or reconnects)
sees the orders from the start: the demo's result does not depend on when
its stations came up. With --live every client sees the same timeline,
which started with the server, as with a real camera. Prints "ready PORT" once it listens; stops on SIGTERM
or SIGINT.
"""

import argparse
import json
import signal
import sys
import time

import cv2
import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

import scenes  # noqa: E402


class Station:
    """The frames of one station: a timeline of runs of one picture."""

    def __init__(self, orders, fps, order_s, gap_s, lead_s, seed, live_since=None):
        self.fps = fps
        self.live_since = live_since   # monotonic start of a shared timeline
        self.seed = seed
        self.runs = scenes.timeline(orders, fps, order_s, gap_s, lead_s)

    def frame(self, k):
        """Frame k (from 0) as I420 bytes."""
        for order, n in self.runs:
            if k < n:
                break
            k -= n
        else:
            order = None
        bgr = scenes.render(order, k, self.seed)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes()


class Factory(GstRtspServer.RTSPMediaFactory):
    def __init__(self, station):
        super().__init__()
        self.station = station
        fps = station.fps
        self.set_launch(
            "( appsrc name=src is-live=true format=time "
            "caps=video/x-raw,format=I420,width=%d,height=%d,framerate=%d/1 "
            "! jpegenc quality=85 ! rtpjpegpay name=pay0 pt=96 )"
            % (scenes.WIDTH, scenes.HEIGHT, fps))
        self.set_shared(False)
        self.connect("media-configure", self.media_configure)

    def media_configure(self, _factory, media):
        src = media.get_element().get_child_by_name("src")
        state = {"k": 0}
        duration = Gst.SECOND // self.station.fps

        def need_data(appsrc, _length):
            k = state["k"]
            shown = k
            if self.station.live_since is not None:
                shown = int((time.monotonic() - self.station.live_since) * self.station.fps)
            buf = Gst.Buffer.new_wrapped(self.station.frame(shown))
            buf.pts = k * duration
            buf.duration = duration
            state["k"] = k + 1
            appsrc.emit("push-buffer", buf)

        src.connect("need-data", need_data)


def main(argv):
    ap = argparse.ArgumentParser(description="RTSP cameras for the stations example")
    ap.add_argument("--orders", required=True, help="orders.json (scenes.py data)")
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--fps", type=int, default=2)
    ap.add_argument("--order-s", type=float, default=5.0, help="seconds each order is shown")
    ap.add_argument("--gap-s", type=float, default=3.0, help="empty counter between orders")
    ap.add_argument("--lead-s", type=float, default=2.0, help="empty counter before the first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--live", action="store_true",
                    help="one wall-clock timeline for every client, as a live camera: "
                         "a client that connects late misses what was shown before")
    a = ap.parse_args(argv)

    with open(a.orders) as f:
        orders = json.load(f)["orders"]
    by_station = {}
    for o in orders:
        by_station.setdefault(o["station"], []).append(o)

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    mounts = server.get_mount_points()
    since = time.monotonic() if a.live else None
    for name in sorted(by_station, key=lambda s: int(s.replace("station", "") or 0)):
        path = "/s" + name.replace("station", "")
        st = Station(by_station[name], a.fps, a.order_s, a.gap_s, a.lead_s, a.seed, since)
        mounts.add_factory(path, Factory(st))
    if server.attach(None) == 0:
        sys.stderr.write("rtsp_server: cannot listen on 127.0.0.1:%d\n" % a.port)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print("ready %d" % a.port, flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
