"""Heads beyond the last step: the mean or max over time and a small MLP head (Linear-ReLU-Linear), from the
checkpoint's arch.head through the float model, the quantizer, the golden model, the C kernels (host, bit for
bit) and the emitted firmware on the Cortex-M4 and Cortex-M0 under QEMU (bit-exact), both directions."""

from __future__ import annotations

import ctypes
import math
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import save, tiny_checkpoint
from click.testing import CliRunner

from kpgen import KpgenError
from kpgen.cli import main
from kpgen.frontend import synth
from kpgen.frontend.load import checkpoint_to_ir
from kpgen.quant import quantize
from kpgen.reference import floatmodel, golden

I, T, C, K = 6, 5, 3, 7
HEADS = {  # name: (pool, MLP hidden width)
    "mean": ("mean", 0),
    "max": ("max", 0),
    "mlp": ("last", K),
    "mlp-mean": ("mean", K),
    "last-output": ("last_output", 0),  # out[:, -1]: for a bidirectional layer, not the final states
}


def _variant_checkpoint(bidirectional: bool, seed: int = 0) -> dict:
    """A one-layer GRU (kp matrices) in the training-side form, by hand: I = 6, H = 4."""
    gen = torch.Generator().manual_seed(seed)
    hid, dirs = 4, (("fwd.", "bwd.") if bidirectional else ("",))
    sd = {}
    for d in dirs:
        sd[f"layers.0.{d}wx.a"] = torch.randn(4, 2, generator=gen) * 0.7
        sd[f"layers.0.{d}wx.b"] = torch.randn(3, 3, generator=gen) * 0.7
        sd[f"layers.0.{d}wh.a"] = torch.randn(4, 2, generator=gen) * 0.7
        sd[f"layers.0.{d}wh.b"] = torch.randn(3, 2, generator=gen) * 0.7
        sd[f"layers.0.{d}bias"] = torch.randn(3 * hid, generator=gen) * 0.3
        sd[f"layers.0.{d}bias_hn"] = torch.randn(hid, generator=gen) * 0.3
    sd["head.weight"] = torch.randn(C, len(dirs) * hid, generator=gen)
    sd["head.bias"] = torch.randn(C, generator=gen) * 0.1
    arch = {"cell": "gru", "method": "kp", "bidirectional": bidirectional, "input_size": I, "hidden_size": hid,
            "num_layers": 1, "num_classes": C, "wx_specs": [[[4, 2], [3, 3]]], "wh_specs": [[[4, 2], [3, 2]]]}
    return {"format": "kpgen-checkpoint", "version": 1, "arch": arch, "state_dict": sd,
            "calibration": {"input_absmax": 1.5, "state_absmax": [1.0]}, "meta": {"seq_len": T}}


def with_head(ck: dict, pool: str, hidden: int, seed: int = 1) -> dict:
    """ck with arch.head, the MLP head's tensors and a calibration measured on random inputs."""
    gen = torch.Generator().manual_seed(seed)
    feat = ck["state_dict"]["head.weight"].shape[1]
    ck["arch"]["head"] = {"pool": pool, "hidden_size": hidden}
    if hidden:
        ck["state_dict"]["head.hidden.weight"] = torch.randn(hidden, feat, generator=gen)
        ck["state_dict"]["head.hidden.bias"] = torch.randn(hidden, generator=gen) * 0.2
        ck["state_dict"]["head.weight"] = torch.randn(C, hidden, generator=gen) * 0.5
        ck["calibration"]["hidden_absmax"] = 1.0
    ir = checkpoint_to_ir(ck, "ck")
    cal = synth.calibrate(ir, np.random.default_rng(seed).uniform(-1.5, 1.5, (64, T, I)))
    ck["calibration"]["input_absmax"] = cal.input_absmax
    key = "cell_absmax" if "cell_absmax" in ck["calibration"] else "state_absmax"
    ck["calibration"][key] = list(cal.cell_absmax)
    if hidden:
        ck["calibration"]["hidden_absmax"] = cal.hidden_absmax
    return ck


def head_checkpoint(kind: str, head: str) -> dict:
    """kind: "lstm" (streaming, two layers, format v1) or "bigru" (bidirectional, training-side form)."""
    ck = tiny_checkpoint(0) if kind == "lstm" else _variant_checkpoint(True)
    return with_head(ck, *HEADS[head])


# ------------------------------------------------------------------------------------------- float and IR


def test_default_head_is_the_last_step() -> None:
    """A checkpoint without arch.head reads the last step and has no hidden layer, as before."""
    ir = checkpoint_to_ir(tiny_checkpoint(0), "ck")
    assert ir.pool == "last" and ir.hidden is None
    q = quantize.quantize_model(ir)
    assert q.pool == "last" and q.hidden is None


@pytest.mark.parametrize("head", sorted(HEADS))
def test_float_head_matches_numpy(head: str) -> None:
    """float_forward applies the pool over every step (both directions) and the MLP as written in numpy."""
    ir = checkpoint_to_ir(head_checkpoint("bigru", head), "ck")
    x = np.random.default_rng(5).uniform(-1.5, 1.5, (4, T, I))
    out = floatmodel.run_layer(ir.layers[0], x, keep_pre=False)[0]
    pool, hidden = HEADS[head]
    f = out.mean(1) if pool == "mean" else out.max(1) if pool == "max" else out[:, -1] if pool == "last_output" \
        else np.concatenate([out[:, -1, :4], out[:, 0, 4:]], axis=-1)
    if hidden:
        f = np.maximum(f @ ir.hidden.weight.T + ir.hidden.bias, 0)
    np.testing.assert_allclose(floatmodel.float_forward(ir, x), f @ ir.head.weight.T + ir.head.bias, atol=1e-12)


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("kind", ["lstm", "bigru"])
def test_int8_tracks_float(kind: str, head: str) -> None:
    """The integer head follows the float head: logits within a few percent of their range."""
    ir = checkpoint_to_ir(head_checkpoint(kind, head), "ck")
    q = quantize.quantize_model(ir)
    x = np.random.default_rng(2).uniform(-1.5, 1.5, (64, T, I))
    want = floatmodel.float_forward(ir, x)
    got = golden.run_model(q, golden.quantize_input(x, q.input_scale)).logits * q.head.out_scale
    span = float(np.max(want) - np.min(want))
    assert np.max(np.abs(got - want)) < 0.08 * span, (np.max(np.abs(got - want)), span)


def test_pool_is_not_read_as_last_step() -> None:
    """The same weights with a mean head and a last-step head give different logits (nothing falls back)."""
    a = checkpoint_to_ir(head_checkpoint("lstm", "mean"), "ck")
    b = replace(a, pool="last")
    x = np.random.default_rng(6).uniform(-1.5, 1.5, (8, T, I))
    assert not np.allclose(floatmodel.float_forward(a, x), floatmodel.float_forward(b, x))


HEAD_ERRORS = {
    "pool": ({"pool": "attention"}, "arch.head.pool is 'attention', not one of last, last_output, mean, max"),
    "key": ({"pool": "mean", "layers": 2}, "arch.head has unknown key(s) layers"),
    "hidden": ({"hidden_size": -3}, "arch.head.hidden_size is -3, not an int in 0..4096"),
    "type": ("mean", "arch.head is 'mean', not a dict"),
}


@pytest.mark.parametrize("case", sorted(HEAD_ERRORS))
def test_head_errors(case: str) -> None:
    head, message = HEAD_ERRORS[case]
    ck = tiny_checkpoint(0)
    ck["arch"]["head"] = head
    with pytest.raises(KpgenError) as e:
        checkpoint_to_ir(ck, "ck.pt")
    assert message in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("ck.pt: ")


def test_mlp_head_needs_its_range() -> None:
    ck = head_checkpoint("lstm", "mlp")
    del ck["calibration"]["hidden_absmax"]
    with pytest.raises(KpgenError, match=r"calibration\.hidden_absmax is None, not a positive number"):
        checkpoint_to_ir(ck, "ck.pt")


# ------------------------------------------------------------------------------------ golden arithmetic


def test_pool_mean_rounds_half_up() -> None:
    """kp_pool_mean_s8 is round(sum / count) with halves up, exactly, at every sum of int8 values."""
    for count in (1, 2, 3, 7, 8, 100):
        sums = np.arange(-128 * count, 127 * count + 1, dtype=np.int64)
        got = golden.kp_pool_mean_s8(sums, count).astype(np.int64)
        want = np.array([math.floor(Fraction(int(s), count) + Fraction(1, 2)) for s in sums])
        assert np.array_equal(got, want), count


def test_fc_relu_requantizes() -> None:
    """kp_fc_relu_s8: ReLU, then the rounding multiply, clamped to 127 (checked against exact fractions)."""
    rng = np.random.default_rng(7)
    w = rng.integers(-127, 128, (9, 5)).astype(np.int8)
    b = rng.integers(-3000, 3000, 9).astype(np.int32)
    x = rng.integers(-128, 128, (40, 5)).astype(np.int8)
    mult, shift = 1_500_000_000, 38
    got = golden.kp_fc_relu_s8(w, b, x, mult, shift)
    acc = x.astype(np.int64) @ w.T.astype(np.int64) + b
    for a, g in zip(acc.ravel(), got.ravel(), strict=True):
        want = min(math.floor(Fraction(max(int(a), 0) * mult, 2**shift) + Fraction(1, 2)), 127)
        assert int(g) == want


# ---------------------------------------------------------------------------------- C kernels on the host

P8, P32 = ctypes.POINTER(ctypes.c_int8), ctypes.POINTER(ctypes.c_int32)


def _ptr(a: np.ndarray, p: type) -> ctypes._Pointer:
    return a.ctypes.data_as(p)


@pytest.mark.parametrize("lib_name", ["runtime_lib", "runtime_lib_dsp"])
def test_c_kernels_match_golden(lib_name: str, request: pytest.FixtureRequest) -> None:
    """kp_pool_sum_s8, kp_pool_max_s8, kp_pool_mean_s8 and kp_fc_relu_s8 in C equal their golden twins."""
    lib = request.getfixturevalue(lib_name)
    rng = np.random.default_rng(8)
    for steps in (1, 2, 5, 33):
        h = rng.integers(-128, 128, (steps, 11)).astype(np.int8)
        h[0, 0] = -128
        total = np.zeros(11, np.int32)
        mx = np.full(11, -128, np.int8)
        for t in range(steps):
            row = np.ascontiguousarray(h[t])
            lib.kp_pool_sum_s8(_ptr(row, P8), 11, _ptr(total, P32))
            lib.kp_pool_max_s8(_ptr(row, P8), 11, _ptr(mx, P8))
        assert np.array_equal(total, golden.kp_pool_sum_s8(h[None])[0])
        assert np.array_equal(mx, golden.kp_pool_max_s8(h[None])[0])
        mean = np.zeros(11, np.int8)
        lib.kp_pool_mean_s8(_ptr(total, P32), 11, steps, _ptr(mean, P8))
        assert np.array_equal(mean, golden.kp_pool_mean_s8(total, steps)), steps
    edge = np.array([-128 * 4, -2, -6, 6, 2, 127 * 4, -5, 5], np.int32)  # halves, both signs
    mean = np.zeros(8, np.int8)
    lib.kp_pool_mean_s8(_ptr(edge, P32), 8, 4, _ptr(mean, P8))
    assert np.array_equal(mean, golden.kp_pool_mean_s8(edge, 4))
    lib.kp_pool_mean_s8(_ptr(edge, P32), 8, 0, _ptr(mean, P8))
    assert not mean.any()  # nothing summed: zeros
    for rows, cols, mult, shift in ((9, 5, 1_500_000_000, 38), (4, 17, 2**30, 20), (3, 64, 2**31 - 1, 60)):
        w = rng.integers(-127, 128, (rows, cols)).astype(np.int8)
        b = rng.integers(-20000, 20000, rows).astype(np.int32)
        for _ in range(20):
            x = rng.integers(-128, 128, cols).astype(np.int8)
            out = np.zeros(rows, np.int8)
            lib.kp_fc_relu_s8(_ptr(w, P8), _ptr(b, P32), rows, cols, _ptr(x, P8), mult, shift, _ptr(out, P8))
            assert np.array_equal(out, golden.kp_fc_relu_s8(w, b, x, mult, shift)), (rows, cols)


# -------------------------------------------------------------------------------------- firmware, QEMU

QEMU_CASES = [(kind, head, board) for head in sorted(HEADS)
              for kind, board in (("lstm", "m4"), ("bigru", "m0"))]


@pytest.mark.qemu
@pytest.mark.parametrize(("kind", "head", "board"), QEMU_CASES, ids=[f"{k}-{h}-{b}" for k, h, b in QEMU_CASES])
def test_heads_bit_exact_under_qemu(kind: str, head: str, board: str, tmp_path: Path) -> None:
    """Every head through `kpgen emit` + `kpgen run`: a streaming two-layer LSTM on the M4, a bidirectional GRU
    on the M0; sequences of two lengths, bit-exact."""
    ck = head_checkpoint(kind, head)
    pt = save(ck, tmp_path / "m.pt")
    rng = np.random.default_rng(9)
    vec = tmp_path / "v.npz"
    np.savez(vec, x=rng.uniform(-1.5, 1.5, (4, T, I)), y=rng.integers(0, C, 4))
    out = tmp_path / board
    runner = CliRunner()
    res = runner.invoke(main, ["emit", str(pt), "--board", board, "-o", str(out), "--vectors", str(vec)])
    assert res.exit_code == 0, res.output
    src = (out / "model.c").read_text()
    pool, hidden = HEADS[head]
    assert ("kp_pool_sum_s8(" in src) == (pool == "mean") and ("kp_pool_max_s8(" in src) == (pool == "max")
    assert ("kp_fc_relu_s8(" in src) == bool(hidden)
    res = runner.invoke(main, ["run", str(out), "--timeout", "120"])
    assert res.exit_code == 0, res.output
    assert "PASS: bit-exact" in res.output and "4/4" in res.output, res.output


def test_mlp_head_quantizer_refusals() -> None:
    """The quantizer refuses an MLP head without a range, and hidden biases that leave int32."""
    ir = checkpoint_to_ir(head_checkpoint("lstm", "mlp"), "ck")
    with pytest.raises(KpgenError, match=r"calibration hidden_absmax 0\.0 \(the MLP head's largest ReLU output\)"):
        quantize.quantize_model(replace(ir, calibration=replace(ir.calibration, hidden_absmax=0.0)))
    assert ir.hidden is not None
    big = replace(ir.hidden, bias=ir.hidden.bias * 1e12)
    with pytest.raises(KpgenError, match=r"head: the hidden layer's bias \+ W f can leave int32"):
        quantize.quantize_model(replace(ir, hidden=big))


def test_soak_refuses_other_heads(tmp_path: Path) -> None:
    """The streaming soak's expected scores read h_t: a model with another head is refused before any build."""
    from kpgen.studies.soak import soak

    pt = save(head_checkpoint("lstm", "mean"), tmp_path / "m.pt")
    with pytest.raises(KpgenError, match=r"has a head on the mean over time or an MLP head; the soak checks"):
        soak(pt, "m4", 10, 5, tmp_path / "work")
