"""Reproducibility: the same checkpoint and options give byte-identical emitted files wherever they are written,
and, with the same toolchain, byte-identical firmware (fw.bin, fw.hex, and fw.elf too: the Makefile maps the
build directory to "." in the debug information with -ffile-prefix-map).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from checkpoints import save, tiny_checkpoint, vectors
from click.testing import CliRunner

from kpgen.cli import main
from kpgen.target import toolchain

needs_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in toolchain.BUILD_TOOLS),
                                 reason="needs arm-none-eabi-gcc and make")  # fmt: skip


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_emits(tmp_path_factory) -> tuple[Path, Path]:
    """The same checkpoint (copied to two places under the same name) emitted into two unrelated directories."""
    base = tmp_path_factory.mktemp("repro")
    ckpt = save(tiny_checkpoint(seed=11), base / "one" / "model.pt")
    other = base / "elsewhere" / "deeper" / "model.pt"
    other.parent.mkdir(parents=True)
    shutil.copyfile(ckpt, other)
    vec = vectors(base / "v.npz", samples=3, steps=4)
    outs = (base / "a" / "fw", base / "elsewhere" / "deeper" / "b" / "fw")
    for c, out in zip((ckpt, other), outs, strict=True):
        res = CliRunner().invoke(main, ["emit", str(c), "--board", "m4", "-o", str(out), "--vectors", str(vec)])
        assert res.exit_code == 0, res.output
    return outs


def test_emitted_files_are_identical(two_emits) -> None:
    a, b = (_tree(d) for d in two_emits)
    assert sorted(a) == sorted(b)
    assert [n for n in a if a[n] != b[n]] == []
    assert str(two_emits[0]).encode() not in b"".join(a.values())  # no absolute paths in what is emitted


@needs_tools
def test_firmware_images_are_identical(two_emits) -> None:
    for d in two_emits:
        toolchain.build(d)
    a, b = two_emits
    for name in ("fw.bin", "fw.hex", "fw.elf", "fw.map"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert str(a).encode() not in (a / "fw.elf").read_bytes()  # the build directory is not recorded
    objs = sorted(p.name for p in (a / "obj").iterdir())
    assert [n for n in objs if (a / "obj" / n).read_bytes() != (b / "obj" / n).read_bytes()] == []


@needs_tools
def test_rebuild_is_identical(two_emits) -> None:
    """make clean && make in the same place gives the same image again (no timestamps)."""
    a = two_emits[0]
    toolchain.build(a)
    first = {n: (a / n).read_bytes() for n in ("fw.bin", "fw.hex", "fw.elf")}
    subprocess.run(["make", "-C", str(a), "clean"], check=True, capture_output=True)
    toolchain.build(a)
    assert {n: (a / n).read_bytes() for n in first} == first
