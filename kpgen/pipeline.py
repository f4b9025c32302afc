"""The stages chained: checkpoint -> emitted project (with its manifest), and project -> verified, measured run."""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kpgen import KpgenError, __version__, escape
from kpgen.codegen import fit
from kpgen.codegen.emit import MANIFEST, arena_bytes, render_sources, write_tree
from kpgen.codegen.emit import max_steps as max_steps_for
from kpgen.frontend import datasets, userdata
from kpgen.frontend.load import load_model
from kpgen.frontend.userdata import load_user_data
from kpgen.ir import BIAS_BITS, ModelF, ModelQ, cell_of, directions, matrices, sublayers
from kpgen.quant import quantize
from kpgen.reference import floatmodel, golden
from kpgen.reference.vectors import check_shape, clipping, expected_from_trace, first_samples
from kpgen.target import cycles, qemu, toolchain
from kpgen.target.boards import Board, check_console, load_board
from kpgen.target.cycles import CycleEstimate, MeasuredCycles
from kpgen.target.verify import Verification, verify_output

if TYPE_CHECKING:  # kpgen.target.validate is imported only when `kpgen validate` runs
    from collections.abc import Callable

    from kpgen.target.serial import Link
    from kpgen.target.validate import Outcome


@dataclass(frozen=True)
class TestSet:
    x: np.ndarray  # float [N, T, I]
    y: np.ndarray | None  # int [N] or None
    source: str
    user_logits: np.ndarray | None = None  # the user's own model's outputs for x, when the data file has them


MAX_VECTOR_ELEMENTS = 1 << 26  # test inputs: 64 Mi numbers (512 MB as float64) is far beyond any firmware's vectors
MAX_LABELS = 1 << 24


def _read_npz(vectors: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """x and y of a user's .npz: a regular file, a zip of .npy arrays, sizes bounded before reading."""
    p = Path(vectors)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise KpgenError(f"{vectors}: no such file; check the path") from None
    except OSError as e:
        raise KpgenError(f"{vectors}: cannot be read ({e.strerror or e}); check the path and permissions") from None
    if not stat.S_ISREG(st.st_mode):
        raise KpgenError(f"{vectors}: is not a regular file (a directory, pipe or device); give an .npz file")
    try:
        with open(p, "rb") as f:
            head = f.read(6)
            if head == b"\x93NUMPY":
                raise KpgenError(f"{vectors}: is a .npy file (one array), not an .npz; save inputs and labels with "
                                 "numpy.savez(file, x=..., y=...)")
            if not zipfile.is_zipfile(f):
                reason = "not a zip archive"
                raise KpgenError(f"{vectors}: not a readable .npz file ({reason}); save it with numpy.savez")
            with zipfile.ZipFile(f) as zf:
                x = userdata.npz_member(zf, str(vectors), "x", MAX_VECTOR_ELEMENTS)
                if x is None:
                    raise KpgenError(f"{vectors}: no array named 'x'; save test inputs as x [samples, steps, features]")
                return x, userdata.npz_member(zf, str(vectors), "y", MAX_LABELS)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as e:
        raise KpgenError(f"{vectors}: not a readable .npz file ({escape(str(e))[:120]}); "
                         "save it with numpy.savez") from None


def check_labels(y_raw: np.ndarray, samples: int, num_classes: int, where: str, fix: str) -> np.ndarray:
    """y as int64: one integer label per sample in 0..num_classes-1 (floats only when exactly integral)."""
    integral = y_raw.shape == (samples,) and (np.issubdtype(y_raw.dtype, np.integer) or (
        np.issubdtype(y_raw.dtype, np.floating) and bool(np.all(np.isfinite(y_raw) & (y_raw == np.round(y_raw))))))
    if not integral:
        raise KpgenError(f"{where}: y has shape {y_raw.shape} and dtype {y_raw.dtype}, expected {samples} integer "
                         f"labels (one per sample in x); {fix}")
    bad = (y_raw < 0) | (y_raw >= num_classes)
    if bool(bad.any()):
        first = int(np.argmax(bad))
        raise KpgenError(f"{where}: label y[{first}] = {y_raw[first].item()!r} is not a class of this model "
                         f"(0..{num_classes - 1}); {fix}")
    return y_raw.astype(np.int64)


def test_set(model: ModelF, vectors: Path | None, seed: int = 0) -> TestSet:
    """Held-out data: a user's .npz (x [N,T,I], optional y), else the checkpoint's dataset's test split."""
    if vectors is not None:
        x_raw, y_raw = _read_npz(vectors)
        if not (np.issubdtype(x_raw.dtype, np.floating) or np.issubdtype(x_raw.dtype, np.integer)):
            raise KpgenError(f"{vectors}: x has dtype {x_raw.dtype}, not real numbers; save float inputs")
        if x_raw.ndim != 3 or x_raw.shape[2] != model.input_size:
            raise KpgenError(
                f"{vectors}: x has shape {x_raw.shape}, expected [samples, steps, {model.input_size}]; "
                "save matching inputs"
            )
        if x_raw.shape[0] < 1 or x_raw.shape[1] < 1:
            raise KpgenError(f"{vectors}: x has shape {x_raw.shape}: no samples or no time steps; "
                             "give at least one of each")
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.asarray(x_raw, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise KpgenError(f"{vectors}: x contains NaN or infinite values; clean the test inputs")
        y = None
        if y_raw is not None:
            y = check_labels(y_raw, x.shape[0], model.num_classes, str(vectors), "fix y or leave it out")
        return TestSet(x=x, y=y, source=Path(vectors).name)
    name = model.meta.get("dataset")
    if not isinstance(name, str) or not name:
        raise KpgenError("the checkpoint names no dataset; pass test inputs with --test FILE (docs/byom.md) or "
                         "--vectors FILE.npz")
    split = datasets.load(name, seed=seed)
    if split.x_test.ndim != 3 or split.x_test.shape[2] != model.input_size:
        raise KpgenError(f"the checkpoint's meta.dataset {name!r} has {split.x_test.shape[-1]} features per step "
                         f"but the model takes {model.input_size}; "
                         "fix meta.dataset or pass test inputs with --vectors FILE.npz")
    y = check_labels(np.asarray(split.y_test), len(split.x_test), model.num_classes, f"dataset {name}",
                     "fix meta.dataset or pass test inputs with --vectors FILE.npz")
    return TestSet(x=split.x_test.astype(np.float64), y=y, source=f"{name} test split")


def user_test_set(model: ModelF, path: Path, held_out: bool = True) -> TestSet:
    """Held-out data from the user's data file (docs/byom.md: npz or CSV, with optional logits)."""
    user = load_user_data(path, input_size=model.input_size, num_classes=model.num_classes, need_labels=False)
    source = user.source if held_out else f"{user.source} (the --data file; no held-out --test given)"
    return TestSet(x=user.x.astype(np.float64), y=user.y, source=source, user_logits=user.logits)


def _matrix_summary(m) -> dict:
    """Shape, kind and parameter counts of one float matrix."""
    rows, cols = m.shape
    dense = m.b.shape == (1, 1) and not m.rest and m.top is None  # B 1 x 1 of any value: the dense kernel runs it
    out = {"rows": rows, "cols": cols, "kind": "dense" if dense else ("hkp" if m.top is not None else "kp")}
    if not dense:
        out["factors"] = [list(f.shape) for f in m.factors]
    if m.top is not None:
        out["dense_rows"] = m.top_rows
        if m.top_groups > 1:
            out["top_groups"] = m.top_groups
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
            raise KpgenError(f"output directory {out_dir} contains the input {inp}; "
                             "choose an output directory of its own")
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise KpgenError(f"output directory {out_dir} is the current directory or above it; "
                         "choose a directory of its own")
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise KpgenError(f"output directory {out_dir} exists and is not a directory; remove it or choose another path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise KpgenError(
            f"output directory {out_dir} was not written by `kpgen emit` (it has no {MANIFEST}); --force replaces "
            "only kpgen's own output: remove it yourself or choose another directory"
        )


def project_manifest(
    model: ModelF,
    qmodel: ModelQ,
    board,
    expected,
    *,
    name: str,
    source: str,
    accuracy: dict,
    target: str = "firmware",
    fit_estimate: dict | None = None,
) -> dict:
    """The kpgen.json of an emitted project: what was emitted for which board, its sizes, accuracy and the test
    vectors' expected results (which `kpgen run` verifies against); fit_estimate is left out when None."""
    manifest = {
        "kpgen_version": __version__,
        "board": board.name,
        "target": target,
        "name": name,
        "checkpoint": source,
        "model": model_summary(model, qmodel),
        "arena_bytes": arena_bytes(qmodel, int(expected.inputs.shape[1])),
    }
    if fit_estimate is not None:
        manifest["fit_estimate"] = fit_estimate
    manifest["accuracy"] = accuracy
    manifest["vectors"] = {
        "samples": int(len(expected.inputs)),
        "steps": int(expected.inputs.shape[1]),
        "labels": [int(v) for v in expected.labels],
        "scores": expected.scores.astype(int).tolist(),
        "final_digests": [f"{int(d):08x}" for d in expected.digests[:, -1]],
    }
    return manifest


def check_act_table(board, act_table: str | None) -> str:
    """The activation table variant to emit: act_table, or the board's default; a user error if unknown."""
    act = board.act_table if act_table is None else act_table
    if act not in golden.ACT_TABLES:
        where = f"board {board.name}'s act_table" if act_table is None else "--act-table"
        raise KpgenError(f"{where} {act!r} is no activation table variant; use one of: {', '.join(golden.ACT_TABLES)}")
    return act


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
    console: str | None = None,
    act_table: str | None = None,
    data_file: Path | None = None,
    test_file: Path | None = None,
    max_steps: int | None = None,
    bias_bits: str = "auto",
) -> dict:
    """Load, quantize, pick test vectors, check the model fits the board, render and write the project;
    returns the manifest. target: "firmware" (the test firmware) or "lib" (a static library, no main).
    console: "uart" or "semihosting" (None: the board's default, the UART where it has one).
    act_table: the activation tables' variant (golden.ACT_TABLES; None: the board's act_table, else "full").
    data_file: the user's data (docs/byom.md), which calibrates a plain PyTorch state dict and checks it against
    the data's logits; test_file: held-out data for the accuracy and the test vectors (else vectors, else
    data_file, else the checkpoint's dataset). A "lib" target given none of these embeds no vectors and reads no
    data. max_steps: the longest sequence a bidirectional model accepts (MODEL_MAX_STEPS; None: the training
    length or the test vectors' length, whichever is larger). bias_bits: the gate biases' storage, "auto" (int16
    when every value fits, else int32), "16" (refused when one does not fit) or "32" (quantize.with_bias_bits)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise KpgenError(f"output directory {out_dir} exists; remove it or pass --force to replace it")
    inputs = [Path(checkpoint)] + [Path(f) for f in (vectors, data_file, test_file) if f is not None]
    check_replaceable(out_dir, inputs)
    if samples < 1:
        raise KpgenError(f"--samples must be at least 1, got {samples}")
    if max_steps is not None and not 1 <= max_steps <= MAX_STEPS_LIMIT:
        raise KpgenError(f"--max-steps must be from 1 to {MAX_STEPS_LIMIT:,}, got {max_steps}")
    board = load_board(board_name)
    console = check_console(board, console)
    act = check_act_table(board, act_table)
    if str(bias_bits) not in quantize.BIAS_CHOICES:
        raise KpgenError(f"--bias-bits {bias_bits!r} is not one of {', '.join(quantize.BIAS_CHOICES)}")
    model = load_model(checkpoint, data_file)
    try:
        qmodel = golden.with_act_tables(quantize.quantize_model(model), act)
        qmodel = quantize.with_bias_bits(qmodel, bias_bits)
    except KpgenError as e:
        raise KpgenError(f"{checkpoint}: {e}") from None
    user_file = test_file or (data_file if vectors is None else None)
    if target == "lib" and user_file is None and vectors is None:  # a library embeds no vectors: no data needed
        return _emit_lib(checkpoint, board, out_dir, model, qmodel, name=name, console=console, force=force,
                         act=act, max_steps=max_steps)
    if user_file is not None:
        data = user_test_set(model, user_file, held_out=test_file is not None)
    else:
        data = test_set(model, vectors)
    xq_all = golden.quantize_input(data.x, qmodel.input_scale)
    steps = max_steps
    if steps is not None and int(xq_all.shape[1]) > steps and not golden.is_streaming(qmodel):
        raise KpgenError(f"the test sequences have {xq_all.shape[1]} steps, more than --max-steps {max_steps}; "
                         "raise --max-steps or give shorter test sequences")
    n = min(samples, len(xq_all))
    # a validate firmware embeds one sample (for its profile run) and receives the rest: sized as a test firmware
    est = fit.estimate(qmodel, board, "firmware" if target == "validate" else target,
                       vector_samples=1 if target == "validate" else n, steps=int(xq_all.shape[1]), max_steps=steps)
    fit.check_fits(est)
    check_shape(qmodel, xq_all)
    float_acc = golden_acc = None
    if data.y is not None:  # one batched golden run gives the accuracy and, sliced, the test vectors' results
        float_acc = floatmodel.accuracy(floatmodel.float_forward(model, data.x), data.y)
        trace = golden.run_model(qmodel, xq_all)
        golden_acc = floatmodel.accuracy(trace.logits, data.y)
        trace = first_samples(trace, n)
    else:
        trace = golden.run_model(qmodel, xq_all[:n])
    labels = None if data.y is None else data.y[:n]
    expected = expected_from_trace(trace, xq_all[:n], labels)
    source = Path(checkpoint).name
    files = render_sources(qmodel, board, expected, name, source, target=target, console=console, steps=steps)
    fit_estimate = {
        "model_flash": est.model_flash,
        "flash_at_least": est.flash,
        "flash_available": est.flash_available,
        "ram_at_least": est.ram,
        "ram_available": board.ram_size,
    }
    accuracy = {"test_set": data.source, "test_samples": int(len(data.x)), "float": float_acc,
                "int8_golden": golden_acc}
    if data.user_logits is not None and data.y is not None:  # the user's own model on the same samples
        accuracy["user_float"] = floatmodel.accuracy(data.user_logits, data.y)
    manifest = project_manifest(model, qmodel, board, expected, name=name, source=source, target=target,
                                accuracy=accuracy, fit_estimate=fit_estimate)
    manifest["console"] = console
    manifest["act_table"] = act
    manifest["bias_bits"] = qmodel.bias_bits
    clip = clipping(data.x, qmodel.input_scale)
    manifest["input_clipping"] = {"samples": clip.samples, "of": clip.total, "values": clip.values,
                                  "input_absmax": model.calibration.input_absmax, "warn": clip.warn}
    if steps is not None:
        manifest["arena_bytes"] = arena_bytes(qmodel, steps, exact=True)
    if target == "validate":  # `kpgen validate` re-reads the model for the golden results: remember which one
        manifest["checkpoint_path"] = str(Path(checkpoint).resolve())
        manifest["checkpoint_sha256"] = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
        if data_file is not None:  # a state dict's calibration comes from the data: validate re-reads both
            manifest["data_path"] = str(Path(data_file).resolve())
    write_tree(out_dir, files, manifest, force, with_board=target != "lib")
    return manifest


MAX_STEPS_LIMIT = 1 << 20  # --max-steps: the longest sequence a bidirectional model's arena is sized for


def _emit_lib(checkpoint: Path, board, out_dir: Path, model: ModelF, qmodel: ModelQ, *, name: str,
              console: str | None, force: bool, act: str, max_steps: int | None) -> dict:
    """emit_project for --target lib without test data: the model's sources, sized for max_steps."""
    steps = max_steps if max_steps is not None else max_steps_for(qmodel, 0)
    est = fit.estimate(qmodel, board, "lib", vector_samples=0, steps=steps, max_steps=steps)
    fit.check_fits(est)
    source = Path(checkpoint).name
    files = render_sources(qmodel, board, None, name, source, target="lib", console=console, steps=steps)
    manifest = {
        "kpgen_version": __version__, "board": board.name, "target": "lib", "name": name, "checkpoint": source,
        "model": model_summary(model, qmodel), "arena_bytes": arena_bytes(qmodel, steps, exact=True),
        "fit_estimate": {"model_flash": est.model_flash, "flash_at_least": est.flash,
                         "flash_available": est.flash_available, "ram_at_least": est.ram,
                         "ram_available": board.ram_size},
        "accuracy": {"test_set": None, "test_samples": 0, "float": None, "int8_golden": None},
        "vectors": {"samples": 0, "steps": 0, "labels": [], "scores": [], "final_digests": []},
        "console": console, "act_table": act, "bias_bits": qmodel.bias_bits,
    }  # fmt: skip
    write_tree(out_dir, files, manifest, force, with_board=False)
    return manifest


@dataclass
class RunReport:
    """Everything one `kpgen run` measured: verification, exit, instruction counts, sizes."""

    manifest: dict
    board: Board
    verification: Verification
    exit_code: int | None
    timed_out: bool
    fault_pc: int | None
    instructions: int | None
    per_function: dict
    sizes: dict
    stack: dict
    weight_bytes_flash: int
    cycles: CycleEstimate | None = None  # the profiled inference's estimated cycles
    profile: qemu.Profile | None = None  # behind instructions, per_function and cycles
    stack_check: toolchain.StackCheck | None = None  # the model's deepest call chain vs the board
    problem: str | None = None  # a firmware failure in words (hang, fault, lockup, runaway output), from either run
    measured_cycles: MeasuredCycles | None = None  # the firmware's KPGEN-CYCLES line (labelled by the report)

    @property
    def passed(self) -> bool:
        return (
            self.verification.passed and self.exit_code == 0 and not self.timed_out and self.fault_pc is None
            and self.problem is None
        )


MAX_MANIFEST_BYTES = 256 << 20


def _is_int(v: object, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_rate(v: object) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1)


def manifest_problem(m: object) -> str | None:
    """What is wrong with a kpgen.json (as `kpgen emit` writes it) in the fields run, flash and the report read;
    None when it is well-formed. A hand edit must give one line, not a KeyError deep inside the report."""
    if not isinstance(m, dict):
        return f"holds a {type(m).__name__}, not an object"
    for key in ("board", "name", "checkpoint"):
        if not isinstance(m.get(key), str) or not m[key]:
            return f"'{key}' is missing or not a string"
    if not m["name"].isidentifier() or not m["name"].isascii():
        return "'name' is not a C identifier"
    if m.get("target", "firmware") not in ("firmware", "lib", "validate"):
        return "'target' is not 'firmware', 'lib' or 'validate'"
    if m.get("console", "semihosting") not in ("uart", "semihosting"):
        return "'console' is neither 'uart' nor 'semihosting'"
    if m.get("act_table", "full") not in golden.ACT_TABLES:
        return "'act_table' is not " + ", ".join(f"'{v}'" for v in golden.ACT_TABLES)
    if m.get("bias_bits", 32) not in BIAS_BITS:
        return "'bias_bits' is not " + " or ".join(str(v) for v in BIAS_BITS)
    if not _is_int(m.get("arena_bytes")):
        return "'arena_bytes' is missing or not a count"
    md = m.get("model")
    counts = ("params", "dense_params", "weight_bytes_int8", "dense_float32_bytes")
    if (not isinstance(md, dict) or not all(_is_int(md.get(k)) for k in counts)
            or not isinstance(md.get("layers"), list)):
        return "'model' is missing or lacks its parameter counts"
    for layer in md["layers"]:
        if not isinstance(layer, dict) or not all(isinstance(layer.get(k), (int, float)) for k in
                                                  ("matrix_compression", "matrix_params_dense", "matrix_params_kp")):
            return "'model.layers' holds a layer without its matrix counts"
    acc = m.get("accuracy")
    if not (isinstance(acc, dict) and _is_int(acc.get("test_samples")) and isinstance(acc.get("test_set"), str)
            and _is_rate(acc.get("float")) and _is_rate(acc.get("int8_golden")) and _is_rate(acc.get("user_float"))):
        return "'accuracy' is missing or malformed"
    v = m.get("vectors")
    if not isinstance(v, dict) or not _is_int(v.get("samples"), 1) or not _is_int(v.get("steps"), 1):
        return "'vectors' lacks its sample and step counts"
    n = v["samples"]
    scores, digests, labels = v.get("scores"), v.get("final_digests"), v.get("labels")
    if not (isinstance(scores, list) and len(scores) == n and all(
            isinstance(r, list) and r and all(_is_int(x, -(1 << 31)) and x < (1 << 31) for x in r) for r in scores)):
        return f"'vectors.scores' is not {n} lists of int32 scores"
    if not (isinstance(digests, list) and len(digests) == n and all(
            isinstance(d, str) and len(d) == 8 and all(c in "0123456789abcdef" for c in d) for d in digests)):
        return f"'vectors.final_digests' is not {n} 8-digit hex digests"
    if not (isinstance(labels, list) and len(labels) == n and all(_is_int(x, -1) for x in labels)):
        return f"'vectors.labels' is not {n} labels"
    return None


def read_manifest(project: Path) -> dict:
    """The project's kpgen.json, checked field by field (docs/errors.md: one line for a hand-edited file)."""
    path = Path(project) / MANIFEST
    if not Path(project).is_dir():
        raise KpgenError(f"{project} is not a directory; give the output directory of `kpgen emit`")
    if not path.is_file():
        raise KpgenError(f"{project} has no {MANIFEST}; it was not written by `kpgen emit` (run that first)")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES:,} bytes")
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        gist = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:120]
        raise KpgenError(f"{path} is unreadable ({gist}); emit the project again") from None
    if not isinstance(manifest, dict) or not all(k in manifest for k in ("board", "name", "vectors")):
        raise KpgenError(f"{path} lacks the board, name or vectors `kpgen emit` writes; emit the project again")
    problem = manifest_problem(manifest)
    if problem:
        raise KpgenError(f"{path} is not as `kpgen emit` writes it: {problem}; emit the project again")
    return manifest


def require_runnable(project: Path, manifest: dict, board) -> None:
    """`kpgen run` needs a test firmware for a board QEMU emulates; say so in one line otherwise."""
    if manifest.get("target", "firmware") == "validate":
        raise KpgenError(
            f"{project} is a validation firmware (emitted with --target validate): check it with "
            f"`kpgen validate {project}`, or emit with --target firmware for `kpgen run`"
        )
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
    problem = res.problem
    if profile and ver.passed and res.exit_code == 0:
        try:
            prof = qemu.count_instructions(built.elf, board, args=("profile",), timeout=timeout)
        except qemu.ProfileFailed as e:  # the firmware hung, faulted or ran away inside the measured window
            problem = str(e)
        else:
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
        problem=problem,
        measured_cycles=cycles.measured_cycles(res.stdout),
    )


@dataclass
class ValidateReport:
    """Everything one `kpgen validate` found: the streamed samples' verdicts and the inference's cost."""

    manifest: dict
    board: Board
    outcome: Outcome
    instructions: int | None  # QEMU only: exact count of one inference (sample 0 of the emitted vectors)

    @property
    def passed(self) -> bool:
        return bool(self.outcome.passed)


def validate_project(
    project: Path,
    *,
    port: str | None = None,
    baud: int | None = None,
    vectors: Path | None = None,
    samples: int | None = None,
    checkpoint: Path | None = None,
    timeout: float = 10.0,
    run_timeout: float = 3600.0,
    retries: int = 2,
    link_factory: Callable[[Path, Board], Link] | None = None,
) -> ValidateReport:
    """Build a `--target validate` project, stream test sequences to it (QEMU, or the board on `port`) and
    check every reply against the golden model. link_factory(elf, board) replaces the link (tests)."""
    from kpgen.target import serial, validate

    project = Path(project)
    manifest = read_manifest(project)
    if manifest.get("target") != "validate":
        raise KpgenError(f"{project} is not a validation firmware; emit it with --target validate first")
    board = load_board(manifest["board"])
    if port is None and not board.emulated and link_factory is None:
        raise KpgenError(f"board {board.name} is real hardware that QEMU does not emulate; flash it "
                         f"(`kpgen flash {project}`) and give its serial line with --port, e.g. --port /dev/ttyACM0")
    if samples is not None and samples < 1:
        raise KpgenError(f"--samples must be at least 1, got {samples}")
    ckpt = Path(checkpoint) if checkpoint is not None else Path(str(manifest.get("checkpoint_path", "")))
    if not ckpt.is_file():
        raise KpgenError(f"the checkpoint {ckpt} that {project} was emitted from is not there; pass it with "
                         "--checkpoint")
    if checkpoint is None and hashlib.sha256(ckpt.read_bytes()).hexdigest() != manifest.get("checkpoint_sha256"):
        raise KpgenError(f"{ckpt} changed since {project} was emitted from it; emit the project again (or pass "
                         "the original with --checkpoint)")
    data_path = manifest.get("data_path")
    model = load_model(ckpt, data_path if isinstance(data_path, str) else None)
    qmodel = golden.with_act_tables(quantize.quantize_model(model), str(manifest.get("act_table", "full")))
    data = test_set(model, vectors)
    xq = golden.quantize_input(data.x, qmodel.input_scale)
    check_shape(qmodel, xq)
    n = len(xq) if samples is None else min(samples, len(xq))
    xq = xq[:n]
    labels = None if data.y is None else data.y[:n]
    expected = expected_from_trace(golden.run_model(qmodel, xq), xq, labels)
    toolchain.check_tools(toolchain.BUILD_TOOLS + (() if port else (toolchain.QEMU,)))
    built = toolchain.build(project)
    if link_factory is not None:
        link = link_factory(built.elf, board)
    elif port is not None:
        link = serial.SerialLink(port, baud or (board.uart.baud if board.uart else 115200))
    else:
        link = serial.QemuLink(built.elf, board, timeout=run_timeout)
    try:
        outcome = validate.stream(link, expected.inputs, expected.scores, expected.digests[:, -1], expected.labels,
                                  timeout=timeout, retries=retries)
    finally:
        link.close()
    instructions = None
    if link.emulated and board.emulated and outcome.passed:
        instructions = qemu.count_instructions(built.elf, board, args=("profile",), timeout=run_timeout).total
    return ValidateReport(manifest=manifest, board=board, outcome=outcome, instructions=instructions)
