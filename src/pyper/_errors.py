"""Errors: the exception types pyper raises, and how errors are annotated.

    Exception
     +-- PipelineSetupError(ValueError, RuntimeError)  a pipeline that cannot run as built
     +-- WorkerProcessDied(RuntimeError)  a worker process of a process stage died
     +-- TooManyFailures     a task's failed items went past its budget (max_failures=)
     +-- RemoteTraceback     the traceback of an error raised in a worker process,
     |                       attached to it as its ``__cause__``
     +-- Cancelled           internal: the run stopped (never reaches a caller as itself,
     |                       except when a run is cancelled from outside it)
     +-- Broken              internal: every receiver of a channel has left

A user's own exception always reaches the caller as the original object, with a
note naming the task that raised it; errors raised by other workers while the run
stops are attached to it (notes and the ``pyper_errors`` attribute). Attaching
never replaces the original: an exception that refuses attributes or notes, or
whose ``__str__`` raises, keeps its own identity and message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "Broken",
    "Cancelled",
    "PipelineSetupError",
    "RemoteTraceback",
    "TooManyFailures",
    "WorkerProcessDied",
    "add_note",
    "attach",
    "safe_str",
    "short_repr",
]


class PipelineSetupError(ValueError, RuntimeError):
    """A pipeline that cannot run as it was built, e.g. ``workers > 1`` or
    ``join=True`` on its first task.

    Both a ``ValueError`` (the options are invalid) and a ``RuntimeError`` (what
    the original Pyper raised for these), so code written for either catches it.
    """


class WorkerProcessDied(RuntimeError):
    """A worker process of a process stage (``multiprocess=True``) died: killed, out of
    memory, crashed, or it called ``os._exit``. The message names the task and the exit
    code or signal."""


class TooManyFailures(Exception):
    """A task's failed items went past its error budget (``max_failures=``): the run
    stopped. ``task`` names it, ``failed`` of the ``seen`` items it had taken failed,
    ``budget`` is its ``pyper.Budget``, and ``failures`` holds every failure as a
    ``pyper.DeadLetter`` (the first few are also in the notes). Its ``__cause__`` is the
    error that broke the budget."""

    def __init__(self, task: str, failed: int, seen: int, budget: object, failures: Sequence[object],
                 shown: int = 5) -> None:
        super().__init__(f"task {task!r} failed on {failed} of {seen} items it took, past its budget "
                         f"(max_failures={budget})")
        self.task = task
        self.failed = failed
        self.seen = seen
        self.budget = budget
        self.failures = failures
        for letter in failures[:shown]:
            add_note(self, f"pyper: failed on item {short_repr(getattr(letter, 'item', None))}: "
                           f"{getattr(letter, 'type', '?')}: {getattr(letter, 'message', '')}")
        if len(failures) > shown:
            add_note(self, f"pyper: and {len(failures) - shown} more (all in .failures)")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.task, self.failed, self.seen, self.budget, self.failures, 0), self.__dict__)


class RemoteTraceback(Exception):
    """The traceback of an error raised in a worker process, as text; set as the
    ``__cause__`` of the error the caller gets, so it prints with it."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.text}\"\"\""


class Cancelled(Exception):
    """The run this channel belongs to was cancelled."""


class Broken(Exception):
    """Every receiver of this channel has left; nothing more will be read."""


def safe_str(exc: BaseException) -> str:
    """``TypeName: message``, even for an exception whose ``__str__`` raises."""
    try:
        text = str(exc)
    except Exception:
        text = "<str() failed>"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


#: How much of an item an error message shows.
ITEM_REPR_CHARS = 120


def short_repr(item: object) -> str:
    """``repr(item)`` cut to ``ITEM_REPR_CHARS`` (nested containers and long strings are
    shortened by ``reprlib``), even for an object whose ``__repr__`` raises."""
    import reprlib  # only when an error needs it

    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = ITEM_REPR_CHARS
    try:
        text = shortener.repr(item)
    except Exception:
        text = f"<{type(item).__name__} object (repr() failed)>"
    if len(text) > ITEM_REPR_CHARS:
        text = text[: ITEM_REPR_CHARS - 3] + "..."
    return text


def add_note(exc: BaseException, note: str) -> None:
    """Add ``note`` unless the exception refuses notes (it keeps its own message)."""
    try:
        exc.add_note(note)
    except Exception:
        pass


def attach(error: BaseException, others: list[BaseException]) -> None:
    """Attach errors raised while the run stopped to the one the caller gets."""
    for other in others:
        add_note(error, f"pyper: while stopping, also raised {safe_str(other)}")
    try:
        previous = list(getattr(error, "pyper_errors", ()))
        error.pyper_errors = previous + others  # type: ignore[attr-defined]
    except Exception:  # frozen, slotted or otherwise read-only: the notes must do
        pass
