"""Per-call options on every executor, a section per option: setup=, retries= (retry_on=,
backoff=), on_error=, unpack=, the item named in errors, validation at task() time, rate=,
batch= (linger=), timeout= and gather(). Each section holds the option's tests, the bugs found
in it by review among them ("Issue 8 review: ...", "Bug found by review: ...", and "Call bug N"
from the call-bugs branch).

Each behaviour runs on threads, asyncio tasks and worker processes. The functions are at
module level so that worker processes can import them; what a process does is seen
through files in a test's temporary directory (bound as the first argument) or through
its outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import acollect, collect as run, elapsed, on, run_async, wait_until
from pyper import AsyncPipeline, Emit, PipelineSetupError, _pickling, task

EXECUTORS = ["thread", "async", "process"]


def source(n: int) -> list[int]:
    return list(range(n))


def numbers() -> Any:
    return task(source, branch=True)


class Boom(Exception):
    pass


# --------------------------------------------------------------------------------------------
# setup=: one resource per worker, a real sqlite3 connection, exited on every path


class Db:
    """A worker's sqlite3 connection; records its opening and closing in the database."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> Db:
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.token = f"{os.getpid()}-{id(self)}"
        self.conn.execute("insert into workers(token, closed) values (?, 0)", (self.token,))
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("update workers set closed = 1 where token = ?", (self.token,))
        self.conn.close()


def make_db(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("create table workers(token text, closed int)")
    conn.execute("create table items(x int, token text)")
    return conn


def store(db: Db, x: int) -> int:
    time.sleep(0.01)  # slow enough that every worker takes items
    db.conn.execute("insert into items(x, token) values (?, ?)", (x, db.token))
    return x


def _db_setup(path: str) -> Any:
    return _DbFactory(path)


class _DbFactory:
    """``setup=`` for a process stage must pickle: a module-level class holding the path."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self) -> Db:
        return Db(self.path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_setup_makes_one_resource_per_worker_and_exits_it(executor: str, tmp_path: Path) -> None:
    path = str(tmp_path / "db.sqlite")
    conn = make_db(path)
    p = numbers() | on(executor, store, workers=3, setup=_db_setup(path))
    assert sorted(run(p, 40)) == list(range(40))
    workers = conn.execute("select token, closed from workers").fetchall()
    assert len(workers) == 3 and all(closed == 1 for _, closed in workers), workers
    rows = conn.execute("select x, token from items").fetchall()
    assert sorted(x for x, _ in rows) == list(range(40))
    assert {token for _, token in rows} <= {token for token, _ in workers}
    assert len({token for _, token in rows}) > 1  # the items were shared between workers
    conn.close()


class Counted:
    """A plain resource (no context manager), and a context manager that counts."""

    made: list[Counted] = []
    exited: list[Counted] = []

    def __init__(self) -> None:
        Counted.made.append(self)

    def __enter__(self) -> Counted:
        return self

    def __exit__(self, *exc: object) -> None:
        Counted.exited.append(self)


@pytest.fixture
def counted() -> Any:
    Counted.made, Counted.exited = [], []
    return Counted


def tag(resource: Any, scale: int, x: int) -> tuple[int, int]:
    return id(resource), x * scale


@pytest.mark.timeout(30)
@pytest.mark.parametrize("executor", ["thread", "async"])
def test_setup_value_comes_before_bound_arguments(executor: str, counted: Any) -> None:
    p = numbers() | on(executor, tag, workers=2, setup=Counted, bind=task.bind(10))
    out = run(p, 6)
    assert sorted(x for _, x in out) == [0, 10, 20, 30, 40, 50]
    assert {r for r, _ in out} <= {id(c) for c in counted.made}
    assert len(counted.made) == 2 and sorted(map(id, counted.exited)) == sorted(map(id, counted.made))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("executor", ["thread", "async"])
@pytest.mark.parametrize("how", ["break", "error"])
def test_setup_is_exited_on_break_and_on_errors(executor: str, how: str, counted: Any) -> None:
    def maybe_fail(resource: Any, x: int) -> int:
        if how == "error" and x == 5:
            raise ValueError("five")
        return x

    p = numbers() | on(executor, maybe_fail, workers=3, setup=Counted)
    if how == "error":
        with pytest.raises(ValueError, match="five"):
            run(p, 100)
    elif isinstance(p, AsyncPipeline):
        async def first_three() -> list[int]:
            out = []
            async for x in p(1000):
                out.append(x)
                if len(out) == 3:
                    break
            return out

        assert len(run_async(first_three())) == 3
    else:
        for i, _ in enumerate(p(1000)):
            if i == 2:
                break
    # the leak fixture checks live resources; here: each made one was exited, once
    deadline = time.monotonic() + 5
    while len(counted.exited) < len(counted.made) and time.monotonic() < deadline:
        time.sleep(0.01)
    # a worker that starts after the run has stopped makes no resource
    assert 1 <= len(counted.made) <= 3
    assert sorted(map(id, counted.exited)) == sorted(map(id, counted.made))


class AsyncDb:
    """An async context manager made by an async setup."""

    opened = 0
    closed = 0

    async def __aenter__(self) -> AsyncDb:
        await asyncio.sleep(0)
        AsyncDb.opened += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0)
        AsyncDb.closed += 1


async def make_async_db() -> AsyncDb:
    await asyncio.sleep(0)
    return AsyncDb()


async def use_async_db(db: AsyncDb, x: int) -> int:
    assert isinstance(db, AsyncDb)
    await asyncio.sleep(0.001)
    return x + 1


@pytest.mark.timeout(30)
def test_async_setup_is_awaited_and_its_async_context_entered() -> None:
    AsyncDb.opened = AsyncDb.closed = 0
    p = numbers() | task(use_async_db, workers=4, setup=make_async_db)
    assert sorted(run(p, 20)) == list(range(1, 21))
    assert AsyncDb.opened == 4 and AsyncDb.closed == 4


def failing_setup() -> Any:
    raise ConnectionError("no database")


def identity_with(resource: Any, x: int) -> int:
    return x


class BadExit:
    def __enter__(self) -> BadExit:
        return self

    def __exit__(self, *exc: object) -> None:
        raise OSError("cannot close")


def fail_on_3(resource: Any, x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


@pytest.mark.timeout(30)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_errors_in_setup_and_teardown_reach_the_caller(executor: str) -> None:
    with pytest.raises(ConnectionError, match="no database") as info:
        run(numbers() | on(executor, identity_with, setup=failing_setup), 3)
    assert any("setup of task" in note for note in getattr(info.value, "__notes__", [])) or executor == "process"
    with pytest.raises(OSError, match="cannot close"):
        run(numbers() | on(executor, identity_with, setup=BadExit), 3)
    # a teardown error while the run is already raising is attached to the first error
    with pytest.raises(ValueError, match="three") as raised:
        run(numbers() | on(executor, fail_on_3, setup=BadExit), 10)
    notes = " ".join(getattr(raised.value, "__notes__", []))
    assert "cannot close" in notes, notes


@pytest.mark.timeout(30)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_setup_error_is_reported_once(executor: str, caplog: pytest.LogCaptureFixture) -> None:
    """A worker whose setup raised: the caller gets that error with its note, once, and
    nothing attached or logged besides (a process worker answered the end of the run's
    teardown with the same error again: attached to itself, as raised while stopping)."""
    with caplog.at_level(logging.DEBUG, logger="pyper"), pytest.raises(ConnectionError, match="no database") as info:
        run(numbers() | on(executor, identity_with, setup=failing_setup), 3)
    notes = getattr(info.value, "__notes__", [])
    assert sum("setup of task 'identity_with'" in note for note in notes) == 1, notes
    assert not [note for note in notes if "while stopping" in note], notes
    assert getattr(info.value, "pyper_errors", []) == []
    assert not [r.getMessage() for r in caplog.records], [r.getMessage() for r in caplog.records]


class FileResource:
    """A resource whose entry and exit are files, so that a worker process shows them."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.open = False

    def __enter__(self) -> FileResource:
        self.open = True
        (self.directory / f"enter-{os.getpid()}-{id(self)}").touch()
        return self

    def __exit__(self, *exc: object) -> None:
        self.open = False
        (self.directory / f"exit-{os.getpid()}-{id(self)}").touch()


def one_second(resource: FileResource, x: int) -> int:
    time.sleep(1.0)
    return x


def endless_with(resource: FileResource, x: int) -> Any:
    try:
        while True:
            yield x
    finally:
        (resource.directory / f"finally-open={resource.open}").touch()


def _marks(directory: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(prefix))


def partial_resource(directory: Path) -> Any:
    import functools

    return functools.partial(FileResource, str(directory))


def fail_after_zero(resource: FileResource, x: int) -> int:
    if x > 0:
        raise ValueError(x)
    return x


# Issue 8 review: a process worker's setup= resource was not exited after a break while the worker
# was in a call (now its reply is waited for, then the resource is exited).
@pytest.mark.timeout(30)
def test_a_process_resource_is_exited_after_a_break_during_a_call(tmp_path: Path) -> None:
    p = numbers() | task(one_second, workers=2, multiprocess=True, setup=partial_resource(tmp_path))
    for _ in p(10):
        break
    deadline = time.monotonic() + 10
    while len(_marks(tmp_path, "exit")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_marks(tmp_path, "enter")) == 2 and len(_marks(tmp_path, "exit")) == 2


# Issue 8 review: a half-read generator in a process was not closed before its resource was exited.
@pytest.mark.timeout(30)
def test_a_process_generator_stopped_early_still_sees_its_resource(tmp_path: Path) -> None:
    p = numbers() | task(endless_with, multiprocess=True, setup=partial_resource(tmp_path))
    for _ in p(1):
        break
    deadline = time.monotonic() + 10
    while not _marks(tmp_path, "exit") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _marks(tmp_path, "finally") == ["finally-open=True"]


# A worker process waiting out a retry's backoff exited its resource only after 5 s when the run
# stopped (then not at all): the teardown request now goes first.
@pytest.mark.timeout(30)
def test_a_process_resource_is_exited_when_the_run_stops_during_a_backoff(tmp_path: Path) -> None:
    p = numbers() | task(fail_after_zero, workers=2, multiprocess=True, retries=5, backoff=30,
                         setup=partial_resource(tmp_path))
    outputs = p(10)
    assert next(outputs) == 0
    time.sleep(0.3)  # the other calls fail and wait 15-30 s to retry
    with elapsed() as t:
        outputs.close()
    assert t.elapsed < 1
    deadline = time.monotonic() + 5
    while len(_marks(tmp_path, "exit")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_marks(tmp_path, "enter")) == 2 and len(_marks(tmp_path, "exit")) == 2


class Opened:
    """What the decorated setups below entered and exited."""

    entered = 0
    exited: list[str] = []  # how each exit went: "ok" or the exception's type


@contextlib.asynccontextmanager
async def async_connection() -> AsyncIterator[str]:
    await asyncio.sleep(0)
    Opened.entered += 1
    try:
        yield "conn"
    except BaseException as exc:
        Opened.exited.append(type(exc).__name__)
        raise
    else:
        Opened.exited.append("ok")


@contextlib.contextmanager
def sync_connection() -> Iterator[str]:
    Opened.entered += 1
    try:
        yield "conn"
    except BaseException as exc:
        Opened.exited.append(type(exc).__name__)
        raise
    else:
        Opened.exited.append("ok")


async def ause_connection(conn: str, x: int) -> int:
    assert conn == "conn"
    await asyncio.sleep(0.001)
    if x == 7:
        raise ValueError("seven")
    return x


def use_connection(conn: str, x: int) -> int:
    assert conn == "conn"
    if x == 7:
        raise ValueError("seven")
    return x


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["done", "error", "break"])
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_decorated_context_managers_are_setups(kind: str, how: str) -> None:
    """Call bug 13: @asynccontextmanager (an async task's usual resource) was refused at task()
    time as "an async generator"; @contextmanager works for both kinds of task."""
    Opened.entered, Opened.exited = 0, []
    if kind == "async":
        p = numbers() | task(ause_connection, workers=3, setup=async_connection)
    else:
        p = numbers() | task(use_connection, workers=3, setup=sync_connection)
    n = 100 if how == "error" else 7  # item 7 raises
    if how == "done":
        assert sorted(run(p, n)) == list(range(n))
    elif how == "error":
        with pytest.raises(ValueError, match="seven"):
            run(p, n)
    elif kind == "async":
        async def first() -> None:
            async for _ in p(n):
                break

        run_async(first())
    else:
        for _ in p(n):
            break
    # entered once per worker, each exited once (told of the error, if any)
    assert wait_until(lambda: len(Opened.exited) == Opened.entered, 5)
    assert 1 <= Opened.entered <= 3, Opened.entered  # a worker starting after a stop may make none
    if how == "done":
        assert Opened.entered == 3 and Opened.exited == ["ok"] * 3
    elif how == "error":
        assert "ValueError" in Opened.exited, Opened.exited


def test_an_async_context_manager_setup_for_a_sync_task_is_refused() -> None:
    with pytest.raises(TypeError, match="async context manager"):
        task(use_connection, setup=async_connection)
    with pytest.raises(TypeError, match="async context manager"):
        task(use_connection, setup=async_connection, multiprocess=True)

    async def agen() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="not be an async generator"):
        task(ause_connection, setup=agen)


# --------------------------------------------------------------------------------------------
# retries=


def flaky(directory: str, x: int) -> int:
    """Fails the first two attempts on multiples of 3 (attempts counted in files)."""
    marks = Path(directory) / f"{x}"
    count = len(list(marks.parent.glob(f"{x}.*")))
    (Path(directory) / f"{x}.{count}").touch()
    if x % 3 == 0 and count < 2:
        raise ValueError(f"flaky {x} attempt {count + 1}")
    return x * 10


def attempts(directory: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for mark in Path(directory).iterdir():
        x = int(mark.name.split(".")[0])
        counts[x] = counts.get(x, 0) + 1
    return counts


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_retries_call_again_until_the_call_succeeds(executor: str, tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="pyper")
    p = numbers() | on(executor, flaky, workers=2, retries=2, backoff=0.001, bind=task.bind(str(tmp_path)))
    assert sorted(run(p, 10)) == [x * 10 for x in range(10)]
    assert attempts(str(tmp_path)) == {x: 3 if x % 3 == 0 else 1 for x in range(10)}
    retried = [r.getMessage() for r in caplog.records if "retries" in r.getMessage()]
    assert len(retried) == 8, retried  # two per multiple of 3, each one record naming the item
    assert all("task 'flaky'" in m and "item " in m and "ValueError: flaky" in m for m in retried), retried


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_the_last_failure_raises_with_the_earlier_attempts_noted(executor: str, tmp_path: Path) -> None:
    p = numbers() | on(executor, flaky, retries=1, backoff=0, bind=task.bind(str(tmp_path)))
    with pytest.raises(ValueError, match="flaky 0 attempt 2") as info:
        run(p, 1)
    notes = info.value.__notes__
    assert any("attempt 1 of 2 raised ValueError: flaky 0 attempt 1" in n for n in notes), notes
    assert any("on item 0" in n for n in notes), notes


def raise_type_error(x: int) -> int:
    raise TypeError("not retried")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_retry_on_limits_what_is_retried(executor: str) -> None:
    p = numbers() | on(executor, raise_type_error, retries=5, retry_on=(ValueError, KeyError), backoff=10)
    with elapsed() as t:
        with pytest.raises(TypeError, match="not retried"):
            run(p, 1)
    assert t.elapsed < 5  # a 10 s backoff would have been waited if it were retried


def always_fails(x: int) -> int:
    raise ValueError("always")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_backoff_wait_ends_at_once_when_the_run_stops(executor: str) -> None:
    """Another worker's error stops the run while this one waits 30 s to retry."""

    p = numbers() | on(executor, fail_after_a_while_or_retry, workers=2, retries=3, retry_on=ValueError,
                       backoff=30)
    with elapsed() as t:
        with pytest.raises(KeyError):
            run(p, 2)
    assert t.elapsed < 3


def fail_after_a_while_or_retry(x: int) -> int:
    if x == 0:
        raise ValueError("retried after a long wait")
    time.sleep(0.3)
    raise KeyError("not retried: ends the run")


@pytest.mark.timeout(30)
def test_backoff_callable_gets_the_attempt_number() -> None:
    seen: list[int] = []

    def backoff(attempt: int) -> float:
        seen.append(attempt)
        return 0.0

    with pytest.raises(ValueError):
        run(numbers() | task(always_fails, retries=3, backoff=backoff), 1)
    assert seen == [1, 2, 3]


def gen_fails_after_yield(directory: str, x: int) -> Any:
    mark = Path(directory) / f"{x}.{len(list(Path(directory).glob(f'{x}.*')))}"
    mark.touch()
    yield x
    raise ValueError("after the first output")


def gen_fails_before_yield(directory: str, x: int) -> Any:
    count = len(list(Path(directory).glob(f"{x}.*")))
    (Path(directory) / f"{x}.{count}").touch()
    if count == 0:
        raise ValueError("before any output")
    yield x
    yield x + 100


@pytest.mark.timeout(30)
@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_generator_is_retried_only_until_it_first_yields(executor: str, tmp_path: Path) -> None:
    before = tmp_path / "before"
    before.mkdir()
    p = numbers() | on(executor, gen_fails_before_yield, retries=2, backoff=0, bind=task.bind(str(before)))
    assert sorted(run(p, 3)) == [0, 1, 2, 100, 101, 102]
    assert attempts(str(before)) == {0: 2, 1: 2, 2: 2}
    after = tmp_path / "after"
    after.mkdir()
    p = numbers() | on(executor, gen_fails_after_yield, retries=2, backoff=0, bind=task.bind(str(after)))
    with pytest.raises(ValueError, match="after the first output"):
        run(p, 1)
    assert attempts(str(after)) == {0: 1}  # never called again: its output is not duplicated


# Issue 8 review: a cancellation, KeyboardInterrupt, SystemExit or a dead worker must never be retried,
# even with retry_on=BaseException.
@pytest.mark.timeout(30)
def test_retry_on_base_exception_never_retries_a_cancellation() -> None:
    async def forever(x: int) -> int:
        await asyncio.sleep(30)
        return x

    async def main() -> float:
        p = numbers() | task(forever, workers=2, retries=5, retry_on=BaseException, backoff=0)
        agen = p(4).__aiter__()
        pending = asyncio.ensure_future(agen.__anext__())
        await asyncio.sleep(0.1)
        pending.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await agen.aclose()
        return time.monotonic() - started

    assert run_async(main()) < 0.5


# --------------------------------------------------------------------------------------------
# on_error=


def fail_on_multiples_of_4(x: int) -> int:
    if x % 4 == 0:
        raise KeyError(x)
    return x


def replace_with_negative(x: int, exc: Exception) -> Any:
    assert isinstance(exc, KeyError)
    return Emit(-x - 1000)


def drop(x: int, exc: Exception) -> None:
    return None


def refuse(x: int, exc: Exception) -> None:
    raise RuntimeError(f"handler refused {x}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_on_error_skip_drops_and_logs_each_failed_item(executor: str, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="pyper")
    p = numbers() | on(executor, fail_on_multiples_of_4, workers=3, on_error="skip")
    out = run(p, 50)
    failed = [x for x in range(50) if x % 4 == 0]
    assert sorted(out) == [x for x in range(50) if x % 4]
    skips = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(out) + len(skips) == 50  # nothing lost silently
    assert sorted(int(r.getMessage().split("item ")[1].split()[0]) for r in skips) == failed
    assert all(r.levelno == logging.WARNING and "KeyError" in r.getMessage() for r in skips)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_on_error_handler_replaces_or_drops_or_stops(executor: str) -> None:
    p = numbers() | on(executor, fail_on_multiples_of_4, workers=2, on_error=replace_with_negative)
    assert sorted(run(p, 12)) == sorted([-1000, -1004, -1008] + [x for x in range(12) if x % 4])
    p = numbers() | on(executor, fail_on_multiples_of_4, workers=2, on_error=drop)
    assert sorted(run(p, 12)) == [x for x in range(12) if x % 4]
    p = numbers() | on(executor, fail_on_multiples_of_4, on_error=refuse)
    with pytest.raises(RuntimeError, match="handler refused 0"):
        run(p, 12)


def emit_none(x: int, exc: Exception) -> Emit[None]:
    return Emit(None)


def emit_what_failed(x: Any, exc: Exception) -> Emit[tuple[Any, str]]:
    return Emit((x, type(exc).__name__))


def tuple_or_fail(x: int) -> tuple[int, int]:
    if x % 4 == 0:
        raise KeyError(x)
    return (x, x)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("timeout", [None, 30.0], ids=["plain", "timeout"])
def test_on_error_on_a_mapping_task_hands_on_each_result_as_it_is(executor: str, timeout: float | None) -> None:
    """A mapping task's result goes on whole whatever it is (a tuple, None, a list), with
    on_error as without; a handler's Emit(None) is an output, its None drops the item."""
    p = numbers() | on(executor, tuple_or_fail, workers=2, on_error=emit_none, timeout=timeout)
    assert sorted(run(p, 12), key=repr) == sorted([None] * 3 + [(x, x) for x in range(12) if x % 4], key=repr)
    p = numbers() | on(executor, tuple_or_fail, workers=2, on_error="skip", timeout=timeout)
    assert sorted(run(p, 12)) == [(x, x) for x in range(12) if x % 4]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_on_error_keeps_the_order_of_what_it_keeps(executor: str) -> None:
    p = numbers() | on(executor, fail_on_multiples_of_4, workers=3, ordered=True, on_error=replace_with_negative)
    assert run(p, 40) == [x if x % 4 else -x - 1000 for x in range(40)]
    p = numbers() | on(executor, fail_on_multiples_of_4, workers=3, ordered=True, on_error="skip")
    assert run(p, 40) == [x for x in range(40) if x % 4]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_on_error_on_the_first_task(executor: str) -> None:
    """The first task's one call takes the pipeline's arguments: skipped, the run is empty;
    its handler is given None for the item (the arguments are not an item)."""
    assert run(on(executor, fail_on_multiples_of_4, on_error="skip"), 4) == []
    assert run(on(executor, fail_on_multiples_of_4, on_error="skip"), 5) == [5]
    p = on(executor, fail_on_multiples_of_4, on_error=emit_what_failed) | task(lambda x: x)
    assert run(p, 8) == [(None, "KeyError")]


# An error raised by the on_error handler names its item, in a process stage as on threads. Bug
# found by review: _relay._kept ran the handler without setting worker.item, so an error it raised
# was noted without its item (the thread loops note it with its item).


class _HandlerBoom(Exception):
    pass


def _fail_on_3(x: int) -> int:
    if x == 3:
        raise Boom("three")
    return x


def _bad_handler(item: Any, exc: Exception) -> None:
    raise _HandlerBoom(f"handler {item}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["thread", "process"])
def test_an_error_of_the_on_error_handler_names_its_item(where: str) -> None:
    p = task(range, branch=True) | task(_fail_on_3, on_error=_bad_handler, multiprocess=where == "process")
    with pytest.raises(_HandlerBoom) as info:
        list(p(10))
    assert any("on item 3" in note for note in getattr(info.value, "__notes__", [])), info.value.__notes__


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [None, 5.0])
@pytest.mark.parametrize("executor", EXECUTORS)
def test_an_on_error_handler_runs_in_the_callers_process_on_every_executor(executor: str, timeout: float | None) -> None:
    """The docs' dead-letter list: a handler that records in the caller's memory. On a
    process stage it ran in the worker process (the list stayed empty), unless the task
    had timeout=: one place for every executor, the caller's process."""
    dead: list[tuple[int, str, int]] = []

    def dead_letter(item: int, exc: Exception) -> None:
        dead.append((item, type(exc).__name__, os.getpid()))

    p = numbers() | on(executor, fail_on_multiples_of_4, workers=2, on_error=dead_letter, timeout=timeout)
    assert sorted(run(p, 12)) == [x for x in range(12) if x % 4]
    assert sorted(dead) == [(x, "KeyError", os.getpid()) for x in (0, 4, 8)]


def two_then_fail(x: int) -> Any:
    yield x
    yield x + 100
    if x == 1:
        raise ValueError("mid-stream")
    yield x + 200


@pytest.mark.timeout(30)
@pytest.mark.parametrize("executor", ["thread", "process"])
def test_on_error_in_a_generator_keeps_what_it_yielded(executor: str) -> None:
    p = numbers() | on(executor, two_then_fail, on_error=replace_with_value_error)
    assert sorted(run(p, 3)) == sorted([0, 100, 200, 1, 101, -1, 2, 102, 202])


def replace_with_value_error(x: int, exc: Exception) -> Any:
    assert isinstance(exc, ValueError)
    return Emit(-x)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_retries_then_on_error(executor: str, tmp_path: Path) -> None:
    """A call that still fails after its retries goes to on_error; one that succeeds does not."""
    p = numbers() | on(executor, flaky, retries=1, backoff=0, on_error="skip", bind=task.bind(str(tmp_path)))
    assert sorted(run(p, 7)) == [x * 10 for x in range(7) if x % 3]
    assert attempts(str(tmp_path)) == {x: 2 if x % 3 == 0 else 1 for x in range(7)}


def returns_an_async_iterable(x: int) -> Any:
    async def gen() -> Any:
        yield x
        yield x * 10

    return gen()


# Issue 8 review: on_error= on a sync task whose branching call returns an async iterable, in an
# async pipeline.
@pytest.mark.timeout(30)
def test_on_error_on_a_sync_task_that_returns_an_async_iterable() -> None:
    async def source(n: int) -> Any:
        for i in range(n):
            yield i

    p = task(source) | task(returns_an_async_iterable, branch=True, on_error="skip")
    assert sorted(run(p, 3)) == [0, 0, 1, 2, 10, 20]


async def async_handler(x: int, exc: Exception) -> None:
    return None


# Issue 8 review: an async on_error handler for a sync task is refused at task() time.
def test_an_async_handler_for_a_sync_task_is_refused() -> None:
    with pytest.raises(TypeError, match="on_error is an async function"):
        task(fail_on_big, on_error=async_handler)


# --------------------------------------------------------------------------------------------
# unpack=


def add(a: int, b: int = 0, *, scale: int = 1) -> int:
    return (a + b) * scale


def mixed(n: int) -> list[Any]:
    return [(1, 2), {"a": 3, "b": 4, "scale": 10}, 5, (6,)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_unpack_passes_tuples_as_arguments_and_dicts_as_keywords(executor: str) -> None:
    p = task(mixed, branch=True) | on(executor, add, unpack=True)
    assert sorted(run(p, 0)) == sorted([3, 70, 5, 6])


# --------------------------------------------------------------------------------------------
# errors name the item


def fail_on_big(x: Any) -> Any:
    if isinstance(x, str) and len(x) > 100:
        raise ValueError("too big")
    return x


@pytest.mark.timeout(30)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_an_error_names_the_item_shortened(executor: str) -> None:
    p = task(lambda: ["ok", "x" * 10_000], branch=True) | on(executor, fail_on_big, workers=2)
    with pytest.raises(ValueError, match="too big") as info:
        run(p)
    note = next(n for n in info.value.__notes__ if "raised in task" in n)
    assert "on item 'xxxx" in note and len(note) < 250, note


# --------------------------------------------------------------------------------------------
# validation at task() time


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        (dict(retries=-1), TypeError, "retries must be an int >= 0"),
        (dict(retries=1.5), TypeError, "retries must be an int"),
        (dict(retry_on=ValueError), ValueError, "give retries=N"),
        (dict(retries=1, retry_on=(ValueError, 3)), TypeError, "retry_on must be an exception type"),
        (dict(retries=1, backoff=-1), TypeError, "backoff must be a number"),
        (dict(on_error="ignore"), ValueError, "on_error must be 'raise', 'skip' or a function"),
        (dict(setup=3), TypeError, "setup must be a function"),
        (dict(setup=make_async_db), TypeError, "setup is an async function"),
        (dict(unpack=1), TypeError, "unpack must be True or False"),
        (dict(join=True, retries=1), ValueError, "a join task makes one call"),
        (dict(join=True, on_error="skip"), ValueError, "a join task makes one call"),
        (dict(rate=0), ValueError, "rate must be > 0"),
        (dict(rate="fast"), TypeError, "rate must be calls per second"),
        (dict(batch=0), TypeError, "batch must be an int >= 1"),
        (dict(linger=0.5), ValueError, "give batch=N too"),
        (dict(batch=10, linger=-1), TypeError, "linger must be a number"),
        (dict(join=True, batch=10), ValueError, "batch= and join=True"),
    ],
)
def test_bad_options_fail_at_task_time_naming_the_task(options: dict[str, Any], error: type, words: str) -> None:
    with pytest.raises(error, match=words) as info:
        task(fail_on_big, **options)
    assert "fail_on_big" in str(info.value)


def test_process_options_that_run_in_the_worker_must_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """setup= and backoff= go to the worker processes; on_error= runs in the caller's
    process (a closure over a list of the caller's is the point of a dead-letter handler)."""
    monkeypatch.setattr(_pickling, "_cloudpickle", lambda: None)  # as without the extra
    with pytest.raises(RuntimeError, match="setup= to worker processes"):
        task(fail_on_big, multiprocess=True, setup=lambda: 1)
    with pytest.raises(RuntimeError, match="backoff= to worker processes"):
        task(fail_on_big, multiprocess=True, retries=1, backoff=lambda n: 0.0)
    task(fail_on_big, multiprocess=True, on_error=lambda x, e: None)


# retry_on= goes to the worker processes too, so it must pickle at task() time, as setup= and
# backoff= must. Bug found by review: task() checked that setup= and backoff= pickle for a
# process stage but not retry_on=, so a local exception class failed at run time, blamed on the
# pipeline's arguments.
@pytest.mark.timeout(30)
def test_an_unpicklable_retry_on_is_refused_at_task_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pickling, "_cloudpickle", lambda: None)  # as without the extra

    class Local(Exception):
        pass

    with pytest.raises(PipelineSetupError, match="retry_on"):
        task(_fail_on_3, multiprocess=True, retries=1, retry_on=Local)


def fail_now_or_later(x: int) -> int:
    if x == 0:
        time.sleep(0.1)  # the other calls have started
        raise ValueError("first")
    time.sleep(0.3)  # in flight when the run stops: raises after the caller has the error
    raise ValueError(f"late {x}")


@pytest.mark.timeout(30)
def test_many_late_errors_are_a_few_records_and_one_summary(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="pyper")
    p = numbers() | task(fail_now_or_later, workers=20)
    with pytest.raises(ValueError, match="first") as info:
        run(p, 20)
    attached = len(getattr(info.value, "pyper_errors", []))

    def summary() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "not logged one by one" in r.getMessage()]

    deadline = time.monotonic() + 5
    while not summary() and time.monotonic() < deadline:
        time.sleep(0.01)
    one_by_one = [r for r in caplog.records if r.exc_info and "after its pipeline had stopped" in r.getMessage()]
    assert len(one_by_one) == 3
    (record,) = summary()
    late = 19 - attached
    assert f"{late - 3} more errors" in record.getMessage() and "ValueError in task" in record.getMessage()
    assert record.exc_info is None


# --------------------------------------------------------------------------------------------
# rate=


def started_at(x: int) -> float:
    return time.monotonic()


def _windows_ok(starts: list[float], calls: int, per: float, burst: int) -> bool:
    """No window of ``per`` seconds holds more than ``calls + burst - 1`` starts (the slack
    of one for a start that lands on the window's edge)."""
    starts = sorted(starts)
    j = 0
    for i, t in enumerate(starts):
        while starts[j] <= t - per:
            j += 1
        if i - j + 1 > calls + burst:
            return False
    return True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_rate_spaces_the_calls_of_all_workers(executor: str) -> None:
    workers = 4 if executor == "process" else 20
    p = numbers() | on(executor, started_at, workers=workers, rate=20)
    if executor == "process":
        run(p, workers)  # start the worker processes: a first call waits for its process
    starts = sorted(run(p, 50))
    span = starts[-1] - starts[0]
    assert 2.4 <= span <= 2.6, span  # 49 gaps of 50 ms
    assert _windows_ok(starts, 20, 1.0, 1)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) > 0.02, gaps  # evenly, never two at once


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", ["thread", "async"])
def test_a_high_rate_taken_in_blocks_still_bounds_every_window(executor: str) -> None:
    """Above 1000 calls a second a worker takes its turns up to 64 at a time (spanning
    1 ms of the rate): the calls keep to the rate over any window, but for those few each
    worker may take ahead of time, and reach it (no sleep per call)."""
    rate, workers, n = 40_000, 4, 12_000
    p = numbers() | on(executor, started_at, workers=workers, rate=rate)
    with elapsed() as t:
        starts = sorted(run(p, n))
    assert len(starts) == n
    ahead = workers * 64  # turns held ahead of time, at most, by the workers together
    assert t.elapsed >= (n - ahead) / rate, t.elapsed  # 0.3 s at the rate, less what was held
    assert t.elapsed < 3 * n / rate, t.elapsed  # and near the rate (a sleep per call: 1 s)
    assert _windows_ok(starts, rate // 100, 0.01, ahead)  # any 10 ms: 400 calls, + the blocks held


@pytest.mark.timeout(60)
def test_rate_with_a_period_and_a_burst() -> None:
    from pyper import Rate

    p = numbers() | task(started_at, workers=10, rate=Rate(10, per=0.5, burst=5))
    starts = sorted(run(p, 25))
    assert starts[4] - starts[0] < 0.03  # the burst starts at once
    assert 0.9 <= starts[-1] - starts[0] <= 1.2  # then 20 more, 50 ms apart
    assert _windows_ok(starts, 10, 0.5, 5)


@pytest.mark.timeout(30)
def test_a_rate_wait_ends_at_once_when_the_run_stops() -> None:
    p = numbers() | task(started_at, workers=2, rate=Rate_per_minute(1))
    with elapsed() as t:
        for i, _ in enumerate(p(10)):
            break
    assert t.elapsed < 2  # the second call's slot was a minute away


def Rate_per_minute(calls: int) -> Any:
    from pyper import Rate

    return Rate(calls, per=60)


# Issue 8 review: a rate= wait broken off by a break kept its slot, so the next run waited for
# calls that were never made.
@pytest.mark.timeout(30)
def test_a_broken_off_rate_wait_gives_its_slot_back() -> None:
    p = numbers() | task(started_at, workers=10, rate=2)
    for _ in p(50):
        break  # nine workers were waiting for slots up to 4.5 s away
    time.sleep(0.2)  # their waits end (and give the slots back) within milliseconds
    with elapsed() as t:
        for _ in p(50):
            break
    assert t.elapsed < 1.0, t.elapsed


@pytest.mark.timeout(30)
def test_a_stalled_event_loop_does_not_let_a_burst_of_rated_calls_through() -> None:
    """Call bug 21: slots were handed out in advance, so one stall of the event loop (a GC pause,
    a loaded machine) let every slot that fell due meanwhile start at once on waking:
    more than ``rate`` calls in one second. Here call 3 blocks the loop for 0.5 s while
    nine workers wait for their slots."""
    starts: list[float] = []

    async def call(x: int) -> int:
        starts.append(time.monotonic())
        if x == 3:
            time.sleep(0.5)  # blocks the event loop: every waiting worker's sleep runs out
        return x

    p = numbers() | task(call, workers=10, rate=10)
    assert sorted(run(p, 25)) == list(range(25))
    starts.sort()
    gaps = [round(b - a, 3) for a, b in zip(starts, starts[1:])]
    assert _windows_ok(starts, 10, 1.0, 1), gaps
    assert min(gaps) > 0.05, gaps  # never two at once (burst=1), stall or not


def test_the_limiter_decides_each_turn_when_the_call_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Call bug 21, on a fake clock: callers that overslept their turn (a stall) start one at a
    time, ``interval`` apart, or ``burst`` at once; one that leaves the line frees its turn."""
    import pyper._policy
    from pyper import Rate

    clock = [100.0]

    class FakeTime:
        @staticmethod
        def monotonic() -> float:
            return clock[0]

    monkeypatch.setattr(pyper._policy, "time", FakeTime)
    limiter = pyper._policy.Limiter(Rate(10))  # one call every 0.1 s
    assert limiter.reserve() is None  # the first starts at once
    waits = [limiter.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])  # their turns, if all goes well
    clock[0] += 2.0  # a stall: every turn has passed
    woken = [limiter.start() for _ in range(5)]
    assert woken[0] is None and woken[1:] == pytest.approx([0.1] * 4)  # one starts, the rest wait
    clock[0] += 0.1
    assert limiter.start() is None and limiter.start() == pytest.approx(0.1)
    limiter.give_back()  # one leaves the line (its run stopped): two waiters left
    limiter.give_back()
    limiter.give_back()
    clock[0] += 10.0  # a quiet spell: a newcomer starts at once
    assert limiter.reserve() is None and limiter.reserve() == pytest.approx(0.1)

    bursty = pyper._policy.Limiter(Rate(10, burst=3))
    assert [bursty.reserve() for _ in range(3)] == [None] * 3  # the burst, at once
    assert bursty.reserve() == pytest.approx(0.1)
    assert [bursty.reserve() for _ in range(2)] == pytest.approx([0.2, 0.3])
    clock[0] += 5.0  # the three waiters oversleep: at most the burst starts at once
    assert [bursty.start() for _ in range(3)] == [None, None, None]
    assert bursty.reserve() == pytest.approx(0.1)


# --------------------------------------------------------------------------------------------
# batch= and linger=


def rows_of(rows: list[int]) -> list[int]:
    assert isinstance(rows, list)
    return rows


def pausing_source(n: int) -> Any:
    for i in range(n):
        if i == 7:
            time.sleep(0.6)  # a slow upstream: the partial batch must not wait for it
        yield i


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_batch_gives_lists_of_up_to_n_items_once_each(executor: str) -> None:
    p = numbers() | on(executor, rows_of, workers=3, batch=4)
    batches = run(p, 30)
    assert sorted(x for rows in batches for x in rows) == list(range(30))  # each item once
    assert all(1 <= len(rows) <= 4 for rows in batches)
    assert sorted(len(rows) for rows in batches) == [2] + [4] * 7  # formed once, full until the end


def stamped(rows: list[int]) -> tuple[list[int], float]:
    return rows, time.monotonic()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_linger_sends_a_partial_batch_without_waiting_for_a_slow_upstream(executor: str) -> None:
    p = task(pausing_source, branch=True) | on(executor, stamped, batch=5, linger=0.1)
    if executor == "process":
        run(p, 1)  # a warm worker: the timing below is the batch's, not a process start
    started = time.monotonic()
    out = run(p, 12)
    assert [rows for rows, _ in out] == [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9, 10, 11]]
    partial_at = out[1][1] - started
    assert partial_at < 0.45, partial_at  # after ~0.1 s of linger, well before the 0.6 s pause ends


@pytest.mark.timeout(30)
def test_batch_on_the_first_task_is_refused_when_called() -> None:
    from pyper import PipelineSetupError

    with pytest.raises(PipelineSetupError, match="batch="):
        list(task(rows_of, batch=3)([1]))


def counting_source(counter: list[int], n: int) -> Any:
    for i in range(n):
        counter[0] += 1
        yield i


def slow_rows(rows: list[int]) -> int:
    time.sleep(0.2)
    return len(rows)


# Issue 8 review: batch= lost the throttle of the task above it (the lists in flight held more
# items than the throttle lets out).
@pytest.mark.timeout(30)
def test_batch_keeps_the_throttle_of_the_task_above() -> None:
    produced = [0]
    p = task(counting_source, bind=task.bind(produced), branch=True, throttle=10) | task(slow_rows, batch=10)
    for _ in p(10_000):
        break
    assert produced[0] <= 80, produced[0]  # a few lists of 10, not 64 lists


# --------------------------------------------------------------------------------------------
# timeout=


def slow_on_multiples_of_5(x: int) -> int:
    time.sleep(1.2 if x % 5 == 0 else 0.01)  # abandoned threads end within the leak grace
    return x


async def aslow_on_multiples_of_5(x: int) -> int:
    await asyncio.sleep(1.2 if x % 5 == 0 else 0.01)
    return x


def very_slow_on_multiples_of_5(x: int) -> int:
    time.sleep(3.0 if x % 5 == 0 else 0.01)  # in a worker process, killed at its timeout
    return x


def _slow(executor: str) -> Any:
    """A process stage's bounds have room for restarting killed workers on a slow machine."""
    if executor == "process":
        return very_slow_on_multiples_of_5
    return aslow_on_multiples_of_5 if executor == "async" else slow_on_multiples_of_5


def timed_on(executor: str, **options: Any) -> Any:
    func = _slow(executor)
    return task(func, multiprocess=executor == "process", **options)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_call_past_its_timeout_raises_timeout_error_for_its_item(executor: str) -> None:
    p = numbers() | timed_on(executor, timeout=0.2)
    if executor == "process":
        run(p, 0)  # start the worker: the bound is about the timeout, not a process start
    with elapsed() as t:
        with pytest.raises(TimeoutError, match="longer than its timeout of 0.2 s") as info:
            run(p, 3)
    assert t.elapsed < (2.5 if executor == "process" else 1.0)  # not the slow call (3 s; 1.2 s)
    assert any("on item 0" in n for n in info.value.__notes__), info.value.__notes__


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_timeouts_go_through_on_error_and_the_task_keeps_its_workers(executor: str) -> None:
    """Items 0, 5, 10 and 15 overrun: each is skipped after 0.3 s while the others go on."""
    p = numbers() | timed_on(executor, workers=4, timeout=0.3, on_error="skip")
    if executor == "process":
        run(numbers() | timed_on(executor, workers=4, timeout=0.3, on_error="skip"), 0)  # start the workers
    with elapsed() as t:
        out = run(p, 20)
    assert sorted(out) == [x for x in range(20) if x % 5]
    # four slow calls (3 s in processes, 1.2 s elsewhere) given up at 0.3 s, four at a time
    assert t.elapsed < (2.5 if executor == "process" else 1.1), t.elapsed


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", ["thread", "async"])
def test_each_call_gets_its_whole_timeout_from_its_own_start(executor: str) -> None:
    """One worker, calls of 60 ms under a timeout of 100 ms: none times out, however long
    the worker has been calling; then one slow call (item 8) times out 100 ms after it
    started, not earlier (the async worker's one timer, armed by an earlier call, is moved
    to the running call's deadline)."""
    starts: dict[int, float] = {}

    def call(x: int) -> int:
        starts[x] = time.monotonic()
        time.sleep(1.0 if x == 8 else 0.06)
        return x

    async def acall(x: int) -> int:
        starts[x] = time.monotonic()
        await asyncio.sleep(1.0 if x == 8 else 0.06)
        return x

    p = numbers() | task(acall if executor == "async" else call, timeout=0.1, on_error="skip")
    ended: list[float] = []

    def ends(x: int) -> int:
        ended.append(time.monotonic())
        return x

    assert run(p | task(ends), 12) == [x for x in range(12) if x != 8]  # eleven calls of 60 ms: 0.66 s in all
    given_up = ended[8] - 0.06 - starts[8]  # item 9's output came 60 ms after item 8 was given up
    assert 0.09 <= given_up <= 0.5, given_up


@pytest.mark.timeout(30)
def test_an_async_call_that_swallows_its_deadline_keeps_its_result_and_the_worker_goes_on() -> None:
    """A call that catches the cancellation at its deadline and returns anyway gives its
    result (as under ``asyncio.timeout``), and the worker's later calls run uncancelled."""
    async def stubborn(x: int) -> int:
        try:
            await asyncio.sleep(0.5 if x == 0 else 0)
        except asyncio.CancelledError:
            return -1
        return x

    p = numbers() | task(stubborn, timeout=0.1)
    assert run(p, 5) == [-1, 1, 2, 3, 4]


@pytest.mark.timeout(60)
def test_timed_thread_calls_run_in_the_thread_that_made_their_resource() -> None:
    """timeout= on threads: each call runs in its worker's thread, with the resource made
    there; the call given up at its deadline leaves its thread to it, and the worker goes
    on in another thread, with a resource of its own."""
    import threading

    made: list[int] = []

    def connect() -> int:
        made.append(threading.get_ident())
        return threading.get_ident()

    names: dict[int, str] = {}

    def call(resource: int, x: int) -> tuple[int, int, int]:
        names[x] = threading.current_thread().name
        time.sleep(1.0 if x == 3 else 0.001)
        return x, resource, threading.get_ident()

    p = numbers() | task(call, workers=2, setup=connect, timeout=0.3, on_error="skip")
    out = run(p, 20)
    assert sorted(x for x, _, _ in out) == [x for x in range(20) if x != 3]
    assert all(resource == thread for _, resource, thread in out)  # each call in its resource's thread
    # the first calls in the workers' own threads (no helper thread per worker)
    assert {names[0], names[1]} <= {f"pyper:{p.tasks[1].name}[0]", f"pyper:{p.tasks[1].name}[1]"}, names
    assert len(made) == 3  # two workers, and a successor with its own (on a parked thread, maybe)


@pytest.mark.timeout(60)
def test_timeouts_go_through_retries() -> None:
    p = numbers() | task(slow_on_multiples_of_5, timeout=0.1, retries=2, backoff=0)
    with pytest.raises(TimeoutError) as info:
        run(p, 1)
    attempts_noted = [n for n in info.value.__notes__ if n.startswith("pyper: attempt")]
    assert len(attempts_noted) == 2, info.value.__notes__


@pytest.mark.timeout(60)
def test_abandoned_calls_are_bounded_by_workers() -> None:
    """Threads cannot be stopped: at most `workers` abandoned calls run at once."""
    import threading

    running: list[int] = []
    peak = [0]
    lock = threading.Lock()

    def stuck(x: int) -> int:
        with lock:
            running.append(x)
            peak[0] = max(peak[0], len(running))
        time.sleep(0.5)
        with lock:
            running.remove(x)
        return x

    p = numbers() | task(stuck, workers=2, timeout=0.05, on_error="skip")
    with elapsed() as t:
        assert run(p, 8) == []
    assert peak[0] <= 2 * 2  # two workers' calls plus two abandoned ones
    assert t.elapsed >= 0.5  # the bound made workers wait for abandoned calls to end


# A worker waiting for an abandoned call's slot is woken by its run's cancellation. Bug found by
# review: Run's hooks were a dict keyed by the hook, so the workers of a task waiting in
# Abandoned.add registered one hook (its bound _wake) and the first to leave removed it: the
# run's cancellation no longer woke the others.
@pytest.mark.timeout(30)
def test_wait_for_an_abandoned_call_slot_is_woken_by_the_runs_cancellation() -> None:
    import threading

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
        # four calls abandoned, more than the two workers allow: both workers wait for a slot
        assert wait_until(lambda: waiting() == 2, 5)
        fail_now.set()  # the run fails: its cancellation must end both waits
        caller.join(5)
        assert len(raised) == 1 and isinstance(raised[0], Boom)
        stuck = not wait_until(lambda: waiting() == 0, 1.0)
    finally:
        for event in release.values():
            event.set()
        caller.join(5)
    assert not stuck, "a worker waiting for an abandoned-call slot was not woken by the run's cancellation"


def test_equal_cancel_hooks_are_counted_each_taken_back_once() -> None:
    """The review's bug above, on the run itself: two waits register the same bound method;
    the first to leave takes back its own registration only, and the run's cancellation
    still calls the hook for the other."""
    from pyper._engine._run import Run

    calls: list[int] = []
    hook = calls.append
    run = Run(task(abs).tasks, (1,), {}, loop=None)
    try:
        run.on_cancel(lambda: hook(1))
        shared = functools.partial(hook, 2)
        run.on_cancel(shared)
        run.on_cancel(shared)
        run.off_cancel(shared)  # one of the two left
        run.cancel()
    finally:
        run.finish()
    assert sorted(calls) == [1, 2]


# timeout= on threads: the stepped worker, its watchdog and its successors (a review's tests:
# the first task, branch, ordered, retries, on_error, rate, setup and teardown errors, a break
# or an error while a call is stuck, interpreter exit, nested pipelines, adaptive workers).

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def slow_on_3(x: int) -> int:
    time.sleep(1.0 if x == 3 else 0.001)
    return x


# ------------------------------------------------------------------------------------------
# the first task of a pipeline


@pytest.mark.timeout(30)
def test_first_task_with_timeout_raises_timeout_error() -> None:
    def slow() -> int:
        time.sleep(1.0)
        return 1

    p = task(slow, timeout=0.2)
    with elapsed() as t, pytest.raises(TimeoutError):
        list(p())
    assert t.elapsed < 0.9


@pytest.mark.timeout(30)
def test_first_task_with_timeout_and_branch_skips() -> None:
    def slow(n: int) -> list[int]:
        time.sleep(1.0)
        return list(range(n))

    p = task(slow, branch=True, timeout=0.2, on_error="skip") | task(lambda x: x + 1)
    assert list(p(3)) == []
    q = task(lambda n: list(range(n)), branch=True, timeout=5) | task(lambda x: x + 1)
    assert list(q(3)) == [1, 2, 3]


# ------------------------------------------------------------------------------------------
# branch=True, ordered=True


@pytest.mark.timeout(30)
def test_branch_plain_function_returning_a_list() -> None:
    def fan(x: int) -> list[int]:
        time.sleep(1.0 if x == 3 else 0.001)
        return [x, x]

    p = numbers() | task(fan, branch=True, workers=2, timeout=0.3, on_error="skip")
    assert sorted(p(8)) == sorted([y for x in range(8) if x != 3 for y in (x, x)])
    p = numbers() | task(fan, branch=True, workers=2, timeout=0.3)
    with pytest.raises(TimeoutError):
        list(p(8))


@pytest.mark.timeout(30)
def test_ordered_with_timeout_keeps_order() -> None:
    p = numbers() | task(slow_on_3, workers=3, ordered=True, timeout=0.3,
                         on_error=lambda x, e: __import__("pyper").Emit(-x))
    assert list(p(12)) == [0, 1, 2, -3, 4, 5, 6, 7, 8, 9, 10, 11]


# ------------------------------------------------------------------------------------------
# retries=, on_error=, rate=


@pytest.mark.timeout(30)
def test_retry_after_a_timeout_succeeds() -> None:
    attempts: dict[int, int] = {}
    lock = threading.Lock()

    def once_slow(x: int) -> int:
        with lock:
            attempts[x] = attempts.get(x, 0) + 1
            n = attempts[x]
        time.sleep(1.0 if (x == 2 and n == 1) else 0.001)
        return x

    p = numbers() | task(once_slow, workers=2, timeout=0.3, retries=1, backoff=0)
    assert sorted(p(6)) == list(range(6))
    assert attempts[2] == 2


@pytest.mark.timeout(30)
def test_on_error_handler_sees_timeout_error() -> None:
    seen: list[tuple[int, type]] = []

    def handler(x: int, exc: BaseException) -> Any:
        from pyper import Emit

        seen.append((x, type(exc)))
        return Emit(-1)

    p = numbers() | task(slow_on_3, workers=2, timeout=0.3, on_error=handler)
    assert sorted(p(6)) == [-1, 0, 1, 2, 4, 5]
    assert seen == [(3, TimeoutError)]


@pytest.mark.timeout(30)
def test_rate_wait_does_not_count_against_the_timeout() -> None:
    """rate=2/s, 1 worker, timeout 0.3: the calls are instant, but each waits ~0.5 s for its turn."""
    p = numbers() | task(lambda x: x, timeout=0.3, rate=2)
    assert list(p(4)) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------
# setup= in a successor, teardown in the abandoned thread


@pytest.mark.timeout(30)
def test_setup_error_in_a_successor_stops_the_run_with_it() -> None:
    made = [0]
    lock = threading.Lock()

    def setup() -> int:
        with lock:
            made[0] += 1
            if made[0] > 1:
                raise Boom("second setup")
        return 0

    def call(r: int, x: int) -> int:
        time.sleep(1.0 if x == 1 else 0.001)
        return x

    p = numbers() | task(call, setup=setup, timeout=0.2, on_error="skip")
    with elapsed() as t, pytest.raises(Boom):
        list(p(5))
    assert t.elapsed < 0.9


class Res:
    exits: list[Any] = []

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def __enter__(self) -> Res:
        return self

    def __exit__(self, *exc: Any) -> None:
        Res.exits.append((threading.get_ident(), exc[0]))
        if self.fail:
            raise Boom("teardown")


@pytest.mark.timeout(30)
def test_abandoned_resource_is_exited_told_of_timeout_in_its_thread() -> None:
    Res.exits = []
    threads: dict[int, int] = {}

    def call(r: Res, x: int) -> int:
        threads[x] = threading.get_ident()
        time.sleep(1.0 if x == 1 else 0.001)
        return x

    p = numbers() | task(call, setup=Res, timeout=0.2, on_error="skip")
    assert list(p(4)) == [0, 2, 3]
    assert wait_until(lambda: len(Res.exits) == 2, 3)
    kinds = {t: k for t, k in Res.exits}
    assert kinds[threads[1]] is TimeoutError
    assert kinds[threads[3]] is None


@pytest.mark.timeout(30)
def test_teardown_error_of_an_abandoned_resource_is_raised() -> None:
    def setup() -> Res:
        return Res(fail=True)

    def call(r: Res, x: int) -> int:
        time.sleep(0.6 if x == 1 else 0.001)
        return x

    # the run is still going (many more items) when the abandoned call's exit fails
    def slow_tail(x: int) -> int:
        time.sleep(0.05)
        return x

    p = numbers() | task(call, setup=setup, timeout=0.2, on_error="skip") | task(slow_tail)
    with pytest.raises(Boom):
        list(p(40))


# ------------------------------------------------------------------------------------------
# stopping while a call is stuck


@pytest.mark.timeout(30)
def test_break_while_a_call_is_stuck_returns_at_once() -> None:
    started = threading.Event()

    def stuck(x: int) -> int:
        if x == 1:
            started.set()
            time.sleep(1.0)
        return x

    p = numbers() | task(stuck, timeout=0.5, on_error="skip")
    with elapsed() as t:
        for x in p(5):
            assert started.wait(5)
            break
    assert t.elapsed < 0.4


@pytest.mark.timeout(30)
def test_an_error_elsewhere_while_a_call_is_stuck_is_raised_at_once() -> None:
    started = threading.Event()

    def src(n: int) -> Iterator[int]:
        yield 0
        yield 1
        assert started.wait(5)
        raise Boom("source")

    def stuck(x: int) -> int:
        if x == 1:
            started.set()
            time.sleep(1.0)
        return x

    p = task(src, branch=True) | task(stuck, timeout=0.5, on_error="skip")
    with elapsed() as t, pytest.raises(Boom):
        list(p(5))
    assert t.elapsed < 0.4


@pytest.mark.timeout(30)
def test_run_cancelled_while_a_successor_waits_for_the_bound_starts_no_call_and_no_setup() -> None:
    """workers=1: the first abandoned call fills the bound; the second abandonment's successor
    waits for a slot. The run fails (an error in the source): the successor, woken, must not
    make a resource (nor call the function) for a run that has stopped."""
    release = threading.Event()
    fail_now = threading.Event()
    made: list[int] = []
    calls: list[int] = []
    lock = threading.Lock()

    def src(n: int) -> Iterator[int]:
        yield from range(n)
        fail_now.wait(10)
        raise Boom("source")

    def setup() -> int:
        with lock:
            made.append(threading.get_ident())
        return 0

    def hang(r: int, x: int) -> int:
        with lock:
            calls.append(x)
        if x < 2:
            release.wait(3)
        return x

    p = task(src, branch=True) | task(hang, setup=setup, timeout=0.1, on_error="skip")
    abandoned = p.tasks[1].policy.abandoned
    raised: list[BaseException] = []

    def consume() -> None:
        try:
            list(p(10))
        except BaseException as exc:
            raised.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    try:
        assert wait_until(lambda: len(abandoned._cond._waiters) == 1, 5)
        n_made, n_calls = len(made), len(calls)
        fail_now.set()
        t.join(5)
        assert raised and isinstance(raised[0], Boom), raised
        time.sleep(0.3)
        after_made, after_calls = len(made), len(calls)
    finally:
        fail_now.set()
        release.set()
        t.join(5)
    assert after_calls == n_calls, calls
    assert after_made == n_made, made


# ------------------------------------------------------------------------------------------
# interpreter exit


@pytest.mark.timeout(60)
def test_interpreter_exits_with_a_stuck_call() -> None:
    script = textwrap.dedent(
        """
        import time
        from pyper import task

        def hang(x):
            if x == 1:
                time.sleep(60)
            return x

        def src(n):
            return list(range(n))

        p = task(src, branch=True) | task(hang, workers=2, timeout=0.2, on_error="skip")
        print(sorted(p(4)), flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 2, 3]"
    assert time.monotonic() - start < 10


@pytest.mark.timeout(60)
def test_interpreter_exits_after_a_break_with_a_stuck_call() -> None:
    script = textwrap.dedent(
        """
        import time, threading
        from pyper import task
        started = threading.Event()

        def hang(x):
            if x == 1:
                started.set()
                time.sleep(60)
            return x

        def src(n):
            return list(range(n))

        p = task(src, branch=True) | task(hang, timeout=5, on_error="skip")
        for x in p(4):
            started.wait(5)
            break
        print("done", flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
    assert time.monotonic() - start < 10


# ------------------------------------------------------------------------------------------
# nested pipelines


@pytest.mark.timeout(30)
def test_nested_pipeline_in_a_timed_call() -> None:
    inner = task(lambda n: list(range(n)), branch=True) | task(lambda x: x * 2, workers=2)

    def call(x: int) -> int:
        if x == 3:
            time.sleep(1.0)
        return sum(inner(x))

    p = numbers() | task(call, workers=2, timeout=0.3, on_error="skip")
    assert sorted(p(6)) == sorted(sum(2 * i for i in range(x)) for x in range(6) if x != 3)


# ------------------------------------------------------------------------------------------
# workers=(lo, hi)


@pytest.mark.timeout(30)
def test_adaptive_workers_with_timeout() -> None:
    p = numbers() | task(slow_on_3, workers=(1, 4), timeout=0.3, on_error="skip")
    assert sorted(p(50)) == [x for x in range(50) if x != 3]


# ------------------------------------------------------------------------------------------
# deadline races


@pytest.mark.timeout(120)
def test_calls_ending_at_their_deadline_each_give_one_outcome() -> None:
    """Calls that take about their timeout: each item is an output or a TimeoutError, once."""
    seconds = 0.02
    handled: list[int] = []

    def near(x: int) -> int:
        time.sleep(seconds * (0.9 + 0.2 * ((x * 7919) % 11) / 10))
        return x

    def handler(x: int, exc: BaseException) -> Any:
        assert isinstance(exc, TimeoutError), exc
        handled.append(x)
        return None

    for _ in range(3):
        handled.clear()
        p = numbers() | task(near, workers=4, timeout=seconds, on_error=handler)
        out = list(p(200))
        assert sorted(out + handled) == list(range(200))
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------
# interpreter exit with a call in flight (not past its deadline)

EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pyper import task

    class R:
        def __enter__(self): return self
        def __exit__(self, *a): print("exited", flush=True)

    def call(r, x):
        time.sleep(0.5)
        print("done", x, flush=True)
        return x

    timeout = None if sys.argv[1] == "none" else float(sys.argv[1])
    p = task(lambda n: list(range(n)), branch=True) | task(call, setup=R, timeout=timeout)
    for x in p(3):
        break
    print("left", flush=True)
    """
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", ["none", "5"])
def test_exit_after_a_break_lets_the_call_in_flight_return_and_exits_its_resource(timeout: str) -> None:
    """README: "the program exits once calls in flight return" (daemon=False, the default);
    a setup= resource is exited on every path. A call in flight well within its timeout of 5 s
    is no call given up: exit should treat it as it does without timeout=."""
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, timeout], capture_output=True, text=True,
                          timeout=30, env=env)
    lines = done.stdout.split()
    assert done.returncode == 0, done.stderr
    assert "exited" in lines, done.stdout  # the resource's __exit__ ran
    assert "1" in lines, done.stdout  # "done 1": the call in flight returned


# ------------------------------------------------------------------------------------------
# other shapes


@pytest.mark.timeout(30)
def test_sync_timed_stage_in_an_async_pipeline() -> None:
    from conftest import acollect, collect as run, on, run_async

    async def asrc(n: int) -> Any:
        for i in range(n):
            yield i

    p = task(asrc, branch=True) | task(slow_on_3, workers=3, timeout=0.3, on_error="skip")
    assert sorted(run_async(acollect(p(8)))) == [0, 1, 2, 4, 5, 6, 7]


@pytest.mark.timeout(30)
def test_unpack_with_timeout() -> None:
    def add(a: int, b: int) -> int:
        time.sleep(1.0 if a == 3 else 0.001)
        return a + b

    p = task(lambda n: [(i, i) for i in range(n)], branch=True) | task(add, unpack=True, timeout=0.3,
                                                                        on_error="skip")
    assert list(p(5)) == [0, 2, 4, 8]


@pytest.mark.timeout(60)
def test_one_watchdog_thread_per_stage_with_adaptive_workers() -> None:
    """README: "one watchdog thread per stage"."""
    peak = [0]

    def call(x: int) -> int:
        ours = [t for t in threading.enumerate() if t.name.endswith(":timeouts")]
        peak[0] = max(peak[0], len(ours))
        time.sleep(0.005)
        return x

    p = numbers() | task(call, workers=(1, 8), timeout=5)
    assert sorted(p(600)) == list(range(600))
    assert peak[0] == 1, peak[0]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("seconds", [float("inf"), 1e10])
def test_a_timeout_too_long_to_wait_for_is_refused_at_task_time(seconds: float) -> None:
    """timeout=math.inf passed the check (> 0): the watchdog's wait(inf) raised
    OverflowError, its thread died and the stage ran on unwatched. A timeout past a year
    is refused where the task is made, naming it, and saying to leave it out instead."""
    def f(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"task '\S*f': timeout must be .* at most .*leave it out for no timeout"):
        task(f, timeout=seconds)


@pytest.mark.timeout(60)
def test_abandoned_count_never_goes_negative(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call that returns just after its deadline: its thread gives back its abandoned-call
    slot (Abandoned.ended) before the successor has taken it (Abandoned.add), so the count
    dips below zero and the bound lets one more abandoned call through."""
    from pyper._policy import Abandoned

    lows: list[int] = []
    ended = Abandoned.ended

    def watched_ended(self: Abandoned) -> None:
        ended(self)
        lows.append(self._running)

    monkeypatch.setattr(Abandoned, "ended", watched_ended)
    seconds = 0.01

    def at_deadline(x: int) -> int:
        time.sleep(seconds)
        return x

    for _ in range(5):
        p = numbers() | task(at_deadline, workers=2, timeout=seconds, on_error="skip")
        list(p(100))
        if lows and min(lows) < 0:
            break
    assert lows, "no call was abandoned"
    assert min(lows) >= 0, sorted(lows)[:5]


def exit_on_3(x: int) -> int:
    if x == 3:
        os._exit(1)
    return x


# Issue 8 review: with timeout= in processes, a worker that died was an item's error for on_error
# to skip, instead of stopping the run.
@pytest.mark.timeout(30)
def test_a_dead_worker_stops_the_run_even_with_timeout_and_on_error() -> None:
    from pyper import WorkerProcessDied

    p = numbers() | task(exit_on_3, multiprocess=True, timeout=5, on_error="skip")
    with pytest.raises(WorkerProcessDied):
        run(p, 6)


def lazy_range(x: int) -> Any:
    return (i for i in range(x))


# Issue 8 review: with timeout= in processes, a branching function's lazy iterable came back cut
# short; it comes back whole.
@pytest.mark.timeout(30)
def test_a_process_branch_with_timeout_returns_lazy_iterables_whole() -> None:
    p = numbers() | task(lazy_range, multiprocess=True, branch=True, timeout=5)
    assert run(p, 4) == [0, 0, 1, 0, 1, 2]


@pytest.mark.timeout(120)
def test_no_timed_thread_call_starts_after_the_consumer_broke_out() -> None:
    """Call bug 4: with timeout= on threads the helper thread started its call without looking
    at the run, so a call could start after the caller's ``break`` had returned."""
    import threading

    lock = threading.Lock()
    started = [0]

    def counted(x: int) -> int:
        with lock:
            started[0] += 1
        return x

    # (What no engine can close: a thread preempted between taking an item and entering the
    # function, while another thread cancels. Under the usual 5 ms switch interval that
    # window is a few bytecodes wide; the bug's was a thread hand-over, late in most runs.)
    p = numbers() | task(counted, workers=4, timeout=5)
    late_runs = []
    for attempt in range(100):
        for _ in p(10_000):
            break
        with lock:
            at_break = started[0]
        time.sleep(0.02)  # settle: a call the helper was about to start would have started
        with lock:
            late = started[0] - at_break
            started[0] = 0
        if late:
            late_runs.append((attempt, late))
    assert not late_runs, f"calls started after the break returned, (run, calls): {late_runs}"


@pytest.mark.timeout(60)
def test_a_sqlite_connection_made_by_setup_works_with_timeout_on_threads(tmp_path: Path) -> None:
    """Call bug 5: with timeout= on threads the calls ran on a helper thread while the resource
    was made in the worker's: sqlite3 refuses a connection used from another thread."""
    import contextlib

    @contextlib.contextmanager
    def connect() -> Any:
        conn = sqlite3.connect(str(tmp_path / "db.sqlite"), timeout=30)
        try:
            yield conn
        finally:
            conn.close()  # sqlite3 checks this thread too

    def query(conn: sqlite3.Connection, x: int) -> int:
        value: int = conn.execute("select ? * 2", (x,)).fetchone()[0]
        return value

    # (a Connection is a context manager too: pyper enters it; on 3.13 its exit does not close
    # it, which contextlib.closing does)
    for setup in (connect, lambda: contextlib.closing(sqlite3.connect(":memory:"))):
        p = numbers() | task(query, workers=3, timeout=5, setup=setup)
        assert sorted(run(p, 50)) == [2 * x for x in range(50)]


@pytest.mark.timeout(60)
def test_a_resource_of_an_abandoned_call_is_exited_in_its_thread_once_the_call_returns() -> None:
    """Call bug 5: each resource is made, used and exited in one thread; the one an abandoned
    call uses is exited after that call returns, and a new one serves the next calls."""
    import threading

    release = threading.Event()
    events: list[tuple[str, int, int]] = []  # (what, resource number, thread ident)
    lock = threading.Lock()
    numbers_made = iter(range(1000))

    class Tracked:
        def __enter__(self) -> Tracked:
            self.number = next(numbers_made)
            with lock:
                events.append(("enter", self.number, threading.get_ident()))
            return self

        def __exit__(self, *exc: object) -> None:
            with lock:
                events.append(("exit", self.number, threading.get_ident()))

    def use(resource: Tracked, x: int) -> int:
        with lock:
            events.append(("use", resource.number, threading.get_ident()))
        if x == 0:
            assert release.wait(20)  # abandoned at the timeout; returns once released
        return x

    p = numbers() | task(use, timeout=0.1, on_error="skip", setup=Tracked)
    assert run(p, 5) == [1, 2, 3, 4]
    with lock:
        first_exited = any(what == "exit" and number == 0 for what, number, _ in events)
    assert not first_exited, events  # its call is still running
    release.set()
    assert wait_until(lambda: sum(what == "exit" for what, _, _ in events) == 2, 5), events
    threads: dict[int, set[int]] = {}
    for _, number, ident in events:
        threads.setdefault(number, set()).add(ident)
    assert sorted(threads) == [0, 1] and all(len(idents) == 1 for idents in threads.values()), events
    # (the leak fixture checks that no resource is left live and the helper threads ended)


@pytest.mark.timeout(30)
def test_errors_in_setup_and_teardown_reach_the_caller_with_timeout_on_threads() -> None:
    """Call bug 5's helper threads make and exit the resources: their errors still stop the run."""
    with pytest.raises(ConnectionError, match="no database") as info:
        run(numbers() | task(identity_with, setup=failing_setup, timeout=5), 3)
    assert any("setup of task" in note for note in info.value.__notes__), info.value.__notes__
    with pytest.raises(OSError, match="cannot close"):
        run(numbers() | task(identity_with, setup=BadExit, timeout=5), 3)
    with pytest.raises(ValueError, match="three") as raised:
        run(numbers() | task(fail_on_3, setup=BadExit, timeout=5), 10)
    assert "cannot close" in " ".join(raised.value.__notes__), raised.value.__notes__

    # a new helper's setup (after a timeout) that fails stops the run, as at the start
    made = [0]

    def second_fails() -> Any:
        made[0] += 1
        if made[0] > 1:
            raise ConnectionError("no second connection")
        return None

    def stuck_on_0(resource: Any, x: int) -> int:
        if x == 0:
            time.sleep(0.5)
        return x

    with pytest.raises(ConnectionError, match="no second connection") as info:
        run(numbers() | task(stuck_on_0, setup=second_fails, timeout=0.05, on_error="skip", retries=3,
                             backoff=0), 5)
    assert any("setup of task" in note for note in info.value.__notes__), info.value.__notes__


# --------------------------------------------------------------------------------------------
# gather(): several functions on the same item, at once


def plus_one(x: int) -> int:
    time.sleep(0.5)
    return x + 1


def doubled(x: int) -> int:
    time.sleep(0.5)
    return x * 2


def negated(x: int) -> int:
    time.sleep(0.5)
    return -x


def fails_on_2(x: int) -> int:
    time.sleep(0.1)
    if x == 2:
        raise ValueError("two")
    return x


async def aplus_one(x: int) -> int:
    await asyncio.sleep(0.5)
    return x + 1


async def adoubled(x: int) -> int:
    await asyncio.sleep(0.5)
    return x * 2


async def anegated(x: int) -> int:
    await asyncio.sleep(0.5)
    return -x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_gather_runs_several_functions_on_each_item_at_once(executor: str) -> None:
    from pyper import gather

    funcs = (aplus_one, adoubled, anegated) if executor == "async" else (plus_one, doubled, negated)
    p = numbers() | task(gather(*funcs), workers=4, multiprocess=executor == "process")
    if executor == "process":
        # Warm the workers with a first run: a child loads this test module (and pytest) on
        # its first start, 0.4 s of four imports on two cores here and over 1 s under load.
        # Starting them with no item (run(p, 0)) would not wait for that.
        assert sorted(run(p, 4)) == [(x + 1, x * 2, -x) for x in range(4)]
    with elapsed() as t:
        out = run(p, 4)
    assert sorted(out) == [(x + 1, x * 2, -x) for x in range(4)]
    # 12 calls of 0.5 s: the items on 4 workers, each item's 3 calls at once (one after the
    # other they would take 1.5 s)
    assert t.elapsed < 1.2, t.elapsed


@pytest.mark.timeout(30)
def test_gather_raises_the_first_error_once_every_call_has_ended() -> None:
    from pyper import gather

    p = numbers() | task(gather(fails_on_2, plus_one), workers=2)
    with pytest.raises(ValueError, match="two"):
        run(p, 4)
    p = numbers() | task(gather(fails_on_2, plus_one), on_error=lambda x, e: Emit(("failed", x)))
    assert sorted(run(p, 4), key=str) == sorted([(0, 1), (1, 2), ("failed", 2), (3, 4)], key=str)


def test_gather_refuses_mixed_or_generator_functions() -> None:
    from pyper import gather

    with pytest.raises(TypeError, match="all sync or all async"):
        gather(plus_one, aplus_one)
    with pytest.raises(TypeError, match="not generators"):
        gather(plus_one, two_then_fail)
    with pytest.raises(TypeError, match="at least one"):
        gather()


# Issue 8 review: gather()'s other calls ran outside the worker's context.
@pytest.mark.timeout(30)
def test_gather_calls_see_the_callers_context() -> None:
    import contextvars

    from pyper import gather

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    def first(x: int) -> str:
        return var.get()

    def second(x: int) -> str:
        return var.get()

    var.set("caller")
    assert run(numbers() | task(gather(first, second)), 2) == [("caller", "caller")] * 2
