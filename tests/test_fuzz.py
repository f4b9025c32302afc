"""Fuzzing the checkpoint loader and the emitter (hypothesis): mutated checkpoint dicts, random valid
architectures and damaged files all go through `emit_project`, which must either write a complete project or
raise a one-line KpgenError and leave nothing behind. Any other exception is a bug.
"""

from __future__ import annotations

import copy
import io
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from checkpoints import tiny_checkpoint, vectors
from example_counts import count, finding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpgen import KpgenError
from kpgen.codegen.emit import MANIFEST
from kpgen.pipeline import emit_project


def fuzz(n: int) -> settings:
    """n examples (times $KPGEN_FUZZ_SCALE, for longer campaigns), no deadline, all health checks off."""
    n = max(1, round(n * float(os.environ.get("KPGEN_FUZZ_SCALE", "1"))))
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck))

BASE = tiny_checkpoint(seed=3)
OUTCOMES: Counter[str] = Counter()


def _saved_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


BASE_BYTES = _saved_bytes(BASE)


def _pickle_region(data: bytes) -> tuple[int, int]:
    """Byte range of data.pkl inside the saved zip (torch stores records uncompressed)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    return start, start + info.compress_size


PKL_LO, PKL_HI = _pickle_region(BASE_BYTES)


@pytest.fixture(scope="module")
def work() -> Path:
    d = Path(tempfile.mkdtemp(prefix="kpgen-fuzz-"))
    vectors(d / "v.npz", samples=2, steps=3)
    yield d
    for key, n in sorted(OUTCOMES.items()):  # what the fuzzers reached, for the end-of-run report
        finding("fuzz outcomes", f"{n:5d}  {key}")
    shutil.rmtree(d, ignore_errors=True)


def _kind(msg: str) -> str:
    """A short category for a KpgenError message: the first plain words of its problem (no path, no values)."""
    text = msg.split(": ", 1)[1] if msg.startswith("/") else msg
    words = [w for w in text.split(";")[0].split() if re.fullmatch(r"[A-Za-z_-]+:?", w)]
    return " ".join(words[:5])


def emit_once(work: Path, name: str, data: bytes, vec: Path | None = None) -> str:
    """Write data as a checkpoint, run emit_project into a fresh directory, and check the outcome."""
    case = Path(tempfile.mkdtemp(dir=work))
    try:
        ckpt = case / "c.pt"
        ckpt.write_bytes(data)
        out = case / "out" / "m4"
        try:
            emit_project(ckpt, "m4", out, vectors=vec or work / "v.npz", samples=2)
        except KpgenError as e:
            msg = str(e)
            assert msg and "\n" not in msg, repr(msg)
            assert not out.exists(), "output written although emit failed"
            assert not (case / "out").exists() or list((case / "out").iterdir()) == [], "temporary files left"
            outcome = "error: " + _kind(msg)
        else:
            assert (out / MANIFEST).is_file() and (out / "model.c").is_file()
            assert [p.name for p in (case / "out").iterdir()] == ["m4"]
            outcome = "emitted"
    finally:
        shutil.rmtree(case, ignore_errors=True)
    count(name)
    OUTCOMES[f"{name}: {outcome}"] += 1
    return outcome


# ------------------------------------------------------------------------------------ value generators

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int8, torch.bool,
          torch.complex64]  # fmt: skip
FILLS = ["normal", "zero", "nan", "inf", "tiny", "huge", "denormal"]


def make_tensor(shape: list[int], dtype: torch.dtype, fill: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
    scale = {"zero": 0.0, "tiny": 1e-30, "huge": 1e30, "denormal": 1e-42}.get(fill, 1.0)
    t = t * scale
    if fill in ("nan", "inf") and t.numel():
        t.view(-1)[int(torch.randint(t.numel(), (1,), generator=g))] = float(fill)
    if dtype == torch.complex64:
        return t.to(torch.complex64)
    return t.to(dtype)


tensors = st.builds(
    make_tensor,
    shape=st.lists(st.integers(0, 6), max_size=3),
    dtype=st.sampled_from(DTYPES),
    fill=st.sampled_from(FILLS),
    seed=st.integers(0, 2**16),
)
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, 3, 4, -1, 16, 2**31, 10**9]),
    st.floats(),
    st.sampled_from([0.0, 1e-300, 1e300, float("nan"), float("inf"), -1.0]),
    texts,
    st.sampled_from(["lstm", "gru", "kpgen-checkpoint"]),
)
values = st.recursive(
    st.one_of(scalars, tensors),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(texts, kids, max_size=3)),
    max_leaves=5,
)
factor_pairs = st.lists(st.lists(st.integers(0, 16), min_size=2, max_size=2), min_size=2, max_size=2)
NEW_KEYS = ["layers.2.wx.a", "layers.0.wx.bias", "meta", "gate_absmax", "extra", "version", "num_layers"]


def _slots(obj: object, path: tuple = ()) -> list[tuple]:
    """Every (container path, key) below obj, for dicts and lists (not inside tensors)."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(path + (k,))
            out += _slots(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append(path + (i,))
            out += _slots(v, path + (i,))
    return out


def _parent(root: dict, path: tuple) -> object:
    node: object = root
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    return node


def _mutate(ck: dict, data: st.DataObject) -> str:
    """Apply one random mutation in place; returns a description for hypothesis' report."""
    slots = _slots(ck)
    path = data.draw(st.sampled_from(slots), label="path")
    parent = _parent(ck, path)
    key = path[-1]
    current = parent[key]  # type: ignore[index]
    actions = ["replace", "delete", "add", "factors"] + (["tensor"] * 3 if isinstance(current, torch.Tensor) else [])
    action = data.draw(st.sampled_from(actions), label="action")
    if action == "replace":
        parent[key] = data.draw(values, label="value")  # type: ignore[index]
    elif action == "delete":
        del parent[key]  # type: ignore[arg-type]
    elif action == "add":
        target = parent if isinstance(parent, dict) else ck
        target[data.draw(st.one_of(st.sampled_from(NEW_KEYS), texts), label="new key")] = data.draw(values)
    elif action == "factors":
        arch = ck.get("arch")
        if isinstance(arch, dict) and isinstance(arch.get("wx_factors"), list) and arch["wx_factors"]:
            which = data.draw(st.sampled_from(["wx_factors", "wh_factors"]))
            if isinstance(arch.get(which), list) and arch[which]:
                k = data.draw(st.integers(0, len(arch[which]) - 1))
                arch[which][k] = data.draw(factor_pairs, label="factor pair")
    else:  # tensor: new dtype, shape, or special values
        how = data.draw(st.sampled_from(["dtype", "shape", "special", "scale"]), label="tensor change")
        if how == "dtype":
            parent[key] = current.to(data.draw(st.sampled_from(DTYPES)))  # type: ignore[index]
        elif how == "shape":
            shape = data.draw(st.lists(st.integers(0, 6), max_size=3))
            parent[key] = make_tensor(shape, current.dtype, "normal", 0)  # type: ignore[index]
        elif how == "special" and current.numel():
            if not current.is_floating_point():  # NaN and inf exist only in float tensors
                current = parent[key] = current.double()  # type: ignore[index]
            idx = data.draw(st.integers(0, current.numel() - 1))
            bad = [float("nan"), float("inf"), -float("inf"), 1e38, 0.0]
            current.reshape(-1)[idx] = data.draw(st.sampled_from(bad))
        elif how == "scale":
            # out of place: an integer tensor (from an earlier dtype change) times a float becomes a float tensor
            parent[key] = current * data.draw(st.sampled_from([0.0, 1e-38, 1e-20, 1e20, 1e38, -1.0]))  # type: ignore[index]
    return f"{action} at {path}"


@fuzz(220)
@given(data=st.data())
def test_fuzz_mutated_checkpoint_dicts(work: Path, data: st.DataObject) -> None:
    ck = copy.deepcopy(BASE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "casting complex values to real discards the imaginary part"
        for _ in range(data.draw(st.integers(1, 3), label="mutations")):
            _mutate(ck, data)
    try:
        raw = _saved_bytes(ck)
    except Exception:
        return
    emit_once(work, "fuzz: mutated checkpoint dicts", raw)


def _random_arch(data: st.DataObject) -> dict:
    """A valid architecture with random sizes and factorizations (dimension-1 factors included)."""
    i = data.draw(st.integers(1, 12), label="input_size")
    h = data.draw(st.integers(1, 8), label="hidden_size")
    n_layers = data.draw(st.integers(1, 3), label="num_layers")

    def factor(rows: int, cols: int) -> list[list[int]]:
        m1 = data.draw(st.sampled_from([d for d in range(1, rows + 1) if rows % d == 0]))
        n1 = data.draw(st.sampled_from([d for d in range(1, cols + 1) if cols % d == 0]))
        return [[m1, n1], [rows // m1, cols // n1]]

    return {
        "cell": "lstm",
        "input_size": i,
        "hidden_size": h,
        "num_layers": n_layers,
        "num_classes": data.draw(st.integers(1, 5), label="num_classes"),
        "wx_factors": [factor(4 * h, i if k == 0 else h) for k in range(n_layers)],
        "wh_factors": [factor(4 * h, h) for _ in range(n_layers)],
    }


@fuzz(60)
@given(data=st.data())
def test_fuzz_random_valid_architectures(work: Path, data: st.DataObject) -> None:
    """Unusual but valid models (1 unit, 1 input, 3 layers, extreme weight scales) emit or are refused cleanly."""
    arch = _random_arch(data)
    scale = data.draw(st.sampled_from([0.5, 3.0, 1e-3, 1e3, 1e-12, 1e12]), label="weight scale")  # usual first
    ck = tiny_checkpoint(seed=data.draw(st.integers(0, 1000)), arch=arch, scale=scale)
    ck["calibration"]["input_absmax"] = data.draw(st.sampled_from([1.0, 100.0, 1e-3, 1e-20, 1e20]))
    cell_absmax = data.draw(st.sampled_from([3.0, 0.5, 1000.0, 1e-9, 20000.0]))
    ck["calibration"]["cell_absmax"] = [cell_absmax] * arch["num_layers"]
    vec = Path(tempfile.mkdtemp(dir=work)) / "v.npz"
    vectors(vec, samples=2, steps=data.draw(st.integers(1, 3)), features=arch["input_size"],
            classes=arch["num_classes"])
    outcome = emit_once(work, "fuzz: random valid architectures", _saved_bytes(ck), vec)
    if scale in (0.5, 3.0) and ck["calibration"]["input_absmax"] in (1e-3, 1.0, 100.0) \
            and ck["calibration"]["cell_absmax"][0] != 20000.0:
        assert outcome == "emitted", outcome  # ordinary ranges must always work


@fuzz(300)
@given(data=st.data())
def test_fuzz_damaged_files(work: Path, data: st.DataObject) -> None:
    """Truncated, bit-flipped, overwritten, shortened and padded checkpoint files."""
    raw = bytearray(BASE_BYTES)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        op = data.draw(st.sampled_from(["truncate", "flip", "flip-pickle", "overwrite", "insert", "delete"]))
        if op == "flip-pickle":
            pos = data.draw(st.integers(PKL_LO, min(PKL_HI, len(raw)) - 1)) if len(raw) > PKL_LO else 0
        else:
            pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "truncate":
            del raw[pos:]
        elif op in ("flip", "flip-pickle") and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "overwrite" and raw:
            chunk = data.draw(st.binary(min_size=1, max_size=16))
            raw[pos : pos + len(chunk)] = chunk
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del raw[pos : pos + data.draw(st.integers(1, 16))]
    emit_once(work, "fuzz: damaged files", bytes(raw))


def test_fuzz_oracle_tells_emitted_from_refused(work: Path) -> None:
    """The fuzzers' oracle (emit_once) is not vacuous: the unmutated checkpoint is emitted, and a truncated file,
    a file cut inside its pickle and a checkpoint without its state dict are each refused with their own message."""
    assert emit_once(work, "oracle", BASE_BYTES) == "emitted"
    refusals = set()
    broken = copy.deepcopy(BASE)
    del broken["state_dict"]
    for data in (BASE_BYTES[:64], BASE_BYTES[:PKL_LO + (PKL_HI - PKL_LO) // 2], _saved_bytes(broken)):
        outcome = emit_once(work, "oracle", data)
        assert outcome.startswith("error: ") and len(outcome) > len("error: "), outcome
        refusals.add(outcome)
    assert len(refusals) >= 2, refusals
