"""The command line: help, and every user mistake as one line on stderr with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kpgen.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist-kplstm.pt"


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_line_error(res, *words: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("kpgen: error: ") or lines[0].startswith("Error: ")
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in res.output


def test_help_lists_commands() -> None:
    res = _invoke("--help")
    assert res.exit_code == 0
    for cmd in ("train", "emit", "run", "boards"):
        assert cmd in res.output


def test_emit_help_documents_every_option() -> None:
    res = _invoke("emit", "--help")
    for opt in ("--board", "--out", "--name", "--samples", "--vectors", "--force"):
        assert opt in res.output


def test_boards_lists_m4() -> None:
    res = _invoke("boards")
    assert res.exit_code == 0 and "m4" in res.output and "mps2-an386" in res.output


def test_missing_checkpoint(tmp_path: Path) -> None:
    res = _invoke("emit", str(tmp_path / "nope.pt"), "--board", "m4", "-o", str(tmp_path / "out"))
    _one_line_error(res, "nope.pt")
    assert not (tmp_path / "out").exists()


def test_unknown_board(tmp_path: Path) -> None:
    res = _invoke("emit", str(EXAMPLE), "--board", "z80", "-o", str(tmp_path / "out"))
    _one_line_error(res, "z80", "m4")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = _invoke("emit", str(EXAMPLE), "--board", "m4", "-o", str(out))
    _one_line_error(res, "--force")
    assert (out / "keep.txt").read_text() == "mine"


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file")
    res = _invoke("emit", str(bad), "--board", "m4", "-o", str(tmp_path / "out"))
    _one_line_error(res, "bad.pt")
    assert not (tmp_path / "out").exists()


def test_run_on_a_directory_kpgen_did_not_write(tmp_path: Path) -> None:
    res = _invoke("run", str(tmp_path))
    _one_line_error(res, "kpgen emit")


def test_bad_vectors_file(tmp_path: Path) -> None:
    v = tmp_path / "v.npz"
    v.write_bytes(b"garbage")
    res = _invoke("emit", str(EXAMPLE), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(v))
    _one_line_error(res, "v.npz")


def test_real_entry_point_exit_status(tmp_path: Path) -> None:
    """The installed console script behaves like the in-process runner: exit 2, one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "kpgen", "emit", str(tmp_path / "x.pt"), "--board", "m4"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("kpgen: error: ")


def test_train_defaults_are_the_demo_config() -> None:
    """`kpgen train` with no options trains exactly DEFAULT_CONFIG (the README's demo)."""
    from kpgen.train import DEFAULT_CONFIG

    cmd = main.commands["train"]
    ctx = cmd.make_context("train", [])
    for key, value in DEFAULT_CONFIG.items():
        if key in ctx.params:
            assert ctx.params[key] == value, key
    missing = set(DEFAULT_CONFIG) - set(ctx.params)
    assert missing <= {"max_shift", "weight_decay"}  # left at train_model's defaults, which equal DEFAULT_CONFIG's


def test_train_refuses_bad_factors(tmp_path: Path) -> None:
    res = _invoke("train", "-o", str(tmp_path / "m.pt"), "--wx-factors", "16by2")
    assert res.exit_code == 2 and "factor shapes" in res.output


_TINY = ["--dataset", "digits", "--hidden", "8", "--epochs", "1", "--batch-size", "256"]


@pytest.mark.parametrize("args,cell,bidirectional,kinds", [
    ([], "lstm", False, None),
    (["--cell", "gru"], "gru", False, ("kp", "kp")),
    (["--cell", "fastrnn", "--bidirectional"], "fastrnn", True, ("kp", "kp")),
    (["--cell", "fastgrnn", "--method", "hkp", "--dense-rows", "2"], "fastgrnn", False, ("hkp", "hkp")),
    (["--method", "dense", "--layers", "2"], "lstm", False, ("dense", "dense")),
    (["--wx-factors", "2x2,4x2,4x2", "--wh-factors", "4x2,8x4"], "lstm", False, ("kp", "kp")),
    (["--cell", "gru", "--bidirectional", "--wh-factors", "dense"], "gru", True, ("kp", "dense")),
], ids=["lstm-v1", "gru", "fastrnn-bidirectional", "fastgrnn-hkp", "dense-2-layers", "three-factors",
        "gru-bidirectional-dense-wh"])  # fmt: skip
def test_train_every_cell_and_method(tmp_path: Path, args, cell, bidirectional, kinds) -> None:
    """`kpgen train` builds every model kpgen can train; factor shapes it was not given are planned for the
    cell's G*H rows, and the checkpoint loads back (format v1 for a unidirectional 2-factor KP-LSTM)."""
    import torch

    from kpgen.train.loop import model_from_checkpoint

    out = tmp_path / "m.pt"
    res = _invoke("train", "-o", str(out), *_TINY, *args)
    assert res.exit_code == 0, res.output
    assert f"wrote {out} ({cell}" in res.stdout and "float test accuracy" in res.stdout
    ckpt = torch.load(out, weights_only=True)
    arch = ckpt["arch"]
    assert arch["cell"] == cell and arch["hidden_size"] == 8 and arch["input_size"] == 8
    rows = {"lstm": 32, "gru": 24, "fastrnn": 8, "fastgrnn": 8}[cell]
    if kinds is None:  # the LSTM with planned 2-factor shapes: checkpoint v1, as kpgen emit reads it
        assert "method" not in arch and len(arch["wx_factors"][0]) == 2
        assert "Wx 32x8: kp " in res.stderr and "(planned: highest rank bound" in res.stderr
    else:
        assert arch["bidirectional"] is bidirectional
        assert (arch["wx_specs"][0]["kind"], arch["wh_specs"][0]["kind"]) == kinds
        assert f"Wx {rows}x8: " in res.stderr and f"Wh {rows}x8: " in res.stderr
    model = model_from_checkpoint(ckpt)
    assert model.cell == cell and model.bidirectional is bidirectional
    assert model(torch.zeros(2, 8, 8)).shape == (2, 10)
    if "--dense-rows" in args:
        assert arch["wx_specs"][0]["dense_rows"] == 2 and arch["wh_specs"][0]["dense_rows"] == 2
    if "2x2,4x2,4x2" in args:
        assert arch["wx_specs"][0]["factors"] == [[2, 2], [4, 2], [4, 2]]
        assert "(as given)" in res.stderr


def test_train_keeps_the_demo_factors_where_they_fit() -> None:
    """The demo's shapes (an LSTM, 4H = 512, 28 inputs) stay the default; another cell gets planned ones."""
    from kpgen.train import DEFAULT_CONFIG
    from kpgen.train.plan import train_specs

    pref = (DEFAULT_CONFIG["wx_factors"], DEFAULT_CONFIG["wh_factors"])
    wx, wh = train_specs("lstm", 28, 128, preferred=pref)
    assert (wx.source, wh.source) == ("default", "default")
    assert wx.spec["factors"] == [[32, 2], [16, 14]] and wh.spec["factors"] == [[32, 8], [16, 16]]
    wx, wh = train_specs("gru", 28, 128, preferred=pref)
    assert (wx.source, wh.source) == ("planned", "planned")
    assert wx.spec["factors"] == [[24, 2], [16, 14]] and wh.spec["factors"] == [[24, 8], [16, 16]]
    wx, _ = train_specs("lstm", 28, 128, method="hkp", dense_rows=16, preferred=pref)  # 4 rows of each gate
    assert wx.spec == {"kind": "hkp", "factors": [[31, 2], [16, 14]], "dense_rows": 16, "top_groups": 4}
    wx, _ = train_specs("lstm", 28, 128, method="hkp", dense_rows=16, preferred=pref, hkp_rows="top")
    assert "top_groups" not in wx.spec and "per gate" not in wx.describe()
    wx, _ = train_specs("gru", 28, 128, method="hkp", dense_rows=15)  # a GRU: on top unless --hkp-rows gates
    assert "top_groups" not in wx.spec
    assert train_specs("gru", 28, 128, method="hkp", dense_rows=15, hkp_rows="gates")[0].spec["top_groups"] == 3
    wx, _ = train_specs("lstm", 28, 128, method="hkp", dense_rows=14, preferred=pref)  # 4 does not divide 14: on top
    assert wx.spec == {"kind": "hkp", "factors": [[83, 7], [6, 4]], "dense_rows": 14}
