"""The per-call options of a task: ``setup=``, ``retries=`` (with ``retry_on=`` and
``backoff=``), ``on_error=`` (with ``max_failures=`` and ``dead_letters=``), ``unpack=``,
``rate=``, ``batch=``, ``timeout=``; validated here, once, at ``task(...)`` time.

The engine applies them per worker (``_engine/_async_calls.py`` and its generated sync
twin): a task that sets none of them runs exactly as before, with nothing added to its
per-item path. This module is light on imports: worker processes load it too.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
from collections.abc import Callable
from types import FunctionType, MethodType
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from ._spec import Kind, Policy, classify, no_policy

__all__ = [
    "DROPPED", "MAX_BACKOFF", "OPTIONS", "Abandoned", "Budget", "Context", "Emit", "Limiter", "OnError", "Option",
    "Rate",
    "check_policy", "delay", "forget", "live_resources", "remember", "where",
]

_V = TypeVar("_V")

#: The longest wait between two attempts that a numeric ``backoff`` grows to, in seconds.
MAX_BACKOFF = 30.0


#: What a guarded call (``on_error=``) of a mapping task returns for an item it drops
#: (the engine's map loop hands on nothing for it: ``_run.dropping``).
DROPPED: Any = type("Dropped", (), {"__repr__": lambda self: "DROPPED", "__slots__": ()})()


class Emit(Generic[_V]):
    """Returned by an ``on_error`` handler: emit ``value`` in place of the failed item's
    output (the handler's other return values drop the item).

        def fallback(item, exc):
            return pyper.Emit({"id": item, "error": str(exc)})

        task(fetch, on_error=fallback)
    """

    __slots__ = ("value",)

    def __init__(self, value: _V) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Emit({self.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Emit) and other.value == self.value

    def __reduce__(self) -> tuple[Any, ...]:
        return Emit, (self.value,)


class Rate:
    """``rate=Rate(100, per=60, burst=10)``: at most ``calls`` calls of the task start per
    ``per`` seconds, across all its workers, spaced evenly; up to ``burst`` may start at
    once after a quiet spell. ``rate=10`` is ``Rate(10)``: ten calls a second, one at a time.
    """

    __slots__ = ("calls", "per", "burst")

    def __init__(self, calls: float, per: float = 1.0, burst: int = 1) -> None:
        for what, value in (("calls", calls), ("per", per)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Rate: {what} must be a number > 0, got {value!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"Rate: burst must be an int >= 1, got {burst!r}")
        self.calls, self.per, self.burst = calls, per, burst

    def __repr__(self) -> str:
        return f"Rate({self.calls!r}, per={self.per!r}, burst={self.burst!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rate) and (other.calls, other.per, other.burst) == (self.calls, self.per, self.burst)

    def __hash__(self) -> int:
        return hash((self.calls, self.per, self.burst))


class Budget:
    """``max_failures=Budget(count=100, fraction=0.01, after=1000)``: how many of a task's
    items may fail in a run (skipped by ``on_error="skip"`` or handed to a handler) before
    the run stops with ``pyper.TooManyFailures``: at most ``count``, and at most
    ``fraction`` of the items the task has taken so far, judged once it has taken
    ``after``. ``max_failures=100`` is ``Budget(count=100)``, ``max_failures=0.01``
    ``Budget(fraction=0.01)``."""

    __slots__ = ("count", "fraction", "after")

    def __init__(self, count: int | None = None, fraction: float | None = None, after: int = 100) -> None:
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise ValueError(f"Budget: count must be an int >= 0 (the failures allowed), got {count!r}")
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0 <= fraction < 1):
            raise ValueError(f"Budget: fraction must be a number >= 0 and < 1 (the share of the items "
                             f"taken that may fail), got {fraction!r}")
        if isinstance(after, bool) or not isinstance(after, int) or after < 1:
            raise ValueError(f"Budget: after must be an int >= 1 (the items taken before a fraction "
                             f"is judged), got {after!r}")
        if count is None and fraction is None:
            raise ValueError("Budget: give count=, fraction= or both")
        self.count, self.fraction, self.after = count, fraction, after

    def exceeded(self, failed: int, seen: int) -> bool:
        """Whether ``failed`` of ``seen`` items taken is past the budget."""
        if self.count is not None and failed > self.count:
            return True
        return self.fraction is not None and seen >= self.after and failed > self.fraction * seen

    def __repr__(self) -> str:
        given = [f"{k}={v!r}" for k, v in (("count", self.count), ("fraction", self.fraction)) if v is not None]
        if self.fraction is not None:
            given.append(f"after={self.after!r}")
        return f"Budget({', '.join(given)})"

    def __str__(self) -> str:
        if self.fraction is None:
            return str(self.count)
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Budget) and (other.count, other.fraction, other.after) == (
            self.count, self.fraction, self.after)

    def __hash__(self) -> int:
        return hash((self.count, self.fraction, self.after))


class Abandoned:
    """The abandoned calls of one task (``timeout=`` on threads) still running, over all
    its runs (guarded by ``_cond``), counted as each is abandoned (``add``) and until its
    call returns (``ended``): a worker whose call was abandoned goes on only while at most
    ``limit`` of them run (``wait``; or once its run is cancelled)."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._limit = limit

    def add(self) -> None:
        """Count one more abandoned call, as it is abandoned (never waits: the watchdog's)."""
        with self._cond:
            self._running += 1

    def wait(self, run: Any) -> None:
        """Wait while more than ``limit`` abandoned calls run (the worker that abandoned the
        last one, before it goes on); the run's cancellation ends the wait (its hook)."""
        run.on_cancel(self._wake)
        try:
            with self._cond:
                while self._running > self._limit and not run.cancelled:
                    self._cond.wait()
        finally:
            run.off_cancel(self._wake)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("the abandoned-call count is the parent's: not sent to worker processes")

    def ended(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()  # (each waiter checks the count again: one end may free several)


#: A worker takes at most this many turns of a rate at once, spanning at most
#: BLOCK_SECONDS of it (``Limiter.block``): calls may start that much ahead of their turns.
BLOCK_CALLS = 64
BLOCK_SECONDS = 1e-3


class Limiter:
    """When a task's calls may start under its ``Rate``, decided as each call starts.

    One per task (shared by every run of it, and every worker: the limit is the API's,
    not one run's). This is GCRA (the "virtual scheduling" form of a leaky bucket) over
    the times calls actually start: a call may start once ``now >= tat - tolerance``, and
    its start moves ``tat`` to ``max(tat, now) + interval``. A caller that may not start
    yet joins the line (``reserve``), sleeps as it can be woken (a thread's cancellable
    sleep, ``asyncio.sleep``) until its estimated turn, and asks again (``start``). No
    slot is handed out ahead of time: after a stall (a blocked event loop, a GC pause, a
    loaded machine) the waiters that overslept do not all start at once; the first one
    starts and the others keep their spacing from it.

    Who owns what: ``_tat`` and ``_waiting`` are guarded by ``_lock``, held for a few
    operations only, by any thread. Invariant: ``_waiting`` counts the callers that
    ``reserve`` put in line and that have neither started (``start``) nor left
    (``give_back``).
    """

    def __init__(self, rate: Rate) -> None:
        self.interval = rate.per / rate.calls
        self.tolerance = (rate.burst - 1) * self.interval
        # How many turns a worker takes at once when none is in line (``reserve(block)``):
        # as many as fit in BLOCK_SECONDS of the rate, so that a rate far above what the
        # calls reach costs one lock per block, not per call; 1 (every call asks) at or
        # below 1 / BLOCK_SECONDS calls a second.
        self.block = max(1, min(BLOCK_CALLS, int(BLOCK_SECONDS / self.interval + 1e-9)))
        self._lock = threading.Lock()
        self._tat = 0.0  # theoretical start of the next call, from the calls started (monotonic clock)
        self._waiting = 0  # callers in line

    def reserve(self, n: int = 1) -> float | None:
        """Ask to start a call: None if it may start now (it counts as started, with the
        ``n - 1`` turns after it, which the caller's next calls take without asking:
        ``n`` is 1 or ``block``); else the caller is in line and should sleep this many
        seconds, then ask ``start(n)``."""
        with self._lock:
            now = time.monotonic()
            if not self._waiting and now >= self._tat - self.tolerance:
                self._tat = max(self._tat, now) + n * self.interval
                return None
            self._waiting += 1
            # its turn if those ahead of it start on theirs (an estimate: ``start`` decides)
            return max(0.0, self._tat + (self._waiting - 1) * n * self.interval - self.tolerance - now)

    def start(self, n: int = 1) -> float | None:
        """A caller in line woke up: None if its call may start now (it leaves the line and
        counts as started, with ``n - 1`` turns after it, as in ``reserve``); else the
        seconds to sleep before asking again."""
        with self._lock:
            now = time.monotonic()
            wait = self._tat - self.tolerance - now
            if wait > 0:
                return wait
            self._tat = max(self._tat, now) + n * self.interval
            self._waiting -= 1
            return None

    def give_back(self) -> None:
        """A caller in line stopped waiting (the run stopped): it leaves the line, and its
        call, never made, counts for nothing (the next run does not wait for it)."""
        with self._lock:
            self._waiting -= 1

    def wait_turn(self, sleep: Callable[[float], None]) -> None:
        """Wait, with ``sleep``, until a call may start (a relay pacing a remote worker's
        calls); a wait cut short (the run stopped) leaves the line."""
        seconds = self.reserve()
        if seconds is None:
            return
        try:
            while seconds is not None:
                sleep(seconds)
                seconds = self.start()
        except BaseException:
            self.give_back()
            raise

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a rate limiter is not sent to worker processes: the parent paces them")


#: What ``on_error=`` takes: ``"raise"``, ``"skip"``, or a handler ``(item, exception)``.
OnError = Literal["raise", "skip"] | Callable[[Any, Exception], Any]


# Resources made by ``setup=`` in this process and not yet exited, by token: what a test
# checks is empty once a run is over (worker processes' resources end with the process).
# Guarded by _live_lock; touched once per worker, never per item.
_live_lock = threading.Lock()
_live: dict[int, str] = {}
_tokens = itertools.count()


def remember(task_name: str) -> int:
    with _live_lock:
        token = next(_tokens)
        _live[token] = task_name
    return token


def forget(token: int) -> None:
    with _live_lock:
        _live.pop(token, None)


def live_resources() -> list[str]:
    """The tasks whose setup resources in this process are made and not yet exited."""
    with _live_lock:
        return list(_live.values())


def delay(backoff: float | Callable[[int], float], attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    A number is the first wait, doubled at each further retry up to ``MAX_BACKOFF``, each
    wait drawn between half and all of that ("equal jitter": retries of many workers
    spread out instead of arriving together). A callable is given the attempt number and
    returns the wait as it is.
    """
    if callable(backoff):
        return max(0.0, float(backoff(attempt)))
    if backoff <= 0:
        return 0.0
    ceiling: float = min(MAX_BACKOFF, backoff * 2.0 ** (attempt - 1))
    import random  # (the first retry's: a program that never retries never loads it)

    return ceiling * random.uniform(0.5, 1.0)


def _makes_a_manager(setup: object) -> bool:
    """Whether an async generator function found under ``setup``'s ``__wrapped__`` is
    wrapped by a plain function, which ``setup`` calls: ``@asynccontextmanager`` (its
    call returns an async context manager, not an async generator)."""
    for _ in range(100):  # the callable itself: through partials and bound methods only
        if isinstance(setup, functools.partial):
            setup = setup.func
        elif isinstance(setup, MethodType):
            setup = setup.__func__
        else:
            break
    return isinstance(setup, FunctionType) and not setup.__code__.co_flags & _CO_ASYNC_GENERATOR


#: ``inspect.CO_ASYNC_GENERATOR`` (not importing ``inspect`` into every worker process).
_CO_ASYNC_GENERATOR = 0x200


class Context(NamedTuple):
    """What an option's check knows of the task besides the option's value."""

    name: str
    kind: Kind
    join: bool
    pipeline: bool
    is_gen: bool
    workers: int  # the most workers the task may run


def _check_setup(setup: object, c: Context) -> dict[str, Any]:
    if setup is None:
        return {}
    name, kind = c.name, c.kind
    if not callable(setup):
        raise TypeError(f"task {name!r}: setup must be a function of no arguments that makes "
                        f"the worker's resource, got {setup!r}")
    if c.pipeline:
        raise ValueError(f"task {name!r}: setup= applies to a function; give it to a task "
                         "inside the nested pipeline instead")
    setup_kind, _ = classify(setup)
    if setup_kind == "agen":
        if not _makes_a_manager(setup):
            raise TypeError(f"task {name!r}: setup must return the resource (or a context manager "
                            "that gives it), not be an async generator: decorate it with "
                            "@contextlib.asynccontextmanager")
        if kind == "sync":
            raise TypeError(
                f"task {name!r}: setup makes an async context manager (@asynccontextmanager), "
                "but the task's function is synchronous and runs in a thread or process: give "
                "it a synchronous setup (@contextlib.contextmanager), or make the task's "
                "function async"
            )
        setup_kind = "sync"  # its call returns the manager, entered per worker: nothing to await
    if setup_kind == "coro" and kind == "sync":
        raise TypeError(
            f"task {name!r}: setup is an async function, but the task's function is "
            "synchronous and runs in a thread or process: give it a synchronous setup, "
            "or make the task's function async"
        )
    return {"setup": setup, "setup_async": setup_kind == "coro"}


def _check_retries(retries: object, c: Context) -> dict[str, Any]:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise TypeError(f"task {c.name!r}: retries must be an int >= 0 (the retries after the "
                        f"first attempt), got {retries!r}")
    return {"retries": retries}


def _check_retry_on(retry_on: object, c: Context) -> dict[str, Any]:
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if not (isinstance(retry_on, tuple) and retry_on
            and all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on)):
        raise TypeError(f"task {c.name!r}: retry_on must be an exception type or a tuple of them, "
                        f"got {retry_on!r}")
    return {"retry_on": retry_on}


def _check_backoff(backoff: object, c: Context) -> dict[str, Any]:
    if not callable(backoff) and (isinstance(backoff, bool) or not isinstance(backoff, (int, float))
                                  or backoff < 0):
        raise TypeError(f"task {c.name!r}: backoff must be a number of seconds >= 0 (the first "
                        f"wait, doubled at each retry) or a function of the attempt, got {backoff!r}")
    return {"backoff": backoff}


def _check_on_error(on_error: object, c: Context) -> dict[str, Any]:
    if not (on_error in ("raise", "skip") or callable(on_error)):
        raise ValueError(f"task {c.name!r}: on_error must be 'raise', 'skip' or a function "
                         f"(item, exception), got {on_error!r}")
    if callable(on_error) and c.kind == "sync" and classify(on_error)[0] != "sync":
        raise TypeError(f"task {c.name!r}: on_error is an async function, but the task's function "
                        "is synchronous and runs in a thread or process: give it a synchronous "
                        "handler")
    return {"on_error": on_error}


def _check_unpack(unpack: object, c: Context) -> dict[str, Any]:
    if not isinstance(unpack, bool):
        raise TypeError(f"task {c.name!r}: unpack must be True or False, got {unpack!r}")
    return {"unpack": unpack}


def _check_rate(rate: object, c: Context) -> dict[str, Any]:
    if rate is None:
        return {}
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        if not rate > 0:
            raise ValueError(f"task {c.name!r}: rate must be > 0 calls per second, got {rate!r}")
        rate = Rate(rate)
    if not isinstance(rate, Rate):
        raise TypeError(f"task {c.name!r}: rate must be calls per second (a number) or "
                        f"pyper.Rate(calls, per=seconds, burst=n), got {rate!r}")
    if c.join:
        raise ValueError(f"task {c.name!r}: rate= paces each item's call, and a join task makes "
                         "one call over the whole stream: drop one of them")
    return {"limiter": Limiter(rate)}


def _check_batch(batch: object, c: Context) -> dict[str, Any]:
    if batch is None:
        return {}
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise TypeError(f"task {c.name!r}: batch must be an int >= 1 (the most items per call), "
                        f"got {batch!r}")
    if c.join:
        raise ValueError(f"task {c.name!r}: batch= and join=True both change what the function "
                         "receives: a join function can gather its stream itself")
    return {"batch": batch}


def _check_linger(linger: object, c: Context) -> dict[str, Any]:
    if linger is None:
        return {}
    if isinstance(linger, bool) or not isinstance(linger, (int, float)) or linger < 0:
        raise TypeError(f"task {c.name!r}: linger must be a number of seconds >= 0, got {linger!r}")
    return {"linger": float(linger)}


#: The longest ``timeout=``: a year (an infinite one, or one past what a thread's wait
#: takes, ``threading.TIMEOUT_MAX``, is no timeout: leave it out).
MAX_TIMEOUT = 365 * 24 * 3600.0


def _check_timeout(timeout: object, c: Context) -> dict[str, Any]:
    if timeout is None:
        return {}
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise TypeError(f"task {c.name!r}: timeout must be a number of seconds > 0 and at most "
                        f"{MAX_TIMEOUT:g} (a year), got {timeout!r}; leave it out for no timeout")
    if c.join or c.is_gen or c.pipeline:
        what = "a join task's one call reads the whole stream" if c.join else (
            "a generator's call returns at once and its work happens as it is iterated"
            if c.is_gen else "a nested pipeline streams its outputs")
        raise ValueError(f"task {c.name!r}: timeout= bounds one call, but {what}: put the "
                         "timeout inside the function instead")
    return {"timeout": float(timeout), "abandoned": Abandoned(c.workers)}


def _check_max_failures(max_failures: object, c: Context) -> dict[str, Any]:
    if max_failures is None:
        return {}
    if isinstance(max_failures, Budget):
        return {"max_failures": max_failures}
    if isinstance(max_failures, bool) or not isinstance(max_failures, (int, float)):
        raise TypeError(f"task {c.name!r}: max_failures must be an int (the failed items allowed), "
                        f"a float below 1 (their share of the items taken) or a pyper.Budget, "
                        f"got {max_failures!r}")
    try:
        budget = Budget(count=max_failures) if isinstance(max_failures, int) else Budget(fraction=max_failures)
    except ValueError as exc:
        raise ValueError(f"task {c.name!r}: max_failures: {exc}") from None
    return {"max_failures": budget}


def _check_dead_letters(dead_letters: object, c: Context) -> dict[str, Any]:
    if dead_letters is None:
        return {}
    if isinstance(dead_letters, (str, os.PathLike)):
        return {"dead_letters": os.fspath(dead_letters)}
    if not callable(dead_letters):
        raise TypeError(f"task {c.name!r}: dead_letters must be a file path (JSON lines are "
                        f"appended to it) or a function called with each pyper.DeadLetter, "
                        f"got {dead_letters!r}")
    if classify(dead_letters)[0] != "sync":
        raise TypeError(f"task {c.name!r}: dead_letters must be a plain function (it is called "
                        "as each item is skipped, in the worker), not an async one")
    return {"dead_letters": dead_letters}


def _check_journal(journal: object, c: Context) -> dict[str, Any]:
    if journal is None:
        return {}
    from ._journal import Journal  # (only a journaled task loads it)

    if isinstance(journal, (str, os.PathLike)):
        journal = Journal(journal)
    if not isinstance(journal, Journal):
        raise TypeError(f"task {c.name!r}: journal must be a file path or a pyper.Journal, got {journal!r}")
    if c.join:
        raise ValueError(f"task {c.name!r}: journal= keys the first task's outputs, and a join task "
                         "is never first: put journal= on the first task")
    return {"journal": journal}


class Option(NamedTuple):
    """One per-call option of ``task()``: its default (``task()``'s signature and the type
    stubs are held equal to it by a test), its check (its value in, the ``Policy`` fields
    it sets out: a clear error naming the task otherwise), the ``Policy`` fields it sets, and
    where its work runs when the calls run elsewhere (a worker process, Ray, an executor of
    the user's): ``"call"`` beside the call, on the remote side; ``"relay"`` in the
    caller's process, in the stage's relay; ``"run"``: the run adds a stage in front of the
    task for it. On threads and asyncio every option runs in the worker."""

    default: Any
    check: Callable[[Any, Context], dict[str, Any]]
    fields: tuple[str, ...]
    runs: Literal["call", "relay", "run"]


#: Every per-call option, by name. Adding one is a row here (and its check above), a
#: ``Policy`` field, and what applies it (``_engine/_async_calls.open_call``, or the run);
#: ``task()``'s signature and ``_typing._Options`` are held equal to this by a test.
OPTIONS: dict[str, Option] = {
    "setup": Option(None, _check_setup, ("setup", "setup_async"), "call"),
    "retries": Option(0, _check_retries, ("retries",), "call"),
    "retry_on": Option(Exception, _check_retry_on, ("retry_on",), "call"),
    "backoff": Option(0.1, _check_backoff, ("backoff",), "call"),
    "on_error": Option("raise", _check_on_error, ("on_error",), "relay"),
    "unpack": Option(False, _check_unpack, ("unpack",), "call"),
    "rate": Option(None, _check_rate, ("limiter",), "relay"),
    "batch": Option(None, _check_batch, ("batch",), "run"),
    "linger": Option(None, _check_linger, ("linger",), "run"),
    "timeout": Option(None, _check_timeout, ("timeout", "abandoned"), "relay"),
    "max_failures": Option(None, _check_max_failures, ("max_failures",), "relay"),
    "dead_letters": Option(None, _check_dead_letters, ("dead_letters",), "relay"),
    "journal": Option(None, _check_journal, ("journal",), "run"),
}


def check_policy(
    name: str, kind: Kind, *, join: bool, pipeline: bool, is_gen: bool = False, workers: int = 1,
    **options: object,
) -> Policy:
    """The validated per-call options (each by its row of ``OPTIONS``; those not given
    take their defaults), and the checks between them; a clear error naming the task and
    the fix otherwise."""
    context = Context(name, kind, join, pipeline, is_gen, workers)
    values = {option: options.get(option, row.default) for option, row in OPTIONS.items()}
    fields: dict[str, Any] = {}
    for option, row in OPTIONS.items():
        fields.update(row.check(values[option], context))
    retries, on_error, unpack = values["retries"], values["on_error"], values["unpack"]
    if join and (retries or on_error != "raise" or unpack):
        given = [o for o, v in (("retries", retries), ("on_error", on_error != "raise"),
                                ("unpack", unpack)) if v]
        raise ValueError(
            f"task {name!r}: {', '.join(given)} act{'s' if len(given) == 1 else ''} on each "
            "item's call, and a join task makes one call over the whole stream: handle "
            "errors inside the join function, or drop join=True"
        )
    if (fields["retry_on"] != (Exception,) or values["backoff"] != 0.1) and not retries:
        raise ValueError(f"task {name!r}: retry_on= and backoff= shape retries: give retries=N "
                         "(the retries after the first attempt) too")
    if values["max_failures"] is not None and on_error == "raise":
        raise ValueError(f"task {name!r}: max_failures= bounds the items on_error= skips or hands "
                         "to a handler: give on_error='skip' (or a handler) too; with on_error='raise' "
                         "the first failure stops the run")
    if values["dead_letters"] is not None and on_error != "skip":
        raise ValueError(f"task {name!r}: dead_letters= records the items on_error='skip' drops: "
                         "give on_error='skip' too" + (" (a handler gets each failed item: record "
                                                       "it there)" if callable(on_error) else ""))
    if values["linger"] is not None and values["batch"] is None:
        raise ValueError(f"task {name!r}: linger= is how long a partial batch waits: give "
                         "batch=N too")
    return Policy(**fields)


def where(policy: Policy, timed: bool) -> tuple[Policy, Policy]:
    """(what runs beside the call, what runs in the relay) of a remote stage's options,
    by the table's ``runs``: each side gets its options' fields, the other side's at their
    defaults. With ``timeout=`` (``timed``) the relay calls one item at a time and runs the
    retries around each timed call."""
    relay = {field for option, row in OPTIONS.items()
             if row.runs == "relay" or (timed and option in ("retries", "retry_on", "backoff"))
             for field in row.fields}
    defaults = no_policy._asdict()
    call = policy._replace(**{f: defaults[f] for f in relay})
    here = policy._replace(**{f: defaults[f] for f in defaults if f not in relay})
    return call, here
