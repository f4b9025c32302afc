"""The cycle cost model (kpgen/target/cycles.py): instruction classes, and estimates on loops counted by hand.

The QEMU tests run tests/fixtures/cycles/main.c, whose kernels are hand-written loops with known instruction
mixes; the expected cycle counts below are worked out from the cost tables in docs/cycle-model.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from firmware import build_fixture

from kpgen.target import cycles, qemu, toolchain
from kpgen.target.boards import load_board
from kpgen.target.cycles import base_mnemonic, decode, register_count
from kpgen.target.qemu import Insn, Profile

FIXTURE = Path(__file__).parent / "fixtures" / "cycles" / "main.c"

# --------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "mnemonic, base",
    [
        ("ldr.w", "ldr"), ("bne.n", "b"), ("bls.n", "b"), ("ble", "b"), ("bl", "bl"), ("blx", "blx"),
        ("mls", "mls"), ("muls", "mul"), ("movlt", "mov"), ("adds", "add"), ("bics", "bic"), ("lsls", "lsl"),
        ("ldrbne", "ldrb"), ("smlals", "smlal"), ("teq", "teq"), ("ittet", "it"), ("le", "le"),
        ("vldrb.s8", "vldrb"), ("addseq", "add"),
    ],
)  # fmt: skip
def test_base_mnemonic(mnemonic, base):
    assert base_mnemonic(mnemonic) == base


@pytest.mark.parametrize(
    "mnemonic, operands, cls",
    [
        ("ldr", "r2, [r3, #4]", "load"), ("ldrsb.w", "r2, [r3, r1]", "load"), ("str", "r1, [r2, r3]", "store"),
        ("str.w", "r4, [r2, #4]!", "store_imm"), ("strb", "r1, [r0], #1", "store_imm"),
        ("strd", "r0, r1, [r3]", "strd"),
        ("pop", "{r4, pc}", "ldm"), ("push", "{r4-r7, lr}", "stm"), ("ldmia.w", "r0!, {r1, r2}", "ldm"),
        ("muls", "r3, r2, r3", "mul"), ("mla", "r0, r1, r2, r3", "mla"), ("smull", "r0, r1, r2, r3", "mull"),
        ("smlal", "r0, r1, r2, r3", "mlal"), ("smlad", "r0, r1, r2, r0", "dsp_mac"), ("sxtb16", "r1, r2", "dsp"),
        ("sdiv", "r0, r1, r2", "div"), ("bne.n", "8 <x>", "branch"), ("cbz", "r0, 8 <x>", "branch"),
        ("bl", "8 <f>", "call"), ("bx", "lr", "indirect"), ("mov", "pc, lr", "indirect"),
        ("tbb", "[pc, r0]", "indirect"),
        ("le", "lr, 8 <x>", "loop_end"), ("dls", "lr, r0", "alu"), ("it", "lt", "alu"), ("dmb", "sy", "system"),
        ("vldrb.u8", "q0, [r1]", "vload"), ("vmladava.s8", "r2, q0, q1", "vmul"), ("vadd.i8", "q0, q1, q2", "vint"),
        ("vpst", "", "vsys"), ("vldr", "d4, [pc, #48]", "fp"),
    ],
)  # fmt: skip
def test_decode_classes(mnemonic, operands, cls):
    assert decode(Insn(4, mnemonic, operands)).cls == cls


def test_decode_details():
    pop = decode(Insn(2, "pop", "{r4, r5, r6, pc}"))
    assert pop.nregs == 4 and pop.writes_pc and "r4" in pop.dests
    assert decode(Insn(2, "bne.n", "8 <x>")).conditional and not decode(Insn(2, "b.n", "8 <x>")).conditional
    ld = decode(Insn(4, "ldr.w", "r2, [r3, #4]"))
    assert ld.dests == {"r2"} and ld.addr_regs == {"r3"}
    assert decode(Insn(2, "adds", "r0, #1")).reads == {"r0"}
    assert register_count("{r4-r7, lr}") == 5 and register_count("{d8-d15}") == 8


def test_every_board_core_has_a_table():
    for name in ("m0", "m3", "m4", "m7", "m33", "m55"):
        assert cycles.core_model(load_board(name).core) is not None
    assert cycles.core_model("cortex-m55+nomve").name == "Cortex-M55"
    assert cycles.core_model("cortex-a53") is None
    with pytest.raises(KeyError, match="no cycle cost table"):
        cycles.estimate(Profile(total=0, per_function={}), "cortex-a53")


# --------------------------------------------------------------------------------------------- synthetic trace


def _alu_loop_profile(n: int) -> Profile:
    """The 'alu' kernel as a trace would report it: ADDS, ADDS, SUBS, BNE x n (taken n-1 times), BX LR."""
    code = {
        0x100: Insn(2, "adds", "r2, r2, #1"),
        0x102: Insn(2, "adds", "r3, r3, #1"),
        0x104: Insn(2, "subs", "r0, r0, #1"),
        0x106: Insn(2, "bne.n", "100 <k>"),
        0x108: Insn(2, "bx", "lr"),
    }
    per_pc = {0x100: n, 0x102: n, 0x104: n, 0x106: n, 0x108: 1}
    return Profile(
        total=4 * n + 1, per_function={"k": 4 * n + 1}, per_pc=per_pc, taken={0x106: n - 1, 0x108: 1},
        insns=code, functions={pc: "k" for pc in code},
    )  # fmt: skip


@pytest.mark.parametrize("n", [2, 10, 1000])
def test_estimate_on_a_synthetic_trace(n):
    p = _alu_loop_profile(n)
    # M0/M3/M4/M33/M55: 4 one-cycle instructions, +2 refill per taken BNE, BX LR 1 + 2.
    for core in ("cortex-m0", "cortex-m3", "cortex-m4", "cortex-m33", "cortex-m55"):
        e = cycles.estimate(p, core)
        assert e.cycles == 6 * n + 1 == e.per_function["k"], core
        assert e.instructions == 4 * n + 1
    # M7: both pairs dual-issue (2 cycles an iteration), the loop branch mispredicts once (4), BX LR 1 + 4.
    assert cycles.estimate(p, "cortex-m7").cycles == 2 * n + 9
    # M0+: a 2-stage pipeline, refill 1 (B taken 2, BX 2).
    assert cycles.estimate(p, "cortex-m0plus").cycles == 5 * n + 1
    e = cycles.estimate(p, "cortex-m4")
    assert e.by_class["alu"] == (3 * n, 3 * n) and e.by_class["branch"] == (n, n + 2 * (n - 1))
    assert e.cpi == pytest.approx((6 * n + 1) / (4 * n + 1))


# --------------------------------------------------------------------------------------------- under QEMU

pytestmark_qemu = pytest.mark.skipif(
    any(shutil.which(t) is None for t in toolchain.ALL_TOOLS),
    reason="needs arm-none-eabi-gcc, make and qemu-system-arm",
)

# kernel -> core -> expected cycles of the kernel function for N >= 2 iterations (docs/cycle-model.md):
#   M0/M4: LDR 2 (M4: 1 right after an independent LDR), MULS/ADDS/SUBS 1, BNE 1 + 2 when taken,
#   BX LR 1 + 2, PUSH/POP 1 + N (POP {.., pc} + 2).  M7: pairs issue together, a load-use stall costs 1,
#   the loop branch mispredicts once (4), indirect branches 1 + 4, PUSH/POP 1 + N/2.
EXPECTED = {
    "mul": {"cortex-m0": (7, 1), "cortex-m3": (7, 1), "cortex-m4": (7, 1), "cortex-m7": (4, 9)},
    "ldld": {"cortex-m0": (8, 1), "cortex-m3": (7, 1), "cortex-m4": (7, 1), "cortex-m7": (2, 9)},
    "lddep": {"cortex-m0": (8, 1), "cortex-m3": (8, 1), "cortex-m4": (8, 1), "cortex-m7": (4, 9)},
    "alu": {"cortex-m0": (6, 1), "cortex-m3": (6, 1), "cortex-m4": (6, 1), "cortex-m7": (2, 9)},
    "stack": {"cortex-m0": (4, 10), "cortex-m3": (4, 10), "cortex-m4": (4, 10), "cortex-m7": (1, 14)},
    # M55: VLDRB 2, VMLAVA 1 (its beats overlap the load's on another pipe); LE 1, no refill.
    "mve": {"cortex-m55": (7, 1)},
    "mvele": {"cortex-m55": (4, 7)},
}
TAKEN = {  # kernel -> {mnemonic: times taken} for N iterations
    "mul": lambda n: {"bne.n": n - 1, "bx": 1},
    "stack": lambda n: {"bne.n": n - 1, "pop": 1},
    "mvele": lambda n: {"le": n - 1, "pop": 1},
}


@pytest.fixture(scope="module", params=["m4", "m55"])
def cycles_fw(request, tmp_path_factory):
    b = load_board(request.param)
    return b, build_fixture(b, FIXTURE, tmp_path_factory.mktemp(f"cycles-{b.name}"))


@pytest.mark.qemu
@pytestmark_qemu
@pytest.mark.parametrize("n", [2, 9])
def test_cost_model_on_hand_counted_loops(cycles_fw, n):
    b, fw = cycles_fw
    kernels = ["mul", "ldld", "lddep", "alu", "stack"] + (["mve", "mvele"] if b.has_mve else [])
    for k in kernels:
        p = qemu.count_instructions(fw.elf, b, args=[k, str(n)], timeout=30)
        assert p.run is not None and p.run.stdout == f"ran {k} {n}\n"
        fn = f"k_{k}"
        for core, (per_iter, fixed) in EXPECTED[k].items():
            got = cycles.estimate(p, core).per_function[fn]
            assert got == per_iter * n + fixed, (k, core, n)
        if k in TAKEN:
            taken = {p.insns[pc].mnemonic: t for pc, t in p.taken.items() if p.functions[pc] == fn}
            assert taken == TAKEN[k](n), k
