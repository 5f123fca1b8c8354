#!/bin/sh
# `make test`'s phases: a line before each (so that minutes of silence have
# a name) and one after it with how long it took and how it ended.
#   tools/phase.sh NAME COMMAND [ARG...]
name=$1
shift
start=$(date +%s)
echo "==> $name"
"$@"
rc=$?
secs=$(( $(date +%s) - start ))
if [ $rc -eq 0 ]; then
	echo "==> $name: passed in $((secs / 60))m$((secs % 60))s"
else
	echo "==> $name: FAILED (exit $rc) after $((secs / 60))m$((secs % 60))s"
fi
exit $rc
