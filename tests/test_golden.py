"""Unit and property tests of the numpy integer reference (kpgen/reference/golden.py) against plain Python integers."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from factories import random_layer, random_model, t_shift_for
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kpgen.cells import lstm as lstm_cell
from kpgen.cells.lstm import LSTMLayerQ
from kpgen.ir import KPMatrixQ
from kpgen.quant import limits
from kpgen.reference import golden

SIG = golden.make_table("sigmoid")
TANH = golden.make_table("tanh")
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1

# ------------------------------------------------------------------ pure-Python re-computation of the spec


def py_rsr(v: int, s: int) -> int:
    """Round half up, then floor (Python's >> floors)."""
    return v if s == 0 else (v + (1 << (s - 1))) >> s


def py_sat(v: int, bits: int) -> int:
    """Clamp to a signed width."""
    return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, v))


def py_requantize(acc: int, mult: int, shift: int) -> int:
    """Exact rational rounding: floor(acc * mult / 2**shift + 1/2), then sat32."""
    return py_sat(math.floor(Fraction(acc * mult, 1 << shift) + Fraction(1, 2)), 32)


def py_matvec(a: np.ndarray, b: np.ndarray, x: list[int], t_shift: int, t_bits: int = 16) -> list[int]:
    """The two loops of the spec, element by element."""
    m1, n1 = a.shape
    m2, n2 = b.shape
    t = [[py_sat(py_rsr(sum(x[i * n2 + j] * int(b[q, j]) for j in range(n2)), t_shift), t_bits) for q in range(m2)]
         for i in range(n1)]  # fmt: skip
    return [sum(int(a[p, i]) * t[i][q] for i in range(n1)) for p in range(m1) for q in range(m2)]


def py_interp(z: int, tab: np.ndarray) -> int:
    """Table look-up of one Q3.12 value: the entry of its run of 64 inputs."""
    return int(tab[(z + 32768) // 64])


def py_lstm_step(layer: LSTMLayerQ, x: list[int], h: list[int], c: list[int]) -> tuple[list[int], list[int]]:
    """One LSTM step on Python ints, following docs/quantization.md line by line."""
    hs, cf = layer.hidden_size, layer.cell_frac
    ax = py_matvec(layer.wx.a, layer.wx.b, x, layer.wx.t_shift)
    ah = py_matvec(layer.wh.a, layer.wh.b, h, layer.wh.t_shift)
    z = [
        py_sat(py_requantize(ax[r], layer.rq_x.mult, layer.rq_x.shift)
               + py_requantize(ah[r], layer.rq_h.mult, layer.rq_h.shift) + int(layer.bias[r]), 16)
        for r in range(4 * hs)
    ]  # fmt: skip
    h_new, c_new = [], []
    for r in range(hs):
        gi, gf = py_interp(z[r], SIG), py_interp(z[hs + r], SIG)
        gg, go = py_interp(z[2 * hs + r], TANH), py_interp(z[3 * hs + r], SIG)
        cn = py_sat(py_rsr(gf * c[r], 15) + py_rsr(gi * gg, 30 - cf), 16)
        c12 = py_rsr(cn, cf - 12) if cf >= 12 else py_sat(cn * (1 << (12 - cf)), 16)
        h_new.append(py_sat(py_rsr(go * py_interp(c12, TANH), 23), 8))
        c_new.append(cn)
    return h_new, c_new


# ------------------------------------------------------------------------------------- rsr, sat, requantize


def test_rsr_edges() -> None:
    assert golden.rsr(5, 0) == 5 and golden.rsr(-5, 0) == -5
    assert golden.rsr(1, 1) == 1  # +0.5 rounds up
    assert golden.rsr(-1, 1) == 0  # -0.5 rounds up (towards +inf)
    assert golden.rsr(-3, 1) == -1  # -1.5 -> -1
    assert golden.rsr(3, 1) == 2
    assert golden.rsr(-2, 2) == 0 and golden.rsr(-3, 2) == -1
    assert golden.rsr(I32_MAX, 1) == 1 << 30  # no int32 overflow in the rounding term
    assert golden.rsr(I32_MIN, 31) == -1
    assert golden.rsr(np.array([1 << 62]), 62)[0] == 1
    with pytest.raises(ValueError):
        golden.rsr(1, -1)


def test_sat_edges() -> None:
    v = np.array([-(1 << 40), -129, -128, 127, 128, 1 << 40])
    assert golden.sat(v, 8).tolist() == [-128, -128, -128, 127, 127, 127]
    assert golden.sat(np.array([-32769, -32768, 32767, 32768]), 16).tolist() == [-32768, -32768, 32767, 32767]
    assert golden.sat(np.array([I32_MIN - 1, I32_MAX + 1]), 32).tolist() == [I32_MIN, I32_MAX]


@pytest.mark.parametrize("shift", [1, 2, 15, 31, 32, 47, 61, 62])
@pytest.mark.parametrize("mult", [1 << 30, (1 << 30) + 12345, (1 << 31) - 1])
def test_requantize_extremes(mult: int, shift: int) -> None:
    acc = np.array([I32_MIN, I32_MIN + 1, -(1 << 20) - 1, -1, 0, 1, (1 << 20) + 1, I32_MAX - 1, I32_MAX])
    got = golden.kp_requantize(acc, mult, shift)
    assert got.dtype == np.int32
    assert got.tolist() == [py_requantize(int(a), mult, shift) for a in acc]


def test_requantize_rejects_bad_shift() -> None:
    with pytest.raises(ValueError):
        golden.kp_requantize(1, 1 << 30, 0)
    with pytest.raises(ValueError):
        golden.kp_requantize(1, 1 << 30, 63)


@settings(max_examples=300, deadline=None)
@given(
    acc=st.integers(I32_MIN, I32_MAX),
    mult=st.integers(1 << 30, (1 << 31) - 1),
    shift=st.integers(1, 62),
)
def test_requantize_property(acc: int, mult: int, shift: int) -> None:
    assert int(golden.kp_requantize(np.array([acc]), mult, shift)[0]) == py_requantize(acc, mult, shift)


@settings(max_examples=300, deadline=None)
@given(v=st.integers(-(1 << 40), 1 << 40), s=st.integers(0, 20))
def test_rsr_property(v: int, s: int) -> None:
    expect = v if s == 0 else math.floor(Fraction(v, 1 << s) + Fraction(1, 2))
    assert int(golden.rsr(v, s)) == expect


# ------------------------------------------------------------------------------------------------- tables


def test_table_endpoints_and_shape() -> None:
    for tab in (SIG, TANH):
        assert tab.dtype == np.int16 and tab.shape == (1024,)
        assert np.all(np.diff(tab.astype(np.int64)) >= 0)  # monotone
    # entry k samples the centre of inputs 64k - 32768 .. 64k - 32705: z_k = (64k - 32736.5) / 4096
    assert SIG[0] == round(32768 / (1 + math.exp(32736.5 / 4096))) == 11
    assert SIG[1023] == round(32768 / (1 + math.exp(-32735.5 / 4096))) == 32757
    assert SIG[512] == round(32768 / (1 + math.exp(-31.5 / 4096)))
    assert TANH[0] == -32768 and TANH[1023] == 32767  # tanh(+-8) * 32768 rounds to +-32768: clamped
    # int16 is symmetric about -1/2, so entries k and 1023 - k sample +-z one input (1/4096) apart
    k = np.arange(1024)
    sym = np.clip(TANH.astype(np.int64), -32767, 32767)
    assert np.all(np.abs(sym[k] + sym[1023 - k]) <= 8)  # tanh: slope <= 1, 8 = 32768 / 4096
    assert np.all(np.abs(SIG[k].astype(int) + SIG[1023 - k].astype(int) - 32768) <= 3)
    with pytest.raises(ValueError):
        golden.make_table("relu")


@pytest.mark.parametrize("fn,tab", [(golden.kp_sigmoid_s16, SIG), (golden.kp_tanh_s16, TANH)])
def test_activation_all_inputs(fn, tab) -> None:
    z = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)
    out = fn(z, tab)
    assert out.dtype == np.int16
    assert np.all(np.diff(out.astype(np.int64)) >= 0)
    assert np.array_equal(out[::64], tab) and np.array_equal(out[63::64], tab)  # runs of 64 inputs
    ref = [py_interp(int(v), tab) for v in z[::7]]
    assert out[::7].tolist() == ref


def test_activation_accuracy() -> None:
    """Worst error: half a run (1/128) times the largest slope (sigmoid 1/4, tanh 1), plus rounding."""
    z = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)
    zf = z / 4096.0
    assert np.max(np.abs(golden.kp_sigmoid_s16(z, SIG) / 32768.0 - 1 / (1 + np.exp(-zf)))) < 0.002
    assert np.max(np.abs(golden.kp_tanh_s16(z, TANH) / 32768.0 - np.tanh(zf))) < 0.0078


# ---------------------------------------------------------------------------------------------- KP mat-vec

factor_dim = st.integers(1, 7)


@settings(max_examples=150, deadline=None)
@given(
    dims=st.tuples(factor_dim, factor_dim, factor_dim, factor_dim),
    seed=st.integers(0, 2**32 - 1),
    batch=st.sampled_from([(), (3,), (2, 2)]),
)
def test_matvec_exact_int32_equals_kron(dims: tuple[int, int, int, int], seed: int, batch: tuple[int, ...]) -> None:
    m1, n1, m2, n2 = dims
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m1, n1)).astype(np.int8)
    b = rng.integers(-128, 128, (m2, n2)).astype(np.int8)
    x = rng.integers(-128, 128, batch + (n1 * n2,)).astype(np.int8)
    y = golden.kp_matvec_s8(a, b, x, t_shift=0, t_bits=32)
    expect = x.astype(np.int64) @ np.kron(a.astype(np.int64), b.astype(np.int64)).T  # widen before kron
    assert y.dtype == np.int32 and y.shape == batch + (m1 * m2,)
    assert np.array_equal(y, expect)


@pytest.mark.parametrize("t_bits", [8, 16])
@pytest.mark.parametrize("seed", range(12))
def test_matvec_matches_python_loops(seed: int, t_bits: int) -> None:
    rng = np.random.default_rng(seed)
    m1, n1, m2, n2 = (int(v) for v in rng.integers(1, 9, 4))
    a = rng.integers(-127, 128, (m1, n1)).astype(np.int8)
    b = rng.integers(-127, 128, (m2, n2)).astype(np.int8)
    x = rng.choice(np.array([-128, 127, 0, 5], np.int8), size=n1 * n2) if seed % 2 else rng.integers(-128, 128, n1 * n2)
    x = x.astype(np.int8)
    # seeds < 6: the spec's shift (no saturation); otherwise arbitrary shifts that may saturate T
    t_shift = t_shift_for(b, t_bits) if seed < 6 else int(rng.integers(0, 6))
    got = golden.kp_matvec_s8(a, b, x, t_shift, t_bits)
    assert got.tolist() == py_matvec(a, b, [int(v) for v in x], t_shift, t_bits)


def test_matvec_checks() -> None:
    a = np.ones((1, 512), np.int8)
    b = np.ones((1, 1), np.int8)
    with pytest.raises(ValueError):
        golden.kp_matvec_s8(a, b, np.ones(512, np.int8), 0)
    golden.kp_matvec_s8(a, b, np.ones(512, np.int8), 0, t_bits=32)  # experiments may go past 511
    with pytest.raises(ValueError):
        golden.kp_matvec_s8(a[:, :4], b, np.ones(5, np.int8), 0)
    with pytest.raises(ValueError):
        golden.kp_matvec_s8(a[:, :4], b, np.ones(4, np.int8), 0, t_bits=12)


def test_matvec_worst_case_fits_int32() -> None:
    a = np.full((2, golden.MAX_N1), -128, np.int8)
    b = np.full((1, 3), 127, np.int8)
    x = np.full(golden.MAX_N1 * 3, -128, np.int8)
    y = golden.kp_matvec_s8(a, b, x, t_shift_for(b))
    assert y.tolist() == py_matvec(a, b, [int(v) for v in x], t_shift_for(b))
    assert golden.kp_matvec_macs(3, 4, 5, 6) == 4 * 6 * 5 + 3 * 4 * 5


# ------------------------------------------------------------------------------------------ LSTM, fc, model


@pytest.mark.parametrize("mode", ["random", "extreme", "max", "min"])
@pytest.mark.parametrize("seed", range(6))
def test_lstm_step_matches_python(seed: int, mode: str) -> None:
    rng = np.random.default_rng(100 + seed)
    isz, hsz = int(rng.integers(1, 7)), int(rng.integers(1, 6))
    layer = random_layer(rng, isz, hsz, mode=mode, cell_frac=int(rng.integers(0, 16)))
    h = [0] * hsz
    c = [0] * hsz
    hg, cg = np.zeros((1, hsz), np.int8), np.zeros((1, hsz), np.int16)
    for _ in range(4):
        x = rng.choice(np.array([-128, 127], np.int8), isz) if mode != "random" else rng.integers(-128, 128, isz)
        x = x.astype(np.int8)
        h, c = py_lstm_step(layer, [int(v) for v in x], h, c)
        hg, cg = lstm_cell.kp_lstm_step_s8(layer, x[None], hg, cg, SIG, TANH)
        assert hg.dtype == np.int8 and cg.dtype == np.int16
        assert hg[0].tolist() == h and cg[0].tolist() == c


def test_lstm_extremes_saturate_gates() -> None:
    """Extreme layers really drive c and h to their limits (so the edge paths above are exercised)."""
    rng = np.random.default_rng(7)
    seen_h: set[int] = set()
    seen_c: set[int] = set()
    for _ in range(40):
        layer = random_layer(rng, 4, 3, mode="extreme")
        x = rng.choice(np.array([-128, 127], np.int8), (8, 4))
        h, c = np.zeros((8, 3), np.int8), np.zeros((8, 3), np.int16)
        for _ in range(12):
            h, c = lstm_cell.kp_lstm_step_s8(layer, x, h, c, SIG, TANH)
            seen_h |= set(np.unique(h).tolist())
            seen_c |= set(np.unique(c).tolist())
    assert {127, -128} <= seen_h  # o * tanh(c) rounds past +-127.5: h saturates
    assert {32767, -32768} <= seen_c


def test_fc() -> None:
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (5, 9)).astype(np.int8)
    bias = rng.integers(-(1 << 20), 1 << 20, 5).astype(np.int32)
    x = rng.integers(-128, 128, (4, 9)).astype(np.int8)
    out = golden.kp_fc_s8(w, bias, x)
    assert out.dtype == np.int32 and out.shape == (4, 5)
    expect = [[int(bias[k]) + sum(int(w[k, j]) * int(x[s, j]) for j in range(9)) for k in range(5)] for s in range(4)]
    assert out.tolist() == expect


def test_quantize_input_and_predict() -> None:
    q = golden.quantize_input(np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0, 0.26]), 1.0)
    assert q.dtype == np.int8 and q.tolist() == [0, 2, 2, 0, -2, 127, -127, 0]
    assert golden.predict(np.array([[1, 5, 5, 2], [-3, -3, -4, -9]])).tolist() == [1, 0]


@pytest.mark.parametrize("t_bits", [8, 16, 32])
def test_run_model_shapes_and_batch(t_bits: int) -> None:
    rng = np.random.default_rng(11)
    model = random_model(rng, 6, (5, 4), 3)
    xq = rng.integers(-127, 128, (5, 7, 6)).astype(np.int8)
    tr = golden.run_model(model, xq, t_bits=t_bits)
    assert tr.logits.shape == (5, 3) and tr.logits.dtype == np.int32
    assert [h.shape for h in tr.hidden] == [(5, 7, 5), (5, 7, 4)]
    assert [c.shape for c in tr.cell] == [(5, 7, 5), (5, 7, 4)]
    assert all(h.dtype == np.int8 for h in tr.hidden) and all(c.dtype == np.int16 for c in tr.cell)
    for s in range(5):
        one = golden.run_model(model, xq[s : s + 1], t_bits=t_bits)
        assert np.array_equal(one.logits[0], tr.logits[s])
        for k in range(2):
            assert np.array_equal(one.hidden[k][0], tr.hidden[k][s])
            assert np.array_equal(one.cell[k][0], tr.cell[k][s])
    # the head reads the last step of the last layer; layer 2 reads layer 1's h
    assert np.array_equal(tr.logits, golden.kp_fc_s8(model.head.weight, model.head.bias, tr.hidden[1][:, -1]))
    l1 = model.layers[1]
    h2, c2 = lstm_cell.kp_lstm_step_s8(l1, tr.hidden[0][:, 0], np.zeros((5, 4), np.int8), np.zeros((5, 4), np.int16),
                                    model.sigmoid_table, model.tanh_table, t_bits)  # fmt: skip
    assert np.array_equal(h2, tr.hidden[1][:, 0]) and np.array_equal(c2, tr.cell[1][:, 0])


def test_run_model_does_not_depend_on_the_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_cell takes samples in blocks to keep its arrays small: one sample per block, or uneven blocks, give
    the same trace as one block for all."""
    rng = np.random.default_rng(12)
    model = random_model(rng, 6, (5, 4), 3)
    xq = rng.integers(-128, 128, (9, 4, 6)).astype(np.int8)
    whole = golden.run_model(model, xq)
    for elements in (1, 2 * (4 * 5 + 6)):  # blocks of 1 sample; of 2 samples (the last one partial)
        monkeypatch.setattr(golden, "BLOCK_ELEMENTS", elements)
        got = golden.run_model(model, xq)
        assert np.array_equal(got.logits, whole.logits)
        assert all(np.array_equal(a, b) for a, b in zip(got.hidden, whole.hidden, strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(got.cell, whole.cell, strict=True))


def test_run_model_rejects_bad_input() -> None:
    model = random_model(np.random.default_rng(0), 6, (4,), 3)
    with pytest.raises(ValueError):
        golden.run_model(model, np.zeros((2, 3, 5), np.int8))
    with pytest.raises(ValueError):
        golden.run_model(model, np.zeros((2, 0, 6), np.int8))


@settings(max_examples=40, deadline=None)
@given(
    xq=hnp.arrays(np.int8, st.tuples(st.integers(1, 4), st.integers(1, 4), st.just(3))),
    seed=st.integers(0, 1000),
)
def test_lstm_batch_property(xq: np.ndarray, seed: int) -> None:
    """Batched golden equals per-sample pure Python over a whole sequence."""
    rng = np.random.default_rng(seed)
    layer = random_layer(rng, 3, 2, mode="extreme" if seed % 3 == 0 else "random")
    bsz, steps, _ = xq.shape
    h, c = np.zeros((bsz, 2), np.int8), np.zeros((bsz, 2), np.int16)
    ph = [[0, 0] for _ in range(bsz)]
    pc = [[0, 0] for _ in range(bsz)]
    for t in range(steps):
        h, c = lstm_cell.kp_lstm_step_s8(layer, xq[:, t], h, c, SIG, TANH)
        for s in range(bsz):
            ph[s], pc[s] = py_lstm_step(layer, [int(v) for v in xq[s, t]], ph[s], pc[s])
        assert h.tolist() == ph and c.tolist() == pc


@settings(max_examples=100, deadline=None)
@given(dims=st.tuples(factor_dim, factor_dim, factor_dim, factor_dim), seed=st.integers(0, 2**32 - 1))
def test_acc_bound_holds_and_is_reached(dims: tuple[int, int, int, int], seed: int) -> None:
    """kp_acc_bound >= |y| for every input (it is what the gate requantizers' int32 proof rests on), and the
    worst row of A against the worst column of T, with inputs of matching signs, comes within rounding of it."""
    m1, n1, m2, n2 = dims
    rng = np.random.default_rng(seed)
    a = rng.integers(-127, 128, (m1, n1)).astype(np.int8)
    b = rng.integers(-127, 128, (m2, n2)).astype(np.int8)
    ts = t_shift_for(b)
    bound = limits.kp_acc_bound(a, b, ts)
    xs = rng.integers(-128, 128, (64, n1 * n2)).astype(np.int8)
    assert np.abs(golden.kp_matvec_s8(a, b, xs, ts).astype(np.int64)).max() <= bound
    p = int(np.argmax(np.abs(a.astype(np.int64)).sum(axis=1)))
    q = int(np.argmax(np.abs(b.astype(np.int64)).sum(axis=1)))
    sign_a = np.where(a[p] < 0, -1, 1)
    x = np.concatenate([np.where(b[q] * s < 0, -128, 127) for s in sign_a]).astype(np.int8)
    y = int(golden.kp_matvec_s8(a, b, x, ts)[p * m2 + q])
    asum, bsum = int(np.abs(a[p].astype(np.int64)).sum()), int(np.abs(b[q].astype(np.int64)).sum())
    assert bound - asum * (bsum // 2**ts + 2) <= abs(y) <= bound  # short only by x = 127 (not 128) and rounding


# ------------------------------------------------------------- kp_matrix_s8 against plain int64 arithmetic


def i64_kp_matrix(m: KPMatrixQ, x: np.ndarray, t_bits: int) -> np.ndarray:
    """kp_matrix_s8 in int64 numpy, no floats: each factor as an einsum mode product (last factor first), its
    sums rounded (rsr) and saturated to t_bits before the next; HKP top rows first; int32 saturation last."""
    k, (rows, cols) = len(m.factors), m.kp_shape
    flat = x.reshape(-1, cols).astype(np.int64)
    modes = "abcd"[:k]
    v = flat.reshape((len(flat),) + tuple(f.shape[1] for f in m.factors))
    for j in range(k - 1, -1, -1):
        src = "Z" + modes
        v = np.einsum(f"{src},{modes[j].upper()}{modes[j]}->{src.replace(modes[j], modes[j].upper())}", v,
                      m.factors[j].astype(np.int64))  # fmt: skip
        if j > 0:
            s = m.shifts[j - 1]
            v = v if s == 0 else (v + (1 << (s - 1))) >> s
            v = np.clip(v, -(1 << (t_bits - 1)), (1 << (t_bits - 1)) - 1)
    y = v.reshape(len(flat), rows)
    if m.top is not None:
        top = flat @ m.top.astype(np.int64).T
        ts = m.top_shift
        top = top << ts if ts >= 0 else (top + (1 << (-ts - 1))) >> -ts
        y = np.concatenate([top, y], axis=1)
    return np.clip(y, I32_MIN, I32_MAX).reshape(x.shape[:-1] + (rows + m.top_rows,))


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("t_bits", [8, 16, 32])
def test_kp_matrix_equals_int64_reference(k: int, t_bits: int) -> None:
    """The float64 BLAS products of kp_matrix_s8 give exactly the int64 integers: 2..4 random factors, HKP top
    rows (top_shift of both signs), shifts from 0 (saturating) to large, batches of every shape, extreme inputs."""
    rng = np.random.default_rng(100 * k + t_bits)
    for it in range(30):
        fs = [rng.integers(-128, 128, (int(rng.integers(1, 7)), int(rng.integers(1, 7)))).astype(np.int8)
              for _ in range(k)]  # fmt: skip
        n = math.prod(f.shape[1] for f in fs)
        top_rows = (0, 1, 4)[it % 3]
        top = rng.integers(-128, 128, (top_rows, n)).astype(np.int8) if top_rows else None
        shifts = [int(rng.integers(0, 16)) for _ in range(k - 1)]
        m = KPMatrixQ(a=fs[0], b=fs[1], t_shift=shifts[0], a_scale=1.0, b_scale=1.0, rest=tuple(fs[2:]),
                      rest_shifts=tuple(shifts[1:]), rest_scales=(1.0,) * (k - 2), top=top,
                      top_shift=int(rng.integers(-12, 13)) if top_rows else 0)  # fmt: skip
        shape = ((), (1,), (37,), (3, 5))[it % 4]
        x = rng.integers(-128, 128, shape + (n,)).astype(np.int8)
        x.reshape(-1, n)[0] = np.where(rng.random(n) < 0.5, -128, 127)  # an extreme row saturates T
        got = golden.kp_matrix_s8(m, x, t_bits)
        want = i64_kp_matrix(m, x, t_bits)
        assert got.dtype == np.int32 and got.shape == want.shape
        assert np.array_equal(got, want), (it, [f.shape for f in fs], shifts, top_rows)
