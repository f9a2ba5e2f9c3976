"""Executor: worker processes, for sync functions with ``multiprocess=True``
(see ``_executors`` for the protocol).

Data flow, for one of a stage's N workers::

    inp channel --get--> [relay thread] --pipe--> [child process: _child.main]
    out channel <-flush-- [relay thread] <--pipe-- (outputs, or the error)

Each worker is a relay: a ``Worker`` on one of pyper's threads that takes a batch
from the input channel, sends it to its own child process, and flushes the
outputs the child sends back. The child is started by the relay itself (never on
an event loop's thread), with the ``forkserver`` start method where there is one
and ``spawn`` elsewhere, or whatever ``multiprocessing.set_start_method`` chose:
pyper never forks the process it runs in, which may run threads. Each child has
private pipes, so terminating one corrupts nothing shared.

How it stops: a relay waits on three things at once: its child's pipe, its
child's process itself (it died: ``WorkerProcessDied``), and a wake-up pipe
written by ``Run.cancel`` (a hook). On the end of its input, on an error or on
cancellation it sends ``("stop",)``, gives the child ``GRACE_SECONDS`` to exit,
then terminates and finally kills it, and joins it: no zombie is left. An error
in the child comes back as the original exception, its traceback as
``__cause__`` (``RemoteTraceback``).

The children themselves (how they start, stop and die, and the warm pool that keeps
idle ones for the next run) are ``_workers``; the child's own loop is ``_child``.

Who owns what: a ``Child`` belongs to its relay thread; only its wake-up pipe's
write end is touched by another thread (``Run.cancel``, through ``interrupt``).
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from functools import partial
from time import perf_counter
from typing import Any

from .._errors import Broken, Cancelled, attach
from .._pickling import dumps
from .._spec import Task
from . import _thread, _threads
from ._sync_loops import flusher
from ._run import TARGET_SECONDS, Run, Stage, Worker, adapt
from ._workers import Child, Late, context, keep, sigint_held, take, take_warm, threaded_context

__all__ = ["start"]

#: Batches grow while calls are cheap, but not past this many pickled bytes each way
#: (a cheap function of large items would otherwise pickle thousands of them at once).
MAX_BATCH_BYTES = 1 << 22


def start(run: Run, stage: Stage, workers: range) -> None:
    payload = _payload(run, stage)
    ready = _forked.pop(id(stage), {})
    try:
        _thread.start_jobs(run, stage, workers, partial(_relay, payload, ready))
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
    task = stage.task
    first = stage is run.stages[0]
    try:
        if task.policy.timeout is not None:  # the relay applies these, around each call
            task = task._replace(policy=task.policy._replace(
                retries=0, on_error="raise", limiter=None, timeout=None, abandoned=None))
        elif task.policy.limiter is not None:  # the relays pace the calls: the children do not
            task = task._replace(policy=task.policy._replace(limiter=None))
        return dumps((task, run.args if first else None, run.kwargs if first else None))
    except Exception as exc:  # the function was checked at task(...): the call's arguments
        raise TypeError(
            f"task {task.name!r} runs in a process (multiprocess=True), but the pipeline's "
            f"arguments cannot be pickled to send them there ({type(exc).__name__}: {exc})"
        ) from exc


#: Children forked by ``prepare`` for a stage about to start, by ``id(stage)``; only
#: the caller's thread touches it, between ``prepare`` and ``start`` of one run.
_forked: dict[int, dict[int, Child]] = {}
os.register_at_fork(after_in_child=_forked.clear)  # the parent's, never a forked child's


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


def _relay(payload: bytes, ready: dict[int, Child], run: Run, stage: Stage, index: int) -> None:
    run.enter()
    worker = Worker(run, stage)
    error: BaseException | None = None
    child: Child | None = ready.pop(index, None)  # forked before the run's threads started
    try:
        if child is None:
            if run.cancelled:  # (Ctrl-C as the stage started: no new process for it)
                raise Cancelled
            child = take(stage.task, payload, index)
        hook = partial(child.interrupt, child.generation)
        run.on_cancel(hook)
        child.note = worker.note
        if stage.task.policy.timeout is not None:
            # The relay calls one item at a time, and a child that overruns is replaced:
            # ``current`` holds the child (and its cancel hook) serving now.
            current: list[Any] = [child, hook]
            try:
                _timed(worker, current, payload, index)
            finally:
                child, hook = current[0], current[1]
        else:
            _work(worker, child)
    except BaseException as exc:
        error = exc
        if child is not None and worker.item is None:  # the thread loops (timeout=) name it themselves
            worker.item = child.failed_on
    finally:
        if child is not None:
            try:
                child.end_run()  # exits its resource (setup=), or closes a stream left half read
            except BaseException as exc:  # the resource's exit (or the stream's finally) raised
                if error is None or isinstance(error, (Cancelled, Broken)):
                    error = exc
                else:
                    attach(error, [exc])
        if child is not None:
            run.off_cancel(hook)
            child.note = None  # this run's worker: not kept with the child
            try:
                keep(child)
            finally:
                worker.leave(error)
        else:
            worker.leave(error)


def _timed(worker: Worker, current: list[Any], payload: bytes, index: int) -> None:
    """A stage with ``timeout=``: the relay runs the thread loops, calling each item in the
    child and waiting at most the timeout; past it, the child is killed and replaced and
    the item raises ``TimeoutError``. ``retries=``, ``on_error=`` and ``rate=`` are
    applied here, around each such call (the child gets only ``setup=`` and ``unpack=``)."""
    from ._timeouts import timeout_error

    stage, run = worker.stage, worker.run
    task = stage.task
    seconds = task.policy.timeout
    assert seconds is not None

    def up(child: Child) -> None:
        """Wait for a new worker to be running: its start is no part of a call's time. If
        it cannot serve (its setup raised), that stops the run: it is no item's error."""
        child.send(("ping",))
        try:
            child.receive()
        except Exception as exc:
            if isinstance(exc, (Cancelled, Broken)):
                raise
            run.fail(exc, task)
            raise Cancelled from None

    # A branching call's outputs come back whole (a lazy iterable cannot be pickled).
    request = ("branch",) if stage.branch and task.branch else ("map",)

    def remote(x: Any) -> Any:
        child = current[0]
        if request[0] == "branch":
            child.send(("branch", [x], sys.maxsize))
        else:
            child.post(child.pack_map([x]))
        try:
            reply = child.receive(seconds)
            return reply[1] if request[0] == "branch" else reply[1][0]
        except Late:
            pass  # (a worker that died raises WorkerProcessDied: it stops the run, as without timeout=)
        run.off_cancel(current[1])
        fresh = Child(task, payload, index, threaded_context())
        current[:] = [fresh, partial(fresh.interrupt, fresh.generation)]
        run.on_cancel(current[1])
        child.kill()
        up(fresh)
        raise timeout_error(task.name, seconds)

    up(current[0])
    _thread.run_relayed(worker, remote)


def _work(worker: Worker, child: Child) -> None:
    stage = worker.stage
    if stage.task.join:
        _join(worker, child)
        return
    inp, box = stage.inp, worker.box
    get = inp.get_seq if worker.ordered else inp.get
    flush = flusher(worker)
    branch = stage.branch
    limit = min(stage.take, stage.emit)
    limiter = stage.task.policy.limiter
    if limiter is not None:  # rate=: one call per request, each sent when its slot comes
        limit = 1
    if not branch and limiter is None and not worker.ordered and not stage.task.policy.retries:
        _map(worker, child, limit)
        return
    n = m = 1
    while (items := worker.begin(get(n))) is not None:
        batch = list(items)  # all of it goes to the child: nothing is left to share
        if limiter is not None:
            limiter.wait_turn(worker.run.sleep)
        started = perf_counter()
        if branch:
            sent = child.send(("branch", batch, m))
            while True:
                chunk_started = perf_counter()
                _, outputs, done, _ = child.receive()
                box.extend(outputs)
                flush(False)  # blocks while downstream is full: the child waits for the pull
                if done:
                    break
                m = _capped(adapt(m, len(outputs), perf_counter() - chunk_started, stage.emit), m, child.received)
                child.send(("pull", m))
        else:
            sent = child.post(child.pack_map(batch))
            box.extend(child.receive()[1])
        flush(True)
        elapsed = perf_counter() - started
        inp.pace(len(batch), elapsed)
        n = _capped(adapt(n, len(batch), elapsed, limit), len(batch), max(sent, child.received))


def _map(worker: Worker, child: Child, limit: int) -> None:
    """The relay of a plain stage (unordered, no rate=, no retries): while batches are
    cheap, the next one is sent before the last one's reply is read, so the child goes
    from one to the next without waiting for the parent to hand on outputs and take more
    input. Only a request that fits in the pipe goes ahead (``Child.ahead_bytes``:
    neither side can block the other), only if the input has it now (a slow producer
    never holds back outputs), and only while both the batch in flight and the one sent
    ahead are expected to take under half the target at the last batch's cost per item.
    So slow calls go one batch at a time; a cancelled run starts at most one cheap batch
    more (the child skips one that a stop or teardown message follows); an error skips
    the one sent ahead (see ``Child.pack_map``)."""
    stage = worker.stage
    inp, out, box = stage.inp, stage.out, worker.box
    n = 1
    ahead: tuple[int, int, float, int] | None = None  # (items, bytes, sent at, n) of the request unread
    last = 0.0  # when the last reply was read
    per_item = 1.0  # the child's seconds per item in the last batch (none yet: never cheap)

    def finish() -> None:  # read the reply to ``ahead``, hand on its outputs, pace
        nonlocal n, ahead, last, per_item
        assert ahead is not None
        count, sent, since, asked = ahead
        reply = child.receive()
        box.extend(reply[1])
        now = perf_counter()
        elapsed, last, ahead = now - max(since, last), now, None  # its time, from the relay
        out.flush(box, True)
        inp.pace(count, elapsed)
        per_item = reply[3] / count if count else 1.0  # the calls' own time
        # The batch size follows the relay's time (the calls and moving the items, but not
        # handing them on): large items through a small pipe keep batches small.
        n = _capped(adapt(asked, count, elapsed, limit), count, max(sent, child.received))

    def cheap(count: int) -> bool:
        return per_item * count < TARGET_SECONDS / 2

    while True:
        got = inp.get_now(n) if ahead is not None and cheap(ahead[0] + n) else None
        if got is None:
            if ahead is not None:
                finish()
            got = inp.get(n)
        items = worker.begin(got)
        if items is None:
            break
        data = child.pack_map(list(items))  # all of it goes to the child: nothing is left to share
        if ahead is not None and len(data) > child.ahead_bytes:
            finish()
        count = worker.size
        sent = child.post(data)
        since = perf_counter()
        if ahead is not None:
            finish()
        ahead = (count, sent, since, n)
    if ahead is not None:
        finish()


def _join(worker: Worker, child: Child) -> None:
    """Relay a join call: feed the child the stage's input as it asks for it, and hand
    its outputs on as they come."""
    stage = worker.stage
    inp, out, box = stage.inp, stage.out, worker.box
    n = m = 1
    batch: list[Any] = []
    sent = 0
    started = perf_counter()
    child.send(("join", m, stage.task.branch))
    while True:
        reply = child.receive()
        box.extend(reply[1])
        if reply[0] == "need":
            if box:
                out.flush(box, False)
            if batch:  # how long the child took to read the last feed
                elapsed = perf_counter() - started
                inp.pace(len(batch), elapsed)
                n = _capped(adapt(n, len(batch), elapsed, stage.take), len(batch), sent)
            items = worker.begin(inp.get(n))
            if items is None:
                batch = []
                child.send(("end",))
            else:
                batch = list(items)
                started = perf_counter()
                sent = child.send(("feed", batch))
        elif reply[2]:
            break
        else:
            chunk_started = perf_counter()
            out.flush(box, False)
            m = _capped(adapt(m, len(reply[1]), perf_counter() - chunk_started, stage.emit), m, child.received)
            child.send(("pull", m))
    out.flush(box, True)


def _capped(n: int, count: int, size: int) -> int:
    """``n``, reduced so that ``n`` items of the size of the last batch's (``count``
    items, ``size`` bytes) stay within ``MAX_BATCH_BYTES``."""
    if n * size <= count * MAX_BATCH_BYTES:
        return n
    return max(1, count * MAX_BATCH_BYTES // size)
