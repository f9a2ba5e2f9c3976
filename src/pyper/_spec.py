"""The task data: one validated, immutable ``Task`` per task of a pipeline, and the
classification of a callable (sync or async, generator or not).

This module is the bottom of pyper: every layer reads a ``Task``, and it imports
nothing of pyper. Everything decided here is decided once, at ``task(...)`` time,
so that the engine's per-item path does no checks.
"""

from __future__ import annotations

import functools
import sys
from types import BuiltinFunctionType, FunctionType, MethodType
from typing import Any, Callable, Literal, NamedTuple

__all__ = ["Kind", "Policy", "Task", "no_policy", "check_bool", "check_int", "classify", "describe", "stage_call"]

Kind = Literal["sync", "coro", "agen"]


class Policy(NamedTuple):
    """A task's per-call options, validated (``no_policy`` when none is set)."""

    setup: Callable[[], Any] | None = None
    setup_async: bool = False  # setup is an async function (an async task's only)
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: float | Callable[[int], float] = 0.1
    on_error: str | Callable[[Any, Exception], Any] = "raise"
    unpack: bool = False
    limiter: Any = None  # a _policy.Limiter, for rate=: shared by the task's workers and runs
    batch: int = 0  # the function receives lists of up to this many items (0: single items)
    linger: float | None = None  # a partial list goes once its first item waited this long
    timeout: float | None = None  # seconds per call (attempt)
    abandoned: Any = None  # a _policy.Abandoned, with timeout=: the task's abandoned thread calls
    max_failures: Any = None  # a _policy.Budget: the failed items allowed a run (with on_error=)
    dead_letters: Any = None  # a path (str) or a function: where skipped items go (_letters)
    journal: Any = None  # a _journal.Journal, on a first task: the job's done items (_engine._lineage)

    @property
    def any(self) -> bool:
        """Whether any option is set (if not, the worker calls the function as it is)."""
        return self != no_policy


no_policy = Policy()


class Task(NamedTuple):
    """One task of a pipeline, validated. Immutable and shared by every run.

    The attribute names are those of the original Pyper's ``Task`` (``func``,
    ``workers``, ``throttle``, ``join``, ``branch``, ``multiprocess``, ``is_gen``,
    ``is_async``), read by code written for it through ``Pipeline.tasks``; ``executor``
    says where the calls run. A ``NamedTuple``,
    not a dataclass: ``dataclasses`` imports ``inspect``, which would double the time
    ``import pyper`` takes, in every program and again in every worker process.
    """

    func: Callable[..., Any]  # what the engine calls: bound arguments already applied
    name: str  # for messages, thread names and logs
    kind: Kind  # "sync": a plain call; "coro": returns an awaitable; "agen": returns an async iterator
    is_gen: bool  # a generator (or async generator) function, or a pipeline
    workers: int
    branch: bool  # fan out what each call returns (resolved: never None here)
    join: bool
    throttle: int
    ordered: bool
    daemon: bool
    # Where the calls run: "thread", "asyncio", "process", "ray", or a
    # ``concurrent.futures.Executor`` of the user's. Set once, by ``task()``; the engine
    # reads it through its table of executors (``_engine._executors.row``) and nothing
    # else decides where a call runs.
    executor: Any = "thread"
    pipeline: bool = False  # ``func`` runs a nested pipeline: each call returns its output stream
    policy: Policy = no_policy  # setup=, retries=, on_error=, unpack= (see ``_policy``)
    # The executor's own settings, as sorted (name, value) pairs: Ray's (ray_options=).
    executor_options: tuple[tuple[str, Any], ...] = ()
    # workers=(lo, hi): the most workers the sizer may run (``workers`` is then lo, the
    # fewest, and how many start); 0 for a fixed size.
    max_workers: int = 0

    @property
    def is_async(self) -> bool:
        return self.kind != "sync"

    @property
    def multiprocess(self) -> bool:
        """Whether the calls run in worker processes of the stage's own (the original
        Pyper's attribute; ``executor`` says it for every executor)."""
        return bool(self.executor == "process")

    @property
    def most(self) -> int:
        """The most workers the stage may run at once."""
        return max(self.workers, self.max_workers)

    @property
    def adaptive(self) -> bool:
        """``workers=(lo, hi)`` with ``lo < hi``: the engine sizes the stage as it runs."""
        return self.max_workers > self.workers

    @property
    def concurrency(self) -> int:
        """The older name of ``workers``."""
        return self.workers


def describe(func: object) -> str:
    """A short name for messages and thread names."""
    seen = 0
    while isinstance(func, functools.partial) and seen < 10:
        func, seen = func.func, seen + 1
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if isinstance(name, str):
        return name
    return type(func).__name__


def _unwrap(func: object) -> object:
    """Look through partials, bound methods and ``functools.wraps`` decorators."""
    for _ in range(100):
        if isinstance(func, functools.partial):
            func = func.func
        elif isinstance(func, MethodType):
            func = func.__func__
        elif isinstance(func, FunctionType) and hasattr(func, "__wrapped__"):
            func = func.__wrapped__
        else:
            return func
    return func


# Code flags (``inspect.CO_*``), stable since Python 3.6; read here instead of importing
# ``inspect`` (with ``ast``, ``dis`` and ``tokenize``) into every program and worker process.
_CO_GENERATOR, _CO_COROUTINE, _CO_ASYNC_GENERATOR = 0x20, 0x80, 0x200


def _flags(func: object) -> int:
    return func.__code__.co_flags if isinstance(func, FunctionType) else 0


def _marked_coroutine(func: object) -> bool:
    """Marked with ``inspect.markcoroutinefunction`` (Python 3.12+)."""
    if sys.version_info >= (3, 12) and hasattr(func, "_is_coroutine_marker"):
        import inspect  # only for a callable that carries the mark

        return inspect.iscoroutinefunction(func)
    return False


def classify(func: object) -> tuple[Kind, bool]:
    """(kind, is a generator function) of any callable."""
    target = _unwrap(func)
    if not isinstance(target, (FunctionType, BuiltinFunctionType, type)):
        call = getattr(type(target), "__call__", None)
        if call is not None:
            target = _unwrap(call)
    flags = _flags(target)
    if flags & _CO_ASYNC_GENERATOR:
        return "agen", True
    if flags & _CO_COROUTINE or _marked_coroutine(target) or _marked_coroutine(func):
        return "coro", False
    return "sync", bool(flags & _CO_GENERATOR)


def check_int(name: str, option: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"task {name!r}: {option} must be an int, got {type(value).__name__} {value!r}"
        )
    if value < minimum:
        raise ValueError(f"task {name!r}: {option} must be >= {minimum}, got {value}")
    return value


def check_bool(name: str, option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"task {name!r}: {option} must be True or False, got {value!r}")
    return value


def stage_call(
    task: Task, args: tuple[Any, ...] | None, kwargs: dict[str, Any],
    func: Callable[..., Any] | None = None,
) -> Callable[[Any], Any]:
    """What a worker calls per item (``args`` given: the first task, called once with them):
    ``func``, by default the task's function.

    For an async stage the result is always awaitable: an async generator function's
    call is wrapped, so the worker loops await every call.
    """
    if func is None:
        func = task.func
    if args is not None:
        if task.kind == "agen":

            async def first_agen(_: Any) -> Any:
                return func(*args, **kwargs)

            return first_agen
        return lambda _: func(*args, **kwargs)
    if task.kind == "agen":

        async def agen(x: Any) -> Any:
            return func(x)

        return agen
    return func
