"""The quantizer: multiplier/shift pairs, factor scales, the T shift rule, cell format, refusals."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from kpgen import KpgenError, golden, quant, reference
from kpgen.ir import Calibration, DenseF, KPMatrixF, LSTMLayerF, ModelF


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
    rq = quant.requant_from_real(m, "t")
    assert 2**30 <= rq.mult < 2**31 and 1 <= rq.shift <= 62
    assert abs(Fraction(rq.mult, 2**rq.shift) - Fraction(m)) <= Fraction(m) * Fraction(1, 2**30)


@pytest.mark.parametrize("m", [0.0, -1.0, float("nan"), float("inf"), 2.0**40, 2.0**-40])
def test_requant_from_real_refuses_unrepresentable(m: float) -> None:
    with pytest.raises(KpgenError):
        quant.requant_from_real(m, "layer 0 Wx")


def test_symmetric_int8_round_trip() -> None:
    w = np.array([[-2.0, 0.5], [1.0, 0.0]])
    q, s = quant.symmetric_int8(w)
    assert q.dtype == np.int8 and q.min() == -127 and s == pytest.approx(2.0 / 127)
    assert np.max(np.abs(q * s - w)) <= s / 2 + 1e-12
    z, sz = quant.symmetric_int8(np.zeros((2, 2)))
    assert np.all(z == 0) and sz == 1.0


def test_t_shift_is_smallest_that_cannot_saturate() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        b = rng.integers(-127, 128, size=(int(rng.integers(1, 9)), int(rng.integers(1, 33)))).astype(np.int8)
        s = quant.t_shift_for(b)
        worst = 128 * int(np.abs(b.astype(np.int64)).sum(axis=1).max())
        assert golden.rsr(np.int64(worst), s) <= 32767
        if s > 0:
            assert golden.rsr(np.int64(worst), s - 1) > 32767
        # the worst input really reaches the bound without saturating
        x = np.where(b[np.argmax(np.abs(b.astype(np.int64)).sum(axis=1))] < 0, -128, 127).astype(np.int8)
        t = golden.rsr(b.astype(np.int64) @ x.astype(np.int64), s)
        assert np.all(np.abs(t) <= 32768)


@pytest.mark.parametrize("cmax,frac", [(0.0, 15), (0.4, 15), (0.5, 15), (0.6, 14), (2.5, 12), (3.9, 12), (4.1, 11), (1000.0, 4)])
def test_cell_frac_leaves_room_for_twice_the_range(cmax: float, frac: int) -> None:
    assert quant.cell_frac_for(cmax) == frac
    assert 2 * cmax * 2**frac <= 2**15 or frac == 15 and cmax <= 0.5


def test_cell_frac_refuses_huge_or_nan() -> None:
    for bad in (float("nan"), 1e6):
        with pytest.raises(KpgenError):
            quant.cell_frac_for(bad)


def test_quantized_model_tracks_float_model() -> None:
    rng = np.random.default_rng(3)
    model = float_model(rng)
    qm = quant.quantize_model(model)
    layer = qm.layers[0]
    # every requantizer maps its accumulator to Q3.12
    lf = model.layers[0]
    assert layer.rq_x.real == pytest.approx(layer.wx.a_scale * layer.wx.b_scale * qm.input_scale * 2**layer.wx.t_shift * 4096, rel=1e-8)
    assert layer.cell_frac == 12 and layer.bias.dtype == np.int32
    assert np.allclose(layer.bias / 4096, lf.bias, atol=1 / 8192)
    x = rng.uniform(-1, 1, (64, 10, 12))
    f_logits = reference.float_forward(model, x)
    g = golden.run_model(qm, golden.quantize_input(x, qm.input_scale))
    q_logits = g.logits * qm.head.out_scale
    err = np.max(np.abs(q_logits - f_logits))
    assert err < 0.05 * np.max(np.abs(f_logits)), err


def test_too_many_columns_in_a_is_refused() -> None:
    m = KPMatrixF(a=np.ones((1, 512)), b=np.ones((1, 1)))
    with pytest.raises(KpgenError, match="columns"):
        quant.quantize_kp(m, "layer 0 Wx")


def test_calibration_layer_count_mismatch_is_refused() -> None:
    model = float_model(np.random.default_rng(0))
    bad = ModelF(input_size=model.input_size, num_classes=model.num_classes, layers=model.layers, head=model.head,
                 calibration=Calibration(input_absmax=1.0, cell_absmax=()), meta={})
    with pytest.raises(KpgenError, match="cell ranges"):
        quant.quantize_model(bad)
