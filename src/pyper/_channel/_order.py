"""An ordered stage's outputs, released in the order of its inputs: the reorder buffer of
a channel whose senders are an ordered stage's workers (``_core.Channel`` reaches this at
a few points).

Every batch the stage's workers take is numbered (their input channel's ``get_seq``), and
they flush outputs under the number of the batch they came from (``flush_seq``): the
oldest sequence's go out at once, later ones wait here until every sequence before theirs
is complete. Items in the buffer count against the channel's capacity, except that the
oldest sequence is always admitted once the visible part has room (later ones leave it
room for one batch), so an ordered stage cannot deadlock. Outboxes of the oldest sequence
may be scavenged by a receiver about to park, like any sender's (``_sharing``).

Every field here is guarded by the channel's lock: each method is called with it held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._waiters import WAIT

if TYPE_CHECKING:
    from ._inside import Inside

__all__ = ["Reorder"]


class Reorder:
    """A reordered channel's buffer (guarded by the channel's lock)."""

    __slots__ = ("_channel", "_boxes", "_next", "_held", "_size", "_reserve")

    def __init__(self, channel: Inside, reserve: int) -> None:
        self._channel = channel
        self._boxes: dict[int, list[Any]] = {}  # a sequence's outbox, while shown
        self._next = 0  # the oldest sequence not yet fully released
        self._held: dict[int, tuple[list[list[Any]], bool]] = {}  # seq -> (chunks, last seen)
        self._size = 0  # items held here (also counted in the channel's size)
        self._reserve = reserve  # room later sequences leave the oldest: one batch

    def show(self, seq: int, box: list[Any]) -> None:
        self._boxes[seq] = box

    def scavenge(self, n: int) -> list[Any]:
        """Up to ``n`` of the oldest sequence's ready outputs: only those may go out, and
        they may go now."""
        oldest = self._boxes.get(self._next)
        if not oldest:
            return []
        taken = oldest[:n]
        del oldest[: len(taken)]
        return taken

    def try_flush(self, seq: int, box: list[Any], last: bool) -> object:
        """Hand over ``box``'s items as outputs of batch ``seq`` (``last``: the batch is done)."""
        channel = self._channel
        channel.check()
        k = len(box)
        if k == 0 and not last:
            return None
        size = channel._size
        if seq == self._next:
            # The oldest sequence waits only while there is something visible to drain:
            # later sequences left room for one batch of it.
            if size - self._size and size + k > channel._capacity:
                return WAIT
            if k:
                channel._batches.append(box[:k])
                channel._size = size + k
            if last:
                self._boxes.pop(seq, None)
                self._release(seq + 1)
                channel.wake_putter()  # the next oldest may be parked
            if channel._batches:
                channel.wake_getter()
        else:
            if k and size + k > channel._capacity - self._reserve:
                return WAIT
            chunks, _ = self._held.get(seq, ([], False))
            if k:
                chunks.append(box[:k])
            self._held[seq] = (chunks, last)
            if last:
                self._boxes.pop(seq, None)
            channel._size = size + k
            self._size += k
        del box[:k]
        return None

    def _release(self, seq: int) -> None:
        """Make the buffer visible from ``seq`` on, as far as it is complete."""
        batches = self._channel._batches
        while True:
            self._next = seq
            entry = self._held.pop(seq, None)
            if entry is None:
                return
            chunks, last = entry
            for chunk in chunks:
                batches.append(chunk)
                self._size -= len(chunk)
            if not last:
                return  # its worker goes on; its later chunks go straight out
            seq += 1

    def drop(self) -> None:
        self._held.clear()
        self._size = 0
        for box in self._boxes.values():
            box.clear()
