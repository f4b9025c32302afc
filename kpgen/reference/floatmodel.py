"""The float model in numpy, from the float IR: the accuracy baseline the integer model is compared with."""

from __future__ import annotations

import numpy as np

from kpgen import cells
from kpgen.ir import AnyLayerF, KPMatrixF, LayerF, ModelF, hkp_row_order, sublayers


def kp_apply(m: KPMatrixF, x: np.ndarray) -> np.ndarray:
    """W x for a batch x [..., N]: the Kronecker part applied factor by factor (never building the product),
    with the dense top rows of a hybrid matrix on top (or spread: kpgen.ir.hkp_row_order)."""
    x = np.asarray(x, dtype=np.float64)
    lead = x.shape[:-1]
    fs = m.factors
    if len(fs) == 2:  # (A kron B) x = A X B^T with X the n1 x n2 view of x: two batched matmuls, no copies
        a, b = fs
        y = (a @ x.reshape(-1, a.shape[1], b.shape[1]) @ b.T).reshape(*lead, -1)
    else:
        t = x.reshape(*lead, *(f.shape[1] for f in fs))
        for j, f in enumerate(fs):  # contract mode j of the (n1, ..., nk) tensor with factor j
            t = np.moveaxis(np.tensordot(t, f, axes=([len(lead) + j], [1])), -1, len(lead) + j)
        y = t.reshape(*lead, -1)
    if m.top is not None:
        y = np.concatenate([x @ m.top.T, y], axis=-1)
        if m.top_groups > 1:
            y = y[..., hkp_row_order(y.shape[-1], m.top_rows, m.top_groups)]
    return y


def run_cell(layer: LayerF, seq: np.ndarray, keep_pre: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One unidirectional layer over seq [B, T, I] from zero state: (outputs h [B, T, H], cell states c [B, T, H]
    (zeros for cells without one), pre-activations of every nonlinearity [B, T, *], or [B, T, 0] without
    keep_pre: only calibration reads them); the step is the cell's float step from the registry (kpgen.cells)."""
    step = cells.of(layer).float_step
    bsz, steps = seq.shape[0], seq.shape[1]
    hs = layer.hidden_size
    h = np.zeros((bsz, hs))
    c = np.zeros((bsz, hs))
    outs, cell_states, pres = np.empty((bsz, steps, hs)), np.zeros((bsz, steps, hs)), []
    zx = kp_apply(layer.wx, seq)
    for t in range(steps):
        h, c, z = step(layer, zx[:, t], kp_apply(layer.wh, h), h, c)
        cell_states[:, t] = c
        outs[:, t] = h
        if keep_pre:
            pres.append(z)
    return outs, cell_states, np.stack(pres, axis=1) if keep_pre else np.zeros((bsz, steps, 0))


def run_layer(layer: AnyLayerF, seq: np.ndarray, keep_pre: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A layer (unidirectional or bidirectional) over seq: outputs [B, T, H or 2H] in forward time order,
    cells and pre-activations likewise (see run_cell for keep_pre)."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for k, sub in enumerate(sublayers(layer)):
        if k == 0:
            parts.append(run_cell(sub, seq, keep_pre))
        else:
            outs, cells, pres = run_cell(sub, seq[:, ::-1], keep_pre)
            parts.append((outs[:, ::-1], cells[:, ::-1], pres[:, ::-1]))
    if len(parts) == 1:
        return parts[0]
    fwd, bwd = parts
    return (np.concatenate([fwd[0], bwd[0]], axis=-1), np.concatenate([fwd[1], bwd[1]], axis=-1),
            np.concatenate([fwd[2], bwd[2]], axis=-1))


def features(model: ModelF, out: np.ndarray) -> np.ndarray:
    """The head's input from the last layer's outputs [B, T, *] (model.pool): "last": h_T, or [forward h_T,
    backward h after the whole sequence] when the last layer is bidirectional; "mean" / "max": the mean / max of
    every output over all T steps (both directions' halves alike)."""
    if model.pool == "mean":
        return out.mean(axis=1)
    if model.pool == "max":
        return out.max(axis=1)
    if model.pool == "last_output":
        return out[:, -1]
    last = model.layers[-1]
    if len(sublayers(last)) == 1:
        return out[:, -1]
    hs = last.hidden_size
    return np.concatenate([out[:, -1, :hs], out[:, 0, hs:]], axis=-1)


def head_hidden(model: ModelF, feats: np.ndarray) -> np.ndarray:
    """An MLP head's hidden activations relu(W1 f + b1) [B, K] (feats itself when the head has no hidden layer)."""
    if model.hidden is None:
        return feats
    return np.maximum(feats @ model.hidden.weight.T + model.hidden.bias, 0.0)


def float_forward(model: ModelF, x: np.ndarray) -> np.ndarray:
    """Logits [B, C] for inputs x [B, T, I] (float64)."""
    seq = np.asarray(x, dtype=np.float64)
    for layer in model.layers:
        seq = run_layer(layer, seq, keep_pre=False)[0]
    return head_hidden(model, features(model, seq)) @ model.head.weight.T + model.head.bias


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels)) if len(labels) else float("nan")
