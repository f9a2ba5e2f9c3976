"""pyper.observe(): per-stage metrics of runs, while they go and after they end."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import run_async

from pyper import RunMetrics, StageMetrics, observe, task


def source(n: int) -> Any:
    yield from range(n)


def slow(x: int) -> int:
    time.sleep(0.01)
    return x


def doubled(x: int) -> int:
    return 2 * x


def spin(x: int) -> int:
    started = time.perf_counter()
    while time.perf_counter() - started < 0.01:
        pass
    return x


def pairs(x: int) -> Any:
    yield x
    yield -x


def odd_fails(x: int) -> int:
    if x % 2:
        raise ValueError(x)
    return x


def by_name(run: RunMetrics) -> dict[str, StageMetrics]:
    return {s.name.rsplit(".", 1)[-1]: s for s in run.stages}


@pytest.mark.timeout(30)
def test_a_finished_run_counts_every_stage_and_names_the_bottleneck() -> None:
    p = task(source, branch=True) | task(slow, workers=4) | task(doubled)
    with observe() as seen:
        assert sorted(p(200)) == [2 * x for x in range(200)]
    run = seen.last
    assert run.done and len(seen.runs) == 1
    stages = by_name(run)
    assert [s.name for s in run.stages] == ["source", "slow", "doubled"]
    assert (stages["source"].items_in, stages["source"].items_out) == (1, 200)  # one call, 200 items
    assert (stages["slow"].items_in, stages["slow"].items_out) == (200, 200)
    assert (stages["doubled"].items_in, stages["doubled"].items_out) == (200, 200)
    assert [(s.workers, s.alive, s.queued) for s in run.stages] == [(1, 0, 0), (4, 0, 0), (1, 0, 0)]
    assert [(s.size, s.sizes) for s in run.stages] == [(1, None), (4, None), (1, None)]
    assert [s.calls for s in run.stages] == [1, 200, 200]
    assert run.bottleneck is not None and run.bottleneck.name == "slow"
    assert stages["slow"].busy_share > 0.8, stages["slow"]  # 4 workers sleeping all along
    assert stages["doubled"].waiting_input > 0.3, stages["doubled"]  # starved by slow
    assert stages["doubled"].busy_share < 0.3, stages["doubled"]
    summary = run.summary()
    assert summary.splitlines()[0].split() == [
        "stage", "size", "workers", "in", "out", "queued", "errors", "retries", "busy", "wait", "in", "wait",
        "room"]
    assert "slow" in summary.splitlines()[2] and " 4/4 " not in summary  # all workers gone
    assert summary.splitlines()[-1].startswith("done after ") and "bottleneck: slow" in summary


@pytest.mark.timeout(30)
def test_fan_out_and_skipped_items_show_in_the_counts() -> None:
    p = task(source, branch=True) | task(pairs, workers=2) | task(odd_fails, on_error="skip")
    with observe() as seen:
        out = sorted(p(10))
    assert out == sorted(x for v in range(10) for x in (v, -v) if x % 2 == 0)
    stages = by_name(seen.last)
    assert (stages["pairs"].items_in, stages["pairs"].items_out) == (10, 20)
    assert (stages["odd_fails"].items_in, stages["odd_fails"].items_out) == (20, len(out))
    assert (stages["odd_fails"].errors, stages["odd_fails"].skips, stages["odd_fails"].retries) == (10, 10, 0)
    assert (stages["pairs"].errors, stages["pairs"].skips) == (0, 0)


_flaky_calls: dict[int, int] = {}


def fails_twice(x: int) -> int:
    _flaky_calls[x] = _flaky_calls.get(x, 0) + 1
    if _flaky_calls[x] <= 2:
        raise ConnectionError(x)
    return x


def odd_fails_in_a_process(x: int) -> int:
    if x % 2:
        raise ValueError(x)
    return x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["thread", "process"])
def test_retries_skips_and_handled_errors_are_counted(where: str) -> None:
    process = where == "process"
    if not process:  # retried attempts (in a process, retries count the same way: from its notes)
        _flaky_calls.clear()
        p = task(source, branch=True) | task(fails_twice, workers=2, retries=2, backoff=0)
        with observe() as seen:
            assert sorted(p(5)) == list(range(5))
        [_, stage] = seen.last.stages
        assert (stage.retries, stage.errors, stage.skips) == (10, 0, 0)  # two failed attempts each
        assert (stage.items_in, stage.calls) == (5, 15)  # each item's three attempts
    # Skipped in a process (counted from the records its worker sends back); handed to a
    # handler on threads.
    policy: dict[str, Any] = {"on_error": "skip"} if process else {"on_error": lambda x, e: None}
    handled = task(source, branch=True) | task(odd_fails_in_a_process, multiprocess=process, **policy)
    with observe() as seen:
        assert sorted(handled(10)) == [0, 2, 4, 6, 8]
    [_, stage] = seen.last.stages
    assert (stage.errors, stage.skips) == ((5, 5) if process else (5, 0))
    raising = task(source, branch=True) | task(odd_fails_in_a_process, multiprocess=where == "process")
    with observe() as seen, pytest.raises(ValueError):
        list(raising(10))
    assert seen.last.stages[1].errors == 1


@pytest.mark.timeout(30)
def test_metrics_are_readable_from_another_thread_while_the_run_goes() -> None:
    p = task(source, branch=True) | task(slow, workers=2)
    with observe() as seen:
        it = iter(p(1000))
        firsts = [next(it) for _ in range(20)]
        snapshots: list[list[StageMetrics]] = []
        reader = threading.Thread(target=lambda: snapshots.append(seen.last.stages))
        reader.start()
        reader.join()
        assert not seen.last.done
        it.close()  # type: ignore[attr-defined]
    [stages] = snapshots
    assert len(firsts) == 20
    assert stages[1].name == "slow" and stages[1].alive == 2 and stages[1].items_out >= 20
    assert 0 < stages[1].items_in < 1000
    assert seen.last.done  # closed: the caller is done with it
    deadline = time.monotonic() + 2  # the calls in flight (10 ms) end, and their workers with them
    while any(s.alive for s in seen.last.stages) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [s.alive for s in seen.last.stages] == [0, 0]


@pytest.mark.timeout(30)
def test_async_pipelines_are_observed_too() -> None:
    async def aslow(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    p = task(source, branch=True) | task(aslow, workers=2) | task(doubled, workers=2)

    async def main() -> RunMetrics:
        with observe() as seen:
            assert sorted([x async for x in p(100)]) == [2 * x for x in range(100)]
        return seen.last

    run = run_async(main())
    stages = by_name(run)
    assert (stages["aslow"].items_in, stages["aslow"].items_out) == (100, 100)
    assert (stages["doubled"].items_in, stages["doubled"].items_out) == (100, 100)
    assert run.bottleneck is not None and run.bottleneck.name.endswith("aslow")


@pytest.mark.timeout(60)
def test_a_process_stage_is_observed_through_its_relays() -> None:
    p = task(source, branch=True) | task(spin, workers=2, multiprocess=True) | task(doubled)
    list(p(4))  # warm workers
    with observe() as seen:
        assert sorted(p(100)) == [2 * x for x in range(100)]
    stages = by_name(seen.last)
    assert (stages["spin"].items_in, stages["spin"].items_out, stages["spin"].workers) == (100, 100, 2)
    assert seen.last.bottleneck is not None and seen.last.bottleneck.name == "spin"


@pytest.mark.timeout(30)
def test_nested_pipelines_are_observed_and_nothing_outside_the_block() -> None:
    inner = task(doubled) | task(doubled, workers=2)  # (a one-task pipeline runs inline: no run)
    p = task(source, branch=True) | task(inner, workers=2, branch=True)
    list(p(3))  # not observed
    with observe() as seen:
        assert sorted(p(3)) == [0, 4, 8]
    assert len(seen.runs) == 4  # the outer run and one inner run per item
    assert [s.name for s in seen.runs[0].stages] == ["source", "pipeline(doubled | doubled)"]
    assert all([s.items_out for s in run.stages] == [1, 1] for run in seen.runs[1:])
    with pytest.raises(LookupError, match="no pipeline has run"):
        with observe() as empty:
            empty.last


@pytest.mark.timeout(30)
def test_log_records_name_the_task_and_the_run(caplog: pytest.LogCaptureFixture) -> None:
    p = task(source, branch=True) | task(odd_fails, on_error="skip")
    with caplog.at_level("DEBUG", logger="pyper"), observe() as seen:
        assert sorted(p(4)) == [0, 2]
        assert sorted(p(4)) == [0, 2]
    records = [r for r in caplog.records if r.name == "pyper"]
    assert sorted(r.getMessage() for r in records) == sorted(
        f"pyper: task 'odd_fails' skipped item {x} after ValueError: {x}" for x in (1, 1, 3, 3))
    assert {r.pyper_task for r in records} == {"odd_fails"}  # type: ignore[attr-defined]
    runs = sorted({r.pyper_run for r in records})  # type: ignore[attr-defined]
    assert len(runs) == 2 and all(isinstance(n, int) for n in runs)
    assert all(r.levelname == "WARNING" for r in records)  # one per skipped item, none per item done
    assert len(seen.runs) == 2



def cheap_then_slow(x: int) -> int:
    if x % 50 == 0:
        time.sleep(0.02)  # a worker stuck on one item while its batch waits: siblings share it
    return x


@pytest.mark.timeout(30)
@pytest.mark.parametrize("plain", [True, False])
def test_items_shared_between_workers_are_counted_once(plain: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyper._channel._sharing

    monkeypatch.setattr(pyper._channel._sharing, "PLAIN_CLAIMS", plain)  # list iterators, or Claims
    p = task(source, branch=True) | task(cheap_then_slow, workers=4) | task(doubled, workers=3)
    with observe() as seen:
        assert sorted(p(5000)) == [2 * x for x in range(5000)]
    stages = by_name(seen.last)
    assert [(s.items_in, s.items_out) for s in seen.last.stages] == [(1, 5000), (5000, 5000), (5000, 5000)], stages


@pytest.mark.timeout(30)
def test_the_run_knows_its_total_when_the_first_task_returns_a_length() -> None:
    listed = task(lambda n: list(range(n)), branch=True) | task(doubled, workers=2)
    generated = task(source, branch=True) | task(doubled, workers=2)
    with observe() as seen:
        assert sorted(listed(30)) == [2 * x for x in range(30)]
        assert sorted(generated(30)) == [2 * x for x in range(30)]
    assert [run.total for run in seen.runs] == [30, None]


@pytest.mark.timeout(30)
def test_nested_observing_blocks_each_record_the_runs_of_the_inner_block() -> None:
    """Bug 19: a progress() (or observe()) block inside an observe() replaced its hook, so
    the outer block recorded none of the runs started in the inner one."""
    from pyper import progress

    p = task(source, branch=True) | task(doubled)
    with observe() as outer:
        with progress(bars=False, interval=60) as bar:
            assert sorted(p(5)) == [0, 2, 4, 6, 8]
        assert sorted(p(3)) == [0, 2, 4]
    assert len(bar.runs) == 1 and len(outer.runs) == 2
    assert outer.runs[0]._run is bar.runs[0]._run
    with progress(bars=False, interval=60) as bar:
        with observe() as inner:
            assert sorted(p(5)) == [0, 2, 4, 6, 8]
    assert len(bar.runs) == 1 and len(inner.runs) == 1
    with observe() as outer:
        with observe() as inner:
            with observe() as innermost:
                assert sorted(p(5)) == [0, 2, 4, 6, 8]
            assert sorted(p(2)) == [0, 2]
    assert (len(outer.runs), len(inner.runs), len(innermost.runs)) == (2, 2, 1)

    async def main() -> None:
        async def apply(x: int) -> int:
            return x

        ap = task(source, branch=True) | task(apply)
        with observe() as outer:
            with observe() as inner:
                assert [x async for x in ap(3)] == [0, 1, 2]
        assert (len(outer.runs), len(inner.runs)) == (1, 1)

    run_async(main())


def cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@pytest.mark.timeout(60)
def test_the_advice_weighs_the_cores_and_what_the_calls_spend_their_time_on() -> None:
    """Bug 23: the summary told a user to give more workers to a CPU-bound process stage
    already running one worker per core (with 4 on 2 cores it got slower)."""
    n = cores()
    computing = task(source, branch=True) | task(spin, workers=n, multiprocess=True)
    list(computing(2 * n))  # warm the worker processes
    with observe() as seen:
        assert sorted(computing(40 * n)) == list(range(40 * n))
    last_line = seen.last.summary().splitlines()[-1]
    assert "bottleneck: spin" in last_line and "more workers" not in last_line, last_line
    assert ("the one core" if n == 1 else f"the {n} cores") in last_line, last_line

    # a thread stage whose calls compute: more threads take turns at the interpreter lock
    spinning = task(spin, workers=2)
    cpu_before = time.process_time()
    with observe() as seen:
        assert sorted((task(source, branch=True) | spinning)(60)) == list(range(60))
    cpu_spent = time.process_time() - cpu_before
    stage = by_name(seen.last)["spin"]
    # Its threads' CPU time is what it measures: nearly all the CPU this process got meanwhile.
    # (Not a share of the wall clock: on a loaded machine the process gets less than the core
    # it asks for: 0.4 of one beside two busy loops and another test run, which failed a bound
    # of half a core. An engine that measured no thread's CPU, or the wall time of the calls,
    # is off by far: nothing, or 1.0 s of calls against 0.3 s of CPU.)
    assert stage.cpu is not None and 0.7 * cpu_spent < stage.cpu <= cpu_spent, (stage, cpu_spent)
    last_line = seen.last.summary().splitlines()[-1]
    assert "bottleneck: spin" in last_line, last_line
    # What the advice makes of CPU-bound calls, given the wall time the process would take on
    # a machine that gave it the core (the wall clock of a loaded one cannot tell computing
    # from waiting for a core): run it in processes; on all the cores already: they are busy.
    from pyper._metrics import _advice

    assert "multiprocess=True" in _advice(stage, spinning.tasks[0], stage.cpu / 0.9)
    assert "more workers would only share them" in _advice(stage._replace(cpu=n * stage.cpu), spinning.tasks[0],
                                                          stage.cpu)

    # a stage whose calls wait, with too few workers: still told to get more
    with observe() as seen:
        assert sorted((task(source, branch=True) | task(slow, workers=1))(50)) == list(range(50))
    stage = by_name(seen.last)["slow"]
    assert stage.cpu is not None and stage.cpu < 0.2 * seen.last.elapsed, stage
    last_line = seen.last.summary().splitlines()[-1]
    assert "bottleneck: slow" in last_line and "give it more workers" in last_line, last_line
