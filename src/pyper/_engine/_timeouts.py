"""``timeout=``: a call that runs too long raises ``TimeoutError`` for its item.

- asyncio: the call is cancelled at the deadline (``timed_async``).
- threads: Python cannot stop a thread. Each worker hands its calls to a helper thread
  and waits for the result until the deadline (``timed_thread``). At the deadline the
  item raises ``TimeoutError`` and the helper is abandoned: the call finishes in the
  background and its result is dropped, while the worker goes on with a new helper, so
  the task keeps ``workers`` calls running. At most ``workers`` abandoned calls of a
  task run at once (``Abandoned``): past that, a worker waits for one of them to end
  before it abandons another, so a stuck service cannot pile up threads without bound.
- processes: the relay waits for the reply until the deadline, then kills the worker
  process and starts another (``_process``).

The error goes through ``retries=`` and ``on_error=`` like any other.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

from .._errors import Cancelled
from .._policy import Abandoned

__all__ = ["timed_async", "timed_thread", "timeout_error"]


def timeout_error(name: str, seconds: float) -> TimeoutError:
    return TimeoutError(f"task {name!r}: the call took longer than its timeout of {seconds:g} s")


def timed_async(call: Callable[[Any], Any], stack: Any, *, seconds: float, name: str) -> Callable[[Any], Any]:
    import asyncio

    async def timed(x: Any) -> Any:
        try:
            async with asyncio.timeout(seconds):
                return await call(x)
        except TimeoutError as exc:
            if isinstance(exc.__cause__, asyncio.CancelledError):  # the deadline's, not the call's own
                raise timeout_error(name, seconds) from None
            raise

    return timed


class _Helper:
    """A thread that runs one worker's calls, one at a time, in the worker's context.

    State (guarded by ``_lock``): ``_job`` (the next call, set by the worker while the
    helper waits on ``_go``), ``_state``: "idle", "running", "done" (the result is in
    ``_outcome``, ``_done`` released) or "abandoned" (the worker stopped waiting: the
    helper drops the result, gives back its abandoned slot and exits).
    """

    def __init__(self, name: str, context: contextvars.Context, run: Any, abandoned: Abandoned) -> None:
        self._lock = threading.Lock()
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._job: tuple[Callable[[Any], Any], Any] | None = None
        self._state = "idle"
        self._outcome: tuple[bool, Any] = (True, None)
        self._abandoned = abandoned
        self._context = context
        self._run = run
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        run = self._run
        self._context.run(run.enter)
        while True:
            self._go.acquire()
            job = self._job
            if job is None:
                return
            call, x = job
            self._job = None
            # The worker handed the call over before the run stopped, but this thread may
            # only now get to run it, after a break has returned: a stopped run starts no
            # call. (Run.cancel sets ``cancelled`` first: a cancel that lands after this
            # check finds the call under way, as it would in the worker's own thread.)
            if run.cancelled:
                outcome: tuple[bool, Any] = (False, Cancelled())
            else:
                try:
                    outcome = (True, self._context.run(call, x))
                except BaseException as exc:
                    outcome = (False, exc)
            with self._lock:
                if self._state == "abandoned":
                    self._abandoned.ended()
                    return
                self._state, self._outcome = "done", outcome
            self._done.release()

    def run(self, call: Callable[[Any], Any], x: Any, seconds: float) -> tuple[bool, tuple[bool, Any]]:
        """(finished, (ok, result or exception)); not finished: abandoned at the deadline."""
        with self._lock:
            self._job, self._state = (call, x), "running"
        self._go.release()
        finished = self._done.acquire(timeout=seconds)
        with self._lock:
            if not finished and self._state == "done":  # it ended as the wait timed out
                self._done.acquire()
                finished = True
            if finished:
                self._state = "idle"
                return True, self._outcome
            self._state = "abandoned"
            return False, (False, None)

    def stop(self) -> None:
        """The worker is done: the idle helper exits."""
        self._job = None
        self._go.release()


def timed_thread(
    call: Callable[[Any], Any], stack: Any, *, seconds: float, name: str, run: Any,
    abandoned: Abandoned,
) -> Callable[[Any], Any]:
    """The call, run on the worker's helper thread and given up at the deadline. Each
    helper runs in a copy of the worker's context (an abandoned one may still be in its own)."""
    helper: list[_Helper | None] = [None]

    def stop() -> None:
        if helper[0] is not None:
            helper[0].stop()
            helper[0] = None

    stack.callback(stop)  # the worker's last helper exits with the worker

    def timed(x: Any) -> Any:
        current = helper[0]
        if current is None:
            current = helper[0] = _Helper(f"pyper:{name}:call", contextvars.copy_context(), run, abandoned)
        finished, (ok, value) = current.run(call, x, seconds)
        if not finished:
            helper[0] = None
            abandoned.add(run)  # waits while too many abandoned calls still run
            raise timeout_error(name, seconds)
        if ok:
            return value
        raise value

    return timed
