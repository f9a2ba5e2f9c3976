"""pyper's process-wide state, in one place: what pyper keeps for the whole process (not
for one run), who guards it, and what becomes of it when the process forks and when it
exits. One after-fork handler and one exit hook, here, call what the modules that keep the
rest registered with ``on_fork`` and ``on_exit``, in the order below.

========================================  ============  =====================  =====================  ======================
state                                     kept in       guarded by             in a forked child      at interpreter exit
========================================  ============  =====================  =====================  ======================
live runs (callers not finished)          here: live    here: lock             forgotten (the         cancelled, those nobody
                                                                               parent's to stop)      will finish (``_run``)
runs with late errors to sum up           here:         here: lock             forgotten              summed up (``_run``)
                                          unsummed
threads inside a garbage collection       here:         one set operation      (not copied:           -
                                          collecting    each (atomic)          threads are gone)
run numbers                               here:         ``next()``, atomic     counted on             -
                                          numbers
the thread cache: parked and busy         ``_threads``  ``_threads._lock``     forgotten, new lock    parked threads woken
workers, pausable threads                                                                             to exit (first)
warm worker processes, every open         ``_workers``  ``_workers.idle_lock`` let go (their pipes    closed
child, widened pipe bytes, the start                                           closed), forgotten
method chosen
children forked for a stage about to      ``_process``  the caller's thread    forgotten              -
start
Ray: jobs put in its object store,        ``_ray``      ``_ray._init_lock``    (not used there)       (Ray's own exit hook)
batch sizes reached, the connection
setup= resources alive (for the tests)    ``_policy``   ``_policy._live_lock`` kept                   -
timeout= watchdogs of thread stages       ``_timeouts`` ``_timeouts._live_    forgotten, new lock    their calls in flight
whose workers have not all left                         lock``                                        waited for, each up to
                                                                                                      its deadline
========================================  ============  =====================  =====================  ======================

Why a private hook for exit: ``atexit`` handlers run after ``threading._shutdown`` has
joined every non-daemon thread, and a run that nobody will finish (its caller, the main
thread, is leaving) would keep its worker threads, and so the interpreter, waiting for
input forever. ``threading._register_atexit`` runs before that join, for exactly this:
it is what ``concurrent.futures`` uses to stop its workers. The fork handler is the
public ``os.register_at_fork``; the garbage collector's callback list is public too.

This module imports nothing of pyper: every module may register with it.
"""

from __future__ import annotations

import gc
import itertools
import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["collecting", "exit_first", "live", "lock", "numbers", "on_exit", "on_fork", "unsummed"]

#: Guards ``live`` and ``unsummed``. Never taken while a run's own lock is held by the
#: same thread the other way round (a run takes its lock, lets go, then this): no cycle.
lock = threading.Lock()
#: Runs whose caller has not finished (``_run.Run``, added as it is made, removed by its
#: caller's ``finish``). Guarded by ``lock``.
live: set[Any] = set()
#: Runs with late errors counted but not yet summed up (a worker of theirs is still busy):
#: summed up when their last worker leaves, or at interpreter exit. Guarded by ``lock``.
unsummed: set[Any] = set()
#: Threads inside a garbage collection: a generator dropped in a reference cycle is closed
#: by the collector in whatever thread triggered it, which may hold any lock of the engine
#: at that moment; its run must then be stopped from another thread (``Run.leave``).
#: ``set.add``/``discard`` are each atomic (under the GIL, or the set's own lock).
collecting: set[int] = set()
#: Numbers for runs, in the order they start in this process (``Run.number``, on log
#: records): ``next()`` on a count is one operation.
numbers = itertools.count(1)

_at_fork: list[Callable[[], None]] = []  # appended to at import time only (one thread: the importer)
_at_exit: list[Callable[[], None]] = []  # likewise


def on_fork(reset: Callable[[], None]) -> None:
    """Call ``reset`` in a process forked from this one (the ``fork`` start method, or the
    user's own ``os.fork``), after the state kept here is forgotten. For a module's import
    time: the order of registration is the order of the calls."""
    _at_fork.append(reset)


def on_exit(action: Callable[[], None]) -> None:
    """Call ``action`` at interpreter exit, before non-daemon threads are joined (see the
    module's docstring), in the order of registration."""
    _at_exit.append(action)


def _after_fork_in_child() -> None:
    # The parent's runs are the parent's to stop, never the child's (cancelling them at the
    # child's exit would wake the parent's workers through pipes they share); the parent's
    # threads do not exist here. Only this thread runs now.
    global lock
    lock = threading.Lock()  # (it may have been held at the fork)
    live.clear()
    unsummed.clear()
    collecting.clear()
    for reset in _at_fork:
        reset()


_exited = [False]  # the exit actions ran (they run once, however often the hook is called)
_first = [False]  # the hook was registered again, to run before the hooks registered until then


def _at_interpreter_exit() -> None:
    if _exited[0]:
        return
    _exited[0] = True
    for action in list(_at_exit):
        action()


def exit_first() -> None:
    """Have pyper's exit hook run before the exit hooks registered so far: threading runs
    them last registered first, and an executor of the user's registered one as its module
    was imported (``concurrent.futures``' stops taking calls there). A stage on such an
    executor calls this as it starts, once per program is enough: at exit pyper then
    cancels the runs nobody will finish while the executor still takes (and cancels)
    calls, instead of its relays failing as the executor refuses their next batch."""
    if _first[0]:
        return
    _first[0] = True
    try:
        threading._register_atexit(_at_interpreter_exit)  # type: ignore[attr-defined]
    except RuntimeError:  # exit has begun: the hook runs as it is
        pass


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        collecting.add(threading.get_ident())
    else:
        collecting.discard(threading.get_ident())


os.register_at_fork(after_in_child=_after_fork_in_child)
threading._register_atexit(_at_interpreter_exit)  # type: ignore[attr-defined]  # (see the docstring)
gc.callbacks.append(_on_gc)
