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

from .._channel import Broken, Cancelled
from .._task import Task
from . import _thread
from ._run import SETTLE_SECONDS, Run, Stage, adapt
from ._thread import Claim, _siblings

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
    task = stage.task
    cursor = run.cursor()
    claim = stage.inp.claim()
    box = stage.out.outbox()
    try:
        if task.join:
            await _join(run, stage, cursor, claim, box)
        elif task.branch:
            await _branch(run, stage, cursor, claim, box)
        else:
            await _map(run, stage, cursor, claim, box)
    except (Cancelled, Broken):
        pass
    except asyncio.CancelledError as exc:
        this = asyncio.current_task()
        if run.cancelled or (this is not None and this.cancelling()):
            run.cancel()  # the run's own cancel, or the loop shutting down: either way, stop
        else:
            run.fail(exc, task)  # raised by the task's own code, not a cancellation of it
    except BaseException as exc:
        run.fail(exc, task)
    finally:
        cursor[0] = []
        claim[0] = None
        stage.inp.close_receive()
        stage.out.close_send()


async def _map(run: Run, stage: Stage, cursor: list[list[Any]], claim: Claim, box: list[Any]) -> None:
    inp, out, call = stage.inp, stage.out, stage.call
    limit = min(stage.take, stage.emit)
    ordered = stage.task.ordered and stage.task.workers > 1
    awaits = stage.task.kind == "coro"  # else an async generator function, emitted as one item
    receivers, idle = out.getters, _siblings(stage)
    append = box.append
    flush: Callable[[], Awaitable[None]] = partial(out.aflush, box)
    n = 1
    while True:
        if ordered:
            got = await inp.aget_seq(n)
            if got is None:
                return
            seq, batch = got
            flush = partial(out.aflush_seq, seq, box, False)
        else:
            batch = await inp.aget(n)  # type: ignore[assignment]
            if batch is None:
                return
        cursor[0] = batch
        if run.cancelled:  # cancel() may have emptied the previous batch instead
            raise Cancelled
        claim[0] = items = iter(batch)
        started = perf_counter()
        if awaits:
            for x in items:
                if idle:
                    inp.wake_idle(items)
                append(await call(x))
                if receivers:
                    await flush()
        else:
            for x in items:
                append(call(x))
        elapsed = perf_counter() - started
        if ordered:
            await out.aflush_seq(seq, box, True)
        else:
            await out.aflush(box)
        n = adapt(n, len(batch), elapsed, limit)


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


async def _branch(run: Run, stage: Stage, cursor: list[list[Any]], claim: Claim, box: list[Any]) -> None:
    inp, out, call, task = stage.inp, stage.out, stage.call, stage.task
    ordered = task.ordered and task.workers > 1
    awaits = task.kind == "coro"
    receivers, idle = out.getters, _siblings(stage)
    flush: Callable[[], Awaitable[None]] = partial(out.aflush, box)
    n = m = 1
    while True:
        if ordered:
            got = await inp.aget_seq(n)
            if got is None:
                return
            seq, batch = got
            flush = partial(out.aflush_seq, seq, box, False)
        else:
            batch = await inp.aget(n)  # type: ignore[assignment]
            if batch is None:
                return
        cursor[0] = batch
        if run.cancelled:  # cancel() may have emptied the previous batch instead
            raise Cancelled
        claim[0] = items = iter(batch)
        started = perf_counter()
        for x in items:
            if idle:
                inp.wake_idle(items)
            result = await call(x) if awaits else call(x)
            m = await _pour(result, task, box, m, stage.emit, flush, receivers)
        if ordered:
            await out.aflush_seq(seq, box, True)
        else:
            await out.aflush(box)
        n = adapt(n, len(batch), perf_counter() - started, stage.take)


async def _join(run: Run, stage: Stage, cursor: list[list[Any]], claim: Claim, box: list[Any]) -> None:
    inp, out, task = stage.inp, stage.out, stage.task
    idle = _siblings(stage)

    async def stream() -> AsyncGenerator[Any, None]:
        n = 1
        while True:
            batch = await inp.aget(n)  # raises Cancelled into the join function if the run stops
            if batch is None:
                return
            cursor[0] = batch
            if run.cancelled:
                raise Cancelled
            claim[0] = items = iter(batch)
            started = perf_counter()
            for x in items:
                if idle:
                    inp.wake_idle(items)
                yield x
            n = adapt(n, len(batch), perf_counter() - started, stage.take)

    inputs = stream()
    try:
        result = stage.call(inputs)
        if task.kind == "coro":
            result = await result
        if task.branch:
            await _pour(result, task, box, 1, stage.emit, partial(out.aflush, box), out.getters)
        else:
            box.append(result)
        await out.aflush(box)
    finally:
        await inputs.aclose()
        if claim[0] is not None:  # returned early: what it took but did not read is not its
            inp.give_back(list(claim[0]))


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
