"""ONNX input (kpgen.frontend.onnx): real torch.onnx.export files of nn.LSTM / nn.GRU / nn.RNN with last-step, mean,
max and MLP heads, read so that kpgen's float model gives torch's logits; a real tf2onnx export of a Keras LSTM
(tests/fixtures/keras: tf2onnx 1.17 from TensorFlow 2.21 / Keras 3, Dense softmax head) and a GRU in the same
layout built with onnx.helper (tf2onnx writes Keras 3's GRU as a Loop, which is refused); trained models through
`kpgen emit --data` + `kpgen run`, bit-exact on the M4; and hostile or unsupported graphs, refused in one line."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from kpgen import KpgenError
from kpgen.cli import main
from kpgen.frontend.load import load_model
from kpgen.frontend.onnx import onnx_to_ir, read_onnx
from kpgen.reference import floatmodel
from tests.torch_models import C, Classifier, H, I, T

FIXTURES = Path(__file__).parent / "fixtures" / "keras"


def export(model: torch.nn.Module, path: Path, dynamo: bool = True) -> Path:
    """torch.onnx.export of the model in eval mode (the dynamo exporter writes weights to path.data)."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, T, I),), str(path), dynamo=dynamo, verbose=False)
    return path


# name: (cell, head, bidirectional, layers, dynamo exporter, the pool kpgen must read)
EXPORTS = {
    "lstm-last": ("lstm", "last", False, 1, True, "last"),
    "lstm-mean": ("lstm", "mean", False, 1, True, "mean"),
    "lstm-max": ("lstm", "max", False, 1, True, "max"),
    "lstm-mlp": ("lstm", "mlp", False, 1, True, "last"),
    "lstm-h_n": ("lstm", "h_n", False, 1, False, "last"),
    "lstm-stacked-legacy": ("lstm", "mean", False, 2, False, "mean"),
    "gru-bidirectional-last-output": ("gru", "last", True, 1, True, "last_output"),
    "gru-bidirectional-mlp-mean": ("gru", "mlp-mean", True, 1, False, "mean"),
    "gru-max-legacy": ("gru", "max", False, 1, False, "max"),
    "gru-bidirectional-h_n": ("gru", "h_n", True, 1, False, "last"),
    "gru-bidirectional-h_n-dynamo": ("gru", "h_n", True, 1, True, "last"),
    "rnn-last-legacy": ("rnn", "last", False, 1, False, "last"),
}


@pytest.mark.parametrize("case", sorted(EXPORTS))
def test_torch_export_is_read_with_its_head(case: str, tmp_path: Path) -> None:
    """kpgen's float reading of the exported graph gives torch's logits, with the head the model has."""
    cell, head, bidir, layers, dynamo, pool = EXPORTS[case]
    torch.manual_seed(0)
    model = Classifier(cell, head, bidir, layers)
    path = export(model, tmp_path / "m.onnx", dynamo)
    ir, softmax = read_onnx(path)
    assert ir.pool == pool and not softmax
    assert (ir.hidden is not None) == head.startswith("mlp")
    assert len(ir.layers) == layers and all(hasattr(l, "fwd") == bidir for l in ir.layers)
    x = np.random.default_rng(1).uniform(-2, 2, (16, T, I))
    with torch.no_grad():
        want = model(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(floatmodel.float_forward(ir, x), want, rtol=0, atol=2e-5)


def test_keras_lstm_from_tf2onnx() -> None:
    """A real tf2onnx export of a Keras LSTM + Dense(softmax): read as a last-step LSTM whose softmax matches the
    Keras probabilities saved beside it (the data file's logits), calibrated on its x."""
    ir = onnx_to_ir(FIXTURES / "keras_lstm.onnx", FIXTURES / "keras_lstm_data.npz")
    assert ir.pool == "last" and ir.meta["softmax_dropped"] and ir.calibration.input_absmax > 0
    d = np.load(FIXTURES / "keras_lstm_data.npz")
    z = floatmodel.float_forward(ir, d["x"].astype(np.float64))
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), d["logits"], atol=1e-6)


def test_keras_gru_loop_is_refused() -> None:
    """tf2onnx writes Keras 3's GRU as a Loop: refused in one line that names the node."""
    with pytest.raises(KpgenError, match=r"keras_gru\.onnx: node .* \(Loop\) runs the recurrence as a loop"):
        read_onnx(FIXTURES / "keras_gru.onnx")


# ----------------------------------------------------------------------- graphs in the tf2onnx layout

def _init(name: str, a: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(a), name)


def keras_graph(cell: str = "GRU", seed: int = 0, **attrs) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A Keras-style classifier in the layout tf2onnx writes: Transpose to time-major, the recurrent op, Squeeze of
    the direction axis, Slice of the last step, Squeeze, MatMul + Add, Softmax. Returns the model and its weights."""
    rng = np.random.default_rng(seed)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[cell]
    w = {"W": rng.normal(0, 0.5, (1, gates * H, I)), "R": rng.normal(0, 0.5, (1, gates * H, H)),
         "B": rng.normal(0, 0.3, (1, 2 * gates * H)), "dense_w": rng.normal(0, 0.5, (H, C)),
         "dense_b": rng.normal(0, 0.2, C)}
    inits = [_init(k, v.astype(np.float32)) for k, v in w.items()]
    inits += [_init("axis1", np.array([1], np.int64)), _init("axis0", np.array([0], np.int64)),
              _init("start", np.array([-1], np.int64)), _init("end", np.array([2**31 - 1], np.int64))]
    rec_attrs = {"hidden_size": H, "direction": "forward", **attrs}
    if cell == "GRU":
        rec_attrs.setdefault("linear_before_reset", 1)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2], name="transpose"),
        helper.make_node(cell, ["xt", "W", "R", "B"], ["Y", "Y_h"], name="rnn", **rec_attrs),
        helper.make_node("Squeeze", ["Y", "axis1"], ["ys"], name="squeeze_dir"),
        helper.make_node("Slice", ["ys", "start", "end", "axis0"], ["last"], name="slice_last"),
        helper.make_node("Squeeze", ["last", "axis0"], ["feat"], name="squeeze_time"),
        helper.make_node("MatMul", ["feat", "dense_w"], ["mm"], name="dense_matmul"),
        helper.make_node("Add", ["mm", "dense_b"], ["logits"], name="dense_add"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(nodes, "keras", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, T, I])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, C])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def _torch_gru_from_onnx_weights(w: dict[str, np.ndarray]) -> torch.nn.GRU:
    """nn.GRU with ONNX GRU weights (gates z, r, h -> torch's r, z, n), written here independently of kpgen."""
    gru = torch.nn.GRU(I, H, batch_first=True)
    order = [1, 0, 2]

    def re(m: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([m[k * H:(k + 1) * H] for k in order])).float()

    with torch.no_grad():
        gru.weight_ih_l0.copy_(re(w["W"][0]))
        gru.weight_hh_l0.copy_(re(w["R"][0]))
        gru.bias_ih_l0.copy_(re(w["B"][0, :3 * H]))
        gru.bias_hh_l0.copy_(re(w["B"][0, 3 * H:]))
    return gru


def test_keras_layout_gru_built_with_onnx_helper(tmp_path: Path) -> None:
    """The tf2onnx layout with a GRU op (zrh gates, linear_before_reset 1): kpgen's reading equals nn.GRU with the
    same weights, then the Dense layer and the softmax."""
    model, w = keras_graph("GRU")
    path = tmp_path / "gru.onnx"
    onnx.save(model, str(path))
    ir, softmax = read_onnx(path)
    assert softmax and ir.pool == "last" and ir.hidden is None
    x = np.random.default_rng(3).uniform(-2, 2, (10, T, I))
    with torch.no_grad():
        out, _ = _torch_gru_from_onnx_weights(w)(torch.from_numpy(x).float())
        want = out[:, -1].double().numpy() @ w["dense_w"] + w["dense_b"]
    np.testing.assert_allclose(floatmodel.float_forward(ir, x), want, atol=2e-5)


# --------------------------------------------------------------------------- trained models end to end


def _sines(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A task kpgen uses nowhere else: which of three frequencies drives 6 noisy phase-shifted channels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    t = np.arange(12)[None, :, None]
    freq = (0.25 + 0.35 * y)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1, I))
    x = np.sin(freq * t + phase) + rng.normal(0, 0.3, (n, 12, I))
    return x.astype(np.float32), y


def _train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 60) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()


E2E = {"lstm-mean": ("lstm", "mean", False), "gru-bidirectional-last": ("gru", "h_n", True)}


@pytest.mark.qemu
@pytest.mark.parametrize("case", sorted(E2E))
def test_trained_model_through_onnx_bit_exact_on_m4(case: str, tmp_path: Path) -> None:
    """Train a plain nn.LSTM (mean head) and a bidirectional nn.GRU (final states), export ONNX, emit with the
    user's data (x, y, logits) and run on the M4: bit-exact, and kpgen's float accuracy equals the user's own to
    within one test sample."""
    cell, head, bidir = E2E[case]
    torch.manual_seed(1)
    model = Classifier(cell, head, bidir)
    x, y = _sines(0, 300)
    _train(model, x, y)
    model.eval()
    xt, yt = _sines(1, 120)
    with torch.no_grad():
        logits = model(torch.from_numpy(xt)).numpy()
    user_acc = float(np.mean(logits.argmax(1) == yt))
    assert user_acc > 0.6, user_acc  # it learned something
    path = export(model, tmp_path / "m.onnx", dynamo=not bidir)
    data = tmp_path / "data.npz"
    np.savez(data, x=xt, y=yt, logits=logits)
    out = tmp_path / "m4"
    runner = CliRunner()
    res = runner.invoke(main, ["emit", str(path), "--data", str(data), "--board", "m4", "-o", str(out),
                               "--samples", "6"])
    assert res.exit_code == 0, res.output
    import json

    acc = json.loads((out / "kpgen.json").read_text())["accuracy"]
    assert abs(acc["float"] - user_acc) * len(yt) <= 1.0, (acc, user_acc)
    res = runner.invoke(main, ["run", str(out), "--timeout", "120"])
    assert res.exit_code == 0, res.output
    assert "PASS: bit-exact" in res.output and "6/6" in res.output, res.output


def test_onnx_needs_data(tmp_path: Path) -> None:
    path = export(Classifier("lstm", "last"), tmp_path / "m.onnx")
    with pytest.raises(KpgenError, match=r"an ONNX model carries no calibration; pass your data with --data"):
        load_model(path)


def test_wrong_logits_are_refused(tmp_path: Path) -> None:
    """Data whose logits are not this graph's outputs: refused before anything is emitted."""
    torch.manual_seed(0)
    model = Classifier("lstm", "mean")
    path = export(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (20, T, I)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    data = tmp_path / "d.npz"
    np.savez(data, x=x, logits=logits + 0.5)
    with pytest.raises(KpgenError, match=r"kpgen's reading of the graph gives logits that differ"):
        load_model(path, data)


# ------------------------------------------------------------------------------- refused graphs and files


def _mutated(tmp_path: Path, change) -> Path:
    model, _ = keras_graph("LSTM")
    change(model)
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    return path


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _set_attr(model: onnx.ModelProto, name: str, **attrs) -> None:
    node = _node(model, name)
    for k, v in attrs.items():
        for a in list(node.attribute):
            if a.name == k:
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(k, v))


def _set_input(model: onnx.ModelProto, name: str, index: int, tensor: str, value: np.ndarray | None = None) -> None:
    node = _node(model, name)
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = tensor
    if value is not None:
        model.graph.initializer.append(_init(tensor, value.astype(np.float32)))


def _replace_node(model: onnx.ModelProto, name: str, new: onnx.NodeProto) -> None:
    nodes = list(model.graph.node)
    k = next(i for i, n in enumerate(nodes) if n.name == name)
    del model.graph.node[:]
    model.graph.node.extend(nodes[:k] + [new] + nodes[k + 1:])


def _extra_output(model: onnx.ModelProto) -> None:
    model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, C]))


def _second_use(model: onnx.ModelProto) -> None:
    model.graph.node.append(helper.make_node("Relu", ["feat"], ["side"], name="side_branch"))


def _external(location: str):
    def change(model: onnx.ModelProto) -> None:
        t = next(t for t in model.graph.initializer if t.name == "W")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", "0"), ("length", str(4 * 4 * H * I))):
            t.external_data.append(onnx.StringStringEntryProto(key=k, value=v))
    return change


def _huge(model: onnx.ModelProto) -> None:
    t = next(t for t in model.graph.initializer if t.name == "W")
    del t.dims[:]
    t.dims.extend([1, 1 << 20, 1 << 20])


def _nan(name: str):
    def change(model: onnx.ModelProto) -> None:
        k = next(i for i, t in enumerate(model.graph.initializer) if t.name == name)
        a = numpy_helper.to_array(model.graph.initializer[k]).copy()
        a.flat[0] = np.nan
        model.graph.initializer[k].CopyFrom(_init(name, a))
    return change


def _short_tensor(model: onnx.ModelProto) -> None:
    t = next(t for t in model.graph.initializer if t.name == "R")
    t.raw_data = t.raw_data[:-4]


def _computed_weight(model: onnx.ModelProto) -> None:
    _node(model, "dense_matmul").input[1] = "dense_w_relu"
    model.graph.node.append(helper.make_node("Relu", ["dense_w"], ["dense_w_relu"], name="weight_relu"))


def _second_input(model: onnx.ModelProto) -> None:
    model.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [None, T]))


HOSTILE = {
    # name: (change to a Keras-layout LSTM, or a file writer; the message's words)
    "unknown-op": (lambda m: _replace_node(m, "dense_add", helper.make_node("Sub", ["mm", "dense_b"], ["logits"],
                                                                            name="dense_add")),
                   r"node dense_add \(Sub\) is an op kpgen does not read"),
    "activations": (lambda m: _set_attr(m, "rnn", activations=["Sigmoid", "Relu", "Tanh"]),
                    r"node rnn \(LSTM\) uses activations Sigmoid, Relu, Tanh; export the layer with the cell's "
                    r"defaults"),
    "activation-alpha": (lambda m: _set_attr(m, "rnn", activation_alpha=[0.5]),
                         r"node rnn \(LSTM\) has activation parameters"),
    "clip": (lambda m: _set_attr(m, "rnn", clip=3.0), r"node rnn \(LSTM\) clips its cell input"),
    "input-forget": (lambda m: _set_attr(m, "rnn", input_forget=1), r"couples the input and forget gates"),
    "direction": (lambda m: _set_attr(m, "rnn", direction="reverse"), r"node rnn \(LSTM\) runs in direction reverse"),
    "hidden-size": (lambda m: _set_attr(m, "rnn", hidden_size=1 << 30),
                    r"node rnn \(LSTM\) has hidden_size 1073741824"),
    "peepholes": (lambda m: _set_input(m, "rnn", 7, "P", np.ones((1, 3 * H))), r"has peephole weights"),
    "initial-state": (lambda m: _set_input(m, "rnn", 5, "h0", np.ones((1, 1, H))),
                      r"node rnn \(LSTM\) starts from a non-zero initial hidden state"),
    "sequence-lens": (lambda m: _set_input(m, "rnn", 4, "lens", np.ones(1)), r"takes sequence_lens"),
    "two-outputs": (_extra_output, r"the graph has 2 outputs; export a model with one output"),
    "two-paths": (_second_use, r"the value feat has more than one use or none"),
    "first-step": (lambda m: _set_input(m, "slice_last", 1, "zero_start", None) or m.graph.initializer.append(
        _init("zero_start", np.array([0], np.int64))), r"node slice_last \(Slice\) slices \[0\]:\[2147483647\]"),
    "y-c": (lambda m: _node(m, "rnn").output.extend(["Y_c"]) or _node(m, "squeeze_dir").input.__setitem__(0, "Y_c"),
            r"the head reads the cell state \(Y_c\)"),
    "huge-dims": (_huge, r"initializer W declares 1,099,511,627,776 elements, more than kpgen handles"),
    "external-absolute": (_external("/etc/passwd"),
                          r"initializer W refers to external data at '/etc/passwd', not a file beside the model"),
    "external-parent": (_external("../w.bin"), r"refers to external data at '\.\./w\.bin', not a file beside"),
    "external-missing": (_external("w.bin"), r"refers to external data 'w\.bin', which is not a regular file"),
    "nan-weights": (_nan("R"), r"node rnn \(LSTM\) has NaN or infinite values in R; retrain the model"),
    "nan-dense": (_nan("dense_b"), r"node dense_matmul \(MatMul\) has NaN or infinite values in its weights"),
    "custom-domain": (lambda m: setattr(_node(m, "dense_add"), "domain", "com.example"),
                      r"node dense_add \(Add\) is in the custom domain com\.example; export with standard ONNX ops"),
    "short-tensor": (_short_tensor, r"initializer R holds 1020 bytes for dims \[1, 32, 8\]; the file is damaged"),
    "computed-weight": (_computed_weight, r"node dense_matmul \(MatMul\): its weight is computed at run time"),
    "two-inputs": (_second_input, r"the graph has 2 inputs; export a model with one input"),
    "layout-perm": (lambda m: _set_attr(m, "transpose", perm=[0, 2, 1]),
                    r"node rnn \(LSTM\) reads axes \('B', 'F', 'T'\) where it expects"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_graphs_are_one_line(case: str, tmp_path: Path) -> None:
    """Every refused graph: `kpgen emit` prints one line naming the node and exits 2, writing nothing."""
    change, words = HOSTILE[case]
    path = _mutated(tmp_path, change)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).uniform(-1, 1, (5, T, I)))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["emit", str(path), "--data", str(data), "--board", "m4", "-o", str(out)])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and re.search(words, lines[0]), res.output
    assert not out.exists()


def _truncated(tmp_path: Path) -> Path:
    good = export(Classifier("lstm", "last"), tmp_path / "good.onnx", dynamo=False)
    path = tmp_path / "bad.onnx"
    path.write_bytes(good.read_bytes()[:700])
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


FILES = {
    "truncated": (_truncated, r"bad\.onnx: is not an ONNX model, or is truncated or corrupt"),
    "empty": (lambda p: _write(p / "bad.onnx", b""), r"bad\.onnx: is empty \(0 bytes\)"),
    "text": (lambda p: _write(p / "bad.onnx", b"hello, this is not protobuf\n"), r"is not an ONNX model"),
    "no-graph": (lambda p: _write(p / "bad.onnx", helper.make_model(helper.make_graph([], "g", [], []))
                                  .SerializeToString()), r"bad\.onnx: holds no ONNX graph"),
}


@pytest.mark.parametrize("case", sorted(FILES))
def test_damaged_files_are_one_line(case: str, tmp_path: Path) -> None:
    make, words = FILES[case]
    path = make(tmp_path)
    res = CliRunner().invoke(main, ["emit", str(path), "--board", "m4", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and re.search(words, res.output), res.output


def test_external_data_beside_the_model_is_read(tmp_path: Path) -> None:
    """The dynamo exporter writes the weights to m.onnx.data beside the model: read, the range checked."""
    model = Classifier("gru", "mean")
    path = export(model, tmp_path / "m.onnx", dynamo=True)
    assert (tmp_path / "m.onnx.data").is_file()
    ir, _ = read_onnx(path)
    assert ir.pool == "mean"
    (tmp_path / "m.onnx.data").write_bytes(b"\0" * 10)  # now too short for the declared range
    with pytest.raises(KpgenError, match=r"bytes at offset .* the file is damaged or incomplete"):
        read_onnx(path)


def test_torch_export_program_without_data_is_refused(tmp_path: Path) -> None:
    """A torch.export program (.pt2) goes to its own reader (tests/test_pt2.py), which asks for --data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(Classifier("lstm", "last").eval(), (torch.randn(2, T, I),))
        torch.export.save(ep, str(tmp_path / "m.pt2"))
    res = CliRunner().invoke(main, ["emit", str(tmp_path / "m.pt2"), "--board", "m4", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "a torch.export program carries no calibration; pass your data with --data" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_missing_and_oversized_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No such file; a file or its tensors beyond the size limits (lowered here): one line each."""
    from kpgen.frontend import onnx as onnx_front

    with pytest.raises(KpgenError, match=r"missing\.onnx: no such file; check the path"):
        read_onnx(tmp_path / "missing.onnx")
    model, _ = keras_graph("LSTM")
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    monkeypatch.setattr(onnx_front, "MAX_TENSOR_ELEMENTS", 500)  # each tensor is smaller, all of them are not
    with pytest.raises(KpgenError, match=r"m\.onnx: its tensors declare more than 500 elements; this is not a model"):
        read_onnx(path)
    monkeypatch.setattr(onnx_front, "MAX_ONNX_BYTES", 1000)
    with pytest.raises(KpgenError, match=r"m\.onnx: is [\d,]+ bytes, more than kpgen reads \(1,000\)"):
        read_onnx(path)


def test_unrolled_rnn_is_refused(tmp_path: Path) -> None:
    """The dynamo exporter unrolls nn.RNN into MatMul and Tanh: refused with the exporter option that keeps the op."""
    path = export(Classifier("rnn", "last"), tmp_path / "rnn.onnx", dynamo=True)
    with pytest.raises(KpgenError, match=r"only their arithmetic \(an unrolled loop\); export with .*dynamo=False"):
        read_onnx(path)
