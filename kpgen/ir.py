"""Framework-free intermediate representation: float IR (from the loader) and integer IR (from the quantizer).

Nothing here imports torch. The generic types live here: matrices, bidirectional layers, calibration, heads and
models. Each cell's own layer types (LSTMLayerF / LSTMLayerQ, ...) live with the rest of that cell in its module
of kpgen.cells; here layers are typed by the LayerF and LayerQ protocols, which every cell's layer types satisfy.

A matrix is always a `KPMatrixF` / `KPMatrixQ`: two or more Kronecker factors W = A (x) B (x) rest..., and
for hybrid KP (HKP) `top`, r dense rows stacked above the Kronecker part: W = [top; A (x) B (x) ...], or, with
`top_groups` G > 1, the rows of W in G equal blocks (a gated cell's gates) each starting with r / G of the
dense rows and going on with its share of the Kronecker part's rows (hkp_row_order). A dense matrix is the
case B = 1 x 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# --------------------------------------------------------------------------------------------- float IR


def _kron_all(factors) -> np.ndarray:
    out = np.asarray(factors[0])
    for f in factors[1:]:
        out = np.kron(out, f)
    return out


def hkp_row_order(rows: int, top_rows: int, groups: int = 1) -> np.ndarray:
    """Where an HKP matrix's rows come from: W = S[order], S = [top; A (x) B ...] stacked (top_rows dense rows
    first). groups = 1: the identity. groups = G: W's rows are G blocks of rows / G, and block g is the dense
    rows g*t .. g*t + t - 1 (t = top_rows / G) followed by the Kronecker rows r + g*(rows/G - t) onwards.
    ValueError unless G divides both rows and top_rows."""
    if groups < 1 or rows % groups or top_rows % groups:
        raise ValueError(f"{top_rows} dense rows of {rows} cannot be spread evenly over {groups} row blocks")
    block, t = rows // groups, top_rows // groups
    g, u = np.divmod(np.arange(rows), block)
    return np.where(u < t, g * t + u, top_rows + g * (block - t) + (u - t)).astype(np.int64)


@dataclass(frozen=True)
class KPMatrixF:
    """W = [top; A (x) B (x) rest[0] (x) ...]: Kronecker factors (A: m1 x n1, B: m2 x n2, ...) and, for hybrid
    KP, r dense rows on top (top: r x N, N = n1*n2*...), or spread over top_groups row blocks
    (hkp_row_order). Plain KP: rest = (), top = None."""

    a: np.ndarray
    b: np.ndarray
    rest: tuple[np.ndarray, ...] = ()
    top: np.ndarray | None = None
    top_groups: int = 1

    @property
    def factors(self) -> tuple[np.ndarray, ...]:
        return (self.a, self.b, *self.rest)

    @property
    def top_rows(self) -> int:
        return 0 if self.top is None else int(self.top.shape[0])

    @property
    def kp_shape(self) -> tuple[int, int]:
        """Rows and columns of the Kronecker part."""
        return (math.prod(f.shape[0] for f in self.factors), math.prod(f.shape[1] for f in self.factors))

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.kp_shape
        return (rows + self.top_rows, cols)

    @property
    def is_dense(self) -> bool:
        """A plain dense matrix: A with B = [[1]] (how the loader stores dense matrices), no more factors or rows."""
        return self.b.shape == (1, 1) and float(self.b[0, 0]) == 1.0 and not self.rest and self.top is None

    @property
    def params(self) -> int:
        if self.is_dense:
            return int(self.a.size)
        return int(sum(f.size for f in self.factors) + (0 if self.top is None else self.top.size))

    def dense(self) -> np.ndarray:
        """The explicit matrix; for tests and reports only."""
        kp = _kron_all(self.factors)
        if self.top is None:
            return kp
        return np.vstack([self.top, kp])[hkp_row_order(self.shape[0], self.top_rows, self.top_groups)]


class LayerF(Protocol):
    """What every float layer of every cell has (the cell's own fields: kpgen.cells)."""

    @property
    def input_size(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def wx(self) -> KPMatrixF: ...
    @property
    def wh(self) -> KPMatrixF: ...


@dataclass(frozen=True)
class BiLayerF:
    """A bidirectional layer: `fwd` reads x forwards, `bwd` reads it reversed; the output at step t is
    [fwd h_t, bwd h_t] (bwd's outputs put back in forward time order), 2H values."""

    fwd: LayerF  # a layer of one cell; bwd of the same cell
    bwd: LayerF

    @property
    def input_size(self) -> int:
        return self.fwd.input_size

    @property
    def hidden_size(self) -> int:
        return self.fwd.hidden_size


AnyLayerF = LayerF | BiLayerF


def cell_of(layer: object) -> str:
    """The registered cell name ('lstm', 'gru', ...) of a float or integer layer (the fwd cell of a bidirectional
    one): kpgen.cells.of(layer).name."""
    from kpgen import cells

    return cells.of(layer).name


def directions(layer: object) -> int:
    return 2 if hasattr(layer, "fwd") else 1


def sublayers(layer: object) -> tuple:
    """(layer,) or (fwd, bwd)."""
    if hasattr(layer, "fwd") and hasattr(layer, "bwd"):
        return (layer.fwd, layer.bwd)
    return (layer,)


def out_size(layer: AnyLayerF | AnyLayerQ) -> int:
    """Values per step that the layer hands to the next layer (H, or 2H when bidirectional)."""
    return directions(layer) * layer.hidden_size


def matrices(layer: object) -> tuple:
    """Every matrix of a layer (both directions), Wx before Wh."""
    return tuple(m for s in sublayers(layer) for m in (s.wx, s.wh))


def vectors(layer: object) -> tuple:
    """Every bias vector of a layer (both directions), in the cell's order (kpgen.cells: Cell.vectors)."""
    from kpgen import cells

    names = cells.of(layer).vectors
    return tuple(getattr(s, n) for s in sublayers(layer) for n in names)


def scalars(layer: object) -> int:
    """Number of trainable scalars (FastRNN alpha, beta; FastGRNN zeta, nu), both directions."""
    from kpgen import cells

    return len(sublayers(layer)) * len(cells.of(layer).scalars)


@dataclass(frozen=True)
class DenseF:
    weight: np.ndarray  # (C, H)
    bias: np.ndarray  # (C,)


@dataclass(frozen=True)
class Calibration:
    """Ranges observed on training data, stored in the checkpoint; the quantizer's only view of data."""

    input_absmax: float  # max |x| over the calibration inputs
    cell_absmax: tuple[float, ...]  # max |c_t| per layer
    gate_absmax: tuple[float, ...] = ()  # max |z_t| (pre-activation) per layer, for reports
    hidden_absmax: float = 0.0  # max ReLU output of an MLP head's hidden layer (0: the model has none)


# What the head reads of the last layer's outputs (docs/quantization.md, "Heads"): "last", the final states
# (PyTorch's h_n: forward h_T, and a bidirectional layer's backward h after the whole sequence); "last_output",
# the outputs at the last step (out[:, -1]: for a bidirectional layer the backward half has read one step only);
# "mean" and "max" over every step.
POOLS = ("last", "last_output", "mean", "max")


def check_pool(pool: str) -> str:
    """pool if it is one of POOLS; a ValueError otherwise (the front ends name the user's mistake first)."""
    if pool not in POOLS:
        raise ValueError(f"unknown head pool {pool!r}: expected one of {', '.join(POOLS)}")
    return pool


@dataclass(frozen=True)
class ModelF:
    """A float model: stacked layers over a sequence, then the head: `pool` reads the last layer's outputs (the
    last step, or the mean or max over time), an optional `hidden` Linear + ReLU, then the Linear `head`.
    The defaults (last step, no hidden layer) are the models kpgen has always read."""

    input_size: int
    num_classes: int
    layers: tuple[AnyLayerF, ...]
    head: DenseF
    calibration: Calibration
    meta: dict = field(default_factory=dict)  # dataset name, sequence length, training report
    pool: str = "last"  # one of POOLS
    hidden: DenseF | None = None  # an MLP head's first Linear (K, F), followed by ReLU; head is then (C, K)

    def __post_init__(self) -> None:
        check_pool(self.pool)

    def _head_params(self) -> int:
        extra = 0 if self.hidden is None else self.hidden.weight.size + self.hidden.bias.size
        return int(self.head.weight.size + self.head.bias.size + extra)

    @property
    def params(self) -> int:
        n = 0
        for l in self.layers:
            n += sum(m.params for m in matrices(l)) + sum(v.size for v in vectors(l)) + scalars(l)
        return int(n + self._head_params())

    @property
    def dense_params(self) -> int:
        """Parameters of the same network with uncompressed matrices."""
        n = 0
        for l in self.layers:
            n += sum(m.shape[0] * m.shape[1] for m in matrices(l)) + sum(v.size for v in vectors(l)) + scalars(l)
        return int(n + self._head_params())


# ------------------------------------------------------------------------------------------- integer IR


@dataclass(frozen=True)
class Requant:
    """Fixed-point multiplier: y = (acc * mult + 2**(shift-1)) >> shift. The gate requantizers have mult in
    [1, 2**31) and shift in [1, 32] (quantize.requant_gate; docs/quantization.md)."""

    mult: int
    shift: int

    @property
    def real(self) -> float:
        return self.mult / 2.0**self.shift


@dataclass(frozen=True)
class KPMatrixQ:
    """int8 factors of W = [top; A (x) B (x) rest...] (docs/quantization.md).

    Two factors: T = sat16(rsr(X B^T, t_shift)), y = vec(A T). More factors: B is replaced by the product of
    the remaining factors, applied to each row of X the same way (recursively), and rest_shifts[j] is the
    rounding shift of the product of factors j+2.. (so `shifts` = (t_shift, *rest_shifts), one per factor
    boundary). HKP: the top rows' int32 products top @ x are scaled by 2**top_shift (a left shift when
    top_shift >= 0, a rounding right shift otherwise) into the unit of the Kronecker part's output.
    """

    a: np.ndarray  # int8 (m1, n1)
    b: np.ndarray  # int8 (m2, n2)
    t_shift: int
    a_scale: float
    b_scale: float
    rest: tuple[np.ndarray, ...] = ()  # int8 factors 3..k
    rest_shifts: tuple[int, ...] = ()
    rest_scales: tuple[float, ...] = ()
    top: np.ndarray | None = None  # int8 (r, N): HKP dense rows
    top_shift: int = 0
    top_scale: float = 1.0
    top_groups: int = 1  # the dense rows spread over this many row blocks (hkp_row_order)

    @property
    def factors(self) -> tuple[np.ndarray, ...]:
        return (self.a, self.b, *self.rest)

    @property
    def shifts(self) -> tuple[int, ...]:
        return (self.t_shift, *self.rest_shifts)

    @property
    def scales(self) -> tuple[float, ...]:
        return (self.a_scale, self.b_scale, *self.rest_scales)

    @property
    def top_rows(self) -> int:
        return 0 if self.top is None else int(self.top.shape[0])

    @property
    def kp_shape(self) -> tuple[int, int]:
        return (math.prod(f.shape[0] for f in self.factors), math.prod(f.shape[1] for f in self.factors))

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.kp_shape
        return (rows + self.top_rows, cols)

    @property
    def is_dense(self) -> bool:
        """A folded dense matrix: A with B = [[1]] (quantize.quantize_kp), run by the dense kernel."""
        return self.b.shape == (1, 1) and not self.rest and self.top is None

    @property
    def unit(self) -> float:
        """Real value of one unit of the int32 output, per unit of the int8 input: prod(scales) * 2**sum(shifts)."""
        return math.prod(self.scales) * 2.0 ** sum(self.shifts)

    @property
    def nbytes(self) -> int:
        """int8 weight bytes (unpacked)."""
        return int(sum(f.size for f in self.factors) + (0 if self.top is None else self.top.size))


class LayerQ(Protocol):
    """What every integer layer of every cell has (the cell's own fields: kpgen.cells)."""

    @property
    def input_size(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def wx(self) -> KPMatrixQ: ...
    @property
    def wh(self) -> KPMatrixQ: ...
    @property
    def rq_x(self) -> Requant: ...
    @property
    def rq_h(self) -> Requant: ...
    @property
    def input_scale(self) -> float: ...


@dataclass(frozen=True)
class BiLayerQ:
    fwd: LayerQ  # a layer of one cell; bwd of the same cell
    bwd: LayerQ

    @property
    def input_size(self) -> int:
        return self.fwd.input_size

    @property
    def hidden_size(self) -> int:
        return self.fwd.hidden_size


AnyLayerQ = LayerQ | BiLayerQ


def state_scale(layer: object) -> float:
    """Real value of one step of an integer layer's int8 state h (and output): 2**(state_exp - 7). LSTM and GRU
    layers have no state_exp (h is Q0.7, 1/128); a BiLayerQ's directions share one exponent (fwd's is read)."""
    inner = getattr(layer, "fwd", layer)
    return 2.0 ** (int(getattr(inner, "state_exp", 0)) - 7)


@dataclass(frozen=True)
class DenseQ:
    weight: np.ndarray  # int8 (C, H)
    bias: np.ndarray  # int32 (C,), in units of out_scale
    out_scale: float  # real value of one unit of the int32 output


@dataclass(frozen=True)
class HiddenQ:
    """An MLP head's hidden layer: acc = bias + W f (int32), h = min(rsr(max(acc, 0) * rq.mult, rq.shift), 127)
    as int8 (golden.kp_fc_relu_s8), one step worth out_scale."""

    weight: np.ndarray  # int8 (K, F)
    bias: np.ndarray  # int32 (K,), in units of the accumulator (weight scale x feature scale)
    rq: Requant  # accumulator unit / out_scale
    out_scale: float  # real value of one step of the int8 hidden output


# Storage widths of the gate biases (every layer's cell vectors, ir.vectors) in flash: int16 when every value of
# every layer fits it (the quantizer's choice, gate_bias_bits), else int32. The values, and so the arithmetic, are
# the same either way: the kernels sign-extend each one to int32 as they load it (docs/quantization.md).
BIAS_BITS = (16, 32)


def gate_bias_bits(layers: tuple) -> int:
    """16 when every gate bias of every layer (both directions) fits int16, else 32."""
    fits = all(v.size == 0 or (int(np.min(v)) >= -(1 << 15) and int(np.max(v)) < (1 << 15))
               for l in layers for v in vectors(l))
    return 16 if fits else 32


@dataclass(frozen=True)
class ModelQ:
    input_size: int
    num_classes: int
    input_scale: float  # x_int8 = clamp(round(x / input_scale), -127, 127)
    layers: tuple[AnyLayerQ, ...]
    head: DenseQ
    sigmoid_table: np.ndarray  # int16 (1024,): kpgen.reference.golden.make_table
    tanh_table: np.ndarray  # int16 (1024,)
    meta: dict = field(default_factory=dict)
    pool: str = "last"  # one of POOLS (ModelF.pool)
    hidden: HiddenQ | None = None  # an MLP head's hidden layer (ModelF.hidden)
    # storage width of the gate biases in flash (BIAS_BITS; the quantizer picks 16 when they all fit, gate_bias_bits);
    # the head's and the hidden layer's biases are int32 always
    bias_bits: int = 32

    def __post_init__(self) -> None:
        check_pool(self.pool)
        if self.bias_bits not in BIAS_BITS:
            raise ValueError(f"bias_bits {self.bias_bits!r} is not one of {', '.join(map(str, BIAS_BITS))}")
        if self.bias_bits == 16 and gate_bias_bits(self.layers) != 16:
            raise ValueError("bias_bits 16 but a gate bias does not fit int16")

    @property
    def weight_bytes(self) -> int:
        """int8 weights, gate biases (bias_bits wide), int32 head biases and int16 scalars, unpacked."""
        n = 0
        bias_bytes = self.bias_bits // 8
        for l in self.layers:
            n += sum(m.nbytes for m in matrices(l)) + bias_bytes * sum(v.size for v in vectors(l)) + 2 * scalars(l)
        if self.hidden is not None:
            n += self.hidden.weight.size + 4 * self.hidden.bias.size
        return int(n + self.head.weight.size + 4 * self.head.bias.size)
