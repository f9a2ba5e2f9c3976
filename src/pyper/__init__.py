"""pyper: concurrent data pipelines from plain functions.

    from pyper import task
    run = task(produce) | task(fetch, workers=20) | task(parse) > save
"""

from ._pipeline import AsyncPipeline, Pipeline
from ._task import task

__all__ = ["AsyncPipeline", "Pipeline", "task"]
