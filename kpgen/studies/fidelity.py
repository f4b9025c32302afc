"""Where int8 disagrees with float: one rounding at a time, on the checkpoints `make reproduce` keeps.

For each checkpoint the float network's predictions on the test split are compared with
- kpgen's integer model (the quantizer, then the golden model: what the firmware computes), and
- the float network with ONE of kpgen's roundings applied, the rest left in float:
  - matrices: every Wx and Wh factor (and HKP's dense rows, a dense matrix) rounded to int8 with one scale per
    tensor, as kpgen.quant.quantize.symmetric_int8 does;
  - head: the classifier's weight rounded the same way;
  - input: the input rounded to int8 at the calibrated input scale (ModelQ.input_scale);
  - state: the hidden state rounded to its int8 grid (kpgen.ir.state_scale: 1/128 for the LSTM and the GRU,
    2**(e - 7) for FastRNN, FastGRNN and the ReLU RNN) where a matrix or the head reads it (the float recurrence
    itself keeps full precision, so this is a lower bound on the state's share).
And two roundings kpgen does NOT use, to show what a finer matrix format would buy:
  - rows: every matrix factor rounded to int8 with one scale per row instead of per tensor;
  - int10: every matrix factor rounded with one scale per tensor to 10 bits (-511..511) instead of 8.

A disagreement is a test sample whose predicted class differs from the float network's. The counts show which
rounding moves predictions; docs/quantization.md ("Where int8 and float disagree") gives a run.
Run: `python -m kpgen.studies.fidelity [--work build/reproduce] [--benchmarks mnist,digits] [--methods kp,hkp]`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch

from kpgen import ir
from kpgen.ir import ModelQ

COMPONENTS = ("matrices", "head", "input", "state", "rows", "int10")
HEADERS = ("matrices only", "head only", "input only", "state only", "matrices, per-row int8 (not kpgen's)",
           "matrices, int10 (not kpgen's)")
METHODS = ("dense", "kp", "kp+qat", "hkp", "hkp+qat")


def fake_int8(t: torch.Tensor) -> torch.Tensor:
    """t rounded to per-tensor symmetric int8 and back (the values of kpgen.quant.quantize.symmetric_int8)."""
    return fake_symmetric(t, 8)


def fake_symmetric(t: torch.Tensor, bits: int, per_row: bool = False) -> torch.Tensor:
    """t rounded to symmetric `bits`-bit integers and back, with one scale per tensor or per row (dim 0)."""
    top = 2 ** (bits - 1) - 1
    absmax = t.abs().amax(dim=tuple(range(1, t.ndim)), keepdim=True) if per_row and t.ndim > 1 else t.abs().max()
    scale = torch.where(absmax > 0, absmax / top, torch.ones_like(absmax))
    return torch.clamp(torch.round(t / scale), -top, top) * scale


def on_grid(v: torch.Tensor, step: float) -> torch.Tensor:
    """v rounded to the int8 grid of one step `step` (saturating at -128..127 steps)."""
    return torch.clamp(torch.round(v / step), -128, 127) * step


def quantized(ckpt: dict, name: str = "checkpoint.pt") -> ModelQ:
    """The checkpoint through kpgen's loader and quantizer, as `kpgen emit` takes it (name: for its messages)."""
    from kpgen.frontend import load
    from kpgen.quant import quantize

    return quantize.quantize_model(load.checkpoint_to_ir(ckpt, name))


def int8_predictions(qmodel: ModelQ, x, block: int = 500) -> np.ndarray:
    """The golden model's predicted classes for float inputs x (a tensor or an array), in blocks of samples."""
    from kpgen.reference import golden

    xs = np.asarray(x, dtype=np.float64)
    out = [np.zeros(0, dtype=np.int64)]
    for k in range(0, len(xs), block):
        xq = golden.quantize_input(xs[k : k + block], qmodel.input_scale)
        out.append(golden.predict(golden.run_model(qmodel, xq).logits))
    return np.concatenate(out)


def ablated(net, qmodel: ModelQ, component: str) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """A copy of the float network with one of kpgen's roundings applied, and the input transform to use."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}: expected one of {', '.join(COMPONENTS)}")
    model = copy.deepcopy(net).eval()
    def same(x: torch.Tensor) -> torch.Tensor:
        return x
    if component == "input":
        scale = float(qmodel.input_scale)
        return model, lambda x: torch.clamp(torch.round(x / scale), -127, 127) * scale
    with torch.no_grad():
        if component in ("matrices", "rows", "int10"):
            rounding = {"matrices": fake_int8, "rows": lambda t: fake_symmetric(t, 8, per_row=True),
                        "int10": lambda t: fake_symmetric(t, 10)}[component]
            for _, m in model.matrices():
                for p in m.parameters():
                    if p.ndim >= 2:
                        p.copy_(rounding(p))
        elif component == "head":
            model.head.weight.copy_(fake_int8(model.head.weight))
    if component == "state":
        steps = [ir.state_scale(layer) for layer in qmodel.layers]

        def hook(step: float):
            return lambda _mod, args: (on_grid(args[0], step), *args[1:])

        for k in range(model.num_layers):
            for d in range(2 if model.bidirectional else 1):
                model.direction(k, d).wh.register_forward_pre_hook(hook(steps[k]))
                if k > 0:
                    model.direction(k, d).wx.register_forward_pre_hook(hook(steps[k - 1]))
        model.head.register_forward_pre_hook(hook(steps[-1]))
    return model, same


@torch.no_grad()
def predictions(model: torch.nn.Module, x: torch.Tensor, block: int = 500) -> np.ndarray:
    return np.concatenate([model(x[k : k + block]).argmax(-1).numpy() for k in range(0, len(x), block)])


@dataclass
class Count:
    """Summed over checkpoints: test samples, and predictions that differ from float per rounding."""

    samples: int = 0
    int8: int = 0
    float_right_int8_wrong: int = 0
    int8_right_float_wrong: int = 0
    by_component: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0))

    def add(self, other: Count) -> None:
        self.samples += other.samples
        self.int8 += other.int8
        self.float_right_int8_wrong += other.float_right_int8_wrong
        self.int8_right_float_wrong += other.int8_right_float_wrong
        for c in COMPONENTS:
            self.by_component[c] += other.by_component[c]


def measure(ckpt: dict, x: torch.Tensor, y: torch.Tensor) -> Count:
    """The disagreements of one checkpoint on (x, y)."""
    from kpgen.train.loop import model_from_checkpoint

    net = model_from_checkpoint(ckpt).eval()
    qmodel = quantized(ckpt)
    pf = predictions(net, x)
    pi = int8_predictions(qmodel, x)
    yy = np.asarray(y)
    cnt = Count(samples=len(yy), int8=int((pf != pi).sum()),
                float_right_int8_wrong=int(((pf == yy) & (pi != yy)).sum()),
                int8_right_float_wrong=int(((pf != yy) & (pi == yy)).sum()))
    for c in COMPONENTS:
        model, prep = ablated(net, qmodel, c)
        cnt.by_component[c] = int((predictions(model, prep(x)) != pf).sum())
    return cnt


def table(counts: dict[tuple[str, str], Count], seeds: Sequence[int]) -> list[str]:
    """Markdown rows: per benchmark and method, summed over the seeds."""
    lines = [
        "| benchmark | method | test samples x seeds | int8 (kpgen) | float right, int8 wrong | "
        "int8 right, float wrong | " + " | ".join(HEADERS) + " |",
        "|---|---|---:|---:|---:|---:" + "|---:" * len(HEADERS) + "|",
    ]
    for (bench, method), c in counts.items():
        lines.append(f"| {bench} | {method} | {c.samples // max(1, len(seeds)):,} x {len(seeds)} | {c.int8} | "
                     f"{c.float_right_int8_wrong} | {c.int8_right_float_wrong} | "
                     + " | ".join(str(c.by_component[k]) for k in COMPONENTS) + " |")
    return lines


@click.command()
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("build/reproduce"),
              show_default=True, help="The reproduce work directory (its checkpoints/ are read).")
@click.option("--benchmarks", default="mnist,basicmotions,japanesevowels,daphnet,digits", show_default=True)
@click.option("--methods", default=",".join(METHODS), show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True)
def main(work: Path, benchmarks: str, methods: str, seeds: str) -> None:
    """Count int8-float disagreements of kept reproduce checkpoints, one rounding at a time."""
    from kpgen.studies import reproduce

    torch.set_num_threads(1)
    by_name = {b.name: b for b in reproduce.BENCHMARKS}
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    counts: dict[tuple[str, str], Count] = {}
    for name in [b.strip() for b in benchmarks.split(",") if b.strip()]:
        if name not in by_name:
            raise click.BadParameter(f"unknown benchmark {name!r}: expected one of {', '.join(by_name)}",
                                     param_hint="--benchmarks")
        bench = by_name[name]
        for method in [m.strip() for m in methods.split(",") if m.strip()]:
            total = Count()
            for seed in seed_list:
                path = work / "checkpoints" / name / f"{method}-s{seed}.pt"
                if not path.is_file():
                    continue
                x_te, y_te = reproduce.load_data(bench.dataset, seed, bench.max_train, bench.max_test)[3:]
                total.add(measure(torch.load(path, weights_only=True), x_te, y_te))
            if total.samples:
                counts[(name, method)] = total
    if not counts:
        raise click.UsageError(f"no checkpoints under {work / 'checkpoints'}: run `make reproduce` first")
    click.echo("\n".join(table(counts, seed_list)))


if __name__ == "__main__":
    main()
