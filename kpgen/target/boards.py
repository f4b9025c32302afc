"""Board definitions: one `boards/<name>/board.toml` per target (core, flags, memory map, QEMU machine).

A new board is data only: a board.toml here (and its chip's interrupt list in boards/chips/), rendered through
templates/link.ld.j2 and templates/Makefile.j2, with the shared C start-up in boards/common/.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport, a dependency there
    import tomli as tomllib

from kpgen import KpgenError
from kpgen._data import data_dir

BOARDS_DIR = data_dir("boards")
COMMON_DIR = BOARDS_DIR / "common"
CHIPS_DIR = BOARDS_DIR / "chips"  # one <chip>.toml per chip: its interrupt list (the vector table after the 16)
TEMPLATES_DIR = data_dir("templates")

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
    uart: UartProfile | None = None  # [uart]: the console UART; None when the board has none
    chip: str | None = None  # boards/chips/<chip>.toml: the interrupt list of the vector table
    irqs: tuple[str, ...] = ()  # IRQ 0, 1, ... names ("" = reserved position); handlers are <name>_IRQHandler
    clock: ClockProfile | None = None  # [clock]: the start-up's PLL set-up; None: the core stays on its reset clock
    act_table: str = "full"  # activation tables `kpgen emit` gives this board by default (golden.ACT_TABLES)

    @property
    def emulated(self) -> bool:
        """True when QEMU runs this board (kpgen run, kpgen flash through QEMU's GDB server)."""
        return self.qemu_machine is not None

    @property
    def clock_hz(self) -> int | None:
        """The core clock kpgen's firmware runs at: [clock]'s once the start-up programmed it, else the reset clock."""
        return self.clock.hz if self.clock is not None else self.flash.reset_clock_hz

    @property
    def default_console(self) -> str:
        """"uart" for every board with a UART (no debugger needed), else "semihosting"."""
        return "uart" if self.uart is not None else "semihosting"


CONSOLES = ("uart", "semihosting")
UART_FAMILIES = ("cmsdk", "stm32", "stm32v2", "nrf51", "nrf52", "pl011")  # boards/common/uart_<family>.c
# nRF BAUDRATE register values (product specifications): the legacy UART's, then the UARTE's where they differ.
_NRF_BAUD = {9600: 0x00275000, 14400: 0x003B0000, 19200: 0x004EA000, 28800: 0x0075F000, 38400: 0x009D5000,
             57600: 0x00EBF000, 76800: 0x013A9000, 115200: 0x01D7E000, 230400: 0x03AFB000, 250000: 0x04000000,
             460800: 0x075F7000, 921600: 0x0EBEDFA4, 1000000: 0x10000000}
_NRF52_UARTE_BAUD = {**_NRF_BAUD, 14400: 0x003AF000, 28800: 0x0075C000, 38400: 0x009D0000, 57600: 0x00EB0000,
                     76800: 0x013A9000, 115200: 0x01D60000, 230400: 0x03B00000, 460800: 0x07400000,
                     921600: 0x0F000000}


@dataclass(frozen=True)
class SetupStep:
    """One register step of the start-up (clock set-up, or before the UART is enabled): reg = (reg & ~clear) | set
    (skipped when both are 0), then wait until (reg & wait) == value (value defaults to wait), for a bounded
    number of reads. Programs PLLs and flash wait states, enables clocks, releases resets and routes pins."""

    addr: int
    clear: int = 0
    set: int = 0
    wait: int = 0
    value: int | None = None  # what the waited-for bits must read; None: all of them set

    @property
    def expect(self) -> int:
        return self.wait if self.value is None else self.value


def _c_steps(steps: Sequence[SetupStep]) -> str:
    """A C initialiser of {addr, clear, set, wait, value} rows (struct kpgen_setup_step, kpgen_target.c)."""
    return "{" + ", ".join("{" + ", ".join(f"0x{v:08X}u" for v in (st.addr, st.clear, st.set, st.wait, st.expect))
                           + "}" for st in steps) + "}"


@dataclass(frozen=True)
class ClockProfile:
    """The [clock] table of a board.toml: the core clock the start-up programs (PLL, flash wait states, bus
    prescalers), as register steps run before the console starts. Real boards only: QEMU models no PLL."""

    hz: int  # the core clock once every step has run
    steps: tuple[SetupStep, ...]


@dataclass(frozen=True)
class UartProfile:
    """The [uart] table of a board.toml: which UART carries the console, and how to start it."""

    family: str  # driver: boards/common/uart_<family>.c
    base: int  # register base address
    baud: int  # bits per second, 8N1
    clock_hz: int  # the UART's clock once the start-up ran ([clock], if any): sets the divisor; QEMU ignores it
    tx_pin: int | None = None  # pin numbers for UARTs that route their own pins (nRF PSEL)
    rx_pin: int | None = None
    pins: str = ""  # where the signals are on the real board, in words
    setup: tuple[SetupStep, ...] = ()
    qemu_serial: int | None = 0  # QEMU's -serial index of this UART; None when QEMU does not emulate it
    reset_clock_hz: int | None = None  # the UART's clock if the [clock] set-up fails (the reset clock); None: clock_hz

    @property
    def driver(self) -> str:
        return f"uart_{self.family}.c"

    def header(self, board_name: str) -> str:
        """kpgen_console.h: the UART's configuration as C macros (read by kpgen_target.c and the driver)."""
        def u32(v: int) -> str:
            return f"0x{v:08X}u"

        lines = [f"/* kpgen_console.h: the console UART of board '{board_name}' ([uart] in its board.toml). "
                 "Generated by kpgen; do not edit. */",
                 "#ifndef KPGEN_CONSOLE_H", "#define KPGEN_CONSOLE_H", "",
                 f"#define KPGEN_UART_FAMILY_{self.family.upper()} 1",
                 f"#define KPGEN_UART_BASE {u32(self.base)}",
                 f"#define KPGEN_UART_BAUD {self.baud}u"]
        if self.reset_clock_hz is not None and self.reset_clock_hz != self.clock_hz:
            # the clock set-up may fail (a poll timed out): the UART then runs from the reset clock (kpgen_target.c)
            lines += ["extern unsigned long kpgen_uart_clock_hz;",
                      f"#define KPGEN_UART_CLOCK_RUN_HZ {self.clock_hz}u",
                      f"#define KPGEN_UART_CLOCK_RESET_HZ {self.reset_clock_hz}u",
                      "#define KPGEN_UART_CLOCK_HZ kpgen_uart_clock_hz"]
        else:
            lines.append(f"#define KPGEN_UART_CLOCK_HZ {self.clock_hz}u")
        table = _NRF52_UARTE_BAUD if self.family == "nrf52" else _NRF_BAUD
        if self.family in ("nrf51", "nrf52"):
            lines.append(f"#define KPGEN_UART_BAUD_REG {u32(table[self.baud])}")
        for name, pin in (("TX", self.tx_pin), ("RX", self.rx_pin)):
            if pin is not None:
                lines.append(f"#define KPGEN_UART_{name}_PIN {pin}u")
        lines.append(f"#define KPGEN_UART_SETUP_COUNT {len(self.setup)}")
        if self.setup:
            lines.append(f"#define KPGEN_UART_SETUP_TABLE {_c_steps(self.setup)}")
        return "\n".join(lines + ["", "#endif /* KPGEN_CONSOLE_H */", ""])


@dataclass(frozen=True)
class FlashProfile:
    """The [flash] table of a board.toml: how `kpgen flash` reaches a real chip, and what it runs at."""

    pyocd_target: str | None = None  # pyOCD target name (`pyocd list --targets`)
    pyocd_pack: str | None = None  # CMSIS pack part to install first (`pyocd pack install <part>`), if not built in
    openocd_args: tuple[str, ...] = ()  # openocd -f/-c arguments selecting probe and target
    clock_hz: int | None = None  # the chip's rated maximum core clock
    reset_clock_hz: int | None = None  # the core clock at reset, before [clock] (Board.clock_hz: what it runs at)
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


def _uart_profile(data: dict[str, Any], path: Path) -> UartProfile | None:
    """The optional [uart] table; every value checked, so a typo is one line, not a C error."""
    if "uart" not in data:
        return None
    t = _get(data, "uart", dict, path)
    family = _get(t, "family", str, path)
    if family not in UART_FAMILIES:
        raise KpgenError(f"{path}: [uart] family '{family}' is unknown; use one of: {', '.join(UART_FAMILIES)}")
    baud = _get(t, "baud", int, path)
    if family in ("nrf51", "nrf52") and baud not in _NRF_BAUD:
        raise KpgenError(f"{path}: [uart] baud {baud} is not a rate the nRF UART has; use one of: "
                         f"{', '.join(str(b) for b in _NRF_BAUD)}")
    clock = _get(t, "clock_hz", int, path)
    if baud <= 0 or clock < baud:
        raise KpgenError(f"{path}: [uart] needs baud > 0 and clock_hz >= baud; fix the values")
    steps = _steps(t, "setup", "[uart] setup", path)
    opt = lambda key, kind: _get(t, key, kind, path) if key in t else None  # noqa: E731
    serial = _get(t, "qemu_serial", int, path) if "qemu_serial" in t else (0 if "qemu" in data else None)
    return UartProfile(family=family, base=_get(t, "base", int, path), baud=baud, clock_hz=clock,
                       tx_pin=opt("tx_pin", int), rx_pin=opt("rx_pin", int), pins=opt("pins", str) or "",
                       setup=steps, qemu_serial=serial, reset_clock_hz=opt("reset_clock_hz", int))


_STEP_KEYS = ("addr", "clear", "set", "wait", "value")


def _steps(t: dict[str, Any], key: str, what: str, path: Path) -> tuple[SetupStep, ...]:
    """A list of register steps ({ addr, clear, set, wait, value }), every value a 32-bit integer."""
    steps = []
    for st in _get(t, key, list, path) if key in t else []:
        if (not isinstance(st, dict) or "addr" not in st or set(st) - set(_STEP_KEYS)
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 32 for v in st.values())):
            raise KpgenError(f"{path}: {what} steps are {{ addr = ..., clear = ..., set = ..., wait = ... }} "
                             "with 32-bit values; fix the list (value = ... is optional)")
        steps.append(SetupStep(st["addr"], st.get("clear", 0), st.get("set", 0), st.get("wait", 0), st.get("value")))
    return tuple(steps)


def _clock_profile(data: dict[str, Any], path: Path) -> ClockProfile | None:
    """The optional [clock] table: the rated core clock and the register steps that reach it."""
    if "clock" not in data:
        return None
    t = _get(data, "clock", dict, path)
    if "qemu" in data:
        raise KpgenError(f"{path}: [clock] on an emulated board: QEMU models no PLL and a PLL-ready poll would "
                         "never end; remove [clock] or the [qemu] table")
    hz = _get(t, "hz", int, path)
    steps = _steps(t, "steps", "[clock]", path)
    if hz <= 0 or not steps:
        raise KpgenError(f"{path}: [clock] needs hz > 0 and at least one step; fix the table")
    return ClockProfile(hz=hz, steps=steps)


def load_chip(name: str, where: Path) -> tuple[str, ...]:
    """The interrupt list of boards/chips/<name>.toml: IRQ 0, 1, ... as C identifiers, "" for a reserved one."""
    path = CHIPS_DIR / f"{name}.toml"
    if "/" in name or "\\" in name or not path.is_file():
        known = ", ".join(sorted(p.stem for p in CHIPS_DIR.glob("*.toml"))) or "none"
        raise KpgenError(f"{where}: chip '{name}' has no file {name}.toml in {CHIPS_DIR}; use one of: {known}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise KpgenError(f"{path}: invalid TOML ({exc}); fix the file") from None
    irqs = _str_tuple(data, "irqs", path)
    bad = [x for x in irqs if x and not (x.isidentifier() and x.isascii())]
    if bad or not irqs or len(irqs) > 496:
        what = bad[0] if bad else "the list"
        raise KpgenError(f"{path}: 'irqs' must list 1 to 496 C identifiers (an empty string for a reserved position)"
                         f"; fix {what}")
    return irqs


def chip_header(board: Board) -> str:
    """kpgen_chip.h: the vector table's interrupt list and the clock set-up as C macros (startup.c,
    kpgen_target.c). X(handler) names one IRQ's handler, R a reserved position."""
    lines = [f"/* kpgen_chip.h: start-up data of board '{board.name}' (chip {board.chip or 'none'}: boards/chips/, and "
             "[clock] in its board.toml). Generated by kpgen; do not edit. */",
             "#ifndef KPGEN_CHIP_H", "#define KPGEN_CHIP_H", "",
             f"#define KPGEN_IRQ_COUNT {len(board.irqs)}"]
    items = [f"X({n}_IRQHandler)" if n else "R" for n in board.irqs]
    lines.append("#define KPGEN_IRQ_LIST(X, R)" + "".join(f" \\\n    {i}" for i in items))
    if board.clock is not None:
        lines += [f"#define KPGEN_CLOCK_HZ {board.clock.hz}u",
                  f"#define KPGEN_CLOCK_STEP_COUNT {len(board.clock.steps)}",
                  f"#define KPGEN_CLOCK_STEP_TABLE {_c_steps(board.clock.steps)}"]
    else:
        lines.append("#define KPGEN_CLOCK_STEP_COUNT 0")
    return "\n".join(lines + ["", "#endif /* KPGEN_CHIP_H */", ""])


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
    chip = _get(data, "chip", str, path) if "chip" in data else None
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
        uart=_uart_profile(data, path),
        chip=chip,
        irqs=load_chip(chip, path) if chip is not None else (),
        clock=_clock_profile(data, path),
        act_table=_get(data, "act_table", str, path) if "act_table" in data else "full",
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
    from kpgen.tables import text_table

    # sizes line up on the right, under left-aligned headings
    return "\n".join(text_table(rows[1:], header, align="lllrrl", header_align="llllll"))


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
    board: Board, sources: Sequence[str], include_dirs: Sequence[str] = (".",), defines: Sequence[str] | None = None,
    console: str = "semihosting", board_dir: str = "board",
) -> str:
    """templates/Makefile.j2: builds `sources` (paths relative to the firmware directory) into fw.elf, with the
    board's preprocessor defines (or `defines`), linked for the console (uart: no semihosting library);
    board_dir holds the generated board files the rules run (boot2 and kpgen_uf2.py on RP2040 boards)."""
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
                defines=list(board.defines if defines is None else defines), console=console, board_dir=board_dir)
    )


def check_console(board: Board, console: str | None) -> str:
    """The console a firmware for `board` uses: `console`, or the board's default when None."""
    if console is None:
        return board.default_console
    if console not in CONSOLES:
        raise KpgenError(f"unknown console '{console}'; use one of: {', '.join(CONSOLES)}")
    if console == "uart" and board.uart is None:
        raise KpgenError(f"board {board.name} has no [uart] in its board.toml; use --console semihosting or add one")
    return console


def console_sources(board: Board, console: str) -> tuple[list[str], list[str], dict[str, str]]:
    """What the board and its console add to a firmware: boards/common sources (start-up, target support, the UART
    driver), preprocessor defines, and generated files by name: kpgen_chip.h (vector table, clock set-up), and
    for the UART console kpgen_console.h; for a board with boot2 (RP2040), its source and the UF2/CRC tool."""
    generated = {"kpgen_chip.h": chip_header(board)}
    if board.boot2_size:
        generated.update(boot2_files())
    if console != "uart":
        return list(COMMON_SOURCES), [], generated
    assert board.uart is not None
    generated["kpgen_console.h"] = board.uart.header(board.name)
    return list(COMMON_SOURCES) + [board.uart.driver], ["KPGEN_CONSOLE_UART"], generated


BOOT2_SOURCE = "boot2_w25q.S"  # boards/common/: kpgen's own RP2040 boot2 for the Pico's W25Q16JV (03h reads)
UF2_TOOL = "kpgen_uf2.py"  # a copy of kpgen/target/uf2.py: pads boot2 with its CRC, writes fw.uf2 (stdlib only)


def boot2_files() -> dict[str, str]:
    """The boot2 source and the stand-alone UF2/CRC tool the emitted Makefile runs (boards with boot2_size)."""
    tool = Path(__file__).with_name("uf2.py").read_text(encoding="utf-8")
    return {BOOT2_SOURCE: (COMMON_DIR / BOOT2_SOURCE).read_text(encoding="utf-8"), UF2_TOOL: tool}


def prepare_firmware_dir(
    board: Board, fw_dir: Path, sources: Iterable[str], include_dirs: Sequence[str] = (".",),
    console: str = "semihosting",
) -> list[str]:
    """Copy boards/common/ into fw_dir and write link.ld and Makefile; returns the full source list.

    `sources` are the application's .c files (relative to fw_dir); start-up, target support and, for the
    UART console, the board's UART driver and kpgen_console.h are added.
    """
    fw_dir = Path(fw_dir)
    fw_dir.mkdir(parents=True, exist_ok=True)
    console = check_console(board, console)
    common, defines, generated = console_sources(board, console)
    for f in dict.fromkeys(common + list(COMMON_HEADERS) + ["kpgen_uart.h"]):
        shutil.copyfile(COMMON_DIR / f, fw_dir / f)
    for f, text in generated.items():
        (fw_dir / f).write_text(text, encoding="utf-8")
    app = list(sources)
    all_sources = app + [s for s in common if s not in app]
    (fw_dir / "link.ld").write_text(render_linker_script(board), encoding="utf-8")
    (fw_dir / "Makefile").write_text(
        render_makefile(board, all_sources, include_dirs, list(board.defines) + defines, console, board_dir="."),
        encoding="utf-8")
    return all_sources
