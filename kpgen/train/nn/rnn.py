"""Recurrent layers with compressed matrices (LSTM, GRU, FastRNN, FastGRNN, plain RNN), a bidirectional wrapper,
classifiers. Which class trains which cell is the registry's (kpgen.cells: Cell.train_class).

Every layer keeps TWO matrices, Wx (G*H x I) for the input and Wh (G*H x H) for the recurrent state (G = 4 for
the LSTM, 3 for the GRU, 1 for FastRNN, FastGRNN and the plain RNN), each a Kronecker product by default or any
matrix spec of `kpgen.train.nn.matrix` (HKP, low rank, dense). Thakker et al. (2019) compress the single matrix
[W U] over the concatenation [x; h]; we use two because (1) x and h have different ranges, so for int8 each
product gets its own input scale and requantization (h is int8 at a fixed power-of-two scale, x is calibrated),
and (2) the factor shapes stay simple: I and H factor independently instead of having to factor I + H.

All layers are batch-first: x (B, T, I) -> outputs (B, T, H), with zero initial state by default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kpgen import cells
from kpgen.train.nn.matrix import MATRIX_TYPES, Matrix, make_matrix, matrix_spec

Shape2 = tuple[int, int]
FactorPair = tuple[Shape2, Shape2]  # ((m1, n1), (m2, n2))


@dataclass
class LSTMTrace:
    """Internals of one KP-LSTM layer over a sequence, for calibration."""

    cells: torch.Tensor  # (B, T, H): c_t after every step
    gates: torch.Tensor  # (B, T, 4H): pre-activations z_t, gate order (i, f, g, o)


@dataclass
class RNNTrace:
    """Internals of one GRU / FastRNN / FastGRNN / plain RNN layer over a sequence, for calibration."""

    hidden: torch.Tensor  # (B, T, H): h_t after every step
    gates: torch.Tensor  # (B, T, *): the pre-activations of every nonlinearity


def as_factor_pair(f: Sequence) -> FactorPair:
    """Normalise ((m1, n1), (m2, n2)) given as any nested sequence to a tuple of int tuples."""
    (m1, n1), (m2, n2) = f
    return ((int(m1), int(n1)), (int(m2), int(n2)))


def is_factor_pair(f: object) -> bool:
    """True if f is one factor list ((m1, n1), (m2, n2), ...) (nesting depth 2), not a per-layer list of them."""
    depth = 0
    while isinstance(f, (list, tuple)) and len(f) > 0:
        f, depth = f[0], depth + 1
    return depth == 2


def is_single_spec(spec: object) -> bool:
    """True for one matrix spec ('dense', a dict, or a factor list), False for a per-layer list of specs."""
    return isinstance(spec, (str, dict)) or is_factor_pair(spec)


class RecurrentLayer(nn.Module):
    """Shared parts: Wx (G*H x I) and Wh (G*H x H) built from matrix specs, G the gates of the subclass's CELL
    (kpgen.cells); subclasses define the step."""

    CELL = "fastrnn"
    wx: Matrix
    wh: Matrix

    def __init__(self, input_size: int, hidden_size: int, wx: object, wh: object):
        super().__init__()
        self.gates = cells.get(self.CELL).gates
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.wx_spec = matrix_spec(wx)
        self.wh_spec = matrix_spec(wh)
        self.wx = make_matrix(input_size, self.gates * hidden_size, self.wx_spec)
        self.wh = make_matrix(hidden_size, self.gates * hidden_size, self.wh_spec)

    def reset_matrices(self) -> None:
        """Variance-preserving init: entries of Wx with std 1/sqrt(I), of Wh with std 1/sqrt(H)."""
        self.wx.reset_parameters(1.0 / math.sqrt(self.input_size))
        self.wh.reset_parameters(1.0 / math.sqrt(self.hidden_size))


class KPLSTM(RecurrentLayer):
    """One LSTM layer: z_t = Wx x_t + Wh h_{t-1} + bias, gates (i, f, g, o), torch.nn.LSTM's equations."""

    CELL = "lstm"

    def __init__(self, input_size: int, hidden_size: int, wx_factors: object, wh_factors: object):
        super().__init__(input_size, hidden_size, wx_factors, wh_factors)
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Factor init with variance-preserving products, zero bias, forget-gate bias 1."""
        self.reset_matrices()
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


class KPGRU(RecurrentLayer):
    """One GRU layer with torch.nn.GRU's equations, gate order (r, z, n), each block H rows:

        r = sigmoid(Wx_r x + Wh_r h + bias_r)      z = sigmoid(Wx_z x + Wh_z h + bias_z)
        n = tanh(Wx_n x + bias_n + r * (Wh_n h + bias_hn))
        h' = (1 - z) * n + z * h

    `bias` (3H) holds torch's b_ih + [b_hr, b_hz, 0]; `bias_hn` (H) is torch's b_hn, kept apart because the
    reset gate multiplies it.
    """

    CELL = "gru"

    def __init__(self, input_size: int, hidden_size: int, wx: object, wh: object):
        super().__init__(input_size, hidden_size, wx, wh)
        self.bias = nn.Parameter(torch.zeros(3 * hidden_size))
        self.bias_hn = nn.Parameter(torch.zeros(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_matrices()
        with torch.no_grad():
            self.bias.zero_()
            self.bias_hn.zero_()

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, return_trace: bool = False):
        """x (B, T, I) -> (outputs (B, T, H), h), plus an RNNTrace (gates: r, z, n pre-activations) if asked."""
        bsz, steps, _ = x.shape
        hs = self.hidden_size
        h = x.new_zeros(bsz, hs) if state is None else state
        zx = self.wx(x) + self.bias
        outs, gates = [], []
        for t in range(steps):
            xr, xz, xn = zx[:, t].split(hs, dim=-1)
            hr, hz, hn = self.wh(h).split(hs, dim=-1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            pre_n = xn + r * (hn + self.bias_hn)
            h = (1.0 - z) * torch.tanh(pre_n) + z * h
            outs.append(h)
            if return_trace:
                gates.append(torch.cat([xr + hr, xz + hz, pre_n], dim=-1))
        out = torch.stack(outs, dim=1)
        if return_trace:
            return out, h, RNNTrace(out, torch.stack(gates, dim=1))
        return out, h


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class KPFastRNN(RecurrentLayer):
    """FastRNN (Kusupati et al. 2018): h_t = alpha * tanh(Wx x_t + Wh h_{t-1} + bias) + beta * h_{t-1}.

    alpha = sigmoid(`alpha`) and beta = sigmoid(`beta`) from trainable scalars (raw parameters, pre-sigmoid),
    initialised to alpha ~ 0.05, beta ~ 0.95 (a small update on a residual path).
    """

    CELL = "fastrnn"
    ALPHA_INIT = 0.05
    BETA_INIT = 0.95

    def __init__(self, input_size: int, hidden_size: int, wx: object, wh: object):
        super().__init__(input_size, hidden_size, wx, wh)
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.alpha = nn.Parameter(torch.tensor(_logit(self.ALPHA_INIT)))
        self.beta = nn.Parameter(torch.tensor(_logit(self.BETA_INIT)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_matrices()
        with torch.no_grad():
            self.bias.zero_()
            self.alpha.fill_(_logit(self.ALPHA_INIT))
            self.beta.fill_(_logit(self.BETA_INIT))

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, return_trace: bool = False):
        bsz, steps, _ = x.shape
        h = x.new_zeros(bsz, self.hidden_size) if state is None else state
        alpha, beta = torch.sigmoid(self.alpha), torch.sigmoid(self.beta)
        zx = self.wx(x) + self.bias
        outs, gates = [], []
        for t in range(steps):
            pre = zx[:, t] + self.wh(h)
            h = alpha * torch.tanh(pre) + beta * h
            outs.append(h)
            if return_trace:
                gates.append(pre)
        out = torch.stack(outs, dim=1)
        if return_trace:
            return out, h, RNNTrace(out, torch.stack(gates, dim=1))
        return out, h


class KPFastGRNN(RecurrentLayer):
    """FastGRNN (Kusupati et al. 2018), with Wx and Wh shared by the gate and the candidate:

        pre = Wx x_t + Wh h_{t-1}
        z = sigmoid(pre + bias_z)      h~ = tanh(pre + bias_h)
        h_t = (zeta * (1 - z) + nu) * h~ + z * h_{t-1}

    zeta = sigmoid(`zeta`), nu = sigmoid(`nu`) from trainable scalars (raw, pre-sigmoid), initialised to
    zeta ~ 0.73, nu ~ 0.018; bias_z starts at 1 (lean towards keeping the state), bias_h at 0.
    """

    CELL = "fastgrnn"
    ZETA_RAW = 1.0
    NU_RAW = -4.0

    def __init__(self, input_size: int, hidden_size: int, wx: object, wh: object):
        super().__init__(input_size, hidden_size, wx, wh)
        self.bias_z = nn.Parameter(torch.ones(hidden_size))
        self.bias_h = nn.Parameter(torch.zeros(hidden_size))
        self.zeta = nn.Parameter(torch.tensor(self.ZETA_RAW))
        self.nu = nn.Parameter(torch.tensor(self.NU_RAW))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_matrices()
        with torch.no_grad():
            self.bias_z.fill_(1.0)
            self.bias_h.zero_()
            self.zeta.fill_(self.ZETA_RAW)
            self.nu.fill_(self.NU_RAW)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, return_trace: bool = False):
        bsz, steps, _ = x.shape
        h = x.new_zeros(bsz, self.hidden_size) if state is None else state
        zeta, nu = torch.sigmoid(self.zeta), torch.sigmoid(self.nu)
        px = self.wx(x)
        outs, gates = [], []
        for t in range(steps):
            pre = px[:, t] + self.wh(h)
            z = torch.sigmoid(pre + self.bias_z)
            cand = torch.tanh(pre + self.bias_h)
            h = (zeta * (1.0 - z) + nu) * cand + z * h
            outs.append(h)
            if return_trace:
                gates.append(torch.cat([pre + self.bias_z, pre + self.bias_h], dim=-1))
        out = torch.stack(outs, dim=1)
        if return_trace:
            return out, h, RNNTrace(out, torch.stack(gates, dim=1))
        return out, h


class KPRNN(RecurrentLayer):
    """A plain (Elman) RNN layer, torch.nn.RNN's equations: h_t = tanh(Wx x_t + Wh h_{t-1} + bias), bias = torch's
    b_ih + b_hh. KPReluRNN: relu instead of tanh."""

    CELL = "rnn"

    def __init__(self, input_size: int, hidden_size: int, wx: object, wh: object):
        super().__init__(input_size, hidden_size, wx, wh)
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_matrices()
        with torch.no_grad():
            self.bias.zero_()

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.tanh(pre)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, return_trace: bool = False):
        """x (B, T, I) -> (outputs (B, T, H), h), plus an RNNTrace (gates: the pre-activations) if asked."""
        bsz, steps, _ = x.shape
        h = x.new_zeros(bsz, self.hidden_size) if state is None else state
        zx = self.wx(x) + self.bias
        outs, gates = [], []
        for t in range(steps):
            pre = zx[:, t] + self.wh(h)
            h = self.activation(pre)
            outs.append(h)
            if return_trace:
                gates.append(pre)
        out = torch.stack(outs, dim=1)
        if return_trace:
            return out, h, RNNTrace(out, torch.stack(gates, dim=1))
        return out, h


class KPReluRNN(KPRNN):
    """A plain RNN layer with relu: h_t = max(Wx x_t + Wh h_{t-1} + bias, 0) (torch.nn.RNN, nonlinearity='relu')."""

    CELL = "rnn-relu"
    WH_GAIN = 0.5  # Wh entries start at std 0.5/sqrt(H): at 1/sqrt(H) an unbounded relu state grows step by step

    def reset_matrices(self) -> None:
        self.wx.reset_parameters(1.0 / math.sqrt(self.input_size))
        self.wh.reset_parameters(self.WH_GAIN / math.sqrt(self.hidden_size))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)


def layer_class(cell: str) -> type[RecurrentLayer]:
    """The torch layer class of a registered cell."""
    return cells.get(cell).train_layer()


class Bidirectional(nn.Module):
    """Two layers of one cell type, `fwd` over x and `bwd` over x reversed in time; outputs concatenated.

    Output (B, T, 2H): [fwd h_t, bwd h_t] with the backward outputs put back in forward time order, so
    out[:, 0, H:] is the backward layer's final state (it has read the whole sequence), as in torch.nn.LSTM.
    """

    fwd: RecurrentLayer
    bwd: RecurrentLayer

    def __init__(self, cell: str, input_size: int, hidden_size: int, wx: object, wh: object):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.fwd = layer_class(cell)(input_size, hidden_size, wx, wh)
        self.bwd = layer_class(cell)(input_size, hidden_size, wx, wh)
        self.wx_spec, self.wh_spec = self.fwd.wx_spec, self.fwd.wh_spec

    def forward(self, x: torch.Tensor, return_trace: bool = False):
        """x (B, T, I) -> (outputs (B, T, 2H), (fwd state, bwd state)), plus the two traces joined if asked."""
        rev = x.flip(1)
        if not return_trace:
            of, sf = self.fwd(x)
            ob, sb = self.bwd(rev)
            return torch.cat([of, ob.flip(1)], dim=-1), (sf, sb)
        of, sf, tf = self.fwd(x, return_trace=True)
        ob, sb, tb = self.bwd(rev, return_trace=True)
        out = torch.cat([of, ob.flip(1)], dim=-1)
        pairs = zip(vars(tf).values(), vars(tb).values(), strict=True)
        joined = type(tf)(*(torch.cat([a, b.flip(1)], dim=-1) for a, b in pairs))
        return out, (sf, sb), joined


def per_layer_factors(factors: object, num_layers: int, name: str) -> list:
    """Accept one matrix spec (used for every layer) or a list of one spec per layer."""
    if is_single_spec(factors):
        return [factors] * num_layers
    if not isinstance(factors, Iterable):
        raise TypeError(f"{name}: {factors!r} is neither a matrix spec nor a list of them")
    specs = list(factors)
    if len(specs) != num_layers:
        raise ValueError(f"{name}: {len(specs)} factor pairs for {num_layers} layers")
    return specs


def widen_spec(spec: dict, times: int) -> dict:
    """The spec of a matrix with `times` as many columns: the first factor's columns (KP, HKP) multiplied."""
    s = dict(spec)
    if s["kind"] in ("kp", "hkp"):
        f = [list(x) for x in s["factors"]]
        f[0][1] *= times
        s["factors"] = f
    return s


class KPRNNClassifier(nn.Module):
    """Stacked recurrent layers of one cell type, then nn.Linear(H * directions, C) on the final hidden state.

    cell: a registered cell name (kpgen.cells.NAMES: 'lstm', 'gru', 'fastrnn', 'fastgrnn', 'rnn', 'rnn-relu').
    wx / wh: one matrix spec (kpgen.train.nn.matrix: a factor list [[m1, n1], [m2, n2], ...], an HKP / low-rank
    dict, or 'dense') or a list with one spec per layer. With a single wx spec and several layers, layers > 0
    (whose input is h) use the wh spec; when bidirectional (input 2H) its first factor gets twice the columns. The
    head reads h_T of the last layer; bidirectional, [forward h_T, backward h after reading the whole sequence].
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_classes: int,
        wx: object,
        wh: object,
        num_layers: int = 1,
        bidirectional: bool = False,
    ):
        super().__init__()
        if cell not in cells.REGISTRY:
            raise ValueError(f"unknown cell {cell!r}; cells: {', '.join(cells.NAMES)}")
        wh_specs = [matrix_spec(s) for s in per_layer_factors(wh, num_layers, "wh_factors")]
        if is_single_spec(wx):
            dirs = 2 if bidirectional else 1
            wx_specs = [matrix_spec(wx)] + [widen_spec(s, dirs) for s in wh_specs[1:]]
        else:
            wx_specs = [matrix_spec(s) for s in per_layer_factors(wx, num_layers, "wx_factors")]
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.num_layers = num_layers
        self.bidirectional = bool(bidirectional)
        self.wx_specs = wx_specs
        self.wh_specs = wh_specs
        dirs = 2 if bidirectional else 1
        sizes = [input_size] + [dirs * hidden_size] * (num_layers - 1)
        layers: Iterable[nn.Module]
        if bidirectional:
            layers = (Bidirectional(cell, sizes[k], hidden_size, wx_specs[k], wh_specs[k]) for k in range(num_layers))
        else:
            layers = (layer_class(cell)(sizes[k], hidden_size, wx_specs[k], wh_specs[k]) for k in range(num_layers))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(dirs * hidden_size, num_classes)

    def matrices(self) -> list[tuple[str, Matrix]]:
        """(name, module) of every recurrent-layer matrix, e.g. ('layers.0.wx', KPLinear)."""
        return [(n, m) for n, m in self.named_modules()
                if n.rsplit(".", 1)[-1] in ("wx", "wh") and isinstance(m, MATRIX_TYPES)]

    def direction(self, k: int, d: int = 0) -> RecurrentLayer:
        """Layer k's forward (d = 0) or backward (d = 1) recurrent layer; a unidirectional layer is its own."""
        layer = self.layers[k]
        if isinstance(layer, Bidirectional):
            return layer.bwd if d else layer.fwd
        assert isinstance(layer, RecurrentLayer)  # self.layers holds nothing else
        return layer

    def features(self, out: torch.Tensor) -> torch.Tensor:
        """The head's input from the last layer's outputs (B, T, H * directions)."""
        if not self.bidirectional:
            return out[:, -1]
        hs = self.hidden_size
        return torch.cat([out[:, -1, :hs], out[:, 0, hs:]], dim=-1)

    def forward(self, x: torch.Tensor, return_trace: bool = False):
        """x (B, T, I) -> logits (B, C); with return_trace also a list of traces, one per layer."""
        traces = []
        for layer in self.layers:
            if return_trace:
                x, _, tr = layer(x, return_trace=True)
                traces.append(tr)
            else:
                x, _ = layer(x)
        logits = self.head(self.features(x))
        return (logits, traces) if return_trace else logits


class KPLSTMClassifier(KPRNNClassifier):
    """Stacked KP-LSTM layers over a sequence, then nn.Linear(H, C) on the last time step's h.

    wx_factors / wh_factors: one pair ((m1, n1), (m2, n2)) or a list with one pair per layer (any matrix spec
    works, see KPRNNClassifier). With a single wx pair and several layers, layers > 0 use the wh factors.
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
        super().__init__("lstm", input_size, hidden_size, num_classes, wx_factors, wh_factors, num_layers)

    @property
    def wx_factors(self) -> list:
        return [_factor_tuple(s) for s in self.wx_specs]

    @property
    def wh_factors(self) -> list:
        return [_factor_tuple(s) for s in self.wh_specs]


def _factor_tuple(spec: dict) -> tuple | dict:
    """A KP spec's factors as a tuple of (m, n) tuples; other specs unchanged."""
    if spec["kind"] == "kp" and not spec.get("pad"):
        return tuple(tuple(f) for f in spec["factors"])
    return spec
