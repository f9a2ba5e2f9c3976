"""The synchronous example of the original Pyper README, unchanged: prints `Total  400` in ~2 s."""
import time
from typing import Iterable

from pyper import task


def step1(limit: int):
    for i in range(limit):
        yield i


def step2(data: int):
    time.sleep(1)
    return data + 1


def step3(data: int):
    time.sleep(1)
    return 2 * data - 1


def print_sum(data: Iterable[int]):
    total = 0
    for output in data:
        total += output
    print("Total ", total)


def main():
    run = task(step1) \
        | task(step2, concurrency=20) \
        | task(step3, concurrency=20) \
        > print_sum
    # Run synchronously
    run(limit=20)


if __name__ == "__main__":
    main() # takes ~2 seconds
