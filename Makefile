# The two commands of the README (`make demo`, `make test`) and the build.
# Each target installs the Debian packages it lacks (as root, via apt-get),
# so a fresh Debian 12 machine needs nothing but this checkout.

BUILD      ?= build
ASAN_BUILD ?= build-asan
PY         := /usr/bin/python3

BUILD_PKGS := gcc pkg-config meson ninja-build libuv1-dev \
              libjansson-dev libyaml-dev libcriterion-dev python3 python3-venv \
              libtesseract-dev libleptonica-dev libpq-dev libnghttp2-dev \
              libprotobuf-c-dev protobuf-c-compiler libhiredis-dev
# What the documents example runs with: OpenCV, tesseract's English model,
# poppler for PDFs, Pillow and DejaVu to draw the sample pages.
DEMO_PKGS  := python3-opencv python3-numpy python3-pil fonts-dejavu-core \
              tesseract-ocr-eng poppler-utils
# The timeseries example: its own PostgreSQL server, numpy for the features.
TIMESERIES_PKGS := postgresql python3-numpy
# What the stations example runs with: an RTSP server (gst-rtsp-server
# through python3-gi), GStreamer's JPEG/RTP/RTSP/AVI plugins, PyTorch (CPU).
STATIONS_PKGS := python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 \
              gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
              gstreamer1.0-plugins-good python3-torch $(DEMO_PKGS)
# promtool is not packaged alone: tools/promtool.sh takes it out of Debian's
# prometheus package rather than installing a server and its units.
# pytest-xdist: the end-to-end tests mostly wait on processes, so two at once
# (-n 2) take half the time on two cores.
TEST_PKGS  := python3-pytest python3-pytest-xdist wrk valgrind groff-base chromium chromium-driver \
	      python3-selenium python3-grpcio python3-grpc-tools redis-server \
	      $(DEMO_PKGS) $(TIMESERIES_PKGS) $(STATIONS_PKGS)
BENCH_PKGS := $(TEST_PKGS) opencv-data gnuplot-nox python3-psycopg2 python3-fastapi python3-uvicorn \
	      linux-perf nghttp2-client
FUZZ_PKGS  := clang libclang-rt-14-dev pkg-config libjansson-dev libyaml-dev libuv1-dev \
	      libprotobuf-c-dev protobuf-c-compiler
FUZZ_SECONDS ?= 60
# `make deb`: Debian's own tools, and lintian for the result.
DEB_PKGS   := debhelper dpkg-dev fakeroot lintian
PREFIX     ?= /usr/local

.PHONY: all deps test-deps build asan unit e2e test test-asan demo demo-echo demo-timeseries \
	demo-stations bench fuzz mutants mutants-fast clean install deb

all: build

# Installs the listed packages that are missing (nothing when all are there).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

deps:
	$(call apt_install,$(BUILD_PKGS))

test-deps: deps
	$(call apt_install,$(TEST_PKGS))
	@sh tools/promtool.sh build-tools

$(BUILD)/build.ninja:
	meson setup $(BUILD) >/dev/null

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

$(ASAN_BUILD)/build.ninja:
	meson setup $(ASAN_BUILD) -Db_sanitize=address,undefined -Db_lundef=false \
		-Dbuildtype=debug >/dev/null

asan: deps $(ASAN_BUILD)/build.ninja
	ninja -C $(ASAN_BUILD)

unit: build
	meson test -C $(BUILD) --print-errorlogs --suite unit
	$(PY) tests/check-unit-counts.py $(BUILD)

e2e: build test-deps
	BATON_BUILD=$(abspath $(BUILD)) $(PY) -m pytest -q tests/e2e

# The whole suite: unit and end-to-end tests, then the same under ASan+UBSan,
# each phase announced and timed (tools/phase.sh).
PHASE := sh tools/phase.sh
test: test-deps build asan
	@$(PHASE) "unit tests" meson test -C $(BUILD) --print-errorlogs --suite unit
	@$(PHASE) "unit test counts" $(PY) tests/check-unit-counts.py $(BUILD)
	@$(PHASE) "end-to-end tests" env BATON_BUILD=$(abspath $(BUILD)) $(PY) -m pytest -q -x -n 2 tests/e2e
	@$(PHASE) "unit tests under ASan+UBSan" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
		UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		meson test -C $(ASAN_BUILD) --print-errorlogs --suite unit
	$(PY) tests/check-unit-counts.py $(ASAN_BUILD)
	@# Criterion reports a leak inside a test but still counts it as passed.
	@! grep -E "ERROR: (LeakSanitizer|AddressSanitizer)|runtime error:" \
		$(ASAN_BUILD)/meson-logs/testlog.txt
	@$(PHASE) "end-to-end tests under ASan+UBSan" env ASAN_OPTIONS=detect_leaks=1 \
		UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 BATON_BUILD=$(abspath $(ASAN_BUILD)) \
		BATON_SANITIZED=1 $(PY) -m pytest -q -x -n 2 tests/e2e

# Each named mutant of tests/mutants/mutants.txt (one broken guarantee) on a
# scratch copy of the tree: its tests must fail. mutants-fast: CI's subset.
mutants: build test-deps
	$(PY) tests/mutants/run.py

mutants-fast: build test-deps
	$(PY) tests/mutants/run.py --fast

# The documents example: detection (Python, OpenCV) then OCR (C, tesseract).
demo: build
	$(call apt_install,$(DEMO_PKGS))
	sh examples/documents/demo.sh $(abspath $(BUILD))

# The smaller echo example: a Python and a C stage over HTTP, a worker killed.
demo-echo: build
	$(PY) examples/echo/demo.py --build $(abspath $(BUILD))

# PostgreSQL in, PostgreSQL out: a throw-away server, sensor readings, features.
demo-timeseries: build
	$(call apt_install,$(TIMESERIES_PKGS))
	$(PY) examples/timeseries/demo.py --build $(abspath $(BUILD))

# The stations example: RTSP cameras, OCR, sessions, a PyTorch model; its
# first run trains the model (a few minutes on a loaded 2-core machine).
demo-stations: build
	$(call apt_install,$(STATIONS_PKGS))
	$(PY) examples/stations/demo.py --build $(abspath $(BUILD))

bench: build test-deps
	$(call apt_install,$(BENCH_PKGS))
	$(PY) bench/hop/run.py --build $(abspath $(BUILD))
	$(PY) bench/grpc/run.py --build $(abspath $(BUILD))
	$(PY) bench/v2json/run.py --build $(abspath $(BUILD))
	$(PY) bench/frames/run.py --build $(abspath $(BUILD))
	$(PY) bench/batching/run.py --build $(abspath $(BUILD))
	$(PY) bench/persistent-vs-spawn/run.py --build $(abspath $(BUILD))
	$(PY) bench/autoscale/run.py --build $(abspath $(BUILD))
	$(PY) bench/chaos/run.py --build $(abspath $(BUILD))
	$(PY) bench/timeseries/run.py --build $(abspath $(BUILD))
	$(PY) bench/soak/run.py --build $(abspath $(BUILD))
	$(PY) bench/replicas/run.py --build $(abspath $(BUILD))
	$(PY) bench/scaleout/run.py --build $(abspath $(BUILD))
	$(PY) bench/stations/run.py --build $(abspath $(BUILD))

# libFuzzer on the frame decoder, the config loader, the v2 checks, the gRPC
# framing + protobuf decoding, the HTTP/1.1 parser and the shared-memory
# requests, all six at once for FUZZ_SECONDS; fails on a crash, a leak or a hang.
fuzz:
	$(call apt_install,$(FUZZ_PKGS))
	sh fuzz/run.sh $(FUZZ_SECONDS)

# make install [PREFIX=/usr/local] [DESTDIR=/tmp/root]: the binary, the C SDK
# (header, shared and static library, pkg-config), the Python SDK, man pages,
# bash completion, the systemd unit and its user (docs/operations.md).
install: build
	meson configure $(BUILD) -Dprefix=$(PREFIX) >/dev/null
	ninja -C $(BUILD)
	meson install -C $(BUILD) --no-rebuild --quiet $(if $(DESTDIR),--destdir $(DESTDIR))
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then ldconfig; fi

# build-deb/baton_*.deb with dpkg-buildpackage from a copy of the tree, then
# lintian, then tools/deb-check.sh installs it in a scratch root and runs its
# example.  Not part of `make test`: it builds everything once more (minutes).
deb: deps
	$(call apt_install,$(DEB_PKGS))
	rm -rf build-deb && mkdir -p build-deb/src
	git ls-files -z -co --exclude-standard | xargs -0 cp -P --parents -t build-deb/src
	cd build-deb/src && dpkg-buildpackage -b -us -uc
	lintian --fail-on error,warning build-deb/baton_*.deb
	sh tools/deb-check.sh build-deb/baton_*.deb

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-fuzz build-mutants build-deb build-tools
