"""Nothing ready is held back by a batch: what a channel's senders and receivers show it
of the batches in their hands (``_core.Channel`` reaches this at a few points).

- A sender collects outputs in its *outbox*, a list shown to the channel while it may
  hold outputs behind a later call (``show``), and hands it over with ``flush`` after each
  input batch. Whenever a receiver is parked it flushes at once (one truthiness check per
  item, no lock), and a receiver that finds the channel empty takes what is in the shown
  outboxes before it parks (``outputs``). So an output is never held back by its worker's
  next call, however slow.
- A receiver's *claim* is the list iterator over its batch (``share``). A worker that sees
  a sibling parked, before its next call, hands half of what it has not started back to
  the channel and wakes the sibling (``wake_idle``); and, in a build with a GIL, a
  receiver that finds nothing else steals half of what a sibling has claimed but not
  started (``steal``), even while that sibling is blocked in a call. So no item waits
  behind a blocked call while a worker is idle.

Lock-free accesses, and why they are safe with or without the GIL:
- An outbox is appended to only by its worker and emptied from the front only under the
  channel's lock: ``list.append``, a slice and ``del`` of a slice are each atomic (under
  the GIL, and in a free-threaded build where a list locks itself per operation), and
  appends land after whatever the remover took.
- A claim's iterator is advanced by its worker's ``for`` loop; ``wake_idle`` runs in that
  same worker. Thieves advance it too, under the lock, only where the GIL makes ``next()``
  on a list iterator atomic: a free-threaded build does not promise that for an iterator
  shared between threads (an item could be taken twice), so there stealing is off
  (``STEAL``) and only the owner shares, and gives back what it leaves.
Everything else here (``_outboxes``, ``_claims``) is guarded by the channel's lock: every
method is called with it held (``wake_idle`` and ``give_back``, which need no state of
their own, take it). A channel makes its ``Sharing`` as a batch is first shown or shared
to it: a run of one-item batches makes none.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from itertools import islice
from operator import length_hint
from typing import TYPE_CHECKING, Any

from ._waiters import WAIT

if TYPE_CHECKING:
    from ._inside import Inside

__all__ = ["STEAL", "Sharing", "give_back", "wake_idle"]

#: Whether receivers may advance a sibling's claim: only where a GIL makes a list
#: iterator's ``next()`` atomic (the tests turn it off to run as a free-threaded build would).
STEAL: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


class Sharing:
    """A channel's shown outboxes and claims (guarded by the channel's lock)."""

    __slots__ = ("_channel", "_outboxes", "_claims")

    def __init__(self, channel: Inside) -> None:
        self._channel = channel
        # Senders' outboxes that may hold outputs between flushes, by id (shown at the start
        # of a batch that can leave outputs behind a later call, hidden by its last flush).
        self._outboxes: dict[int, list[Any]] = {}
        # Receivers' claims on multi-item batches, by id (pruned when exhausted).
        self._claims: dict[int, list[Iterator[Any] | None]] = {}

    def show(self, box: list[Any]) -> None:
        self._outboxes[id(box)] = box

    def hide(self, box: list[Any]) -> None:
        self._outboxes.pop(id(box), None)

    def share(self, slot: list[Iterator[Any] | None]) -> None:
        self._claims[id(slot)] = slot

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

    def steal(self, n: int) -> list[Any] | object:
        """Half of what the sibling with the most left has claimed but not started (at
        most ``n``); ``WAIT`` where stealing is off and a sibling holds some (its owner
        shares it, or gives it back when it leaves, and wakes us: until then the stream
        has not ended, however closed the channel is)."""
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
        if richest is None:
            return []
        if not STEAL:
            return WAIT
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
                channel.wake_getter()


def give_back(channel: Inside, slot: list[Iterator[Any] | None]) -> None:
    """A receiver leaving early returns the items it took but did not start.

    The claim leaves its slot and its items enter the channel in one step under the
    lock: a sibling looking for work sees them in one place or the other, never in
    neither (it would take the end of the stream for real, and the items be lost)."""
    with channel._lock:
        claimed, slot[0] = slot[0], None
        items = list(claimed) if claimed is not None else []
        if items and not channel.stopped() and channel._receivers > 1:
            channel._batches.appendleft(items)
            channel._size += len(items)
            channel.taken -= len(items)  # counted again when a sibling takes them
            channel.wake_getter()
