"""The integer reference model in numpy: the specification of every C kernel in `runtime_c/`.

Each public `kp_*` function has a C twin of the same name computing the same bits (see
`docs/quantization.md`). Everything is computed on int64; the matrix products run as float64 BLAS
products, which are exact here because every operand and every partial sum is an integer below 2**53.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpgen.ir import LSTMLayerQ, ModelQ, cell_of, directions
from kpgen.ir import FastGRNNLayerQ, FastRNNLayerQ, GRULayerQ

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


MAX_FACTORS = 8  # Kronecker factors per matrix the C runtime chains (KP_MAX_FACTORS in kp_matvec_s8.c)
TOP_SHIFT_MIN, TOP_SHIFT_MAX = -31, 31  # HKP top_shift: a 32-bit left shift or kp_rsr32


def _round_sat_f64(v: np.ndarray, s: int, t_bits: int) -> np.ndarray:
    """sat(rsr(v, s), t_bits) on float64 integers (exact: power-of-two scaling and floor), in place."""
    if s > 0:
        v = np.floor((v + 2.0 ** (s - 1)) * 2.0**-s)
    lim = 2.0 ** (t_bits - 1)
    return np.clip(v, -lim, lim - 1, out=v)


def _shift_top(v: np.ndarray, top_shift: int) -> np.ndarray:
    """HKP top rows into the Kronecker part's unit: v * 2**top_shift (top_shift >= 0) or rsr(v, -top_shift); int64."""
    return _i64(v) << _I64(top_shift) if top_shift >= 0 else rsr(v, -top_shift)


def kp_matrix_s8(m, x: np.ndarray, t_bits: int = 16) -> np.ndarray:
    """y = W x for a whole KPMatrixQ (any number of factors; HKP top rows): int8 x [..., N] -> int32 [..., M].

    The specification of kp_matvec_s8 in C for every matrix kpgen emits (docs/quantization.md). Factors
    F1 (x) ... (x) Fk act on x viewed as an n1 x ... x nk tensor, last mode first (the mode-product chain):
    Fk's int32 products are rounded by shifts[k-2] and saturated to t_bits, F(k-1) multiplies those, rounded
    by shifts[k-3], ..., and F1's products are the int32 output; for k = 2 this is exactly kp_matvec_s8.
    HKP: the rows top @ x (exact int32), times 2**top_shift or rsr by -top_shift, come first.
    """
    if t_bits not in (8, 16, 32):
        raise ValueError(f"t_bits must be 8, 16 or 32, got {t_bits}")
    factors, shifts = m.factors, m.shifts
    rows, cols = m.kp_shape
    x = np.asarray(x)
    if x.shape[-1] != cols:
        raise ValueError(f"kp_matrix_s8: x has {x.shape[-1]} elements, the matrix has {cols} columns")
    if t_bits <= 16 and any(f.shape[1] > MAX_N1 for f in factors[:-1]):
        raise ValueError(f"kp_matrix_s8: a factor before the last has more than {MAX_N1} columns, the int32 sums could overflow")
    lead = x.shape[:-1]
    flat = x.reshape(-1, cols)
    v = flat.reshape((-1,) + tuple(f.shape[1] for f in factors)).astype(np.float64)
    for j in range(len(factors) - 1, -1, -1):  # factor j acts on mode j + 1 (mode 0: the batch)
        v = np.moveaxis(np.tensordot(v, factors[j].astype(np.float64), axes=([j + 1], [1])), -1, j + 1)
        if j > 0:
            v = _round_sat_f64(v, shifts[j - 1], t_bits)
    y = np.clip(v.reshape(-1, rows), -(2.0**31), 2.0**31 - 1).astype(_I64)
    if m.top is not None:
        top = sat(_shift_top(_exact_matmul(_i64(flat), _i64(m.top).T), m.top_shift), 32)
        y = np.concatenate([top, y], axis=1)
    return y.astype(np.int32).reshape(lead + (rows + m.top_rows,))


def _range_after(f: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact range of F @ V for columns of V whose element r lies anywhere in [lo[r], hi[r]], independently per
    row of V: output (p, r) flattened row-major, as the mode-product chain orders it; int64."""
    f = _i64(f)
    pos = np.sum(np.maximum(f, 0), axis=1)[:, None]
    neg = np.sum(np.minimum(f, 0), axis=1)[:, None]
    return (pos * lo[None, :] + neg * hi[None, :]).reshape(-1), (pos * hi[None, :] + neg * lo[None, :]).reshape(-1)


def matrix_acc_range(m, t_bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per output row, the smallest and largest int32 value kp_matrix_s8 can produce over all int8 inputs
    (-128..127), before the final int32 clamp: exact, each end attained by some input (int64 [M] each).

    Exact because rsr and sat are monotone and the rows of X feeding one factor are disjoint parts of x, so
    every element of an intermediate reaches its own extremes independently of the others."""
    factors, shifts = m.factors, m.shifts
    lo, hi = _range_after(factors[-1], np.array([-128], _I64), np.array([127], _I64))
    for j in range(len(factors) - 2, -1, -1):
        s = shifts[j]
        lo, hi = sat(rsr(lo, s), t_bits), sat(rsr(hi, s), t_bits)
        lo, hi = _range_after(factors[j], lo, hi)
    if m.top is not None:
        tlo, thi = _range_after(m.top, np.array([-128], _I64), np.array([127], _I64))
        lo = np.concatenate([_shift_top(tlo, m.top_shift), lo])
        hi = np.concatenate([_shift_top(thi, m.top_shift), hi])
    return lo, hi


def matrix_acc_bound(m, t_bits: int = 16) -> int:
    """Largest |y| kp_matrix_s8 can produce for any int8 input, exact (attained by some input; before the int32
    clamp, which matrix_limits rules out). For two factors at most kp_acc_bound, which assumes |x| <= 128 on
    both sides."""
    lo, hi = matrix_acc_range(m, t_bits)
    return max(int(np.max(hi, initial=0)), int(-np.min(lo, initial=0)))


def matrix_limits(m) -> list[str]:
    """What keeps kp_matvec_s8 on this matrix inside its 32-bit arithmetic; each violated rule as a sentence.

    1. At most MAX_FACTORS factors (the C runtime walks a fixed-size chain, without recursion).
    2. Every factor but the last has at most MAX_N1 columns: its int8 x int16 sums (and the final output) fit
       int32. The last factor has at most MAX_N2 columns: |X Fk^T| < 2**30, so its rounding term fits too.
    3. Every shift between factors is in 0..31 (a 32-bit rounding shift).
    4. HKP: top_shift in -31..31, the top rows' int32 sums fit int32, and so do they times 2**top_shift.
    Under these rules every intermediate of the C kernel equals the int64 one of kp_matrix_s8.
    """
    problems = []
    factors = m.factors
    if len(factors) > MAX_FACTORS:
        problems.append(f"{len(factors)} Kronecker factors, more than the {MAX_FACTORS} the C runtime chains")
    for j, f in enumerate(factors):
        limit = MAX_N2 if j == len(factors) - 1 else MAX_N1
        if f.shape[1] > limit:
            problems.append(f"factor {j + 1} ({f.shape[0]} x {f.shape[1]}) has more than {limit} columns, "
                            "its int32 sums could overflow")
    for j, s in enumerate(m.shifts):
        if not 0 <= s <= 31:
            problems.append(f"shift {s} after factor {j + 2} is outside 0..31")
    if m.top is not None:
        if m.top.shape[1] != m.kp_shape[1]:
            problems.append(f"top rows have {m.top.shape[1]} columns, the Kronecker part {m.kp_shape[1]}")
        if not TOP_SHIFT_MIN <= m.top_shift <= TOP_SHIFT_MAX:
            problems.append(f"top_shift {m.top_shift} is outside {TOP_SHIFT_MIN}..{TOP_SHIFT_MAX}")
        else:
            tlo, thi = _range_after(m.top, np.array([-128], _I64), np.array([127], _I64))
            raw = max(int(np.max(thi, initial=0)), int(-np.min(tlo, initial=0)))
            if raw >= 2**31:
                problems.append(f"the top rows' sums can reach {raw}, outside int32")
            elif m.top_shift > 0 and raw << m.top_shift >= 2**31:
                problems.append(f"the top rows' sums can reach {raw}, times 2**{m.top_shift} outside int32")
    return problems


GATE_SHIFT_MAX = 32  # gate requantizers: shift 1..32 (one 32x32 -> high 32 multiply in C)
MAX_STATE_EXP = 7  # FastRNN / FastGRNN h is Q(e).(7-e), e = state_exp in 0..7


def _absmax(v: np.ndarray) -> int:
    return int(np.max(np.abs(_i64(v)), initial=0))


def kernel_limits(layer) -> list[str]:
    """What keeps a layer (LSTM, GRU, FastRNN, FastGRNN, or a bidirectional pair of them) inside the C
    kernels' int32 arithmetic; each violated rule as a sentence (empty: fits).

    1. Wx and Wh pass matrix_limits (the mat-vec's own int32 rules).
    2. Each gate requantizer has mult in 1..2**31-1 and shift in 1..32, and the worst-case accumulator
       (matrix_acc_bound) satisfies |acc| * 2**(32-shift) < 2**31, so acc can be scaled to one 32-bit
       multiply operand.
    3. Every gate sum fits int32: |bias| + worst |requantize(ax)| + worst |requantize(ah)| < 2**31 (LSTM,
       FastRNN, GRU r and z; FastGRNN with the larger of bias_z, bias_h); GRU n: |bias_n| + worst
       |requantize(ax)| + 32768 and |bias_hn| + worst |requantize(ah)| < 2**31.
    4. FastRNN alpha, beta and FastGRNN zeta, nu lie in 0..32767 (Q0.15), and their state_exp in 0..7: the
       state updates' int32 proofs (docs/quantization.md) rest on it.
    Under these rules every intermediate of the C kernels equals the int64 one here.
    """
    if hasattr(layer, "fwd"):  # bidirectional: both directions
        return [f"{d} {p}" for d, s in (("forward", layer.fwd), ("backward", layer.bwd)) for p in kernel_limits(s)]
    problems = []
    worst = []  # worst |requantize(acc)| of Wx, Wh
    for name, m, rq in (("Wx", layer.wx, layer.rq_x), ("Wh", layer.wh, layer.rq_h)):
        mp = matrix_limits(m)
        if mp:
            problems.append(f"{name}: {mp[0]}")
            continue
        if not (1 <= rq.mult < 2**31 and 1 <= rq.shift <= GATE_SHIFT_MAX):
            problems.append(f"{name}: requantizer {rq.mult}/2**{rq.shift} outside mult 1..2**31-1, shift 1..32")
            continue
        bound = matrix_acc_bound(m)
        if bound << (GATE_SHIFT_MAX - rq.shift) >= 2**31:
            problems.append(f"{name}: accumulator bound {bound} times 2**{GATE_SHIFT_MAX - rq.shift} leaves int32")
            continue
        worst.append(int(rsr(_I64(bound) * _I64(rq.mult), rq.shift)))
    cell = type(layer).CELL
    for name in ("alpha", "beta", "zeta", "nu"):
        v = getattr(layer, name, None)
        if v is not None and not 0 <= int(v) <= 32767:
            problems.append(f"{name} = {v} outside 0..32767 (Q0.15)")
    e = getattr(layer, "state_exp", None)
    if e is not None and not 0 <= int(e) <= MAX_STATE_EXP:
        problems.append(f"state_exp = {e} outside 0..{MAX_STATE_EXP}")
    if problems:
        return problems
    wx, wh = worst
    hs = layer.hidden_size
    if cell == "gru":
        sums = [("the r and z gate sum", _absmax(layer.bias[: 2 * hs]) + wx + wh),
                ("the n gate sum", _absmax(layer.bias[2 * hs :]) + wx + 32768),
                ("the recurrent n gate sum", _absmax(layer.bias_hn) + wh)]  # fmt: skip
    elif cell == "fastgrnn":
        sums = [("the gate sum", max(_absmax(layer.bias_z), _absmax(layer.bias_h)) + wx + wh)]
    else:  # lstm, fastrnn
        sums = [("the gate sum", _absmax(layer.bias) + wx + wh)]
    return [f"{what} can reach {v}, outside int32" for what, v in sums if v >= 2**31]


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
    ax = kp_matrix_s8(layer.wx, x, t_bits)
    ah = kp_matrix_s8(layer.wh, h, t_bits)
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


# ------------------------------------------------------------------------------ GRU, FastRNN, FastGRNN steps


def _gate_inputs(layer, x: np.ndarray, h: np.ndarray, t_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """requantize(Wx x) and requantize(Wh h) in Q3.12 units (int64, not yet summed or saturated)."""
    gx = kp_requantize(kp_matrix_s8(layer.wx, x, t_bits), layer.rq_x.mult, layer.rq_x.shift)
    gh = kp_requantize(kp_matrix_s8(layer.wh, h, t_bits), layer.rq_h.mult, layer.rq_h.shift)
    return _i64(gx), _i64(gh)


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
    gx, gh = _gate_inputs(layer, x, h, t_bits)
    b = _i64(layer.bias)
    rz = sat(gx[..., : 2 * hs] + gh[..., : 2 * hs] + b[: 2 * hs], 16)
    r = _i64(kp_sigmoid_s16(rz[..., :hs], sigmoid_table))
    z = _i64(kp_sigmoid_s16(rz[..., hs:], sigmoid_table))
    hn = sat(gh[..., 2 * hs :] + _i64(layer.bias_hn), 16)
    n = _i64(kp_tanh_s16(sat(gx[..., 2 * hs :] + b[2 * hs :] + rsr(r * hn, 15), 16), tanh_table))
    h_new = sat(rsr(z * (_i64(h) << _I64(8)) + (32768 - z) * n, 23), 8)
    return h_new.astype(np.int8)


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
    gx, gh = _gate_inputs(layer, x, h, t_bits)
    ht = _i64(kp_tanh_s16(sat(gx + gh + _i64(layer.bias), 16), tanh_table))
    h_new = sat(rsr(rsr(_I64(layer.alpha) * ht, 8 + layer.state_exp) + _I64(layer.beta) * _i64(h), 15), 8)
    return h_new.astype(np.int8)


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
    gx, gh = _gate_inputs(layer, x, h, t_bits)
    pre = gx + gh
    z = _i64(kp_sigmoid_s16(sat(pre + _i64(layer.bias_z), 16), sigmoid_table))
    ht = _i64(kp_tanh_s16(sat(pre + _i64(layer.bias_h), 16), tanh_table))
    g = rsr(_I64(layer.zeta) * (32768 - z), 15) + _I64(layer.nu)
    h_new = sat(rsr(rsr(g * ht, 8 + layer.state_exp) + z * _i64(h), 15), 8)
    return h_new.astype(np.int8)


CELL_STEPS = {"gru": kp_gru_step_s8, "fastrnn": kp_fastrnn_step_s8, "fastgrnn": kp_fastgrnn_step_s8}


def kp_fc_s8(weight: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Dense head: bias[k] + sum_j W[k, j] * x[j]; W int8 (C, H), bias int32 (C,), x int8 [..., H] -> int32 [..., C]."""
    out = _exact_matmul(_i64(x), _i64(weight).T) + _i64(bias)
    return out.astype(np.int32)


def quantize_input(x_float: np.ndarray, scale: float) -> np.ndarray:
    """clamp(round(x / scale), -127, 127) as int8 (np.round: half to even)."""
    return np.clip(np.round(np.asarray(x_float, dtype=np.float64) / scale), -127, 127).astype(np.int8)


@dataclass(frozen=True)
class GoldenTrace:
    """Everything the target must reproduce: logits and every layer's outputs (and LSTM cell states) after
    every step, in forward time order."""

    logits: np.ndarray  # int32 [B, C]
    hidden: tuple[np.ndarray, ...]  # per layer, int8 [B, T, H] (bidirectional: [B, T, 2H], [fwd h_t, bwd h_t])
    cell: tuple[np.ndarray, ...]  # per layer, int16 [B, T, H] for LSTM layers of streaming models, else [B, T, 0]


def is_streaming(model: ModelQ) -> bool:
    """True when no layer is bidirectional: the model can advance one time step at a time."""
    return not any(directions(l) == 2 for l in model.layers)


def run_cell(layer, model: ModelQ, seq: np.ndarray, t_bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """One unidirectional layer over int8 seq [B, T, I] from zero state: outputs h int8 [B, T, H] and cell
    states int16 [B, T, H] (LSTM; [B, T, 0] for the other cells)."""
    cell = cell_of(layer)
    bsz, steps = seq.shape[0], seq.shape[1]
    hs = layer.hidden_size
    h = np.zeros((bsz, hs), np.int8)
    c = np.zeros((bsz, hs), np.int16)
    outs = np.zeros((bsz, steps, hs), np.int8)
    cells = np.zeros((bsz, steps, hs if cell == "lstm" else 0), np.int16)
    sig, tanh = model.sigmoid_table, model.tanh_table
    for t in range(steps):
        x = seq[:, t, :]
        if cell == "lstm":
            h, c = kp_lstm_step_s8(layer, x, h, c, sig, tanh, t_bits)
            cells[:, t, :] = c
        else:
            h = CELL_STEPS[cell](layer, x, h, sig, tanh, t_bits)
        outs[:, t, :] = h
    return outs, cells


def run_layer(layer, model: ModelQ, seq: np.ndarray, t_bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A layer over seq; bidirectional: the backward direction reads seq reversed and its outputs are put back
    in forward time order after the forward ones ([B, T, 2H]); cells then [B, T, 0]."""
    if directions(layer) == 1:
        return run_cell(layer, model, seq, t_bits)
    of, _ = run_cell(layer.fwd, model, seq, t_bits)
    ob, _ = run_cell(layer.bwd, model, seq[:, ::-1], t_bits)
    out = np.concatenate([of, ob[:, ::-1]], axis=-1)
    return out, np.zeros(out.shape[:2] + (0,), np.int16)


def head_features(model: ModelQ, out: np.ndarray) -> np.ndarray:
    """The head's int8 input from the last layer's outputs [B, T, *]: h_T, or for a bidirectional last layer
    [forward h_T, backward h after reading the whole sequence (its output at t = 0)]."""
    last = model.layers[-1]
    if directions(last) == 1:
        return out[:, -1]
    hs = last.hidden_size
    return np.concatenate([out[:, -1, :hs], out[:, 0, hs:]], axis=-1)


def run_model(model: ModelQ, xq: np.ndarray, t_bits: int = 16) -> GoldenTrace:
    """Run stacked layers over int8 sequences xq [B, T, I] from zero state; head on head_features.

    t_bits is passed to every kp_lstm_step_s8 (see there); 16 is the C runtime's width. In a model with a
    bidirectional layer, no layer's cell states are part of the trace (the firmware keeps only outputs).
    """
    xq = np.asarray(xq)
    if xq.ndim != 3 or xq.shape[2] != model.input_size:
        raise ValueError(f"run_model: expected int8 [B, T, {model.input_size}], got shape {xq.shape}")
    if xq.shape[1] < 1:
        raise ValueError("run_model: sequences need at least one time step")
    streaming = is_streaming(model)
    hidden, cell = [], []
    seq = xq
    for layer in model.layers:
        seq, c = run_layer(layer, model, seq, t_bits)
        hidden.append(seq)
        cell.append(c if streaming else np.zeros(seq.shape[:2] + (0,), np.int16))
    logits = kp_fc_s8(model.head.weight, model.head.bias, head_features(model, seq))
    return GoldenTrace(logits=logits, hidden=tuple(hidden), cell=tuple(cell))


def predict(logits: np.ndarray) -> np.ndarray:
    """Class index per row: the first index of the largest logit."""
    return np.argmax(np.asarray(logits), axis=-1)
