"""The FastGRNN cell (Kusupati et al. 2018), Wx and Wh shared by gate and candidate: pre = Wx x + Wh h,
z = sigmoid(pre + bias_z), h~ = tanh(pre + bias_h), h' = (zeta (1 - z) + nu) h~ + z h, zeta and nu trainable
scalars through a sigmoid. h is Q(e).(7-e) as FastRNN's (docs/quantization.md, "FastGRNN step")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpgen.cells.base import Cell, CField, i64, sigmoid, sigmoid_scalar
from kpgen.ir import KPMatrixF, KPMatrixQ, Requant
from kpgen.quant import limits, quantize
from kpgen.reference.golden import gate_inputs, kp_sigmoid_s16, kp_tanh_s16, rsr, sat


@dataclass(frozen=True)
class FastGRNNLayerF:
    """FastGRNN: pre = Wx x + Wh h; z = sigmoid(pre + bias_z); h~ = tanh(pre + bias_h);
    h' = (zeta * (1 - z) + nu) * h~ + z * h (zeta, nu already through the sigmoid)."""

    input_size: int
    hidden_size: int
    wx: KPMatrixF  # (H, I)
    wh: KPMatrixF  # (H, H)
    bias_z: np.ndarray  # (H,)
    bias_h: np.ndarray  # (H,)
    zeta: float
    nu: float


@dataclass(frozen=True)
class FastGRNNLayerQ:
    input_size: int
    hidden_size: int
    wx: KPMatrixQ  # (H, I)
    wh: KPMatrixQ  # (H, H)
    rq_x: Requant
    rq_h: Requant
    bias_z: np.ndarray  # int32 (H,), Q3.12
    bias_h: np.ndarray  # int32 (H,), Q3.12
    zeta: int  # Q0.15, 0..32767
    nu: int  # Q0.15, 0..32767
    input_scale: float
    state_exp: int = 0  # as FastRNNLayerQ's


def float_step(layer: FastGRNNLayerF, zx: np.ndarray, zh: np.ndarray, h: np.ndarray, c: np.ndarray):
    """One float step from zx = Wx x, zh = Wh h: (h', c unchanged, pre-activations of z and h~)."""
    pre = zx + zh
    zg = sigmoid(pre + layer.bias_z)
    z = np.concatenate([pre + layer.bias_z, pre + layer.bias_h], 1)
    return (layer.zeta * (1.0 - zg) + layer.nu) * np.tanh(pre + layer.bias_h) + zg * h, c, z


def quantize_fastgrnn(layer: FastGRNNLayerF, input_scale: float, idx: int | str, t_bits: int = 16,
                      state_exp: int = 0) -> FastGRNNLayerQ:
    """int8 matrices, Q3.12 biases bias_z and bias_h, zeta and nu in Q0.15; h as quantize_fastrnn's."""
    common = quantize.matrices_and_requants(layer, input_scale, idx, t_bits, 2.0 ** (state_exp - 7))
    q = FastGRNNLayerQ(**common, bias_z=quantize.bias_q312(layer.bias_z, "bias_z entry", idx),
                       bias_h=quantize.bias_q312(layer.bias_h, "bias_h entry", idx),
                       zeta=quantize.scalar_q015(layer.zeta, "zeta", idx), nu=quantize.scalar_q015(layer.nu, "nu", idx),
                       input_scale=input_scale, state_exp=state_exp)  # fmt: skip
    return quantize.checked(q, idx, t_bits)


def kp_fastgrnn_step_s8(
    layer: FastGRNNLayerQ,
    x: np.ndarray,
    h: np.ndarray,
    sigmoid_table: np.ndarray,
    tanh_table: np.ndarray,
    t_bits: int = 16,
) -> np.ndarray:
    """One FastGRNN step: x int8 [..., I], h int8 [..., H] -> h' int8.

    pre = gx + gh; z = sigmoid(sat16(pre + bias_z)); h~ = tanh(sat16(pre + bias_h)) (Q0.15);
    g = rsr(zeta * (32768 - z), 15) + nu (Q1.15, 0..65534); h' = sat8(rsr(rsr(g * h~, 8 + e) + z * h, 15)), h and
    h' Q(e).(7-e) with e = layer.state_exp.
    """
    pre, gh = gate_inputs(layer, x, h, t_bits)
    pre += gh  # gx + gh, in gx's array (gate_inputs returns new ones)
    z = i64(kp_sigmoid_s16(sat(pre + i64(layer.bias_z), 16), sigmoid_table))
    ht = i64(kp_tanh_s16(sat(pre + i64(layer.bias_h), 16), tanh_table))
    g = rsr(np.int64(layer.zeta) * (32768 - z), 15) + np.int64(layer.nu)
    h_new = sat(rsr(rsr(g * ht, 8 + layer.state_exp) + z * i64(h), 15), 8)
    return h_new.astype(np.int8)


def qat_step(q: FastGRNNLayerQ, t, gx, gh, h, c, ops):
    """kp_fastgrnn_step_s8 on the straight-through tensors of kpgen.train.qat (see kpgen.cells.lstm.qat_step)."""
    pre = gx + gh
    z = ops.sigmoid(ops.sat(pre + ops.bias(q.bias_z, t.bias_z), 16))
    ht = ops.tanh(ops.sat(pre + ops.bias(q.bias_h, t.bias_h), 16))
    g = ops.rsr(ops.scalar(q.zeta, t.zeta) * (32768.0 - z), 15) + ops.scalar(q.nu, t.nu)
    return ops.sat(ops.rsr(ops.rsr(g * ht, 8 + q.state_exp) + z * h, 15), 8), c


CELL = Cell(
    name="fastgrnn",
    title="FastGRNN",
    article="a",
    gates=1,
    gate_order="",
    float_type=FastGRNNLayerF,
    int_type=FastGRNNLayerQ,
    vectors=("bias_z", "bias_h"),
    scalars=("zeta", "nu"),
    tensors={"bias_z": 1, "bias_h": 1, "zeta": 0, "nu": 0},
    float_step=float_step,
    quantize=lambda l, s, absmax, idx, t_bits, e: quantize_fastgrnn(l, s, idx, t_bits, e),
    golden_step=lambda l, x, h, c, sig, tanh, t_bits: (kp_fastgrnn_step_s8(l, x, h, sig, tanh, t_bits), c),
    gate_sums=lambda l, wx, wh: [("the gate sum", max(limits.absmax(l.bias_z), limits.absmax(l.bias_h)) + wx + wh)],
    from_tensors=lambda w, p, i, h, wx, wh: FastGRNNLayerF(i, h, wx, wh, w[f"{p}bias_z"], w[f"{p}bias_h"],
                                                           sigmoid_scalar(float(w[f"{p}zeta"])),
                                                           sigmoid_scalar(float(w[f"{p}nu"]))),
    c_fields=lambda q: [CField("vector", "bias_z"), CField("vector", "bias_h"), CField("int", q.zeta),
                        CField("int", q.nu), CField("int", q.state_exp), CField("table", "sigmoid"),
                        CField("table", "tanh")],
    c_params="kp_fastgrnn_params_s8",
    c_step="kp_fastgrnn_step_s8",
    train_class="KPFastGRNN",
    state_exp=True,
    qat_step=qat_step,
)
