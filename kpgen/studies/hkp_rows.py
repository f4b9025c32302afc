"""Which rows HKP keeps dense: the top rows against the same number spread over the gates.

An HKP matrix is [D; F1 (x) F2] with r dense rows. In an LSTM or GRU matrix the rows come in gate blocks (LSTM:
i, f, g, o; GRU: z, r, n), so the top r rows are r units of the first gate. Spread (`top_groups` = G, the cell's
gates: kpgen.ir.hkp_row_order) keeps r / G rows of every gate dense instead: the same units in every gate, the
same parameter count and the same Kronecker factors for the other rows. `kpgen compress --method hkp` and
`make reproduce` spread an LSTM's (`--hkp-rows auto`, kpgen.train.plan.hkp_row_groups); this study is the
measurement behind that choice.

For each seed, both networks start from `make reproduce`'s kept dense checkpoint with the reproduce HKP
variant's factors and dense-row counts, and fine-tune with the benchmark's recipe (kpgen.studies.reproduce).
Float test accuracy is printed beside the dense and KP networks' from the same run's checkpoints.
Run: `python -m kpgen.studies.hkp_rows --benchmark mnist [--seeds 0,1,2,3,4] [--work build/reproduce]`.
"""

from __future__ import annotations

from pathlib import Path

import click
import torch


def measure(bench_name: str, seeds: list[int], work: Path, log=click.echo) -> list[tuple[int, dict[str, float]]]:
    """Per seed: float test accuracy of dense and KP (kept checkpoints) and of HKP with its dense rows on top and
    spread over the gates (both trained here)."""
    from kpgen.frontend import datasets
    from kpgen.studies import reproduce
    from kpgen.train.compress import spread_over_gates, with_matrices
    from kpgen.train.loop import accuracy, fit, model_from_checkpoint

    by_name = {b.name: b for b in reproduce.BENCHMARKS}
    if bench_name not in by_name:
        raise click.BadParameter(f"unknown benchmark {bench_name!r}: expected one of {', '.join(by_name)}",
                                 param_hint="--benchmark")
    bench = by_name[bench_name]
    hkp = reproduce.sizing_for(bench, reproduce.Config()).variant("hkp")
    if hkp is None or not any(int(s.get("dense_rows", 0)) for s in (hkp.wx, hkp.wh) if isinstance(s, dict)):
        raise click.UsageError(f"{bench_name}: its HKP has no dense rows, so there is nothing to spread")
    gates = {"lstm": 4, "gru": 3}.get(bench.cell, 1)
    if gates == 1:
        raise click.UsageError(f"{bench_name}: a {bench.cell} matrix has no gate blocks to spread dense rows over")
    for spec in (hkp.wx, hkp.wh):
        rows_n = int(spec["dense_rows"]) if isinstance(spec, dict) and spec.get("kind") == "hkp" else 0
        if rows_n % gates:
            raise click.UsageError(f"{bench_name}: {rows_n} dense rows of a {bench.cell} matrix cannot be spread "
                                   f"evenly over its {gates} gates")
    rows = []
    for seed in seeds:
        folder = work / "checkpoints" / bench_name
        paths = {m: folder / f"{m}-s{seed}.pt" for m in ("dense", "kp")}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise click.UsageError(f"no checkpoint {missing[0]}: run `make reproduce` first")
        ck = {m: torch.load(p, weights_only=True) for m, p in paths.items()}
        acc = {m: float(c["meta"]["float_test_accuracy"]) for m, c in ck.items()}
        _, x_tr, y_tr, x_te, y_te = reproduce.load_data(bench.dataset, seed, bench.max_train, bench.max_test)
        for label, where in (("hkp top", "top"), ("hkp spread", "gates")):
            specs = [s if isinstance(s, str) else spread_over_gates(s, bench.cell, where) for s in (hkp.wx, hkp.wh)]
            model = with_matrices(model_from_checkpoint(ck["dense"]), specs[0], specs[1], seed)
            fit(model, x_tr, y_tr, x_te, y_te, epochs=bench.finetune_epochs, batch_size=bench.batch_size,
                lr=bench.lr, seed=seed, max_shift=datasets.MAX_SHIFT.get(bench.dataset, 0), log=lambda s: None)
            acc[label] = float(accuracy(model, x_te, y_te))
        log(f"seed {seed}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in acc.items()))
        rows.append((seed, acc))
    return rows


def table(bench_name: str, rows: list[tuple[int, dict[str, float]]]) -> list[str]:
    """Markdown: float accuracy per seed, the mean, and the share of KP's loss each HKP recovers."""
    keys = ("dense", "kp", "hkp top", "hkp spread")
    out = [f"| {bench_name} seed | " + " | ".join(keys) + " |", "|---" + "|---:" * len(keys) + "|"]
    for seed, acc in rows:
        out.append(f"| {seed} | " + " | ".join(f"{100 * acc[k]:.1f}" for k in keys) + " |")
    mean = {k: sum(a[k] for _, a in rows) / len(rows) for k in keys}
    out.append("| mean | " + " | ".join(f"{100 * mean[k]:.2f}" for k in keys) + " |")
    loss = mean["dense"] - mean["kp"]
    if loss > 0:
        out.append("")
        out.append(f"KP loses {100 * loss:.2f} points; HKP with its dense rows on top recovers "
                   f"{100 * (mean['hkp top'] - mean['kp']):.2f} ({(mean['hkp top'] - mean['kp']) / loss:.0%}), "
                   "spread over the gates "
                   f"{100 * (mean['hkp spread'] - mean['kp']):.2f} ({(mean['hkp spread'] - mean['kp']) / loss:.0%}).")
    return out


@click.command()
@click.option("--benchmark", default="mnist", show_default=True, help="A reproduce benchmark with an LSTM or GRU.")
@click.option("--seeds", default="0,1,2,3,4", show_default=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("build/reproduce"),
              show_default=True, help="The reproduce work directory (its checkpoints/ are read).")
def main(benchmark: str, seeds: str, work: Path) -> None:
    """Train HKP with its dense rows on top and spread over the gates (float), beside dense and KP."""
    torch.set_num_threads(1)
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    click.echo("\n".join(table(benchmark, measure(benchmark, seed_list, work))))


if __name__ == "__main__":
    main()
