"""Shipping: emitted projects that build without kpgen (make and CMake, firmware and library), every board
profile built, `kpgen flash` (dry runs for the real boards, a real load through QEMU's GDB server for the
emulated ones), the netduinoplus2 real-chip memory map run bit-exact, and models too big for a board refused."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import types
from enum import Enum
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kpgen import KpgenError
from kpgen.cli import main
from kpgen.codegen import fit
from kpgen.pipeline import emit_project, read_manifest
from kpgen.target import flash as flashing
from kpgen.target import qemu, toolchain
from kpgen.target.boards import BOARDS_DIR, list_boards, load_board
from kpgen.target.verify import verify_output

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist-kplstm.pt"
REPO = Path(__file__).resolve().parents[1]
ALL_BOARDS = [b.name for b in list_boards()]
REAL_BOARDS = [b.name for b in list_boards() if not b.emulated]
NEEDS_CMAKE = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")

APP_C = r"""/* A user's firmware calling the library: streaming steps, then the scores; checked against the
 * reference. */
#include <stdio.h>

#include "model.h"
#include "vectors.h"

int main(void)
{
    int32_t s, t, k, bad = 0;
    for (s = 0; s < KPGEN_SAMPLES; s++) {
        int32_t scores[MODEL_NUM_CLASSES], again[MODEL_NUM_CLASSES];
        int32_t best;
        model_reset();
        for (t = 0; t < KPGEN_STEPS; t++) {
            model_step(kpgen_inputs[s] + t * MODEL_INPUT_SIZE);
        }
        best = model_scores(scores);
        if (model_run(kpgen_inputs[s], KPGEN_STEPS, again) != best) {
            bad++;
        }
        for (k = 0; k < MODEL_NUM_CLASSES; k++) {
            bad += (scores[k] != kpgen_expected_scores[s][k]) + (again[k] != scores[k]);
        }
        printf("sample %ld class %ld\n", (long)s, (long)best);
    }
    printf("mismatches %ld\n", (long)bad);
    return bad != 0;
}
"""

PARENT_CMAKE = """cmake_minimum_required(VERSION 3.16)
project(user_firmware C)
add_subdirectory({lib} model)
add_executable(app app.c vectors.c {fw}/board/startup.c {fw}/board/kpgen_target.c)
target_include_directories(app PRIVATE . {fw}/board)
target_compile_options(app PRIVATE -mcpu=cortex-m4 -mthumb -mfloat-abi=soft)
target_link_options(app PRIVATE -mcpu=cortex-m4 -mthumb -mfloat-abi=soft --specs=nano.specs --specs=rdimon.specs
                    -nostartfiles -T{fw}/link.ld)
target_link_libraries(app PRIVATE model)
"""


def clean_env(home: Path) -> dict[str, str]:
    """No PYTHONPATH, no virtualenv, the venv's bin off PATH: nothing of kpgen is reachable."""
    venv_bin = Path(sys.executable).parent.resolve()
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p and Path(p).resolve() != venv_bin]
    return {"PATH": os.pathsep.join(path), "HOME": str(home), "LANG": "C.UTF-8"}


def sh(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{shlex.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def emit(board: str, out: Path, *extra: str, vectors: Path, samples: int = 3) -> Path:
    res = CliRunner().invoke(
        main, ["emit", str(EXAMPLE), "--board", board, "-o", str(out), "--vectors", str(vectors),
               "--samples", str(samples), *extra]
    )
    assert res.exit_code == 0, res.output
    return out


def one_line_error(res, *words: str) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kpgen: error: "), res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shipping")


@pytest.fixture(scope="module")
def vectors(work: Path) -> Path:
    """Three MNIST-shaped sequences (28 steps of 28 values in [0, 1]); no labels, so emit skips accuracy."""
    path = work / "vectors.npz"
    np.savez(path, x=np.random.default_rng(5).uniform(0.0, 1.0, size=(3, 28, 28)))
    return path


@pytest.fixture(scope="module")
def projects(work: Path, vectors: Path) -> dict[str, Path]:
    """The m4 test firmware and library, emitted once."""
    return {
        "firmware": emit("m4", work / "m4-fw", vectors=vectors),
        "lib": emit("m4", work / "m4-lib", "--target", "lib", vectors=vectors),
    }


@pytest.fixture(scope="module")
def outside(work: Path, projects: dict[str, Path]) -> dict[str, Path]:
    """The m4 firmware copied out of the tree and built with plain make and with CMake, in a clean env."""
    src = work / "outside-src"
    shutil.copytree(projects["firmware"], src)
    env = clean_env(work)
    probe = subprocess.run(["python3", "-c", "import kpgen"], cwd=src, env=env, capture_output=True)
    assert probe.returncode != 0, "kpgen must not be importable in the clean environment"
    sh(["make", "-j2"], src, env)
    sh(["cmake", "-S", str(src), "-B", str(work / "outside-cmake")], work, env)
    sh(["cmake", "--build", str(work / "outside-cmake"), "-j2"], work, env)
    return {"make": src, "cmake": work / "outside-cmake"}


# --------------------------------------------------------------------------------------------- emitted projects


@NEEDS_CMAKE
def test_firmware_builds_outside_kpgen_with_make_and_cmake(outside: dict[str, Path]) -> None:
    for how, d in outside.items():
        for f in ("fw.elf", "fw.hex", "fw.bin", "fw.map", "size.txt"):
            assert (d / f).is_file() and (d / f).stat().st_size > 0, (how, f)
        report = (d / "size.txt").read_text()
        assert "text" in report and "fw.elf" in report and ".rodata" in report, how
        assert "board m4: flash 4194304 bytes at 0x00000000, RAM 4194304 bytes at 0x20000000" in report, how
    # nothing in the emitted project points back into kpgen's tree
    for f in outside["make"].rglob("*"):
        if f.is_file() and f.suffix in (".c", ".h", ".ld", ".txt", ".cmake", "") and "obj" not in f.parts:
            assert str(REPO) not in f.read_text(errors="replace"), f


@NEEDS_CMAKE
@pytest.mark.qemu
def test_outside_builds_run_bit_exact(outside: dict[str, Path], projects: dict[str, Path]) -> None:
    vec = read_manifest(projects["firmware"])["vectors"]
    for how, d in outside.items():
        res = qemu.run(d / "fw.elf", "m4", timeout=60)
        assert res.exit_code == 0, (how, res.stdout, res.stderr)
        ver = verify_output(res.stdout, vec)
        assert ver.passed and ver.exact == 3, (how, ver.problems)


def test_library_project_has_no_firmware_parts(projects: dict[str, Path]) -> None:
    lib = projects["lib"]
    names = sorted(str(p.relative_to(lib)) for p in lib.rglob("*") if p.is_file())
    for absent in ("main.c", "vectors.c", "vectors.h", "link.ld", "board/startup.c"):
        assert absent not in names
    for present in ("model.h", "model.c", "Makefile", "CMakeLists.txt", "arm-none-eabi.cmake", "kpgen.json"):
        assert present in names
    assert any(n.startswith("runtime/") and n.endswith(".c") for n in names)
    header = (lib / "model.h").read_text()
    for api in ("void model_reset(void);", "int32_t model_step(const int8_t *x);",
                "int32_t model_scores(int32_t *scores);",
                "int32_t model_run(const int8_t *seq, int32_t steps, int32_t *scores);"):
        assert api in header
    res = CliRunner().invoke(main, ["run", str(lib)])
    one_line_error(res, "library", "--target firmware")


@NEEDS_CMAKE
def test_library_builds_outside_kpgen_with_make_and_cmake(work: Path, projects: dict[str, Path]) -> None:
    src = work / "lib-src"
    shutil.copytree(projects["lib"], src)
    env = clean_env(work)
    sh(["make", "-j2"], src, env)
    sh(["cmake", "-S", str(src), "-B", str(work / "lib-cmake")], work, env)
    sh(["cmake", "--build", str(work / "lib-cmake"), "-j2"], work, env)
    for d in (src, work / "lib-cmake"):
        assert (d / "libmodel.a").is_file() and "(TOTALS)" in (d / "size.txt").read_text()
        nm = sh(["arm-none-eabi-nm", "-g", str(d / "libmodel.a")], work).stdout
        defined = {ln.split()[-1] for ln in nm.splitlines() if " T " in ln}
        assert {"model_reset", "model_step", "model_scores", "model_run"} <= defined
        undefined = {ln.split()[-1] for ln in nm.splitlines() if ln.strip().startswith("U ")}
        assert not {"main", "printf", "initialise_monitor_handles", "exit", "Reset_Handler"} & (defined | undefined)
        assert not any(s.startswith("kpgen_") for s in undefined), undefined


def test_library_on_the_host_matches_the_reference(work: Path, projects: dict[str, Path]) -> None:
    """The documented host build (make CROSS= ARCH=) linked into a plain C program: streaming API == reference."""
    src = work / "lib-host"
    shutil.copytree(projects["lib"], src)
    sh(["make", "-j2", "CROSS=", "ARCH="], src, clean_env(work))
    app = work / "app-host"
    app.mkdir()
    (app / "app.c").write_text(APP_C)
    for f in ("vectors.c", "vectors.h"):
        shutil.copyfile(projects["firmware"] / f, app / f)
    sh(["cc", "-std=c99", "-Wall", "-Werror", "-I.", f"-I{src}", "app.c", "vectors.c", str(src / "libmodel.a"),
        "-o", "app"], app)
    out = sh([str(app / "app")], app).stdout
    assert "mismatches 0" in out


@NEEDS_CMAKE
@pytest.mark.qemu
def test_library_in_an_existing_firmware_via_add_subdirectory(work: Path, projects: dict[str, Path]) -> None:
    """A user's CMake firmware adds the library with add_subdirectory and calls its API; run under QEMU."""
    app = work / "user-fw"
    app.mkdir()
    fw = projects["firmware"]
    (app / "app.c").write_text(APP_C)
    for f in ("vectors.c", "vectors.h"):
        shutil.copyfile(fw / f, app / f)
    (app / "CMakeLists.txt").write_text(PARENT_CMAKE.format(lib=projects["lib"], fw=fw))
    env = clean_env(work)
    sh(["cmake", "-S", str(app), "-B", str(app / "build"),
        f"-DCMAKE_TOOLCHAIN_FILE={projects['lib'] / 'arm-none-eabi.cmake'}"], work, env)
    sh(["cmake", "--build", str(app / "build"), "-j2"], work, env)
    res = qemu.run(app / "build" / "app", "m4", timeout=60)
    assert res.exit_code == 0 and "mismatches 0" in res.stdout, (res.stdout, res.stderr)


# --------------------------------------------------------------------------------------------- every board


@pytest.fixture(scope="module")
def example_q():
    """The shipped example, quantized (for the fit estimates)."""
    from kpgen.frontend.load import load_checkpoint
    from kpgen.quant import quantize

    return quantize.quantize_model(load_checkpoint(EXAMPLE))


@pytest.fixture(scope="module")
def board_projects(work: Path, vectors: Path) -> dict[str, Path]:
    return {b: emit(b, work / "boards" / b, vectors=vectors, samples=1) for b in ALL_BOARDS}


@pytest.mark.parametrize("name", ALL_BOARDS)
def test_every_board_profile_builds(name: str, board_projects: dict[str, Path], work: Path, example_q) -> None:
    """Compile and link for every board (real ones included) with make and with CMake; the image starts where
    the board boots."""
    b = load_board(name)
    d = board_projects[name]
    sh(["make", "-j2"], d, clean_env(work))
    assert (d / "size.txt").read_text().rstrip().endswith(f"heap {b.heap_size} reserved)")
    heads = sh(["arm-none-eabi-objdump", "-h", str(d / "fw.elf")], d).stdout
    vec = next(ln.split() for ln in heads.splitlines() if ".isr_vector" in ln)
    assert int(vec[3], 16) == b.flash_origin + b.boot2_size, heads
    sizes = toolchain.elf_sizes(d / "fw.elf")
    assert sizes["text"] + sizes["data"] <= b.flash_size and sizes["data"] + sizes["bss"] <= b.ram_size
    est = fit.estimate(example_q, b, "firmware", vector_samples=1, steps=28)  # a lower bound: never above the real
    assert est.flash <= sizes["text"] + sizes["data"] and est.ram <= sizes["data"] + sizes["bss"] + b.stack_size
    # the same project with CMake, outside the source directory, gives the same image
    cm = work / "boards-cmake" / name
    sh(["cmake", "-S", str(d), "-B", str(cm)], work, clean_env(work))
    sh(["cmake", "--build", str(cm), "-j2"], work, clean_env(work))
    assert (cm / "fw.elf").is_file() and (cm / "fw.hex").stat().st_size > 0
    cm_sizes = toolchain.elf_sizes(cm / "fw.elf")
    assert cm_sizes["text"] + cm_sizes["data"] <= b.flash_size and cm_sizes["data"] + cm_sizes["bss"] <= b.ram_size


def test_real_board_is_refused_by_run(board_projects: dict[str, Path]) -> None:
    res = CliRunner().invoke(main, ["run", str(board_projects["nucleo-f446re"])])
    one_line_error(res, "nucleo-f446re", "QEMU", "kpgen flash")


def test_rp2040_boot2(work: Path, board_projects: dict[str, Path]) -> None:
    """The default build starts with kpgen's own boot2 (its CRC as the boot ROM checks it) and writes fw.uf2; a
    user's padded boot2 given with make BOOT2= lands in the first 256 bytes as it is."""
    from kpgen.target import uf2

    d = board_projects["rpi-pico"]
    sh(["make", "-j2"], d, clean_env(work))
    assert uf2.boot2_ok((d / "fw.bin").read_bytes()[:256]) and (d / "fw.uf2").is_file()
    fake = work / "boot2.S"
    fake.write_text('\t.section .boot2, "ax"\n' + "".join(f"\t.byte {i % 251 + 1}\n" for i in range(256)))
    sh(["make", "clean"], d)
    sh(["make", "-j2", f"BOOT2={fake}"], d, clean_env(work))
    image = (d / "fw.bin").read_bytes()
    assert image[:256] == bytes(i % 251 + 1 for i in range(256))
    assert int.from_bytes(image[256:260], "little") == 0x20000000 + 264 * 1024  # initial SP: top of SRAM
    short = work / "boot2-short.S"
    short.write_text('\t.section .boot2, "ax"\n\t.space 200, 1\n')
    sh(["make", "clean"], d)
    bad = subprocess.run(["make", f"BOOT2={short}"], cwd=d, capture_output=True, text=True)
    assert bad.returncode != 0 and "exactly 256 bytes" in bad.stderr


# --------------------------------------------------------------------------------------------- kpgen flash


@pytest.mark.parametrize("probe", ["openocd", "pyocd"])
@pytest.mark.parametrize("name", REAL_BOARDS)
def test_flash_dry_run_real_boards(name: str, probe: str, board_projects: dict[str, Path]) -> None:
    d = board_projects[name].resolve()
    b = load_board(name)
    before = sorted(d.rglob("*"))
    res = CliRunner().invoke(main, ["flash", str(d), "--board", name, "--probe", probe, "--dry-run"])
    assert sorted(d.rglob("*")) == before  # a dry run builds and writes nothing
    assert res.exit_code == 0, res.output
    out = res.output
    assert f"make -C {d}" in out and "Not tested on hardware" in out
    # the projects are emitted with the default console, the board's UART: the dry run says where output goes
    assert b.uart is not None and f"console: the board's UART at {b.uart.baud} baud" in out, out
    if probe == "openocd":
        cmd = ["openocd", *b.flash.openocd_args, "-c", f"program {d / 'fw.elf'} verify",
               "-c", "arm semihosting enable", "-c", "reset run"]
        assert "  " + shlex.join(cmd) + "\n" in out
        if shutil.which("openocd"):  # the probe and target scripts exist in the installed OpenOCD and parse
            proc = subprocess.run(["openocd", *b.flash.openocd_args, "-c", "shutdown"], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
    else:
        assert f"  pyocd flash -t {b.flash.pyocd_target} {d / 'fw.hex'}\n" in out
        assert f"target_override={b.flash.pyocd_target!r}" in out and "FileProgrammer(session).program(" in out
        assert ("pyocd pack install" in out) == (b.flash.pyocd_pack is not None)


def test_flash_refuses_mismatched_board_and_library(projects: dict[str, Path]) -> None:
    res = CliRunner().invoke(main, ["flash", str(projects["firmware"]), "--board", "nucleo-f446re", "--dry-run"])
    one_line_error(res, "m4", "nucleo-f446re")
    res = CliRunner().invoke(main, ["flash", str(projects["lib"]), "--dry-run"])
    one_line_error(res, "library")
    res = CliRunner().invoke(main, ["flash", str(projects["firmware"]), "--probe", "openocd", "--dry-run"])
    one_line_error(res, "OpenOCD", "--probe qemu")


def test_flash_pyocd_missing_names_the_extra(monkeypatch, board_projects: dict[str, Path]) -> None:
    monkeypatch.setitem(sys.modules, "pyocd", None)  # import pyocd raises ImportError
    res = CliRunner().invoke(main, ["flash", str(board_projects["nucleo-h743zi"]), "--probe", "pyocd"])
    one_line_error(res, "pip install 'kpgen[flash]'")


@pytest.mark.qemu
@pytest.mark.parametrize("name", ["m4", "netduinoplus2"])
def test_flash_emulated_board_through_gdb(name: str, board_projects: dict[str, Path]) -> None:
    """QEMU starts with empty flash and a GDB server; gdb-multiarch loads the ELF; the result equals a -kernel run."""
    d = board_projects[name]
    res = CliRunner().invoke(main, ["flash", str(d), "--timeout", "60"])
    assert res.exit_code == 0, res.output
    b = load_board(name)
    assert "held 0x00000000 0x00000000 before `load`" in res.output
    assert f"{b.name} via qemu: exit status 0; bit-exact samples 1/1" in res.output
    direct = qemu.run(d / "fw.elf", b, timeout=60)
    samples = lambda text: [ln for ln in text.splitlines() if ln.startswith(("S ", "KPGEN-"))]  # noqa: E731
    assert samples(direct.stdout) and samples(res.output) == samples(direct.stdout)
    dump = sh(["arm-none-eabi-objdump", "-s", "-j", ".isr_vector", str(d / "fw.elf")], d).stdout.splitlines()
    first = dump[dump.index("Contents of section .isr_vector:") + 1].split()
    sp = int.from_bytes(bytes.fromhex(first[1]), "little")
    assert f"{sp:#010x}" in res.output  # the loaded vector table's stack pointer, read back from the target


@pytest.mark.qemu
def test_flash_qemu_reports_a_failed_load(board_projects: dict[str, Path]) -> None:
    """gdb cannot load a file that is not an ELF: one line naming it, and no QEMU left running."""
    import dataclasses

    p = flashing.plan(board_projects["m4"])
    bad = dataclasses.replace(p, image=board_projects["m4"] / "link.ld")
    with pytest.raises(KpgenError) as exc:
        flashing._flash_qemu(bad, timeout=30)
    msg = str(exc.value)
    assert "gdb-multiarch could not load" in msg and "link.ld" in msg and "\n" not in msg


@pytest.mark.qemu
def test_netduinoplus2_runs_bit_exact(work: Path, vectors: Path) -> None:
    """A real chip's memory map (STM32F405: flash at 0x08000000, hard float) end to end under QEMU."""
    d = emit("netduinoplus2", work / "nd-run", vectors=vectors)
    res = CliRunner().invoke(main, ["run", str(d), "--no-profile", "--timeout", "60"])
    assert res.exit_code == 0, res.output
    assert "3/3" in res.output and "PASS: bit-exact" in res.output
    assert "ORIGIN = 0x08000000, LENGTH = 0x00100000" in (d / "link.ld").read_text()


class _FakeState(Enum):
    RUNNING = 1
    HALTED = 2


def _fake_pyocd(events: list, log: list) -> dict[str, types.ModuleType]:
    """A stand-in for the pyOCD modules kpgen uses: a target that halts on semihosting BKPTs from a script."""

    class Target:
        State = _FakeState

        def __init__(self):
            self.state, self.event = _FakeState.HALTED, None

        def reset_and_halt(self):
            log.append("reset_and_halt")

        def resume(self):
            self.state = _FakeState.RUNNING

        def get_state(self):
            if self.state is _FakeState.RUNNING:
                self.event, self.state = events.pop(0), _FakeState.HALTED
            return self.state

        def get_target_context(self):
            return self

        def read_core_register(self, reg):
            kind = self.event[0]
            return {"pc": 0x08000100, "r0": 0x05 if kind == "write" else 0x20, "r1": 0x20001000}[reg]

        def read16(self, addr):
            return flashing.BKPT_SEMIHOSTING

        def read_memory_block32(self, addr, n):
            return [flashing.ADP_STOPPED_APPLICATION_EXIT, self.event[1]]

    class Session:
        def __init__(self):
            self.board = types.SimpleNamespace(target=Target())

        def __enter__(self):
            log.append("open")
            return self

        def __exit__(self, *exc):
            log.append("close")

    class ConnectHelper:
        @staticmethod
        def session_with_chosen_probe(**kw):
            log.append(("connect", kw["target_override"]))
            return Session()

    class FileProgrammer:
        def __init__(self, session):
            pass

        def program(self, path):
            log.append(("program", Path(path).name))

    class ConsoleIOHandler:
        def __init__(self, stdin, stdout):
            self.out = stdout

    class InternalSemihostIOHandler:
        pass

    class SemihostAgent:
        def __init__(self, ctx, io_handler, console):
            self.ctx, self.console = ctx, console

        def check_and_handle_semihost_request(self):
            self.console.out.write(self.ctx.event[1].encode())
            return True

    mods = {n: types.ModuleType(n) for n in ("pyocd", "pyocd.core", "pyocd.core.helpers", "pyocd.core.target",
                                             "pyocd.debug", "pyocd.debug.semihost", "pyocd.flash",
                                             "pyocd.flash.file_programmer")}
    mods["pyocd.core.helpers"].ConnectHelper = ConnectHelper
    mods["pyocd.core.target"].Target = Target
    mods["pyocd.debug.semihost"].__dict__.update(
        ConsoleIOHandler=ConsoleIOHandler, InternalSemihostIOHandler=InternalSemihostIOHandler,
        SemihostAgent=SemihostAgent,
    )
    mods["pyocd.flash.file_programmer"].FileProgrammer = FileProgrammer
    return mods


def test_flash_pyocd_console_loop_against_a_fake_probe(monkeypatch, board_projects: dict[str, Path]) -> None:
    """No hardware here: the pyOCD path's call order, console and exit-status handling against a stand-in."""
    d = board_projects["nrf52840-dk"]
    lines = ["KPGEN-BEGIN samples=1\n", "hello from the target\n"]
    log: list = []
    for name, mod in _fake_pyocd([("write", lines[0]), ("write", lines[1]), ("exit", 7)], log).items():
        monkeypatch.setitem(sys.modules, name, mod)
    echoed: list[str] = []
    res = flashing.flash(flashing.plan(d, probe="pyocd"), timeout=30, echo=echoed.append)
    assert log == [("connect", "nrf52840"), "open", ("program", "fw.hex"), "reset_and_halt", "close"]
    assert res.exit_code == 7 and res.output == "".join(lines) and echoed == lines


# --------------------------------------------------------------------------------------------- fitting


def _big_checkpoint(path: Path, hidden: int) -> Path:
    """An LSTM whose recurrent matrix is one dense-ish factor (4H x H) (x) (1 x 1): 4 H^2 int8 weights."""
    g = torch.Generator().manual_seed(0)
    arch = {"cell": "lstm", "input_size": 4, "hidden_size": hidden, "num_layers": 1, "num_classes": 2,
            "wx_factors": [[[4 * hidden, 1], [1, 4]]], "wh_factors": [[[4 * hidden, hidden], [1, 1]]]}
    sd = {
        "layers.0.wx.a": torch.randn(4 * hidden, 1, generator=g), "layers.0.wx.b": torch.randn(1, 4, generator=g),
        "layers.0.wh.a": torch.randn(4 * hidden, hidden, generator=g) * 0.05, "layers.0.wh.b": torch.ones(1, 1),
        "layers.0.bias": torch.zeros(4 * hidden), "head.weight": torch.randn(2, hidden, generator=g),
        "head.bias": torch.zeros(2),
    }
    torch.save({"format": "kpgen-checkpoint", "version": 1, "arch": arch, "state_dict": sd,
                "calibration": {"input_absmax": 1.0, "cell_absmax": [4.0]}, "meta": {}}, path)
    return path


def test_too_big_model_is_refused_before_building(work: Path) -> None:
    ckpt = _big_checkpoint(work / "big.pt", hidden=384)  # Wh alone: 4 * 384 * 384 = 589,824 bytes
    x = work / "big.npz"
    np.savez(x, x=np.zeros((1, 2, 4)))
    out = work / "big-f446"
    res = CliRunner().invoke(main, ["emit", str(ckpt), "--board", "nucleo-f446re", "-o", str(out), "--vectors", str(x)])
    msg = one_line_error(res, "does not fit board nucleo-f446re", "524,288", "flash needs at least")
    assert "model data " in msg and "code at least" in msg and not out.exists()


def test_ram_estimate_refuses_with_numbers() -> None:
    b = load_board("rpi-pico")
    e = fit.Estimate(b, "firmware", model_flash=1000, vector_flash=0, code_flash=100, arena=300_000,
                     reserved_ram=b.stack_size + b.heap_size)
    with pytest.raises(KpgenError) as exc:
        fit.check_fits(e)
    assert "RAM needs at least 312,288 bytes (arena 300,000 + stack 8,192 + heap 4,096" in str(exc.value)
    assert "rpi-pico has 270,336" in str(exc.value)


def test_linker_overflow_message_names_the_numbers(work: Path, vectors: Path, monkeypatch, example_q) -> None:
    """A board whose flash passes the (lower-bound) estimate but not the real link: the linker's check, in one line."""
    import kpgen.target.boards

    boards = work / "boards-copy"
    shutil.copytree(BOARDS_DIR, boards)
    need = fit.estimate(example_q, load_board("m4"), "firmware", vector_samples=1, steps=28).flash
    toml = boards / "m4" / "board.toml"
    toml.write_text(toml.read_text().replace("flash_size = 0x00400000", f"flash_size = {need:#x}"))
    monkeypatch.setattr(kpgen.target.boards, "BOARDS_DIR", boards)
    out = emit_project(EXAMPLE, "m4", work / "m4-tiny-flash", samples=1, vectors=vectors)
    assert out["board"] == "m4"
    with pytest.raises(KpgenError) as exc:
        toolchain.build(work / "m4-tiny-flash")
    msg = str(exc.value)
    assert "does not fit the board's FLASH" in msg and "over)" in msg and "\n" not in msg
