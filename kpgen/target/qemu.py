"""The run stage: firmware under qemu-system-arm with semihosting (stdout, command line, exit status),
and exact instruction counts from QEMU's execution trace.

Run command (QEMU 7.2):
    qemu-system-arm -M <machine> <board extra args> -nographic -monitor none -serial null
        -semihosting-config enable=on,target=native[,arg=A,arg=B...] -kernel fw.elf
  -monitor none -serial null keep the monitor and the UARTs off stdio, so stdout carries only what the
  firmware writes through semihosting, and QEMU never reads stdin. The exit status is main()'s return
  value (newlib's exit() uses SYS_EXIT_EXTENDED); a fault prints "KPGEN-FAULT pc=0x..." and exits 3.

Count command: the same plus
        -singlestep -d nochain,exec -D <trace file>
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
  `arm-none-eabi-objdump -d` (qemu.disassemble) that gives, per instruction, how often it transferred control
  (next pc != pc + size: a taken branch, call or return), the input of the cycle estimate (kpgen/target/cycles.py).

  Measured (QEMU 7.2.22, x86-64 host, 2-core VM): about 67 bytes per trace line (65 to 75 with the
  symbol name), about 0.8 million instructions traced per second (5,002,967 lines, 335 MB, 6.2 s; QEMU
  line-buffers the log, one write() per line, so a FIFO or tmpfs is no faster), plus about 0.9 us per
  line for the parse below (with the transitions; 7.1 M lines, 530 MB: 6 s). 10 million traced
  instructions: about 0.7 GB of temporary file and 20 s or more.
  Keep profiled runs to a few million instructions.
"""

from __future__ import annotations

import bisect
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from kpgen import KpgenError
from kpgen.target.boards import Board, load_board
from kpgen.target.toolchain import QEMU, check_tools, symbols

OBJDUMP = "arm-none-eabi-objdump"
READELF = "arm-none-eabi-readelf"

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


def qemu_command(elf: Path | str, board: Board | str, args: Sequence[str] = ()) -> list[str]:
    """The qemu-system-arm argument list that runs `elf` on `board` with semihosting arguments `args`."""
    b = _board(board)
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


def _execute(cmd: list[str], timeout: float) -> RunResult:
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        raise
    seconds = time.monotonic() - start
    stdout = out.decode("utf-8", errors="replace")
    stderr = err.decode("utf-8", errors="replace")
    m = _FAULT_LINE.search(stdout) or _FAULT_LINE.search(stderr)
    return RunResult(
        stdout=stdout,
        exit_code=None if timed_out else proc.returncode,
        timed_out=timed_out,
        fault_pc=int(m.group(1), 16) if m else None,
        seconds=seconds,
        stderr=stderr,
    )


def run(elf: Path | str, board: Board | str, timeout: float = 60.0, args: Sequence[str] = ()) -> RunResult:
    """Run the firmware to completion (or kill it after `timeout` seconds) and collect what it reported."""
    check_tools((QEMU,))
    if not Path(elf).is_file():
        raise KpgenError(f"firmware {elf} not found; build it first")
    return _execute(qemu_command(elf, board, args), timeout)


# --------------------------------------------------------------------------------------------- counting


def _count_trace(
    path: Path, begin: int, end: int, edges: dict[tuple[int, int], int] | None = None
) -> tuple[int, dict[int, int]] | tuple[None, str]:
    """Stream the trace: per-PC counts from the first entry into `begin` up to the first entry into `end`.

    Returns (total, {pc: count}) or (None, reason) when the window was never opened or never closed.
    If `edges` is given, it is filled with {(pc, next pc): times} for every executed instruction of the
    window, the last one's successor being `end`.
    Trace lines are "Trace <cpu>: <host ptr> [<cs_base>/<pc>/<flags>/<cflags>] <symbol>"; the field
    widths (8 hex digits for pc in 7.2, 16 in later QEMUs) are read from the first line.
    """
    counts: dict[bytes, int] = {}
    pairs: dict[bytes, int] = {}  # last + pc (two pc fields concatenated) -> times
    last: bytes | None = None
    before_last: bytes | None = None
    state = 0  # 0: before begin, 1: counting, 2: done
    lo = hi = -1  # pc field offsets relative to "["
    begin_key = end_key = b""
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"Trace"):
                i = line.find(b"[")
                if lo < 0:
                    if i < 0:
                        continue
                    j = line.index(b"/", i)
                    k = line.index(b"/", j + 1)
                    lo, hi = j + 1 - i, k - i
                    width = hi - lo
                    begin_key = b"%0*x" % (width, begin)
                    end_key = b"%0*x" % (width, end)
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
    if state == 0:
        return None, f"{PROFILE_BEGIN} was never called"
    if state == 1:
        return None, f"{PROFILE_END} was never called after {PROFILE_BEGIN}"
    by_pc = {int(k, 16): n for k, n in counts.items() if n}
    if edges is not None:
        half = len(begin_key)
        for key, n in pairs.items():
            if n:
                edge = (int(key[:half], 16), int(key[half:], 16))
                edges[edge] = edges.get(edge, 0) + n
    return sum(by_pc.values()), by_pc


_OBJDUMP_LINE = re.compile(r"^\s*([0-9a-f]+):\t((?:[0-9a-f]{4} ?){1,2})\s*\t(\S+)(?:\t([^@;]*))?")


def disassemble(elf: Path | str) -> dict[int, Insn]:
    """Every instruction of the ELF's executable sections: address -> size, mnemonic, operands.

    From `arm-none-eabi-objdump -d` (Thumb: 2- or 4-byte encodings, printed as one or two groups of
    4 hex digits); literal-pool words (".word") and other data are left out.
    """
    check_tools((OBJDUMP, READELF))
    cmd = [OBJDUMP, "-d", str(elf)]
    attrs = subprocess.run([READELF, "-A", str(elf)], capture_output=True, text=True).stdout
    if "Tag_MVE_arch" in attrs:
        # objdump does not take MVE from the build attributes: without this it prints Helium
        # instructions as coprocessor ones (LDC/CDP).
        cmd[1:1] = ["-m", "armv8.1-m.main"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KpgenError(f"cannot disassemble {elf}: {proc.stderr.strip()}")
    out: dict[int, Insn] = {}
    for line in proc.stdout.splitlines():
        m = _OBJDUMP_LINE.match(line)
        if not m or m.group(3).startswith("."):
            continue
        raw = m.group(2).split()
        if len(raw) == 1 and len(raw[0]) != 4:
            continue
        out[int(m.group(1), 16)] = Insn(
            size=2 * len(raw), mnemonic=m.group(3).lower(), operands=(m.group(4) or "").strip()
        )
    return out


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
) -> Profile:
    """Exact count of the instructions executed between the profile markers: in total, per function, per
    instruction address, and the control transfers (taken branches) per address.

    The trace goes to a temporary file in `trace_dir` (default: the system temp dir), deleted afterwards.
    """
    check_tools((QEMU,))
    if not Path(elf).is_file():
        raise KpgenError(f"firmware {elf} not found; build it first")
    syms = symbols(elf)
    addr = {name: a for a, _, name in syms}
    for marker in (PROFILE_BEGIN, PROFILE_END):
        if marker not in addr:
            raise KpgenError(f"{elf} has no function {marker}; link boards/common/kpgen_target.c and call it")
    fd, trace_name = tempfile.mkstemp(prefix="kpgen-trace-", suffix=".log", dir=trace_dir)
    os.close(fd)
    trace = Path(trace_name)
    try:
        cmd = qemu_command(elf, board, args)
        cmd[1:1] = ["-singlestep", "-d", "nochain,exec", "-D", str(trace)]
        result = _execute(cmd, timeout)
        edges: dict[tuple[int, int], int] = {}
        total, counts = _count_trace(trace, addr[PROFILE_BEGIN], addr[PROFILE_END], edges)
    finally:
        trace.unlink(missing_ok=True)
    if total is None:
        if result.timed_out:
            why = f"QEMU timed out after {timeout:g} s"
        elif result.fault_pc is not None:
            why = f"the firmware faulted at pc=0x{result.fault_pc:08x}"
        else:
            why = f"QEMU exited with status {result.exit_code}"
        raise KpgenError(f"cannot count instructions of {elf}: {counts} ({why}); check the firmware")
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
