"""Long jobs (issue 22): the error budget (max_failures=), dead letters (dead_letters=) and
their replay (pyper.replay), on threads, asyncio tasks and worker processes.

The functions are at module level so that worker processes can import them. Every run's
outputs are checked whole against what a plain loop gives.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import acollect, collect as run, on, run_async
from pyper import AsyncPipeline, Budget, DeadLetter, Emit, TooManyFailures, replay, task

EXECUTORS = ["thread", "async", "process"]

#: The records every test parses: the bad ones are the strings that are not numbers.
RECORDS = ["1", "2", "x", "4", "5", "", "7", "y", "9", "10"]
BAD = ["x", "", "y"]


def parse(text: str) -> int:
    return int(text)


def parse_or_zero(text: str) -> int:
    """``parse``, its cause fixed: what is not a number counts as 0."""
    return int(text) if text.strip().isdigit() else 0


def double(x: int) -> int:
    return 2 * x


def records(rows: list[str]) -> list[str]:
    return rows


def parsed(rows: list[str]) -> list[int]:
    """The oracle: what a loop that skips bad records gives."""
    return [int(r) for r in rows if r.strip().isdigit()]


@pytest.fixture(autouse=True)
def _quiet_skips(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="pyper")  # each skip is a WARNING record


# -- the budget ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_failures_within_the_budget_are_skipped(executor: str) -> None:
    p = task(records, branch=True) | on(executor, parse, workers=2, on_error="skip", max_failures=3)
    assert sorted(run(p, RECORDS)) == sorted(parsed(RECORDS))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_failure_past_the_budget_stops_the_run_with_every_failure(executor: str) -> None:
    p = task(records, branch=True) | on(executor, parse, on_error="skip", max_failures=2)
    with pytest.raises(TooManyFailures) as caught:
        run(p, RECORDS)
    error = caught.value
    assert error.task == "parse"
    assert error.failed == 3
    assert 3 <= error.seen <= len(RECORDS)
    assert str(error) == (f"task 'parse' failed on 3 of {error.seen} items it took, past its budget "
                          "(max_failures=2)")
    assert [letter.item for letter in error.failures] == BAD  # one worker: in order
    assert all(letter.type == "ValueError" and letter.task == "parse" for letter in error.failures)
    assert isinstance(error.__cause__, ValueError) and "'y'" in str(error.__cause__)
    notes = getattr(error, "__notes__", [])
    assert "pyper: failed on item 'x': ValueError: invalid literal for int() with base 10: 'x'" in notes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_share_of_the_items_taken_is_judged_after_the_minimum(executor: str) -> None:
    """1 item in 10 fails: a budget of 15% lets the run finish; of 5% stops it, but only
    once the task has taken 40 items (``after``), never on the first failure."""
    rows = [str(i) if i % 10 != 3 else f"bad{i}" for i in range(400)]
    loose = task(records, branch=True) | on(executor, parse, on_error="skip", max_failures=0.15)
    assert sorted(run(loose, rows)) == sorted(parsed(rows))
    tight = task(records, branch=True) | on(
        executor, parse, on_error="skip", max_failures=Budget(fraction=0.05, after=40))
    with pytest.raises(TooManyFailures) as caught:
        run(tight, rows)
    assert caught.value.seen >= 40
    assert caught.value.failed > 0.05 * caught.value.seen
    assert caught.value.failed >= 3  # (1 in 10 of 40: 4; the first failures were allowed)


@pytest.mark.timeout(60)
def test_count_and_share_together_stop_at_whichever_comes_first() -> None:
    rows = [str(i) if i % 2 else "bad" for i in range(300)]
    p = task(records, branch=True) | task(parse, on_error="skip",
                                          max_failures=Budget(count=10, fraction=0.9, after=20))
    with pytest.raises(TooManyFailures) as caught:
        run(p, rows)
    assert caught.value.failed == 11


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_handlers_items_count_against_the_budget(executor: str) -> None:
    handled: list[str] = []

    def handler(item: str, exc: Exception) -> Emit[int]:
        handled.append(item)
        return Emit(-1)

    p = task(records, branch=True) | on(executor, parse, on_error=handler, max_failures=2)
    with pytest.raises(TooManyFailures) as caught:
        run(p, RECORDS)
    assert handled == BAD[:2]  # the third broke the budget: the run stops, unhandled
    assert caught.value.failed == 3
    ok = task(records, branch=True) | on(executor, parse, on_error=handler, max_failures=3)
    assert run(ok, RECORDS) == [int(r) if r.strip().isdigit() else -1 for r in RECORDS]


@pytest.mark.timeout(60)
def test_each_run_has_its_own_budget() -> None:
    p = task(records, branch=True) | task(parse, on_error="skip", max_failures=3)
    for _ in range(3):
        assert run(p, RECORDS) == parsed(RECORDS)


@pytest.mark.timeout(60)
def test_no_call_starts_after_the_budget_is_broken() -> None:
    """The run stops as on any error: the calls of the items after the breaking one never start."""
    started: list[str] = []
    lock = threading.Lock()

    def slow_parse(text: str) -> int:
        with lock:
            started.append(text)
        time.sleep(0.001)
        return int(text)

    rows = ["bad"] * 3 + [str(i) for i in range(2000)]
    p = task(records, branch=True) | task(slow_parse, on_error="skip", max_failures=2)
    with pytest.raises(TooManyFailures):
        run(p, rows)
    time.sleep(0.05)
    assert len(started) < 100, len(started)


def test_a_budget_needs_on_error_and_is_checked_at_task_time() -> None:
    with pytest.raises(ValueError, match=r"task 'parse': max_failures= bounds the items on_error= skips"):
        task(parse, max_failures=3)
    with pytest.raises(TypeError, match=r"task 'parse': max_failures must be an int"):
        task(parse, on_error="skip", max_failures="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"task 'parse': max_failures: Budget: count must be an int >= 0"):
        task(parse, on_error="skip", max_failures=-1)
    with pytest.raises(ValueError, match=r"task 'parse': max_failures: Budget: fraction must be"):
        task(parse, on_error="skip", max_failures=1.5)
    with pytest.raises(ValueError, match=r"Budget: give count=, fraction= or both"):
        Budget()
    with pytest.raises(ValueError, match=r"Budget: after must be an int >= 1"):
        Budget(fraction=0.1, after=0)
    assert repr(Budget(fraction=0.1)) == "Budget(fraction=0.1, after=100)"
    assert task(parse, on_error="skip", max_failures=0).tasks[0].policy.max_failures == Budget(count=0)


def test_too_many_failures_pickles_with_its_failures() -> None:
    letter = DeadLetter("parse", "x", None, "ValueError", "bad", "Traceback ...", 1, 0.0)
    error = TooManyFailures("parse", 3, 10, Budget(count=2), [letter])
    again = pickle.loads(pickle.dumps(error))
    assert (again.task, again.failed, again.seen, again.failures) == ("parse", 3, 10, [letter])
    assert str(again) == str(error) and again.__notes__ == error.__notes__


# -- dead letters ---------------------------------------------------------------------------


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_each_skipped_item_is_a_line_of_the_dead_letter_file(executor: str, tmp_path: Path) -> None:
    letters = tmp_path / "dead.jsonl"
    before = time.time()
    p = task(records, branch=True) | on(executor, parse, workers=2, on_error="skip", dead_letters=str(letters))
    assert sorted(run(p, RECORDS)) == sorted(parsed(RECORDS))
    lines = read_lines(letters)
    assert sorted(line["item"] for line in lines) == sorted(BAD)
    for line in lines:
        assert set(line) == {"task", "item", "type", "message", "traceback", "attempts", "time"}
        assert (line["task"], line["type"], line["attempts"]) == ("parse", "ValueError", 1)
        assert line["message"] == f"invalid literal for int() with base 10: {line['item']!r}"
        assert "Traceback (most recent call last)" in line["traceback"]
        assert "return int(text)" in line["traceback"]  # the call's own frame, even in a process
        stamp = time.mktime(time.strptime(line["time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert line["time"].endswith("+00:00") and before - 1 <= stamp <= time.time() + 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_letter_counts_the_attempts_of_a_retried_item(executor: str, tmp_path: Path) -> None:
    letters = tmp_path / "dead.jsonl"
    p = task(records, branch=True) | on(executor, parse, on_error="skip", retries=2, backoff=0,
                                        dead_letters=letters)
    assert run(p, ["1", "x"]) == [1]
    assert [(line["item"], line["attempts"]) for line in read_lines(letters)] == [("x", 3)]
    not_retried = task(records, branch=True) | on(executor, parse, on_error="skip", retries=2, backoff=0,
                                                  retry_on=KeyError, dead_letters=letters)
    assert run(not_retried, ["y"]) == []
    assert [(line["item"], line["attempts"]) for line in read_lines(letters)] == [("x", 3), ("y", 1)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_function_sink_gets_each_letter_in_the_callers_process(executor: str) -> None:
    got: list[DeadLetter] = []
    p = task(records, branch=True) | on(executor, parse, on_error="skip", dead_letters=got.append)
    assert run(p, RECORDS) == parsed(RECORDS)
    assert [letter.item for letter in got] == BAD
    for letter in got:
        assert isinstance(letter.error, ValueError) and letter.type == "ValueError"
        assert letter.task == "parse" and letter.attempts == 1


@pytest.mark.timeout(60)
def test_an_item_json_cannot_encode_is_written_by_its_repr(tmp_path: Path) -> None:
    letters = tmp_path / "dead.jsonl"

    def needs_int(x: Any) -> int:
        return int(x)

    p = task(lambda: [{1, 2}, 3], branch=True) | task(needs_int, on_error="skip", dead_letters=letters)
    assert run(p) == [3]
    (line,) = read_lines(letters)
    assert line["item"] is None and line["item_repr"] == "{1, 2}"
    with pytest.raises(ValueError, match=r"line 1: the item of task '\S*needs_int' could not be written as JSON"):
        list(replay(p, letters))


@pytest.mark.timeout(60)
def test_the_letter_that_breaks_the_budget_is_written_too(tmp_path: Path) -> None:
    letters = tmp_path / "dead.jsonl"
    p = task(records, branch=True) | task(parse, on_error="skip", max_failures=1, dead_letters=letters)
    with pytest.raises(TooManyFailures):
        run(p, RECORDS)
    assert [line["item"] for line in read_lines(letters)] == ["x", ""]


def test_dead_letters_need_skip_and_are_checked_at_task_time() -> None:
    with pytest.raises(ValueError, match=r"task 'parse': dead_letters= records the items on_error='skip' drops"):
        task(parse, dead_letters="dead.jsonl")
    with pytest.raises(ValueError, match=r"a handler gets each failed item: record it there"):
        task(parse, on_error=lambda item, exc: None, dead_letters="dead.jsonl")
    with pytest.raises(TypeError, match=r"task 'parse': dead_letters must be a file path"):
        task(parse, on_error="skip", dead_letters=3)  # type: ignore[arg-type]

    async def sink(letter: DeadLetter) -> None:
        pass

    with pytest.raises(TypeError, match=r"task 'parse': dead_letters must be a plain function"):
        task(parse, on_error="skip", dead_letters=sink)


# -- replay ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor", EXECUTORS)
def test_replaying_the_letters_once_fixed_completes_the_job(executor: str, tmp_path: Path) -> None:
    """The dead letters of a middle task go through it and the tasks after it again."""
    letters = tmp_path / "dead.jsonl"
    broken = task(records, branch=True) | on(executor, parse, workers=2, on_error="skip",
                                             dead_letters=letters) | task(double)
    first = run(broken, RECORDS)
    assert sorted(first) == sorted(2 * x for x in parsed(RECORDS))
    fixed = task(records, branch=True) | on(executor, parse_or_zero, workers=2, on_error="skip",
                                            dead_letters=letters) | task(double)
    # (the fixed function has another name: the letters name the task they came from)
    renamed = [json.dumps({**line, "task": "parse_or_zero"}) for line in read_lines(letters)]
    (tmp_path / "again.jsonl").write_text("\n".join(renamed) + "\n")
    replayed = replay(fixed, tmp_path / "again.jsonl")
    outputs = run_async(acollect(replayed)) if isinstance(fixed, AsyncPipeline) else list(replayed)
    assert sorted(first + outputs) == sorted(2 * parse_or_zero(r) for r in RECORDS)


@pytest.mark.timeout(60)
def test_a_fix_inside_the_same_function_replays_from_the_file(tmp_path: Path) -> None:
    letters = tmp_path / "dead.jsonl"
    fixed = {"on": False}

    def convert(text: str) -> int:
        return parse_or_zero(text) if fixed["on"] else int(text)

    p = task(records, branch=True) | task(convert, on_error="skip", dead_letters=letters)
    saved = list(p(RECORDS))
    fixed["on"] = True
    os.replace(letters, tmp_path / "replay.jsonl")
    saved += list(replay(p, tmp_path / "replay.jsonl"))
    assert sorted(saved) == sorted(parse_or_zero(r) for r in RECORDS)
    assert not letters.exists()  # nothing failed again


@pytest.mark.timeout(60)
def test_replay_takes_the_letters_themselves_and_keeps_each_ones_task() -> None:
    """Letters of two tasks: each item enters at its own task."""
    def first_stage(x: int) -> int:
        return x + 100

    p = task(records, branch=True) | task(first_stage) | task(double)
    letters = [DeadLetter("double", 5, None, "E", "", "", 1, 0.0),
               DeadLetter(p.tasks[1].name, 1, None, "E", "", "", 1, 0.0)]
    assert sorted(replay(p, letters)) == sorted([double(5), double(first_stage(1))])


@pytest.mark.timeout(60)
def test_replay_of_an_async_pipeline_is_an_async_generator() -> None:
    async def aparse(text: str) -> int:
        return parse_or_zero(text)

    p = task(records, branch=True) | task(aparse)
    name = p.tasks[1].name
    letters = [DeadLetter(name, "x", None, "E", "", "", 1, 0.0), DeadLetter(name, "7", None, "E", "", "", 1, 0.0)]
    assert run_async(acollect(replay(p, letters))) == [0, 7]


def test_replay_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    p = task(records, branch=True) | task(parse)
    with pytest.raises(ValueError, match=r"replay: no task of the pipeline is named 'other' \(its tasks: records, parse\)"):
        replay(p, [DeadLetter("other", 1, None, "E", "", "", 1, 0.0)])
    with pytest.raises(ValueError, match=r"replay: 'records' is the pipeline's first task"):
        replay(p, [DeadLetter("records", None, None, "E", "", "", 1, 0.0)])
    twice = task(records, branch=True) | task(parse) | task(parse)
    with pytest.raises(ValueError, match=r"replay: 2 tasks of the pipeline are named 'parse'"):
        replay(twice, [DeadLetter("parse", "1", None, "E", "", "", 1, 0.0)])
    (tmp_path / "junk.jsonl").write_text('{"task": "parse"}\n')
    with pytest.raises(ValueError, match=r"junk.jsonl', line 1: not a dead letter pyper wrote"):
        replay(p, tmp_path / "junk.jsonl")
    with pytest.raises(TypeError, match=r"replay takes a pipeline"):
        replay(parse, [])  # type: ignore[arg-type]
