"""`kpgen flash`: load a built test firmware into its board and read what it prints.

Three ways in, one per kind of board:
- openocd: a real board through its debug probe, with the Debian `openocd` package: `program` writes and
  verifies the ELF, `arm semihosting enable` serves the firmware's console, `reset run` starts it.
- pyocd: the same through pyOCD's Python API (`pip install 'kpgen[flash]'`), imported only when used.
- qemu: an emulated board (m4, netduinoplus2, ...). QEMU starts halted with its GDB server and no image, so
  its flash is empty; gdb-multiarch connects, `load`s the ELF over the GDB remote protocol, resets the core
  (which fetches SP and PC from the vector table just written) and continues. The firmware's semihosting
  output and exit status come back from QEMU, as in `kpgen run`, so this load path is tested for real.

With --port (a UART-console image on a real board), the probe only writes the image and starts it; the
firmware's report is then read from the board's serial line through pyserial (kpgen.target.serial), opened before
the image starts so nothing is lost, until its "KPGEN-EXIT status=N" line, which gives the exit status.

Real boards are not tested on hardware by kpgen's tests: only their builds, the dry-run command lines, and the
serial reading (against a pseudo-terminal fed with a QEMU run's output) are.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kpgen import KpgenError
from kpgen.target import proc, qemu, toolchain
from kpgen.target.boards import Board, load_board

PROBES = ("openocd", "pyocd", "qemu")
GDB = "gdb-multiarch"
OPENOCD = "openocd"
PYOCD_HINT = "pyOCD is not installed; install it with: pip install 'kpgen[flash]'"

# Semihosting operations the pyOCD console loop handles itself (pyOCD's agent leaves them unimplemented).
SYS_EXIT = 0x18
SYS_EXIT_EXTENDED = 0x20
ADP_STOPPED_APPLICATION_EXIT = 0x20026
BKPT_SEMIHOSTING = 0xBEAB  # Thumb encoding of BKPT 0xAB


@dataclass(frozen=True)
class FlashPlan:
    """What `kpgen flash` will do: the board, the probe, the image, and the commands (or API calls)."""

    project: Path
    board: Board
    probe: str
    image: Path  # the file written to the target: fw.elf (openocd, qemu) or fw.hex (pyocd)
    commands: list[list[str]]  # shell commands, in order (the equivalent commands for pyocd)
    api_calls: list[str] = field(default_factory=list)  # pyOCD Python API calls kpgen makes
    console: str = "semihosting"  # the image's console (kpgen.json): "uart" images need no debugger to run

    def describe(self) -> str:
        """The dry run's text: every command exactly as it would run."""
        b = self.board
        lines = [f"kpgen flash: dry run, nothing is executed. Board {b.name} ({b.description}), probe {self.probe}."]
        lines.append(f"  make -C {shlex.quote(str(self.project))}")
        for cmd in self.commands:
            lines.append("  " + shlex.join(cmd))
        if self.api_calls:
            lines.append("pyOCD Python API calls kpgen makes (the commands above are their command-line equivalent):")
            lines += ["  " + c for c in self.api_calls]
        lines.append("console: " + _console_note(self))
        if b.boot2_size:
            lines.append(
                f"boot2: the first {b.boot2_size} bytes of flash are kpgen's own second-stage boot loader "
                f"(board/boot2_w25q.S, padded and checksummed by make); make BOOT2=<file.S> takes another one. "
                f"make also writes fw.uf2: hold BOOTSEL while plugging the board in and copy it to the USB drive."
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class FlashResult:
    plan: FlashPlan
    # The firmware's exit status (qemu, pyocd); openocd's own (OpenOCD exits with the status a semihosting exit
    # gives it when no GDB is attached: expected, not tried on hardware here); None: timed out.
    exit_code: int | None
    output: str  # what the firmware printed (qemu, pyocd), or openocd's whole output, which holds it
    timed_out: bool = False
    before_load: tuple[int, int] | None = None  # qemu: the first two flash words before `load` (empty flash: 0, 0)
    after_load: tuple[int, int] | None = None  # qemu: the same after `load`: initial SP and reset vector
    log: str = ""  # gdb's and QEMU's own messages
    overflowed: bool = False  # the output went past proc.OUTPUT_CAP bytes and the run was stopped


def _console_note(p: FlashPlan) -> str:
    uart = qemu.console_of(p.project / "fw.elf") == "uart"
    if p.probe == "qemu":
        return (("the UART, on QEMU's stdio" if uart else "semihosting, served by QEMU")
                + ": the firmware's output and exit status are read back and shown.")
    clock = p.board.flash.reset_clock_hz
    if uart and p.board.uart is not None:
        u = p.board.uart
        return (f"the board's UART at {u.baud} baud 8N1 ({u.pins or f'base 0x{u.base:08x}'}); no debugger needed once "
                f"loaded. With --port DEV kpgen flash reads and checks its report there (else use a terminal); "
                f"`kpgen validate --port` checks a --target validate image. Not tested on hardware by kpgen.")
    clk = p.board.clock
    at = (f" It runs at {clk.hz / 1e6:g} MHz (the start-up's [clock] set-up)." if clk is not None
          else f" It runs at the reset clock ({clock / 1e6:g} MHz): kpgen's start-up programs no PLL." if clock else "")
    return (
        f"{p.board.flash.console} through the debug probe: the firmware prints via the debugger, which must stay "
        f"attached (without one, the first BKPT 0xAB faults).{at} Not tested on hardware by kpgen."
    )


def _tcl_word(path: Path) -> str:
    s = str(path)
    return "{" + s + "}" if any(c in s for c in " \t;$[]\"{}\\") else s


def plan(project: Path | str, board_name: str | None = None, probe: str | None = None,
         port: str | None = None) -> FlashPlan:
    """Decide board, probe and commands for a project from `kpgen emit` (firmware target). With `port` (a
    UART-console image read over the serial line), the probe only writes and starts the image."""
    from kpgen.pipeline import read_manifest

    project = Path(project).resolve()
    manifest = read_manifest(project)
    if manifest.get("target", "firmware") != "firmware":
        raise KpgenError(
            f"{project} is a library (emitted with --target lib): there is no firmware to flash; "
            f"link it into yours, or emit with --target firmware"
        )
    built_for = manifest["board"]
    if board_name is not None and board_name != built_for:
        raise KpgenError(
            f"{project} was emitted for board {built_for}, not {board_name}; emit it again with --board {board_name}"
        )
    board = load_board(built_for)
    console = manifest.get("console", "semihosting")
    if probe is None:
        probe = "qemu" if board.emulated else "openocd"
    if probe not in PROBES:
        raise KpgenError(f"unknown probe '{probe}'; use one of: {', '.join(PROBES)}")
    elf, hexfile = project / "fw.elf", project / "fw.hex"
    fp = board.flash
    if probe == "qemu":
        if not board.emulated:
            raise KpgenError(f"board {board.name} is real hardware that QEMU does not emulate; "
                             "use --probe openocd or pyocd")
        port = "<free port>"
        return FlashPlan(project, board, probe, elf,
                         [qemu_gdb_command(elf, board, port), gdb_command(elf, board, port)], console=console)
    if probe == "openocd":
        if not fp.openocd_args:
            raise KpgenError(f"board {board.name} has no OpenOCD target (openocd_args in its board.toml [flash] table)"
                             + ("; it is emulated: use --probe qemu" if board.emulated else ""))
        if console == "uart" and port is not None:  # the report comes over the UART: write, verify, reset, let go
            cmd = [OPENOCD, *fp.openocd_args, "-c", f"program {_tcl_word(elf)} verify reset exit"]
        else:
            cmd = [OPENOCD, *fp.openocd_args, "-c", f"program {_tcl_word(elf)} verify", "-c",
                   "arm semihosting enable", "-c", "reset run"]
        return FlashPlan(project, board, probe, elf, [cmd], console=console)
    if not fp.pyocd_target:
        raise KpgenError(f"board {board.name} has no pyOCD target (pyocd_target in its board.toml [flash] table)"
                         + ("; it is emulated: use --probe qemu" if board.emulated else ""))
    cmds = [["pyocd", "pack", "install", fp.pyocd_pack]] if fp.pyocd_pack else []
    cmds.append(["pyocd", "flash", "-t", fp.pyocd_target, str(hexfile)])
    api = [
        "from pyocd.core.helpers import ConnectHelper",
        "from pyocd.flash.file_programmer import FileProgrammer",
        "from pyocd.debug.semihost import SemihostAgent, InternalSemihostIOHandler, ConsoleIOHandler",
        f"with ConnectHelper.session_with_chosen_probe(target_override={fp.pyocd_target!r}, "
        "blocking=False, return_first=True) as session:",
        f"    FileProgrammer(session).program({str(hexfile)!r})",
        "    target = session.board.target",
        "    target.reset_and_halt()",
        "    agent = SemihostAgent(target.get_target_context(), io_handler=InternalSemihostIOHandler(), "
        "console=ConsoleIOHandler(out, out))",
        "    target.resume()  # then at every halt on BKPT 0xAB: agent.check_and_handle_semihost_request() and "
        "target.resume(), until SYS_EXIT or SYS_EXIT_EXTENDED gives the exit status",
    ]
    if console == "uart" and port is not None:
        api[-4:] = ["    session.board.target.reset()  # a UART-console image runs on its own; its report: --port"]
    return FlashPlan(project, board, probe, hexfile, cmds, api, console=console)


# --------------------------------------------------------------------------------------------- QEMU + GDB


def qemu_gdb_command(elf: Path, board: Board, port: int | str) -> list[str]:
    """QEMU for `board`, halted (-S), GDB server on 127.0.0.1:port, and no image: flash starts empty."""
    cmd = qemu.qemu_command(elf, board)
    k = cmd.index("-kernel")
    del cmd[k : k + 2]
    return cmd + ["-S", "-gdb", f"tcp:127.0.0.1:{port}"]


def gdb_command(elf: Path, board: Board, port: int | str) -> list[str]:
    """gdb-multiarch in batch mode: connect, show the flash's first words, load, show them again, reset, run."""
    peek = f"x/2xw {board.flash_origin + board.boot2_size:#x}"
    script = [
        "set confirm off",
        "set pagination off",
        "set tcp connect-timeout 20",
        f"target remote 127.0.0.1:{port}",
        peek,
        "load",
        peek,
        *_reset_script(elf, board),
        "continue",
    ]
    cmd = [GDB, "-q", "-nx", "-batch"]
    for line in script:
        cmd += ["-ex", line]
    return cmd + [str(elf)]


def _reset_script(elf: Path, board: Board) -> list[str]:
    """gdb commands that start the loaded image as a reset would. A UART-console firmware runs under -no-reboot
    (its end-of-run reset request stops QEMU), where `monitor system_reset` would stop QEMU too: there the stack
    pointer and reset vector are read from the loaded vector table instead, in Thumb state."""
    if qemu.console_of(elf, manifest=False) != "uart":  # only an image that is a UART-console ELF
        return ["monitor system_reset"]
    vt = board.flash_origin + board.boot2_size
    return [f"set $sp = *(unsigned int *){vt:#x}", f"set $pc = *(unsigned int *){vt + 4:#x} & ~1",
            "set $xpsr = 0x01000000"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peeks(gdb_out: str, addr: int) -> list[tuple[int, int]]:
    """The (word, word) pairs gdb printed for `x/2xw addr`, in order."""
    found = []
    for line in gdb_out.splitlines():
        head, _, rest = line.partition(":")
        words = rest.split()
        if len(words) == 2 and head.split()[0].lower() == f"{addr:#x}":
            with contextlib.suppress(ValueError):
                found.append((int(words[0], 16), int(words[1], 16)))
    return found


def _flash_qemu(p: FlashPlan, timeout: float) -> FlashResult:
    port = _free_port()
    qcmd = qemu_gdb_command(p.image, p.board, port)
    gcmd = gdb_command(p.image, p.board, port)
    # Both children are bounded and killed on every way out of this block (timeout, error, signal).
    with proc.Child(qcmd, timeout=timeout) as q:
        with proc.Child(gcmd, timeout=timeout) as g:
            while g.poll(0.02):
                q.poll(0.0)  # keep QEMU's output flowing while gdb loads and runs the firmware
            g.proc.wait()
            gdone = g.result()
        gdb_log = gdone.out + gdone.err
        if "exited" not in gdone.out and not gdone.timed_out:  # gdb could not connect or load
            q.deadline = min(q.deadline, time.monotonic() + 2.0)
            qdone = q.finish()
            gdb_err = [ln.strip() for ln in gdone.err.splitlines() if ln.strip()]
            qemu_err = [ln.strip() for ln in qdone.err.splitlines() if ln.strip()]
            why = gdb_err[-1] if gdb_err else qemu_err[0] if qemu_err else f"exit status {gdone.returncode}"
            raise KpgenError(
                f"{GDB} could not load {p.image} into QEMU ({why})"
                f"; check that {GDB} and qemu-system-arm work (`kpgen flash --dry-run` prints both commands)"
            )
        if gdone.timed_out:
            q.stop("timeout")
            q.timed_out = True
        qdone = q.finish()
    peeks = _peeks(gdb_log, p.board.flash_origin + p.board.boot2_size)
    return FlashResult(
        plan=p,
        exit_code=qemu.firmware_status(qemu.console_of(p.image), qdone.returncode, qdone.out),
        output=qdone.out,
        timed_out=qdone.timed_out,
        before_load=peeks[0] if len(peeks) > 0 else None,
        after_load=peeks[1] if len(peeks) > 1 else None,
        log=gdb_log + qdone.err,
        overflowed=qdone.overflowed,
    )


# --------------------------------------------------------------------------------------------- real probes


def _flash_openocd(p: FlashPlan, timeout: float, echo: Callable[[str], None]) -> FlashResult:
    """Run openocd, echo and keep its output (the firmware's semihosting output is part of it)."""
    done = proc.run(p.commands[0], timeout=timeout, merge_stderr=True,
                    on_output=lambda data: echo(data.decode("utf-8", errors="replace")))
    return FlashResult(p, done.returncode, done.out, timed_out=done.timed_out, overflowed=done.overflowed)


class _Tee:
    """A binary file for pyOCD's console handler: echoes to our stdout and keeps a copy."""

    def __init__(self, echo: Callable[[str], None]):
        self.chunks: list[str] = []
        self.echo = echo

    def write(self, data: bytes) -> int:
        text = bytes(data).decode("utf-8", errors="replace")
        self.chunks.append(text)
        self.echo(text)
        return len(data)

    def read(self, n: int = -1) -> bytes:
        return b""

    def flush(self) -> None:
        pass


def _flash_pyocd(p: FlashPlan, timeout: float, echo: Callable[[str], None]) -> FlashResult:
    from pyocd.core.helpers import ConnectHelper
    from pyocd.core.target import Target
    from pyocd.debug.semihost import ConsoleIOHandler, InternalSemihostIOHandler, SemihostAgent
    from pyocd.flash.file_programmer import FileProgrammer

    target_name = p.board.flash.pyocd_target
    try:
        session = ConnectHelper.session_with_chosen_probe(
            target_override=target_name, blocking=False, return_first=True
        )
        if session is None:
            raise KpgenError("no debug probe found by pyOCD; connect the board's USB debug port (`pyocd list`)")
        tee = _Tee(echo)
        with session:
            FileProgrammer(session).program(str(p.image))
            target = session.board.target
            target.reset_and_halt()
            agent = SemihostAgent(target.get_target_context(), io_handler=InternalSemihostIOHandler(),
                                  console=ConsoleIOHandler(tee, tee))
            target.resume()
            code, deadline = None, time.monotonic() + timeout
            while time.monotonic() < deadline:
                if target.get_state() != Target.State.HALTED:
                    time.sleep(0.001)
                    continue
                pc = target.read_core_register("pc")
                op = target.read_core_register("r0")
                if target.read16(pc) == BKPT_SEMIHOSTING and op in (SYS_EXIT, SYS_EXIT_EXTENDED):
                    arg = target.read_core_register("r1")
                    reason, sub = (arg, 0) if op == SYS_EXIT else tuple(target.read_memory_block32(arg, 2))
                    code = (sub if op == SYS_EXIT_EXTENDED else 0) if reason == ADP_STOPPED_APPLICATION_EXIT else 1
                    break
                if not agent.check_and_handle_semihost_request():
                    raise KpgenError(f"the firmware stopped at pc=0x{pc:08x} without exiting (a fault?)")
                target.resume()
            return FlashResult(p, code, "".join(tee.chunks), timed_out=code is None)
    except KpgenError:
        raise
    except Exception as e:  # pyOCD's own errors: no probe, unknown target, transfer failures
        raise KpgenError(f"pyOCD failed on {target_name}: {e}; check the probe and `pyocd list --targets`") from None


def _require_boot2(p: FlashPlan) -> None:
    """Refuse an image whose boot2 area is still zeros: the boot ROM would never start it."""
    n = p.board.boot2_size
    if n and not any((p.project / "fw.bin").read_bytes()[:n]):
        raise KpgenError(
            f"{p.project}/fw.bin starts with {n} zero bytes where {p.board.name}'s boot ROM expects boot2, its "
            f"second-stage boot loader; rebuild with `make -C {p.project}` (it builds kpgen's boot2), or make "
            f"BOOT2=<a padded boot2 .S> (README, Deploying)"
        )


# --------------------------------------------------------------------------------------------- reading the UART

_EXIT = re.compile(r"KPGEN-EXIT status=(-?\d+)\r?\n")


def _load_only(p: FlashPlan, timeout: float, echo: Callable[[str], None]) -> None:
    """Write the image and start it, without serving a console (a UART-console image on a real board)."""
    if p.probe == "openocd":
        done = proc.run(p.commands[0], timeout=timeout, merge_stderr=True,
                        on_output=lambda data: echo(data.decode("utf-8", errors="replace")))
        if done.timed_out or done.returncode != 0:
            tail = [ln for ln in done.out.splitlines() if ln.strip()][-1:] or ["no output"]
            raise KpgenError(f"openocd could not load {p.image} ({tail[0][:200]}); check the probe connection "
                             "and `kpgen flash --dry-run`")
        return
    from pyocd.core.helpers import ConnectHelper
    from pyocd.flash.file_programmer import FileProgrammer

    try:
        session = ConnectHelper.session_with_chosen_probe(target_override=p.board.flash.pyocd_target,
                                                          blocking=False, return_first=True)
        if session is None:
            raise KpgenError("no debug probe found by pyOCD; connect the board's USB debug port (`pyocd list`)")
        with session:
            FileProgrammer(session).program(str(p.image))
            session.board.target.reset()
    except KpgenError:
        raise
    except Exception as e:  # pyOCD's own errors: no probe, unknown target, transfer failures
        raise KpgenError(f"pyOCD failed on {p.board.flash.pyocd_target}: {e}; check the probe and "
                         "`pyocd list --targets`") from None


def read_report(link, timeout: float, echo: Callable[[str], None] = lambda s: None) -> tuple[str, int | None, bool]:
    """Read a UART-console firmware's report from `link` (kpgen.target.serial) until its "KPGEN-EXIT status=N"
    line: (text, N or None, timed out). Bounded in time and in bytes (proc.OUTPUT_CAP); CR LF read as LF."""
    buf = bytearray()
    end = time.monotonic() + timeout
    while len(buf) <= proc.OUTPUT_CAP:
        left = end - time.monotonic()
        if left <= 0:
            break
        data = link.read(4096, min(0.1, left))
        if not data:
            continue
        buf += data
        echo(data.decode("utf-8", errors="replace"))
        m = _EXIT.search(buf.decode("utf-8", errors="replace"))
        if m:
            text = buf.decode("utf-8", errors="replace")[: m.end()].replace("\r\n", "\n")
            return text, int(m.group(1)), False
    return buf.decode("utf-8", errors="replace").replace("\r\n", "\n"), None, True


def _flash_and_read(p: FlashPlan, port: str, baud: int | None, timeout: float,
                    echo: Callable[[str], None]) -> FlashResult:
    """Open the serial port, load and start the image, then read its report from the port."""
    from kpgen.target.serial import LinkClosed, SerialLink

    rate = baud or (p.board.uart.baud if p.board.uart else 115200)
    link = SerialLink(port, rate)
    try:
        _load_only(p, timeout, echo)
        try:
            text, status, timed_out = read_report(link, timeout, echo)
        except LinkClosed as e:
            raise KpgenError(f"lost {port} while reading the firmware's report ({e}); check the cable") from None
    finally:
        link.close()
    return FlashResult(p, status, text, timed_out=timed_out, overflowed=len(text) > proc.OUTPUT_CAP,
                       log=f"read from {link.description}")


def check_probe_tools(probe: str) -> None:
    """One-line error naming what the probe needs and how to install it."""
    if probe == "qemu":
        toolchain.check_tools((toolchain.QEMU,))
        if shutil.which(GDB) is None:
            raise KpgenError(f"missing {GDB}; install it with: sudo apt-get install -y gdb-multiarch")
    elif probe == "openocd":
        if shutil.which(OPENOCD) is None:
            raise KpgenError("missing openocd; install it with: sudo apt-get install -y openocd")
    else:
        try:
            import pyocd  # noqa: F401
        except ImportError:
            raise KpgenError(PYOCD_HINT) from None


def check_port(p: FlashPlan, port: str | None) -> None:
    """--port reads a real board's UART: refuse it for QEMU and for an image without the UART console."""
    if port is None:
        return
    if p.probe == "qemu":
        raise KpgenError("--port reads a real board's serial line; under QEMU the UART is already read from QEMU's "
                         "stdio: leave --port out")
    if p.console != "uart":
        raise KpgenError(f"{p.project} was emitted with --console {p.console}: its report goes through the debugger, "
                         "not the serial port; emit it with --console uart to use --port, or leave --port out")


def flash(p: FlashPlan, timeout: float = 300.0, echo: Callable[[str], None] = lambda s: None,
          port: str | None = None, baud: int | None = None) -> FlashResult:
    """Build the project (make), then load and run it with the plan's probe; with `port`, read the firmware's
    report from that serial port (pyserial) instead of the probe."""
    check_port(p, port)
    check_probe_tools(p.probe)
    toolchain.check_tools(toolchain.BUILD_TOOLS)
    toolchain.build(p.project)
    _require_boot2(p)
    if port is not None:
        return _flash_and_read(p, port, baud, timeout, echo)
    if p.probe == "qemu":
        return _flash_qemu(p, timeout)
    if p.probe == "openocd":
        return _flash_openocd(p, timeout, echo)
    return _flash_pyocd(p, timeout, echo)

