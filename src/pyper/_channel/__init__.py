"""The channel between two stages (``_core``), and what the engine adds around it, each in
a module of its own: sharing out the batches in hand (``_sharing``), reordering
(``_order``), pacing (``_pacing``) and retiring receivers (``_retiring``); its one wait
loop (``_async_wait``, and ``_sync_wait`` generated from it) and its waiters (``_waiters``).
"""

from ._core import Channel, Held
from ._pacing import MAX_CAPACITY, PACE_SECONDS
from ._waiters import TIMED_OUT

__all__ = ["MAX_CAPACITY", "PACE_SECONDS", "TIMED_OUT", "Channel", "Held"]
