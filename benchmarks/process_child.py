"""One sample of one contender of benchmarks/process.py, in a process of its own.

    python benchmarks/process_child.py CASE WHO N MODE CHUNKSIZE   # prints {"values": [...]}

Kept apart from the runner and light on imports: it is the program whose functions
worker processes import (as ``__mp_main__``) under the forkserver and spawn start
methods, so what it imports is paid again in every worker, by every contender, as a
small user script would pay it. The functions are at module level so that every start
method can pickle them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator

perf = time.perf_counter

if os.environ.get("PYPER_BENCH_IMPORT"):
    # A pyper contender's program imports pyper at its top, as users' programs do: the
    # import is not part of any timed call (and spawn children import it with the program).
    import pyper  # noqa: F401


# --- user functions (module level, so that every start method can pickle them) -----------------

def trivial(x: int) -> int:
    return x + 1


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


def burn(x: int) -> int:
    """About 25 ms of pure-Python work here."""
    total = 0
    for i in range(600_000):
        total += i * x % 7
    return total


def payload(x: int) -> bytes:
    return os.urandom(1 << 20)  # 1 MiB, distinct each time


def boom(x: int) -> int:
    if x == 5:
        raise ValueError("boom")
    return x


def die(x: int) -> int:
    if x == 5:
        os._exit(3)
    return x


PULLED = [0]


def counting() -> Iterator[int]:
    """count(), counting in the parent how many items it has yielded."""
    i = 0
    while True:
        PULLED[0] += 1
        yield i
        i += 1


def spin(us: int) -> int:
    """A call of ``us`` microseconds of CPU (the moving case's item says how long), by
    the process's CPU clock: on a busy machine a call of wall time would take less CPU
    than it says, and the CPU of moving items would come out short."""
    clock = time.process_time
    end = clock() + us * 1e-6
    while clock() < end:
        pass
    return us


# The ETL case (issue 21): a CSV read in the parent, rows transformed in two worker
# processes (a handler for the bad ones), loaded into sqlite in batches of 1000.

ETL_COLUMNS = "id, name, domain, digest, cents, day, weekday, words, tags"


def write_csv(path: str, rows: int) -> int:
    """A CSV of ``rows`` rows, one in 1000 with a bad amount; how many are good."""
    import csv
    import random

    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    good = 0
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["id", "name", "email", "amount", "day", "note"])
        for i in range(rows):
            bad = i % 1000 == 999
            good += not bad
            name = f"{rng.choice(words)} {rng.choice(words)}-{i}"
            out.writerow([i, name, f"user{i}@Example{i % 50}.COM", "n/a" if bad else f"{rng.random() * 1000:.2f}",
                          f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}", " ".join(rng.choices(words, k=12))])
    return good


def read_rows(path: str) -> Iterator[list[str]]:
    import csv

    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        next(rows)
        yield from rows


def transform(row: list[str]) -> tuple[object, ...]:
    """Some 20-40 us of pure Python per row, as a real cleaning step takes."""
    import datetime
    import hashlib
    import json
    import re

    id_, name, email, amount, day, note = row
    cents = round(float(amount) * 100)  # ValueError on a bad row
    when = datetime.datetime.strptime(day, "%Y-%m-%d").date()
    domain = email.rsplit("@", 1)[1].lower()
    digest = hashlib.sha1(email.lower().encode()).hexdigest()[:12]
    title = " ".join(w.capitalize() for w in re.split(r"[\s-]+", name) if w)
    tags = sorted({re.sub(r"[aeiou]", "", w) for w in note.split() if len(w) > 4})
    return (int(id_), title, domain, digest, cents, when.isoformat(), when.weekday(),
            len(note.split()), json.dumps(tags))


def transformed_or_none(row: list[str]) -> tuple[object, ...] | None:
    """``transform``, a bad row giving None (the peers' stand-in for on_error=)."""
    try:
        return transform(row)
    except ValueError:
        return None


def skip_bad(item: object, exc: Exception) -> None:
    """The on_error handler: a bad row is dropped."""


def connect(path: str):  # type: ignore[no-untyped-def]
    import sqlite3

    return sqlite3.connect(path, timeout=60, isolation_level=None)


def load(conn, rows: list[tuple[object, ...]]) -> int:  # type: ignore[no-untyped-def]
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO rows ({ETL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    return len(rows)


def etl_db(path: str) -> None:
    conn = connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"CREATE TABLE rows ({ETL_COLUMNS})")
    conn.close()


def cpu_seconds() -> float:
    """This process's CPU time and its reaped children's."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def child_etl(who: str, n: int, mode: str, chunksize: int) -> dict:
    """``n`` CSV rows into sqlite; values: wall seconds, and "cpu": CPU seconds of the
    program and its workers (each contender's workers end, and are reaped, in the timer)."""
    import functools
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        csv_path, db = os.path.join(tmp, "rows.csv"), os.path.join(tmp, "rows.db")
        good = write_csv(csv_path, n)
        etl_db(db)
        t0, c0 = perf(), cpu_seconds()
        if who == "pyper":
            from pyper import task

            pipeline = (task(read_rows, branch=True)
                        | task(transform, workers=2, multiprocess=True, on_error=skip_bad)
                        | task(load, workers=2, setup=functools.partial(connect, db), batch=1000))
            loaded = sum(pipeline(csv_path))
        else:
            conn = connect(db)
            if who == "loop":
                outputs: Iterator[tuple[object, ...] | None] = map(transformed_or_none, read_rows(csv_path))
                pool = None
            else:
                # forked, as ours are: children of this process, whose CPU is counted here
                pool = multiprocessing.get_context("fork").Pool(2)
                outputs = pool.imap(transformed_or_none, read_rows(csv_path), chunksize=chunksize)
            loaded, batch = 0, []
            for out in outputs:
                if out is not None:
                    batch.append(out)
                    if len(batch) == 1000:
                        loaded += load(conn, batch)
                        batch = []
            if batch:
                loaded += load(conn, batch)
            if pool is not None:
                pool.close()
                pool.join()
            conn.close()
        wall, cpu = perf() - t0, cpu_seconds() - c0
        stored = sqlite3.connect(db).execute("SELECT count(*), count(DISTINCT id) FROM rows").fetchone()
    assert loaded == good and tuple(stored) == (good, good), (loaded, good, stored)
    return {"values": [wall], "cpu": [cpu]}


def child_move(who: str, n: int, mode: str, chunksize: int) -> dict:
    """Calls of ``n`` us through two workers; value: the CPU (us) spent per item beyond the
    calls themselves, the program's and its workers' (all started and reaped in the run):
    the difference between a run of ``items`` and one of a fifth as many, so that what a
    run costs once (starting the workers, ours or the pool's) cancels out."""
    us = n
    items = 200_000 if us <= 1 else min(100_000, int(4e6 / us))

    def cpu_of(count: int) -> float:
        c0 = cpu_seconds()
        if who == "pyper":
            total = sum(task_run(us, count))
        else:  # Pool.imap, its workers forked (as ours are): children of this process, reaped here
            pool = multiprocessing.get_context("fork").Pool(2)
            total = sum(pool.imap(spin, (us for _ in range(count)), chunksize))
            pool.close()
            pool.join()
        assert total == us * count
        return cpu_seconds() - c0 - count * us * 1e-6

    if who == "pyper":
        sum(task_run(us, 200))  # (pyper's modules loaded, as a program that ran it once)
    small = cpu_of(items // 5)
    return {"values": [(cpu_of(items) - small) / (items - items // 5) * 1e6]}


def task_run(us: int, items: int) -> Iterator[int]:
    from pyper import task

    def repeat(n: int) -> Iterator[int]:
        for _ in range(n):
            yield us

    return (task(repeat, branch=True) | task(spin, workers=2, multiprocess=True))(items)


# --- children: one contender per process --------------------------------------------------------

def ctx() -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context("forkserver")


def stage(func: Callable):  # type: ignore[no-untyped-def]
    """numbers | func (2 worker processes). The first task of a pipeline cannot have workers."""
    from pyper import task  # ours from src/ (PYTHONPATH), or 0.4.4 in the venv

    return task(numbers, branch=True) | task(func, workers=2, multiprocess=True)


class Peer:
    """Pool / PPE / mpire behind one interface: start(), imap(f, it, chunksize), stop()."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def start(self) -> Peer:
        if self.kind == "pool":
            self.pool = ctx().Pool(2)
        elif self.kind == "ppe":
            from concurrent.futures import ProcessPoolExecutor
            self.pool = ProcessPoolExecutor(2, mp_context=ctx())
        else:
            from mpire import WorkerPool
            self.pool = WorkerPool(n_jobs=2, start_method="forkserver", keep_alive=True)
        return self

    def imap(self, func: Callable, it, chunksize: int = 1):  # type: ignore[no-untyped-def]
        if self.kind == "pool":
            return self.pool.imap(func, it, chunksize=chunksize)
        if self.kind == "ppe":
            return self.pool.map(func, it, chunksize=chunksize)
        return self.pool.imap(func, it, chunk_size=chunksize)

    def warm(self) -> None:
        list(self.imap(trivial, range(100)))

    def stop(self) -> None:
        if self.kind == "pool":
            self.pool.terminate()
            self.pool.join()
        elif self.kind == "ppe":
            self.pool.shutdown(wait=True, cancel_futures=True)
        else:
            self.pool.terminate()


def ours_run(func: Callable, n: int, mode: str) -> float:
    p = stage(func)
    if mode == "warm":
        list(p(n))  # a first call: the stage's workers stay warm for the second
    t0 = perf()
    for _ in p(n):
        pass
    return perf() - t0


def peer_run(kind: str, func: Callable, n: int, mode: str, chunksize: int) -> float:
    t0 = perf()
    peer = Peer(kind).start()
    if mode == "warm":
        peer.warm()
        t0 = perf()
    for _ in peer.imap(func, numbers(n), chunksize):
        pass
    elapsed = perf() - t0  # to the last output; the pool's shutdown is not timed
    peer.stop()
    return elapsed


def child_trivial(who: str, n: int, mode: str, chunksize: int) -> dict:
    t = ours_run(trivial, n, mode) if who == "pyper" else peer_run(who, trivial, n, mode, chunksize)
    return {"values": [t * 1e6 / n]}


def child_burn(who: str, n: int, mode: str, chunksize: int) -> dict:
    if who == "sequential":
        t0 = perf()
        [burn(x) for x in range(n)]
        return {"values": [perf() - t0]}
    if who == "raw":
        return {"values": [raw_split(n) if mode == "warm" else raw_split_cold(n)]}
    t = ours_run(burn, n, mode) if who == "pyper" else peer_run(who, burn, n, mode, chunksize)
    return {"values": [t]}


def _half(items: list[int], ready, go, done) -> None:  # type: ignore[no-untyped-def]
    ready.put(1)
    go.wait()
    done.put([burn(x) for x in items])


def raw_split(n: int) -> float:
    """Two processes doing n/2 items each, started before the timer, released by an Event."""
    c = ctx()
    ready, done, go = c.Queue(), c.Queue(), c.Event()
    procs = [c.Process(target=_half, args=(list(range(i, n, 2)), ready, go, done)) for i in (0, 1)]
    for p in procs:
        p.start()
    ready.get(), ready.get()
    t0 = perf()
    go.set()
    done.get(), done.get()
    elapsed = perf() - t0
    for p in procs:
        p.join()
    return elapsed


def raw_split_cold(n: int) -> float:
    t0 = perf()
    with ctx().Pool(2) as pool:
        pool.map(burn, range(n), chunksize=n // 2)
        return perf() - t0


def child_payload(who: str, n: int, mode: str, chunksize: int) -> dict:
    t = ours_run(payload, n, mode) if who == "pyper" else peer_run(who, payload, n, mode, chunksize)
    return {"values": [n / t]}  # MiB/s


def child_percall(who: str, n: int, mode: str, chunksize: int) -> dict:
    """mode: warm (n calls after an untimed one), first (the first call of the program)."""

    def call() -> None:
        if who == "pyper":
            assert list(stage(trivial)(1)) == [1]  # numbers(1) | trivial
        else:
            peer = Peer(who).start()
            assert list(peer.imap(trivial, numbers(1))) == [1]
            peer.stop()

    calls = 1 if mode == "first" else n
    if calls > 1:
        call()
    values = []
    for _ in range(calls):
        t0 = perf()
        call()
        values.append((perf() - t0) * 1e3)
    return {"values": values}


def child_error(who: str, n: int, mode: str, chunksize: int) -> dict:
    """mode boom: raise at item 5 of 10; die: os._exit(3) at item 5. The stage (pool) is warm."""
    func = boom if mode == "boom" else die
    values, seen = [], set()
    for _ in range(n):
        if who == "pyper":
            p = stage(func)
            list(p(5))  # warm, no error (items 0-4)
            run: Callable[[], object] = lambda: list(p(10))
        else:
            peer = Peer(who).start()
            peer.warm()
            run = lambda: list(peer.imap(func, range(10)))
        t0 = perf()
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - we report which
            values.append((perf() - t0) * 1e3)
            seen.add(type(exc).__name__)
        else:
            raise AssertionError("no exception")
        if who != "pyper":
            peer.stop()
    return {"values": values, "note": "raised " + ", ".join(sorted(seen))}


def child_break(who: str, n: int, mode: str, chunksize: int) -> dict:
    """Consume 10 outputs of count() | trivial (2 workers), then break: time the close."""
    values, pulled = [], []
    for _ in range(n):
        PULLED[0] = 0
        if who == "pyper":
            from pyper import task
            it = iter((task(counting, branch=True) | task(trivial, workers=2, multiprocess=True))())
            close = it.close
        else:
            peer = Peer(who).start()
            it = iter(peer.imap(trivial, counting()))
            close = peer.stop
        for i, _ in enumerate(it):
            if i == 9:
                break
        t0 = perf()
        close()
        values.append((perf() - t0) * 1e3)
        pulled.append(PULLED[0] - 10)
    return {"values": values, "pulled": pulled}


CHILDREN = {"trivial": child_trivial, "burn": child_burn, "payload": child_payload,
            "percall": child_percall, "error": child_error, "break": child_break, "etl": child_etl,
            "move": child_move}


def main(argv: list[str]) -> None:
    """argv: case, who, n, mode, chunksize. A mode of "cold-spawn" (or -fork, -forkserver)
    starts ours with that method (``pyper.set_start_method``); a bare mode is ours's default
    (fork on Linux, while no thread runs). 0.4.4 uses forkserver unless told otherwise."""
    case, who, n, mode, chunksize = argv[0], argv[1], int(argv[2]), argv[3], int(argv[4])
    mode, _, method = mode.partition("-")
    if who == "pyper" and os.environ.get("PYPER_IS_ORIGINAL"):
        multiprocessing.set_start_method(method or "forkserver")  # 0.4.4 uses the default context
    elif who == "pyper" and method:
        import pyper

        pyper.set_start_method(method)  # type: ignore[arg-type]
    print(json.dumps(CHILDREN[case](who, n, mode, chunksize)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
