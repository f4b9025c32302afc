"""The emitted C API (model.h) gives its documented result for every argument: each public function of a
streaming model and of a bidirectional one is called with the edge values of every argument (layers -1, 0,
last, NUM_LAYERS, INT32_MIN/MAX; steps t -1, 0, MAX_STEPS-1, MAX_STEPS; step counts 0, -1, 1, MAX_STEPS,
MAX_STEPS+1; NULL pointers), built for the host under AddressSanitizer and UndefinedBehaviorSanitizer. Valid
calls give the golden model's values; invalid ones give NULL or <NAME>_ERR_*, and change no state, output or
score. A build with -DKP_NO_CHECKS (the NULL checks compiled away) still gives every valid and range result.

Each driver prints one line per call, "<what> <arg> <arg> : <values>" (or ": NULL"), and Python compares them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from factories import random_factors, random_int8, random_layer

from kpgen.cells.gru import GRULayerF
from kpgen.codegen.emit import RUNTIME, render_sources
from kpgen.ir import AnyLayerQ, BiLayerQ, DenseQ, KPMatrixF, ModelQ
from kpgen.quant import quantize
from kpgen.reference import golden
from kpgen.reference.vectors import expected_for
from kpgen.target.boards import load_board

CC = shutil.which("gcc") or shutil.which("cc")
SAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
WARN = ["-std=c99", "-Wall", "-Wextra", "-Wconversion", "-Wshadow", "-Werror", "-pedantic"]
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
STEPS = 5  # the test sequence; MAX_STEPS of the bidirectional model
SENTINEL = 0x5A5A5A5A  # written into scores before every call: an untouched buffer still holds it
ERR_ARG, ERR_NULL = -1, -2


# ------------------------------------------------------------------------------------------------ models


def _gru(rng: np.random.Generator, isz: int, hsz: int, idx: int) -> AnyLayerQ:
    """A quantized KP-GRU layer reading Q0.7 inputs (a cell without a cell state: model_cell gives NULL)."""

    def kp(rows: int, cols: int) -> KPMatrixF:
        m1, n1, m2, n2 = random_factors(rng, rows, cols)
        return KPMatrixF(a=rng.normal(0, 0.4, (m1, n1)), b=rng.normal(0, 0.4, (m2, n2)))

    lf = GRULayerF(isz, hsz, kp(3 * hsz, isz), kp(3 * hsz, hsz), rng.normal(0, 0.5, 3 * hsz), rng.normal(0, 0.5, hsz))
    return quantize.quantize_layer(lf, 1 / 128, 0.0, idx)


def _model(rng: np.random.Generator, first: AnyLayerQ, second: AnyLayerQ, classes: int = 3) -> ModelQ:
    head = DenseQ(weight=random_int8(rng, (classes, second.hidden_size)),
                  bias=rng.integers(-(1 << 12), 1 << 12, size=classes).astype(np.int32), out_scale=1e-3)  # fmt: skip
    return ModelQ(input_size=first.input_size, num_classes=classes, input_scale=1 / 64, layers=(first, second),
                  head=head, sigmoid_table=golden.make_table("sigmoid"),
                  tanh_table=golden.make_table("tanh"))  # fmt: skip


def streaming_model() -> ModelQ:
    """LSTM 3 -> 4, then GRU 4 -> 2, 3 classes."""
    rng = np.random.default_rng(801)
    return _model(rng, random_layer(rng, 3, 4), _gru(rng, 4, 2, 1))


def bidirectional_model() -> ModelQ:
    """Bidirectional LSTM 3 -> 2 x 4, then GRU 8 -> 2, 3 classes."""
    rng = np.random.default_rng(802)
    return _model(rng, BiLayerQ(random_layer(rng, 3, 4), random_layer(rng, 3, 4)), _gru(rng, 8, 2, 1))


# ------------------------------------------------------------------------------------------------ drivers

COMMON = r"""
#include <stdint.h>
#include <stdio.h>

#include "model.h"

#define T_STEPS %(steps)d
static const int8_t seq[T_STEPS * MODEL_INPUT_SIZE] = { %(seq)s };
static const int32_t layers[] = { -1, 0, MODEL_NUM_LAYERS - 1, MODEL_NUM_LAYERS, INT32_MIN, INT32_MAX };
#define N_LAYERS ((int32_t)(sizeof layers / sizeof layers[0]))
static int32_t scores[MODEL_NUM_CLASSES];

static void put_int(const char *what, long a, long b, long v)
{
    printf("%%s %%ld %%ld : %%ld\n", what, a, b, v);
}

static void put_i8(const char *what, long a, long b, const int8_t *p, int32_t n)
{
    int32_t j;
    printf("%%s %%ld %%ld :", what, a, b);
    if (p == NULL) {
        printf(" NULL");
    }
    for (j = 0; p != NULL && j < n; j++) {
        printf(" %%d", (int)p[j]);
    }
    printf("\n");
}

static void put_i16(const char *what, long a, long b, const int16_t *p, int32_t n)
{
    int32_t j;
    printf("%%s %%ld %%ld :", what, a, b);
    if (p == NULL) {
        printf(" NULL");
    }
    for (j = 0; p != NULL && j < n; j++) {
        printf(" %%d", (int)p[j]);
    }
    printf("\n");
}

/* the result r of a call that writes scores, then the scores */
static void put_scores(const char *what, long a, int32_t r)
{
    int32_t k;
    printf("%%s %%ld : %%ld", what, a, (long)r);
    for (k = 0; k < MODEL_NUM_CLASSES; k++) {
        printf(" %%ld", (long)scores[k]);
    }
    printf("\n");
}

static void fill(void)
{
    int32_t k;
    for (k = 0; k < MODEL_NUM_CLASSES; k++) {
        scores[k] = %(sentinel)d;
    }
}

/* hidden, cell and hidden_size at every edge layer, tagged with the phase */
static void state(const char *phase)
{
    char what[64];
    int32_t i;
    for (i = 0; i < N_LAYERS; i++) {
        int32_t l = layers[i], n = model_hidden_size(l);
        snprintf(what, sizeof what, "%%s.hidden_size", phase);
        put_int(what, (long)l, 0, (long)n);
        snprintf(what, sizeof what, "%%s.hidden", phase);
        put_i8(what, (long)l, 0, model_hidden(l), n);
        snprintf(what, sizeof what, "%%s.cell", phase);
        put_i16(what, (long)l, 0, model_cell(l), n);
    }
}
"""

STREAMING_MAIN = r"""
int main(void)
{
    static const int32_t bad_steps[] = { 0, -1, INT32_MIN };
    int32_t t, i, r;
    put_int("err", MODEL_ERR_ARG, MODEL_ERR_NULL, 0);
    model_reset();
    state("reset");
    for (t = 0; t < T_STEPS; t++) {
        put_int("step", (long)t, 0, (long)model_step(seq + t * MODEL_INPUT_SIZE));
    }
    state("stepped");
    fill();
    r = model_scores(scores);
    put_scores("scores", 0, r);
#ifndef KP_NO_CHECKS
    put_int("step_null", 0, 0, (long)model_step(NULL));
    put_int("scores_null", 0, 0, (long)model_scores(NULL));
    fill();
    r = model_run(NULL, 1, scores);
    put_scores("run_null_seq", 1, r);
    put_int("run_null_scores", 1, 0, (long)model_run(seq, 1, NULL));
    put_int("run_null_both", 0, 0, (long)model_run(NULL, 0, NULL));
    state("after_null");
#endif
    for (i = 0; i < 3; i++) {
        fill();
        r = model_run(seq, bad_steps[i], scores);
        put_scores("run_bad", (long)bad_steps[i], r);
    }
    state("after_bad");
    fill();
    r = model_run(seq, 1, scores);
    put_scores("run", 1, r);
    state("run1");
    fill();
    r = model_run(seq, T_STEPS, scores);
    put_scores("run", T_STEPS, r);
    state("runT");
    return 0;
}
"""

BIDIRECTIONAL_MAIN = r"""
static const int32_t ts[] = { INT32_MIN, -1, %(ts)s, MODEL_MAX_STEPS, INT32_MAX };
#define N_TS ((int32_t)(sizeof ts / sizeof ts[0]))

/* state, then output_size and output(layer, t) at every edge layer and step */
static void dump(const char *phase)
{
    char what[64];
    int32_t i, k;
    state(phase);
    for (i = 0; i < N_LAYERS; i++) {
        int32_t l = layers[i], n = model_output_size(l);
        snprintf(what, sizeof what, "%%s.output_size", phase);
        put_int(what, (long)l, 0, (long)n);
        snprintf(what, sizeof what, "%%s.output", phase);
        for (k = 0; k < N_TS; k++) {
            put_i8(what, (long)l, (long)ts[k], model_output(l, ts[k]), n);
        }
    }
}

int main(void)
{
    static const int32_t bad_steps[] = { 0, -1, MODEL_MAX_STEPS + 1, INT32_MIN, INT32_MAX };
    int32_t i, r;
    put_int("err", MODEL_ERR_ARG, MODEL_ERR_NULL, 0);
    put_int("max_steps", 0, 0, MODEL_MAX_STEPS);
    dump("fresh");
    fill();
    r = model_run(seq, MODEL_MAX_STEPS, scores);
    put_scores("run", MODEL_MAX_STEPS, r);
    dump("runT");
#ifndef KP_NO_CHECKS
    fill();
    r = model_run(NULL, 1, scores);
    put_scores("run_null_seq", 1, r);
    put_int("run_null_scores", 1, 0, (long)model_run(seq, 1, NULL));
    put_int("run_null_both", 0, 0, (long)model_run(NULL, 0, NULL));
    dump("after_null");
#endif
    for (i = 0; i < 5; i++) {
        fill();
        r = model_run(seq, bad_steps[i], scores);
        put_scores("run_bad", (long)bad_steps[i], r);
    }
    dump("after_bad");
    fill();
    r = model_run(seq, 1, scores);
    put_scores("run", 1, r);
    dump("run1");
    return 0;
}
"""


def _ints(values: np.ndarray) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


def build_and_run(cc: str, work: Path, model: ModelQ, x: np.ndarray, no_checks: bool) -> dict[str, list[int] | None]:
    """Emit `model`, build its driver with the sanitizers (and -DKP_NO_CHECKS), run it: line key -> values."""
    work.mkdir(parents=True, exist_ok=True)
    files = render_sources(model, load_board("m4"), expected_for(model, x), "model", "c_api.pt")
    for fname in ("model.h", "model.c"):
        (work / fname).write_text(files[fname])
    streaming = golden.is_streaming(model)
    text = COMMON % {"steps": x.shape[1], "seq": ", ".join(map(str, _ints(x[0]))), "sentinel": SENTINEL}
    text += STREAMING_MAIN if streaming else BIDIRECTIONAL_MAIN % {"ts": ", ".join(map(str, range(x.shape[1])))}
    (work / "driver.c").write_text(text)
    exe = work / "driver"
    srcs = [str(work / "driver.c"), str(work / "model.c"), *sorted(str(p) for p in RUNTIME.glob("*.c"))]
    defs = ["-DKP_NO_CHECKS"] if no_checks else []
    cmd = [cc, "-O1", "-g", *SAN, *WARN, *defs, f"-I{RUNTIME}", f"-I{work}", *srcs, "-o", str(exe)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"build failed:\n{r.stderr[-4000:]}"
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
    run = subprocess.run([str(exe)], check=False, capture_output=True, text=True, env=env, timeout=120)
    report = [ln for ln in run.stderr.splitlines() if "runtime error" in ln or "AddressSanitizer" in ln]
    assert not report, "\n".join(report[:10])
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out: dict[str, list[int] | None] = {}
    for line in run.stdout.splitlines():
        key, _, vals = line.partition(" : ")
        assert key not in out, f"line {key!r} printed twice"
        out[key] = None if vals.strip() == "NULL" else [int(v) for v in vals.split()]
    return out


@pytest.fixture(scope="module")
def compiler() -> str:
    if CC is None:
        pytest.skip("no host C compiler")
    return CC


# ------------------------------------------------------------------------------------------------ checks

LAYER_EDGES = (-1, 0, 1, 2, I32_MIN, I32_MAX)  # -1, 0, last, NUM_LAYERS (2 layers), extremes


def check_state(out: dict, phase: str, hidden: list, cell: list) -> None:
    """hidden/cell/hidden_size at every edge layer: the expected values for layers 0 and 1 (cell None: NULL),
    NULL, NULL and ERR_ARG for every other layer."""
    for l in LAYER_EDGES:
        if l in (0, 1):
            assert out[f"{phase}.hidden_size {l} 0"] == [len(hidden[l])], (phase, l)
            assert out[f"{phase}.hidden {l} 0"] == _ints(hidden[l]), (phase, l)
            assert out[f"{phase}.cell {l} 0"] == (None if cell[l] is None else _ints(cell[l])), (phase, l)
        else:
            assert out[f"{phase}.hidden_size {l} 0"] == [ERR_ARG], (phase, l)
            assert out[f"{phase}.hidden {l} 0"] is None, (phase, l)
            assert out[f"{phase}.cell {l} 0"] is None, (phase, l)


def scores_line(logits: np.ndarray) -> list[int]:
    """What put_scores prints after a valid call: the best class, then the scores."""
    return [int(golden.predict(logits)), *_ints(logits)]


def untouched(result: int) -> list[int]:
    return [result] + [SENTINEL] * 3


def _input(model: ModelQ, seed: int) -> np.ndarray:
    return random_int8(np.random.default_rng(seed), (1, STEPS, model.input_size))


@pytest.mark.parametrize("no_checks", [False, True], ids=["checked", "KP_NO_CHECKS"])
def test_streaming_api_every_argument(compiler, tmp_path: Path, no_checks: bool) -> None:
    model = streaming_model()
    x = _input(model, 11)
    out = build_and_run(compiler, tmp_path, model, x, no_checks)
    assert out["err -1 -2"] == [0]  # MODEL_ERR_ARG, MODEL_ERR_NULL: distinct and negative
    zeros = [np.zeros(4, np.int8), np.zeros(2, np.int8)]
    check_state(out, "reset", zeros, [np.zeros(4, np.int16), None])
    assert all(out[f"step {t} 0"] == [0] for t in range(STEPS))

    full = golden.run_model(model, x)
    last = ([h[0, -1] for h in full.hidden], [full.cell[0][0, -1], None])
    check_state(out, "stepped", *last)
    assert out["scores 0"] == scores_line(full.logits[0])

    if no_checks:  # the NULL calls are left out of this build; only they are
        assert not [k for k in out if "null" in k]
    else:
        assert out["step_null 0 0"] == [ERR_NULL] and out["scores_null 0 0"] == [ERR_NULL]
        assert out["run_null_seq 1"] == untouched(ERR_NULL)
        assert out["run_null_scores 1 0"] == [ERR_NULL] and out["run_null_both 0 0"] == [ERR_NULL]
        check_state(out, "after_null", *last)  # no failed call reset or advanced the state
    for bad in (0, -1, I32_MIN):
        assert out[f"run_bad {bad}"] == untouched(ERR_ARG), bad
    check_state(out, "after_bad", *last)

    one = golden.run_model(model, x[:, :1])
    assert out["run 1"] == scores_line(one.logits[0])
    check_state(out, "run1", [h[0, -1] for h in one.hidden], [one.cell[0][0, -1], None])
    assert out[f"run {STEPS}"] == scores_line(full.logits[0])
    check_state(out, "runT", *last)


def check_outputs(out: dict, phase: str, outputs: list[np.ndarray], steps: int) -> None:
    """output_size and output(layer, t) at every edge: outputs[l][t] for valid ones, NULL / ERR_ARG otherwise."""
    for l in LAYER_EDGES:
        valid_l = l in (0, 1)
        size = outputs[l].shape[1] if valid_l else ERR_ARG
        assert out[f"{phase}.output_size {l} 0"] == [size], (phase, l)
        for t in (I32_MIN, -1, *range(steps), steps, I32_MAX):
            got = out[f"{phase}.output {l} {t}"]
            want = _ints(outputs[l][t]) if valid_l and 0 <= t < steps else None
            assert got == want, (phase, l, t)


def bidirectional_expected(model: ModelQ, x: np.ndarray) -> tuple[np.ndarray, list, list, list[np.ndarray]]:
    """logits, each layer's hidden and cell after the run as model_hidden/model_cell give them (the backward
    direction's for the bidirectional layer), and each layer's outputs [T, out_size]."""
    tr = golden.run_model(model, x)
    bi = model.layers[0]
    assert isinstance(bi, BiLayerQ)
    hs = bi.hidden_size
    _, c_bwd = golden.run_cell(bi.bwd, model, x[:, ::-1])
    hidden = [tr.hidden[0][0, 0, hs:], tr.hidden[1][0, -1]]
    return tr.logits[0], hidden, [c_bwd[0, -1], None], [tr.hidden[0][0], tr.hidden[1][0]]


@pytest.mark.parametrize("no_checks", [False, True], ids=["checked", "KP_NO_CHECKS"])
def test_bidirectional_api_every_argument(compiler, tmp_path: Path, no_checks: bool) -> None:
    model = bidirectional_model()
    x = _input(model, 12)
    out = build_and_run(compiler, tmp_path, model, x, no_checks)
    assert out["err -1 -2"] == [0] and out["max_steps 0 0"] == [STEPS]

    # before any run: the arena's zeros, everywhere a valid layer and step point
    fresh = [np.zeros((STEPS, 8), np.int8), np.zeros((STEPS, 2), np.int8)]
    check_state(out, "fresh", [np.zeros(4, np.int8), np.zeros(2, np.int8)], [np.zeros(4, np.int16), None])
    check_outputs(out, "fresh", fresh, STEPS)

    logits, hidden, cell, outputs = bidirectional_expected(model, x)
    assert out[f"run {STEPS}"] == scores_line(logits)
    check_state(out, "runT", hidden, cell)
    check_outputs(out, "runT", outputs, STEPS)

    if no_checks:
        assert not [k for k in out if "null" in k]
    else:
        assert out["run_null_seq 1"] == untouched(ERR_NULL)
        assert out["run_null_scores 1 0"] == [ERR_NULL] and out["run_null_both 0 0"] == [ERR_NULL]
        check_state(out, "after_null", hidden, cell)
        check_outputs(out, "after_null", outputs, STEPS)
    for bad in (0, -1, STEPS + 1, I32_MIN, I32_MAX):
        assert out[f"run_bad {bad}"] == untouched(ERR_ARG), bad
    check_state(out, "after_bad", hidden, cell)
    check_outputs(out, "after_bad", outputs, STEPS)

    # a one-step run: step 0 is its output; steps 1.. still hold the longer run's (documented in model.h)
    logits1, hidden1, cell1, outputs1 = bidirectional_expected(model, x[:, :1])
    assert out["run 1"] == scores_line(logits1)
    check_state(out, "run1", hidden1, cell1)
    mixed = [np.concatenate([o1, o[1:]]) for o1, o in zip(outputs1, outputs, strict=True)]
    check_outputs(out, "run1", mixed, STEPS)


def test_header_defines_and_documents_the_error_values(tmp_path: Path) -> None:
    """model.h #defines the error codes and states each function's result for a bad argument and KP_NO_CHECKS."""
    for model in (streaming_model(), bidirectional_model()):
        x = _input(model, 13)
        h = render_sources(model, load_board("m4"), expected_for(model, x), "kws", "c_api.pt")["kws.h"]
        assert "#define KWS_ERR_ARG (-1)" in h and "#define KWS_ERR_NULL (-2)" in h
        assert "KP_NO_CHECKS" in h
        starts = ("int32_t kws_", "const int8_t *kws_", "const int16_t *kws_")
        decls = [ln for ln in h.splitlines() if ln.startswith(starts)]
        assert len(decls) == 6, decls
        for fn in ("kws_run", "kws_hidden_size"):
            block = h[: h.index(fn + "(")].rsplit("*/", 2)[-2]
            assert "KWS_ERR_" in block, fn
