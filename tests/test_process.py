"""Process stages (multiprocess=True): results, errors, dead workers, early exit, no leftovers.

The functions run in worker processes, so they live at module level (picklable by reference).
The leak fixture checks that every child process is gone after each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import acollect, elapsed, run_async

from pyper import PipelineSetupError, task
from pyper._errors import RemoteTraceback, WorkerProcessDied


class Boom(Exception):
    pass


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    time.sleep(0.5)
    return x * x


def pid_of(x: int) -> tuple[int, int]:
    return x, os.getpid()


def count_to(n: int) -> Any:
    yield from range(n)


def count_forever() -> Any:
    i = 0
    while True:
        yield i
        i += 1


def fan(x: int) -> Any:
    for k in range(x):
        yield (x, k)


def scale(factor: int, x: int, *, offset: int) -> int:
    return factor * x + offset


def boom_on_3(x: int) -> int:
    if x == 3:
        raise Boom(f"no {x}")
    return x


def exit_on_3(x: int) -> int:
    if x == 3:
        os._exit(3)
    return x


def kill_self_on_3(x: int) -> int:  # as the kernel's OOM killer does
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def segfault_on_3(x: int) -> int:
    if x == 3:
        import ctypes
        import faulthandler

        faulthandler.disable()  # pytest's handler would print a dump, then crash the same way
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return x


def sleep_long(x: int) -> int:
    time.sleep(30)
    return x


def identity(x: Any) -> Any:
    return x


@pytest.mark.timeout(30)
def test_map_in_processes_gives_every_output() -> None:
    p = task(count_to, branch=True) | task(square, workers=2, multiprocess=True)
    assert sorted(p(1000)) == [x * x for x in range(1000)]
    assert sorted(p(3)) == [0, 1, 4]  # a second run of the same pipeline


@pytest.mark.timeout(30)
def test_workers_are_separate_processes_running_at_once() -> None:
    p = task(count_to, branch=True) | task(pid_of, workers=4, multiprocess=True)
    with elapsed() as t:
        out = sorted(p(4))
    assert [x for x, _ in out] == [0, 1, 2, 3]
    assert os.getpid() not in {pid for _, pid in out}
    slow = task(count_to, branch=True) | task(slow_square, workers=4, multiprocess=True)
    with elapsed() as t:
        assert sorted(slow(4)) == [0, 1, 4, 9]
    assert t.elapsed < 1.9, f"4 calls of 0.5 s on 4 processes took {t.elapsed:.2f} s"


def my_pid(*args: Any) -> int:
    return os.getpid()


def same(x: int) -> int:
    return x


@pytest.mark.timeout(30)
def test_a_plain_first_task_in_a_process_runs_in_a_process() -> None:
    """A first task called once, with no per-call options, ran inline in the caller's own
    process: the inline rule looked at its kind and options, never at where it should run."""
    assert list((task(my_pid, multiprocess=True) | task(same))()) != [os.getpid()]
    assert list((task(my_pid, executor="process") | task(same))()) != [os.getpid()]
    assert list(task(my_pid, multiprocess=True)()) != [os.getpid()]

    async def asame(x: int) -> int:
        return x

    async def main() -> list[int]:
        return await acollect((task(my_pid, multiprocess=True) | task(asame))())

    assert run_async(main()) != [os.getpid()]


class HTTPError(Exception):
    """Its ``__init__`` takes other arguments than it gives ``Exception``: it pickles, but
    unpickling calls ``HTTPError("404 http://...")``, which raises ``TypeError``."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"{status} {url}")
        self.status, self.url = status, url


def not_found(x: int) -> int:
    raise HTTPError(404, f"http://example.invalid/{x}")


@pytest.mark.timeout(30)
def test_an_exception_that_does_not_unpickle_still_arrives_with_its_item_and_traceback() -> None:
    """It came back as pickle's own TypeError, naming no item and with no remote traceback."""
    p = task(count_to, branch=True) | task(not_found, multiprocess=True)
    with pytest.raises(RuntimeError) as info:
        list(p(3))
    error = info.value
    assert "task 'not_found' raised HTTPError: 404 http://example.invalid/0 in its worker process" in str(error)
    assert "could not be unpickled here: TypeError" in str(error)
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "raise HTTPError(404" in error.__cause__.text
    assert "pyper: raised in task 'not_found' on item 0" in error.__notes__


@pytest.mark.timeout(30)
def test_generators_in_processes_fan_out_first_task_included() -> None:
    p = task(count_to, multiprocess=True) | task(fan, workers=2, multiprocess=True)
    for _ in range(5):  # two process stages in a row, several runs
        assert sorted(p(5)) == sorted((x, k) for x in range(5) for k in range(x))


@pytest.mark.timeout(30)
def test_bind_and_ordered_in_processes() -> None:
    p = task(count_to, branch=True) | task(
        scale, workers=3, multiprocess=True, ordered=True, bind=task.bind(10, offset=1)
    )
    assert list(p(200)) == [10 * x + 1 for x in range(200)]


@pytest.mark.timeout(30)
def test_async_pipeline_with_a_process_stage() -> None:
    async def ainc(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    p = task(count_to, branch=True) | task(square, workers=2, multiprocess=True) | task(ainc)
    assert sorted(run_async(acollect(p(50)))) == sorted(x * x + 1 for x in range(50))


@pytest.mark.timeout(30)
def test_break_stops_an_infinite_generator_in_a_process() -> None:
    p = task(count_forever, multiprocess=True) | task(square, multiprocess=True)
    out = []
    with elapsed() as t:
        for x in p():
            out.append(x)
            if len(out) == 100:
                break
    assert out == [x * x for x in range(100)]
    assert t.elapsed < 10


@pytest.mark.timeout(30)
def test_error_in_a_child_is_the_original_with_its_traceback() -> None:
    p = task(count_to, branch=True) | task(boom_on_3, workers=2, multiprocess=True)
    with pytest.raises(Boom, match="no 3") as ei:
        list(p(10))
    cause = ei.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "boom_on_3" in cause.text and "Boom: no 3" in cause.text


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("func", "how"), [
    (exit_on_3, "exited with code 3"), (kill_self_on_3, "SIGKILL"), (segfault_on_3, "SIGSEGV"),
])
def test_a_dead_child_is_a_clear_error(func: Any, how: str) -> None:
    p = task(count_to, branch=True) | task(func, workers=2, multiprocess=True)
    with elapsed() as t, pytest.raises(WorkerProcessDied, match=how) as ei:
        list(p(10))
    assert func.__name__ in str(ei.value)
    assert t.elapsed < 5


def first_fast_then_stuck(x: int) -> int:
    if x:
        time.sleep(30)
    return x


@pytest.mark.timeout(30)
def test_error_elsewhere_stops_children_stuck_in_calls() -> None:
    def fail(x: int) -> int:
        raise Boom(f"downstream {x}")

    p = task(count_to, branch=True) | task(first_fast_then_stuck, workers=2, multiprocess=True) | task(fail)
    with elapsed() as t, pytest.raises(Boom, match="downstream 0"):
        list(p(4))
    assert t.elapsed < 5  # the stuck child was terminated after the grace period


@pytest.mark.timeout(30)
def test_break_while_a_child_is_stuck_returns_promptly() -> None:
    p = task(count_to, branch=True) | task(first_fast_then_stuck, workers=2, multiprocess=True)
    with elapsed() as t:
        for x in p(4):
            assert x == 0
            break
    assert t.elapsed < 5


def test_unpicklable_function_fails_at_task_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyper import _pickling

    monkeypatch.setattr(_pickling, "_cloudpickle", lambda: None)  # as without the extra
    with pytest.raises(PipelineSetupError, match="cannot be pickled") as ei:
        task(lambda x: x, multiprocess=True)
    assert isinstance(ei.value, RuntimeError)

    def nested(x: int) -> int:
        return x

    with pytest.raises(RuntimeError, match="nested"):
        task(nested, multiprocess=True)


@pytest.mark.timeout(30)
def test_unpicklable_input_is_a_clear_error() -> None:
    def locks(n: int) -> Any:
        for i in range(n):
            yield i  # a batch may hold these too: the error names only what fails
            yield threading.Lock()

    p = task(locks) | task(identity, multiprocess=True)
    with pytest.raises(TypeError, match=r"task 'identity'.*an input of type lock cannot be pickled"):
        list(p(2))


def make_lock(x: int) -> Any:
    return threading.Lock()


def yield_a_lock(x: int) -> Any:
    yield x
    yield threading.Lock()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("func", [make_lock, yield_a_lock])
def test_unpicklable_output_is_a_clear_error(func: Any) -> None:
    p = task(count_to, branch=True) | task(func, workers=2, multiprocess=True)
    with elapsed() as t, pytest.raises(TypeError, match=rf"task '{func.__name__}'.*output of type lock cannot be pickled"):
        list(p(3))
    assert t.elapsed < 5


@pytest.mark.timeout(30)
def test_unpicklable_pipeline_arguments_for_a_first_process_task_are_a_clear_error() -> None:
    p = task(count_to, branch=True, multiprocess=True)
    with pytest.raises(TypeError, match=r"task 'count_to'.*pipeline's arguments cannot be pickled"):
        list(p(threading.Lock()))  # type: ignore[arg-type]


def test_async_process_tasks_are_refused() -> None:
    async def afunc(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="async"):
        task(afunc, multiprocess=True)


def total(items: Any) -> tuple[int, int]:
    return sum(items), os.getpid()


def running_sums(items: Any) -> Any:
    acc = 0
    for x in items:
        acc += x
        yield acc


def first_three(items: Any) -> list[int]:
    it = iter(items)
    return [next(it), next(it), next(it)]


def join_boom(items: Any) -> int:
    for x in items:
        if x == 50:
            raise Boom("at 50")
    return 0


@pytest.mark.timeout(30)
def test_join_in_a_process_reads_the_whole_stream() -> None:
    p = task(count_to, branch=True) | task(total, join=True, multiprocess=True)
    [(result, pid)] = list(p(10_000))
    assert result == sum(range(10_000)) and pid != os.getpid()


@pytest.mark.timeout(30)
def test_join_generator_in_a_process_streams_its_outputs_lazily() -> None:
    p = task(count_to, branch=True) | task(running_sums, join=True, multiprocess=True)
    assert list(p(2000)) == [x * (x + 1) // 2 for x in range(2000)]
    # An infinite input: the join generator reads only as far as its outputs are pulled.
    q = task(count_forever) | task(running_sums, join=True, multiprocess=True)
    got = []
    for y in q():
        got.append(y)
        if len(got) == 5:
            break
    assert got == [0, 1, 3, 6, 10]


@pytest.mark.timeout(30)
def test_join_in_several_processes_splits_the_stream_between_them() -> None:
    """As on threads: each worker's join call reads its share of the stream (it was refused:
    the old process relay ran one join call for the stage)."""
    p = task(count_to, branch=True) | task(total, join=True, workers=3, multiprocess=True)
    totals = list(p(3000))
    assert len(totals) == 3 and sum(t for t, _ in totals) == sum(range(3000))
    assert len({pid for _, pid in totals}) == 3 and os.getpid() not in {pid for _, pid in totals}


@pytest.mark.timeout(30)
def test_join_in_a_process_returning_early_or_raising() -> None:
    p = task(count_to, branch=True) | task(first_three, join=True, multiprocess=True)
    assert list(p(1000)) == [[0, 1, 2]]
    q = task(count_to, branch=True) | task(join_boom, join=True, multiprocess=True)
    with pytest.raises(Boom, match="at 50") as info:
        list(q(1000))
    assert isinstance(info.value.__cause__, RemoteTraceback)
    # The workers are fit for the next run after both.
    assert list(p(5)) == [[0, 1, 2]]


# A join that returns early on one of several workers loses no item: its siblings read what it
# left, in worker processes as on threads. Bug found by review: a join relay fed its worker
# process whole batches, and the items fed but not read by a join function that returned early
# were dropped (on threads Worker.leave gives them back to the siblings).


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


def _sum_until_negative_then_linger(xs: Any) -> int:
    total = 0
    for x in xs:
        if x < 0:
            time.sleep(0.3)  # the sibling meanwhile reads the rest of the stream to its end
            return total
        total += x
    return total


@pytest.mark.timeout(60)
@pytest.mark.parametrize("multiprocess", [False, True])
def test_a_join_sibling_waits_for_what_an_early_return_gives_back(multiprocess: bool) -> None:
    """The items a join call took and did not read come back to its siblings even when
    they have read everything else: the stream has not ended for them while a sibling
    may give some back. (In a process stage the items fed to the worker cannot be
    stolen: the sibling ended, and they were lost, 3 runs in 5 on a loaded machine.)"""
    p = task(_with_a_stop_sign, branch=True) | task(_sum_until_negative_then_linger, join=True, workers=2,
                                                     multiprocess=multiprocess)
    for _ in range(3):
        assert sum(p(400)) == sum(range(1, 400))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("multiprocess", [False, True])
def test_join_returning_early_on_several_workers_loses_no_item(multiprocess: bool) -> None:
    p = task(_with_a_stop_sign, branch=True) | task(_sum_until_negative, join=True, workers=2,
                                                     multiprocess=multiprocess)
    for _ in range(5):
        assert sum(p(400)) == sum(range(1, 400))


# A SystemExit (any BaseException) raised by a join function in a worker process reaches the
# caller, as on threads. Bug found by review: _serve.Joining._run caught only Exception, so a
# SystemExit ended its thread and the join was reported done, without output and without error.


def _exit_at_3(xs: Any) -> int:
    for x in xs:
        if x == 3:
            sys.exit(3)
    return 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("multiprocess", [False, True])
def test_join_reports_system_exit(multiprocess: bool) -> None:
    p = task(range, branch=True) | task(_exit_at_3, join=True, multiprocess=multiprocess)
    with pytest.raises(SystemExit):
        list(p(10))


# A branching join in a worker process runs no further ahead than the room downstream
# (throttle=), as on threads. Bug found by review: _serve.Joining's thread appended a branching
# join's outputs to an unbounded list, however slowly the relay pulled them (throttle= and the
# channels' room were not felt there).


def _endless(path: str, xs: Any) -> Iterator[int]:
    made = 0
    for _ in xs:
        for i in itertools.count():
            made += 1
            if made % 100 == 0:
                Path(path + ".tmp").write_text(str(made))
                os.replace(path + ".tmp", path)
            yield i


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


def sixty_four_kib(n: int) -> Any:
    for x in range(n):
        yield bytes([x % 256]) * (1 << 16)  # distinct objects: pickle's memo cannot fold them


def byte_length(b: bytes) -> int:
    return len(b)


@pytest.mark.timeout(60)
def test_batches_of_large_items_stay_within_the_byte_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyper._engine import _process, _workers

    sizes: list[int] = []
    real_post, real_receive = _workers.Child.post, _workers.Child.receive

    def post(self: Any, data: bytes, join: bool = False) -> int:  # every request goes through it
        sizes.append(real_post(self, data, join))
        return sizes[-1]

    def receive(self: Any) -> Any:
        reply = real_receive(self)
        sizes.append(self.received)
        return reply

    monkeypatch.setattr(_workers.Child, "post", post)
    monkeypatch.setattr(_workers.Child, "receive", receive)
    monkeypatch.setattr(_process, "MAX_BATCH_BYTES", 200_000)  # three items
    # A cheap call on large items: batches grow on time, but not past the byte cap.
    p = task(sixty_four_kib, branch=True) | task(byte_length, workers=2, multiprocess=True)
    assert list(p(3000)) == [1 << 16] * 3000
    item = (1 << 16) + 100
    assert max(sizes) <= _process.MAX_BATCH_BYTES + item, (max(sizes), sorted(sizes)[-20:])
    assert sum(s > item for s in sizes) > 0  # batches did grow past one item


def record_past_and_fail(path: str, fail_at: int, x: int) -> int:
    """Cheap until ``fail_at`` (which raises); a call on an item past it writes to ``path``."""
    if x == fail_at:
        raise Boom(f"no {x}")
    if x > fail_at:
        with open(path, "a") as f:
            f.write(f"{x}\n")
    return x


def quarter_mib(x: int) -> bytes:
    return bytes([x % 256]) * (1 << 18)


def _pipe_sizes() -> list[int]:
    import fcntl

    from pyper._engine import _workers

    with _workers.idle_lock:
        children = list(_workers.opened)
    sizes = []
    for end in (end for c in children for end in (c.to_child, c.from_child)):
        try:
            sizes.append(fcntl.fcntl(end.fileno(), fcntl.F_GETPIPE_SZ))
        except OSError:  # closed meanwhile: its relay's input ran out
            pass
    return sizes


@pytest.mark.timeout(30)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipe sizes are Linux's")
def test_pipes_widen_only_for_large_items_and_within_a_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyper
    from pyper._engine import _workers

    pyper.set_start_method(None)  # (closes the workers kept warm by other tests: fork server's)
    monkeypatch.setattr(_workers, "PIPE_BUDGET", 2 * (_workers.PIPE_BYTES - _workers.NARROW_BYTES))
    seen: list[list[int]] = []

    def probe(x: Any) -> Any:
        seen.append(_pipe_sizes())
        return x

    small = task(count_to, branch=True) | task(square, workers=4, multiprocess=True) | task(probe)
    assert sorted(small(200)) == [x * x for x in range(200)]
    assert seen and all(size <= _workers.NARROW_BYTES for sizes in seen for size in sizes)
    seen.clear()
    large = task(count_to, branch=True) | task(quarter_mib, workers=4, multiprocess=True) | task(probe)
    assert sorted(b[0] for b in large(40)) == list(range(40))
    widest = max(sum(size > _workers.NARROW_BYTES for size in sizes) for sizes in seen)
    assert 1 <= widest <= 2, seen  # the budget held, over all the stage's workers
    pyper.set_start_method(None)  # (closes the workers kept warm, if the fork server's)
    assert _workers._widened == 0  # given back as the workers closed


@pytest.mark.timeout(60)
def test_no_call_starts_after_an_error_with_a_batch_sent_ahead(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cheap batches go to the child two at a time (one sent before the last one's reply is
    read): after an error, the one sent ahead is skipped, and the child, in step with its
    relay again, serves the next run in full."""
    from pyper._engine import _workers

    ahead: list[int] = []  # requests sent while another one's reply was unread
    real_post = _workers.Child.post

    def post(self: Any, data: bytes, join: bool = False) -> int:
        if self.unread:
            ahead.append(len(data))
        return real_post(self, data, join)

    monkeypatch.setattr(_workers.Child, "post", post)
    path = str(tmp_path / "past")
    record = task(record_past_and_fail, workers=1, multiprocess=True, bind=task.bind(path, 20_000))
    p = task(count_to, branch=True) | record
    for _ in range(3):
        with pytest.raises(Boom, match="no 20000"):
            list(p(40_000))
        assert not os.path.exists(path), f"calls after the error: {open(path).read().split()[:10]}"
        assert ahead, "no request was sent ahead: the test does not test it"
        assert list(p(20_000)) == list(range(20_000))  # the warm child again, every output


def eight_times(x: str) -> str:
    return x * 8


def long_strings(n: int) -> Any:
    for i in range(n):
        yield f"{i:05d}" + "x" * 995


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(__import__("fcntl"), "F_SETPIPE_SZ"), reason="Linux sets a pipe's size")
def test_small_pipes_never_deadlock_a_request_sent_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user past fs.pipe-user-pages-soft gets one-page pipes: a request sent ahead must
    still fit while the child blocks sending a reply larger than the pipe."""
    import fcntl

    from pyper._engine import _workers

    real_init = _workers.Child.__init__

    def small_pipes(self: Any, *args: Any) -> None:
        real_init(self, *args)
        for end in (self.to_child, self.from_child):
            fcntl.fcntl(end.fileno(), fcntl.F_SETPIPE_SZ, 4096)
        self.ahead_bytes = _workers._ahead_bytes(self.to_child.fileno())  # as it would be made

    monkeypatch.setattr(_workers.Child, "__init__", small_pipes)
    p = task(long_strings, branch=True) | task(eight_times, multiprocess=True)
    out = list(p(3000))
    assert len(out) == 3000 and out[-1] == ("02999" + "x" * 995) * 8


@contextlib.contextmanager
def no_resource() -> Any:
    yield None


def stamp_slow_calls(resource: None, path: str, cheap: int, x: int) -> int:
    """Cheap for the first ``cheap`` items (batches grow large), then 4 ms each, each
    call's start time written to ``path``."""
    if x >= cheap:
        with open(path, "a") as f:
            f.write(f"{time.time()}\n")
        time.sleep(0.004)
    return x


def fail_at(stop_path: str, k: int, x: int) -> int:
    if x == k:
        with open(stop_path, "w") as f:
            f.write(f"{time.time()}")
        raise Boom("downstream")
    return x


@pytest.mark.timeout(60)
def test_a_cancelled_run_starts_no_more_calls_of_a_batch_in_a_process(tmp_path: Any) -> None:
    """Calls turn slow after batches grew on cheap ones: when the run is cancelled (an
    error downstream), the child stops at once, mid-batch, instead of working through its
    batches (a thousand 4 ms calls: seconds of calls started after the error, which the
    exit of its resource, setup=, would wait for)."""
    calls, stop = str(tmp_path / "calls"), str(tmp_path / "stop")
    k = 20_000
    p = (task(count_to, branch=True)
         | task(stamp_slow_calls, multiprocess=True, bind=task.bind(calls, k), setup=no_resource)
         | task(fail_at, bind=task.bind(stop, k - 1)))
    assert list(p(10)) == list(range(10))  # a warm worker, as for a program's second run
    with elapsed() as t, pytest.raises(Boom, match="downstream"):
        list(p(2 * k))
    time.sleep(0.5)  # a child that went on would write its calls meanwhile
    stopped = float(Path(stop).read_text())
    starts = [float(line) for line in Path(calls).read_text().split()] if os.path.exists(calls) else []
    late = [s for s in starts if s > stopped + 0.01]
    assert len(late) <= 1, f"{len(late)} calls started after the error ({len(starts)} in all)"
    assert t.elapsed < 10


# A process first task is not called once its run has failed. Bug found by review: a process
# first task's relay that got its worker after the run had failed took the (never cancelled)
# source item and sent the call to its worker process.

_taking = threading.Event()
_failing = threading.Event()


def _stay(resource: Any, x: Any) -> Any:
    return x


def _mark_then_yield(path: str) -> Iterator[int]:
    Path(path).write_text("called")
    yield 1


def _failing_setup_after_take() -> None:
    _taking.wait(5)
    _failing.set()
    raise Boom("setup")


@pytest.mark.timeout(60)
def test_first_process_task_is_not_called_after_its_run_failed(
        tmp_path: Path, monkeypatch: Any, forkserver: None) -> None:
    # (the fork server's workers: the relay starts its worker itself, take, as under spawn)
    from pyper._engine import _process

    _taking.clear()
    _failing.clear()
    take = _process.take
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


# A relay sends no batch to its worker process once the run has failed, even one it took before.
# Bug found by review: ProcessRemote.interrupt only woke the relay when no request was unread, and
# nothing stopped the relay from then posting the batch it held, so the call started in the
# worker after the run had stopped.

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


# A branching batch starts no call once its run has failed, in a worker process as on threads.
# Bug found by review: a worker process's branching batch (_serve.fan_out) ignored the cancel the
# relay sends on the lifeline (_child._cancelled), so it called the function for every item left
# in the batch until the worker was terminated.

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


def print_pid_then_stuck(x: int) -> int:
    os.write(1, f"{os.getpid()}\n".encode())  # one write: the two workers' lines never interleave
    time.sleep(60)
    return x


def _assert_gone(pids: list[int], what: str, timeout: float = 5) -> None:
    """Wait until every pid has exited (or is a zombie), else fail saying ``what``."""
    deadline = time.monotonic() + timeout
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in pids), f"workers {pids} outlived {what}"


#: A program whose two process workers print their pids, then hang in their calls
#: (started with the start method named by its second argument, or the default).
_STUCK_WORKERS = (
    "import sys; sys.path.insert(0, sys.argv[1])\n"
    "import multiprocessing\n"
    "from pyper import task\n"
    "from test_process import count_to, print_pid_then_stuck\n"
    "if __name__ == '__main__':\n"
    "    if sys.argv[2:]: multiprocessing.set_start_method(sys.argv[2])\n"
    "    list((task(count_to, branch=True) | task(print_pid_then_stuck, workers=2, multiprocess=True))(2))\n"
)


def _start_stuck_workers(*method: str) -> Any:
    """Run ``_STUCK_WORKERS`` in its own session (so a signal can go to its whole group)."""
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.Popen(
        [sys.executable, "-c", _STUCK_WORKERS, here, *method],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.split()[1:2] == ["Z"] for line in f if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):  # gone, or exiting while its status was read
        return True


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
@pytest.mark.parametrize("method", [[], ["fork"], ["spawn"]], ids=["default", "fork", "spawn"])
def test_workers_die_with_a_parent_killed_by_sigkill(method: list[str]) -> None:
    proc = _start_stuck_workers(*method)
    try:
        assert proc.stdout is not None
        pids = [int(proc.stdout.readline()), int(proc.stdout.readline())]
        proc.kill()  # SIGKILL: no cleanup code of the parent runs
        proc.wait(10)
        _assert_gone(pids, "their parent", timeout=10)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its session
        except ProcessLookupError:
            pass
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def _run_script(script: str, *args: str, timeout: float = 30, env: dict[str, str] | None = None) -> Any:
    """Run ``script`` in a fresh interpreter, with warnings as errors; ``args`` follow
    this directory in its ``sys.argv``, ``env`` is added to its environment."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", script, here, *args], capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


MARK = "imported"  # what a worker sees: set anew by a parent only a forked child inherits


def mark_of(x: int) -> tuple[int, str]:
    return x, MARK


def other_mark_of(x: int) -> tuple[int, str]:
    return x, MARK


def third_mark_of(x: int) -> tuple[int, str]:
    return x, MARK


def fourth_mark_of(x: int) -> tuple[int, str]:
    return x, MARK


def inc_mark(x: int) -> int:
    assert MARK == "set at run time", "not forked"
    return x + 1


_FORK_PROGRAM = (
    "import sys, threading; sys.path.insert(0, sys.argv[1])\n"
    "import multiprocessing\n"
    "from pyper import task\n"
    "import test_process as t\n"
    "if __name__ == '__main__':\n"
    "    exec(sys.argv[2])  # the choice of fork (or none: the default, on Linux)\n"
    "    t.MARK = 'set at run time'\n"
    "    p = task(t.count_to, branch=True) | task(t.square, workers=2) | task(t.mark_of, workers=2, multiprocess=True)\n"
    "    for _ in range(2):  # again: pyper's threads of the first run are parked now\n"
    "        print(sorted(p(4)))\n"
    "    q = task(t.count_to, branch=True) | task(t.other_mark_of, workers=2, multiprocess=True)\n"
    "    print(sorted(q(2)))  # new workers, forked after a run\n"
    "    from pyper._engine import _workers\n"
    "    import time; spans = []; close = _workers.Child.close\n"
    "    def timed(self):\n"
    "        began = time.perf_counter(); close(self); spans.append(time.perf_counter() - began)\n"
    "    _workers.Child.close = timed\n"
    "    two = task(t.count_to, branch=True) | task(t.inc_mark, multiprocess=True) | task(t.third_mark_of, multiprocess=True)\n"
    "    print(sorted(two(2)))  # two process stages: both forked before any thread\n"
    "    print(len(_workers.idle_processes()), len(spans), max(spans) < 0.15)\n"
    "    stop = threading.Event()\n"
    "    user = threading.Thread(target=stop.wait); user.start()  # a thread of the user's\n"
    "    r = task(t.count_to, branch=True) | task(t.third_mark_of, workers=2, multiprocess=True)\n"
    "    print(sorted(r(2)))  # not forked while it runs: started by the fork server\n"
    "    stop.set(); user.join()\n"
    "    import faulthandler, os\n"
    "    faulthandler.dump_traceback_later(60)  # a thread of C's (its watchdog): unseen by threading\n"
    "    from pyper._engine import _threads\n"
    "    assert threading.active_count() == 1 + len(_threads.idle_threads())  # pyper's parked ones\n"
    "    assert len(os.listdir('/proc/self/task')) > threading.active_count()\n"
    "    s = task(t.count_to, branch=True) | task(t.fourth_mark_of, multiprocess=True)\n"
    "    print(sorted(s(2)))  # the system counts two threads: not forked either\n"
    "    faulthandler.cancel_dump_traceback_later()\n"
)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is the default on Linux only")
@pytest.mark.parametrize("choice", [
    "multiprocessing.set_start_method('fork')", "import pyper; pyper.set_start_method('fork')",
    "pass  # the default",
])
def test_fork_start_method_forks_only_while_no_thread_runs(choice: str) -> None:
    done = _run_script(_FORK_PROGRAM, choice, env={"PYPER_START_METHOD": ""})
    assert done.returncode == 0, done.stderr  # warnings are errors: no fork of a threaded process
    forked = "set at run time"
    assert done.stdout.splitlines() == [
        str([(0, forked), (1, forked), (4, forked), (9, forked)]),
        str([(0, forked), (1, forked), (4, forked), (9, forked)]),
        str([(0, forked), (1, forked)]),
        str([(1, forked), (2, forked)]),
        "0 2 True",  # forked workers are not kept: closed as the run ends, each exiting when asked
        str([(0, "imported"), (1, "imported")]),
        str([(0, "imported"), (1, "imported")]),
    ]


def started_how(x: int) -> tuple[int, str, int]:
    return x, MARK, os.getppid()


def started_how_slowly(x: int) -> tuple[int, str, int]:
    if x:
        time.sleep(0.5)
    return started_how(x)


def switch_to_spawn(x: Any) -> Any:
    import pyper

    if not x[0]:
        pyper.set_start_method("spawn")  # while another worker is still in its call
    return x


_METHOD_PROGRAM = (
    "import sys, os; sys.path.insert(0, sys.argv[1])\n"
    "import multiprocessing, pyper\n"
    "from pyper import task\n"
    "import test_process as t\n"
    "def how(p=None):  # what started this run's two workers, seen from them\n"
    "    p = p or task(t.count_to, branch=True) | task(t.started_how, workers=2, multiprocess=True)\n"
    "    seen = {'fork' if mark != 'imported' else 'spawn' if ppid == os.getpid() else 'forkserver'\n"
    "            for _, mark, ppid in p(2)}\n"
    "    return ','.join(sorted(seen))\n"
    "if __name__ == '__main__':\n"
    "    t.MARK = 'set at run time'  # only a forked worker sees it\n"
    "    exec(sys.argv[2])\n"
)


@pytest.mark.timeout(90)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the default is fork on Linux only")
@pytest.mark.parametrize(("environment", "program", "printed"), [
    ("", "print(how())", "fork"),  # the default, in a program that runs no thread
    ("spawn", "print(how())", "spawn"),
    ("spawn", "multiprocessing.set_start_method('forkserver'); print(how())", "forkserver"),
    ("", "multiprocessing.set_start_method('forkserver'); pyper.set_start_method('spawn'); print(how())", "spawn"),
    # warm workers of an earlier method are closed: the next run starts them the new way
    ("", "print(how()); pyper.set_start_method('forkserver'); print(how()); pyper.set_start_method(None); print(how())",
     "fork\nforkserver\nfork"),
    # and so are those at work when it changes, as their run ends
    ("", "pyper.set_start_method('forkserver'); p = task(t.count_to, branch=True) | task(t.started_how_slowly, "
         "workers=2, multiprocess=True) | task(t.switch_to_spawn); how(p); print(how(p))", "spawn"),
])
def test_the_start_method_is_ours_then_multiprocessings_then_the_environments(
        environment: str, program: str, printed: str) -> None:
    done = _run_script(_METHOD_PROGRAM, program, env={"PYPER_START_METHOD": environment})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == printed


@pytest.mark.timeout(60)
def test_an_unknown_start_method_is_a_clear_error() -> None:
    import pyper

    with pytest.raises(ValueError, match=r"pyper.set_start_method\('threads'\): this platform's start methods are .*'spawn'"):
        pyper.set_start_method("threads")  # type: ignore[arg-type]
    done = _run_script(_METHOD_PROGRAM, "print(how())", env={"PYPER_START_METHOD": "threads"})
    assert done.returncode == 1
    assert "ValueError: PYPER_START_METHOD='threads' in the environment: this platform's start methods" in done.stderr


@pytest.mark.timeout(60)
def test_spawn_start_method_is_honoured() -> None:
    done = _run_script(
        "import sys, os; sys.path.insert(0, sys.argv[1])\n"
        "import multiprocessing\n"
        "from pyper import task\n"
        "from test_process import count_to, pid_of\n"
        "if __name__ == '__main__':\n"
        "    multiprocessing.set_start_method('spawn')\n"
        "    out = sorted((task(count_to, branch=True) | task(pid_of, workers=2, multiprocess=True))(4))\n"
        "    assert [x for x, _ in out] == [0, 1, 2, 3], out\n"
        "    assert os.getpid() not in {p for _, p in out}\n"
        "    from pyper._engine import _workers\n"
        "    print(_workers.context().get_start_method())\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "spawn"


@pytest.mark.timeout(60)
def test_a_function_the_worker_cannot_import_is_a_clear_error() -> None:
    # Defined in the __main__ of a `python -c` program: a spawned worker cannot import it.
    done = _run_script(
        "import multiprocessing\n"
        "from pyper import task\n"
        "def double(x):\n"
        "    return 2 * x\n"
        "if __name__ == '__main__':\n"
        "    multiprocessing.set_start_method('spawn')\n"
        "    try:\n"
        "        list((task(range, branch=True) | task(double, multiprocess=True))(3))\n"
        "    except RuntimeError as exc:\n"
        "        print('ERROR', exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "could not load the task's function" in done.stdout, done.stdout + done.stderr
    assert "importable module" in done.stdout


_SIGNALS_PROGRAM = (
    "import sys, os, signal, asyncio; sys.path.insert(0, sys.argv[1])\n"
    "from pyper import task\n"
    "import test_process as t\n"
    "MAIN = os.getpid()\n"
    "def on_term(signum, frame):\n"
    "    print('handler ran in', 'the program' if os.getpid() == MAIN else 'a worker', flush=True)\n"
    "    sys.exit(0)\n"
    "p = task(t.count_to, branch=True) | task(t.first_fast_then_stuck, multiprocess=True)\n"
    "async def same(x):\n"
    "    return x\n"
    "async def serve():\n"
    "    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, print, 'the loop was told of a SIGTERM')\n"
    "    async for x in (p | task(same))(2):\n"
    "        break  # the worker is stuck in a call: pyper terminates it\n"
    "    await asyncio.sleep(1.0)  # past pyper's grace: the worker is terminated by then\n"
    "if __name__ == '__main__':\n"
    "    signal.signal(signal.SIGTERM, on_term)\n"
    "    for x in p(2):\n"
    "        break\n"
    "    asyncio.run(serve())\n"
    "    print('done')\n"
)


@pytest.mark.timeout(60)
def test_a_worker_pyper_terminates_runs_none_of_the_programs_signal_handlers() -> None:
    """A forked worker starts with the program's signal handlers and an event loop's
    wake-up descriptor: terminated, it must neither run the one nor wake the other."""
    done = _run_script(_SIGNALS_PROGRAM)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["done"]


@pytest.mark.timeout(60)
def test_ctrl_c_shows_one_keyboard_interrupt_and_leaves_no_process() -> None:
    proc = _start_stuck_workers()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        pids = [int(proc.stdout.readline()), int(proc.stdout.readline())]
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole group
        code = proc.wait(10)
        err = proc.stderr.read()
        assert code != 0
        assert err.count("KeyboardInterrupt") == 1, err
        _assert_gone(pids, "the Ctrl-C")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_without_cloudpickle_the_error_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyper import _pickling

    monkeypatch.setattr(_pickling, "_cloudpickle", lambda: None)
    with pytest.raises(PipelineSetupError, match=r"python-pyper\[cloudpickle\]"):
        task(lambda x: x, multiprocess=True)
    with pytest.raises(PipelineSetupError, match="bind"):
        task(scale, multiprocess=True, bind=task.bind(threading.Lock(), offset=1))


@pytest.fixture
def forkserver() -> Iterator[None]:
    """The fork server's workers for this test (pyper's default forks on Linux)."""
    import pyper

    pyper.set_start_method("forkserver")
    try:
        yield
    finally:
        pyper.set_start_method(None)


@pytest.mark.timeout(30)
def test_calling_a_pipeline_again_reuses_its_warm_workers(forkserver: None) -> None:
    p = task(count_to, branch=True) | task(pid_of, workers=2, multiprocess=True)
    first = {pid for _, pid in p(20)}
    with elapsed() as t:
        second = {pid for _, pid in p(20)}
    assert second <= first and second, (first, second)  # no process started for the second run
    assert t.elapsed < 1.0


@pytest.mark.timeout(30)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is the default on Linux only")
def test_forked_workers_hold_nothing_of_the_program_past_the_run(tmp_path: Path) -> None:
    """A fork holds a copy of every descriptor the program had open: kept warm, it would
    keep a pipe's other end open (a reader never sees its end) and a socket's port bound."""
    import socket
    import subprocess

    reader = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        p = task(count_to, branch=True) | task(pid_of, workers=2, multiprocess=True)
        first = {pid for _, pid in p(4)}
        assert {pid for _, pid in p(4)}.isdisjoint(first)  # forked anew: none was kept
        out, _ = reader.communicate(b"the end\n", timeout=5)  # no worker holds cat's stdin
        assert out == b"the end\n"
        server.close()
        with pytest.raises(ConnectionRefusedError):  # no worker holds the port
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        socket.create_server(("127.0.0.1", port)).close()
    finally:
        server.close()
        if reader.poll() is None:
            reader.kill()
        reader.wait(5)
        for stream in (reader.stdin, reader.stdout):
            if stream is not None:
                stream.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_warm_workers_never_run_stale_code_and_leave_nothing_at_exit(tmp_path: Any, method: str) -> None:
    (tmp_path / "late.py").write_text("def f(x):\n    return ('v1', x)\n")
    script = (
        "import sys, os, importlib; sys.path.insert(0, sys.argv[1])\n"
        "import pyper\n"
        "from pyper import task\n"
        "from test_process import count_to, pid_of\n"
        "if __name__ == '__main__':\n"
        f"    pyper.set_start_method({method!r})\n"
        "    p = task(count_to, branch=True) | task(pid_of, workers=2, multiprocess=True)\n"
        "    pids = {pid for _, pid in p(10)} | {pid for _, pid in p(10)}\n"
        "    sys.path.insert(0, sys.argv[2])\n"
        "    import late  # a module, and a function, that appear after the workers started\n"
        "    assert sorted((task(count_to, branch=True) | task(late.f, multiprocess=True))(2)) == [('v1', 0), ('v1', 1)]\n"
        "    open(os.path.join(sys.argv[2], 'late.py'), 'w').write(\"def f(x):\\n    return ('v2', x)\\n\")\n"
        "    importlib.invalidate_caches(); importlib.reload(late)\n"
        "    out = sorted((task(count_to, branch=True) | task(late.f, multiprocess=True))(2))\n"
        "    assert out == [('v2', 0), ('v2', 1)], out\n"
        "    print(' '.join(map(str, sorted(pids))))\n"
    )
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    with elapsed() as t:
        done = subprocess.run(
            [sys.executable, "-c", script, here, str(tmp_path)], capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 0, done.stderr
    assert t.elapsed < 10
    pids = [int(p) for p in done.stdout.split()]
    assert pids
    _assert_gone(pids, "the program")


# The original's documented CPU-bound examples (docs: ApiReference/task.md `multiprocess`,
# UserGuide/AdvancedConcepts.md "CPU-bound work"), with shorter loops.


def slow_func(data: int) -> int:
    for i in range(1, 200_000):
        i *= i
    return data


def long_computation(data: int) -> int:
    for i in range(1, 2_000):
        data *= i
    return data


@pytest.mark.timeout(60)
def test_the_originals_documented_cpu_bound_examples() -> None:
    pipeline = task(range, branch=True) | task(slow_func, workers=20, multiprocess=True)
    assert sorted(pipeline(20)) == list(range(20))  # 20 workers: 20 processes, on 2 cores
    # The docs' `pipeline = task(long_computation, workers=10, multiprocess=True)` alone
    # is a first task with workers > 1: the original raises RuntimeError on it, as we do.
    with pytest.raises(RuntimeError, match="first task"):
        list(task(long_computation, workers=10, multiprocess=True)(3))
    assert list(task(long_computation, multiprocess=True)(3)) == [long_computation(3)]
    fanned = task(range, branch=True) | task(long_computation, workers=10, multiprocess=True)
    assert sorted(fanned(12)) == sorted(long_computation(x) for x in range(12))


def sleep_then_identity(x: int) -> int:
    from pyper._engine._process import PROCESS_TARGET_SECONDS

    time.sleep(PROCESS_TARGET_SECONDS * 1.2)  # slower than a batch aims to take: one item each
    return x


@pytest.mark.timeout(30)
@pytest.mark.parametrize("workers", [1, 3])
def test_the_input_pulled_ahead_of_a_process_stage_is_a_few_batches(workers: int) -> None:
    """Calls slower than a batch aims to take keep batches at one item; the edge in front holds PROCESS_AHEAD of them
    per worker, and each worker has one in its child: the producer runs no further ahead."""
    from pyper._engine._run import PROCESS_AHEAD

    pulled = [0]

    def produce() -> Any:
        while True:
            pulled[0] += 1
            yield pulled[0]

    p = task(produce, branch=True) | task(sleep_then_identity, workers=workers, multiprocess=True)
    out = []
    for x in p():
        out.append(x)
        if len(out) == 30:
            break
    assert sorted(out) == out if workers == 1 else len(set(out)) == 30
    ahead = pulled[0] - len(out)
    # In the edge and in the children, plus the one the producer holds and the outputs
    # on their way to the caller (at most one per worker).
    assert ahead <= (PROCESS_AHEAD + 1) * workers + 1 + workers, ahead


_PRELOAD_PROGRAM = """
import multiprocessing, sys
from multiprocessing import forkserver
sys.path.insert(0, sys.argv[1])
from pyper import task
import test_process as t

if __name__ == "__main__":
    multiprocessing.set_start_method("forkserver")
    multiprocessing.set_forkserver_preload(["json"])  # the program's own choice is kept
    assert sorted((task(t.count_to, branch=True) | task(t.square, workers=2, multiprocess=True))(3)) == [0, 1, 4]
    print(forkserver._forkserver._preload_modules)
"""


@pytest.mark.timeout(60)
def test_the_fork_server_preloads_the_worker_loop_keeping_the_programs_own_list() -> None:
    done = _run_script(_PRELOAD_PROGRAM)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['json', 'pyper._engine._child']"


# -- Workers watched as processes ---------------------------------------------------------

#: For the programs these tests run: pyper's default start method, whatever the
#: environment of the test run says (tests/run.sh runs this file under the fork server too).
_DEFAULT_METHOD = {"PYPER_START_METHOD": ""}


def die_leaving_a_grandchild(path: str, how: str, x: int) -> int:
    """Start a process that outlives this one (its pid written to ``path``), then die:
    ``fork`` forks this interpreter, ``system`` starts ``sleep`` through a shell (which
    passes on every descriptor not marked close-on-exec)."""
    if how == "fork":
        pid = os.fork()
        if pid == 0:
            time.sleep(20)
            os._exit(0)
        Path(path + ".tmp").write_text(str(pid))
        os.rename(path + ".tmp", path)
    else:
        os.system(f"sleep 20 & echo $! > {path}.tmp; mv {path}.tmp {path}")
    os._exit(3)


def _kill_pid_in(path: Path) -> None:
    """The test's cleanup: kill the grandchild whose pid a worker wrote to ``path``."""
    if path.exists() and not _gone(pid := int(path.read_text())):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs /proc (Linux)")
@pytest.mark.parametrize(("method", "how", "pidfd"), [
    ("fork", "fork", True), ("spawn", "fork", True), ("spawn", "system", True), ("forkserver", "system", True),
    ("fork", "fork", False), ("spawn", "fork", False),  # as where there are no pidfds: waitpid
])
def test_a_worker_that_dies_leaving_a_process_behind_is_noticed_at_once(
        method: str, how: str, pidfd: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grandchild holds copies of the worker's descriptors (all of them when forked; under
    spawn and the fork server, those marked inheritable when it execs): the relay must watch
    the worker's process itself, not a pipe that stays open, and exec'd programs must get
    none of the worker's pipes."""
    import pyper
    from pyper._engine import _workers

    if not pidfd:
        monkeypatch.setattr(_workers, "_open_pidfd", lambda pid: None)
    path = tmp_path / "grandchild"
    pyper.set_start_method(method)
    try:
        p = task(count_to, branch=True) | task(
            die_leaving_a_grandchild, multiprocess=True, bind=task.bind(str(path), how))
        with elapsed() as t, pytest.raises(WorkerProcessDied, match="exited with code 3"):
            list(p(1))
        assert t.elapsed < 3, f"the worker's death was noticed after {t.elapsed:.1f} s"
        assert _wait_for(path.exists, 5)
        grandchild = int(path.read_text())
        if how == "system":  # a program it ran holds no pipe of the worker's: 0, 1, 2 only
            fds = {int(fd) for fd in os.listdir(f"/proc/{grandchild}/fd")}
            assert fds <= {0, 1, 2}, {fd: os.readlink(f"/proc/{grandchild}/fd/{fd}") for fd in fds}
    finally:
        pyper.set_start_method(None)
        _kill_pid_in(path)


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


_REAPING_PROGRAM = (
    "import sys, os, signal, time, multiprocessing; sys.path.insert(0, sys.argv[1])\n"
    "from pyper import task\n"
    "import test_process as t\n"
    "signalled = []\n"
    "real_kill = os.kill\n"
    "def kill(pid, sig):\n"
    "    signalled.append(pid)\n"
    "    real_kill(pid, sig)\n"
    "def reap_all(signum, frame):\n"
    "    try:\n"
    "        while os.waitpid(-1, os.WNOHANG)[0]:\n"
    "            pass\n"
    "    except ChildProcessError:\n"
    "        pass\n"
    "if __name__ == '__main__':\n"
    "    if sys.argv[3:]:  # as where there are no pidfds: waitpid\n"
    "        import pyper._engine._workers as w; w._open_pidfd = lambda pid: None\n"
    "    os.kill = kill\n"
    "    signal.signal(signal.SIGCHLD, signal.SIG_IGN if sys.argv[2] == 'ignore' else reap_all)\n"
    "    p = task(t.count_to, branch=True) | task(t.pid_of, workers=2, multiprocess=True)\n"
    "    took, pids = [], set()\n"
    "    for _ in range(3):\n"
    "        started = time.monotonic()\n"
    "        out = sorted(p(4))\n"
    "        took.append(time.monotonic() - started)\n"
    "        assert [x for x, _ in out] == [0, 1, 2, 3], out\n"
    "        pids |= {pid for _, pid in out}\n"
    "    assert not multiprocessing.active_children(), multiprocessing.active_children()\n"
    "    print(max(took), sorted(pids & set(signalled)))\n"
)


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("how", ["ignore", "reap", "ignore no-pidfd", "reap no-pidfd"])
def test_a_program_that_reaps_its_children_itself_pays_nothing_and_no_reaped_pid_is_signalled(how: str) -> None:
    """SIGCHLD ignored (the kernel reaps children at once) or a handler that reaps with
    ``waitpid(-1)``: a worker's exit status never comes, which must cost no wait, and its
    pid, free for another process once reaped, must never be signalled."""
    done = _run_script(_REAPING_PROGRAM, *how.split(), env=_DEFAULT_METHOD)
    assert done.returncode == 0, done.stderr
    slowest, signalled = done.stdout.split(" ", 1)
    assert float(slowest) < 0.5, f"a run of 4 trivial items took {float(slowest):.2f} s"
    assert signalled.strip() == "[]", f"reaped workers were signalled: {signalled}"


# -- Workers die with the program, and leave nothing running after Ctrl-C -----------------


def print_pids_then_hold_the_gil(x: int) -> int:
    """Print this worker's pid and its parent's, then compute for minutes in one C call
    that never lets another thread of this process run (no lifeline thread either)."""
    os.write(1, f"{os.getpid()} {os.getppid()}\n".encode())
    return sum(range(10**13))


_HOLDS_THE_GIL = (
    "import sys; sys.path.insert(0, sys.argv[1])\n"
    "import os, pyper\n"
    "from multiprocessing import resource_tracker\n"
    "from pyper import task\n"
    "import test_process as t\n"
    "if __name__ == '__main__':\n"
    "    if sys.argv[2] != 'default':\n"
    "        pyper.set_start_method(sys.argv[2])\n"
    "    resource_tracker.ensure_running()  # (the fork server's; started here to print its pid)\n"
    "    print(os.getpid(), resource_tracker._resource_tracker._pid, flush=True)\n"
    "    list((task(t.count_to, branch=True) | task(t.print_pids_then_hold_the_gil, multiprocess=True))(1))\n"
)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("method", ["default", "fork", "forkserver", "spawn"])
def test_a_worker_holding_the_gil_dies_with_a_program_killed_by_sigkill(method: str) -> None:
    """The lifeline thread cannot run while the worker's call holds the GIL: the kernel
    must kill it (PR_SET_PDEATHSIG). Under forkserver the fork server must go too (it
    ends when no process holds its alive pipe: a worker must not), then the resource
    tracker. Under spawn the workers are started by the starter thread, which lives as
    long as the program (the kernel ties the signal to the starting thread: a relay, which
    ends while its worker is kept warm, would not do)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, "-c", _HOLDS_THE_GIL, here, method], env={**os.environ, **_DEFAULT_METHOD},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        program, tracker = map(int, proc.stdout.readline().split())
        worker, parent = map(int, proc.stdout.readline().split())
        pids = [worker, tracker] + ([parent] if parent != program else [])
        assert method != "forkserver" or parent != program  # the fork server's child
        time.sleep(0.3)  # well into the C call
        proc.kill()
        proc.wait(10)
        _assert_gone(pids, "the program's SIGKILL (worker, resource tracker, fork server)", timeout=5)
    finally:
        for pid in pids:  # whatever is left computes for minutes: not on a shared machine
            if not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def run_a_program_then_wait(x: int) -> int:
    """Start ``sleep 30`` (its pid printed), then wait in the call."""
    import subprocess

    # (not holding the program's output pipes: the test reads them to their end)
    sleeper = subprocess.Popen(["sleep", "30"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.write(1, f"{sleeper.pid}\n".encode())
    time.sleep(30)
    return x


_RUNS_A_PROGRAM = (
    "import sys; sys.path.insert(0, sys.argv[1])\n"
    "import pyper\n"
    "from pyper import task\n"
    "import test_process as t\n"
    "if __name__ == '__main__':\n"
    "    if sys.argv[2] != 'default':\n"
    "        pyper.set_start_method(sys.argv[2])\n"
    "    list((task(t.count_to, branch=True) | task(t.run_a_program_then_wait, multiprocess=True))(1))\n"
)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
@pytest.mark.parametrize("method", ["default", "forkserver", "spawn"])
def test_ctrl_c_reaches_the_programs_a_worker_ran(method: str) -> None:
    """A worker leaves Ctrl-C to pyper, but a program it runs must get the default
    disposition: a SIG_IGN would survive exec, and the program would outlive the Ctrl-C
    that the terminal sent to the whole group."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, "-c", _RUNS_A_PROGRAM, here, method], env={**os.environ, **_DEFAULT_METHOD},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    sleeper = 0
    try:
        assert proc.stdout is not None and proc.stderr is not None
        sleeper = int(proc.stdout.readline())
        time.sleep(0.2)  # the worker is in its call
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole group
        assert proc.wait(10) != 0
        _assert_gone([sleeper], "the Ctrl-C (the program the worker ran)")
        assert proc.stderr.read().count("KeyboardInterrupt") == 1
    finally:
        if sleeper and not _gone(sleeper):
            with contextlib.suppress(ProcessLookupError):
                os.kill(sleeper, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def count_then_note_closed(path: str, x: int) -> Any:
    """Count without end; write ``path`` when closed."""
    try:
        yield from itertools.count(x)
    finally:
        Path(path).write_text("closed")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["first", "middle"])
def test_a_generator_a_break_stopped_is_closed_before_its_warm_worker_is_kept(
        forkserver: None, where: str, tmp_path: Path) -> None:
    """A worker of the fork server is kept warm after the run: a generator the run left
    half read must be closed as the run ends (its ``finally`` runs then), not at the next
    run of the worker or at the program's exit."""
    path = tmp_path / "closed"
    gen = task(count_then_note_closed, branch=True, multiprocess=True, throttle=1, bind=task.bind(str(path)))
    p = gen if where == "first" else task(count_to, branch=True) | gen
    for _ in range(2):  # and again, with the warm worker
        got = []
        for x in p(0) if where == "first" else p(1):
            got.append(x)
            if len(got) == 5:
                # (the relay fills the link meanwhile and waits for room, with no request
                # of its worker's unanswered: as the break finds it most often)
                time.sleep(0.2)
                break
        assert got == [0, 1, 2, 3, 4]
        assert _wait_for(path.exists, 5), "the generator was not closed as the run ended"
        path.unlink()


# -- pyper's own threads never keep it from forking ---------------------------------------

_FORKS_BESIDE_ITS_THREADS = (
    "import os, sys, pyper\n"
    "from pyper import task\n"
    "def count(n):\n"
    "    yield from range(n)\n"
    "def parent_of(x):  # defined in a `python -c` program: a fork server cannot import it\n"
    "    return x, os.getppid()\n"
    "if __name__ == '__main__':\n"
    "    p = task(count, branch=True) | task(parent_of, workers=2, multiprocess=True)\n"
    "    runs = []\n"
    "    if sys.argv[2] == 'progress':\n"
    "        with pyper.progress(bars=False, interval=0.001):  # its thread draws all along\n"
    "            for _ in range(3):\n"
    "                runs.append(sorted(p(4)))\n"
    "    else:\n"
    "        for _ in range(3):\n"
    "            for x in p(4):\n"
    "                break  # the run's threads are still stopping as the next run starts\n"
    "            runs.append(sorted(p(4)))\n"
    "    for out in runs:\n"
    "        assert [x for x, _ in out] == [0, 1, 2, 3], out\n"
    "        assert {ppid for _, ppid in out} == {os.getpid()}, ('not forked', out)\n"
    "    print('forked')\n"
)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is the default on Linux only")
@pytest.mark.parametrize("how", ["progress", "break"])
def test_pyper_forks_beside_its_own_threads(how: str) -> None:
    """pyper's threads are no reason to use the fork server (which cannot import a function
    of a `python -c` program): the progress drawer is paused over the fork, and the threads
    of a run that ended (right after a break) are waited for."""
    done = _run_script(_FORKS_BESIDE_ITS_THREADS, how, env=_DEFAULT_METHOD)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "forked"


@pytest.mark.timeout(30)
def test_a_fork_waits_a_moment_for_the_threads_of_ended_runs_but_never_on_an_event_loop() -> None:
    from pyper._engine import _threads

    release, ended = threading.Event(), object()  # a job of a run that has ended, still busy
    _threads.spawn([(release.wait, "pyper:ending")], daemon=False, nonblocking=False,
                   on_error=lambda exc: None, owner=ended)
    try:
        with elapsed() as t, _threads.alone(lambda owner: owner is ended, wait=0.3) as alone:
            assert not alone  # still busy after the wait: not a thread to fork beside
        assert 0.25 < t.elapsed < 2

        async def on_a_loop() -> float:
            with elapsed() as t, _threads.alone(lambda owner: owner is ended, wait=0.3) as alone:
                assert not alone
            return t.elapsed

        assert run_async(on_a_loop()) < 0.1  # an event loop's thread never stalls on it
        threading.Timer(0.05, release.set).start()
        with elapsed() as t, _threads.alone(lambda owner: owner is ended, wait=5):
            pass
        assert t.elapsed < 2  # the job ended: no longer waited for
    finally:
        release.set()


def read_through_a_ctrl_c(x: int) -> int:
    """A C call blocked in read(2) while Ctrl-C reaches the worker: what read returns (1
    if it went on, -1 if the signal cut it short with EINTR, which C code seldom retries)."""
    import ctypes

    r, w = os.pipe()
    main = threading.get_ident()

    def later() -> None:
        time.sleep(0.2)
        signal.pthread_kill(main, signal.SIGINT)  # (this thread: the one in read)
        time.sleep(0.2)
        os.write(w, b"x")

    helper = threading.Thread(target=later)
    helper.start()
    try:
        return int(ctypes.CDLL(None, use_errno=True).read(r, ctypes.create_string_buffer(1), 1))
    finally:
        helper.join()
        os.close(r)
        os.close(w)


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(signal, "siginterrupt"), reason="POSIX signals")
def test_ctrl_c_does_not_cut_short_a_system_call_in_a_worker() -> None:
    """A worker lets Ctrl-C pass with a handler (not SIG_IGN, which programs it runs would
    inherit); unlike SIG_IGN, a handler interrupts system calls, unless they restart."""
    assert list((task(count_to, branch=True) | task(read_through_a_ctrl_c, multiprocess=True))(1)) == [1]


# -- Ctrl-C while a process stage starts --------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is the default on Linux only")
def test_ctrl_c_as_relays_start_is_a_keyboard_interrupt_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C right after the relays were started, while they take their forked workers
    and the caller closes those no relay took: the caller gets KeyboardInterrupt, no
    thread dies of another error, each worker is closed once (the leak fixture: none left)."""
    from pyper._engine import _relay, _run, _workers

    real_start, real_close = _relay.start, _workers.Child.close
    handed: list[int] = []

    def start(run: Any, stage: Any, workers: range, open_remote: Any) -> None:
        handed.append(len(open_remote.args[1]))  # the forked workers, for the relays to take
        real_start(run, stage, workers, open_remote)
        raise KeyboardInterrupt

    def slow_close(self: Any) -> None:
        time.sleep(0.01)  # the relays take theirs meanwhile
        real_close(self)

    real_enter = _run.Run.enter

    def late_enter(self: Any, *args: Any) -> None:  # relay i takes its worker after i * 5 ms
        name = threading.current_thread().name
        if name.startswith("pyper:square["):
            time.sleep(0.005 * int(name[len("pyper:square["):-1]))
        real_enter(self, *args)

    died: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(f"{args.thread}: {args.exc_value!r}"))
    monkeypatch.setattr(_relay, "start", start)
    monkeypatch.setattr(_workers.Child, "close", slow_close)
    monkeypatch.setattr(_run.Run, "enter", late_enter)
    p = task(count_to, branch=True) | task(square, workers=8, multiprocess=True)
    import pyper

    pyper.set_start_method("fork")  # (whatever PYPER_START_METHOD says)
    try:
        for _ in range(3):
            with pytest.raises(KeyboardInterrupt):
                list(p(100))
    finally:
        pyper.set_start_method(None)
    assert handed and handed[0] == 8, handed  # forked, all (else the test tests nothing)
    assert _wait_for(lambda: not any(t.name.startswith("pyper:square") for t in threading.enumerate()), 5)
    assert not died, died


_SHORT_RUNS_IN_A_LOOP = (
    "import sys, random; sys.path.insert(0, sys.argv[1])\n"
    "from pyper import task\n"
    "import test_process as t\n"
    "if __name__ == '__main__':\n"
    "    random.seed(int(sys.argv[2]))\n"
    "    print('ready', flush=True)\n"
    "    while True:\n"
    "        n = random.randint(20, 70)\n"
    "        assert sorted((task(t.count_to, branch=True) | task(t.square, workers=n, multiprocess=True))(n)) == [\n"
    "            x * x for x in range(n)]\n"
)


def _group_alive(pgid: int) -> list[int]:
    """Processes of the group ``pgid`` that have not exited (zombies aside)."""
    alive = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(name))
    return alive


@pytest.mark.timeout(180)
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc (Linux)")
def test_ctrl_c_at_any_moment_of_short_process_runs_is_one_keyboard_interrupt() -> None:
    """Ctrl-C at random moments of a loop of short runs of 20-70 forked workers (starts,
    relays taking their workers, stops): the program exits with one KeyboardInterrupt and
    no other error, no thread dies, and nothing of it is left running."""
    import random
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    rng = random.Random()
    deadline = time.monotonic() + 100
    runs = 0
    while runs < 20 and time.monotonic() < deadline:
        seed = rng.randrange(1 << 30)
        proc = subprocess.Popen([sys.executable, "-c", _SHORT_RUNS_IN_A_LOOP, here, str(seed)],
                                env={**os.environ, **_DEFAULT_METHOD},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.02, 0.5))
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: the whole group
            again = False
            try:
                code = proc.wait(15)
            except subprocess.TimeoutExpired:
                # CPython prints and drops a KeyboardInterrupt that lands in a weakref
                # callback or __del__ run by the garbage collector ("Exception ignored in":
                # threading's WeakSet of threads, say); the program cannot see it, and goes
                # on. A user presses Ctrl-C again: so does the test, and checks that this is
                # what happened to the first.
                os.killpg(proc.pid, signal.SIGINT)
                again = True
                try:
                    code = proc.wait(15)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"seed {seed}: the program did not exit after Ctrl-C") from None
            err = proc.stderr.read()
            if again:
                dropped = re.compile(r"Exception ignored in: .*?\nKeyboardInterrupt: ?\n", re.S)
                assert dropped.search(err), f"seed {seed}: the program did not exit after Ctrl-C:\n{err}"
                err = dropped.sub("", err, count=1)
            lines = err.strip().splitlines()
            assert code != 0 and lines and lines[-1] == "KeyboardInterrupt", f"seed {seed}:\n{err}"
            assert err.count("Traceback") == 1 and "Exception in thread" not in err, f"seed {seed}:\n{err}"
            assert _wait_for(lambda: not _group_alive(proc.pid), 5), f"seed {seed}: left {_group_alive(proc.pid)}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
        runs += 1
    assert runs >= 10


# -- Scripts without `if __name__ == "__main__":` -----------------------------------------

_NO_MAIN_GUARD = '''\
import os, sys
sys.path.insert(0, {here!r})
from pyper import task

def numbers(n):
    yield from range(n)

def double(x):
    return 2 * x

def square(x):
    return x * x

def record(x):
    with open({log!r}, "a") as f:
        f.write(f"{{x}}\\n")
    return x

{body}
'''


def _run_unguarded(tmp_path: Path, body: str, method: str) -> tuple[Any, list[str]]:
    """Run a script file that has no `if __name__ == "__main__":`, with ``body`` at its
    end, under the start method ``method`` (environment); its output, and the lines
    its ``record`` wrote."""
    import subprocess

    log = tmp_path / "log"
    script = tmp_path / "unguarded.py"
    here = os.path.dirname(os.path.abspath(__file__))
    script.write_text(_NO_MAIN_GUARD.format(here=here, log=str(log), body=body))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYPER_START_METHOD": method}, cwd=str(tmp_path))
    return done, log.read_text().split() if log.exists() else []


@pytest.mark.timeout(90)
def test_a_script_without_the_main_guard_is_refused_under_spawn(tmp_path: Path) -> None:
    """Under spawn a worker imports the main module first: a script without the guard
    ran its whole pipeline again in each worker, silently (each item three times with
    two workers). Like multiprocessing, pyper must refuse, naming the fix."""
    body = "print(sorted((task(numbers, branch=True) | task(square, workers=2, multiprocess=True) | task(record))(4)))"
    done, recorded = _run_unguarded(tmp_path, body, "spawn")
    assert done.returncode != 0, done.stdout + done.stderr
    assert "if __name__ == \"__main__\":" in done.stderr, done.stderr
    assert "task 'square'" in done.stderr, done.stderr
    assert len(recorded) == len(set(recorded)), f"items processed more than once: {recorded}"


@pytest.mark.timeout(90)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is the default on Linux only")
def test_a_nested_process_stage_in_a_script_without_the_main_guard_says_why(tmp_path: Path) -> None:
    """The original's "Nested Pipelines" example, in a script without the guard: the inner
    pipeline runs in a worker thread of the outer one, so its process stage cannot fork
    and uses the fork server, whose worker imports the main module, which runs the
    pipeline again. pyper knows why it used the fork server: it must say so."""
    body = ("inner = task(double) | task(square, multiprocess=True)\n"
            "print(sorted((task(numbers, branch=True) | task(inner, branch=True) | task(record))(4)))")
    done, recorded = _run_unguarded(tmp_path, body, "")
    assert done.returncode != 0, done.stdout + done.stderr
    assert "bootstrapping phase" not in done.stderr, done.stderr  # multiprocessing's, not ours
    explained = [line for line in done.stderr.splitlines() if "inside a worker thread of another pipeline" in line]
    assert explained and "task 'square'" in explained[0], done.stderr
    assert "if __name__ == \"__main__\":" in explained[0], explained[0]
    assert len(recorded) == len(set(recorded)), f"items processed more than once: {recorded}"


def pid_and(x: int) -> tuple[int, int]:
    return os.getpid(), x


@pytest.mark.timeout(30)
def test_a_first_task_in_a_process_runs_in_a_process() -> None:
    """A first task that is one plain call is run inline, in the caller: not one the user
    asked to run in a process (it ran in the caller's thread, holding its GIL)."""
    for p in (task(pid_and, multiprocess=True), task(pid_and, multiprocess=True) | task(identity)):
        [(pid, x)] = list(p(7))
        assert x == 7 and pid != os.getpid()
