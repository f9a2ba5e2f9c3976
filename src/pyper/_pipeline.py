"""``Pipeline`` and ``AsyncPipeline``: immutable plans, composed with ``|`` and ``>``.

A pipeline is a tuple of validated tasks (``_spec.Task``) and nothing else:
nothing loop-bound or thread-bound is created before it is run, so one pipeline
may be run many times, at once, from any thread, task or event loop. Calling it
validates what can only be checked then and returns a generator (or async
generator) that starts the run when first iterated.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Iterable
from typing import Any, Generic, NoReturn, ParamSpec, Protocol, TypeVar, overload

from ._errors import PipelineSetupError
from ._spec import Task, classify, describe

__all__ = ["AsyncPipeline", "Pipeline"]

P = ParamSpec("P")
T = TypeVar("T")
U = TypeVar("U")
R = TypeVar("R")


class _Callers:
    """The engine's two callers (``iterate``), imported as the first pipeline is made, not
    by ``from pyper import task``: a program pays for the engine when it makes a pipeline
    (before its first run, whose first output should not wait for an import), and a
    worker process that unpickles a task never does. Written once, by whichever thread
    gets here first (two that race import the same modules and write the same functions)."""

    __slots__ = ("sync", "asynchronous")

    def __init__(self) -> None:
        self.sync: Callable[[tuple[Task, ...], tuple[Any, ...], dict[str, Any]], Generator[Any, None, None]] | None = None
        self.asynchronous: Callable[[tuple[Task, ...], tuple[Any, ...], dict[str, Any]], AsyncGenerator[Any, None]] | None = None

    def load_sync(self) -> Callable[[tuple[Task, ...], tuple[Any, ...], dict[str, Any]], Generator[Any, None, None]]:
        self._load()
        assert self.sync is not None
        return self.sync

    def load_async(self) -> Callable[[tuple[Task, ...], tuple[Any, ...], dict[str, Any]], AsyncGenerator[Any, None]]:
        self._load()
        assert self.asynchronous is not None
        return self.asynchronous

    def _load(self) -> None:
        from ._engine import _async_caller, _sync_caller

        self.asynchronous, self.sync = _async_caller.iterate, _sync_caller.iterate  # type: ignore[assignment]


_callers = _Callers()


class Pipeline(Generic[P, T]):
    """Tasks run concurrently, each feeding the next. Built by ``task(...)`` and ``|``."""

    __slots__ = ("_tasks",)
    _tasks: tuple[Task, ...]

    def __new__(cls, tasks: Iterable[Task]) -> Pipeline[P, T]:
        """``Pipeline(tasks)``: a pipeline of these tasks (an ``AsyncPipeline`` if any is
        async), as ``Pipeline(p.tasks)`` in code written for the original Pyper."""
        tasks = tuple(tasks)
        if not tasks or not all(isinstance(t, Task) for t in tasks):
            raise TypeError(
                f"Pipeline(tasks) needs a non-empty sequence of tasks (from task(...).tasks), got {tasks!r}"
            )
        if cls is Pipeline and any(t.is_async for t in tasks):
            cls = AsyncPipeline
        if _callers.sync is None:
            # Load the engine now rather than inside the first run: a program that makes a
            # pipeline runs it, and its first output should not wait for an import (a
            # program that only imports pyper, a worker process, never loads it).
            _callers.load_sync()
        if cls is AsyncPipeline:
            # The asyncio executor (and asyncio) too, for the same reason. Sync-only
            # programs never get here.
            from ._engine import _async  # noqa: F401
        self = object.__new__(cls)
        object.__setattr__(self, "_tasks", tasks)
        return self

    @property
    def tasks(self) -> tuple[Task, ...]:
        """The pipeline's tasks in order, each with its options as attributes (read-only)."""
        return self._tasks

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable; compose a new one with |")

    def __str__(self) -> str:
        return " | ".join(t.name for t in self._tasks)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self})"

    def check_first_task(self) -> None:
        first = self._tasks[0]
        if first.most > 1 or first.join or first.policy.batch:
            raise PipelineSetupError(
                f"task {first.name!r} is the first task of pipeline {self}: it is called once, "
                "with the pipeline's arguments, so it cannot have workers > 1, join=True or "
                "batch=; give those to a later task"
            )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Generator[T, None, None]:
        """Run lazily: nothing starts until the returned generator is iterated."""
        self.check_first_task()
        return (_callers.sync or _callers.load_sync())(self._tasks, args, kwargs)

    @overload
    def pipe(self, other: _AsyncTaking[T, U]) -> AsyncPipeline[P, U]: ...
    @overload
    def pipe(self, other: _Taking[T, U]) -> Pipeline[P, U]: ...
    def pipe(self, other: object) -> Pipeline[P, Any]:
        """This pipeline's outputs become ``other``'s inputs (also spelled ``|``)."""
        if not isinstance(other, Pipeline):
            raise TypeError(
                f"cannot pipe {self} into {other!r}: wrap a function with task() first, "
                f"as in `... | task({describe(other)})`"
            )
        tasks = self._tasks + other._tasks
        if any(t.is_async for t in tasks):
            return AsyncPipeline(tasks)
        return Pipeline(tasks)

    __or__ = pipe

    @overload
    def consume(
        self, consumer: Callable[[AsyncGenerator[T, None]], Awaitable[R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def consume(self, consumer: Callable[[Generator[T, None, None]], R]) -> Callable[P, R]: ...
    def consume(self, consumer: Callable[..., Any]) -> Callable[P, Any]:
        """A function that runs the pipeline and passes its output stream to ``consumer``
        (also spelled ``>``). The stream is closed when ``consumer`` returns."""
        _check_consumer(self, consumer)
        if classify(consumer)[0] != "sync":
            as_async: AsyncPipeline[P, T] = AsyncPipeline(self._tasks)
            return as_async.consume(consumer)

        def run(*args: P.args, **kwargs: P.kwargs) -> Any:
            stream = self(*args, **kwargs)
            try:
                return consumer(stream)
            finally:
                stream.close()

        return run

    __gt__ = consume


class AsyncPipeline(Pipeline[P, T]):
    """A pipeline with at least one async task: run with ``async for`` or ``await``."""

    __slots__ = ()

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[T, None]:  # type: ignore[override]
        """Run lazily: nothing starts until the returned async generator is iterated."""
        self.check_first_task()
        return (_callers.asynchronous or _callers.load_async())(self._tasks, args, kwargs)

    def pipe(self, other: _Taking[T, U] | _AsyncTaking[T, U]) -> AsyncPipeline[P, U]:
        return AsyncPipeline(Pipeline.pipe(self, other)._tasks)

    __or__ = pipe

    def consume(  # type: ignore[override]
        self, consumer: Callable[[AsyncGenerator[T, None]], Awaitable[R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]:
        _check_consumer(self, consumer)
        if classify(consumer)[0] == "sync":
            raise TypeError(
                f"{describe(consumer)!r} cannot consume {self!r}: an AsyncPipeline's output is an "
                "async stream, so its consumer must be an async function (async def ..., "
                "reading it with `async for`)"
            )

        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            stream = self(*args, **kwargs)
            try:
                return await consumer(stream)
            finally:
                await stream.aclose()

        return run

    __gt__ = consume  # type: ignore[assignment]


# -- Types for | and .pipe: "a pipeline whose first task accepts an item T" ---------------------
# Protocols rather than Pipeline[[T], U], whose parameters are invariant: with these the next
# task may accept a wider type (items T = int into a task taking float, object, int | None).
# ``_tasks`` keeps plain functions out, as the run-time check in ``pipe`` does.

_T_contra = TypeVar("_T_contra", contravariant=True)
_U_co = TypeVar("_U_co", covariant=True)


class _Taking(Protocol[_T_contra, _U_co]):
    """A ``Pipeline`` (not async) that can be called with one item ``_T_contra``."""

    @property
    def _tasks(self) -> tuple[Task, ...]: ...
    def __call__(self, item: _T_contra, /) -> Generator[_U_co, None, None]: ...


class _AsyncTaking(Protocol[_T_contra, _U_co]):
    """An ``AsyncPipeline`` that can be called with one item ``_T_contra``."""

    @property
    def _tasks(self) -> tuple[Task, ...]: ...
    def __call__(self, item: _T_contra, /) -> AsyncGenerator[_U_co, None]: ...


def _check_consumer(pipeline: Pipeline[Any, Any], consumer: object) -> None:
    if not callable(consumer):
        raise TypeError(f"{pipeline!r} > {consumer!r}: the consumer must be a callable")
