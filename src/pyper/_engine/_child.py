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
                      ("close",)               close the stream of a branching batch left
                                               half read (the run is over): its finally
                                               runs now; an empty reply, or its error
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
child lets SIGINT pass (the parent stops it: one KeyboardInterrupt per Ctrl-C),
with a handler, so the programs it runs get Ctrl-C as usual. A third pipe is its
lifeline: only the parent holds its write end, and a daemon thread of the child
waits on it, so when the parent dies (even by SIGKILL) the child exits at once,
even in the middle of a call. A call in C code that holds the GIL keeps that
thread from running: on Linux the kernel kills the child then (``_die_with``).
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


def _load_prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), looked up as this module loads: in pyper's process (or
    the fork server, which preloads this module) once, rather than in each forked
    worker, where importing ctypes would double its start (2.5 ms against 1.5)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    return prctl


_prctl = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """Have the kernel kill this process (SIGKILL) when its parent dies: unlike the
    lifeline thread, that reaches a call stuck in C code that holds the GIL. Linux sends
    it when the *thread* that started this process ends, not the process: ``parent`` is
    given only where that thread lives as long as the process it belongs to (see
    ``_workers.Child``). ``parent``: its pid, as this process expects it: if it differs
    already, the parent died before the signal was asked for, and nothing would send it."""
    if _prctl is None or _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        return
    if os.getppid() != parent:
        os._exit(1)


def _leave_the_fork_server() -> None:
    """A child of the fork server holds the write end of its alive pipe, which the fork
    server watches to exit once pyper's process has gone: a worker that outlived pyper (in
    a long C call) would keep it, and its resource tracker, and itself (its parent-death
    signal waits for the fork server). This process starts no process through that fork
    server (one it would start through forkserver starts a fork server of its own):
    let go of it."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        server._forkserver_alive_fd = None  # type: ignore[union-attr]
        try:
            os.close(fd)
        except OSError:
            pass


def _let_pass(signum: int, frame: object) -> None:
    """Ctrl-C in a worker: nothing (the parent stops it)."""


def _reset_signals() -> None:
    """Ctrl-C is the parent's to handle: let it pass, with a handler that does nothing
    rather than SIG_IGN, which would survive exec: a program this worker runs would then
    ignore the Ctrl-C that the terminal sends to the whole group, and outlive it. A forked
    child also starts with the program's own handlers, which must not run here (a SIGTERM
    handler would run in the worker when pyper terminates it), and with the program's
    signal wake-up descriptor (an event loop's: a signal this process gets would wake the
    parent's loop as though the parent had got it). Back to the defaults, then let SIGINT
    in again (``_workers.sigint_held`` blocked it over the fork; a blocked mask would pass
    on to the programs it starts)."""
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
    signal.signal(signal.SIGINT, _let_pass)
    if hasattr(signal, "siginterrupt"):  # a system call it interrupts restarts (SA_RESTART):
        signal.siginterrupt(signal.SIGINT, False)  # C code sees no EINTR, as with SIG_IGN
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _not_for_programs() -> None:
    """Started by spawn or the fork server, this process holds the descriptors
    multiprocessing passed to it (its pipes to pyper, the sentinel's write end, the fork
    server's and the resource tracker's pipes), marked inheritable to pass them: a program
    it runs (``os.system``, a subprocess with ``close_fds=False``) would get them too, and
    hold them open after this process's death. None of them is for such programs: every
    descriptor past 0-2 is made close-on-exec (descriptors Python opens are already). A
    process it forks still holds them all: the parent watches this process itself
    (``_workers.Child.exited``), not its pipes."""
    try:
        names = os.listdir("/proc/self/fd" if sys.platform.startswith("linux") else "/dev/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:  # the listing's own descriptor, closed since
                pass


def main(
    inbox: Conn, outbox: Conn, lifeline: Conn, payload: bytes,
    method: str, inherited: list[int], parent: int | None,
) -> None:
    """The worker process: ``parent`` is the pid whose death must kill it, where the
    thread that started it lives as long as that process (see ``_die_with``)."""
    if method == "forkserver" and os.name == "posix":
        # In this order: the fork server cannot end before this process lets go of its
        # alive pipe, so the parent read here is the fork server.
        _die_with(os.getppid())
        _leave_the_fork_server()
    elif parent is not None:
        _die_with(parent)
    _reset_signals()
    for fd in inherited:  # forked: the parent's ends of this child's pipes, and its siblings'
        try:
            os.close(fd)
        except OSError:
            pass
    if method != "fork" and os.name == "posix":  # (forked: ours are os.pipe's, close-on-exec)
        _not_for_programs()
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
        if kind == "stop":
            try:
                _end(stream, joining)
            except BaseException:  # nobody reads a reply now: the process ends
                pass
            return
        try:
            if kind in ("teardown", "close"):  # the run is over ("close"), and the resource too
                ended, left = stream, joining
                stream, joining = iter(()), None
                try:
                    error = _end(ended, left)
                finally:
                    if kind == "teardown":
                        stack.close()  # (even if the stream's finally raised: then that is told)
                if error is not None:
                    raise error
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
                if message[2] >= failures and (following is None or following[0] not in ("stop", "teardown", "close")):
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
                    reply = ("out", step[1], True, step[2])  # (what it was fed and did not read)
                else:
                    reply = ("need", step[1]) if step[0] == "need" else ("out", step[1], False)
            else:
                assert call is not None
                if kind == "branch":
                    close = getattr(stream, "close", None)
                    if close is not None:  # a stream a stopped run left half read
                        close()
                    stream, n = stream_batch(call, message[1], current, guarded, _cancelled), message[2]
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


def _end(stream: Iterator[Any], joining: Joining | None) -> BaseException | None:
    """End what a run left under way: a generator half read is closed (its ``finally``,
    which may still use the resource, runs now, here), a join call stopped (its thread
    exits its resource); what that join raised, if no reply told it yet."""
    close = getattr(stream, "close", None)
    if close is not None:
        close()
    return joining.stop() if joining is not None else None


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
    to every request but the end of the run's ``teardown``: there is no resource to exit,
    and the error was reported already (again, it would be attached to itself)."""
    data = _dumps(seal(error), notes)
    while True:
        try:
            message = pickle.loads(inbox.recv_bytes())
            if message[0] == "stop":
                return
            outbox.send_bytes(_dumps(("out", [], True), notes) if message[0] == "teardown" else data)
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
