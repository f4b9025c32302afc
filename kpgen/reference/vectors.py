"""Test vectors for the firmware and the results the integer reference expects for them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpgen import KpgenError
from kpgen.ir import ModelQ
from kpgen.reference import golden

FNV_OFFSET = 2166136261
FNV_PRIME = 16777619


@dataclass(frozen=True)
class Expected:
    """What the firmware must reproduce for each sample."""

    inputs: np.ndarray  # int8 [N, T, I]
    scores: np.ndarray  # int32 [N, C]
    digests: np.ndarray  # uint32 [N, T]: running digest of every layer's h and c after each step
    labels: np.ndarray  # int64 [N], -1 where unknown


def _fnv_bytes(d: np.ndarray, byte_cols: np.ndarray) -> np.ndarray:
    """FNV-1a over the columns of byte_cols [N, K] (uint8 values), one running digest per row."""
    for k in range(byte_cols.shape[1]):
        d = ((d ^ byte_cols[:, k]) * FNV_PRIME) & 0xFFFFFFFF
    return d


def state_digests(trace: golden.GoldenTrace) -> np.ndarray:
    """Running FNV-1a digest after each step over every layer's outputs (int8) then cell state (int16,
    little-endian; LSTM layers of streaming models only, see golden.GoldenTrace)."""
    n, steps = trace.hidden[0].shape[:2]
    d = np.full(n, FNV_OFFSET, dtype=np.uint64)
    out = np.empty((n, steps), dtype=np.uint32)
    for t in range(steps):
        for h, c in zip(trace.hidden, trace.cell, strict=True):
            hb = h[:, t].astype(np.int64) & 0xFF
            cu = c[:, t].astype(np.int64) & 0xFFFF
            cb = np.stack([cu & 0xFF, cu >> 8], axis=2).reshape(n, -1)
            d = _fnv_bytes(d, hb.astype(np.uint64))
            d = _fnv_bytes(d, cb.astype(np.uint64))
        out[:, t] = d
    return out


def first_samples(trace: golden.GoldenTrace, n: int) -> golden.GoldenTrace:
    """The trace of the first n samples: the golden model treats every sample on its own, so slicing the
    trace of a batch equals running the first n samples again."""
    return golden.GoldenTrace(
        logits=trace.logits[:n], hidden=tuple(h[:n] for h in trace.hidden), cell=tuple(c[:n] for c in trace.cell)
    )


def expected_from_trace(trace: golden.GoldenTrace, xq: np.ndarray, labels: np.ndarray | None = None) -> Expected:
    """What the firmware must reproduce for inputs xq, from the golden trace of exactly those inputs."""
    if len(trace.logits) != len(xq):
        raise ValueError(f"expected_from_trace: a trace of {len(trace.logits)} samples for {len(xq)} inputs")
    lab = np.full(len(xq), -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    return Expected(inputs=xq, scores=trace.logits.astype(np.int32), digests=state_digests(trace), labels=lab)


CLIP_WARN_FRACTION = 0.01  # emit warns when more test inputs than this are clipped by the calibrated range


@dataclass(frozen=True)
class Clipping:
    """How many test inputs golden.quantize_input clamps: values whose rounded x / input_scale lies beyond
    +-127, i.e. outside the calibrated input range."""

    samples: int  # sequences with at least one clipped value
    total: int  # sequences checked
    values: int  # clipped values over all sequences

    @property
    def warn(self) -> bool:
        return self.samples > CLIP_WARN_FRACTION * self.total


def clipping(x: np.ndarray, input_scale: float) -> Clipping:
    """Count the values of x [N, T, I] (float) that the int8 input quantization clamps, and their sequences."""
    x = np.asarray(x, dtype=np.float64)
    out = np.abs(np.round(x / input_scale)) > 127
    per_sample = out.reshape(len(x), -1).any(axis=1) if x.size else np.zeros(len(x), bool)
    return Clipping(samples=int(per_sample.sum()), total=int(len(x)), values=int(out.sum()))


def check_shape(model: ModelQ, xq: np.ndarray) -> None:
    """Test vectors must be [samples, steps, the model's input size]."""
    if xq.ndim != 3 or xq.shape[2] != model.input_size:
        raise KpgenError(
            f"test vectors have shape {xq.shape}, expected [samples, steps, {model.input_size}]; "
            "give sequences with the model's input size"
        )


def expected_for(model: ModelQ, xq: np.ndarray, labels: np.ndarray | None = None) -> Expected:
    """Run the golden model over xq and return what the firmware must reproduce."""
    check_shape(model, xq)
    return expected_from_trace(golden.run_model(model, xq), xq, labels)
