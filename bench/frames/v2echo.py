"""bench/frames' v2 stage for the shared-memory figures: a request of one
UINT8 tensor "x" in binary passes through unchanged (a view of its memfd,
handed back), and the last stage (FRAMES_V2_LAST=1) answers it as the
binary output "out_x" through the SDK's v2 helpers: x's bytes are a view
of the input (views=True), and v2.response writes them into the client's
output region itself when the output has one (else it joins them behind
the answer's header: one copy)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "sdk", "python"))
import baton_worker as bw  # noqa: E402

LAST = os.environ.get("FRAMES_V2_LAST") == "1"


def handle(payload, meta):
    if not LAST:
        return payload, {"v2_header_length": meta["v2_header_length"]}
    req = bw.v2.parse(payload, meta)
    x = req.input("x")
    return bw.v2.response([bw.v2.Tensor("out_x", "UINT8", x.shape, raw=x.raw)], req)


bw.run(handle, views=True)
