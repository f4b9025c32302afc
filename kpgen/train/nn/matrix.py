"""The weight matrices an RNN cell can use, chosen by a small plain-data spec (stored in checkpoints as is).

| spec | module | parameters (state_dict names under the matrix, e.g. `wx.`) |
|---|---|---|
| `[[m1, n1], [m2, n2]]` or `{"kind": "kp", "factors": [...]}` | KPLinear | `a`, `b`; k != 2 factors: `factors.0`, ... |
| `{"kind": "hkp", "factors": [...], "dense_rows": r, "top_groups": G}` | HKPLinear | `dense_weight` (r, in), `kp.*` |
| `{"kind": "lowrank", "rank": r}` | LowRankLinear | `u` (out, r), `v` (r, in) |
| `"dense"` or `{"kind": "dense"}` | DenseLinear | `weight` (out, in) |

`top_groups` is optional (1: the dense rows on top).
None of them has a bias: the cells own their biases. Every module has `dense()` (the explicit out x in matrix),
`weight_params` and `reset_parameters(std)` (entries of the product get standard deviation std).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeAlias

import torch
from torch import nn

from kpgen.ir import hkp_row_order
from kpgen.train.nn.kp import KPLinear, as_shapes, kp_macs


class HKPLinear(nn.Module):
    """Hybrid KP: W = [D; F1 (x) ... (x) Fk]: the top `dense_rows` rows of W dense, the rest a Kronecker product.

    `factors` multiply to (out_features - dense_rows) x in_features. dense_rows = 0 is plain KP. top_groups G > 1
    spreads the dense rows: W's rows are G equal blocks (a gated cell's gates), each starting with dense_rows / G
    rows of D and going on with its share of the Kronecker rows (kpgen.ir.hkp_row_order, as the kernels do).
    """

    order: torch.Tensor  # W = [D; Kronecker rows][order] (a buffer, not saved)

    def __init__(self, in_features: int, out_features: int, factors: Sequence, dense_rows: int, top_groups: int = 1):
        super().__init__()
        if not 0 <= dense_rows < out_features:
            raise ValueError(f"dense_rows must be in 0..{out_features - 1}, got {dense_rows}")
        self.in_features = in_features
        self.out_features = out_features
        self.dense_rows = int(dense_rows)
        self.top_groups = int(top_groups)
        order = hkp_row_order(out_features, self.dense_rows, self.top_groups)  # ValueError if G does not divide
        self.register_buffer("order", torch.from_numpy(order), persistent=False)
        self.dense_weight = nn.Parameter(torch.empty(self.dense_rows, in_features))
        self.kp = KPLinear(in_features, out_features - self.dense_rows, factors=as_shapes(factors))
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        std = 1.0 / math.sqrt(self.in_features) if std is None else std
        with torch.no_grad():
            nn.init.normal_(self.dense_weight, 0.0, std)
        self.kp.reset_parameters(std)

    @property
    def weight_params(self) -> int:
        return self.dense_weight.numel() + self.kp.weight_params

    @property
    def macs(self) -> int:
        return self.dense_rows * self.in_features + self.kp.macs

    def stacked_rows(self) -> torch.Tensor:
        """Which rows of W are D's (the first dense_rows) and the Kronecker part's (the rest), in that order."""
        return torch.argsort(self.order)

    def dense(self) -> torch.Tensor:
        w = torch.cat([self.dense_weight, self.kp.dense()], dim=0)
        return w if self.top_groups == 1 else w[self.order]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.matmul(x, self.dense_weight.t()), self.kp(x)], dim=-1)
        return y if self.top_groups == 1 else y[..., self.order]

    def extra_repr(self) -> str:
        spread = f", top_groups={self.top_groups}" if self.top_groups > 1 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, dense_rows={self.dense_rows}{spread}"


class LowRankLinear(nn.Module):
    """W = U V with U (out, rank) and V (rank, in): the low-rank baseline."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be positive, got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, int(rank)
        self.u = nn.Parameter(torch.empty(out_features, self.rank))
        self.v = nn.Parameter(torch.empty(self.rank, in_features))
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        """Var(W) = rank Var(u) Var(v): each factor gets std (std^2 / rank)^(1/4)."""
        std = 1.0 / math.sqrt(self.in_features) if std is None else std
        f = (std * std / self.rank) ** 0.25
        with torch.no_grad():
            nn.init.normal_(self.u, 0.0, f)
            nn.init.normal_(self.v, 0.0, f)

    @property
    def weight_params(self) -> int:
        return self.u.numel() + self.v.numel()

    @property
    def macs(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def dense(self) -> torch.Tensor:
        return self.u @ self.v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(x, self.v.t()), self.u.t())


class DenseLinear(nn.Module):
    """A plain dense matrix (parameter `weight`, out x in), no bias: the uncompressed (and pruned) baseline."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        std = 1.0 / math.sqrt(self.in_features) if std is None else std
        with torch.no_grad():
            nn.init.normal_(self.weight, 0.0, std)

    @property
    def weight_params(self) -> int:
        return self.weight.numel()

    @property
    def macs(self) -> int:
        return self.weight.numel()

    def dense(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self.weight.t())


MATRIX_KINDS = ("kp", "hkp", "lowrank", "dense")


def matrix_spec(spec: object) -> dict:
    """Normalise a matrix spec (see the module docstring) to a plain dict with a 'kind' key; ValueError if bad."""
    if isinstance(spec, str):
        if spec != "dense":
            raise ValueError(f"matrix spec {spec!r}: the only string spec is 'dense'")
        return {"kind": "dense"}
    if isinstance(spec, dict):
        kind = spec.get("kind")
        if kind not in MATRIX_KINDS:
            raise ValueError(f"matrix spec kind {kind!r} is not one of {', '.join(MATRIX_KINDS)}")
        out: dict = {"kind": kind}
        if kind in ("kp", "hkp"):
            out["factors"] = [list(s) for s in as_shapes(spec["factors"])]
        if kind == "kp" and spec.get("pad"):
            out["pad"] = True
        if kind == "hkp":
            out["dense_rows"] = int(spec["dense_rows"])
            if int(spec.get("top_groups", 1)) != 1:
                out["top_groups"] = int(spec["top_groups"])
        if kind == "lowrank":
            out["rank"] = int(spec["rank"])
        return out
    if isinstance(spec, (list, tuple)):
        return {"kind": "kp", "factors": [list(s) for s in as_shapes(spec)]}
    raise ValueError(f"matrix spec {spec!r} is not a factor list, a dict or 'dense'")


Matrix: TypeAlias = "KPLinear | HKPLinear | LowRankLinear | DenseLinear"  # what make_matrix builds
MATRIX_TYPES = (KPLinear, HKPLinear, LowRankLinear, DenseLinear)  # the same, for isinstance


def make_matrix(in_features: int, out_features: int, spec: object) -> Matrix:
    """The module a spec describes, for an out_features x in_features matrix."""
    s = matrix_spec(spec)
    if s["kind"] == "kp":
        return KPLinear(in_features, out_features, factors=s["factors"], pad=s.get("pad", False))
    if s["kind"] == "hkp":
        return HKPLinear(in_features, out_features, s["factors"], s["dense_rows"], s.get("top_groups", 1))
    if s["kind"] == "lowrank":
        return LowRankLinear(in_features, out_features, s["rank"])
    return DenseLinear(in_features, out_features)


def spec_params(spec: object, rows: int, cols: int) -> int:
    """Weight count of a rows x cols matrix under spec, without building it."""
    s = matrix_spec(spec)
    if s["kind"] == "kp":
        return sum(m * n for m, n in s["factors"])
    if s["kind"] == "hkp":
        return s["dense_rows"] * cols + sum(m * n for m, n in s["factors"])
    if s["kind"] == "lowrank":
        return s["rank"] * (rows + cols)
    return rows * cols


def spec_macs(spec: object, rows: int, cols: int) -> int:
    """Multiply-accumulates of one product with a rows x cols matrix under spec."""
    s = matrix_spec(spec)
    if s["kind"] == "kp":
        return kp_macs(as_shapes(s["factors"]))
    if s["kind"] == "hkp":
        return s["dense_rows"] * cols + kp_macs(as_shapes(s["factors"]))
    if s["kind"] == "lowrank":
        return s["rank"] * (rows + cols)
    return rows * cols
