"""The build stage: arm-none-eabi-gcc through the firmware directory's Makefile, plus size, symbol and
stack-usage readers for the result."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from kpgen import KpgenError

APT_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi make qemu-system-arm"
APT_HINT = f"install them with: sudo apt-get update && sudo apt-get install -y {APT_PACKAGES}"

CC = "arm-none-eabi-gcc"
SIZE = "arm-none-eabi-size"
NM = "arm-none-eabi-nm"
QEMU = "qemu-system-arm"
BUILD_TOOLS = (CC, SIZE, NM, "arm-none-eabi-objcopy", "make")
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
        lib = subprocess.run([CC, "-print-file-name=librdimon.a"], capture_output=True, text=True).stdout.strip()
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


def build(fw_dir: Path | str, jobs: int = 2, opt: str | None = None) -> BuildResult:
    """Run `make -C fw_dir -j<jobs>` (optionally OPT=<opt>); a compile or link error raises KpgenError."""
    check_tools(BUILD_TOOLS)
    fw_dir = Path(fw_dir)
    if not (fw_dir / "Makefile").is_file():
        raise KpgenError(f"no Makefile in {fw_dir}; emit the firmware directory first")
    cmd = ["make", "-C", str(fw_dir), f"-j{jobs}"]
    if opt is not None:
        cmd.append(f"OPT={opt}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise KpgenError(f"firmware build failed in {fw_dir}: {_first_error(proc.stderr or log)}")
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
    """Berkeley sizes from arm-none-eabi-size: text (code + read-only data, in flash), data (initialised
    RAM, also stored in flash) and bss (zeroed RAM, including the reserved heap)."""
    proc = subprocess.run([SIZE, "-B", "-d", str(elf)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KpgenError(f"cannot read sizes of {elf}: {proc.stderr.strip()}")
    fields = proc.stdout.splitlines()[1].split()
    return {"text": int(fields[0]), "data": int(fields[1]), "bss": int(fields[2])}


def symbols(elf: Path | str) -> list[tuple[int, int, str]]:
    """Function symbols of the ELF as (address, size, name), sorted by address, Thumb bit cleared.

    A weak alias sharing its address with a strong symbol (HardFault_Handler -> Default_Handler) is left
    out, so every address names one function.
    """
    proc = subprocess.run([NM, "--format=sysv", "--defined-only", str(elf)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KpgenError(f"cannot read symbols of {elf}: {proc.stderr.strip()}")
    found: list[tuple[int, int, str, bool]] = []
    for line in proc.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 7 or parts[3] != "FUNC":
            continue
        name, value, klass, size = parts[0], parts[1], parts[2], parts[4]
        found.append((int(value, 16) & ~1, int(size, 16) if size else 0, name, klass in ("W", "w")))
    strong = {addr for addr, _, _, weak in found if not weak}
    out = {(addr, size, name) for addr, size, name, weak in found if not (weak and addr in strong)}
    return sorted(out)


_SU_LINE = re.compile(r"^(?P<loc>.*):(?P<func>[^:\s]+)\s+(?P<bytes>\d+)\s+(?P<kind>\S+)\s*$")


def stack_usage(obj_dir: Path | str) -> dict[str, int]:
    """Stack bytes per function from GCC's -fstack-usage .su files in obj_dir (largest if a name repeats)."""
    usage: dict[str, int] = {}
    for su in sorted(Path(obj_dir).glob("*.su")):
        for line in su.read_text(encoding="utf-8").splitlines():
            m = _SU_LINE.match(line)
            if m:
                func, n = m.group("func"), int(m.group("bytes"))
                usage[func] = max(n, usage.get(func, 0))
    return usage


def object_bytes(elf: Path | str, prefix: str) -> int:
    """Total size of the data objects (weights, tables) whose names start with prefix."""
    proc = subprocess.run([NM, "--format=sysv", "--defined-only", str(elf)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KpgenError(f"cannot read symbols of {elf}: {proc.stderr.strip()}")
    total = 0
    for line in proc.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 7 and parts[3] == "OBJECT" and parts[0].startswith(prefix) and parts[4]:
            if parts[6].startswith(".rodata") or parts[6] == ".text":
                total += int(parts[4], 16)
    return total
