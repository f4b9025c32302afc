"""Read a torch.export program (.pt2, torch.export.save) of a recurrent classifier into the float IR (docs/onnx.md).

A .pt2 file is a zip archive: the graph is JSON of ATen ops (models/model.json), each weight a raw byte file
(data/weights/weight_N) described by data/weights/model_weights_config.json (dtype, sizes, strides, offset). Only
those members are read, with zipfile, json and numpy: the pickled example inputs (data/sample_inputs/) are never
opened, so a hostile archive runs no code. The graph is walked along its one data path, as the ONNX reader does:
aten.lstm / gru / rnn_tanh / rnn_relu become layers, then the head (select of the last step or of h_n, mean, amax
or max over time, one Linear or Linear-ReLU-Linear). Anything else is refused in one line naming the node.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from kpgen import KpgenError, escape
from kpgen.frontend.gates import layer_from_gates
from kpgen.ir import BiLayerF, Calibration, DenseF, ModelF

MAX_PT2_BYTES = 1 << 29  # the archive (512 MiB), as load.MAX_CHECKPOINT_BYTES
MAX_JSON_BYTES = 1 << 26  # one JSON member, uncompressed
MAX_MEMBERS = 10000
MAX_TENSOR_ELEMENTS = 1 << 25  # all weights together, as their sizes declare them
MAX_HIDDEN = 1 << 14
RECURRENT = {"torch.ops.aten.lstm.input": "LSTM", "torch.ops.aten.gru.input": "GRU",
             "torch.ops.aten.rnn_tanh.input": "RNN", "torch.ops.aten.rnn_relu.input": "ReluRNN"}
ZEROS = ("torch.ops.aten.zeros.default",)
GLUE = (*ZEROS, "torch.ops.aten.sym_size.int")  # zero initial states, and their size for a dynamic batch
PASS = ("torch.ops.aten.clone.default", "torch.ops.aten.alias.default", "torch.ops.aten.detach.default",
        "torch.ops.aten.contiguous.default", "torch.ops.aten.dropout.default")
HEAD = ("torch.ops.aten.select.int", "torch.ops.aten.mean.dim", "torch.ops.aten.amax.default",
        "torch.ops.aten.max.dim", "torch.ops.aten.linear.default", "torch.ops.aten.relu.default")
KNOWN = frozenset((*RECURRENT, *GLUE, *PASS, *HEAD))
DTYPES = {6: np.float16, 7: np.float32, 8: np.float64}  # torch.export's ScalarType codes
UNSUPPORTED_FIX = "kpgen reads recurrent layers and a Linear or MLP head on the last step, mean or max (docs/onnx.md)"
CELL_FIX = "export the layer with the cell's defaults (kpgen's LSTM, GRU and RNN cells are PyTorch's: docs/onnx.md)"
SAVE_AGAIN = "save the program again with torch.export.save"


def _fail(path: str, problem: str, fix: str) -> NoReturn:
    raise KpgenError(" ".join(f"{path}: {problem}; {fix}".split()))


class _Malformed(Exception):
    """The program JSON is not shaped as torch.export.save writes it (caught once, reported in one line)."""


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError) as e:
            raise _Malformed(f"missing {escape(str(k))[:30]}") from e
    return d


@dataclass
class _Node:
    name: str
    target: str
    args: dict[str, Any]  # input name -> the serialized argument ({"as_tensor": ...}, {"as_int": ...}, ...)
    outputs: list[str | None]

    def where(self) -> str:
        short = self.target.removeprefix("torch.ops.")
        return f"node {escape(self.name)[:60]} ({escape(short)[:40]})"

    def arg(self, name: str, kind: str, default: Any = None) -> Any:
        a = self.args.get(name)
        if a is None:
            return default
        if not isinstance(a, dict) or kind not in a:
            raise _Malformed(f"{self.name}: argument {escape(name)[:20]} is not {kind}")
        return a[kind]

    def tensor(self, name: str) -> str:
        return str(_get(self.arg(name, "as_tensor"), "name"))

    def tensors(self, name: str) -> list[str]:
        return [str(_get(t, "name")) for t in self.arg(name, "as_tensors", [])]


@dataclass
class _Reading:
    layers: list[Any] = field(default_factory=list)
    pool: str | None = None
    linears: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    relu: bool = False


class _Program:
    """The archive's program JSON and weights, and the checks shared by the walk."""

    def __init__(self, path: str) -> None:
        self.path = path
        p = Path(path)
        if not p.is_file():
            _fail(path, "does not exist or is not a regular file", "check the path")
        size = p.stat().st_size
        if size > MAX_PT2_BYTES:
            _fail(path, f"is {size:,} bytes, more than kpgen reads ({MAX_PT2_BYTES:,})",
                  "this is not a model that fits a microcontroller: check the file")
        try:
            with zipfile.ZipFile(p) as zf:
                self._read(zf)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, RuntimeError,
                zlib.error) as e:
            _fail(path, f"is not a zip archive, or is truncated or corrupt ({type(e).__name__})", SAVE_AGAIN)

    def fail(self, problem: str, fix: str) -> NoReturn:
        _fail(self.path, problem, fix)

    def unsupported(self, where: str, what: str) -> NoReturn:
        self.fail(f"{where} {what}", UNSUPPORTED_FIX)

    def _member(self, zf: zipfile.ZipFile, name: str, cap: int) -> bytes:
        info = zf.getinfo(name)
        if info.file_size > cap:
            self.fail(f"member {escape(name)[:80]} is {info.file_size:,} bytes uncompressed, more than kpgen reads "
                      f"({cap:,})", "this is not a model that fits a microcontroller: check the file")
        with zf.open(info) as fh:
            return fh.read(cap + 1)[:cap]

    def _json(self, zf: zipfile.ZipFile, name: str) -> Any:
        try:
            return json.loads(self._member(zf, name, MAX_JSON_BYTES))
        except (ValueError, RecursionError, UnicodeDecodeError) as e:
            self.fail(f"member {escape(name)[:80]} is not valid JSON ({type(e).__name__})", SAVE_AGAIN)

    def _read(self, zf: zipfile.ZipFile) -> None:
        names = zf.namelist()
        if len(names) > MAX_MEMBERS:
            self.fail(f"has {len(names):,} members, more than kpgen reads ({MAX_MEMBERS:,})", "check the file")
        fmt = [n for n in names if n == "archive_format" or n.endswith("/archive_format")]
        prefix = fmt[0][: -len("archive_format")] if fmt else ""
        models = [n for n in names if n.startswith(prefix + "models/") and n.endswith(".json")]
        wcfg = prefix + "data/weights/model_weights_config.json"
        if not fmt or len(models) != 1 or wcfg not in names:
            self.fail("holds no torch.export program that kpgen reads (one models/*.json and "
                      "data/weights/model_weights_config.json); older archives keep the weights as a pickle",
                      "save it again with torch.export.save from PyTorch 2.6 or later, or export ONNX")
        self.program = self._json(zf, models[0])
        config = self._json(zf, wcfg)
        try:
            self._parse(zf, prefix, config)
        except (_Malformed, TypeError, ValueError, AttributeError) as e:
            self.fail(f"its program JSON is not what torch.export.save writes ({escape(str(e))[:80]})", SAVE_AGAIN)

    def _parse(self, zf: zipfile.ZipFile, prefix: str, config: Any) -> None:
        gm = _get(self.program, "graph_module")
        graph = _get(gm, "graph")
        self.nodes: list[_Node] = []
        for n in _get(graph, "nodes"):
            args = {str(_get(a, "name")): _get(a, "arg") for a in _get(n, "inputs")}
            outs: list[str | None] = []
            for o in _get(n, "outputs"):
                if isinstance(o, dict) and "as_tensor" in o:
                    outs.append(str(_get(o, "as_tensor", "name")))
                elif isinstance(o, dict) and "as_tensors" in o:
                    outs += [str(_get(t, "name")) for t in o["as_tensors"]]
                else:
                    outs.append(None)
            self.nodes.append(_Node(str(_get(n, "name")), str(_get(n, "target")), args, outs))
        for node in self.nodes:
            if node.target not in KNOWN:
                self.fail(f"{node.where()} is an op kpgen does not read",
                          "kpgen reads nn.LSTM, nn.GRU and nn.RNN with a last-step, mean or max head, Linear layers "
                          "and ReLU (docs/onnx.md)")
        sig = _get(gm, "signature")
        self.params: dict[str, str] = {}  # graph input name -> parameter name
        self.user_inputs: list[str] = []
        for spec in _get(sig, "input_specs"):
            if "parameter" in spec:
                self.params[str(_get(spec, "parameter", "arg", "name"))] = str(_get(spec, "parameter",
                                                                                     "parameter_name"))
            elif "user_input" in spec:
                self.user_inputs.append(str(_get(spec, "user_input", "arg", "as_tensor", "name")))
            else:
                kind = escape(str(next(iter(spec), "?")))[:30]
                self.unsupported("the program", f"has an input of kind {kind} (a buffer or constant)")
        self.user_outputs = [str(_get(s, "user_output", "arg", "as_tensor", "name"))
                             for s in _get(sig, "output_specs")]
        cfg = _get(config, "config")
        self.weights: dict[str, np.ndarray] = {}
        total = 0
        for pname in self.params.values():
            entry = _get(cfg, pname)
            where = f"weight {escape(pname)[:60]}"
            if entry.get("use_pickle", False):
                self.fail(f"{where} is stored as a pickle", "kpgen reads no pickled objects: save plain float tensors")
            meta = _get(entry, "tensor_meta")
            dtype = DTYPES.get(_get(meta, "dtype"))
            if dtype is None:
                self.fail(f"{where} has dtype code {escape(str(meta.get('dtype')))[:10]}, not a float",
                          "save the model with float32 weights (model.float())")
            sizes = [int(_get(s, "as_int")) for s in _get(meta, "sizes")]
            strides = [int(_get(s, "as_int")) for s in _get(meta, "strides")]
            offset = int(_get(meta, "storage_offset", "as_int"))
            if len(sizes) != len(strides) or any(s < 0 for s in sizes + strides) or offset < 0:
                raise _Malformed(f"{pname}: sizes {sizes[:4]}, strides {strides[:4]}, offset {offset}")
            n = math.prod(sizes)
            total += n
            if n > MAX_TENSOR_ELEMENTS or total > MAX_TENSOR_ELEMENTS:
                self.fail(f"{where} declares {n:,} elements (all weights {total:,}), more than kpgen handles "
                          f"({MAX_TENSOR_ELEMENTS:,})",
                          "this is not a model that fits a microcontroller: check the file")
            member = prefix + "data/weights/" + str(_get(entry, "path_name"))
            width = np.dtype(dtype).itemsize
            need = (offset + sum((s - 1) * st for s, st in zip(sizes, strides, strict=True)) + 1) * width if n else 0
            try:
                info = zf.getinfo(member)
            except KeyError:
                self.fail(f"{where} has no data file {escape(member)[:80]}", "the file is damaged: save it again")
            if info.file_size < need:
                self.fail(f"{where} needs {need:,} bytes but {escape(member)[:80]} holds {info.file_size:,}",
                          "the file is damaged or incomplete: save it again")
            raw = self._member(zf, member, need) if n else b""
            if len(raw) < need:
                raise _Malformed(f"{pname}: its data file is shorter than the archive declares")
            if n:
                flat = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=need // width)[offset:]
                arr = np.lib.stride_tricks.as_strided(flat, shape=sizes, strides=[s * width for s in strides])
                self.weights[pname] = np.array(arr, dtype=np.float64)
            else:
                self.weights[pname] = np.zeros(sizes)
        self.producer = {o: nd for nd in self.nodes for o in nd.outputs if o}
        self.consumers: dict[str, list[_Node]] = {}
        for nd in self.nodes:
            if nd.target in GLUE:  # not on the data path (a dynamic batch's size read from the input)
                continue
            for a in nd.args.values():
                for t in _tensor_names(a):
                    self.consumers.setdefault(t, []).append(nd)
        self.sizes: dict[str, list[int]] = {}
        for name, tv in _get(graph, "tensor_values").items():
            self.sizes[str(name)] = [int(s["as_int"]) if isinstance(s, dict) and "as_int" in s else -1
                                     for s in _get(tv, "sizes")]

    def weight(self, tensor: str, node: _Node) -> np.ndarray:
        """A parameter of the model by its graph name; anything computed is refused."""
        if tensor not in self.params:
            self.unsupported(node.where(), f"takes {escape(tensor)[:40]}, which is not a parameter of the model")
        w = self.weights[self.params[tensor]]
        if not np.all(np.isfinite(w)):
            self.fail(f"{node.where()} has NaN or infinite values in {escape(self.params[tensor])[:60]}",
                      "retrain the model or fix the weights")
        return w


def _tensor_names(a: Any) -> list[str]:
    if isinstance(a, dict):
        if "as_tensor" in a and isinstance(a["as_tensor"], dict):
            return [str(a["as_tensor"].get("name"))]
        if "as_tensors" in a and isinstance(a["as_tensors"], list):
            return [str(t.get("name")) for t in a["as_tensors"] if isinstance(t, dict)]
        if "as_optional_tensors" in a and isinstance(a["as_optional_tensors"], list):
            return [str(t["as_tensor"].get("name")) for t in a["as_optional_tensors"]
                    if isinstance(t, dict) and isinstance(t.get("as_tensor"), dict)]
    return []


def _recurrent(p: _Program, node: _Node, feats: int) -> tuple[list[Any], int, int, bool]:
    """One aten.lstm / gru / rnn op as float layers (one per stacked layer; BiLayerF when bidirectional):
    (layers, directions, hidden size, batch_first)."""
    kind = RECURRENT[node.target]
    where = node.where()
    if node.arg("train", "as_bool", False):
        p.fail(f"{where} was exported in training mode", "export the model in eval mode (model.eval())")
    for h in _tensor_names(node.args.get("hx")):
        src = p.producer.get(h)
        if src is None or src.target not in ZEROS:
            p.fail(f"{where} starts from a non-zero initial state", CELL_FIX)
    has_bias = bool(node.arg("has_biases", "as_bool", True))
    n_layers = int(node.arg("num_layers", "as_int", 1))
    dirs = 2 if node.arg("bidirectional", "as_bool", False) else 1
    batch_first = bool(node.arg("batch_first", "as_bool", False))
    params = node.tensors("params")
    per = 4 if has_bias else 2
    if not 1 <= n_layers <= 64 or len(params) != n_layers * dirs * per:
        p.unsupported(where, f"has {len(params)} weights for {n_layers} layers")
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1, "ReluRNN": 1}[kind]
    layers: list[Any] = []
    size = feats
    hs = 0
    for k in range(n_layers):
        subs: list[Any] = []
        for d in range(dirs):
            ws = [p.weight(t, node) for t in params[(k * dirs + d) * per:(k * dirs + d + 1) * per]]
            wx, wh = ws[0], ws[1]
            hs = wh.shape[1] if wh.ndim == 2 else 0
            if not 0 < hs <= MAX_HIDDEN:
                p.fail(f"{where} has hidden size {hs}", f"give a hidden size from 1 to {MAX_HIDDEN}")
            bx, bh = (ws[2], ws[3]) if has_bias else (np.zeros(gates * hs), np.zeros(gates * hs))
            if wx.shape != (gates * hs, size) or wh.shape != (gates * hs, hs) or bx.shape != (gates * hs,) \
                    or bh.shape != (gates * hs,):
                p.unsupported(where, f"has weights of shapes {wx.shape}, {wh.shape} for layer {k} of input "
                                     f"size {size}")
            subs.append(layer_from_gates(kind, size, hs, wx, wh, bx, bh))
        layers.append(BiLayerF(subs[0], subs[1]) if dirs == 2 else subs[0])
        size = dirs * hs
    return layers, dirs, hs, batch_first


def _walk(p: _Program) -> tuple[_Reading, int]:
    """Follow the one data path from the input to the output; returns the reading and the input size."""
    if len(p.user_inputs) != 1:
        p.fail(f"the program has {len(p.user_inputs)} inputs", "export a model with one input, the sequence batch")
    if len(p.user_outputs) != 1:
        p.fail(f"the program has {len(p.user_outputs)} outputs", "export a model with one output (its logits)")
    read = _Reading()
    cur = p.user_inputs[0]
    shape = p.sizes.get(cur, [])
    if len(shape) != 3 or shape[2] <= 0:
        p.unsupported("the input", f"has shape {shape[:5]}, not [batch, steps, features] or [steps, batch, features]")
    input_size = feats = shape[2]
    axes: tuple[str, ...] = ("?", "?", "F")  # fixed by the first recurrent op's batch_first
    stage = "sequence"  # -> "features" (after the pool) -> "linear" (after a Linear)
    out = p.user_outputs[0]
    for _ in range(10000):
        users = p.consumers.get(cur, [])
        if cur == out and not users:
            break
        if len(users) != 1 or cur == out:
            names = ", ".join(n.where() for n in users[:3]) or "nothing"
            p.unsupported(f"the value {escape(cur)[:40]}",
                          f"has more than one use or none ({names}): not one path from the input to the output")
        node = users[0]
        where, t = node.where(), node.target
        first = "input" if t in RECURRENT or t == "torch.ops.aten.linear.default" else "self"
        if _tensor_names(node.args.get(first)) != [cur]:
            p.unsupported(where, "reads the data path in an unexpected argument")
        used = [o for o in node.outputs if o and (p.consumers.get(o) or o == out)]
        if len(used) != 1:
            p.unsupported(where, f"has {len(used)} of its outputs in use, not one")
        if t in RECURRENT:
            if stage != "sequence" or axes[2] != "F":
                p.unsupported(where, "follows the head")
            layers, dirs, hs, batch_first = _recurrent(p, node, feats)
            if read.layers and axes[:2] != (("B", "T") if batch_first else ("T", "B")):
                p.unsupported(where, "has another batch_first than the layer before it")
            read.layers += layers
            if used[0] == node.outputs[0]:
                axes, feats = (("B", "T", "F") if batch_first else ("T", "B", "F")), dirs * hs
            elif used[0] == node.outputs[1]:  # h_n: [layers * directions, batch, hidden]
                if dirs != 1:
                    p.unsupported(where, "feeds its final states h_n of both directions to the head")
                axes, feats = ("L", "B", "F"), hs
            else:
                p.unsupported(where, "feeds its cell state c_n to the head")
        elif t in PASS:
            if t == "torch.ops.aten.dropout.default" and node.arg("train", "as_bool", False):
                p.fail(f"{where} was exported in training mode", "export the model in eval mode (model.eval())")
        elif t == "torch.ops.aten.select.int":
            dim = int(node.arg("dim", "as_int", 0)) % len(axes)
            index = int(node.arg("index", "as_int", 0))
            if axes[dim] == "T" and index == -1 and stage == "sequence":
                read.pool = "last_output"
            elif axes[dim] == "L" and index == -1:
                read.pool = "last"
            else:
                p.unsupported(where, f"takes index {index} of axis {axes[dim]}")
            axes = tuple(a for i, a in enumerate(axes) if i != dim)
        elif t in ("torch.ops.aten.mean.dim", "torch.ops.aten.amax.default", "torch.ops.aten.max.dim"):
            dim_arg = node.args.get("dim")
            dims = node.arg("dim", "as_int") if isinstance(dim_arg, dict) and "as_int" in dim_arg else \
                node.arg("dim", "as_ints", [])
            dims = [int(d) % len(axes) for d in (dims if isinstance(dims, list) else [dims])]
            if len(dims) != 1 or axes[dims[0]] != "T" or stage != "sequence":
                p.unsupported(where, "reduces other axes than time")
            if node.arg("keepdim", "as_bool", False):
                p.unsupported(where, "keeps the reduced axis")
            if t == "torch.ops.aten.max.dim" and used[0] != node.outputs[0]:
                p.unsupported(where, "feeds the indices of the maximum to the head")
            read.pool = "mean" if t == "torch.ops.aten.mean.dim" else "max"
            axes = tuple(a for i, a in enumerate(axes) if i != dims[0])
        elif t == "torch.ops.aten.linear.default":
            if axes != ("B", "F"):
                p.unsupported(where, f"reads axes {axes}, not [batch, features]")
            if len(read.linears) >= 2 or (read.linears and not read.relu):
                p.unsupported(where, "is a third Linear layer, or follows a Linear layer without a ReLU")
            w = p.weight(node.tensor("weight"), node)
            bias = node.args.get("bias")
            b = p.weight(node.tensor("bias"), node) if isinstance(bias, dict) and "as_tensor" in bias \
                else np.zeros(w.shape[0] if w.ndim == 2 else 0)
            if w.ndim != 2 or w.shape[1] != feats or b.shape != (w.shape[0],):
                p.unsupported(where, f"has weight {w.shape} and bias {b.shape} for {feats} features")
            read.linears.append((w, b))
            feats, stage = int(w.shape[0]), "linear"
        elif t == "torch.ops.aten.relu.default":
            if stage != "linear" or len(read.linears) != 1 or read.relu:
                p.unsupported(where, "is not between the two Linear layers of an MLP head")
            read.relu = True
        else:
            p.unsupported(where, "is not on the data path of a classifier kpgen reads")
        if axes == ("B", "F") and stage == "sequence":
            stage = "features"
        cur = used[0]
    else:
        p.unsupported("the program", "has a data path that does not end")
    return read, input_size


def read_pt2(path: str | os.PathLike) -> ModelF:
    """The .pt2 archive as an uncalibrated float model (calibration placeholders: see pt2_to_ir)."""
    p = _Program(str(path))
    try:
        read, input_size = _walk(p)
    except (_Malformed, TypeError, ValueError, AttributeError) as e:
        p.fail(f"its program JSON is not what torch.export.save writes ({escape(str(e))[:80]})", SAVE_AGAIN)
    if not read.layers or read.pool is None or not read.linears or (read.relu and len(read.linears) != 2):
        p.unsupported("the program", "has no recurrent layer, pooled head and Linear layer in that order")
    if len(read.linears) == 2:
        hidden: DenseF | None = DenseF(*read.linears[0])
        head = DenseF(*read.linears[1])
    else:
        hidden, head = None, DenseF(*read.linears[0])
    pool = read.pool
    if pool == "last_output" and not isinstance(read.layers[-1], BiLayerF):
        pool = "last"
    placeholder = Calibration(1.0, (1.0,) * len(read.layers), (), 1.0 if hidden is not None else 0.0)
    return ModelF(input_size=input_size, num_classes=int(head.weight.shape[0]), layers=tuple(read.layers), head=head,
                  calibration=placeholder, meta={"source": "torch.export", "method": "dense"}, pool=pool,
                  hidden=hidden)


def pt2_to_ir(path: str | os.PathLike, data: str | os.PathLike | None) -> ModelF:
    """A .pt2 program calibrated on the user's data (docs/byom.md): ranges measured by kpgen's float model; when
    the data has logits, the float reading must reproduce them."""
    from kpgen.frontend import userdata

    return userdata.calibrate_graph(read_pt2(path), path, data, "a torch.export program", "program")


def is_pt2(path: str | os.PathLike) -> bool:
    """A torch.export program: named .pt2, or a zip with an archive_format member."""
    p = Path(path)
    if str(path).lower().endswith(".pt2"):
        return True
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    try:
        with zipfile.ZipFile(p) as zf:
            return any(n.endswith("archive_format") for n in zf.namelist()[:MAX_MEMBERS])
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
