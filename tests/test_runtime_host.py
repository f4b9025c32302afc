"""The C runtime built for the host, against the golden model: bit-exact (np.array_equal), both code paths."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest
from factories import random_int8, random_kp, random_layer, random_model, t_shift_for
from runtime_ctypes import CFLAGS, RUNTIME_DIR, Kron, LSTMParams, Runtime

from kpgen.cells import lstm as lstm_cell
from kpgen.cells.lstm import LSTMLayerQ
from kpgen.ir import Requant
from kpgen.quant import limits
from kpgen.reference import golden

SIG = golden.make_table("sigmoid")
TANH = golden.make_table("tanh")
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
MODES = ("random", "min", "max", "extreme")


@pytest.fixture(scope="module", params=["portable", "dsp", "portable-mul16"])
def rt(request: pytest.FixtureRequest) -> Runtime:
    """The runtime library, once per code path (the DSP path runs on host stand-ins for the intrinsics; the
    mul16 build is the portable path with the Cortex-M0's 16 x 16 high multiply)."""
    fixture = {"portable": "runtime_lib", "dsp": "runtime_lib_dsp", "portable-mul16": "runtime_lib_mul16"}
    runtime = Runtime(request.getfixturevalue(fixture[request.param]))
    assert runtime.dsp_path == (request.param == "dsp")
    return runtime


def test_params_struct_layout(rt: Runtime) -> None:
    assert rt.lib.kpt_sizeof_lstm_params() == ctypes.sizeof(LSTMParams)
    assert rt.lib.kpt_sizeof_kron() == ctypes.sizeof(Kron)


def test_vector_order(rt: Runtime) -> None:
    """The DSP path pairs (v0, v2), (v1, v3) for packed matrices wider than 2 columns; others keep order."""
    for cols_p in (2, 4, 8, 12, 16):
        order = [rt.vslot(i, cols_p) for i in range(cols_p)]
        assert sorted(order) == list(range(cols_p))
        assert [rt.vslot(j, cols_p) for j in order] == list(range(cols_p))  # its own inverse
        if rt.dsp_path and cols_p > 2:
            assert order[:4] == [0, 2, 1, 3]
        else:
            assert order == list(range(cols_p))


# ------------------------------------------------------------------------------------------ scalar helpers


def test_rsr_sat_helpers(rt: Runtime) -> None:
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.integers(I32_MIN, I32_MAX, 2000, endpoint=True), [I32_MIN, I32_MIN + 1, -1, 0, 1, I32_MAX]])
    v = v.astype(np.int32)
    for s in range(32):
        assert np.array_equal(rt.rsr32(v, s), golden.rsr(v, s)), s
    small = np.concatenate([v, np.arange(-70000, 70000, 7)]).astype(np.int32)
    assert np.array_equal(rt.sat8(small), golden.sat(small, 8))
    assert np.array_equal(rt.sat16(small), golden.sat(small, 16))
    wide = np.array([-(1 << 62), I32_MIN - 1, I32_MIN, 0, I32_MAX, I32_MAX + 1, 1 << 62], np.int64)
    assert np.array_equal(rt.sat32(wide), golden.sat(wide, 32))
    s16, s8 = rt.ssat(v)  # SSAT on the DSP path
    assert np.array_equal(s16, golden.sat(v, 16)) and np.array_equal(s8, golden.sat(v, 8))


def test_rounding_shifts_out_of_range_are_defined(rt: Runtime) -> None:
    """kp_rsr32 and kp_requantize have a defined, exact result for every shift: s <= 0 means no rounding, a shift
    past the word gives (v + 2^(s-1)) >> s = 0, as in exact arithmetic."""
    v = np.array([I32_MIN, I32_MIN + 1, -(1 << 30), -2, -1, 0, 1, 2, 1 << 30, I32_MAX], np.int32)
    for s in (-40, -1, 0, 31, 32, 33, 63, 64, 1000):
        want = [int(e) if s <= 0 else (int(e) + (1 << (s - 1))) >> s for e in v]
        assert rt.rsr32(v, s).tolist() == want, s
    for mult in (1, 3, (1 << 31) - 1, -(1 << 31)):  # I32_MIN * I32_MIN = 2^62 rounds to 1 at shift 63
        for shift in (-5, 0, 1, 62, 63, 64, 200):
            exact = [int(e) * mult if shift <= 0 else (int(e) * mult + (1 << (shift - 1))) >> shift for e in v]
            assert rt.requantize(v, mult, shift).tolist() == [max(I32_MIN, min(I32_MAX, e)) for e in exact], shift


def test_requantize(rt: Runtime) -> None:
    rng = np.random.default_rng(2)
    acc_rand = rng.integers(I32_MIN, I32_MAX, 500, endpoint=True).astype(np.int32)
    acc_edge = np.array([I32_MIN, I32_MIN + 1, -(1 << 30), -2, -1, 0, 1, 2, 1 << 30, I32_MAX - 1, I32_MAX], np.int32)
    mults = [1 << 30, (1 << 30) + 1, (1 << 31) - 1] + [int(m) for m in rng.integers(1 << 30, 1 << 31, 6)]
    for mult in mults:
        for shift in list(range(1, 63)):
            acc = acc_edge if shift % 4 else np.concatenate([acc_edge, acc_rand])
            got = rt.requantize(acc, mult, shift)
            assert np.array_equal(got, golden.kp_requantize(acc, mult, shift)), (mult, shift)


@pytest.mark.parametrize("shift", list(range(1, 33)))
def test_gate_requantize_32bit(rt: Runtime, shift: int) -> None:
    """The gates' 32-bit requantizer (SMMLAR on the DSP path) equals the int64 spec wherever the quantizer
    allows it: shift 1..32, |acc| < 2**(shift-1), any mult in 1..2**31-1, plus an int32 addend."""
    rng = np.random.default_rng(40 + shift)
    lim = 1 << (shift - 1)
    acc = np.concatenate([[-lim, -lim + 1, -1, 0, 1, lim - 1], rng.integers(-lim, lim, 300)])
    acc = acc[(acc >= -lim) & (acc < lim)].astype(np.int32)  # acc * 2**(32-shift) in int32
    for mult in [1, 2, 12345, (1 << 30) - 1, 1 << 30, (1 << 31) - 1, *rng.integers(1, 1 << 31, 4).tolist()]:
        want = golden.kp_requantize(acc, int(mult), shift).astype(np.int64)
        for c in (0, -(1 << 29), (1 << 29) + 7):
            got = rt.gate_rq(acc, int(mult), shift, c)
            assert np.array_equal(got, want + c), (mult, shift, c)


# ----------------------------------------------------------------------------------------------- activations


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_activation_exhaustive(rt: Runtime, kind: str) -> None:
    z = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)
    tab = golden.make_table(kind)
    c_fn, g_fn = (rt.sigmoid, golden.kp_sigmoid_s16) if kind == "sigmoid" else (rt.tanh, golden.kp_tanh_s16)
    assert np.array_equal(c_fn(z, tab), g_fn(z, tab))
    # any table: the look-up reads exactly entry (z + 32768) >> 6, the first and the last included
    wild = np.random.default_rng(5).integers(-32768, 32768, golden.TABLE_SIZE).astype(np.int16)
    assert np.array_equal(c_fn(z, wild), g_fn(z, wild))
    assert int(rt.lib.kp_sigmoid_s16(-32768, wild.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)))) == int(wild[0])
    assert int(rt.lib.kp_tanh_s16(32767, wild.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)))) == int(wild[-1])


# ---------------------------------------------------------------------------------------------- KP mat-vec


def _matvec_cases(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """(a, b, x, t_shift) with factor dims 1..16, every mode of weights and inputs, spec and saturating shifts."""
    cases = []
    for k in range(n):
        m1, n1, m2, n2 = (int(v) for v in rng.integers(1, 17, 4))
        if k < 16:  # walk every n1 and n2 remainder mod 4, including dimension-1 factors
            n1, n2 = k + 1, 16 - k
        wmode, xmode = MODES[k % 4], MODES[(k // 4) % 4]
        a = random_int8(rng, (m1, n1), wmode, lo=-128)
        b = random_int8(rng, (m2, n2), wmode, lo=-128)
        x = random_int8(rng, (n1 * n2,), xmode, lo=-128)
        t_shift = t_shift_for(b) if k % 3 else int(rng.integers(0, 12))  # the latter may saturate T
        cases.append((a, b, x, t_shift))
    return cases


def test_matvec_random_shapes(rt: Runtime) -> None:
    rng = np.random.default_rng(3)
    for a, b, x, t_shift in _matvec_cases(rng, 300):
        got = rt.matvec(a, b, x, t_shift)
        assert np.array_equal(got, golden.kp_matvec_s8(a, b, x, t_shift)), (a.shape, b.shape, t_shift)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 9, 12, 33])
def test_matvec_dense_mode(rt: Runtime, rows: int) -> None:
    """B 1x1 runs the dense kernel: every column count's padding and chunking (1..40, incl. 2 and 4 mod 8),
    b00 = 1 (the folded dense matrix, fast widening) and any other b00 or shift (generic widening)."""
    rng = np.random.default_rng(30 + rows)
    for cols in range(1, 41):
        a = random_int8(rng, (rows, cols), MODES[cols % 4], lo=-128)
        x = random_int8(rng, (cols,), MODES[(cols // 4) % 4], lo=-128)
        for b00, t_shift in ((1, 0), (-128, 0), (127, 3), (-7, 9)):
            b = np.array([[b00]], np.int8)
            got = rt.matvec(a, b, x, t_shift)
            assert np.array_equal(got, golden.kp_matvec_s8(a, b, x, t_shift)), (rows, cols, b00, t_shift)
        if cols % 5 == 0:  # the dense result is W x itself
            assert np.array_equal(rt.matvec(a, np.ones((1, 1), np.int8), x, 0), a.astype(np.int64) @ x.astype(np.int64))


@pytest.mark.parametrize("f", [(512, 2, 1, 64), (512, 2, 1, 14), (512, 1, 1, 28), (2, 64, 256, 2), (16, 8, 32, 16),
                               (16, 2, 32, 14), (128, 28, 4, 1), (4, 16, 128, 8)])
def test_matvec_model_shapes(rt: Runtime, f: tuple[int, int, int, int]) -> None:
    """Factor shapes of real models (the shipped example, the benchmark's minimum-MAC shapes), all input modes."""
    rng = np.random.default_rng(sum(f))
    for mode in MODES:
        m = random_kp(rng, f, "random" if mode == "random" else "extreme")
        x = random_int8(rng, (f[1] * f[3],), mode, lo=-128)
        assert np.array_equal(rt.matvec(m.a, m.b, x, m.t_shift), golden.kp_matvec_s8(m.a, m.b, x, m.t_shift))


@pytest.mark.parametrize("n1", [golden.MAX_N1, golden.MAX_N1 - 1, golden.MAX_N1 - 2, golden.MAX_N1 - 3])
@pytest.mark.parametrize("sign", [-1, 1])
def test_matvec_int32_limit(rt: Runtime, n1: int, sign: int) -> None:
    """Largest |y| the quantizer allows: n1 = 511, |A| = 128, |T| = 32768 (and every tail length)."""
    a = np.full((2, n1), -128, np.int8)
    b = np.full((3, 5), 127 if sign > 0 else -128, np.int8)
    x = np.full(n1 * 5, -128, np.int8)
    for t_shift in (0, t_shift_for(b)):
        got = rt.matvec(a, b, x, t_shift)
        assert np.array_equal(got, golden.kp_matvec_s8(a, b, x, t_shift))
    assert np.abs(got.astype(np.int64)).max() > 1 << 30


# ------------------------------------------------------------------------------------------------------ fc


def test_fc(rt: Runtime) -> None:
    rng = np.random.default_rng(4)
    for k in range(120):
        rows, cols = int(rng.integers(1, 20)), int(rng.integers(1, 40))
        w = random_int8(rng, (rows, cols), MODES[k % 4], lo=-128)
        x = random_int8(rng, (cols,), MODES[(k // 4) % 4], lo=-128)
        bias = rng.integers(-(1 << 24), 1 << 24, rows).astype(np.int32)
        assert np.array_equal(rt.fc(w, bias, x), golden.kp_fc_s8(w, bias, x)), (rows, cols)


# ---------------------------------------------------------------------------------------------------- LSTM


@pytest.mark.parametrize("mode", ["random", "extreme"])
@pytest.mark.parametrize("seed", range(10))
def test_lstm_steps(rt: Runtime, seed: int, mode: str) -> None:
    """Several time steps of one layer: h and c equal after every step; every cell_frac over the seeds."""
    rng = np.random.default_rng(200 + seed)
    isz, hsz = int(rng.integers(1, 17)), int(rng.integers(1, 17))
    cell_frac = (seed * 2 + (mode == "extreme")) % 16
    layer = random_layer(rng, isz, hsz, mode=mode, cell_frac=cell_frac)
    cl = rt.lstm(layer, SIG, TANH)
    h, c = np.zeros(hsz, np.int8), np.zeros(hsz, np.int16)
    for t in range(8):
        x = random_int8(rng, (isz,), MODES[t % 4], lo=-128)
        h, c = lstm_cell.kp_lstm_step_s8(layer, x, h, c, SIG, TANH)
        hc, cc = cl.step(x)
        assert np.array_equal(hc, h) and np.array_equal(cc, c), (t, layer.wx.a.shape, layer.wx.b.shape)


@pytest.mark.parametrize("seed", range(4))
def test_lstm_dense_and_both_gate_paths(rt: Runtime, seed: int) -> None:
    """Dense matrices (B 1x1, the dense kernel) next to KP ones; gate requantizers with shift 32 (the one-
    multiply loop) and below (the pre-shifted loop); every cell_frac branch (>= 12 and < 12)."""
    rng = np.random.default_rng(300 + seed)
    isz, hsz = (28, 16) if seed < 2 else (5, 6)
    fx = (4 * hsz, isz, 1, 1) if seed % 2 == 0 else (hsz, 1, 4, isz)
    fh = (4 * hsz, hsz, 1, 1)
    layer = random_layer(rng, isz, hsz, fx, fh, mode="extreme" if seed == 3 else "random",
                         cell_frac=(10, 12, 14, 3)[seed])
    if seed == 0:
        layer = LSTMLayerQ(**{**layer.__dict__, "rq_x": Requant(layer.rq_x.mult, 32),
                              "rq_h": Requant(layer.rq_h.mult, 32)})
        assert not limits.kernel_limits(layer)
    cl = rt.lstm(layer, SIG, TANH)
    h, c = np.zeros(hsz, np.int8), np.zeros(hsz, np.int16)
    for t in range(10):
        x = random_int8(rng, (isz,), MODES[t % 4], lo=-128)
        h, c = lstm_cell.kp_lstm_step_s8(layer, x, h, c, SIG, TANH)
        hc, cc = cl.step(x)
        assert np.array_equal(hc, h) and np.array_equal(cc, c), t


def test_lstm_dimension_one_factors(rt: Runtime) -> None:
    """Kronecker factors with a 1 in every position, so A or B degenerates to a row, column or scalar."""
    rng = np.random.default_rng(9)
    hsz, isz = 4, 6
    for fx, fh in [((1, 1, 16, 6), (16, 4, 1, 1)), ((16, 6, 1, 1), (1, 4, 16, 1)), ((4, 1, 4, 6), (1, 1, 16, 4))]:
        layer = random_layer(rng, isz, hsz, fx, fh)
        cl = rt.lstm(layer, SIG, TANH)
        h, c = np.zeros(hsz, np.int8), np.zeros(hsz, np.int16)
        for _ in range(5):
            x = random_int8(rng, (isz,), "random", lo=-128)
            h, c = lstm_cell.kp_lstm_step_s8(layer, x, h, c, SIG, TANH)
            hc, cc = cl.step(x)
            assert np.array_equal(hc, h) and np.array_equal(cc, c)


def test_stacked_model_with_head(rt: Runtime) -> None:
    """Two stacked layers and the head through the C kernels equal golden.run_model's whole trace."""
    rng = np.random.default_rng(12)
    model = random_model(rng, 10, (12, 8), 5)
    xq = rng.integers(-127, 128, (3, 9, 10)).astype(np.int8)
    trace = golden.run_model(model, xq)
    for s in range(xq.shape[0]):
        layers = [rt.lstm(layer, model.sigmoid_table, model.tanh_table) for layer in model.layers]
        for t in range(xq.shape[1]):
            inp = xq[s, t]
            for k, cl in enumerate(layers):
                h, c = cl.step(inp)
                assert np.array_equal(h, trace.hidden[k][s, t]) and np.array_equal(c, trace.cell[k][s, t])
                inp = h
        logits = rt.fc(model.head.weight, model.head.bias, inp)
        assert np.array_equal(logits, trace.logits[s])


# ------------------------------------------------------------------------------------------- cross builds


@pytest.mark.parametrize("opt", ["-O2", "-Os"])
@pytest.mark.parametrize("cpu,path", [("cortex-m4", "dsp"), ("cortex-m7", "dsp"), ("cortex-m33", "dsp"),
                                      ("cortex-m0plus", "portable"), ("cortex-m3", "portable"),
                                      ("cortex-m55", "mve")])  # fmt: skip
def test_arm_build_warning_free(tmp_path, cpu: str, path: str, opt: str) -> None:
    """Every kernel compiles for Cortex-M with the strict flags; each core builds its path (SMLAD on DSP cores,
    VMLADAVA on Helium, neither on M0/M3)."""
    gcc = shutil.which("arm-none-eabi-gcc")
    if gcc is None:
        pytest.skip("arm-none-eabi-gcc not installed")
    flags = [f for f in CFLAGS if f not in ("-shared", "-fPIC", "-O2")]
    abi = ["-mfloat-abi=hard"] if path == "mve" else []
    asm = []
    for src in sorted(RUNTIME_DIR.glob("*.c")):
        out = tmp_path / (src.stem + ".s")
        res = subprocess.run([gcc, *flags, opt, f"-mcpu={cpu}", "-mthumb", *abi, "-S", str(src), "-o", str(out)],
                             capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0, res.stderr
        asm.append(out.read_text())
    text = "\n".join(asm)
    assert ("smlad" in text) == (path != "portable")
    assert ("vmlava" in text or "vmladava" in text) == (path == "mve")  # VMLADAVA, also spelt VMLAVA


@pytest.mark.parametrize("cpu,defs", [("cortex-m4", ["-DKP_NO_ASM"]), ("cortex-m55", ["-DKP_NO_ASM"]),
                                      ("cortex-m4", ["-DKP_NO_KRON_EXT"])])  # fmt: skip
def test_arm_build_variants(tmp_path, cpu: str, defs: list[str]) -> None:
    """The fallbacks build warning-free: without inline assembly (KP_NO_ASM: the intrinsics alone, still SMLAD or
    VMLADAVA, and no asm statement left), and for two-factor models (KP_NO_KRON_EXT: the chain and top-row
    stages compile to nothing)."""
    gcc = shutil.which("arm-none-eabi-gcc")
    assert gcc is not None, "arm-none-eabi-gcc is needed (the firmware tests need it too)"
    flags = [f for f in CFLAGS if f not in ("-shared", "-fPIC")]
    abi = ["-mfloat-abi=hard"] if cpu == "cortex-m55" else []
    texts = {}
    for src in sorted(RUNTIME_DIR.glob("*.c")):
        out = tmp_path / (src.stem + ".s")
        res = subprocess.run([gcc, *flags, *defs, f"-mcpu={cpu}", "-mthumb", *abi, "-S", str(src), "-o", str(out)],
                             capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0, res.stderr
        texts[src.name] = out.read_text()
    text = "\n".join(texts.values())
    if "-DKP_NO_ASM" in defs:
        assert "smlad" in text
        assert ("vmladava" in text or "vmlava" in text) == (cpu == "cortex-m55")
        # kp_common.h's and kp_matvec_internal.h's asm templates put a space after the mnemonic, GCC a tab
        assert not re.search(r"^\s*(ldrd|strd|sxtb16|smlad|smmlar|dls|vldrb\.s16|vmlava\.s16) ", text, re.M)
    else:
        assert "kp_kron_deep_s8:" not in texts["kp_kron_deep_s8.c"] and "kp_hkp_top_s8:" not in texts["kp_hkp_top_s8.c"]
        assert "kp_matvec_s8:" in texts["kp_matvec_s8.c"]
