"""The main loop of a worker process of a process stage (``multiprocess=True``).

It runs in the child, which imports as little as it can: this module, with what it
runs (``_serve``, the remote side every remote executor shares; ``_envelope``; ``_pipes``
and ``_pickling``), and pickle. This module is the transport: the parent's relay
(``_relay``, through ``_process.ProcessRemote``) drives it with messages over two one-way
pipes; every message is a pickled tuple:

    parent -> child   ("map", items, stamp)    call the function on each item (stamp: the
                                               parent's count of error replies read)
                      ("branch", items, n)     start fanning out these items' results:
                                               reply with up to n outputs
                      ("pull", n)              up to n more outputs of that batch
                      ("join", n)              call the function once on a stream of
                                               inputs the child asks for (on a thread
                                               of its own: ``_serve.Joining``); outputs
                                               as for a branching batch, n at most
                      ("feed", items)          more inputs for the join call
                      ("end",)                 its inputs are exhausted
                      ("teardown",)            exit the worker's resource (setup=)
                      ("ping",)                reply at once: the worker is up
                      ("stop",)                exit
    child -> parent   ("out", outputs, done)   outputs; done: the batch is finished
                      ("out", outputs, True, s)  a map request's outputs, s: the seconds
                                               its calls took
                      ("need", outputs)        the join call wants more input (outputs:
                                               what it yielded meanwhile)
                      ("error", ...)           the call raised: its envelope
                                               (``_envelope.seal``)

Every reply ends with the log records made since the last one (a retry), which the
parent logs. With ``on_error=`` a failed call's outputs are a ``_serve.Failed`` (the
handler runs in the parent), and the batch goes on.

The child answers every request but ``stop`` and ``teardown`` with one message,
in order. The parent's relay may send a second small ``map`` request before the
first one's reply is read (pipelined: the child never waits for the parent between
cheap batches); it fits in the pipe, so neither side blocks on the other. A
``map`` request stamped with fewer errors than the child has replied was sent
before the parent knew of the latest one: it is skipped (an empty reply), so no
call starts after an error.

A branching batch is advanced only when the parent pulls, so a generator in a
process runs no further ahead than the parent's room downstream allows. The
child ignores SIGINT (the parent stops it: one KeyboardInterrupt per Ctrl-C). A
third pipe is its lifeline: only the parent holds its write end, and a daemon
thread of the child waits on it, so when the parent dies (even by SIGKILL) the
child exits at once, even in the middle of a call.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from functools import partial
from itertools import islice
from time import perf_counter
from typing import Any

from .._pickling import unpicklable_types
from ._envelope import NO_ITEM, seal
from ._pipes import Conn
from ._serve import Job, Joining, Notes, map_batch, open_worker, stream_batch

__all__ = ["main"]

_DUMP = pickle.HIGHEST_PROTOCOL


#: Set (by the lifeline thread) once the parent says its run was cancelled: a batch in
#: hand starts no further call. Never reset: the parent does not reuse such a child.
_cancelled = [False]

#: The name of the task this process serves (set once, by ``main``), for pyper's own errors.
_task_name = ["?"]


def _watch(lifeline: Conn) -> None:
    """Exit when the parent has gone: its end of the lifeline closes with it. A message
    on it means the run was cancelled."""
    try:
        while True:
            lifeline.recv_bytes()
            _cancelled[0] = True
    except (EOFError, OSError):
        pass
    os._exit(1)


def _die_with_parent() -> None:
    """Be killed when the fork server, this child's parent, dies (which it does when
    pyper's process does): unlike the lifeline thread, this reaches a child stuck in
    C code that holds the GIL. Not used for fork and spawn, where the parent is the
    thread that started the child, and a thread may end before its children."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _reset_signals() -> None:
    """Ctrl-C is the parent's to handle: ignore it. A forked child also starts with the
    program's own handlers, which must not run here (a SIGTERM handler would run in the
    worker when pyper terminates it), and with the program's signal wake-up descriptor (an
    event loop's: a signal this process gets would wake the parent's loop as though the
    parent had got it). Back to the defaults, then let SIGINT in again (``_sigint_held``
    blocked it over the fork; a blocked mask would pass on to the programs it starts)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    for sig in signal.valid_signals():
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (ValueError, OSError):
            pass
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def main(
    inbox: Conn, outbox: Conn, lifeline: Conn, payload: bytes,
    method: str, inherited: list[int],
) -> None:
    _reset_signals()
    for fd in inherited:  # forked: the parent's ends of this child's pipes, and its siblings'
        try:
            os.close(fd)
        except OSError:
            pass
    if method == "forkserver" and sys.platform == "linux":
        _die_with_parent()
    threading.Thread(target=_watch, args=(lifeline,), name="pyper:lifeline", daemon=True).start()
    try:
        job: Job = pickle.loads(payload)
    except BaseException as exc:  # every request gets this error: the parent raises it
        _refuse(inbox, outbox, _unloadable(exc), [])
        return
    task = job[0]
    _task_name[0] = task.name
    notes: Notes = []  # log records for the parent, sent with the next reply
    stack = ExitStack()  # the worker's resource (setup=), exited when the child stops
    call: Callable[[Any], Any] | None = None
    if not task.join:  # (a join call makes its resource in its own thread: _serve.Joining)
        try:
            call = open_worker(job, stack, notes, partial(_backoff, inbox))
        except BaseException as exc:
            _refuse(inbox, outbox, exc, notes)
            return
    try:
        _serve(call, job, inbox, outbox, stack, notes)
    finally:
        stack.close()


def _serve(
    call: Callable[[Any], Any] | None, job: Job, inbox: Conn, outbox: Conn, stack: ExitStack, notes: Notes,
) -> None:
    """Answer the parent's requests until it says stop or goes."""
    first, guarded = job[1] is not None, job[3]
    stream: Iterator[Any] = iter(())
    joining: Joining | None = None  # the join call under way (join=True)
    m = 1  # the most outputs a join step may hold
    current: list[Any] = [NO_ITEM]  # the input in hand, named when its call raises
    failures = 0  # error replies sent
    following: tuple[Any, ...] | None = None  # a message read early, behind a map request
    while True:
        if following is not None:
            message, following = following, None
        else:
            try:
                message = pickle.loads(inbox.recv_bytes())
            except (EOFError, OSError):  # the parent has gone
                message = ("stop",)
        kind = message[0]
        if kind in ("stop", "teardown"):
            close = getattr(stream, "close", None)
            if close is not None:  # a generator stopped early: its finally still uses the resource
                close()
            stream = iter(())
            stopped = joining.stop() if joining is not None else None
            joining = None
            if kind == "stop":
                return
        try:
            if kind == "teardown":
                if stopped is not None:
                    raise stopped
                stack.close()
                reply: tuple[Any, ...] = ("out", [], True)
            elif kind == "ping":  # the parent waits until this worker is up (timeout=)
                reply = ("out", [], True)
            elif kind == "map":
                assert call is not None
                outputs: list[Any] = []
                started = perf_counter()
                if message[2] >= failures and inbox.poll(0):
                    # A request sent ahead: a stop or teardown already behind it means the
                    # run is over, and it is skipped too.
                    try:
                        following = pickle.loads(inbox.recv_bytes())
                    except (EOFError, OSError):
                        return
                if message[2] >= failures and (following is None or following[0] not in ("stop", "teardown")):
                    # (else sent before the parent read an error, or the run stopped: skipped)
                    outputs = map_batch(call, message[1], current, guarded, _cancelled)
                reply = ("out", outputs, True, perf_counter() - started)
            elif kind in ("join", "feed", "end") or joining is not None:
                if kind == "join":
                    joining, m = Joining(job, notes), message[1]
                assert joining is not None
                if kind == "pull":
                    m = message[1]
                step = joining.step(message[1] if kind == "feed" else [], kind == "end", m)
                if step[0] == "error":
                    joining = None
                    data = _dumps(step, notes)
                    failures += 1
                    if not _send(outbox, data):
                        return
                    continue
                if step[0] == "done":
                    joining = None
                reply = ("need", step[1]) if step[0] == "need" else ("out", step[1], step[0] == "done")
            else:
                assert call is not None
                if kind == "branch":
                    close = getattr(stream, "close", None)
                    if close is not None:  # a stream a stopped run left half read
                        close()
                    stream, n = stream_batch(call, message[1], current, guarded), message[2]
                else:
                    n = message[1]
                chunk = list(islice(stream, n))
                reply = ("out", chunk, len(chunk) < n)
            held, current[0] = current[0], NO_ITEM  # what fails here is not a call
            data = _dumps(reply, notes)
            current[0] = held  # a branching item's stream goes on at the next pull
        except _Stop:  # a retry's backoff wait, ended by a stop or teardown
            return
        except BaseException as exc:
            stream = iter(())
            data = _dumps(seal(exc, NO_ITEM if first else current[0]), notes)
            current[0] = NO_ITEM
            failures += 1
        if not _send(outbox, data):
            return


def _send(outbox: Conn, data: bytes) -> bool:
    """Send a reply; False once the parent has gone."""
    try:
        outbox.send_bytes(data)
    except (BrokenPipeError, OSError):
        return False
    return True


def _backoff(inbox: Conn, seconds: float) -> None:
    """A retry's wait; the parent sends nothing while a request runs but ``stop``, so
    any message ends it at once."""
    if inbox.poll(seconds):
        raise _Stop


class _Stop(BaseException):
    """The parent asked the child to stop while a call waited out a retry's backoff."""


def _unloadable(exc: BaseException) -> RuntimeError:
    return RuntimeError(
        "the worker process could not load the task's function "
        f"({type(exc).__name__}: {exc}). Under the forkserver and spawn start methods a "
        "worker imports the function by its module and name: define it at the top level of "
        "an importable module (in a script, keep the pipeline's work under "
        "`if __name__ == '__main__':`)"
    )


def _refuse(inbox: Conn, outbox: Conn, error: BaseException, notes: Notes) -> None:
    """The worker cannot serve (its function did not load, its setup raised): say why,
    to every request."""
    data = _dumps(seal(error), notes)
    while True:
        try:
            message = pickle.loads(inbox.recv_bytes())
            if message[0] == "stop":
                return
            outbox.send_bytes(data)
        except (EOFError, OSError):
            return


def _dumps(reply: tuple[Any, ...], notes: Notes) -> bytes:
    """The reply, with the log records made since the last one (then forgotten)."""
    try:
        data = pickle.dumps((*reply, notes[:] if notes else ()), _DUMP)
    except Exception as exc:
        raise TypeError(
            f"task {_task_name[0]!r} runs in a process (multiprocess=True), but an output of "
            f"type {unpicklable_types(reply[1])} cannot be pickled to return it from there "
            f"({type(exc).__name__}: {exc}); return picklable values"
        ) from exc
    notes.clear()
    return data
