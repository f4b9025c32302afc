"""The user's own data: an .npz (x, y, optional lengths and logits) or a CSV, read safely and checked.

The format (docs/byom.md):
- npz: `x` float [samples, steps, features]; `y` int labels [samples]; optional `lengths` int [samples] (each
  sequence's true length; the data are its LAST `lengths[i]` steps, zeros before: left-padded, because kpgen's
  models read the last step); optional `logits` float [samples, classes], the user's own model's outputs for x,
  which kpgen compares with its reading of the model before it emits anything (compare_logits).
- CSV: a header row, then one row per time step: `sample,step,x0,...,x<F-1>` and optionally `y` (the sample's
  label, on every row) and `logit0,...,logit<C-1>` (on every row). Steps of a sample are 0, 1, 2, ... in any
  row order; samples of different lengths are left-padded with zeros and their lengths kept.

Nothing here imports torch. Arrays are read with their headers checked before their data (no pickles: an
object array is refused), and every problem is one KpgenError line naming the file, the problem and the fix.
"""

from __future__ import annotations

import csv
import math
import os
import stat
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from kpgen import KpgenError, escape

if TYPE_CHECKING:
    from kpgen.frontend.datasets import Split
    from kpgen.ir import ModelF

DOC = "docs/byom.md"
MAX_ELEMENTS = 1 << 26  # x: 64 Mi numbers (512 MB as float64), far beyond what a microcontroller model trains on
MAX_CSV_BYTES = 256 << 20  # a CSV is parsed in memory: 256 MiB of text is millions of time steps
KEYS = ("x", "y", "lengths", "logits")
# The tolerance of compare_logits: kpgen's float model (float64) against the user's logits (usually float32).
LOGIT_ATOL = 1e-3  # max |difference| allowed, scaled by (1 + max |user logit|)
LOGIT_AGREEMENT = 0.99  # fraction of argmax decisions that must agree (near-ties may flip in float32)


@dataclass(frozen=True)
class UserData:
    """x float32 [N, T, F]; y int64 [N] or None; lengths int64 [N] or None; logits float64 [N, C] or None."""

    x: np.ndarray
    y: np.ndarray | None
    lengths: np.ndarray | None
    logits: np.ndarray | None
    source: str

    def take(self, idx: np.ndarray) -> UserData:
        """The samples at idx (all arrays together)."""
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return replace(self, x=self.x[idx], y=pick(self.y), lengths=pick(self.lengths), logits=pick(self.logits))


def _fail(path: str, problem: str, fix: str) -> NoReturn:
    raise KpgenError(f"{escape(path)}: {problem}; {fix}")


def npz_member(zf: zipfile.ZipFile, path: str, key: str, limit: int) -> np.ndarray | None:
    """Array `key` of an open .npz: its header read and its declared size checked before any data is read;
    object (pickled) arrays are refused, as np.load(allow_pickle=False) would."""
    names = {i.filename: i for i in zf.infolist()}
    info = names.get(f"{key}.npy") or names.get(key)
    if info is None:
        return None
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            fmt = np.lib.format
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
        except (ValueError, EOFError, OSError, SyntaxError, TypeError) as e:
            _fail(path, f"member {key!r} is not a numpy array ({escape(str(e))[:80]})", "save it with numpy.savez")
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            _fail(path, f"{key} has dtype {dtype}, not plain numbers (kpgen reads no pickled objects)",
                  "save a numeric array, e.g. x.astype(numpy.float32)")
        count = math.prod(shape)
        if count > limit:
            _fail(path, f"{key} declares shape {shape} ({count:,} values), more than kpgen reads ({limit:,})",
                  "give fewer samples")
        if info.file_size < count * dtype.itemsize:
            _fail(path, f"{key} declares shape {shape} but holds only {info.file_size:,} bytes",
                  "the file is truncated: save it again")
        data = f.read(count * dtype.itemsize)
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")


def _regular_file(path: str) -> Path:
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        _fail(path, "no such file", "check the path")
    except OSError as e:
        _fail(path, f"cannot be read ({e.strerror or e})", "check the path and permissions")
    if not stat.S_ISREG(st.st_mode):
        _fail(path, "is not a regular file", f"give an .npz or .csv data file ({DOC})")
    return p


def _read_npz(path: str) -> dict[str, np.ndarray]:
    p = _regular_file(path)
    try:
        with open(p, "rb") as f:
            if f.read(6) == b"\x93NUMPY":
                _fail(path, "is a .npy file (one array), not an .npz",
                      "save inputs and labels with numpy.savez(file, x=..., y=...)")
            if not zipfile.is_zipfile(f):
                _fail(path, "is neither an .npz (zip) file nor a .csv file", f"save it with numpy.savez ({DOC})")
            with zipfile.ZipFile(f) as zf:
                out = {}
                for key in KEYS:
                    a = npz_member(zf, path, key, MAX_ELEMENTS)
                    if a is not None:
                        out[key] = a
                if "x" not in out:
                    held = sorted(i.filename.removesuffix(".npy") for i in zf.infolist())[:6]
                    _fail(path, f"has no array named 'x' (it holds {escape(', '.join(held)) or 'nothing'})",
                          "save inputs as x [samples, steps, features] and labels as y, e.g. "
                          "numpy.savez(file, x=x, y=y)")
                return out
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as e:
        _fail(path, f"is not a readable .npz file ({escape(str(e))[:100]})", "save it with numpy.savez")


def _float(v: str, path: str, line: int, col: str) -> float:
    try:
        return float(v)
    except ValueError:
        _fail(path, f"line {line}: column {col!r} holds {escape(v[:20])!r}, not a number",
              f"see the CSV layout in {DOC}")


def _read_csv(path: str) -> dict[str, np.ndarray]:
    """The documented long CSV layout (one row per sample and step) as the npz arrays."""
    p = _regular_file(path)
    if p.stat().st_size > MAX_CSV_BYTES:
        _fail(path, f"is larger than {MAX_CSV_BYTES >> 20} MiB", "give fewer samples, or an .npz file")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        _fail(path, f"is not a readable CSV file ({escape(str(e))[:100]})", f"see the CSV layout in {DOC}")
    if len(rows) < 2:
        _fail(path, "has no header row and data rows", f"see the CSV layout in {DOC}")
    head = [h.strip() for h in rows[0]]
    feats = sorted(int(h[1:]) for h in head if h.startswith("x") and h[1:].isdigit())
    logit_cols = sorted(int(h[5:]) for h in head if h.startswith("logit") and h[5:].isdigit())
    if "sample" not in head or "step" not in head or not feats or feats != list(range(len(feats))):
        _fail(path, f"header {escape(','.join(head)[:80])!r} lacks sample, step and x0, x1, ... columns",
              f"write a header such as sample,step,x0,x1,y ({DOC})")
    col = {h: i for i, h in enumerate(head)}
    seqs: dict[int, dict[int, list[float]]] = {}
    labels: dict[int, float] = {}
    logits: dict[int, list[float]] = {}
    for n, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != len(head):
            _fail(path, f"line {n} has {len(row)} fields, the header {len(head)}", f"see the CSV layout in {DOC}")
        s, t = _float(row[col["sample"]], path, n, "sample"), _float(row[col["step"]], path, n, "step")
        if s != int(s) or t != int(t) or s < 0 or t < 0 or s >= MAX_CSV_BYTES or t >= MAX_CSV_BYTES:
            _fail(path, f"line {n}: sample and step must be non-negative integers", f"see the CSV layout in {DOC}")
        steps = seqs.setdefault(int(s), {})
        if int(t) in steps:
            _fail(path, f"line {n}: sample {int(s)} step {int(t)} appears twice", "give each step once")
        steps[int(t)] = [_float(row[col[f"x{k}"]], path, n, f"x{k}") for k in feats]
        if "y" in col:
            labels[int(s)] = _float(row[col["y"]], path, n, "y")
        if logit_cols:
            logits[int(s)] = [_float(row[col[f"logit{k}"]], path, n, f"logit{k}") for k in logit_cols]
    order = sorted(seqs)
    lengths = np.array([len(seqs[s]) for s in order], np.int64)
    for s in order:
        if sorted(seqs[s]) != list(range(len(seqs[s]))):
            _fail(path, f"sample {s} has steps {sorted(seqs[s])[:5]}..., not 0, 1, 2, ...", "number steps from 0")
    longest = int(lengths.max())
    if len(order) * longest * len(feats) > MAX_ELEMENTS:
        _fail(path, "holds more values than kpgen reads", "give fewer samples")
    x = np.zeros((len(order), longest, len(feats)), np.float64)
    for i, s in enumerate(order):
        x[i, longest - len(seqs[s]) :] = [seqs[s][t] for t in range(len(seqs[s]))]
    out: dict[str, np.ndarray] = {"x": x}
    if labels:
        out["y"] = np.array([labels[s] for s in order])
    if logits:
        out["logits"] = np.array([logits[s] for s in order])
    if (lengths != longest).any():
        out["lengths"] = lengths
    return out


def load_user_data(path: str | os.PathLike, *, input_size: int | None = None, num_classes: int | None = None,
                   need_labels: bool = True) -> UserData:
    """Read and check a user's data file (.npz or .csv, docs/byom.md) against the model's input size and class
    count when known; one-line KpgenError with a hint for every problem."""
    name = str(path)
    arrays = _read_csv(name) if name.lower().endswith(".csv") else _read_npz(name)
    return check_arrays(arrays, name, input_size=input_size, num_classes=num_classes, need_labels=need_labels)


def check_arrays(arrays: dict[str, np.ndarray], name: str, *, input_size: int | None = None,
                 num_classes: int | None = None, need_labels: bool = True) -> UserData:
    """x, y, lengths and logits (as read from a file, or given to kpgen.api) checked and converted."""
    x_raw = np.asarray(arrays["x"])
    if x_raw.dtype == np.bool_ or not (np.issubdtype(x_raw.dtype, np.floating) or np.issubdtype(x_raw.dtype,
                                                                                              np.integer)):
        _fail(name, f"x has dtype {x_raw.dtype}, not real numbers", "save float inputs")
    if x_raw.ndim == 2:
        _fail(name, f"x has shape {x_raw.shape}: 2 dimensions, not [samples, steps, features]",
              "for one feature per step save x[:, :, None] (x.reshape(samples, steps, 1))")
    if x_raw.ndim != 3 or x_raw.shape[0] < 1 or x_raw.shape[1] < 1 or x_raw.shape[2] < 1:
        _fail(name, f"x has shape {x_raw.shape}, not [samples, steps, features] with at least one of each",
              f"save x as a 3-D array ({DOC})")
    n, steps, feats = x_raw.shape
    if input_size is not None and feats != input_size:
        if steps == input_size:
            _fail(name, f"x has shape {x_raw.shape}: {feats} features per step, but the model takes {input_size}; "
                        f"it looks like (samples, channels, steps)",
                  "transpose it: x.transpose(0, 2, 1) gives (samples, steps, channels)")
        _fail(name, f"x has {feats} features per step (shape {x_raw.shape}), but the model takes {input_size}",
              "give the data the model was trained on")
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.asarray(x_raw, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        _fail(name, f"x contains NaN or infinite values (first at x[{bad[0]}, {bad[1]}, {bad[2]}])",
              "clean or impute the data first")
    y = _labels(arrays.get("y"), n, num_classes, name)
    if y is None and need_labels:
        _fail(name, "has no labels y", "save the integer class of every sample as y (numpy.savez(file, x=x, y=y))")
    lengths = _lengths(arrays.get("lengths"), x, name)
    logits = _logits(arrays.get("logits"), n, num_classes, name)
    return UserData(x=x.astype(np.float32), y=y, lengths=lengths, logits=logits, source=Path(name).name)


def _labels(y_raw: np.ndarray | None, n: int, num_classes: int | None, name: str) -> np.ndarray | None:
    if y_raw is None:
        return None
    y_raw = np.asarray(y_raw)
    integral = y_raw.shape == (n,) and y_raw.dtype != np.bool_ and (np.issubdtype(y_raw.dtype, np.integer) or (
        np.issubdtype(y_raw.dtype, np.floating) and bool(np.all(np.isfinite(y_raw) & (y_raw == np.round(y_raw))))))
    if not integral:
        _fail(name, f"y has shape {y_raw.shape} and dtype {y_raw.dtype}, expected {n} integer labels "
                    "(one per sample in x)", "save y as integer classes 0..C-1, e.g. y.astype(numpy.int64)")
    top = num_classes if num_classes is not None else 1 << 16
    bad = (y_raw < 0) | (y_raw >= top)
    if bool(bad.any()):
        i = int(np.argmax(bad))
        _fail(name, f"label y[{i}] = {y_raw[i].item()!r} is not a class 0..{top - 1}"
                    + (" of this model" if num_classes is not None else ""),
              "number the classes from 0 (e.g. numpy.unique(y, return_inverse=True)[1])")
    return y_raw.astype(np.int64)


def _lengths(raw: np.ndarray | None, x: np.ndarray, name: str) -> np.ndarray | None:
    if raw is None:
        return None
    raw = np.asarray(raw)
    n, steps = x.shape[:2]
    if raw.shape != (n,) or not np.issubdtype(raw.dtype, np.integer) or raw.dtype == np.bool_:
        _fail(name, f"lengths has shape {raw.shape} and dtype {raw.dtype}, expected {n} integers",
              "save one integer length per sample, or leave lengths out")
    bad = (raw < 1) | (raw > steps)
    if bool(bad.any()):
        i = int(np.argmax(bad))
        _fail(name, f"lengths[{i}] = {int(raw[i])} is not a length from 1 to {steps} (the steps in x)",
              "fix lengths")
    pad = np.arange(steps)[None, :] < (steps - raw)[:, None]  # the steps before each sequence's data
    if bool(np.any(x[pad] != 0)):
        right = np.arange(steps)[None, :] >= raw[:, None]
        hint = ("it looks right-padded (data first, then zeros): move each sequence to the end, e.g. "
                "x[i, -L:] = x[i, :L] with zeros before" if not np.any(x[right] != 0) else
                "zero the steps before each sequence's data")
        _fail(name, "x has nonzero values before a sequence's data (kpgen reads the last step: left-pad them)", hint)
    return raw.astype(np.int64)


def _logits(raw: np.ndarray | None, n: int, num_classes: int | None, name: str) -> np.ndarray | None:
    if raw is None:
        return None
    raw = np.asarray(raw)
    ok = raw.ndim == 2 and raw.shape[0] == n and raw.shape[1] >= 1 and raw.dtype != np.bool_ and (
        np.issubdtype(raw.dtype, np.floating) or np.issubdtype(raw.dtype, np.integer))
    if not ok:
        _fail(name, f"logits has shape {raw.shape} and dtype {raw.dtype}, expected float [{n}, classes]",
              "save your model's outputs for x, e.g. model(x).detach().numpy()")
    if num_classes is not None and raw.shape[1] != num_classes:
        _fail(name, f"logits has {raw.shape[1]} columns, but the model has {num_classes} classes",
              "save the outputs of this model")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        _fail(name, "logits contains NaN or infinite values", "save your model's finite outputs for x")
    return out


@dataclass(frozen=True)
class LogitCheck:
    """kpgen's float logits against the user's: argmax agreement, max |difference| and the allowed difference."""

    agreement: float
    max_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.tolerance and self.agreement >= LOGIT_AGREEMENT


def compare_logits(ours: np.ndarray, theirs: np.ndarray) -> LogitCheck:
    """The documented tolerance: max |ours - theirs| <= LOGIT_ATOL * (1 + max |theirs|), and the argmax agrees
    on at least LOGIT_AGREEMENT of the samples."""
    diff = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
    agree = float(np.mean(ours.argmax(1) == theirs.argmax(1))) if len(ours) else 1.0
    tol = LOGIT_ATOL * (1.0 + float(np.max(np.abs(theirs))) if theirs.size else 1.0)
    return LogitCheck(agree, diff, tol)


def holdout(data: UserData, fraction: float = 0.2, seed: int = 0) -> tuple[UserData, UserData]:
    """(train, test): a seeded random `fraction` of the samples (at least one) held out for evaluation."""
    n = len(data.x)
    if n < 2:
        _fail(data.source, f"has {n} sample, too few to hold any out for testing", "give more samples, or --test FILE")
    order = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(fraction * n)))
    return data.take(np.sort(order[k:])), data.take(np.sort(order[:k]))


def to_split(data: UserData, test: UserData | None = None, seed: int = 0) -> Split:
    """A datasets.Split for training: data (labelled) for training, `test` for evaluation, else a seeded 20% of
    data held out. Both must have the same steps per sample (kpgen's models read the last step)."""
    from kpgen.frontend.datasets import Split

    if test is None:
        data, test = holdout(data, seed=seed)
    if test.x.shape[1:] != data.x.shape[1:]:
        _fail(test.source, f"x has shape {test.x.shape}, but the training data's samples are {data.x.shape[1:]} "
                           "(steps, features)", "left-pad both to the same number of steps")
    assert data.y is not None and test.y is not None  # load_user_data(need_labels=True)
    return Split(data.x, data.y, test.x, test.y, data.lengths, test.lengths)


def calibrate_graph(model: ModelF, path: str | os.PathLike, data: str | os.PathLike | None, kind: str, noun: str,
                    softmax: bool = False, meta: dict | None = None) -> ModelF:
    """A model read from a graph file (ONNX, .pt2) has weights but no ranges: calibrate it on the user's data
    (ranges measured by kpgen's float model) and, when the data has logits, check that kpgen's float reading
    reproduces them (as probabilities when the graph ended in a Softmax). kind: "an ONNX model"; noun: "graph"."""
    from kpgen.frontend import synth
    from kpgen.reference import floatmodel

    def fail(problem: str, fix: str) -> NoReturn:
        raise KpgenError(" ".join(f"{path}: {problem}; {fix}".split()))

    if data is None:
        fail(f"{kind} carries no calibration",
             "pass your data with --data FILE.npz (x [samples, steps, features]) to calibrate it")
    user = load_user_data(data, input_size=model.input_size, num_classes=model.num_classes, need_labels=False)
    x = np.asarray(user.x, dtype=np.float64)
    model = replace(model, calibration=synth.calibrate(model, x),
                    meta={**model.meta, "seq_len": int(x.shape[1]), "data_file": user.source, **(meta or {})})
    if user.logits is not None:
        ours = floatmodel.float_forward(model, x)
        if softmax:
            e = np.exp(ours - ours.max(axis=1, keepdims=True))
            ours = e / e.sum(axis=1, keepdims=True)
        check = compare_logits(ours, user.logits)
        if not check.ok:
            fail(f"kpgen's reading of the {noun} gives logits that differ from the data's by up to "
                 f"{check.max_diff:.3g} (allowed {check.tolerance:.3g}; argmax agrees on "
                 f"{100 * check.agreement:.1f}%)",
                 "check that the logits in the data file are this model's outputs for its x")
    return model
