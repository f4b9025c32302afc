"""On-target validation (`kpgen emit --target validate`, `kpgen validate`): samples streamed over the UART under
QEMU on three UART families, every reply checked against the golden model, and damaged frames in either
direction detected, reported and never counted as results (docs/validate.md)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kpgen import KpgenError
from kpgen.cli import main
from kpgen.frontend.load import load_checkpoint
from kpgen.pipeline import test_set as load_test_set
from kpgen.pipeline import validate_project
from kpgen.target import serial, toolchain, validate

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(any(shutil.which(t) is None for t in toolchain.ALL_TOOLS),
                       reason="needs arm-none-eabi-gcc, make and qemu-system-arm"),
]

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "examples" / "digits-fastrnn.pt"


def one_line_error(res, *words: str) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kpgen: error: "), res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def emit_validate(board: str, out: Path, checkpoint: Path = DIGITS) -> Path:
    res = CliRunner().invoke(main, ["emit", str(checkpoint), "--board", board, "-o", str(out), "--target", "validate",
                                    "--samples", "3"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("validate")
    return {b: emit_validate(b, base / b) for b in ("m4", "m0", "netduinoplus2")}


# --------------------------------------------------------------------------------------------- the protocol


def test_frames_and_reader() -> None:
    """Frames as docs/validate.md lays them out; the reader passes text through and rejects damage."""
    pieces = validate.encode(validate.SAMPLE, 0x1ff, b"\x01\x02")
    frame = b"".join(pieces)
    assert frame[:6] == b"KVS\xff\x02\x00" and frame[6:8] == b"\x01\x02"
    assert struct.unpack("<I", frame[8:])[0] == zlib.crc32(frame[2:8])
    reply = b"".join(validate.encode(validate.RESULT, 7, bytes(range(20))))
    r = validate.Reader(max_payload=64)
    r.feed(b"KPGEN-VALIDATE hello\n" + reply[:5])
    assert r.next_frame() is None
    r.feed(reply[5:])
    f = r.next_frame()
    assert f == validate.Frame(validate.RESULT, 7, bytes(range(20))) and r.corrupt == 0
    assert bytes(r.text) == b"KPGEN-VALIDATE hello\n"
    bad = bytearray(reply)
    bad[10] ^= 1
    r.feed(bytes(bad) + reply)
    assert r.next_frame() == f and r.corrupt == 1  # the damaged copy is counted and skipped, the good one read


# --------------------------------------------------------------------------------------------- under QEMU


def test_validate_cmsdk_m4_200_samples(projects) -> None:
    """CMSDK UART (mps2-an386): 200 samples through the command line, every one bit-exact."""
    res = CliRunner().invoke(main, ["validate", str(projects["m4"]), "--samples", "200"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "200 sent, 200 checked against the integer reference" in out
    assert re.search(r"bit-exact +200/200 \(", out)
    assert "0 to the target, 0 from it, 0 replies lost; 0 samples sent again" in out
    assert re.search(r"time per inference +not measured \(emulator\)", out)
    assert "instructions per inference" in out and "exact, QEMU trace of one inference" in out
    assert out.rstrip().endswith("PASS: bit-exact")


@pytest.mark.parametrize("name", ["m0", "netduinoplus2"])
def test_validate_nrf51_and_stm32_200_samples(name: str, projects) -> None:
    """nRF51 UART (microbit) and STM32 USART (netduinoplus2): 200 samples, every one bit-exact, and the accuracy
    on target equals the golden model's on the same samples."""
    rep = validate_project(projects[name], samples=200)
    o = rep.outcome
    assert rep.passed and o.exact == 200 and o.checked == 200, o
    assert o.labelled == 200 and o.target_correct == o.golden_correct
    assert o.corrupt_to_target == o.corrupt_from_target == o.timeouts == o.resent == 0
    assert rep.instructions is not None and rep.instructions > 1000


def _faulty(**faults):
    return lambda elf, board: validate.FaultyLink(serial.QemuLink(elf, board, timeout=300), **faults)


def test_validate_detects_and_recovers_damaged_frames(projects) -> None:
    """A flipped byte to the target (its CRC check), a bad CRC, and a flipped byte in a reply (the host's CRC check)
    are each detected, reported, and the sample sent again: all results still bit-exact, none miscounted."""
    rep = validate_project(projects["netduinoplus2"], samples=12,
                           link_factory=_faulty(to_target={3}, bad_crc={7}, from_target={5}))
    o = rep.outcome
    assert rep.passed and o.exact == 12 and not o.mismatched and not o.unverified
    assert (o.corrupt_to_target, o.corrupt_from_target, o.resent) == (2, 1, 3)


def test_validate_without_retries_reports_damage_as_unverified(projects) -> None:
    """With no second attempt the damaged samples are unverified: never bit-exact, never a mismatch; FAIL."""
    rep = validate_project(projects["m4"], samples=12, retries=0,
                           link_factory=_faulty(to_target={3}, bad_crc={7}, from_target={5}))
    o = rep.outcome
    assert not rep.passed and o.exact == 9 and o.mismatched == [] and o.unverified == [3, 5, 7]
    text = validate.format_outcome(o, title="t", instructions=None, clock_hz=None)
    assert "unverified samples  3 (no checked reply after every retry: 3, 5, 7)" in text
    assert "2 to the target, 1 from it" in text and text.endswith("FAIL")


def test_validate_recovers_from_a_damaged_length(projects, tmp_path: Path) -> None:
    """A frame that claims one byte more than it carries leaves the target waiting: the reply times out, the
    host fills the frame, the target rejects it, and the sample goes again."""
    x = load_test_set(load_checkpoint(DIGITS), None)
    vec = tmp_path / "short.npz"
    np.savez(vec, x=x.x[:6, :7], y=x.y[:6])  # 7 of 8 steps: the claimed length is still within the firmware's limit
    rep = validate_project(projects["m0"], vectors=vec, timeout=3, link_factory=_faulty(longer={2}))
    o = rep.outcome
    assert rep.passed and o.exact == 6 and o.timeouts == 1 and o.resent == 1


def test_validate_reports_mismatches(projects, tmp_path: Path) -> None:
    """Checked against another model's reference, every sample is a mismatch: FAIL, exit status 1."""
    other = REPO / "examples" / "digits-fastgrnn-hkp.pt"
    res = CliRunner().invoke(main, ["validate", str(projects["m4"]), "--samples", "5", "--checkpoint", str(other)])
    assert res.exit_code == 1, res.output
    assert re.search(r"bit-exact +0/5 \(", res.output) and res.output.count("mismatch: sample") == 5
    assert res.output.rstrip().endswith("FAIL")


def test_validate_errors(projects, tmp_path: Path, monkeypatch) -> None:
    p = str(projects["m4"])
    # a test firmware is not a validation firmware, and `kpgen run` refuses a validation firmware
    fw = tmp_path / "fw"
    res = CliRunner().invoke(main, ["emit", str(DIGITS), "--board", "m4", "-o", str(fw), "--samples", "2"])
    assert res.exit_code == 0
    one_line_error(CliRunner().invoke(main, ["validate", str(fw)]), "is not a validation firmware", "--target validate")
    one_line_error(CliRunner().invoke(main, ["run", p]), "is a validation firmware", "kpgen validate")
    # a real board needs its serial line
    real = emit_validate("nucleo-f446re", tmp_path / "f446")
    one_line_error(CliRunner().invoke(main, ["validate", str(real)]), "is real hardware", "--port")
    # the checkpoint must be the one emitted from
    moved = tmp_path / "moved"
    shutil.copytree(projects["m4"], moved)
    m = json.loads((moved / "kpgen.json").read_text())
    m["checkpoint_path"] = str(tmp_path / "gone.pt")
    (moved / "kpgen.json").write_text(json.dumps(m))
    one_line_error(CliRunner().invoke(main, ["validate", str(moved)]), "is not there", "--checkpoint")
    changed = tmp_path / "changed.pt"
    shutil.copyfile(DIGITS, changed)
    m["checkpoint_path"], m["checkpoint_sha256"] = str(changed), "0" * 64
    (moved / "kpgen.json").write_text(json.dumps(m))
    one_line_error(CliRunner().invoke(main, ["validate", str(moved)]), "changed since", "emit the project again")
    # sequences longer than the firmware takes
    x = load_test_set(load_checkpoint(DIGITS), None)
    long = tmp_path / "long.npz"
    np.savez(long, x=np.concatenate([x.x[:2], x.x[:2]], axis=1))
    one_line_error(CliRunner().invoke(main, ["validate", p, "--vectors", str(long)]),
                   "have 16 steps, the firmware takes at most 8")
    # a port without pyserial names the extra; a port that does not exist is one line
    monkeypatch.setitem(sys.modules, "serial", None)
    one_line_error(CliRunner().invoke(main, ["validate", p, "--port", "/dev/kpgen-none"]),
                   "needs the 'serial' extra", "pip install 'kpgen[serial]'")
    monkeypatch.delitem(sys.modules, "serial")
    one_line_error(CliRunner().invoke(main, ["validate", p, "--port", str(tmp_path / "no-such-tty")]),
                   "cannot open serial port", "check the device name")


def test_validate_firmware_shape_checks() -> None:
    """The ready line's sizes are checked against the model before anything is sent."""

    class Fake:
        emulated = True
        description = "fake"

        def __init__(self):
            self.data = [b"KPGEN-VALIDATE ready inputs=8 classes=9 max_steps=8 payload=66 timer=1\n"]

        def read(self, n, timeout):
            return self.data.pop(0) if self.data else b""

        def write(self, data):
            pass

        def close(self):
            pass

    xq = np.zeros((1, 8, 8), np.int8)
    with pytest.raises(KpgenError, match="takes 8 inputs and gives 9 classes, the model 8 and 10"):
        validate.stream(Fake(), xq, np.zeros((1, 10), np.int32), np.zeros(1, np.uint32), np.zeros(1, np.int64))
