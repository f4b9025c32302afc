"""KP-LSTM cell and a stacked KP-LSTM sequence classifier.

Each layer keeps TWO Kronecker-product matrices, Wx (4H x I) for the input and Wh (4H x H) for the
recurrent state, and one bias of 4H: z_t = Wx x_t + Wh h_{t-1} + bias, gates (i, f, g, o), each block
H rows. Thakker et al. (2019) compress the single matrix [W U] over the concatenation [x; h]; we use two
because (1) x and h have different ranges, so for int8 each product gets its own input scale and
requantization (h is fixed Q0.7, x is calibrated), and (2) the factor shapes stay simple: I and H factor
independently instead of having to factor I + H.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kpgen.nn.kp import KPLinear

Shape2 = tuple[int, int]
FactorPair = tuple[Shape2, Shape2]  # ((m1, n1), (m2, n2))


@dataclass
class LSTMTrace:
    """Internals of one KP-LSTM layer over a sequence, for calibration."""

    cells: torch.Tensor  # (B, T, H): c_t after every step
    gates: torch.Tensor  # (B, T, 4H): pre-activations z_t, gate order (i, f, g, o)


def as_factor_pair(f: Sequence) -> FactorPair:
    """Normalise ((m1, n1), (m2, n2)) given as any nested sequence to a tuple of int tuples."""
    (m1, n1), (m2, n2) = f
    return ((int(m1), int(n1)), (int(m2), int(n2)))


def is_factor_pair(f: object) -> bool:
    """True if f is one pair ((m1, n1), (m2, n2)) (nesting depth 2), not a per-layer list of them."""
    depth = 0
    while isinstance(f, (list, tuple)) and len(f) > 0:
        f, depth = f[0], depth + 1
    return depth == 2


class KPLSTM(nn.Module):
    """One LSTM layer whose input and recurrent matrices are Kronecker products; batch-first."""

    def __init__(self, input_size: int, hidden_size: int, wx_factors: FactorPair, wh_factors: FactorPair):
        super().__init__()
        ax, bx = as_factor_pair(wx_factors)
        ah, bh = as_factor_pair(wh_factors)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.wx = KPLinear(input_size, 4 * hidden_size, ax, bx)
        self.wh = KPLinear(hidden_size, 4 * hidden_size, ah, bh)
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Factor init with variance-preserving products, zero bias, forget-gate bias 1."""
        self.wx.reset_parameters(1.0 / math.sqrt(self.input_size))
        self.wh.reset_parameters(1.0 / math.sqrt(self.hidden_size))
        h = self.hidden_size
        with torch.no_grad():
            self.bias.zero_()
            self.bias[h : 2 * h] = 1.0

    def forward(
        self,
        x: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_trace: bool = False,
    ):
        """x (B, T, I) -> (outputs (B, T, H), (h, c)), plus an LSTMTrace if return_trace."""
        bsz, steps, _ = x.shape
        hs = self.hidden_size
        if state is None:
            h = x.new_zeros(bsz, hs)
            c = x.new_zeros(bsz, hs)
        else:
            h, c = state
        zx = self.wx(x) + self.bias  # all input products at once: (B, T, 4H)
        outs, cells, gates = [], [], []
        for t in range(steps):
            z = zx[:, t] + self.wh(h)
            zi, zf, zg, zo = z.split(hs, dim=-1)
            c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
            h = torch.sigmoid(zo) * torch.tanh(c)
            outs.append(h)
            if return_trace:
                cells.append(c)
                gates.append(z)
        out = torch.stack(outs, dim=1)
        if return_trace:
            return out, (h, c), LSTMTrace(torch.stack(cells, dim=1), torch.stack(gates, dim=1))
        return out, (h, c)


def per_layer_factors(factors: Sequence, num_layers: int, name: str) -> list[FactorPair]:
    """Accept one factor pair (used for every layer) or a list of one pair per layer."""
    if is_factor_pair(factors):
        return [as_factor_pair(factors)] * num_layers
    pairs = [as_factor_pair(f) for f in factors]
    if len(pairs) != num_layers:
        raise ValueError(f"{name}: {len(pairs)} factor pairs for {num_layers} layers")
    return pairs


class KPLSTMClassifier(nn.Module):
    """Stacked KP-LSTM layers over a sequence, then nn.Linear(H, C) on the last time step's h.

    wx_factors / wh_factors: one pair ((m1, n1), (m2, n2)) or a list with one pair per layer. With a
    single wx pair and several layers, layers > 0 (whose input is h, of size H) use the wh factors.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_classes: int,
        wx_factors: Sequence,
        wh_factors: Sequence,
        num_layers: int = 1,
    ):
        super().__init__()
        wh = per_layer_factors(wh_factors, num_layers, "wh_factors")
        if is_factor_pair(wx_factors):
            wx = [as_factor_pair(wx_factors)] + wh[1:]
        else:
            wx = per_layer_factors(wx_factors, num_layers, "wx_factors")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.num_layers = num_layers
        self.wx_factors = wx
        self.wh_factors = wh
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.layers = nn.ModuleList(KPLSTM(sizes[k], hidden_size, wx[k], wh[k]) for k in range(num_layers))
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor, return_trace: bool = False):
        """x (B, T, I) -> logits (B, C); with return_trace also a list of LSTMTrace, one per layer."""
        traces = []
        for layer in self.layers:
            if return_trace:
                x, _, tr = layer(x, return_trace=True)
                traces.append(tr)
            else:
                x, _ = layer(x)
        logits = self.head(x[:, -1])
        return (logits, traces) if return_trace else logits
