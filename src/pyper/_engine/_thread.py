"""Stage workers on threads, for sync functions, and the sync caller's side.

A worker, in outline::

    with inp (receive end), out (send end):
        for batch in inp:                  # up to n items, n adapted to call cost
            out.put([call(x) for x in batch])

Each worker is one job on one thread from ``_threads``; it runs in its own copy
of the caller's ``contextvars`` context, owns its local batch state, and reports
an error by ``Run.fail``. It stops when its input ends (then closes its output),
when its output breaks, or when the run is cancelled: a cancelled channel raises
in ``get``/``put``, and the batch it is working through is emptied under it, so
it starts no new call. A call already running is not interrupted: Python cannot
stop a thread, so the call finishes and its result is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from itertools import islice
from time import perf_counter
from typing import Any

from .._channel import Broken, Cancelled
from .._task import Task
from . import _threads
from ._run import MAX_BATCH, Run, Stage, adapt, branch_error

__all__ = ["iterate", "pour", "start"]


def start(run: Run, stage: Stage) -> None:
    task = stage.task
    for i in range(task.workers):
        _threads.spawn(
            lambda: run.context.copy().run(_work, run, stage),
            name=f"pyper:{task.name}[{i}]",
            daemon=task.daemon,
        )


def _work(run: Run, stage: Stage) -> None:
    task = stage.task
    cursor = run.cursor()
    try:
        if task.join:
            _join(stage, cursor)
        elif task.branch:
            _branch(stage, cursor)
        else:
            _map(stage, cursor)
    except (Cancelled, Broken):
        pass
    except BaseException as exc:
        run.fail(exc, task)
    finally:
        cursor[0] = []
        stage.inp.close_receive()
        stage.out.close_send()


def _map(stage: Stage, cursor: list[list[Any]]) -> None:
    inp, out, call = stage.inp, stage.out, stage.call
    limit = min(stage.take, stage.emit)
    ordered = stage.task.ordered and stage.task.workers > 1
    n = 1
    while True:
        if ordered:
            got = inp.get_seq(n)
            if got is None:
                return
            seq, batch = got
        else:
            batch = inp.get(n)  # type: ignore[assignment]
            if batch is None:
                return
        cursor[0] = batch
        started = perf_counter()
        results = [call(x) for x in batch]
        elapsed = perf_counter() - started
        if ordered:
            out.put_seq(seq, results, True)
        else:
            out.put(results)
        n = adapt(n, len(batch), elapsed, limit)


def as_iterator(task: Task, result: object) -> Iterator[Any]:
    try:
        return iter(result)  # type: ignore[call-overload,no-any-return]
    except TypeError:
        raise branch_error(task, result) from None


def pour(
    items: Iterator[Any], buf: list[Any], m: int, limit: int, flush: Callable[[list[Any]], None]
) -> tuple[list[Any], int]:
    """Move ``items`` into ``buf``, handing ``buf`` to ``flush`` each time it holds ``m``.

    Returns the new buffer (with what is left) and the adapted ``m``. Closes
    ``items`` if it stops early, in this thread, so a generator's ``finally`` runs here.
    """
    last = perf_counter()
    try:
        while True:
            size = len(buf)
            room = m - size
            buf.extend(islice(items, room))
            if len(buf) - size < room:
                return buf, m
            flush(buf)
            buf = []
            now = perf_counter()
            m = adapt(m, m, now - last, limit)
            last = now
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _branch(stage: Stage, cursor: list[list[Any]]) -> None:
    inp, out, call, task = stage.inp, stage.out, stage.call, stage.task
    ordered = task.ordered and task.workers > 1
    n = m = 1
    buf: list[Any] = []
    while True:
        if ordered:
            got = inp.get_seq(n)
            if got is None:
                return
            seq, batch = got
            flush: Callable[[list[Any]], None] = lambda b: out.put_seq(seq, b, False)
        else:
            batch = inp.get(n)  # type: ignore[assignment]
            if batch is None:
                return
            flush = out.put
        cursor[0] = batch
        started = perf_counter()
        for x in batch:
            buf, m = pour(as_iterator(task, call(x)), buf, m, stage.emit, flush)
        if ordered:
            out.put_seq(seq, buf, True)
        elif buf:
            out.put(buf)
        buf = []
        n = adapt(n, len(batch), perf_counter() - started, stage.take)


def _join(stage: Stage, cursor: list[list[Any]]) -> None:
    inp, out, task = stage.inp, stage.out, stage.task

    def items() -> Generator[Any, None, None]:
        n = 1
        while True:
            batch = inp.get(n)  # raises Cancelled into the join function if the run stops
            if batch is None:
                return
            cursor[0] = batch
            started = perf_counter()
            yield from batch
            n = adapt(n, len(batch), perf_counter() - started, stage.take)

    stream = items()
    try:
        result = stage.call(stream)
    finally:
        stream.close()
    if task.branch:
        buf, _ = pour(as_iterator(task, result), [], 1, stage.emit, out.put)
        if buf:
            out.put(buf)
    else:
        out.put([result])


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
    run = Run(tasks, args, kwargs, inline_first=inline, loop=None)
    try:
        if inline:
            run.stages[0].out.put([item])
            run.stages[0].out.close_send()
        for stage in run.stages[1 if inline else 0 :]:
            start(run, stage)
        output = run.output
        cursor = run.cursor()
        while True:
            batch = output.get(MAX_BATCH)
            if batch is None:
                return
            cursor[0] = batch
            yield from batch
    except Cancelled:
        pass
    except BaseException:
        run.cancel()
        raise
    finally:
        run.finish()
    error = run.take_error()
    if error is None:
        raise Cancelled("the pipeline was cancelled from outside (an enclosing run or interpreter exit)")
    raise error
