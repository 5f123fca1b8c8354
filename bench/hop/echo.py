#!/usr/bin/python3
"""bench/hop's Python echo worker (the SDK, nothing else)."""
import baton_worker as bw


def handle(payload, meta):
    return payload


bw.run(handle)
