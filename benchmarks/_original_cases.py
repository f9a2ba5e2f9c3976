"""Child script: python-pyper 0.4.4 (the original project), one contender per process.

    benchmarks/.venv-original/bin/python benchmarks/_original_cases.py CONTENDER N REPS

Prints `{"values": [...]}` (seconds, or bytes for memory) as one JSON line. The shapes are
the ones `_cases.py` runs for our `pyper`, with two spellings 0.4.4 needs:

- `branch=True` on generator tasks: in 0.4.4 `branch` defaults to False and a generator task
  emits the generator object itself (our `branch=None` fans out generator functions);
- `workers=`: 0.4.4 has no `concurrency=` alias.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from functools import partial
from typing import Any

from pyper import task

from _workloads import (
    acount,
    adbl,
    ainc,
    apair,
    aproduce,
    asleep_10ms,
    asleep_50ms,
    chain_total,
    count,
    dbl,
    emit,
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

Contender = Callable[[int, int], "list[float] | None"]
CONTENDERS: dict[str, Contender] = {}


def contender(func: Contender) -> Contender:
    CONTENDERS[func.__name__] = func
    return func


def _sum_sync(pipeline: Any) -> Callable[[int], int]:
    return lambda n: sum(pipeline(n))


def _sum_async(pipeline: Any) -> Callable[[int], Any]:
    async def run(n: int) -> int:
        total = 0
        async for x in pipeline(n):
            total += x
        return total

    return run


# --- throughput -----------------------------------------------------------------------------

@contender
def sync_w1(n: int, reps: int) -> list[float]:
    p = task(produce, branch=True) | task(inc) | task(dbl)
    return time_sync_sum(_sum_sync(p), n, reps)


@contender
def sync_w4(n: int, reps: int) -> list[float]:
    p = task(produce, branch=True) | task(inc, workers=4) | task(dbl, workers=4)
    return time_sync_sum(_sum_sync(p), n, reps)


@contender
def async_w1(n: int, reps: int) -> list[float]:
    p = task(aproduce, branch=True) | task(ainc) | task(adbl)
    return time_async_sum(_sum_async(p), n, reps)


@contender
def async_w4(n: int, reps: int) -> list[float]:
    p = task(aproduce, branch=True) | task(ainc, workers=4) | task(adbl, workers=4)
    return time_async_sum(_sum_async(p), n, reps)


@contender
def async_mixed_w4(n: int, reps: int) -> list[float]:
    p = task(aproduce, branch=True) | task(inc, workers=4) | task(adbl)
    return time_async_sum(_sum_async(p), n, reps)


@contender
def throttle_1000(n: int, reps: int) -> list[float]:
    p = task(payload, branch=True, throttle=1000) | task(len) | task(slowish)
    return time_sum(lambda k: sum(p(k)), n, reps, 100)


# --- asyncio at scale: n workers of one asyncio.sleep(0.5) each ------------------------------

def _at_scale(n: int, reps: int, memory: bool) -> list[float]:
    p = task(produce, branch=True) | task(nap, workers=n)
    return time_and_memory(lambda: asyncio.run(_sum_async(p)(n)), n * (n - 1) // 2, memory)


CONTENDERS["scale_ours"] = partial(_at_scale, memory=False)
CONTENDERS["scale_ours_mem"] = partial(_at_scale, memory=True)


# --- per call (n = calls per repetition) ----------------------------------------------------

@contender
def percall_sync(n: int, reps: int) -> list[float]:
    p = task(inc) | task(dbl)
    return time_sync_calls(lambda: list(p(1)), [4], n, reps)


@contender
def percall_async(n: int, reps: int) -> list[float]:
    p = task(ainc) | task(adbl)

    async def call() -> list[int]:
        return [x async for x in p(1)]

    return time_async_calls(call, [4], n, reps)


@contender
def percall_run_sync(n: int, reps: int) -> list[float]:
    p = task(pair, branch=True) | task(dbl)
    return time_sync_calls(lambda: list(p(1)), [2, 4], n, reps)


@contender
def percall_run_async(n: int, reps: int) -> list[float]:
    p = task(apair, branch=True) | task(adbl)

    async def call() -> list[int]:
        return [x async for x in p(1)]

    return time_async_calls(call, [2, 4], n, reps)


# --- latency --------------------------------------------------------------------------------
# 0.4.4 does not stop an infinite producer when its output is closed (closing the sync
# generator waits for the producer forever; an async one is left running), so these report
# the first output and leave the process with os._exit, without closing.

def _exit_now() -> None:
    """Leave without closing the run: stop the process manager 0.4.4 starts, then exit."""
    for child in multiprocessing.active_children():
        child.terminate()
    os._exit(0)


@contender
def first_sync(n: int, reps: int) -> None:
    p = task(count, branch=True) | task(sleep_10ms) | task(sleep_10ms) | task(sleep_10ms)
    t0 = perf()
    it = p()
    next(it)
    emit([perf() - t0])
    _exit_now()  # while `it` is alive: collecting it would wait for the producer forever


@contender
def first_async(n: int, reps: int) -> None:
    p = task(acount, branch=True) | task(asleep_10ms) | task(asleep_10ms) | task(asleep_10ms)

    async def main_() -> None:
        t0 = perf()
        it = p().__aiter__()
        await it.__anext__()
        emit([perf() - t0])
        _exit_now()

    asyncio.run(main_())


@contender
def fifty_sync(n: int, reps: int) -> list[float]:
    p = task(produce, branch=True) | task(sleep_50ms, workers=50) | task(sleep_50ms, workers=50)
    values = []
    for _ in range(reps):
        t0 = perf()
        total = sum(p(n))
        values.append(perf() - t0)
        assert total == sum(range(n)), total
    return values


@contender
def fifty_async(n: int, reps: int) -> list[float]:
    p = task(aproduce, branch=True) | task(asleep_50ms, workers=50) | task(asleep_50ms, workers=50)

    async def main_() -> list[float]:
        values = []
        for _ in range(reps):
            t0 = perf()
            total = sum([x async for x in p(n)])
            values.append(perf() - t0)
            assert total == sum(range(n)), total
        return values

    return asyncio.run(main_())


# --- memory ---------------------------------------------------------------------------------

@contender
def memory_sync(n: int, reps: int) -> list[float]:
    p = task(produce, branch=True, throttle=1000) | task(inc, throttle=1000) | task(dbl, throttle=1000)
    return memory_growth(lambda: sum(p(n)), chain_total(n))


@contender
def memory_async(n: int, reps: int) -> list[float]:
    p = task(aproduce, branch=True, throttle=1000) | task(ainc, throttle=1000) | task(adbl, throttle=1000)
    return memory_growth(lambda: asyncio.run(_sum_async(p)(n)), chain_total(n))


if __name__ == "__main__":
    main(CONTENDERS)
