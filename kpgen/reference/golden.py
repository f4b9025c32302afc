"""The integer reference model in numpy: the specification of every C kernel in `runtime_c/`.

Each public `kp_*` function has a C twin of the same name computing the same bits (see
`docs/quantization.md`). The cells' step functions (kp_lstm_step_s8, kp_gru_step_s8, ...) live in their cell
modules (kpgen.cells) and are reached through the registry; the int32 limits that keep a layer inside this
arithmetic are the quantizer's policy (kpgen.quant.limits). Everything is computed on int64; the matrix products run
as float64 BLAS products, which are exact here because every operand and every partial sum is an integer below 2**53
in magnitude: each product and each addition is then exact, in whatever order or blocking BLAS sums them (FMA
included), so the result equals the integer sum. kp_matrix_s8 bounds its sums in its docstring; the rounding shifts
on float64 (_round_sat_f64) are exact for the same reason. Batches run as one small product per sample (batched
matmul), which keeps BLAS from spreading tiny products over threads, and run_cell takes samples in blocks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from kpgen.ir import BiLayerQ, KPMatrixQ, LayerQ, ModelQ, directions, hkp_row_order

TABLE_SIZE = 1024  # entries of each activation table: one per 64 steps of Q3.12 (1/64)
TABLE_SHIFT = 6  # entry of z (Q3.12) = (z + 32768) >> TABLE_SHIFT
# Activation table variants (kpgen emit --act-table): "full" looks up one of TABLE_SIZE entries; "interp" and
# "interp128" interpolate linearly between 2**k + 1 knots, one every 2**(16 - k) Q3.12 inputs (k = 8 and 7).
ACT_TABLES = {"full": 0, "interp": 8, "interp128": 7}  # variant -> k, its 2**k + 1 knots (0: the full table)
MAX_N1 = 511  # largest n1 for which the second KP product provably fits int32
BLOCK_ELEMENTS = 1 << 17  # run_cell: samples per block x (gate rows + inputs) of a layer, about this many

_I64 = np.int64
IntLike = np.ndarray | int | np.integer  # an integer array or scalar (Python or numpy)


def _i64(v: IntLike) -> np.ndarray:
    """View any integer array (or scalar) as int64."""
    return np.asarray(v).astype(_I64, copy=False)


def _exact_matmul(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Integer matrix product via float64 BLAS (exact: all sums stay below 2**53); int64 result."""
    return np.matmul(p.astype(np.float64), q.astype(np.float64)).astype(_I64)


def rsr(v: IntLike, s: int) -> np.ndarray:
    """Round-shift-right: (v + 2**(s-1)) >> s for s >= 1 (round half up), v for s == 0; int64."""
    if s < 0:
        raise ValueError(f"rsr: negative shift {s}")
    if s == 0:
        return _i64(v)
    out = _i64(v) + (_I64(1) << _I64(s - 1))  # a new array: the shift below may then work in place
    out >>= _I64(s)
    return out


def sat(v: IntLike, bits: int) -> np.ndarray:
    """Clamp to the signed range of a `bits`-wide integer; int64."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.clip(_i64(v), lo, hi)


def sat_inplace(v: np.ndarray, bits: int) -> np.ndarray:
    """sat(v, bits) written into v, an int64 array the caller owns (saves a pass and an allocation per step)."""
    return np.clip(v, -(1 << (bits - 1)), (1 << (bits - 1)) - 1, out=v)


def _act(kind: str, z: np.ndarray) -> np.ndarray:
    """sigmoid or tanh of float z."""
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if kind == "tanh":
        return np.tanh(z)
    raise ValueError(f"unknown activation table {kind!r}: expected 'sigmoid' or 'tanh'")


def make_table(kind: str, variant: str = "full") -> np.ndarray:
    """int16 table of sigmoid or tanh in Q0.15 (values rounded half to even and clamped).

    "full": 1024 entries, entry k the function at the centre of the k-th run of 64 Q3.12 inputs,
    z_k = (64k + 31.5 - 32768) / 4096. "interp" ("interp128"): 257 (129) knots, knot k the function at
    z_k = (k * 2**s - 32768) / 4096 with s = 8 (9) the interpolation shift, the last knot at z = 8."""
    if variant not in ACT_TABLES:
        raise ValueError(f"unknown activation table variant {variant!r}: expected one of {', '.join(ACT_TABLES)}")
    k = ACT_TABLES[variant]
    if k == 0:
        step = 1 << TABLE_SHIFT
        z = (step * np.arange(TABLE_SIZE, dtype=np.float64) + (step - 1) / 2 - 32768.0) / 4096.0
    else:
        seg = 1 << (16 - k)
        z = (seg * np.arange((1 << k) + 1, dtype=np.float64) - 32768.0) / 4096.0
    return np.clip(np.round(_act(kind, z) * 32768.0), -32768, 32767).astype(np.int16)


def table_interp_shift(table: np.ndarray) -> int:
    """The segment shift of an activation table, known from its length: 0 for the 1024-entry table (no
    interpolation), 16 - k for 2**k + 1 knots (k in 1..12: an interpolated table)."""
    n = int(np.asarray(table).shape[-1])
    if n == TABLE_SIZE:
        return 0
    k = (n - 1).bit_length() - 1
    if n < 3 or (n - 1) != (1 << k) or k > 12:
        raise ValueError(f"activation table of {n} entries: expected {TABLE_SIZE}, or 2**k + 1 for k in 1..12")
    return 16 - k


def table_variant(table: np.ndarray) -> str:
    """The ACT_TABLES name of a table, from its length ("full", "interp", "interp128")."""
    s = table_interp_shift(table)
    k = 16 - s if s else 0
    for name, bits in ACT_TABLES.items():
        if bits == k:
            return name
    raise ValueError(f"activation table of {np.asarray(table).shape[-1]} entries is no kpgen variant "
                     f"({', '.join(ACT_TABLES)})")


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


def kp_requantize(acc: IntLike, mult: int, shift: int) -> np.ndarray:
    """sat32((acc * mult + 2**(shift-1)) >> shift) in int64; mult in [1, 2**31), shift in [1, 62]; int32.

    The quantizer's gate requantizers use shift <= 32 only, with |acc| < 2**(shift-1) guaranteed
    (kpgen.quant.limits.kernel_limits): then the C kernels compute the same number as one rounding high multiply,
    (acc * 2**(32-shift) * mult + 2**31) >> 32 (SMMULR).
    """
    if not (1 <= shift <= 62):
        raise ValueError(f"kp_requantize: shift {shift} outside 1..62")
    return sat(rsr(_i64(acc) * _I64(mult), shift), 32).astype(np.int32)


def _requantize_inplace(v: np.ndarray, mult: int, shift: int) -> np.ndarray:
    """kp_requantize on an int64 array v of int32 values that the caller owns, in place and left as int64.

    |v * mult| < 2**62 for |v| <= 2**31 and mult < 2**31, so neither the product nor the rounding term
    overflows. The result is monotonic in v, so when both ends of the int32 range land inside it the
    saturation cannot change a value and is skipped (the usual case: mult < 2**shift).
    """
    if not (1 <= shift <= 62):
        raise ValueError(f"kp_requantize: shift {shift} outside 1..62")
    v *= _I64(mult)
    v += _I64(1) << _I64(shift - 1)
    v >>= _I64(shift)
    lo, hi = -(1 << 31), (1 << 31) - 1
    ends = [(e * mult + (1 << (shift - 1))) >> shift for e in (lo, hi)]
    if min(ends) < lo or max(ends) > hi:
        sat_inplace(v, 32)
    return v


def _round_sat_f64(v: np.ndarray, s: int, t_bits: int) -> np.ndarray:
    """sat(rsr(v, s), t_bits) on float64 integers, in place: floor((v + 2**(s-1)) * 2**-s) is exact (the sum is
    an integer below 2**53, the scaling a power of two), so it equals the integer rounding shift."""
    if s > 0:
        v += 2.0 ** (s - 1)
        v *= 2.0**-s
        np.floor(v, out=v)
    lim = 2.0 ** (t_bits - 1)
    return np.clip(v, -lim, lim - 1, out=v)


def _shift_top(v: np.ndarray, top_shift: int) -> np.ndarray:
    """HKP top rows into the Kronecker part's unit: v * 2**top_shift (top_shift >= 0) or rsr(v, -top_shift); int64."""
    return _i64(v) << _I64(top_shift) if top_shift >= 0 else rsr(v, -top_shift)


def kp_matrix_s8(m: KPMatrixQ, x: np.ndarray, t_bits: int = 16) -> np.ndarray:
    """y = W x for a whole KPMatrixQ (any number of factors; HKP top rows): int8 x [..., N] -> int32 [..., M].

    The specification of kp_matvec_s8 in C for every matrix kpgen emits (docs/quantization.md). Factors
    F1 (x) ... (x) Fk act on x viewed as an n1 x ... x nk tensor, last mode first (the mode-product chain):
    Fk's int32 products are rounded by shifts[k-2] and saturated to t_bits, F(k-1) multiplies those, rounded
    by shifts[k-3], ..., and F1's products are the int32 output; for k = 2 this is exactly kp_matvec_s8.
    HKP: the rows top @ x (exact int32), times 2**top_shift or rsr by -top_shift, come first; with
    top_groups > 1 the stacked rows are then put in W's order (kpgen.ir.hkp_row_order).
    """
    return _kp_matrix_i64(m, x, t_bits).astype(np.int32)


def _kp_matrix_i64(m: KPMatrixQ, x: np.ndarray, t_bits: int = 16) -> np.ndarray:
    """kp_matrix_s8's int32 values held as int64 (a new array): int8 x [..., N] -> [..., M].

    Each factor's product is one batched float64 matmul: one small product per sample (or per sample and
    mode), so BLAS never spreads a tiny product over threads. Exact (module docstring): |x|, |F| <= 128 and
    |T| <= 2**(t_bits-1), so every partial sum is an integer of magnitude at most n * 2**(t_bits+6) < 2**53
    for n < 2**15 columns of a factor (at most MAX_N1 before the last one when t_bits <= 16).
    """
    if t_bits not in (8, 16, 32):
        raise ValueError(f"t_bits must be 8, 16 or 32, got {t_bits}")
    factors, shifts = m.factors, m.shifts
    rows, cols = m.kp_shape
    x = np.asarray(x)
    if x.shape[-1] != cols:
        raise ValueError(f"kp_matrix_s8: x has {x.shape[-1]} elements, the matrix has {cols} columns")
    if t_bits <= 16 and any(f.shape[1] > MAX_N1 for f in factors[:-1]):
        raise ValueError(f"kp_matrix_s8: a factor before the last has more than {MAX_N1} columns, "
                         "the int32 sums could overflow")
    flat = x.reshape(-1, cols)
    bsz = flat.shape[0]
    ns = [f.shape[1] for f in factors]
    # the last factor: each sample's x as [n1 * ... * n(k-1), nk] times Fk^T
    v = np.matmul(flat.reshape(bsz, cols // ns[-1], ns[-1]).astype(np.float64), factors[-1].T.astype(np.float64))
    q = factors[-1].shape[0]  # product of the rows of the factors applied so far: v is [..., n_j, q]
    for j in range(len(factors) - 2, -1, -1):  # F(j+1)'s products rounded by shifts[j], then F_j on mode j
        v = _round_sat_f64(v, shifts[j], t_bits)
        v = np.matmul(factors[j].astype(np.float64), v.reshape(bsz * math.prod(ns[:j]), ns[j], q))
        q *= factors[j].shape[0]
    y = np.clip(v.reshape(bsz, rows), -(2.0**31), 2.0**31 - 1).astype(_I64)
    if m.top is not None:
        top = sat(_shift_top(_exact_matmul(_i64(flat), _i64(m.top).T), m.top_shift), 32)
        y = np.concatenate([top, y], axis=1)
        if m.top_groups > 1:
            y = y[:, hkp_row_order(rows + m.top_rows, m.top_rows, m.top_groups)]
    return y.reshape(x.shape[:-1] + (rows + m.top_rows,))


def _lookup(z: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Table look-up shared by sigmoid and tanh, Q3.12 int16 z in, Q0.15 out, in the table's dtype (int16 for a
    model's tables; run_cell passes int64 copies so the steps need no conversion). The 1024-entry table:
    table[(z + 32768) >> 6]. An interpolated table of 2**(16-s) + 1 knots: with u = z + 32768, i = u >> s and
    f = u & (2**s - 1), (table[i] (2**s - f) + table[i + 1] f + 2**(s-1)) >> s, between the two knots."""
    s = table_interp_shift(table)
    t = np.asarray(table)
    u = _i64(z) + 32768
    if s == 0:
        u >>= TABLE_SHIFT
        return t[u]
    i = u >> s
    f = u & ((1 << s) - 1)
    a, b = _i64(t[i]), _i64(t[i + 1])
    v = a * ((1 << s) - f) + b * f + (1 << (s - 1))
    v >>= s
    return v.astype(t.dtype, copy=False)


def kp_sigmoid_s16(z: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Sigmoid of Q3.12 int16 z as Q0.15 int16, by table look-up (_lookup: with or without interpolation)."""
    return _lookup(z, table)


def kp_tanh_s16(z: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Tanh of Q3.12 int16 z as Q0.15 int16, by table look-up (_lookup: with or without interpolation)."""
    return _lookup(z, table)


def with_act_tables(model: ModelQ, variant: str) -> ModelQ:
    """The model with its sigmoid and tanh tables of another variant (ACT_TABLES); the layers are unchanged."""
    if variant not in ACT_TABLES:
        raise ValueError(f"unknown activation table variant {variant!r}: expected one of {', '.join(ACT_TABLES)}")
    return dataclasses.replace(model, sigmoid_table=make_table("sigmoid", variant),
                               tanh_table=make_table("tanh", variant))


def gate_inputs(layer: LayerQ, x: np.ndarray, h: np.ndarray, t_bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """requantize(Wx x) and requantize(Wh h) of a cell's layer, in its gate unit (int64, not yet summed or
    saturated; new arrays the step may sum into): the first stage every cell step shares."""
    gx = _requantize_inplace(_kp_matrix_i64(layer.wx, x, t_bits), layer.rq_x.mult, layer.rq_x.shift)
    gh = _requantize_inplace(_kp_matrix_i64(layer.wh, h, t_bits), layer.rq_h.mult, layer.rq_h.shift)
    return gx, gh


def kp_fc_s8(weight: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Dense head: bias[k] + sum_j W[k, j] * x[j]; W int8 (C, H), bias int32 (C,), x int8 [..., H] -> int32 [..., C]."""
    out = _exact_matmul(_i64(x), _i64(weight).T) + _i64(bias)
    return out.astype(np.int32)


def quantize_input(x_float: np.ndarray, scale: float) -> np.ndarray:
    """clamp(round(x / scale), -127, 127) as int8 (np.round: half to even)."""
    return np.clip(np.round(np.asarray(x_float, dtype=np.float64) / scale), -127, 127).astype(np.int8)


def quantize_input_fixed(x_fixed: np.ndarray, mult: int, shift: int) -> np.ndarray:
    """The integer-only input quantizer of model.h: clamp(rsr(x_fixed * mult, shift), -127, 127) as int8, for int32
    fixed-point inputs (quantize.input_fixed_requant gives mult and shift; int64 products, halves rounded up)."""
    return np.clip(rsr(_i64(x_fixed) * _I64(mult), shift), -127, 127).astype(np.int8)


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


def run_cell(layer: LayerQ, model: ModelQ, seq: np.ndarray, t_bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """One unidirectional layer over int8 seq [B, T, I] from zero state: outputs h int8 [B, T, H] and cell
    states int16 [B, T, H] (cells with a cell state, the LSTM; [B, T, 0] for the others). The step is the
    cell's golden step from the registry (kpgen.cells)."""
    from kpgen import cells

    cell = cells.of(layer)
    bsz, steps = seq.shape[0], seq.shape[1]
    hs = layer.hidden_size
    outs = np.zeros((bsz, steps, hs), np.int8)
    cells_out = np.zeros((bsz, steps, hs if cell.cell_state else 0), np.int16)
    # the tables widened once: look-ups then give int64 directly (same values)
    sig, tanh = _i64(model.sigmoid_table), _i64(model.tanh_table)
    # samples are independent: run them in blocks whose int64 gate arrays stay small (cache-sized, and reused by
    # the allocator instead of fresh pages every step); the results do not depend on the block size
    block = max(1, BLOCK_ELEMENTS // (cell.gates * hs + layer.input_size))
    for lo in range(0, bsz, block):
        rows = slice(lo, min(lo + block, bsz))
        h = np.zeros((rows.stop - lo, hs), np.int8)
        c = np.zeros((rows.stop - lo, hs), np.int16)
        for t in range(steps):
            h, c = cell.golden_step(layer, seq[rows, t, :], h, c, sig, tanh, t_bits)
            if cell.cell_state:
                cells_out[rows, t, :] = c
            outs[rows, t, :] = h
    return outs, cells_out


def run_layer(layer: LayerQ | BiLayerQ, model: ModelQ, seq: np.ndarray,
              t_bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A layer over seq; bidirectional: the backward direction reads seq reversed and its outputs are put back
    in forward time order after the forward ones ([B, T, 2H]); cells then [B, T, 0]."""
    if not isinstance(layer, BiLayerQ):
        return run_cell(layer, model, seq, t_bits)
    of, _ = run_cell(layer.fwd, model, seq, t_bits)
    ob, _ = run_cell(layer.bwd, model, seq[:, ::-1], t_bits)
    out = np.concatenate([of, ob[:, ::-1]], axis=-1)
    return out, np.zeros(out.shape[:2] + (0,), np.int16)


POOL_MAX_STEPS = 1 << 22  # kp_pool_mean_s8: sums of at most this many int8 steps keep 2 * sum + count in int32


def kp_pool_sum_s8(h: np.ndarray, axis: int = 1) -> np.ndarray:
    """int32 sum of int8 outputs over time (axis): the running sum kp_pool_sum_s8 keeps in C; int64 values."""
    return np.sum(_i64(h), axis=axis)


def kp_pool_mean_s8(total: np.ndarray, count: int) -> np.ndarray:
    """round(total / count), half up, as int8: floor((2 * total + count) / (2 * count)); count >= 1. The mean of
    int8 values is an int8 value, so nothing saturates."""
    if not 1 <= count <= POOL_MAX_STEPS:
        raise ValueError(f"kp_pool_mean_s8: count {count} outside 1..{POOL_MAX_STEPS}")
    return ((2 * _i64(total) + count) // (2 * count)).astype(np.int8)


def kp_pool_max_s8(h: np.ndarray, axis: int = 1) -> np.ndarray:
    """The largest int8 output over time (axis), per unit."""
    return np.max(np.asarray(h), axis=axis).astype(np.int8)


def kp_fc_relu_s8(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, mult: int, shift: int) -> np.ndarray:
    """An MLP head's hidden layer: acc = kp_fc_s8(W, bias, x) (int32), then min(rsr(max(acc, 0) * mult, shift), 127)
    as int8 (the ReLU first, so the rounding shift only sees values >= 0; mult < 2**31, shift 1..62)."""
    acc = np.maximum(_i64(kp_fc_s8(weight, bias, x)), 0)
    return np.minimum(rsr(acc * _I64(mult), shift), 127).astype(np.int8)


def head_features(model: ModelQ, out: np.ndarray) -> np.ndarray:
    """The head's int8 input from the last layer's outputs [B, T, *] (model.pool): "last": h_T, or for a
    bidirectional last layer [forward h_T, backward h after reading the whole sequence (its output at t = 0)];
    "mean": kp_pool_mean_s8 of the int32 sums over all T steps; "max": kp_pool_max_s8 over all T steps."""
    if model.pool == "mean":
        return kp_pool_mean_s8(kp_pool_sum_s8(out), out.shape[1])
    if model.pool == "max":
        return kp_pool_max_s8(out)
    if model.pool == "last_output":
        return out[:, -1]
    last = model.layers[-1]
    if directions(last) == 1:
        return out[:, -1]
    hs = last.hidden_size
    return np.concatenate([out[:, -1, :hs], out[:, 0, hs:]], axis=-1)


def run_head(model: ModelQ, feats: np.ndarray) -> np.ndarray:
    """Logits int32 [B, C] from the head's int8 features: the MLP head's hidden layer (kp_fc_relu_s8) if any,
    then kp_fc_s8."""
    if model.hidden is not None:
        hq = model.hidden
        feats = kp_fc_relu_s8(hq.weight, hq.bias, feats, hq.rq.mult, hq.rq.shift)
    return kp_fc_s8(model.head.weight, model.head.bias, feats)


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
    logits = run_head(model, head_features(model, seq))
    return GoldenTrace(logits=logits, hidden=tuple(hidden), cell=tuple(cell))


def predict(logits: np.ndarray) -> np.ndarray:
    """Class index per row: the first index of the largest logit."""
    return np.argmax(np.asarray(logits), axis=-1)
