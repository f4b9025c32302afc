"""Build a one-file test firmware (a fixture main.c) for a board with kpgen's own templates and start-up code."""

from __future__ import annotations

import shutil
from pathlib import Path

from kpgen.target import toolchain
from kpgen.target.boards import Board, prepare_firmware_dir


def build_fixture(board: Board, main_c: Path, fw_dir: Path, console: str = "semihosting") -> toolchain.BuildResult:
    shutil.copyfile(main_c, fw_dir / "main.c")
    prepare_firmware_dir(board, fw_dir, ["main.c"], console=console)
    return toolchain.build(fw_dir, jobs=2)
