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
            "percall": child_percall, "error": child_error, "break": child_break}


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
