"""Executor: asyncio tasks, for async functions (see ``_executors`` for the protocol).

Workers are tasks on the caller's loop, created without a task group (an async
generator must not yield out of one, PEP 789), each in its own copy of the
caller's context, running the async loops. Each catches everything it raises, so
no task ever ends with an unretrieved exception. Cancelling the run cancels these
tasks, so an async call in flight is interrupted.

Who owns what: the tasks are created, tracked (``Run.tasks``) and cancelled on
the loop's thread only.
"""

from __future__ import annotations

import asyncio
import threading
from functools import partial

from ._async_calls import run_worker
from ._async_loops import work
from ._run import ASYNC_WORKERS, Run, Stage, Worker, current_run
from ._timeouts import timed_async

__all__ = ["start"]


def start(run: Run, stage: Stage, workers: range) -> None:
    """One task per worker, each in its own copy of a context that says which run its
    calls belong to (one entry for all the run's worker tasks, ``ASYNC_WORKERS``: set
    once here, not per worker). A worker costs what its task and loop hold, about 3 KB:
    10 000 of them are a few tens of MB."""
    loop = run.loop
    assert loop is not None
    context = run.context.copy()
    context.run(current_run.set, (run, threading.get_ident(), ASYNC_WORKERS))
    name = f"pyper:{stage.task.name}"
    for i in workers:
        run.tasks.add(loop.create_task(_main(run, stage), name=f"{name}[{i}]", context=context.copy()))


async def _main(run: Run, stage: Stage) -> None:
    worker = Worker(run, stage)
    error: BaseException | None = None
    try:
        if stage.task.policy.any:
            args = run.args if stage.take_args else None
            timed = None
            if stage.task.policy.timeout is not None:
                timed = partial(timed_async, seconds=stage.task.policy.timeout, name=stage.task.name)
            await run_worker(worker, work, args, run.kwargs, asyncio.sleep, timed)
        else:
            await work(worker)
    except asyncio.CancelledError as exc:
        this = asyncio.current_task()
        if run.cancelled or (this is not None and this.cancelling()):
            run.cancel()  # the run's own cancel, or the loop shutting down: either way, stop
        else:
            error = exc  # raised by the task's own code, not a cancellation of it
    except BaseException as exc:
        error = exc
    finally:
        worker.leave(error)
        run.tasks.discard(asyncio.current_task())  # (its last step: no done callback per task)
