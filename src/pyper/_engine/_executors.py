"""Starting a run's stages on their executors, and what an executor is.

Where a task's calls run is one field, ``Task.executor``, set by ``task()``; its row in
the table of executors (``_registry.EXECUTORS``) is all the rest of pyper knows of it.
An executor is one module in this package, named by its row::

    _thread    sync functions on pyper's reused threads (``_threads``)
    _async     async functions, as tasks on the caller's event loop
    _process   worker processes of the stage's own (``multiprocess=True``)
    _ray       a Ray cluster (``executor="ray"``)
    _futures   any ``concurrent.futures.Executor`` of the user's (``executor=pool``)

The protocol is one function, and optionally two more::

    def start(run: Run, stage: Stage, workers: range) -> None
    def prepare(run: Run, stages: list[Stage]) -> None       # optional: before any stage starts
    def unprepare(stages: list[Stage]) -> None               # what a failed start left

``start`` starts the workers numbered ``workers`` and returns at once (it may be called
on an event loop's thread: it never waits for a worker). The run starts
``range(stage.task.workers)``; with ``workers=(lo, hi)`` the sizer (``_sizer``) calls it
again for the workers it adds (``grow``), each with one more end opened on both channels.

A local executor (threads, asyncio) runs the engine's loops in each worker: it makes a
``Worker(run, stage)``, calls ``run.enter()`` in a copy of the caller's context, runs
``_async_loops.work`` (or its generated sync twin) with the task's per-call options
around the call (``_async_calls.run_worker``), and ends with ``worker.leave(error)``, on
every path, exactly once.

A remote executor (processes, Ray, an executor of the user's) runs the shared relay
(``_relay.start``): one relay thread per worker moves whole batches between the channels
and the remote side; the executor supplies only a ``Remote`` per worker (its transport:
send a batch, read its outputs, stream a branching batch's, step a join call, make one
timed call, interrupt, finish) and the remote side runs ``_serve``. Its row says it is
remote (``Row.remote``): the run then paces the link in front of it for the relays.

How every executor learns of cancellation: ``Run.cancel`` cancels the channels (every
blocked or later get and put raises ``Cancelled``) and then calls the hooks registered
with ``Run.on_cancel``: a local worker's batch in hand is emptied (no new call starts),
the run's asyncio tasks are cancelled, a relay's ``Remote.interrupt`` wakes it from its
remote wait and stops the remote call. How it reports an error: ``worker.leave(exc)``
records it (``Run.fail``), notes the task on it and cancels the run; ``Cancelled`` and
``Broken`` are the run stopping, not errors. What it gets for free: the metrics
(``pyper.observe``): the channels count items and waits, a ``Worker`` its lifetime, and
``worker.note`` the events the calls report (a retry, a skip), wherever they ran.

A new executor is its module, plus its remote side if any, plus one row in
``_registry.EXECUTORS``: no other file learns its name. (``_futures`` was added so.)
"""

from __future__ import annotations

import importlib
import sys
from functools import partial
from typing import TYPE_CHECKING, Any

from . import _thread  # noqa: F401  (sync runs need it: loaded with pyper, not in the first run)
from ._run import Run, Stage

if TYPE_CHECKING:
    import asyncio

__all__ = ["grow", "running_loop", "start", "start_all"]


def start_all(run: Run, stages: list[Stage]) -> None:
    """Start the stages' workers. An executor module with a ``prepare(run, stages)`` gets
    its stages first, before any stage has started a thread (process stages fork their
    workers there), and an ``unprepare(stages)`` for what a failed start left."""
    by_module: dict[Any, list[Stage]] = {}
    for stage in stages:
        module = _module(stage)
        if module in _prepares:  # (most have none: looked up once per module, not per run)
            by_module.setdefault(module, []).append(stage)
    prepared = list(by_module.items())
    for i, (module, mine) in enumerate(prepared):
        try:
            module.prepare(run, mine)
        except BaseException:
            for done, theirs in prepared[:i]:
                done.unprepare(theirs)
            raise
    try:
        for stage in stages:
            stage.started = stage.task.workers
            start(run, stage, range(stage.task.workers))
    finally:
        for module, mine in prepared:
            module.unprepare(mine)
    if any(stage.task.adaptive for stage in run.stages[1:]):
        _start_sizer(run)
    if run.lineage is not None:  # a journaled run: its writer of done marks
        from . import _threads

        def fail(exc: BaseException) -> None:
            run.fail(exc, run.stages[0].task)

        _threads.spawn([(partial(run.lineage.flusher, fail), "pyper:journal")], daemon=False,
                       nonblocking=run.loop is not None, on_error=fail, owner=run)


def start(run: Run, stage: Stage, workers: range) -> None:
    """Start the stage's workers numbered ``workers`` on the executor of its task."""
    _module(stage).start(run, stage, workers)


def grow(run: Run, stage: Stage, count: int) -> int:
    """Add up to ``count`` workers to a running stage (the sizer's): how many it added.
    None once the stage has ended (its last worker closed its ends) or the run stopped."""
    added = 0
    for _ in range(count):
        if not stage.out.open_ends(send=True):
            break
        if not stage.inp.open_ends(send=False):
            stage.out.close_send()
            break
        added += 1
    if added:
        first = stage.started
        stage.started = first + added
        start(run, stage, range(first, first + added))
    return added


def _start_sizer(run: Run) -> None:
    """One sizer for the run's adaptive stages: a task on its loop, or a pyper thread."""
    from . import _sizer

    if run.loop is not None:
        task = run.loop.create_task(_sizer.arun_sizer(run, grow), name="pyper:sizer")
        run.tasks.add(task)
        task.add_done_callback(run.tasks.discard)
    else:
        from . import _threads

        _threads.spawn([(partial(_sizer.run_sizer, run, grow), "pyper:sizer")], daemon=False,
                       nonblocking=False, on_error=lambda exc: run.fail(exc, run.stages[-1].task))


#: The executors' modules, by their row's module name: imported the first time a stage runs
#: there (asyncio only for async runs, multiprocessing only for process stages, ray only for
#: Ray stages). A dict lookup per stage; written under the import lock's protection (a race
#: writes the same module twice).
_modules: dict[str, Any] = {}


#: The executors' modules that have a ``prepare`` (filled with ``_modules``).
_prepares: set[Any] = set()


def _module(stage: Stage) -> Any:
    name = stage.row.module
    module = _modules.get(name)
    if module is None:
        module = importlib.import_module(f".{name}", __package__)
        if hasattr(module, "prepare"):
            _prepares.add(module)
        _modules[name] = module
    return module


def running_loop() -> asyncio.AbstractEventLoop:
    """The loop an async pipeline runs on; a clear error where there is none."""
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        hint = (
            " (trio is loaded: pyper needs asyncio; run the pipeline in an asyncio loop,"
            " for example with trio-asyncio, or from a thread with asyncio.run)"
            if "trio" in sys.modules
            else ""
        )
        raise RuntimeError(
            "an AsyncPipeline runs on an asyncio event loop, and none is running here: "
            "iterate it inside a coroutine run by asyncio (asyncio.run(main()))" + hint
        ) from None
