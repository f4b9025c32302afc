"""Shared fixtures: the C runtime compiled for the host (portable path, and DSP path on emulated intrinsics)."""

from __future__ import annotations

import ctypes

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
