#!/bin/sh
# `make demo`: the documents example end to end, as a newcomer would run it:
# build the detect stage's venv, prove both environments, draw the sample
# pages, run every page through detection and OCR with `baton run`, and
# show the summary and one result.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../../build}
baton="$build/baton"
cfg="$here/baton.yaml"
work=$build/demo-documents
mkdir -p "$work"

echo "\$ baton env setup examples/documents/baton.yaml"
"$baton" env setup "$cfg"
echo
echo "\$ baton env check examples/documents/baton.yaml"
"$baton" env check "$cfg"
echo
echo "\$ python3 examples/documents/make_samples.py $work/samples"
/usr/bin/python3 "$here/make_samples.py" "$work/samples"
rm -rf "$work/out"
echo
# The pages only: make_samples.py also writes the words it drew (*.truth.json).
echo "\$ baton run examples/documents/baton.yaml --pipeline documents --input samples/ --include '*.png' --include '*.pdf' --output $work/out"
status=0
"$baton" run "$cfg" --pipeline documents --input "$work/samples" --include '*.png' --include '*.pdf' \
	--output "$work/out" || status=$?
echo
first=$(ls "$work/out"/*.json | head -n 1)
echo "one result ($first), first regions:"
/usr/bin/python3 - "$first" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
print("  timings:", doc.get("timings"))
for r in doc["regions"][:8]:
    print("  %-34r confidence %3d  box %s" % (r["text"], r["confidence"], r["box"]))
print("  ... %d regions in all" % len(doc["regions"]))
PY
exit $status
