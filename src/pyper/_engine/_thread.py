"""Stage workers on threads, for sync functions, and the sync caller's side.

A worker, in outline::

    with inp (receive end), out (send end):
        for batch in inp:                  # up to n items, n adapted to call cost
            for x in batch:
                outbox.append(call(x))     # flushed at once if a receiver waits
            out.flush(outbox)

Each worker is one job on one thread from ``_threads``; it runs in its own copy
of the caller's ``contextvars`` context, owns its local batch state, and reports
an error by ``Run.fail``. It stops when its input ends (then closes its output),
when its output breaks, or when the run is cancelled: a cancelled channel raises
in ``get``/``put``, and the batch it is working through is emptied under it, so
it starts no new call. A call already running is not interrupted: Python cannot
stop a thread, so the call finishes and its result is dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator, Iterator, Sized
from functools import partial
from itertools import islice
from time import perf_counter
from typing import Any

from .._channel import Cancelled
from .._task import Task
from . import _threads
from ._run import SETTLE_SECONDS, Run, Stage, Worker, adapt, branch_error

__all__ = ["as_iterator", "iterate", "pour", "start"]


def start(run: Run, stage: Stage) -> None:
    task = stage.task
    jobs: list[tuple[Callable[[], None], str]] = [
        (lambda: run.context.copy().run(_work, run, stage), f"pyper:{task.name}[{i}]")
        for i in range(task.workers)
    ]
    # On an event loop's thread, wait for at most one new thread to start (~0.1 ms):
    # that thread starts the others. Reused threads start without any wait.
    _threads.spawn(
        jobs,
        daemon=task.daemon,
        nonblocking=run.loop is not None,
        on_error=lambda exc: run.fail(exc, task),
    )


def _work(run: Run, stage: Stage) -> None:
    worker = Worker(run, stage)
    error: BaseException | None = None
    try:
        if stage.task.join:
            _join(worker)
        elif stage.task.branch:
            _branch(worker)
        else:
            _map(worker)
    except BaseException as exc:
        error = exc
    finally:
        worker.leave(error)


def _flusher(worker: Worker) -> Callable[[bool], None]:
    """``flush(last)``: hand the outbox on (as part of the batch in hand, when ordered)."""
    out, box = worker.stage.out, worker.box
    if worker.ordered:
        return lambda last: out.flush_seq(worker.seq, box, last)
    return lambda last: out.flush(box)


def _map(worker: Worker) -> None:
    stage = worker.stage
    inp, call = stage.inp, stage.call
    get = inp.get_seq if worker.ordered else inp.get
    receivers, idle, append = stage.out.getters, worker.idle, worker.box.append
    flush = _flusher(worker)
    limit = min(stage.take, stage.emit)
    n = 1
    while (items := worker.begin(get(n))) is not None:
        started = perf_counter()
        for x in items:
            if idle:
                inp.wake_idle(items)
            append(call(x))
            if receivers:
                flush(False)
        elapsed = perf_counter() - started
        flush(True)
        n = adapt(n, worker.size, elapsed, limit)


def as_iterator(task: Task, result: object, run: Run | None = None) -> Iterator[Any]:
    """The items a branching call returned, for a worker thread to pour."""
    if run is not None and run.loop is not None and not hasattr(result, "__iter__") and hasattr(result, "__aiter__"):
        return _on_loop(run, run.loop, result)
    try:
        return iter(result)  # type: ignore[call-overload,no-any-return]
    except TypeError:
        raise branch_error(task, result) from None


def _on_loop(run: Run, loop: asyncio.AbstractEventLoop, result: Any) -> Generator[Any, None, None]:
    """Iterate, from a worker thread, an async iterable that a sync call returned.

    Each step runs on the run's loop (where the iterable belongs) as a task of the
    run, so cancelling the run interrupts it; this thread waits for it.
    """
    items = result.__aiter__()

    async def step(advance: Callable[[], Any]) -> Any:
        me = asyncio.current_task()
        assert me is not None
        run.tasks.add(me)
        try:
            if run.cancelled:  # cancelled before this step was registered
                raise Cancelled
            return await advance()
        finally:
            run.tasks.discard(me)

    def on_loop(advance: Callable[[], Any]) -> Any:
        if run.cancelled:
            raise Cancelled
        try:
            return asyncio.run_coroutine_threadsafe(step(advance), loop).result()
        except (concurrent.futures.CancelledError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not loop.is_closed():
                raise
            raise Cancelled from None  # cancelled, or the loop is gone

    try:
        while True:
            try:
                item = on_loop(items.__anext__)
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            try:
                asyncio.run_coroutine_threadsafe(aclose(), loop).result(timeout=SETTLE_SECONDS)
            except (RuntimeError, concurrent.futures.CancelledError, TimeoutError):
                pass  # the loop is gone or stopping: it closes what is left


def pour(
    items: Iterator[Any],
    box: list[Any],
    m: int,
    limit: int,
    flush: Callable[[], None],
    receivers: Sized,
) -> int:
    """Move ``items`` into the outbox, flushing it whenever it holds ``m`` items or a
    receiver is parked. Returns the adapted ``m``. Closes ``items`` if it stops
    early, in this thread, so a generator's ``finally`` runs here.
    """
    append = box.append
    last = perf_counter()
    try:
        while True:
            room = m - len(box)
            count = 0
            if room > 0:
                for count, item in enumerate(islice(items, room), 1):
                    append(item)
                    if receivers:
                        flush()
                if count < room:
                    return m
            flush()
            now = perf_counter()
            m = adapt(m, m, now - last, limit)
            last = now
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _branch(worker: Worker) -> None:
    stage, run = worker.stage, worker.run
    inp, call, task = stage.inp, stage.call, stage.task
    get = inp.get_seq if worker.ordered else inp.get
    receivers, idle = stage.out.getters, worker.idle
    flush = _flusher(worker)
    early = partial(flush, False)
    n = m = 1
    while (items := worker.begin(get(n))) is not None:
        started = perf_counter()
        for x in items:
            if idle:
                inp.wake_idle(items)
            m = pour(as_iterator(task, call(x), run), worker.box, m, stage.emit, early, receivers)
        flush(True)
        n = adapt(n, worker.size, perf_counter() - started, stage.take)


def _join(worker: Worker) -> None:
    stage, run = worker.stage, worker.run
    inp, out, task, box = stage.inp, stage.out, stage.task, worker.box

    def stream() -> Generator[Any, None, None]:
        n = 1
        # inp.get raises Cancelled into the join function if the run stops.
        while (items := worker.begin(inp.get(n))) is not None:
            started = perf_counter()
            for x in items:
                if worker.idle:
                    inp.wake_idle(items)
                yield x
            n = adapt(n, worker.size, perf_counter() - started, stage.take)

    inputs = stream()
    try:
        result = stage.call(inputs)
        if task.branch:  # a generator reads its inputs as it is iterated
            pour(as_iterator(task, result, run), box, 1, stage.emit, partial(out.flush, box), out.getters)
        else:
            box.append(result)
    finally:
        inputs.close()
    out.flush(box)


def iterate(tasks: tuple[Task, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Generator[Any, None, None]:
    """The caller's side of a sync run: a generator over the last task's outputs."""
    first = tasks[0]
    if len(tasks) == 1:
        result = first.func(*args, **kwargs)
        if first.branch:
            yield from as_iterator(first, result)
        else:
            yield result
        return
    inline = not first.branch  # called once: nothing to overlap it with
    if inline:
        item = first.func(*args, **kwargs)
    run = Run(tasks, args, kwargs, loop=None)
    try:
        try:
            if inline:
                run.stages[0].out.put([item])
                run.stages[0].out.close_send()
            for stage in run.stages[1 if inline else 0 :]:
                start(run, stage)
            output = run.output
            cursor = run.cursor()
            while True:
                batch = output.get(run.output_take)
                if batch is None:
                    break
                cursor[0] = batch
                yield from batch
        except Cancelled:
            pass
        ended = run.end()
    except BaseException:
        run.leave()
        raise
    finally:
        run.finish()
    if not ended:
        raise run.failure()
