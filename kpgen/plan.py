"""Factor planning: which Kronecker factor shapes (and how many dense HKP rows) to give a rows x cols matrix.

Every candidate is scored by three numbers (docs/compression.md):
- parameters: sum of m_j * n_j over the factors (plus dense rows * cols for HKP);
- MACs of one product by successive mode products (two factors: n1*n2*m2 + m1*n1*m2, i.e. vec(A X B^T));
- the rank bound: rank(A (x) B) = rank(A) rank(B) <= min(m1, n1) * min(m2, n2), and never more than
  min(rows, cols). A Kronecker product cannot be more expressive than its rank allows, so the bound comes first.

Order, best first: KP by rank bound (high first), then cost = parameters + MACs (low first: weights stored
and multiply-accumulates per product, so neither flash nor time is traded away for a sliver of the other),
then parameters, then padding (none first). HKP gives every unpadded KP candidate the most dense rows the budget leaves room for
without lowering the Kronecker part's rank (`hkp_from`: the budget picks r), ordered by the same rule with
the Kronecker part's own rank bound after the overall one (dense rows must not stand in for a weak product).

Awkward dimensions (a large prime factor, e.g. 156 = 2*2*3*13 or 158 = 2*79) leave few balanced factor
shapes. For such a dimension (a prime factor > 7) the planner also tries padding it up to the next few
7-smooth sizes within `pad` (a fraction, default 12.5%): x gets zero entries, the extra outputs are dropped,
and parameters and MACs are counted on the padded shape, so a padded candidate ranks first only where it is
cheaper for the same rank bound. Dimensions whose prime factors are all <= 7 are never padded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from kpgen.nn.kp import kp_macs

Shape2 = tuple[int, int]
DEFAULT_PAD = 0.125
MAX_PAD_SIZES = 3  # padded sizes tried per dimension, besides the exact one


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
        """The kpgen.nn.matrix spec of this candidate (for KPRNNClassifier and checkpoints)."""
        factors = [list(f) for f in self.factors]
        if self.dense_rows:
            return {"kind": "hkp", "factors": factors, "dense_rows": self.dense_rows}
        return {"kind": "kp", "factors": factors, "pad": True} if self.padded else {"kind": "kp", "factors": factors}

    def describe(self) -> str:
        text = " (x) ".join(f"{m}x{n}" for m, n in self.factors)
        return f"{self.dense_rows} dense rows + {text}" if self.dense_rows else text


@dataclass
class Plan:
    rows: int
    cols: int
    budget: int | None  # maximum parameters, None for no limit
    num_factors: int
    kp: list[Candidate] = field(default_factory=list)
    hkp: list[Candidate] = field(default_factory=list)


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
                    shapes = tuple(zip(ms, ns))
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
) -> Plan:
    """KP candidates within the budget, and (when there is a budget) HKP candidates that spend it."""
    budget = budget_for(rows, cols, ratio, max_params)
    p = Plan(rows, cols, budget, num_factors)
    p.kp = kp_candidates(rows, cols, num_factors, budget, pad)
    if budget is not None:
        p.hkp = hkp_candidates(rows, cols, budget, num_factors)
    return p


def best_kp(rows: int, cols: int, budget: int | None, num_factors: int = 2, pad: float = 0.0) -> Candidate:
    """The best KP candidate within budget; ValueError if none fits."""
    cands = kp_candidates(rows, cols, num_factors, budget, pad)
    if not cands:
        raise ValueError(f"no {num_factors}-factor Kronecker product of a {rows}x{cols} matrix has <= {budget} parameters")
    return cands[0]


def best_hkp(rows: int, cols: int, budget: int, num_factors: int = 2) -> Candidate:
    """The best HKP candidate within budget, or the best KP one if no dense row fits."""
    cands = hkp_candidates(rows, cols, budget, num_factors)
    return cands[0] if cands else best_kp(rows, cols, budget, num_factors)


def _table(cands: list[Candidate], top: int) -> list[str]:
    head = f"  {'#':>3}  {'factors':<34} {'matrix':>11}  {'params':>8}  {'compress':>9}  {'MACs':>9}  {'rank<=':>6}"
    lines = [head]
    for i, c in enumerate(cands[:top], 1):
        m, n = c.kp_shape
        shape = f"{m + c.dense_rows}x{n}" + (" pad" if c.padded else "")
        lines.append(
            f"  {i:>3}  {c.describe():<34} {shape:>11}  {c.params:>8,}  {c.compression:>8.2f}x  {c.macs:>9,}  {c.rank_bound:>6}"
        )
    if len(cands) > top:
        lines.append(f"  ... {len(cands) - top} more (--top N)")
    return lines


def format_plan(p: Plan, top: int = 10) -> str:
    """The plan as the text `kpgen plan` prints."""
    dense = p.rows * p.cols
    budget = f"; budget {p.budget:,} parameters ({dense / p.budget:.2f}x)" if p.budget else ""
    lines = [f"W {p.rows}x{p.cols}: {dense:,} weights, {dense:,} MACs dense, rank <= {min(p.rows, p.cols)}{budget}", ""]
    lines.append(f"Kronecker products ({p.num_factors} factors), best first (rank bound, then parameters + MACs):")
    lines += _table(p.kp, top) if p.kp else ["  none fits the budget"]
    if p.budget is not None:
        lines += ["", "Hybrid KP (top rows dense, the rest Kronecker), best first (same order):"]
        lines += _table(p.hkp, top) if p.hkp else ["  no dense row fits the budget"]
    return "\n".join(lines)
