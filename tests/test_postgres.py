"""Exactly once at a PostgreSQL sink (issue 22, part 2): a journal kept in the database, and
a sink that marks its items done in its own transaction, against a real server.

tests/run.sh installs the postgres extra (psycopg) and sets PYPER_WITH_POSTGRES=1 to run
this file (conftest.py), and installs Debian's postgresql package where it can. One server
is started for the whole file, in a temporary directory, on a Unix socket only; as root it
runs as the ``postgres`` user (the server refuses root). Where no server can be found, the
file is skipped, saying so.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import killed_and_restarted
from pyper import Journal, task

psycopg = pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed: "
                                                "pip install -e '.[postgres]'")


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    """A PostgreSQL server for this file: its connection string."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server here (Debian: apt-get install postgresql): the exactly-once "
                    "sink is tested on sqlite3 only (tests/test_journal.py)")
    root = os.geteuid() == 0
    as_user: list[str] = ["runuser", "-u", "postgres", "--"] if root else []
    folder = tempfile.mkdtemp(prefix="pyper-pg-")
    data, sockets = os.path.join(folder, "data"), os.path.join(folder, "run")
    os.mkdir(sockets)
    if root:
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
    port = str(random.randint(20000, 40000))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    try:
        made = subprocess.run([*as_user, initdb, "-D", data, "-U", "pyper", "--auth=trust", "-E", "UTF8"],
                              timeout=120, **quiet)  # type: ignore[call-overload]
        assert made.returncode == 0, made.stderr.decode()
        started = subprocess.run(
            [*as_user, pg_ctl, "-D", data, "-w", "-t", "60", "-l", os.path.join(folder, "log"),
             "-o", f"-k {sockets} -p {port} -c listen_addresses= -c fsync=off", "start"],
            timeout=90, **quiet)  # type: ignore[call-overload]
        assert started.returncode == 0, started.stderr.decode()
        yield f"host={sockets} port={port} user=pyper dbname=postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], timeout=60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    """A fresh squares table and journal tables."""
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS squares, pyper_done, pyper_meta")
        conn.execute("CREATE TABLE squares (x INTEGER, y INTEGER)")
    yield dsn


SINK_JOB = """
import sys, time
import psycopg
import pyper
from pyper import task

DSN, N = sys.argv[1], int(sys.argv[2])

def connect():
    return psycopg.connect(DSN)

journal = pyper.Journal(connect=connect)

def rows(n):
    yield from range(n)

def think(x):
    time.sleep(0.004)
    return x

def square(x):
    return (x, x * x)

def save(conn, batch):
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO squares VALUES (%s, %s)", batch)  # no key: a second write would show
    journal.mark(conn)
    conn.commit()

if __name__ == "__main__":
    run = (task(rows, journal=journal) | task(think, workers=2) | task(square, workers=2, multiprocess=True)
           | task(save, setup=connect, batch=50))
    for _ in run(N):
        pass
    print("finished", flush=True)
"""


@pytest.mark.timeout(300)
def test_a_postgres_sink_writes_each_row_once_however_often_the_job_is_killed(table: str, tmp_path: Path) -> None:
    """Issue 22's test: 10 000 items through a generator source, a thread stage, a process
    stage and a sink into PostgreSQL whose INSERT has no key; SIGKILL at 20 random points and
    Ctrl-C at 5, restarted each time until it finishes: each row exactly once."""
    script = tmp_path / "job.py"
    script.write_text(SINK_JOB)
    n = 10_000
    sent = killed_and_restarted([sys.executable, str(script), table, str(n)], seed=5)
    assert sent[signal.SIGKILL] >= 15 and sent[signal.SIGINT] >= 3, sent
    with psycopg.connect(table) as conn:
        rows = conn.execute("SELECT x, y FROM squares ORDER BY x").fetchall()
        marked = conn.execute("SELECT COUNT(*) FROM pyper_done").fetchone()[0]
    assert rows == [(x, x * x) for x in range(n)]  # each once: nothing lost, nothing twice
    assert marked == n


def rows(n: int) -> Any:
    yield from range(n)


@pytest.mark.timeout(60)
def test_a_sink_that_rolls_back_leaves_its_items_undone(table: str) -> None:
    """The marks are in the sink's transaction: rolled back with its rows, the items run
    again next time; committed, they do not."""
    dsn = table

    def connect() -> Any:
        return psycopg.connect(dsn)

    journal = Journal(connect=connect)
    seen: list[int] = []

    def save(conn: Any, x: int) -> int:
        seen.append(x)
        conn.execute("INSERT INTO squares VALUES (%s, %s)", (x, x * x))
        journal.mark(conn)
        if x % 2:
            conn.rollback()  # the odd ones: neither the row nor its mark
        else:
            conn.commit()
        return x

    job = task(rows, journal=journal) | task(save, setup=connect)

    def consume(outputs: Any) -> None:
        for x in outputs:
            if x == 9:
                raise KeyboardInterrupt  # stopped before taking it: the caller marks nothing more

    with pytest.raises(KeyboardInterrupt):
        (job > consume)(10)
    with psycopg.connect(dsn) as conn:
        done = sorted(int(k[2:]) for (k,) in conn.execute("SELECT key FROM pyper_done"))
    assert set(range(0, 10, 2)) <= set(done)  # the committed ones, whatever the caller took
    seen.clear()
    list(job(10))
    assert sorted(seen) == sorted(set(range(10)) - set(done))
