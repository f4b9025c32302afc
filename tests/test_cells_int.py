"""The integer GRU, FastRNN, FastGRNN and plain RNN (tanh, relu) cells: golden model against Python integers and the
float cells of kpgen.train.nn, the C kernels against the golden model (bit-exact, every code path), kernel limits
and quantizer."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from factories import gate_requant, random_factors, random_int8, random_kp
from runtime_ctypes import (
    I32,
    P8,
    P16,
    P32,
    POISON,
    Kron,
    LSTMScratch,
    PackedMatrix,
    Runtime,
    _arr,
    _p,
    bias_array,
    with_bias_bits,
)

from kpgen import KpgenError, cells, ir
from kpgen.cells import fastgrnn as fastgrnn_cell
from kpgen.cells import fastrnn as fastrnn_cell
from kpgen.cells import gru as gru_cell
from kpgen.cells import rnn as rnn_cell
from kpgen.cells.fastgrnn import FastGRNNLayerF, FastGRNNLayerQ
from kpgen.cells.fastrnn import FastRNNLayerF, FastRNNLayerQ
from kpgen.cells.gru import GRULayerF, GRULayerQ
from kpgen.cells.lstm import LSTMLayerF
from kpgen.cells.rnn import ReluRNNLayerF, ReluRNNLayerQ, RNNLayerF, RNNLayerQ
from kpgen.ir import BiLayerF, BiLayerQ, Calibration, DenseF, KPMatrixF, ModelF, Requant
from kpgen.quant import limits, quantize
from kpgen.reference import floatmodel, golden

SIG = golden.make_table("sigmoid")
TANH = golden.make_table("tanh")
MODES = ("random", "min", "max", "extreme")
CELLS = ("gru", "fastrnn", "fastgrnn")
RNN_CELLS = ("rnn", "rnn-relu")  # the plain RNN, tanh and relu: one C kernel
ALL = CELLS + RNN_CELLS  # seeds derive from ALL.index(cell): the first three keep their seeds
GATES = {"gru": 3, "fastrnn": 1, "fastgrnn": 1, "rnn": 1, "rnn-relu": 1}
STEP = {"gru": gru_cell.kp_gru_step_s8, "fastrnn": fastrnn_cell.kp_fastrnn_step_s8,
        "fastgrnn": fastgrnn_cell.kp_fastgrnn_step_s8, "rnn": rnn_cell.kp_rnn_step_s8,
        "rnn-relu": rnn_cell.kp_rnn_step_s8}
I31 = (1 << 31) - 1

# ----------------------------------------------------------------------------------------- random layers


def _worst(m, rq: Requant) -> int:
    """Largest |requantize(acc)| the matrix can give."""
    return int(golden.rsr(np.int64(limits.matrix_acc_bound(m)) * np.int64(rq.mult), rq.shift))


def _bias(rng: np.random.Generator, n: int, room: int, mode: str) -> np.ndarray:
    """n int32 biases: 'extreme' picks among +-room (the int32 headroom), +-2**20 and 0; else -3..3 in Q3.12."""
    if mode == "extreme":
        return np.clip(rng.choice(np.array([-room, -(1 << 20), 0, 1 << 20, room], np.int64), size=n), -room, room)
    return rng.integers(-3 * 4096, 3 * 4096, size=n)


def random_cell(
    rng: np.random.Generator,
    cell: str,
    isz: int,
    hsz: int,
    *,
    mode: str = "random",
    fx: tuple | None = None,
    fh: tuple | None = None,
    scalars: tuple[int, int] | None = None,
    shift32: bool = False,
    state_exp: int = 0,
):
    """A random integer layer of `cell` inside limits.kernel_limits; 'extreme': extreme weights, the smallest
    shifts, biases at their int32 headroom. scalars: (alpha, beta) or (zeta, nu); shift32: both shifts 32;
    state_exp: FastRNN / FastGRNN / ReLU RNN only."""
    rows = GATES[cell] * hsz
    wx = random_kp(rng, fx or random_factors(rng, rows, isz), mode)
    wh = random_kp(rng, fh or random_factors(rng, rows, hsz), mode)
    rq_x, rq_h = gate_requant(rng, wx, mode), gate_requant(rng, wh, mode)
    if shift32:
        rq_x, rq_h = Requant(max(1, rq_x.mult >> 8), 32), Requant(max(1, rq_h.mult >> 8), 32)
    wsx, wsh = _worst(wx, rq_x), _worst(wh, rq_h)
    room = min(I31 - wsx - wsh, I31)
    common = dict(input_size=isz, hidden_size=hsz, wx=wx, wh=wh, rq_x=rq_x, rq_h=rq_h, input_scale=1 / 128)
    if scalars is None:
        scalars = tuple(int(v) for v in rng.integers(0, 32768, 2))
    if cell == "gru":
        b = np.concatenate([_bias(rng, 2 * hsz, room, mode), _bias(rng, hsz, I31 - wsx - 32768, mode)])
        layer = GRULayerQ(**common, bias=b.astype(np.int32), bias_hn=_bias(rng, hsz, I31 - wsh, mode).astype(np.int32))
    elif cell == "fastrnn":
        layer = FastRNNLayerQ(**common, bias=_bias(rng, hsz, room, mode).astype(np.int32),
                              alpha=scalars[0], beta=scalars[1], state_exp=state_exp)  # fmt: skip
    elif cell == "rnn":
        layer = RNNLayerQ(**common, bias=_bias(rng, hsz, room, mode).astype(np.int32))
    elif cell == "rnn-relu":  # the rounding term 2**7 of rsr(max(s, 0), 8) takes its room too
        layer = ReluRNNLayerQ(**common, bias=_bias(rng, hsz, room - 128, mode).astype(np.int32), state_exp=state_exp)
    else:
        layer = FastGRNNLayerQ(**common, bias_z=_bias(rng, hsz, room, mode).astype(np.int32),
                               bias_h=_bias(rng, hsz, room, mode).astype(np.int32), zeta=scalars[0], nu=scalars[1],
                               state_exp=state_exp)  # fmt: skip
    assert limits.kernel_limits(layer) == [], limits.kernel_limits(layer)
    return layer


# ------------------------------------------------------------------------------------------ ctypes mirrors


class GRUParams(ctypes.Structure):
    """Mirror of kp_gru_params_s8."""

    _fields_ = [("input_size", I32), ("hidden_size", I32), ("wx", Kron), ("wh", Kron),
                ("mult_x", I32), ("shift_x", I32), ("mult_h", I32), ("shift_h", I32),
                ("bias", P32), ("bias_hn", P32), ("sigmoid_table", P16), ("tanh_table", P16)]  # fmt: skip


class FastRNNParams(ctypes.Structure):
    """Mirror of kp_fastrnn_params_s8."""

    _fields_ = [("input_size", I32), ("hidden_size", I32), ("wx", Kron), ("wh", Kron),
                ("mult_x", I32), ("shift_x", I32), ("mult_h", I32), ("shift_h", I32),
                ("bias", P32), ("alpha", I32), ("beta", I32), ("state_exp", I32), ("tanh_table", P16)]  # fmt: skip


class FastGRNNParams(ctypes.Structure):
    """Mirror of kp_fastgrnn_params_s8."""

    _fields_ = [("input_size", I32), ("hidden_size", I32), ("wx", Kron), ("wh", Kron),
                ("mult_x", I32), ("shift_x", I32), ("mult_h", I32), ("shift_h", I32),
                ("bias_z", P32), ("bias_h", P32), ("zeta", I32), ("nu", I32), ("state_exp", I32),
                ("sigmoid_table", P16), ("tanh_table", P16)]  # fmt: skip


class RNNParams(ctypes.Structure):
    """Mirror of kp_rnn_params_s8."""

    _fields_ = [("input_size", I32), ("hidden_size", I32), ("wx", Kron), ("wh", Kron),
                ("mult_x", I32), ("shift_x", I32), ("mult_h", I32), ("shift_h", I32),
                ("bias", P32), ("relu", I32), ("state_exp", I32), ("tanh_table", P16)]  # fmt: skip


class CCell:
    """One C-side layer (packed as the emitter packs it) with its own h and poisoned scratch."""

    def __init__(self, rt: Runtime, layer) -> None:
        self.rt, self.cell = rt, cells.of(layer).name
        hs, rows = layer.hidden_size, GATES[self.cell] * layer.hidden_size
        self.wx, self.wh = PackedMatrix(layer.wx), PackedMatrix(layer.wh)
        self.tabs = _arr(SIG, np.int16), _arr(TANH, np.int16)
        sig, tanh = (_p(t, P16) for t in self.tabs)
        head = (layer.input_size, hs, self.wx.struct, self.wh.struct,
                layer.rq_x.mult, layer.rq_x.shift, layer.rq_h.mult, layer.rq_h.shift)  # fmt: skip
        vecs = [bias_array(getattr(layer, n), rt.bias_bits) for n in cells.of(layer).vectors]
        self.vecs, ptrs = [v for v, _ in vecs], [p for _, p in vecs]  # the arrays stay alive with the cell
        params = with_bias_bits({"gru": GRUParams, "fastrnn": FastRNNParams, "fastgrnn": FastGRNNParams}.get(
            self.cell, RNNParams), rt.bias_bits)
        if self.cell == "gru":
            self.params = params(*head, *ptrs, sig, tanh)
        elif self.cell == "fastrnn":
            self.params = params(*head, *ptrs, layer.alpha, layer.beta, layer.state_exp, tanh)
        elif self.cell in RNN_CELLS:
            self.params = params(*head, *ptrs, int(self.cell == "rnn-relu"), layer.state_exp, tanh)
        else:
            self.params = params(*head, *ptrs, layer.zeta, layer.nu, layer.state_exp, sig, tanh)
        self.fn = getattr(rt.lib, cells.get(self.cell).c_step)
        self.fn.argtypes = [ctypes.POINTER(type(self.params)), P8, P8, ctypes.POINTER(LSTMScratch)]
        self.fn.restype = None
        self.h = np.zeros(hs + 1, np.int8)  # one guard byte past h
        self.acc_x = np.full(rows + 1, POISON, np.int32)
        self.acc_h = np.full(rows + 1, POISON, np.int32)
        self.gates = np.full(1, POISON, np.int32)  # unused by these cells
        self.tv = np.full(max(self.wx.scratch, self.wh.scratch) + 1, POISON, np.int32)
        self.scratch = LSTMScratch(*(_p(a, P32) for a in (self.acc_x, self.acc_h, self.gates, self.tv)))

    def step(self, x: np.ndarray, h: np.ndarray | None = None) -> np.ndarray:
        """One step on int8 x (from state h if given, else the current one); returns a copy of the new h."""
        if h is not None:
            self.h[:-1] = h
        self.h[-1] = 0x5A
        x = _arr(x, np.int8)
        self.fn(ctypes.byref(self.params), _p(x, P8), _p(self.h, P8), ctypes.byref(self.scratch))
        assert self.h[-1] == 0x5A and self.acc_x[-1] == POISON and self.acc_h[-1] == POISON and self.tv[-1] == POISON
        return self.h[:-1].copy()


@pytest.fixture(scope="module", params=["portable", "dsp", "portable-mul16"])
def rt(request: pytest.FixtureRequest) -> Runtime:
    """The runtime library once per code path (DSP on host stand-ins; mul16: the Cortex-M0 high multiply)."""
    fixture = {"portable": "runtime_lib", "dsp": "runtime_lib_dsp", "portable-mul16": "runtime_lib_mul16"}
    runtime = Runtime(request.getfixturevalue(fixture[request.param]))
    assert runtime.dsp_path == (request.param == "dsp")
    return runtime


# ------------------------------------------------------------------------------ golden against Python ints


def _rq(acc: int, rq: Requant) -> int:
    return py_sat(py_rsr(acc * rq.mult, rq.shift), 32)


def py_rsr(v: int, s: int) -> int:
    return v if s == 0 else (v + (1 << (s - 1))) >> s


def py_sat(v: int, bits: int) -> int:
    return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, v))


def _act(z: int, tab: np.ndarray) -> int:
    return int(tab[(z + 32768) // 64])


def py_step(layer, x: np.ndarray, h: np.ndarray) -> list[int]:
    """One step on Python ints, from the formulas of docs/quantization.md (the matrix products from golden)."""
    sat, rsr, hs = py_sat, py_rsr, layer.hidden_size
    gx = [_rq(int(v), layer.rq_x) for v in golden.kp_matrix_s8(layer.wx, x)]
    gh = [_rq(int(v), layer.rq_h) for v in golden.kp_matrix_s8(layer.wh, h)]
    out = []
    for u in range(hs):
        hu, hv = int(h[u]) * 256, int(h[u])
        if cells.of(layer).name == "gru":
            b = [int(v) for v in layer.bias]
            r = _act(sat(gx[u] + gh[u] + b[u], 16), SIG)
            z = _act(sat(gx[hs + u] + gh[hs + u] + b[hs + u], 16), SIG)
            hn = sat(gh[2 * hs + u] + int(layer.bias_hn[u]), 16)
            n = _act(sat(gx[2 * hs + u] + b[2 * hs + u] + rsr(r * hn, 15), 16), TANH)
            v = z * hu + (32768 - z) * n
            out.append(sat(rsr(v, 23), 8))
            continue
        e = layer.state_exp
        if cells.of(layer).name in RNN_CELLS:
            s = gx[u] + gh[u] + int(layer.bias[u])
            assert abs(s) + 128 < 1 << 31  # the int32 proof, checked: C adds the rounding term 2**7
            if cells.of(layer).name == "rnn":
                out.append(sat(rsr(_act(sat(s, 16), TANH), 8), 8))  # tanh Q0.15 -> h Q0.7
            else:
                out.append(sat(rsr(max(s, 0), 8), 8))  # Q(e).(15-e) -> Q(e).(7-e)
            continue
        if cells.of(layer).name == "fastrnn":
            ht = _act(sat(gx[u] + gh[u] + int(layer.bias[u]), 16), TANH)
            a, b = layer.alpha * ht, layer.beta * hv  # h' = sat8(rsr(rsr(alpha h~, 8 + e) + beta h, 15))
        else:
            z = _act(sat(gx[u] + gh[u] + int(layer.bias_z[u]), 16), SIG)
            ht = _act(sat(gx[u] + gh[u] + int(layer.bias_h[u]), 16), TANH)
            g = rsr(layer.zeta * (32768 - z), 15) + layer.nu
            assert 0 <= g <= 65534
            a, b = g * ht, z * hv  # h' = sat8(rsr(rsr(g h~, 8 + e) + z h, 15))
        v = rsr(a, 8 + e) + b
        # the int32 proofs, checked: C adds the rounding terms 2**(7+e) to a and 2**14 to v
        assert a >= -(1 << 31) and a + (1 << (7 + e)) < 1 << 31 and abs(v) + (1 << 14) < 1 << 31
        out.append(sat(rsr(v, 15), 8))
    return out


# GRU, tanh RNN: no exponent
CELL_EXPS = [("gru", 0), ("rnn", 0)] + [(c, e) for c in ("fastrnn", "fastgrnn", "rnn-relu") for e in range(8)]


@pytest.mark.parametrize(("cell", "state_exp"), CELL_EXPS, ids=[f"{c}-e{e}" for c, e in CELL_EXPS])
@pytest.mark.parametrize("mode", ["random", "extreme"])
def test_golden_matches_python_ints_and_batches(cell: str, mode: str, state_exp: int) -> None:
    """Per element on Python ints, every state exponent 0..7 of FastRNN and FastGRNN."""
    rng = np.random.default_rng(2 * ALL.index(cell) + (mode == "extreme"))
    for _ in range(6):
        isz, hsz = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        layer = random_cell(rng, cell, isz, hsz, mode=mode)
        if cell not in ("gru", "rnn"):
            layer = type(layer)(**{**layer.__dict__, "state_exp": state_exp})
        x = random_int8(rng, (5, isz), "random", lo=-128)
        h = random_int8(rng, (5, hsz), mode, lo=-128)
        got = STEP[cell](layer, x, h, SIG, TANH)
        assert got.dtype == np.int8 and got.shape == (5, hsz)
        for k in range(5):
            assert got[k].tolist() == py_step(layer, x[k], h[k])
        # batch dims: [2, 5, ...] gives the same rows as one by one
        got2 = STEP[cell](layer, np.stack([x, x[::-1]]), np.stack([h, h[::-1]]), SIG, TANH)
        assert np.array_equal(got2[0], got) and np.array_equal(got2[1], got[::-1])


# ------------------------------------------------------------------------------ golden against float cells


def _torch_cell(cell: str, isz: int, hsz: int, seed: int):
    """A kpgen.train.nn float cell with KP matrices and non-trivial biases / scalars, and the same layer as float IR."""
    import torch

    from kpgen.train.nn.rnn import layer_class

    torch.manual_seed(seed)
    g = GATES[cell]
    mod = layer_class(cell)(isz, hsz, ((g * hsz // 4, 3), (4, isz // 3)), ((g * hsz // 4, 4), (4, hsz // 4)))
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name.startswith("bias"):
                p.normal_(0.0, 0.5)
        if cell == "fastrnn":
            mod.alpha.fill_(-0.5)  # alpha 0.38, beta 0.62
            mod.beta.fill_(0.5)
        if cell == "fastgrnn":
            mod.zeta.fill_(0.5)  # zeta 0.62, nu 0.018: h stays inside (-1, 1), as Q0.7 needs
            mod.nu.fill_(-4.0)
    np_ = {n: p.detach().double().numpy() for n, p in mod.named_parameters()}
    wx, wh = KPMatrixF(np_["wx.a"], np_["wx.b"]), KPMatrixF(np_["wh.a"], np_["wh.b"])
    sig = lambda v: float(1 / (1 + np.exp(-v)))  # noqa: E731
    if cell == "gru":
        lf = GRULayerF(isz, hsz, wx, wh, np_["bias"], np_["bias_hn"])
    elif cell == "fastrnn":
        lf = FastRNNLayerF(isz, hsz, wx, wh, np_["bias"], sig(np_["alpha"]), sig(np_["beta"]))
    elif cell in RNN_CELLS:
        lf = (ReluRNNLayerF if cell == "rnn-relu" else RNNLayerF)(isz, hsz, wx, wh, np_["bias"])
    else:
        lf = FastGRNNLayerF(isz, hsz, wx, wh, np_["bias_z"], np_["bias_h"], sig(np_["zeta"]), sig(np_["nu"]))
    return mod, lf


@pytest.mark.parametrize("cell", CELLS)
def test_golden_tracks_the_float_cell(cell: str) -> None:
    """Quantized with quantize.quantize_layer, the integer cell follows kpgen.train.nn's float cell over 12 steps: the
    dequantized h stays within 0.06 of the float h (about 8 steps of Q0.7), on outputs that move by ~0.5."""
    import torch

    isz, hsz = 12, 16
    mod, lf = _torch_cell(cell, isz, hsz, seed=7)
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, (40, 12, isz))
    with torch.no_grad():
        out_f, _ = mod(torch.from_numpy(x).float())
    out_f = out_f.double().numpy()
    input_scale = 1.0 / 127
    q = quantize.quantize_layer(lf, input_scale, 0.0, 0)
    assert cells.of(q).name == cell
    xq = golden.quantize_input(x, input_scale)
    h = np.zeros((40, hsz), np.int8)
    err, sq = 0.0, 0.0
    for t in range(12):
        h = STEP[cell](q, xq[:, t], h, SIG, TANH)
        e = h / 128.0 - out_f[:, t]
        err, sq = max(err, float(np.max(np.abs(e)))), sq + float(np.mean(e**2)) / 12
    assert np.std(out_f) > 0.15 and np.max(np.abs(out_f)) < 1  # the outputs move, inside Q0.7's range
    assert err < 0.06 and sq**0.5 < 0.012, (err, sq**0.5)  # measured: max 0.034, RMS 0.0065


# --------------------------------------------------------------------------------------- C against golden


@pytest.mark.parametrize("cell", ALL)
@pytest.mark.parametrize("mode", ["random", "extreme"])
@pytest.mark.parametrize("seed", range(4))
def test_c_steps_equal_golden(rt: Runtime, cell: str, mode: str, seed: int) -> None:
    """Random shapes and factors, several steps carried in C, then steps from random states: equal h."""
    rng = np.random.default_rng(1000 * seed + 10 * ALL.index(cell) + (mode == "extreme"))
    isz, hsz = int(rng.integers(1, 17)), int(rng.integers(1, 17))
    layer = random_cell(rng, cell, isz, hsz, mode=mode, shift32=seed == 1)
    check_c_steps(CCell(rt, layer), cell, layer, rng)


def check_c_steps(cc: CCell, cell: str, layer, rng: np.random.Generator) -> None:
    """Six steps carried in C from a zero state, then eight from random states: h equal to golden's each time."""
    isz, hsz = layer.input_size, layer.hidden_size
    h = np.zeros(hsz, np.int8)
    for t in range(6):
        x = random_int8(rng, (isz,), MODES[t % 4], lo=-128)
        h = STEP[cell](layer, x, h, SIG, TANH)
        assert np.array_equal(cc.step(x), h), t
    for t in range(8):
        x = random_int8(rng, (isz,), MODES[(t + 1) % 4], lo=-128)
        h0 = random_int8(rng, (hsz,), MODES[t % 4], lo=-128)
        assert np.array_equal(cc.step(x, h0), STEP[cell](layer, x, h0, SIG, TANH)), t


@pytest.mark.parametrize("cell", ["fastrnn", "fastgrnn", "rnn-relu"])
@pytest.mark.parametrize("state_exp", [0, 1, 3, 7])
@pytest.mark.parametrize("mode", ["random", "extreme"])
def test_c_state_exponents_equal_golden(rt: Runtime, cell: str, state_exp: int, mode: str) -> None:
    """The run-time shift 8 + state_exp of the state update: steps carried in C and steps from random states,
    with scalars near their ends (alpha + beta > 1 lets h grow, as the exponent is there for)."""
    rng = np.random.default_rng(300 + 10 * state_exp + (cell == "fastgrnn") + 2 * (mode == "extreme")
                                + 5 * (cell == "rnn-relu"))
    for k in range(3):
        scalars = [(14746, 31785), (32767, 32767), tuple(int(v) for v in rng.integers(0, 32768, 2))][k]
        layer = random_cell(rng, cell, 8, 24, mode=mode, scalars=scalars, state_exp=state_exp, shift32=k == 2)
        cc = CCell(rt, layer)
        h = np.zeros(24, np.int8)
        for t in range(8):
            x = random_int8(rng, (8,), MODES[t % 4], lo=-128)
            h = STEP[cell](layer, x, h, SIG, TANH)
            assert np.array_equal(cc.step(x), h), (k, t)
        for t in range(12):
            x = random_int8(rng, (8,), MODES[(t + 1) % 4], lo=-128)
            h0 = random_int8(rng, (24,), MODES[t % 4], lo=-128)
            assert np.array_equal(cc.step(x, h0), STEP[cell](layer, x, h0, SIG, TANH)), (k, t)


@pytest.mark.parametrize("cell", ALL)
def test_c_many_random_states(rt: Runtime, cell: str) -> None:
    """64 units from 60 random (x, h) pairs: enough unit updates that an off-by-one in any rounding term
    (which moves h' only near a rounding boundary of rsr(., 23)) shows up."""
    rng = np.random.default_rng(60 + ALL.index(cell))
    layer = random_cell(rng, cell, 16, 64)
    cc = CCell(rt, layer)
    for t in range(60):
        x = random_int8(rng, (16,), "random", lo=-128)
        h0 = random_int8(rng, (64,), "random", lo=-128)
        assert np.array_equal(cc.step(x, h0), STEP[cell](layer, x, h0, SIG, TANH)), t


@pytest.mark.parametrize("cell", ALL)
def test_c_dense_and_dimension_one_factors(rt: Runtime, cell: str) -> None:
    """Dense matrices (B 1x1: the dense kernel) and factors with a 1 in every position."""
    rng = np.random.default_rng(50 + ALL.index(cell))
    hsz, isz = 8, 6
    rows = GATES[cell] * hsz
    for fx, fh in [((rows, isz, 1, 1), (rows, hsz, 1, 1)), ((1, 1, rows, isz), (rows, hsz, 1, 1)),
                   ((1, isz, rows, 1), (2, 1, rows // 2, hsz))]:  # fmt: skip
        layer = random_cell(rng, cell, isz, hsz, fx=fx, fh=fh)
        cc = CCell(rt, layer)
        for t in range(4):
            x = random_int8(rng, (isz,), MODES[t], lo=-128)
            h0 = random_int8(rng, (hsz,), "random", lo=-128)
            assert np.array_equal(cc.step(x, h0), STEP[cell](layer, x, h0, SIG, TANH)), (fx, fh, t)


@pytest.mark.parametrize("cell", ALL)
def test_c_quantized_layers_with_three_factors_and_hkp(rt: Runtime, cell: str) -> None:
    """Float layers quantized by quantize.quantize_layer, Wx with three Kronecker factors and Wh hybrid (dense rows
    on top of a KP part): the C step equals the golden one."""
    rng = np.random.default_rng(80 + ALL.index(cell))
    g, hsz, isz = GATES[cell], 8, 12
    wx = KPMatrixF(rng.normal(0, 0.5, (g * 2, 2)), rng.normal(0, 0.5, (2, 3)), (rng.normal(0, 0.5, (2, 2)),))
    wh = KPMatrixF(rng.normal(0, 0.5, (g * 2, 2)), rng.normal(0, 0.5, (2, 4)), (), rng.normal(0, 0.5, (g * 4, hsz)))
    base = _float_layer(rng, cell, isz, hsz)
    lf = type(base)(**{**base.__dict__, "wx": wx, "wh": wh})
    q = quantize.quantize_layer(lf, 0.02, 0.0, 0)
    assert q.wx.rest and q.wh.top is not None
    cc = CCell(rt, q)
    for t in range(10):
        x = random_int8(rng, (isz,), MODES[t % 4], lo=-128)
        h0 = random_int8(rng, (hsz,), MODES[(t + 1) % 4], lo=-128)
        assert np.array_equal(cc.step(x, h0), STEP[cell](q, x, h0, SIG, TANH)), t


SCALARS = [(0, 0), (0, 32767), (32767, 0), (32767, 32767), (16384, 1)]


@pytest.mark.parametrize("cell", ALL)
@pytest.mark.parametrize("scalars", SCALARS, ids=[f"{a}-{b}" for a, b in SCALARS])
def test_c_saturation_edges(rt: Runtime, cell: str, scalars: tuple[int, int]) -> None:
    """Biases at their int32 headroom, extreme weights and shifts, h all -128 or 127, scalars 0 and 32767
    (GRU: the same layers; the scalars only vary the seed): the largest int32 intermediates, equal bits."""
    rng = np.random.default_rng(70 + SCALARS.index(scalars) + 10 * ALL.index(cell))
    saturated = set()
    for k in range(6):
        layer = random_cell(rng, cell, 6, 8, mode="extreme", scalars=scalars)
        cc = CCell(rt, layer)
        for hmode in ("min", "max", "extreme"):
            for xmode in MODES:
                x = random_int8(rng, (6,), xmode, lo=-128)
                h0 = random_int8(rng, (8,), hmode, lo=-128)
                want = STEP[cell](layer, x, h0, SIG, TANH)
                assert np.array_equal(cc.step(x, h0), want), (k, hmode, xmode)
                saturated |= set(want.tolist()) & {-128, 127}
    if cell != "fastrnn" or sum(scalars) > 32768:  # FastRNN with alpha + beta <= 1 cannot leave (-1, 1)
        assert saturated, "no step reached the ends of int8"


def test_c_int32_extremes_by_construction(rt: Runtime) -> None:
    """The proofs' worst cases: FastGRNN with zeta = nu = 32767, z at its smallest and h~ = +-1 (g h~ + z h near
    2**31), FastRNN with alpha = beta = 32767 and h~, h at the ends, GRU with z = 0-ish and n = -1."""
    rng = np.random.default_rng(90)
    cases = [("fastgrnn", (32767, 32767), e) for e in (0, 7)] + [("fastrnn", (32767, 32767), e) for e in (0, 7)]
    for cell, scal, e in cases + [("gru", (0, 0), 0)]:
        layer = random_cell(rng, cell, 4, 4, scalars=scal, state_exp=e)
        layer = type(layer)(**{**layer.__dict__, "rq_x": Requant(1, 32), "rq_h": Requant(1, 32)})  # gx = gh = 0
        rows = GATES[cell] * 4
        for sign in (1, -1):
            if cell == "gru":  # r = z = sigmoid(-8), n = tanh(sign * 8)
                b = np.concatenate([np.full(8, -(1 << 20)), np.full(4, sign << 20)])
                layer = GRULayerQ(**{**layer.__dict__, "bias": b.astype(np.int32)})
            elif cell == "fastrnn":
                layer = FastRNNLayerQ(**{**layer.__dict__, "bias": np.full(4, sign << 20, np.int32)})
            else:  # z = sigmoid(-8) (smallest), h~ = tanh(sign * 8)
                layer = FastGRNNLayerQ(**{**layer.__dict__, "bias_z": np.full(4, -(1 << 20), np.int32),
                                          "bias_h": np.full(4, sign << 20, np.int32)})  # fmt: skip
            assert limits.kernel_limits(layer) == [] and rows == layer.wx.shape[0]
            cc = CCell(rt, layer)
            for hv in (-128, 127):
                x = np.zeros(4, np.int8)
                h0 = np.full(4, hv, np.int8)
                want = STEP[cell](layer, x, h0, SIG, TANH)
                assert np.array_equal(cc.step(x, h0), want), (cell, e, sign, hv)
                if e == 0 and (cell == "fastgrnn" or (cell == "fastrnn" and (hv > 0) == (sign > 0))):
                    assert np.all(want == (127 if sign > 0 else -128)), (cell, sign, hv, want)


# ---------------------------------------------------------------------------------------- kernel limits


@pytest.mark.parametrize("cell", CELLS)
def test_kernel_limits_catch_each_rule(cell: str) -> None:
    rng = np.random.default_rng(4)
    layer = random_cell(rng, cell, 6, 4)
    d = layer.__dict__
    assert "shift 1..32" in limits.kernel_limits(type(layer)(**{**d, "rq_x": Requant(layer.rq_x.mult, 33)}))[0]
    assert "leaves int32" in limits.kernel_limits(type(layer)(**{**d, "rq_h": Requant(1, 1)}))[0]
    big = lambda n: np.full(n, I31, np.int32)  # noqa: E731
    if cell == "gru":
        b = np.concatenate([np.zeros(8), np.full(4, I31 - 32768 - _worst(layer.wx, layer.rq_x))]).astype(np.int32)
        assert limits.kernel_limits(GRULayerQ(**{**d, "bias": b})) == []  # exactly at the n-gate limit
        b[-1] += 1
        assert "n gate sum" in limits.kernel_limits(GRULayerQ(**{**d, "bias": b}))[0]
        assert "the r and z gate sum" in limits.kernel_limits(GRULayerQ(**{**d, "bias": big(12)}))[0]
        assert "recurrent n gate sum" in limits.kernel_limits(GRULayerQ(**{**d, "bias_hn": big(4)}))[0]
    elif cell == "fastrnn":
        assert "gate sum" in limits.kernel_limits(FastRNNLayerQ(**{**d, "bias": big(4)}))[0]
        assert "alpha = 32768" in limits.kernel_limits(FastRNNLayerQ(**{**d, "alpha": 32768}))[0]
        assert "beta = -1" in limits.kernel_limits(FastRNNLayerQ(**{**d, "beta": -1}))[0]
        assert limits.kernel_limits(FastRNNLayerQ(**{**d, "state_exp": 7})) == []
        assert "state_exp = 8 outside 0..7" in limits.kernel_limits(FastRNNLayerQ(**{**d, "state_exp": 8}))[0]
    else:
        assert "gate sum" in limits.kernel_limits(FastGRNNLayerQ(**{**d, "bias_h": big(4)}))[0]
        assert "gate sum" in limits.kernel_limits(FastGRNNLayerQ(**{**d, "bias_z": -big(4)}))[0]
        assert "zeta" in limits.kernel_limits(FastGRNNLayerQ(**{**d, "zeta": 40000}))[0]
        assert "nu" in limits.kernel_limits(FastGRNNLayerQ(**{**d, "nu": -5}))[0]
        assert "state_exp = -1 outside 0..7" in limits.kernel_limits(FastGRNNLayerQ(**{**d, "state_exp": -1}))[0]
    bi = BiLayerQ(fwd=layer, bwd=type(layer)(**{**d, "rq_x": Requant(layer.rq_x.mult, 33)}))
    assert limits.kernel_limits(BiLayerQ(fwd=layer, bwd=layer)) == []
    problems = limits.kernel_limits(bi)
    assert len(problems) == 1 and problems[0].startswith("backward Wx: requantizer")


# ------------------------------------------------------------------------------------------- quantizer


def _float_layer(rng: np.random.Generator, cell: str, isz: int = 12, hsz: int = 8, **kw):
    """A float layer (isz even, hsz a multiple of 4) with KP matrices; kw overrides bias, alpha or zeta."""
    g = GATES[cell]
    wx = KPMatrixF(a=rng.normal(0, 0.3, (g * hsz // 2, 2)), b=rng.normal(0, 0.3, (2, isz // 2)))
    wh = KPMatrixF(a=rng.normal(0, 0.3, (g * hsz // 2, 4)), b=rng.normal(0, 0.3, (2, hsz // 4)))
    if cell == "gru":
        return GRULayerF(isz, hsz, wx, wh, kw.get("bias", rng.normal(0, 0.5, 3 * hsz)), rng.normal(0, 0.5, hsz))
    if cell == "fastrnn":
        return FastRNNLayerF(isz, hsz, wx, wh, kw.get("bias", rng.normal(0, 0.5, hsz)), kw.get("alpha", 0.1), 0.9)
    if cell in RNN_CELLS:
        layer_type = ReluRNNLayerF if cell == "rnn-relu" else RNNLayerF
        return layer_type(isz, hsz, wx, wh, kw.get("bias", rng.normal(0, 0.5, hsz)))
    return FastGRNNLayerF(isz, hsz, wx, wh, kw.get("bias", rng.normal(0, 0.5, hsz)), rng.normal(0, 0.5, hsz),
                          kw.get("zeta", 0.8), 0.05)  # fmt: skip


@pytest.mark.parametrize("cell", CELLS)
def test_quantize_cell_fields(cell: str) -> None:
    rng = np.random.default_rng(21)
    lf = _float_layer(rng, cell)
    q = quantize.quantize_layer(lf, 0.02, float("nan") if cell == "gru" else 0.7, 3)  # GRU never reads the range
    assert getattr(q, "state_exp", 0) == 0
    assert cells.of(q).name == cell and limits.kernel_limits(q) == []
    assert q.rq_x.real == pytest.approx(q.wx.unit * 0.02 * 4096, rel=0, abs=2.0**-33)  # mult rounded at shift 32
    assert q.rq_h.real == pytest.approx(q.wh.unit / 128 * 4096, rel=0, abs=2.0**-33)
    assert q.rq_x.mult < 2**31 and q.rq_x.shift == 32 and q.input_scale == 0.02
    names = {"gru": ("bias", "bias_hn"), "fastrnn": ("bias",), "fastgrnn": ("bias_z", "bias_h")}[cell]
    for n in names:
        v = getattr(q, n)
        assert v.dtype == np.int32 and np.array_equal(v, np.round(getattr(lf, n) * 4096).astype(np.int32))
    for n in {"fastrnn": ("alpha", "beta"), "fastgrnn": ("zeta", "nu")}.get(cell, ()):
        assert getattr(q, n) == round(getattr(lf, n) * 32768) and isinstance(getattr(q, n), int)
    # one accumulator unit is worth m.unit per input unit: the dequantized products are the float ones
    x = rng.integers(-128, 128, (20, 12)).astype(np.int8)
    want = x.astype(np.float64) @ lf.wx.dense().T
    assert np.max(np.abs(golden.kp_matrix_s8(q.wx, x) * q.wx.unit - want)) < 0.02 * np.max(np.abs(want))


def test_quantize_scalars_edges_and_bidirectional() -> None:
    rng = np.random.default_rng(22)
    assert fastrnn_cell.quantize_fastrnn(_float_layer(rng, "fastrnn", alpha=1.0), 0.02, 0).alpha == 32767
    assert fastrnn_cell.quantize_fastrnn(_float_layer(rng, "fastrnn", alpha=0.0), 0.02, 0).alpha == 0
    assert fastgrnn_cell.quantize_fastgrnn(_float_layer(rng, "fastgrnn", zeta=0.99999), 0.02, 0).zeta == 32767
    fwd, bwd = _float_layer(rng, "gru"), _float_layer(rng, "gru")
    bq = quantize.quantize_layer(BiLayerF(fwd, bwd), 0.05, 1.0, 1)
    assert isinstance(bq, BiLayerQ) and bq.fwd.input_scale == bq.bwd.input_scale == 0.05
    assert np.array_equal(bq.bwd.bias_hn, gru_cell.quantize_gru(bwd, 0.05, 1).bias_hn)
    assert limits.kernel_limits(bq) == []


def test_quantize_refusals() -> None:
    rng = np.random.default_rng(23)
    with pytest.raises(KpgenError, match=r"^layer 2: alpha = 1\.5 is outside 0\.\.1; give it after its sigmoid"):
        quantize.quantize_layer(_float_layer(rng, "fastrnn", alpha=1.5), 0.02, 0.0, 2)
    with pytest.raises(KpgenError, match=r"zeta = nan is outside 0\.\.1"):
        quantize.quantize_layer(_float_layer(rng, "fastgrnn", zeta=float("nan")), 0.02, 0.0, 0)
    with pytest.raises(KpgenError, match=r"^layer 1 \(backward\): a bias does not fit int32 in Q3\.12"):
        bad = _float_layer(rng, "gru", bias=np.full(24, 1e6))
        quantize.quantize_layer(BiLayerF(_float_layer(rng, "gru"), bad), 0.02, 0.0, 1)
    with pytest.raises(KpgenError, match=r"^layer 0: the gate sum can reach \d+, outside int32; the int32 kernels"):
        quantize.quantize_layer(_float_layer(rng, "fastrnn", bias=np.full(8, 524287.9)), 0.02, 0.0, 0)
    with pytest.raises(KpgenError, match=r"^layer 4: DenseF is not a layer kpgen can quantize"):
        quantize.quantize_layer(DenseF(np.ones((2, 2)), np.zeros(2)), 0.02, 0.0, 4)


def test_quantize_model_mixes_cells_and_ignores_state_range() -> None:
    """quantize_model dispatches per layer; layers after the first read h (here Q0.7); calibration cell_absmax is
    not used by GRU layers (a GRU layer with a 'cell range' an LSTM would refuse still quantizes)."""
    rng = np.random.default_rng(24)
    l0 = _float_layer(rng, "gru", isz=12, hsz=8)
    l1 = _float_layer(rng, "fastgrnn", isz=8, hsz=8)
    lstm = LSTMLayerF(8, 8, KPMatrixF(rng.normal(0, 0.3, (16, 4)), rng.normal(0, 0.3, (2, 2))),
                      KPMatrixF(rng.normal(0, 0.3, (16, 4)), rng.normal(0, 0.3, (2, 2))),
                      rng.normal(0, 0.3, 32))
    head = DenseF(rng.normal(0, 0.5, (3, 8)), np.zeros(3))
    model = ModelF(12, 3, (l0, l1, lstm), head, Calibration(input_absmax=2.0, cell_absmax=(1e9, 0.9, 2.5)))
    qm = quantize.quantize_model(model)
    assert [cells.of(l).name for l in qm.layers] == ["gru", "fastgrnn", "lstm"]
    assert qm.layers[0].input_scale == pytest.approx(2.0 / 127) and qm.layers[1].input_scale == 1 / 128
    assert qm.layers[2].cell_frac == 12
    bad = ModelF(12, 3, (l0, l1, lstm), head, Calibration(input_absmax=2.0, cell_absmax=(1.0, 1.0, 1e9)))
    with pytest.raises(KpgenError, match="too large for int16"):
        quantize.quantize_model(bad)


# ------------------------------------------------------------------------------------- state exponent


def test_state_exp_from_calibrated_range() -> None:
    """e = 0 up to |h| = 1, else ceil(log2(state_absmax)); refused above 7 or for a non-finite range."""
    for v, e in [(0.0, 0), (0.5, 0), (1.0, 0), (1.0001, 1), (2.0, 1), (3.19, 2), (4.0, 2), (100.0, 7), (128.0, 7)]:
        assert quantize.state_exp_for(v, 0) == e, v
    want = r"^layer 3: calibrated state \|h\| up to 200 needs 2\*\*8, more than the 2\*\*7"
    with pytest.raises(KpgenError, match=want):
        quantize.state_exp_for(200.0, 3)
    with pytest.raises(KpgenError, match=r"^layer 0: calibration state_absmax nan is not a finite number; recalibrate"):
        quantize.quantize_layer(_float_layer(np.random.default_rng(0), "fastrnn"), 0.02, float("nan"), 0)
    rng = np.random.default_rng(31)
    for cell in ("fastrnn", "fastgrnn"):
        lf = _float_layer(rng, cell)
        q = quantize.quantize_layer(lf, 0.02, 3.19, 1)
        assert q.state_exp == 2 and ir.state_scale(q) == 2.0**-5 and limits.kernel_limits(q) == []
        assert q.rq_h.real == pytest.approx(q.wh.unit * 2.0**-5 * 4096, rel=0, abs=2.0**-30)  # Wh reads h at 2**(e-7)
        q0 = quantize.quantize_layer(lf, 0.02, 0.5, 1)
        assert q0.state_exp == 0 and q0.rq_h.real == pytest.approx(q0.wh.unit / 128 * 4096, rel=0, abs=2.0**-33)
        assert np.array_equal(q.wh.a, q0.wh.a) and q.rq_x == q0.rq_x  # only the Wh requantizer moves
        with pytest.raises(KpgenError, match=r"^layer 2: calibrated state \|h\| up to 200 needs 2\*\*8"):
            quantize.quantize_layer(lf, 0.02, 200.0, 2)
    gru = quantize.quantize_layer(_float_layer(rng, "gru"), 0.02, 3.19, 0)  # GRU and LSTM h stay Q0.7
    assert not hasattr(gru, "state_exp") and ir.state_scale(gru) == 1 / 128


def test_bidirectional_directions_share_state_exp() -> None:
    """Both directions take the exponent of the calibrated max over both (one number per layer): the next layer
    reads [fwd h, bwd h] with one scale."""
    rng = np.random.default_rng(32)
    for cell in ("fastrnn", "fastgrnn"):
        bq = quantize.quantize_layer(BiLayerF(_float_layer(rng, cell), _float_layer(rng, cell)), 0.02, 5.0, 1)
        assert bq.fwd.state_exp == bq.bwd.state_exp == 3 and ir.state_scale(bq) == 2.0**-4
        assert limits.kernel_limits(bq) == []
        with pytest.raises(KpgenError, match=r"^layer 1: calibrated state"):
            quantize.quantize_layer(BiLayerF(_float_layer(rng, cell), _float_layer(rng, cell)), 0.02, 300.0, 1)


def test_next_layer_and_head_read_the_state_scale() -> None:
    """quantize_model: the layer after a FastRNN with e = 2 has input scale 2**-5, after a GRU 1/128; the head's
    out_scale is w_scale times the last layer's state scale (here FastGRNN, e = 1)."""
    rng = np.random.default_rng(33)
    layers = (_float_layer(rng, "fastrnn", isz=12, hsz=8), _float_layer(rng, "gru", isz=8, hsz=8),
              _float_layer(rng, "fastgrnn", isz=8, hsz=8))  # fmt: skip
    head = DenseF(rng.normal(0, 0.5, (3, 8)), rng.normal(0, 0.1, 3))
    qm = quantize.quantize_model(ModelF(12, 3, layers, head, Calibration(2.0, (3.19, 0.9, 1.5))))
    assert [getattr(l, "state_exp", None) for l in qm.layers] == [2, None, 1]
    assert qm.layers[1].input_scale == 2.0**-5 and qm.layers[2].input_scale == 1 / 128
    sw = float(np.max(np.abs(head.weight))) / 127
    assert qm.head.out_scale == pytest.approx(sw * 2.0**-6, rel=1e-12)
    assert quantize.quantize_dense(head).out_scale == pytest.approx(sw / 128, rel=1e-12)  # default: Q0.7
    assert np.array_equal(qm.head.weight, quantize.quantize_dense(head).weight)
    assert np.array_equal(qm.head.bias, np.round(head.bias / qm.head.out_scale).astype(np.int32))


def _growing_fastrnn(seed: int) -> tuple[FastRNNLayerF, np.ndarray]:
    """A random float FastRNN with alpha 0.45, beta 0.97 (alpha + beta > 1: |h| grows past 1) and inputs."""
    rng = np.random.default_rng(seed)
    isz, hsz = 8, 16
    wx = KPMatrixF(rng.normal(0, 0.5, (4, 2)), rng.normal(0, 0.5, (4, 4)))
    wh = KPMatrixF(rng.normal(0, 0.3, (4, 4)), rng.normal(0, 0.3, (4, 4)))
    lf = FastRNNLayerF(isz, hsz, wx, wh, rng.normal(0, 0.3, hsz), 0.45, 0.97)
    return lf, rng.uniform(-1, 1, (64, 10, isz))


def test_state_exponent_keeps_a_growing_fastrnn_on_track() -> None:
    """alpha + beta > 1 drives the float |h| to ~3: with the calibrated exponent the integer h (dequantized with
    the state scale) tracks the float h closely; forced to Q0.7 (e = 0) it clips at 1 and is far off."""
    lf, x = _growing_fastrnn(5)
    out_f = floatmodel.run_layer(lf, x)[0]
    absmax = float(np.max(np.abs(out_f)))
    assert 2.0 < absmax < 4.0
    input_scale = 1.0 / 127
    xq = golden.quantize_input(x, input_scale)
    errs = {}
    for e in (None, 0):
        q = quantize.quantize_layer(lf, input_scale, absmax, 0, state_exp=e)
        h = np.zeros((x.shape[0], lf.hidden_size), np.int8)
        err, sq = 0.0, 0.0
        for t in range(x.shape[1]):
            h = fastrnn_cell.kp_fastrnn_step_s8(q, xq[:, t], h, SIG, TANH)
            d = h * ir.state_scale(q) - out_f[:, t]
            err, sq = max(err, float(np.max(np.abs(d)))), sq + float(np.mean(d**2)) / x.shape[1]
        errs[q.state_exp] = (err, sq**0.5)
    assert set(errs) == {0, 2}
    # measured: e = 2 max 0.109 (3.5 steps of 1/32), RMS 0.021; e = 0 max 2.03, RMS 0.21
    assert errs[2][0] < 0.15 and errs[2][1] < 0.03, errs
    assert errs[0][0] > 1.5 and errs[0][1] > 0.15 and errs[0][1] > 5 * errs[2][1], errs


# ------------------------------------------------------------------------------------ plain RNN (tanh, relu)


@pytest.mark.parametrize("cell", RNN_CELLS)
def test_rnn_golden_tracks_the_float_cell(cell: str) -> None:
    """The integer plain RNN follows kpgen.train.nn's float cell (torch.nn.RNN's equations) over 12 steps, h
    dequantized with its state scale: tanh with h Q0.7, relu with the exponent of the calibrated max |h|."""
    import torch

    isz, hsz = 12, 16
    mod, lf = _torch_cell(cell, isz, hsz, seed=7)
    x = np.random.default_rng(11).uniform(-1, 1, (40, 12, isz))
    with torch.no_grad():
        out_f = mod(torch.from_numpy(x).float())[0].double().numpy()
    assert np.allclose(floatmodel.run_layer(lf, x)[0], out_f, atol=1e-5)  # the float IR step is torch's
    absmax = float(np.max(np.abs(out_f)))
    q = quantize.quantize_layer(lf, 1.0 / 127, absmax, 0)
    assert cells.of(q).name == cell and limits.kernel_limits(q) == []
    assert q.state_exp == (quantize.state_exp_for(absmax, 0) if cell == "rnn-relu" else 0)
    xq = golden.quantize_input(x, 1.0 / 127)
    h = np.zeros((40, hsz), np.int8)
    err, sq = 0.0, 0.0
    for t in range(12):
        h = STEP[cell](q, xq[:, t], h, SIG, TANH)
        d = h * ir.state_scale(q) - out_f[:, t]
        err, sq = max(err, float(np.max(np.abs(d)))), sq + float(np.mean(d**2)) / 12
    assert np.std(out_f) > 0.15, np.std(out_f)  # the outputs move
    step = ir.state_scale(q)
    # measured: tanh max 0.075 (9.6 steps of 1/128), RMS 1.2 steps; relu (|h| up to 6.3, e = 3) max 0.64 (10.2
    # steps of 1/16), RMS 0.6 steps: the recurrence carries every step's rounding on, with no leak to damp it
    assert err < 14 * step and sq**0.5 < 2 * step, (err / step, sq**0.5 / step)


def test_rnn_kernel_limits_catch_each_rule() -> None:
    rng = np.random.default_rng(5)
    for cell in RNN_CELLS:
        layer = random_cell(rng, cell, 6, 4)
        d = layer.__dict__
        wx, wh = _worst(layer.wx, layer.rq_x), _worst(layer.wh, layer.rq_h)
        edge = I31 - wx - wh - (128 if cell == "rnn-relu" else 0)  # the largest |bias| the gate sum allows
        assert limits.kernel_limits(type(layer)(**{**d, "bias": np.full(4, edge, np.int32)})) == []
        over = type(layer)(**{**d, "bias": np.full(4, edge + 1, np.int32)})
        assert "the gate sum can reach" in limits.kernel_limits(over)[0]
        assert "shift 1..32" in limits.kernel_limits(type(layer)(**{**d, "rq_x": Requant(layer.rq_x.mult, 33)}))[0]
    relu = random_cell(rng, "rnn-relu", 6, 4)
    assert limits.kernel_limits(ReluRNNLayerQ(**{**relu.__dict__, "state_exp": 7})) == []
    assert "state_exp = 8 outside 0..7" in limits.kernel_limits(ReluRNNLayerQ(**{**relu.__dict__, "state_exp": 8}))[0]
    tanh = random_cell(rng, "rnn", 6, 4)
    assert limits.kernel_limits(RNNLayerQ(**{**tanh.__dict__, "state_exp": 1})) == [
        "state_exp = 1 of a tanh RNN is not 0"]


def test_rnn_quantizer_units() -> None:
    """tanh: bias and pre-activation Q3.12, Wh reads h at 1/128; relu: Q(e).(15-e), Wh reads h at 2**(e-7), so
    the Wh requantizer is wh.unit * 256 whatever e is; the next layer and the head read h at 2**(e-7)."""
    rng = np.random.default_rng(41)
    tanh = rnn_cell.quantize_rnn(_float_layer(rng, "rnn"), 0.02, 0)
    assert isinstance(tanh, RNNLayerQ) and not isinstance(tanh, ReluRNNLayerQ) and tanh.state_exp == 0
    assert tanh.rq_x.real == pytest.approx(tanh.wx.unit * 0.02 * 4096, rel=0, abs=2.0**-33)
    assert tanh.rq_h.real == pytest.approx(tanh.wh.unit / 128 * 4096, rel=0, abs=2.0**-33)
    lf = _float_layer(rng, "rnn-relu")
    for absmax, e in [(0.5, 0), (3.19, 2), (100.0, 7)]:
        q = quantize.quantize_layer(lf, 0.02, absmax, 1)
        assert isinstance(q, ReluRNNLayerQ) and q.state_exp == e and ir.state_scale(q) == 2.0 ** (e - 7)
        assert np.array_equal(q.bias, np.round(lf.bias * 2.0 ** (15 - e)).astype(np.int32))
        assert q.rq_x.real == pytest.approx(q.wx.unit * 0.02 * 2.0 ** (15 - e), rel=0, abs=2.0**-33)
        assert q.rq_h.real == pytest.approx(q.wh.unit * 256, rel=0, abs=2.0**-33)  # mult rounded at shift 32
    with pytest.raises(KpgenError, match=r"^layer 2: calibrated state \|h\| up to 200 needs 2\*\*8"):
        quantize.quantize_layer(lf, 0.02, 200.0, 2)
    bq = quantize.quantize_layer(BiLayerF(_float_layer(rng, "rnn-relu"), _float_layer(rng, "rnn-relu")), 0.02, 5.0, 1)
    assert bq.fwd.state_exp == bq.bwd.state_exp == 3 and limits.kernel_limits(bq) == []


def test_rnn_relu_c_int32_extremes(rt: Runtime) -> None:
    """The relu sum at its int32 edge (bias + worst products + 2**7 just below 2**31) and at the most negative end:
    C equals golden, and the ends of h are reached (127 for a huge positive sum, 0 for a negative one)."""
    rng = np.random.default_rng(91)
    for e in (0, 7):
        layer = random_cell(rng, "rnn-relu", 4, 4, mode="extreme", state_exp=e)
        wx, wh = _worst(layer.wx, layer.rq_x), _worst(layer.wh, layer.rq_h)
        for sign in (1, -1):
            bias = np.full(4, sign * (I31 - wx - wh - 128), np.int32)
            q = ReluRNNLayerQ(**{**layer.__dict__, "bias": bias})
            assert limits.kernel_limits(q) == []
            cc = CCell(rt, q)
            for hv in (-128, 127):
                for xmode in ("min", "max"):
                    x = random_int8(rng, (4,), xmode, lo=-128)
                    h0 = np.full(4, hv, np.int8)
                    want = STEP["rnn-relu"](q, x, h0, SIG, TANH)
                    assert np.array_equal(cc.step(x, h0), want), (e, sign, hv, xmode)
                    assert np.all(want == (127 if sign > 0 else 0)), (e, sign, want)


def test_registry_refusals() -> None:
    """kpgen.cells: an unknown name and a layer type no cell registers are one-line errors naming the cells."""
    with pytest.raises(KpgenError,
                       match=r"^unknown cell 'elman'; use one of lstm, gru, fastrnn, fastgrnn, rnn, rnn-relu$"):
        cells.get("elman")
    with pytest.raises(KpgenError,
                       match=r"^DenseF is not a layer of any kpgen cell; build layers of one of the cells "):
        cells.of(DenseF(np.ones((2, 2)), np.zeros(2)))
    assert cells.find(DenseF(np.ones((2, 2)), np.zeros(2))) is None
    # every registered name round-trips, and every layer type maps back to its cell
    for name, cell in cells.REGISTRY.items():
        assert cells.get(name) is cell and cell.name == name and cells.GATES[name] == cell.gates
    assert cells.of(_float_layer(np.random.default_rng(0), "rnn-relu")).name == "rnn-relu"
    bi = BiLayerF(_float_layer(np.random.default_rng(0), "rnn"), _float_layer(np.random.default_rng(1), "rnn"))
    assert cells.of(bi).name == "rnn"
