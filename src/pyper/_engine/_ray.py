"""Executor: a Ray cluster, for sync functions with ``executor="ray"`` (see
``_executors`` for the protocol). Imported only when a Ray stage starts: importing
pyper never imports ray.

Data flow, for one of a stage's N workers::

    inp channel --get--> [relay thread] --Ray task / actor call--> [Ray worker: _ray_worker]
    out channel <-flush-- [relay thread] <--status (small) + outputs (an object ref)--

Each worker is a relay, as for processes: a ``Worker`` on one of pyper's threads
that takes a batch from the input channel and submits it as one Ray call, so that
at most N calls of the stage are in flight on the cluster. Batches grow while the
calls are cheap, measured on the worker (``adapt``): trivial items do not pay a Ray
round trip each. Without ``setup=`` a call is a Ray task; with it, each worker is a
Ray actor, made once with the resource and given every batch of that worker.

A call returns two objects: a small status, which the relay reads, and the outputs.
The relay reads the outputs only if the next stage is not on Ray: between two Ray
stages it hands the next one the object reference (a ``Refs`` item), which Ray
resolves on the worker that needs it, so the data never passes through the driver.

How it stops: the relay waits for a status in steps of ``POLL_SECONDS``; once the
run is cancelled it cancels the call (``ray.cancel``, forced: the Ray worker stops),
kills its actor and leaves. A call's error comes back as the original exception
with the remote traceback as ``__cause__``; a Ray worker or node that dies is a
``WorkerProcessDied`` naming the stage (Ray retries it first ``retries=`` times).

Ray itself: the cluster the program connected to with ``ray.init(...)`` before its
first Ray stage ran, or else one that pyper starts with ``ray.init()`` (local, or
``RAY_ADDRESS``) and Ray shuts down at exit. pyper never shuts a cluster down.

Who owns what: a relay's actor and in-flight reference belong to its thread;
``_Shared`` (one per stage and run) is filled once under its lock.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from functools import partial
from time import perf_counter
from typing import Any

import ray
import ray.exceptions

from .._errors import Cancelled, RemoteTraceback, WorkerProcessDied, attach
from . import _thread
from ._ray_worker import STARTED, Actor, Joiner, call_batch, stream_batch, timed_call
from ._sync_loops import flusher
from ._remote import Gathering, Tail
from ._run import Run, Stage, Worker, adapt, log

__all__ = ["Refs", "start"]

#: How often a relay waiting for a call looks whether the run was cancelled.
POLL_SECONDS = 0.02
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

_init_lock = threading.Lock()


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
    # the driver anyway (branch, timeout=).
    passes_refs = (down is not None and down.executor == "ray" and not down.policy.batch
                   and down.policy.limiter is None and down.policy.timeout is None and not down.join
                   and not stage.branch and not stage.task.throttle and stage.task.policy.timeout is None)
    size, cost = _remembered(stage.task)
    shared = _Shared(run, stage, passes_refs, cost)
    if size > 1 and index and not run.stages[index - 1].task.throttle:  # (a throttle bounds it)
        # The first batches as large as the last run's: its input holds them at once.
        stage.inp.widen(size * stage.task.workers)
    _thread.start_jobs(run, stage, workers, partial(_relay, shared))


def ensure_ray() -> None:
    """Connect to Ray on first use (never on an event loop's thread: a relay does it)."""
    with _init_lock:
        if not ray.is_initialized():
            ray.init()  # local, or RAY_ADDRESS; Ray shuts it down at exit


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
                    job = (_remote_task(self.stage), self.run.args, self.run.kwargs)
                    self._job = ray.put(job)
                else:
                    self._job = _kept_job(self.stage)
            return self._job


def _remote_task(stage: Stage) -> Any:
    """The task as its Ray calls run it: the rate limiter stays with the relays, which
    pace the calls; with ``timeout=`` so do retries and the error policy, around each call."""
    task = stage.task
    if task.policy.timeout is not None:
        task = task._replace(policy=task.policy._replace(
            retries=0, on_error="raise", limiter=None, timeout=None, abandoned=None))
    elif task.policy.limiter is not None:
        task = task._replace(policy=task.policy._replace(limiter=None))
    return task


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
    ref = ray.put((_remote_task(stage), None, None))
    with _init_lock:
        _jobs.pop(id(task), None)
        _jobs[id(task)] = (task, session, ref)
        while len(_jobs) > JOBS_KEPT:
            del _jobs[next(iter(_jobs))]
    return ref


def _relay(shared: _Shared, run: Run, stage: Stage, index: int) -> None:
    run.enter()
    worker = Worker(run, stage)
    task = stage.task
    error: BaseException | None = None
    actor: Any = None  # with setup= or join=True: the worker's actor
    inflight: list[Any] = [None]  # the reference of the call under way, if any
    try:
        job = shared.job()
        options = dict(task.executor_options)
        retries = task.policy.retries
        # A branching stage's batches stream their outputs back in chunks, as produced, at
        # most STREAM_AHEAD chunks ahead of what the relay has handed on.
        streamed = dict(num_returns="streaming", _generator_backpressure_num_objects=STREAM_AHEAD)
        # A map call's (status, outputs) is one object, read at once; or two, when the
        # outputs go on to the next Ray stage as a reference.
        returns = 2 if shared.passes_refs else 1
        submit: Callable[[list[Any], list[Any]], Any]
        if task.join:  # a step waits on one of the actor's threads while the call runs on the other
            actor = _remote(Joiner, max_concurrency=2).options(**options).remote(job, task.branch)
            _join(worker, actor, inflight)
            return
        if task.policy.timeout is not None:
            actors: list[Any] = []
            try:
                _timed(worker, job, options, inflight, actors)
            finally:
                actor = actors[0] if actors else None
            return
        if task.policy.setup is not None:
            actor = _remote(Actor).options(max_restarts=retries, max_task_retries=retries, **options).remote(job)
            method = actor.stream.options(**streamed) if stage.branch else actor.batch.options(num_returns=returns)
            submit = lambda items, upstream: method.remote(items, *upstream)  # noqa: E731
        else:
            if stage.branch:
                remote = _remote(stream_batch).options(max_retries=retries, **streamed, **options)
            else:
                remote = _remote(call_batch).options(num_returns=returns, max_retries=retries, **options)
            submit = lambda items, upstream: remote.remote(job, items, *upstream)  # noqa: E731
        _work(worker, shared, index, submit, inflight)
    except BaseException as exc:
        error = exc
    finally:
        if actor is not None:
            error = _release(actor, task.name, error, stuck=inflight[0] is not None)
        elif inflight[0] is not None:  # a call (or a stream) the run stopped before its end
            try:
                ray.cancel(inflight[0], force=True)
            except Exception:
                pass
        worker.leave(error)


def _timed(worker: Worker, job: Any, options: dict[str, Any], inflight: list[Any], actors: list[Any]) -> None:
    """A stage with ``timeout=``: the relay runs the thread loops, one item per call, with
    retries=, on_error= and rate= around each call. A call's time counts from the mark it
    sends as it starts (``STARTED``); past the timeout it is cancelled (a Ray task forced
    to stop; with ``setup=`` its actor killed and replaced: ``actors`` holds the one
    serving) and the item raises ``TimeoutError``."""
    from ._timeouts import timeout_error

    stage, run = worker.stage, worker.run
    name = stage.task.name
    seconds = stage.task.policy.timeout
    assert seconds is not None
    streamed = dict(num_returns="streaming")
    make_actor = None
    if stage.task.policy.setup is not None:
        make_actor = partial(_remote(Actor).options(**options).remote, job)
        actors.append(make_actor())
    else:
        remote = _remote(timed_call).options(max_retries=0, **streamed, **options)

    def call(x: Any) -> Any:
        stream = inflight[0] = (actors[0].timed.options(**streamed).remote(x) if actors
                                else remote.remote(job, x))
        following = partial(next, stream)
        try:
            started = _get(run, name, _wait(run, name, stream, ready=following))
            assert started == STARTED
            deadline = perf_counter() + seconds
            status, outputs = _get(run, name, _wait(run, name, stream, ready=following, deadline=deadline))
        except WorkerProcessDied:
            inflight[0] = None
            if make_actor is not None:  # a retry (retries=) goes to a new actor
                actors[0] = make_actor()
            raise
        except _Late:
            inflight[0] = None
            try:
                ray.cancel(stream, force=not actors)  # an actor's call cannot be forced:
            except Exception:
                pass
            if make_actor is not None:  # its actor is killed, and the next call gets a new one
                ray.kill(actors[0])
                actors[0] = make_actor()
            raise timeout_error(name, seconds) from None
        # (On any other way out, the call stays in flight for the relay's end to cancel: a
        # cancelled run's actor is killed, not waited for.)
        inflight[0] = None
        _checked(worker, status)
        return outputs[0]

    _thread.run_relayed(worker, call)


class _Late(Exception):
    """A timed call's result did not come within its timeout."""


def _join(worker: Worker, joiner: Any, inflight: list[Any]) -> None:
    """Relay a join call: feed the actor the stage's input as the call asks for it, and
    hand its outputs on as they come."""
    stage, run = worker.stage, worker.run
    inp, out, box = stage.inp, stage.out, worker.box
    n = 1
    items: list[Any] = []
    end = False
    while True:
        ref = inflight[0] = joiner.step.remote(items, end, stage.emit)
        status, kind, outputs = _wait(run, stage.task.name, ref)
        inflight[0] = None
        _checked(worker, status)
        box.extend(outputs)
        if kind == "done":
            break
        if box:
            out.flush(box, False)
        items = []
        if kind == "need":
            got = worker.begin(inp.get(n))
            if got is None:
                end = True
            else:
                items = list(got)
                n = _next_size(n, len(items), status[2], stage.take)
    out.flush(box, True)


def _work(worker: Worker, shared: _Shared, index: int, submit: Callable[[list[Any], list[Any]], Any],
          inflight: list[Any]) -> None:
    stage, run = worker.stage, worker.run
    inp, box = stage.inp, worker.box
    tail = shared.tail
    get: Callable[[int], Any]
    if worker.ordered:  # numbered batches go as they come
        def get(n: int) -> Any:
            got = inp.get_seq(tail.size(index, n, inp))
            if got is not None:
                tail.started(index, len(got[1]))
            return got
    else:
        get = Gathering(inp, GATHER_SECONDS, tail, index).get
    flush = flusher(worker)
    limit = min(stage.take, stage.emit)
    limiter = stage.task.policy.limiter
    if limiter is not None:  # rate=: one call per item, each submitted when its slot comes
        limit = 1
    n = min(limit, _remembered(stage.task)[0])
    try:
        while (items := worker.begin(get(n))) is not None:
            batch = list(items)
            if limiter is not None:
                limiter.wait_turn(run.sleep)
            plain = [x for x in batch if type(x) is not Refs]
            upstream = [x.ref for x in batch if type(x) is Refs]
            if upstream:
                worker.refs_in += sum(x.count - 1 for x in batch if type(x) is Refs)
            if stage.branch:
                seconds = _stream(worker, submit(plain, upstream), flush, inflight)
            elif shared.passes_refs:
                status_ref, outputs_ref = submit(plain, upstream)
                inflight[0] = status_ref
                try:
                    status = _checked(worker, _wait(run, stage.task.name, status_ref))
                except BaseException:
                    _forget(outputs_ref)
                    raise
                inflight[0] = None
                if status[1]:
                    box.append(Refs(outputs_ref, status[1]))
                    worker.refs_out += status[1] - 1
                seconds = status[2]
            else:
                ref = inflight[0] = submit(plain, upstream)
                status, outputs = _wait(run, stage.task.name, ref)
                inflight[0] = None
                _checked(worker, status)
                box.extend(outputs)
                seconds = status[2]
            tail.finished(index, len(batch), seconds)
            flush(True)
            # On the calls' own time, not the round trip: the input edge holds about the
            # channel's pace of their work, and a batch grows until its calls take about
            # TARGET_SECONDS, which makes the few milliseconds a Ray call costs a small part.
            inp.pace(len(batch), max(seconds, 1e-6))
            n = _next_size(n, len(batch), seconds, limit)
            _remember(stage.task, n, tail.cost)
    finally:
        tail.leave(index)  # (a batch that raised is no sibling's work left to count)


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
    """``adapt`` toward TARGET_SECONDS, growing 8x at a time while a full batch took a
    small part of it: each step is a Ray round trip, so trivial items reach large
    batches in three steps, not ten.

    A batch the run's tail cut short (``Tail``: a share, ``done`` < ``n``) measures the
    cost too: if its calls took under half the target, twice what it held fits, and the
    size grows to that. (Not to the target's fit: single cheap items trickling in would
    double it every batch, and the size is remembered: the next run's input is widened
    to hold it for each worker.) Else
    the size only ever shrank: one batch a little over the target (8 calls of 25 ms
    taking 0.26 s on a busy machine) made it 7, and short runs, all tail, kept 7; the
    next run's input then held 14 of its 16 items at first, and the relays took 7 and 4
    and went back for the rest (four round trips, not two: 5-10% slower)."""
    if done >= n and seconds < TARGET_SECONDS / 16:
        return min(limit, 8 * n)
    if 0 < done < n and seconds < TARGET_SECONDS / 2:
        return min(limit, max(n, 2 * done))
    return adapt(n, done, seconds, limit, TARGET_SECONDS)


def _stream(worker: Worker, stream: Any, flush: Callable[[bool], None], inflight: list[Any]) -> float:
    """Hand on a streamed batch's chunks as they come; returns the seconds its calls took."""
    run, name, box = worker.run, worker.stage.task.name, worker.box
    inflight[0] = stream
    seconds = 0.0
    while True:
        try:
            ref = _wait(run, name, stream, ready=lambda: next(stream))
        except StopIteration:
            break
        status, outputs = _get(run, name, ref)
        _checked(worker, status)
        seconds += status[2]
        box.extend(outputs)
        flush(False)  # blocks while downstream is full: the generator waits STREAM_AHEAD ahead
    inflight[0] = None
    return seconds


def _checked(worker: Worker, status: tuple[Any, ...]) -> tuple[Any, ...]:
    """The status of a call, its log records logged; raises the call's error."""
    for level, message in status[-1]:
        worker.note(level, message)
    if status[0] == "error":
        _, exc, text, worker.item, _ = status
        raise _remote_error(worker.stage.task.name, exc, text)
    return status


def _wait(run: Run, name: str, ref: Any, ready: Callable[[], Any] | None = None,
          deadline: float | None = None) -> Any:
    """The value of ``ref`` once ready (or ``ready()``: a stream's next reference); cancels
    the call and raises ``Cancelled`` once the run is cancelled; raises ``_Late`` past the
    ``deadline`` (a ``perf_counter`` time), if given."""
    while True:
        poll = POLL_SECONDS
        if deadline is not None:
            poll = deadline - perf_counter()
            if poll <= 0:
                raise _Late
            poll = min(poll, POLL_SECONDS)
        if ready is None:
            try:
                return _get(run, name, ref, poll)
            except ray.exceptions.GetTimeoutError:
                pass
        elif ray.wait([ref], timeout=poll)[0]:
            return ready()
        if run.cancelled:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # an actor's call cannot be forced: its actor is killed
                pass
            raise Cancelled


def _get(run: Run, name: str, ref: Any, timeout: float | None = None) -> Any:
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.TaskCancelledError:
        raise Cancelled from None
    except ray.exceptions.RayTaskError as exc:  # raised outside the call (BaseException)
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ray.exceptions.RaySystemError):  # an argument did not load
            raise _unloadable(name, cause) from None
        if isinstance(cause, BaseException):
            raise _remote_error(name, cause, str(exc)) from None
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
    why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return RuntimeError(
        f"task {name!r}: Ray could not load its call on a worker ({why}). The Ray workers "
        "import the task's function (and what it refers to) by module, as pickle does: "
        "install that module where they run, or ship it with "
        "ray_options={'runtime_env': {'py_modules': [...]}} (a function defined in the "
        "main script goes by value)"
    )


def _forget(ref: Any) -> None:
    """Drop the outputs of a call that failed, marking its error seen: Ray would print
    an unhandled error for it."""
    try:
        ray.get(ref, timeout=0)
    except Exception:
        pass


def _remote_error(name: str, exc: BaseException | None, text: str) -> BaseException:
    if exc is None:
        exc = RuntimeError(f"task {name!r} raised on its Ray worker:\n{text}")
    exc.__cause__ = RemoteTraceback(text)
    return exc


def _release(actor: Any, name: str, error: BaseException | None, stuck: bool) -> BaseException | None:
    """Exit the actor's resource (unless a call of it is stuck: the run was cancelled),
    then kill it; returns the run's error, with what the exit raised."""
    try:
        if not stuck:
            status = ray.get(actor.close.remote(), timeout=TEARDOWN_SECONDS)
            for level, message in status[-1]:
                log(level, message)
            if status[0] == "error":
                exc = _remote_error(name, status[1], status[2])
                if error is None or isinstance(error, Cancelled):
                    error = exc
                else:
                    attach(error, [exc])
    except Exception:  # it died, or did not exit in time: killed next
        pass
    finally:
        ray.kill(actor)
    return error
