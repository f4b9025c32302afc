"""The stages chained: checkpoint -> emitted project (with its manifest), and project -> verified, measured run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kpgen import KpgenError, __version__, datasets, golden, qemu, quant, reference, toolchain
from kpgen.boards import load_board
from kpgen.emit import MANIFEST, arena_bytes, render_sources, write_tree
from kpgen.ir import ModelF, ModelQ
from kpgen.load import load_checkpoint
from kpgen.vectors import expected_for
from kpgen.verify import Verification, verify_output


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
                x = np.asarray(z["x"], dtype=np.float64)
                y = np.asarray(z["y"], dtype=np.int64) if "y" in z else None
        except (OSError, ValueError) as e:
            raise KpgenError(f"{vectors}: not a readable .npz file ({e}); save it with numpy.savez") from None
        if x.ndim != 3 or x.shape[2] != model.input_size:
            raise KpgenError(
                f"{vectors}: x has shape {x.shape}, expected [samples, steps, {model.input_size}]"
            )
        if not np.all(np.isfinite(x)):
            raise KpgenError(f"{vectors}: x contains NaN or infinite values; clean the test inputs")
        return TestSet(x=x, y=y, source=Path(vectors).name)
    name = model.meta.get("dataset")
    if not name:
        raise KpgenError("the checkpoint names no dataset; pass test inputs with --vectors FILE.npz")
    split = datasets.load(name, seed=seed)
    return TestSet(x=split.x_test.astype(np.float64), y=split.y_test, source=f"{name} test split")


def model_summary(model: ModelF, qmodel: ModelQ) -> dict:
    layers = []
    for lf in model.layers:
        dense = lf.wx.shape[0] * lf.wx.shape[1] + lf.wh.shape[0] * lf.wh.shape[1]
        kp = lf.wx.params + lf.wh.params
        layers.append(
            {
                "input_size": lf.input_size,
                "hidden_size": lf.hidden_size,
                "wx_factors": [list(lf.wx.a.shape), list(lf.wx.b.shape)],
                "wh_factors": [list(lf.wh.a.shape), list(lf.wh.b.shape)],
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


def emit_project(
    checkpoint: Path,
    board_name: str,
    out_dir: Path,
    *,
    name: str = "model",
    samples: int = 50,
    vectors: Path | None = None,
    force: bool = False,
) -> dict:
    """Load, quantize, pick test vectors, render and write the project; returns the manifest."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise KpgenError(f"output directory {out_dir} exists; remove it or pass --force to replace it")
    if samples < 1:
        raise KpgenError(f"--samples must be at least 1, got {samples}")
    board = load_board(board_name)
    model = load_checkpoint(checkpoint)
    qmodel = quant.quantize_model(model)
    data = test_set(model, vectors)
    xq_all = golden.quantize_input(data.x, qmodel.input_scale)
    float_acc = golden_acc = None
    if data.y is not None:
        float_acc = reference.accuracy(reference.float_forward(model, data.x), data.y)
        golden_acc = reference.accuracy(golden.run_model(qmodel, xq_all).logits, data.y)
    n = min(samples, len(xq_all))
    labels = None if data.y is None else data.y[:n]
    expected = expected_for(qmodel, xq_all[:n], labels)
    source = Path(checkpoint).name
    files = render_sources(qmodel, board, expected, name, source)
    manifest = {
        "kpgen_version": __version__,
        "board": board.name,
        "name": name,
        "checkpoint": source,
        "model": model_summary(model, qmodel),
        "arena_bytes": arena_bytes(qmodel),
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
    write_tree(out_dir, files, manifest, force)
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
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KpgenError(f"{path} is unreadable ({e}); emit the project again") from None


def run_project(project: Path, *, timeout: float = 300.0, profile: bool = True) -> RunReport:
    """Build the emitted project, run it under QEMU, verify every sample, count one inference's instructions."""
    project = Path(project)
    manifest = read_manifest(project)
    board = load_board(manifest["board"])
    toolchain.check_tools()
    built = toolchain.build(project)
    res = qemu.run(built.elf, board, timeout=timeout)
    ver = verify_output(res.stdout, manifest["vectors"])
    instructions, per_function = None, {}
    if profile and ver.passed and res.exit_code == 0:
        prof = qemu.count_instructions(built.elf, board, args=("profile",), timeout=timeout)
        instructions, per_function = prof.total, prof.per_function
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
    )
