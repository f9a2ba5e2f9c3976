"""Workloads and measurement harness shared by every benchmark contender.

The runner (`run.py`) never measures in its own process: each sample is taken in a child
process that runs one contender and prints one JSON line, `{"values": [...]}`, on stdout.
Two child scripts use this module:

- `_cases.py`, run with the runner's interpreter: the baselines and our `pyper` (from `src/`);
- `_original_cases.py`, run with `.venv-original/bin/python`: python-pyper 0.4.4.

Both import the functions below, so every contender runs exactly the same user code. Nothing
here touches interpreter-global state (switch interval, GC, recursion limit): contenders run
in their normal configuration.

Child command line: `python <script> CONTENDER N REPS`; each contender function takes
`(n, reps)` and returns a list of `reps` values (seconds, or bytes for memory cases).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

perf = time.perf_counter


# --- the user code every contender runs -----------------------------------------------------

def produce(n: int) -> Iterator[int]:
    for i in range(n):
        yield i


def inc(x: int) -> int:
    return x + 1


def dbl(x: int) -> int:
    return 2 * x


async def aproduce(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def ainc(x: int) -> int:
    return x + 1


async def adbl(x: int) -> int:
    return 2 * x


def pair(x: int) -> Iterator[int]:
    """The per-call case's generator first task: two items, so the run's stages start."""
    yield x
    yield x + 1


async def apair(x: int) -> AsyncIterator[int]:
    yield x
    yield x + 1


async def nap(x: int) -> int:
    """The async-at-scale case's call: half a second of asyncio.sleep."""
    await asyncio.sleep(0.5)
    return x


def time_and_memory(run: Callable[[], int], expect: int, memory: bool) -> list[float]:
    """One run's seconds, or (``memory``) its peak RSS growth in bytes (one value per fresh
    process, as ``memory_growth``)."""
    if memory:
        return memory_growth(run, expect)
    started = perf()
    total = run()
    elapsed = perf() - started
    check("run", total, expect)
    return [elapsed]


def payload(n: int) -> Iterator[bytes]:
    """The throttle case's producer: n small byte strings."""
    for _ in range(n):
        yield b"x" * 100


_slowish_calls = [0]


def slowish(x: int) -> int:
    """The throttle case's consumer: 1 ms of sleep every 1000th call (a consumer that
    stalls now and then, so a throttled link fills and its producer waits)."""
    _slowish_calls[0] += 1
    if _slowish_calls[0] % 1000 == 0:
        time.sleep(0.001)
    return x


def time_sum(run: Callable[[int], int], n: int, reps: int, each: int) -> list[float]:
    """Seconds per ``run(n)``, whose sum must be ``each * n`` (after a warm-up)."""
    check("warm-up", run(WARMUP_N), each * WARMUP_N)
    values = []
    for _ in range(reps):
        t0 = perf()
        total = run(n)
        values.append(perf() - t0)
        check("run", total, each * n)
    return values


def count() -> Iterator[int]:
    """An infinite producer."""
    i = 0
    while True:
        yield i
        i += 1


async def acount() -> AsyncIterator[int]:
    i = 0
    while True:
        yield i
        i += 1


def sleep_10ms(x: int) -> int:
    time.sleep(0.010)
    return x


async def asleep_10ms(x: int) -> int:
    await asyncio.sleep(0.010)
    return x


def sleep_50ms(x: int) -> int:
    time.sleep(0.050)
    return x


async def asleep_50ms(x: int) -> int:
    await asyncio.sleep(0.050)
    return x


def chain_total(n: int) -> int:
    """sum(dbl(inc(x)) for x in range(n))."""
    return n * (n + 1)


def check(name: str, got: object, want: object) -> None:
    if got != want:
        raise AssertionError(f"{name}: wrong result {got!r}, expected {want!r}")


# --- measurement shapes ---------------------------------------------------------------------
# Each returns a list of per-repetition values. A warm-up run comes first and is not recorded.

WARMUP_N = 5_000


def time_sync_sum(run: Callable[[int], int], n: int, reps: int) -> list[float]:
    """Seconds per `run(n)`, a function that pushes n items through and sums them."""
    check("warm-up", run(WARMUP_N), chain_total(WARMUP_N))
    values = []
    for _ in range(reps):
        t0 = perf()
        total = run(n)
        values.append(perf() - t0)
        check("run", total, chain_total(n))
    return values


def time_async_sum(arun: Callable[[int], Awaitable[int]], n: int, reps: int) -> list[float]:
    """Seconds per `await arun(n)`, timed inside one event loop (loop start-up excluded)."""

    async def main() -> list[float]:
        check("warm-up", await arun(WARMUP_N), chain_total(WARMUP_N))
        values = []
        for _ in range(reps):
            t0 = perf()
            total = await arun(n)
            values.append(perf() - t0)
            check("run", total, chain_total(n))
        return values

    return asyncio.run(main())


def time_sync_calls(call: Callable[[], Any], expect: Any, calls: int, reps: int) -> list[float]:
    """Seconds per `call()`, averaged over `calls` calls, `reps` times."""
    for _ in range(min(calls, 10)):
        check("warm-up", call(), expect)
    values = []
    for _ in range(reps):
        t0 = perf()
        for _ in range(calls):
            out = call()
        values.append((perf() - t0) / calls)
        check("call", out, expect)
    return values


def time_async_calls(
    acall: Callable[[], Awaitable[Any]], expect: Any, calls: int, reps: int
) -> list[float]:
    async def main() -> list[float]:
        for _ in range(min(calls, 10)):
            check("warm-up", await acall(), expect)
        values = []
        for _ in range(reps):
            t0 = perf()
            for _ in range(calls):
                out = await acall()
            values.append((perf() - t0) / calls)
            check("call", out, expect)
        return values

    return asyncio.run(main())


def first_output_sync(make: Callable[[], Iterable[Any]], reps: int) -> list[float]:
    """Seconds from calling the pipeline to its first output; the run is closed after each
    repetition."""
    values = []
    for _ in range(reps):
        t0 = perf()
        it = make()
        next(it)  # type: ignore[call-overload]
        values.append(perf() - t0)
        it.close()  # type: ignore[attr-defined]
    return values


def first_output_async(make: Callable[[], AsyncIterable[Any]], reps: int) -> list[float]:
    async def main() -> list[float]:
        values = []
        for _ in range(reps):
            t0 = perf()
            it = make()
            await it.__anext__()  # type: ignore[attr-defined]
            values.append(perf() - t0)
            await it.aclose()  # type: ignore[attr-defined]
        return values

    return asyncio.run(main())


def rss_bytes() -> int:
    """Current resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_growth(run: Callable[[], int], expect: int) -> list[float]:
    """Peak RSS during `run()` minus RSS just before it, in bytes. One value: a process has a
    single peak, so the runner starts a fresh child for each sample."""
    before = rss_bytes()
    total = run()
    growth = peak_rss_bytes() - before
    check("run", total, expect)
    return [float(max(growth, 0))]


# --- child entry point ----------------------------------------------------------------------

def emit(values: list[float], **extra: Any) -> None:
    print(json.dumps({"values": values, **extra}), flush=True)


def main(contenders: Mapping[str, Callable[[int, int], list[float] | None]]) -> None:
    if len(sys.argv) != 4 or sys.argv[1] not in contenders:
        names = ", ".join(sorted(contenders))
        sys.exit(f"usage: {sys.argv[0]} CONTENDER N REPS\ncontenders: {names}")
    name, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    values = contenders[name](n, reps)
    if values is not None:  # None: the contender emitted its result itself
        emit(values)
