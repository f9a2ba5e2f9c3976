"""One envelope for an error that crosses from where a call ran (a worker process, a Ray
worker, an executor of the user's) to the relay that reports it: sealed once on the
remote side (``seal``), opened once on the relay's (``unseal``).

    ("error", pickled exception or None, type name, message, traceback text, item)

The exception is pickled on its own, so that one that cannot be pickled (a lock in an
attribute) or cannot be unpickled (an ``__init__`` that takes other arguments than it
gives ``Exception``: ``HTTPError(status, url)``; a class the relay's process cannot
import) still arrives: as a ``RuntimeError`` that names its type and message. Either way
the remote traceback is its ``__cause__`` (``RemoteTraceback``), and the item it was
raised on comes as a short repr, for the error's note.

Imports nothing of pyper but ``_errors``, and that only when an error is sealed: the
remote sides import it at their start.
"""

from __future__ import annotations

import pickle
from typing import Any

__all__ = ["NO_ITEM", "Envelope", "seal", "unseal"]

#: No item in hand: the error was not raised by a call on an item (a setup, a teardown).
NO_ITEM: Any = type("NoItem", (), {"__repr__": lambda self: "NO_ITEM", "__slots__": ()})()

#: ("error", pickled exception (the exception itself, opened in this process) or None, type
#: name, message, traceback, item's short repr or None)
Envelope = tuple[str, "bytes | BaseException | None", str, str, str, "str | None"]


def seal(exc: BaseException, item: Any = NO_ITEM, here: bool = False) -> Envelope:
    """The envelope of ``exc``, raised by the call on ``item`` (``NO_ITEM``: none);
    ``here``: it is opened in this process (a thread pool of the user's), so it carries the
    exception object itself, never a copy."""
    import traceback  # only once a call fails: not part of every worker's start

    from .._errors import safe_str, short_repr

    text = "".join(traceback.format_exception(exc))
    blob: bytes | BaseException | None
    if here:
        blob = exc
    else:
        try:
            blob = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
        except Exception:  # its type, message and traceback still go
            blob = None
    name = type(exc).__qualname__
    message = safe_str(exc).removeprefix(type(exc).__name__).removeprefix(": ")
    return ("error", blob, name, message, text, None if item is NO_ITEM else short_repr(item))


def unseal(envelope: tuple[Any, ...], task: str, where: str = "its worker process") -> tuple[BaseException, str | None]:
    """(the exception, the short repr of its item or None) from an envelope, the remote
    traceback as its ``__cause__``; a ``RuntimeError`` naming the original's type and
    message when the original cannot be had here."""
    from .._errors import RemoteTraceback

    _, blob, name, message, text, item = envelope
    exc: BaseException | None = None
    why = "it could not be pickled there"
    if isinstance(blob, BaseException):  # sealed in this process: the object itself
        exc = blob
    elif blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception as failure:
            why = f"it could not be unpickled here: {type(failure).__name__}: {failure}"
        else:
            if not isinstance(exc, BaseException):  # never sealed so; say so rather than raise it
                exc, why = None, f"it came back as a {type(exc).__name__}"
    if exc is None:
        exc = RuntimeError(f"task {task!r} raised {name}: {message} in {where} ({why}; its traceback "
                           "is below)" if message else f"task {task!r} raised {name} in {where} "
                           f"({why}; its traceback is below)")
    exc.__cause__ = RemoteTraceback(text)
    return exc, item
