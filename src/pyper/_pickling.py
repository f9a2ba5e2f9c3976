"""Pickling what goes to worker processes: plain ``pickle`` first, and ``cloudpickle``
(the optional extra ``python-pyper[cloudpickle]``) for what plain pickle refuses:
lambdas, closures, functions defined in ``__main__`` or decorated with ``@task``.

cloudpickle is imported only when plain pickle has failed, never by ``import pyper``.
This module imports nothing of pyper.
"""

from __future__ import annotations

from typing import Any

__all__ = ["dumps", "have_cloudpickle", "unpicklable_types"]


def _cloudpickle() -> Any:
    try:
        import cloudpickle  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return None
    return cloudpickle


def have_cloudpickle() -> bool:
    return _cloudpickle() is not None


def dumps(obj: object) -> bytes:
    """``obj`` pickled; by value with cloudpickle where pickling by reference fails."""
    import pickle  # here, not at the top: only programs with process stages need it

    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:
        cloudpickle = _cloudpickle()
        if cloudpickle is None:
            raise
        data: bytes = cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        return data


def unpicklable_types(items: list[Any]) -> str:
    """The names of the types of those ``items`` that do not pickle (after a batch of
    them failed to: the message names what to fix, not every type in the batch)."""
    import pickle

    failing = set()
    for x in items:
        try:
            pickle.dumps(x, pickle.HIGHEST_PROTOCOL)
        except Exception:
            failing.add(type(x).__name__)
    return ", ".join(sorted(failing)) or "?"
