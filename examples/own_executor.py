"""A stage on an executor of your own: a ``ProcessPoolExecutor`` that other code shares.

pyper submits the stage's calls to it in batches, at most ``workers`` at once, keeps the
output in input order (``ordered=True``), and never shuts it down.

Prints:
    [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
    the pool still works: 49
"""

from concurrent.futures import ProcessPoolExecutor

from pyper import task


def square(x: int) -> int:
    return x * x


if __name__ == "__main__":
    with ProcessPoolExecutor(max_workers=2) as pool:
        pipeline = task(range, branch=True) | task(square, workers=2, ordered=True, executor=pool)
        print(list(pipeline(10)))
        print("the pool still works:", pool.submit(square, 7).result())
