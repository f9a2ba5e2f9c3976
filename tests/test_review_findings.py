"""Bugs a review of the engine's redesign (844bca5..) found: each test failed before its
fix (it was ``xfail(strict=True)`` until then), and the comment above it says the bug in
one sentence. To be folded into the files of the behaviours they test.

Functions that run in worker processes live at module level (picklable by reference).
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import itertools
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until

import pyper
from pyper import PipelineSetupError, task
from pyper._errors import WorkerProcessDied


class Boom(Exception):
    pass


# -- 1. the first task's input (the run's source channel) is never cancelled ------------------


def _stay(resource: Any, x: Any) -> Any:
    return x


# Found by review (fixed): Run.cancel never cancels the first task's source channel, so a first-task worker that reaches its first get after the run stopped still calls the function
@pytest.mark.timeout(30)
def test_first_task_is_not_called_after_its_run_failed() -> None:
    proceed = threading.Event()
    called = threading.Event()

    def slow_setup() -> str:  # the first task's worker is still in its setup as the run fails
        proceed.wait(5)
        return "resource"

    def first(resource: str) -> int:
        called.set()
        return 1

    def failing_setup() -> None:
        raise Boom("setup")

    p = task(first, setup=slow_setup) | task(_stay, setup=failing_setup)
    with pytest.raises(Boom):
        list(p())
    proceed.set()  # the run has failed and returned: the first task's worker goes on
    assert not called.wait(1.0), "the first task was called after its run had failed"


_taking = threading.Event()
_failing = threading.Event()


def _mark_then_yield(path: str) -> Iterator[int]:
    Path(path).write_text("called")
    yield 1


def _failing_setup_after_take() -> None:
    _taking.wait(5)
    _failing.set()
    raise Boom("setup")


# Found by review (fixed): a process first task's relay that gets its worker after the run failed takes the (never cancelled) source item and sends the call to its worker process
@pytest.mark.timeout(60)
def test_first_process_task_is_not_called_after_its_run_failed(tmp_path: Path, monkeypatch: Any) -> None:
    from pyper._engine import _process

    _taking.clear()
    _failing.clear()
    take = _process.take
    pyper.set_start_method("forkserver")  # the relay starts its worker itself (take), as under spawn
    try:
        path = tmp_path / "called"
        first = task(_mark_then_yield, branch=True, multiprocess=True)
        assert list(first(str(path))) == [1]  # a warm worker for the next run
        path.unlink()

        def slow_take(*args: Any) -> Any:  # a worker slow to start (spawn, a loaded machine)
            _taking.set()  # (past the relay's "cancelled already?" check)
            _failing.wait(5)
            time.sleep(0.2)  # the run has failed meanwhile
            return take(*args)

        monkeypatch.setattr(_process, "take", slow_take)
        with pytest.raises(Boom):
            list((first | task(_stay, setup=_failing_setup_after_take))(str(path)))
        time.sleep(1.0)
        assert not path.exists(), "the first task was called, in its worker process, after its run had failed"
    finally:
        pyper.set_start_method(None)


# -- 2. a relay sends a batch it took before the cancellation -----------------------------------

_packing = threading.Event()
_proceed = threading.Event()


class _SlowToPickle:
    """An item whose pickling (the relay packing its request) lasts until the run has failed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        _packing.set()
        _proceed.wait(5)
        return (_SlowToPickle, (self.path,))


def _slow_item_then_fail(path: str) -> Iterator[Any]:
    yield _SlowToPickle(path)
    _packing.wait(5)  # the relay has taken the item and is packing it
    raise Boom("source")


def _mark_item(item: _SlowToPickle) -> Iterator[int]:
    Path(item.path).write_text("called")
    yield 1


# Found by review (fixed): ProcessRemote.interrupt only wakes the relay when no request is unread, and nothing stops the relay from then posting the batch it holds, so the call  starts in the worker after the run stopped
@pytest.mark.timeout(30)
def test_relay_sends_no_batch_after_its_run_failed(tmp_path: Path) -> None:
    _packing.clear()
    _proceed.clear()
    path = tmp_path / "called"
    p = task(_slow_item_then_fail, branch=True) | task(_mark_item, branch=True, multiprocess=True)
    try:
        with pytest.raises(Boom):
            list(p(str(path)))
    finally:
        _proceed.set()
    time.sleep(1.0)
    assert not path.exists(), "a process stage's call started after its run had failed"


# -- 3. a branching batch in a worker process goes on calling after the cancellation -----------

_SLOW_FROM = 3000


def _fast_then_wait_for_slow_calls(path: str, n: int) -> Iterator[int]:
    yield from range(n)
    log = Path(path)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (log.exists() and log.stat().st_size >= 5 * 8):
        time.sleep(0.005)
    raise Boom("stop")  # five slow calls have been made: the run fails


def _filter_slowly(path: str, x: int) -> tuple[()]:
    if x >= _SLOW_FROM:
        time.sleep(0.02)
        with open(path, "ab") as f:
            f.write(b"%07d\n" % x)
    return ()


# Found by review (fixed): a worker process's branching batch (_serve.fan_out) ignores the cancel the relay sends on the lifeline (_child._cancelled), so it calls the function for every item left in the batch until the worker is terminated
@pytest.mark.timeout(60)
@pytest.mark.parametrize("multiprocess", [False, True])
def test_branching_batch_starts_no_call_after_its_run_failed(multiprocess: bool, tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    p = task(_fast_then_wait_for_slow_calls, branch=True, bind=task.bind(path)) | task(
        _filter_slowly, branch=True, multiprocess=multiprocess, bind=task.bind(path))
    with pytest.raises(Boom):
        list(p(_SLOW_FROM + 200))
    at_stop = os.path.getsize(path) // 8
    time.sleep(1.5)
    after = os.path.getsize(path) // 8
    assert after - at_stop <= 1, f"{after - at_stop} calls started after the run failed"


# -- 4. a join on processes that returns early loses what it was fed ----------------------------


def _with_a_stop_sign(n: int) -> Iterator[int]:
    yield from range(1, 50)
    yield -1
    yield from range(50, n)


def _sum_until_negative(xs: Any) -> int:
    total = 0
    for x in xs:
        if x < 0:
            return total
        total += x
    return total


# Found by review (fixed): a join relay feeds its worker process whole batches, and the items fed but not read by a join function that returns early are dropped (on threads Worker.leave gives them back to the siblings)
@pytest.mark.timeout(60)
@pytest.mark.parametrize("multiprocess", [False, True])
def test_join_returning_early_on_several_workers_loses_no_item(multiprocess: bool) -> None:
    p = task(_with_a_stop_sign, branch=True) | task(_sum_until_negative, join=True, workers=2,
                                                     multiprocess=multiprocess)
    for _ in range(5):
        assert sum(p(400)) == sum(range(1, 400))


# -- 5. a join in a worker process loses a BaseException ------------------------------------


def _exit_at_3(xs: Any) -> int:
    for x in xs:
        if x == 3:
            sys.exit(3)
    return 0


# Found by review (fixed): _serve.Joining._run catches only Exception, so a SystemExit (any BaseException) ends its thread and the join is reported done, without output and without error
@pytest.mark.timeout(60)
@pytest.mark.parametrize("multiprocess", [False, True])
def test_join_reports_system_exit(multiprocess: bool) -> None:
    p = task(range, branch=True) | task(_exit_at_3, join=True, multiprocess=multiprocess)
    with pytest.raises(SystemExit):
        list(p(10))


# -- 6. a branching join in a worker process runs ahead without bound ---------------------------


def _endless(path: str, xs: Any) -> Iterator[int]:
    made = 0
    for _ in xs:
        for i in itertools.count():
            made += 1
            if made % 100 == 0:
                Path(path + ".tmp").write_text(str(made))
                os.replace(path + ".tmp", path)
            yield i


# Found by review (fixed): _serve.Joining's thread appends a branching join's outputs to an unbounded list, however slowly the relay pulls them (throttle= and the channels' room are not felt there)
@pytest.mark.timeout(60)
@pytest.mark.parametrize("multiprocess", [False, True])
def test_branching_join_runs_no_further_ahead_than_the_room_downstream(multiprocess: bool, tmp_path: Path) -> None:
    path = tmp_path / "made"
    path.write_text("0")
    p = task(range, branch=True) | task(_endless, join=True, branch=True, throttle=10,
                                        multiprocess=multiprocess, bind=task.bind(str(path)))
    outputs = p(3)
    try:
        for _ in range(5):
            next(outputs)
            time.sleep(0.1)
        made = int(path.read_text())
    finally:
        outputs.close()
    assert made < 1000, f"{made} outputs made for 5 read, with throttle=10"


# -- 7. Ctrl-C in the thread cache's hand-over --------------------------------------------------


def _inc(x: int) -> int:
    return x + 1


def _line_of(func: Any, text: str) -> int:
    lines, start = inspect.getsourcelines(func)
    for i, line in enumerate(lines):
        if text in line:
            return start + i
    raise AssertionError(f"{text!r} not found in {func.__name__}")


# Found by review (fixed): a worker that spawn took out of _idle but did not wake (Ctrl-C between the two) times out and then waits forever for that wake-up holding  _threads._lock, which deadlocks every later spawn
@pytest.mark.timeout(30)
def test_ctrl_c_in_spawn_loses_no_worker() -> None:
    from pyper._engine import _threads

    p = task(range, branch=True) | task(_inc)
    assert list(p(3)) == [1, 2, 3]  # threads parked for reuse
    with _threads._lock:
        parked = list(_threads._idle[False])
    assert parked
    target = parked[-1]  # the one spawn takes next
    line = _line_of(_threads.spawn, "worker.thread.name = name")
    fired: list[int] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is not _threads.spawn.__code__:
            return None

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "line" and frame.f_lineno == line and not fired:
                fired.append(1)
                raise KeyboardInterrupt  # Ctrl-C between the steps of the hand-over
            return local

        return local

    sys.settrace(tracer)
    try:
        with pytest.raises(KeyboardInterrupt):
            list(p(3))
    finally:
        sys.settrace(None)
    assert fired
    time.sleep(2 * _threads.IDLE_SECONDS + 0.3)  # the worker's wait for a job has timed out
    free = _threads._lock.acquire(timeout=2.0)
    if free:
        _threads._lock.release()
    else:  # let it go (it holds the lock, waiting for a wake-up nobody gives): it must not outlive the test
        target._job = None
        target._wake.release()
        target.thread.join(2)
    with _threads._lock:  # (spawn marked it busy before Ctrl-C: alone() would wait for it at each fork)
        if not target.thread.is_alive():
            _threads._busy.pop(target, None)
    assert free, "the worker waits forever for its wake-up, holding _threads._lock"


# -- 8. two waits for an abandoned-call slot share one cancellation hook ------------------------


# Found by review (fixed): Run's hooks are a dict keyed by the hook, so the workers of a task waiting in Abandoned.add register one hook (its bound _wake) and the first to leave  removes it: the run's cancellation no longer wakes the others
@pytest.mark.timeout(30)
def test_wait_for_an_abandoned_call_slot_is_woken_by_the_runs_cancellation() -> None:
    release = {i: threading.Event() for i in range(4)}
    fail_now = threading.Event()

    def source() -> Iterator[int]:
        yield from range(4)
        fail_now.wait(10)
        raise Boom("source")

    def hang(x: int) -> int:
        release[x].wait(10)
        return x

    stage = task(hang, workers=2, timeout=0.1, on_error="skip")
    abandoned = stage.tasks[0].policy.abandoned
    waiting = lambda: len(abandoned._cond._waiters)  # noqa: E731
    p = task(source, branch=True) | stage
    raised: list[BaseException] = []

    def consume() -> None:
        try:
            list(p())
        except BaseException as exc:
            raised.append(exc)

    caller = threading.Thread(target=consume)
    caller.start()
    try:
        assert wait_until(lambda: waiting() == 2, 5)  # two calls abandoned: both workers wait for a slot
        release[0].set()  # one abandoned call ends: one worker goes on, and leaves the run's hooks
        assert wait_until(lambda: waiting() == 1, 5)
        fail_now.set()  # the run fails: its cancellation must end the other worker's wait
        caller.join(5)
        assert len(raised) == 1 and isinstance(raised[0], Boom)
        stuck = not wait_until(lambda: waiting() == 0, 1.0)
    finally:
        for event in release.values():
            event.set()
        caller.join(5)
    assert not stuck, "a worker waiting for an abandoned-call slot was not woken by the run's cancellation"


# -- 9-10. timeout= on an executor of the user's ---------------------------------------------------


def _slow_0_and_1(x: int) -> int:
    time.sleep({0: 0.7, 1: 0.3}.get(x, 0.0))
    return x


# Found by review (fixed): FuturesRemote keeps the done callback of a future abandoned at its timeout, which sets the one _woken event when that call ends and so times out the next  call long before its deadline
@pytest.mark.timeout(30)
def test_an_abandoned_call_does_not_time_out_the_next_one() -> None:
    failed: list[tuple[int, str]] = []

    def handler(item: int, exc: Exception) -> None:
        failed.append((item, type(exc).__name__))

    with cf.ThreadPoolExecutor(2) as pool:  # room for the abandoned call and the next one
        p = task(range, branch=True) | task(_slow_0_and_1, executor=pool, timeout=0.5, on_error=handler)
        out = list(p(3))
    assert failed == [(0, "TimeoutError")]  # item 1 takes 0.3 s of its 0.5
    assert out == [1, 2]


_stall = threading.Event()


def _stall_on_0(x: int) -> int:
    if x == 0:
        _stall.wait(2.0)
    return x


# Found by review (fixed): on an executor of the user's, timeout= counts the time a call waits in the executor's queue, so the items queued behind one stuck call time out without ever  running (Ray's timed calls count from their start: STARTED)
@pytest.mark.timeout(30)
def test_timeout_on_a_busy_executor_counts_only_the_call() -> None:
    _stall.clear()
    failed: list[tuple[int, str]] = []

    def handler(item: int, exc: Exception) -> None:
        failed.append((item, type(exc).__name__))

    with cf.ThreadPoolExecutor(1) as pool:
        p = task(range, branch=True) | task(_stall_on_0, executor=pool, timeout=0.3, on_error=handler)
        try:
            out = list(p(6))
        finally:
            _stall.set()
    assert failed == [(0, "TimeoutError")]
    assert out == [1, 2, 3, 4, 5]


# -- 11-12. errors from an executor of the user's ------------------------------------------------


def _die_on_3(x: int) -> int:
    if x == 3:
        os._exit(3)
    return x


# Found by review (fixed): FuturesRemote._submit wraps every RuntimeError of submit, and BrokenProcessPool is one, as 'refused the call (was it shut down?)' instead of  WorkerProcessDied
@pytest.mark.timeout(60)
def test_a_broken_process_pool_is_worker_process_died() -> None:
    from concurrent.futures.process import BrokenProcessPool

    with cf.ProcessPoolExecutor(1) as pool:
        p = task(range, branch=True) | task(_die_on_3, executor=pool)
        with pytest.raises(WorkerProcessDied):
            list(p(10))
        with pytest.raises(WorkerProcessDied) as info:  # the next run: the pool is still broken
            list(p(10))
    assert isinstance(info.value.__cause__, BrokenProcessPool)


class _TwoArgs(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")
        self.a, self.b = a, b


def _raise_two_args(x: int) -> int:
    raise _TwoArgs(1, 2)


# Found by review (fixed): a call on a ThreadPoolExecutor shares the caller's process, yet its error is pickled into an envelope and rebuilt, so one that does not round-trip (a two-argument __init__) reaches the caller and on_error as a RuntimeError
@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["thread", "thread pool"])
def test_an_error_on_a_thread_pool_is_the_original_exception(where: str) -> None:
    with cf.ThreadPoolExecutor(2) as pool:
        p = task(range, branch=True) | task(_raise_two_args, **({"executor": pool} if where != "thread" else {}))
        with pytest.raises(_TwoArgs):
            list(p(3))


# -- 13. on_error's handler raising in the relay ----------------------------------------------


class _HandlerBoom(Exception):
    pass


def _fail_on_3(x: int) -> int:
    if x == 3:
        raise Boom("three")
    return x


def _bad_handler(item: Any, exc: Exception) -> None:
    raise _HandlerBoom(f"handler {item}")


# Found by review (fixed): _relay._kept runs the handler without setting worker.item, so an error it raises is noted without its item, as the thread loops note it
@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["thread", "process"])
def test_an_error_of_the_on_error_handler_names_its_item(where: str) -> None:
    p = task(range, branch=True) | task(_fail_on_3, on_error=_bad_handler, multiprocess=where == "process")
    with pytest.raises(_HandlerBoom) as info:
        list(p(10))
    assert any("on item 3" in note for note in getattr(info.value, "__notes__", [])), info.value.__notes__


# -- 14. retry_on= goes to the worker processes unchecked ---------------------------------------


# Found by review (fixed): task() checks that setup= and backoff= pickle for a process stage but not retry_on=, which goes there too: a local exception class fails at run time, blamed  on the pipeline's arguments
@pytest.mark.timeout(30)
def test_an_unpicklable_retry_on_is_refused_at_task_time() -> None:
    class Local(Exception):
        pass

    with pytest.raises(PipelineSetupError, match="retry_on"):
        task(_fail_on_3, multiprocess=True, retries=1, retry_on=Local)
