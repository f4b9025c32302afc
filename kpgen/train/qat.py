"""Quantization-aware training (QAT) that runs kpgen's own integer arithmetic in the forward pass.

Every forward pass quantizes the current float weights with kpgen's quantizer (kpgen.quant.quantize: the scales,
shifts and requantizers `kpgen emit` would choose; the input scale, cell fractions and state exponents from the
last calibration pass, re-run every epoch) and then computes, in float64 tensors holding integers, exactly what the
golden model computes: the int8 input, each matrix's mode-product chain with its int16 intermediates
(golden.kp_matrix_s8), the requantizers, the cell step (each cell's `qat_step` in kpgen.cells, the twin of its
golden step), the table activations, the state exponent and the head. Each rounding, saturation or table look-up
passes its gradient straight through: the backward pass is that of the float expression it stands for (the table
look-ups: the derivative of sigmoid or tanh). docs/quantization.md, "Quantization-aware training".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from kpgen import KpgenError, cells, ir
from kpgen.cells.base import GATE_FRAC
from kpgen.ir import KPMatrixQ, ModelQ, Requant, hkp_row_order
from kpgen.reference import golden
from kpgen.train.nn import KPRNNClassifier
from kpgen.train.nn.kp import KPLinear, kp_apply_n
from kpgen.train.nn.matrix import DenseLinear, HKPLinear, Matrix
from kpgen.train.nn.rnn import RecurrentLayer

F64 = torch.float64


class _Through(torch.autograd.Function):
    """Forward: the exact tensor as it is; backward: the whole gradient to the surrogate (straight through)."""

    @staticmethod
    def forward(ctx, surrogate: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
        return exact.to(surrogate.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def _through(exact: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """exact's value, bit for bit, with surrogate's gradient."""
    if not surrogate.requires_grad:
        return exact.to(surrogate.dtype)
    out = _Through.apply(surrogate, exact)
    assert isinstance(out, torch.Tensor)
    return out


def _np(v: torch.Tensor) -> np.ndarray:
    """An integer-valued tensor as int64 numpy (for the golden functions)."""
    return v.detach().to(torch.int64).cpu().numpy()


def _t(v: np.ndarray | int | float) -> torch.Tensor:
    """Integers from the golden model or the quantizer as a float64 tensor (exact below 2**53)."""
    return torch.as_tensor(np.asarray(v, dtype=np.float64))


class Ops:
    """The integer operations of the golden model on straight-through tensors; the cells' qat_step call them."""

    def __init__(self, qmodel: ModelQ):
        self.sigmoid_table = golden._i64(qmodel.sigmoid_table)
        self.tanh_table = golden._i64(qmodel.tanh_table)

    @staticmethod
    def rsr(v: torch.Tensor, s: int) -> torch.Tensor:
        """golden.rsr: (v + 2**(s-1)) >> s; exact in float64 for |v| < 2**52; gradient 2**-s."""
        if s <= 0:
            return v
        scale = 2.0**-s
        return _through(torch.floor((v.detach() + 2.0 ** (s - 1)) * scale), v * scale)

    @staticmethod
    def sat(v: torch.Tensor, bits: int) -> torch.Tensor:
        """golden.sat: clamp to the signed range of `bits` (no gradient where it clamps)."""
        return torch.clamp(v, -float(1 << (bits - 1)), float((1 << (bits - 1)) - 1))

    @staticmethod
    def relu(v: torch.Tensor) -> torch.Tensor:
        return torch.clamp(v, min=0.0)

    def sigmoid(self, z: torch.Tensor) -> torch.Tensor:
        """golden.kp_sigmoid_s16 forward (Q3.12 in, Q0.15 out); sigmoid's derivative backward."""
        exact = _t(golden.kp_sigmoid_s16(_np(z), self.sigmoid_table))
        return _through(exact, torch.sigmoid(z * (1.0 / 4096.0)) * 32768.0)

    def tanh(self, z: torch.Tensor) -> torch.Tensor:
        """golden.kp_tanh_s16 forward; tanh's derivative backward."""
        exact = _t(golden.kp_tanh_s16(_np(z), self.tanh_table))
        return _through(exact, torch.tanh(z * (1.0 / 4096.0)) * 32768.0)

    @staticmethod
    def bias(q: np.ndarray, p: torch.Tensor, frac: int = GATE_FRAC) -> torch.Tensor:
        """The quantizer's int32 bias q (round(p * 2**frac)) forward, p * 2**frac backward."""
        return _through(_t(q), p.to(F64) * float(2**frac))

    @staticmethod
    def scalar(q: int, raw: torch.Tensor) -> torch.Tensor:
        """The quantizer's Q0.15 scalar q (round(sigmoid(raw) * 32768)) forward, its float value backward."""
        return _through(_t(q), torch.sigmoid(raw.to(F64)) * 32768.0)

    @staticmethod
    def requant(acc: torch.Tensor, rq: Requant) -> torch.Tensor:
        """golden.kp_requantize forward, acc * mult / 2**shift backward."""
        exact = _t(golden.kp_requantize(_np(acc), rq.mult, rq.shift))
        return _through(exact, acc * (rq.mult / 2.0**rq.shift))


def _factors(mod: Matrix) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """A matrix module's float factors and HKP top rows, in the order of the quantizer's KPMatrixF (the loader
    has already refused what kpgen cannot emit: low rank, padded factors)."""
    if isinstance(mod, HKPLinear):
        return mod.kp.factor_list(), mod.dense_weight if mod.dense_rows > 0 else None
    if isinstance(mod, KPLinear):
        if mod.pad:
            raise ValueError("a padded Kronecker matrix has no integer kernel")
        return mod.factor_list(), None
    if isinstance(mod, DenseLinear):
        return [mod.weight], None
    raise ValueError(f"a {type(mod).__name__} matrix has no integer kernel")


def matrix(mod: Matrix, mq: KPMatrixQ, x: torch.Tensor) -> torch.Tensor:
    """golden.kp_matrix_s8(mq, x) forward (the int32 products of the int8 factors); backward, the float product
    of the factors over their scales, times 2**-(sum of the shifts) (HKP top rows: times 2**top_shift)."""
    exact = _t(golden.kp_matrix_s8(mq, _np(x).reshape(x.shape)))
    fs, top = _factors(mod)
    xs = x.to(F64)
    if mq.is_dense or len(fs) == 1:  # folded: A * b00 quantized with a_scale, B = [[1]]
        w = fs[0].to(F64) * (float(fs[1].detach()[0, 0]) if len(fs) == 2 else 1.0) / mq.a_scale
        sur = xs @ w.t()
    else:
        qf = [f.to(F64) / s for f, s in zip(fs, mq.scales, strict=True)]
        sur = kp_apply_n(qf, xs) * 2.0 ** -sum(mq.shifts)
        if top is not None:
            sur = torch.cat([xs @ (top.to(F64) / mq.top_scale).t() * 2.0**mq.top_shift, sur], dim=-1)
            if mq.top_groups > 1:
                sur = sur[..., torch.from_numpy(hkp_row_order(sur.shape[-1], mq.top_rows, mq.top_groups))]
    return _through(exact, sur)


def _check_model(net: KPRNNClassifier, qmodel: ModelQ) -> None:
    """Refuse what the QAT forward does not simulate (a cell without a qat_step, an MLP head, another pooling)."""
    what = None
    if cells.get(net.cell).qat_step is None:
        what = f"the {net.cell} cell"
    elif getattr(qmodel, "hidden", None) is not None:
        what = "an MLP head"
    elif getattr(qmodel, "pool", "last") not in ("last", "mean", "max"):
        what = f"the head's pooling {qmodel.pool!r}"
    if what is not None:
        raise KpgenError(f"--qat: {what} is not simulated by quantization-aware training; train without --qat")


class QATModel(nn.Module):
    """The network `net` run as kpgen's integer model (forward) with straight-through gradients (backward).

    forward(x) returns real-valued logits (int32 logits times the head's out_scale), so the usual losses apply;
    int_logits(x) the int32 logits themselves. calibrate(x) re-measures the ranges the quantizer reads.
    """

    def __init__(self, net: KPRNNClassifier, x_cal: torch.Tensor, method: str | None = None):
        super().__init__()
        self.net = net
        self.method = method
        self.calibration: dict = {}
        self._cached: tuple[int, ModelQ] | None = None
        self.calibrate(x_cal)

    def calibrate(self, x_cal: torch.Tensor) -> None:
        """The ranges of the float network on x_cal (kpgen.train.loop.calibrate), as its checkpoint will hold."""
        from kpgen.train.loop import calibrate

        was = self.net.training
        self.calibration = calibrate(self.net, x_cal)
        self.net.train(was)
        self._cached = None

    def quantized(self) -> ModelQ:
        """kpgen's integer model of the current weights (loader and quantizer, as `kpgen emit` reads the
        checkpoint); recomputed whenever a parameter has changed."""
        from kpgen.frontend import load
        from kpgen.quant import quantize
        from kpgen.train.loop import make_checkpoint

        version = sum(p._version for p in self.net.parameters())
        if self._cached is not None and self._cached[0] == version:
            return self._cached[1]
        ckpt = make_checkpoint(self.net, self.calibration, {"dataset": "qat"}, method=self.method)
        qmodel = quantize.quantize_model(load.checkpoint_to_ir(ckpt, "the model being trained with --qat"))
        _check_model(self.net, qmodel)
        self._cached = (version, qmodel)
        return qmodel

    def _direction(self, layer: RecurrentLayer, q: ir.LayerQ, seq: torch.Tensor, ops: Ops) -> torch.Tensor:
        """One direction over int8-valued seq (B, T, I) from zero state: int8-valued outputs (B, T, H)."""
        step = cells.of(q).qat_step
        assert step is not None  # _check_model
        bsz, steps = seq.shape[0], seq.shape[1]
        gx = ops.requant(matrix(layer.wx, q.wx, seq), q.rq_x)  # every step's input product at once
        h = seq.new_zeros(bsz, q.hidden_size)
        c = seq.new_zeros(bsz, q.hidden_size)
        outs = []
        for t in range(steps):
            gh = ops.requant(matrix(layer.wh, q.wh, h), q.rq_h)
            h, c = step(q, layer, gx[:, t], gh, h, c, ops)
            outs.append(h)
        return torch.stack(outs, dim=1)

    def int_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The int32 logits kpgen's integer model computes for float inputs x (B, T, I), as float64 values."""
        qmodel = self.quantized()
        ops = Ops(qmodel)
        seq = _t(golden.quantize_input(x.detach().cpu().numpy(), qmodel.input_scale))
        for k, q in enumerate(qmodel.layers):
            if isinstance(q, ir.BiLayerQ):
                fwd = self._direction(self.net.direction(k, 0), q.fwd, seq, ops)
                bwd = self._direction(self.net.direction(k, 1), q.bwd, seq.flip(1), ops)
                seq = torch.cat([fwd, bwd.flip(1)], dim=-1)
            else:
                seq = self._direction(self.net.direction(k), q, seq, ops)
        pool = getattr(qmodel, "pool", "last")
        if pool == "mean":
            steps = seq.shape[1]
            total = seq.sum(dim=1)
            feats = _through(torch.floor((2.0 * total.detach() + steps) / (2.0 * steps)), total / steps)
        elif pool == "max":
            feats = seq.max(dim=1).values
        elif isinstance(qmodel.layers[-1], ir.BiLayerQ):
            hs = qmodel.layers[-1].fwd.hidden_size
            feats = torch.cat([seq[:, -1, :hs], seq[:, 0, hs:]], dim=-1)
        else:
            feats = seq[:, -1]
        head = qmodel.head
        exact = _t(golden.kp_fc_s8(head.weight, head.bias, _np(feats)))
        w_scale = head.out_scale / ir.state_scale(qmodel.layers[-1])
        sur = (feats @ (self.net.head.weight.to(F64) / w_scale).t()) + self.net.head.bias.to(F64) / head.out_scale
        return _through(exact, sur)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.int_logits(x) * self.quantized().head.out_scale


@dataclass(frozen=True)
class Agreement:
    """The QAT forward pass against kpgen's golden model on the same samples."""

    samples: int
    disagreements: int  # samples whose predicted classes differ
    max_logit_diff: int  # largest |difference| of an int32 logit, in units of the logits
    qat_accuracy: float
    int8_accuracy: float

    @property
    def rate(self) -> float:
        return self.disagreements / max(1, self.samples)

    def line(self) -> str:
        return (f"QAT forward against the golden int8 model on {self.samples} test samples: predictions differ on "
                f"{self.disagreements} ({100 * self.rate:.2f}%), max logit difference {self.max_logit_diff} units; "
                f"int8 accuracy {self.int8_accuracy:.4f} (golden), {self.qat_accuracy:.4f} (QAT forward)")


@torch.no_grad()
def agreement(qat: QATModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> Agreement:
    """Run the QAT forward and golden.run_model (on the model the quantizer makes of the current weights and
    calibration, as `kpgen emit` would) over x; count the samples whose classes differ."""
    qat.eval()
    qmodel = qat.quantized()
    diff = worst = ok_q = ok_g = 0
    yn = y.numpy()
    for k in range(0, len(x), batch_size):
        xb = x[k : k + batch_size]
        mine = qat.int_logits(xb).numpy()
        gold = golden.run_model(qmodel, golden.quantize_input(xb.numpy(), qmodel.input_scale)).logits.astype(np.int64)
        pm, pg = golden.predict(mine), golden.predict(gold)
        diff += int(np.sum(pm != pg))
        worst = max(worst, int(np.max(np.abs(mine - gold), initial=0)))
        ok_q += int(np.sum(pm == yn[k : k + batch_size]))
        ok_g += int(np.sum(pg == yn[k : k + batch_size]))
    n = len(x)
    return Agreement(n, diff, worst, ok_q / max(1, n), ok_g / max(1, n))


QAT_EPOCHS = 5  # default length of the QAT phase (kpgen train / compress --qat-epochs)
QAT_LR_FACTOR = 0.1  # the QAT phase's peak learning rate, as a fraction of the float training's (--qat-lr)


def finetune(net: KPRNNClassifier, x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor, y_te: torch.Tensor,
             *, epochs: int, batch_size: int, lr: float, seed: int, max_shift: int = 0, method: str | None = None,
             after_step: Callable[[int, int], None] | None = None, teacher: nn.Module | None = None,
             temperature: float = 4.0, alpha: float = 0.5, log: Callable[[str], None] = print) -> dict:
    """Fine-tune net in place with the integer forward pass for `epochs` (kpgen.train.loop.fit's schedule),
    re-calibrating on x_tr after every epoch; returns a report (the meta entry 'qat' of the checkpoint) with the
    agreement of the QAT forward and the golden model on the test split, measured after a last calibration."""
    from kpgen.train.loop import accuracy, fit

    t0 = time.perf_counter()
    float_before = accuracy(net, x_te, y_te)
    qat = QATModel(net, x_tr, method)
    per_epoch = math.ceil(len(x_tr) / batch_size)
    before = agreement(qat, x_te, y_te)

    def step_hook(step: int, total: int) -> None:
        if after_step is not None:
            after_step(step, total)
        if step % per_epoch == 0:
            qat.calibrate(x_tr)

    log(f"QAT: {epochs} epochs at lr {lr:g}; int8 test accuracy before {before.int8_accuracy:.4f} "
        f"(float {float_before:.4f})")
    fit(qat, x_tr, y_tr, x_te, y_te, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, max_shift=max_shift,
        log=lambda s: log("QAT " + s), after_step=step_hook, teacher=teacher, temperature=temperature, alpha=alpha)
    qat.calibrate(x_tr)
    after = agreement(qat, x_te, y_te)
    float_after = accuracy(net, x_te, y_te)
    log(after.line())
    log(f"QAT: int8 test accuracy {before.int8_accuracy:.4f} -> {after.int8_accuracy:.4f}; float "
        f"{float_before:.4f} -> {float_after:.4f}; {time.perf_counter() - t0:.1f} s")
    return {"epochs": int(epochs), "lr": float(lr), "int8_accuracy_before": before.int8_accuracy,
            "float_accuracy_before": float_before, "float_accuracy": float_after, **asdict(after),
            "disagreement_rate": after.rate, "seconds": float(time.perf_counter() - t0)}  # fmt: skip
