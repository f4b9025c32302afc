"""The studies' command lines (`python -m kpgen.studies.bench`, `... reproduce`, what `make bench` and `make
reproduce` run): options are checked before any work starts, and a KpgenError is one line and exit status 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kpgen import KpgenError
from kpgen.studies import bench
from kpgen.studies import reproduce as rp


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0,x"], "'0,x' is not a comma-separated list of integers"),
        (["--seeds", ","], "give at least one seed"),
        (["--benchmarks", "mnist,nope"], "unknown benchmark(s) nope; known: mnist, basicmotions"),
        (["--jobs", "0"], "0 is not in the range x>=1"),
    ],
)
def test_reproduce_rejects_bad_options(args: list[str], message: str) -> None:
    res = CliRunner().invoke(rp.main, args)
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_reproduce_records_how_it_was_run() -> None:
    """results.md names the command: `make reproduce` for the defaults, else the options that were given."""
    assert rp._command_line(rp.main.make_context("reproduce", [])) == "make reproduce"
    ctx = rp.main.make_context("reproduce", ["--no-qemu", "--seeds", "0, 2", "--benchmarks", "digits,mnist"])
    assert rp._command_line(ctx) == "python -m kpgen.studies.reproduce --seeds 0,2 --benchmarks mnist,digits --no-qemu"
    assert ctx.params["benches"] == tuple(b for b in rp.BENCHMARKS if b.name in ("mnist", "digits"))


def test_bench_rejects_bad_options_and_reports_errors_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    res = CliRunner().invoke(bench.main, ["--jobs", "0"])
    assert res.exit_code == 2 and "0 is not in the range x>=1" in res.output

    def no_tools(*args: object) -> int:
        raise KpgenError("arm-none-eabi-gcc not found; install it")

    monkeypatch.setattr(bench, "run", no_tools)
    res = CliRunner().invoke(bench.main, ["--quick"])
    assert res.exit_code == 2
    assert res.output == "kpgen bench: error: arm-none-eabi-gcc not found; install it\n"
