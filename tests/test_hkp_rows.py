"""kpgen.studies.hkp_rows: HKP's dense rows on top against spread over the gates (a float study)."""

from __future__ import annotations

from click.testing import CliRunner

from kpgen.studies import hkp_rows


def test_table_reports_the_share_of_kps_loss():
    rows = [(0, {"dense": 0.98, "kp": 0.96, "hkp top": 0.965, "hkp spread": 0.975}),
            (1, {"dense": 0.98, "kp": 0.96, "hkp top": 0.965, "hkp spread": 0.975})]
    out = hkp_rows.table("mnist", rows)
    assert out[0] == "| mnist seed | dense | kp | hkp top | hkp spread |"
    assert out[2] == "| 0 | 98.0 | 96.0 | 96.5 | 97.5 |"
    assert out[4] == "| mean | 98.00 | 96.00 | 96.50 | 97.50 |"
    assert "on top recovers 0.50 (25%)" in out[-1] and "spread over the gates 1.50 (75%)" in out[-1]


def test_cli_refuses_what_it_cannot_measure(tmp_path):
    def run(*args):
        return CliRunner().invoke(hkp_rows.main, [*args, "--work", str(tmp_path)])

    r = run("--benchmark", "nope")
    assert r.exit_code == 2 and "unknown benchmark 'nope'" in r.output
    r = run("--benchmark", "digits")
    assert r.exit_code == 2 and "has no dense rows" in r.output
    r = run("--benchmark", "daphnet")
    assert r.exit_code == 2 and "a fastrnn matrix has no gate blocks" in r.output
    r = run("--benchmark", "japanesevowels")
    assert r.exit_code == 2 and "8 dense rows of a gru matrix cannot be spread evenly over its 3 gates" in r.output
    r = run("--benchmark", "mnist", "--seeds", "0")
    assert r.exit_code == 2 and "run `make reproduce` first" in r.output
