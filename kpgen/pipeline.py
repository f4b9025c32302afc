"""The stages chained: checkpoint -> emitted project (with its manifest), and project -> verified, measured run."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kpgen import KpgenError, __version__
from kpgen.target import cycles
from kpgen.frontend import datasets
from kpgen.codegen import fit
from kpgen.reference import golden
from kpgen.target import qemu
from kpgen.quant import quantize
from kpgen.reference import floatmodel
from kpgen.target import toolchain
from kpgen.target.boards import load_board
from kpgen.codegen.emit import MANIFEST, arena_bytes, render_sources, write_tree
from kpgen.ir import ModelF, ModelQ, cell_of, directions, matrices, sublayers
from kpgen.frontend.load import load_checkpoint
from kpgen.reference.vectors import expected_for
from kpgen.target.verify import Verification, verify_output


@dataclass(frozen=True)
class TestSet:
    x: np.ndarray  # float [N, T, I]
    y: np.ndarray | None  # int [N] or None
    source: str


def test_set(model: ModelF, vectors: Path | None, seed: int = 0) -> TestSet:
    """Held-out data: a user's .npz (x [N,T,I], optional y), else the checkpoint's dataset's test split."""
    if vectors is not None:
        try:
            with np.load(vectors, allow_pickle=False) as z:
                if "x" not in z:
                    raise KpgenError(f"{vectors}: no array named 'x'; save test inputs as x [samples, steps, features]")
                x_raw = z["x"]
                y_raw = z["y"] if "y" in z else None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise KpgenError(f"{vectors}: not a readable .npz file ({e}); save it with numpy.savez") from None
        if not (np.issubdtype(x_raw.dtype, np.floating) or np.issubdtype(x_raw.dtype, np.integer)):
            raise KpgenError(f"{vectors}: x has dtype {x_raw.dtype}, not real numbers; save float inputs")
        x = np.asarray(x_raw, dtype=np.float64)
        if x.ndim != 3 or x.shape[2] != model.input_size:
            raise KpgenError(
                f"{vectors}: x has shape {x.shape}, expected [samples, steps, {model.input_size}]; save matching inputs"
            )
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise KpgenError(f"{vectors}: x has shape {x.shape}: no samples or no time steps; give at least one of each")
        if not np.all(np.isfinite(x)):
            raise KpgenError(f"{vectors}: x contains NaN or infinite values; clean the test inputs")
        y = None
        if y_raw is not None:
            ok = y_raw.shape == (x.shape[0],) and (np.issubdtype(y_raw.dtype, np.integer) or (
                np.issubdtype(y_raw.dtype, np.floating) and bool(np.all(np.isfinite(y_raw) & (y_raw == np.round(y_raw))))))
            if not ok:
                raise KpgenError(
                    f"{vectors}: y has shape {y_raw.shape} and dtype {y_raw.dtype}, expected {x.shape[0]} integer "
                    "labels (one per sample in x); fix y or leave it out"
                )
            y = y_raw.astype(np.int64)
        return TestSet(x=x, y=y, source=Path(vectors).name)
    name = model.meta.get("dataset")
    if not isinstance(name, str) or not name:
        raise KpgenError("the checkpoint names no dataset; pass test inputs with --vectors FILE.npz")
    split = datasets.load(name, seed=seed)
    return TestSet(x=split.x_test.astype(np.float64), y=split.y_test, source=f"{name} test split")


def _matrix_summary(m) -> dict:
    """Shape, kind and parameter counts of one float matrix."""
    rows, cols = m.shape
    dense = m.b.shape == (1, 1) and not m.rest and m.top is None  # B 1 x 1 of any value: the dense kernel runs it
    out = {"rows": rows, "cols": cols, "kind": "dense" if dense else ("hkp" if m.top is not None else "kp")}
    if not dense:
        out["factors"] = [list(f.shape) for f in m.factors]
    if m.top is not None:
        out["dense_rows"] = m.top_rows
    out["params"] = rows * cols if dense else m.params
    return out


def model_summary(model: ModelF, qmodel: ModelQ) -> dict:
    layers = []
    for lf in model.layers:
        mats = matrices(lf)
        dense = sum(m.shape[0] * m.shape[1] for m in mats)
        kp = sum(_matrix_summary(m)["params"] for m in mats)
        first = sublayers(lf)[0]
        layers.append(
            {
                "cell": cell_of(lf),
                "bidirectional": directions(lf) == 2,
                "input_size": lf.input_size,
                "hidden_size": lf.hidden_size,
                "wx": _matrix_summary(first.wx),
                "wh": _matrix_summary(first.wh),
                "matrix_params_dense": dense,
                "matrix_params_kp": kp,
                "matrix_compression": round(dense / kp, 2),
            }
        )
    return {
        "layers": layers,
        "params": model.params,
        "dense_params": model.dense_params,
        "param_compression": round(model.dense_params / model.params, 2),
        "weight_bytes_int8": qmodel.weight_bytes,
        "dense_float32_bytes": 4 * model.dense_params,
        "byte_compression_vs_dense_float32": round(4 * model.dense_params / qmodel.weight_bytes, 2),
        "num_classes": model.num_classes,
        "input_size": model.input_size,
    }


def check_replaceable(out_dir: Path, inputs: list[Path]) -> None:
    """What --force may replace: only a directory `kpgen emit` wrote (or an empty one), never one holding the
    inputs, the current directory or a directory above it (`-o . --force` must not wipe a source tree)."""
    out = Path(out_dir).resolve()
    for inp in inputs:
        where = inp.resolve()
        if out == where or out in where.parents:
            raise KpgenError(f"output directory {out_dir} contains the input {inp}; choose an output directory of its own")
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise KpgenError(f"output directory {out_dir} is the current directory or above it; choose a directory of its own")
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise KpgenError(f"output directory {out_dir} exists and is not a directory; remove it or choose another path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise KpgenError(
            f"output directory {out_dir} was not written by `kpgen emit` (it has no {MANIFEST}); --force replaces "
            "only kpgen's own output: remove it yourself or choose another directory"
        )


def emit_project(
    checkpoint: Path,
    board_name: str,
    out_dir: Path,
    *,
    name: str = "model",
    samples: int = 50,
    vectors: Path | None = None,
    force: bool = False,
    target: str = "firmware",
) -> dict:
    """Load, quantize, pick test vectors, check the model fits the board, render and write the project;
    returns the manifest. target: "firmware" (the test firmware) or "lib" (a static library, no main)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise KpgenError(f"output directory {out_dir} exists; remove it or pass --force to replace it")
    check_replaceable(out_dir, [Path(checkpoint)] + ([Path(vectors)] if vectors is not None else []))
    if samples < 1:
        raise KpgenError(f"--samples must be at least 1, got {samples}")
    board = load_board(board_name)
    model = load_checkpoint(checkpoint)
    try:
        qmodel = quantize.quantize_model(model)
    except KpgenError as e:
        raise KpgenError(f"{checkpoint}: {e}") from None
    data = test_set(model, vectors)
    xq_all = golden.quantize_input(data.x, qmodel.input_scale)
    n = min(samples, len(xq_all))
    est = fit.estimate(qmodel, board, target, vector_samples=n, steps=int(xq_all.shape[1]))
    fit.check_fits(est)
    float_acc = golden_acc = None
    if data.y is not None:
        float_acc = floatmodel.accuracy(floatmodel.float_forward(model, data.x), data.y)
        golden_acc = floatmodel.accuracy(golden.run_model(qmodel, xq_all).logits, data.y)
    labels = None if data.y is None else data.y[:n]
    expected = expected_for(qmodel, xq_all[:n], labels)
    source = Path(checkpoint).name
    files = render_sources(qmodel, board, expected, name, source, target=target)
    manifest = {
        "kpgen_version": __version__,
        "board": board.name,
        "target": target,
        "name": name,
        "checkpoint": source,
        "model": model_summary(model, qmodel),
        "arena_bytes": arena_bytes(qmodel, int(expected.inputs.shape[1])),
        "fit_estimate": {
            "model_flash": est.model_flash,
            "flash_at_least": est.flash,
            "flash_available": est.flash_available,
            "ram_at_least": est.ram,
            "ram_available": board.ram_size,
        },
        "accuracy": {
            "test_set": data.source,
            "test_samples": int(len(data.x)),
            "float": float_acc,
            "int8_golden": golden_acc,
        },
        "vectors": {
            "samples": n,
            "steps": int(expected.inputs.shape[1]),
            "labels": [int(v) for v in expected.labels],
            "scores": expected.scores.astype(int).tolist(),
            "final_digests": [f"{int(d):08x}" for d in expected.digests[:, -1]],
        },
    }
    write_tree(out_dir, files, manifest, force, with_board=target == "firmware")
    return manifest


@dataclass
class RunReport:
    """Everything one `kpgen run` measured: verification, exit, instruction counts, sizes."""

    manifest: dict
    board: object
    verification: Verification
    exit_code: int | None
    timed_out: bool
    fault_pc: int | None
    instructions: int | None
    per_function: dict
    sizes: dict
    stack: dict
    weight_bytes_flash: int
    cycles: object | None = None  # kpgen.target.cycles.CycleEstimate of the profiled inference (an estimate)
    profile: object | None = None  # the kpgen.target.qemu.Profile behind instructions, per_function and cycles
    stack_check: object | None = None  # kpgen.target.toolchain.StackCheck: the model's deepest call chain vs the board

    @property
    def passed(self) -> bool:
        return (
            self.verification.passed and self.exit_code == 0 and not self.timed_out and self.fault_pc is None
        )


def read_manifest(project: Path) -> dict:
    path = Path(project) / MANIFEST
    if not Path(project).is_dir():
        raise KpgenError(f"{project} is not a directory; give the output directory of `kpgen emit`")
    if not path.is_file():
        raise KpgenError(f"{project} has no {MANIFEST}; it was not written by `kpgen emit` (run that first)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KpgenError(f"{path} is unreadable ({e}); emit the project again") from None
    if not isinstance(manifest, dict) or not all(k in manifest for k in ("board", "name", "vectors")):
        raise KpgenError(f"{path} lacks the board, name or vectors `kpgen emit` writes; emit the project again")
    return manifest


def require_runnable(project: Path, manifest: dict, board) -> None:
    """`kpgen run` needs a test firmware for a board QEMU emulates; say so in one line otherwise."""
    if manifest.get("target", "firmware") != "firmware":
        raise KpgenError(
            f"{project} is a library (emitted with --target lib): there is nothing to run; build it with make or "
            f"CMake and link it into your firmware, or emit with --target firmware"
        )
    if not board.emulated:
        raise KpgenError(
            f"board {board.name} is real hardware that QEMU does not emulate: `kpgen run` cannot run it; "
            f"build with `make -C {project}` and load it with `kpgen flash {project}`"
        )


def run_project(project: Path, *, timeout: float = 300.0, profile: bool = True) -> RunReport:
    """Build the emitted project, run it under QEMU, verify every sample, count one inference's instructions."""
    project = Path(project)
    manifest = read_manifest(project)
    board = load_board(manifest["board"])
    require_runnable(project, manifest, board)
    toolchain.check_tools()
    built = toolchain.build(project)
    stack_check = toolchain.check_stack(built.elf, project / "obj", board, manifest["name"])
    res = qemu.run(built.elf, board, timeout=timeout)
    ver = verify_output(res.stdout, manifest["vectors"])
    instructions, per_function, estimate, prof = None, {}, None, None
    if profile and ver.passed and res.exit_code == 0:
        prof = qemu.count_instructions(built.elf, board, args=("profile",), timeout=timeout)
        instructions, per_function = prof.total, prof.per_function
        if cycles.core_model(board.core) is not None:
            estimate = cycles.estimate(prof, board.core)
    weight_bytes = toolchain.object_bytes(built.elf, f"{manifest['name']}_")
    return RunReport(
        manifest=manifest,
        board=board,
        verification=ver,
        exit_code=res.exit_code,
        timed_out=res.timed_out,
        fault_pc=res.fault_pc,
        instructions=instructions,
        per_function=per_function,
        sizes=toolchain.elf_sizes(built.elf),
        stack=toolchain.stack_usage(project / "obj"),
        weight_bytes_flash=weight_bytes,
        cycles=estimate,
        profile=prof,
        stack_check=stack_check,
    )
