"""Property tests (hypothesis) of every golden kernel against a plain re-computation of docs/quantization.md
in Python integers (unbounded, so nothing wraps or rounds by accident), with the extremes drawn on purpose:
-128/127 everywhere, accumulators at the int32 limits, saturating gates and cell states, one-step and empty
sequences, dimension-1 factors. Example counts are printed at the end of the run (tests/example_counts.py).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from example_counts import count
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kpgen.cells import lstm as lstm_cell
from kpgen.cells.lstm import LSTMLayerQ
from kpgen.ir import DenseQ, KPMatrixQ, ModelQ, Requant
from kpgen.quant import limits
from kpgen.quant.quantize import t_shift_for
from kpgen.reference import golden

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
SIG = golden.make_table("sigmoid")
TANH = golden.make_table("tanh")


def props(n: int) -> settings:
    """n examples, no deadline (the first call of a test warms numpy up)."""
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------- the spec in Python integers


def p_rsr(v: int, s: int) -> int:
    """round(v / 2**s), halves up: floor(v / 2**s + 1/2), exactly."""
    return v if s == 0 else math.floor(Fraction(v, 2**s) + Fraction(1, 2))


def p_sat(v: int, bits: int) -> int:
    return max(-(2 ** (bits - 1)), min(2 ** (bits - 1) - 1, v))


def p_requantize(acc: int, mult: int, shift: int) -> int:
    return p_sat(p_rsr(acc * mult, shift), 32)


def p_interp(z: int, table: list[int]) -> int:
    """The activation look-up: the entry of z's run of 64 inputs (1024-entry table, docs/quantization.md)."""
    return table[(z + 32768) // 64]


def p_matvec(a: list[list[int]], b: list[list[int]], x: list[int], t_shift: int) -> list[int]:
    m1, n1, m2, n2 = len(a), len(a[0]), len(b), len(b[0])
    t = [[p_sat(p_rsr(sum(x[i * n2 + j] * b[q][j] for j in range(n2)), t_shift), 16) for q in range(m2)]
         for i in range(n1)]  # fmt: skip
    y = [sum(a[p][i] * t[i][q] for i in range(n1)) for p in range(m1) for q in range(m2)]
    assert all(I32_MIN <= v <= I32_MAX for v in y), "the int32 accumulator of A T overflowed"
    return y


def p_lstm(layer: LSTMLayerQ, x: list[int], h: list[int], c: list[int]) -> tuple[list[int], list[int]]:
    L = lambda arr: arr.astype(int).tolist()  # noqa: E731
    hs, cf = layer.hidden_size, layer.cell_frac
    sig, tanh = L(SIG), L(TANH)
    ax = p_matvec(L(layer.wx.a), L(layer.wx.b), x, layer.wx.t_shift)
    ah = p_matvec(L(layer.wh.a), L(layer.wh.b), h, layer.wh.t_shift)
    z = [p_sat(p_requantize(ax[r], layer.rq_x.mult, layer.rq_x.shift)
               + p_requantize(ah[r], layer.rq_h.mult, layer.rq_h.shift)
               + int(layer.bias[r]), 16) for r in range(4 * hs)]  # fmt: skip
    h2, c2 = [], []
    for r in range(hs):
        i, f = p_interp(z[r], sig), p_interp(z[hs + r], sig)
        g, o = p_interp(z[2 * hs + r], tanh), p_interp(z[3 * hs + r], sig)
        cn = p_sat(p_rsr(f * c[r], 15) + p_rsr(i * g, 30 - cf), 16)
        c12 = p_rsr(cn, cf - 12) if cf >= 12 else p_sat(cn * 2 ** (12 - cf), 16)
        h2.append(p_sat(p_rsr(o * p_interp(c12, tanh), 23), 8))
        c2.append(cn)
    return h2, c2


def p_fc(w: np.ndarray, bias: np.ndarray, x: list[int]) -> list[int]:
    return [int(bias[k]) + sum(int(w[k, j]) * x[j] for j in range(w.shape[1])) for k in range(w.shape[0])]


# ---------------------------------------------------------------------------------------- strategies

int8_values = st.one_of(st.sampled_from([-128, 127, -127, 0, 1, -1]), st.integers(-128, 127))
int16_values = st.one_of(st.sampled_from([-32768, 32767, -32767, 0, 1, -1, -256, 255]), st.integers(-32768, 32767))
int32_values = st.one_of(
    st.sampled_from([I32_MIN, I32_MIN + 1, I32_MAX, I32_MAX - 1, 0, 1, -1]),
    st.integers(I32_MIN, I32_MIN + 2**20),
    st.integers(I32_MAX - 2**20, I32_MAX),
    st.integers(I32_MIN, I32_MAX),
)
mults = st.one_of(st.sampled_from([1, 2**30, 2**31 - 1, 2**30 + 1]), st.integers(1, 2**31 - 1))
dims = st.one_of(st.just(1), st.integers(1, 6))


def int8_array(shape) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.int8, shape, elements=int8_values)


def factor_pair(data: st.DataObject, rows: int, cols: int) -> tuple[int, int, int, int]:
    """(m1, n1, m2, n2) with m1*m2 = rows, n1*n2 = cols; dimension-1 factors are as likely as any."""
    m1 = data.draw(st.sampled_from([d for d in range(1, rows + 1) if rows % d == 0]))
    n1 = data.draw(st.sampled_from([d for d in range(1, cols + 1) if cols % d == 0]))
    return m1, n1, rows // m1, cols // n1


def kp_matrix(data: st.DataObject, f: tuple[int, int, int, int]) -> KPMatrixQ:
    m1, n1, m2, n2 = f
    a = data.draw(int8_array((m1, n1)), label="A")
    b = data.draw(int8_array((m2, n2)), label="B")
    return KPMatrixQ(a=a, b=b, t_shift=t_shift_for(b), a_scale=1.0, b_scale=1.0)


def lstm_layer(data: st.DataObject, isz: int, hsz: int) -> LSTMLayerQ:
    """Any layer inside the C kernels' limits (limits.kernel_limits), often one whose gates and cell saturate:
    the smallest shifts the accumulator bound allows, and biases up to what the int32 gate sum leaves."""
    wx = kp_matrix(data, factor_pair(data, 4 * hsz, isz))
    wh = kp_matrix(data, factor_pair(data, 4 * hsz, hsz))
    top = limits.GATE_SHIFT_MAX
    rqs, worst = [], 0
    for m in (wx, wh):
        bound = limits.kp_acc_bound(m.a, m.b, m.t_shift)
        low = max(1, top - (30 - bound.bit_length()))  # |acc| * 2**(32-shift) < 2**31
        shift = data.draw(st.one_of(st.just(low), st.integers(low, top)), label="shift")
        mult = data.draw(st.one_of(st.sampled_from([1, 2**30, 2**31 - 1]), st.integers(1, 2**31 - 1)), label="mult")
        rqs.append(Requant(mult, shift))
        worst += int(golden.rsr(np.int64(bound) * np.int64(mult), shift))
    room = max(0, 2**31 - 1 - worst)
    bias = data.draw(hnp.arrays(np.int64, 4 * hsz, elements=st.one_of(
        st.sampled_from([-room, room, 0, 5 * 4096, -5 * 4096]), st.integers(-room, room))), label="bias")
    layer = LSTMLayerQ(
        input_size=isz,
        hidden_size=hsz,
        wx=wx,
        wh=wh,
        rq_x=rqs[0],
        rq_h=rqs[1],
        bias=bias.astype(np.int32),
        cell_frac=data.draw(st.integers(0, 15), label="cell_frac"),
        input_scale=1.0,
    )
    assert limits.kernel_limits(layer) == [], limits.kernel_limits(layer)
    return layer


# ------------------------------------------------------------------------------------------- kernels


@props(400)
@given(v=st.one_of(int32_values, st.integers(-(2**61), 2**61)), s=st.integers(0, 62))
def test_rsr(v: int, s: int) -> None:
    count("properties: rsr")
    assert int(golden.rsr(np.int64(v), s)) == p_rsr(v, s)


@props(200)
@given(v=st.integers(-(2**62), 2**62), bits=st.sampled_from([8, 16, 32]))
def test_sat(v: int, bits: int) -> None:
    count("properties: sat")
    assert int(golden.sat(np.int64(v), bits)) == p_sat(v, bits)


@props(400)
@given(acc=hnp.arrays(np.int32, st.integers(1, 8), elements=int32_values), mult=mults, shift=st.integers(1, 62))
def test_requantize(acc: np.ndarray, mult: int, shift: int) -> None:
    count("properties: requantize")
    got = golden.kp_requantize(acc, mult, shift)
    assert got.dtype == np.int32
    assert got.tolist() == [p_requantize(int(a), mult, shift) for a in acc]


@props(300)
@given(z=hnp.arrays(np.int16, st.integers(1, 16), elements=int16_values), kind=st.sampled_from(["sigmoid", "tanh"]))
def test_activations(z: np.ndarray, kind: str) -> None:
    count("properties: sigmoid/tanh")
    table = SIG if kind == "sigmoid" else TANH
    fn = golden.kp_sigmoid_s16 if kind == "sigmoid" else golden.kp_tanh_s16
    got = fn(z, table)
    assert got.dtype == np.int16
    assert got.tolist() == [p_interp(int(v), table.astype(int).tolist()) for v in z]


@props(300)
@given(data=st.data(), m1=dims, n1=dims, m2=dims, n2=dims, batch=st.sampled_from([(), (1,), (3,)]),
       free_shift=st.booleans())  # fmt: skip
def test_matvec(data: st.DataObject, m1: int, n1: int, m2: int, n2: int, batch: tuple, free_shift: bool) -> None:
    """Spec shift (T never saturates) or any shift 0..20 (T may saturate, both sides clamp the same)."""
    count("properties: kp_matvec_s8")
    a = data.draw(int8_array((m1, n1)))
    b = data.draw(int8_array((m2, n2)))
    x = data.draw(int8_array(batch + (n1 * n2,)))
    t_shift = data.draw(st.integers(0, 20)) if free_shift else t_shift_for(b)
    got = golden.kp_matvec_s8(a, b, x, t_shift)
    assert got.dtype == np.int32 and got.shape == batch + (m1 * m2,)
    al, bl = a.astype(int).tolist(), b.astype(int).tolist()
    for idx in np.ndindex(*batch):
        assert got[idx].tolist() == p_matvec(al, bl, x[idx].astype(int).tolist(), t_shift)


@props(40)
@given(n1=st.integers(golden.MAX_N1 - 8, golden.MAX_N1), n2=st.integers(3, 6), sign=st.sampled_from([1, -1]),
       a_val=st.sampled_from([-128, 127]))  # fmt: skip
def test_matvec_accumulator_at_int32_limit(n1: int, n2: int, sign: int, a_val: int) -> None:
    """n1 up to 511 with every T at +-32768 and A at -128/127: the A T sum comes within 0.2% of int32's limit."""
    count("properties: kp_matvec_s8 at the int32 limit")
    b = np.full((1, n2), 127 * sign, np.int8)
    x = np.full(n1 * n2, -128, np.int8)
    a = np.full((1, n1), a_val, np.int8)
    got = golden.kp_matvec_s8(a, b, x, 0)  # t_shift 0: T saturates at int16 on purpose
    want = p_matvec(a.astype(int).tolist(), b.astype(int).tolist(), x.astype(int).tolist(), 0)
    assert got.tolist() == want
    assert abs(want[0]) >= 127 * 32767 * (golden.MAX_N1 - 8)


@props(300)
@given(data=st.data(), rows=st.integers(1, 6), cols=st.integers(1, 24), batch=st.integers(1, 3))
def test_fc(data: st.DataObject, rows: int, cols: int, batch: int) -> None:
    """Biases right at the edge where the int32 sum can still not overflow (what the quantizer allows)."""
    count("properties: kp_fc_s8")
    w = data.draw(int8_array((rows, cols)))
    room = 128 * 128 * cols
    bias = data.draw(hnp.arrays(np.int32, rows, elements=st.one_of(
        st.sampled_from([I32_MIN + room, I32_MAX - room, 0]), st.integers(I32_MIN + room, I32_MAX - room))))
    x = data.draw(int8_array((batch, cols)))
    got = golden.kp_fc_s8(w, bias, x)
    assert got.dtype == np.int32
    for s in range(batch):
        want = p_fc(w, bias, x[s].astype(int).tolist())
        assert all(I32_MIN <= v <= I32_MAX for v in want)
        assert got[s].tolist() == want


@props(250)
@given(data=st.data(), isz=dims, hsz=st.integers(1, 4), batch=st.integers(1, 2))
def test_lstm_step(data: st.DataObject, isz: int, hsz: int, batch: int) -> None:
    """One step from any state (h, c anywhere in int8/int16, not only reachable ones)."""
    count("properties: kp_lstm_step_s8")
    layer = lstm_layer(data, isz, hsz)
    x = data.draw(int8_array((batch, isz)), label="x")
    h = data.draw(int8_array((batch, hsz)), label="h")
    c = data.draw(hnp.arrays(np.int16, (batch, hsz), elements=int16_values), label="c")
    h2, c2 = lstm_cell.kp_lstm_step_s8(layer, x, h, c, SIG, TANH)
    assert h2.dtype == np.int8 and c2.dtype == np.int16
    for s in range(batch):
        ph, pc = p_lstm(layer, x[s].astype(int).tolist(), h[s].astype(int).tolist(), c[s].astype(int).tolist())
        assert h2[s].tolist() == ph and c2[s].tolist() == pc


@props(30)
@given(data=st.data())
def test_saturation_is_reached(data: st.DataObject) -> None:
    """The generators above really drive c and h to their rails: a layer with huge biases saturates them."""
    count("properties: saturation reached")
    hsz = data.draw(st.integers(1, 3))
    layer = lstm_layer(data, 2, hsz)
    sign = data.draw(st.sampled_from([1, -1]))
    big = 2**24  # 4096 in Q3.12: far past where z saturates at int16
    bias = np.concatenate([np.full(hsz, big), np.full(hsz, big), np.full(hsz, sign * big), np.full(hsz, big)])
    quiet = Requant(1, limits.GATE_SHIFT_MAX)  # the mat-vecs add 0: the biases decide every gate
    layer = LSTMLayerQ(**{**layer.__dict__, "bias": bias.astype(np.int32), "rq_x": quiet, "rq_h": quiet,
                          "cell_frac": data.draw(st.integers(12, 15))})  # fmt: skip
    assert limits.kernel_limits(layer) == []
    h, c = np.zeros((1, hsz), np.int8), np.zeros((1, hsz), np.int16)
    x = data.draw(int8_array((1, 2)))
    ph, pc = [0] * hsz, [0] * hsz
    for _ in range(12):
        h, c = lstm_cell.kp_lstm_step_s8(layer, x, h, c, SIG, TANH)
        ph, pc = p_lstm(layer, x[0].astype(int).tolist(), ph, pc)
        assert h[0].tolist() == ph and c[0].tolist() == pc
    assert set(c[0].tolist()) == {32767 if sign > 0 else -32768}  # i = f = 1, g = +-1: c climbs to the rail
    if layer.cell_frac == 12:  # c = +-8 in Q3.12: tanh(c) rounds to +-1 and h to its rail
        assert set(h[0].tolist()) == {127 if sign > 0 else -128}


def model_of(data: st.DataObject) -> ModelQ:
    isz = data.draw(dims, label="input size")
    hidden = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3), label="hidden sizes")
    layers, prev = [], isz
    for hsz in hidden:
        layers.append(lstm_layer(data, prev, hsz))
        prev = hsz
    n_cls = data.draw(st.integers(1, 4))
    room = 128 * 128 * prev
    head = DenseQ(
        weight=data.draw(int8_array((n_cls, prev))),
        bias=data.draw(hnp.arrays(np.int32, n_cls, elements=st.integers(I32_MIN + room, I32_MAX - room))),
        out_scale=1.0,
    )
    return ModelQ(input_size=isz, num_classes=n_cls, input_scale=1.0, layers=tuple(layers), head=head,
                  sigmoid_table=SIG, tanh_table=TANH)  # fmt: skip


@props(120)
@given(data=st.data(), steps=st.sampled_from([1, 1, 2, 3, 5]), batch=st.integers(1, 2))
def test_run_model(data: st.DataObject, steps: int, batch: int) -> None:
    """Stacked layers over whole sequences (one-step ones included), then the head on the last layer's h."""
    count("properties: run_model")
    model = model_of(data)
    xq = data.draw(int8_array((batch, steps, model.input_size)), label="xq")
    tr = golden.run_model(model, xq)
    for s in range(batch):
        hs = [[0] * l.hidden_size for l in model.layers]
        cs = [[0] * l.hidden_size for l in model.layers]
        for t in range(steps):
            inp = xq[s, t].astype(int).tolist()
            for k, layer in enumerate(model.layers):
                hs[k], cs[k] = p_lstm(layer, inp, hs[k], cs[k])
                assert tr.hidden[k][s, t].tolist() == hs[k] and tr.cell[k][s, t].tolist() == cs[k]
                inp = hs[k]
        logits = p_fc(model.head.weight, model.head.bias, hs[-1])
        assert tr.logits[s].tolist() == logits
        assert int(golden.predict(tr.logits[s : s + 1])[0]) == logits.index(max(logits))  # first largest


@props(20)
@given(data=st.data(), batch=st.integers(0, 2))
def test_run_model_refuses_empty_sequences(data: st.DataObject, batch: int) -> None:
    count("properties: empty sequences refused")
    model = model_of(data)
    with pytest.raises(ValueError, match="at least one time step"):
        golden.run_model(model, np.zeros((max(batch, 1), 0, model.input_size), np.int8))


@props(200)
@given(x=hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(-1e6, 1e6, allow_nan=False)),
       scale=st.sampled_from([1e-3, 1 / 127, 0.5, 1.0, 3.0]))  # fmt: skip
def test_quantize_input(x: np.ndarray, scale: float) -> None:
    """clamp(round-half-even(x / scale), -127, 127); Python's round() is half-even too."""
    count("properties: quantize_input")
    assume(np.all(np.isfinite(x / scale)))
    got = golden.quantize_input(x, scale)
    assert got.dtype == np.int8
    assert got.tolist() == [max(-127, min(127, round(float(v) / scale))) for v in x]
