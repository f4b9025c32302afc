"""How long `kpgen emit` takes against `python -c "import torch"`, side by side in one run, best of N each.

The target: the default emit of the MNIST example (accuracy over its 1,000 test digits included) in at most 3x
the time of importing torch. A first emit, not counted, fills the dataset cache, as any user's first emit does.
Run with `make bench-emit` or `python -m kpgen.studies.bench_emit [--repeat N]`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mnist-kplstm.pt"
TARGET_RATIO = 3.0
TIMEOUT = 600.0


def wall_time(cmd: list[str], cwd: Path) -> float:
    """Seconds one run of cmd takes (it must succeed)."""
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, check=False, capture_output=True, text=True, timeout=TIMEOUT)
    took = time.perf_counter() - start
    if res.returncode != 0:
        raise click.ClickException(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return took


@click.command(help=__doc__.splitlines()[0])
@click.option("--repeat", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Runs of each command; the best counts.")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=EXAMPLE,
              show_default=True, help="The model to emit.")
def main(repeat: int, checkpoint: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="kpgen-bench-emit-") as tmp:
        work = Path(tmp)
        torch_cmd = [sys.executable, "-c", "import torch"]
        emit_cmd = [sys.executable, "-m", "kpgen", "emit", str(checkpoint.resolve()), "--board", "m4",
                    "-o", str(work / "out"), "--force"]  # fmt: skip
        wall_time(emit_cmd, work)  # warm-up: the dataset cache and the OS file cache
        torch_s, emit_s = [], []
        for _ in range(repeat):  # interleaved, so both see the same machine load
            torch_s.append(wall_time(torch_cmd, work))
            emit_s.append(wall_time(emit_cmd, work))
    ratio = min(emit_s) / min(torch_s)
    for what, times in (("import torch     ", torch_s), ("kpgen emit (m4)  ", emit_s)):
        print(f"{what} best of {repeat}: {min(times):6.2f} s  (all: {', '.join(f'{t:.2f}' for t in times)})")
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"ratio emit / import torch: {ratio:.2f} (target at most {TARGET_RATIO:g}: {verdict})")


if __name__ == "__main__":
    main()
