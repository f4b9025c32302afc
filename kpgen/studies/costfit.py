"""`make costmodel`: fit the planner's instruction cost model (kpgen.train.cost) to QEMU counts, and write it.

For every board in BOARDS, a fixed grid of small models (every cell; two-factor KP shapes drawn from the
planner's candidates, dense, HKP, three factors, bidirectional, two layers) is emitted with random weights,
built and counted under QEMU with test sequences of 1 and of 2 time steps: one step is the difference, exact.
The step's matrix functions (kpgen.train.cost.MATRIX_FUNCTION) fit the matrix features, the rest the
element-wise features, by non-negative least squares on errors relative to the step. The shipped examples
(examples/*.pt), never part of the grid, are then measured the same way on the M4 and their prediction errors
stored with the coefficients, the commit and the date in kpgen/train/costmodel.json.

Run: `make costmodel` or `python -m kpgen.studies.costfit [--jobs N] [--boards m4,m0] [--out FILE]`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from kpgen import KpgenError, pipeline
from kpgen.codegen.emit import render_sources, write_tree
from kpgen.frontend import synth
from kpgen.ir import ModelF
from kpgen.quant import quantize
from kpgen.reference import golden
from kpgen.reference.vectors import expected_for
from kpgen.target import qemu, toolchain
from kpgen.target.boards import load_board
from kpgen.train import cost

BOARDS = ("m0", "m4", "m7", "m55")
REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
STEPS = (1, 2)
SEQ_LEN = 32  # the sequence length the grid's models are emitted for (MODEL_MAX_STEPS)
SEED = 0


# --------------------------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Case:
    """One model of the grid: a cell, its sizes and the specs of the first layer's Wx and Wh."""

    cell: str
    inputs: int
    hidden: int
    wx: object
    wh: object
    layers: int = 1
    bidirectional: bool = False

    @property
    def slug(self) -> str:
        def s(spec: object) -> str:
            from kpgen.train.plan import describe_spec

            return describe_spec(spec).replace(" ", "").replace("(x)", "-")

        extra = ("-bi" if self.bidirectional else "") + (f"-L{self.layers}" if self.layers > 1 else "")
        return f"{self.cell}-{self.hidden}x{self.inputs}{extra}-{s(self.wx)}-{s(self.wh)}"

    def step_shape(self) -> cost.StepShape:
        from kpgen.train.nn.rnn import KPRNNClassifier

        m = KPRNNClassifier(self.cell, self.inputs, self.hidden, 2, self.wx, self.wh, self.layers, self.bidirectional)
        return cost.step_shape(self.cell, self.inputs, self.hidden, m.wx_specs, m.wh_specs, self.layers,
                               self.bidirectional)


def _pick(rng: np.random.Generator, rows: int, cols: int, num_factors: int = 2) -> list[list[int]]:
    """Factor shapes of a rows x cols matrix: half the time one of the planner's first 12, else any candidate."""
    from kpgen.train.plan import kp_candidates

    cands = [c for c in kp_candidates(rows, cols, num_factors, pad=0.0) if c.compression >= 2.0]
    pool = cands[:12] if rng.random() < 0.5 else cands
    c = pool[int(rng.integers(len(pool)))]
    return [list(f) for f in c.factors]


def grid(seed: int = SEED) -> list[Case]:
    """The fitting grid: the bench's KP shapes, random planner candidates over every cell, and the other kinds."""
    from kpgen import cells

    rng = np.random.default_rng(seed)
    out: list[Case] = []
    for h, i in ((128, 28), (32, 12), (64, 6), (128, 128)):  # kpgen.studies.bench.SHAPES
        fx, fh = synth.min_mac_factors(4 * h, i, 16.0), synth.min_mac_factors(4 * h, h, 16.0)
        out.append(Case("lstm", i, h, [list(fx[:2]), list(fx[2:])], [list(fh[:2]), list(fh[2:])]))
    out += [Case("lstm", 28, 128, "dense", "dense"), Case("lstm", 6, 64, "dense", "dense")]  # the bench's dense
    sizes = {
        "lstm": ((128, 28), (64, 28), (32, 6), (128, 12), (16, 8), (96, 32), (64, 64), (48, 20), (128, 28),
                 (32, 28)),
        "gru": ((32, 12), (64, 28), (128, 16), (24, 9)),
        "fastrnn": ((32, 8), (64, 28), (128, 12)),
        "fastgrnn": ((64, 8), (32, 28), (128, 6)),
        "rnn": ((32, 8), (96, 24), (128, 28)),
        "rnn-relu": ((64, 12), (32, 6)),
    }  # fmt: skip
    for cell, shapes in sizes.items():
        g = cells.get(cell).gates
        for h, i in shapes:
            out.append(Case(cell, i, h, _pick(rng, g * h, i), _pick(rng, g * h, h)))
    out += [
        Case("lstm", 6, 16, "dense", "dense"),
        Case("gru", 12, 32, "dense", "dense"),
        Case("fastrnn", 8, 32, "dense", [[8, 4], [4, 8]]),
        Case("rnn", 28, 48, [[12, 2], [4, 14]], "dense"),
        Case("lstm", 12, 32, {"kind": "hkp", "factors": [[15, 3], [8, 4]], "dense_rows": 8},
             {"kind": "hkp", "factors": [[15, 4], [8, 8]], "dense_rows": 8}),
        Case("fastgrnn", 8, 64, {"kind": "hkp", "factors": [[15, 2], [4, 4]], "dense_rows": 4},
             {"kind": "hkp", "factors": [[15, 8], [4, 8]], "dense_rows": 4}),
        Case("gru", 28, 64, {"kind": "hkp", "factors": [[11, 4], [16, 7]], "dense_rows": 16},
             {"kind": "hkp", "factors": [[22, 8], [8, 8]], "dense_rows": 16}),
        Case("gru", 12, 32, [[4, 2], [4, 2], [6, 3]], [[4, 2], [4, 4], [6, 4]]),
        Case("lstm", 28, 64, [[4, 2], [8, 2], [8, 7]], [[8, 4], [4, 4], [8, 4]]),
        Case("fastrnn", 16, 64, [[2, 2], [4, 2], [8, 4]], [[4, 4], [4, 2], [4, 8]]),
        Case("lstm", 6, 16, [[8, 2], [8, 3]], [[8, 4], [8, 4]], bidirectional=True),
        Case("gru", 12, 32, _pick(rng, 96, 12), _pick(rng, 96, 32), bidirectional=True),
        Case("lstm", 12, 32, [[16, 2], [8, 6]], [[16, 4], [8, 8]], layers=2),
        Case("fastrnn", 6, 32, [[8, 2], [4, 3]], [[8, 4], [4, 8]], bidirectional=True),
    ]
    return out


# --------------------------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    """One step of one model on one board: instructions in all, in the matrix functions, and by function."""

    total: float
    matrix: float
    per_function: dict[str, float]

    @property
    def element(self) -> float:
        return self.total - self.matrix


def case_model(case: Case, seed: int = SEED) -> ModelF:
    """The case as a calibrated float IR model with random weights (torch's initialisation)."""
    import torch

    from kpgen.frontend.load import checkpoint_to_ir
    from kpgen.train.loop import calibrate, make_checkpoint
    from kpgen.train.nn.rnn import KPRNNClassifier

    torch.manual_seed(seed)
    m = KPRNNClassifier(case.cell, case.inputs, case.hidden, 10, case.wx, case.wh, case.layers, case.bidirectional)
    x = torch.from_numpy(synth.random_inputs(seed + 1, 32, 8, case.inputs)).float()
    # seq_len: the emitted MODEL_MAX_STEPS of a bidirectional or stacked model. Both firmwares of a measurement
    # must have the same one: with MAX_STEPS = T the compiler specialises the step loop to T (1 or 2 steps).
    ckpt = make_checkpoint(m, calibrate(m, x), {"source": "kpgen.studies.costfit", "seq_len": SEQ_LEN})
    return checkpoint_to_ir(ckpt, case.slug)


def measure_step(model: ModelF, board_name: str, work: Path, defines: Sequence[str] = (), seed: int = SEED,
                 name: str = "m") -> Measured:
    """Instructions of one time step of `model` on the board: I(T=2) - I(T=1) from two emitted firmwares
    (random inputs, counted between the profile markers), in all and by function."""
    board = load_board(board_name)
    if defines:
        board = dataclasses.replace(board, defines=tuple(board.defines) + tuple(defines))
    # the board's default activation tables (the M0 profile's are interpolated): what an emit gives by default
    qmodel = golden.with_act_tables(quantize.quantize_model(model), pipeline.check_act_table(board, None))
    x = synth.random_inputs(seed + 7, 1, max(STEPS), model.input_size)
    xq = golden.quantize_input(x, qmodel.input_scale)
    counts: dict[int, dict[str, int]] = {}
    for steps in STEPS:
        expected = expected_for(qmodel, xq[:, :steps])
        out = work / f"{name}-T{steps}"
        files = render_sources(qmodel, board, expected, "model", "kpgen.studies.costfit", console="semihosting")
        manifest = pipeline.project_manifest(
            model, qmodel, board, expected, name="model", source="kpgen.studies.costfit",
            accuracy={"test_set": "random inputs", "test_samples": 1, "float": None, "int8_golden": None},
        )  # fmt: skip
        write_tree(out, files, manifest, force=True)
        built = toolchain.build(out, jobs=1)
        counts[steps] = dict(qemu.count_instructions(built.elf, board, args=("profile",), timeout=600.0).per_function)
    lo, hi = STEPS[0], STEPS[-1]
    per = {f: (counts[hi].get(f, 0) - counts[lo].get(f, 0)) / (hi - lo) for f in set(counts[hi]) | set(counts[lo])}
    per = {f: v for f, v in per.items() if v}
    matrix = sum(v for f, v in per.items() if cost.MATRIX_FUNCTION.match(f))
    return Measured(sum(per.values()), matrix, per)


# --------------------------------------------------------------------------------------------- fitting


def _design(shapes: Sequence[cost.StepShape]) -> tuple[np.ndarray, np.ndarray]:
    fm = np.array([[cost.step_features(s)[0][k] for k in cost.MATRIX_FEATURES] for s in shapes], dtype=float)
    fc = np.array([[cost.step_features(s)[1][k] for k in cost.CELL_FEATURES] for s in shapes], dtype=float)
    return fm, fc


def _nnls(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted non-negative least squares on unit-scaled columns: every feature is work, so no coefficient
    is negative (which keeps collinear features from cancelling each other); an unused feature gets 0."""
    from scipy.optimize import nnls  # type: ignore[import-untyped]

    scale = np.abs(x).max(axis=0)
    used = scale > 0
    coef = np.zeros(x.shape[1])
    if used.any():
        xs = x[:, used] / scale[used]
        sol, _ = nnls(xs * w[:, None], y * w, maxiter=50 * x.shape[1])
        coef[used] = sol / scale[used]
    return coef


def fit(shapes: Sequence[cost.StepShape], measured: Sequence[Measured]) -> tuple[dict[str, float], dict[str, float]]:
    """(matrix coefficients, element-wise coefficients) minimising the errors relative to each step."""
    fm, fc = _design(shapes)
    total = np.array([m.total for m in measured], dtype=float)
    w = 1.0 / total
    cm = _nnls(fm, np.array([m.matrix for m in measured], dtype=float), w)
    ce = _nnls(fc, np.array([m.element for m in measured], dtype=float), w)
    return ({k: float(v) for k, v in zip(cost.MATRIX_FEATURES, cm, strict=True) if v},
            {k: float(v) for k, v in zip(cost.CELL_FEATURES, ce, strict=True) if v})


def error_pct(predicted: float, measured: float) -> float:
    return 100.0 * (predicted - measured) / measured


# --------------------------------------------------------------------------------------------- the run


def _commit() -> str:
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False)  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "runtime_c", "templates"],
                               capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    head = done.stdout.strip() or "unknown"
    return head + ("+changes" if dirty.stdout.strip() else "")


def examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.pt"))


def measure_examples(board: str, work: Path, jobs: int) -> list[tuple[str, cost.StepShape, Measured]]:
    """Every shipped example's step on `board` (random inputs), for the held-out prediction errors."""
    from kpgen.frontend.load import load_checkpoint

    def one(p: Path) -> tuple[str, cost.StepShape, Measured]:
        model = load_checkpoint(p)
        return p.name, cost.model_step_shape(model), measure_step(model, board, work, name=f"{board}-{p.stem}")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, examples()))


def check_enough(ran: int, grid_size: int, board: str) -> None:
    """KpgenError unless at least half the grid ran on the board (a fit on fewer would not be trusted)."""
    if ran < max(1, grid_size // 2):
        raise KpgenError(f"only {ran} of the {grid_size} grid models ran on {board}; see the lines above")


def _log(text: str) -> None:
    print(text, flush=True)


def run(out: Path, boards: Sequence[str], jobs: int, log: Callable[[str], None] = _log) -> dict:
    """Measure the grid on every board, fit, check on the examples (M4), write `out`; returns what it wrote."""
    toolchain.check_tools()
    start = time.monotonic()
    cases = grid()
    shapes = [c.step_shape() for c in cases]
    models = [case_model(c) for c in cases]
    result: dict = {
        "format": cost.FORMAT, "version": cost.VERSION, "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "method": "least squares on QEMU counts of one step, I(T=2) - I(T=1); docs/cycle-model.md",
        "grid": len(cases), "boards": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kpgen-costfit-") as tmp:
        work = Path(tmp)
        for b in boards:
            core = load_board(b).core
            def one(i: int, b: str = b) -> Measured | None:
                try:
                    return measure_step(models[i], b, work, name=f"{b}-{i}")
                except KpgenError as e:  # e.g. a grid model too big for the M0's 16 KB of RAM
                    log(f"  {b}: {cases[i].slug} skipped: {str(e)[:160]}")
                    return None

            with ThreadPoolExecutor(max_workers=jobs) as pool:
                got = list(pool.map(one, range(len(models))))
            keep = [i for i, m in enumerate(got) if m is not None]
            check_enough(len(keep), len(cases), b)
            used = [shapes[i] for i in keep]
            measured = [m for m in got if m is not None]
            cm, ce = fit(used, measured)
            cc = cost.CoreCost(b, core, cm, ce)
            errs = [error_pct(cc.step_instructions(s), m.total) for s, m in zip(used, measured, strict=True)]
            worst = keep[int(np.argmax(np.abs(errs)))]
            log(f"{b} ({core}): {len(keep)} models, fit error max {max(map(abs, errs)):.2f}% "
                f"({cases[worst].slug}), rms {float(np.sqrt(np.mean(np.square(errs)))):.2f}%")
            result["boards"][b] = {
                "core": core, "matrix": cm, "element": ce,
                "fit": {"models": len(keep), "max_error_pct": round(max(map(abs, errs)), 3),
                        "rms_error_pct": round(float(np.sqrt(np.mean(np.square(errs)))), 3)},
            }  # fmt: skip
        if "m4" in result["boards"]:
            cc = cost.CoreCost("m4", result["boards"]["m4"]["core"], result["boards"]["m4"]["matrix"],
                               result["boards"]["m4"]["element"])
            held = []
            for name, shape, m in measure_examples("m4", work, jobs):
                p = cc.step_instructions(shape)
                held.append({"example": name, "measured": m.total, "predicted": round(p, 1),
                             "error_pct": round(error_pct(p, m.total), 3)})
                log(f"  held out, m4: {name}: measured {m.total:,.0f}, predicted {p:,.0f} "
                    f"({error_pct(p, m.total):+.2f}%)")
            result["boards"]["m4"]["examples"] = held
    result["seconds"] = round(time.monotonic() - start)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp_out.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp_out, out)
    cost.load(out)  # what was written reads back
    log(f"wrote {out} in {result['seconds']} s")
    return result


@click.command(name="costfit", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=cost.COST_FILE,
              help="Where the fitted model goes (default: the package's kpgen/train/costmodel.json).")
@click.option("--boards", default=",".join(BOARDS), show_default=True, help="Boards to fit, comma-separated.")
@click.option("--jobs", type=click.IntRange(min=1), default=max(1, min(2, os.cpu_count() or 1)), show_default=True,
              help="Firmwares built and run in parallel.")
def main(out: Path, boards: str, jobs: int) -> None:
    """Fit the planner's instruction cost model to QEMU counts and write it (exit 2 on a setup error)."""
    try:
        names = [b.strip() for b in boards.split(",") if b.strip()]
        for b in names:
            load_board(b)
        run(out, names, jobs)
    except KpgenError as e:
        click.echo(f"kpgen costfit: error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
