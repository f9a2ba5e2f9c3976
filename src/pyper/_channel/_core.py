"""The channel: a bounded queue of batches between two stages, with counted ends.

One channel sits between two stages. Its ends are counted, as in trio's memory channels:
every sending worker holds one send end and every receiving worker one receive end.

- Closing every send end means "no more items": receivers drain what is buffered, then
  see the end (``get`` returns ``None``).
- Closing every receive end means "nobody will read": buffered items are dropped and
  every blocked or later ``put`` raises ``Broken``.
- ``cancel()`` stops the channel for everybody: every blocked or later call raises
  ``Cancelled``. It is how a run shuts down on an error, an early exit, a Ctrl-C or a
  cancelled task; nothing polls a flag.

Items move as lists (batches): ``put`` hands one over, ``get(n)`` takes up to ``n`` items,
blocking only while there are none; both wait in one loop (``_async_wait``, and its
generated twin for threads). What the engine adds around that primitive lives beside it,
each in a module of its own, reached from here at a few marked points:

- ``_sharing``: nothing ready is held back by a batch. A sender's outbox is shown to the
  channel while it may hold outputs behind a later call, and a receiver that finds the
  channel empty takes what is there, or half of what a sibling has claimed but not
  started (``scavenge``), before it parks.
- ``_order``: an ordered stage's outputs are released in the order of its inputs (a
  reorder buffer; its senders flush per sequence number, its receivers' batches are
  numbered).
- ``_pacing``: an edge with no throttle of the user's holds about a tenth of a second of
  its receivers' work (``pace``), or what a remote relay asks for (``widen``).
- ``_retiring``: a stage that sizes itself asks some receivers to leave (``retire``).

Who owns what: every field below is guarded by ``_lock`` (a plain ``threading.Lock``; no
user code and no blocking call runs while it is held), but these reads, made without
it, each a single operation on a built-in, safe with or without the GIL:
- ``getters`` (its length, or its truth) by senders, once per item: a stale read only
  makes a flush one item early or late;
- ``_size``, ``_capacity``, ``_senders`` and ``_receivers`` by ``queued``, ``closed``,
  ``receivers`` and the pacing: a stale value is one batch behind (metrics, the sizer,
  a capacity adjusted a batch late);
- the counters ``taken``, ``get_waited`` and ``put_waited`` by metrics.
The extensions' own fields are guarded by this same lock (their methods are called with
it held, or take it); each module says which of its reads go without it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

from .._errors import Broken, Cancelled
from . import _async_wait, _sync_wait
from ._order import Reorder
from . import _pacing
from ._pacing import MAX_CAPACITY
from ._retiring import Retiring
from . import _sharing
from ._sharing import Claim, Sharing, claim
from ._waiters import STOPPED, WAIT, AsyncWaiter, ThreadWaiter

__all__ = ["Channel", "Held"]


class Held:
    """A receiver's hand: the batch it works through and its iterator over that batch.

    ``get(n, held)`` puts each batch it takes here under the channel's lock (``take``),
    and for a receiver that shares (``shares``: one of several workers, unordered) makes
    the iterator a claim its idle siblings may take from, shown to the channel in that same
    step (``_sharing``): a sibling that finds the channel empty sees the items there or in
    this claim, never in neither, and so never takes the end of the stream for real while
    they wait behind this receiver's call.

    Calling it (a hook of the run's cancellation) empties the batch and the claim, so the
    receiver's ``for`` ends and no further call starts. Taken under the lock, a batch is
    always here by the time the channel's own ``cancel`` returns (no later get succeeds):
    the hook, which runs after the channels are cancelled, empties the last one.

    Written by the receiver's gets under the channel's lock (a sibling's steal advances
    ``items`` under that lock too), emptied by the hook without it: ``list.clear`` and
    ``Claim.clear`` are one operation each (atomic under the GIL, and a list or deque
    locks itself per operation without it)."""

    __slots__ = ("batch", "items", "shares")

    def __init__(self, shares: bool = False) -> None:
        self.batch: list[Any] = []
        self.items: Iterator[Any] | None = None  # None: nothing in hand
        self.shares = shares

    def __call__(self) -> None:
        self.batch.clear()
        items = self.items
        if type(items) is Claim:
            items.clear()

    def take(self, channel: Channel, got: list[Any] | tuple[int, list[Any]]) -> None:
        """``got`` (a batch, or a numbered one) is now in hand (called with the lock held)."""
        self.batch = batch = got if type(got) is list else got[1]
        if self.shares and len(batch) > 1 and not channel._sequenced:
            self.items = claim(batch)
            sharing = channel._sharing
            if sharing is None:
                sharing = channel._sharing = Sharing(channel)
            sharing.share(self)
        else:
            self.items = iter(batch)


class Channel:
    __slots__ = (
        "_lock", "_batches", "_size", "_capacity", "_senders", "_receivers", "_cancelled",
        "getters", "_putters", "_sharing", "_order", "_sequenced", "_next_get_seq", "_pace", "_ahead",
        "_retiring", "_lending", "_lent", "taken", "get_waited", "put_waited",
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
        lending: bool = False,
    ) -> None:
        self._lock = threading.Lock()
        self._batches: deque[list[Any]] = deque()  # visible to receivers, FIFO
        self._size = 0  # items in _batches plus items in the reorder buffer
        self._capacity = capacity
        self._senders = senders  # open send ends; 0 = closed for sending
        self._receivers = receivers  # open receive ends; 0 = broken
        self._cancelled = False
        # Parked receivers and senders. ``getters`` is public so that senders can check it
        # without the lock (see the module's docstring).
        self.getters: deque[ThreadWaiter | AsyncWaiter | Any] = deque()
        self._putters: deque[ThreadWaiter | AsyncWaiter] = deque()
        self._sharing: Sharing | None = None  # made as a batch is first shown or shared
        # Senders flush per sequence number (an ordered stage): released in order.
        self._order = Reorder(self, min(batch, capacity)) if reordered else None
        self._sequenced = sequenced  # receivers use get_seq: their batches are numbered
        self._next_get_seq = 0  # sequence number of the next batch taken
        # Capacity follows the receivers' pace on an edge with no throttle of the user's
        # (not a reordered one: its buffer's room is the capacity): about ``_pace`` seconds
        # of their work (0: not paced), at most ``_ahead`` batches per receiver if set.
        self._pace = pace if pace is not None and not reordered else 0.0
        self._ahead = ahead
        self._retiring: Retiring | None = None  # made by the first retire()
        # The receivers are several workers of a join task (``lending``), whose function
        # may return before it has read the items its worker took: those come back
        # (``give_back``). ``_lent`` counts the items they took and have neither read nor
        # given back (``returned``); while there are some, the stream has not ended for a
        # receiver that finds the channel empty: it waits for them, or for the end.
        self._lending = lending
        self._lent = 0
        # Counters for metrics (pyper.observe), counted per batch: items the receivers took
        # (from the batches or a sender's outbox: not what one took from a sibling's claim,
        # which was counted when the sibling took it), and the seconds receivers and senders
        # spent parked.
        self.taken = 0
        self.get_waited = 0.0
        self.put_waited = 0.0

    # -- plain reads (see the module's docstring) --------------------------------------

    @property
    def queued(self) -> int:
        """Items waiting in the channel."""
        return self._size

    @property
    def receivers(self) -> int:
        """Open receive ends: a retiring worker's counts until it has left."""
        return self._receivers

    @property
    def closed(self) -> bool:
        """Every sender has closed its end."""
        return self._senders == 0

    @property
    def parked(self) -> tuple[int, int]:
        """(receivers, senders) parked now: idle for input, and blocked for room (for the
        sizer of adaptive workers)."""
        return len(self.getters), len(self._putters)

    # -- what the extensions offer, per batch -------------------------------------------

    def show(self, box: list[Any], seq: int | None) -> None:
        """A sender starts a batch whose outputs may wait in ``box`` behind a later call
        (``_sharing``; for a reordered channel, ``seq`` is its batch: ``_order``)."""
        with self._lock:
            if seq is None:
                if self._sharing is None:
                    self._sharing = Sharing(self)
                self._sharing.show(box)
            else:
                assert self._order is not None
                self._order.show(seq, box)

    def hold(self, held: Held, batch: list[Any]) -> None:
        """``batch``, taken some other way (a relay's remote side), is now in ``held``
        (``Held.take``, under the lock)."""
        with self._lock:
            held.take(self, batch)

    def wake_idle(self, claimed: Any) -> None:
        """A receiver about to start its next item sees a sibling parked: it hands back
        half of the items left in ``claimed`` (``_sharing``)."""
        _sharing.wake_idle(self, claimed)

    def give_back(self, held: Held) -> None:
        """A receiver leaving early returns the items it took but did not start."""
        _sharing.give_back(self, held)

    def settle(self, count: int) -> None:
        """A receiver of a lending channel has read ``count`` of the items it took: they
        will not come back."""
        with self._lock:
            self.returned(count)

    def returned(self, count: int) -> None:
        """``count`` lent items were read, or came back to the channel (called with the
        lock held). Once none is lent, a closed channel has ended: the receivers waiting
        for lent items learn it."""
        if not self._lending:
            return
        self._lent -= count
        if not self._lent and not self._senders:
            while self.getters:
                self.getters.popleft().wake()

    def pace(self, n: int, seconds: float) -> None:
        """A receiver took ``seconds`` over ``n`` items (``_pacing``): once per batch."""
        if self._pace:
            _pacing.pace(self, n, seconds)

    def widen(self, capacity: int) -> None:
        """Hold at least ``capacity`` items from now on (``_pacing``)."""
        with self._lock:
            if capacity > self._capacity:
                self._capacity = min(capacity, MAX_CAPACITY)
                self.wake_putter()

    def retire(self, count: int) -> None:
        """Ask ``count`` more receivers to leave (``_retiring``)."""
        with self._lock:
            if self._retiring is None:
                self._retiring = Retiring()
            self._retiring.ask(count)
            for _ in range(min(count, len(self.getters))):
                self.wake_getter()

    def unretire(self) -> int:
        """Take back the requests to retire that no receiver has taken yet: how many."""
        with self._lock:
            return self._retiring.take_back() if self._retiring is not None else 0

    # -- waking (called with _lock held) ---------------------------------------------

    def wake_getter(self) -> None:
        if self.getters and not self.stopped():
            self.getters.popleft().wake()

    def wake_putter(self) -> None:
        if self._order is not None:
            # Only the oldest sequence may be able to go on: wake every sender.
            while self._putters:
                self._putters.popleft().wake()
        elif self._putters:
            self._putters.popleft().wake()

    def wake_putters(self) -> None:
        while self._putters:
            self._putters.popleft().wake()

    def _wake_all(self) -> None:
        while self.getters:
            self.getters.popleft().wake()
        while self._putters:
            self._putters.popleft().wake()
        if self._cancelled or self._receivers == 0:
            self.getters.append(STOPPED)

    def stopped(self) -> bool:
        return self._cancelled or self._receivers == 0

    def _abandon(self, waiter: ThreadWaiter | AsyncWaiter, getter: bool) -> None:
        """A waiter leaves without trying again (interrupted, cancelled, timed out). If it
        was already woken, the wake-up was meant for whoever can use it: it is passed on,
        so that no item or free slot is left unnoticed."""
        with self._lock:
            queue = self.getters if getter else self._putters
            try:
                queue.remove(waiter)
            except ValueError:
                if getter:
                    self.wake_getter()
                else:
                    self.wake_putter()

    # -- the operations, as "try once" steps (called with _lock held) ------------------

    def check(self) -> None:
        if self._cancelled:
            raise Cancelled
        if self._receivers == 0:
            raise Broken

    def admit(self, items: list[Any]) -> object:
        """Append a batch if there is room (any batch, into an empty channel: one item
        larger than the capacity still passes); ``WAIT`` otherwise."""
        self.check()
        size = self._size
        if size and size + len(items) > self._capacity:
            return WAIT
        self._batches.append(items)
        self._size = size = size + len(items)
        self.wake_getter()
        if size < self._capacity:
            self.wake_putter()  # pass on the room a receiver made
        return None

    def _try_flush(self, box: list[Any], last: bool) -> object:
        k = len(box)
        if k == 0:
            if self._cancelled:
                raise Cancelled
            result = None
        else:
            result = self.admit(box[:k])
            if result is None:
                del box[:k]  # the worker may have appended more meanwhile: keep those
        if last and result is None and self._sharing is not None:
            self._sharing.hide(box)
        return result

    def _try_get(self, n: int, retire: bool = True) -> object:
        if self._cancelled:
            raise Cancelled
        if retire and self._retiring is not None and self._retiring.takes(self._receivers):
            return None  # the end for this receiver: it was asked to retire
        batches = self._batches
        if not batches:
            return WAIT
        first = batches.popleft()
        if len(first) > n:
            taken = first[:n]
            del first[:n]
            batches.appendleft(first)
        else:
            taken = first  # the channel owns it; extend it in place
            while batches and len(taken) + len(batches[0]) <= n:
                taken.extend(batches.popleft())
        self._size = size = self._size - len(taken)
        self.taken += len(taken)
        if self._lending:
            self._lent += len(taken)
        if batches:
            self.wake_getter()  # the rest is for another receiver
        if self._putters and (2 * size <= self._capacity or self._order is not None):
            # A blocked sender is woken once half the capacity is free, not for each batch
            # taken: it then hands over several batches at a go, and receivers drain the
            # other half meanwhile (one hand-over of threads per half channel, not per batch;
            # a throttled link of small batches was 10x slower for it). It is woken by the
            # time the channel is empty, so receivers never park while it could fill it. A
            # reordered channel wakes its senders every time: its oldest sequence may be
            # the one parked, and the buffer's other items may fill more than half of it.
            self.wake_putter()
        return taken

    def _try_get_seq(self, n: int) -> object:
        taken = self._try_get(n)
        if taken is None or taken is WAIT:
            return taken
        return self._number(taken)  # type: ignore[arg-type]

    def _number(self, taken: list[Any]) -> tuple[int, list[Any]]:
        seq = self._next_get_seq
        self._next_get_seq = seq + 1
        return seq, taken

    def scavenge(self, n: int) -> object:
        """Nothing is in the channel for a receiver about to park: ready outputs from the
        senders' outboxes (the oldest sequence's, when reordered), or else a share of a
        sibling's claim; ``None`` at the end of the stream; ``WAIT`` else."""
        sharing = self._sharing
        if self._order is not None:
            taken = self._order.scavenge(n)
        else:
            taken = sharing.outputs(n) if sharing is not None else []
        if taken:
            self.taken += len(taken)
            if self._lending:
                self._lent += len(taken)
            # A sender parked in flush may be waiting for room for what was just taken.
            self.wake_putters()
        else:
            stolen = sharing.steal(n) if sharing is not None else []  # (still lent: now to us)
            if not stolen:
                # Closed, drained, and nothing lent can come back: the end.
                return None if self._senders == 0 and not self._lent else WAIT
            taken = stolen
        return self._number(taken) if self._sequenced else taken

    # -- blocking calls ----------------------------------------------------------------

    def put(self, items: list[Any]) -> None:
        """Hand ``items`` over (the caller gives the list up), blocking while the channel is full."""
        _sync_wait.wait(self, self.admit, (items,), False)

    def flush(self, box: list[Any], last: bool) -> None:
        """Hand over what ``box`` (an outbox) holds, blocking while the channel is full;
        ``last``: the batch is done (the box is hidden from receivers again)."""
        _sync_wait.wait(self, self._try_flush, (box, last), False)

    def flush_seq(self, seq: int, box: list[Any], last: bool) -> None:
        """Hand over ``box``'s items as outputs of batch ``seq``; ``last`` when ``seq`` is done."""
        assert self._order is not None
        _sync_wait.wait(self, self._order.try_flush, (seq, box, last), False)

    def get(self, n: int, held: Held | None = None) -> list[Any] | None:
        """Take up to ``n`` items, blocking while there are none; ``None`` at the end.
        ``held``: where the receiver keeps its batch in hand (see ``Held``)."""
        result: list[Any] | None = _sync_wait.wait(self, self._try_get, (n,), True, None, held)
        return result

    def get_seq(self, n: int, held: Held | None = None) -> tuple[int, list[Any]] | None:
        """``get``, numbered: (the batch's sequence number, the batch)."""
        result: tuple[int, list[Any]] | None = _sync_wait.wait(self, self._try_get_seq, (n,), True, None, held)
        return result

    def get_now(self, n: int) -> list[Any] | None:
        """Take up to ``n`` items if the channel has some now, else ``None`` (even at the
        end: ``get`` tells that)."""
        with self._lock:
            result = self._try_get(n, retire=False)  # a retirement is for a receiver that can leave: get's
        return None if result is WAIT else result  # type: ignore[return-value]

    def get_within(self, n: int, seconds: float) -> list[Any] | None | object:
        """``get``, but ``TIMED_OUT`` if nothing came within ``seconds`` (batch= with linger=)."""
        result: object = _sync_wait.wait(self, self._try_get, (n,), True, seconds)
        return result

    async def aget_within(self, n: int, seconds: float) -> list[Any] | None | object:
        result: object = await _async_wait.wait(self, self._try_get, (n,), True, seconds)
        return result

    async def aput(self, items: list[Any]) -> None:
        await _async_wait.wait(self, self.admit, (items,), False)

    async def aflush(self, box: list[Any], last: bool) -> None:
        await _async_wait.wait(self, self._try_flush, (box, last), False)

    async def aflush_seq(self, seq: int, box: list[Any], last: bool) -> None:
        assert self._order is not None
        await _async_wait.wait(self, self._order.try_flush, (seq, box, last), False)

    async def aget(self, n: int, held: Held | None = None) -> list[Any] | None:
        result: list[Any] | None = await _async_wait.wait(self, self._try_get, (n,), True, None, held)
        return result

    async def aget_seq(self, n: int, held: Held | None = None) -> tuple[int, list[Any]] | None:
        result: tuple[int, list[Any]] | None = await _async_wait.wait(self, self._try_get_seq, (n,), True, None, held)
        return result

    # -- ends and cancellation ---------------------------------------------------------

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
            if self._retiring is not None:
                self._retiring.left()
            if self._receivers == 0:
                self._drop()
                self._wake_all()

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

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            self._drop()
            self._wake_all()

    def _drop(self) -> None:
        self._batches.clear()
        self._size = 0
        if self._sharing is not None:
            self._sharing.drop()
        if self._order is not None:
            self._order.drop()
