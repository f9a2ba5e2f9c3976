"""The channel's one wait loop, for threads and asyncio tasks alike.

``_async_wait.py`` is the source; ``_sync_wait.py``, the loop of threads, is generated from
it by ``scripts/unasync.py`` (a test fails when it is stale), as the engine's loops are.

A call tries its step once under the channel's lock (``Channel._try_*``); a step that
cannot proceed says ``WAIT``, and the caller parks a waiter of its own (a receiver in
``getters``, a sender in ``_putters``) and tries again once woken. A receiver parks
*before* it looks in the senders' outboxes and claims (``Channel.scavenge``), and a sender
checks for parked receivers *after* it appends: a wake-up cannot be lost. A waiter that
leaves without trying again (interrupted, cancelled, timed out) passes on a wake-up it
may have been given (``Channel._abandon``). The seconds spent parked are counted for the
metrics (``get_waited``, ``put_waited``, under the lock).
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from ._waiters import TIMED_OUT, WAIT, AsyncWaiter, running_loop  # sync: from ._waiters import TIMED_OUT, WAIT, ThreadWaiter

__all__ = ["wait"]


async def wait(
    channel: Any, step: Any, args: tuple[Any, ...], getter: bool, timeout: float | None = None, held: Any = None,
) -> Any:
    """``step(*args)`` under ``channel``'s lock until it does not have to wait: its result
    (``TIMED_OUT`` if ``timeout`` seconds passed first, for a getter). A getter's batch is
    put in ``held`` (a ``Held``: ``take``) under the lock."""
    lock = channel._lock
    deadline = None if timeout is None else perf_counter() + timeout
    parked = 0.0  # when this caller parked, if it did: counted once it goes on
    while True:
        with lock:
            if parked:
                if getter:
                    channel.get_waited += perf_counter() - parked
                else:
                    channel.put_waited += perf_counter() - parked
                parked = 0.0
            result = step(*args)
            if result is WAIT:
                waiter = AsyncWaiter(running_loop())  # sync: waiter = ThreadWaiter()
                if getter:
                    # Park first, then look in outboxes and claims: a sender that appends
                    # after this look sees the waiter and flushes.
                    channel.getters.append(waiter)
                    result = channel.scavenge(args[0])
                    if result is not WAIT:
                        channel.getters.pop()
                else:
                    channel._putters.append(waiter)
            if result is not WAIT:
                if held is not None and result is not None:
                    held.take(channel, result)
                return result
        parked = perf_counter()
        try:
            if deadline is None:
                await waiter.future  # sync: waiter.wait()
            elif not await waiter.wait(deadline - perf_counter()):  # sync: elif not waiter.wait(max(0.0, deadline - perf_counter())):
                channel._abandon(waiter, getter)
                with lock:
                    result = step(*args)
                return TIMED_OUT if result is WAIT else result
        except BaseException:
            channel._abandon(waiter, getter)
            raise
