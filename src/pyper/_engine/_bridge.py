"""Where a worker meets what it did not make: the iterable a branching call returned,
and the context an inline call runs in. Each function has a sync twin (for thread
workers and sync callers) and an async one (for asyncio workers and async callers),
named ``x``/``ax`` as the generated worker loops expect (``scripts/unasync.py``).

- ``iter_result``: the items a branching call returned, as a sync iterator, for a
  thread. An async iterable (a sync call in an async run returned one) is stepped
  on the run's loop, each step a task of the run, while the thread waits.
- ``aiter_result``: the same as an async iterator, for a task on the loop. A lazy
  sync iterator (say, a generator an async function returned) is advanced on a
  pyper thread a chunk at a time, so the loop never runs its code; a built-in
  container is iterated in place.
- ``call_inline``/``acall_inline``: call a task once, inline in its caller, in a
  copy of the caller's context, so that its context changes stay its own (for a
  coroutine, each of its steps runs in the copy).
- ``call_chain``/``acall_chain``: a whole pipeline called once, inline, when nothing
  in it could overlap (``chained``): each task's call on the one value the task
  before made.

asyncio is imported by the async functions only, so that sync programs never load it.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import types
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from itertools import islice
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .._errors import Cancelled, add_note, short_repr
from .._spec import Task
from . import _threads
from ._run import MAX_BATCH, SETTLE_SECONDS, Run, adapt, branch_error, observing

if TYPE_CHECKING:
    import asyncio

__all__ = ["acall_chain", "acall_inline", "aiter_result", "call_chain", "call_inline", "chained", "iter_result"]

#: Iterated on the loop as they are: their iteration runs no user code.
_IN_PLACE = (list, tuple, dict, set, frozenset, str, bytes, bytearray, range, deque)


def iter_result(task: Task, result: object, run: Run | None) -> Iterator[Any]:
    """The items a branching call returned, for a thread to pour."""
    if run is not None and run.loop is not None and not hasattr(result, "__iter__") and hasattr(result, "__aiter__"):
        return _stepped_on_loop(run, run.loop, result)
    try:
        return iter(result)  # type: ignore[call-overload,no-any-return]
    except TypeError:
        cls = type(result)
        if hasattr(cls, "__iter__") or hasattr(cls, "__getitem__"):
            raise  # the iterable's own __iter__ raised: the user's error, as it is
        raise branch_error(task, result) from None


def aiter_result(task: Task, result: object, run: Run | None) -> AsyncIterator[Any]:
    """The items a branching call returned, for a task on the loop to pour."""
    if hasattr(result, "__aiter__"):
        return result.__aiter__()  # type: ignore[no-any-return]
    items = iter_result(task, result, None)
    if isinstance(result, _IN_PLACE):
        return _in_place(items)
    return _stepped_on_threads(items, task)


async def _in_place(items: Iterator[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def call_inline(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], run: Run | None) -> Any:
    """Call ``task`` once with the pipeline's arguments, in a copy of the caller's context."""
    context = run.context.copy() if run is not None else contextvars.copy_context()
    return context.run(_entered, run, task.func, args, kwargs)


def _entered(run: Run | None, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if run is not None:
        run.enter()
    return func(*args, **kwargs)


def chained(tasks: tuple[Task, ...], executor: str) -> bool:
    """Whether a pipeline called once, whose first task runs inline, is a chain of single
    calls on one value: every later task runs on the caller's own ``executor`` and makes
    one output from one input (not ``branch``, not ``join``, not a nested pipeline), with
    no per-call option and no ``daemon``, and no ``observe()`` watches. With one item in
    flight there is nothing to overlap: the caller makes the calls itself, one after
    another (``call_chain``), rather than hand the value to a worker and wait for it
    (two thread switches: about 50 us here, more than the calls)."""
    for task in tasks[1:]:
        if (task.executor != executor or task.branch or task.join or task.pipeline or task.daemon
                or task.policy.any):
            return False
    return observing.get() is None


def call_chain(tasks: tuple[Task, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The pipeline's one output, its tasks called one after another in the caller
    (``chained``): each call in a copy of the caller's context, as each worker runs in
    one; an error of a later task carries the note a worker's would (task and item)."""
    value = call_inline(tasks[0], args, kwargs, None)
    for task in tasks[1:]:
        try:
            value = contextvars.copy_context().run(task.func, value)
        except Exception as exc:
            add_note(exc, f"pyper: raised in task {task.name!r} on item {short_repr(value)}")
            raise
    return value


async def acall_chain(tasks: tuple[Task, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The async twin of ``call_chain``: each coroutine's steps run in its copy of the
    context, in the caller's task."""
    value = await acall_inline(tasks[0], args, kwargs, None)
    for task in tasks[1:]:
        try:
            context = contextvars.copy_context()
            result = context.run(task.func, value)
            value = await _stepped_in(context, result.__await__()) if task.kind == "coro" else result
        except Exception as exc:
            add_note(exc, f"pyper: raised in task {task.name!r} on item {short_repr(value)}")
            raise
    return value


async def acall_inline(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], run: Run | None) -> Any:
    """The async twin of ``call_inline``: the call and every step of the awaitable it
    returns run in the copy, in the caller's task (no task of its own: no loop hop)."""
    context = run.context.copy() if run is not None else contextvars.copy_context()
    if run is not None:  # asyncio is loaded: this is an async run
        context.run(run.enter, sys.modules["asyncio"].current_task())
    result = context.run(task.func, *args, **kwargs)
    if task.kind == "coro":
        result = await _stepped_in(context, result.__await__())
    return result


@types.coroutine
def _stepped_in(context: contextvars.Context, steps: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Drive an awaitable's iterator to its end, each step inside ``context``, passing
    what it yields (futures) up to the task and what the task sends or throws (results,
    cancellation) down to it: ``yield from``, but in another context."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            if error is None:
                yielded = context.run(steps.send, value)
            else:
                yielded = context.run(steps.throw, error)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = (yield yielded), None
        except BaseException as exc:  # thrown into the task: cancellation, for one
            value, error = None, exc


def _stepped_on_loop(run: Run, loop: asyncio.AbstractEventLoop, result: Any) -> Iterator[Any]:
    """Iterate, from a worker thread, an async iterable that a sync call returned.

    Each step runs on the run's loop (where the iterable belongs) as a task of the
    run, so cancelling the run interrupts it; this thread waits for it.
    """
    import asyncio
    import concurrent.futures

    items = result.__aiter__()

    async def step(advance: Callable[[], Any]) -> Any:
        me = asyncio.current_task()
        assert me is not None
        run.tasks.add(me)
        try:
            if run.cancelled:  # cancelled before this step was registered
                raise Cancelled
            return await advance()
        finally:
            run.tasks.discard(me)

    def on_loop(advance: Callable[[], Any]) -> Any:
        if run.cancelled:
            raise Cancelled
        try:
            return asyncio.run_coroutine_threadsafe(step(advance), loop).result()
        except (concurrent.futures.CancelledError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not loop.is_closed():
                raise
            raise Cancelled from None  # cancelled, or the loop is gone

    try:
        while True:
            try:
                item = on_loop(items.__anext__)
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            try:
                asyncio.run_coroutine_threadsafe(aclose(), loop).result(timeout=SETTLE_SECONDS)
            except (RuntimeError, concurrent.futures.CancelledError, TimeoutError):
                pass  # the loop is gone or stopping: it closes what is left


class _Stepper:
    """A sync iterator advanced on pyper threads, one chunk per job, for a task on the loop.

    At most one job touches the iterator at a time. ``_lock`` guards ``_busy`` (a job
    is advancing the iterator) and ``_closing`` (the consumer left: whoever finishes
    last closes the iterator, on a thread, so its ``finally`` never runs on the loop).
    """

    def __init__(self, items: Iterator[Any], task: Task) -> None:
        self.items = items
        self.name = f"pyper:{task.name}:iterate"
        self._lock = threading.Lock()
        self._busy = False
        self._closing = False

    def next_chunk(self, n: int, loop: asyncio.AbstractEventLoop) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = loop.create_future()

        def job() -> None:
            chunk: list[Any] | None = None
            error: BaseException | None = None
            try:
                chunk = list(islice(self.items, n))
            except BaseException as exc:
                error = exc
            with self._lock:
                self._busy = False
                close = self._closing
            if close:
                self._close()
                return
            try:
                loop.call_soon_threadsafe(_settle, future, chunk, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                self._close()

        with self._lock:
            self._busy = True
        _threads.spawn([(job, self.name)], daemon=False, nonblocking=True, on_error=lambda exc: None)
        return future

    def close(self) -> None:
        with self._lock:
            self._closing = True
            if self._busy:
                return  # the job in flight closes it when its chunk is done
        _threads.spawn([(self._close, self.name)], daemon=False, nonblocking=True, on_error=lambda exc: None)

    def _close(self) -> None:
        close = getattr(self.items, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                pass  # the consumer has left: nobody to report to but the log
        self.items = iter(())


def _settle(future: asyncio.Future[list[Any]], chunk: list[Any] | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(chunk)  # type: ignore[arg-type]


async def _stepped_on_threads(items: Iterator[Any], task: Task) -> AsyncIterator[Any]:
    import asyncio

    loop = asyncio.get_running_loop()
    stepper = _Stepper(items, task)
    n = 1
    try:
        while True:
            started = perf_counter()
            chunk = await stepper.next_chunk(n, loop)
            elapsed = perf_counter() - started
            for item in chunk:
                yield item
            if len(chunk) < n:
                return
            n = adapt(n, len(chunk), elapsed, MAX_BATCH)
    finally:
        stepper.close()
