"""Executor: threads, for sync functions (see ``_executors`` for the protocol).

Each worker is one job on one of pyper's reused threads (``_threads``), in its own
copy of the caller's ``contextvars`` context, running the generated sync loops.
A call already running cannot be interrupted: Python cannot stop a thread, so the
call finishes and its result is dropped by the cancelled channel. With ``timeout=``,
the workers run the stepped loops, on daemon threads (a call given up at its deadline
may never return: the program's exit does not wait for it), watched (``_timeouts``).
"""

from __future__ import annotations

from ._run import Run, Stage, Worker
from ._sync_calls import run_worker
from ._sync_loops import work
from ._timeouts import watched

__all__ = ["start"]


def start(run: Run, stage: Stage, workers: range) -> None:
    if stage.task.policy.timeout is None:
        run.start_threads(stage, workers, _job)
    else:
        run.start_threads(stage, workers, watched(run, stage, len(workers)), daemon=True)


def _job(run: Run, stage: Stage, index: int) -> None:
    run.enter()
    worker = Worker(run, stage)
    if run.observed or stage.task.adaptive:  # (observe()'s advice and the sizer weigh it;
        worker.measure_cpu()  # other runs pay nothing)
    error: BaseException | None = None
    try:
        if stage.task.policy.any:
            args = run.args if stage.take_args else None
            run_worker(worker, work, args, run.kwargs, run.sleep)
        else:
            work(worker)
    except BaseException as exc:
        error = exc
    finally:
        worker.leave(error)
