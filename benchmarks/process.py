"""Process stages against the standard library's process pools, in one run.

    python benchmarks/process.py [--rounds N]

A first cut for issue 7: our process stage (multiprocess=True), ProcessPoolExecutor.map,
multiprocessing.Pool.imap (chunksize 1 and a tuned one) and, for CPU-bound work, a raw
two-process split. mpire and python-pyper 0.4.4 are not in it yet. Rounds are
interleaved; medians are printed. Every contender uses the forkserver start method, as
our stages do by default.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from pyper import task  # noqa: E402

CTX = multiprocessing.get_context("forkserver")
N_TRIVIAL = 100_000


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
    return os.urandom(1 << 20)  # 1 MiB, distinct each time (pickle cannot dedupe)


def length(b: bytes) -> int:
    return len(b)


def boom(x: int) -> int:
    if x == 5:
        raise ValueError("boom")
    return x


def die(x: int) -> int:
    if x == 5:
        os._exit(3)
    return x


def timed(func: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    func()
    return time.perf_counter() - t0


def cases() -> dict[str, dict[str, Callable[[], object]]]:
    ours_trivial = task(numbers, branch=True) | task(trivial, workers=2, multiprocess=True)
    ours_burn = task(numbers, branch=True) | task(burn, workers=2, multiprocess=True)
    ours_payload = task(numbers, branch=True) | task(payload, workers=2, multiprocess=True) | task(length)
    ours_one = task(numbers, branch=True) | task(trivial, workers=2, multiprocess=True)
    ours_boom = task(numbers, branch=True) | task(boom, workers=2, multiprocess=True)
    ours_die = task(numbers, branch=True) | task(die, workers=2, multiprocess=True)

    def expect_error(p: object, n: int) -> None:
        try:
            list(p(n))  # type: ignore[operator]
        except Exception:
            return
        raise AssertionError("no error")

    def raw_split() -> None:
        with CTX.Pool(2) as pool:
            pool.map(burn, range(16), chunksize=8)

    def pool_imap(chunksize: int, func: Callable[[int], object], n: int) -> Callable[[], object]:
        def run() -> None:
            with CTX.Pool(2) as pool:
                for _ in pool.imap(func, range(n), chunksize=chunksize):
                    pass
        return run

    def ppe(func: Callable[[int], object], n: int, chunksize: int = 1) -> Callable[[], object]:
        def run() -> None:
            with ProcessPoolExecutor(2, mp_context=CTX) as ex:
                for _ in ex.map(func, range(n), chunksize=chunksize):
                    pass
        return run

    return {
        f"trivial items, {N_TRIVIAL} (us per item)": {
            "ours: multiprocess, workers=2": lambda: sum(ours_trivial(N_TRIVIAL)),
            "Pool.imap chunksize=1": pool_imap(1, trivial, N_TRIVIAL),
            "Pool.imap chunksize=1000": pool_imap(1000, trivial, N_TRIVIAL),
            "ProcessPoolExecutor.map chunksize=1000": ppe(trivial, N_TRIVIAL, 1000),
        },
        "CPU-bound, 16 items of ~25 ms, 2 workers (s)": {
            "ours: multiprocess, workers=2": lambda: list(ours_burn(16)),
            "raw two-process split (Pool.map, chunksize 8)": raw_split,
            "sequential": lambda: [burn(x) for x in range(16)],
        },
        "1 MiB payloads, 200 items (s)": {
            "ours: multiprocess, workers=2": lambda: sum(ours_payload(200)),
            "Pool.imap chunksize=1": pool_imap(1, payload, 200),
        },
        "per call, one item, 2 workers, warm program (s)": {
            "ours: multiprocess, workers=2": lambda: list(ours_one(1)),
        },
        "an error in a child, to the caller (s, includes the run's start)": {
            "ours: multiprocess, workers=2": lambda: expect_error(ours_boom, 10),
        },
        "a child that dies, to the caller (s, includes the run's start)": {
            "ours: multiprocess, workers=2": lambda: expect_error(ours_die, 10),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    table = cases()
    list((task(numbers, branch=True) | task(trivial, multiprocess=True))(1))  # start the fork server
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for case, contenders in table.items():
            names = list(contenders)
            names = names[r % len(names):] + names[: r % len(names)]  # rotate the order
            for name in names:
                results.setdefault((case, name), []).append(timed(contenders[name]))
    print(f"Python {sys.version.split()[0]}, {args.rounds} interleaved rounds, medians (min-max)")
    for case, contenders in table.items():
        print(f"\n{case}")
        for name in contenders:
            values = results[(case, name)]
            scale, unit = (1e6 / N_TRIVIAL, "us/item") if case.startswith("trivial") else (1.0, "s")
            med = statistics.median(values) * scale
            print(f"  {name:48s} {med:9.3f} {unit}  ({min(values) * scale:.3f}-{max(values) * scale:.3f})")
            if case.startswith("1 MiB"):
                print(f"  {'':48s} {200 / statistics.median(values):9.1f} MiB/s")


if __name__ == "__main__":
    main()
