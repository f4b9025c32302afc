"""kpgen.studies.fidelity: int8-float disagreements, one rounding at a time."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from kpgen.studies import fidelity
from kpgen.train.loop import calibrate, make_checkpoint
from kpgen.train.nn import KPRNNClassifier


def test_fake_int8_is_on_the_symmetric_grid():
    t = torch.tensor([[0.5, -1.27, 0.013], [0.0, 1.0, -0.3]])
    q = fidelity.fake_int8(t)
    steps = q / (1.27 / 127)
    assert torch.allclose(steps, torch.round(steps), atol=1e-4)
    assert float(q.abs().max()) == float(t.abs().max())
    assert torch.equal(fidelity.fake_int8(torch.zeros(3)), torch.zeros(3))


def test_fake_symmetric_per_row_and_wider():
    t = torch.tensor([[1.0, 0.3, -0.01], [0.02, -0.005, 0.011]])
    rows = fidelity.fake_symmetric(t, 8, per_row=True)
    for r, scale in ((0, 1.0 / 127), (1, 0.02 / 127)):  # each row on its own grid, its largest value exact
        steps = rows[r] / scale
        assert torch.allclose(steps, torch.round(steps), atol=1e-4)
        assert float(rows[r].abs().max()) == pytest.approx(float(t[r].abs().max()))
    # per tensor, the small row collapses onto a few steps of 1/127; per row it keeps its shape
    assert fidelity.fake_int8(t)[1].tolist() == pytest.approx([3 / 127, -1 / 127, 1 / 127])
    assert float((rows[1] - t[1]).abs().max()) <= 0.01 / 127 + 1e-9
    ten = fidelity.fake_symmetric(t, 10)
    steps = ten / (1.0 / 511)
    assert torch.allclose(steps, torch.round(steps), atol=1e-3)
    assert float((ten - t).abs().max()) < float((fidelity.fake_int8(t) - t).abs().max())
    assert torch.equal(fidelity.fake_symmetric(torch.zeros(2, 3), 8, per_row=True), torch.zeros(2, 3))


def test_on_grid_rounds_and_saturates():
    v = torch.tensor([0.26, -5.0, 5.0, 0.0, 0.004])
    assert fidelity.on_grid(v, 0.01).tolist() == pytest.approx([0.26, -1.28, 1.27, 0.0, 0.0])


def _grid_model(cell: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """A small network whose matrix factors and head weight already lie on their int8 grids, with inputs on the
    input grid: rounding the matrices, the head or the input changes nothing."""
    torch.manual_seed(3)
    g = 4 if cell == "lstm" else 1
    net = KPRNNClassifier(cell, 4, 8, 3, [(2 * g, 2), (4, 2)], [(2 * g, 2), (4, 4)])
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randint(-127, 128, p.shape).float() / 127 * 0.4)
                p.view(-1)[0] = 0.4  # the largest |value| sets the scale: 0.4 / 127
    x = torch.randint(-127, 128, (64, 5, 4)).float() / 127  # input_absmax 1 -> scale 1/127
    x[0, 0, 0] = 1.0
    y = torch.randint(0, 3, (64,))
    return make_checkpoint(net, calibrate(net, x), {}), x, y


def test_roundings_that_are_exact_move_nothing():
    for cell in ("lstm", "fastrnn"):
        ck, x, y = _grid_model(cell)
        c = fidelity.measure(ck, x, y)
        assert c.samples == 64
        assert c.by_component["matrices"] == 0
        assert c.by_component["head"] == 0
        assert c.by_component["input"] == 0
        assert 0 <= c.by_component["state"] <= 64
        assert c.float_right_int8_wrong + c.int8_right_float_wrong <= c.int8 <= 64


def test_rounding_the_head_coarsely_is_seen():
    """A head whose largest weight dwarfs the others: per-tensor int8 zeroes the small rows, and the count says so."""
    ck, x, y = _grid_model("lstm")
    w = ck["state_dict"]["head.weight"]
    w.mul_(1e-3)
    ck["state_dict"]["head.bias"].zero_()
    w.view(-1)[0] = 1.0
    c = fidelity.measure(ck, x, y)
    assert c.by_component["head"] > 0


def test_table_has_a_column_per_rounding_in_order():
    c = fidelity.Count(samples=600, int8=7, float_right_int8_wrong=5, int8_right_float_wrong=1,
                       by_component=dict(zip(fidelity.COMPONENTS, (11, 12, 13, 14, 15, 16), strict=True)))
    head, rule, row = fidelity.table({("digits", "kp"): c}, [0, 1])
    assert head.count("|") == rule.count("|") == row.count("|") == 7 + len(fidelity.COMPONENTS)
    assert "per-row int8" in head and "int10" in head
    assert row == "| digits | kp | 300 x 2 | 7 | 5 | 1 | 11 | 12 | 13 | 14 | 15 | 16 |"


def test_cli_refuses_unknown_benchmark_and_missing_checkpoints(tmp_path):
    r = CliRunner().invoke(fidelity.main, ["--work", str(tmp_path), "--benchmarks", "nope"])
    assert r.exit_code == 2 and "unknown benchmark 'nope'" in r.output
    r = CliRunner().invoke(fidelity.main, ["--work", str(tmp_path), "--benchmarks", "digits"])
    assert r.exit_code == 2 and "run `make reproduce` first" in r.output
