#!/usr/bin/python3
"""The worker of the scale-out tests (test_scaleout.py, bench/scaleout):
it says which node, stage and process ran each request, so a test can tell
that work spread over every replica of every node.

  poison            append "NODE PID" to $CRASH_LOG, then SIGKILL itself
  slow:MS ...       sleep MS milliseconds first
  anything          answered as the payload + " NODE:STAGE:PID"

CLUSTER_DELAY_MS: sleep this long in every request (a model's cost that
does not use the CPU, so capacity grows with replicas, not cores).
"""
import os
import signal
import time

import baton_worker as bw

NODE = os.environ.get("NODE", "?")
STAGE = os.environ.get("BATON_STAGE", "?")
DELAY_S = float(os.environ.get("CLUSTER_DELAY_MS", "0")) / 1000
TAG = (" %s:%s:%d" % (NODE, STAGE, os.getpid())).encode()


def handle(payload, meta):
    if payload.startswith(b"poison"):
        fd = os.open(os.environ["CRASH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"%s %d\n" % (NODE.encode(), os.getpid()))
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
    if payload.startswith(b"slow:"):
        time.sleep(int(payload[5:].split(b" ")[0]) / 1000)
    if DELAY_S:
        time.sleep(DELAY_S)
    return payload + TAG


bw.run(handle)
