#!/usr/bin/env python3
"""Benchmark runner: our `pyper` against the baselines and python-pyper 0.4.4, in one run.

    python benchmarks/run.py                       # full run, 5 rounds (about 3 minutes)
    python benchmarks/run.py --quick               # smoke run, smaller sizes (about 30 s)
    python benchmarks/run.py --only throughput     # cases/contenders whose name contains this
    python benchmarks/run.py --markdown benchmarks/RESULTS.md
    python benchmarks/run.py --vs 844bca5          # and each of ours with the engine of 844bca5

How it measures (see benchmarks/README.md for the cases and their targets):

- Every sample is taken in a fresh child process that runs one contender and prints its values
  as JSON: `_cases.py` (the baselines and ours, imported from this checkout's `src/`) with this
  interpreter, `_original_cases.py` (python-pyper 0.4.4) with `.venv-original/bin/python`. A
  child that hangs is killed (with its process group) after a timeout and reported, so an
  engine bug cannot hang the run.
- Rounds are interleaved: each round runs every contender of every case once, in an order
  rotated from round to round, so that drift of the machine spreads over all contenders.
- A row reports the median of all its values over all rounds, min and max, and the ratio of
  the median to the case's reference: the plain generator chain for throughput, the ideal
  time for the latency cases.
- Nothing changes interpreter-global state (switch interval, GC): the engine's normal
  configuration is what is measured.
- `--vs REV` (repeatable) adds a twin "ours@REV: ..." of each of our contenders: the same
  child with the engine (`src/`) of git revision REV on PYTHONPATH (`_vs.py`), in the same
  rounds; our rows then show ours / ours@REV.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import _vs
from _vs import Engine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SRC = REPO / "src"
EXAMPLES = REPO / "examples"
ORIGINAL_PYTHON = HERE / ".venv-original" / "bin" / "python"
ORIGINAL_VERSION = "0.4.4"

MiB = 1024 * 1024


@dataclass
class Target:
    text: str  # as shown in the table, e.g. "<= 4x"
    met: Callable[[float, float | None], bool]  # (median in base units, ratio) -> met?


def ratio_at_most(limit: float) -> Target:
    return Target(f"<= {limit:g}x", lambda median, ratio: ratio is not None and ratio <= limit)


def below(limit: float, scale: float, unit: str) -> Target:
    return Target(f"< {limit * scale:g} {unit}", lambda median, ratio: median < limit)


@dataclass
class Case:
    key: str
    title: str
    unit: str  # display unit
    scale: float  # base unit (seconds, or bytes) * scale = display unit
    reference: str = ""  # what the ratio divides by, in words
    ideal: float | None = None  # ratio denominator in base units, when fixed
    contenders: list[Contender] = field(default_factory=list)

    def baseline(self) -> Contender | None:
        return next((c for c in self.contenders if c.kind == "baseline"), None)

    def reference_value(self) -> float | None:
        if self.ideal is not None:
            return self.ideal
        base = self.baseline()
        return base.median() if base is not None else None


@dataclass
class Contender:
    case: Case
    label: str
    kind: str  # "baseline" | "reference" | "ours" | "original"
    argv: list[str]  # the child command line
    timeout: float  # seconds, per child
    target: Target | None = None
    max_rounds: int | None = None
    check_output: str | None = None  # a seed program must print this
    skip: str | None = None
    error: str | None = None
    values: list[float] = field(default_factory=list)
    rounds_run: int = 0
    engine: Engine | None = None  # a twin: ours with the engine of another revision
    twins: list[Contender] = field(default_factory=list)  # of ours: its twins, one per --vs

    @property
    def name(self) -> str:
        return f"{self.case.key}: {self.label}"

    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


# --- environment --------------------------------------------------------------------------------

def our_env(src: Path = SRC) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    return env


def original_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the venv's pyper, never ours
    return env


def probe(argv: list[str], env: dict[str, str]) -> tuple[bool, str]:
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=HERE)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    text = (proc.stdout if proc.returncode == 0 else proc.stderr).strip()
    return proc.returncode == 0, text.splitlines()[-1] if text else ""


def check_ours(src: Path = SRC) -> str | None:
    """None if our pyper imports from src/ (or an engine's copy of it), else why not."""
    ok, text = probe([sys.executable, "-c", "import pyper; print(pyper.__file__)"], our_env(src))
    return None if ok else f"pyper not importable: {text}"


def check_original() -> str | None:
    if not ORIGINAL_PYTHON.exists():
        return "python-pyper 0.4.4 venv missing: run `bash benchmarks/setup_original.sh`"
    code = "import importlib.metadata as m, pyper; print(m.version('python-pyper'))"
    ok, text = probe([str(ORIGINAL_PYTHON), "-c", code], original_env())
    if not ok:
        return f"python-pyper not importable in .venv-original: {text}"
    if text != ORIGINAL_VERSION:
        return f".venv-original has python-pyper {text}, not {ORIGINAL_VERSION}: rerun setup_original.sh"
    return None


def spaced(n: int) -> str:
    return f"{n:,}".replace(",", " ")


# --- cases --------------------------------------------------------------------------------------

def build_cases(quick: bool, skip_ours: str | None, skip_original: str | None) -> list[Case]:
    py = sys.executable
    ours = [py, str(HERE / "_cases.py")]
    orig = [str(ORIGINAL_PYTHON), str(HERE / "_original_cases.py")]
    cases: list[Case] = []

    def add(case: Case, label: str, kind: str, argv: list[str], timeout: float, **kw: object) -> None:
        skip = {"ours": skip_ours, "original": skip_original}.get(kind)
        if quick and kind == "original":
            kw["max_rounds"] = 1  # a smoke run: 0.4.4 is slow, once is enough
        case.contenders.append(Contender(case, label, kind, argv, timeout, skip=skip, **kw))  # type: ignore[arg-type]

    # Throughput: n items through produce | inc | dbl. reps = runs per child.
    n = 20_000 if quick else 100_000
    c = Case("throughput", f"{spaced(n)} items through produce | inc | dbl", "ms", 1e3,
             reference="plain generator chain")
    add(c, "plain generator chain", "baseline", [*ours, "plain", str(n), "10"], 60)
    add(c, "plain async generator chain", "reference", [*ours, "plain_async", str(n), "5"], 60)
    add(c, "hand-written async batches, a list per stage", "reference", [*ours, "batched_async", str(n), "5"], 60)
    add(c, "hand-written threads + queue.Queue", "reference", [*ours, "threads_queue", str(n), "1"], 120)
    add(c, "hand-written asyncio.Queue", "reference", [*ours, "asyncio_queue", str(n), "1"], 120)
    shapes = [
        ("sync_w1", "sync, workers=1", 4),
        ("sync_w4", "sync, workers=4", 6),
        ("async_w1", "async, workers=1", 5),
        ("async_w4", "async, workers=4", 6),
        ("async_mixed_w4", "async, sync inc workers=4", 10),
        ("sync_w1_observed", "sync, workers=1, in pyper.observe()", 4),
        ("sync_w1_progress", "sync, workers=1, in pyper.progress()", 4),
        ("async_w1_observed", "async, workers=1, in pyper.observe()", 5),
    ]
    for child, label, limit in shapes:
        add(c, f"ours: {label}", "ours", [*ours, child, str(n), "3"], 120, target=ratio_at_most(limit))
    for child, label, _ in shapes:
        if "pyper." not in label:  # 0.4.4 has no metrics
            add(c, f"{ORIGINAL_VERSION}: {label}", "original", [*orig, child, str(n), "1"], 300)
    cases.append(c)

    # Options of real work (issue 8): the same w4 shapes with one option set on inc and dbl,
    # so the row's excess over "ours: sync/async, workers=4" is that option's cost per item.
    c = Case("options", f"{spaced(n)} items through produce | inc | dbl, workers=4, one option on both",
             "ms", 1e3, reference="plain generator chain")
    add(c, "plain generator chain", "baseline", [*ours, "plain", str(n), "10"], 60)
    for kind in ("sync", "async"):
        add(c, f"ours: {kind}, no option", "ours", [*ours, f"{kind}_w4", str(n), "3"], 120)
        for option, text in (("retries", "retries=3"), ("skip", "on_error='skip'"),
                             ("rate", "rate=1e9"), ("timeout", "timeout=10")):
            add(c, f"ours: {kind}, {text}", "ours", [*ours, f"{kind}_w4_{option}", str(n), "3"], 300)
    cases.append(c)

    # Throttled links (issue 21): payload | len | slowish (1 ms of sleep every 1000th item),
    # throttle=T on the producer; the ratio is to the same pipeline without a throttle.
    c = Case("throttle", f"{spaced(n)} items through payload(throttle=T) | len | slowish", "ms", 1e3,
             reference="ours without throttle")
    add(c, "ours: no throttle", "baseline", [*ours, "throttle_0", str(n), "3"], 120)
    add(c, "plain generator chain", "reference", [*ours, "throttle_plain", str(n), "5"], 60)
    add(c, "hand-written threads + queue.Queue(1000)", "reference", [*ours, "throttle_threads", str(n), "1"], 120)
    for limit in (64, 256, 1000, 5000):
        add(c, f"ours: throttle={limit}", "ours", [*ours, f"throttle_{limit}", str(n), "3"], 120,
            target=ratio_at_most(1.3))
    add(c, f"{ORIGINAL_VERSION}: throttle=1000", "original", [*orig, "throttle_1000", str(n), "1"], 300)
    cases.append(c)

    # A journal (issue 22): produce | work with journal= on produce (a fresh file per run)
    # against the same without; work is 1 ms of sleep (4 workers) or 10 us of CPU (1 worker).
    for label, cost, items in (("1ms", "1 ms of sleep per item, workers=4", 500 if quick else 3000),
                               ("10us", "10 us of CPU per item", 5000 if quick else 30000)):
        c = Case(f"journal {label}", f"{spaced(items)} items through produce | work ({cost})", "ms", 1e3,
                 reference="ours without a journal")
        add(c, "ours without a journal", "baseline", [*ours, f"journal_{label}_off", str(items), "3"], 120)
        add(c, "ours with journal=", "ours", [*ours, f"journal_{label}_on", str(items), "3"], 120,
            target=ratio_at_most(1.03) if label == "1ms" else None)
        cases.append(c)

    # Per call: `task(f) | task(g)` on one item; value = seconds per call, mean over the calls.
    calls = 500 if quick else 2000
    c = Case("per call", "tiny two-task pipeline, one item, per call", "us", 1e6)
    for child, label in (("percall_sync", "sync"), ("percall_async", "async")):
        add(c, f"ours: {label}", "ours", [*ours, child, str(calls), "3"], 120,
            target=below(100e-6, 1e6, "us"))
    # A first task that makes two items: the run's channels and workers start (issue 21).
    for child, label in (("percall_run_sync", "sync"), ("percall_run_async", "async")):
        add(c, f"ours: {label}, pair | dbl (two items)", "ours", [*ours, child, str(calls), "3"], 120)
    add(c, f"{ORIGINAL_VERSION}: sync", "original", [*orig, "percall_sync", "5" if quick else "20", "1"], 120)
    add(c, f"{ORIGINAL_VERSION}: async", "original", [*orig, "percall_async", "50" if quick else "200", "1"], 120)
    add(c, f"{ORIGINAL_VERSION}: sync, pair | dbl (two items)", "original",
        [*orig, "percall_run_sync", "5" if quick else "20", "1"], 120)
    cases.append(c)

    # Seed programs: the README's two examples, wall time of `python examples/seed_*.py`.
    c = Case("seeds", "README seed programs, wall time of the process", "s", 1.0,
             reference="ideal 2 s", ideal=2.0)
    for name in ("seed_sync", "seed_async"):
        path = EXAMPLES / f"{name}.py"
        add(c, f"ours: examples/{name}.py", "ours", [py, str(path)], 60,
            target=below(2.3, 1.0, "s"), check_output="Total  400",
            max_rounds=1 if quick else None)
        if not path.exists() and c.contenders[-1].skip is None:
            c.contenders[-1].skip = f"examples/{name}.py missing"
    cases.append(c)

    # Latency cases. Cold: the first run in a fresh process; warm: runs right after an untimed
    # one, so that idle engine threads are reused.
    c = Case("first output", "infinite producer | three 10 ms stages, workers=1: first output",
             "ms", 1e3, reference="ideal 30 ms", ideal=0.030)
    for child, label in (("first_sync", "sync (time.sleep)"), ("first_async", "async (asyncio.sleep)")):
        add(c, f"ours: {label}, cold", "ours", [*ours, child, "0", "1"], 30, target=ratio_at_most(1.15))
        add(c, f"ours: {label}, warm", "ours", [*ours, f"{child}_warm", "0", "3"], 30,
            target=ratio_at_most(1.15))
    for child, label in (("first_sync", "sync (time.sleep)"), ("first_async", "async (asyncio.sleep)")):
        add(c, f"{ORIGINAL_VERSION}: {label}, cold", "original", [*orig, child, "0", "1"], 30)
    cases.append(c)

    # Three stages at once (tests/test_lifecycle.py counts their overlap; the time is here):
    # 100 items through three 10 ms stages of one worker each, to the last output.
    c = Case("three stages", "100 items through three 10 ms stages, workers=1: last output", "ms", 1e3,
             reference="ideal 1.02 s", ideal=1.02)
    for child, label in (("stages_sync", "sync (time.sleep)"), ("stages_async", "async (asyncio.sleep)")):
        add(c, f"ours: {label}, cold", "ours", [*ours, child, "100", "1"], 60, target=ratio_at_most(1.15))
        add(c, f"ours: {label}, warm", "ours", [*ours, f"{child}_warm", "100", "2"], 60,
            target=ratio_at_most(1.15))
    cases.append(c)

    c = Case("50 workers", "200 items through two 50 ms stages, 50 workers each", "ms", 1e3,
             reference="ideal 250 ms", ideal=0.250)
    add(c, "hand-written threads + queue.Queue, cold", "reference", [*ours, "fifty_threads", "200", "1"], 60)
    for child, label in (("fifty_sync", "sync (time.sleep)"), ("fifty_async", "async (asyncio.sleep)")):
        add(c, f"ours: {label}, cold", "ours", [*ours, child, "200", "1"], 60, target=ratio_at_most(1.05))
        add(c, f"ours: {label}, warm", "ours", [*ours, f"{child}_warm", "200", "2"], 60,
            target=ratio_at_most(1.05))
    for child, label in (("fifty_sync", "sync (time.sleep)"), ("fifty_async", "async (asyncio.sleep)")):
        add(c, f"{ORIGINAL_VERSION}: {label}, cold", "original", [*orig, child, "200", "1"], 60)
    cases.append(c)

    # asyncio at scale (issue 21): n async workers, one asyncio.sleep(0.5) each, one item each.
    n = 2_000 if quick else 10_000
    for key, suffix, unit, scale, limit in (("scale", "", "s", 1.0, 1.2),
                                            ("scale memory", "_mem", "MiB", 1 / MiB, 1.5)):
        what = "peak RSS growth" if suffix else "time"
        c = Case(key, f"{spaced(n)} async workers, one asyncio.sleep(0.5) each: {what}", unit, scale,
                 reference="asyncio.gather")
        add(c, "asyncio.gather", "baseline", [*ours, f"scale_gather{suffix}", str(n), "1"], 60)
        add(c, "asyncio.TaskGroup", "reference", [*ours, f"scale_taskgroup{suffix}", str(n), "1"], 60)
        add(c, "ours", "ours", [*ours, f"scale_ours{suffix}", str(n), "1"], 60, target=ratio_at_most(limit))
        add(c, f"{ORIGINAL_VERSION}", "original", [*orig, f"scale_ours{suffix}", str(n), "1"], 120)
        cases.append(c)

    # Memory: peak RSS growth over n items through a throttled 3-stage pipeline.
    n = 100_000 if quick else 1_000_000
    c = Case("memory", f"{spaced(n)} items, throttle=1000 on each task: peak RSS growth",
             "MiB", 1 / MiB)
    add(c, "plain generator chain", "reference", [*ours, "memory_plain", str(n), "1"], 60,
        max_rounds=1)
    for child, label in (("memory_sync", "sync"), ("memory_async", "async")):
        add(c, f"ours: {label}", "ours", [*ours, child, str(n), "1"], 120,
            target=below(20 * MiB, 1 / MiB, "MiB"), max_rounds=1 if quick else 3)
    for child, label in (("memory_sync", "sync"), ("memory_async", "async")):
        add(c, f"{ORIGINAL_VERSION}: {label}", "original", [*orig, child, str(n), "1"], 300,
            max_rounds=1)
    cases.append(c)
    return cases


def add_twins(cases: list[Case], engines: list[Engine], skip_ours: str | None) -> None:
    """After each case's contenders, a twin of each of ours per engine: the same child, the
    same target and rounds. They rotate with the others; the report shows each after its own."""
    for engine in engines:
        problem = check_ours(engine.src)
        if problem:
            log(f"note: {engine.name}: {problem}; its rows are skipped")
        for case in cases:
            for c in [c for c in case.contenders if c.kind == "ours" and c.engine is None]:
                inherited = c.skip if c.skip != skip_ours else None  # e.g. an example missing
                twin = Contender(case, engine.label(c.label), "ours", c.argv, c.timeout,
                                 target=c.target, max_rounds=c.max_rounds,
                                 check_output=c.check_output, skip=problem or inherited,
                                 engine=engine)
                c.twins.append(twin)
                case.contenders.append(twin)


# --- running ------------------------------------------------------------------------------------

class ChildFailed(Exception):
    def __init__(self, text: str, last_line: str = "") -> None:
        super().__init__(text)
        self.last_line = last_line  # of the child's stderr


def run_child(contender: Contender) -> list[float]:
    """Run one child in its own process group; return its values (or its wall time)."""
    if contender.kind == "original":
        env = original_env()
    else:
        env = our_env(contender.engine.src if contender.engine else SRC)
    t0 = time.perf_counter()
    proc = subprocess.Popen(contender.argv, cwd=HERE, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=contender.timeout)
        wall = time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.communicate()
        raise ChildFailed(f"timed out after {contender.timeout:g} s") from None
    finally:
        kill_group(proc.pid)  # anything the child left behind (0.4.4's process manager)
    if proc.returncode != 0:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "(no stderr)"
        raise ChildFailed(f"exit {proc.returncode}: {last}", last)
    if contender.check_output is not None:
        if contender.check_output not in out:
            raise ChildFailed(f"did not print {contender.check_output!r}: {out.strip()[-200:]!r}")
        return [wall]
    try:
        return [float(v) for v in json.loads(out.strip().splitlines()[-1])["values"]]
    except (ValueError, KeyError, IndexError) as exc:
        raise ChildFailed(f"unreadable output {out.strip()[-200:]!r}: {exc}") from None


def kill_group(pgid: int) -> None:
    """Kill the process group this runner created for one child (start_new_session)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def measure(cases: list[Case], rounds: int) -> None:
    for r in range(rounds):
        for case in cases:
            todo = case.contenders
            shift = r % len(todo)
            for contender in todo[shift:] + todo[:shift]:
                if contender.skip or contender.error:
                    continue
                if contender.max_rounds is not None and contender.rounds_run >= contender.max_rounds:
                    continue
                try:
                    values = run_child(contender)
                except ChildFailed as exc:
                    if contender.engine and not contender.values and _vs.lacks_api(exc.last_line):
                        contender.skip = f"{contender.engine.name} lacks what the case uses: {exc.last_line}"
                        log(f"[{r + 1}/{rounds}] {contender.name}: SKIP {contender.skip}")
                        continue
                    contender.error = str(exc)
                    log(f"[{r + 1}/{rounds}] {contender.name}: ERROR {exc}")
                    continue
                contender.values.extend(values)
                contender.rounds_run += 1
                shown = ", ".join(fmt(v * case.scale) for v in values[:5])
                more = f" (+{len(values) - 5})" if len(values) > 5 else ""
                log(f"[{r + 1}/{rounds}] {contender.name}: {shown}{more} {case.unit}")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- reporting ----------------------------------------------------------------------------------

def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclass
class Row:
    case: str
    contender: str
    median: str
    spread: str
    ratio: str
    target: str
    status: str
    ab: tuple[str, ...] = ()  # with --vs, on our rows: ours / ours@REV, one per engine

    def cells(self) -> tuple[str, ...]:
        """The cells after the case, in the order of headers()."""
        return (self.contender, self.median, self.spread, self.ratio, *self.ab, self.target,
                self.status)


def rows(cases: list[Case], engines: Sequence[Engine] = ()) -> tuple[list[Row], list[str]]:
    """One row per contender; with --vs, each of ours is followed by its twins."""
    out: list[Row] = []
    notes: list[str] = []
    for case in cases:
        ref = case.reference_value()
        title = f"{case.key}: {case.title}"
        if case.reference:
            title += f" (ratio to the {case.reference})"
        for c in case.contenders:
            if c.engine is not None:
                continue  # shown after its own
            ab = tuple(_vs.ratio(c.median(), t.median()) for t in c.twins) if c.twins else ("",) * len(engines)
            for shown in (c, *c.twins):
                row = one_row(case, shown, title, ref, notes)
                if row is not None:
                    row.ab = ab if shown is c else ("",) * len(engines)
                    out.append(row)
    return out, notes


def one_row(case: Case, c: Contender, title: str, ref: float | None, notes: list[str]) -> Row | None:
    target = c.target.text if c.target else ""
    med = c.median()
    if c.skip or (c.error and med is None):
        status = "SKIP" if c.skip else "ERROR"
        note = f"skipped: {c.skip}" if c.skip else f"{c.name}: {c.error}"
        if note not in notes:  # one note per skip reason
            notes.append(note)
        return Row(title, c.label, "-", "-", "-", target, status)
    if med is None:
        return None
    ratio = med / ref if ref else None
    if c.target is None:
        status = "baseline" if c.kind == "baseline" else "ref"
    else:
        status = "PASS" if c.target.met(med, ratio) else "MISS"
    if c.error:
        status += " (ERROR)"
        notes.append(f"{c.name}: failed in a later round: {c.error}")
    spread = f"{fmt(min(c.values) * case.scale)}-{fmt(max(c.values) * case.scale)}"
    return Row(title, c.label, f"{fmt(med * case.scale)} {case.unit}", spread,
               f"{ratio:.2f}x" if ratio is not None else "-", target, status)


def headers(engines: Sequence[Engine]) -> tuple[str, ...]:
    return ("case", "contender", "median", "min-max", "ratio", *(e.column() for e in engines),
            "target", "status")


def text_table(table: list[Row], engines: Sequence[Engine] = ()) -> str:
    """Rows grouped under a line per case."""
    heads = headers(engines)[1:]
    cells = [heads] + [r.cells() for r in table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(heads))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip()]
    last_case = None
    for r, row in zip(table, cells[1:]):
        if r.case != last_case:
            lines += ["", r.case]
            last_case = r.case
        lines.append("  " + "  ".join(s.ljust(w) for s, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def markdown_table(table: list[Row], engines: Sequence[Engine] = ()) -> str:
    heads = headers(engines)
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    last_case = None
    for r in table:
        case = r.case if r.case != last_case else ""
        last_case = r.case
        status = f"**{r.status}**" if r.status.startswith("MISS") else r.status
        cells = (case, *r.cells()[:-1], status)
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("<", "&lt;") for c in cells) + " |")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        info["nproc"] = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        info["nproc"] = str(len(os.sched_getaffinity(0)))
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = models[0] if models else platform.processor() or "unknown"
    except OSError:
        info["cpu"] = platform.processor() or "unknown"
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        info["memory"] = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    info["os"] = platform.platform()
    info["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + (" + uncommitted changes in src/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def original_python_version() -> str:
    ok, text = probe([str(ORIGINAL_PYTHON), "-c", "import platform; print(platform.python_version())"],
                     original_env())
    return text if ok else "-"


def write_markdown(path: Path, table: list[Row], notes: list[str], command: str, meta: dict[str, str],
                   load_before: str, elapsed: float, engines: Sequence[Engine] = ()) -> None:
    m = machine()
    lines = [
        "# Benchmark results",
        "",
        "Produced by `benchmarks/run.py` (how it measures, and what each case means: "
        "`benchmarks/README.md`).",
        "",
        f"- command: `{command}`",
        f"- date: {meta['date']}",
        f"- Python: {platform.python_version()} ({sys.executable}); python-pyper "
        f"{ORIGINAL_VERSION} ran on Python {meta['original_python']}",
        f"- pyper under test: {meta['revision']}"
        + "".join(f"; beside it {e.name}, the engine of `{e.rev}`" for e in engines),
        f"- machine: nproc {m['nproc']}, CPU {m['cpu']}, memory {m.get('memory', '?')}, {m['os']}",
        f"- load average before / after: {load_before} / {m['load']}; run took {elapsed:.0f} s",
        f"- rounds: {meta['rounds']}, interleaved (every contender once per round, order rotated "
        "each round); each sample in a fresh child process",
        "",
        "Median over all values of all rounds (a throughput or per-call child runs 1-10 "
        "repetitions after a warm-up; latency rows are cold, the first run in a fresh process, "
        "or warm, runs right after an untimed one; memory is one run per fresh process). "
        "Ratio: to the plain generator chain for throughput, to the ideal time for the latency "
        "cases. Targets (from the issue) apply to our rows; the others are for reference."
        + (" " + _vs.legend(list(engines)) if engines else ""),
        "",
        markdown_table(table, engines),
        "",
    ]
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    # The file's top part is this runner's; the sections after it (each "## " heading: the
    # other runners', notes written by hand) stay as they are.
    old = path.read_text() if path.exists() else ""
    rest = old.find("\n## ")
    path.write_text("\n".join(lines) + (old[rest:] if rest >= 0 else ""))


# --- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds (default 5; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds: a smoke run")
    parser.add_argument("--only", metavar="SUBSTRING", action="append", default=[],
                        help="run only cases/contenders whose name contains this (case-insensitive; "
                             "repeatable); a case's baseline is always kept")
    parser.add_argument("--no-original", action="store_true", help="skip python-pyper 0.4.4")
    parser.add_argument("--markdown", metavar="PATH", type=Path,
                        help="also write the results as markdown (e.g. benchmarks/RESULTS.md)")
    _vs.add_argument(parser)
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    if rounds < 1:
        parser.error("--rounds must be at least 1")

    skip_ours = check_ours()
    skip_original = "skipped by --no-original" if args.no_original else check_original()
    for reason in (skip_ours, skip_original):
        if reason:
            log(f"note: {reason}; those rows are skipped")
    cases = build_cases(args.quick, skip_ours, skip_original)
    if args.only:
        wanted = [s.lower() for s in args.only]
        for case in cases:
            case.contenders = [
                c for c in case.contenders
                if c.kind == "baseline" or any(w in c.name.lower() for w in wanted)
            ]
        cases = [c for c in cases if any(x.kind != "baseline" for x in c.contenders)
                 or any(w in c.key for w in wanted)]
        if not cases:
            parser.error(f"--only {args.only}: no case or contender matches")
    with contextlib.ExitStack() as stack:
        try:
            engines = stack.enter_context(_vs.checkouts(args.vs))
        except ValueError as exc:
            parser.error(str(exc))
        add_twins(cases, engines, skip_ours)
        run(args, argv, cases, engines, rounds, skip_original)
    return 0


def run(args: argparse.Namespace, argv: list[str] | None, cases: list[Case], engines: list[Engine],
        rounds: int, skip_original: str | None) -> None:
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if os.getloadavg()[0] > 0.5:
        log(f"warning: load average {load_before}: other work on this machine skews the numbers")
    t0 = time.perf_counter()
    measure(cases, rounds)
    elapsed = time.perf_counter() - t0

    table, notes = rows(cases, engines)
    print(text_table(table, engines))
    if notes:
        print("\nnotes:")
        for n in notes:
            print(f"  {n}")
    print(f"\n{rounds} round(s) in {elapsed:.0f} s; ratio: to the plain generator chain (throughput) "
          "or to the ideal time (latency cases)")
    if engines:
        print(_vs.legend(engines))
    if args.markdown:
        script = os.path.relpath(Path(__file__).resolve(), Path.cwd())
        given = sys.argv[1:] if argv is None else argv
        command = " ".join(["python", shlex.quote(script), *map(shlex.quote, given)])
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "revision": git_revision(),
            "original_python": original_python_version() if not skip_original else "- (skipped)",
            "rounds": str(rounds),
        }
        write_markdown(args.markdown, table, notes, command, meta, load_before, elapsed, engines)
        log(f"wrote {args.markdown}")


if __name__ == "__main__":
    sys.exit(main())
