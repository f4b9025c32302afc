"""The run stage: firmware under qemu-system-arm, its console on semihosting or on a UART, and exact
instruction counts from QEMU's execution trace.

Run command (QEMU 7.2):
    qemu-system-arm -M <machine> <board extra args> -nographic -monitor none -serial null
        -semihosting-config enable=on,target=native[,arg=A,arg=B...] -kernel fw.elf
  -monitor none -serial null keep the monitor and the UARTs off stdio, so stdout carries only what the
  firmware writes through semihosting, and QEMU never reads stdin. The exit status is main()'s return
  value (newlib's exit() uses SYS_EXIT_EXTENDED); a fault prints "KPGEN-FAULT pc=0x..." and exits 3.

UART console (a firmware built with KPGEN_CONSOLE_UART: it has the symbol kpgen_host_args, and no BKPT 0xAB):
    qemu-system-arm -M <machine> <board extra args> -display none -monitor none -no-reboot
        [-serial null ...] -serial stdio -kernel fw.elf [-device loader,addr=A,data=W,data-len=4 ...]
  The board's UART (its [uart] qemu_serial index, after that many -serial null) is QEMU's stdio; stdin is
  /dev/null, so the firmware receives nothing. The firmware ends every run with "KPGEN-EXIT status=N" and a
  system reset request, which -no-reboot turns into QEMU exiting 0: the status is N from that line (a run
  that stops without it failed). The arguments that semihosting would pass (for instance "profile") are
  written by QEMU's generic loader device into the firmware's kpgen_host_args (a .noinit block: magic,
  length, text) before the core starts, 4 bytes per -device, so the firmware reads them with kpgen_cmdline
  exactly as under semihosting. The profiled window is the same code either way.

Count command: the same plus
        -singlestep -d nochain,exec -D <FIFO>
  In QEMU 7.2 `-singlestep` makes every translation block (TB) one guest instruction (the 8.1+ spelling
  `-accel tcg,one-insn-per-tb=on` is rejected by 7.2: "Property 'tcg-accel.one-insn-per-tb' not found"),
  and `-d exec` logs one line each time a TB starts executing, also for TBs reached through goto_ptr
  (indirect branches such as BX LR). So: one "Trace" line per executed instruction, e.g.
      Trace 0: 0x7fe368000100 [00800408/00000088/00000110/ff000201] Reset_Handler
  ([cs_base/pc/flags/cflags] symbol). Measured: without -singlestep, `-d nochain,exec` logs once per
  TB (a SUBS/BNE loop of 1000 iterations gave 1001 lines, not 2001); with -singlestep, `nochain` changes
  nothing in 7.2 (singlestep already disables direct chaining) and is kept as a guard.
  When QEMU abandons a TB before running it (an exit request from another thread) it logs
  "Stopped execution of TB chain before ... [pc]" right after that TB's line; such a line cancels the
  instruction just counted (never seen in our runs, handled anyway). Exactness is checked by
  tests/test_qemu.py with a loop of known length: count(N) == 2N + 5 for every N, identical across runs.

  The same pass records every (pc, next pc) transition: with the instruction sizes from
  the ELF's one disassembly (kpgen.target.elf, qemu.disassemble) that gives, per instruction, how often it
  transferred control (next pc != pc + size: a taken branch, call or return), the input of the cycle estimate
  (kpgen/target/cycles.py).

  Measured (QEMU 7.2.22, x86-64 host, 2-core VM): about 67 bytes per trace line (65 to 75 with the
  symbol name), about 0.8 million instructions traced per second (5,002,967 lines, 335 MB, 6.2 s; QEMU
  line-buffers the log, one write() per line, so a FIFO or tmpfs is no faster), plus about 0.9 us per
  line for the parse below (with the transitions; 7.1 M lines, 530 MB: 6 s). The trace goes through a FIFO
  and is counted while QEMU runs (TraceCounter), so nothing is stored: the MNIST KP-LSTM's inference
  (656,596 instructions, about 44 MB of trace) counts in 2.3-2.6 s against 2.8-4.1 s for writing the file
  and parsing it afterwards, with the same counts, edges and taken branches. A run stops at TRACE_CAP bytes
  of trace inside the window, at the timeout, or at OUTPUT_CAP bytes of firmware output: all failed runs
  (ProfileFailed). Keep profiled runs to a few million instructions.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kpgen import KpgenError
from kpgen.target import elf as elfread
from kpgen.target import proc
from kpgen.target.boards import Board, load_board
from kpgen.target.toolchain import QEMU, check_tools, symbols

OBJDUMP = elfread.OBJDUMP
OUTPUT_CAP = proc.OUTPUT_CAP  # bytes of firmware output kept; a firmware printing more is stopped and fails
TRACE_CAP = 2 << 30  # bytes of `-d exec` trace read (about 32 million instructions) before the run is stopped
LOCKUP_STATUSES = (134, -6)  # QEMU aborts (SIGABRT) when the emulated core locks up

HOST_ARGS = "kpgen_host_args"  # boards/common/kpgen_target.c: where the loader device puts the arguments
HOST_ARGS_MAGIC = 0x4B504741
HOST_ARGS_MAX = 120
_EXIT_LINE = re.compile(r"^KPGEN-EXIT status=(-?\d+)\r?$", re.M)

PROFILE_BEGIN = "kpgen_profile_begin"
PROFILE_END = "kpgen_profile_end"
FAULT_EXIT_STATUS = 3
_FAULT_LINE = re.compile(r"KPGEN-FAULT pc=0x([0-9a-fA-F]{8})")


@dataclass(frozen=True)
class RunResult:
    stdout: str  # everything the firmware printed through semihosting
    exit_code: int | None  # QEMU's exit status (main's return value); None if it timed out
    timed_out: bool
    fault_pc: int | None  # address of the faulting instruction, from a KPGEN-FAULT line
    seconds: float  # wall time of the QEMU process
    stderr: str = ""  # QEMU's own messages (and the semihosting debug console)
    overflowed: bool = False  # the firmware printed more than `cap` bytes and was stopped
    cap: int = OUTPUT_CAP
    timeout: float = 0.0
    console: str = "semihosting"
    no_end_line: bool = False  # UART console: QEMU exited but the firmware never printed "KPGEN-EXIT status=N"

    @property
    def lockup(self) -> bool:
        """The core locked up (a fault while handling a fault): QEMU aborts with SIGABRT."""
        return self.exit_code in LOCKUP_STATUSES

    @property
    def problem(self) -> str | None:
        """What went wrong with the run, in words (None when the firmware returned 0)."""
        if self.overflowed:
            return f"the firmware printed more than {self.cap:,} bytes and was stopped"
        if self.timed_out:
            return "the firmware did not finish within the timeout and was killed"
        if self.lockup:
            return "lockup: the core locked up (a fault inside the fault handler) and QEMU aborted"
        if self.fault_pc is not None:
            return f"the firmware faulted (HardFault) at pc=0x{self.fault_pc:08x}"
        if self.no_end_line:
            return "the firmware stopped without its end-of-run line (KPGEN-EXIT status=N) on the UART"
        if self.exit_code is None:
            return "the firmware was stopped"
        if self.exit_code != 0:
            return f"the firmware exited with status {self.exit_code}"
        return None


class ProfileFailed(Exception):
    """The profiled run failed as a firmware (hang, fault, lockup, runaway output or trace): a failed run,
    not a usage error."""

    def __init__(self, message: str, run: RunResult):
        super().__init__(message)
        self.run = run


@dataclass(frozen=True)
class Insn:
    """One instruction of the firmware as arm-none-eabi-objdump -d prints it."""

    size: int  # bytes: 2 or 4 (Thumb)
    mnemonic: str  # as printed, lower case, with condition and width suffixes ("bne.n", "ldr.w", "vldrb.s8")
    operands: str  # operand text without objdump's trailing comment ("r2, [r3, #4]")


@dataclass(frozen=True)
class Profile:
    total: int  # instructions executed from entering kpgen_profile_begin up to entering kpgen_profile_end
    per_function: dict[str, int]  # the same, attributed to the function symbol containing each PC
    run: RunResult | None = field(default=None, compare=False)  # the traced run (output, exit status)
    # Execution histogram: pc -> times executed inside the window (sums to total).
    per_pc: dict[int, int] = field(default_factory=dict, compare=False)
    # pc -> times the instruction transferred control: the next traced PC was not pc + its size. The last
    # instruction of the window (the BL to kpgen_profile_end) counts with kpgen_profile_end as its successor.
    taken: dict[int, int] = field(default_factory=dict, compare=False)
    # The executed instructions (pc -> size, mnemonic, operands), from the ELF's disassembly.
    insns: dict[int, Insn] = field(default_factory=dict, compare=False)
    # pc -> name of the function containing it, for every executed pc.
    functions: dict[int, str] = field(default_factory=dict, compare=False)
    # (pc, next pc) -> times: every transition the window executed (calls, returns, loops, fall-throughs).
    edges: dict[tuple[int, int], int] = field(default_factory=dict, compare=False)

    @property
    def taken_branches(self) -> int:
        """Total control transfers in the window."""
        return sum(self.taken.values())


def _board(board: Board | str) -> Board:
    return board if isinstance(board, Board) else load_board(board)


def _semihosting_config(args: Sequence[str]) -> str:
    # QEMU's option parser takes ",," for a literal comma inside a value.
    return "enable=on,target=native" + "".join(",arg=" + str(a).replace(",", ",,") for a in args)


def console_of(elf: Path | str, manifest: bool = True) -> str:
    """"uart" when the firmware was built for the UART console (it has kpgen_host_args), else "semihosting".
    Before the ELF is built (or if it is no ELF): the console kpgen.json next to it records, else semihosting
    (with manifest=False: semihosting)."""
    path = Path(elf)
    if path.is_file():
        try:
            return "uart" if any(s.name == HOST_ARGS for s in elfread.read(path).symbols) else "semihosting"
        except KpgenError:
            pass  # not an ELF: whatever runs it next reports that
    if not manifest:
        return "semihosting"
    try:
        recorded = json.loads((path.parent / "kpgen.json").read_text(encoding="utf-8")).get("console")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return "uart" if recorded == "uart" else "semihosting"


def host_args_devices(elf: Path | str, args: Sequence[str]) -> list[str]:
    """-device loader options that write `args` (joined by spaces, as semihosting does) into the firmware's
    kpgen_host_args before it starts: magic, length, then the text, one little-endian word per device."""
    if not args:
        return []  # nothing placed: kpgen_cmdline reports no arguments
    text = " ".join(str(a) for a in args).encode("utf-8")
    if len(text) > HOST_ARGS_MAX:
        raise KpgenError(f"firmware arguments of {len(text)} bytes do not fit the UART console's {HOST_ARGS_MAX}; "
                         "pass fewer")
    addr = next((s.address for s in elfread.read(elf).symbols if s.name == HOST_ARGS), None)
    if addr is None:
        raise KpgenError(f"{elf} has no {HOST_ARGS}; build it with the UART console (kpgen emit --console uart)")
    blob = HOST_ARGS_MAGIC.to_bytes(4, "little") + len(text).to_bytes(4, "little") + text
    blob += bytes(-len(blob) % 4)
    out: list[str] = []
    for i in range(0, len(blob), 4):
        word = int.from_bytes(blob[i : i + 4], "little")
        out += ["-device", f"loader,addr=0x{addr + i:08x},data=0x{word:08x},data-len=4"]
    return out


def serial_args(board: Board, serial: str = "stdio") -> list[str]:
    """-serial options that connect the board's console UART to `serial` (a QEMU chardev spec) and leave
    the UARTs before it unconnected."""
    index = board.uart.qemu_serial if board.uart is not None and board.uart.qemu_serial is not None else 0
    return ["-serial", "null"] * index + ["-serial", serial]


def qemu_command(
    elf: Path | str, board: Board | str, args: Sequence[str] = (), console: str | None = None, serial: str = "stdio"
) -> list[str]:
    """The qemu-system-arm argument list that runs `elf` on `board` with arguments `args` (semihosting
    arguments, or kpgen_host_args on the UART console). console None: read from the ELF (console_of). `serial`
    is where the UART goes (a QEMU chardev spec: "stdio", "chardev:s0" ...)."""
    b = _board(board)
    if b.qemu_machine is None:  # callers refuse real boards first, with the user's fix
        raise ValueError(f"board {b.name} is not emulated by QEMU")
    if (console or console_of(elf)) == "uart":
        return [QEMU, "-M", b.qemu_machine, *b.qemu_extra_args, "-display", "none", "-monitor", "none",
                "-no-reboot", *serial_args(b, serial), "-kernel", str(elf), *host_args_devices(elf, args)]
    return [
        QEMU,
        "-M",
        b.qemu_machine,
        *b.qemu_extra_args,
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "null",
        "-semihosting-config",
        _semihosting_config(args),
        "-kernel",
        str(elf),
    ]


def firmware_status(console: str, returncode: int | None, stdout: str) -> int | None:
    """The firmware's exit status: QEMU's own under semihosting; on the UART console, where QEMU exits 0 at the
    firmware's reset request, N from its last "KPGEN-EXIT status=N" line (None without one)."""
    if console != "uart" or returncode != 0:
        return returncode
    ends = _EXIT_LINE.findall(stdout)
    return int(ends[-1]) if ends else None


def _result(done: proc.Completed, cap: int, timeout: float, console: str = "semihosting") -> RunResult:
    stdout, stderr = done.out, done.err
    m = _FAULT_LINE.search(stdout) or _FAULT_LINE.search(stderr)
    code = firmware_status(console, done.returncode, stdout)
    no_end = console == "uart" and done.returncode == 0 and code is None
    return RunResult(
        stdout=stdout,
        exit_code=code,
        timed_out=done.timed_out,
        fault_pc=int(m.group(1), 16) if m else None,
        seconds=done.seconds,
        stderr=stderr,
        overflowed=done.overflowed,
        cap=cap,
        timeout=timeout,
        console=console,
        no_end_line=no_end,
    )


def _execute(cmd: list[str], timeout: float, cap: int = OUTPUT_CAP, console: str = "semihosting") -> RunResult:
    """Run QEMU bounded by `timeout` seconds and `cap` bytes of output; killed on every exit path."""
    return _result(proc.run(cmd, timeout=timeout, cap=cap), cap, timeout, console)


def run(
    elf: Path | str, board: Board | str, timeout: float = 60.0, args: Sequence[str] = (), cap: int = OUTPUT_CAP
) -> RunResult:
    """Run the firmware to completion (or kill it after `timeout` seconds, or once it printed more than
    `cap` bytes) and collect what it reported."""
    check_tools((QEMU,))
    if not Path(elf).is_file():
        raise KpgenError(f"firmware {elf} not found; build it first")
    console = console_of(elf)
    return _execute(qemu_command(elf, board, args, console), timeout, cap, console)


# --------------------------------------------------------------------------------------------- counting


class TraceCounter:
    """Per-PC counts of a `-d exec` trace fed chunk by chunk as QEMU writes it, from the first entry into
    `begin` up to the first entry into `end`; the text itself is never kept.

    Trace lines are "Trace <cpu>: <host ptr> [<cs_base>/<pc>/<flags>/<cflags>] <symbol>"; the field
    widths (8 hex digits for pc in 7.2, 16 in later QEMUs) are read from the first line.
    """

    def __init__(self, begin: int, end: int):
        self.begin, self.end = begin, end
        self.bytes = 0  # trace bytes fed so far
        self.state = 0  # 0: before begin, 1: counting, 2: done
        self.counts: dict[bytes, int] = {}
        self.pairs: dict[bytes, int] = {}  # last + pc (two pc fields concatenated) -> times
        self.last: bytes | None = None
        self.before_last: bytes | None = None
        self.lo = self.hi = -1  # pc field offsets relative to "["
        self.begin_key = self.end_key = b""
        self._rest = b""

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.state == 2:
            return
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        self._lines(lines)

    def close(self) -> None:
        """The trace ended: count a last line without its newline."""
        if self._rest and self.state != 2:
            self._lines([self._rest])
        self._rest = b""

    def _lines(self, lines: list[bytes]) -> None:
        counts, pairs = self.counts, self.pairs
        last, before_last, state = self.last, self.before_last, self.state
        lo, hi, begin_key, end_key = self.lo, self.hi, self.begin_key, self.end_key
        for line in lines:
            if line.startswith(b"Trace"):
                i = line.find(b"[")
                if lo < 0:
                    if i < 0:
                        continue
                    j = line.index(b"/", i)
                    k = line.index(b"/", j + 1)
                    lo, hi = j + 1 - i, k - i
                    width = hi - lo
                    begin_key = b"%0*x" % (width, self.begin)
                    end_key = b"%0*x" % (width, self.end)
                pc = line[i + lo : i + hi]
                if state == 0:
                    if pc != begin_key:
                        continue
                    state = 1
                elif pc == end_key:
                    if last is not None:
                        key = last + pc
                        pairs[key] = pairs.get(key, 0) + 1
                    state = 2
                    break
                counts[pc] = counts.get(pc, 0) + 1
                if last is not None:
                    key = last + pc
                    pairs[key] = pairs.get(key, 0) + 1
                before_last, last = last, pc
            elif state == 1 and line.startswith(b"Stopped execution"):
                # The TB logged just before was abandoned without executing: undo its count (and the
                # transition into it); the instruction before it is again the last one executed.
                i = line.find(b"[")
                k = line.find(b"]", i)
                if last is not None and int(line[i + 1 : k], 16) == int(last, 16):
                    counts[last] -= 1
                    if before_last is not None:
                        pairs[before_last + last] -= 1
                    last, before_last = before_last, None
        self.last, self.before_last, self.state = last, before_last, state
        self.lo, self.hi, self.begin_key, self.end_key = lo, hi, begin_key, end_key

    def result(
        self, edges: dict[tuple[int, int], int] | None = None
    ) -> tuple[int, dict[int, int]] | tuple[None, str]:
        """(total, {pc: count}), or (None, reason) when the window was never opened or never closed. If
        `edges` is given, it is filled with {(pc, next pc): times}, the last instruction's successor being
        `end`."""
        if self.state == 0:
            return None, f"{PROFILE_BEGIN} was never called"
        if self.state == 1:
            return None, f"{PROFILE_END} was never called after {PROFILE_BEGIN}"
        by_pc = {int(k, 16): n for k, n in self.counts.items() if n}
        if edges is not None:
            half = len(self.begin_key)
            for key, n in self.pairs.items():
                if n:
                    edge = (int(key[:half], 16), int(key[half:], 16))
                    edges[edge] = edges.get(edge, 0) + n
        return sum(by_pc.values()), by_pc


def _count_trace(
    path: Path, begin: int, end: int, edges: dict[tuple[int, int], int] | None = None
) -> tuple[int, dict[int, int]] | tuple[None, str]:
    """TraceCounter over a trace file already written (see TraceCounter.result)."""
    counter = TraceCounter(begin, end)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            counter.feed(chunk)
    counter.close()
    return counter.result(edges)


def disassemble(elf: Path | str) -> dict[int, Insn]:
    """Every instruction of the ELF's executable sections: address -> size, mnemonic, operands (from the
    one disassembly kpgen.target.elf makes per ELF; literal pools and other data left out)."""
    return {ln.address: Insn(ln.size, ln.mnemonic, ln.operands) for ln in elfread.disassembly(elf).lines}


def taken_counts(edges: dict[tuple[int, int], int], insns: dict[int, Insn]) -> dict[int, int]:
    """pc -> times the next executed PC was not pc + size (a taken branch, call, return or exception)."""
    taken: dict[int, int] = {}
    for (pc, nxt), n in edges.items():
        insn = insns.get(pc)
        sequential = nxt == pc + insn.size if insn is not None else nxt - pc in (2, 4)
        if not sequential:
            taken[pc] = taken.get(pc, 0) + n
    return taken


def _function_names(pcs, syms: list[tuple[int, int, str]]) -> dict[int, str]:
    """pc -> the function symbol containing it ("<unknown>" outside every symbol)."""
    starts = [a for a, _, _ in syms]
    out: dict[int, str] = {}
    for pc in pcs:
        k = bisect.bisect_right(starts, pc) - 1
        name = "<unknown>"
        if k >= 0:
            addr, size, sym = syms[k]
            limit = addr + size if size else (starts[k + 1] if k + 1 < len(starts) else addr + 1)
            if pc < limit:
                name = sym
        out[pc] = name
    return out


def _attribute(counts: dict[int, int], syms: list[tuple[int, int, str]]) -> dict[str, int]:
    """Sum per-PC counts by the function symbol containing the PC (heaviest first)."""
    names = _function_names(counts, syms)
    per: dict[str, int] = {}
    for pc, n in counts.items():
        per[names[pc]] = per.get(names[pc], 0) + n
    return dict(sorted(per.items(), key=lambda kv: (-kv[1], kv[0])))


def count_instructions(
    elf: Path | str,
    board: Board | str,
    args: Sequence[str] = (),
    timeout: float = 600.0,
    trace_dir: Path | str | None = None,
    cap: int = OUTPUT_CAP,
    trace_cap: int = TRACE_CAP,
) -> Profile:
    """Exact count of the instructions executed between the profile markers: in total, per function, per
    instruction address, and the control transfers (taken branches) per address.

    QEMU writes the trace into a FIFO in a temporary directory under `trace_dir` (default: the system temp
    dir), read and counted as it comes (at most `trace_cap` bytes) and removed afterwards. A firmware that
    hangs, faults, locks up or prints without end inside the window raises ProfileFailed (a failed run);
    markers that are never reached by a firmware that exits normally raise KpgenError.
    """
    check_tools((QEMU,))
    if not Path(elf).is_file():
        raise KpgenError(f"firmware {elf} not found; build it first")
    syms = symbols(elf)
    addr = {name: a for a, _, name in syms}
    for marker in (PROFILE_BEGIN, PROFILE_END):
        if marker not in addr:
            raise KpgenError(f"{elf} has no function {marker}; link boards/common/kpgen_target.c and call it")
    counter = TraceCounter(addr[PROFILE_BEGIN], addr[PROFILE_END])
    console = console_of(elf)
    cmd = qemu_command(elf, board, args, console)
    with tempfile.TemporaryDirectory(prefix="kpgen-trace-", dir=trace_dir) as tmp:
        # QEMU writes the trace into a FIFO that is counted as it arrives: nothing is stored on disk.
        fifo, rfd, wfd = proc.make_fifo(Path(tmp))
        try:
            cmd[1:1] = ["-singlestep", "-d", "nochain,exec", "-D", str(fifo)]
            running: list[proc.Child] = []

            def take(data: bytes) -> None:
                counter.feed(data)
                if counter.bytes > trace_cap and counter.state != 2:
                    running[0].stop(f"the profiled window traced more than {trace_cap:,} bytes")

            with proc.Child(cmd, timeout=timeout, cap=cap, extra=(rfd, take)) as child:
                running.append(child)
                done = child.finish()
        finally:
            os.close(rfd)
            os.close(wfd)
    counter.close()
    result = _result(done, cap, timeout, console)
    edges: dict[tuple[int, int], int] = {}
    total, counts = counter.result(edges)
    if total is None:
        why = done.reason or result.problem
        if why is not None:
            raise ProfileFailed(f"the profiled run failed: {why} ({counts})", result)
        raise KpgenError(
            f"cannot count instructions of {elf}: {counts} (QEMU exited with status {result.exit_code}); "
            "check the firmware"
        )
    assert isinstance(counts, dict)
    code = disassemble(elf)
    return Profile(
        total=total,
        per_function=_attribute(counts, syms),
        run=result,
        per_pc=counts,
        taken=taken_counts(edges, code),
        insns={pc: code[pc] for pc in counts if pc in code},
        functions=_function_names(counts, syms),
        edges=edges,
    )
