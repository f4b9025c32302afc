"""The build stage: arm-none-eabi-gcc through the firmware directory's Makefile, plus size, symbol and
stack-usage readers for the result."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kpgen import KpgenError
from kpgen.target import elf as elfread
from kpgen.target import proc

APT_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi make qemu-system-arm"
APT_HINT = f"install them with: sudo apt-get update && sudo apt-get install -y {APT_PACKAGES}"

CC = "arm-none-eabi-gcc"
SIZE = "arm-none-eabi-size"
NM = "arm-none-eabi-nm"
QEMU = "qemu-system-arm"
BUILD_TOOLS = (CC, SIZE, "arm-none-eabi-objdump", "arm-none-eabi-objcopy", "make")
ALL_TOOLS = BUILD_TOOLS + (QEMU,)


@dataclass(frozen=True)
class BuildResult:
    fw_dir: Path
    elf: Path
    bin: Path
    hex: Path
    map: Path
    sizes: dict[str, int]  # text, data, bss in bytes (see elf_sizes)
    log: str  # make's stdout and stderr


def check_tools(tools: Iterable[str] = ALL_TOOLS) -> None:
    """Raise KpgenError naming the missing programs (and the apt command) unless all are on PATH."""
    tools = tuple(tools)
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise KpgenError(f"missing {', '.join(missing)}; {APT_HINT}")
    if CC in tools:
        lib = proc.run([CC, "-print-file-name=librdimon.a"], timeout=proc.TOOL_TIMEOUT).out.strip()
        if not Path(lib).is_absolute():
            raise KpgenError(f"newlib (librdimon.a) not found for {CC}; {APT_HINT}")


_ERROR_LINE = re.compile(r"(\berror\b|\bError\b|undefined reference|overflowed|kpgen: )")


_LD_PATH = re.compile(r"^\S*/(ld(\.bfd)?): ")


def _first_error(log: str) -> str:
    for line in log.splitlines():
        if _ERROR_LINE.search(line) and not line.startswith("make"):
            return _LD_PATH.sub(r"\1: ", line.strip())
    for line in log.splitlines():
        if line.startswith("make") and "Error" in line:
            return line.strip()
    lines = [ln for ln in log.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "make failed without output"


_OVERFLOW = re.compile(r"region `(\w+)' overflowed by (\d+) bytes")
_USAGE = re.compile(r"^\s*(\w+):\s+(\d+) B\s+(\d+ [KMG]?B)\s")


def _overflow_message(log: str) -> str | None:
    """The linker's memory-region overflow, in one line with the numbers (None if the log has none)."""
    regions = {m.group(1): int(m.group(2)) for m in _OVERFLOW.finditer(log)}
    if not regions and "kpgen: RAM overflow" in log:
        regions = {"RAM": 0}
    if not regions:
        return None
    usage = {m.group(1): (int(m.group(2)), m.group(3)) for ln in log.splitlines() if (m := _USAGE.match(ln))}
    parts = []
    for region, over in regions.items():
        text = f"the firmware does not fit the board's {region}"
        if region in usage:
            text += f" (its sections use {usage[region][0]:,} bytes of {usage[region][1]}"
            text += f", {over:,} over)" if over else ")"
        elif over:
            text += f" ({over:,} bytes over)"
        parts.append(text)
    if "RAM" in regions:
        parts.append("RAM holds .data, .bss (the model arena), the heap and the stack")
    return "; ".join(parts) + "; shrink the model or --samples, or use a board with more memory"


def build(
    fw_dir: Path | str, jobs: int = 2, opt: str | None = None, timeout: float = proc.BUILD_TIMEOUT
) -> BuildResult:
    """Run make in fw_dir with -j<jobs> (optionally OPT=<opt>), bounded by `timeout` seconds; a compile or
    link error raises KpgenError.

    make runs with fw_dir as its working directory and the Makefile names only relative paths, so the
    directory's name (spaces, quotes, `$(...)`) never reaches a shell or a make variable.
    """
    check_tools(BUILD_TOOLS)
    fw_dir = Path(fw_dir)
    if not (fw_dir / "Makefile").is_file():
        raise KpgenError(f"no Makefile in {fw_dir}; emit the firmware directory first")
    cmd = ["make", f"-j{jobs}"]
    if opt is not None:
        cmd.append(f"OPT={opt}")
    done = proc.run(cmd, timeout=timeout, cap=16 << 20, cwd=fw_dir)
    log = done.out + done.err
    if done.timed_out:
        raise KpgenError(f"firmware build in {fw_dir} took longer than {timeout:g} s and was stopped; "
                         "build it with make to see why")
    if done.returncode != 0:
        overflow = _overflow_message(log)
        if overflow:
            raise KpgenError(f"firmware build failed in {fw_dir}: {overflow}")
        raise KpgenError(f"firmware build failed in {fw_dir}: {_first_error(done.err or log)}")
    elf = fw_dir / "fw.elf"
    return BuildResult(
        fw_dir=fw_dir,
        elf=elf,
        bin=fw_dir / "fw.bin",
        hex=fw_dir / "fw.hex",
        map=fw_dir / "fw.map",
        sizes=elf_sizes(elf),
        log=log,
    )


def elf_sizes(elf: Path | str) -> dict[str, int]:
    """Berkeley sizes: text (code + read-only data, in flash), data (initialised RAM, also stored in flash)
    and bss (zeroed RAM, including the reserved heap)."""
    return elfread.sizes(elf)


def symbols(elf: Path | str) -> list[tuple[int, int, str]]:
    """Function symbols of the ELF as (address, size, name), sorted by address, Thumb bit cleared; a weak
    alias at a strong symbol's address is left out (see kpgen.target.elf.functions)."""
    return elfread.functions(elf)


_SU_LINE = re.compile(r"^(?P<loc>.*):(?P<func>[^:\s]+)\s+(?P<bytes>\d+)\s+(?P<kind>\S+)\s*$")


def _su_lines(obj_dir: Path | str) -> list[str]:
    """The lines of GCC's .su files in obj_dir. They quote source paths, which may be in any encoding: bytes that
    are not UTF-8 are kept as surrogate escapes (function names, which are C identifiers, are unaffected)."""
    lines: list[str] = []
    for su in sorted(Path(obj_dir).glob("*.su")):
        lines += su.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    return lines


def stack_usage(obj_dir: Path | str) -> dict[str, int]:
    """Stack bytes per function from GCC's -fstack-usage .su files in obj_dir (largest if a name repeats)."""
    usage: dict[str, int] = {}
    for line in _su_lines(obj_dir):
        m = _SU_LINE.match(line)
        if m:
            func, n = m.group("func"), int(m.group("bytes"))
            usage[func] = max(n, usage.get(func, 0))
    return usage


def object_bytes(elf: Path | str, prefix: str) -> int:
    """Total size of the data objects (weights, tables) whose names start with prefix."""
    return elfread.object_bytes(elf, prefix)


# --------------------------------------------------------------------------------------------- stack depth

OBJDUMP = elfread.OBJDUMP
MODEL_ENTRY_POINTS = ("run", "step", "scores", "reset")  # <name>_run, ... : the model API of model.h

_BRANCH = re.compile(r"^(bl|blx|b(eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al)?)(\.[wn])?$")
_TARGET = re.compile(r"<([^>+]+)>\s*$")  # a function's first instruction: a call or a tail call
_REGLIST = re.compile(r"\{([^}]*)\}")
_SP_SUB = re.compile(r"^sp, (?:sp, )?#(\d+)")


@dataclass(frozen=True)
class CallGraph:
    """Direct calls between the functions of an ELF, from its disassembly."""

    calls: dict[str, frozenset[str]]  # function -> functions it calls or tail-calls (bl, b to a function start)
    indirect: frozenset[str]  # functions that call through a register (blx rN): their callees are unknown
    frames: dict[str, int]  # stack bytes per function from its pushes and sp subtractions (fallback for .su)


@dataclass(frozen=True)
class StackCheck:
    """The deepest stack the model's API can use, against the board's stack."""

    bytes: int  # sum of the frames along `chain`
    chain: tuple[str, ...]  # entry point first
    limit: int  # the board's stack_size
    estimated: tuple[str, ...]  # functions on the chain sized from the disassembly (no -fstack-usage entry)


def _count_regs(text: str) -> int:
    """Bytes a push/vpush register list occupies: 4 per core or s register, 8 per d register."""
    m = _REGLIST.search(text)
    if not m:
        return 0
    total = 0
    for part in (p.strip() for p in m.group(1).split(",") if p.strip()):
        width = 8 if part.startswith("d") else 4
        if "-" in part:
            lo, hi = (int(re.sub(r"\D", "", r) or 0) for r in part.split("-"))
            total += width * (hi - lo + 1)
        else:
            total += width
    return total


def call_graph(elf: Path | str) -> CallGraph:
    """Direct call edges, indirect callers and frame estimates from the ELF's disassembly (kpgen.target.elf)."""
    dis = elfread.disassembly(elf)
    calls: dict[str, set[str]] = {f: set() for f in dis.functions}
    frames: dict[str, int] = {f: 0 for f in dis.functions}
    indirect: set[str] = set()
    for ln in dis.lines:
        func, op = ln.function, ln.mnemonic
        args = ln.text.split(";")[0].split("@")[0].strip()
        if _BRANCH.match(op):
            target = _TARGET.search(ln.text)
            if target and target.group(1) != func:
                calls[func].add(target.group(1))
            elif op == "blx" and re.fullmatch(r"(r\d+|ip|lr|sl|fp)", args):
                indirect.add(func)
        elif op in ("push", "push.w", "vpush", "stmdb", "stmfd", "stmdb.w") and (op.startswith(("push", "vpush"))
                                                                                   or args.startswith("sp!")):
            frames[func] += _count_regs(args)
        elif op in ("sub", "sub.w", "subw", "subs") and args.startswith("sp,"):
            m = _SP_SUB.match(args)
            if m:
                frames[func] += int(m.group(1))
    return CallGraph({f: frozenset(c) for f, c in calls.items()}, frozenset(indirect), frames)


def stack_frames(obj_dir: Path | str) -> dict[str, tuple[int, str]]:
    """-fstack-usage per function: (bytes, kind), kind "static", "dynamic" or "dynamic,bounded"; largest wins."""
    out: dict[str, tuple[int, str]] = {}
    for line in _su_lines(obj_dir):
        m = _SU_LINE.match(line)
        if m:
            func, n, kind = m.group("func"), int(m.group("bytes")), m.group("kind")
            if func not in out or n > out[func][0] or kind == "dynamic":
                out[func] = (max(n, out.get(func, (0, ""))[0]), kind)
    return out


def worst_stack(
    entries: Iterable[str], frames: dict[str, tuple[int, str]], graph: CallGraph
) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
    """(bytes, chain, estimated) of the deepest call chain from any entry: the sum of its frames.

    Frames come from -fstack-usage, else from the disassembly (library code). Refuses, with the chain,
    recursion, calls through function pointers and variable-size frames, whose depth has no static bound.
    """
    memo: dict[str, tuple[int, tuple[str, ...]]] = {}
    estimated: set[str] = set()

    def frame(f: str, path: tuple[str, ...]) -> int:
        if f in frames:
            n, kind = frames[f]
            if kind == "dynamic":
                raise KpgenError(
                    f"{f} has a variable-size stack frame (alloca or a variable-length array) on the call chain "
                    f"{' -> '.join(path)}, so its stack use has no bound; use fixed-size arrays"
                )
            return n
        estimated.add(f)
        return graph.frames.get(f, 0)

    def deepest(f: str, path: tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
        if f in memo:
            return memo[f]
        if f in graph.indirect:
            raise KpgenError(
                f"{f} calls through a function pointer on the call chain {' -> '.join(path)}, so its stack use "
                "cannot be bounded; call functions directly in code the model runs"
            )
        best: tuple[int, tuple[str, ...]] = (0, ())
        for callee in sorted(graph.calls.get(f, ())):
            if callee in path:
                loop = path[path.index(callee):] + (callee,)
                raise KpgenError(
                    f"recursion {' -> '.join(loop)}: its stack use has no bound; emitted code must not recurse"
                )
            depth = deepest(callee, path + (callee,))
            if depth[0] > best[0]:
                best = depth
        memo[f] = (frame(f, path) + best[0], (f,) + best[1])
        return memo[f]

    worst: tuple[int, tuple[str, ...]] = (0, ())
    for e in entries:
        d = deepest(e, (e,))
        if d[0] > worst[0] or not worst[1]:
            worst = d
    return worst[0], worst[1], tuple(f for f in worst[1] if f in estimated)


def check_stack(elf: Path | str, obj_dir: Path | str, board, name: str) -> StackCheck:
    """The deepest call chain from the model's API (<name>_run, _step, _scores, _reset), from -fstack-usage and
    the call graph of the built ELF, against the board's stack_size: a KpgenError with the numbers if it
    does not fit. Interrupts that arrive while the model runs need their own room on top."""
    graph = call_graph(elf)
    if not graph.calls:
        raise KpgenError(f"the disassembly of {elf} lists no functions; build it again")
    entries = [e for e in (f"{name}_{e}" for e in MODEL_ENTRY_POINTS) if e in graph.calls]
    if not entries:  # a firmware that never calls the model (its check will fail): nothing of the model to size
        return StackCheck(bytes=0, chain=(), limit=board.stack_size, estimated=())
    need, chain, estimated = worst_stack(entries, stack_frames(obj_dir), graph)
    if need > board.stack_size:
        raise KpgenError(
            f"the model needs {need:,} bytes of stack ({' -> '.join(chain)}, from -fstack-usage) but board "
            f"{board.name} has stack_size {board.stack_size:,}; raise stack_size in {board.path} or use a board "
            "with more RAM"
        )
    return StackCheck(bytes=need, chain=chain, limit=board.stack_size, estimated=estimated)
