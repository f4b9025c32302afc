"""Factor planning: candidates, costs, rank bounds, padding of awkward dimensions, HKP rows, `kpgen plan`."""

import math

import pytest
import torch
from click.testing import CliRunner

from kpgen.cli import main
from kpgen.train.nn import make_matrix
from kpgen.train.plan import (
    Candidate,
    best_hkp,
    best_kp,
    budget_for,
    hkp_candidates,
    kp_candidates,
    kp_key,
    ordered_factorizations,
    plan,
    sizes_to_try,
)


def test_ordered_factorizations():
    got = list(ordered_factorizations(12, 2))
    assert got == [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2), (12, 1)]
    three = list(ordered_factorizations(8, 3))
    assert len(three) == 10 and all(math.prod(t) == 8 for t in three)


def test_candidate_costs_two_factors():
    c = Candidate(512, 28, ((16, 2), (32, 14)))
    assert c.params == 16 * 2 + 32 * 14
    assert c.macs == 2 * 14 * 32 + 16 * 2 * 32  # n1*n2*m2 + m1*n1*m2
    assert c.rank_bound == 2 * 14
    assert c.compression == pytest.approx(512 * 28 / 480)
    assert not c.padded and c.spec() == {"kind": "kp", "factors": [[16, 2], [32, 14]]}


def test_rank_bound_is_attained_by_random_factors():
    torch.manual_seed(0)
    for shapes in [((4, 2), (3, 5)), ((2, 6), (4, 2)), ((5, 5), (1, 3))]:
        c = Candidate(shapes[0][0] * shapes[1][0], shapes[0][1] * shapes[1][1], shapes)
        w = torch.kron(torch.randn(*shapes[0], dtype=torch.float64), torch.randn(*shapes[1], dtype=torch.float64))
        assert int(torch.linalg.matrix_rank(w)) == c.rank_bound


def test_kp_candidates_respect_budget_and_order():
    cands = kp_candidates(512, 128, budget=655)
    assert cands and all(c.params <= 655 for c in cands)
    assert cands == sorted(cands, key=kp_key)
    assert all(not c.padded for c in cands)  # 512 and 128 are powers of two: never padded
    best = cands[0]
    assert best.rank_bound == 128 and best.factors == ((32, 8), (16, 16))
    assert all((1, 1) not in c.factors for c in cands)


def test_awkward_dimension_is_padded_only_when_it_pays():
    assert sizes_to_try(512, 0.125) == [512]
    assert sizes_to_try(28, 0.125) == [28]  # 2*2*7: smooth
    assert sizes_to_try(156, 0.125) == [156, 160, 162, 168]  # 2*2*3*13
    assert sizes_to_try(156, 0.0) == [156]
    assert not any(c.padded for c in kp_candidates(512, 156, pad=0.0))
    # 158 = 2 * 79: unpadded, no two-factor product reaches full rank cheaply; padding to 160 does
    best = best_kp(512, 158, budget=2696, pad=0.125)
    assert best.padded and best.rank_bound == 158 and best.params <= 2696
    unpadded = best_kp(512, 158, budget=2696, pad=0.0)
    assert unpadded.rank_bound < 158
    m = make_matrix(158, 512, best.spec())
    assert m(torch.randn(2, 158)).shape == (2, 512)


def test_hkp_rows_spend_the_budget():
    budget = budget_for(512, 156, ratio=15)
    assert budget == 5324
    cands = hkp_candidates(512, 156, budget)
    assert cands
    for h in cands:
        block = math.prod(f[0] for f in h.factors[1:])
        assert h.params <= budget and h.dense_rows % block == 0
        (m1, n1), rest = h.factors[0], h.factors[1:]
        bigger = Candidate(512, 156, ((m1 - 1, n1), *rest), dense_rows=h.dense_rows + block)
        assert m1 == 1 or bigger.params > budget  # one more block of dense rows would not fit
        assert h.dense_rows + math.prod(f[0] for f in h.factors) == 512
    best = best_hkp(512, 156, budget)
    layer = make_matrix(156, 512, best.spec())
    assert layer.dense().shape == (512, 156) and layer.weight_params == best.params


def test_plan_with_three_factors_and_max_params():
    p = plan(128, 32, max_params=200, num_factors=3)
    assert p.budget == 200 and all(len(c.factors) == 3 and c.params <= 200 for c in p.kp)
    assert budget_for(100, 10, ratio=10, max_params=50) == 50
    assert budget_for(100, 10) is None


def test_cli_plan_example():
    res = CliRunner().invoke(main, ["plan", "--rows", "512", "--cols", "156", "--ratio", "15", "--top", "3"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "W 512x156: 79,872 weights" in out and "budget 5,324 parameters" in out
    assert "Kronecker products (2 factors)" in out and "Hybrid KP" in out
    assert "dense rows +" in out and "more (--top N)" in out


def test_cli_plan_needs_sizes():
    res = CliRunner().invoke(main, ["plan", "--cols", "10"])
    assert res.exit_code == 2


EXAMPLE = "examples/mnist-kplstm.pt"


def _cli(*args):
    return CliRunner().invoke(main, list(args), prog_name="kpgen")


def test_cli_plan_for_every_matrix_of_a_checkpoint():
    from pathlib import Path

    example = str(Path(__file__).resolve().parents[1] / EXAMPLE)
    res = _cli("plan", example, "--top", "2")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "(lstm, 1 layer, H 128, 28 inputs, 10 classes): 2 recurrent matrices, 79,872 weights dense, 800 now" in out
    assert "layers.0.wx 512x28: now kp 32x2 (x) 16x14, 288 parameters (49.78x), rank <= 28" in out
    assert "layers.0.wh 512x128: now kp 32x8 (x) 16x16, 512 parameters (128.00x), rank <= 128" in out
    assert "W 512x28: 14,336 weights" in out and "W 512x128: 65,536 weights" in out
    assert "1  32x2 (x) 16x14" in out and "1  32x8 (x) 16x16" in out
    assert "#1 Kronecker candidate of every matrix: 79,872 -> 800 parameters (99.84x)" in out
    assert "Hybrid KP" not in out  # no budget, nothing for dense rows to spend


def test_plan_for_training_side_variants(tmp_path):
    """A bidirectional two-layer GRU with HKP and low-rank matrices: every matrix is listed with what it is now,
    matrices of one shape share one plan, and --max-params is shared by all of them in proportion to size."""
    from kpgen.train import make_checkpoint, save_checkpoint
    from kpgen.train.nn import KPRNNClassifier

    hkp = {"kind": "hkp", "factors": [[5, 2], [4, 4]], "dense_rows": 4}  # 24x8 = 4 dense rows + 20x8
    model = KPRNNClassifier("gru", 8, 8, 10, hkp, {"kind": "lowrank", "rank": 2}, num_layers=2, bidirectional=True)
    path = tmp_path / "variant.pt"
    save_checkpoint(make_checkpoint(model, {"input_absmax": 1.0, "state_absmax": [1.0, 1.0], "gate_absmax": [1.0, 1.0]},
                                    {"dataset": "digits"}), path)
    res = _cli("plan", str(path), "--max-params", "400", "--top", "1")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "(gru, bidirectional, 2 layers, H 8, 8 inputs, 10 classes): 8 recurrent matrices" in out
    assert "layers.0.fwd.wx 24x8: now hkp 4 dense rows + 5x2 (x) 4x4, 58 parameters" in out
    assert "layers.0.bwd.wx 24x8" in out and "layers.1.bwd.wx 24x16" in out
    assert "layers.1.fwd.wh 24x8: now lowrank rank 2, 64 parameters (3.00x), rank <= 2" in out
    assert out.count("W 24x8:") == 1 and out.count("W 24x16:") == 1  # one plan per shape
    total = 6 * 24 * 8 + 2 * 24 * 16
    assert f"all matrices together at most 400 parameters, shared in proportion to size ({total / 400:.2f}x)" in out
    assert f"budget {400 * 24 * 8 // total} parameters" in out
    assert "#1 hybrid KP candidate of every matrix" in out


def test_plan_for_a_torch_state_dict(tmp_path):
    """A dense torch LSTM: what `kpgen compress --method kp --ratio R` will choose from, before compressing."""
    lstm, fc = torch.nn.LSTM(8, 16, batch_first=True), torch.nn.Linear(16, 10)
    sd = {**{f"rnn.{k}": v for k, v in lstm.state_dict().items()}, **{f"fc.{k}": v for k, v in fc.state_dict().items()}}
    torch.save(sd, tmp_path / "dense.pt")
    res = _cli("plan", str(tmp_path / "dense.pt"), "--ratio", "8", "--pad", "0")
    assert res.exit_code == 0, res.output
    assert "layers.0.wx 64x8: now dense, 512 parameters (1.00x), rank <= 8" in res.output
    assert "budget: every matrix at most 1/8 of its weights" in res.output
    from kpgen.train.plan import best_kp

    first = best_kp(64, 16, 64 * 16 // 8)
    assert f"    1  {first.describe()}" in res.output
