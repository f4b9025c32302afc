"""Factor planning: which Kronecker factor shapes (and how many dense HKP rows) to give a rows x cols matrix.

Every candidate is scored by three numbers (docs/compression.md):
- parameters: sum of m_j * n_j over the factors (plus dense rows * cols for HKP);
- MACs of one product by successive mode products (two factors: n1*n2*m2 + m1*n1*m2, i.e. vec(A X B^T));
- the rank bound: rank(A (x) B) = rank(A) rank(B) <= min(m1, n1) * min(m2, n2), and never more than
  min(rows, cols). A Kronecker product cannot be more expressive than its rank allows, so the bound comes first.

Order, best first: KP by rank bound (high first), then cost = parameters + MACs (low first: weights stored
and multiply-accumulates per product, so neither flash nor time is traded away for a sliver of the other),
then parameters, then padding (none first). HKP gives every unpadded KP candidate the most dense rows the budget
leaves room for without lowering the Kronecker part's rank (`hkp_from`: the budget picks r), ordered by the same
rule with the Kronecker part's own rank bound after the overall one (dense rows must not stand in for a weak
product).

Awkward dimensions (a large prime factor, e.g. 156 = 2*2*3*13 or 158 = 2*79) leave few balanced factor
shapes. For such a dimension (a prime factor > 7) the planner also tries padding it up to the next few
7-smooth sizes within `pad` (a fraction, default 12.5%): x gets zero entries, the extra outputs are dropped,
and parameters and MACs are counted on the padded shape, so a padded candidate ranks first only where it is
cheaper for the same rank bound. Dimensions whose prime factors are all <= 7 are never padded.

With a board, every candidate also gets its predicted instructions for one product W v on that board's core
(kpgen.train.cost, fitted to QEMU counts). `by="instructions"` orders by rank bound, then predicted
instructions; `kpgen train` and `kpgen compress` pick with `pick_kp` / `pick_hkp`: the default order's first
candidate, unless one with the same rank bound and no more parameters is predicted faster on COST_BOARD.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from kpgen import KpgenError, cells
from kpgen.tables import text_table
from kpgen.train import cost as costmodel
from kpgen.train.nn.kp import kp_macs
from kpgen.train.nn.matrix import matrix_spec, spec_params

Shape2 = tuple[int, int]
DEFAULT_PAD = 0.125
MAX_PAD_SIZES = 3  # padded sizes tried per dimension, besides the exact one
COST_BOARD = "m4"  # the core `kpgen train` and `kpgen compress` predict instructions for (the demo's board)
ORDERS = ("rank", "instructions")


@dataclass(frozen=True)
class Candidate:
    """One way to compress a rows x cols matrix: a Kronecker product, or HKP (dense_rows > 0)."""

    rows: int
    cols: int
    factors: tuple[Shape2, ...]  # shapes of the Kronecker part
    dense_rows: int = 0  # HKP: the top rows of W kept dense

    @property
    def kind(self) -> str:
        return "hkp" if self.dense_rows else "kp"

    @property
    def kp_shape(self) -> tuple[int, int]:
        """The matrix the Kronecker factors make (padded if larger than the rows and columns they cover)."""
        return math.prod(f[0] for f in self.factors), math.prod(f[1] for f in self.factors)

    @property
    def padded(self) -> bool:
        m, n = self.kp_shape
        return (m + self.dense_rows, n) != (self.rows, self.cols)

    @property
    def params(self) -> int:
        return self.dense_rows * self.cols + sum(m * n for m, n in self.factors)

    @property
    def macs(self) -> int:
        return self.dense_rows * self.cols + kp_macs(self.factors)

    @property
    def kp_rank_bound(self) -> int:
        """Rank bound of the Kronecker part alone (on the rows it covers)."""
        kp_rank = math.prod(min(m, n) for m, n in self.factors)
        return min(self.rows - self.dense_rows, self.cols, kp_rank)

    @property
    def rank_bound(self) -> int:
        return min(self.rows, self.cols, self.dense_rows + self.kp_rank_bound)

    @property
    def compression(self) -> float:
        return self.rows * self.cols / self.params

    def spec(self) -> dict:
        """The kpgen.train.nn.matrix spec of this candidate (for KPRNNClassifier and checkpoints)."""
        factors = [list(f) for f in self.factors]
        if self.dense_rows:
            return {"kind": "hkp", "factors": factors, "dense_rows": self.dense_rows}
        return {"kind": "kp", "factors": factors, "pad": True} if self.padded else {"kind": "kp", "factors": factors}

    def describe(self) -> str:
        text = " (x) ".join(f"{m}x{n}" for m, n in self.factors)
        return f"{self.dense_rows} dense rows + {text}" if self.dense_rows else text

    def instructions(self, core: costmodel.CoreCost) -> float:
        """Predicted instructions of one product W v on `core`."""
        return core.matrix_instructions(costmodel.MatrixShape(self.factors, self.dense_rows))


@dataclass
class Plan:
    rows: int
    cols: int
    budget: int | None  # maximum parameters, None for no limit
    num_factors: int
    kp: list[Candidate] = field(default_factory=list)
    hkp: list[Candidate] = field(default_factory=list)
    core: costmodel.CoreCost | None = None  # predicts instructions when given
    by: str = "rank"  # one of ORDERS


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def ordered_factorizations(n: int, k: int) -> Iterator[tuple[int, ...]]:
    """Every (d1, ..., dk) of positive ints with d1 * ... * dk = n, in lexicographic order."""
    if k == 1:
        yield (n,)
        return
    for d in divisors(n):
        for rest in ordered_factorizations(n // d, k - 1):
            yield (d, *rest)


def largest_prime_factor(n: int) -> int:
    p, best = 2, 1
    while p * p <= n:
        while n % p == 0:
            best, n = p, n // p
        p += 1
    return max(best, n) if n > 1 else best


def sizes_to_try(n: int, pad: float) -> list[int]:
    """n itself; if n is awkward (a prime factor > 7), also up to MAX_PAD_SIZES 7-smooth sizes in (n, n * (1 + pad)]."""
    out = [n]
    if largest_prime_factor(n) <= 7:
        return out
    for m in range(n + 1, int(math.floor(n * (1.0 + pad))) + 1):
        if len(out) > MAX_PAD_SIZES:
            break
        if largest_prime_factor(m) <= 7:
            out.append(m)
    return out


def kp_key(c: Candidate) -> tuple:
    return (-c.rank_bound, -c.kp_rank_bound, c.params + c.macs, c.params, c.padded, c.factors)


def instructions_key(core: costmodel.CoreCost):
    """Order by rank bound (a faster product of lower rank is not the same model), then predicted instructions."""
    return lambda c: (-c.rank_bound, -c.kp_rank_bound, round(c.instructions(core)), c.params, c.padded, c.factors)


def prefer_faster(cands: list[Candidate], core: costmodel.CoreCost | None) -> Candidate | None:
    """cands[0] (the default order's first), unless a candidate with at least its rank bounds and at most its
    parameters is predicted to take fewer instructions on `core`: then the fastest of those."""
    if not cands:
        return None
    first = cands[0]
    if core is None:
        return first
    ok = [c for c in cands if c.rank_bound >= first.rank_bound and c.kp_rank_bound >= first.kp_rank_bound
          and c.params <= first.params]  # fmt: skip
    best = min(ok, key=instructions_key(core))
    return best if round(best.instructions(core)) < round(first.instructions(core)) else first


def planning_core(board: str | None = COST_BOARD) -> costmodel.CoreCost | None:
    """The package's cost model for `board`, or None (no board, or no usable model: the default order then)."""
    if board is None:
        return None
    try:
        return costmodel.for_board(board)
    except KpgenError:
        return None


def kp_candidates(
    rows: int, cols: int, num_factors: int = 2, budget: int | None = None, pad: float = DEFAULT_PAD
) -> list[Candidate]:
    """Every Kronecker factorization of rows x cols (padded sizes too, if pad > 0) within budget, best first.

    Factors of shape 1x1 are left out (a scalar factor is no compression); with one factor the only
    candidate is the dense matrix.
    """
    if rows < 1 or cols < 1 or num_factors < 1:
        raise ValueError("rows, cols and the number of factors must be positive")
    seen: dict[tuple, Candidate] = {}
    for m in sizes_to_try(rows, pad):
        for n in sizes_to_try(cols, pad):
            for ms in ordered_factorizations(m, num_factors):
                for ns in ordered_factorizations(n, num_factors):
                    shapes = tuple(zip(ms, ns, strict=True))
                    if num_factors > 1 and (1, 1) in shapes:
                        continue
                    c = Candidate(rows, cols, shapes)
                    if budget is None or c.params <= budget:
                        seen[shapes] = c
    return sorted(seen.values(), key=kp_key)


def hkp_from(c: Candidate, budget: int) -> Candidate | None:
    """The HKP candidate built on c's factors with the most dense rows that fit the budget, or None.

    Dropping j rows of the first factor removes j * (m2 * ... * mk) rows of the product; those rows become
    dense. So dense_rows is a multiple of m2 * ... * mk and the remaining factors stay c's. j stops where the
    first factor would lose rank (m1 - j >= min(m1, n1)): the dense rows add to the Kronecker part, never
    replace its rank.
    """
    if c.padded or c.dense_rows:
        return None
    (m1, n1), rest = c.factors[0], c.factors[1:]
    block = math.prod(f[0] for f in rest)
    best = None
    for j in range(1, m1 - min(m1, n1) + 1):
        h = Candidate(c.rows, c.cols, ((m1 - j, n1), *rest), dense_rows=j * block)
        if h.params > budget:
            break
        best = h
    return best


def hkp_candidates(rows: int, cols: int, budget: int, num_factors: int = 2) -> list[Candidate]:
    """HKP candidates, one per KP factor choice that leaves room for dense rows, best first (as KP)."""
    out = []
    for c in kp_candidates(rows, cols, num_factors, budget=budget, pad=0.0):
        h = hkp_from(c, budget)
        if h is not None:
            out.append(h)
    return sorted(out, key=kp_key)


def budget_for(rows: int, cols: int, ratio: float | None = None, max_params: int | None = None) -> int | None:
    """The parameter budget: rows*cols/ratio (rounded down), max_params, or the smaller of both."""
    limits = []
    if ratio is not None:
        if ratio <= 0:
            raise ValueError(f"ratio must be positive, got {ratio}")
        limits.append(int(math.floor(rows * cols / ratio)))
    if max_params is not None:
        limits.append(int(max_params))
    return min(limits) if limits else None


def plan(
    rows: int,
    cols: int,
    ratio: float | None = None,
    max_params: int | None = None,
    num_factors: int = 2,
    pad: float = DEFAULT_PAD,
    core: costmodel.CoreCost | None = None,
    by: str = "rank",
) -> Plan:
    """KP candidates within the budget, and (when there is a budget) HKP candidates that spend it; with a core,
    each with its predicted instructions, ordered by rank bound then instructions if by == "instructions"."""
    if by not in ORDERS:
        raise ValueError(f"unknown order {by!r}")
    if by == "instructions" and core is None:
        raise ValueError("ordering by instructions needs a core's cost model")
    budget = budget_for(rows, cols, ratio, max_params)
    p = Plan(rows, cols, budget, num_factors, core=core, by=by)
    p.kp = kp_candidates(rows, cols, num_factors, budget, pad)
    if budget is not None:
        p.hkp = hkp_candidates(rows, cols, budget, num_factors)
    if core is not None and by == "instructions":
        p.kp.sort(key=instructions_key(core))
        p.hkp.sort(key=instructions_key(core))
    return p


def best_kp(rows: int, cols: int, budget: int | None, num_factors: int = 2, pad: float = 0.0) -> Candidate:
    """The best KP candidate within budget; ValueError if none fits."""
    cands = kp_candidates(rows, cols, num_factors, budget, pad)
    if not cands:
        raise ValueError(f"no {num_factors}-factor Kronecker product of a {rows}x{cols} matrix "
                         f"has <= {budget} parameters")
    return cands[0]


def best_hkp(rows: int, cols: int, budget: int, num_factors: int = 2) -> Candidate:
    """The best HKP candidate within budget, or the best KP one if no dense row fits."""
    cands = hkp_candidates(rows, cols, budget, num_factors)
    return cands[0] if cands else best_kp(rows, cols, budget, num_factors)


def pick_kp(rows: int, cols: int, budget: int | None, num_factors: int = 2, pad: float = 0.0,
            board: str | None = COST_BOARD) -> Candidate:
    """best_kp, or a candidate of the same rank bound and no more parameters predicted faster on `board`."""
    best = prefer_faster(kp_candidates(rows, cols, num_factors, budget, pad), planning_core(board))
    return best if best is not None else best_kp(rows, cols, budget, num_factors, pad)  # best_kp: the error


def pick_hkp(rows: int, cols: int, budget: int, num_factors: int = 2, board: str | None = COST_BOARD) -> Candidate:
    """best_hkp, or a candidate of the same rank bounds and no more parameters predicted faster on `board`."""
    best = prefer_faster(hkp_candidates(rows, cols, budget, num_factors), planning_core(board))
    return best if best is not None else pick_kp(rows, cols, budget, num_factors, board=board)


def _table(cands: list[Candidate], top: int, core: costmodel.CoreCost | None = None) -> list[str]:
    """The candidates `kpgen plan` lists, best first, as an aligned table (at most `top` rows); with a core, the
    predicted instructions of one product W v beside the rank bound."""
    rows: list[tuple] = []
    for i, c in enumerate(cands[:top], 1):
        m, n = c.kp_shape
        shape = f"{m + c.dense_rows}x{n}" + (" pad" if c.padded else "")
        row: tuple = (i, c.describe(), shape, f"{c.params:,}", f"{c.compression:.2f}x", f"{c.macs:,}", c.rank_bound)
        rows.append(row + ((f"{c.instructions(core):,.0f}",) if core is not None else ()))
    head: tuple = ("#", "factors", "matrix", "params", "compress", "MACs", "rank<=")
    align, widths = "rlrrrrr", [3, 33, 11, 8, 9, 9, 6]
    if core is not None:
        head, align, widths = head + (f"instr {core.board}",), align + "r", widths + [9]
    lines = text_table(rows, head, align=align, min_widths=tuple(widths), indent="  ")
    if len(cands) > top:
        lines.append(f"  ... {len(cands) - top} more (--top N)")
    return lines


def format_plan(p: Plan, top: int = 10) -> str:
    """The plan as the text `kpgen plan` prints."""
    dense = p.rows * p.cols
    budget = f"; budget {p.budget:,} parameters ({dense / p.budget:.2f}x)" if p.budget else ""
    lines = [f"W {p.rows}x{p.cols}: {dense:,} weights, {dense:,} MACs dense, rank <= {min(p.rows, p.cols)}{budget}"]
    if p.core is not None:
        dense_instr = p.core.matrix_instructions(costmodel.MatrixShape(((p.rows, p.cols), (1, 1))))
        lines.append(f"instr {p.core.board}: predicted instructions of one product W v on the {p.core.board} "
                     f"({p.core.core}; dense: {dense_instr:,.0f}), kpgen.train.cost")
    lines.append("")
    then = "predicted instructions" if p.by == "instructions" else "parameters + MACs"
    lines.append(f"Kronecker products ({p.num_factors} factors), best first (rank bound, then {then}):")
    lines += _table(p.kp, top, p.core) if p.kp else ["  none fits the budget"]
    if p.budget is not None:
        lines += ["", "Hybrid KP (top rows dense, the rest Kronecker), best first (same order):"]
        lines += _table(p.hkp, top, p.core) if p.hkp else ["  no dense row fits the budget"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ factor shapes for `kpgen train`

TRAIN_METHODS = ("kp", "hkp", "dense")


def parse_shapes(text: str) -> list[list[int]] | str:
    """'4x2,4x2,8x7' -> [[4, 2], [4, 2], [8, 7]] (F1's shape first, any number >= 2 of factors); 'dense' ->
    'dense'; ValueError if malformed."""
    t = text.strip().lower()
    if t == "dense":
        return "dense"
    try:
        shapes = [[int(v) for v in part.strip().split("x")] for part in t.split(",")]
        ok = all(len(s) == 2 and s[0] >= 1 and s[1] >= 1 for s in shapes)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"factor shapes {text!r} are not of the form M1xN1,M2xN2[,...] with positive sizes "
                         f"(e.g. 16x2,32x14), nor 'dense'")
    if len(shapes) < 2:
        raise ValueError(f"factor shapes {text!r}: a Kronecker product needs at least two factors "
                         f"(e.g. 16x2,32x14); give 'dense' for an uncompressed matrix")
    return shapes


def shapes_text(shapes) -> str:
    """[[16, 2], [32, 14]] -> '16x2,32x14' (the command-line form)."""
    return ",".join(f"{m}x{n}" for m, n in shapes)


@dataclass(frozen=True)
class MatrixChoice:
    """The spec `kpgen train` gives one matrix (Wx or Wh of the first layer), and where it came from."""

    name: str  # 'Wx' or 'Wh'
    rows: int
    cols: int
    spec: dict | str  # a kpgen.train.nn.matrix spec
    source: str  # 'given', 'method' (--method dense), 'default' (the demo's shapes) or 'planned'

    def describe(self) -> str:
        params = spec_params(self.spec, self.rows, self.cols)
        what = describe_spec(self.spec)
        how = {"given": "as given", "method": "--method dense", "default": "the demo's default",
               "planned": f"planned: highest rank bound, then fewest parameters + MACs or, at no more "
                          f"parameters, fewest predicted {COST_BOARD} instructions"}[self.source]
        return (f"{self.name} {self.rows}x{self.cols}: {what}, {params:,} parameters "
                f"({self.rows * self.cols / params:.2f}x), rank <= {spec_rank_bound(self.spec, self.rows, self.cols)} "
                f"({how})")


HKP_ROWS = ("auto", "gates", "top")  # where HKP's dense rows go (kpgen train/compress --hkp-rows)
SPREAD_CELLS = ("lstm",)  # "auto" spreads these cells' dense rows over the gates (docs/compression.md, "Hybrid KP")


def hkp_row_groups(cell: str, dense_rows: int, where: str = "auto") -> int:
    """top_groups of an HKP matrix of `cell` with `dense_rows` dense rows: the cell's gate count G where the rows
    are spread over the gates, else 1 (on top). where: 'gates' spreads wherever G > 1 divides dense_rows; 'top'
    never; 'auto' as 'gates' for the cells in SPREAD_CELLS (the LSTM: better on MNIST rows and BasicMotions) and
    as 'top' for the rest (the GRU: worse on JapaneseVowels, docs/results.md)."""
    if where not in HKP_ROWS:
        raise ValueError(f"unknown HKP row placement {where!r}: expected one of {', '.join(HKP_ROWS)}")
    g = cells.get(cell).gates
    spread = where == "gates" or (where == "auto" and cell in SPREAD_CELLS)
    return g if spread and dense_rows > 0 and g > 1 and dense_rows % g == 0 else 1


def train_specs(
    cell: str,
    input_size: int,
    hidden_size: int,
    method: str = "kp",
    wx: list | str | None = None,
    wh: list | str | None = None,
    dense_rows: int | None = None,
    preferred: tuple = (None, None),
    context: str = "",
    hkp_rows: str = "auto",
) -> tuple[MatrixChoice, MatrixChoice]:
    """The Wx and Wh specs of a model `kpgen train` builds, checked; KpgenError (one line, with the fix) if bad.

    wx / wh: factor shapes as given (any number of factors), 'dense', or None: `preferred` (the demo's shapes)
    where they make the matrix, else the planner's best unpadded 2-factor product (pick_kp: highest rank bound,
    then fewest parameters + MACs, or fewer predicted instructions). method: kp, hkp (dense_rows rows dense: the
    top ones, or dense_rows / G of each gate where a gated cell's G gates divide them; the factors make the rest)
    or dense; hkp_rows: where the dense rows go (hkp_row_groups).
    Layers after the first reuse Wh's spec for their input matrix (kpgen.train.nn.KPRNNClassifier), so checking the
    first layer's two matrices checks them all. context names the model in messages
    (" with --hidden 128 over the 28 inputs of mnist").
    """
    if cell not in cells.REGISTRY:
        raise ValueError(f"unknown cell {cell!r}")
    if method not in TRAIN_METHODS:
        raise ValueError(f"unknown method {method!r}")
    c = cells.get(cell)
    g, rows = c.gates, c.gates * hidden_size
    model = f"{c.article} {c.title}{context}"
    gh = f"{g}H" if g > 1 else "H"
    if method != "hkp" and dense_rows is not None:
        raise KpgenError("--dense-rows applies to --method hkp only; drop it, or pass --method hkp")
    if method == "dense":
        given = [opt for opt, v in (("--wx-factors", wx), ("--wh-factors", wh)) if v is not None and v != "dense"]
        if given:
            raise KpgenError(f"{' and '.join(given)} do not apply to --method dense (every matrix is dense); "
                             f"drop them, or use --method kp or hkp")
        return (MatrixChoice("Wx", rows, input_size, {"kind": "dense"}, "method"),
                MatrixChoice("Wh", rows, hidden_size, {"kind": "dense"}, "method"))
    if method == "hkp":
        if dense_rows is None:
            block = _first_block(rows, input_size)
            raise KpgenError(f"--method hkp needs --dense-rows R: R of the {rows} rows of Wx and Wh "
                             f"({gh} for {model}) stay dense, the rest is a Kronecker product; e.g. --dense-rows "
                             f"{block}")
        if dense_rows >= rows:
            raise KpgenError(f"--dense-rows {dense_rows} leaves no rows for the Kronecker part: Wx and Wh of "
                             f"{model} have {rows} rows ({gh}); use fewer than {rows}")
    r = 0 if dense_rows is None else dense_rows  # given for --method hkp only (checked above)
    out = []
    for name, opt, value, cols, pref, side in (
        ("Wx", "--wx-factors", wx, input_size, preferred[0], "inputs"),
        ("Wh", "--wh-factors", wh, hidden_size, preferred[1], "H"),
    ):
        what = f"{name} of {model} is {gh} x {side} = {rows}x{cols}"
        groups = hkp_row_groups(cell, r, hkp_rows)
        if r:
            where = f"{r // g} rows of each gate" if groups > 1 else f"its top {r} rows"
            what += f", {where} dense (--dense-rows {r}), so its Kronecker part is {rows - r}x{cols}"
        if value == "dense":
            out.append(MatrixChoice(name, rows, cols, {"kind": "dense"}, "given"))
            continue
        if value is not None:
            m, n = _product(value)
            if (m, n) != (rows - r, cols):
                best = _best_or_none(rows - r, cols)
                hint = f"e.g. {shapes_text(best.factors)} " if best else ""
                raise KpgenError(f"{opt} {shapes_text(value)} make a {m}x{n} matrix, but {what}; give shapes whose "
                                 f"rows multiply to {rows - r} and columns to {cols}, {hint}(`kpgen plan --rows "
                                 f"{rows - r} --cols {cols}` lists candidates)")
            shapes, source = value, "given"
        elif pref is not None and not r and _product(pref) == (rows, cols):
            shapes, source = pref, "default"
        else:
            best = _pick_or_none(rows - r, cols)
            if best is None:
                raise KpgenError(f"no 2-factor Kronecker product makes a {rows - r}x{cols} matrix ({what}); give "
                                 f"{opt} dense, use --method dense, or more hidden units")
            shapes, source = [list(f) for f in best.factors], "planned"
        shapes = [list(map(int, s)) for s in shapes]
        spec: dict[str, object] = {"kind": "kp", "factors": shapes}
        if r:
            spec = {"kind": "hkp", "factors": shapes, "dense_rows": r}
            if groups > 1:
                spec["top_groups"] = groups
        out.append(MatrixChoice(name, rows, cols, spec, source))
    return out[0], out[1]


def _product(shapes) -> tuple[int, int]:
    """The size of the matrix the factor shapes make."""
    return math.prod(int(s[0]) for s in shapes), math.prod(int(s[1]) for s in shapes)


def _best_or_none(rows: int, cols: int) -> Candidate | None:
    try:
        return best_kp(rows, cols, None, num_factors=2, pad=0.0)
    except ValueError:
        return None


def _pick_or_none(rows: int, cols: int) -> Candidate | None:
    try:
        return pick_kp(rows, cols, None, num_factors=2, pad=0.0)
    except ValueError:
        return None


def _first_block(rows: int, cols: int) -> int:
    """Rows one row of the best product's first factor covers (m2): the smallest dense block HKP adds."""
    best = _best_or_none(rows, cols)
    return math.prod(f[0] for f in best.factors[1:]) if best else 1


def model_matrix_counts(cell: str, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool,
                        wx_specs: list, wh_specs: list) -> tuple[int, int]:
    """(dense weights, stored weights) of every recurrent matrix of a model, both directions counted."""
    dirs = 2 if bidirectional else 1
    rows = cells.get(cell).gates * hidden_size
    dense = kept = 0
    for k in range(num_layers):
        for spec, cols in ((wx_specs[k], input_size if k == 0 else dirs * hidden_size), (wh_specs[k], hidden_size)):
            dense += dirs * rows * cols
            kept += dirs * spec_params(spec, rows, cols)
    return dense, kept


# -------------------------------------------------------------------------------- every matrix of a checkpoint


def spec_rank_bound(spec: object, rows: int, cols: int) -> int:
    """The rank bound of a rows x cols matrix under a kpgen.train.nn.matrix spec."""
    s = matrix_spec(spec)
    if s["kind"] in ("kp", "hkp"):
        return Candidate(rows, cols, tuple(tuple(f) for f in s["factors"]), s.get("dense_rows", 0)).rank_bound
    if s["kind"] == "lowrank":
        return min(rows, cols, s["rank"])
    return min(rows, cols)


def describe_spec(spec: object) -> str:
    """'kp 16x2 (x) 32x14', 'hkp 16 dense rows + 31x2 (x) 16x14', 'lowrank rank 4', 'dense'."""
    s = matrix_spec(spec)
    if s["kind"] in ("kp", "hkp"):
        text = " (x) ".join(f"{m}x{n}" for m, n in s["factors"])
        if s["kind"] == "hkp":
            g = s.get("top_groups", 1)
            spread = f" ({s['dense_rows'] // g} per gate)" if g > 1 else ""
            return f"hkp {s['dense_rows']} dense rows{spread} + {text}"
        return f"kp {text}" + (" (padded)" if s.get("pad") else "")
    if s["kind"] == "lowrank":
        return f"lowrank rank {s['rank']}"
    return "dense"


@dataclass(frozen=True)
class ModelMatrix:
    """One recurrent matrix of a model as it is now."""

    name: str  # its module name, e.g. 'layers.0.wx' or 'layers.1.bwd.wh'
    rows: int
    cols: int
    spec: dict
    params: int  # weights stored (nonzero weights of a pruned dense matrix)

    def describe(self) -> str:
        return (f"{self.name} {self.rows}x{self.cols}: now {describe_spec(self.spec)}, {self.params:,} parameters "
                f"({self.rows * self.cols / max(1, self.params):.2f}x), rank <= "
                f"{spec_rank_bound(self.spec, self.rows, self.cols)}")


def model_matrices(model) -> list[ModelMatrix]:
    """Every recurrent matrix of a kpgen.train.nn.KPRNNClassifier, in module order."""
    out = []
    for name, mod in model.matrices():
        parts = name.split(".")
        k, which = int(parts[1]), parts[-1]
        spec = (model.wx_specs if which == "wx" else model.wh_specs)[k]
        weight = getattr(mod, "weight", None)
        params = int((weight != 0).sum()) if spec["kind"] == "dense" and weight is not None else int(mod.weight_params)
        out.append(ModelMatrix(name, int(mod.out_features), int(mod.in_features), spec, params))
    return out


def describe_model(model) -> str:
    """'lstm, 1 layer, H 128, 28 inputs, 10 classes' (and 'bidirectional')."""
    layers = f"{model.num_layers} layer{'s' if model.num_layers > 1 else ''}"
    bi = ", bidirectional" if model.bidirectional else ""
    return f"{model.cell}{bi}, {layers}, H {model.hidden_size}, {model.input_size} inputs, {model.num_classes} classes"


def format_model_plan(
    title: str,
    matrices: list[ModelMatrix],
    ratio: float | None = None,
    max_params: int | None = None,
    num_factors: int = 2,
    pad: float = DEFAULT_PAD,
    top: int = 5,
    core: costmodel.CoreCost | None = None,
    by: str = "rank",
    cell: tuple[str, int] | None = None,
) -> str:
    """What `kpgen plan CHECKPOINT` prints: a plan per matrix shape, then what the first candidates total.

    Budget: --ratio R gives every matrix at most rows*cols/R parameters; --max-params P is for all matrices
    together, shared in proportion to their dense sizes (the same as a ratio of total/P for each); both: the
    smaller. core: predict instructions (per product, and per time step with cell = (cell name, hidden size));
    by: the candidates' order (ORDERS).
    """
    total = sum(m.rows * m.cols for m in matrices)
    now = sum(m.params for m in matrices)
    lines = [f"{title}: {len(matrices)} recurrent matrices, {total:,} weights dense, {now:,} now "
             f"({total / max(1, now):.2f}x)"]
    if ratio is not None or max_params is not None:
        parts = [f"every matrix at most 1/{ratio:g} of its weights"] if ratio is not None else []
        if max_params is not None:
            parts.append(f"all matrices together at most {max_params:,} parameters, shared in proportion to size "
                         f"({total / max_params:.2f}x)")
        lines.append("budget: " + "; ".join(parts))
    shapes: dict[tuple[int, int], list[ModelMatrix]] = {}
    for m in matrices:
        shapes.setdefault((m.rows, m.cols), []).append(m)
    firsts: dict[tuple[int, int], tuple[Candidate | None, Candidate | None]] = {}
    for (rows, cols), group in shapes.items():
        share = None if max_params is None else max(1, max_params * rows * cols // total)
        p = plan(rows, cols, ratio, share, num_factors, pad, core, by)
        firsts[(rows, cols)] = (p.kp[0] if p.kp else None, p.hkp[0] if p.hkp else None)
        lines += [""] + [m.describe() for m in group] + [format_plan(p, top=top)]
    lines.append("")

    def per_step(specs: list[tuple[int, int, object]]) -> str:
        """'; predicted N instructions per step on m4' (matrices and, when the cell is known, its element-wise work)."""
        if core is None:
            return ""
        try:
            n = sum(core.matrix_instructions(costmodel.matrix_shape(r, c, s)) for r, c, s in specs)
        except KpgenError:
            return ""  # a kind the cost model does not cover (low rank)
        what = "matrix instructions"
        if cell is not None:
            n += core.element_instructions(cell[0], cell[1], len(specs) // 2)
            what = "instructions"
        return f"; predicted {n:,.0f} {what} per step on the {core.board}"

    if core is not None:
        lines.append(f"now: {sum(m.params for m in matrices):,} parameters"
                     + per_step([(m.rows, m.cols, m.spec) for m in matrices]))
    for label, idx in (("Kronecker", 0), ("hybrid KP", 1)):
        if idx == 1 and ratio is None and max_params is None:
            break
        picks = [firsts[(m.rows, m.cols)][idx] for m in matrices]
        missing = sorted({m.name for m, c in zip(matrices, picks, strict=True) if c is None})
        if missing:
            lines.append(f"#1 {label} candidates: none fits the budget for {', '.join(missing)}")
            continue
        chosen = [c for c in picks if c is not None]  # all of them: none is missing
        kept = sum(c.params for c in chosen)
        macs = sum(c.macs for c in chosen)
        full = all(c.rank_bound == min(c.rows, c.cols) for c in chosen)
        lines.append(f"#1 {label} candidate of every matrix: {total:,} -> {kept:,} parameters "
                     f"({total / kept:.2f}x), {macs:,} MACs per step"
                     + ("; every rank bound full" if full else "; some rank bounds below full")
                     + per_step([(c.rows, c.cols, c.spec()) for c in chosen]))
    return "\n".join(lines)
