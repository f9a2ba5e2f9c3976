"""Metrics: what each stage of a run did, readable while it runs and after it ends.

    with pyper.observe() as seen:
        for item in pipeline(1000):
            ...
    print(seen.last.summary())   # a table, the bottleneck, and what would speed it up

``observe()`` records every run started in its context (the calling thread, or the
task of an async caller; nested pipelines too). The engine keeps the counts anyway,
per batch and on the slow paths only, so observing costs nothing per item:

- items in: what the stage's workers took from their input (the first task: its one
  call); calls: those items' first attempts and their retries; items out: what the next stage (or the caller) took from this one, plus what
  waits on the link between them (``queued`` of the next stage); between two Ray stages,
  which hand each other references to batches of outputs, the items those stand for;
- waiting for input and for room downstream: the seconds the stage's workers spent
  parked on their channels;
- busy: the rest of the workers' time, in calls (a process or Ray stage's relays count
  their remote calls) and moving items; its share of the run's time times the stage's
  workers names the bottleneck (a stage whose workers are all busy all along);
- cpu: for a thread stage, the CPU time of its workers' threads (each thread's CPU clock,
  read when the snapshot is taken), which tells calls that compute from calls that wait:
  the summary's advice weighs it, and the cores, before it says "give it more workers";
- workers: made and still running, and the size the stage runs at (for ``workers=(lo,
  hi)``, what the sizer chose: the size it settled on, once the run is over);
- errors (items whose call raised: skipped, handed to ``on_error``, or raised), retries
  (failed attempts tried again) and skips, counted from the log records the calls make
  (a process or Ray stage's come back with its batches).

A snapshot (``RunMetrics.stages``) is taken when read: from another thread, or the
same event loop, while the run goes; its figures are each a plain read of a counter
its owner updates (a stale read is one batch behind).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import TYPE_CHECKING, NamedTuple

from ._engine._run import observing

if TYPE_CHECKING:
    from ._engine._run import Run, Stage
    from ._spec import Task

__all__ = ["Observer", "RunMetrics", "StageMetrics", "observe"]


class StageMetrics(NamedTuple):
    """One stage's figures at the time of the snapshot."""

    name: str
    workers: int  # workers made so far
    alive: int  # of which still running
    items_in: int
    items_out: int
    queued: int  # items waiting on this stage's input link
    busy: float  # worker-seconds not parked on a channel
    waiting_input: float  # worker-seconds parked for input
    waiting_room: float  # worker-seconds parked for room downstream
    busy_share: float  # busy / the workers' time so far: 1.0 is every worker busy all along
    errors: int  # items whose call raised: skipped, handed to on_error, or raised
    retries: int  # failed attempts that were tried again
    skips: int  # items dropped by on_error="skip"
    calls: int = 0  # calls made: an item's (a list's, with batch=) first attempt and each retry
    size: int = 1  # workers the stage runs now: its workers=, or what the sizer chose (lately)
    sizes: tuple[int, int] | None = None  # workers=(lo, hi), for a stage that sizes itself
    # With batch=: the items in the lists the stage has taken (``items_in`` counts the lists);
    # None for a stage that takes single items.
    items_in_lists: int | None = None
    # CPU seconds its workers' threads spent (a thread stage's, whose calls run in them),
    # None where it is not measured (asyncio, process and Ray stages; macOS).
    cpu: float | None = None

    def __str__(self) -> str:
        return (f"{self.name}: {self.items_in} in, {self.items_out} out, {self.alive}/{self.workers} "
                f"workers, busy {self.busy_share:.0%}")


class RunMetrics:
    """One run, observed: ``stages`` is a fresh snapshot at each read."""

    def __init__(self, run: Run) -> None:
        self._run = run

    @property
    def done(self) -> bool:
        """Whether the caller is done with the run (its stream ended, or it stopped)."""
        return bool(self._run.ended)

    @property
    def nested(self) -> bool:
        """Whether the run is a pipeline called by a task of another run."""
        return self._run.parent is not None

    @property
    def elapsed(self) -> float:
        """Seconds from the run's start to its end, or to now."""
        return (self._run.ended or perf_counter()) - self._run.started

    @property
    def stages(self) -> list[StageMetrics]:
        now = self._run.ended or perf_counter()
        stages = self._run.stages
        return [_stage(stage, stages[i - 1] if i else None, now) for i, stage in enumerate(stages)]

    @property
    def total(self) -> int | None:
        """How many items the first task makes, when what it returned has a length (a list,
        a range): what a progress bar counts toward."""
        return self._run.stages[0].total

    @property
    def count(self) -> int:
        """What a progress bar counts: the items the run has made (the last stage's
        outputs) or, when the last task takes lists (``batch=``), the items in the lists
        it has taken (not the lists, nor what its calls return for them)."""
        last = self.stages[-1]
        return last.items_out if last.items_in_lists is None else last.items_in_lists

    @property
    def done_before(self) -> int:
        """Items a journal (``journal=``) skipped as done by earlier runs, so far (0 without
        a journal): a resumed run's progress starts here."""
        lineage = self._run.lineage
        return 0 if lineage is None else lineage.skipped

    @property
    def bottleneck(self) -> StageMetrics | None:
        """The stage busiest for its workers (highest busy share): the one to give more."""
        stages = self.stages
        top = _busiest(stages)
        return None if top is None else stages[top]

    def summary(self) -> str:
        """A table of the stages, naming the bottleneck."""
        stages = self.stages
        rows = [("stage", "size", "workers", "in", "out", "queued", "errors", "retries", "busy", "wait in",
                 "wait room")]
        for s in stages:
            size = str(s.size) if s.sizes is None else f"{s.size} of {s.sizes[0]}-{s.sizes[1]}"
            rows.append((s.name, size, f"{s.alive}/{s.workers}", str(s.items_in), str(s.items_out), str(s.queued),
                         str(s.errors), str(s.retries), f"{s.busy_share:.0%}", f"{s.waiting_input:.2f}s",
                         f"{s.waiting_room:.2f}s"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 for row in rows]
        i = _busiest(stages)
        state = "done" if self.done else "running"
        if self._run.lineage is not None:
            state += f" ({self.done_before} items done before, skipped)"
        elapsed = self.elapsed
        if i is None:
            said = "none"
        else:
            top = stages[i]
            said = f"{top.name} (busy {top.busy_share:.0%}: {_advice(top, self._run.stages[i].task, elapsed)})"
        lines.append(f"{state} after {elapsed:.2f}s; bottleneck: {said}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<RunMetrics {'done' if self.done else 'running'}, {len(self._run.stages)} stages>"


def _busiest(stages: list[StageMetrics]) -> int | None:
    """The index of the stage busiest for its workers (None before any worker started)."""
    started = [i for i, s in enumerate(stages) if s.workers]
    return max(started, key=lambda i: stages[i].busy_share) if started else None


#: A thread stage whose threads spent at least this many cores' worth of CPU over the run
#: computes: Python code in threads takes turns at the interpreter lock, which one core's
#: worth saturates (the other stages and the caller take their turns too).
COMPUTES_CORES = 0.5


def cores() -> int:
    """The cores this process may run on (``os.process_cpu_count()`` on 3.13+)."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        return int(count() or 1)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _advice(stage: StageMetrics, task: Task, elapsed: float) -> str:
    """What would speed up the bottleneck, weighing the cores and what its calls spend
    their time on: more workers help calls that wait, not calls that compute on cores
    already busy."""
    if stage.sizes is not None:
        if stage.size < stage.sizes[1]:
            return "it sizes itself"
        return f"at its most workers, {stage.sizes[1]}: raise that"
    n = cores()
    the_cores = f"the {n} cores" if n > 1 else "the one core"
    if task.executor == "process":  # its calls' CPU time is the children's, not measured here
        if stage.size >= n:
            return (f"its {stage.size} processes fill {the_cores}: more would only share them, "
                    "unless its calls wait rather than compute")
        return f"give it more workers (up to {n}, the cores, if its calls compute)"
    if stage.cpu is not None and elapsed > 0:
        used = stage.cpu / elapsed  # cores' worth of CPU its threads spent
        if used >= n - COMPUTES_CORES:
            return f"its calls keep {the_cores} busy: more workers would only share them"
        if used >= COMPUTES_CORES:
            return (f"its calls compute ({used:.1f} cores' worth of CPU) and threads take turns at "
                    f"Python's interpreter lock: run it in processes (multiprocess=True), up to {n} workers")
    return "give it more workers"


def _stage(stage: Stage, up: Stage | None, now: float) -> StageMetrics:
    workers = list(stage.workers)
    alive = sum(1 for w in workers if not w.gone)
    lifetime = sum((w.gone or now) - w.born for w in workers)
    waiting_input, waiting_room = stage.inp.get_waited, stage.out.put_waited
    busy = max(0.0, lifetime - waiting_input - waiting_room)
    # What the workers could have been busy for: until now (or the run's end), as a worker
    # that ended early with its input was not the bottleneck; a sizing stage's retired
    # workers, until they left.
    adaptive = stage.task.adaptive
    span = sum(((w.gone if adaptive else 0.0) or now) - w.born for w in workers)
    out = stage.out
    # Between two Ray stages a link carries references to batches: the items they stand for.
    refs_in = sum(w.refs_in for w in workers)
    refs_out = sum(w.refs_out for w in workers)
    refs_up = sum(w.refs_out for w in list(up.workers)) if up is not None else 0
    items_in = stage.inp.taken + refs_in
    seconds = [w.cpu_seconds() for w in workers]
    cpu = sum(s for s in seconds if s is not None) if seconds and None not in seconds else None
    listed = None
    if up is not None and up.group is not None:
        # The lists come from the run's grouping stage, one worker making lists of ``size``
        # items in order; all are full but the one the input's end leaves, and those that
        # ``linger=`` lets go early. So the items in the lists taken are their number times
        # ``size``, capped by the items gathered: exact without linger= and at every run's
        # end; with linger=, a partial list counts as full until then (at most the items
        # gathered). No per-list bookkeeping for it.
        listed = min(items_in * up.group.size, up.inp.taken)
    return StageMetrics(
        name=stage.task.name,
        workers=len(workers),
        alive=alive,
        items_in=items_in,
        items_out=out.taken + out.queued + refs_out,
        queued=stage.inp.queued + max(0, refs_up - refs_in),
        busy=busy,
        waiting_input=waiting_input,
        waiting_room=waiting_room,
        busy_share=min(1.0, busy / span) if span > 0 else 0.0,
        errors=sum(w.skips + w.handled + w.raised for w in workers),
        retries=sum(w.retries for w in workers),
        skips=sum(w.skips for w in workers),
        calls=items_in + sum(w.retries for w in workers),
        size=stage.size,
        sizes=(stage.task.workers, stage.task.most) if stage.task.adaptive else None,
        items_in_lists=listed,
        cpu=cpu,
    )


class Observer:
    """The runs ``observe()`` has seen, in the order they started."""

    def __init__(self) -> None:
        self.runs: list[RunMetrics] = []

    @property
    def last(self) -> RunMetrics:
        """The run started last (an error if none has started)."""
        if not self.runs:
            raise LookupError("pyper.observe(): no pipeline has run in this block yet")
        return self.runs[-1]

    def _add(self, run: Run) -> None:
        self.runs.append(RunMetrics(run))


@contextmanager
def observe() -> Iterator[Observer]:
    """Record the metrics of every run started in this block (this thread or task, and
    the pipelines its runs call), also when it is nested in another ``observe()`` or
    ``progress()`` block: each of them records the run."""
    observer = Observer()
    outer = observing.get()  # an enclosing observe() or progress() block records these runs too
    if outer is None:
        watch = observer._add
    else:
        def watch(run: Run) -> None:
            outer(run)
            observer._add(run)
    token = observing.set(watch)
    try:
        yield observer
    finally:
        observing.reset(token)
