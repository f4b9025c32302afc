"""On-target validation: stream test sequences to a `--target validate` firmware over its UART, and check every
result it sends back bit for bit against the integer reference (kpgen.reference.golden.run_model).

The framed protocol (magic "KV", type, sequence number, length, payload, CRC-32) is specified in
docs/validate.md and implemented on the target by templates/validate_main.c.j2. A frame that arrives damaged
in either direction is detected (CRC, length, timeout), counted, and its sample is sent again; a sample is
counted as bit-exact or as a mismatch only from a reply whose CRC checked, so corruption is never miscounted.
"""

from __future__ import annotations

import re
import statistics
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from kpgen import KpgenError
from kpgen.target.serial import Link, LinkClosed, write_pieces

MAGIC = b"KV"
SAMPLE, RESULT, ERROR, QUIT = ord("S"), ord("R"), ord("E"), ord("Q")
ERROR_CODES = {1: "bad CRC", 2: "length over the firmware's limit", 3: "unknown frame type",
               4: "steps out of range or length not steps x inputs"}
TIMERS = {0: "none", 1: "DWT cycle counter", 2: "SysTick"}
READY = re.compile(rb"KPGEN-VALIDATE ready inputs=(\d+) classes=(\d+) max_steps=(\d+) payload=(\d+) timer=(\d+)\r?\n")
_EXIT = re.compile(rb"KPGEN-EXIT status=(-?\d+)")
_FAULT = re.compile(rb"KPGEN-FAULT pc=0x([0-9a-fA-F]{8})")


def crc32(data: bytes) -> int:
    """CRC-32 of IEEE 802.3 (zlib's), the frames' checksum."""
    return zlib.crc32(data) & 0xFFFFFFFF


def encode(kind: int, seq: int, payload: bytes) -> list[bytes]:
    """One frame as the pieces the target reads one by one: magic (two single bytes), header, payload, CRC."""
    head = struct.pack("<BBH", kind, seq & 0xFF, len(payload))
    return [MAGIC[:1], MAGIC[1:], head, payload, struct.pack("<I", crc32(head + payload))]


@dataclass(frozen=True)
class Frame:
    kind: int
    seq: int
    payload: bytes


class Reader:
    """Frames out of the target's byte stream. Bytes outside frames are kept as text (the ready line, the
    end-of-run line, a fault report); a frame whose length or CRC is wrong is counted in `corrupt` and skipped."""

    def __init__(self, max_payload: int):
        self.max_payload = max_payload
        self.buf = bytearray()
        self.text = bytearray()
        self.corrupt = 0

    def feed(self, data: bytes) -> None:
        self.buf += data

    def _skip(self) -> None:
        """The bytes at the front looked like a frame and are not one: count it, drop the magic's first byte."""
        self.corrupt += 1
        self.text += self.buf[:1]
        del self.buf[:1]

    def next_frame(self) -> Frame | None:
        """The next whole, checked frame, or None until more bytes arrive."""
        while True:
            i = self.buf.find(MAGIC)
            if i < 0:
                keep = 1 if self.buf.endswith(MAGIC[:1]) else 0
                self.text += self.buf[: len(self.buf) - keep]
                del self.buf[: len(self.buf) - keep]
                return None
            self.text += self.buf[:i]
            del self.buf[:i]
            if len(self.buf) < 6:
                return None
            kind, seq, n = struct.unpack_from("<BBH", self.buf, 2)
            if kind not in (RESULT, ERROR) or n > self.max_payload:
                self._skip()
                continue
            if len(self.buf) < 10 + n:
                return None
            (crc,) = struct.unpack_from("<I", self.buf, 6 + n)
            if crc != crc32(bytes(self.buf[2 : 6 + n])):
                self._skip()
                continue
            frame = Frame(kind, seq, bytes(self.buf[6 : 6 + n]))
            del self.buf[: 10 + n]
            return frame

    def give_up(self) -> None:
        """Nothing more came: a partial frame at the front (its length field damaged) is corrupt."""
        if self.buf.startswith(MAGIC):
            self._skip()
            self.next_frame()


@dataclass
class Outcome:
    """What `kpgen validate` found: per-sample verdicts, corruption seen on the line, and timing."""

    samples: int  # sent
    link: str
    emulated: bool
    exact: int = 0  # replies equal to the reference in scores, class and state digest
    mismatched: list[str] = field(default_factory=list)  # one line per sample whose checked reply differed
    unverified: list[int] = field(default_factory=list)  # samples without a checked reply after every retry
    corrupt_to_target: int = 0  # frames the target reported damaged (CRC or length)
    corrupt_from_target: int = 0  # replies that arrived damaged (CRC, length)
    timeouts: int = 0  # waits for a reply that ended with nothing checked
    resent: int = 0
    labelled: int = 0
    target_correct: int = 0
    golden_correct: int = 0
    cycles: list[int] = field(default_factory=list)
    timer: str = "none"
    problem: str | None = None  # the firmware faulted, exited, or the link closed
    exit_status: int | None = None

    @property
    def checked(self) -> int:
        return self.exact + len(self.mismatched)

    @property
    def passed(self) -> bool:
        return self.problem is None and self.exact == self.samples and not self.mismatched and not self.unverified


def _scores(payload: bytes, classes: int) -> tuple[int, int, int, int, list[int]] | None:
    if len(payload) != 16 + 4 * classes:
        return None
    best, digest, cycles, timer = struct.unpack_from("<iIII", payload)
    return best, digest, cycles, timer, list(struct.unpack_from(f"<{classes}i", payload, 16))


def wait_ready(link: Link, reader: Reader, timeout: float) -> tuple[int, ...]:
    """Read until the firmware's ready line: (inputs, classes, max_steps, max payload, timer id)."""
    while True:
        m = READY.search(bytes(reader.text) + bytes(reader.buf))
        if m:
            reader.text.clear()
            reader.buf.clear()
            return tuple(int(g) for g in m.groups())
        data = link.read(4096, timeout)
        if not data:
            seen = (bytes(reader.text) + bytes(reader.buf))[-120:].decode("ascii", "replace")
            raise LinkClosed(f"no ready line (KPGEN-VALIDATE ready ...) within {timeout:g} s; the firmware said "
                             f"{seen!r}" if seen else f"no ready line within {timeout:g} s: the firmware sent nothing")
        reader.text += data


def _await(link: Link, reader: Reader, seq: int, timeout: float) -> Frame | str:
    """The reply to frame `seq`: a checked Frame, or why there is none ("corrupt", "timeout")."""
    before = reader.corrupt
    while True:
        frame = reader.next_frame()
        if frame is not None:
            if frame.seq == seq:
                return frame
            continue  # a late reply to an earlier attempt: its sample was settled already
        if reader.corrupt != before:
            return "corrupt"
        data = link.read(4096, timeout)
        if not data:
            reader.give_up()
            return "corrupt" if reader.corrupt != before else "timeout"
        reader.feed(data)


def _drain(link: Link, reader: Reader, quiet: float) -> None:
    """Read and drop everything until the line has been quiet for `quiet` seconds."""
    while link.read(4096, quiet):
        pass
    reader.buf.clear()


def stream(
    link: Link,
    xq: np.ndarray,
    scores: np.ndarray,
    digests: np.ndarray,
    labels: np.ndarray,
    *,
    timeout: float = 10.0,
    retries: int = 2,
    progress: Callable[[int], None] | None = None,
) -> Outcome:
    """Send every sample of xq [N, T, I] (int8) and compare each reply with the reference's scores [N, C],
    final state digests [N] and labels [N] (-1: none). A damaged frame or a missing reply sends the sample
    again, at most `retries` times; then the sample is reported unverified."""
    n, steps, inputs = xq.shape
    classes = scores.shape[1]
    out = Outcome(samples=n, link=getattr(link, "description", "?"), emulated=link.emulated)
    reader = Reader(max_payload=max(16 + 4 * classes, 4))
    got = wait_ready(link, reader, timeout)
    if got[:2] != (inputs, classes):
        raise KpgenError(f"the firmware takes {got[0]} inputs and gives {got[1]} classes, the model {inputs} and "
                         f"{classes}; flash the validation firmware emitted for this project")
    if steps > got[2]:
        raise KpgenError(f"the test sequences have {steps} steps, the firmware takes at most {got[2]}; give shorter "
                         "sequences, or emit the project with --vectors of this length")
    out.timer = TIMERS.get(got[4], "none")
    expected_best = np.argmax(scores, axis=1)
    try:
        _send_all(link, reader, out, xq, scores, digests, labels, expected_best, timeout, retries, progress)
    except LinkClosed as e:  # QEMU exited or the port went away mid-run: a failed run, not a usage error
        fault = _FAULT.search(bytes(reader.text + reader.buf))
        out.problem = (f"the firmware faulted (HardFault) at pc=0x{fault.group(1).decode()}" if fault
                       else f"the link closed during the run: {e}")
        done = out.checked + len(out.unverified)
        out.unverified += list(range(done, n))
        return out
    write_pieces(link, encode(QUIT, 0, b""))
    _finish(link, bytes(reader.text + reader.buf), out, timeout)
    return out


def _send_all(link: Link, reader: Reader, out: Outcome, xq: np.ndarray, scores: np.ndarray, digests: np.ndarray,
              labels: np.ndarray, expected_best: np.ndarray, timeout: float, retries: int,
              progress: Callable[[int], None] | None) -> None:
    """The sample loop of `stream`."""
    n, steps, _ = xq.shape
    classes = scores.shape[1]
    for i in range(n):
        seq = i & 0xFF
        payload = struct.pack("<H", steps) + np.ascontiguousarray(xq[i], dtype=np.int8).tobytes()
        for attempt in range(retries + 1):
            if attempt:
                out.resent += 1
            write_pieces(link, encode(SAMPLE, seq, payload))
            reply = _await(link, reader, seq, timeout)
            if isinstance(reply, str):
                if reply == "timeout":
                    out.timeouts += 1
                    # the target may be waiting inside a frame whose length was damaged: fill it, let it answer
                    link.write(bytes(len(payload) + 10))
                    _drain(link, reader, min(1.0, timeout))
                else:
                    out.corrupt_from_target += 1
                continue
            if reply.kind == ERROR:
                code = reply.payload[0] if reply.payload else 0
                if code in (1, 2):
                    out.corrupt_to_target += 1
                    continue
                out.problem = out.problem or f"the firmware rejected sample {i} ({ERROR_CODES.get(code, code)})"
                out.unverified.append(i)
                break
            parsed = _scores(reply.payload, classes)
            if parsed is None:
                out.corrupt_from_target += 1
                continue
            best, digest, cycles, timer, got_scores = parsed
            exact = (got_scores == [int(v) for v in scores[i]] and best == int(expected_best[i])
                     and digest == int(digests[i]))
            if exact:
                out.exact += 1
            else:
                out.mismatched.append(
                    f"sample {i}: scores {'equal' if got_scores == [int(v) for v in scores[i]] else 'differ'}, class "
                    f"{best} vs {int(expected_best[i])}, digest {digest:08x} vs {int(digests[i]):08x}")
            if labels[i] >= 0:
                out.labelled += 1
                out.target_correct += int(best == labels[i])
                out.golden_correct += int(expected_best[i] == labels[i])
            if timer != 0:
                out.cycles.append(cycles)
            break
        else:
            out.unverified.append(i)
        if progress is not None:
            progress(i + 1)


def _finish(link: Link, text_so_far: bytes, out: Outcome, timeout: float) -> None:
    """After the quit frame: read the end-of-run line (and a fault report, if any) into `out`."""
    text = bytearray(text_so_far)
    try:
        while not _EXIT.search(text):
            data = link.read(4096, timeout)
            if not data:
                break
            text += data
    except LinkClosed:
        pass
    m = _EXIT.search(text)
    fault = _FAULT.search(text)
    if fault:
        out.problem = f"the firmware faulted (HardFault) at pc=0x{fault.group(1).decode()}"
    elif not m and out.problem is None:
        out.problem = "the firmware did not confirm the end of the run (KPGEN-EXIT status=0) after the quit frame"
    if m:
        out.exit_status = int(m.group(1))
        if out.exit_status != 0 and out.problem is None:
            out.problem = f"the firmware exited with status {out.exit_status}"


def format_outcome(out: Outcome, *, title: str, instructions: int | None, clock_hz: int | None) -> str:
    """The report `kpgen validate` prints."""
    from kpgen.tables import text_table

    rows = [("samples", f"{out.samples} sent, {out.checked} checked against the integer reference")]
    rows.append(("bit-exact", f"{out.exact}/{out.samples} (scores, class and a digest of every layer's state at "
                              "every step)"))
    if out.labelled:
        rows.append(("on-target accuracy", f"{100 * out.target_correct / out.labelled:.2f}% of {out.labelled} "
                                           f"labelled (int8 golden {100 * out.golden_correct / out.labelled:.2f}% "
                                           "on the same samples)"))
    else:
        rows.append(("on-target accuracy", "n/a (no labels)"))
    rows.append(("corrupted frames", f"{out.corrupt_to_target} to the target, {out.corrupt_from_target} from it, "
                                     f"{out.timeouts} replies lost; {out.resent} samples sent again"))
    first = ", ".join(map(str, out.unverified[:10]))
    rows.append(("unverified samples", f"{len(out.unverified)}" + (
        f" (no checked reply after every retry: {first})" if out.unverified else "")))
    if instructions is not None:
        rows.append(("instructions per inference", f"{instructions:,} (exact, QEMU trace of one inference: sample 0 "
                                                   "of the emitted vectors)"))
    if out.emulated:
        rows.append(("time per inference", "not measured (emulator)"))
    elif out.cycles:
        med = statistics.median(out.cycles)
        when = f", {med / clock_hz * 1e6:,.1f} us at {clock_hz / 1e6:g} MHz" if clock_hz else ""
        rows.append(("time per inference", f"{med:,.0f} cycles median ({min(out.cycles):,} to {max(out.cycles):,} over "
                                           f"{len(out.cycles)} samples{when}; measured on hardware, {out.timer})"))
    else:
        rows.append(("time per inference", "not measured (no cycle counter on this core, or SysTick wrapped)"))
    lines = [title, ""] + text_table(rows, indent="  ")
    for line in out.mismatched[:10]:
        lines.append(f"  mismatch: {line}")
    if out.problem:
        lines.append(f"\nFAILED: {out.problem}")
    lines += ["", "PASS: bit-exact" if out.passed else "FAIL"]
    return "\n".join(lines)


class FaultyLink:
    """A test hook: a Link that damages chosen frames once, to show that damage in either direction is detected,
    reported and recovered from, never counted as a result. `to_target`: sample indices whose first frame gets
    one payload byte flipped (the target's CRC check rejects it); `bad_crc`: sample indices whose first frame
    gets a wrong CRC; `from_target`: sample indices whose first reply gets one byte flipped (the host's CRC
    check rejects it); `longer`: sample indices whose first frame claims one payload byte more than it has (the
    target waits for it: the host's reply timeout, then its fill bytes, recover)."""

    def __init__(self, link: Link, to_target: Iterable[int] = (), bad_crc: Iterable[int] = (),
                 from_target: Iterable[int] = (), longer: Iterable[int] = ()):
        self.link = link
        self.emulated = link.emulated
        self.description = getattr(link, "description", "?") + " (with injected faults)"
        self.to_target, self.bad_crc, self.from_target = set(to_target), set(bad_crc), set(from_target)
        self.longer = set(longer)
        self.sample = -1  # index of the sample frame last written (a frame sent again keeps its index)
        self._last = b""
        self._flip_in_at: int | None = None  # bytes still to pass before the one to flip

    def write(self, data: bytes) -> None:
        if len(data) >= 10 and data[:2] == MAGIC and data[2] == SAMPLE:
            if data != self._last:
                self.sample += 1
                self._last = data
            i = self.sample
            buf = bytearray(data)
            if i in self.to_target:
                self.to_target.discard(i)
                buf[8] ^= 0x01  # the first input byte after the 2-byte step count
            if i in self.longer:
                self.longer.discard(i)
                buf[4] = (buf[4] + 1) & 0xFF  # the length's low byte (payloads here are under 255 bytes)
            if i in self.bad_crc:
                self.bad_crc.discard(i)
                buf[-1] ^= 0xFF
            if i in self.from_target:
                self.from_target.discard(i)
                self._flip_in_at = 8  # a payload byte of the reply: inside the class index
            data = bytes(buf)
        self.link.write(data)

    def read(self, n: int, timeout: float) -> bytes:
        data = self.link.read(n, timeout)
        if self._flip_in_at is not None and data:
            if self._flip_in_at < len(data):
                buf = bytearray(data)
                buf[self._flip_in_at] ^= 0x40
                data = bytes(buf)
                self._flip_in_at = None
            else:
                self._flip_in_at -= len(data)
        return data

    def close(self) -> None:
        self.link.close()
