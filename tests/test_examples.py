"""Every shipped example (examples/*.pt, listed in examples/README.md) loads, quantizes, and keeps its accuracy
in int8: the integer reference on the dataset's held-out split is within one point of the float model."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpgen.frontend import datasets
from kpgen.frontend.load import load_checkpoint
from kpgen.quant import quantize
from kpgen.reference import floatmodel, golden

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.pt"))


def test_every_example_is_documented() -> None:
    readme = (EXAMPLES[0].parent / "README.md").read_text(encoding="utf-8")
    assert len(EXAMPLES) >= 5
    for ex in EXAMPLES:
        assert f"`{ex.name}`" in readme, ex.name


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_int8_within_one_point_of_float(path: Path) -> None:
    model = load_checkpoint(path)
    q = quantize.quantize_model(model)
    split = datasets.load(model.meta["dataset"], seed=int(model.meta.get("seed", 0)))
    f = floatmodel.accuracy(floatmodel.float_forward(model, split.x_test), split.y_test)
    logits = golden.run_model(q, golden.quantize_input(split.x_test, q.input_scale)).logits
    i = floatmodel.accuracy(logits, split.y_test)
    assert abs(f - float(model.meta["float_test_accuracy"])) < 1e-6  # the float IR is the trained model
    assert i >= f - 0.01, (path.name, f, i)
