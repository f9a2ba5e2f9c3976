"""The journal (issue 22, part 1): a run records its done items by key, and a run of the same
pipeline with the same journal skips them, on threads and asyncio, through fan-out,
batch=, ordered=, on_error="skip", a break, an error and a process killed with SIGKILL.

Every check compares whole outputs with a plain-Python oracle: the union of the runs'
outputs is the job's, and what a second run calls is what the first did not finish.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import acollect, collect, run_async
from pyper import Journal, PipelineSetupError, task


def rows(n: int) -> Any:
    yield from range(n)


async def arows(n: int) -> Any:
    for i in range(n):
        yield i


class Counted:
    """A function that counts its calls (from any thread)."""

    def __init__(self, func: Any) -> None:
        self.func = func
        self.calls: list[Any] = []
        self.lock = threading.Lock()
        self.__name__ = self.__qualname__ = func.__name__

    def __call__(self, x: Any) -> Any:
        with self.lock:
            self.calls.append(x)
        return self.func(x)


def double(x: int) -> int:
    return 2 * x


def fan(x: int) -> list[int]:
    return [x, x + 1000]


def done_keys(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return sorted(key for (key,) in db.execute("SELECT key FROM pyper_done"))


@pytest.mark.timeout(60)
def test_a_run_cut_short_is_finished_by_the_next_and_a_finished_one_calls_nothing(tmp_path: Path) -> None:
    path = tmp_path / "job.journal"
    work = Counted(double)
    p = task(rows, journal=str(path)) | task(work, workers=3)
    first = []
    for y in p(200):
        first.append(y)
        if len(first) == 50:
            break
    assert len(done_keys(path)) == 49  # the 50th was not taken: the loop broke with it in hand
    work.calls.clear()
    second = list(p(200))
    assert sorted(set(first) | set(second)) == [2 * x for x in range(200)]
    assert len(second) == 151 and sorted(work.calls) == sorted(set(range(200)) - {y // 2 for y in first[:49]})
    work.calls.clear()
    assert list(p(200)) == [] and work.calls == []  # all done: no call after the first task
    assert done_keys(path) == sorted(f"i:{i}" for i in range(200))  # keys as text, never pickles


@pytest.mark.timeout(60)
def test_an_async_pipeline_resumes_too(tmp_path: Path) -> None:
    path = tmp_path / "job.journal"

    async def ainc(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    p = task(arows, journal=path) | task(ainc, workers=4)

    async def take(count: int | None) -> list[int]:
        got = []
        async for y in p(100):
            got.append(y)
            if len(got) == count:
                break
        return got

    first = run_async(take(30))
    second = run_async(take(None))
    assert sorted(set(first) | set(second)) == list(range(1, 101))
    assert len(second) == 71
    assert run_async(take(None)) == []


@pytest.mark.timeout(60)
def test_a_fanned_out_item_is_done_once_all_its_outputs_are_taken(tmp_path: Path) -> None:
    path = tmp_path / "job.journal"
    p = task(rows, journal=path) | task(fan, branch=True) | task(double, workers=2, ordered=True)
    first = []
    for y in p(10):
        first.append(y)
        if len(first) == 5:  # items 0 and 1 whole, and the first of item 2's outputs
            break
    assert done_keys(path) == ["i:0", "i:1"]
    second = list(p(10))
    assert sorted(second) == sorted(double(v) for x in range(2, 10) for v in fan(x))  # item 2 again, whole


def odd_fails(x: int) -> int:
    if x % 2:
        raise ValueError(x)
    return x


def fan_in_process(x: int) -> list[int]:
    return [x, x + 1000]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", ["process", "pool"])
def test_stages_in_worker_processes_and_an_executor_of_yours_resume_too(executor: str, tmp_path: Path) -> None:
    """Their values cross to the other side, their nodes stay in the relay: a map stage
    that skips the odd items, then a fan-out, each done once all its outputs are taken."""
    import concurrent.futures

    logging.getLogger("pyper").setLevel(logging.ERROR)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        where: dict[str, Any] = {"multiprocess": True} if executor == "process" else {"executor": pool}
        path = tmp_path / "job.journal"
        p = (task(rows, journal=path) | task(odd_fails, workers=2, on_error="skip", **where)
             | task(fan_in_process, branch=True, **where))
        first = []
        for y in p(40):
            first.append(y)
            if len(first) == 9:
                break
        second = list(p(40))
        oracle = {v for x in range(0, 40, 2) for v in fan_in_process(x)}
        assert set(first) | set(second) == oracle
        assert len(second) <= len(oracle) - 9 + 2 * 4  # only what was in flight runs again
        assert done_keys(path) == sorted(f"i:{i}" for i in range(40))
        assert list(p(40)) == []


@pytest.mark.timeout(60)
def test_a_skipped_item_is_done_and_one_whose_error_stopped_the_run_is_not(tmp_path: Path) -> None:
    path = tmp_path / "job.journal"
    logging.getLogger("pyper").setLevel(logging.ERROR)

    def picky(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    skipping = task(rows, journal=path) | task(picky, on_error="skip")
    assert list(skipping(6)) == [0, 1, 2, 4, 5]
    assert done_keys(path) == [f"i:{i}" for i in range(6)]

    strict = tmp_path / "strict.journal"
    raising = task(rows, journal=strict) | task(picky)
    with pytest.raises(ValueError, match="three"):
        list(raising(6))
    assert "i:3" not in done_keys(strict)
    work = Counted(lambda x: x)
    fixed = task(rows, journal=Journal(strict, force=True)) | task(work)
    list(fixed(6))
    assert 3 in work.calls


@pytest.mark.timeout(60)
def test_a_batch_is_done_with_its_call_and_its_items_with_it(tmp_path: Path) -> None:
    path = tmp_path / "job.journal"
    p = task(rows, journal=path) | task(sum, batch=4)
    out = []
    for y in p(10):
        out.append(y)
        break  # the first list's sum is in hand, not taken
    assert done_keys(path) == []
    rest = list(p(10))
    assert sum(rest) == sum(range(10))  # all ten again: none was done
    assert done_keys(path) == sorted(f"i:{i}" for i in range(10))


@pytest.mark.timeout(60)
def test_keys_default_to_the_item_and_a_key_function_names_others(tmp_path: Path) -> None:
    def records(n: int) -> list[dict[str, Any]]:
        return [{"id": f"r{i}", "n": i} for i in range(n)]

    with pytest.raises(TypeError, match=r"the item is a dict .* give Journal\(path, key=...\)"):
        list((task(records, branch=True, journal=tmp_path / "a.journal") | task(len))(3))
    keyed = task(records, branch=True, journal=Journal(tmp_path / "b.journal", key=lambda r: r["id"]))
    assert [r["n"] for r in (keyed | task(lambda r: r))(3)] == [0, 1, 2]
    assert done_keys(tmp_path / "b.journal") == ["s:r0", "s:r1", "s:r2"]
    with pytest.raises(TypeError, match=r"a journal's key is a str, an int or bytes, got float"):
        list((task(records, branch=True, journal=Journal(tmp_path / "c.journal", key=lambda r: 1.5)) | task(len))(3))


@pytest.mark.timeout(60)
def test_a_journal_written_by_another_pipeline_is_refused_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "job.journal"
    list((task(rows, journal=path) | task(double))(3))
    other = task(rows, journal=path) | task(fan, branch=True)
    with pytest.raises(ValueError, match=r"was written by another pipeline \(its tasks: rows \| double; "
                                         r"this one's: rows \| fan\): give Journal\("):
        list(other(3))
    forced = task(rows, journal=Journal(path, force=True)) | task(fan, branch=True)
    assert list(forced(5)) == [3, 1003, 4, 1004]  # 0-2 done by the other


@pytest.mark.timeout(60)
def test_the_start_says_how_many_items_are_done(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "job.journal"
    p = task(rows, journal=path) | task(double)
    list(p(7))
    with caplog.at_level(logging.INFO, logger="pyper"):
        assert list(p(9)) == [14, 16]
    assert any(f"journal {str(path)!r} has 7 items done" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(60)
def test_observe_and_progress_count_the_items_done_before(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A resumed run's metrics count the items its journal skipped apart from what it made,
    and its progress starts where the last run stopped (the list's length is the total)."""
    from pyper import observe, progress

    path = tmp_path / "job.journal"
    p = task(lambda n: list(range(n)), branch=True, journal=path) | task(double)
    for y in p(10):
        if y == 12:  # items 0-5 taken, the 7th (12) in hand: 6 done
            break
    with observe() as seen:
        assert sorted(p(10)) == [2 * x for x in range(6, 10)]
    assert seen.last.done_before == 6 and seen.last.count == 4 and seen.last.total == 10
    assert "(6 items done before, skipped)" in seen.last.summary()
    with caplog.at_level(logging.INFO, logger="pyper.progress"), progress(bars=False, interval=60):
        assert list(p(10)) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "pyper.progress"]
    assert "pyper: run 1: 10/10 items (0/s), 10 done before, done" in lines, lines
    plain = task(lambda n: list(range(n)), branch=True) | task(double)
    with observe() as seen:
        list(plain(3))
    assert seen.last.done_before == 0 and "done before" not in seen.last.summary()


def test_what_a_journaled_run_does_not_follow_yet_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "job.journal"
    with pytest.raises(PipelineSetupError, match=r"journal= on task 'double': a journal goes on the pipeline's first task"):
        list((task(rows) | task(double, journal=path))(3))
    with pytest.raises(PipelineSetupError, match=r"task 'double' has timeout= on threads or a remote executor"):
        list((task(rows, journal=path) | task(double, multiprocess=True, timeout=5))(3))
    with pytest.raises(PipelineSetupError, match=r"task 'sum' is a join task"):
        list((task(rows, journal=path) | task(sum, join=True))(3))
    with pytest.raises(TypeError, match=r"task 'rows': journal must be a file path or a pyper.Journal"):
        task(rows, journal=3)  # type: ignore[arg-type]
    inner = task(rows, journal=path) | task(double)
    with pytest.raises(PipelineSetupError, match=r"a journaled pipeline runs on its own"):
        collect(task(lambda: [3], branch=True) | task(inner, branch=True))
    assert not path.exists()  # nothing refused opened the file


# -- killed and started again --------------------------------------------------------------

JOB = """
import sys, time
from pyper import task

N = int(sys.argv[2])

def rows(n):
    yield from range(n)

def work(x):
    time.sleep(0.0005)
    return x

def save(outputs):
    with open(sys.argv[3], "a") as f:
        for x in outputs:
            f.write(f"{x}\\n")
            f.flush()

if __name__ == "__main__":
    run = task(rows, journal=sys.argv[1]) | task(work, workers=4) > save
    run(N)
    print("finished", flush=True)
"""


@pytest.mark.timeout(120)
def test_a_job_killed_at_random_points_is_finished_by_its_restarts(tmp_path: Path) -> None:
    """SIGKILL at 6 points (the journal's own writes among them), then runs until one
    finishes: every item's output was saved, and the items saved twice are only those in
    flight at a kill (at least once, never lost)."""
    import random

    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(JOB))
    journal, out = tmp_path / "job.journal", tmp_path / "out.txt"
    n = 3000
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(7)
    kills = 0
    for attempt in range(30):
        proc = subprocess.Popen([sys.executable, str(script), str(journal), str(n), str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        if kills < 6:
            time.sleep(rng.uniform(0.05, 0.4))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        stdout, stderr = proc.communicate(timeout=60)
        if b"finished" in stdout:
            break
        assert proc.returncode == -signal.SIGKILL, stderr.decode()
    else:
        pytest.fail("the job never finished")
    assert kills >= 3
    saved = [int(line) for line in out.read_text().split()]
    assert sorted(set(saved)) == list(range(n))
    assert len(saved) - n <= kills * 1000  # re-run: only what was in flight or unmarked at a kill
    assert len(done_keys(journal)) == n


# -- exactly once at a database --------------------------------------------------------------

SINK_JOB = """
import sqlite3, sys, time
import pyper
from pyper import task

N = int(sys.argv[2])

def connect():
    return sqlite3.connect(sys.argv[1], timeout=30)

journal = pyper.Journal(connect=connect)

def rows(n):
    yield from range(n)

def square(x):
    time.sleep(0.002)
    return (x, x * x)

def save(conn, batch):
    conn.executemany("INSERT INTO squares VALUES (?, ?)", batch)  # no key: a second write would show
    journal.mark(conn)
    conn.commit()

if __name__ == "__main__":
    with connect() as db:
        db.execute("CREATE TABLE IF NOT EXISTS squares (x INTEGER, y INTEGER)")
    run = task(rows, journal=journal) | task(square, workers=2, multiprocess=sys.argv[3] == "process") \\
        | task(save, setup=connect, batch=50)
    for _ in run(N):
        pass
    print("finished", flush=True)
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("middle", ["thread", "process"])
def test_a_sink_that_marks_in_its_transaction_writes_each_row_once_however_often_killed(
        middle: str, tmp_path: Path) -> None:
    """SIGKILL at random points (and SIGINT, Ctrl-C, at some), restarted until it finishes:
    the table has each row exactly once, though the sink's INSERT has no key to refuse a
    second."""
    import random

    script = tmp_path / "job.py"
    script.write_text(SINK_JOB)
    db, n = tmp_path / "out.db", 4000
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(11 if middle == "thread" else 12)
    stops = {signal.SIGKILL: 0, signal.SIGINT: 0}
    plan = [signal.SIGKILL] * 5 + [signal.SIGINT] * 2
    rng.shuffle(plan)
    for attempt in range(40):
        proc = subprocess.Popen([sys.executable, str(script), str(db), str(n), middle],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        if plan:
            time.sleep(rng.uniform(0.1, 0.5))
            if proc.poll() is None:
                sig = plan.pop()
                proc.send_signal(sig)
                stops[sig] += 1
        stdout, stderr = proc.communicate(timeout=90)
        if b"finished" in stdout:
            break
        assert proc.returncode in (-signal.SIGKILL, 1, -signal.SIGINT), stderr.decode()
        if proc.returncode != -signal.SIGKILL:
            assert b"KeyboardInterrupt" in stderr, stderr.decode()
    else:
        pytest.fail("the job never finished")
    assert stops[signal.SIGKILL] >= 4 and stops[signal.SIGINT] >= 1, stops
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT x, y FROM squares ORDER BY x").fetchall()
        marked = con.execute("SELECT COUNT(*) FROM pyper_done").fetchone()[0]
    assert rows == [(x, x * x) for x in range(n)]  # each once: nothing lost, nothing twice
    assert marked == n


def test_marking_needs_a_call_a_database_journal_and_no_fan_out(tmp_path: Path) -> None:
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(tmp_path / "db.sqlite")

    journal = Journal(connect=connect)
    with pytest.raises(RuntimeError, match=r"journal.mark\(conn\) marks the items of the call in progress"):
        journal.mark(connect())
    on_file = Journal(tmp_path / "job.journal")

    def sink(x: int) -> int:
        on_file.mark(connect())
        return x

    with pytest.raises(RuntimeError, match=r"this journal is the file .*give Journal\(connect=...\)"):
        list((task(rows, journal=on_file) | task(sink))(2))
    with pytest.raises(PipelineSetupError, match=r"task 'fan' fans out \(part of an item's outputs could commit"):
        list((task(rows, journal=journal) | task(fan, branch=True))(2))
    with pytest.raises(TypeError, match=r"Journal: give a file path, or connect="):
        Journal()
