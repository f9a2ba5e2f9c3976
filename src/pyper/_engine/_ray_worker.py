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
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from itertools import chain
from typing import Any

from .._spec import Task
from ._child import NO_ITEM, fan_out

__all__ = ["STARTED", "Actor", "Joiner", "call_batch", "stream_batch", "timed_call"]

#: What a timed call (``timeout=``) yields first, as it starts on its worker: the driver
#: counts the call's time from there, not from its submission (a call may wait for a
#: worker, for a new Ray worker process after a forced cancel, or for an actor's setup).
STARTED = "started"

#: A streamed chunk of a branching batch goes once it holds this many outputs at most,
#: or once filling it took this long (a slow generator's outputs are not held back).
MAX_CHUNK = 1024
CHUNK_SECONDS = 0.005

Job = tuple[Task, "tuple[Any, ...] | None", "dict[str, Any] | None"]
Notes = list[tuple[int, str]]


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

    def timed(self, item: Any) -> Iterator[Any]:
        """A streaming method, for ``timeout=``: as ``timed_call``, with the resource."""
        yield STARTED
        yield self.batch([item])

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


class _Stopped(Exception):
    """Raised into a join call whose run has stopped, so that it unwinds."""


class Joiner:
    """A Ray actor (``max_concurrency=2``) running one join call (``join=True``): the
    function runs on a thread of the actor, reading its input stream as the driver feeds
    it with ``step``; its outputs come back with each step.

    ``_cond`` guards every field below it: the call's thread and the ``step`` and
    ``close`` calls (the actor's other thread) meet there.
    """

    def __init__(self, job: Job, branch: bool) -> None:
        self._notes: Notes = []
        self._stack = ExitStack()
        self._branch = branch
        self._cond = threading.Condition()
        self._inputs: deque[Any] = deque()
        self._ended = False  # the driver said the input is over
        self._stopped = False  # the run stopped: the next read raises _Stopped
        self._waiting = False  # the call waits for input
        self._outputs: list[Any] = []
        self._done = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        try:
            self._call = open_worker(job, self._stack, self._notes)
        except Exception as exc:  # told to the driver with the first step
            self._error, self._done = exc, True

    def ready(self) -> bool:
        return True

    def _stream(self) -> Iterator[Any]:
        while True:
            with self._cond:
                while not self._inputs and not self._ended and not self._stopped:
                    self._waiting = True
                    self._cond.notify_all()
                    self._cond.wait()
                self._waiting = False
                if self._stopped:
                    raise _Stopped
                if not self._inputs:
                    return
                item = self._inputs.popleft()
            yield item

    def _run(self) -> None:
        try:
            result = self._call(self._stream())
            outputs = fan_out(lambda x: x, [result], [NO_ITEM]) if self._branch else iter([result])
            for output in outputs:
                with self._cond:
                    self._outputs.append(output)
                    self._cond.notify_all()
        except _Stopped:
            pass
        except Exception as exc:
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def step(self, items: list[Any], end: bool, most: int) -> tuple[tuple[Any, ...], str, list[Any]]:
        """Feed ``items`` (``end``: the input is over), then wait until the call wants more
        input, has ``most`` outputs, or is done: (status, "need" | "out" | "done", outputs)."""
        started = time.perf_counter()
        with self._cond:
            self._inputs.extend(items)
            self._ended = self._ended or end
            self._waiting = False
            self._cond.notify_all()
            if self._thread is None and not self._done:
                self._thread = threading.Thread(target=self._run, name="pyper:join", daemon=True)
                self._thread.start()
            while not (self._done or len(self._outputs) >= most or (self._waiting and not self._inputs)):
                self._cond.wait()
            outputs, self._outputs = self._outputs, []
            if self._done and self._error is not None:
                return error_status(self._error, NO_ITEM, self._notes), "done", []
            kind = "done" if self._done else "out" if len(outputs) >= most else "need"
        status = ("ok", len(outputs), time.perf_counter() - started, self._notes[:])
        self._notes.clear()
        return status, kind, outputs

    def close(self) -> tuple[Any, ...]:
        """Stop the call if it is still reading (the run stopped), then exit the resource."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5.0)
        try:
            self._stack.close()
        except Exception as exc:
            return error_status(exc, NO_ITEM, self._notes)
        return ("ok", 0, 0.0, self._notes)
