"""``task(...)``: validate options once and classify the callable once.

Everything decided here (sync or async, branching or not, the call adapter) is
decided at ``task(...)`` time, so that the engine's per-item path does no checks.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Iterable, Iterator
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Literal,
    ParamSpec,
    Protocol,
    TypeAlias,
    TypedDict,
    TypeVar,
    Unpack,
    overload,
)

if TYPE_CHECKING:
    from ._pipeline import AsyncPipeline, Pipeline

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
            func = func.__wrapped__  # type: ignore[union-attr]
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
        func = functools.partial(func, *args, **kwargs)

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
        func=func,
        name=name,
        kind=kind,
        workers=workers,
        branch=is_gen if branch is None else branch,
        join=join,  # type: ignore[arg-type]  # checked above: a bool
        throttle=throttle,
        ordered=ordered,  # type: ignore[arg-type]
        daemon=daemon,  # type: ignore[arg-type]
    )


class _TaskFactory:
    """``task(func, /, *, workers=1, ...)``: a one-task pipeline; also a decorator.

    See ``__call__`` for the options. ``task.bind(*args, **kwargs)`` makes the value
    of ``bind=``: arguments bound before the item, as ``functools.partial`` does.
    """

    __slots__ = ()

    # Overloads are tried in order: decorator forms (no func) first, then one group per
    # literal branch=/join= combination, async before sync and iterators before plain values
    # within each. See "Types of task(...)" below the class for the whole picture.

    # -- @task(...): options now, function later --------------------------------------------------
    @overload
    def __call__(
        self, func: None = None, /, *, branch: None = None, join: Literal[False] = False,
        bind: None = None, **options: Unpack[_Options],
    ) -> _Decorator: ...
    @overload
    def __call__(
        self, func: None = None, /, *, branch: Literal[True], join: Literal[False] = False,
        bind: None = None, **options: Unpack[_Options],
    ) -> _BranchDecorator: ...
    @overload
    def __call__(
        self, func: None = None, /, *, branch: Literal[False], join: Literal[False] = False,
        bind: None = None, **options: Unpack[_Options],
    ) -> _NoBranchDecorator: ...
    @overload
    def __call__(
        self, func: None = None, /, *, branch: None = None, join: Literal[True],
        bind: None = None, **options: Unpack[_Options],
    ) -> _JoinDecorator: ...
    @overload
    def __call__(
        self, func: None = None, /, *, branch: Literal[True], join: Literal[True],
        bind: None = None, **options: Unpack[_Options],
    ) -> _JoinBranchDecorator: ...
    @overload
    def __call__(
        self, func: None = None, /, *, branch: Literal[False], join: Literal[True],
        bind: None = None, **options: Unpack[_Options],
    ) -> _JoinNoBranchDecorator: ...
    @overload
    def __call__(
        self, func: None = None, /, *, branch: None = None, join: bool = False,
        bind: _Bound, **options: Unpack[_Options],
    ) -> _BoundDecorator: ...
    @overload
    def __call__(
        self, func: None = None, /, *, branch: Literal[True], join: bool = False,
        bind: _Bound, **options: Unpack[_Options],
    ) -> _BoundBranchDecorator: ...
    @overload
    def __call__(
        self, func: None = None, /, *, branch: Literal[False], join: bool = False,
        bind: _Bound, **options: Unpack[_Options],
    ) -> _BoundNoBranchDecorator: ...
    @overload
    def __call__(
        self, func: None = None, /, *, branch: bool | None = None, join: bool = False,
        bind: _Bound | None = None, **options: Unpack[_Options],
    ) -> Callable[[Callable[..., Any]], Any]: ...

    # -- task(func): branch=None (the default) ----------------------------------------------------
    @overload
    def __call__(
        self, func: AsyncPipeline[_P, _T], /, *, branch: None = None,
        join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> AsyncPipeline[_P, _T]: ...
    @overload
    def __call__(
        self, func: Pipeline[_P, _T], /, *, branch: None = None,
        join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> Pipeline[_P, _T]: ...
    @overload
    def __call__(
        self, func: Callable[_P, AsyncIterator[_T]], /, *, branch: None = None,
        join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> AsyncPipeline[_P, _T]: ...
    @overload
    def __call__(
        self, func: Callable[_P, Coroutine[Any, Any, _R]], /, *, branch: None = None,
        join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> AsyncPipeline[_P, _R]: ...
    @overload
    def __call__(
        self, func: Callable[_P, Iterator[_T]], /, *, branch: None = None,
        join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> Pipeline[_P, _T]: ...
    @overload
    def __call__(
        self, func: Callable[_P, _R], /, *, branch: None = None,
        join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> Pipeline[_P, _R]: ...

    # -- task(func, branch=True): fan out whatever iterable func returns --------------------------
    @overload
    def __call__(
        self, func: Callable[_P, AsyncIterator[_T]], /, *, branch: Literal[True],
        join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> AsyncPipeline[_P, _T]: ...
    @overload
    def __call__(
        self, func: Callable[_P, Coroutine[Any, Any, AsyncIterable[_T]]], /, *,
        branch: Literal[True], join: Literal[False] = False, bind: None = None,
        **options: Unpack[_Options],
    ) -> AsyncPipeline[_P, _T]: ...
    @overload
    def __call__(
        self, func: Callable[_P, Coroutine[Any, Any, Iterable[_T]]], /, *,
        branch: Literal[True], join: Literal[False] = False, bind: None = None,
        **options: Unpack[_Options],
    ) -> AsyncPipeline[_P, _T]: ...
    @overload
    def __call__(
        self, func: Callable[_P, Iterable[_T]], /, *, branch: Literal[True],
        join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> Pipeline[_P, _T]: ...

    # -- task(func, branch=False): emit what func returns, even a generator -----------------------
    @overload
    def __call__(
        self, func: Callable[_P, Coroutine[Any, Any, _R]], /, *, branch: Literal[False],
        join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> AsyncPipeline[_P, _R]: ...
    @overload
    def __call__(
        self, func: Callable[_P, _AIt], /, *, branch: Literal[False],
        join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> AsyncPipeline[_P, _AIt]: ...
    @overload
    def __call__(
        self, func: Callable[_P, _R], /, *, branch: Literal[False],
        join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> Pipeline[_P, _R]: ...

    # -- task(func, join=True): func reads the whole stream of items _T ---------------------------
    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], AsyncIterator[_U]], /, *,
        branch: None = None, join: Literal[True], bind: None = None,
        **options: Unpack[_Options],
    ) -> AsyncPipeline[[_T], _U]: ...
    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], Coroutine[Any, Any, _R]], /, *,
        branch: None = None, join: Literal[True], bind: None = None,
        **options: Unpack[_Options],
    ) -> AsyncPipeline[[_T], _R]: ...
    @overload
    def __call__(
        self, func: Callable[[Iterator[_T]], Iterator[_U]], /, *,
        branch: None = None, join: Literal[True], bind: None = None,
        **options: Unpack[_Options],
    ) -> Pipeline[[_T], _U]: ...
    @overload
    def __call__(
        self, func: Callable[[Iterator[_T]], _R], /, *,
        branch: None = None, join: Literal[True], bind: None = None,
        **options: Unpack[_Options],
    ) -> Pipeline[[_T], _R]: ...

    # -- task(func, join=True, branch=True) -------------------------------------------------------
    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], AsyncIterator[_U]], /, *,
        branch: Literal[True], join: Literal[True], bind: None = None,
        **options: Unpack[_Options],
    ) -> AsyncPipeline[[_T], _U]: ...
    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], Coroutine[Any, Any, AsyncIterable[_U]]], /, *,
        branch: Literal[True], join: Literal[True], bind: None = None,
        **options: Unpack[_Options],
    ) -> AsyncPipeline[[_T], _U]: ...
    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], Coroutine[Any, Any, Iterable[_U]]], /, *,
        branch: Literal[True], join: Literal[True], bind: None = None,
        **options: Unpack[_Options],
    ) -> AsyncPipeline[[_T], _U]: ...
    @overload
    def __call__(
        self, func: Callable[[Iterator[_T]], Iterable[_U]], /, *,
        branch: Literal[True], join: Literal[True], bind: None = None,
        **options: Unpack[_Options],
    ) -> Pipeline[[_T], _U]: ...

    # -- task(func, join=True, branch=False) ------------------------------------------------------
    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], Coroutine[Any, Any, _R]], /, *,
        branch: Literal[False], join: Literal[True], bind: None = None,
        **options: Unpack[_Options],
    ) -> AsyncPipeline[[_T], _R]: ...
    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], _AIt], /, *,
        branch: Literal[False], join: Literal[True], bind: None = None,
        **options: Unpack[_Options],
    ) -> AsyncPipeline[[_T], _AIt]: ...
    @overload
    def __call__(
        self, func: Callable[[Iterator[_T]], _R], /, *,
        branch: Literal[False], join: Literal[True], bind: None = None,
        **options: Unpack[_Options],
    ) -> Pipeline[[_T], _R]: ...

    # -- task(func, bind=task.bind(...)): the pipeline's parameters become unknown (...) ----------
    @overload
    def __call__(
        self, func: Callable[..., AsyncIterator[_T]], /, *, branch: None = None,
        join: bool = False, bind: _Bound, **options: Unpack[_Options],
    ) -> AsyncPipeline[..., _T]: ...
    @overload
    def __call__(
        self, func: Callable[..., Coroutine[Any, Any, _R]], /, *, branch: None = None,
        join: bool = False, bind: _Bound, **options: Unpack[_Options],
    ) -> AsyncPipeline[..., _R]: ...
    @overload
    def __call__(
        self, func: Callable[..., Iterator[_T]], /, *, branch: None = None,
        join: bool = False, bind: _Bound, **options: Unpack[_Options],
    ) -> Pipeline[..., _T]: ...
    @overload
    def __call__(
        self, func: Callable[..., _R], /, *, branch: None = None,
        join: bool = False, bind: _Bound, **options: Unpack[_Options],
    ) -> Pipeline[..., _R]: ...
    @overload
    def __call__(
        self, func: Callable[..., AsyncIterator[_T]], /, *, branch: Literal[True],
        join: bool = False, bind: _Bound, **options: Unpack[_Options],
    ) -> AsyncPipeline[..., _T]: ...
    @overload
    def __call__(
        self, func: Callable[..., Coroutine[Any, Any, AsyncIterable[_T]]], /, *,
        branch: Literal[True], join: bool = False, bind: _Bound, **options: Unpack[_Options],
    ) -> AsyncPipeline[..., _T]: ...
    @overload
    def __call__(
        self, func: Callable[..., Coroutine[Any, Any, Iterable[_T]]], /, *,
        branch: Literal[True], join: bool = False, bind: _Bound, **options: Unpack[_Options],
    ) -> AsyncPipeline[..., _T]: ...
    @overload
    def __call__(
        self, func: Callable[..., Iterable[_T]], /, *, branch: Literal[True],
        join: bool = False, bind: _Bound, **options: Unpack[_Options],
    ) -> Pipeline[..., _T]: ...
    @overload
    def __call__(
        self, func: Callable[..., Coroutine[Any, Any, _R]], /, *, branch: Literal[False],
        join: bool = False, bind: _Bound, **options: Unpack[_Options],
    ) -> AsyncPipeline[..., _R]: ...
    @overload
    def __call__(
        self, func: Callable[..., _AIt], /, *, branch: Literal[False],
        join: bool = False, bind: _Bound, **options: Unpack[_Options],
    ) -> AsyncPipeline[..., _AIt]: ...
    @overload
    def __call__(
        self, func: Callable[..., _R], /, *, branch: Literal[False],
        join: bool = False, bind: _Bound, **options: Unpack[_Options],
    ) -> Pipeline[..., _R]: ...

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
            return lambda f: self(f, **options)  # type: ignore[call-overload]
        spec = make_task(func, **options)
        return AsyncPipeline((spec,)) if spec.is_async else Pipeline((spec,))

    @overload
    @staticmethod
    def bind() -> None: ...
    @overload
    @staticmethod
    def bind(*args: Any, **kwargs: Any) -> _Bound: ...
    @staticmethod
    def bind(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Arguments to bind to a task's function: ``task(f, bind=task.bind(1, key=2))``
        calls ``f(1, item, key=2)``. With no arguments, ``None``."""
        if not args and not kwargs:
            return None
        return args, kwargs


# -- Types of task(...) ---------------------------------------------------------------------
#
# What task(...) returns depends on the callable's kind and on the literal values of branch=
# and join= (the overloads of _TaskFactory.__call__ above, tried in order):
#
#   func returns (as the checker sees it)  branch     pipeline emits     class
#   AsyncIterator[T] (async generator)     None/True  T                  AsyncPipeline
#   Coroutine[.., R] (async def)           None       R                  AsyncPipeline
#   Coroutine[.., Iterable[T]]             True       T                  AsyncPipeline
#   Iterator[T] (generator; a Pipeline)    None/True  T                  Pipeline
#   Iterable[T]                            True       T                  Pipeline
#   R (anything else)                      None       R                  Pipeline
#   anything                               False      the return value   as above
#
# The pipeline's parameters are func's (ParamSpec _P, names and defaults kept). With join=True,
# func takes one Iterator[T] (AsyncIterator[T] if async) and the pipeline takes items T. With
# bind= they are unknown (...): bound arguments cannot be subtracted from a signature.
#
# branch= and join= must be literals: task(f, branch=flag) is a type error. A catch-all
# overload would accept it, but would also turn every mismatch in `p | task(f)` into Any
# silently. The decorator form has one: task(branch=flag)(f) is typed Any.
#
# Where the static view differs from the run-time classification (_classify): a sync function
# annotated to return an Iterator that is not a generator function is typed as fanning out
# (at run time it does only with branch=True); a sync callable returning a coroutine is typed
# as async (at run time it is a sync task that emits coroutine objects).

_P = ParamSpec("_P")
_T = TypeVar("_T")
_U = TypeVar("_U")
_R = TypeVar("_R")
_AIt = TypeVar("_AIt", bound=AsyncIterator[Any])

_Bound: TypeAlias = tuple[tuple[Any, ...], dict[str, Any]]
"""What ``task.bind(...)`` returns (with no arguments it returns ``None``)."""


class _Options(TypedDict, total=False):
    """The keyword options of ``task(...)`` that do not change its type."""

    workers: int
    concurrency: int | None
    throttle: int
    ordered: bool
    multiprocess: bool
    daemon: bool


# -- What the decorator form @task(...) returns: the overloads above, per branch=/join= -----
# These protocols exist for the type checker; at run time @task(...) returns a plain function.


class _Decorator(Protocol):
    """``@task(...)`` with the default branch (``None``) and ``join=False``."""

    @overload
    def __call__(self, func: AsyncPipeline[_P, _T], /) -> AsyncPipeline[_P, _T]: ...
    @overload
    def __call__(self, func: Pipeline[_P, _T], /) -> Pipeline[_P, _T]: ...
    @overload
    def __call__(self, func: Callable[_P, AsyncIterator[_T]], /) -> AsyncPipeline[_P, _T]: ...
    @overload
    def __call__(
        self, func: Callable[_P, Coroutine[Any, Any, _R]], /
    ) -> AsyncPipeline[_P, _R]: ...
    @overload
    def __call__(self, func: Callable[_P, Iterator[_T]], /) -> Pipeline[_P, _T]: ...
    @overload
    def __call__(self, func: Callable[_P, _R], /) -> Pipeline[_P, _R]: ...


class _BranchDecorator(Protocol):
    """``@task(branch=True, ...)``."""

    @overload
    def __call__(self, func: Callable[_P, AsyncIterator[_T]], /) -> AsyncPipeline[_P, _T]: ...
    @overload
    def __call__(
        self, func: Callable[_P, Coroutine[Any, Any, AsyncIterable[_T]]], /
    ) -> AsyncPipeline[_P, _T]: ...
    @overload
    def __call__(
        self, func: Callable[_P, Coroutine[Any, Any, Iterable[_T]]], /
    ) -> AsyncPipeline[_P, _T]: ...
    @overload
    def __call__(self, func: Callable[_P, Iterable[_T]], /) -> Pipeline[_P, _T]: ...


class _NoBranchDecorator(Protocol):
    """``@task(branch=False, ...)``."""

    @overload
    def __call__(
        self, func: Callable[_P, Coroutine[Any, Any, _R]], /
    ) -> AsyncPipeline[_P, _R]: ...
    @overload
    def __call__(self, func: Callable[_P, _AIt], /) -> AsyncPipeline[_P, _AIt]: ...
    @overload
    def __call__(self, func: Callable[_P, _R], /) -> Pipeline[_P, _R]: ...


class _JoinDecorator(Protocol):
    """``@task(join=True, ...)``."""

    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], AsyncIterator[_U]], /
    ) -> AsyncPipeline[[_T], _U]: ...
    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], Coroutine[Any, Any, _R]], /
    ) -> AsyncPipeline[[_T], _R]: ...
    @overload
    def __call__(self, func: Callable[[Iterator[_T]], Iterator[_U]], /) -> Pipeline[[_T], _U]: ...
    @overload
    def __call__(self, func: Callable[[Iterator[_T]], _R], /) -> Pipeline[[_T], _R]: ...


class _JoinBranchDecorator(Protocol):
    """``@task(join=True, branch=True, ...)``."""

    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], AsyncIterator[_U]], /
    ) -> AsyncPipeline[[_T], _U]: ...
    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], Coroutine[Any, Any, AsyncIterable[_U]]], /
    ) -> AsyncPipeline[[_T], _U]: ...
    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], Coroutine[Any, Any, Iterable[_U]]], /
    ) -> AsyncPipeline[[_T], _U]: ...
    @overload
    def __call__(self, func: Callable[[Iterator[_T]], Iterable[_U]], /) -> Pipeline[[_T], _U]: ...


class _JoinNoBranchDecorator(Protocol):
    """``@task(join=True, branch=False, ...)``."""

    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], Coroutine[Any, Any, _R]], /
    ) -> AsyncPipeline[[_T], _R]: ...
    @overload
    def __call__(
        self, func: Callable[[AsyncIterator[_T]], _AIt], /
    ) -> AsyncPipeline[[_T], _AIt]: ...
    @overload
    def __call__(self, func: Callable[[Iterator[_T]], _R], /) -> Pipeline[[_T], _R]: ...


class _BoundDecorator(Protocol):
    """``@task(bind=task.bind(...), ...)``: the pipeline's parameters are unknown (``...``)."""

    @overload
    def __call__(self, func: Callable[..., AsyncIterator[_T]], /) -> AsyncPipeline[..., _T]: ...
    @overload
    def __call__(
        self, func: Callable[..., Coroutine[Any, Any, _R]], /
    ) -> AsyncPipeline[..., _R]: ...
    @overload
    def __call__(self, func: Callable[..., Iterator[_T]], /) -> Pipeline[..., _T]: ...
    @overload
    def __call__(self, func: Callable[..., _R], /) -> Pipeline[..., _R]: ...


class _BoundBranchDecorator(Protocol):
    """``@task(bind=task.bind(...), branch=True, ...)``."""

    @overload
    def __call__(self, func: Callable[..., AsyncIterator[_T]], /) -> AsyncPipeline[..., _T]: ...
    @overload
    def __call__(
        self, func: Callable[..., Coroutine[Any, Any, AsyncIterable[_T]]], /
    ) -> AsyncPipeline[..., _T]: ...
    @overload
    def __call__(
        self, func: Callable[..., Coroutine[Any, Any, Iterable[_T]]], /
    ) -> AsyncPipeline[..., _T]: ...
    @overload
    def __call__(self, func: Callable[..., Iterable[_T]], /) -> Pipeline[..., _T]: ...


class _BoundNoBranchDecorator(Protocol):
    """``@task(bind=task.bind(...), branch=False, ...)``."""

    @overload
    def __call__(
        self, func: Callable[..., Coroutine[Any, Any, _R]], /
    ) -> AsyncPipeline[..., _R]: ...
    @overload
    def __call__(self, func: Callable[..., _AIt], /) -> AsyncPipeline[..., _AIt]: ...
    @overload
    def __call__(self, func: Callable[..., _R], /) -> Pipeline[..., _R]: ...


task = _TaskFactory()
