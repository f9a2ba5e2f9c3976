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
import sys
from contextvars import ContextVar
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._spec import Task

__all__ = ["Journal", "Store", "encode_key", "fingerprint", "roots"]


class Journal:
    """``journal=Journal("job.journal", key=lambda row: row["id"])`` on a pipeline's first
    task: the done items of the job, by key, in a SQLite file, so that running it again
    skips them. ``key`` names an item (one of the first task's outputs) by a ``str``, an
    ``int`` or ``bytes`` (by default the item itself, when it is one of those). ``force``:
    use the journal even if another pipeline wrote it. ``connect``, instead of a path: a
    function that returns a DB-API connection (sqlite3, psycopg) to the database whose
    tables hold the journal, so that a sink writing there can mark its items done in its
    own transaction (``mark``). ``journal="job.journal"`` is ``Journal("job.journal")``."""

    __slots__ = ("path", "key", "force", "connect")

    def __init__(self, path: str | os.PathLike[str] | None = None, key: Callable[[Any], Any] | None = None,
                 force: bool = False, connect: Callable[[], Any] | None = None) -> None:
        if (path is None) == (connect is None):
            raise TypeError("Journal: give a file path, or connect= (a function that returns a DB-API "
                            "connection to the database that holds the journal), not both")
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Journal: path must be a file path, got {path!r}")
        if connect is not None and not callable(connect):
            raise TypeError(f"Journal: connect must be a function that returns a DB-API connection, "
                            f"got {connect!r}")
        if key is not None and not callable(key):
            raise TypeError(f"Journal: key must be a function of an item that returns a str, int or "
                            f"bytes, got {key!r}")
        if not isinstance(force, bool):
            raise TypeError(f"Journal: force must be True or False, got {force!r}")
        self.path = os.fspath(path) if path is not None else None
        self.key = key
        self.force = force
        self.connect = connect

    @property
    def where(self) -> str:
        """How messages name the journal."""
        if self.path is not None:
            return repr(self.path)
        return f"in the database of {getattr(self.connect, '__qualname__', self.connect)!s}"

    def mark(self, conn: Any) -> None:
        """Mark the items of the call in progress done, through ``conn`` (a connection to the
        journal's database, ``connect=``), in its current transaction: call it in a sink's
        call before it commits, and its rows and their marks commit together or not at all."""
        if self.connect is None:
            raise RuntimeError(f"journal.mark(conn) writes to the journal's database: this journal is "
                               f"the file {self.path!r}; give Journal(connect=...) the sink's database")
        nodes = _calling.get()
        if nodes is None:
            raise RuntimeError("journal.mark(conn) marks the items of the call in progress: call it "
                               "inside a task's call (on a thread or asyncio) of a run with this journal")
        keys = roots(nodes)
        if keys:
            mark = "?" if _paramstyle(conn) in ("qmark", "numeric") else "%s"
            cursor = conn.cursor()
            try:
                cursor.executemany(f"INSERT INTO pyper_done (key) VALUES ({mark}) ON CONFLICT DO NOTHING",
                                   [(k,) for k in keys])
            finally:
                cursor.close()

    def __repr__(self) -> str:
        key = "" if self.key is None else f", key={getattr(self.key, '__qualname__', self.key)!s}"
        where = repr(self.path) if self.path is not None else f"connect={getattr(self.connect, '__qualname__', self.connect)!s}"
        return f"Journal({where}{key}{', force=True' if self.force else ''})"


#: The input of the call in progress, in a run whose journal a sink marks through
#: (``connect=``): its lineage's node (``_engine._lineage`` sets it around each call).
_calling: ContextVar[Any] = ContextVar("pyper_journal_calling", default=None)


def roots(node: Any) -> list[str]:
    """The keys of the first task's items a node stands for (a root's own; a holder's)."""
    keys: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if n.key is not None:
            keys.append(n.key)
        elif n.holds:
            stack.extend(n.holds)
    return keys


def _retried(step: Callable[[], object], seconds: float = 30.0) -> None:
    """``step()``, tried again while SQLite says the database is locked (a step its busy
    timeout does not wait for: another connection is setting the file up)."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _paramstyle(conn: Any) -> str:
    module = sys.modules.get(type(conn).__module__.partition(".")[0])
    style = getattr(module, "paramstyle", None)
    if style not in ("qmark", "numeric", "format", "pyformat"):
        raise TypeError(f"journal: cannot tell how {type(conn).__module__} marks parameters "
                        f"(its paramstyle: {style!r}); sqlite3 and psycopg are known")
    return style  # type: ignore[no-any-return]


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
    """A journal's tables, open for one run: in its own SQLite file (``path``), or in the
    database ``connect`` reaches (its connection's own SQL: standard, with the parameter
    marks of its driver). Set up, and its done keys read (``done``), by the thread that
    opens it; written by whichever thread holds a connection from ``writer``: a file's one
    connection (SQLite's, opened for any thread), or for ``connect`` one of the writing
    thread's own (a driver's connection may refuse other threads: sqlite3's does)."""

    __slots__ = ("_db", "_mark", "_sqlite", "_connect", "done")

    def __init__(self, journal: Journal, tasks: tuple[Task, ...]) -> None:
        digest, summary = fingerprint(tasks)
        self._sqlite = journal.path is not None
        if journal.path is not None:
            # (check_same_thread off: the caller's thread writes, but a run's last marks may
            # be written by the thread that ends it; its Lineage's lock keeps one at a time)
            # (timeout: runs that start at once on a new file wait for each other's set-up)
            db = sqlite3.connect(journal.path, isolation_level=None, check_same_thread=False, timeout=30)
        else:
            assert journal.connect is not None
            db = journal.connect()
        self._db = db
        try:
            self._mark = m = "?" if _paramstyle(db) in ("qmark", "numeric") else "%s"
            if self._sqlite:
                _retried(lambda: db.execute("PRAGMA journal_mode=WAL"))  # (busy: another run's set-up)
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("BEGIN IMMEDIATE")  # the set-up in one transaction (it waits its turn)
            cursor = db.cursor()
            try:
                cursor.execute("CREATE TABLE IF NOT EXISTS pyper_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
                cursor.execute("CREATE TABLE IF NOT EXISTS pyper_done (key TEXT PRIMARY KEY)")
                cursor.execute("SELECT name, value FROM pyper_meta")
                found = dict(cursor.fetchall())
                if not found:
                    cursor.executemany(f"INSERT INTO pyper_meta VALUES ({m}, {m})",
                                       [("fingerprint", digest), ("tasks", summary)])
                elif found.get("fingerprint") != digest and not journal.force:
                    raise ValueError(
                        f"journal {journal.where} was written by another pipeline (its tasks: "
                        f"{found.get('tasks', '?')}; this one's: {summary}): give "
                        f"Journal(..., force=True) to use it anyway, or a new journal")
                elif found.get("fingerprint") != digest:
                    cursor.executemany(f"UPDATE pyper_meta SET value = {m} WHERE name = {m}",
                                       [(digest, "fingerprint"), (summary, "tasks")])
            finally:
                cursor.close()
            if self._sqlite:
                db.execute("COMMIT")
            else:
                db.commit()
            self.done: set[str] = {key for (key,) in self._query("SELECT key FROM pyper_done")}
        except sqlite3.OperationalError:
            db.close()
            raise  # (locked past the timeout, a disk error: as it is)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ValueError(f"journal {journal.where} is not a journal pyper can read: {exc}") from None
        except BaseException:
            db.close()
            raise
        self._connect = journal.connect
        if journal.connect is not None:
            db.close()  # (this thread's: the writers open their own)

    def writer(self) -> Any:
        """A connection the calling thread writes marks through (``mark``, then ``release``)."""
        return self._db if self._connect is None else self._connect()

    def release(self, conn: Any) -> None:
        if self._connect is not None:
            conn.close()

    def _query(self, sql: str) -> list[Any]:
        cursor = self._db.cursor()
        try:
            cursor.execute(sql)
            rows = cursor.fetchall()
            self._db.commit()  # (ends the read's transaction where the driver opened one)
            return rows
        finally:
            cursor.close()

    def mark(self, conn: Any, keys: list[str]) -> None:
        """Mark ``keys`` done, in one transaction, through ``conn`` (from ``writer``)."""
        if self._sqlite:  # (autocommit connection: one explicit transaction)
            conn.execute("BEGIN")
            try:
                conn.executemany("INSERT OR IGNORE INTO pyper_done VALUES (?)", ((k,) for k in keys))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return
        cursor = conn.cursor()
        try:
            cursor.executemany(f"INSERT INTO pyper_done (key) VALUES ({self._mark}) ON CONFLICT DO NOTHING",
                               [(k,) for k in keys])
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            cursor.close()

    def close(self) -> None:
        if self._connect is None:
            self._db.close()
