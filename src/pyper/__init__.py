"""pyper: concurrent data pipelines from plain functions.

    from pyper import task
    run = task(produce) | task(fetch, workers=20) | task(parse) > save

The public names are re-exported here from private modules: ``_task`` (``task``),
``_pipeline`` (``Pipeline``, ``AsyncPipeline``), ``_policy`` (``Emit``, for ``on_error``
handlers, and ``Rate``), ``_gather`` (``gather``), ``_metrics`` (``observe``), ``_progress`` (``progress``),
``_start_method`` (``set_start_method``) and ``_errors``.
"""

from ._errors import PipelineSetupError, WorkerProcessDied
from ._gather import gather
from ._metrics import RunMetrics, StageMetrics, observe
from ._pipeline import AsyncPipeline, Pipeline
from ._policy import Emit, Rate
from ._progress import progress
from ._start_method import set_start_method
from ._task import task

#: The version of the distribution ``python-pyper`` (kept equal to pyproject.toml's by a test).
__version__ = "0.5.0"

__all__ = [
    "AsyncPipeline", "Emit", "Pipeline", "PipelineSetupError", "Rate", "RunMetrics", "StageMetrics",
    "WorkerProcessDied", "gather", "observe", "progress", "set_start_method", "task", "__version__",
]
