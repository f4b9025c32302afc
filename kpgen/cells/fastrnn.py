"""The FastRNN cell (Kusupati et al. 2018): h' = alpha tanh(Wx x + Wh h + bias) + beta h, alpha and beta
trainable scalars through a sigmoid. h is Q(e).(7-e), e from the calibrated max |h| (docs/quantization.md,
"FastRNN step")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpgen.cells.base import Cell, CField, i64, sigmoid_scalar
from kpgen.ir import KPMatrixF, KPMatrixQ, Requant
from kpgen.quant import limits, quantize
from kpgen.reference.golden import gate_inputs, kp_tanh_s16, rsr, sat, sat_inplace


@dataclass(frozen=True)
class FastRNNLayerF:
    """FastRNN: h' = alpha * tanh(Wx x + Wh h + bias) + beta * h (alpha, beta already through the sigmoid)."""

    input_size: int
    hidden_size: int
    wx: KPMatrixF  # (H, I)
    wh: KPMatrixF  # (H, H)
    bias: np.ndarray  # (H,)
    alpha: float
    beta: float


@dataclass(frozen=True)
class FastRNNLayerQ:
    input_size: int
    hidden_size: int
    wx: KPMatrixQ  # (H, I)
    wh: KPMatrixQ  # (H, H)
    rq_x: Requant
    rq_h: Requant
    bias: np.ndarray  # int32 (H,), Q3.12
    alpha: int  # Q0.15, 0..32767
    beta: int  # Q0.15, 0..32767
    input_scale: float
    state_exp: int = 0  # h is Q(e).(7-e): h_real = h_int * 2**(state_exp - 7), state_exp 0..7 (state_scale)


def float_step(layer: FastRNNLayerF, zx: np.ndarray, zh: np.ndarray, h: np.ndarray, c: np.ndarray):
    """One float step from zx = Wx x, zh = Wh h: (h', c unchanged, the pre-activation)."""
    z = zx + zh + layer.bias
    return layer.alpha * np.tanh(z) + layer.beta * h, c, z


def quantize_fastrnn(layer: FastRNNLayerF, input_scale: float, idx: int | str, t_bits: int = 16,
                     state_exp: int = 0) -> FastRNNLayerQ:
    """int8 matrices, Q3.12 bias, alpha and beta in Q0.15; h is Q(state_exp).(7-state_exp) (state_exp_for)."""
    common = quantize.matrices_and_requants(layer, input_scale, idx, t_bits, 2.0 ** (state_exp - 7))
    q = FastRNNLayerQ(**common, bias=quantize.bias_q312(layer.bias, "bias", idx),
                      alpha=quantize.scalar_q015(layer.alpha, "alpha", idx),
                      beta=quantize.scalar_q015(layer.beta, "beta", idx), input_scale=input_scale,
                      state_exp=state_exp)  # fmt: skip
    return quantize.checked(q, idx, t_bits)


def kp_fastrnn_step_s8(
    layer: FastRNNLayerQ,
    x: np.ndarray,
    h: np.ndarray,
    sigmoid_table: np.ndarray,
    tanh_table: np.ndarray,
    t_bits: int = 16,
) -> np.ndarray:
    """One FastRNN step: x int8 [..., I], h int8 [..., H] -> h' int8 (sigmoid_table unused: same signature
    as the other cells).

    h~ = tanh(sat16(gx + gh + bias)) (Q0.15); h' = sat8(rsr(rsr(alpha * h~, 8 + e) + beta * h, 15)), h and h'
    Q(e).(7-e) with e = layer.state_exp (rsr(alpha * h~, 8 + e) is alpha * h~ in units of 2**-15 steps of h).
    """
    s, gh = gate_inputs(layer, x, h, t_bits)
    s += gh  # gx + gh + bias, in gx's array (gate_inputs returns new ones)
    s += i64(layer.bias)
    ht = i64(kp_tanh_s16(sat_inplace(s, 16), tanh_table))
    h_new = sat(rsr(rsr(np.int64(layer.alpha) * ht, 8 + layer.state_exp) + np.int64(layer.beta) * i64(h), 15), 8)
    return h_new.astype(np.int8)


def qat_step(q: FastRNNLayerQ, t, gx, gh, h, c, ops):
    """kp_fastrnn_step_s8 on the straight-through tensors of kpgen.train.qat (see kpgen.cells.lstm.qat_step)."""
    ht = ops.tanh(ops.sat(gx + gh + ops.bias(q.bias, t.bias), 16))
    alpha, beta = ops.scalar(q.alpha, t.alpha), ops.scalar(q.beta, t.beta)
    return ops.sat(ops.rsr(ops.rsr(alpha * ht, 8 + q.state_exp) + beta * h, 15), 8), c


CELL = Cell(
    name="fastrnn",
    title="FastRNN",
    article="a",
    gates=1,
    gate_order="",
    float_type=FastRNNLayerF,
    int_type=FastRNNLayerQ,
    vectors=("bias",),
    scalars=("alpha", "beta"),
    tensors={"bias": 1, "alpha": 0, "beta": 0},
    float_step=float_step,
    quantize=lambda l, s, absmax, idx, t_bits, e: quantize_fastrnn(l, s, idx, t_bits, e),
    golden_step=lambda l, x, h, c, sig, tanh, t_bits: (kp_fastrnn_step_s8(l, x, h, sig, tanh, t_bits), c),
    gate_sums=lambda l, wx, wh: [("the gate sum", limits.absmax(l.bias) + wx + wh)],
    from_tensors=lambda w, p, i, h, wx, wh: FastRNNLayerF(i, h, wx, wh, w[f"{p}bias"],
                                                          sigmoid_scalar(float(w[f"{p}alpha"])),
                                                          sigmoid_scalar(float(w[f"{p}beta"]))),
    c_fields=lambda q: [CField("vector", "bias"), CField("int", q.alpha), CField("int", q.beta),
                        CField("int", q.state_exp), CField("table", "tanh")],
    c_params="kp_fastrnn_params_s8",
    c_step="kp_fastrnn_step_s8",
    train_class="KPFastRNN",
    state_exp=True,
    needs_sigmoid=False,
    qat_step=qat_step,
)
