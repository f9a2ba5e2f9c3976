"""Regressions: one test per engine bug found by review, plus a fast random-pipeline fuzz
test against a plain-Python oracle.  All but one bug were fixed in "Fix ten shutdown, ordering
and bound bugs found by review"; the nested-run leak was fixed just before, in "A nested run
leaves its parent when done".

Each test is built from the reviewer's reproduction script and fails on the engine before the
fix.  Most are deterministic.  Where the bug needs a thread to be preempted at one exact spot,
or a Ctrl-C to land inside ``Run.cancel``, the test simulates it by patching one engine internal
(``Channel.cancel``, ``Channel.get``) and says so; the unpatched race of the first bug is also
covered by a loop that makes the old bug show with high probability.  Timing bounds are
generous; the old engine misses them by far."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from typing import Any

import pytest

import pyper
from conftest import (
    InFlight,
    Leaks,
    LoopErrors,
    acollect,
    collect,
    other_tasks,
    run_async,
    time_limit,
    wait_no_other_tasks,
    wait_until,
)
from pyper import AsyncPipeline, task
from pyper._channel import Channel

SYNC_ASYNC = ["sync", "async"]

#: how long a "slow" call would last if nobody released / cancelled it
LONG_S = 10.0


class Boom(Exception):
    pass


async def _aident(x: Any) -> Any:
    return x


# --------------------------------------------------------------------------------------------
# 1. A cancelled run looked like a normal end: the error was lost and a join committed a
#    partial result.  Run.cancel cancelled channels upstream first; between two channels, the
#    workers of the next stage saw their input cancelled and closed their outputs, which
#    downstream took for a normal end of stream.


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", SYNC_ASYNC)
def test_error_not_lost_when_cancel_is_preempted_between_channels(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulates the thread running Run.cancel being preempted after each channel it cancels
    # (the unpatched race is test_error_not_lost_unpatched_race below).
    original_cancel = Channel.cancel

    def preempted_cancel(self: Channel) -> None:
        original_cancel(self)
        time.sleep(0.02)

    monkeypatch.setattr(Channel, "cancel", preempted_cancel)
    err = Boom(50)
    committed: list[int] = []

    def src() -> Any:
        yield from range(100)

    async def asrc() -> Any:
        for i in range(100):
            yield i

    def check(x: int) -> int:
        if x == 50:
            time.sleep(0.05)  # let items 0..49 reach the join first
            raise err
        return x

    def total(items: Any) -> int:  # a join committing a result
        result = sum(items)
        committed.append(result)
        return result

    p = (
        task(asrc if kind == "async" else src)
        | task(check)
        | task(lambda x: x, workers=2)
        | task(total, join=True)
    )
    with pytest.raises(Boom) as info:
        collect(p)
    assert info.value is err
    assert committed == []  # the join saw the cancellation, not an end of stream


@pytest.mark.timeout(10)
def test_error_not_lost_unpatched_race() -> None:
    # lost_error.py: the same bug without any patching, about 1 run in 125 on the old engine.
    # Probabilistic: ~1000 runs (2 s) make the old bug show with probability > 0.999.
    def run_once(n: int = 200, bad: int = 54) -> None:
        err = Boom(bad)

        async def asrc(n: int) -> Any:
            for i in range(n):
                yield i

        def filt(x: int) -> Any:
            if x == bad:
                raise err
            if x % 3:
                yield x

        p = task(asrc) | task(filt, workers=3, throttle=3) | task(lambda x: x * 2 + 1, workers=5)

        async def main() -> list[int]:
            return await acollect(p(n))

        try:
            out = asyncio.run(main())
        except Boom as e:
            assert e is err
        else:
            pytest.fail(f"the error was lost: the pipeline ended normally with {len(out)} outputs")

    deadline = time.monotonic() + 2.0
    runs = 0
    while runs < 100 or (time.monotonic() < deadline and runs < 1500):
        run_once()
        runs += 1


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# 5. A join task that returned early ended the stream normally, but the run was never
#    cancelled: the stages above it stayed busy (sync: parked in a channel until the producer
#    emitted again; async: the caller waited a whole second for them, then left them pending).


@pytest.mark.timeout(10)
def test_join_returning_early_stops_upstream_sync(leaks: Leaks) -> None:
    gate = threading.Event()  # a slow producer: blocked until the test releases it
    steps: list[int] = []
    producer: list[threading.Thread] = []

    def src() -> Any:
        producer.append(threading.current_thread())
        for i in itertools.count():
            steps.append(i)
            if i > 3:
                gate.wait(LONG_S)
            yield i

    def first_two(items: Any) -> list[int]:  # join: reads two items and returns early
        return [next(items), next(items)]

    p = task(src) | task(lambda x: x, workers=2) | task(first_two, join=True)
    try:
        # Two workers in the middle: the join sees two of the first items, in either order.
        [firsts] = list(p())
        assert len(set(firsts)) == 2 and set(firsts) <= {0, 1, 2, 3, 4}, firsts
        # Only the producer, in its (uninterruptible) call, may still be busy.
        assert wait_until(lambda: set(leaks.busy_threads()) <= set(producer), 2.0), (
            f"busy after the pipeline returned: {leaks.busy_threads()}"
        )
    finally:
        gate.set()
    # Once its call returns, the producer is not advanced again (at most one more step).
    assert not leaks.wait_quiet(2.0)
    assert max(steps) <= 5, f"producer kept running after the pipeline returned: {max(steps)} steps"


@pytest.mark.timeout(10)
def test_join_returning_early_stops_upstream_async() -> None:
    async def src() -> Any:
        for i in itertools.count():
            if i > 3:
                await asyncio.sleep(LONG_S)  # a slow producer
            yield i

    async def first_two(items: Any) -> list[int]:
        return [await items.__anext__(), await items.__anext__()]

    async def main() -> float:
        p = task(src) | task(_aident, workers=2) | task(first_two, join=True)
        started = time.monotonic()
        assert await acollect(p()) == [[0, 1]]
        took = time.monotonic() - started
        assert not await other_tasks(), "upstream tasks still pending after the pipeline returned"
        return took

    took = run_async(main())
    # The old engine waited its whole settle time (1 s) for tasks it had not cancelled.
    assert took < 0.9


# --------------------------------------------------------------------------------------------
# 6. After an error downstream, a fast thread-run generator kept being advanced: pour() only
#    noticed the cancelled channel when it flushed, and its batch had grown to ~1024 items.


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_generator_stops_at_its_next_item_after_an_error_downstream(
    kind: str, leaks: Leaks
) -> None:
    err = Boom(3001)
    late_steps: list[float] = []
    stop = threading.Event()  # set at the end so that a runaway producer stops too

    def producer() -> Any:
        yield from range(3000)  # cheap phase: the engine's batches grow to their largest
        for i in range(3000, 100_000):  # slow phase
            if stop.is_set():
                return
            time.sleep(0.005)
            late_steps.append(time.monotonic())
            yield i

    def check(x: int) -> int:
        if x == 3001:
            raise err
        return x

    p = task(producer) | task(check)
    if kind == "async":
        p = p | task(_aident)  # the same thread stages, in an AsyncPipeline
    try:
        with pytest.raises(Boom) as info:
            collect(p)
        raised_at = time.monotonic()
        assert info.value is err
        # The producer thread stops (goes idle) promptly instead of running on for seconds.
        left = leaks.wait_quiet(2.0)
        assert not left, f"still busy 2 s after the error: {left}"
        started_after = sum(t > raised_at for t in late_steps)
        assert started_after <= 1, f"{started_after} producer steps after the caller got the error"
    finally:
        stop.set()


# --------------------------------------------------------------------------------------------
# 7. Join workers split one stream: a worker returning early dropped the items it had taken
#    into its batch but not read, instead of leaving them to its sibling.


def _joins_one_returning_early(early_after: int) -> tuple[Any, Any]:
    """Sync and async join functions: the first worker to read ``early_after`` items returns
    at once; every other worker reads to the end."""
    lock = threading.Lock()
    state = {"early": False}

    def first() -> bool:
        with lock:
            is_first, state["early"] = not state["early"], True
            return is_first

    def j(items: Any) -> list[int]:
        seen = []
        for x in items:
            seen.append(x)
            if len(seen) == early_after and first():
                break
        return seen

    async def aj(items: Any) -> list[int]:
        seen = []
        async for x in items:
            seen.append(x)
            if len(seen) == early_after and first():
                break
        return seen

    return j, aj


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", SYNC_ASYNC)
def test_join_worker_returning_early_drops_no_item(kind: str) -> None:
    n, early_after = 2000, 300

    def src() -> Any:
        yield from range(n)

    async def asrc() -> Any:
        for i in range(n):
            yield i

    for _ in range(5):
        j, aj = _joins_one_returning_early(early_after)
        if kind == "sync":
            p = task(src) | task(lambda x: x) | task(j, join=True, workers=2)
        else:
            p = task(asrc) | task(_aident) | task(aj, join=True, workers=2)
        parts = collect(p)
        assert len(parts) == 2
        assert early_after in map(len, parts)
        got = sorted(x for part in parts for x in part)
        missing = sorted(set(range(n)) - set(got))
        assert not missing, f"{len(missing)} items reached no join worker: {missing[:10]}..."
        assert got == list(range(n))  # each item exactly once


# --------------------------------------------------------------------------------------------
# 8. A worker's get() returned a batch, then Run.cancel() ran before the worker stored it in
#    its cursor: cancel emptied the old batch, and the worker called the user's function on
#    every item of the new one after the run was cancelled.


@pytest.mark.timeout(10)
def test_batch_taken_as_the_run_is_cancelled_is_not_started(
    monkeypatch: pytest.MonkeyPatch, leaks: Leaks
) -> None:
    # Simulates the worker thread being preempted right after get() returns its second batch,
    # until the caller has closed the generator (a thread can be preempted there at any time).
    original_get = Channel.get
    took_batch = threading.Event()
    closed = threading.Event()

    def preempted_get(self: Channel, n: int, held: Any = None) -> Any:
        batch = original_get(self, n, held)
        if (
            threading.current_thread() is not threading.main_thread()
            and batch
            and isinstance(batch[0], int)
            and batch[0] > 0  # the stage's second batch (its first one is [0])
            and not took_batch.is_set()
        ):
            took_batch.set()
            closed.wait(5)
        return batch

    monkeypatch.setattr(Channel, "get", preempted_get)
    calls_after_close: list[int] = []

    def slow(x: int) -> int:
        if closed.is_set():
            calls_after_close.append(x)
        return x

    def src() -> Any:
        yield from range(100_000)

    gen = (task(src) | task(slow))()
    try:
        assert next(gen) == 0
        assert took_batch.wait(5)
        gen.close()
    finally:
        closed.set()
    assert not leaks.wait_quiet(1.0)
    assert calls_after_close == []


# --------------------------------------------------------------------------------------------
# 9. A KeyboardInterrupt landing inside Run.cancel (a second Ctrl-C) left the run marked
#    cancelled with its channels not cancelled: every later cancel, the interpreter-exit hook
#    included, returned at once, and the interpreter hung at exit joining parked workers.

KI_IN_CANCEL_CHILD = textwrap.dedent(
    """
    import itertools, time
    from pyper import task
    from pyper._channel import Channel

    # Simulates a second Ctrl-C delivered inside Run.cancel: the first Channel.cancel raises.
    original = Channel.cancel
    state = {"armed": True}
    def cancel(self):
        if state["armed"]:
            state["armed"] = False
            raise KeyboardInterrupt
        original(self)
    Channel.cancel = cancel

    def src():
        yield from itertools.count()

    gen = (task(src) | task(lambda x: x, workers=2, throttle=1))()
    next(gen)
    time.sleep(0.2)  # the stages park on their full channels
    try:
        gen.close()  # the consumer leaves: Run.cancel() runs, and the Ctrl-C hits it
    except KeyboardInterrupt:
        print("KeyboardInterrupt handled", flush=True)
    """
)


@pytest.mark.timeout(20)
def test_keyboard_interrupt_inside_cancel_does_not_hang_interpreter_exit() -> None:
    env = dict(os.environ)
    # the child imports the same pyper as this test run
    src_dir = os.path.dirname(os.path.dirname(os.path.abspath(pyper.__file__)))
    env["PYTHONPATH"] = src_dir + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONWARNINGS", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", KI_IN_CANCEL_CHILD],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=8,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"the child interpreter hung at exit (parked worker threads); stdout: {e.stdout!r}"
        )
    assert proc.stdout.strip() == "KeyboardInterrupt handled", proc.stderr
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------------------------
# 10. A nested pipeline used as a task: every call made an inner run that the outer run
#     adopted and never forgot, so a long outer stream grew memory without bound.  (Fixed
#     before the review commit, in "A nested run leaves its parent when done".)


@pytest.mark.timeout(15)
def test_nested_pipeline_runs_are_not_kept_by_the_outer_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pyper._engine import _run

    # Records every Run weakly, to count those still alive; the engine is otherwise untouched.
    runs: weakref.WeakSet[Any] = weakref.WeakSet()
    original_init = _run.Run.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        runs.add(self)

    monkeypatch.setattr(_run.Run, "__init__", init)
    inner = task(lambda x: x + 1) | task(lambda x: x * 2)
    gate = threading.Event()

    def src() -> Any:
        yield from range(1000)
        gate.wait(LONG_S)  # the outer run is still streaming, its nested runs all done
        yield from range(1000, 2000)

    def settled() -> bool:
        gc.collect()
        return len(runs) <= 3  # the outer run, and a nested one at most (in its teardown)

    gen = (task(src) | task(inner, branch=True) | task(lambda x: x))()
    try:
        out = [next(gen) for _ in range(1000)]
        ok = wait_until(settled, 3.0)
        assert ok, f"{len(runs)} runs alive after 1000 items went through a nested pipeline"
    finally:
        gate.set()
    out += list(gen)
    assert out == [(x + 1) * 2 for x in range(2000)]


# --------------------------------------------------------------------------------------------
# Also fixed in that commit: async, a CancelledError raised by the task's own code is an error,
# not a cancellation (the caller got pyper's "cancelled from outside" instead of it).


@pytest.mark.timeout(10)
def test_cancelled_error_raised_by_an_async_task_is_raised_as_itself() -> None:
    err = asyncio.CancelledError("raised by the task's own code")

    async def src() -> Any:
        for i in range(10):
            yield i

    async def f(x: int) -> int:
        if x == 3:
            raise err
        return x

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError) as info:
            await acollect((task(src) | task(f, workers=2))())
        assert info.value is err
        await wait_no_other_tasks()

    run_async(main())


# --------------------------------------------------------------------------------------------
# Fuzz: random small pipelines (map / branch / join / filter stages; sync, async or mixed; 1-5
# workers; throttles; ordered; an error anywhere, or a break) against a plain-Python oracle.
# Checks the outputs (exactly when order is promised), that the original error object is
# raised, the throttle bound on every throttled stage, and that nothing is left running.

FUZZ_TRIALS = 200  # per mode


def _oracle(kind: str, x: int) -> list[int]:
    if kind == "map":
        return [x * 2 + 1]
    if kind == "branch":
        return [x * 3, x * 3 + 1]
    if kind == "join":
        return [x]
    assert kind == "filt"
    return [x] if x % 3 else []


class _Trial:
    """One random pipeline, its oracle and its checks (from the reviewer's fuzz.py)."""

    def __init__(self, seed: int, mode: str) -> None:
        rng = random.Random(seed)
        self.jitter = random.Random(seed)  # sleeps inside the tasks (interleaving varies anyway)
        self.specs = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(["map", "map", "branch", "join", "filt"])
            asyncy = {"sync": False, "async": True, "mixed": rng.random() < 0.5}[mode]
            workers = rng.randint(1, 5)
            throttle = rng.choice([0, 0, 1, 2, 3, 5])
            ordered = kind != "join" and rng.random() < 0.4
            self.specs.append((kind, asyncy, workers, throttle, ordered))
        self.n = n = rng.choice([0, 1, 5, 30, 100])
        self.src_async = mode == "async" or (mode == "mixed" and rng.random() < 0.5)
        self.sleeps = rng.random() < 0.3
        self.flights = [InFlight() for _ in range(len(self.specs) + 1)]
        expected = list(range(n))
        inputs = []
        for kind, *_ in self.specs:
            inputs.append(expected)
            expected = [y for x in expected for y in _oracle(kind, x)]
        self.expected = expected
        self.err: tuple[int, int, Boom] | None = None
        if rng.random() < 0.25 and n:
            where = rng.randint(0, len(self.specs))  # 0: the source
            if where == 0:
                self.err = (0, rng.randrange(n), Boom("source"))
            elif inputs[where - 1]:
                self.err = (where, rng.choice(inputs[where - 1]), Boom(f"stage {where}"))
        self.brk: int | None = None
        if self.err is None and rng.random() < 0.25 and expected:
            self.brk = rng.randrange(len(expected))
        self.exact = all(w == 1 or o for (_, _, w, _, o) in self.specs)
        self.loop_errors = LoopErrors()
        self.desc = {
            "seed": seed, "mode": mode, "specs": self.specs, "n": n,
            "src_async": self.src_async, "err": self.err and self.err[:2], "brk": self.brk,
        }  # fmt: skip

    def maybe_raise(self, idx: int, x: int) -> None:
        if self.err is not None and self.err[0] == idx and self.err[1] == x:
            raise self.err[2]

    def pause(self) -> None:
        if self.sleeps and self.jitter.random() < 0.3:
            time.sleep(self.jitter.random() * 0.001)

    async def apause(self) -> None:
        if self.sleeps and self.jitter.random() < 0.3:
            await asyncio.sleep(self.jitter.random() * 0.001)
        else:
            await asyncio.sleep(0)

    def stage(self, idx: int) -> Any:
        kind, asyncy, workers, throttle, ordered = self.specs[idx - 1]
        mine, up = self.flights[idx], self.flights[idx - 1]
        if kind == "map":
            if asyncy:

                async def amap(x: int) -> int:
                    up.consume()
                    await self.apause()
                    self.maybe_raise(idx, x)
                    mine.produce()
                    return x * 2 + 1

                return task(amap, workers=workers, throttle=throttle, ordered=ordered)

            def smap(x: int) -> int:
                up.consume()
                self.pause()
                self.maybe_raise(idx, x)
                mine.produce()
                return x * 2 + 1

            return task(smap, workers=workers, throttle=throttle, ordered=ordered)
        if kind in ("branch", "filt"):
            if asyncy:

                async def abranch(x: int) -> Any:
                    up.consume()
                    self.maybe_raise(idx, x)
                    for y in _oracle(kind, x):
                        await self.apause()
                        mine.produce()
                        yield y

                return task(abranch, workers=workers, throttle=throttle, ordered=ordered)

            def sbranch(x: int) -> Any:
                up.consume()
                self.maybe_raise(idx, x)
                for y in _oracle(kind, x):
                    self.pause()
                    mine.produce()
                    yield y

            return task(sbranch, workers=workers, throttle=throttle, ordered=ordered)
        if asyncy:

            async def ajoin(items: Any) -> Any:
                async for x in items:
                    up.consume()
                    await self.apause()
                    self.maybe_raise(idx, x)
                    mine.produce()
                    yield x

            return task(ajoin, workers=workers, throttle=throttle, join=True)

        def sjoin(items: Any) -> Any:
            for x in items:
                up.consume()
                self.pause()
                self.maybe_raise(idx, x)
                mine.produce()
                yield x

        return task(sjoin, workers=workers, throttle=throttle, join=True)

    def pipeline(self) -> Any:
        def src(n: int) -> Any:
            for i in range(n):
                self.maybe_raise(0, i)
                self.flights[0].produce()
                yield i

        async def asrc(n: int) -> Any:
            for i in range(n):
                self.maybe_raise(0, i)
                self.flights[0].produce()
                yield i

        p = task(asrc if self.src_async else src)
        for idx in range(1, len(self.specs) + 1):
            p = p | self.stage(idx)
        return p

    def run(self, leaks: Leaks) -> None:
        p = self.pipeline()
        out: list[int] = []
        raised: BaseException | None = None
        try:
            with time_limit(5):
                if isinstance(p, AsyncPipeline):
                    asyncio.run(self._consume_async(p, out))
                else:
                    gen = p(self.n)
                    for x in gen:
                        if self.brk is not None and len(out) == self.brk:
                            break
                        self.flights[-1].consume()
                        out.append(x)
                    gen.close()
        except Boom as e:
            raised = e
        self.check(out, raised)
        left = leaks.wait_quiet(1.0)
        assert not left, f"left running: {left}; {self.desc}"

    async def _consume_async(self, p: Any, out: list[int]) -> None:
        # as conftest.run_async, but the test collects garbage once, at its end (see below)
        asyncio.get_running_loop().set_exception_handler(self.loop_errors)
        gen = p(self.n)
        try:
            async for x in gen:
                if self.brk is not None and len(out) == self.brk:
                    break
                self.flights[-1].consume()
                out.append(x)
        finally:
            await gen.aclose()
        await wait_no_other_tasks(1.0)

    def check(self, out: list[int], raised: BaseException | None) -> None:
        desc, expected = self.desc, self.expected
        if self.err is not None:
            assert raised is self.err[2], f"raised {raised!r}, not the task's error; {desc}"
            return
        assert raised is None, f"unexpected {raised!r}; {desc}"
        if self.brk is not None:
            if self.exact:
                assert out == expected[: self.brk], desc
            else:
                assert len(out) == self.brk and set(out) <= set(expected), desc
            return
        if self.exact:
            assert out == expected, desc
        else:
            assert sorted(out) == sorted(expected), desc
        for i, (_, _, workers, throttle, _) in enumerate(self.specs):
            down = self.specs[i + 1][2] if i + 1 < len(self.specs) else 1  # the caller: 1
            bound = throttle + workers + down
            peak = self.flights[i + 1].peak
            assert not throttle or peak <= bound, (
                f"stage {i + 1}: {peak} in flight > {bound}; {desc}"
            )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["sync", "async", "mixed"])
def test_fuzz_random_pipelines_against_oracle(mode: str, leaks: Leaks) -> None:
    seeds = random.Random(f"pyper-fuzz-{mode}")
    trials = [_Trial(seeds.randrange(1 << 30), mode) for _ in range(FUZZ_TRIALS)]
    for trial in trials:
        trial.run(leaks)
    # Abandoned tasks report "never retrieved" when collected: once for all trials (a
    # gc.collect per trial, as run_async does, would double the test's time).
    gc.collect()
    for trial in trials:
        assert not trial.loop_errors.contexts, f"{trial.loop_errors.describe()}; {trial.desc}"


# --------------------------------------------------------------------------------------------
# Late errors were logged with tracebacks formatted in worker threads, while the main thread
# ran: CPython 3.11's traceback formatting parses each frame's line (ast.parse, for the
# carets), and the AST constructor's recursion counter is shared by all threads, so a parse
# in one thread could fail another thread's parse ("SystemError: AST constructor recursion
# depth mismatch"): an INTERNALERROR in a pytest session. pyper's gc callback runs Python
# code inside the parser's allocations, which lets threads switch there.


def _raises_deep(n: int) -> None:
    if n:
        _raises_deep(n - 1)
    raise ValueError(f"late {n}")


@pytest.mark.timeout(60)
def test_tracebacks_logged_from_worker_threads_never_break_a_parse_elsewhere() -> None:
    import ast
    import logging

    from pyper._engine._run import _log_error

    try:
        _raises_deep(5)
    except ValueError as caught:
        error = caught
    formatted: list[str] = []

    class Format(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            formatted.append(self.format(record))

    logger = logging.getLogger("pyper")
    handler = Format()
    logger.addHandler(handler)
    source = "\n".join(f"x{i} = [{', '.join(map(str, range(30)))}] + f(a[1][2], b={{'k': (1, 2)}})"
                       for i in range(40))
    failures: list[BaseException] = []
    done = threading.Event()

    def log_errors() -> None:
        for _ in range(100):
            _log_error("pyper: task %r raised after its pipeline had stopped", "t", exc_info=error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=log_errors) for _ in range(4)]
        for t in threads:
            t.start()
        def wait_for_them() -> None:
            for t in threads:
                t.join()
            done.set()

        waiter = threading.Thread(target=wait_for_them)
        waiter.start()
        while not done.is_set():
            try:
                ast.parse(source)  # what pytest does in the main thread to show a failure
            except SystemError as exc:
                failures.append(exc)
        waiter.join()
    finally:
        sys.setswitchinterval(interval)
        logger.removeHandler(handler)
    assert not failures, f"{len(failures)} parses failed in the main thread: {failures[0]!r}"
    assert len(formatted) == 400
    assert all("in _raises_deep" in text and "ValueError: late 0" in text for text in formatted), formatted[0]
