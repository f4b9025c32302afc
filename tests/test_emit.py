"""The emitter: deterministic sources, atomic writes, emitted C equal to the golden model (host and QEMU)."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np
import pytest
from factories import random_model

from kpgen import KpgenError
from kpgen.codegen.emit import RUNTIME, arena_bytes, render_sources, write_tree
from kpgen.reference import golden
from kpgen.reference.vectors import expected_for
from kpgen.target import qemu, toolchain
from kpgen.target.boards import load_board
from kpgen.target.verify import verify_output

WARN = ["-std=c99", "-Wall", "-Wextra", "-Wconversion", "-Wshadow", "-Werror", "-pedantic"]


def _model_and_vectors(seed: int = 1, hidden=(32, 16), steps: int = 7, samples: int = 4):
    rng = np.random.default_rng(seed)
    m = random_model(rng, 12, hidden, 5)
    xq = rng.integers(-127, 128, size=(samples, steps, 12)).astype(np.int8)
    return m, expected_for(m, xq)


def test_render_is_deterministic() -> None:
    m, exp = _model_and_vectors()
    a = render_sources(m, load_board("m4"), exp, "model", "x.pt")
    b = render_sources(m, load_board("m4"), exp, "model", "x.pt")
    assert a == b
    assert set(a) == {"model.h", "model.c", "main.c", "vectors.h", "vectors.c", "link.ld", "Makefile",
                      "CMakeLists.txt", "arm-none-eabi.cmake", "kpgen_size.cmake", "board/kpgen_console.h",
                      "board/kpgen_chip.h"}
    lib = render_sources(m, load_board("m4"), exp, "model", "x.pt", target="lib")
    assert set(lib) == {"model.h", "model.c", "Makefile", "CMakeLists.txt", "arm-none-eabi.cmake", "kpgen_size.cmake"}
    assert lib["model.c"] == a["model.c"] and "libmodel.a" in lib["Makefile"]
    assert "static const int32_t model_l0_wx_a[" in a["model.c"]  # int8 factors packed 4 to a word


def test_bad_name_is_refused() -> None:
    m, exp = _model_and_vectors()
    with pytest.raises(KpgenError, match="C identifier"):
        render_sources(m, load_board("m4"), exp, "my-model", "x.pt")


def test_write_tree_refuses_existing_and_replaces_with_force(tmp_path: Path) -> None:
    out = tmp_path / "fw"
    write_tree(out, {"a.c": "int a;\n"}, {"k": 1}, force=False)
    with pytest.raises(KpgenError, match="--force"):
        write_tree(out, {"a.c": "int b;\n"}, {"k": 2}, force=False)
    assert (out / "a.c").read_text() == "int a;\n"
    write_tree(out, {"b.c": "int b;\n"}, {"k": 2}, force=True)
    assert not (out / "a.c").exists() and (out / "b.c").exists() and (out / "runtime" / "kp_common.h").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["fw"]  # no temporary directory left behind


def test_write_tree_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "fw"
    with pytest.raises(KpgenError, match="cannot write"):
        write_tree(out, {"a.c": "x", "a.c/b": "y"}, {}, force=False)  # a.c is a file, cannot be a directory
    assert list(tmp_path.iterdir()) == []


HOST_HARNESS = r"""
#include <stdint.h>
#include <string.h>
#include "model.h"
/* run one sequence; copy out every layer's h and c after every step, then the scores */
int32_t host_run(const int8_t *seq, int32_t steps, int8_t *hs, int16_t *cs, int32_t *scores)
{
    int32_t t, l, off_h = 0, off_c = 0;
    model_reset();
    for (t = 0; t < steps; t++) {
        model_step(seq + t * MODEL_INPUT_SIZE);
        for (l = 0; l < MODEL_NUM_LAYERS; l++) {
            int32_t n = model_hidden_size(l);
            memcpy(hs + off_h, model_hidden(l), (size_t)n);
            memcpy(cs + off_c, model_cell(l), (size_t)n * sizeof(int16_t));
            off_h += n;
            off_c += n;
        }
    }
    return model_scores(scores);
}
"""


def test_emitted_model_matches_golden_on_host(tmp_path: Path) -> None:
    """The emitted model.c, built for the host with the strict flags, equals the golden model at every step."""
    m, exp = _model_and_vectors(seed=5, hidden=(24, 8), steps=6)
    files = render_sources(m, load_board("m4"), exp, "model", "x.pt")
    for name in ("model.h", "model.c"):
        (tmp_path / name).write_text(files[name])
    (tmp_path / "harness.c").write_text(HOST_HARNESS)
    srcs = [str(tmp_path / "model.c"), str(tmp_path / "harness.c")] + [str(p) for p in sorted(RUNTIME.glob("*.c"))]
    lib = tmp_path / "libmodel.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", *WARN, f"-I{RUNTIME}", f"-I{tmp_path}", *srcs, "-o", str(lib)],
                   check=True)
    dll = ctypes.CDLL(str(lib))
    trace = golden.run_model(m, exp.inputs)
    hsum = sum(l.hidden_size for l in m.layers)
    for s in range(len(exp.inputs)):
        steps = exp.inputs.shape[1]
        seq = np.ascontiguousarray(exp.inputs[s])
        hs = np.zeros(steps * hsum, np.int8)
        cs = np.zeros(steps * hsum, np.int16)
        scores = np.zeros(m.num_classes, np.int32)
        best = dll.host_run(seq.ctypes.data_as(ctypes.c_void_p), steps, hs.ctypes.data_as(ctypes.c_void_p),
                            cs.ctypes.data_as(ctypes.c_void_p), scores.ctypes.data_as(ctypes.c_void_p))
        want_h = np.concatenate([h[s] for h in trace.hidden], axis=1).reshape(-1)
        want_c = np.concatenate([c[s] for c in trace.cell], axis=1).reshape(-1)
        assert np.array_equal(hs, want_h) and np.array_equal(cs, want_c)
        assert np.array_equal(scores, trace.logits[s]) and best == golden.predict(trace.logits[s:s + 1])[0]


def test_arena_size_is_checked_by_the_compiler(tmp_path: Path) -> None:
    """model.c refuses to compile if the arena size kpgen reports differs from sizeof(arena)."""
    m, exp = _model_and_vectors(hidden=(20, 12))
    files = render_sources(m, load_board("m4"), exp, "model", "x.pt")
    n = arena_bytes(m)
    assert f"#define MODEL_ARENA_BYTES {n}\n" in files["model.h"]
    cmd = ["cc", "-c", *WARN, f"-I{RUNTIME}", f"-I{tmp_path}", str(tmp_path / "model.c"), "-o", str(tmp_path / "m.o")]
    (tmp_path / "model.c").write_text(files["model.c"])
    (tmp_path / "model.h").write_text(files["model.h"])
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    (tmp_path / "model.h").write_text(files["model.h"].replace(f"ARENA_BYTES {n}\n", f"ARENA_BYTES {n + 4}\n"))
    assert subprocess.run(cmd, capture_output=True).returncode != 0


@pytest.mark.qemu
def test_firmware_bit_exact_and_mismatch_detected(tmp_path: Path) -> None:
    """On the M4 under QEMU: bit-exact on every sample; a wrong expectation makes the firmware and the host fail."""
    m, exp = _model_and_vectors(seed=2, samples=3)
    board = load_board("m4")
    good = tmp_path / "good"
    write_tree(good, render_sources(m, board, exp, "model", "x.pt"), {}, force=False)
    vec = {"samples": 3, "labels": [-1] * 3, "scores": exp.scores.tolist(),
           "final_digests": [f"{int(d):08x}" for d in exp.digests[:, -1]]}
    res = qemu.run(toolchain.build(good).elf, board, timeout=60)
    assert res.exit_code == 0 and verify_output(res.stdout, vec).passed

    digests = exp.digests.copy()
    digests[1, 3] ^= 1  # one step of one sample expected differently
    bad = tmp_path / "bad"
    exp_bad = type(exp)(inputs=exp.inputs, scores=exp.scores, digests=digests, labels=exp.labels)
    write_tree(bad, render_sources(m, board, exp_bad, "model", "x.pt"), {}, force=False)
    res = qemu.run(toolchain.build(bad).elf, board, timeout=60)
    assert res.exit_code == 1
    assert "S 1 " in res.stdout and "MISMATCH step=3 scores=0" in res.stdout
    v = verify_output(res.stdout, vec)
    assert not v.passed and v.exact == 2
