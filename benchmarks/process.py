"""Process stages (`task(f, workers=2, multiprocess=True)`) against peers, in one run.

    python benchmarks/process.py                       # full run, 5 rounds
    python benchmarks/process.py --quick               # smoke run, small sizes, 1 round
    python benchmarks/process.py --markdown benchmarks/RESULTS.md
    python benchmarks/process.py --vs 844bca5          # and each of ours with the engine of 844bca5

Contenders: ours (from this checkout's src/), multiprocessing.Pool, ProcessPoolExecutor, and,
from benchmarks/.venv-original (`bash benchmarks/setup_original.sh`), mpire and python-pyper
0.4.4. Every sample runs in a fresh child process (`process_child.py CASE WHO N MODE CHUNKSIZE`, which
prints `{"values": [...]}`); a child that hangs is killed with its process group after a
timeout and shown as HANG. Rounds are interleaved, the order rotated each round. Ours uses
its default start method (fork on Linux, while no thread runs) unless its row says
otherwise (``pyper.set_start_method``); every other contender uses forkserver. With
`--vs REV` (repeatable), each of our rows gets a twin "ours@REV" that runs the same child
with the engine (`src/`) of git revision REV (`_vs.py`), in the same rounds, and our rows
show ours / ours@REV.
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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import _vs
from _vs import Engine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_PYTHON = HERE / ".venv-original" / "bin" / "python"
SECTION = "## Process stages (benchmarks/process.py)"
#: The rows where a higher value is the better one (the legend of --vs says so).
MORE_IS_BETTER = "MiB/s and raw split time / ours time"
perf = time.perf_counter


# --- runner -------------------------------------------------------------------------------------

@dataclass
class Target:
    text: str
    met: Callable[[float], bool]


def at_most(limit: float, unit: str) -> Target:
    return Target(f"<= {limit:g} {unit}", lambda v: v <= limit)


def at_least(limit: float, unit: str) -> Target:
    return Target(f">= {limit:g} {unit}", lambda v: v >= limit)


@dataclass
class Contender:
    label: str
    kind: str  # "ours" | "venv" (mpire, 0.4.4) | "ref"
    args: list[str]  # case who n mode chunksize
    timeout: float
    target: Target | None = None
    skip: str | None = None
    error: str | None = None
    by_round: dict[int, list[float]] = field(default_factory=dict)
    extra: dict[str, list[float]] = field(default_factory=dict)
    notes: set[str] = field(default_factory=set)
    engine: Engine | None = None  # a twin: ours with the engine of another revision
    twins: list[Contender] = field(default_factory=list)  # of ours: its twins, one per --vs

    @property
    def values(self) -> list[float]:
        return [v for r in sorted(self.by_round) for v in self.by_round[r]]


@dataclass
class Case:
    key: str
    title: str
    unit: str
    contenders: list[Contender] = field(default_factory=list)


def build(quick: bool, venv_skip: str | None) -> list[Case]:
    hang = 3.0 if quick else 10.0
    n_triv, n_orig = (20_000, 2_000) if quick else (100_000, 10_000)
    n_pay = 50 if quick else 200
    cases = []

    def add(case: Case, label: str, args: list[object], kind: str = "ref", timeout: float = 120,
            target: Target | None = None, skip: str | None = None) -> None:
        who = str(args[1])
        if who == "mpire" or label.startswith("0.4.4"):
            kind = "venv"
            skip = skip or venv_skip
        case.contenders.append(Contender(label, kind, [str(a) for a in args], timeout, target, skip))

    c = Case("trivial", f"trivial x+1, {n_triv:,} items from a generator".replace(",", " ").replace("1, ", "1: ", 1), "us/item")
    t = at_most(1, "us/item")
    add(c, "ours, cold (default: fork)", ["trivial", "pyper", n_triv, "cold", 1], "ours", target=t)
    add(c, "ours, warm (second call)", ["trivial", "pyper", n_triv, "warm", 1], "ours", target=t)
    add(c, "ours, cold, forkserver", ["trivial", "pyper", n_triv, "cold-forkserver", 1], "ours")
    add(c, "ours, warm, forkserver", ["trivial", "pyper", n_triv, "warm-forkserver", 1], "ours")
    for who, name in (("pool", "Pool.imap"), ("ppe", "ProcessPoolExecutor.map"), ("mpire", "mpire imap")):
        for cs in (1, 1000):
            for mode in ("cold", "warm"):
                add(c, f"{name} chunksize={cs}, {mode}", ["trivial", who, n_triv, mode, cs])
    add(c, f"0.4.4, cold ({n_orig} items)", ["trivial", "pyper", n_orig, "cold", 1], timeout=120)
    cases.append(c)

    c = Case("cpu", "CPU-bound, 16 items of ~25 ms, 2 workers", "s")
    add(c, "sequential", ["burn", "sequential", 16, "cold", 1])
    add(c, "raw two-process split, pre-started (Event)", ["burn", "raw", 16, "warm", 1])
    add(c, "raw split, cold (Pool.map chunksize 8 in the timer)", ["burn", "raw", 16, "cold", 1])
    add(c, "ours, warm (second call)", ["burn", "pyper", 16, "warm", 1], "ours")
    add(c, "ours, cold", ["burn", "pyper", 16, "cold", 1], "ours")
    add(c, "ours, cold, forkserver", ["burn", "pyper", 16, "cold-forkserver", 1], "ours")
    add(c, "Pool.imap chunksize=1, warm", ["burn", "pool", 16, "warm", 1])
    add(c, "ProcessPoolExecutor.map chunksize=1, warm", ["burn", "ppe", 16, "warm", 1])
    add(c, "mpire imap chunksize=1, warm", ["burn", "mpire", 16, "warm", 1])
    add(c, "0.4.4, cold", ["burn", "pyper", 16, "cold", 1])
    cases.append(c)

    c = Case("payload", f"1 MiB bytes (os.urandom) from the workers, {n_pay} items", "MiB/s")
    t = at_least(300, "MiB/s")
    add(c, "ours, warm (second call)", ["payload", "pyper", n_pay, "warm", 1], "ours", target=t)
    add(c, "ours, cold", ["payload", "pyper", n_pay, "cold", 1], "ours", target=t)
    add(c, "ours, cold, forkserver", ["payload", "pyper", n_pay, "cold-forkserver", 1], "ours")
    for who, name in (("pool", "Pool.imap"), ("ppe", "ProcessPoolExecutor.map"), ("mpire", "mpire imap")):
        add(c, f"{name} chunksize=1, warm", ["payload", who, n_pay, "warm", 1])
    add(c, "0.4.4, cold", ["payload", "pyper", n_pay, "cold", 1])
    cases.append(c)

    calls = 5 if quick else 20
    c = Case("per call", "one process stage of 2 workers, one item, per call", "ms")
    add(c, "ours, warm program (default: fork, workers forked per run)", ["percall", "pyper", calls, "warm", 1],
        "ours", target=at_most(10, "ms"))
    add(c, "ours, warm program, forkserver (workers kept warm)", ["percall", "pyper", calls, "warm-forkserver", 1],
        "ours", target=at_most(1, "ms"))
    add(c, "ours, first call (default: fork)", ["percall", "pyper", 1, "first", 1], "ours",
        target=at_most(100, "ms"))
    add(c, "ours, first call, forkserver", ["percall", "pyper", 1, "first-forkserver", 1], "ours",
        target=at_most(100, "ms"))
    add(c, "ours, first call, spawn", ["percall", "pyper", 1, "first-spawn", 1], "ours", target=at_most(120, "ms"))
    for who, name in (("pool", "Pool (new pool per call)"), ("ppe", "ProcessPoolExecutor (new per call)"),
                      ("mpire", "mpire WorkerPool (new per call)")):
        add(c, f"{name}, warm program", ["percall", who, calls, "warm", 1])
        add(c, f"{name}, first call", ["percall", who, 1, "first", 1])
    add(c, "0.4.4, warm program", ["percall", "pyper", 3, "warm", 1], timeout=60)
    add(c, "0.4.4, first call", ["percall", "pyper", 1, "first", 1], timeout=60)
    cases.append(c)

    # Issue 21: CPU spent moving each item between the parent and a worker, calls of 1-1000 us
    # (the program's and its workers' CPU, less the calls' own), and a CSV -> process stage ->
    # sqlite ETL as a user writes it, against a plain loop and Pool.imap (workers forked).
    c = Case("move", "CPU per item moved to a worker and back, beyond the call (2 workers)", "us/item")
    for us in (1, 10, 100, 1000):
        add(c, f"ours, calls of {us} us", ["move", "pyper", us, "warm", 1], "ours", target=at_most(5, "us/item"))
        for cs in (100, 1000):
            add(c, f"Pool.imap chunksize={cs}, calls of {us} us", ["move", "pool", us, "warm", cs])
    cases.append(c)

    rows = 20_000 if quick else 100_000
    c = Case("etl", f"CSV of {rows:_} rows | transform (2 processes, on_error) | load (sqlite, batch=1000)"
             .replace("_", " "), "s")
    add(c, "ours (the pipeline as written, no chunk size)", ["etl", "pyper", rows, "warm", 1], "ours")
    add(c, "plain loop", ["etl", "loop", rows, "warm", 1])
    for cs in (100, 1000):
        add(c, f"Pool.imap chunksize={cs}", ["etl", "pool", rows, "warm", cs])
    cases.append(c)

    reps = 2 if quick else 3
    for mode, title, limit in (("boom", "an error at item 5 of 10, to the caller (warm stage)", 50),
                               ("die", "a child dies (os._exit(3)) at item 5, to the caller", 100)):
        c = Case(mode, title, "ms")
        add(c, "ours", ["error", "pyper", reps, mode, 1], "ours", timeout=60, target=at_most(limit, "ms"))
        for who, name in (("pool", "Pool.imap"), ("ppe", "ProcessPoolExecutor.map"), ("mpire", "mpire imap")):
            add(c, name, ["error", who, reps, mode, 1], timeout=hang + 10)
        add(c, "0.4.4, cold", ["error", "pyper", reps, mode, 1], timeout=hang)
        cases.append(c)

    c = Case("break", "count() | trivial (2 workers): 10 outputs, then break; time of the close", "ms")
    add(c, "ours", ["break", "pyper", reps, "warm", 1], "ours", timeout=60, target=at_most(10, "ms"))
    add(c, "Pool.imap (pool.terminate())", ["break", "pool", reps, "warm", 1], timeout=hang + 10)
    add(c, "ProcessPoolExecutor.map", ["break", "ppe", reps, "warm", 1],
        skip="map() submits its whole input before returning: never returns on count()")
    add(c, "mpire imap (pool.terminate())", ["break", "mpire", reps, "warm", 1], timeout=hang + 10)
    add(c, "0.4.4", ["break", "pyper", reps, "warm", 1], timeout=hang)
    cases.append(c)
    return cases


def env_for(contender: Contender) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    # Children compile nothing again: as in an installed program, bytecode caches are used.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if contender.args[1] == "pyper":
        env["PYPER_BENCH_IMPORT"] = "1"
    if contender.kind == "venv":
        env["PYPER_IS_ORIGINAL"] = "1"
    else:  # ours (or a twin's engine), first on the path
        env["PYTHONPATH"] = str(contender.engine.src if contender.engine else REPO / "src")
    return env


def add_twins(cases: list[Case], engines: list[Engine]) -> None:
    """After each case's contenders, a twin of each of ours per engine: the same child, the
    same target. They rotate with the others; the table shows each after its own."""
    from run import check_ours  # the engine benchmark's runner, beside this file

    for engine in engines:
        problem = check_ours(engine.src)
        if problem:
            log(f"note: {engine.name}: {problem}; its rows are skipped")
        for case in cases:
            for c in [c for c in case.contenders if c.kind == "ours" and c.engine is None]:
                twin = Contender(engine.label(c.label), "ours", c.args, c.timeout, c.target,
                                 skip=problem, engine=engine)
                c.twins.append(twin)
                case.contenders.append(twin)


class ChildFailed(Exception):
    def __init__(self, status: str, text: str, last_line: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.last_line = last_line  # of the child's stderr


def run_child(contender: Contender) -> dict:
    python = str(VENV_PYTHON) if contender.kind == "venv" else sys.executable
    argv = [python, str(HERE / "process_child.py"), *contender.args]
    proc = subprocess.Popen(argv, cwd=HERE, env=env_for(contender), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=contender.timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.communicate()
        raise ChildFailed("HANG", f"killed after {contender.timeout:g} s") from None
    finally:
        kill_group(proc.pid)  # whatever the child left behind
    if proc.returncode != 0:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "(no stderr)"
        raise ChildFailed("ERROR", f"exit {proc.returncode}: {last}", last)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise ChildFailed("ERROR", f"unreadable output {out.strip()[-200:]!r}: {exc}") from None


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure(cases: list[Case], rounds: int) -> None:
    for r in range(rounds):
        for case in cases:
            shift = r % len(case.contenders)
            for c in case.contenders[shift:] + case.contenders[:shift]:
                if c.skip or c.error:
                    continue
                try:
                    out = run_child(c)
                except ChildFailed as exc:
                    if c.engine and not c.by_round and _vs.lacks_api(exc.last_line):
                        c.skip = f"{c.engine.name} lacks what the case uses: {exc.last_line}"
                        log(f"[{r + 1}/{rounds}] {case.key}: {c.label}: SKIP {c.skip}")
                        continue
                    c.error = f"{exc.status}: {exc}"
                    log(f"[{r + 1}/{rounds}] {case.key}: {c.label}: {c.error}")
                    continue
                c.by_round[r] = [float(v) for v in out["values"]]
                for k, v in out.items():
                    if k == "note":
                        c.notes.add(v)
                    elif k != "values":
                        c.extra.setdefault(k, []).extend(float(x) for x in v)
                log(f"[{r + 1}/{rounds}] {case.key}: {c.label}: "
                    + ", ".join(fmt(v) for v in c.by_round[r]) + f" {case.unit}")


def fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def row(case: str, label: str, values: list[float], unit: str, target: Target | None,
        kind: str) -> tuple[str, ...]:
    med = statistics.median(values)
    status = ("PASS" if target.met(med) else "MISS") if target else "ref"
    return (case, label, f"{fmt(med)} {unit}", f"{fmt(min(values))}-{fmt(max(values))}",
            target.text if target else "", status)


#: Our rows (not a twin's): the label starts with "ours" (then a comma, a colon or nothing).
_OURS = re.compile(r"ours(?![@\w])")


def table(cases: list[Case], engines: Sequence[Engine] = ()) -> tuple[list[tuple[str, ...]], list[str]]:
    """Rows (case, contender, median, min-max, ours/@REV per engine, target, status); each of
    our rows is followed by its twins'."""
    rows, notes = [], []
    for case in cases:
        title = f"{case.key}: {case.title}"
        medians: dict[str, float] = {}  # label -> median, for the A/B columns
        shown: list[tuple[str, ...]] = []
        ordered = [x for c in case.contenders if c.engine is None for x in (c, *c.twins)]
        for c in ordered:
            if c.skip or not c.values:
                status = "SKIP" if c.skip else c.error.split(":")[0] if c.error else "ERROR"
                shown.append((title, c.label, "-", "-", c.target.text if c.target else "", status))
                notes.append(f"{case.key}: {c.label}: {c.skip or c.error}")
                continue
            r = list(row(title, c.label, c.values, case.unit, c.target, c.kind))
            medians[c.label] = statistics.median(c.values)
            if c.error:
                r[5] += " (then " + c.error.split(":")[0] + ")"
                notes.append(f"{case.key}: {c.label}: a later round: {c.error}")
            shown.append(tuple(r))
            for note in sorted(c.notes):
                notes.append(f"{case.key}: {c.label}: {note}")
            if "cpu" in c.extra:  # (the ETL's: CPU seconds of the program and its workers)
                label = f"{c.label}: CPU"
                medians[label] = statistics.median(c.extra["cpu"])
                shown.append((title, label, *row("", "", c.extra["cpu"], "s", None, "")[2:5], "reported"))
            if "pulled" in c.extra:
                label = f"{c.label}: inputs pulled ahead of the 10 consumed"
                medians[label] = statistics.median(c.extra["pulled"])
                shown.append((title, label, *row("", "", c.extra["pulled"], "items", None, "")[2:5],
                              "reported"))
        if case.key == "cpu":  # speed relative to the raw split, paired round by round
            by = {c.label: c for c in case.contenders}
            for ours, raw in (("ours, warm (second call)", "raw two-process split, pre-started (Event)"),
                              ("ours, cold", "raw split, cold (Pool.map chunksize 8 in the timer)")):
                warm = "warm" in ours
                label = f"{'ours, warm' if warm else 'ours, cold'}: raw split time / ours time " \
                        f"({'pre-started' if warm else 'cold'} split, paired per round)"
                for engine in (None, *engines):
                    o, w = by.get(engine.label(ours) if engine else ours), by.get(raw)
                    if o is None or w is None:
                        continue
                    who = engine.label(label) if engine else label
                    ratios = [w.by_round[r][0] / o.by_round[r][0] for r in o.by_round if r in w.by_round]
                    if ratios:
                        shown.append(row(title, who, ratios, "x", at_least(0.9, "x"), "ours"))
                        medians[who] = statistics.median(ratios)
                    else:
                        shown.append((title, who, "-", "-", ">= 0.9 x", "SKIP" if o.skip else "ERROR"))
        for line in shown:
            if _OURS.match(line[1]):
                ab = tuple(_vs.ratio(medians.get(line[1]), medians.get(e.label(line[1]))) for e in engines)
            else:
                ab = ("",) * len(engines)
            rows.append((*line[:4], *ab, *line[4:]))
    return rows, notes


def headers(engines: Sequence[Engine]) -> tuple[str, ...]:
    return ("case", "contender", "median", "min-max", *(e.column() for e in engines), "target", "status")


def markdown(rows: list[tuple[str, ...]], engines: Sequence[Engine] = ()) -> str:
    heads = headers(engines)
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    last = None
    for r in rows:
        cells = ("" if r[0] == last else r[0], *r[1:-1],
                 f"**{r[-1]}**" if r[-1].startswith(("MISS", "ERROR", "HANG")) and "ours" in r[1] else r[-1])
        last = r[0]
        lines.append("| " + " | ".join(s.replace("|", "\\|").replace("<", "&lt;") for s in cells) + " |")
    return "\n".join(lines)


def git_revision() -> str:
    from run import git_revision as revision  # the engine benchmark's runner, beside this file

    return revision()


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_markdown(path: Path, rows: list[tuple[str, ...]], notes: list[str], header: list[str],
                   engines: Sequence[Engine] = ()) -> None:
    """Write the section; in an existing file, replace (or append) only this section."""
    section = "\n".join([SECTION, "", *header, "", markdown(rows, engines), ""]
                        + (["Notes:", "", *[f"- {n}" for n in notes], ""] if notes else []))
    old = path.read_text() if path.exists() else ""
    if SECTION in old:
        before, rest = old.split(SECTION, 1)
        nxt = rest.find("\n## ")
        text = before + section + (rest[nxt + 1:] if nxt >= 0 else "")
    else:
        text = (old.rstrip("\n") + "\n\n" if old else "") + section
    path.write_text(text)


def venv_problem() -> str | None:
    if not VENV_PYTHON.exists():
        return "benchmarks/.venv-original missing: run `bash benchmarks/setup_original.sh`"
    code = "import importlib.metadata as m, mpire, pyper; print(m.version('python-pyper'))"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(VENV_PYTHON), "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0 or proc.stdout.strip() != "0.4.4":
        return f".venv-original lacks python-pyper 0.4.4 or mpire: rerun setup_original.sh ({proc.stderr.strip()[-100:]})"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round, short timeouts")
    parser.add_argument("--markdown", type=Path, metavar="PATH",
                        help=f"write the table as the section {SECTION!r} of PATH (kept: the rest)")
    parser.add_argument("--case", action="append", metavar="NAME",
                        help="run only this case (trivial, cpu, payload, per call, boom, die, break); repeatable")
    parser.add_argument("--only", metavar="SUBSTRING", action="append", default=[],
                        help="run only the contenders whose 'case: contender' contains this "
                             "(case-insensitive; repeatable), e.g. 'per call: ours', 'payload'")
    _vs.add_argument(parser)
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    skip = venv_problem()
    if skip:
        log(f"note: {skip}; the mpire and 0.4.4 rows are skipped")
    cases = build(args.quick, skip)
    if args.case:
        unknown = set(args.case) - {c.key for c in cases}
        if unknown:
            parser.error(f"unknown case {sorted(unknown)}; the cases are {[c.key for c in cases]}")
        cases = [c for c in cases if c.key in args.case]
    if args.only:
        wanted = [w.lower() for w in args.only]
        for case in cases:
            case.contenders = [c for c in case.contenders
                               if any(w in f"{case.key}: {c.label}".lower() for w in wanted)]
        cases = [c for c in cases if c.contenders]
        if not cases:
            parser.error(f"--only {args.only}: no contender matches")
    with contextlib.ExitStack() as stack:
        try:
            engines = stack.enter_context(_vs.checkouts(args.vs))
        except ValueError as exc:
            parser.error(str(exc))
        add_twins(cases, engines)
        run(args, cases, engines, rounds)
    return 0


def run(args: argparse.Namespace, cases: list[Case], engines: list[Engine], rounds: int) -> None:
    before = loadavg()
    if os.getloadavg()[0] > 0.5:
        log(f"warning: load average {before}: other work skews the numbers")
    t0 = perf()
    measure(cases, rounds)
    elapsed = perf() - t0
    rows, notes = table(cases, engines)
    heads = headers(engines)
    width = [max(len(r[i]) for r in [heads, *rows]) for i in range(1, len(heads))]
    print("  ".join(s.ljust(w) for s, w in zip(heads[1:], width)).rstrip())
    last = None
    for r in rows:
        if r[0] != last:
            print(f"\n{r[0]}")
            last = r[0]
        print("  " + "  ".join(s.ljust(w) for s, w in zip(r[1:], width)).rstrip())
    for n in notes:
        print(f"note: {n}")
    if engines:
        print(_vs.legend(engines, MORE_IS_BETTER))
    if args.markdown:
        command = " ".join(["python", "benchmarks/process.py", *map(shlex.quote, sys.argv[1:])])
        header = [
            f"- command: `{command}`",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- Python: {platform.python_version()} ({sys.executable}); mpire and python-pyper 0.4.4 "
            "from benchmarks/.venv-original (Python 3.11)",
            f"- pyper under test: {git_revision()}"
            + "".join(f"; beside it {e.name}, the engine of `{e.rev}`" for e in engines)
            + f"; machine: nproc {os.cpu_count()}, {platform.platform()}",
            f"- load average before / after: {before} / {loadavg()}; run took {elapsed:.0f} s",
            f"- rounds: {rounds}, interleaved (order rotated each round); each sample in a fresh child "
            "process; ours with its default start method (fork on Linux, while no thread runs) unless the "
            "row says otherwise, the others with forkserver; median (min-max) over all "
            "values of all rounds. Targets apply to our rows; `ref` rows are for comparison.",
        ]
        if engines:
            header.append(f"- {_vs.legend(engines, MORE_IS_BETTER)}")
        write_markdown(args.markdown, rows, notes, header, engines)
        log(f"wrote {args.markdown}")


if __name__ == "__main__":
    sys.exit(main())
