"""The planner's cost model: predicted instructions of one recurrent time step on a given core.

A step is its matrix-vector products (Wx x and Wh h of every layer and direction) plus the cell's element-wise
work (gates, state update). Each is a sum of *features*: loop-trip counts of the stages the runtime executes,
computed from the factor shapes alone (`matrix_features`, `cell_features`). Instructions are a linear function
of them, with one coefficient per feature and core, fitted by least squares to QEMU counts of a grid of emitted
models (kpgen.studies.costfit, `make costmodel`) and stored in costmodel.json beside this file, with the commit
and date they were fitted on. The features describe what the kernels do (rows of X, 4-row blocks of B, padded
columns, rows of A, outputs, short-row special cases); the coefficients say what each costs on a core, so a
faster kernel needs a refit, not a change here. Method and accuracy: docs/cycle-model.md.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from kpgen import KpgenError, cells
from kpgen.ir import KPMatrixF, KPMatrixQ, ModelF, ModelQ

COST_FILE = Path(__file__).with_name("costmodel.json")
FORMAT = "kpgen-costmodel"
VERSION = 1
# Runtime functions that do the matrix part of a step (their counts fit the matrix features; the rest of the
# step's functions fit the element-wise ones).
MATRIX_FUNCTION = re.compile(r"^kp_(matvec|kron|dense|gemv|mat|hkp)")

Shape2 = tuple[int, int]


def cols_padded(n: int) -> int:
    """kp_cols_padded: the int16 vector length a matrix of n columns reads (2, else a multiple of 4)."""
    return 2 if n <= 2 else (n + 3) & ~3


def _blocks(m: int) -> int:
    return (m + 3) // 4


# ------------------------------------------------------------------------------------------------ features

MATRIX_FEATURES = (
    "mat_calls",  # kp_matvec_s8 calls (one per matrix)
    "ext_calls",  # matrices with HKP top rows or more than two factors (the extended path)
    "k2_calls",  # two-factor products run (kp_matvec2_s8)
    # dense mode (B is 1x1): the input widened, then the blocks kernel
    "dx_calls", "dx_words", "dx_rem",
    # the blocks kernel (dense rows, and A T when T has one column): 4-row blocks of 2 columns, or of 8-column
    # chunks and a 4-column tail; a last partial block
    "vec_calls", "vec_blocks2", "vec_blocks", "vec_chunks8", "vec_chunks4", "vec_tail",
    # step 1, X B^T: per row of X a widened row, then B's blocks against it, rounded into T^T
    "in_rows", "in_words", "in_rem", "in_blocks2", "in_blocks", "in_chunks8", "in_chunks4", "in_outs", "in_tail",
    "in_pad",
    # step 2, A T: per row of A (widened), per output a dot product over A's padded columns; 2, 4, 8 and 16
    # padded columns have loops of their own
    "out_calls", "out_rows", "out_row_words", "out_outs2", "out_outs4", "out_outs8", "out_outs16", "out_outs",
    "out_out_words",
    # more than two factors: columns rounded into the levels' T^T
    "deep_round_calls", "deep_round_outs",
    # HKP: the top rows' shift
    "top_rows",
)  # fmt: skip


def _chunks(f: dict[str, float], prefix: str, blocks: float, cp: int) -> None:
    """Blocks of cp padded columns: 2-column blocks, or 8-column chunks and a 4-column tail."""
    if cp == 2:
        f[f"{prefix}_blocks2"] += blocks
        return
    f[f"{prefix}_blocks"] += blocks
    f[f"{prefix}_chunks8"] += blocks * (cp // 8)
    f[f"{prefix}_chunks4"] += blocks * (cp % 8 == 4)


def _vec(f: dict[str, float], rows: int, cols: int, mult: float) -> None:
    """The blocks kernel: rows x cols int8 against one int16 vector, `mult` times."""
    f["vec_calls"] += mult
    _chunks(f, "vec", mult * _blocks(rows), cols_padded(cols))
    f["vec_tail"] += mult * (rows % 4 != 0)


def _at(f: dict[str, float], m1: int, n1: int, m2: int, mult: float) -> None:
    """Step 2, y = A T (A m1 x n1, T n1 x m2), `mult` times."""
    if m2 == 1:
        _vec(f, m1, n1, mult)
        return
    cp = cols_padded(n1)
    f["out_calls"] += mult
    f["out_rows"] += mult * m1
    f["out_row_words"] += mult * m1 * cp // 2
    if cp <= 16 and cp in (2, 4, 8, 16):
        f[f"out_outs{cp}"] += mult * m1 * m2
    else:
        f["out_outs"] += mult * m1 * m2
        f["out_out_words"] += mult * m1 * m2 * cp // 2


def _kron2(f: dict[str, float], a: Shape2, b: Shape2, mult: float) -> None:
    """A two-factor product (dense when B is 1 x 1), `mult` times."""
    (m1, n1), (m2, n2) = a, b
    f["k2_calls"] += mult
    if m2 == 1 and n2 == 1:
        f["dx_calls"] += mult
        f["dx_words"] += mult * cols_padded(n1) // 2
        f["dx_rem"] += mult * (n1 % 4 if n1 > 2 else 0)  # elements past the last group of 4 take a slower loop
        _vec(f, m1, n1, mult)
        return
    cp2 = cols_padded(n2)
    f["in_rows"] += mult * n1
    f["in_words"] += mult * n1 * cp2 // 2
    f["in_rem"] += mult * n1 * (n2 % 4 if n2 > 2 else 0)
    _chunks(f, "in", mult * n1 * _blocks(m2), cp2)
    f["in_outs"] += mult * n1 * m2
    f["in_tail"] += mult * n1 * (m2 % 4 != 0)
    f["in_pad"] += mult * (cols_padded(n1) - n1) * m2
    _at(f, m1, n1, m2, mult)


@dataclass(frozen=True)
class MatrixShape:
    """What the C side multiplies: Kronecker factors (F1 first; dense = one rows x cols factor and B = 1 x 1)
    and, for HKP, the dense top rows (dense_rows x cols)."""

    factors: tuple[Shape2, ...]
    dense_rows: int = 0

    @property
    def cols(self) -> int:
        return math.prod(n for _, n in self.factors)


def matrix_shape(rows: int, cols: int, spec: object) -> MatrixShape:
    """The MatrixShape of a kpgen.train.nn.matrix spec (kp, hkp or dense); KpgenError for one kpgen cannot emit."""
    from kpgen.train.nn.matrix import matrix_spec

    s = matrix_spec(spec)
    if s["kind"] == "dense":
        return MatrixShape(((rows, cols), (1, 1)))
    if s["kind"] in ("kp", "hkp"):
        return MatrixShape(tuple((int(m), int(n)) for m, n in s["factors"]), int(s.get("dense_rows", 0)))
    raise KpgenError(f"no instruction prediction for a {s['kind']} matrix: the cost model covers the matrices "
                     f"kpgen emits (kp, hkp, dense)")


def matrix_features(shape: MatrixShape) -> dict[str, float]:
    """Trip counts of one product W v of this matrix (see MATRIX_FEATURES)."""
    f = dict.fromkeys(MATRIX_FEATURES, 0.0)
    facs = shape.factors
    f["mat_calls"] = 1.0
    if shape.dense_rows or len(facs) > 2:
        f["ext_calls"] = 1.0
    if shape.dense_rows:
        _kron2(f, (shape.dense_rows, shape.cols), (1, 1), 1.0)
        f["top_rows"] += shape.dense_rows
    if len(facs) == 1:
        _kron2(f, facs[0], (1, 1), 1.0)
    elif len(facs) == 2:
        _kron2(f, facs[0], facs[1], 1.0)
    else:
        # kp_kron_deep_s8: levels l = 0 .. d-2 hold F(l+1) and a T^T of m(l+2)...m(k) rows; the last level is
        # the two-factor product F(k-1) (x) F(k), run once per sub-vector of x.
        k = len(facs)
        subs = math.prod(n for _, n in facs[: k - 2])
        _kron2(f, facs[k - 2], facs[k - 1], float(subs))
        for lv in range(k - 2):
            m2 = math.prod(m for m, _ in facs[lv + 1 :])
            rounds = math.prod(n for _, n in facs[: lv + 1])
            f["deep_round_calls"] += rounds
            f["deep_round_outs"] += rounds * m2
            _at(f, facs[lv][0], facs[lv][1], m2, float(math.prod(n for _, n in facs[:lv])))
    return f


def cell_feature_names(names: Iterable[str] | None = None) -> tuple[str, ...]:
    """Element-wise features: per step; per layer-direction whose outputs are stored for every step (bidirectional
    or stacked models) and per unit of those; per layer-direction of each cell (a constant and one per unit)."""
    out = ["steps", "stored_layers", "stored_units"]
    for c in names if names is not None else cells.NAMES:
        out += [f"{c}_layers", f"{c}_units", f"{c}_units_odd"]
    return tuple(out)


CELL_FEATURES = cell_feature_names()


def _stored(layer_dirs: int, hidden: int) -> dict[str, float]:
    """A model of several layer-directions stores every step's h (H int8 each) for the next layer or the head."""
    stored = layer_dirs > 1
    return {"steps": 1.0, "stored_layers": float(layer_dirs * stored),
            "stored_units": float(layer_dirs * hidden * stored)}


def cell_features(cell: str, hidden: int, layer_dirs: int) -> dict[str, float]:
    """The element-wise features of `layer_dirs` layer-directions of `cell` with `hidden` units each."""
    f = dict.fromkeys(CELL_FEATURES, 0.0)
    f[f"{cell}_layers"] = float(layer_dirs)
    f[f"{cell}_units"] = float(layer_dirs * hidden)
    f[f"{cell}_units_odd"] = float(layer_dirs * (hidden % 4))
    return f


# ------------------------------------------------------------------------------------------------ a model's step


@dataclass(frozen=True)
class StepShape:
    """The shapes one time step runs: a cell, its hidden size, and per layer-direction the Wx and Wh shapes."""

    cell: str
    hidden: int
    matrices: tuple[tuple[MatrixShape, MatrixShape], ...]  # (Wx, Wh) per layer and direction
    backward_dirs: int = 0  # bidirectional layers (each reads x reversed besides its forward direction)


def step_shape(cell: str, input_size: int, hidden: int, wx_specs: Sequence[object], wh_specs: Sequence[object],
               num_layers: int = 1, bidirectional: bool = False) -> StepShape:
    """The StepShape of a model `kpgen train` builds (specs per layer, as KPRNNClassifier keeps them)."""
    c = cells.get(cell)
    dirs = 2 if bidirectional else 1
    rows = c.gates * hidden
    mats = []
    for k in range(num_layers):
        cols = input_size if k == 0 else dirs * hidden
        pair = (matrix_shape(rows, cols, wx_specs[k]), matrix_shape(rows, hidden, wh_specs[k]))
        mats += [pair] * dirs
    return StepShape(c.name, hidden, tuple(mats), num_layers if bidirectional else 0)


def _ir_shape(m: KPMatrixF | KPMatrixQ) -> MatrixShape:
    """The MatrixShape of a float or integer IR matrix."""
    facs = [m.a.shape, m.b.shape, *(r.shape for r in m.rest)]
    top = m.top
    return MatrixShape(tuple((int(s[0]), int(s[1])) for s in facs), 0 if top is None else int(top.shape[0]))


def model_step_shape(model: ModelF | ModelQ) -> StepShape:
    """The StepShape of a float or integer IR model."""
    layers: list = list(model.layers)
    cell = cells.of(layers[0])
    mats = []
    for layer in layers:
        for part in (layer.fwd, layer.bwd) if hasattr(layer, "fwd") else (layer,):
            mats.append((_ir_shape(part.wx), _ir_shape(part.wh)))
    bwd = sum(1 for layer in layers if hasattr(layer, "fwd"))
    return StepShape(cell.name, int(layers[0].hidden_size), tuple(mats), bwd)


def step_features(step: StepShape) -> tuple[dict[str, float], dict[str, float]]:
    """(matrix features, element-wise features) of one time step."""
    fm = dict.fromkeys(MATRIX_FEATURES, 0.0)
    for pair in step.matrices:
        for m in pair:
            for k, v in matrix_features(m).items():
                fm[k] += v
    fc = cell_features(step.cell, step.hidden, len(step.matrices))
    fc.update(_stored(len(step.matrices), step.hidden))
    return fm, fc


# ------------------------------------------------------------------------------------------------ the fitted file


@dataclass(frozen=True)
class CoreCost:
    """The fitted coefficients of one board's core."""

    board: str
    core: str
    matrix: Mapping[str, float]
    element: Mapping[str, float]

    def matrix_instructions(self, shape: MatrixShape) -> float:
        """Predicted instructions of one product W v."""
        return sum(self.matrix.get(k, 0.0) * v for k, v in matrix_features(shape).items())

    def element_instructions(self, cell: str, hidden: int, layer_dirs: int) -> float:
        """Predicted instructions of a step's element-wise work (every layer-direction's gates and state)."""
        fc = cell_features(cell, hidden, layer_dirs)
        fc.update(_stored(layer_dirs, hidden))
        return sum(self.element.get(k, 0.0) * v for k, v in fc.items())

    def step_instructions(self, step: StepShape) -> float:
        """Predicted instructions of one time step (every layer and direction, matrices and cells)."""
        fm, fc = step_features(step)
        return (sum(self.matrix.get(k, 0.0) * v for k, v in fm.items())
                + sum(self.element.get(k, 0.0) * v for k, v in fc.items()))


@dataclass(frozen=True)
class CostModel:
    """Every board's coefficients, and where they came from."""

    cores: Mapping[str, CoreCost]  # by board name
    commit: str
    date: str
    path: Path

    def for_board(self, board: str) -> CoreCost:
        """The coefficients measured on `board` (a board name, e.g. m4); KpgenError if there are none."""
        if board in self.cores:
            return self.cores[board]
        from kpgen.target.boards import load_board

        core = load_board(board).core  # an unknown board is its own KpgenError
        for c in self.cores.values():
            if c.core == core:
                return c
        raise KpgenError(f"no instruction cost model for board {board!r} ({core}) in {self.path}: boards with one: "
                         f"{', '.join(sorted(self.cores))}; pick one of them, or add the board to "
                         f"kpgen.studies.costfit.BOARDS and run `make costmodel`")


def _bad(path: Path, what: str) -> KpgenError:
    return KpgenError(f"cost model file {path} is not usable ({what}); regenerate it with `make costmodel`")


def _coefs(path: Path, value: object, names: tuple[str, ...], where: str) -> dict[str, float]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _bad(path, f"{where} is not a table of coefficients")
    out = {}
    for k, v in value.items():
        if k not in names:
            raise _bad(path, f"{where} has an unknown feature {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _bad(path, f"{where}.{k} is not a finite number")
        out[k] = float(v)
    return out


def load(path: Path | None = None) -> CostModel:
    """Read and check a cost model file (default: the package's costmodel.json); KpgenError if unusable."""
    p = Path(path) if path is not None else COST_FILE
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _bad(p, "missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _bad(p, f"not JSON: {str(e).splitlines()[0][:80]}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise _bad(p, f"not a {FORMAT} version {VERSION} file")
    boards = raw.get("boards")
    if not isinstance(boards, dict) or not boards:
        raise _bad(p, "no boards")
    cores = {}
    for name, entry in boards.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("core"), str):
            raise _bad(p, f"board {name!r} has no core")
        cores[str(name)] = CoreCost(
            str(name), entry["core"],
            _coefs(p, entry.get("matrix"), MATRIX_FEATURES, f"{name}.matrix"),
            _coefs(p, entry.get("element"), CELL_FEATURES, f"{name}.element"),
        )  # fmt: skip
    return CostModel(cores, str(raw.get("commit", "?")), str(raw.get("date", "?")), p)


@lru_cache(maxsize=4)
def _cached(path: str) -> CostModel:
    return load(Path(path))


def for_board(board: str, path: Path | None = None) -> CoreCost:
    """The fitted coefficients for `board` from the package's cost model (cached)."""
    return _cached(str(Path(path) if path is not None else COST_FILE)).for_board(board)
