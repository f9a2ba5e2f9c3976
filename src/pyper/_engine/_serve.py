"""The remote side of every remote executor: what runs where a stage's calls run (a
worker process's loop, ``_child``; a Ray worker, ``_ray_worker``; an executor of the
user's, ``_futures``), written once. Each transport (pipes, Ray calls, futures) carries
requests to these and their answers back; the relay (``_relay``) drives them.

- ``open_worker``: the worker's call, made once: the task's function with the options
  that run on the remote side (``setup=``, ``unpack=``, ``retries=``: see
  ``_relay.remote_task``), its resource entered on the worker's exit stack.
- ``map_batch``: a batch's outputs, one per item.
- ``stream_batch``: a branching batch's outputs, as the calls make them (pulled).
- ``Joining``: a join call (``join=True``), driven step by step: fed its input as it
  asks for it, its outputs handed back as they come.
- every error is sealed in one envelope (``_envelope.seal``). With ``on_error=`` the
  handler runs in the relay, in the caller's process, as for every executor: a call that
  fails here gives a ``Failed`` in place of its outputs, and the batch goes on.

Imports little (``_envelope``; the per-call options' module only for a task that sets
some): a worker process imports this at its start.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from itertools import chain
from typing import Any

from ._envelope import NO_ITEM, Envelope, seal

__all__ = [
    "NO_ITEM", "Failed", "Job", "Joining", "Notes", "Status", "call_batch", "call_whole", "error_status", "fan_out",
    "map_batch", "ok_status", "open_worker", "run_batch", "stream_batch", "stream_outputs",
]

#: What a remote worker is given once: (the task as it runs there, the pipeline's
#: arguments and keyword arguments for the first task, else None and None, whether its
#: calls are guarded: a failure gives a ``Failed``, for ``on_error=`` in the relay, and the
#: pid of the relay's process: a worker in that same process, a thread pool's, gives back
#: exceptions themselves, not copies).
Job = tuple[Any, "tuple[Any, ...] | None", "dict[str, Any] | None", bool, int]
#: The events the calls report (a retry), for the relay to count and log: (event, message).
Notes = list[tuple[int, str]]


class Failed:
    """In place of the outputs of a call that raised, where ``on_error=`` handles it (in
    the relay): the item and the sealed error."""

    __slots__ = ("item", "envelope")

    def __init__(self, item: Any, envelope: Envelope) -> None:
        self.item, self.envelope = item, envelope

    def __reduce__(self) -> tuple[Any, ...]:
        return Failed, (self.item, self.envelope)


def open_worker(job: Job, stack: ExitStack, notes: Notes, sleep: Callable[[float], None] = time.sleep) -> Callable[[Any], Any]:
    """The worker's call: the task's function with its remote options; its resource, if
    any, entered on ``stack``. ``sleep``: a retry's backoff wait."""
    task, args, kwargs = job[0], job[1], job[2]
    if task.policy.any:
        from ._sync_calls import open_call

        return open_call(task, args, kwargs or {}, stack, sleep, lambda *note: notes.append(note))
    func = task.func
    if args is not None:  # the first task: called once, with the pipeline's arguments
        return lambda _: func(*args, **(kwargs or {}))
    return func  # type: ignore[no-any-return]


#: Never set: a ``stopped`` flag for a batch nothing can stop midway.
_NEVER = (False,)


def map_batch(
    call: Callable[[Any], Any], items: list[Any], current: list[Any], guarded: bool,
    stopped: list[bool] | tuple[bool] = _NEVER, here: bool = False,
) -> list[Any]:
    """The outputs of the calls on ``items``, in order; ``current[0]`` is the item in hand
    (named if its call raises). ``guarded`` (``on_error=``): a call that raises gives a
    ``Failed`` and the batch goes on. No further call starts once ``stopped[0]`` is set
    (a worker process's run was cancelled)."""
    outputs: list[Any] = []
    append = outputs.append
    if not guarded:
        for x in items:
            if stopped[0]:
                break
            current[0] = x
            append(call(x))
        return outputs
    for x in items:
        if stopped[0]:
            break
        current[0] = x
        try:
            append(call(x))
        except Exception as exc:
            append(Failed(x, seal(exc, x, here)))
    return outputs


def fan_out(
    call: Callable[[Any], Any], items: list[Any], current: list[Any], guarded: bool = False,
    stopped: list[bool] | tuple[bool] = _NEVER, here: bool = False,
) -> Iterator[Any]:
    """The fanned-out results of the calls on ``items``; ``current[0]`` is the item in
    hand. ``guarded``: a call (or its iteration) that raises gives a ``Failed`` after
    the outputs it made, and the next item goes on. No further call starts once
    ``stopped[0]`` is set (a worker process's run was cancelled)."""
    for x in items:
        if stopped[0]:
            return
        current[0] = x
        if not guarded:
            yield from _outputs(call(x))
            continue
        try:
            yield from _outputs(call(x))
        except Exception as exc:
            yield Failed(x, seal(exc, x, here))


def _outputs(result: Any) -> Iterator[Any]:
    try:
        return iter(result)
    except TypeError:
        cls = type(result)
        if hasattr(cls, "__iter__") or hasattr(cls, "__getitem__"):
            raise
        raise TypeError(
            f"fans out its results (branch=True) but returned {cls.__name__}, which is "
            "not iterable: return an iterable, or create the task with branch=False"
        ) from None


stream_batch = fan_out  # a branching batch's outputs: pulled as the relay has room for them


#: A streamed chunk of a branching batch goes once it holds this many outputs at most,
#: or once filling it took this long (a slow generator's outputs are not held back).
MAX_CHUNK = 1024
CHUNK_SECONDS = 0.005

#: The status of a request, for a transport that returns it beside the outputs (Ray,
#: futures): ("ok", outputs' count, seconds in the calls, notes), or (*envelope, notes).
Status = tuple[Any, ...]


def error_status(exc: BaseException, item: Any, notes: Notes, here: bool = False) -> Status:
    """The status of a request whose call raised ``exc``: its envelope, and the log records."""
    kept, notes[:] = notes[:], []
    return (*seal(exc, item, here), kept)


def ok_status(count: int, seconds: float, notes: Notes) -> Status:
    """The status of a request that went well: how many outputs, the calls' seconds, the log records."""
    kept, notes[:] = notes[:], []
    return ("ok", count, seconds, kept)


def run_batch(
    call: Callable[[Any], Any], items: list[Any], upstream: tuple[list[Any], ...], notes: Notes, guarded: bool,
    here: bool = False,
) -> tuple[Status, list[Any] | None]:
    """A batch's outputs, all at once: (status, outputs)."""
    inputs = [*items, *chain.from_iterable(upstream)] if upstream else items
    current: list[Any] = [NO_ITEM]
    started = time.perf_counter()
    try:
        outputs = map_batch(call, inputs, current, guarded, here=here)
    except Exception as exc:
        return error_status(exc, current[0], notes, here), None
    return ok_status(len(outputs), time.perf_counter() - started, notes), outputs


def stream_outputs(
    call: Callable[[Any], Any], items: list[Any], upstream: tuple[list[Any], ...], notes: Notes, guarded: bool,
) -> Iterator[tuple[Status, list[Any] | None]]:
    """A branching batch's outputs, in chunks as they are made: (status, outputs) each, the
    last one an error or the remainder (possibly empty). Chunks grow while they fill fast,
    shrink while they fill slowly."""
    inputs = [*items, *chain.from_iterable(upstream)] if upstream else items
    current: list[Any] = [NO_ITEM]
    m, chunk, since = 1, [], time.perf_counter()
    try:
        for output in stream_batch(call, inputs, current, guarded):
            chunk.append(output)
            if len(chunk) >= m:
                took = time.perf_counter() - since
                yield ok_status(len(chunk), took, notes), chunk
                m = min(MAX_CHUNK, 2 * m) if took < CHUNK_SECONDS / 4 else max(1, m // 2) if took > CHUNK_SECONDS else m
                chunk, since = [], time.perf_counter()
    except Exception as exc:
        yield error_status(exc, current[0], notes), None
        return
    yield ok_status(len(chunk), time.perf_counter() - since, notes), chunk


def call_batch(job: Job, items: list[Any], *upstream: list[Any]) -> tuple[Status, list[Any] | None]:
    """One batch, with no state kept between batches: (status, outputs). A Ray task
    (``num_returns=2``, or 1: the pair as one object), or a future's call."""
    here = job[4] == os.getpid()  # (a thread pool's worker: the relay's own process)
    return _once(job, lambda call, notes: run_batch(call, items, upstream, notes, job[3], here))


def call_whole(job: Job, items: list[Any]) -> tuple[Status, list[Any] | None]:
    """A branching batch, its outputs all at once (a transport that cannot stream them:
    futures): (status, outputs)."""

    here = job[4] == os.getpid()

    def whole(call: Callable[[Any], Any], notes: Notes) -> tuple[Status, list[Any] | None]:
        current: list[Any] = [NO_ITEM]
        started = time.perf_counter()
        try:
            outputs = list(fan_out(call, items, current, job[3], here=here))
        except Exception as exc:
            return error_status(exc, current[0], notes, here), None
        return ok_status(len(outputs), time.perf_counter() - started, notes), outputs

    return _once(job, whole)


def _once(
    job: Job, body: Callable[[Callable[[Any], Any], Notes], tuple[Status, list[Any] | None]],
) -> tuple[Status, list[Any] | None]:
    """``body(call, notes)`` with the worker's call made for it alone (its resource, if
    any, exited after it); a failure to make it is the status."""
    notes: Notes = []
    with ExitStack() as stack:
        try:
            call = open_worker(job, stack, notes)
        except Exception as exc:
            return error_status(exc, NO_ITEM, notes, job[4] == os.getpid()), None
        return body(call, notes)


class _Stopped(Exception):
    """Raised into a join call whose run has stopped, so that it unwinds."""


class Joining:
    """One join call (``join=True``), driven step by step: the function runs on a thread
    of its own, with its resource (``setup=``), made, used and exited there (a sqlite3
    connection refuses any other thread), reading its input stream as ``step`` feeds it;
    its outputs come back with each step. A worker process's loop and a Ray actor both
    drive it.

    ``_cond`` guards every field below it: the call's thread and the steps (another
    thread) meet there.
    """

    def __init__(self, job: Job, notes: Notes) -> None:
        self._job = job
        self._notes = notes
        self._cond = threading.Condition()
        self._inputs: deque[Any] = deque()  # fed, not yet read by the call
        self._ended = False  # the relay said the input is over
        self._stopped = False  # the run stopped: the next read raises _Stopped
        self._waiting = False  # the call waits for input
        self._outputs: list[Any] = []
        self._most = 1  # the most outputs held before the call waits (the last step's)
        self._done = False
        self._error: BaseException | None = None
        self._told = False  # the error went back with a step already
        self._thread: threading.Thread | None = None

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
            with ExitStack() as stack:
                call = open_worker(self._job, stack, self._notes)
                result = call(self._stream())
                outputs = _outputs(result) if self._job[0].branch else iter([result])
                try:
                    for output in outputs:
                        with self._cond:
                            # No further ahead than the room downstream: the relay asks
                            # for the next outputs once it has handed these on.
                            while len(self._outputs) >= self._most and not self._stopped:
                                self._cond.wait()
                            if self._stopped:
                                break
                            self._outputs.append(output)
                            self._cond.notify_all()
                finally:
                    close = getattr(outputs, "close", None)
                    if close is not None:  # its finally runs now, before its resource is exited
                        close()
        except _Stopped:
            pass
        except BaseException as exc:  # (SystemExit too: told, never lost)
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def step(self, items: list[Any], end: bool, most: int) -> tuple[str, list[Any], list[Any]] | Envelope:
        """Feed ``items`` (``end``: the input is over), then wait until the call wants more
        input, has ``most`` outputs, or is done (its resource exited): ("need" | "out" |
        "done", outputs, what it was fed and did not read: a call that returned early
        leaves those for its siblings), or the envelope of its error (or its resource's)."""
        with self._cond:
            self._inputs.extend(items)
            self._ended = self._ended or end
            self._waiting = False
            self._most = most
            self._cond.notify_all()
            if self._thread is None and not self._done:
                self._thread = threading.Thread(target=self._run, name="pyper:join", daemon=True)
                self._thread.start()
            while not (self._done or len(self._outputs) >= most or (self._waiting and not self._inputs)):
                self._cond.wait()
            outputs, self._outputs = self._outputs, []
            self._cond.notify_all()  # (the call may wait for room)
            if self._done and self._error is not None:
                self._told = True
                return seal(self._error)
            left: list[Any] = []
            if self._done:
                left = list(self._inputs)
                self._inputs.clear()
            return ("done" if self._done else "out" if len(outputs) >= most else "need"), outputs, left

    def stop(self, seconds: float = 5.0) -> BaseException | None:
        """Stop the call if it is still reading (the run stopped), and wait (bounded) for
        its thread to exit its resource: what that raised, if no step told it yet."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(seconds)
        with self._cond:
            return None if self._told else self._error
