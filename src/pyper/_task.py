"""``task(...)``: a one-task pipeline from a callable and its options; also a decorator.

Options are validated and the callable classified once, here (``_spec``), so that
the engine's per-item path does no checks. Most of this file is the overloads that
let a type checker follow the item types through ``|`` and ``>`` (the table below
the class says which overload applies when).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Coroutine, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, Concatenate, Literal, Unpack, overload

from ._engine._registry import EXECUTORS, Row, executor_name
from ._errors import PipelineSetupError
from ._pickling import dumps, have_cloudpickle
from ._pipeline import AsyncPipeline, Pipeline
from ._policy import OPTIONS, OnError, Rate, check_policy
from ._spec import Kind, Task, check_bool, check_int, classify, describe, no_policy
from ._typing import (
    Executor,
    _AIt,
    _Bound,
    _BoundBranchDecorator,
    _BoundDecorator,
    _BoundNoBranchDecorator,
    _BranchDecorator,
    _Decorator,
    _JoinBranchDecorator,
    _JoinDecorator,
    _JoinNoBranchDecorator,
    _NoBranchDecorator,
    _Options,
    _P,
    _R,
    _T,
    _U,
)

if TYPE_CHECKING:
    from os import PathLike

    from ._failures import DeadLetter
    from ._journal import Journal
    from ._policy import Budget

__all__ = ["make_task", "task"]


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
    executor: object = None,
    ray_options: object = None,
    **per_call: object,
) -> Task:
    """Validate ``task(func, ...)``'s options and classify ``func``: the task's data. The
    per-call options (``per_call``) are the rows of ``_policy.OPTIONS``."""
    if not callable(func):
        raise TypeError(f"task() needs a callable (a function, method or Pipeline), got {func!r}")
    name = describe(func)
    if concurrency is not None:
        if workers is not None:
            raise TypeError(
                f"task {name!r}: give workers= or its older alias concurrency=, not both"
            )
        workers = concurrency
    workers, most = _check_workers(name, workers)
    throttle = check_int(name, "throttle", throttle, 0)
    join = check_bool(name, "join", join)
    ordered = check_bool(name, "ordered", ordered)
    multiprocess = check_bool(name, "multiprocess", multiprocess)
    daemon = check_bool(name, "daemon", daemon)
    if branch is not None and not isinstance(branch, bool):
        raise TypeError(f"task {name!r}: branch must be True, False or None, got {branch!r}")

    pipeline = isinstance(func, Pipeline)
    kind: Kind
    if isinstance(func, Pipeline):
        # A nested pipeline: each call returns the inner run's output stream, one item
        # per input, fanned out only with branch=True (as in the original Pyper).
        func.check_first_task()
        kind = "agen" if isinstance(func, AsyncPipeline) else "sync"
        is_gen = False
        name = f"pipeline({func})"
    else:
        kind, is_gen = classify(func)
    where = _check_executor(name, executor, multiprocess, kind)
    place = EXECUTORS[executor_name(where)]

    if bind is not None:
        if not (isinstance(bind, tuple) and len(bind) == 2):
            raise TypeError(f"task {name!r}: bind must come from task.bind(...), got {bind!r}")
        args, kwargs = bind
        func = functools.partial(func, *args, **kwargs)

    policy = check_policy(name, kind, join=join, pipeline=pipeline, is_gen=is_gen, workers=most, **per_call)
    settings = _check_settings(name, where, place, ray_options)
    if place.remote:
        if pipeline:
            raise ValueError(
                f"task {name!r}: a pipeline runs in this process: it cannot run on executor="
                f"{_shown(where)}; give that executor to the tasks inside the nested pipeline"
            )
        plain = _pickling_pool(where)  # the standard library's pool pickles with pickle alone
        if place.pickles or plain:
            _check_sendable(name, where, "the function (and what bind= binds to it)", func, plain)
            for option, option_row in OPTIONS.items():  # what runs beside the call goes there too
                if option_row.runs == "call" and per_call.get(option, option_row.default) != option_row.default:
                    _check_sendable(name, where, f"{option}=", per_call[option], plain)
    if not place.per_worker and (policy.setup is not None or join):
        raise ValueError(
            f"task {name!r}: {'setup=' if policy.setup is not None else 'join=True'} needs workers of "
            f"pyper's own (a resource per worker, one call over a stream), and executor="
            f"{_shown(where)} runs each batch wherever it has room: make the resource in "
            "the function (or with the executor's initializer=), or drop executor="
        )
    if most > workers and join:
        raise ValueError(
            f"task {name!r}: join=True takes a fixed number of workers (each one's call sees its "
            f"share of the stream), not a range {(workers, most)}: give workers=N"
        )
    if most > workers and not place.sizable:
        raise ValueError(
            f"task {name!r}: a stage on executor={_shown(where)} takes a fixed number of workers, "
            f"not a range {(workers, most)} (it cannot size itself as it runs yet): give workers=N"
        )
    if daemon and place.module != "_thread":
        raise ValueError(
            f"task {name!r}: daemon=True applies to threads only; a task on executor="
            f"{_shown(where)} cannot be a daemon"
        )
    if ordered and join:
        raise ValueError(
            f"task {name!r}: ordered=True cannot be combined with join=True "
            "(a join task sees its whole input stream, in order, already)"
        )
    _check_installed(name, where, place)  # last: the options' own errors come first
    return Task(
        func=func,
        name=name,
        kind=kind,
        is_gen=is_gen,
        workers=workers,
        branch=is_gen if branch is None else branch,
        join=join,
        throttle=throttle,
        ordered=ordered,
        daemon=daemon,
        executor=where,
        pipeline=pipeline,
        policy=policy if policy.any else no_policy,
        executor_options=settings,
        max_workers=most if most > workers else 0,
    )


def _check_workers(name: str, workers: object) -> tuple[int, int]:
    """(fewest, most) workers: ``workers=N``, or a range ``workers=(lo, hi)`` the engine
    sizes the stage within as it runs."""
    if isinstance(workers, tuple):
        if len(workers) != 2:
            raise TypeError(
                f"task {name!r}: workers must be an int or a range (lo, hi) of two ints, got {workers!r}"
            )
        lo = check_int(name, "workers' lower bound", workers[0], 1)
        hi = check_int(name, "workers' upper bound", workers[1], 1)
        if hi < lo:
            raise ValueError(
                f"task {name!r}: workers=(lo, hi) needs lo <= hi, got {workers!r}"
            )
        return lo, hi
    n = check_int(name, "workers", 1 if workers is None else workers, 1)
    return n, n


def _shown(executor: object) -> str:
    return repr(executor) if isinstance(executor, str) else type(executor).__name__


def _check_executor(name: str, executor: object, multiprocess: bool, kind: Kind) -> Any:
    """Where the task's calls run (``Task.executor``), from ``executor=`` and
    ``multiprocess=``, checked against the executor's row: a name, or the user's
    ``concurrent.futures.Executor``."""
    if multiprocess and executor not in (None, "process"):
        raise ValueError(
            f"task {name!r}: multiprocess=True runs the task in processes, but executor="
            f"{_shown(executor)} was given too: give one of them"
        )
    if executor is None:
        executor = "process" if multiprocess else "thread" if kind == "sync" else "asyncio"
    names = [n for n in EXECUTORS if n != "futures"]
    if isinstance(executor, str):
        if executor not in names:
            raise ValueError(
                f"task {name!r}: executor must be {', '.join(map(repr, names))}, a "
                "concurrent.futures.Executor, or None (threads for a sync function, asyncio for "
                f"an async one), got {executor!r}"
            )
    else:
        futures = sys.modules.get("concurrent.futures")  # loaded if the user made an Executor
        if futures is None or not isinstance(executor, futures.Executor):
            raise TypeError(
                f"task {name!r}: executor must be {', '.join(map(repr, names))} or a "
                f"concurrent.futures.Executor instance, got {executor!r}"
            )
    place = EXECUTORS[executor_name(executor)]
    if (place.runs == "async") != (kind != "sync"):
        what = "an async function or pipeline" if kind != "sync" else "a synchronous function"
        runs = "async functions" if place.runs == "async" else "synchronous functions"
        given = "multiprocess=True" if multiprocess else f"executor={_shown(executor)}"
        raise ValueError(
            f"task {name!r}: {given} runs {runs}, and this task is {what}: drop {given} "
            "(pyper runs each kind where it belongs), or give it a function of the other kind"
        )
    return executor


def _check_installed(name: str, executor: object, place: Row) -> None:
    """The optional dependency the executor needs is installed (found, not imported)."""
    if place.needs is not None:
        module, install = place.needs
        import importlib.util

        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(
                f"task {name!r}: executor={_shown(executor)} needs {module}, which is not "
                f"installed here: {install}", name=module,
            )


def _check_settings(name: str, executor: object, place: Row, settings: object) -> tuple[tuple[str, Any], ...]:
    """The executor's own settings (``ray_options=``), checked against its row."""
    if settings is None:
        return ()
    if place.settings is None or place.settings[0] != "ray_options":
        raise ValueError(f"task {name!r}: ray_options= applies with executor='ray' only")
    accepted = place.settings[1]
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise TypeError(f"task {name!r}: ray_options must be a dict of Ray's options, got {settings!r}")
    unknown = sorted(set(settings) - accepted)
    if unknown:
        how = " (use retries=)" if {"max_retries", "max_restarts", "max_task_retries"} & set(unknown) else ""
        raise ValueError(
            f"task {name!r}: ray_options {', '.join(map(repr, unknown))} not accepted{how}; "
            f"it takes {', '.join(sorted(accepted))}"
        )
    return tuple(sorted(settings.items()))


def _pickling_pool(executor: object) -> bool:
    """A ``ProcessPoolExecutor`` of the user's: it pickles the function too."""
    futures = sys.modules.get("concurrent.futures")
    return futures is not None and isinstance(executor, futures.ProcessPoolExecutor)


def _check_sendable(name: str, executor: object, what: str, func: object, plain: bool = False) -> None:
    """``func`` goes to other processes: it must pickle (a ``RuntimeError``, as the
    original Pyper raised, if not); ``plain``: with ``pickle`` alone, never cloudpickle
    (the executor that sends it is not pyper's)."""
    try:
        if plain:
            import pickle

            pickle.dumps(func, pickle.HIGHEST_PROTOCOL)
        else:
            dumps(func)
    except Exception as exc:
        how = (
            "" if have_cloudpickle() or plain else
            ", or install cloudpickle (pip install 'python-pyper[cloudpickle]'), which sends "
            "lambdas, closures and decorated functions by value"
        )
        runs = "multiprocess=True" if executor == "process" else f"executor={_shown(executor)}"
        raise PipelineSetupError(
            f"task {name!r}: {runs} sends {what} to worker processes, but it "
            f"cannot be pickled ({type(exc).__name__}: {exc}). Define it at the top level of "
            "a module (not a lambda, a nested function, a closure or a function decorated "
            f"with @task) and bind arguments with bind=task.bind(...){how}"
        ) from None


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

    # -- setup=: the function takes the worker's resource first; the pipeline, the rest ---------
    # (the resource's type is not checked against setup's: a context manager gives what its
    # __enter__ returns, which a signature cannot say)
    @overload
    def __call__(
        self, func: None = None, /, *, setup: Callable[[], Any], branch: bool | None = None,
        join: bool = False, bind: _Bound | None = None, **options: Unpack[_Options],
    ) -> Callable[[Callable[..., Any]], Any]: ...
    @overload
    def __call__(
        self, func: Callable[Concatenate[Any, _P], AsyncIterator[_T]], /, *, setup: Callable[[], Any],
        branch: None = None, join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> AsyncPipeline[_P, _T]: ...
    @overload
    def __call__(
        self, func: Callable[Concatenate[Any, _P], Coroutine[Any, Any, _R]], /, *,
        setup: Callable[[], Any], branch: None | Literal[False] = None, join: Literal[False] = False,
        bind: None = None, **options: Unpack[_Options],
    ) -> AsyncPipeline[_P, _R]: ...
    @overload
    def __call__(
        self, func: Callable[Concatenate[Any, _P], Generator[_T, Any, Any]], /, *,
        setup: Callable[[], Any], branch: None = None, join: Literal[False] = False,
        bind: None = None, **options: Unpack[_Options],
    ) -> Pipeline[_P, _T]: ...
    @overload
    def __call__(
        self, func: Callable[Concatenate[Any, _P], _R], /, *, setup: Callable[[], Any],
        branch: None | Literal[False] = None, join: Literal[False] = False, bind: None = None,
        **options: Unpack[_Options],
    ) -> Pipeline[_P, _R]: ...
    @overload
    def __call__(
        self, func: Callable[..., Any], /, *, setup: Callable[[], Any], branch: bool | None = None,
        join: bool = False, bind: _Bound | None = None, **options: Unpack[_Options],
    ) -> Any: ...

    # -- task(func): branch=None (the default) ----------------------------------------------------
    # A nested pipeline emits its output stream per input (an AsyncPipeline: an async one;
    # the two overlap because AsyncPipeline subclasses Pipeline; the first match is right).
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, func: AsyncPipeline[_P, _T], /, *, branch: None | Literal[False] = None,
        join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> AsyncPipeline[_P, AsyncGenerator[_T, None]]: ...
    @overload
    def __call__(
        self, func: Pipeline[_P, _T], /, *, branch: None | Literal[False] = None,
        join: Literal[False] = False, bind: None = None, **options: Unpack[_Options],
    ) -> Pipeline[_P, Generator[_T, None, None]]: ...
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
        workers: int | tuple[int, int] | None = None,
        concurrency: int | tuple[int, int] | None = None,
        branch: bool | None = None,
        join: bool = False,
        throttle: int = 0,
        ordered: bool = False,
        bind: tuple[tuple[Any, ...], dict[str, Any]] | None = None,
        multiprocess: bool = False,
        daemon: bool = False,
        setup: Callable[[], Any] | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        backoff: float | Callable[[int], float] = 0.1,
        on_error: OnError = "raise",
        unpack: bool = False,
        rate: float | Rate | None = None,
        batch: int | None = None,
        linger: float | None = None,
        timeout: float | None = None,
        max_failures: int | float | Budget | None = None,
        dead_letters: str | PathLike[str] | Callable[[DeadLetter], object] | None = None,
        journal: str | PathLike[str] | Journal | None = None,
        executor: Executor | None = None,
        ray_options: dict[str, Any] | None = None,
        **unknown: Any,
    ) -> Any:
        """``task(func, **options)``: a pipeline of one task; ``task(**options)``, or ``@task``
        with no parentheses, a decorator. Every option is checked here: a wrong one raises
        ``TypeError`` or ``ValueError`` naming the task.

        :param func: a function, generator, async function or async generator, a bound method,
            a ``functools.partial``, a callable object, or another pipeline.
        :param workers: calls of this task at once (threads, asyncio tasks or processes); a
            range ``(lo, hi)``: the stage sizes itself within it as it runs.
        :param concurrency: the older name of ``workers``.
        :param branch: ``None``: a generator function's items go on one by one; ``True``: any
            returned iterable fans out; ``False``: the returned object is one item.
        :param join: call the function once per worker with an iterator over the input stream.
        :param throttle: bound on this task's outputs in flight (``0``: paced by the engine).
        :param ordered: with several workers, emit outputs in the order of the inputs.
        :param bind: ``task.bind(*args, **kwargs)``: arguments bound before the item.
        :param multiprocess: run a sync function in worker processes of the stage's own.
        :param daemon: run on daemon threads (interpreter exit does not wait for them).
        :param setup: makes a resource once per worker, passed as every call's first argument
            (a context manager is entered, and exited when the worker ends).
        :param retries: call again after an error, up to this many times.
        :param retry_on: the exception types that are retried.
        :param backoff: seconds before the first retry (doubling, jittered), or a function of
            the attempt number.
        :param on_error: ``"raise"``, ``"skip"``, or ``handler(item, exception)`` (which may
            return ``pyper.Emit(value)``).
        :param unpack: a tuple item is passed as positional arguments, a dict as keywords.
        :param rate: calls per second across the task's workers, or a ``pyper.Rate``.
        :param batch: the function receives lists of up to this many items.
        :param linger: seconds a partial list waits for more items (with ``batch``).
        :param timeout: seconds a call may take, past which its item raises ``TimeoutError``.
        :param max_failures: with ``on_error``, the failed items a run allows (an int, a share
            of the items taken as a float below 1, or a ``pyper.Budget``); past it the run
            stops with ``pyper.TooManyFailures``.
        :param dead_letters: with ``on_error="skip"``, where each skipped item goes: a file
            (JSON lines) or a function called with each ``pyper.DeadLetter``.
        :param journal: on the first task, a file (or a ``pyper.Journal``) that records the
            job's done items by key, so that running it again skips them.
        :param executor: where the calls run: ``"thread"``, ``"asyncio"``, ``"process"``,
            ``"ray"``, or a ``concurrent.futures.Executor`` of yours.
        :param ray_options: with ``executor="ray"``, Ray's resource options for the calls.
        :returns: a ``Pipeline`` (an ``AsyncPipeline`` if the function is async), or a
            decorator when ``func`` is not given.
        """
        if unknown:
            raise _unknown_options(func, unknown)
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
            setup=setup,
            retries=retries,
            retry_on=retry_on,
            backoff=backoff,
            on_error=on_error,
            unpack=unpack,
            rate=rate,
            batch=batch,
            linger=linger,
            timeout=timeout,
            max_failures=max_failures,
            dead_letters=dead_letters,
            journal=journal,
            executor=executor,
            ray_options=ray_options,
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


#: The options of ``task()`` that shape the stage (the per-call ones are ``_policy.OPTIONS``):
#: with those, ``task()``'s keyword parameters, as a test holds them.
SHAPE = ("workers", "concurrency", "branch", "join", "throttle", "ordered", "bind", "multiprocess",
         "daemon", "executor", "ray_options")


def _unknown_options(func: object, unknown: dict[str, Any]) -> TypeError:
    """The error for options ``task(...)`` does not have: names the task, each option,
    and the closest valid ones."""
    import difflib

    valid = [*SHAPE, *OPTIONS]
    where = f"task {describe(func)!r}" if callable(func) else "task()"
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.7)
        parts.append(f"{name!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
    return TypeError(
        f"{where}: unknown option{'s' if len(parts) > 1 else ''} {', '.join(parts)}; "
        f"the options are {', '.join(valid)}"
    )


# -- Types of task(...) ---------------------------------------------------------------------
#
# What task(...) returns depends on the callable's kind and on the literal values of branch=
# and join= (the overloads of _TaskFactory.__call__ above, tried in order):
#
#   func returns (as the checker sees it)  branch     pipeline emits     class
#   AsyncIterator[T] (async generator)     None/True  T                  AsyncPipeline
#   Coroutine[.., R] (async def)           None       R                  AsyncPipeline
#   Coroutine[.., Iterable[T]]             True       T                  AsyncPipeline
#   Iterator[T] (a generator function)     None/True  T                  Pipeline
#   a Pipeline[P, T] (nested)              None/False Generator[T]       Pipeline (Async: AsyncGenerator[T])
#   a Pipeline[P, T] (nested)              True       T                  as it is
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
# Where the static view differs from the run-time classification (_spec.classify): a sync function
# annotated to return an Iterator that is not a generator function is typed as fanning out
# (at run time it does only with branch=True); a sync callable returning a coroutine is typed
# as async (at run time it is a sync task that emits coroutine objects).


task = _TaskFactory()
