"""Float IR -> integer IR: scales, multiplier/shift pairs, int8 weights, int32 biases (docs/quantization.md)."""

from __future__ import annotations

import dataclasses
import math
from typing import TypeVar

import numpy as np

from kpgen import KpgenError, ir
from kpgen.ir import (
    DenseF,
    DenseQ,
    KPMatrixF,
    KPMatrixQ,
    LayerF,
    ModelF,
    ModelQ,
    Requant,
)
from kpgen.quant import limits
from kpgen.reference import golden

GATE_FRAC = 12  # gate pre-activations are Q3.12
H_SCALE = 1.0 / 128.0  # hidden state of LSTM and GRU layers is Q0.7 (FastRNN, FastGRNN: ir.state_scale)
MAX_N1 = limits.MAX_N1  # A T sums n1 products of |int8| <= 128 and |int16| <= 32768: n1 <= 511 keeps it in int32
MAX_N2 = limits.MAX_N2  # X B^T sums n2 products of |x| <= 128 and |B| <= 127, plus T's rounding term, in int32


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


FACTOR_NAMES = "ABCDEFGH"  # the factors of W = A (x) B (x) C ..., as messages and the emitted arrays name them


def factor_shifts(factors: list[np.ndarray] | tuple[np.ndarray, ...], t_bits: int = 16) -> tuple[int, ...]:
    """Worst-case rounding shifts of a chain of int8 factors: shifts[j] rounds the products of factor j+2 into
    the intermediate factor j+1 multiplies. Innermost first: the last factor's sums (|x| <= 128) get t_shift_for;
    each outer intermediate's worst case is sum |F[p, :]| times the worst rounded element below it, and gets
    the smallest shift that keeps it inside t_bits, so no intermediate can saturate. Two factors: (t_shift_for(B),)."""
    k = len(factors)
    if t_bits >= 32:
        return (0,) * (k - 1)
    limit = 2 ** (t_bits - 1) - 1
    shifts = [0] * (k - 1)
    worst = 128 * np.sum(np.abs(np.asarray(factors[-1], np.int64)), axis=1)
    for j in range(k - 2, -1, -1):
        s = 0
        while golden.rsr(np.int64(np.max(worst, initial=0)), s) > limit:
            s += 1
        shifts[j] = s
        if j > 0:
            rows = np.sum(np.abs(np.asarray(factors[j], np.int64)), axis=1)
            worst = (rows[:, None] * golden.rsr(worst, s)[None, :]).reshape(-1)
    return tuple(shifts)


def top_shift_for(top_absmax: float, kp_unit: float) -> int:
    """HKP: the smallest integer s with top_absmax / (kp_unit * 2**s) <= 127, at least limits.TOP_SHIFT_MIN
    (a coarser scale than needed, which only costs precision); 0 for all-zero top rows."""
    if top_absmax == 0:
        return 0
    s = math.ceil(math.log2(top_absmax / (127.0 * kp_unit)))
    while top_absmax / (kp_unit * 2.0**s) > 127:
        s += 1
    while top_absmax / (kp_unit * 2.0 ** (s - 1)) <= 127:
        s -= 1
    return max(s, limits.TOP_SHIFT_MIN)


def _quantize_top(q: KPMatrixQ, top: np.ndarray | None, what: str, groups: int = 1) -> KPMatrixQ:
    """Add HKP top rows to a quantized Kronecker part: int8 in the Kronecker output's unit times 2**top_shift."""
    if top is None:
        return q
    top = np.asarray(top, dtype=np.float64)
    if top.ndim != 2 or top.shape[1] != q.kp_shape[1]:
        raise KpgenError(f"{what}: the HKP top rows are {top.shape}, the Kronecker part has {q.kp_shape[1]} columns; "
                         "re-export the model")
    absmax = float(np.max(np.abs(top), initial=0.0))
    if not math.isfinite(absmax):
        raise KpgenError(f"{what}: the HKP top rows hold a non-finite weight; retrain the model")
    unit = q.unit
    s = top_shift_for(absmax, unit)
    if s > limits.TOP_SHIFT_MAX:
        raise KpgenError(f"{what}: the HKP top rows ({absmax:.3g}) are 2**{s} steps of the Kronecker part's unit "
                         f"{unit:.3g}, more than 2**{limits.TOP_SHIFT_MAX}; check for exploding top-row weights")
    scale = unit * 2.0**s
    top_q = np.clip(np.round(top / scale), -127, 127).astype(np.int8)
    return KPMatrixQ(**{**q.__dict__, "top": top_q, "top_shift": s, "top_scale": scale, "top_groups": groups})


def quantize_kp(m: KPMatrixF, what: str, t_bits: int = 16) -> KPMatrixQ:
    """int8 factors with per-factor scales and worst-case shifts (factor_shifts); HKP top rows in the unit of
    the Kronecker part's output (top_shift_for). A dense matrix (two factors, B 1x1) is folded: A * b00 is
    quantized and B becomes [[1]] with scale 1 and t_shift 0, so T = x exactly and the accumulator is W x (the
    C runtime then runs its dense kernel)."""
    factors = m.factors
    if len(factors) > limits.MAX_FACTORS:
        raise KpgenError(f"{what}: {len(factors)} Kronecker factors, more than the {limits.MAX_FACTORS} the C runtime "
                         "chains; choose fewer factors")
    for j, f in enumerate(factors):
        name, last = FACTOR_NAMES[j], j == len(factors) - 1
        if not last and f.shape[1] > MAX_N1:
            raise KpgenError(
                f"{what}: factor {name} has {f.shape[1]} columns, more than {MAX_N1}; the int32 accumulator "
                f"could overflow: choose factor shapes with fewer columns in {name}"
            )
        if last and f.shape[1] > MAX_N2:
            raise KpgenError(
                f"{what}: factor {name} has {f.shape[1]} columns, more than {MAX_N2}; the int32 sum of X {name}^T "
                f"could overflow: choose factor shapes with fewer columns in {name}"
            )
    if len(factors) == 2 and m.b.shape == (1, 1):
        a, sa = symmetric_int8(np.asarray(m.a, dtype=np.float64) * float(m.b[0, 0]))
        q = KPMatrixQ(a=a, b=np.ones((1, 1), np.int8), t_shift=0, a_scale=sa, b_scale=1.0)
    else:
        qs = [symmetric_int8(np.asarray(f, dtype=np.float64)) for f in factors]
        shifts = factor_shifts([f for f, _ in qs], t_bits)
        q = KPMatrixQ(a=qs[0][0], b=qs[1][0], t_shift=shifts[0], a_scale=qs[0][1], b_scale=qs[1][1],
                      rest=tuple(f for f, _ in qs[2:]), rest_shifts=shifts[1:], rest_scales=tuple(s for _, s in qs[2:]))
    q = _quantize_top(q, m.top, what, m.top_groups)
    problems = limits.matrix_limits(q) if t_bits == 16 else []
    if problems:
        raise KpgenError(f"{what}: {problems[0]}; the int32 kernels cannot run it (check for exploding weights)")
    return q


def requant_gate(m: float, acc_bound: int, what: str) -> Requant:
    """Gate requantizer m ~= mult / 2**shift with shift in 1..32, mult in 1..2**31-1 (docs/quantization.md).

    shift is 32 unless m >= 0.5; then it drops just enough for mult to fit, which the worst-case accumulator
    must allow (|acc| * 2**(32-shift) < 2**31) so the C kernels need one 32-bit rounding high multiply.
    """
    if not (m > 0 and math.isfinite(m)):
        raise KpgenError(f"{what}: scale {m!r} is not a positive finite number; retrain or recalibrate the model")
    shift = limits.GATE_SHIFT_MAX
    mult = round(m * 2.0**shift)
    while mult >= 2**31 and shift > 1:
        shift -= 1
        mult = round(m * 2.0**shift)
    if mult >= 2**31 or (acc_bound << (limits.GATE_SHIFT_MAX - shift)) >= 2**31:
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


def state_exp_for(state_absmax: float, idx: int | str) -> int:
    """FastRNN / FastGRNN / ReLU RNN state exponent e (h is Q(e).(7-e)): 0 up to |h| = 1, else
    ceil(log2(state_absmax)), so the calibrated range fits; refused above limits.MAX_STATE_EXP (7: |h| up to 128)."""
    if not (state_absmax >= 0 and math.isfinite(state_absmax)):
        raise KpgenError(f"layer {idx}: calibration state_absmax {state_absmax!r} is not a finite number; "
                         "recalibrate the model")  # fmt: skip
    e = 0 if state_absmax <= 1.0 else math.ceil(math.log2(state_absmax))
    if e > limits.MAX_STATE_EXP:
        raise KpgenError(f"layer {idx}: calibrated state |h| up to {state_absmax:.3g} needs 2**{e}, more than the "
                         f"2**{limits.MAX_STATE_EXP} an int8 state can hold; retrain with a smaller alpha + beta "
                         "(FastRNN), nu (FastGRNN) or smaller recurrent weights (ReLU RNN)")  # fmt: skip
    return e


def matrices_and_requants(layer: LayerF, input_scale: float, idx: int | str, t_bits: int, h_scale: float = H_SCALE,
                          gate_frac: int = GATE_FRAC) -> dict:
    """wx, wh (int8 factors) and their gate requantizers rq_x, rq_h to the gate unit 2**-gate_frac (Q3.12 unless
    a cell says otherwise): one accumulator unit of Wx x is worth wx.unit * input_scale, of Wh h wh.unit *
    h_scale (1/128: h is Q0.7; FastRNN/FastGRNN 2**(e-7)). The fields every integer layer starts with."""
    wx = quantize_kp(layer.wx, f"layer {idx} Wx", t_bits)
    wh = quantize_kp(layer.wh, f"layer {idx} Wh", t_bits)
    gate = float(2**gate_frac)
    rq_x = requant_gate(wx.unit * input_scale * gate, limits.matrix_acc_bound(wx, t_bits), f"layer {idx} Wx")
    rq_h = requant_gate(wh.unit * h_scale * gate, limits.matrix_acc_bound(wh, t_bits), f"layer {idx} Wh")
    return {"input_size": layer.input_size, "hidden_size": layer.hidden_size, "wx": wx, "wh": wh,
            "rq_x": rq_x, "rq_h": rq_h}  # fmt: skip


def bias_q312(b: np.ndarray, name: str, idx: int | str, frac: int = GATE_FRAC) -> np.ndarray:
    """round(b * 2**frac) as int32 (Q3.12 for frac 12); refuses a value outside int32."""
    bias = np.round(np.asarray(b, dtype=np.float64) * float(2**frac))
    if not np.all(np.isfinite(bias)) or np.max(np.abs(bias), initial=0) >= 2**31:
        raise KpgenError(f"layer {idx}: a {name} does not fit int32 in Q{15 - frac}.{frac}; "
                         "retrain with bounded biases")
    return bias.astype(np.int32)


def scalar_q015(v: float, name: str, idx: int | str) -> int:
    """A FastRNN / FastGRNN scalar in [0, 1] (already through its sigmoid) as Q0.15: round(v * 32768), at most 32767."""
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise KpgenError(f"layer {idx}: {name} = {v!r} is outside 0..1; "
                         "give it after its sigmoid (re-export the model)")
    return min(int(round(v * 32768.0)), 32767)


_Q = TypeVar("_Q", bound=ir.LayerQ)


def checked(q: _Q, idx: int | str, t_bits: int) -> _Q:
    """q, if it passes limits.kernel_limits (checked for t_bits 16 only: other widths are golden experiments)."""
    problems = limits.kernel_limits(q) if t_bits == 16 else []
    if problems:
        raise KpgenError(f"layer {idx}: {problems[0]}; "
                         "the int32 kernels cannot run it (check for exploding weights or biases)")
    if t_bits == 16:
        limits.mark_checked(q)
    return q


def quantize_layer(layer: ir.AnyLayerF, input_scale: float, cell_absmax: float, idx: int | str, t_bits: int = 16,
                   state_exp: int | None = None) -> ir.AnyLayerQ:
    """Any float layer -> its integer layer, by its cell's quantizer (kpgen.cells); a BiLayerF's two directions
    get the same input scale. cell_absmax: max |c| for LSTM layers, max |h| (state_absmax) for cells whose h has
    a calibrated exponent (FastRNN, FastGRNN, ReLU RNN: state_exp_for; unused by the others, whose h is Q0.7).
    A BiLayerF's directions share one state_exp, that of the larger of their two ranges (the calibration's one
    number per layer is the max over both directions), as the next layer reads [fwd h, bwd h] with one scale.
    state_exp: given instead of derived (experiments)."""
    from kpgen import cells

    if isinstance(layer, ir.BiLayerF):
        if state_exp is None and cells.of(layer).state_exp:
            state_exp = state_exp_for(cell_absmax, idx)

        def half(sub: LayerF, name: str) -> ir.LayerQ:
            return _quantize_one(sub, input_scale, cell_absmax, f"{idx} ({name})", t_bits, state_exp)

        return ir.BiLayerQ(fwd=half(layer.fwd, "forward"), bwd=half(layer.bwd, "backward"))
    return _quantize_one(layer, input_scale, cell_absmax, idx, t_bits, state_exp)


def _quantize_one(layer: LayerF, input_scale: float, cell_absmax: float, idx: int | str, t_bits: int,
                  state_exp: int | None) -> ir.LayerQ:
    """One direction's float layer -> its integer layer (quantize_layer)."""
    from kpgen import cells

    cell = cells.find(layer)
    if cell is None or not isinstance(layer, cell.float_type):
        raise KpgenError(f"layer {idx}: {type(layer).__name__} is not a layer kpgen can quantize; "
                         f"use a layer of one of the cells {', '.join(cells.NAMES)}")  # fmt: skip
    if cell.state_exp and state_exp is None:
        state_exp = state_exp_for(cell_absmax, idx)
    return cell.quantize(layer, input_scale, cell_absmax, idx, t_bits, state_exp or 0)


def quantize_dense(head: DenseF, state_scale: float = H_SCALE) -> DenseQ:
    """int8 weights; int32 biases at the logits' scale w_scale * state_scale (state_scale: one step of the last
    layer's h, ir.state_scale). Refuses biases for which bias + W h (|h| <= 128) could leave int32, the width
    kp_fc_s8 sums in."""
    w, sw = symmetric_int8(head.weight)
    out_scale = sw * state_scale
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


def quantize_hidden(hidden: DenseF, feat_scale: float, hidden_absmax: float) -> ir.HiddenQ:
    """An MLP head's hidden Linear + ReLU: int8 weights, int32 biases in the accumulator's unit w_scale *
    feat_scale, and the requantizer from that unit to the int8 output's step hidden_absmax / 127
    (golden.kp_fc_relu_s8). Refuses a missing range and biases for which bias + W f could leave int32."""
    if not (hidden_absmax > 0 and math.isfinite(hidden_absmax)):
        raise KpgenError(f"calibration hidden_absmax {hidden_absmax!r} (the MLP head's largest ReLU output) must be "
                         "a positive number; recalibrate the model on its training data")
    w, sw = symmetric_int8(hidden.weight)
    acc_scale = sw * feat_scale
    bias = np.round(np.asarray(hidden.bias, dtype=np.float64) / acc_scale)
    worst = np.abs(bias) + 128.0 * np.sum(np.abs(w.astype(np.float64)), axis=1)
    if np.max(worst, initial=0) >= 2**31:
        raise KpgenError("head: the hidden layer's bias + W f can leave int32 (a bias is too large for the weights' "
                         "scale); retrain with bounded head biases")
    out_scale = hidden_absmax / 127.0
    rq = requant_from_real(acc_scale / out_scale, "head hidden layer")
    return ir.HiddenQ(weight=w, bias=bias.astype(np.int32), rq=rq, out_scale=out_scale)


INPUT_FRAC_BITS = 16  # the integer-only input quantizer of model.h reads int32 Q15.16 values


def input_fixed_requant(input_scale: float, frac_bits: int = INPUT_FRAC_BITS) -> Requant | None:
    """The multiplier of model.h's integer-only input quantizer (golden.quantize_input_fixed): one step of a
    Q(31-frac_bits).frac_bits input is worth 1 / (input_scale * 2**frac_bits) int8 steps; None when that factor
    needs a shift outside 1..62 (an input range beyond what int32 fixed point can express)."""
    try:
        return requant_from_real(1.0 / (input_scale * 2.0**frac_bits), "input quantizer")
    except (KpgenError, ZeroDivisionError, OverflowError):
        return None


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
    for i, (layer, cmax) in enumerate(zip(model.layers, cal.cell_absmax, strict=True)):
        layers.append(quantize_layer(layer, scale, cmax, i, t_bits))
        scale = ir.state_scale(layers[-1])  # the next layer reads this layer's h
    # the head's features keep the last layer's state scale (mean and max of int8 h are int8 h: docs/quantization.md)
    hidden = None if model.hidden is None else quantize_hidden(model.hidden, ir.state_scale(layers[-1]),
                                                               cal.hidden_absmax)
    return ModelQ(
        input_size=model.input_size,
        num_classes=model.num_classes,
        input_scale=input_scale,
        layers=tuple(layers),
        head=quantize_dense(model.head, ir.state_scale(layers[-1]) if hidden is None else hidden.out_scale),
        sigmoid_table=golden.make_table("sigmoid"),
        tanh_table=golden.make_table("tanh"),
        meta=dict(model.meta),
        # the outputs at the last step are the final state unless the last layer is bidirectional
        pool="last" if model.pool == "last_output" and ir.directions(layers[-1]) == 1 else model.pool,
        hidden=hidden,
        bias_bits=ir.gate_bias_bits(tuple(layers)),
    )


BIAS_CHOICES = ("auto", "16", "32")  # `kpgen emit --bias-bits`


def with_bias_bits(model: ModelQ, choice: str | int) -> ModelQ:
    """The model with its gate biases stored as `choice` asks (BIAS_CHOICES): "auto" keeps the quantizer's choice
    (int16 when every value fits), 32 forces int32, 16 refuses a model whose gate biases do not all fit int16.
    Only the storage width changes, never a value."""
    choice = str(choice)
    if choice not in BIAS_CHOICES:
        raise ValueError(f"bias bits {choice!r} is not one of {', '.join(BIAS_CHOICES)}")
    if choice == "auto":
        return dataclasses.replace(model, bias_bits=ir.gate_bias_bits(model.layers))
    if choice == "16":
        for i, layer in enumerate(model.layers):
            for v in ir.vectors(layer):
                wide = v[(v < -(1 << 15)) | (v >= (1 << 15))]
                if wide.size:
                    raise KpgenError(f"--bias-bits 16: layer {i} has a gate bias of {int(wide[0])}, outside int16 "
                                     "(-32768..32767); use --bias-bits auto or 32 (int32 biases)")
    return dataclasses.replace(model, bias_bits=int(choice))
