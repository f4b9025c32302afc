"""kpgen.studies.hkp_rows: HKP with its dense rows spread over the gates (a float-only study)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from kpgen.studies import hkp_rows
from kpgen.train.nn import KPRNNClassifier


def test_spread_order_takes_the_first_rows_of_every_gate():
    perm = hkp_rows.spread_order(12, 3, 6)  # 3 gates of 4 rows, 2 dense rows each
    assert perm.tolist() == [0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11]
    assert sorted(perm.tolist()) == list(range(12))
    assert hkp_rows.spread_order(8, 4, 0).tolist() == list(range(8))
    for rows, gates, dense in ((12, 3, 4), (10, 4, 4)):
        with pytest.raises(ValueError, match="cannot be spread evenly"):
            hkp_rows.spread_order(rows, gates, dense)


@pytest.mark.parametrize("cell,bidirectional", [("lstm", False), ("gru", True)])
def test_spread_hkp_keeps_the_chosen_rows_exact_and_the_gate_order(cell, bidirectional):
    torch.manual_seed(0)
    hidden, inputs = 8, 4
    src = KPRNNClassifier(cell, inputs, hidden, 3, "dense", "dense", bidirectional=bidirectional).eval()
    gates = 4 if cell == "lstm" else 3
    per = 2
    wx = {"kind": "hkp", "factors": [[gates * hidden - gates * per, 1], [1, inputs]], "dense_rows": gates * per}
    wh = {"kind": "hkp", "factors": [[(hidden - per), 2], [gates, hidden // 2]], "dense_rows": gates * per}
    model = hkp_rows.spread_hkp(src, wx, wh, seed=0).eval()
    src_mats = dict(src.matrices())
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, hkp_rows.Reordered)]
    assert len(wrapped) == 2 * (2 if bidirectional else 1)
    for name, mat in wrapped:
        ref = src_mats[name]
        x = torch.randn(5, ref.in_features)
        y, y_ref = mat(x), ref(x)
        assert y.shape == y_ref.shape
        block = gates * hidden // gates
        dense_rows = [g * block + u for g in range(gates) for u in range(per)]
        other = [r for r in range(gates * hidden) if r not in dense_rows]
        # the spread rows are the source's rows, exactly, and in the cell's order; the rest are a Kronecker fit
        assert torch.allclose(y[:, dense_rows], y_ref[:, dense_rows], atol=1e-5)
        assert not torch.allclose(y[:, other], y_ref[:, other], atol=1e-3)
    # the network still runs end to end and keeps its head
    assert model(torch.randn(2, 5, inputs)).shape == (2, 3)
    assert torch.equal(model.head.weight, src.head.weight)


def test_table_reports_the_share_of_kps_loss():
    rows = [(0, {"dense": 0.98, "kp": 0.96, "hkp": 0.965, "hkp spread": 0.975}),
            (1, {"dense": 0.98, "kp": 0.96, "hkp": 0.965, "hkp spread": 0.975})]
    out = hkp_rows.table("mnist", rows)
    assert out[2] == "| 0 | 98.0 | 96.0 | 96.5 | 97.5 |"
    assert out[4] == "| mean | 98.00 | 96.00 | 96.50 | 97.50 |"
    assert "HKP recovers 0.50 (25%)" in out[-1] and "spread rows 1.50 (75%)" in out[-1]


def test_cli_refuses_bad_benchmarks_and_missing_checkpoints(tmp_path):
    r = CliRunner().invoke(hkp_rows.main, ["--benchmark", "nope", "--work", str(tmp_path)])
    assert r.exit_code == 2 and "unknown benchmark 'nope'" in r.output
    r = CliRunner().invoke(hkp_rows.main, ["--benchmark", "digits", "--work", str(tmp_path)])
    assert r.exit_code == 2 and "has no dense rows" in r.output
    r = CliRunner().invoke(hkp_rows.main, ["--benchmark", "mnist", "--seeds", "0", "--work", str(tmp_path)])
    assert r.exit_code == 2 and "run `make reproduce` first" in r.output
