"""Small hand-built kpgen checkpoints (docs/checkpoint.md) and test-vector files for CLI, fuzz and build tests.

Built directly as dicts of tensors, without the training side, so they are fast and every field can be
broken on purpose.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

# Two layers, I = 6, H = 4, C = 3; dimension-1 factors in layer 1's Wh.
ARCH = {
    "cell": "lstm",
    "input_size": 6,
    "hidden_size": 4,
    "num_layers": 2,
    "num_classes": 3,
    "wx_factors": [[[4, 2], [4, 3]], [[8, 2], [2, 2]]],
    "wh_factors": [[[8, 4], [2, 1]], [[16, 1], [1, 4]]],
}


def tiny_checkpoint(seed: int = 0, arch: dict | None = None, scale: float = 0.5) -> dict:
    """A valid checkpoint dict with random float32 weights for `arch` (default ARCH)."""
    arch = copy.deepcopy(arch or ARCH)
    gen = torch.Generator().manual_seed(seed)
    hid, n_cls = arch["hidden_size"], arch["num_classes"]
    sd: dict[str, torch.Tensor] = {}
    for k in range(arch["num_layers"]):
        for name in ("wx", "wh"):
            (m1, n1), (m2, n2) = arch[f"{name}_factors"][k]
            sd[f"layers.{k}.{name}.a"] = torch.randn(m1, n1, generator=gen) * scale
            sd[f"layers.{k}.{name}.b"] = torch.randn(m2, n2, generator=gen) * scale
        sd[f"layers.{k}.bias"] = torch.randn(4 * hid, generator=gen) * 0.2
    sd["head.weight"] = torch.randn(n_cls, hid, generator=gen) * scale
    sd["head.bias"] = torch.randn(n_cls, generator=gen) * 0.1
    n_layers = arch["num_layers"]
    return {
        "format": "kpgen-checkpoint",
        "version": 1,
        "arch": arch,
        "state_dict": sd,
        "calibration": {"input_absmax": 1.5, "cell_absmax": [2.0] * n_layers, "gate_absmax": [4.0] * n_layers},
        "meta": {"dataset": "none-shipped", "seq_len": 5},
    }


def save(ckpt: object, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def vectors(path: Path, samples: int = 3, steps: int = 5, features: int = 6, seed: int = 0, labels: bool = True,
            classes: int = 3) -> Path:
    """An .npz of test inputs x [samples, steps, features] in -1.5..1.5 (and labels y in 0..classes-1)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.5, 1.5, size=(samples, steps, features))
    arrays = {"x": x}
    if labels:
        arrays["y"] = rng.integers(0, classes, size=samples)
    np.savez(path, **arrays)
    return Path(path)
