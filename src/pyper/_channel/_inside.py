"""What the parts beside the channel (``_sharing``, ``_order``, ``_pacing``) see of it: its
lock and the fields it guards, and the few steps they take with it held. ``_core.Channel``
is the one implementation; typing the parts against this, not against ``Channel``, keeps
them below it (``_core`` imports them, they never import ``_core``)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

__all__ = ["Hand", "Inside"]


class Inside(Protocol):
    _lock: threading.Lock
    _batches: deque[list[Any]]  # visible to receivers, FIFO
    _size: int  # items in _batches plus those held in a reorder buffer
    _capacity: int
    _receivers: int  # open receive ends
    _senders: int  # open send ends
    _pace: float  # seconds of its receivers' work the channel holds (``_pacing``; never changes)
    _ahead: int  # if set, at most this many batches per receiver (never changes)
    getters: deque[Any]  # parked receivers
    taken: int  # items receivers took (metrics)

    def returned(self, count: int) -> None: ...  # ``count`` lent items came back or were read

    def check(self) -> None: ...  # raise Cancelled or Broken if the channel is either

    def stopped(self) -> bool: ...  # cancelled, or nobody reads

    def wake_getter(self) -> None: ...

    def wake_putter(self) -> None: ...


class Hand(Protocol):
    """A receiver's hand (``_core.Held``), as ``_sharing`` sees it."""

    items: Iterator[Any] | None  # the iterator over the batch in hand (a claim, if shared)
