"""The quantizer: multiplier/shift pairs, factor scales, the T shift rule, cell format, refusals."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from kpgen import KpgenError
from kpgen.cells.lstm import LSTMLayerF, LSTMLayerQ
from kpgen.ir import Calibration, DenseF, KPMatrixF, ModelF, Requant
from kpgen.quant import limits, quantize
from kpgen.reference import floatmodel, golden


def float_model(rng: np.random.Generator, i: int = 12, h: int = 16, c: int = 4, scale: float = 0.3) -> ModelF:
    """A small random float KP-LSTM (Wx = (8x3)(x)(8x4), Wh = (8x4)(x)(8x4) for h=16, i=12)."""
    wx = KPMatrixF(a=rng.normal(0, scale, (8, 3)), b=rng.normal(0, scale, (4 * h // 8, i // 3)))
    wh = KPMatrixF(a=rng.normal(0, scale, (8, 4)), b=rng.normal(0, scale, (4 * h // 8, h // 4)))
    layer = LSTMLayerF(input_size=i, hidden_size=h, wx=wx, wh=wh, bias=rng.normal(0, 0.2, 4 * h))
    head = DenseF(weight=rng.normal(0, 0.5, (c, h)), bias=rng.normal(0, 0.1, c))
    return ModelF(input_size=i, num_classes=c, layers=(layer,), head=head,
                  calibration=Calibration(input_absmax=1.0, cell_absmax=(2.5,)), meta={})


@pytest.mark.parametrize("m", [1e-9, 3.3e-5, 0.01, 0.5, 0.999999, 1.0, 7.25, 1234.5])
def test_requant_from_real_is_accurate_and_in_range(m: float) -> None:
    rq = quantize.requant_from_real(m, "t")
    assert 2**30 <= rq.mult < 2**31 and 1 <= rq.shift <= 62
    assert abs(Fraction(rq.mult, 2**rq.shift) - Fraction(m)) <= Fraction(m) * Fraction(1, 2**30)


@pytest.mark.parametrize("m", [0.0, -1.0, float("nan"), float("inf"), 2.0**40, 2.0**-40])
def test_requant_from_real_refuses_unrepresentable(m: float) -> None:
    with pytest.raises(KpgenError):
        quantize.requant_from_real(m, "layer 0 Wx")


def test_symmetric_int8_round_trip() -> None:
    w = np.array([[-2.0, 0.5], [1.0, 0.0]])
    q, s = quantize.symmetric_int8(w)
    assert q.dtype == np.int8 and q.min() == -127 and s == pytest.approx(2.0 / 127)
    assert np.max(np.abs(q * s - w)) <= s / 2 + 1e-12
    z, sz = quantize.symmetric_int8(np.zeros((2, 2)))
    assert np.all(z == 0) and sz == 1.0


def test_t_shift_is_smallest_that_cannot_saturate() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        b = rng.integers(-127, 128, size=(int(rng.integers(1, 9)), int(rng.integers(1, 33)))).astype(np.int8)
        s = quantize.t_shift_for(b)
        worst = 128 * int(np.abs(b.astype(np.int64)).sum(axis=1).max())
        assert golden.rsr(np.int64(worst), s) <= 32767
        if s > 0:
            assert golden.rsr(np.int64(worst), s - 1) > 32767
        # the worst input really reaches the bound without saturating
        x = np.where(b[np.argmax(np.abs(b.astype(np.int64)).sum(axis=1))] < 0, -128, 127).astype(np.int8)
        t = golden.rsr(b.astype(np.int64) @ x.astype(np.int64), s)
        assert np.all(np.abs(t) <= 32768)


@pytest.mark.parametrize("cmax,frac", [(0.0, 15), (0.4, 15), (0.5, 15), (0.6, 14), (2.5, 12), (3.9, 12), (4.1, 11),
                                       (1000.0, 4)])
def test_cell_frac_leaves_room_for_twice_the_range(cmax: float, frac: int) -> None:
    assert quantize.cell_frac_for(cmax) == frac
    assert 2 * cmax * 2**frac <= 2**15 or (frac == 15 and cmax <= 0.5)


def test_cell_frac_refuses_huge_or_nan() -> None:
    for bad in (float("nan"), 1e6):
        with pytest.raises(KpgenError):
            quantize.cell_frac_for(bad)


def test_quantized_model_tracks_float_model() -> None:
    rng = np.random.default_rng(3)
    model = float_model(rng)
    qm = quantize.quantize_model(model)
    layer = qm.layers[0]
    # every requantizer maps its accumulator to Q3.12
    lf = model.layers[0]
    want = layer.wx.a_scale * layer.wx.b_scale * qm.input_scale * 2**layer.wx.t_shift * 4096
    assert layer.rq_x.real == pytest.approx(want, rel=1e-8)
    assert layer.cell_frac == 12 and layer.bias.dtype == np.int32
    assert np.allclose(layer.bias / 4096, lf.bias, atol=1 / 8192)
    x = rng.uniform(-1, 1, (64, 10, 12))
    f_logits = floatmodel.float_forward(model, x)
    g = golden.run_model(qm, golden.quantize_input(x, qm.input_scale))
    q_logits = g.logits * qm.head.out_scale
    err = np.max(np.abs(q_logits - f_logits))
    assert err < 0.05 * np.max(np.abs(f_logits)), err


def test_too_many_columns_in_a_is_refused() -> None:
    m = KPMatrixF(a=np.ones((1, 512)), b=np.ones((1, 1)))
    with pytest.raises(KpgenError, match="columns"):
        quantize.quantize_kp(m, "layer 0 Wx")


def test_calibration_layer_count_mismatch_is_refused() -> None:
    model = float_model(np.random.default_rng(0))
    bad = ModelF(input_size=model.input_size, num_classes=model.num_classes, layers=model.layers, head=model.head,
                 calibration=Calibration(input_absmax=1.0, cell_absmax=()), meta={})
    with pytest.raises(KpgenError, match="cell ranges"):
        quantize.quantize_model(bad)


# ------------------------------------------------------------------------------- gates, dense, kernel limits


@pytest.mark.parametrize("m", [1e-9, 3.3e-5, 0.013, 0.26, 0.4999, 0.5, 0.75, 3.0, 100.0])
def test_requant_gate_shift_at_most_32(m: float) -> None:
    """shift 32 while mult fits below 2**31, less only for m >= 0.5; mult as exact as its bits allow."""
    rq = quantize.requant_gate(m, 1000, "t")
    assert 1 <= rq.mult < 2**31 and 1 <= rq.shift <= 32
    assert (rq.shift == 32) == (m < 0.5 - 2**-33)
    assert abs(Fraction(rq.mult, 2**rq.shift) - Fraction(m)) <= Fraction(1, 2 ** (rq.shift + 1))
    assert 1000 << (32 - rq.shift) < 2**31  # acc * 2**(32 - shift) stays an int32


def test_requant_gate_refusals() -> None:
    with pytest.raises(KpgenError, match="leaves int32"):
        quantize.requant_gate(4.0, 2**28, "layer 0 Wh")  # shift 29: 2**28 * 8 overflows
    with pytest.raises(KpgenError, match="rounds to zero"):
        quantize.requant_gate(2.0**-34, 10, "layer 0 Wx")
    for bad in (0.0, float("nan"), -1.0):
        with pytest.raises(KpgenError):
            quantize.requant_gate(bad, 10, "layer 0 Wx")


def test_dense_matrix_is_folded_into_a() -> None:
    """B 1x1: A * b00 quantized, B = [[1]], scale 1, t_shift 0: the accumulator is W x exactly."""
    rng = np.random.default_rng(8)
    a = rng.normal(0, 0.3, (8, 5))
    q = quantize.quantize_kp(KPMatrixF(a=a, b=np.array([[-2.5]])), "layer 0 Wx")
    assert q.b.tolist() == [[1]] and q.b_scale == 1.0 and q.t_shift == 0
    assert np.allclose(q.a * q.a_scale, a * -2.5, atol=q.a_scale / 2 + 1e-12)
    x = rng.integers(-128, 128, 5).astype(np.int8)
    assert np.array_equal(golden.kp_matvec_s8(q.a, q.b, x, q.t_shift), q.a.astype(np.int64) @ x.astype(np.int64))


def test_quantized_layers_fit_the_kernels() -> None:
    """Every layer the quantizer returns passes limits.kernel_limits, dense and Kronecker, with large weights."""
    from kpgen.frontend import synth

    for seed, (fx, fh) in enumerate([((64, 12, 1, 1), (64, 16, 1, 1)), (None, None), ((8, 3, 8, 4), (8, 4, 8, 4))]):
        model = synth.random_model_f(16, 12, 3, fx, fh, seed=seed)
        for scale in (1.0, 8.0):
            big = [LSTMLayerF(l.input_size, l.hidden_size, KPMatrixF(l.wx.a * scale, l.wx.b), l.wh, l.bias)
                   for l in model.layers]  # fmt: skip
            qm = quantize.quantize_model(ModelF(model.input_size, model.num_classes, tuple(big), model.head,
                                             model.calibration))  # fmt: skip
            for layer in qm.layers:
                assert limits.kernel_limits(layer) == []


def test_kernel_limits_catch_each_rule() -> None:
    from factories import random_layer

    layer = random_layer(np.random.default_rng(4), 6, 4)
    assert limits.kernel_limits(layer) == []
    bad_shift = LSTMLayerQ(**{**layer.__dict__, "rq_x": Requant(layer.rq_x.mult, 33)})
    assert "shift 1..32" in limits.kernel_limits(bad_shift)[0]
    bound = limits.kp_acc_bound(layer.wh.a, layer.wh.b, layer.wh.t_shift)
    tight = 1
    while bound << (32 - tight) >= 2**31:
        tight += 1
    too_small = LSTMLayerQ(**{**layer.__dict__, "rq_h": Requant(1, tight - 1)})
    assert "leaves int32" in limits.kernel_limits(too_small)[0]
    huge_bias = LSTMLayerQ(**{**layer.__dict__, "bias": np.full(16, 2**31 - 1, np.int32)})
    assert "gate sum" in limits.kernel_limits(huge_bias)[0]


def test_synth_models_are_deterministic_calibrated_and_unsaturated() -> None:
    """kpgen.frontend.synth: same seed, same model; dense = B 1x1; realistic gate ranges; 16x KP by default."""
    from kpgen.frontend import synth

    a = synth.dense_lstm_model(3, 28, 32, 10)
    b = synth.dense_lstm_model(3, 28, 32, 10)
    assert all(np.array_equal(x.wx.a, y.wx.a) and np.array_equal(x.wh.a, y.wh.a)
               for x, y in zip(a.layers, b.layers, strict=True))
    assert a.calibration == b.calibration
    assert a.layers[0].wx.b.shape == (1, 1) and a.layers[0].wh.b.shape == (1, 1)
    assert 0.5 < a.calibration.gate_absmax[0] < 8  # gates move, mostly away from the flat ends
    assert a.calibration.input_absmax <= 1.0 and a.calibration.cell_absmax[0] > 0
    k = synth.kp_lstm_model(3, 28, 128, 10)
    assert synth.min_mac_factors(512, 128) == (32, 8, 16, 16) and k.layers[0].wh.a.shape == (32, 8)
    assert k.dense_params >= 16 * (k.params - k.head.weight.size - k.head.bias.size - k.layers[0].bias.size)
    assert limits.kernel_limits(quantize.quantize_model(k).layers[0]) == []


def test_the_limits_run_once_per_emit(monkeypatch) -> None:
    """The quantizer's layers carry their kernel-limit check to the emitter; a hand-made layer is checked there."""
    import dataclasses

    from kpgen.codegen import emit
    from kpgen.frontend import synth
    from kpgen.reference import vectors
    from kpgen.target.boards import load_board

    m = quantize.quantize_model(synth.kp_lstm_model(0, 6, 16, 3))
    assert all(limits.is_checked(layer) for layer in m.layers)
    calls = []
    real = limits.kernel_limits
    monkeypatch.setattr(limits, "kernel_limits", lambda layer: calls.append(layer) or real(layer))
    exp = vectors.expected_for(m, np.zeros((1, 2, 6), np.int8))
    emit.render_sources(m, load_board("m4"), exp, "model", "x.pt")
    assert calls == []
    copy = dataclasses.replace(m, layers=tuple(dataclasses.replace(layer) for layer in m.layers))
    assert not any(limits.is_checked(layer) for layer in copy.layers)
    emit.render_sources(copy, load_board("m4"), exp, "model", "x.pt")
    assert len(calls) == len(copy.layers)
