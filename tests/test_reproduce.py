"""`make reproduce` in miniature: the same code path (kpgen.studies.reproduce.reproduce) on two benchmarks with one
seed, one epoch and small subsets, one QEMU count; checks the pipeline and the shape of docs/results.md, never the
accuracies. Also the sizing of the real configuration (no training): the matched-size rules hold."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from kpgen.studies import reproduce as rp
from kpgen.train.compress import param_counts
from kpgen.train.loop import model_from_checkpoint
from kpgen.train.nn.matrix import spec_params

EXPECTED_KEYS = ("dense", "kp", "kp+qat", "hkp", "hkp+qat", "prune@kp", "lowrank@kp", "small@kp", "prune@hkp",
                 "lowrank@hkp", "small@hkp")
TABLE_COLUMNS = 10


def tiny_config() -> rp.Config:
    """MNIST rows (KP-LSTM: quantized and counted under QEMU; low rank is refused without a build) and 8x8 digits
    (FastRNN), one epoch each."""
    by_name = {b.name: b for b in rp.BENCHMARKS}
    bs = (
        dataclasses.replace(by_name["mnist"], hidden=32, epochs=1, finetune_epochs=1, max_train=256, max_test=100,
                            qat_epochs=1),
        dataclasses.replace(by_name["digits"], hidden=64, epochs=1, finetune_epochs=1, max_train=256, max_test=100,
                            qat_epochs=1),
    )
    return rp.Config(benchmarks=bs, seeds=(0,), qemu=True, qemu_only=("kp", "lowrank"), qemu_samples=1,
                     jobs=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    work = tmp_path_factory.mktemp("work")
    res = rp.reproduce(tiny_config(), out, work, command="pytest tests/test_reproduce.py")
    return res, out, work


def table_rows(md: str) -> list[list[str]]:
    """The main results table's body rows, split into cells."""
    section = md.split("## Results", 1)[1].split("\n\n", 2)[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| benchmark | method |")
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


@pytest.mark.qemu
def test_reproduce_writes_the_table_and_the_plot(tiny_run):
    res, out, _ = tiny_run
    md = (out / "results.md").read_text()
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "![accuracy against compression](results.png)" in md
    for heading in ("## How it was made", "## Results", "## Targets", "## KP compression of typical layer sizes",
                    "## Timings"):
        assert heading in md
    assert "Seeds: 0." in md
    rows = table_rows(md)
    assert all(len(r) == TABLE_COLUMNS for r in rows)
    assert len(rows) == 2 * len(EXPECTED_KEYS)
    methods = [r[1].split(" [")[0] for r in rows[: len(EXPECTED_KEYS)]]
    assert methods == ["dense", "KP", "KP+QAT", "HKP", "HKP+QAT", "pruning (= KP size)", "low-rank (= KP size)",
                       "small (= KP size)", "pruning (= HKP size)", "low-rank (= HKP size)", "small (= HKP size)"]
    assert rows[0][0] == "MNIST rows" and rows[len(EXPECTED_KEYS)][0] == "8x8 digits (USPS stand-in)"
    # every "n/a" points at a note that says why
    notes = md.split("Notes:", 1)[1].split("## Targets", 1)[0]
    for ref in set(re.findall(r"n/a \[(\d+)\]", md)):
        assert re.search(rf"^{ref}\. \S", notes, re.M), f"note {ref} missing"
    # the five targets, each with a verdict
    targets = re.findall(r"^- \*\*(PASS|FAIL|n/a)\*\* ", md.split("## Targets", 1)[1], re.M)
    assert len(targets) == 5 and len(res["targets"]) == 5
    # a red target is followed by what was tried; a run without --distill says what distillation measured
    tried = md.split("## Targets", 1)[1].split("## KP compression", 1)[0]
    assert ("FAIL" in targets) == ("What was tried where a target fails" in tried)
    if "FAIL" in targets:
        assert all(t.splitlines()[0] in tried for t in rp.TRIED)


def test_what_was_tried_leaves_out_distillation_when_the_run_used_it(tmp_path):
    """The section under the targets comes from the run's configuration: a --distill run does not claim that
    distillation stays off."""
    failing = [rp.Target("a target", False, "why")]
    for distill in (False, True):
        path = tmp_path / f"results-{distill}.md"
        rp.write_markdown(path, dataclasses.replace(rp.Config(), distill=distill), {}, {}, failing, 1.0, None,
                          "pytest")
        md = path.read_text()
        assert "- **FAIL** a target: why." in md
        assert ("- *Distillation* from the dense network" in md) is not distill
        assert "- *int8 within 0.3 points of float*" in md


def test_the_commit_is_the_one_the_run_started_on(tmp_path, monkeypatch):
    """The header names the commit described before the run wrote anything (its own results.png and results.md
    would otherwise read as uncommitted changes)."""
    said = iter(["abc1234", "abc1234 (with uncommitted changes)"])
    monkeypatch.setattr(rp, "git_describe", lambda: next(said))
    monkeypatch.setattr(rp, "run_all", lambda cfg, work, reuse: ([], "no engine"))
    monkeypatch.setattr(rp, "write_plot", lambda path, rows, sizings: False)
    (tmp_path / "work").mkdir()
    rp.reproduce(rp.Config(benchmarks=(), qemu=False), tmp_path / "out", tmp_path / "work")
    assert "at commit abc1234, torch" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.qemu
def test_reproduce_records_are_sane_and_match_the_checkpoints(tiny_run):
    res, _, work = tiny_run
    records = json.loads((work / "records.json").read_text())
    assert {(r["bench"], r["key"]) for r in records} == {(b, k) for b in ("mnist", "digits") for k in EXPECTED_KEYS}
    sizings = res["sizings"]
    for r in records:
        assert 0.0 <= r["float_acc"] <= 1.0
        if r["int8_acc"] is None:
            assert r["int8_note"], f"{r['bench']} {r['key']}: no int8 accuracy and no reason"
        else:
            assert 0.0 <= r["int8_acc"] <= 1.0
        sz = sizings[r["bench"]]
        v = sz.variant(r["key"])
        assert r["hidden"] == v.hidden
        if r.get("same_as"):
            continue
        ck = torch.load(work / "checkpoints" / r["bench"] / f"{r['key'].replace('@', '-at-')}-s0.pt", weights_only=True)
        model = model_from_checkpoint(ck)
        assert model.hidden_size == v.hidden
        total, mats = param_counts(model)
        assert (total, mats) == (r["params"], r["matrix_params"])
        shapes = rp.matrix_shapes(sz.bench.cell, sz.input_size, v.hidden)
        if r["method"] in ("kp", "hkp", "lowrank"):
            assert mats == sum(spec_params(s, *shapes[k]) for k, s in (("wx", v.wx), ("wh", v.wh)))
        if r["method"] == "dense":
            assert total == sz.dense_params
        if r["method"] == "prune":  # as many nonzeros as the size it is matched to (rounding per matrix)
            assert abs(total - v.target_params) <= 2
        if r["method"] == "small":
            assert total <= v.target_params
    # MNIST's KP-LSTM goes all the way: int8 through the quantizer, and counted bit-exact under QEMU
    kp = next(r for r in records if r["bench"] == "mnist" and r["key"] == "kp")
    assert kp["int8_acc"] is not None and kp["int8_bytes"] > 0
    assert kp["instructions"] and kp["instructions"] > 1000, kp["qemu_note"]
    lowrank = next(r for r in records if r["bench"] == "mnist" and r["key"] == "lowrank@kp")
    assert lowrank["instructions"] is None and "low-rank" in lowrank["qemu_note"]


def test_the_real_configuration_meets_the_sizing_rules():
    """The benchmarks `make reproduce` trains, sized without training: KP layers >= 15x, HKP larger than KP and
    >= 8x smaller than dense (or KP itself), baselines matched to KP's and HKP's sizes."""
    for b in rp.BENCHMARKS:
        sz = rp.sizing_for(b, rp.Config())
        assert [v.key for v in sz.variants] == list(EXPECTED_KEYS)
        (_, dense_m, _, ratio), = rp.layer_compressions(sz)
        assert ratio >= rp.KP_LAYER_MIN, b.name
        kp, hkp = sz.variant("kp"), sz.variant("hkp")
        assert hkp.target_params >= kp.target_params
        assert hkp.target_params == kp.target_params or sz.dense_params / hkp.target_params >= rp.HKP_MODEL_MIN
        dirs = 2 if b.bidirectional else 1
        shapes = rp.matrix_shapes(b.cell, sz.input_size, b.hidden)
        for level, ref in (("kp", kp), ("hkp", hkp)):
            pr, lr, sm = (sz.variant(f"{m}@{level}") for m in ("prune", "lowrank", "small"))
            assert pr.target_params == lr.target_params == sm.target_params == ref.target_params
            assert abs(sz.dense_matrix_params / pr.prune_ratio - (ref.target_params - (sz.dense_params - dense_m))) < 1
            lr_m = dirs * sum(spec_params(s, *shapes[k]) for k, s in (("wx", lr.wx), ("wh", lr.wh)))
            ref_m = ref.target_params - (sz.dense_params - sz.dense_matrix_params)
            rank1 = dirs * sum(r + c for r, c in shapes.values())
            assert lr_m <= ref_m or lr_m == rank1
            small_total, _ = rp.dense_model_params(b.cell, sz.input_size, sm.hidden, sz.classes, b.bidirectional)
            bigger, _ = rp.dense_model_params(b.cell, sz.input_size, sm.hidden + 1, sz.classes, b.bidirectional)
            assert small_total <= ref.target_params < bigger


def test_typical_layer_factors_are_exact():
    rows = {(t["cell"], t["hidden"], t["inputs"]): t for t in rp.typical_layer_rows()}
    t = rows[("LSTM", 128, 28)]
    assert t["shapes"] == {"wx": (512, 28), "wh": (512, 128)}
    for k in ("wx", "wh"):
        factors = t["specs"][k]["factors"]
        assert factors[0][0] * factors[1][0] == t["shapes"][k][0] and factors[0][1] * factors[1][1] == t["shapes"][k][1]
        assert t["kp"][k] == factors[0][0] * factors[0][1] + factors[1][0] * factors[1][1]
    assert t["layer"] == pytest.approx((512 * 28 + 512 * 128) / (t["kp"]["wx"] + t["kp"]["wh"]))
    assert all(r["layer"] > 1 for r in rows.values())


def test_the_byte_estimate_counts_gate_biases_as_the_quantizer_stores_them():
    """int16 gate biases while every one fits Q3.12 int16 (kpgen.ir.gate_bias_bits), int32 once one does not;
    the head's bias stays int32; the estimate is within the matrices' layout bytes of ModelQ.weight_bytes."""
    from kpgen.studies.fidelity import quantized
    from kpgen.train.loop import make_checkpoint
    from kpgen.train.nn import KPRNNClassifier

    for cell, gates in (("lstm", 4), ("gru", 4), ("fastrnn", 1)):  # the GRU: 3H bias and H bias_hn
        torch.manual_seed(0)
        m = KPRNNClassifier(cell, 12, 16, 5, "dense", "dense")
        cal = {"input_absmax": 1.0, "gate_absmax": [1.0], ("cell_absmax" if cell == "lstm" else "state_absmax"): [1.0]}
        narrow = rp.int8_bytes_estimate(m)
        assert abs(narrow - quantized(make_checkpoint(m, cal, {})).weight_bytes) <= 2
        with torch.no_grad():
            m.layers[0].bias[0] = 8.0  # 32768 in Q3.12: one past int16
        assert rp.int8_bytes_estimate(m) == narrow + 2 * gates * 16
        with torch.no_grad():
            m.head.bias.fill_(1e6)  # the head's int32 bias does not decide the width
        assert rp.int8_bytes_estimate(m) == narrow + 2 * gates * 16
