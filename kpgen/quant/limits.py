"""The range analysis and the C kernels' int32 limits: what the quantizer must guarantee so that every
intermediate of a C kernel equals the int64 one of the golden model (docs/quantization.md).

The golden model (kpgen.reference.golden) is the arithmetic; this module is the policy that keeps integer
layers inside it. Each cell adds its own gate-sum rule through the registry (kpgen.cells).
"""

from __future__ import annotations

import numpy as np

from kpgen.ir import AnyLayerQ, BiLayerQ, KPMatrixQ
from kpgen.reference.golden import MAX_N1, _shift_top, rsr, sat

MAX_N2 = 65535  # largest n2 for which X B^T plus its rounding term provably fits int32
MAX_FACTORS = 8  # Kronecker factors per matrix the C runtime chains (KP_MAX_FACTORS in kp_matvec_s8.h)
TOP_SHIFT_MIN, TOP_SHIFT_MAX = -31, 31  # HKP top_shift: a 32-bit left shift or kp_rsr32
GATE_SHIFT_MAX = 32  # gate requantizers: shift 1..32 (one 32x32 -> high 32 multiply in C)
MAX_STATE_EXP = 7  # FastRNN / FastGRNN / ReLU RNN h is Q(e).(7-e), e = state_exp in 0..7
Q15_MAX = 32767  # trainable scalars (alpha, beta, zeta, nu) are Q0.15 in 0..Q15_MAX
I32_LIMIT = 2**31  # every int32 sum must stay below this in magnitude

_I64 = np.int64


def _i64(v: np.ndarray | int) -> np.ndarray:
    return np.asarray(v).astype(_I64, copy=False)


def absmax(v: np.ndarray) -> int:
    """Largest |v| of an integer vector (0 when empty)."""
    return int(np.max(np.abs(_i64(v)), initial=0))


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


def _range_after(f: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact range of F @ V for columns of V whose element r lies anywhere in [lo[r], hi[r]], independently per
    row of V: output (p, r) flattened row-major, as the mode-product chain orders it; int64."""
    f = _i64(f)
    pos = np.sum(np.maximum(f, 0), axis=1)[:, None]
    neg = np.sum(np.minimum(f, 0), axis=1)[:, None]
    return (pos * lo[None, :] + neg * hi[None, :]).reshape(-1), (pos * hi[None, :] + neg * lo[None, :]).reshape(-1)


def matrix_acc_range(m: KPMatrixQ, t_bits: int = 16) -> tuple[np.ndarray, np.ndarray]:
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


def matrix_acc_bound(m: KPMatrixQ, t_bits: int = 16) -> int:
    """Largest |y| kp_matrix_s8 can produce for any int8 input, exact (attained by some input; before the int32
    clamp, which matrix_limits rules out). For two factors at most kp_acc_bound, which assumes |x| <= 128 on
    both sides."""
    lo, hi = matrix_acc_range(m, t_bits)
    return max(int(np.max(hi, initial=0)), int(-np.min(lo, initial=0)))


def matrix_limits(m: KPMatrixQ) -> list[str]:
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
            if raw >= I32_LIMIT:
                problems.append(f"the top rows' sums can reach {raw}, outside int32")
            elif m.top_shift > 0 and raw << m.top_shift >= I32_LIMIT:
                problems.append(f"the top rows' sums can reach {raw}, times 2**{m.top_shift} outside int32")
    return problems


def kernel_limits(layer: AnyLayerQ) -> list[str]:
    """What keeps an integer layer (any registered cell, or a bidirectional pair) inside the C kernels' int32
    arithmetic; each violated rule as a sentence (empty: fits).

    1. Wx and Wh pass matrix_limits (the mat-vec's own int32 rules).
    2. Each gate requantizer has mult in 1..2**31-1 and shift in 1..32, and the worst-case accumulator
       (matrix_acc_bound) satisfies |acc| * 2**(32-shift) < 2**31, so acc can be scaled to one 32-bit
       multiply operand.
    3. The cell's trainable scalars lie in 0..32767 (Q0.15) and its state_exp, if it has one, in 0..7.
    4. The cell's own rule (kpgen.cells: Cell.gate_sums): every gate sum, bias plus the worst requantized
       products of Wx and Wh, fits int32.
    Under these rules every intermediate of the C kernels equals the int64 one of the golden model.
    """
    from kpgen import cells

    if isinstance(layer, BiLayerQ):  # bidirectional: both directions
        return [f"{d} {p}" for d, s in (("forward", layer.fwd), ("backward", layer.bwd)) for p in kernel_limits(s)]
    cell = cells.of(layer)
    problems = []
    worst = []  # worst |requantize(acc)| of Wx, Wh
    for name, m, rq in (("Wx", layer.wx, layer.rq_x), ("Wh", layer.wh, layer.rq_h)):
        mp = matrix_limits(m)
        if mp:
            problems.append(f"{name}: {mp[0]}")
            continue
        if not (1 <= rq.mult < I32_LIMIT and 1 <= rq.shift <= GATE_SHIFT_MAX):
            problems.append(f"{name}: requantizer {rq.mult}/2**{rq.shift} outside mult 1..2**31-1, shift 1..32")
            continue
        bound = matrix_acc_bound(m)
        if bound << (GATE_SHIFT_MAX - rq.shift) >= I32_LIMIT:
            problems.append(f"{name}: accumulator bound {bound} times 2**{GATE_SHIFT_MAX - rq.shift} leaves int32")
            continue
        worst.append(int(rsr(_I64(bound) * _I64(rq.mult), rq.shift)))
    for name in cell.scalars:
        v = getattr(layer, name)
        if not 0 <= int(v) <= Q15_MAX:
            problems.append(f"{name} = {v} outside 0..{Q15_MAX} (Q0.15)")
    e = getattr(layer, "state_exp", None)
    if e is not None and not 0 <= int(e) <= MAX_STATE_EXP:
        problems.append(f"state_exp = {e} outside 0..{MAX_STATE_EXP}")
    if problems:
        return problems
    sums = cell.gate_sums(layer, worst[0], worst[1])
    return [f"{what} can reach {v}, outside int32" for what, v in sums if v >= I32_LIMIT] + cell.extra_limits(layer)


_CHECKED = "_kpgen_limits_checked"  # set on an integer layer object once kernel_limits found nothing


def mark_checked(layer: object) -> None:
    """Remember on this (frozen) layer object that it passed kernel_limits, so the emitter need not check it
    again: each check runs once per emit. A layer made any other way (dataclasses.replace, by hand) lacks the
    mark and is checked where it is used."""
    object.__setattr__(layer, _CHECKED, True)


def is_checked(layer: object) -> bool:
    """True when this very layer object passed kernel_limits in the quantizer (mark_checked)."""
    return getattr(layer, _CHECKED, False) is True

