"""Which rows HKP keeps dense: kpgen's layout (the top rows) against the same number spread over the gates.

kpgen's HKP matrix is [D; F1 (x) F2]: its first r rows are dense (kpgen.train.nn.matrix.HKPLinear, the golden
model and kp_hkp_top_s8 all assume it). In an LSTM or GRU matrix the rows come in gate blocks (LSTM: i, f, g, o;
GRU: z, r, n), so the top r rows are r units of the first gate. The alternative measured here keeps r / G rows of
every gate block dense instead (G the cell's gates): the same units in every gate, the same parameter count and
the same Kronecker factors for the other rows. kpgen's integer model and kernels do not have that layout; this
study trains it in float only, to measure whether building it would pay.

For each seed, both networks start from `make reproduce`'s kept dense checkpoint, with the reproduce HKP
variant's matrix specs, and fine-tune with the benchmark's recipe (kpgen.studies.reproduce). Float test accuracy
is printed with the dense and KP networks' from the same run's checkpoints.
Run: `python -m kpgen.studies.hkp_rows --benchmark mnist [--seeds 0,1,2,3,4] [--work build/reproduce]`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import click
import torch
from torch import nn


def spread_order(rows: int, gates: int, dense_rows: int) -> torch.Tensor:
    """perm with W[perm] = the matrix HKPLinear sees: its first dense_rows rows are the first dense_rows / gates
    rows of every gate block (in gate order), then the other rows of every block in order. ValueError if
    dense_rows is not a multiple of gates or rows not of gates."""
    if rows % gates or dense_rows % gates:
        raise ValueError(f"{dense_rows} dense rows of {rows} cannot be spread evenly over {gates} gates")
    block, per = rows // gates, dense_rows // gates
    top = [g * block + u for g in range(gates) for u in range(per)]
    rest = [g * block + u for g in range(gates) for u in range(per, block)]
    return torch.tensor(top + rest)


class Reordered(nn.Module):
    """A matrix module whose output rows are put back in the cell's order: y = inner(x)[..., inverse(perm)]."""

    def __init__(self, inner: nn.Module, perm: torch.Tensor):
        super().__init__()
        self.inner = inner
        self.register_buffer("inverse", torch.argsort(perm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[..., self.inverse]


def spread_hkp(dense, wx: dict | str, wh: dict | str, seed: int):
    """dense's network as HKP with the specs wx, wh (dense_rows each), its dense rows spread over the gates:
    initialised like kpgen's HKP (the chosen dense rows copied, the nearest Kronecker product of the others)."""
    from kpgen.train.compress import with_matrices

    src = copy.deepcopy(dense)
    perms = {}
    with torch.no_grad():
        for name, m in src.matrices():
            spec = wx if name.endswith("wx") else wh
            gates = m.weight.shape[0] // src.hidden_size
            dense_rows = int(spec.get("dense_rows", 0)) if isinstance(spec, dict) else 0
            perms[name] = spread_order(m.weight.shape[0], gates, dense_rows)
            m.weight.copy_(m.weight[perms[name]])
    model = with_matrices(src, wx, wh, seed)
    for name, _ in model.matrices():
        parent_name, attr = name.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, Reordered(getattr(parent, attr), perms[name]))
    return model


def measure(bench_name: str, seeds: list[int], work: Path, log=click.echo) -> list[tuple[int, dict[str, float]]]:
    """Per seed: float test accuracy of dense, KP and HKP (kept checkpoints) and of HKP with spread rows (trained)."""
    from kpgen.frontend import datasets
    from kpgen.studies import reproduce
    from kpgen.train.loop import accuracy, fit, model_from_checkpoint

    by_name = {b.name: b for b in reproduce.BENCHMARKS}
    if bench_name not in by_name:
        raise click.BadParameter(f"unknown benchmark {bench_name!r}: expected one of {', '.join(by_name)}",
                                 param_hint="--benchmark")
    bench = by_name[bench_name]
    hkp = reproduce.sizing_for(bench, reproduce.Config()).variant("hkp")
    if hkp is None or not any(int(s.get("dense_rows", 0)) for s in (hkp.wx, hkp.wh) if isinstance(s, dict)):
        raise click.UsageError(f"{bench_name}: its HKP has no dense rows, so there is nothing to spread")
    rows = []
    for seed in seeds:
        folder = work / "checkpoints" / bench_name
        paths = {m: folder / f"{m}-s{seed}.pt" for m in ("dense", "kp", "hkp")}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise click.UsageError(f"no checkpoint {missing[0]}: run `make reproduce` first")
        ck = {m: torch.load(p, weights_only=True) for m, p in paths.items()}
        acc = {m: float(c["meta"]["float_test_accuracy"]) for m, c in ck.items()}
        _, x_tr, y_tr, x_te, y_te = reproduce.load_data(bench.dataset, seed, bench.max_train, bench.max_test)
        try:
            model = spread_hkp(model_from_checkpoint(ck["dense"]), hkp.wx, hkp.wh, seed)
        except ValueError as e:
            raise click.UsageError(f"{bench_name}: {e}") from None
        fit(model, x_tr, y_tr, x_te, y_te, epochs=bench.finetune_epochs, batch_size=bench.batch_size, lr=bench.lr,
            seed=seed, max_shift=datasets.MAX_SHIFT.get(bench.dataset, 0), log=lambda s: None)
        acc["hkp spread"] = float(accuracy(model, x_te, y_te))
        log(f"seed {seed}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in acc.items()))
        rows.append((seed, acc))
    return rows


def table(bench_name: str, rows: list[tuple[int, dict[str, float]]]) -> list[str]:
    """Markdown: float accuracy per seed, the mean, and the share of KP's loss each HKP recovers."""
    keys = ("dense", "kp", "hkp", "hkp spread")
    out = [f"| {bench_name} seed | " + " | ".join(keys) + " |", "|---" + "|---:" * len(keys) + "|"]
    for seed, acc in rows:
        out.append(f"| {seed} | " + " | ".join(f"{100 * acc[k]:.1f}" for k in keys) + " |")
    mean = {k: sum(a[k] for _, a in rows) / len(rows) for k in keys}
    out.append("| mean | " + " | ".join(f"{100 * mean[k]:.2f}" for k in keys) + " |")
    loss = mean["dense"] - mean["kp"]
    if loss > 0:
        out.append("")
        out.append(f"KP loses {100 * loss:.2f} points; HKP recovers {100 * (mean['hkp'] - mean['kp']):.2f} "
                   f"({(mean['hkp'] - mean['kp']) / loss:.0%}), HKP with spread rows "
                   f"{100 * (mean['hkp spread'] - mean['kp']):.2f} ({(mean['hkp spread'] - mean['kp']) / loss:.0%}).")
    return out


@click.command()
@click.option("--benchmark", default="mnist", show_default=True, help="A reproduce benchmark with a gated cell.")
@click.option("--seeds", default="0,1,2,3,4", show_default=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("build/reproduce"),
              show_default=True, help="The reproduce work directory (its checkpoints/ are read).")
def main(benchmark: str, seeds: str, work: Path) -> None:
    """Train HKP with its dense rows spread over the gates (float) and compare with kpgen's top-row HKP."""
    torch.set_num_threads(1)
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    click.echo("\n".join(table(benchmark, measure(benchmark, seed_list, work))))


if __name__ == "__main__":
    main()
