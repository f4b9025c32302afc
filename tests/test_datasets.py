"""The datasets shipped inside packages: shapes, deterministic splits, label ranges, value ranges."""

import builtins
import importlib.util

import numpy as np
import pytest

from kpgen import KpgenError
from kpgen.frontend import datasets

EXPECTED = {  # name: (train x shape, test x shape, classes)
    "digits": ((1497, 8, 8), (300, 8, 8), 10),
    "basicmotions": ((40, 100, 6), (40, 100, 6), 4),
    "japanesevowels": ((270, 29, 12), (370, 29, 12), 9),
    "daphnet": ((459, 64, 3), (99, 64, 3), 3),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shapes_labels_ranges_and_determinism(name):
    a, b = datasets.load(name, seed=0), datasets.load(name, seed=0)
    tr_shape, te_shape, classes = EXPECTED[name]
    assert a.x_train.shape == tr_shape and a.x_test.shape == te_shape
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.num_classes == classes
    assert set(np.unique(a.y_train)) == set(range(classes)) and a.y_test.min() >= 0 and a.y_test.max() < classes
    for x in (a.x_train, a.x_test):
        assert np.isfinite(x).all() and -1.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)


def test_digits_split_is_stratified_and_seeded():
    a = datasets.load("digits", seed=0)
    assert np.bincount(a.y_test).tolist() == [30] * 10
    assert a.x_train.min() == 0.0 and a.x_train.max() == 1.0
    assert not np.array_equal(datasets.load("digits", seed=1).y_test, a.y_test)


def test_japanese_vowels_left_padding_and_lengths():
    s = datasets.load("japanesevowels")
    for x, lengths in ((s.x_train, s.len_train), (s.x_test, s.len_test)):
        assert lengths.min() >= 7 and lengths.max() <= 29 and len(lengths) == len(x)
        for i in range(0, len(x), 37):
            pad = 29 - lengths[i]
            assert not x[i, :pad].any()  # zeros before the utterance
            assert np.abs(x[i, pad:]).sum(axis=1).min() > 0  # data up to the last step
    assert s.len_train.max() == 26 and s.len_test.max() == 29


def test_daphnet_windows_are_balanced_and_split_in_time():
    s = datasets.load("daphnet")
    assert np.bincount(s.y_train).tolist() == [153] * 3 and np.bincount(s.y_test).tolist() == [33] * 3
    other = datasets.load("daphnet", seed=1)  # the seed only shuffles the order
    assert not np.array_equal(other.y_train, s.y_train)
    np.testing.assert_array_equal(np.sort(other.x_train.reshape(len(other.x_train), -1), axis=0),
                                  np.sort(s.x_train.reshape(len(s.x_train), -1), axis=0))


def test_unknown_dataset_lists_all():
    with pytest.raises(KpgenError, match="known datasets: mnist, digits, basicmotions, japanesevowels, daphnet"):
        datasets.load("cifar")


def test_missing_aeon_is_one_line(monkeypatch):
    real_import = builtins.__import__

    def no_aeon(name, *args, **kwargs):
        if name == "aeon" or name.startswith("aeon."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_aeon)
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "aeon" else real_find(n, *a))
    for name in ("basicmotions", "japanesevowels", "daphnet"):
        with pytest.raises(KpgenError, match=r"aeon package, which is not installed; pip install 'aeon") as e:
            datasets.load(name)
        assert "\n" not in str(e.value)
