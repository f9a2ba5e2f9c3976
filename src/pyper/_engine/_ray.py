"""Executor: a Ray cluster, for sync functions with ``executor="ray"`` (see
``_executors`` for the protocol). Imported only when a Ray stage starts: importing
pyper never imports ray.

Each worker is a relay (``_relay``, shared by every remote executor); ``RayRemote`` is its
transport, Ray calls, and ``_ray_worker`` the Ray side (around ``_serve``)::

    inp channel --get--> [relay thread] --Ray task / actor call--> [Ray worker: _ray_worker]
    out channel <-flush-- [relay thread] <--status (small) + outputs (an object ref)--

A relay submits each batch as one Ray call, so that at most N calls of the stage are in
flight on the cluster. Batches grow while the calls are cheap, measured on the worker,
toward ``TARGET_SECONDS`` of calls: trivial items do not pay a Ray round trip each; a
batch short of its size waits a moment for more (``_remote.Gathering``), and the last
batches of a run end together (``_remote.Tail``). Without ``setup=`` a call is a Ray task;
with it, each worker is a Ray actor, made once with the resource and given every batch
of that worker.

A call returns two objects: a small status, which the relay reads, and the outputs.
The relay reads the outputs only if the next stage is not on Ray: between two Ray
stages it hands the next one the object reference (a ``Refs`` item), which Ray
resolves on the worker that needs it, so the data never passes through the driver.

How it stops: ``RayRemote.interrupt`` (a hook of the run's cancellation) cancels the call
in flight (``ray.cancel``, forced: the Ray worker stops) or, for an actor's call (which
cannot be forced), kills the actor; the relay's wait on it then raises and the relay
leaves. A call's error comes back as the original exception with the remote traceback as
``__cause__``; a Ray worker or node that dies is a ``WorkerProcessDied`` naming the stage
(Ray retries it first ``retries=`` times).

Ray itself: the cluster the program connected to with ``ray.init(...)`` before its
first Ray stage ran, or else one that pyper starts with ``ray.init()`` (local, or
``RAY_ADDRESS``) and Ray shuts down at exit. pyper never shuts a cluster down. It
connects before the run starts a thread (``prepare``), in the caller's thread when that
is the main thread, as a program's own ``ray.init()`` would; elsewhere on its keeper
thread, which lives as long as the program (``ensure_ray`` says why).

Who owns what: a ``RayRemote`` belongs to its relay's thread, but for what ``interrupt``
reads (``_inflight``, ``_actor``, ``_interrupted``: under its lock); ``_Shared`` (one per
stage and run) is filled once under its lock. Connecting is ``_connect_lock``'s, the
keeper thread ``_Keeper``'s (below).
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections.abc import Callable
from functools import partial
from time import perf_counter
from typing import Any

import ray
import ray.exceptions

from .._errors import Cancelled, RemoteTraceback, WorkerProcessDied, attach
from . import _relay
from ._envelope import unseal
from ._ray_worker import STARTED, Actor, Joiner, call_batch, stream_batch_task, timed_call
from ._relay import Relayed, remote_task
from ._remote import Gathering, Tail, next_size
from ._run import Run, Stage, Worker, log_event

__all__ = ["RayRemote", "Refs", "prepare", "start", "unprepare"]

#: What a batch's calls should take: a Ray call costs about 1-10 ms to make here (more
#: while the cluster's CPUs are busy), so a batch of calls of 25 ms goes about eight at a
#: time, and the CPUs wait for a round trip once per batch, not per call.
TARGET_SECONDS = 0.25
#: How long a relay whose input holds less than a batch waits for more to gather, while
#: more may come: a Ray call costs milliseconds to make, and without the wait a fast
#: producer's first items go as it happens to flush them (1, 4, 7 items: more batches,
#: each a round trip; 16 calls of 25 ms ran 5% slower).
GATHER_SECONDS = 0.002
#: What a Ray call costs to make, about: the last batches of a run are split between the
#: relays only where each share is more work than this (``Tail``).
CALL_SECONDS = 0.01
#: How many chunks a branching batch on Ray may produce ahead of the relay.
STREAM_AHEAD = 2
#: How long an actor may take to exit its resource (``setup=``) at the end of a run.
TEARDOWN_SECONDS = 5.0

#: Guards the caches below (``_jobs``, ``_sizes``): held for a dictionary's step only, as
#: ``start`` takes it on the caller's thread, maybe an event loop's.
_init_lock = threading.Lock()
#: Held while connecting to Ray (seconds, for a local Ray): one ``ray.init`` at a time.
_connect_lock = threading.Lock()


class Refs:
    """An item between two Ray stages: the object reference of one batch's outputs, and
    how many they are (counted by the workers that hand it on and take it: metrics)."""

    __slots__ = ("ref", "count")

    def __init__(self, ref: Any, count: int) -> None:
        self.ref = ref
        self.count = count


def start(run: Run, stage: Stage, workers: range) -> None:
    index = run.stages.index(stage)
    down = run.stages[index + 1].task if index + 1 < len(run.stages) else None
    # Outputs go on as references to the next stage only if it takes them as batches: not
    # to one call per item (rate=, timeout=), a join call, a grouping (batch=); and not
    # from a stage that counts its outputs in flight (throttle=), or whose outputs come to
    # the driver anyway (branch, timeout=, on_error=: the handler runs there); nor in a
    # journaled run, whose relays keep each item's lineage beside its value.
    passes_refs = (run.lineage is None and down is not None and down.executor == "ray" and not down.policy.batch
                   and down.policy.limiter is None and down.policy.timeout is None and not down.join
                   and not stage.branch and not stage.task.throttle and stage.task.policy.timeout is None
                   and stage.task.policy.on_error == "raise")
    size, cost = _remembered(stage.task)
    shared = _Shared(run, stage, passes_refs, cost)
    if size > 1 and index and not run.stages[index - 1].task.throttle:  # (a throttle bounds it)
        # The first batches as large as the last run's: its input holds them at once.
        stage.inp.widen(size * stage.task.workers)
    _relay.start(run, stage, workers, partial(RayRemote, shared))


def prepare(run: Run, stages: list[Stage]) -> None:
    """Before any stage starts (``start_all``): connect to Ray now, in the caller's thread,
    unless the program has. Not in an async run: its event loop would wait seconds for a
    local Ray to start (once per program), so there the first relay connects."""
    if run.loop is None:
        ensure_ray()


def unprepare(stages: list[Stage]) -> None:
    """Nothing to undo: the connection is the program's, kept for its next runs."""


def ensure_ray() -> None:
    """Connect to Ray unless the program has: ``ray.init()`` (a local Ray, or
    ``RAY_ADDRESS``), which Ray shuts down at exit.

    On the main thread, here, as the program's own call would be (Ray sets its SIGTERM
    handler only there, and warns elsewhere). On any other thread (a relay, a thread of
    the program's), on pyper's keeper thread (``_Keeper``), which lives as long as the
    program: Ray makes each process of a local Ray die with the thread that started it
    (``PR_SET_PDEATHSIG``, which Linux ties to a thread, not to the process), and a relay
    parks for 0.2 s after its run and ends, as may a thread of the program's. Started from
    a relay, a local Ray lost its GCS as the relay ended: a run after a pause waited 60 s
    for it and failed, and at exit Ray's shutdown waited ~5 s on it (2 s otherwise)."""
    if ray.is_initialized():
        return
    with _connect_lock:
        if ray.is_initialized():
            return
        if threading.current_thread() is threading.main_thread():
            ray.init()
        else:
            _Keeper.run(ray.init)


class _Keeper:
    """pyper's thread for what must outlive the thread that asks for it: ``ray.init`` off
    the main thread (``ensure_ray``). Started by the first such call, it runs each call
    handed to it, then waits for the next; never joined: a daemon, it ends with the
    program, after Ray's exit hook has stopped the processes it started (``atexit`` runs
    while daemon threads still exist). ``_thread`` is written under ``_connect_lock``;
    after a fork the child's is not alive, and the next call starts one."""

    _thread: threading.Thread | None = None
    _calls: queue.SimpleQueue[tuple[Callable[[], object], list[BaseException], threading.Event]]

    @classmethod
    def run(cls, call: Callable[[], object]) -> None:
        """Run ``call`` on the keeper thread and wait for it; raises what it raised."""
        if cls._thread is None or not cls._thread.is_alive():
            cls._calls = queue.SimpleQueue()
            cls._thread = threading.Thread(target=cls._serve, args=(cls._calls,), name="pyper:ray", daemon=True)
            cls._thread.start()
        errors: list[BaseException] = []
        done = threading.Event()
        cls._calls.put((call, errors, done))
        done.wait()
        if errors:
            raise errors[0]

    @staticmethod
    def _serve(calls: queue.SimpleQueue[tuple[Callable[[], object], list[BaseException], threading.Event]]) -> None:
        while True:
            call, errors, done = calls.get()
            try:
                call()
            except BaseException as exc:  # the caller's to raise
                errors.append(exc)
            finally:
                done.set()
            del call, errors, done


@functools.cache
def _remote(target: Any, **options: Any) -> Any:
    """``target`` (a function of ``_ray_worker``, or an actor class) wrapped by Ray once."""
    return ray.remote(**options)(target) if options else ray.remote(target)


class _Shared:
    """What a stage's relays share in one run: the task, put in the object store once,
    and their batches in flight (``tail``: the last ones end together)."""

    def __init__(self, run: Run, stage: Stage, passes_refs: bool, cost: float) -> None:
        self.run, self.stage, self.passes_refs = run, stage, passes_refs
        self.tail = Tail(CALL_SECONDS, cost)
        self._lock = threading.Lock()
        self._job: Any = None

    def job(self) -> Any:
        with self._lock:
            if self._job is None:
                ensure_ray()
                if self.stage.take_args:  # the first task: the run's arguments go with it
                    here, guarded = remote_task(self.stage.task)
                    self._job = ray.put((here, self.run.args, self.run.kwargs, guarded, os.getpid()))
                else:
                    self._job = _kept_job(self.stage)
            return self._job


#: The object references of tasks put in Ray's object store, kept for the next run of the
#: same task (a put costs ~1.5 ms here, each run): by ``id(task)``, with the task itself
#: (so the id is not reused while kept) and the Ray job it belongs to (a new ``ray.init``
#: makes them stale). At most JOBS_KEPT, the oldest dropped first. Guarded by _init_lock.
JOBS_KEPT = 64
_jobs: dict[int, tuple[Any, Any, Any]] = {}


def _kept_job(stage: Stage) -> Any:
    task = stage.task
    session = ray.get_runtime_context().get_job_id()
    with _init_lock:
        kept = _jobs.get(id(task))
        if kept is not None and kept[0] is task and kept[1] == session:
            return kept[2]
    here, guarded = remote_task(task)
    ref = ray.put((here, None, None, guarded, os.getpid()))
    with _init_lock:
        _jobs.pop(id(task), None)
        _jobs[id(task)] = (task, session, ref)
        while len(_jobs) > JOBS_KEPT:
            del _jobs[next(iter(_jobs))]
    return ref


class RayRemote(Relayed):
    """A relay's side of a Ray stage (``_relay.Remote``): each request a Ray call.

    ``_lock`` guards ``_inflight`` (the call under way), ``_actor`` and ``_interrupted``:
    the relay's thread writes them, ``interrupt`` (the thread that cancels the run) reads
    them, so that a call submitted as the run is cancelled is cancelled too."""

    def __init__(self, shared: _Shared, worker: Worker, index: int) -> None:
        super().__init__(worker)
        self.shared, self.index = shared, index
        stage = worker.stage
        self.task = task = stage.task
        self.name = task.name
        self._lock = threading.Lock()
        self._inflight: Any = None
        self._actor: Any = None
        self._interrupted = False
        self.job = shared.job()
        self.options = dict(task.executor_options)
        retries = task.policy.retries
        tail, inp = shared.tail, stage.inp
        if worker.ordered:  # numbered batches go as they come
            def get(n: int) -> Any:
                got = inp.get_seq(tail.size(index, n, inp))
                if got is not None:
                    tail.started(index, len(got[1]))
                return got

            self.get = get  # type: ignore[method-assign]
        else:
            self.get = Gathering(inp, GATHER_SECONDS, tail, index).get  # type: ignore[method-assign]
        # A branching stage's batches stream their outputs back in chunks, as produced, at
        # most STREAM_AHEAD chunks ahead of what the relay has handed on.
        self.streamed = dict(num_returns="streaming", _generator_backpressure_num_objects=STREAM_AHEAD)
        # A map call's (status, outputs) is one object, read at once; or two, when the
        # outputs go on to the next Ray stage as a reference.
        returns = 2 if shared.passes_refs else 1
        self._submit: Callable[[list[Any], list[Any]], Any] | None = None
        if task.join or task.policy.timeout is not None:
            return  # (made by join(), call())
        if task.policy.setup is not None:
            actor = _remote(Actor).options(max_restarts=retries, max_task_retries=retries,
                                           **self.options).remote(self.job)
            self._set_actor(actor)
            try:
                method = actor.stream.options(**self.streamed) if task.branch else actor.batch.options(num_returns=returns)
            except BaseException:  # (no relay will finish this remote side: its actor goes now)
                ray.kill(actor)
                raise
            self._submit = lambda items, upstream: method.remote(items, *upstream)
        else:
            if task.branch:
                remote = _remote(stream_batch_task).options(max_retries=retries, **self.streamed, **self.options)
            else:
                remote = _remote(call_batch).options(num_returns=returns, max_retries=retries, **self.options)
            self._submit = lambda items, upstream: remote.remote(self.job, items, *upstream)

    # -- cancellation ----------------------------------------------------------------

    def _set_actor(self, actor: Any) -> None:
        with self._lock:
            self._actor = actor

    def _start(self, ref: Any) -> Any:
        """A call just submitted is the one in flight: cancelled at once if the run is."""
        with self._lock:
            self._inflight = ref
            if not self._interrupted:
                return ref
        self._cancel(ref, self._actor)
        raise Cancelled

    def _done(self) -> None:
        with self._lock:
            self._inflight = None

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True
            ref, actor = self._inflight, self._actor
        if ref is not None:
            self._cancel(ref, actor)

    @staticmethod
    def _cancel(ref: Any, actor: Any) -> None:
        """Stop a call: a Ray task is forced to stop; an actor's call cannot be, so its
        actor is killed (a stuck call may hold its resource: it is not exited)."""
        try:
            if actor is None:
                ray.cancel(ref, force=True)
            else:
                ray.kill(actor)
        except Exception:  # done already, or the actor is gone
            pass

    def _get(self, ref: Any, timeout: float | None = None) -> Any:
        try:
            return _get(self.name, ref, timeout)
        except (WorkerProcessDied, ray.exceptions.RayError):
            if self._interrupted:  # the run's cancellation stopped it
                raise Cancelled from None
            raise

    # -- map batches -------------------------------------------------------------------

    def first(self, limit: int) -> int:
        return min(limit, _remembered(self.task)[0])

    def post(self, request: list[Any]) -> Any:
        assert self._submit is not None
        plain = [x for x in request if type(x) is not Refs]
        upstream = [x.ref for x in request if type(x) is Refs]
        if upstream:
            self.worker.refs_in += sum(x.count - 1 for x in request if type(x) is Refs)
        refs = self._submit(plain, upstream)
        self._start(refs[0] if self.shared.passes_refs else refs)
        return refs

    def reply(self, handle: Any) -> tuple[list[Any], float]:
        if self.shared.passes_refs:
            status_ref, outputs_ref = handle
            try:
                status = self._checked(self._get(status_ref))
            except BaseException:
                _forget(outputs_ref)
                raise
            finally:
                self._done()
            if not status[1]:
                return [], status[2]
            self.worker.refs_out += status[1] - 1
            return [Refs(outputs_ref, status[1])], status[2]
        try:
            status, outputs = self._get(handle)
        finally:
            self._done()
        self._checked(status)
        return outputs, status[2]

    def measured(self, asked: int, count: int, elapsed: float, seconds: float, limit: int) -> int:
        # On the calls' own time, not the round trip: the input edge holds about the
        # channel's pace of their work, and a batch grows until its calls take about
        # TARGET_SECONDS, which makes the few milliseconds a Ray call costs a small part.
        tail = self.shared.tail
        tail.finished(self.index, count, seconds)
        self.worker.stage.inp.pace(count, max(seconds, 1e-6))
        n = _next_size(asked, count, seconds, limit)
        _remember(self.task, n, tail.cost)
        return n

    def _checked(self, status: tuple[Any, ...]) -> tuple[Any, ...]:
        """The status of a call, its log records logged; raises the call's error."""
        for event, message in status[-1]:
            self.worker.note(event, message)
        if status[0] == "error":
            exc, self.worker.item = unseal(status[:-1], self.name, "its Ray worker")
            raise exc
        return status

    # -- branching batches, join, timeout ---------------------------------------------

    def stream(self, items: list[Any], m: int) -> _RayChunks:
        assert self._submit is not None
        plain = [x for x in items if type(x) is not Refs]
        upstream = [x.ref for x in items if type(x) is Refs]
        if upstream:
            self.worker.refs_in += sum(x.count - 1 for x in items if type(x) is Refs)
        return _RayChunks(self, self._start(self._submit(plain, upstream)))

    def join(self) -> _RaySession:
        # A step waits on one of the actor's threads while the call runs on the other.
        self._set_actor(_remote(Joiner, max_concurrency=2).options(**self.options).remote(self.job))
        return _RaySession(self)

    def call(self, x: Any, seconds: float) -> Any:
        """One item's call, timed from the mark it sends as it starts (``STARTED``);
        past ``seconds`` it is cancelled (a Ray task forced to stop; with ``setup=`` its
        actor killed and replaced) and the item raises ``TimeoutError``."""
        task = self.task
        streamed = dict(num_returns="streaming")
        if task.policy.setup is not None and self._actor is None:
            self._set_actor(_remote(Actor).options(**self.options).remote(self.job))
        actor = self._actor
        stream = self._start(actor.timed.options(**streamed).remote(x) if actor is not None
                             else _remote(timed_call).options(max_retries=0, **streamed, **self.options)
                             .remote(self.job, x))
        try:
            started = self._get(self._next(stream))
            assert started == STARTED
            ref = self._next(stream, perf_counter() + seconds)
            if ref is None:  # past the deadline
                self._done()
                self._cancel(stream, actor)
                if actor is not None:  # the next call gets a new actor
                    self._set_actor(None)
                if self._interrupted:
                    raise Cancelled
                from ._timeouts import timeout_error

                raise timeout_error(task.name, seconds) from None
            status, outputs = self._get(ref)
        except WorkerProcessDied:
            self._done()
            if actor is not None:  # a retry (retries=) goes to a new actor
                self._set_actor(None)
            raise
        self._done()
        self._checked(status)
        return outputs[0]

    def _next(self, stream: Any, deadline: float | None = None) -> Any:
        """The next reference a streaming call yields (waiting until ``deadline``, a
        ``perf_counter`` time: None past it); ``StopIteration`` at its end."""
        timeout = None if deadline is None else max(0.0, deadline - perf_counter())
        if not ray.wait([stream], timeout=timeout)[0]:
            return None
        if self._interrupted:
            raise Cancelled
        return next(stream)

    # -- the end ----------------------------------------------------------------------------

    def finish(self, error: BaseException | None) -> BaseException | None:
        self.shared.tail.leave(self.index)  # (a batch that raised is no sibling's work left to count)
        with self._lock:
            ref, actor, self._inflight = self._inflight, self._actor, None
        if actor is not None:
            return _release(actor, self.name, error, stuck=ref is not None or self._interrupted)
        if ref is not None:  # a call (or a stream) the run stopped before its end
            self._cancel(ref, None)
        return error


class _RayChunks:
    """A branching batch's outputs: a Ray streaming generator's chunks as they come."""

    def __init__(self, remote: RayRemote, stream: Any) -> None:
        self.remote, self.stream = remote, stream
        self.seconds = 0.0

    def next(self, m: int) -> tuple[list[Any], bool]:
        remote = self.remote
        try:
            ref = remote._next(self.stream)
        except StopIteration:
            remote._done()
            return [], True
        status, outputs = remote._get(ref)
        remote._checked(status)
        self.seconds += status[2]
        return outputs, False  # (flushed next, before the next chunk is asked for: the
        # generator waits STREAM_AHEAD ahead of what the relay has handed on)


class _RaySession:
    """A join call on its Joiner actor: each step a call of it."""

    def __init__(self, remote: RayRemote) -> None:
        self.remote = remote

    def step(self, items: list[Any], end: bool, m: int) -> tuple[str, list[Any], list[Any]]:
        remote = self.remote
        ref = remote._start(remote._actor.step.remote(items, end, m))
        try:
            status, kind, outputs, left = remote._get(ref)
        finally:
            remote._done()
        remote._checked(status)
        return kind, outputs, left


#: The batch size each task's relays reached, and the seconds per item its calls took, by
#: task, for its next run to start with: each batch is a Ray round trip, and a short run
#: would otherwise spend most of its calls growing from one item (a run's first batch is
#: also at most what its input holds then, and shrinks at once if its calls got slower);
#: and with the cost known, a short run's first batches are split evenly between the
#: relays (``Tail``), not all taken by the first. By the id of the task's function,
#: with the task (so the id is not reused while kept, and a task made again with the same
#: function and options finds it); at most SIZES_KEPT, the oldest dropped first. Guarded
#: by _init_lock (once per batch: a Ray round trip costs far more).
SIZES_KEPT = 256
_sizes: dict[int, tuple[Any, int, float]] = {}


def _remembered(task: Any) -> tuple[int, float]:
    """(batch size, seconds per item) the task's last run reached; (1, 0.0) if none."""
    with _init_lock:
        kept = _sizes.get(id(task.func))
    return (kept[1], kept[2]) if kept is not None and kept[0] == task else (1, 0.0)


def _remember(task: Any, n: int, cost: float) -> None:
    with _init_lock:
        _sizes.pop(id(task.func), None)
        _sizes[id(task.func)] = (task, n, cost)
        while len(_sizes) > SIZES_KEPT:
            del _sizes[next(iter(_sizes))]


def _next_size(n: int, done: int, seconds: float, limit: int) -> int:
    """``next_size`` toward ``TARGET_SECONDS`` (see there)."""
    return next_size(n, done, seconds, limit, TARGET_SECONDS)


def _get(name: str, ref: Any, timeout: float | None = None) -> Any:
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.TaskCancelledError:
        raise Cancelled from None
    except ray.exceptions.RayTaskError as exc:  # raised outside the call (BaseException)
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ray.exceptions.RaySystemError):  # an argument did not load
            raise _unloadable(name, cause) from None
        if isinstance(cause, BaseException):  # Ray's own envelope: its traceback is its text
            cause.__cause__ = RemoteTraceback(str(exc))
            raise cause from None
        raise
    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError) as exc:
        raise WorkerProcessDied(
            f"task {name!r}: its Ray worker died while running a call "
            f"({type(exc).__name__}: {exc})".rstrip()
        ) from None
    except ray.exceptions.RaySystemError as exc:  # e.g. the function did not load there
        raise _unloadable(name, exc) from None


def _unloadable(name: str, exc: BaseException) -> RuntimeError:
    """What to do when Ray's workers cannot load a call: ship the module at ``ray.init``.
    (Ray uploads local modules and directories for the whole job only: a task's or an
    actor's ``runtime_env`` takes ``py_modules`` and ``working_dir`` as URIs alone, and
    rejects a local path with a ``ValueError``.)"""
    why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return RuntimeError(
        f"task {name!r}: Ray could not load its call on a worker ({why}). The Ray workers "
        "import the task's function (and what it refers to) by module, as pickle does: "
        "install that module where they run, or ship it to them with "
        "ray.init(runtime_env={'py_modules': [the_module]}) before the first Ray stage runs "
        "(an imported module, or its directory: Ray uploads local code only at ray.init; "
        "ray_options={'runtime_env': ...} takes py_modules only as URIs of zip files, "
        "such as 's3://...'). A function defined in the main script goes by value"
    )


def _forget(ref: Any) -> None:
    """Drop the outputs of a call that failed, marking its error seen: Ray would print
    an unhandled error for it."""
    try:
        ray.get(ref, timeout=0)
    except Exception:
        pass


def _release(actor: Any, name: str, error: BaseException | None, stuck: bool) -> BaseException | None:
    """Exit the actor's resource (unless a call of it is stuck: the run was cancelled),
    then kill it; returns the run's error, with what the exit raised."""
    try:
        if not stuck:
            status = ray.get(actor.close.remote(), timeout=TEARDOWN_SECONDS)
            for event, message in status[-1]:
                log_event(event, message)
            if status[0] == "error":
                exc = unseal(status[:-1], name, "its Ray worker")[0]
                if error is None or isinstance(error, Cancelled):
                    error = exc
                else:
                    attach(error, [exc])
    except Exception:  # it died, or did not exit in time: killed next
        pass
    finally:
        ray.kill(actor)
    return error
