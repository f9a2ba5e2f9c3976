"""Shared fixtures and helpers for the black-box pyper test suite.

The autouse ``leaks`` fixture is our version of CPython's ``threading_helper.wait_threads_exit``
plus ``multiprocessing.active_children()``: it snapshots threads and child processes before a
test and, afterwards, waits (polling every 10 ms, up to 2 s) until every thread the test started
has exited or is parked, idle, in the engine's reuse cache (``pyper._engine._threads.idle_threads``),
and every child process it started is gone.  Then it fails naming what is left.  Threads are
checked by state, never by name.

Tests import the helpers below with ``from conftest import ...``.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

#: test_cloudpickle.py needs the optional cloudpickle, which makes the original's lambda test
#: fail: tests/run.sh installs it last and sets PYPER_WITH_CLOUDPICKLE=1 to run that file.
collect_ignore = [] if os.environ.get("PYPER_WITH_CLOUDPICKLE") else ["test_cloudpickle.py"]
#: test_ray.py needs the optional ray (about 250 MB): tests/run.sh installs it and sets
#: PYPER_WITH_RAY=1 to run that file, with one local cluster for all its tests.
if not os.environ.get("PYPER_WITH_RAY"):
    collect_ignore.append("test_ray.py")
#: PYPER_WITH_POSTGRES=1 (tests/run.sh sets it, after installing the postgres extra and,
#: where it can, Debian's postgresql): the exactly-once sink against a real server.
if not os.environ.get("PYPER_WITH_POSTGRES"):
    collect_ignore.append("test_postgres.py")
#: PYPER_WITH_DOCS=1 (tests/run.sh sets it, after installing the docs extra): build the site
#: strictly and look at it in a headless Chromium.
if not os.environ.get("PYPER_WITH_DOCS"):
    collect_ignore.append("test_site.py")

#: Grace period the leak fixture gives in-flight work to finish after a test.
LEAK_GRACE_S = 2.0
POLL_S = 0.01


def pytest_configure(config: pytest.Config) -> None:
    # A runner that started the suite in the background (`cmd &` in a script, nohup) hands
    # it SIGINT ignored, and every program a test starts inherits that through exec: the
    # Ctrl-C tests would test the runner. Python's own default, as in a terminal.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # PYPER_SWITCH_INTERVAL=1e-6 (tests/run.sh sets it for the concurrency tests): threads
    # switch every microsecond instead of every 5 ms, to shake out interleavings that the GIL's
    # usual switching rarely produces. Tests only: the library never changes it.
    interval = os.environ.get("PYPER_SWITCH_INTERVAL")
    if interval:
        sys.setswitchinterval(float(interval))
    # PYPER_NO_GIL_CLAIMS=1: share work as in a free-threaded build, where no GIL makes a
    # list iterator's next() atomic: a claim siblings may advance is a deque-backed Claim.
    if os.environ.get("PYPER_NO_GIL_CLAIMS"):
        import pyper._channel._sharing

        pyper._channel._sharing.PLAIN_CLAIMS = False
    # keep hypothesis' files (example database, patches for failing examples) out of the repo
    try:
        from hypothesis.configuration import set_hypothesis_home_dir
    except ImportError:  # pragma: no cover
        pass
    else:
        set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "pyper-tests-hypothesis"))
    # hypothesis imports libcst to write patches for failing examples, and libcst touches the
    # deprecated mypy_extensions.TypedDict: under filterwarnings=error that turned a failing
    # property test into an INTERNALERROR that aborted the session.
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
    )


def engine_idle_threads() -> frozenset[threading.Thread]:
    """Threads the engine reports as idle, parked for reuse (empty if it reports none)."""
    try:
        from pyper._engine._threads import idle_threads
    except ImportError:  # engine not built yet: then every new thread must exit
        return frozenset()
    idle = idle_threads()
    workers = sys.modules.get("pyper._engine._workers")  # the starter of spawned workers lives
    starter = workers.starter_thread() if workers is not None else None  # as long as the program
    return idle | {starter} if starter is not None else idle


def live_resources() -> list[str]:
    """The tasks whose ``setup=`` resources (in this process) were made and not exited."""
    module = sys.modules.get("pyper._policy")
    return module.live_resources() if module is not None else []


def engine_idle_processes() -> list[Any]:
    """Worker processes the engine keeps warm for reuse (none before a process stage ran)."""
    module = sys.modules.get("pyper._engine._workers")
    return module.idle_processes() if module is not None else []


class Leaks:
    """Threads and child processes alive before a test; what is new and busy after it."""

    def __init__(self) -> None:
        # engine threads parked idle by an earlier test may be reused by this one: watch them too
        self.engine_before = engine_idle_threads()
        self.threads_before = set(threading.enumerate())
        self.procs_before = set(multiprocessing.active_children())
        self.fds_before = open_fds()
        self.ignored_fd_targets: tuple[str, ...] = ()

    def ignore_fds(self, *prefixes: str) -> None:
        """Descriptors pointing to what starts with these are not this test's leaks."""
        self.ignored_fd_targets += prefixes

    def new_threads(self) -> list[threading.Thread]:
        """Threads started since the snapshot that are still alive (idle or not)."""
        return [t for t in threading.enumerate() if t not in self.threads_before and t.is_alive()]

    def engine_threads(self) -> list[threading.Thread]:
        """New threads plus engine threads that were idle at the snapshot, still alive."""
        return [
            t
            for t in threading.enumerate()
            if (t not in self.threads_before or t in self.engine_before) and t.is_alive()
        ]

    def busy_threads(self) -> list[threading.Thread]:
        """Threads of this test (see engine_threads) alive and not parked idle for reuse."""
        idle = engine_idle_threads()
        return [t for t in self.engine_threads() if t not in idle]

    def new_fds(self) -> list[str]:
        """File descriptors opened since the snapshot and still open, with what they point to
        (but those of multiprocessing's own long-lived helpers: the fork server and the
        resource tracker, started once per program by the first process stage)."""
        helpers = multiprocessing_helper_fds()
        module = sys.modules.get("pyper._engine._workers")
        if module is not None:  # the pipes of worker processes kept warm for reuse
            helpers |= module.idle_fds()
        return [
            f"fd {fd} -> {target}"
            for fd, target in sorted(open_fds().items())
            if self.fds_before.get(fd) != target and fd not in helpers
            and not target.startswith(self.ignored_fd_targets or ("\0",))
        ]

    def new_procs(self) -> list[multiprocessing.process.BaseProcess]:
        """Child processes started since the snapshot and still alive, but those the engine
        keeps warm for reuse (idle; they exit with the program)."""
        warm = set(engine_idle_processes())
        return [p for p in multiprocessing.active_children() if p not in self.procs_before and p not in warm]

    def wait_quiet(self, timeout: float = LEAK_GRACE_S) -> list[Any]:
        """Wait until no new busy thread, child process nor file descriptor is left; return the
        leftovers."""
        deadline = time.monotonic() + timeout
        while True:
            left: list[Any] = [*self.busy_threads(), *self.new_procs(), *self.new_fds()]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(POLL_S)

    def wait_no_new_threads(self, timeout: float) -> list[threading.Thread]:
        """Wait until every thread of this test, idle ones included, has exited; return the
        leftovers."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.engine_threads()
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(POLL_S)


def multiprocessing_helper_fds() -> set[int]:
    fds: set[int] = set()
    try:
        from multiprocessing import forkserver, resource_tracker
    except ImportError:  # pragma: no cover
        return fds
    for fd in (
        getattr(forkserver._forkserver, "_forkserver_alive_fd", None),
        getattr(resource_tracker._resource_tracker, "_fd", None),
    ):
        if isinstance(fd, int):
            fds.add(fd)
    return fds


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what each points to (Linux: /proc/self/fd)."""
    fds: dict[int, str] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # not Linux: nothing to compare
        return fds
    for name in names:
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the descriptor listdir itself used, closed already
            pass
    return fds


def describe(objs: list[Any]) -> str:
    parts = []
    for o in objs:
        if isinstance(o, str):
            parts.append(o)
        elif isinstance(o, threading.Thread):
            parts.append(f"thread {o.name!r} (daemon={o.daemon}, {type(o).__name__})")
        else:
            parts.append(f"process {o!r}")
    return ", ".join(parts)


@pytest.fixture(autouse=True)
def leaks() -> Iterator[Leaks]:
    """Fail a test that leaves a busy thread, a child process, an open file descriptor or a
    changed signal handler behind."""
    sigint_before = signal.getsignal(signal.SIGINT)
    checker = Leaks()
    yield checker
    gc.collect()  # abandoned generators get finalized now, as they would be eventually
    left = checker.wait_quiet(LEAK_GRACE_S)
    problems = []
    if left:
        problems.append(f"left behind after {LEAK_GRACE_S} s: {describe(left)}")
    live = live_resources()
    if live:
        problems.append(f"setup= resources not exited, of tasks {live}")
    if signal.getsignal(signal.SIGINT) is not sigint_before:
        problems.append(f"SIGINT handler changed: {signal.getsignal(signal.SIGINT)!r}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


# --------------------------------------------------------------------------------------------
# Running async code


class LoopErrors:
    """Everything the event loop's exception handler was asked to report."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)

    def describe(self) -> str:
        return "; ".join(f"{c.get('message')!r}: {c.get('exception')!r}" for c in self.contexts)


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """``asyncio.run(coro)`` with a deadline, failing on anything sent to the loop's exception
    handler (for instance "Task exception was never retrieved", also after the loop closed)."""
    errors = LoopErrors()

    async def main() -> T:
        asyncio.get_running_loop().set_exception_handler(errors)
        async with asyncio.timeout(timeout):
            return await coro

    try:
        return asyncio.run(main())
    finally:
        gc.collect()  # abandoned tasks report "never retrieved" when collected
        assert not errors.contexts, f"event loop exception handler called: {errors.describe()}"


async def other_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


async def wait_no_other_tasks(timeout: float = 0.5, allowed: set[Any] | None = None) -> None:
    """Wait until this loop runs no task but the current one (and ``allowed``); else fail."""
    allowed = allowed or set()
    deadline = time.monotonic() + timeout
    while True:
        left = await other_tasks() - allowed
        if not left:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"tasks still running after {timeout} s: {left!r}")
        await asyncio.sleep(POLL_S)


async def acollect(agen: AsyncIterable[T]) -> list[T]:
    return [x async for x in agen]


def collect(pipeline: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """Run a Pipeline or AsyncPipeline to completion and return its outputs."""
    from pyper import AsyncPipeline

    if isinstance(pipeline, AsyncPipeline):
        return run_async(acollect(pipeline(*args, **kwargs)))
    return list(pipeline(*args, **kwargs))


class AsyncCall:
    """An async function that calls ``func``: the same test body on the async executor
    (the task keeps ``func``'s name)."""

    def __init__(self, func: Any) -> None:
        self.func = func
        self.__qualname__ = func.__qualname__
        self.__name__ = func.__name__

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return self.func(*args, **kwargs)


def on(executor: str, func: Any, **options: Any) -> Any:
    """``task(func, **options)`` running on ``executor``: "thread", "async" or "process"."""
    from pyper import task

    if executor == "async":
        return task(AsyncCall(func), **options)
    return task(func, multiprocess=executor == "process", **options)


def killed_and_restarted(command: list[str], seed: int, kills: int = 20, interrupts: int = 5) -> dict[int, int]:
    """Run ``command`` (a job that prints "finished" at its end) again and again, each time
    stopped at a random instant by the next of ``kills`` SIGKILLs and ``interrupts`` SIGINTs
    (Ctrl-C) in a random order, until one run finishes; the signals sent, by number.

    A Ctrl-C that lands while CPython runs a weakref callback or a finalizer is printed as
    "Exception ignored" and dropped, by CPython, not by the job: as a user would, the Ctrl-C
    is pressed again if the job is still running 3 s later (and then it is killed)."""
    import random
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(seed)
    plan = [signal.SIGKILL] * kills + [signal.SIGINT] * interrupts
    rng.shuffle(plan)
    sent = {signal.SIGKILL: 0, signal.SIGINT: 0}
    for _ in range(3 * len(plan) + 5):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        if plan:
            time.sleep(rng.uniform(0.15, 0.6))
            if proc.poll() is None:
                sig = plan.pop()
                proc.send_signal(sig)
                sent[sig] += 1
                if sig == signal.SIGINT:
                    for again in (signal.SIGINT, signal.SIGKILL):
                        try:
                            proc.wait(timeout=3)
                            break
                        except subprocess.TimeoutExpired:
                            proc.send_signal(again)
        stdout, stderr = proc.communicate(timeout=120)
        if b"finished" in stdout:
            return sent
        assert proc.returncode in (-signal.SIGKILL, 1, -signal.SIGINT), stderr.decode()
        if proc.returncode != -signal.SIGKILL:
            assert b"KeyboardInterrupt" in stderr, stderr.decode()
    pytest.fail("the job never finished")


# --------------------------------------------------------------------------------------------
# Time


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.stop: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.stop if self.stop is not None else time.monotonic()) - self.start


@contextmanager
def elapsed() -> Iterator[Stopwatch]:
    """``with elapsed() as t: ...`` then ``t.elapsed`` is the wall time of the block."""
    sw = Stopwatch()
    try:
        yield sw
    finally:
        sw.stop = time.monotonic()


def wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    """Poll ``pred`` every 10 ms for up to ``timeout`` seconds; return its last value."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            return pred()
        time.sleep(POLL_S)
    return True


async def await_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            return pred()
        await asyncio.sleep(POLL_S)
    return True


class TimeLimitExceeded(Exception):
    """Raised in the main thread by ``time_limit``, wherever it is waiting."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the main thread with TimeLimitExceeded after ``seconds`` (SIGALRM, as Ctrl-C
    would: the engine must cope).  Restores pytest-timeout's alarm handler afterwards."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeLimitExceeded(f"took longer than {seconds} s (hang?)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    old_timer = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if old_timer[0]:  # re-arm pytest-timeout's alarm with what is left of it
            left = old_timer[0] - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


async def maybe_await(x: Awaitable[T] | T) -> T:
    if isinstance(x, Awaitable):
        return await x  # type: ignore[no-any-return]
    return x


class InFlight:
    """Outputs of one task that exist but were not yet handed to a downstream call: the
    quantity a throttle bounds.  ``produce`` when an output is made, ``consume`` when a
    downstream call (or the caller's loop body) receives one.  Records the peak."""


    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.produced = 0
        self.consumed = 0
        self.peak = 0

    def produce(self) -> None:
        with self.lock:
            self.produced += 1
            self.peak = max(self.peak, self.produced - self.consumed)

    def consume(self) -> None:
        with self.lock:
            self.consumed += 1


# --------------------------------------------------------------------------------------------
# The same function, sync or async (the semantics and bounds tests build pipelines of
# them; "mixed" alternates by position)


def make_map(fn: Callable[[Any], Any], asyncy: bool) -> Callable[[Any], Any]:
    if asyncy:

        async def amap(x: Any) -> Any:
            await asyncio.sleep(0)
            return fn(x)

        return amap

    def smap(x: Any) -> Any:
        return fn(x)

    return smap


def make_branch(fn: Callable[[Any], list[Any]], asyncy: bool) -> Callable[[Any], Any]:
    if asyncy:

        async def agen(x: Any) -> Any:
            for y in fn(x):
                await asyncio.sleep(0)
                yield y

        return agen

    def sgen(x: Any) -> Any:
        yield from fn(x)

    return sgen


def make_source(asyncy: bool) -> Callable[[int], Any]:
    if asyncy:

        async def asource(n: int) -> Any:
            for i in range(n):
                yield i

        return asource

    def source(n: int) -> Any:
        yield from range(n)

    return source


def is_async(mode: str, position: int) -> bool:
    return mode == "async" or (mode == "mixed" and position % 2 == 1)
