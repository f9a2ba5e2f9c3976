"""timeout=: give up on a call that hangs, and go on without its item.

    python examples/timeout.py

Prints:

    got [1, 2, 4, 5]; 2 calls gave up after 0.2 s
"""

import logging
import time

from pyper import task

given_up: list[int] = []


def lookup(key: int) -> int:
    time.sleep(1.0 if key in (0, 3) else 0.01)  # two calls hang (a stuck service)
    return key


def note(key: int, exc: Exception) -> None:
    assert isinstance(exc, TimeoutError)
    given_up.append(key)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    pipeline = task(range, branch=True) | task(lookup, workers=2, timeout=0.2, on_error=note)
    print(f"got {sorted(pipeline(6))}; {len(given_up)} calls gave up after 0.2 s")
