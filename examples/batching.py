"""batch=, linger=: insert rows in bulk, 100 at a time, without waiting long for stragglers.

    python examples/batching.py

Prints:

    inserted 250 rows in 3 calls of [100, 100, 50] rows
"""

import contextlib
import sqlite3

from pyper import task

db = sqlite3.connect(":memory:", check_same_thread=False)
db.execute("create table rows(n int)")
calls: list[int] = []


def insert_rows(rows: list[int]) -> int:
    with db:  # one transaction per batch
        db.executemany("insert into rows(n) values (?)", [(n,) for n in rows])
    calls.append(len(rows))
    return len(rows)


if __name__ == "__main__":
    with contextlib.closing(db):
        pipeline = task(range, branch=True) | task(insert_rows, batch=100, linger=0.5)
        inserted = sum(pipeline(250))
        (count,) = db.execute("select count(*) from rows").fetchone()
    assert inserted == count == 250
    print(f"inserted {count} rows in {len(calls)} calls of {calls} rows")
