"""Interpolated activation tables (`kpgen emit --act-table interp|interp128`): the golden look-up over the whole
int16 input range against the float functions and against the C runtime (portable and DSP paths, host builds),
and every cell bit-exact under QEMU on the Cortex-M4 and M0 (and the M55's Helium gate pass) with them."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kpgen import KpgenError
from kpgen.cli import main
from kpgen.codegen.emit import render_sources, write_tree
from kpgen.ir import DenseQ, ModelQ
from kpgen.pipeline import check_act_table
from kpgen.reference import golden
from kpgen.reference.vectors import expected_for
from kpgen.target import qemu, toolchain
from kpgen.target.boards import load_board
from kpgen.target.verify import verify_output
from kpgen.train.loop import save_checkpoint
from tests.factories import random_int8, random_layer
from tests.runtime_ctypes import CFLAGS, HOST_ACLE_H, RUNTIME_DIR, SHIM_C
from tests.test_cells_e2e import C, I, T, build_checkpoint

Z = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)  # every Q3.12 input
ZF = Z.astype(np.float64) / 4096.0
FLOAT = {"sigmoid": 1.0 / (1.0 + np.exp(-ZF)), "tanh": np.tanh(ZF)}
# max |table value / 2**15 - f(z)| over every int16 z, measured; the interpolated tables stay below these
BOUNDS = {("full", "sigmoid"): 1.94e-3, ("full", "tanh"): 7.7e-3,
          ("interp", "sigmoid"): 6.8e-5, ("interp", "tanh"): 3.95e-4,
          ("interp128", "sigmoid"): 2.1e-4, ("interp128", "tanh"): 1.52e-3}  # fmt: skip


def _err(variant: str, kind: str) -> float:
    got = golden._lookup(Z, golden.make_table(kind, variant)).astype(np.float64) / 32768.0
    return float(np.max(np.abs(got - FLOAT[kind])))


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
@pytest.mark.parametrize("variant", list(golden.ACT_TABLES))
def test_error_bounds_over_the_int16_range(variant: str, kind: str) -> None:
    """Each variant's worst error over all 65,536 inputs is within its bound; interpolation beats the full table
    with 4x (interp) and 8x (interp128) fewer entries: at least 28x and 19x (sigmoid, tanh), and 9x and 5x."""
    err = _err(variant, kind)
    assert err <= BOUNDS[(variant, kind)], err
    gain = {"interp": {"sigmoid": 28, "tanh": 19}, "interp128": {"sigmoid": 9, "tanh": 5}}
    if variant != "full":
        assert err * gain[variant][kind] < _err("full", kind)


@pytest.mark.parametrize("variant, knots, shift", [("full", 1024, 0), ("interp", 257, 8), ("interp128", 129, 9)])
def test_table_shapes_and_knots(variant: str, knots: int, shift: int) -> None:
    """Sizes and the variant read back from a table's length; the knots are f at z_k = (k 2**s - 32768) / 4096,
    so the interpolation is exact at every knot (the last knot is z = 8)."""
    for kind in ("sigmoid", "tanh"):
        t = golden.make_table(kind, variant)
        assert t.dtype == np.int16 and t.shape == (knots,)
        assert golden.table_interp_shift(t) == shift and golden.table_variant(t) == variant
        if shift:
            zk = (np.arange(knots - 1, dtype=np.int64) << shift) - 32768  # every knot but z = 8 (not an int16)
            assert np.array_equal(golden._lookup(zk.astype(np.int16), t), t[:-1])
    with pytest.raises(ValueError):
        golden.table_interp_shift(np.zeros(300, np.int16))
    with pytest.raises(ValueError):
        golden.make_table("tanh", "interp64")


@pytest.mark.parametrize("variant", ["interp", "interp128"])
def test_golden_interpolation_formula(variant: str) -> None:
    """The golden look-up is a + rsr((b - a) f, s) between knots a, b (the C portable form), monotonic for the
    real tables, and stays between its two knots for any table (so the result is an int16)."""
    s = golden.ACT_TABLES[variant]
    shift = 16 - s
    u = Z.astype(np.int64) + 32768
    i, f = u >> shift, u & ((1 << shift) - 1)
    rng = np.random.default_rng(11)
    for t in (golden.make_table("sigmoid", variant), golden.make_table("tanh", variant),
              rng.integers(-32768, 32768, (1 << s) + 1).astype(np.int16)):  # fmt: skip
        a, b = t[i].astype(np.int64), t[i + 1].astype(np.int64)
        want = a + (((b - a) * f + (1 << (shift - 1))) >> shift)
        got = golden.kp_tanh_s16(Z, t)
        assert got.dtype == np.int16 and np.array_equal(got, want)
        assert np.all(got >= np.minimum(a, b)) and np.all(got <= np.maximum(a, b))
    assert np.all(np.diff(golden.kp_sigmoid_s16(Z, golden.make_table("sigmoid", variant)).astype(np.int64)) >= 0)


def _host_lib(tmp: Path, shift: int, dsp: bool) -> ctypes.CDLL:
    """The runtime built for the host with KP_ACT_INTERP_SHIFT=shift, portable or DSP (stand-in intrinsics)."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "shim.c").write_text(SHIM_C)
    extra = [f"-DKP_ACT_INTERP_SHIFT={shift}"]
    if dsp:
        (tmp / "acle").mkdir(exist_ok=True)
        (tmp / "acle" / "arm_acle.h").write_text(HOST_ACLE_H)
        extra += ["-D__ARM_FEATURE_DSP=1", f"-I{tmp / 'acle'}"]
    lib = tmp / "librt.so"
    sources = sorted(str(p) for p in RUNTIME_DIR.glob("*.c"))
    cmd = ["cc", *CFLAGS, *extra, f"-I{RUNTIME_DIR}", *sources, str(tmp / "shim.c"), "-o", str(lib)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return ctypes.CDLL(str(lib))


@pytest.mark.parametrize("dsp", [False, True], ids=["portable", "dsp"])
@pytest.mark.parametrize("variant", ["interp", "interp128"])
def test_c_lookup_equals_golden_everywhere(tmp_path: Path, variant: str, dsp: bool) -> None:
    """kp_sigmoid_s16 / kp_tanh_s16 built with the variant's KP_ACT_INTERP_SHIFT give the golden values for every
    int16 input, for the real tables and for a random one (each knot is read where the golden model reads it)."""
    shift = 16 - golden.ACT_TABLES[variant]
    lib = _host_lib(tmp_path, shift, dsp)
    p16 = ctypes.POINTER(ctypes.c_int16)
    rng = np.random.default_rng(12)
    tables = [golden.make_table("sigmoid", variant), golden.make_table("tanh", variant),
              rng.integers(-32768, 32768, (65536 >> shift) + 1).astype(np.int16)]  # fmt: skip
    for t in tables:
        for fn in (lib.kpt_sigmoid_n, lib.kpt_tanh_n):
            out = np.zeros(Z.size, np.int16)
            fn(Z.ctypes.data_as(p16), ctypes.c_int32(Z.size), t.ctypes.data_as(p16), out.ctypes.data_as(p16))
            assert np.array_equal(out, golden._lookup(Z, t))


def test_unknown_act_table_is_a_user_error() -> None:
    board = load_board("m4")
    assert check_act_table(board, None) == "full" and check_act_table(board, "interp") == "interp"
    with pytest.raises(KpgenError, match="--act-table 'big' is no activation table variant; use one of: full"):
        check_act_table(board, "big")
    with pytest.raises(KpgenError, match="board m4's act_table 'small' is no activation table variant"):
        check_act_table(dataclasses.replace(board, act_table="small"), None)


# every cell; the LSTM with three factors keeps its cell states in the trace (streaming), FastRNN with e > 0
QEMU_CASES = ["lstm-3-factors", "gru-kp", "fastrnn-growing-stacked", "fastgrnn-kp", "rnn-kp"]


def _emit_run(tmp_path: Path, case: str, board: str, act: str) -> tuple[dict, int]:
    ck, _ = build_checkpoint(case)
    pt = tmp_path / f"{case}.pt"
    save_checkpoint(ck, pt)
    rng = np.random.default_rng(3)
    vec = tmp_path / "v.npz"
    # inputs large enough that the gates reach the whole table, the saturated ends included
    np.savez(vec, x=rng.uniform(-4.0, 4.0, (6, T, I)), y=rng.integers(0, C, 6))
    out = tmp_path / board
    runner = CliRunner()
    res = runner.invoke(main, ["emit", str(pt), "--board", board, "-o", str(out), "--vectors", str(vec),
                               "--act-table", act])  # fmt: skip
    assert res.exit_code == 0, res.output
    src = (out / "model.c").read_text()
    knots = (65536 >> (16 - golden.ACT_TABLES[act])) + 1
    assert f"_tanh_table[{knots}]" in src and f"#if KP_ACT_TABLE_SIZE != {knots}" in src
    assert f"-DKP_ACT_INTERP_SHIFT={16 - golden.ACT_TABLES[act]}" in (out / "Makefile").read_text()
    res = runner.invoke(main, ["run", str(out), "--timeout", "120"])
    assert res.exit_code == 0, res.output
    assert "PASS: bit-exact" in res.output and "6/6" in res.output, res.output
    m = re.search(r"instructions per inference\s+([\d,]+)", res.output)
    assert m, res.output
    return json.loads((out / "kpgen.json").read_text()), int(m.group(1).replace(",", ""))


@pytest.mark.qemu
@pytest.mark.parametrize("board, act", [("m4", "interp"), ("m0", "interp128")])
@pytest.mark.parametrize("case", QEMU_CASES)
def test_cells_bit_exact_with_interpolated_tables(tmp_path: Path, case: str, board: str, act: str) -> None:
    """Each cell emitted with interpolated tables runs bit-exact under QEMU (the DSP look-up on the M4, the
    portable one on the M0); the manifest records the variant."""
    manifest, _ = _emit_run(tmp_path, case, board, act)
    assert manifest["act_table"] == act


@pytest.mark.qemu
def test_helium_gate_pass_with_interpolated_tables(tmp_path: Path) -> None:
    """The M55's Helium gate pass (gathered knots, VRSHR) gives the golden bits too."""
    manifest, _ = _emit_run(tmp_path, "lstm-3-factors", "m55", "interp")
    assert manifest["act_table"] == "interp"


def _lstm_stack(seed: int, act: str) -> ModelQ:
    """Three random LSTM layers (tests.factories) whose hidden sizes leave tails for every unrolled and vector loop
    (19, 16, 11) and whose cell states are Q6.9, Q3.12 and Q0.15 (both c12 branches), with `act` tables."""
    rng = np.random.default_rng(seed)
    layers, prev = [], 7
    for hs, cf in ((19, 9), (16, 12), (11, 15)):
        layers.append(random_layer(rng, prev, hs, cell_frac=cf))
        prev = hs
    head = DenseQ(weight=random_int8(rng, (4, prev)), bias=rng.integers(-(1 << 16), 1 << 16, 4).astype(np.int32),
                  out_scale=1e-4)  # fmt: skip
    model = ModelQ(input_size=7, num_classes=4, input_scale=1 / 64, layers=tuple(layers), head=head,
                   sigmoid_table=golden.make_table("sigmoid"), tanh_table=golden.make_table("tanh"))  # fmt: skip
    return golden.with_act_tables(model, act)


@pytest.mark.qemu
@pytest.mark.parametrize("act", ["full", "interp"])
@pytest.mark.parametrize("board_name", ["m0", "m4", "m55"])
def test_lstm_gate_and_cell_paths_bit_exact(tmp_path: Path, board_name: str, act: str) -> None:
    """The LSTM's gate pass and cell on each code path (Armv6-M two-loop gates, DSP unrolled gates, Helium gates
    and cell) against the golden model: random weights that saturate gates, every cell_frac branch, odd sizes."""
    model = _lstm_stack(21, act)
    rng = np.random.default_rng(22)
    xq = rng.integers(-127, 128, (3, 6, 7)).astype(np.int8)
    exp = expected_for(model, xq)
    board = load_board(board_name)
    out = tmp_path / "fw"
    write_tree(out, render_sources(model, board, exp, "model", "x.pt"), {}, force=False)
    res = qemu.run(toolchain.build(out).elf, board, timeout=120)
    vec = {"samples": 3, "labels": [-1] * 3, "scores": exp.scores.tolist(),
           "final_digests": [f"{int(d):08x}" for d in exp.digests[:, -1]]}  # fmt: skip
    assert res.exit_code == 0, res.stdout[-2000:]
    assert verify_output(res.stdout, vec).passed


def test_bench_section_compares_the_variants() -> None:
    """`make bench`'s activation-table section: one row per variant with its bytes and worst errors, and the
    instructions per step of the configurations built with it (board defaults resolved: m0 uses interp128)."""
    from kpgen.studies import bench

    def result(target: str, act: str | None, per_step: int, stages: int) -> bench.Result:
        steps = {t: {"instructions": t * per_step, "matrix": 0, "cycles": float("nan"),
                     "per_function": {"kp_lstm_gates_s16": t * stages, "kp_lstm_cell_s16": t}} for t in bench.STEPS}
        return bench.Result(config=bench.Config(128, 28, "kp", target, act), factors=((1, 1, 1, 1),) * 2,
                            compression=100.0, macs=1, steps=steps, bit_exact=True, samples=2, code_bytes=0,
                            weight_bytes=0, flash_bytes=0, arena_bytes=0, stack_bytes=0)  # fmt: skip

    results = [result("m4", None, 16000, 4000), result("m4", "interp", 20000, 7000),
               result("m4", "interp128", 20001, 7001), result("m0", None, 112000, 40000),
               result("m0", "full", 104000, 39000), result("m0", "interp", 112600, 40500)]  # fmt: skip
    acc = [("x.pt", 10, 0.9, {v: (0.8, 1.0) for v in golden.ACT_TABLES})]
    text = "\n".join(bench._act_section(results, acc))
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| `")}  # fmt: skip
    assert rows["`full`"][:3] == ["4,096", "1.9e-03", "7.7e-03"]
    assert rows["`interp`"][0] == "1,028" and rows["`interp128`"][0] == "516"
    assert rows["`full`"][3:] == ["104,000", "16,000", "39,001", "4,001"]  # instr/step m0, m4; gates + cell m0, m4
    assert rows["`interp128`"][3:] == ["112,000", "20,001", "40,001", "7,002"]
    assert "| x.pt | 10 | 90.00% | 80.00% (100.0%) |" in text


def test_manifest_records_the_variant(tmp_path: Path) -> None:
    """kpgen.json records the tables' variant (the board's default when not given); a hand-edited unknown one is
    the usual one-line manifest error."""
    from kpgen.pipeline import read_manifest

    ck, _ = build_checkpoint("gru-kp")
    pt = tmp_path / "g.pt"
    save_checkpoint(ck, pt)
    vec = tmp_path / "v.npz"
    np.savez(vec, x=np.random.default_rng(4).uniform(-1, 1, (3, T, I)))
    runner = CliRunner()
    for board, want in (("m0", "interp128"), ("m4", "full")):
        res = runner.invoke(main, ["emit", str(pt), "--board", board, "-o", str(tmp_path / board), "--vectors",
                                   str(vec)])  # fmt: skip
        assert res.exit_code == 0, res.output
        assert read_manifest(tmp_path / board)["act_table"] == want
    assert "KP_ACT_INTERP_SHIFT=9" in (tmp_path / "m0" / "Makefile").read_text()
    assert "KP_ACT_INTERP_SHIFT" not in (tmp_path / "m4" / "Makefile").read_text()
    mf = tmp_path / "m4" / "kpgen.json"
    m = json.loads(mf.read_text())
    m["act_table"] = "huge"
    mf.write_text(json.dumps(m))
    want_msg = "kpgen.json is not as `kpgen emit` writes it: 'act_table' is not 'full'"
    with pytest.raises(KpgenError, match=re.escape(want_msg)):
        read_manifest(tmp_path / "m4")
