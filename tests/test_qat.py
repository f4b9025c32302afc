"""Quantization-aware training (kpgen.train.qat): its forward pass is kpgen's integer model, bit for bit, for every
cell and matrix kind; gradients reach every parameter; `kpgen train --qat` and `kpgen compress --qat` run a QAT
phase and report (and record) how often the QAT forward and the golden model disagree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kpgen import KpgenError
from kpgen.cli import main
from kpgen.reference import golden
from kpgen.train import qat, save_checkpoint
from kpgen.train.loop import calibrate, distill_loss, load_split, make_checkpoint
from kpgen.train.nn import KPRNNClassifier

KP_X = [[4, 2], [4, 4]]  # 16 x 8 for one gate block of H = 16 over 8 inputs (digits rows)
KP_H = [[4, 4], [4, 4]]


def _net(cell: str, wx: object, wh: object, bidirectional: bool = False, layers: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    gates = {"lstm": 4, "gru": 3}.get(cell, 1)

    def widen(spec: object) -> object:  # G*H rows: the first factor gets G times the rows
        if isinstance(spec, list):
            return [[spec[0][0] * gates, spec[0][1]], *spec[1:]]
        if isinstance(spec, dict) and spec["kind"] == "hkp":
            f = [list(x) for x in spec["factors"]]
            f[0][0] = (16 * gates - spec["dense_rows"]) // f[1][0]
            return dict(spec, factors=f)
        return spec

    net = KPRNNClassifier(cell, 8, 16, 10, widen(wx), widen(wh), num_layers=layers, bidirectional=bidirectional)
    with torch.no_grad():  # larger biases and head than the init, so saturation and tables are exercised
        for name, p in net.named_parameters():
            if "bias" in name or name.startswith("head"):
                p.normal_(0.0, 0.8)
    return net


def _data(n: int = 96, steps: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, steps, 8, generator=g) * 16.0  # digits-like pixel values 0..16


CASES = {
    "lstm": ("lstm", KP_X, KP_H, False),
    "gru": ("gru", KP_X, KP_H, False),
    "fastrnn": ("fastrnn", KP_X, KP_H, False),
    "fastgrnn": ("fastgrnn", KP_X, KP_H, False),
    "rnn": ("rnn", KP_X, KP_H, False),
    "rnn-relu": ("rnn-relu", KP_X, KP_H, False),
    "bidirectional-gru": ("gru", KP_X, KP_H, True),
    "lstm-dense": ("lstm", "dense", "dense", False),
    "lstm-hkp": ("lstm", {"kind": "hkp", "factors": [[15, 2], [4, 4]], "dense_rows": 4},
                 {"kind": "hkp", "factors": [[15, 4], [4, 4]], "dense_rows": 4}, False),
    "fastrnn-3-factors": ("fastrnn", [[2, 2], [2, 2], [4, 2]], [[2, 2], [2, 2], [4, 4]], False),
    "gru-hkp-spread": ("gru", {"kind": "hkp", "factors": [[15, 2], [3, 4]], "dense_rows": 3, "top_groups": 3},
                       {"kind": "hkp", "factors": [[15, 4], [3, 4]], "dense_rows": 3, "top_groups": 3}, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_qat_forward_is_the_golden_model_bit_for_bit(case: str) -> None:
    cell, wx, wh, bi = CASES[case]
    net = _net(cell, wx, wh, bi)
    x = _data()
    model = qat.QATModel(net, x)
    qm = model.quantized()
    mine = model.int_logits(x).detach().numpy()
    gold = golden.run_model(qm, golden.quantize_input(x.numpy(), qm.input_scale)).logits
    assert np.array_equal(mine, gold.astype(np.float64))
    assert len(np.unique(golden.predict(gold))) > 1  # not a degenerate network
    # and the same model is what `kpgen emit` would quantize from the checkpoint of these weights
    from kpgen.frontend import load
    from kpgen.quant import quantize

    emitted = quantize.quantize_model(load.checkpoint_to_ir(make_checkpoint(net, calibrate(net, x), {}), "t.pt"))
    assert np.array_equal(golden.run_model(emitted, golden.quantize_input(x.numpy(), emitted.input_scale)).logits,
                          gold)


@pytest.mark.parametrize("case", ["lstm", "fastgrnn", "lstm-hkp", "fastrnn-3-factors", "gru-hkp-spread"])
def test_gradients_reach_every_parameter(case: str) -> None:
    cell, wx, wh, bi = CASES[case]
    net = _net(cell, wx, wh, bi)
    x = _data(32)
    y = torch.arange(32) % 10
    model = qat.QATModel(net, x)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name


def test_weights_change_the_quantized_model_at_once() -> None:
    """The forward pass quantizes the current weights: after an optimizer step it follows them (no stale
    scales), and it is still the golden model of the new weights."""
    net = _net("lstm", KP_X, KP_H)
    x = _data(32)
    model = qat.QATModel(net, x)
    before = model.int_logits(x).detach().clone()
    with torch.no_grad():
        net.direction(0).wx.a.mul_(1.5)
    qm = model.quantized()
    after = model.int_logits(x).detach().numpy()
    assert not np.array_equal(before.numpy(), after)
    gold = golden.run_model(qm, golden.quantize_input(x.numpy(), qm.input_scale)).logits
    assert np.array_equal(after, gold.astype(np.float64))


def test_low_rank_matrices_are_refused() -> None:
    net = _net("lstm", {"kind": "lowrank", "rank": 2}, KP_H)
    with pytest.raises(KpgenError, match=r"the model being trained with --qat: .* low-rank matrix"):
        qat.QATModel(net, _data(16)).quantized()


def test_distill_loss_is_cross_entropy_at_alpha_zero_and_zero_for_the_teacher_itself() -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(8, 5, generator=g), torch.arange(8) % 5
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(distill_loss(logits, torch.randn(8, 5, generator=g), labels, 4.0, 0.0), ce)
    assert torch.allclose(distill_loss(logits, logits, labels, 4.0, 1.0), torch.tensor(0.0), atol=1e-6)
    assert float(distill_loss(logits, -logits, labels, 4.0, 1.0)) > 0.1


def _run(*args: str):
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 0, res.output
    return res


def test_train_and_compress_with_qat_agree_with_the_golden_model(tmp_path) -> None:
    """A few epochs on a subset of the digits: the QAT run prints and records its agreement with the golden model,
    which is complete (the forward pass is the integer model), and the checkpoint's own int8 model matches it."""
    dense = tmp_path / "dense.pt"
    res = _run("train", "-o", str(dense), "--dataset", "digits", "--method", "dense", "--cell", "fastrnn", "--hidden",
               "16", "--epochs", "2", "--batch-size", "64", "--qat", "--qat-epochs", "1")
    assert "predictions differ on 0 (0.00%), max logit difference 0 units" in res.output
    assert torch.load(dense, weights_only=True)["meta"]["qat"]["epochs"] == 1
    out = tmp_path / "kp.pt"
    res = _run("compress", str(dense), "--method", "kp", "--ratio", "4", "-o", str(out), "--epochs", "1",
               "--batch-size", "256", "--qat", "--qat-epochs", "1", "--distill")
    assert "QAT forward against the golden int8 model on 300 test samples: predictions differ on 0 (0.00%)" \
        in res.output
    ck = torch.load(out, weights_only=True)
    rep = ck["meta"]["qat"]
    assert rep["samples"] == 300 and rep["disagreements"] == 0 and rep["max_logit_diff"] == 0
    assert ck["meta"]["distill"] == {"temperature": 4.0, "alpha": 0.5}
    # the checkpoint's int8 accuracy (loader, quantizer, golden) is the one QAT reported
    from kpgen.frontend import load
    from kpgen.quant import quantize

    qm = quantize.quantize_model(load.checkpoint_to_ir(ck, str(out)))
    _, _, _, x_te, y_te = load_split("digits", 0)
    pred = golden.predict(golden.run_model(qm, golden.quantize_input(x_te.numpy(), qm.input_scale)).logits)
    assert float(np.mean(pred == y_te.numpy())) == pytest.approx(rep["int8_accuracy"])


def test_compress_refuses_qat_of_low_rank(tmp_path) -> None:
    net = KPRNNClassifier("gru", 8, 8, 10, "dense", "dense")
    src = tmp_path / "d.pt"
    save_checkpoint(make_checkpoint(net, calibrate(net, _data(8)), {"dataset": "digits"}), src)
    res = CliRunner().invoke(main, ["compress", str(src), "--method", "lowrank", "--ratio", "2", "-o",
                                    str(tmp_path / "o.pt"), "--qat"])
    assert res.exit_code == 2
    assert "low-rank matrices have no integer kernel" in res.output


def test_a_cell_without_a_qat_step_is_refused(monkeypatch) -> None:
    import dataclasses

    from kpgen import cells

    monkeypatch.setitem(cells.REGISTRY, "gru", dataclasses.replace(cells.REGISTRY["gru"], qat_step=None))
    net = _net("gru", KP_X, KP_H)
    with pytest.raises(KpgenError, match="--qat: the gru cell is not simulated by quantization-aware training"):
        qat.QATModel(net, _data(16)).quantized()
