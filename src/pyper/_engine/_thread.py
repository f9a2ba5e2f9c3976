"""Executor: threads, for sync functions (see ``_executors`` for the protocol).

Each worker is one job on one of pyper's reused threads (``_threads``), in its own
copy of the caller's ``contextvars`` context, running the generated sync loops.
A call already running cannot be interrupted: Python cannot stop a thread, so the
call finishes and its result is dropped by the cancelled channel.
"""

from __future__ import annotations

from functools import partial

from ._run import Run, Stage, Worker
from ._sync_calls import run_worker
from ._sync_loops import work
from ._timeouts import timed_thread

__all__ = ["start"]


def start(run: Run, stage: Stage, workers: range) -> None:
    run.start_threads(stage, workers, _job)


def _job(run: Run, stage: Stage, index: int) -> None:
    run.enter()
    worker = Worker(run, stage)
    if stage.task.policy.timeout is None:  # (with timeout=, the calls run on a helper thread)
        if run.observed:  # (observe()'s advice weighs it; unobserved runs pay nothing)
            worker.measure_cpu()
    error: BaseException | None = None
    try:
        if stage.task.policy.any:
            timed = None
            if stage.task.policy.timeout is not None:
                timed = partial(timed_thread, run=run, task=stage.task)
            args = run.args if stage.take_args else None
            run_worker(worker, work, args, run.kwargs, run.sleep, timed)
        else:
            work(worker)
    except BaseException as exc:
        error = exc
    finally:
        worker.leave(error)
