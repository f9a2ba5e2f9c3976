"""Process stages (`task(f, workers=2, multiprocess=True)`) against peers, in one run.

    python benchmarks/process.py                       # full run, 5 rounds
    python benchmarks/process.py --quick               # smoke run, small sizes, 1 round
    python benchmarks/process.py --markdown benchmarks/RESULTS.md

Contenders: ours (from this checkout's src/), multiprocessing.Pool, ProcessPoolExecutor, and,
from benchmarks/.venv-original (`bash benchmarks/setup_original.sh`), mpire and python-pyper
0.4.4. Every sample runs in a fresh child process (`process_child.py CASE WHO N MODE CHUNKSIZE`, which
prints `{"values": [...]}`); a child that hangs is killed with its process group after a
timeout and shown as HANG. Rounds are interleaved, the order rotated each round. Ours uses
its default start method (fork on Linux, while no thread runs) unless its row says
otherwise (``pyper.set_start_method``); every other contender uses forkserver.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_PYTHON = HERE / ".venv-original" / "bin" / "python"
SECTION = "## Process stages (benchmarks/process.py)"
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
    else:
        env["PYTHONPATH"] = str(REPO / "src")  # ours, first on the path
    return env


class ChildFailed(Exception):
    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status


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
        raise ChildFailed("ERROR", f"exit {proc.returncode}: {lines[-1] if lines else '(no stderr)'}")
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


def table(cases: list[Case]) -> tuple[list[tuple[str, ...]], list[str]]:
    rows, notes = [], []
    for case in cases:
        title = f"{case.key}: {case.title}"
        for c in case.contenders:
            if c.skip or not c.values:
                status = "SKIP" if c.skip else c.error.split(":")[0] if c.error else "ERROR"
                rows.append((title, c.label, "-", "-", c.target.text if c.target else "", status))
                notes.append(f"{case.key}: {c.label}: {c.skip or c.error}")
                continue
            r = list(row(title, c.label, c.values, case.unit, c.target, c.kind))
            if c.error:
                r[5] += " (then " + c.error.split(":")[0] + ")"
                notes.append(f"{case.key}: {c.label}: a later round: {c.error}")
            rows.append(tuple(r))
            for note in sorted(c.notes):
                notes.append(f"{case.key}: {c.label}: {note}")
            if "pulled" in c.extra:
                rows.append((title, f"{c.label}: inputs pulled ahead of the 10 consumed",
                             *row("", "", c.extra["pulled"], "items", None, "")[2:5], "reported"))
        if case.key == "cpu":  # speed relative to the raw split, paired round by round
            by = {c.label: c for c in case.contenders}
            for ours, raw in (("ours, warm (second call)", "raw two-process split, pre-started (Event)"),
                              ("ours, cold", "raw split, cold (Pool.map chunksize 8 in the timer)")):
                o, w = by.get(ours), by.get(raw)
                if o is None or w is None:
                    continue
                ratios = [w.by_round[r][0] / o.by_round[r][0] for r in o.by_round if r in w.by_round]
                warm = "warm" in ours
                label = f"{'ours, warm' if warm else 'ours, cold'}: raw split time / ours time " \
                        f"({'pre-started' if warm else 'cold'} split, paired per round)"
                if ratios:
                    rows.append(row(title, label, ratios, "x", at_least(0.9, "x"), "ours"))
                else:
                    rows.append((title, label, "-", "-", ">= 0.9 x", "ERROR"))
    return rows, notes


HEADERS = ("case", "contender", "median", "min-max", "target", "status")


def markdown(rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    last = None
    for r in rows:
        cells = ("" if r[0] == last else r[0], *r[1:5],
                 f"**{r[5]}**" if r[5].startswith(("MISS", "ERROR", "HANG")) and "ours" in r[1] else r[5])
        last = r[0]
        lines.append("| " + " | ".join(s.replace("|", "\\|").replace("<", "&lt;") for s in cells) + " |")
    return "\n".join(lines)


def git_revision() -> str:
    from run import git_revision as revision  # the engine benchmark's runner, beside this file

    return revision()


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_markdown(path: Path, rows: list[tuple[str, ...]], notes: list[str], header: list[str]) -> None:
    """Write the section; in an existing file, replace (or append) only this section."""
    section = "\n".join([SECTION, "", *header, "", markdown(rows), ""]
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
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    skip = venv_problem()
    if skip:
        log(f"note: {skip}; the mpire and 0.4.4 rows are skipped")
    before = loadavg()
    if os.getloadavg()[0] > 0.5:
        log(f"warning: load average {before}: other work skews the numbers")
    cases = build(args.quick, skip)
    if args.case:
        unknown = set(args.case) - {c.key for c in cases}
        if unknown:
            parser.error(f"unknown case {sorted(unknown)}; the cases are {[c.key for c in cases]}")
        cases = [c for c in cases if c.key in args.case]
    t0 = perf()
    measure(cases, rounds)
    elapsed = perf() - t0
    rows, notes = table(cases)
    width = [max(len(r[i]) for r in rows) for i in range(1, 6)]
    last = None
    for r in rows:
        if r[0] != last:
            print(f"\n{r[0]}")
            last = r[0]
        print("  " + "  ".join(s.ljust(w) for s, w in zip(r[1:], width)).rstrip())
    for n in notes:
        print(f"note: {n}")
    if args.markdown:
        command = " ".join(["python", "benchmarks/process.py", *map(shlex.quote, sys.argv[1:])])
        header = [
            f"- command: `{command}`",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- Python: {platform.python_version()} ({sys.executable}); mpire and python-pyper 0.4.4 "
            "from benchmarks/.venv-original (Python 3.11)",
            f"- pyper under test: {git_revision()}; machine: nproc {os.cpu_count()}, {platform.platform()}",
            f"- load average before / after: {before} / {loadavg()}; run took {elapsed:.0f} s",
            f"- rounds: {rounds}, interleaved (order rotated each round); each sample in a fresh child "
            "process; ours with its default start method (fork on Linux, while no thread runs) unless the "
            "row says otherwise, the others with forkserver; median (min-max) over all "
            "values of all rounds. Targets apply to our rows; `ref` rows are for comparison.",
        ]
        write_markdown(args.markdown, rows, notes, header)
        log(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
