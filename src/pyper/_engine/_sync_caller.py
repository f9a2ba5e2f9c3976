# GENERATED from _async_caller.py by scripts/unasync.py: edit that file, then run
# `python scripts/unasync.py` (a test fails while this file is stale).
"""The caller's side of a run: a generator over the last task's outputs, written once.

``_async_caller.py`` is the source; ``_sync_caller.py`` (``Pipeline.__call__``) is generated
from it by ``scripts/unasync.py``, as the worker loops are (``_async_loops.py``).

The caller starts the run when first iterated: it runs the first task inline if it
is called once and can run here (a sync function for a sync caller, a coroutine
function for an async one), starts every other stage on its executor, and reads
the output channel. A pipeline whose later tasks can all run here too, one output per
call with no per-call option (``_bridge.chained``), has one value in flight and nothing
to overlap: the caller makes every call itself, and no run is made. It owns the run's lifecycle: whatever way it leaves (the end,
an error, a break, ``close()``, a cancelled task) ends in ``Run.finish``.
"""

from __future__ import annotations

from collections.abc import Iterator
from time import perf_counter
from typing import Any

from .._errors import Cancelled, TooManyFailures
from .._spec import Task
from ._bridge import call_chain, call_inline, chained
from ._executors import running_loop, start_all
from ._run import Run, refuse_in_bootstrap

__all__ = ["iterate"]


def iterate(tasks: tuple[Task, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Any]:
    refuse_in_bootstrap()
    first = tasks[0]
    # Inline: the first call runs here, when it is one plain call (no per-call options) of
    # the caller's own executor (asyncio here; a sync caller's is threads).
    inline = first.executor == "thread" and not first.branch and not first.policy.any
    if inline and (len(tasks) == 1 or chained(tasks, "thread")):
        yield call_chain(tasks, args, kwargs)
        return
    run = Run(tasks, args, kwargs, loop=None)
    try:
        try:
            if inline:
                out = run.stages[0].out
                out.put([call_inline(first, args, kwargs, run)])
                out.close_send()
            start_all(run, run.stages[1 if inline else 0 :])
            output, take, held = run.output, run.output_take, run.held()
            lineage = run.lineage
            while (batch := output.get(take, held)) is not None:
                started = perf_counter()
                if lineage is None:
                    yield from batch
                else:
                    # A journaled run: an output is taken once the caller asks for the next.
                    for node, item in batch:
                        yield item
                        lineage.give(node)
                output.pace(len(batch), perf_counter() - started)  # how fast the caller reads
        except Cancelled:
            pass
        ended = run.end()  # stops what is left, before waiting for it below
    except BaseException:
        run.leave()
        raise
    finally:
        run.finish()
        if run.lineage is not None:
            # (what is done is written, whatever ended the run; failures within a budget only)
            run.lineage.close(not isinstance(run.error, TooManyFailures))
        run.settle()
    if not ended:
        raise run.failure()
