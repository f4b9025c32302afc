"""Integer IR -> C sources for a board, via the jinja2 templates; deterministic output, written atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kpgen import KpgenError, __version__
from kpgen.reference import golden
from kpgen.codegen import layout
from kpgen.target.boards import REPO_ROOT, Board, render_makefile, template_env
from kpgen.ir import GATES, SCALAR_NAMES, VECTOR_NAMES, ModelQ, cell_of, matrices, out_size, sublayers
from kpgen.reference.vectors import Expected

TEMPLATES = REPO_ROOT / "templates"
RUNTIME = REPO_ROOT / "runtime_c"
BOARD_COMMON = REPO_ROOT / "boards" / "common"
MANIFEST = "kpgen.json"


@dataclass(frozen=True)
class ArenaField:
    name: str
    ctype: str
    count: int

    @property
    def nbytes(self) -> int:
        return self.count * {"int8_t": 1, "int16_t": 2, "int32_t": 4}[self.ctype]




def max_steps(model: ModelQ, steps: int = 0) -> int:
    """Longest sequence a model with a bidirectional layer is emitted for: the training length (meta seq_len)
    or `steps`, whichever is larger (streaming models have no limit; they do not store sequences)."""
    seq_len = model.meta.get("seq_len")
    return max(int(seq_len) if isinstance(seq_len, int) and seq_len > 0 else 1, int(steps))


def arena_fields(model: ModelQ, steps: int = 0) -> list[ArenaField]:
    """Every byte of state and scratch, widest type first so the struct has no inner padding.

    acc_x, acc_h: the two mat-vec results (G*H int32, G = 4 LSTM, 3 GRU, 1 FastRNN/FastGRNN); tv: kp_matvec_s8's
    scratch for the largest matrix (kpgen.codegen.layout.matrix_scratch_words); gates: the LSTM gate values (4H int16
    in 2H words); c: LSTM cell states; h: hidden states (one per layer, shared by a bidirectional layer's
    two directions, which run one after the other). A model with a bidirectional layer also keeps every
    layer's output sequence (out: max_steps x H or 2H int8) and the head's input (feat).
    """
    subs = [s for l in model.layers for s in sublayers(l)]
    acc = max(GATES[cell_of(s)] * s.hidden_size for s in subs)
    scratch = max(layout.matrix_scratch_words(m) for l in model.layers for m in matrices(l))
    fields = [ArenaField("acc_x", "int32_t", acc), ArenaField("acc_h", "int32_t", acc)]
    fields.append(ArenaField("tv", "int32_t", scratch))
    gates = max((2 * s.hidden_size for s in subs if cell_of(s) == "lstm"), default=1)
    fields.append(ArenaField("gates", "int32_t", gates))
    fields += [ArenaField(f"c{i}", "int16_t", l.hidden_size) for i, l in enumerate(model.layers) if cell_of(l) == "lstm"]
    fields += [ArenaField(f"h{i}", "int8_t", l.hidden_size) for i, l in enumerate(model.layers)]
    if not golden.is_streaming(model):
        t = max_steps(model, steps)
        fields += [ArenaField(f"out{i}", "int8_t", t * out_size(l)) for i, l in enumerate(model.layers)]
        fields.append(ArenaField("feat", "int8_t", out_size(model.layers[-1])))
    return fields


def arena_bytes(model: ModelQ, steps: int = 0) -> int:
    raw = sum(f.nbytes for f in arena_fields(model, steps))
    return (raw + 3) // 4 * 4


def c_array(values: np.ndarray, per_line: int = 16, indent: str = "    ") -> str:
    """Comma-separated C initialiser lines for an integer array (flattened, row-major)."""
    flat = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    if not flat:
        return indent + "0"
    lines = [", ".join(flat[i : i + per_line]) for i in range(0, len(flat), per_line)]
    return ",\n".join(indent + line for line in lines)


CELL_C = {  # cell -> (params type, step function)
    "lstm": ("kp_lstm_params_s8", "kp_lstm_step_s8"),
    "gru": ("kp_gru_params_s8", "kp_gru_step_s8"),
    "fastrnn": ("kp_fastrnn_params_s8", "kp_fastrnn_step_s8"),
    "fastgrnn": ("kp_fastgrnn_params_s8", "kp_fastgrnn_step_s8"),
}
CELL_TITLE = {"lstm": "LSTM, gates (i, f, g, o)", "gru": "GRU, gates (r, z, n)", "fastrnn": "FastRNN",
              "fastgrnn": "FastGRNN"}
PARAM_SCALARS = (*SCALAR_NAMES, "state_exp", "cell_frac")  # the int32 scalars of a cell's params struct


def _matrix_context(m) -> dict:
    ctx = dict(layout.matrix_context(m))
    rows, cols = m.shape
    ctx.update({
        "rows": rows,
        "cols": cols,
        "dense": m.is_dense,
        "factor_shapes": " (x) ".join(f"({f.shape[0]} x {f.shape[1]})" for f in m.factors),
        "top_rows": m.top_rows,
        "params": m.nbytes - (1 if m.is_dense else 0),  # a dense matrix's B = [[1]] is no weight
    })  # fmt: skip
    return ctx


def _sublayer_context(layer, lid: str, direction: str) -> dict:
    """One direction of one layer: matrices (packed by kpgen.codegen.layout, rendered by templates/kp_matrix.j2),
    requantizers, bias vectors and the cell's scalars."""
    problems = golden.kernel_limits(layer)
    if problems:
        raise KpgenError(f"layer {lid}: {problems[0]}; the int32 kernels cannot run it: re-quantize the model with kpgen")
    cell = cell_of(layer)
    ctype, step = CELL_C[cell]
    return {
        "id": lid,
        "cell": cell,
        "title": CELL_TITLE[cell] + (f", {direction}" if direction else ""),
        "ctype": ctype,
        "step": step,
        "input_size": layer.input_size,
        "hidden_size": layer.hidden_size,
        "wx": _matrix_context(layer.wx),
        "wh": _matrix_context(layer.wh),
        "mult_x": layer.rq_x.mult,
        "shift_x": layer.rq_x.shift,
        "mult_h": layer.rq_h.mult,
        "shift_h": layer.rq_h.shift,
        "vectors": [{"name": n, "count": int(getattr(layer, n).size), "values": c_array(getattr(layer, n), per_line=8)}
                    for n in VECTOR_NAMES if hasattr(layer, n)],
        "scalars": {n: int(getattr(layer, n)) for n in PARAM_SCALARS if hasattr(layer, n)},
    }


def _layer_context(layer, index: int) -> dict:
    subs = sublayers(layer)
    if len(subs) == 1:
        parts = [_sublayer_context(subs[0], f"l{index}", "")]
    else:
        parts = [_sublayer_context(subs[0], f"l{index}f", "forward"),
                 _sublayer_context(subs[1], f"l{index}b", "backward (reads the sequence reversed)")]
    return {
        "index": index,
        "cell": cell_of(layer),
        "bidirectional": len(subs) == 2,
        "input_size": layer.input_size,
        "hidden_size": layer.hidden_size,
        "out_size": out_size(layer),
        "subs": parts,
    }


def _hex_lines(words: np.ndarray, per_line: int = 6) -> str:
    ws = [f"0x{int(w):08x}u" for w in words]
    return ",\n".join("        " + ", ".join(ws[i : i + per_line]) for i in range(0, len(ws), per_line))


TARGETS = ("firmware", "lib")

_BOOT2_PLACEHOLDER = """/* boot2_placeholder.c: {size} zero bytes where the boot ROM looks for its second-stage boot loader (boot2).
 * Generated by kpgen {version}. With these the chip does NOT boot from flash: build with the Pico SDK's boot2
 * instead (make BOOT2=.../bs2_default_padded_checksummed.S, or cmake -DKPGEN_BOOT2=...). kpgen ships no boot2.
 */
__attribute__((section(".boot2"), used)) const unsigned char kpgen_boot2_placeholder[{size}] = {{0}};
"""


def render_sources(
    model: ModelQ, board: Board, expected: Expected, name: str, source: str, target: str = "firmware"
) -> dict[str, str]:
    """File name -> text of every generated file (not the copied runtime).

    target "firmware": the test firmware (main, embedded vectors, start-up, linker script) built by make or CMake;
    "lib": only the model, for a static library (make or CMake) that an existing firmware links.
    """
    if target not in TARGETS:
        raise KpgenError(f"unknown target {target!r}; use one of: {', '.join(TARGETS)}")
    if not name.isidentifier() or not name.isascii():
        raise KpgenError(f"model name {name!r} is not a C identifier; use letters, digits and underscores")
    env = template_env()
    steps = max_steps(model, expected.inputs.shape[1])
    kron_ext = any(m.rest or m.top is not None for l in model.layers for m in matrices(l))
    # plain two-factor (or dense) matrices only: the runtime leaves out the k-factor / HKP path (kp_matvec_s8.c)
    model_defines = [] if kron_ext else ["KP_NO_KRON_EXT"]
    ctx = {
        "version": __version__,
        "name": name,
        "NAME": name.upper(),
        "guard": f"{name.upper()}_H",
        "source": source,
        "input_size": model.input_size,
        "num_classes": model.num_classes,
        "num_layers": len(model.layers),
        "hidden_sizes": [l.hidden_size for l in model.layers],
        "input_scale": model.input_scale,
        "out_scale": model.head.out_scale,
        "arena_bytes": arena_bytes(model, steps),
        "arena_fields": arena_fields(model, steps),
        "streaming": golden.is_streaming(model),
        "kron_ext": kron_ext,
        "max_steps": steps,
        "cells": sorted({cell_of(l) for l in model.layers}),
        "sigmoid_table": c_array(model.sigmoid_table),
        "tanh_table": c_array(model.tanh_table),
        "table_size": golden.TABLE_SIZE,
        "layers": [_layer_context(l, i) for i, l in enumerate(model.layers)],
        "head_rows": model.head.weight.shape[0],
        "head_cols": model.head.weight.shape[1],
        "head_w": c_array(model.head.weight),
        "head_b": c_array(model.head.bias, per_line=8),
        "num_samples": len(expected.inputs),
        "steps": expected.inputs.shape[1],
        "inputs": [c_array(x, per_line=model.input_size, indent="        ") for x in expected.inputs],
        "scores": [", ".join(str(int(v)) for v in s) for s in expected.scores],
        "digests": [_hex_lines(s) for s in expected.digests],
    }
    runtime_sources = sorted(p.name for p in RUNTIME.glob("*.c"))
    lib_sources = [f"{name}.c"] + [f"runtime/{f}" for f in runtime_sources]
    fw_sources = ["main.c", "vectors.c", "board/startup.c", "board/kpgen_target.c"]
    files = {
        f"{name}.h": env.get_template("model.h.j2").render(ctx),
        f"{name}.c": env.get_template("model.c.j2").render(ctx),
    }
    build = {"board": board, "name": name, "version": __version__, "target": target,
             "defines": list(board.defines) + model_defines}
    if target == "firmware":
        sources = [f"{name}.c", "main.c", "vectors.c"]
        sources += [f"runtime/{f}" for f in runtime_sources]
        sources += ["board/startup.c", "board/kpgen_target.c"]
        files.update({
            "main.c": env.get_template("main.c.j2").render(ctx),
            "vectors.h": env.get_template("vectors.h.j2").render(ctx),
            "vectors.c": env.get_template("vectors.c.j2").render(ctx),
            "link.ld": env.get_template("link.ld.j2").render(board=board),
            "Makefile": render_makefile(board, sources, [".", "runtime", "board"], build["defines"]),
        })
        if board.boot2_size:
            files["board/boot2_placeholder.c"] = _BOOT2_PLACEHOLDER.format(size=board.boot2_size, version=__version__)
    else:
        files["Makefile"] = env.get_template("lib.Makefile.j2").render(build, sources=lib_sources)
    files["CMakeLists.txt"] = env.get_template("CMakeLists.txt.j2").render(
        build, lib_sources=lib_sources, fw_sources=fw_sources
    )
    files["arm-none-eabi.cmake"] = env.get_template("arm-none-eabi.cmake.j2").render(build)
    files["kpgen_size.cmake"] = env.get_template("kpgen_size.cmake.j2").render(build)
    return files


def write_tree(out_dir: Path, files: dict[str, str], manifest: dict, force: bool, with_board: bool = True) -> None:
    """Write everything into a temporary sibling directory, then rename it into place.

    with_board: copy boards/common/ into board/ (firmware); a library has no start-up code.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise KpgenError(f"output directory {out_dir} exists; remove it or pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    old: Path | None = None
    try:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
        (tmp / "runtime").mkdir(exist_ok=True)
        for src in sorted(RUNTIME.iterdir()):
            if src.suffix in (".c", ".h"):
                shutil.copyfile(src, tmp / "runtime" / src.name)
        if with_board:
            (tmp / "board").mkdir(exist_ok=True)
            for src in sorted(BOARD_COMMON.iterdir()):
                if src.suffix in (".c", ".h"):
                    shutil.copyfile(src, tmp / "board" / src.name)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if out_dir.exists() or out_dir.is_symlink():  # --force: move the previous tree aside, then swap
            old = tmp.with_name(tmp.name + ".old")  # unique: tmp's name is
            out_dir.rename(old)
        tmp.rename(out_dir)
    except BaseException as e:
        kept = ""
        if old is not None and not out_dir.exists():
            try:
                old.rename(out_dir)  # put the previous tree back where it was
            except OSError:
                kept = f" (the previous {out_dir.name} is in {old})"
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise KpgenError(
                f"cannot write {out_dir}: {e.strerror or e}; check the disk and permissions{kept}"
            ) from None
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
