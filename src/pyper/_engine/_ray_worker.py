"""The transport of a Ray stage (``executor="ray"``) on the Ray side: Ray tasks and actor
classes around ``_serve``, the remote side every remote executor shares.

Nothing here imports ray: the driver (``_ray``) wraps these functions as Ray tasks and
these classes as Ray actors. Each call takes a batch of items (plain items, and the
output lists of an upstream Ray stage, which Ray resolves on the worker: they never pass
through the driver) and returns a small status, which the driver reads, and the
outputs, which it reads only when the next stage is not on Ray. A branching batch is a
Ray streaming generator instead, yielding (status, outputs) chunks as the outputs are
made. A status is one of::

    ("ok", count, seconds, notes)             count outputs, seconds in the calls
    (*envelope, notes)                        the call raised: its envelope
                                              (``_envelope.seal``)

``notes`` are the log records made meanwhile (a retry), for the driver's ``pyper`` logger.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

from ._envelope import NO_ITEM
from ._serve import Job, Joining, Notes, Status, call_batch, error_status, ok_status, open_worker, run_batch, stream_outputs

__all__ = ["STARTED", "Actor", "Joiner", "call_batch", "stream_batch_task", "timed_call"]

#: What a timed call (``timeout=``) yields first, as it starts on its worker: the driver
#: counts the call's time from there, not from its submission (a call may wait for a
#: worker, for a new Ray worker process after a forced cancel, or for an actor's setup).
STARTED = "started"

def stream_batch_task(job: Job, items: list[Any], *upstream: list[Any]) -> Iterator[tuple[Status, list[Any] | None]]:
    """A Ray streaming generator (``num_returns="streaming"``): a branching batch (its
    resource, if any, made for it alone: the actor's ``stream`` keeps one)."""
    actor = Actor(job)
    try:
        yield from actor.stream(items, *upstream)
    finally:
        actor.close()


def timed_call(job: Job, item: Any) -> Iterator[Any]:
    """A Ray streaming task, for ``timeout=``: one item's call, which yields ``STARTED``
    as it starts, then the (status, outputs) of its call."""
    yield STARTED
    yield call_batch(job, [item])


class Actor:
    """A Ray actor (with ``setup=``): one worker of the stage, holding its resource
    across every batch it is given, until ``close``."""

    def __init__(self, job: Job) -> None:
        self._notes: Notes = []
        self._stack = ExitStack()
        self._guarded = job[3]
        self._failed: BaseException | None = None
        try:
            self._call = open_worker(job, self._stack, self._notes)
        except Exception as exc:  # told to the driver with the first batch
            self._failed = exc

    def ready(self) -> bool:
        return True

    def batch(self, items: list[Any], *upstream: list[Any]) -> tuple[Status, list[Any] | None]:
        if self._failed is not None:
            return error_status(self._failed, NO_ITEM, self._notes), None
        return run_batch(self._call, items, upstream, self._notes, self._guarded)

    def timed(self, item: Any) -> Iterator[Any]:
        """A streaming method, for ``timeout=``: as ``timed_call``, with the resource."""
        yield STARTED
        yield self.batch([item])

    def stream(self, items: list[Any], *upstream: list[Any]) -> Iterator[tuple[Status, list[Any] | None]]:
        if self._failed is not None:
            yield error_status(self._failed, NO_ITEM, self._notes), None
            return
        yield from stream_outputs(self._call, items, upstream, self._notes, self._guarded)

    def close(self) -> Status:
        """Exit the resource: what its exit raised is the run's error."""
        try:
            self._stack.close()
        except Exception as exc:
            return error_status(exc, NO_ITEM, self._notes)
        return ok_status(0, 0.0, self._notes)


class Joiner:
    """A Ray actor (``max_concurrency=2``) running one join call (``join=True``): a
    ``_serve.Joining`` driven by the relay's ``step`` calls, while ``close`` may come on the
    actor's other thread."""

    def __init__(self, job: Job) -> None:
        self._notes: Notes = []
        self._joining = Joining(job, self._notes)

    def ready(self) -> bool:
        return True

    def step(self, items: list[Any], end: bool, most: int) -> tuple[Status, str, list[Any], list[Any]]:
        """Feed ``items`` (``end``: the input is over), then wait until the call wants more
        input, has ``most`` outputs, or is done: (status, "need" | "out" | "done", outputs,
        what it was fed and did not read)."""
        started = time.perf_counter()
        step = self._joining.step(items, end, most)
        if step[0] == "error":
            kept, self._notes[:] = self._notes[:], []
            return (*step, kept), "done", [], []
        kind, outputs, left = step[0], step[1], step[2]
        assert isinstance(outputs, list) and isinstance(left, list)
        return ok_status(len(outputs), time.perf_counter() - started, self._notes), kind, outputs, left

    def close(self) -> Status:
        """Stop the call if it is still reading (the run stopped); its thread exits the
        resource: what that raised is the run's error."""
        error = self._joining.stop()
        if error is not None:
            return error_status(error, NO_ITEM, self._notes)
        return ok_status(0, 0.0, self._notes)
