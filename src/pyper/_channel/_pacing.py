"""How much an edge with no throttle of the user's holds: about ``seconds`` of its
receivers' measured work (``pace``, once per batch), at least a batch per receiver and an
item per sender (10 000 async workers whose calls end together hold their outputs anyway:
a place in the channel costs less than a blocked flush), at
most ``ahead`` batches per receiver if set (a remote stage's input), and at most
``MAX_CAPACITY`` items; so a slow or heavy consumer never has a large backlog. A remote
relay that knows its batches' size from the last run widens it at once (``widen``).

``pace`` reads the channel's ``_capacity`` and ``_receivers`` without its lock (a stale
value only delays an adjustment by a batch) and writes under it, only when the capacity
changes by more than a quarter (hysteresis). The channel's ``_pace`` and ``_ahead`` never
change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._inside import Inside

__all__ = ["MAX_CAPACITY", "PACE_SECONDS", "pace"]

#: An unthrottled edge holds about this long of its receivers' work.
PACE_SECONDS = 0.1
#: ... and at most this many items (with no throttle set by the user).
MAX_CAPACITY = 4096


def pace(channel: Inside, n: int, seconds: float) -> None:
    """A receiver took ``seconds`` over ``n`` items: the capacity that holds about the
    channel's ``_pace`` seconds of the receivers' work (at most ``_ahead`` batches per
    receiver, if set)."""
    receivers = max(channel._receivers, 1)
    # A batch per receiver, and an output per sender: those it would hold while blocked anyway.
    floor = max(receivers * n, channel._senders)
    target = int(channel._pace * floor / seconds) if seconds > 0 else MAX_CAPACITY
    if channel._ahead:
        target = min(target, channel._ahead * floor)
    capacity = max(floor, min(MAX_CAPACITY, target))
    current = channel._capacity
    if 4 * capacity < 3 * current or 4 * capacity > 5 * current:  # hysteresis: +-25%
        with channel._lock:
            channel._capacity = capacity
            if capacity > current:
                channel.wake_putter()
