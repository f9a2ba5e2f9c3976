"""What the relays of a remote executor whose batches each cost a round trip of
milliseconds (Ray; an executor of the user's) use to size them: wait a moment for a
fuller batch (``Gathering``), end the last batches of a run together (``Tail``), and grow
toward a target of calls' time in few steps (``next_size``)."""

from __future__ import annotations

import math
import threading
from time import perf_counter
from typing import Any

from .._channel import TIMED_OUT, Channel
from ._run import adapt

__all__ = ["Gathering", "Tail", "next_size"]


class Gathering:
    """A relay's ``get``, sized by its stage's ``Tail``.

    While the input is open, a batch short of its size waits up to ``seconds`` for more
    items to gather; idle siblings gather too, and the items that come go to them in turn.
    Of what is already there, a relay takes no more than its share of what has come,
    counting its siblings' work in flight (or as much as a busy sibling holds): else the
    first to wake takes a whole burst, or all a short run's producer flushed at once
    before the other started (16 against 0); and while a sibling is busy or still
    starting (it has not asked for input yet), it waits for no more than that share. Once
    the input is closed, a relay takes its share of what is left, counting what it has
    gathered. Owned by its relay.
    """

    __slots__ = ("inp", "seconds", "tail", "index", "ended")

    def __init__(self, inp: Channel, seconds: float, tail: Tail, index: int) -> None:
        self.inp, self.seconds, self.tail, self.index = inp, seconds, tail, index
        self.ended = False  # the input gave this relay its end while it gathered
        tail.arrive(index)

    def get(self, n: int) -> list[Any] | None:
        """Up to ``n`` items (fewer once the input is closed: a share); None at the end."""
        if self.ended:
            return None  # (not asked again: a retiring worker is given its end once)
        inp, tail, index = self.inp, self.tail, self.index
        # The first item, whenever it comes; then, of what is there, no more than this
        # relay's share of what has come (what came may be a burst: a process stage, or a
        # producer with no relay waiting, flushes all it made at once; the others take
        # theirs as they wake); and while more may come, wait for it up to ``seconds``
        # (to ``n`` while every sibling is idle too, else to a share), one item at a
        # time: what comes while it waits may be a burst too, of which it takes its
        # share on the next pass (asked for all it wanted, it took a burst of 16 whole).
        got = inp.get(1)
        if got is None:
            return None
        got = list(got)
        deadline = perf_counter() + self.seconds
        while True:
            held = len(got)
            if inp.queued:
                ask = tail.size(index, n, inp, held, seen=True) - held
            else:
                ask = min(1, tail.size(index, n, inp, held, seen=tail.elsewhere(inp)) - held)
            if ask <= 0:
                break
            more = inp.get_within(ask, max(0.0, deadline - perf_counter()))
            if more is TIMED_OUT:
                break
            if more is None:
                self.ended = True
                break
            assert isinstance(more, list)
            got.extend(more)
        tail.started(index, len(got))  # at once: a sibling's share counts it from now
        return got


class Tail:
    """What the relays of one remote stage share so that their last batches end together.

    While items still come, each relay takes the batch ``adapt`` sizes. Once the input is
    closed, what is queued is all the work left; a relay then takes no more than its
    share of it, counting what its siblings' batches in flight still hold (estimated
    from the stage's measured cost per item): the level at which every relay would end
    at once (guided self-scheduling, with the siblings' remaining work seen). Without it
    the last batches of 16 calls went as 7 + 1 against 8: one worker idle for a third of
    the run, or all 16 went to one worker whose batches had grown past 16. A share is never
    less work than ``call_seconds``, what a remote call costs to make: trivial items still
    go in one call. (Taking half of the share, to even out the calls' own differences with
    a last small batch, did worse on Ray: 3% slower, as each batch is a call to make.)

    Used by the relays of one stage in one run, under its lock (twice per batch: a
    remote call costs far more).
    """

    __slots__ = ("_lock", "_busy", "_arrived", "cost", "_call_seconds")

    def __init__(self, call_seconds: float, cost: float = 0.0) -> None:
        self._call_seconds = call_seconds
        self._lock = threading.Lock()
        self._busy: dict[int, tuple[float, int]] = {}  # relay -> (when its batch went, its size)
        self._arrived: set[int] = set()  # the relays that have asked for input
        # Seconds per item of the last batch measured (or as the last run left it; 0: none
        # yet). Written under the lock, read without it.
        self.cost = cost

    def size(self, index: int, n: int, inp: Channel, held: int = 0, seen: bool = False) -> int:
        """How many items relay ``index`` is to hold for its next batch, where ``adapt``
        says ``n`` and it holds ``held`` already (gathered); ``seen``: its share of what
        has come, even while more may come."""
        queued = inp.queued + held
        if not (seen or inp.closed) or queued <= 1 or n <= 1:
            return n
        now = perf_counter()
        with self._lock:
            cost = self.cost
            left = [count - (now - start) / cost if cost else float(count)
                    for i, (start, count) in self._busy.items() if i != index]
        busy = sorted(max(0.0, x) for x in left)
        idle = max(1, inp.receivers - len(busy))  # this relay and any sibling between batches
        share = _level(queued, idle, busy)
        if busy and not inp.closed:  # more may come: as much as a busy sibling holds is fair
            share = max(share, busy[-1])
        if cost:
            share = max(share, self._call_seconds / cost)
        return max(1, min(n, math.ceil(share)))

    def arrive(self, index: int) -> None:
        """Relay ``index`` is ready to ask for input."""
        with self._lock:
            self._arrived.add(index)

    def elsewhere(self, inp: Channel) -> bool:
        """Some relay has a batch in flight, or has not asked for input yet: one that is
        gathering is not to take all that comes (plain reads: a stale one is one item)."""
        return bool(self._busy) or len(self._arrived) < inp.receivers

    def started(self, index: int, count: int) -> None:
        """Relay ``index`` took a batch of ``count`` items (``Gathering`` says so itself)."""
        with self._lock:
            self._busy[index] = (perf_counter(), count)

    def leave(self, index: int) -> None:
        """Relay ``index`` is gone, its batch done or not."""
        with self._lock:
            self._busy.pop(index, None)

    def finished(self, index: int, count: int, seconds: float) -> None:
        """Relay ``index``'s batch of ``count`` items is back; its calls took ``seconds``."""
        with self._lock:
            del self._busy[index]
            if count:
                self.cost = seconds / count


def _level(queued: int, idle: int, busy: list[float]) -> float:
    """The work each of ``idle`` free workers takes so that all end together, where the
    busy ones still hold ``busy`` items each (ascending): water filling ``queued`` items."""
    total, workers = float(queued), idle
    for left in busy:
        if total / workers <= left:  # the level stays below this worker's: it takes none
            break
        total += left
        workers += 1
    return total / workers


def next_size(n: int, done: int, seconds: float, limit: int, target: float) -> int:
    """The next batch size of a remote relay whose batches aim at ``target`` seconds of
    calls (their own time, measured there; each batch is a round trip): ``adapt`` toward
    it, growing 8x at a time while a full batch took a small part of it, so trivial items
    reach large batches in three round trips, not ten.

    A batch the run's tail cut short (``Tail``: a share, ``done`` < ``n``) measures the
    cost too: if its calls took under half the target, twice what it held fits, and the
    size grows to that. (Not to the target's fit: single cheap items trickling in would
    double it every batch, and the size is remembered: the next run's input is widened
    to hold it for each worker.) Else
    the size only ever shrank: one batch a little over the target (8 calls of 25 ms
    taking 0.26 s on a busy machine) made it 7, and short runs, all tail, kept 7; the
    next run's input then held 14 of its 16 items at first, and the relays took 7 and 4
    and went back for the rest (four round trips, not two: 5-10% slower)."""
    if done >= n and seconds < target / 16:
        return min(limit, 8 * n)
    if 0 < done < n and seconds < target / 2:
        return min(limit, max(n, 2 * done))
    return adapt(n, done, seconds, limit, target)
