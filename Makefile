# kpgen: set-up, demo, tests. Every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KPGEN := $(VENV)/bin/kpgen
TORCH_PIN := torch==2.13.0
APT_PKGS := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm make
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BOARDS := $(notdir $(patsubst %/board.toml,%,$(wildcard boards/*/board.toml)))
EXAMPLE := examples/mnist-kplstm.pt

.PHONY: all setup tools venv demo test qemu-test clean

all: test

setup: tools venv

# System tools: the ARM cross-compiler with newlib, and QEMU.
tools:
	@missing=; \
	command -v arm-none-eabi-gcc >/dev/null || missing=1; \
	command -v qemu-system-arm >/dev/null || missing=1; \
	[ -d /usr/lib/arm-none-eabi/newlib ] || missing=1; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(APT_PKGS)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(APT_PKGS); \
	fi

# Python: a venv with the pinned CPU build of torch first, then kpgen itself (editable) with its test tools.
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The main job end to end: train on real MNIST digits, emit for the Cortex-M4, build, run under QEMU, report.
demo: setup
	@if [ ! -f model.pt ]; then $(KPGEN) train -o model.pt; else echo "using the existing model.pt (delete it to retrain)"; fi
	$(KPGEN) emit model.pt --board m4 -o build/m4 --force
	$(KPGEN) run build/m4

# The test suite: host tests of the kernels and the Python stages, and a focused QEMU set.
test: setup
	$(PY) -m pytest -q

# Every shipped example on every board, bit-exact under QEMU.
qemu-test: setup
	@set -e; for b in $(BOARDS); do \
	  echo "== $$b"; \
	  $(KPGEN) emit $(EXAMPLE) --board $$b -o build/qemu-test/$$b --force; \
	  $(KPGEN) run build/qemu-test/$$b; \
	done

clean:
	rm -rf build .pytest_cache
