"""The one ELF reader: symbols, section sizes and build attributes with pyelftools, and the disassembly (the
one thing pyelftools cannot give) from a single `arm-none-eabi-objdump -d` run per ELF, parsed here once for
both the call graph (stack check) and the per-instruction profile (cycle model)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import ARMAttributesSection, SymbolTableSection

from kpgen import KpgenError
from kpgen.target import proc

OBJDUMP = "arm-none-eabi-objdump"
_TAG_MVE_ARCH = "TAG_MVE_ARCH"


@dataclass(frozen=True)
class Symbol:
    """One defined symbol of the ELF's .symtab."""

    name: str
    address: int  # Thumb bit cleared for functions
    size: int
    kind: str  # "FUNC", "OBJECT", ...
    weak: bool
    section: str  # name of the section it is defined in ("" for absolute symbols)


@dataclass(frozen=True)
class Line:
    """One disassembled instruction: its function, address, size and text."""

    function: str
    address: int
    size: int  # bytes: 2 or 4 (Thumb)
    mnemonic: str  # lower case, with condition and width suffixes
    operands: str  # without objdump's trailing comment
    text: str  # everything after the mnemonic, comments and <symbol> targets included


@dataclass(frozen=True)
class Disassembly:
    """The disassembly of an ELF's executable sections."""

    functions: tuple[str, ...]  # every <function> heading, in address order
    lines: tuple[Line, ...]  # every instruction, in address order


@dataclass(frozen=True)
class Info:
    """What kpgen reads from a built ELF, read once."""

    symbols: tuple[Symbol, ...]
    sizes: dict[str, int]  # Berkeley text, data, bss
    mve: bool  # the build attributes declare Helium (Tag_MVE_arch)


def _open_error(elf: Path, e: Exception) -> KpgenError:
    return KpgenError(f"cannot read {elf}: not an ELF file ({e}); build it again")


_cache: dict[tuple[str, int, int], Info] = {}
_dis_cache: dict[tuple[str, int, int], Disassembly] = {}


def _key(elf: Path | str) -> tuple[str, int, int]:
    p = Path(elf)
    try:
        st = p.stat()
    except OSError:
        raise KpgenError(f"firmware {elf} not found; build it first") from None
    return (str(p.resolve()), st.st_mtime_ns, st.st_size)


def read(elf: Path | str) -> Info:
    """Symbols, Berkeley sizes and the MVE attribute of `elf` (cached while the file is unchanged)."""
    key = _key(elf)
    if key in _cache:
        return _cache[key]
    path = Path(elf)
    try:
        with open(path, "rb") as f:
            ef = ELFFile(f)
            names = [s.name for s in ef.iter_sections()]
            syms: list[Symbol] = []
            text = data = bss = 0
            mve = False
            for sec in ef.iter_sections():
                flags = sec["sh_flags"]
                if flags & SH_FLAGS.SHF_ALLOC:
                    # As GNU size -B: code or read-only -> text; writable with contents -> data; else bss.
                    if flags & SH_FLAGS.SHF_EXECINSTR or not flags & SH_FLAGS.SHF_WRITE:
                        text += sec["sh_size"]
                    elif sec["sh_type"] != "SHT_NOBITS":
                        data += sec["sh_size"]
                    else:
                        bss += sec["sh_size"]
                if isinstance(sec, ARMAttributesSection):
                    for sub in sec.iter_subsections():
                        for subsub in sub.iter_subsubsections():
                            mve |= any(a.tag == _TAG_MVE_ARCH for a in subsub.iter_attributes())
                if isinstance(sec, SymbolTableSection) and sec.name == ".symtab":
                    for s in sec.iter_symbols():
                        shndx = s["st_shndx"]
                        if shndx == "SHN_UNDEF" or not s.name:
                            continue
                        kind = s["st_info"]["type"].replace("STT_", "")
                        addr = s["st_value"] & ~1 if kind == "FUNC" else s["st_value"]
                        section = names[shndx] if isinstance(shndx, int) and shndx < len(names) else ""
                        weak = s["st_info"]["bind"] == "STB_WEAK"
                        syms.append(Symbol(s.name, addr, s["st_size"], kind, weak, section))
    except (ELFError, OSError, ValueError) as e:
        raise _open_error(path, e) from None
    info = Info(tuple(syms), {"text": text, "data": data, "bss": bss}, mve)
    _cache[key] = info
    return info


def sizes(elf: Path | str) -> dict[str, int]:
    """Berkeley sizes: text (code + read-only data, in flash), data (initialised RAM, also stored in flash)
    and bss (zeroed RAM, including the reserved heap)."""
    return dict(read(elf).sizes)


def functions(elf: Path | str) -> list[tuple[int, int, str]]:
    """Function symbols as (address, size, name), sorted by address, Thumb bit cleared.

    A weak alias sharing its address with a strong symbol (HardFault_Handler -> Default_Handler) is left
    out, so every address names one function.
    """
    found = [s for s in read(elf).symbols if s.kind == "FUNC"]
    strong = {s.address for s in found if not s.weak}
    return sorted({(s.address, s.size, s.name) for s in found if not (s.weak and s.address in strong)})


def object_bytes(elf: Path | str, prefix: str) -> int:
    """Total size of the data objects in flash (.rodata*, .text) whose names start with prefix."""
    return sum(
        s.size
        for s in read(elf).symbols
        if s.kind == "OBJECT" and s.name.startswith(prefix)
        and (s.section.startswith(".rodata") or s.section == ".text")
    )


def section_sizes(path: Path | str) -> dict[str, int]:
    """Size in bytes of every section of an ELF file (an object file too), by section name (summed if a
    name repeats)."""
    out: dict[str, int] = {}
    try:
        with open(path, "rb") as f:
            for sec in ELFFile(f).iter_sections():
                if sec.name:
                    out[sec.name] = out.get(sec.name, 0) + sec["sh_size"]
    except (ELFError, OSError, ValueError) as e:
        raise _open_error(Path(path), e) from None
    return out


# --------------------------------------------------------------------------------------------- disassembly

_FUNC_HEAD = re.compile(r"^([0-9a-f]+) <([^>]+)>:$")
_INSN_LINE = re.compile(r"^\s*([0-9a-f]+):\t((?:[0-9a-f]{4} ?){1,2})\s*\t(\S+)(?:\t(.*))?$")


def disassembly(elf: Path | str) -> Disassembly:
    """Every instruction of the executable sections, from one `arm-none-eabi-objdump -d` run per ELF (cached
    while the file is unchanged). Literal-pool words (".word") and other data are left out. Helium builds
    are disassembled as Armv8.1-M: objdump does not take MVE from the build attributes and would print
    Helium instructions as coprocessor ones (LDC/CDP)."""
    key = _key(elf)
    if key in _dis_cache:
        return _dis_cache[key]
    cmd = [OBJDUMP, "-d", str(elf)]
    if read(elf).mve:
        cmd[1:1] = ["-m", "armv8.1-m.main"]
    out = proc.tool(cmd, f"disassemble {elf}", cap=1 << 30)
    lines: list[Line] = []
    heads: list[str] = []
    func = ""
    for raw_line in out.splitlines():
        head = _FUNC_HEAD.match(raw_line)
        if head:
            func = head.group(2)
            heads.append(func)
            continue
        m = _INSN_LINE.match(raw_line)
        if not m or not func or m.group(3).startswith("."):
            continue
        raw = m.group(2).split()
        if len(raw) == 1 and len(raw[0]) != 4:
            continue
        rest = (m.group(4) or "").strip()
        operands = re.split(r"[@;]", rest, maxsplit=1)[0].strip()
        lines.append(Line(func, int(m.group(1), 16), 2 * len(raw), m.group(3).lower(), operands, rest))
    result = Disassembly(tuple(heads), tuple(lines))
    _dis_cache[key] = result
    return result
