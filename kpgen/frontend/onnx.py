"""Read an ONNX recurrent classifier (LSTM, GRU or RNN ops, then a head) into the float IR (docs/onnx.md).

The graph is walked along its one data path, from the input to the output: layout ops (Transpose, Reshape,
Squeeze) move named axes (batch B, time T, direction D, units H, features F); each LSTM / GRU / RNN op becomes a
layer; the head is read from what follows the last one: a Gather or Slice of the last step, or a ReduceMean or
ReduceMax over time, then Gemm (or MatMul + Add), optionally ReLU and a second Gemm (an MLP head), optionally a
Softmax (dropped: it does not change the class). Anything else is refused in one line naming the node, so that a
graph is never read as a different model. The file is read with onnx.load (protobuf data, no code), its size
and every declared tensor size checked first. An ONNX file has no calibration: the ranges come from the user's
data, and when the data has logits, kpgen's float reading must reproduce them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from kpgen import KpgenError, escape
from kpgen.cells.gru import GRULayerF
from kpgen.cells.lstm import LSTMLayerF
from kpgen.cells.rnn import RNNLayerF
from kpgen.frontend.gates import layer_from_gates
from kpgen.ir import BiLayerF, DenseF, ModelF

DOC = "docs/onnx.md"
MAX_ONNX_BYTES = 1 << 29  # the file (512 MiB), as load.MAX_CHECKPOINT_BYTES
MAX_TENSOR_ELEMENTS = 1 << 25  # all initializers and constants together, as their dims declare them
MAX_HIDDEN = 1 << 14  # hidden_size of a recurrent op: far beyond any microcontroller model
RECURRENT = ("LSTM", "GRU", "RNN")
GLUE = ("Shape", "Constant", "ConstantOfShape", "Concat", "Unsqueeze", "Gather", "Expand", "Cast", "Identity",
        "Squeeze", "Slice", "Reshape")  # ops that may also compute shapes and zero initial states
DATA_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Gather", "Slice", "ReduceMean", "ReduceMax", "Gemm",
            "MatMul", "Add", "Relu", "Softmax", "LogSoftmax", "Identity", "Dropout", "Cast", "Flatten", *RECURRENT)
KNOWN_OPS = frozenset(GLUE + DATA_OPS)
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
GATE_ORDER = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2), "RNN": (0,)}  # ONNX iofc -> ifgo; zrh -> rzn
# the fixes of the three families of refusals (docs/errors.md)
UNSUPPORTED_FIX = "kpgen reads recurrent layers and a Linear or MLP head on the last step, mean or max (docs/onnx.md)"
CELL_FIX = "export the layer with the cell's defaults (kpgen's LSTM, GRU and RNN cells are PyTorch's: docs/onnx.md)"
LAYOUT_FIX = "export the model again: kpgen reads the graphs torch.onnx.export and tf2onnx write for a classifier"
BIG = 2**31 - 1  # a Slice end at or beyond this (INT32_MAX, INT64_MAX) means "to the end"


def _fail(path: str, problem: str, fix: str) -> NoReturn:
    raise KpgenError(" ".join(f"{path}: {problem}; {fix}".split()))


def _node_name(node) -> str:
    """How a message names a node: its name (escaped, short) and op type."""
    name = escape(str(node.name))[:60] if node.name else "(unnamed)"
    return f"node {name} ({escape(str(node.op_type))[:30]})"


@dataclass
class _Value:
    """A tensor on the data path: its named axes; sizes are known for D, H and F."""

    axes: tuple[str, ...]
    sizes: dict[str, int] = field(default_factory=dict)


@dataclass
class _Reading:
    """What the walk has read so far."""

    layers: list[Any] = field(default_factory=list)  # float layers of the cells (LSTMLayerF, ..., BiLayerF)
    pool: str | None = None
    linears: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    relu_after: list[int] = field(default_factory=list)  # indices of linears followed by a ReLU
    softmax: bool = False


class _Graph:
    """The ONNX graph with its constants resolved, and the checks shared by the walk."""

    def __init__(self, path: str, model) -> None:
        from onnx import numpy_helper

        self.path = path
        g = model.graph
        self.graph = g
        self.consts: dict[str, np.ndarray] = {}
        self.external_bytes = 0
        declared = 0
        for t in g.initializer:
            declared += self._check_tensor(t, f"initializer {escape(t.name)[:60]}")
            self.consts[t.name] = numpy_helper.to_array(t)
        for node in g.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value" and a.HasField("t"):
                        declared += self._check_tensor(a.t, _node_name(node))
            if declared > MAX_TENSOR_ELEMENTS:
                self.fail(f"its tensors declare more than {MAX_TENSOR_ELEMENTS:,} elements",
                          "this is not a model that fits a microcontroller: check the file")
        loops = [n for n in g.node if n.op_type in ("Loop", "Scan")]
        if loops:
            self.fail(f"{_node_name(loops[0])} runs the recurrence as a loop, not as an LSTM, GRU or RNN op",
                      "export a model whose recurrent layer the exporter writes as one op (torch.onnx.export of "
                      "nn.LSTM / nn.GRU / nn.RNN; tf2onnx fuses Keras LSTM layers)")
        if not any(n.op_type in RECURRENT for n in g.node) and any(n.op_type in ("Tanh", "Sigmoid") for n in g.node):
            self.fail("the graph has no LSTM, GRU or RNN op, only their arithmetic (an unrolled loop)",
                      "export with torch.onnx.export(model, (x,), path, dynamo=False), which writes the RNN op")
        for node in g.node:
            if node.op_type not in KNOWN_OPS:
                self.fail(f"{_node_name(node)} is an op kpgen does not read",
                          "kpgen reads LSTM, GRU and RNN ops with a last-step, mean or max head, Linear layers and "
                          f"ReLU ({DOC})")
            if node.domain not in ("", "ai.onnx"):
                self.fail(f"{_node_name(node)} is in the custom domain {escape(node.domain)[:40]}",
                          "export with standard ONNX ops")
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        for n in g.node:
            if n.op_type == "Constant":
                self._constant_node(n)

    def fail(self, problem: str, fix: str) -> NoReturn:
        _fail(self.path, problem, fix)

    def unsupported(self, where: str, what: str) -> NoReturn:
        """A graph whose structure is not a classifier kpgen reads (docs/onnx.md)."""
        self.fail(f"{where} {what}", UNSUPPORTED_FIX)

    def unsupported_cell(self, where: str, what: str) -> NoReturn:
        """A recurrent op with an option kpgen's cells do not have."""
        self.fail(f"{where} {what}", CELL_FIX)

    def layout_error(self, where: str, what: str) -> NoReturn:
        """A node whose shapes or axes are not the layout an exporter writes for a classifier kpgen reads."""
        self.fail(f"{where} {what}", LAYOUT_FIX)

    def _check_tensor(self, t, where: str) -> int:
        """Declared elements of a TensorProto; refuses external data and dims that do not match the data."""
        from onnx import TensorProto

        dims = [int(d) for d in t.dims]
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
            self._read_external(t, where, dims)
        if any(d < 0 for d in dims):
            self.layout_error(where, f"declares negative dimensions {dims}")
        n = math.prod(dims)
        if n > MAX_TENSOR_ELEMENTS:
            self.fail(f"{where} declares {n:,} elements, more than kpgen handles ({MAX_TENSOR_ELEMENTS:,})",
                      "this is not a model that fits a microcontroller: check the file")
        if t.raw_data:
            width = {TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.INT64: 8, TensorProto.INT32: 4,
                     TensorProto.FLOAT16: 2, TensorProto.BOOL: 1, TensorProto.INT8: 1, TensorProto.UINT8: 1}
            w = width.get(t.data_type)
            if w is None or len(t.raw_data) != w * n:
                self.fail(f"{where} holds {len(t.raw_data)} bytes for dims {dims}",
                          "the file is damaged: export it again")
        return n

    def _read_external(self, t, where: str, dims: list[int]) -> None:
        """Fill t.raw_data from its external data file: a plain file beside the model (a bare name, no directory,
        no link), the declared range inside it; torch.onnx.export writes the weights to <model>.onnx.data."""
        from onnx import TensorProto

        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        fix = "keep the weights in the model file or in a data file beside it (onnx.save(model, path))"
        if not loc or "/" in loc or "\\" in loc or loc in (".", "..") or Path(loc).is_absolute():
            self.fail(f"{where} refers to external data at {escape(loc)[:60]!r}, not a file beside the model", fix)
        f = Path(self.path).parent / loc
        if f.is_symlink() or not f.is_file():
            self.fail(f"{where} refers to external data {escape(loc)[:60]!r}, which is not a regular file beside "
                      "the model", fix)
        try:
            offset, length = int(info.get("offset", "0")), int(info.get("length", "-1"))
        except ValueError:
            self.layout_error(where, "has a malformed external data offset or length")
        width = {TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.INT64: 8, TensorProto.INT32: 4,
                 TensorProto.FLOAT16: 2}.get(t.data_type, 0)
        want = width * math.prod(dims)
        size = f.stat().st_size
        if length < 0:
            length = size - offset
        self.external_bytes += max(length, 0)
        if width == 0 or offset < 0 or length != want or offset + length > size or \
                self.external_bytes > MAX_ONNX_BYTES:
            self.fail(f"{where} declares {want:,} bytes at offset {offset:,} of {escape(loc)[:60]!r} "
                      f"({size:,} bytes, type {t.data_type})", "the file is damaged or incomplete: export it again")
        with open(f, "rb") as fh:
            fh.seek(offset)
            t.raw_data = fh.read(length)
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT

    def _constant_node(self, n) -> None:
        from onnx import helper, numpy_helper

        for a in n.attribute:
            if a.name == "value" and a.HasField("t"):
                self.consts[n.output[0]] = numpy_helper.to_array(a.t)
            elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                self.consts[n.output[0]] = np.asarray(helper.get_attribute_value(a))
        if n.output[0] not in self.consts:
            self.layout_error(_node_name(n), "has no tensor value kpgen reads")

    def const(self, name: str, what: str, node) -> np.ndarray:
        """A tensor known without running the model: an initializer, a Constant, or simple ops of constants."""
        v = self._fold(name, 0)
        if v is None:
            self.fail(f"{_node_name(node)}: its {what} is computed at run time", "export with fixed shapes and "
                      "weights (torch.onnx.export of the model in eval mode)")
        return v

    def _fold(self, name: str, depth: int) -> np.ndarray | None:
        if name in self.consts:
            return self.consts[name]
        n = self.producer.get(name)
        if n is None or depth > 20:
            return None
        ins = [self._fold(i, depth + 1) if i else None for i in n.input]
        try:
            if n.op_type in ("Identity", "Cast") and ins[0] is not None:
                return ins[0]
            if n.op_type == "Unsqueeze" and ins[0] is not None:
                axes = self._axes(n, ins)
                return ins[0].reshape([*ins[0].shape, *([1] * len(axes))]) if ins[0].ndim == 0 else None
            if n.op_type == "Concat" and all(v is not None for v in ins):
                return np.concatenate([np.atleast_1d(v) for v in ins if v is not None], axis=self.attr(n, "axis", 0))
        except ValueError:
            return None
        return None

    def _axes(self, n, ins: list) -> list[int]:
        axes = self.attr(n, "axes", None)
        if axes is None and len(ins) > 1 and ins[1] is not None:
            axes = [int(v) for v in np.atleast_1d(ins[1])]
        return list(axes or [])

    @staticmethod
    def attr(node, name: str, default):
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                v = helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    def is_zero(self, name: str, depth: int = 0) -> bool:
        """True when a tensor is all zeros whatever the input: a zero constant, or Expand / ConstantOfShape of one."""
        if name in self.consts:
            return not np.any(self.consts[name])
        n = self.producer.get(name)
        if n is None or depth > 20:
            return False
        if n.op_type == "ConstantOfShape":
            v = self.attr(n, "value", None)
            return v is None or not np.any(_tensor(v))
        if n.op_type in ("Expand", "Identity", "Cast", "Unsqueeze", "Reshape", "Squeeze"):
            return self.is_zero(n.input[0], depth + 1)
        return False

    def data_consumers(self, name: str) -> list:
        """Nodes reading a data-path tensor's values (Shape reads only its shape)."""
        return [n for n in self.consumers.get(name, []) if n.op_type != "Shape"]


def _tensor(t) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(t)


def _load(path: str):
    """onnx.load of a bounded file, without external data; one line for every damaged or foreign file."""
    from kpgen.extras import import_extra

    onnx = import_extra("onnx", "onnx", "reading ONNX models")
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    p = Path(path)
    if not p.is_file():
        _fail(path, "no such file" if not p.exists() else "is not a regular file", "check the path")
    size = p.stat().st_size
    if size == 0:
        _fail(path, "is empty (0 bytes)", "export the model again")
    if size > MAX_ONNX_BYTES:
        _fail(path, f"is {size:,} bytes, more than kpgen reads ({MAX_ONNX_BYTES:,})",
              "this is not a model that fits a microcontroller: check the file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError, TypeError) as e:
        _fail(path, f"is not an ONNX model, or is truncated or corrupt ({type(e).__name__})",
              "export it again with torch.onnx.export or tf2onnx")
    if not model.HasField("graph") or not model.graph.node:
        _fail(path, "holds no ONNX graph", "export it again with torch.onnx.export or tf2onnx")
    return model


def _blocks(m: np.ndarray, order: tuple[int, ...], hs: int) -> np.ndarray:
    """Rows of a gate-stacked matrix or vector reordered from ONNX's gate order to kpgen's."""
    return np.concatenate([m[k * hs : (k + 1) * hs] for k in order], axis=0)


def _recurrent_layer(g: _Graph, node, x: _Value) -> tuple[Any, int, int]:
    """One LSTM / GRU / RNN op as a float layer (BiLayerF when bidirectional): (layer, directions, layout)."""
    op = node.op_type
    where = _node_name(node)
    hs = g.attr(node, "hidden_size", None)
    if not (isinstance(hs, int) and 0 < hs <= MAX_HIDDEN):
        g.fail(f"{where} has hidden_size {escape(str(hs))[:20]}", f"give a hidden_size from 1 to {MAX_HIDDEN}")
    direction = g.attr(node, "direction", "forward")
    if direction not in ("forward", "bidirectional"):
        g.unsupported_cell(where, f"runs in direction {escape(str(direction))[:20]}")
    dirs = 2 if direction == "bidirectional" else 1
    layout = g.attr(node, "layout", 0)
    if g.attr(node, "clip", None) is not None:
        g.unsupported_cell(where, "clips its cell input")
    if g.attr(node, "activation_alpha", None) or g.attr(node, "activation_beta", None):
        g.unsupported_cell(where, "has activation parameters")
    acts = g.attr(node, "activations", None)
    relu = False
    if acts is not None:
        acts = [a.decode() if isinstance(a, bytes) else str(a) for a in acts]
        if op == "RNN" and acts in (["Relu"] * dirs, ["Relu"]):
            relu = True
        elif acts not in (DEFAULT_ACTIVATIONS[op] * dirs, DEFAULT_ACTIVATIONS[op]):
            g.unsupported_cell(where, f"uses activations {', '.join(escape(a)[:12] for a in acts)}")
    if op == "LSTM" and g.attr(node, "input_forget", 0):
        g.unsupported_cell(where, "couples the input and forget gates (input_forget)")
    if op == "GRU" and g.attr(node, "linear_before_reset", 0) != 1:
        g.unsupported_cell(where, "has linear_before_reset 0 (the reset gate before the recurrent product)")
    ins = list(node.input) + [""] * (8 - len(node.input))
    w = g.const(ins[1], "W", node).astype(np.float64)
    r = g.const(ins[2], "R", node).astype(np.float64)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    feats = x.sizes.get("F")
    if w.shape[:2] != (dirs, gates * hs) or w.ndim != 3 or (feats is not None and w.shape[2] != feats):
        g.layout_error(where, f"has W of shape {w.shape}, not ({dirs}, {gates * hs}, input size)")
    if r.shape != (dirs, gates * hs, hs):
        g.layout_error(where, f"has R of shape {r.shape}, not ({dirs}, {gates * hs}, {hs})")
    b = g.const(ins[3], "B", node).astype(np.float64) if ins[3] else np.zeros((dirs, 2 * gates * hs))
    if b.shape != (dirs, 2 * gates * hs):
        g.layout_error(where, f"has B of shape {b.shape}, not ({dirs}, {2 * gates * hs})")
    if ins[4]:
        g.unsupported_cell(where, "takes sequence_lens (sequences of different lengths)")
    for k, what in ((5, "initial hidden state"), (6, "initial cell state")):
        if ins[k] and not g.is_zero(ins[k]):
            g.unsupported_cell(where, f"starts from a non-zero {what}")
    if ins[7]:
        p = g.const(ins[7], "peepholes", node)
        if np.any(p):
            g.unsupported_cell(where, "has peephole weights")
    for name, arr in (("W", w), ("R", r), ("B", b)):
        if not np.all(np.isfinite(arr)):
            g.fail(f"{where} has NaN or infinite values in {name}", "retrain the model or fix the weights")
    order = GATE_ORDER[op]
    subs: list[LSTMLayerF | GRULayerF | RNNLayerF] = []
    for d in range(dirs):
        wx, wh = _blocks(w[d], order, hs), _blocks(r[d], order, hs)
        bx, bh = _blocks(b[d, : gates * hs], order, hs), _blocks(b[d, gates * hs :], order, hs)
        size = int(w.shape[2])
        subs.append(layer_from_gates("ReluRNN" if op == "RNN" and relu else op, size, hs, wx, wh, bx, bh))
    layer = BiLayerF(subs[0], subs[1]) if dirs == 2 else subs[0]
    return layer, dirs, layout


def _walk(g: _Graph, model_input: str) -> tuple[_Reading, int]:
    """Follow the one data path from the input to the output; returns the reading and the input size."""
    read = _Reading()
    outputs = [o.name for o in g.graph.output]
    if len(outputs) != 1:
        g.fail(f"the graph has {len(outputs)} outputs", "export a model with one output (its logits)")
    first = g.data_consumers(model_input)
    time_major = len(first) == 1 and first[0].op_type in RECURRENT and g.attr(first[0], "layout", 0) == 0
    val = _Value(("T", "B", "F") if time_major else ("B", "T", "F"), {})
    input_size = 0
    cur = model_input
    stage = "sequence"  # -> "features" (after the pool) -> "linear" (after a Linear) -> "done" (after Softmax)
    for _ in range(10000):
        if cur == outputs[0] and not g.data_consumers(cur):
            break
        users = g.data_consumers(cur)
        if len(users) != 1 or cur == outputs[0]:
            names = ", ".join(_node_name(n) for n in users[:3]) or "nothing"
            g.unsupported(f"the value {escape(cur)[:40]}",
                          f"has more than one use or none ({names}): not one path from the input to the output")
        node = users[0]
        op, where = node.op_type, _node_name(node)
        if node.input[0] != cur and op not in ("Add", "MatMul"):
            g.unsupported(where, "reads the data path in an unexpected input")
        if stage == "done":
            g.unsupported(where, "follows the Softmax")
        if op in RECURRENT:
            if stage != "sequence":
                g.unsupported(where, "follows the head")
            layout = g.attr(node, "layout", 0)
            want = ("T", "B", "F") if layout == 0 else ("B", "T", "F")
            if val.axes != want:
                g.layout_error(where, f"reads axes {val.axes} where it expects {want}")
            layer, dirs, layout = _recurrent_layer(g, node, val)
            if not read.layers:
                input_size = layer.input_size
            read.layers.append(layer)
            used = [i for i, o in enumerate(node.output) if o and (g.data_consumers(o) or o in outputs)]
            if len(used) != 1:
                g.unsupported(where, f"has {len(used)} of its outputs in use, not either Y or Y_h")
            hs = layer.hidden_size
            if used[0] == 0:
                y_axes = ("T", "D", "B", "H") if layout == 0 else ("B", "T", "D", "H")
                val = _Value(y_axes, {"D": dirs, "H": hs})
            elif used[0] == 1:  # the final hidden states: [forward h_T, backward h after the whole sequence]
                val = _Value(("D", "B", "H") if layout == 0 else ("B", "D", "H"), {"D": dirs, "H": hs})
                read.pool = "last"
            else:
                g.unsupported(where, "the head reads the cell state (Y_c)")
            cur = node.output[used[0]]
            joined = _joined_states(g, cur, dirs) if used[0] == 1 and layout == 0 else None
            if joined is not None:  # torch.cat([h_n[-2], h_n[-1]], 1): [forward, backward] final states
                cur, val = joined, _Value(("B", "F"), {"F": 2 * hs})
            continue
        if op in ("Identity", "Dropout", "Cast"):
            cur = node.output[0]
            continue
        if op == "Transpose":
            perm = list(g.attr(node, "perm", list(range(len(val.axes)))[::-1]))
            if sorted(perm) != list(range(len(val.axes))):
                g.layout_error(where, f"has perm {perm} for {len(val.axes)} axes")
            val = _Value(tuple(val.axes[p] for p in perm), val.sizes)
        elif op in ("Reshape", "Flatten"):
            val = _reshape(g, node, val)
        elif op == "Squeeze":
            axes = [a % len(val.axes) for a in g._axes(node, [None, g.const(node.input[1], "axes", node)
                                                               if len(node.input) > 1 and node.input[1] else None])]
            for a in axes:
                if val.axes[a] == "T1":
                    read.pool = read.pool or "last_output"
                elif not (val.axes[a] == "D" and val.sizes.get("D") == 1):
                    g.layout_error(where, f"removes axis {val.axes[a]}")
            kept = tuple(x for i, x in enumerate(val.axes) if i not in axes)
            val = _Value(kept, val.sizes)
            if "D" not in kept and "H" in kept:
                val = _Value(tuple("F" if x == "H" else x for x in kept), {**val.sizes, "F": val.sizes["H"]})
        elif op in ("Gather", "Slice"):
            val = _take_last(g, node, val, read)
        elif op in ("ReduceMean", "ReduceMax"):
            ins = [None, g.const(node.input[1], "axes", node) if len(node.input) > 1 and node.input[1] else None]
            axes = [a % len(val.axes) for a in g._axes(node, ins)]
            if len(axes) != 1 or val.axes[axes[0]] != "T" or "F" not in val.axes or stage != "sequence":
                g.unsupported(where, "reduces other axes than time")
            if g.attr(node, "keepdims", 1):
                g.unsupported(where, "keeps the reduced axis")
            read.pool = "mean" if op == "ReduceMean" else "max"
            val = _Value(tuple(a for a in val.axes if a != "T"), val.sizes)
        elif op in ("Gemm", "MatMul", "Add"):
            cur = _linear(g, node, cur, val, read)
            stage = "linear"
            val = _Value(("B", "C"), {})
            continue
        elif op == "Relu":
            if stage != "linear" or len(read.linears) != 1 or read.relu_after:
                g.unsupported(where, "is not between the two Linear layers of an MLP head")
            read.relu_after.append(0)
        elif op in ("Softmax", "LogSoftmax"):
            if int(g.attr(node, "axis", -1)) not in (-1, 1):
                g.layout_error(where, f"normalises over axis {g.attr(node, 'axis', -1)}")
            if stage != "linear":
                g.unsupported(where, "does not follow the head's Linear layer")
            read.softmax = True
            stage = "done"
        else:
            g.unsupported(where, "is not part of a classifier kpgen reads")
        if val.axes in (("B", "F"),) and stage == "sequence":
            stage = "features"
        cur = node.output[0]
    else:
        g.layout_error("the graph", "has a data path that does not end")
    return read, input_size


def _joined_states(g: _Graph, y_h: str, dirs: int) -> str | None:
    """The output of Concat(Gather(Y_h, forward), Gather(Y_h, backward), axis=-1) when that is how Y_h is read
    (a bidirectional layer's final states side by side); None for any other use."""
    users = g.data_consumers(y_h)
    if dirs != 2 or len(users) != 2 or any(n.op_type != "Gather" or int(g.attr(n, "axis", 0)) != 0 for n in users):
        return None
    which = {}
    for n in users:
        idx = g._fold(n.input[1], 0)
        if idx is None or idx.ndim != 0 or int(idx) % 2 in which:
            return None
        which[int(idx) % 2] = n.output[0]
    cats = [g.data_consumers(o) for o in (which[0], which[1])]
    if not all(len(c) == 1 and c[0].op_type == "Concat" for c in cats) or cats[0][0] is not cats[1][0]:
        return None
    cat = cats[0][0]
    if list(cat.input) != [which[0], which[1]] or int(g.attr(cat, "axis", 0)) not in (1, -1):
        return None
    return cat.output[0]


def _reshape(g: _Graph, node, val: _Value) -> _Value:
    """Merge [D, H] into F (the directions' outputs side by side) or drop a size-1 D; anything else is refused."""
    where = _node_name(node)
    if node.op_type == "Flatten":
        if val.axes in (("B", "F"),):
            return val
        g.layout_error(where, f"flattens axes {val.axes}")
    target = [int(v) for v in g.const(node.input[1], "shape", node).ravel()]
    axes = val.axes
    if len(axes) >= 2 and axes[-2:] == ("D", "H") and len(target) == len(axes) - 1:
        feats = val.sizes["D"] * val.sizes["H"]
        if target[-1] not in (-1, feats):
            g.layout_error(where, f"reshapes the directions' outputs to {target}")
        return _Value((*axes[:-2], "F"), {**val.sizes, "F": feats})
    if len(axes) == 2 and axes == ("B", "F") and len(target) == 2:
        return val
    g.unsupported(where, f"reshapes axes {axes} to {target}")


def _take_last(g: _Graph, node, val: _Value, read: _Reading) -> _Value:
    """Gather or Slice of the last step (T), or of the last layer's state in Y_h (D with size 1)."""
    where = _node_name(node)
    n_axes = len(val.axes)
    if node.op_type == "Gather":
        axis = int(g.attr(node, "axis", 0)) % n_axes
        idx = g.const(node.input[1], "index", node)
        last = idx.size == 1 and int(idx.ravel()[0]) == -1
        name = val.axes[axis]
        if name == "T" and last:
            read.pool = "last_output"
            kept = tuple(a for i, a in enumerate(val.axes) if i != axis) if idx.ndim == 0 else \
                tuple("T1" if i == axis else a for i, a in enumerate(val.axes))
            return _Value(kept, val.sizes)
        if name == "D" and idx.ndim == 0 and val.sizes.get("D") == 1 and int(idx) in (0, -1):
            kept = tuple(a for i, a in enumerate(val.axes) if i != axis)
            return _Value(tuple("F" if a == "H" else a for a in kept), {**val.sizes, "F": val.sizes["H"]})
        g.unsupported(where, f"takes index {idx.ravel()[:4].tolist()} of axis {name}")
    ins = list(node.input) + [""] * (5 - len(node.input))
    starts = g.const(ins[1], "starts", node).ravel()
    ends = g.const(ins[2], "ends", node).ravel()
    axes = g.const(ins[3], "axes", node).ravel() if ins[3] else np.arange(len(starts))
    steps = g.const(ins[4], "steps", node).ravel() if ins[4] else np.ones(len(starts), np.int64)
    if len(starts) == 1 and val.axes[int(axes[0]) % n_axes] == "T" and int(starts[0]) == -1 \
            and int(ends[0]) >= BIG and int(steps[0]) == 1:
        axis = int(axes[0]) % n_axes
        return _Value(tuple("T1" if i == axis else a for i, a in enumerate(val.axes)), val.sizes)
    g.unsupported(where, f"slices {starts.tolist()}:{ends.tolist()} of axes {axes.tolist()}")


def _linear(g: _Graph, node, cur: str, val: _Value, read: _Reading) -> str:
    """A Gemm, or MatMul followed by Add of a bias, as one Linear (weight (out, in), bias (out,)); returns the
    output's name."""
    where = _node_name(node)
    if val.axes != ("B", "F") and val.axes != ("B", "C"):
        g.unsupported(where, f"reads axes {val.axes}, not [batch, features]")
    if len(read.linears) >= 2:
        g.unsupported(where, "is a third Linear layer")
    if len(read.linears) == 1 and not read.relu_after:
        g.unsupported(where, "follows a Linear layer without a ReLU")
    if node.op_type == "Add":
        g.unsupported(where, "adds to the data path outside a Linear layer")
    if node.op_type == "Gemm":
        if g.attr(node, "transA", 0):
            g.layout_error(where, "transposes its input")
        w = g.const(node.input[1], "weight", node).astype(np.float64)
        if not g.attr(node, "transB", 0):
            w = w.T
        w = w * float(g.attr(node, "alpha", 1.0))
        b = (g.const(node.input[2], "bias", node).astype(np.float64) * float(g.attr(node, "beta", 1.0))
             if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0]))
        out = node.output[0]
    else:
        other = node.input[1] if node.input[0] == cur else None
        if other is None:
            g.layout_error(where, "multiplies the data path from the left")
        w = g.const(other, "weight", node).astype(np.float64).T
        out = node.output[0]
        users = g.data_consumers(out)
        if len(users) == 1 and users[0].op_type == "Add":
            add = users[0]
            bname = add.input[1] if add.input[0] == out else add.input[0]
            b = g.const(bname, "bias", add).astype(np.float64)
            out = add.output[0]
        else:
            b = np.zeros(w.shape[0])
    if w.ndim != 2 or b.shape not in ((w.shape[0],), (1, w.shape[0])):
        g.layout_error(where, f"has weight {w.shape} and bias {b.shape}")
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        g.fail(f"{where} has NaN or infinite values in its weights", "retrain the model or fix the weights")
    read.linears.append((w, b.reshape(-1)))
    return out


def read_onnx(path: str | os.PathLike) -> tuple[ModelF, bool]:
    """The ONNX file as an uncalibrated float model (calibration placeholders: see onnx_to_ir) and whether a
    Softmax was dropped from its end."""
    name = str(path)
    model = _load(name)
    g = _Graph(name, model)
    inits = {t.name for t in g.graph.initializer}
    inputs = [i.name for i in g.graph.input if i.name not in inits]
    if len(inputs) != 1:
        g.fail(f"the graph has {len(inputs)} inputs", "export a model with one input, the sequence batch")
    read, input_size = _walk(g, inputs[0])
    if not read.layers:
        g.unsupported("the graph", "has no LSTM, GRU or RNN op")
    if read.pool is None or not read.linears:
        g.unsupported("the graph", "ends without a head on the recurrent outputs")
    for k in range(1, len(read.layers)):
        want = read.layers[k - 1].hidden_size * (2 if hasattr(read.layers[k - 1], "fwd") else 1)
        if read.layers[k].input_size != want:
            g.layout_error("the graph", f"has a layer {k} of {read.layers[k].input_size} inputs after a layer of "
                                        f"{want} outputs")
    feat = read.layers[-1].hidden_size * (2 if hasattr(read.layers[-1], "fwd") else 1)
    w0, b0 = read.linears[0]
    if w0.shape[1] != feat:
        g.layout_error("the graph", f"has a head of {w0.shape[1]} features after a last layer of {feat}")
    hidden = None
    head = DenseF(w0, b0)
    if len(read.linears) == 2:
        w1, b1 = read.linears[1]
        if w1.shape[1] != w0.shape[0]:
            g.layout_error("the graph", f"has MLP head layers that do not chain ({w0.shape} then {w1.shape})")
        hidden, head = DenseF(w0, b0), DenseF(w1, b1)
    elif read.relu_after:
        g.unsupported("the head", "ends with a ReLU")
    from kpgen.ir import Calibration

    placeholder = Calibration(1.0, (1.0,) * len(read.layers), (), 1.0 if hidden is not None else 0.0)
    pool = read.pool
    if pool == "last_output" and not hasattr(read.layers[-1], "fwd"):
        pool = "last"
    out = ModelF(input_size=input_size, num_classes=int(head.weight.shape[0]), layers=tuple(read.layers), head=head,
                 calibration=placeholder, meta={"source": "onnx", "method": "dense"}, pool=pool, hidden=hidden)
    return out, read.softmax


def onnx_to_ir(path: str | os.PathLike, data: str | os.PathLike | None) -> ModelF:
    """An ONNX file calibrated on the user's data (docs/byom.md, docs/onnx.md): ranges measured by kpgen's float
    model; when the data has logits, the float reading must reproduce them (after a Softmax at the end of the
    graph: compared as probabilities)."""
    from kpgen.frontend import userdata

    model, softmax = read_onnx(path)
    return userdata.calibrate_graph(model, path, data, "an ONNX model", "graph", softmax=softmax,
                                    meta={"softmax_dropped": softmax})


def is_onnx(path: str | os.PathLike) -> bool:
    """An ONNX file by its name (protobuf has no magic number)."""
    return str(path).lower().endswith(".onnx")
