"""The float model in numpy, from the float IR: the accuracy baseline the integer model is compared with."""

from __future__ import annotations

import numpy as np

from kpgen.ir import KPMatrixF, ModelF, cell_of, sublayers


def kp_apply(m: KPMatrixF, x: np.ndarray) -> np.ndarray:
    """W x for a batch x [..., N]: the Kronecker part applied factor by factor (never building the product),
    with the dense top rows of a hybrid matrix on top."""
    x = np.asarray(x, dtype=np.float64)
    lead = x.shape[:-1]
    fs = m.factors
    t = x.reshape(*lead, *(f.shape[1] for f in fs))
    for j, f in enumerate(fs):  # contract mode j of the (n1, ..., nk) tensor with factor j
        t = np.moveaxis(np.tensordot(t, f, axes=([len(lead) + j], [1])), -1, len(lead) + j)
    y = t.reshape(*lead, -1)
    if m.top is not None:
        y = np.concatenate([x @ m.top.T, y], axis=-1)
    return y


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def run_cell(layer, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One unidirectional layer over seq [B, T, I] from zero state: (outputs h [B, T, H], LSTM cells c [B, T, H]
    (zeros for other cells), pre-activations of every nonlinearity [B, T, *])."""
    cell = cell_of(layer)
    bsz, steps = seq.shape[0], seq.shape[1]
    hs = layer.hidden_size
    h = np.zeros((bsz, hs))
    c = np.zeros((bsz, hs))
    outs, cells, pres = np.empty((bsz, steps, hs)), np.zeros((bsz, steps, hs)), []
    zx = kp_apply(layer.wx, seq)
    for t in range(steps):
        zh = kp_apply(layer.wh, h)
        if cell == "lstm":
            z = zx[:, t] + zh + layer.bias
            i, f, g, o = (z[:, k * hs : (k + 1) * hs] for k in range(4))
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
            cells[:, t] = c
        elif cell == "gru":
            gx = zx[:, t] + layer.bias
            r = _sigmoid(gx[:, :hs] + zh[:, :hs])
            zg = _sigmoid(gx[:, hs : 2 * hs] + zh[:, hs : 2 * hs])
            z = np.concatenate([gx[:, : 2 * hs] + zh[:, : 2 * hs], gx[:, 2 * hs :] + r * (zh[:, 2 * hs :] + layer.bias_hn)], 1)
            h = (1.0 - zg) * np.tanh(z[:, 2 * hs :]) + zg * h
        elif cell == "fastrnn":
            z = zx[:, t] + zh + layer.bias
            h = layer.alpha * np.tanh(z) + layer.beta * h
        else:
            pre = zx[:, t] + zh
            zg = _sigmoid(pre + layer.bias_z)
            z = np.concatenate([pre + layer.bias_z, pre + layer.bias_h], 1)
            h = (layer.zeta * (1.0 - zg) + layer.nu) * np.tanh(pre + layer.bias_h) + zg * h
        outs[:, t] = h
        pres.append(z)
    return outs, cells, np.stack(pres, axis=1)


def run_layer(layer, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A layer (unidirectional or bidirectional) over seq: outputs [B, T, H or 2H] in forward time order,
    cells and pre-activations likewise."""
    parts = []
    for k, sub in enumerate(sublayers(layer)):
        if k == 0:
            parts.append(run_cell(sub, seq))
        else:
            parts.append(tuple(a[:, ::-1] for a in run_cell(sub, seq[:, ::-1])))
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate([a, b], axis=-1) for a, b in zip(*parts))


def features(model: ModelF, out: np.ndarray) -> np.ndarray:
    """The head's input from the last layer's outputs: h_T, or [forward h_T, backward h after the whole
    sequence] when the last layer is bidirectional."""
    last = model.layers[-1]
    if len(sublayers(last)) == 1:
        return out[:, -1]
    hs = last.hidden_size
    return np.concatenate([out[:, -1, :hs], out[:, 0, hs:]], axis=-1)


def float_forward(model: ModelF, x: np.ndarray) -> np.ndarray:
    """Logits [B, C] for inputs x [B, T, I] (float64)."""
    seq = np.asarray(x, dtype=np.float64)
    for layer in model.layers:
        seq = run_layer(layer, seq)[0]
    return features(model, seq) @ model.head.weight.T + model.head.bias


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels)) if len(labels) else float("nan")
