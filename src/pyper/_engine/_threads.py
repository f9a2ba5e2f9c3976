"""Named worker threads, reused while they are warm.

Starting a thread costs 100-250 us here, more than a whole small pipeline run, so a
thread that finishes a job parks for up to ``IDLE_SECONDS`` waiting for the next one
(as trio's thread cache does) and then exits. Nothing else is shared between runs:
every job is a whole stage worker, which owns its thread until it returns.

Who owns what:
- ``_idle`` (guarded by ``_lock``): parked workers, most recently parked last. A
  worker appends itself when it parks; ``spawn`` pops one and hands it a job; a
  worker whose wait timed out removes itself and exits.
- ``_busy`` (guarded by ``_lock``): workers running a job, each with what the job
  belongs to (its run, or None). ``spawn`` adds a parked worker as it hands it a job,
  a new thread adds itself as it starts; the worker removes itself, in the same hold
  of the lock as it parks (or exits), and notifies ``_changed``.
- ``_pausable`` (guarded by ``_lock``): pyper's threads of another kind that stop
  over a fork (the progress drawer), added and removed by their owners.
- ``_Worker._job`` (guarded by ``_lock``): written by ``spawn`` as it takes the
  worker out of ``_idle`` (so no one else can write it), taken by the worker.

Forking (``alone``): a process that runs threads must not fork (a lock one of them
holds stays held in the child forever; Python 3.12+ warns). pyper's own threads are
no reason not to: parked workers hold nothing and are ended, the jobs of runs that
have ended (their stages stopping: a relay closing its worker process) are waited for,
for a moment, and pausable threads are ended and started again after the fork.

Interpreter exit: non-daemon workers would be joined by ``threading._shutdown``.
Before that join, ``_at_exit`` (the first of pyper's exit actions, ``_state``) wakes
every parked worker to exit at once; the next ones cancel the live runs nobody will
finish; busy workers finish the call in flight and then exit. Daemon tasks get daemon
threads, which exit never waits for.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from . import _state

__all__ = [
    "ENDED_JOBS_SECONDS", "IDLE_SECONDS", "Pausable", "add_pausable", "alone",
    "idle_threads", "remove_pausable", "retire_idle", "single_threaded", "spawn",
]

IDLE_SECONDS = 0.2
#: How long ``alone`` waits for the jobs of runs that have ended to finish.
ENDED_JOBS_SECONDS = 1.0


class Pausable(Protocol):
    """One of pyper's threads that can stop for a fork and start again after it."""

    @property
    def thread(self) -> threading.Thread | None: ...  # running now, if any

    def pause(self) -> None: ...  # end the thread, and wait until it has

    def resume(self) -> None: ...  # start it again (unless its owner closed it meanwhile)


_lock = threading.Lock()
_changed = threading.Condition(_lock)  # a busy worker parked or exited
_idle: dict[bool, list[_Worker]] = {False: [], True: []}  # by daemon flag
_busy: dict[_Worker, object] = {}
_pausable: list[Pausable] = []
_exiting = False


class _Worker:
    """A pyper thread: runs its first job, then parks in ``_idle`` for the next one.

    Ctrl-C (a KeyboardInterrupt in the thread that calls ``spawn``, between any two of
    its steps) must never lose a worker: a job is handed over in one hold of ``_lock``
    (taken from ``_idle``, given ``_job``, woken), and a worker that wakes or times out
    decides under that lock: a job in hand runs, however late the wake-up; no job and no
    longer in ``_idle`` (retired, the program exiting, or a hand-over cut short) and it
    exits. ``_wake`` is a plain lock, held while the worker is parked and released to wake
    it (a ``Condition`` costs a new lock per wait)."""

    __slots__ = ("_job", "_owner", "_wake", "thread")

    def __init__(self, job: Callable[[], None], name: str, daemon: bool, owner: object = None) -> None:
        self._job: Callable[[], None] | None = job
        self._owner = owner  # what its first job belongs to (see _busy)
        self._wake = threading.Lock()  # released (with _lock held) to wake the parked worker
        self._wake.acquire()
        self.thread = threading.Thread(target=self._main, args=(daemon,), name=name, daemon=daemon)

    def wake(self) -> None:  # (with _lock held, once per parking: the worker left _idle)
        self._wake.release()

    def _done(self) -> None:  # (with _lock held)
        _busy.pop(self, None)
        _changed.notify_all()

    def _main(self, daemon: bool) -> None:
        idle = _idle[daemon]
        with _lock:
            _busy[self] = self._owner
            job, self._job, self._owner = self._job, None, None
        while job is not None:
            try:
                job()  # jobs report their own errors; see _engine/_run.py
            except BaseException:
                with _lock:
                    self._done()
                raise
            del job
            self.thread.name = "pyper:idle"
            with _lock:
                self._done()
                if _exiting:
                    return
                idle.append(self)
            job = self._park(idle)

    def _park(self, idle: list[_Worker]) -> Callable[[], None] | None:
        """Wait in ``idle`` for a job, up to ``IDLE_SECONDS``: the job, or None to exit.
        Never blocks with ``_lock`` held: a hand-over that a Ctrl-C cut short (taken out
        of ``_idle``, not woken) is found at the timeout, and a wake-up that comes late (of
        a hand-over the worker already took at its timeout) is a spurious one, ignored."""
        while True:
            woken = self._wake.acquire(timeout=IDLE_SECONDS)
            with _lock:
                if self in idle:  # still parked: nobody took it
                    if woken:
                        continue  # a late wake-up of an earlier hand-over
                    idle.remove(self)
                    return None  # timed out
                job, self._job = self._job, None  # taken out of _idle: a job, or told to exit
                if job is None:  # retired, exiting, or a hand-over cut short
                    self._done()  # (spawn may have marked it busy)
                return job


def spawn(
    jobs: list[tuple[Callable[[], None], str]],
    daemon: bool,
    nonblocking: bool,
    on_error: Callable[[BaseException], None],
    owner: object = None,
) -> None:
    """Run each ``(job, thread name)`` on a parked worker thread, or on a new one.

    Starting a thread waits until it runs. With ``nonblocking`` (on an event
    loop's thread), at most one thread is started here: the first new thread
    starts the others before it runs its own job, and reports a failure to start
    them to ``on_error``. Otherwise a failure to start raises here. ``owner``: what
    the jobs belong to (their run), for ``alone``.
    """
    handed = 0
    with _lock:
        idle = _idle[daemon]
        while handed < len(jobs) and idle:
            job, name = jobs[handed]
            worker = idle.pop()
            _busy[worker] = owner
            worker.thread.name = name
            worker._job = job
            worker.wake()
            handed += 1
    rest = jobs[handed:]
    if not rest:
        return
    if nonblocking and len(rest) > 1:
        (job, name), others = rest[0], rest[1:]

        def start_others_then_run() -> None:
            try:
                for other, other_name in others:
                    _Worker(other, other_name, daemon, owner).thread.start()
            except BaseException as exc:  # e.g. "can't start new thread"
                on_error(exc)
            job()

        _Worker(start_others_then_run, name, daemon, owner).thread.start()
        return
    for job, name in rest:
        _Worker(job, name, daemon, owner).thread.start()


def idle_threads() -> frozenset[threading.Thread]:
    """Threads parked for reuse: they run nothing, hold nothing, and exit on their own."""
    with _lock:
        return frozenset(w.thread for idle in _idle.values() for w in idle)


def retire_idle() -> None:
    """End every parked thread now and wait until each has exited (before a fork:
    a process that runs no thread forks safely)."""
    with _lock:
        parked = _idle[False] + _idle[True]
        for idle in _idle.values():
            idle.clear()
        for worker in parked:
            worker.wake()  # no job, out of _idle: it exits
    for worker in parked:
        worker.thread.join()


def single_threaded(settle: float = 0.0) -> bool:
    """Whether this process runs one thread, its threads counted by the system where it
    says (Linux: the threads of C libraries too, which Python 3.12+ counts before it warns
    at a fork). ``settle``: seconds to wait for threads just joined to be gone from the
    system's count too (before 3.13, ``join`` returns just before the thread exits)."""
    if threading.active_count() != 1:
        return False
    deadline = time.monotonic() + settle
    while True:
        try:
            if len(os.listdir("/proc/self/task")) == 1:
                return True
        except OSError:  # no /proc: Python's own count
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.0005)


@contextmanager
def alone(ended: Callable[[Any], bool], wait: float = ENDED_JOBS_SECONDS) -> Iterator[bool]:
    """For a fork in this thread: yields whether the process now runs this thread only.

    pyper's own threads do not count: the jobs of owners that have ``ended`` (a run
    whose caller is done: its stages are stopping) are waited for, up to ``wait``
    seconds (not on an event loop's thread, which must not stall); then, if pyper's
    threads are all that run beside this one, the parked ones are ended (they hold
    nothing: a job started later starts a new thread) and the pausable ones paused until
    the block is done. Any other thread (the program's, a busy job of a live run, a C
    library's) and it yields False, having changed nothing.
    """
    me = threading.current_thread()
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and asyncio._get_running_loop() is not None:
        wait = 0.0
    deadline = time.monotonic() + wait
    with _lock:
        while any(owner is not None and ended(owner) for owner in _busy.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            _changed.wait(left)
        parked = {w.thread for idle in _idle.values() for w in idle}
        pausable = list(_pausable)
    ours = parked | {p.thread for p in pausable if p.thread is not None}
    if any(t is not me and t not in ours for t in threading.enumerate()):
        yield False
        return
    paused: list[Pausable] = []
    try:
        if parked:
            retire_idle()
        for p in pausable:
            p.pause()
            paused.append(p)
        # (threads just joined: gone from the system's count within microseconds)
        yield single_threaded(0.05 if ours else 0.0)
    finally:
        for p in paused:
            p.resume()


def add_pausable(thread: Pausable) -> None:
    with _lock:
        _pausable.append(thread)


def remove_pausable(thread: Pausable) -> None:
    with _lock:
        if thread in _pausable:
            _pausable.remove(thread)


def _at_exit() -> None:
    """Parked workers exit at once (the first of pyper's exit actions: ``_state``)."""
    global _exiting
    with _lock:
        _exiting = True
        parked = _idle[False] + _idle[True]
        for idle in _idle.values():
            idle.clear()
        for worker in parked:
            worker.wake()  # no job, out of _idle: it exits


def _after_fork_in_child() -> None:
    # The parent's threads do not exist in the child; forget them.
    global _lock, _changed
    _lock = threading.Lock()
    _changed = threading.Condition(_lock)
    for idle in _idle.values():
        idle.clear()
    _busy.clear()
    _pausable.clear()


_state.on_exit(_at_exit)
_state.on_fork(_after_fork_in_child)
