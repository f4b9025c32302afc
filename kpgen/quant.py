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
MAX_N2 = golden.MAX_N2  # X B^T sums n2 products of |x| <= 128 and |B| <= 127, plus T's rounding term, in int32


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
    """int8 factors with per-factor scales. A dense matrix (B is 1x1) is folded: A * b00 is quantized and B
    becomes [[1]] with scale 1 and t_shift 0, so T = x exactly and the accumulator is W x (the C runtime
    then runs its dense kernel)."""
    if m.a.shape[1] > MAX_N1:
        raise KpgenError(
            f"{what}: factor A has {m.a.shape[1]} columns, more than {MAX_N1}; the int32 accumulator "
            "could overflow: choose factor shapes with fewer columns in A"
        )
    if m.b.shape[1] > MAX_N2:
        raise KpgenError(
            f"{what}: factor B has {m.b.shape[1]} columns, more than {MAX_N2}; the int32 sum of X B^T could "
            "overflow: choose factor shapes with fewer columns in B"
        )
    if m.b.shape == (1, 1):
        a, sa = symmetric_int8(np.asarray(m.a, dtype=np.float64) * float(m.b[0, 0]))
        return KPMatrixQ(a=a, b=np.ones((1, 1), np.int8), t_shift=0, a_scale=sa, b_scale=1.0)
    a, sa = symmetric_int8(m.a)
    b, sb = symmetric_int8(m.b)
    return KPMatrixQ(a=a, b=b, t_shift=t_shift_for(b, t_bits), a_scale=sa, b_scale=sb)


def requant_gate(m: float, acc_bound: int, what: str) -> Requant:
    """Gate requantizer m ~= mult / 2**shift with shift in 1..32, mult in 1..2**31-1 (docs/quantization.md).

    shift is 32 unless m >= 0.5; then it drops just enough for mult to fit, which the worst-case accumulator
    must allow (|acc| * 2**(32-shift) < 2**31) so the C kernels need one 32-bit rounding high multiply.
    """
    if not (m > 0 and math.isfinite(m)):
        raise KpgenError(f"{what}: scale {m!r} is not a positive finite number; retrain or recalibrate the model")
    shift = golden.GATE_SHIFT_MAX
    mult = round(m * 2.0**shift)
    while mult >= 2**31 and shift > 1:
        shift -= 1
        mult = round(m * 2.0**shift)
    if mult >= 2**31 or (acc_bound << (golden.GATE_SHIFT_MAX - shift)) >= 2**31:
        raise KpgenError(
            f"{what}: one accumulator step is worth {m:.3g} gate units and the accumulator can reach {acc_bound}; "
            "the product leaves int32 (check for exploding weights or input ranges)"
        )
    if mult < 1:
        raise KpgenError(
            f"{what}: scale {m:.3g} rounds to zero in a 32-bit multiplier; the matrix contributes nothing "
            "(check for vanishing weights)"
        )
    return Requant(mult=int(mult), shift=shift)


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
    rq_x = requant_gate(wx.a_scale * wx.b_scale * input_scale * 2**wx.t_shift * gate,
                        golden.kp_acc_bound(wx.a, wx.b, wx.t_shift, t_bits), f"layer {idx} Wx")
    rq_h = requant_gate(wh.a_scale * wh.b_scale * H_SCALE * 2**wh.t_shift * gate,
                        golden.kp_acc_bound(wh.a, wh.b, wh.t_shift, t_bits), f"layer {idx} Wh")
    bias = np.round(layer.bias.astype(np.float64) * gate)
    if np.max(np.abs(bias), initial=0) >= 2**31:
        raise KpgenError(f"layer {idx}: a bias does not fit int32 in Q3.12; retrain with bounded biases")
    q = LSTMLayerQ(
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
    problems = golden.kernel_limits(q) if t_bits == 16 else []  # other widths: golden experiments only
    if problems:
        raise KpgenError(f"layer {idx}: {problems[0]}; the int32 kernels cannot run it (check for exploding weights or biases)")
    return q


def quantize_dense(head: DenseF) -> DenseQ:
    """int8 weights; int32 biases at the logits' scale. Refuses biases for which bias + W h (|h| <= 128) could
    leave int32, the width kp_fc_s8 sums in."""
    w, sw = symmetric_int8(head.weight)
    out_scale = sw * H_SCALE
    bias = np.round(head.bias.astype(np.float64) / out_scale)
    worst = np.abs(bias) + 128.0 * np.sum(np.abs(w.astype(np.float64)), axis=1) if bias.size else np.zeros(1)
    if np.max(worst, initial=0) >= 2**31:
        k = int(np.argmax(worst))
        raise KpgenError(
            f"head: bias {head.bias[k]:.3g} of class {k} is {abs(bias[k]):.3g} steps of the logits' scale "
            f"{out_scale:.3g}, so bias + W h can leave int32; retrain with bounded head biases "
            "(or check for near-zero head weights)"
        )
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
