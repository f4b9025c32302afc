"""From a trained dense RNN to a compressed one: KP (nearest Kronecker product), HKP, pruning, low rank, small.

`compress_checkpoint(source, method, ratio, ...)` reads a dense model (a torch.nn.LSTM / nn.GRU + nn.Linear
state dict, or any kpgen checkpoint), builds the compressed model with the same cell and sizes, initialises
it from the dense weights, fine-tunes it on the task's data and returns a kpgen checkpoint dict.

The budget: every recurrent matrix W (rows x cols) may keep at most floor(rows * cols / ratio) parameters
(for `small`, the whole network's matrices together). Heads and biases stay dense in every method.

| method | matrices | initialised from the dense W |
|---|---|---|
| kp | A (x) B, the planner's best factor shapes within the budget | nearest Kronecker product (Van Loan) |
| hkp | r rows dense (LSTM: r / G per gate), the rest A (x) B; r spends the budget | those rows; nearest KP of rest |
| prune | dense, a fraction 1/ratio of the weights kept | W, then gradual magnitude pruning (Zhu & Gupta) |
| lowrank | U V, rank r = floor(budget / (rows + cols)), >= 1, fitted to the total (lowrank_ranks) | truncated SVD |
| small | dense, fewer hidden units, same total matrix budget | random (trained from scratch) |
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from kpgen import KpgenError, cells
from kpgen.frontend import datasets
from kpgen.train.nn import KPRNNClassifier
from kpgen.train.nn.kp import KPLinear, as_shapes
from kpgen.train.nn.matrix import DenseLinear, HKPLinear, LowRankLinear, Matrix
from kpgen.train.plan import hkp_row_groups, pick_hkp, pick_kp

METHODS = ("kp", "hkp", "prune", "lowrank", "small")
K = TypeVar("K")
DOC = "docs/compression.md"

# ------------------------------------------------------------------------------------ nearest Kronecker product


def rearrange(w: torch.Tensor, a_shape: Sequence[int], b_shape: Sequence[int]) -> torch.Tensor:
    """Van Loan and Pitsianis' R(W): one row per (m2 x n2) block W_ij, row (i*n1 + j) = vec(W_ij) row-major.

    For W = A (x) B, W_ij = A[i, j] B, so R(W) = vec(A) vec(B)^T has rank one.
    """
    (m1, n1), (m2, n2) = a_shape, b_shape
    return w.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def nearest_kp(w: torch.Tensor, a_shape: Sequence[int], b_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) minimising ||W - A (x) B||_F: the leading singular pair of R(W), A = u sqrt(s), B = v sqrt(s).

    ||W - A (x) B||_F = ||R(W) - vec(A) vec(B)^T||_F (the same entries rearranged), and the best rank-one
    approximation of a matrix is its leading singular triple (Eckart-Young). The sign is fixed so that A's
    entries sum to >= 0.
    """
    (m1, n1), (m2, n2) = a_shape, b_shape
    if w.shape != (m1 * m2, n1 * n2):
        raise ValueError(f"W is {tuple(w.shape)}, factors {tuple(a_shape)} (x) {tuple(b_shape)} "
                         f"make {m1 * m2}x{n1 * n2}")
    u, s, vh = torch.linalg.svd(rearrange(w, a_shape, b_shape), full_matrices=False)
    root = s[0].sqrt()
    a = (u[:, 0] * root).reshape(m1, n1)
    b = (vh[0] * root).reshape(m2, n2)
    if a.sum() < 0:
        a, b = -a, -b
    return a, b


def nearest_kp_n(w: torch.Tensor, shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """k factors, greedily: the nearest F1 (x) R, then R split the same way, and so on.

    Exact for k = 1 and 2 and whenever W is a k-fold Kronecker product; for k > 2 otherwise an approximation
    (the optimal k-factor problem is a rank-one tensor approximation with no closed form).
    """
    shapes = as_shapes(shapes)
    if len(shapes) == 1:
        return [w.clone()]
    rest = (math.prod(s[0] for s in shapes[1:]), math.prod(s[1] for s in shapes[1:]))
    first, r = nearest_kp(w, shapes[0], rest)
    return [first, *nearest_kp_n(r, shapes[1:])]


# ----------------------------------------------------------------------------------------- reading the source

TORCH_RNN_KEY = re.compile(
    r"^(?P<prefix>.*?)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh)_l(?P<layer>\d+)(?P<rev>_reverse)?$"
)


def _fail(path: str, problem: str, fix: str) -> KpgenError:
    return KpgenError(f"{path}: {problem}; {fix}")


NONLINEARITIES = ("tanh", "relu")  # torch.nn.RNN's; its state dict does not record which one


def _torch_cell(gates: int, nonlinearity: str) -> cells.Cell | None:
    """The registered cell that reads a torch recurrent layer with `gates` row blocks (torch's RNNBase mode:
    LSTM 4, GRU 3, RNN_TANH / RNN_RELU 1), or None."""
    mode = {4: "LSTM", 3: "GRU", 1: f"RNN_{nonlinearity.upper()}"}.get(gates)
    return next((c for c in cells.REGISTRY.values() if mode is not None and c.torch_mode == mode), None)


def from_torch_state_dict(sd: dict, path: str = "<state_dict>", nonlinearity: str = "tanh") -> KPRNNClassifier:
    """A dense kpgen model from a torch.nn.LSTM / nn.GRU / nn.RNN (any layers, batch_first or not, bidirectional
    or not) followed by one nn.Linear head, given as a state dict (key patterns in docs/compression.md).
    nonlinearity: an nn.RNN's ('tanh' or 'relu'), which its state dict does not record."""
    rnn: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    prefixes, rest = set(), {}
    for key, t in sd.items():
        m = TORCH_RNN_KEY.match(str(key))
        if m:
            prefixes.add(m["prefix"])
            rnn.setdefault((int(m["layer"]), 1 if m["rev"] else 0), {})[m["kind"]] = t
        elif re.search(r"weight_hr_l\d+", str(key)):
            raise _fail(path, f"{key}: LSTM projections (proj_size) are not supported", "use proj_size=0")
        else:
            rest[str(key)] = t
    fix = f"save model.state_dict() of an nn.LSTM, nn.GRU or nn.RNN followed by one nn.Linear ({DOC})"
    if not rnn:
        raise _fail(path, "no weight_ih_l0 / weight_hh_l0 tensors, so no torch LSTM, GRU or RNN", fix)
    if len(prefixes) > 1:
        raise _fail(path, f"recurrent weights under several prefixes ({', '.join(sorted(map(repr, prefixes)))})", fix)
    num_layers = 1 + max(k for k, _ in rnn)
    dirs = 1 + max(d for _, d in rnn)
    if set(rnn) != {(k, d) for k in range(num_layers) for d in range(dirs)}:
        raise _fail(path, "the recurrent layers are not numbered 0..L-1 in every direction", fix)
    if any("weight_ih" not in v or "weight_hh" not in v for v in rnn.values()):
        raise _fail(path, "a layer lacks weight_ih or weight_hh", fix)
    w_hh = rnn[(0, 0)]["weight_hh"]
    hid = int(w_hh.shape[1])
    gates = int(w_hh.shape[0]) // max(hid, 1)
    if nonlinearity not in NONLINEARITIES:
        raise _fail(path, f"nonlinearity {nonlinearity!r} is not tanh or relu", "give the nn.RNN's nonlinearity")
    cell = _torch_cell(gates, nonlinearity) if w_hh.shape[0] == gates * hid else None
    if cell is None:
        raise _fail(path, f"weight_hh_l0 is {tuple(w_hh.shape)}: not 4H x H (LSTM), 3H x H (GRU) or H x H (RNN)", fix)
    inp = int(rnn[(0, 0)]["weight_ih"].shape[1])
    heads = sorted(k[: -len(".weight")] for k, t in rest.items() if k.endswith(".weight") and t.ndim == 2)
    heads = [h for h in heads if rest[h + ".weight"].shape[1] == dirs * hid]
    if len(heads) != 1:
        found = "none" if not heads else ", ".join(heads)
        raise _fail(path, f"expected one Linear head of input {dirs * hid} (e.g. fc.weight), found {found}", fix)
    head = heads[0]
    extra = sorted(set(rest) - {head + ".weight", head + ".bias"})
    if extra:
        raise _fail(path, f"unexpected tensor(s) {', '.join(extra[:5])}", fix)
    num_classes = int(rest[head + ".weight"].shape[0])
    model = KPRNNClassifier(cell.name, inp, hid, num_classes, "dense", "dense", num_layers=num_layers,
                            bidirectional=dirs == 2)
    model = model.double()
    with torch.no_grad():
        for (k, d), v in rnn.items():
            layer = model.direction(k, d)
            want_ih = (gates * hid, layer.input_size)
            if tuple(v["weight_ih"].shape) != want_ih or tuple(v["weight_hh"].shape) != (gates * hid, hid):
                raise _fail(path, f"layer {k} weights have shapes {tuple(v['weight_ih'].shape)}, "
                                  f"{tuple(v['weight_hh'].shape)}; expected {want_ih}, {(gates * hid, hid)}", fix)
            init_matrix(layer.wx, v["weight_ih"])  # dense matrices: a copy
            init_matrix(layer.wh, v["weight_hh"])
            b_ih = v.get("bias_ih", torch.zeros(gates * hid)).double()
            b_hh = v.get("bias_hh", torch.zeros(gates * hid)).double()
            assert cell.torch_biases is not None  # every cell with a torch_mode maps torch's biases
            cell.torch_biases(layer, b_ih, b_hh, hid)
        model.head.weight.copy_(rest[head + ".weight"])
        if head + ".bias" in rest:
            model.head.bias.copy_(rest[head + ".bias"])
        else:
            model.head.bias.zero_()
    return model.float()


STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model")  # {"state_dict": sd, ...}, Lightning, {"model": sd}


def _is_tensor_dict(v: object) -> bool:
    return isinstance(v, dict) and bool(v) and all(isinstance(t, torch.Tensor) for t in v.values())


def unwrap_state_dict(raw: object, name: str) -> tuple[dict, str | None]:
    """(state dict, nn.RNN nonlinearity or None) from a plain state dict or a dict holding one under
    'state_dict', 'model_state_dict' or 'model' (optimizer state and other entries beside it are ignored)."""
    nonlinearity = None
    if isinstance(raw, dict) and not _is_tensor_dict(raw):
        inner = next((raw[k] for k in STATE_DICT_WRAPPERS if _is_tensor_dict(raw.get(k))), None)
        if inner is not None:
            nl = raw.get("nonlinearity")
            nonlinearity = nl if isinstance(nl, str) else None
            raw = inner
    if not _is_tensor_dict(raw):
        keys = ", ".join(sorted(map(str, raw))[:5]) if isinstance(raw, dict) else type(raw).__name__
        raise _fail(name, f"is neither a kpgen checkpoint nor a state dict of tensors (it holds {keys[:80]})",
                    f"save model.state_dict() of an nn.LSTM, nn.GRU or nn.RNN with one nn.Linear head, or a dict "
                    f"holding it under 'state_dict', 'model_state_dict' or 'model' ({DOC}, docs/byom.md)")
    assert isinstance(raw, dict)
    return raw, nonlinearity


def torch_candidates(raw: object, name: str) -> list[KPRNNClassifier]:
    """The dense models a plain state dict can be: one, or for an nn.RNN that does not say its nonlinearity,
    the tanh and the relu reading (the user's logits choose; kpgen.frontend.load.load_model)."""
    sd, nonlinearity = unwrap_state_dict(raw, name)
    first = from_torch_state_dict(sd, name, nonlinearity or "tanh")
    if nonlinearity is None and first.cell == "rnn":
        return [first, from_torch_state_dict(sd, name, "relu")]
    return [first]


def pick_candidate(cands: list[KPRNNClassifier], name: str, data: object = None) -> KPRNNClassifier:
    """The one reading of a state dict that matches the user's logits (data: a UserData); the only one when
    there is one; KpgenError when the logits disagree with every reading or an nn.RNN's nonlinearity is unknown."""
    from kpgen.frontend.userdata import UserData, compare_logits

    logits = data.logits if isinstance(data, UserData) else None
    if logits is None:
        if len(cands) > 1:
            raise _fail(name, "is an nn.RNN state dict, which does not say whether the RNN is tanh or relu",
                        "add your model's logits to the data file, or save {'state_dict': sd, 'nonlinearity': "
                        "'relu'} (or 'tanh') (docs/byom.md)")
        return cands[0]
    assert isinstance(data, UserData)
    x = torch.from_numpy(data.x[:2000]).double()
    checks = []
    for m in cands:
        with torch.no_grad():
            ours = m.double().eval()(x).numpy()
        m.float()
        checks.append(compare_logits(ours, logits[:2000]))
        if checks[-1].ok:
            return m
    raise KpgenError(mismatch_message(name, data.source, checks[0], len(x), cands[0].bidirectional))


def mismatch_message(name: str, data: str, check: object, samples: int, bidirectional: bool) -> str:
    """The one line for a model whose float reading disagrees with the user's logits, with the likely cause."""
    from kpgen.frontend.userdata import LOGIT_AGREEMENT, LogitCheck

    assert isinstance(check, LogitCheck)
    cause = ("kpgen's head reads [forward h_T, backward h after the whole sequence] (torch's h_n), so a head "
             "on out[:, -1] or a pooled one reads something else" if bidirectional else
             "the head is probably not a Linear on the last step (mean or max over time? an MLP?)")
    return (f"{name}: kpgen's float reading disagrees with the logits in {data} (argmax agrees on "
            f"{100 * check.agreement:.1f}% of {samples} samples, needs {100 * LOGIT_AGREEMENT:.0f}%; max |difference| "
            f"{check.max_diff:.3g}, allowed {check.tolerance:.3g}): {cause}; give the ONNX graph instead, or check "
            "that the data is what the model saw (docs/byom.md)")


def read_source(path: str | Path, data: object = None, any_reading: bool = False) -> tuple[KPRNNClassifier, dict]:
    """(model, meta) from a kpgen checkpoint or a torch LSTM/GRU/RNN + Linear state dict (or a dict holding it
    under 'state_dict', 'model_state_dict' or 'model', with an nn.RNN's 'nonlinearity' beside it); one-line
    errors. data (a UserData) with logits checks a state dict's reading; any_reading: an nn.RNN whose
    nonlinearity is unknown is read as tanh (for shapes only, as `kpgen plan` needs)."""
    from kpgen.frontend.load import checkpoint_to_ir, read_raw
    from kpgen.train.loop import model_from_checkpoint

    raw = read_raw(path)
    name = str(path)
    if isinstance(raw, dict) and "format" in raw:
        arch = raw.get("arch")
        if not isinstance(arch, dict):
            arch = {}
        if "wx_specs" not in arch:
            checkpoint_to_ir(raw, name)  # v1: the loader's full validation and its messages
        try:
            model = model_from_checkpoint(raw)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise _fail(name, f"not a readable kpgen checkpoint ({str(e).splitlines()[0][:120]})",
                        "see docs/checkpoint.md") from None
        return model, dict(raw.get("meta", {}))
    cands = torch_candidates(raw, name)
    return (cands[0] if any_reading else pick_candidate(cands, name, data)), {}


# ---------------------------------------------------------------------------------------------- the methods


def matrix_budget(rows: int, cols: int, ratio: float) -> int:
    return max(1, int(math.floor(rows * cols / ratio)))


def _dense_matrices(model: KPRNNClassifier) -> dict[str, torch.Tensor]:
    """'layers.0.wx' -> the explicit matrix (float64), for every recurrent matrix."""
    with torch.no_grad():
        return {n: m.dense().detach().double().clone() for n, m in model.matrices()}


@dataclass(frozen=True)
class MatrixControl:
    """Per-matrix choices of `kpgen compress` (kp and hkp): factor shapes or 'dense' for every Wx / Wh they
    make, and a compression ratio per matrix kind (else the global --ratio)."""

    wx_factors: list | str | None = None
    wh_factors: list | str | None = None
    wx_ratio: float | None = None
    wh_ratio: float | None = None
    hkp_rows: str = "auto"  # hkp: where the dense rows go (kpgen.train.plan.hkp_row_groups)

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.wx_factors, self.wh_factors, self.wx_ratio, self.wh_ratio))


def _shape_of(shapes: list) -> tuple[int, int]:
    return math.prod(int(s[0]) for s in shapes), math.prod(int(s[1]) for s in shapes)


def _matrix_spec(method: str, k: int, name: str, rows: int, cols: int, ratio: float | None,
                 control: MatrixControl) -> dict:
    """The spec of layer k's matrix `name` ('wx' or 'wh'), from the control or the planner within the budget."""
    opt = f"--{name}-factors"
    factors = getattr(control, f"{name}_factors")
    if factors == "dense":
        return {"kind": "dense"}
    if factors is not None and _shape_of(factors) == (rows, cols):
        return {"kind": "kp", "factors": [list(map(int, f)) for f in factors]}
    r = getattr(control, f"{name}_ratio") or ratio
    label = f"layer {k} {name.capitalize()} ({rows}x{cols})"
    if r is None and factors is not None:
        m, n = _shape_of(factors)
        raise KpgenError(f"{opt} make a {m}x{n} matrix, but layer {k} {name.capitalize()} is {rows}x{cols}; give "
                         f"shapes whose rows multiply to {rows} and columns to {cols}, or --{name}-ratio for the "
                         "matrices they do not make")
    if r is None:
        raise KpgenError(f"{label} has no compression given; pass --ratio, --{name}-ratio or {opt}")
    budget = matrix_budget(rows, cols, r)
    try:
        if method == "hkp":
            return pick_hkp(rows, cols, budget, num_factors=2).spec()
        return pick_kp(rows, cols, budget, num_factors=2, pad=0.0).spec()
    except ValueError:
        raise KpgenError(f"{label}: no 2-factor Kronecker product has at most {budget:,} parameters (ratio {r:g}); "
                         f"keep it dense with --keep-dense {name}, lower --{name}-ratio, or give {opt} "
                         f"(`kpgen plan --rows {rows} --cols {cols}` lists products)") from None


def spread_over_gates(spec: dict, cell: str, where: str = "auto") -> dict:
    """An HKP spec with its dense rows placed as kpgen.train.plan.hkp_row_groups says (top_groups > 1: r / G rows
    of each of the cell's G gates instead of r rows of the first); any other spec as it is."""
    if spec.get("kind") != "hkp":
        return spec
    groups = hkp_row_groups(cell, int(spec.get("dense_rows", 0)), where)
    out = {k: v for k, v in spec.items() if k != "top_groups"}
    return out if groups == 1 else {**out, "top_groups": groups}


def _specs_for(model: KPRNNClassifier, method: str, ratio: float | None,
               control: MatrixControl | None = None) -> tuple[list[dict], list[dict]]:
    """Per-layer wx and wh specs of the compressed model (the same for both directions)."""
    control = control or MatrixControl()
    wx: list[dict] = []
    wh: list[dict] = []
    for k in range(model.num_layers):
        one = model.direction(k)
        for name, out, mat in (("wx", wx, one.wx), ("wh", wh, one.wh)):
            rows, cols = mat.out_features, mat.in_features
            if method in ("kp", "hkp"):
                out.append(spread_over_gates(_matrix_spec(method, k, name, rows, cols, ratio, control),
                                             model.cell, control.hkp_rows))
            elif method == "lowrank":
                out.append({"kind": "lowrank", "rank": 1, "_size": (rows, cols)})
            else:
                out.append({"kind": "dense"})
    for name in ("wx", "wh"):
        factors = getattr(control, f"{name}_factors")
        specs = wx if name == "wx" else wh
        if isinstance(factors, list) and not any(s.get("factors") == factors for s in specs):
            m, n = _shape_of(factors)
            sizes = sorted({f"{s.out_features}x{s.in_features}" for s in
                            (getattr(model.direction(k), name) for k in range(model.num_layers))})
            raise KpgenError(f"--{name}-factors make a {m}x{n} matrix, but the model's {name.capitalize()} "
                             f"matrices are {', '.join(sizes)}; give shapes whose products make one of them")
    if method == "lowrank":
        assert ratio is not None
        specs = wx + wh
        shapes: dict[int, tuple[int, int]] = {i: s.pop("_size") for i, s in enumerate(specs)}
        budget = sum(matrix_budget(rows, cols, ratio) for rows, cols in shapes.values())
        if sum(sum(shape) for shape in shapes.values()) > budget:
            dirs = 2 if model.bidirectional else 1
            raise ValueError(f"even rank 1 everywhere needs more than the budget ({budget * dirs} "
                             f"parameters); use a smaller ratio")
        for i, rank in lowrank_ranks(shapes, budget).items():
            specs[i]["rank"] = rank
    return wx, wh


def lowrank_ranks(shapes: Mapping[K, tuple[int, int]], target: int, directions: int = 1) -> dict[K, int]:
    """Ranks whose U, V total as near to `target` parameters as possible, never above it unless rank 1
    everywhere already is: each matrix first gets its share (the same ratio for all), the highest ranks
    give way while the total is over, then ranks grow (largest matrix first) while they still fit.
    `shapes` are one direction's matrices; `target` counts all `directions`."""
    dense = sum(r * c for r, c in shapes.values())
    ratio = dense / target
    ranks = {k: max(1, math.floor(r * c / ratio) // (r + c)) for k, (r, c) in shapes.items()}

    def cost() -> int:
        return directions * sum(ranks[k] * sum(shapes[k]) for k in shapes)

    while cost() > target and max(ranks.values()) > 1:
        top = max(ranks, key=lambda k: (ranks[k], sum(shapes[k])))
        ranks[top] -= 1
    grown = True
    while grown:
        grown = False
        for k in sorted(shapes, key=lambda k: -shapes[k][0] * shapes[k][1]):
            if ranks[k] < min(shapes[k]) and cost() + directions * sum(shapes[k]) <= target:
                ranks[k] += 1
                grown = True
    return ranks


def largest_hidden(hidden: int, fits: Callable[[int], bool]) -> int:
    """The largest H' in 1..hidden for which fits(H') holds (fits must only turn false as H' grows); 1 if none."""
    lo, hi = 1, hidden
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def small_hidden_size(cell: str, input_size: int, hidden: int, num_layers: int, bidirectional: bool,
                      ratio: float) -> int:
    """The largest H' whose recurrent matrices total at most (the dense network's total) / ratio."""
    dirs = 2 if bidirectional else 1

    def total(h: int) -> int:
        g = cells.get(cell).gates
        n = g * h * (input_size + h)
        n += (num_layers - 1) * g * h * (dirs * h + h)
        return dirs * n

    budget = total(hidden) / ratio
    return largest_hidden(hidden, lambda h: total(h) <= budget)


def dense_param_counts(cell: str, input_size: int, hidden: int, num_classes: int, num_layers: int = 1,
                       bidirectional: bool = False) -> tuple[int, int]:
    """(whole network, recurrent matrices) parameters of the dense network, counted on the torch module."""
    m = KPRNNClassifier(cell, input_size, hidden, num_classes, "dense", "dense", num_layers=num_layers,
                        bidirectional=bidirectional)
    return sum(p.numel() for p in m.parameters()), sum(mm.weight_params for _, mm in m.matrices())


def with_matrices(src: KPRNNClassifier, wx: object, wh: object, seed: int = 0) -> KPRNNClassifier:
    """src's network with the matrix specs wx, wh (one per layer, or one for all), initialised from src."""
    torch.manual_seed(seed)
    model = KPRNNClassifier(src.cell, src.input_size, src.hidden_size, src.num_classes, wx, wh,
                            num_layers=src.num_layers, bidirectional=src.bidirectional)
    return init_from_dense(model, src)


def build_compressed(src: KPRNNClassifier, method: str, ratio: float | None, seed: int = 0,
                     control: MatrixControl | None = None) -> KPRNNClassifier:
    """The compressed model, initialised from src (all but `small`, which starts from random weights).
    control: per-matrix factors, 'dense' or ratios (kp and hkp only); ratio may then be None."""
    if method not in METHODS:
        raise KpgenError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    if control is not None and control.given and method not in ("kp", "hkp"):
        raise KpgenError(f"per-matrix options (--wx-factors, --wh-factors, --keep-dense, --wx-ratio, --wh-ratio) "
                         f"apply to --method kp and hkp, not {method}; drop them or change --method")
    if ratio is None and method not in ("kp", "hkp"):
        raise KpgenError(f"--method {method} needs --ratio")
    given = control or MatrixControl()
    for opt, r in (("--ratio", ratio), ("--wx-ratio", given.wx_ratio), ("--wh-ratio", given.wh_ratio)):
        if r is not None and not r >= 1:
            raise KpgenError(f"{opt} {r} must be at least 1")
    torch.manual_seed(seed)
    if method == "small":
        assert ratio is not None
        h = small_hidden_size(src.cell, src.input_size, src.hidden_size, src.num_layers, src.bidirectional, ratio)
        return KPRNNClassifier(src.cell, src.input_size, h, src.num_classes, "dense", "dense",
                               num_layers=src.num_layers, bidirectional=src.bidirectional)
    try:
        wx, wh = _specs_for(src, method, ratio, control)
    except ValueError as e:
        raise KpgenError(f"--ratio {ratio}: {e}") from None
    return with_matrices(src, wx, wh, seed)


def init_from_dense(model: KPRNNClassifier, src: KPRNNClassifier) -> KPRNNClassifier:
    """model (same cell, sizes and direction as src, other matrices) initialised from src: every matrix from
    src's explicit dense matrix (init_matrix), everything else (biases, FastRNN scalars, head) copied."""
    dense = _dense_matrices(src)
    matrix_names = {n for n, _ in model.matrices()}
    with torch.no_grad():
        src_params = dict(src.named_parameters())
        for name, p in model.named_parameters():
            if not any(name.startswith(m + ".") for m in matrix_names):
                p.copy_(src_params[name])
        for name, mat in model.matrices():
            init_matrix(mat, dense[name])
    return model


@torch.no_grad()
def init_matrix(mat: Matrix, w: torch.Tensor) -> None:
    """Set a matrix module to the best approximation of w its structure allows."""
    if isinstance(mat, KPLinear):
        for p, f in zip(mat.factor_list(), nearest_kp_n(w, mat.factor_shapes), strict=True):
            p.copy_(f)
    elif isinstance(mat, HKPLinear):
        r = mat.dense_rows
        w = w[mat.stacked_rows()]  # the dense rows first (spread over the gates or on top), then the others
        mat.dense_weight.copy_(w[:r])
        init_matrix(mat.kp, w[r:])
    elif isinstance(mat, LowRankLinear):
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        root = s[: mat.rank].sqrt()
        mat.u.copy_(u[:, : mat.rank] * root)
        mat.v.copy_(root[:, None] * vh[: mat.rank])
    else:
        mat.weight.copy_(w)


# -------------------------------------------------------------------------------------- gradual pruning


def sparsity_at(step: int, total: int, final: float, begin: float = 0.0, end: float = 0.6) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 with s_i = 0, pruning from
    begin*total to end*total steps (then held at s_f for the rest of fine-tuning)."""
    t0, t1 = begin * total, end * total
    if step <= t0:
        return 0.0
    if step >= t1:
        return final
    return final * (1.0 - (1.0 - (step - t0) / (t1 - t0)) ** 3)


class MagnitudePruner:
    """Keeps the largest-magnitude weights of every recurrent matrix (layer-wise), zeroing the rest after each
    optimizer step; the kept fraction follows sparsity_at and masks are recomputed every `every` steps."""

    def __init__(self, model: KPRNNClassifier, final_sparsity: float, every: int = 10):
        self.weights = []
        for name, m in model.matrices():
            if not isinstance(m, DenseLinear):
                raise ValueError(f"magnitude pruning needs dense matrices; {name} is a {type(m).__name__}")
            self.weights.append(m.weight)
        self.masks = [torch.ones_like(w, dtype=torch.bool) for w in self.weights]
        self.final = final_sparsity
        self.every = max(1, every)

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        for i, w in enumerate(self.weights):
            keep = w.numel() - int(round(sparsity * w.numel()))
            keep = max(1, keep)
            thresh_idx = torch.topk((w * self.masks[i]).abs().flatten(), keep).indices
            mask = torch.zeros(w.numel(), dtype=torch.bool)
            mask[thresh_idx] = True
            self.masks[i] = mask.reshape(w.shape)

    @torch.no_grad()
    def apply(self) -> None:
        for w, m in zip(self.weights, self.masks, strict=True):
            w.mul_(m)

    def __call__(self, step: int, total: int) -> None:
        if step % self.every == 0 or step >= total:
            self.prune_to(sparsity_at(step, total, self.final))
        self.apply()

    def nonzeros(self) -> int:
        return int(sum(int((w != 0).sum()) for w in self.weights))


# ------------------------------------------------------------------------------------------- the whole job


def matrix_params(model: KPRNNClassifier) -> int:
    """Parameters of the recurrent matrices (nonzeros for dense matrices, so pruning counts)."""
    n = 0
    for _, m in model.matrices():
        n += int((m.weight != 0).sum()) if isinstance(m, DenseLinear) else m.weight_params
    return n


def param_counts(model: KPRNNClassifier) -> tuple[int, int]:
    """(whole network, recurrent matrices) parameters; dense matrices count their nonzeros (pruning)."""
    mats = matrix_params(model)
    total = sum(p.numel() for p in model.parameters()) - sum(m.weight_params for _, m in model.matrices()) + mats
    return int(total), int(mats)


def compress_checkpoint(
    source: str | Path,
    method: str,
    ratio: float | None,
    dataset: str | None = None,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 2e-2,
    seed: int = 0,
    max_train: int | None = None,
    log: Callable[[str], None] = print,
    data: str | Path | None = None,
    test: str | Path | None = None,
    control: MatrixControl | None = None,
    distill: bool = False,
    temperature: float = 4.0,
    alpha: float = 0.5,
    qat_epochs: int = 0,
    qat_lr: float | None = None,
) -> dict:
    """Compress the dense model in `source` with `method` to `ratio` (or per matrix: control), fine-tune it on a
    built-in `dataset` or the user's `data` file (held-out evaluation on `test`, else on a 20% split of data),
    return the checkpoint dict. A state dict's reading is checked against data's logits when it has them.
    distill: fine-tune against the dense source's soft outputs too (kpgen.train.loop.distill_loss with temperature
    and alpha). qat_epochs > 0: then a quantization-aware phase (kpgen.train.qat) at qat_lr (default lr / 10)."""
    from kpgen.frontend.userdata import load_user_data, to_split
    from kpgen.train.loop import accuracy, calibrate, fit, load_split, make_checkpoint, set_determinism

    t0 = time.perf_counter()
    if qat_epochs > 0 and method == "lowrank":
        raise KpgenError("--qat: low-rank matrices have no integer kernel, so there is nothing to simulate; "
                         "drop --qat or use --method kp, hkp, prune or small")
    if data is not None and dataset is not None:
        raise KpgenError("give --dataset NAME or --data FILE, not both")
    user = None
    if data is not None:
        probe, _ = read_source(source, any_reading=True)
        user = load_user_data(data, input_size=probe.input_size, num_classes=probe.num_classes)
    src, src_meta = read_source(source, data=user)
    dataset = dataset or (None if user is not None else src_meta.get("dataset"))
    if user is None and not dataset:
        raise KpgenError(f"{source}: names no dataset; pass --data FILE.npz (docs/byom.md) or --dataset (one of "
                         f"{', '.join(datasets.LOADERS)})")
    set_determinism(seed)
    if user is not None:
        held = None if test is None else load_user_data(test, input_size=src.input_size, num_classes=src.num_classes)
        split = to_split(user, held, seed)
        x_tr, y_tr = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
        if max_train is not None:
            x_tr, y_tr = x_tr[:max_train], y_tr[:max_train]
        x_te, y_te = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
        shift = 0
    else:
        assert dataset is not None
        split, x_tr, y_tr, x_te, y_te = load_split(dataset, seed, max_train)
        shift = datasets.MAX_SHIFT.get(dataset, 0)
    if split.num_features != src.input_size or split.num_classes > src.num_classes:
        raise KpgenError(
            f"{source}: the model takes {src.input_size} features and {src.num_classes} classes, dataset {dataset!r} "
            f"has {split.num_features} and {split.num_classes}; pass the --dataset it was trained on"
        )
    src_acc = accuracy(src, x_te, y_te)
    model = build_compressed(src, method, ratio, seed, control)
    init_acc = accuracy(model, x_te, y_te)
    log(f"{method}: dense test accuracy {src_acc:.4f}; compressed before fine-tuning {init_acc:.4f}")
    pruner = MagnitudePruner(model, 1.0 - 1.0 / ratio) if method == "prune" and ratio is not None else None
    teacher = src if distill else None
    test_acc = fit(model, x_tr, y_tr, x_te, y_te, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                   max_shift=shift, log=log, after_step=pruner, teacher=teacher, temperature=temperature, alpha=alpha)
    if pruner is not None:
        pruner.prune_to(pruner.final)
        pruner.apply()
        test_acc = accuracy(model, x_te, y_te)
    qat_report = None
    if qat_epochs > 0:
        from kpgen.train import qat

        keep = (lambda step, total: pruner.apply()) if pruner is not None else None  # pruned weights stay zero
        qat_report = qat.finetune(model, x_tr, y_tr, x_te, y_te, epochs=qat_epochs, batch_size=batch_size,
                                  lr=qat_lr if qat_lr is not None else lr * qat.QAT_LR_FACTOR, seed=seed,
                                  max_shift=shift, method=method, after_step=keep, teacher=teacher,
                                  temperature=temperature, alpha=alpha, log=log)
        test_acc = accuracy(model, x_te, y_te)
    dense_m = sum(m.in_features * m.out_features for _, m in src.matrices())
    total, kept_m = param_counts(model)
    meta: dict[str, object] = {
        "dataset": dataset,
        "seq_len": split.seq_len,
        "float_test_accuracy": float(test_acc),
        "method": method,
        "ratio": float(ratio if ratio is not None else dense_m / kept_m),
        "compressed_from": Path(source).name,
        "source_test_accuracy": float(src_acc),
        "init_test_accuracy": float(init_acc),
        "matrix_params_dense": int(dense_m),
        "matrix_params": int(kept_m),
        "matrix_compression": round(dense_m / kept_m, 2),
        "model_params_dense": int(sum(p.numel() for p in src.parameters())),
        "model_params": int(total),
        "epochs": int(epochs),
        "seed": int(seed),
        "train_seconds": float(time.perf_counter() - t0),
        "torch_version": str(torch.__version__),
    }
    if user is not None:
        del meta["dataset"]
        meta["data_file"] = user.source
    if distill:
        meta["distill"] = {"temperature": float(temperature), "alpha": float(alpha)}
    if qat_report is not None:
        meta["qat"] = qat_report
    log(
        f"{method}: float test accuracy {test_acc:.4f}; matrices {dense_m:,} -> {kept_m:,} parameters "
        f"({dense_m / kept_m:.2f}x), model {meta['model_params_dense']:,} -> {total:,}"
    )
    if qat_report is not None:
        from kpgen.train.qat import Agreement

        log(Agreement(**{k: qat_report[k] for k in Agreement.__dataclass_fields__}).line())
    return make_checkpoint(model, calibrate(model, x_tr), meta, method=method)
