"""Random integer-IR objects for tests: valid by the rules of docs/quantization.md, with optional extremes."""

from __future__ import annotations

import numpy as np

from kpgen.cells.lstm import LSTMLayerQ
from kpgen.ir import DenseQ, KPMatrixQ, ModelQ, Requant
from kpgen.quant import limits
from kpgen.quant.quantize import t_shift_for
from kpgen.reference import golden

Factors = tuple[int, int, int, int]  # (m1, n1, m2, n2)


def random_factors(rng: np.random.Generator, rows: int, cols: int) -> Factors:
    """A random (m1, n1, m2, n2) with m1*m2 = rows and n1*n2 = cols (dimension-1 factors included)."""
    m1 = int(rng.choice([d for d in range(1, rows + 1) if rows % d == 0]))
    n1 = int(rng.choice([d for d in range(1, cols + 1) if cols % d == 0]))
    return (m1, n1, rows // m1, cols // n1)


def random_int8(rng: np.random.Generator, shape: tuple[int, ...], mode: str = "random", lo: int = -127) -> np.ndarray:
    """int8 array: 'random' uniform in lo..127, 'min' all -128, 'max' all 127, 'extreme' random picks of -128/127."""
    if mode == "random":
        return rng.integers(lo, 128, size=shape).astype(np.int8)
    if mode == "min":
        return np.full(shape, -128, np.int8)
    if mode == "max":
        return np.full(shape, 127, np.int8)
    if mode == "extreme":
        return rng.choice(np.array([-128, 127], np.int8), size=shape)
    raise ValueError(mode)


def random_kp(rng: np.random.Generator, f: Factors, mode: str = "random") -> KPMatrixQ:
    """int8 KP factors (values -127..127, or extremes) with the t_shift the spec prescribes."""
    m1, n1, m2, n2 = f
    a = random_int8(rng, (m1, n1), mode)
    b = random_int8(rng, (m2, n2), mode)
    if mode == "extreme":  # factors never hold -128 (symmetric quantization)
        a = np.where(a < 0, -127, a).astype(np.int8)
        b = np.where(b < 0, -127, b).astype(np.int8)
    elif mode == "min":
        a[...] = -127
        b[...] = -127
    return KPMatrixQ(a=a, b=b, t_shift=t_shift_for(b), a_scale=0.01, b_scale=0.01)


def random_requant(rng: np.random.Generator, shift_lo: int = 20, shift_hi: int = 40) -> Requant:
    """A multiplier mult / 2**shift with mult in [2**30, 2**31) and shift drawn from shift_lo..shift_hi."""
    return Requant(mult=int(rng.integers(1 << 30, 1 << 31)), shift=int(rng.integers(shift_lo, shift_hi + 1)))


def min_gate_shift(m: KPMatrixQ) -> int:
    """Smallest gate-requantizer shift the C kernels allow for this matrix: |acc| * 2**(32-shift) < 2**31."""
    bound = limits.kp_acc_bound(m.a, m.b, m.t_shift)
    shift = 1
    while (bound << (limits.GATE_SHIFT_MAX - shift)) >= 2**31:
        shift += 1
    return shift


def gate_requant(rng: np.random.Generator, m: KPMatrixQ, mode: str = "random") -> Requant:
    """A gate requantizer within the kernels' limits. 'extreme': the smallest shift and a large mult (gates
    saturate); otherwise a shift in the upper half of the allowed range and a log-uniform mult, so gates
    range from flat to saturated. mult < 2**30 keeps each term below 2**29 and the int32 gate sum safe."""
    lo = min_gate_shift(m)
    if mode == "extreme":
        return Requant(mult=int(rng.integers(1 << 28, 1 << 30)), shift=lo)
    shift = int(rng.integers((lo + limits.GATE_SHIFT_MAX) // 2, limits.GATE_SHIFT_MAX + 1))
    return Requant(mult=int(2 ** rng.uniform(4, 30)), shift=shift)


def gate_headroom(wx: KPMatrixQ, wh: KPMatrixQ, rq_x: Requant, rq_h: Requant) -> int:
    """Largest |bias| for which the int32 gate sum cannot overflow (kpgen.reference.limits.kernel_limits)."""
    worst = 0
    for m, rq in ((wx, rq_x), (wh, rq_h)):
        worst += int(golden.rsr(np.int64(limits.kp_acc_bound(m.a, m.b, m.t_shift)) * np.int64(rq.mult), rq.shift))
    return (1 << 31) - 1 - worst


def random_layer(
    rng: np.random.Generator,
    input_size: int,
    hidden_size: int,
    x_factors: Factors | None = None,
    h_factors: Factors | None = None,
    *,
    mode: str = "random",
    cell_frac: int | None = None,
) -> LSTMLayerQ:
    """A random LSTMLayerQ within the C kernels' limits (kpgen.reference.limits.kernel_limits); mode 'extreme': extreme
    weights, the smallest allowed shifts, biases at the int32 headroom (saturating gates)."""
    h4 = 4 * hidden_size
    fx = x_factors or random_factors(rng, h4, input_size)
    fh = h_factors or random_factors(rng, h4, hidden_size)
    if fx[0] * fx[2] != h4 or fx[1] * fx[3] != input_size or fh[0] * fh[2] != h4 or fh[1] * fh[3] != hidden_size:
        raise ValueError("factor shapes do not match the layer")
    wx, wh = random_kp(rng, fx, mode), random_kp(rng, fh, mode)
    rq_x, rq_h = gate_requant(rng, wx, mode), gate_requant(rng, wh, mode)
    room = gate_headroom(wx, wh, rq_x, rq_h)
    if mode == "extreme":
        big = min(room, (1 << 31) - 1)
        bias = rng.choice(np.array([-big, -(1 << 20), 0, 1 << 20, big], np.int64), size=h4)
        bias = np.clip(bias, -room, room)
    else:
        bias = rng.integers(-3 * 4096, 3 * 4096, size=h4)
    layer = LSTMLayerQ(
        input_size=input_size,
        hidden_size=hidden_size,
        wx=wx,
        wh=wh,
        rq_x=rq_x,
        rq_h=rq_h,
        bias=bias.astype(np.int32),
        cell_frac=int(rng.integers(0, 16)) if cell_frac is None else cell_frac,
        input_scale=1 / 128,
    )
    assert not limits.kernel_limits(layer), limits.kernel_limits(layer)
    return layer


def random_model(
    rng: np.random.Generator, input_size: int, hidden_sizes: tuple[int, ...], num_classes: int, mode: str = "random"
) -> ModelQ:
    """A random stacked ModelQ with real sigmoid/tanh tables and a random int8 head."""
    layers = []
    prev = input_size
    for hs in hidden_sizes:
        layers.append(random_layer(rng, prev, hs, mode=mode))
        prev = hs
    head = DenseQ(
        weight=random_int8(rng, (num_classes, prev)),
        bias=rng.integers(-(1 << 16), 1 << 16, size=num_classes).astype(np.int32),
        out_scale=1e-4,
    )
    return ModelQ(
        input_size=input_size,
        num_classes=num_classes,
        input_scale=1 / 64,
        layers=tuple(layers),
        head=head,
        sigmoid_table=golden.make_table("sigmoid"),
        tanh_table=golden.make_table("tanh"),
    )
