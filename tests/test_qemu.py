"""Board, build and run stages on the real toolchain and QEMU (mps2-an386, Cortex-M4).

One firmware (tests/fixtures/hello/main.c, built with the real templates and start-up code) serves every
test: its semihosting command line selects the behaviour.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from firmware import build_fixture

from kpgen import KpgenError
from kpgen.target import qemu, toolchain
from kpgen.target.boards import load_board, prepare_firmware_dir

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in toolchain.ALL_TOOLS),
        reason="needs arm-none-eabi-gcc, make and qemu-system-arm",
    ),
]

FIXTURE = Path(__file__).parent / "fixtures" / "hello" / "main.c"


@pytest.fixture(scope="module")
def board():
    return load_board("m4")


@pytest.fixture(scope="module")
def fw(board, tmp_path_factory):
    return build_fixture(board, FIXTURE, tmp_path_factory.mktemp("hello"))


@pytest.fixture(scope="module")
def syms(fw):
    return {name: (addr, size) for addr, size, name in toolchain.symbols(fw.elf)}


def _disassembly_at(elf: Path, addr: int) -> str:
    out = subprocess.run(
        ["arm-none-eabi-objdump", "-d", f"--start-address={addr}", f"--stop-address={addr + 4}", str(elf)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(line for line in out.splitlines() if line.strip().startswith(f"{addr:x}:"))


# --------------------------------------------------------------------------------------------- build


def test_build_outputs(fw):
    for f in (fw.elf, fw.bin, fw.hex, fw.map):
        assert f.is_file() and f.stat().st_size > 0
    assert fw.sizes["text"] > 0 and fw.sizes["bss"] >= load_board("m4").heap_size
    assert fw.sizes == toolchain.elf_sizes(fw.elf)
    usage = toolchain.stack_usage(fw.fw_dir / "obj")
    assert usage["main"] > 0 and "Reset_Handler" in usage and "kpgen_cmdline" in usage


def test_symbols_have_thumb_bit_cleared(fw, syms):
    assert syms["kpgen_profile_begin"][0] != syms["kpgen_profile_end"][0]
    assert all(addr % 2 == 0 for addr, _ in syms.values())
    assert syms["spin"][1] == 6  # SUBS, BNE, BX LR
    # the vector table's reset entry (offset 4) is Reset_Handler with the Thumb bit set
    vectors = fw.bin.read_bytes()[:8]
    assert int.from_bytes(vectors[4:8], "little") == syms["Reset_Handler"][0] | 1
    assert int.from_bytes(vectors[0:4], "little") == 0x20000000 + 0x400000  # top of RAM


def test_build_error_is_one_line(board, tmp_path):
    (tmp_path / "main.c").write_text("int main(void) { int unused; return 0; }\n")
    prepare_firmware_dir(board, tmp_path, ["main.c"])
    with pytest.raises(KpgenError) as exc:
        toolchain.build(tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and "main.c" in msg and "unused" in msg


def test_ram_overflow_is_reported(board, tmp_path):
    (tmp_path / "main.c").write_text(
        "static char big[5u * 1024u * 1024u];\nint main(void) { big[0] = 1; return big[1]; }\n"
    )
    prepare_firmware_dir(board, tmp_path, ["main.c"])
    with pytest.raises(KpgenError, match="RAM"):
        toolchain.build(tmp_path)


# --------------------------------------------------------------------------------------------- run


def test_hello(fw, board):
    r = qemu.run(fw.elf, board, timeout=20, args=["hello"])
    assert r.stdout == "hello from kpgen\n"
    assert r.exit_code == 0 and not r.timed_out and r.fault_pc is None


@pytest.mark.parametrize("status", [0, 5, 255])
def test_exit_status_propagates(fw, board, status):
    r = qemu.run(fw.elf, board, timeout=20, args=["exit", str(status)])
    assert r.stdout == f"exiting with {status}\n"
    assert r.exit_code == status


def test_cmdline_reaches_firmware(fw, board):
    r = qemu.run(fw.elf, "m4", timeout=20, args=["echo", "a,b", "x=1"])
    assert r.stdout == "cmdline=[echo a,b x=1]\n"
    assert r.exit_code == 0


def test_hang_is_killed_at_timeout(fw, board):
    r = qemu.run(fw.elf, board, timeout=1.5, args=["hang"])
    assert r.timed_out and r.exit_code is None
    assert 1.5 <= r.seconds < 5
    assert r.stdout == "hanging\n"


@pytest.mark.parametrize("mode, func, offset, mnemonic",
                         [("udf", "fault_udf", 0, "udf"), ("load", "fault_load", 4, "ldr")])
def test_fault_reports_pc(fw, board, syms, mode, func, offset, mnemonic):
    r = qemu.run(fw.elf, board, timeout=20, args=[mode])
    expected = syms[func][0] + offset
    assert r.fault_pc == expected, r.stdout
    assert r.exit_code == qemu.FAULT_EXIT_STATUS
    assert r.stdout.splitlines() == ["about to fault", f"KPGEN-FAULT pc=0x{expected:08x}"]
    assert mnemonic in _disassembly_at(fw.elf, expected)


def test_missing_elf_is_user_error(board, tmp_path):
    with pytest.raises(KpgenError, match="not found"):
        qemu.run(tmp_path / "nope.elf", board)


# --------------------------------------------------------------------------------------------- counting


def test_instruction_count_is_exact(fw, board):
    n = 1000
    p1 = qemu.count_instructions(fw.elf, board, args=["spin", str(n)], timeout=60)
    p2 = qemu.count_instructions(fw.elf, board, args=["spin", str(2 * n)], timeout=60)
    again = qemu.count_instructions(fw.elf, board, args=["spin", str(n)], timeout=60)
    assert p1.run is not None and p1.run.stdout == f"spun {n}\n" and p1.run.exit_code == 0
    # SUBS + BNE per iteration
    assert p2.total - p1.total == 2 * n
    assert p1.per_function["spin"] == 2 * n + 1
    assert p2.per_function["spin"] == 4 * n + 1
    # window: BX LR in kpgen_profile_begin; MOV, BL spin, BL kpgen_profile_end in main
    assert p1.per_function == {"spin": 2 * n + 1, "main": 3, "kpgen_profile_begin": 1}
    assert p1.total == 2 * n + 5
    assert again.total == p1.total and again.per_function == p1.per_function


def test_taken_branches_are_exact(fw, board, syms):
    """A control transfer is counted when the next traced PC is not pc + size: exact per instruction."""
    n = 100
    p = qemu.count_instructions(fw.elf, board, args=["spin", str(n)], timeout=60)
    spin = syms["spin"][0]
    bne, bx = spin + 2, spin + 4
    assert p.insns[bne].mnemonic.startswith("bne") and p.insns[bx].mnemonic == "bx"
    assert p.per_pc[spin] == n and p.per_pc[bne] == n and p.per_pc[bx] == 1
    assert p.taken[bne] == n - 1 and p.taken[bx] == 1 and spin not in p.taken
    # BX LR of kpgen_profile_begin, BL spin, N-1 BNE, BX LR of spin, BL kpgen_profile_end
    assert p.taken_branches == n + 3
    assert sum(p.per_pc.values()) == p.total
    assert {p.functions[a] for a in (spin, bne, bx)} == {"spin"}


def test_disassembly_sizes(fw, syms):
    code = qemu.disassemble(fw.elf)
    spin = syms["spin"][0]
    assert [(code[spin + k].size, code[spin + k].mnemonic) for k in (0, 2, 4)] == [
        (2, "subs"), (2, "bne.n"), (2, "bx")
    ]
    assert all(i.size in (2, 4) for i in code.values())
    assert any(i.size == 4 and i.mnemonic == "bl" for i in code.values())


def test_count_without_markers_is_user_error(fw, board):
    with pytest.raises(KpgenError, match="kpgen_profile_begin was never called"):
        qemu.count_instructions(fw.elf, board, args=["hello"], timeout=20)


def test_trace_file_is_deleted(fw, board, tmp_path):
    qemu.count_instructions(fw.elf, board, args=["spin", "10"], timeout=20, trace_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_stopped_tb_line_cancels_count(tmp_path):
    trace = tmp_path / "t.log"
    trace.write_text(
        "Trace 0: 0x7f0000000100 [00800408/00000100/00000110/ff000201] a\n"
        "Trace 0: 0x7f0000000200 [00800408/00000200/00000110/ff000201] begin\n"
        "Trace 0: 0x7f0000000300 [00800408/00000300/00000110/ff000201] f\n"
        "Stopped execution of TB chain before 0x7f0000000300 [00000300] f\n"
        "Trace 0: 0x7f0000000300 [00800408/00000300/00000110/ff000201] f\n"
        "Trace 0: 0x7f0000000302 [00800408/00000302/00000110/ff000201] f\n"
        "Trace 0: 0x7f0000000400 [00800408/00000400/00000110/ff000201] end\n"
        "Trace 0: 0x7f0000000300 [00800408/00000300/00000110/ff000201] f\n"
    )
    edges: dict = {}
    total, counts = qemu._count_trace(trace, 0x200, 0x400, edges)
    assert total == 3 and counts == {0x200: 1, 0x300: 1, 0x302: 1}
    # the abandoned TB's transition is undone too; the last instruction's successor is the end marker
    assert edges == {(0x200, 0x300): 1, (0x300, 0x302): 1, (0x302, 0x400): 1}
    insns = {a: qemu.Insn(2, "nop", "") for a in (0x200, 0x300, 0x302)}
    assert qemu.taken_counts(edges, insns) == {0x200: 1, 0x302: 1}


# --------------------------------------------------------------------------------------------- every board

QEMU_BOARDS = ["m0", "m3", "m4", "m7", "m33", "m55"]


@pytest.fixture(scope="module", params=QEMU_BOARDS)
def board_fw(request, tmp_path_factory):
    b = load_board(request.param)
    return b, build_fixture(b, FIXTURE, tmp_path_factory.mktemp(f"hello-{b.name}"))


def test_every_board_boots_prints_exits_and_counts(board_fw):
    b, fw = board_fw
    vectors = fw.bin.read_bytes()[:8]
    syms = {name: addr for addr, _, name in toolchain.symbols(fw.elf)}
    # the vector table sits at the start of the board's flash: initial SP = top of RAM, then Reset_Handler
    assert int.from_bytes(vectors[0:4], "little") == b.ram_origin + b.ram_size
    assert int.from_bytes(vectors[4:8], "little") == syms["Reset_Handler"] | 1
    assert syms["Reset_Handler"] >= b.flash_origin
    r = qemu.run(fw.elf, b, timeout=20, args=["hello"])
    assert (r.stdout, r.exit_code, r.fault_pc) == ("hello from kpgen\n", 0, None)
    assert qemu.run(fw.elf, b, timeout=20, args=["exit", "7"]).exit_code == 7
    r = qemu.run(fw.elf, b, timeout=20, args=["udf"])
    assert r.exit_code == qemu.FAULT_EXIT_STATUS and r.fault_pc == syms["fault_udf"]
    p = qemu.count_instructions(fw.elf, b, args=["spin", "50"], timeout=60)
    assert p.total == 2 * 50 + 5 and p.taken_branches == 50 + 3


@pytest.mark.parametrize("name", ["m0", "m55"])
def test_random_model_bit_exact(name, tmp_path):
    """A small random stacked KP-LSTM, emitted for the smallest core and for the Helium core, matches the
    integer reference bit for bit under QEMU; its profiled inference gets an estimated cycle count."""
    import numpy as np
    from factories import random_model

    from kpgen.codegen.emit import render_sources, write_tree
    from kpgen.reference.vectors import expected_for
    from kpgen.target import cycles
    from kpgen.target.verify import verify_output

    rng = np.random.default_rng(7)
    m = random_model(rng, 12, (32, 16), 5)
    xq = rng.integers(-127, 128, size=(3, 6, 12)).astype(np.int8)
    exp = expected_for(m, xq)
    b = load_board(name)
    write_tree(tmp_path / "fw", render_sources(m, b, exp, "model", "random"), {}, force=False)
    elf = toolchain.build(tmp_path / "fw").elf
    res = qemu.run(elf, b, timeout=60)
    vec = {"samples": 3, "labels": [-1] * 3, "scores": exp.scores.tolist(),
           "final_digests": [f"{int(d):08x}" for d in exp.digests[:, -1]]}
    assert res.exit_code == 0 and verify_output(res.stdout, vec).passed, res.stdout
    p = qemu.count_instructions(elf, b, args=["profile"], timeout=60)
    est = cycles.estimate(p, b.core)
    assert p.total > 6 * 1000 and est.instructions == p.total
    assert p.total < est.cycles < 4 * p.total
    assert est.core == {"m0": "Cortex-M0", "m55": "Cortex-M55"}[name]
