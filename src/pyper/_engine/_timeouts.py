"""``timeout=``: a call that runs too long raises ``TimeoutError`` for its item.

- asyncio: the call is cancelled at the deadline (``timed_async``).
- threads: Python cannot stop a thread. Each worker hands its calls to a helper thread
  and waits for the result until the deadline (``timed_thread``). At the deadline the
  item raises ``TimeoutError`` and the helper is abandoned: the call finishes in the
  background and its result is dropped, while the worker goes on with a new helper, so
  the task keeps ``workers`` calls running. At most ``workers`` abandoned calls of a
  task run at once (``Abandoned``): past that, a worker waits for one of them to end
  before it abandons another, so a stuck service cannot pile up threads without bound.
  The helper owns the worker's ``setup=`` resource: it makes it, runs every call with it
  and exits it, all in its own thread (a sqlite3 connection, among others, refuses any
  other thread). A worker's new helper makes a new resource; an abandoned helper exits
  its own once its late call has returned (told of the timeout, as a context manager is
  told of any error), so no abandoned call ever sees its resource exited under it.
- processes: the relay waits for the reply until the deadline, then kills the worker
  process and starts another (``_process``).

The error goes through ``retries=`` and ``on_error=`` like any other.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType
from typing import Any

from .._errors import Cancelled

__all__ = ["timed_async", "timed_thread", "timeout_error"]

#: ``bind(stack)``: the task's call on one item, its resource (if any) made and entered on
#: ``stack`` (``_async_calls._bound``, awaited on asyncio).
Bind = Callable[[Any], Any]


def timeout_error(name: str, seconds: float) -> TimeoutError:
    return TimeoutError(f"task {name!r}: the call took longer than its timeout of {seconds:g} s")


async def timed_async(bind: Bind, stack: Any, *, seconds: float, name: str) -> Callable[[Any], Any]:
    """Each call of this worker's task cancelled at its deadline, raising ``TimeoutError``.

    One timer per worker, not one per call (``asyncio.timeout`` makes, schedules and
    cancels a timer each call: ~4 us): the call writes when it started (``started``), and
    the worker's timer, armed by the first call, fires ``seconds`` after the start of the
    call it was armed for; if another call is running by then, it is re-armed for that
    call's deadline, and if none is, the next call arms it again. Calls far shorter than
    the timeout cost a clock read each, and the timer fires once per ``seconds``.

    Who owns what: all of it belongs to the worker's task and its loop's thread (the timer
    runs there too, between the task's steps). ``started`` is set only while the task is
    inside ``await call(x)`` (no await between setting it and the call, nor between the
    call and clearing it), so a timer that finds it set cancels the task inside the call.
    ``cancelled``: the start of the call the timer cancelled (compared by identity: each
    clock read is a new float), with the task's cancel count before it, as
    ``asyncio.timeout`` keeps it, to tell the deadline's cancellation from the run's.
    """
    import asyncio

    call = await bind(stack)  # the worker's task makes the resource and runs every call
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    clock, call_at = loop.time, loop.call_at
    started: list[float | None] = [None]
    timer: list[asyncio.TimerHandle | None] = [None]
    cancelled: list[Any] = [None, 0]  # (the call's start, the task's cancel count before)

    def due() -> None:
        timer[0] = None
        start = started[0]
        if start is None:
            return  # no call running: the next one arms the timer
        deadline = start + seconds
        if clock() < deadline:
            timer[0] = call_at(deadline, due)
        else:
            cancelled[0], cancelled[1] = start, task.cancelling()
            task.cancel()

    def disarm() -> None:
        if timer[0] is not None:
            timer[0].cancel()
            timer[0] = None

    stack.callback(disarm)

    async def timed(x: Any) -> Any:
        started[0] = start = clock()
        if timer[0] is None:
            timer[0] = call_at(start + seconds, due)
        try:
            return await call(x)
        except asyncio.CancelledError:
            if cancelled[0] is start:
                cancelled[0] = None
                if task.uncancel() <= cancelled[1]:  # the deadline's cancellation, not the run's
                    raise timeout_error(name, seconds) from None
            raise
        finally:
            started[0] = None
            if cancelled[0] is start:  # the call swallowed the deadline's cancellation:
                cancelled[0] = None  # take it back, as asyncio.timeout does
                task.uncancel()

    return timed


#: ``_Helper._job`` telling the helper to exit its resource and end.
_STOP: Any = object()


class _Helper:
    """A thread that makes one worker's call (and its ``setup=`` resource), runs the
    calls one at a time in a copy of the worker's context, and exits the resource.

    Made by the worker, which waits for the setup (``__init__`` raises its error). Then
    the worker writes ``_job`` (``(item,)``, or ``_STOP`` with ``_exit``) and releases
    ``_go``; the helper writes ``_outcome`` and releases ``_done``. ``_state`` (guarded by
    ``_lock``): "running" (a call handed over), "done" (its outcome is in ``_outcome``,
    ``_done`` released) or "abandoned" (the worker stopped waiting at the deadline: the
    helper drops the result, exits its resource, gives back its abandoned slot and
    ends). What ends the thread: ``stop`` (the worker is done; it waits for the exit and
    gets its error), a failed setup, or the end of an abandoned call.
    """

    def __init__(self, context: contextvars.Context, run: Any, task: Any, bind: Bind) -> None:
        self._lock = threading.Lock()
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._job: Any = None
        self._exit: BaseException | None = None  # the worker's error, given to the resource's exit
        self._state = "running"  # the setup first
        self._outcome: tuple[bool, Any] = (True, None)
        self._context, self._run, self._task, self._bind = context, run, task, bind
        self.thread = threading.Thread(target=self._main, name=f"pyper:{task.name}:call", daemon=True)
        self.thread.start()
        self._done.acquire()
        ok, error = self._outcome
        if not ok:
            assert isinstance(error, BaseException)
            raise error

    def _main(self) -> None:
        context, run, task = self._context, self._run, self._task
        context.run(run.enter)
        stack = ExitStack()  # the resource: entered, used and exited in this thread only
        try:
            call = context.run(self._bind, stack)
        except BaseException as exc:
            self._exit_resource(stack, exc)  # what the setup entered before it failed
            self._outcome = (False, exc)
            self._done.release()
            return
        with self._lock:
            self._state = "done"
        self._done.release()
        abandoned = False
        while True:
            self._go.acquire()
            job, self._job = self._job, None
            if job is _STOP:
                break
            # The worker handed the call over before the run stopped, but this thread may
            # only now get to run it, after a break has returned: a stopped run starts no
            # call. (Run.cancel sets ``cancelled`` first: a cancel that lands after this
            # check finds the call under way, as it would in the worker's own thread.)
            if run.cancelled:
                outcome: tuple[bool, Any] = (False, Cancelled())
            else:
                try:
                    outcome = (True, context.run(call, *job))
                except BaseException as exc:
                    outcome = (False, exc)
            del job
            with self._lock:
                if self._state == "abandoned":
                    abandoned = True
                    self._exit = timeout_error(task.name, task.policy.timeout)
                    break
                self._state, self._outcome = "done", outcome
            self._done.release()
        del call
        error = self._exit_resource(stack, self._exit)
        if abandoned:
            if error is not None:
                run.fail(error, task)  # stops the run, or is logged if it has stopped
            task.policy.abandoned.ended()
        else:
            self._outcome = (error is None, error)
            self._done.release()

    @staticmethod
    def _exit_resource(stack: ExitStack, exc: BaseException | None) -> BaseException | None:
        """Exit what ``stack`` holds, told of ``exc``; the error the exit raised, if another."""
        try:
            stack.__exit__(type(exc) if exc is not None else None, exc, exc.__traceback__ if exc else None)
        except BaseException as teardown:
            if teardown is not exc:
                return teardown
        return None

    def run(self, x: Any, seconds: float) -> tuple[bool, tuple[bool, Any]]:
        """(finished, (ok, result or exception)); not finished: abandoned at the deadline."""
        with self._lock:
            self._job, self._state = (x,), "running"
        self._go.release()
        finished = self._done.acquire(timeout=seconds)
        with self._lock:
            if not finished and self._state == "done":  # it ended as the wait timed out
                self._done.acquire()
                finished = True
            if finished:
                return True, self._outcome
            self._state = "abandoned"
            return False, (False, None)

    def stop(self, exc: BaseException | None) -> None:
        """The worker is done (with ``exc``, if it is raising): the idle helper exits its
        resource and ends; what the exit raised is raised here, in the worker."""
        self._job, self._exit = _STOP, exc
        self._go.release()
        self._done.acquire()
        ok, error = self._outcome
        if not ok:
            raise error


def timed_thread(bind: Bind, stack: Any, *, run: Any, task: Any) -> Callable[[Any], Any]:
    """The call, run on the worker's helper thread and given up at the deadline. The
    first helper (and its resource) is made now: a setup error raises here, as it does
    without a timeout. Each helper runs in a copy of the worker's context (an abandoned
    one may still be in its own)."""
    seconds, name, abandoned = task.policy.timeout, task.name, task.policy.abandoned
    helper: list[_Helper | None] = [_Helper(contextvars.copy_context(), run, task, bind)]

    def stop(exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        current, helper[0] = helper[0], None
        if current is not None:
            current.stop(exc)
        return False

    stack.push(stop)  # the worker's last helper exits its resource with the worker

    def timed(x: Any) -> Any:
        current = helper[0]
        if current is None:  # the last one was abandoned: a new helper, a new resource
            try:
                current = helper[0] = _Helper(contextvars.copy_context(), run, task, bind)
            except Exception as exc:
                # As at the worker's start, a setup error stops the run (it is not the item's
                # error, for retries= or on_error= to handle): the run raises it, noted.
                run.fail(exc, task)
                raise Cancelled from None
        finished, (ok, value) = current.run(x, seconds)
        if not finished:
            helper[0] = None
            abandoned.add(run)  # waits while too many abandoned calls still run
            raise timeout_error(name, seconds)
        if ok:
            return value
        raise value

    return timed
