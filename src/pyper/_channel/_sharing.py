"""Nothing ready is held back by a batch: what a channel's senders and receivers show it
of the batches in their hands (``_core.Channel`` reaches this at a few points).

- A sender collects outputs in its *outbox*, a list shown to the channel while it may
  hold outputs behind a later call (``show``), and hands it over with ``flush`` after each
  input batch. Whenever a receiver is parked it flushes at once (one truthiness check per
  item, no lock), and a receiver that finds the channel empty takes what is in the shown
  outboxes before it parks (``outputs``). So an output is never held back by its worker's
  next call, however slow.
- A receiver's *claim* is the iterator over its batch, in its hand (``_core.Held``),
  shown here as the batch is taken (``share``, under the same lock). A worker that sees a
  sibling parked, before its next call, hands half of what it has not started back to
  the channel and wakes the sibling (``wake_idle``); and a receiver that finds nothing
  else steals half of what a sibling has claimed but not started (``steal``), even while
  that sibling is blocked in a call. So no item waits behind a blocked call while a
  worker is idle.

Lock-free accesses, and why they are safe with or without the GIL:
- An outbox is appended to only by its worker and emptied from the front only under the
  channel's lock: ``list.append``, a slice and ``del`` of a slice are each atomic (under
  the GIL, and in a free-threaded build where a list locks itself per operation), and
  appends land after whatever the remover took.
- A claim is advanced by its worker's ``for`` loop, and by thieves (under the channel's
  lock, which the owner does not take). Each step must hand an item to one of them only:
  with a GIL a plain list iterator's ``next()`` is one atomic step; a free-threaded build
  does not promise that for an iterator shared between threads (an item could be taken
  twice), so there a claim that can be shared is a ``Claim``, each step of which is one
  ``deque.popleft()`` (a deque locks itself per operation). ``PLAIN_CLAIMS`` says which.
Everything else here (``_outboxes``, ``_claims``, and a hand's ``items``) is guarded by
the channel's lock: every method is called with it held (``wake_idle`` and
``give_back``, which need no state of their own, take it). A channel makes its
``Sharing`` as a batch is first shown or shared to it: a run of one-item batches makes
none.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from operator import length_hint
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._inside import Hand, Inside

__all__ = ["PLAIN_CLAIMS", "Claim", "Sharing", "claim", "give_back", "wake_idle"]

#: Whether a claim that siblings may advance can be a plain list iterator: only where a GIL
#: makes its ``next()`` atomic (the tests turn it off to run as a free-threaded build would).
PLAIN_CLAIMS: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


class Claim:
    """An iterator over a batch whose every step is one atomic ``deque.popleft()``: its
    owner and thieves may advance it at once, and each item goes to one of them."""

    __slots__ = ("_items",)

    def __init__(self, batch: Iterable[Any]) -> None:
        self._items = deque(batch)

    def __iter__(self) -> Claim:
        return self

    def __next__(self) -> Any:
        try:
            return self._items.popleft()
        except IndexError:
            raise StopIteration from None

    def __length_hint__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        """No further item (the run was cancelled)."""
        self._items.clear()


def claim(batch: list[Any]) -> Iterator[Any]:
    """The iterator a receiver holds over ``batch``, which its siblings may share."""
    return iter(batch) if PLAIN_CLAIMS else Claim(batch)


class Sharing:
    """A channel's shown outboxes and claims (guarded by the channel's lock)."""

    __slots__ = ("_channel", "_outboxes", "_claims")

    def __init__(self, channel: Inside) -> None:
        self._channel = channel
        # Senders' outboxes that may hold outputs between flushes, by id (shown at the start
        # of a batch that can leave outputs behind a later call, hidden by its last flush).
        self._outboxes: dict[int, list[Any]] = {}
        # Receivers' hands holding claims on multi-item batches, by id (pruned when exhausted).
        self._claims: dict[int, Hand] = {}

    def show(self, box: list[Any]) -> None:
        self._outboxes[id(box)] = box

    def hide(self, box: list[Any]) -> None:
        self._outboxes.pop(id(box), None)

    def share(self, held: Hand) -> None:
        self._claims[id(held)] = held

    def outputs(self, n: int) -> list[Any]:
        """Up to ``n`` ready outputs from the shown outboxes (taken from their fronts)."""
        taken: list[Any] = []
        for box in self._outboxes.values():
            k = min(len(box), n - len(taken))
            if k:
                taken += box[:k]
                del box[:k]
                if len(taken) >= n:
                    break
        return taken

    def steal(self, n: int) -> list[Any]:
        """Half of what the sibling with the most left has claimed but not started (at
        most ``n``)."""
        most, richest = 0, None
        spent = []
        for key, held in self._claims.items():
            it = held.items
            left = length_hint(it) if it is not None else 0
            if left > most:
                most, richest = left, it
            elif not left:
                spent.append(key)
        for key in spent:
            del self._claims[key]
        if richest is None:
            return []
        return list(islice(richest, min(n, (most + 1) // 2)))

    def drop(self) -> None:
        """The channel dropped its items (cancelled, or nobody reads): so are the outboxes'."""
        for box in self._outboxes.values():
            box.clear()


def wake_idle(channel: Inside, claimed: Iterator[Any]) -> None:
    """A receiver about to start its next item sees a sibling parked: it hands back
    half of the items left in ``claimed`` (its own iterator) and wakes the sibling."""
    left = length_hint(claimed)
    if left:
        with channel._lock:
            if channel.getters and not channel.stopped():
                shared = list(islice(claimed, (left + 1) // 2))
                if shared:
                    channel._batches.appendleft(shared)
                    channel._size += len(shared)
                    channel.taken -= len(shared)  # counted again when a sibling takes them
                    channel.returned(len(shared))
                channel.wake_getter()


def give_back(channel: Inside, held: Hand) -> None:
    """A receiver leaving early returns the items it took but did not start.

    The claim leaves its hand and its items enter the channel in one step under the
    lock: a sibling looking for work sees them in one place or the other, never in
    neither (it would take the end of the stream for real, and the items be lost)."""
    with channel._lock:
        claimed, held.items = held.items, None
        items = list(claimed) if claimed is not None else []
        if items and not channel.stopped() and channel._receivers > 1:
            channel._batches.appendleft(items)
            channel._size += len(items)
            channel.taken -= len(items)  # counted again when a sibling takes them
            channel.wake_getter()
        channel.returned(len(items))  # (given back, or nobody is left to read them)
