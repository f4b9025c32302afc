"""Every cell, matrix kind and direction from a checkpoint to firmware: the loader maps the training side's
state_dict onto the float IR exactly (checked against the torch model's own logits), and `kpgen emit` +
`kpgen run` give a Cortex-M4 firmware that matches the integer reference bit for bit under QEMU."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kpgen.cli import main
from kpgen.frontend.load import checkpoint_to_ir
from kpgen.quant import quantize
from kpgen.reference import floatmodel, golden
from kpgen.train.loop import calibrate, make_checkpoint, save_checkpoint
from kpgen.train.nn import KPRNNClassifier

I, H, C, T = 6, 8, 3, 7

# cell -> (wx spec, wh spec) of 2-factor KP matrices for I = 6, H = 8
KP = {
    "lstm": ([[4, 2], [8, 3]], [[4, 2], [8, 4]]),
    "gru": ([[4, 2], [6, 3]], [[4, 2], [6, 4]]),
    "fastrnn": ([[2, 2], [4, 3]], [[2, 2], [4, 4]]),
    "fastgrnn": ([[2, 2], [4, 3]], [[2, 2], [4, 4]]),
    "rnn": ([[2, 2], [4, 3]], [[2, 2], [4, 4]]),
    "rnn-relu": ([[2, 2], [4, 3]], [[2, 2], [4, 4]]),
}

CASES = {
    # name: (cell, wx spec, wh spec, layers, bidirectional, method)
    "gru-kp": ("gru", *KP["gru"], 1, False, "kp"),
    "fastrnn-kp": ("fastrnn", *KP["fastrnn"], 1, False, "kp"),
    "fastgrnn-kp": ("fastgrnn", *KP["fastgrnn"], 1, False, "kp"),
    "lstm-bidirectional": ("lstm", *KP["lstm"], 1, True, "kp"),
    "lstm-hkp": ("lstm", {"kind": "hkp", "factors": [[4, 2], [6, 3]], "dense_rows": 8},
                 {"kind": "hkp", "factors": [[4, 2], [6, 4]], "dense_rows": 8}, 1, False, "hkp"),
    # HKP with its dense rows spread over the gates (top_groups = the gate count): 2 rows of every gate dense
    "lstm-hkp-spread": ("lstm", {"kind": "hkp", "factors": [[4, 2], [6, 3]], "dense_rows": 8, "top_groups": 4},
                        {"kind": "hkp", "factors": [[4, 2], [6, 4]], "dense_rows": 8, "top_groups": 4}, 1, False,
                        "hkp"),
    "gru-bidirectional-hkp-spread": ("gru", {"kind": "hkp", "factors": [[3, 2], [6, 3]], "dense_rows": 6,
                                             "top_groups": 3},
                                     {"kind": "hkp", "factors": [[3, 2], [6, 4]], "dense_rows": 6, "top_groups": 3},
                                     1, True, "hkp"),
    "lstm-3-factors": ("lstm", [[2, 2], [4, 1], [4, 3]], [[2, 2], [4, 2], [4, 2]], 1, False, "kp"),
    "gru-bidirectional-stacked-hkp3": ("gru", {"kind": "hkp", "factors": [[2, 2], [2, 1], [4, 3]], "dense_rows": 8},
                                       {"kind": "hkp", "factors": [[2, 2], [2, 2], [4, 2]], "dense_rows": 8}, 2, True,
                                       "hkp"),
    "fastgrnn-dense-stacked": ("fastgrnn", "dense", "dense", 2, False, "dense"),
    # alpha 0.45, beta 0.97: |h| grows past 1, so h is Q(e).(7-e) with e > 0 (the state exponent, emitted)
    "fastrnn-growing-stacked": ("fastrnn", *KP["fastrnn"], 2, False, "kp"),
    "rnn-kp": ("rnn", *KP["rnn"], 1, False, "kp"),
    "rnn-relu-kp": ("rnn-relu", *KP["rnn-relu"], 1, False, "kp"),
    "rnn-relu-bidirectional-stacked": ("rnn-relu", *KP["rnn-relu"], 2, True, "kp"),
}


def build_checkpoint(case: str, seed: int = 0) -> tuple[dict, KPRNNClassifier]:
    """A randomly initialised (untrained) model of the case, calibrated on random inputs, as a checkpoint."""
    cell, wx, wh, layers, bidir, method = CASES[case]
    torch.manual_seed(seed)
    model = KPRNNClassifier(cell, I, H, C, wx, wh, num_layers=layers, bidirectional=bidir)
    with torch.no_grad():  # biases and scalars away from their zero / default starts, so every term counts
        for name, p in model.named_parameters():
            if p.dim() <= 1 and not name.startswith("head"):
                p.add_(0.3 * torch.randn_like(p))
            if "growing" in case and name.endswith(("alpha", "beta")):
                p.fill_(torch.logit(torch.tensor(0.45 if name.endswith("alpha") else 0.97)))
    x = torch.rand(64, T, I, generator=torch.Generator().manual_seed(seed)) * 3.0 - 1.5
    meta = {"dataset": "random", "seq_len": T}
    return make_checkpoint(model, calibrate(model, x), meta, method=method), model


@pytest.mark.parametrize("case", sorted(CASES))
def test_loader_matches_torch(case: str) -> None:
    """The float IR the loader builds computes the torch model's logits (float64 vs float32 rounding only)."""
    ck, model = build_checkpoint(case)
    ir = checkpoint_to_ir(ck, case)
    x = np.random.default_rng(1).uniform(-1.5, 1.5, (5, T, I))
    with torch.no_grad():
        want = model(torch.from_numpy(x).float()).double().numpy()
    got = floatmodel.float_forward(ir, x)
    assert got.shape == (5, C)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
    assert ir.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("case", sorted(CASES))
def test_int8_tracks_float(case: str) -> None:
    """The integer reference follows the float model: logits within a few percent of their range."""
    ck, _ = build_checkpoint(case)
    ir = checkpoint_to_ir(ck, case)
    q = quantize.quantize_model(ir)
    x = np.random.default_rng(2).uniform(-1.5, 1.5, (32, T, I))
    want = floatmodel.float_forward(ir, x)
    got = golden.run_model(q, golden.quantize_input(x, q.input_scale)).logits * q.head.out_scale
    span = float(np.max(want) - np.min(want))
    assert np.max(np.abs(got - want)) < 0.08 * span, (np.max(np.abs(got - want)), span)


@pytest.mark.qemu
@pytest.mark.parametrize("case", sorted(CASES))
def test_bit_exact_on_m4(case: str, tmp_path: Path) -> None:
    emit_and_run(case, "m4", tmp_path)


SPREAD_BOARDS = ("m0", "m55")


@pytest.mark.qemu
@pytest.mark.parametrize("board", SPREAD_BOARDS)
def test_spread_hkp_bit_exact_on_m0_and_m55(board: str, tmp_path: Path) -> None:
    """HKP rows spread over the gates on the Armv6-M path (biased blocks) and the Helium path."""
    emit_and_run("lstm-hkp-spread", board, tmp_path)


def emit_and_run(case: str, board: str, tmp_path: Path) -> None:
    """The case through `kpgen emit` and `kpgen run` on an emulated board: 6 samples, bit-exact."""
    ck, _ = build_checkpoint(case)
    pt = tmp_path / f"{case}.pt"
    save_checkpoint(ck, pt)
    rng = np.random.default_rng(3)
    vec = tmp_path / "v.npz"
    np.savez(vec, x=rng.uniform(-1.5, 1.5, (6, T, I)), y=rng.integers(0, C, 6))
    out = tmp_path / board
    runner = CliRunner()
    res = runner.invoke(main, ["emit", str(pt), "--board", board, "-o", str(out), "--vectors", str(vec)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["run", str(out), "--timeout", "120"])
    assert res.exit_code == 0, res.output
    assert "PASS: bit-exact" in res.output and "6/6" in res.output, res.output
    m = re.search(r"instructions per inference\s+([\d,]+)", res.output)
    assert m and int(m.group(1).replace(",", "")) > T * 100, res.output


def _variant(**changes) -> dict:
    ck, _ = build_checkpoint("gru-kp")
    for key, value in changes.items():
        if key.startswith("spec_"):
            ck["arch"][key[5:]][0] = value
        else:
            ck["arch"][key] = value
    return ck


VARIANT_ERRORS = {
    "spec-not-a-spec": (dict(spec_wx_specs=7), "arch.wx_specs[0] is 7, not a matrix spec"),
    "spec-kind": (dict(spec_wx_specs={"kind": "sparse"}),
                  "arch.wx_specs[0] has kind 'sparse', not 'kp', 'hkp' or 'dense'"),
    "spec-padded": (dict(spec_wh_specs={"kind": "kp", "factors": [[4, 2], [6, 4]], "pad": True}),
                    "arch.wh_specs[0] has padded Kronecker factors, which kpgen cannot emit"),
    "spec-factors": (dict(spec_wx_specs={"kind": "kp", "factors": [[4, 2]]}),
                     "arch.wx_specs[0].factors is [[4, 2]], not a list [[m1, n1], [m2, n2], ...] of positive ints"),
    "spec-dense-rows": (dict(spec_wx_specs={"kind": "hkp", "factors": [[4, 2], [6, 3]], "dense_rows": 24}),
                        "arch.wx_specs[0].dense_rows is 24, not an int in 0..23"),
    "spec-product": (dict(spec_wx_specs={"kind": "hkp", "factors": [[4, 2], [6, 3]], "dense_rows": 8}),
                     "arch.wx_specs[0] factors (4x2) (x) (6x3) make a 24x6 matrix but the layer needs 16x6 "
                     "below 8 dense rows"),
    "spec-top-groups": (dict(spec_wx_specs={"kind": "hkp", "factors": [[3, 2], [6, 3]], "dense_rows": 6,
                                            "top_groups": 4}),
                        "arch.wx_specs[0].top_groups is 4, not a positive int dividing both the 24 rows and the 6 "
                        "dense rows"),
    "spec-top-groups-type": (dict(spec_wx_specs={"kind": "hkp", "factors": [[3, 2], [6, 3]], "dense_rows": 6,
                                                 "top_groups": "gates"}),
                             "arch.wx_specs[0].top_groups is 'gates', not a positive int"),
    "method": (dict(method="magic"), "arch.method 'magic' is not known"),
    "bidirectional": (dict(bidirectional="yes"), "arch.bidirectional is 'yes', not true or false"),
    "spec-count": (dict(wh_specs=[]), "arch.wh_specs must list one matrix spec per layer (1)"),
    "variant-cell": (dict(cell="elman"), "arch.cell 'elman' is not supported; use one of lstm, gru, fastrnn, fastgrnn, "
                                          "rnn, rnn-relu"),
}


@pytest.mark.parametrize("case", sorted(VARIANT_ERRORS))
def test_variant_arch_errors(case: str) -> None:
    """Malformed training-side archs get one line naming the key, the value and the fix."""
    from kpgen import KpgenError

    changes, message = VARIANT_ERRORS[case]
    with pytest.raises(KpgenError) as e:
        checkpoint_to_ir(_variant(**changes), "ck.pt")
    assert message in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("ck.pt: ")


RNN_QEMU = [(case, board) for case in ("rnn-kp", "rnn-relu-kp") for board in ("m4", "m0")]


@pytest.mark.qemu
@pytest.mark.parametrize(("case", "board"), RNN_QEMU, ids=[f"{c}-{b}" for c, b in RNN_QEMU])
def test_plain_rnn_bit_exact_on_m4_and_m0(case: str, board: str, tmp_path: Path) -> None:
    """The plain RNN, tanh and relu (h with a state exponent), through `kpgen emit` + `kpgen run` on the M4 (DSP)
    and the M0 (Armv6-M, 16 x 16 high multiply): 4 samples, bit-exact."""
    ck, _ = build_checkpoint(case)
    assert ck["arch"]["cell"] == case.removesuffix("-kp")
    if case == "rnn-relu-kp":  # the relu state is wider than 1 here, so h is Q(e).(7-e) with e > 0
        assert quantize.quantize_model(checkpoint_to_ir(ck, case)).layers[0].state_exp > 0
    pt = tmp_path / f"{case}.pt"
    save_checkpoint(ck, pt)
    rng = np.random.default_rng(4)
    vec = tmp_path / "v.npz"
    np.savez(vec, x=rng.uniform(-1.5, 1.5, (4, T, I)), y=rng.integers(0, C, 4))
    out = tmp_path / board
    runner = CliRunner()
    res = runner.invoke(main, ["emit", str(pt), "--board", board, "-o", str(out), "--vectors", str(vec)])
    assert res.exit_code == 0, res.output
    assert "kp_rnn_step_s8(&" in (out / "model.c").read_text()
    res = runner.invoke(main, ["run", str(out), "--timeout", "120"])
    assert res.exit_code == 0, res.output
    assert "PASS: bit-exact" in res.output and "4/4" in res.output, res.output


def test_spread_hkp_in_the_model_summary() -> None:
    """The summary `kpgen emit` reports names how an HKP matrix's dense rows are spread."""
    from kpgen.ir import matrices
    from kpgen.pipeline import _matrix_summary

    ir = checkpoint_to_ir(build_checkpoint("lstm-hkp-spread")[0], "spread.pt")
    got = [_matrix_summary(m) for m in matrices(ir.layers[0])]
    assert [(s["kind"], s["dense_rows"], s["top_groups"]) for s in got] == [("hkp", 8, 4), ("hkp", 8, 4)]
    plain = _matrix_summary(matrices(checkpoint_to_ir(build_checkpoint("lstm-hkp")[0], "top.pt").layers[0])[0])
    assert plain["dense_rows"] == 8 and "top_groups" not in plain
