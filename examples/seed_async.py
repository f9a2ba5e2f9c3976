"""The first example of the original Pyper README, unchanged: prints `Total  400` in ~2 s."""
import asyncio
import time
from typing import AsyncIterable

from pyper import task


def step1(limit: int):
    """Generate some data."""
    for i in range(limit):
        yield i


async def step2(data: int):
    """Simulate some asynchronous work."""
    await asyncio.sleep(1)
    print("Finished async sleep")
    return data + 1


def step3(data: int):
    """Simulate some IO-bound (non awaitable) work."""
    time.sleep(1)
    print("Finished sync sleep")
    return 2 * data - 1


async def print_sum(data: AsyncIterable[int]):
    """Print the sum of values from a data stream."""
    total = 0
    async for output in data:
        total += output
    print("Total ", total)


async def main():
    # Define a pipeline of tasks using `pyper.task`
    run = task(step1) | task(step2, concurrency=20) | task(step3, concurrency=20) > print_sum
    await run(limit=20)


if __name__ == "__main__":
    asyncio.run(main()) # takes ~2 seconds
