"""A job's journal (``journal=``): which of its items are done, kept in a SQLite file.

``Journal`` is what the user gives the first task; ``Store`` is the file, opened by a run
(``_engine._lineage``, which decides when an item is done). The file holds two tables:
``pyper_done`` (one row per done key, as text) and ``pyper_meta`` (the fingerprint of the
pipeline that wrote it, and its tasks' names for the message that refuses another).
Keys are text, never pickles: opening a journal runs no code. The file is in WAL mode with
``synchronous=NORMAL``: a commit survives the process being killed (a power cut may lose
the last ones: their items run again, which at-least-once allows).

Who owns what: a ``Store`` belongs to its run's ``Lineage``, which calls it under its lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._spec import Task

__all__ = ["Journal", "Store", "encode_key", "fingerprint"]


class Journal:
    """``journal=Journal("job.journal", key=lambda row: row["id"])`` on a pipeline's first
    task: the done items of the job, by key, in a SQLite file, so that running it again
    skips them. ``key`` names an item (one of the first task's outputs) by a ``str``, an
    ``int`` or ``bytes`` (by default the item itself, when it is one of those). ``force``:
    use the file even if another pipeline wrote it. ``journal="job.journal"`` is
    ``Journal("job.journal")``."""

    __slots__ = ("path", "key", "force")

    def __init__(self, path: str | os.PathLike[str], key: Callable[[Any], Any] | None = None,
                 force: bool = False) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Journal: path must be a file path, got {path!r}")
        if key is not None and not callable(key):
            raise TypeError(f"Journal: key must be a function of an item that returns a str, int or "
                            f"bytes, got {key!r}")
        if not isinstance(force, bool):
            raise TypeError(f"Journal: force must be True or False, got {force!r}")
        self.path = os.fspath(path)
        self.key = key
        self.force = force

    def __repr__(self) -> str:
        key = "" if self.key is None else f", key={getattr(self.key, '__qualname__', self.key)!s}"
        return f"Journal({self.path!r}{key}{', force=True' if self.force else ''})"


def encode_key(key: object) -> str:
    """A key as the journal's text: its type and value (``1`` and ``"1"`` are two keys)."""
    if type(key) is str:
        return "s:" + key
    if type(key) is int:
        return "i:" + str(key)
    if type(key) is bytes:
        return "b:" + key.hex()
    raise TypeError(f"a journal's key is a str, an int or bytes, got {type(key).__name__}: {key!r}")


def fingerprint(tasks: Iterable[Task]) -> tuple[str, str]:
    """(a hash, a summary) of what a pipeline does to an item: each task's name and the
    options that change what an item becomes."""
    shape = [[t.name, t.branch, t.join, t.policy.batch, t.ordered, str(t.executor)] for t in tasks]
    text = json.dumps(shape, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest(), " | ".join(t.name for t in tasks)


class Store:
    """A journal's file, open for one run."""

    __slots__ = ("_db", "path")

    def __init__(self, journal: Journal, tasks: tuple[Task, ...]) -> None:
        self.path = journal.path
        digest, summary = fingerprint(tasks)
        # (check_same_thread off: the caller's thread writes, but a run's last marks may be
        # written by the thread that ends it; its Lineage's lock keeps one at a time)
        db = sqlite3.connect(journal.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS pyper_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS pyper_done (key TEXT PRIMARY KEY) WITHOUT ROWID")
            found = dict(db.execute("SELECT name, value FROM pyper_meta").fetchall())
            if not found:
                db.executemany("INSERT INTO pyper_meta VALUES (?, ?)",
                               [("fingerprint", digest), ("tasks", summary)])
            elif found.get("fingerprint") != digest and not journal.force:
                raise ValueError(
                    f"journal {journal.path!r} was written by another pipeline (its tasks: "
                    f"{found.get('tasks', '?')}; this one's: {summary}): give "
                    f"Journal({journal.path!r}, force=True) to use it anyway, or a new file")
            elif found.get("fingerprint") != digest:
                db.execute("UPDATE pyper_meta SET value = ? WHERE name = 'fingerprint'", (digest,))
                db.execute("UPDATE pyper_meta SET value = ? WHERE name = 'tasks'", (summary,))
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ValueError(f"journal {journal.path!r} is not a journal pyper can read: {exc}") from None
        except BaseException:
            db.close()
            raise
        self._db = db

    def done(self) -> set[str]:
        """The keys marked done."""
        return {key for (key,) in self._db.execute("SELECT key FROM pyper_done")}

    def mark(self, keys: list[str]) -> None:
        """Mark ``keys`` done, in one transaction."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR IGNORE INTO pyper_done VALUES (?)", ((k,) for k in keys))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()
