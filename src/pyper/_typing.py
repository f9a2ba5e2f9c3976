"""Types for the type checker: what ``task(...)`` and ``@task(...)`` return.

Nothing here runs: the protocols describe the decorator form ``@task(...)``, whose
overloads live on ``task`` itself (``_task.py``), and the type variables and
aliases those overloads share. At run time ``@task(...)`` returns a plain function.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Coroutine, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, Literal, ParamSpec, Protocol, TypeAlias, TypedDict, TypeVar, overload

if TYPE_CHECKING:
    import concurrent.futures

    from ._pipeline import AsyncPipeline, Pipeline
    from os import PathLike

    from ._failures import DeadLetter
    from ._journal import Journal
    from ._policy import Budget, OnError, Rate

_P = ParamSpec("_P")
_T = TypeVar("_T")
_U = TypeVar("_U")
_R = TypeVar("_R")
_AIt = TypeVar("_AIt", bound=AsyncIterator[Any])

Executor: TypeAlias = "Literal['thread', 'asyncio', 'process', 'ray'] | concurrent.futures.Executor"
"""Where a task's calls run (``executor=``): one of pyper's executors, or one of yours."""

_Bound: TypeAlias = tuple[tuple[Any, ...], dict[str, Any]]
"""What ``task.bind(...)`` returns (with no arguments it returns ``None``)."""


class _Options(TypedDict, total=False):
    """The keyword options of ``task(...)`` that do not change its type."""

    workers: int | tuple[int, int]
    concurrency: int | tuple[int, int] | None
    throttle: int
    ordered: bool
    multiprocess: bool
    daemon: bool
    retries: int
    retry_on: type[BaseException] | tuple[type[BaseException], ...]
    backoff: float | Callable[[int], float]
    on_error: OnError
    unpack: bool
    rate: float | Rate | None
    batch: int | None
    linger: float | None
    timeout: float | None
    max_failures: int | float | Budget | None
    dead_letters: str | PathLike[str] | Callable[[DeadLetter], object] | None
    journal: str | PathLike[str] | Journal | None
    executor: Executor | None
    ray_options: dict[str, Any] | None


# -- What the decorator form @task(...) returns: per branch=/join= --------------------------
# These protocols exist for the type checker; at run time @task(...) returns a plain function.


class _Decorator(Protocol):
    """``@task(...)`` with the default branch (``None``) and ``join=False``."""

    @overload
    def __call__(  # type: ignore[overload-overlap]  # AsyncPipeline subclasses Pipeline
        self, func: AsyncPipeline[_P, _T], /
    ) -> AsyncPipeline[_P, AsyncGenerator[_T, None]]: ...
    @overload
    def __call__(self, func: Pipeline[_P, _T], /) -> Pipeline[_P, Generator[_T, None, None]]: ...
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


