#!/usr/bin/python3
"""The seed-000 way: a one-shot script per request, JSON files in and out.
With --numpy it imports numpy first, as real model scripts import heavier."""
import argparse
import json
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--input", required=True)
ap.add_argument("--output", required=True)
ap.add_argument("--numpy", action="store_true")
a = ap.parse_args()
if a.numpy:
    import numpy  # noqa: F401
with open(a.input) as f:
    req = json.load(f)
with open(a.output, "w") as f:
    json.dump({"status": "ok", "data": req["data"]}, f)
