"""Receivers asked to leave a channel while their stage runs on: how a stage that sizes
itself (``workers=(lo, hi)``) retires spare workers. The next receivers that would park
are given the end of the stream instead (never the last receiver), and leave as any
worker does at the end. Made by the channel's first ``retire``; guarded by the channel's
lock (every method is called with it held)."""

from __future__ import annotations

__all__ = ["Retiring"]


class Retiring:
    __slots__ = ("_pending", "_retired")

    def __init__(self) -> None:
        self._pending = 0  # requests no receiver has taken yet
        # Receivers given their end that have not closed it yet (only a retiree closes its
        # receive end while the stage runs on: the others close theirs at the end).
        self._retired = 0

    def ask(self, count: int) -> None:
        self._pending += count

    def take_back(self) -> int:
        """Take back the requests no receiver has taken yet: how many."""
        pending, self._pending = self._pending, 0
        return pending

    def takes(self, receivers: int) -> bool:
        """Whether the receiver asking for items now is to retire (one of ``receivers``
        open ends: never the last one staying)."""
        if self._pending and receivers - self._retired > 1:
            self._pending -= 1
            self._retired += 1
            return True
        return False

    def left(self) -> None:
        """A receiver closed its end (a retiree, if any is still leaving)."""
        if self._retired:
            self._retired -= 1
