"""``pyper.gather(f, g, h)``: several functions on the same item, run at once; the call
returns the tuple of their results, in order.

    task(gather(summarize, translate, classify), workers=4)
    # each document -> (summary, translation, label), the three calls running concurrently

All the functions are async (the calls are awaited together, ``asyncio.gather``) or all
are sync (the first runs in the worker's own thread, the others on pyper's reused
threads, so ``workers=4`` runs up to 12 calls at once). Every call runs to its end; if
any raised, the first error in the order of the functions is raised (the others are
attached to it, as a run's are). It is a plain callable: ``multiprocess=True`` runs it
in a worker process (its threads there), and every task option applies to the whole
gathered call.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, TypeVar, overload

from ._errors import attach
from ._spec import classify, describe

__all__ = ["gather"]

_T = TypeVar("_T")


@overload
def gather(*funcs: Callable[[_T], Coroutine[Any, Any, Any]]) -> Callable[[_T], Coroutine[Any, Any, tuple[Any, ...]]]: ...
@overload
def gather(*funcs: Callable[[_T], Any]) -> Callable[[_T], tuple[Any, ...]]: ...
def gather(*funcs: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A function of one item that calls every one of ``funcs`` on it, at once, and
    returns the tuple of their results."""
    if not funcs:
        raise TypeError("gather() needs at least one function")
    for func in funcs:
        if not callable(func):
            raise TypeError(f"gather() takes functions, got {func!r}")
    kinds = {classify(func)[0] for func in funcs}
    if len(kinds) > 1:
        names = ", ".join(f"{describe(f)} ({classify(f)[0]})" for f in funcs)
        raise TypeError(f"gather() needs all sync or all async functions, got {names}: "
                        "wrap the odd one, or use two tasks")
    if kinds & {"agen"} or any(classify(func)[1] for func in funcs):
        raise TypeError("gather() calls functions that return one result each, not generators")
    return _AsyncGather(funcs) if kinds == {"coro"} else _SyncGather(funcs)


class _Gather:
    __slots__ = ("funcs", "__qualname__")

    def __init__(self, funcs: tuple[Callable[[Any], Any], ...]) -> None:
        self.funcs = funcs
        self.__qualname__ = f"gather({', '.join(describe(f) for f in funcs)})"

    def __repr__(self) -> str:
        return self.__qualname__

    def __reduce__(self) -> tuple[Any, ...]:  # by value: the functions, each by reference
        return type(self), (self.funcs,)


def _ignore(exc: BaseException) -> None:
    pass  # spawn reports a failure to start a thread here only when nonblocking


def _first_error(outcomes: list[tuple[bool, Any]]) -> BaseException | None:
    errors: list[BaseException] = [value for ok, value in outcomes if not ok]
    if not errors:
        return None
    attach(errors[0], errors[1:])
    return errors[0]


class _SyncGather(_Gather):
    __slots__ = ()

    def __call__(self, item: Any) -> tuple[Any, ...]:
        from ._engine import _threads

        first, others = self.funcs[0], self.funcs[1:]
        outcomes: list[tuple[bool, Any]] = [(True, None)] * len(self.funcs)
        left = [len(others)]
        lock = threading.Lock()
        done = threading.Lock()
        done.acquire()

        def job(i: int, func: Callable[[Any], Any]) -> None:
            try:
                outcome: tuple[bool, Any] = (True, func(item))
            except BaseException as exc:
                outcome = (False, exc)
            outcomes[i] = outcome
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                done.release()

        if others:
            # Each call in a copy of this worker's context (it sees what the caller set, and
            # a pipeline it starts belongs to this run), on a thread as daemon as this one.
            jobs: list[tuple[Callable[[], None], str]] = [
                (partial(contextvars.copy_context().run, job, i, f), f"pyper:{self.__qualname__}")
                for i, f in enumerate(others, 1)
            ]
            _threads.spawn(jobs, daemon=threading.current_thread().daemon, nonblocking=False,
                           on_error=_ignore)
        try:
            outcomes[0] = (True, first(item))
        except BaseException as exc:
            outcomes[0] = (False, exc)
        if others:
            done.acquire()  # every call runs to its end: nothing is left running
        error = _first_error(outcomes)
        if error is not None:
            raise error
        return tuple(value for _, value in outcomes)


class _AsyncGather(_Gather):
    __slots__ = ()

    async def __call__(self, item: Any) -> tuple[Any, ...]:
        import asyncio

        results = await asyncio.gather(*(func(item) for func in self.funcs), return_exceptions=True)
        outcomes = [(not isinstance(r, BaseException), r) for r in results]
        error = _first_error(outcomes)
        if error is not None:
            raise error
        return tuple(results)
