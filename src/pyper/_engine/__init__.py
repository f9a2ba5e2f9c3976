"""Runs pipelines. ``_run`` is one run (its channels, stages, errors and cancellation);
``_executors`` starts each stage on its executor, by its row in ``_registry``: the local
ones (``_thread``, ``_async``) run the loops (``_async_loops``, written once, and their
generated sync twins) in each worker; the remote ones (``_process``, ``_ray``,
``_futures``) run the shared relay (``_relay``), and their remote side runs ``_serve``.
``_state`` is pyper's process-wide state. The README's "Architecture" section maps it all."""
