"""torch.export programs (.pt2, kpgen.frontend.pt2): real torch.export.save archives of nn.LSTM / nn.GRU / nn.RNN
(single and stacked, bidirectional, batch_first both ways) with last-step, h_n, mean, amax, max and MLP heads, read
without unpickling so that kpgen's float model gives torch's logits; a trained model through `kpgen emit --data` +
`kpgen run`, bit-exact on the M4; and damaged, pickle-only, unsupported or hostile archives, one line each."""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kpgen import KpgenError
from kpgen.cli import main
from kpgen.frontend.load import load_model
from kpgen.frontend.pt2 import read_pt2
from kpgen.reference import floatmodel
from tests.torch_models import C, Classifier, I, T


def save(model: torch.nn.Module, path: Path, batch_first: bool = True) -> Path:
    """torch.export.export + torch.export.save of the model in eval mode."""
    x = torch.randn(2, T, I) if batch_first else torch.randn(T, 2, I)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(model.eval(), (x,)), str(path))
    return path


def torch_logits(model: torch.nn.Module, x: np.ndarray, batch_first: bool = True) -> np.ndarray:
    xt = torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        return model(xt if batch_first else xt.transpose(0, 1)).double().numpy()


CASES = [  # cell, head, batch_first, layers, bidirectional, relu
    ("lstm", "last", True, 1, False, False), ("lstm", "mean", False, 1, False, False),
    ("lstm", "max", True, 2, False, False), ("lstm", "h_n", False, 2, False, False),
    ("lstm", "mlp", True, 1, True, False), ("gru", "last", False, 1, False, False),
    ("gru", "amax", True, 2, True, False), ("gru", "mlp-mean", True, 1, False, False),
    ("gru", "h_n", True, 1, False, False), ("rnn", "last", True, 1, False, False),
    ("rnn", "mean", False, 2, True, False), ("rnn", "max", True, 1, False, True),
    ("lstm", "last", True, 2, True, False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c))
def test_float_reading_equals_torch(tmp_path: Path, case: tuple) -> None:
    """kpgen's float model of the .pt2 gives torch's logits within 1e-5."""
    cell, head, bf, layers, bi, relu = case
    torch.manual_seed(len(str(case)))
    model = Classifier(cell, head, bi, layers, batch_first=bf, relu=relu).eval()
    ir = read_pt2(save(model, tmp_path / "m.pt2", bf))
    assert len(ir.layers) == layers and (ir.hidden is not None) == head.startswith("mlp")
    x = np.random.default_rng(0).normal(size=(16, T, I))
    ours = floatmodel.float_forward(ir, x)
    np.testing.assert_allclose(ours, torch_logits(model, x, bf), atol=1e-5, rtol=0)


def test_dynamic_batch(tmp_path: Path) -> None:
    """Exported with a dynamic batch (aten.sym_size feeds the zero states): read as with a fixed one."""
    torch.manual_seed(3)
    model = Classifier("lstm", "mean", True, 2).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, (torch.randn(3, T, I),), dynamic_shapes={"x": {0: torch.export.Dim("b")}})
        torch.export.save(ep, str(tmp_path / "m.pt2"))
    x = np.random.default_rng(0).normal(size=(9, T, I))
    ours = floatmodel.float_forward(read_pt2(tmp_path / "m.pt2"), x)
    np.testing.assert_allclose(ours, torch_logits(model, x), atol=1e-5, rtol=0)


def test_emit_and_run_bit_exact(tmp_path: Path) -> None:
    """A trained GRU with a mean head, saved with torch.export.save: emit --data (with the logits checked) and
    run under QEMU on the M4, bit-exact against the golden model."""
    torch.manual_seed(0)
    model = Classifier("gru", "mean").eval()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, T, I)).astype(np.float32)
    y = (x[:, :, 0].mean(1) > 0).astype(np.int64) + (x[:, :, 1].mean(1) > 0.3).astype(np.int64)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
    model.eval()
    path = save(model, tmp_path / "m.pt2")
    np.savez(tmp_path / "d.npz", x=x, y=y, logits=torch_logits(model, x).astype(np.float32))
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["emit", str(path), "--data", str(tmp_path / "d.npz"), "--board", "m4",
                                  "-o", str(out), "--samples", "6"])
    assert r.exit_code == 0, r.output
    acc = json.loads((out / "kpgen.json").read_text())["accuracy"]
    want = float(np.mean(torch_logits(model, x).argmax(1) == y))
    assert want > 0.6 and abs(acc["float"] - want) * len(y) <= 1.0, (acc, want)
    r = CliRunner().invoke(main, ["run", str(out), "--timeout", "120"])
    assert r.exit_code == 0, r.output
    assert "PASS: bit-exact" in r.output and "6/6" in r.output, r.output


def one_line(tmp_path: Path, path: Path, words: str, data: bool = True) -> None:
    """`kpgen emit` of the file: exit 2, one line matching words, no tree written."""
    np.savez(tmp_path / "d.npz", x=np.ones((4, T, I), np.float32))
    args = ["emit", str(path), "--board", "m4", "-o", str(tmp_path / "o")]
    res = CliRunner().invoke(main, args + (["--data", str(tmp_path / "d.npz")] if data else []))
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and re.search(words, res.output), res.output
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()


def rewrite(src: Path, dst: Path, edit) -> Path:
    """A copy of the archive with edit(name, bytes) -> bytes | None (None drops the member)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def edit_json(suffix: str, change):
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith(suffix):
            doc = json.loads(data)
            change(doc)
            return json.dumps(doc).encode()
        return data
    return edit


def _unknown_op(doc: dict) -> None:
    for n in doc["graph_module"]["graph"]["nodes"]:
        if n["target"] == "torch.ops.aten.linear.default":
            n["target"] = "torch.ops.aten.sigmoid.default"


def _huge(doc: dict) -> None:
    doc["config"]["rnn.weight_hh_l0"]["tensor_meta"]["sizes"] = [{"as_int": 1 << 30}, {"as_int": 1 << 20}]


def _short(doc: dict) -> None:
    doc["config"]["rnn.weight_hh_l0"]["tensor_meta"]["storage_offset"] = {"as_int": 1000}


def _pickled(doc: dict) -> None:
    doc["config"]["rnn.weight_hh_l0"]["use_pickle"] = True


def _no_file(doc: dict) -> None:
    doc["config"]["rnn.weight_hh_l0"]["path_name"] = "weight_99"


def _int_weights(doc: dict) -> None:
    doc["config"]["rnn.weight_hh_l0"]["tensor_meta"]["dtype"] = 4


def _zero_hidden(doc: dict) -> None:
    doc["config"]["rnn.weight_hh_l0"]["tensor_meta"]["sizes"] = [{"as_int": 32}, {"as_int": 0}]


def _recurrent_node(doc: dict) -> dict:
    return next(n for n in doc["graph_module"]["graph"]["nodes"] if n["target"] == "torch.ops.aten.lstm.input")


def _training(doc: dict) -> None:
    next(a for a in _recurrent_node(doc)["inputs"] if a["name"] == "train")["arg"] = {"as_bool": True}


def _initial_state(doc: dict) -> None:
    next(a for a in _recurrent_node(doc)["inputs"] if a["name"] == "hx")["arg"] = {
        "as_tensors": [{"name": "p_fc_bias"}, {"name": "p_fc_bias"}]}


def _nan(name: str, data: bytes) -> bytes:
    return np.full(len(data) // 4, np.nan, np.float32).tobytes() if name.endswith("weights/weight_1") else data


HOSTILE = {
    "truncated": (None, r"is not a zip archive, or is truncated or corrupt \(BadZipFile\); save the program again"),
    "pickle-only": (None, r"holds no torch.export program that kpgen reads .* older archives keep the weights as a "
                          r"pickle"),
    "unknown-op": (("models/model.json", _unknown_op), r"node linear \(aten.sigmoid.default\) is an op kpgen does "
                                                       r"not read"),
    "huge-dims": (("model_weights_config.json", _huge), r"declares 1,125,899,906,842,624 elements .* more than kpgen "
                                                        r"handles"),
    "short-weight": (("model_weights_config.json", _short), r"weight rnn.weight_hh_l0 needs .* bytes but .* holds"),
    "pickled-weight": (("model_weights_config.json", _pickled), r"weight rnn.weight_hh_l0 is stored as a pickle"),
    "no-data-file": (("model_weights_config.json", _no_file), r"weight rnn.weight_hh_l0 has no data file"),
    "int-weights": (("model_weights_config.json", _int_weights), r"weight rnn.weight_hh_l0 has dtype code 4, not a "
                                                                 r"float; save the model with float32 weights"),
    "hidden-size": (("model_weights_config.json", _zero_hidden), r"\(aten.lstm.input\) has hidden size 0; give a "
                                                                 r"hidden size from 1 to 16384"),
    "training": (("models/model.json", _training), r"\(aten.lstm.input\) was exported in training mode"),
    "initial-state": (("models/model.json", _initial_state), r"starts from a non-zero initial state; export the "
                                                             r"layer with the cell's defaults"),
    "nan-weights": (None, r"has NaN or infinite values in rnn.weight_hh_l0; retrain"),
    "bad-json": (None, r"member .*model.json is not valid JSON"),
    "malformed": (None, r"its program JSON is not what torch.export.save writes"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_archives_are_one_line(tmp_path: Path, case: str) -> None:
    good = save(Classifier("lstm", "last"), tmp_path / "good.pt2")
    edit, words = HOSTILE[case]
    bad = tmp_path / "bad.pt2"
    if case == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "pickle-only":  # what torch.save writes: a zip with data.pkl only
        torch.save(Classifier("lstm", "last").state_dict(), bad)
    elif case == "bad-json":
        rewrite(good, bad, lambda n, d: b"{" * 100000 if n.endswith("models/model.json") else d)
    elif case == "nan-weights":
        rewrite(good, bad, _nan)
    elif case == "malformed":
        rewrite(good, bad, edit_json("models/model.json", lambda doc: doc["graph_module"].pop("signature")))
    else:
        assert edit is not None
        rewrite(good, bad, edit_json(*edit))
    one_line(tmp_path, bad, words)


def test_size_limits_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No such file; an archive, a JSON member or a member count beyond the limits (lowered here): one line each."""
    from kpgen.frontend import pt2

    good = save(Classifier("lstm", "last"), tmp_path / "good.pt2")
    one_line(tmp_path, tmp_path / "missing.pt2", r"missing.pt2: does not exist or is not a regular file; check")
    for name, value, words in (("MAX_PT2_BYTES", 100, r"is .* bytes, more than kpgen reads \(100\); this is not"),
                               ("MAX_JSON_BYTES", 100, r"member .*models/model.json is .* bytes uncompressed, more "
                                                       r"than kpgen reads \(100\)"),
                               ("MAX_MEMBERS", 3, r"has .* members, more than kpgen reads \(3\)")):
        with monkeypatch.context() as m:
            m.setattr(pt2, name, value)
            one_line(tmp_path, good, words)


def test_inputs_and_outputs_are_one_each(tmp_path: Path) -> None:
    """Two inputs, or two outputs: refused in one line."""
    class TwoIn(Classifier):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return super().forward(x) if y is not None else x

    class TwoOut(Classifier):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
            return super().forward(x), x

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(TwoIn("gru", "last").eval(), (torch.randn(2, T, I), torch.randn(2, C)))
        torch.export.save(ep, str(tmp_path / "a.pt2"))
    one_line(tmp_path, tmp_path / "a.pt2", r"the program has 2 inputs; export a model with one input")
    one_line(tmp_path, save(TwoOut("gru", "last"), tmp_path / "b.pt2"), r"the program has 2 outputs; export a model")


def test_unsupported_models_are_one_line(tmp_path: Path) -> None:
    """A head kpgen has no pool for (the first step), and a softmax at the end: refused naming the node."""
    class First(Classifier):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.rnn(x)[0][:, 0])

    class Soft(Classifier):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(super().forward(x), -1)

    one_line(tmp_path, save(First("gru", "last"), tmp_path / "a.pt2"),
             r"node select \(aten.select.int\) takes index 0 of axis T; kpgen reads recurrent layers")
    one_line(tmp_path, save(Soft("gru", "last"), tmp_path / "b.pt2"), r"\(aten.softmax.int\) is an op kpgen does not")


def test_pt2_needs_data(tmp_path: Path) -> None:
    one_line(tmp_path, save(Classifier("rnn", "last"), tmp_path / "m.pt2"),
             r"a torch.export program carries no calibration; pass your data with --data", data=False)


def test_wrong_logits_are_refused(tmp_path: Path) -> None:
    path = save(Classifier("lstm", "mean"), tmp_path / "m.pt2")
    x = np.random.default_rng(0).normal(size=(32, T, I)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, logits=np.random.default_rng(1).normal(size=(32, C)).astype(np.float32))
    with pytest.raises(KpgenError, match="kpgen's reading of the program gives logits that differ"):
        load_model(path, tmp_path / "d.npz")


class _TouchesMarker:
    """A pickled object that would run a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_entries_run_no_code(tmp_path: Path) -> None:
    """The archive's pickled example inputs (and a pickle planted beside them) are never opened: the model is read
    and the command in the pickle never runs."""
    marker = tmp_path / "ran"
    evil = pickle.dumps(_TouchesMarker(marker))
    good = save(Classifier("gru", "last"), tmp_path / "good.pt2")
    bad = rewrite(good, tmp_path / "bad.pt2",
                  lambda n, d: evil if n.endswith(("sample_inputs/model.pt", "constants/model_constants_config.json"))
                  else d)
    with zipfile.ZipFile(bad) as zf:
        zf.testzip()
        prefix = zf.namelist()[0].split("/")[0]
    with zipfile.ZipFile(bad, "a") as zf:
        zf.writestr(f"{prefix}/data/weights/extra.pkl", evil)
    x = np.random.default_rng(0).normal(size=(8, T, I)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    ir = load_model(bad, tmp_path / "d.npz")
    assert ir.meta["source"] == "torch.export"
    assert not marker.exists()
