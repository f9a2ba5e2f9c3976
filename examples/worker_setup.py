"""setup=: one sqlite3 connection per worker, made in the worker and closed when it ends.

    python examples/worker_setup.py

Prints:

    stored 100 rows with 4 connections, all closed
"""

import contextlib
import os
import sqlite3
import tempfile
import threading

from pyper import task

PATH = os.path.join(tempfile.mkdtemp(), "example.sqlite")
opened: list[str] = []
closed: list[str] = []


@contextlib.contextmanager
def connect():
    """A worker's resource: entered before its first call, exited when the worker ends."""
    conn = sqlite3.connect(PATH, timeout=30, isolation_level=None, check_same_thread=False)
    opened.append(threading.current_thread().name)
    try:
        yield conn
    finally:
        conn.close()
        closed.append(threading.current_thread().name)


def store(conn: sqlite3.Connection, row: int) -> int:
    """The worker's connection comes first, then the item."""
    conn.execute("insert into rows(n) values (?)", (row,))
    return row


if __name__ == "__main__":
    with contextlib.closing(sqlite3.connect(PATH, isolation_level=None)) as db:
        db.execute("create table rows(n int)")
        pipeline = task(range, branch=True) | task(store, workers=4, setup=connect)
        total = sum(1 for _ in pipeline(100))
        (count,) = db.execute("select count(*) from rows").fetchone()
    assert total == count == 100
    state = "all closed" if sorted(opened) == sorted(closed) else "NOT all closed"
    print(f"stored {count} rows with {len(opened)} connections, {state}")
