"""The UART console: firmware without semihosting on every emulated board, its end-of-run line and reset, the
host arguments placed by QEMU's loader device, and `kpgen emit --console` / `kpgen run` over the serial port."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from firmware import build_fixture

from kpgen import KpgenError
from kpgen.cli import main
from kpgen.target import elf as elfread
from kpgen.target import qemu, toolchain
from kpgen.target.boards import list_boards, load_board

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(any(shutil.which(t) is None for t in toolchain.ALL_TOOLS),
                       reason="needs arm-none-eabi-gcc, make and qemu-system-arm"),
]

REPO = Path(__file__).resolve().parents[1]
HELLO = Path(__file__).parent / "fixtures" / "hello" / "main.c"
EMULATED = [b.name for b in list_boards() if b.emulated]
REAL = [b.name for b in list_boards() if not b.emulated]


def semihosting_calls(elf: Path) -> list[str]:
    """Every BKPT 0xAB (a semihosting call) in the ELF's code, from its disassembly."""
    return [f"{ln.function}+{ln.address:#x}" for ln in elfread.disassembly(elf).lines
            if ln.mnemonic == "bkpt" and int(ln.operands.split()[0], 0) == 0xAB]


def one_line_error(res, *words: str) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kpgen: error: "), res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def hello_m4(tmp_path_factory):
    """The hello fixture for m4 with each console."""
    return {c: build_fixture(load_board("m4"), HELLO, tmp_path_factory.mktemp(f"hello-{c}"), console=c)
            for c in ("uart", "semihosting")}


def test_every_board_has_a_uart_and_uses_it_by_default() -> None:
    for b in list_boards():
        assert b.uart is not None and b.default_console == "uart", b.name
        assert (REPO / "boards" / "common" / b.uart.driver).is_file()
        assert (b.uart.qemu_serial is not None) == b.emulated


def test_uart_image_has_no_semihosting(hello_m4) -> None:
    """The UART build contains no BKPT 0xAB at all, nor rdimon; the semihosting build does (the check can fail)."""
    assert semihosting_calls(hello_m4["uart"].elf) == []
    assert semihosting_calls(hello_m4["semihosting"].elf)
    names = {s.name for s in elfread.read(hello_m4["uart"].elf).symbols}
    assert "initialise_monitor_handles" not in names and qemu.HOST_ARGS in names
    assert qemu.console_of(hello_m4["uart"].elf) == "uart"
    assert qemu.console_of(hello_m4["semihosting"].elf) == "semihosting"


def test_uart_run_ends_with_the_status_line(hello_m4) -> None:
    elf, b = hello_m4["uart"].elf, load_board("m4")
    cmd = qemu.qemu_command(elf, b, ["exit", "7"])
    assert "-no-reboot" in cmd and "-semihosting-config" not in cmd and cmd[cmd.index("-serial") + 1] == "stdio"
    res = qemu.run(elf, b, timeout=30, args=["exit", "7"])
    assert res.stdout.endswith("exiting with 7\nKPGEN-EXIT status=7\n") and res.exit_code == 7
    assert res.problem == "the firmware exited with status 7"
    res = qemu.run(elf, b, timeout=30, args=["echo", "a,b", "c"])
    assert "cmdline=[echo a,b c]" in res.stdout and res.exit_code == 0 and res.problem is None
    res = qemu.run(elf, b, timeout=30, args=["udf"])
    assert res.fault_pc is not None and res.exit_code == qemu.FAULT_EXIT_STATUS
    assert res.stdout.rstrip().endswith("KPGEN-EXIT status=3")
    res = qemu.run(elf, b, timeout=3, args=["hang"])
    assert res.timed_out and res.exit_code is None
    with pytest.raises(KpgenError, match="do not fit the UART console's 120"):
        qemu.run(elf, b, args=["x" * 121])
    with pytest.raises(KpgenError, match="has no kpgen_host_args"):
        qemu.host_args_devices(hello_m4["semihosting"].elf, ["profile"])


def test_uart_run_without_its_end_line_fails() -> None:
    """QEMU exiting 0 proves nothing on the UART console: without the firmware's line the run failed."""
    done = qemu.proc.Completed(("qemu",), 0, b"KPGEN-BEGIN\n", b"", False, False, 0.1)
    res = qemu._result(done, 1 << 20, 10.0, "uart")
    assert res.exit_code is None and res.no_end_line and "end-of-run line" in (res.problem or "")
    assert qemu.firmware_status("uart", 0, "x\nKPGEN-EXIT status=0\n") == 0
    assert qemu.firmware_status("uart", 134, "KPGEN-EXIT status=0\n") == 134  # a lockup stays a lockup
    assert qemu.firmware_status("semihosting", 5, "") == 5


@pytest.mark.parametrize("name", EMULATED)
def test_uart_console_on_every_emulated_board(name: str, tmp_path: Path) -> None:
    """Each UART family prints, passes arguments, ends with its status, and counts instructions exactly as
    semihosting does (spin(N): 2N + 5)."""
    b = load_board(name)
    fw = build_fixture(b, HELLO, tmp_path, console="uart")
    assert semihosting_calls(fw.elf) == []
    res = qemu.run(fw.elf, b, timeout=30, args=["hello"])
    assert res.stdout == "hello from kpgen\nKPGEN-EXIT status=0\n" and res.exit_code == 0, (res.stdout, res.stderr)
    assert qemu.run(fw.elf, b, timeout=30, args=["exit", "5"]).exit_code == 5
    for n in (1, 100):
        assert qemu.count_instructions(fw.elf, b, args=["spin", str(n)], timeout=60).total == 2 * n + 5


@pytest.mark.parametrize("name", REAL)
def test_real_board_uart_drivers_build(name: str, tmp_path: Path) -> None:
    """The UART drivers QEMU does not emulate (STM32 second layout, nRF52 UARTE, RP2040 PL011, the real STM32F4s)
    compile cleanly with -Werror and link without semihosting."""
    from kpgen.target.boards import prepare_firmware_dir

    b = load_board(name)
    shutil.copyfile(HELLO, tmp_path / "main.c")
    prepare_firmware_dir(b, tmp_path, ["main.c"], console="uart")
    fw = toolchain.build(tmp_path, jobs=2)
    assert semihosting_calls(fw.elf) == []
    header = (tmp_path / "kpgen_console.h").read_text()
    assert f"#define KPGEN_UART_BASE 0x{b.uart.base:08X}u" in header
    assert f"#define KPGEN_UART_SETUP_COUNT {len(b.uart.setup)}" in header


@pytest.fixture(scope="module")
def mnist_m4(tmp_path_factory):
    """The MNIST example emitted for m4 with each console."""
    out = {}
    for console in ("uart", "semihosting"):
        d = tmp_path_factory.mktemp(f"mnist-{console}") / "p"
        res = CliRunner().invoke(main, ["emit", str(REPO / "examples" / "mnist-kplstm.pt"), "--board", "m4", "-o",
                                        str(d), "--samples", "5", "--console", console])
        assert res.exit_code == 0, res.output
        out[console] = d
    return out


def test_emit_records_the_console(mnist_m4, tmp_path: Path) -> None:
    for console, d in mnist_m4.items():
        assert json.loads((d / "kpgen.json").read_text())["console"] == console
        assert ("KPGEN_CONSOLE_UART" in (d / "Makefile").read_text()) == (console == "uart")
        assert ("nosys.specs" in (d / "CMakeLists.txt").read_text()) == (console == "uart")
    assert (mnist_m4["uart"] / "board" / "kpgen_console.h").is_file()
    d = tmp_path / "default"
    res = CliRunner().invoke(main, ["emit", str(REPO / "examples" / "digits-fastrnn.pt"), "--board", "m0", "-o",
                                    str(d), "--samples", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((d / "kpgen.json").read_text())["console"] == "uart"
    assert "uart_nrf51.c" in (d / "Makefile").read_text()


def test_run_over_uart_is_bit_exact_with_the_same_counts(mnist_m4) -> None:
    """`kpgen run` reads the report from QEMU's serial port: bit-exact, and one inference executes exactly the
    same instructions, function by function, as the semihosting build."""
    from kpgen.pipeline import run_project

    reps = {c: run_project(d, timeout=300) for c, d in mnist_m4.items()}
    for c, rep in reps.items():
        assert rep.passed and rep.verification.exact == 5, (c, rep.problem, rep.verification.problems)
    assert reps["uart"].instructions == reps["semihosting"].instructions
    model = lambda pf: {k: v for k, v in pf.items() if k.startswith(("kp_", "model_"))}  # noqa: E731
    assert model(reps["uart"].per_function) == model(reps["semihosting"].per_function)
    assert semihosting_calls(mnist_m4["uart"] / "fw.elf") == []


def test_flash_through_gdb_on_the_uart_console(mnist_m4) -> None:
    """`kpgen flash` (QEMU's GDB server) starts a UART image without a system reset, which -no-reboot would
    turn into QEMU exiting, and takes the status from the end-of-run line."""
    if shutil.which("gdb-multiarch") is None:
        pytest.skip("needs gdb-multiarch")
    res = CliRunner().invoke(main, ["flash", str(mnist_m4["uart"]), "--timeout", "60"])
    assert res.exit_code == 0, res.output
    assert "m4 via qemu: exit status 0; bit-exact samples 5/5" in res.output


def test_console_errors(tmp_path: Path) -> None:
    ex = str(REPO / "examples" / "digits-fastrnn.pt")
    res = CliRunner().invoke(main, ["emit", ex, "--board", "m4", "-o", str(tmp_path / "x"), "--console", "jtag"])
    assert res.exit_code == 2 and "'jtag' is not one of" in res.stderr
    res = CliRunner().invoke(main, ["emit", ex, "--board", "m4", "-o", str(tmp_path / "v"), "--target", "validate",
                                    "--console", "semihosting"])
    one_line_error(res, "--target validate talks to the host over the board's UART", "--console uart")
    from kpgen.target.boards import check_console

    with pytest.raises(KpgenError, match="unknown console 'jtag'"):
        check_console(load_board("m4"), "jtag")


def test_objdump_agrees_there_is_no_bkpt(hello_m4) -> None:
    """The same check with objdump's own text, independent of kpgen's disassembly parser."""
    text = subprocess.run(["arm-none-eabi-objdump", "-d", str(hello_m4["uart"].elf)], capture_output=True,
                          text=True, check=True).stdout
    assert "bkpt" not in text
    text = subprocess.run(["arm-none-eabi-objdump", "-d", str(hello_m4["semihosting"].elf)], capture_output=True,
                          text=True, check=True).stdout
    assert "bkpt\t0x00ab" in text


@pytest.fixture
def board_from_m4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private copy of boards/ that load_board reads; returns a function writing a board 'b' from m4's."""
    import kpgen.target.boards as boards

    d = tmp_path / "boards"
    shutil.copytree(boards.BOARDS_DIR, d)
    monkeypatch.setattr(boards, "BOARDS_DIR", d)
    m4 = (d / "m4" / "board.toml").read_text()

    def write(edit) -> str:
        (d / "b").mkdir(exist_ok=True)
        (d / "b" / "board.toml").write_text(edit(m4.replace('name = "m4"', 'name = "b"')))
        return "b"

    return write


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t.replace('family = "cmsdk"', 'family = "16550"'),
     "[uart] family '16550' is unknown; use one of: cmsdk"),
    (lambda t: t.replace('family = "cmsdk"', 'family = "nrf51"').replace("baud = 115200", "baud = 100000"),
     "[uart] baud 100000 is not a rate the nRF UART has; use one of: 9600"),
    (lambda t: t.replace("baud = 115200", "baud = 0"), "[uart] needs baud > 0 and clock_hz >= baud; fix the values"),
    (lambda t: t.replace("clock_hz = 25000000", "clock_hz = 25000000\nsetup = [{ set = 1 }]"),
     "[uart] setup steps are { addr = ..., clear = ..., set = ..., wait = ... } with 32-bit values; fix the list"),
    (lambda t: t.replace("clock_hz = 25000000", "clock_hz = 25000000\nsetup = [{ addr = 0x100000000 }]"),
     "[uart] setup steps are"),
], ids=["family", "nrf-baud", "baud", "setup-addr", "setup-range"])
def test_board_uart_errors(board_from_m4, edit, needle: str) -> None:
    with pytest.raises(KpgenError) as e:
        load_board(board_from_m4(edit))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_board_without_uart(board_from_m4) -> None:
    """A board with no [uart] defaults to semihosting and refuses --console uart in one line."""
    from kpgen.target.boards import check_console

    name = board_from_m4(lambda t: t[: t.index("[uart]")])
    b = load_board(name)
    assert b.uart is None and b.default_console == "semihosting" and check_console(b, None) == "semihosting"
    with pytest.raises(KpgenError, match=r"board b has no \[uart\] in its board.toml; use --console semihosting"):
        check_console(b, "uart")
