"""End to end on the shipped example: checkpoint -> C -> firmware on the Cortex-M4 under QEMU, bit-exact."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from kpgen.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist-kplstm.pt"


@pytest.fixture(scope="module")
def emitted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "m4"
    res = CliRunner().invoke(main, ["emit", str(EXAMPLE), "--board", "m4", "-o", str(out), "--samples", "50"])
    assert res.exit_code == 0, res.output
    return out


def test_emit_is_deterministic(emitted: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    res = CliRunner().invoke(main, ["emit", str(EXAMPLE), "--board", "m4", "-o", str(again), "--samples", "50"])
    assert res.exit_code == 0, res.output
    names = sorted(p.relative_to(emitted) for p in emitted.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for n in names:
        assert (emitted / n).read_bytes() == (again / n).read_bytes(), n


def test_int8_accuracy_close_to_float(emitted: Path) -> None:
    acc = json.loads((emitted / "kpgen.json").read_text())["accuracy"]
    assert acc["test_samples"] == 1000
    assert acc["float"] > 0.9
    assert abs(acc["int8_golden"] - acc["float"]) <= 0.01  # docs: int8 within 1 point of float


@pytest.mark.qemu
def test_firmware_bit_exact_on_m4(emitted: Path) -> None:
    res = CliRunner().invoke(main, ["run", str(emitted), "--timeout", "300"])
    assert res.exit_code == 0, res.output
    assert "bit-exact samples" in res.output and "50/50" in res.output
    m = re.search(r"instructions per inference\s+([\d,]+)", res.output)
    assert m and int(m.group(1).replace(",", "")) > 28 * 1000
    assert "PASS: bit-exact" in res.output
    assert (emitted / "fw.elf").is_file() and (emitted / "fw.hex").is_file() and (emitted / "fw.map").is_file()
