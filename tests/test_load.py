"""Checkpoint round trip, one KpgenError per kind of bad checkpoint, and a training smoke test."""

import copy
import math
import pickle

import numpy as np
import pytest
import torch

from kpgen import KpgenError
from kpgen.frontend import datasets
from kpgen.frontend.load import load_checkpoint
from kpgen.ir import ModelF
from kpgen.train import make_checkpoint, save_checkpoint, train_model
from kpgen.train.nn import KPLSTMClassifier


class NotATensor:
    """A class whose instances weights_only loading must refuse."""

    def __init__(self):
        self.value = 3


def tiny_model(seed: int = 0) -> KPLSTMClassifier:
    torch.manual_seed(seed)
    return KPLSTMClassifier(6, 4, 3, ((4, 2), (4, 3)), ((8, 2), (2, 2)), num_layers=2)


def tiny_checkpoint(seed: int = 0) -> dict:
    model = tiny_model(seed)
    cal = {"input_absmax": 1.5, "cell_absmax": [2.0, 3.0], "gate_absmax": [4.0, 5.0]}
    meta = {"dataset": "random", "seq_len": 5, "float_test_accuracy": 0.5, "epochs": 0, "seed": seed,
            "train_seconds": 0.0, "torch_version": torch.__version__}  # TorchVersion: plain() unwraps it
    return make_checkpoint(model, cal, meta)


def ir_logits(m: ModelF, x: np.ndarray) -> np.ndarray:
    """Float forward pass over the IR with explicit Kronecker matrices (float64)."""
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    seq = x
    for layer in m.layers:
        hs = layer.hidden_size
        h = np.zeros((x.shape[0], hs))
        c = np.zeros((x.shape[0], hs))
        outs = []
        for t in range(seq.shape[1]):
            z = seq[:, t] @ layer.wx.dense().T + h @ layer.wh.dense().T + layer.bias
            c = sig(z[:, hs : 2 * hs]) * c + sig(z[:, :hs]) * np.tanh(z[:, 2 * hs : 3 * hs])
            h = sig(z[:, 3 * hs :]) * np.tanh(c)
            outs.append(h)
        seq = np.stack(outs, 1)
    return seq[:, -1] @ m.head.weight.T + m.head.bias


def test_round_trip(tmp_path):
    ck = tiny_checkpoint()
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(ck, path)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind
    m = load_checkpoint(path)
    assert m.input_size == 6 and m.num_classes == 3 and len(m.layers) == 2
    assert m.layers[0].wx.shape == (16, 6) and m.layers[0].wh.shape == (16, 4)
    assert m.layers[1].input_size == 4 and m.layers[1].wx.shape == (16, 4)
    sd = ck["state_dict"]
    np.testing.assert_array_equal(m.layers[1].wh.a, sd["layers.1.wh.a"].double().numpy())
    np.testing.assert_array_equal(m.head.bias, sd["head.bias"].double().numpy())
    assert m.layers[0].bias.dtype == np.float64
    assert m.calibration.input_absmax == 1.5
    assert m.calibration.cell_absmax == (2.0, 3.0) and m.calibration.gate_absmax == (4.0, 5.0)
    assert m.meta["dataset"] == "random"
    assert m.params < m.dense_params
    # the IR computes what the torch model computes
    model = tiny_model()
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    ref = model.double()(x).detach().numpy()
    np.testing.assert_allclose(ir_logits(m, x.numpy()), ref, rtol=1e-10, atol=1e-10)


def test_checkpoint_is_plain_data(tmp_path):
    save_checkpoint(tiny_checkpoint(), tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["format"] == "kpgen-checkpoint" and raw["version"] == 1
    assert raw["arch"]["wx_factors"] == [[[4, 2], [4, 3]], [[8, 2], [2, 2]]]


def mutate(fn):
    """A checkpoint-dict transformation for the parametrized error test."""

    def apply(ck):
        ck = copy.deepcopy(ck)
        out = fn(ck)
        return ck if out is None else out

    return apply


def _set(d, key, value):
    d[key] = value


def _del(d, key):
    del d[key]


def _fill(t, value):
    t.view(-1)[0] = value


BAD_DICTS = [
    ("wrong format", mutate(lambda ck: _set(ck, "format", "something-else")), "format is 'something-else'"),
    ("no format", mutate(lambda ck: _del(ck, "format")), "has no 'format' key"),
    ("bare state_dict", mutate(lambda ck: ck["state_dict"]), "bare state_dict"),
    ("not a dict", mutate(lambda ck: [1, 2, 3]), "holds a list"),
    ("version", mutate(lambda ck: _set(ck, "version", 2)), "version 2 is not supported"),
    ("missing arch", mutate(lambda ck: _del(ck, "arch")), "missing top-level key(s) arch"),
    ("missing state_dict", mutate(lambda ck: _del(ck, "state_dict")), "missing top-level key(s) state_dict"),
    ("missing calibration", mutate(lambda ck: _del(ck, "calibration")), "missing calibration"),
    ("arch key", mutate(lambda ck: _del(ck["arch"], "hidden_size")), "arch is missing key(s) hidden_size"),
    ("arch cell", mutate(lambda ck: _set(ck["arch"], "cell", "gru")), "arch.cell 'gru' is not supported"),
    ("arch int", mutate(lambda ck: _set(ck["arch"], "num_layers", 1.0)), "arch.num_layers is 1.0"),
    ("factor count", mutate(lambda ck: _set(ck["arch"], "wh_factors", ck["arch"]["wh_factors"][:1])),
     "one [[m1, n1], [m2, n2]] per layer"),
    ("factor form", mutate(lambda ck: _set(ck["arch"]["wx_factors"], 0, [4, 2, 4, 3])), "not [[m1, n1], [m2, n2]]"),
    ("factor product", mutate(lambda ck: _set(ck["arch"]["wx_factors"], 0, [[4, 2], [4, 4]])),
     "layer 0 wx factors (4x2) (x) (4x4) make a 16x8 matrix but the layer needs 16x6"),
    ("factor rows", mutate(lambda ck: _set(ck["arch"]["wh_factors"], 1, [[4, 2], [2, 2]])), "needs 16x4"),
    ("missing tensor", mutate(lambda ck: _del(ck["state_dict"], "layers.1.wh.b")), "missing tensor(s) layers.1.wh.b"),
    ("extra tensor", mutate(lambda ck: _set(ck["state_dict"], "layers.0.wx.bias", torch.zeros(16))),
     "unexpected tensor(s) layers.0.wx.bias"),
    ("shape", mutate(lambda ck: _set(ck["state_dict"], "head.weight", torch.zeros(3, 5))),
     "state_dict['head.weight'] has shape (3, 5), expected (3, 4)"),
    ("factor tensor shape", mutate(lambda ck: _set(ck["state_dict"], "layers.0.wx.a", torch.zeros(2, 4))),
     "state_dict['layers.0.wx.a'] has shape (2, 4), expected (4, 2)"),
    ("int tensor", mutate(lambda ck: _set(ck["state_dict"], "head.bias", torch.zeros(3, dtype=torch.int32))),
     "not floating point"),
    ("not a tensor", mutate(lambda ck: _set(ck["state_dict"], "head.bias", [0.0, 0.0, 0.0])), "not a tensor"),
    ("nan", mutate(lambda ck: _fill(ck["state_dict"]["layers.0.wh.a"], math.nan)),
     "state_dict['layers.0.wh.a'] contains NaN or inf"),
    ("inf", mutate(lambda ck: _fill(ck["state_dict"]["layers.1.bias"], math.inf)), "contains NaN or inf"),
    ("calibration key", mutate(lambda ck: _del(ck["calibration"], "cell_absmax")),
     "calibration is missing cell_absmax"),
    ("calibration length", mutate(lambda ck: _set(ck["calibration"], "cell_absmax", [1.0])),
     "not 2 positive number(s), one per layer"),
    ("calibration value", mutate(lambda ck: _set(ck["calibration"], "input_absmax", 0.0)),
     "calibration.input_absmax is 0.0"),
    ("calibration nan", mutate(lambda ck: _set(ck["calibration"], "gate_absmax", [1.0, math.nan])),
     "calibration.gate_absmax"),
]


def expect_error(path, *needles):
    with pytest.raises(KpgenError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.mark.parametrize("name,fn,needle", BAD_DICTS, ids=[b[0] for b in BAD_DICTS])
def test_bad_checkpoint_dicts(tmp_path, name, fn, needle):
    path = tmp_path / "bad.pt"
    torch.save(fn(tiny_checkpoint()), path)
    expect_error(path, needle)


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.pt", "no such file")


def test_directory(tmp_path):
    expect_error(tmp_path, "not a regular file")


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"", "is empty"),
        (b"this is a text file, not a checkpoint\n", "not a torch checkpoint"),
        (b"PK\x03\x04 garbage that claims to be a zip", "not a torch checkpoint"),
        (b"\x80\x05garbage", "not a"),
    ],
    ids=["empty", "text", "fake-zip", "fake-pickle"],
)
def test_not_a_torch_file(tmp_path, content, needle):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    expect_error(path, needle)


def test_truncated_file(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(tiny_checkpoint(), good)
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        expect_error(bad, "truncated or corrupt")


def test_pickled_object_refused(tmp_path):
    path = tmp_path / "obj.pt"
    ck = tiny_checkpoint()
    ck["meta"]["extra"] = NotATensor()
    torch.save(ck, path)
    expect_error(path, "pickled Python objects", "NotATensor", "docs/checkpoint.md")


def test_whole_model_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(tiny_model(), path)
    expect_error(path, "pickled Python objects", "KPLSTMClassifier", "state_dict")


def test_calibration_accepts_zero_dim_tensors_and_no_gates(tmp_path):
    ck = tiny_checkpoint()
    ck["calibration"] = {"input_absmax": torch.tensor(1.0), "cell_absmax": [torch.tensor(2.0), 3.0]}
    save_checkpoint(ck, tmp_path / "m.pt")
    cal = load_checkpoint(tmp_path / "m.pt").calibration
    assert cal.input_absmax == 1.0 and cal.cell_absmax == (2.0, 3.0) and cal.gate_absmax == ()


# ----------------------------------------------------------------------------------------- training side


def test_mnist_split_is_stratified_and_deterministic():
    a, b = datasets.load("mnist", seed=0), datasets.load("mnist", seed=0)
    assert a.x_train.shape == (4000, 28, 28) and a.x_test.shape == (1000, 28, 28)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0
    assert np.bincount(a.y_test).tolist() == [100] * 10
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(datasets.load("mnist", seed=1).y_test, a.y_test)


def test_unknown_dataset():
    with pytest.raises(KpgenError, match="unknown dataset 'cifar'; known datasets: mnist"):
        datasets.load("cifar")


def test_train_smoke(tmp_path):
    lines = []
    ck = train_model(epochs=1, max_train=200, log=lines.append)
    assert lines and "float test accuracy" in lines[-1]
    assert ck["meta"]["epochs"] == 1 and ck["meta"]["seq_len"] == 28 and ck["meta"]["dataset"] == "mnist"
    assert 0.0 <= ck["meta"]["float_test_accuracy"] <= 1.0
    save_checkpoint(ck, tmp_path / "m.pt")
    m = load_checkpoint(tmp_path / "m.pt")
    assert m.input_size == 28 and m.num_classes == 10 and m.layers[0].hidden_size == ck["arch"]["hidden_size"]
    assert m.calibration.input_absmax == 1.0 and m.calibration.cell_absmax[0] > 0
    again = train_model(epochs=1, max_train=200, log=lambda s: None)
    for k, v in ck["state_dict"].items():
        assert torch.equal(v, again["state_dict"][k]), k


def test_train_rejects_bad_factors():
    with pytest.raises(KpgenError, match="make a 512x32 matrix, expected 512x28"):
        train_model(wx_factors=[[32, 4], [16, 8]], epochs=1, max_train=10, log=lambda s: None)


def test_save_checkpoint_leaves_nothing_on_failure(tmp_path):
    with pytest.raises((AttributeError, pickle.PicklingError)):  # lambdas cannot be pickled
        save_checkpoint({"f": lambda: 0}, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_default_config_matches_train_model_keywords():
    import inspect

    from kpgen.train import DEFAULT_CONFIG

    params = inspect.signature(train_model).parameters
    assert set(DEFAULT_CONFIG) <= set(params)  # kpgen train calls train_model(**DEFAULT_CONFIG, log=...)
    assert all(params[k].default == v for k, v in DEFAULT_CONFIG.items())
