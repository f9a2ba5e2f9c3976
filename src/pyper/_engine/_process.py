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
child's sentinel (the child died: ``WorkerProcessDied``), and a wake-up pipe
written by ``Run.cancel`` (a hook). On the end of its input, on an error or on
cancellation it sends ``("stop",)``, gives the child ``GRACE_SECONDS`` to exit,
then terminates and finally kills it, and joins it: no zombie is left. An error
in the child comes back as the original exception, its traceback as
``__cause__`` (``RemoteTraceback``).

Who owns what: a ``_Child`` belongs to its relay thread; only its wake-up pipe's
write end is touched by another thread (``Run.cancel``, through ``interrupt``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import wait
from time import perf_counter
from typing import Any

from .._errors import Broken, Cancelled, RemoteTraceback, WorkerProcessDied, attach
from .._pickling import dumps
from .._spec import Task
from . import _child, _thread, _threads
from ._run import Run, Stage, Worker, adapt, log

__all__ = ["start"]

#: How long a child may take to exit its worker's resource (``setup=``) at the end of a run.
TEARDOWN_SECONDS = 5.0
#: How long a child may take to exit after ``("stop",)`` before it is terminated.
GRACE_SECONDS = 0.2
#: Batches grow while calls are cheap, but not past this many pickled bytes each way
#: (a cheap function of large items would otherwise pickle thousands of them at once).
MAX_BATCH_BYTES = 1 << 22


def start(run: Run, stage: Stage) -> None:
    payload = _payload(run, stage)
    ready = _forked.pop(id(stage), {})
    try:
        _thread.start_jobs(run, stage, partial(_relay, payload, ready))
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
            _forked[id(stage)] = _fork_children(stage.task, _payload(run, stage))
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
_forked: dict[int, dict[int, _Child]] = {}


def _close_all(children: dict[int, _Child]) -> None:
    for child in children.values():
        child.close()
    children.clear()


def _fork_children(task: Task, payload: bytes) -> dict[int, _Child]:
    """Under the ``fork`` start method: the stage's children, warm ones or forked here,
    in the caller's thread, before the run starts any thread (``start_all`` prepares
    process stages first, and pyper's parked threads are ended first). Where other
    threads run, forking could deadlock a child: the children still missing are
    left to the relays, which start them with forkserver (spawn where there is none)."""
    ready: dict[int, _Child] = {}
    for index in range(task.workers):
        warm = _take_warm(task, payload)
        if warm is None:
            break
        ready[index] = warm
    missing = range(len(ready), task.workers)
    if missing and threading.active_count() == 1 + len(_threads.idle_threads()):
        _threads.retire_idle()
    if missing and threading.active_count() == 1:
        try:
            for index in missing:
                ready[index] = _Child(task, payload, index, context())
        except BaseException:
            _close_all(ready)
            raise
    return ready


# Chosen on first use, by the thread that first starts a process stage (a caller under
# fork, else a relay): every thread computes the same value, so any one may win.
_method: str | None = None


def context() -> Any:
    """The multiprocessing context process stages use.

    The start method set with ``multiprocessing.set_start_method`` before the first
    process stage runs, or else ``forkserver`` where there is one and ``spawn``
    elsewhere. Chosen once: starting a process makes ``multiprocessing`` fix its own
    default (``fork`` on Linux before Python 3.14), which must not be taken for a
    choice of the user's.
    """
    global _method
    if _method is None:
        method = multiprocessing.get_start_method(allow_none=True)
        if method is None:
            method = _no_fork()
        if method == "forkserver":
            _preload_in_fork_server()
        _method = method
    return multiprocessing.get_context(_method)


def _preload_in_fork_server() -> None:
    """Have the fork server import the child's loop (and so pyper) once, before it forks
    any worker: each worker then starts with pyper loaded (a first call ~20 ms sooner here,
    a fresh worker in 14 ms instead of 35). Only if the fork server is not running yet; the
    modules it already preloads (``__main__`` by default, or the user's) are kept."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return
    modules = list(getattr(server, "_preload_modules", ["__main__"]))
    if _child.__name__ not in modules:
        forkserver.set_forkserver_preload([*modules, _child.__name__])


def _threaded_context() -> Any:
    """The context for children started from a relay thread: never ``fork``."""
    ctx = context()
    if ctx.get_start_method() != "fork":
        return ctx
    return multiprocessing.get_context(_no_fork())


def _no_fork() -> str:
    """The start method that never forks this process: forkserver where there is one."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class _Child:
    """One worker process and the pipes to it."""

    def __init__(self, task: Task, payload: bytes, index: int, ctx: Any) -> None:
        self.task = task
        self.func = task.func  # what it was loaded with (identity: a reloaded module is new code)
        self.payload = payload
        self.busy = False  # a request was sent and its reply not yet read (owned by the relay)
        self.received = 0  # the size of the last reply, in bytes (owned by the relay)
        self.failed_on: str | None = None  # the item of the last error reply, shortened
        self.joining = False  # a join call is under way (owned by the relay)
        self.keep = True  # fit for a warm pool: not once its resource (setup=) was exited
        to_child_r, self.to_child = ctx.Pipe(duplex=False)
        self.from_child, from_child_w = ctx.Pipe(duplex=False)
        lifeline_r, self.lifeline = ctx.Pipe(duplex=False)  # closes when this process dies
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        # Guards _closed and generation: interrupt() (any thread) never writes to the wake-up
        # pipe once close() has closed it (its number may by then be another pipe's), nor
        # for a run the child no longer serves (generation: one per run it is taken for).
        self._lock = threading.Lock()
        self._closed = False
        self.generation = 0
        method = ctx.get_start_method()
        forked = method == "fork"
        try:
            # A forked child holds every descriptor this process holds: it closes this
            # child's parent ends and every other child's pipes, since holding them
            # would keep their ends open (no end-of-file, no parent-death notice).
            # The lock keeps the list whole while the child forks.
            with _idle_lock if forked else contextlib.nullcontext():
                inherited = [
                    self.to_child.fileno(), self.from_child.fileno(), self.lifeline.fileno(),
                    self._wake_r, self._wake_w, *(fd for child in _open for fd in child.fds()),
                ] if forked else []
                self.process = ctx.Process(
                    target=_child.main,
                    args=(to_child_r, from_child_w, lifeline_r, payload, method, inherited),
                    name=f"pyper:{task.name}[{index}]",
                    daemon=True,
                )
                self.process.start()
            with _idle_lock:
                _open.add(self)
        finally:
            to_child_r.close()  # the child's ends: the parent keeps none of them
            from_child_w.close()
            lifeline_r.close()

    def interrupt(self, generation: int) -> None:
        """Wake the relay of run ``generation`` from its wait (any thread)."""
        with self._lock:
            if not self._closed and generation == self.generation:
                os.write(self._wake_w, b"x")

    def send(self, message: tuple[Any, ...]) -> int:
        """Send a request; returns its size in bytes."""
        try:
            data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            kinds = sorted({type(x).__name__ for x in message[1]}) if len(message) > 1 else []
            raise TypeError(
                f"task {self.task.name!r} runs in a process (multiprocess=True), but an input "
                f"of type {', '.join(kinds)} cannot be pickled to send it there "
                f"({type(exc).__name__}: {exc}); pass picklable items"
            ) from exc
        try:
            self.to_child.send_bytes(data)
        except (BrokenPipeError, OSError):
            self._raise_died()
        self.busy = True
        if message[0] == "join":
            self.joining = True
        return len(data)

    def receive(self, timeout: float | None = None) -> tuple[Any, ...]:
        """The child's next reply, ``("out", outputs, done)`` or ``("need", outputs)``;
        raises its error, its death, ``Cancelled`` when the run is cancelled meanwhile, or
        ``_Late`` after ``timeout`` seconds. ``received`` is its size."""
        ready = wait([self.from_child, self.process.sentinel, self._wake_r], timeout)
        if not ready:
            raise _Late
        if self.from_child in ready:
            try:
                data = self.from_child.recv_bytes()
            except (EOFError, OSError):
                self._raise_died()
            self.received = len(data)
            reply: tuple[Any, ...] = pickle.loads(data)
            if reply[-1]:  # log records made in the child (a retry, a skipped item)
                for level, message in reply[-1]:
                    log(level, message)
            if reply[0] == "error" or (reply[0] == "out" and reply[2]):
                self.joining = False
            self.busy = self.joining  # a join call stopped halfway cannot serve another run
            if reply[0] == "error":
                _, exc, text, self.failed_on, _ = reply
                if exc is None:
                    exc = RuntimeError(f"task {self.task.name!r} raised in its worker process:\n{text}")
                exc.__cause__ = RemoteTraceback(text)
                raise exc
            return reply
        if self._wake_r in ready:
            raise Cancelled
        self._raise_died()
        raise AssertionError("unreachable")

    def _raise_died(self) -> None:
        self.process.join(GRACE_SECONDS)
        code = self.process.exitcode
        if code is None:
            how = "closed its pipe"
        elif code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        raise WorkerProcessDied(
            f"task {self.task.name!r}: its worker process {self.process.name} (pid "
            f"{self.process.pid}) {how} while running a call"
        )

    def fds(self) -> list[int]:
        """Descriptors held for this child: its pipes, and those multiprocessing keeps for
        it until it is closed (its sentinel and, for forkserver, a duplicate of a pipe)."""
        popen = getattr(self.process, "_popen", None)
        finalizer = getattr(popen, "finalizer", None)
        kept = [fd for fd in getattr(finalizer, "_args", ()) if isinstance(fd, int)]
        return [
            self.to_child.fileno(), self.from_child.fileno(), self.lifeline.fileno(),
            self._wake_r, self._wake_w, self.process.sentinel, *kept,
        ]

    def reusable_for(self, task: Task, payload: bytes) -> bool:
        return self.func is task.func and self.payload == payload and self.process.is_alive()

    def kill(self) -> None:
        """Kill the child at once (a call past its timeout), then close it."""
        if self.process.exitcode is None:
            self.process.kill()
        self.close()

    def teardown(self) -> None:
        """Have the child exit its worker's resource (``setup=``) now, while this run can
        still raise what that raises; it then serves no other run."""
        self.keep = False
        if self.process.exitcode is not None:
            return  # gone (killed at a timeout, or died): the resource went with it
        try:
            self.to_child.send_bytes(pickle.dumps(("teardown",)))
        except (BrokenPipeError, OSError):
            return
        if self.joining:  # in a join call: it unwinds, exits the resource and the process
            self.process.join(TEARDOWN_SECONDS)
            return
        if self.busy:
            # A call in flight (the run stopped): its reply comes first and is dropped. A
            # child waiting out a retry's backoff takes the message as a stop: it exits its
            # resource and ends (end of file here).
            try:
                if not self.from_child.poll(TEARDOWN_SECONDS):
                    return  # stuck in the call: close() terminates it
                self.from_child.recv_bytes()
            except (EOFError, OSError):
                return
            self.busy = False
        if not self.from_child.poll(TEARDOWN_SECONDS):
            return  # closed (terminated) by close() next
        try:
            reply: tuple[Any, ...] = pickle.loads(self.from_child.recv_bytes())
        except (EOFError, OSError):
            return
        for level, message in reply[-1]:
            log(level, message)
        if reply[0] == "error":
            _, exc, text, _, _ = reply
            if exc is None:
                exc = RuntimeError(f"the setup resource of task {self.task.name!r} raised as it "
                                   f"was exited, in its worker process:\n{text}")
            exc.__cause__ = RemoteTraceback(text)
            raise exc

    def settle(self) -> bool:
        """After a run: whether this child is idle and clean, fit to be kept warm."""
        with self._lock:
            self.generation += 1  # a late cancel of the run that is over wakes nobody
        try:
            while os.read(self._wake_r, 64):  # a cancel's wake-up left from the run
                pass
        except BlockingIOError:
            pass
        return self.keep and not self.busy and self.process.is_alive()

    def close(self) -> None:
        """Stop the child (ask, then terminate, then kill), join it, close every pipe."""
        process = self.process
        if process.exitcode is None:
            try:
                self.to_child.send_bytes(pickle.dumps(("stop",)))
            except (BrokenPipeError, OSError):
                pass
            process.join(GRACE_SECONDS)
            if process.exitcode is None:
                process.terminate()
                process.join(GRACE_SECONDS)
            if process.exitcode is None:
                process.kill()
        process.join()
        with _idle_lock:
            _open.discard(self)
        process.close()
        self.to_child.close()
        self.from_child.close()
        self.lifeline.close()
        with self._lock:
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)


# -- warm children --------------------------------------------------------------------
# A child whose run is over, idle and clean, is kept for the next run of the same task
# (the same function object and the same pickled payload: never stale code, since a
# redefined or reloaded function is another object), so that calling a pipeline again
# costs no process start. At most IDLE_MAX are kept, the oldest closed first; all are
# closed at interpreter exit, and a lifeline makes any child exit with this process.
# ``_idle`` is guarded by ``_idle_lock``.

IDLE_MAX = 8
_idle_lock = threading.Lock()  # also guards _open
_idle: list[_Child] = []
_open: set[_Child] = set()  # every child started and not yet closed, warm or at work
_exiting = False


def _take_warm(task: Task, payload: bytes) -> _Child | None:
    with _idle_lock:
        for i, child in enumerate(_idle):
            if child.reusable_for(task, payload):
                del _idle[i]
                return child
    return None


def _take(task: Task, payload: bytes, index: int) -> _Child:
    return _take_warm(task, payload) or _Child(task, payload, index, _threaded_context())


def _keep(child: _Child) -> None:
    closing = [child]
    if child.settle():
        with _idle_lock:
            if not _exiting:
                _idle.append(child)
                closing = _idle[:-IDLE_MAX] if len(_idle) > IDLE_MAX else []
                del _idle[: len(closing)]
    for old in closing:
        old.close()


def _close_idle() -> None:
    global _exiting
    with _idle_lock:
        _exiting = True
        idle = list(_idle)
        _idle.clear()
    for child in idle:
        child.close()


def idle_processes() -> list[Any]:
    """Worker processes kept warm for reuse: idle, and gone at interpreter exit."""
    with _idle_lock:
        return [child.process for child in _idle]


def idle_fds() -> set[int]:
    """The file descriptors this process holds for the warm children (their pipes)."""
    with _idle_lock:
        return {fd for child in _idle for fd in child.fds()}


def _after_fork_in_child() -> None:
    # The parent's children are not this process's, and the lock may have been held
    # (a fork happens while _Child.__init__ holds it): start afresh, closing nothing.
    global _idle_lock, _exiting
    _idle_lock = threading.Lock()
    _idle.clear()
    _open.clear()
    _forked.clear()
    _exiting = True  # this process keeps no warm children of its own


_threads.add_exit_hook(_close_idle)
os.register_at_fork(after_in_child=_after_fork_in_child)


class _Late(Exception):
    """No reply within the call's timeout."""


def _relay(payload: bytes, ready: dict[int, _Child], run: Run, stage: Stage, index: int) -> None:
    run.enter()
    worker = Worker(run, stage)
    error: BaseException | None = None
    child: _Child | None = ready.pop(index, None)  # forked before the run's threads started
    try:
        if child is None:
            child = _take(stage.task, payload, index)
        hook = partial(child.interrupt, child.generation)
        run.on_cancel(hook)
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
        if child is not None and stage.task.policy.setup is not None:
            try:
                child.teardown()
            except BaseException as exc:  # the resource's exit raised
                if error is None or isinstance(error, (Cancelled, Broken)):
                    error = exc
                else:
                    attach(error, [exc])
        if child is not None:
            run.off_cancel(hook)
            try:
                _keep(child)
            finally:
                worker.leave(error)
        else:
            worker.leave(error)


def _timed(worker: Worker, current: list[Any], payload: bytes, index: int) -> None:
    """A stage with ``timeout=``: the relay runs the thread loops, calling each item in the
    child and waiting at most the timeout; past it, the child is killed and replaced and
    the item raises ``TimeoutError``. ``retries=``, ``on_error=`` and ``rate=`` are
    applied here, around each such call (the child gets only ``setup=`` and ``unpack=``)."""
    from ._sync_calls import run_worker
    from ._sync_loops import work
    from ._timeouts import timeout_error

    stage, run = worker.stage, worker.run
    task = stage.task
    seconds = task.policy.timeout
    assert seconds is not None

    def up(child: _Child) -> None:
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
    request = ("branch", None, sys.maxsize) if stage.branch and task.branch else ("map", None)

    def remote(x: Any) -> Any:
        child = current[0]
        child.send((request[0], [x], *request[2:]))
        try:
            reply = child.receive(seconds)
            return reply[1] if request[0] == "branch" else reply[1][0]
        except _Late:
            pass  # (a worker that died raises WorkerProcessDied: it stops the run, as without timeout=)
        run.off_cancel(current[1])
        fresh = _Child(task, payload, index, _threaded_context())
        current[:] = [fresh, partial(fresh.interrupt, fresh.generation)]
        run.on_cancel(current[1])
        child.kill()
        up(fresh)
        raise timeout_error(task.name, seconds)

    up(current[0])
    here = task._replace(func=remote, policy=task.policy._replace(setup=None, unpack=False))
    worker.stage = Stage(here, remote, stage.inp, stage.out, stage.take, stage.emit, stage.take_args)
    try:
        run_worker(worker, work, None, {}, run.sleep, log)
    finally:
        worker.stage = stage


def _work(worker: Worker, child: _Child) -> None:
    stage = worker.stage
    if stage.task.join:
        _join(worker, child)
        return
    inp, out, box = stage.inp, stage.out, worker.box
    get = inp.get_seq if worker.ordered else inp.get
    if worker.ordered:
        flush: Callable[[bool], None] = lambda last: out.flush_seq(worker.seq, box, last)
    else:
        flush = lambda last: out.flush(box, last)
    branch = stage.branch
    limit = min(stage.take, stage.emit)
    limiter = stage.task.policy.limiter
    if limiter is not None:  # rate=: one call per request, each sent when its slot comes
        limit = 1
    n = m = 1
    while (items := worker.begin(get(n))) is not None:
        batch = list(items)  # all of it goes to the child: nothing is left to share
        if limiter is not None:
            seconds, slot = limiter.reserve()
            if seconds > 0:
                try:
                    worker.run.sleep(seconds)
                except BaseException:
                    limiter.give_back(slot)
                    raise
                limiter.started(slot)
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
            sent = child.send(("map", batch))
            box.extend(child.receive()[1])
        flush(True)
        elapsed = perf_counter() - started
        inp.pace(len(batch), elapsed)
        n = _capped(adapt(n, len(batch), elapsed, limit), len(batch), max(sent, child.received))


def _join(worker: Worker, child: _Child) -> None:
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
