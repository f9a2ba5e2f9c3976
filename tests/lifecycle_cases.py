"""The lifecycle matrix's cases: every way a run stops (an error in the stage, a ``break``,
``close()``/``aclose()``, Ctrl-C, a cancellation, interpreter exit), for a stage on any
executor, as the first task or a middle one. ``run_case`` runs one in this process,
``run_sigint`` and ``run_exit`` in a program of their own, each asserting what the README
promises. ``test_lifecycle_matrix.py`` runs them over pyper's executors and pools of the
user's; ``test_ray.py`` runs them on its Ray cluster.

The stage under test is ``lifecycle_stages.fan`` (``afan`` on asyncio): a generator that
records every step it starts, its finally block, and where it ran, in a log that worker
processes and Ray workers write too. ``plan_for`` says what its calls do: mostly, while the
caller acts, one of them is blocked until the test releases it, so that "promptly" means
"without waiting for that call". What ``run_case`` checks:

- promptly: the caller has control back (the error, the end of its loop, the
  KeyboardInterrupt as itself, the cancellation) within PROMPT_S of acting (of the raise,
  for errors), where the code takes milliseconds and the blocked call would take LONG_S;
- the error is the stage's own (type and message, the note naming the task and, in the
  middle, the item; its traceback through the stage, or the remote one as its
  ``__cause__``), and nothing reached the caller before it;
- no call starts after the stop: over SETTLE_S after it (a stage that went on would start
  dozens of steps meanwhile), and again once the blocked call is released, each worker of
  the stage started at most one step past the stop, the one it was handed just before (on
  an executor of the user's, where a started call runs whole, at most one call);
- every generator the stage started has its finally run, in the worker that ran it (the
  executors that can: threads, asyncio, processes), promptly but for the blocked call
  (which on threads closes once released, on asyncio is cancelled); so does the source in
  front of a middle stage. On processes a worker blocked in a call is terminated instead
  (documented: after 0.2 s), so it is the one exception; on an executor of the user's a
  call runs whole (its generator's outputs come back at once): every call made all its
  steps, then ran its finally; Ray cancels its calls with ``force=True``, killing the
  worker, so no finally runs there;
- pyper's threads of the run end or park promptly, but those blocked in a call;
- no thread, process, task or descriptor is left (the leak fixture; async callers check
  that their loop runs no task of the pipeline).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

import pytest
import lifecycle_stages
from conftest import await_until, engine_idle_threads, run_async, wait_no_other_tasks, wait_until
from lifecycle_stages import (
    FUTURES_FIRST_STEPS,
    FUTURES_STEPS,
    LONG_S,
    N,
    Boom,
    Plan,
    build,
    executor_of,
    flagged,
    gone,
    is_futures,
    make_flag,
    plan_for,
    takes,
)

from pyper import task
from pyper._errors import RemoteTraceback

#: A bound on what takes milliseconds, generous for a loaded two-core machine; the call in
#: flight when the caller acts would take LONG_S.
PROMPT_S = 2.0
#: How long a stopped stage is watched for calls it should not start: a stage that went on
#: would start a step every 5 ms.
SETTLE_S = 0.2

#: Ways to stop a run, for a sync caller and for an async one.
PATHS = ["error", "break", "close", "ctrl_c", "cancel"]
#: Executors whose calls run in this process (tracebacks go through the stage itself).
LOCAL = {"thread", "asyncio"}


class Event(NamedTuple):
    t: float
    what: str
    call: str
    step: str
    worker: str


def events(spot: str) -> list[Event]:
    try:
        with open(os.path.join(spot, "events")) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    return [Event(float(t), what, call, step, worker) for t, what, call, step, worker in (ln.split() for ln in lines)]


class Stopped(NamedTuple):
    """How a case's caller stopped the run: when it had control back (``at``), how long the
    stop took from its act (the raise, for an error), what it got before, what it caught."""

    at: float
    took: float
    out: list[Any]
    caught: BaseException | None


# --------------------------------------------------------------------------------------------
# The callers: each takes the outputs up to N and stops the run its way.


def _raise_time(spot: str) -> float:
    """When the stage first raised (a call already running in an executor of the user's
    may raise too, as the run stops)."""
    raises = [e for e in events(spot) if e.what == "raise"]
    assert raises, "the stage never raised"
    return min(e.t for e in raises)


def sync_error(p: Any, spot: str, take: int) -> Stopped:
    out: list[Any] = []
    with pytest.raises(Boom) as info:
        for x in p(0):
            out.append(x)
    at = time.monotonic()
    return Stopped(at, at - _raise_time(spot), out, info.value)


def sync_break(p: Any, spot: str, take: int) -> Stopped:
    out: list[Any] = []
    for x in p(0):  # the generator is referenced by the loop only: leaving it closes it
        out.append(x)
        if len(out) == take:
            acted = time.monotonic()
            break
    at = time.monotonic()
    return Stopped(at, at - acted, out, None)


def sync_close(p: Any, spot: str, take: int) -> Stopped:
    gen = p(0)
    out = [next(gen) for _ in range(take)]
    acted = time.monotonic()
    gen.close()
    at = time.monotonic()
    return Stopped(at, at - acted, out, None)


def sync_ctrl_c(p: Any, spot: str, take: int) -> Stopped:
    out: list[Any] = []
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as info:
        for x in p(0):
            out.append(x)
            if len(out) == take:
                acted = time.monotonic()
                raise interrupt
    at = time.monotonic()
    assert info.value is interrupt  # as itself, not wrapped
    return Stopped(at, at - acted, out, info.value)


def sync_cancel(p: Any, spot: str, take: int) -> Stopped:
    """A sync run has no task to cancel: it is cancelled from outside when it runs nested in
    another run (``task(p, branch=True)``) and that run fails elsewhere: in its last task
    after ``take`` outputs, or (``take`` 0) in its first once the stage's call is blocked."""
    out: list[Any] = []
    acted = [0.0]
    outer_error = Boom("in the enclosing run")

    def fail(x: Any) -> Any:
        acted[0] = time.monotonic()
        raise outer_error

    def fail_after_take(x: Any) -> Any:
        out.append(x)
        if len(out) == take:
            fail(x)
        return x

    def start(x: int) -> Any:
        yield x
        if not take:
            assert wait_until(lambda: flagged(spot, "blocked"), LONG_S)
            fail(x)

    outer = task(start) | task(p, branch=True) | task(fail_after_take)
    with pytest.raises(Boom) as info:
        list(outer(0))
    at = time.monotonic()
    assert info.value is outer_error
    return Stopped(at, at - acted[0], out, info.value)


async def async_error(p: Any, spot: str, take: int) -> Stopped:
    out: list[Any] = []
    with pytest.raises(Boom) as info:
        async for x in p(0):
            out.append(x)
    at = time.monotonic()
    return Stopped(at, at - _raise_time(spot), out, info.value)


async def async_break(p: Any, spot: str, take: int) -> Stopped:
    out: list[Any] = []
    async for x in p(0):  # abandoned on break: the loop's asyncgen hooks close it
        out.append(x)
        if len(out) == take:
            acted = time.monotonic()
            break
    at = time.monotonic()
    return Stopped(at, at - acted, out, None)


async def async_close(p: Any, spot: str, take: int) -> Stopped:
    agen = p(0)
    out = [await agen.__anext__() for _ in range(take)]
    acted = time.monotonic()
    await agen.aclose()
    at = time.monotonic()
    return Stopped(at, at - acted, out, None)


async def async_ctrl_c(p: Any, spot: str, take: int) -> Stopped:
    out: list[Any] = []
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as info:
        async for x in p(0):
            out.append(x)
            if len(out) == take:
                acted = time.monotonic()
                raise interrupt
    at = time.monotonic()
    assert info.value is interrupt  # as itself, not wrapped
    return Stopped(at, at - acted, out, info.value)


async def async_cancel(p: Any, spot: str, take: int) -> Stopped:
    """The task iterating the pipeline is cancelled while it waits for the next output."""
    out: list[Any] = []
    got_n = asyncio.Event()

    async def consume() -> None:
        async for x in p(0):
            out.append(x)
            if len(out) == take:
                got_n.set()

    consumer = asyncio.create_task(consume())
    if take:
        await got_n.wait()
    else:
        assert await await_until(lambda: flagged(spot, "blocked"), LONG_S)
    acted = time.monotonic()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    at = time.monotonic()
    return Stopped(at, at - acted, out[:take], None)


SYNC: dict[str, Callable[[Any, str, int], Stopped]] = {
    "error": sync_error, "break": sync_break, "close": sync_close, "ctrl_c": sync_ctrl_c, "cancel": sync_cancel,
}
ASYNC: dict[str, Callable[[Any, str, int], Coroutine[Any, Any, Stopped]]] = {
    "error": async_error, "break": async_break, "close": async_close, "ctrl_c": async_ctrl_c,
    "cancel": async_cancel,
}


# --------------------------------------------------------------------------------------------
# What every case checks


def check_stopped(kind: str, position: str, path: str, spot: str, stopped: Stopped) -> None:
    assert stopped.took < PROMPT_S, f"the caller had control back {stopped.took:.3f} s after it acted"
    if path != "error":
        assert len(stopped.out) == takes(kind, position, path) == len(set(stopped.out)), stopped.out
        return
    # the stage's own error, and nothing of the stage's before it
    assert stopped.out == [], stopped.out
    error = stopped.caught
    name = "afan" if kind == "asyncio" else "fan"
    raises = {f"boom in call {e.call} at step {e.step}": e for e in events(spot) if e.what == "raise"}
    assert type(error) is Boom and str(error) in raises, (repr(error), raises)
    raised = raises[str(error)]
    notes = getattr(error, "__notes__", [])
    if position == "first":  # the first task's input is the pipeline's arguments: no item
        assert f"pyper: raised in task {name!r}" in notes, notes
    else:
        assert f"pyper: raised in task {name!r} on item {int(raised.call)!r}" in notes, notes
    if kind in LOCAL:  # the very object raised, through the stage
        assert any(error is one for one in lifecycle_stages.raised), (error, lifecycle_stages.raised)
        assert name in [f.name for f in traceback.extract_tb(error.__traceback__)]
    else:
        assert isinstance(error.__cause__, RemoteTraceback), repr(error.__cause__)
        assert f"in {name}" in error.__cause__.text, error.__cause__.text


def check_no_call_after(kind: str, spot: str, stopped: Stopped, when: str) -> None:
    """Each worker of the stage started at most one step past the stop (the one it may have
    been handed just before); on an executor of the user's, a call runs whole once it has
    started (its steps are one call), so no call may start past the stop but one per worker."""
    late = [e for e in events(spot) if e.what == "step" and e.t > stopped.at and not (is_futures(kind) and e.step != "0")]
    per_worker: dict[str, int] = {}
    for e in late:
        per_worker[e.worker] = per_worker.get(e.worker, 0) + 1
    assert all(n <= 1 for n in per_worker.values()), f"{when}: {len(late)} calls started after the stop: {late[:6]}"


def check_finally(kind: str, position: str, spot: str, released: bool) -> None:
    """Every call the stage started ran its finally block, in the worker that ran it:
    before the blocked call is ``released``, every other one (and on asyncio the blocked
    one too: it is cancelled); after, the blocked one too (but on processes: terminated)."""
    every = events(spot)
    if position == "middle":  # the source in front of the stage too, in its thread
        (source,) = [e for e in every if e.what == "source"]
        assert wait_until(lambda: any(e.what == "source-finally" for e in events(spot)), PROMPT_S), every
        (final,) = [e for e in events(spot) if e.what == "source-finally"]
        assert final.worker == source.worker, (source, final)
    if kind == "ray":  # cancelled with force=True: the worker is killed, no finally runs
        return
    calls = {e.call for e in every if e.what == "step" and e.step == "0"}
    assert calls, "the stage never started"
    blocked = {e.call for e in every if e.what == "block"}
    if kind == "asyncio":  # an async call is cancelled where it waits
        assert {e.call for e in every if e.what == "cancelled"} == blocked, every
    expected = calls - blocked if kind == "process" or not (released or kind == "asyncio") else calls

    def finals() -> dict[str, Event]:
        return {e.call: e for e in events(spot) if e.what == "finally"}

    deadline = time.monotonic() + PROMPT_S
    while set(finals()) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    done = finals()
    assert set(done) == expected, f"finally blocks run for calls {sorted(done)}, of {sorted(expected)}"
    every = events(spot)
    for call, final in done.items():
        steps = [e for e in every if e.what == "step" and e.call == call]
        assert final.worker == steps[-1].worker, f"call {call}: finally in {final.worker}, steps in {steps[-1].worker}"
        if is_futures(kind) and not any(e.what == "raise" and e.call == call for e in every):
            # documented: a call on an executor of the user's runs whole (its outputs come back
            # at once), so a stop does not cut it short: it made all its steps
            total = FUTURES_STEPS if position == "middle" else FUTURES_FIRST_STEPS
            assert len(steps) == total, f"call {call} made {len(steps)} of its {total} steps"


def blocked_threads(kind: str, plan: Plan, hold: threading.Event | None, caller: str) -> int:
    """How many of pyper's threads stay in a call until the test releases it: a blocked call
    of the stage on threads, and a blocked sync consumer stage."""
    blocks = any(act is not None and act.what == "block" for act in (plan.claimer, plan.others))
    return int(kind == "thread" and blocks) + int(hold is not None and caller == "sync")


def check_threads_stop(allowed: int) -> None:
    """pyper's threads of the run (its workers, relays, sources) end or park for reuse within
    PROMPT_S of the stop, but ``allowed`` blocked in a call (Python cannot stop a thread)."""

    def busy() -> list[threading.Thread]:
        idle = engine_idle_threads()
        return [t for t in threading.enumerate() if t.name.startswith("pyper:") and t not in idle]

    assert wait_until(lambda: len(busy()) <= allowed, PROMPT_S), f"still busy: {[t.name for t in busy()]}"


# --------------------------------------------------------------------------------------------
# One case


def run_case(kind: str, position: str, path: str, caller: str, spot: str) -> None:
    """Run the case: ``fan`` on ``kind`` at ``position``, stopped by ``path``, iterated by a
    ``caller`` ("sync" or "async"); assert what the module docstring says."""
    plan, take = plan_for(kind, position, path), takes(kind, position, path)
    lifecycle_stages.raised.clear()
    # the first task's error is raised while the consumer stage's call is blocked (but on
    # an executor of the user's, where no output comes out before the error)
    hold = threading.Event() if path == "error" and position == "first" and not is_futures(kind) else None
    try:
        with executor_of(kind, spot) as options:
            p = build(kind, position, spot, plan, options, caller == "async", hold)
            if caller == "async":
                act = ASYNC[path]

                async def main() -> Stopped:
                    stopped = await act(p, spot, take)
                    await asyncio.sleep(SETTLE_S)  # (the loop runs: an async stage could go on)
                    check_no_call_after(kind, spot, stopped, "before the release")
                    await wait_no_other_tasks(PROMPT_S)
                    return stopped

                stopped = run_async(main())
            else:
                stopped = SYNC[path](p, spot, take)
                time.sleep(SETTLE_S)
                check_no_call_after(kind, spot, stopped, "before the release")
            check_stopped(kind, position, path, spot, stopped)
            check_finally(kind, position, spot, released=False)
            check_threads_stop(blocked_threads(kind, plan, hold, caller))
            make_flag(spot, "release")
            if hold is not None:
                hold.set()
            check_finally(kind, position, spot, released=True)
            time.sleep(SETTLE_S)
            check_no_call_after(kind, spot, stopped, "after the release")
    finally:
        make_flag(spot, "release")
        if hold is not None:
            hold.set()


# --------------------------------------------------------------------------------------------
# In a program of its own: a real Ctrl-C, and interpreter exit


#: How long a program may take to exit once nothing of it is blocked (its workers told to
#: stop: a process is terminated 0.2 s after it was asked, a pool of the user's finishes
#: the call it runs).
EXIT_S = 2.0

#: The program of the Ctrl-C and exit cases: ``program.py TESTS KIND POSITION HOW SPOT``.
#: It builds the case's pipeline (a pool of the user's made by it, as a user would: in a
#: ``with`` block, or for the exit cases never shut down), takes
#: N outputs (printing "item" for each), then:
#: - "sigint": goes on iterating (a first task on a pool of the user's has made all its
#:   outputs by then: the loop's body waits instead) until Ctrl-C, and prints "KI <time>"
#:   as the KeyboardInterrupt goes by;
#: - "exit-partial": prints "exiting <time>" and ends, the pipeline's generator never
#:   closed (a global);
#: - "exit-thread": the pipeline is iterated by a daemon thread; the main thread prints
#:   "exiting <time>" and ends.
#: Before it ends, or once iterating is under way for "sigint", it prints "children <pids>".
PROGRAM = r"""
import asyncio, contextlib, os, sys, threading, time
sys.path.insert(0, sys.argv[1])
from lifecycle_stages import LONG_S, N, build, child_pids, executor_of, is_futures, plan_for

kind, position, how, spot = sys.argv[2:6]
is_async = kind == "asyncio"
took_n = threading.Event()


def consume_sync(p):
    count = 0
    for x in p(0):
        count += 1
        if count <= N:
            print("item", flush=True)
        if count == N:
            took_n.set()
            if how == "sigint" and is_futures(kind) and position == "first":
                # (short sleeps: a signal that comes just before a sleep starts is seen only
                # once it ends)
                deadline = time.monotonic() + LONG_S
                while time.monotonic() < deadline:
                    time.sleep(0.01)


async def consume_async(p):
    count = 0
    async for x in p(0):
        count += 1
        if count <= N:
            print("item", flush=True)
        if count == N:
            took_n.set()


def report_children():
    print("children", *child_pids(), flush=True)


@contextlib.contextmanager
def options_of_the_program():
    # As executor_of, but a pool of the user's is the program's own: shut down (waiting for
    # its calls) as the program leaves its `with` block, or, on the exit cases, never: then
    # interpreter exit does it (concurrent.futures' exit hook).
    if not is_futures(kind):
        with executor_of(kind, spot) as options:
            yield options
        return
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
    global pool
    pool = ThreadPoolExecutor(2) if kind == "futures-thread" else ProcessPoolExecutor(2)
    with pool if how == "sigint" else contextlib.nullcontext():
        yield {"executor": pool}


def main():
    with options_of_the_program() as options:
        p = build(kind, position, spot, plan_for(kind, position, how), options, is_async)
        if how == "sigint":
            threading.Thread(target=lambda: (took_n.wait(), report_children()), daemon=True).start()
            try:
                asyncio.run(consume_async(p)) if is_async else consume_sync(p)
            except KeyboardInterrupt:
                print("KI", time.monotonic(), flush=True)
                raise
        elif how == "exit-thread":
            run = (lambda: asyncio.run(consume_async(p))) if is_async else (lambda: consume_sync(p))
            threading.Thread(target=run, daemon=True).start()
            took_n.wait()
        elif is_async:
            global agen, loop
            loop = asyncio.new_event_loop()
            agen = p(0)
            for _ in range(N):
                loop.run_until_complete(agen.__anext__())
                print("item", flush=True)
        else:
            global gen
            gen = p(0)
            for _ in range(N):
                next(gen)
                print("item", flush=True)
        if how != "sigint":
            report_children()
            print("exiting", time.monotonic(), flush=True)


if __name__ == "__main__":
    main()
"""


def _start_program(kind: str, position: str, how: str, spot: str) -> subprocess.Popen[str]:
    script = os.path.join(spot, "program.py")
    with open(script, "w") as f:
        f.write(PROGRAM)
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.path.join(here, "..", "src")}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.Popen([sys.executable, script, here, kind, position, how, spot], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _read_until(proc: subprocess.Popen[str], prefix: str, lines: list[str]) -> str:
    """The next line of the program's output that starts with ``prefix`` (the test's timeout
    bounds the wait)."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate(timeout=LONG_S)
            raise AssertionError(f"the program ended before printing {prefix!r}: {lines}\n{err}")
        lines.append(line.strip())
        if line.startswith(prefix):
            return line.strip()


def _workers_of(proc: subprocess.Popen[str], spot: str, reported: str) -> set[int]:
    """The program's child processes (as it reported them) and every other process where
    the stage ran."""
    pids = {int(pid) for pid in reported.split()[1:]}
    pids |= {int(e.worker.split("/")[0]) for e in events(spot)}
    pids.discard(proc.pid)
    return pids


def _assert_gone(pids: set[int], what: str) -> None:
    deadline = time.monotonic() + PROMPT_S
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    left = sorted(pid for pid in pids if not gone(pid))
    assert not left, f"processes {left} outlived {what}"


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=LONG_S)


def run_sigint(kind: str, position: str, spot: str) -> None:
    """A real Ctrl-C (SIGINT to the program's process group, as a terminal sends it) while
    a sync pipeline (asyncio.run, for an async stage) runs: the program gets the
    KeyboardInterrupt promptly, exits with it (once a call blocked in one of its threads is
    released: not before), and no process where the stage ran is left."""
    proc = _start_program(kind, position, "sigint", spot)
    try:
        lines: list[str] = []
        workers = _workers_of(proc, spot, _read_until(proc, "children", lines))
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        interrupted = float(_read_until(proc, "KI", lines).split()[1])
        assert interrupted - sent < PROMPT_S, f"KeyboardInterrupt {interrupted - sent:.3f} s after SIGINT"
        if kind == "thread" or (kind == "futures-thread" and position == "middle"):
            # a call blocked in a thread of the program (pyper's, or the pool's, which the
            # program's `with` waits for): the program exits once it returns (a process
            # pool's workers get the Ctrl-C too, and do not ignore it: their call ends)
            time.sleep(SETTLE_S)
            assert proc.poll() is None, "the program exited while a call was in flight in its thread"
            make_flag(spot, "release")
        # (elsewhere nothing holds it: a worker process is terminated, an async call cancelled)
        released = time.monotonic()
        code = proc.wait(EXIT_S + LONG_S)
        exited = time.monotonic()
        _, err = proc.communicate()
        assert code != 0 and err.rstrip().endswith("\nKeyboardInterrupt"), err
        if kind != "futures-process":
            # one traceback ending in it: pyper's workers ignore Ctrl-C (a ProcessPoolExecutor's
            # do not: an idle one prints its own KeyboardInterrupt as it dies, which is the
            # user's executor, not pyper)
            interrupts = [ln for ln in err.splitlines() if ln.split(":")[0] == "KeyboardInterrupt"]
            assert interrupts == ["KeyboardInterrupt"], err
        assert exited - released < EXIT_S, f"exit took {exited - released:.3f} s"
        _assert_gone(workers, "the Ctrl-C")
    finally:
        make_flag(spot, "release")
        _end(proc)


#: What a run cancelled by interpreter exit raises in its caller (a daemon thread).
CANCELLED_AT_EXIT = ("pyper._errors.Cancelled: the pipeline was cancelled from outside (an enclosing run, "
                     "or interpreter exit)")


def run_exit(kind: str, position: str, how: str, spot: str) -> None:
    """Interpreter exit while the pipeline runs (iterated partly by the main thread, or by
    a daemon thread): the program exits promptly, with no error, and no process where the
    stage ran is left."""
    proc = _start_program(kind, position, how, spot)
    try:
        lines: list[str] = []
        workers = _workers_of(proc, spot, _read_until(proc, "children", lines))
        exiting = float(_read_until(proc, "exiting", lines).split()[1])
        code = proc.wait(EXIT_S + LONG_S)
        exited = time.monotonic()
        _, err = proc.communicate()
        assert code == 0, err
        if how == "exit-thread":
            # At exit pyper cancels the runs of daemon threads; the one iterating this run
            # may get to raise that before the interpreter stops it (a traceback on stderr,
            # possibly cut short as the interpreter stops the thread): then it is that, and
            # nothing else.
            head, _, report = err.partition("Exception in thread ")
            said = [ln for ln in report.splitlines()[1:] if ln and not ln.startswith((" ", "Traceback"))]
            assert said == [] or (len(said) == 1 and CANCELLED_AT_EXIT.startswith(said[0])), err
            err = head
        assert err == "", err
        assert exited - exiting < EXIT_S, f"exit took {exited - exiting:.3f} s"
        _assert_gone(workers, "interpreter exit")
    finally:
        _end(proc)
