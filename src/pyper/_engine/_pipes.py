"""Message pipes to the worker processes pyper forks: whole messages of bytes over an
``os.pipe``, framed as ``multiprocessing.connection`` frames them (a 4-byte length; -1
then an 8-byte one from 2 GiB up).

Why not ``multiprocessing.Pipe``: importing ``multiprocessing.connection`` (tempfile,
shutil and the compression modules, subprocess) is about half of what a program's first
process stage costs before any worker starts, under ``fork``, where nothing needs to
pickle a pipe to pass it on. A worker started by the fork server or by spawn is given
``multiprocessing`` connections instead: both offer what ``Conn`` names, and the child's
loop (``_child``) and ``_workers.Child`` use nothing else.

Who owns what: each end belongs to one thread at a time (a relay, or a child's loop or
lifeline thread), as ``multiprocessing``'s connections do.
"""

from __future__ import annotations

import math
import os
import select
import struct
from typing import Protocol

__all__ = ["Conn", "Pipe", "pipe"]

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
#: Up to this size a message goes in one write with its header (one system call).
_JOINED = 1 << 16


class Conn(Protocol):
    """What a worker's pipes offer, ours or ``multiprocessing``'s."""

    def send_bytes(self, buf: bytes) -> None: ...

    def recv_bytes(self) -> bytes: ...

    def poll(self, timeout: float | None = 0.0) -> bool: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


def pipe() -> tuple[Pipe, Pipe]:
    """A one-way pipe: (read end, write end), neither inherited across exec."""
    r, w = os.pipe()
    return Pipe(r), Pipe(w)


class Pipe:
    """One end of a one-way pipe that carries whole messages."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise OSError("the pipe is closed")
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def send_bytes(self, buf: bytes) -> None:
        size = len(buf)
        header = _SHORT.pack(size) if size < 0x7FFFFFFF else _SHORT.pack(-1) + _LONG.pack(size)
        if size <= _JOINED:
            self._write(header + buf)
        else:
            self._write(header)
            self._write(buf)

    def _write(self, data: bytes) -> None:
        fd = self.fileno()
        written = os.write(fd, data)
        if written < len(data):
            view = memoryview(data)
            while written < len(data):
                written += os.write(fd, view[written:])

    def recv_bytes(self) -> bytes:
        """The next message; ``EOFError`` once the other end is closed."""
        size: int = _SHORT.unpack(self._read(4))[0]
        if size == -1:
            size = _LONG.unpack(self._read(8))[0]
        return self._read(size)

    def _read(self, size: int) -> bytes:
        fd = self.fileno()
        first = os.read(fd, size) if size else b""
        if len(first) == size:
            return first
        if not first:
            raise EOFError
        data = bytearray(size)  # a large message comes in pieces: read them in place
        data[: len(first)] = first
        view, got = memoryview(data), len(first)
        while got < size:
            n = os.readv(fd, [view[got:]])
            if n == 0:
                raise EOFError
            got += n
        view.release()
        return data  # type: ignore[return-value]  # a bytearray: what pickle.loads takes

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message (or the end of the stream) is there to read, waiting up to
        ``timeout`` seconds (``None``: until there is)."""
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
        return bool(poller.poll(ms))
