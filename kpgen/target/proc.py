"""Bounded child processes. Every program kpgen starts (make, objdump, qemu-system-arm, gdb-multiarch,
openocd) runs through here: in its own process group, with a timeout and a cap on the output kept, read
incrementally, and the whole group killed on every exit path (timeout, cap, exception, signal).

`stop_on_signals` turns SIGTERM, SIGHUP and SIGINT into `Stopped`, so that the `finally` clauses below run
and no emulator outlives the command that started it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kpgen import KpgenError

OUTPUT_CAP = 1 << 20  # bytes of a child's stdout (and, separately, stderr) kept before it is stopped
TOOL_TIMEOUT = 120.0  # seconds for objdump, nm, size, readelf and the like
BUILD_TIMEOUT = 900.0  # seconds for one `make` of an emitted project
_CHUNK = 1 << 16
_PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ for trace FIFOs: fewer wake-ups at 100+ MB/s
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Stopped(BaseException):
    """SIGTERM, SIGHUP or SIGINT arrived while `stop_on_signals` was active. A BaseException, so that no
    `except Exception` swallows it on its way up through the `finally` clauses that kill children."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While active, SIGTERM, SIGHUP and SIGINT raise Stopped in the main thread; the old handlers come back
    afterwards."""

    def handler(signum: int, frame: object) -> None:
        raise Stopped(signum)

    old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass(frozen=True)
class Completed:
    """What a bounded child left behind."""

    cmd: tuple[str, ...]
    returncode: int | None  # None when kpgen killed it (timeout, output cap, or `stop`)
    stdout: bytes  # at most the cap
    stderr: bytes  # at most the cap (empty when stderr was merged into stdout)
    timed_out: bool
    overflowed: bool  # stdout or stderr went past the cap
    seconds: float
    reason: str = ""  # why kpgen stopped it early (`Child.stop`), else ""

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")


def _nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


class Child:
    """One child process in its own process group, with its output read as it comes.

    Use as a context manager: leaving the block kills the group if the child still runs. `poll` reads what
    is there and enforces the deadline and the cap; `finish` polls until the child has exited.
    `extra` is one more file descriptor to read (a trace FIFO), handed chunk by chunk to a callback; it is
    not capped here (the callback can call `stop`).
    """

    def __init__(
        self,
        cmd: Sequence[str | Path],
        *,
        timeout: float,
        cap: int = OUTPUT_CAP,
        cwd: Path | str | None = None,
        merge_stderr: bool = False,
        on_output: Callable[[bytes], None] | None = None,
        extra: tuple[int, Callable[[bytes], None]] | None = None,
    ):
        self.cmd = tuple(str(c) for c in cmd)
        self.cap = cap
        self.on_output = on_output
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.timeout = timeout
        self.timed_out = False
        self.overflowed = False
        self.reason = ""
        self._killed = False
        self._buf: dict[str, bytearray] = {"out": bytearray(), "err": bytearray()}
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as e:
            raise KpgenError(f"cannot start {self.cmd[0]} ({e.strerror}); "
                             "check that it is installed and on PATH") from None
        self.sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            if stream is not None:
                _nonblocking(stream.fileno())
                self.sel.register(stream.fileno(), selectors.EVENT_READ, name)
        self._extra = extra
        if extra is not None:
            _nonblocking(extra[0])
            self.sel.register(extra[0], selectors.EVENT_READ, "extra")

    # -- control

    def stop(self, reason: str) -> None:
        """Kill the child's process group now and remember why."""
        if not self.reason:
            self.reason = reason
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group, once, while the leader is not yet reaped (so the id is ours)."""
        if self._killed or self.proc.returncode is not None:
            return
        self._killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    # -- reading

    def _keep(self, name: str, data: bytes) -> None:
        buf = self._buf[name]
        room = self.cap - len(buf)
        if len(data) > room:
            buf += data[: max(room, 0)]
            self.overflowed = True
            self.kill()
        else:
            buf += data
        if name == "out" and self.on_output is not None:
            self.on_output(data)

    def _read(self, fd: int, name: str) -> bool:
        """Read one chunk; False at end of file."""
        try:
            data = os.read(fd, _CHUNK if name != "extra" else _PIPE_SIZE)
        except BlockingIOError:
            return True
        if not data:
            return False
        if name == "extra":
            assert self._extra is not None
            self._extra[1](data)
        else:
            self._keep(name, data)
        return True

    def _streams_open(self) -> bool:
        return any(k.data != "extra" for k in self.sel.get_map().values())

    def poll(self, wait: float = 0.05) -> bool:
        """Read whatever arrives within `wait` seconds; True while the child may still produce output."""
        now = time.monotonic()
        if now >= self.deadline and self.proc.returncode is None and not self._killed:
            self.timed_out = True
            self.kill()
        if not self.sel.get_map():
            self.proc.poll()
            if self.proc.returncode is None:
                time.sleep(min(wait, 0.01))
            return self.proc.returncode is None
        for key, _ in self.sel.select(timeout=max(0.0, min(wait, self.deadline - now)) if not self._killed else 0.01):
            if not self._read(key.fd, key.data):
                if key.data == "extra" and self.proc.poll() is None:
                    time.sleep(0.005)  # a FIFO's writer has not opened it yet: EOF until it does
                    continue
                self.sel.unregister(key.fd)
        if not self._streams_open():
            self.proc.poll()
            if self.proc.returncode is not None and self._extra is not None and self._extra[0] in self.sel.get_map():
                self._drain_extra()
            return self.proc.returncode is None or bool(self.sel.get_map())
        return True

    def _drain_extra(self) -> None:
        assert self._extra is not None
        fd = self._extra[0]
        while True:
            try:
                data = os.read(fd, _PIPE_SIZE)
            except BlockingIOError:
                break
            if not data:
                break
            self._extra[1](data)
        self.sel.unregister(fd)

    def finish(self) -> Completed:
        """Poll until the child exits (or is killed at the deadline or the cap); its output and status."""
        while self.poll():
            pass
        self.proc.wait()
        return self.result()

    def result(self) -> Completed:
        killed = self._killed
        return Completed(
            cmd=self.cmd,
            returncode=None if killed else self.proc.returncode,
            stdout=bytes(self._buf["out"]),
            stderr=bytes(self._buf["err"]),
            timed_out=self.timed_out,
            overflowed=self.overflowed,
            seconds=time.monotonic() - self.start,
            reason=self.reason,
        )

    def close(self) -> None:
        self.kill()
        self.proc.wait()
        self.sel.close()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run(
    cmd: Sequence[str | Path],
    *,
    timeout: float = TOOL_TIMEOUT,
    cap: int = OUTPUT_CAP,
    cwd: Path | str | None = None,
    merge_stderr: bool = False,
    on_output: Callable[[bytes], None] | None = None,
) -> Completed:
    """Run cmd to completion, bounded in time and output, and return what it left behind."""
    with Child(cmd, timeout=timeout, cap=cap, cwd=cwd, merge_stderr=merge_stderr, on_output=on_output) as child:
        return child.finish()


def tool(cmd: Sequence[str | Path], what: str, timeout: float = TOOL_TIMEOUT, cap: int = 64 << 20) -> str:
    """stdout of a host tool (objdump, nm ...) that must succeed; a KpgenError naming `what` otherwise."""
    done = run(cmd, timeout=timeout, cap=cap)
    if done.timed_out:
        raise KpgenError(f"cannot {what}: {done.cmd[0]} took longer than {timeout:g} s; check the file and the tool")
    if done.overflowed:
        raise KpgenError(f"cannot {what}: {done.cmd[0]} printed more than {cap:,} bytes; check the file")
    if done.returncode != 0:
        why = done.err.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise KpgenError(f"cannot {what}: {why[0]}; build it again")
    return done.out


def make_fifo(directory: Path) -> tuple[Path, int, int]:
    """A FIFO in `directory`, opened for reading (non-blocking) plus a writer end we hold ourselves, so the
    reader sees no end of file before the real writer has opened it. Returns (path, read fd, our write fd)."""
    path = directory / "trace.fifo"
    os.mkfifo(path, 0o600)
    rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    with contextlib.suppress(OSError):  # the system's pipe size limit is lower: the default size works, only slower
        fcntl.fcntl(rfd, _F_SETPIPE_SZ, _PIPE_SIZE)
    return path, rfd, wfd
