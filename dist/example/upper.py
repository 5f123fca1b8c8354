#!/usr/bin/python3
"""The installed example's stage: upper-cases UTF-8 text, with the Python
SDK that `make install` (or the Debian package) put on python3's path."""
import baton_worker as bw


def handle(payload, meta):
    text = payload.decode("utf-8")
    return text.upper().encode("utf-8"), {"content_type": "text/plain; charset=utf-8"}


bw.run(handle)
