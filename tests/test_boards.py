"""Board definitions: boards/<name>/board.toml read into kpgen.boards.Board."""

from __future__ import annotations

import pytest

from kpgen import KpgenError
from kpgen.boards import BOARDS_DIR, REPO_ROOT, list_boards, load_board, render_linker_script, render_makefile


def test_paths():
    assert (REPO_ROOT / "kpgen" / "boards.py").is_file()
    assert BOARDS_DIR == REPO_ROOT / "boards"
    assert (REPO_ROOT / "templates" / "link.ld.j2").is_file()


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

    from kpgen.boards import TEMPLATES_DIR

    b = load_board("m4")
    sources = ["main.c", "runtime/k.c", "board/startup.c"]
    plain = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), keep_trailing_newline=True)
    mk = plain.get_template("Makefile.j2").render(board=b, sources=sources, include_dirs=[".", "runtime"])
    assert mk == render_makefile(b, sources, [".", "runtime"])
    assert "OBJS = \\\n\tobj/main.o \\\n\tobj/runtime__k.o \\\n\tobj/board__startup.o\n" in mk
