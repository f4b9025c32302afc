"""Kronecker-product linear layer: W = F1 (x) F2 (x) ... (x) Fk, applied without ever building W.

Two factors (the default, and the only case the checkpoint loader, quantizer and C kernels support so far):
A is m1 x n1, B is m2 x n2, W = A (x) B is (m1*m2) x (n1*n2). For x of length n1*n2 let X be its n1 x n2
row-major view (X[i, j] = x[i*n2 + j]); then W x = vec(A X B^T), read row-major (y[p*m2 + q] = Y[p, q]).
This is Thakker et al. 2019 and the C kernel `kp_matvec_s8`.

k factors: x is viewed as a row-major tensor of shape (n1, ..., nk) and multiplied along each mode j by Fj
(the last mode first, as in the two-factor case); the result, shape (m1, ..., mk), read row-major, is W x.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeGuard

import torch
from torch import nn

Shape2 = tuple[int, int]


def kp_apply(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(A (x) B) applied to the last axis of x: (..., n1*n2) -> (..., m1*m2), as A (X B^T)."""
    m1, n1 = a.shape
    m2, n2 = b.shape
    lead = x.shape[:-1]
    xm = x.reshape(*lead, n1, n2)
    t = torch.matmul(xm, b.t())  # (..., n1, m2), the same order as the C kernel
    y = torch.matmul(a, t)  # (..., m1, m2)
    return y.reshape(*lead, m1 * m2)


def kp_apply_n(factors: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """(F1 (x) ... (x) Fk) applied to the last axis of x by successive mode products, last factor first."""
    ns = [int(f.shape[1]) for f in factors]
    ms = [int(f.shape[0]) for f in factors]
    lead = x.shape[:-1]
    t = x.reshape(*lead, *ns)
    for j in reversed(range(len(factors))):
        axis = len(lead) + j
        t = torch.movedim(torch.matmul(torch.movedim(t, axis, -1), factors[j].t()), -1, axis)
    return t.reshape(*lead, math.prod(ms))


def kron_chain(factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The explicit matrix F1 (x) ... (x) Fk (tests and reports only)."""
    w = factors[0]
    for f in factors[1:]:
        w = torch.kron(w, f)
    return w


def kp_macs(shapes: Sequence[Shape2]) -> int:
    """Multiply-accumulates of one product by successive mode products, last factor first.

    Mode j costs (n1*...*n_{j-1}) * n_j * m_j * (m_{j+1}*...*m_k); for two factors n1*n2*m2 + m1*n1*m2.
    """
    total = 0
    for j, (m, n) in enumerate(shapes):
        before = math.prod(s[1] for s in shapes[:j])
        after = math.prod(s[0] for s in shapes[j + 1 :])
        total += before * n * m * after
    return total


def as_shapes(factors: Sequence) -> tuple[Shape2, ...]:
    """[[m1, n1], [m2, n2], ...] given as any nested sequence -> a tuple of (int, int)."""
    out = []
    for f in factors:
        m, n = f
        out.append((int(m), int(n)))
    if not out:
        raise ValueError("a Kronecker product needs at least one factor")
    return tuple(out)


def check_factors(out_features: int, in_features: int, *shapes: Shape2, pad: bool = False) -> None:
    """Raise ValueError unless the factors' product is out_features x in_features (at least that, with pad)."""
    shapes = as_shapes(shapes)
    if min(min(s) for s in shapes) < 1:
        raise ValueError(f"KP factor shapes must be positive, got {' (x) '.join(map(str, shapes))}")
    rows, cols = math.prod(s[0] for s in shapes), math.prod(s[1] for s in shapes)
    ok = rows >= out_features and cols >= in_features if pad else (rows, cols) == (out_features, in_features)
    if not ok:
        if len(shapes) == 2:
            what = f"KP factors A {shapes[0]} (x) B {shapes[1]}"
        else:
            what = "KP factors " + " (x) ".join(map(str, shapes))
        need = "at least " if pad else ""
        raise ValueError(
            f"{what} make a {rows}x{cols} matrix, expected {need}{out_features}x{in_features} "
            f"(product of rows = out, product of columns = in)"
        )


def _is_shape_list(v: object) -> TypeGuard[Sequence[Shape2]]:
    """True for [[m1, n1], ...] (a list of shapes), False for one shape (m, n)."""
    return isinstance(v, (list, tuple)) and len(v) > 0 and isinstance(v[0], (list, tuple))


class KPLinear(nn.Module):
    """y = (F1 (x) ... (x) Fk) x (+ bias); W is never built.

    Two factors: `KPLinear(in, out, a_shape, b_shape)`, parameters `a` (m1, n1) and `b` (m2, n2), the names of
    checkpoint format v1. Any number: `KPLinear(in, out, factors=[(m1, n1), ..., (mk, nk)])` (or the list as the
    third argument); with k != 2 the parameters are `factors.0`, ..., `factors.{k-1}` (the loader, quantizer
    and C kernels do not support k != 2 yet). pad=True allows a product larger than out x in: x is padded with
    zeros and the extra outputs are dropped (the planner's padding rule, docs/compression.md); training only.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        a_shape: Shape2 | Sequence[Shape2] | None = None,
        b_shape: Shape2 | None = None,
        bias: bool = False,
        *,
        factors: Sequence[Shape2] | None = None,
        pad: bool = False,
    ):
        super().__init__()
        spec: Sequence[object] | None = factors  # the factor shapes, however given; as_shapes checks them
        if spec is None:
            if _is_shape_list(a_shape) and b_shape is None:
                spec = a_shape
            elif a_shape is not None and b_shape is not None:
                spec = (a_shape, b_shape)
            else:
                raise ValueError("give two factor shapes (a_shape, b_shape) or factors=[(m1, n1), ...]")
        elif a_shape is not None or b_shape is not None:
            raise ValueError("give either a_shape/b_shape or factors, not both")
        shapes = as_shapes(spec)
        check_factors(out_features, in_features, *shapes, pad=pad)
        self.in_features = in_features
        self.out_features = out_features
        self.factor_shapes = shapes
        self.pad = bool(pad)
        self.padded_in = math.prod(s[1] for s in shapes)
        self.padded_out = math.prod(s[0] for s in shapes)
        if len(shapes) == 2:
            self.a = nn.Parameter(torch.empty(*shapes[0]))
            self.b = nn.Parameter(torch.empty(*shapes[1]))
            self.factors = None
        else:
            self.factors = nn.ParameterList(nn.Parameter(torch.empty(*s)) for s in shapes)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def factor_list(self) -> list[torch.Tensor]:
        """The factors F1..Fk in order (for two factors: [a, b])."""
        return [self.a, self.b] if self.factors is None else list(self.factors)

    @property
    def num_factors(self) -> int:
        return len(self.factor_shapes)

    def reset_parameters(self, std: float | None = None) -> None:
        """Init so that the entries of the product have standard deviation `std` (default 1/sqrt(in_features)).

        An entry of W is a product of k independent zero-mean factor entries, so Var(W) is the product of the
        factors' variances; each factor gets std std**(1/k), then is rescaled to exactly that RMS so none dominates.
        """
        std = 1.0 / math.sqrt(self.in_features) if std is None else std
        f = math.sqrt(std) if self.num_factors == 2 else std ** (1.0 / self.num_factors)
        with torch.no_grad():
            fs = self.factor_list()
            for p in fs:
                nn.init.normal_(p, 0.0, f)
            for p in fs:
                p.mul_(f / p.pow(2).mean().sqrt().clamp_min(1e-12))
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_features)
                nn.init.uniform_(self.bias, -bound, bound)

    @property
    def weight_params(self) -> int:
        return sum(p.numel() for p in self.factor_list())

    @property
    def compression(self) -> float:
        """Dense parameter count over KP parameter count (weights only)."""
        return self.in_features * self.out_features / self.weight_params

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one product (kp_macs of the factor shapes)."""
        return kp_macs(self.factor_shapes)

    def dense(self) -> torch.Tensor:
        """The explicit out x in matrix; for tests and reports only."""
        return kron_chain(self.factor_list())[: self.out_features, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padded_in != self.in_features:
            x = nn.functional.pad(x, (0, self.padded_in - self.in_features))
        if self.factors is None:
            y = kp_apply(self.a, self.b, x)
        else:
            y = kp_apply_n(list(self.factors), x)
        if self.padded_out != self.out_features:
            y = y[..., : self.out_features]
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        if self.factors is None:
            fs = f"a={tuple(self.a.shape)}, b={tuple(self.b.shape)}"
        else:
            fs = "factors=" + " (x) ".join(str(s) for s in self.factor_shapes)
        pad = f", padded to {self.padded_out}x{self.padded_in}" if self.pad else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, {fs}{pad}, "
                f"bias={self.bias is not None}")
