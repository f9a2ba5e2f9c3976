"""rate=: at most 20 calls a second to an API, across all 10 workers.

    python examples/rate_limit.py

Prints:

    30 calls in 1.4-1.6 s, evenly spaced (about 50 ms apart)
"""

import threading
import time

from pyper import task

starts: list[float] = []
lock = threading.Lock()


def call_api(n: int) -> int:
    with lock:
        starts.append(time.monotonic())
    return n


if __name__ == "__main__":
    pipeline = task(range, branch=True) | task(call_api, workers=10, rate=20)
    assert sorted(pipeline(30)) == list(range(30))
    starts.sort()
    span = starts[-1] - starts[0]  # 29 gaps of 50 ms
    closest = min(b - a for a, b in zip(starts, starts[1:]))
    assert 1.4 <= span <= 1.6 and closest > 0.025, (span, closest)
    print("30 calls in 1.4-1.6 s, evenly spaced (about 50 ms apart)")
