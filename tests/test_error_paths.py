"""Every documented error (docs/errors.md) that no other test triggers: boards, build and run tools, the
quantizer's refusals, emitter and pipeline guards, datasets, flashing and compression. Each test names the
message it expects; tests/test_errors_doc.py checks that docs/errors.md and these tests stay in step.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import save, tiny_checkpoint, vectors
from click.testing import CliRunner
from factories import random_model

import kpgen.target.boards
from kpgen import KpgenError
from kpgen.cells.lstm import LSTMLayerF, LSTMLayerQ
from kpgen.cli import main
from kpgen.codegen.emit import render_sources
from kpgen.frontend import datasets
from kpgen.ir import Calibration, DenseF, KPMatrixF, ModelF, ModelQ, Requant
from kpgen.pipeline import emit_project
from kpgen.quant import quantize
from kpgen.reference.vectors import expected_for
from kpgen.target import qemu, toolchain
from kpgen.target.boards import load_board, render_makefile

HAVE_ARM = all(shutil.which(t) for t in toolchain.BUILD_TOOLS)
needs_arm = pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and binutils")


# ------------------------------------------------------------------------------------------------ boards


@pytest.fixture
def boards_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private copy of boards/ that load_board reads; returns a function writing a board 'b' from m4's."""
    d = tmp_path / "boards"
    shutil.copytree(kpgen.target.boards.BOARDS_DIR, d)
    monkeypatch.setattr(kpgen.target.boards, "BOARDS_DIR", d)
    m4 = (d / "m4" / "board.toml").read_text()

    def write(edit) -> str:
        (d / "b").mkdir(exist_ok=True)
        (d / "b" / "board.toml").write_text(edit(m4.replace('name = "m4"', 'name = "b"')))
        return "b"

    return write


def test_board_missing_key(boards_dir) -> None:
    name = boards_dir(lambda t: re.sub(r"(?m)^core = .*\n", "", t))
    with pytest.raises(KpgenError, match=r"board.toml: missing key 'core'; add it \(see boards/m4/board.toml"):
        load_board(name)


def test_board_wrong_type(boards_dir) -> None:
    name = boards_dir(lambda t: re.sub(r"(?m)^stack_size = .*$", 'stack_size = "16k"', t))
    with pytest.raises(KpgenError, match=r"key 'stack_size' has the wrong type \(str\); fix the value"):
        load_board(name)


def test_board_list_of_strings(boards_dir) -> None:
    name = boards_dir(lambda t: re.sub(r"(?m)^arch_flags = .*$", "arch_flags = [1, 2]", t))
    with pytest.raises(KpgenError, match=r"'arch_flags' must be a list of strings"):
        load_board(name)


def test_board_invalid_toml(boards_dir) -> None:
    name = boards_dir(lambda t: t + "\nthis is = = not toml\n")
    with pytest.raises(KpgenError, match=r"board.toml: invalid TOML \(.*\); fix the file"):
        load_board(name)


def test_board_name_must_match_directory(boards_dir) -> None:
    name = boards_dir(lambda t: t.replace('name = "b"', 'name = "c"'))
    with pytest.raises(KpgenError, match=r"name = 'c' but the directory is 'b'; make them equal"):
        load_board(name)


def test_board_stack_and_heap_exceed_ram(boards_dir) -> None:
    name = boards_dir(lambda t: re.sub(r"(?m)^stack_size = \S+", "stack_size = 0x00500000", t))
    with pytest.raises(KpgenError, match=r"stack_size \+ heap_size exceed ram_size; shrink them"):
        load_board(name)


def test_makefile_source_rules() -> None:
    b = load_board("m4")
    with pytest.raises(KpgenError, match=r"source 'my file.c' must be a .c path without spaces"):
        render_makefile(b, ["my file.c"])
    with pytest.raises(KpgenError, match=r"two sources map to the same object file; rename one of them"):
        render_makefile(b, ["a/b.c", "a__b.c"])


# ------------------------------------------------------------------------------------- build and run tools


def test_build_needs_a_makefile(tmp_path: Path) -> None:
    if not HAVE_ARM:
        pytest.skip("the tool check comes first")
    with pytest.raises(KpgenError, match=r"no Makefile in .*; emit the firmware directory first"):
        toolchain.build(tmp_path)


@needs_arm
def test_sizes_and_symbols_of_a_non_elf(tmp_path: Path) -> None:
    bad = tmp_path / "fw.elf"
    bad.write_text("not an ELF file\n")
    with pytest.raises(KpgenError, match=r"cannot read .*fw.elf: not an ELF file \(.*\); build it again"):
        toolchain.elf_sizes(bad)
    with pytest.raises(KpgenError, match=r"cannot read .*fw.elf: not an ELF file"):
        toolchain.symbols(bad)
    with pytest.raises(KpgenError, match=r"cannot read .*fw.elf: not an ELF file"):
        toolchain.object_bytes(bad, "model_")


def test_count_needs_a_firmware(tmp_path: Path) -> None:
    if shutil.which(toolchain.QEMU) is None:
        pytest.skip("the QEMU check comes first")
    with pytest.raises(KpgenError, match=r"firmware .*nope.elf not found; build it first"):
        qemu.count_instructions(tmp_path / "nope.elf", "m4")


@needs_arm
def test_count_needs_the_profile_markers(tmp_path: Path) -> None:
    if shutil.which(toolchain.QEMU) is None:
        pytest.skip("the QEMU check comes first")
    (tmp_path / "f.c").write_text("int f(int x) { return x + 1; }\n")
    elf = tmp_path / "f.o"
    subprocess.run([toolchain.CC, "-mcpu=cortex-m4", "-mthumb", "-c", str(tmp_path / "f.c"), "-o", str(elf)],
                   check=True)
    with pytest.raises(KpgenError, match=r"has no function kpgen_profile_begin; link boards/common/kpgen_target.c"):
        qemu.count_instructions(elf, "m4")


@needs_arm
def test_qemu_disassembly_of_a_non_elf(tmp_path: Path) -> None:
    (tmp_path / "fw.elf").write_text("not an ELF file\n")
    with pytest.raises(KpgenError, match=r"cannot read .*fw.elf: not an ELF file"):
        qemu.disassemble(tmp_path / "fw.elf")


# ----------------------------------------------------------------------------------------------- quantizer


def _float_model(input_absmax: float = 1.0) -> ModelF:
    rng = np.random.default_rng(0)
    wx = KPMatrixF(a=rng.normal(0, 0.3, (4, 2)), b=rng.normal(0, 0.3, (4, 3)))
    wh = KPMatrixF(a=rng.normal(0, 0.3, (4, 2)), b=rng.normal(0, 0.3, (4, 2)))
    layer = LSTMLayerF(input_size=6, hidden_size=4, wx=wx, wh=wh, bias=np.full(16, 0.1))
    return ModelF(input_size=6, num_classes=3, layers=(layer,), head=DenseF(rng.normal(0, 1, (3, 4)), np.zeros(3)),
                  calibration=Calibration(input_absmax=input_absmax, cell_absmax=(2.0,)))  # fmt: skip


def test_factor_b_too_wide() -> None:
    m = KPMatrixF(a=np.ones((1, 1)), b=np.ones((1, quantize.MAX_N2 + 1)))
    with pytest.raises(KpgenError, match=rf"layer 0 Wx: factor B has {quantize.MAX_N2 + 1} columns, more than "
                                         rf"{quantize.MAX_N2}; the int32 sum"):
        quantize.quantize_kp(m, "layer 0 Wx")


def test_gate_requantizer_limits() -> None:
    with pytest.raises(KpgenError, match=r"Wx: scale 1e-30 rounds to zero in a 32-bit multiplier"):
        quantize.requant_gate(1e-30, 1000, "layer 0 Wx")
    with pytest.raises(KpgenError, match=r"Wh: one accumulator step is worth 1e\+06 gate units .* leaves int32"):
        quantize.requant_gate(1e6, 5000, "layer 0 Wh")
    with pytest.raises(KpgenError, match=r"Wx: scale nan is not a positive finite number"):
        quantize.requant_gate(float("nan"), 1, "layer 0 Wx")


def test_gate_sum_beyond_int32(tmp_path: Path) -> None:
    """Each bias fits int32 in Q3.12 by itself (524287 * 4096 < 2**31), but bias + the worst products does not."""
    from kpgen.frontend.load import load_checkpoint

    ck = tiny_checkpoint()
    ck["state_dict"]["layers.1.bias"].fill_(524287.0)
    model = load_checkpoint(save(ck, tmp_path / "m.pt"))
    with pytest.raises(KpgenError, match=r"layer 1: the gate sum can reach \d+, outside int32; the int32 kernels"):
        quantize.quantize_model(model)


def test_input_range_must_be_positive() -> None:
    with pytest.raises(KpgenError, match=r"calibration input_absmax 0.0 must be a positive number; recalibrate"):
        quantize.quantize_model(_float_model(input_absmax=0.0))


# --------------------------------------------------------------------------------- emitter and pipeline


def _bad_layer() -> ModelQ:
    """A model whose layer breaks the C kernels' limits (shift 1 with a large accumulator): not from kpgen."""
    m = random_model(np.random.default_rng(0), 4, (3,), 2)
    layer = m.layers[0]
    bad = LSTMLayerQ(**{**layer.__dict__, "rq_x": Requant(2**31 - 1, 1)})
    return ModelQ(**{**m.__dict__, "layers": (bad,)})


def test_emitter_refuses_layers_outside_the_kernel_limits() -> None:
    m = _bad_layer()
    exp = expected_for(m, np.zeros((1, 2, 4), np.int8))
    with pytest.raises(KpgenError, match=r"layer l0: Wx: .*; the int32 kernels cannot run it: re-quantize the model"):
        render_sources(m, load_board("m4"), exp, "model", "x.pt")


def test_emitter_unknown_target() -> None:
    m = random_model(np.random.default_rng(1), 4, (3,), 2)
    exp = expected_for(m, np.zeros((1, 2, 4), np.int8))
    with pytest.raises(KpgenError, match=r"unknown target 'rom'; use one of: firmware, lib"):
        render_sources(m, load_board("m4"), exp, "model", "x.pt", target="rom")


def test_expected_vectors_shape() -> None:
    m = random_model(np.random.default_rng(2), 4, (3,), 2)
    with pytest.raises(KpgenError, match=r"test vectors have shape \(1, 2, 5\), expected \[samples, steps, 4\]"):
        expected_for(m, np.zeros((1, 2, 5), np.int8))


def test_samples_must_be_positive(tmp_path: Path) -> None:
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    with pytest.raises(KpgenError, match=r"--samples must be at least 1, got 0"):
        emit_project(ckpt, "m4", tmp_path / "out", samples=0)
    assert not (tmp_path / "out").exists()


def test_run_refuses_a_library(tmp_path: Path) -> None:
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    vec = vectors(tmp_path / "v.npz")
    emit_project(ckpt, "m4", tmp_path / "lib", vectors=vec, target="lib")
    res = CliRunner().invoke(main, ["run", str(tmp_path / "lib")])
    assert res.exit_code == 2 and "is a library (emitted with --target lib): there is nothing to run" in res.stderr


# ----------------------------------------------------------------------------------------------- datasets


def test_dataset_needs_aeon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aeon.datasets", None)  # import aeon.datasets raises ImportError
    with pytest.raises(KpgenError,
                       match=r"^dataset 'basic_motions' needs the 'train' extra: pip install 'kpgen\[train\]'$"):
        datasets._aeon("basic_motions")


def test_dataset_file_missing_from_aeon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(datasets, "_aeon_data_dir", lambda name: tmp_path)
    with pytest.raises(KpgenError, match=r"is missing from the installed aeon; pip install"):
        datasets.load_daphnet()


# ----------------------------------------------------------------------------------------------- flashing


@pytest.fixture(scope="module")
def flash_projects(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("flash")
    ckpt = save(tiny_checkpoint(), base / "m.pt")
    vec = vectors(base / "v.npz")
    out = {}
    for b in ("m4", "nucleo-f446re", "rpi-pico"):
        emit_project(ckpt, b, base / b, vectors=vec, samples=1)
        out[b] = base / b
    return out


def test_flash_plan_refusals(flash_projects: dict[str, Path]) -> None:
    from kpgen.target import flash as flashing

    with pytest.raises(KpgenError, match=r"unknown probe 'jtag'; use one of: openocd, pyocd, qemu"):
        flashing.plan(flash_projects["m4"], probe="jtag")
    with pytest.raises(KpgenError, match=r"board nucleo-f446re is real hardware that QEMU does not emulate; use"):
        flashing.plan(flash_projects["nucleo-f446re"], probe="qemu")
    with pytest.raises(KpgenError, match=r"board m4 has no pyOCD target \(pyocd_target .*; it is emulated: use"):
        flashing.plan(flash_projects["m4"], probe="pyocd")


def test_flash_refuses_an_image_without_boot2(flash_projects: dict[str, Path]) -> None:
    from kpgen.target import flash as flashing

    d = flash_projects["rpi-pico"]
    (d / "fw.bin").write_bytes(bytes(1024))  # what the placeholder boot2 build starts with
    p = flashing.plan(d, probe="openocd")
    with pytest.raises(KpgenError, match=r"fw.bin starts with 256 zero bytes where rpi-pico's boot ROM expects boot2"):
        flashing._require_boot2(p)


def test_flash_tools_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kpgen.target import flash as flashing

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KpgenError, match=r"missing openocd; install it with: sudo apt-get install -y openocd"):
        flashing.check_probe_tools("openocd")
    if shutil.which(toolchain.QEMU, path=os.defpath + ":/usr/bin") is None:
        pytest.skip("needs qemu-system-arm to reach the gdb check")
    (tmp_path / toolchain.QEMU).symlink_to(shutil.which(toolchain.QEMU, path="/usr/bin:/usr/local/bin"))
    with pytest.raises(KpgenError, match=r"missing gdb-multiarch; install it with: sudo apt-get install -y gdb"):
        flashing.check_probe_tools("qemu")


def _fake_pyocd(monkeypatch: pytest.MonkeyPatch, session_factory) -> None:
    """Just enough of pyOCD's module tree for kpgen.target.flash's pyOCD path."""
    names = ["pyocd", "pyocd.core", "pyocd.core.helpers", "pyocd.core.target", "pyocd.debug",
             "pyocd.debug.semihost", "pyocd.flash", "pyocd.flash.file_programmer"]  # fmt: skip
    mods = {n: types.ModuleType(n) for n in names}
    mods["pyocd.core.helpers"].ConnectHelper = types.SimpleNamespace(session_with_chosen_probe=session_factory)
    mods["pyocd.core.target"].Target = types.SimpleNamespace(State=types.SimpleNamespace(HALTED="halted"))

    class Agent:
        def __init__(self, *a, **k):
            pass

        def check_and_handle_semihost_request(self):
            return False  # the core stopped for something that is not a semihosting call

    mods["pyocd.debug.semihost"].__dict__.update(SemihostAgent=Agent, ConsoleIOHandler=lambda *a: None,
                                                 InternalSemihostIOHandler=lambda *a: None)  # fmt: skip
    mods["pyocd.flash.file_programmer"].FileProgrammer = lambda s: types.SimpleNamespace(program=lambda path: None)
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)


class _HaltedSession:
    """A probe session whose core is halted at a non-semihosting instruction (as after a fault)."""

    def __init__(self) -> None:
        regs = {"pc": 0x1234, "r0": 0}
        self.board = types.SimpleNamespace(target=types.SimpleNamespace(
            reset_and_halt=lambda: None, get_target_context=lambda: None, resume=lambda: None,
            get_state=lambda: "halted", read_core_register=regs.get, read16=lambda addr: 0xE7FE))  # fmt: skip

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("session,needle", [
    (lambda **k: None, r"no debug probe found by pyOCD; connect the board's USB debug port"),
    (lambda **k: (_ for _ in ()).throw(RuntimeError("target 'nrf52840' not found")),
     r"pyOCD failed on nrf52840: target 'nrf52840' not found; check the probe"),
    (lambda **k: _HaltedSession(), r"the firmware stopped at pc=0x00001234 without exiting \(a fault\?\)"),
], ids=["no-probe", "pyocd-error", "stopped"])  # fmt: skip
def test_flash_pyocd_failures(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, session, needle: str) -> None:
    from kpgen.target import flash as flashing

    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    emit_project(ckpt, "nrf52840-dk", tmp_path / "fw", vectors=vectors(tmp_path / "v.npz"), samples=1)
    _fake_pyocd(monkeypatch, session)
    plan = flashing.plan(tmp_path / "fw", probe="pyocd")
    with pytest.raises(KpgenError, match=needle):
        flashing._flash_pyocd(plan, timeout=5, echo=lambda s: None)


# ----------------------------------------------------------------------------------------------- compress


def _lstm_sd(layers: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(4, 3, num_layers=layers)
    sd = {f"rnn.{k}": v for k, v in rnn.state_dict().items()}
    sd.update({"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)})
    return sd


@pytest.mark.parametrize("edit,needle", [
    (lambda sd: sd.update({"other.weight_ih_l0": sd["rnn.weight_ih_l0"]}), r"recurrent weights under several prefixes"),
    (lambda sd: sd.update({"rnn.weight_ih_l3": sd["rnn.weight_ih_l0"], "rnn.weight_hh_l3": sd["rnn.weight_hh_l0"]}),
     r"the recurrent layers are not numbered 0..L-1 in every direction"),
    (lambda sd: sd.pop("rnn.weight_ih_l0"), r"a layer lacks weight_ih or weight_hh"),
    (lambda sd: sd.update({"rnn.weight_hh_l0": torch.zeros(10, 3)}), r"weight_hh_l0 is \(10, 3\): not 4H x H"),
    (lambda sd: sd.update({"rnn.weight_ih_l1": torch.zeros(12, 5)}), r"layer 1 weights have shapes \(12, 5\)"),
], ids=["prefixes", "numbering", "lacks-weight", "gates", "layer-shapes"])  # fmt: skip
def test_compress_source_refusals(edit, needle: str) -> None:
    from kpgen.train.compress import from_torch_state_dict

    sd = _lstm_sd(layers=2)
    edit(sd)
    with pytest.raises(KpgenError, match=needle) as e:
        from_torch_state_dict(sd, "src.pt")
    assert str(e.value).startswith("src.pt: ") and "\n" not in str(e.value)


def test_compress_source_file_refusals(tmp_path: Path) -> None:
    from kpgen.train.compress import read_source

    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pt")
    with pytest.raises(KpgenError, match=r"is neither a kpgen checkpoint nor a state dict of tensors"):
        read_source(tmp_path / "list.pt")
    ck = tiny_checkpoint()
    ck["arch"]["wx_specs"] = [{"kind": "kp"}]  # a training-side variant whose fields do not add up
    torch.save(ck, tmp_path / "v2.pt")
    with pytest.raises(KpgenError, match=r"not a readable kpgen checkpoint \("):
        read_source(tmp_path / "v2.pt")


def test_compress_ratio_below_one() -> None:
    from kpgen.train.compress import build_compressed
    from kpgen.train.nn import KPRNNClassifier

    src = KPRNNClassifier("lstm", 4, 8, 2, "dense", "dense")
    with pytest.raises(KpgenError, match=r"--ratio 0.5 must be at least 1"):
        build_compressed(src, "kp", 0.5)


# ------------------------------------------------------------------------------------------------- bench


def test_bench_factor_search_and_compile_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from kpgen.studies import bench

    with pytest.raises(KpgenError, match=r"no Kronecker factors of a 7 x 3 matrix reach 4.0x compression"):
        bench.kp_factors(7, 3, min_compression=4.0)
    monkeypatch.setattr(bench.toolchain, "CC", "false")  # a compiler that always fails
    with pytest.raises(KpgenError, match=r"cannot compile kp_\w+\.c for m4: "):
        bench.runtime_text_bytes("m4")
