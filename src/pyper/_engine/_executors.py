"""Which executor runs a stage (the one place it is chosen), and what an executor is.

An executor is one module that runs a stage's workers somewhere: ``_thread``
(sync functions, on pyper's reused threads), ``_async`` (async functions, as
tasks on the caller's event loop), ``_process`` (sync functions with
``multiprocess=True``, in worker processes) and ``_ray`` (sync functions with
``executor="ray"``, on a Ray cluster). The protocol is one function::

    def start(run: Run, stage: Stage, workers: range) -> None

What the run gives it: ``stage.task`` (the validated options), ``stage.call`` (what
to call per item: bound arguments applied; for an async stage always awaitable),
``stage.inp``/``stage.out`` (the channels: ``get``/``aget`` a batch of at most
``stage.take`` items, ``None`` at the end; ``put``/``flush`` outputs, at most
``stage.emit`` at once), and ``run.context`` (the caller's ``contextvars``, to copy
per worker).

What it must do: start the workers numbered ``workers`` and return at once (it may
be called on an event loop's thread: it never waits for a worker). The run starts
``range(stage.task.workers)``; with ``workers=(lo, hi)`` the sizer (``_sizer``) calls it
again for the workers it adds, each with one more end opened on both channels. Each worker
makes a ``Worker(run, stage)``, calls ``run.enter(...)`` in a context of its own,
runs the shared loops (``_async_loops.work``, or its generated sync twin), and
ends with ``worker.leave(error)``, on every path, exactly once.

How it learns of cancellation: every blocked or later channel operation raises
``Cancelled``, and ``Run.cancel`` empties the batch a worker is working through,
so a local worker starts no new call; an executor whose workers are tasks
registers them in ``run.tasks`` and they are cancelled too; one that waits
elsewhere (on a pipe) registers a hook with ``run.on_cancel`` to be woken.

How it reports an error: ``worker.leave(exc)`` records it (``Run.fail``), notes
the task on it and cancels the run; ``Cancelled`` and ``Broken`` are the run
stopping, not errors.

What it gets for free: the metrics (``pyper.observe``). A ``Worker`` keeps its own
lifetime and the channels count the items taken and the time workers spend parked,
so an executor adds nothing for them, but one thing: a remote executor hands the log
records its remote calls made (a retry, a skipped item) to ``worker.note``, which
counts them and logs them with the task's name and the run.

An executor whose workers live elsewhere (another process, another machine)
fits the same protocol: its ``start`` runs one local relay per worker, a
``Worker`` like any other that moves whole batches between the channels and the
remote side (``_process`` does so over pipes, ``_child`` is the remote loop;
``_ray`` as Ray calls, ``_ray_worker`` is the remote side); cancellation reaches
the remote side as a message (``ray.cancel`` for Ray), sent by the relay when its
channel raises ``Cancelled`` or its ``on_cancel`` hook wakes it (or it sees
``run.cancelled`` while it polls).

A Dask distributed executor would be one more such module: relays submitting
batches with ``client.submit`` (actors with ``setup=``), waiting on the futures,
``future.cancel()`` on cancellation, ``client.scatter`` for data between stages.
"""

from __future__ import annotations

import importlib
import sys
from functools import partial
from typing import TYPE_CHECKING, Any

from . import _thread  # noqa: F401  (sync runs need it: loaded with pyper, not in the first run)
from ._registry import EXECUTORS, executor_name, row
from ._run import Run, Stage

if TYPE_CHECKING:
    import asyncio

__all__ = ["grow", "running_loop", "start", "start_all"]


def start_all(run: Run, stages: list[Stage]) -> None:
    """Start the stages' workers. An executor module with a ``prepare(run, stages)`` gets
    its stages first, before any stage has started a thread (process stages fork their
    workers there), and an ``unprepare(stages)`` for what a failed start left."""
    prepared: list[tuple[Any, list[Stage]]] = []
    for name in dict.fromkeys(executor_name(stage.task.executor) for stage in stages):
        module = _module(EXECUTORS[name].module)
        if hasattr(module, "prepare"):
            mine = [stage for stage in stages if executor_name(stage.task.executor) == name]
            module.prepare(run, mine)
            prepared.append((module, mine))
    try:
        for stage in stages:
            stage.started = stage.task.workers
            start(run, stage, range(stage.task.workers))
    finally:
        for module, mine in prepared:
            module.unprepare(mine)
    if any(stage.task.adaptive for stage in run.stages[1:]):
        _start_sizer(run)


def start(run: Run, stage: Stage, workers: range) -> None:
    """Start the stage's workers numbered ``workers`` on the executor of its task."""
    _module(row(stage.task).module).start(run, stage, workers)


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


def _module(name: str) -> Any:
    """An executor's module, imported the first time a stage runs there (asyncio only for
    async runs, multiprocessing only for process stages, ray only for Ray stages)."""
    module = sys.modules.get(f"{__package__}.{name}")
    return module if module is not None else importlib.import_module(f".{name}", __package__)


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
