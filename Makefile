# kpgen: set-up, demo, tests. Every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KPGEN := $(VENV)/bin/kpgen
TORCH_PIN := torch==2.13.0
# gcc: the host compiler of the kernel tests; Debian's gcc brings libasan and libubsan (tests/test_sanitizers.py)
APT_PKGS := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm make cmake gdb-multiarch openocd gcc
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BOARDS := $(notdir $(patsubst %/board.toml,%,$(wildcard boards/*/board.toml)))
# Boards QEMU emulates (a [qemu] table); the real-hardware profiles only build (tests/test_shipping.py).
# Numbers in names sort as numbers (m4 before m33).
QEMU_BOARDS := $(notdir $(patsubst %/board.toml,%,$(shell grep -l '^\[qemu\]' boards/*/board.toml | sort -V)))
EXAMPLE := examples/mnist-kplstm.pt
EXAMPLES := $(sort $(wildcard examples/*.pt))

.PHONY: all setup tools venv demo lint test wheel-test qemu-test bench bench-emit costmodel reproduce soak clean

all: test

setup: tools venv

# System tools: the ARM cross-compiler with newlib, QEMU, and for the emitted projects and `kpgen flash`:
# CMake, gdb-multiarch (loads firmware through QEMU's GDB server) and OpenOCD (real boards).
tools:
	@missing=; \
	command -v arm-none-eabi-gcc >/dev/null || missing=1; \
	command -v gcc >/dev/null || missing=1; \
	command -v qemu-system-arm >/dev/null || missing=1; \
	command -v cmake >/dev/null || missing=1; \
	command -v gdb-multiarch >/dev/null || missing=1; \
	command -v openocd >/dev/null || missing=1; \
	[ -d /usr/lib/arm-none-eabi/newlib ] || missing=1; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(APT_PKGS)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(APT_PKGS); \
	fi

# Python: a venv with the pinned CPU build of torch first, then kpgen itself (editable) with every extra
# (train: training and the built-in datasets; studies: bench and reproduce; search: `kpgen search` on Ray
# Tune; dev: the test tools).
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev,train,studies,search,serial,flash,onnx]'
	touch $@

# The main job end to end: train on real MNIST digits, emit for the Cortex-M4, build, run under QEMU, report.
demo: setup
	@if [ ! -f model.pt ]; then $(KPGEN) train -o model.pt; else echo "using the existing model.pt (delete it to retrain)"; fi
	$(KPGEN) emit model.pt --board m4 -o build/m4 --force
	$(KPGEN) run build/m4

# The test suite: host tests of the kernels and the Python stages, and a focused QEMU set.
test: setup
	KPGEN_NO_SKIP=1 $(PY) -m pytest -q

# The wheel outside the checkout: build it, install it with torch alone in a fresh venv, emit and run the
# example bit-exact under QEMU from a directory with no checkout (about 2 minutes; .ci/wheel-test).
wheel-test: setup
	TORCH_PIN='$(TORCH_PIN)' .ci/wheel-test $(PY)

# Lint: ruff over the package and the tests, mypy over the package (configuration in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check kpgen tests
	$(VENV)/bin/mypy kpgen

# Every shipped example (examples/*.pt) on every emulated board, bit-exact under QEMU; a summary line each at the end.
qemu-test: setup
	@set -e; mkdir -p build/qemu-test; for ex in $(EXAMPLES); do n=$$(basename $$ex .pt); for b in $(QEMU_BOARDS); do \
	  echo "== $$n on $$b"; \
	  $(KPGEN) emit $$ex --board $$b -o build/qemu-test/$$n-$$b --force; \
	  if $(KPGEN) run build/qemu-test/$$n-$$b > build/qemu-test/$$n-$$b.log 2>&1; then cat build/qemu-test/$$n-$$b.log; \
	  else cat build/qemu-test/$$n-$$b.log; echo "qemu-test: FAILED: $$n on $$b"; exit 1; fi; \
	done; done; \
	echo; echo "qemu-test summary:"; \
	for ex in $(EXAMPLES); do n=$$(basename $$ex .pt); for b in $(QEMU_BOARDS); do \
	  printf '  %-28s %-14s %s | %s | %s\n' "$$n" "$$b" \
	    "$$(grep -o 'bit-exact samples *[0-9]*/[0-9]*' build/qemu-test/$$n-$$b.log | sed 's/  */ /g')" \
	    "$$(grep -o 'instructions per inference *[0-9,]*' build/qemu-test/$$n-$$b.log | sed 's/  */ /g')" \
	    "$$(grep -o 'estimated cycles per inference *[0-9,]* on a [A-Za-z0-9-]*' build/qemu-test/$$n-$$b.log | sed 's/  */ /g')"; \
	done; done

# Instructions, estimated cycles and sizes of dense and KP int8 LSTM steps on several cores, side by side;
# writes docs/benchmarks.md and docs/benchmarks.png (a few minutes on 2 cores; not part of `make test`);
# then the emit-time target (bench-emit).
bench: setup
	$(PY) -m kpgen.studies.bench
	$(PY) -m kpgen.studies.bench_emit

# The planner's instruction cost model: a grid of small models emitted, built and counted under QEMU on the M0,
# M4, M7 and M55 (one step = I(T=2) - I(T=1)), coefficients fitted by least squares and written with the commit and
# date to kpgen/train/costmodel.json; the shipped examples are checked against it (docs/cycle-model.md; about 5
# minutes on 2 idle cores). Run it again after a kernel changes.
costmodel: setup
	$(PY) -m kpgen.studies.costfit

# `kpgen emit` of the example (accuracy over 1,000 test digits included) against `import torch`, best of 3 each,
# side by side in one run; the target is at most 3x (kpgen/studies/bench_emit.py; under a minute).
bench-emit: setup
	$(PY) -m kpgen.studies.bench_emit

# KP against dense, hybrid KP, pruning, low-rank and small networks at matched size on five benchmarks from
# shipped data, 5 seeds: float and int8 accuracy, sizes, M4 instructions under QEMU. Writes docs/results.md and
# docs/results.png, prints the targets (under an hour on 2 cores; not part of `make test`, whose
# tests/test_reproduce.py runs a miniature of it). Checkpoints stay in build/reproduce: `$(PY) -m kpgen.studies.reproduce
# --reuse` re-evaluates them without retraining. Its jobs (one per benchmark and seed) are Ray tasks of one CPU, two
# at a time, on a Ray started inside the command, or with RAY_ADDRESS=HOST:PORT on that cluster (more at a time:
# `$(PY) -m kpgen.studies.reproduce --jobs N`; docs/search.md).
reproduce: setup
	$(PY) -m kpgen.studies.reproduce

# The streaming API for 100,000 never-reset steps of BasicMotions IMU data per model (LSTM, GRU, FastRNN, plain
# RNN; Cortex-M4 and M0 under QEMU): every 1,000-step state digest bit-exact against the integer reference,
# saturation counts, accuracy with and without reset. Writes docs/streaming.md (about 10 minutes on 2 cores; not
# part of `make test`, whose tests/test_soak.py runs 3,000 steps). Models are cached in build/soak/models.
soak: setup
	$(PY) -m kpgen.studies.soak

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
