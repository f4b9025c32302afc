"""The float model in numpy, from the float IR: the accuracy baseline the integer model is compared with."""

from __future__ import annotations

import numpy as np

from kpgen.ir import KPMatrixF, ModelF


def kp_apply(m: KPMatrixF, x: np.ndarray) -> np.ndarray:
    """(A (x) B) x for a batch x [..., n1*n2] via vec(A X B^T), never building the product."""
    (m1, n1), (m2, n2) = m.a.shape, m.b.shape
    xm = x.reshape(*x.shape[:-1], n1, n2)
    y = m.a @ (xm @ m.b.T)
    return y.reshape(*x.shape[:-1], m1 * m2)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def float_forward(model: ModelF, x: np.ndarray) -> np.ndarray:
    """Logits [B, C] for inputs x [B, T, I] (float64)."""
    seq = np.asarray(x, dtype=np.float64)
    bsz, steps = seq.shape[0], seq.shape[1]
    for layer in model.layers:
        hs = layer.hidden_size
        h = np.zeros((bsz, hs))
        c = np.zeros((bsz, hs))
        outs = np.empty((bsz, steps, hs))
        for t in range(steps):
            z = kp_apply(layer.wx, seq[:, t]) + kp_apply(layer.wh, h) + layer.bias
            i, f, g, o = (z[:, k * hs : (k + 1) * hs] for k in range(4))
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
            outs[:, t] = h
        seq = outs
    return seq[:, -1] @ model.head.weight.T + model.head.bias


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels)) if len(labels) else float("nan")
