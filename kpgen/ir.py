"""Framework-free intermediate representation: float IR (from the loader) and integer IR (from the quantizer).

Nothing here imports torch. Gate order in every LSTM matrix and bias is (i, f, g, o), each block H rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# --------------------------------------------------------------------------------------------- float IR


@dataclass(frozen=True)
class KPMatrixF:
    """A matrix W = A (x) B kept as its two factors (A: m1 x n1, B: m2 x n2; W: m1*m2 x n1*n2)."""

    a: np.ndarray
    b: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (self.a.shape[0] * self.b.shape[0], self.a.shape[1] * self.b.shape[1])

    @property
    def params(self) -> int:
        return int(self.a.size + self.b.size)

    def dense(self) -> np.ndarray:
        """The explicit matrix; for tests and reports only."""
        return np.kron(self.a, self.b)


@dataclass(frozen=True)
class LSTMLayerF:
    """One KP-LSTM layer: z = Wx x + Wh h + bias; gates (i, f, g, o)."""

    input_size: int
    hidden_size: int
    wx: KPMatrixF  # (4H, I)
    wh: KPMatrixF  # (4H, H)
    bias: np.ndarray  # (4H,), input and recurrent biases already summed


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


@dataclass(frozen=True)
class ModelF:
    """A float model: stacked KP-LSTM layers over a sequence, then a dense head on the last hidden state."""

    input_size: int
    num_classes: int
    layers: tuple[LSTMLayerF, ...]
    head: DenseF
    calibration: Calibration
    meta: dict = field(default_factory=dict)  # dataset name, sequence length, training report

    @property
    def params(self) -> int:
        n = sum(l.wx.params + l.wh.params + l.bias.size for l in self.layers)
        return int(n + self.head.weight.size + self.head.bias.size)

    @property
    def dense_params(self) -> int:
        """Parameters of the same network with uncompressed matrices."""
        n = sum(l.wx.shape[0] * l.wx.shape[1] + l.wh.shape[0] * l.wh.shape[1] + l.bias.size for l in self.layers)
        return int(n + self.head.weight.size + self.head.bias.size)


# ------------------------------------------------------------------------------------------- integer IR


@dataclass(frozen=True)
class Requant:
    """Fixed-point multiplier: y = (acc * mult + 2**(shift-1)) >> shift. The gate requantizers have mult in
    [1, 2**31) and shift in [1, 32] (quant.requant_gate; docs/quantization.md)."""

    mult: int
    shift: int

    @property
    def real(self) -> float:
        return self.mult / 2.0**self.shift


@dataclass(frozen=True)
class KPMatrixQ:
    """int8 factors of W = A (x) B; the intermediate T = X B^T is rounded right by t_shift into int16."""

    a: np.ndarray  # int8 (m1, n1)
    b: np.ndarray  # int8 (m2, n2)
    t_shift: int
    a_scale: float
    b_scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return (self.a.shape[0] * self.b.shape[0], self.a.shape[1] * self.b.shape[1])


@dataclass(frozen=True)
class LSTMLayerQ:
    input_size: int
    hidden_size: int
    wx: KPMatrixQ
    wh: KPMatrixQ
    rq_x: Requant  # Wx accumulator -> gate pre-activation Q3.12
    rq_h: Requant  # Wh accumulator -> gate pre-activation Q3.12
    bias: np.ndarray  # int32 (4H,), Q3.12
    cell_frac: int  # cell state c is int16 with cell_frac fractional bits
    input_scale: float  # real value of one input step (int8 x)


@dataclass(frozen=True)
class DenseQ:
    weight: np.ndarray  # int8 (C, H)
    bias: np.ndarray  # int32 (C,), in units of out_scale
    out_scale: float  # real value of one unit of the int32 output


@dataclass(frozen=True)
class ModelQ:
    input_size: int
    num_classes: int
    input_scale: float  # x_int8 = clamp(round(x / input_scale), -127, 127)
    layers: tuple[LSTMLayerQ, ...]
    head: DenseQ
    sigmoid_table: np.ndarray  # int16 (1024,): kpgen.golden.make_table
    tanh_table: np.ndarray  # int16 (1024,)
    meta: dict = field(default_factory=dict)

    @property
    def weight_bytes(self) -> int:
        n = 0
        for l in self.layers:
            n += l.wx.a.size + l.wx.b.size + l.wh.a.size + l.wh.b.size + 4 * l.bias.size
        return int(n + self.head.weight.size + 4 * self.head.bias.size)
