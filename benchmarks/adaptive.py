"""Workers that size themselves (`workers=(1, 64)`) against hand-tuned fixed sizes, in one run.

    python benchmarks/adaptive.py                     # 5 interleaved rounds, about 2 minutes
    python benchmarks/adaptive.py --rounds 1          # smoke run
    python benchmarks/adaptive.py --markdown benchmarks/RESULTS.md

Each sample is a fresh process (`--sample`), so no contender finds threads another one left
parked. pyper comes from this checkout's src/. Cases (issue 10):

- three stages: 500 items through stages of 10 ms, 50 ms and 5 ms calls (sleeps: calls that
  wait, as I/O does), threads; `workers=(1, 64)` everywhere against a grid of fixed sizes
  (the best of them in the same round is the hand-tuned one) and a plain guess (16
  everywhere); target: the sizing run within 1.3x of the best fixed one.
- the same with async functions (asyncio.sleep).
- slower calls: items arrive every millisecond; calls take 2 ms for 0.6 s, then 40 ms. The
  size the stage ran at just before the slowdown and the size it settled on after it;
  target: at least twice as many workers after.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))
SECTION = "## Workers that size themselves (benchmarks/adaptive.py)"

from _report import Row, header, median_range, print_rows, table, write_section  # noqa: E402

perf = time.perf_counter
ITEMS = 500
#: The fixed sizes tried per stage; their product is the grid of hand-tuned contenders.
GRID = ((16, 64), (32, 64), (8, 64))
GUESS = (16, 16, 16)


def source(n: int) -> Any:
    yield from range(n)


def s10(x: int) -> int:
    time.sleep(0.010)
    return x


def s50(x: int) -> int:
    time.sleep(0.050)
    return x


def s5(x: int) -> int:
    time.sleep(0.005)
    return x


async def a10(x: int) -> int:
    await asyncio.sleep(0.010)
    return x


async def a50(x: int) -> int:
    await asyncio.sleep(0.050)
    return x


async def a5(x: int) -> int:
    await asyncio.sleep(0.005)
    return x


def three_stages(kind: str, sizes: list[Any]) -> float:
    from pyper import task

    funcs = (s10, s50, s5) if kind == "threads" else (a10, a50, a5)
    p = task(source)
    for func, size in zip(funcs, sizes):
        p = p | task(func, workers=tuple(size) if isinstance(size, list) else size)
    started = perf()
    if kind == "threads":
        out = list(p(ITEMS))
    else:
        async def main() -> list[int]:
            return [x async for x in p(ITEMS)]
        out = asyncio.run(main())
    took = perf() - started
    assert sorted(out) == list(range(ITEMS))
    return took


def slower_calls() -> dict[str, float]:
    """The sizes before and after the calls slow down, and the run's time."""
    from pyper import observe, task

    start = perf()

    def steady(n: int) -> Any:
        for i in range(n):
            time.sleep(0.001)
            yield i

    def slowing(x: int) -> int:
        time.sleep(0.002 if perf() - start < 0.6 else 0.04)
        return x

    before = 0
    with observe() as seen:
        for _ in (task(steady) | task(slowing, workers=(1, 64)))(1200):
            if 0.3 < perf() - start < 0.58:
                before = max(before, seen.last.stages[1].size)
    return {"before": before, "after": seen.last.stages[1].size, "seconds": perf() - start}


def sample(spec: dict[str, Any]) -> Any:
    """One measurement in a fresh process (``--sample JSON``)."""
    cmd = [sys.executable, __file__, "--sample", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write the section into this file")
    parser.add_argument("--sample", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sample:
        spec = json.loads(args.sample)
        print(json.dumps(slower_calls() if spec["case"] == "slower" else three_stages(spec["case"], spec["sizes"])))
        return
    load_before = os.getloadavg()
    started = perf()
    fixed = [list(c) for c in itertools.product(*GRID)]
    contenders = [("sizing", [[1, 64]] * 3), ("guess", list(GUESS))] + [(f"fixed {c}", c) for c in fixed]
    times: dict[str, dict[str, list[float]]] = {kind: {name: [] for name, _ in contenders} for kind in ("threads", "async")}
    ratios: dict[str, list[float]] = {"threads": [], "async": []}
    best_of: dict[str, list[str]] = {"threads": [], "async": []}
    slower: list[dict[str, float]] = []
    for r in range(args.rounds):
        for kind in ("threads", "async"):
            order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
            this = {name: sample({"case": kind, "sizes": sizes}) for name, sizes in order}
            for name, v in this.items():
                times[kind][name].append(v)
            best = min((v, name) for name, v in this.items() if name.startswith("fixed"))
            ratios[kind].append(this["sizing"] / best[0])
            best_of[kind].append(best[1])
            print(f"[{r + 1}/{args.rounds}] {kind}: sizing {this['sizing']:.3f} s, best {best[1]} {best[0]:.3f} s, "
                  f"ratio {ratios[kind][-1]:.2f}", flush=True)
        slower.append(sample({"case": "slower"}))
        print(f"[{r + 1}/{args.rounds}] slower calls: {slower[-1]}", flush=True)
    took = perf() - started

    rows: list[Row] = []

    def row(case: str, who: str, values: list[float], unit: str, target: str = "", met: bool | None = None) -> None:
        status = "ref" if met is None else ("PASS" if met else "**MISS**")
        rows.append((case, who, median_range(values), unit, target, status))

    for kind in ("threads", "async"):
        case = f"{kind}: {ITEMS} items, stages of 10, 50, 5 ms"
        row(case, "workers=(1, 64) everywhere", times[kind]["sizing"], "s")
        best_name = max(set(best_of[kind]), key=best_of[kind].count)
        row("", f"best fixed sizes (most often {best_name.removeprefix('fixed ')})",
            [min(times[kind][name][i] for name, _ in contenders if name.startswith("fixed"))
             for i in range(args.rounds)], "s")
        row("", "a guess: 16 everywhere", times[kind]["guess"], "s")
        row("", "sizing / best fixed (paired per round)", ratios[kind], "x", "<= 1.3 x",
            statistics.median(ratios[kind]) <= 1.3)
    case = "slower calls: 2 ms, then 40 ms after 0.6 s"
    row(case, "workers just before the slowdown", [s["before"] for s in slower], "workers")
    row("", "workers it settled on after it", [s["after"] for s in slower], "workers")
    gains = [s["after"] / max(1, s["before"]) for s in slower]
    row("", "after / before", gains, "x", ">= 2 x", statistics.median(gains) >= 2)
    print_rows(rows)
    if args.markdown:
        lines = header(SECTION, f"python benchmarks/adaptive.py --markdown {args.markdown}",
                       "; one fresh process per sample", load_before, took, args.rounds)
        write_section(args.markdown, SECTION, "\n".join([*lines, "", *table(rows)]) + "\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
