"""Bring your own model (docs/byom.md): plain nn.LSTM / nn.GRU classifiers trained here on a dataset kpgen does not
use elsewhere (aeon's ItalyPowerDemand: 24 hourly readings of 1 feature, 2 classes), given to kpgen as state
dicts with the user's own data, through emit and compress to bit-exact firmware on the M4; their reading checked
against the user's logits; every mistake in the data one line and exit 2."""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hostile import invoke, one_line

from kpgen import KpgenError
from kpgen.frontend import userdata
from kpgen.frontend.load import load_model, read_raw
from kpgen.ir import cell_of
from kpgen.pipeline import run_project

HIDDEN = 8
TEST_SAMPLES = 300  # of ItalyPowerDemand's 1,029 test series: enough to compare accuracies, quick to evaluate


def italy_power_demand() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from the .ts files in aeon's data folder (read here: importing
    aeon.datasets pulls in numba). x float32 [N, 24, 1], scaled to about [-1, 1]; y 0 or 1."""
    from importlib.resources import files

    root = Path(str(files("aeon"))) / "datasets" / "data" / "ItalyPowerDemand"

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        lines = (root / f"ItalyPowerDemand_{split}.ts").read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.strip().lower() == "@data") + 1
        rows = [line.rsplit(":", 1) for line in lines[start:] if line.strip()]
        x = np.array([[float(v) for v in values.split(",")] for values, _ in rows], np.float32)
        return x[:, :, None] / 3.0, np.array([int(label) - 1 for _, label in rows], np.int64)

    xtr, ytr = read("TRAIN")
    xte, yte = read("TEST")
    return xtr, ytr, xte[:TEST_SAMPLES], yte[:TEST_SAMPLES]


class Classifier(torch.nn.Module):
    """What a PyTorch user writes: a torch RNN, batch_first, and a Linear on the last step (or the mean)."""

    def __init__(self, kind: str, pool: str = "last"):
        super().__init__()
        self.rnn = getattr(torch.nn, kind)(1, HIDDEN, batch_first=True)
        self.fc = torch.nn.Linear(HIDDEN, 2)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out.mean(1) if self.pool == "mean" else out[:, -1])


def train(kind: str, pool: str, xtr: np.ndarray, ytr: np.ndarray) -> Classifier:
    """A few dozen full-batch Adam steps: a real, if small, classifier."""
    torch.manual_seed(0)
    model = Classifier(kind, pool)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three users' models (LSTM, GRU, mean-pooled LSTM), each a state dict with train.npz and test.npz that
    carry the model's own logits, and its own test accuracy."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("byom")
    xtr, ytr, xte, yte = italy_power_demand()
    out = {}
    for kind, pool in (("LSTM", "last"), ("GRU", "last"), ("LSTM", "mean")):
        model = train(kind, pool, xtr, ytr)
        tag = f"{kind.lower()}-{pool}"
        with torch.no_grad():
            ltr, lte = model(torch.from_numpy(xtr)).numpy(), model(torch.from_numpy(xte)).numpy()
        torch.save(model.state_dict(), root / f"{tag}.pt")
        np.savez(root / f"{tag}-train.npz", x=xtr, y=ytr, logits=ltr)
        np.savez(root / f"{tag}-test.npz", x=xte, y=yte, logits=lte)
        out[tag] = {"sd": root / f"{tag}.pt", "train": root / f"{tag}-train.npz", "test": root / f"{tag}-test.npz",
                    "accuracy": float((lte.argmax(1) == yte).mean()), "model": model}
    out["root"] = root
    return out


def emit_and_run(user: dict, tag: str, model: Path, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"fw-{tag}"
    res = invoke("emit", str(model), "--board", "m4", "-o", str(out), "--samples", "8", *extra,
                 "--test", str(user[tag]["test"]))
    assert res.exit_code == 0, res.output
    rep = run_project(out, profile=False)
    assert rep.passed, rep.verification
    assert rep.verification.exact == rep.verification.samples == 8
    return json.loads((out / "kpgen.json").read_text())["accuracy"]


@pytest.mark.qemu
@pytest.mark.parametrize("tag", ["lstm-last", "gru-last"])
def test_state_dict_emits_bit_exact_with_the_users_accuracy(user: dict, tag: str, tmp_path: Path) -> None:
    acc = emit_and_run(user, tag, user[tag]["sd"], tmp_path, "--data", str(user[tag]["train"]))
    assert acc["test_samples"] == TEST_SAMPLES
    assert acc["user_float"] == pytest.approx(user[tag]["accuracy"])
    assert abs(acc["float"] - user[tag]["accuracy"]) <= 1 / TEST_SAMPLES  # within one test sample
    assert acc["int8_golden"] > 0.6  # the task is learnt (chance: about 0.5)


@pytest.mark.qemu
@pytest.mark.parametrize("tag", ["lstm-last", "gru-last"])
def test_compress_on_the_users_data_runs_bit_exact(user: dict, tag: str, tmp_path: Path) -> None:
    ckpt = tmp_path / "kp.pt"
    res = invoke("compress", str(user[tag]["sd"]), "--method", "kp", "--ratio", "2", "--keep-dense", "wx",
                 "--data", str(user[tag]["train"]), "--test", str(user[tag]["test"]), "--epochs", "2", "-o", str(ckpt))
    assert res.exit_code == 0, res.output
    meta = torch.load(ckpt, weights_only=True)["meta"]
    assert meta["data_file"] == user[tag]["train"].name and "dataset" not in meta
    assert meta["source_test_accuracy"] == pytest.approx(user[tag]["accuracy"])  # the dense reading is the user's
    model = load_model(ckpt)
    assert model.layers[0].wx.is_dense and not model.layers[0].wh.is_dense  # --keep-dense wx, Wh Kronecker
    emit_and_run(user, tag, ckpt, tmp_path)


def test_mean_pooled_state_dict_with_logits_is_refused(user: dict, tmp_path: Path) -> None:
    tag = "lstm-mean"
    res = invoke("emit", str(user[tag]["sd"]), "--board", "m4", "-o", str(tmp_path / "out"), "--data",
                 str(user[tag]["train"]))
    one_line(res, "disagrees with the logits", "not a Linear on the last step", "ONNX")
    assert not (tmp_path / "out").exists()
    res = invoke("compress", str(user[tag]["sd"]), "--method", "kp", "--ratio", "2", "--keep-dense", "wx",
                 "--data", str(user[tag]["train"]), "-o", str(tmp_path / "kp.pt"))
    one_line(res, "disagrees with the logits")
    assert not (tmp_path / "kp.pt").exists()


def test_api_reads_the_module_and_checks_it_by_its_own_outputs(user: dict, tmp_path: Path) -> None:
    import kpgen

    xtr, ytr, xte, yte = italy_power_demand()
    ckpt = kpgen.from_torch(user["gru-last"]["model"], {"x": xtr, "y": ytr})  # logits from the module itself
    assert ckpt["arch"]["cell"] == "gru" and ckpt["calibration"]["state_absmax"][0] > 0
    m = kpgen.emit(ckpt, "m4", tmp_path / "fw", test={"x": xte, "y": yte}, samples=4)
    assert abs(m["accuracy"]["float"] - user["gru-last"]["accuracy"]) <= 1 / TEST_SAMPLES
    with pytest.raises(KpgenError, match="disagrees with the logits"):
        kpgen.from_torch(user["lstm-mean"]["model"], {"x": xtr, "y": ytr})


def test_wrappers_and_rnn_nonlinearity(tmp_path: Path) -> None:
    xtr, ytr, _, _ = italy_power_demand()
    for nonlinearity in ("tanh", "relu"):
        torch.manual_seed(1)
        rnn = torch.nn.RNN(1, 4, nonlinearity=nonlinearity, batch_first=True, bias=False)
        head = torch.nn.Linear(4, 2)
        with torch.no_grad():
            logits = head(rnn(torch.from_numpy(xtr))[0][:, -1]).numpy()
        sd = {f"net.rnn.{k}": v for k, v in rnn.state_dict().items()} | {f"net.fc.{k}": v for k, v in
                                                                          head.state_dict().items()}
        torch.save({"model": sd, "epoch": 3}, tmp_path / "m.pt")  # {"model": sd} with a Lightning-style prefix
        np.savez(tmp_path / "plain.npz", x=xtr, y=ytr)
        np.savez(tmp_path / "logits.npz", x=xtr, y=ytr, logits=logits)
        with pytest.raises(KpgenError, match="does not say whether the RNN is tanh or relu"):
            load_model(tmp_path / "m.pt", tmp_path / "plain.npz")
        model = load_model(tmp_path / "m.pt", tmp_path / "logits.npz")  # the logits tell which
        assert cell_of(model.layers[0]) == ("rnn" if nonlinearity == "tanh" else "rnn-relu")
        assert model.meta["source"] == "torch state dict"
        from kpgen.reference.floatmodel import float_forward

        assert np.max(np.abs(float_forward(model, xtr) - logits)) < 1e-4


def test_torchscript_is_named(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; users still have such files
        torch.jit.script(torch.nn.LSTM(3, 4)).save(str(tmp_path / "ts.pt"))
    res = invoke("emit", str(tmp_path / "ts.pt"), "--board", "m4", "-o", str(tmp_path / "out"))
    one_line(res, "TorchScript archive", "state_dict()", "ONNX")


def test_gru_checkpoint_is_asked_for_its_state_range(tmp_path: Path) -> None:
    from kpgen.train.compress import from_torch_state_dict
    from kpgen.train.loop import make_checkpoint

    head = {f"fc.{k}": v for k, v in torch.nn.Linear(4, 3).state_dict().items()}
    model = from_torch_state_dict(torch.nn.GRU(2, 4).state_dict() | head)
    ck = make_checkpoint(model, {"input_absmax": 1.0}, {}, method="dense")
    torch.save(ck, tmp_path / "gru.pt")
    with pytest.raises(KpgenError, match="calibration is missing state_absmax") as e:
        load_model(tmp_path / "gru.pt")
    assert "cell_absmax" not in str(e.value)


def test_csv_layout_reads_like_the_npz(tmp_path: Path) -> None:
    x = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) + 1
    lines = ["sample,step,x0,x1,y"]
    lines += [f"{i},{t},{x[i, t, 0]},{x[i, t, 1]},{i}" for i in (1, 0) for t in (2, 0, 1)]  # any row order
    lines += ["2,0,7,8,1"]  # a one-step sample: left-padded to 3 steps
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    d = userdata.load_user_data(tmp_path / "d.csv", input_size=2, num_classes=2)
    assert d.x.shape == (3, 3, 2) and np.array_equal(d.x[:2], x)
    assert np.array_equal(d.x[2], [[0, 0], [0, 0], [7, 8]])
    assert d.y is not None and d.y.tolist() == [0, 1, 1] and d.lengths is not None and d.lengths.tolist() == [3, 3, 1]


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


GOOD_X = np.zeros((5, 24, 1), np.float32)
GOOD_Y = np.array([0, 1, 0, 1, 0])
BAD_DATA = {
    "no-x": ({"inputs": GOOD_X, "y": GOOD_Y}, "has no array named 'x' (it holds inputs, y)"),
    "x-2d": ({"x": GOOD_X[:, :, 0], "y": GOOD_Y}, "x[:, :, None]"),
    "x-transposed": ({"x": np.zeros((5, 1, 24), np.float32), "y": GOOD_Y}, "transpose it: x.transpose(0, 2, 1)"),
    "x-features": ({"x": np.zeros((5, 24, 3), np.float32), "y": GOOD_Y}, "but the model takes 1"),
    "x-strings": ({"x": np.full((5, 24, 1), "a"), "y": GOOD_Y}, "not real numbers"),
    "x-nan": ({"x": np.where(np.arange(24)[None, :, None] == 3, np.nan, GOOD_X), "y": GOOD_Y},
              "NaN or infinite values (first at x[0, 3, 0])"),
    "x-pickled": ({"x": np.array([[[object()]]] * 5, dtype=object), "y": GOOD_Y}, "kpgen reads no pickled objects"),
    "y-float": ({"x": GOOD_X, "y": GOOD_Y + 0.5}, "expected 5 integer labels"),
    "y-range": ({"x": GOOD_X, "y": np.array([0, 1, 2, 1, 0])}, "label y[2] = 2 is not a class 0..1 of this model"),
    "y-shape": ({"x": GOOD_X, "y": GOOD_Y[:3]}, "expected 5 integer labels"),
    "lengths-range": ({"x": GOOD_X, "y": GOOD_Y, "lengths": np.array([24, 0, 3, 3, 3])},
                      "lengths[1] = 0 is not a length from 1 to 24"),
    "lengths-right-padded": ({"x": np.where(np.arange(24)[None, :, None] < 3, 1.0, GOOD_X), "y": GOOD_Y,
                              "lengths": np.array([3, 3, 3, 3, 3])}, "it looks right-padded"),
    "logits-shape": ({"x": GOOD_X, "y": GOOD_Y, "logits": np.zeros((5, 3))}, "logits has 3 columns"),
    "logits-nan": ({"x": GOOD_X, "y": GOOD_Y, "logits": np.full((5, 2), np.inf)}, "logits contains NaN"),
    "logits-1d": ({"x": GOOD_X, "y": GOOD_Y, "logits": np.zeros(5)}, "logits has shape (5,) and dtype float64"),
    "lengths-float": ({"x": GOOD_X, "y": GOOD_Y, "lengths": np.full(5, 2.0)}, "lengths has shape (5,) and dtype"),
    "x-empty": ({"x": np.zeros((0, 24, 1), np.float32)}, "with at least one of each"),
    "x-zero": ({"x": GOOD_X, "y": GOOD_Y}, "x is zero everywhere, so it gives no input range"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_one_line(case: str, tmp_path: Path) -> None:
    arrays, needle = BAD_DATA[case]
    sd = torch.nn.LSTM(1, 4, batch_first=True).state_dict() | {f"fc.{k}": v for k, v in
                                                                torch.nn.Linear(4, 2).state_dict().items()}
    torch.save(sd, tmp_path / "sd.pt")
    np.savez(tmp_path / "bad.npz", allow_pickle=True, **arrays)
    res = invoke("emit", str(tmp_path / "sd.pt"), "--board", "m4", "-o", str(tmp_path / "out"), "--data",
                 str(tmp_path / "bad.npz"))
    one_line(res, "bad.npz: ", needle)
    assert not (tmp_path / "out").exists()


def _zip_method_99(path: Path) -> None:
    """An .npz whose member claims a compression method zipfile does not implement."""
    np.savez(path, x=GOOD_X)
    raw = bytearray(path.read_bytes())
    raw[8:10] = (99).to_bytes(2, "little")
    central = raw.find(b"PK\x01\x02")
    raw[central + 10 : central + 12] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(raw))


def _npy_header_only(path: Path, shape: tuple) -> None:
    """An .npz whose x.npy declares `shape` but holds no data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", header.getvalue())


def _zip_member(path: Path, data: bytes) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", data)


def _csv(text: str):
    return lambda path: path.write_text(text)


FILE_CASES = {
    "npy": ("d.npz", lambda p: np.save(p.with_suffix(".npy"), GOOD_X) or p.with_suffix(".npy").rename(p),
            "is a .npy file"),
    "not-zip": ("d.npz", lambda p: p.write_text("not a zip"), "is neither an .npz (zip) file nor a .csv file"),
    "member-not-array": ("d.npz", lambda p: _zip_member(p, b"\x93NUMPY\x01\x00xxxx"),
                         "member 'x' is not a numpy array"),
    "memory-bomb": ("d.npz", lambda p: _npy_header_only(p, (1 << 30, 24, 1)), "more than kpgen reads"),
    "truncated": ("d.npz", lambda p: _npy_header_only(p, (5, 24, 1)), "the file is truncated"),
    "zip-method": ("d.npz", _zip_method_99, "is not a readable .npz file"),
    "missing": ("nothing.npz", lambda p: None, "no such file"),
    "directory": ("dir.npz", lambda p: p.mkdir(), "is not a regular file"),
    "below-a-file": ("d.npz/x", lambda p: p.parent.write_text("x"), "cannot be read"),
    "csv-header": ("d.csv", _csv("sample,step,feature\n0,0,1\n"), "lacks sample, step and x0, x1"),
    "csv-empty": ("d.csv", _csv("sample,step,x0\n"), "has no header row and data rows"),
    "csv-fields": ("d.csv", _csv("sample,step,x0\n0,0\n"), "line 2 has 2 fields, the header 3"),
    "csv-not-number": ("d.csv", _csv("sample,step,x0\n0,0,abc\n"), "column 'x0' holds 'abc', not a number"),
    "csv-negative": ("d.csv", _csv("sample,step,x0\n0,-1,1\n"), "sample and step must be non-negative integers"),
    "csv-twice": ("d.csv", _csv("sample,step,x0\n0,0,1\n0,0,2\n"), "sample 0 step 0 appears twice"),
    "csv-gap": ("d.csv", _csv("sample,step,x0\n0,0,1\n0,2,2\n"), "sample 0 has steps [0, 2]..., not 0, 1, 2"),
    "csv-binary": ("d.csv", lambda p: p.write_bytes(b"\xff\xfe\x00bad"), "is not a readable CSV file"),
    "csv-huge": ("d.csv", lambda p: p.touch() or os.truncate(p, (256 << 20) + 1), "is larger than 256 MiB"),
    "csv-bomb": ("d.csv", _csv("sample,step,x0\n" + "".join(f"{i},0,1\n" for i in range(70000))
                               + "".join(f"70000,{t},1\n" for t in range(1000))), "holds more values than kpgen reads"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_data_files_are_one_line(case: str, tmp_path: Path) -> None:
    name, make, needle = FILE_CASES[case]
    sd = torch.nn.GRU(1, 4).state_dict() | {f"fc.{k}": v for k, v in torch.nn.Linear(4, 2).state_dict().items()}
    torch.save(sd, tmp_path / "sd.pt")
    make(tmp_path / name)
    res = invoke("emit", str(tmp_path / "sd.pt"), "--board", "m4", "-o", str(tmp_path / "out"), "--data",
                 str(tmp_path / name))
    one_line(res, needle)
    assert not (tmp_path / "out").exists()


TRAIN_CASES = {
    "no-labels": (lambda d: np.savez(d / "a.npz", x=GOOD_X), [], "has no labels y"),
    "one-sample": (lambda d: np.savez(d / "a.npz", x=GOOD_X[:1], y=GOOD_Y[:1]), [], "too few to hold any out"),
    "test-steps": (lambda d: (np.savez(d / "a.npz", x=GOOD_X, y=GOOD_Y), np.savez(d / "b.npz", x=GOOD_X[:, :5],
                                                                                   y=GOOD_Y)),
                   ["--test", "b.npz"], "but the training data's samples are (24, 1)"),
    "test-alone": (lambda d: None, ["--test", "b.npz"], "--test goes with --data"),
    "dataset-and-data": (lambda d: np.savez(d / "a.npz", x=GOOD_X, y=GOOD_Y), ["--dataset", "digits"],
                         "give --dataset NAME or --data FILE, not both"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_data_mistakes_are_one_line(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make, extra, needle = TRAIN_CASES[case]
    make(tmp_path)
    monkeypatch.chdir(tmp_path)
    data = [] if case == "test-alone" else ["--data", "a.npz"]
    one_line(invoke("train", "-o", "m.pt", "--hidden", "4", "--epochs", "1", *data, *extra), needle)
    assert not (tmp_path / "m.pt").exists()


def test_compress_options_are_one_line(user: dict, tmp_path: Path) -> None:
    sd, data = str(user["gru-last"]["sd"]), str(user["gru-last"]["train"])
    cases = [
        (["--ratio", "4"], "layer 0 Wx (24x1): no 2-factor Kronecker product has at most 6 parameters",
         "--keep-dense wx"),
        (["--keep-dense", "wx"], "layer 0 Wh (24x8) has no compression given", "--wh-ratio"),
        (["--keep-dense", "wx", "--wh-factors", "4x2,3x4"], "--wh-factors make a 12x8 matrix, but layer 0 Wh is 24x8"),
        (["--keep-dense", "wx", "--wx-factors", "dense", "--ratio", "2"], "contradict each other"),
        (["--method", "prune", "--ratio", "2", "--keep-dense", "wx"], "apply to --method kp and hkp"),
        (["--ratio", "2", "--test", data, "--dataset", "digits"], "--test goes with --data"),
        (["--ratio", "2", "--data", data, "--dataset", "digits"], "give --dataset NAME or --data FILE, not both"),
        (["--method", "small"], "--method small needs --ratio"),
        (["--keep-dense", "wx", "--wh-factors", "4x2,3x4", "--ratio", "2"],
         "--wh-factors make a 12x8 matrix, but the model's Wh matrices are 24x8"),
    ]
    for extra, *needles in cases:
        args = ["compress", sd, "-o", str(tmp_path / "c.pt"), "--epochs", "1"]
        if "--dataset" not in extra:
            args += ["--data", data]
        if "--method" not in extra:
            args += ["--method", "kp"]
        one_line(invoke(*args, *extra), *needles)
    assert not (tmp_path / "c.pt").exists()


def test_a_data_file_works_where_a_dataset_name_does(user: dict) -> None:
    from kpgen.frontend import datasets

    split = datasets.load(str(user["lstm-last"]["train"]), seed=0)
    assert split.num_features == 1 and len(split.x_test) == 13 and len(split.x_train) == 54  # 20% of 67 held out
    assert read_raw(user["lstm-last"]["sd"])  # a plain state dict passes the file's checks


def test_api_mistakes(user: dict, tmp_path: Path) -> None:
    import kpgen.api as kp

    xtr, ytr, _, _ = italy_power_demand()
    with pytest.raises(KpgenError, match="data is a list, not a path or a mapping with x"):
        kp.from_torch(user["gru-last"]["model"], [xtr, ytr])  # type: ignore[arg-type]
    with pytest.raises(KpgenError, match=r"the model is a int, not an nn\.Module"):
        kp.from_torch(42, {"x": xtr, "y": ytr})
    ckpt = kp.from_torch(user["gru-last"]["model"], {"x": xtr, "y": ytr})
    with pytest.raises(KpgenError, match="already a kpgen checkpoint"):
        kp.from_torch(ckpt, {"x": xtr, "y": ytr})
    with pytest.raises(KpgenError, match="keep_dense holds 'wz'"):
        kp.compress(ckpt, {"x": xtr, "y": ytr}, ratio=2, keep_dense=("wz",))


class StackedBi(torch.nn.Module):
    """Two bidirectional LSTM layers without bias, sequence-first, and a head on h_n (what kpgen reads) or on
    out[-1] (what it does not)."""

    def __init__(self, head: str):
        super().__init__()
        self.lstm = torch.nn.LSTM(1, 4, num_layers=2, bidirectional=True, bias=False)
        self.fc = torch.nn.Linear(8, 2)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h, _) = self.lstm(x.transpose(0, 1))
        return self.fc(torch.cat([h[-2], h[-1]], 1) if self.head == "h_n" else out[-1])


def test_stacked_bidirectional_without_bias(tmp_path: Path) -> None:
    xtr, ytr, _, _ = italy_power_demand()
    torch.manual_seed(2)
    for head in ("h_n", "out-last"):
        net = StackedBi(head).eval()
        with torch.no_grad():
            logits = net(torch.from_numpy(xtr)).numpy()
        torch.save({"model_state_dict": net.state_dict(), "optimizer_state_dict": {}}, tmp_path / "bi.pt")
        np.savez(tmp_path / "d.npz", x=xtr, y=ytr, logits=logits)
        if head == "h_n":
            model = load_model(tmp_path / "bi.pt", tmp_path / "d.npz")
            assert len(model.layers) == 2 and model.layers[1].input_size == 8
        else:  # torch's out[-1] holds the backward direction after one step: not kpgen's head
            with pytest.raises(KpgenError, match=r"kpgen's head reads \[forward h_T, backward h after the whole"):
                load_model(tmp_path / "bi.pt", tmp_path / "d.npz")


def test_the_library_builds_only_its_own_cells_kernel(tmp_path: Path) -> None:
    """A library's size.txt totals every object in the archive (`size -t`): other cells' step kernels, which
    nothing calls, are not compiled into it."""
    xtr, ytr, _, _ = italy_power_demand()
    sd = torch.nn.GRU(1, 4).state_dict() | {f"fc.{k}": v for k, v in torch.nn.Linear(4, 2).state_dict().items()}
    torch.save(sd, tmp_path / "sd.pt")
    np.savez(tmp_path / "d.npz", x=xtr, y=ytr)
    res = invoke("emit", str(tmp_path / "sd.pt"), "--board", "m4", "-o", str(tmp_path / "lib"), "--target", "lib",
                 "--data", str(tmp_path / "d.npz"), "--samples", "2")
    assert res.exit_code == 0, res.output
    for build in ("Makefile", "CMakeLists.txt"):
        text = (tmp_path / "lib" / build).read_text()
        assert "kp_gru_step_s8.c" in text, build
        assert not any(f"{k}_step_s8.c" in text for k in ("kp_lstm", "kp_rnn", "kp_fastrnn", "kp_fastgrnn")), build
