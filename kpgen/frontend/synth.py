"""Random float LSTM classifiers (float IR) for tests and benchmarks: dense and Kronecker, calibrated.

Deterministic from a seed. Weights have the scale of a trained LSTM: every matrix entry ~ N(0, 1/fan_in)
(for a Kronecker product, each factor carries half of it: A, B ~ N(0, fan_in**-1/2)), biases small with the
forget gate at +1, inputs uniform in [-1, 1]; the calibration (input and cell ranges) is measured by running
the float model, as training would. A dense matrix is a Kronecker product with B = [[1]].
"""

from __future__ import annotations

import numpy as np

from kpgen import cells
from kpgen.cells.lstm import LSTMLayerF
from kpgen.ir import Calibration, DenseF, KPMatrixF, ModelF
from kpgen.reference import golden
from kpgen.reference.floatmodel import features, head_hidden, run_layer

Factors = tuple[int, int, int, int]  # (m1, n1, m2, n2): W (m1*m2 x n1*n2) = A (m1 x n1) (x) B (m2 x n2)


def min_mac_factors(rows: int, cols: int, min_compression: float = 16.0) -> Factors:
    """Kronecker factors of a rows x cols matrix with at least `min_compression` fewer parameters than the
    dense matrix and the fewest multiply-accumulates (ties: fewer parameters). Only shapes whose product can
    have full rank count (rank(A (x) B) = rank(A) rank(B)), and n1 stays within golden.MAX_N1."""
    best = None
    for m1 in (d for d in range(1, rows + 1) if rows % d == 0):
        for n1 in (d for d in range(1, cols + 1) if cols % d == 0):
            m2, n2 = rows // m1, cols // n1
            params = m1 * n1 + m2 * n2
            if rows * cols < min_compression * params or n1 > golden.MAX_N1:
                continue
            if min(m1, n1) * min(m2, n2) < min(rows, cols):
                continue
            key = (golden.kp_matvec_macs(m1, n1, m2, n2), params, m1, n1)
            if best is None or key < best[0]:
                best = (key, (m1, n1, m2, n2))
    if best is None:
        raise ValueError(f"no Kronecker factors of a {rows} x {cols} matrix reach {min_compression}x compression")
    return best[1]


def default_factors(rows: int, cols: int) -> Factors:
    """min_mac_factors at 16x compression, or at the highest of 8x, 4x, 2x, 1x a small matrix allows."""
    for c in (16.0, 8.0, 4.0, 2.0, 1.0):
        try:
            return min_mac_factors(rows, cols, c)
        except ValueError:
            continue
    return (rows, cols, 1, 1)


def random_matrix(rng: np.random.Generator, factors: Factors) -> KPMatrixF:
    """A (m1*m2 x n1*n2) matrix as Kronecker factors, entries of the product ~ N(0, 1/fan_in); B = [[1]] when
    the factors say 1 x 1 (a dense matrix)."""
    m1, n1, m2, n2 = factors
    fan_in = n1 * n2
    if m2 == 1 and n2 == 1:
        return KPMatrixF(a=rng.normal(0.0, fan_in**-0.5, (m1, n1)), b=np.ones((1, 1)))
    s = fan_in**-0.25
    return KPMatrixF(a=rng.normal(0.0, s, (m1, n1)), b=rng.normal(0.0, s, (m2, n2)))


def random_inputs(seed: int, samples: int, steps: int, input_size: int) -> np.ndarray:
    """Input sequences [samples, steps, input_size], uniform in [-1, 1] (float64)."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (samples, steps, input_size))


def random_model_f(
    hidden: int,
    inputs: int,
    classes: int,
    wx_factors: Factors | None = None,
    wh_factors: Factors | None = None,
    seed: int = 0,
    layers: int = 1,
    calib_samples: int = 64,
    calib_steps: int = 16,
) -> ModelF:
    """A calibrated random LSTM classifier: `layers` stacked layers of `hidden` units over `inputs` features,
    then a dense head of `classes`. Factors default to default_factors (the fewest MACs at 16x compression);
    pass (4H, n, 1, 1) for dense. Factors given apply to the first layer; later layers (input = hidden) use
    (4H, H, 1, 1) if wh_factors is dense, else default_factors."""
    rng = np.random.default_rng(seed)
    h4 = 4 * hidden
    wx_f = wx_factors or default_factors(h4, inputs)
    wh_f = wh_factors or default_factors(h4, hidden)
    dense = wh_f[2] * wh_f[3] == 1
    built = []
    for k in range(layers):
        fx = wx_f if k == 0 else ((h4, hidden, 1, 1) if dense else default_factors(h4, hidden))
        bias = rng.uniform(-0.1, 0.1, h4)
        bias[hidden : 2 * hidden] += 1.0  # forget-gate bias 1, as LSTM training usually starts
        built.append(LSTMLayerF(input_size=inputs if k == 0 else hidden, hidden_size=hidden,
                                wx=random_matrix(rng, fx), wh=random_matrix(rng, wh_f), bias=bias))  # fmt: skip
    head = DenseF(weight=rng.normal(0.0, hidden**-0.5, (classes, hidden)), bias=rng.uniform(-0.1, 0.1, classes))
    model = ModelF(
        input_size=inputs,
        num_classes=classes,
        layers=tuple(built),
        head=head,
        calibration=Calibration(input_absmax=1.0, cell_absmax=(1.0,) * layers),
        meta={"source": f"kpgen.frontend.synth seed {seed}"},
    )
    cal = calibrate(model, random_inputs(seed + 1, calib_samples, calib_steps, inputs))
    return ModelF(model.input_size, model.num_classes, model.layers, model.head, cal, dict(model.meta))


def dense_lstm_model(seed: int, input_size: int, hidden_size: int, num_classes: int) -> ModelF:
    """A calibrated random one-layer dense LSTM classifier (both matrices with B = [[1]])."""
    h4 = 4 * hidden_size
    return random_model_f(hidden_size, input_size, num_classes, (h4, input_size, 1, 1), (h4, hidden_size, 1, 1), seed)


def kp_lstm_model(
    seed: int,
    input_size: int,
    hidden_size: int,
    num_classes: int,
    wx_factors: Factors | None = None,
    wh_factors: Factors | None = None,
) -> ModelF:
    """A calibrated random one-layer KP-LSTM classifier; factors default to default_factors."""
    return random_model_f(hidden_size, input_size, num_classes, wx_factors, wh_factors, seed)


def calibrate(model: ModelF, x: np.ndarray) -> Calibration:
    """The ranges the quantizer needs, measured by running the float model (kpgen.reference.floatmodel) on inputs
    x [B, T, I]: max |x|, and per layer max |c| (LSTM; max |h| for the other cells) over both directions, and
    max |pre-activation|; for an MLP head, its largest hidden activation."""
    seq = np.asarray(x, dtype=np.float64)
    state, gates = [], []
    for layer in model.layers:
        out, cell_states, pre = run_layer(layer, seq)
        st = cell_states if cells.of(layer).cell_state else out
        state.append(float(np.max(np.abs(st))))
        gates.append(float(np.max(np.abs(pre))))
        seq = out
    hid = 0.0 if model.hidden is None else float(np.max(head_hidden(model, features(model, seq)), initial=0.0))
    return Calibration(float(np.max(np.abs(x))), tuple(state), tuple(gates), hid)
