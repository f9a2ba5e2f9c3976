"""Failed items of a run: the error budget (``max_failures=``) and the dead letters
(``dead_letters=``) of a stage whose task sets either (``Stage.failures``).

Every item ``on_error=`` drops or hands to a handler comes here, in the caller's process
(``_engine._async_calls.handle_failure``, from a worker or a relay, through
``Worker.note``): it becomes a ``DeadLetter``, written to the task's sink if the item was
skipped, and counted against the budget; past the budget the call raises
``TooManyFailures``, which stops the run as any error does. (Reading letters back and
replaying them: ``_letters``.)

A dead-letter file holds one JSON object per line (never a pickle: reading one runs no
code), appended under the ``Failures``' lock, one open-write-close per letter: a failure
is rare, and a line is whole on disk once the call returns, whatever happens next.

Who owns what: a ``Failures`` is shared by its stage's workers (threads, an event loop,
relay threads): its fields are guarded by its ``_lock``; a function sink is called under
it (so letters come one at a time, in the order they are counted).
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from ._errors import TooManyFailures, safe_str, short_repr

if TYPE_CHECKING:
    from ._policy import Budget
    from ._spec import Task

__all__ = ["DeadLetter", "Failures"]

#: How many failures ``TooManyFailures`` shows in its notes (all are in ``failures``).
SHOWN = 5


class DeadLetter(NamedTuple):
    """An item a task failed on, with its error: what ``dead_letters=`` records (a line of
    the file, or the argument of the function), and what ``TooManyFailures.failures``
    holds. Read back from a file, ``error`` is ``None``."""

    task: str  # the task's name
    item: Any  # the item the call was made on
    error: BaseException | None  # the exception (None when read from a file)
    type: str  # the exception's type name
    message: str
    traceback: str  # the whole text (for a process or Ray stage, the remote one included)
    attempts: int  # calls made on the item: retries=N + 1 when the error was one to retry
    time: float  # when it failed (seconds since the epoch)

    def to_json(self) -> str:
        """One line of a dead-letter file (no newline). An item JSON cannot encode is
        written as ``null``, with its repr as ``item_repr``."""
        record: dict[str, Any] = {"task": self.task, "item": self.item}
        try:
            json.dumps(self.item)
        except (TypeError, ValueError):
            record["item"] = None
            record["item_repr"] = short_repr(self.item)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.time))
        record.update(type=self.type, message=self.message, traceback=self.traceback,
                      attempts=self.attempts, time=f"{stamp}.{int(self.time % 1 * 1e6):06d}+00:00")
        return json.dumps(record)  # (ASCII: any str, a lone surrogate too, is written and read back)


def _letter(task: Task, item: Any, exc: BaseException) -> DeadLetter:
    import traceback

    # The calls made: each earlier attempt left a note on the error that ended them (the
    # retries of ``_async_calls``, wherever they ran: the notes come with a remote error).
    attempts = 1 + sum(1 for note in getattr(exc, "__notes__", ()) if str(note).startswith("pyper: attempt "))
    message = safe_str(exc).removeprefix(type(exc).__name__).removeprefix(": ")
    return DeadLetter(task.name, item, exc, type(exc).__qualname__, message,
                      "".join(traceback.format_exception(exc)), attempts, time.time())


class Failures:
    """One stage's failed items in one run: counted against the task's budget, and each
    skipped one written to its dead-letter sink (guarded by ``_lock``)."""

    __slots__ = ("_task", "_lock", "_letters", "_failed")

    def __init__(self, task: Task) -> None:
        self._task = task
        self._lock = threading.Lock()
        self._letters: list[DeadLetter] = []  # every failure, for TooManyFailures (with a budget)
        self._failed = 0

    def add(self, item: Any, exc: BaseException, skipped: bool, seen: int) -> None:
        """``item``'s call raised ``exc`` and ``on_error=`` dropped it (``skipped``) or handed
        it to a handler; ``seen``: the items the task has taken so far. Raises
        ``TooManyFailures`` once the failures are past the budget."""
        task = self._task
        policy = task.policy
        letter = _letter(task, item, exc)
        with self._lock:
            self._failed += 1
            failed = self._failed
            if skipped and policy.dead_letters is not None:
                sink = policy.dead_letters
                if callable(sink):
                    sink(letter)
                else:
                    with open(sink, "a", encoding="utf-8") as file:
                        file.write(letter.to_json() + "\n")
            budget: Budget | None = policy.max_failures
            if budget is None:
                return
            self._letters.append(letter)
            seen = max(seen, failed)
            if not budget.exceeded(failed, seen):
                return
            letters = list(self._letters)
        raise TooManyFailures(task.name, failed, seen, budget, letters, SHOWN) from exc
