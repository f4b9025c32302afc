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
import struct
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import NoReturn, TypeGuard

import numpy as np

from kpgen import KpgenError, cells
from kpgen.cells.lstm import LSTMLayerF
from kpgen.frontend.userdata import UserData, compare_logits, load_user_data
from kpgen.ir import POOLS, BiLayerF, Calibration, DenseF, KPMatrixF, LayerF, ModelF

FORMAT = "kpgen-checkpoint"
SUPPORTED_VERSIONS = (1,)
DOC = "docs/checkpoint.md"
TOP_KEYS = ("format", "version", "arch", "state_dict", "calibration")
ARCH_INT_KEYS = ("input_size", "hidden_size", "num_layers", "num_classes")
METHODS = ("kp", "hkp", "prune", "small", "dense", "lowrank", "mixed")
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


# Bounds on what a checkpoint may declare, checked before torch allocates or builds anything. The largest board
# has 4 MiB of flash, so a model kpgen can emit holds at most a few million int8 parameters: these leave room.
MAX_NESTING = 100  # containers inside containers in the pickle (a kpgen checkpoint needs fewer than 10)
MAX_PICKLE_BYTES = 8 << 20  # data.pkl (the structure, not the tensor data; a kpgen checkpoint's is a few KB)
MAX_CHECKPOINT_BYTES = 1 << 29  # all tensor data and zip members together, as declared (512 MiB)
MAX_TENSOR_ELEMENTS = 1 << 25  # all tensors' elements together, as their shapes declare them
MAX_DENSE_PARAMS = 1 << 27  # the uncompressed matrices an arch describes (what a dense model would allocate)
# Callables a torch.save pickle calls (REDUCE); a call of anything else, e.g. os.system, is a pickle that runs code.
_SAFE_CALL_MODULES = ("torch", "collections", "_codecs", "numpy", "copyreg")
_SAFE_BUILTINS = ("builtins.set", "builtins.frozenset", "builtins.bytearray", "builtins.slice", "builtins.complex",
                  "__builtin__.set", "__builtin__.frozenset")
_ITEM_SIZE_BOUND = 16  # bytes per element of any torch storage type (complex128 is the widest)


def _sized(chk: _Checker, what: str, size: int, limit: int) -> None:
    chk.require(size <= limit, f"{what} declares {size:,} bytes, more than kpgen reads ({limit:,})",
                "this is not a checkpoint of a model that fits a microcontroller: check the file")


class _Bounded:
    """A read-only stream that never reads past `size` bytes from where it starts: a string opcode claiming
    gigabytes makes pickletools read only what is there (and fail), not allocate what is claimed."""

    def __init__(self, f, size: int):
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        data = self.f.readline(self.left)
        self.left -= len(data)
        return data

    def tell(self) -> int:
        return self.f.tell()


def _scan_pickle(chk: _Checker, stream, storages: dict[object, int]) -> None:
    """Walk one pickle's opcodes without running it: refuse nesting deeper than MAX_NESTING, calls of anything
    but torch's rebuild functions, and record each storage's declared size (key -> bytes) in `storages`.

    The stack is simulated as (depth, value) pairs: value is the int, str, global name or small tuple an op pushed.
    A stream pickletools cannot parse is left to torch.load, which reports it as damaged.
    """
    import pickletools

    mark = object()
    stack: list = []
    memo: dict = {}
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            if name == "MARK":
                stack.append(mark)
                continue
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if stack:
                    memo[arg] = stack[-1]
                continue
            if name == "MEMOIZE":
                if stack:
                    memo[len(memo)] = stack[-1]
                continue
            if name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, (0, None)))
                continue
            if name == "DUP":
                stack.append(stack[-1] if stack else (0, None))
                continue
            popped: list = []
            before = list(op.stack_before)
            while before:
                want = before.pop()
                if want is pickletools.stackslice:
                    continue
                if want is pickletools.markobject:
                    while stack and stack[-1] is not mark:
                        popped.insert(0, stack.pop())
                    if stack:
                        stack.pop()
                    continue
                if stack and stack[-1] is not mark:
                    popped.insert(0, stack.pop())
            items = [p for p in popped if p is not mark]
            depth = 1 + max((d for d, _ in items), default=-1) if items else 0
            chk.require(depth <= MAX_NESTING, f"nests containers more than {MAX_NESTING} deep",
                        f"a kpgen checkpoint is a flat dict of tensors and numbers: save it as in {DOC}")
            value: object = None
            if name in ("GLOBAL", "INST") and isinstance(arg, str):
                value = ".".join(arg.split(" ", 1))
            elif name == "STACK_GLOBAL" and len(items) == 2 and all(isinstance(v, str) for _, v in items):
                value = f"{items[0][1]}.{items[1][1]}"
            elif name in ("REDUCE", "OBJ", "INST") and (items or name == "INST"):
                func = value if name == "INST" else items[0][1]
                _check_call(chk, func)
            elif isinstance(arg, (int, str)) and not isinstance(arg, bool) and not op.stack_before:
                value = arg
            elif name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3") and len(items) <= 8:
                value = tuple(v for _, v in items)
            elif name in ("PERSID", "BINPERSID"):
                _storage_size(chk, items[-1][1] if items else None, storages)
            for want in op.stack_after:
                stack.append(mark if want is pickletools.markobject else (depth, value))
    except (ValueError, EOFError, IndexError, OverflowError, struct.error):
        return  # not a pickle pickletools can read: torch.load will say the file is damaged


def _check_call(chk: _Checker, func: object) -> None:
    """A REDUCE-like op calls func when unpickled: only torch's own rebuild helpers and plain containers may."""
    if not isinstance(func, str):
        return  # a computed callable: torch's weights_only unpickler refuses what it does not know
    if func.split(".", 1)[0] in _SAFE_CALL_MODULES or func in _SAFE_BUILTINS:
        return
    chk.fail(f"is a pickle that would run code when loaded (it calls {_show(func)}): refused",
             f"kpgen loads only data; save the checkpoint dict of tensors with torch.save as in {DOC}")


def _storage_size(chk: _Checker, pid: object, storages: dict[object, int]) -> None:
    """A torch storage reference ('storage', type, key, location, numel[, view]): its declared bytes."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and _is_int(pid[4]) and pid[4] >= 0):
        chk.fail("refers to tensor data in a way torch.save does not write", f"save it with torch.save as in {DOC}")
    storages[pid[2]] = max(storages.get(pid[2], 0), pid[4] * _ITEM_SIZE_BOUND)
    _sized(chk, "its tensor data", sum(storages.values()), MAX_CHECKPOINT_BYTES)


def _refuse_torchscript(chk: _Checker, p: Path) -> None:
    """A TorchScript archive (torch.jit.save: compiled code beside the weights) is named as such, with the fix."""
    try:
        with zipfile.ZipFile(p) as zf:
            names = [i.filename for i in zf.infolist()[:10000]]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, NotImplementedError, EOFError):
        return
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        chk.fail("is a TorchScript archive (torch.jit.save), which holds code kpgen does not run",
                 "save the weights instead: torch.save(model.state_dict(), 'model_sd.pt'), or export the model "
                 "to ONNX (torch.onnx.export) (docs/byom.md)")


def _guard_file(chk: _Checker, p: Path) -> None:
    """Before torch.load: bounded zip members and pickle size, no deep nesting, no code, bounded storages."""
    storages: dict[object, int] = {}
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as zf:
                infos = zf.infolist()
                _sized(chk, "its zip archive", sum(i.file_size for i in infos), MAX_CHECKPOINT_BYTES)
                pkls = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
                for info in pkls[:1]:
                    _sized(chk, f"its {info.filename}", info.file_size, MAX_PICKLE_BYTES)
                    with zf.open(info) as stream:
                        _scan_pickle(chk, _Bounded(stream, info.file_size), storages)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, OSError,
                EOFError, ValueError):
            return  # torch.load reports a damaged archive
        return
    size = p.stat().st_size
    with open(p, "rb") as f:  # a plain pickle, or torch's legacy format (five pickles, then the tensor data)
        for _ in range(5):
            start = f.tell()
            _scan_pickle(chk, _Bounded(f, size - start), storages)
            if f.tell() == start:
                break


def _plain(chk: _Checker, obj: object, where: str) -> object:
    """The loaded object with every dict made a plain dict (an OrderedDict's instance attributes, such as a
    state_dict's _metadata or a planted `get`, are dropped) and tensors refused if they carry Python attributes,
    which could shadow tensor methods. Depth is bounded by the pickle scan (MAX_NESTING)."""
    import torch

    if isinstance(obj, torch.Tensor):
        attrs = object.__getattribute__(obj, "__dict__")
        chk.require(not attrs, f"{where} is a tensor carrying Python attributes ({_show(sorted(map(str, attrs)))})",
                    "save plain tensors (e.g. t.detach().clone()), not tensors with attributes set on them")
        return obj
    if isinstance(obj, dict):
        return {k: _plain(chk, v, f"{where}[{_show(k)}]") for k, v in dict.items(obj)}
    if type(obj) is list or type(obj) is tuple:
        items = [_plain(chk, v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if type(obj) is list else tuple(items)
    return obj


def _declared_elements(t) -> int:
    """Elements a tensor's shape declares (a stride-0 view declares many and stores one)."""
    try:
        return math.prod(int(s) for s in t.shape)
    except (RuntimeError, TypeError, ValueError):  # nested tensors have no single shape
        return int(t.numel())


def _check_declared(chk: _Checker, raw: object) -> None:
    """After torch.load (tensors are still views of the file's data): refuse element counts and an arch whose
    sizes would make kpgen allocate more than any microcontroller model needs, before anything is copied."""
    import torch

    if not isinstance(raw, dict):
        return
    arch = raw.get("arch")
    declared = [arch.get(k) for k in ARCH_INT_KEYS] if isinstance(arch, dict) else []
    sizes = [v for v in declared if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    if isinstance(arch, dict) and len(sizes) == len(ARCH_INT_KEYS):  # else the validators name what is wrong
        inputs, hid, layers, classes = sizes
        gates = 4  # the most any cell has (LSTM): a bound, whatever arch.cell says
        dirs = 2 if arch.get("bidirectional") is True else 1
        dense = dirs * gates * hid * (inputs + hid) + (layers - 1) * dirs * gates * hid * (dirs * hid + hid)
        dense += classes * dirs * hid
        chk.require(dense <= MAX_DENSE_PARAMS,
                    f"arch declares a model of {dense:,} uncompressed parameters (input_size {inputs}, "
                    f"hidden_size {hid}, {layers} layer(s)), more than kpgen handles ({MAX_DENSE_PARAMS:,})",
                    "check arch: no microcontroller holds such a model")
    tensors = [v for v in raw.values() if isinstance(v, torch.Tensor)]
    sd = raw.get("state_dict")
    if isinstance(sd, dict):
        tensors += [v for v in sd.values() if isinstance(v, torch.Tensor)]
    total = sum(_declared_elements(t) for t in tensors)
    chk.require(total <= MAX_TENSOR_ELEMENTS,
                f"its tensors declare {total:,} elements, more than kpgen handles ({MAX_TENSOR_ELEMENTS:,})",
                "this is not a model that fits a microcontroller: check the file")


def read_raw(path: str | os.PathLike) -> object:
    """torch.load(weights_only=True) with every failure turned into a one-line KpgenError."""
    import torch

    chk = _Checker(str(path))
    p = Path(path)
    chk.require(p.exists(), "no such file", "check the path, or train one with `kpgen train -o model.pt`")
    chk.require(p.is_file(), "is not a regular file", "give the path of a .pt checkpoint file")
    chk.require(p.stat().st_size > 0, "is empty (0 bytes)", "train or copy the checkpoint again")
    _refuse_torchscript(chk, p)
    try:
        _guard_file(chk, p)
    except PermissionError as e:
        chk.fail(f"cannot be read ({e.strerror or e})", "check the file's permissions")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        chk.fail(*_unpickling_problem(e))
    except PermissionError as e:
        chk.fail(f"cannot be read ({e.strerror or e})", "check the file's permissions")
    except DAMAGED_FILE_ERRORS as e:
        chk.fail(
            f"is not a torch checkpoint, or is truncated or corrupt ({_first_line(e)})",
            "re-save it with torch.save or copy it again",
        )
    raw = _plain(chk, raw, "checkpoint")
    _check_declared(chk, raw)
    return raw


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
        except Exception:
            return f"a {type(v).__name__}"
    text = " ".join(_REPR.repr(v).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> TypeGuard[int | float]:
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
    if not isinstance(raw, dict):
        chk.fail(f"holds a {type(raw).__name__}, not a dict", f"save the checkpoint dict described in {DOC}")
    if "format" not in raw and raw and all(hasattr(v, "shape") for v in raw.values()):
        chk.fail("is a bare state_dict, not a kpgen checkpoint",
                 "give your data with --data FILE.npz to calibrate it (docs/byom.md), or wrap it with arch and "
                 f"calibration as in {DOC}")
    chk.require("format" in raw, "has no 'format' key, so it is not a kpgen checkpoint", f"see {DOC}")
    chk.require(
        isinstance(raw.get("format"), str) and raw.get("format") == FORMAT,
        f"format is {_show(raw.get('format'))}, expected {FORMAT!r}",
        f"save the checkpoint dict described in {DOC}",
    )
    version = raw.get("version")
    chk.require(
        _is_int(version) and version in SUPPORTED_VERSIONS,
        f"checkpoint version {_show(version)} is not supported "
        f"(this kpgen reads {', '.join(map(str, SUPPORTED_VERSIONS))})",
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


def _int_pairs(value: object) -> list[tuple[int, int]] | None:
    """value as a list of (m, n) pairs of positive ints, or None if it is not one."""
    if not isinstance(value, Iterable):
        return None
    try:
        pairs = [(m, n) for m, n in value]
    except (TypeError, ValueError):
        return None
    return pairs if all(_is_int(v) and v > 0 for p in pairs for v in p) else None


def _factor_pair(chk: _Checker, value: object, where: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """[[m1, n1], [m2, n2]] with positive ints."""
    pairs = _int_pairs(value)
    if pairs is None or len(pairs) != 2:
        chk.fail(f"{where} is {_show(value)}, not [[m1, n1], [m2, n2]] with positive ints", f"see {DOC}")
    return pairs[0], pairs[1]


def _is_variant(arch: dict) -> bool:
    """True for the training-side form (arch.method / per-layer matrix specs; docs/checkpoint.md)."""
    return "method" in arch or "wx_specs" in arch


def _dims(chk: _Checker, value: object, where: str) -> list[tuple[int, int]]:
    """A factor list [[m1, n1], [m2, n2], ...] of at least two positive int pairs."""
    pairs = _int_pairs(value)
    if pairs is None or len(pairs) < 2:
        chk.fail(f"{where} is {_show(value)}, not a list [[m1, n1], [m2, n2], ...] of positive ints", f"see {DOC}")
    return pairs


def _check_spec(chk: _Checker, spec: object, where: str, rows: int, cols: int) -> dict:
    """One matrix spec of a variant checkpoint, checked against the matrix it must make (rows x cols)."""
    if spec == "dense":
        spec = {"kind": "dense"}
    elif isinstance(spec, (list, tuple)):
        spec = {"kind": "kp", "factors": spec}
    if not (isinstance(spec, dict) and "kind" in spec):
        chk.fail(f"{where} is {_show(spec)}, not a matrix spec", f"see {DOC}")
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
        dense_rows = spec.get("dense_rows")
        if not (_is_int(dense_rows) and 0 <= dense_rows < rows):
            chk.fail(f"{where}.dense_rows is {_show(dense_rows)}, not an int in 0..{rows - 1}", f"see {DOC}")
        top = dense_rows
    groups = spec.get("top_groups", 1) if kind == "hkp" else 1
    if not (_is_int(groups) and groups >= 1 and rows % groups == 0 and top % groups == 0):
        chk.fail(f"{where}.top_groups is {_show(groups)}, not a positive int dividing both the {rows} rows and the "
                 f"{top} dense rows", f"use 1 (dense rows on top) or the cell's gate count; see {DOC}")
    kr, kc = math.prod(p[0] for p in pairs), math.prod(p[1] for p in pairs)
    shape = " (x) ".join(f"({m}x{n})" for m, n in pairs)
    chk.require(
        kr == rows - top and kc == cols,
        f"{where} factors {shape} make a {kr}x{kc} matrix but the layer needs {rows - top}x{cols}"
        + (f" below {top} dense rows" if top else ""),
        f"choose factors whose row sizes multiply to {rows - top} and column sizes to {cols}",
    )
    return {"kind": kind, "factors": pairs, "dense_rows": top, "top_groups": groups, "rows": rows, "cols": cols}


def _check_variant_arch(chk: _Checker, arch: dict) -> dict:
    """cell, bidirectional, method and per-layer wx_specs / wh_specs of a variant checkpoint."""
    missing = [k for k in ("cell", *ARCH_INT_KEYS, "wx_specs", "wh_specs") if k not in arch]
    chk.require(not missing, f"arch is missing key(s) {', '.join(missing)}", f"add them as documented in {DOC}")
    cell = arch["cell"]
    chk.require(isinstance(cell, str) and cell in cells.REGISTRY, f"arch.cell {_show(cell)} is not supported",
                f"use one of {', '.join(cells.NAMES)}")
    method = arch.get("method", "kp")
    chk.require(isinstance(method, str) and method in METHODS, f"arch.method {_show(method)} is not known",
                f"use one of {', '.join(METHODS)}")
    bidir = arch.get("bidirectional", False)
    chk.require(isinstance(bidir, bool), f"arch.bidirectional is {_show(bidir)}, not true or false", f"see {DOC}")
    for key in ARCH_INT_KEYS:
        chk.require(_is_int(arch[key]) and arch[key] > 0, f"arch.{key} is {_show(arch[key])}, not a positive int",
                    f"see {DOC}")
    n_layers, hid = arch["num_layers"], arch["hidden_size"]
    dirs = 2 if bidir else 1
    specs: dict[str, list[dict]] = {"wx": [], "wh": []}
    for name in ("wx", "wh"):
        fs = arch[f"{name}_specs"]
        chk.require(isinstance(fs, (list, tuple)) and len(fs) == n_layers,
                    f"arch.{name}_specs must list one matrix spec per layer ({n_layers})", f"see {DOC}")
        for k, spec in enumerate(fs):
            cols = hid if name == "wh" else (arch["input_size"] if k == 0 else dirs * hid)
            specs[name].append(_check_spec(chk, spec, f"arch.{name}_specs[{k}]", cells.get(cell).gates * hid, cols))
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
            for t, mult in cells.get(v["cell"]).tensors.items():
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
    return KPMatrixF(fs[0], fs[1], tuple(fs[2:]), top, spec.get("top_groups", 1) if top is not None else 1)


def _variant_layer(w: dict[str, np.ndarray], p: str, cell: str, wx: KPMatrixF, wh: KPMatrixF, i: int, h: int) -> LayerF:
    """One direction of one layer as float IR, from the cell's tensors under prefix p (Cell.from_tensors)."""
    return cells.get(cell).from_tensors(w, p, i, h, wx, wh)


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
    for key in ARCH_INT_KEYS:
        chk.require(_is_int(arch[key]) and arch[key] > 0, f"arch.{key} is {_show(arch[key])}, not a positive int",
                    f"see {DOC}")
    n_layers, hid = arch["num_layers"], arch["hidden_size"]
    out: dict[str, list] = {"wx": [], "wh": []}
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
        try:
            a = t.detach().to(torch.float64).numpy().copy()
        except (RuntimeError, NotImplementedError, TypeError):  # e.g. float4_e2m1fn_x2 has no conversion
            chk.fail(f"{where} has dtype {t.dtype}, which kpgen cannot read", "save float32 weights")
        chk.require(bool(np.isfinite(a).all()), f"{where} contains NaN or inf", "retrain the model or fix the weights")
        arrays[key] = a
    return arrays


def _check_calibration(chk: _Checker, cal: dict, n_layers: int, cell: str = "lstm") -> Calibration:
    """input_absmax and cell_absmax (gate_absmax optional), positive and finite. Cells other than the LSTM
    record state_absmax (max |h|) instead of cell_absmax; it is kept in Calibration.cell_absmax."""
    fix = f"record them on training data as in {DOC}"
    if cell != "lstm" and "cell_absmax" not in cal and "state_absmax" in cal:
        cal = {**cal, "cell_absmax": cal["state_absmax"]}

    def positive(v: object) -> TypeGuard[int | float]:
        try:
            return _is_number(v) and math.isfinite(float(v)) and v > 0
        except OverflowError:  # an int such as 2**1100 has no float
            return False

    chk.require("input_absmax" in cal, "calibration is missing input_absmax", fix)
    state_key = "cell_absmax" if cell == "lstm" else "state_absmax"  # max |c_t| (LSTM) or max |h_t| (other cells)
    chk.require("cell_absmax" in cal, f"calibration is missing {state_key}", fix)
    x_max = _scalar(cal["input_absmax"])
    if not positive(x_max):
        chk.fail(f"calibration.input_absmax is {_show(x_max)}, not a positive number", fix)
    per_layer: dict[str, tuple[float, ...]] = {}
    for key in ("cell_absmax", "gate_absmax"):
        v = cal.get(key)
        if key == "gate_absmax" and (v is None or (isinstance(v, (list, tuple)) and not v)):
            per_layer[key] = ()
            continue
        vals = [_scalar(x) for x in v] if isinstance(v, (list, tuple)) else []
        nums = [x for x in vals if positive(x)]
        chk.require(
            isinstance(v, (list, tuple)) and len(nums) == len(vals) == n_layers,
            f"calibration.{state_key if key == 'cell_absmax' else key} is {_show(v)}, not {n_layers} positive "
            "number(s), one per layer",
            fix,
        )
        per_layer[key] = tuple(float(x) for x in nums)
    return Calibration(float(x_max), per_layer["cell_absmax"], per_layer["gate_absmax"])


MAX_SEQ_LEN = 1 << 20
MAX_HEAD_HIDDEN = 1 << 12  # an MLP head's hidden width: far beyond any microcontroller head


def _check_meta(chk: _Checker, meta: dict) -> None:
    """The meta fields the emitter reads: seq_len sizes a bidirectional model's arena."""
    seq_len = meta.get("seq_len")
    chk.require(seq_len is None or (_is_int(seq_len) and 0 < seq_len <= MAX_SEQ_LEN),
                f"meta.seq_len is {_show(seq_len)}, not a sequence length from 1 to {MAX_SEQ_LEN:,}",
                "set it to the length of the training sequences, or leave it out")


def _check_head(chk: _Checker, arch: dict) -> tuple[str, int]:
    """arch.head (optional): the pool ("last", "mean" or "max"; default "last") and an MLP head's hidden_size
    (0: none, the default): docs/checkpoint.md."""
    head = arch.get("head", {})
    if head is None:
        head = {}
    chk.require(isinstance(head, dict), f"arch.head is {_show(head)}, not a dict", f"see {DOC}")
    unknown = sorted(str(k)[:20] for k in head if k not in ("pool", "hidden_size"))
    chk.require(not unknown, f"arch.head has unknown key(s) {', '.join(unknown)}",
                f"use pool and hidden_size as documented in {DOC}")
    pool = head.get("pool", "last")
    chk.require(isinstance(pool, str) and pool in POOLS, f"arch.head.pool is {_show(pool)}, not one of "
                f"{', '.join(POOLS)}", "say what the head reads: the last step, the mean or the max over time")
    hidden = head.get("hidden_size", 0)
    chk.require(_is_int(hidden) and 0 <= hidden <= MAX_HEAD_HIDDEN,
                f"arch.head.hidden_size is {_show(hidden)}, not an int in 0..{MAX_HEAD_HIDDEN}",
                "give the MLP head's hidden width, or 0 for a single Linear head")
    return pool, hidden


def _head_shapes(shapes: dict[str, tuple[int, ...]], hidden: int) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes with an MLP head: head.hidden.weight (K, F), head.hidden.bias (K,), head.weight (C, K)."""
    if hidden:
        n_cls, feat = shapes["head.weight"]
        shapes.update({"head.hidden.weight": (hidden, feat), "head.hidden.bias": (hidden,),
                       "head.weight": (n_cls, hidden)})
    return shapes


def _apply_head(chk: _Checker, ck: dict, head: tuple[str, int], model: ModelF, w: dict[str, np.ndarray]) -> ModelF:
    """The model with its checked head (pool, hidden layer) and the hidden layer's calibrated range."""
    pool, hidden = head
    if not hidden:
        return replace(model, pool=pool)
    h_max = _scalar(ck["calibration"].get("hidden_absmax"))
    ok = _is_number(h_max) and math.isfinite(float(h_max)) and h_max > 0
    chk.require(ok, f"calibration.hidden_absmax is {_show(h_max)}, not a positive number",
                f"record the MLP head's largest ReLU output on training data ({DOC})")
    cal = replace(model.calibration, hidden_absmax=float(h_max))  # type: ignore[arg-type]
    return replace(model, pool=pool, hidden=DenseF(w["head.hidden.weight"], w["head.hidden.bias"]), calibration=cal)


def checkpoint_to_ir(raw: object, name: str = "<checkpoint>") -> ModelF:
    """Validate a checkpoint dict (as torch.load returns it) and convert it to the float IR."""
    chk = _Checker(name)
    ck = _check_top(chk, raw)
    _check_meta(chk, ck.get("meta", {}))
    arch = ck["arch"]
    head = _check_head(chk, arch)
    if _is_variant(arch):
        v = _check_variant_arch(chk, arch)
        w = _check_tensors(chk, ck["state_dict"], _head_shapes(variant_shapes(arch, v), head[1]))
        return _apply_head(chk, ck, head, ModelF(
            input_size=arch["input_size"],
            num_classes=arch["num_classes"],
            layers=_variant_layers(arch, v, w),
            head=DenseF(w["head.weight"], w["head.bias"]),
            calibration=_check_calibration(chk, ck["calibration"], arch["num_layers"], v["cell"]),
            meta={**dict(ck.get("meta", {})), "method": arch.get("method", "kp")},
        ), w)
    factors = _check_arch(chk, arch)
    w = _check_tensors(chk, ck["state_dict"], _head_shapes(expected_shapes(arch, factors), head[1]))
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
    return _apply_head(chk, ck, head, ModelF(
        input_size=arch["input_size"],
        num_classes=arch["num_classes"],
        layers=layers,
        head=DenseF(w["head.weight"], w["head.bias"]),
        calibration=calibration,
        meta=dict(ck.get("meta", {})),
    ), w)


def load_checkpoint(path: str | os.PathLike) -> ModelF:
    """Read, validate and convert a kpgen checkpoint file to a float ModelF (numpy float64)."""
    return checkpoint_to_ir(read_raw(path), str(path))


def state_dict_to_ir(raw: object, name: str, data: str | os.PathLike) -> tuple[ModelF, UserData]:
    """A plain PyTorch state dict (nn.LSTM / nn.GRU / nn.RNN + one nn.Linear, docs/byom.md) as float IR, its
    ranges (input, every step's |c_t| or |h_t|, gate pre-activations) measured by kpgen's float model on the
    user's data. When the data has logits, kpgen's reading must reproduce them (userdata.compare_logits), or
    KpgenError names the likely cause: never a model read as something it is not."""
    import torch

    from kpgen.train.compress import pick_candidate, torch_candidates
    from kpgen.train.loop import calibrate, make_checkpoint

    cands = torch_candidates(raw, name)
    user = load_user_data(data, input_size=cands[0].input_size, num_classes=cands[0].num_classes,
                          need_labels=False)
    model = pick_candidate(cands, name, user)
    if not np.any(user.x):
        _Checker(str(data)).fail("x is zero everywhere, so it gives no input range to calibrate the model on",
                                 "give the data the model was trained on")
    calibration = calibrate(model, torch.from_numpy(user.x))
    meta = {"seq_len": int(user.x.shape[1]), "data_file": user.source, "source": "torch state dict"}
    ir = checkpoint_to_ir(make_checkpoint(model, calibration, meta, method="dense"), name)
    if user.logits is not None:  # the float IR itself (what is quantized and emitted) against the logits, too
        from kpgen.reference.floatmodel import float_forward
        from kpgen.train.compress import mismatch_message

        n = min(len(user.x), 2000)
        check = compare_logits(float_forward(ir, user.x[:n]), user.logits[:n])
        if not check.ok:
            raise KpgenError(mismatch_message(name, user.source, check, n, model.bidirectional))
    return ir, user


def load_model(path: str | os.PathLike, data: str | os.PathLike | None = None) -> ModelF:
    """Any model file kpgen emits, as float IR: a kpgen checkpoint (docs/checkpoint.md), or a plain PyTorch state
    dict calibrated on `data` (docs/byom.md; state_dict_to_ir), or an ONNX graph calibrated on `data`
    (kpgen.frontend.onnx), or a torch.export program (.pt2) calibrated on `data` (kpgen.frontend.pt2)."""
    from kpgen.frontend import onnx as onnx_front
    from kpgen.frontend import pt2 as pt2_front

    if onnx_front.is_onnx(path):
        return onnx_front.onnx_to_ir(path, data)
    if pt2_front.is_pt2(path):
        return pt2_front.pt2_to_ir(path, data)
    raw = read_raw(path)
    if data is None or (isinstance(raw, dict) and "format" in raw):  # without data: the checkpoint's own messages
        return checkpoint_to_ir(raw, str(path))
    return state_dict_to_ir(raw, str(path), data)[0]
