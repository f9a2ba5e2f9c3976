"""retries=, retry_on=, backoff=: call a flaky service again, with a growing wait.

    python examples/retries.py

Prints:

    got 10 pages; 3 calls failed once and were retried
"""

import logging

from pyper import task

failed_once: set[int] = set()


class Unavailable(Exception):
    """What a flaky service raises now and then (a 503)."""


def fetch(page: int) -> str:
    if page % 4 == 1 and page not in failed_once:  # pages 1, 5, 9 fail on the first try
        failed_once.add(page)
        raise Unavailable(f"page {page}: 503")
    return f"page {page}"


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)  # each retry is one INFO record on "pyper"
    pipeline = task(range, branch=True) | task(
        fetch, workers=3, retries=3, retry_on=Unavailable, backoff=0.05  # 0.05 s, 0.1 s, 0.2 s ...
    )
    pages = list(pipeline(10))
    assert sorted(pages) == [f"page {i}" for i in range(10)]
    print(f"got {len(pages)} pages; {len(failed_once)} calls failed once and were retried")
