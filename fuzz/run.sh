#!/bin/sh
# Builds the fuzz targets and runs the six at once for SECONDS each
# (default 60), every one on a scratch copy of its seed corpus under
# build-fuzz/run/TARGET/ (the inputs it finds accumulate there across runs;
# fuzz/corpus/ is never written).  Exits 1 if a target crashed, leaked,
# hung or broke a property, naming the saved input; 2 if it cannot build.
#
#   sh fuzz/run.sh [SECONDS]
set -u

secs=${1:-60}
case $secs in
'' | *[!0-9]*)
	echo "usage: sh fuzz/run.sh [SECONDS]" >&2
	exit 2
	;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/build-fuzz"
sh "$root/fuzz/build.sh" || exit 2

# Symbolized stacks in the reports, whichever name Debian gave the tool.
for s in llvm-symbolizer llvm-symbolizer-14 /usr/lib/llvm-14/bin/llvm-symbolizer; do
	if command -v "$s" >/dev/null 2>&1; then
		ASAN_SYMBOLIZER_PATH=$(command -v "$s")
		export ASAN_SYMBOLIZER_PATH
		break
	fi
done
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
ulimit -c 0 2>/dev/null || true

# max_len per target: a frame stream must cross the 64 KiB header limit;
# configs and v2 bodies are small documents.
max_len() {
	case $1 in
	frame) echo 70000 ;;
	config) echo 8192 ;;
	v2) echo 8192 ;;
	grpc) echo 16384 ;;
	shm) echo 8192 ;;
	h1) echo 40000 ;;
	esac
}

targets="frame config v2 grpc shm h1"
for t in $targets; do
	dir="$out/run/$t"
	mkdir -p "$dir/corpus" "$dir/artifacts"
	rm -f "$dir/artifacts"/* "$dir/fuzz.log" "$dir/rc"
	cp "$root/fuzz/corpus/$t"/* "$dir/corpus/"
	(
		# Its own directory as cwd, so that nothing relative lands in the repo;
		# timeout bounds the run even if libFuzzer itself wedges.
		cd "$dir" || exit 2
		timeout -k 10 $((secs + 120)) "$out/fuzz_$t" \
			-max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=10 \
			-rss_limit_mb=2048 -detect_leaks=1 -print_final_stats=1 \
			-dict="$root/fuzz/$t.dict" -artifact_prefix="$dir/artifacts/" \
			"$dir/corpus" </dev/null >"$dir/fuzz.log" 2>&1
		echo $? >"$dir/rc"
	) &
done
echo "fuzzing frame, config, v2, grpc, shm and h1 for ${secs}s each (logs: build-fuzz/run/*/fuzz.log)"
wait

failed=0
for t in $targets; do
	dir="$out/run/$t"
	log="$dir/fuzz.log"
	rc=$(cat "$dir/rc" 2>/dev/null || echo 255)
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
	units=$(find "$dir/corpus" -type f | wc -l)
	if [ "$rc" = 0 ]; then
		echo "fuzz_$t: ok, ${execs:-?} runs, ${speed:-?} exec/s, corpus $units inputs"
		continue
	fi
	failed=1
	case $rc in
	124 | 137) why="did not finish within $((secs + 120))s" ;;
	*) why="exit status $rc" ;;
	esac
	echo "fuzz_$t: FAILED ($why) after ${execs:-?} runs; log: $log"
	grep -E "^(==[0-9]+==ERROR|SUMMARY|fuzz_$t: )|runtime error:|ERROR: libFuzzer" "$log" |
		head -n 5 | sed 's/^/  /'
	for a in "$dir/artifacts"/*; do
		[ -e "$a" ] || continue
		echo "  input saved: $a"
		echo "  reproduce:   $out/fuzz_$t $a"
	done
done
exit $failed
