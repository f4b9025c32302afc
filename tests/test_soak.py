"""The streaming soak (kpgen.studies.soak) in miniature: a few thousand never-reset steps under QEMU, every
checkpoint bit-exact, and the host-side pieces (digests, saturation replay, stream) checked on their own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kpgen import KpgenError
from kpgen.frontend.load import load_checkpoint
from kpgen.quant import quantize
from kpgen.reference import golden, vectors
from kpgen.studies import soak

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.mark.parametrize("example", ["digits-fastrnn.pt", "mnist-kplstm.pt"])
def test_soak_is_bit_exact_at_every_checkpoint(example: str, tmp_path: Path) -> None:
    """3,000 steps through model_step on the M4 without a reset: all 3 checkpoints (state digest, chained
    digest, class, scores) equal the reference's, and the study numbers come out."""
    r = soak.soak(EXAMPLES / example, "m4", 3000, 1000, tmp_path, profile=False, timeout=120.0)
    assert (r.exact, r.checkpoints, r.problems, r.exit_code) == (3, 3, [], 0)
    assert r.passed and r.first_mismatch is None
    assert r.saturation is not None and len(r.saturation) == 1
    s = r.saturation[0]
    assert s.h_total == 3000 * load_checkpoint(EXAMPLES / example).layers[0].hidden_size
    assert (s.c_total is not None) == (r.cell == "lstm")
    a = r.accuracy
    assert a is not None and a.segments > 0 and 0.0 <= a.never_reset <= 1.0 and 0.0 <= a.reset_each <= 1.0
    main_c = (tmp_path / f"{r.cell}-m4" / "main.c").read_text()
    assert "model_reset();\n    for (t = 1;" in main_c  # one reset, before the loop only
    assert main_c.count("model_reset()") == 2  # that one, and the profile run's


def _model_and_trace(example: str, steps: int, seed: int = 0):
    q = quantize.quantize_model(load_checkpoint(EXAMPLES / example))
    xq = np.random.default_rng(seed).integers(-127, 128, size=(steps, q.input_size)).astype(np.int8)
    return q, xq, golden.run_model(q, xq[None])


@pytest.mark.parametrize("example", ["digits-fastrnn.pt", "mnist-kplstm.pt", "japanesevowels-gru-3factors.pt"])
def test_checkpoint_digests_are_the_firmware_digests(example: str) -> None:
    """The chained digest is kpgen.reference.vectors' running digest of the test firmware, and the state digest
    the same function over one step's state alone."""
    q, _, trace = _model_and_trace(example, 40)
    exp = soak.expected_checkpoints(q, trace, 10)
    ref = vectors.state_digests(trace)[0]
    assert [c.step for c in exp] == [10, 20, 30, 40]
    assert [c.running for c in exp] == [int(ref[t - 1]) for t in (10, 20, 30, 40)]
    one = golden.GoldenTrace(logits=trace.logits, hidden=tuple(h[:, 19:20] for h in trace.hidden),
                             cell=tuple(c[:, 19:20] for c in trace.cell))
    assert exp[1].state == int(vectors.state_digests(one)[0, 0])
    assert exp[-1].scores == tuple(int(v) for v in trace.logits[0])


def test_parse_checkpoints_rejects_any_changed_field() -> None:
    q, _, trace = _model_and_trace("digits-fastrnn.pt", 20)
    exp = soak.expected_checkpoints(q, trace, 10)
    lines = [f"C {c.step} {c.state:08x} {c.running:08x} {c.best} " + " ".join(map(str, c.scores)) for c in exp]
    assert soak.parse_checkpoints("SOAK-BEGIN\n" + "\n".join(lines) + "\nSOAK-END\n") == exp
    bad = lines[1].split()
    bad[3] = f"{int(bad[3], 16) ^ 1:08x}"
    assert soak.parse_checkpoints("\n".join([lines[0], " ".join(bad)]))[1] != exp[1]


@pytest.mark.parametrize("example", ["digits-fastrnn.pt", "mnist-kplstm.pt", "japanesevowels-gru-3factors.pt",
                                     "digits-fastgrnn-hkp.pt"])
def test_saturation_replay_reproduces_the_reference(example: str) -> None:
    """The instrumented replay recomputes h (and c) exactly, and its counts are the clamps it saw."""
    q, xq, trace = _model_and_trace(example, 300)
    sat = soak.saturation(q, xq, trace)
    assert sat is not None and len(sat) == len(q.layers)
    for s, h in zip(sat, trace.hidden, strict=True):
        assert s.h_total == h[0].size and 0 <= s.h <= s.h_total and 0 <= s.gates <= s.gates_total
        assert 0 <= s.early + s.late <= s.h + s.gates + (s.c or 0)
    broken = golden.GoldenTrace(logits=trace.logits, hidden=(trace.hidden[0] ^ np.int8(1),) + trace.hidden[1:],
                                cell=trace.cell)
    with pytest.raises(AssertionError, match="does not reproduce"):
        soak.saturation(q, xq, broken)


def test_stream_joins_whole_recordings_in_new_orders() -> None:
    rec = np.arange(5 * 4 * 2, dtype=np.int8).reshape(5, 4, 2)
    y = np.array([0, 1, 2, 0, 1])
    s = soak.make_stream(rec, y, 50, seed=3)
    assert s.xq.shape == (50, 2) and len(s.starts) == 12  # 12 whole recordings, then 2 steps of a 13th
    for st, i, lab in zip(s.starts, s.index, s.labels, strict=True):
        assert np.array_equal(s.xq[st : st + 4], rec[i]) and lab == y[i]
    assert sorted(s.index[:5].tolist()) == [0, 1, 2, 3, 4] and sorted(s.index[5:10].tolist()) == [0, 1, 2, 3, 4]
    assert np.array_equal(soak.tiled(s.xq[:20], 50)[40:], s.xq[:10])


def test_soak_refuses_a_bidirectional_model(tmp_path: Path) -> None:
    with pytest.raises(KpgenError, match="has a bidirectional layer, which has no per-step call"):
        soak.soak(EXAMPLES / "basicmotions-bilstm.pt", "m4", 2000, 1000, tmp_path)


def test_soak_training_failures_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(KpgenError, match=r"training the nosuchcell soak model failed: .*; check `kpgen train"):
        soak.train_cell("nosuchcell", tmp_path / "a.pt", log=lambda m: None)
    with pytest.raises(KpgenError, match=r"training the lstm soak model took over 0\.01 s; retry"):
        soak.train_cell("lstm", tmp_path / "b.pt", log=lambda m: None, timeout=0.01)
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()
