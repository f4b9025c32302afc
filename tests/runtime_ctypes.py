"""Build runtime_c/ into a host shared library and call its kernels from numpy through ctypes.

Two builds: the portable path, and the DSP path compiled for the host against a stand-in <arm_acle.h>
(`HOST_ACLE_H`) whose intrinsics follow the Armv7E-M instruction semantics, so the DSP loops are
checked bit for bit without a target (the DSP-only one-instruction helpers of kp_common.h, SXTB16 ROR #8
and SMMLAR, fall back to the same operations in C off-target). The static inline helpers of kp_common.h
are exported through a small shim (`SHIM_C`) that works on whole arrays. Weights are packed by kpgen.codegen.layout
exactly as the emitter packs them.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np

from kpgen.cells.lstm import LSTMLayerQ
from kpgen.codegen import layout

RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime_c"
# The files of kp_matvec_s8: its public entry and the stage kernels that share kp_matvec_internal.h.
MATVEC_RUNTIME = tuple(sorted(p.name for p in RUNTIME_DIR.glob("*.c") if '"kp_matvec_internal.h"' in p.read_text()))
CFLAGS = ["-O2", "-std=c99", "-shared", "-fPIC", "-Wall", "-Wextra", "-Wconversion", "-Wshadow", "-Werror", "-pedantic"]

SHIM_C = r"""
#include "kpgen_runtime.h"

void kpt_rsr32_n(const int32_t *v, int32_t n, int32_t s, int32_t *out)
{ for (int32_t k = 0; k < n; k++) { out[k] = kp_rsr32(v[k], s); } }

void kpt_sat8_n(const int32_t *v, int32_t n, int8_t *out)
{ for (int32_t k = 0; k < n; k++) { out[k] = kp_sat8(v[k]); } }

void kpt_sat16_n(const int32_t *v, int32_t n, int16_t *out)
{ for (int32_t k = 0; k < n; k++) { out[k] = kp_sat16(v[k]); } }

void kpt_ssat_n(const int32_t *v, int32_t n, int32_t *out16, int32_t *out8)
{ for (int32_t k = 0; k < n; k++) { out16[k] = kp_ssat16(v[k]); out8[k] = kp_ssat8(v[k]); } }

void kpt_sat32_n(const int64_t *v, int32_t n, int32_t *out)
{ for (int32_t k = 0; k < n; k++) { out[k] = kp_sat32(v[k]); } }

void kpt_requantize_n(const int32_t *acc, int32_t n, int32_t mult, int32_t shift, int32_t *out)
{ for (int32_t k = 0; k < n; k++) { out[k] = kp_requantize(acc[k], mult, shift); } }

void kpt_gate_rq_n(const int32_t *acc, int32_t n, int32_t mult, int32_t shift, int32_t c, int32_t *out)
{ for (int32_t k = 0; k < n; k++) { out[k] = kp_gate_rq(acc[k], mult, shift, c); } }

void kpt_sigmoid_n(const int16_t *z, int32_t n, const int16_t *table, int16_t *out)
{ for (int32_t k = 0; k < n; k++) { out[k] = kp_sigmoid_s16(z[k], table); } }

void kpt_tanh_n(const int16_t *z, int32_t n, const int16_t *table, int16_t *out)
{ for (int32_t k = 0; k < n; k++) { out[k] = kp_tanh_s16(z[k], table); } }

int32_t kpt_sizeof_lstm_params(void) { return (int32_t)sizeof(kp_lstm_params_s8); }

int32_t kpt_sizeof_kron(void) { return (int32_t)sizeof(kp_kron_s8); }

int32_t kpt_vslot(int32_t i, int32_t cols_p) { return kp_vslot(i, cols_p); }

int32_t kpt_bias_bits(void) { return (int32_t)(8 * sizeof(kp_bias_t)); }

int32_t kpt_dsp_path(void)
{
#if defined(KP_DSP)
    return 1;
#else
    return 0;
#endif
}
"""

HOST_ACLE_H = r"""
#ifndef KP_HOST_ARM_ACLE_H
#define KP_HOST_ARM_ACLE_H
/* Host stand-in for the ACLE intrinsics the runtime uses, with the Armv7E-M semantics (little-endian). */
#include <stdint.h>

/* SXTB16: sign-extend bytes 0 and 2 into the low and high halfwords. */
static inline int32_t __sxtb16(int32_t w)
{
    const uint32_t u = (uint32_t)w;
    const uint32_t lo = (uint32_t)(int32_t)(int8_t)(u & 0xFFu) & 0xFFFFu;
    const uint32_t hi = (uint32_t)(int32_t)(int8_t)((u >> 16) & 0xFFu) & 0xFFFFu;
    return (int32_t)(lo | (hi << 16));
}

/* SMLAD: acc + lo(x) * lo(y) + hi(x) * hi(y), signed halfwords, wrapping modulo 2^32. */
static inline int32_t __smlad(int32_t x, int32_t y, int32_t acc)
{
    const uint32_t ux = (uint32_t)x;
    const uint32_t uy = (uint32_t)y;
    const int32_t xl = (int16_t)(ux & 0xFFFFu);
    const int32_t xh = (int16_t)(ux >> 16);
    const int32_t yl = (int16_t)(uy & 0xFFFFu);
    const int32_t yh = (int16_t)(uy >> 16);
    return (int32_t)((uint32_t)acc + (uint32_t)(xl * yl) + (uint32_t)(xh * yh));
}

/* SMUAD: lo(x) * lo(y) + hi(x) * hi(y), wrapping modulo 2^32. */
static inline int32_t __smuad(int32_t x, int32_t y)
{
    return __smlad(x, y, 0);
}

/* SMLABB / SMLATB: acc + (bottom or top halfword of x) * bottom halfword of y, wrapping modulo 2^32. */
static inline int32_t __smlabb(int32_t x, int32_t y, int32_t acc)
{
    const int32_t xl = (int16_t)((uint32_t)x & 0xFFFFu);
    const int32_t yl = (int16_t)((uint32_t)y & 0xFFFFu);
    return (int32_t)((uint32_t)acc + (uint32_t)(xl * yl));
}

static inline int32_t __smlatb(int32_t x, int32_t y, int32_t acc)
{
    const int32_t xh = (int16_t)((uint32_t)x >> 16);
    const int32_t yl = (int16_t)((uint32_t)y & 0xFFFFu);
    return (int32_t)((uint32_t)acc + (uint32_t)(xh * yl));
}

/* SSAT: clamp to the signed range of `bits` bits (1..32). */
static inline int32_t __ssat(int32_t v, uint32_t bits)
{
    const int64_t hi = ((int64_t)1 << (bits - 1)) - 1;
    const int64_t lo = -((int64_t)1 << (bits - 1));
    return (int32_t)(v < lo ? lo : (v > hi ? hi : v));
}
#endif
"""

I8, I16, I32, I64 = ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64
P8, P16, P32, P64 = (ctypes.POINTER(t) for t in (I8, I16, I32, I64))


def build_runtime(out_dir: Path, dsp_emulated: bool = False, cc: str = "cc", mul16: bool = False,
                  bias16: bool = False) -> Path:
    """Compile runtime_c/*.c plus the shim into out_dir/libkpgen_runtime[_dsp].so with the strict flags.

    mul16: the portable path with Armv6-M's 16 x 16 high multiply (KP_MUL16) instead of int64. bias16: the gate
    biases stored as int16 (KP_BIAS16, kp_bias_t), as kpgen emits a model whose biases all fit.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    shim = out_dir / "kpt_shim.c"
    shim.write_text(SHIM_C)
    extra: list[str] = ["-DKP_MUL16"] if mul16 else []
    if bias16:
        extra.append("-DKP_BIAS16")
    if dsp_emulated:
        inc = out_dir / "host_acle"
        inc.mkdir(exist_ok=True)
        (inc / "arm_acle.h").write_text(HOST_ACLE_H)
        extra += ["-D__ARM_FEATURE_DSP=1", f"-I{inc}"]
    suffix = f"{'_dsp' if dsp_emulated else ''}{'_mul16' if mul16 else ''}{'_b16' if bias16 else ''}"
    lib = out_dir / f"libkpgen_runtime{suffix}.so"
    sources = sorted(str(p) for p in RUNTIME_DIR.glob("*.c"))
    cmd = [cc, *CFLAGS, *extra, f"-I{RUNTIME_DIR}", *sources, str(shim), "-o", str(lib)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"building the runtime failed:\n{' '.join(cmd)}\n{res.stderr}")
    return lib


def _arr(a: np.ndarray, dtype: type) -> np.ndarray:
    """C-contiguous copy-if-needed of a with the exact dtype."""
    return np.ascontiguousarray(a, dtype=dtype)


def _p(a: np.ndarray, ptype: type) -> ctypes._Pointer:
    """ctypes pointer to a's data (the caller keeps a alive)."""
    return a.ctypes.data_as(ptype)


class Kron(ctypes.Structure):
    """Mirror of kp_kron_s8 (inner, top: NULL, top_shift, fixed and top_groups 0 unless given; top_groups 0
    acts as 1)."""


Kron._fields_ = [
    ("a", P32), ("b", P32), ("m1", I32), ("n1", I32), ("m2", I32), ("n2", I32), ("t_shift", I32),
    ("inner", ctypes.POINTER(Kron)), ("top", ctypes.POINTER(Kron)), ("top_shift", I32), ("fixed", I32),
    ("top_groups", I32),
]  # fmt: skip


class LSTMParams(ctypes.Structure):
    """Mirror of kp_lstm_params_s8."""

    _fields_ = [
        ("input_size", I32), ("hidden_size", I32),
        ("wx", Kron), ("wh", Kron),
        ("mult_x", I32), ("shift_x", I32), ("mult_h", I32), ("shift_h", I32),
        ("bias", P32),
        ("cell_frac", I32),
        ("sigmoid_table", P16), ("tanh_table", P16),
    ]  # fmt: skip


def with_bias_bits(struct: type, bits: int) -> type:
    """A params mirror (bias fields: P32) as the runtime built for `bits`-wide gate biases sees it (kp_bias_t):
    the struct itself for 32, a copy with int16 pointers for 16 (KP_BIAS16)."""
    if bits == 32:
        return struct
    fields = [(n, P16 if n.startswith("bias") else t) for n, t in struct._fields_]
    return type(f"{struct.__name__}16", (ctypes.Structure,), {"_fields_": fields, "__doc__": struct.__doc__})


def bias_array(v: np.ndarray, bits: int) -> tuple[np.ndarray, ctypes._Pointer]:
    """A gate-bias vector stored `bits` wide (checked to fit) and the pointer the params struct holds."""
    dtype, ptr = (np.int16, P16) if bits == 16 else (np.int32, P32)
    a = _arr(v, dtype)
    assert np.array_equal(a, v), "a gate bias does not fit the runtime's bias width"
    return a, _p(a, ptr)


class LSTMScratch(ctypes.Structure):
    """Mirror of kp_lstm_scratch_s8."""

    _fields_ = [("acc_x", P32), ("acc_h", P32), ("gates", P32), ("tv", P32)]


POISON = 0x5A5A5A5A  # scratch filling: a kernel that reads what it did not write shows up as a mismatch


class PackedKron:
    """One KP matrix packed for the kernels (kpgen.codegen.layout), with the kp_kron_s8 struct over it."""

    def __init__(self, a: np.ndarray, b: np.ndarray, t_shift: int) -> None:
        a, b = _arr(a, np.int8), _arr(b, np.int8)
        self.shape = (a.shape[0], a.shape[1], b.shape[0], b.shape[1])
        pa, pb = layout.pack_kron(a, b)
        self.pa, self.pb = _arr(pa, np.int32), _arr(pb, np.int32)
        self.struct = Kron(_p(self.pa, P32), _p(self.pb, P32), *self.shape, t_shift)
        self.scratch = layout.kron_scratch_words(*self.shape)


class PackedMatrix:
    """A whole KPMatrixQ (any number of factors, HKP top rows) as the chain of kp_kron_s8 the emitter builds
    (kpgen.codegen.layout.matrix_context / templates/kp_matrix.j2), with every array and nested struct kept alive."""

    def __init__(self, m) -> None:
        self.keep: list = []
        levels = layout.matrix_levels(m)
        inner = None
        for lv in reversed(levels):  # innermost first, so each level can point to the next
            pa = _arr(lv["a"], np.int32)
            pb = None if lv["b"] is None else _arr(lv["b"], np.int32)
            k = Kron(_p(pa, P32), None if pb is None else _p(pb, P32), lv["m1"], lv["n1"], lv["m2"], lv["n2"],
                     lv["t_shift"], None if inner is None else ctypes.pointer(inner))  # fmt: skip
            self.keep += [pa, pb, k]
            inner = k
        self.struct = inner
        if m.top is not None:
            pt, one = _arr(layout.pack_blocks(m.top), np.int32), np.array(layout.ONE_WORDS, np.int32)
            top = Kron(_p(pt, P32), _p(one, P32), m.top_rows, m.kp_shape[1], 1, 1, 0)
            self.keep += [pt, one, top]
            self.struct.top = ctypes.pointer(top)
            self.struct.top_shift = m.top_shift
            self.struct.top_groups = m.top_groups
        self.shape = m.shape
        self.scratch = layout.matrix_scratch_words(m)


class Runtime:
    """numpy-facing wrappers over the C kernels of one built library."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        lib.kp_matvec_s8.argtypes = [ctypes.POINTER(Kron), P8, P32, P32]
        lib.kp_matvec_s8.restype = None
        lib.kp_matvec_s8_get_buffer_size.argtypes = [ctypes.POINTER(Kron)]
        lib.kp_matvec_s8_get_buffer_size.restype = I32
        lib.kp_fc_s8.argtypes = [P8, P32, I32, I32, P8, P32]
        lib.kp_fc_s8.restype = None
        lib.kp_lstm_step_s8.argtypes = [ctypes.POINTER(LSTMParams), P8, P8, P16, ctypes.POINTER(LSTMScratch)]
        lib.kp_lstm_step_s8.restype = None
        lib.kp_sigmoid_s16.argtypes = [I16, P16]
        lib.kp_sigmoid_s16.restype = I16
        lib.kp_tanh_s16.argtypes = [I16, P16]
        lib.kp_tanh_s16.restype = I16
        lib.kpt_rsr32_n.argtypes = [P32, I32, I32, P32]
        lib.kpt_sat8_n.argtypes = [P32, I32, P8]
        lib.kpt_sat16_n.argtypes = [P32, I32, P16]
        lib.kpt_ssat_n.argtypes = [P32, I32, P32, P32]
        lib.kpt_sat32_n.argtypes = [P64, I32, P32]
        lib.kpt_requantize_n.argtypes = [P32, I32, I32, I32, P32]
        lib.kpt_gate_rq_n.argtypes = [P32, I32, I32, I32, I32, P32]
        lib.kpt_sigmoid_n.argtypes = [P16, I32, P16, P16]
        lib.kpt_tanh_n.argtypes = [P16, I32, P16, P16]
        for f in ("rsr32", "sat8", "sat16", "ssat", "sat32", "requantize", "gate_rq", "sigmoid", "tanh"):
            getattr(lib, f"kpt_{f}_n").restype = None
        lib.kpt_sizeof_lstm_params.restype = I32
        lib.kpt_sizeof_kron.restype = I32
        lib.kpt_vslot.argtypes = [I32, I32]
        lib.kpt_vslot.restype = I32
        lib.kpt_dsp_path.restype = I32
        lib.kpt_bias_bits.restype = I32
        self.bias_bits = int(lib.kpt_bias_bits())
        self.lstm_params = with_bias_bits(LSTMParams, self.bias_bits)
        lib.kp_lstm_step_s8.argtypes = [ctypes.POINTER(self.lstm_params), P8, P8, P16, ctypes.POINTER(LSTMScratch)]

    @property
    def dsp_path(self) -> bool:
        """True when the library was built with __ARM_FEATURE_DSP (host-emulated intrinsics)."""
        return bool(self.lib.kpt_dsp_path())

    def matvec(self, a: np.ndarray, b: np.ndarray, x: np.ndarray, t_shift: int) -> np.ndarray:
        """kp_matvec_s8 on one vector x (n1*n2,) -> int32 (m1*m2,), factors packed as the emitter packs them."""
        m = PackedKron(a, b, t_shift)
        m1, n1, m2, n2 = m.shape
        x = _arr(x, np.int8)
        assert x.shape == (n1 * n2,)
        tv = np.full(m.scratch + 1, POISON, np.int32)  # poisoned: the kernel must write what it reads
        y = np.full(m1 * m2 + 1, POISON, np.int32)
        self.lib.kp_matvec_s8(ctypes.byref(m.struct), _p(x, P8), _p(tv, P32), _p(y, P32))
        assert tv[-1] == POISON and y[-1] == POISON, "kp_matvec_s8 wrote past its scratch or output"
        y = y[:-1]
        return y

    def buffer_size(self, m) -> int:
        """kp_matvec_s8_get_buffer_size of a whole KPMatrixQ: the scratch words the C runtime asks for."""
        return int(self.lib.kp_matvec_s8_get_buffer_size(ctypes.byref(PackedMatrix(m).struct)))

    def matrix(self, m, x: np.ndarray, scratch_words: int | None = None) -> np.ndarray:
        """kp_matvec_s8 on a whole KPMatrixQ (PackedMatrix) and one vector x (N,) -> int32 (M,); the scratch is
        layout.matrix_scratch_words words (or scratch_words), poisoned, with a guard word after it and y."""
        pm = PackedMatrix(m)
        x = _arr(x, np.int8)
        assert x.shape == (pm.shape[1],)
        words = pm.scratch if scratch_words is None else scratch_words
        tv = np.full(words + 1, POISON, np.int32)
        y = np.full(pm.shape[0] + 1, POISON, np.int32)
        self.lib.kp_matvec_s8(ctypes.byref(pm.struct), _p(x, P8), _p(tv, P32), _p(y, P32))
        assert tv[-1] == POISON and y[-1] == POISON, "kp_matvec_s8 wrote past its scratch or output"
        return y[:-1].copy()

    def fc(self, w: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
        """kp_fc_s8 on one vector x (cols,) -> int32 (rows,)."""
        w, bias, x = _arr(w, np.int8), _arr(bias, np.int32), _arr(x, np.int8)
        rows, cols = w.shape
        out = np.zeros(rows, np.int32)
        self.lib.kp_fc_s8(_p(w, P8), _p(bias, P32), rows, cols, _p(x, P8), _p(out, P32))
        return out

    def _map(
        self, fn: str, v: np.ndarray, in_t: type, in_p: type, out_t: type, out_p: type, *args: object
    ) -> np.ndarray:
        """Call an elementwise shim fn(in, n, *args, out) on the flattened v."""
        v = _arr(v, in_t).ravel()
        out = np.zeros(v.size, out_t)
        getattr(self.lib, fn)(_p(v, in_p), v.size, *args, _p(out, out_p))
        return out

    def rsr32(self, v: np.ndarray, s: int) -> np.ndarray:
        """kp_rsr32 elementwise on int32 values."""
        return self._map("kpt_rsr32_n", v, np.int32, P32, np.int32, P32, s)

    def sat8(self, v: np.ndarray) -> np.ndarray:
        """kp_sat8 elementwise on int32 values."""
        return self._map("kpt_sat8_n", v, np.int32, P32, np.int8, P8)

    def sat16(self, v: np.ndarray) -> np.ndarray:
        """kp_sat16 elementwise on int32 values."""
        return self._map("kpt_sat16_n", v, np.int32, P32, np.int16, P16)

    def ssat(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """kp_ssat16 and kp_ssat8 (SSAT on the DSP path) elementwise on int32 values."""
        v = _arr(v, np.int32).ravel()
        o16, o8 = np.zeros(v.size, np.int32), np.zeros(v.size, np.int32)
        self.lib.kpt_ssat_n(_p(v, P32), v.size, _p(o16, P32), _p(o8, P32))
        return o16, o8

    def sat32(self, v: np.ndarray) -> np.ndarray:
        """kp_sat32 elementwise on int64 values."""
        return self._map("kpt_sat32_n", v, np.int64, P64, np.int32, P32)

    def requantize(self, acc: np.ndarray, mult: int, shift: int) -> np.ndarray:
        """kp_requantize elementwise on int32 accumulators."""
        return self._map("kpt_requantize_n", acc, np.int32, P32, np.int32, P32, mult, shift)

    def gate_rq(self, acc: np.ndarray, mult: int, shift: int, c: int = 0) -> np.ndarray:
        """kp_gate_rq elementwise: c + rsr(acc * mult, shift) in 32-bit arithmetic (shift 1..32)."""
        return self._map("kpt_gate_rq_n", acc, np.int32, P32, np.int32, P32, mult, shift, c)

    def sigmoid(self, z: np.ndarray, table: np.ndarray) -> np.ndarray:
        """kp_sigmoid_s16 elementwise (table: the 1024-entry int16 table)."""
        tab = _arr(table, np.int16)
        return self._map("kpt_sigmoid_n", z, np.int16, P16, np.int16, P16, _p(tab, P16))

    def tanh(self, z: np.ndarray, table: np.ndarray) -> np.ndarray:
        """kp_tanh_s16 elementwise (table: the 1024-entry int16 table)."""
        tab = _arr(table, np.int16)
        return self._map("kpt_tanh_n", z, np.int16, P16, np.int16, P16, _p(tab, P16))

    def vslot(self, i: int, cols_p: int) -> int:
        """kp_vslot: where element i sits in a packed int16 vector on this code path."""
        return int(self.lib.kpt_vslot(i, cols_p))

    def lstm(self, layer: LSTMLayerQ, sigmoid_table: np.ndarray, tanh_table: np.ndarray) -> CLSTM:
        """A C-side LSTM layer with its own state and scratch."""
        return CLSTM(self, layer, sigmoid_table, tanh_table)


class CLSTM:
    """One layer's kp_lstm_params_s8 (packed as the emitter packs it), state (h, c) and scratch."""

    def __init__(self, rt: Runtime, layer: LSTMLayerQ, sigmoid_table: np.ndarray, tanh_table: np.ndarray) -> None:
        self.rt = rt
        hs = layer.hidden_size
        # Keep every array referenced by the structs alive for the object's lifetime.
        self.wx = PackedKron(layer.wx.a, layer.wx.b, layer.wx.t_shift)
        self.wh = PackedKron(layer.wh.a, layer.wh.b, layer.wh.t_shift)
        bias, pbias = bias_array(layer.bias, rt.bias_bits)
        self._keep = [
            bias,
            _arr(sigmoid_table, np.int16),
            _arr(tanh_table, np.int16),
        ]
        _, sig, tanh = self._keep
        self.params = rt.lstm_params(
            layer.input_size, hs, self.wx.struct, self.wh.struct,
            layer.rq_x.mult, layer.rq_x.shift, layer.rq_h.mult, layer.rq_h.shift,
            pbias, layer.cell_frac, _p(sig, P16), _p(tanh, P16),
        )  # fmt: skip
        self.h = np.zeros(hs, np.int8)
        self.c = np.zeros(hs, np.int16)
        self.acc_x = np.full(4 * hs, POISON, np.int32)
        self.acc_h = np.full(4 * hs, POISON, np.int32)
        self.gates = np.full(2 * hs, POISON, np.int32)
        self.tv = np.full(max(self.wx.scratch, self.wh.scratch), POISON, np.int32)
        self.scratch = LSTMScratch(_p(self.acc_x, P32), _p(self.acc_h, P32), _p(self.gates, P32), _p(self.tv, P32))

    def step(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance one step on int8 x; returns copies of the new (h, c)."""
        x = _arr(x, np.int8)
        self.rt.lib.kp_lstm_step_s8(ctypes.byref(self.params), _p(x, P8), _p(self.h, P8), _p(self.c, P16),
                                    ctypes.byref(self.scratch))  # fmt: skip
        return self.h.copy(), self.c.copy()
