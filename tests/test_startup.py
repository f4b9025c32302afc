"""Start-up fit for the silicon (issue 15): full vector tables per chip, clock set-up with the reference manuals' flash
wait states, bounded polls, the RP2040's boot2 and UF2, cycle counters labelled honestly, `kpgen flash --port`
reading a report over a serial line (a pseudo-terminal), and the shipped examples bit-exact over UART."""

from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from elftools.elf.elffile import ELFFile
from firmware import build_fixture

from kpgen import KpgenError
from kpgen.cli import main
from kpgen.target import cycles, qemu, toolchain, uf2
from kpgen.target import elf as elfread
from kpgen.target import flash as flashing
from kpgen.target.boards import ClockProfile, SetupStep, list_boards, load_board, prepare_firmware_dir

REPO = Path(__file__).resolve().parents[1]
HELLO = Path(__file__).parent / "fixtures" / "hello" / "main.c"
EXAMPLES = REPO / "examples"
BOARDS = list_boards()
REAL = [b.name for b in BOARDS if not b.emulated]
EMULATED = [b.name for b in BOARDS if b.emulated]
needs_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in toolchain.ALL_TOOLS),
                                 reason="needs arm-none-eabi-gcc, make and qemu-system-arm")

# IRQ counts from the reference manuals / datasheets (independent of boards/chips/, which must agree).
IRQ_COUNT = {"m0": 32, "m3": 48, "m4": 48, "m7": 48, "m33": 124, "m55": 128, "netduinoplus2": 82, "nrf52840-dk": 48,
             "nucleo-f446re": 97, "nucleo-h743zi": 150, "nucleo-l476rg": 82, "rpi-pico": 26, "stm32f4discovery": 82}
# IRQ numbers of the console UART (reference manual vector tables): the handler must sit at word 16 + n.
UART_IRQ = {"nucleo-f446re": ("USART2_IRQHandler", 38), "stm32f4discovery": ("USART2_IRQHandler", 38),
            "netduinoplus2": ("USART1_IRQHandler", 37), "nucleo-l476rg": ("USART2_IRQHandler", 38),
            "nucleo-h743zi": ("USART3_IRQHandler", 39), "rpi-pico": ("UART0_IRQ_IRQHandler", 20),
            "nrf52840-dk": ("UARTE0_UART0_IRQHandler", 2), "m0": ("UART0_IRQHandler", 2),
            "m4": ("UARTRX0_IRQHandler", 0), "m33": ("UARTRX0_IRQHandler", 32), "m55": ("UARTRX0_IRQHandler", 33)}


def semihosting_calls(elf: Path) -> list[str]:
    """Every BKPT 0xAB (a semihosting call) in the ELF's code, from its disassembly."""
    return [f"{ln.function}+{ln.address:#x}" for ln in elfread.disassembly(elf).lines
            if ln.mnemonic == "bkpt" and int(ln.operands.split()[0], 0) == 0xAB]


def vector_table(elf: Path) -> tuple[int, list[int], dict[str, int]]:
    """(address, words) of the ELF's .isr_vector section, and its function symbols' addresses (Thumb bit clear)."""
    with open(elf, "rb") as f:
        ef = ELFFile(f)
        sec = ef.get_section_by_name(".isr_vector")
        data = sec.data()
        addr = sec["sh_addr"]
    words = list(struct.unpack(f"<{len(data) // 4}I", data))
    funcs = {s.name: s.address for s in elfread.read(elf).symbols if s.kind == "FUNC"}
    return addr, words, funcs


def check_vector_table(board_name: str, elf: Path) -> None:
    """16 + the chip's IRQ count words; named IRQs point at (weak) handlers, reserved ones are 0."""
    b = load_board(board_name)
    _, words, funcs = vector_table(elf)
    assert len(b.irqs) == IRQ_COUNT[board_name]
    assert len(words) == 16 + IRQ_COUNT[board_name], (board_name, len(words))
    assert words[1] & ~1 == funcs["Reset_Handler"] and words[1] & 1
    for n, name in enumerate(b.irqs):
        if name:
            assert words[16 + n] == funcs["Default_Handler"] | 1, (board_name, n, name)
        else:
            assert words[16 + n] == 0, (board_name, n)
    handler, n = UART_IRQ.get(board_name, ("UARTRX0_IRQHandler", 0))
    assert f"{b.irqs[n]}_IRQHandler" == handler


# --------------------------------------------------------------------------------------------- vector tables


@needs_tools
@pytest.mark.parametrize("name", EMULATED)
def test_emulated_vector_table_is_full_and_runs(name: str, tmp_path: Path) -> None:
    """Every emulated board: the table in the image has 16 + IRQ-count words, and the firmware still runs."""
    b = load_board(name)
    fw = build_fixture(b, HELLO, tmp_path, console="uart")
    check_vector_table(name, fw.elf)
    res = qemu.run(fw.elf, b, timeout=30, args=["hello"])
    assert res.stdout == "hello from kpgen\nKPGEN-EXIT status=0\n" and res.exit_code == 0


def test_chip_lists_match_the_manuals() -> None:
    for b in BOARDS:
        assert b.chip is not None and len(b.irqs) == IRQ_COUNT[b.name], b.name
    assert load_board("nucleo-f446re").irqs[81] == "FPU" and load_board("nucleo-h743zi").irqs[149] == "WAKEUP_PIN"
    assert load_board("netduinoplus2").irqs[61] == "" and load_board("stm32f4discovery").irqs[61] == "ETH"


# --------------------------------------------------------------------------------------------- clock set-up


def _step(board, addr: int) -> tuple[int, SetupStep]:
    found = [(i, s) for i, s in enumerate(board.clock.steps) if s.addr == addr]
    assert len(found) >= 1, hex(addr)
    return found[-1]


def _field(value: int, lo: int, width: int) -> int:
    return (value >> lo) & ((1 << width) - 1)


# Flash wait states by HCLK (MHz, upper bounds), from the reference manuals' tables at 2.7-3.6 V / range 1 / VOS1.
WAIT_STATES = {
    "stm32f446": [30, 60, 90, 120, 150, 180],  # RM0390: 'Number of wait states according to CPU clock (HCLK)'
    "stm32f407": [30, 60, 90, 120, 150, 168],  # RM0090: the same table for the F405/F407
    "stm32l476": [16, 32, 48, 64, 80],  # RM0351: 'Number of wait states according to HCLK frequency', range 1
    "stm32h743": [70, 140, 210, 225],  # RM0433: 'FLASH recommended number of wait states', VOS1 (ACLK)
}


def wait_states(chip: str, mhz: float) -> int:
    for ws, top in enumerate(WAIT_STATES[chip]):
        if mhz <= top:
            return ws
    raise AssertionError(f"{mhz} MHz is above {chip}'s rating")


@pytest.mark.parametrize("name", ["nucleo-f446re", "stm32f4discovery"])
def test_stm32f4_pll_and_wait_states(name: str) -> None:
    """The PLLCFGR the steps write gives the board's clock from the 16 MHz HSI, within the VCO ranges; FLASH_ACR
    gets the manual's wait states before the switch to the PLL; APB1 stays within 45/42 MHz."""
    b = load_board(name)
    _, pll = _step(b, 0x40023804)
    m, n, p = _field(pll.set, 0, 6), _field(pll.set, 6, 9), 2 * (_field(pll.set, 16, 2) + 1)
    assert _field(pll.set, 22, 1) == 0  # HSI
    assert 1.0 <= 16 / m <= 2.0 and 100 <= 16 / m * n <= 432
    assert 16e6 / m * n / p == b.clock.hz
    i_acr, acr = _step(b, 0x40023C00)
    i_sw, sw = _step(b, 0x40023808)
    assert _field(acr.set, 0, 4) == wait_states(b.chip, b.clock.hz / 1e6) == 5
    assert acr.wait and acr.expect == _field(acr.set, 0, 4)  # read back, as the manual asks
    assert sw.set & 3 == 2 and sw.wait == 0xC and sw.expect == 0x8 and i_acr < i_sw
    cfgr = next(s for s in b.clock.steps if s.addr == 0x40023808)
    apb1 = b.clock.hz / (1 << (_field(cfgr.set, 10, 3) - 3)) if _field(cfgr.set, 10, 3) >= 4 else b.clock.hz
    assert apb1 == b.uart.clock_hz and apb1 <= (45e6 if b.chip == "stm32f446" else 42e6)
    assert b.uart.reset_clock_hz == 16_000_000
    if b.chip == "stm32f446":  # 180 MHz needs over-drive: ODEN then ODSWEN, both waited for, before the switch
        i_od = [i for i, s in enumerate(b.clock.steps) if s.addr == 0x40007004]
        assert [b.clock.steps[i].wait for i in i_od] == [1 << 16, 1 << 17] and max(i_od) < i_sw


def test_l476_pll_and_wait_states() -> None:
    b = load_board("nucleo-l476rg")
    _, pll = _step(b, 0x4002100C)
    src, m, n = _field(pll.set, 0, 2), _field(pll.set, 4, 3) + 1, _field(pll.set, 8, 7)
    r = 2 * (_field(pll.set, 25, 2) + 1)
    assert src == 2 and pll.set & (1 << 24)  # HSI16, PLLREN
    assert 4 <= 16 / m <= 16 and 64 <= 16 / m * n <= 344 and 16e6 / m * n / r == b.clock.hz == 80e6
    i_acr, acr = _step(b, 0x40022000)
    i_sw, sw = _step(b, 0x40021008)
    assert _field(acr.set, 0, 3) == wait_states("stm32l476", 80) == 4 and i_acr < i_sw and sw.expect == 0xC
    assert b.uart.clock_hz == 80_000_000 and b.uart.reset_clock_hz == 4_000_000


def test_h743_pll_and_wait_states() -> None:
    b = load_board("nucleo-h743zi")
    _, sel = _step(b, 0x58024428)
    _, div = _step(b, 0x58024430)
    _, d1 = _step(b, 0x58024418)
    divm = _field(sel.set, 4, 6)
    n, p = _field(div.set, 0, 9) + 1, _field(div.set, 9, 7) + 1
    ref = 64e6 / divm
    assert _field(sel.set, 0, 2) == 0 and 8e6 <= ref <= 16e6 and 192e6 <= ref * n <= 836e6
    assert ref * n / p == b.clock.hz == 400e6
    hpre = 1 << (_field(d1.set, 0, 4) - 7) if _field(d1.set, 0, 4) >= 8 else 1
    aclk = b.clock.hz / hpre
    i_acr, acr = _step(b, 0x52002000)
    i_sw, _ = _step(b, 0x58024410)
    assert _field(acr.set, 0, 4) == wait_states("stm32h743", aclk / 1e6) == 2 and i_acr < i_sw
    assert _field(acr.set, 4, 2) == 2  # WRHIGHFREQ for 185-210 MHz
    i_vos, vos = _step(b, 0x58024818)
    assert _field(vos.set, 14, 2) == 3 and vos.wait == 1 << 13 and i_vos < i_acr
    assert b.uart.clock_hz == 100_000_000 and b.uart.reset_clock_hz == 64_000_000


def test_rp2040_and_nrf52840_clocks() -> None:
    b = load_board("rpi-pico")
    _, fb = _step(b, 0x40028008)
    _, prim = _step(b, 0x4002800C)
    vco = 12e6 * fb.set
    assert 750e6 <= vco <= 1600e6 and vco / (_field(prim.set, 16, 3) * _field(prim.set, 12, 3)) == b.clock.hz
    assert b.uart.clock_hz == 12_000_000  # clk_peri stays on the crystal
    n = load_board("nrf52840-dk")
    assert n.clock.hz == 64_000_000 and n.clock.steps[-1].wait == 0x00010001


def test_every_real_board_has_a_clock_and_no_emulated_one_does() -> None:
    for b in BOARDS:
        assert (b.clock is not None) == (not b.emulated), b.name
        if b.clock is not None:
            assert b.clock_hz == b.clock.hz and all(s.wait or s.clear or s.set for s in b.clock.steps)


@pytest.fixture
def board_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private copy of boards/ that load_board reads; write(base, edit) adds board 'b' edited from `base`."""
    import kpgen.target.boards as boards

    d = tmp_path / "boards"
    shutil.copytree(boards.BOARDS_DIR, d)
    monkeypatch.setattr(boards, "BOARDS_DIR", d)
    monkeypatch.setattr(boards, "CHIPS_DIR", d / "chips")

    def write(base: str, edit) -> str:
        text = (d / base / "board.toml").read_text()
        (d / "b").mkdir(exist_ok=True)
        (d / "b" / "board.toml").write_text(edit(text.replace(f'name = "{base}"', 'name = "b"')))
        return "b"

    return write


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t + "\n[clock]\nhz = 1\nsteps = [{ addr = 4 }]\n", "[clock] on an emulated board: QEMU models no PLL"),
    (lambda t: t.replace('chip = "cmsdk-mps2"', 'chip = "z80"'), "chip 'z80' has no file z80.toml in"),
    (lambda t: t.replace('chip = "cmsdk-mps2"', 'chip = "bad"'), "'irqs' must list 1 to 496 C identifiers"),
], ids=["clock-emulated", "chip-unknown", "chip-bad-irq"])
def test_board_start_up_errors(board_from, edit, needle: str) -> None:
    import kpgen.target.boards as boards

    (boards.CHIPS_DIR / "bad.toml").write_text('name = "bad"\nirqs = ["OK", "not an identifier"]\n')
    with pytest.raises(KpgenError) as e:
        load_board(board_from("m4", edit))
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t.replace("hz = 180000000", "hz = 0"), "[clock] needs hz > 0 and at least one step"),
    (lambda t: t.replace("{ addr = 0x40023840, set = 0x10000000 }", "{ addr = 0x40023840, sett = 1 }"),
     "[clock] steps are { addr = ..., clear = ..., set = ..., wait = ... } with 32-bit values; fix the list"),
], ids=["clock-hz", "clock-step"])
def test_board_clock_errors(board_from, edit, needle: str) -> None:
    with pytest.raises(KpgenError) as e:
        load_board(board_from("nucleo-f446re", edit))
    assert needle in str(e.value) and "\n" not in str(e.value)


@needs_tools
def test_polls_are_bounded_and_a_failed_clock_is_reported(tmp_path: Path) -> None:
    """A clock step whose poll can never succeed (bit 0 must read 2) gives up, the firmware says so in one line
    and runs on: the same start-up code as the real boards', run under QEMU on m4's memory map. A UART set-up step
    that never succeeds gives up too (the console still works on QEMU, which ignores it)."""
    m4 = load_board("m4")
    never = SetupStep(addr=0x20000000, wait=1, value=2)
    b = dataclasses.replace(m4, clock=ClockProfile(hz=1, steps=(SetupStep(0x20000004, set=0), never)),
                            uart=dataclasses.replace(m4.uart, setup=(never,)))
    shutil.copyfile(HELLO, tmp_path / "main.c")
    prepare_firmware_dir(b, tmp_path, ["main.c"], console="uart")
    assert "#define KPGEN_CLOCK_STEP_COUNT 2" in (tmp_path / "kpgen_chip.h").read_text()
    fw = toolchain.build(tmp_path, jobs=2)
    res = qemu.run(fw.elf, m4, timeout=60, args=["hello"])
    assert res.stdout == "KPGEN-CLOCK failed step=2\nhello from kpgen\nKPGEN-EXIT status=0\n", res.stdout
    assert res.exit_code == 0


# --------------------------------------------------------------------------------------------- real boards build


def _emit(example: str, board: str, out: Path, samples: int = 3, console: str | None = None) -> Path:
    args = ["emit", str(EXAMPLES / f"{example}.pt"), "--board", board, "-o", str(out), "--samples", str(samples)]
    res = CliRunner().invoke(main, args + (["--console", console] if console else []))
    assert res.exit_code == 0, res.output
    return out


@needs_tools
@pytest.mark.parametrize("name", REAL)
def test_real_board_project_builds_with_uart_vectors_and_clock(name: str, tmp_path: Path) -> None:
    """`make` of an emitted project for every real-board profile: UART console (no BKPT 0xAB), the chip's full
    vector table, the clock set-up compiled in; for the Pico, a boot2 with a good CRC and a fw.uf2 of fw.bin."""
    b = load_board(name)
    d = _emit("digits-fastrnn", name, tmp_path / "p")
    assert "KPGEN_CONSOLE_UART" in (d / "Makefile").read_text()
    chip_h = (d / "board" / "kpgen_chip.h").read_text()
    assert f"#define KPGEN_CLOCK_STEP_COUNT {len(b.clock.steps)}" in chip_h and f"{b.clock.hz}u" in chip_h
    done = subprocess.run(["make", "-C", str(d), "-j2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    elf = d / "fw.elf"
    assert semihosting_calls(elf) == []
    check_vector_table(name, elf)
    addr, _, funcs = vector_table(elf)
    assert addr == b.flash_origin + b.boot2_size and "kpgen_clock_init" in funcs
    if b.boot2_size:
        image = (d / "fw.bin").read_bytes()
        assert uf2.boot2_ok(image[:256]) and image[:2] == b"\x00\xb5"  # push {lr}: kpgen's boot2, not zeros
        blocks = uf2.read_uf2((d / "fw.uf2").read_bytes())
        assert b"".join(bl.payload for bl in blocks)[: len(image)] == image
        assert blocks[0].address == b.flash_origin and blocks[0].family_id == uf2.RP2040_FAMILY_ID


# --------------------------------------------------------------------------------------------- boot2 and UF2


def test_boot2_crc_and_padding() -> None:
    assert uf2.crc32_boot2(b"123456789") == 0x0376E6E7  # the CRC-32/MPEG-2 check value
    block = uf2.pad_boot2(b"\x00\xb5\x01\x02")
    assert len(block) == 256 and block[4:252] == bytes(248) and uf2.boot2_ok(block)
    assert struct.unpack("<I", block[252:])[0] == uf2.crc32_boot2(block[:252])
    assert uf2.pad_boot2(block) == block  # an already padded, checksummed boot2 passes through
    broken = bytes([block[0] ^ 1]) + block[1:]
    assert not uf2.boot2_ok(broken)
    with pytest.raises(ValueError, match="at most 252"):
        uf2.pad_boot2(bytes(253))
    assert (REPO / "boards" / "common" / "boot2_w25q.S").is_file()


def test_uf2_round_trip() -> None:
    image = bytes(range(256)) * 2 + b"tail"
    blob = uf2.write_uf2(image, 0x10000000)
    assert len(blob) == 3 * 512
    for k in range(3):
        head = struct.unpack_from("<8I", blob, 512 * k)
        assert head[:3] == (0x0A324655, 0x9E5D5157, 0x00002000)
        assert head[3:] == (0x10000000 + 256 * k, 256, k, 3, 0xE48BFF56)
        assert struct.unpack_from("<I", blob, 512 * k + 508)[0] == 0x0AB16F30
    blocks = uf2.read_uf2(blob)
    assert [bl.block_no for bl in blocks] == [0, 1, 2] and {bl.num_blocks for bl in blocks} == {3}
    assert b"".join(bl.payload for bl in blocks) == image + bytes(256 - 4)
    bad = bytearray(blob)
    bad[512 + 24] = 7  # block 1 claims to be number 7
    with pytest.raises(ValueError, match="block 1"):
        uf2.read_uf2(bytes(bad))
    bad = bytearray(blob)
    bad[1023] ^= 0xFF  # block 1's end magic
    with pytest.raises(ValueError, match="bad magic"):
        uf2.read_uf2(bytes(bad))
    with pytest.raises(ValueError, match="multiple of 256"):
        uf2.write_uf2(image, 0x10000001)


def test_uf2_tool_runs_standalone(tmp_path: Path) -> None:
    """The copy the Makefile runs needs only the standard library, and says what is wrong in one line."""
    tool = tmp_path / "kpgen_uf2.py"
    shutil.copyfile(REPO / "kpgen" / "target" / "uf2.py", tool)
    (tmp_path / "code.bin").write_bytes(b"\x00\xb5" * 10)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-I", str(tool), "boot2", "code.bin", "b.S"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "b.S").read_text().count(".byte") == 16
    (tmp_path / "big.bin").write_bytes(bytes(300))
    done = subprocess.run([sys.executable, "-I", str(tool), "boot2", "big.bin", "b.S"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "at most 252" in done.stderr


# --------------------------------------------------------------------------------------------- measured cycles


def test_measured_cycles_are_labelled_and_never_faked() -> None:
    hw = cycles.measured_cycles("x\nKPGEN-CYCLES timer=dwt runs=3 first=123456 min=120000 max=130000\nKPGEN-END")
    assert hw == cycles.MeasuredCycles("dwt", 3, 123456, 120000, 130000)
    text = cycles.describe_measured(hw, emulated=False, clock_hz=180_000_000)
    assert text.startswith("123,456 (sample 0, 0.686 ms at 180 MHz; 120,000 to 130,000 over 3 samples; DWT CYCCNT")
    assert "measured on the board" in text
    # under an emulator no number is ever shown, whatever the line says
    for line in ("KPGEN-CYCLES timer=dwt runs=3 first=123456 min=1 max=2", "KPGEN-CYCLES timer=systick not-cycles",
                 "KPGEN-CYCLES timer=dwt stopped", ""):
        said = cycles.describe_measured(cycles.measured_cycles(line), emulated=True)
        assert said.startswith("not measured (emulator") and not any(c in said for c in "123456789"), said
    assert "did not advance" in cycles.describe_measured(cycles.MeasuredCycles("dwt", problem="stopped"), False)
    assert "2^24" in cycles.describe_measured(cycles.MeasuredCycles("systick", problem="overflow"), False)
    assert "printed no KPGEN-CYCLES" in cycles.describe_measured(None, False)


# --------------------------------------------------------------------------------------------- shipped examples


@needs_tools
@pytest.mark.parametrize("name, example", [("m4", "mnist-kplstm"), ("netduinoplus2", "digits-fastrnn"),
                                           ("m0", "digits-fastrnn"), ("m0", "digits-fastgrnn-hkp")])
def test_shipped_examples_bit_exact_over_uart(name: str, example: str, tmp_path: Path) -> None:
    """The issue's "done when": shipped examples bit-exact over the UART on m4, netduinoplus2 and microbit (m0), with
    no BKPT 0xAB in the image; the report says the cycles were not measured (emulator), next to the estimate."""
    from kpgen.pipeline import run_project
    from kpgen.target.report import format_report

    d = _emit(example, name, tmp_path / "p", samples=4)
    rep = run_project(d, timeout=300)
    assert rep.passed and rep.verification.exact == 4, (rep.problem, rep.verification.problems)
    assert semihosting_calls(d / "fw.elf") == [] and qemu.console_of(d / "fw.elf") == "uart"
    assert rep.measured_cycles is not None
    assert rep.measured_cycles.problem == ("not-cycles" if name == "m0" else "stopped")
    text = format_report(rep)
    row = [ln for ln in text.splitlines() if "measured cycles per inference" in ln]
    assert len(row) == 1 and "not measured (emulator" in row[0]
    assert "estimated cycles per inference" in text


# --------------------------------------------------------------------------------------------- kpgen flash --port


@pytest.fixture(scope="module")
def uart_project(tmp_path_factory):
    """digits-fastrnn for m4 (UART console), built, and what its firmware prints under QEMU."""
    d = _emit("digits-fastrnn", "m4", tmp_path_factory.mktemp("port") / "p")
    built = toolchain.build(d)
    out = qemu.run(built.elf, load_board("m4"), timeout=120).stdout
    assert out.endswith("KPGEN-EXIT status=0\n")
    return d, out


def _pty_board(text: str, monkeypatch: pytest.MonkeyPatch, delay: float = 0.2) -> str:
    """A pseudo-terminal standing in for a board's serial line: once the image is "loaded", the board prints
    `text` (CR LF line ends, in pieces) on it. Returns the device name kpgen opens."""
    master, slave = os.openpty()
    name = os.ttyname(slave)

    def load(p, timeout, echo) -> None:
        def board() -> None:
            time.sleep(delay)
            data = text.replace("\n", "\r\n").encode()
            for i in range(0, len(data), 97):
                os.write(master, data[i:i + 97])
        threading.Thread(target=board, daemon=True).start()

    monkeypatch.setattr(flashing, "_load_only", load)
    monkeypatch.setattr(flashing, "check_probe_tools", lambda probe: None)
    return name


@needs_tools
def test_flash_port_reads_the_report_from_a_serial_line(uart_project, monkeypatch: pytest.MonkeyPatch) -> None:
    d, out = uart_project
    port = _pty_board(out, monkeypatch)
    p = dataclasses.replace(flashing.plan(d, probe="qemu"), probe="openocd")
    res = flashing.flash(p, timeout=60, port=port)
    assert res.exit_code == 0 and not res.timed_out and res.output == out
    from kpgen.pipeline import read_manifest
    from kpgen.target.verify import verify_output

    assert verify_output(res.output, read_manifest(d)["vectors"]).passed
    assert cycles.measured_cycles(res.output) == cycles.MeasuredCycles("dwt", problem="stopped")


@needs_tools
def test_flash_port_status_comes_from_the_exit_line(uart_project, monkeypatch: pytest.MonkeyPatch) -> None:
    d, out = uart_project
    p = dataclasses.replace(flashing.plan(d, probe="qemu"), probe="openocd")
    port = _pty_board(out.replace("KPGEN-EXIT status=0", "KPGEN-EXIT status=1"), monkeypatch)
    assert flashing.flash(p, timeout=60, port=port).exit_code == 1
    port = _pty_board(out[: out.index("KPGEN-END")], monkeypatch)  # the board stops talking: no end line
    res = flashing.flash(p, timeout=2, port=port)
    assert res.timed_out and res.exit_code is None


@needs_tools
def test_kpgen_flash_port_cli(uart_project, board_from, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line: an m4 with an OpenOCD target (board copy), the report read from the pty, checked."""
    d, out = uart_project
    import kpgen.target.boards as boards

    toml = boards.BOARDS_DIR / "m4" / "board.toml"
    toml.write_text(toml.read_text() + '\n[flash]\nopenocd_args = ["-f", "board/x.cfg"]\n')
    port = _pty_board(out, monkeypatch)
    res = CliRunner().invoke(main, ["flash", str(d), "--probe", "openocd", "--port", port, "--timeout", "60"])
    assert res.exit_code == 0, res.output
    assert "m4 via openocd and " + port + ": exit status 0; bit-exact samples 3/3" in res.output
    assert "measured cycles per inference: not measured (DWT CYCCNT did not advance" in res.output
    res = CliRunner().invoke(main, ["flash", str(d), "--probe", "openocd", "--port", port, "--dry-run"])
    assert res.exit_code == 0 and "program " in res.output and "verify reset exit" in res.output
    assert f"then: read the report from {port} at 115200 baud" in res.output


@needs_tools
def test_flash_port_errors(uart_project, tmp_path: Path) -> None:
    d, _ = uart_project
    res = CliRunner().invoke(main, ["flash", str(d), "--probe", "qemu", "--port", "/dev/null"])
    assert res.exit_code == 2 and "--port reads a real board's serial line" in res.stderr
    s = _emit("digits-fastrnn", "nucleo-f446re", tmp_path / "s", console="semihosting")
    res = CliRunner().invoke(main, ["flash", str(s), "--port", "/dev/null", "--dry-run"])
    assert res.exit_code == 2 and "was emitted with --console semihosting" in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1


@needs_tools
def test_flash_port_failures(uart_project, board_from, monkeypatch: pytest.MonkeyPatch) -> None:
    """openocd failing to load (no such probe script) and a serial line that goes away are one-line errors."""
    d, out = uart_project
    import kpgen.target.boards as boards

    toml = boards.BOARDS_DIR / "m4" / "board.toml"
    toml.write_text(toml.read_text() + '\n[flash]\nopenocd_args = ["-f", "board/kpgen-no-such-board.cfg"]\n')
    master, slave = os.openpty()
    p = flashing.plan(d, probe="openocd", port=os.ttyname(slave))
    assert p.commands[0][-1].endswith("verify reset exit")
    if shutil.which("openocd") is not None:
        with pytest.raises(KpgenError, match=r"openocd could not load .*; check the probe connection"):
            flashing.flash(p, timeout=60, port=os.ttyname(slave))

    def load(p, timeout, echo) -> None:
        os.write(master, out[:200].encode())
        os.close(master)  # the device vanishes (a USB cable pulled)

    monkeypatch.setattr(flashing, "_load_only", load)
    with pytest.raises(KpgenError, match=r"lost .* while reading the firmware's report .*; check the cable"):
        flashing.flash(p, timeout=20, port=os.ttyname(slave))
