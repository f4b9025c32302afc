"""Integer IR -> C sources for a board, via the jinja2 templates; deterministic output, written atomically."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kpgen import KpgenError, __version__, cells
from kpgen._data import data_dir
from kpgen.codegen import layout
from kpgen.ir import LayerQ, ModelQ, matrices, out_size, sublayers
from kpgen.quant import limits
from kpgen.reference import golden
from kpgen.reference.vectors import Expected
from kpgen.target.boards import Board, check_console, console_sources, render_makefile, template_env

RUNTIME = data_dir("runtime_c")
BOARD_COMMON = data_dir("boards") / "common"
MANIFEST = "kpgen.json"


@dataclass(frozen=True)
class ArenaField:
    name: str
    ctype: str
    count: int

    @property
    def nbytes(self) -> int:
        return self.count * {"int8_t": 1, "int16_t": 2, "int32_t": 4}[self.ctype]




def max_steps(model: ModelQ, steps: int = 0, exact: bool = False) -> int:
    """Longest sequence a model with a bidirectional layer is emitted for: the training length (meta seq_len)
    or `steps`, whichever is larger; exactly `steps` when exact (`kpgen emit --max-steps`). Streaming models have
    no limit: they do not store sequences."""
    if exact:
        return max(1, int(steps))
    seq_len = model.meta.get("seq_len")
    return max(int(seq_len) if isinstance(seq_len, int) and seq_len > 0 else 1, int(steps))


def arena_fields(model: ModelQ, steps: int = 0, exact: bool = False) -> list[ArenaField]:
    """Every byte of state and scratch, widest type first so the struct has no inner padding.

    acc_x, acc_h: the two mat-vec results (G*H int32, G the cell's gates: kpgen.cells); tv: kp_matvec_s8's
    scratch for the largest matrix (kpgen.codegen.layout.matrix_scratch_words); gates: the LSTM gate values (4H int16
    in 2H words: Cell.gate_scratch); c: cell states (LSTM); h: hidden states (one per layer, shared by a
    bidirectional layer's two directions, which run one after the other). A model with a bidirectional layer also
    keeps every layer's output sequence (out: max_steps x H or 2H int8) and the head's input (feat).
    """
    subs = [s for l in model.layers for s in sublayers(l)]
    acc = max(cells.of(s).gates * s.hidden_size for s in subs)
    scratch = max(layout.matrix_scratch_words(m) for l in model.layers for m in matrices(l))
    fields = [ArenaField("acc_x", "int32_t", acc), ArenaField("acc_h", "int32_t", acc)]
    fields.append(ArenaField("tv", "int32_t", scratch))
    gates = max((cells.of(s).gate_scratch * s.hidden_size for s in subs if cells.of(s).gate_scratch), default=1)
    fields.append(ArenaField("gates", "int32_t", gates))
    streaming, feat = golden.is_streaming(model), out_size(model.layers[-1])
    if model.pool == "mean":  # the int32 sums over time (kp_pool_sum_s8)
        fields.append(ArenaField("pool", "int32_t", feat))
    if streaming and model.pool != "last":  # steps summed since the reset
        fields.append(ArenaField("pool_n", "int32_t", 1))
    fields += [ArenaField(f"c{i}", "int16_t", l.hidden_size)
               for i, l in enumerate(model.layers) if cells.of(l).cell_state]
    fields += [ArenaField(f"h{i}", "int8_t", l.hidden_size) for i, l in enumerate(model.layers)]
    if not streaming:
        t = max_steps(model, steps, exact)
        fields += [ArenaField(f"out{i}", "int8_t", t * out_size(l)) for i, l in enumerate(model.layers)]
        fields.append(ArenaField("feat", "int8_t", feat))
    elif model.pool != "last":  # the running maximum (kp_pool_max_s8), and the head's input
        if model.pool == "max":
            fields.append(ArenaField("poolmax", "int8_t", feat))
        fields.append(ArenaField("feat", "int8_t", feat))
    if model.hidden is not None:  # the MLP head's hidden outputs
        fields.append(ArenaField("hid", "int8_t", int(model.hidden.weight.shape[0])))
    return fields


def arena_bytes(model: ModelQ, steps: int = 0, exact: bool = False) -> int:
    raw = sum(f.nbytes for f in arena_fields(model, steps, exact))
    return (raw + 3) // 4 * 4


def c_array(values: np.ndarray, per_line: int = 16, indent: str = "    ") -> str:
    """Comma-separated C initialiser lines for an integer array (flattened, row-major)."""
    flat = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    if not flat:
        return indent + "0"
    lines = [", ".join(flat[i : i + per_line]) for i in range(0, len(flat), per_line)]
    return ",\n".join(indent + line for line in lines)


def _matrix_context(m, biased: bool = False, b16: bool = False) -> dict:
    ctx = dict(layout.matrix_context(m, biased, b16))
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


def _sublayer_context(layer: LayerQ, lid: str, direction: str, biased: bool = False, b16: bool = False) -> dict:
    """One direction of one layer: matrices (packed by kpgen.codegen.layout, rendered by templates/kp_matrix.j2;
    biased: for Armv6-M cores; b16: B in int16 for DSP cores), requantizers, bias vectors and the cell's params
    initialiser fields (kpgen.cells: Cell.c_fields)."""
    problems = [] if limits.is_checked(layer) else limits.kernel_limits(layer)  # the quantizer's layers: checked
    if problems:
        raise KpgenError(f"layer {lid}: {problems[0]}; "
                         "the int32 kernels cannot run it: re-quantize the model with kpgen")
    cell = cells.of(layer)
    return {
        "id": lid,
        "cell": cell.name,
        "cell_state": cell.cell_state,
        "title": cell.c_title + (f", {direction}" if direction else ""),
        "ctype": cell.c_params,
        "step": cell.c_step,
        "input_size": layer.input_size,
        "hidden_size": layer.hidden_size,
        "wx": _matrix_context(layer.wx, biased, b16),
        "wh": _matrix_context(layer.wh, biased, b16),
        "mult_x": layer.rq_x.mult,
        "shift_x": layer.rq_x.shift,
        "mult_h": layer.rq_h.mult,
        "shift_h": layer.rq_h.shift,
        "vectors": [{"name": n, "count": int(getattr(layer, n).size), "values": c_array(getattr(layer, n), per_line=8)}
                    for n in cell.vectors],
        "fields": cell.c_fields(layer),
    }


def number_fixed_kernels(layers: list[dict], name: str) -> list[dict]:
    """Kernel selection: number (1, 2, ...) the matrices that get a kernel specialised to their shapes
    (layout.specialised) in the layer contexts, and list them (id, C prefix) for kp_matvec_fixed_s8."""
    kernels: list[dict] = []
    for L in layers:
        for S in L["subs"]:
            for mname in ("wx", "wh"):
                M = S[mname]
                if M["fixed"]:
                    M["fixed_id"] = len(kernels) + 1
                    kernels.append({"id": M["fixed_id"], "prefix": f"{name}_{S['id']}_{mname}"})
    return kernels


def _layer_context(layer, index: int, biased: bool = False, b16: bool = False) -> dict:
    subs = sublayers(layer)
    if len(subs) == 1:
        parts = [_sublayer_context(subs[0], f"l{index}", "", biased, b16)]
    else:
        parts = [_sublayer_context(subs[0], f"l{index}f", "forward", biased, b16),
                 _sublayer_context(subs[1], f"l{index}b", "backward (reads the sequence reversed)", biased, b16)]
    return {
        "index": index,
        "cell": cells.of(layer).name,
        "cell_state": cells.of(layer).cell_state,
        "bidirectional": len(subs) == 2,
        "input_size": layer.input_size,
        "hidden_size": layer.hidden_size,
        "out_size": out_size(layer),
        "subs": parts,
    }


def _hex_lines(words: np.ndarray, per_line: int = 6) -> str:
    ws = [f"0x{int(w):08x}u" for w in words]
    return ",\n".join("        " + ", ".join(ws[i : i + per_line]) for i in range(0, len(ws), per_line))


TARGETS = ("firmware", "lib", "validate")


def header_context(model: ModelQ) -> dict:
    """The scales and the input quantizers of model.h: INPUT_SCALE and OUTPUT_SCALE as doubles that read back
    exactly (17 significant digits), and the integer-only quantizer's multiplier (quantize.input_fixed_requant;
    None when the input range is too extreme for it)."""
    from kpgen.quant import quantize

    fixed = quantize.input_fixed_requant(model.input_scale)
    return {
        "input_scale_c": f"{model.input_scale:.17g}",
        "output_scale_c": f"{model.head.out_scale:.17g}",
        "input_frac_bits": quantize.INPUT_FRAC_BITS,
        "input_fixed": None if fixed is None else {"mult": fixed.mult, "shift": fixed.shift},
    }



# The head kernels a model calls only with its pooling or its MLP head: the other files are left out of the
# project, as the other cells' step files are (they would be compiled, and counted in a library's size.txt).
HEAD_RUNTIME = {"kp_pool_sum_s8.c": ("mean",), "kp_pool_mean_s8.c": ("mean",), "kp_pool_max_s8.c": ("max",)}
HIDDEN_RUNTIME = "kp_fc_relu_s8.c"


def linked_runtime_sources(model: ModelQ) -> list[str]:
    """The runtime_c/*.c files a model's project compiles: every shared kernel, its cells' step files, the pooling
    kernels of its pool and the MLP head's kernel only when it has a hidden layer."""
    unused = {f"{c.c_step}.c" for c in cells.REGISTRY.values()} - {f"{cells.of(l).c_step}.c" for l in model.layers}
    unused |= {f for f, pools in HEAD_RUNTIME.items() if model.pool not in pools}
    if model.hidden is None:
        unused.add(HIDDEN_RUNTIME)
    return sorted(p.name for p in RUNTIME.glob("*.c") if p.name not in unused)


# A runtime function's prototype in runtime_c/*.h: a line starting with its return type (not static or inline).
_PROTOTYPE = re.compile(r"^(?!static\b|KP_INLINE\b)[A-Za-z_][\w \t*]*?\b(kp_\w+)\s*\(", re.M)


def runtime_symbols() -> list[str]:
    """The runtime's external functions (kp_*, declared in runtime_c/*.h, kp_matvec_fixed_s8 included)."""
    names = {m.group(1) for h in RUNTIME.glob("*.h") for m in _PROTOTYPE.finditer(h.read_text(encoding="utf-8"))}
    return sorted(names)


def library_renames(name: str) -> list[str]:
    """Defines that give a library's runtime its model's prefix (kp_matvec_s8 -> <name>_kp_matvec_s8): each
    library carries a runtime built for its own model (its defines: KP_FIXED_KERNELS, KP_NO_KRON_EXT, the tables'
    variant, KP_BIAS16) and its own kp_matvec_fixed_s8, so two models emitted with different names link into one
    firmware.
    Renaming costs no instruction; each model keeps its own copy of the kernels it calls."""
    return [f"{sym}={name}_{sym}" for sym in runtime_symbols()]


def render_sources(
    model: ModelQ, board: Board, expected: Expected | None, name: str, source: str, target: str = "firmware",
    console: str | None = None, steps: int | None = None,
) -> dict[str, str]:
    """File name -> text of every generated file (not the copied runtime).

    expected: the test vectors (None only for target "lib", which embeds none). steps: the longest sequence a
    bidirectional model is emitted for (MODEL_MAX_STEPS; None: max_steps of the vectors' length).

    target "firmware": the test firmware (main, embedded vectors, start-up, linker script) built by make or CMake;
    "lib": only the model, for a static library (make or CMake) that an existing firmware links.
    console: "uart" or "semihosting" for the firmware's output (None: the board's default, kpgen.target.boards).
    """
    console = check_console(board, console)
    common, console_defines, console_files = console_sources(board, console)
    if target not in TARGETS:
        raise KpgenError(f"unknown target {target!r}; use one of: {', '.join(TARGETS)}")
    if not name.isidentifier() or not name.isascii():
        raise KpgenError(f"model name {name!r} is not a C identifier; use letters, digits and underscores")
    env = template_env()
    if expected is None and target != "lib":
        raise ValueError(f"render_sources: target {target} embeds test vectors; pass them")
    exact = steps is not None
    steps = steps if steps is not None else max_steps(model, 0 if expected is None else expected.inputs.shape[1])
    kron_ext = any(m.rest or m.top is not None for l in model.layers for m in matrices(l))
    # plain two-factor (or dense) matrices only: the runtime leaves out the k-factor / HKP path (kp_matvec_s8.c)
    model_defines = [] if kron_ext else ["KP_NO_KRON_EXT"]
    act_shift = golden.table_interp_shift(model.tanh_table)  # the tables' variant: the runtime's look-up must match
    if act_shift:
        model_defines.append(f"KP_ACT_INTERP_SHIFT={act_shift}")
    if model.bias_bits == 16:  # the gate biases are int16 (kp_bias_t): the runtime must read them so
        model_defines.append("KP_BIAS16")
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
        "arena_bytes": arena_bytes(model, steps, exact),
        "arena_fields": arena_fields(model, steps, exact),
        "streaming": golden.is_streaming(model),
        "kron_ext": kron_ext,
        "max_steps": steps,
        "cells": sorted({cells.of(l).name for l in model.layers}),
        "sigmoid": any(cells.of(l).needs_sigmoid for l in model.layers),
        "sigmoid_table": c_array(model.sigmoid_table),
        "tanh_table": c_array(model.tanh_table),
        "table_size": int(model.tanh_table.size),
        "act_shift": act_shift,
        "bias_bits": model.bias_bits,
        "layers": [_layer_context(l, i, layout.biased_for(board.core), layout.b16_for(board.has_dsp, board.has_mve))
                   for i, l in enumerate(model.layers)],
        "biased_blocks": layout.biased_for(board.core),
        "pool": model.pool,
        "feat_size": out_size(model.layers[-1]),
        "hidden": None if model.hidden is None else {
            "rows": int(model.hidden.weight.shape[0]), "cols": int(model.hidden.weight.shape[1]),
            "w": c_array(model.hidden.weight), "b": c_array(model.hidden.bias, per_line=8),
            "mult": model.hidden.rq.mult, "shift": model.hidden.rq.shift},
        "pool_max_steps": golden.POOL_MAX_STEPS,
        "head_rows": model.head.weight.shape[0],
        "head_cols": model.head.weight.shape[1],
        "head_w": c_array(model.head.weight),
        "head_b": c_array(model.head.bias, per_line=8),
        **header_context(model),
    }
    if expected is not None:
        ctx.update({
            "num_samples": len(expected.inputs),
            "steps": expected.inputs.shape[1],
            "inputs": [c_array(x, per_line=model.input_size, indent="        ") for x in expected.inputs],
            "scores": [", ".join(str(int(v)) for v in s) for s in expected.scores],
            "digests": [_hex_lines(s) for s in expected.digests],
        })  # fmt: skip
    ctx["fixed_kernels"] = number_fixed_kernels(ctx["layers"], name)
    if ctx["fixed_kernels"]:
        model_defines.append("KP_FIXED_KERNELS")  # kp_matvec_s8 calls the model's kp_matvec_fixed_s8
    ctx["only_fixed"] = len(ctx["fixed_kernels"]) == sum(2 * len(L["subs"]) for L in ctx["layers"])
    if ctx["only_fixed"]:
        model_defines.append("KP_ONLY_FIXED")  # the generic matrix stages are not linked
    # Other cells' step kernels are left out of the project: nothing calls them, and a library holding them
    # would count them in its size.txt (`size -t` totals every object of the archive).
    runtime_sources = linked_runtime_sources(model)
    lib_sources = [f"{name}.c"] + [f"runtime/{f}" for f in runtime_sources]
    if target == "validate" and console != "uart":
        has = "one" if board.uart else "none: add a [uart] table to its board.toml"
        raise KpgenError(f"--target validate talks to the host over the board's UART; emit it with --console uart "
                         f"(board {board.name} has {has})")
    app_sources = ["main.c", "vectors.c"] if target == "firmware" else ["main.c"]
    fw_sources = app_sources + [f"board/{f}" for f in common]
    files = {
        f"{name}.h": env.get_template("model.h.j2").render(ctx),
        f"{name}.c": env.get_template("model.c.j2").render(ctx),
    }
    defines = list(board.defines) + model_defines + (library_renames(name) if target == "lib" else [])
    build = {"board": board, "name": name, "version": __version__, "target": target, "defines": defines,
             "console": console}
    if target in ("firmware", "validate"):
        sources = [f"{name}.c"] + app_sources
        sources += [f"runtime/{f}" for f in runtime_sources]
        sources += [f"board/{f}" for f in common]
        files.update({f"board/{f}": text for f, text in console_files.items()})
        if target == "firmware":
            files.update({
                "main.c": env.get_template("main.c.j2").render(ctx, console=console),
                "vectors.h": env.get_template("vectors.h.j2").render(ctx),
                "vectors.c": env.get_template("vectors.c.j2").render(ctx),
            })
        else:  # sample 0 stays on board for the "profile" run: one inference's instruction count
            assert expected is not None
            files["main.c"] = env.get_template("validate_main.c.j2").render(
                ctx, profile_input=c_array(expected.inputs[0], per_line=model.input_size),
                profile_steps=int(expected.inputs.shape[1]))
        files.update({
            "link.ld": env.get_template("link.ld.j2").render(board=board),
            "Makefile": render_makefile(board, sources, [".", "runtime", "board"], defines + console_defines,
                                        console),
        })
    else:
        files["Makefile"] = env.get_template("lib.Makefile.j2").render(build, sources=lib_sources)
    files["CMakeLists.txt"] = env.get_template("CMakeLists.txt.j2").render(
        build, lib_sources=lib_sources, fw_sources=fw_sources
    )
    files["arm-none-eabi.cmake"] = env.get_template("arm-none-eabi.cmake.j2").render(build)
    files["kpgen_size.cmake"] = env.get_template("kpgen_size.cmake.j2").render(build)
    return files


def _step(point: str) -> None:
    """A named point of write_tree ("written", "swapping"); does nothing. Tests interrupt the write here."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while write_tree was writing: raised so the cleanup runs (the CLI: 'interrupted')."""


_CAUGHT = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)
_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux renameat2 RENAME_EXCHANGE); False where that is unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), ctypes.c_uint(_RENAME_EXCHANGE))
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False  # a kernel or file system without the call: rename aside instead
    raise OSError(err, os.strerror(err), str(b))


def _make_parents(parent: Path) -> list[Path]:
    """mkdir -p parent; returns the directories it created, outermost first, so a failure can remove them."""
    missing = []
    p = parent
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    created = []
    for d in reversed(missing):
        d.mkdir()
        created.append(d)
    return created


def _swap_in(tmp: Path, out_dir: Path) -> Path | None:
    """Put tmp's tree at out_dir. Returns where the previous tree now is (to delete), or None if there was none."""
    if not (out_dir.exists() or out_dir.is_symlink()):
        tmp.rename(out_dir)
        return None
    if out_dir.is_dir() and not out_dir.is_symlink() and _exchange(tmp, out_dir):
        return tmp  # one step: out_dir is the new tree, tmp the old one
    old = tmp.with_name(tmp.name + ".old")  # unique, as tmp's name is
    out_dir.rename(old)
    _step("swapping")
    try:
        tmp.rename(out_dir)
    except BaseException:
        old.rename(out_dir)  # put the previous tree back where it was
        raise
    return old


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_tree(out_dir: Path, files: dict[str, str], manifest: dict, force: bool, with_board: bool = True) -> None:
    """Write everything into a temporary sibling directory, then swap it into place: the user sees the previous
    tree or the new one, never neither, and no debris, even when SIGTERM or SIGHUP arrives mid-write.

    with_board: copy boards/common/ into board/ (firmware); a library has no start-up code.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise KpgenError(f"output directory {out_dir} exists; remove it or pass --force to replace it")
    in_main = threading.current_thread() is threading.main_thread()

    def interrupted(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    saved = {s: signal.signal(s, interrupted) for s in _CAUGHT} if in_main else {}
    created: list[Path] = []
    tmp: Path | None = None
    try:
        created = _make_parents(out_dir.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
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
        _step("written")
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _CAUGHT) if in_main and _CAUGHT else None
        try:  # the swap and the removal of the previous tree run to the end; a signal waits until after
            old = _swap_in(tmp, out_dir)
            tmp = None
            if old is not None:
                _remove(old)
        finally:
            if blocked is not None:
                for s, h in saved.items():  # a pending signal then acts as it would have without kpgen
                    signal.signal(s, h)
                saved = {}
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                break
        if isinstance(e, OSError):
            where = f" ({e.filename})" if getattr(e, "filename", None) and str(e.filename) != str(out_dir) else ""
            raise KpgenError(f"cannot write {out_dir}: {e.strerror or e}{where}; check the disk and permissions "
                             "(and that every directory in the path is a directory)") from None
        raise
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
