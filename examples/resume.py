"""journal=: a job that can be killed at any instant and started again, writing each row once.

    python examples/resume.py               # a whole run, in a temporary folder
    python examples/resume.py job.db        # kill it (Ctrl-C, kill -9), run it again: it goes on

The journal lives in the job's own database (Journal(connect=...)), and the sink marks its
items done in the transaction that writes their rows (journal.mark(conn)): however often
the job is killed, the table ends with each row exactly once.

Prints:

    squares: 2000 rows, 2000 distinct
"""

import os
import sqlite3
import sys
import tempfile
import time
from contextlib import closing

import pyper
from pyper import task

N = 2000


def numbers(n: int):
    yield from range(n)


def square(x: int) -> tuple[int, int]:
    time.sleep(0.002)  # some work
    return (x, x * x)


def main(path: str) -> None:
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(path, timeout=30)

    def connection() -> closing[sqlite3.Connection]:
        return closing(connect())  # a worker's own connection, closed when the worker ends

    journal = pyper.Journal(connect=connect)

    def save(conn: sqlite3.Connection, rows: list[tuple[int, int]]) -> None:
        conn.executemany("INSERT INTO squares VALUES (?, ?)", rows)
        journal.mark(conn)  # these rows' items are done, in this same transaction
        conn.commit()

    with closing(connect()) as db:
        db.execute("CREATE TABLE IF NOT EXISTS squares (x INTEGER, y INTEGER)")
    job = task(numbers, journal=journal) | task(square, workers=4) | task(save, setup=connection, batch=100)
    for _ in job(N):
        pass
    with closing(connect()) as db:
        count, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT x) FROM squares").fetchone()
    print(f"squares: {count} rows, {distinct} distinct")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as folder:
            main(os.path.join(folder, "job.db"))
