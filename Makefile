# The two commands of the README (`make demo`, `make test`) and the build.
# Each target installs the Debian packages it lacks (as root, via apt-get),
# so a fresh Debian 12 machine needs nothing but this checkout.

BUILD      ?= build
ASAN_BUILD ?= build-asan
PY         := /usr/bin/python3

BUILD_PKGS := gcc pkg-config meson ninja-build libuv1-dev libmicrohttpd-dev \
              libjansson-dev libyaml-dev libcriterion-dev python3 python3-venv \
              libtesseract-dev libleptonica-dev
# What the documents example runs with: OpenCV, tesseract's English model,
# poppler for PDFs, Pillow and DejaVu to draw the sample pages.
DEMO_PKGS  := python3-opencv python3-numpy python3-pil fonts-dejavu-core \
              tesseract-ocr-eng poppler-utils
TEST_PKGS  := python3-pytest wrk prometheus valgrind $(DEMO_PKGS)
BENCH_PKGS := $(TEST_PKGS) opencv-data gnuplot-nox
FUZZ_PKGS  := clang libclang-rt-14-dev pkg-config libjansson-dev libyaml-dev libuv1-dev
FUZZ_SECONDS ?= 60

.PHONY: all deps test-deps build asan unit e2e test test-asan demo demo-echo bench fuzz clean

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

e2e: build test-deps
	BATON_BUILD=$(abspath $(BUILD)) $(PY) -m pytest -q tests/e2e

# The whole suite: unit and end-to-end tests, then the same under ASan+UBSan.
test: test-deps build asan
	meson test -C $(BUILD) --print-errorlogs --suite unit
	BATON_BUILD=$(abspath $(BUILD)) $(PY) -m pytest -q -x tests/e2e
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		meson test -C $(ASAN_BUILD) --print-errorlogs --suite unit
	@# Criterion reports a leak inside a test but still counts it as passed.
	@! grep -E "ERROR: (LeakSanitizer|AddressSanitizer)|runtime error:" \
		$(ASAN_BUILD)/meson-logs/testlog.txt
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		BATON_BUILD=$(abspath $(ASAN_BUILD)) BATON_SANITIZED=1 $(PY) -m pytest -q -x tests/e2e

# The documents example: detection (Python, OpenCV) then OCR (C, tesseract).
demo: build
	$(call apt_install,$(DEMO_PKGS))
	sh examples/documents/demo.sh $(abspath $(BUILD))

# The smaller echo example: a Python and a C stage over HTTP, a worker killed.
demo-echo: build
	$(PY) examples/echo/demo.py --build $(abspath $(BUILD))

bench: build test-deps
	$(call apt_install,$(BENCH_PKGS))
	$(PY) bench/hop/run.py --build $(abspath $(BUILD))
	$(PY) bench/batching/run.py --build $(abspath $(BUILD))
	$(PY) bench/persistent-vs-spawn/run.py --build $(abspath $(BUILD))
	$(PY) bench/autoscale/run.py --build $(abspath $(BUILD))
	$(PY) bench/chaos/run.py --build $(abspath $(BUILD))
	$(PY) bench/replicas/run.py --build $(abspath $(BUILD))

# libFuzzer on the frame decoder, the config loader and the v2 checks, all
# three at once for FUZZ_SECONDS; fails on a crash, a leak or a hang.
fuzz:
	$(call apt_install,$(FUZZ_PKGS))
	sh fuzz/run.sh $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-fuzz
