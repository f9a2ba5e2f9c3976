"""Static typing checks, for the type checker only (``python -m mypy``; see ``[tool.mypy]``).

Nothing here runs a pipeline: each line asserts what a checker infers for a pipeline built with
``task``, ``@task``, ``@task(...)``, ``|`` and ``>``. ``assert_type`` is a no-op at run time, so
importing this module is harmless, and the name (not ``test_*``) keeps pytest from collecting it.

The user functions take positional-only parameters (``/``) because ``assert_type`` compares
types exactly and ``Pipeline[[int], str]`` can only spell positional-only parameters; for a
function with ordinary parameters the checker keeps their names and kinds (``Pipeline[[x: int],
str]`` in ``reveal_type``), which the last section checks by calling such pipelines.
"""

from __future__ import annotations

import functools
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
)
from typing import Any, assert_type

from pyper import AsyncPipeline, Pipeline, task

# --------------------------------------------------------------------------------------------
# User functions of every kind


def inc(x: int, /) -> int:
    return x + 1


def to_str(x: int, /) -> str:
    return str(x)


async def ainc(x: int, /) -> int:
    return x + 1


async def ato_str(x: int, /) -> str:
    return str(x)


def produce(limit: int, /) -> Generator[int, None, None]:
    yield from range(limit)


def produce_iter(limit: int, /) -> Iterator[int]:  # a generator function annotated loosely
    yield from range(limit)


async def aproduce(limit: int, /) -> AsyncGenerator[int, None]:
    for i in range(limit):
        yield i


async def aproduce_iter(limit: int, /) -> AsyncIterator[str]:
    for i in range(limit):
        yield str(i)


def split(text: str, /) -> list[str]:
    return text.split()


async def asplit(text: str, /) -> list[str]:
    return text.split()


async def astream(text: str, /) -> AsyncIterable[str]:
    return aproduce_iter(len(text))


def total(items: Iterable[int], /) -> int:
    return sum(items)


def running(items: Iterator[int], /) -> Generator[float, None, None]:
    acc = 0
    for x in items:
        acc += x
        yield acc / 2


def batches(items: Iterator[int], /) -> list[list[int]]:
    return [list(items)]


async def atotal(items: AsyncIterable[int], /) -> int:
    return sum([x async for x in items])


async def arunning(items: AsyncIterator[int], /) -> AsyncGenerator[str, None]:
    async for x in items:
        yield str(x)


async def abatches(items: AsyncIterator[int], /) -> list[bytes]:
    return [bytes(x) async for x in items]


def scale(factor: int, x: int, /) -> float:
    return factor * x / 2


def consume_sum(data: Iterable[int], /) -> int:
    return sum(data)


def consume_strs(data: Iterator[str], /) -> list[str]:
    return list(data)


async def aconsume_sum(data: AsyncIterable[int], /) -> int:
    return sum([x async for x in data])


async def aconsume_strs(data: AsyncIterator[str], /) -> None:
    async for _ in data:
        pass


class Doubler:
    def __call__(self, x: int, /) -> int:
        return 2 * x


class ADoubler:
    async def __call__(self, x: int, /) -> int:
        return 2 * x


class Thing:
    def method(self, x: int, /) -> bytes:
        return bytes(x)

    async def amethod(self, x: int, /) -> bytes:
        return bytes(x)


# --------------------------------------------------------------------------------------------
# task(func): plain, async, generator and async generator functions


assert_type(task(inc), Pipeline[[int], int])
assert_type(task(ainc), AsyncPipeline[[int], int])
assert_type(task(produce), Pipeline[[int], int])  # Generator[int]: fans out its items
assert_type(task(produce_iter), Pipeline[[int], int])
assert_type(task(aproduce), AsyncPipeline[[int], int])
assert_type(task(aproduce_iter), AsyncPipeline[[int], str])
assert_type(task(split), Pipeline[[str], list[str]])  # a list is one item unless branch=True
assert_type(task(asplit), AsyncPipeline[[str], list[str]])

# Callables of other kinds: objects, bound methods, partials, lambdas
assert_type(task(Doubler()), Pipeline[[int], int])
assert_type(task(ADoubler()), AsyncPipeline[[int], int])
assert_type(task(Thing().method), Pipeline[[int], bytes])
assert_type(task(Thing().amethod), AsyncPipeline[[int], bytes])
assert_type(task(functools.partial(scale, 3)), Pipeline[..., float])
assert_type(task(lambda: 1), Pipeline[[], int])

# All the options that do not change the type
assert_type(
    task(inc, workers=4, throttle=10, ordered=True, multiprocess=False, daemon=False),
    Pipeline[[int], int],
)
assert_type(task(ainc, concurrency=20), AsyncPipeline[[int], int])

# Nested pipelines are tasks: each input gives one item, the inner output stream;
# branch=True flattens it
inner = task(inc) | task(to_str)
ainner = task(inc) | task(ato_str)
assert_type(task(inner), Pipeline[[int], Generator[str, None, None]])
assert_type(task(ainner), AsyncPipeline[[int], AsyncGenerator[str, None]])
assert_type(task(inner, branch=True), Pipeline[[int], str])
assert_type(task(ainner, branch=True), AsyncPipeline[[int], str])

# branch=True: fan out whatever iterable the function returns
assert_type(task(split, branch=True), Pipeline[[str], str])
assert_type(task(asplit, branch=True), AsyncPipeline[[str], str])
assert_type(task(astream, branch=True), AsyncPipeline[[str], str])
assert_type(task(produce, branch=True), Pipeline[[int], int])
assert_type(task(aproduce, branch=True), AsyncPipeline[[int], int])
assert_type(task(inner, branch=True), Pipeline[[int], str])
assert_type(task(ainner, branch=True), AsyncPipeline[[int], str])

# branch=False: emit the returned object as one item, generators included
assert_type(task(produce, branch=False), Pipeline[[int], Generator[int, None, None]])
assert_type(task(produce_iter, branch=False), Pipeline[[int], Iterator[int]])
assert_type(task(aproduce, branch=False), AsyncPipeline[[int], AsyncGenerator[int, None]])
assert_type(task(aproduce_iter, branch=False), AsyncPipeline[[int], AsyncIterator[str]])
assert_type(task(asplit, branch=False), AsyncPipeline[[str], list[str]])
assert_type(task(inc, branch=False), Pipeline[[int], int])
assert_type(task(inner, branch=False), Pipeline[[int], Generator[str, None, None]])
assert_type(task(ainner, branch=False), AsyncPipeline[[int], AsyncGenerator[str, None]])

# join=True: the function reads the stream; the pipeline takes its items
assert_type(task(total, join=True), Pipeline[[int], int])
assert_type(task(running, join=True), Pipeline[[int], float])
assert_type(task(batches, join=True), Pipeline[[int], list[list[int]]])
assert_type(task(atotal, join=True), AsyncPipeline[[int], int])
assert_type(task(arunning, join=True), AsyncPipeline[[int], str])
assert_type(task(abatches, join=True), AsyncPipeline[[int], list[bytes]])
assert_type(task(total, join=True, workers=2), Pipeline[[int], int])
# join=True with branch=
assert_type(task(batches, join=True, branch=True), Pipeline[[int], list[int]])
assert_type(task(running, join=True, branch=True), Pipeline[[int], float])
assert_type(task(abatches, join=True, branch=True), AsyncPipeline[[int], bytes])
assert_type(task(arunning, join=True, branch=True), AsyncPipeline[[int], str])
assert_type(task(running, join=True, branch=False), Pipeline[[int], Generator[float, None, None]])
assert_type(
    task(arunning, join=True, branch=False), AsyncPipeline[[int], AsyncGenerator[str, None]]
)
assert_type(task(atotal, join=True, branch=False), AsyncPipeline[[int], int])

# bind=: the bound arguments come first, so the pipeline's own parameters are not known
assert_type(task.bind(), None)
assert_type(task.bind(2, key=3), tuple[tuple[Any, ...], dict[str, Any]])
assert_type(task(scale, bind=task.bind(3)), Pipeline[..., float])
assert_type(task(ato_str, bind=task.bind()), AsyncPipeline[[int], str])  # bind() is None
assert_type(task(aproduce, bind=task.bind(limit=3)), AsyncPipeline[..., int])
assert_type(task(split, bind=task.bind(1), branch=True), Pipeline[..., str])
assert_type(
    task(produce, bind=task.bind(1), branch=False), Pipeline[..., Generator[int, None, None]]
)

# branch= or join= from a variable (not a literal): the checker cannot pick the pipeline's
# type, so task(f, branch=flag) is an error; the decorator form accepts it, typed Any
flag: bool = bool()
assert_type(task(branch=flag)(inc), Any)
assert_type(task(join=flag, workers=2)(total), Any)

# --------------------------------------------------------------------------------------------
# Decorator forms: @task and @task(...)


@task
def d_inc(x: int, /) -> int:
    return x + 1


@task
async def d_ainc(x: int, /) -> int:
    return x + 1


@task
def d_produce(limit: int, /) -> Generator[int, None, None]:
    yield from range(limit)


@task
async def d_aproduce(limit: int, /) -> AsyncGenerator[int, None]:
    for i in range(limit):
        yield i


assert_type(d_inc, Pipeline[[int], int])
assert_type(d_ainc, AsyncPipeline[[int], int])
assert_type(d_produce, Pipeline[[int], int])
assert_type(d_aproduce, AsyncPipeline[[int], int])


@task()
def o_inc(x: int, /) -> int:
    return x + 1


@task(workers=3, throttle=5, ordered=True)
def o_inc3(x: int, /) -> int:
    return x + 1


@task(concurrency=20)
async def o_ainc(x: int, /) -> str:
    return str(x)


@task(daemon=True)
def o_produce(limit: int, /) -> Generator[int, None, None]:
    yield from range(limit)


@task(workers=2)
async def o_aproduce(limit: int, /) -> AsyncGenerator[int, None]:
    for i in range(limit):
        yield i


@task(branch=True)
def o_split(text: str, /) -> list[str]:
    return text.split()


@task(branch=True, workers=2)
async def o_asplit(text: str, /) -> list[str]:
    return text.split()


@task(branch=False)
def o_gen_object(limit: int, /) -> Generator[int, None, None]:
    yield from range(limit)


@task(branch=False)
async def o_agen_object(limit: int, /) -> AsyncGenerator[int, None]:
    for i in range(limit):
        yield i


@task(join=True)
def o_total(items: Iterable[int], /) -> int:
    return sum(items)


@task(join=True, workers=2)
async def o_atotal(items: AsyncIterable[int], /) -> int:
    return sum([x async for x in items])


@task(join=True)
def o_running(items: Iterator[int], /) -> Generator[float, None, None]:
    for x in items:
        yield x / 2


@task(join=True, branch=True)
def o_batches(items: Iterator[int], /) -> list[list[int]]:
    return [list(items)]


@task(join=True, branch=False)
def o_running_object(items: Iterator[int], /) -> Generator[float, None, None]:
    for x in items:
        yield x / 2


@task(bind=task.bind(3))
def o_scale(factor: int, x: int, /) -> float:
    return factor * x / 2


assert_type(o_inc, Pipeline[[int], int])
assert_type(o_inc3, Pipeline[[int], int])
assert_type(o_ainc, AsyncPipeline[[int], str])
assert_type(o_produce, Pipeline[[int], int])
assert_type(o_aproduce, AsyncPipeline[[int], int])
assert_type(o_split, Pipeline[[str], str])
assert_type(o_asplit, AsyncPipeline[[str], str])
assert_type(o_gen_object, Pipeline[[int], Generator[int, None, None]])
assert_type(o_agen_object, AsyncPipeline[[int], AsyncGenerator[int, None]])
assert_type(o_total, Pipeline[[int], int])
assert_type(o_atotal, AsyncPipeline[[int], int])
assert_type(o_running, Pipeline[[int], float])
assert_type(o_batches, Pipeline[[int], list[int]])
assert_type(o_running_object, Pipeline[[int], Generator[float, None, None]])
assert_type(o_scale, Pipeline[..., float])

# The decorator also wraps existing functions and pipelines
assert_type(task(workers=2)(ainc), AsyncPipeline[[int], int])
assert_type(task(throttle=1)(inner), Pipeline[[int], Generator[str, None, None]])
assert_type(task(join=True, branch=True)(abatches), AsyncPipeline[[int], bytes])
assert_type(
    task(branch=False, join=True)(arunning), AsyncPipeline[[int], AsyncGenerator[str, None]]
)

# --------------------------------------------------------------------------------------------
# Composition: | and .pipe; any async task makes the whole pipeline async

sync3 = task(produce) | task(inc, workers=4) | task(to_str)
assert_type(sync3, Pipeline[[int], str])
assert_type(task(produce).pipe(task(inc)).pipe(task(to_str)), Pipeline[[int], str])

mixed = task(produce) | task(ainc, concurrency=20) | task(to_str, concurrency=20)
assert_type(mixed, AsyncPipeline[[int], str])
assert_type(task(aproduce) | task(inc), AsyncPipeline[[int], int])
assert_type(task(produce).pipe(task(ato_str)), AsyncPipeline[[int], str])
assert_type(task(aproduce).pipe(task(to_str)), AsyncPipeline[[int], str])
assert_type(task(produce_iter) | task(to_str) | o_split | task(len), Pipeline[[int], int])
assert_type(d_produce | o_inc | o_total, Pipeline[[int], int])
assert_type(d_aproduce | d_inc | o_ainc, AsyncPipeline[[int], str])
assert_type(task(produce) | task(total, join=True), Pipeline[[int], int])
assert_type(task(aproduce) | task(atotal, join=True), AsyncPipeline[[int], int])
assert_type(task(produce) | task(scale, bind=task.bind(2)), Pipeline[[int], float])
assert_type(task(produce) | inner, Pipeline[[int], str])

# the next task may accept a wider type than the items (parameters are contravariant)


def halve(x: float, /) -> float:
    return x / 2


def show(x: object, /) -> str:
    return repr(x)


async def maybe(x: int | None, /) -> bool:
    return x is None


assert_type(task(produce) | task(halve), Pipeline[[int], float])
assert_type(task(produce) | task(show), Pipeline[[int], str])
assert_type(task(produce) | task(maybe), AsyncPipeline[[int], bool])
assert_type(task(split, branch=False) | task(len), Pipeline[[str], int])
assert_type(task(produce) | task(ainner, branch=True), AsyncPipeline[[int], str])

# --------------------------------------------------------------------------------------------
# Consumers: > and .consume

run_sync = task(produce) | task(inc) > consume_sum
assert_type(run_sync, Callable[[int], int])
assert_type(run_sync(10), int)
assert_type(task(produce).consume(consume_sum), Callable[[int], int])
assert_type(task(produce) | task(to_str) > consume_strs, Callable[[int], list[str]])

# a sync pipeline with an async consumer runs as an async one
assert_type(task(produce) > aconsume_sum, Callable[[int], Coroutine[Any, Any, int]])
run_async = mixed | task(len) > aconsume_sum  # len takes any Sized: str items fit
assert_type(run_async, Callable[[int], Coroutine[Any, Any, int]])
assert_type(mixed.consume(aconsume_strs), Callable[[int], Coroutine[Any, Any, None]])
assert_type(task(aproduce_iter) > aconsume_strs, Callable[[int], Coroutine[Any, Any, None]])

# --------------------------------------------------------------------------------------------
# Ordinary parameters keep their names, kinds and defaults through task, | and >


def produce_named(limit: int, *, start: int = 0) -> Iterator[int]:
    yield from range(start, limit)


def inc_named(x: int) -> int:
    return x + 1


async def aconsume_named(data: AsyncIterable[int]) -> list[int]:
    return [x async for x in data]


named = task(produce_named) | task(inc_named, workers=2)
assert_type(named(10, start=2), Generator[int, None, None])
assert_type(named(limit=10), Generator[int, None, None])
assert_type((named > consume_sum)(10, start=2), int)
run_named = named > aconsume_named
assert_type(task(inc_named)(x=1), Generator[int, None, None])
assert_type(task(ainc)(1), AsyncGenerator[int, None])

# --------------------------------------------------------------------------------------------
# Calling a pipeline: a generator, or an async generator


def calls() -> None:
    assert_type(sync3(10), Generator[str, None, None])
    assert_type(mixed(10), AsyncGenerator[str, None])
    assert_type(d_aproduce(3), AsyncGenerator[int, None])
    assert_type(o_total(1), Generator[int, None, None])
    for s in sync3(5):
        assert_type(s, str)


async def acalls() -> None:
    async for s in mixed(5):
        assert_type(s, str)
    assert_type(await run_async(10), int)
    assert_type(await (task(aproduce) > atotal)(3), int)
    assert_type(await run_named(limit=3, start=1), list[int])


# --------------------------------------------------------------------------------------------
# The options of real work (issue 8): the item types still flow through | and >


class _Conn:
    def __enter__(self) -> _Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _store(conn: _Conn, row: int, /) -> str:
    return str(row)


async def _astore(conn: _Conn, row: int, /) -> str:
    return str(row)


def _rows(conn: _Conn, n: int, /) -> Generator[int, None, None]:
    yield n


def _count(n: int, /) -> Iterator[int]:
    yield from range(n)


def _sum_rows(rows: list[int], /) -> int:
    return sum(rows)


def _on_error(item: object, exc: Exception) -> None:
    return None


def check_real_work_options() -> None:
    from pyper import Emit, Rate, gather

    assert_type(task(_store, setup=_Conn), Pipeline[[int], str])
    assert_type(task(_astore, setup=_Conn, workers=4), AsyncPipeline[[int], str])
    assert_type(task(_rows, setup=_Conn), Pipeline[[int], int])
    assert_type(task(_count) | task(_store, setup=_Conn, workers=4), Pipeline[[int], str])
    assert_type(
        task(inc, retries=3, retry_on=(ValueError, KeyError), backoff=0.5, timeout=2.0,
             on_error="skip", rate=Rate(10, per=1.0), unpack=False),
        Pipeline[[int], int],
    )
    assert_type(task(inc, on_error=_on_error, rate=5, backoff=lambda attempt: 0.1, retries=1), Pipeline[[int], int])
    assert_type(task(_sum_rows, batch=100, linger=0.5), Pipeline[[list[int]], int])
    assert_type(Emit(3).value, int)
    assert_type(task(_count) | task(gather(inc, to_str)), Pipeline[[int], tuple[Any, ...]])

    async def _aone(x: int, /) -> int:
        return x

    assert_type(task(gather(_aone, _aone)), AsyncPipeline[[int], tuple[Any, ...]])
