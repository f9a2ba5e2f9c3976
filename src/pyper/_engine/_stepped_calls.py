# GENERATED from _async_calls.py by scripts/unasync.py (the stepped twin): edit that file, then run
# `python scripts/unasync.py` (a test fails while this file is stale).
"""What a worker calls per item when its task sets per-call options (``setup=``,
``retries=``, ``on_error=``, ``unpack=``): built once per worker, in the worker.

``_async_calls.py`` is the source; ``_sync_calls.py`` (thread workers, and the loop of
worker processes in ``_child``) is generated from it by ``scripts/unasync.py``.

A task with none of these options never comes here: its workers call ``stage.call``
as it is, so the options cost nothing on the per-item path of a task that does not
set them. Otherwise ``run_worker`` wraps the worker's loop::

    func      = the task's function, bound arguments applied
    setup=    func(resource, ...)        the worker's own resource, made and entered here
    unpack=   func(*item) / func(**item)
    timeout=  each attempt given up at the deadline (_timeouts: the executor's way; on
              threads the loop runs stepped, and each thread driving it makes the resource)
    rate=     each attempt waits for its slot of the task's rate (cancellable)
    retries=  call again on retry_on, after a backoff wait (cancellable)
    on_error= a failed item's call gives what the handler makes of it: for a mapping
              task the value of Emit(value), or DROPPED (the loop then hands on
              nothing: ``Worker.drops``); for a branching one a stream

and exits the resource when the loop ends, on every path. Everything here runs in the
worker's own thread, task or process, and owns what it makes; but for ``timeout=`` on
threads, where the loop runs as the stepped twin (``_stepped_calls``, ``_stepped_loops``),
driven by one thread at a time, each with the resource it made (``_timeouts``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from functools import partial
from typing import Any

from .._errors import Broken, Cancelled, WorkerProcessDied, add_note, attach, safe_str, short_repr
from .._policy import DROPPED, Emit, delay, forget, remember
from .._spec import Task, stage_call

__all__ = ["handle_failure", "open_call", "run_worker"]

#: Raised through every option, never retried nor handled as an item's error: the run
#: stopping, a worker process that died, an interrupt (even with retry_on=BaseException).
_NEVER_RETRIED = (Cancelled, Broken, WorkerProcessDied, KeyboardInterrupt, SystemExit, GeneratorExit)

#: What the calls report as they happen (counted for the metrics, and logged at the level
#: ``_run.EVENTS`` gives each): a failed attempt retried, a failed item skipped, a failed
#: item handed to the on_error handler.
RETRY, SKIP, HANDLED = "retry", "skip", "handled"

#: ``log(event, message)``: an event of a worker's calls, for the caller's process (it
#: counts it, and logs the message on the ``pyper`` logger); ``log(event, message,
#: (item, exc))`` for a failed item on_error= dropped or handled (``Worker.note``: counted
#: against the task's budget, written as a dead letter).
Log = Callable[..., None]


#: ``timed(bind, stack)``: the call given up at the task's timeout (the executor's way);
#: ``bind(stack)`` makes the call, with its resource entered on ``stack``, where it is called
#: (awaited on asyncio: ``timed`` returns an awaitable there).
Timed = Callable[[Callable[[Any], Any], Any], Any]


def run_worker(
    worker: Any, loop: Callable[[Any], None], args: tuple[Any, ...] | None,
    kwargs: dict[str, Any], wait: Callable[[float], None], timed: Timed | None = None,
    task: Task | None = None,
) -> None:
    """Run ``loop(worker)`` with ``worker.call`` built from the options of ``task`` (by
    default its stage's; a relay gives its own: the call a remote one). The resource is
    exited on every path; if that raises while the loop is raising, the teardown's error
    is attached to the loop's (or, when the loop was only stopped by the run, it is the
    worker's error)."""
    stack = ExitStack()

    try:
        # (log records are the worker's: counted for the metrics, logged naming task and run)
        task = task or worker.stage.task
        worker.call = open_call(task, args, kwargs, stack, wait, worker.note, timed, worker.run)
        worker.drops = task.policy.on_error != "raise" and not task.branch
        (yield from loop(worker))
    except BaseException as exc:
        try:
            stack.__exit__(type(exc), exc, exc.__traceback__)
        except BaseException as teardown:
            if teardown is exc:
                raise
            if isinstance(exc, (Cancelled, Broken)):
                raise teardown from None  # the run is stopping: this is the worker's own error
            attach(exc, [teardown])
        raise
    stack.close()


def open_call(
    task: Task, args: tuple[Any, ...] | None, kwargs: dict[str, Any], stack: ExitStack,
    wait: Callable[[float], None], log: Log, timed: Timed | None = None, run: Any = None,
) -> Callable[[Any], Any]:
    """The worker's call (see the module's docstring); its resource is entered on ``stack``.
    ``timed`` applies ``timeout=`` (None where the caller applies it: a process's relay)."""
    policy = task.policy
    bind = partial(_bound, task, args, kwargs)
    if policy.timeout is not None and timed is not None:
        # The executor's way: on asyncio, this task makes the call; on threads (stepped),
        # each thread that drives the loop makes the calls, with its own resource (_timeouts).
        call: Callable[[Any], Any] = timed(bind, stack)
    else:
        call = bind(stack)
    if policy.limiter is not None:  # each attempt is a call the limit counts
        call = _paced(call, policy.limiter, wait)
    # How a log record names the input: the first task's one call takes the pipeline's arguments.
    shown: Callable[[Any], str] = _the_call if args is not None else _the_item
    if policy.retries:
        call = _retrying(task, call, wait, log, shown)
    if policy.on_error != "raise":
        call = _guarded(task, call, log, shown, run)
    return call


def _bound(
    task: Task, args: tuple[Any, ...] | None, kwargs: dict[str, Any], stack: ExitStack,
) -> Callable[[Any], Any]:
    """The task's call on one item: its function given the resource (made here, and
    entered on ``stack``, by the thread or task that will run the calls), ``unpack=``
    applied, and for the first task the pipeline's arguments."""
    policy = task.policy
    func = task.func
    if policy.setup is not None:
        stack.callback(forget, remember(task.name))  # runs last, after the resource's exit
        try:
            resource = _resource(policy.setup, policy.setup_async, stack)
        except Exception as exc:
            add_note(exc, f"pyper: raised by the setup of task {task.name!r}")
            raise
        func = _with_first(func, resource)
    if policy.unpack and args is None:
        func = partial(_unpacked, func)
    return stage_call(task, args, kwargs, func)


def _cancelled(exc: BaseException) -> bool:
    """An ``asyncio.CancelledError`` (a ``BaseException``: only ``retry_on=BaseException`` catches it)."""
    return type(exc).__name__ == "CancelledError" and not isinstance(exc, Exception)


def _paced(
    call: Callable[[Any], Any], limiter: Any, wait: Callable[[float], None],
) -> Callable[[Any], Any]:
    """The call, started no earlier than the task's rate allows (``Limiter``: the turn is
    decided when the call starts, so a wait that overran does not start it early). Where
    the rate is high (``Limiter.block`` > 1) a call that need not wait takes a block of
    turns, and this worker's next calls use them without asking (``left``: owned by the
    worker, which makes its calls one at a time)."""
    reserve, start, give_back, block = limiter.reserve, limiter.start, limiter.give_back, limiter.block
    left = [0]  # turns this worker holds

    def paced(x: Any) -> Any:
        if left[0]:
            left[0] -= 1
            return (yield from call(x))
        seconds = reserve(block)
        if seconds is not None:  # in line
            try:
                while seconds is not None:
                    wait(seconds)
                    seconds = start(block)
            except BaseException:
                give_back()
                raise
        left[0] = block - 1
        return (yield from call(x))

    return paced


def _the_item(x: Any) -> str:
    return f"item {short_repr(x)}"


def _the_call(x: Any) -> str:
    return "its call"


def _resource(setup: Callable[[], Any], is_async: bool, stack: ExitStack) -> Any:
    """Make the worker's resource; a context manager is entered (and exited with ``stack``)."""
    value = setup()
    if hasattr(value, "__enter__"):
        return stack.enter_context(value)
    return value


def _with_first(func: Callable[..., Any], value: Any) -> Callable[..., Any]:
    """``func`` with ``value`` as its first argument, before any bound ones."""
    if isinstance(func, partial):
        return partial(func.func, value, *func.args, **func.keywords)
    return partial(func, value)


def _unpacked(func: Callable[..., Any], item: Any) -> Any:
    if isinstance(item, tuple):
        return func(*item)
    if isinstance(item, dict):
        return func(**item)
    return func(item)


def _retrying(
    task: Task, call: Callable[[Any], Any], wait: Callable[[float], None], log: Log,
    shown: Callable[[Any], str],
) -> Callable[[Any], Any]:
    policy, name = task.policy, task.name
    retries, retry_on, backoff = policy.retries, policy.retry_on, policy.backoff
    streams = task.branch and task.is_gen  # a generator: retried only until it first yields

    def attempts(x: Any) -> Any:
        failures: list[BaseException] = []
        while True:
            try:
                result = (yield from call(x))
                if streams:
                    result = _started(result)
                return result
            except BaseException as exc:
                # (not one to retry, or the last: the error ends the item, with a note for
                # each attempt before it; dead letters count the calls by them)
                if (not isinstance(exc, retry_on) or isinstance(exc, _NEVER_RETRIED) or _cancelled(exc)
                        or len(failures) == retries):
                    for number, failure in enumerate(failures, 1):
                        add_note(exc, f"pyper: attempt {number} of {retries + 1} raised {safe_str(failure)}")
                    raise
                failures.append(exc)
                seconds = delay(backoff, len(failures))
                log(RETRY, f"pyper: task {name!r} retries {shown(x)} in {seconds:.3g} s "
                          f"(attempt {len(failures)} of {retries + 1} raised {safe_str(exc)})")
                wait(seconds)

    return attempts


def _started(result: Any) -> Any:
    """A generator's outputs, its first one already made: a failure before it has
    yielded anything is retried; once it has yielded, nothing is (no output twice)."""
    items = result.__iter__()
    try:
        first = items.__next__()
    except StopIteration:
        return ()
    return _chained(first, items)


def _chained(first: Any, items: Iterator[Any]) -> Iterator[Any]:
    try:
        yield first
        for item in items:
            yield item
    finally:
        _close(items)


def _close(items: Any) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()


def handle_failure(task: Task, x: Any, exc: Exception, log: Log, shown: str | None = None) -> tuple[Any, ...]:
    """What ``on_error=`` makes of item ``x``, whose call raised ``exc``: nothing (skipped,
    logged), or what the handler returns (``Emit(value)``: that value). ``shown``: how a log
    record names the input (by default, the item's short repr). A worker's guarded call
    comes here, and so does a relay with what its remote side sent back (``_relay``)."""
    handler, name = task.policy.on_error, task.name
    what = f"item {short_repr(x)}" if shown is None else shown
    if handler == "skip":
        log(SKIP, f"pyper: task {name!r} skipped {what} after {safe_str(exc)}", (x, exc))
        return ()
    assert callable(handler)
    log(HANDLED, f"pyper: task {name!r} handed {what} to on_error after {safe_str(exc)}", (x, exc))
    out = handler(x, exc)
    return (out.value,) if isinstance(out, Emit) else ()


def _guarded(
    task: Task, call: Callable[[Any], Any], log: Log, shown: Callable[[Any], str], run: Any,
) -> Callable[[Any], Any]:
    """The call, with errors handled per item by ``on_error``: a branching task's outputs
    as a stream; a mapping task's output, or ``DROPPED``."""
    branch = task.branch

    def handled(x: Any, exc: Exception) -> tuple[Any, ...]:
        return handle_failure(task, x, exc, log, shown(x))

    from ._bridge import iter_result  # (a worker process runs no guarded call: not loaded there)

    def stream(x: Any, result: Any) -> Iterator[Any]:
        items = iter_result(task, result, run)
        try:
            for item in items:
                yield item
        except Exception as exc:
            if isinstance(exc, _NEVER_RETRIED):
                raise
            for item in handled(x, exc):
                yield item
        finally:
            _close(items)

    def guarded(x: Any) -> Any:
        try:
            result = (yield from call(x))
        except Exception as exc:
            if isinstance(exc, _NEVER_RETRIED):
                raise
            outputs = handled(x, exc)
            if branch:
                return outputs
            return outputs[0] if outputs else DROPPED
        return stream(x, result) if branch else result

    return guarded
