"""How long `kpgen emit` takes against `python -c "import torch"`, side by side in one run, best of N each.

The target: the default emit of the MNIST example (accuracy over its 1,000 test digits included) in at most 3x
the time of importing torch. A first emit, not counted, fills the dataset cache, as any user's first emit does.
Run with `make bench-emit` or `python -m kpgen.studies.bench_emit [--repeat N]`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mnist-kplstm.pt"
TARGET_RATIO = 3.0
TIMEOUT = 600.0


def wall_time(cmd: list[str], cwd: Path) -> float:
    """Seconds one run of cmd takes (it must succeed)."""
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, check=False, capture_output=True, text=True, timeout=TIMEOUT)
    took = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"bench_emit: {' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs of each command; the best counts (default 3)")
    ap.add_argument("--checkpoint", type=Path, default=EXAMPLE, help="the model to emit (default: the example)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kpgen-bench-emit-") as tmp:
        work = Path(tmp)
        torch_cmd = [sys.executable, "-c", "import torch"]
        emit_cmd = [sys.executable, "-m", "kpgen", "emit", str(args.checkpoint.resolve()), "--board", "m4",
                    "-o", str(work / "out"), "--force"]  # fmt: skip
        wall_time(emit_cmd, work)  # warm-up: the dataset cache and the OS file cache
        torch_s, emit_s = [], []
        for _ in range(args.repeat):  # interleaved, so both see the same machine load
            torch_s.append(wall_time(torch_cmd, work))
            emit_s.append(wall_time(emit_cmd, work))
    ratio = min(emit_s) / min(torch_s)
    for what, times in (("import torch     ", torch_s), ("kpgen emit (m4)  ", emit_s)):
        print(f"{what} best of {args.repeat}: {min(times):6.2f} s  (all: {', '.join(f'{t:.2f}' for t in times)})")
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"ratio emit / import torch: {ratio:.2f} (target at most {TARGET_RATIO:g}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
