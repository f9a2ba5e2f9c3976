"""Stage workers as asyncio tasks, for async functions, and the async caller's side.

The same worker shapes as ``_thread.py`` (map, branch, join), awaiting the calls
and the channels. Workers are tasks on the caller's loop, created without a task
group (an async generator must not yield out of one, PEP 789); each catches
everything it raises, so no task ever ends with an unretrieved exception.
Cancelling the run cancels these tasks, so an async call in flight is interrupted.
Sync tasks of an async run are thread workers (``_thread.start``): the loop never
runs a sync call and never waits for a thread; threads wake it through the
channels.

Who owns what: the workers' tasks are created, tracked (``Run.tasks``) and
cancelled on the loop's thread only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sized
from functools import partial
from itertools import islice
from time import perf_counter
from typing import Any

from .._channel import Cancelled
from .._task import Task
from . import _thread
from ._run import SETTLE_SECONDS, Run, Stage, Worker, adapt

__all__ = ["iterate"]


def _start(run: Run, stage: Stage) -> None:
    loop = run.loop
    assert loop is not None
    for i in range(stage.task.workers):
        task = loop.create_task(
            _work(run, stage), name=f"pyper:{stage.task.name}[{i}]", context=run.context.copy()
        )
        run.tasks.add(task)
        task.add_done_callback(run.tasks.discard)


async def _work(run: Run, stage: Stage) -> None:
    worker = Worker(run, stage)
    error: BaseException | None = None
    try:
        if stage.task.join:
            await _join(worker)
        elif stage.task.branch:
            await _branch(worker)
        else:
            await _map(worker)
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


def _flusher(worker: Worker) -> Callable[[bool], Awaitable[None]]:
    """``await flush(last)``: hand the outbox on (as part of the batch in hand, when ordered)."""
    out, box = worker.stage.out, worker.box
    if worker.ordered:
        return lambda last: out.aflush_seq(worker.seq, box, last)
    return lambda last: out.aflush(box)


async def _map(worker: Worker) -> None:
    stage = worker.stage
    inp, call = stage.inp, stage.call
    get = inp.aget_seq if worker.ordered else inp.aget
    receivers, idle, append = stage.out.getters, worker.idle, worker.box.append
    flush = _flusher(worker)
    awaits = stage.task.kind == "coro"  # else an async generator function, emitted as one item
    limit = min(stage.take, stage.emit)
    n = 1
    while (items := worker.begin(await get(n))) is not None:
        started = perf_counter()
        if awaits:
            for x in items:
                if idle:
                    inp.wake_idle(items)
                append(await call(x))
                if receivers:
                    await flush(False)
        else:
            for x in items:
                append(call(x))
        elapsed = perf_counter() - started
        await flush(True)
        n = adapt(n, worker.size, elapsed, limit)


async def _pour(
    result: Any,
    task: Task,
    box: list[Any],
    m: int,
    limit: int,
    flush: Callable[[], Awaitable[None]],
    receivers: Sized,
) -> int:
    """The async twin of ``_thread.pour``, for async and sync iterables."""
    if not hasattr(result, "__aiter__"):
        items = _thread.as_iterator(task, result)
        try:
            return await _pour_sync(items, box, m, limit, flush, receivers)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
    aitems: AsyncIterator[Any] = result.__aiter__()
    append = box.append
    last = perf_counter()
    left = m - len(box)
    try:
        async for item in aitems:
            append(item)
            left -= 1
            if receivers or left <= 0:
                await flush()
                if left <= 0:
                    now = perf_counter()
                    m = adapt(m, m, now - last, limit)
                    last = now
                    left = m
        return m
    finally:
        aclose = getattr(aitems, "aclose", None)
        if aclose is not None:
            await aclose()


async def _pour_sync(
    items: Iterator[Any],
    box: list[Any],
    m: int,
    limit: int,
    flush: Callable[[], Awaitable[None]],
    receivers: Sized,
) -> int:
    append = box.append
    last = perf_counter()
    while True:
        room = m - len(box)
        count = 0
        if room > 0:
            for count, item in enumerate(islice(items, room), 1):
                append(item)
                if receivers:
                    await flush()
            if count < room:
                return m
        await flush()
        now = perf_counter()
        m = adapt(m, m, now - last, limit)
        last = now


async def _branch(worker: Worker) -> None:
    stage = worker.stage
    inp, call, task = stage.inp, stage.call, stage.task
    get = inp.aget_seq if worker.ordered else inp.aget
    receivers, idle = stage.out.getters, worker.idle
    flush = _flusher(worker)
    early = partial(flush, False)
    awaits = task.kind == "coro"
    n = m = 1
    while (items := worker.begin(await get(n))) is not None:
        started = perf_counter()
        for x in items:
            if idle:
                inp.wake_idle(items)
            result = await call(x) if awaits else call(x)
            m = await _pour(result, task, worker.box, m, stage.emit, early, receivers)
        await flush(True)
        n = adapt(n, worker.size, perf_counter() - started, stage.take)


async def _join(worker: Worker) -> None:
    stage = worker.stage
    inp, out, task, box = stage.inp, stage.out, stage.task, worker.box

    async def stream() -> AsyncGenerator[Any, None]:
        n = 1
        # inp.aget raises Cancelled into the join function if the run stops.
        while (items := worker.begin(await inp.aget(n))) is not None:
            started = perf_counter()
            for x in items:
                if worker.idle:
                    inp.wake_idle(items)
                yield x
            n = adapt(n, worker.size, perf_counter() - started, stage.take)

    inputs = stream()
    try:
        result = stage.call(inputs)
        if task.kind == "coro":
            result = await result
        if task.branch:
            await _pour(result, task, box, 1, stage.emit, partial(out.aflush, box), out.getters)
        else:
            box.append(result)
    finally:
        await inputs.aclose()
    await out.aflush(box)


async def iterate(
    tasks: tuple[Task, ...], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> AsyncGenerator[Any, None]:
    """The caller's side of an async run: an async generator over the last task's outputs."""
    first = tasks[0]
    if len(tasks) == 1 and first.kind != "sync":
        result = first.func(*args, **kwargs)
        if first.kind == "coro":
            result = await result
        if not first.branch:
            yield result
        elif hasattr(result, "__aiter__"):
            stream = result.__aiter__()
            try:
                async for item in stream:
                    yield item
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
        else:
            for item in _thread.as_iterator(first, result):
                yield item
        return
    inline = first.kind == "coro" and not first.branch
    if inline:
        item = await first.func(*args, **kwargs)
    run = Run(tasks, args, kwargs, loop=asyncio.get_running_loop())
    try:
        try:
            if inline:
                await run.stages[0].out.aput([item])
                run.stages[0].out.close_send()
            for stage in run.stages[1 if inline else 0 :]:
                if stage.task.kind == "sync":
                    _thread.start(run, stage)
                else:
                    _start(run, stage)
            output = run.output
            cursor = run.cursor()
            while True:
                batch = await output.aget(run.output_take)
                if batch is None:
                    break
                cursor[0] = batch
                for item in batch:
                    yield item
        except Cancelled:
            pass
        ended = run.end()  # stops what is left, before waiting for it below
    except BaseException:
        run.leave()
        raise
    finally:
        run.finish()
        # Let cancelled tasks unwind, so that what they raise meanwhile is attached
        # to the error raised below, and no task outlives the run.
        unfinished = [t for t in run.tasks if not t.done()]
        if unfinished:
            await asyncio.wait(unfinished, timeout=SETTLE_SECONDS)
    if not ended:
        raise run.failure()
