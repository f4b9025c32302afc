"""`make bench`: dense and Kronecker (KP) int8 LSTM steps on several cores, measured side by side in one run.

For every LSTM shape (hidden, input) and every core, a random float model (realistic weight scales) is
quantized by kpgen.quant.quantize, emitted by the normal emitter with 2 test sequences, built, run bit-exact under
QEMU and profiled (kpgen.pipeline.run_project). Each configuration is emitted twice, with sequences of 1 and
of 2 time steps: one time step costs I(2) - I(1) instructions, which removes the fixed cost of the classifier
head and the call overhead exactly (the per-step work does not depend on the data, up to the branches of
saturating arithmetic). The same difference gives the matrix part (the mat-vec stage functions)
and the estimated cycles (kpgen.target.cycles; an estimate, docs/cycle-model.md).

Writes docs/benchmarks.md and docs/benchmarks.png and prints the issue's targets with measured values.
Run: `make bench` or `python -m kpgen.studies.bench [--quick] [--jobs N] [--out DIR]`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from kpgen import KpgenError, __version__, pipeline
from kpgen.codegen.emit import RUNTIME, render_sources, write_tree
from kpgen.frontend import synth
from kpgen.ir import ModelF
from kpgen.quant import quantize
from kpgen.reference import golden
from kpgen.reference.vectors import expected_for
from kpgen.tables import markdown_table
from kpgen.target import elf as elfread
from kpgen.target import proc, toolchain
from kpgen.target.boards import Board, load_board

SHAPES = ((128, 28), (32, 12), (64, 6), (128, 128))  # (hidden, input)
KINDS = ("dense", "kp")
# (label, board, extra -D macros): the M55 twice, with and without its Helium path.
TARGETS = (
    ("m0", "m0", ()),
    ("m4", "m4", ()),
    ("m7", "m7", ()),
    ("m55", "m55", ()),
    ("m55 no-MVE", "m55", ("KP_NO_MVE",)),
)
STEPS = (1, 2)  # one step = the difference between firmwares with 2 and 1 time steps
SAMPLES = 2
NUM_CLASSES = 10
MIN_COMPRESSION = 16.0
# Functions of the matrix part of a step (the mat-vec stages of the runtime): their instructions per MAC.
MATRIX_FUNCTION = re.compile(r"^kp_(matvec|kron|dense|gemv|mat)")

REPO_ROOT = Path(__file__).resolve().parents[2]  # the studies run from a checkout and write into its docs/
DOCS = REPO_ROOT / "docs"


# --------------------------------------------------------------------------------------------- models


def kp_factors(rows: int, cols: int, min_compression: float = MIN_COMPRESSION) -> tuple[int, int, int, int]:
    """(m1, n1, m2, n2) with m1*m2 = rows, n1*n2 = cols, at least `min_compression` fewer parameters than
    the dense matrix, and the fewest multiply-accumulates (golden.kp_matvec_macs); ties: fewer parameters.

    Only factor shapes whose product can have full rank count (rank(A (x) B) = rank(A) rank(B)): a 512 x 1
    times 1 x 28 "factorisation" has the fewest MACs of all but is a rank-1 matrix, not an LSTM weight.
    (kpgen.frontend.synth.min_mac_factors; a shape with no such factors is a KpgenError here.)"""
    try:
        return synth.min_mac_factors(rows, cols, min_compression)
    except ValueError:
        raise KpgenError(
            f"no Kronecker factors of a {rows} x {cols} matrix reach {min_compression}x compression"
        ) from None


def matrix_macs(f: tuple[int, int, int, int], kind: str) -> int:
    m1, n1, m2, n2 = f
    return m1 * m2 * n1 * n2 if kind == "dense" else golden.kp_matvec_macs(m1, n1, m2, n2)


def _factors(hidden: int, inputs: int, kind: str) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    h4 = 4 * hidden
    if kind == "dense":  # dense = KP with B of shape 1 x 1
        return (h4, inputs, 1, 1), (h4, hidden, 1, 1)
    return kp_factors(h4, inputs), kp_factors(h4, hidden)


def random_model(hidden: int, inputs: int, kind: str, seed: int = 0) -> ModelF:
    """A calibrated one-layer LSTM classifier with random float weights of trained-LSTM scale
    (kpgen.frontend.synth.random_model_f), 'dense' (B = [[1]]) or 'kp' (kp_factors at MIN_COMPRESSION)."""
    fx, fh = _factors(hidden, inputs, kind)
    return synth.random_model_f(hidden, inputs, NUM_CLASSES, wx_factors=fx, wh_factors=fh, seed=seed)


# --------------------------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class Config:
    hidden: int
    inputs: int
    kind: str  # "dense" or "kp"
    target: str  # label in TARGETS
    act: str | None = None  # activation table variant (golden.ACT_TABLES); None: the board's default

    @property
    def act_table(self) -> str:
        """The variant this configuration is built with (kpgen emit's default for the board when act is None)."""
        return self.act if self.act is not None else load_board(self.board).act_table

    @property
    def board(self) -> str:
        return next(b for label, b, _ in TARGETS if label == self.target)

    @property
    def defines(self) -> tuple[str, ...]:
        return next(d for label, _, d in TARGETS if label == self.target)

    @property
    def slug(self) -> str:
        act = "" if self.act is None else f"-{self.act}"
        return f"{self.kind}-{self.hidden}x{self.inputs}-{self.target.replace(' ', '_')}{act}"


@dataclass
class Result:
    config: Config
    factors: tuple  # (Wx factors, Wh factors), each (m1, n1, m2, n2)
    compression: float  # dense matrix parameters / KP parameters, both matrices
    macs: int  # multiply-accumulates of one step's two mat-vecs
    steps: dict  # T -> {"instructions", "matrix", "cycles", "per_function"}
    bit_exact: bool
    samples: int  # sequences checked bit for bit (each build)
    code_bytes: int  # model + runtime functions (kp_*, model_*) in flash
    weight_bytes: int  # model weights, biases and activation tables in flash
    flash_bytes: int  # the whole firmware image (with the C library and test vectors)
    arena_bytes: int
    stack_bytes: int  # deepest call chain from the model's API (toolchain.check_stack: -fstack-usage frames)
    error: str = ""

    def per_step(self, key: str) -> float:
        lo, hi = STEPS[0], STEPS[-1]
        return (self.steps[hi][key] - self.steps[lo][key]) / (hi - lo)


def _board_for(cfg: Config) -> Board:
    b = load_board(cfg.board)
    if cfg.defines:
        b = dataclasses.replace(b, defines=tuple(b.defines) + cfg.defines)
    return b


def _code_bytes(elf: Path, name: str) -> int:
    """Flash bytes of the model's and the runtime's functions (kp_*, <name>_*), without the C library."""
    return sum(size for _, size, sym in toolchain.symbols(elf) if sym.startswith(("kp_", f"{name}_")))


def run_config(cfg: Config, work: Path, seed: int = 0) -> Result:
    """Emit, build, run bit-exact and profile one configuration for every T in STEPS."""
    fx, fh = _factors(cfg.hidden, cfg.inputs, cfg.kind)
    h4 = 4 * cfg.hidden
    dense_params = h4 * cfg.inputs + h4 * cfg.hidden
    kp_params = sum(m1 * n1 + m2 * n2 for m1, n1, m2, n2 in (fx, fh))
    res = Result(
        config=cfg, factors=(fx, fh), compression=dense_params / kp_params if cfg.kind == "kp" else 1.0,
        macs=matrix_macs(fx, cfg.kind) + matrix_macs(fh, cfg.kind), steps={}, bit_exact=True, samples=SAMPLES,
        code_bytes=0, weight_bytes=0, flash_bytes=0, arena_bytes=0, stack_bytes=0,
    )  # fmt: skip
    try:
        model = random_model(cfg.hidden, cfg.inputs, cfg.kind, seed=seed + cfg.hidden + cfg.inputs)
        qmodel = golden.with_act_tables(quantize.quantize_model(model), cfg.act_table)
        x = synth.random_inputs(seed + 7, SAMPLES, max(STEPS), cfg.inputs)
        xq = golden.quantize_input(x, qmodel.input_scale)
        board = _board_for(cfg)
        for steps in STEPS:
            expected = expected_for(qmodel, xq[:, :steps])
            out = work / f"{cfg.slug}-T{steps}"
            files = render_sources(qmodel, board, expected, "model", "kpgen.studies.bench")
            manifest = pipeline.project_manifest(
                model, qmodel, board, expected, name="model", source="kpgen.studies.bench random model",
                accuracy={"test_set": "random inputs", "test_samples": int(len(expected.inputs)), "float": None,
                          "int8_golden": None},
            )  # fmt: skip
            write_tree(out, files, manifest, force=True)
            rep = pipeline.run_project(out, timeout=600.0)
            res.bit_exact &= bool(rep.passed)
            if not rep.passed or rep.instructions is None:
                res.error = f"T={steps}: not bit-exact or not profiled (exit {rep.exit_code}, fault {rep.fault_pc})"
                return res
            matrix = sum(n for f, n in rep.per_function.items() if MATRIX_FUNCTION.match(f))
            res.steps[steps] = {
                "instructions": rep.instructions,
                "matrix": matrix,
                "cycles": rep.cycles.cycles if rep.cycles is not None else float("nan"),
                "per_function": dict(rep.per_function),
            }
            if steps == max(STEPS):
                elf = out / "fw.elf"
                res.code_bytes = _code_bytes(elf, "model")
                res.weight_bytes = rep.weight_bytes_flash
                res.flash_bytes = rep.sizes["text"] + rep.sizes["data"]
                res.arena_bytes = rep.manifest["arena_bytes"]
                sc = rep.stack_check
                res.stack_bytes = sc.bytes if isinstance(sc, toolchain.StackCheck) else 0
    except KpgenError as e:
        res.bit_exact = False
        res.error = str(e)
    return res


# --------------------------------------------------------------------------------------------- runtime size


# What emit defines for a model of two-factor Kronecker or dense matrices (every bench model): the deep-Kronecker and
# HKP stages (kp_kron_deep_s8.c, kp_hkp_top_s8.c and their dispatch in kp_matvec_s8.c) compile to nothing; and
# whose gate biases fit int16 (ir.gate_bias_bits, every bench model): KP_BIAS16.
PLAIN_DEFINES = ("KP_NO_KRON_EXT", "KP_BIAS16")


def runtime_text_bytes(board_name: str = "m4", opt: str = "-Os",
                       defines: Sequence[str] = PLAIN_DEFINES) -> dict[str, int]:
    """.text bytes of each runtime_c/*.c compiled alone for the board at `opt` (no weights, no C library), with
    the model's `defines` (default: as emitted for a model of plain two-factor or dense matrices)."""
    board = load_board(board_name)
    out: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="kpgen-bench-rt-") as tmp:
        for src in sorted(RUNTIME.glob("*.c")):
            obj = Path(tmp) / (src.stem + ".o")
            cmd = [toolchain.CC, *board.arch_flags, opt, "-std=c99", "-ffunction-sections", "-fdata-sections",
                   *[f"-D{d}" for d in (*board.defines, *defines)], f"-I{RUNTIME}", "-c", str(src), "-o",
                   str(obj)]  # fmt: skip
            done = proc.run(cmd, timeout=proc.TOOL_TIMEOUT)
            if done.returncode != 0:
                raise KpgenError(f"cannot compile {src.name} for {board_name}: {(done.err or done.out).strip()[:300]}")
            out[src.name] = sum(n for sec, n in elfread.section_sizes(obj).items() if sec.startswith(".text"))
    return out


# --------------------------------------------------------------------------------------------- report


def _fmt(v: float, digits: int = 0) -> str:
    if v != v:  # NaN
        return "n/a"
    return f"{v:,.{digits}f}"


def _find(results: list[Result], hidden: int, inputs: int, kind: str, target: str,
          act: str | None = None) -> Result | None:
    """The result of one configuration; act None: the board's default tables, else that variant (either way)."""
    for r in results:
        c = r.config
        if (c.hidden, c.inputs, c.kind, c.target) == (hidden, inputs, kind, target) and r.steps and (
                c.act == act if act is None else c.act_table == act):
            return r
    return None


def targets(results: list[Result], runtime: dict[str, int]) -> list[tuple[str, str, str, bool | None]]:
    """The issue's targets: (target, measured, limit, met) -- met None when it cannot be measured."""
    rows: list[tuple[str, str, str, bool | None]] = []
    d = _find(results, 128, 28, "dense", "m4")
    k = _find(results, 128, 28, "kp", "m4")
    if d:
        v = d.per_step("instructions")
        rows.append(("Dense int8 LSTM step, H=128 over 28 inputs, Cortex-M4: instructions", _fmt(v), "<= 150,000",
                     v <= 150_000))  # fmt: skip
        ipm = d.per_step("matrix") / d.macs if d.per_step("matrix") else float("nan")
        rows.append(("Matrix part of that step: instructions per MAC (Cortex-M4)", _fmt(ipm, 2), "<= 1.5",
                     None if ipm != ipm else ipm <= 1.5))  # fmt: skip
    if k:
        v = k.per_step("instructions")
        rows.append((f"KP int8 LSTM step, same shape ({k.compression:.1f}x compressed), Cortex-M4: instructions",
                     _fmt(v), "<= 20,000", v <= 20_000 and k.compression >= MIN_COMPRESSION))  # fmt: skip
    mve = _find(results, 128, 28, "dense", "m55")
    dsp = _find(results, 128, 28, "dense", "m55 no-MVE")
    if mve and dsp:
        ratio = dsp.per_step("instructions") / mve.per_step("instructions")
        rows.append(("Helium on the M55: dense step, DSP path / Helium path instructions",
                     f"{ratio:.2f}x ({_fmt(dsp.per_step('instructions'))} / {_fmt(mve.per_step('instructions'))})",
                     ">= 2.5x", ratio >= 2.5))  # fmt: skip
    lstm = linked_runtime(runtime, "lstm")
    rows.append(("Runtime code an LSTM model links (its runtime_c files' .text, -Os, Cortex-M4)", f"{lstm:,} bytes",
                 "<= 4,096 bytes", lstm <= 4096))  # fmt: skip
    return rows


CELL_RUNTIME = {"lstm": "kp_lstm_step_s8.c", "gru": "kp_gru_step_s8.c", "fastrnn": "kp_fastrnn_step_s8.c",
                "fastgrnn": "kp_fastgrnn_step_s8.c"}  # fmt: skip
MATVEC_RUNTIME = ("kp_matvec_s8.c", "kp_dense_x_s16.c", "kp_kron_xbt_s8.c", "kp_kron_at_s8.c")
KRON_EXT_RUNTIME = ("kp_kron_deep_s8.c", "kp_hkp_top_s8.c")  # deep-Kronecker and HKP matrices only
SHARED_RUNTIME = (*MATVEC_RUNTIME, "kp_activation_s16.c", "kp_fc_s8.c")  # a last-step Linear head: no pool, no MLP


def linked_runtime(runtime: dict[str, int], cell: str) -> int:
    """.text of the runtime files a one-cell model links: the shared kernels and its cell's step file (FastRNN and
    FastGRNN share one file; each links only its own functions, so this counts both: an upper bound)."""
    return sum(runtime.get(f, 0) for f in SHARED_RUNTIME) + runtime.get(CELL_RUNTIME[cell], 0)


def _table(results: list[Result]) -> list[str]:
    head = ("shape (H, I)", "matrices", "core", "instr/step", "matrix instr/MAC", "est. cycles/step",
            "code B", "weights B", "flash B", "arena B", "stack B", "bit-exact")  # fmt: skip
    rows: list[tuple[object, ...]] = []
    for (hidden, inputs) in SHAPES:
        for kind in KINDS:
            for label, _, _ in TARGETS:
                r = next((r for r in results if (r.config.hidden, r.config.inputs, r.config.kind, r.config.target,
                          r.config.act) == (hidden, inputs, kind, label, None)), None)  # fmt: skip
                if r is None:
                    continue
                what = "dense" if kind == "dense" else (
                    f"KP {r.compression:.0f}x: Wx {_fs(r.factors[0])}, Wh {_fs(r.factors[1])}")
                if not r.steps or len(r.steps) < len(STEPS):
                    rows.append((f"{hidden}, {inputs}", what, label, f"failed: {r.error}") + ("",) * 8)
                    continue
                ipm = r.per_step("matrix") / r.macs if r.per_step("matrix") else float("nan")
                rows.append((
                    f"{hidden}, {inputs}", what, label, _fmt(r.per_step("instructions")), _fmt(ipm, 2),
                    _fmt(r.per_step("cycles")), f"{r.code_bytes:,}", f"{r.weight_bytes:,}", f"{r.flash_bytes:,}",
                    f"{r.arena_bytes:,}", f"{r.stack_bytes:,}", f"{'yes' if r.bit_exact else 'NO'} ({2 * r.samples})",
                ))  # fmt: skip
    return markdown_table(head, rows)


def _stage_table(results: list[Result], hidden: int = 128, inputs: int = 28) -> list[str]:
    """Instructions per step by function (the runtime's stages) for one shape, dense and KP, per core."""
    cols = [(kind, label) for kind in KINDS for label, _, _ in TARGETS if label != "m0"]
    found: dict[tuple[str, str], Result] = {}
    for k, t in cols:
        r = _find(results, hidden, inputs, k, t)
        if r is not None and len(r.steps) == len(STEPS):
            found[(k, t)] = r
    cols = [c for c in cols if c in found]
    if not cols:
        return []

    def per_step(r: Result, fn: str) -> float:
        lo, hi = STEPS[0], STEPS[-1]
        return (r.steps[hi]["per_function"].get(fn, 0) - r.steps[lo]["per_function"].get(fn, 0)) / (hi - lo)

    funcs = sorted({f for c in cols for f in found[c].steps[STEPS[-1]]["per_function"]},
                   key=lambda f: -max(per_step(found[c], f) for c in cols))  # fmt: skip
    funcs = [f for f in funcs if any(per_step(found[c], f) for c in cols)]
    rows = [[f"`{f}`" + (" (matrix)" if MATRIX_FUNCTION.match(f) else "")] + [_fmt(per_step(found[c], f)) for c in cols]
            for f in funcs]  # fmt: skip
    rows.append(["**total**"] + [_fmt(found[c].per_step("instructions")) for c in cols])
    return markdown_table(["function (stage)"] + [f"{k} {t}" for k, t in cols], rows)


# --------------------------------------------------------------------------------------------- activation tables

ACT_SHAPE = (128, 28)  # the KP step the table variants are measured on
ACT_TARGETS = ("m0", "m4", "m55")
ACT_STAGES = ("kp_lstm_gates_s16", "kp_lstm_cell_s16")  # the stages that look tables up
EXAMPLES = REPO_ROOT / "examples"


def act_errors() -> dict[str, tuple[float, float]]:
    """Variant -> max |f(z) - table value| (sigmoid, tanh) over all 65,536 Q3.12 inputs, in real units."""
    z = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)
    zf = z.astype(np.float64) / 4096.0
    ref = (1.0 / (1.0 + np.exp(-zf)), np.tanh(zf))
    out = {}
    for v in golden.ACT_TABLES:
        errs = [float(np.max(np.abs(golden.kp_sigmoid_s16(z, golden.make_table(k, v)) / 32768.0 - f)))
                for k, f in zip(("sigmoid", "tanh"), ref, strict=True)]  # fmt: skip
        out[v] = (errs[0], errs[1])
    return out


def act_accuracy(examples: Path = EXAMPLES) -> list[tuple[str, int, float, dict[str, tuple[float, float]]]]:
    """Per shipped example: (file, test samples, float accuracy, variant -> (int8 accuracy, agreement with the
    float model's predictions)), from the golden model on the example's test split (no firmware needed)."""
    from kpgen.frontend.load import load_checkpoint
    from kpgen.reference import floatmodel

    rows = []
    for pt in sorted(examples.glob("*.pt")):
        model = load_checkpoint(pt)
        q = quantize.quantize_model(model)
        data = pipeline.test_set(model, None)
        if data.y is None:
            continue
        xq = golden.quantize_input(data.x, q.input_scale)
        flog = floatmodel.float_forward(model, data.x)
        fpred = golden.predict(flog)
        per = {}
        for v in golden.ACT_TABLES:
            logits = golden.run_model(golden.with_act_tables(q, v), xq).logits
            per[v] = (floatmodel.accuracy(logits, data.y), float(np.mean(golden.predict(logits) == fpred)))
        rows.append((pt.name, int(len(data.x)), floatmodel.accuracy(flog, data.y), per))
    return rows


def _act_section(results: list[Result], accuracy: list | None) -> list[str]:
    """The table variants side by side: bytes, worst error, instructions per step and in the look-up stages."""
    errs = act_errors()
    labels = [t for t in ACT_TARGETS if any(r.config.target == t and r.config.act is not None for r in results)]
    head = ["variant", "table bytes (sigmoid + tanh)", "max error sigmoid", "max error tanh"]
    head += [f"instr/step {t}" for t in labels] + [f"gates + cell {t}" for t in labels]
    rows = []
    for v in golden.ACT_TABLES:
        nbytes = 2 * 2 * int(golden.make_table("tanh", v).size)
        row = [f"`{v}`", f"{nbytes:,}", f"{errs[v][0]:.1e}", f"{errs[v][1]:.1e}"]
        found = [_find(results, *ACT_SHAPE, "kp", t, v) for t in labels]
        row += [_fmt(r.per_step("instructions")) if r and len(r.steps) == len(STEPS) else "n/a" for r in found]
        for r in found:
            if r and len(r.steps) == len(STEPS):
                lo, hi = (r.steps[t]["per_function"] for t in (STEPS[0], STEPS[-1]))
                row.append(_fmt(sum(hi.get(f, 0) - lo.get(f, 0) for f in ACT_STAGES) / (STEPS[-1] - STEPS[0])))
            else:
                row.append("n/a")
        rows.append(row)
    lines = [
        "## Activation tables: full or interpolated (`kpgen emit --act-table`)",
        "",
        "`full`: 1024 entries, one look-up (`mid[z >> 6]`). `interp` / `interp128`: 257 / 129 knots and linear",
        "interpolation between two of them (kp_activation_s16.h: one unaligned word load and SMLAD on the DSP cores,",
        "two loads on the M0, a second gather on Helium). *max error*: the worst |table value - f(z)| over all",
        "65,536 Q3.12 inputs. Instructions: the KP LSTM step "
        f"H = {ACT_SHAPE[0]}, I = {ACT_SHAPE[1]} of the table above, built with each variant (bit-exact).",
        "Defaults (`kpgen emit` without --act-table): " + ", ".join(
            f"{t} `{load_board(t).act_table}`" for t in ACT_TARGETS) + " (a board's `act_table` key, else `full`).",
        "",
        *markdown_table(head, rows),
        "",
    ]
    if accuracy:
        vs = list(golden.ACT_TABLES)
        arows = [[name, f"{n:,}", f"{100 * fa:.2f}%"] + [f"{100 * per[v][0]:.2f}% ({100 * per[v][1]:.1f}%)" for v in vs]
                 for name, n, fa, per in accuracy]  # fmt: skip
        lines += [
            "int8 test accuracy of the shipped examples (golden model, each example's test split) with each variant;",
            "in brackets the share of test samples whose int8 prediction equals the float model's.",
            "",
            *markdown_table(["example", "test samples", "float"] + [f"`{v}`" for v in vs], arows),
            "",
        ]
    return lines


def _fs(f: tuple[int, int, int, int]) -> str:
    return f"{f[0]}x{f[1]} (x) {f[2]}x{f[3]}"


# --------------------------------------------------------------------------------------------- issue 13: speed

# (what, (hidden, inputs, kind, target) or "example", quantity, "now" in docs/benchmarks.md before the work, limit)
SPEED_TARGETS = (
    ("KP (128, 28)", (128, 28, "kp", "m4"), "step", 18_964, 13_000),
    ("KP (128, 128)", (128, 128, "kp", "m4"), "step", 25_194, 18_000),
    ("KP (32, 12)", (32, 12, "kp", "m4"), "step", 5_264, 4_000),
    ("KP (128, 28)", (128, 28, "kp", "m55"), "step", 14_415, 8_000),
    ("dense (128, 28), matrix instr/MAC", (128, 28, "dense", "m0"), "matrix/MAC", 6.75, 4.5),
    ("dense (128, 28)", (128, 28, "dense", "m4"), "step", 114_054, 114_054),
    ("shipped MNIST example, per step", "mnist-kplstm.pt", "step", 23_450, 15_000),
)  # fmt: skip
SPEED_EXAMPLE_BOARD = "m4"


def _core_of(cfg: Config):
    """The fitted cost model of a configuration's core (None for extra -D macros or a chosen activation table:
    the model is fitted with the board's default tables)."""
    from kpgen.train import cost as costmodel

    if cfg.defines or cfg.act is not None:
        return None
    try:
        return costmodel.for_board(cfg.board)
    except KpgenError:
        return None


def _bench_step_shape(r: Result):
    from kpgen.train import cost as costmodel

    fx, fh = r.factors
    mx, mh = (costmodel.MatrixShape(((f[0], f[1]), (f[2], f[3]))) for f in (fx, fh))
    return costmodel.StepShape("lstm", r.config.hidden, ((mx, mh),))


def prediction_rows(results: list[Result], examples: list) -> list[tuple[str, str, float, float, float]]:
    """(model, board, measured, predicted, error %) of one step: every bench configuration with a fitted core,
    then every shipped example on SPEED_EXAMPLE_BOARD (examples: kpgen.studies.costfit.measure_examples)."""
    from kpgen.train import cost as costmodel

    rows = []
    for (hidden, inputs) in SHAPES:
        for kind in KINDS:
            for label, _, _ in TARGETS:
                r = _find(results, hidden, inputs, kind, label)
                core = _core_of(r.config) if r is not None and len(r.steps) == len(STEPS) else None
                if r is None or core is None:
                    continue
                what = f"bench {kind} ({hidden}, {inputs})"
                got, pred = r.per_step("instructions"), core.step_instructions(_bench_step_shape(r))
                rows.append((what, label, got, pred, 100.0 * (pred - got) / got))
    try:
        core = costmodel.for_board(SPEED_EXAMPLE_BOARD)
    except KpgenError:
        return rows
    if examples:
        for name, shape, m in examples:
            pred = core.step_instructions(shape)
            rows.append((f"example {name}", SPEED_EXAMPLE_BOARD, m.total, pred, 100.0 * (pred - m.total) / m.total))
    return rows


def speed_targets(results: list[Result], examples: list) -> list[tuple[str, str, str, str, str, str]]:
    """The issue's targets table: (step, core, now, target, measured, met)."""
    out = []
    for what, key, quantity, now, limit in SPEED_TARGETS:
        got: float = float("nan")
        if key == "mnist-kplstm.pt":
            core = SPEED_EXAMPLE_BOARD
            got = next((m.total for name, _, m in examples if name == key), float("nan"))
        else:
            assert isinstance(key, tuple)
            core = key[3]
            r = _find(results, *key)
            if r is not None and len(r.steps) == len(STEPS):
                got = r.per_step("matrix") / r.macs if quantity == "matrix/MAC" else r.per_step("instructions")
        digits = 2 if quantity == "matrix/MAC" else 0
        limit_text = "no worse" if limit == now else f"<= {_fmt(limit, digits)}"
        met = "n/a" if got != got else "yes" if got <= limit else "NO"
        out.append((what, core, _fmt(now, digits), limit_text, _fmt(got, digits), met))
    return out


# The element-wise stages of an LSTM step (kp_lstm_step_s8.c): the gate pass and the state update.
GATE_FUNCTION, CELL_FUNCTION = "kp_lstm_gates_s16", "kp_lstm_cell_s16"


def step_breakdown(results: list[Result]) -> list[tuple[str, str, str, str, str, str, str]]:
    """Where one step of each KP target on the M4 goes, per unit of work, from the same run: (shape, matrices
    (instr/MAC), gate pass (instr/gate row), cell (instr/unit), the rest, measured, target)."""
    out = []
    for what, key, quantity, _, limit in SPEED_TARGETS:
        if not isinstance(key, tuple) or key[2] != "kp" or key[3] != "m4" or quantity != "step":
            continue
        r = _find(results, *key)
        if r is None or len(r.steps) != len(STEPS):
            continue
        lo, hi = (r.steps[t]["per_function"] for t in (STEPS[0], STEPS[-1]))
        span = STEPS[-1] - STEPS[0]

        def part(name: str, lo=lo, hi=hi, span=span) -> float:
            return (hi.get(name, 0) - lo.get(name, 0)) / span

        hidden = r.config.hidden
        total, matrix = r.per_step("instructions"), r.per_step("matrix")
        gates, cell = part(GATE_FUNCTION), part(CELL_FUNCTION)
        rest = total - matrix - gates - cell
        out.append((what, f"{_fmt(matrix)} ({matrix / r.macs:.2f}/MAC)",
                    f"{_fmt(gates)} ({gates / (4 * hidden):.2f}/row)", f"{_fmt(cell)} ({cell / hidden:.2f}/unit)",
                    _fmt(rest), _fmt(total), f"<= {_fmt(limit)}"))
    return out


def _speed_section(results: list[Result], examples: list) -> list[str]:
    """The issue's targets with measured values, and the planner's prediction error (kpgen.train.cost)."""
    from kpgen.train import cost as costmodel

    lines = [
        "## Speed targets",
        "",
        "*now*: docs/benchmarks.md before the speed work; *measured*: this run (the MNIST example: one step of",
        f"examples/mnist-kplstm.pt on the {SPEED_EXAMPLE_BOARD}, I(T=2) - I(T=1) with random inputs).",
        "",
        *markdown_table(("step (H, inputs)", "core", "now", "target", "measured", "met"),
                        speed_targets(results, examples)),
        "",
    ]  # fmt: skip
    breakdown = step_breakdown(results)
    if breakdown:
        lines += [
            "Where one M4 step of the Kronecker targets goes (same run): the mat-vec stages per multiply-accumulate,",
            f"the gate pass (`{GATE_FUNCTION}`: two requantizing multiplies, a saturation and a table load per",
            f"gate row) per row, the state update (`{CELL_FUNCTION}`) per unit, and the rest (calls and set-up).",
            "",
            *markdown_table(("step (H, inputs)", "matrices", "gate pass", "cell", "rest", "measured", "target"),
                            breakdown),
            "",
        ]  # fmt: skip
    rows = prediction_rows(results, examples)
    if rows:
        try:
            fitted = costmodel.load()
            when = f"fitted on commit {fitted.commit}, {fitted.date}"
        except KpgenError:
            when = "not loadable"
        worst = max(abs(r[4]) for r in rows)
        lines += [
            "## Planner: predicted against measured instructions per step",
            "",
            "The planner's cost model (kpgen/train/costmodel.json, `make costmodel`, docs/cycle-model.md; "
            f"{when}) against this run.",
            f"Largest error: {worst:.2f}% (the target is 5%).",
            "",
            *markdown_table(("model", "core", "measured", "predicted", "error"),
                            [(w, b, _fmt(g), _fmt(p), f"{e:+.2f}%") for w, b, g, p, e in rows]),
            "",
        ]  # fmt: skip
    return lines


def write_markdown(results: list[Result], runtime: dict[str, int], path: Path, seconds: float,
                   plot: str | None, act_lines: list[str] | None = None, speed_lines: list[str] | None = None) -> None:
    rows = targets(results, runtime)
    lines = [
        "# Benchmarks: dense and Kronecker int8 LSTM steps",
        "",
        f"Written by `make bench` (`python -m kpgen.studies.bench`, kpgen {__version__}) in {seconds:.0f} s; "
        "every number",
        "below comes from that one run, side by side. Instruction counts are exact (QEMU instruction traces);",
        "cycles are **estimates** from the per-core cost model in [cycle-model.md](cycle-model.md).",
        "",
        "## Targets",
        "",
        *markdown_table(("target", "measured", "limit", "met"),
                        [(name, measured, limit, "n/a" if met is None else "yes" if met else "NO")
                         for name, measured, limit, met in rows]),
    ]  # fmt: skip
    lines += [
        "",
        "## One LSTM time step",
        "",
        "One layer, int8 weights and activations (docs/quantization.md), 10-class head (not counted in a step).",
        "*instr/step*: instructions of one time step, I(T=2) - I(T=1), from two firmwares whose test",
        "sequences have 2 and 1 steps. *matrix instr/MAC*: the same difference for the mat-vec stage functions",
        f"(`{MATRIX_FUNCTION.pattern}`), divided by the step's multiply-accumulates (dense: 4H(I+H); KP:",
        "n1 n2 m2 + m1 n1 m2 per matrix). *code*: the model's and runtime's functions in the firmware (kp_*,",
        "model_*) at -O2; *weights*: weights, biases and activation tables; *flash*: the whole test firmware",
        "(with newlib's printf and the test vectors). *arena*: the model's state and scratch; *stack*: the deepest",
        "call chain from the model's API (kpgen.target.toolchain.check_stack), summed -fstack-usage frames. "
        "*bit-exact*: every embedded",
        "test sequence of both firmwares (2 sequences each) equals the integer reference, scores and every state.",
        "`m55 no-MVE` is the M55 build with `-DKP_NO_MVE`: the DSP path on the same core.",
        "",
        *_table(results),
        "",
        "Runtime code at -Os for the Cortex-M4 (each runtime_c/*.c compiled alone, .text, with "
        + " ".join(f"-D{d}" for d in PLAIN_DEFINES) + " as emitted for two-factor and dense matrices): "
        + ", ".join(f"{k} {v:,}" for k, v in runtime.items()) + f"; all of them {sum(runtime.values()):,} bytes. "
        "A model links the shared kernels (" + ", ".join(SHARED_RUNTIME) + ") and its cell's step: "
        + ", ".join(f"{c} {linked_runtime(runtime, c):,}" for c in CELL_RUNTIME) + " bytes "
        "(-ffunction-sections and --gc-sections drop the rest).",
        "",
    ]
    if plot:
        lines += [f"![instructions per step]({plot})", ""]
    stages = _stage_table(results)
    if stages:
        lines += [
            "## Where a step goes (H = 128, I = 28)",
            "",
            "Instructions per time step by runtime function (exact; the same T = 2 minus T = 1 difference).",
            "",
            *stages,
            "",
        ]
    lines += act_lines or []
    lines += speed_lines or []
    lines += [
        "## How it is made",
        "",
        "- Models: random float LSTMs (kpgen.frontend.synth.random_model_f): matrix entries of trained-LSTM scale",
        "  (N(0, 1/fan_in); each Kronecker factor carries half of it), forget-gate bias 1, calibrated by running",
        "  the float model on random inputs;",
        "  quantized by kpgen.quant.quantize and emitted by kpgen.codegen.emit exactly as `kpgen emit` does. "
        "Dense matrices are",
        "  KP matrices whose B factor is 1 x 1.",
        "- KP factors: for each matrix, the factor shapes with the fewest multiply-accumulates among those at",
        f"  least {MIN_COMPRESSION:.0f}x smaller than the dense matrix (kpgen.studies.bench.kp_factors).",
        "- Inputs: uniform in [-1, 1], 2 sequences; every firmware checks itself against the integer reference",
        "  and kpgen checks its output again (kpgen.pipeline.run_project), then counts one inference.",
        "- Cores: QEMU's mps2-an386 (M4), mps2-an500 (M7), mps3-an547 (M55), microbit (M0); build flags from",
        "  boards/<name>/board.toml, -O2.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_plot(results: list[Result], path: Path) -> bool:
    """Grouped bars: instructions per step, dense vs KP, per core, one panel per shape (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), sharey=True)
    labels = [t[0] for t in TARGETS]
    xs = np.arange(len(labels))
    axes = np.atleast_1d(axes).ravel()
    for ax, (hidden, inputs) in zip(axes, SHAPES, strict=False):
        for j, (kind, color) in enumerate((("dense", "#888888"), ("kp", "#1f77b4"))):
            vals = []
            for label in labels:
                r = _find(results, hidden, inputs, kind, label)
                vals.append(r.per_step("instructions") if r else 0.0)
            bars = ax.bar(xs + (j - 0.5) * 0.38, vals, 0.38, color=color,
                          label="dense" if kind == "dense" else "KP >= 16x")
            for b, v in zip(bars, vals, strict=True):
                if v:
                    ax.text(b.get_x() + b.get_width() / 2, v, f"{v / 1000:.0f}k" if v >= 1000 else f"{v:.0f}",
                            ha="center", va="bottom", fontsize=7)  # fmt: skip
        ax.set_title(f"LSTM H={hidden}, I={inputs}")
        ax.set_xticks(xs, labels, rotation=20, ha="right", fontsize=8)
        if any(p.get_height() > 0 for p in ax.patches):
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[:: 2]:
        ax.set_ylabel("instructions per time step (exact, QEMU)")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.suptitle("kpgen int8 LSTM: one time step, dense vs Kronecker-compressed (make bench)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------- main


@click.command(name="bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DOCS,
              help="Where benchmarks.md and benchmarks.png go (default docs/).")
@click.option("--jobs", type=click.IntRange(min=1), default=max(1, min(2, os.cpu_count() or 1)), show_default=True,
              help="Configurations built and run in parallel.")
@click.option("--quick", is_flag=True, help="Only H=128, I=28 on the M4 and the M55 (a smoke test).")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the firmware directories here.")
def main(out: Path, jobs: int, quick: bool, keep: Path | None) -> None:
    """Dense and KP int8 LSTM steps on several cores, side by side in one run: writes docs/benchmarks.md.

    Exit status 0 when every configuration ran bit-exact, 1 otherwise, 2 on a usage or setup error.
    """
    try:
        code = run(out, jobs, quick, keep)
    except KpgenError as e:
        click.echo(f"kpgen bench: error: {e}", err=True)
        sys.exit(2)
    sys.exit(code)


def _speed_examples(work: Path, jobs: int) -> list:
    """One step of every shipped example on SPEED_EXAMPLE_BOARD (kpgen.studies.costfit.measure_examples)."""
    from kpgen.studies.costfit import measure_examples

    try:
        return measure_examples(SPEED_EXAMPLE_BOARD, work, jobs)
    except KpgenError as e:
        print(f"  examples not measured: {e}", flush=True)
        return []


def run(out: Path, jobs: int = 2, quick: bool = False, keep: Path | None = None) -> int:
    """The whole benchmark: build, run and profile every configuration, write the report; 0 if all bit-exact."""
    toolchain.check_tools()
    shapes = SHAPES[:1] if quick else SHAPES
    target_labels = ["m4", "m55", "m55 no-MVE"] if quick else [t[0] for t in TARGETS]
    configs = [Config(h, i, k, t) for (h, i) in shapes for k in KINDS for t in target_labels]
    configs += [Config(*ACT_SHAPE, "kp", t, v) for t in ACT_TARGETS if t in target_labels
                for v in golden.ACT_TABLES if v != load_board(t).act_table]  # fmt: skip
    # biggest first, so the slowest runs overlap the many small ones
    configs.sort(key=lambda c: -(4 * c.hidden * (c.inputs + c.hidden) * (1 if c.kind == "dense" else 0.05)
                                  * (3 if c.board == "m0" else 1)))  # fmt: skip
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kpgen-bench-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results: list[Result] = []
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for r in pool.map(lambda c: run_config(c, work), configs):
                c = r.config
                status = "bit-exact" if r.bit_exact and r.steps else f"FAILED: {r.error}"
                step = f"{r.per_step('instructions'):>12,.0f} instr/step" if len(r.steps) == len(STEPS) else ""
                where = c.target + (f" {c.act}" if c.act is not None else "")
                print(f"  {c.kind:5} H={c.hidden:<3} I={c.inputs:<3} {where:11} {step}  {status}", flush=True)
                results.append(r)
        examples = _speed_examples(work, jobs)
    runtime = runtime_text_bytes("m4", "-Os")
    seconds = time.monotonic() - start
    out.mkdir(parents=True, exist_ok=True)
    plot = "benchmarks.png" if write_plot(results, out / "benchmarks.png") else None
    act_lines = _act_section(results, None if quick else act_accuracy())
    speed_lines = _speed_section(results, examples)
    write_markdown(results, runtime, out / "benchmarks.md", seconds, plot, act_lines, speed_lines)
    print()
    print("\n".join(_table(results)))
    print()
    print("targets:")
    for name, measured, limit, met in targets(results, runtime):
        print(f"  {'n/a ' if met is None else 'MET ' if met else 'NOT '} {name}: {measured} (limit {limit})")
    print()
    print("\n".join(speed_lines))
    print(f"\nwrote {out / 'benchmarks.md'}" + (f" and {out / plot}" if plot else "") + f" in {seconds:.0f} s")
    return 0 if all(r.bit_exact and r.steps for r in results) else 1


if __name__ == "__main__":
    main()
