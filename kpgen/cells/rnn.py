"""The plain (Elman) RNN cell, torch.nn.RNN's equations: h' = f(Wx x + Wh h + bias), f = tanh (cell 'rnn') or
relu (cell 'rnn-relu'). One kernel serves both (kp_rnn_step_s8, a `relu` flag in its params).

Integer scheme (docs/quantization.md, "Plain RNN step"):
- tanh: the pre-activation is Q3.12 as every gate's, tanh comes from the shared table (Q0.15), and h is Q0.7:
  h' = sat8(rsr(tanh(sat16(gx + gh + bias)), 8)).
- relu: h is Q(e).(7-e), e from the calibrated max |h| (as FastRNN's state_exp). The requantizers bring both
  products to Q(e).(15-e), 8 bits finer than h, and the int32 sum is never saturated before the relu:
  h' = sat8(rsr(max(gx + gh + bias, 0), 8)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpgen.cells.base import GATE_FRAC, Cell, CField, i64
from kpgen.ir import KPMatrixF, KPMatrixQ, Requant
from kpgen.quant import limits, quantize
from kpgen.reference.golden import gate_inputs, kp_tanh_s16, rsr, sat

STATE_FRAC_EXTRA = 8  # relu: fractional bits of the pre-activation beyond h's (Q(e).(15-e) against Q(e).(7-e))


@dataclass(frozen=True)
class RNNLayerF:
    """A plain RNN layer with tanh: h' = tanh(Wx x + Wh h + bias), bias = torch's b_ih + b_hh."""

    input_size: int
    hidden_size: int
    wx: KPMatrixF  # (H, I)
    wh: KPMatrixF  # (H, H)
    bias: np.ndarray  # (H,)


@dataclass(frozen=True)
class ReluRNNLayerF(RNNLayerF):
    """A plain RNN layer with relu: h' = max(Wx x + Wh h + bias, 0)."""


@dataclass(frozen=True)
class RNNLayerQ:
    """An integer plain RNN layer with tanh; bias Q3.12, h Q0.7 (state_exp 0)."""

    input_size: int
    hidden_size: int
    wx: KPMatrixQ  # (H, I)
    wh: KPMatrixQ  # (H, H)
    rq_x: Requant  # Wx accumulator -> pre-activation unit
    rq_h: Requant
    bias: np.ndarray  # int32 (H,), in the pre-activation unit
    input_scale: float
    state_exp: int = 0  # h is Q(e).(7-e); 0 for tanh


@dataclass(frozen=True)
class ReluRNNLayerQ(RNNLayerQ):
    """An integer plain RNN layer with relu; bias and pre-activation Q(e).(15-e), h Q(e).(7-e), e = state_exp."""


def is_relu(layer: object) -> bool:
    """True for a relu layer (float or integer)."""
    return isinstance(layer, (ReluRNNLayerF, ReluRNNLayerQ))


def float_step(layer: RNNLayerF, zx: np.ndarray, zh: np.ndarray, h: np.ndarray, c: np.ndarray):
    """One float step from zx = Wx x, zh = Wh h: (h', c unchanged, the pre-activation)."""
    z = zx + zh + layer.bias
    return (np.maximum(z, 0.0) if is_relu(layer) else np.tanh(z)), c, z


def quantize_rnn(layer: RNNLayerF, input_scale: float, idx: int | str, t_bits: int = 16,
                 state_exp: int = 0) -> RNNLayerQ:
    """int8 matrices and an int32 bias in the pre-activation unit: Q3.12 for tanh (h Q0.7), Q(e).(15-e) for relu
    (h Q(e).(7-e), e = state_exp from the calibrated max |h|: quantize.state_exp_for)."""
    relu = is_relu(layer)
    e = state_exp if relu else 0
    frac = 7 - e + STATE_FRAC_EXTRA if relu else GATE_FRAC
    common = quantize.matrices_and_requants(layer, input_scale, idx, t_bits, 2.0 ** (e - 7), frac)
    kind = ReluRNNLayerQ if relu else RNNLayerQ
    q = kind(**common, bias=quantize.bias_q312(layer.bias, "bias", idx, frac), input_scale=input_scale, state_exp=e)
    return quantize.checked(q, idx, t_bits)


def kp_rnn_step_s8(
    layer: RNNLayerQ,
    x: np.ndarray,
    h: np.ndarray,
    sigmoid_table: np.ndarray,
    tanh_table: np.ndarray,
    t_bits: int = 16,
) -> np.ndarray:
    """One plain RNN step: x int8 [..., I], h int8 [..., H] -> h' int8 (sigmoid_table unused: same signature as
    the other cells). s = gx + gh + bias (int32, gx = requantize(Wx x), gh = requantize(Wh h));
    tanh: h' = sat8(rsr(tanh(sat16(s)), 8)) (s Q3.12, h Q0.7); relu: h' = sat8(rsr(max(s, 0), 8)) (s Q(e).(15-e),
    h Q(e).(7-e))."""
    s, gh = gate_inputs(layer, x, h, t_bits)
    s += gh  # gx + gh + bias, in gx's array (gate_inputs returns new ones)
    s += i64(layer.bias)
    if is_relu(layer):
        h_new = sat(rsr(np.maximum(s, 0), STATE_FRAC_EXTRA), 8)
    else:
        h_new = sat(rsr(i64(kp_tanh_s16(sat(s, 16), tanh_table)), 8), 8)  # Q0.15 -> Q0.7
    return h_new.astype(np.int8)


def qat_step(q: RNNLayerQ, t, gx, gh, h, c, ops):
    """kp_rnn_step_s8 on the straight-through tensors of kpgen.train.qat (see kpgen.cells.lstm.qat_step)."""
    relu = is_relu(q)
    s = gx + gh + ops.bias(q.bias, t.bias, 7 - q.state_exp + STATE_FRAC_EXTRA if relu else GATE_FRAC)
    if relu:
        return ops.sat(ops.rsr(ops.relu(s), STATE_FRAC_EXTRA), 8), c
    return ops.sat(ops.rsr(ops.tanh(ops.sat(s, 16)), 8), 8), c


def gate_sums(layer: RNNLayerQ, wx: int, wh: int) -> list[tuple[str, int]]:
    """bias + rq(Wx x) + rq(Wh h) in int32; relu also adds the rounding term 2**7 of rsr(., 8) unsaturated."""
    extra = 1 << (STATE_FRAC_EXTRA - 1) if is_relu(layer) else 0
    return [("the gate sum", limits.absmax(layer.bias) + wx + wh + extra)]


def extra_limits(layer: RNNLayerQ) -> list[str]:
    """tanh layers keep h in Q0.7: their state_exp must be 0 (the relu one is checked like FastRNN's)."""
    return [] if is_relu(layer) or layer.state_exp == 0 else [f"state_exp = {layer.state_exp} of a tanh RNN is not 0"]


def _torch_biases(layer, b_ih, b_hh, hidden: int) -> None:
    layer.bias.copy_(b_ih + b_hh)


def _cell(relu: bool) -> Cell:
    """The registry entry of the tanh or the relu variant: one kernel, one params struct, a flag apart."""
    ftype, qtype = (ReluRNNLayerF, ReluRNNLayerQ) if relu else (RNNLayerF, RNNLayerQ)
    return Cell(
        name="rnn-relu" if relu else "rnn",
        title="ReLU RNN" if relu else "tanh RNN",
        article="a",
        gates=1,
        gate_order="",
        float_type=ftype,
        int_type=qtype,
        vectors=("bias",),
        tensors={"bias": 1},
        float_step=float_step,
        quantize=lambda l, s, absmax, idx, t_bits, e: quantize_rnn(l, s, idx, t_bits, e),
        golden_step=lambda l, x, h, c, sig, tanh, t_bits: (kp_rnn_step_s8(l, x, h, sig, tanh, t_bits), c),
        gate_sums=gate_sums,
        from_tensors=lambda w, p, i, h, wx, wh: ftype(i, h, wx, wh, w[f"{p}bias"]),
        c_fields=lambda q: [CField("vector", "bias"), CField("int", int(is_relu(q))), CField("int", q.state_exp),
                            CField("table", "tanh")],
        c_params="kp_rnn_params_s8",
        c_step="kp_rnn_step_s8",
        train_class="KPReluRNN" if relu else "KPRNN",
        state_exp=relu,
        needs_sigmoid=False,
        torch_mode="RNN_RELU" if relu else "RNN_TANH",
        torch_biases=_torch_biases,
        extra_limits=extra_limits,
        qat_step=qat_step,
    )


CELL = _cell(relu=False)
RELU_CELL = _cell(relu=True)
