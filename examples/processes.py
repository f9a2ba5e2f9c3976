"""CPU-bound work in worker processes: two processes of pure Python, side by side.

Prints:
    primes below 20000, 40000, 60000, 80000: [2262, 4203, 6057, 7837]
"""
from pyper import task


def limits(count: int):
    yield from range(20_000, 20_000 * (count + 1), 20_000)


def count_primes(limit: int) -> int:
    """Pure Python: threads would take turns at the GIL; processes run at once."""
    return sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(2, limit))


if __name__ == "__main__":  # under forkserver and spawn, the workers import this module
    pipeline = task(limits) | task(count_primes, workers=2, multiprocess=True, ordered=True)
    print("primes below 20000, 40000, 60000, 80000:", list(pipeline(4)))
