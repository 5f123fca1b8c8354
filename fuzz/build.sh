#!/bin/sh
# Builds the libFuzzer targets of baton's pure parsers into build-fuzz/:
# fuzz_frame (worker protocol frames), fuzz_config (the YAML loader) and
# fuzz_v2 (KServe v2 requests and answers), fuzz_grpc (gRPC message
# framing and the v2 protobuf messages) and fuzz_shm (the shared-memory
# extension's register bodies and request rewriting) and fuzz_h1 (the HTTP/1.1
# request parser), with ASan, UBSan and libFuzzer.  Needs clang and its fuzzer runtime (Debian: clang,
# libclang-rt-14-dev), protobuf-c (libprotobuf-c-dev, protobuf-c-compiler).
#
#   sh fuzz/build.sh            # CC=clang-15 sh fuzz/build.sh for another clang
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/build-fuzz"

if [ -z "${CC:-}" ]; then
	CC=clang
	command -v clang >/dev/null 2>&1 || CC=clang-14
fi
if ! command -v "$CC" >/dev/null 2>&1; then
	echo "fuzz/build.sh: no '$CC'; install clang and libclang-rt-14-dev" >&2
	exit 2
fi
for lib in jansson yaml-0.1 libuv libprotobuf-c; do
	if ! pkg-config --exists "$lib"; then
		echo "fuzz/build.sh: pkg-config finds no '$lib' (install its -dev package)" >&2
		exit 2
	fi
done

mkdir -p "$out/obj"
# The flags of meson.build (C11, _GNU_SOURCE, warnings), plus the sanitizers.
# Library objects get coverage instrumentation (fuzzer-no-link); only the
# final link pulls in libFuzzer's main.
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
cflags="-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Wall -Wextra
	-Wstrict-prototypes -Wno-format-zero-length -I$root/src -I$out/gen
	$(pkg-config --cflags jansson yaml-0.1 libuv libprotobuf-c)"
libs="$(pkg-config --libs jansson yaml-0.1 libuv libprotobuf-c) -lm -ldl"

# The gRPC messages' C code, generated from the .proto as meson does.
mkdir -p "$out/gen"
protoc-c --c_out="$out/gen" --proto_path="$root/src/grpc" "$root/src/grpc/inference.proto"

# Checks that the compiler can build and link a fuzzer at all, so that a
# missing runtime is named instead of showing as a wall of link errors.
probe="$out/obj/probe"
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n)\n{ (void)d; (void)n; return 0; }\n' >"$probe.c"
if ! $CC -fsanitize=fuzzer,address "$probe.c" -o "$probe" 2>"$probe.log"; then
	cat "$probe.log" >&2
	echo "fuzz/build.sh: '$CC -fsanitize=fuzzer' cannot link;" \
		"install libclang-rt-14-dev (apt-get install -y libclang-rt-14-dev)" >&2
	exit 2
fi

# compile OUT SRC [EXTRA_FLAGS...]
compile() {
	obj="$out/obj/$1.o"
	src="$root/$2"
	shift 2
	# shellcheck disable=SC2086 # cflags and san are word lists
	$CC $cflags $san -fsanitize=fuzzer-no-link "$@" -c "$src" -o "$obj"
}

compile common src/common/common.c
compile frame src/proto/frame.c
compile v2 src/http/v2.c
compile jscan src/common/jscan.c
compile wire src/grpc/wire.c
compile inference_pb build-fuzz/gen/inference.pb-c.c
compile memfd src/common/memfd.c
compile shm src/http/shm.c
compile h1 src/http/h1.c
# The loader's fopen goes through fuzz_config.c's bt_fuzz_fopen, which
# refuses writes and reads of anything but small regular files.
compile config src/config/config.c -Dfopen=bt_fuzz_fopen

# target SOURCE_OBJECTS...: links build-fuzz/fuzz_TARGET from fuzz/fuzz_TARGET.c.
target() {
	name=$1
	shift
	objs=""
	for o in "$@"; do
		objs="$objs $out/obj/$o.o"
	done
	# shellcheck disable=SC2086
	$CC $cflags $san -fsanitize=fuzzer "$root/fuzz/fuzz_$name.c" $objs $libs \
		-o "$out/fuzz_$name"
}

target frame frame common
target config config common
target v2 v2 jscan wire inference_pb frame common
target grpc wire inference_pb v2 jscan frame common
target shm shm memfd v2 jscan common
target h1 h1 common
echo "built: $out/fuzz_frame $out/fuzz_config $out/fuzz_v2 $out/fuzz_grpc $out/fuzz_shm $out/fuzz_h1"
