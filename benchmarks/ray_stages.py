"""Ray stages (`task(f, workers=4, executor="ray")`) against hand-written Ray, in one run.

    python benchmarks/ray_stages.py                     # 5 interleaved rounds
    python benchmarks/ray_stages.py --rounds 1          # smoke run
    python benchmarks/ray_stages.py --markdown benchmarks/RESULTS.md

Needs the ray extra (`pip install -e '.[ray]'`). One local Ray (`ray.init(num_cpus=2)`)
serves every round; pyper comes from this checkout's src/. Cases (issue 9):

- trivial: 200 trivial items through a stage of 4 workers: per-item time of ours, of a
  hand-written `ray.wait` refill loop (4 calls in flight, one task per item) and of
  `ray.util.ActorPool` (4 actors); target: ours at least 10x cheaper than the refill loop.
- cpu: 16 CPU-bound items of ~25 ms on 2 CPUs: speedup of ours (workers=2) over a
  sequential loop in this process; target at least 1.7x. Each round times each
  contender twice, there and back (A B C C B A), three times: the median is of
  3 x rounds means of two.
- handoff: two consecutive Ray stages, 20 items of 1 MiB made by the first: the bytes the
  driver fetched (ours counts every object it gets), against the hand-written two steps
  that `ray.get` the intermediate values; target: near zero (under 64 KiB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))
SECTION = "## Ray stages (benchmarks/ray_stages.py)"

import ray  # noqa: E402
from ray.util import ActorPool  # noqa: E402

from _report import Row, header, median_range, print_rows, table, write_section  # noqa: E402
from pyper import task  # noqa: E402
from pyper._engine import _ray as pyper_ray  # noqa: E402

perf = time.perf_counter
#: CPU-bound pairs (there and back) timed per round.
CPU_PAIRS = 3


def trivial(x: int) -> int:
    return x + 1


def burn(x: int) -> int:
    """About 25 ms of pure-Python work here."""
    total = 0
    for i in range(600_000):
        total += i * x % 7
    return total


def megabyte(x: int) -> bytes:
    return os.urandom(1 << 20)


def first_byte(b: bytes) -> int:
    return b[0]


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


@ray.remote
def r_trivial(x: int) -> int:
    return x + 1


@ray.remote
def r_megabyte(x: int) -> bytes:
    return os.urandom(1 << 20)


@ray.remote
def r_first_byte(b: bytes) -> int:
    return b[0]


@ray.remote
class TrivialActor:
    def call(self, x: int) -> int:
        return x + 1


def refill_loop(n: int, in_flight: int = 4) -> list[int]:
    """The hand-written baseline: at most ``in_flight`` tasks, refilled as they finish."""
    out: list[int] = []
    pending: list[Any] = []
    items = iter(range(n))
    for x in items:
        pending.append(r_trivial.remote(x))
        if len(pending) >= in_flight:
            break
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        out.extend(ray.get(done))
        for x in items:
            pending.append(r_trivial.remote(x))
            break
    return out


def time_trivial(who: str, n: int, pool: Any) -> float:
    t0 = perf()
    if who == "ours":
        out = list((task(numbers, branch=True) | task(trivial, workers=4, executor="ray"))(n))
    elif who == "refill":
        out = refill_loop(n)
    else:
        out = list(pool.map_unordered(lambda a, x: a.call.remote(x), range(n)))
    elapsed = perf() - t0
    assert sorted(out) == [x + 1 for x in range(n)], who
    return elapsed * 1e3 / n  # ms per item


def time_cpu(who: str, n: int) -> float:
    if who == "raw":  # two plain processes, pre-started: what this machine's two CPUs give
        sys.path.insert(0, str(HERE))
        from process_child import raw_split

        return raw_split(n)
    t0 = perf()
    if who == "sequential":
        out = [burn(x) for x in range(n)]
    else:
        out = sorted((task(numbers, branch=True) | task(burn, workers=2, executor="ray"))(n))
    elapsed = perf() - t0
    assert len(out) == n, who
    return elapsed


def fetched_bytes(who: str, n: int) -> float:
    """KiB the driver fetched for two consecutive stages on n items of 1 MiB."""
    if who == "hand":
        values = ray.get([r_megabyte.remote(x) for x in range(n)])  # through the driver
        got = sum(len(v) for v in values)
        out = ray.get([r_first_byte.remote(v) for v in values])
        return (got + 8 * len(out)) / 1024
    total = [0]
    real_get = pyper_ray._get

    def counting_get(run: Any, name: str, ref: Any, timeout: float | None = None) -> Any:
        value = real_get(run, name, ref, timeout)
        total[0] += _size(value)
        return value

    pyper_ray._get = counting_get
    try:
        p = (task(numbers, branch=True) | task(megabyte, workers=2, executor="ray")
             | task(first_byte, workers=2, executor="ray"))
        out = list(p(n))
    finally:
        pyper_ray._get = real_get
    assert len(out) == n
    return total[0] / 1024


def _size(value: Any) -> int:
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(_size(v) for v in value) + 8
    return 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write the section into this file")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = perf()
    t0 = perf()
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    init_s = perf() - t0
    pool = ActorPool([TrivialActor.remote() for _ in range(4)])
    # warm-up: Ray's workers and our stage's first calls
    time_trivial("ours", 20, pool), time_trivial("refill", 20, pool), time_trivial("pool", 20, pool)
    time_cpu("ours", 2)
    trivial_rows: dict[str, list[float]] = {"ours": [], "refill": [], "pool": []}
    cpu_rows: dict[str, list[float]] = {"sequential": [], "ours": [], "raw": []}
    handoff_rows: dict[str, list[float]] = {"ours": [], "hand": []}
    ratios: list[float] = []
    speedups: list[float] = []
    ceilings: list[float] = []
    raw_speedups: list[float] = []
    for r in range(args.rounds):
        order = ["ours", "refill", "pool"]
        order = order[r % 3:] + order[: r % 3]
        this = {who: time_trivial(who, 200, pool) for who in order}
        for who, v in this.items():
            trivial_rows[who].append(v)
        ratios.append(this["refill"] / this["ours"])
        # There and back (A B C C B A), CPU_PAIRS times a round: this machine's speed
        # drifts by tens of percent within seconds; each contender's mean of two is then
        # timed at about the same time, and the median is of many such pairs.
        for k in range(CPU_PAIRS):
            there = ["sequential", "ours", "raw"] if (r + k) % 2 else ["raw", "ours", "sequential"]
            times: dict[str, list[float]] = {who: [] for who in there}
            for who in there + there[::-1]:
                times[who].append(time_cpu(who, 16))
            cpu = {who: statistics.mean(v) for who, v in times.items()}
            for who, v in cpu.items():
                cpu_rows[who].append(v)
            speedups.append(cpu["sequential"] / cpu["ours"])
            ceilings.append(cpu["raw"] / cpu["ours"])
            raw_speedups.append(cpu["sequential"] / cpu["raw"])
        for who in ("ours", "hand"):
            handoff_rows[who].append(fetched_bytes(who, 20))
        print(f"[{r + 1}/{args.rounds}] trivial ms/item {this}; cpu s {cpu}; speedup {speedups[-1]:.2f}", flush=True)
    ray.shutdown()
    took = perf() - started

    rows: list[Row] = []

    def row(case: str, who: str, values: list[float], unit: str, target: str = "", met: bool | None = None) -> None:
        status = "ref" if met is None else ("PASS" if met else "**MISS**")
        rows.append((case, who, median_range(values), unit, target, status, ()))

    row("trivial: 200 items, 4 workers (per item)", "ours (batches)", trivial_rows["ours"], "ms/item")
    row("", "hand-written ray.wait refill loop, one task per item", trivial_rows["refill"], "ms/item")
    row("", "ray.util.ActorPool, 4 actors", trivial_rows["pool"], "ms/item")
    row("", "refill loop time / ours time (paired per round)", ratios, "x", ">= 10 x", statistics.median(ratios) >= 10)
    row("cpu: 16 items of ~25 ms, num_cpus=2", "sequential, in the driver", cpu_rows["sequential"], "s")
    row("", "ours, workers=2", cpu_rows["ours"], "s")
    row("", "speedup: sequential / ours (paired, 3 pairs a round)", speedups, "x", ">= 1.7 x", statistics.median(speedups) >= 1.7)
    row("", "raw two-process split, pre-started (this machine's ceiling)", cpu_rows["raw"], "s")
    row("", "raw split time / ours time (paired, 3 pairs a round)", ceilings, "x")
    row("", "the raw split's own speedup: sequential / raw split (the ceiling)", raw_speedups, "x")
    ours_kib = statistics.median(handoff_rows["ours"])
    row("handoff: two Ray stages, 20 items of 1 MiB", "ours: KiB the driver fetched", handoff_rows["ours"], "KiB", "< 64 KiB", ours_kib < 64)
    row("", "hand-written, ray.get between the steps", handoff_rows["hand"], "KiB")

    print_rows(rows)
    if args.markdown:
        lines = header(SECTION, f"python benchmarks/ray_stages.py --markdown {args.markdown}",
                       f"; ray {ray.__version__}; `ray.init(num_cpus=2)` took {init_s:.1f} s",
                       load_before, took, args.rounds)
        write_section(args.markdown, SECTION, "\n".join([*lines, "", *table(rows)]) + "\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
