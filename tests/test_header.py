"""The emitted header: INPUT_SCALE / OUTPUT_SCALE macros, the float and integer-only input quantizers (bit for bit
against kpgen's quantizer on the host), `--target lib` without test vectors, `--max-steps`, and the report of
test inputs clipped by the calibrated range."""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from checkpoints import save, tiny_checkpoint
from click.testing import CliRunner

from kpgen.cli import main
from kpgen.frontend.load import checkpoint_to_ir
from kpgen.quant import quantize
from kpgen.reference import golden

WRAPPER_C = r"""
#include "model.h"

void t_quantize(const float *x, int32_t steps, int8_t *out)
{
    int32_t t;
    for (t = 0; t < steps; t++) {
        model_quantize_step(x + t * MODEL_INPUT_SIZE, out + t * MODEL_INPUT_SIZE);
    }
}

void t_quantize_q(const int32_t *x, int32_t steps, int8_t *out)
{
    int32_t t;
    for (t = 0; t < steps; t++) {
        model_quantize_step_q(x + t * MODEL_INPUT_SIZE, out + t * MODEL_INPUT_SIZE);
    }
}

double t_input_scale(void) { return MODEL_INPUT_SCALE; }
double t_output_scale(void) { return MODEL_OUTPUT_SCALE; }
"""


def _lib_project(tmp_path: Path, input_absmax: float, extra: tuple[str, ...] = ()) -> tuple[Path, dict]:
    """`kpgen emit --target lib` of a checkpoint that names no dataset, with no vectors: the project and its
    checkpoint dict."""
    ck = tiny_checkpoint(0)
    ck["meta"] = {"seq_len": 5}  # no dataset: a library needs none
    ck["calibration"]["input_absmax"] = input_absmax
    pt = save(ck, tmp_path / "m.pt")
    out = tmp_path / "lib"
    res = CliRunner().invoke(main, ["emit", str(pt), "--board", "m4", "-o", str(out), "--target", "lib", *extra])
    assert res.exit_code == 0, res.output
    assert "library libmodel.a" in res.output
    return out, ck


def _host_lib(project: Path, tmp_path: Path) -> ctypes.CDLL:
    src = tmp_path / "wrap.c"
    src.write_text(WRAPPER_C)
    so = tmp_path / "wrap.so"
    cmd = ["cc", "-std=c99", "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Wconversion", "-Werror", "-pedantic",
           f"-I{project}", str(src), "-o", str(so)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return ctypes.CDLL(str(so))


def _run(lib: ctypes.CDLL, fn: str, x: np.ndarray, ctype: type) -> np.ndarray:
    x = np.ascontiguousarray(x)
    assert x.size % 6 == 0
    out = np.zeros(x.size, np.int8)
    getattr(lib, fn)(x.ctypes.data_as(ctypes.POINTER(ctype)), x.size // 6,
                     out.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)))
    return out


@pytest.mark.parametrize("input_absmax", [127 / 8, 1.5, 3.7e-3, 2.0e4])
def test_quantize_step_matches_kpgen(input_absmax: float, tmp_path: Path) -> None:
    """model_quantize_step gives golden.quantize_input's bits: random values, exact ties (k + 1/2 steps, where
    the scale is a power of two), values next to ties, out of range, infinities and zeros."""
    project, ck = _lib_project(tmp_path, input_absmax)
    q = quantize.quantize_model(checkpoint_to_ir(ck, "ck"))
    lib = _host_lib(project, tmp_path)
    lib.t_input_scale.restype = lib.t_output_scale.restype = ctypes.c_double
    assert lib.t_input_scale() == q.input_scale and lib.t_output_scale() == q.head.out_scale
    rng = np.random.default_rng(0)
    s = q.input_scale
    ties = (np.arange(-140, 140) + 0.5) * s
    near = np.concatenate([np.nextafter(ties.astype(np.float32), np.float32(np.inf)),
                           np.nextafter(ties.astype(np.float32), np.float32(-np.inf))])
    x = np.concatenate([
        rng.uniform(-1.3 * input_absmax, 1.3 * input_absmax, 60000), ties, near, np.arange(-200, 201) * s,
        [np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, np.finfo(np.float32).tiny, 127.5 * s, -127.5 * s, 126.5 * s],
    ]).astype(np.float32)
    x = np.concatenate([x, np.zeros((-len(x)) % 6, np.float32)])
    if input_absmax == 127 / 8:  # the scale is 1/8: every tie above is exact in float32 and in the division
        assert s == 0.125 and np.all(np.abs(ties.astype(np.float32).astype(np.float64) / s) % 1 == 0.5)
    want = golden.quantize_input(x.astype(np.float64), s)
    got = _run(lib, "t_quantize", x, ctypes.c_float)
    assert np.array_equal(got, want), np.flatnonzero(got != want)[:10]
    nan = _run(lib, "t_quantize", np.full(6, np.nan, np.float32), ctypes.c_float)
    assert not nan.any()  # NaN gives 0


@pytest.mark.parametrize("input_absmax", [127 / 8, 1.5, 3.7e-3, 2.0e4])
def test_quantize_step_q_integer_only(input_absmax: float, tmp_path: Path) -> None:
    """model_quantize_step_q equals golden.quantize_input_fixed bit for bit (int32 extremes included), and stays
    within one step of the float quantizer on the same values."""
    project, ck = _lib_project(tmp_path, input_absmax)
    header = (project / "model.h").read_text()
    frac = int(re.search(r"#define MODEL_INPUT_FRAC_BITS (\d+)", header).group(1))
    mult = int(re.search(r"#define MODEL_INPUT_MULT (\d+)", header).group(1))
    shift = int(re.search(r"#define MODEL_INPUT_SHIFT (\d+)", header).group(1))
    q = quantize.quantize_model(checkpoint_to_ir(ck, "ck"))
    rq = quantize.input_fixed_requant(q.input_scale)
    assert rq is not None and (mult, shift, frac) == (rq.mult, rq.shift, quantize.INPUT_FRAC_BITS)
    lib = _host_lib(project, tmp_path)
    rng = np.random.default_rng(1)
    span = min(2**31 - 1, int(1.3 * input_absmax * 2**frac))
    xq = np.concatenate([rng.integers(-span, span + 1, 60000), [-(2**31), 2**31 - 1, 0, 1, -1, 2**30, -(2**30)],
                         rng.integers(-(2**31), 2**31, 600)]).astype(np.int32)
    xq = np.concatenate([xq, np.zeros((-len(xq)) % 6, np.int32)])
    got = _run(lib, "t_quantize_q", xq, ctypes.c_int32)
    assert np.array_equal(got, golden.quantize_input_fixed(xq, mult, shift))
    fl = golden.quantize_input(xq.astype(np.float64) / 2**frac, q.input_scale)
    assert np.max(np.abs(got.astype(int) - fl.astype(int))) <= 1


def test_lib_needs_no_vectors_and_max_steps(tmp_path: Path) -> None:
    """A bidirectional model as a library without vectors, its bound set by --max-steps (not by any vectors)."""
    from test_heads import _variant_checkpoint

    ck = _variant_checkpoint(True)
    pt = save(ck, tmp_path / "bi.pt")
    runner = CliRunner()
    out = tmp_path / "bi"
    res = runner.invoke(main, ["emit", str(pt), "--board", "m4", "-o", str(out), "--target", "lib",
                               "--max-steps", "37"])
    assert res.exit_code == 0, res.output
    assert "#define MODEL_MAX_STEPS 37\n" in (out / "model.h").read_text()
    assert "int8_t out0[296];" in (out / "model.c").read_text()  # 37 steps x 2H = 8 values
    rng = np.random.default_rng(2)
    vec = tmp_path / "v.npz"
    np.savez(vec, x=rng.uniform(-1, 1, (3, 9, 6)))
    out2 = tmp_path / "fw"
    res = runner.invoke(main, ["emit", str(pt), "--board", "m4", "-o", str(out2), "--vectors", str(vec),
                               "--max-steps", "12"])
    assert res.exit_code == 0, res.output
    assert "#define MODEL_MAX_STEPS 12\n" in (out2 / "model.h").read_text()
    res = runner.invoke(main, ["emit", str(pt), "--board", "m4", "-o", str(tmp_path / "fw2"), "--vectors", str(vec),
                               "--max-steps", "8"])
    assert res.exit_code == 2
    assert "the test sequences have 9 steps, more than --max-steps 8" in res.output


def test_clipped_inputs_are_reported(tmp_path: Path) -> None:
    """Emit counts the test inputs beyond the calibrated range and warns above 1%."""
    ck = tiny_checkpoint(0)
    ck["calibration"]["input_absmax"] = 1.0
    pt = save(ck, tmp_path / "m.pt")
    x = np.random.default_rng(3).uniform(-0.9, 0.9, (200, 5, 6))
    x[7, 2, 1] = 1.2
    vec = tmp_path / "a.npz"
    np.savez(vec, x=x)
    runner = CliRunner()
    res = runner.invoke(main, ["emit", str(pt), "--board", "m4", "-o", str(tmp_path / "a"), "--vectors", str(vec)])
    assert res.exit_code == 0, res.output
    assert "1 of 200 test inputs have values beyond the calibrated input range +-1 (1 values clipped" in res.output
    assert "warning" not in res.output
    x[10:14, 0, 0] = -3.0
    np.savez(vec, x=x)
    res = runner.invoke(main, ["emit", str(pt), "--board", "m4", "-o", str(tmp_path / "b"), "--vectors", str(vec)])
    assert res.exit_code == 0, res.output
    assert "5 of 200 test inputs have values beyond" in res.output
    assert "warning: 2.5% of the test inputs are clipped" in res.output


def test_max_steps_range_through_the_api(tmp_path: Path) -> None:
    """emit_project checks --max-steps itself (the CLI's range check aside)."""
    from kpgen import KpgenError
    from kpgen.pipeline import emit_project

    pt = save(tiny_checkpoint(0), tmp_path / "m.pt")
    with pytest.raises(KpgenError, match=r"--max-steps must be from 1 to 1,048,576, got 0"):
        emit_project(pt, "m4", tmp_path / "o", target="lib", max_steps=0)
