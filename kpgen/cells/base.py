"""The description of one cell type (`Cell`), and the small helpers several cell modules share.

A `Cell` is everything the pipeline needs to know about a recurrent cell, in one place: its gates and
parameter names, its float step, training layer and quantizer, its golden integer step and gate-sum limit,
and its C kernel names and params initialiser. kpgen.cells registers one per cell module.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# the integer layer's gate requantizers reach this unit (Q3.12) unless a cell says otherwise
GATE_FRAC = 12


@dataclass(frozen=True)
class CField:
    """One initialiser field of a cell's C params struct after the fields every cell shares (sizes, Wx, Wh and
    the requantizers): a bias vector of the layer ('vector', by name), a literal int ('int') or an activation
    table of the model ('table': 'sigmoid' or 'tanh'). templates/model.c.j2 renders them in order."""

    kind: str
    value: str | int


@dataclass(frozen=True)
class Cell:
    """One recurrent cell type, described once (see kpgen.cells for the registry)."""

    name: str  # registry key: --cell value, checkpoint arch.cell
    title: str  # 'LSTM', for messages and generated comments
    article: str  # 'an' or 'a', for messages ("an LSTM")
    gates: int  # row blocks of H in Wx and Wh
    gate_order: str  # '(i, f, g, o)', or '' for a single block
    float_type: type  # the float IR layer
    int_type: type  # the integer IR layer
    vectors: tuple[str, ...]  # bias vectors of both layers, in the C params struct's order
    tensors: dict[str, int]  # training state dict tensors besides the matrices: name -> rows in H (0: a scalar)
    float_step: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]  # (layer, zx, zh, h, c) -> (h, c, pre)
    quantize: Callable[..., Any]  # (layer, input_scale, state_absmax, idx, t_bits, state_exp) -> integer layer
    golden_step: Callable[..., tuple[np.ndarray, np.ndarray]]  # (layer, x, h, c, sig, tanh, t_bits) -> (h, c)
    gate_sums: Callable[..., list[tuple[str, int]]]  # (layer, worst rq(Wx x), worst rq(Wh h)) -> [(what, bound)]
    from_tensors: Callable[..., Any]  # (tensors, prefix, input_size, hidden_size, wx, wh) -> float layer
    c_fields: Callable[[Any], list[CField]]  # integer layer -> its params initialiser fields after the shared ones
    c_params: str  # C params struct type
    c_step: str  # C step function (runtime_c/<c_step>.{c,h} or the file of a sibling cell)
    train_class: str  # the torch layer's class in kpgen.train.nn.rnn
    scalars: tuple[str, ...] = ()  # trainable scalars, Q0.15 in the integer layer (after their sigmoid)
    cell_state: bool = False  # keeps an int16 cell state c besides h (LSTM)
    state_exp: bool = False  # h is Q(e).(7-e) with e from the calibrated max |h| (else Q0.7)
    needs_sigmoid: bool = True  # the step reads the sigmoid table
    gate_scratch: int = 0  # words of the arena's `gates` scratch per hidden unit
    torch_mode: str | None = None  # the torch.nn.RNNBase mode whose state dict this cell reads (compress)
    torch_biases: Callable[..., None] | None = None  # (kpgen layer, b_ih, b_hh, H): torch's biases into the layer
    extra_limits: Callable[[Any], list[str]] = field(default=lambda layer: [])  # cell rules beyond the gate sums
    # (integer layer, torch layer, gx, gh, h, c, ops) -> (h', c'): the golden step on the straight-through tensors
    # of quantization-aware training (kpgen.train.qat); None: the cell cannot be trained with --qat
    qat_step: Callable[..., tuple[Any, Any]] | None = None

    @property
    def c_title(self) -> str:
        """'LSTM, gates (i, f, g, o)', for generated comments."""
        return f"{self.title}, gates {self.gate_order}" if self.gate_order else self.title

    def train_layer(self) -> type:
        """The torch layer class (imported on first use: only training needs torch)."""
        return getattr(importlib.import_module("kpgen.train.nn.rnn"), self.train_class)


def i64(v: np.ndarray | int) -> np.ndarray:
    """Any integer array (or scalar) as int64."""
    return np.asarray(v).astype(np.int64, copy=False)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function of a float array."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def sigmoid_scalar(v: float) -> float:
    """Logistic function of one number, without overflow for large |v| (trainable scalars are stored raw)."""
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))
