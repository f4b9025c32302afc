"""kpgen outside its checkout: shipped files found as package data, `kpgen emit` without the training extras,
and one golden run per emit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kpgen import KpgenError
from kpgen._data import SHIPPED, data_dir
from kpgen.extras import import_extra

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "mnist-kplstm.pt"
# Packages only training, the built-in datasets and the studies use, and kpgen's own training and study code.
NOT_FOR_EMIT = ("mlxtend", "sklearn", "aeon", "numba", "matplotlib", "kpgen.train", "kpgen.studies")


def test_shipped_folders_are_package_data():
    for name in SHIPPED:
        d = data_dir(name)
        assert d.is_dir() and d.parent == Path(sys.modules["kpgen._data"].__file__).parent
        assert d.resolve() == REPO / name  # an editable install reads the checkout's own files
    with pytest.raises(ValueError):
        data_dir("docs")


def test_import_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(KpgenError) as e:
        import_extra("matplotlib", "studies", "the plot")
    assert str(e.value) == "the plot needs the 'studies' extra: pip install 'kpgen[studies]'"
    assert import_extra("json", "train", "x") is json


def _vectors(path: Path, n: int = 4, labels: bool = True) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"x": rng.random((n, 28, 28)).astype(np.float32)}
    if labels:
        arrays["y"] = rng.integers(0, 10, n)
    np.savez(path, **arrays)
    return path


def test_emit_and_its_imports_need_no_training_extra(tmp_path):
    """A fresh interpreter runs `kpgen emit --vectors` and lists what got imported: nothing from the extras."""
    vec = _vectors(tmp_path / "v.npz")
    code = (
        "import sys\n"
        "from kpgen.cli import main\n"
        f"main(['emit', {str(EXAMPLE)!r}, '--board', 'm4', '--vectors', {str(vec)!r}, '-o', {str(tmp_path / 'out')!r}],"
        " standalone_mode=False)\n"
        f"print(sorted(m for m in sys.modules if any(m == p or m.startswith(p + '.') for p in {NOT_FOR_EMIT!r})))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "kpgen.json").is_file()


@pytest.mark.parametrize("labels", [True, False], ids=["labelled", "unlabelled"])
def test_emit_runs_the_golden_model_once(labels, tmp_path, monkeypatch):
    """The accuracy and the test vectors' expected results come from one batched golden run, sliced: the same
    results as running the golden model on the test vectors alone."""
    from kpgen import pipeline
    from kpgen.frontend.load import load_checkpoint
    from kpgen.quant import quantize
    from kpgen.reference import golden
    from kpgen.reference.vectors import expected_for

    vec = _vectors(tmp_path / "v.npz", n=7, labels=labels)
    batches: list[int] = []
    real = golden.run_model

    def counting(model, xq, *args, **kwargs):
        batches.append(len(xq))
        return real(model, xq, *args, **kwargs)

    monkeypatch.setattr(pipeline.golden, "run_model", counting)
    manifest = pipeline.emit_project(EXAMPLE, "m4", tmp_path / "out", vectors=vec, samples=3)
    assert batches == ([7] if labels else [3])
    monkeypatch.setattr(pipeline.golden, "run_model", real)
    qmodel = quantize.quantize_model(load_checkpoint(EXAMPLE))
    with np.load(vec) as z:
        xq = golden.quantize_input(z["x"].astype(np.float64), qmodel.input_scale)
        y_all = z["y"] if labels else None
    y = None if y_all is None else y_all[:3]
    want = expected_for(qmodel, xq[:3], y)
    assert manifest["vectors"]["scores"] == want.scores.astype(int).tolist()
    assert manifest["vectors"]["final_digests"] == [f"{int(d):08x}" for d in want.digests[:, -1]]
    assert manifest["vectors"]["labels"] == [int(v) for v in want.labels]
    if labels:
        full = real(qmodel, xq)
        assert manifest["accuracy"]["int8_golden"] == float(np.mean(golden.predict(full.logits) == y_all))


@pytest.mark.parametrize("rest", [0, 1], ids=["two-factors", "three-factors"])
@pytest.mark.parametrize("top", [0, 3], ids=["kp", "hkp"])
def test_float_kp_apply_is_the_kronecker_product(rest, top):
    """The float model's W x (batched matmuls for two factors, mode products otherwise) equals the explicit
    [top; A kron B kron ...] x for any batch shape."""
    from kpgen.ir import KPMatrixF
    from kpgen.reference.floatmodel import kp_apply

    rng = np.random.default_rng(rest + top)
    fs = [rng.standard_normal(s) for s in [(3, 4), (5, 2), (2, 3)][: 2 + rest]]
    cols = int(np.prod([f.shape[1] for f in fs]))
    m = KPMatrixF(fs[0], fs[1], tuple(fs[2:]), rng.standard_normal((top, cols)) if top else None)
    w = fs[0]
    for f in fs[1:]:
        w = np.kron(w, f)
    if top:
        w = np.concatenate([m.top, w])
    for lead in [(), (6,), (2, 7)]:
        x = rng.standard_normal(lead + (cols,))
        np.testing.assert_allclose(kp_apply(m, x), x @ w.T, rtol=1e-12, atol=1e-12)
