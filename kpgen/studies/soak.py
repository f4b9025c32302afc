"""`make soak`: the streaming C API run for a long time on real sensor input, never reset, checked bit for bit.

For every cell in CELLS a small classifier is trained on BasicMotions (cached under build/soak/models), emitted
for each board, and its firmware (templates/soak_main.c.j2, in place of the test firmware's main.c) streams a
long sequence through model_step without a reset, printing a digest of the whole state every `every` steps.
The host runs the integer reference over the same stream from zero state and compares every checkpoint; it
also counts, from the reference's intermediates, how often c, h and the gate sums saturate, and compares the
accuracy of reading the scores on a stream that is never reset with resetting at each window. Writes
docs/streaming.md. Run: `make soak` or `python -m kpgen.studies.soak [--steps N] [--cells lstm,gru]`.

The stream: the 40 held-out BasicMotions recordings (4 activities, 100 steps of 6 IMU channels each) joined
end to end, in a new random order each round, as a watch would see one activity after another.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from kpgen import KpgenError, __version__
from kpgen.frontend import datasets
from kpgen.frontend.load import load_checkpoint
from kpgen.ir import ModelQ, cell_of
from kpgen.quant import quantize
from kpgen.reference import golden, vectors
from kpgen.target import qemu, toolchain
from kpgen.target.boards import Board, load_board, template_env

REPO_ROOT = Path(__file__).resolve().parents[2]  # the studies run from a checkout and write into its docs/
DOC = REPO_ROOT / "docs" / "streaming.md"
WORK = REPO_ROOT / "build" / "soak"
DATASET = "basicmotions"
# The cells `make soak` trains and runs (`kpgen train --cell` names), one word each.
CELLS = ("lstm", "gru", "fastrnn", "rnn")
HIDDEN = 32
EPOCHS = {"lstm": 40, "gru": 60, "fastrnn": 40, "rnn": 40}  # few epochs: the soak checks streaming, not the best model
BOARDS = ("m4", "m0")
STEPS = 100_000
EVERY = 1_000
WINDOWS = (25, 50, 100, 200, 400)  # sliding-window lengths (steps) of the reset-every-N policy
TRAIN_TIMEOUT = 900.0
QEMU_TIMEOUT = 3600.0
FLASH_SHARE = 2  # the stored stream takes at most 1/FLASH_SHARE of the board's flash


# --------------------------------------------------------------------------------------------- the stream


@dataclass(frozen=True)
class Stream:
    """A continuous int8 input stream made of whole recordings, and where each recording lies in it."""

    xq: np.ndarray  # int8 [steps, I]
    starts: np.ndarray  # int64 [S]: first step of each recording (segment) in the stream
    lengths: np.ndarray  # int64 [S]
    labels: np.ndarray  # int64 [S]
    index: np.ndarray  # int64 [S]: which test recording
    recordings: np.ndarray  # int8 [N, T, I]: the test recordings themselves

    @property
    def ends(self) -> np.ndarray:
        """One past the last step of each segment that lies wholly inside the stream."""
        return self.starts + self.lengths


def make_stream(x: np.ndarray, y: np.ndarray, steps: int, seed: int = 0) -> Stream:
    """Recordings x [N, T, I] (int8) joined end to end until `steps`, each round in a new order (seed)."""
    rng = np.random.default_rng(seed)
    n, t = x.shape[0], x.shape[1]
    order: list[int] = []
    while len(order) * t < steps:
        order += rng.permutation(n).tolist()
    idx = np.array(order, np.int64)
    xq = x[idx].reshape(-1, x.shape[2])[:steps]
    starts = np.arange(len(idx), dtype=np.int64) * t
    whole = starts + t <= steps
    return Stream(xq=np.ascontiguousarray(xq), starts=starts[whole], lengths=np.full(int(whole.sum()), t, np.int64),
                  labels=y[idx][whole], index=idx[whole], recordings=x)


def stored_steps(board: Board, steps: int, inputs: int, round_steps: int) -> int:
    """Steps of the stream stored in flash: all of them when they fit in 1/FLASH_SHARE of the flash, else the
    most whole rounds that do (at least one); the firmware loops over what is stored."""
    budget = board.flash_size // FLASH_SHARE
    if steps * inputs <= budget:
        return steps
    return min(steps, max(1, budget // (round_steps * inputs)) * round_steps)


def tiled(xq_stored: np.ndarray, steps: int) -> np.ndarray:
    """What the firmware reads: the stored stream repeated to `steps` steps."""
    reps = -(-steps // len(xq_stored))
    return np.tile(xq_stored, (reps, 1))[:steps]


# --------------------------------------------------------------------------------------------- expected values


@dataclass(frozen=True)
class Checkpoint:
    step: int  # steps run so far (1-based)
    state: int  # FNV-1a of the state at this step
    running: int  # FNV-1a of the state of every step so far, chained
    best: int
    scores: tuple[int, ...]


def state_bytes(trace: golden.GoldenTrace) -> np.ndarray:
    """uint8 [T, K]: per step the bytes the firmware digests (h int8, then LSTM c int16 little-endian, per layer);
    batch item 0 of the trace."""
    parts = []
    for h, c in zip(trace.hidden, trace.cell, strict=True):
        parts.append(h[0].view(np.uint8))
        parts.append(np.ascontiguousarray(c[0].astype("<i2")).view(np.uint8))
    return np.concatenate(parts, axis=1)


def running_digests(data: np.ndarray, at: np.ndarray) -> list[int]:
    """FNV-1a (vectors.FNV_OFFSET, FNV_PRIME) over the rows of data [T, K] in order, read after rows at (0-based)."""
    d, prime, mask = vectors.FNV_OFFSET, vectors.FNV_PRIME, 0xFFFFFFFF
    want = {int(a) for a in at}
    out = []
    for t, row in enumerate(data.tolist()):
        for b in row:
            d = ((d ^ b) * prime) & mask
        if t in want:
            out.append(d)
    return out


def expected_checkpoints(model: ModelQ, trace: golden.GoldenTrace, every: int) -> list[Checkpoint]:
    """What the soak firmware must print after every `every` steps of the stream the trace was run on."""
    steps = trace.hidden[0].shape[1]
    at = np.arange(every - 1, steps, every)
    if len(at) == 0:
        return []
    snap = golden.GoldenTrace(logits=trace.logits, hidden=tuple(h[0, at][:, None] for h in trace.hidden),
                              cell=tuple(c[0, at][:, None] for c in trace.cell))
    states = vectors.state_digests(snap)[:, 0]  # the state alone: each checkpoint a one-step "sample"
    running = running_digests(state_bytes(trace), at)
    scores = golden.kp_fc_s8(model.head.weight, model.head.bias, trace.hidden[-1][0, at])
    best = golden.predict(scores)
    return [Checkpoint(int(a) + 1, int(s), r, int(b), tuple(int(v) for v in sc))
            for a, s, r, b, sc in zip(at, states, running, best, scores, strict=True)]


def parse_checkpoints(stdout: str) -> list[Checkpoint]:
    """The firmware's "C <step> <state> <running> <best> <scores...>" lines."""
    out = []
    for line in stdout.splitlines():
        f = line.split()
        if len(f) >= 5 and f[0] == "C":
            try:
                out.append(Checkpoint(int(f[1]), int(f[2], 16), int(f[3], 16), int(f[4]), tuple(int(v) for v in f[5:])))
            except ValueError:
                continue
    return out


# --------------------------------------------------------------------------------------------- saturation


@dataclass(frozen=True)
class Saturation:
    """Clamp events of one layer over the stream: values whose exact result lay outside the integer type."""

    layer: int
    cell: str
    c: int | None  # int16 cell state (LSTM)
    h: int  # int8 hidden state
    gates: int  # int16 Q3.12 gate sums (every sum the cell saturates to 16 bits)
    c_total: int | None
    h_total: int
    gates_total: int
    early: int  # clamps of any kind in the first tenth of the steps
    late: int  # and in the last tenth: equal rates mean no drift


def _outside(v: np.ndarray, bits: int) -> np.ndarray:
    """Per step (row), how many values of v lie outside the signed `bits`-wide range (int64 [T])."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return np.count_nonzero((v < lo) | (v > hi), axis=1).astype(np.int64)


def _layer_saturation(model: ModelQ, layer, x: np.ndarray, h_out: np.ndarray, c_out: np.ndarray) -> tuple | None:
    """Recompute one layer's step for every t at once from the reference's inputs and previous states (x [T, I],
    h_out [T, H], c_out [T, H] or [T, 0]); returns (h', c' or None, clamp counts of c, h, gate sums, gate total).
    The pre-saturation values come from golden's public kernels, step by step as the golden step computes them."""
    i64 = np.int64
    hs = layer.hidden_size
    cell = cell_of(layer)
    h_prev = np.concatenate([np.zeros((1, hs), np.int8), h_out[:-1]]).astype(i64)
    gx, gh = golden.gate_inputs(layer, x, h_prev.astype(np.int8))
    sig, tanh = model.sigmoid_table, model.tanh_table
    if cell == "lstm":
        c_prev = np.concatenate([np.zeros((1, hs), np.int16), c_out[:-1]]).astype(i64)
        zr = gx + gh + layer.bias.astype(i64)
        z = golden.sat(zr, 16)
        gi = golden.kp_sigmoid_s16(z[:, :hs], sig).astype(i64)
        gf = golden.kp_sigmoid_s16(z[:, hs : 2 * hs], sig).astype(i64)
        gg = golden.kp_tanh_s16(z[:, 2 * hs : 3 * hs], tanh).astype(i64)
        go = golden.kp_sigmoid_s16(z[:, 3 * hs :], sig).astype(i64)
        cf = layer.cell_frac
        cr = golden.rsr(gf * c_prev, 15) + golden.rsr(gi * gg, 30 - cf)
        c_new = golden.sat(cr, 16)
        c12 = golden.rsr(c_new, cf - 12) if cf >= 12 else golden.sat(c_new << i64(12 - cf), 16)
        hr = golden.rsr(go * golden.kp_tanh_s16(c12, tanh).astype(i64), 23)
        return golden.sat(hr, 8), c_new, _outside(cr, 16), _outside(hr, 8), _outside(zr, 16), zr.size
    if cell == "gru":
        b = layer.bias.astype(i64)
        rzr = gx[:, : 2 * hs] + gh[:, : 2 * hs] + b[: 2 * hs]
        rz = golden.sat(rzr, 16)
        r = golden.kp_sigmoid_s16(rz[:, :hs], sig).astype(i64)
        zg = golden.kp_sigmoid_s16(rz[:, hs:], sig).astype(i64)
        hnr = gh[:, 2 * hs :] + layer.bias_hn.astype(i64)
        nr = gx[:, 2 * hs :] + b[2 * hs :] + golden.rsr(r * golden.sat(hnr, 16), 15)
        n = golden.kp_tanh_s16(golden.sat(nr, 16), tanh).astype(i64)
        hr = golden.rsr(zg * (h_prev << i64(8)) + (32768 - zg) * n, 23)
        gates = _outside(rzr, 16) + _outside(hnr, 16) + _outside(nr, 16)
        return golden.sat(hr, 8), None, None, _outside(hr, 8), gates, rzr.size + hnr.size + nr.size
    if cell == "fastrnn":
        pre = gx + gh + layer.bias.astype(i64)
        ht = golden.kp_tanh_s16(golden.sat(pre, 16), tanh).astype(i64)
        hr = golden.rsr(golden.rsr(i64(layer.alpha) * ht, 8 + layer.state_exp) + i64(layer.beta) * h_prev, 15)
        return golden.sat(hr, 8), None, None, _outside(hr, 8), _outside(pre, 16), pre.size
    if cell == "fastgrnn":
        pre = gx + gh
        zs, hs_ = pre + layer.bias_z.astype(i64), pre + layer.bias_h.astype(i64)
        zg = golden.kp_sigmoid_s16(golden.sat(zs, 16), sig).astype(i64)
        ht = golden.kp_tanh_s16(golden.sat(hs_, 16), tanh).astype(i64)
        g = golden.rsr(i64(layer.zeta) * (32768 - zg), 15) + i64(layer.nu)
        hr = golden.rsr(golden.rsr(g * ht, 8 + layer.state_exp) + zg * h_prev, 15)
        return golden.sat(hr, 8), None, None, _outside(hr, 8), _outside(zs, 16) + _outside(hs_, 16), 2 * zs.size
    if cell == "rnn":  # tanh: h' = sat8(rsr(tanh(sat16(s)), 8))
        pre = gx + gh + layer.bias.astype(i64)
        hr = golden.rsr(golden.kp_tanh_s16(golden.sat(pre, 16), tanh).astype(i64), 8)
        return golden.sat(hr, 8), None, None, _outside(hr, 8), _outside(pre, 16), pre.size
    if cell == "rnn-relu":  # relu: the int32 sum is not saturated; h' = sat8(rsr(max(s, 0), 8))
        pre = gx + gh + layer.bias.astype(i64)
        hr = golden.rsr(np.maximum(pre, 0), 8)
        return golden.sat(hr, 8), None, None, _outside(hr, 8), np.zeros(len(pre), np.int64), pre.size
    return None


def saturation(model: ModelQ, xq: np.ndarray, trace: golden.GoldenTrace) -> list[Saturation] | None:
    """Per layer clamp counts over the stream xq [T, I] the (batch-of-one) trace was run on; None for a cell
    this instrumented replay does not know. The replay must reproduce the reference's h and c exactly."""
    out = []
    x = xq
    for i, layer in enumerate(model.layers):
        h_out, c_out = trace.hidden[i][0], trace.cell[i][0]
        got = _layer_saturation(model, layer, x, h_out, c_out)
        if got is None:
            return None
        h_new, c_new, nc, nh, ng, gtotal = got
        if not np.array_equal(h_new, h_out) or (c_new is not None and not np.array_equal(c_new, c_out)):
            raise AssertionError(f"layer {i}: the saturation replay does not reproduce the reference's states")
        per_step = nh + ng + (0 if nc is None else nc)
        tenth = max(1, len(per_step) // 10)
        out.append(Saturation(i, cell_of(layer), None if nc is None else int(nc.sum()), int(nh.sum()), int(ng.sum()),
                              None if nc is None else c_out.size, h_out.size, gtotal, int(per_step[:tenth].sum()),
                              int(per_step[-tenth:].sum())))
        x = h_out
    return out


# --------------------------------------------------------------------------------------------- accuracy


@dataclass(frozen=True)
class Accuracy:
    """Window classification on the stream: scores read at each recording's last step."""

    never_reset: float  # state carried over from the previous recordings
    reset_each: float  # reset at each recording's first step (the test accuracy, over the stream's recordings)
    windows: dict[int, float]  # N -> reset N steps before the read (the last N steps only)
    offsets: dict[int, tuple[float, float]]  # k -> (never reset, reset at the start), read k steps into a recording
    segments: int


def _scores(model: ModelQ, h: np.ndarray) -> np.ndarray:
    return golden.predict(golden.kp_fc_s8(model.head.weight, model.head.bias, h))


def accuracy(model: ModelQ, stream: Stream, xq: np.ndarray, trace: golden.GoldenTrace,
             windows: tuple[int, ...] = WINDOWS) -> Accuracy:
    """Accuracy of the never-reset stream against a reset at each recording and sliding windows of N steps."""
    ends = stream.ends
    keep = ends <= len(xq)
    ends, labels, index, starts = ends[keep], stream.labels[keep], stream.index[keep], stream.starts[keep]
    h_last = trace.hidden[-1][0]
    never = _scores(model, h_last[ends - 1]) == labels
    rec = golden.run_model(model, stream.recordings).hidden[-1]  # [N, T, H], each from zero state
    reset = _scores(model, rec[index, -1]) == labels
    t = stream.recordings.shape[1]
    offsets = {}
    for k in sorted({max(1, t // 10), t // 4, t // 2, 3 * t // 4, t}):
        offsets[k] = (float(np.mean(_scores(model, h_last[starts + k - 1]) == labels)),
                      float(np.mean(_scores(model, rec[index, k - 1]) == labels)))
    wins = {}
    for n in windows:
        ok = ends >= n
        if not ok.any():
            continue
        batch = np.stack([xq[e - n : e] for e in ends[ok]])
        wins[n] = float(np.mean(_scores(model, golden.run_model(model, batch).hidden[-1][:, -1]) == labels[ok]))
    return Accuracy(float(np.mean(never)), float(np.mean(reset)), wins, offsets, len(ends))


# --------------------------------------------------------------------------------------------- the firmware


def c_rows(values: np.ndarray, per_line: int) -> str:
    """C initialiser lines for an integer array, per_line values a line."""
    flat = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    return ",\n".join("    " + ", ".join(flat[i : i + per_line]) for i in range(0, len(flat), per_line))


def write_firmware(checkpoint: Path, board: Board, xq_stored: np.ndarray, steps: int, every: int,
                   out_dir: Path, name: str = "model") -> None:
    """The emitted project for board with the soak main and the stored stream in place of the test firmware's
    main.c and test vectors (vectors.c then holds the stream)."""
    from kpgen.pipeline import emit_project

    emit_project(checkpoint, board.name, out_dir, name=name, samples=1, force=True)
    ctx = {"name": name, "NAME": name.upper(), "version": __version__, "total_steps": steps,
           "stored_steps": len(xq_stored), "every": every}
    (out_dir / "main.c").write_text(template_env().get_template("soak_main.c.j2").render(ctx))
    inputs = xq_stored.shape[1]
    (out_dir / "vectors.c").write_text(
        f"/* vectors.c: the soak's input stream, {len(xq_stored)} steps of {inputs} int8 values, generated by kpgen "
        f"{__version__} (kpgen.studies.soak). */\n#include <stdint.h>\n\n"
        f"extern const int8_t soak_stream[{len(xq_stored) * inputs}];\n"
        f"const int8_t soak_stream[{len(xq_stored) * inputs}] = {{\n{c_rows(xq_stored, inputs * 4)}\n}};\n")
    (out_dir / "vectors.h").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- one soak


@dataclass
class SoakResult:
    cell: str
    board: str
    checkpoint: str
    steps: int
    stored: int
    every: int
    checkpoints: int  # expected checkpoint lines
    exact: int  # checkpoint lines equal in every field (state, running digest, class, scores)
    first_mismatch: int | None  # step of the first differing checkpoint
    exit_code: int | None
    timed_out: bool
    qemu_seconds: float
    golden_seconds: float
    instructions_per_step: int | None
    float_accuracy: float | None
    saturation: list[Saturation] | None = None
    accuracy: Accuracy | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.exact == self.checkpoints > 0 and self.exit_code == 0 and not self.timed_out and not self.problems


def soak(checkpoint: Path, board_name: str, steps: int, every: int, work: Path, *, seed: int = 0,
         study: bool = True, profile: bool = True, timeout: float = QEMU_TIMEOUT) -> SoakResult:
    """Build and run the soak firmware of checkpoint on board for `steps` steps and check every checkpoint;
    study: also count saturations and compare accuracies (host only)."""
    board = load_board(board_name)
    fmodel = load_checkpoint(checkpoint)
    qmodel = quantize.quantize_model(fmodel)
    if not golden.is_streaming(qmodel):
        raise KpgenError(f"{checkpoint} has a bidirectional layer, which has no per-step call; soak "
                         "unidirectional (streaming) models only")
    if qmodel.pool != "last" or qmodel.hidden is not None:  # the soak's expected scores read h_t directly
        raise KpgenError(f"{checkpoint} has a head on the {qmodel.pool} over time or an MLP head; the soak checks "
                         "the Linear head on the last step: soak a model with that head")
    split = datasets.load(str(fmodel.meta.get("dataset")), seed=seed)
    rec = golden.quantize_input(split.x_test, qmodel.input_scale)
    stream = make_stream(rec, split.y_test, steps, seed)
    stored = stored_steps(board, steps, qmodel.input_size, rec.shape[0] * rec.shape[1])
    xq = tiled(stream.xq[:stored], steps)
    if stored < steps:  # what the firmware sees: the stored rounds again and again
        stream = make_stream(rec, split.y_test, stored, seed)
        reps = -(-steps // stored)
        stream = Stream(xq=xq, starts=np.concatenate([stream.starts + k * stored for k in range(reps)]),
                        lengths=np.tile(stream.lengths, reps), labels=np.tile(stream.labels, reps),
                        index=np.tile(stream.index, reps), recordings=rec)
    t0 = time.perf_counter()
    trace = golden.run_model(qmodel, xq[None])
    golden_seconds = time.perf_counter() - t0
    expected = expected_checkpoints(qmodel, trace, every)
    fw = work / f"{cell_of(qmodel.layers[0])}-{board.name}"
    write_firmware(Path(checkpoint), board, xq[:stored], steps, every, fw)
    toolchain.check_tools()
    built = toolchain.build(fw)
    res = qemu.run(built.elf, board, timeout=timeout)
    got = {c.step: c for c in parse_checkpoints(res.stdout)}
    exact, first = 0, None
    for e in expected:
        if got.get(e.step) == e:
            exact += 1
        elif first is None:
            first = e.step
    problems = []
    if res.fault_pc is not None:
        problems.append(f"fault at pc=0x{res.fault_pc:08x}")
    if f"SOAK-END steps={steps}" not in res.stdout:
        problems.append("no SOAK-END line")
    ips = None
    if profile and exact == len(expected) and res.exit_code == 0:
        ips = qemu.count_instructions(built.elf, board, args=("profile",), timeout=600.0).total
    acc = fmodel.meta.get("float_test_accuracy")
    result = SoakResult(cell="+".join(sorted({cell_of(l) for l in qmodel.layers})), board=board.name,
                        checkpoint=Path(checkpoint).name, steps=steps, stored=stored, every=every,
                        checkpoints=len(expected), exact=exact, first_mismatch=first, exit_code=res.exit_code,
                        timed_out=res.timed_out, qemu_seconds=res.seconds, golden_seconds=golden_seconds,
                        instructions_per_step=ips, float_accuracy=acc if isinstance(acc, float) else None,
                        problems=problems)
    if study:
        result.saturation = saturation(qmodel, xq, trace)
        result.accuracy = accuracy(qmodel, stream, xq, trace)
    return result


# --------------------------------------------------------------------------------------------- models and report


def train_cell(cell: str, out: Path, log: Callable[[str], None] = print, timeout: float = TRAIN_TIMEOUT) -> Path:
    """A small BasicMotions classifier of this cell, trained once by `kpgen train` and cached at out."""
    if out.is_file():
        log(f"using {out} (delete it to retrain)")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "kpgen", "train", "--dataset", DATASET, "--cell", cell, "--hidden", str(HIDDEN),
           "--epochs", str(EPOCHS.get(cell, 40)), "--seed", "0", "-o", str(out), "--force"]
    log("$ kpgen " + " ".join(cmd[3:]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise KpgenError(f"training the {cell} soak model took over {timeout:g} s; retry on a less "
                         "loaded machine") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise KpgenError(f"training the {cell} soak model failed: {why}; check `kpgen train --cell {cell}`")
    log(proc.stdout.strip())
    return out


def _pct(n: int | None, total: int | None) -> str:
    if n is None or not total:
        return "-"
    return f"{n:,} ({100 * n / total:.3f}%)"


def format_doc(results: list[SoakResult], seconds: float) -> str:
    """docs/streaming.md from the soak's results."""
    lines = [
        "# Streaming for days: long runs of the per-step API",
        "",
        "Written by `make soak` (kpgen.studies.soak); do not edit by hand. "
        f"kpgen {__version__}, {datetime.date.today().isoformat()}, {platform.machine()}, {seconds / 60:.1f} min.",
        "",
        "Keyword spotting and activity recognition run a model one step at a time, for days, through the emitted",
        "streaming API (`model_reset`, `model_step`, `model_scores`, `model_hidden`, `model_cell` in model.h).",
        "The soak checks that nothing drifts: a firmware (templates/soak_main.c.j2) streams real sensor data",
        "through `model_step` without ever resetting and prints, every "
        f"{results[0].every if results else EVERY:,} steps, an FNV-1a digest of the whole state",
        "(every layer's h, and c for LSTM), a digest chained over every step's state since the start, and the",
        "scores. The host runs the integer reference (kpgen.reference.golden) over the same stream from zero",
        "state and compares every line, bit for bit.",
        "",
        "The stream: the 40 held-out BasicMotions recordings (smartwatch accelerometer and gyroscope, 6 channels,",
        "100 steps each; standing, walking, running, badminton) joined end to end, each round in a new random",
        "order, so the activity changes every 100 steps, as on a wrist. Models: "
        f"{HIDDEN} hidden units, KP matrices,",
        "trained by `kpgen train --dataset basicmotions` for a few epochs (cached in build/soak/models). Daphnet's",
        "recording is longer and continuous, but its labelled task is sensor placement on mean-removed 64-step",
        "windows (kpgen.frontend.datasets.load_daphnet), which a stream cannot reproduce, and it is only 7,040",
        "steps: it would have to be repeated as well.",
        "",
        "## Bit-exactness over the long run",
        "",
        "| cell | board | steps | stored stream | checkpoints bit-exact | instructions per step | QEMU | reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ips = f"{r.instructions_per_step:,}" if r.instructions_per_step else "-"
        ok = f"{r.exact}/{r.checkpoints}"
        if not r.passed:
            first = f", first at step {r.first_mismatch:,}" if r.first_mismatch else ""
            problems = "; " + "; ".join(r.problems) if r.problems else ""
            ok += f" (FAILED{first}{problems})"
        lines.append(f"| {r.cell} | {r.board} | {r.steps:,} | {r.stored:,} | {ok} | {ips} | {r.qemu_seconds:.0f} s "
                     f"| {r.golden_seconds:.0f} s |")
    lines += [
        "",
        "Stored stream: the steps kept in flash; the firmware loops over them (the M0's 256 KiB hold fewer than",
        "the M4's 4 MiB). Instructions per step: one `model_step` from zero state, counted exactly under QEMU",
        "(`kpgen_profile_begin`/`end`). Reference: the golden model over the whole stream as a batch of one.",
        "",
        "## Saturation over the stream",
        "",
        "How often an exact result lay outside its integer type and was clamped, per layer, over every step of",
        "the stream (counted by an instrumented replay of the reference's step that must reproduce its h and c",
        "exactly): the int16 cell state c (LSTM), the int8 hidden state h, and the int16 Q3.12 gate sums before",
        "the activation tables. Counts are element-steps (units x steps). First and last tenth: all clamps in the",
        "first and in the last 10% of the steps; equal counts mean the state does not drift towards its limits.",
        "",
        "| cell | board | c (int16) | h (int8) | gate sums (int16 Q3.12) | first tenth | last tenth |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.saturation is None:
            lines.append(f"| {r.cell} | {r.board} | not instrumented | | | | |")
            continue
        for s in r.saturation:
            tag = f"{r.cell}, layer {s.layer}" if len(r.saturation) > 1 else r.cell
            lines.append(f"| {tag} | {r.board} | {_pct(s.c, s.c_total)} | {_pct(s.h, s.h_total)} | "
                         f"{_pct(s.gates, s.gates_total)} | {s.early:,} | {s.late:,} |")
    lines += [
        "",
        "## Accuracy with and without reset",
        "",
        "Each recording in the stream is a window with a label; the scores are read at its last step.",
        "*Never reset*: the state carries over from everything streamed before. *Reset at each window*: the",
        "state is zeroed at the recording's first step (the test accuracy, over the stream's windows). *Last N",
        "steps*: the state is zeroed N steps before the read (reset every N steps, read before each reset),",
        "with no knowledge of where recordings begin (last 100 is the same as resetting at each window here, as",
        ("every recording is 100 steps long and the reads fall on recording ends). Float test: the float model on "
         "the 40 recordings; the other"),
        "columns are the int8 model. The M0 stores a shorter stream (5 rounds) and loops over it, so its windows",
        "follow one another in another order than on the M4.",
        "",
    ]
    wins = sorted({n for r in results if r.accuracy for n in r.accuracy.windows})
    lines.append("| cell | board | windows | float test | never reset | reset at each window | "
                 + " | ".join(f"last {n}" for n in wins) + " |")
    lines.append("|---|---|---:|---:|---:|---:|" + "---:|" * len(wins))
    for r in results:
        a = r.accuracy
        if a is None:
            continue
        fl = f"{100 * r.float_accuracy:.1f}%" if r.float_accuracy is not None else "-"
        lines.append(f"| {r.cell} | {r.board} | {a.segments:,} | {fl} | {100 * a.never_reset:.1f}% | "
                     f"{100 * a.reset_each:.1f}% | " + " | ".join(
                         f"{100 * a.windows[n]:.1f}%" if n in a.windows else "-" for n in wins) + " |")
    offs = sorted({k for r in results if r.accuracy for k in r.accuracy.offsets})
    lines += [
        "",
        "Read k steps into a window (never reset / reset at the window's start): how fast each state forgets the",
        "previous activity.",
        "",
        "| cell | board | " + " | ".join(f"k = {k}" for k in offs) + " |",
        "|---|---|" + "---|" * len(offs),
    ]
    for r in results:
        a = r.accuracy
        if a is None:
            continue
        lines.append(f"| {r.cell} | {r.board} | " + " | ".join(
            f"{100 * a.offsets[k][0]:.0f}% / {100 * a.offsets[k][1]:.0f}%" if k in a.offsets else "-" for k in offs)
            + " |")
    lines += ["", "## Reset policy", ""] + policy(results) + [""]
    return "\n".join(lines)


def policy(results: list[SoakResult]) -> list[str]:
    """The recommendation, from the measured accuracies (best window length per model, and the gap to never
    resetting)."""
    accs = [r for r in results if r.accuracy is not None and r.board == results[0].board]
    if not accs:
        return ["No accuracy was measured."]
    out = [
        "The arithmetic does not drift: every checkpoint above is bit-exact, and clamping (saturation) happens at",
        "the same low rate at the end of the stream as at its start, so the state never creeps towards its",
        "limits. A model may run without reset for as long as the device is on; the reset policy is a question",
        "of accuracy only. The measured numbers:",
        "",
    ]
    for r in accs:
        a = r.accuracy
        assert a is not None
        best_n = max(a.windows, key=lambda n: (a.windows[n], -n)) if a.windows else None
        gap = 100 * (a.reset_each - a.never_reset)
        part = f"- {r.cell}: never reset {100 * a.never_reset:.1f}%, reset at each window {100 * a.reset_each:.1f}%"
        if best_n is not None:
            part += f", best periodic reset every {best_n} steps ({100 * a.windows[best_n]:.1f}%)"
        out.append(part + f" ({gap:+.1f} points for resetting at the window).")
    out += [
        "",
        "Recommendation:",
        "- Train and deploy with the same reset rule. These models were trained on 100-step windows from zero",
        "  state, so they are most accurate when the state is at most about one training window old: call",
        "  `model_reset()` every N steps, N about the training window (here 100 steps, 10 s of IMU data at 10 Hz),",
        "  and read `model_scores()` just before each reset. `model_scores()` may be read at any step; the",
        "  second accuracy table shows how good a reading k steps after a reset is.",
        "- Where the input has natural pauses (silence before a keyword, stillness between gestures), reset on",
        "  the pause: a reset at the true start of an event is the best case above (reset at each window).",
        "- Never resetting is safe arithmetic but costs accuracy wherever the table above shows a gap, because",
        "  the state still carries the previous activity; a model meant to run unreset must be trained on long",
        "  streams (truncated back-propagation over joined recordings), which `kpgen train` does not do.",
    ]
    return out


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--steps", type=click.IntRange(1), default=STEPS, show_default=True, help="Steps per model and board.")
@click.option("--every", type=click.IntRange(1), default=EVERY, show_default=True, help="Steps between checkpoints.")
@click.option("--cells", default=",".join(CELLS), show_default=True, help="Cells to train and soak (comma list).")
@click.option("--boards", default=",".join(BOARDS), show_default=True, help="Boards to run on (comma list).")
@click.option("--work", type=click.Path(path_type=Path), default=WORK, show_default=True,
              help="Models and firmware go here.")
@click.option("--doc", type=click.Path(path_type=Path), default=DOC, show_default=True, help="Report to write.")
def main(steps: int, every: int, cells: str, boards: str, work: Path, doc: Path) -> None:
    """Soak the streaming API: train, emit, stream STEPS never-reset steps under QEMU, check every checkpoint
    bit for bit, count saturations, compare accuracies with and without reset; write DOC."""
    if every > steps:
        raise click.BadParameter(f"{every} is more than --steps {steps}", param_hint="--every")
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        click.echo(msg, err=True)

    results = []
    try:
        for cell in _split_list(cells):
            ckpt = train_cell(cell, work / "models" / f"{DATASET}-{cell}.pt", log)
            for b in _split_list(boards):
                log(f"== {cell} on {b}: {steps:,} steps")
                r = soak(ckpt, b, steps, every, work)
                log(f"   bit-exact checkpoints {r.exact}/{r.checkpoints}, QEMU {r.qemu_seconds:.0f} s, reference "
                    f"{r.golden_seconds:.0f} s, {r.instructions_per_step} instructions per step"
                    + ("" if r.passed else f"  FAILED {r.problems} first mismatch at {r.first_mismatch}"))
                results.append(r)
    except KpgenError as e:
        click.echo(f"soak: error: {e}", err=True)
        sys.exit(2)
    text = format_doc(results, time.perf_counter() - t0)
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_name(doc.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(doc)
    click.echo(f"wrote {doc}")
    for r in results:
        click.echo(f"{r.cell:8} {r.board:4} {r.steps:,} steps: bit-exact checkpoints {r.exact}/{r.checkpoints}"
                   + ("" if r.passed else "  FAILED"))
    sys.exit(0 if all(r.passed for r in results) else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
