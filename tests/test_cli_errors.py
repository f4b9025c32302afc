"""Nothing bad gets through the command line: every kind of bad input to `kpgen emit` and `kpgen run` ends
as one line on stderr with exit status 2 (a hang, a fault or a mismatch: a FAILED line and exit status 1),
no traceback, and no output directory or temporary file left behind. docs/errors.md points at these tests.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import ARCH, save, tiny_checkpoint, vectors
from click.testing import CliRunner

import kpgen.codegen.emit
import kpgen.target.boards
from kpgen.cli import main
from kpgen.target import toolchain

HAVE_TOOLS = all(shutil.which(t) for t in toolchain.ALL_TOOLS)
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="needs arm-none-eabi-gcc, make and qemu-system-arm")


class NotData:
    """Any class of the user's: weights_only loading must refuse to unpickle it."""

    def __init__(self) -> None:
        self.x = 1


def one_line_error(res, *needles: str) -> str:
    """Exit status 2, exactly one line on stderr starting 'kpgen: error: ', containing every needle."""
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("kpgen: error: "), lines[0]
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def nothing_written(parent: Path, name: str = "out") -> None:
    """No output directory and no temporary sibling left in parent."""
    assert not (parent / name).exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")] == []


def emit(*args: str):
    return CliRunner().invoke(main, ["emit", *args])


@pytest.fixture(scope="module")
def vec(tmp_path_factory) -> Path:
    return vectors(tmp_path_factory.mktemp("vec") / "v.npz")


# ------------------------------------------------------------------------------------- bad checkpoints


def _lowrank(ck: dict) -> None:
    """Turn a v1 checkpoint's arch into a training-side low-rank one (the tensors are not even looked at)."""
    ck["arch"].update(method="lowrank", wx_specs=[{"kind": "lowrank", "rank": 2}] * 2,
                      wh_specs=[{"kind": "lowrank", "rank": 2}] * 2)


def _set(d: dict, key, value) -> None:
    d[key] = value


def _del(d: dict, key) -> None:
    del d[key]


def _scale(ck: dict, what: str, factor: float, add: float = 0.0) -> None:
    for k, t in ck["state_dict"].items():
        if what in k:
            t.mul_(factor).add_(add)


def _fill(t: torch.Tensor, value: float) -> None:
    t.view(-1)[0] = value


# (id, how to break the dict, words the message must contain)
BAD_DICTS = [
    ("pickled-object", lambda ck: _set(ck["meta"], "extra", NotData()), ["pickled Python objects", "NotData"]),
    ("unknown-version", lambda ck: _set(ck, "version", 7), ["version 7 is not supported", "upgrade kpgen"]),
    ("wrong-format", lambda ck: _set(ck, "format", "keras"), ["format is 'keras'"]),
    ("missing-tensor", lambda ck: _del(ck["state_dict"], "layers.1.wh.a"), ["missing tensor(s) layers.1.wh.a"]),
    ("extra-tensor", lambda ck: _set(ck["state_dict"], "layers.0.extra", torch.zeros(2)),
     ["unexpected tensor(s) layers.0.extra", "remove them"]),
    ("wrong-shape", lambda ck: _set(ck["state_dict"], "head.weight", torch.zeros(3, 5)),
     ["state_dict['head.weight'] has shape (3, 5), expected (3, 4)"]),
    ("factor-product", lambda ck: _set(ck["arch"]["wx_factors"], 0, [[4, 2], [4, 4]]),
     ["(4x2) (x) (4x4) make a 16x8 matrix but the layer needs 16x6", "choose factors"]),
    ("nan-weights", lambda ck: _fill(ck["state_dict"]["layers.0.wx.b"], math.nan), ["contains NaN or inf"]),
    ("inf-weights", lambda ck: _fill(ck["state_dict"]["head.bias"], -math.inf), ["contains NaN or inf"]),
    ("int-weights", lambda ck: _set(ck["state_dict"], "head.bias", torch.zeros(3, dtype=torch.int64)),
     ["not floating point"]),
    ("sparse-weights", lambda ck: _set(ck["state_dict"], "head.bias", torch.zeros(3).to_sparse()),
     ["sparse_coo tensor, not a dense CPU tensor"]),
    ("missing-calibration", lambda ck: _del(ck, "calibration"), ["missing calibration", "input_absmax"]),
    ("calibration-key", lambda ck: _del(ck["calibration"], "cell_absmax"), ["calibration is missing cell_absmax"]),
    ("calibration-value", lambda ck: _set(ck["calibration"], "input_absmax", -1.0),
     ["calibration.input_absmax is -1.0, not a positive number"]),
    ("calibration-layers", lambda ck: _set(ck["calibration"], "cell_absmax", [1.0]), ["one per layer"]),
    ("bare-state-dict", lambda ck: ck["state_dict"], ["bare state_dict"]),
    ("not-a-dict", lambda ck: [1, 2], ["holds a list, not a dict"]),
    ("arch-key", lambda ck: _del(ck["arch"], "num_classes"), ["arch is missing key(s) num_classes"]),
    ("arch-cell", lambda ck: _set(ck["arch"], "cell", "gru"), ["arch.cell 'gru' is not supported"]),
    ("arch-int", lambda ck: _set(ck["arch"], "hidden_size", "4"), ["arch.hidden_size is '4', not a positive int"]),
    ("no-format", lambda ck: _del(ck, "format"), ["has no 'format' key, so it is not a kpgen checkpoint"]),
    ("missing-top-key", lambda ck: _del(ck, "state_dict"), ["missing top-level key(s) state_dict"]),
    ("arch-not-dict", lambda ck: _set(ck, "arch", [6, 4]), ["'arch' is a list, not a dict"]),
    ("meta-not-dict", lambda ck: _set(ck, "meta", "mnist"), ["'meta' is not a dict"]),
    ("factor-count", lambda ck: _set(ck["arch"], "wh_factors", ck["arch"]["wh_factors"][:1]),
     ["arch.wh_factors must list one [[m1, n1], [m2, n2]] per layer (2)"]),
    ("factor-form", lambda ck: _set(ck["arch"]["wx_factors"], 1, [8, 2, 2, 2]),
     ["arch.wx_factors[1] is [8, 2, 2, 2], not [[m1, n1], [m2, n2]] with positive ints"]),
    ("not-a-tensor", lambda ck: _set(ck["state_dict"], "head.bias", [0.0, 0.0, 0.0]), ["is a list, not a tensor"]),
    ("training-variant", lambda ck: _lowrank(ck),
     ["arch.wx_specs[0] is a low-rank matrix, which kpgen cannot emit (it has no low-rank kernel)"]),
    ("gate-sum", lambda ck: _scale(ck, "layers.1.bias", 0.0) or _scale(ck, "layers.1.bias", 0.0, add=524287.0),
     ["layer 1: the gate sum can reach"]),
    # what the quantizer cannot represent (docs/quantization.md), reported with the checkpoint's name
    ("tiny-weights", lambda ck: _scale(ck, "layers.0.wx", 1e-30), ["layer 0 Wx"]),
    ("huge-weights", lambda ck: _scale(ck, "layers.0.wh", 1e18), ["layer 0 Wh"]),
    ("huge-cell-range", lambda ck: _set(ck["calibration"], "cell_absmax", [1e6, 1.0]), ["too large for int16"]),
    ("huge-lstm-bias", lambda ck: _scale(ck, "layers.1.bias", 1e9), ["layer 1"]),
    ("huge-head-bias", lambda ck: _scale(ck, "head.bias", 1e9), ["head: bias", "int32"]),
    ("tiny-head-weights", lambda ck: _scale(ck, "head.weight", 1e-30), ["head: bias", "near-zero head weights"]),
]


@pytest.mark.parametrize("breaks,needles", [b[1:] for b in BAD_DICTS], ids=[b[0] for b in BAD_DICTS])
def test_emit_refuses_bad_checkpoint(tmp_path: Path, vec: Path, breaks, needles) -> None:
    ck = tiny_checkpoint()
    broken = breaks(ck)
    ckpt = save(ck if broken is None else broken, tmp_path / "bad.pt")
    res = emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(vec))
    line = one_line_error(res, "bad.pt", *needles)
    assert "; " in line  # the problem, then the fix
    nothing_written(tmp_path)


def test_emit_refuses_a_saved_module(tmp_path: Path, vec: Path) -> None:
    """torch.save(model) instead of a dict: refused without running the pickle."""
    ckpt = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), ckpt)
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(vec)),
                   "pickled Python objects", "torch.nn.modules.linear.Linear")  # fmt: skip
    nothing_written(tmp_path)


def _damaged(good: bytes, how: str) -> bytes:
    if how == "truncated":
        return good[: len(good) // 2]
    if how == "truncated-tail":
        return good[:-40]
    if how == "corrupt-directory":  # the zip central directory at the end, overwritten
        return good[:-200] + bytes(200)
    if how == "corrupt-pickle":  # garbage where data.pkl starts (after the 30-byte local header and name)
        return good[:40] + b"\xff" * 64 + good[104:]
    if how == "empty":
        return b""
    if how == "text":
        return b"model weights, version 1\n"
    raise ValueError(how)


DAMAGE = [
    ("truncated", "truncated or corrupt"),
    ("truncated-tail", "truncated or corrupt"),
    ("corrupt-directory", "truncated or corrupt"),
    ("corrupt-pickle", "is not a torch checkpoint that weights_only loading can read"),
    ("empty", "is empty (0 bytes)"),
    ("text", "not a torch checkpoint"),
]


@pytest.mark.parametrize("how,needle", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_emit_refuses_damaged_file(tmp_path: Path, vec: Path, how: str, needle: str) -> None:
    good = save(tiny_checkpoint(), tmp_path / "good.pt").read_bytes()
    (tmp_path / "bad.pt").write_bytes(_damaged(good, how))
    one_line_error(emit(str(tmp_path / "bad.pt"), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(vec)),
                   "bad.pt", needle)  # fmt: skip
    nothing_written(tmp_path)


def test_emit_refuses_missing_checkpoint_file(tmp_path: Path, vec: Path) -> None:
    one_line_error(emit(str(tmp_path / "nope.pt"), "--board", "m4", "-o", str(tmp_path / "out")), "no such file")
    nothing_written(tmp_path)


def test_emit_refuses_directory_as_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "dir.pt").mkdir()
    one_line_error(emit(str(tmp_path / "dir.pt"), "--board", "m4", "-o", str(tmp_path / "out")), "not a regular file")
    nothing_written(tmp_path)


def test_emit_refuses_unreadable_checkpoint(tmp_path: Path, vec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file kpgen may not read (simulated: torch.load raises PermissionError; root could read a chmod 0 file)."""
    ckpt = save(tiny_checkpoint(), tmp_path / "locked.pt")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(ckpt))

    monkeypatch.setattr(torch, "load", denied)
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(vec)),
                   "cannot be read (Permission denied)", "check the file's permissions")  # fmt: skip
    nothing_written(tmp_path)


def test_bad_checkpoint_through_the_real_executable(tmp_path: Path, vec: Path) -> None:
    """The installed entry point, in its own process: exit status 2, one stderr line, nothing written."""
    ck = tiny_checkpoint()
    ck["version"] = 99
    ckpt = save(ck, tmp_path / "v99.pt")
    proc = subprocess.run([sys.executable, "-m", "kpgen", "emit", str(ckpt), "--board", "m4", "-o",
                           str(tmp_path / "out"), "--vectors", str(vec)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "version 99 is not supported" in proc.stderr
    nothing_written(tmp_path)


# ------------------------------------------------------------------------------- other emit mistakes


def test_emit_unknown_board(tmp_path: Path, vec: Path) -> None:
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    one_line_error(emit(str(ckpt), "--board", "pdp11", "-o", str(tmp_path / "out"), "--vectors", str(vec)),
                   "unknown board 'pdp11'", "known boards: ", "m4")  # fmt: skip
    nothing_written(tmp_path)


def test_emit_refuses_existing_output_without_force(tmp_path: Path, vec: Path) -> None:
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.c").write_text("/* the user's */\n")
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(vec)),
                   "exists", "--force")  # fmt: skip
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.c"]
    # --force replaces only what kpgen wrote: the user's directory stays
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(vec), "--force"),
                   "was not written by `kpgen emit` (it has no kpgen.json)", "remove it yourself")  # fmt: skip
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.c"]
    (tmp_path / "out" / "mine.c").unlink()
    for _ in range(2):  # an empty directory, then kpgen's own output, are replaced
        res = emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(vec), "--force")
        assert res.exit_code == 0, res.output
        assert (tmp_path / "out" / "kpgen.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "out"]


def test_force_never_replaces_inputs_or_the_working_directory(tmp_path: Path, vec: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    proj = tmp_path / "proj"
    ckpt = save(tiny_checkpoint(), proj / "build" / "m.pt")
    (proj / "build" / "kpgen.json").write_text("{}")  # even a directory that looks like kpgen's output
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(proj / "build"), "--vectors", str(vec), "--force"),
                   "contains the input", "m.pt")  # fmt: skip
    assert ckpt.is_file()
    work = tmp_path / "work"
    (work / "deep").mkdir(parents=True)
    monkeypatch.chdir(work / "deep")
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(work), "--force", "--vectors", str(vec)),
                   "is the current directory or above it")  # fmt: skip
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", ".", "--force", "--vectors", str(vec)),
                   "is the current directory or above it")  # fmt: skip
    (tmp_path / "afile").write_text("x")
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "afile"), "--force", "--vectors", str(vec)),
                   "exists and is not a directory")  # fmt: skip
    assert sorted(p.name for p in (proj / "build").iterdir()) == ["kpgen.json", "m.pt"]


@pytest.mark.parametrize("arrays,needle", [
    ({"y": np.zeros(3)}, "no array named 'x'"),
    ({"x": np.zeros((3, 5, 7))}, "x has shape (3, 5, 7), expected [samples, steps, 6]"),
    ({"x": np.zeros((3, 0, 6))}, "no samples or no time steps"),
    ({"x": np.zeros((0, 4, 6))}, "no samples or no time steps"),
    ({"x": np.full((2, 3, 6), np.nan)}, "NaN or infinite"),
    ({"x": np.array([["a"] * 6] * 3).reshape(1, 3, 6)}, "not real numbers"),
    ({"x": np.zeros((3, 4, 6)), "y": np.zeros(2, np.int64)}, "expected 3 integer labels"),
    ({"x": np.zeros((3, 4, 6)), "y": np.array([0.5, 1, 2])}, "expected 3 integer labels"),
], ids=["no-x", "wrong-features", "no-steps", "no-samples", "nan", "strings", "short-y", "fractional-y"])  # fmt: skip
def test_emit_refuses_bad_vectors(tmp_path: Path, arrays: dict, needle: str) -> None:
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    np.savez(tmp_path / "v.npz", **arrays)
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(tmp_path / "v.npz")),
                   "v.npz", needle)  # fmt: skip
    nothing_written(tmp_path)


def test_emit_refuses_unreadable_vectors(tmp_path: Path) -> None:
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    (tmp_path / "v.npz").write_bytes(b"PK\x03\x04 not really")
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(tmp_path / "v.npz")),
                   "not a readable .npz file")  # fmt: skip
    nothing_written(tmp_path)


def test_emit_without_vectors_needs_a_known_dataset(tmp_path: Path) -> None:
    ck = tiny_checkpoint()
    ckpt = save(ck, tmp_path / "m.pt")
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out")), "unknown dataset 'none-shipped'")
    del ck["meta"]["dataset"]
    save(ck, tmp_path / "m.pt")
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out")), "names no dataset", "--vectors")
    ck["meta"]["dataset"] = ["mnist"]  # not a name at all
    save(ck, tmp_path / "m.pt")
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out")), "names no dataset")
    nothing_written(tmp_path)


def test_emit_refuses_bad_name(tmp_path: Path, vec: Path) -> None:
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(vec),
                        "--name", "my-model"), "not a C identifier")  # fmt: skip
    nothing_written(tmp_path)


@pytest.mark.parametrize("args,needle", [
    (["emit", "m.pt"], "Missing option '--board'; see `kpgen emit --help`"),
    (["emit", "m.pt", "--board", "m4", "--samples", "0"], "Invalid value for '--samples'"),
    (["emmit"], "No such command 'emmit'"),
    (["run", "--bogus"], "No such option"),
], ids=["missing-option", "bad-value", "no-such-command", "no-such-option"])  # fmt: skip
def test_usage_errors_are_one_line(args: list[str], needle: str) -> None:
    one_line_error(CliRunner().invoke(main, args, prog_name="kpgen"), needle)


def test_interrupt_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kpgen.pipeline

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(kpgen.pipeline, "emit_project", interrupted)
    one_line_error(emit("m.pt", "--board", "m4", "-o", str(tmp_path / "out")), "interrupted")


def test_train_refuses_existing_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"keep")
    one_line_error(CliRunner().invoke(main, ["train", "-o", str(tmp_path / "model.pt")]), "exists", "--force")
    assert (tmp_path / "model.pt").read_bytes() == b"keep"


_TINY = ["--dataset", "digits", "--hidden", "8", "--epochs", "1"]


@pytest.mark.parametrize("args,needles", [
    (["--method", "hkp"],
     ["--method hkp needs --dense-rows R", "32 rows", "an LSTM with --hidden 8", "e.g. --dense-rows"]),
    (["--dense-rows", "4"], ["--dense-rows applies to --method hkp only"]),
    (["--method", "dense", "--wh-factors", "4x2,8x4"], ["--wh-factors do not apply to --method dense"]),
    (["--method", "hkp", "--dense-rows", "32"], ["--dense-rows 32 leaves no rows", "use fewer than 32"]),
    (["--cell", "gru", "--wx-factors", "16x2,32x14"],
     ["--wx-factors 16x2,32x14 make a 512x28 matrix", "Wx of a GRU with --hidden 8 over the 8 inputs of digits",
      "3H x inputs = 24x8", "rows multiply to 24 and columns to 8", "kpgen plan --rows 24 --cols 8"]),
    (["--method", "hkp", "--dense-rows", "8", "--wh-factors", "4x2,8x4"],
     ["make a 32x8 matrix", "its Kronecker part is 24x8", "rows multiply to 24"]),
    (["--cell", "fastrnn", "--hidden", "1"], ["no 2-factor Kronecker product makes a 1x1 matrix", "--method dense"]),
], ids=["hkp-needs-dense-rows", "dense-rows-without-hkp", "factors-with-dense", "dense-rows-too-many",
        "factor-product", "hkp-factor-product", "no-factorization"])  # fmt: skip
def test_train_refuses_bad_model_options(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    """Bad combinations of cell, method and factor shapes: one line naming the matrix and the fix, before any
    training, and no checkpoint."""
    res = CliRunner().invoke(main, ["train", "-o", str(tmp_path / "m.pt"), *_TINY, *args], prog_name="kpgen")
    one_line_error(res, *needles)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,needle", [
    (["examples/mnist-kplstm.pt", "--rows", "512"], "give a CHECKPOINT or --rows and --cols, not both"),
    (["--rows", "512"], "give --rows M and --cols N for one matrix, or a CHECKPOINT"),
    (["nope.pt"], "nope.pt: no such file"),
], ids=["both", "neither", "missing-checkpoint"])  # fmt: skip
def test_plan_refuses_bad_arguments(args: list[str], needle: str) -> None:
    one_line_error(CliRunner().invoke(main, ["plan", *args], prog_name="kpgen"), needle)


# ---------------------------------------------------------------------------- disk full while writing


def _failing_copy(after: int, err: int = errno.ENOSPC):
    """shutil.copyfile that works `after` times, then fails as a full disk does."""
    real = shutil.copyfile
    calls = {"n": 0}

    def copy(src, dst, *a, **k):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(err, os.strerror(err), str(dst))
        return real(src, dst, *a, **k)

    return copy


def test_disk_full_while_writing_leaves_nothing(tmp_path: Path, vec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC in the middle of write_tree (simulated: the 3rd runtime file copy fails)."""
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    monkeypatch.setattr(kpgen.codegen.emit.shutil, "copyfile", _failing_copy(2))
    res = emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(vec))
    one_line_error(res, "cannot write", "No space left on device", "check the disk")
    nothing_written(tmp_path)


def test_disk_full_with_force_keeps_the_old_tree(tmp_path: Path, vec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    assert emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(vec)).exit_code == 0
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    monkeypatch.setattr(kpgen.codegen.emit.shutil, "copyfile", _failing_copy(5))
    res = emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(vec), "--force")
    one_line_error(res, "No space left on device")
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "out"]


def test_failed_swap_restores_the_old_tree(tmp_path: Path, vec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last step (renaming the new tree into place) fails: the previous tree is put back."""
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    assert emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(vec)).exit_code == 0
    manifest = (tmp_path / "out" / "kpgen.json").read_bytes()
    real_rename = Path.rename

    def rename(self: Path, target):
        if Path(target).name == "out" and self.name.startswith(".out.") and not self.name.endswith(".old"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(target))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(kpgen.codegen.emit, "_exchange", lambda a, b: False)  # rename aside (no renameat2)
    one_line_error(emit(str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", str(vec), "--force"),
                   "cannot write", "Input/output error")  # fmt: skip
    assert (tmp_path / "out" / "kpgen.json").read_bytes() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "out"]


def test_file_size_limit_is_a_real_write_error(tmp_path: Path, vec: Path) -> None:
    """A real failing write() (RLIMIT_FSIZE, EFBIG) in a separate kpgen process: one line, nothing left."""
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # model.c and vectors.c are larger

    proc = subprocess.run([sys.executable, "-m", "kpgen", "emit", str(ckpt), "--board", "m4", "-o",
                           str(tmp_path / "out"), "--vectors", str(vec)],
                          capture_output=True, text=True, preexec_fn=limit)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "cannot write" in proc.stderr and "File too large" in proc.stderr
    nothing_written(tmp_path)


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 48 KiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_really_full_filesystem(tmp_path: Path, vec: Path, small_fs: Path) -> None:
    ck = tiny_checkpoint(arch={**ARCH, "hidden_size": 32, "wx_factors": [[[8, 2], [16, 3]], [[8, 4], [16, 8]]],
                                "wh_factors": [[[8, 4], [16, 8]], [[8, 4], [16, 8]]]})  # fmt: skip
    ckpt = save(ck, tmp_path / "m.pt")
    many = vectors(tmp_path / "many.npz", samples=200, steps=20)  # vectors.c alone is larger than the disk
    res = emit(str(ckpt), "--board", "m4", "-o", str(small_fs / "out"), "--vectors", str(many), "--samples", "200")
    one_line_error(res, "cannot write", "No space left on device")
    assert list(small_fs.iterdir()) == []


# ------------------------------------------------------------------------------------ kpgen run


@pytest.fixture(scope="module")
def project(tmp_path_factory, vec: Path) -> Path:
    """A small emitted (not yet built) m4 project; tests copy it before changing it."""
    base = tmp_path_factory.mktemp("proj")
    ckpt = save(tiny_checkpoint(), base / "m.pt")
    res = emit(str(ckpt), "--board", "m4", "-o", str(base / "m4"), "--vectors", str(vec), "--samples", "2")
    assert res.exit_code == 0, res.output
    return base / "m4"


def _copy(project: Path, dest: Path) -> Path:
    shutil.copytree(project, dest)
    return dest


def _tool_dir(tmp_path: Path, tools: tuple[str, ...]) -> Path:
    """A directory with symlinks to just these programs, to stand in for PATH."""
    d = tmp_path / "bin"
    d.mkdir()
    for t in tools:
        os.symlink(shutil.which(t), d / t)
    return d


def _run_cli(args: list[str], path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "kpgen", *args], capture_output=True, text=True, env=env)


def test_run_without_toolchain(tmp_path: Path, project: Path) -> None:
    """PATH without any of the tools: named, with the apt-get command, before anything is built."""
    proc = _run_cli(["run", str(project)], path=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "missing arm-none-eabi-gcc" in proc.stderr and "qemu-system-arm" in proc.stderr
    assert "sudo apt-get install -y gcc-arm-none-eabi" in proc.stderr
    assert not (project / "obj").exists()


@needs_tools
def test_run_without_qemu(tmp_path: Path, project: Path) -> None:
    tools = tuple(t for t in dict.fromkeys((*toolchain.BUILD_TOOLS, toolchain.OBJDUMP)) if t != toolchain.QEMU)
    proc = _run_cli(["run", str(project)], path=str(_tool_dir(tmp_path, tools)))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("kpgen: error: missing qemu-system-arm;") and "apt-get install" in proc.stderr


def test_run_without_newlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An arm-none-eabi-gcc that has no newlib (librdimon.a): the apt packages are named."""
    from kpgen import KpgenError

    d = tmp_path / "bin"
    d.mkdir()
    (d / toolchain.CC).write_text("#!/bin/sh\necho librdimon.a\n")  # what gcc -print-file-name says then
    (d / toolchain.CC).chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")
    with pytest.raises(KpgenError, match=r"newlib \(librdimon.a\) not found .*apt-get install"):
        toolchain.check_tools((toolchain.CC,))


def _patch_main(project: Path, code: str) -> None:
    """Insert code at the start of main() in the emitted main.c."""
    main_c = project / "main.c"
    text = main_c.read_text()
    m = re.search(r"int main\(void\)\s*\{[^\n]*\n", text)
    assert m, "main() not found in main.c"
    main_c.write_text(text[: m.end()] + code + text[m.end() :])


@needs_tools
def test_run_reports_a_hang(tmp_path: Path, project: Path) -> None:
    fw = _copy(project, tmp_path / "hang")
    # a volatile flag keeps the model reachable (and linked), as in a firmware that hangs for real
    _patch_main(fw, '    static volatile int hang = 1;\n    printf("about to hang\\n");\n    while (hang) {\n    }\n')
    res = CliRunner().invoke(main, ["run", str(fw), "--timeout", "2"])
    assert res.exit_code == 1, res.output
    assert "FAILED: the firmware did not finish within the timeout and was killed" in res.stdout
    assert res.stdout.rstrip().endswith("FAIL") and "Traceback" not in res.output


@needs_tools
def test_run_reports_a_hard_fault_with_its_pc(tmp_path: Path, project: Path) -> None:
    fw = _copy(project, tmp_path / "fault")
    _patch_main(fw, '    __asm__ volatile(".global kpgen_test_fault\\nkpgen_test_fault: udf #0");\n')
    res = CliRunner().invoke(main, ["run", str(fw), "--timeout", "30"])
    assert res.exit_code == 1, res.output
    m = re.search(r"FAILED: the firmware faulted \(HardFault\) at pc=0x([0-9a-f]{8})", res.stdout)
    assert m, res.stdout
    nm = subprocess.run([toolchain.NM, str(fw / "fw.elf")], capture_output=True, text=True, check=True).stdout
    addr = next(int(line.split()[0], 16) for line in nm.splitlines() if line.endswith(" kpgen_test_fault"))
    assert int(m.group(1), 16) == addr & ~1  # the udf instruction itself


@needs_tools
def test_run_reports_a_wrong_result(tmp_path: Path, project: Path) -> None:
    """The firmware computes something else than the golden model: exit 1, both checks say so."""
    fw = _copy(project, tmp_path / "wrong")
    m = json.loads((fw / "kpgen.json").read_text())
    m["vectors"]["scores"][0][0] += 1  # the host's expectation differs from what the firmware will print
    (fw / "kpgen.json").write_text(json.dumps(m))
    res = CliRunner().invoke(main, ["run", str(fw), "--no-profile"])
    assert res.exit_code == 1, res.output
    assert "mismatch: sample 0" in res.stdout and res.stdout.rstrip().endswith("FAIL")


@needs_tools
def test_run_reports_a_nonzero_exit(tmp_path: Path, project: Path) -> None:
    fw = _copy(project, tmp_path / "exit7")
    _patch_main(fw, '    if (KPGEN_SAMPLES > 0) {\n        return 7;\n    }\n')
    res = CliRunner().invoke(main, ["run", str(fw), "--no-profile"])
    assert res.exit_code == 1, res.output
    assert "FAILED: the firmware exited with status 7" in res.stdout
    assert "mismatch: the firmware did not print its summary line" in res.stdout


def _small_stack_board(tmp_path: Path, stack: int) -> Path:
    """A copy of boards/ with an extra board 'tinystack': the m4 with `stack` bytes of stack."""
    boards = tmp_path / "boards"
    shutil.copytree(kpgen.target.boards.BOARDS_DIR, boards)
    toml = (boards / "m4" / "board.toml").read_text()
    toml = re.sub(r'(?m)^name = "m4"', 'name = "tinystack"', toml)
    toml = re.sub(r"(?m)^stack_size = \S+", f"stack_size = {stack}", toml)
    (boards / "tinystack").mkdir()
    (boards / "tinystack" / "board.toml").write_text(toml)
    return boards


@needs_tools
def test_run_refuses_a_model_whose_stack_does_not_fit(tmp_path: Path, vec: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kpgen.target.boards, "BOARDS_DIR", _small_stack_board(tmp_path, 64))
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    fw = tmp_path / "fw"
    assert emit(str(ckpt), "--board", "tinystack", "-o", str(fw), "--vectors", str(vec)).exit_code == 0
    line = one_line_error(CliRunner().invoke(main, ["run", str(fw)]), "bytes of stack", "model_run -> ",
                          "has stack_size 64", "raise stack_size")  # fmt: skip
    need = int(re.search(r"needs ([\d,]+) bytes", line).group(1).replace(",", ""))
    assert need > 64


@needs_tools
def test_run_reports_the_stack_chain(project: Path, tmp_path: Path) -> None:
    fw = _copy(project, tmp_path / "ok")
    res = CliRunner().invoke(main, ["run", str(fw), "--no-profile"])
    assert res.exit_code == 0, res.output
    m = re.search(r"stack \(deepest model call\)\s+([\d,]+) of 16,384 bytes: model_\w+ -> kp_", res.stdout)
    assert m, res.stdout


def test_run_on_broken_manifests(tmp_path: Path) -> None:
    one_line_error(CliRunner().invoke(main, ["run", str(tmp_path / "nope")]), "is not a directory")
    one_line_error(CliRunner().invoke(main, ["run", str(tmp_path)]), "has no kpgen.json", "kpgen emit")
    (tmp_path / "kpgen.json").write_text("{ not json")
    one_line_error(CliRunner().invoke(main, ["run", str(tmp_path)]), "kpgen.json is unreadable")
    (tmp_path / "kpgen.json").write_text('{"board": "m4"}')
    one_line_error(CliRunner().invoke(main, ["run", str(tmp_path)]), "lacks the board, name or vectors")


@needs_tools
def test_run_build_error_is_one_line(tmp_path: Path, project: Path) -> None:
    fw = _copy(project, tmp_path / "broken")
    _patch_main(fw, "    int unused_variable;\n")
    one_line_error(CliRunner().invoke(main, ["run", str(fw)]), "firmware build failed", "unused_variable")
