"""Hostile inputs keep the promise of docs/errors.md: one line on stderr, exit status 2, nothing half-written,
no code run, and nothing allocated beyond what the input could honestly need. Each test builds one class of
attack (crafted pickles, memory bombs, interrupted writes, odd paths and values, forged text) with a few cases.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import save, tiny_checkpoint, vectors
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real command line in a child process (a crash shows as a signal, not as a Python exception)."""
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "kpgen", *args], capture_output=True, text=True, env=full,
                          timeout=timeout, check=False)


def invoke(*args: str):
    """The command line in this process (faster; for cases where no crash or signal is involved)."""
    from kpgen.cli import main

    return CliRunner().invoke(main, list(args))


def one_line(res, *needles: str) -> str:
    """Exit status 2 and exactly one printable 'kpgen: error:' line on stderr containing every needle."""
    code = res.returncode if isinstance(res, subprocess.CompletedProcess) else res.exit_code
    err = res.stderr
    assert code == 2, (code, err[-2000:])
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kpgen: error: "), err[-2000:]
    assert err.endswith("\n") and err.count("\n") == 1, repr(err[-200:])
    assert all(c.isprintable() for c in lines[0]), repr(lines[0])
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def replace_pickle(path: Path, edit) -> Path:
    """Rewrite data.pkl inside a torch zip checkpoint with edit(bytes) -> bytes (the tensor data stays)."""
    with zipfile.ZipFile(path) as zf:
        members = [(i, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for info, data in members:
            zf.writestr(info.filename, edit(data) if info.filename.endswith("/data.pkl") else data)
    return path


def add_top_item(key: bytes, value: bytes = b"K\x01"):
    """An edit for replace_pickle: one more item (pickle opcodes for key and value) in the top-level dict."""
    return lambda pkl: pkl[:-1] + key + value + b"s."


# ------------------------------------------------------------------------------- 1. the unpickler itself

DEEP_TUPLE = b")" + b"\x85" * 1_000_000  # (((...),),) a million deep: 1 MB of TUPLE1 opcodes
CRAFTED = {
    "deep-tuple-key": add_top_item(DEEP_TUPLE),
    "deep-tuple-in-meta-value": add_top_item(b"X\x04\x00\x00\x00deep", DEEP_TUPLE),
    "deep-marks": add_top_item(b"X\x04\x00\x00\x00list", b"(" * 200_000 + b"l" * 200_000),
    "deep-dicts": add_top_item(b"X\x01\x00\x00\x00d",  # {'k': {'k': ... {'k': 1} ...}} 150,000 deep
                               (b"}X\x01\x00\x00\x00k") * 150_000 + b"K\x01" + b"s" * 150_000),
}


def emit_and_plan(ckpt: Path, out: Path) -> list[list[str]]:
    """The two commands that read a checkpoint first: `kpgen emit` and `kpgen plan`."""
    return [["emit", str(ckpt), "--board", "m4", "-o", str(out)], ["plan", str(ckpt)]]


@pytest.mark.parametrize("case", ["deep-tuple-key", "deep-tuple-in-meta-value", "deep-marks", "deep-dicts"])
def test_deeply_nested_pickles_are_refused_not_crashed(tmp_path, case):
    ckpt = replace_pickle(save(tiny_checkpoint(), tmp_path / "m.pt"), CRAFTED[case])
    for args in emit_and_plan(ckpt, tmp_path / "out"):
        one_line(run_cli(*args), "nests containers more than 100 deep")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- 2. memory bombs

LIMIT_AS = 1536 << 20  # the child may map 1.5 GiB: enough for torch, far below what the bombs ask for


def _bounded():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


def run_bounded(*args: str) -> subprocess.CompletedProcess:
    """run_cli with the child's address space capped: a bomb that allocates fails loudly (MemoryError, abort)."""
    full = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "kpgen", *args], capture_output=True, text=True, env=full,
                          timeout=120, preexec_fn=_bounded, check=False)


def stride0(hid: int, dense: bool = False) -> dict:
    """A checkpoint of expanded (stride-0) tensors: a few KB on disk, hidden_size `hid` in every declared shape."""
    ck = tiny_checkpoint()
    inputs, classes, rows = 6, 3, 4 * hid
    arch = {"cell": "lstm", "input_size": inputs, "hidden_size": hid, "num_layers": 1, "num_classes": classes}

    def z(*shape: int) -> torch.Tensor:
        return torch.zeros(1).expand(*shape)

    if dense:
        arch.update(method="dense", wx_specs=["dense"], wh_specs=["dense"])
        sd = {"layers.0.wx.weight": z(rows, inputs), "layers.0.wh.weight": z(rows, hid)}
    else:
        r = 1 << (rows.bit_length() // 2)
        arch.update(wx_factors=[[[r, 2], [rows // r, 3]]], wh_factors=[[[rows, 1], [1, hid]]])
        sd = {"layers.0.wx.a": z(r, 2), "layers.0.wx.b": z(rows // r, 3), "layers.0.wh.a": z(rows, 1),
              "layers.0.wh.b": z(1, hid)}
    sd.update({"layers.0.bias": z(rows), "head.weight": z(classes, hid), "head.bias": z(classes)})
    ck.update(arch=arch, state_dict=sd, calibration={"input_absmax": 1.0, "cell_absmax": [1.0], "gate_absmax": [1.0]})
    return ck


def torch_state_dict_bomb() -> dict:
    """A plain nn.LSTM + Linear state dict (what `kpgen plan` and `compress` read) claiming H = 2^20."""
    hid, inputs = 1 << 20, 6

    def z(*shape: int) -> torch.Tensor:
        return torch.zeros(1).expand(*shape)

    return {"lstm.weight_ih_l0": z(4 * hid, inputs), "lstm.weight_hh_l0": z(4 * hid, hid),
            "lstm.bias_ih_l0": z(4 * hid), "lstm.bias_hh_l0": z(4 * hid), "fc.weight": z(10, hid), "fc.bias": z(10)}


def zip_claiming(path: Path, member_suffix: str, claim: int) -> Path:
    """Patch the zip's central directory so that the member ending in member_suffix claims `claim` bytes."""
    data = bytearray(path.read_bytes())
    pos = 0
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        name = bytes(data[pos + 46 : pos + 46 + name_len])
        if name.endswith(member_suffix.encode()):
            struct.pack_into("<I", data, pos + 24, claim)
        pos += 4
    path.write_bytes(bytes(data))
    return path


def storage_claiming(pkl: bytes) -> bytes:
    """Edit data.pkl: the first tensor storage declares 2^31 - 1 elements (8 GB of float32)."""
    at = pkl.index(b"cpu")
    end = pkl.index(b"t", at)  # TUPLE closes ('storage', type, key, 'cpu', numel)
    start = end - 2 if pkl[end - 2 : end - 1] == b"K" else end - 3 if pkl[end - 3 : end - 2] == b"M" else end - 5
    return pkl[:start] + b"J" + struct.pack("<i", 2**31 - 1) + pkl[end:]


BOMBS = {
    "stride0-kp-h2^22": (lambda p: save(stride0(1 << 22), p), "arch declares a model of"),
    "stride0-kp-h2^26": (lambda p: save(stride0(1 << 26), p), "arch declares a model of"),
    "stride0-dense-h2^16": (lambda p: save(stride0(1 << 16, dense=True), p), "arch declares a model of"),
    "state-dict-h2^20": (lambda p: save(torch_state_dict_bomb(), p), "its tensors declare"),
    "zip-member-2GiB": (lambda p: zip_claiming(save(tiny_checkpoint(), p), "data/0", 2**31),
                        "its zip archive declares"),
    "zip-pickle-1GiB": (lambda p: zip_claiming(save(tiny_checkpoint(), p), "data.pkl", 2**30), "declares"),
    "storage-2^31": (lambda p: replace_pickle(save(tiny_checkpoint(), p), storage_claiming),
                     "its tensor data declares"),
}


@pytest.mark.parametrize("case", ["stride0-kp-h2^22", "stride0-kp-h2^26", "stride0-dense-h2^16", "state-dict-h2^20",
                                  "zip-member-2GiB", "zip-pickle-1GiB", "storage-2^31"])
def test_declared_sizes_are_checked_before_allocating(tmp_path, case):
    make, needle = BOMBS[case]
    ckpt = make(tmp_path / "m.pt")
    assert ckpt.stat().st_size < 64 << 10
    for args in emit_and_plan(ckpt, tmp_path / "out"):
        one_line(run_bounded(*args), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def npz_with_header(path: Path, arrays: dict[str, tuple[tuple[int, ...], str, bytes]]) -> Path:
    """An .npz whose members declare any shape and dtype, followed by only the given bytes of data."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, (shape, descr, payload) in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
            zf.writestr(f"{name}.npy", buf.getvalue() + payload)
    return path


def test_vector_headers_are_read_before_arrays(tmp_path):
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    cases = {
        "x-1e11": ({"x": ((10**11, 28, 28), "<f8", b"")}, "declares shape (100000000000, 28, 28)"),
        "y-1e12": ({"x": ((3, 5, 6), "<f8", bytes(720)), "y": ((10**12,), "<i8", b"")}, "y declares shape"),
        "x-truncated": ({"x": ((3, 5, 6), "<f8", bytes(100))}, "the file is truncated"),
        "x-object": ({"x": ((3,), "|O", b"")}, "not plain numbers"),
    }
    for name, (arrays, needle) in cases.items():
        vec = npz_with_header(tmp_path / f"{name}.npz", arrays)
        out = tmp_path / f"out-{name}"
        one_line(run_bounded("emit", str(ckpt), "--board", "m4", "-o", str(out), "--vectors", str(vec)), needle)
        assert not out.exists()


# ----------------------------------------------------------------------------- 3. interrupted writes

def _files() -> dict[str, str]:
    return {"model.c": "int model;\n", "model.h": "extern int model;\n", "sub/dir/x.txt": "x\n"}


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def _debris(parent: Path, name: str = "out") -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
@pytest.mark.parametrize("point", ["written", "swapping"])
@pytest.mark.parametrize("force", [False, True], ids=["new", "replace"])
def test_a_signal_during_write_tree_leaves_old_or_new_tree(tmp_path, monkeypatch, sig, exchange, point, force):
    from kpgen.codegen import emit

    signum = getattr(signal, sig)
    out = tmp_path / "out"
    if force:
        out.mkdir()
        (out / "kpgen.json").write_text("{}\n")
        (out / "old.c").write_text("old\n")
    before = _tree(out) if force else None
    if not exchange:
        monkeypatch.setattr(emit, "_exchange", lambda a, b: False)
    got: list[int] = []
    previous = signal.signal(signum, lambda s, f: got.append(s))  # what the process would do after kpgen is done
    monkeypatch.setattr(emit, "_step", lambda name: signal.raise_signal(signum) if name == point else None)
    try:
        if point == "written":  # while files are written: the write stops, the cleanup runs
            with pytest.raises(KeyboardInterrupt):
                emit.write_tree(out, _files(), {"board": "m4"}, force=force)
            assert (_tree(out) == before) if force else not out.exists()
            assert got == []
        else:  # between the two renames (rename-aside only): the swap finishes first, then the signal acts
            emit.write_tree(out, _files(), {"board": "m4"}, force=force)
            assert _tree(out)["model.c"] == "int model;\n" and "old.c" not in _tree(out)
            assert got == ([signum] if force and not exchange else [])
    finally:
        signal.signal(signum, previous)
    assert _debris(tmp_path) == []
    assert signal.getsignal(signum) is previous


def test_a_failed_write_removes_the_parents_it_created(tmp_path, monkeypatch):
    from kpgen import KpgenError
    from kpgen.codegen import emit

    def disk_full(name: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(emit, "_step", disk_full)
    with pytest.raises(KpgenError, match="No space left on device"):
        emit.write_tree(tmp_path / "a" / "b" / "c" / "out", _files(), {}, force=False)
    assert list(tmp_path.iterdir()) == []


SLOW_EMIT = """
import sys, time
from kpgen.codegen import emit
def pause(name):
    if name == "written":
        print("ready", flush=True)
        time.sleep(60)
emit._step = pause
from kpgen.cli import main
sys.argv = ["kpgen"] + sys.argv[1:]
main()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["TERM", "HUP", "INT"])
@pytest.mark.parametrize("force", [False, True], ids=["new", "replace"])
def test_emit_killed_mid_write_by_a_real_signal(tmp_path, sig, force):
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    vec = vectors(tmp_path / "v.npz")
    out = tmp_path / "out"
    if force:
        out.mkdir()
        (out / "kpgen.json").write_text('{"old": true}\n')
    args = ["emit", str(ckpt), "--board", "m4", "-o", str(out), "--vectors", str(vec)] + (["--force"] if force else [])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SIGINT at its default in the child: a shell's background job (CI runners, `cmd &`) inherits it ignored
    child = subprocess.Popen([sys.executable, "-c", SLOW_EMIT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        child.send_signal(sig)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
    res = subprocess.CompletedProcess(child.args, child.returncode, "", err)
    one_line(res, "interrupted")
    if force:
        assert _tree(out) == {"kpgen.json": '{"old": true}\n'}
    else:
        assert not out.exists()
    assert _debris(tmp_path) == []


# ------------------------------------------------------------------- 4. values and paths that crashed


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def _attr_on_tensor(ck: dict) -> None:
    ck["state_dict"]["head.bias"].detach = 5  # would shadow the method the loader calls


def _float4(ck: dict) -> None:
    ck["state_dict"]["head.bias"] = torch.zeros(3, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)


BAD_CHECKPOINTS = {
    "tensor-attribute": (_attr_on_tensor, "is a tensor carrying Python attributes (['detach'])"),
    "calibration-2**1100": (lambda ck: ck["calibration"].update(input_absmax=2**1100), "calibration.input_absmax is"),
    "cell-absmax-2**1100": (lambda ck: ck["calibration"].update(cell_absmax=[2**1100, 1.0]), "calibration.cell_absmax"),
    "float4": (_float4, "has dtype torch.float4_e2m1fn_x2, which kpgen cannot read"),
    "seq-len-1e9": (lambda ck: ck["meta"].update(seq_len=10**9), "meta.seq_len is 1000000000, not a sequence length"),
    "seq-len-float": (lambda ck: ck["meta"].update(seq_len=5.5), "meta.seq_len is 5.5"),
    "dataset-features": (lambda ck: ck["meta"].update(dataset="mnist"),
                         "meta.dataset 'mnist' has 28 features per step"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS), ids=list(BAD_CHECKPOINTS))
def test_bad_checkpoint_values_are_one_line(tmp_path, case):
    edit, needle = BAD_CHECKPOINTS[case]
    ck = tiny_checkpoint()
    edit(ck)
    ckpt = save(ck, tmp_path / "m.pt")
    vec = [] if case == "dataset-features" else ["--vectors", str(vectors(tmp_path / "v.npz"))]
    one_line(invoke("emit", str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), *vec), needle)
    assert not (tmp_path / "out").exists()


def test_ordered_dict_attributes_are_dropped_not_obeyed(tmp_path):
    """An OrderedDict (a state_dict carries _metadata) may hold instance attributes, even one named `get`: the
    loader reads plain dicts, so the checkpoint means what its items say."""
    import collections

    ck = tiny_checkpoint()
    arch = collections.OrderedDict(ck["arch"])
    arch.get = 5  # type: ignore[method-assign]
    ck["arch"] = arch
    ckpt = save(ck, tmp_path / "m.pt")
    from kpgen.frontend.load import read_raw

    raw = read_raw(ckpt)
    assert type(raw["arch"]) is dict and raw["arch"].get("cell") == "lstm"
    res = invoke("emit", str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors",
                 str(vectors(tmp_path / "v.npz")))
    assert res.exit_code == 0, res.output


def test_a_pickle_that_runs_code_is_named_as_such(tmp_path):
    import pickle

    for proto in (0, 2, 4):
        bad = tmp_path / f"p{proto}.pt"
        bad.write_bytes(pickle.dumps({"format": "kpgen-checkpoint", "x": _RunsCode()}, protocol=proto))
        one_line(run_cli("emit", str(bad), "--board", "m4", "-o", str(tmp_path / "out")),
                 "is a pickle that would run code when loaded", "system")
    payload = pickle.dumps(_RunsCode(), protocol=2)[2:-1]  # without PROTO and STOP: a value inside data.pkl
    zipped = replace_pickle(save(tiny_checkpoint(), tmp_path / "z.pt"), add_top_item(b"X\x01\x00\x00\x00p", payload))
    one_line(invoke("plan", str(zipped)), "would run code", "system")
    assert not (tmp_path / "pwned.txt").exists() and not Path("pwned.txt").exists()


def _vector_files(tmp: Path) -> dict[str, tuple[list[str], str]]:
    np.save(tmp / "plain.npy", np.zeros((3, 5, 6)))
    with zipfile.ZipFile(tmp / "xbytes.npz", "w") as zf:
        zf.writestr("x", b"hello")
    with zipfile.ZipFile(tmp / "xtext.npz", "w") as zf:
        zf.writestr("x.npy", b"\x93NUMPY\x01\x00" + b"\x10\x00" + b"{'descr': 1}    ")
    np.savez(tmp / "y1e300.npz", x=np.zeros((3, 5, 6)), y=np.array([0, 1, 1e300]))
    np.savez(tmp / "y7.npz", x=np.zeros((3, 5, 6)), y=np.array([0, 1, 7]))
    np.savez(tmp / "yneg.npz", x=np.zeros((3, 5, 6)), y=np.array([0, -1, 2], dtype=np.int8))
    np.savez(tmp / "yhalf.npz", x=np.zeros((3, 5, 6)), y=np.array([0, 1, 1.5]))
    (tmp / "text.npz").write_text("x = 1, 2, 3\n")
    os.mkfifo(tmp / "fifo.npz")
    (tmp / "dir.npz").mkdir()
    return {
        "npy": ([str(tmp / "plain.npy")], "is a .npy file (one array), not an .npz"),
        "member-not-array": ([str(tmp / "xbytes.npz")], "member 'x' is not a numpy array"),
        "member-bad-header": ([str(tmp / "xtext.npz")], "member 'x' is not a numpy array"),
        "label-1e300": ([str(tmp / "y1e300.npz")], "label y[2] = 1e+300 is not a class of this model (0..2)"),
        "label-out-of-range": ([str(tmp / "y7.npz")], "label y[2] = 7 is not a class"),
        "label-negative": ([str(tmp / "yneg.npz")], "label y[1] = -1 is not a class"),
        "label-fraction": ([str(tmp / "yhalf.npz")], "expected 3 integer labels"),
        "not-zip": ([str(tmp / "text.npz")], "not a readable .npz file (not a zip archive)"),
        "fifo": ([str(tmp / "fifo.npz")], "is not a regular file"),
        "directory": ([str(tmp / "dir.npz")], "is not a regular file"),
        "missing": ([str(tmp / "none.npz")], "no such file"),
    }


def test_bad_vector_files_are_one_line(tmp_path):
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    cases = _vector_files(tmp_path)
    for name, (files, needle) in cases.items():
        res = run_cli("emit", str(ckpt), "--board", "m4", "-o", str(tmp_path / "out"), "--vectors", *files,
                      timeout=60) if name == "fifo" else invoke("emit", str(ckpt), "--board", "m4", "-o",
                                                                str(tmp_path / "out"), "--vectors", *files)
        one_line(res, needle)
        assert not (tmp_path / "out").exists(), name


def test_bad_paths_are_one_line(tmp_path):
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    vec = str(vectors(tmp_path / "v.npz"))
    (tmp_path / "afile").write_text("a file, not a directory\n")
    long = "a" * 256
    cases = [
        (["emit", str(ckpt), "--board", "m4", "--vectors", vec, "-o", str(tmp_path / "afile" / "out")],
         "Not a directory"),
        (["emit", str(ckpt), "--board", "m4", "--vectors", vec, "-o", "/proc/kpgen-out"],
         "cannot write /proc/kpgen-out"),
        (["emit", str(ckpt), "--board", "m4", "--vectors", vec, "-o", str(tmp_path / long / "out")],
         "is a path component of 256 bytes"),
        (["emit", str(tmp_path / long), "--board", "m4", "--vectors", vec], "is a path component of 256 bytes"),
        (["emit", str(ckpt), "--board", "m4", "--vectors", str(tmp_path / long)], "is a path component of 256 bytes"),
        (["run", str(tmp_path / long)], "is a path component of 256 bytes"),
        (["plan", str(tmp_path / long / "m.pt")], "is a path component of 256 bytes"),
        (["emit", str(ckpt), "--board", "m4", "--vectors", vec, "-o", str(tmp_path / "x\0y")], "NUL character"),
        (["emit", str(ckpt), "--board", "m4", "--vectors", vec, "-o", "/" + "d/" * 2100], "more than the system's"),
        (["emit", str(tmp_path / "loop" / "m.pt"), "--board", "m4", "--vectors", vec],
         "Too many levels of symbolic links"),
    ]
    (tmp_path / "loop").symlink_to("loop")
    if os.geteuid() != 0:  # root ignores permissions; these only bite an ordinary user
        locked = tmp_path / "locked"
        locked.mkdir()
        hidden_ckpt = locked / "m.pt"
        hidden_ckpt.write_bytes(ckpt.read_bytes())
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
        os.chmod(locked, 0)
        cases += [
            (["emit", str(hidden_ckpt), "--board", "m4", "--vectors", vec], "Permission denied"),
            (["emit", str(ckpt), "--board", "m4", "--vectors", vec, "-o", str(tmp_path / "ro" / "out")],
             "Permission denied"),
            (["run", str(locked / "project")], "Permission denied"),
        ]
    else:  # root: a read-only file system stands in for a read-only directory
        cases += [(["emit", str(ckpt), "--board", "m4", "--vectors", vec, "-o", "/proc/self/out"], "cannot write")]
    try:
        for args, needle in cases:
            one_line(invoke(*args), needle)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
        assert not (tmp_path / "afile").is_dir()
        from kpgen import KpgenError
        from kpgen.pipeline import test_set

        with pytest.raises(KpgenError, match=r"cannot be read .File name too long.; check the path and permissions"):
            test_set(tiny_model(), tmp_path / long)
    finally:
        for d in ("locked", "ro"):
            if (tmp_path / d).exists():
                os.chmod(tmp_path / d, 0o755)


def tiny_model():
    """A float model of the tiny checkpoint (for calling pipeline functions directly)."""
    from kpgen.frontend.load import checkpoint_to_ir

    return checkpoint_to_ir(tiny_checkpoint())


def test_storage_references_must_be_as_torch_saves_them(tmp_path):
    ckpt = replace_pickle(save(tiny_checkpoint(), tmp_path / "m.pt"), add_top_item(b"X\x01\x00\x00\x00s", b"K\x05Q"))
    one_line(invoke("plan", str(ckpt)), "refers to tensor data in a way torch.save does not write")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "1e20", "0.5", "ten"])
def test_timeouts_must_be_finite_and_sane(tmp_path, value):
    for command in ("run", "flash"):
        one_line(invoke(command, str(tmp_path), "--timeout", value), "--timeout")


def _emit_project(tmp_path: Path) -> Path:
    out = tmp_path / "proj"
    res = invoke("emit", str(save(tiny_checkpoint(), tmp_path / "m.pt")), "--board", "m4", "-o", str(out),
                 "--vectors", str(vectors(tmp_path / "v.npz")))
    assert res.exit_code == 0, res.output
    return out


def test_hand_edited_manifests_are_one_line(tmp_path):
    from kpgen.pipeline import manifest_problem

    out = _emit_project(tmp_path)
    good = json.loads((out / "kpgen.json").read_text())
    assert manifest_problem(good) is None

    def edited(**changes) -> dict:
        m = json.loads(json.dumps(good))
        for key, value in changes.items():
            d = m
            *parents, last = key.split("__")
            for p in parents:
                d = d[p]
            if value is KeyError:
                del d[last]
            else:
                d[last] = value
        return m

    cases = {
        "board-int": (edited(board=4), "'board' is missing or not a string"),
        "name-newline": (edited(name="m\nkpgen: error: forged"), "'name' is not a C identifier"),
        "vectors-list": (edited(vectors=[1, 2]), "'vectors' lacks its sample and step counts"),
        "samples-str": (edited(vectors__samples="3"), "'vectors' lacks"),
        "scores-short": (edited(vectors__scores=[[1, 2, 3]]), "'vectors.scores' is not 3 lists"),
        "digest-bad": (edited(vectors__final_digests=["zz", "0", "1"]), "'vectors.final_digests'"),
        "labels-missing": (edited(vectors__labels=KeyError), "'vectors.labels'"),
        "model-missing": (edited(model=KeyError), "'model' is missing"),
        "accuracy-str": (edited(accuracy="high"), "'accuracy' is missing or malformed"),
        "target-bad": (edited(target="rom"), "'target' is not"),
    }
    for manifest, needle in cases.values():
        (out / "kpgen.json").write_text(json.dumps(manifest))
        for command in ("run", "flash"):
            one_line(invoke(command, str(out), "--timeout", "5"), "is not as `kpgen emit` writes it", needle)
    for text, needle in (("[" * 100_000 + "]" * 100_000, "nested too deeply"), ("{", "unreadable"),
                         ("1" * 5000, "unreadable"), ('"\\ud800"', "lacks the board")):
        (out / "kpgen.json").write_text(text)
        one_line(invoke("run", str(out)), needle)
    (out / "kpgen.json").write_bytes(b'{"board": "\xff"}')
    one_line(invoke("run", str(out)), "unreadable")


def test_su_files_in_any_encoding(tmp_path):
    from kpgen.target import toolchain

    (tmp_path / "a.su").write_bytes(b"/home/\xe9t\xe9/proj/model.c:10:6:model_run\t48\tstatic\n"
                                    b"/x/model.c:20:6:model_init\t16\tstatic\n")
    assert toolchain.stack_usage(tmp_path) == {"model_run": 48, "model_init": 16}
    assert toolchain.stack_frames(tmp_path)["model_run"] == (48, "static")


# --------------------------------------------------------------------------- 5. forged and hidden text

FORGERIES = ["m4\nkpgen: error: all good", "\x1b[2J\x1b[31mred", "m4\rkpgen: ok", "a\u202eb", "\x07bell", "x\udcffy"]


@pytest.mark.parametrize("text", FORGERIES, ids=["newline", "escape", "return", "bidi", "bell", "undecodable"])
def test_user_text_cannot_forge_lines_or_drive_the_terminal(tmp_path, text):
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    vec = str(vectors(tmp_path / "v.npz"))
    one_line(invoke("emit", str(ckpt), "--board", text, "-o", str(tmp_path / "o"), "--vectors", vec), "unknown board")
    one_line(invoke("emit", str(tmp_path / text), "--board", "m4", "-o", str(tmp_path / "o")), "no such file")
    one_line(invoke("run", str(tmp_path / text)), "is not a directory")
    one_line(invoke("emit", str(ckpt), "--board", "m4", "-o", str(tmp_path / "o"), "--vectors", str(tmp_path / text)),
             "no such file")
    ck = tiny_checkpoint()
    ck["state_dict"][text] = torch.zeros(1)
    one_line(invoke("emit", str(save(ck, tmp_path / "t.pt")), "--board", "m4", "-o", str(tmp_path / "o"), "--vectors",
                    vec), "unexpected tensor")


def test_escape_keeps_printable_text():
    from kpgen import escape

    assert escape("model.pt: ok, é 中") == "model.pt: ok, é 中"
    assert escape("a\nb\x1b[0m\u202e\udcff") == "a\\nb\\x1b[0m\\u202e\\udcff"


@pytest.mark.parametrize("name", ["kpgen_runtime", "kpgen_target", "kp_matvec_s8", "startup", "main", "vectors",
                                  "_", "_model", "int", "while", "stdint", "string", "x" * 64, "9lives", "a-b"])
def test_names_that_cannot_compile_are_refused(tmp_path, name):
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    one_line(invoke("emit", str(ckpt), "--board", "m4", "-o", str(tmp_path / "o"), "--name", name,
                    "--vectors", str(vectors(tmp_path / "v.npz"))), "--name")
    assert not (tmp_path / "o").exists()


def test_the_makefile_ignores_opt_from_the_environment(tmp_path):
    out = _emit_project(tmp_path)
    for makefile_dir, args, env_opt, want, unwanted in ((out, [], "-O0", "-O2", "-O0"),
                                                         (out, ["OPT=-Os"], "-O0", "-Os", "-O0")):
        dry = subprocess.run(["make", "-n", "-C", str(makefile_dir), *args], capture_output=True, text=True,
                             env={**os.environ, "OPT": env_opt}, check=True).stdout
        compiles = [line for line in dry.splitlines() if " -c " in line]
        assert compiles and all(want in line.split() and unwanted not in line.split() for line in compiles), dry[:500]


@pytest.mark.parametrize("target", ["firmware", "lib"])
def test_the_makefiles_ignore_every_knob_from_the_environment(tmp_path, target):
    """CROSS, CC, WERROR, EXTRA_CFLAGS ... exported in the shell do not reach the build; on the command line
    they do."""
    ckpt = save(tiny_checkpoint(), tmp_path / "m.pt")
    out = tmp_path / "o"
    res = invoke("emit", str(ckpt), "--board", "m4", "-o", str(out), "--target", target,
                 "--vectors", str(vectors(tmp_path / "v.npz")))
    assert res.exit_code == 0, res.output
    hostile = {"CROSS": "evil-", "CC": "evilcc", "AR": "evilar", "WERROR": "-Wno-error", "ARCH": "-mevil",
               "EXTRA_CFLAGS": "-DEVIL_FROM_ENV", "EXTRA_LDFLAGS": "-Wl,--evil", "OBJCOPY": "evilcopy",
               "SIZE": "evilsize", "BOOT2": "evil.S"}
    dry = subprocess.run(["make", "-n", "-C", str(out)], capture_output=True, text=True,
                         env={**os.environ, **hostile}, check=True).stdout
    assert "arm-none-eabi-gcc" in dry and "-Werror" in dry, dry[:500]
    assert "evil" not in dry.lower(), [line for line in dry.splitlines() if "evil" in line.lower()][:3]
    given = subprocess.run(["make", "-n", "-C", str(out), "EXTRA_CFLAGS=-DFROM_COMMAND_LINE"], capture_output=True,
                           text=True, env={**os.environ, **hostile}, check=True).stdout
    assert "-DFROM_COMMAND_LINE" in given and "evil" not in given.lower()


class _TouchesMarker:
    """A pickled object that would run a shell command when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["emit", "compress", "train", "emit-test"])
def test_a_data_file_with_a_pickle_runs_no_code(tmp_path, command):
    """--data and --test read arrays only (allow_pickle=False: the dtype in the header is refused before any
    data is read), so an object array whose pickle would run a command is one line, and the command never runs."""
    marker = tmp_path / "ran"
    x = np.empty((2, 3, 1), dtype=object)
    x[...] = _TouchesMarker(marker)
    np.savez(tmp_path / "evil.npz", allow_pickle=True, x=x, y=np.array([0, 1]))
    sd = torch.nn.LSTM(1, 4).state_dict() | {f"fc.{k}": v for k, v in torch.nn.Linear(4, 2).state_dict().items()}
    torch.save(sd, tmp_path / "sd.pt")
    np.savez(tmp_path / "good.npz", x=np.ones((4, 3, 1), np.float32), y=np.array([0, 1, 0, 1]))
    evil = str(tmp_path / "evil.npz")
    args = {
        "emit": ["emit", str(tmp_path / "sd.pt"), "--board", "m4", "-o", str(tmp_path / "o"), "--data", evil],
        "emit-test": ["emit", str(tmp_path / "sd.pt"), "--board", "m4", "-o", str(tmp_path / "o"), "--data",
                      str(tmp_path / "good.npz"), "--test", evil],
        "compress": ["compress", str(tmp_path / "sd.pt"), "--method", "kp", "--ratio", "2", "--keep-dense", "wx",
                     "-o", str(tmp_path / "c.pt"), "--data", evil],
        "train": ["train", "-o", str(tmp_path / "t.pt"), "--hidden", "4", "--data", evil],
    }[command]
    one_line(invoke(*args), "evil.npz: x has dtype object", "kpgen reads no pickled objects")
    assert not marker.exists()
    assert not any((tmp_path / n).exists() for n in ("o", "c.pt", "t.pt"))
