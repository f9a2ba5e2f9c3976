"""``pyper.set_start_method``: how pyper starts the worker processes of process stages,
chosen for one program without touching ``multiprocessing``'s own setting (which other
libraries in the program share). The choice lives in ``_engine._workers``, imported
only when this is called: ``import pyper`` does not import ``multiprocessing``'s pools."""

from __future__ import annotations

from typing import Literal

__all__ = ["set_start_method"]


def set_start_method(method: Literal["fork", "forkserver", "spawn"] | None) -> None:
    """Choose how pyper starts worker processes (``multiprocess=True``), for this program.

    ``"forkserver"`` and ``"spawn"`` start workers that import your main module and the
    function by name: it must be importable. ``"fork"`` copies this process, but only
    while it runs no other thread (pyper ends its own parked threads first); where
    threads run, the workers are started by the fork server instead. ``None`` restores
    the default: ``multiprocessing.set_start_method``'s choice if you made one, else
    the ``PYPER_START_METHOD`` environment variable's, else ``fork`` (as just described)
    on Linux and ``forkserver`` on macOS, ``spawn`` on Windows. Workers kept warm from earlier runs are closed, so the next run's start the
    new way. A method this platform lacks is a ``ValueError``.
    """
    from ._engine import _workers

    _workers.set_start_method(method)
