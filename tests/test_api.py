"""task() options and validation, branch detection, callables of every kind, composition with
``|`` and ``>``, laziness, reuse, opaque items, nested pipelines, contextvars.

Black-box: only the public API (``from pyper import task, Pipeline, AsyncPipeline``)."""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import contextvars
import functools
import gc
import inspect
import threading
import sys
import time
import types
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conftest import acollect, collect, run_async, wait_until
from pyper import AsyncPipeline, Pipeline, task

pytestmark = pytest.mark.timeout(15)


# --------------------------------------------------------------------------------------------
# Plain user functions with distinctive names (so "the message names the task" is meaningful)


def my_mapper_fn(x: int) -> int:
    return x + 1


async def my_async_mapper_fn(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


def count_up_gen(n: int):
    for i in range(n):
        yield i


async def count_up_agen(n: int):
    for i in range(n):
        await asyncio.sleep(0)
        yield i


def twice_gen(x: int):
    yield x
    yield x


async def twice_agen(x: int):
    yield x
    await asyncio.sleep(0)
    yield x


def is_async_pipeline(p: Any) -> bool:
    return isinstance(p, AsyncPipeline)


async def _aident(x: Any) -> Any:
    return x


# --------------------------------------------------------------------------------------------
# Exports and pipeline types


def test_public_names() -> None:
    import pyper

    for name in ("task", "Pipeline", "AsyncPipeline"):
        assert name in pyper.__all__
        assert getattr(pyper, name) is not None


def test_sync_task_is_pipeline_not_async() -> None:
    p = task(my_mapper_fn)
    assert isinstance(p, Pipeline)
    assert not isinstance(p, AsyncPipeline)


@pytest.mark.parametrize("fn", [my_async_mapper_fn, count_up_agen])
def test_async_task_is_async_pipeline(fn: Any) -> None:
    assert isinstance(task(fn), AsyncPipeline)


def test_any_async_task_makes_async_pipeline() -> None:
    assert not is_async_pipeline(task(count_up_gen) | task(my_mapper_fn))
    assert is_async_pipeline(task(count_up_gen) | task(my_async_mapper_fn))
    assert is_async_pipeline(task(count_up_agen) | task(my_mapper_fn))
    assert is_async_pipeline(task(count_up_gen) | task(my_async_mapper_fn) | task(my_mapper_fn))
    assert is_async_pipeline(task(count_up_gen).pipe(task(my_async_mapper_fn)))


# --------------------------------------------------------------------------------------------
# Validation at task() time


def test_workers_not_int_is_type_error_naming_task() -> None:
    with pytest.raises(TypeError, match="my_mapper_fn"):
        task(my_mapper_fn, workers="2")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [2.0, "1", [1]])
def test_workers_wrong_types(bad: Any) -> None:
    with pytest.raises(TypeError, match="my_mapper_fn"):
        task(my_mapper_fn, workers=bad)


@pytest.mark.parametrize("bad", [0, -1])
def test_workers_below_one_is_value_error(bad: int) -> None:
    with pytest.raises(ValueError, match="my_mapper_fn"):
        task(my_mapper_fn, workers=bad)


def test_concurrency_below_one_is_value_error() -> None:
    with pytest.raises(ValueError, match="my_mapper_fn"):
        task(my_mapper_fn, concurrency=0)


@pytest.mark.parametrize("bad", [42, "not callable", [my_mapper_fn]])
def test_non_callable_is_type_error(bad: Any) -> None:
    with pytest.raises(TypeError) as ei:
        task(bad)
    msg = str(ei.value)
    assert repr(bad) in msg or type(bad).__name__ in msg, msg


def test_validation_message_names_lambda_and_partial() -> None:
    with pytest.raises(ValueError, match="lambda"):
        task(lambda x: x, workers=0)
    with pytest.raises(ValueError, match="my_mapper_fn"):
        task(functools.partial(my_mapper_fn), workers=0)


def test_workers_and_concurrency_both_given_is_type_error() -> None:
    with pytest.raises(TypeError):
        task(my_mapper_fn, workers=2, concurrency=2)
    with pytest.raises(TypeError):
        task(my_mapper_fn, workers=1, concurrency=1)


@pytest.mark.timeout(10)
def test_concurrency_alias_really_runs_that_many_workers() -> None:
    barrier = threading.Barrier(3, timeout=5)

    def meet(x: int) -> int:
        if x < 3:
            barrier.wait()  # breaks (BrokenBarrierError) unless 3 calls run at once
        return x * 10

    p = task(count_up_gen) | task(meet, concurrency=3)
    assert sorted(collect(p, 6)) == [0, 10, 20, 30, 40, 50]


@pytest.mark.timeout(10)
def test_async_concurrency_alias_really_runs_that_many_workers() -> None:
    async def meet(x: int) -> int:
        meet.n += 1  # type: ignore[attr-defined]
        await asyncio.wait_for(_wait_for_count(meet, 4), 5)
        return x * 10

    meet.n = 0  # type: ignore[attr-defined]
    p = task(count_up_gen) | task(meet, concurrency=4)
    assert sorted(collect(p, 4)) == [0, 10, 20, 30]


async def _wait_for_count(fn: Any, n: int) -> None:
    while fn.n < n:
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("fn", [my_async_mapper_fn, count_up_agen])
def test_async_multiprocess_is_value_error(fn: Any) -> None:
    with pytest.raises(ValueError, match="multiprocess"):
        task(fn, multiprocess=True)


def test_sync_multiprocess_is_a_process_task() -> None:
    assert task(my_mapper_fn, multiprocess=True).tasks[0].multiprocess  # runs: test_process.py


def test_multiprocess_false_is_fine() -> None:
    assert collect(task(count_up_gen) | task(my_mapper_fn, multiprocess=False), 3) == [1, 2, 3]


@pytest.mark.parametrize("fn", [my_async_mapper_fn, count_up_agen])
def test_async_daemon_is_value_error(fn: Any) -> None:
    with pytest.raises(ValueError, match="daemon"):
        task(fn, daemon=True)


def test_sync_daemon_is_accepted_and_runs() -> None:
    p = task(count_up_gen) | task(my_mapper_fn, daemon=True, workers=2)
    assert sorted(collect(p, 5)) == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------------------------
# First-task rules: checked when the pipeline is called, before any work


@pytest.mark.parametrize("opts", [{"workers": 2}, {"concurrency": 3}, {"join": True}])
@pytest.mark.parametrize("asyncy", [False, True], ids=["sync", "async"])
def test_first_task_rules_raise_at_call_before_any_work(opts: dict[str, Any], asyncy: bool) -> None:
    calls: list[Any] = []

    def first_stage_fn(x: Any) -> Any:
        calls.append(x)
        return x

    async def first_stage_fn_async(x: Any) -> Any:
        calls.append(x)
        return x

    first = task(first_stage_fn_async if asyncy else first_stage_fn, **opts)  # building is fine
    p = first | task(my_mapper_fn)
    with pytest.raises(ValueError, match="first_stage_fn"):
        p(1)  # raised by the call itself, not at the first next()
    with pytest.raises(ValueError, match="first_stage_fn"):
        first(1)
    assert calls == []


def test_first_task_rules_do_not_apply_later_in_pipeline() -> None:
    p = task(count_up_gen) | task(my_mapper_fn, workers=3)
    assert sorted(collect(p, 4)) == [1, 2, 3, 4]


def test_first_task_single_function_called_once_with_args() -> None:
    calls: list[Any] = []

    def first(a: int, b: int = 0, *, c: int = 0) -> int:
        calls.append((a, b, c))
        return a + b + c

    p = task(first) | task(my_mapper_fn)
    assert collect(p, 1, 2, c=3) == [7]
    assert calls == [(1, 2, 3)]


def test_first_task_async_function_and_branch_true() -> None:
    async def first(n: int) -> list[int]:
        return list(range(n))

    assert collect(task(first), 3) == [[0, 1, 2]]
    assert collect(task(first, branch=True), 3) == [0, 1, 2]


# --------------------------------------------------------------------------------------------
# Branch semantics


def test_generator_function_fans_out() -> None:
    assert collect(task(count_up_gen), 4) == [0, 1, 2, 3]
    assert collect(task(count_up_gen) | task(twice_gen), 3) == [0, 0, 1, 1, 2, 2]


def test_async_generator_function_fans_out() -> None:
    assert collect(task(count_up_agen), 4) == [0, 1, 2, 3]
    assert collect(task(count_up_agen) | task(twice_agen), 3) == [0, 0, 1, 1, 2, 2]


def test_branch_false_emits_generator_object_itself() -> None:
    out = collect(task(count_up_gen, branch=False), 3)
    assert len(out) == 1
    assert inspect.isgenerator(out[0])
    assert list(out[0]) == [0, 1, 2]

    out = collect(task(count_up_gen) | task(twice_gen, branch=False), 2)
    assert len(out) == 2 and all(inspect.isgenerator(g) for g in out)
    assert [list(g) for g in out] == [[0, 0], [1, 1]]


def test_branch_false_emits_async_generator_object_itself() -> None:
    async def main() -> list[list[int]]:
        out = await acollect((task(count_up_gen) | task(twice_agen, branch=False))(2))
        assert len(out) == 2 and all(inspect.isasyncgen(g) for g in out)
        return [await acollect(g) for g in out]

    assert run_async(main()) == [[0, 0], [1, 1]]


def test_branch_true_fans_out_returned_iterables() -> None:
    def as_list(x: int) -> list[int]:
        return [x] * x

    def as_tuple(x: int) -> tuple[int, ...]:
        return (x, -x)

    def as_dict(x: int) -> dict[str, int]:
        return {f"k{x}": x}

    def as_str(x: int) -> str:
        return "ab" if x else ""

    src = task(count_up_gen)
    assert collect(src | task(as_list, branch=True), 4) == [1, 2, 2, 3, 3, 3]
    assert collect(src | task(as_tuple, branch=True), 2) == [0, 0, 1, -1]
    assert collect(src | task(as_dict, branch=True), 2) == ["k0", "k1"]
    assert collect(src | task(as_str, branch=True), 2) == ["a", "b"]
    # without branch the list is one item
    assert collect(src | task(as_list), 3) == [[], [1], [2, 2]]


def test_branch_true_async_function_returning_list_and_async_iterable() -> None:
    async def as_list(x: int) -> list[int]:
        await asyncio.sleep(0)
        return [x, x + 100]

    async def as_aiter(x: int) -> Any:
        return twice_agen(x)

    src = task(count_up_gen)
    assert collect(src | task(as_list, branch=True), 2) == [0, 100, 1, 101]
    assert collect(src | task(as_aiter, branch=True), 2) == [0, 0, 1, 1]


def test_branch_true_sync_function_returning_async_iterable_in_async_pipeline() -> None:
    def returns_aiter(x: int) -> Any:
        return twice_agen(x)

    p = task(count_up_gen) | task(returns_aiter, branch=True) | task(my_async_mapper_fn)
    assert collect(p, 2) == [1, 1, 2, 2]


@pytest.mark.parametrize("asyncy", [False, True], ids=["sync", "async"])
def test_branch_true_non_iterable_is_type_error_naming_task(asyncy: bool) -> None:
    def not_iterable_fn(x: int) -> int:
        return x

    async def not_iterable_afn(x: int) -> int:
        return x

    fn = not_iterable_afn if asyncy else not_iterable_fn
    p = task(count_up_gen) | task(fn, branch=True)
    with pytest.raises(TypeError, match=fn.__name__):
        collect(p, 3)


# Second review, issue 9: A TypeError raised by the user's own ``__iter__`` of a returned
# iterable (branch=True) was replaced by "returned X, which is not iterable", ``from None``.


def _bad_iterable(err: TypeError) -> Any:
    class BadIterable:
        def __iter__(self) -> Iterator[Any]:
            raise err

    return BadIterable()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("where", ["sync", "sync_in_async", "async", "first_sync", "first_async"])
def test_user_type_error_from_iter_reaches_the_caller(where: str) -> None:
    err = TypeError("the user's own __iter__ failed")

    def f(x: int) -> Any:
        return _bad_iterable(err)

    async def af(x: int) -> Any:
        return _bad_iterable(err)

    pipelines: dict[str, Any] = {
        "sync": lambda: task(count_up_gen) | task(f, branch=True),
        "sync_in_async": lambda: task(count_up_agen) | task(f, branch=True),
        "async": lambda: task(count_up_agen) | task(af, branch=True),
        "first_sync": lambda: task(f, branch=True) | task(lambda x: x),
        "first_async": lambda: task(af, branch=True) | task(_aident),
    }
    p = pipelines[where]()
    with pytest.raises(TypeError) as info:
        collect(p, 2)
    assert info.value is err
    assert str(info.value) == "the user's own __iter__ failed"
    assert not info.value.__suppress_context__


# detection of generator / async generator functions through wrappers


def _wraps_sync(f: Any) -> Any:
    @functools.wraps(f)
    def wrapper(*a: Any, **k: Any) -> Any:
        return f(*a, **k)

    return wrapper


class GenCallable:
    def __call__(self, x: int):
        yield x
        yield x * 10


class AsyncGenCallable:
    async def __call__(self, x: int):
        yield x
        yield x * 10


def gen_with_prefix(prefix: int, x: int):
    yield prefix
    yield x


async def agen_with_prefix(prefix: int, x: int):
    yield prefix
    yield x


def gen_x_x10(x: int):
    yield x
    yield x * 10


async def agen_x_x10(x: int):
    yield x
    yield x * 10


SYNC_GEN_FORMS = {
    "plain": gen_x_x10,
    "partial": functools.partial(gen_with_prefix, -1),
    "wraps": _wraps_sync(gen_x_x10),
    "wraps_of_wraps": _wraps_sync(_wraps_sync(gen_x_x10)),
    "callable_object": GenCallable(),
    "partial_of_callable_object": functools.partial(GenCallable()),
    "partial_of_wraps": functools.partial(_wraps_sync(gen_with_prefix), -1),
}

ASYNC_GEN_FORMS = {
    "plain": agen_x_x10,
    "partial": functools.partial(agen_with_prefix, -1),
    "wraps": _wraps_sync(agen_x_x10),
    "callable_object": AsyncGenCallable(),
    "partial_of_callable_object": functools.partial(AsyncGenCallable()),
    "partial_of_wraps": functools.partial(_wraps_sync(agen_with_prefix), -1),
}


def _expected_fanout(form: str, xs: list[int]) -> list[int]:
    out: list[int] = []
    for x in xs:
        out += [-1, x] if "partial" in form and "callable" not in form else [x, x * 10]
    return out


@pytest.mark.parametrize("form", list(SYNC_GEN_FORMS))
def test_branch_detection_sync_generator_forms(form: str) -> None:
    p = task(count_up_gen) | task(SYNC_GEN_FORMS[form])
    assert not is_async_pipeline(p)
    assert collect(p, 3) == _expected_fanout(form, [0, 1, 2])


@pytest.mark.parametrize("form", list(ASYNC_GEN_FORMS))
def test_branch_detection_async_generator_forms(form: str) -> None:
    p = task(count_up_gen) | task(ASYNC_GEN_FORMS[form])
    assert is_async_pipeline(p)
    assert collect(p, 3) == _expected_fanout(form, [0, 1, 2])


@pytest.mark.parametrize("form", list(SYNC_GEN_FORMS))
def test_branch_false_overrides_detection(form: str) -> None:
    out = collect(task(count_up_gen) | task(SYNC_GEN_FORMS[form], branch=False), 2)
    assert len(out) == 2 and all(inspect.isgenerator(g) for g in out)


def test_wraps_decorated_async_function_is_async() -> None:
    def deco(f: Any) -> Any:
        @functools.wraps(f)
        async def wrapper(*a: Any) -> Any:
            return await f(*a)

        return wrapper

    p = task(count_up_gen) | task(deco(my_async_mapper_fn))
    assert is_async_pipeline(p)
    assert collect(p, 3) == [1, 2, 3]


# --------------------------------------------------------------------------------------------
# Callables of every kind


class Adder:
    def __init__(self, k: int) -> None:
        self.k = k

    def add(self, x: int) -> int:
        return x + self.k

    def gen(self, x: int):
        yield x
        yield x + self.k

    def __call__(self, x: int) -> int:
        return x * self.k


class AsyncAdder:
    def __init__(self, k: int) -> None:
        self.k = k

    async def add(self, x: int) -> int:
        return x + self.k

    async def __call__(self, x: int) -> int:
        await asyncio.sleep(0)
        return x * self.k


def add3(a: int, b: int, c: int = 0) -> int:
    return a + b + c


@pytest.mark.parametrize(
    "fn, expected, is_async",
    [
        (lambda x: x * 2, [0, 2, 4], False),
        (abs, [0, 1, 2], False),
        (str, ["0", "1", "2"], False),
        (Adder(5).add, [5, 6, 7], False),
        (Adder(5).gen, [0, 5, 1, 6, 2, 7], False),
        (Adder(3), [0, 3, 6], False),
        (functools.partial(add3, 100), [100, 101, 102], False),
        (functools.partial(add3, c=7), None, False),  # item becomes `a`, missing b -> error
        (AsyncAdder(5).add, [5, 6, 7], True),
        (AsyncAdder(3), [0, 3, 6], True),
        (functools.partial(AsyncAdder(2)), [0, 2, 4], True),
    ],
    ids=[
        "lambda", "builtin_abs", "builtin_str", "bound_method", "bound_gen_method",
        "callable_object", "partial", "partial_missing_arg", "async_bound_method",
        "async_callable_object", "partial_async_callable_object",
    ],
)
def test_callables_of_every_kind(fn: Any, expected: list[Any] | None, is_async: bool) -> None:
    p = task(count_up_gen) | task(fn)
    assert is_async_pipeline(p) is is_async
    if expected is None:
        with pytest.raises(TypeError):
            collect(p, 3)
    else:
        assert collect(p, 3) == expected


def test_builtin_range_with_and_without_branch() -> None:
    assert collect(task(range, branch=True), 4) == [0, 1, 2, 3]
    assert collect(task(range), 3) == [range(3)]
    p = task(count_up_gen) | task(range, branch=True)
    assert collect(p, 4) == [0, 0, 1, 0, 1, 2]


def test_lambda_as_first_task() -> None:
    assert collect(task(lambda n: n * 3) | task(my_mapper_fn), 4) == [13]


# --------------------------------------------------------------------------------------------
# bind


def test_bind_none_when_empty() -> None:
    assert task.bind() is None


def test_bind_positional_before_item_and_keywords() -> None:
    def f(a: str, b: str, item: int, *, sep: str = "") -> str:
        return f"{a}{sep}{b}{sep}{item}"

    p = task(count_up_gen) | task(f, bind=task.bind("A", "B", sep="-"))
    assert collect(p, 2) == ["A-B-0", "A-B-1"]


def test_bind_on_first_task_and_none_bind() -> None:
    p = task(add3, bind=task.bind(10)) | task(my_mapper_fn, bind=task.bind())
    assert collect(p, 5) == [16]


def test_bind_keeps_generator_detection_and_async() -> None:
    p = task(count_up_gen) | task(gen_with_prefix, bind=task.bind(-7))
    assert collect(p, 2) == [-7, 0, -7, 1]
    p2 = task(count_up_gen) | task(agen_with_prefix, bind=task.bind(-7))
    assert is_async_pipeline(p2)
    assert collect(p2, 2) == [-7, 0, -7, 1]


# --------------------------------------------------------------------------------------------
# Decorator forms


def test_decorator_bare() -> None:
    @task
    def produce(n: int):
        yield from range(n)

    @task
    def inc(x: int) -> int:
        return x + 1

    assert isinstance(produce, Pipeline) and isinstance(inc, Pipeline)
    assert collect(produce | inc, 3) == [1, 2, 3]


def test_decorator_with_options() -> None:
    @task(workers=3)
    def slow_inc(x: int) -> int:
        time.sleep(0.01)
        return x + 1

    @task(branch=True)
    def listy(x: int) -> list[int]:
        return [x, x]

    @task(workers=2)
    async def ainc(x: int) -> int:
        return x + 1

    assert isinstance(ainc, AsyncPipeline)
    assert sorted(collect(task(count_up_gen) | slow_inc | listy, 3)) == [1, 1, 2, 2, 3, 3]
    assert sorted(collect(task(count_up_gen) | ainc, 3)) == [1, 2, 3]


def test_decorator_with_options_validates() -> None:
    with pytest.raises(ValueError, match="bad_deco_fn"):

        @task(workers=0)
        def bad_deco_fn(x: int) -> int:
            return x


# --------------------------------------------------------------------------------------------
# | / pipe and > / consume


def test_pipe_and_or_are_equivalent() -> None:
    a, b, c = task(count_up_gen), task(my_mapper_fn), task(twice_gen)
    assert collect(a | b | c, 3) == collect(a.pipe(b).pipe(c), 3) == [1, 1, 2, 2, 3, 3]
    assert collect(a | (b | c), 2) == [1, 1, 2, 2]


def test_pipe_non_pipeline_is_type_error() -> None:
    with pytest.raises(TypeError):
        task(count_up_gen) | my_mapper_fn  # type: ignore[operator]
    with pytest.raises(TypeError):
        task(count_up_gen).pipe(my_mapper_fn)  # type: ignore[arg-type]


def test_consume_sync() -> None:
    seen: list[Any] = []

    def total(stream: Any) -> int:
        seen.append(stream)
        return sum(stream)

    run = task(count_up_gen) | task(my_mapper_fn) > total
    assert run(4) == 10
    assert isinstance(seen[0], collections.abc.Iterator)
    run2 = (task(count_up_gen) | task(my_mapper_fn)).consume(total)
    assert run2(5) == 15


def test_consume_async() -> None:
    async def total(stream: Any) -> int:
        return sum([x async for x in stream])

    run = task(count_up_gen) | task(my_async_mapper_fn) > total
    assert run_async(run(4)) == 10
    run2 = (task(count_up_agen) | task(my_mapper_fn)).consume(total)
    assert run_async(run2(4)) == 10


def test_consume_async_callable_object() -> None:
    class Total:
        async def __call__(self, stream: Any) -> int:
            return sum([x async for x in stream])

    run = task(count_up_agen) > Total()
    assert run_async(run(5)) == 10


def test_sync_consumer_on_async_pipeline_is_type_error() -> None:
    def sync_total(stream: Any) -> int:
        return sum(stream)

    with pytest.raises(TypeError):
        task(count_up_agen) > sync_total  # type: ignore[operator]
    with pytest.raises(TypeError):
        task(count_up_agen).consume(sync_total)


def test_consume_non_callable_is_type_error() -> None:
    with pytest.raises(TypeError):
        task(count_up_gen) > 5  # type: ignore[operator]


def infinite_counter(log: list[str]):
    try:
        i = 0
        while True:
            yield i
            i += 1
    finally:
        log.append("closed")


@pytest.mark.timeout(10)
def test_consume_closes_stream_when_consumer_returns_early() -> None:
    log: list[str] = []

    def take3(stream: Any) -> list[int]:
        return [next(stream) for _ in range(3)]

    run = task(infinite_counter) | task(my_mapper_fn, throttle=2) > take3
    assert run(log) == [1, 2, 3]
    assert wait_until(lambda: log == ["closed"], 0.5), log


@pytest.mark.timeout(10)
def test_consume_async_closes_stream_when_consumer_returns_early() -> None:
    log: list[str] = []

    async def take3(stream: Any) -> list[int]:
        return [await stream.__anext__() for _ in range(3)]

    run = task(infinite_counter) | task(my_async_mapper_fn, throttle=2) > take3

    async def main() -> list[int]:
        out = await run(log)
        deadline = time.monotonic() + 0.5
        while log != ["closed"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return out

    assert run_async(main()) == [1, 2, 3]
    assert log == ["closed"]


# --------------------------------------------------------------------------------------------
# Laziness


def test_call_returns_generator_and_starts_nothing(leaks: Any) -> None:
    calls: list[Any] = []

    def produce(n: int):
        calls.append("produce")
        yield from range(n)

    def inc(x: int) -> int:
        calls.append("inc")
        return x + 1

    p = task(produce) | task(inc, workers=3)
    gen = p(3)
    assert isinstance(gen, collections.abc.Generator)
    time.sleep(0.05)
    assert calls == []
    assert leaks.new_threads() == []
    assert sorted(gen) == [1, 2, 3]
    gen2 = p(3)
    gen2.close()  # never iterated: nothing to clean up, nothing ran
    del gen2
    assert calls.count("produce") == 1


def test_async_call_returns_async_generator_and_starts_nothing(leaks: Any) -> None:
    calls: list[Any] = []

    async def produce(n: int):
        calls.append("produce")
        for i in range(n):
            yield i

    def inc(x: int) -> int:
        calls.append("inc")
        return x + 1

    p = task(produce) | task(inc, workers=3)

    async def main() -> list[int]:
        agen = p(3)
        assert isinstance(agen, collections.abc.AsyncGenerator)
        await asyncio.sleep(0.05)
        assert calls == []
        assert leaks.new_threads() == []
        assert len(asyncio.all_tasks()) == 1
        out = sorted(await acollect(agen))
        agen2 = p(3)
        await agen2.aclose()
        del agen2
        agen3 = p(3)  # dropped without ever being iterated: no warning, no error
        del agen3
        gc.collect()
        return out

    assert run_async(main()) == [1, 2, 3]
    assert calls.count("produce") == 1


def test_async_pipeline_created_without_loop_and_call_outside_loop_is_lazy() -> None:
    p = task(count_up_agen) | task(my_mapper_fn)
    agen = p(3)  # no running loop here; must not need one until iterated
    assert run_async(acollect(agen)) == [1, 2, 3]


# --------------------------------------------------------------------------------------------
# Immutability and reuse


def test_composition_does_not_mutate_operands() -> None:
    a = task(count_up_gen)
    b = task(my_mapper_fn)
    before = collect(a | b, 3)
    _ = a | task(twice_gen)
    _ = (a | b) | task(twice_gen)
    _ = a | task(my_async_mapper_fn)
    assert collect(a, 3) == [0, 1, 2]
    assert collect(a | b, 3) == before == [1, 2, 3]
    assert not is_async_pipeline(a)


@pytest.mark.parametrize("fn", [my_mapper_fn, my_async_mapper_fn])
def test_pipelines_reject_attribute_changes(fn: Any) -> None:
    p = task(count_up_gen) | task(fn)
    with pytest.raises(AttributeError):
        p.anything = 1  # type: ignore[attr-defined]
    for name in [a for a in vars(p)] if hasattr(p, "__dict__") else []:
        with pytest.raises(AttributeError):
            setattr(p, name, None)
    assert collect(p, 2) == [1, 2]


@pytest.mark.parametrize("asyncy", [False, True], ids=["sync", "async"])
def test_reuse_sequentially(asyncy: bool) -> None:
    mapper = my_async_mapper_fn if asyncy else my_mapper_fn
    p = task(count_up_gen) | task(mapper, workers=3) | task(twice_gen)
    for n in (0, 1, 5, 20, 3):
        assert sorted(collect(p, n)) == sorted([i + 1 for i in range(n) for _ in (0, 1)])


@pytest.mark.timeout(20)
def test_reuse_concurrently_from_threads() -> None:
    def slowish(x: int) -> int:
        time.sleep(0.001)
        return x * 2

    p = task(count_up_gen) | task(slowish, workers=3) | task(my_mapper_fn, workers=2)
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            results[n] = sorted(p(n))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,), name=f"runner-{n}") for n in (50, 60, 70, 80)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert not errors
    assert results == {n: [2 * i + 1 for i in range(n)] for n in (50, 60, 70, 80)}


@pytest.mark.timeout(20)
def test_reuse_concurrently_from_event_loops_in_threads() -> None:
    p = task(count_up_agen) | task(my_async_mapper_fn, workers=3) | task(my_mapper_fn, workers=2)
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            results[n] = sorted(asyncio.run(acollect(p(n))))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,), name=f"loop-{n}") for n in (30, 40, 50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert not errors
    assert results == {n: [i + 2 for i in range(n)] for n in (30, 40, 50)}


def test_reuse_concurrently_within_one_loop_and_across_loops() -> None:
    p = task(count_up_gen) | task(my_async_mapper_fn, workers=4) | task(my_mapper_fn, workers=2)

    async def main() -> list[list[int]]:
        outs = await asyncio.gather(*(acollect(p(n)) for n in (10, 20, 30)))
        return [sorted(o) for o in outs]

    expected = [[i + 2 for i in range(n)] for n in (10, 20, 30)]
    assert run_async(main()) == expected
    assert run_async(main()) == expected  # a second, different event loop


_MODULE_LEVEL_ASYNC_PIPELINE = task(count_up_agen) | task(my_async_mapper_fn, workers=2)


def test_async_pipeline_built_at_import_time_runs_in_several_loops() -> None:
    for n in (3, 4):
        assert sorted(collect(_MODULE_LEVEL_ASYNC_PIPELINE, n)) == list(range(1, n + 1))


def test_async_pipeline_built_in_one_loop_runs_in_another() -> None:
    async def build() -> Any:
        return task(count_up_agen) | task(my_async_mapper_fn, workers=2) | task(my_mapper_fn)

    p = run_async(build())
    assert sorted(collect(p, 4)) == [2, 3, 4, 5]
    assert sorted(collect(p, 2)) == [2, 3]


def test_sync_pipeline_runs_inside_a_running_event_loop() -> None:
    """A sync Pipeline iterated from a coroutine (blocking that loop, the user's choice) still
    works: the engine must not try to use the caller's running loop for a sync pipeline."""
    p = task(count_up_gen) | task(my_mapper_fn, workers=3)

    async def main() -> list[int]:
        return sorted(p(5))

    assert run_async(main()) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("asyncy", [False, True], ids=["sync", "async"])
def test_engine_keeps_no_reference_to_items_after_the_run(asyncy: bool) -> None:
    class Item:
        def __init__(self, v: int) -> None:
            self.v = v

    refs: list[weakref.ref[Item]] = []

    def produce(n: int):
        for i in range(n):
            it = Item(i)
            refs.append(weakref.ref(it))
            yield it

    def wrap(it: Item) -> Item:
        out = Item(it.v + 1)
        refs.append(weakref.ref(out))
        return out

    async def awrap(it: Item) -> Item:
        return wrap(it)

    p = task(produce) | task(awrap if asyncy else wrap, workers=3) | task(wrap, workers=2)
    assert sorted(o.v for o in collect(p, 200)) == [i + 2 for i in range(200)]
    # early exit too
    out = []
    if asyncy:

        async def first5() -> None:
            async with contextlib.aclosing(p(10_000)) as agen:
                async for o in agen:
                    out.append(o.v)
                    if len(out) == 5:
                        break

        run_async(first5())
    else:
        for o in p(10_000):
            out.append(o.v)
            if len(out) == 5:
                break
        del o  # our own last reference
    assert len(out) == 5

    def all_freed() -> bool:
        gc.collect()
        return all(r() is None for r in refs)

    assert wait_until(all_freed, 0.5), f"{sum(r() is not None for r in refs)} items still referenced"


# --------------------------------------------------------------------------------------------
# Items are opaque


def _tricky_items() -> list[Any]:
    def never_run():
        yield 1

    return [
        None,
        ValueError("an item, not an error"),
        StopIteration(),
        StopAsyncIteration(),
        GeneratorExit(),
        KeyboardInterrupt(),
        asyncio.CancelledError(),
        StopIteration,
        never_run(),
        Ellipsis,
        object(),
        0,
        "",
        [],
        (),
        False,
    ]


@pytest.mark.parametrize("mode", ["sync", "async", "mixed"])
@pytest.mark.parametrize("workers", [1, 4])
def test_items_are_opaque(mode: str, workers: int) -> None:
    items = _tricky_items()

    def produce():
        yield from items

    async def aproduce():
        for x in items:
            yield x

    def ident(x: Any) -> Any:
        return x

    async def aident(x: Any) -> Any:
        return x

    first = aproduce if mode == "async" else produce
    mid = aident if mode in ("async", "mixed") else ident
    p = task(first) | task(mid, workers=workers) | task(ident, workers=workers)
    out = collect(p)
    if workers == 1:
        assert len(out) == len(items) and all(a is b for a, b in zip(out, items))
    else:
        assert sorted(map(id, out)) == sorted(map(id, items))
    items[8].close()


def test_none_items_from_generators_and_returns() -> None:
    def nones(n: int):
        for _ in range(n):
            yield None

    def to_none(x: Any) -> None:
        return None

    assert collect(task(nones) | task(to_none, workers=3), 5) == [None] * 5
    assert collect(task(nones) | task(to_none) | task(twice_agen), 2) == [None] * 4


# --------------------------------------------------------------------------------------------
# Nested pipelines


def test_pipeline_as_task_with_branch_is_flattened() -> None:
    inner = task(my_mapper_fn) | task(twice_gen)  # inner(x) -> x+1, x+1
    outer = task(count_up_gen) | task(inner, branch=True) | task(lambda y: y * 10)
    assert not is_async_pipeline(outer)
    assert collect(outer, 3) == [10, 10, 20, 20, 30, 30]


def test_pipeline_as_task_emits_its_output_stream_per_input() -> None:
    """As in the original: one item per input, the inner run's output stream (lazy: it
    runs when the next task iterates it)."""
    inner = task(my_mapper_fn) | task(twice_gen)
    outer = task(count_up_gen) | task(inner) | task(list)
    assert collect(outer, 3) == [[1, 1], [2, 2], [3, 3]]
    assert collect(task(count_up_gen) | task(inner, branch=False) | task(list), 2) == [[1, 1], [2, 2]]


def test_async_pipeline_as_task_emits_an_async_stream_per_input() -> None:
    inner = task(my_async_mapper_fn) | task(twice_agen)

    async def gather(stream: Any) -> list[int]:
        return [x async for x in stream]

    outer = task(count_up_gen) | task(inner, workers=2) | task(gather, workers=2)
    assert sorted(collect(outer, 3)) == [[1, 1], [2, 2], [3, 3]]


def test_pipeline_as_task_with_workers() -> None:
    inner = task(my_mapper_fn) | task(twice_gen) | task(my_mapper_fn, workers=2)
    outer = task(count_up_gen) | task(inner, workers=3, branch=True)
    assert sorted(collect(outer, 5)) == sorted(x + 2 for x in range(5) for _ in (0, 1))


def test_async_pipeline_in_async_pipeline() -> None:
    inner = task(my_async_mapper_fn) | task(twice_agen)
    outer = task(count_up_agen) | task(inner, workers=2, branch=True) | task(my_mapper_fn)
    assert is_async_pipeline(outer)
    assert sorted(collect(outer, 3)) == [2, 2, 3, 3, 4, 4]


def test_sync_pipeline_in_async_pipeline() -> None:
    inner = task(my_mapper_fn) | task(twice_gen)
    outer = task(count_up_agen) | task(inner, branch=True) | task(my_async_mapper_fn)
    assert is_async_pipeline(outer)
    assert collect(outer, 2) == [2, 2, 3, 3]


def test_async_pipeline_as_task_makes_outer_async() -> None:
    inner = task(my_async_mapper_fn)
    outer = task(count_up_gen) | task(inner, branch=True)
    assert is_async_pipeline(outer)
    assert collect(outer, 3) == [1, 2, 3]


def test_nested_inner_first_task_rules_checked_at_task_time() -> None:
    with pytest.raises(ValueError, match="my_mapper_fn"):
        task(task(my_mapper_fn, workers=2))
    with pytest.raises(ValueError, match="my_mapper_fn"):
        task(task(my_mapper_fn, join=True) | task(my_mapper_fn))
    with pytest.raises(ValueError, match="my_async_mapper_fn"):
        task(task(my_async_mapper_fn, workers=2))


def test_nested_pipeline_error_reaches_outer_caller() -> None:
    err = RuntimeError("inner boom")

    def inner_fails(x: int) -> int:
        if x == 2:
            raise err
        return x

    outer = task(count_up_gen) | task(task(inner_fails) | task(twice_gen), branch=True)
    with pytest.raises(RuntimeError) as ei:
        collect(outer, 5)
    assert ei.value is err


# Second review, issue 13: A nested pipeline used as a task: per input, ONE item, the inner
# run's output stream (a generator; an async iterator for an AsyncPipeline), unless branch=True,
# which flattens the streams into the outer one. (The original Pyper's semantics.)


def _double(x: int) -> int:
    return 2 * x


def _inc(x: int) -> int:
    return x + 1


def _pair(x: int) -> Iterator[int]:
    yield x
    yield 10 * x


async def _adouble(x: int) -> int:
    return 2 * x


async def _ainc(x: int) -> int:
    return x + 1


async def _apair(x: int) -> AsyncIterator[int]:
    yield x
    yield 10 * x


def _produce_3() -> Iterator[int]:
    yield from range(3)


async def _aproduce_3() -> AsyncIterator[int]:
    for i in range(3):
        yield i


@pytest.mark.timeout(10)
@pytest.mark.parametrize("fan", [False, True], ids=["map_inner", "fan_inner"])
def test_nested_pipeline_emits_one_stream_per_input_sync(fan: bool) -> None:
    inner = (task(_pair) if fan else task(_double)) | task(_inc)
    kinds: list[bool] = []

    def consume_stream(s: Any) -> list[int]:
        kinds.append(isinstance(s, types.GeneratorType))
        return list(s)

    outer = task(_produce_3) | task(inner) | task(consume_stream)
    if fan:
        assert list(outer()) == [[1, 1], [2, 11], [3, 21]]
    else:
        assert list(outer()) == [[1], [3], [5]]
    assert kinds == [True, True, True], "each item should be the inner run's output stream"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("fan", [False, True], ids=["map_inner", "fan_inner"])
def test_nested_pipeline_with_branch_is_flattened_sync(fan: bool) -> None:
    inner = (task(_pair) if fan else task(_double)) | task(_inc)
    outer = task(_produce_3) | task(inner, branch=True) | task(lambda x: x)
    assert list(outer()) == ([1, 1, 2, 11, 3, 21] if fan else [1, 3, 5])


@pytest.mark.timeout(10)
@pytest.mark.parametrize("fan", [False, True], ids=["map_inner", "fan_inner"])
def test_nested_pipeline_emits_one_stream_per_input_async(fan: bool) -> None:
    inner = (task(_apair) if fan else task(_adouble)) | task(_ainc)
    assert isinstance(inner, AsyncPipeline)
    kinds: list[bool] = []

    async def consume_stream(s: Any) -> list[int]:
        kinds.append(hasattr(s, "__anext__"))
        return [x async for x in s]

    outer = task(_aproduce_3) | task(inner) | task(consume_stream)
    if fan:
        assert collect(outer) == [[1, 1], [2, 11], [3, 21]]
    else:
        assert collect(outer) == [[1], [3], [5]]
    assert kinds == [True, True, True], "each item should be the inner run's output stream"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("fan", [False, True], ids=["map_inner", "fan_inner"])
def test_nested_pipeline_with_branch_is_flattened_async(fan: bool) -> None:
    inner = (task(_apair) if fan else task(_adouble)) | task(_ainc)
    outer = task(_aproduce_3) | task(inner, branch=True) | task(_aident)
    assert collect(outer) == ([1, 1, 2, 11, 3, 21] if fan else [1, 3, 5])


# --------------------------------------------------------------------------------------------
# contextvars

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def test_sync_tasks_see_callers_contextvars() -> None:
    def produce(n: int):
        for i in range(n):
            yield (i, request_id.get())

    def tag(item: tuple[int, str]) -> tuple[int, str]:
        request_id.set("changed-in-task")  # must not leak back to the caller
        return item

    def reader(x: Any) -> str:
        return request_id.get()

    token = request_id.set("req-42")
    try:
        p = task(produce) | task(reader, workers=3)
        assert collect(p, 4) == ["req-42"] * 4
        p2 = task(produce) | task(tag, workers=2) | task(reader)
        assert collect(p2, 2) == ["req-42"] * 2  # each call sees the caller's context
        assert request_id.get() == "req-42"
    finally:
        request_id.reset(token)


def test_sync_and_async_tasks_in_async_pipeline_see_contextvars() -> None:
    def sync_read(x: Any) -> str:
        return request_id.get()

    async def async_read(x: Any) -> tuple[str, str]:
        return (x, request_id.get())

    def produce(n: int):
        for _ in range(n):
            yield request_id.get()

    async def main() -> list[Any]:
        request_id.set("loop-ctx")
        p = task(produce) | task(sync_read, workers=2) | task(async_read, workers=2)
        return await acollect(p(3))

    assert run_async(main()) == [("loop-ctx", "loop-ctx")] * 3


# Second review, issue 8: The first task's contextvar changes leaked into the caller when it ran
# inline (a non-generator first task, or a one-task pipeline); every other task runs in a copy.

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("review_bugs_var", default="caller's")


def _sets_var(n: int) -> int:
    VAR.set("first task's")
    return n


async def _asets_var(n: int) -> int:
    VAR.set("first task's")
    return n


@pytest.mark.timeout(10)
@pytest.mark.parametrize("shape", ["one_task", "two_tasks"])
def test_inline_first_task_context_changes_stay_its_own_sync(shape: str) -> None:
    p: Pipeline[[int], Any] = task(_sets_var)
    if shape == "two_tasks":
        p = p | task(lambda x: x + 1)
    token = VAR.set("caller's")
    try:
        assert list(p(1)) == ([1] if shape == "one_task" else [2])
        assert VAR.get() == "caller's"
    finally:
        VAR.reset(token)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("shape", ["one_task", "two_tasks", "sync_first"])
def test_inline_first_task_context_changes_stay_its_own_async(shape: str) -> None:
    p: Any
    if shape == "one_task":
        p, expected = task(_asets_var), [1]
    elif shape == "two_tasks":
        p, expected = task(_asets_var) | task(lambda x: x + 1), [2]
    else:
        p, expected = task(_sets_var) | task(_aident), [1]
    assert isinstance(p, AsyncPipeline)

    async def main() -> tuple[list[Any], str]:
        VAR.set("caller's")
        out = await acollect(p(1))
        return out, VAR.get()

    assert run_async(main()) == (expected, "caller's")


# A pipeline called once whose tasks each make one output, with no per-call option, runs
# its calls in the caller, one after another (nothing could overlap); every other shape
# starts its stages. Both give the same outputs, contexts and error notes.


def _chain_values(shape: str) -> tuple[Pipeline[[int], Any], bool]:
    """A three-task pipeline of the given shape, and whether its calls run in the caller."""
    def first(n: int) -> tuple[int, str, int]:
        VAR.set("first task's")
        return (n, VAR.get(), threading.get_ident())

    def second(item: tuple[int, str, int]) -> tuple[int, str, int, str, int]:
        VAR.set("second task's")
        return (*item, VAR.get(), threading.get_ident())

    def third(item: tuple[Any, ...]) -> tuple[Any, ...]:
        return (*item, VAR.get(), threading.get_ident())

    if shape == "chain":
        return task(first) | task(second, workers=3) | task(third, throttle=2), True
    if shape == "daemon":
        return task(first) | task(second, daemon=True) | task(third), False
    if shape == "option":
        return task(first) | task(second, retries=1) | task(third), False
    return task(first) | task(second, branch=True) | task(third), False  # "branch": a stream


@pytest.mark.timeout(10)
@pytest.mark.parametrize("shape", ["chain", "daemon", "option"])
def test_a_one_item_chain_runs_in_the_caller_with_the_contexts_of_a_run(shape: str) -> None:
    p, in_caller = _chain_values(shape)
    me = threading.get_ident()
    token = VAR.set("caller's")
    try:
        [(n, first_var, first_thread, second_var, second_thread, third_var, third_thread)] = list(p(7))
        assert VAR.get() == "caller's"
    finally:
        VAR.reset(token)
    # each task's call sees the caller's context, and its changes stay its own
    assert (n, first_var, second_var, third_var) == (7, "first task's", "second task's", "caller's")
    assert first_thread == me  # the first task runs inline in every shape
    assert (second_thread == me and third_thread == me) is in_caller
    if not in_caller:
        assert second_thread != me and third_thread != me


@pytest.mark.timeout(10)
def test_a_one_item_chain_under_observe_starts_its_stages() -> None:
    from pyper import observe

    def dbl(x: int) -> int:
        return 2 * x

    p = task(lambda x: x + 1) | task(dbl)
    with observe() as seen:
        assert list(p(1)) == [4]
    [run] = seen.runs
    last = run.stages[-1]
    assert (last.name.endswith("dbl"), last.items_in, last.items_out) == (True, 1, 1)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_one_item_chain_error_names_its_task_and_item(kind: str) -> None:
    def inc(x: int) -> int:
        return x + 1

    def boom(x: int) -> int:
        raise ValueError(f"bad {x}")

    async def ainc(x: int) -> int:
        return x + 1

    async def aboom(x: int) -> int:
        raise ValueError(f"bad {x}")

    if kind == "sync":
        with pytest.raises(ValueError, match="bad 2") as ei:
            list((task(inc) | task(boom) | task(inc))(1))
    else:
        with pytest.raises(ValueError, match="bad 2") as ei:
            run_async(acollect((task(ainc) | task(aboom) | task(ainc))(1)))
    name = "boom" if kind == "sync" else "aboom"
    [note] = ei.value.__notes__  # as a worker's error is noted
    assert note.startswith("pyper: raised in task '") and note.endswith(f"{name}' on item 2")


@pytest.mark.timeout(10)
def test_a_one_item_async_chain_runs_its_coroutines_in_the_callers_task() -> None:
    async def ainc(x: int) -> tuple[int, object]:
        await asyncio.sleep(0)
        return x + 1, asyncio.current_task()

    async def adbl(item: tuple[int, object]) -> tuple[int, object, object]:
        await asyncio.sleep(0)
        return 2 * item[0], item[1], asyncio.current_task()

    async def main() -> tuple[list[Any], object]:
        return await acollect((task(ainc) | task(adbl))(1)), asyncio.current_task()

    [(value, first, second)], me = run_async(main())
    assert (value, first, second) == (4, me, me)


# --------------------------------------------------------------------------------------------
# Event loops other than asyncio


@pytest.mark.timeout(10)
def test_async_pipeline_under_trio_says_it_needs_asyncio() -> None:
    import trio  # a test dependency (pyproject's "test" extra): never skipped

    async def ainc(x: int) -> int:
        return x + 1

    async def main() -> None:
        for p in (task(ainc), task(ainc) | task(ainc), task(ainc) | task(ainc, branch=True)):
            with pytest.raises(RuntimeError, match="asyncio") as ei:
                async for _ in p(1):
                    pass
            assert "trio" in str(ei.value)

    trio.run(main)


def test_an_unknown_option_names_the_task_and_the_closest_valid_one() -> None:
    def fetch(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"task '\S*fetch': unknown option 'worker' \(did you mean 'workers'\?\); the options are workers, concurrency"):
        task(fetch, worker=2)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"task '\S*fetch': unknown options 'throtle' \(did you mean 'throttle'\?\), 'colour';"):
        task(fetch, throtle=2, colour=1)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"task\(\): unknown option 'retires' \(did you mean 'retries'\?\); the options are"):
        task(retires=3)  # type: ignore[call-overload]


def _ray_installed(monkeypatch: pytest.MonkeyPatch, installed: bool) -> None:
    """Pretend Ray is installed or not, as ``task(executor="ray")`` looks for it (without
    importing it): these tests run with and without the ray extra."""
    import importlib.machinery
    import importlib.util

    find_spec = importlib.util.find_spec
    fake = importlib.machinery.ModuleSpec("ray", None) if installed else None
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: fake if name == "ray" else find_spec(name, *a, **k))


def test_executor_and_ray_options_are_checked_at_task_time(monkeypatch: pytest.MonkeyPatch) -> None:
    def embed(x: int) -> int:
        return x

    async def aembed(x: int) -> int:
        return x

    _ray_installed(monkeypatch, True)
    ray_task = task(embed, executor="ray", ray_options={"num_cpus": 0.5}).tasks[0]
    assert (ray_task.executor, ray_task.executor_options) == ("ray", (("num_cpus", 0.5),))
    assert task(abs, executor="process").tasks[0].multiprocess
    assert task(abs, executor="process").tasks[0].executor == "process"
    assert task(embed, executor="thread").tasks[0].executor_options == ()
    assert task(embed).tasks[0].executor == "thread" and task(aembed).tasks[0].executor == "asyncio"
    assert task(aembed, executor="asyncio").tasks[0].executor == "asyncio"
    with pytest.raises(ValueError, match=r"task '\S*embed': executor must be 'thread', 'asyncio', 'process', 'ray'"):
        task(embed, executor="gpu")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"task '\S*embed': executor must be .* or a concurrent.futures.Executor instance"):
        task(embed, executor=object())  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"task '\S*embed': multiprocess=True .* executor='ray' was given too"):
        task(embed, executor="ray", multiprocess=True)
    with pytest.raises(ValueError, match=r"ray_options= applies with executor='ray' only"):
        task(embed, ray_options={"num_cpus": 1})
    with pytest.raises(ValueError, match=r"ray_options 'max_retries' not accepted \(use retries=\); it takes"):
        task(embed, executor="ray", ray_options={"max_retries": 3})
    with pytest.raises(TypeError, match=r"ray_options must be a dict"):
        task(embed, executor="ray", ray_options=[("num_cpus", 1)])  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"task '\S*aembed': executor='ray' runs synchronous functions"):
        task(aembed, executor="ray")
    with pytest.raises(ValueError, match=r"task '\S*embed': executor='asyncio' runs async functions"):
        task(embed, executor="asyncio")
    with pytest.raises(ValueError, match=r"task '\S*aembed': executor='thread' runs synchronous functions"):
        task(aembed, executor="thread")
    assert task(embed, executor="ray", timeout=1.0).tasks[0].policy.timeout == 1.0  # no ray import


def test_a_ray_stage_without_ray_installed_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """At task() time, not when the run starts, and naming the task and the install command."""
    def embed(x: int) -> int:
        return x

    _ray_installed(monkeypatch, False)
    with pytest.raises(ModuleNotFoundError, match=r"task '\S*embed': executor='ray' needs ray, which is "
                                                  r"not installed here: pip install 'python-pyper\[ray\]'"):
        task(embed, executor="ray", workers=4)
    assert "ray" not in sys.modules


def _callables() -> list[object]:
    def gen(x: int) -> Any:
        yield x

    async def coro(x: int) -> int:
        return x

    async def agen(x: int) -> Any:
        yield x

    def plain(x: int) -> int:
        return x

    class Holder:
        def gen(self, x: int) -> Any:
            yield x

        async def coro(self, x: int) -> int:
            return x

    class AsyncCallable:
        async def __call__(self, x: int) -> int:
            return x

    class GenCallable:
        def __call__(self, x: int) -> Any:
            yield x

    @functools.wraps(coro)
    def wrapped(x: int) -> Any:
        return coro(x)

    found: list[object] = [gen, coro, agen, plain, Holder().gen, Holder().coro, AsyncCallable(),
                           GenCallable(), wrapped, len, int, lambda x: x, str.upper]
    found += [functools.partial(f, 1) for f in (gen, coro, agen, plain, Holder().coro)]
    if sys.version_info >= (3, 12):
        def marked(x: int) -> Any:
            return coro(x)

        found.append(inspect.markcoroutinefunction(marked))
    return found


@pytest.mark.parametrize("fn", _callables(), ids=lambda f: getattr(f, "__qualname__", type(f).__name__))
def test_classify_agrees_with_inspect(fn: Any) -> None:
    """pyper reads code flags instead of importing inspect; the answers must be inspect's."""
    from pyper._spec import _unwrap, classify

    target = _unwrap(fn)
    if not isinstance(target, type) and not inspect.isroutine(target):
        target = _unwrap(type(target).__call__)
    if inspect.isasyncgenfunction(target):
        expected = ("agen", True)
    elif inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(fn):
        expected = ("coro", False)
    else:
        expected = ("sync", inspect.isgeneratorfunction(target))
    assert classify(fn) == expected
