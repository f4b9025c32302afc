"""Board definitions: one `boards/<name>/board.toml` per target (core, flags, memory map, QEMU machine).

A new board is data only: a board.toml here, rendered through templates/link.ld.j2 and templates/Makefile.j2,
with the shared C start-up in boards/common/.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from kpgen import KpgenError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
BOARDS_DIR = REPO_ROOT / "boards"
COMMON_DIR = BOARDS_DIR / "common"
TEMPLATES_DIR = REPO_ROOT / "templates"

# Files every firmware directory gets from boards/common/ (sources first, then headers).
COMMON_SOURCES = ("startup.c", "kpgen_target.c")
COMMON_HEADERS = ("kpgen_target.h",)


@dataclass(frozen=True)
class Board:
    """One target: how to compile for it, where its memory is, and how QEMU runs it."""

    name: str
    description: str
    core: str  # -mcpu name, e.g. "cortex-m4"
    arch_flags: tuple[str, ...]  # compiler and linker flags selecting core, ISA and float ABI
    has_dsp: bool  # ARMv7E-M / ARMv8-M DSP extension (SMLAD, SXTB16, QADD ...)
    has_mve: bool  # Helium
    enable_fpu: bool  # start-up grants CP10/CP11 access (FPU / MVE code)
    defines: tuple[str, ...]  # extra preprocessor macros, "NAME" or "NAME=VALUE"
    flash_origin: int
    flash_size: int
    ram_origin: int
    ram_size: int
    stack_size: int  # bytes, at the top of RAM
    heap_size: int  # bytes reserved after .bss for newlib's malloc
    qemu_machine: str | None  # qemu-system-arm -M value; None for a real board QEMU does not emulate
    qemu_extra_args: tuple[str, ...]
    path: Path  # the board.toml this came from
    boot2_size: int = 0  # bytes at the start of flash kept for a second-stage boot loader (RP2040: 256)
    flash: FlashProfile = field(default_factory=lambda: FlashProfile())  # [flash]: probes, clock, console

    @property
    def emulated(self) -> bool:
        """True when QEMU runs this board (kpgen run, kpgen flash through QEMU's GDB server)."""
        return self.qemu_machine is not None


@dataclass(frozen=True)
class FlashProfile:
    """The [flash] table of a board.toml: how `kpgen flash` reaches a real chip, and what it runs at."""

    pyocd_target: str | None = None  # pyOCD target name (`pyocd list --targets`)
    pyocd_pack: str | None = None  # CMSIS pack part to install first (`pyocd pack install <part>`), if not built in
    openocd_args: tuple[str, ...] = ()  # openocd -f/-c arguments selecting probe and target
    clock_hz: int | None = None  # the chip's rated maximum core clock
    reset_clock_hz: int | None = None  # the clock kpgen's firmware runs at: it programs no PLL
    console: str = "semihosting"  # how the firmware's output reaches the host


def _natural_key(name: str) -> list:
    """Sort key that orders m0, m3, m4, m7, m33, m55 by their numbers, not as strings."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def _known_names() -> list[str]:
    if not BOARDS_DIR.is_dir():
        return []
    return sorted((p.parent.name for p in BOARDS_DIR.glob("*/board.toml")), key=_natural_key)


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if key not in table:
        raise KpgenError(f"{where}: missing key '{key}'; add it (see boards/m4/board.toml for the format)")
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise KpgenError(f"{where}: key '{key}' has the wrong type ({type(value).__name__}); fix the value")
    return value


def _str_tuple(table: dict[str, Any], key: str, where: Path) -> tuple[str, ...]:
    items = _get(table, key, list, where)
    if not all(isinstance(x, str) for x in items):
        raise KpgenError(f"{where}: '{key}' must be a list of strings")
    return tuple(items)


def _flash_profile(data: dict[str, Any], path: Path) -> FlashProfile:
    """The optional [flash] table (every key optional)."""
    if "flash" not in data:
        return FlashProfile()
    t = _get(data, "flash", dict, path)
    opt = lambda key, kind: _get(t, key, kind, path) if key in t else None  # noqa: E731
    return FlashProfile(
        pyocd_target=opt("pyocd_target", str),
        pyocd_pack=opt("pyocd_pack", str),
        openocd_args=_str_tuple(t, "openocd_args", path) if "openocd_args" in t else (),
        clock_hz=opt("clock_hz", int),
        reset_clock_hz=opt("reset_clock_hz", int),
        console=opt("console", str) or "semihosting",
    )


def load_board(name: str) -> Board:
    """Read boards/<name>/board.toml; an unknown name is a user error listing the known boards."""
    path = BOARDS_DIR / name / "board.toml"
    if "/" in name or "\\" in name or not path.is_file():
        known = ", ".join(_known_names()) or "none found in " + str(BOARDS_DIR)
        raise KpgenError(f"unknown board '{name}'; known boards: {known}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise KpgenError(f"{path}: invalid TOML ({exc}); fix the file") from None
    mem = _get(data, "memory", dict, path)
    qemu = _get(data, "qemu", dict, path) if "qemu" in data else None
    board = Board(
        name=_get(data, "name", str, path),
        description=_get(data, "description", str, path),
        core=_get(data, "core", str, path),
        arch_flags=_str_tuple(data, "arch_flags", path),
        has_dsp=_get(data, "has_dsp", bool, path),
        has_mve=bool(data.get("has_mve", False)),
        enable_fpu=bool(data.get("enable_fpu", False)),
        defines=_str_tuple(data, "defines", path) if "defines" in data else (),
        flash_origin=_get(mem, "flash_origin", int, path),
        flash_size=_get(mem, "flash_size", int, path),
        ram_origin=_get(mem, "ram_origin", int, path),
        ram_size=_get(mem, "ram_size", int, path),
        stack_size=_get(mem, "stack_size", int, path),
        heap_size=_get(mem, "heap_size", int, path) if "heap_size" in mem else 0,
        qemu_machine=_get(qemu, "machine", str, path) if qemu is not None else None,
        qemu_extra_args=_str_tuple(qemu, "extra_args", path) if qemu and "extra_args" in qemu else (),
        path=path,
        boot2_size=_get(mem, "boot2_size", int, path) if "boot2_size" in mem else 0,
        flash=_flash_profile(data, path),
    )
    if board.name != name:
        raise KpgenError(f"{path}: name = '{board.name}' but the directory is '{name}'; make them equal")
    if board.stack_size + board.heap_size > board.ram_size:
        raise KpgenError(f"{path}: stack_size + heap_size exceed ram_size; shrink them")
    return board


def list_boards() -> list[Board]:
    """All boards under boards/, sorted by name (numbers in names compare as numbers: m4 before m33)."""
    return [load_board(n) for n in _known_names()]


def _bytes(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    return f"{n / 1024:g} KiB"


def _core_label(core: str) -> str:
    """"cortex-m55" -> "Cortex-M55", "cortex-m0plus" -> "Cortex-M0+" (other -mcpu names unchanged)."""
    if not core.startswith("cortex-"):
        return core
    return "Cortex-" + core[len("cortex-") :].upper().replace("PLUS", "+")


def format_board_table(boards: Sequence[Board]) -> str:
    """The table `kpgen boards` prints: name, core, ISA extensions, flash and RAM (size at origin), QEMU machine."""
    header = ("board", "core", "extensions", "flash", "RAM", "QEMU machine")
    rows = [header]
    for b in boards:
        ext = ", ".join(e for e, on in (("DSP", b.has_dsp), ("Helium", b.has_mve)) if on) or "-"
        rows.append(
            (
                b.name,
                _core_label(b.core),
                ext,
                f"{_bytes(b.flash_size)} at 0x{b.flash_origin:08x}",
                f"{_bytes(b.ram_size)} at 0x{b.ram_origin:08x}",
                b.qemu_machine or "- (real board)",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    right = {3, 4}  # sizes line up on the right
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i in right and r is not header else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- rendering


def template_env():
    """The jinja2 environment every generated file is rendered with (templates/, strict, trimmed blocks)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_linker_script(board: Board) -> str:
    """templates/link.ld.j2 for this board's memory map."""
    return template_env().get_template("link.ld.j2").render(board=board)


def object_name(source: str) -> str:
    """obj/ file for a source path relative to the firmware directory (unique, never escapes obj/)."""
    stem = source[:-2] if source.endswith(".c") else source
    return "obj/" + stem.replace("../", "up_").replace("/", "__") + ".o"


def render_makefile(
    board: Board, sources: Sequence[str], include_dirs: Sequence[str] = (".",), defines: Sequence[str] | None = None
) -> str:
    """templates/Makefile.j2: builds `sources` (paths relative to the firmware directory) into fw.elf, with the
    board's preprocessor defines (or `defines`)."""
    for s in sources:
        if not s.endswith(".c") or " " in s:
            raise KpgenError(f"source '{s}' must be a .c path without spaces")
    objects = [object_name(s) for s in sources]
    if len(set(objects)) != len(objects):
        raise KpgenError("two sources map to the same object file; rename one of them")
    return (
        template_env()
        .get_template("Makefile.j2")
        .render(board=board, sources=list(sources), include_dirs=list(include_dirs),
                defines=list(board.defines if defines is None else defines))
    )


def prepare_firmware_dir(
    board: Board, fw_dir: Path, sources: Iterable[str], include_dirs: Sequence[str] = (".",)
) -> list[str]:
    """Copy boards/common/ into fw_dir and write link.ld and Makefile; returns the full source list.

    `sources` are the application's .c files (relative to fw_dir); start-up and target support are added.
    """
    fw_dir = Path(fw_dir)
    fw_dir.mkdir(parents=True, exist_ok=True)
    for f in COMMON_SOURCES + COMMON_HEADERS:
        shutil.copyfile(COMMON_DIR / f, fw_dir / f)
    app = list(sources)
    all_sources = app + [s for s in COMMON_SOURCES if s not in app]
    (fw_dir / "link.ld").write_text(render_linker_script(board), encoding="utf-8")
    (fw_dir / "Makefile").write_text(render_makefile(board, all_sources, include_dirs), encoding="utf-8")
    return all_sources
