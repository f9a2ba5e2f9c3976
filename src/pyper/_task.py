"""``task(...)``: validate options once and classify the callable once.

Everything decided here (sync or async, branching or not, the call adapter) is
decided at ``task(...)`` time, so that the engine's per-item path does no checks.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Literal

__all__ = ["Task", "describe", "make_task", "task"]

Kind = Literal["sync", "coro", "agen"]


@dataclass(frozen=True, slots=True)
class Task:
    """One task of a pipeline, validated. Immutable and shared by every run."""

    func: Callable[..., Any]
    name: str
    kind: Kind  # "sync": a plain call; "coro": returns an awaitable; "agen": returns an async iterator
    workers: int
    branch: bool
    join: bool
    throttle: int
    ordered: bool
    daemon: bool

    @property
    def is_async(self) -> bool:
        return self.kind != "sync"


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
        elif inspect.ismethod(func):
            func = func.__func__
        elif hasattr(func, "__wrapped__") and (inspect.isfunction(func) or inspect.ismethod(func)):
            func = func.__wrapped__
        else:
            return func
    return func


def _classify(func: object) -> tuple[Kind, bool]:
    """(kind, is a generator function) of any callable."""
    target = _unwrap(func)
    if not (inspect.isfunction(target) or inspect.isbuiltin(target) or inspect.isclass(target)):
        call = getattr(type(target), "__call__", None)
        if call is not None and not isinstance(target, type):
            target = _unwrap(call)
    if inspect.isasyncgenfunction(target):
        return "agen", True
    if inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(func):
        return "coro", False
    return "sync", inspect.isgeneratorfunction(target)


def _check_int(name: str, option: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"task {name!r}: {option} must be an int, got {type(value).__name__} {value!r}"
        )
    if value < minimum:
        raise ValueError(f"task {name!r}: {option} must be >= {minimum}, got {value}")
    return value


def make_task(
    func: object,
    *,
    workers: object,
    concurrency: object,
    branch: object,
    join: object,
    throttle: object,
    ordered: object,
    bind: object,
    multiprocess: object,
    daemon: object,
) -> Task:
    from ._pipeline import AsyncPipeline, Pipeline

    if not callable(func):
        raise TypeError(f"task() needs a callable (a function, method or Pipeline), got {func!r}")
    name = describe(func)
    if concurrency is not None:
        if workers is not None:
            raise TypeError(
                f"task {name!r}: give workers= or its older alias concurrency=, not both"
            )
        workers = concurrency
    workers = _check_int(name, "workers", 1 if workers is None else workers, 1)
    throttle = _check_int(name, "throttle", throttle, 0)
    for option, value in (("join", join), ("ordered", ordered), ("multiprocess", multiprocess), ("daemon", daemon)):
        if not isinstance(value, bool):
            raise TypeError(f"task {name!r}: {option} must be True or False, got {value!r}")
    if branch is not None and not isinstance(branch, bool):
        raise TypeError(f"task {name!r}: branch must be True, False or None, got {branch!r}")

    if isinstance(func, Pipeline):
        func.check_first_task()
        kind: Kind = "agen" if isinstance(func, AsyncPipeline) else "sync"
        is_gen = True
        name = f"pipeline({func})"
    else:
        kind, is_gen = _classify(func)

    if bind is not None:
        if not (isinstance(bind, tuple) and len(bind) == 2):
            raise TypeError(f"task {name!r}: bind must come from task.bind(...), got {bind!r}")
        args, kwargs = bind
        func = functools.partial(func, *args, **kwargs)  # type: ignore[arg-type]

    if multiprocess:
        if kind != "sync":
            raise ValueError(
                f"task {name!r}: an async function cannot run in a process; "
                "drop multiprocess=True or make the function synchronous"
            )
        raise NotImplementedError(
            f"task {name!r}: multiprocess=True is not available yet in this version of pyper; "
            "drop it to run the task on threads"
        )
    if daemon and kind != "sync":
        raise ValueError(
            f"task {name!r}: daemon=True applies to threads only; an async task cannot be a daemon"
        )
    if ordered and join:
        raise ValueError(
            f"task {name!r}: ordered=True cannot be combined with join=True "
            "(a join task sees its whole input stream, in order, already)"
        )
    return Task(
        func=func,  # type: ignore[arg-type]
        name=name,
        kind=kind,
        workers=workers,
        branch=is_gen if branch is None else branch,
        join=join,
        throttle=throttle,
        ordered=ordered,
        daemon=daemon,
    )


class _TaskFactory:
    """``task(func, /, *, workers=1, ...)``: a one-task pipeline; also a decorator.

    See ``__call__`` for the options. ``task.bind(*args, **kwargs)`` makes the value
    of ``bind=``: arguments bound before the item, as ``functools.partial`` does.
    """

    __slots__ = ()

    def __call__(
        self,
        func: Any = None,
        /,
        *,
        workers: int | None = None,
        concurrency: int | None = None,
        branch: bool | None = None,
        join: bool = False,
        throttle: int = 0,
        ordered: bool = False,
        bind: tuple[tuple[Any, ...], dict[str, Any]] | None = None,
        multiprocess: bool = False,
        daemon: bool = False,
    ) -> Any:
        from ._pipeline import AsyncPipeline, Pipeline

        options = dict(
            workers=workers,
            concurrency=concurrency,
            branch=branch,
            join=join,
            throttle=throttle,
            ordered=ordered,
            bind=bind,
            multiprocess=multiprocess,
            daemon=daemon,
        )
        if func is None:
            return lambda f: self(f, **options)  # type: ignore[arg-type]
        spec = make_task(func, **options)
        return AsyncPipeline((spec,)) if spec.is_async else Pipeline((spec,))

    @staticmethod
    def bind(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Arguments to bind to a task's function: ``task(f, bind=task.bind(1, key=2))``
        calls ``f(1, item, key=2)``. With no arguments, ``None``."""
        if not args and not kwargs:
            return None
        return args, kwargs


task = _TaskFactory()
