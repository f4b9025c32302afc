"""Integer IR -> C sources for a board, via the jinja2 templates; deterministic output, written atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from kpgen import KpgenError, __version__
from kpgen.boards import REPO_ROOT, Board
from kpgen.ir import ModelQ
from kpgen.vectors import Expected

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


def arena_fields(model: ModelQ) -> list[ArenaField]:
    """Every byte of state and scratch, widest type first so the struct has no inner padding."""
    h4 = max(4 * l.hidden_size for l in model.layers)
    t_words = max(max(l.wx.a.shape[1] * l.wx.b.shape[0], l.wh.a.shape[1] * l.wh.b.shape[0]) for l in model.layers)
    fields = [ArenaField("acc_x", "int32_t", h4), ArenaField("acc_h", "int32_t", h4)]
    fields += [ArenaField(f"c{i}", "int16_t", l.hidden_size) for i, l in enumerate(model.layers)]
    fields.append(ArenaField("t_scratch", "int16_t", t_words))
    fields += [ArenaField(f"h{i}", "int8_t", l.hidden_size) for i, l in enumerate(model.layers)]
    return fields


def arena_bytes(model: ModelQ) -> int:
    raw = sum(f.nbytes for f in arena_fields(model))
    return (raw + 3) // 4 * 4


def c_array(values: np.ndarray, per_line: int = 16, indent: str = "    ") -> str:
    """Comma-separated C initialiser lines for an integer array (flattened, row-major)."""
    flat = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    if not flat:
        return indent + "0"
    lines = [", ".join(flat[i : i + per_line]) for i in range(0, len(flat), per_line)]
    return ",\n".join(indent + line for line in lines)


def _layer_context(layer) -> dict:
    return {
        "input_size": layer.input_size,
        "hidden_size": layer.hidden_size,
        "ax": c_array(layer.wx.a),
        "bx": c_array(layer.wx.b),
        "ah": c_array(layer.wh.a),
        "bh": c_array(layer.wh.b),
        "bias": c_array(layer.bias, per_line=8),
        "ax_shape": layer.wx.a.shape,
        "bx_shape": layer.wx.b.shape,
        "ah_shape": layer.wh.a.shape,
        "bh_shape": layer.wh.b.shape,
        "wx_rows": layer.wx.shape[0],
        "wx_cols": layer.wx.shape[1],
        "wh_rows": layer.wh.shape[0],
        "wh_cols": layer.wh.shape[1],
        "wx_params": layer.wx.a.size + layer.wx.b.size,
        "wh_params": layer.wh.a.size + layer.wh.b.size,
        "tx_shift": layer.wx.t_shift,
        "th_shift": layer.wh.t_shift,
        "mult_x": layer.rq_x.mult,
        "shift_x": layer.rq_x.shift,
        "mult_h": layer.rq_h.mult,
        "shift_h": layer.rq_h.shift,
        "cell_frac": layer.cell_frac,
    }


def _hex_lines(words: np.ndarray, per_line: int = 6) -> str:
    ws = [f"0x{int(w):08x}u" for w in words]
    return ",\n".join("        " + ", ".join(ws[i : i + per_line]) for i in range(0, len(ws), per_line))


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_sources(model: ModelQ, board: Board, expected: Expected, name: str, source: str) -> dict[str, str]:
    """File name -> text of every generated file (not the copied runtime)."""
    if not name.isidentifier() or not name.isascii():
        raise KpgenError(f"model name {name!r} is not a C identifier; use letters, digits and underscores")
    env = _env()
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
        "arena_bytes": arena_bytes(model),
        "arena_fields": arena_fields(model),
        "sigmoid_table": c_array(model.sigmoid_table),
        "tanh_table": c_array(model.tanh_table),
        "layers": [_layer_context(l) for l in model.layers],
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
    sources = [f"{name}.c", "main.c", "vectors.c"]
    sources += [f"runtime/{f}" for f in runtime_sources]
    sources += ["board/startup.c", "board/kpgen_target.c"]
    files = {
        f"{name}.h": env.get_template("model.h.j2").render(ctx),
        f"{name}.c": env.get_template("model.c.j2").render(ctx),
        "main.c": env.get_template("main.c.j2").render(ctx),
        "vectors.h": env.get_template("vectors.h.j2").render(ctx),
        "vectors.c": env.get_template("vectors.c.j2").render(ctx),
        "link.ld": env.get_template("link.ld.j2").render(board=board),
        "Makefile": env.get_template("Makefile.j2").render(
            board=board, sources=sources, include_dirs=[".", "runtime", "board"]
        ),
    }
    return files


def write_tree(out_dir: Path, files: dict[str, str], manifest: dict, force: bool) -> None:
    """Write everything into a temporary sibling directory, then rename it into place."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise KpgenError(f"output directory {out_dir} exists; remove it or pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
        (tmp / "runtime").mkdir(exist_ok=True)
        for src in sorted(RUNTIME.iterdir()):
            if src.suffix in (".c", ".h"):
                shutil.copyfile(src, tmp / "runtime" / src.name)
        (tmp / "board").mkdir(exist_ok=True)
        for src in sorted(BOARD_COMMON.iterdir()):
            if src.suffix in (".c", ".h"):
                shutil.copyfile(src, tmp / "board" / src.name)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            old = out_dir.with_name(out_dir.name + ".old-kpgen")
            if old.exists():
                shutil.rmtree(old)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise KpgenError(f"cannot write {out_dir}: {e.strerror or e}; check the disk and permissions") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
