"""Executor: threads, for sync functions (see ``_executors`` for the protocol).

Each worker is one job on one of pyper's reused threads (``_threads``), in its own
copy of the caller's ``contextvars`` context, running the generated sync loops.
A call already running cannot be interrupted: Python cannot stop a thread, so the
call finishes and its result is dropped by the cancelled channel.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from . import _threads
from ._run import Run, Stage, Worker
from ._sync_calls import run_worker
from ._sync_loops import work
from ._timeouts import timed_thread

__all__ = ["start"]


def start(run: Run, stage: Stage, workers: range) -> None:
    start_jobs(run, stage, workers, _job)


def start_jobs(run: Run, stage: Stage, workers: range, job: Callable[[Run, Stage, int], None]) -> None:
    """Run ``job(run, stage, i)`` for each worker ``i`` of ``workers`` on a pyper thread,
    each in its own copy of the caller's context (also the remote executors' relays)."""
    task = stage.task
    jobs: list[tuple[Callable[[], None], str]] = [
        (partial(run.context.copy().run, job, run, stage, i), f"pyper:{task.name}[{i}]")
        for i in workers
    ]
    # On an event loop's thread, wait for at most one new thread to start (~0.1 ms):
    # that thread starts the others. Reused threads start without any wait.
    _threads.spawn(
        jobs,
        daemon=task.daemon,
        nonblocking=run.loop is not None,
        on_error=lambda exc: run.fail(exc, task),
        owner=run,  # (a fork waits a moment for the jobs of a run that has ended: _threads.alone)
    )


def run_relayed(worker: Worker, remote: Callable[[Any], Any]) -> None:
    """A remote executor's relay that makes one call per item (``timeout=``): run the
    thread loops with ``remote`` as the call, and the task's per-call options (retries,
    on_error, rate) around it here; setup= and unpack= are the remote side's."""
    stage, run = worker.stage, worker.run
    task = stage.task
    here = task._replace(func=remote, policy=task.policy._replace(setup=None, unpack=False))
    worker.stage = Stage(here, remote, stage.inp, stage.out, stage.take, stage.emit, stage.take_args)
    try:
        run_worker(worker, work, None, {}, run.sleep)
    finally:
        worker.stage = stage


def _job(run: Run, stage: Stage, index: int) -> None:
    run.enter()
    worker = Worker(run, stage)
    error: BaseException | None = None
    try:
        if stage.task.policy.any:
            timed = None
            if stage.task.policy.timeout is not None:
                timed = partial(
                    timed_thread, seconds=stage.task.policy.timeout, name=stage.task.name, run=run,
                    abandoned=stage.task.policy.abandoned,
                )
            args = run.args if stage.take_args else None
            run_worker(worker, work, args, run.kwargs, run.sleep, timed)
        else:
            work(worker)
    except BaseException as exc:
        error = exc
    finally:
        worker.leave(error)
