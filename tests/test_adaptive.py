"""Workers that size themselves: ``workers=(lo, hi)`` on thread, async and process stages."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from conftest import acollect, elapsed, run_async

from pyper import PipelineSetupError, StageMetrics, observe, task


def source(n: int) -> Any:
    yield from range(n)


def nap(x: int) -> int:
    time.sleep(0.2)
    return x


async def anap(x: int) -> int:
    await asyncio.sleep(0.2)
    return x


def nap_in_process(x: int) -> int:
    time.sleep(0.3)
    return x


def spin(x: int) -> int:
    """Pure Python for about 2 ms: threads only contend for the GIL."""
    started = time.perf_counter()
    while time.perf_counter() - started < 0.002:
        pass
    return x


def stage(name: str, stages: list[StageMetrics]) -> StageMetrics:
    return next(s for s in stages if s.name.rsplit(".", 1)[-1] == name)


# -- options ----------------------------------------------------------------------------


def test_a_range_is_checked_at_task_time() -> None:
    with pytest.raises(ValueError, match=r"task 'nap'.*lo <= hi"):
        task(nap, workers=(4, 2))
    with pytest.raises(ValueError, match=r"task 'nap': workers' lower bound must be >= 1"):
        task(nap, workers=(0, 2))
    with pytest.raises(TypeError, match=r"task 'nap': workers must be an int or a range"):
        task(nap, workers=(1, 2, 3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"task 'nap': workers' upper bound must be an int"):
        task(nap, workers=(1, 2.5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"task 'nap': join=True takes a fixed number of workers"):
        task(nap, workers=(1, 4), join=True)
    with pytest.raises(ValueError, match=r"task 'nap': a stage on executor='ray' takes a fixed number of workers"):
        task(nap, workers=(1, 4), executor="ray")
    assert task(nap, concurrency=(2, 8)).tasks[0].workers == 2  # the older alias takes one too
    assert not task(nap, workers=(3, 3)).tasks[0].adaptive  # lo == hi: a fixed size


def test_the_first_task_cannot_take_a_range() -> None:
    p = task(source, workers=(1, 4)) | task(nap)
    with pytest.raises(PipelineSetupError, match="cannot have workers > 1"):
        list(p(3))


# -- growing ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_thread_stage_grows_to_its_load() -> None:
    """40 calls of 0.2 s from one worker would take 8 s; sized up to 40 they take about 0.2 s."""
    p = task(source) | task(nap, workers=(1, 40))
    with observe() as seen, elapsed() as t:
        assert sorted(p(40)) == list(range(40))
    assert t.elapsed < 1.5
    naps = stage("nap", seen.last.stages)
    assert naps.sizes == (1, 40) and naps.workers >= 20 and naps.items_in == 40
    assert "of 1-40" in seen.last.summary()


@pytest.mark.timeout(30)
def test_an_async_stage_grows_to_its_load() -> None:
    async def main() -> list[int]:
        p = task(source) | task(anap, workers=(1, 40))
        with observe() as seen:
            out = await acollect(p(40))
        assert stage("anap", seen.last.stages).workers >= 20
        return out

    with elapsed() as t:
        assert sorted(run_async(main())) == list(range(40))
    assert t.elapsed < 1.5


@pytest.mark.timeout(60)
def test_a_process_stage_grows_to_its_load() -> None:
    """12 calls of 0.3 s: 3.6 s in one process; sized up to 6 processes about 1 s with their start."""
    p = task(source) | task(nap_in_process, workers=(1, 6), multiprocess=True)
    with observe() as seen, elapsed() as t:
        assert sorted(p(12)) == list(range(12))
    assert t.elapsed < 2.5
    assert stage("nap_in_process", seen.last.stages).workers >= 4


@pytest.mark.timeout(30)
def test_a_stage_that_grows_keeps_order_and_fans_out() -> None:
    def twice(x: int) -> Any:
        time.sleep(0.05)
        yield x
        yield x

    p = task(source) | task(nap, workers=(1, 16), ordered=True) | task(twice, workers=(1, 16))
    out = list(p(48))
    assert sorted(out) == sorted(2 * list(range(48)))
    q = task(source) | task(nap, workers=(1, 16), ordered=True)
    assert list(q(48)) == list(range(48))


@pytest.mark.timeout(60)
def test_gil_bound_threads_do_not_grow_past_what_pays() -> None:
    """Threads of pure-Python calls take turns at the GIL: a growth does not raise the rate,
    so the stage goes back to about one worker (and tries again only now and then)."""
    p = task(source) | task(spin, workers=(1, 16))
    with observe() as seen:
        assert sorted(p(1500)) == list(range(1500))
    spins = stage("spin", seen.last.stages)
    assert spins.size <= 4, seen.last.summary()


@pytest.mark.timeout(60)
def test_a_computing_stage_with_a_backlog_grows_one_verdict_at_a_time() -> None:
    """A stage of threads that computes takes no growth on faith, even with a backlog that
    would keep 16 workers busy: it doubles, and waits for the verdict (here: no gain) before
    it grows again. It took on the whole backlog at once (16 threads contending for the GIL)."""
    p = task(source) | task(spin, workers=(1, 16))
    most = 0
    with observe() as seen:
        out = []
        for x in p(600):
            out.append(x)
            most = max(most, stage("spin", seen.last.stages).size)
    assert sorted(out) == list(range(600))
    assert most <= 8, seen.last.summary()


@pytest.mark.timeout(60)
def test_a_stage_whose_calls_get_slower_gains_workers() -> None:
    """Items come every millisecond; calls take 2 ms for 0.6 s (a few workers keep up), then
    40 ms (it takes about 40): the stage grows when they slow down."""
    start = time.perf_counter()

    def steady(n: int) -> Any:
        for i in range(n):
            time.sleep(0.001)
            yield i

    def slowing(x: int) -> int:
        time.sleep(0.002 if time.perf_counter() - start < 0.6 else 0.04)
        return x

    sizes: list[int] = []
    p = task(steady) | task(slowing, workers=(1, 64))
    with observe() as seen:
        out = []
        for x in p(1200):
            out.append(x)
            if 0.3 < time.perf_counter() - start < 0.55:
                sizes.append(stage("slowing", seen.last.stages).size)
    assert sorted(out) == list(range(1200))
    before, after = max(sizes), stage("slowing", seen.last.stages).size
    assert before <= 12 and after >= 2 * before, (sizes, seen.last.summary())


# -- retiring ---------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_idle_workers_retire_down_to_the_lower_bound() -> None:
    """A burst makes the stage grow; then items come one by one, slowly, and the workers it
    no longer needs leave (never below lo); every item still comes out."""

    def bursty(n: int) -> Any:
        yield from range(n)
        for i in range(n, n + 25):
            time.sleep(0.1)
            yield i

    p = task(bursty) | task(nap, workers=(2, 32))
    with observe() as seen:
        assert sorted(p(64)) == list(range(64 + 25))
    naps = stage("nap", seen.last.stages)
    assert naps.workers >= 16, seen.last.summary()  # it grew for the burst
    # and went back down: one or two workers serve an item every 0.1 s; a stage that never
    # retires keeps the 16-32 it grew to. (With 1.5 s of trickle and at most 6, a loaded
    # machine, where the sizer had to grow again and so waited longer to retire, left 7.)
    assert 2 <= naps.size <= 8, seen.last.summary()


@pytest.mark.timeout(30)
def test_breaking_out_stops_a_growing_stage_and_its_sizer() -> None:
    p = task(source) | task(nap, workers=(1, 32))
    with elapsed() as t:
        for x in p(10_000):
            if x >= 0:
                break
    assert t.elapsed < 1.0  # the leak fixture checks that the sizer and workers are gone


@pytest.mark.timeout(30)
def test_an_error_stops_a_growing_stage() -> None:
    def fails_late(x: int) -> int:
        time.sleep(0.05)
        if x == 50:
            raise KeyError(x)
        return x

    p = task(source) | task(fails_late, workers=(1, 32))
    with pytest.raises(KeyError) as info:
        list(p(10_000))
    assert info.value.args == (50,)


# -- from review: the bounds hold -------------------------------------------------------


def test_a_peek_at_the_input_never_takes_a_retirement() -> None:
    """A process relay peeks (``get_now``) while a request is in flight: a request to retire
    is for the blocking ``get`` that can leave, or the stage would outgrow its bound."""
    from pyper._channel import Channel

    channel = Channel(64, senders=1, receivers=3)
    channel.put([1, 2, 3])
    channel.retire(1)
    assert channel.get_now(1) == [1]
    assert channel.get(1) is None  # this receiver leaves
    channel.close_receive()
    assert channel.get(2) == [2, 3]  # the others go on


@pytest.mark.timeout(60)
def test_workers_holding_a_resource_never_exceed_the_bound() -> None:
    """A retired worker keeps its setup= resource until its exit is done: no new worker starts
    past hi meanwhile, though the stage grows again for the next burst."""
    import contextlib
    import threading

    lock = threading.Lock()
    counts = {"open": 0, "most": 0, "made": 0}

    @contextlib.contextmanager
    def connection() -> Any:
        with lock:
            counts["open"] += 1
            counts["made"] += 1
            counts["most"] = max(counts["most"], counts["open"])
        try:
            yield None
        finally:
            time.sleep(0.3)  # a slow close
            with lock:
                counts["open"] -= 1

    def bursts(n: int) -> Any:
        for _ in range(n):
            yield from range(40)
            time.sleep(0.4)  # a lull: idle workers retire

    def call(conn: None, x: int) -> int:
        time.sleep(0.02)
        return x

    p = task(bursts) | task(call, workers=(1, 4), setup=connection)
    assert sorted(p(6)) == sorted(list(range(40)) * 6)
    assert counts["most"] <= 4 and counts["made"] >= 3, counts
