"""The GRU cell, torch.nn.GRU's equations, gates (r, z, n): r = sigmoid(Wx_r x + Wh_r h + bias_r),
z = sigmoid(Wx_z x + Wh_z h + bias_z), n = tanh(Wx_n x + bias_n + r (Wh_n h + bias_hn)), h' = (1 - z) n + z h.
h is Q0.7 (docs/quantization.md, "GRU step")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpgen.cells.base import Cell, CField, i64, sigmoid
from kpgen.ir import KPMatrixF, KPMatrixQ, Requant
from kpgen.quant import limits, quantize
from kpgen.reference.golden import gate_inputs, kp_sigmoid_s16, kp_tanh_s16, rsr, sat


@dataclass(frozen=True)
class GRULayerF:
    """One KP-GRU layer, torch.nn.GRU's equations, gates (r, z, n):
    r = sigmoid(Wx_r x + Wh_r h + bias_r), z = sigmoid(Wx_z x + Wh_z h + bias_z),
    n = tanh(Wx_n x + bias_n + r * (Wh_n h + bias_hn)), h' = (1 - z) * n + z * h."""

    input_size: int
    hidden_size: int
    wx: KPMatrixF  # (3H, I)
    wh: KPMatrixF  # (3H, H)
    bias: np.ndarray  # (3H,): b_ih + [b_hr, b_hz, 0]
    bias_hn: np.ndarray  # (H,): b_hn, multiplied by r


@dataclass(frozen=True)
class GRULayerQ:
    input_size: int
    hidden_size: int
    wx: KPMatrixQ  # (3H, I), gates (r, z, n)
    wh: KPMatrixQ  # (3H, H)
    rq_x: Requant
    rq_h: Requant
    bias: np.ndarray  # int32 (3H,), Q3.12
    bias_hn: np.ndarray  # int32 (H,), Q3.12
    input_scale: float


def float_step(layer: GRULayerF, zx: np.ndarray, zh: np.ndarray, h: np.ndarray, c: np.ndarray):
    """One float step from zx = Wx x, zh = Wh h: (h', c unchanged, pre-activations of r, z and n)."""
    hs = layer.hidden_size
    gx = zx + layer.bias
    r = sigmoid(gx[:, :hs] + zh[:, :hs])
    zg = sigmoid(gx[:, hs : 2 * hs] + zh[:, hs : 2 * hs])
    z = np.concatenate([gx[:, : 2 * hs] + zh[:, : 2 * hs], gx[:, 2 * hs :] + r * (zh[:, 2 * hs :] + layer.bias_hn)], 1)
    return (1.0 - zg) * np.tanh(z[:, 2 * hs :]) + zg * h, c, z


def quantize_gru(layer: GRULayerF, input_scale: float, idx: int | str, t_bits: int = 16) -> GRULayerQ:
    """int8 matrices, Q3.12 biases (bias 3H, bias_hn H); h is Q0.7 like the LSTM's."""
    common = quantize.matrices_and_requants(layer, input_scale, idx, t_bits)
    q = GRULayerQ(**common, bias=quantize.bias_q312(layer.bias, "bias", idx),
                  bias_hn=quantize.bias_q312(layer.bias_hn, "bias_hn entry", idx), input_scale=input_scale)  # fmt: skip
    return quantize.checked(q, idx, t_bits)


def kp_gru_step_s8(
    layer: GRULayerQ,
    x: np.ndarray,
    h: np.ndarray,
    sigmoid_table: np.ndarray,
    tanh_table: np.ndarray,
    t_bits: int = 16,
) -> np.ndarray:
    """One GRU step (torch.nn.GRU's equations, gates (r, z, n)): x int8 [..., I], h int8 [..., H] -> h' int8.

    gx = requantize(Wx x), gh = requantize(Wh h) (Q3.12); r, z = sigmoid(sat16(gx + gh + bias)) (Q0.15);
    n = tanh(sat16(gx_n + bias_n + rsr(r * sat16(gh_n + bias_hn), 15)));
    h' = sat8(rsr(z * (h << 8) + (32768 - z) * n, 23)).
    """
    hs = layer.hidden_size
    gx, gh = gate_inputs(layer, x, h, t_bits)
    b = i64(layer.bias)
    rz = sat(gx[..., : 2 * hs] + gh[..., : 2 * hs] + b[: 2 * hs], 16)
    r = i64(kp_sigmoid_s16(rz[..., :hs], sigmoid_table))
    z = i64(kp_sigmoid_s16(rz[..., hs:], sigmoid_table))
    hn = sat(gh[..., 2 * hs :] + i64(layer.bias_hn), 16)
    n = i64(kp_tanh_s16(sat(gx[..., 2 * hs :] + b[2 * hs :] + rsr(r * hn, 15), 16), tanh_table))
    h_new = sat(rsr(z * (i64(h) << np.int64(8)) + (32768 - z) * n, 23), 8)
    return h_new.astype(np.int8)


def qat_step(q: GRULayerQ, t, gx, gh, h, c, ops):
    """kp_gru_step_s8 on the straight-through tensors of kpgen.train.qat (see kpgen.cells.lstm.qat_step)."""
    hs = q.hidden_size
    b = ops.bias(q.bias, t.bias)
    rz = ops.sat(gx[..., : 2 * hs] + gh[..., : 2 * hs] + b[: 2 * hs], 16)
    r, z = ops.sigmoid(rz[..., :hs]), ops.sigmoid(rz[..., hs:])
    hn = ops.sat(gh[..., 2 * hs :] + ops.bias(q.bias_hn, t.bias_hn), 16)
    n = ops.tanh(ops.sat(gx[..., 2 * hs :] + b[2 * hs :] + ops.rsr(r * hn, 15), 16))
    return ops.sat(ops.rsr(z * (h * 256.0) + (32768.0 - z) * n, 23), 8), c


def gate_sums(layer: GRULayerQ, wx: int, wh: int) -> list[tuple[str, int]]:
    """r and z: bias + rq(Wx x) + rq(Wh h); n: bias_n + rq(Wx x) + |r * (...)| <= 32768; and the recurrent
    n term bias_hn + rq(Wh h)."""
    hs = layer.hidden_size
    return [("the r and z gate sum", limits.absmax(layer.bias[: 2 * hs]) + wx + wh),
            ("the n gate sum", limits.absmax(layer.bias[2 * hs :]) + wx + 32768),
            ("the recurrent n gate sum", limits.absmax(layer.bias_hn) + wh)]  # fmt: skip


def _torch_biases(layer, b_ih, b_hh, hidden: int) -> None:
    """r and z biases add up; the n gate's recurrent bias sits inside r * (...)."""
    b = b_hh.clone()
    b[2 * hidden :] = 0
    layer.bias.copy_(b_ih + b)
    layer.bias_hn.copy_(b_hh[2 * hidden :])


CELL = Cell(
    name="gru",
    title="GRU",
    article="a",
    gates=3,
    gate_order="(r, z, n)",
    float_type=GRULayerF,
    int_type=GRULayerQ,
    vectors=("bias", "bias_hn"),
    tensors={"bias": 3, "bias_hn": 1},
    float_step=float_step,
    quantize=lambda l, s, absmax, idx, t_bits, e: quantize_gru(l, s, idx, t_bits),
    golden_step=lambda l, x, h, c, sig, tanh, t_bits: (kp_gru_step_s8(l, x, h, sig, tanh, t_bits), c),
    gate_sums=gate_sums,
    from_tensors=lambda w, p, i, h, wx, wh: GRULayerF(i, h, wx, wh, w[f"{p}bias"], w[f"{p}bias_hn"]),
    c_fields=lambda q: [CField("vector", "bias"), CField("vector", "bias_hn"), CField("table", "sigmoid"),
                        CField("table", "tanh")],
    c_params="kp_gru_params_s8",
    c_step="kp_gru_step_s8",
    train_class="KPGRU",
    torch_mode="GRU",
    torch_biases=_torch_biases,
    qat_step=qat_step,
)
