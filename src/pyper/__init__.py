"""pyper: concurrent data pipelines from plain functions.

    from pyper import task
    run = task(produce) | task(fetch, workers=20) | task(parse) > save

The public names are re-exported here from private modules: ``_task`` (``task``),
``_pipeline`` (``Pipeline``, ``AsyncPipeline``), ``_policy`` (``Emit``, for ``on_error``
handlers, ``Rate`` and ``Budget``), ``_failures`` (``DeadLetter``), ``_letters`` (``replay``), ``_journal`` (``Journal``), ``_gather``
(``gather``), ``_metrics`` (``observe``), ``_progress`` (``progress``), ``_start_method``
(``set_start_method``) and ``_errors``.

Each is imported when first used (a module ``__getattr__``): a worker process, which
imports pyper's modules only to run its calls (``_engine._child``, ``_serve``), loads no
more of pyper than that; ``from pyper import task`` loads what a program needs.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._errors import PipelineSetupError, TooManyFailures, WorkerProcessDied
    from ._gather import gather
    from ._journal import Journal
    from ._failures import DeadLetter
    from ._letters import replay
    from ._metrics import RunMetrics, StageMetrics, observe
    from ._pipeline import AsyncPipeline, Pipeline
    from ._policy import Budget, Emit, Rate
    from ._progress import progress
    from ._start_method import set_start_method
    from ._task import task

#: The version of the distribution ``python-pyper`` (kept equal to pyproject.toml's by a test).
__version__ = "0.5.0"

__all__ = [
    "AsyncPipeline", "Budget", "DeadLetter", "Emit", "Journal", "Pipeline", "PipelineSetupError", "Rate", "RunMetrics",
    "StageMetrics", "TooManyFailures", "WorkerProcessDied", "gather", "observe", "progress", "replay",
    "set_start_method", "task", "__version__",
]

#: Where each public name lives.
_HOMES = {
    "AsyncPipeline": "._pipeline", "Pipeline": "._pipeline", "Emit": "._policy", "Rate": "._policy",
    "Budget": "._policy", "Journal": "._journal", "DeadLetter": "._failures", "replay": "._letters", "TooManyFailures": "._errors",
    "PipelineSetupError": "._errors", "WorkerProcessDied": "._errors", "RunMetrics": "._metrics",
    "StageMetrics": "._metrics", "observe": "._metrics", "gather": "._gather", "progress": "._progress",
    "set_start_method": "._start_method", "task": "._task",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pyper' has no attribute {name!r}")
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value  # (once: later reads find it as a plain attribute)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
