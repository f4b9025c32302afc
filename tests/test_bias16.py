"""Gate biases stored as int16 (ModelQ.bias_bits, KP_BIAS16): the quantizer's choice and the byte counts, the C
kernels built with KP_BIAS16 against the golden model (bit-exact, every code path), the emitted build files, the
guards against a model and a runtime built for different widths, and one firmware per width under QEMU."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from factories import random_int8, random_layer
from runtime_ctypes import Runtime, build_runtime
from test_cells_int import CCell, check_c_steps, random_cell

from kpgen import KpgenError
from kpgen.cells import lstm as lstm_cell
from kpgen.cells.lstm import LSTMLayerF, LSTMLayerQ
from kpgen.cli import main
from kpgen.codegen import fit
from kpgen.codegen.emit import RUNTIME, render_sources
from kpgen.ir import Calibration, DenseF, KPMatrixF, ModelF, ModelQ, Requant, gate_bias_bits
from kpgen.quant import limits, quantize
from kpgen.reference import golden
from kpgen.reference.vectors import expected_for
from kpgen.target.boards import load_board
from kpgen.train.loop import calibrate, make_checkpoint, save_checkpoint
from kpgen.train.nn import KPRNNClassifier

SIG = golden.make_table("sigmoid")
TANH = golden.make_table("tanh")
MODES = ("random", "min", "max", "extreme")
I, H, C, T = 6, 4, 3, 5
CC = shutil.which("gcc") or shutil.which("cc")
WARN = ["-std=c99", "-Wall", "-Wextra", "-Wconversion", "-Wshadow", "-Werror", "-pedantic"]

# ------------------------------------------------------------------------------- quantizer and byte counts


def float_model(bias_value: float) -> ModelF:
    """A small KP-LSTM (I = 6, H = 4) whose gate bias 5 is bias_value (the rest N(0, 0.5))."""
    rng = np.random.default_rng(0)
    wx = KPMatrixF(rng.normal(0, 0.5, (4, 2)), rng.normal(0, 0.5, (4, 3)))
    wh = KPMatrixF(rng.normal(0, 0.5, (4, 2)), rng.normal(0, 0.5, (4, 2)))
    bias = rng.normal(0, 0.5, 4 * H)
    bias[5] = bias_value
    head = DenseF(rng.normal(0, 0.5, (C, H)), rng.normal(0, 0.1, C))
    return ModelF(input_size=I, num_classes=C, layers=(LSTMLayerF(I, H, wx, wh, bias),), head=head,
                  calibration=Calibration(1.0, (2.0,)), meta={"seq_len": T})  # fmt: skip


@pytest.mark.parametrize(("value", "bits"), [(0.5, 16), (32767 / 4096, 16), (-8.0, 16), (8.0, 32), (-8.001, 32),
                                             (20.0, 32)])  # fmt: skip
def test_quantizer_picks_int16_when_every_gate_bias_fits(value: float, bits: int) -> None:
    """Q3.12 holds -8 .. 32767/4096 in int16: 8.0 (32768) and beyond need int32; -8.0 (-32768) still fits."""
    q = quantize.quantize_model(float_model(value))
    assert q.bias_bits == bits == gate_bias_bits(q.layers)
    assert int(q.layers[0].bias[5]) == round(value * 4096)


def test_weight_bytes_count_two_bytes_per_int16_gate_bias() -> None:
    q16 = quantize.quantize_model(float_model(0.5))
    q32 = quantize.with_bias_bits(q16, "32")
    layer = q16.layers[0]
    matrices_and_head = layer.wx.nbytes + layer.wh.nbytes + q16.head.weight.size + 4 * q16.head.bias.size
    assert q16.weight_bytes == matrices_and_head + 2 * 4 * H
    assert q32.weight_bytes == matrices_and_head + 4 * 4 * H
    assert fit.model_flash_bytes(q32) - fit.model_flash_bytes(q16) == 2 * 4 * H
    wide = quantize.quantize_model(float_model(8.0))
    assert wide.weight_bytes == dataclasses.replace(q32, layers=wide.layers).weight_bytes


def test_bias_bits_survive_copies_and_refuse_what_does_not_fit() -> None:
    q16 = quantize.quantize_model(float_model(0.5))
    assert pickle.loads(pickle.dumps(q16)).bias_bits == 16
    assert golden.with_act_tables(q16, "interp").bias_bits == 16
    assert ModelQ(**{**q16.__dict__, "layers": q16.layers}).bias_bits == 16
    wide = quantize.quantize_model(float_model(8.0))
    with pytest.raises(ValueError, match="does not fit int16"):
        dataclasses.replace(wide, bias_bits=16)
    with pytest.raises(ValueError, match="bias_bits 8"):
        dataclasses.replace(q16, bias_bits=8)
    assert quantize.with_bias_bits(wide, "auto").bias_bits == 32
    assert quantize.with_bias_bits(wide, "32").bias_bits == 32
    assert quantize.with_bias_bits(q16, "16").bias_bits == 16
    assert quantize.with_bias_bits(quantize.with_bias_bits(q16, "32"), "auto").bias_bits == 16
    with pytest.raises(KpgenError) as e:
        quantize.with_bias_bits(wide, "16")
    msg = str(e.value)
    assert msg.startswith("--bias-bits 16: layer 0 has a gate bias of 32768, outside int16") and "\n" not in msg
    assert "--bias-bits auto or 32" in msg


# ------------------------------------------------------------------------------- C kernels with KP_BIAS16


@pytest.fixture(scope="module", params=["portable", "dsp", "portable-mul16"])
def rt16(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    """The runtime built with KP_BIAS16, once per code path (DSP on host stand-ins; mul16: the Cortex-M0 gates)."""
    path = request.param
    lib = build_runtime(tmp_path_factory.mktemp(f"runtime_b16_{path}"), dsp_emulated=path == "dsp",
                        mul16=path == "portable-mul16", bias16=True)  # fmt: skip
    runtime = Runtime(ctypes.CDLL(str(lib)))
    assert runtime.bias_bits == 16 and runtime.dsp_path == (path == "dsp")
    return runtime


def int16_biases(rng: np.random.Generator, n: int) -> np.ndarray:
    """n gate biases over the whole int16 range, its ends included."""
    ends = np.array([-32768, 32767, -32767, 0, -1, 1], np.int64)
    return np.where(rng.random(n) < 0.4, rng.choice(ends, n), rng.integers(-32768, 32768, n)).astype(np.int32)


def shift32(layer):
    """The layer with both gate requantizers at shift 32 (the kernels' usual-case loops)."""
    return dataclasses.replace(layer, rq_x=Requant(max(1, layer.rq_x.mult >> 8), 32),
                               rq_h=Requant(max(1, layer.rq_h.mult >> 8), 32))  # fmt: skip


@pytest.mark.parametrize("hsz", [1, 2, 3, 6, 8, 13, 16, 24])
@pytest.mark.parametrize("usual", [True, False], ids=["shift32", "shifted"])
def test_lstm_int16_biases_equal_golden(rt16: Runtime, hsz: int, usual: bool) -> None:
    """Every unit count the gate loops split differently (8 rows a step, pairs, a last row), both gate paths,
    biases at the ends of int16: h and c equal the golden model's after every step."""
    rng = np.random.default_rng(500 + hsz + 100 * usual)
    isz = int(rng.integers(1, 12))
    layer = random_layer(rng, isz, hsz, cell_frac=int(rng.integers(0, 16)))
    layer = LSTMLayerQ(**{**layer.__dict__, "bias": int16_biases(rng, 4 * hsz)})
    if usual:
        layer = shift32(layer)
    assert limits.kernel_limits(layer) == []
    cl = rt16.lstm(layer, SIG, TANH)
    assert cl._keep[0].dtype == np.int16
    h, c = np.zeros(hsz, np.int8), np.zeros(hsz, np.int16)
    for t in range(8):
        x = random_int8(rng, (isz,), MODES[t % 4], lo=-128)
        h, c = lstm_cell.kp_lstm_step_s8(layer, x, h, c, SIG, TANH)
        hc, cc = cl.step(x)
        assert np.array_equal(hc, h) and np.array_equal(cc, c), t


@pytest.mark.parametrize("cell", ["gru", "fastrnn", "fastgrnn", "rnn", "rnn-relu"])
@pytest.mark.parametrize("usual", [True, False], ids=["shift32", "shifted"])
def test_cells_int16_biases_equal_golden(rt16: Runtime, cell: str, usual: bool) -> None:
    """The other cells' steps read their int16 bias vectors (GRU: bias and bias_hn; FastGRNN: bias_z and bias_h)
    as the golden model reads the int32 ones: equal h, steps carried in C and from random states."""
    rng = np.random.default_rng(600 + 10 * ["gru", "fastrnn", "fastgrnn", "rnn", "rnn-relu"].index(cell) + usual)
    hsz, isz = 11, 7
    layer = random_cell(rng, cell, isz, hsz, shift32=usual)
    layer = dataclasses.replace(layer, **{n: int16_biases(rng, getattr(layer, n).size)
                                          for n in ("bias", "bias_hn", "bias_z", "bias_h") if hasattr(layer, n)})
    assert limits.kernel_limits(layer) == []
    cc = CCell(rt16, layer)
    assert all(v.dtype == np.int16 for v in cc.vecs)
    check_c_steps(cc, cell, layer, rng)


# ------------------------------------------------------------------------------- emitted files and guards


def _emit(model: ModelQ, target: str = "firmware") -> dict[str, str]:
    x = golden.quantize_input(np.random.default_rng(1).uniform(-1, 1, (2, T, I)), model.input_scale)
    return render_sources(model, load_board("m4"), None if target == "lib" else expected_for(model, x), "model",
                          "b16.pt", target=target)  # fmt: skip


@pytest.mark.parametrize("target", ["firmware", "lib"])
def test_build_files_define_kp_bias16_for_int16_models(target: str) -> None:
    q16 = quantize.quantize_model(float_model(0.5))
    q32 = quantize.with_bias_bits(q16, "32")
    f16, f32 = _emit(q16, target), _emit(q32, target)
    for build in ("Makefile", "CMakeLists.txt"):
        assert "KP_BIAS16" in f16[build], build
        assert "KP_BIAS16" not in f32[build], build
    assert "static const int16_t model_l0_bias[16] = {" in f16["model.c"]
    assert "static const int32_t model_l0_bias[16] = {" in f32["model.c"]
    assert "#ifndef KP_BIAS16" in f16["model.c"] and "#ifdef KP_BIAS16" in f32["model.c"]
    assert "static const int32_t model_head_b[3]" in f16["model.c"]  # the head's bias stays int32
    if target == "lib":  # each library's runtime is renamed, its width marker too
        assert "kp_bias16_runtime=model_kp_bias16_runtime" in f16["Makefile"]


@pytest.fixture(scope="module")
def host_cc() -> str:
    assert CC is not None, "a host C compiler is needed (the kernel tests need it too)"
    return CC


DRIVER = r"""
#include <stdio.h>
#include "model.h"
static const int8_t seq[%(steps)d * MODEL_INPUT_SIZE] = { %(seq)s };
int main(void)
{
    int32_t scores[MODEL_NUM_CLASSES], k;
    (void)model_run(seq, %(steps)d, scores);
    for (k = 0; k < MODEL_NUM_CLASSES; k++) {
        printf("%%ld\n", (long)scores[k]);
    }
    return 0;
}
"""


def _host_build(cc: str, work: Path, model: ModelQ, model_defs: list[str], runtime_defs: list[str],
                xq: np.ndarray) -> subprocess.CompletedProcess:
    """model.c compiled with model_defs, the runtime with runtime_defs, linked with a driver that prints the
    scores of model_run on xq."""
    work.mkdir(parents=True, exist_ok=True)
    files = _emit(model)
    for f in ("model.h", "model.c"):
        (work / f).write_text(files[f])
    (work / "driver.c").write_text(DRIVER % {"steps": xq.shape[0], "seq": ", ".join(str(int(v)) for v in xq.ravel())})
    inc = [f"-I{RUNTIME}", f"-I{work}"]
    objs = []
    for src, defs in [(work / "model.c", model_defs), (work / "driver.c", model_defs),
                      *((p, runtime_defs) for p in sorted(RUNTIME.glob("*.c")))]:
        obj = work / f"{src.stem}.o"
        r = subprocess.run([cc, "-O1", *WARN, *defs, *inc, "-c", str(src), "-o", str(obj)], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        if r.returncode != 0:
            return r
        objs.append(str(obj))
    r = subprocess.run([cc, *objs, "-o", str(work / "driver")], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return r
    return subprocess.run([str(work / "driver")], capture_output=True, text=True, timeout=60)


def test_model_and_runtime_of_one_width_give_the_golden_scores(host_cc: str, tmp_path: Path) -> None:
    """Both widths, model and runtime built alike on the host: the scores are the golden model's."""
    q16 = quantize.quantize_model(float_model(0.5))
    xq = golden.quantize_input(np.random.default_rng(2).uniform(-1, 1, (1, T, I)), q16.input_scale)
    want = golden.run_model(q16, xq).logits[0].tolist()
    for bits, defs in ((16, ["-DKP_BIAS16"]), (32, [])):
        r = _host_build(host_cc, tmp_path / str(bits), quantize.with_bias_bits(q16, str(bits)), defs, defs, xq[0])
        assert r.returncode == 0, r.stderr
        assert [int(v) for v in r.stdout.split()] == want, bits


def test_a_model_built_for_the_other_width_stops_the_compiler(host_cc: str, tmp_path: Path) -> None:
    q16 = quantize.quantize_model(float_model(0.5))
    xq = np.zeros((T, I), np.int8)
    r = _host_build(host_cc, tmp_path / "16", q16, [], [], xq)
    assert r.returncode != 0
    assert "this model's gate biases are int16: build it and the runtime with -DKP_BIAS16" in r.stderr
    r = _host_build(host_cc, tmp_path / "32", quantize.with_bias_bits(q16, "32"), ["-DKP_BIAS16"], ["-DKP_BIAS16"], xq)
    assert r.returncode != 0 and "this model's gate biases are int32" in r.stderr


@pytest.mark.parametrize("bits", [16, 32])
def test_a_runtime_built_for_the_other_width_does_not_link(host_cc: str, tmp_path: Path, bits: int) -> None:
    """model.c compiled right, the runtime without (or with) KP_BIAS16: the link fails on the width marker."""
    q = quantize.with_bias_bits(quantize.quantize_model(float_model(0.5)), str(bits))
    model_defs = ["-DKP_BIAS16"] if bits == 16 else []
    runtime_defs = [] if bits == 16 else ["-DKP_BIAS16"]
    r = _host_build(host_cc, tmp_path, q, model_defs, runtime_defs, np.zeros((T, I), np.int8))
    assert r.returncode != 0 and f"kp_bias{bits}_runtime" in r.stderr, r.stderr


# ------------------------------------------------------------------------------- the CLI and QEMU


def checkpoint(tmp_path: Path, wide_bias: bool) -> Path:
    """A small untrained KP-LSTM checkpoint (I = 6, H = 8); wide_bias: one gate bias of 10 (past int16's Q3.12)."""
    torch.manual_seed(0)
    model = KPRNNClassifier("lstm", 6, 8, 3, [[4, 2], [8, 3]], [[4, 2], [8, 4]])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and not name.startswith("head"):
                p.add_(0.3 * torch.randn_like(p))
                if wide_bias:
                    p[3] = 10.0
    x = torch.rand(64, 7, 6, generator=torch.Generator().manual_seed(0)) * 3.0 - 1.5
    ck = make_checkpoint(model, calibrate(model, x), {"dataset": "random", "seq_len": 7}, method="kp")
    path = tmp_path / ("wide.pt" if wide_bias else "lstm.pt")
    save_checkpoint(ck, path)
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "v.npz", x=rng.uniform(-1.5, 1.5, (4, 7, 6)), y=rng.integers(0, 3, 4))
    return path


def test_bias_bits_16_on_a_wide_bias_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    pt = checkpoint(tmp_path, wide_bias=True)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["emit", str(pt), "--board", "m4", "-o", str(out), "--vectors",
                                    str(tmp_path / "v.npz"), "--bias-bits", "16"])  # fmt: skip
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "outside int16" in lines[0] and "--bias-bits auto or 32" in lines[0], res.output
    assert "Traceback" not in res.output and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    res = CliRunner().invoke(main, ["emit", str(pt), "--board", "m4", "-o", str(out), "--vectors",
                                    str(tmp_path / "v.npz")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((out / "kpgen.json").read_text())["bias_bits"] == 32


@pytest.mark.qemu
def test_both_widths_bit_exact_on_m4(tmp_path: Path) -> None:
    """The same checkpoint emitted with int16 biases (auto) and forced int32: both firmwares build and match the
    golden model bit for bit under QEMU, and the int16 one holds 2 bytes fewer per gate bias (4H = 32)."""
    pt = checkpoint(tmp_path, wide_bias=False)
    runner = CliRunner()
    weight = {}
    for bits in ("auto", "32"):
        out = tmp_path / f"m4-{bits}"
        res = runner.invoke(main, ["emit", str(pt), "--board", "m4", "-o", str(out), "--vectors",
                                   str(tmp_path / "v.npz"), "--bias-bits", bits])  # fmt: skip
        assert res.exit_code == 0, res.output
        manifest = json.loads((out / "kpgen.json").read_text())
        assert manifest["bias_bits"] == (16 if bits == "auto" else 32)
        assert ("KP_BIAS16" in (out / "Makefile").read_text()) == (bits == "auto")
        weight[bits] = manifest["model"]["weight_bytes_int8"]
        res = runner.invoke(main, ["run", str(out), "--timeout", "120"])
        assert res.exit_code == 0, res.output
        assert "PASS: bit-exact" in res.output and "4/4" in res.output, res.output
    assert weight["32"] - weight["auto"] == 2 * 4 * 8


def test_unknown_bias_bits_is_a_user_error(tmp_path: Path) -> None:
    from kpgen.pipeline import emit_project

    with pytest.raises(KpgenError, match=r"^--bias-bits '8' is not one of auto, 16, 32$"):
        emit_project(tmp_path / "none.pt", "m4", tmp_path / "out", bias_bits="8")
    assert not (tmp_path / "out").exists()


def test_the_python_api_takes_the_emit_options(tmp_path: Path) -> None:
    """kpgen.api.emit passes bias_bits (and act_table) through as `kpgen emit` does."""
    from kpgen import api

    pt = checkpoint(tmp_path, wide_bias=False)
    m16 = api.emit(str(pt), "m4", tmp_path / "a", test=str(tmp_path / "v.npz"))
    m32 = api.emit(str(pt), "m4", tmp_path / "b", test=str(tmp_path / "v.npz"), bias_bits="32", act_table="interp")
    assert (m16["bias_bits"], m32["bias_bits"]) == (16, 32)
    assert m32["model"]["weight_bytes_int8"] - m16["model"]["weight_bytes_int8"] == 2 * 4 * 8
    assert m32["act_table"] == "interp"
