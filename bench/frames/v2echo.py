"""bench/frames' v2 stage for the shared-memory figures: a request of one
UINT8 tensor "x" in binary passes through unchanged (a view of its memfd,
handed back), and the last stage (FRAMES_V2_LAST=1) answers it as the
binary output "out_x": one copy, to put the answer's header before it."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "sdk", "python"))
import baton_worker as bw  # noqa: E402

LAST = os.environ.get("FRAMES_V2_LAST") == "1"


def handle(payload, meta):
    hl = meta["v2_header_length"]
    if not LAST:
        return payload, {"v2_header_length": hl}
    req = json.loads(bytes(payload[:hl]))
    size = req["inputs"][0]["parameters"]["binary_data_size"]
    head = json.dumps({"outputs": [{"name": "out_x", "datatype": "UINT8", "shape": [size],
                                    "parameters": {"binary_data_size": size}}]}).encode()
    return b"".join((head, payload[hl:hl + size])), {
        "content_type": "application/octet-stream", "v2_header_length": len(head)}


bw.run(handle, views=True)
