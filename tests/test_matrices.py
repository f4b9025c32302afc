"""Every KP matrix kind (two or more factors, dense, hybrid KP top rows): golden.kp_matrix_s8 against exact
references, the quantizer's shifts and scales, the exact accumulator bound, the C kernel (portable and DSP
paths) and the C that templates/kp_matrix.j2 renders, all bit for bit."""

from __future__ import annotations

import ctypes
import dataclasses
import math
import shutil
import subprocess

import numpy as np
import pytest
from runtime_ctypes import CFLAGS, HOST_ACLE_H, MATVEC_RUNTIME, P8, P32, POISON, RUNTIME_DIR, Runtime

from kpgen import KpgenError
from kpgen.codegen import layout
from kpgen.ir import KPMatrixF, KPMatrixQ, hkp_row_order
from kpgen.quant import limits, quantize
from kpgen.reference import golden
from kpgen.target.boards import template_env

I32 = 2**31


# ----------------------------------------------------------------------------------------------- helpers


def make_q(factors, shifts, top=None, top_shift=0) -> KPMatrixQ:
    """A KPMatrixQ from int8 factors and shifts (scales 1: only the integers matter here)."""
    fs = [np.asarray(f, np.int8) for f in factors]
    return KPMatrixQ(a=fs[0], b=fs[1], t_shift=int(shifts[0]), a_scale=1.0, b_scale=1.0, rest=tuple(fs[2:]),
                     rest_shifts=tuple(int(s) for s in shifts[1:]), rest_scales=(1.0,) * (len(fs) - 2),
                     top=None if top is None else np.asarray(top, np.int8), top_shift=int(top_shift))  # fmt: skip


def random_q(rng: np.random.Generator, k: int, dims=(1, 6), top_rows: int = 0, shift_mode: str = "spec",
             lo: int = -127) -> KPMatrixQ:  # fmt: skip
    """Random int8 factors (k of them, each dimension in dims), shifts as the quantizer picks them ('spec') or
    random ('wild', may saturate), and top_rows HKP rows with a random top_shift in -12..12."""
    fs = [rng.integers(lo, 128, (int(rng.integers(*dims, endpoint=True)), int(rng.integers(*dims, endpoint=True))))
          .astype(np.int8) for _ in range(k)]  # fmt: skip
    shifts = quantize.factor_shifts(fs) if shift_mode == "spec" else [int(rng.integers(0, 14)) for _ in range(k - 1)]
    n = math.prod(f.shape[1] for f in fs)
    top = rng.integers(lo, 128, (top_rows, n)).astype(np.int8) if top_rows else None
    return make_q(fs, shifts, top, int(rng.integers(-12, 13)) if top_rows else 0)


def py_sat16(v: int) -> int:
    return max(-32768, min(32767, v))


def py_rsr(v: int, s: int) -> int:
    return v if s == 0 else (v + (1 << (s - 1))) >> s


def py_kron_apply(factors, shifts, x: list[int]) -> list[int]:
    """The IR docstring's definition, recursively on Python ints: y = vec(A T), T[i] = sat16(rsr(M(X_i), s0))
    with M the matrix of the remaining factors applied the same way to the i-th of n1 equal parts of x."""
    f = factors[0]
    if len(factors) == 1:
        return [sum(int(f[q, j]) * x[j] for j in range(f.shape[1])) for q in range(f.shape[0])]
    n1 = f.shape[1]
    part = len(x) // n1
    t = [[py_sat16(py_rsr(v, shifts[0])) for v in py_kron_apply(factors[1:], shifts[1:], x[i * part:(i + 1) * part])]
         for i in range(n1)]  # fmt: skip
    return [sum(int(f[p, i]) * t[i][r] for i in range(n1)) for p in range(f.shape[0]) for r in range(len(t[0]))]


def py_matrix(m: KPMatrixQ, x: list[int]) -> list[int]:
    """kp_matrix_s8 on Python ints: HKP top rows (exact sums, scaled by 2**top_shift), then the Kronecker part."""
    out = []
    if m.top is not None:
        for row in m.top:
            acc = sum(int(w) * v for w, v in zip(row, x, strict=True))
            out.append(acc << m.top_shift if m.top_shift >= 0 else py_rsr(acc, -m.top_shift))
    return out + py_kron_apply(m.factors, m.shifts, x)


def argext(factors, shifts, row: int, want_max: bool) -> list[int]:
    """An int8 input that drives output `row` of the Kronecker part to its largest (or smallest) value: the
    constructive side of limits.matrix_acc_range (rsr and sat16 are monotone, the parts of x independent)."""
    f = factors[0]
    if len(factors) == 1:
        return [(127 if want_max else -128) if w > 0 else (-128 if want_max else 127) for w in f[row]]
    inner_rows = math.prod(g.shape[0] for g in factors[1:])
    p, r = divmod(row, inner_rows)
    x = []
    for i in range(f.shape[1]):
        x += argext(factors[1:], shifts[1:], r, (f[p, i] > 0) == want_max)
    return x


# -------------------------------------------------------------------------------------------------- golden


def test_two_factors_equal_kp_matvec() -> None:
    rng = np.random.default_rng(1)
    for k in range(60):
        m = random_q(rng, 2, (1, 9), shift_mode="spec" if k % 2 else "wild", lo=-128)
        x = rng.integers(-128, 128, (3, 2, m.shape[1])).astype(np.int8)
        want = golden.kp_matvec_s8(m.a, m.b, x, m.t_shift)
        got = golden.kp_matrix_s8(m, x)
        assert got.dtype == np.int32 and got.shape == (3, 2, m.shape[0]) and np.array_equal(got, want)
        assert limits.matrix_acc_bound(m) <= limits.kp_acc_bound(m.a, m.b, m.t_shift)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("top_rows", [0, 3])
def test_unshifted_is_the_dense_product(k: int, top_rows: int) -> None:
    """With every shift 0 and no saturation (small values), y = [top; A (x) B (x) ...] x exactly."""
    rng = np.random.default_rng(10 * k + top_rows)
    for _ in range(10):
        fs = [rng.integers(-3, 4, (int(rng.integers(1, 5)), int(rng.integers(1, 5)))).astype(np.int8) for _ in range(k)]
        n = math.prod(f.shape[1] for f in fs)
        top = rng.integers(-127, 128, (top_rows, n)).astype(np.int8) if top_rows else None
        m = make_q(fs, [0] * (k - 1), top, 0)
        x = rng.integers(-128, 128, (5, n)).astype(np.int8)
        dense = KPMatrixF(a=fs[0].astype(np.int64), b=fs[1].astype(np.int64),
                          rest=tuple(f.astype(np.int64) for f in fs[2:]),
                          top=None if top is None else top.astype(np.int64)).dense()
        assert np.array_equal(golden.kp_matrix_s8(m, x), x.astype(np.int64) @ dense.T)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_shifted_against_loop_reference(k: int) -> None:
    """Random shifts (saturating ones included), HKP top rows with either sign of top_shift, batch shapes."""
    rng = np.random.default_rng(20 + k)
    for it in range(25):
        m = random_q(rng, k, (1, 4), top_rows=(0, 1, 3)[it % 3], shift_mode="wild" if it % 2 else "spec", lo=-128)
        x = rng.integers(-128, 128, (2, 3, m.shape[1])).astype(np.int8)
        x[0, 0] = np.where(rng.random(m.shape[1]) < 0.5, -128, 127)  # extremes
        got = golden.kp_matrix_s8(m, x)
        assert got.shape == (2, 3, m.shape[0])
        for idx in np.ndindex(2, 3):
            assert got[idx].tolist() == py_matrix(m, x[idx].tolist()), (it, idx)
        assert golden.kp_matrix_s8(m, x[1, 2]).tolist() == got[1, 2].tolist()  # a single vector too


def test_hkp_top_shift_signs() -> None:
    """top_shift > 0 multiplies exactly, < 0 rounds half up (ties of both signs), 0 leaves the sums."""
    fs = [np.ones((1, 1), np.int8), np.ones((1, 2), np.int8)]
    top = np.array([[1, 0], [0, 1], [1, 1]], np.int8)
    x = np.array([3, -3], np.int8)
    assert golden.kp_matrix_s8(make_q(fs, [0], top, 2), x).tolist() == [12, -12, 0, 0]
    assert golden.kp_matrix_s8(make_q(fs, [0], top, -1), x).tolist() == [2, -1, 0, 0]  # 1.5 -> 2, -1.5 -> -1
    assert golden.kp_matrix_s8(make_q(fs, [0], top, 0), x).tolist() == [3, -3, 0, 0]


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("top_rows", [0, 2])
def test_acc_bound_is_exact(k: int, top_rows: int) -> None:
    """limits.matrix_acc_range: every row's smallest and largest value is reached (by a constructed input),
    and no random or extreme input leaves it; matrix_acc_bound is the largest magnitude."""
    rng = np.random.default_rng(40 + 3 * k + top_rows)
    for it in range(8):
        m = random_q(rng, k, (1, 4), top_rows=top_rows, shift_mode="wild" if it % 2 else "spec", lo=-128)
        lo, hi = limits.matrix_acc_range(m)
        xs = []
        for row in range(m.shape[0]):
            for want_max in (False, True):
                if row < m.top_rows:
                    x = [(127 if want_max else -128) if w > 0 else (-128 if want_max else 127) for w in m.top[row]]
                else:
                    x = argext(m.factors, m.shifts, row - m.top_rows, want_max)
                y = golden.kp_matrix_s8(m, np.array(x, np.int8))
                assert y[row] == (hi[row] if want_max else lo[row]), (it, row, want_max)
                xs.append(x)
        xs = np.array(xs + rng.integers(-128, 128, (200, m.shape[1])).tolist()
                      + rng.choice([-128, 127], (200, m.shape[1])).tolist(), np.int8)  # fmt: skip
        y = golden.kp_matrix_s8(m, xs).astype(np.int64)
        assert np.all(y >= lo) and np.all(y <= hi)
        assert limits.matrix_acc_bound(m) == max(int(np.abs(y).max()), 0)


def test_matrix_limits() -> None:
    ok = make_q([np.ones((2, 511), np.int8), np.ones((2, 3), np.int8), np.ones((1, 65535), np.int8)], [0, 0])
    assert limits.matrix_limits(ok) == []
    wide = make_q([np.ones((2, 3), np.int8), np.ones((2, 512), np.int8), np.ones((1, 2), np.int8)], [0, 0])
    assert any("factor 2" in p and "511" in p for p in limits.matrix_limits(wide))
    many = make_q([np.ones((1, 1), np.int8)] * 9, [0] * 8)
    assert any("9 Kronecker factors" in p for p in limits.matrix_limits(many))
    assert any("shift 32" in p for p in limits.matrix_limits(make_q([np.ones((1, 1), np.int8)] * 2, [32])))
    fs = [np.ones((1, 1), np.int8), np.full((1, 2), 127, np.int8)]
    top = np.full((1, 2), 127, np.int8)
    assert limits.matrix_limits(make_q(fs, [0], top, 16)) == []  # 2 * 127 * 128 * 2**16 < 2**31
    assert any("2**17" in p for p in limits.matrix_limits(make_q(fs, [0], top, 17)))
    assert any("top_shift -32" in p for p in limits.matrix_limits(make_q(fs, [0], top, -32)))


# --------------------------------------------------------------------------------------------- quantizer


@pytest.mark.parametrize("k,top_rows", [(2, 0), (3, 0), (4, 0), (2, 3), (3, 2), (2, 5)])
def test_quantize_kp_round_trip(k: int, top_rows: int) -> None:
    """Dequantized factors and top rows are within half a step of the float ones; top_scale is the Kronecker
    unit times 2**top_shift with the smallest such shift; the result passes matrix_limits."""
    rng = np.random.default_rng(60 + k + top_rows)
    for _ in range(5):
        fs = [rng.normal(0, 0.5, (int(rng.integers(1, 5)), int(rng.integers(1, 5)))) for _ in range(k)]
        fs[0] = fs[0] + 0.1  # never all zero
        n = math.prod(f.shape[1] for f in fs)
        top = rng.normal(0, 0.05, (top_rows, n)) if top_rows else None
        mf = KPMatrixF(a=fs[0], b=fs[1], rest=tuple(fs[2:]), top=top)
        if k == 2 and fs[1].shape == (1, 1):
            continue  # dense folding: test_quant covers it
        q = quantize.quantize_kp(mf, "layer 0 Wx")
        assert len(q.factors) == k and limits.matrix_limits(q) == []
        for fq, ff, s in zip(q.factors, fs, q.scales, strict=True):
            assert np.max(np.abs(fq)) == 127 and np.allclose(fq * s, ff, atol=s / 2 + 1e-12)
        assert q.unit == pytest.approx(math.prod(q.scales) * 2.0 ** sum(q.shifts))
        if top_rows:
            assert q.top_scale == pytest.approx(q.unit * 2.0**q.top_shift, rel=1e-12)
            amax = np.max(np.abs(top))
            assert amax / q.top_scale <= 127 + 1e-9 and amax / (q.top_scale / 2) > 127
            assert np.allclose(q.top * q.top_scale, top, atol=q.top_scale / 2 + 1e-12)
        # the real matrix the integers stand for: W ~= unit * [top_q * 2**top_shift; kron(F_q)] (with T's rounding)
        x = rng.integers(-127, 128, n).astype(np.int8)
        y_real = golden.kp_matrix_s8(q, x) * q.unit * 1.0
        y_float = mf.dense() @ (x.astype(np.float64))
        assert np.max(np.abs(y_real - y_float)) < 0.05 * np.max(np.abs(y_float)) + 1e-9


def _sub(m: KPMatrixQ, j: int) -> KPMatrixQ:
    """The Kronecker matrix of factors j.. (0-based, j <= k-2) with its shifts."""
    fs, sh = m.factors[j:], m.shifts[j:]
    return make_q(fs, sh) if len(fs) >= 2 else None


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_quantizer_shifts_never_saturate(k: int) -> None:
    """Every int16 intermediate stays inside int16 for every int8 input: the exact range of the products of
    factors j+1.. (limits.matrix_acc_range of that sub-chain, or of the last factor alone), rounded by shift j,
    fits; and worst-case inputs give the same output with 16-bit and 32-bit intermediates."""
    rng = np.random.default_rng(80 + k)
    for it in range(6):
        mode = ("normal", "ones", "spiky")[it % 3]
        fs = []
        for _ in range(k):
            shape = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
            f = rng.normal(0, 1, shape) if mode != "ones" else np.ones(shape)
            if mode == "spiky":
                f = np.sign(f) * (np.abs(f) > 0.3)
            f.flat[0] = 1.0
            fs.append(f)
        q = quantize.quantize_kp(KPMatrixF(a=fs[0], b=fs[1], rest=tuple(fs[2:])), "w")
        for j in range(k - 1):  # the intermediate factor j multiplies: products of factors j+1.., rounded by shifts[j]
            if j + 1 == k - 1:
                lo, hi = limits._range_after(q.factors[-1], np.array([-128]), np.array([127]))
            else:
                lo, hi = limits.matrix_acc_range(_sub(q, j + 1), t_bits=32)
            assert golden.rsr(hi, q.shifts[j]).max() <= 32767 and golden.rsr(lo, q.shifts[j]).min() >= -32768
        n = q.shape[1]
        xs = [argext(q.factors, q.shifts, r, w) for r in range(q.shape[0]) for w in (False, True)]
        xs = np.array(xs + rng.choice([-128, 127], (100, n)).tolist(), np.int8)
        assert np.array_equal(golden.kp_matrix_s8(q, xs), golden.kp_matrix_s8(q, xs, t_bits=32))


def test_factor_shifts_two_factors_is_t_shift_for() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        a, b = (rng.integers(-127, 128, tuple(rng.integers(1, 20, 2))).astype(np.int8) for _ in range(2))
        assert quantize.factor_shifts([a, b]) == (quantize.t_shift_for(b),)


def test_quantize_kp_refusals() -> None:
    one = np.ones((1, 1))
    with pytest.raises(KpgenError, match=r"9 Kronecker factors.*choose fewer factors"):
        quantize.quantize_kp(KPMatrixF(a=one, b=one, rest=(one,) * 7), "layer 0 Wx")
    with pytest.raises(KpgenError, match="factor B has 512 columns"):
        quantize.quantize_kp(KPMatrixF(a=one, b=np.ones((1, 512)), rest=(one,)), "layer 0 Wx")
    with pytest.raises(KpgenError, match="top rows"):
        quantize.quantize_kp(KPMatrixF(a=one, b=np.ones((1, 2)), top=np.ones((2, 3))), "layer 0 Wx")
    with pytest.raises(KpgenError, match=r"layer 0 Wh: the HKP top rows .* steps"):
        quantize.quantize_kp(KPMatrixF(a=one * 1e-9, b=np.ones((1, 2)) * 1e-9, top=np.ones((2, 2)) * 1e9), "layer 0 Wh")
    with pytest.raises(KpgenError, match="the HKP top rows hold a non-finite weight"):
        quantize.quantize_kp(KPMatrixF(a=one, b=np.ones((1, 2)), top=np.array([[1.0, np.inf]])), "layer 0 Wx")
    with pytest.raises(KpgenError, match=r"times 2\*\*.* outside int32"):  # in range for the shift, not the sum
        quantize.quantize_kp(KPMatrixF(a=one * 1e-3, b=np.ones((1, 400)) * 1e-3, top=np.ones((1, 400)) * 1e3), "w")
    for msg in ("layer 0 Wx: factor A has 512 columns, more than 511; the int32 accumulator could overflow: "
                "choose factor shapes with fewer columns in A",):  # fmt: skip
        with pytest.raises(KpgenError) as e:
            quantize.quantize_kp(KPMatrixF(a=np.ones((1, 512)), b=one), "layer 0 Wx")
        assert str(e.value) == msg


def test_dense_fold_with_top_rows() -> None:
    """B 1x1 still folds with HKP top rows: the Kronecker unit is A's scale alone."""
    rng = np.random.default_rng(7)
    a, top = rng.normal(0, 1, (6, 5)), rng.normal(0, 0.01, (2, 5))
    q = quantize.quantize_kp(KPMatrixF(a=a, b=np.array([[2.0]]), top=top), "w")
    assert q.b.tolist() == [[1]] and q.t_shift == 0 and q.unit == q.a_scale and q.top_shift < 0
    x = rng.integers(-128, 128, 5).astype(np.int8)
    assert np.array_equal(golden.kp_matrix_s8(q, x)[2:], q.a.astype(np.int64) @ x)


# ------------------------------------------------------------------------------------------------- layout


def test_scratch_words() -> None:
    rng = np.random.default_rng(8)
    for _ in range(30):
        m = random_q(rng, 2, (1, 9))
        assert layout.matrix_scratch_words(m) == layout.kron_scratch_words(*m.a.shape, *m.b.shape)
    m = make_q([np.ones((3, 5), np.int8), np.ones((2, 6), np.int8), np.ones((4, 3), np.int8)], [0, 0])
    # T^T of level 0: 8 rows of 8 int16 (32 words); result: 8 words; work: kron(2, 6, 4, 3) = (4*8 + 8)/2 = 20
    assert layout.matrix_scratch_words(m) == 32 + 8 + 20
    mt = make_q([np.ones((1, 1), np.int8), np.ones((1, 2), np.int8)], [0], np.ones((1, 2), np.int8), 0)
    assert layout.matrix_scratch_words(mt) == max(layout.kron_scratch_words(1, 1, 1, 2), 1)


# ------------------------------------------------------------------------------------------------------ C


@pytest.fixture(scope="module", params=["portable", "dsp"])
def rt(request: pytest.FixtureRequest) -> Runtime:
    runtime = Runtime(request.getfixturevalue("runtime_lib" if request.param == "portable" else "runtime_lib_dsp"))
    assert runtime.dsp_path == (request.param == "dsp")
    return runtime


def _c_cases(rng: np.random.Generator):
    """(m, x) over every kind: 2..5 factors of dimension 1..6, dense, HKP on each, spec and wild shifts."""
    for it in range(160):
        k = (2, 3, 4, 5)[it % 4]
        top_rows = (0, 0, 1, 4, 5)[(it // 4) % 5]
        dims = (1, 6) if k <= 3 else (1, 4)
        m = random_q(rng, k, dims, top_rows=top_rows, shift_mode="wild" if it % 3 == 0 else "spec", lo=-128)
        if it % 16 == 5:  # a dense Kronecker part (B 1x1) with top rows
            m = make_q([m.a, np.ones((1, 1), np.int8)], [0], None if m.top is None else m.top[:, : m.a.shape[1]],
                       m.top_shift)  # fmt: skip
        for xmode in range(2):
            n = m.shape[1]
            x = rng.integers(-128, 128, n) if xmode == 0 else rng.choice([-128, 127], n)
            yield m, x.astype(np.int8)


def test_c_matches_golden_every_kind(rt: Runtime) -> None:
    rng = np.random.default_rng(100)
    count = 0
    for m, x in _c_cases(rng):
        got = rt.matrix(m, x)
        assert np.array_equal(got, golden.kp_matrix_s8(m, x)), ([f.shape for f in m.factors], m.shifts, m.top_rows)
        count += 1
    assert count == 320


def test_c_buffer_size_is_layout_scratch_words(rt: Runtime) -> None:
    """kp_matvec_s8_get_buffer_size and kpgen.codegen.layout.matrix_scratch_words agree on every kind of matrix,
    and kp_matvec_s8 runs in exactly that much scratch (rt.matrix poisons a guard word after it)."""
    rng = np.random.default_rng(101)
    sizes = set()
    for m, x in _c_cases(rng):
        words = rt.buffer_size(m)
        assert words == layout.matrix_scratch_words(m), ([f.shape for f in m.factors], m.top_rows)
        assert np.array_equal(rt.matrix(m, x, scratch_words=words), golden.kp_matrix_s8(m, x))
        sizes.add(words)
    eight = make_q([np.ones((1, 2), np.int8)] * 8, [0] * 7)  # the most factors the runtime chains
    assert rt.buffer_size(eight) == layout.matrix_scratch_words(eight)
    assert len(sizes) > 20  # the cases cover many different layouts


@pytest.mark.parametrize("shape", [((16, 2), (4, 7), (8, 2)), ((2, 4), (2, 4), (2, 4), (2, 4)),
                                   ((8, 8), (8, 2), (1, 7)), ((1, 1), (5, 1), (1, 9)), ((64, 28), (2, 1), (1, 1))])
def test_c_model_like_shapes(rt: Runtime, shape) -> None:
    """Larger shapes (a 3-factor 128 x 28 LSTM input matrix, 8 x 8 columns in A, dimension-1 factors), extreme
    weights and inputs, the quantizer's shifts, with and without 16 top rows."""
    rng = np.random.default_rng(sum(a * b for a, b in shape))
    fs = [rng.choice(np.array([-127, 127], np.int8), s) for s in shape]
    n = math.prod(s[1] for s in shape)
    for top in (None, rng.integers(-127, 128, (16, n)).astype(np.int8)):
        m = make_q(fs, quantize.factor_shifts(fs), top, -3)
        for x in (np.full(n, -128, np.int8), rng.choice(np.array([-128, 127], np.int8), n),
                  rng.integers(-128, 128, n).astype(np.int8)):  # fmt: skip
            assert np.array_equal(rt.matrix(m, x), golden.kp_matrix_s8(m, x))


def test_hkp_row_order() -> None:
    """W = S[order] with S the stacked [top; Kronecker] rows: G blocks, each its top rows then its Kronecker rows."""
    assert hkp_row_order(12, 6, 3).tolist() == [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]
    assert hkp_row_order(8, 4, 4).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert hkp_row_order(7, 3).tolist() == list(range(7))
    assert hkp_row_order(6, 0, 3).tolist() == list(range(6))
    for rows, top, groups in ((12, 4, 3), (10, 4, 4), (8, 4, 0)):
        with pytest.raises(ValueError, match="cannot be spread evenly"):
            hkp_row_order(rows, top, groups)


def _spread_cases(rng: np.random.Generator):
    """(m, x): HKP matrices whose top rows are spread over 2..4 row blocks: 2..4 factors, a dense Kronecker part
    (B 1x1) among them, spec and wild shifts, random and extreme inputs."""
    for it in range(48):
        groups, k = (2, 3, 4)[it % 3], (2, 3, 4)[(it // 3) % 3]
        fs = [rng.integers(-128, 128, (int(rng.integers(1, 5)), int(rng.integers(1, 5)))).astype(np.int8)
              for _ in range(k)]  # fmt: skip
        fs[0] = rng.integers(-128, 128, (groups * int(rng.integers(1, 4)), fs[0].shape[1])).astype(np.int8)
        if it % 8 == 7:
            fs = [fs[0], np.ones((1, 1), np.int8)]
        n = math.prod(f.shape[1] for f in fs)
        top = rng.integers(-128, 128, (groups * int(rng.integers(1, 4)), n)).astype(np.int8)
        shifts = quantize.factor_shifts(fs) if it % 2 else [int(rng.integers(0, 14)) for _ in fs[1:]]
        m = dataclasses.replace(make_q(fs, shifts, top, int(rng.integers(-12, 13))), top_groups=groups)
        for x in (rng.integers(-128, 128, n), rng.choice([-128, 127], n)):
            yield m, x.astype(np.int8)


def test_spread_hkp_golden_is_the_stacked_rows_reordered() -> None:
    rng = np.random.default_rng(21)
    for m, x in _spread_cases(rng):
        stacked = golden.kp_matrix_s8(dataclasses.replace(m, top_groups=1), x)
        got = golden.kp_matrix_s8(m, x)
        assert np.array_equal(got, stacked[hkp_row_order(m.shape[0], m.top_rows, m.top_groups)])
        assert np.array_equal(golden.kp_matrix_s8(m, np.stack([x, x])), np.stack([got, got]))
    # the float IR: dense() and the float model's kp_apply put the rows in the same place
    from kpgen.reference import floatmodel
    a, b, top = rng.normal(size=(6, 2)), rng.normal(size=(2, 3)), rng.normal(size=(6, 6))
    mf = KPMatrixF(a, b, (), top, 3)
    xs = rng.normal(size=(4, 6))
    assert np.allclose(xs @ mf.dense().T, floatmodel.kp_apply(mf, xs))
    assert np.allclose(mf.dense()[:8], np.vstack([top[:2], np.kron(a, b)[:4], top[2:4]]))  # blocks of 6 rows


def test_c_spread_hkp_matches_golden(rt: Runtime) -> None:
    """kp_hkp_spread_s32 after the top rows and the Kronecker part: the golden rows on every path, in exactly
    the scratch kp_matvec_s8_get_buffer_size asks for (= layout.matrix_scratch_words, at least the top rows)."""
    rng = np.random.default_rng(22)
    count = 0
    for m, x in _spread_cases(rng):
        words = rt.buffer_size(m)
        assert words == layout.matrix_scratch_words(m) >= m.top_rows
        assert np.array_equal(rt.matrix(m, x, scratch_words=words), golden.kp_matrix_s8(m, x))
        count += 1
    assert count == 96


def test_c_top_shift_extremes(rt: Runtime) -> None:
    """top_shift at -31 and at the largest left shift matrix_limits allows for the rows' sums."""
    rng = np.random.default_rng(11)
    fs = [rng.integers(-127, 128, (3, 2)).astype(np.int8), rng.integers(-127, 128, (2, 3)).astype(np.int8)]
    top = np.full((2, 6), 127, np.int8)
    top[1] = -127
    for ts in (-31, -30, -1, 0, 1, 14):
        m = make_q(fs, quantize.factor_shifts(fs), top, ts)
        assert limits.matrix_limits(m) == []
        for x in (np.full(6, 127, np.int8), np.full(6, -128, np.int8), rng.integers(-128, 128, 6).astype(np.int8)):
            assert np.array_equal(rt.matrix(m, x), golden.kp_matrix_s8(m, x)), ts


# ---------------------------------------------------------------------------------------- rendered macros

RENDER_SRC = """#include "kpgen_runtime.h"
#include "kp_matvec_internal.h"
{% import 'kp_matrix.j2' as km %}
{% for p, ctx in mats %}
{{ km.arrays(p, ctx) }}
typedef struct { int32_t tag; kp_kron_s8 w; } {{ p }}_holder_t; /* held by value, like the cells' params */
static const {{ p }}_holder_t {{ p }}_holder = { 7, {{ km.init(p, ctx) }} };
{% endfor %}

void kpr_run(int32_t i, const int8_t *x, int32_t *scratch, int32_t *y);
void kpr_run(int32_t i, const int8_t *x, int32_t *scratch, int32_t *y)
{
    switch (i) {
{% for p, ctx in mats %}
    case {{ loop.index0 }}:
        kp_matvec_s8(&{{ p }}_holder.w, x, scratch, y);
        break;
{% endfor %}
    default:
        break;
    }
}

void kp_matvec_fixed_s8(const kp_kron_s8 *w, const int8_t *x, int32_t *scratch, int32_t *y)
{
    switch (w->fixed) {
{% for p, ctx in mats if ctx.fixed_id %}
    case {{ ctx.fixed_id }}:
        kp_mat_{{ p }}(x, scratch, y);
        break;
{% endfor %}
    default:
        break;
    }
}
"""


def _render_mats(rng: np.random.Generator) -> list[KPMatrixQ]:
    mats = [
        make_q([rng.integers(-127, 128, (8, 3)), np.ones((1, 1))], [0]),  # dense
        make_q([rng.integers(-127, 128, (4, 2)), rng.integers(-127, 128, (3, 5))], [9]),  # plain KP
        make_q([rng.integers(-127, 128, (2, 3)), rng.integers(-127, 128, (3, 2)), rng.integers(-127, 128, (2, 2))],
               [3, 8]),
        make_q([rng.integers(-127, 128, (2, 2))] * 4, [5, 6, 7]),
        make_q([rng.integers(-127, 128, (4, 2)), rng.integers(-127, 128, (3, 3))], [9],
               rng.integers(-127, 128, (5, 6)), -4),
        make_q([rng.integers(-127, 128, (2, 3)), rng.integers(-127, 128, (3, 2)), rng.integers(-127, 128, (2, 2))],
               [3, 8], rng.integers(-127, 128, (3, 12)), 2),
        make_q([rng.integers(-127, 128, (6, 4)), np.ones((1, 1))], [0],  # dense + top
               rng.integers(-127, 128, (2, 4)), 0),
        # shapes for the specialised kernels: 1-row and 1-column factors, 4-column and 8+4-column tails, odd rows
        make_q([rng.integers(-127, 128, (5, 1)), rng.integers(-127, 128, (3, 7))], [7]),
        make_q([rng.integers(-127, 128, (1, 9)), rng.integers(-127, 128, (6, 1))], [2]),
        make_q([rng.integers(-127, 128, (7, 5)), rng.integers(-127, 128, (1, 3))], [4]),
        make_q([rng.integers(-127, 128, (3, 12)), rng.integers(-127, 128, (9, 2))], [6]),
        make_q([rng.integers(-127, 128, (2, 16)), rng.integers(-127, 128, (5, 12))], [10]),
        make_q([rng.integers(-127, 128, (9, 8)), rng.integers(-127, 128, (1, 1))], [3]),  # dense, scaled B
        make_q([rng.integers(-127, 128, (13, 20)), np.ones((1, 1))], [0]),  # dense, 16 + 4 columns
    ]  # fmt: skip
    return mats


def render(mats: list[KPMatrixQ], biased: bool = False, b16: bool = False) -> str:
    ctxs = [(f"m{i}_w", layout.matrix_context(m, biased, b16)) for i, m in enumerate(mats)]
    fixed = [ctx for _, ctx in ctxs if ctx["fixed"]]  # numbered as kpgen.codegen.emit.number_fixed_kernels does
    for k, ctx in enumerate(fixed):
        ctx["fixed_id"] = k + 1
    return template_env().from_string(RENDER_SRC).render(mats=ctxs)


def test_rendered_macros_text() -> None:
    rng = np.random.default_rng(12)
    mats = _render_mats(rng)
    src = render(mats)
    assert src == render(mats)  # deterministic
    env = template_env()
    km = env.get_template("kp_matrix.j2").module
    plain = layout.matrix_context(mats[1])
    assert str(km.init("p", plain)) == "{ p_a, p_b, 4, 2, 3, 5, 9, 0, 0, 0, 0, 1 }"
    deep = layout.matrix_context(mats[3])
    assert str(km.init("q", deep)) == "{ q_a, 0, 2, 2, 8, 8, 5, &q_k1, 0, 0, 0, 1 }"
    arrays = str(km.arrays("q", deep))
    assert "static const kp_kron_s8 q_k2 = { q_c, q_d, 2, 2, 2, 2, 7, 0, 0, 0, 0, 1 };" in arrays
    assert arrays.index("q_k2 =") < arrays.index("q_k1 =")  # defined before it is referenced
    hkp = layout.matrix_context(mats[4])
    assert str(km.init("h", hkp)) == "{ h_a, h_b, 4, 2, 3, 3, 9, 0, &h_top_k, -4, 0, 1 }"
    assert "rounded right by 4" in str(km.arrays("h", hkp))
    spread = layout.matrix_context(dataclasses.replace(mats[4], top_groups=2))
    assert str(km.init("h", spread)).endswith("&h_top_k, -4, 0, 2 }")
    assert "then go to the start of each of 2 row blocks" in str(km.arrays("h", spread))
    assert "dense: 24 weights" in str(km.arrays("d", layout.matrix_context(mats[0])))
    for p in ("m0_w_a", "m2_w_c", "m3_w_d", "m4_w_top", "m5_w_k1", "m6_w_top_k"):
        assert f"{p}[" in src or f"{p} =" in src, p


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("path", ["portable", "dsp", "armv6m", "dsp-b16"])
def test_rendered_macros_compile_and_compute(tmp_path, path: str, fixed: bool) -> None:
    """The rendered C (strict flags, -Wmissing-field-initializers included) with the runtime, as a host library:
    every matrix computes what golden.kp_matrix_s8 computes, through the generic stages and (KP_FIXED_KERNELS)
    through the kernels specialised to each two-factor matrix's shapes; armv6m: the biased block layout of
    Armv6-M (KP_BIASED_BLOCKS); dsp-b16: the specialised kernels' B in int16 pairs (int8 without them)."""
    rng = np.random.default_rng(13)
    mats = _render_mats(rng)
    src = tmp_path / "mats.c"
    src.write_text(render(mats, biased=path == "armv6m", b16=path == "dsp-b16"))
    extra = []
    if path == "armv6m":
        extra = ["-DKP_BIASED_BLOCKS=1"]
    if path == "dsp-b16":
        assert src.read_text().count("_B16 1 ") == 4  # B in int16 (KP_FIXED_KERNELS): 8, 8, 4 and 8 + 4 columns
    if path in ("dsp", "dsp-b16"):
        (tmp_path / "acle").mkdir()
        (tmp_path / "acle" / "arm_acle.h").write_text(HOST_ACLE_H)
        extra = ["-D__ARM_FEATURE_DSP=1", f"-I{tmp_path / 'acle'}"]
    if fixed:
        extra.append("-DKP_FIXED_KERNELS")
        assert "kp_mat_m1_w(" in src.read_text() and "kp_mat_m7_w(" in src.read_text()
    lib = tmp_path / "libmats.so"
    cmd = ["cc", *CFLAGS, "-Wmissing-field-initializers", *extra, f"-I{RUNTIME_DIR}",
           *sorted(str(p) for p in RUNTIME_DIR.glob("*.c")), str(src), "-o", str(lib)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    c = ctypes.CDLL(str(lib))
    c.kpr_run.argtypes = [ctypes.c_int32, P8, P32, P32]
    c.kpr_run.restype = None
    for i, m in enumerate(mats):
        words = layout.matrix_scratch_words(m)
        for x in (rng.integers(-128, 128, m.shape[1]), rng.choice([-128, 127], m.shape[1])):
            x = np.ascontiguousarray(x, np.int8)
            tv = np.full(words + 1, POISON, np.int32)
            y = np.full(m.shape[0] + 1, POISON, np.int32)
            c.kpr_run(i, x.ctypes.data_as(P8), tv.ctypes.data_as(P32), y.ctypes.data_as(P32))
            assert tv[-1] == POISON and y[-1] == POISON
            assert np.array_equal(y[:-1], golden.kp_matrix_s8(m, x)), i


@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m55", "cortex-m0plus"])
def test_rendered_macros_build_for_cortex_m(tmp_path, cpu: str) -> None:
    """The rendered matrices and kp_matvec_s8 compile warning-free for the DSP, Helium and portable cores (with
    the specialised kernels, and B in int16 on the M4)."""
    gcc = shutil.which("arm-none-eabi-gcc")
    assert gcc is not None, "arm-none-eabi-gcc is needed (the firmware tests need it too)"
    src = tmp_path / "mats.c"
    src.write_text(render(_render_mats(np.random.default_rng(14)), biased=cpu == "cortex-m0plus",
                          b16=cpu == "cortex-m4"))  # fmt: skip
    flags = [f for f in CFLAGS if f not in ("-shared", "-fPIC")]
    abi = ["-mfloat-abi=hard"] if cpu == "cortex-m55" else []
    for f in (src, *(RUNTIME_DIR / name for name in MATVEC_RUNTIME)):
        res = subprocess.run([gcc, *flags, f"-mcpu={cpu}", "-mthumb", *abi, "-DKP_FIXED_KERNELS", f"-I{RUNTIME_DIR}",
                              "-c", str(f), "-o", str(tmp_path / (f.stem + ".o"))],
                             capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0, res.stderr
