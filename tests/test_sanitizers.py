"""The emitted model and the C runtime, built for the host under AddressSanitizer and UndefinedBehaviorSanitizer
(-fsanitize=address,undefined -fno-sanitize-recover=all), on random shapes and extreme weights: every hidden and
cell state after every step, and the scores, equal to the golden model's, and not one sanitizer report.

One standalone executable per code path (portable, and DSP on host stand-in intrinsics) holds several models
(each emitted under its own name prefix) and their inputs and expected results as C arrays; it checks them
itself and prints one line per model. ASan cannot see an overflow from one arena field into the next (the
arena is one struct); such a write would change the states the driver compares.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from example_counts import count, finding
from factories import random_factors
from runtime_ctypes import HOST_ACLE_H

from kpgen import KpgenError
from kpgen.cells.lstm import LSTMLayerF, LSTMLayerQ
from kpgen.codegen import layout
from kpgen.codegen.emit import RUNTIME, render_sources
from kpgen.ir import Calibration, DenseF, DenseQ, KPMatrixF, KPMatrixQ, ModelF, ModelQ, Requant
from kpgen.quant import limits, quantize
from kpgen.reference import golden
from kpgen.target.boards import list_boards, load_board

CC = shutil.which("gcc") or shutil.which("cc")
SAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
WARN = ["-std=c99", "-Wall", "-Wextra", "-Wconversion", "-Wshadow", "-Werror", "-pedantic"]
SEED = int(os.environ.get("KPGEN_SANITIZER_SEED", "20240601"))
MODELS_PER_BUILD = 12
I32_MAX = 2**31 - 1


def _sanitizers_work(tmp: Path) -> bool:
    src = tmp / "probe.c"
    src.write_text("int main(void) { return 0; }\n")
    r = subprocess.run([CC, *SAN, str(src), "-o", str(tmp / "probe")], capture_output=True)
    return r.returncode == 0 and subprocess.run([str(tmp / "probe")]).returncode == 0


@pytest.fixture(scope="module")
def sanitizers(tmp_path_factory) -> None:
    if CC is None:
        pytest.skip("no host C compiler")
    if not _sanitizers_work(tmp_path_factory.mktemp("probe")):
        pytest.fail("gcc cannot build with -fsanitize=address,undefined here: install libasan and libubsan "
                    "(Debian: apt-get install gcc, which depends on them)")  # fmt: skip


# ------------------------------------------------------------------------------------------------ models


def _int8(rng: np.random.Generator, shape: tuple[int, ...], mode: str) -> np.ndarray:
    if mode == "extreme":
        return rng.choice(np.array([-128, 127, -127], np.int8), size=shape)
    if mode == "max":
        return np.full(shape, 127, np.int8)
    if mode == "min":
        return np.full(shape, -128, np.int8)
    return rng.integers(-128, 128, size=shape).astype(np.int8)


def extreme_layer(rng: np.random.Generator, isz: int, hsz: int) -> LSTMLayerQ:
    """A layer at the edge of what the C kernels allow (limits.kernel_limits): smallest shifts the accumulator
    bound permits, biases up to what the int32 gate sum leaves, weights and inputs at -128/127."""
    mats, rqs, worst = [], [], 0
    for cols in (isz, hsz):
        m1, n1, m2, n2 = random_factors(rng, 4 * hsz, cols)
        mode = str(rng.choice(["random", "extreme", "max", "min"]))
        a, b = _int8(rng, (m1, n1), mode), _int8(rng, (m2, n2), mode)
        m = KPMatrixQ(a=a, b=b, t_shift=quantize.t_shift_for(b), a_scale=1.0, b_scale=1.0)
        bound = limits.kp_acc_bound(a, b, m.t_shift)
        low = max(1, limits.GATE_SHIFT_MAX - (30 - bound.bit_length()))
        shift = int(rng.choice([low, rng.integers(low, limits.GATE_SHIFT_MAX + 1)]))
        mult = int(rng.choice([1, I32_MAX, rng.integers(1, 2**31)]))
        mats.append(m)
        rqs.append(Requant(mult, shift))
        worst += int(golden.rsr(np.int64(bound) * np.int64(mult), shift))
    room = max(0, I32_MAX - worst)
    bias = rng.choice(np.array([-room, room, 0, 20000, -20000], np.int64), size=4 * hsz)
    layer = LSTMLayerQ(input_size=isz, hidden_size=hsz, wx=mats[0], wh=mats[1], rq_x=rqs[0], rq_h=rqs[1],
                       bias=bias.astype(np.int32), cell_frac=int(rng.integers(0, 16)), input_scale=1.0)  # fmt: skip
    assert limits.kernel_limits(layer) == [], limits.kernel_limits(layer)
    return layer


def extreme_model(rng: np.random.Generator) -> ModelQ:
    isz = int(rng.choice([1, 2, 3, 6, 8]))
    hidden = [int(rng.choice([1, 2, 3, 5, 8])) for _ in range(int(rng.integers(1, 4)))]
    layers, prev = [], isz
    for h in hidden:
        layers.append(extreme_layer(rng, prev, h))
        prev = h
    n_cls = int(rng.integers(1, 5))
    w = _int8(rng, (n_cls, prev), str(rng.choice(["random", "extreme"])))
    room = I32_MAX - 128 * np.abs(w.astype(np.int64)).sum(axis=1)
    bias = np.array([rng.choice([-r, r, 0]) for r in room], np.int64).astype(np.int32)
    return ModelQ(input_size=isz, num_classes=n_cls, input_scale=1.0, layers=tuple(layers),
                  head=DenseQ(weight=w, bias=bias, out_scale=1.0),
                  sigmoid_table=golden.make_table("sigmoid"), tanh_table=golden.make_table("tanh"))  # fmt: skip


def quantized_model(rng: np.random.Generator) -> ModelQ | None:
    """A random float KP-LSTM through the real quantizer, with outliers and extreme ranges (None if refused)."""
    isz = int(rng.choice([1, 3, 4, 7, 12]))
    hidden = [int(rng.choice([1, 2, 4, 6, 16])) for _ in range(int(rng.integers(1, 3)))]
    scale = float(rng.choice([1e-3, 0.3, 1.0, 30.0]))

    def mat(rows: int, cols: int) -> KPMatrixF:
        m1, n1, m2, n2 = random_factors(rng, rows, cols)
        a, b = rng.normal(0, scale, (m1, n1)), rng.normal(0, scale, (m2, n2))
        if rng.random() < 0.3:
            a.flat[int(rng.integers(a.size))] *= 1000.0  # one outlier squeezes every other weight
        return KPMatrixF(a=a, b=b)

    layers, prev = [], isz
    for h in hidden:
        layers.append(LSTMLayerF(input_size=prev, hidden_size=h, wx=mat(4 * h, prev), wh=mat(4 * h, h),
                                 bias=rng.normal(0, float(rng.choice([0.1, 3.0, 50.0])), 4 * h)))  # fmt: skip
        prev = h
    n_cls = int(rng.integers(1, 5))
    cal = Calibration(input_absmax=float(rng.choice([0.01, 1.0, 100.0])),
                      cell_absmax=tuple(float(rng.choice([0.1, 3.0, 1000.0])) for _ in hidden))  # fmt: skip
    mf = ModelF(input_size=isz, num_classes=n_cls, layers=tuple(layers),
                head=DenseF(weight=rng.normal(0, 1, (n_cls, prev)), bias=rng.normal(0, 1, n_cls)), calibration=cal)
    try:
        return quantize.quantize_model(mf)
    except KpgenError:
        return None


def cases(rng: np.random.Generator) -> list[tuple[ModelQ, np.ndarray]]:
    """MODELS_PER_BUILD (model, int8 inputs [samples, steps, features]) pairs, half extreme, half quantized."""
    out = []
    while len(out) < MODELS_PER_BUILD:
        extreme = len(out) % 2 == 0
        m = extreme_model(rng) if extreme else quantized_model(rng)
        if m is None:
            continue
        steps = int(rng.choice([1, 2, 5]))
        x = _int8(rng, (3, steps, m.input_size), "extreme" if extreme else "random")
        out.append((m, x))
    return out


# ------------------------------------------------------------------------------------------------ driver


def _c(values: np.ndarray) -> str:
    flat = np.asarray(values).reshape(-1)
    return ", ".join(str(int(v)) for v in flat) if flat.size else "0"


def _case_code(k: int, model: ModelQ, x: np.ndarray) -> str:
    """Arrays of case k and a function check_<k>() that runs and compares every sample and step."""
    name, n = f"m{k}", f"M{k}"
    tr = golden.run_model(model, x)
    samples, steps, _ = x.shape
    hsum = sum(l.hidden_size for l in model.layers)
    # expected[s][t] = h of every layer, then c of every layer
    hs = np.concatenate([h.reshape(samples, steps, -1) for h in tr.hidden], axis=2)
    cs = np.concatenate([c.reshape(samples, steps, -1) for c in tr.cell], axis=2)
    return f"""
static const int8_t {name}_x[] = {{ {_c(x)} }};
static const int8_t {name}_h[] = {{ {_c(hs)} }};
static const int16_t {name}_c[] = {{ {_c(cs)} }};
static const int32_t {name}_logits[] = {{ {_c(tr.logits)} }};

static int check_{k}(void)
{{
    int32_t s, t, l, j, bad = 0;
    for (s = 0; s < {samples}; s++) {{
        int32_t scores[{n}_NUM_CLASSES];
        {name}_reset();
        for (t = 0; t < {steps}; t++) {{
            int32_t off = (s * {steps} + t) * {hsum};
            {name}_step({name}_x + (s * {steps} + t) * {n}_INPUT_SIZE);
            for (l = 0; l < {n}_NUM_LAYERS; l++) {{
                const int8_t *h = {name}_hidden(l);
                const int16_t *c = {name}_cell(l);
                for (j = 0; j < {name}_hidden_size(l); j++) {{
                    bad += h[j] != {name}_h[off + j];
                    bad += c[j] != {name}_c[off + j];
                }}
                off += {name}_hidden_size(l);
            }}
        }}
        {name}_scores(scores);
        for (j = 0; j < {n}_NUM_CLASSES; j++) {{
            bad += scores[j] != {name}_logits[s * {n}_NUM_CLASSES + j];
        }}
    }}
    printf("model {k}: %s\\n", bad ? "MISMATCH" : "OK");
    return bad != 0;
}}
"""


def build_driver(work: Path, board_name: str, models: list[tuple[ModelQ, np.ndarray]], dsp: bool) -> Path:
    """One host program running every model: each model is emitted as a library (--target lib), so its runtime is
    compiled with that model's own defines (its per-matrix kernels, table variant) and prefixed names, exactly as
    two libraries link into one firmware; all of it under the sanitizers."""
    board = load_board(board_name)
    includes, body, calls, objs = [], [], [], []
    extra: list[str] = []
    if dsp:
        inc = work / "host_acle"
        inc.mkdir(exist_ok=True)
        (inc / "arm_acle.h").write_text(HOST_ACLE_H)
        extra = ["-D__ARM_FEATURE_DSP=1", f"-I{inc}"]
    for k, (model, x) in enumerate(models):
        files = render_sources(model, board, None, f"m{k}", "sanitizer.pt", target="lib")
        for fname in (f"m{k}.h", f"m{k}.c"):
            (work / fname).write_text(files[fname])
        defs = next(ln for ln in files["Makefile"].splitlines() if ln.startswith("DEFS"))
        model_defs = [d for d in defs.split("=", 1)[1].split() if d.startswith("-D")]
        assert f"-Dkp_lstm_step_s8=m{k}_kp_lstm_step_s8" in model_defs, defs  # the library's prefixed runtime
        objdir = work / f"obj{k}"
        objdir.mkdir()
        for src in [work / f"m{k}.c", *sorted(RUNTIME.glob("*.c"))]:
            obj = objdir / (src.stem + ".o")
            cmd = [CC, "-O1", "-g", *SAN, *WARN, *extra, *model_defs, f"-I{RUNTIME}", f"-I{work}", "-c", str(src),
                   "-o", str(obj)]  # fmt: skip
            r = subprocess.run(cmd, capture_output=True, text=True)
            assert r.returncode == 0, f"build under sanitizers failed:\n{r.stderr[-4000:]}"
            objs.append(str(obj))
        includes.append(f'#include "m{k}.h"')
        body.append(_case_code(k, model, x))
        calls.append(f"    failed += check_{k}();")
    driver = "\n".join(["#include <stdint.h>", "#include <stdio.h>", *includes, *body,
                        "int main(void)", "{", "    int failed = 0;", *calls,
                        '    printf("failed=%d\\n", failed);', "    return failed != 0;", "}", ""])  # fmt: skip
    (work / "driver.c").write_text(driver)
    exe = work / "driver"
    cmd = [CC, "-O1", "-g", *SAN, *WARN, *extra, f"-I{RUNTIME}", f"-I{work}", str(work / "driver.c"), *objs,
           "-o", str(exe)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"build under sanitizers failed:\n{r.stderr[-4000:]}"
    return exe


def _board(dsp: bool) -> str:
    """A board without DSP for the portable path, one with DSP (no Helium) for the DSP path; m4 otherwise."""
    for b in list_boards():
        if b.has_dsp == dsp and not b.has_mve and not layout.biased_for(b.core):  # Armv6-M layout: ARM only
            return b.name
    return "m4"


@pytest.mark.parametrize("dsp", [False, True], ids=["portable", "dsp"])
def test_runtime_under_asan_and_ubsan(sanitizers, tmp_path: Path, dsp: bool) -> None:
    rng = np.random.default_rng(SEED + int(dsp))
    models = cases(rng)
    exe = build_driver(tmp_path, _board(dsp), models, dsp)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
    r = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=120)
    report = [ln for ln in r.stderr.splitlines() if "runtime error" in ln or "AddressSanitizer" in ln]
    assert not report, "\n".join(report[:10])
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert r.stdout.splitlines()[-1] == "failed=0"
    assert r.stdout.count(": OK") == len(models)
    count(f"sanitizers: models checked ({'dsp' if dsp else 'portable'} path)", len(models))
    steps = sum(x.shape[0] * x.shape[1] for _, x in models)
    finding("sanitizers", f"{'dsp' if dsp else 'portable'}: {len(models)} models, {steps} steps, seed {SEED}: clean")


def test_sanitizers_catch_a_bug(sanitizers, tmp_path: Path) -> None:
    """The harness is not blind: an out-of-bounds read and a signed overflow in C code are reported."""
    src = tmp_path / "bug.c"
    src.write_text("#include <stdint.h>\n#include <stdio.h>\n"
                   "static const int8_t w[4] = {1, 2, 3, 4};\n"
                   "int main(int argc, char **argv) { (void)argv; int32_t a = INT32_MAX - 2 + argc * 3;\n"
                   "  printf(\"%d %d\\n\", (int)w[argc + 3], (int)a); return 0; }\n")  # fmt: skip
    r = subprocess.run([CC, "-O0", "-g", *SAN, str(src), "-o", str(tmp_path / "bug")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(tmp_path / "bug")], capture_output=True, text=True)
    assert out.returncode != 0 and ("runtime error" in out.stderr or "AddressSanitizer" in out.stderr)
