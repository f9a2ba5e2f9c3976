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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from itertools import islice
from time import perf_counter
from typing import Any

from .._channel import Broken, Cancelled
from .._task import Task
from . import _thread
from ._run import MAX_BATCH, Run, Stage, adapt

__all__ = ["iterate"]

#: How long a finished caller waits for cancelled worker tasks to unwind.
SETTLE_SECONDS = 1.0


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
    try:
        if task.join:
            await _join(stage, cursor)
        elif task.branch:
            await _branch(stage, cursor)
        else:
            await _map(stage, cursor)
    except (Cancelled, Broken):
        pass
    except asyncio.CancelledError:
        run.cancel()  # the run's own cancel, or the loop shutting down: either way, stop
    except BaseException as exc:
        run.fail(exc, task)
    finally:
        cursor[0] = []
        stage.inp.close_receive()
        stage.out.close_send()


async def _map(stage: Stage, cursor: list[list[Any]]) -> None:
    inp, out, call = stage.inp, stage.out, stage.call
    limit = min(stage.take, stage.emit)
    ordered = stage.task.ordered and stage.task.workers > 1
    awaits = stage.task.kind == "coro"
    n = 1
    while True:
        if ordered:
            got = await inp.aget_seq(n)
            if got is None:
                return
            seq, batch = got
        else:
            batch = await inp.aget(n)  # type: ignore[assignment]
            if batch is None:
                return
        cursor[0] = batch
        started = perf_counter()
        if awaits:
            results = [await call(x) for x in batch]
        else:  # an async generator function emitted as one item (branch=False)
            results = [call(x) for x in batch]
        elapsed = perf_counter() - started
        if ordered:
            await out.aput_seq(seq, results, True)
        else:
            await out.aput(results)
        n = adapt(n, len(batch), elapsed, limit)


async def _pour(
    result: Any,
    task: Task,
    buf: list[Any],
    m: int,
    limit: int,
    flush: Callable[[list[Any]], Awaitable[None]],
) -> tuple[list[Any], int]:
    """The async twin of ``_thread.pour``, for async and sync iterables."""
    last = perf_counter()
    if not hasattr(result, "__aiter__"):
        items = _thread.as_iterator(task, result)
        try:
            while True:
                size = len(buf)
                room = m - size
                buf.extend(islice(items, room))
                if len(buf) - size < room:
                    return buf, m
                await flush(buf)
                buf = []
                now = perf_counter()
                m = adapt(m, m, now - last, limit)
                last = now
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
    items_a: AsyncIterator[Any] = result.__aiter__()
    step = items_a.__anext__
    append = buf.append
    try:
        while True:
            append(await step())
            if len(buf) >= m:
                await flush(buf)
                buf = []
                append = buf.append
                now = perf_counter()
                m = adapt(m, m, now - last, limit)
                last = now
    except StopAsyncIteration:
        return buf, m
    finally:
        aclose = getattr(items_a, "aclose", None)
        if aclose is not None:
            await aclose()


async def _branch(stage: Stage, cursor: list[list[Any]]) -> None:
    inp, out, call, task = stage.inp, stage.out, stage.call, stage.task
    ordered = task.ordered and task.workers > 1
    awaits = task.kind == "coro"
    n = m = 1
    buf: list[Any] = []
    while True:
        if ordered:
            got = await inp.aget_seq(n)
            if got is None:
                return
            seq, batch = got

            async def flush(b: list[Any]) -> None:
                await out.aput_seq(seq, b, False)
        else:
            batch = await inp.aget(n)  # type: ignore[assignment]
            if batch is None:
                return
            flush = out.aput  # type: ignore[assignment]
        cursor[0] = batch
        started = perf_counter()
        for x in batch:
            result = await call(x) if awaits else call(x)
            buf, m = await _pour(result, task, buf, m, stage.emit, flush)
        if ordered:
            await out.aput_seq(seq, buf, True)
        elif buf:
            await out.aput(buf)
        buf = []
        n = adapt(n, len(batch), perf_counter() - started, stage.take)


async def _join(stage: Stage, cursor: list[list[Any]]) -> None:
    inp, out, task = stage.inp, stage.out, stage.task

    async def items() -> AsyncGenerator[Any, None]:
        n = 1
        while True:
            batch = await inp.aget(n)  # raises Cancelled into the join function if the run stops
            if batch is None:
                return
            cursor[0] = batch
            started = perf_counter()
            for x in batch:
                yield x
            n = adapt(n, len(batch), perf_counter() - started, stage.take)

    stream = items()
    try:
        result = stage.call(stream)
        if task.kind == "coro":
            result = await result
        if task.branch:
            buf, _ = await _pour(result, task, [], 1, stage.emit, out.aput)
            if buf:
                await out.aput(buf)
        else:
            await out.aput([result])
    finally:
        await stream.aclose()


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
    run = Run(tasks, args, kwargs, inline_first=inline, loop=asyncio.get_running_loop())
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
            batch = await output.aget(MAX_BATCH)
            if batch is None:
                return
            cursor[0] = batch
            for item in batch:
                yield item
    except Cancelled:
        pass
    except BaseException:
        run.cancel()
        raise
    finally:
        run.finish()
        unfinished = [t for t in run.tasks if not t.done()]
        if unfinished:
            await asyncio.wait(unfinished, timeout=SETTLE_SECONDS)
    error = run.take_error()
    if error is None:
        raise Cancelled("the pipeline was cancelled from outside (an enclosing run or interpreter exit)")
    raise error
