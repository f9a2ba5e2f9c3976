"""The table of executors: each executor's row, what the rest of pyper knows of it.

A task's ``executor`` (``_spec.Task``) is set once, by ``task()``; everything that depends
on where its calls run reads that task's row here, through ``row(task)``, and nothing
else: ``task()`` checks the options against it, the caller runs the first task inline
only on its own executor, a run sizes the link in front of a remote stage by it, and
``_executors`` starts a stage on its module. A new executor is one module in
``pyper._engine`` and one row below; no other file learns its name.

Data only, and importing nothing of pyper but ``_spec``: ``task()`` reads it, and the
executors' modules (with their dependencies: asyncio, multiprocessing, ray) are imported
only when a stage first runs there.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._spec import Task

__all__ = ["EXECUTORS", "RAY_OPTIONS", "Row", "executor_name", "row"]


class Row(NamedTuple):
    """What the rest of pyper knows of one executor: its row in ``EXECUTORS``. Data only,
    read at ``task(...)`` time (to check a task's options) and by the engine (to start a
    stage, size its input link, run its first task inline or not); the module itself is
    imported when a stage first runs there, so ``import pyper`` loads no executor's
    dependencies."""

    module: str  #: the executor's module in ``pyper._engine``: its ``start(run, stage, workers)``
    runs: str  #: the kind of function it calls: "sync" or "async"
    #: The calls run in another process or machine, behind a relay per worker (``_relay``):
    #: items are serialized, and the relays pace the link in front of the stage.
    remote: bool = False
    #: The function, ``setup=``, ``on_error=`` and ``backoff=`` must pickle (checked at
    #: ``task(...)``); else the executor's own serializer takes what it is given.
    pickles: bool = False
    sizable: bool = True  #: takes ``workers=(lo, hi)``
    per_worker: bool = True  #: workers of pyper's own: ``setup=`` and ``join=True`` work
    #: (module, install command): the optional dependency it needs, found at ``task(...)``.
    needs: tuple[str, str] | None = None
    #: The option that takes its settings (``ray_options``), and the settings it accepts.
    settings: tuple[str, frozenset[str]] | None = None


#: Ray's per-call options that ``ray_options=`` passes on (retries are pyper's ``retries=``).
RAY_OPTIONS = frozenset({
    "num_cpus", "num_gpus", "memory", "resources", "runtime_env", "scheduling_strategy",
    "accelerator_type", "label_selector", "placement_group", "placement_group_bundle_index",
})

#: Every executor, by the name ``task(executor=...)`` takes (and ``Task.executor`` holds);
#: "futures" is the row of any ``concurrent.futures.Executor`` instance given there.
EXECUTORS: dict[str, Row] = {
    "thread": Row("_thread", runs="sync"),
    "asyncio": Row("_async", runs="async"),
    "process": Row("_process", runs="sync", remote=True, pickles=True),
    "ray": Row("_ray", runs="sync", remote=True, sizable=False, needs=("ray", "pip install 'python-pyper[ray]'"),
               settings=("ray_options", RAY_OPTIONS)),
    "futures": Row("_futures", runs="sync", remote=True, per_worker=False),
}


def executor_name(executor: Any) -> str:
    """The row name of what ``Task.executor`` holds: an executor's name, or "futures"
    for a ``concurrent.futures.Executor`` instance."""
    return executor if type(executor) is str else "futures"


def row(task: Task) -> Row:
    """The executor row of a task: how the engine reads a task's ``executor``."""
    return EXECUTORS[executor_name(task.executor)]
