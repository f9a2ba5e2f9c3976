"""Ray stages (`task(f, workers=4, executor="ray")`) against hand-written Ray, in one run.

    python benchmarks/ray_stages.py                     # 5 interleaved rounds
    python benchmarks/ray_stages.py --rounds 1          # smoke run
    python benchmarks/ray_stages.py --markdown benchmarks/RESULTS.md
    python benchmarks/ray_stages.py --vs 844bca5        # and ours with the engine of 844bca5

Needs ray (`pip install -e '.[ray]'`, or any environment with ray: pyper itself comes from
this checkout's src/). One local Ray (`ray.init(num_cpus=2)`) serves every round. The
hand-written contenders run in this process, the driver that started it. Ours runs in an
engine process (`--engine SRC`): a second driver, connected to the same cluster, that
imports pyper from SRC and gives its Ray job the same `PYTHONPATH` (so its Ray workers
import the same pyper); it takes one command at a time on stdin and answers with the
value, timed inside it. With `--vs REV` (repeatable), an engine process per revision runs
the same cases with the engine (`src/`) of REV (`_vs.py`), in the same rotation, and the
rows of ours show ours / ours@REV. Cases (issue 9):

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
import contextlib
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTION = "## Ray stages (benchmarks/ray_stages.py)"

import ray  # noqa: E402
from ray.util import ActorPool  # noqa: E402

import _vs  # noqa: E402
from _report import Row, engine_rows, header, print_rows, ref_row, table, write_section  # noqa: E402

perf = time.perf_counter
#: CPU-bound pairs (there and back) timed per round.
CPU_PAIRS = 3
#: The rows where a higher value is the better one (the legend of --vs says so).
MORE_IS_BETTER = "refill loop time / ours time, sequential / ours and raw split time / ours"
#: How long an engine process may take to answer one command.
ENGINE_TIMEOUT = 300.0


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


def time_trivial(who: str, n: int, pool: Any = None) -> float:
    t0 = perf()
    if who == "ours":
        from pyper import task

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
        from pyper import task

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
    from pyper import task
    from pyper._engine import _ray as pyper_ray

    total = [0]
    real_get = pyper_ray._get

    def counting_get(*args: Any, **kwargs: Any) -> Any:  # its signature differs between revisions
        value = real_get(*args, **kwargs)
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


# --- the engine process: ours, with the pyper of one src/ ----------------------------------

#: What an engine process runs: the command's name -> the function of (who, n).
OPS = {"trivial": time_trivial, "cpu": time_cpu, "handoff": fetched_bytes}


def engine_main(src: str, address: str) -> None:
    """Serve commands (`{"op": ..., "n": ...}` lines on stdin) with the pyper in ``src``,
    as a second driver of the cluster at ``address``; answer each with `{"value": ...}` or
    `{"error": "Type: message"}` on stdout, which nothing else writes to."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # Ray's and anyone's prints go to stderr
    sys.path.insert(0, src)
    ray.init(address=address, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": src}})  # its Ray workers: the same pyper
    import pyper

    print(f"engine process {os.getpid()}: pyper from {Path(pyper.__file__).parent}", file=sys.stderr)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        try:
            answer: dict[str, Any] = {"value": OPS[command["op"]]("ours", command["n"])}
        except Exception as exc:  # noqa: BLE001 - the runner reports it
            text = str(exc).strip().splitlines()
            answer = {"error": f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    ray.shutdown()


class EngineFailed(Exception):
    pass


class Engine:
    """The runner's end of one engine process (ours, or a --vs revision's)."""

    def __init__(self, name: str, src: Path, address: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--engine", str(src), "--address", address], cwd=HERE,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)

    def run(self, op: str, n: int) -> float:
        """The value of one command, timed in the engine process."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(json.dumps({"op": op, "n": n}) + "\n")
            stdin.flush()
        except OSError as exc:
            raise EngineFailed(f"engine process gone ({exc})") from None
        line = _readline(stdout, ENGINE_TIMEOUT)
        if line is None:
            self.close()
            raise EngineFailed(f"no answer within {ENGINE_TIMEOUT:g} s: killed")
        if not line:
            raise EngineFailed(f"engine process exited ({self.proc.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise EngineFailed(answer["error"])
        return float(answer["value"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its process group, whatever is left
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()


def _readline(stream: IO[str], timeout: float) -> str | None:
    """A line of ``stream`` ("" at its end), or None if none came within ``timeout``."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else None


# --- the runner -------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="write the section into this file")
    parser.add_argument("--engine", metavar="SRC", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    _vs.add_argument(parser)
    args = parser.parse_args()
    if args.engine:
        engine_main(args.engine, args.address)
        return
    with contextlib.ExitStack() as stack:
        try:
            revisions = stack.enter_context(_vs.checkouts(args.vs))
        except ValueError as exc:
            parser.error(str(exc))
        measure(args, stack, revisions)


def measure(args: argparse.Namespace, stack: contextlib.ExitStack, revisions: list[_vs.Engine]) -> None:
    load_before = os.getloadavg()
    started = perf()
    t0 = perf()
    # Each driver (this one, each engine process) is a Ray job with workers of its own, and
    # Ray keeps only num_cpus idle workers in all: the jobs would kill and restart each
    # other's workers every round. Room for each job's few, as a job alone has.
    jobs = 1 + 1 + len(revisions)
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False,
             _system_config={"num_workers_soft_limit": 4 * jobs})
    stack.callback(ray.shutdown)  # after the engine processes have left (callbacks run last first)
    init_s = perf() - t0
    address = ray.get_runtime_context().gcs_address
    engines = {"ours": Engine("ours", REPO / "src", address)}
    engines.update({e.name: Engine(e.name, e.src, address) for e in revisions})
    for engine in engines.values():
        stack.callback(engine.close)
    failed: dict[tuple[str, str], str] = {}  # (engine, case) -> why its rows have no values
    empty: dict[str, dict[str, str]] = {}  # case -> engine -> the status of its rows: SKIP or ERROR
    notes: list[str] = []

    def ours(who: str, case: str, n: int) -> float | None:
        """One value from an engine process, or None once it failed on this case."""
        if (who, case) in failed:
            return None
        try:
            return engines[who].run(case, n)
        except EngineFailed as exc:
            lacks = _vs.lacks_api(str(exc))
            what = "lacks what the case uses" if lacks else "failed"
            empty.setdefault(case, {})[who] = "SKIP" if lacks else "ERROR"
            failed[who, case] = f"{who} {what}: {exc}"
            notes.append(f"{case}: {failed[who, case]}")
            print(f"{case}: {failed[who, case]}", flush=True)
            return None

    pool = ActorPool([TrivialActor.remote() for _ in range(4)])
    # warm-up, at full size: Ray's workers (each driver's job starts its own) and our
    # stages' first calls
    time_trivial("refill", 200, pool), time_trivial("pool", 200, pool)
    for who in engines:
        ours(who, "trivial", 200), ours(who, "cpu", 16)
    names = list(engines)
    trivial_rows: dict[str, list[float]] = {who: [] for who in [*names, "refill", "pool"]}
    cpu_rows: dict[str, list[float]] = {who: [] for who in ["sequential", *names, "raw"]}
    handoff_rows: dict[str, list[float]] = {who: [] for who in [*names, "hand"]}
    ratios: dict[str, list[float]] = {who: [] for who in names}  # refill / ours, paired
    speedups: dict[str, list[float]] = {who: [] for who in names}  # sequential / ours
    ceilings: dict[str, list[float]] = {who: [] for who in names}  # raw split / ours
    raw_speedups: list[float] = []

    def timed(who: str, case: str, n: int) -> float | None:
        if who in engines:
            return ours(who, case, n)
        return time_trivial(who, n, pool) if case == "trivial" else time_cpu(who, n)

    for r in range(args.rounds):
        order = [*names, "refill", "pool"]
        order = order[r % len(order):] + order[: r % len(order)]
        this = {who: timed(who, "trivial", 200) for who in order}
        for who, v in this.items():
            if v is not None:
                trivial_rows[who].append(v)
        for who in names:
            if (v := this[who]) is not None and (refill := this["refill"]) is not None:
                ratios[who].append(refill / v)
        # There and back (A B C C B A), CPU_PAIRS times a round: this machine's speed
        # drifts by tens of percent within seconds; each contender's mean of two is then
        # timed at about the same time, and the median is of many such pairs.
        for k in range(CPU_PAIRS):
            there = ["sequential", *names, "raw"]
            there = there if (r + k) % 2 else there[::-1]
            times: dict[str, list[float]] = {who: [] for who in there}
            for who in there + there[::-1]:
                if (v := timed(who, "cpu", 16)) is not None:
                    times[who].append(v)
            cpu = {who: statistics.mean(v) for who, v in times.items() if v}
            for who, v in cpu.items():
                cpu_rows[who].append(v)
            for who in names:
                if who in cpu:
                    speedups[who].append(cpu["sequential"] / cpu[who])
                    ceilings[who].append(cpu["raw"] / cpu[who])
            raw_speedups.append(cpu["sequential"] / cpu["raw"])
        handoff_rows["hand"].append(fetched_bytes("hand", 20))
        for who in names:
            if (v := ours(who, "handoff", 20)) is not None:
                handoff_rows[who].append(v)
        shown = ", ".join(f"{who} {speedups[who][-1]:.2f}" for who in names if speedups[who])
        print(f"[{r + 1}/{args.rounds}] trivial ms/item {this}; cpu s {cpu}; speedup {shown}", flush=True)
    took = perf() - started

    rows: list[Row] = []

    def add(op: str, case: str, who: str, values: dict[str, list[float]], unit: str, target: str = "",
            meets: Any = None) -> None:
        rows.extend(engine_rows(case, who, values, unit, revisions, target, meets, empty=empty.get(op)))

    add("trivial", "trivial: 200 items, 4 workers (per item)", "ours (batches)", trivial_rows, "ms/item")
    rows.append(ref_row("", "hand-written ray.wait refill loop, one task per item", trivial_rows["refill"], "ms/item"))
    rows.append(ref_row("", "ray.util.ActorPool, 4 actors", trivial_rows["pool"], "ms/item"))
    add("trivial", "", "refill loop time / ours time (paired per round)", ratios, "x", ">= 10 x", lambda m: m >= 10)
    rows.append(ref_row("cpu: 16 items of ~25 ms, num_cpus=2", "sequential, in the driver", cpu_rows["sequential"], "s"))
    add("cpu", "", "ours, workers=2", cpu_rows, "s")
    add("cpu", "", "speedup: sequential / ours (paired, 3 pairs a round)", speedups, "x", ">= 1.7 x", lambda m: m >= 1.7)
    rows.append(ref_row("", "raw two-process split, pre-started (this machine's ceiling)", cpu_rows["raw"], "s"))
    add("cpu", "", "raw split time / ours time (paired, 3 pairs a round)", ceilings, "x")
    rows.append(ref_row("", "the raw split's own speedup: sequential / raw split (the ceiling)", raw_speedups, "x"))
    add("handoff", "handoff: two Ray stages, 20 items of 1 MiB", "ours: KiB the driver fetched", handoff_rows, "KiB",
        "< 64 KiB", lambda m: m < 64)
    rows.append(ref_row("", "hand-written, ray.get between the steps", handoff_rows["hand"], "KiB"))

    print_rows(rows, revisions)
    for note in notes:
        print(f"note: {note}")
    if revisions:
        print(_vs.legend(revisions, MORE_IS_BETTER))
    if args.markdown:
        command = " ".join(["python benchmarks/ray_stages.py", *(f"--vs {e.rev}" for e in revisions),
                            f"--markdown {args.markdown}"])
        lines = header(SECTION, command,
                       f"; ray {ray.__version__}; `ray.init(num_cpus=2)` (idle workers kept: 4 a job) "
                       f"took {init_s:.1f} s; ours in an engine process, a second driver of the cluster",
                       load_before, took, args.rounds, revisions, MORE_IS_BETTER)
        lines += ["", *table(rows, revisions)] + (["", "Notes:", "", *[f"- {n}" for n in notes]] if notes else [])
        write_section(args.markdown, SECTION, "\n".join(lines) + "\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
