"""Board definitions: boards/<name>/board.toml read into kpgen.target.boards.Board."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpgen import KpgenError
from kpgen.codegen.emit import BOARD_COMMON, RUNTIME
from kpgen.target.boards import (
    BOARDS_DIR,
    TEMPLATES_DIR,
    list_boards,
    load_board,
    render_linker_script,
    render_makefile,
)

REPO = Path(__file__).resolve().parents[1]


def test_paths():
    """From a checkout (editable install), the shipped folders are the repository's own top-level folders."""
    assert BOARDS_DIR.resolve() == REPO / "boards"
    assert TEMPLATES_DIR.resolve() == REPO / "templates"
    assert RUNTIME.resolve() == REPO / "runtime_c"
    assert BOARD_COMMON.resolve() == REPO / "boards" / "common"
    assert (TEMPLATES_DIR / "link.ld.j2").is_file()


def test_m4_fields():
    b = load_board("m4")
    assert b.name == "m4"
    assert b.core == "cortex-m4"
    assert "-mcpu=cortex-m4" in b.arch_flags and "-mthumb" in b.arch_flags
    assert b.has_dsp and not b.has_mve
    assert (b.flash_origin, b.flash_size) == (0x00000000, 4 * 1024 * 1024)
    assert (b.ram_origin, b.ram_size) == (0x20000000, 4 * 1024 * 1024)
    assert b.qemu_machine == "mps2-an386"
    assert 0 < b.stack_size + b.heap_size < b.ram_size
    assert isinstance(b.qemu_extra_args, tuple)
    with pytest.raises(AttributeError):
        b.name = "x"  # frozen


def test_unknown_board_names_known_ones():
    with pytest.raises(KpgenError) as exc:
        load_board("pdp11")
    msg = str(exc.value)
    assert "pdp11" in msg and "m4" in msg and "\n" not in msg


def test_path_like_name_is_unknown():
    with pytest.raises(KpgenError, match="unknown board"):
        load_board("../boards/m4")


def test_list_boards_contains_m4():
    assert "m4" in [b.name for b in list_boards()]


def test_rendered_files_follow_the_board():
    b = load_board("m4")
    ld = render_linker_script(b)
    assert "ORIGIN = 0x00000000, LENGTH = 0x00400000" in ld
    assert "ORIGIN = 0x20000000, LENGTH = 0x00400000" in ld
    for sym in ("__StackTop", "__data_load__", "__data_start__", "__bss_start__", "__bss_end__", "end ="):
        assert sym in ld
    mk = render_makefile(b, ["main.c", "sub/k.c", "../x/y.c"])
    assert "-mcpu=cortex-m4 -mthumb -mfloat-abi=soft" in mk
    assert "obj/sub__k.o: sub/k.c" in mk and "obj/up_x__y.o: ../x/y.c" in mk
    with pytest.raises(KpgenError):
        render_makefile(b, ["main.cpp"])


def test_makefile_renders_the_same_without_trim_blocks():
    """emit.py may use a plain jinja2 Environment: the Makefile must come out identical and valid."""
    import jinja2

    from kpgen.target.boards import TEMPLATES_DIR

    b = load_board("m4")
    sources = ["main.c", "runtime/k.c", "board/startup.c"]
    plain = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), keep_trailing_newline=True)
    mk = plain.get_template("Makefile.j2").render(board=b, sources=sources, include_dirs=[".", "runtime"])
    assert mk == render_makefile(b, sources, [".", "runtime"])
    assert "OBJS = \\\n\tobj/main.o \\\n\tobj/runtime__k.o \\\n\tobj/board__startup.o\n" in mk


# --------------------------------------------------------------------------------------------- every board

# The emulated boards and their facts (/work/shared/platform.md): core, QEMU machine, flash and RAM maps.
QEMU_BOARDS = {
    "m0": ("cortex-m0", "microbit", 0x00000000, 256 << 10, 0x20000000, 16 << 10, False, False),
    "m3": ("cortex-m3", "mps2-an385", 0x00000000, 4 << 20, 0x20000000, 4 << 20, False, False),
    "m4": ("cortex-m4", "mps2-an386", 0x00000000, 4 << 20, 0x20000000, 4 << 20, True, False),
    "m7": ("cortex-m7", "mps2-an500", 0x00000000, 4 << 20, 0x20000000, 4 << 20, True, False),
    "m33": ("cortex-m33", "mps2-an505", 0x10000000, 4 << 20, 0x38000000, 2 << 20, True, False),
    "m55": ("cortex-m55", "mps3-an547", 0x00000000, 512 << 10, 0x20000000, 512 << 10, True, True),
}


@pytest.mark.parametrize("name", sorted(QEMU_BOARDS))
def test_emulated_board_facts(name):
    core, machine, fo, fs, ro, rs, dsp, mve = QEMU_BOARDS[name]
    b = load_board(name)
    assert (b.core, b.qemu_machine, b.flash_origin, b.flash_size, b.ram_origin, b.ram_size) == (
        core, machine, fo, fs, ro, rs
    )
    assert (b.has_dsp, b.has_mve) == (dsp, mve)
    assert f"-mcpu={core}" in b.arch_flags and "-mthumb" in b.arch_flags
    if mve:  # Helium lives in the FP register file: hard-float ABI and CP10/CP11 enabled at reset
        assert "-mfloat-abi=hard" in b.arch_flags and b.enable_fpu
    mk = render_makefile(b, ["main.c"])
    assert " ".join(b.arch_flags) in mk and ("-DKPGEN_ENABLE_FPU" in mk) == b.enable_fpu


def test_every_board_loads_with_a_consistent_memory_map():
    boards = list_boards()
    assert set(QEMU_BOARDS) <= {b.name for b in boards}
    for b in boards:
        flash = range(b.flash_origin, b.flash_origin + b.flash_size)
        ram = range(b.ram_origin, b.ram_origin + b.ram_size)
        assert b.flash_size > 0 and b.ram_size > 0, b.name
        assert not (set((flash.start, flash.stop - 1)) & set(ram)
                    or set((ram.start, ram.stop - 1)) & set(flash)), b.name
        assert b.flash_origin % 4 == 0 and (b.ram_origin + b.ram_size) % 8 == 0, b.name
        assert b.stack_size > 0 and b.stack_size + b.heap_size < b.ram_size, b.name
        assert b.ram_origin + b.ram_size <= 1 << 32 and b.flash_origin + b.flash_size <= 1 << 32, b.name
        ld = render_linker_script(b)
        assert f"ORIGIN = 0x{b.flash_origin:08X}, LENGTH = 0x{b.flash_size:08X}" in ld, b.name
        assert f"ORIGIN = 0x{b.ram_origin:08X}, LENGTH = 0x{b.ram_size:08X}" in ld, b.name


def test_boards_sort_numerically():
    names = [b.name for b in list_boards()]
    emulated = [n for n in names if n in QEMU_BOARDS]
    assert emulated == ["m0", "m3", "m4", "m7", "m33", "m55"]


def test_kpgen_boards_output():
    from click.testing import CliRunner

    from kpgen.cli import main

    res = CliRunner().invoke(main, ["boards"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["board", "core", "extensions", "flash", "RAM", "QEMU", "machine"]
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert set(QEMU_BOARDS) <= set(rows)
    assert rows["m0"].split() == ["m0", "Cortex-M0", "-", "256", "KiB", "at", "0x00000000", "16", "KiB", "at",
                                  "0x20000000", "microbit"]  # fmt: skip
    assert "Cortex-M33" in rows["m33"] and "4 MiB at 0x10000000" in rows["m33"] and "2 MiB at 0x38000000" in rows["m33"]
    assert "DSP, Helium" in rows["m55"] and "512 KiB at 0x00000000" in rows["m55"] and "mps3-an547" in rows["m55"]
    # one column layout: every row's QEMU machine starts where the header's does
    col = lines[0].index("QEMU machine")
    for name in QEMU_BOARDS:
        assert rows[name][col:].split()[0] == QEMU_BOARDS[name][1]
