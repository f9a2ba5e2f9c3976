"""When an item of a journaled run is done (``journal=``): the lineage of every item in
flight, counted.

Each output of the first task whose key is not done yet becomes a *root* ``Node`` (its
key, a count of 1), and travels through the channels as ``(node, value)``. A node counts
the references to it in flight: an output a map call makes from an input keeps the
input's reference; a fan-out takes one more per output it makes and gives the input's
back when its stream ends (so the count never reaches 0 while outputs may still come);
a dropped item (``on_error="skip"``) gives its back; the caller gives its back when it asks
for the next output (the one before is then taken: consumed, or handed to the consumer).
A ``batch=`` list holds a node of its own, over its items' nodes, given back with it. A
node whose count reaches 0 is done: a root's key is marked, a holder's nodes given back.

The stages' calls see plain values: each worker's call is wrapped once (``traced``), so
the loops, the executors and the per-call options are the same with a journal or without.

Who owns what: the counts, the roots in flight and the keys done but not yet written are
guarded by ``_lock`` (workers of any stage and the caller give references back); the
``Store`` is written by the run's flusher, a job on a pyper thread, at most
``FLUSH_SECONDS`` after a key is done and once more when the run closes (by ``close``
itself if the flusher never ran). So a crash loses at most that long of marks, whose
items run again.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from itertools import chain
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .._journal import Journal, Store, _calling, encode_key
from .._policy import DROPPED

if TYPE_CHECKING:
    from .._spec import Task

#: How a worker's loop reads a branching call's result (``_bridge.iter_result`` or
#: ``aiter_result``): ``iterate(task, result, run)``.
Iterate = Callable[["Task", object, Any], Any]

__all__ = ["Lineage", "Node"]

#: The longest done marks wait before they are written (by the run's flusher).
FLUSH_SECONDS = 0.05
#: ... or once this many have gathered.
FLUSH_KEYS = 4096


class Node:
    """References in flight to what one item became (``key``: a root's, else None) and,
    for a holder, the nodes it gives back once done."""

    __slots__ = ("count", "key", "holds", "failed")

    def __init__(self, key: str | None, holds: list[Node] | None = None) -> None:
        self.count = 1
        self.key = key
        self.holds = holds
        self.failed = False  # part of it failed and was dropped (on_error=): see ``give``


def _default_key(item: Any) -> Any:
    if type(item) in (str, int, bytes):
        return item
    raise TypeError(f"the item is a {type(item).__name__} ({item!r:.60}), not a str, int or bytes: "
                    "give Journal(path, key=...) a function that names an item")


class Lineage:
    """One journaled run's items in flight, and its journal's file."""

    def __init__(self, journal: Journal, tasks: tuple[Task, ...]) -> None:
        # Guards the counts, ``_live``, ``done``, ``skipped``, ``_finished`` and ``_closed``;
        # the flusher waits on it for marks to write.
        self._lock = threading.Lock()
        self._due = threading.Condition(self._lock)
        self.store = Store(journal, tasks)
        self.done = self.store.done  # the keys done: in the journal, or since in this run
        # The flusher's state: running (it writes every mark, the last ones too), and
        # ``_stopped`` once it has written them and let its connection go.
        self._running = False
        self._stopped = threading.Event()
        self.before = len(self.done)
        self.key = journal.key or _default_key
        self.name = tasks[0].name
        self.where = journal.where
        # A sink marks its items through its own connection (``Journal.mark``): each map
        # call then runs with its input's node in ``_calling``.
        self.marks = journal.connect is not None
        self.skipped = 0  # outputs of the first task skipped, their key being done
        # With an error budget (max_failures=), a key done with a failure in it is written
        # only by a run that ends within its budget (``close``): a run stopped by it leaves
        # its failures to the next.
        self.budgeted = any(t.policy.max_failures is not None for t in tasks)
        self._failed: list[str] = []
        self._live: dict[str, Node] = {}  # the roots in flight, by key: one per key
        self._finished: list[str] = []  # keys done, not yet written
        self._since = 0.0  # when the oldest of them was done
        self._closed = False

    # -- counting -----------------------------------------------------------------------

    def root(self, item: Any) -> Node | None:
        """The root for the first task's output ``item``; None if its key is done (skipped).
        Two items with one key share it: the key is done once both are."""
        try:
            key = encode_key(self.key(item))
        except TypeError as exc:
            raise TypeError(f"journal {self.where} of task {self.name!r}: {exc}") from None
        with self._lock:
            if key in self.done:
                self.skipped += 1
                return None
            node = self._live.get(key)
            if node is None:
                node = self._live[key] = Node(key)
            else:
                node.count += 1
            return node

    def take(self, node: Node) -> None:
        """One more reference to ``node`` (an output of a fan-out)."""
        with self._lock:
            node.count += 1

    def give(self, node: Node, failed: bool = False) -> None:
        """A reference to ``node`` is gone: an item left the pipeline, was dropped (``failed``:
        on_error= dropped it), or fanned out."""
        with self._lock:
            if failed:
                node.failed = True
            stack = [node]
            while stack:
                n = stack.pop()
                n.count -= 1
                if n.count == 0:
                    if n.key is not None:
                        del self._live[n.key]
                        self.done.add(n.key)
                        if n.failed and self.budgeted:
                            self._failed.append(n.key)  # (written by close, if within budget)
                            continue
                        if not self._finished:
                            self._since = perf_counter()
                            self._due.notify()  # (the flusher waits for a first mark)
                        self._finished.append(n.key)
                        if len(self._finished) == FLUSH_KEYS:
                            self._due.notify()
                    if n.holds:
                        if n.failed:
                            for held in n.holds:
                                held.failed = True
                        stack.extend(n.holds)

    def flusher(self, fail: Callable[[BaseException], None]) -> None:
        """The run's writer (a job on a pyper thread, from the run's start to ``close``): the
        done marks, at most ``FLUSH_SECONDS`` after the oldest of them was done (or once
        ``FLUSH_KEYS`` gathered), whatever the caller is doing, and the last ones when the
        run closes; through a connection of its own thread. ``fail``: what it reports an
        error to (the run)."""
        conn = None
        try:
            with self._lock:
                if self._closed:
                    return  # (close came first, and wrote the marks itself)
                self._running = True
            while True:
                with self._lock:
                    while not self._closed:
                        if self._finished:
                            wait = self._since + FLUSH_SECONDS - perf_counter()
                            if wait <= 0 or len(self._finished) >= FLUSH_KEYS:
                                break
                            self._due.wait(wait)
                        else:
                            self._due.wait()
                    keys, self._finished = self._finished, []
                    last = self._closed
                if keys:
                    if conn is None:
                        conn = self.store.writer()
                    self.store.mark(conn, keys)
                if last:
                    return
        except BaseException as exc:
            fail(exc)
        finally:
            if conn is not None:
                self.store.release(conn)
            self._stopped.set()

    def close(self, within_budget: bool = True) -> None:
        """The run is over: the flusher writes what is done (with the failed keys,
        ``within_budget``: unless the run was stopped by a budget) and stops, or this thread
        writes it if the flusher never ran; the store is closed; and a resumed run says how
        many items it skipped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if within_budget:
                self._finished += self._failed
            running = self._running
            keys = [] if running else self._finished
            self._due.notify_all()
            skipped = self.skipped
        try:
            if running:
                self._stopped.wait()  # (its last write: as long as the database takes)
            elif keys:
                conn = self.store.writer()
                try:
                    self.store.mark(conn, keys)
                finally:
                    self.store.release(conn)
        finally:
            self.store.close()
        if skipped:
            import logging

            logging.getLogger("pyper").info("pyper: journal %s: skipped %d items done before", self.where,
                                            skipped, extra={"pyper_task": self.name, "pyper_run": None})

    # -- a relay's batches (a remote executor's stage: the values go, the nodes stay) ------

    def split(self, batch: list[Any], listed: bool) -> tuple[list[Node], list[Any]]:
        """(the nodes, the values) of a relay's batch of ``(node, value)`` items."""
        pairs = [self._holding(pair, listed) for pair in batch] if listed else batch
        return [node for node, _ in pairs], [value for _, value in pairs]

    def relayed(self, nodes: list[Node], outputs: list[Any], kept: Callable[[list[Any]], list[Any]] | None,
                failed: type) -> list[Any]:
        """A mapping batch's outputs (one per input, in order; a ``failed`` in place of an
        output whose call raised, which ``kept``, the task's on_error, replaces or drops),
        each with its input's node."""
        result = []
        for node, output in zip(nodes, outputs):
            if type(output) is failed:
                assert kept is not None
                replaced = kept([output])
                if not replaced:
                    self.give(node, failed=True)
                    continue
                output = replaced[0]
            result.append((node, output))
        return result

    def holder(self, nodes: list[Node]) -> Node:
        """A node over ``nodes`` (a relay's branching batch, whose outputs cannot be told
        apart by input): given back once the batch's stream has ended."""
        return Node(None, nodes)

    def held(self, holder: Node, outputs: list[Any]) -> list[Any]:
        """``outputs`` of a batch, each holding a reference to ``holder``."""
        if outputs:
            with self._lock:
                holder.count += len(outputs)
        return [(holder, output) for output in outputs]

    # -- the calls, traced --------------------------------------------------------------

    def traced(self, task: Task, first: Callable[[int], None] | None, branch: bool, call: Callable[[Any], Any],
               run: object, is_async: bool, iterate: Iterate, stepped: bool = False) -> Callable[[Any], Any]:
        """``call`` (a worker's of ``task``, with its options) on ``(node, value)`` items:
        the value in, the output out with its node (see the module's docstring).
        ``iterate``: how the worker's loop reads a ``branch``ing call's result, applied here
        first. ``first``: for the first task's call, what takes the length of what it
        returned, when it has one (the run's total, for metrics and progress).
        ``stepped``: the loop runs stepped (``timeout=`` on threads: ``_timeouts``), and
        ``call`` is a step its loop yields from."""
        if stepped:
            return self._stepped(task, first, branch, call, run, iterate)
        if first is not None:
            return (self._first_async if is_async else self._first)(task, call, run, iterate, first)
        if task.join:
            return (self._join_async if is_async else self._join)(task, call, run, iterate)
        listed = task.policy.batch > 0  # its input: lists the run's grouping stage made
        if branch:
            return (self._branch_async if is_async else self._branch)(task, call, run, listed, iterate)
        return self._map_async(call, listed) if is_async else self._map(call, listed)

    def _stepped(self, task: Task, first: Callable[[int], None] | None, branch: bool, call: Callable[[Any], Any],
                 run: object, iterate: Iterate) -> Callable[[Any], Any]:
        """``traced`` for a stepped loop: the wrapper is a step too (the call is made by the
        thread that drives the loop; a join or a generator takes no timeout, so never here)."""
        listed = task.policy.batch > 0

        def traced(pair: Any) -> Any:
            if first is not None:
                result = yield from call(pair)
                if not task.branch:
                    return self._one(result)
                if hasattr(result, "__len__"):
                    first(len(result))
                return self._roots(iterate(task, result, run))
            node, value = self._holding(pair, listed)
            token = _calling.set(node) if self.marks else None
            try:
                result = yield from call(value)
            finally:
                if token is not None:
                    _calling.reset(token)
            return self._children(node, iterate(task, result, run)) if branch else self._mapped(node, result)

        return traced

    def _holding(self, pair: Any, listed: bool) -> tuple[Node, Any]:
        if not listed:
            return pair  # type: ignore[no-any-return]
        return Node(None, [node for node, _ in pair]), [value for _, value in pair]

    def _mapped(self, node: Node, result: Any) -> Any:
        """A map call's output, with its input's node (given back if on_error dropped it)."""
        if result is DROPPED:
            self.give(node, failed=True)
            return DROPPED
        return (node, result)

    def _map(self, call: Callable[[Any], Any], listed: bool) -> Callable[[Any], Any]:
        if self.marks:
            def marking(pair: Any) -> Any:
                node, value = self._holding(pair, listed)
                token = _calling.set(node)
                try:
                    result = call(value)
                finally:
                    _calling.reset(token)
                return self._mapped(node, result)

            return marking

        def traced(pair: Any) -> Any:
            node, value = self._holding(pair, listed)
            return self._mapped(node, call(value))

        return traced

    def _map_async(self, call: Callable[[Any], Any], listed: bool) -> Callable[[Any], Any]:
        if self.marks:
            async def marking(pair: Any) -> Any:
                node, value = self._holding(pair, listed)
                token = _calling.set(node)
                try:
                    result = await call(value)
                finally:
                    _calling.reset(token)
                return self._mapped(node, result)

            return marking

        async def traced(pair: Any) -> Any:
            node, value = self._holding(pair, listed)
            return self._mapped(node, await call(value))

        return traced

    def _branch(self, task: Task, call: Callable[[Any], Any], run: object, listed: bool,
                iterate: Iterate) -> Callable[[Any], Any]:
        def traced(pair: Any) -> Any:
            node, value = self._holding(pair, listed)
            return self._children(node, iterate(task, call(value), run))

        return traced

    def _children(self, node: Node, items: Iterator[Any]) -> Iterator[Any]:
        try:
            for item in items:
                self.take(node)
                yield (node, item)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        self.give(node)  # (only at the stream's end: a stream cut short leaves the item undone)

    def _branch_async(self, task: Task, call: Callable[[Any], Any], run: object, listed: bool,
                      iterate: Iterate) -> Callable[[Any], Any]:
        async def traced(pair: Any) -> Any:
            node, value = self._holding(pair, listed)
            return self._achildren(node, iterate(task, await call(value), run))

        return traced

    async def _achildren(self, node: Node, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        try:
            async for item in items:
                self.take(node)
                yield (node, item)
        finally:
            close = getattr(items, "aclose", None)
            if close is not None:
                await close()
        self.give(node)

    def _join(self, task: Task, call: Callable[[Any], Any], run: object, iterate: Iterate) -> Callable[[Any], Any]:
        """A join call: it reads values, and its outputs hold a node over the nodes of all
        it read (given back once the call has ended and they have all been taken)."""
        def traced(inputs: Any) -> Any:
            holder = Node(None, [])
            reading = self._reading(inputs, holder)
            try:
                first = next(reading)
            except StopIteration:  # all its input was done before: no call
                return () if task.branch else DROPPED
            result = call(chain((first,), reading))
            return self._children(holder, iterate(task, result, run)) if task.branch else (holder, result)

        return traced

    @staticmethod
    def _reading(inputs: Iterator[Any], holder: Node) -> Iterator[Any]:
        holds = holder.holds
        assert holds is not None
        for node, value in inputs:
            holds.append(node)  # (its reference moves to the holder: given back with it)
            yield value

    def _join_async(self, task: Task, call: Callable[[Any], Any], run: object,
                    iterate: Iterate) -> Callable[[Any], Any]:
        async def traced(inputs: Any) -> Any:
            holder = Node(None, [])
            reading = self._areading(inputs, holder)
            try:
                first = await reading.__anext__()
            except StopAsyncIteration:  # all its input was done before: no call
                return self._nothing() if task.branch else DROPPED
            result = await call(self._achain(first, reading))
            return self._achildren(holder, iterate(task, result, run)) if task.branch else (holder, result)

        return traced

    @staticmethod
    async def _areading(inputs: AsyncIterator[Any], holder: Node) -> AsyncIterator[Any]:
        holds = holder.holds
        assert holds is not None
        async for node, value in inputs:
            holds.append(node)
            yield value

    @staticmethod
    async def _achain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
        yield first
        async for value in rest:
            yield value

    @staticmethod
    async def _nothing() -> AsyncIterator[Any]:
        return
        yield  # (an async generator that yields nothing)

    def _first(self, task: Task, call: Callable[[Any], Any], run: object,
               iterate: Iterate, sized: Callable[[int], None]) -> Callable[[Any], Any]:
        def traced(args: Any) -> Any:
            result = call(args)
            if task.branch and hasattr(result, "__len__"):
                sized(len(result))
            return self._roots(iterate(task, result, run)) if task.branch else self._one(result)

        return traced

    def _one(self, result: Any) -> Any:
        """A first task's one output (it does not branch), with its root."""
        if result is DROPPED:
            return DROPPED
        node = self.root(result)
        return DROPPED if node is None else (node, result)

    def _roots(self, items: Iterator[Any]) -> Iterator[Any]:
        try:
            for item in items:
                node = self.root(item)
                if node is not None:
                    yield (node, item)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _first_async(self, task: Task, call: Callable[[Any], Any], run: object,
                     iterate: Iterate, sized: Callable[[int], None]) -> Callable[[Any], Any]:
        async def traced(args: Any) -> Any:
            result = await call(args)
            if task.branch and hasattr(result, "__len__"):
                sized(len(result))
            return self._aroots(iterate(task, result, run)) if task.branch else self._one(result)

        return traced

    async def _aroots(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        try:
            async for item in items:
                node = self.root(item)
                if node is not None:
                    yield (node, item)
        finally:
            close = getattr(items, "aclose", None)
            if close is not None:
                await close()
