"""`kpgen search`: the most accurate model of a task that fits a board's flash, RAM and time budgets.

A design-space search on Ray Tune (docs/search.md). Every trial trains (or compresses) one model, quantizes
it, measures its int8 accuracy with the integer reference on the held-out split, takes its sizes from the
emitter's fit estimate and counts its instructions per inference exactly under QEMU. ASHA stops weak trials
early; a crashed trial is retried once. The Pareto front (accuracy against instructions and flash) is then
emitted again with the full test vectors, built, run bit-exact under QEMU, and its most accurate model
becomes best.pt.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kpgen import KpgenError, escape
from kpgen.extras import import_extra

CELLS = ("lstm", "gru", "fastrnn", "fastgrnn", "rnn")
HIDDEN = (8, 16, 24, 32, 48, 64, 96, 128)
LAYERS = (1, 2)
SCRATCH_METHODS = ("kp", "hkp", "dense")  # what `kpgen train` builds
# What `kpgen compress` builds and `kpgen emit` reads: low rank has no kernel, so it is left out
FROM_METHODS = ("kp", "hkp", "prune", "small")
DENSE_ROWS = (1, 2, 4, 8)
QAT_METHODS = ("kp", "hkp")  # where the space has QAT on or off (kpgen.train.qat, as `kpgen train/compress --qat`)
RATIOS = (2.0, 4.0, 8.0, 16.0, 32.0)
LR_RANGE = (3e-3, 5e-2)
STUDY = "tune"  # Ray Tune's study directory inside -o
SETTINGS_FILE = "search.json"
CALIBRATION_SAMPLES = 256  # the size pre-check calibrates the untrained model on this many training samples
TRIAL_SAMPLES = 1  # test sequences in a trial's firmware (enough to count one inference and check it)

SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1 << 20, "mib": 1 << 20, "mb": 1000_000}
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


def parse_size(text: str, option: str) -> int:
    """'32KiB' -> 32768 bytes ('K' and 'KiB' are 1024, 'KB' 1000; a plain number is bytes)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in SIZE_UNITS:
        raise KpgenError(f"{option} {escape(str(text))!r} is not a size; give bytes or a number with KiB or MiB, "
                         "e.g. 32KiB")
    value = int(float(m.group(1)) * SIZE_UNITS[unit])
    if value < 1:
        raise KpgenError(f"{option} {escape(str(text))} is not a positive size; give at least 1 byte, e.g. 32KiB")
    return value


def parse_seconds(text: str, option: str) -> float:
    """'5ms' -> 0.005 (units s, ms, us)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?)\s*([a-zµ]+)\s*", str(text).lower())
    if not m or m.group(2) not in TIME_UNITS or not float(m.group(1)) > 0:
        raise KpgenError(f"{option} {escape(str(text))!r} is not a positive time; give a number with s, ms or us, "
                         "e.g. 5ms")
    return float(m.group(1)) * TIME_UNITS[m.group(2)]


@dataclass(frozen=True)
class Settings:
    """One search: the task, the board, the budgets and how to run it (saved as search.json for --resume)."""

    dataset: str
    board: str
    out: str  # absolute
    source: str | None = None  # absolute path of --from, or None: train from scratch
    max_flash: int | None = None  # bytes: model data + kernels (fit estimate, library target)
    max_ram: int | None = None  # bytes: the model's arena
    max_instructions: int | None = None
    max_latency: float | None = None  # seconds, at clock_hz (estimated cycles)
    clock_hz: int | None = None
    trials: int = 20
    epochs: int = 20
    searcher: str = "random"
    workers: int = 0  # trials at once; 0: every CPU of this machine, or of the cluster attached to
    seed: int = 0
    timeout: float = 300.0  # per QEMU run


def board_clock(board) -> int | None:
    """The core clock board.toml gives: [flash] clock_hz, else its reset clock, else the UART's clock (the
    MPS2 FPGA images clock the core and the peripherals alike)."""
    for hz in (board.flash.clock_hz, board.flash.reset_clock_hz, board.uart.clock_hz if board.uart else None):
        if hz:
            return int(hz)
    return None


def check_settings(s: Settings) -> Settings:
    """Usage errors before anything starts: dataset, board, budgets, searcher; fills in the clock."""
    from kpgen.frontend import datasets
    from kpgen.target.boards import load_board

    if not datasets.is_known(s.dataset):
        raise KpgenError(f"unknown dataset {escape(s.dataset)!r}; known datasets: {', '.join(datasets.LOADERS)}, "
                         "or your data file (.npz or .csv, docs/byom.md)")
    board = load_board(s.board)
    if not board.emulated:
        raise KpgenError(f"board {board.name} is real hardware that QEMU does not emulate; the search counts "
                         "every model's instructions under QEMU, so search on an emulated board with the same "
                         "core (`kpgen boards` lists them)")
    if s.searcher not in ("random", "tpe"):
        raise KpgenError(f"--searcher {escape(s.searcher)!r} is not known; use random or tpe")
    if s.source is not None:
        from kpgen.train.compress import read_source

        src, _ = read_source(s.source)
        split = datasets.load(s.dataset, seed=s.seed)
        if split.num_features != src.input_size or split.num_classes > src.num_classes:
            raise KpgenError(f"{escape(s.source)}: the model takes {src.input_size} features and {src.num_classes} "
                             f"classes, dataset {s.dataset} has {split.num_features} and {split.num_classes}; pass "
                             "the --dataset it was trained on")
    clock = s.clock_hz or board_clock(board)
    if s.max_latency is not None and clock is None:
        raise KpgenError(f"board {board.name} gives no core clock in its board.toml, so --max-latency cannot "
                         "be turned into cycles; pass --clock-hz or use --max-instructions")
    return Settings(**{**asdict(s), "clock_hz": clock})


# ------------------------------------------------------------------------------------------- the space


def space(s: Settings) -> dict:
    """Ray Tune's search space: architecture and method from scratch, or method and ratio for --from."""
    from ray import tune

    common = {"lr": tune.loguniform(*LR_RANGE), "epochs": tune.choice(sorted({max(1, s.epochs // 2), s.epochs})),
              "qat": tune.choice([False, True])}  # read only where the method is in QAT_METHODS
    if s.source is not None:
        return {**common, "method": tune.choice(list(FROM_METHODS)), "ratio": tune.choice(list(RATIOS))}
    return {
        **common,
        "cell": tune.choice(list(CELLS)),
        "hidden": tune.choice(list(HIDDEN)),
        "layers": tune.choice(list(LAYERS)),
        "method": tune.choice(list(SCRATCH_METHODS)),
        "dense_rows": tune.choice(list(DENSE_ROWS)),
    }


def uses_qat(config: dict) -> bool:
    """Whether the trial adds a QAT phase: QAT on, and a method that has it (studies saved before QAT: off)."""
    return bool(config.get("qat")) and config["method"] in QAT_METHODS


def qat_epochs(epochs: int) -> int:
    """The QAT phase after `epochs` of float training: a quarter of them, at least 1, at most kpgen's default 5."""
    from kpgen.train.qat import QAT_EPOCHS

    return min(QAT_EPOCHS, max(1, epochs // 4))


def describe(config: dict, source: str | None) -> str:
    """'fastgrnn H 64 x1, hkp 4 dense rows +QAT' or 'kp x8 of model.pt': one trial's model in words."""
    qat = " +QAT" if uses_qat(config) else ""
    if source is not None:
        return f"{config['method']} x{config['ratio']:g} of {Path(source).name}{qat}"
    what = f"{config['cell']} H {config['hidden']} x{config['layers']}, {config['method']}"
    return what + (f" {config['dense_rows']} dense rows" if config["method"] == "hkp" else "") + qat


# ------------------------------------------------------------------------------------------- one trial


class Infeasible(Exception):
    """This point of the space cannot be built or does not fit the budgets (a result, not a crash)."""


def build_model(config: dict, s: Settings, split):
    """The untrained (or, with --from, compressed but not fine-tuned) torch model of a trial, and its method."""
    import torch

    from kpgen.train.nn import KPRNNClassifier
    from kpgen.train.plan import train_specs

    torch.manual_seed(s.seed)
    if s.source is not None:
        from kpgen.train.compress import build_compressed, read_source

        src, _ = read_source(s.source)
        try:
            return build_compressed(src, config["method"], float(config["ratio"]), s.seed), config["method"]
        except KpgenError as e:
            raise Infeasible(str(e)) from None
    method = config["method"]
    rows = None if method != "hkp" else config["dense_rows"]
    try:
        wx, wh = train_specs(config["cell"], split.num_features, config["hidden"], method, dense_rows=rows)
        model = KPRNNClassifier(config["cell"], split.num_features, config["hidden"], split.num_classes, wx.spec,
                                wh.spec, num_layers=config["layers"])
    except (KpgenError, ValueError, TypeError) as e:
        raise Infeasible(str(e)) from None
    return model, method


def measure_sizes(ckpt: dict, s: Settings, steps: int) -> dict:
    """Quantize a checkpoint dict; its sizes from the emitter's fit estimate (library target: model data and
    kernels in flash, the arena in RAM) and the quantized model."""
    from kpgen.codegen import fit
    from kpgen.frontend.load import checkpoint_to_ir
    from kpgen.quant.quantize import quantize_model
    from kpgen.target.boards import load_board

    model = checkpoint_to_ir(ckpt, "trial")
    q = quantize_model(model)
    est = fit.estimate(q, load_board(s.board), "lib", steps=steps)
    return {"params": int(model.params), "model_flash": est.model_flash, "flash": est.flash, "ram": est.ram, "_q": q}


def over_budget(m: dict, s: Settings) -> list[str]:
    """The budgets a trial's numbers break, in words ([] when it fits)."""
    out = []
    if s.max_flash is not None and m.get("flash") is not None and m["flash"] > s.max_flash:
        out.append(f"flash {m['flash']:,} > {s.max_flash:,} B")
    if s.max_ram is not None and m.get("ram") is not None and m["ram"] > s.max_ram:
        out.append(f"RAM {m['ram']:,} > {s.max_ram:,} B")
    if s.max_instructions is not None and m.get("instructions") is not None and m["instructions"] > s.max_instructions:
        out.append(f"instructions {m['instructions']:,} > {s.max_instructions:,}")
    if s.max_latency is not None and m.get("latency_ms") is not None and m["latency_ms"] > 1e3 * s.max_latency:
        out.append(f"estimated latency {m['latency_ms']:.3f} > {1e3 * s.max_latency:g} ms")
    return out


def count_on_qemu(ckpt_path: Path, s: Settings, work: Path, samples: int = TRIAL_SAMPLES) -> dict:
    """Emit, build and run a checkpoint under QEMU: bit-exact verdict, exact instructions, estimated cycles."""
    from kpgen.pipeline import emit_project, run_project

    project = work / "project"
    emit_project(ckpt_path, s.board, project, samples=samples, force=True)
    rep = run_project(project, timeout=s.timeout)
    cycles = rep.cycles.cycles if rep.cycles is not None else None
    return {
        "bit_exact": bool(rep.passed),
        "instructions": rep.instructions,
        "est_cycles": cycles,
        "latency_ms": (1e3 * cycles / s.clock_hz) if cycles is not None and s.clock_hz else None,
        "qemu_problem": rep.problem or ("" if rep.passed else "not bit-exact"),
    }


def run_trial(config: dict, settings: dict) -> None:
    """Ray Tune's function trainable: train one model, report float accuracy each epoch (for ASHA), then its
    int8 accuracy, sizes and exact instruction count with the checkpoint (the last report)."""
    import ray
    import torch
    from ray import tune

    from kpgen.reference import floatmodel, golden
    from kpgen.train.loop import accuracy, calibrate, fit, load_split, make_checkpoint, set_determinism

    s = Settings(**settings)
    t0 = time.perf_counter()
    cpus = int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1)) or 1
    set_determinism(s.seed, threads=max(1, cpus))
    base = {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "model": describe(config, s.source)}
    split, x_tr, y_tr, x_te, y_te = load_split(s.dataset, s.seed)
    epochs = int(config["epochs"])

    def final(metrics: dict, checkpoint=None) -> None:
        score = metrics.get("int8_accuracy") or 0.0
        problems = metrics.get("over_budget", "")
        fits = not problems and bool(metrics.get("bit_exact"))
        tune.report({**base, **metrics, "fits": fits, "score": score if fits else score - 1.0,
                     "seconds": time.perf_counter() - t0, "training_iteration_max": epochs}, checkpoint=checkpoint)

    try:
        model, method = build_model(config, s, split)
    except Infeasible as e:
        final({"status": "infeasible", "over_budget": escape(str(e))[:200]})
        return
    meta = {"dataset": s.dataset, "seq_len": split.seq_len, "epochs": epochs, "seed": s.seed,
            "torch_version": str(torch.__version__), "search": describe(config, s.source)}
    # Sizes depend on the architecture only: refuse a model over the flash or RAM budget before training it
    pre = measure_sizes(make_checkpoint(model, calibrate(model, x_tr[:CALIBRATION_SAMPLES]), meta, method), s,
                        split.seq_len)
    pre.pop("_q")
    problems = over_budget(pre, s)
    if problems:
        final({**pre, "status": "over budget", "over_budget": "; ".join(problems)})
        return

    pruner = None
    if method == "prune":
        from kpgen.train.compress import MagnitudePruner

        pruner = MagnitudePruner(model, 1.0 - 1.0 / float(config["ratio"]))
    per_epoch = math.ceil(len(x_tr) / 128)

    def after_step(step: int, total: int) -> None:
        if pruner is not None:
            pruner(step, total)
        if step % per_epoch == 0 and step < total:  # an epoch ended (the last one reports below)
            tune.report({**base, "score": accuracy(model, x_te, y_te), "status": "training"})
            model.train()

    from kpgen.frontend import datasets

    float_acc = fit(model, x_tr, y_tr, x_te, y_te, epochs=epochs, batch_size=128, lr=float(config["lr"]),
                    seed=s.seed, max_shift=datasets.MAX_SHIFT.get(s.dataset, 0), log=lambda msg: None,
                    after_step=after_step)
    if pruner is not None:
        pruner.prune_to(pruner.final)
        pruner.apply()
        float_acc = accuracy(model, x_te, y_te)
    if uses_qat(config):  # no reports in this phase: ASHA has judged the float epochs already
        from kpgen.train import qat

        meta["qat"] = qat.finetune(model, x_tr, y_tr, x_te, y_te, epochs=qat_epochs(epochs), batch_size=128,
                                   lr=float(config["lr"]) * qat.QAT_LR_FACTOR, seed=s.seed,
                                   max_shift=datasets.MAX_SHIFT.get(s.dataset, 0), method=method,
                                   log=lambda msg: None)
        float_acc = accuracy(model, x_te, y_te)
    meta["float_test_accuracy"] = float(float_acc)
    if s.source is not None:
        meta.update(method=method, ratio=float(config["ratio"]), compressed_from=Path(s.source).name)
    ckpt = make_checkpoint(model, calibrate(model, x_tr), meta, method)
    sizes = measure_sizes(ckpt, s, split.seq_len)
    q = sizes.pop("_q")
    trace = golden.run_model(q, golden.quantize_input(split.x_test, q.input_scale))
    metrics = {**sizes, "float_accuracy": float(float_acc),
               "int8_accuracy": floatmodel.accuracy(trace.logits, split.y_test)}
    from kpgen.train import save_checkpoint

    with tempfile.TemporaryDirectory(prefix="kpgen-trial-") as tmp:
        work = Path(tmp)
        (work / "ckpt").mkdir()
        save_checkpoint(ckpt, work / "ckpt" / "model.pt")
        try:
            metrics.update(count_on_qemu(work / "ckpt" / "model.pt", s, work))
        except KpgenError as e:  # the emitter refused it (e.g. the board's own memory): a result, not a crash
            final({**metrics, "status": "not emittable", "over_budget": escape(str(e))[:200]})
            return
        shutil.rmtree(work / "project", ignore_errors=True)
        problems = over_budget(metrics, s)
        if not metrics["bit_exact"]:
            problems.append(f"not bit-exact under QEMU ({metrics['qemu_problem']})")
        final({**metrics, "status": "done", "over_budget": "; ".join(problems)},
              checkpoint=tune.Checkpoint.from_directory(str(work / "ckpt")))


# ----------------------------------------------------------------------------------------- the study


@dataclass
class Trial:
    """One trial's row in trials.csv / pareto.csv."""

    trial_id: str
    model: str
    config: dict
    status: str
    node: str = ""
    float_accuracy: float | None = None
    int8_accuracy: float | None = None
    params: int | None = None
    model_flash: int | None = None
    flash: int | None = None
    ram: int | None = None
    instructions: int | None = None
    est_cycles: int | None = None
    latency_ms: float | None = None
    fits: bool = False
    over_budget: str = ""
    iterations: int = 0
    failures: int = 0
    error: str = ""
    checkpoint: str | None = None
    front: bool = False
    verified_instructions: int | None = None
    verified_bit_exact: str = ""
    seconds: float | None = None

    @property
    def point(self) -> tuple[float, int, int]:
        return (self.int8_accuracy or 0.0, self.instructions or 0, self.flash or 0)


def pareto_front(trials: Sequence[Trial]) -> list[Trial]:
    """The trials no other trial beats on accuracy (higher), instructions and flash (lower) at once, best
    accuracy first; among equal points the first trial stands for them."""

    def dominates(a: tuple, b: tuple) -> bool:
        return a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2] and a != b

    front: list[Trial] = []
    seen: set[tuple] = set()
    for t in trials:
        if t.point in seen or any(dominates(o.point, t.point) for o in trials):
            continue
        seen.add(t.point)
        front.append(t)
    return sorted(front, key=lambda t: (-t.point[0], t.point[1], t.point[2]))


def _trial_failures(path: str | None) -> tuple[int, str]:
    """How often Ray recorded a trial as failed (a retried crash leaves its error in error.txt), and the error's
    last line."""
    if not path:
        return 0, ""
    err = Path(path) / "error.txt"
    if not err.is_file():
        return 0, ""
    text = err.read_text(errors="replace")
    failures = max(1, len(re.findall(r"^Failure # \d+", text, flags=re.M)))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Failure #")]
    return failures, escape(lines[-1])[:200] if lines else ""


def collect(results, s: Settings) -> list[Trial]:
    """Ray Tune's ResultGrid as Trial rows (errored trials included, with their error)."""
    out = []
    for r in results:
        m = dict(r.metrics or {})
        config = {k: v for k, v in (r.config or {}).items()}
        failures, err_line = _trial_failures(str(r.path) if r.path else None)
        t = Trial(trial_id=str(m.get("trial_id") or Path(str(r.path)).name), model=describe(config, s.source)
                  if config else "?", config=config, status=str(m.get("status", "")), node=str(m.get("node", "")))
        for k in ("float_accuracy", "int8_accuracy", "params", "model_flash", "flash", "ram", "instructions",
                  "est_cycles", "latency_ms", "seconds"):
            setattr(t, k, m.get(k))
        t.fits = bool(m.get("fits"))
        t.over_budget = str(m.get("over_budget", ""))
        t.iterations = int(m.get("training_iteration", 0) or 0)
        t.failures = failures
        if r.error is not None:
            t.status = "error"
            t.error = escape(str(r.error).strip().splitlines()[-1] if str(r.error).strip() else repr(r.error))[:200]
        elif failures:
            t.error = f"failed {failures}x, retried: {err_line}"
        if t.status == "training":
            t.status = "stopped early (ASHA)"
        if r.checkpoint is not None and t.status == "done":
            t.checkpoint = str(Path(r.checkpoint.path) / "model.pt")
        out.append(t)
    return sorted(out, key=lambda t: t.trial_id)


def ray_env() -> None:
    """Quiet, local Ray: no usage stats, the old progress output off, no auth token (platform.md). Also used by
    `make reproduce` (kpgen.studies.reproduce)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")


def init_ray(address: str | None, workers: int, log_to_driver: bool = False) -> bool:
    """Attach to the cluster at address, or start one in this process with `workers` CPUs; True if we started it
    (then the caller shuts it down). log_to_driver: print the workers' output here (make reproduce's progress)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        m = re.fullmatch(r"\[?([^\]/]+?)\]?:([0-9]{1,5})", address)
        if m:  # a dead address makes ray.init wait for a minute: try the port first
            try:
                socket.create_connection((m.group(1), int(m.group(2))), timeout=5).close()
            except OSError as e:
                raise KpgenError(f"cannot attach to the Ray cluster at {escape(address)} ({e.strerror or e}); start "
                                 "it with `ray start --head` or drop --address to run on this machine") from None
        try:
            ray.init(address=address, log_to_driver=log_to_driver, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise KpgenError(f"cannot attach to the Ray cluster at {escape(address)} "
                             f"({escape(str(e).splitlines()[0])[:120]}); start it with `ray start --head` or drop "
                             "--address to run on this machine") from None
        return True
    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=log_to_driver,
             logging_level=logging.ERROR, object_store_memory=256 << 20)
    return True


def _tuner(s: Settings, trainable: Callable, resume: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    fn = tune.with_resources(tune.with_parameters(trainable, settings=asdict(s)), {"cpu": 1})
    study = Path(s.out) / STUDY
    if resume:
        return tune.Tuner.restore(str(study), trainable=fn, resume_unfinished=True, resume_errored=True)
    if s.searcher == "tpe":
        optuna_search = import_extra("ray.tune.search.optuna", "search", "kpgen search --searcher tpe")
        optuna = import_extra("optuna", "search", "kpgen search --searcher tpe")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        alg = optuna_search.OptunaSearch(sampler=optuna.samplers.TPESampler(seed=s.seed))
    else:
        from ray.tune.search import BasicVariantGenerator

        alg = BasicVariantGenerator(random_state=s.seed)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=s.epochs, grace_period=max(1, s.epochs // 3),
                              reduction_factor=2)
    return tune.Tuner(
        fn,
        param_space=space(s),
        tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=s.trials, search_alg=alg,
                                    scheduler=scheduler, max_concurrent_trials=s.workers, reuse_actors=True),
        run_config=tune.RunConfig(name=STUDY, storage_path=str(Path(s.out)), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )


@dataclass
class Summary:
    """What one search found."""

    settings: Settings
    trials: list[Trial]
    front: list[Trial]
    best: Trial | None
    seconds: float
    ray_start_seconds: float
    nodes: list[str] = field(default_factory=list)
    verify_seconds: float = 0.0  # the front's emit, build and QEMU runs with the full test vectors
    interrupted: bool = False  # Ctrl-C stopped the study before its end (then only the study is written)


def run_search(s: Settings, *, address: str | None = None, resume: bool = False,
               trainable: Callable | None = None, log: Callable[[str], None] = print) -> Summary:
    """Run (or with resume, continue) the study in s.out, verify the Pareto front under QEMU, write the outputs."""
    import_extra("ray.tune", "search", "kpgen search")
    out = Path(s.out)
    settings_path = out / SETTINGS_FILE
    if resume:
        if not settings_path.is_file() or not (out / STUDY).is_dir():
            raise KpgenError(f"{escape(str(out))} holds no search to resume (no {SETTINGS_FILE} and {STUDY}/); "
                             "run without --resume to start one")
        saved = json.loads(settings_path.read_text())
        s = Settings(**{**saved, "out": str(out.resolve()), "workers": s.workers or saved.get("workers", 0)})
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise KpgenError(f"{escape(str(out))} exists and is not empty; pass --resume to continue its search, or "
                             "choose another -o")
        s = check_settings(s)
        out.mkdir(parents=True, exist_ok=True)
        _write_atomic(settings_path, json.dumps(asdict(s), indent=2) + "\n")
    ray_env()
    import ray

    t0 = time.perf_counter()
    with _interruptible() as interrupted:  # before Ray starts: it saves and restores the handler it finds
        started = init_ray(address, s.workers or os.cpu_count() or 1)
        ray_start = time.perf_counter() - t0
        try:
            if not s.workers:
                s = replace(s, workers=max(1, int(ray.cluster_resources().get("CPU", 1))))
            log(f"searching {s.trials} trials on {int(ray.cluster_resources().get('CPU', 0))} CPUs "
                f"({len(ray.nodes())} node(s)), searcher {s.searcher}, ASHA; study in {escape(str(out / STUDY))}")
            results = _tuner(s, trainable or run_trial, resume).fit()
        finally:
            if started:
                ray.shutdown()
    if interrupted.is_set():  # Tune saved the study; the front of a partial study would mislead
        return Summary(s, [], [], None, time.perf_counter() - t0, ray_start, interrupted=True)
    trials = collect(results, s)
    return finish(s, trials, time.perf_counter() - t0, ray_start, log)


@contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """The first Ctrl-C (SIGINT) asks Tune to stop and save the study (its SIGUSR1 handler) and sets the event;
    a second one stops at once. Outside the main thread, where no handler can be set, nothing changes."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_sigint(signum: int, frame: object) -> None:
        if interrupted.is_set() or signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise KeyboardInterrupt  # a second Ctrl-C, or one before Tune runs: stop now
        interrupted.set()
        os.kill(os.getpid(), signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, old)


def finish(s: Settings, trials: list[Trial], seconds: float, ray_start: float,
           log: Callable[[str], None] = print) -> Summary:
    """Verify the Pareto front under QEMU (full test vectors), pick best.pt, write csv, png and report.md."""
    out = Path(s.out)
    feasible = [t for t in trials if t.fits and t.checkpoint]
    front = pareto_front(feasible)
    best = None
    t0 = time.perf_counter()
    for t in front:
        t.front = True
        with tempfile.TemporaryDirectory(prefix="kpgen-front-") as tmp:
            got = count_on_qemu(Path(t.checkpoint or ""), s, Path(tmp), samples=50)
        t.verified_instructions = got["instructions"]
        t.verified_bit_exact = "yes" if got["bit_exact"] else f"no ({got['qemu_problem']})"
        log(f"front: {t.model}: int8 {100 * (t.int8_accuracy or 0):.2f}%, {t.instructions:,} instructions, "
            f"flash {t.flash:,} B; bit-exact under QEMU: {t.verified_bit_exact}")
        if best is None and got["bit_exact"]:
            best = t
    nodes = sorted({t.node for t in trials if t.node})
    summary = Summary(s, trials, front, best, seconds, ray_start, nodes, time.perf_counter() - t0)
    _write_atomic(out / "trials.csv", _csv(trials))
    _write_atomic(out / "pareto.csv", _csv(front))
    _plot(summary, out / "pareto.png")
    if best is not None:
        partial = out / ".best.pt.tmp"
        shutil.copyfile(best.checkpoint or "", partial)
        os.replace(partial, out / "best.pt")
    _write_atomic(out / "report.md", report(summary))
    return summary


CSV_FIELDS = ("trial_id", "model", "status", "node", "float_accuracy", "int8_accuracy", "params", "model_flash",
              "flash", "ram", "instructions", "est_cycles", "latency_ms", "fits", "over_budget", "iterations",
              "failures", "error", "front", "verified_instructions", "verified_bit_exact", "seconds", "config")


def _csv(rows: Sequence[Trial]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for t in rows:
        d = asdict(t)
        d["config"] = json.dumps(t.config, sort_keys=True)
        w.writerow(["" if d[k] is None else d[k] for k in CSV_FIELDS])
    return buf.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _plot(summary: Summary, path: Path) -> None:
    """Accuracy against instructions and against flash: every measured trial, the front, the budgets."""
    import_extra("matplotlib", "studies", "kpgen search's plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary.settings
    measured = [t for t in summary.trials if t.int8_accuracy is not None and t.instructions]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    panels = ((axes[0], "instructions", "instructions per inference (exact, QEMU)", s.max_instructions),
              (axes[1], "flash", "flash: model data + kernels (bytes, fit estimate)", s.max_flash))
    for ax, key, label, budget in panels:
        for group, style in (([t for t in measured if not t.fits], dict(c="0.7", marker="x", label="over a budget")),
                             ([t for t in measured if t.fits and not t.front], dict(c="tab:blue", marker="o",
                                                                                    label="fits")),
                             ([t for t in measured if t.front], dict(c="tab:red", marker="*", s=120,
                                                                     label="Pareto front (verified)"))):
            if group:
                ax.scatter([getattr(t, key) for t in group], [100 * (t.int8_accuracy or 0) for t in group], **style)
        if summary.best is not None:
            b = summary.best
            ax.annotate("best.pt", (getattr(b, key), 100 * (b.int8_accuracy or 0)), textcoords="offset points",
                        xytext=(6, -12))
        if budget is not None:
            ax.axvline(budget, color="k", ls="--", lw=1, label="budget")
        if key == "instructions" and s.max_latency is not None and s.clock_hz:
            ax.set_title(f"latency budget {1e3 * s.max_latency:g} ms at {s.clock_hz / 1e6:g} MHz: estimated cycles",
                         fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"int8 accuracy on the {s.dataset} test split (%)")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"kpgen search: {s.dataset} on {s.board}, {len(summary.trials)} trials")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}%"


def _n(v: int | None) -> str:
    return "" if v is None else f"{v:,}"


def report(summary: Summary) -> str:
    """report.md: the budgets, what ran, the front and the chosen model."""
    from kpgen.tables import markdown_table

    s, trials = summary.settings, summary.trials
    budgets = [f"flash {s.max_flash:,} B" if s.max_flash else "", f"RAM {s.max_ram:,} B" if s.max_ram else "",
               f"{s.max_instructions:,} instructions" if s.max_instructions else "",
               f"{1e3 * s.max_latency:g} ms at {s.clock_hz / 1e6:g} MHz (estimated cycles)"
               if s.max_latency and s.clock_hz else ""]
    count = lambda pred: sum(1 for t in trials if pred(t))  # noqa: E731
    lines = [
        f"# kpgen search: {s.dataset} on {s.board}", "",
        f"Budgets: {', '.join(b for b in budgets if b) or 'none'}. "
        f"Space: {'compressions of ' + Path(s.source).name if s.source else 'cells, hidden sizes, layers, methods'}; "
        f"{s.trials} trials of at most {s.epochs} epochs, searcher {s.searcher}, ASHA early stopping, "
        f"{s.workers} concurrent trial(s), seed {s.seed}. Wall time {summary.seconds:.0f} s, "
        f"{60 * len(trials) / max(summary.seconds, 1e-9):.1f} trials per minute "
        f"(Ray start-up {summary.ray_start_seconds:.1f} s), then {summary.verify_seconds:.0f} s verifying the "
        f"front; nodes used: {len(summary.nodes)}.", "",
        f"Trials: {count(lambda t: t.status == 'done')} measured, {count(lambda t: t.fits)} within every budget, "
        f"{count(lambda t: t.status.startswith('stopped'))} stopped early by ASHA, "
        f"{count(lambda t: t.status in ('over budget', 'infeasible', 'not emittable'))} refused before training "
        f"or emitting, {count(lambda t: t.status == 'error')} failed twice (errors in trials.csv), "
        f"{count(lambda t: t.failures > 0 and t.status != 'error')} failed once and succeeded on retry.", "",
        "Accuracy: int8, from kpgen's integer reference on the dataset's test split. Flash: model data plus the "
        "kernels (the emitter's fit estimate, a lower bound; the linker is exact); RAM: the model's arena (stack "
        "and the application come on top). Instructions per inference: counted exactly under QEMU. Cycles and "
        "latency: estimates from kpgen's per-core cost model (docs/cycle-model.md).", "",
        "## Pareto front", "",
    ]
    rows = [[t.model, _pct(t.int8_accuracy), _pct(t.float_accuracy), _n(t.instructions), _n(t.flash), _n(t.ram),
             "" if t.latency_ms is None else f"{t.latency_ms:.3f}", t.verified_bit_exact, t.trial_id]
            for t in summary.front]
    lines += markdown_table(["model", "int8 acc", "float acc", "instructions", "flash B", "RAM B",
                             "est. latency ms", "bit-exact (50 samples, QEMU)", "trial"], rows, "lrrrrrrll")
    lines.append("")
    if summary.best is not None:
        b = summary.best
        lines += ["## best.pt", "",
                  f"{b.model}: int8 accuracy {_pct(b.int8_accuracy)}, {_n(b.instructions)} instructions per "
                  f"inference, flash {_n(b.flash)} B, RAM {_n(b.ram)} B (trial {b.trial_id}, config "
                  f"`{json.dumps(b.config, sort_keys=True)}`).", "",
                  f"Emit it: `kpgen emit best.pt --board {s.board}`.", ""]
    else:
        lines += ["No trial met every budget: loosen the budgets or search more trials.", ""]
    return "\n".join(lines)


def format_summary(summary: Summary) -> str:
    """What `kpgen search` prints at the end."""
    s = summary.settings
    done = sum(1 for t in summary.trials if t.status == "done")
    fits = sum(1 for t in summary.trials if t.fits)
    head = (f"{len(summary.trials)} trials ({done} measured, {fits} within budget) in {summary.seconds:.0f} s; "
            f"Pareto front: {len(summary.front)} model(s), verified bit-exact under QEMU")
    if summary.best is None:
        return head
    b = summary.best
    return (f"{head}\nbest: {b.model}: int8 accuracy {_pct(b.int8_accuracy)}, {_n(b.instructions)} instructions, "
            f"flash {_n(b.flash)} B, RAM {_n(b.ram)} B -> {escape(str(Path(s.out) / 'best.pt'))}")


def no_model_error(summary: Summary) -> KpgenError:
    s = summary.settings
    return KpgenError(f"none of the {len(summary.trials)} trials met the budgets (details in "
                      f"{escape(str(Path(s.out) / 'report.md'))}); loosen the budgets or search more --trials")


__all__ = ["Settings", "format_summary", "pareto_front", "parse_seconds", "parse_size", "run_search", "run_trial"]
