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

Items move as lists (batches), but nothing ready is held back by a batch:

- A sender collects outputs in its *outbox*, a list shown to the channel while
  it may hold outputs behind a later call (``show``), and hands it over with
  ``flush`` after each input batch. Whenever a receiver is parked it flushes at
  once (one truthiness check per item, no lock), and a receiver that finds the
  channel empty takes what is in the shown outboxes before it parks. So an output
  is never held back by its worker's next call, however slow.
- A receiver takes up to ``n`` items with ``get(n)``, blocking only while there
  are none. The list iterator over its batch is its *claim*. A worker that sees a
  sibling parked, before its next call, hands half of what it has not started
  back to the channel and wakes the sibling (``wake_idle``); and, in a build with
  a GIL, a receiver that finds nothing else steals half of what a sibling has
  claimed (``share``) but not started, even while that sibling is blocked in a
  call. So no item waits behind a blocked call while a worker is idle.

Lock-free accesses, and why they are safe with or without the GIL:
- An outbox is appended to only by its worker and emptied from the front only
  under ``_lock``: ``list.append``, a slice and ``del`` of a slice are each atomic
  (under the GIL, and in a free-threaded build where a list locks itself per
  operation), and appends land after whatever the remover took.
- A claim's iterator is advanced by its worker's ``for`` loop; ``wake_idle`` runs in
  that same worker. Thieves advance it too, under ``_lock``, only where the GIL
  makes ``next()`` on a list iterator atomic: a free-threaded build does not
  promise that for an iterator shared between threads (an item could be taken
  twice), so there stealing is off (``_STEAL``) and only the owner shares.
- ``getters`` is read without the lock by senders (its length): a stale read only
  makes a flush one item early or late. ``_capacity`` and ``_receivers`` are read
  without it by ``pace``: a stale value only delays an adjustment by a batch.
A receiver registers its waiter *before* it looks in the outboxes, and a sender
checks for waiters *after* it appends, so a wake-up cannot be lost. The capacity
counts items in batches and reorder buffers, not in outboxes or claims (each
holds at most one batch).

Both threads and asyncio tasks may wait on the same channel. A blocked thread
waits on a lock of its own; a blocked task awaits a future of its own, woken
directly on its loop's thread or through ``call_soon_threadsafe`` from any other.

Ordered stages use ``get_seq``/``flush_seq``: every batch taken gets the next
sequence number, and outputs flushed under a sequence number are released to
receivers in sequence order (a reorder buffer); their outboxes and claims are
not shared. Items in the reorder buffer count
against the capacity, except that the oldest sequence is always admitted once
the visible part has room, so an ordered stage cannot deadlock.

Thread-safety: every field below is guarded by ``_lock`` (a plain
``threading.Lock``; no user code and no blocking call runs while it is held).
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from itertools import islice
from operator import length_hint
from time import perf_counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from ._errors import Broken, Cancelled

if TYPE_CHECKING:
    import asyncio

__all__ = ["Channel", "Held"]


class _ThreadWaiter:
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


class _AsyncWaiter:
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


def _running_loop() -> asyncio.AbstractEventLoop:
    # Not imported at the top: a program that runs only sync pipelines never imports
    # asyncio. Only a task that parks gets here, and asyncio is loaded then (a lookup
    # in sys.modules costs far less than an import statement on this path).
    loop: asyncio.AbstractEventLoop = sys.modules["asyncio"].get_running_loop()
    return loop


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Held:
    """Where a receiver keeps the batch it works through: ``get(n, held)`` puts each batch
    it takes there, under the channel's lock, and calling it (a hook of the run's
    cancellation) empties that batch, so the receiver's ``for`` over it ends and no further
    call starts. Set under the lock, a batch taken is always there by the time the
    channel's own ``cancel`` returns (no later get succeeds): the hook, which runs after the
    channels are cancelled, empties the last one. Written by the receiver's gets, emptied
    by the hook (``list.clear`` is one operation: atomic under the GIL, and a list locks
    itself per operation without it)."""

    __slots__ = ("batch",)

    def __init__(self) -> None:
        self.batch: list[Any] = []

    def __call__(self) -> None:
        self.batch.clear()


_WAIT: Final = object()  # "cannot proceed yet": the caller parks and retries
#: What ``get_within``/``aget_within`` return when nothing came in time.
TIMED_OUT: Final = type("TimedOut", (), {"__repr__": lambda self: "TIMED_OUT", "__slots__": ()})()

#: Whether receivers may advance a sibling's claim (see the module docstring): only where a
#: GIL makes a list iterator's ``next()`` atomic.
_STEAL: Final = getattr(sys, "_is_gil_enabled", lambda: True)()

#: An unthrottled edge holds about this long of its receivers' work (``Channel.pace``).
PACE_SECONDS = 0.1
#: ... and at most this many items (with no throttle set by the user).
MAX_CAPACITY = 4096


class _Stopped:
    """Stands in ``getters`` of a cancelled or broken channel, so that a sender's
    per-item "is a receiver waiting?" check turns true and its next flush raises:
    a fast generator stops at its next item, at no cost on the hot path."""

    __slots__ = ()

    def wake(self) -> None:
        pass


_STOPPED: Final = _Stopped()


class Channel:
    __slots__ = (
        "_lock",
        "_batches",
        "_size",
        "_capacity",
        "_senders",
        "_receivers",
        "_cancelled",
        "getters",
        "_putters",
        "_outboxes",
        "_claims",
        "_reordered",
        "_sequenced",
        "_next_get_seq",
        "_next_put_seq",
        "_reorder",
        "_reorder_size",
        "_reserve",
        "_pace",
        "_ahead",
        "_seq_boxes",
        "_retiring",
        "_retired",
        "taken",
        "get_waited",
        "put_waited",
    )

    def __init__(
        self,
        capacity: int,
        senders: int,
        receivers: int,
        reordered: bool = False,
        sequenced: bool = False,
        batch: int = 1,
        pace: float | None = None,
        ahead: int = 0,
    ) -> None:
        self._lock = threading.Lock()
        self._batches: deque[list[Any]] = deque()  # visible to receivers, FIFO
        self._size = 0  # items in _batches plus items in _reorder
        self._capacity = capacity
        self._senders = senders  # open send ends; 0 = closed for sending
        self._receivers = receivers  # open receive ends; 0 = broken
        self._cancelled = False
        # Parked receivers. Public so that senders can check it without a lock
        # (a stale read only makes a flush early or late by one item).
        self.getters: deque[_ThreadWaiter | _AsyncWaiter | _Stopped] = deque()
        self._putters: deque[_ThreadWaiter | _AsyncWaiter] = deque()
        # Senders' outboxes that may hold outputs between flushes, by id (shown at the start of
        # a batch that can leave outputs behind a later call, hidden by its last flush); for
        # a reordered channel by the sequence number of the batch instead.
        self._outboxes: dict[int, list[Any]] = {}
        self._seq_boxes: dict[int, list[Any]] = {}
        # Receivers' claims on multi-item batches, by id (pruned when exhausted), unless sequenced.
        self._claims: dict[int, list[Iterator[Any] | None]] = {}
        self._reordered = reordered  # senders use flush_seq: outputs are released in order
        self._sequenced = sequenced  # receivers use get_seq: their batches are numbered
        self._next_get_seq = 0  # sequence number of the next batch taken
        self._next_put_seq = 0  # oldest sequence not yet fully released
        self._reorder: dict[int, tuple[list[list[Any]], bool]] = {}  # seq -> (chunks, last seen)
        self._reorder_size = 0
        # Room the reorder buffer leaves for the oldest sequence: one batch.
        self._reserve = min(batch, capacity) if reordered else 0
        # Capacity follows the receivers' pace (``pace``) on an edge with no throttle of the
        # user's: it holds about this many seconds of their work (0: one batch each).
        self._pace = None if reordered else pace
        self._ahead = ahead  # if set, at most this many batches per receiver (as they pace)
        # Counters for metrics (pyper.observe), under _lock, counted per batch: items the
        # receivers took (from the batches or a sender's outbox: not what one took from a
        # sibling's claim, which was counted when the sibling took it), and the seconds
        # receivers and senders spent parked.
        self.taken = 0
        self.get_waited = 0.0
        self.put_waited = 0.0
        # Receivers asked to leave (``retire``): the next ones that would park are given the
        # end of the stream instead, while another receiver stays; ``_retired`` counts those
        # given it that have not closed their end yet (only a retiree closes its receive end
        # while a stage runs on: the others close theirs at the end of the stream).
        self._retiring = 0
        self._retired = 0

    @property
    def queued(self) -> int:
        """Items waiting in the channel (a plain read, for metrics)."""
        return self._size

    @property
    def receivers(self) -> int:
        """Open receive ends (a plain read): a retiring worker's counts until it has left."""
        return self._receivers

    @property
    def closed(self) -> bool:
        """Every sender has closed its end (a plain read)."""
        return self._senders == 0

    @property
    def parked(self) -> tuple[int, int]:
        """(receivers, senders) parked now: idle for input, and blocked for room (plain
        reads, for the sizer of adaptive workers)."""
        return len(self.getters), len(self._putters)

    # -- registration (per batch, and only where it can matter) ----------------------
    # A receiver that finds the channel empty looks only at what is registered, so its
    # cost follows the workers that hold something, not all workers (10 000 async
    # workers with one-item batches register nothing).

    def show(self, box: list[Any], seq: int | None) -> None:
        """A sender starts a batch whose outputs may wait in ``box`` behind a later call:
        receivers may take them from there (for a reordered channel, only while ``seq``
        is the oldest sequence). Hidden again by the batch's last flush."""
        with self._lock:
            if seq is None:
                self._outboxes[id(box)] = box
            else:
                self._seq_boxes[seq] = box

    def share(self, slot: list[Iterator[Any] | None]) -> None:
        """A receiver holds an iterator over a multi-item batch in ``slot``: an idle
        sibling may take half of what it has not started."""
        if not self._sequenced:
            with self._lock:
                self._claims[id(slot)] = slot

    def pace(self, n: int, seconds: float) -> None:
        """A receiver took ``seconds`` over ``n`` items: on an edge with no throttle of the
        user's, hold about the channel's ``pace`` seconds of the receivers' work (at least
        a batch per receiver, at most ``ahead`` batches per receiver if set, and at most
        ``MAX_CAPACITY``), so that a slow or heavy consumer never has a large backlog. Called once per batch, without the lock unless it changes."""
        if self._pace is None:
            return
        receivers = max(self._receivers, 1)
        floor = receivers * n
        target = int(self._pace * floor / seconds) if seconds > 0 else MAX_CAPACITY
        if self._ahead:
            target = min(target, self._ahead * floor)
        capacity = max(floor, min(MAX_CAPACITY, target))
        current = self._capacity
        if 4 * capacity < 3 * current or 4 * capacity > 5 * current:  # hysteresis: +-25%
            with self._lock:
                self._capacity = capacity
                if capacity > current:
                    self._wake_putter()

    def widen(self, capacity: int) -> None:
        """Hold at least ``capacity`` items from now on (until ``pace`` adjusts it): a remote
        executor that knows its batches' size from the last run takes them whole at once."""
        with self._lock:
            if capacity > self._capacity:
                self._capacity = min(capacity, MAX_CAPACITY)
                self._wake_putter()

    # -- waking (called with _lock held) -------------------------------------------

    def _wake_getter(self) -> None:
        if self.getters and not self._stopped():
            self.getters.popleft().wake()

    def _wake_putter(self) -> None:
        if self._reordered:
            # Only the oldest sequence may be able to go on: wake every sender.
            while self._putters:
                self._putters.popleft().wake()
        elif self._putters:
            self._putters.popleft().wake()

    def _wake_all(self) -> None:
        while self.getters:
            self.getters.popleft().wake()
        while self._putters:
            self._putters.popleft().wake()
        if self._stopped():
            self.getters.append(_STOPPED)

    def _stopped(self) -> bool:
        return self._cancelled or self._receivers == 0

    def wake_idle(self, claimed: Iterator[Any]) -> None:
        """A receiver about to start its next item sees a sibling parked: it hands back
        half of the items left in ``claimed`` (its own iterator) and wakes the sibling."""
        left = length_hint(claimed)
        if left:
            with self._lock:
                if self.getters and not self._stopped():
                    shared = list(islice(claimed, (left + 1) // 2))
                    if shared:
                        self._batches.appendleft(shared)
                        self._size += len(shared)
                        self.taken -= len(shared)  # counted again when a sibling takes them
                    self._wake_getter()

    def give_back(self, slot: list[Iterator[Any] | None]) -> None:
        """A receiver leaving early returns the items it took but did not start.

        The claim leaves its slot and its items enter the channel in one step under the
        lock: a sibling looking for work sees them in one place or the other, never in
        neither (it would take the end of the stream for real, and the items be lost)."""
        with self._lock:
            claimed, slot[0] = slot[0], None
            items = list(claimed) if claimed is not None else []
            if items and not self._stopped() and self._receivers > 1:
                self._batches.appendleft(items)
                self._size += len(items)
                self.taken -= len(items)  # counted again when a sibling takes them
                self._wake_getter()

    def _abandon(self, waiter: _ThreadWaiter | _AsyncWaiter, getter: bool) -> None:
        """A waiter leaves without retrying (interrupted or cancelled).

        If it was already woken, the wake-up was meant for whoever can use it:
        pass it on so that no item or free slot is left unnoticed.
        """
        with self._lock:
            queue = self.getters if getter else self._putters
            try:
                queue.remove(waiter)
            except ValueError:
                if getter:
                    self._wake_getter()
                else:
                    self._wake_putter()

    # -- the operations, as "try once" steps (called with _lock held) ----------------

    def _check(self) -> None:
        if self._cancelled:
            raise Cancelled
        if self._receivers == 0:
            raise Broken

    def _try_put(self, items: list[Any]) -> object:
        self._check()
        size = self._size
        if size and size + len(items) > self._capacity:
            return _WAIT
        self._batches.append(items)
        self._size = size = size + len(items)
        self._wake_getter()
        if size < self._capacity:
            self._wake_putter()  # pass on the room a receiver made
        return None

    def _try_flush(self, box: list[Any], last: bool) -> object:
        k = len(box)
        if k == 0:
            if self._cancelled:
                raise Cancelled
            result = None
        else:
            result = self._try_put(box[:k])
            if result is None:
                del box[:k]  # the worker may have appended more meanwhile: keep those
        if last and result is None:
            self._outboxes.pop(id(box), None)
        return result

    def _try_get(self, n: int, retire: bool = True) -> object:
        if self._cancelled:
            raise Cancelled
        if retire and self._retiring and self._receivers - self._retired > 1:
            self._retiring -= 1
            self._retired += 1
            return None  # the end for this receiver: it was asked to retire
        batches = self._batches
        if not batches:
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
        self.taken += len(taken)
        if batches:
            self._wake_getter()  # the rest is for another receiver
        self._wake_putter()
        return taken

    def _scavenge(self, n: int) -> Any:
        """Nothing is in the channel: take ready outputs from the senders' outboxes,
        or else half of what a sibling has claimed but not started."""
        taken: list[Any] = []
        if self._reordered:
            # Only the oldest sequence's outputs may go out, and they may go now.
            oldest = self._seq_boxes.get(self._next_put_seq)
            if oldest:
                taken = oldest[:n]
                del oldest[: len(taken)]
        else:
            for box in self._outboxes.values():
                k = min(len(box), n - len(taken))
                if k:
                    taken += box[:k]
                    del box[:k]
                    if len(taken) >= n:
                        break
        if taken:
            self.taken += len(taken)
            # A sender parked in flush may be waiting for room for what was just taken.
            while self._putters:
                self._putters.popleft().wake()
            return taken
        most, richest = 0, None
        spent = []
        for key, slot in self._claims.items():
            it = slot[0]
            left = length_hint(it) if it is not None else 0
            if left > most:
                most, richest = left, it
            elif not left:
                spent.append(key)
        for key in spent:
            del self._claims[key]
        if richest is not None:
            if not _STEAL:
                # Its owner shares it, or gives it back when it leaves (and wakes us);
                # until then the stream has not ended, however closed the channel is.
                return _WAIT
            stolen = list(islice(richest, min(n, (most + 1) // 2)))
            if stolen:
                return stolen
        if self._senders == 0:
            return None  # closed and drained: the end of the stream
        return _WAIT

    def _try_get_seq(self, n: int) -> object:
        taken = self._try_get(n)
        if taken is None or taken is _WAIT:
            return taken
        seq = self._next_get_seq
        self._next_get_seq = seq + 1
        return seq, taken

    def _try_flush_seq(self, seq: int, box: list[Any], last: bool) -> object:
        self._check()
        k = len(box)
        if k == 0 and not last:
            return None
        size = self._size
        if seq == self._next_put_seq:
            # The oldest sequence waits only while there is something visible to drain:
            # later sequences left room for one batch of it (see below).
            if size - self._reorder_size and size + k > self._capacity:
                return _WAIT
            if k:
                self._batches.append(box[:k])
                self._size = size + k
            if last:
                self._seq_boxes.pop(seq, None)
                self._release_following(seq + 1)
                self._wake_putter()  # the next oldest may be parked
            if self._batches:
                self._wake_getter()
        else:
            if k and size + k > self._capacity - self._reserve:
                return _WAIT
            chunks, _ = self._reorder.get(seq, ([], False))
            if k:
                chunks.append(box[:k])
            self._reorder[seq] = (chunks, last)
            if last:
                self._seq_boxes.pop(seq, None)
            self._size = size + k
            self._reorder_size += k
        del box[:k]
        return None

    def _release_following(self, seq: int) -> None:
        """Make the reorder buffer visible from ``seq`` on, as far as it is complete."""
        reorder = self._reorder
        while True:
            self._next_put_seq = seq
            entry = reorder.pop(seq, None)
            if entry is None:
                return
            chunks, last = entry
            for chunk in chunks:
                self._batches.append(chunk)
                self._reorder_size -= len(chunk)
            if not last:
                return  # its worker goes on; its later chunks go straight out
            seq += 1

    # -- blocking wrappers ---------------------------------------------------------

    def _sync(self, step: Any, *args: Any) -> Any:
        """Retry a put-side ``step`` until it does not have to wait."""
        lock = self._lock
        parked = 0.0  # when this sender parked, if it did: counted once it goes on
        while True:
            with lock:
                if parked:
                    self.put_waited += perf_counter() - parked
                    parked = 0.0
                result = step(*args)
                if result is not _WAIT:
                    return result
                waiter = _ThreadWaiter()
                self._putters.append(waiter)
            parked = perf_counter()
            try:
                waiter.wait()
            except BaseException:
                self._abandon(waiter, False)
                raise

    def _sync_get(self, step: Any, n: int, timeout: float | None = None, held: Held | None = None) -> Any:
        lock = self._lock
        deadline = None if timeout is None else perf_counter() + timeout
        parked = 0.0  # when this receiver parked, if it did: counted once it goes on
        while True:
            with lock:
                if parked:
                    self.get_waited += perf_counter() - parked
                    parked = 0.0
                result = step(n)
                if result is not _WAIT:
                    if held is not None and result is not None:
                        held.batch = result if type(result) is list else result[1]
                    return result
                # Park first, then look in outboxes and claims: a sender that
                # appends after this look sees the waiter and flushes.
                waiter = _ThreadWaiter()
                self.getters.append(waiter)
                result = self._scavenge(n)
                if result is not _WAIT:
                    self.getters.pop()
                    if held is not None and result is not None:
                        held.batch = result
                    if result is not None and self._sequenced:
                        result = self._number(result)
                    return result
            parked = perf_counter()
            try:
                if deadline is None:
                    waiter.wait()
                elif not waiter.wait(max(0.0, deadline - perf_counter())):
                    self._abandon(waiter, True)
                    with lock:
                        result = step(n)
                    return TIMED_OUT if result is _WAIT else result
            except BaseException:
                self._abandon(waiter, True)
                raise

    async def _async(self, step: Any, *args: Any) -> Any:
        lock = self._lock
        parked = 0.0
        while True:
            with lock:
                if parked:
                    self.put_waited += perf_counter() - parked
                    parked = 0.0
                result = step(*args)
                if result is not _WAIT:
                    return result
                waiter = _AsyncWaiter(_running_loop())
                self._putters.append(waiter)
            parked = perf_counter()
            try:
                await waiter.future
            except BaseException:
                self._abandon(waiter, False)
                raise

    async def _async_get(self, step: Any, n: int, timeout: float | None = None, held: Held | None = None) -> Any:
        lock = self._lock
        deadline = None if timeout is None else perf_counter() + timeout
        parked = 0.0
        while True:
            with lock:
                if parked:
                    self.get_waited += perf_counter() - parked
                    parked = 0.0
                result = step(n)
                if result is not _WAIT:
                    if held is not None and result is not None:
                        held.batch = result if type(result) is list else result[1]
                    return result
                waiter = _AsyncWaiter(_running_loop())
                self.getters.append(waiter)
                result = self._scavenge(n)
                if result is not _WAIT:
                    self.getters.pop()
                    if held is not None and result is not None:
                        held.batch = result
                    if result is not None and self._sequenced:
                        result = self._number(result)
                    return result
            parked = perf_counter()
            try:
                if deadline is None:
                    await waiter.future
                else:
                    asyncio = sys.modules["asyncio"]
                    try:
                        await asyncio.wait_for(asyncio.shield(waiter.future), max(0.0, deadline - perf_counter()))
                    except TimeoutError:
                        self._abandon(waiter, True)
                        with lock:
                            result = step(n)
                        return TIMED_OUT if result is _WAIT else result
            except BaseException:
                self._abandon(waiter, True)
                raise

    def _number(self, taken: list[Any]) -> tuple[int, list[Any]]:
        seq = self._next_get_seq
        self._next_get_seq = seq + 1
        return seq, taken

    def put(self, items: list[Any]) -> None:
        """Hand ``items`` over (the caller gives the list up), blocking while the channel is full."""
        self._sync(self._try_put, items)

    def flush(self, box: list[Any], last: bool) -> None:
        """Hand over what ``box`` (an outbox) holds, blocking while the channel is full;
        ``last``: the batch is done (the box is hidden from receivers again)."""
        self._sync(self._try_flush, box, last)

    def flush_seq(self, seq: int, box: list[Any], last: bool) -> None:
        """Hand over ``box``'s items as outputs of batch ``seq``; ``last`` when ``seq`` is done."""
        self._sync(self._try_flush_seq, seq, box, last)

    def get(self, n: int, held: Held | None = None) -> list[Any] | None:
        """Take up to ``n`` items, blocking while there are none; ``None`` at the end.
        ``held``: where the receiver keeps its batch in hand (see ``Held``)."""
        result: list[Any] | None = self._sync_get(self._try_get, n, None, held)
        return result

    def get_now(self, n: int) -> list[Any] | None:
        """Take up to ``n`` items if the channel has some now, else ``None`` (even at the
        end: ``get`` tells that)."""
        with self._lock:
            result = self._try_get(n, retire=False)  # a retirement is for a receiver that can leave: get's
        return None if result is _WAIT else result  # type: ignore[return-value]

    def get_seq(self, n: int, held: Held | None = None) -> tuple[int, list[Any]] | None:
        result: tuple[int, list[Any]] | None = self._sync_get(self._try_get_seq, n, None, held)
        return result

    def get_within(self, n: int, seconds: float) -> list[Any] | None | object:
        """``get``, but ``TIMED_OUT`` if nothing came within ``seconds`` (batch= with linger=)."""
        result: list[Any] | None | object = self._sync_get(self._try_get, n, seconds)
        return result

    async def aget_within(self, n: int, seconds: float) -> list[Any] | None | object:
        result: list[Any] | None | object = await self._async_get(self._try_get, n, seconds)
        return result

    async def aput(self, items: list[Any]) -> None:
        await self._async(self._try_put, items)

    async def aflush(self, box: list[Any], last: bool) -> None:
        await self._async(self._try_flush, box, last)

    async def aflush_seq(self, seq: int, box: list[Any], last: bool) -> None:
        await self._async(self._try_flush_seq, seq, box, last)

    async def aget(self, n: int, held: Held | None = None) -> list[Any] | None:
        result: list[Any] | None = await self._async_get(self._try_get, n, None, held)
        return result

    async def aget_seq(self, n: int, held: Held | None = None) -> tuple[int, list[Any]] | None:
        result: tuple[int, list[Any]] | None = await self._async_get(self._try_get_seq, n, None, held)
        return result

    # -- ends and cancellation -------------------------------------------------------

    def close_send(self) -> None:
        """One sender is done. When the last one is, receivers see the end after draining."""
        with self._lock:
            self._senders -= 1
            if self._senders == 0:
                self._wake_all()

    def close_receive(self) -> None:
        """One receiver has left. When the last one has, senders get ``Broken``; until then
        the parked ones look again (one may be waiting for this one's claim)."""
        with self._lock:
            self._receivers -= 1
            if self._retired:
                self._retired -= 1
            if self._receivers == 0:
                self._drop()
                self._wake_all()
            elif not _STEAL:
                while self.getters:
                    self.getters.popleft().wake()

    def open_ends(self, send: bool) -> bool:
        """One more sender (``send``) or receiver: a worker added to a stage while it runs
        (adaptive workers). False, and nothing opened, if that end is closed already (the
        stage has ended: its last worker left) or the channel is cancelled."""
        with self._lock:
            # A sender is not added to a channel nobody reads (its first put would be Broken).
            if self._cancelled or self._receivers == 0 or (send and self._senders == 0):
                return False
            if send:
                self._senders += 1
            else:
                self._receivers += 1
            return True

    def retire(self, count: int) -> None:
        """Ask ``count`` more receivers to leave: those parked now, or else the next ones to
        ask for items, get the end of the stream (never the last receiver)."""
        with self._lock:
            self._retiring += count
            for _ in range(min(count, len(self.getters))):
                self._wake_getter()

    def unretire(self) -> int:
        """Take back the requests to retire that no receiver has taken yet: how many."""
        with self._lock:
            pending, self._retiring = self._retiring, 0
            return pending

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            self._drop()
            self._wake_all()

    def _drop(self) -> None:
        self._batches.clear()
        self._reorder.clear()
        self._size = self._reorder_size = 0
        for box in (*self._outboxes.values(), *self._seq_boxes.values()):
            box.clear()
