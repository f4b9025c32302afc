"""Byte links to a firmware's console UART: QEMU's serial port on a Unix socket, or a real board's serial line
through pyserial (the `serial` extra, imported only when a port is given).

Both offer the same three calls (write, read with a timeout, close), so the validation protocol
(kpgen.target.validate) runs unchanged over either. QEMU runs as a bounded child (kpgen.target.proc): it is
polled while the link waits, stopped at its deadline, and killed when the link closes.
"""

from __future__ import annotations

import select
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Protocol

from kpgen import KpgenError
from kpgen.target import proc, qemu
from kpgen.target.boards import Board


class LinkClosed(Exception):
    """The other end went away (QEMU exited or was stopped, the serial device vanished): a failed run."""


class Link(Protocol):
    """A byte stream to and from the firmware's UART."""

    emulated: bool  # True under QEMU: no wall-clock time on it means anything for the target
    description: str

    def write(self, data: bytes) -> None: ...

    def read(self, n: int, timeout: float) -> bytes:
        """Up to n bytes; b"" when nothing arrived within `timeout` seconds."""
        ...

    def close(self) -> None: ...


class QemuLink:
    """The firmware under QEMU, its console UART connected to a Unix socket that this side listens on."""

    emulated = True

    def __init__(self, elf: Path | str, board: Board, timeout: float, args: tuple[str, ...] = ()):
        self.description = f"QEMU {board.qemu_machine}"
        self._tmp = Path(tempfile.mkdtemp(prefix="kpgen-uart-"))
        self._conn: socket.socket | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.child: proc.Child | None = None
        try:
            path = self._tmp / "uart.sock"
            self._listener.bind(str(path))
            self._listener.listen(1)
            cmd = qemu.qemu_command(elf, board, args, console="uart", serial="chardev:kpgenuart")
            # QEMU connects to us (server=off): no port to pick, nothing another process can take first.
            cmd += ["-chardev", "socket,id=kpgenuart,path=" + str(path).replace(",", ",,")]
            self.child = proc.Child(cmd, timeout=timeout)
            self._conn = self._accept()
        except BaseException:
            self.close()
            raise

    def _why(self) -> str:
        assert self.child is not None
        done = self.child.result()
        err = done.err.strip().splitlines()
        if done.timed_out:
            return f"QEMU did not finish within {self.child.timeout:g} s and was stopped"
        if self.child.proc.returncode is not None:
            return f"QEMU exited with status {self.child.proc.returncode}" + (f" ({err[-1][:200]})" if err else "")
        return "QEMU closed the serial port"

    def _accept(self) -> socket.socket:
        assert self.child is not None
        self._listener.settimeout(0.05)
        while True:
            try:
                conn, _ = self._listener.accept()
                conn.setblocking(False)
                return conn
            except TimeoutError:  # socket.timeout
                if not self.child.poll(0.0):
                    raise LinkClosed(self._why()) from None

    def write(self, data: bytes) -> None:
        assert self._conn is not None and self.child is not None
        view = memoryview(data)
        while view:
            _, ready, _ = select.select([], [self._conn], [], 0.05)
            if ready:
                try:
                    view = view[self._conn.send(view):]
                except (BrokenPipeError, ConnectionResetError):
                    raise LinkClosed(self._why()) from None
            elif not self.child.poll(0.0):
                raise LinkClosed(self._why())

    def read(self, n: int, timeout: float) -> bytes:
        assert self._conn is not None and self.child is not None
        end = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self._conn], [], [], max(0.0, min(0.05, end - time.monotonic())))
            if ready:
                try:
                    data = self._conn.recv(n)
                except ConnectionResetError:
                    data = b""
                if not data:
                    raise LinkClosed(self._why())
                return data
            if not self.child.poll(0.0) and self.child.proc.returncode is not None:
                raise LinkClosed(self._why())
            if time.monotonic() >= end:
                return b""

    def wait_exit(self, timeout: float) -> proc.Completed:
        """Wait for QEMU to exit (at most `timeout` seconds, then it is killed) and return what it left."""
        assert self.child is not None
        self.child.deadline = min(self.child.deadline, time.monotonic() + timeout)
        return self.child.finish()

    def close(self) -> None:
        for s in (self._conn, self._listener):
            if s is not None:
                s.close()
        if self.child is not None:
            self.child.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


class SerialLink:
    """A real board's serial line (USB virtual COM port or adapter), through pyserial."""

    emulated = False

    def __init__(self, port: str, baud: int):
        from kpgen.extras import import_extra

        serial = import_extra("serial", "serial", "--port (a board's serial line)")
        self.description = f"serial port {port} at {baud} baud"
        try:
            self._port = serial.Serial(port, baud, timeout=0)
        except (serial.SerialException, OSError, ValueError) as e:
            raise KpgenError(f"cannot open serial port {port} ({e}); check the device name, the cable and the "
                             "permissions (the dialout group on Linux)") from None
        self._port.reset_input_buffer()

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except OSError as e:
            raise LinkClosed(f"the serial port failed ({e})") from None

    def read(self, n: int, timeout: float) -> bytes:
        end = time.monotonic() + timeout
        while True:
            try:
                data = self._port.read(n)
            except OSError as e:
                raise LinkClosed(f"the serial port failed ({e})") from None
            if data or time.monotonic() >= end:
                return bytes(data)
            time.sleep(0.002)

    def close(self) -> None:
        self._port.close()


GAP = 0.002  # seconds between the pieces of a frame on a real line


def write_pieces(link: Link, pieces: list[bytes]) -> None:
    """Send a frame's pieces (each one receive call on the target). On a real line they go out with a short
    gap in between: a UART that receives by DMA (nRF52 UARTE) arms each transfer only after the previous one
    ended, and drops what arrives in between (docs/validate.md). Under QEMU the line holds every byte."""
    if link.emulated:
        link.write(b"".join(pieces))
        return
    for i, piece in enumerate(pieces):
        if i:
            time.sleep(GAP)
        link.write(piece)
