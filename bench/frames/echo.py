"""bench/frames' echo stage: answers each request with its payload, unchanged.
FRAMES_VIEWS=1 runs it with views=True (a memfd payload as a memoryview,
passed back as the same memfd)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "sdk", "python"))
import baton_worker as bw  # noqa: E402


def handle(payload, meta):
    return payload


bw.run(handle, views=os.environ.get("FRAMES_VIEWS") == "1")
