"""The worker processes of process stages: one ``Child`` (a process and its private
pipes), the start method they use, and the warm pool that keeps idle ones for the next
run of the same task. ``_process`` (the executor) drives them from its relays.

A ``Child`` is started the way ``context`` says (``pyper.set_start_method``, else
``multiprocessing``'s, else ``PYPER_START_METHOD``, else ``fork`` on Linux), but never by
forking a process that runs threads: a relay, which runs beside others, starts one
with the fork server (``threaded_context``); only ``_process.prepare`` forks, in the
caller's thread while it is the only one. The fork server preloads the child's loop
(``_child``), so each worker it forks starts with pyper loaded.

Who owns what: a ``Child`` belongs to the relay thread that took it; only its wake-up
pipe's write end is touched by another thread (``Run.cancel``, through ``interrupt``),
under its lock. The pool (``_idle``) and the registry of open children (``opened``,
which a forked child needs to close its siblings' pipes) are guarded by ``idle_lock``.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import pickle
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from .._errors import Cancelled, WorkerProcessDied
from .._pickling import unpicklable_types
from .._spec import Task
from . import _child, _pipes, _state, _threads
from ._envelope import unseal
from ._run import log_event
from ._threads import single_threaded

__all__ = [
    "GRACE_SECONDS", "IDLE_MAX", "TEARDOWN_SECONDS", "Child", "Late", "close_idle", "context", "starter_thread",
    "idle_fds", "idle_lock", "idle_processes", "keep", "opened", "set_start_method",
    "sigint_held", "single_threaded", "take", "take_warm", "threaded_context",
]

#: How long a child may take to exit its worker's resource (``setup=``) at the end of a run.
TEARDOWN_SECONDS = 5.0
#: How long a child may take to exit after ``("stop",)`` before it is terminated.
GRACE_SECONDS = 0.2

class Late(Exception):
    """No reply within the call's timeout."""



# Chosen on first use, by the thread that first starts a process stage (a caller under
# fork, else a relay): every thread computes the same value, so any one may win.
# ``set_start_method`` (the caller's thread) resets it.
_method: str | None = None
#: What ``pyper.set_start_method`` chose, if anything: it comes before multiprocessing's.
_chosen: str | None = None
#: How many times it was called: a child started before the last call is not kept warm.
_choices = 0


def set_start_method(method: str | None) -> None:
    """``pyper.set_start_method``: the start method of pyper's worker processes, for the
    rest of the program (``None``: back to the default). Children kept warm were started
    another way: they are closed, so the next run's children start the new way."""
    global _method, _chosen, _choices
    methods = multiprocessing.get_all_start_methods()
    if method is not None and method not in methods:
        raise ValueError(
            f"pyper.set_start_method({method!r}): this platform's start methods are "
            f"{', '.join(map(repr, methods))} (or None, for pyper's default)"
        )
    _chosen = method
    _method = None
    with idle_lock:
        _choices += 1  # (those at work now go when their run ends: see keep)
        idle = list(_idle)
        _idle.clear()
    for child in idle:
        child.close()


def context() -> Any:
    """The multiprocessing context process stages use.

    ``pyper.set_start_method``'s choice; else the start method set with
    ``multiprocessing.set_start_method``; else ``PYPER_START_METHOD`` from the
    environment (a choice for one run of a program); else, on Linux, ``fork`` (forked only while
    the process runs no other thread: see ``threaded_context``), and ``forkserver``
    (``spawn`` where there is none) on other systems, where forking without exec is not
    safe even in one thread. Chosen once: starting a process makes ``multiprocessing``
    fix its own default (``fork`` on Linux before Python 3.14), which must not be taken
    for a choice of the user's.
    """
    global _method
    if _method is None:
        method = _chosen or multiprocessing.get_start_method(allow_none=True) or _from_environment()
        if method is None:
            method = "fork" if sys.platform.startswith("linux") else _no_fork()
        if method == "forkserver":
            _preload_in_fork_server()
        _method = method
    return multiprocessing.get_context(_method)


def _from_environment() -> str | None:
    method = os.environ.get("PYPER_START_METHOD") or None
    methods = multiprocessing.get_all_start_methods()
    if method is not None and method not in methods:
        raise ValueError(
            f"PYPER_START_METHOD={method!r} in the environment: this platform's start methods "
            f"are {', '.join(map(repr, methods))}; set one of them, or unset it for pyper's default"
        )
    return method


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


def threaded_context() -> Any:
    """The context for children started while the process may run threads (from a
    relay): never ``fork``, which could deadlock the child; forkserver instead."""
    ctx = context()
    if ctx.get_start_method() != "fork":
        return ctx
    method = _no_fork()
    if method == "forkserver":
        _preload_in_fork_server()
    return multiprocessing.get_context(method)


def _no_fork() -> str:
    """The start method that never forks this process: forkserver where there is one."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


#: How big pyper asks the system to make a pipe to or from a worker (Linux; 64 KiB by
#: default) once a message larger than that has crossed it: a large item then crosses in
#: one write and one read, not sixteen of each with a wake-up between. Pipes that carry
#: only small messages stay as they are.
PIPE_BYTES = 1 << 20
#: The most pipe memory pyper takes beyond the defaults, over all its workers at once: a
#: user's pipes share a quota (``/proc/sys/fs/pipe-user-pages-soft``, 64 MiB), and past it
#: every new pipe of theirs, in any program, gets one page.
PIPE_BUDGET = 16 << 20
NARROW_BYTES = 1 << 16
_EXTRA = PIPE_BYTES - NARROW_BYTES  # what widening one pipe takes from the budget
_widened = 0  # bytes of pipes widened now, over all children (guarded by idle_lock)


def _widen(fd: int) -> int:
    """Widen a pipe to PIPE_BYTES if the budget allows; returns the bytes it took from it."""
    global _widened
    with idle_lock:
        if _widened + _EXTRA > PIPE_BUDGET:
            return 0
        _widened += _EXTRA
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # Linux only (Python 3.10+)
    except (ImportError, AttributeError, OSError):  # elsewhere, or the system refused
        _unwiden(_EXTRA)
        return 0
    return _EXTRA


def _unwiden(size: int) -> None:
    global _widened
    with idle_lock:
        _widened -= size


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Hold Ctrl-C back while a child forks: until its loop lets it pass (Ctrl-C is the
    parent's to handle), a forked child would raise KeyboardInterrupt and print a
    traceback of its own. Here it arrives as soon as the block is done. (This thread's
    signal mask only: where other threads run, one of them may take the signal. A
    spawned child does not inherit the mask: _posixsubprocess clears it.)"""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _dies_with(method: str) -> int | None:
    """For a worker started now by ``method``: the pid whose death the kernel must kill it
    at (Linux's parent-death signal; see ``_child._die_with``), or None for none. Linux
    sends that signal when the *thread* that started the worker ends, not its process:
    it is asked for only where that thread ends only with the process. pyper forks in the
    caller's thread while it is the process's only thread, so in practice the main thread
    (a fork from another thread asks for none: that thread may end first); spawned
    workers are started by the starter (``_Starter``), a thread that lives as long as the
    program. The fork server's workers ask for it of the fork server, a process of one
    thread that ends when pyper's process has ended (``_child._leave_the_fork_server``).
    Elsewhere (macOS, Windows) there is none: only the lifeline, which a call holding the
    GIL keeps from running."""
    if method == "spawn" and _Starter.used():
        return os.getpid()
    if threading.current_thread() is threading.main_thread():
        return os.getpid()
    return None


class _Starter:
    """The thread that starts spawned workers (Linux): it lives as long as the program, so
    the parent-death signal the kernel ties to the starting thread fires only when the
    program dies (a relay, which would start them itself, ends while its worker is kept
    warm). Started on first use, a daemon; it waits on its queue, holding nothing, and
    stops for a fork (a ``_threads`` pausable: a fork needs the process to run one
    thread), to be started again on the next use.

    ``_lock`` guards ``_thread`` and ``_queue``; the thread owns what it runs."""

    _lock = threading.Lock()
    _thread: threading.Thread | None = None
    _queue: Any = None

    @staticmethod
    def used() -> bool:
        return sys.platform.startswith("linux")

    @classmethod
    def start(cls, process: Any) -> None:
        """``process.start()``, on the starter thread; what it raised is raised here."""
        import queue

        done = threading.Event()
        failed: list[BaseException] = []
        with cls._lock:
            if cls._thread is None:
                cls._queue = queue.SimpleQueue()
                cls._thread = threading.Thread(target=cls._main, args=(cls._queue,), name="pyper:starter",
                                               daemon=True)
                cls._thread.start()
                _threads.add_pausable(_STARTER)
            cls._queue.put((process, done, failed))
        done.wait()
        if failed:
            raise failed[0]

    @staticmethod
    def _main(requests: Any) -> None:
        while True:
            request = requests.get()
            if request is None:
                return
            process, done, failed = request
            try:
                process.start()
            except BaseException as exc:
                failed.append(exc)
            finally:
                done.set()

    # -- a pausable of _threads (a fork: no thread but the forking one may run) ---------

    @property
    def thread(self) -> threading.Thread | None:
        return _Starter._thread

    def pause(self) -> None:
        with _Starter._lock:
            thread, _Starter._thread = _Starter._thread, None
            if thread is not None:
                _Starter._queue.put(None)
        if thread is not None:
            thread.join()
        _threads.remove_pausable(self)

    def resume(self) -> None:
        pass  # (started again on the next use)


_STARTER = _Starter()


def starter_thread() -> threading.Thread | None:
    """The starter's thread, if it runs (it lives as long as the program)."""
    return _Starter._thread


def _why_not_forked(method: str) -> str | None:
    """Why a worker is started by ``method`` (the fork server, or spawn) though the start
    method is fork: the process runs other threads (see ``threaded_context``). None when
    that is the start method."""
    if method == "fork" or context().get_start_method() != "fork":
        return None
    from ._run import current_run

    entry = current_run.get()  # (in a relay: its run; its parent, the run it is nested in)
    if entry is not None and entry[0].parent is not None:
        return (" rather than by forking, because this pipeline runs inside a worker thread of "
                "another pipeline (a process that runs threads cannot be forked safely)")
    return (" rather than by forking, because other threads ran beside the pipeline's caller "
            "(a process that runs threads cannot be forked safely)")


def _ahead_bytes(fd: int) -> int:
    """How big a request may be to go to a child while it may be blocked sending its
    reply: half the pipe, which then always has room for it (no deadlock, whatever the
    reply's size). Linux says how big the pipe is (4 KiB to 1 MiB: small once a user
    has many); elsewhere a small guess, and none on Windows (a pipe write there waits
    for the reader)."""
    if sys.platform == "win32":
        return 0
    try:
        import fcntl

        size = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)  # Linux only (Python 3.10+)
    except (ImportError, AttributeError, OSError):
        return 2048
    return max(0, size // 2 - 64)


class Child:
    """One worker process and the pipes to it."""

    def __init__(self, task: Task, payload: bytes, index: int, ctx: Any) -> None:
        self.task = task
        self.func = task.func  # what it was loaded with (identity: a reloaded module is new code)
        self.payload = payload
        self.unread = 0  # requests sent whose reply is not yet read (owned by the relay)
        self.failures = 0  # error replies read: stamped on each "map" request (see pack_map)
        self.note: Callable[[str, str], None] | None = None  # the worker its calls' events go to
        self.received = 0  # the size of the last reply, in bytes (owned by the relay)
        self.failed_on: str | None = None  # the item of the last error reply, shortened
        self.joining = False  # a join call is under way (owned by the relay)
        self.pinged = False  # it answered a ping: it is up, its setup done (owned by the relay)
        # A branching batch's stream is open in the child: sent, and not yet answered
        # with its end (or an error). Owned by the relay; see ``end_run``.
        self.streaming = False
        method = ctx.get_start_method()
        forked = method == "fork"
        # Fit for a warm pool: not once its resource (setup=) was exited, and never if
        # forked. A fork holds a copy of all that this process had open (a socket's
        # port, a pipe's other end: its reader sees no end-of-file while a copy is open)
        # and of its memory as it was then: kept past the run, it would hold those
        # open and serve the next run with the state of the last. The fork server's
        # children start clean.
        self.keep = not forked
        # Guards _closed, generation, _interrupted and unread's increments: interrupt() (any
        # thread) never writes to the wake-up pipe once close() has closed it (its number may
        # by then be another pipe's), nor for a run the child no longer serves (generation:
        # one per run it is taken for); and a request either is counted before interrupt()
        # looks (the child is told to start no further call) or is refused (post).
        self._lock = threading.Lock()
        self._closed = False
        self.generation = 0
        self._interrupted = -1  # the generation (run) interrupt() stopped: post refuses it
        self._widened = 0  # bytes of this child's pipes widened past the default (PIPE_BUDGET)
        self._wide_to = self._wide_from = False  # each pipe is widened (tried) at most once
        self.process: Any = None
        self.choice = _choices  # the start method's setting it was started under
        # How its end is learnt (see ``exited``): a pidfd where the system has them
        # (Linux 5.3+: it refers to this one process, readable once it has exited,
        # whatever still holds its pipes, and never to another process that gets its
        # pid later), else waitpid. ``_reaper``: this process reaps it itself (fork and
        # spawn, on POSIX); else multiprocessing's own poll tells (the fork server reaps
        # its children and reports their exit over the sentinel; Windows has handles).
        # Owned by the relay, like the rest; opened once started, closed by ``close``.
        self._pidfd: int | None = None
        self._reaper = method != "forkserver" and os.name == "posix"
        self._status_lost = False  # reaped by the program itself (SIGCHLD ignored, waitpid(-1))
        self.replied = False  # a reply was read: it loaded (owned by the relay)
        self.method = method
        # Why the fork server (or spawn) starts it where the start method is fork: said
        # if it fails to load (it imports the main module first, forking does not).
        self._not_forked = _why_not_forked(method)
        # Forked: pipes of ours (nothing to pickle them for); else multiprocessing's,
        # which it passes to the new process. The same few methods either way (Conn).
        new_pipe: Callable[[], tuple[Any, Any]] = _pipes.pipe if forked else partial(ctx.Pipe, duplex=False)
        ours: list[Any] = []  # this process's ends: kept, or closed if the start fails
        theirs: list[Any] = []  # the child's: closed here once it has them, or the start failed
        try:
            to_child_r, self.to_child = new_pipe()
            theirs.append(to_child_r)
            ours.append(self.to_child)
            self.from_child, from_child_w = new_pipe()
            ours.append(self.from_child)
            theirs.append(from_child_w)
            lifeline_r, self.lifeline = new_pipe()  # closes when this process dies
            theirs.append(lifeline_r)
            ours.append(self.lifeline)
            self._wake_r, self._wake_w = wake = os.pipe()
            ours.extend(_pipes.Pipe(fd) for fd in wake)
            os.set_blocking(self._wake_r, False)
            # A forked child holds every descriptor this process holds: it closes this
            # child's parent ends, and every other child's, since holding them would keep
            # their ends open (no end-of-file, no parent-death notice): their pipes as it
            # forks (``_after_fork_in_child``), the rest in its loop (``inherited``).
            # The lock keeps the list whole while the child forks.
            with idle_lock if forked else contextlib.nullcontext():
                inherited = [
                    self.to_child.fileno(), self.from_child.fileno(), self.lifeline.fileno(),
                    self._wake_r, self._wake_w, *(fd for child in opened for fd in child.process_fds()),
                ] if forked else []
                self.process = ctx.Process(
                    target=_child.main,
                    args=(to_child_r, from_child_w, lifeline_r, payload, method, inherited, _dies_with(method)),
                    name=f"pyper:{task.name}[{index}]",
                    daemon=True,
                )
                with sigint_held() if forked else contextlib.nullcontext():
                    if method == "spawn" and _Starter.used():
                        _Starter.start(self.process)  # (by a thread that lives as long as the program)
                    else:
                        self.process.start()
                    # At once: until it is reaped its pid is its own (a child of the fork
                    # server's is reaped there, in principle even before this line: a pid
                    # reused within that moment is not guarded against).
                    self._pidfd = _open_pidfd(self.process.pid)
            self._from_fd = self.from_child.fileno()
            self.ahead_bytes = _ahead_bytes(self.to_child.fileno())
            self._poller = select.poll() if hasattr(select, "poll") else None
            if self._poller is not None:
                ended = self.process.sentinel if self._pidfd is None else self._pidfd
                for fd in (self._from_fd, ended, self._wake_r):
                    self._poller.register(fd, select.POLLIN)
            with idle_lock:
                opened.add(self)
        except BaseException:  # no process (out of memory, of descriptors), or Ctrl-C meanwhile
            with idle_lock:
                opened.discard(self)  # (a forked sibling would ask a closed process for its fds)
            process = self.process
            if process is not None and process.pid is not None:  # started: not left a zombie
                self._signal(kill=True)
                self._join(None)
                with contextlib.suppress(ValueError):  # (never expected: _join reaped it)
                    process.close()
            if self._pidfd is not None:
                os.close(self._pidfd)
            for end in ours:
                end.close()
            raise
        finally:
            for end in theirs:
                end.close()

    def interrupt(self, generation: int) -> None:
        """Wake the relay of run ``generation`` from its wait (any thread); a child with
        requests in hand is told too, so that it starts no further call of their batches
        (it is then not kept for another run). ``unread`` belongs to the relay: read here
        without its lock, a stale value only tells a child that just finished (then not
        kept warm) or misses one that just got a request (it finishes that batch)."""
        with self._lock:
            if not self._closed and generation == self.generation:
                self._interrupted = generation  # (post sends nothing more for this run)
                os.write(self._wake_w, b"x")
                if self.unread > 0:
                    self.keep = False
                    try:
                        self.lifeline.send_bytes(b"cancel")
                    except OSError:
                        pass

    @property
    def busy(self) -> bool:
        """A reply is owed (or a join call stopped halfway): no other run can be served."""
        return self.unread > 0 or self.joining

    def send(self, message: tuple[Any, ...]) -> int:
        """Send a request; returns its size in bytes."""
        if message[0] == "branch":
            self.streaming = True
        return self.post(self.pack(message), message[0] == "join")

    def pack_map(self, items: list[Any]) -> bytes:
        """A ``map`` request, stamped with the error replies read so far: a request sent
        before the parent read an error of the child's is skipped by the child (no new
        call after an error, with two requests in flight)."""
        return self.pack(("map", items, self.failures))

    def pack(self, message: tuple[Any, ...]) -> bytes:
        try:
            return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            kinds = unpicklable_types(message[1]) if len(message) > 1 else "?"
            raise TypeError(
                f"task {self.task.name!r} runs in a process (multiprocess=True), but an input "
                f"of type {kinds} cannot be pickled to send it there "
                f"({type(exc).__name__}: {exc}); pass picklable items"
            ) from exc

    def post(self, data: bytes, join: bool = False) -> int:
        """Send a packed request; returns its size in bytes."""
        if len(data) > NARROW_BYTES and not self._wide_to:
            self._wide_to = True
            self._widened += _widen(self.to_child.fileno())
            self.ahead_bytes = _ahead_bytes(self.to_child.fileno())
        with self._lock:  # (interrupt reads unread under it: a request counted here is told)
            if self._interrupted == self.generation:
                raise Cancelled  # the run was cancelled: no request goes after that
            self.unread += 1
        try:
            self.to_child.send_bytes(data)
        except (BrokenPipeError, OSError):
            self._raise_died()
        if join:
            self.joining = True
        return len(data)

    def receive(self, timeout: float | None = None) -> tuple[Any, ...]:
        """The child's next reply, ``("out", outputs, done)`` or ``("need", outputs)``;
        raises its error, its death, ``Cancelled`` when the run is cancelled meanwhile, or
        ``Late`` after ``timeout`` seconds. ``received`` is its size."""
        ready = self._wait(timeout)
        if not ready:
            raise Late
        if self._from_fd in ready:
            try:
                data = self.from_child.recv_bytes()
            except (EOFError, OSError):
                self._raise_died()
            self.received = len(data)
            if self.received > NARROW_BYTES and not self._wide_from:
                self._wide_from = True  # the next large reply crosses at once
                self._widened += _widen(self._from_fd)
            reply = self._read(data)
            if reply[0] == "error" or (reply[0] == "out" and reply[2]):
                self.joining = False
            if reply[0] == "error":
                self._drain()
                exc, self.failed_on = unseal(reply[:-1], self.task.name)
                raise exc
            return reply
        if self._wake_r in ready:
            raise Cancelled
        self._raise_died()
        raise AssertionError("unreachable")

    def _read(self, data: bytes) -> tuple[Any, ...]:
        """Decode a reply: every reply read goes through here, so that ``unread`` and
        ``failures`` count what the child sent."""
        reply: tuple[Any, ...] = pickle.loads(data)
        self.unread -= 1
        self.replied = True
        if reply[0] == "error":
            self.failures += 1
            self.streaming = False  # (the child drops its stream on an error)
        elif reply[0] == "out" and reply[2]:
            self.streaming = False
        if reply[-1]:  # log records made in the child (a retry, a skipped item)
            for event, message in reply[-1]:
                (self.note or log_event)(event, message)
        return reply

    def _drain(self) -> None:
        """After an error reply: read the replies to the requests sent before it was read
        (the child skips them, calling nothing), so the child is clean for another run.
        One that does not come (a child stuck or gone) leaves it unfit to keep."""
        while self.unread and not self.joining:
            try:
                if not self.from_child.poll(GRACE_SECONDS):
                    return
                self._read(self.from_child.recv_bytes())
            except (EOFError, OSError):
                return

    def _wait(self, timeout: float | None) -> set[int]:
        """The descriptors among the reply pipe, the process's end (its pidfd, else the
        sentinel) and the wake-up pipe that are ready (empty after ``timeout`` seconds).
        One ``poll`` object registered once: ``multiprocessing.connection.wait`` builds a
        selector per call, ~13 us, paid once per batch (3 000 batches for 100 000 trivial
        items)."""
        if self._poller is None:  # no poll() (Windows): wait() on the same three
            from multiprocessing.connection import wait

            waited = wait([self.from_child, self.process.sentinel, self._wake_r], timeout)
            return {self._from_fd if x is self.from_child else x for x in waited}  # type: ignore[misc]
        if self._pidfd is None and self._reaper:
            # No pidfd, and the sentinel is a pipe a grandchild may hold open: the system
            # leaves no other way than asking every EXIT_POLL_SECONDS whether it exited.
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = EXIT_POLL_SECONDS if deadline is None else min(EXIT_POLL_SECONDS, deadline - time.monotonic())
                ready = {fd for fd, _ in self._poller.poll(max(0, math.ceil(left * 1000)))}
                if ready or (deadline is not None and time.monotonic() >= deadline):
                    return ready
                if self.exited():
                    return {self.process.sentinel}
        ms = -1 if timeout is None else max(0, math.ceil(timeout * 1000))
        return {fd for fd, _ in self._poller.poll(ms)}

    def _raise_died(self) -> None:
        self._join(GRACE_SECONDS)
        code = self.process.exitcode
        if code is None:
            how = "closed its pipe"
        elif self._status_lost and code == 0:
            how = ("exited (its exit status was collected by the program itself: SIGCHLD "
                   "ignored, or a waitpid(-1))")
        elif code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        if not self.replied and self.method != "fork":
            # It died loading: before any reply, where it imports the main module first.
            started = "the fork server" if self.method == "forkserver" else self.method
            why = f"pyper started it with {started}{self._not_forked or ''}, and "
            raise WorkerProcessDied(
                f"task {self.task.name!r}: its worker process {self.process.name} (pid "
                f"{self.process.pid}) {how} as it started, before any call: {why}such a "
                "worker imports the main module first, which failed (its error is above): "
                'keep a script\'s work under `if __name__ == "__main__":`'
                + (f", or make task {self.task.name!r} not a process stage" if self._not_forked else "")
            )
        raise WorkerProcessDied(
            f"task {self.task.name!r}: its worker process {self.process.name} (pid "
            f"{self.process.pid}) {how} while running a call"
        )

    def fds(self) -> list[int]:
        """Descriptors held for this child: its pipes, and those multiprocessing keeps."""
        return [
            self.to_child.fileno(), self.from_child.fileno(), self.lifeline.fileno(),
            self._wake_r, self._wake_w, *self.process_fds(),
            *(() if self._pidfd is None else (self._pidfd,)),
        ]

    def process_fds(self) -> list[int]:
        """Those multiprocessing keeps for the child until it is closed (its sentinel and
        a pipe's other end, or for forkserver a duplicate of a pipe): closed by number
        only in a child of ours, where nothing else closes them."""
        popen = getattr(self.process, "_popen", None)
        finalizer = getattr(popen, "finalizer", None)
        kept = [fd for fd in getattr(finalizer, "_args", ()) if isinstance(fd, int)]
        return [self.process.sentinel, *kept]

    def release(self) -> None:
        """In a process forked from this one (by the user, or a child of ours): let go of
        this copy of the child's pipes, which would keep it from seeing its parent's
        death. Only this thread runs here; the lock may have been held at the fork."""
        for end in (self.to_child, self.from_child, self.lifeline):
            end.close()
        if not self._closed:
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None

    def reusable_for(self, task: Task, payload: bytes) -> bool:
        return self.func is task.func and self.payload == payload and not self.exited()

    def kill(self) -> None:
        """Kill the child at once (a call past its timeout), then close it."""
        self._signal(kill=True)
        self.close()

    def exited(self) -> bool:
        """Whether the process has ended. The first call to learn it reaps it (unless the
        fork server does), here rather than by multiprocessing: it waits on, or asks
        about, the pid, where a grandchild may hold the sentinel pipe open, and a
        program that reaps its own children (SIGCHLD ignored, ``waitpid(-1)``) leaves
        it waiting for a status that never comes. The exit code is stored where
        multiprocessing keeps it (0 when the program took the status: as
        ``subprocess`` does), so that ``Process.exitcode``, ``close`` and
        ``active_children`` agree."""
        popen = self.process._popen
        if popen is None or popen.returncode is not None:  # (None: closed)
            return True
        if not self._reaper:  # the fork server's child: its status comes over the sentinel
            if self._pidfd is not None and not _ready(self._pidfd, 0):
                return False  # (asked first: cheaper than multiprocessing's wait)
            return popen.poll() is not None
        if self._pidfd is not None and not _ready(self._pidfd, 0):
            return False
        code: int | None = None
        try:
            if self._pidfd is not None and _P_PIDFD is not None:
                info = os.waitid(_P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
                if info is None:
                    return False
                code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            else:  # (a zombie's pid is still its own; without a pidfd, the system's limit)
                pid, status = os.waitpid(self.process.pid, os.WNOHANG)
                if pid == 0:
                    return False
                code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped already: by the program, or by multiprocessing
            pass                   # in another thread, which stores the code itself
        if popen.returncode is None:
            if code is None:
                self._status_lost = True
                code = 0
            popen.returncode = code
        return True

    def _join(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: as long as it takes) for the process
        to end; whether it has (it is then reaped: see ``exited``)."""
        if self.exited():
            return True
        if not self._reaper:
            self.process.join(timeout)  # the fork server's report of its exit
            return self.exited()
        if self._pidfd is not None:
            _ready(self._pidfd, timeout)
            return self.exited()
        # No pidfd: the sentinel ends with the process, unless a grandchild holds it, so
        # waitpid is asked too, every EXIT_POLL_SECONDS.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = EXIT_POLL_SECONDS if deadline is None else min(EXIT_POLL_SECONDS, deadline - time.monotonic())
            if left <= 0:
                return False
            select.select([self.process.sentinel], [], [], left)
            if self.exited():
                return True

    def _signal(self, kill: bool) -> None:
        """Terminate (SIGTERM) or kill (SIGKILL) the process unless it has ended: never
        signal its pid once reaped (by then, possibly another process's). Through the
        pidfd where there is one; else multiprocessing signals it only while the exit
        code it holds, which ``exited`` stores, is None."""
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):  # it has exited
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL if kill else signal.SIGTERM)
        elif not self.exited():
            (self.process.kill if kill else self.process.terminate)()

    def end_run(self) -> None:
        """The relay's run is over: exit the worker's resource (``setup=``: ``teardown``),
        or else close a branching stream the run left half read (a break, an error
        downstream), so that its ``finally`` runs now rather than at the worker's next
        run or at the program's exit, the worker being kept warm. Raises what either
        raises. A child that will not be kept is left alone: the ``stop`` that closes it
        ends its loop, and the stream with it."""
        if self.task.policy.setup is not None:
            self.teardown()
        elif self.streaming and self.keep and not self.busy and not self.exited():
            self._close_stream()

    def _close_stream(self) -> None:
        try:
            self.to_child.send_bytes(pickle.dumps(("close",)))
            self.unread += 1
            if not self.from_child.poll(TEARDOWN_SECONDS):
                self.keep = False  # stuck in the generator's finally: closed (terminated) next
                return
            reply = self._read(self.from_child.recv_bytes())
        except (EOFError, OSError):
            self.keep = False
            return
        if reply[0] == "error":
            raise unseal(reply[:-1], self.task.name)[0]

    def teardown(self) -> None:
        """Have the child exit its worker's resource (``setup=``) now, while this run can
        still raise what that raises; it then serves no other run."""
        self.keep = False
        if self.exited():
            return  # gone (killed at a timeout, or died): the resource went with it
        try:
            self.to_child.send_bytes(pickle.dumps(("teardown",)))
        except (BrokenPipeError, OSError):
            return
        # Calls in flight (the run stopped): their replies come first and are dropped. A
        # child waiting out a retry's backoff takes the message as a stop: it exits its
        # resource and ends (end of file here). A join call is stopped (its next read of
        # input raises) and its thread exits its resource first.
        while self.unread > 0:
            try:
                if not self.from_child.poll(TEARDOWN_SECONDS):
                    return  # stuck in the call: close() terminates it
                self._read(self.from_child.recv_bytes())
            except (EOFError, OSError):
                return
        if not self.from_child.poll(TEARDOWN_SECONDS):
            return  # closed (terminated) by close() next
        try:
            self.unread += 1  # the teardown's own reply
            reply = self._read(self.from_child.recv_bytes())
        except (EOFError, OSError):
            return
        if reply[0] == "error":
            raise unseal(reply[:-1], self.task.name)[0]

    def settle(self) -> bool:
        """After a run: whether this child is idle and clean, fit to be kept warm."""
        with self._lock:
            self.generation += 1  # a late cancel of the run that is over wakes nobody
        try:
            while os.read(self._wake_r, 64):  # a cancel's wake-up left from the run
                pass
        except BlockingIOError:
            pass
        return self.keep and not self.busy and not self.exited()

    def close(self) -> None:
        """Stop the child (ask, then terminate, then kill), join it, close every pipe."""
        process = self.process
        if not self.exited():
            try:
                self.to_child.send_bytes(pickle.dumps(("stop",)))
            except (BrokenPipeError, OSError):
                pass
            if not self._join(GRACE_SECONDS):
                self._signal(kill=False)
                if not self._join(GRACE_SECONDS):
                    self._signal(kill=True)
        self._join(None)
        with idle_lock:
            opened.discard(self)
        with contextlib.suppress(ValueError):  # (never expected: _join reaped it)
            process.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.to_child.close()
        self.from_child.close()
        _unwiden(self._widened)
        self._widened = 0
        with self._lock:  # interrupt() writes to the lifeline and the wake-up pipe under it
            self._closed = True
            self.lifeline.close()
            os.close(self._wake_r)
            os.close(self._wake_w)


#: Without a pidfd, how often a wait for a worker's end asks waitpid whether it exited.
EXIT_POLL_SECONDS = 0.1
_P_PIDFD: int | None = getattr(os, "P_PIDFD", None)  # waitid on a pidfd (Linux 5.4+)


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for the process ``pid`` (Linux 5.3+), or None where there are none."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except ProcessLookupError:  # ended and reaped already (SIGCHLD ignored): no process left
        return None
    except OSError:  # the system has none (ENOSYS), or a sandbox forbids them
        return None
    return fd


def _ready(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` is readable within ``timeout`` seconds (None: waits until it is)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))))


# -- warm children --------------------------------------------------------------------
# A child whose run is over, idle and clean, is kept for the next run of the same task
# (the same function object and the same pickled payload: never stale code, since a
# redefined or reloaded function is another object), so that calling a pipeline again
# costs no process start; not a forked one (see ``Child.keep``). At most IDLE_MAX are
# kept, the oldest closed first; all are closed at interpreter exit, and a lifeline makes
# any child exit with this process.
# ``_idle`` is guarded by ``idle_lock``.

IDLE_MAX = 8
idle_lock = threading.Lock()  # also guards opened
_idle: list[Child] = []
opened: set[Child] = set()  # every child started and not yet closed, warm or at work
_exiting = False


def take_warm(task: Task, payload: bytes) -> Child | None:
    with idle_lock:
        for i, child in enumerate(_idle):
            if child.reusable_for(task, payload):
                del _idle[i]
                return child
    return None


def take(task: Task, payload: bytes, index: int) -> Child:
    return take_warm(task, payload) or Child(task, payload, index, threaded_context())


def keep(child: Child) -> None:
    closing = [child]
    if child.settle():
        with idle_lock:
            if not _exiting and child.choice == _choices:
                _idle.append(child)
                closing = _idle[: max(0, len(_idle) - IDLE_MAX)]
                del _idle[: len(closing)]
    for old in closing:
        old.close()


def close_idle() -> None:
    global _exiting
    with idle_lock:
        _exiting = True
        idle = list(_idle)
        _idle.clear()
    for child in idle:
        child.close()


def idle_processes() -> list[Any]:
    """Worker processes kept warm for reuse: idle, and gone at interpreter exit."""
    with idle_lock:
        return [child.process for child in _idle]


def idle_fds() -> set[int]:
    """The file descriptors this process holds for the warm children (their pipes)."""
    with idle_lock:
        return {fd for child in _idle for fd in child.fds()}


def _after_fork_in_child() -> None:
    # The parent's children are not this process's: let go of their pipes (a fork of the
    # user's would otherwise keep warm children alive past their parent's death), and
    # start afresh; the lock may have been held (a fork happens while Child.__init__
    # holds it). Their processes' descriptors stay: multiprocessing closes them by number
    # when the objects go.
    global idle_lock, _exiting, _widened
    idle_lock = threading.Lock()
    for child in list(opened):
        child.release()
    _widened = 0  # their pipes' share of the budget is the parent's
    _idle.clear()
    opened.clear()
    _exiting = True  # this process keeps no warm children of its own
    _Starter._lock = threading.Lock()  # (the parent's starter thread is not here)
    _Starter._thread = _Starter._queue = None


_state.on_exit(close_idle)
_state.on_fork(_after_fork_in_child)
