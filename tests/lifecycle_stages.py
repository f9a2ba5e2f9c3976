"""The user's side of the lifecycle matrix (``lifecycle_cases.py``): the stage under test, as
a generator function that runs wherever its executor runs it (a thread, the event loop, a
worker process, a pool of the user's, a Ray worker), and the record it leaves.

Everything here is importable by name, imports only the standard library and pyper, and
is picklable: worker processes, Ray workers and the test programs of the Ctrl-C and
interpreter-exit cases (run in a fresh interpreter) import this module.

The record is a directory (``spot``) the test made:

- ``events``: one line per event, appended with one ``write`` (atomic for lines this short):
  ``<time.monotonic()> <what> <call> <step> <worker>``. ``time.monotonic()`` is
  ``CLOCK_MONOTONIC``, one clock for every process of the machine, so a worker process's
  events compare with the test's own times. ``worker`` is ``pid/thread/task``: which worker
  of the stage made the event.
- ``claimed``: made (``O_EXCL``) by the first call to start: that call is the "claimer".
- ``blocked``: made by whatever blocks (a call of the stage, or the consumer stage), so
  that a call told to raise once something is blocked can wait for it.
- ``release``: made by the test; a blocked call returns once it exists.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from pyper import AsyncPipeline, task

#: One step of a call of the stage under test (between two outputs).
STEP_S = 0.005
#: A step of a call on an executor of the user's: three make a call of 30 ms, over the
#: 20 ms of calls that pyper aims its batches at there, so every batch is one item.
FUTURES_STEP_S = 0.01
#: The longest a blocked call waits for its release.
LONG_S = 10.0
#: A stalled step (a call in flight that ends by itself: at interpreter exit).
STALL_S = 0.5
#: How often a blocked call looks for its release (a file: the only signal that reaches a
#: thread, an event loop, a worker process and a Ray worker alike).
POLL_S = 0.01


class Boom(Exception):
    """What the stage under test raises."""


#: Every Boom the stage raised in this process (where it runs in the test's own process, its
#: caller must get that very object).
raised: list[Boom] = []


class Act(NamedTuple):
    """What a call does at step ``step``: "block" (until released), "stall" (STALL_S more),
    "raise" (Boom), or "raise_once_blocked" (Boom, once something is blocked: see
    ``blocked``)."""

    what: str
    step: int


class Plan(NamedTuple):
    """What the calls of the stage under test do.

    ``steps``: outputs per call (None: endless). ``claimer``: what the first call to start
    does, ``others``: what every other call does (None: just its steps). ``step_s``: the
    time each step takes."""

    steps: int | None = None
    claimer: Act | None = None
    others: Act | None = None
    step_s: float = STEP_S


def record(spot: str, what: str, call: object = "-", step: object = "-", task: int = 0) -> None:
    """Append an event to ``spot``'s log (one write, so lines from many processes never mix)."""
    worker = f"{os.getpid()}/{threading.get_ident()}/{task}"
    line = f"{time.monotonic():.6f} {what} {call} {step} {worker}\n".encode()
    fd = os.open(os.path.join(spot, "events"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def make_flag(spot: str, name: str) -> bool:
    """Create the file ``name`` in ``spot``; False if it existed."""
    try:
        fd = os.open(os.path.join(spot, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def flagged(spot: str, name: str) -> bool:
    return os.path.exists(os.path.join(spot, name))


def _act_of(spot: str, plan: Plan) -> Act | None:
    return plan.claimer if make_flag(spot, "claimed") else plan.others


def _wait_for(spot: str, name: str) -> None:
    deadline = time.monotonic() + LONG_S
    while not flagged(spot, name) and time.monotonic() < deadline:
        time.sleep(POLL_S)


def fan(spot: str, plan: Plan, x: int) -> Iterator[tuple[int, int]]:
    """The stage under test: a generator of ``plan.steps`` outputs ``(x, step)``, recording
    each step as it starts, its finally block, and what ``plan`` makes it do."""
    act = _act_of(spot, plan)
    try:
        k = 0
        while plan.steps is None or k < plan.steps:
            record(spot, "step", x, k)
            if act is not None and act.step == k:
                if act.what == "block":
                    record(spot, "block", x, k)
                    make_flag(spot, "blocked")
                    _wait_for(spot, "release")
                    record(spot, "released", x, k)
                elif act.what == "stall":
                    time.sleep(STALL_S)
                else:
                    if act.what == "raise_once_blocked":
                        _wait_for(spot, "blocked")
                    record(spot, "raise", x, k)
                    error = Boom(f"boom in call {x} at step {k}")
                    raised.append(error)
                    raise error
            time.sleep(plan.step_s)
            yield (x, k)
            k += 1
    finally:
        record(spot, "finally", x)


async def afan(spot: str, plan: Plan, x: int) -> AsyncIterator[tuple[int, int]]:
    """``fan`` as an async generator (the asyncio executor): blocking and sleeping are
    awaits, so cancelling the call interrupts them."""
    import asyncio

    me = id(asyncio.current_task())
    act = _act_of(spot, plan)
    try:
        k = 0
        while plan.steps is None or k < plan.steps:
            record(spot, "step", x, k, me)
            if act is not None and act.step == k:
                if act.what == "block":
                    record(spot, "block", x, k, me)
                    make_flag(spot, "blocked")
                    deadline = time.monotonic() + LONG_S
                    try:
                        while not flagged(spot, "release") and time.monotonic() < deadline:
                            await asyncio.sleep(POLL_S)
                    except asyncio.CancelledError:
                        record(spot, "cancelled", x, k, me)
                        raise
                    record(spot, "released", x, k, me)
                elif act.what == "stall":
                    await asyncio.sleep(STALL_S)
                else:
                    deadline = time.monotonic() + LONG_S
                    while act.what == "raise_once_blocked" and not flagged(spot, "blocked") \
                            and time.monotonic() < deadline:
                        await asyncio.sleep(POLL_S)
                    record(spot, "raise", x, k, me)
                    error = Boom(f"boom in call {x} at step {k}")
                    raised.append(error)
                    raise error
            await asyncio.sleep(plan.step_s)
            yield (x, k)
            k += 1
    finally:
        record(spot, "finally", x, "-", id(asyncio.current_task()))


def numbers(spot: str, start: int) -> Iterator[int]:
    """The source in front of a middle stage: start, start + 1, ... (endless), recording
    where it started and its finally block."""
    record(spot, "source")
    try:
        i = start
        while True:
            yield i
            i += 1
    finally:
        record(spot, "source-finally")


def child_pids(pid: int | None = None) -> list[int]:
    """The live child processes of ``pid`` (default: this process), from /proc (Linux)."""
    parent = os.getpid() if pid is None else pid
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after it
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z":
            found.append(int(name))
    return found


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (or is a zombie, exited but not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# --------------------------------------------------------------------------------------------
# The pipelines of the matrix


#: Where the stage under test runs: pyper's executors, and pools of the user's (made and
#: shut down by the case). "ray" is run by tests/test_ray.py, on its cluster.
EXECUTORS = ["thread", "asyncio", "process", "futures-thread", "futures-process"]
POSITIONS = ["first", "middle"]
#: Outputs the caller takes before it acts (breaks, closes, ...); the step at which the
#: first task blocks or raises.
N = 5
#: A first task on an executor of the user's runs whole in one call (a future has one
#: result): it makes this many outputs, then returns.
FUTURES_FIRST_STEPS = 8
#: A middle call on an executor of the user's: three steps, then it returns.
FUTURES_STEPS = 3


def is_futures(kind: str) -> bool:
    return kind.startswith("futures")


@contextmanager
def executor_of(kind: str, spot: str) -> Iterator[dict[str, Any]]:
    """The task options that put the stage under test on ``kind``; a pool of the user's is
    made here and shut down at the end, after releasing whatever call of it is blocked."""
    if not is_futures(kind):
        yield {"multiprocess": True} if kind == "process" else {"executor": "ray"} if kind == "ray" else {}
        return
    from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

    pool: Executor = ThreadPoolExecutor(2) if kind == "futures-thread" else ProcessPoolExecutor(2)
    try:
        yield {"executor": pool}
    finally:
        make_flag(spot, "release")
        pool.shutdown(wait=True)


def plan_for(kind: str, position: str, path: str) -> Plan:
    """What the stage under test does for ``path`` ("error", or any way of stopping it).

    First task: it makes N outputs, then blocks (raises, for "error": once the consumer
    stage has blocked) at step N, so the caller acts while a call is in flight, except:
    - on processes it streams on without blocking: a blocked worker process is terminated
      when the run stops (documented), so its generator's finally would never run; the
      middle position has a blocked worker process;
    - on an executor of the user's, one call makes every output before any comes back: it
      makes FUTURES_FIRST_STEPS of them (raises at step N, for "error") and returns; but
      for "cancel" it blocks at its first step, and the caller cancels then (``takes``).
    Middle task: the first call to start blocks at its first step; the others stream (on an
    executor of the user's, FUTURES_STEPS outputs each), or raise at their first step for
    "error"."""
    error = path == "error"
    if path.startswith("exit"):
        # The stage runs on; in the middle its first call stalls (STALL_S), so that a call is
        # in flight as the program ends (which it waits for on threads: documented).
        steps = (FUTURES_FIRST_STEPS if position == "first" else FUTURES_STEPS) if is_futures(kind) else None
        stall = Act("stall", 0) if position == "middle" else None
        return Plan(steps, stall, None, FUTURES_STEP_S if is_futures(kind) else STEP_S)
    if position == "first":
        if is_futures(kind):
            act = Act("raise", N) if error else Act("block", 0) if path == "cancel" else None
            return Plan(FUTURES_FIRST_STEPS, act, None, FUTURES_STEP_S)
        if kind == "process" and not error:
            return Plan(None)
        return Plan(None, Act("raise_once_blocked" if error else "block", N))
    if is_futures(kind):
        return Plan(FUTURES_STEPS, Act("block", 0), Act("raise_once_blocked", 0) if error else None, FUTURES_STEP_S)
    return Plan(None, Act("block", 0), Act("raise_once_blocked", 0) if error else None)


def takes(kind: str, position: str, path: str) -> int:
    """How many outputs the caller takes before it acts; 0: it acts once the stage's call
    is blocked, before any output (a first task on an executor of the user's, cancelled
    while its one call runs)."""
    return 0 if position == "first" and is_futures(kind) and path == "cancel" else N


def pass_on(x: Any) -> Any:
    return x


async def apass_on(x: Any) -> Any:
    return x


def holding_sink(spot: str, hold: threading.Event, is_async: bool) -> Callable[[Any], Any]:
    """A consumer stage whose first call blocks (until ``hold`` is set, or cancelled)."""
    first = [True]

    def hold_first(x: Any) -> Any:
        if first[0]:
            first[0] = False
            make_flag(spot, "blocked")
            hold.wait(LONG_S)
        return x

    async def ahold_first(x: Any) -> Any:
        import asyncio

        if first[0]:
            first[0] = False
            make_flag(spot, "blocked")
            await asyncio.sleep(LONG_S)  # cancelled when the run stops
        return x

    return ahold_first if is_async else hold_first


def build(
    kind: str, position: str, spot: str, plan: Plan, options: dict[str, Any], is_async: bool,
    hold: threading.Event | None = None,
) -> Any:
    """The pipeline of a case: ``fan | sink`` (first) or ``numbers | fan | sink`` (middle),
    ``fan`` on ``kind`` (two workers in the middle), the sink async for an async caller (an
    AsyncPipeline) and holding its first item when ``hold`` is given.

    In the middle on a ThreadPoolExecutor of two threads, four workers: two batches wait in
    the pool's queue, which a stop must cancel (``Future.cancel``). Not on a
    ProcessPoolExecutor: it moves up to ``max_workers + 1`` calls into its call queue at
    once, marked running, which no ``cancel`` stops (they run after the stop)."""
    func: Any = afan if kind == "asyncio" else fan
    workers = (4 if kind == "futures-thread" else 2) if position == "middle" else 1
    stage = task(func, workers=workers, bind=task.bind(spot, plan), **options)
    sink: Any = holding_sink(spot, hold, is_async) if hold is not None else apass_on if is_async else pass_on
    p = stage | task(sink) if position == "first" else task(numbers, bind=task.bind(spot)) | stage | task(sink)
    assert isinstance(p, AsyncPipeline) is is_async
    return p
