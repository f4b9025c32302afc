"""Estimated cycles: a per-core cost table applied to the instructions QEMU executed.

QEMU models no cycles (and reads the DWT cycle counter as 0), but its instruction trace is exact: how often
every instruction ran and how often it branched (kpgen.target.qemu.Profile). This module prices each executed
instruction with the cost of its class on a given core -- ALU, load, store, load/store multiple per register,
multiplies, DSP, divide, branch taken or not, pipeline refill -- plus a few pairwise effects the trace
determines exactly (load pipelining on the Cortex-M3/M4/M33/M55, dual issue on the Cortex-M7, Helium beat
overlap on the Cortex-M55). The result is an ESTIMATE, always labelled so: it assumes zero-wait-state
memory, and caches, bus contention, interrupts and (except where stated) operand-dependent timings are not
modelled. Every number and its source is in docs/cycle-model.md; tests/test_cycles.py checks the arithmetic
on hand-counted firmwares.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kpgen.target.qemu import Insn, Profile

# --------------------------------------------------------------------------------------------- classes
#
# Instruction classes (what the cost tables price):
#   alu        data processing, moves, compares, shifts, extends, bitfields, IT, NOP, loop set-up (DLS)
#   load       LDR/LDRB/LDRH/LDRSB/LDRSH (single register)       store      STR/STRB/STRH, register offset
#   store_imm  STR/STRB/STRH with an immediate (or no) offset      ldrd/strd  load/store a register pair
#   ldm, stm   LDM/POP and STM/PUSH (cost per register)            mul        MUL(S)
#   mla        MLA, MLS                                            mull       SMULL, UMULL
#   mlal       SMLAL, UMLAL, UMAAL                                 dsp        DSP-extension SIMD, pack, saturate
#   dsp_mac    DSP-extension multiplies (SMLAD, SMULBB, SMMLA, SMLALD ...)
#   div        SDIV, UDIV                                          branch     B, B<cc>, CBZ, CBNZ, WLS
#   call       BL                                                  indirect   BX, BLX, TBB, TBH, and any other PC write
#   loop_end   LE, LETP (Armv8.1-M low-overhead loops)             system     MRS, MSR, barriers, BKPT, SVC, hints
#   vload, vint, vmul, vsys   Helium (MVE) instructions on Q registers, by the Cortex-M55 pipe they use
#   fp         scalar floating-point instructions (S/D registers)

CLASSES = (
    "alu", "load", "store", "store_imm", "ldrd", "strd", "ldm", "stm", "mul", "mla", "mull", "mlal",
    "dsp", "dsp_mac", "div", "branch", "call", "indirect", "loop_end", "system",
    "vload", "vint", "vmul", "vsys", "fp",
)  # fmt: skip

_CONDS = ("eq", "ne", "cs", "hs", "cc", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al")

_ALU = set(
    "mov mvn movw movt add adc sub sbc rsb adr and orr orn eor bic lsl lsr asr ror rrx cmp cmn tst teq neg "
    "addw subw ubfx sbfx bfi bfc clz rbit rev rev16 revsh sxtb sxth uxtb uxth sxtab sxtah uxtab uxtah "
    "ssat usat nop csel csinc csinv csneg cset csetm cinc cinv cneg dls dlstp lsll lsrl asrl sqrshr uqrshl "
    "sqshl uqshl srshr urshr sqrshrl uqrshll sqshll uqshll srshrl urshrl bf bfx bfl bflx bfcsel".split()
)
_DSP = set(
    "sxtb16 uxtb16 sxtab16 uxtab16 qadd qsub qdadd qdsub qadd8 qadd16 qsub8 qsub16 qasx qsax uqadd8 uqadd16 "
    "uqsub8 uqsub16 uqasx uqsax sadd8 sadd16 ssub8 ssub16 sasx ssax uadd8 uadd16 usub8 usub16 uasx usax "
    "shadd8 shadd16 shsub8 shsub16 shasx shsax uhadd8 uhadd16 uhsub8 uhsub16 uhasx uhsax sel pkhbt pkhtb "
    "usad8 usada8 ssat16 usat16".split()
)
_DSP_MAC = set(
    "smlabb smlabt smlatb smlatt smlad smladx smlsd smlsdx smlawb smlawt smulbb smulbt smultb smultt smulwb "
    "smulwt smuad smuadx smusd smusdx smmul smmulr smmla smmlar smmls smmlsr smlalbb smlalbt smlaltb smlaltt "
    "smlald smlaldx smlsld smlsldx".split()
)
_LOAD = set("ldr ldrb ldrh ldrsb ldrsh ldrt ldrbt ldrht ldrsbt ldrsht ldrex ldrexb ldrexh lda ldab ldah "
            "ldaex ldaexb ldaexh".split())  # fmt: skip
_STORE = set("str strb strh strt strbt strht strex strexb strexh stl stlb stlh stlex stlexb stlexh".split())
_LDM = set("ldm ldmia ldmfd ldmdb ldmea pop".split())
_STM = set("stm stmia stmea stmdb stmfd push".split())
_SYSTEM = set(
    "bkpt svc cpsid cpsie mrs msr dmb dsb isb wfi wfe sev yield udf sg tt ttt tta ttat clrex clrm "
    "pld pli stc stc2 ldc ldc2 mcr mcr2 mrc mrc2 mcrr mrrc cdp cdp2 vscclrm".split()
)
_SCALAR = {
    **{m: "alu" for m in _ALU},
    **{m: "dsp" for m in _DSP},
    **{m: "dsp_mac" for m in _DSP_MAC},
    **{m: "load" for m in _LOAD},
    **{m: "store" for m in _STORE},
    **{m: "ldm" for m in _LDM},
    **{m: "stm" for m in _STM},
    **{m: "system" for m in _SYSTEM},
    "ldrd": "ldrd", "strd": "strd", "ldaexd": "ldrd", "ldrexd": "ldrd", "strexd": "strd", "stlexd": "strd",
    "mul": "mul", "mla": "mla", "mls": "mla", "smull": "mull", "umull": "mull",
    "smlal": "mlal", "umlal": "mlal", "umaal": "mlal", "sdiv": "div", "udiv": "div",
    "b": "branch", "cbz": "branch", "cbnz": "branch", "wls": "branch", "wlstp": "branch",
    "bl": "call", "blx": "indirect", "bx": "indirect", "bxns": "indirect", "blxns": "indirect",
    "tbb": "indirect", "tbh": "indirect", "le": "loop_end", "letp": "loop_end",
}  # fmt: skip
_IT = re.compile(r"^it[te]{0,3}$")
_REG = re.compile(r"\b(r1[0-5]|r[0-9]|sp|lr|pc|ip|fp|sb|sl)\b")
_ALIAS = {"sp": "r13", "lr": "r14", "pc": "r15", "ip": "r12", "fp": "r11", "sl": "r10", "sb": "r9"}
_NO_DEST = {"cmp", "cmn", "tst", "teq", "nop", "it", "dls", "dlstp", "bf", "bfx", "bfl", "bflx", "bfcsel"}
_VSYS = ("vpst", "vctp", "vpnot")
_VLS = ("vldr", "vstr", "vld2", "vld4", "vst2", "vst4", "vldm", "vstm", "vpush", "vpop", "vlldm", "vlstm")
_VMUL = ("vmul", "vmla", "vmls", "vqdmul", "vqrdmul", "vqdml", "vqrdml", "vaddv", "vaddlv", "vrmlal",
         "vrmlsl", "vcmp", "vpt", "vfma", "vfms", "vcvt", "vrint", "vcmul", "vcmla", "vmaxnm", "vminnm")  # fmt: skip
_QREG = re.compile(r"\bq[0-7]\b")


def base_mnemonic(mnemonic: str) -> str:
    """'ldrb.w' -> 'ldrb', 'bne.n' -> 'b', 'movlt' -> 'mov', 'adds' -> 'add', 'ittet' -> 'it'.

    Width and data-type suffixes after the first '.', then a condition code and/or the flag-setting 'S'
    are stripped, but only when what remains is a known mnemonic (so 'bls' is B<LS>, 'mls' stays MLS).
    """
    m = mnemonic.lower().split(".", 1)[0]
    if m.startswith("v"):
        return m
    if _IT.match(m):
        return "it"
    if m in _SCALAR:
        return m
    if m[-2:] in _CONDS and m[:-2] in _SCALAR:
        return m[:-2]
    if m.endswith("s") and m[:-1] in _SCALAR:
        return m[:-1]
    if m[-2:] in _CONDS and m[-3:-2] == "s" and m[:-3] in _SCALAR:
        return m[:-3]
    return m


def _split_operands(ops: str) -> list[str]:
    """Top-level comma split: 'r2, [r3, #4]' -> ['r2', '[r3, #4]'] (brackets and braces kept whole)."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in ops:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _regs(text: str) -> set[str]:
    return {_ALIAS.get(r, r) for r in _REG.findall(text)}


def register_count(operands: str) -> int:
    """Registers in a {...} list: '{r4, r5, lr}' -> 3, '{r4-r7, pc}' -> 5, '{d8-d15}' -> 8."""
    m = re.search(r"\{([^}]*)\}", operands)
    if not m:
        return 1
    n = 0
    for item in m.group(1).split(","):
        item = item.strip()
        r = re.fullmatch(r"([a-z]+)(\d+)\s*-\s*[a-z]+(\d+)", item)
        n += int(r.group(3)) - int(r.group(2)) + 1 if r else (1 if item else 0)
    return max(n, 1)


@dataclass(frozen=True)
class Decoded:
    """What the cost model needs to know about one instruction."""

    cls: str  # one of CLASSES
    base: str  # base mnemonic
    nregs: int  # registers transferred (LDM/STM/PUSH/POP: list length; LDRD/STRD: 2; else 1)
    writes_pc: bool  # always transfers control (BX, POP {..pc}, LDR pc, MOV pc ...)
    conditional: bool  # a conditional branch (B<cc>, CBZ, CBNZ, WLS)
    dests: frozenset[str]  # registers written (for dependency checks)
    reads: frozenset[str]  # registers read
    addr_regs: frozenset[str]  # registers in the address of a load/store


def decode(insn: Insn) -> Decoded:
    """Classify one disassembled instruction (kpgen.target.qemu.Insn) for the cost model."""
    base = base_mnemonic(insn.mnemonic)
    ops = insn.operands
    parts = _split_operands(ops)
    all_regs = _regs(ops)
    addr = frozenset(_regs(" ".join(p for p in parts if p.startswith("["))))
    nregs = 1
    conditional = False
    cls: str
    if base.startswith("v"):
        if base.startswith(_VSYS):
            cls = "vsys"
        elif not _QREG.search(ops):
            cls = "fp"
            if base in ("vpush", "vpop") or base.startswith(("vldm", "vstm")):
                nregs = register_count(ops)
        elif base.startswith(_VLS):
            cls = "vload"
        elif base.startswith(_VMUL):
            cls = "vmul"
        else:
            cls = "vint"
    elif base == "it":
        cls = "alu"
    else:
        cls = _SCALAR.get(base, "alu")
    m = insn.mnemonic.lower().split(".", 1)[0]
    if cls == "branch" and base == "b":
        conditional = m != "b"
    elif cls == "branch":
        conditional = True  # CBZ, CBNZ, WLS
    if cls in ("ldm", "stm"):
        nregs = register_count(ops)
    elif cls in ("ldrd", "strd"):
        nregs = 2
    if cls == "store":
        # STR Rt, [Rn, #imm] or [Rn] (or indexed by an immediate): the address needs no second register.
        address = [p for p in parts[1:] if p.startswith("[")]
        inner = address[0][1:].split("]")[0] if address else ""
        if len(_regs(inner)) <= 1 and not any(_REG.fullmatch(p.strip()) for p in parts[2:]):
            cls = "store_imm"
    first = _ALIAS.get(parts[0].strip(), parts[0].strip()) if parts else ""
    writes_pc = (
        cls == "indirect"
        or (cls == "ldm" and "pc" in ops)
        or (cls in ("load", "alu") and first == "r15" and base not in _NO_DEST)
    )
    if writes_pc and cls == "alu":
        cls = "indirect"
    # Registers written and read (for the Cortex-M7 dual-issue and the load-pipelining checks).
    dests: set[str] = set()
    reads: set[str] = set(all_regs)
    if cls in ("mull", "mlal") or (cls == "dsp_mac" and base.startswith(("smlal", "smlsl"))):
        dests = _regs(" ".join(parts[:2]))
        reads = _regs(" ".join(parts[2:])) | (dests if cls != "mull" else set())
    elif cls in ("alu", "load", "mul", "mla", "div", "dsp", "dsp_mac") and base not in _NO_DEST and parts:
        dests = _regs(parts[0])
        reads = _regs(" ".join(parts[1:]))
        if len(parts) == 2 and cls == "alu" and base not in ("mov", "mvn", "movw", "adr", "clz", "rbit", "rev",
                                                              "rev16", "revsh", "sxtb", "sxth", "uxtb", "uxth",
                                                              "neg"):
            reads |= dests  # two-operand form: "adds r0, #1" is r0 = r0 + 1
        if base in ("movt", "bfi", "bfc"):
            reads |= dests
    elif cls in ("ldm", "ldrd"):
        dests = _regs(ops[ops.find("{") :]) if cls == "ldm" else _regs(" ".join(parts[:2]))
        reads = set(addr) if cls == "ldrd" else _regs(parts[0]) if parts and "{" not in parts[0] else {"r13"}
    elif base in ("bl", "blx"):
        dests = {"r14"}
    if cls in ("stm",) and parts and "{" in parts[0]:
        reads |= {"r13"}  # PUSH
    return Decoded(
        cls=cls,
        base=base,
        nregs=nregs,
        writes_pc=writes_pc,
        conditional=conditional,
        dests=frozenset(dests),
        reads=frozenset(reads),
        addr_regs=addr,
    )


# --------------------------------------------------------------------------------------------- cost tables


@dataclass(frozen=True)
class CoreModel:
    """Cycle costs of one core; see docs/cycle-model.md for the source of every number."""

    name: str  # "Cortex-M4"
    costs: Mapping[str, float]  # class -> cycles for one execution (LDM/STM: the fixed part)
    per_register: float = 1.0  # LDM/STM/PUSH/POP: extra cycles per register in the list
    refill: float = 2.0  # P: pipeline refill added to every taken branch / PC write
    load_pipelining: bool = False  # Cortex-M3/M4: a load/store right after a load saves a cycle
    dual_issue: bool = False  # Cortex-M7: pairs of adjacent instructions issue together
    mispredict: float = 0.0  # Cortex-M7: cycles per mispredicted or indirect branch (replaces refill)
    mve_overlap: bool = False  # Cortex-M55: beats of adjacent MVE instructions on different pipes overlap
    load_use_stall: float = 0.0  # Cortex-M7: an instruction reading the register loaded just before it waits
    loop_end_refill: bool = True  # False: a taken LE costs no refill (Armv8.1-M low-overhead loop)
    notes: tuple[str, ...] = ()


# Cortex-M4 Technical Reference Manual r0p1 (ARM DDI 0439B), section 3.3.1, Table 3-1, zero wait states.
_M4 = {
    "alu": 1, "load": 2, "store": 2, "store_imm": 1, "ldrd": 3, "strd": 3, "ldm": 1, "stm": 1,
    "mul": 1, "mla": 1, "mull": 1, "mlal": 1, "dsp": 1, "dsp_mac": 1, "div": 7,
    "branch": 1, "call": 1, "indirect": 1, "loop_end": 1, "system": 1,
    "vload": 2, "vint": 1, "vmul": 1, "vsys": 1, "fp": 1,
}  # fmt: skip

CORES: dict[str, CoreModel] = {
    # Cortex-M0 Technical Reference Manual r0p0 (ARM DDI 0432C), section 3.3, Table 3-1. MULS is 1 cycle
    # with the fast multiplier (32 with the small iterative one; we assume the fast one). B taken 3 = 1 + 2,
    # BL 4 = 2 + 2, BX/BLX 3, POP {..,PC} 4 + N = (1 + registers incl. PC) + 2.
    "cortex-m0": CoreModel(
        "Cortex-M0",
        {**_M4, "store": 2, "store_imm": 2, "ldrd": 3, "strd": 3, "mla": 1, "mull": 1, "mlal": 1,
         "call": 2, "div": 7},
        refill=2,
        notes=("MULS 1 cycle (fast-multiplier configuration assumed; the small multiplier takes 32)",),
    ),
    # Cortex-M0+ Technical Reference Manual r0p1 (ARM DDI 0484C), section 3.3, Table 3-1: the 2-stage
    # pipeline refills in 1 cycle: B taken 2, BL 3, BX/BLX 2, MOV PC 2, POP {..,PC} 3 + N.
    "cortex-m0plus": CoreModel(
        "Cortex-M0+",
        {**_M4, "store": 2, "store_imm": 2, "call": 2, "div": 7},
        refill=1,
        notes=("MULS 1 cycle (fast-multiplier configuration assumed; the small multiplier takes 32)",),
    ),
    # Cortex-M3 Technical Reference Manual r2p1 (ARM DDI 0337I), section 3.3.1, Table 3-1 (18-1 in r2p0).
    "cortex-m3": CoreModel(
        "Cortex-M3",
        {**_M4, "mla": 2, "mull": 4, "mlal": 5.5, "dsp": 1, "dsp_mac": 1},
        load_pipelining=True,
        notes=("SMULL/UMULL 3-5 and SMLAL/UMLAL 4-7 cycles (early termination): midpoints 4 and 5.5",),
    ),
    "cortex-m4": CoreModel("Cortex-M4", dict(_M4), load_pipelining=True),
    # No per-instruction table is published for the Cortex-M33; LLVM schedules it with its Cortex-M4 model.
    "cortex-m33": CoreModel(
        "Cortex-M33", dict(_M4), load_pipelining=True,
        notes=("Cortex-M4 table assumed (no public Cortex-M33 cycle table); limited dual issue not modelled",),
    ),
    # No per-instruction table is published for the Cortex-M7: issue/pairing rules from LLVM's Cortex-M7
    # scheduling model (llvm/lib/Target/ARM/ARMScheduleM7.td, written by Arm): 2-wide in-order issue, two
    # ALUs, two load pipes, one store, one MAC, one branch unit; LDM/STM/LDRD/STRD and divides single-issue;
    # DSP/extend/saturate only in the first slot; mispredict penalty 4.
    "cortex-m7": CoreModel(
        "Cortex-M7",
        {**_M4, "load": 1, "store": 1, "store_imm": 1, "ldrd": 1, "strd": 1, "ldm": 1, "stm": 1},
        per_register=0.5,
        refill=0.0,
        dual_issue=True,
        mispredict=4.0,
        load_use_stall=1.0,
        notes=(
            "dual issue of adjacent pairs by LLVM's Cortex-M7 rules; LDM/STM 1 + N/2 (64-bit data path)",
            "load-use: 1 stall cycle when an instruction reads the register loaded by the one before it",
            "conditional branches mispredict min(taken, not taken) times, indirect branches always: 4 cycles",
        ),
    ),
    # Scalar: the Cortex-M4 table (LLVM: "Cortex-M55 is a lot like the M4/M33 in terms of scheduling").
    # Helium: the Cortex-M55 executes each 128-bit MVE instruction as two beats of 64 bits, one beat per
    # cycle on its pipe (load/store, integer, FP/multiply); beats of consecutive instructions on different
    # pipes overlap (llvm/lib/Target/ARM/ARMScheduleM55.td).
    "cortex-m55": CoreModel(
        "Cortex-M55",
        {**_M4, "vload": 2, "vint": 2, "vmul": 2, "vsys": 1, "fp": 1},
        load_pipelining=True,
        mve_overlap=True,
        loop_end_refill=False,
        notes=(
            "MVE: 2 cycles per instruction, 1 when it follows an MVE instruction on another pipe",
            "LE (low-overhead loop end) costs 1 cycle, no refill; 16-bit dual issue not modelled",
        ),
    ),
}
_MVE_PIPE = {"vload": "ls", "vint": "int", "vmul": "mul"}
_MAC = {"mul", "mla", "mull", "mlal", "dsp_mac"}
_SLOT0_ONLY = {"dsp"} | {"sxtb", "sxth", "uxtb", "uxth", "sxtab", "sxtah", "uxtab", "uxtah", "ssat", "usat",
                         "rev", "rev16", "revsh", "rbit", "sbfx", "ubfx", "bfi", "bfc", "clz"}  # fmt: skip
_SINGLE_ISSUE = {"ldm", "stm", "ldrd", "strd", "div", "system", "vload", "vint", "vmul", "vsys", "fp"}


def core_model(core: str) -> CoreModel | None:
    """The cost model for a -mcpu name ("cortex-m4", "cortex-m55+nomve" ...), or None if there is none."""
    return CORES.get(core.lower().split("+", 1)[0])


@dataclass(frozen=True)
class CycleEstimate:
    """Estimated cycles of a profiled window (an ESTIMATE: see docs/cycle-model.md)."""

    core: str  # "Cortex-M4"
    cycles: int  # rounded to whole cycles
    instructions: int  # the exact count the estimate prices
    per_function: dict[str, int] = field(default_factory=dict)  # heaviest first
    by_class: dict[str, tuple[int, float]] = field(default_factory=dict)  # class -> (instructions, cycles)

    @property
    def cpi(self) -> float:
        return self.cycles / self.instructions if self.instructions else 0.0


def _base_cost(model: CoreModel, d: Decoded) -> float:
    c = float(model.costs.get(d.cls, 1))
    if d.cls in ("ldm", "stm"):
        regs = math.ceil(d.nregs * model.per_register) if model.per_register < 1 else d.nregs * model.per_register
        c += regs
    elif d.cls == "fp" and d.nregs > 1:
        c += d.nregs  # VPUSH/VPOP/VLDM/VSTM
    elif d.base in ("tbb", "tbh"):
        c = float(model.costs["load"])  # a table load, then the branch
    elif d.writes_pc and d.cls == "load":
        c = float(model.costs["load"])
    return c


def _branch_cost(model: CoreModel, d: Decoded, n: int, taken: int) -> float:
    if model.mispredict:
        if d.cls == "branch" and d.conditional:
            return model.mispredict * min(taken, n - taken)
        if d.writes_pc:
            return model.mispredict * n  # indirect: not predicted (assumption)
        return 0.0  # direct B, BL, and LE: predicted by the branch target cache
    if d.cls == "loop_end" and not model.loop_end_refill:
        return 0.0
    return model.refill * taken


def _pairable_m7(a: Decoded, b: Decoded) -> bool:
    """Can b issue in the same cycle as a, the instruction just before it (LLVM's Cortex-M7 rules)?"""
    if a.cls in _SINGLE_ISSUE or b.cls in _SINGLE_ISSUE:
        return False
    if a.writes_pc or a.cls in ("branch", "call", "indirect", "loop_end"):
        return False  # a branch ends the issue group
    if b.cls == "dsp" or b.base in _SLOT0_ONLY:
        return False
    if a.cls in ("store", "store_imm") and b.cls in ("store", "store_imm"):
        return False
    if a.cls in _MAC and b.cls in _MAC:
        return False
    return not (a.dests & b.reads)


def _pair_saving(model: CoreModel, a: Decoded, b: Decoded) -> float:
    """Cycles saved each time b executes right after a (a falls through to b)."""
    if (model.load_pipelining and a.cls == "load" and not a.writes_pc
            and b.cls in ("load", "store") and not b.writes_pc and not (a.dests & b.addr_regs)):
        return 1.0
    if model.mve_overlap:
        pa, pb = _MVE_PIPE.get(a.cls), _MVE_PIPE.get(b.cls)
        if pa and pb and pa != pb:
            return 1.0
    if model.load_use_stall and a.cls in ("load", "ldrd", "ldm") and (a.dests & b.reads):
        return -model.load_use_stall
    return 0.0


def estimate(profile: Profile, core: str) -> CycleEstimate:
    """Price every executed instruction of `profile` with the cost table of `core` (a -mcpu name).

    Raises KeyError for a core without a table (see core_model and CORES).
    """
    model = core_model(core)
    if model is None:
        raise KeyError(f"no cycle cost table for core '{core}'; known: {', '.join(sorted(CORES))}")
    unknown = Decoded("alu", "?", 1, False, False, frozenset(), frozenset(), frozenset())
    dec = {pc: decode(insn) for pc, insn in profile.insns.items()}
    cost: dict[int, float] = {}
    for pc, n in profile.per_pc.items():
        d = dec.get(pc, unknown)
        cost[pc] = n * _base_cost(model, d) + _branch_cost(model, d, n, profile.taken.get(pc, 0))
    # Pairwise effects: b runs right after a exactly (count(a) - taken(a)) times when b = a + size(a).
    paired_second: set[int] = set()
    for pc in sorted(profile.per_pc):
        insn = profile.insns.get(pc)
        if insn is None:
            continue
        nxt = pc + insn.size
        if nxt not in profile.per_pc or nxt not in dec:
            continue
        fall = profile.per_pc[pc] - profile.taken.get(pc, 0)
        if fall <= 0:
            continue
        a, b = dec[pc], dec[nxt]
        saving = _pair_saving(model, a, b)
        if model.dual_issue and pc not in paired_second and _pairable_m7(a, b):
            saving += 1.0
            paired_second.add(nxt)
        if saving:
            cost[nxt] -= saving * min(fall, profile.per_pc[nxt])
    by_class: dict[str, list] = {}
    per_function: dict[str, float] = {}
    for pc, c in cost.items():
        d = dec.get(pc, unknown)
        entry = by_class.setdefault(d.cls, [0, 0.0])
        entry[0] += profile.per_pc[pc]
        entry[1] += c
        name = profile.functions.get(pc, "<unknown>")
        per_function[name] = per_function.get(name, 0.0) + c
    total = sum(cost.values())
    return CycleEstimate(
        core=model.name,
        cycles=int(round(total)),
        instructions=sum(profile.per_pc.values()),
        per_function={k: int(round(v)) for k, v in sorted(per_function.items(), key=lambda kv: (-kv[1], kv[0]))},
        by_class={k: (v[0], v[1]) for k, v in sorted(by_class.items(), key=lambda kv: -kv[1][1])},
    )


# --------------------------------------------------------------------------------------------- measured on the target

_MEASURED = re.compile(r"^KPGEN-CYCLES timer=(dwt|systick) (?:(stopped|overflow|not-cycles)|"
                       r"runs=(\d+) first=(\d+) min=(\d+) max=(\d+))\s*$", re.M)
TIMER_NAMES = {"dwt": "DWT CYCCNT", "systick": "SysTick"}


@dataclass(frozen=True)
class MeasuredCycles:
    """The firmware's own timing of its inferences (the KPGEN-CYCLES line of templates/main.c.j2)."""

    timer: str  # "dwt" or "systick"
    runs: int = 0  # inferences timed
    first: int = 0  # sample 0's cycles: the inference kpgen's estimate prices
    low: int = 0
    high: int = 0
    problem: str | None = None  # "stopped" (read 0), "overflow" (SysTick wrapped), "not-cycles" (slower than the core)


def measured_cycles(output: str) -> MeasuredCycles | None:
    """The KPGEN-CYCLES line in a firmware's output, or None when it printed none."""
    m = _MEASURED.search(output)
    if m is None:
        return None
    if m.group(2):
        return MeasuredCycles(timer=m.group(1), problem=m.group(2))
    runs, first, low, high = (int(m.group(k)) for k in (3, 4, 5, 6))
    return MeasuredCycles(timer=m.group(1), runs=runs, first=first, low=low, high=high)


def describe_measured(m: MeasuredCycles | None, emulated: bool, clock_hz: int | None = None) -> str:
    """What the report says about measured cycles. Under an emulator it is always "not measured": QEMU reads
    CYCCNT as 0 and runs SysTick from its own clock, so no number it gives is a cycle count."""
    if emulated:
        if m is not None and m.timer == "systick":
            return "not measured (emulator: SysTick follows QEMU's clock, not the core's cycles)"
        if m is not None and m.problem == "stopped":
            return "not measured (emulator: DWT CYCCNT reads 0 under QEMU)"
        return "not measured (emulator)"
    if m is None:
        return "not measured (the firmware printed no KPGEN-CYCLES line)"
    name = TIMER_NAMES[m.timer]
    if m.problem == "stopped":
        return f"not measured ({name} did not advance: this core has no cycle counter, or it is disabled)"
    if m.problem == "not-cycles":
        return f"not measured ({name} advanced slower than the core executes: it does not count processor cycles)"
    if m.problem == "overflow":
        return f"not measured (one inference took over 2^24 cycles, the range of the 24-bit {name})"
    at = f", {1e3 * m.first / clock_hz:.3f} ms at {clock_hz / 1e6:g} MHz" if clock_hz else ""
    spread = f"; {m.low:,} to {m.high:,} over {m.runs} samples" if m.runs > 1 else ""
    return f"{m.first:,} (sample 0{at}{spread}; {name}, measured on the board)"
