"""Dead letters read back and replayed: ``pyper.replay`` (written by ``_failures``).

A dead-letter file holds one JSON object per line, read with ``json`` only: reading one
runs no code. ``replay`` runs each letter's item through the pipeline from the task that
failed on it on, one sub-pipeline per task, in the pipeline's order.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncGenerator, Generator, Iterable
from typing import TYPE_CHECKING, Any

from ._errors import safe_str
from ._failures import DeadLetter

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ["DeadLetter", "read_letters", "replay"]


def read_letters(path: str | os.PathLike[str]) -> list[DeadLetter]:
    """The letters of a dead-letter file, in order (``error`` is ``None``)."""
    import calendar

    letters = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                stamp, _, rest = record["time"].partition(".")
                when = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + int(rest[:6] or 0) / 1e6
                letter = DeadLetter(record["task"], record["item"], None, record["type"], record["message"],
                                    record["traceback"], record["attempts"], when)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{os.fspath(path)!r}, line {number}: not a dead letter pyper wrote "
                                 f"({safe_str(exc)})") from None
            if "item_repr" in record:
                raise ValueError(f"{os.fspath(path)!r}, line {number}: the item of task {letter.task!r} "
                                 f"could not be written as JSON ({record['item_repr']}), so it cannot be "
                                 "replayed from the file: give dead_letters= a function to keep such items")
            letters.append(letter)
    return letters


def replay(pipeline: Pipeline[Any, Any], letters: str | os.PathLike[str] | Iterable[DeadLetter]) -> Any:
    """Run each letter's item through ``pipeline`` from the task that failed on it on:
    the outputs, as the pipeline gives them (a generator; an async generator for an
    ``AsyncPipeline``). ``letters``: a dead-letter file (read whole now) or the letters."""
    from ._pipeline import AsyncPipeline, Pipeline

    if not isinstance(pipeline, Pipeline):
        raise TypeError(f"replay takes a pipeline (task(...) | ...), got {type(pipeline).__name__}")
    if isinstance(letters, (str, os.PathLike)):
        letters = read_letters(letters)
    tasks = pipeline.tasks
    groups: dict[int, list[Any]] = {}
    for letter in letters:
        where = [i for i, t in enumerate(tasks) if t.name == letter.task]
        if not where:
            raise ValueError(f"replay: no task of the pipeline is named {letter.task!r} (its tasks: "
                             f"{', '.join(t.name for t in tasks)})")
        if len(where) > 1:
            raise ValueError(f"replay: {len(where)} tasks of the pipeline are named {letter.task!r}: "
                             "give their functions different names")
        if where[0] == 0:
            raise ValueError(f"replay: {letter.task!r} is the pipeline's first task, whose input is the "
                             "pipeline's arguments, not an item: call the pipeline again")
        if tasks[where[0]].policy.batch and isinstance(letter.item, list):
            # A batch= task's letter holds the list it failed on: its items go to the task
            # again, which makes lists of them as it does.
            groups.setdefault(where[0], []).extend(letter.item)
        else:
            groups.setdefault(where[0], []).append(letter.item)
    rests: list[tuple[list[Any], Pipeline[Any, Any]]] = [(items, Pipeline(tasks[index:])) for index, items in sorted(groups.items())]
    if isinstance(pipeline, AsyncPipeline):
        return _areplay(rests)
    return _replay(rests)


def _replay(rests: list[tuple[list[Any], Pipeline[Any, Any]]]) -> Generator[Any, None, None]:
    from ._task import task

    for items, rest in rests:
        yield from (task(_given, branch=True) | rest)(items)


async def _areplay(rests: list[tuple[list[Any], Pipeline[Any, Any]]]) -> AsyncGenerator[Any, None]:
    from ._task import task

    for items, rest in rests:
        # (an async first task: the replay is async even where the tasks left are sync)
        async for output in (task(_agiven, branch=True) | rest)(items):
            yield output


def _given(items: list[Any]) -> list[Any]:
    """The replay's first task: the letters' items."""
    return items


async def _agiven(items: list[Any]) -> list[Any]:
    return items

