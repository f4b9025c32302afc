"""The integer reference model in numpy: the specification of every C kernel in `runtime_c/`.

Each public `kp_*` function has a C twin of the same name computing the same bits (see
`docs/quantization.md`). Everything is computed on int64; the matrix products run as float64 BLAS
products, which are exact here because every operand and every partial sum is an integer below 2**53.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpgen.ir import LSTMLayerQ, ModelQ

TABLE_SIZE = 1024  # entries of each activation table: one per 64 steps of Q3.12 (1/64)
TABLE_SHIFT = 6  # entry of z (Q3.12) = (z + 32768) >> TABLE_SHIFT
MAX_N1 = 511  # largest n1 for which the second KP product provably fits int32
MAX_N2 = 65535  # largest n2 for which X B^T plus its rounding term provably fits int32

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
    """1024-entry int16 table of sigmoid or tanh in Q0.15: entry k is the function at the centre of the
    k-th run of 64 Q3.12 inputs, z_k = (64k + 31.5 - 32768) / 4096, rounded half to even and clamped."""
    z = ((1 << TABLE_SHIFT) * np.arange(TABLE_SIZE, dtype=np.float64) + ((1 << TABLE_SHIFT) - 1) / 2 - 32768.0) / 4096.0
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
    """sat32((acc * mult + 2**(shift-1)) >> shift) in int64; mult in [1, 2**31), shift in [1, 62]; int32.

    The quantizer's gate requantizers use shift <= 32 only, with |acc| < 2**(shift-1) guaranteed
    (`check_kernel_limits`): then the C kernels compute the same number as one rounding high multiply,
    (acc * 2**(32-shift) * mult + 2**31) >> 32 (SMMULR).
    """
    if not (1 <= shift <= 62):
        raise ValueError(f"kp_requantize: shift {shift} outside 1..62")
    return sat(rsr(_i64(acc) * _I64(mult), shift), 32).astype(np.int32)


def kp_t_bound(b: np.ndarray, t_shift: int, t_bits: int = 16) -> np.ndarray:
    """Largest |T[i, q]| kp_matvec_s8 can produce for any int8 input, per row q of B (int64 [m2])."""
    s = 128 * np.sum(np.abs(_i64(b)), axis=1)  # |x| <= 128
    t = np.maximum(rsr(s, t_shift), -rsr(-s, t_shift))
    return np.minimum(t, 1 << (t_bits - 1))


def kp_acc_bound(a: np.ndarray, b: np.ndarray, t_shift: int, t_bits: int = 16) -> int:
    """Largest |y| kp_matvec_s8 can produce for any int8 input: max_p sum_i |A[p, i]| * max_q bound(T[., q])."""
    if a.size == 0 or b.size == 0:
        return 0
    return int(np.max(np.sum(np.abs(_i64(a)), axis=1))) * int(np.max(kp_t_bound(b, t_shift, min(t_bits, 63))))


def kp_matrix_s8(m, x: np.ndarray, t_bits: int = 16) -> np.ndarray:
    """y = W x for a whole KPMatrixQ (any number of factors; HKP top rows): int8 x [..., N] -> int32 [..., M].

    The specification of kp_matvec_s8 in C for every matrix kpgen emits (docs/quantization.md)."""
    if m.rest or m.top is not None:
        raise NotImplementedError("k > 2 factors and HKP")
    return kp_matvec_s8(m.a, m.b, x, m.t_shift, t_bits)


def matrix_acc_bound(m, t_bits: int = 16) -> int:
    """Largest |y| kp_matrix_s8 can produce for any int8 input (|x| <= 128)."""
    if m.rest or m.top is not None:
        raise NotImplementedError("k > 2 factors and HKP")
    return kp_acc_bound(m.a, m.b, m.t_shift, t_bits)


GATE_SHIFT_MAX = 32  # gate requantizers: shift 1..32 (one 32x32 -> high 32 multiply in C)


def kernel_limits(layer: LSTMLayerQ) -> list[str]:
    """What keeps a layer inside the C kernels' int32 arithmetic; each violated rule as a sentence (empty: fits).

    1. A has at most MAX_N1 columns (the sum of A T fits int32), B at most MAX_N2 (|X B^T| < 2**30, so
       its rounding term cannot overflow).
    2. Each gate requantizer has mult in 1..2**31-1 and shift in 1..32, and the worst-case accumulator
       satisfies |acc| * 2**(32-shift) < 2**31, so acc can be scaled to one 32-bit multiply operand.
    3. |bias| + worst |requantize(ax)| + worst |requantize(ah)| < 2**31: the gate sum fits int32.
    Under these rules every intermediate of the C kernels equals the int64 one here.
    """
    problems = []
    worst = abs(int(np.max(np.abs(_i64(layer.bias)), initial=0)))
    for name, m, rq in (("Wx", layer.wx, layer.rq_x), ("Wh", layer.wh, layer.rq_h)):
        if m.a.shape[1] > MAX_N1 or m.b.shape[1] > MAX_N2:
            problems.append(f"{name}: factors of {m.a.shape[1]} and {m.b.shape[1]} columns, more than {MAX_N1} and {MAX_N2}")
            continue
        if not (1 <= rq.mult < 2**31 and 1 <= rq.shift <= GATE_SHIFT_MAX):
            problems.append(f"{name}: requantizer {rq.mult}/2**{rq.shift} outside mult 1..2**31-1, shift 1..32")
            continue
        bound = kp_acc_bound(m.a, m.b, m.t_shift)
        if bound << (GATE_SHIFT_MAX - rq.shift) >= 2**31:
            problems.append(f"{name}: accumulator bound {bound} times 2**{GATE_SHIFT_MAX - rq.shift} leaves int32")
            continue
        worst += int(rsr(_I64(bound) * _I64(rq.mult), rq.shift))
    if not problems and worst >= 2**31:
        problems.append(f"the gate sum can reach {worst}, outside int32")
    return problems


def _lookup(z: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Table look-up shared by sigmoid and tanh: Q3.12 int16 in, table[(z + 32768) >> 6] (Q0.15 int16) out."""
    return np.asarray(table)[(_i64(z) + 32768) >> TABLE_SHIFT].astype(np.int16)


def kp_sigmoid_s16(z: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Sigmoid of Q3.12 int16 z as Q0.15 int16: the entry of the 1024-entry table for z's run of 64 inputs."""
    return _lookup(z, table)


def kp_tanh_s16(z: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Tanh of Q3.12 int16 z as Q0.15 int16: the entry of the 1024-entry table for z's run of 64 inputs."""
    return _lookup(z, table)


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
