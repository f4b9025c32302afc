"""A recurrent layer from gate-stacked weights in kpgen's gate order, as the graph readers find them (ONNX after
reordering, .pt2 as torch stores them): Wx, Wh and the input and recurrent biases of one direction."""

from __future__ import annotations

import numpy as np

from kpgen.cells.gru import GRULayerF
from kpgen.cells.lstm import LSTMLayerF
from kpgen.cells.rnn import ReluRNNLayerF, RNNLayerF
from kpgen.ir import KPMatrixF


def dense(w: np.ndarray) -> KPMatrixF:
    """A dense matrix as kpgen holds one: the Kronecker product with a 1 x 1 B."""
    return KPMatrixF(np.asarray(w, dtype=np.float64), np.ones((1, 1)))


def layer_from_gates(kind: str, size: int, hs: int, wx: np.ndarray, wh: np.ndarray, bx: np.ndarray,
                     bh: np.ndarray) -> LSTMLayerF | GRULayerF | RNNLayerF:
    """kind "LSTM", "GRU", "RNN" (tanh) or "ReluRNN". The two biases add up, except a GRU's recurrent bias of n,
    which kpgen keeps apart because it sits inside r * (...)."""
    if kind == "LSTM":
        return LSTMLayerF(size, hs, dense(wx), dense(wh), bx + bh)
    if kind == "GRU":
        bias = bx + np.concatenate([bh[: 2 * hs], np.zeros(hs)])
        return GRULayerF(size, hs, dense(wx), dense(wh), bias, bh[2 * hs :])
    cls = ReluRNNLayerF if kind == "ReluRNN" else RNNLayerF
    return cls(size, hs, dense(wx), dense(wh), bx + bh)
