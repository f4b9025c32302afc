"""Emitted projects put together: the Pico's CMake build boots like its Makefile build (kpgen's boot2, fw.uf2),
two models emitted under different names link into one program, and a project compiles only the kernels its
model calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_shipping import clean_env, sh

from kpgen.pipeline import emit_project
from kpgen.target import uf2

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "mnist-kplstm.pt"

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("linking")


@pytest.fixture(scope="module")
def vectors(work: Path) -> Path:
    path = work / "vectors.npz"
    np.savez(path, x=np.random.default_rng(3).uniform(0.0, 1.0, size=(1, 28, 28)))
    return path


# --------------------------------------------------------------------------------------------- Pico CMake boot2


def test_pico_cmake_build_has_kpgen_boot2_and_uf2(work: Path, vectors: Path) -> None:
    """CMake builds kpgen's boot2 exactly as the Makefile does (same 256 bytes, CRC good) and writes fw.uf2 of
    fw.bin; a user's -DKPGEN_BOOT2 lands as it is. The emitted project carries no zero boot2 placeholder."""
    d = work / "pico"
    emit_project(EXAMPLE, "rpi-pico", d, samples=1, vectors=vectors)
    assert not list((d / "board").glob("boot2*.c"))
    env = clean_env(work)
    sh(["make", "-j2"], d, env)
    made = (d / "fw.bin").read_bytes()
    cm = work / "pico-cmake"
    sh(["cmake", "-S", str(d), "-B", str(cm)], work, env)
    sh(["cmake", "--build", str(cm), "-j2"], work, env)
    image = (cm / "fw.bin").read_bytes()
    assert image[:256] == made[:256] and uf2.boot2_ok(image[:256]) and image[:2] == b"\x00\xb5"
    blocks = uf2.read_uf2((cm / "fw.uf2").read_bytes())
    assert blocks[0].address == 0x10000000 and b"".join(b.payload for b in blocks)[:len(image)] == image
    fake = work / "boot2.S"
    fake.write_text('\t.section .boot2, "ax"\n' + "".join(f"\t.byte {i % 251 + 1}\n" for i in range(256)))
    cm2 = work / "pico-cmake-user-boot2"
    sh(["cmake", "-S", str(d), "-B", str(cm2), f"-DKPGEN_BOOT2={fake}"], work, env)
    sh(["cmake", "--build", str(cm2), "-j2"], work, env)
    assert (cm2 / "fw.bin").read_bytes()[:256] == bytes(i % 251 + 1 for i in range(256))


# --------------------------------------------------------------------------------------------- README boards table


def test_readme_real_board_clocks_match_board_toml() -> None:
    """Every real board's row in README's Boards table gives the clock the start-up programs and the reset clock,
    as its board.toml sets them ([clock] hz, [flash] reset_clock_hz)."""
    from kpgen.target.boards import list_boards

    rows = {ln.split("|")[1].strip().strip("`"): [c.strip() for c in ln.split("|")[1:-1]]
            for ln in (REPO / "README.md").read_text(encoding="utf-8").splitlines() if ln.startswith("| `")}
    real = [b for b in list_boards() if not b.emulated]
    assert len(real) >= 6
    for b in real:
        clock = rows[b.name][4]
        run, reset = clock.split(" / ", 1)
        assert b.clock_hz is not None and b.flash.reset_clock_hz is not None
        assert float(run) * 1e6 == b.clock_hz, (b.name, clock)
        assert float(reset.split(" MHz")[0].replace("about ", "")) * 1e6 == b.flash.reset_clock_hz, (b.name, clock)


# --------------------------------------------------------------------------------------------- head kernels


HEAD_FILES = {"kp_pool_sum_s8.c", "kp_pool_mean_s8.c", "kp_pool_max_s8.c", "kp_fc_relu_s8.c"}
HEAD_USES = {"last": set(), "mean": {"kp_pool_sum_s8.c", "kp_pool_mean_s8.c"}, "max": {"kp_pool_max_s8.c"},
             "mlp": {"kp_fc_relu_s8.c"}, "mlp-mean": {"kp_pool_sum_s8.c", "kp_pool_mean_s8.c", "kp_fc_relu_s8.c"}}


@pytest.mark.parametrize("head", list(HEAD_USES))
def test_project_compiles_only_its_head_kernels(head: str, work: Path) -> None:
    """The pooling and MLP-head kernels are in a project's build (Makefile, CMake) only when its head calls them;
    a last-step Linear head's library links none of them and its size.txt names none."""
    from checkpoints import save, tiny_checkpoint
    from test_heads import head_checkpoint

    ck = tiny_checkpoint(0) if head == "last" else head_checkpoint("lstm", head)
    d = work / f"head-{head}"
    emit_project(save(ck, work / f"head-{head}.pt"), "m4", d, target="lib")
    for build in ("Makefile", "CMakeLists.txt"):
        text = (d / build).read_text()
        assert {f for f in HEAD_FILES if f"runtime/{f}" in text} == HEAD_USES[head], (build, head)
    assert "runtime/kp_fc_s8.c" in (d / "CMakeLists.txt").read_text()
    if head == "last":
        sh(["make", "-j2"], d, clean_env(work))
        members = sh(["arm-none-eabi-ar", "t", str(d / "libmodel.a")], d).stdout.split()
        assert "kp_fc_s8.o" in " ".join(members) and not any("pool" in m or "fc_relu" in m for m in members)
        size = (d / "size.txt").read_text()
        assert "kp_fc_s8" in size and "pool" not in size and "fc_relu" not in size


# --------------------------------------------------------------------------------------------- runtime size


def test_lstm_linked_runtime_within_target(work: Path) -> None:
    """docs/benchmarks.md's target: the runtime files an LSTM model with a last-step Linear head links, compiled
    alone at -Os for the Cortex-M4 with the defines emit gives a plain-KP model, stay within 4,096 bytes of .text;
    the deep-Kronecker/HKP stages, the pooling and the MLP-head kernels are not counted (it compiles none of them)."""
    from checkpoints import save, tiny_checkpoint

    from kpgen.studies import bench

    d = work / "plain-lstm"
    emit_project(save(tiny_checkpoint(0), work / "plain-lstm.pt"), "m4", d, target="lib")
    make = (d / "Makefile").read_text()
    assert all(f"-D{x}" in make or x in make.split() for x in bench.PLAIN_DEFINES), make[:2000]
    for f in (*bench.KRON_EXT_RUNTIME, "kp_pool_sum_s8.c", "kp_pool_mean_s8.c", "kp_pool_max_s8.c",
              "kp_fc_relu_s8.c"):
        assert f not in bench.SHARED_RUNTIME
    assert {*bench.SHARED_RUNTIME, *bench.KRON_EXT_RUNTIME, "kp_lstm_step_s8.c"} >= {
        f.removeprefix("runtime/") for f in make.split() if f.startswith("runtime/") and f.endswith(".c")}
    sizes = bench.runtime_text_bytes("m4", "-Os")
    assert all(sizes[f] == 0 for f in bench.KRON_EXT_RUNTIME)
    assert 2000 < bench.linked_runtime(sizes, "lstm") <= 4096, sizes


# --------------------------------------------------------------------------------------------- two models, one program


TWO_MODELS_C = r"""/* Two kpgen libraries in one program: each model's scores on its own inputs. */
#include <stdio.h>

#include "kws.h"
#include "gest.h"

static const int8_t kws_x[{kws_n}] = {{ {kws_x} }};
static const int8_t gest_x[{gest_n}] = {{ {gest_x} }};

int main(void)
{{
    int32_t a[KWS_NUM_CLASSES], b[GEST_NUM_CLASSES], k;
    kws_run(kws_x, {steps}, a);
    gest_run(gest_x, {steps}, b);
    for (k = 0; k < KWS_NUM_CLASSES; k++) {{
        printf("kws %ld\n", (long)a[k]);
    }}
    for (k = 0; k < GEST_NUM_CLASSES; k++) {{
        printf("gest %ld\n", (long)b[k]);
    }}
    return 0;
}}
"""


def test_two_libraries_link_into_one_program(work: Path) -> None:
    """Two models emitted with different --name as libraries (different heads, so different runtime builds: one
    with the pooling kernels), each with its shape-specialised kernels, link into one host program and each gives
    the integer reference's scores; every global symbol of a library carries its model's prefix."""
    from checkpoints import save, tiny_checkpoint
    from test_heads import head_checkpoint

    from kpgen.frontend.load import load_checkpoint
    from kpgen.quant import quantize
    from kpgen.reference.vectors import expected_for

    steps, env = 5, clean_env(work)
    cks = {"kws": save(tiny_checkpoint(0), work / "kws.pt"),
           "gest": save(head_checkpoint("lstm", "mean"), work / "gest.pt")}
    app = work / "two-models"
    app.mkdir()
    xs, want = {}, {}
    for i, (name, ck) in enumerate(cks.items()):
        d = work / f"lib-{name}"
        emit_project(ck, "m4", d, name=name, target="lib")
        assert "void kp_matvec_fixed_s8(" in (d / f"{name}.c").read_text()  # per-matrix kernels: renamed at build
        sh(["make", "-j2", "CROSS=", "ARCH="], d, env)
        syms = sh(["nm", "-g", "--defined-only", str(d / f"lib{name}.a")], d).stdout.split("\n")
        defined = [ln.split()[-1] for ln in syms if len(ln.split()) == 3]
        assert f"{name}_kp_matvec_fixed_s8" in defined and f"{name}_kp_lstm_step_s8" in defined, defined
        assert all(s.startswith(f"{name}_") for s in defined), defined
        model = quantize.quantize_model(load_checkpoint(ck))
        x = np.random.default_rng(10 + i).integers(-127, 128, size=(1, steps, model.input_size)).astype(np.int8)
        xs[name], want[name] = x, expected_for(model, x).scores[0]
    (app / "main.c").write_text(TWO_MODELS_C.format(
        steps=steps, kws_n=xs["kws"].size, gest_n=xs["gest"].size,
        kws_x=", ".join(str(int(v)) for v in xs["kws"].reshape(-1)),
        gest_x=", ".join(str(int(v)) for v in xs["gest"].reshape(-1))))
    sh(["cc", "-std=c99", "-Wall", "-Werror", f"-I{work / 'lib-kws'}", f"-I{work / 'lib-gest'}", "main.c",
        str(work / "lib-kws" / "libkws.a"), str(work / "lib-gest" / "libgest.a"), "-o", "two"], app, env)
    out = sh([str(app / "two")], app, env).stdout.split("\n")
    got = {n: [int(ln.split()[1]) for ln in out if ln.startswith(n + " ")] for n in ("kws", "gest")}
    assert got["kws"] == [int(v) for v in want["kws"]] and got["gest"] == [int(v) for v in want["gest"]], (got, want)
