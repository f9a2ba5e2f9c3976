"""The journal (issue 22, part 1): a run records its done items by key, and a run of the same
pipeline with the same journal skips them, on threads and asyncio, through fan-out,
batch=, ordered=, on_error="skip", a break, an error and a process killed with SIGKILL.

Every check compares whole outputs with a plain-Python oracle: the union of the runs'
outputs is the job's, and what a second run calls is what the first did not finish.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import pyper
from conftest import collect, killed_and_restarted, run_async
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
    with closing(sqlite3.connect(path)) as db:
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


def stuck_on_three(x: int) -> int:
    if x == 3:
        time.sleep(1.2)  # (an abandoned thread's call ends within the leak check's grace)
    return 2 * x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_call_given_up_at_its_timeout_and_skipped_is_done(executor: str, tmp_path: Path) -> None:
    """On threads the worker's loop runs stepped (its calls made by the thread that drives
    it): the lineage wrapper is a step too."""
    logging.getLogger("pyper").setLevel(logging.ERROR)
    path = tmp_path / "job.journal"
    p = task(rows, journal=path) | task(stuck_on_three, multiprocess=executor == "process", timeout=0.5,
                                        on_error="skip", workers=2) | task(fan, branch=True, timeout=5)
    assert sorted(p(8)) == sorted(v for x in range(8) if x != 3 for v in fan(2 * x))
    assert done_keys(path) == sorted(f"i:{i}" for i in range(8))
    assert list(p(8)) == []


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
@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_run_stopped_by_its_error_budget_leaves_its_failures_undone(executor: str, tmp_path: Path) -> None:
    """Within its budget a run marks the items it skipped done; a run the budget stopped
    leaves them (all of them, those skipped before the one that broke it too) for the next."""
    from pyper import TooManyFailures

    logging.getLogger("pyper").setLevel(logging.ERROR)
    where = {"multiprocess": True} if executor == "process" else {}
    within = tmp_path / "within.journal"
    p = task(rows, journal=within) | task(odd_fails, on_error="skip", max_failures=10, **where)
    assert list(p(10)) == [0, 2, 4, 6, 8]
    assert done_keys(within) == sorted(f"i:{i}" for i in range(10))

    past = tmp_path / "past.journal"
    q = task(rows, journal=past) | task(odd_fails, on_error="skip", max_failures=2, **where)
    with pytest.raises(TooManyFailures):
        list(q(10))
    assert not {f"i:{i}" for i in range(1, 10, 2)} & set(done_keys(past))  # no failure marked


def total(items: Any) -> int:
    return sum(items)


def chunks_of_three(items: Any) -> Any:
    chunk = []
    for x in items:
        chunk.append(x)
        if len(chunk) == 3:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@pytest.mark.timeout(60)
def test_what_a_join_call_read_is_done_once_the_call_ended_and_its_outputs_are_taken(tmp_path: Path) -> None:
    path = tmp_path / "job.journal"
    p = task(rows, journal=path) | task(double, workers=2) | task(total, join=True)
    for _ in p(20):
        break  # the join's one output in hand, not taken
    assert done_keys(path) == []
    assert list(p(20)) == [sum(2 * x for x in range(20))]
    assert done_keys(path) == sorted(f"i:{i}" for i in range(20))
    assert list(p(20)) == []

    streamed = tmp_path / "streamed.journal"
    q = task(rows, journal=streamed) | task(chunks_of_three, join=True, branch=True)
    taken = []
    for chunk in q(10):
        taken.append(chunk)
        if len(taken) == 2:
            break  # the call had not ended: nothing it read is done
    assert done_keys(streamed) == []
    assert [x for chunk in q(10) for x in chunk] == list(range(10))


@pytest.mark.timeout(60)
def test_a_nested_pipeline_task_is_a_fan_out_of_the_item(tmp_path: Path) -> None:
    """A pipeline used as a task: its outputs are the item's, done once all are taken."""
    path = tmp_path / "job.journal"
    inner = task(fan, branch=True) | task(double, workers=2)
    p = task(rows, journal=path) | task(inner, branch=True)
    first = []
    for y in p(6):
        first.append(y)
        if len(first) == 3:
            break
    done = {int(k[2:]) for k in done_keys(path)}
    assert len(done) <= 1  # at most the first item, whose two outputs were both taken
    second = list(p(6))
    assert sorted(second) == sorted(double(v) for x in range(6) if x not in done for v in fan(x))
    assert list(p(6)) == []


@pytest.mark.timeout(60)
def test_two_join_workers_each_hold_what_they_read(tmp_path: Path) -> None:
    path = tmp_path / "job.journal"
    p = task(rows, journal=path) | task(total, join=True, workers=2)
    assert sum(p(100)) == sum(range(100))
    assert done_keys(path) == sorted(f"i:{i}" for i in range(100))


@pytest.mark.timeout(60)
def test_an_async_join_resumes_too(tmp_path: Path) -> None:
    path = tmp_path / "job.journal"

    async def atotal(items: Any) -> int:
        return sum([x async for x in items])

    p = task(arows, journal=path) | task(atotal, join=True)
    assert collect(p, 30) == [sum(range(30))]
    assert done_keys(path) == sorted(f"i:{i}" for i in range(30))
    assert collect(p, 30) == []


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
    with pytest.raises(PipelineSetupError, match=r"task 'total' is a join task on a remote executor"):
        list((task(rows, journal=path) | task(total, join=True, multiprocess=True))(3))
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
import asyncio, sqlite3, sys, time
from contextlib import closing
import pyper
from pyper import task

N = int(sys.argv[2])

def connect():
    return sqlite3.connect(sys.argv[1], timeout=30)

def connection():  # a worker's own, closed when it ends
    return closing(connect())

journal = pyper.Journal(connect=connect)

def rows(n):
    yield from range(n)

def think(x):
    time.sleep(0.004)
    return x

def square(x):
    return (x, x * x)

def save(conn, batch):
    conn.executemany("INSERT INTO squares VALUES (?, ?)", batch)  # no key: a second write would show
    journal.mark(conn)
    conn.commit()

async def arows(n):
    for i in range(n):
        yield i

async def athink(x):
    await asyncio.sleep(0.008)
    return x

async def asave(conn, batch):
    save(conn, batch)

async def main(run):
    async for _ in run(N):
        pass

if __name__ == "__main__":
    with closing(connect()) as db:
        db.execute("CREATE TABLE IF NOT EXISTS squares (x INTEGER, y INTEGER)")
    if sys.argv[3] == "async":
        run = (task(arows, journal=journal) | task(athink, workers=4) | task(square, workers=2, multiprocess=True)
               | task(asave, setup=connection, batch=50))
        asyncio.run(main(run))
    else:
        run = (task(rows, journal=journal) | task(think, workers=2) | task(square, workers=2, multiprocess=True)
               | task(save, setup=connection, batch=50))
        for _ in run(N):
            pass
    print("finished", flush=True)
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_sink_that_marks_in_its_transaction_writes_each_row_once_however_often_killed(
        kind: str, tmp_path: Path) -> None:
    """Issue 22's test: 10 000 items through a generator source, a thread (or asyncio) stage,
    a process stage and a sink into sqlite3 whose INSERT has no key to refuse a second
    write; SIGKILL at 20 random points and Ctrl-C at 5, restarted each time until it
    finishes: the table holds each row exactly once."""
    script = tmp_path / "job.py"
    script.write_text(SINK_JOB)
    db, n = tmp_path / "out.db", 10_000
    sent = killed_and_restarted([sys.executable, str(script), str(db), str(n), kind], seed=11 if kind == "sync" else 13)
    assert sent[signal.SIGKILL] >= 15 and sent[signal.SIGINT] >= 3, sent
    with closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT x, y FROM squares ORDER BY x").fetchall()
        marked = con.execute("SELECT COUNT(*) FROM pyper_done").fetchone()[0]
    assert rows == [(x, x * x) for x in range(n)]  # each once: nothing lost, nothing twice
    assert marked == n


def test_marking_needs_a_call_a_database_journal_and_no_fan_out(tmp_path: Path) -> None:
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(tmp_path / "db.sqlite")

    journal = Journal(connect=connect)
    with closing(connect()) as conn, pytest.raises(
            RuntimeError, match=r"journal.mark\(conn\) marks the items of the call in progress"):
        journal.mark(conn)
    on_file = Journal(tmp_path / "job.journal")

    def sink(x: int) -> int:
        with closing(connect()) as conn:
            on_file.mark(conn)
        return x

    with pytest.raises(RuntimeError, match=r"this journal is the file .*give Journal\(connect=...\)"):
        list((task(rows, journal=on_file) | task(sink))(2))
    with pytest.raises(PipelineSetupError, match=r"task 'fan' fans out \(part of an item's outputs could commit"):
        list((task(rows, journal=journal) | task(fan, branch=True))(2))
    with pytest.raises(TypeError, match=r"Journal: give a file path, or connect="):
        Journal()


# -- found by review (each was a bug) -------------------------------------------------------


def ident(x: Any) -> Any:
    return x


@pytest.mark.timeout(30)
def test_error_note_of_a_journaled_run_names_the_item_not_its_lineage(tmp_path: Path) -> None:
    """Found by review: in a journaled run the map loop's ``worker.failed_on(x)`` sees the traced
    ``(Node, value)`` pair, so the error's note reads "on item (<pyper._engine._lineage.Node
    object at 0x...>, 3)". Expected: the same note as without a journal, "on item 3" (the
    lineage is internal; the docs say journal= changes nothing about what the stages see)."""

    def picky(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError) as plain:
        list((task(rows) | task(picky))(6))
    with pytest.raises(ValueError) as journaled:
        list((task(rows, journal=tmp_path / "j") | task(picky))(6))
    assert plain.value.__notes__[0].endswith("' on item 3")
    assert journaled.value.__notes__ == plain.value.__notes__


@pytest.mark.timeout(30)
def test_a_key_is_not_done_while_another_item_with_that_key_is_not(tmp_path: Path) -> None:
    """Found by review: a source that yields the same key twice gets two independent root nodes
    (``Lineage.root`` only checks the keys done in earlier runs), so the key is marked done
    as soon as the FIRST item is taken, although the second one's error stopped the run.
    The next run then skips both: the second item's output is never produced. Docs: "An
    item whose error stops the run is not done ... the next run does them again"; a key
    must be marked only once every item carrying it is done."""
    path = tmp_path / "job.journal"
    failed: list[int] = []

    def source() -> Any:
        yield ("k", 1)
        yield ("k", 2)

    def work(row: tuple[str, int]) -> tuple[str, int]:
        if row[1] == 2:
            time.sleep(0.1)  # the first is taken (and its key counted done) before this fails
            if not failed:
                failed.append(1)
                raise RuntimeError("transient")
        return row

    p = task(source, journal=Journal(path, key=lambda row: row[0])) | task(work)
    got = []
    with pytest.raises(RuntimeError):
        for row in p():
            got.append(row)
    assert got == [("k", 1)]
    assert done_keys(path) == []  # ("k", 2) stopped the run: its key is not done
    assert ("k", 2) in list(p())  # ... so the next run makes it


@pytest.mark.timeout(30)
def test_marks_are_committed_while_a_slow_loop_reads_a_batch(tmp_path: Path) -> None:
    """Found by review: the caller writes the marks (``lineage.flush()``) only after it has yielded a
    whole output batch (``_async_caller.iterate`` / ``_sync_caller.iterate``), and batches
    grow to 64+ items when the loop is the slow part. Here 40 outputs were taken over ~0.5 s
    and nothing is in the file: a crash would lose all 40. Docs: marks are "committed every
    0.05 s and at the end: a crash loses at most those last marks"."""
    path = tmp_path / "job.journal"
    p = task(rows, journal=path) | task(ident, workers=2)
    gen = p(300)
    try:
        for i, _ in enumerate(gen):
            time.sleep(0.012)
            if i == 40:  # items 0..39 taken (the loop asked for the next), over ~0.5 s
                committed = len(done_keys(path))
                break
    finally:
        gen.close()
    assert committed >= 30


@pytest.mark.timeout(30)
def test_marks_of_items_without_outputs_are_committed_while_the_loop_waits(tmp_path: Path) -> None:
    """Found by review: items that end without output (a fan-out to nothing, a filter) are given back
    by the workers, but only the caller flushes, and only once an output batch reaches it:
    while the loop waits for the next output, done items are never written (here 10 done
    items, 1 s later, none committed). Docs: "committed every 0.05 s ... a crash loses at
    most those last marks"."""
    path = tmp_path / "job.journal"
    gate = threading.Event()

    def source(n: int) -> Any:
        yield from range(n)
        gate.wait(20)
        yield 100

    def keep_big(x: int) -> list[int]:
        return [x] if x >= 100 else []  # a filter: the small ones are done, with no output

    p = task(source, journal=path) | task(keep_big, branch=True)
    out: list[int] = []
    thread = threading.Thread(target=lambda: out.extend(p(10)))
    thread.start()
    try:
        time.sleep(1.0)
        committed = done_keys(path)
    finally:
        gate.set()
        thread.join(20)
    assert out == [100]
    assert committed == sorted(f"i:{i}" for i in range(10))


@pytest.mark.timeout(30)
def test_two_first_runs_of_a_new_journal_at_once_both_work(tmp_path: Path) -> None:
    """Found by review: ``Store.__init__`` sets WAL mode and creates the tables of a new file with no
    retry, and turns any ``sqlite3.DatabaseError`` into "is not a journal pyper can read".
    Runs starting at once on a new journal often fail with "journal ... is not a journal
    pyper can read: database is locked" (a misleading refusal; ~20-30% of trials here). The
    docs allow concurrent runs at-least-once; the file is a fine journal."""
    errors: list[BaseException] = []
    for trial in range(40):
        p = task(rows, journal=tmp_path / f"job{trial}.journal") | task(ident)
        barrier = threading.Barrier(4)

        def go() -> None:
            barrier.wait()
            try:
                list(p(20))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=go) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert errors == []


@pytest.mark.timeout(30)
def test_replay_of_a_batch_tasks_letter_calls_it_on_that_list(tmp_path: Path) -> None:
    """Found by review: a ``batch=`` task's dead letter holds the list it failed on; ``replay`` feeds
    that list as ONE item into ``Pipeline(tasks[index:])``, whose run groups it again, so
    the function gets ``[[2, 3]]`` instead of ``[2, 3]`` (here it fails again and the
    replay yields nothing). Docs: replay "runs each letter's item through the same pipeline,
    from the task that skipped it on" (``_letters.replay`` should hand a batch task's item
    to it unbatched)."""
    calls: list[Any] = []
    broken = [True]
    logging.getLogger("pyper").setLevel(logging.ERROR)

    def total(xs: list[int]) -> int:
        calls.append(xs)
        if broken[0] and 3 in xs:
            raise ValueError("bad batch")
        return sum(xs)

    letters: list[pyper.DeadLetter] = []
    p = task(rows, branch=True) | task(total, batch=2, on_error="skip", dead_letters=letters.append)
    assert list(p(6)) == [1, 9]
    assert [letter.item for letter in letters] == [[2, 3]]
    broken[0] = False
    calls.clear()
    replayed = list(pyper.replay(p, list(letters)))
    assert calls == [[2, 3]]
    assert replayed == [5]


@pytest.mark.timeout(30)
def test_dead_letter_attempts_of_a_stream_that_fails_after_its_first_output() -> None:
    """Found by review: ``_failures._letter`` computes ``attempts`` as ``retries + 1`` whenever the error
    is one of ``retry_on``, without counting calls. A branching generator that fails after
    it has yielded is never retried ("once it has yielded, nothing is"), so it was called
    once, yet its letter says attempts=4. Docs: "attempts counts the calls made on the
    item"."""
    calls: list[int] = []

    def gen(x: int) -> Any:
        calls.append(x)
        yield x
        raise ValueError("after the first output")

    logging.getLogger("pyper").setLevel(logging.ERROR)
    letters: list[pyper.DeadLetter] = []
    p = task(rows, branch=True) | task(gen, branch=True, retries=3, backoff=0.001, on_error="skip",
                                       dead_letters=letters.append)
    assert list(p(1)) == [0]
    assert calls == [0]
    assert [letter.attempts for letter in letters] == [1]


@pytest.mark.timeout(30)
def test_dead_letter_attempts_when_a_retried_error_is_followed_by_another() -> None:
    """Bug (same root, ``_failures._letter``): the first attempt raises a ``retry_on`` error
    (retried), the second a ValueError (not retried, so it ends the item): two calls were
    made, the letter says attempts=1. Docs: "attempts counts the calls made on the item"."""
    calls: list[int] = []

    def mixed(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise OSError("transient")
        raise ValueError("permanent")

    logging.getLogger("pyper").setLevel(logging.ERROR)
    letters: list[pyper.DeadLetter] = []
    p = task(rows, branch=True) | task(mixed, retries=3, retry_on=OSError, backoff=0.001, on_error="skip",
                                       dead_letters=letters.append)
    assert list(p(1)) == []
    assert calls == [0, 0]
    assert [(letter.type, letter.attempts) for letter in letters] == [("ValueError", 2)]


@pytest.mark.timeout(30)
def test_a_dead_letter_file_takes_an_item_with_a_surrogate(tmp_path: Path) -> None:
    """Found by review: ``DeadLetter.to_json`` uses ``json.dumps(..., ensure_ascii=False)`` and
    ``Failures.add`` writes it to a UTF-8 file, so an item ``json`` encodes fine but that
    holds a lone surrogate (a file name ``os.listdir`` decoded with surrogateescape) raises
    UnicodeEncodeError in the skip path and stops the run, instead of being skipped and
    written. Docs: ``dead_letters=`` "appends each item it skips to a file, one JSON object
    per line"; only an item JSON cannot encode is written as null."""
    path = tmp_path / "dead.jsonl"
    logging.getLogger("pyper").setLevel(logging.ERROR)
    name = b"report-\xff.csv".decode("utf-8", "surrogateescape")

    def parse(text: str) -> int:
        raise ValueError("bad")

    p = task(lambda: [name, "ok"], branch=True) | task(parse, on_error="skip", dead_letters=path)
    assert list(p()) == []
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["item"] for line in lines] == [name, "ok"]


@pytest.mark.timeout(30)
def test_a_resumed_run_logs_how_many_it_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Found by review: ``Lineage.skipped`` is counted but never used; the run only logs how many keys
    the journal holds ("has 10 items done"), not how many it skipped (here 3: the source
    yields 3 items this time). Docs: running again "skips the done keys before the second
    task sees them, and logs how many it skipped"."""
    path = tmp_path / "job.journal"
    p = task(rows, journal=path) | task(ident)
    assert len(list(p(10))) == 10
    caplog.set_level(logging.DEBUG, logger="pyper")
    assert list(p(3)) == []
    messages = [r.getMessage().replace(str(path), "") for r in caplog.records if r.name == "pyper"]
    assert any("skip" in m and re.findall(r"\d+", m) == ["3"] for m in messages), messages


@pytest.mark.timeout(60)
def test_marks_in_the_sinks_database_are_written_as_the_run_goes(tmp_path: Path) -> None:
    """The run's writer thread writes through a connection of its own (a sqlite3
    connection refuses any thread but its maker's): marks come while the caller is still
    reading, not only at the end."""
    db = tmp_path / "out.db"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(db, timeout=30)

    p = task(rows, journal=Journal(connect=connect)) | task(double, workers=2)
    seen_during = 0
    for i, _ in enumerate(p(400)):
        if i == 300:
            time.sleep(0.3)  # (longer than the writer waits)
            with closing(sqlite3.connect(db)) as con:
                seen_during = con.execute("SELECT COUNT(*) FROM pyper_done").fetchone()[0]
    assert 250 <= seen_during <= 300, seen_during
    assert len(done_keys(db)) == 400


@pytest.mark.timeout(120)
def test_the_docs_resume_example_is_killed_and_resumed(tmp_path: Path) -> None:
    """examples/resume.py, as the "Long jobs" page runs it: killed twice, then run to its end."""
    example = Path(__file__).resolve().parent.parent / "examples" / "resume.py"
    db = tmp_path / "job.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    kills = 0
    for delay in (0.3, 0.5):
        proc = subprocess.Popen([sys.executable, str(example), str(db)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    assert kills >= 1
    with closing(sqlite3.connect(db)) as con:
        partial = con.execute("SELECT COUNT(*) FROM squares").fetchone()[0]
    assert partial < 2000
    done = subprocess.run([sys.executable, str(example), str(db)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "squares: 2000 rows, 2000 distinct\n"
