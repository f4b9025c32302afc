"""The integer reference model in numpy: the specification of every C kernel in `runtime_c/`.

Each public `kp_*` function has a C twin of the same name computing the same bits (see
`docs/quantization.md`). Everything is computed on int64; the matrix products run as float64 BLAS
products, which are exact here because every operand and every partial sum is an integer below 2**53.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpgen.ir import LSTMLayerQ, ModelQ

TABLE_SIZE = 257  # entries of each activation table (256 segments over Q3.12)
MAX_N1 = 511  # largest n1 for which the second KP product provably fits int32

_I64 = np.int64


def _i64(v: np.ndarray | int) -> np.ndarray:
    """View any integer array (or scalar) as int64."""
    return np.asarray(v).astype(_I64, copy=False)


def _exact_matmul(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Integer matrix product via float64 BLAS (exact: all sums stay below 2**53); int64 result."""
    return np.matmul(p.astype(np.float64), q.astype(np.float64)).astype(_I64)


def rsr(v: np.ndarray | int, s: int) -> np.ndarray:
    """Round-shift-right: (v + 2**(s-1)) >> s for s >= 1 (round half up), v for s == 0; int64."""
    v = _i64(v)
    if s < 0:
        raise ValueError(f"rsr: negative shift {s}")
    if s == 0:
        return v
    return (v + (_I64(1) << _I64(s - 1))) >> _I64(s)


def sat(v: np.ndarray | int, bits: int) -> np.ndarray:
    """Clamp to the signed range of a `bits`-wide integer; int64."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(_i64(v), lo, hi)


def make_table(kind: str) -> np.ndarray:
    """257-entry int16 table of sigmoid or tanh at z_k = (256k - 32768) / 4096, in Q0.15."""
    z = (256.0 * np.arange(TABLE_SIZE, dtype=np.float64) - 32768.0) / 4096.0
    if kind == "sigmoid":
        f = 1.0 / (1.0 + np.exp(-z))
    elif kind == "tanh":
        f = np.tanh(z)
    else:
        raise ValueError(f"unknown activation table {kind!r}: expected 'sigmoid' or 'tanh'")
    return np.clip(np.round(f * 32768.0), -32768, 32767).astype(np.int16)


def kp_matvec_macs(m1: int, n1: int, m2: int, n2: int) -> int:
    """Multiply-accumulates of one KP mat-vec: n1*n2*m2 (T = X B^T) + m1*n1*m2 (Y = A T)."""
    return n1 * n2 * m2 + m1 * n1 * m2


def kp_matvec_s8(a: np.ndarray, b: np.ndarray, x: np.ndarray, t_shift: int, t_bits: int = 16) -> np.ndarray:
    """y = (A (x) B) x via T = sat(rsr(X B^T, t_shift), t_bits), y = vec(A T); x [..., n1*n2] -> int32 [..., m1*m2].

    t_bits is 16 in the spec (and the C kernel); 8 and 32 exist for accuracy experiments. With t_bits 32
    the result is saturated to int32 (the C kernel never needs it: its quantizer bounds n1 by 511).
    """
    if t_bits not in (8, 16, 32):
        raise ValueError(f"t_bits must be 8, 16 or 32, got {t_bits}")
    m1, n1 = a.shape
    m2, n2 = b.shape
    x = np.asarray(x)
    if x.shape[-1] != n1 * n2:
        raise ValueError(f"kp_matvec_s8: x has {x.shape[-1]} elements, factors need {n1 * n2}")
    if t_bits <= 16 and n1 > MAX_N1:
        raise ValueError(f"kp_matvec_s8: n1 = {n1} > {MAX_N1}, the int32 accumulator could overflow")
    # Float64 BLAS products on integer values are exact (every partial sum < 2**53), and so are the
    # power-of-two scaling and floor that implement rsr; this is the same arithmetic as the int32 C code.
    lead = x.shape[:-1]
    xm = x.reshape(-1, n2).astype(np.float64)  # every row X[i, :] of every batch item: one product for T
    t = xm @ b.astype(np.float64).T  # [(batch * n1), m2]
    if t_shift > 0:
        t = np.floor((t + 2.0 ** (t_shift - 1)) * 2.0**-t_shift)
    lim = 2.0 ** (t_bits - 1)
    np.clip(t, -lim, lim - 1, out=t)
    tt = t.reshape(-1, n1, m2).transpose(1, 0, 2).reshape(n1, -1)  # [n1, batch * m2]: one product for Y
    y = (a.astype(np.float64) @ tt).reshape(m1, -1, m2).transpose(1, 0, 2)  # [batch, m1, m2]
    np.clip(y, -(2.0**31), 2.0**31 - 1, out=y)
    return y.astype(np.int32).reshape(lead + (m1 * m2,))


def kp_requantize(acc: np.ndarray | int, mult: int, shift: int) -> np.ndarray:
    """sat32((acc * mult + 2**(shift-1)) >> shift) in int64; mult in [2**30, 2**31), shift in [1, 62]; int32."""
    if not (1 <= shift <= 62):
        raise ValueError(f"kp_requantize: shift {shift} outside 1..62")
    return sat(rsr(_i64(acc) * _I64(mult), shift), 32).astype(np.int32)


def _interp(z: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Table interpolation shared by sigmoid and tanh: Q3.12 int16 in, Q0.15 int16 out."""
    u = _i64(z) + 32768
    k = u >> 8
    r = u & 255
    tab = _i64(table)
    t0 = tab[k]
    return (t0 + (((tab[k + 1] - t0) * r + 128) >> 8)).astype(np.int16)


def kp_sigmoid_s16(z: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Sigmoid of Q3.12 int16 z as Q0.15 int16, by linear interpolation in the 257-entry table."""
    return _interp(z, table)


def kp_tanh_s16(z: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Tanh of Q3.12 int16 z as Q0.15 int16, by linear interpolation in the 257-entry table."""
    return _interp(z, table)


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
    ax = kp_matvec_s8(layer.wx.a, layer.wx.b, x, layer.wx.t_shift, t_bits)
    ah = kp_matvec_s8(layer.wh.a, layer.wh.b, h, layer.wh.t_shift, t_bits)
    z = sat(
        _i64(kp_requantize(ax, layer.rq_x.mult, layer.rq_x.shift))
        + _i64(kp_requantize(ah, layer.rq_h.mult, layer.rq_h.shift))
        + _i64(layer.bias),
        16,
    )
    gi = _i64(kp_sigmoid_s16(z[..., 0:hs], sigmoid_table))
    gf = _i64(kp_sigmoid_s16(z[..., hs : 2 * hs], sigmoid_table))
    gg = _i64(kp_tanh_s16(z[..., 2 * hs : 3 * hs], tanh_table))
    go = _i64(kp_sigmoid_s16(z[..., 3 * hs : 4 * hs], sigmoid_table))
    cf = layer.cell_frac
    c_new = sat(rsr(gf * _i64(c), 15) + rsr(gi * gg, 30 - cf), 16)
    if cf >= 12:
        c12 = rsr(c_new, cf - 12)
    else:
        c12 = sat(c_new << _I64(12 - cf), 16)
    h_new = sat(rsr(go * _i64(kp_tanh_s16(c12, tanh_table)), 23), 8)
    return h_new.astype(np.int8), c_new.astype(np.int16)


def kp_fc_s8(weight: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Dense head: bias[k] + sum_j W[k, j] * x[j]; W int8 (C, H), bias int32 (C,), x int8 [..., H] -> int32 [..., C]."""
    out = _exact_matmul(_i64(x), _i64(weight).T) + _i64(bias)
    return out.astype(np.int32)


def quantize_input(x_float: np.ndarray, scale: float) -> np.ndarray:
    """clamp(round(x / scale), -127, 127) as int8 (np.round: half to even)."""
    return np.clip(np.round(np.asarray(x_float, dtype=np.float64) / scale), -127, 127).astype(np.int8)


@dataclass(frozen=True)
class GoldenTrace:
    """Everything the target must reproduce: logits and every layer's h and c after every step."""

    logits: np.ndarray  # int32 [B, C]
    hidden: tuple[np.ndarray, ...]  # per layer, int8 [B, T, H]
    cell: tuple[np.ndarray, ...]  # per layer, int16 [B, T, H]


def run_model(model: ModelQ, xq: np.ndarray, t_bits: int = 16) -> GoldenTrace:
    """Run stacked layers over int8 sequences xq [B, T, I] from zero state; head on the last layer's final h.

    t_bits is passed to every kp_lstm_step_s8 (see there); 16 is the C runtime's width.
    """
    xq = np.asarray(xq)
    if xq.ndim != 3 or xq.shape[2] != model.input_size:
        raise ValueError(f"run_model: expected int8 [B, T, {model.input_size}], got shape {xq.shape}")
    if xq.shape[1] < 1:
        raise ValueError("run_model: sequences need at least one time step")
    bsz, steps, _ = xq.shape
    hidden = [np.zeros((bsz, steps, l.hidden_size), np.int8) for l in model.layers]
    cell = [np.zeros((bsz, steps, l.hidden_size), np.int16) for l in model.layers]
    h = [np.zeros((bsz, l.hidden_size), np.int8) for l in model.layers]
    c = [np.zeros((bsz, l.hidden_size), np.int16) for l in model.layers]
    for t in range(steps):
        inp = xq[:, t, :]
        for k, layer in enumerate(model.layers):
            h[k], c[k] = kp_lstm_step_s8(layer, inp, h[k], c[k], model.sigmoid_table, model.tanh_table, t_bits)
            hidden[k][:, t, :] = h[k]
            cell[k][:, t, :] = c[k]
            inp = h[k]
    logits = kp_fc_s8(model.head.weight, model.head.bias, h[-1])
    return GoldenTrace(logits=logits, hidden=tuple(hidden), cell=tuple(cell))


def predict(logits: np.ndarray) -> np.ndarray:
    """Class index per row: the first index of the largest logit."""
    return np.argmax(np.asarray(logits), axis=-1)
