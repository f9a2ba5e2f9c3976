"""The stage worker loops (map, branch, join, pour), written once.

``_async_loops.py`` is the source. ``_sync_loops.py``, the loops of thread workers, is
generated from it by ``scripts/unasync.py`` (``async``/``await`` dropped, each
``a``-name replaced by its sync twin, and a line marked ``# sync: ...`` replaced
by what the mark says, or left out for ``# sync: -``); a test fails when the generated file is stale. Why
generated rather than shared through callbacks: the per-item path must stay a
plain ``for`` loop with a direct call in it (a callback per item, or a generic
loop that awaits maybe-awaitables, costs more than the rest of the engine's per-
item work), and a loop cannot be both blocking and awaiting.

A worker, in outline::

    for batch in inp:                  # up to n items, n adapted to call cost
        for x in batch:
            outbox.append(call(x))     # flushed at once if a receiver waits
        out.flush(outbox)

Who owns what: everything here runs in the worker's own thread or task and owns
the ``Worker`` it is given; other threads reach it only through the channels and
through what the worker registered (see ``_run.Worker``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sized
from functools import partial
from itertools import islice  # used by the sync twin's pour
from time import perf_counter
from typing import Any

from .._channel import TIMED_OUT
from .._policy import DROPPED
from ._bridge import aiter_result
from ._run import NO_ITEM, Worker, adapt, dropping

__all__ = ["flusher", "pour", "work"]


def work(worker: Worker) -> Awaitable[None]:
    """Run one stage worker until its input ends; raises what stopped it otherwise. (It
    returns the loop's own awaitable: no frame of its own for the worker to hold.)"""
    task = worker.stage.task
    if worker.run.lineage is not None:  # a journaled run: items carry their lineage
        worker.trace(aiter_result, True)  # sync: worker.trace(iter_result, False)
    if worker.stage.group is not None:
        return _group(worker)
    if task.join:
        return _join(worker)
    if worker.stage.branch:
        return _branch(worker)
    return _map(worker)


def flusher(worker: Worker) -> Callable[[bool], Awaitable[None]]:
    """``flush(last)``: hand the outbox on (as part of the batch in hand, when ordered)."""
    out, box = worker.stage.out, worker.box
    if worker.ordered:
        return lambda last: out.aflush_seq(worker.seq, box, last)
    return lambda last: out.aflush(box, last)


async def _map(worker: Worker) -> None:
    stage = worker.stage
    inp, call = stage.inp, worker.call
    get = inp.aget_seq if worker.ordered else inp.aget
    receivers, idle = stage.out.getters, worker.idle
    append = dropping(worker.box) if worker.drops else worker.box.append
    flush = flusher(worker)
    limit = min(stage.take, stage.emit)
    held = worker.holding()
    n = 1
    x: Any = NO_ITEM
    try:
        while (items := worker.begin(await get(n, held))) is not None:
            started = perf_counter()
            for x in items:
                if idle:
                    inp.wake_idle(items)
                append(await call(x))
                if receivers:
                    await flush(False)
            elapsed = perf_counter() - started
            await flush(True)
            inp.pace(worker.size, elapsed)
            n = adapt(n, worker.size, elapsed, limit)
    except Exception:
        worker.failed_on(x)  # free until something raises: no per-item bookkeeping
        raise


async def pour(
    items: AsyncIterator[Any],
    box: list[Any],
    m: int,
    limit: int,
    flush: Callable[[], Awaitable[None]],
    receivers: Sized,
) -> int:
    """Move ``items`` into the outbox, flushing it whenever it holds ``m`` items or a
    receiver is parked. Returns the adapted ``m``. Closes ``items`` if it stops
    early, in this worker, so a generator's ``finally`` runs here.
    """
    append = box.append
    last = perf_counter()
    try:
        while True:
            room = m - len(box)
            count = 0
            if room > 0:
                # The sync twin lets islice count (C speed); the async loop counts itself.
                async for item in items:  # sync: for count, item in enumerate(islice(items, room), 1):
                    append(item)
                    if receivers:
                        await flush()
                    count += 1  # sync: -
                    if count >= room: break  # sync: -
                if count < room:
                    return m  # the items are exhausted
            await flush()
            now = perf_counter()
            m = adapt(m, m, now - last, limit)
            last = now
    finally:
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()


async def _branch(worker: Worker) -> None:
    stage, run = worker.stage, worker.run
    inp, call, task = stage.inp, worker.call, stage.task
    get = inp.aget_seq if worker.ordered else inp.aget
    receivers, idle = stage.out.getters, worker.idle
    flush = flusher(worker)
    early = partial(flush, False)
    held = worker.holding()
    n = m = 1
    x: Any = NO_ITEM
    try:
        while (items := worker.begin(await get(n, held))) is not None:
            started = perf_counter()
            for x in items:
                if idle:
                    inp.wake_idle(items)
                result = await call(x)
                if stage.take_args and hasattr(result, "__len__"):  # the first task: its length
                    stage.total = len(result)  # is the run's input length (metrics, progress)
                m = await pour(aiter_result(task, result, run), worker.box, m, stage.emit, early, receivers)
            await flush(True)
            elapsed = perf_counter() - started
            inp.pace(worker.size, elapsed)
            n = adapt(n, worker.size, elapsed, stage.take)
    except Exception:
        worker.failed_on(x)
        raise


async def _group(worker: Worker) -> None:
    """``batch=``/``linger=`` of the next task: gather the input into lists of up to
    ``size`` items; a partial list goes once its first item has waited ``linger``
    seconds, or at the end of the input. One worker: each list is made once."""
    stage = worker.stage
    assert stage.group is not None
    size, linger = stage.group.size, stage.group.linger
    inp, out, box = stage.inp, stage.out, worker.box
    batch: list[Any] = []
    first = 0.0  # when the partial batch's first item came
    while True:
        if batch and linger is not None:
            got = await inp.aget_within(size - len(batch), first + linger - perf_counter())
            if got is TIMED_OUT:
                box.append(batch)
                batch = []
                await out.aflush(box, True)
                continue
        else:
            got = await inp.aget(size - len(batch))
        items = worker.begin(got)
        if items is None:
            break
        if not batch:
            first = perf_counter()
        batch.extend(items)
        if len(batch) >= size:
            box.append(batch)
            batch = []
            await out.aflush(box, True)
    if batch:
        box.append(batch)
    await out.aflush(box, True)


async def _join(worker: Worker) -> None:
    stage, run = worker.stage, worker.run
    inp, out, task, box = stage.inp, stage.out, stage.task, worker.box

    held = worker.holding()

    async def stream() -> AsyncIterator[Any]:
        n = 1
        # inp.aget raises Cancelled into the join function if the run stops.
        while True:
            worker.settle()  # (what it read will not come back: before it takes more)
            if (items := worker.begin(await inp.aget(n, held))) is None:
                break
            started = perf_counter()
            for x in items:
                if worker.idle:
                    inp.wake_idle(items)
                worker.read += 1
                yield x
            elapsed = perf_counter() - started
            inp.pace(worker.size, elapsed)
            n = adapt(n, worker.size, elapsed, stage.take)

    inputs = stream()
    try:
        result = await worker.call(inputs)
        if task.branch:  # a generator reads its inputs as it is iterated
            flush = partial(out.aflush, box, False)
            await pour(aiter_result(task, result, run), box, 1, stage.emit, flush, out.getters)
        elif result is not DROPPED:  # (a journaled run's join whose input was all done: no call)
            box.append(result)
    finally:
        await inputs.aclose()  # type: ignore[attr-defined]
    await out.aflush(box, True)
