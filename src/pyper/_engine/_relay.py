"""The relay: how every remote executor (processes, Ray, an executor of the user's) runs a
stage whose calls run elsewhere. Written once; an executor supplies a ``Remote`` per
worker (its transport: a worker process's pipes, Ray calls, futures) and the remote
side runs ``_serve``.

Data flow, for one of a stage's N workers::

    inp channel --get--> [relay thread] --request--> [remote side: _serve]
    out channel <-flush-- [relay thread] <--reply--- (outputs, or a sealed error)

Each worker is a relay: a ``Worker`` on one of pyper's threads that takes a batch from the
input channel, sends it to its remote side as one request, and flushes the outputs that
come back. Batches are sized by the executor (``Remote.get``, ``Remote.measured``: a
worker process's batches follow the relay's time, a Ray stage's the calls' own), and a
remote side that queues requests (``Remote.ahead``: a worker process's pipe) is sent the
next cheap batch before the last one's reply is read, so it never waits for the relay.

What runs where (``remote_task``): ``setup=`` and ``unpack=`` on the remote side, with
``retries=`` unless the task has ``timeout=``; ``on_error=``, ``rate=`` and ``timeout=``
here, in the caller's process, the same for every executor: a call that fails remotely
comes back as a ``_serve.Failed`` in place of its outputs and its handler runs here
(``_kept``). With ``timeout=`` the relay calls one item at a time (``Remote.call``, which
gives up at the deadline) and runs the thread loops around it, with retries and the error
policy here.

How it stops: the relay's ``Remote.interrupt`` is a hook of the run's cancellation
(``Run.on_cancel``): it wakes the relay wherever it waits on its remote side (a wake-up
pipe; a Ray call cancelled; a future's wait), which then raises ``Cancelled``; waits on the
channels end by the channels' own cancellation. Either way the relay leaves through
``Remote.finish``, which tears the remote side down (its resource exited, its process kept
warm or closed, its actor killed) and reports what that raised with the run's error.

Who owns what: a relay's ``Worker`` and ``Remote`` belong to its thread; only
``Remote.interrupt`` is called from another (the thread that cancels the run).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from time import perf_counter
from typing import Any, Protocol

from .._policy import where
from .._spec import Task
from ._envelope import unseal
from ._run import Run, Stage, Worker, adapt
from ._serve import Failed
from ._sync_calls import handle_failure, run_worker
from ._sync_loops import flusher, work

__all__ = ["Chunks", "Relayed", "Remote", "Session", "remote_task", "start"]


class Chunks(Protocol):
    """A branching batch's outputs, as the remote side makes them."""

    seconds: float  #: the calls' own time so far (0: not measured there)

    def next(self, m: int) -> tuple[list[Any], bool]:
        """The next outputs (asking for up to ``m``, where the remote side lets the relay
        choose), and whether the batch is done."""


class Session(Protocol):
    """A join call on the remote side."""

    def step(self, items: list[Any], end: bool, m: int) -> tuple[str, list[Any], list[Any]]:
        """Feed ``items`` (``end``: the input is over); ("need" | "out" | "done", outputs,
        with "done" what the call was fed and did not read), asking for up to ``m``
        outputs at once (the call waits for the next step past them)."""


class Remote(Protocol):
    """One worker's remote side, as its relay drives it: made by the executor for the
    relay (``open(worker, index)``), used by the relay's thread only, but for
    ``interrupt``. Every wait raises the remote call's error (sealed there, unsealed
    here, its item's repr given to ``worker.item``), ``WorkerProcessDied`` when the remote
    worker died, and ``Cancelled`` once ``interrupt`` was called."""

    #: A map request may be sent before the last one's reply is read (the remote side
    #: queues it): the relay does so while calls are cheap.
    ahead: bool

    def first(self, limit: int) -> int:
        """The first batch size (at most ``limit``)."""

    def get(self, n: int) -> Any:
        """The next batch from the stage's input (up to ``n`` items, numbered when ordered:
        what ``Worker.begin`` takes), blocking; None at the end."""

    def get_now(self, n: int) -> list[Any] | None:
        """Up to ``n`` items if the input has some now (to send ahead), else None."""

    def cheap(self, count: int) -> bool:
        """Whether ``count`` items are cheap enough to have two requests in flight."""

    def pack(self, items: list[Any]) -> Any:
        """A map request for ``items`` (serialized, if the transport sends bytes)."""

    def fits(self, request: Any) -> bool:
        """Whether ``request`` may go ahead of the reply the relay has not read yet."""

    def post(self, request: Any) -> Any:
        """Send a map request; a handle for ``reply``."""

    def reply(self, handle: Any) -> tuple[list[Any], float]:
        """(outputs, seconds the calls took there) of a map request."""

    def measured(self, asked: int, count: int, elapsed: float, seconds: float, limit: int) -> int:
        """A batch of ``count`` items (``asked`` for) is back, ``elapsed`` seconds after it
        went (``seconds`` in its calls): pace the input; the next batch size."""

    def cap(self, n: int, count: int) -> int:
        """``n`` reduced so that ``n`` items of the last reply's (``count`` items) stay
        within what one message may carry."""

    def stream(self, items: list[Any], m: int) -> Chunks:
        """Start a branching batch (up to ``m`` outputs in its first chunk)."""

    def join(self) -> Session:
        """Start the join call."""

    def call(self, x: Any, seconds: float) -> Any:
        """One item's call, given up at ``seconds`` (``timeout=``): its output (the list
        of its outputs, branching); ``TimeoutError`` past it, the remote worker replaced."""

    def interrupt(self) -> None:
        """The run is cancelled (any thread): wake the relay wherever it waits on its remote side."""

    def finish(self, error: BaseException | None) -> BaseException | None:
        """The relay is done: tear the remote side down; the run's error, with what the
        teardown raised."""


class Relayed:
    """What most remote sides share: batches taken as the input has them (numbered when
    ordered), sized by ``adapt`` on the relay's time, one request at a time."""

    ahead = False

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        inp = worker.stage.inp
        self.get = inp.get_seq if worker.ordered else inp.get  # type: ignore[method-assign]
        self.get_now = inp.get_now  # type: ignore[method-assign]

    def first(self, limit: int) -> int:
        return 1

    def get(self, n: int) -> Any:  # (set per instance)
        raise NotImplementedError

    def get_now(self, n: int) -> list[Any] | None:  # (set per instance)
        raise NotImplementedError

    def cheap(self, count: int) -> bool:
        return False

    def pack(self, items: list[Any]) -> Any:
        return items

    def fits(self, request: Any) -> bool:
        return True

    def measured(self, asked: int, count: int, elapsed: float, seconds: float, limit: int) -> int:
        self.worker.stage.inp.pace(count, elapsed)
        return self.cap(adapt(asked, count, elapsed, limit), count)

    def cap(self, n: int, count: int) -> int:
        return n


def start(run: Run, stage: Stage, workers: range, open_remote: Callable[[Worker, int], Remote]) -> None:
    """Start a relay for each worker of ``workers``, on pyper's threads (never waiting on
    an event loop's thread: a remote side starts in its relay)."""
    run.start_threads(stage, workers, partial(_relay, open_remote))


def remote_task(task: Task) -> tuple[Task, bool]:
    """The task as its remote side runs it (the options the table says run beside the
    call: ``_policy.OPTIONS``), and whether its calls are guarded there (a failure comes
    back as a ``Failed``: ``on_error=`` runs in the relay). The relay keeps ``rate=`` (it
    paces the requests), ``on_error=`` and ``timeout=``, and with ``timeout=`` the retries
    too (around each timed call)."""
    policy = task.policy
    if not policy.any:
        return task, False
    timed = policy.timeout is not None
    call, _ = where(policy, timed)
    return task._replace(policy=call), policy.on_error != "raise" and not timed


def _relay(open_remote: Callable[[Worker, int], Remote], run: Run, stage: Stage, index: int) -> None:
    run.enter()
    worker = Worker(run, stage)
    error: BaseException | None = None
    remote: Remote | None = None
    try:
        remote = open_remote(worker, index)
        run.on_cancel(remote.interrupt)
        task = stage.task
        if task.policy.timeout is not None:
            _timed(worker, remote)
        elif task.join:
            _join(worker, remote)
        elif task.branch:
            _stream(worker, remote)
        else:
            _map(worker, remote)
    except BaseException as exc:
        error = exc
    finally:
        try:
            if remote is not None:
                run.off_cancel(remote.interrupt)
                error = remote.finish(error)
        finally:
            worker.leave(error)


def _kept(worker: Worker) -> Callable[[list[Any]], list[Any]] | None:
    """With ``on_error=``: what replaces each ``Failed`` among outputs (the handler's
    ``Emit``, or nothing), the handler called here; None without it."""
    task = worker.stage.task
    if task.policy.on_error == "raise" or task.policy.timeout is not None:
        return None
    first = worker.stage.take_args  # the first task's one input is the pipeline's arguments

    def kept(outputs: list[Any]) -> list[Any]:
        if not any(type(output) is Failed for output in outputs):
            return outputs
        result: list[Any] = []
        for output in outputs:
            if type(output) is not Failed:
                result.append(output)
                continue
            exc, _ = unseal(output.envelope, task.name)
            assert isinstance(exc, Exception)  # only an Exception is sealed as a Failed
            item = None if first else output.item
            worker.failed_on(output.item)  # (named if the handler raises)
            result.extend(handle_failure(task, item, exc, worker.note, "its call" if first else None))
            worker.item = None
        return result

    return kept


def _map(worker: Worker, remote: Remote) -> None:
    """Map batches: each one request, its outputs flushed as one batch. While calls are
    cheap and the remote side queues requests, the next batch goes before the last one's
    reply is read (only one that fits, only if the input has it now: a slow producer never
    holds back outputs), so the remote side goes from one batch to the next without
    waiting for the relay to hand on outputs and take more input."""
    stage, run = worker.stage, worker.run
    box = worker.box
    flush = flusher(worker)
    kept = _kept(worker)
    limiter = stage.task.policy.limiter
    limit = 1 if limiter is not None else min(stage.take, stage.emit)  # rate=: one call per request
    ahead = remote.ahead and limiter is None and not worker.ordered
    n = remote.first(limit)
    # (handle, items, asked, sent at, a journaled run's nodes of the items): its reply unread
    pending: tuple[Any, int, int, float, list[Any] | None] | None = None
    last = 0.0  # when the last reply was read
    lineage, listed = run.lineage, stage.task.policy.batch > 0

    def finish() -> None:
        nonlocal n, pending, last
        assert pending is not None
        handle, count, asked, since, nodes = pending
        pending = None
        outputs, seconds = remote.reply(handle)
        now = perf_counter()
        elapsed, last = now - max(since, last), now  # its time, from the relay
        if nodes is not None:
            assert lineage is not None
            box.extend(lineage.relayed(nodes, outputs, kept, Failed))
        else:
            box.extend(outputs if kept is None else kept(outputs))
        flush(True)
        n = remote.measured(asked, count, elapsed, seconds, limit)

    while True:
        got = remote.get_now(n) if pending is not None and remote.cheap(pending[1] + n) else None
        if got is None:
            if pending is not None:
                finish()
            got = remote.get(n)
        items = worker.begin(got)
        if items is None:
            break
        batch = list(items)  # all of it goes to the remote side: nothing is left to share
        nodes = None
        if lineage is not None:  # a journaled run: the values go, their nodes stay here
            nodes, batch = lineage.split(batch, listed)
        if limiter is not None:
            limiter.wait_turn(run.sleep)
        request = remote.pack(batch)
        if pending is not None and not remote.fits(request):
            finish()
        handle = remote.post(request)
        since = perf_counter()
        if pending is not None:
            finish()
        pending = (handle, len(batch), n, since, nodes)
        if not ahead:
            finish()
    if pending is not None:
        finish()


def _stream(worker: Worker, remote: Remote) -> None:
    """Branching batches: each one's outputs handed on as the remote side makes them, the
    next chunk asked for only once the last one is flushed (a generator there runs no
    further ahead than the room downstream allows)."""
    stage, run = worker.stage, worker.run
    box = worker.box
    flush = flusher(worker)
    kept = _kept(worker)
    limiter = stage.task.policy.limiter
    limit = 1 if limiter is not None else stage.take
    n = remote.first(limit)
    m = 1
    lineage, listed = run.lineage, stage.task.policy.batch > 0
    while (items := worker.begin(remote.get(n))) is not None:
        batch = list(items)
        holder = None
        if lineage is not None:  # a journaled run: the batch's outputs hold all its items' nodes
            nodes, batch = lineage.split(batch, listed)
            holder = lineage.holder(nodes)
        if limiter is not None:
            limiter.wait_turn(run.sleep)
        started = perf_counter()
        chunks = remote.stream(batch, m)
        while True:
            chunk_started = perf_counter()
            outputs, done = chunks.next(m)
            outputs = outputs if kept is None else kept(outputs)
            box.extend(outputs if holder is None else lineage.held(holder, outputs))  # type: ignore[union-attr]
            flush(False)  # blocks while downstream is full: the remote side waits for the pull
            if done:
                break
            m = remote.cap(adapt(m, len(outputs), perf_counter() - chunk_started, stage.emit), len(outputs) or 1)
        flush(True)
        if holder is not None:
            lineage.give(holder)  # type: ignore[union-attr]  # (the batch's stream has ended)
        elapsed = perf_counter() - started
        n = remote.measured(n, len(batch), elapsed, chunks.seconds, limit)


def _join(worker: Worker, remote: Remote) -> None:
    """A join call: its input fed to it as it asks for it, its outputs handed on as they come."""
    stage = worker.stage
    inp, out, box = stage.inp, stage.out, worker.box
    session = remote.join()
    n = m = 1
    batch: list[Any] = []
    started = 0.0
    kind, outputs, left = session.step([], False, m)
    while True:
        box.extend(outputs)
        if kind == "done":
            worker.read += len(batch) - len(left)
            if left:  # it returned early: what it did not read goes back to its siblings
                worker.hand.items = iter(left)  # (Worker.leave gives the claim back)
            break
        if kind == "need":
            worker.read += len(batch)  # it asks for more: it read all it was fed
            worker.settle()
            if box:
                out.flush(box, False)
            if batch:  # how long the call took to read the last feed
                elapsed = perf_counter() - started
                inp.pace(len(batch), elapsed)
                n = remote.cap(adapt(n, len(batch), elapsed, stage.take), len(batch))
            items = worker.begin(inp.get(n))
            if items is None:
                batch = []
                kind, outputs, left = session.step([], True, m)
            else:
                batch = list(items)
                started = perf_counter()
                kind, outputs, left = session.step(batch, False, m)
        else:
            chunk_started = perf_counter()
            out.flush(box, False)
            m = remote.cap(adapt(m, len(outputs), perf_counter() - chunk_started, stage.emit), len(outputs) or 1)
            kind, outputs, left = session.step([], False, m)
    out.flush(box, True)


def _timed(worker: Worker, remote: Remote) -> None:
    """A stage with ``timeout=``: the thread loops, with ``Remote.call`` as the call (one
    item, given up at the deadline), and ``retries=``, ``on_error=`` and ``rate=`` around
    it here (the remote side has ``setup=`` and ``unpack=``)."""
    task = worker.stage.task
    seconds = task.policy.timeout
    assert seconds is not None
    _, here = where(task.policy, timed=True)
    here = here._replace(timeout=None, abandoned=None)  # (applied by remote.call)
    relayed = task._replace(func=partial(remote.call, seconds=seconds), policy=here)
    # (args None: the remote side holds the pipeline's arguments for the first task)
    run_worker(worker, work, None, {}, worker.run.sleep, task=relayed)
