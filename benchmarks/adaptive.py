"""Workers that size themselves (`workers=(1, 64)`) against hand-tuned fixed sizes, in one run.

    python benchmarks/adaptive.py                     # 5 interleaved rounds, about 2 minutes
    python benchmarks/adaptive.py --rounds 1          # smoke run
    python benchmarks/adaptive.py --markdown benchmarks/RESULTS.md
    python benchmarks/adaptive.py --vs 844bca5        # and every contender with the engine of 844bca5

Each sample is a fresh process (`--sample`), so no contender finds threads another one left
parked. pyper comes from this checkout's src/; with `--vs REV` (repeatable) every contender
runs a second time per round with the engine (`src/`) of git revision REV (`_vs.py`), in the
same rotation, and the rows of ours show ours / ours@REV. Cases (issue 10):

- three stages: 500 items through stages of 10 ms, 50 ms and 5 ms calls (sleeps: calls that
  wait, as I/O does), threads; `workers=(1, 64)` everywhere against a grid of fixed sizes
  (the best of them in the same round is the hand-tuned one) and a plain guess (16
  everywhere); target: the sizing run within 1.3x of the best fixed one.
- the same with async functions (asyncio.sleep).
- mixed I/O and CPU (issue 21): stages of 10 ms of sleep, 1 ms of pure Python (it holds
  the GIL: more threads only contend for it) and 5 ms of sleep, threads; the grid tries
  1 and 4 workers for the CPU stage. Issue 21's target for every case: the sizing run
  within 1.15x of the best fixed one in every round (the worst round's ratio is a row).
- slower calls: items arrive every millisecond; calls take 2 ms for 0.6 s, then 40 ms. The
  size the stage ran at just before the slowdown and the size it settled on after it;
  target: at least twice as many workers after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
#: The engine's src/: this checkout's, or (in a --sample child) the one the runner names.
sys.path.insert(0, os.environ.get("PYPER_BENCH_SRC", str(REPO / "src")))
SECTION = "## Workers that size themselves (benchmarks/adaptive.py)"

import _vs  # noqa: E402
from _report import Row, engine_rows, header, print_rows, table, write_section  # noqa: E402

perf = time.perf_counter
ITEMS = 500
#: The fixed sizes tried per stage, per case; their product is the grid of hand-tuned contenders.
GRIDS = {
    "threads": ((16, 64), (32, 64), (8, 64)),
    "async": ((16, 64), (32, 64), (8, 64)),
    "mixed": ((16, 64), (1, 4), (8, 64)),
}
#: Ops of pure Python per call of the mixed case's CPU stage: about 1 ms here.
SPIN = 20_000
GUESS = (16, 16, 16)
#: The rows where a higher value is the better one (the legend of --vs says so).
MORE_IS_BETTER = "after / before"


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


def spin(x: int) -> int:
    total = 0
    for i in range(SPIN):
        total += i * i
    return x


def three_stages(kind: str, sizes: list[Any]) -> float:
    from pyper import task

    funcs = {"threads": (s10, s50, s5), "async": (a10, a50, a5), "mixed": (s10, spin, s5)}[kind]
    p = task(source)
    for func, size in zip(funcs, sizes):
        p = p | task(func, workers=tuple(size) if isinstance(size, list) else size)
    started = perf()
    if kind != "async":
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


class SampleFailed(Exception):
    def __init__(self, last_line: str) -> None:
        super().__init__(last_line)
        self.last_line = last_line


def sample(spec: dict[str, Any], src: Path) -> Any:
    """One measurement in a fresh process (``--sample JSON``) with the engine in ``src``."""
    cmd = [sys.executable, __file__, "--sample", json.dumps(spec)]
    env = {**os.environ, "PYPER_BENCH_SRC": str(src)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise SampleFailed(lines[-1] if lines else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write the section into this file")
    parser.add_argument("--sample", help=argparse.SUPPRESS)
    _vs.add_argument(parser)
    args = parser.parse_args()
    if args.sample:
        spec = json.loads(args.sample)
        print(json.dumps(slower_calls() if spec["case"] == "slower" else three_stages(spec["case"], spec["sizes"])))
        return
    with contextlib.ExitStack() as stack:
        try:
            engines = stack.enter_context(_vs.checkouts(args.vs))
        except ValueError as exc:
            parser.error(str(exc))
        measure(args, engines)


def measure(args: argparse.Namespace, engines: list[_vs.Engine]) -> None:
    load_before = os.getloadavg()
    started = perf()
    srcs = {"ours": REPO / "src", **{e.name: e.src for e in engines}}  # engine -> its src/
    kinds = tuple(GRIDS)
    contenders = {k: [("sizing", [[1, 64]] * 3), ("guess", list(GUESS))]
                  + [(f"fixed {list(c)}", list(c)) for c in itertools.product(*GRIDS[k])] for k in kinds}
    runs = {k: [(who, name, sizes) for who in srcs for name, sizes in contenders[k]] for k in kinds}
    # [kind][engine][contender] -> one time per round
    times: dict[str, dict[str, dict[str, list[float]]]] = {
        k: {who: {name: [] for name, _ in contenders[k]} for who in srcs} for k in kinds}
    ratios: dict[str, dict[str, list[float]]] = {k: {who: [] for who in srcs} for k in kinds}
    best: dict[str, dict[str, list[float]]] = {k: {who: [] for who in srcs} for k in kinds}
    best_of: dict[str, dict[str, list[str]]] = {k: {who: [] for who in srcs} for k in kinds}
    slower: dict[str, list[dict[str, float]]] = {who: [] for who in srcs}
    failed: dict[tuple[str, str], str] = {}  # (engine, case) -> why its rows show no values
    empty: dict[str, dict[str, str]] = {}  # case -> engine -> the status of its rows: SKIP or ERROR
    notes: list[str] = []

    def take(who: str, case: str, spec: dict[str, Any]) -> Any:
        """A sample, or None once this engine failed on this case (a twin's failure is
        reported, not fatal: an older engine may lack what the case uses)."""
        if (who, case) in failed:
            return None
        try:
            return sample(spec, srcs[who])
        except SampleFailed as exc:
            if who == "ours":
                raise
            lacks = _vs.lacks_api(exc.last_line)
            what = "lacks what the case uses" if lacks else "failed"
            empty.setdefault(case, {})[who] = "SKIP" if lacks else "ERROR"
            failed[who, case] = f"{who} {what}: {exc.last_line}"
            notes.append(f"{case}: {failed[who, case]}")
            print(f"{case}: {failed[who, case]}", flush=True)
            return None

    for r in range(args.rounds):
        for kind in kinds:
            order = runs[kind][r % len(runs[kind]):] + runs[kind][: r % len(runs[kind])]
            this: dict[str, dict[str, float]] = {who: {} for who in srcs}
            for who, name, sizes in order:
                v = take(who, kind, {"case": kind, "sizes": sizes})
                if v is not None:
                    this[who][name] = v
            for who, got in this.items():
                if len(got) < len(contenders[kind]):
                    continue  # this engine failed on this case
                for name, v in got.items():
                    times[kind][who][name].append(v)
                top = min((v, name) for name, v in got.items() if name.startswith("fixed"))
                ratios[kind][who].append(got["sizing"] / top[0])
                best[kind][who].append(top[0])
                best_of[kind][who].append(top[1])
                print(f"[{r + 1}/{args.rounds}] {kind}, {who}: sizing {got['sizing']:.3f} s, best {top[1]} "
                      f"{top[0]:.3f} s, ratio {ratios[kind][who][-1]:.2f}", flush=True)
        for who in list(srcs)[r % len(srcs):] + list(srcs)[: r % len(srcs)]:
            got_slower = take(who, "slower", {"case": "slower"})
            if got_slower is not None:
                slower[who].append(got_slower)
                print(f"[{r + 1}/{args.rounds}] slower calls, {who}: {got_slower}", flush=True)
    took = perf() - started

    rows: list[Row] = []

    def add(case: str, who: str, values: dict[str, list[float]], unit: str, target: str = "",
            meets: Any = None, whos: dict[str, str] | None = None, key: str = "") -> None:
        rows.extend(engine_rows(case, who, values, unit, engines, target, meets, whos, empty.get(key)))

    def most_often(names: list[str]) -> str:
        return max(set(names), key=names.count).removeprefix("fixed ") if names else "-"

    for kind in kinds:
        case = (f"{kind}: {ITEMS} items, stages of 10, 50, 5 ms" if kind != "mixed"
                else f"mixed, threads: {ITEMS} items, stages of 10 ms sleep, 1 ms CPU, 5 ms sleep")
        add(case, "workers=(1, 64) everywhere", {w: times[kind][w]["sizing"] for w in srcs}, "s", key=kind)
        label = "best fixed sizes (most often {})"
        add("", label, best[kind], "s", key=kind,
            whos={w: (f"{w}: " if w != "ours" else "") + label.format(most_often(best_of[kind][w])) for w in srcs})
        add("", "a guess: 16 everywhere", {w: times[kind][w]["guess"] for w in srcs}, "s", key=kind)
        add("", "sizing / best fixed (paired per round)", ratios[kind], "x", "<= 1.3 x", lambda m: m <= 1.3,
            key=kind)
        worst = {w: [max(v)] if v else [] for w, v in ratios[kind].items()}
        add("", "sizing / best fixed, the worst round", worst, "x", "<= 1.15 x", lambda m: m <= 1.15, key=kind)
    case = "slower calls: 2 ms, then 40 ms after 0.6 s"
    add(case, "workers just before the slowdown", {w: [s["before"] for s in slower[w]] for w in srcs}, "workers",
        key="slower")
    add("", "workers it settled on after it", {w: [s["after"] for s in slower[w]] for w in srcs}, "workers",
        key="slower")
    gains = {w: [s["after"] / max(1, s["before"]) for s in slower[w]] for w in srcs}
    add("", "after / before", gains, "x", ">= 2 x", lambda m: m >= 2, key="slower")
    print_rows(rows, engines)
    for note in notes:
        print(f"note: {note}")
    if engines:
        print(_vs.legend(engines, MORE_IS_BETTER))
    if args.markdown:
        command = " ".join(["python benchmarks/adaptive.py", *(f"--vs {e.rev}" for e in engines),
                            f"--markdown {args.markdown}"])
        lines = header(SECTION, command, "; one fresh process per sample", load_before, took,
                       args.rounds, engines, MORE_IS_BETTER)
        lines += ["", *table(rows, engines)] + (["", "Notes:", "", *[f"- {n}" for n in notes]] if notes else [])
        write_section(args.markdown, SECTION, "\n".join(lines) + "\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
