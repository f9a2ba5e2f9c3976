"""Who waits on a channel, and how a wait-up reaches them: a thread parks on a lock of its
own, an asyncio task on a future of its own. ``wake`` may be called from any thread; a
task is woken directly on its loop's thread, or through ``call_soon_threadsafe`` from any
other. Both threads and tasks may wait on the same channel."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import asyncio

__all__ = ["STOPPED", "TIMED_OUT", "WAIT", "AsyncWaiter", "ThreadWaiter", "running_loop"]

#: "Cannot proceed yet": a step's answer; the caller parks and tries again when woken.
WAIT: Final = object()
#: What ``get_within``/``aget_within`` return when nothing came in time.
TIMED_OUT: Final = type("TimedOut", (), {"__repr__": lambda self: "TIMED_OUT", "__slots__": ()})()


class ThreadWaiter:
    """A thread parked on a channel. ``wake`` may be called from any thread."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def wake(self) -> None:
        self._lock.release()

    def wait(self, timeout: float = -1) -> bool:
        # Interruptible by signals on POSIX, so Ctrl-C reaches a waiting caller.
        return self._lock.acquire(timeout=timeout)


class AsyncWaiter:
    """A task parked on a channel. ``wake`` may be called from any thread."""

    __slots__ = ("future", "_loop", "_loop_thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()  # created on the loop's thread
        self.future: asyncio.Future[None] = loop.create_future()

    def wake(self) -> None:
        if threading.get_ident() == self._loop_thread:
            _resolve(self.future)
        else:
            try:
                self._loop.call_soon_threadsafe(_resolve, self.future)
            except RuntimeError:  # the loop is closed: nobody is left to wake
                pass

    async def wait(self, timeout: float) -> bool:
        """Wait to be woken, at most ``timeout`` seconds: whether it was."""
        asyncio: Any = sys.modules["asyncio"]
        try:
            await asyncio.wait_for(asyncio.shield(self.future), max(0.0, timeout))
        except TimeoutError:
            return False
        return True


class _Stopped:
    """Stands in a cancelled or broken channel's ``getters``, so that a sender's per-item
    "is a receiver waiting?" check turns true and its next flush raises: a fast generator
    stops at its next item, at no cost on the hot path."""

    __slots__ = ()

    def wake(self) -> None:
        pass


STOPPED: Final = _Stopped()


def running_loop() -> asyncio.AbstractEventLoop:
    # Not imported at the top: a program that runs only sync pipelines never imports
    # asyncio. Only a task that parks gets here, and asyncio is loaded then (a lookup in
    # sys.modules costs far less than an import statement on this path).
    loop: asyncio.AbstractEventLoop = sys.modules["asyncio"].get_running_loop()
    return loop


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
