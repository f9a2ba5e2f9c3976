"""Outputs in full against a plain-Python oracle: map, branch, join, and random pipelines that
mix them with throttles and ordered stages (``throttle=`` and ``ordered=`` on their own:
``test_bounds.py``).

Parametrised over sync / async / mixed functions and 1 / 4 workers.  With one worker on every
stage, or ``ordered=True`` on every multi-worker stage, order must equal the oracle's exactly;
otherwise the outputs are compared sorted (as multisets)."""

from __future__ import annotations

import asyncio
import collections.abc
import threading
import time
from collections import Counter
from typing import Any

import pytest

try:  # hypothesis is optional: without it the property test is skipped
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    st = None

from conftest import acollect, collect, is_async, make_branch, make_map, make_source, run_async, time_limit
from pyper import AsyncPipeline, task

pytestmark = pytest.mark.timeout(20)

MODES = ["sync", "async", "mixed"]


def inc(x: int) -> int:
    return x + 1


def dbl(x: int) -> int:
    return 2 * x


def fan(x: int) -> list[int]:
    """0, 1 or 2 outputs per input: filters and fans out."""
    return [x * 10 + k for k in range(x % 3)]


def check(out: list[Any], expected: list[Any], exact_order: bool) -> None:
    if exact_order:
        assert out == expected
    else:
        assert sorted(out) == sorted(expected)
        assert len(out) == len(expected)


# --------------------------------------------------------------------------------------------
# map and branch shapes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("n", [0, 1, 7, 300])
def test_map_chain(mode: str, workers: int, n: int) -> None:
    p = (
        task(make_source(is_async(mode, 0)))
        | task(make_map(inc, is_async(mode, 1)), workers=workers)
        | task(make_map(dbl, is_async(mode, 2)), workers=workers)
        | task(make_map(str, is_async(mode, 3)))
    )
    assert isinstance(p, AsyncPipeline) is (mode != "sync")
    expected = [str(2 * (i + 1)) for i in range(n)]
    out = collect(p, n)
    check(out, expected, workers == 1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("workers", [1, 4])
def test_branch_filter_and_fanout(mode: str, workers: int) -> None:
    n = 200
    p = (
        task(make_source(is_async(mode, 0)))
        | task(make_branch(fan, is_async(mode, 1)), workers=workers)
        | task(make_map(inc, is_async(mode, 2)), workers=workers)
        | task(make_branch(lambda x: [x, -x], is_async(mode, 3)), workers=workers)
    )
    expected = [z for x in range(n) for y in fan(x) for z in (y + 1, -(y + 1))]
    check(collect(p, n), expected, workers == 1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("workers", [1, 4])
def test_branch_true_lists(mode: str, workers: int) -> None:
    n = 100
    p = (
        task(make_source(is_async(mode, 0)))
        | task(make_map(fan, is_async(mode, 1)), workers=workers, branch=True)
        | task(make_map(dbl, is_async(mode, 2)), workers=workers)
    )
    expected = [2 * y for x in range(n) for y in fan(x)]
    check(collect(p, n), expected, workers == 1)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_single_task_pipelines(mode: str) -> None:
    asyncy = mode == "async"
    assert collect(task(make_source(asyncy)), 5) == [0, 1, 2, 3, 4]
    assert collect(task(make_map(inc, asyncy)), 5) == [6]
    assert collect(task(make_map(fan, asyncy), branch=True), 5) == [50, 51]
    assert collect(task(make_map(fan, asyncy), branch=True), 3) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", MODES)
def test_many_items_none_lost_or_duplicated(mode: str) -> None:
    n = 8_000
    p = (
        task(make_source(is_async(mode, 0)))
        | task(make_map(inc, is_async(mode, 1)), workers=4)
        | task(make_branch(lambda x: [x, x], is_async(mode, 2)), workers=3, throttle=5)
        | task(make_map(dbl, is_async(mode, 3)), workers=2)
    )
    out = collect(p, n)
    assert Counter(out) == Counter(2 * (i + 1) for i in range(n) for _ in (0, 1))


@pytest.mark.parametrize("mode", MODES)
def test_workers_one_keeps_order_with_varying_delays(mode: str) -> None:
    def delay_s(x: int) -> float:
        return ((x * 7) % 5) * 0.001

    def slow_inc_sync(x: int) -> int:
        time.sleep(delay_s(x))
        return x + 1

    async def slow_inc_async(x: int) -> int:
        await asyncio.sleep(delay_s(x))
        return x + 1

    def slow_inc(pos: int) -> Any:
        return slow_inc_async if is_async(mode, pos) else slow_inc_sync

    n = 60
    p = (
        task(make_source(is_async(mode, 0)))
        | task(slow_inc(1))
        | task(make_branch(lambda x: [x, x * 100], is_async(mode, 2)))
        | task(slow_inc(3), throttle=2)
    )
    expected = [z + 1 for x in range(n) for z in (x + 1, (x + 1) * 100)]
    assert collect(p, n) == expected


# --------------------------------------------------------------------------------------------
# join


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("n", [0, 3, 100])
def test_join_called_once_per_worker_each_item_once(mode: str, workers: int, n: int) -> None:
    received: list[list[int]] = []
    lock = threading.Lock()

    def sync_join(it: Any) -> int:
        assert isinstance(it, collections.abc.Iterator)
        assert not hasattr(it, "__anext__")
        got = []
        for x in it:
            got.append(x)
        with lock:
            received.append(got)
        return sum(got)

    async def async_join(ait: Any) -> int:
        assert isinstance(ait, collections.abc.AsyncIterator)
        got = []
        async for x in ait:
            got.append(x)
        received.append(got)
        return sum(got)

    join_fn = async_join if is_async(mode, 2) else sync_join
    p = (
        task(make_source(is_async(mode, 0)))
        | task(make_map(inc, is_async(mode, 1)), workers=2)
        | task(join_fn, join=True, workers=workers)
    )
    out = collect(p, n)
    assert len(received) == workers  # called once per worker, even with nothing to read
    assert sorted(x for got in received for x in got) == [i + 1 for i in range(n)]
    assert sorted(out) == sorted(sum(got) for got in received)
    assert sum(out) == sum(i + 1 for i in range(n))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("workers", [1, 3])
def test_join_generator_fans_out(mode: str, workers: int) -> None:
    def sync_join(it: Any) -> Any:
        for x in it:
            yield x
            yield -x

    async def async_join(ait: Any) -> Any:
        async for x in ait:
            yield x
            yield -x

    join_fn = async_join if is_async(mode, 1) else sync_join
    p = task(make_source(is_async(mode, 0))) | task(join_fn, join=True, workers=workers)
    p = p | task(make_map(inc, is_async(mode, 2)))
    expected = [y + 1 for x in range(50) for y in (x, -x)]
    check(collect(p, 50), expected, workers == 1)


@pytest.mark.parametrize("workers", [1, 2])
def test_sync_join_generator_in_async_pipeline(workers: int) -> None:
    def sync_join(it: Any) -> Any:
        for x in it:
            yield x
            yield -x

    p = task(make_source(True)) | task(sync_join, join=True, workers=workers) | task(make_map(inc, True))
    expected = [y + 1 for x in range(30) for y in (x, -x)]
    check(collect(p, 30), expected, workers == 1)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_join_stream_is_split_between_workers(mode: str) -> None:
    """Each item reaches exactly one worker, and with slow consumption more than one worker gets
    work (the stream is split, not handed wholesale to the first reader)."""
    received: list[list[int]] = []

    def sync_join(it: Any) -> int:
        got = []
        for x in it:
            time.sleep(0.005)
            got.append(x)
        received.append(got)
        return len(got)

    async def async_join(ait: Any) -> int:
        got = []
        async for x in ait:
            await asyncio.sleep(0.005)
            got.append(x)
        received.append(got)
        return len(got)

    join_fn = async_join if mode == "async" else sync_join
    p = task(make_source(False)) | task(join_fn, join=True, workers=4)
    out = collect(p, 80)
    assert sum(out) == 80 and len(out) == 4
    assert sorted(x for got in received for x in got) == list(range(80))
    assert sum(1 for got in received if got) >= 2, [len(g) for g in received]


def test_sync_join_in_async_pipeline_gets_plain_iterator_on_a_thread() -> None:
    seen: dict[str, Any] = {}

    def sync_join(it: Any) -> int:
        seen["type"] = type(it)
        seen["is_iter"] = isinstance(it, collections.abc.Iterator)
        seen["is_aiter"] = hasattr(it, "__anext__")
        seen["thread"] = threading.get_ident()
        return sum(it)

    async def main() -> list[int]:
        seen["loop_thread"] = threading.get_ident()
        p = task(make_source(True)) | task(make_map(inc, True)) | task(sync_join, join=True)
        return await acollect(p(10))

    assert run_async(main()) == [55]
    assert seen["is_iter"] and not seen["is_aiter"]
    assert seen["thread"] != seen["loop_thread"]


# --------------------------------------------------------------------------------------------
# Small shapes, repeated: races show up as hangs or lost items


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "source_async, stages",
    [
        # found by the property test: hung about one run in three
        (False, [("dup", False, 2, 0, False), ("dup", False, 2, 1, False)]),
        (True, [("dup", False, 4, 3, False), ("dup", False, 3, 1, False)]),
        (False, [("inc", False, 4, 1, False), ("fan", False, 3, 1, False), ("dbl", True, 2, 1, False)]),
        (True, [("dup", True, 3, 1, False), ("listfan", False, 2, 1, True)]),
    ],
)
def test_small_shapes_repeated(source_async: bool, stages: list[tuple[str, bool, int, int, bool]]) -> None:
    for inputs in ([38], [], list(range(7)), [5, 5, 5]) * 5:
        check_shape(inputs, stages, source_async)


def check_shape(inputs: list[int], stages: list[tuple[str, bool, int, int, bool]], async_source: bool) -> None:
    def source() -> Any:
        yield from inputs

    async def asource() -> Any:
        for x in inputs:
            yield x

    p = task(asource if async_source else source)
    for kind, asyncy, workers, throttle, ordered in stages:
        p = p | build_stage(kind, asyncy, workers, throttle, ordered)

    expected = list(inputs)
    for kind, *_ in stages:
        expected = [y for x in expected for y in oracle_stage(kind, x)]
    exact = all(workers == 1 or ordered for _, _, workers, _, ordered in stages)
    with time_limit(3):
        out = collect(p)
    check(out, expected, exact)


# --------------------------------------------------------------------------------------------
# Property test against the oracle

STAGE_KINDS = ["inc", "dbl", "fan", "dup", "listfan"]


def oracle_stage(kind: str, x: int) -> list[int]:
    if kind == "inc":
        return [x + 1]
    if kind == "dbl":
        return [2 * x]
    if kind == "fan":
        return fan(x)
    if kind == "dup":
        return [x, x]
    if kind == "listfan":
        return [x] * (x % 2)
    raise AssertionError(kind)


def build_stage(kind: str, asyncy: bool, workers: int, throttle: int, ordered: bool) -> Any:
    opts: dict[str, Any] = {"workers": workers, "throttle": throttle, "ordered": ordered}
    if kind in ("inc", "dbl"):
        return task(make_map(inc if kind == "inc" else dbl, asyncy), **opts)
    if kind in ("fan", "dup"):
        return task(make_branch(lambda x, k=kind: oracle_stage(k, x), asyncy), **opts)
    return task(make_map(lambda x: oracle_stage("listfan", x), asyncy), branch=True, **opts)


if st is None:

    @pytest.mark.skip(reason="hypothesis is not installed (pip install hypothesis)")
    def test_property_matches_oracle() -> None:
        pass

else:
    stage_st = st.tuples(
        st.sampled_from(STAGE_KINDS),
        st.booleans(),  # async
        st.integers(1, 4),  # workers
        st.integers(0, 3),  # throttle
        st.booleans(),  # ordered
    )

    @pytest.mark.timeout(60)
    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        # no shrinking: a hanging example costs its whole time limit on every shrink step
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        inputs=st.lists(st.integers(-5, 50), max_size=40),
        stages=st.lists(stage_st, min_size=1, max_size=4),
        async_source=st.booleans(),
    )
    def test_property_matches_oracle(
        inputs: list[int], stages: list[tuple[str, bool, int, int, bool]], async_source: bool
    ) -> None:
        check_shape(inputs, stages, async_source)
