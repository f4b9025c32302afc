"""Shared fixtures: the C runtime compiled for the host (portable path, and DSP path on emulated intrinsics)."""

from __future__ import annotations

import ctypes
import os

import pytest
from runtime_ctypes import build_runtime


@pytest.fixture(scope="session")
def runtime_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """runtime_c/*.c built with host cc and the strict warning flags, portable path."""
    return ctypes.CDLL(str(build_runtime(tmp_path_factory.mktemp("runtime"))))


@pytest.fixture(scope="session")
def runtime_lib_dsp(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """runtime_c/*.c built for the host with __ARM_FEATURE_DSP on a stand-in <arm_acle.h>: the DSP loops."""
    return ctypes.CDLL(str(build_runtime(tmp_path_factory.mktemp("runtime_dsp"), dsp_emulated=True)))


@pytest.fixture(scope="session")
def runtime_lib_mul16(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """The portable path with the Armv6-M (Cortex-M0) 16 x 16 high multiply of the gates (KP_MUL16)."""
    return ctypes.CDLL(str(build_runtime(tmp_path_factory.mktemp("runtime_mul16"), mul16=True)))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Example counts of the property and fuzz tests (tests/example_counts.py), also kept in the pytest cache."""
    from example_counts import COUNTS, FINDINGS

    if COUNTS:
        total = sum(COUNTS.values())
        terminalreporter.write_line(f"kpgen generated examples: {total} in {len(COUNTS)} property/fuzz tests")
        for name, n in sorted(COUNTS.items()):
            terminalreporter.write_line(f"  {name}: {n}")
    cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
    if cache is not None and COUNTS:
        cache.set("kpgen/example_counts", dict(sorted(COUNTS.items())))
    if cache is not None and FINDINGS:
        cache.set("kpgen/findings", FINDINGS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With KPGEN_NO_SKIP=1 (set by `make test`), a skipped test is a failure: a skip never counts as a pass."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and os.environ.get("KPGEN_NO_SKIP") == "1":
        rep.outcome = "failed"
        rep.longrepr = f"skipped, but `make test` forbids skips (KPGEN_NO_SKIP=1): {rep.longrepr}"
