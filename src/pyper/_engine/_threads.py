"""Named worker threads, reused while they are warm.

Starting a thread costs 100-250 us here, more than a whole small pipeline run, so a
thread that finishes a job parks for up to ``IDLE_SECONDS`` waiting for the next one
(as trio's thread cache does) and then exits. Nothing else is shared between runs:
every job is a whole stage worker, which owns its thread until it returns.

Who owns what:
- ``_idle`` (guarded by ``_lock``): parked workers, most recently parked last. A
  worker appends itself when it parks; ``spawn`` pops one and hands it a job; a
  worker whose wait timed out removes itself and exits.
- ``_Worker._job``: written by ``spawn`` while the worker is parked (not in
  ``_idle`` any more, so no one else can write it), read by the worker after its
  wake-up lock is released.

Interpreter exit: non-daemon workers would be joined by ``threading._shutdown``.
Before that join, ``_at_exit`` (registered with ``threading._register_atexit``,
the hook ``concurrent.futures`` uses) wakes every parked worker to exit at once and
calls the exit hooks of live runs, which cancel them; busy workers finish the
call in flight and then exit. Daemon tasks get daemon threads, which exit never
waits for.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

__all__ = ["IDLE_SECONDS", "add_exit_hook", "idle_threads", "retire_idle", "spawn"]

IDLE_SECONDS = 0.2

_lock = threading.Lock()
_idle: dict[bool, list[_Worker]] = {False: [], True: []}  # by daemon flag
_exit_hooks: list[Callable[[], None]] = []
_exiting = False


class _Worker:
    __slots__ = ("_job", "_wake", "thread")

    def __init__(self, job: Callable[[], None], name: str, daemon: bool) -> None:
        self._job: Callable[[], None] | None = job
        self._wake = threading.Lock()
        self._wake.acquire()
        self.thread = threading.Thread(target=self._main, args=(daemon,), name=name, daemon=daemon)

    def _main(self, daemon: bool) -> None:
        idle = _idle[daemon]
        while True:
            job = self._job
            if job is None:
                return
            self._job = None
            job()  # jobs report their own errors; see _engine/_run.py
            del job
            self.thread.name = "pyper:idle"
            with _lock:
                if _exiting:
                    return
                idle.append(self)
            if not self._wake.acquire(timeout=IDLE_SECONDS):
                with _lock:
                    if self in idle:
                        idle.remove(self)
                        return
                # spawn() took this worker just as the wait timed out: take the job.
                self._wake.acquire()


def spawn(
    jobs: list[tuple[Callable[[], None], str]],
    daemon: bool,
    nonblocking: bool,
    on_error: Callable[[BaseException], None],
) -> None:
    """Run each ``(job, thread name)`` on a parked worker thread, or on a new one.

    Starting a thread waits until it runs. With ``nonblocking`` (on an event
    loop's thread), at most one thread is started here: the first new thread
    starts the others before it runs its own job, and reports a failure to start
    them to ``on_error``. Otherwise a failure to start raises here.
    """
    with _lock:
        idle = _idle[daemon]
        handed = [(idle.pop(), job, name) for job, name in jobs[: len(idle)]]
    for worker, job, name in handed:
        worker.thread.name = name
        worker._job = job
        worker._wake.release()
    rest = jobs[len(handed) :]
    if not rest:
        return
    if nonblocking and len(rest) > 1:
        (job, name), others = rest[0], rest[1:]

        def start_others_then_run() -> None:
            try:
                for other, other_name in others:
                    _Worker(other, other_name, daemon).thread.start()
            except BaseException as exc:  # e.g. "can't start new thread"
                on_error(exc)
            job()

        _Worker(start_others_then_run, name, daemon).thread.start()
        return
    for job, name in rest:
        _Worker(job, name, daemon).thread.start()


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
        worker._job = None
        worker._wake.release()
    for worker in parked:
        worker.thread.join()


def add_exit_hook(hook: Callable[[], None]) -> None:
    with _lock:
        _exit_hooks.append(hook)


def _at_exit() -> None:
    global _exiting
    with _lock:
        _exiting = True
        parked = _idle[False] + _idle[True]
        for idle in _idle.values():
            idle.clear()
        hooks = list(_exit_hooks)
    for worker in parked:
        worker._job = None
        worker._wake.release()
    for hook in hooks:
        hook()


def _after_fork_in_child() -> None:
    # The parent's threads do not exist in the child; forget them.
    global _lock
    _lock = threading.Lock()
    for idle in _idle.values():
        idle.clear()


threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
os.register_at_fork(after_in_child=_after_fork_in_child)
