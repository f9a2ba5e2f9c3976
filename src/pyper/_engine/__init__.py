"""Runs pipelines: ``_run`` (one run's state and shutdown), ``_executors`` (the executor
protocol and the choice of executor), ``_thread``/``_async`` (the executors),
``_async_loops``/``_async_caller`` (the loops, written once; their sync twins are
generated), ``_bridge`` (crossing between threads and the loop), ``_threads``
(reused worker threads)."""
