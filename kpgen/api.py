"""kpgen from Python: your own PyTorch model and data in, a verified int8 firmware out (docs/byom.md).

    import kpgen.api as kp
    ckpt = kp.from_torch(model, {"x": x_train, "y": y_train})        # calibrated, checked against model(x)
    small = kp.compress(ckpt, {"x": x_train, "y": y_train}, ratio=4, keep_dense=("wx",))
    kp.emit(small, "m4", "build/m4", test={"x": x_test, "y": y_test})
    print(kp.format_report(kp.run("build/m4")))

Data is a path (.npz or .csv, docs/byom.md), or a mapping with arrays x [samples, steps, features], y, and
optionally lengths and logits. Models are an nn.Module (its state dict is read, and its outputs on x become the
logits kpgen's reading is checked against), a state dict, a kpgen checkpoint dict, or a path to either.
Every mistake raises kpgen.KpgenError with one line saying what is wrong and what to do.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from kpgen import KpgenError

__all__ = ["compress", "emit", "format_report", "from_torch", "run"]

DataLike = str | os.PathLike | Mapping[str, Any]


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kpgen-api-") as d:
        yield Path(d)


def _data_path(data: DataLike | None, where: Path, stem: str, logits: np.ndarray | None = None) -> Path | None:
    """A data file for the pipeline: the path as given, or the arrays written as an npz in `where`."""
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        return Path(data)
    if not isinstance(data, Mapping) or "x" not in data:
        raise KpgenError(f"{stem} data is a {type(data).__name__}, not a path or a mapping with x (and y); "
                         "pass {'x': x, 'y': y} or an .npz path (docs/byom.md)")
    arrays = {k: np.asarray(_numpy(v)) for k, v in data.items() if k in ("x", "y", "lengths", "logits")}
    if logits is not None and "logits" not in arrays:
        arrays["logits"] = logits
    path = where / f"{stem}.npz"
    np.savez(path, allow_pickle=False, **arrays)
    return path


def _numpy(v: Any) -> Any:
    """torch tensors as numpy arrays (detached, on the CPU); anything else unchanged."""
    return v.detach().cpu().numpy() if hasattr(v, "detach") else v


def _module_logits(module: Any, data: DataLike) -> np.ndarray | None:
    """The module's outputs on data's x, when it runs on a float32 [N, T, F] batch and gives [N, C] (else None:
    the check then relies on logits in the data)."""
    import torch

    if not isinstance(data, Mapping):
        return None
    x = torch.as_tensor(np.asarray(_numpy(data["x"]), dtype=np.float32))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
    except Exception:  # a forward that wants another layout or extra arguments: no logits from it
        return None
    finally:
        module.train(was_training)
    out = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        return None
    return out.detach().double().numpy()


def _source_path(model: Any, where: Path, stem: str) -> Path:
    """A model file for the pipeline: the path as given, or the dict (state dict, checkpoint) saved in `where`."""
    import torch

    if isinstance(model, (str, os.PathLike)):
        return Path(model)
    if isinstance(model, torch.nn.Module):
        model = model.state_dict()
    if not isinstance(model, Mapping):
        raise KpgenError(f"the model is a {type(model).__name__}, not an nn.Module, a state dict, a kpgen "
                         "checkpoint or a path; pass one of those (docs/byom.md)")
    from kpgen.train.loop import plain

    path = where / f"{stem}.pt"
    torch.save(plain(dict(model)), path)
    return path


def from_torch(model: Any, data: DataLike, *, nonlinearity: str | None = None) -> dict:
    """A dense kpgen checkpoint dict of your nn.LSTM / nn.GRU / nn.RNN + Linear (an nn.Module or its state dict),
    its ranges measured on `data` by kpgen's float model. Its reading is checked against your model's outputs
    (the module's own on x, or data's logits): KpgenError if they disagree (e.g. a mean-pooled head).
    nonlinearity: an nn.RNN's ('tanh' or 'relu'), which a state dict does not record."""
    import torch

    from kpgen.frontend.load import read_raw
    from kpgen.train.compress import pick_candidate, torch_candidates
    from kpgen.train.loop import calibrate, make_checkpoint

    logits = _module_logits(model, data) if isinstance(model, torch.nn.Module) else None
    with _scratch() as tmp:
        src = _source_path(model, tmp, "model")
        raw = read_raw(src)
        if isinstance(raw, dict) and "format" in raw:
            raise KpgenError("the model is already a kpgen checkpoint; pass it to kpgen.api.compress or emit")
        if nonlinearity is not None:
            raw = {"state_dict": raw, "nonlinearity": nonlinearity}
        cands = torch_candidates(raw, "model")
        from kpgen.frontend.userdata import load_user_data

        path = _data_path(data, tmp, "data", logits)
        assert path is not None
        user = load_user_data(path, input_size=cands[0].input_size, num_classes=cands[0].num_classes,
                              need_labels=False)
        chosen = pick_candidate(cands, "model", user)
        cal = calibrate(chosen, torch.from_numpy(user.x))
    meta = {"seq_len": int(user.x.shape[1]), "data_file": user.source, "source": "torch state dict"}
    return make_checkpoint(chosen, cal, meta, method="dense")


def compress(source: Any, data: DataLike, *, method: str = "kp", ratio: float | None = None,
             test: DataLike | None = None, wx_factors: Sequence | str | None = None,
             wh_factors: Sequence | str | None = None, keep_dense: Sequence[str] = (),
             wx_ratio: float | None = None, wh_ratio: float | None = None, epochs: int = 20,
             batch_size: int = 128, lr: float = 2e-2, seed: int = 0, log=None) -> dict:
    """`kpgen compress` (docs/compression.md): the dense model in `source` (an nn.Module, a state dict, a kpgen
    checkpoint dict or a path) compressed with `method` to `ratio`, or per matrix (wx_factors / wh_factors as
    [[m1, n1], [m2, n2], ...] or 'dense', keep_dense=('wx',), wx_ratio / wh_ratio), fine-tuned on `data`,
    evaluated on `test` (else a seeded 20% of data). Returns the checkpoint dict (save it with torch.save)."""
    import torch

    from kpgen.train.compress import MatrixControl, compress_checkpoint

    for name in keep_dense:
        if name not in ("wx", "wh"):
            raise KpgenError(f"keep_dense holds {name!r}; give 'wx' and/or 'wh'")
    control = MatrixControl("dense" if "wx" in keep_dense else _shapes(wx_factors),
                            "dense" if "wh" in keep_dense else _shapes(wh_factors), wx_ratio, wh_ratio)
    logits = _module_logits(source, data) if isinstance(source, torch.nn.Module) else None
    with _scratch() as tmp:
        src = _source_path(source, tmp, "source")
        return compress_checkpoint(src, method, ratio, data=_data_path(data, tmp, "data", logits),
                                   test=_data_path(test, tmp, "test"), control=control, epochs=epochs,
                                   batch_size=batch_size, lr=lr, seed=seed, log=log or (lambda msg: None))


def _shapes(value: Sequence | str | None) -> list | str | None:
    if value is None or value == "dense":
        return value
    if isinstance(value, str):
        from kpgen.train.plan import parse_shapes

        try:
            return parse_shapes(value)
        except ValueError as e:
            raise KpgenError(str(e)) from None
    return [[int(f[0]), int(f[1])] for f in value]


def emit(model: Any, board: str, out: str | os.PathLike, *, data: DataLike | None = None,
         test: DataLike | None = None, name: str = "model", samples: int = 50, target: str = "firmware",
         force: bool = False, console: str | None = None, act_table: str | None = None,
         max_steps: int | None = None, bias_bits: str = "auto") -> dict:
    """`kpgen emit`: the C project for `board` in `out`, from a kpgen checkpoint (dict or path) or a state dict /
    nn.Module with `data` to calibrate it; test vectors and accuracy from `test` (else data, else the
    checkpoint's dataset). act_table, max_steps and bias_bits ("auto", "16" or "32") are `kpgen emit`'s
    --act-table, --max-steps and --bias-bits. Returns the manifest (kpgen.json)."""
    import torch

    from kpgen.pipeline import emit_project

    module = isinstance(model, torch.nn.Module)
    logits = _module_logits(model, data) if module and data is not None else None
    test_logits = _module_logits(model, test) if module and test is not None else None
    with _scratch() as tmp:
        src = _source_path(model, tmp, "model")
        return emit_project(src, board, Path(out), name=name, samples=samples, force=force, target=target,
                            console=console, data_file=_data_path(data, tmp, "data", logits),
                            test_file=_data_path(test, tmp, "test", test_logits), act_table=act_table,
                            max_steps=max_steps, bias_bits=str(bias_bits))


def run(project: str | os.PathLike, *, timeout: float = 300.0, profile: bool = True):
    """`kpgen run`: build the project, run it under QEMU, check every test vector bit for bit and count one
    inference's instructions. Returns a kpgen.pipeline.RunReport (.passed, .instructions, .manifest ...)."""
    from kpgen.pipeline import run_project

    return run_project(Path(project), timeout=timeout, profile=profile)


def format_report(report) -> str:
    """The text `kpgen run` prints for a RunReport."""
    from kpgen.target.report import format_report as fmt

    return fmt(report)
