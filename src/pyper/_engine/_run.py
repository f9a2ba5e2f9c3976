"""One run of a pipeline: its channels, its stages, its errors, and how it stops.

Data flow, for ``task(a) | task(b, workers=2) | task(c)`` consumed by a caller::

    args -> [a] -> edge 0 -> [b] [b] -> edge 1 -> [c] -> edge 2 -> caller

Each ``[x]`` is a stage worker started by the stage's executor (``_executors``);
workers talk only through the channels (``pyper._channel``). The first task reads a
one-item input channel holding the call's arguments, unless the caller runs it
inline (called once, nothing to overlap it with).

How a run stops:
- normally: a stage's workers close their send ends when their input is
  exhausted; the end travels down to the caller.
- a receiver leaves (a join function returned early): the channel breaks and the
  senders above it stop quietly, closing their own inputs in turn.
- error, early exit, Ctrl-C, cancelled task: ``Run.cancel()`` cancels every
  channel (every blocked get/put wakes and raises ``Cancelled``), then calls the hooks
  registered with ``on_cancel``, one list: they empty every batch in progress (a
  worker's ``for`` over it ends, so no new call starts), cancel the run's asyncio tasks
  and its nested runs, wake relays from their remote waits (and stop their remote calls)
  and sleeps. Sync calls already running cannot be interrupted: they finish in their
  thread and their results are dropped by the cancelled channel.

Who owns what:
- ``_lock`` guards ``cancelled``, ``error``, ``_others``, ``_raised``, ``_stopped`` and
  ``_hooks`` (what cancel() calls after the channels: each worker's batch in hand, nested
  runs, the run's asyncio tasks, relays' remote waits, sleeps; added and removed by whoever
  registered them, from any thread).
- ``tasks`` (asyncio tasks of the run) belong to the loop's thread.
- Each ``Worker`` belongs to its thread or task; see the class.
"""

from __future__ import annotations

import contextvars
import sys
import threading
from _thread import start_new_thread
from collections.abc import Iterator, Sized
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable

from .._channel import MAX_CAPACITY, PACE_SECONDS, Channel, Held
from .._errors import Broken, Cancelled, PipelineSetupError, add_note, attach, short_repr
from .._policy import DROPPED
from .._spec import Task, stage_call
from . import _state, _threads
from ._registry import row

if TYPE_CHECKING:
    import asyncio

    from .._failures import Failures
    from ._lineage import Lineage

__all__ = ["ASYNC_WORKERS", "EVENTS", "NO_ITEM", "Run", "Stage", "Worker", "adapt", "current_run", "dropping", "log", "log_event",
           "refuse_in_bootstrap"]

#: No item in hand: the loop had not started its first call when it stopped.
NO_ITEM: Any = type("NoItem", (), {"__repr__": lambda self: "NO_ITEM", "__slots__": ()})()


def _log_error(message: str, *args: object, exc_info: BaseException) -> None:
    """Log on the ``pyper`` logger, with the error and its traceback; ``logging`` is
    imported the first time it is needed.

    Called from worker threads (late errors) while the caller's thread goes on, so the
    traceback is formatted here without column carets, and the record carries that text
    (``exc_text``, which ``logging.Formatter`` uses as it is) beside the error itself
    (``exc_info``, for handlers that read it). Why: to draw carets, CPython 3.11's
    ``traceback`` parses each frame's line with ``ast.parse``, and the AST constructor
    keeps its recursion count in one counter for all threads; a thread switch inside a
    parse (pyper's gc callback runs Python code there) lets one thread's parse fail
    another's with "SystemError: AST constructor recursion depth mismatch". A lock of
    pyper's own could not help: the parse that fails is the other thread's (pytest's,
    the program's). Without carets, pyper's formatting parses nothing.
    """
    import logging

    logger = logging.getLogger("pyper")
    if not logger.isEnabledFor(logging.ERROR):
        return
    pathname, lineno, func, _ = logger.findCaller()
    record = logger.makeRecord(logger.name, logging.ERROR, pathname, lineno, message, args,
                               (type(exc_info), exc_info, exc_info.__traceback__), func)
    record.exc_text = _traceback_text(exc_info)
    logger.handle(record)


def _traceback_text(exc: BaseException) -> str:
    """``traceback.format_exception(exc)``, chained and grouped errors too, without the
    carets under each line (what ``logging`` would print, but that)."""
    import traceback

    formatted = traceback.TracebackException.from_exception(exc)
    todo, seen = [formatted], set()
    while todo:
        one = todo.pop()
        if id(one) in seen:
            continue
        seen.add(id(one))
        for frame in one.stack:
            frame.colno = frame.end_colno = None  # no positions: no carets, no parse
        todo.extend(e for e in (one.__cause__, one.__context__) if e is not None)
        todo.extend(getattr(one, "exceptions", None) or ())
    return "".join(formatted.format()).removesuffix("\n")


#: The events a worker's calls report (``_async_calls``), and the level each is logged at:
#: a retry (INFO), a skipped item (WARNING), an item handed to on_error (DEBUG).
EVENTS = {"retry": 20, "skip": 30, "handled": 10}


def log_event(event: str, message: str) -> None:
    """An event no worker is left to count (a worker process's teardown after its run)."""
    log(EVENTS[event], message)


def log(level: int, message: str, task: str | None = None, run: int | None = None) -> None:
    """A record on the ``pyper`` logger (a skipped item, a retry); ``task`` and ``run``
    (the run's number in this process) go on it as ``pyper_task`` and ``pyper_run``."""
    import logging

    logging.getLogger("pyper").log(level, message, extra={"pyper_task": task, "pyper_run": run})




#: Items an edge holds at first when the user set no throttle, per receiving worker; then
#: it follows how fast they consume (``Channel.pace``), up to ``MAX_CAPACITY``.
INITIAL_CAPACITY = 64
#: The largest batch a worker takes or hands on.
MAX_BATCH = 1024
#: Batches per worker that the edge in front of a process stage holds, at most: with the
#: batch each worker has in its child, the input pulled ahead of a process stage is at
#: most ``(PROCESS_AHEAD + 1) * workers`` batches (each of at most ``MAX_BATCH`` items and
#: about ``MAX_BATCH_BYTES``), plus what its outputs fill downstream.
PROCESS_AHEAD = 2
#: Errors raised after a run stopped that are logged one by one (with tracebacks); the
#: rest are summed up in one record.
LATE_LOGGED = 3
#: How long a finished async caller waits for cancelled worker tasks to unwind.
SETTLE_SECONDS = 1.0

_CANCELLED_FROM_OUTSIDE = (
    "the pipeline was cancelled from outside (an enclosing run, or interpreter exit)"
)

#: In ``current_run``'s entry, for the run's asyncio worker tasks: whichever of ``Run.tasks``
#: is running (one entry, set once per stage's start, for all its workers).
ASYNC_WORKERS: Any = type("AsyncWorkers", (), {"__repr__": lambda self: "ASYNC_WORKERS", "__slots__": ()})()

#: The run whose call is in progress here, as ``(run, thread ident, asyncio task or None)``.
#: Set by each worker in its own context; a pipeline started from the same thread (and,
#: for an async worker, the same task) belongs to that run. Background work started by
#: a call (a thread given a copy of the context, ``asyncio.create_task``) inherits the
#: value but runs elsewhere, so it is not adopted.
current_run: contextvars.ContextVar[tuple[Run, int, object] | None] = contextvars.ContextVar(
    "pyper_run", default=None
)

#: While ``pyper.observe()`` is active in a context: called with each run made there.
observing: contextvars.ContextVar[Callable[[Run], None] | None] = contextvars.ContextVar(
    "pyper_observing", default=None)


def _cancel_abandoned_runs() -> None:
    """At interpreter exit: cancel the runs nobody will finish.

    A run iterated by a live non-daemon thread other than the main thread goes on:
    Python waits for that thread, and its code must see the run to its end.
    """
    with _state.lock:
        runs = list(_state.live)
    main = threading.main_thread()
    for run in runs:
        caller = run.caller
        if caller is main or caller.daemon or not caller.is_alive():
            run.cancel()


def _sum_up_late_errors() -> None:
    with _state.lock:
        runs = list(_state.unsummed)
        _state.unsummed.clear()
    for run in runs:
        run.sum_up_late_errors()


_state.on_exit(_cancel_abandoned_runs)
_state.on_exit(_sum_up_late_errors)


class Stage:
    """One task in one run: its function, its two channels and its batch sizes."""

    __slots__ = ("task", "row", "call", "inp", "out", "take", "emit", "take_args", "branch", "group", "workers",
                 "total", "started", "size", "failures")

    def __init__(self, task: Task, call: Callable[[Any], Any], inp: Channel, out: Channel,
                 take: int, emit: int, take_args: bool = False) -> None:
        self.task = task
        self.row = row(task)  # where its calls run (the table of executors), read once
        self.call = call  # one item in; for the first task, applies the call's arguments
        self.inp = inp
        self.out = out
        self.take = take  # the most items a worker takes from ``inp`` at once
        self.emit = emit  # the most items a worker hands to ``out`` at once
        self.take_args = take_args  # the first task: its one input is the pipeline's arguments
        # Whether each call's result is a stream of outputs. (With on_error, a mapping
        # task's call gives ``DROPPED`` for a failed item it drops: see ``Worker.drops``.)
        self.branch = task.branch
        # A stage the run added to gather the next task's input (batch=): see _with_groups.
        self.group = task.func if isinstance(task.func, Grouping) else None
        # Every Worker made for this stage, for metrics (appended by each from its own
        # thread or task: one list.append), read by pyper.observe's snapshots.
        self.workers: list[Worker] = []
        self.total: int | None = None  # the first task's: the length of what it returned, if it has one
        # Workers started so far (the next one's index), and how many the stage means to run:
        # ``task.workers``, or what the sizer chose within ``workers=(lo, hi)``. Written by
        # whoever starts workers (the run's start, then the sizer), read by metrics.
        self.started = 0
        self.size = task.workers
        # Its failed items in this run, with max_failures= or dead_letters= (``_letters``).
        self.failures: Failures | None = None
        if task.policy.max_failures is not None or task.policy.dead_letters is not None:
            from .._failures import Failures

            self.failures = Failures(task)


def _edge(up: Task, down: Task | None, remote: bool) -> tuple[int, int]:
    """(capacity, largest batch) of the channel after ``up``, to ``down`` (None: the caller;
    ``remote``: ``down`` runs on a remote executor, whose relays pace the link).

    With ``throttle=T`` the outputs of ``up`` in flight are at most
    ``capacity + (up.workers + down.workers) * batch <= T + up.workers + down.workers``.
    Batches on a throttled edge are small against ``T`` (``b = T / (8 * ends)``, ``ends``
    the workers on both sides), so that a producer runs ahead of a blocked consumer by
    nearly ``T`` items, as the original Pyper documents ("paused after 5000 values"):
    with one worker on each side it has made the consumer's batch, a full channel (all
    but one item of a batch) and its own batch, ``capacity + b + 1 >= 15/16 T``; yet a
    batch is large enough that from ``T = 64`` on the link costs about what an unthrottled
    one does (``Channel`` wakes a blocked producer once half the capacity is free).
    """
    down_workers = down.workers if down is not None else 1
    if up.throttle == 0:
        if remote:
            return down_workers, MAX_BATCH  # one item for each worker at first, then as they pace
        # Room for an output of each worker above too: they hold one each while blocked anyway
        # (10 000 async workers whose calls end together would park 9 936 flushes on 64 places).
        return max(min(MAX_CAPACITY, INITIAL_CAPACITY * down_workers), up.most), MAX_BATCH
    ends = up.most + (down.most if down is not None else 1)
    batch = max(1, min(MAX_BATCH, up.throttle // (8 * ends)))
    return up.throttle + ends * (1 - batch), batch


def _ordered(task: Task) -> bool:
    """Whether the task's outputs go through a reorder buffer (one worker keeps order anyway)."""
    return task.ordered and task.most > 1


class Grouping:
    """The function of a stage the run adds in front of a task with ``batch=``: the loop
    ``_group`` reads it (it is never called)."""

    __slots__ = ("size", "linger")

    def __init__(self, size: int, linger: float | None) -> None:
        self.size, self.linger = size, linger

    def __call__(self, x: Any) -> Any:
        raise AssertionError("a grouping stage is run by its loop, not called")


def _with_groups(tasks: tuple[Task, ...], is_async: bool) -> tuple[Task, ...]:
    """``tasks``, with a one-worker stage that makes the lists in front of each task with
    ``batch=`` (a thread for a sync run, a task on the loop for an async one)."""
    if not any(task.policy.batch for task in tasks[1:]):
        return tasks
    out: list[Task] = [tasks[0]]
    for task in tasks[1:]:
        policy = task.policy
        if policy.batch:
            # The lists in flight hold no more items than the task above lets out (throttle=).
            above = out[-1].throttle
            throttle = -(-above // policy.batch) if above else 0
            out.append(Task(
                func=Grouping(policy.batch, policy.linger), name=f"{task.name}:batch",
                kind="coro" if is_async else "sync", is_gen=False, workers=1, branch=False,
                join=False, throttle=throttle, ordered=False, daemon=task.daemon,
                executor="asyncio" if is_async else "thread",
            ))
        out.append(task)
    return tuple(out)


def _check_journaled(tasks: tuple[Task, ...], nested: bool) -> None:
    """What a journaled run can do for now: refused with a clear error otherwise."""
    first = tasks[0]
    where = f"journal= on task {first.name!r}"
    for task in tasks[1:]:
        if task.policy.journal is not None:
            raise PipelineSetupError(f"journal= on task {task.name!r}: a journal goes on the pipeline's "
                                     f"first task ({first.name!r}), whose outputs it keys")
    if nested:
        raise PipelineSetupError(f"{where}: a journaled pipeline runs on its own, not as a task of "
                                 "another pipeline: journal the outer one")
    if row(first).remote:
        raise PipelineSetupError(f"{where}: the first task of a journaled pipeline runs on a thread or "
                                 "asyncio (its outputs are keyed as they are made)")
    if first.policy.journal.connect is not None:
        fanning = [t.name for t in tasks[1:] if t.branch]
        if fanning:
            raise PipelineSetupError(
                f"{where}: a journal that sinks mark (Journal(connect=...)) needs each item to reach "
                f"the sink whole, and task {fanning[0]!r} fans out (part of an item's outputs could "
                "commit and the rest not): give the journal a path, and make the sink idempotent")
    for task in tasks[1:]:
        if task.join and row(task).remote:
            raise PipelineSetupError(f"{where}: task {task.name!r} is a join task on a remote executor, "
                                     "which a journaled run does not follow yet: run it without journal=")


class Run:
    def __init__(
        self,
        tasks: tuple[Task, ...],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        # A journaled run (``journal=`` on the first task): its items' lineage, and the
        # journal's file, opened here (an error, such as another pipeline's journal, is
        # raised before anything starts).
        self.lineage: Lineage | None = None
        if any(task.policy.journal is not None for task in tasks):
            from ._lineage import Lineage

            _check_journaled(tasks, _calling_run() is not None)
            self.lineage = lineage = Lineage(tasks[0].policy.journal, tasks)
            if lineage.done:
                log(20, f"pyper: journal {lineage.where} has {len(lineage.done)} items done: those "
                        "the first task makes again are skipped", tasks[0].name)
        self._lock = threading.Lock()
        self.cancelled = False  # set once, first thing in cancel(); never reset
        self._stopped = False  # cancel() has gone all the way through once
        self.error: BaseException | None = None
        self._others: list[BaseException] = []
        self._raised = False
        # Errors raised after the caller took the run's error (calls that were in flight):
        # the first LATE_LOGGED are logged one by one, the rest counted by task and type and
        # summed up in one record when the run's workers are all done. Guarded by _lock.
        self._late = 0
        self._unlogged: dict[tuple[str, str], int] = {}
        self._workers = 0  # workers that have started and not yet left
        self._deferred = False  # leave() handed the stop to another thread (see leave)
        # What cancel() calls after it has cancelled the channels, in the order they came,
        # each at least once: the batches workers hold (``Held``), nested runs, the run's
        # asyncio tasks, relays' remote waits, sleeps. A dict: a hook goes as what it
        # watched ends, in one step however many there are; equal hooks are counted
        # (several workers may wait on one object's bound method). Guarded by _lock.
        self._hooks: dict[Callable[[], None], int] = {}  # each with how many registered it
        # Where each worker whose loop calls the function here, and the caller, keeps its
        # batch in hand (``held``): emptied by one hook of the cancellation. Appended to by
        # each as it starts (one ``list.append``, atomic under the GIL and in a free-threaded
        # build), never removed (one per worker). One appended after the hook ran never
        # holds a batch: the channels were cancelled first, so its first get raises.
        self.helds: list[Held] = []
        self._hooks[self._empty_held] = 1
        self.loop = loop
        self.args, self.kwargs = args, kwargs  # the pipeline's arguments, for the first task
        self.caller = threading.current_thread()
        self.tasks: set[asyncio.Task[None]] = set()
        self.context = contextvars.copy_context()
        self.started = perf_counter()
        self.ended = 0.0  # set once the caller is done with the run (0: not yet)
        self.number = next(_state.numbers)  # names the run on log records

        tasks = _with_groups(tasks, loop is not None)
        n = len(tasks)
        # Edge i carries task i's outputs to task i + 1 (or, after the last task, to the caller).
        receivers = [t.workers for t in tasks[1:]] + [1]
        downs: list[Task | None] = [*tasks[1:], None]
        # Whether each link feeds a remote executor's relays, which pace it (by the next task's row).
        remote = [row(t).remote for t in tasks[1:]] + [False]
        limits = [_edge(task, down, remote[i]) for i, (task, down) in enumerate(zip(tasks, downs))]
        self.channels = [
            Channel(
                capacity,
                senders=task.workers if i else 1,
                receivers=receivers[i],
                reordered=_ordered(task),
                sequenced=i + 1 < n and _ordered(tasks[i + 1]),
                batch=batch,
                pace=None if task.throttle else PACE_SECONDS,
                ahead=PROCESS_AHEAD if remote[i] else 0,
                # several join workers: what one took and did not read may come back
                lending=i + 1 < n and tasks[i + 1].join and tasks[i + 1].most > 1,
            )
            for i, (task, (capacity, batch)) in enumerate(zip(tasks, limits))
        ]
        self.output = self.channels[-1]
        self.output_take = limits[-1][1]  # the caller's batches count against a throttle too
        # The call's arguments, as the first task's one input: cancelled with the others.
        self.source = source = Channel(1, 1, 1)
        source.put([None])
        source.close_send()
        self.stages = [
            Stage(
                task,
                call=stage_call(task, args if i == 0 else None, kwargs),
                inp=self.channels[i - 1] if i else source,
                out=self.channels[i],
                take=limits[i - 1][1] if i else 1,
                emit=limits[i][1],
                take_args=i == 0,
            )
            for i, task in enumerate(tasks)
        ]

        if loop is not None:
            self._hooks[self._cancel_tasks_threadsafe] = 1
        self.parent = _calling_run()
        if self.parent is not None:
            self.parent.on_cancel(self.cancel)  # a nested run stops with the run it belongs to
        with _state.lock:
            _state.live.add(self)
        watch = observing.get()
        self.observed = watch is not None  # (the workers then measure what the metrics need)
        if watch is not None:
            watch(self)

    # -- lifecycle -------------------------------------------------------------

    def held(self, held: Held | None = None) -> Held:
        """Where a worker (``held``, its hand) or the caller keeps the batch it works
        through: its channel's gets put each batch there, and the run's cancellation
        empties it (one hook for all of them, ``_empty_held``; see ``Held``)."""
        if held is None:
            held = Held()
        self.helds.append(held)  # (one list.append: atomic, see ``helds``)
        return held

    def _empty_held(self) -> None:
        """A hook of the run's cancellation: every batch in hand is emptied, so no loop
        starts a new call on it."""
        for held in list(self.helds):
            held()

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` (from any thread) when the run is cancelled, after its channels,
        or now if it was: how whatever waits outside the channels learns of it (a relay's
        remote side, a sleep, a nested run). Hooks that are equal (several workers waiting
        on one object's bound method) are counted: each ``off_cancel`` takes one back."""
        with self._lock:
            if not self.cancelled:
                self._hooks[hook] = self._hooks.get(hook, 0) + 1
                return
        hook()

    def off_cancel(self, hook: Callable[[], None]) -> None:
        """Take back a hook given to ``on_cancel`` (what it watched is done)."""
        with self._lock:
            count = self._hooks.get(hook, 0)
            if count > 1:
                self._hooks[hook] = count - 1
            else:
                self._hooks.pop(hook, None)

    def sleep(self, seconds: float) -> None:
        """Wait in a thread (a retry's backoff): raises ``Cancelled`` as soon as the run is
        cancelled, from any thread."""
        woken = threading.Event()
        self.on_cancel(woken.set)
        try:
            if woken.wait(seconds) or self.cancelled:
                raise Cancelled
        finally:
            self.off_cancel(woken.set)

    def start_threads(self, stage: Stage, workers: range, job: Callable[[Run, Stage, int], None],
                      daemon: bool = False) -> None:
        """Run ``job(self, stage, i)`` for each worker ``i`` of ``workers`` on pyper's
        threads (daemon threads if the task or ``daemon`` says so), each in its own copy
        of the caller's context: a thread stage's workers, and a remote stage's relays.
        Returns at once; on an event loop's thread it waits for at most one new thread to
        start (~0.1 ms), which starts the others."""
        task = stage.task
        jobs: list[tuple[Callable[[], None], str]] = [
            (partial(self.context.copy().run, job, self, stage, i), f"pyper:{task.name}[{i}]")
            for i in workers
        ]
        # (owner: a fork waits a moment for the jobs of a run that has ended: _threads.alone)
        _threads.spawn(jobs, daemon=task.daemon or daemon, nonblocking=self.loop is not None,
                       on_error=lambda exc: self.fail(exc, task), owner=self)

    def enter(self, task: object = None) -> None:
        """Called by a worker (or the inline first call) in its own context: pipelines
        run from here, while this call is in progress, belong to this run."""
        current_run.set((self, threading.get_ident(), task))

    def cancel(self) -> None:
        """Stop everything; safe from any thread, any number of times.

        One mechanism, in one order: the channels first (every blocked or later get and
        put raises ``Cancelled``), downstream first (a worker that sees its input cancelled
        and closes its output must find the output cancelled already, or its receivers
        would take the close for a normal end of stream); then the hooks (``on_cancel``),
        each once: the batches workers hold are emptied (no new call starts), nested runs
        are cancelled, the run's asyncio tasks too (an async call in flight is
        interrupted), relays wake from their remote waits and stop their remote calls.
        Sync calls already running cannot be interrupted: they finish in their thread and
        the cancelled channel drops what they return.

        A hook leaves the list once it has run: a ``KeyboardInterrupt`` in the middle of a
        cancel leaves the rest for the next call, which runs them (and cancels the
        channels again, which costs nothing).
        """
        with self._lock:
            if self._stopped:
                return
            self.cancelled = True
            hooks = list(self._hooks)
        for channel in reversed(self.channels):
            channel.cancel()
        self.source.cancel()  # (the first task's input: upstream of them all)
        for hook in hooks:
            hook()
            with self._lock:
                self._hooks.pop(hook, None)
        with self._lock:
            self._stopped = True

    def end(self) -> bool:
        """The caller has seen the end of the output stream, or ``Cancelled``.

        False if the run was cancelled (the caller then raises ``failure()``);
        otherwise stops whatever is still running upstream (tasks above a join
        that returned early) and returns True.
        """
        if self.cancelled:
            return False
        self.cancel()
        return True

    def failure(self) -> BaseException:
        """What a cancelled run raises in its caller: its error, with the others attached."""
        return self.take_error() or Cancelled(_CANCELLED_FROM_OUTSIDE)

    def _cancel_tasks_threadsafe(self) -> None:
        """The run's asyncio tasks are cancelled on their loop's thread (a hook)."""
        loop = self.loop
        assert loop is not None
        if not self.tasks:
            return
        if _on_loop(loop):
            self._cancel_tasks()
        else:
            try:
                loop.call_soon_threadsafe(self._cancel_tasks)
            except RuntimeError:  # loop closed: its tasks are gone already
                pass

    def _cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def leave(self) -> None:
        """The caller stopped early (break, close, cancelled, an exception of its own):
        stop the run, and log the errors that will now never be raised.

        When the garbage collector closes the caller's generator, this thread may
        hold any lock of the engine (the collector runs wherever memory is
        allocated): the stop then runs on a thread of its own, which waits for
        those locks instead of deadlocking on them.
        """
        if threading.get_ident() in _state.collecting:
            self._deferred = True
            start_new_thread(self._leave_and_finish, ())
            return
        self._leave()

    def _leave(self) -> None:
        self.cancel()
        with self._lock:
            self._raised = True
            errors = ([self.error] if self.error is not None else []) + self._others
        for error in errors:
            _log_error("pyper: a task raised while its caller was leaving the pipeline", exc_info=error)

    def _leave_and_finish(self) -> None:
        self._leave()
        self._finish()

    def finish(self) -> None:
        """The caller is done with this run (normally or not)."""
        if not self._deferred:
            self._finish()

    def _finish(self) -> None:
        # Make sure the run is stopped all the way through: a worker's cancel may still
        # be under way in its own thread. If this is interrupted, the run stays live and
        # interpreter exit cancels it again.
        if not self.ended:
            self.ended = perf_counter()
        if not self._stopped:  # a stale False only repeats cancel's quick check
            self.cancel()
        with _state.lock:
            _state.live.discard(self)
        if self.parent is not None:
            self.parent.off_cancel(self.cancel)

    async def asettle(self) -> None:
        """Let cancelled tasks unwind, so that what they raise meanwhile is attached to
        the error the caller raises, and no task outlives the run."""
        unfinished = [t for t in self.tasks if not t.done()]
        # Loaded (this is an async run), but gone late in interpreter shutdown: a run whose
        # loop was never closed has its generator finalized after sys.modules was emptied,
        # where an import would fail ("sys.meta_path is None") and nothing can be awaited.
        asyncio = sys.modules.get("asyncio")
        if unfinished and asyncio is not None:
            await asyncio.wait(unfinished, timeout=SETTLE_SECONDS)

    def settle(self) -> None:
        """The sync twin of ``asettle``: threads are not waited for (Python cannot stop
        a running call); their late errors are logged."""

    # -- errors ----------------------------------------------------------------

    def fail(self, exc: BaseException, task: Task, item: str | None = None) -> None:
        """A worker's call raised ``exc`` (on the item ``item`` shows, if given): record
        it and cancel the run."""
        late = False
        with self._lock:
            if self.error is None and not self.cancelled:
                self.error = exc
                note = True
            elif self._raised or self.error is None:
                late, note = True, False
            elif isinstance(exc, (KeyboardInterrupt, SystemExit)) and isinstance(self.error, Exception):
                self._others.append(self.error)
                self.error = exc
                note = True
            else:
                self._others.append(exc)
                note = True
        if note:
            where = "" if item is None else f" on item {item}"
            add_note(exc, f"pyper: raised in task {task.name!r}{where}")
        if late:
            self._late_error(exc, task)
        self.cancel()

    def _late_error(self, exc: BaseException, task: Task) -> None:
        with self._lock:
            self._late += 1
            count = self._late
            if count > LATE_LOGGED:
                key = (task.name, type(exc).__name__)
                self._unlogged[key] = self._unlogged.get(key, 0) + 1
        if count > LATE_LOGGED:
            with _state.lock:  # never taken while holding a run's lock: no lock-order cycle
                _state.unsummed.add(self)
            return
        more = (" (later ones are counted, and summed up once the run's calls are done)"
                if count == LATE_LOGGED else "")
        _log_error("pyper: task %r raised after its pipeline had stopped%s", task.name, more, exc_info=exc)

    def worker_started(self) -> None:
        with self._lock:
            self._workers += 1

    def worker_left(self) -> None:
        """A worker is done; the last one sums up the late errors not logged one by one."""
        with self._lock:
            self._workers -= 1
            if self._workers:
                return
        self.sum_up_late_errors()

    def sum_up_late_errors(self) -> None:
        """One record for the late errors not logged one by one (if any)."""
        with self._lock:
            if not self._unlogged:
                return
            unlogged, self._unlogged = self._unlogged, {}
        with _state.lock:
            _state.unsummed.discard(self)
        parts = ", ".join(f"{n} {kind} in task {name!r}" for (name, kind), n in sorted(unlogged.items()))
        total = sum(unlogged.values())
        log(40, f"pyper: {total} more error{'s' if total > 1 else ''} raised after the pipeline "
                f"had stopped, not logged one by one: {parts}")

    def take_error(self) -> BaseException | None:
        """The error to raise in the caller, with the others attached to it."""
        with self._lock:
            self._raised = True
            error, others = self.error, self._others
        if error is not None and others:
            attach(error, others)
        return error


def refuse_in_bootstrap() -> None:
    """Refuse a pipeline called while ``multiprocessing`` imports the main module in a
    new process (spawn, the fork server: ``_inheriting``), as it refuses to start a
    process there: the main module of a script without ``if __name__ == "__main__":``
    runs its work again in every worker (each item done again, silently). The worker
    fails to load; its parent says why (``_workers.Child``)."""
    process = sys.modules.get("multiprocessing.process")
    if process is None or not getattr(process.current_process(), "_inheriting", False):
        return
    main = sys.modules.get("__mp_main__") or sys.modules.get("__main__")
    where = getattr(main, "__file__", None)
    raise RuntimeError(
        "pyper: a pipeline was called while this process, a worker started by spawn or the "
        f"fork server, imported the main module{f' ({where})' if where else ''}: such a worker "
        "imports it first, so a script's work would run again in every worker. Keep the "
        'script\'s work under `if __name__ == "__main__":`'
    )


def _calling_run() -> Run | None:
    """The run whose call is in progress in this thread (and task), if any."""
    entry = current_run.get()
    if entry is None:
        return None
    run, ident, task = entry
    if ident != threading.get_ident():
        return None
    if task is not None:
        try:  # asyncio is loaded: an async worker (or an inline call) set the entry
            current = sys.modules["asyncio"].current_task()
        except RuntimeError:  # no loop running in this thread
            return None
        if task is ASYNC_WORKERS:  # the run's worker tasks share one entry (_async.start)
            if current not in run.tasks:
                return None
        elif current is not task:
            return None
    return run


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:  # asyncio is loaded: the run has a loop
        return sys.modules["asyncio"].get_running_loop() is loop
    except RuntimeError:
        return False


#: A worker aims to spend about this long on one batch: long enough to make the
#: per-batch cost vanish, short enough for latency and load balance.
TARGET_SECONDS = 0.0005


def dropping(box: list[Any]) -> Callable[[Any], None]:
    """``box.append``, but for ``DROPPED`` (the map loop's append when the calls are guarded:
    one comparison per item, where a stream per item cost the loop of a branching task)."""
    append = box.append

    def keep(output: Any) -> None:
        if output is not DROPPED:
            append(output)

    return keep


def adapt(n: int, done: int, seconds: float, limit: int, target: float = TARGET_SECONDS) -> int:
    """The next batch size, after ``done`` items (of at most ``n``) took ``seconds``.

    Starts at 1 and doubles while batches are cheap (slow start), so a slow call
    never holds back items that other workers could take; shrinks to fit the
    target as soon as calls turn out to be slow. (A remote executor whose calls
    cost more to make than a channel's hand-over aims at a larger ``target``.)
    """
    if seconds < target / 2:
        if done >= n:
            return min(limit, 2 * n)
        return n
    if seconds > target:
        return max(1, min(n, int(done * target / seconds)))
    return n


def branch_error(task: Task, result: object) -> TypeError:
    return TypeError(
        f"task {task.name!r} fans out its results (branch=True) but returned "
        f"{type(result).__name__!s}, which is not iterable: return an iterable, "
        "or create the task with branch=False"
    )


class Worker:
    """One stage worker's state, for whichever executor runs it.

    Owned by the worker's thread or task. Others touch it only through what it
    registered: its ``hand`` (the batch in hand: emptied by the run's cancellation,
    ``holding``; its claim shared with siblings under the input's lock, ``Held``) and
    ``box`` (read by the channels under their locks, while shown to them: ``begin``).
    """

    __slots__ = (
        "run", "stage", "ordered", "hand", "box", "seq", "size", "idle", "shows", "shares",
        "item", "call", "drops", "read", "born", "gone", "retries", "skips", "handled", "raised", "refs_in", "refs_out",
        "cpu_clock", "cpu", "cpu_base",
    )

    def __init__(self, run: Run, stage: Stage) -> None:
        self.run = run
        self.stage = stage
        task = stage.task
        self.ordered = task.ordered and task.most > 1  # input numbered, output reordered
        self.box: list[Any] = []  # outputs not yet flushed
        self.seq = 0  # sequence number of the batch in hand, when ordered
        self.size = 0  # items in the batch in hand, as taken
        # Checked before each call: siblings parked with nothing to do (they may
        # take a share of this worker's batch; not when order must be kept).
        self.shares = task.most > 1 and not self.ordered
        self.idle: Sized = stage.inp.getters if self.shares else ()
        # The batch in hand and the iterator over it (a claim, when siblings may share it).
        self.hand = Held(self.shares)
        # A branching or joining call may leave outputs in the box while it computes the
        # next one, whatever the batch size; a map worker, only in a multi-item batch.
        self.shows = stage.branch or task.join
        self.item: str | None = None  # short repr of the input whose call raised, for its note
        self.call = stage.call  # what the loops call per item (_async_calls: with the task's options)
        self.drops = False  # ``call`` may return DROPPED (on_error=, a mapping task: run_worker sets it)
        self.read = 0  # items a join call has read since its last get (``settle``)
        # For metrics: when the worker started and left (0: not yet); written only by it.
        self.born = perf_counter()
        self.gone = 0.0
        # Failed attempts retried, items skipped and items handed to on_error (the events
        # its calls report, ``note``), and whether the worker raised.
        self.retries = self.skips = self.handled = self.raised = 0
        # Between two Ray stages an item on the link is a reference to a batch's outputs
        # (``_ray.Refs``): the items it stands for beyond one, taken and handed on.
        self.refs_in = self.refs_out = 0
        # The CPU time of the worker's thread, for the metrics' advice (``measure_cpu``):
        # its thread's CPU clock (None: not measured, for a worker whose calls run
        # elsewhere: a task on a loop, a relay), that clock when the worker started, and
        # (once it has left) its CPU seconds. Written by the worker only.
        self.cpu_clock: int | None = None
        self.cpu = self.cpu_base = 0.0
        stage.workers.append(self)
        run.worker_started()

    def trace(self, iterate: Callable[[Task, object, Run], Any], is_async: bool) -> None:
        """In a journaled run, make ``call`` take and give ``(node, value)`` items
        (``_lineage``): the loop's first step, once the call is built with its options.
        ``iterate``: how the loop reads a branching call's result (``_bridge``)."""
        lineage = self.run.lineage
        if lineage is not None and self.stage.group is None:
            stage = self.stage
            sized = partial(setattr, stage, "total") if stage.take_args else None
            # (timeout= on threads: the loop runs stepped, its calls are steps: ``_timeouts``)
            stepped = not is_async and not stage.row.remote and stage.task.policy.timeout is not None
            self.call = lineage.traced(stage.task, sized, stage.branch, self.call, self.run, is_async, iterate,
                                       stepped)
            self.drops = True  # (an item whose key is done, or that on_error dropped)

    def measure_cpu(self) -> None:
        """Count the CPU time of this worker's thread: called, in that thread, by an
        executor whose calls run there (threads). The metrics weigh it to tell calls that
        compute from calls that wait. Nothing is added per item nor per batch (a read of
        the clock costs about 0.6 us here, as much as a small batch's hand-over): the
        thread's CPU clock is read here, when the worker leaves, and by a snapshot
        (``cpu_seconds``). Not where the platform has no per-thread clock (macOS)."""
        import time

        try:
            clock = time.pthread_getcpuclockid(threading.get_ident())
            self.cpu_base = time.clock_gettime(clock)
        except (AttributeError, OSError):
            return
        self.cpu_clock = clock

    def cpu_seconds(self) -> float | None:
        """The CPU seconds of the worker's thread since it started (None: not measured).
        From any thread: a live worker's clock is read now."""
        clock = self.cpu_clock
        if clock is None:
            return None
        if self.gone:
            return self.cpu
        import time

        try:
            return time.clock_gettime(clock) - self.cpu_base
        except OSError:  # its thread has just ended
            return self.cpu

    def note(self, event: str, message: str, failure: tuple[Any, BaseException] | None = None) -> None:
        """An event of this worker's calls (``_async_calls``: "retry", "skip", "handled"),
        wherever the call ran: counted for the metrics, and logged with the task's name and
        the run's number at the event's level; a failed item (``failure``: the item and its
        error, for a skip or a handler) counted against the task's budget, and a skipped one
        written as a dead letter (``Stage.failures``: raises ``TooManyFailures`` past the
        budget). Called by the worker only."""
        if event == "skip":
            self.skips += 1
        elif event == "retry":
            self.retries += 1
        else:
            self.handled += 1
        log(EVENTS[event], message, self.stage.task.name, self.run.number)
        failures = self.stage.failures
        if failures is not None and failure is not None:
            failures.add(failure[0], failure[1], event == "skip", self.stage.inp.taken)

    def failed_on(self, item: Any) -> None:
        """The loop stopped by an exception while ``item`` was the input in hand (or
        ``NO_ITEM``): named in the error's note (but for the first task: see ``leave``)."""
        if item is not NO_ITEM:
            if self.run.lineage is not None and type(item) is tuple and len(item) == 2:
                item = item[1]  # a journaled run's (node, value): the value
            self.item = short_repr(item)

    def holding(self) -> Held:
        """Where this worker's loop keeps the batch it calls the function on: given to its
        input's gets, emptied by the run's cancellation (so the loop starts no new call). A
        relay does not give it to the run: its cancellation stops remote calls its own way."""
        return self.run.held(self.hand)

    def begin(self, got: Any) -> Iterator[Any] | None:
        """Start on what ``get``/``get_seq`` returned: an iterator over the batch,
        or ``None`` at the end of the input."""
        if got is None:
            return None
        if self.ordered:
            self.seq, batch = got
        else:
            batch = got
        self.size = size = len(batch)
        hand = self.hand
        if hand.batch is not batch:  # taken without the hand (from a relay's remote side)
            self.stage.inp.hold(hand, batch)
        if size > 1 or self.shows:
            self.stage.out.show(self.box, self.seq if self.ordered else None)
        return hand.items

    def settle(self) -> None:
        """A join call is about to take more (or has ended): what it read of its input so
        far will not come back to its siblings (``Channel.settle``; a no-op unless the
        task has several workers)."""
        if self.read:
            self.stage.inp.settle(self.read)
            self.read = 0

    def leave(self, exc: BaseException | None) -> None:
        """The worker is done: report ``exc`` (unless it is the run stopping), close both ends."""
        if self.cpu_clock is not None:  # (before ``gone``, which tells readers it is final)
            import time

            self.cpu = time.clock_gettime(self.cpu_clock) - self.cpu_base
        self.gone = perf_counter()
        if isinstance(exc, Cancelled) and not self.run.cancelled:
            # Only a cancelled run cancels its workers: anything else would end the stream
            # silently short. Never expected; reported rather than hidden if it happens.
            exc = RuntimeError(f"pyper: internal error: a worker of task {self.stage.task.name!r} "
                               "was stopped as cancelled while its run was not")
        if exc is not None and not isinstance(exc, (Cancelled, Broken)):
            self.raised = 1
            # The first task's one input is the pipeline's arguments, not an item: never
            # named, whichever executor reported the item (a remote side sees the source's
            # placeholder item, which is None).
            self.run.fail(exc, self.stage.task, None if self.stage.take_args else self.item)
        if self.stage.task.join:
            self.settle()
            if exc is None:
                # A join function returned early: what it took but did not read is not its.
                self.stage.inp.give_back(self.hand)
        self.hand.items = None
        self.stage.inp.close_receive()
        self.stage.out.close_send()
        self.run.worker_left()
