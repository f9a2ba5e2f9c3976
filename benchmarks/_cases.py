"""Child script: the baselines and our `pyper`, one contender per process.

    python benchmarks/_cases.py CONTENDER N REPS      (run.py puts src/ first on PYTHONPATH)

Our pipelines are spelled the way a user writes them, with the engine's defaults. `pyper` is
imported only by our contenders, so the baselines run while the engine does not import.
python-pyper 0.4.4 runs the same shapes in `_original_cases.py`.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from _workloads import (
    acount,
    adbl,
    ainc,
    apair,
    aproduce,
    asleep_10ms,
    asleep_50ms,
    chain_total,
    check,
    count,
    dbl,
    first_output_async,
    first_output_sync,
    inc,
    main,
    memory_growth,
    nap,
    pair,
    payload,
    perf,
    produce,
    sleep_10ms,
    sleep_50ms,
    slowish,
    time_async_calls,
    time_async_sum,
    time_sync_calls,
    time_and_memory,
    time_sum,
    time_sync_sum,
)

Contender = Callable[[int, int], list[float]]
CONTENDERS: dict[str, Contender] = {}


def contender(func: Contender) -> Contender:
    CONTENDERS[func.__name__] = func
    return func


# --- baselines: throughput ------------------------------------------------------------------

def plain_chain(n: int) -> int:
    return sum(dbl(inc(x)) for x in produce(n))


async def plain_async_chain(n: int) -> int:
    total = 0
    async for x in aproduce(n):
        total += await adbl(await ainc(x))
    return total


async def batched_async_chain(n: int) -> int:
    """The least an engine that hands items between stages in batches does per item, with
    no concurrency at all: batches of 1024, each stage a ``for`` over a list appending to
    the next, one async generator to the consumer (issue 21: the async chain's floor)."""

    async def stages(n: int) -> Any:
        source = aproduce(n)
        while True:
            first: list[Any] = []
            append = first.append
            async for x in source:
                append(x)
                if len(first) == 1024:
                    break
            if not first:
                return
            second: list[Any] = []
            append = second.append
            for x in first:
                append(await ainc(x))
            third: list[Any] = []
            append = third.append
            for x in second:
                append(await adbl(x))
            for x in third:
                yield x

    total = 0
    async for x in stages(n):
        total += x
    return total


_STOP = object()


def threads_queue_pipeline(n: int) -> int:
    """One thread per stage, unbounded queue.Queue between stages, sentinel-terminated."""
    q1: queue.Queue[Any] = queue.Queue()
    q2: queue.Queue[Any] = queue.Queue()
    q3: queue.Queue[Any] = queue.Queue()

    def source() -> None:
        for x in produce(n):
            q1.put(x)
        q1.put(_STOP)

    def stage(func: Callable[[Any], Any], q_in: queue.Queue[Any], q_out: queue.Queue[Any]) -> None:
        while (x := q_in.get()) is not _STOP:
            q_out.put(func(x))
        q_out.put(_STOP)

    threads = [
        threading.Thread(target=source, name="bench-source"),
        threading.Thread(target=stage, args=(inc, q1, q2), name="bench-inc"),
        threading.Thread(target=stage, args=(dbl, q2, q3), name="bench-dbl"),
    ]
    for t in threads:
        t.start()
    total = 0
    while (x := q3.get()) is not _STOP:
        total += x
    for t in threads:
        t.join()
    return total


async def asyncio_queue_pipeline(n: int) -> int:
    """One asyncio task per stage, unbounded asyncio.Queue between stages (as in the original
    README's hand-written example), sentinel-terminated."""
    q1: asyncio.Queue[Any] = asyncio.Queue()
    q2: asyncio.Queue[Any] = asyncio.Queue()
    q3: asyncio.Queue[Any] = asyncio.Queue()

    async def source() -> None:
        async for x in aproduce(n):
            await q1.put(x)
        await q1.put(_STOP)

    async def stage(func: Callable[[Any], Any], q_in: asyncio.Queue[Any], q_out: asyncio.Queue[Any]) -> None:
        while (x := await q_in.get()) is not _STOP:
            await q_out.put(await func(x))
        await q_out.put(_STOP)

    tasks = [
        asyncio.create_task(source()),
        asyncio.create_task(stage(ainc, q1, q2)),
        asyncio.create_task(stage(adbl, q2, q3)),
    ]
    total = 0
    while (x := await q3.get()) is not _STOP:
        total += x
    await asyncio.gather(*tasks)
    return total


@contender
def plain(n: int, reps: int) -> list[float]:
    return time_sync_sum(plain_chain, n, reps)


@contender
def plain_async(n: int, reps: int) -> list[float]:
    return time_async_sum(plain_async_chain, n, reps)


@contender
def batched_async(n: int, reps: int) -> list[float]:
    return time_async_sum(batched_async_chain, n, reps)


@contender
def threads_queue(n: int, reps: int) -> list[float]:
    return time_sync_sum(threads_queue_pipeline, n, reps)


@contender
def asyncio_queue(n: int, reps: int) -> list[float]:
    return time_async_sum(asyncio_queue_pipeline, n, reps)


# --- journal= (issue 22): what recording done items costs ------------------------------------

def _spin(seconds: float) -> Callable[[int], int]:
    def work(x: int) -> int:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        return 1

    return work


def _sleep_1ms(x: int) -> int:
    time.sleep(0.001)
    return 1


def _journaled(work: Callable[[int], int], workers: int, journal: bool) -> Callable[[int, int], list[float]]:
    """``produce | work`` (each output 1), with a fresh journal per run if ``journal``."""
    def run(n: int, reps: int) -> list[float]:
        import tempfile

        from pyper import task

        folder = tempfile.mkdtemp(prefix="pyper-journal-bench-")
        runs = iter(range(10**9))

        def once(k: int) -> int:
            path = os.path.join(folder, f"run{next(runs)}.journal") if journal else None
            return sum((task(produce, journal=path) | task(work, workers=workers))(k))

        try:
            return time_sum(once, n, reps, 1)
        finally:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)

    return run


# journal_1ms_off/on: 1 ms of sleep per item, 4 workers; journal_10us_off/on: 10 us of CPU, 1 worker.
for _name, _work, _workers in (("1ms", _sleep_1ms, 4), ("10us", _spin(10e-6), 1)):
    for _on in (False, True):
        CONTENDERS[f"journal_{_name}_{'on' if _on else 'off'}"] = _journaled(_work, _workers, _on)


# --- ours: throughput -----------------------------------------------------------------------

def _sum_sync(pipeline: Any) -> Callable[[int], int]:
    return lambda n: sum(pipeline(n))


def _sum_async(pipeline: Any) -> Callable[[int], Any]:
    async def run(n: int) -> int:
        total = 0
        async for x in pipeline(n):
            total += x
        return total

    return run


@contender
def sync_w1(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(produce) | task(inc) | task(dbl)
    return time_sync_sum(_sum_sync(p), n, reps)


@contender
def sync_w4(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(produce) | task(inc, workers=4) | task(dbl, workers=4)
    return time_sync_sum(_sum_sync(p), n, reps)


def _watched(run: Callable[[int], Any], how: str) -> Callable[[int], Any]:
    """``run`` inside pyper.observe() (metrics on) or pyper.progress(bars=False) (and
    its thread reading them every 0.05 s, its log lines going nowhere)."""
    import pyper

    if how == "observe":
        def watched(n: int) -> Any:
            with pyper.observe():
                return run(n)
    else:
        def watched(n: int) -> Any:
            with pyper.progress(bars=False, interval=0.05):
                return run(n)
    return watched


@contender
def sync_w1_observed(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(produce) | task(inc) | task(dbl)
    return time_sync_sum(_watched(_sum_sync(p), "observe"), n, reps)


@contender
def sync_w1_progress(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(produce) | task(inc) | task(dbl)
    return time_sync_sum(_watched(_sum_sync(p), "progress"), n, reps)


@contender
def async_w1_observed(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(aproduce) | task(ainc) | task(adbl)
    run = _sum_async(p)

    async def watched(n: int) -> Any:
        import pyper

        with pyper.observe():
            return await run(n)
    return time_async_sum(watched, n, reps)


@contender
def async_w1(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(aproduce) | task(ainc) | task(adbl)
    return time_async_sum(_sum_async(p), n, reps)


@contender
def async_w4(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(aproduce) | task(ainc, workers=4) | task(adbl, workers=4)
    return time_async_sum(_sum_async(p), n, reps)


#: One option set on both mapping tasks of the w4 shapes: what it costs per item when set.
_OPTIONS: dict[str, dict[str, Any]] = {
    "retries": {"retries": 3},
    "timeout": {"timeout": 10.0},
    "rate": {"rate": 1e9},
    "skip": {"on_error": "skip"},
}


def _with_option(kind: str, option: str) -> Callable[[int, int], list[float]]:
    def run(n: int, reps: int) -> list[float]:
        from pyper import task

        extra = _OPTIONS[option]
        if kind == "sync":
            p = task(produce) | task(inc, workers=4, **extra) | task(dbl, workers=4, **extra)
            return time_sync_sum(_sum_sync(p), n, reps)
        q = task(aproduce) | task(ainc, workers=4, **extra) | task(adbl, workers=4, **extra)
        return time_async_sum(_sum_async(q), n, reps)

    run.__name__ = f"{kind}_w4_{option}"
    return run


for _kind in ("sync", "async"):
    for _option in _OPTIONS:
        contender(_with_option(_kind, _option))


# Throttled links (issue 21): payload | len | slowish, throttle=T on the producer.


def _throttled(limit: int) -> Contender:
    def run(n: int, reps: int) -> list[float]:
        from pyper import task

        p = task(payload, throttle=limit) | task(len) | task(slowish)
        return time_sum(lambda k: sum(p(k)), n, reps, 100)

    return run


for _limit in (0, 64, 256, 1000, 5000):
    CONTENDERS[f"throttle_{_limit}"] = _throttled(_limit)


@contender
def throttle_plain(n: int, reps: int) -> list[float]:
    return time_sum(lambda k: sum(slowish(len(x)) for x in payload(k)), n, reps, 100)


@contender
def throttle_threads(n: int, reps: int) -> list[float]:
    """Hand-written: three threads, queue.Queue(1000) between them, sentinel-terminated."""
    import queue
    import threading

    def run(k: int) -> int:
        q1: queue.Queue[Any] = queue.Queue(1000)
        q2: queue.Queue[Any] = queue.Queue(1000)

        def first() -> None:
            for x in payload(k):
                q1.put(x)
            q1.put(_STOP)

        def second() -> None:
            while (x := q1.get()) is not _STOP:
                q2.put(len(x))
            q2.put(_STOP)

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        total = 0
        while (y := q2.get()) is not _STOP:
            total += slowish(y)
        for t in threads:
            t.join()
        return total

    return time_sum(run, n, reps, 100)


@contender
def async_mixed_w4(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(aproduce) | task(inc, workers=4) | task(adbl)
    return time_async_sum(_sum_async(p), n, reps)


# --- asyncio at scale (issue 21): n workers of one asyncio.sleep(0.5) each, n items -------
# "<name>" times one run; "<name>_mem" is its peak RSS growth (one value per fresh process).

def _at_scale(who: str) -> Callable[[int, int, bool], list[float]]:
    def run(n: int, reps: int, memory: bool) -> list[float]:
        async def gather() -> int:
            return sum(await asyncio.gather(*(nap(i) for i in range(n))))

        async def taskgroup() -> int:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(nap(i)) for i in range(n)]
            return sum(t.result() for t in tasks)

        def main() -> int:
            if who == "gather":
                return asyncio.run(gather())
            if who == "taskgroup":
                return asyncio.run(taskgroup())
            from pyper import task

            return int(asyncio.run(_sum_async(task(produce, branch=True) | task(nap, workers=n))(n)))

        return time_and_memory(main, n * (n - 1) // 2, memory)

    return run


for _who in ("gather", "taskgroup", "ours"):
    CONTENDERS[f"scale_{_who}"] = partial(_at_scale(_who), memory=False)
    CONTENDERS[f"scale_{_who}_mem"] = partial(_at_scale(_who), memory=True)


# --- ours: per call (n = calls per repetition) -----------------------------------------------

@contender
def percall_sync(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(inc) | task(dbl)
    return time_sync_calls(lambda: list(p(1)), [4], n, reps)


@contender
def percall_async(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(ainc) | task(adbl)

    async def call() -> list[int]:
        return [x async for x in p(1)]

    return time_async_calls(call, [4], n, reps)


@contender
def percall_run_sync(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(pair, branch=True) | task(dbl)
    return time_sync_calls(lambda: list(p(1)), [2, 4], n, reps)


@contender
def percall_run_async(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(apair, branch=True) | task(adbl)

    async def call() -> list[int]:
        return [x async for x in p(1)]

    return time_async_calls(call, [2, 4], n, reps)


# --- ours: latency --------------------------------------------------------------------------
# `<name>` is cold: the first run in a fresh process (engine threads started on demand).
# `<name>_warm` first makes one untimed run, then times `reps` runs right after it.

def latency(func: Callable[[int, int], list[float]]) -> None:
    """Register `func` as the cold contender and `<name>_warm` as the warm one."""

    def warm(n: int, reps: int) -> list[float]:
        func(n, 1)
        return func(n, reps)

    CONTENDERS[func.__name__] = func
    CONTENDERS[func.__name__ + "_warm"] = warm


@latency
def first_sync(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(count) | task(sleep_10ms) | task(sleep_10ms) | task(sleep_10ms)
    return first_output_sync(p, reps)


@latency
def first_async(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(acount) | task(asleep_10ms) | task(asleep_10ms) | task(asleep_10ms)
    return first_output_async(p, reps)


def _time_once(run: Callable[[], int], expect: int) -> list[float]:
    t0 = perf()
    total = run()
    elapsed = perf() - t0
    check("run", total, expect)
    return [elapsed]


@latency
def fifty_sync(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(produce) | task(sleep_50ms, workers=50) | task(sleep_50ms, workers=50)
    return [_time_once(lambda: sum(p(n)), sum(range(n)))[0] for _ in range(reps)]


@latency
def fifty_async(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(aproduce) | task(asleep_50ms, workers=50) | task(asleep_50ms, workers=50)

    async def run() -> int:
        return sum([x async for x in p(n)])

    async def main_() -> list[float]:
        values = []
        for _ in range(reps):
            t0 = perf()
            total = await run()
            values.append(perf() - t0)
            check("run", total, sum(range(n)))
        return values

    return asyncio.run(main_())


@latency
def stages_sync(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(produce) | task(sleep_10ms) | task(sleep_10ms) | task(sleep_10ms)
    return [_time_once(lambda: sum(p(n)), sum(range(n)))[0] for _ in range(reps)]


@latency
def stages_async(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(aproduce) | task(asleep_10ms) | task(asleep_10ms) | task(asleep_10ms)

    async def main_() -> list[float]:
        values = []
        for _ in range(reps):
            t0 = perf()
            total = sum([x async for x in p(n)])
            values.append(perf() - t0)
            check("run", total, sum(range(n)))
        return values

    return asyncio.run(main_())


@contender
def fifty_threads(n: int, reps: int) -> list[float]:
    """Hand-written: 50 threads per stage, unbounded queues, one sentinel per worker."""

    def run() -> int:
        q1: queue.Queue[Any] = queue.Queue()
        q2: queue.Queue[Any] = queue.Queue()
        q3: queue.Queue[Any] = queue.Queue()
        done = [0, 0]
        lock = threading.Lock()

        def source() -> None:
            for x in produce(n):
                q1.put(x)
            for _ in range(50):
                q1.put(_STOP)

        def worker(i: int, q_in: queue.Queue[Any], q_out: queue.Queue[Any], consumers: int) -> None:
            while (x := q_in.get()) is not _STOP:
                q_out.put(sleep_50ms(x))
            with lock:
                done[i] += 1
                last = done[i] == 50
            if last:
                for _ in range(consumers):
                    q_out.put(_STOP)

        threads = [threading.Thread(target=source)]
        threads += [threading.Thread(target=worker, args=(0, q1, q2, 50)) for _ in range(50)]
        threads += [threading.Thread(target=worker, args=(1, q2, q3, 1)) for _ in range(50)]
        for t in threads:
            t.start()
        total = 0
        while (x := q3.get()) is not _STOP:
            total += x
        for t in threads:
            t.join()
        return total

    return [_time_once(run, sum(range(n)))[0] for _ in range(reps)]


# --- memory (one value per fresh process) ---------------------------------------------------

@contender
def memory_plain(n: int, reps: int) -> list[float]:
    return memory_growth(lambda: plain_chain(n), chain_total(n))


@contender
def memory_sync(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(produce, throttle=1000) | task(inc, throttle=1000) | task(dbl, throttle=1000)
    return memory_growth(lambda: sum(p(n)), chain_total(n))


@contender
def memory_async(n: int, reps: int) -> list[float]:
    from pyper import task

    p = task(aproduce, throttle=1000) | task(ainc, throttle=1000) | task(adbl, throttle=1000)
    return memory_growth(lambda: asyncio.run(_sum_async(p)(n)), chain_total(n))


if __name__ == "__main__":
    main(CONTENDERS)
