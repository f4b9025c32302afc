"""Load a kpgen checkpoint (docs/checkpoint.md) into the float IR; the only module downstream code needs torch for.

Files are read with `torch.load(weights_only=True)` only: a checkpoint is data, never code. Every problem
with the file is a KpgenError of one line, prefixed with the file name, naming the problem and the fix.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import reprlib
import warnings
import zipfile
from pathlib import Path
from typing import NoReturn

import numpy as np

from kpgen import KpgenError
from kpgen.ir import (
    GATES,
    BiLayerF,
    Calibration,
    DenseF,
    FastGRNNLayerF,
    FastRNNLayerF,
    GRULayerF,
    KPMatrixF,
    LSTMLayerF,
    ModelF,
)

FORMAT = "kpgen-checkpoint"
SUPPORTED_VERSIONS = (1,)
DOC = "docs/checkpoint.md"
TOP_KEYS = ("format", "version", "arch", "state_dict", "calibration")
ARCH_INT_KEYS = ("input_size", "hidden_size", "num_layers", "num_classes")
METHODS = ("kp", "hkp", "prune", "small", "dense", "lowrank", "mixed")
# per cell: its other tensors (name -> rows as a multiple of H; 0 for a scalar)
CELL_TENSORS = {
    "lstm": {"bias": 4},
    "gru": {"bias": 3, "bias_hn": 1},
    "fastrnn": {"bias": 1, "alpha": 0, "beta": 0},
    "fastgrnn": {"bias_z": 1, "bias_h": 1, "zeta": 0, "nu": 0},
}
# What torch.load raises on empty, truncated, corrupt or non-torch files (after UnpicklingError and
# PermissionError are handled): typically RuntimeError, EOFError, KeyError, ValueError, IndexError, OSError or
# zipfile.BadZipFile. A damaged pickle can make torch's own rebuild code fail in any way (tests/test_fuzz.py found
# an AttributeError from one flipped bit), so every Exception from torch.load counts as a damaged file.
DAMAGED_FILE_ERRORS = (zipfile.BadZipFile, Exception)


class _Checker:
    """Raises KpgenError messages that all start with the checkpoint's file name."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, problem: str, fix: str) -> NoReturn:
        raise KpgenError(" ".join(f"{self.path}: {problem}; {fix}".split()))  # one line, whatever the file held

    def require(self, ok: bool, problem: str, fix: str) -> None:
        if not ok:
            self.fail(problem, fix)


def _unpickling_problem(err: Exception) -> tuple[str, str]:
    """(problem, fix) for an UnpicklingError raised by torch.load(weights_only=True)."""
    m = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if m:
        return (
            f"the checkpoint contains pickled Python objects ({m.group(1)}), which weights_only loading refuses",
            f"save a plain dict of tensors, strings and numbers as documented in {DOC} "
            "(e.g. model.state_dict(), not the model)",
        )
    return (
        "is not a torch checkpoint that weights_only loading can read",
        f"save it with torch.save as documented in {DOC}",
    )


def read_raw(path: str | os.PathLike) -> object:
    """torch.load(weights_only=True) with every failure turned into a one-line KpgenError."""
    import torch

    chk = _Checker(str(path))
    p = Path(path)
    chk.require(p.exists(), "no such file", "check the path, or train one with `kpgen train -o model.pt`")
    chk.require(p.is_file(), "is not a regular file", "give the path of a .pt checkpoint file")
    chk.require(p.stat().st_size > 0, "is empty (0 bytes)", "train or copy the checkpoint again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        chk.fail(*_unpickling_problem(e))
    except PermissionError as e:
        chk.fail(f"cannot be read ({e.strerror or e})", "check the file's permissions")
    except DAMAGED_FILE_ERRORS as e:
        chk.fail(
            f"is not a torch checkpoint, or is truncated or corrupt ({_first_line(e)})",
            "re-save it with torch.save or copy it again",
        )


def _first_line(err: Exception) -> str:
    """The gist of a torch.load exception, short enough for a one-line message."""
    text = str(err).strip()
    gist = text.splitlines()[0].split(". ")[0][:120] if text else ""
    return f"{type(err).__name__}: {gist}" if gist else type(err).__name__


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40


def _show(v: object) -> str:
    """A value from the file, for a message: one short line whatever it is (tensors by shape and dtype)."""
    if hasattr(v, "shape") and hasattr(v, "dtype") and getattr(v, "ndim", 0) != 0:
        try:
            return f"a tensor of shape {tuple(v.shape)} ({v.dtype})"
        except Exception:  # noqa: BLE001 - e.g. nested tensors have no shape
            return f"a {type(v).__name__}"
    text = " ".join(_REPR.repr(v).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _scalar(v: object) -> object:
    """A 0-d tensor as its Python number; anything else (or a tensor that has no readable value) unchanged."""
    if getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
        try:
            return v.item()
        except (RuntimeError, TypeError, ValueError):  # e.g. a tensor on the "meta" device holds no data
            return v
    return v


def _check_top(chk: _Checker, raw: object) -> dict:
    """Format, version and top-level keys."""
    chk.require(
        isinstance(raw, dict),
        f"holds a {type(raw).__name__}, not a dict",
        f"save the checkpoint dict described in {DOC}",
    )
    if "format" not in raw and raw and all(hasattr(v, "shape") for v in raw.values()):
        chk.fail("is a bare state_dict, not a kpgen checkpoint", f"wrap it with arch and calibration as in {DOC}")
    chk.require("format" in raw, "has no 'format' key, so it is not a kpgen checkpoint", f"see {DOC}")
    chk.require(
        isinstance(raw.get("format"), str) and raw.get("format") == FORMAT,
        f"format is {_show(raw.get('format'))}, expected {FORMAT!r}",
        f"save the checkpoint dict described in {DOC}",
    )
    version = raw.get("version")
    chk.require(
        _is_int(version) and version in SUPPORTED_VERSIONS,
        f"checkpoint version {_show(version)} is not supported (this kpgen reads {', '.join(map(str, SUPPORTED_VERSIONS))})",
        "re-export it with this kpgen version or upgrade kpgen",
    )
    if "calibration" not in raw:
        chk.fail(
            "missing calibration",
            f"add 'calibration' with input_absmax and cell_absmax measured on training data ({DOC})",
        )
    missing = [k for k in TOP_KEYS if k not in raw]
    chk.require(not missing, f"missing top-level key(s) {', '.join(missing)}", f"add them as documented in {DOC}")
    for key in ("arch", "state_dict", "calibration"):
        chk.require(isinstance(raw[key], dict), f"'{key}' is a {type(raw[key]).__name__}, not a dict", f"see {DOC}")
    chk.require(isinstance(raw.get("meta", {}), dict), "'meta' is not a dict", f"see {DOC}")
    return raw


def _factor_pair(chk: _Checker, value: object, where: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """[[m1, n1], [m2, n2]] with positive ints."""
    try:
        (m1, n1), (m2, n2) = value  # type: ignore[misc]
        ok = all(_is_int(v) and v > 0 for v in (m1, n1, m2, n2))
    except (TypeError, ValueError):
        ok = False
    chk.require(ok, f"{where} is {_show(value)}, not [[m1, n1], [m2, n2]] with positive ints", f"see {DOC}")
    return (m1, n1), (m2, n2)


def _is_variant(arch: dict) -> bool:
    """True for the training-side form (arch.method / per-layer matrix specs; docs/checkpoint.md)."""
    return "method" in arch or "wx_specs" in arch


def _dims(chk: _Checker, value: object, where: str) -> list[tuple[int, int]]:
    """A factor list [[m1, n1], [m2, n2], ...] of at least two positive int pairs."""
    try:
        pairs = [(m, n) for m, n in value]  # type: ignore[misc, union-attr]
        ok = len(pairs) >= 2 and all(_is_int(v) and v > 0 for p in pairs for v in p)
    except (TypeError, ValueError):
        ok = False
    chk.require(ok, f"{where} is {_show(value)}, not a list [[m1, n1], [m2, n2], ...] of positive ints", f"see {DOC}")
    return pairs


def _check_spec(chk: _Checker, spec: object, where: str, rows: int, cols: int) -> dict:
    """One matrix spec of a variant checkpoint, checked against the matrix it must make (rows x cols)."""
    if spec == "dense":
        spec = {"kind": "dense"}
    elif isinstance(spec, (list, tuple)):
        spec = {"kind": "kp", "factors": spec}
    chk.require(isinstance(spec, dict) and "kind" in spec, f"{where} is {_show(spec)}, not a matrix spec", f"see {DOC}")
    kind = spec["kind"]
    if kind == "lowrank":
        chk.fail(f"{where} is a low-rank matrix, which kpgen cannot emit (it has no low-rank kernel)",
                 "compress with --method kp, hkp or prune instead, or multiply U V out into a dense matrix")
    chk.require(kind in ("kp", "hkp", "dense"), f"{where} has kind {_show(kind)}, not 'kp', 'hkp' or 'dense'",
                f"see {DOC}")
    if kind == "dense":
        return {"kind": "dense", "rows": rows, "cols": cols}
    chk.require(not spec.get("pad"), f"{where} has padded Kronecker factors, which kpgen cannot emit",
                "choose factor shapes whose products are exactly the matrix (kpgen plan lists them)")
    pairs = _dims(chk, spec.get("factors"), f"{where}.factors")
    top = 0
    if kind == "hkp":
        top = spec.get("dense_rows")
        chk.require(_is_int(top) and 0 <= top < rows, f"{where}.dense_rows is {_show(top)}, not an int in 0..{rows - 1}",
                    f"see {DOC}")
    kr, kc = math.prod(p[0] for p in pairs), math.prod(p[1] for p in pairs)
    shape = " (x) ".join(f"({m}x{n})" for m, n in pairs)
    chk.require(
        kr == rows - top and kc == cols,
        f"{where} factors {shape} make a {kr}x{kc} matrix but the layer needs {rows - top}x{cols}"
        + (f" below {top} dense rows" if top else ""),
        f"choose factors whose row sizes multiply to {rows - top} and column sizes to {cols}",
    )
    return {"kind": kind, "factors": pairs, "dense_rows": top, "rows": rows, "cols": cols}


def _check_variant_arch(chk: _Checker, arch: dict) -> dict:
    """cell, bidirectional, method and per-layer wx_specs / wh_specs of a variant checkpoint."""
    missing = [k for k in ("cell", *ARCH_INT_KEYS, "wx_specs", "wh_specs") if k not in arch]
    chk.require(not missing, f"arch is missing key(s) {', '.join(missing)}", f"add them as documented in {DOC}")
    cell = arch["cell"]
    chk.require(isinstance(cell, str) and cell in GATES, f"arch.cell {_show(cell)} is not supported",
                f"use one of {', '.join(GATES)}")
    method = arch.get("method", "kp")
    chk.require(isinstance(method, str) and method in METHODS, f"arch.method {_show(method)} is not known",
                f"use one of {', '.join(METHODS)}")
    bidir = arch.get("bidirectional", False)
    chk.require(isinstance(bidir, bool), f"arch.bidirectional is {_show(bidir)}, not true or false", f"see {DOC}")
    for k in ARCH_INT_KEYS:
        chk.require(_is_int(arch[k]) and arch[k] > 0, f"arch.{k} is {_show(arch[k])}, not a positive int", f"see {DOC}")
    n_layers, hid = arch["num_layers"], arch["hidden_size"]
    dirs = 2 if bidir else 1
    specs = {"wx": [], "wh": []}
    for name in ("wx", "wh"):
        fs = arch[f"{name}_specs"]
        chk.require(isinstance(fs, (list, tuple)) and len(fs) == n_layers,
                    f"arch.{name}_specs must list one matrix spec per layer ({n_layers})", f"see {DOC}")
        for k, spec in enumerate(fs):
            cols = hid if name == "wh" else (arch["input_size"] if k == 0 else dirs * hid)
            specs[name].append(_check_spec(chk, spec, f"arch.{name}_specs[{k}]", GATES[cell] * hid, cols))
    return {"cell": cell, "bidirectional": bidir, "specs": specs}


def _matrix_shapes(prefix: str, spec: dict) -> dict[str, tuple[int, ...]]:
    """state_dict names and shapes of one matrix (kpgen.train.nn.matrix)."""
    if spec["kind"] == "dense":
        return {f"{prefix}.weight": (spec["rows"], spec["cols"])}
    kp = prefix if spec["kind"] == "kp" else f"{prefix}.kp"
    pairs = spec["factors"]
    if len(pairs) == 2:
        out = {f"{kp}.a": pairs[0], f"{kp}.b": pairs[1]}
    else:
        out = {f"{kp}.factors.{j}": p for j, p in enumerate(pairs)}
    if spec["kind"] == "hkp":
        out[f"{prefix}.dense_weight"] = (spec["dense_rows"], spec["cols"])
    return out


def variant_shapes(arch: dict, v: dict) -> dict[str, tuple[int, ...]]:
    """state_dict key -> shape for a validated variant arch."""
    hid, n_cls = arch["hidden_size"], arch["num_classes"]
    dirs = ("fwd.", "bwd.") if v["bidirectional"] else ("",)
    shapes: dict[str, tuple[int, ...]] = {}
    for k in range(arch["num_layers"]):
        for d in dirs:
            for name in ("wx", "wh"):
                shapes.update(_matrix_shapes(f"layers.{k}.{d}{name}", v["specs"][name][k]))
            for t, mult in CELL_TENSORS[v["cell"]].items():
                shapes[f"layers.{k}.{d}{t}"] = (mult * hid,) if mult else ()
    shapes["head.weight"] = (n_cls, len(dirs) * hid)
    shapes["head.bias"] = (n_cls,)
    return shapes


def _matrix_ir(w: dict[str, np.ndarray], prefix: str, spec: dict) -> KPMatrixF:
    if spec["kind"] == "dense":
        return KPMatrixF(w[f"{prefix}.weight"], np.ones((1, 1)))
    kp = prefix if spec["kind"] == "kp" else f"{prefix}.kp"
    if len(spec["factors"]) == 2:
        fs = [w[f"{kp}.a"], w[f"{kp}.b"]]
    else:
        fs = [w[f"{kp}.factors.{j}"] for j in range(len(spec["factors"]))]
    top = w[f"{prefix}.dense_weight"] if spec["kind"] == "hkp" and spec["dense_rows"] > 0 else None
    return KPMatrixF(fs[0], fs[1], tuple(fs[2:]), top)


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def _variant_layer(w: dict[str, np.ndarray], p: str, cell: str, wx: KPMatrixF, wh: KPMatrixF, i: int, h: int):
    if cell == "lstm":
        return LSTMLayerF(i, h, wx, wh, w[f"{p}bias"])
    if cell == "gru":
        return GRULayerF(i, h, wx, wh, w[f"{p}bias"], w[f"{p}bias_hn"])
    if cell == "fastrnn":
        return FastRNNLayerF(i, h, wx, wh, w[f"{p}bias"], _sigmoid(float(w[f"{p}alpha"])), _sigmoid(float(w[f"{p}beta"])))
    return FastGRNNLayerF(i, h, wx, wh, w[f"{p}bias_z"], w[f"{p}bias_h"],
                          _sigmoid(float(w[f"{p}zeta"])), _sigmoid(float(w[f"{p}nu"])))


def _variant_layers(arch: dict, v: dict, w: dict[str, np.ndarray]) -> tuple:
    hid = arch["hidden_size"]
    dirs = ("fwd.", "bwd.") if v["bidirectional"] else ("",)
    layers = []
    for k in range(arch["num_layers"]):
        i = arch["input_size"] if k == 0 else len(dirs) * hid
        subs = []
        for d in dirs:
            p = f"layers.{k}.{d}"
            wx = _matrix_ir(w, p + "wx", v["specs"]["wx"][k])
            wh = _matrix_ir(w, p + "wh", v["specs"]["wh"][k])
            subs.append(_variant_layer(w, p, v["cell"], wx, wh, i, hid))
        layers.append(BiLayerF(*subs) if len(subs) == 2 else subs[0])
    return tuple(layers)


def _check_arch(chk: _Checker, arch: dict) -> dict:
    """Sizes and per-layer factor shapes; every product must match its matrix."""
    missing = [k for k in ("cell", *ARCH_INT_KEYS, "wx_factors", "wh_factors") if k not in arch]
    chk.require(not missing, f"arch is missing key(s) {', '.join(missing)}", f"add them as documented in {DOC}")
    chk.require(
        isinstance(arch["cell"], str) and arch["cell"] == "lstm",
        f"arch.cell {_show(arch['cell'])} is not supported",
        "use cell 'lstm' (other cells are saved in the arch.method form of docs/checkpoint.md, as kpgen train does)",
    )
    for k in ARCH_INT_KEYS:
        chk.require(_is_int(arch[k]) and arch[k] > 0, f"arch.{k} is {_show(arch[k])}, not a positive int", f"see {DOC}")
    n_layers, hid = arch["num_layers"], arch["hidden_size"]
    out = {"wx": [], "wh": []}
    for name in ("wx", "wh"):
        fs = arch[f"{name}_factors"]
        chk.require(
            isinstance(fs, (list, tuple)) and len(fs) == n_layers,
            f"arch.{name}_factors must list one [[m1, n1], [m2, n2]] per layer ({n_layers})",
            f"see {DOC}",
        )
        for k, f in enumerate(fs):
            (m1, n1), (m2, n2) = _factor_pair(chk, f, f"arch.{name}_factors[{k}]")
            rows, cols = 4 * hid, (arch["input_size"] if name == "wx" and k == 0 else hid)
            chk.require(
                m1 * m2 == rows and n1 * n2 == cols,
                f"layer {k} {name} factors ({m1}x{n1}) (x) ({m2}x{n2}) make a {m1 * m2}x{n1 * n2} matrix "
                f"but the layer needs {rows}x{cols}",
                f"choose factors with m1*m2 = {rows} and n1*n2 = {cols}",
            )
            out[name].append(((m1, n1), (m2, n2)))
    return out


def expected_shapes(arch: dict, factors: dict) -> dict[str, tuple[int, ...]]:
    """state_dict key -> shape, for a validated arch."""
    hid, n_cls = arch["hidden_size"], arch["num_classes"]
    shapes: dict[str, tuple[int, ...]] = {}
    for k in range(arch["num_layers"]):
        for name in ("wx", "wh"):
            a, b = factors[name][k]
            shapes[f"layers.{k}.{name}.a"] = a
            shapes[f"layers.{k}.{name}.b"] = b
        shapes[f"layers.{k}.bias"] = (4 * hid,)
    shapes["head.weight"] = (n_cls, hid)
    shapes["head.bias"] = (n_cls,)
    return shapes


def _check_tensors(chk: _Checker, sd: dict, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Exactly the expected tensors, with the expected shapes, floating point and finite."""
    import torch

    missing = [k for k in shapes if k not in sd]
    chk.require(not missing, f"state_dict is missing tensor(s) {', '.join(missing)}", f"names and shapes are in {DOC}")
    extra = sorted(" ".join(str(k).split())[:40] for k in sd if k not in shapes)
    if len(extra) > 5:
        extra = extra[:5] + [f"and {len(extra) - 5} more"]
    chk.require(
        not extra,
        f"state_dict has unexpected tensor(s) {', '.join(extra)}",
        f"remove them; each layer has exactly the tensors listed in {DOC}",
    )
    arrays = {}
    for key, shape in shapes.items():
        t = sd[key]
        where = f"state_dict[{key!r}]"
        chk.require(isinstance(t, torch.Tensor), f"{where} is a {type(t).__name__}, not a tensor", f"see {DOC}")
        if t.is_nested or t.layout != torch.strided or t.device.type != "cpu":
            kind = "nested" if t.is_nested else str(t.layout).replace("torch.", "")
            what = f"a {kind} tensor" if t.is_nested or t.layout != torch.strided else f"on device {t.device.type}"
            chk.fail(f"{where} is {what}, not a dense CPU tensor", "save dense weights with .detach().cpu()")
        chk.require(
            tuple(t.shape) == tuple(shape),
            f"{where} has shape {tuple(t.shape)}, expected {tuple(shape)} from arch",
            "make arch match the trained model",
        )
        chk.require(t.is_floating_point(), f"{where} has dtype {t.dtype}, not floating point", "save float weights")
        a = t.detach().to(torch.float64).numpy().copy()
        chk.require(bool(np.isfinite(a).all()), f"{where} contains NaN or inf", "retrain the model or fix the weights")
        arrays[key] = a
    return arrays


def _check_calibration(chk: _Checker, cal: dict, n_layers: int, cell: str = "lstm") -> Calibration:
    """input_absmax and cell_absmax (gate_absmax optional), positive and finite. Cells other than the LSTM
    record state_absmax (max |h|) instead of cell_absmax; it is kept in Calibration.cell_absmax."""
    fix = f"record them on training data as in {DOC}"
    if cell != "lstm" and "cell_absmax" not in cal and "state_absmax" in cal:
        cal = {**cal, "cell_absmax": cal["state_absmax"]}

    def positive(v: object) -> bool:
        return _is_number(v) and math.isfinite(v) and v > 0

    for key in ("input_absmax", "cell_absmax"):
        chk.require(key in cal, f"calibration is missing {key}", fix)
    x_max = _scalar(cal["input_absmax"])
    chk.require(positive(x_max), f"calibration.input_absmax is {_show(x_max)}, not a positive number", fix)
    per_layer = {}
    for key in ("cell_absmax", "gate_absmax"):
        v = cal.get(key)
        if key == "gate_absmax" and (v is None or (isinstance(v, (list, tuple)) and not v)):
            per_layer[key] = ()
            continue
        vals = [_scalar(x) for x in v] if isinstance(v, (list, tuple)) else None
        chk.require(
            vals is not None and len(vals) == n_layers and all(positive(x) for x in vals),
            f"calibration.{key} is {_show(v)}, not {n_layers} positive number(s), one per layer",
            fix,
        )
        per_layer[key] = tuple(float(x) for x in vals)
    return Calibration(float(x_max), per_layer["cell_absmax"], per_layer["gate_absmax"])


def checkpoint_to_ir(raw: object, name: str = "<checkpoint>") -> ModelF:
    """Validate a checkpoint dict (as torch.load returns it) and convert it to the float IR."""
    chk = _Checker(name)
    ck = _check_top(chk, raw)
    arch = ck["arch"]
    if _is_variant(arch):
        v = _check_variant_arch(chk, arch)
        w = _check_tensors(chk, ck["state_dict"], variant_shapes(arch, v))
        return ModelF(
            input_size=arch["input_size"],
            num_classes=arch["num_classes"],
            layers=_variant_layers(arch, v, w),
            head=DenseF(w["head.weight"], w["head.bias"]),
            calibration=_check_calibration(chk, ck["calibration"], arch["num_layers"], v["cell"]),
            meta={**dict(ck.get("meta", {})), "method": arch.get("method", "kp")},
        )
    factors = _check_arch(chk, arch)
    w = _check_tensors(chk, ck["state_dict"], expected_shapes(arch, factors))
    calibration = _check_calibration(chk, ck["calibration"], arch["num_layers"])
    hid = arch["hidden_size"]
    layers = tuple(
        LSTMLayerF(
            input_size=arch["input_size"] if k == 0 else hid,
            hidden_size=hid,
            wx=KPMatrixF(w[f"layers.{k}.wx.a"], w[f"layers.{k}.wx.b"]),
            wh=KPMatrixF(w[f"layers.{k}.wh.a"], w[f"layers.{k}.wh.b"]),
            bias=w[f"layers.{k}.bias"],
        )
        for k in range(arch["num_layers"])
    )
    return ModelF(
        input_size=arch["input_size"],
        num_classes=arch["num_classes"],
        layers=layers,
        head=DenseF(w["head.weight"], w["head.bias"]),
        calibration=calibration,
        meta=dict(ck.get("meta", {})),
    )


def load_checkpoint(path: str | os.PathLike) -> ModelF:
    """Read, validate and convert a kpgen checkpoint file to a float ModelF (numpy float64)."""
    return checkpoint_to_ir(read_raw(path), str(path))
