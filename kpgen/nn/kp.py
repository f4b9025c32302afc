"""Kronecker-product linear layer: W = A (x) B, applied without ever building W.

Convention (Thakker et al. 2019, and the C kernel `kp_matvec_s8`): A is m1 x n1, B is m2 x n2,
W = A (x) B is (m1*m2) x (n1*n2). For x of length n1*n2 let X be its n1 x n2 row-major view
(X[i, j] = x[i*n2 + j]); then W x = vec(A X B^T), read row-major (y[p*m2 + q] = Y[p, q]).
"""

from __future__ import annotations

import math

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


def check_factors(out_features: int, in_features: int, a_shape: Shape2, b_shape: Shape2) -> None:
    """Raise ValueError unless (m1*m2, n1*n2) == (out_features, in_features) with positive sizes."""
    (m1, n1), (m2, n2) = tuple(a_shape), tuple(b_shape)
    if min(m1, n1, m2, n2) < 1:
        raise ValueError(f"KP factor shapes must be positive, got A {a_shape}, B {b_shape}")
    if m1 * m2 != out_features or n1 * n2 != in_features:
        raise ValueError(
            f"KP factors A {tuple(a_shape)} (x) B {tuple(b_shape)} make a {m1 * m2}x{n1 * n2} matrix, "
            f"expected {out_features}x{in_features} (m1*m2 = out, n1*n2 = in)"
        )


class KPLinear(nn.Module):
    """y = (A (x) B) x (+ bias), with parameters `a` (m1, n1) and `b` (m2, n2); W is never built."""

    def __init__(self, in_features: int, out_features: int, a_shape: Shape2, b_shape: Shape2, bias: bool = False):
        super().__init__()
        check_factors(out_features, in_features, a_shape, b_shape)
        self.in_features = in_features
        self.out_features = out_features
        self.a = nn.Parameter(torch.empty(*a_shape))
        self.b = nn.Parameter(torch.empty(*b_shape))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        """Init so that the entries of A (x) B have standard deviation `std` (default 1/sqrt(in_features)).

        An entry of W is a product a*b of independent zero-mean factors, so Var(W) = Var(a) Var(b);
        each factor gets std sqrt(std). The two factors are then rescaled to equal RMS so neither dominates.
        """
        std = 1.0 / math.sqrt(self.in_features) if std is None else std
        f = math.sqrt(std)
        with torch.no_grad():
            nn.init.normal_(self.a, 0.0, f)
            nn.init.normal_(self.b, 0.0, f)
            self.a.mul_(f / self.a.pow(2).mean().sqrt().clamp_min(1e-12))
            self.b.mul_(f / self.b.pow(2).mean().sqrt().clamp_min(1e-12))
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_features)
                nn.init.uniform_(self.bias, -bound, bound)

    @property
    def compression(self) -> float:
        """Dense parameter count over KP parameter count (weights only)."""
        return self.in_features * self.out_features / (self.a.numel() + self.b.numel())

    def dense(self) -> torch.Tensor:
        """The explicit matrix A (x) B; for tests and reports only."""
        return torch.kron(self.a, self.b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = kp_apply(self.a, self.b, x)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"a={tuple(self.a.shape)}, b={tuple(self.b.shape)}, bias={self.bias is not None}"
        )
