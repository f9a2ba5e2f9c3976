"""Outputs in full against a plain-Python oracle: map, branch, join, and random pipelines that
mix them with throttles and ordered stages (``throttle=`` and ``ordered=`` on their own:
``test_bounds.py``).

Parametrised over sync / async / mixed functions and 1 / 4 workers.  With one worker on every
stage, or ``ordered=True`` on every multi-worker stage, order must equal the oracle's exactly;
otherwise the outputs are compared sorted (as multisets)."""

from __future__ import annotations

import asyncio
import collections.abc
import gc
import random
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

from conftest import (
    InFlight,
    Leaks,
    LoopErrors,
    acollect,
    collect,
    is_async,
    make_branch,
    make_map,
    make_source,
    run_async,
    time_limit,
    wait_no_other_tasks,
)
from pyper import AsyncPipeline, task

pytestmark = pytest.mark.timeout(20)

MODES = ["sync", "async", "mixed"]
SYNC_ASYNC = ["sync", "async"]


class Boom(Exception):
    pass


async def _aident(x: Any) -> Any:
    return x


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


# First review: Join workers split one stream: a worker returning early dropped the items it had
# taken into its batch but not read, instead of leaving them to its sibling.


def _joins_one_returning_early(early_after: int) -> tuple[Any, Any]:
    """Sync and async join functions: the first worker to read ``early_after`` items returns
    at once; every other worker reads to the end."""
    lock = threading.Lock()
    state = {"early": False}

    def first() -> bool:
        with lock:
            is_first, state["early"] = not state["early"], True
            return is_first

    def j(items: Any) -> list[int]:
        seen = []
        for x in items:
            seen.append(x)
            if len(seen) == early_after and first():
                break
        return seen

    async def aj(items: Any) -> list[int]:
        seen = []
        async for x in items:
            seen.append(x)
            if len(seen) == early_after and first():
                break
        return seen

    return j, aj


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", SYNC_ASYNC)
def test_join_worker_returning_early_drops_no_item(kind: str) -> None:
    n, early_after = 2000, 300

    def src() -> Any:
        yield from range(n)

    async def asrc() -> Any:
        for i in range(n):
            yield i

    for _ in range(5):
        j, aj = _joins_one_returning_early(early_after)
        if kind == "sync":
            p = task(src) | task(lambda x: x) | task(j, join=True, workers=2)
        else:
            p = task(asrc) | task(_aident) | task(aj, join=True, workers=2)
        parts = collect(p)
        assert len(parts) == 2
        assert early_after in map(len, parts)
        got = sorted(x for part in parts for x in part)
        missing = sorted(set(range(n)) - set(got))
        assert not missing, f"{len(missing)} items reached no join worker: {missing[:10]}..."
        assert got == list(range(n))  # each item exactly once


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
# Fuzz: random small pipelines (map / branch / join / filter stages; sync, async or mixed; 1-5
# workers; throttles; ordered; an error anywhere, or a break) against a plain-Python oracle.
# Checks the outputs (exactly when order is promised), that the original error object is
# raised, the throttle bound on every throttled stage, and that nothing is left running.

FUZZ_TRIALS = 200  # per mode


def _oracle(kind: str, x: int) -> list[int]:
    if kind == "map":
        return [x * 2 + 1]
    if kind == "branch":
        return [x * 3, x * 3 + 1]
    if kind == "join":
        return [x]
    assert kind == "filt"
    return [x] if x % 3 else []


class _Trial:
    """One random pipeline, its oracle and its checks (from the reviewer's fuzz.py)."""

    def __init__(self, seed: int, mode: str) -> None:
        rng = random.Random(seed)
        self.jitter = random.Random(seed)  # sleeps inside the tasks (interleaving varies anyway)
        self.specs = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(["map", "map", "branch", "join", "filt"])
            asyncy = {"sync": False, "async": True, "mixed": rng.random() < 0.5}[mode]
            workers = rng.randint(1, 5)
            throttle = rng.choice([0, 0, 1, 2, 3, 5])
            ordered = kind != "join" and rng.random() < 0.4
            self.specs.append((kind, asyncy, workers, throttle, ordered))
        self.n = n = rng.choice([0, 1, 5, 30, 100])
        self.src_async = mode == "async" or (mode == "mixed" and rng.random() < 0.5)
        self.sleeps = rng.random() < 0.3
        self.flights = [InFlight() for _ in range(len(self.specs) + 1)]
        expected = list(range(n))
        inputs = []
        for kind, *_ in self.specs:
            inputs.append(expected)
            expected = [y for x in expected for y in _oracle(kind, x)]
        self.expected = expected
        self.err: tuple[int, int, Boom] | None = None
        if rng.random() < 0.25 and n:
            where = rng.randint(0, len(self.specs))  # 0: the source
            if where == 0:
                self.err = (0, rng.randrange(n), Boom("source"))
            elif inputs[where - 1]:
                self.err = (where, rng.choice(inputs[where - 1]), Boom(f"stage {where}"))
        self.brk: int | None = None
        if self.err is None and rng.random() < 0.25 and expected:
            self.brk = rng.randrange(len(expected))
        self.exact = all(w == 1 or o for (_, _, w, _, o) in self.specs)
        self.loop_errors = LoopErrors()
        self.desc = {
            "seed": seed, "mode": mode, "specs": self.specs, "n": n,
            "src_async": self.src_async, "err": self.err and self.err[:2], "brk": self.brk,
        }  # fmt: skip

    def maybe_raise(self, idx: int, x: int) -> None:
        if self.err is not None and self.err[0] == idx and self.err[1] == x:
            raise self.err[2]

    def pause(self) -> None:
        if self.sleeps and self.jitter.random() < 0.3:
            time.sleep(self.jitter.random() * 0.001)

    async def apause(self) -> None:
        if self.sleeps and self.jitter.random() < 0.3:
            await asyncio.sleep(self.jitter.random() * 0.001)
        else:
            await asyncio.sleep(0)

    def stage(self, idx: int) -> Any:
        kind, asyncy, workers, throttle, ordered = self.specs[idx - 1]
        mine, up = self.flights[idx], self.flights[idx - 1]
        if kind == "map":
            if asyncy:

                async def amap(x: int) -> int:
                    up.consume()
                    await self.apause()
                    self.maybe_raise(idx, x)
                    mine.produce()
                    return x * 2 + 1

                return task(amap, workers=workers, throttle=throttle, ordered=ordered)

            def smap(x: int) -> int:
                up.consume()
                self.pause()
                self.maybe_raise(idx, x)
                mine.produce()
                return x * 2 + 1

            return task(smap, workers=workers, throttle=throttle, ordered=ordered)
        if kind in ("branch", "filt"):
            if asyncy:

                async def abranch(x: int) -> Any:
                    up.consume()
                    self.maybe_raise(idx, x)
                    for y in _oracle(kind, x):
                        await self.apause()
                        mine.produce()
                        yield y

                return task(abranch, workers=workers, throttle=throttle, ordered=ordered)

            def sbranch(x: int) -> Any:
                up.consume()
                self.maybe_raise(idx, x)
                for y in _oracle(kind, x):
                    self.pause()
                    mine.produce()
                    yield y

            return task(sbranch, workers=workers, throttle=throttle, ordered=ordered)
        if asyncy:

            async def ajoin(items: Any) -> Any:
                async for x in items:
                    up.consume()
                    await self.apause()
                    self.maybe_raise(idx, x)
                    mine.produce()
                    yield x

            return task(ajoin, workers=workers, throttle=throttle, join=True)

        def sjoin(items: Any) -> Any:
            for x in items:
                up.consume()
                self.pause()
                self.maybe_raise(idx, x)
                mine.produce()
                yield x

        return task(sjoin, workers=workers, throttle=throttle, join=True)

    def pipeline(self) -> Any:
        def src(n: int) -> Any:
            for i in range(n):
                self.maybe_raise(0, i)
                self.flights[0].produce()
                yield i

        async def asrc(n: int) -> Any:
            for i in range(n):
                self.maybe_raise(0, i)
                self.flights[0].produce()
                yield i

        p = task(asrc if self.src_async else src)
        for idx in range(1, len(self.specs) + 1):
            p = p | self.stage(idx)
        return p

    def run(self, leaks: Leaks) -> None:
        p = self.pipeline()
        out: list[int] = []
        raised: BaseException | None = None
        try:
            with time_limit(5):
                if isinstance(p, AsyncPipeline):
                    asyncio.run(self._consume_async(p, out))
                else:
                    gen = p(self.n)
                    for x in gen:
                        if self.brk is not None and len(out) == self.brk:
                            break
                        self.flights[-1].consume()
                        out.append(x)
                    gen.close()
        except Boom as e:
            raised = e
        self.check(out, raised)
        left = leaks.wait_quiet(1.0)
        assert not left, f"left running: {left}; {self.desc}"

    async def _consume_async(self, p: Any, out: list[int]) -> None:
        # as conftest.run_async, but the test collects garbage once, at its end (see below)
        asyncio.get_running_loop().set_exception_handler(self.loop_errors)
        gen = p(self.n)
        try:
            async for x in gen:
                if self.brk is not None and len(out) == self.brk:
                    break
                self.flights[-1].consume()
                out.append(x)
        finally:
            await gen.aclose()
        await wait_no_other_tasks(1.0)

    def check(self, out: list[int], raised: BaseException | None) -> None:
        desc, expected = self.desc, self.expected
        if self.err is not None:
            assert raised is self.err[2], f"raised {raised!r}, not the task's error; {desc}"
            return
        assert raised is None, f"unexpected {raised!r}; {desc}"
        if self.brk is not None:
            if self.exact:
                assert out == expected[: self.brk], desc
            else:
                assert len(out) == self.brk and set(out) <= set(expected), desc
            return
        if self.exact:
            assert out == expected, desc
        else:
            assert sorted(out) == sorted(expected), desc
        for i, (_, _, workers, throttle, _) in enumerate(self.specs):
            down = self.specs[i + 1][2] if i + 1 < len(self.specs) else 1  # the caller: 1
            bound = throttle + workers + down
            peak = self.flights[i + 1].peak
            assert not throttle or peak <= bound, (
                f"stage {i + 1}: {peak} in flight > {bound}; {desc}"
            )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["sync", "async", "mixed"])
def test_fuzz_random_pipelines_against_oracle(mode: str, leaks: Leaks) -> None:
    seeds = random.Random(f"pyper-fuzz-{mode}")
    trials = [_Trial(seeds.randrange(1 << 30), mode) for _ in range(FUZZ_TRIALS)]
    for trial in trials:
        trial.run(leaks)
    # Abandoned tasks report "never retrieved" when collected: once for all trials (a
    # gc.collect per trial, as run_async does, would double the test's time).
    gc.collect()
    for trial in trials:
        assert not trial.loop_errors.contexts, f"{trial.loop_errors.describe()}; {trial.desc}"


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
