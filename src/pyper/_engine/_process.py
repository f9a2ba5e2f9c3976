"""Executor: worker processes, for sync functions with ``multiprocess=True`` (see
``_executors`` for the protocol). Imported only when a process stage runs: importing pyper
never imports multiprocessing.

Each worker is a relay (``_relay``, shared by every remote executor) driving one child
process of its own over private pipes; ``ProcessRemote`` is the transport between them,
``_child`` the child's loop (which runs ``_serve``, the remote side), ``_workers`` the
children themselves (how they start, stop and die, and the warm pool that keeps idle ones
for the next run)::

    inp channel --get--> [relay thread] --pipe--> [child process: _child.main]
    out channel <-flush-- [relay thread] <--pipe-- (outputs, or the sealed error)

Under the ``fork`` start method a run's children are forked by ``prepare``, in the
caller's thread, before the run has started a thread; a relay that starts one itself
(the sizer's, a replacement) uses the fork server (spawn where there is none).

How it stops: a relay waits on three things at once: its child's reply pipe, the child
process itself (a pidfd where Linux has them: its death is ``WorkerProcessDied``, even
while a process it started holds its pipes), and a wake-up pipe written by ``interrupt``
(the run's cancellation). At the end of its input, on an error or on cancellation it
ends the child's run (``Child.end_run``: its resource exited, or a stream a break left
half read closed), and the child is kept warm or closed (asked to stop, given
``GRACE_SECONDS``, then terminated and killed, and reaped: no zombie).

Who owns what: a ``ProcessRemote`` and its ``Child`` belong to their relay thread; only
the child's wake-up pipe is written from another thread (``interrupt``, under the
child's lock).
"""

from __future__ import annotations

import os
import sys
from collections import deque
from contextlib import nullcontext
from functools import partial
from typing import Any

from .._errors import Broken, Cancelled, attach
from .._pickling import dumps
from .._spec import Task
from . import _relay, _state, _threads
from ._relay import Relayed, remote_task
from ._remote import next_size
from ._run import TARGET_SECONDS, Run, Stage, Worker
from ._workers import Child, Late, context, keep, sigint_held, take, take_warm, threaded_context

__all__ = ["ProcessRemote", "prepare", "start", "unprepare"]

#: Batches grow while calls are cheap, but not past this many pickled bytes each way
#: (a cheap function of large items would otherwise pickle thousands of them at once).
MAX_BATCH_BYTES = 1 << 22
#: What a batch's calls should take in the child (their own time): with a message costing
#: both sides about 0.1 ms of CPU, 20 ms of calls make it a small part and still share the
#: work out between the workers (a run's tail is shared out in smaller pieces).
PROCESS_TARGET_SECONDS = 0.05


def start(run: Run, stage: Stage, workers: range) -> None:
    payload = _payload(run, stage)
    ready = _forked.pop(id(stage), {})
    try:
        _relay.start(run, stage, workers, partial(ProcessRemote, payload, ready))
    except BaseException:
        _close_all(ready)  # the children no relay took
        raise


def prepare(run: Run, stages: list[Stage]) -> None:
    """Before any stage starts (``start_all``): under the ``fork`` start method, fork
    every process stage's children now, in the caller's thread, while the run has
    no thread of its own yet."""
    if context().get_start_method() != "fork":
        return
    try:
        for stage in stages:
            ready: dict[int, Child] = {}
            _forked[id(stage)] = ready  # (first: a Ctrl-C meanwhile leaves no child unknown)
            _fork_children(stage.task, _payload(run, stage), ready)
    except BaseException:
        unprepare(stages)
        raise


def unprepare(stages: list[Stage]) -> None:
    """Close the children ``prepare`` forked for stages that did not start."""
    for stage in stages:
        _close_all(_forked.pop(id(stage), {}))


def _payload(run: Run, stage: Stage) -> bytes:
    """What every child of the stage is started with: the task as the remote side runs
    it, whether its calls are guarded there (``on_error=``), and the pipeline's arguments
    for the first task."""
    first = stage is run.stages[0]
    here, guarded = remote_task(stage.task)
    try:
        return dumps((here, run.args if first else None, run.kwargs if first else None, guarded, os.getpid()))
    except Exception as exc:
        # The function and its options were checked at task(...): the call's arguments, then.
        what = "the pipeline's arguments" if first else "the task"
        raise TypeError(
            f"task {stage.task.name!r} runs in a process (multiprocess=True), but {what} cannot be "
            f"pickled to send there ({type(exc).__name__}: {exc})"
        ) from exc


#: Children forked by ``prepare`` for a stage about to start, by ``id(stage)``; only
#: the caller's thread touches it, between ``prepare`` and ``start`` of one run.
_forked: dict[int, dict[int, Child]] = {}
_state.on_fork(_forked.clear)  # the parent's, never a forked child's


def _close_all(children: dict[int, Child]) -> None:
    """Close the children no relay took. Each is taken once: by its relay
    (``ready.pop``) or here (``popitem``), both atomic, while relays may be starting."""
    while children:
        try:
            _, child = children.popitem()
        except KeyError:  # a relay took the last one meanwhile
            return
        child.close()


def _fork_children(task: Task, payload: bytes, ready: dict[int, Child]) -> None:
    """Under the ``fork`` start method: the stage's children, warm ones or forked here,
    in the caller's thread, before the run starts any thread (``start_all`` prepares
    process stages first, and pyper's own threads are set aside: ``_threads.alone``). Where
    other threads run, forking could deadlock a child: the children still missing are
    left to the relays, which start them with forkserver (spawn where there is none)."""
    for index in range(task.workers):
        warm = take_warm(task, payload)
        if warm is None:
            break
        ready[index] = warm
    missing = range(len(ready), task.workers)
    with _threads.alone(lambda run: bool(run.ended)) if missing else nullcontext(False) as alone:
        if alone:
            with sigint_held():  # (one thread: Ctrl-C comes once each child is in ready)
                for index in missing:
                    ready[index] = Child(task, payload, index, context())


class ProcessRemote(Relayed):
    """A relay's child process (``_relay.Remote``): requests and replies over its pipes.

    A map request may go before the last one's reply is read (``ahead``) when it fits in
    the pipe (``Child.ahead_bytes``: neither side can then block the other), and not
    with ``retries=`` (any message ends a child's backoff wait early). While batches are
    cheap (the last one's calls took under half the target per item), two are in flight."""

    def __init__(self, payload: bytes, ready: dict[int, Child], worker: Worker, index: int) -> None:
        super().__init__(worker)
        self.task = task = worker.stage.task
        self.payload, self.index = payload, index
        child = ready.pop(index, None)  # forked before the run's threads started
        if child is None:
            if worker.run.cancelled:  # (Ctrl-C as the stage started: no new process for it)
                raise Cancelled
            child = take(task, payload, index)
        child.note = worker.note
        self.child = child
        # The child and the generation (its run) that ``interrupt`` wakes, as one tuple: a
        # timeout's replacement swaps both at once, and a late cancel of this run never
        # reaches the child once it serves another.
        self._target = (child, child.generation)
        self.ahead = not task.policy.retries
        self.per_item = 1.0  # the child's seconds per item in the last batch (none yet: never cheap)
        self.sent = 0  # the size of the request whose reply was read last, in bytes
        self._posted: deque[int] = deque()  # the sizes of the map requests whose replies are unread

    def interrupt(self) -> None:
        child, generation = self._target
        child.interrupt(generation)

    def cheap(self, count: int) -> bool:
        return self.per_item * count < TARGET_SECONDS / 2

    def pack(self, items: list[Any]) -> bytes:
        return self.child.pack_map(items)

    def fits(self, request: bytes) -> bool:
        return len(request) <= self.child.ahead_bytes

    def post(self, request: bytes) -> None:
        self._posted.append(self.child.post(request))

    def reply(self, handle: Any) -> tuple[list[Any], float]:
        try:
            reply = self.child.receive()
        except BaseException:
            self.worker.item = self.child.failed_on
            raise
        return reply[1], reply[3]

    def measured(self, asked: int, count: int, elapsed: float, seconds: float, limit: int) -> int:
        # Batches grow toward TARGET_SECONDS of the calls' own time (measured in the
        # child), as an executor of the user's does: a message costs both sides about
        # 0.1 ms of CPU, which calls of 0.1-1 ms must not pay one item at a time. Large
        # items are kept to MAX_BATCH_BYTES a batch (``cap``).
        self.per_item = seconds / count if count else 1.0
        if self._posted:  # a map batch's (a stream's was set as it started)
            self.sent = self._posted.popleft()
        self.worker.stage.inp.pace(count, elapsed)
        return self.cap(next_size(asked, count, seconds, limit, PROCESS_TARGET_SECONDS), count)

    def cap(self, n: int, count: int) -> int:
        """``n``, reduced so that ``n`` items of the size of the last batch's (``count``
        items) stay within ``MAX_BATCH_BYTES``."""
        size = max(self.sent, self.child.received)
        if n * size <= count * MAX_BATCH_BYTES:
            return n
        return max(1, count * MAX_BATCH_BYTES // size)

    def stream(self, items: list[Any], m: int) -> _Chunks:
        self.sent = self.child.send(("branch", items, m))
        return _Chunks(self)

    def join(self) -> _Session:
        return _Session(self)

    def receive(self) -> tuple[Any, ...]:
        try:
            return self.child.receive()
        except BaseException:
            self.worker.item = self.child.failed_on
            raise

    def call(self, x: Any, seconds: float) -> Any:
        """One item, waited for at most ``seconds``; past it, the child is killed and
        replaced (a worker that died raises ``WorkerProcessDied``: it stops the run, as
        without ``timeout=``). A branching call's outputs come back whole (a lazy
        iterable cannot be pickled)."""
        child = self.child
        if not child.pinged:
            self._up(child)
        branch = self.task.branch
        if branch:
            child.send(("branch", [x], sys.maxsize))
        else:
            child.post(child.pack_map([x]))
        try:
            reply = child.receive(seconds)
            return reply[1] if branch else reply[1][0]
        except Late:
            pass
        fresh = Child(self.task, self.payload, self.index, threaded_context())
        fresh.note = self.worker.note
        self.child, self._target = fresh, (fresh, fresh.generation)  # a cancel now wakes the fresh one
        child.kill()
        from ._timeouts import timeout_error

        raise timeout_error(self.task.name, seconds)

    def _up(self, child: Child) -> None:
        """Wait for a worker to be running: its start is no part of a call's time. If it
        cannot serve (its setup raised), that stops the run: it is no item's error."""
        child.send(("ping",))
        try:
            child.receive()
        except Exception as exc:
            if isinstance(exc, (Cancelled, Broken)):
                raise
            self.worker.run.fail(exc, self.task)
            raise Cancelled from None
        child.pinged = True

    def finish(self, error: BaseException | None) -> BaseException | None:
        child = self.child
        try:
            try:
                child.end_run()  # exits its resource (setup=), or closes a stream left half read
            except BaseException as exc:  # the resource's exit (or the stream's finally) raised
                if error is None or isinstance(error, (Cancelled, Broken)):
                    error = exc
                elif exc is not error:
                    attach(error, [exc])
        finally:
            child.note = None  # this run's worker: not kept with the child
            keep(child)
        return error


class _Chunks:
    """A branching batch's outputs from the child, pulled as the relay has room."""

    seconds = 0.0  # (the child does not time a branching batch's calls)

    def __init__(self, remote: ProcessRemote) -> None:
        self.remote = remote
        self.started = False

    def next(self, m: int) -> tuple[list[Any], bool]:
        if self.started:
            self.remote.child.send(("pull", m))
        self.started = True
        reply = self.remote.receive()
        return reply[1], reply[2]


class _Session:
    """The child's join call."""

    def __init__(self, remote: ProcessRemote) -> None:
        self.remote = remote
        self.started = False

    def step(self, items: list[Any], end: bool, m: int) -> tuple[str, list[Any], list[Any]]:
        child = self.remote.child
        if not self.started:
            self.started = True
            child.send(("join", m))
        elif items:
            self.remote.sent = child.send(("feed", items))
        elif end:
            child.send(("end",))
        else:
            child.send(("pull", m))
        reply = self.remote.receive()
        if reply[0] == "need":
            return "need", reply[1], []
        if reply[2]:
            return "done", reply[1], reply[3]
        return "out", reply[1], []
