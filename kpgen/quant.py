"""Float IR -> integer IR: scales, multiplier/shift pairs, int8 weights, int32 biases (docs/quantization.md)."""

from __future__ import annotations

import math

import numpy as np

from kpgen import KpgenError, golden
from kpgen.ir import (
    DenseF,
    DenseQ,
    KPMatrixF,
    KPMatrixQ,
    LSTMLayerF,
    LSTMLayerQ,
    ModelF,
    ModelQ,
    Requant,
)

GATE_FRAC = 12  # gate pre-activations are Q3.12
H_SCALE = 1.0 / 128.0  # hidden state is Q0.7
MAX_N1 = 511  # A T sums n1 products of |int8| <= 128 and |int16| <= 32768: n1 <= 511 keeps it in int32


def symmetric_int8(w: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-tensor symmetric int8: values -127..127 and the scale of one step."""
    absmax = float(np.max(np.abs(w))) if w.size else 0.0
    scale = absmax / 127.0 if absmax > 0 else 1.0
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale


def requant_from_real(m: float, what: str) -> Requant:
    """Fixed-point multiplier for a real factor m > 0: m ~= mult / 2**shift, mult in [2**30, 2**31)."""
    if not (m > 0 and math.isfinite(m)):
        raise KpgenError(f"{what}: scale {m!r} is not a positive finite number; retrain or recalibrate the model")
    mant, exp = math.frexp(m)  # m = mant * 2**exp, mant in [0.5, 1)
    mult = int(round(mant * 2**31))
    if mult == 2**31:
        mult //= 2
        exp += 1
    shift = 31 - exp
    if not 1 <= shift <= 62:
        raise KpgenError(
            f"{what}: scale {m:.3g} needs a right shift of {shift}, outside 1..62; "
            "the weights or calibration ranges are too extreme to requantize (check for exploding weights)"
        )
    return Requant(mult=mult, shift=shift)


def t_shift_for(b_q: np.ndarray, t_bits: int = 16) -> int:
    """Smallest shift for which X B^T can never leave the t_bits range (|x| <= 128)."""
    if t_bits >= 32:
        return 0
    worst = 128 * int(np.max(np.sum(np.abs(b_q.astype(np.int64)), axis=1))) if b_q.size else 0
    limit = 2 ** (t_bits - 1) - 1
    s = 0
    while golden.rsr(np.int64(worst), s) > limit:
        s += 1
    return s


def quantize_kp(m: KPMatrixF, what: str, t_bits: int = 16) -> KPMatrixQ:
    if m.a.shape[1] > MAX_N1:
        raise KpgenError(
            f"{what}: factor A has {m.a.shape[1]} columns, more than {MAX_N1}; the int32 accumulator "
            "could overflow: choose factor shapes with fewer columns in A"
        )
    a, sa = symmetric_int8(m.a)
    b, sb = symmetric_int8(m.b)
    return KPMatrixQ(a=a, b=b, t_shift=t_shift_for(b, t_bits), a_scale=sa, b_scale=sb)


def cell_frac_for(cell_absmax: float) -> int:
    """Fractional bits of the int16 cell state: room for twice the largest calibrated |c|."""
    if not (cell_absmax >= 0 and math.isfinite(cell_absmax)):
        raise KpgenError(f"calibration cell_absmax {cell_absmax!r} is not a finite number; recalibrate the model")
    if cell_absmax * 2 > 2**15:
        raise KpgenError(f"calibrated cell state {cell_absmax:.3g} is too large for int16; retrain with clipping")
    int_bits = max(0, math.ceil(math.log2(max(2 * cell_absmax, 1.0))))
    return max(0, min(15, 15 - int_bits))


def quantize_lstm(layer: LSTMLayerF, input_scale: float, cell_absmax: float, idx: int, t_bits: int = 16) -> LSTMLayerQ:
    wx = quantize_kp(layer.wx, f"layer {idx} Wx", t_bits)
    wh = quantize_kp(layer.wh, f"layer {idx} Wh", t_bits)
    gate = float(2**GATE_FRAC)
    rq_x = requant_from_real(wx.a_scale * wx.b_scale * input_scale * 2**wx.t_shift * gate, f"layer {idx} Wx")
    rq_h = requant_from_real(wh.a_scale * wh.b_scale * H_SCALE * 2**wh.t_shift * gate, f"layer {idx} Wh")
    bias = np.round(layer.bias.astype(np.float64) * gate)
    if np.max(np.abs(bias), initial=0) >= 2**31:
        raise KpgenError(f"layer {idx}: a bias does not fit int32 in Q3.12; retrain with bounded biases")
    return LSTMLayerQ(
        input_size=layer.input_size,
        hidden_size=layer.hidden_size,
        wx=wx,
        wh=wh,
        rq_x=rq_x,
        rq_h=rq_h,
        bias=bias.astype(np.int32),
        cell_frac=cell_frac_for(cell_absmax),
        input_scale=input_scale,
    )


def quantize_dense(head: DenseF) -> DenseQ:
    w, sw = symmetric_int8(head.weight)
    out_scale = sw * H_SCALE
    bias = np.round(head.bias.astype(np.float64) / out_scale)
    if np.max(np.abs(bias), initial=0) >= 2**31:
        raise KpgenError("head: a bias does not fit int32 at the head's scale; retrain with bounded biases")
    return DenseQ(weight=w, bias=bias.astype(np.int32), out_scale=out_scale)


def quantize_model(model: ModelF, t_bits: int = 16) -> ModelQ:
    """The whole model. t_bits other than 16 exists only for accuracy experiments in the golden model."""
    cal = model.calibration
    if not (cal.input_absmax > 0 and math.isfinite(cal.input_absmax)):
        raise KpgenError(f"calibration input_absmax {cal.input_absmax!r} must be a positive number; recalibrate")
    if len(cal.cell_absmax) != len(model.layers):
        raise KpgenError(
            f"calibration has {len(cal.cell_absmax)} cell ranges for {len(model.layers)} layers; recalibrate"
        )
    input_scale = cal.input_absmax / 127.0
    layers = []
    scale = input_scale
    for i, (layer, cmax) in enumerate(zip(model.layers, cal.cell_absmax)):
        layers.append(quantize_lstm(layer, scale, cmax, i, t_bits))
        scale = H_SCALE
    return ModelQ(
        input_size=model.input_size,
        num_classes=model.num_classes,
        input_scale=input_scale,
        layers=tuple(layers),
        head=quantize_dense(model.head),
        sigmoid_table=golden.make_table("sigmoid"),
        tanh_table=golden.make_table("tanh"),
        meta=dict(model.meta),
    )
