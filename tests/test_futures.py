"""Stages on an executor of the user's (``executor=pool``): any ``concurrent.futures.Executor``
(a ``ThreadPoolExecutor``, a ``ProcessPoolExecutor``, loky's reusable executor), with pyper's
batching, ordering, per-call options, metrics and cancellation around it; pyper never shuts
the executor down.

The functions run in other processes for the process pools, so they live at module level.
Each test makes its executor and shuts it down itself (the leak fixture checks that no
thread or process is left).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import acollect, elapsed, run_async

import pyper
from pyper import Emit, PipelineSetupError, WorkerProcessDied, task
from pyper._errors import RemoteTraceback


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    time.sleep(0.2)
    return x * x


def pid_of(x: int) -> tuple[int, int]:
    return x, os.getpid()


def fan(x: int) -> Iterator[tuple[int, int]]:
    for k in range(x):
        yield x, k


def add(x: int, y: int) -> int:
    return x + y


def odd_fails(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


class Boom(Exception):
    pass


def boom(x: int) -> int:
    raise Boom(f"boom on {x}")


class HTTPError(Exception):
    """Its ``__init__`` takes other arguments than it gives ``Exception``: it pickles, but
    does not unpickle."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"{status} {url}")
        self.status, self.url = status, url


def http_error(x: int) -> int:
    raise HTTPError(404, f"http://example.invalid/{x}")


def die(x: int) -> int:
    os._exit(3)


def flaky_once(path: str, x: int) -> int:
    """Fails the first call on each item (a marker file per item records the attempt)."""
    marker = f"{path}.{x}"
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        raise ConnectionError(f"first try of {x}")
    return x


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@contextmanager
def executor_of(kind: str, workers: int = 2) -> Iterator[Executor]:
    """A fresh executor of ``kind``, shut down (and its workers joined) at the end."""
    if kind == "thread":
        pool: Executor = ThreadPoolExecutor(workers)
    elif kind == "process":
        pool = ProcessPoolExecutor(workers)
    else:
        import loky

        pool = loky.get_reusable_executor(max_workers=workers, reuse=False)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True)


#: loky brings cloudpickle, which the core suite runs without (it checks what plain pickle
#: refuses): tests/run.sh installs it with the cloudpickle extra and runs the loky cases
#: then (PYPER_WITH_CLOUDPICKLE=1).
KINDS = ["thread", "process"] + (["loky"] if os.environ.get("PYPER_WITH_CLOUDPICKLE") else [])


@pytest.fixture(scope="module", autouse=True)
def loky_resource_tracker() -> None:
    """loky starts a resource tracker of its own, once per program, on first use: started
    here, before any test's leak check looks at the open descriptors."""
    try:
        from loky.backend.resource_tracker import ensure_running
    except ImportError:
        return
    ensure_running()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_results_equal_a_plain_loop_on_every_kind_of_executor(kind: str) -> None:
    with executor_of(kind) as pool:
        mapped = task(range, branch=True) | task(square, workers=2, executor=pool)
        assert sorted(mapped(200)) == [x * x for x in range(200)]
        ordered = task(range, branch=True) | task(square, workers=2, ordered=True, executor=pool)
        assert list(ordered(200)) == [x * x for x in range(200)]
        fanned = task(range, branch=True) | task(fan, workers=2, executor=pool)
        assert sorted(fanned(12)) == sorted((x, k) for x in range(12) for k in range(x))
        bound = task(range, branch=True) | task(add, workers=2, executor=pool, bind=task.bind(y=10))
        assert sorted(bound(50)) == [x + 10 for x in range(50)]
        unpacked = task(lambda n: [(x, 1) for x in range(n)], branch=True) | task(add, executor=pool, unpack=True)
        assert sorted(unpacked(30)) == [x + 1 for x in range(30)]
        # The first task runs there too, not inline in the caller's process.
        first = list(task(pid_of, executor=pool)(5))
        assert first[0][0] == 5
        if kind != "thread":
            assert first[0][1] != os.getpid()
        # pyper never shut it down: it still takes calls.
        assert pool.submit(square, 9).result() == 81


@pytest.mark.timeout(30)
def test_an_async_pipeline_runs_a_stage_on_an_executor() -> None:
    async def plus_one(x: int) -> int:
        return x + 1

    async def main(pool: Executor) -> list[int]:
        p = task(range, branch=True) | task(square, workers=2, executor=pool) | task(plus_one)
        return await acollect(p(100))

    with executor_of("thread") as pool:
        assert sorted(run_async(main(pool))) == [x * x + 1 for x in range(100)]


@pytest.mark.timeout(30)
def test_workers_bounds_the_calls_in_flight_on_the_executor() -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def counted(x: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return x

    with executor_of("thread", workers=8) as pool:
        p = task(range, branch=True) | task(counted, workers=3, executor=pool)
        with elapsed() as t:
            assert sorted(p(60)) == list(range(60))
    # Batches of calls of 10 ms: each relay's batch runs on one pool thread, so three at once
    # (never more), and all three do run at once (60 calls of 10 ms well under 0.6 s).
    assert most == 3
    assert t.elapsed < 0.5, t.elapsed


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["thread", "process"])
def test_errors_are_the_original_exception_with_the_remote_traceback(kind: str) -> None:
    with executor_of(kind) as pool:
        p = task(range, branch=True) | task(boom, workers=2, executor=pool)
        with pytest.raises(Boom, match="boom on") as info:
            list(p(10))
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "in boom" in info.value.__cause__.text
        assert any(n.startswith("pyper: raised in task 'boom' on item") for n in info.value.__notes__)
        # An exception that pickles but does not unpickle still arrives, as itself or named.
        p = task(range, branch=True) | task(http_error, executor=pool)
        with pytest.raises(Exception, match="404 http://example.invalid/") as info2:
            list(p(3))
        assert isinstance(info2.value.__cause__, RemoteTraceback)
        if kind == "process":
            assert type(info2.value) is RuntimeError
            assert "HTTPError" in str(info2.value) and "could not be unpickled" in str(info2.value)


# An error on a thread pool is the original exception, even one that does not unpickle, as on
# pyper's own threads. Bug found by review: a call on a ThreadPoolExecutor shares the caller's
# process, yet its error was pickled into an envelope and rebuilt, so one that does not round-trip
# (a two-argument __init__) reached the caller and on_error as a RuntimeError.
@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["thread", "thread pool"])
def test_an_error_on_a_thread_pool_is_the_original_exception(where: str) -> None:
    with executor_of("thread") as pool:
        p = task(range, branch=True) | task(http_error, **({"executor": pool} if where != "thread" else {}))
        with pytest.raises(HTTPError):
            list(p(3))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["thread", "process"])
def test_on_error_runs_in_the_callers_process_and_retries_beside_the_call(kind: str, tmp_path: Any) -> None:
    dead: list[tuple[int, str]] = []

    def dead_letter(item: int, exc: Exception) -> Any:
        dead.append((item, str(exc)))
        return Emit(-item)

    with executor_of(kind) as pool:
        p = task(range, branch=True) | task(odd_fails, workers=2, executor=pool, on_error=dead_letter)
        assert sorted(p(10)) == sorted([x for x in range(10) if not x % 2] + [-x for x in range(10) if x % 2])
        assert sorted(dead) == [(x, f"odd {x}") for x in range(1, 10, 2)]
        skipped = task(range, branch=True) | task(odd_fails, workers=2, executor=pool, on_error="skip")
        assert sorted(skipped(10)) == [0, 2, 4, 6, 8]
        retried = task(range, branch=True) | task(flaky_once, executor=pool, retries=1, backoff=0,
                                                   bind=task.bind(str(tmp_path / "m")))
        assert sorted(retried(5)) == list(range(5))


@pytest.mark.timeout(30)
def test_a_call_past_its_timeout_is_abandoned_not_waited_for() -> None:
    with executor_of("thread", workers=4) as pool:
        p = task(lambda: [0.01, 1.0, 0.01], branch=True) | task(sleep_for, workers=2, executor=pool,
                                                                   timeout=0.3, on_error="skip")
        with elapsed() as t:
            assert sorted(p()) == [0.01, 0.01]
        assert t.elapsed < 0.9, t.elapsed  # the 1 s call was not waited for


# A call abandoned at its timeout does not time out the next one. Bug found by review:
# FuturesRemote kept the done callback of a future abandoned at its timeout, which set the one
# _woken event when that call ended and so timed out the next call long before its deadline.


def _slow_0_and_1(x: int) -> int:
    time.sleep({0: 0.7, 1: 0.3}.get(x, 0.0))
    return x


@pytest.mark.timeout(30)
def test_an_abandoned_call_does_not_time_out_the_next_one() -> None:
    failed: list[tuple[int, str]] = []

    def handler(item: int, exc: Exception) -> None:
        failed.append((item, type(exc).__name__))

    with executor_of("thread", workers=2) as pool:  # room for the abandoned call and the next one
        p = task(range, branch=True) | task(_slow_0_and_1, executor=pool, timeout=0.5, on_error=handler)
        out = list(p(3))
    assert failed == [(0, "TimeoutError")]  # item 1 takes 0.3 s of its 0.5
    assert out == [1, 2]


# timeout= counts only the call, not its wait in the executor's queue. Bug found by review: on an
# executor of the user's, timeout= counted the time a call waited in the executor's queue, so the
# items queued behind one stuck call timed out without ever running (Ray's timed calls count
# from their start: STARTED).

_stall = threading.Event()


def _stall_on_0(x: int) -> int:
    if x == 0:
        _stall.wait(2.0)
    return x


@pytest.mark.timeout(30)
def test_timeout_on_a_busy_executor_counts_only_the_call() -> None:
    _stall.clear()
    failed: list[tuple[int, str]] = []

    def handler(item: int, exc: Exception) -> None:
        failed.append((item, type(exc).__name__))

    with executor_of("thread", workers=1) as pool:
        p = task(range, branch=True) | task(_stall_on_0, executor=pool, timeout=0.3, on_error=handler)
        try:
            out = list(p(6))
        finally:
            _stall.set()
    assert failed == [(0, "TimeoutError")]
    assert out == [1, 2, 3, 4, 5]


@pytest.mark.timeout(30)
def test_rate_paces_the_calls_on_the_executor() -> None:
    starts: list[float] = []

    def stamped(x: int) -> int:
        starts.append(time.monotonic())
        return x

    with executor_of("thread") as pool:
        p = task(range, branch=True) | task(stamped, workers=2, executor=pool, rate=20)
        assert sorted(p(6)) == list(range(6))
    gaps = [b - a for a, b in zip(sorted(starts), sorted(starts)[1:])]
    assert min(gaps) > 0.03, gaps  # 20 a second: 50 ms apart (a generous bound)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["first", "middle"])
def test_break_and_errors_stop_at_once_and_the_executor_goes_on(where: str) -> None:
    started: list[int] = []

    def slow(x: Any) -> Any:
        started.append(1)
        time.sleep(0.3)
        return x

    with executor_of("thread", workers=4) as pool:
        if where == "first":
            p = task(lambda n: slow(list(range(n))), executor=pool, branch=True) | task(square)
        else:
            p = task(range, branch=True) | task(slow, workers=2, executor=pool)
        gen = p(50)
        with elapsed() as t:
            next(gen)
            gen.close()
        assert t.elapsed < 1.0, t.elapsed
        time.sleep(0.4)
        count = len(started)
        time.sleep(0.4)
        assert len(started) == count  # no call starts once the run stopped
        assert pool.submit(square, 3).result() == 9


@pytest.mark.timeout(30)
def test_a_consumer_error_and_ctrl_c_stop_the_stage() -> None:
    with executor_of("thread", workers=4) as pool:
        p = task(range, branch=True) | task(slow_square, workers=2, executor=pool)
        for exc in (ValueError("consumer"), KeyboardInterrupt()):
            with elapsed() as t, pytest.raises(type(exc)):
                for _ in p(100):
                    raise exc
            assert t.elapsed < 1.0, t.elapsed


@pytest.mark.timeout(30)
def test_a_dead_worker_of_a_process_pool_is_worker_process_died() -> None:
    with executor_of("process") as pool:
        p = task(range, branch=True) | task(die, executor=pool)
        with pytest.raises(WorkerProcessDied, match="task 'die': a worker of its executor died") as info:
            list(p(3))
        assert type(info.value.__cause__).__name__ == "BrokenProcessPool"


# A broken process pool is WorkerProcessDied, in the run that broke it and in the next. Bug found
# by review: FuturesRemote._submit wrapped every RuntimeError of submit, and BrokenProcessPool is
# one, as 'refused the call (was it shut down?)' instead of WorkerProcessDied.


def _die_on_3(x: int) -> int:
    if x == 3:
        os._exit(3)
    return x


@pytest.mark.timeout(60)
def test_a_broken_process_pool_is_worker_process_died() -> None:
    from concurrent.futures.process import BrokenProcessPool

    with executor_of("process", workers=1) as pool:
        p = task(range, branch=True) | task(_die_on_3, executor=pool)
        with pytest.raises(WorkerProcessDied):
            list(p(10))
        with pytest.raises(WorkerProcessDied) as info:  # the next run: the pool is still broken
            list(p(10))
    assert isinstance(info.value.__cause__, BrokenProcessPool)


@pytest.mark.timeout(30)
def test_observe_counts_a_stage_on_an_executor() -> None:
    with executor_of("thread") as pool, pyper.observe() as seen:
        p = task(range, branch=True) | task(odd_fails, workers=2, executor=pool, on_error="skip")
        assert sorted(p(100)) == list(range(0, 100, 2))
    stage = seen.last.stages[1]
    assert (stage.items_in, stage.items_out, stage.skips) == (100, 50, 50)


def test_what_an_executor_cannot_do_is_refused_at_task_time() -> None:
    async def asquare(x: int) -> int:
        return x * x

    with executor_of("thread") as threads, executor_of("process") as processes:
        with pytest.raises(ValueError, match=r"task 'square': setup= needs workers of pyper's own"):
            task(square, executor=threads, setup=dict)
        with pytest.raises(ValueError, match=r"task 'square': join=True needs workers of pyper's own"):
            task(square, executor=threads, join=True)
        with pytest.raises(ValueError, match=r"task .\S*asquare.: executor=ThreadPoolExecutor runs synchronous"):
            task(asquare, executor=threads)
        with pytest.raises(PipelineSetupError, match=r"task '.*<lambda>': executor=ProcessPoolExecutor sends"):
            task(lambda x: x, executor=processes)
        task(lambda x: x, executor=threads)  # a thread pool pickles nothing
        with pytest.raises(ValueError, match=r"multiprocess=True .* executor=ThreadPoolExecutor was given too"):
            task(square, executor=threads, multiprocess=True)
        assert task(square, executor=threads).tasks[0].executor is threads


def test_a_task_on_an_executor_says_where_it_runs_and_the_caller_never_imports_more() -> None:
    with executor_of("thread") as pool:
        t = task(square, executor=pool).tasks[0]
        assert t.executor is pool and not t.multiprocess
