"""A bounded channel that moves batches of items between stages.

One channel sits between two stages. Its ends are counted, as in trio's memory
channels: every sending worker holds one send end and every receiving worker one
receive end.

- Closing every send end means "no more items": receivers drain what is buffered,
  then see the end (``get`` returns ``None``).
- Closing every receive end means "nobody will read": buffered items are dropped
  and every blocked or later ``put`` raises ``Broken``.
- ``cancel()`` stops the channel for everybody: every blocked or later call
  raises ``Cancelled``. It is how a run shuts down on an error, an early exit, a
  Ctrl-C or a cancelled task; nothing polls a flag.

Items move as lists (batches). ``put`` hands a whole list over (the sender must
not touch it afterwards); ``get(n)`` takes up to ``n`` items that are waiting,
blocking only while there are none. The capacity counts items, not batches.

Both threads and asyncio tasks may wait on the same channel. A blocked thread
waits on a lock of its own; a blocked task awaits a future of its own, woken
directly on its loop's thread or through ``call_soon_threadsafe`` from any other.

Ordered stages use ``get_seq``/``put_seq``: every batch taken gets the next
sequence number, and outputs put under a sequence number are released to
receivers in sequence order (a reorder buffer). Items in the reorder buffer count
against the capacity, except that the oldest sequence is always admitted once
the visible part has room, so an ordered stage cannot deadlock.

Thread-safety: every field below is guarded by ``_lock`` (a plain
``threading.Lock``; no user code and no blocking call runs while it is held).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any, Final

__all__ = ["Broken", "Cancelled", "Channel"]


class Cancelled(Exception):
    """The run this channel belongs to was cancelled."""


class Broken(Exception):
    """Every receiver of this channel has left; nothing more will be read."""


class _ThreadWaiter:
    """A thread parked on a channel. ``wake`` may be called from any thread."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def wake(self) -> None:
        self._lock.release()

    def wait(self) -> None:
        # Interruptible by signals on POSIX, so Ctrl-C reaches a waiting caller.
        self._lock.acquire()


class _AsyncWaiter:
    """A task parked on a channel. ``wake`` may be called from any thread."""

    __slots__ = ("_future", "_loop", "_loop_thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()  # created on the loop's thread
        self._future: asyncio.Future[None] = loop.create_future()

    def wake(self) -> None:
        if threading.get_ident() == self._loop_thread:
            _resolve(self._future)
        else:
            try:
                self._loop.call_soon_threadsafe(_resolve, self._future)
            except RuntimeError:  # the loop is closed: nobody is left to wake
                pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_WAIT: Final = object()  # "cannot proceed yet": the caller parks and retries


class Channel:
    __slots__ = (
        "_lock",
        "_batches",
        "_size",
        "_capacity",
        "_senders",
        "_receivers",
        "_cancelled",
        "_getters",
        "_putters",
        "_next_get_seq",
        "_next_put_seq",
        "_pending",
        "_pending_size",
    )

    def __init__(self, capacity: int, senders: int, receivers: int) -> None:
        self._lock = threading.Lock()
        self._batches: deque[list[Any]] = deque()  # visible to receivers, FIFO
        self._size = 0  # items in _batches plus items in _pending
        self._capacity = capacity
        self._senders = senders  # open send ends; 0 = closed for sending
        self._receivers = receivers  # open receive ends; 0 = broken
        self._cancelled = False
        self._getters: deque[_ThreadWaiter | _AsyncWaiter] = deque()
        self._putters: deque[_ThreadWaiter | _AsyncWaiter] = deque()
        # Reorder buffer, used only through get_seq/put_seq.
        self._next_get_seq = 0  # sequence number of the next batch taken
        self._next_put_seq = 0  # oldest sequence not yet fully released
        self._pending: dict[int, tuple[list[list[Any]], bool]] = {}  # seq -> (chunks, last seen)
        self._pending_size = 0

    # -- state changes that wake others (called with _lock held) -------------

    def _wake_getter(self) -> None:
        if self._getters:
            self._getters.popleft().wake()

    def _wake_putter(self) -> None:
        if self._putters:
            self._putters.popleft().wake()

    def _wake_all(self) -> None:
        while self._getters:
            self._getters.popleft().wake()
        while self._putters:
            self._putters.popleft().wake()

    def _abandon(self, waiter: _ThreadWaiter | _AsyncWaiter, getter: bool) -> None:
        """A waiter leaves without retrying (interrupted or cancelled).

        If it was already woken, the wake-up was meant for whoever can use it:
        pass it on so that no item or free slot is left unnoticed.
        """
        with self._lock:
            queue = self._getters if getter else self._putters
            try:
                queue.remove(waiter)
            except ValueError:
                if getter:
                    self._wake_getter()
                else:
                    self._wake_putter()

    # -- the operations, as "try once" steps (called with _lock held) ---------

    def _try_put(self, items: list[Any]) -> object:
        if self._cancelled:
            raise Cancelled
        if self._receivers == 0:
            raise Broken
        size = self._size
        if size and size + len(items) > self._capacity:
            return _WAIT
        self._batches.append(items)
        self._size = size = size + len(items)
        self._wake_getter()
        if size < self._capacity:
            self._wake_putter()  # pass on the room a receiver made
        return None

    def _try_get(self, n: int) -> object:
        if self._cancelled:
            raise Cancelled
        batches = self._batches
        if not batches:
            if self._senders == 0:
                return None  # closed and drained: the end of the stream
            return _WAIT
        first = batches.popleft()
        if len(first) > n:
            taken = first[:n]
            del first[:n]
            batches.appendleft(first)
        else:
            taken = first  # the channel owns it; extend it in place
            while batches and len(taken) + len(batches[0]) <= n:
                taken.extend(batches.popleft())
        self._size -= len(taken)
        if batches:
            self._wake_getter()  # the rest is for another receiver
        self._wake_putter()
        return taken

    def _try_get_seq(self, n: int) -> object:
        taken = self._try_get(n)
        if taken is None or taken is _WAIT:
            return taken
        seq = self._next_get_seq
        self._next_get_seq = seq + 1
        return seq, taken

    def _try_put_seq(self, seq: int, items: list[Any], last: bool) -> object:
        if self._cancelled:
            raise Cancelled
        if self._receivers == 0:
            raise Broken
        if seq == self._next_put_seq:
            # The oldest sequence: admitted as soon as the visible part has room.
            visible = self._size - self._pending_size
            if visible and visible + len(items) > self._capacity:
                return _WAIT
            if items:
                self._batches.append(items)
                self._size += len(items)
            if last:
                self._release_following(seq + 1)
            if self._batches:
                self._wake_getter()
            return None
        size = self._size
        if size and size + len(items) > self._capacity:
            return _WAIT
        chunks, _ = self._pending.get(seq, ([], False))
        if items:
            chunks.append(items)
        self._pending[seq] = (chunks, last)
        self._size = size + len(items)
        self._pending_size += len(items)
        return None

    def _release_following(self, seq: int) -> None:
        """Make the reorder buffer visible from ``seq`` on, as far as it is complete."""
        pending = self._pending
        while True:
            self._next_put_seq = seq
            entry = pending.pop(seq, None)
            if entry is None:
                return
            chunks, last = entry
            for chunk in chunks:
                self._batches.append(chunk)
                self._pending_size -= len(chunk)
            if not last:
                return  # its worker goes on; its later chunks go straight out
            seq += 1

    # -- blocking wrappers -----------------------------------------------------

    def _sync(self, step: Any, getter: bool, *args: Any) -> Any:
        lock = self._lock
        while True:
            with lock:
                result = step(*args)
                if result is not _WAIT:
                    return result
                waiter = _ThreadWaiter()
                (self._getters if getter else self._putters).append(waiter)
            try:
                waiter.wait()
            except BaseException:
                self._abandon(waiter, getter)
                raise

    async def _async(self, step: Any, getter: bool, *args: Any) -> Any:
        lock = self._lock
        loop = asyncio.get_running_loop()
        while True:
            with lock:
                result = step(*args)
                if result is not _WAIT:
                    return result
                waiter = _AsyncWaiter(loop)
                (self._getters if getter else self._putters).append(waiter)
            try:
                await waiter._future
            except BaseException:
                self._abandon(waiter, getter)
                raise

    def put(self, items: list[Any]) -> None:
        """Hand ``items`` over, blocking while the channel is full."""
        self._sync(self._try_put, False, items)

    def get(self, n: int) -> list[Any] | None:
        """Take up to ``n`` waiting items, blocking while there are none; ``None`` at the end."""
        result: list[Any] | None = self._sync(self._try_get, True, n)
        return result

    def get_seq(self, n: int) -> tuple[int, list[Any]] | None:
        result: tuple[int, list[Any]] | None = self._sync(self._try_get_seq, True, n)
        return result

    def put_seq(self, seq: int, items: list[Any], last: bool) -> None:
        self._sync(self._try_put_seq, False, seq, items, last)

    async def aput(self, items: list[Any]) -> None:
        await self._async(self._try_put, False, items)

    async def aget(self, n: int) -> list[Any] | None:
        result: list[Any] | None = await self._async(self._try_get, True, n)
        return result

    async def aget_seq(self, n: int) -> tuple[int, list[Any]] | None:
        result: tuple[int, list[Any]] | None = await self._async(self._try_get_seq, True, n)
        return result

    async def aput_seq(self, seq: int, items: list[Any], last: bool) -> None:
        await self._async(self._try_put_seq, False, seq, items, last)

    # -- ends and cancellation -------------------------------------------------

    def close_send(self) -> None:
        """One sender is done. When the last one is, receivers see the end after draining."""
        with self._lock:
            self._senders -= 1
            if self._senders == 0:
                self._wake_all()

    def close_receive(self) -> None:
        """One receiver has left. When the last one has, senders get ``Broken``."""
        with self._lock:
            self._receivers -= 1
            if self._receivers == 0:
                self._drop()
                self._wake_all()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            self._drop()
            self._wake_all()

    def _drop(self) -> None:
        self._batches.clear()
        self._pending.clear()
        self._size = self._pending_size = 0
