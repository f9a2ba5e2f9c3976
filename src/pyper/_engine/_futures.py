"""Executor: a ``concurrent.futures.Executor`` of the user's (``executor=pool``: a
``ThreadPoolExecutor``, a ``ProcessPoolExecutor``, loky's, a Dask ``client.get_executor()``;
see ``_executors`` for the protocol).

Each worker is a relay (``_relay``, shared by every remote executor) and ``FuturesRemote``
its transport: each batch is one ``submit`` of ``_serve.call_batch`` (the remote side),
so at most ``workers`` batches of the stage are in the user's executor at once::

    inp channel --get--> [relay thread] --executor.submit(batch)--> [the executor's worker: _serve]
    out channel <-flush-- [relay thread] <--future's result------- (status, outputs)

Batches grow toward ``TARGET_SECONDS`` of calls (their own time, measured there), as a
Ray stage's do (``_remote.next_size``): a thread pool's round trip costs tens of
microseconds, a process pool's or Dask's milliseconds. A branching batch's outputs come
back all at once (a future has one result), so a generator runs to its end per batch.

pyper never shuts the executor down and never waits for it: ``interrupt`` (a hook of the
run's cancellation) cancels the future in flight (``Future.cancel``: one not started never
runs) and wakes the relay, which leaves at once; a call already running finishes in the
executor and its result is dropped. ``timeout=`` stops waiting at the deadline the same
way. A worker of the executor that dies (``BrokenExecutor``) is ``WorkerProcessDied``.

Who owns what: a ``FuturesRemote`` belongs to its relay's thread; ``interrupt`` (another
thread) reads ``_current`` (the future in flight and its event) and sets ``_interrupted``
under ``_lock``, and wakes the relay through the future's own event (set by its done
callback, or by ``interrupt``). A request is never submitted once ``_interrupted`` is set.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import BrokenExecutor, CancelledError, Future
from functools import partial
from typing import Any

from .._errors import Cancelled, WorkerProcessDied
from . import _relay, _state
from ._envelope import unseal
from ._relay import Relayed, remote_task
from ._remote import next_size
from ._run import Run, Stage, Worker
from ._serve import Job, call_batch, call_whole

__all__ = ["FuturesRemote", "start"]

#: What a batch's calls should take: a round trip costs 20-50 us on a thread pool, about
#: 0.3 ms on a process pool and milliseconds on Dask; batches of 20 ms of calls make that
#: a small part, and still share the work out between the workers.
TARGET_SECONDS = 0.02


def start(run: Run, stage: Stage, workers: range) -> None:
    _state.exit_first()  # (at exit: the runs nobody finishes cancelled before the executor stops)
    here, guarded = remote_task(stage.task)
    # (the executor itself stays here: the remote side only calls the function)
    job: Job = (here._replace(executor="thread"), run.args if stage.take_args else None,
                run.kwargs if stage.take_args else None, guarded, os.getpid())
    _relay.start(run, stage, workers, partial(FuturesRemote, job))


class FuturesRemote(Relayed):
    """A relay's side of a stage on the user's executor (``_relay.Remote``): each request
    a future, waited for on an event of its own (set by its done callback, or by
    ``interrupt``): a future given up at its timeout, which ends later, wakes nobody."""

    def __init__(self, job: Job, worker: Worker, index: int) -> None:
        super().__init__(worker)
        self.job = job
        self.task = worker.stage.task
        self.executor = self.task.executor
        self._lock = threading.Lock()
        self._current: tuple[Future[Any], threading.Event] | None = None  # the future in flight
        self._interrupted = False

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True
            current = self._current
        if current is not None:
            future, woken = current
            future.cancel()  # (one not started never runs)
            woken.set()

    def _submit(self, function: Any, *args: Any) -> tuple[Future[Any], threading.Event]:
        with self._lock:
            if self._interrupted:  # the run was cancelled: nothing more goes to the executor
                raise Cancelled
        try:
            future: Future[Any] = self.executor.submit(function, *args)
        except BrokenExecutor as exc:  # (a RuntimeError too: first)
            raise WorkerProcessDied(f"task {self.task.name!r}: a worker of its executor died "
                                    f"({type(exc).__name__}: {exc})") from exc
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise RuntimeError(f"task {self.task.name!r}: its executor refused the call ({exc}); "
                               "was it shut down while the pipeline ran?") from exc
        woken = threading.Event()
        future.add_done_callback(lambda _: woken.set())  # (holds the event only)
        with self._lock:
            self._current = (future, woken)
            interrupted = self._interrupted
        if interrupted:
            future.cancel()
            raise Cancelled
        return future, woken

    def _result(self, handle: tuple[Future[Any], threading.Event], timeout: float | None = None) -> Any:
        """The future's outputs and its calls' seconds, its error raised as the original
        exception; ``TimeoutError`` past ``timeout`` (the future cancelled, if it had not
        started)."""
        future, woken = handle
        woken.wait(timeout)
        with self._lock:
            self._current = None
            interrupted = self._interrupted
        if not future.done():
            future.cancel()  # (a call running now finishes in the executor: dropped)
            if interrupted:
                raise Cancelled
            raise TimeoutError
        try:
            status, outputs = future.result()
        except CancelledError:
            if interrupted:
                raise Cancelled from None
            raise RuntimeError(f"task {self.task.name!r}: its executor cancelled a call (was it "
                               "shut down while the pipeline ran?)") from None
        except BrokenExecutor as exc:
            raise WorkerProcessDied(f"task {self.task.name!r}: a worker of its executor died while "
                                    f"running a call ({type(exc).__name__}: {exc})") from exc
        for event, message in status[-1]:
            self.worker.note(event, message)
        if status[0] == "error":
            error, self.worker.item = unseal(status[:-1], self.task.name, "its executor")
            raise error
        return outputs, status[2]

    def post(self, request: list[Any]) -> tuple[Future[Any], threading.Event]:
        return self._submit(call_batch, self.job, request)

    def reply(self, handle: tuple[Future[Any], threading.Event]) -> tuple[list[Any], float]:
        result: tuple[list[Any], float] = self._result(handle)
        return result

    def measured(self, asked: int, count: int, elapsed: float, seconds: float, limit: int) -> int:
        self.worker.stage.inp.pace(count, max(seconds, 1e-6))
        return next_size(asked, count, seconds, limit, TARGET_SECONDS)

    def stream(self, items: list[Any], m: int) -> _Whole:
        return _Whole(self, self._submit(call_whole, self.job, items))

    def join(self) -> Any:
        raise AssertionError("join=True is refused at task() time for an executor of the user's")

    def call(self, x: Any, seconds: float) -> Any:
        """One item, given up ``seconds`` after its call started, as far as the executor
        tells (``Future.cancel`` succeeds only on a call that never started): one that only
        waited behind other calls in the executor is submitted again, not timed out."""
        function = call_whole if self.task.branch else call_batch
        while True:
            handle = self._submit(function, self.job, [x])
            future, woken = handle
            if woken.wait(seconds) or not future.cancel():
                break
            with self._lock:
                self._current = None
        try:
            outputs, _ = self._result(handle, 0 if not future.done() else None)
        except TimeoutError:
            from ._timeouts import timeout_error

            raise timeout_error(self.task.name, seconds) from None
        return outputs if self.task.branch else outputs[0]

    def finish(self, error: BaseException | None) -> BaseException | None:
        with self._lock:
            current, self._current = self._current, None
        if current is not None:  # the run stopped while it was in flight: never waited for
            current[0].cancel()
        return error


class _Whole:
    """A branching batch's outputs, all in one chunk."""

    def __init__(self, remote: FuturesRemote, handle: tuple[Future[Any], threading.Event]) -> None:
        self.remote, self.handle = remote, handle
        self.seconds = 0.0

    def next(self, m: int) -> tuple[list[Any], bool]:
        outputs, self.seconds = self.remote._result(self.handle)
        return outputs, True
