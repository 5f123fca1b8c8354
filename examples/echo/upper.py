#!/usr/bin/python3
"""The echo example's Python stage: upper-cases UTF-8 text.  It runs in its
own venv (see baton.yaml), next to a C stage that runs without one."""
import baton_worker as bw


def handle(payload, meta):
    text = payload.decode("utf-8")
    return text.upper().encode("utf-8"), {"content_type": "text/plain; charset=utf-8"}


bw.run(handle)
