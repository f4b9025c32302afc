"""Train a compressed RNN classifier, calibrate it on the training set, and package it as a kpgen checkpoint."""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import overload

import torch
from torch import nn

from kpgen import KpgenError
from kpgen.frontend import datasets
from kpgen.train.nn import KPRNNClassifier, LSTMTrace

CHECKPOINT_FORMAT = "kpgen-checkpoint"
CHECKPOINT_VERSION = 1

# The configuration of `make demo`: about 1.5 minutes on 2 CPU cores, 96.7% float and 96.8% int8 on the 1,000
# held-out digits (seed 0). Each matrix is compressed about 50x and 128x, with the planner's first choice of shapes
# for both (the fewest parameters + MACs at full rank; kpgen plan).
DEFAULT_CONFIG: dict = {
    "dataset": "mnist",
    "hidden_size": 128,
    "wx_factors": [[32, 2], [16, 14]],  # Wx 512x28  = (32x2) (x) (16x14):  14,336 -> 288 weights (50x)
    "wh_factors": [[32, 8], [16, 16]],  # Wh 512x128 = (32x8) (x) (16x16): 65,536 -> 512 weights (128x)
    "num_layers": 1,
    "epochs": 60,
    "batch_size": 128,
    "lr": 2e-2,  # peak; one epoch of linear warm-up, then cosine decay
    "seed": 0,
    "max_shift": 2,  # training images shifted by up to 2 rows and 2 columns (augmentation)
    "weight_decay": 0.0,
}


def set_determinism(seed: int, threads: int = 2) -> None:
    """Seed torch and fix the thread count so a seed gives the same model on this machine."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each (T, F) sample by up to max_shift steps and features, filling with zeros."""
    if max_shift <= 0:
        return x
    b, t, f = x.shape
    s = max_shift
    padded = nn.functional.pad(x, (s, s, s, s))
    dy = torch.randint(-s, s + 1, (b, 1), generator=gen)
    dx = torch.randint(-s, s + 1, (b, 1), generator=gen)
    rows = torch.arange(t) + s + dy  # (B, T)
    cols = torch.arange(f) + s + dx  # (B, F)
    return padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 2% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * p)))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of model on (x, y)."""
    model.eval()
    correct = 0
    for k in range(0, len(x), batch_size):
        correct += int((model(x[k : k + batch_size]).argmax(-1) == y[k : k + batch_size]).sum())
    return correct / max(1, len(x))


@torch.no_grad()
def calibrate(model: KPRNNClassifier, x: torch.Tensor, batch_size: int = 500) -> dict:
    """Ranges on x: max |input|, and per layer max |c_t| (LSTM; max |h_t| as state_absmax for the other
    cells) and max |z_t| (gate pre-activations) over every step (both directions when bidirectional)."""
    model.eval()
    state = [0.0] * model.num_layers
    gate = [0.0] * model.num_layers
    for k in range(0, len(x), batch_size):
        _, traces = model(x[k : k + batch_size], return_trace=True)
        for i, tr in enumerate(traces):
            st = tr.cells if isinstance(tr, LSTMTrace) else tr.hidden
            state[i] = max(state[i], float(st.abs().max()))
            gate[i] = max(gate[i], float(tr.gates.abs().max()))
    key = "cell_absmax" if model.cell == "lstm" else "state_absmax"
    return {"input_absmax": float(x.abs().max()), key: state, "gate_absmax": gate}


@overload
def plain(value: dict) -> dict: ...


@overload
def plain(value: object) -> object: ...


def plain(value: object) -> object:
    """value as weights_only-loadable data: tensors, str, int, float, bool, lists and dicts (subclasses unwrapped)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone().contiguous()
    for kind in (bool, int, float, str):  # bool before int; str subclasses such as TorchVersion become str
        if isinstance(value, kind):
            return kind(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars
        return plain(value.item())
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None:
        return None
    raise TypeError(f"checkpoint values must be tensors, str, int, float, bool, lists or dicts, not {type(value)}")


def is_v1_model(model: KPRNNClassifier) -> bool:
    """True if the model is what checkpoint format v1 describes: unidirectional LSTM, 2-factor KP matrices."""
    specs = model.wx_specs + model.wh_specs
    two_factor_kp = all(s["kind"] == "kp" and len(s["factors"]) == 2 and not s.get("pad") for s in specs)
    return model.cell == "lstm" and not model.bidirectional and two_factor_kp


def spec_method(model: KPRNNClassifier) -> str:
    """'kp', 'hkp', 'lowrank' or 'dense' if every matrix is of that kind, else 'mixed'."""
    kinds = {s["kind"] for s in model.wx_specs + model.wh_specs}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def make_checkpoint(model: KPRNNClassifier, calibration: dict, meta: dict, method: str | None = None) -> dict:
    """The plain-dict checkpoint documented in docs/checkpoint.md.

    A unidirectional LSTM with 2-factor KP matrices gives format v1 exactly. Anything else (other cells,
    bidirectional, k != 2 factors, HKP, low rank, dense, pruned) gives the variant with arch.method and per-layer
    matrix specs, which kpgen emit reads too; only low-rank and padded matrices are refused there (no kernel).
    method: what produced the model ('kp', 'hkp', 'prune', 'lowrank', 'small', 'dense'); default from the specs.
    """
    arch = {
        "cell": model.cell,
        "input_size": model.input_size,
        "hidden_size": model.hidden_size,
        "num_layers": model.num_layers,
        "num_classes": model.num_classes,
    }
    method = method or spec_method(model)
    if is_v1_model(model) and method == "kp":
        pairs = lambda specs: [s["factors"] for s in specs]  # noqa: E731
        arch["wx_factors"] = pairs(model.wx_specs)
        arch["wh_factors"] = pairs(model.wh_specs)
    else:
        arch["method"] = method
        arch["bidirectional"] = model.bidirectional
        arch["wx_specs"] = model.wx_specs
        arch["wh_specs"] = model.wh_specs
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": arch,
        "state_dict": dict(model.state_dict()),
        "calibration": calibration,
        "meta": meta,
    }
    return plain(ckpt)


def model_from_checkpoint(ckpt: dict) -> KPRNNClassifier:
    """The torch model a checkpoint dict describes (v1 or the training-side variant), weights loaded."""
    arch = ckpt["arch"]
    if "wx_specs" in arch:
        wx, wh = arch["wx_specs"], arch["wh_specs"]
    else:
        wx, wh = arch["wx_factors"], arch["wh_factors"]
    model = KPRNNClassifier(
        arch.get("cell", "lstm"),
        arch["input_size"],
        arch["hidden_size"],
        arch["num_classes"],
        wx,
        wh,
        num_layers=arch["num_layers"],
        bidirectional=arch.get("bidirectional", False),
    )
    model.load_state_dict(ckpt["state_dict"])
    return model


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """torch.save into a temporary file next to path, then rename: no half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:  # created with the umask's permissions, unlike mkstemp's 0600
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


DISTILL_TEMPERATURE = 4.0  # softens the teacher's and the student's logits (Hinton et al. 2015)
DISTILL_ALPHA = 0.5  # weight of the distillation term; 1 - alpha weighs the labels' cross-entropy


def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 temperature: float = DISTILL_TEMPERATURE, alpha: float = DISTILL_ALPHA) -> torch.Tensor:
    """Knowledge distillation: (1 - alpha) CE(labels) + alpha T^2 KL(softmax(teacher / T) || softmax(student / T));
    the T^2 keeps the soft term's gradients on the scale of the hard one's."""
    t = float(temperature)
    soft = nn.functional.kl_div(nn.functional.log_softmax(logits / t, dim=-1),
                                nn.functional.log_softmax(teacher_logits.to(logits.dtype) / t, dim=-1),
                                reduction="batchmean", log_target=True)
    return (1.0 - alpha) * nn.functional.cross_entropy(logits, labels) + alpha * t * t * soft


def fit(
    model: nn.Module,
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    x_te: torch.Tensor,
    y_te: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    max_shift: int = 0,
    weight_decay: float = 0.0,
    log: Callable[[str], None] = print,
    after_step: Callable[[int, int], None] | None = None,
    teacher: nn.Module | None = None,
    temperature: float = DISTILL_TEMPERATURE,
    alpha: float = DISTILL_ALPHA,
) -> float:
    """AdamW with one epoch of warm-up then cosine decay, gradient clipping at 1; returns the test accuracy.

    after_step(step, total_steps) runs after every optimizer step (magnitude pruning uses it). teacher: distil
    from it (distill_loss with temperature and alpha), on the same augmented batches.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    if teacher is not None:
        teacher.eval()
    gen = torch.Generator().manual_seed(seed)
    n = len(x_tr)
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        running = 0.0
        for k in range(0, n, batch_size):
            idx = order[k : k + batch_size]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, lr, warmup=per_epoch)
            xb = random_shift(x_tr[idx], max_shift, gen)
            if teacher is None:
                loss = loss_fn(model(xb), y_tr[idx])
            else:
                with torch.no_grad():
                    soft = teacher(xb)
                loss = distill_loss(model(xb), soft, y_tr[idx], temperature, alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            running += loss.item() * len(idx)
            step += 1
            if after_step is not None:
                after_step(step, total)
        if epoch == epochs - 1 or (epoch + 1) % 5 == 0:
            log(f"epoch {epoch + 1}/{epochs}  loss {running / n:.4f}  test acc {accuracy(model, x_te, y_te):.4f}")
    return accuracy(model, x_te, y_te)


def load_split(dataset: str, seed: int, max_train: int | None = None) -> tuple:
    """(split, x_train, y_train, x_test, y_test) as torch tensors; max_train keeps the first samples only."""
    split = datasets.load(dataset, seed=seed)
    x_tr, y_tr = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    if max_train is not None:
        x_tr, y_tr = x_tr[:max_train], y_tr[:max_train]
    return split, x_tr, y_tr, torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)


def train_model(
    dataset: str = DEFAULT_CONFIG["dataset"],
    hidden_size: int = DEFAULT_CONFIG["hidden_size"],
    wx_factors: Sequence = DEFAULT_CONFIG["wx_factors"],
    wh_factors: Sequence = DEFAULT_CONFIG["wh_factors"],
    num_layers: int = DEFAULT_CONFIG["num_layers"],
    epochs: int = DEFAULT_CONFIG["epochs"],
    batch_size: int = DEFAULT_CONFIG["batch_size"],
    lr: float = DEFAULT_CONFIG["lr"],
    seed: int = DEFAULT_CONFIG["seed"],
    max_shift: int = DEFAULT_CONFIG["max_shift"],
    weight_decay: float = DEFAULT_CONFIG["weight_decay"],
    max_train: int | None = None,
    log: Callable[[str], None] = print,
    cell: str = "lstm",
    bidirectional: bool = False,
    split: datasets.Split | None = None,
    qat_epochs: int = 0,
    qat_lr: float | None = None,
) -> dict:
    """Train a classifier on `dataset`, calibrate on its training set, return the checkpoint dict.
    split: the user's own data (kpgen.frontend.userdata.to_split) instead; `dataset` then names its file.

    wx_factors / wh_factors: one matrix spec (a factor list [[m1, n1], [m2, n2], ...], an HKP or low-rank dict,
    or 'dense'; kpgen.train.nn.matrix) or one per layer. cell: lstm, gru, fastrnn or fastgrnn. max_shift (random
    translation, in steps and features) applies to image datasets only, capped by datasets.MAX_SHIFT.
    max_train keeps only the first max_train training samples (for smoke tests). The checkpoint is format v1
    for a unidirectional 2-factor KP-LSTM, the training-side variant otherwise (docs/checkpoint.md).
    qat_epochs > 0 adds a quantization-aware phase (kpgen.train.qat) at qat_lr (default lr * QAT_LR_FACTOR).
    """
    t0 = time.perf_counter()
    set_determinism(seed)
    if split is None:
        split, x_tr, y_tr, x_te, y_te = load_split(dataset, seed, max_train)
    else:
        x_tr, y_tr = torch.from_numpy(split.x_train)[:max_train], torch.from_numpy(split.y_train)[:max_train]
        x_te, y_te = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)
    try:
        model = KPRNNClassifier(
            cell, split.num_features, hidden_size, split.num_classes, wx_factors, wh_factors,
            num_layers=num_layers, bidirectional=bidirectional,
        )
    except (ValueError, TypeError) as e:
        raise KpgenError(f"bad model shape: {e}") from None
    shift = min(max_shift, datasets.MAX_SHIFT.get(dataset, 0))
    test_acc = fit(
        model, x_tr, y_tr, x_te, y_te, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        max_shift=shift, weight_decay=weight_decay, log=log,
    )
    qat_report = None
    if qat_epochs > 0:
        from kpgen.train import qat

        qat_report = qat.finetune(model, x_tr, y_tr, x_te, y_te, epochs=qat_epochs, batch_size=batch_size,
                                  lr=qat_lr if qat_lr is not None else lr * qat.QAT_LR_FACTOR, seed=seed,
                                  max_shift=shift, log=log)
        test_acc = accuracy(model, x_te, y_te)
    calibration = calibrate(model, x_tr)
    meta = {
        "dataset": dataset,
        "seq_len": split.seq_len,
        "float_test_accuracy": float(test_acc),
        "epochs": int(epochs),
        "seed": int(seed),
        "train_seconds": float(time.perf_counter() - t0),
        "torch_version": str(torch.__version__),
    }
    if qat_report is not None:
        meta["qat"] = qat_report
    log(f"float test accuracy {test_acc:.4f} on {len(x_te)} held-out samples, {meta['train_seconds']:.1f} s")
    if qat_report is not None:
        log(qat.Agreement(**{k: qat_report[k] for k in qat.Agreement.__dataclass_fields__}).line())
    return make_checkpoint(model, calibration, meta)


def parameter_report(ckpt: dict) -> str:
    """One line: KP weights against dense weights for every matrix."""
    arch = ckpt["arch"]
    parts = []
    for i, (fx, fh) in enumerate(zip(arch["wx_factors"], arch["wh_factors"], strict=True)):
        for name, ((m1, n1), (m2, n2)) in (("wx", fx), ("wh", fh)):
            dense, kp = m1 * m2 * n1 * n2, m1 * n1 + m2 * n2
            parts.append(f"L{i}.{name} {m1 * m2}x{n1 * n2}: {dense} -> {kp} ({dense / kp:.0f}x)")
    return "; ".join(parts)


__all__ = [
    "DEFAULT_CONFIG",
    "accuracy",
    "calibrate",
    "fit",
    "load_split",
    "make_checkpoint",
    "model_from_checkpoint",
    "parameter_report",
    "save_checkpoint",
    "train_model",
]
