"""The LSTM cell, torch.nn.LSTM's equations, gates (i, f, g, o): z = Wx x + Wh h + bias,
c' = sigmoid(f) c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c'). h is Q0.7, c int16 with cell_frac
fractional bits (docs/quantization.md, "LSTM step")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpgen.cells.base import Cell, CField, i64, sigmoid
from kpgen.ir import KPMatrixF, KPMatrixQ, Requant
from kpgen.quant import limits, quantize
from kpgen.reference.golden import gate_inputs, kp_sigmoid_s16, kp_tanh_s16, rsr, sat, sat_inplace


@dataclass(frozen=True)
class LSTMLayerF:
    """One KP-LSTM layer: z = Wx x + Wh h + bias; gates (i, f, g, o)."""

    input_size: int
    hidden_size: int
    wx: KPMatrixF  # (4H, I)
    wh: KPMatrixF  # (4H, H)
    bias: np.ndarray  # (4H,), input and recurrent biases already summed


@dataclass(frozen=True)
class LSTMLayerQ:
    input_size: int
    hidden_size: int
    wx: KPMatrixQ
    wh: KPMatrixQ
    rq_x: Requant  # Wx accumulator -> gate pre-activation Q3.12
    rq_h: Requant  # Wh accumulator -> gate pre-activation Q3.12
    bias: np.ndarray  # int32 (4H,), Q3.12
    cell_frac: int  # cell state c is int16 with cell_frac fractional bits
    input_scale: float  # real value of one input step (int8 x)


def float_step(layer: LSTMLayerF, zx: np.ndarray, zh: np.ndarray, h: np.ndarray, c: np.ndarray):
    """One float step from the products zx = Wx x, zh = Wh h: (h', c', pre-activations z)."""
    hs = layer.hidden_size
    z = zx + zh + layer.bias
    i, f, g, o = (z[:, k * hs : (k + 1) * hs] for k in range(4))
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c, z


def quantize_lstm(layer: LSTMLayerF, input_scale: float, cell_absmax: float, idx: int | str,
                  t_bits: int = 16) -> LSTMLayerQ:
    """int8 matrices, Q3.12 bias, and the cell state's fractional bits from the calibrated max |c|."""
    common = quantize.matrices_and_requants(layer, input_scale, idx, t_bits)
    bias = quantize.bias_q312(layer.bias, "bias", idx)
    q = LSTMLayerQ(**common, bias=bias, cell_frac=quantize.cell_frac_for(cell_absmax), input_scale=input_scale)
    return quantize.checked(q, idx, t_bits)


def kp_lstm_step_s8(
    layer: LSTMLayerQ,
    x: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    sigmoid_table: np.ndarray,
    tanh_table: np.ndarray,
    t_bits: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM step: x int8 [..., I], h int8 [..., H], c int16 [..., H] -> (h' int8, c' int16), gates (i, f, g, o).

    t_bits only changes the saturation width of T; the layer's t_shift and requantizers are used as they are,
    so a t_bits other than 16 is meaningful only for a layer quantized for that width.
    """
    hs = layer.hidden_size
    z, gh = gate_inputs(layer, x, h, t_bits)
    z += gh  # z = sat16(gx + gh + bias), in gx's array (gate_inputs returns new ones)
    z += i64(layer.bias)
    sat_inplace(z, 16)
    gi = i64(kp_sigmoid_s16(z[..., 0:hs], sigmoid_table))
    gf = i64(kp_sigmoid_s16(z[..., hs : 2 * hs], sigmoid_table))
    gg = i64(kp_tanh_s16(z[..., 2 * hs : 3 * hs], tanh_table))
    go = i64(kp_sigmoid_s16(z[..., 3 * hs : 4 * hs], sigmoid_table))
    cf = layer.cell_frac
    c_new = sat(rsr(gf * i64(c), 15) + rsr(gi * gg, 30 - cf), 16)
    if cf >= 12:
        c12 = rsr(c_new, cf - 12)
    else:
        c12 = sat(c_new << np.int64(12 - cf), 16)
    h_new = sat(rsr(go * i64(kp_tanh_s16(c12, tanh_table)), 23), 8)
    return h_new.astype(np.int8), c_new.astype(np.int16)


def qat_step(q: LSTMLayerQ, t, gx, gh, h, c, ops):
    """kp_lstm_step_s8 on the straight-through tensors of kpgen.train.qat (gx, gh: requantized products; t: the
    torch layer, whose float bias is the gradient's path to q.bias): the same integers forward, float gradients."""
    hs = q.hidden_size
    z = ops.sat(gx + gh + ops.bias(q.bias, t.bias), 16)
    gi, gf = ops.sigmoid(z[..., 0:hs]), ops.sigmoid(z[..., hs : 2 * hs])
    gg, go = ops.tanh(z[..., 2 * hs : 3 * hs]), ops.sigmoid(z[..., 3 * hs : 4 * hs])
    cf = q.cell_frac
    c_new = ops.sat(ops.rsr(gf * c, 15) + ops.rsr(gi * gg, 30 - cf), 16)
    c12 = ops.rsr(c_new, cf - 12) if cf >= 12 else ops.sat(c_new * float(2 ** (12 - cf)), 16)
    return ops.sat(ops.rsr(go * ops.tanh(c12), 23), 8), c_new


def gate_sums(layer: LSTMLayerQ, wx: int, wh: int) -> list[tuple[str, int]]:
    """One int32 sum per gate: bias + rq(Wx x) + rq(Wh h)."""
    return [("the gate sum", limits.absmax(layer.bias) + wx + wh)]


def _torch_biases(layer, b_ih, b_hh, hidden: int) -> None:
    layer.bias.copy_(b_ih + b_hh)


CELL = Cell(
    name="lstm",
    title="LSTM",
    article="an",
    gates=4,
    gate_order="(i, f, g, o)",
    float_type=LSTMLayerF,
    int_type=LSTMLayerQ,
    vectors=("bias",),
    tensors={"bias": 4},
    float_step=float_step,
    quantize=lambda l, s, absmax, idx, t_bits, e: quantize_lstm(l, s, absmax, idx, t_bits),
    golden_step=kp_lstm_step_s8,
    gate_sums=gate_sums,
    from_tensors=lambda w, p, i, h, wx, wh: LSTMLayerF(i, h, wx, wh, w[f"{p}bias"]),
    c_fields=lambda q: [CField("vector", "bias"), CField("int", q.cell_frac), CField("table", "sigmoid"),
                        CField("table", "tanh")],
    c_params="kp_lstm_params_s8",
    c_step="kp_lstm_step_s8",
    train_class="KPLSTM",
    cell_state=True,
    gate_scratch=2,
    torch_mode="LSTM",
    torch_biases=_torch_biases,
    qat_step=qat_step,
)
