"""The remote side of a Ray stage (``executor="ray"``): what runs on a Ray worker.

Nothing here imports ray: the driver (``_ray``) wraps ``call_batch`` as a Ray task
and ``Actor`` as a Ray actor class. Each call takes a batch of items (plain items,
and the output lists of an upstream Ray stage, which Ray resolves on the worker:
they never pass through the driver) and returns two objects: a small status the
driver reads, and the outputs, which the driver reads only when the next stage is
not on Ray. A branching batch is a Ray streaming generator instead, yielding
(status, outputs) chunks as the outputs are produced. A status is one of::

    ("ok", count, seconds, notes)             count outputs, seconds in the calls
    ("error", exc, text, item, notes)         the call on item raised exc (None when
                                              it cannot be pickled); text: its traceback

``notes`` are the log records made meanwhile (a retry, a skipped item), for the
driver's ``pyper`` logger.
"""

from __future__ import annotations

import pickle
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from itertools import chain
from typing import Any

from .._spec import Task
from ._child import NO_ITEM, fan_out

__all__ = ["Actor", "Listed", "call_batch", "ping", "stream_batch"]

#: A streamed chunk of a branching batch goes once it holds this many outputs at most,
#: or once filling it took this long (a slow generator's outputs are not held back).
MAX_CHUNK = 1024
CHUNK_SECONDS = 0.005

Job = tuple[Task, "tuple[Any, ...] | None", "dict[str, Any] | None"]
Notes = list[tuple[int, str]]


def ping() -> bool:
    """A Ray task that does nothing: done once a worker is up to run it."""
    return True


class Listed:
    """A branching function whose outputs come back whole, as a list (``timeout=``: the
    driver fans them out)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func

    def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:
        return list(self.func(*args, **kwargs))


def open_worker(job: Job, stack: ExitStack, notes: Notes) -> Callable[[Any], Any]:
    """The worker's call: the task's function with its policies; its resource, if any,
    entered on ``stack``."""
    task, args, kwargs = job
    if task.policy.any:
        from ._sync_calls import open_call

        return open_call(task, args, kwargs or {}, stack, time.sleep, lambda *note: notes.append(note))
    if args is not None:  # the first task: called once, with the pipeline's arguments
        func = task.func
        return lambda _: func(*args, **(kwargs or {}))
    return task.func


def run_batch(
    call: Callable[[Any], Any], items: list[Any], upstream: tuple[list[Any], ...], notes: Notes,
) -> tuple[tuple[Any, ...], list[Any] | None]:
    """A batch's outputs, all at once: (status, outputs)."""
    inputs = [*items, *chain.from_iterable(upstream)] if upstream else items
    current: list[Any] = [NO_ITEM]
    started = time.perf_counter()
    outputs: list[Any] = []
    append = outputs.append
    try:
        for x in inputs:
            current[0] = x
            append(call(x))
    except Exception as exc:
        return error_status(exc, current[0], notes), None
    status = ("ok", len(outputs), time.perf_counter() - started, notes[:])
    notes.clear()
    return status, outputs


def stream_outputs(
    call: Callable[[Any], Any], items: list[Any], upstream: tuple[list[Any], ...], notes: Notes,
) -> Iterator[tuple[tuple[Any, ...], list[Any] | None]]:
    """A branching batch's outputs, in chunks as they are produced: (status, outputs) each,
    the last one an error or the remainder (possibly empty). Chunks grow while they fill
    fast, shrink while they fill slowly."""
    inputs = [*items, *chain.from_iterable(upstream)] if upstream else items
    current: list[Any] = [NO_ITEM]
    m, chunk, since = 1, [], time.perf_counter()
    try:
        for output in fan_out(call, inputs, current):
            chunk.append(output)
            if len(chunk) >= m:
                took = time.perf_counter() - since
                yield ("ok", len(chunk), took, notes[:]), chunk
                notes.clear()
                m = min(MAX_CHUNK, 2 * m) if took < CHUNK_SECONDS / 4 else max(1, m // 2) if took > CHUNK_SECONDS else m
                chunk, since = [], time.perf_counter()
    except Exception as exc:
        yield error_status(exc, current[0], notes), None
        return
    yield ("ok", len(chunk), time.perf_counter() - since, notes[:]), chunk
    notes.clear()


def error_status(exc: BaseException, item: Any, notes: Notes) -> tuple[Any, ...]:
    from .._errors import short_repr

    text = "".join(traceback.format_exception(exc))
    try:
        pickle.dumps(exc)
    except Exception:  # its type and text still go back
        exc = None  # type: ignore[assignment]
    kept, notes[:] = notes[:], []
    return ("error", exc, text, None if item is NO_ITEM else short_repr(item), kept)


def call_batch(job: Job, items: list[Any], *upstream: list[Any]) -> tuple[Any, ...]:
    """A Ray task (``num_returns=2``): one batch, with no state kept between batches."""
    notes: Notes = []
    with ExitStack() as stack:
        try:
            call = open_worker(job, stack, notes)
        except Exception as exc:
            return error_status(exc, NO_ITEM, notes), None
        return run_batch(call, items, upstream, notes)


def stream_batch(job: Job, items: list[Any], *upstream: list[Any]) -> Iterator[tuple[Any, ...]]:
    """A Ray streaming generator (``num_returns="streaming"``): a branching batch."""
    notes: Notes = []
    with ExitStack() as stack:
        try:
            call = open_worker(job, stack, notes)
        except Exception as exc:
            yield error_status(exc, NO_ITEM, notes), None
            return
        yield from stream_outputs(call, items, upstream, notes)


class Actor:
    """A Ray actor (with ``setup=``): one worker of the stage, holding its resource
    across every batch it is given, until ``close``."""

    def __init__(self, job: Job) -> None:
        self._notes: Notes = []
        self._stack = ExitStack()
        self._failed: BaseException | None = None
        try:
            self._call = open_worker(job, self._stack, self._notes)
        except Exception as exc:  # told to the driver with the first batch
            self._failed = exc

    def ready(self) -> bool:
        return True

    def batch(self, items: list[Any], *upstream: list[Any]) -> tuple[Any, ...]:
        if self._failed is not None:
            return error_status(self._failed, NO_ITEM, self._notes), None
        return run_batch(self._call, items, upstream, self._notes)

    def stream(self, items: list[Any], *upstream: list[Any]) -> Iterator[tuple[Any, ...]]:
        if self._failed is not None:
            yield error_status(self._failed, NO_ITEM, self._notes), None
            return
        yield from stream_outputs(self._call, items, upstream, self._notes)

    def close(self) -> tuple[Any, ...]:
        """Exit the resource: what its exit raised is the run's error."""
        try:
            self._stack.close()
        except Exception as exc:
            return error_status(exc, NO_ITEM, self._notes)
        return ("ok", 0, 0.0, self._notes)
