"""kpgen's command line: a thin click layer over the stages."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kpgen import KpgenError, __version__


def _fail(message: str) -> None:
    click.echo(f"kpgen: error: {message}", err=True)
    sys.exit(2)


class _Group(click.Group):
    """Turns a KpgenError anywhere below into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KpgenError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kpgen")
def main() -> None:
    """Kronecker-compressed RNNs to bit-exact int8 C for Cortex-M, verified under QEMU.

    \b
    Typical use:
      kpgen train -o model.pt
      kpgen emit model.pt --board m4 -o build/m4
      kpgen run build/m4
    """


def _factors(ctx, param, value):
    if value is None:
        return None
    from kpgen.train import parse_factors

    try:
        return parse_factors(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@main.command()
@click.option("-o", "--out", "out", type=click.Path(path_type=Path), default=Path("model.pt"), show_default=True,
              help="Checkpoint to write.")
@click.option("--dataset", default="mnist", show_default=True, help="Training data (shipped inside packages).")
@click.option("--hidden", "hidden_size", type=click.IntRange(1), default=128, show_default=True,
              help="LSTM hidden units H.")
@click.option("--wx-factors", callback=_factors, default="16x2,32x14", show_default=True,
              help="Shapes of A and B in Wx = A (x) B (Wx is 4H x inputs).")
@click.option("--wh-factors", callback=_factors, default="16x8,32x16", show_default=True,
              help="Shapes of A and B in Wh = A (x) B (Wh is 4H x H).")
@click.option("--layers", "num_layers", type=click.IntRange(1), default=1, show_default=True,
              help="Stacked LSTM layers (layers after the first take --wh-factors for Wx too).")
@click.option("--epochs", type=click.IntRange(1), default=60, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.02, show_default=True,
              help="Peak learning rate (AdamW, warm-up then cosine decay).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (data split and weights).")
@click.option("--force", is_flag=True, help="Replace an existing checkpoint.")
def train(out: Path, force: bool, **cfg) -> None:
    """Train a KP-LSTM classifier on DATASET, calibrate it, and write a checkpoint (docs/checkpoint.md).

    The defaults are the demo's model: about 1.5 minutes on 2 CPU cores.
    """
    from kpgen.train import save_checkpoint, train_model

    if out.exists() and not force:
        raise KpgenError(f"{out} exists; remove it or pass --force to replace it")
    ckpt = train_model(**cfg, log=lambda msg: click.echo(msg, err=True))
    save_checkpoint(ckpt, out)
    acc = ckpt["meta"].get("float_test_accuracy")
    click.echo(f"wrote {out} (float test accuracy {100 * acc:.2f}%)" if acc is not None else f"wrote {out}")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--board", required=True, help="Board definition from boards/ (see `kpgen boards`).")
@click.option("-o", "--out", "out", type=click.Path(path_type=Path), default=None,
              help="Output directory  [default: build/<board>]")
@click.option("--name", default="model", show_default=True, help="C name prefix of the model's API.")
@click.option("--samples", type=click.IntRange(1), default=50, show_default=True,
              help="Test sequences embedded in the firmware and checked bit for bit.")
@click.option("--vectors", type=click.Path(path_type=Path), default=None,
              help="Test inputs as .npz: x [samples, steps, features] float, optional y labels. "
                   "Default: the test split of the checkpoint's dataset.")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
def emit(checkpoint: Path, board: str, out: Path | None, name: str, samples: int, vectors: Path | None,
         force: bool) -> None:
    """Quantize CHECKPOINT to int8 and write C sources, test firmware and Makefile for BOARD."""
    from kpgen.pipeline import emit_project

    out = out if out is not None else Path("build") / board
    m = emit_project(checkpoint, board, out, name=name, samples=samples, vectors=vectors, force=force)
    md = m["model"]
    click.echo(
        f"wrote {out}: {md['params']} parameters ({md['param_compression']}x fewer than dense), "
        f"{md['weight_bytes_int8']} weight bytes, arena {m['arena_bytes']} bytes, "
        f"{m['vectors']['samples']} test sequences"
    )


@main.command()
@click.argument("project", type=click.Path(path_type=Path))
@click.option("--timeout", type=click.FloatRange(1), default=300.0, show_default=True,
              help="Seconds before a hung firmware is killed.")
@click.option("--no-profile", is_flag=True, help="Skip the instruction-count run.")
def run(project: Path, timeout: float, no_profile: bool) -> None:
    """Build PROJECT (from `kpgen emit`), run it under QEMU, check it bit for bit and print the report.

    Exit status 0 when every sample matched, 1 on a mismatch, fault or hang, 2 on a usage error.
    """
    from kpgen.pipeline import run_project
    from kpgen.report import format_report

    rep = run_project(project, timeout=timeout, profile=not no_profile)
    click.echo(format_report(rep))
    if not rep.passed:
        sys.exit(1)


@main.command()
def boards() -> None:
    """List the board definitions."""
    from kpgen.boards import list_boards

    for b in list_boards():
        click.echo(
            f"{b.name:6} {b.core:12} flash {b.flash_size // 1024:>5} KiB  RAM {b.ram_size // 1024:>5} KiB  "
            f"qemu {b.qemu_machine:12} {b.description}"
        )


if __name__ == "__main__":  # pragma: no cover
    main()
