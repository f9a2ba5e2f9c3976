"""Runs pipelines: ``_run`` (one run's state and shutdown), ``_thread`` and ``_async``
(stage workers), ``_threads`` (reused worker threads)."""
