"""Progress: a bar per run of a block (tqdm or rich), or periodic log lines per stage.

    with pyper.progress():
        for item in pipeline(1000):
            ...

Built on ``observe()``: a thread of its own reads the runs' metrics every
``interval`` seconds and draws them, so the pipeline's workers do nothing more per item.
With tqdm installed (``pip install 'python-pyper[tqdm]'``), or rich (``[rich]``), each
run has a bar: the items it made (with ``batch=`` on the last task, the items in its
lists), their rate, what each stage has handed on and the
errors (and a total, when given); without either, or with ``bars=False``, it
logs one INFO line per stage on the ``pyper.progress`` logger every ``interval``
seconds (10 by default for lines). Leaving the block (normally, on a break, an error
or Ctrl-C) draws the last figures, closes the bars and ends the thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from ._metrics import Observer, RunMetrics, StageMetrics, observe

__all__ = ["progress"]


@contextmanager
def progress(
    *, bars: bool | Literal["tqdm", "rich"] | None = None, interval: float | None = None,
    total: int | None = None,
) -> Iterator[Observer]:
    """Show the progress of every run started in this block.

    ``bars``: ``"tqdm"`` or ``"rich"`` bars; ``True``: whichever of them is installed (tqdm
    first); ``None`` (the default): the same, or log lines if neither is; ``False``: log lines.
    ``interval``: seconds between updates (0.2 for bars, 10 for log lines).
    ``total``: how many items the bars count toward, if known: the pipeline's outputs, or,
    when its last task takes lists (``batch=``), the items in them (``total=1000`` for 1000
    rows loaded 100 at a time). Without it, a first task that returns something with a
    length, a list or a range, gives it. (The log lines show the count in a line per run,
    when the last task batches or there is a total.)
    """
    drawer_name = _choose(bars)
    view: _View = (_Bars(total) if drawer_name == "tqdm" else _RichBars(total) if drawer_name == "rich"
                   else _Lines(total))
    seconds = interval if interval is not None else (0.2 if drawer_name else 10.0)
    with observe() as seen:
        drawer = _Drawer(seen, view, seconds)
        try:
            yield seen
        finally:
            drawer.close()
            try:
                view.update(seen.runs, final=True)
            finally:
                view.close()


def _choose(bars: object) -> str | None:
    """What draws the bars ("tqdm", "rich"), or None for log lines."""
    if bars is False:
        return None
    if bars in ("tqdm", "rich"):
        if not _have(str(bars)):
            raise RuntimeError(f"pyper.progress(bars={bars!r}) draws with {bars}, which is not installed: "
                               f"pip install 'python-pyper[{bars}]', or use bars=False for log lines")
        return str(bars)
    if bars is not None and bars is not True:
        raise TypeError(f"pyper.progress(): bars must be True, False, None, 'tqdm' or 'rich', got {bars!r}")
    for name in ("tqdm", "rich"):
        if _have(name):
            return name
    if bars:
        raise RuntimeError("pyper.progress(bars=True) draws with tqdm or rich, and neither is installed: "
                           "pip install 'python-pyper[tqdm]', or use bars=False for log lines")
    return None


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


class _Drawer:
    """The thread that draws, every ``seconds``. pyper forks its worker processes only
    while the process runs one thread: over such a fork the drawer is paused (its thread
    ended, then started anew), rather than making pyper use the fork server
    (``_threads.alone``), and it never holds a lock (the terminal's, logging's) at a fork.

    Who owns what: the block's thread starts and closes it, a thread forking pauses and
    resumes it; ``_lock`` guards ``thread``, ``_stop`` and ``_closed``."""

    def __init__(self, seen: Observer, view: _View, seconds: float) -> None:
        from ._engine import _threads

        self._args = (seen, view, seconds)
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        with self._lock:
            self._start()
        _threads.add_pausable(self)

    def _start(self) -> None:  # (with _lock held)
        self._stop = stop = threading.Event()
        self.thread = threading.Thread(target=_draw, args=(*self._args, stop), name="pyper:progress", daemon=True)
        self.thread.start()

    def pause(self) -> None:
        with self._lock:
            thread, self.thread = self.thread, None
            if thread is not None:
                self._stop.set()
                thread.join()

    def resume(self) -> None:
        with self._lock:
            if not self._closed and self.thread is None:
                self._start()

    def close(self) -> None:
        from ._engine import _threads

        _threads.remove_pausable(self)
        with self._lock:
            self._closed = True
        self.pause()


def _draw(seen: Observer, view: _View, seconds: float, stop: threading.Event) -> None:
    while not stop.wait(seconds):
        try:
            view.update(seen.runs, final=False)
        except Exception:  # a drawing that failed (a closed terminal): the next may not
            pass


class _View:
    def update(self, runs: list[RunMetrics], final: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _Lines(_View):
    """One log line per stage of each run still going (and, at the end, of every run),
    then one for the run's count (``RunMetrics.count``) when it counts toward a total or
    its last task batches (its stage line counts lists)."""

    def __init__(self, total: int | None) -> None:
        import logging  # only here: import pyper stays light

        self._log = logging.getLogger("pyper.progress")
        self._total = total
        self._shown: set[int] = set()  # runs whose final lines were logged

    def update(self, runs: list[RunMetrics], final: bool) -> None:
        for number, run in enumerate(runs, 1):
            done = run.done
            if id(run) in self._shown or (done and not final):
                continue
            elapsed = max(run.elapsed, 1e-9)
            for stage in run.stages:
                self._log.info(
                    "pyper: run %d, %s: %d out (%.0f/s), %d errors, %d/%d workers%s",
                    number, stage.name, stage.items_out, stage.items_out / elapsed, stage.errors,
                    stage.alive, stage.workers, ", done" if done else "",
                )
            total = self._total if self._total is not None else run.total
            before = run.done_before
            if total is not None or run.stages[-1].items_in_lists is not None or before:
                count = run.count
                self._log.info("pyper: run %d: %s items (%.0f/s)%s%s", number,
                               f"{before + count}/{total}" if total is not None else before + count,
                               count / elapsed, f", {before} done before" if before else "",
                               ", done" if done else "")
            if final:
                self._shown.add(id(run))


class _Bars(_View):
    """A tqdm bar for each run (not the nested ones): the items the pipeline has made,
    with what each stage has handed on and the errors. One bar, not one per stage:
    several bars that move at once break a terminal's lines when anything else is
    printed. While the bars are up, pyper's own log records (a skipped item, a retry)
    are written above them rather than through them, if no logging is configured
    (Python would print them to stderr, across the bars)."""

    def __init__(self, total: int | None) -> None:
        import logging

        self._total = total
        self._bars: dict[int, Any] = {}  # run index -> its bar
        self._lock = threading.Lock()  # the drawer's updates and the final one
        self._logger = logging.getLogger("pyper")
        self._handler: logging.Handler | None = None
        if not self._logger.handlers and not logging.getLogger().handlers:
            self._handler = _above_bars()
            self._logger.addHandler(self._handler)

    def update(self, runs: list[RunMetrics], final: bool) -> None:
        from tqdm import tqdm

        with self._lock:
            for r, run in enumerate(runs):
                if run.nested:
                    continue
                stages = run.stages
                bar = self._bars.get(r)
                if bar is None:
                    bar = self._bars[r] = tqdm(total=self._total, desc="pyper", unit=" items", dynamic_ncols=True)
                    bar.start_t -= run.elapsed  # its rate counts from the run's start
                if bar.total is None and run.total is not None:
                    bar.total = run.total  # known once the first task has returned
                # (a cancelled run drops what was queued; a journal's done items count: a
                # resumed run's bar starts where the last one stopped)
                bar.update(max(0, run.done_before + run.count - bar.n))
                bar.set_postfix_str(
                    " | ".join(f"{_short(s)} {s.items_out}" for s in stages[:-1])
                    + f" | errors {sum(s.errors for s in stages)}", refresh=False)
                bar.refresh()

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
            if self._handler is not None:
                self._logger.removeHandler(self._handler)
                self._handler = None


class _RichBars(_View):
    """A rich progress bar for each run (not the nested ones), as ``_Bars`` draws with
    tqdm; pyper's own log records are printed above the bars by rich's console, if no
    logging is configured."""

    def __init__(self, total: int | None) -> None:
        import logging

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._total = total
        self._progress = Progress(
            TextColumn("pyper"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[rate]:.0f} items/s, {task.fields[stages]}"), auto_refresh=False,
        )
        self._tasks: dict[int, Any] = {}  # run index -> its task id in the progress display
        self._lock = threading.Lock()
        self._logger = logging.getLogger("pyper")
        self._handler: logging.Handler | None = None
        self._progress.start()
        if not self._logger.handlers and not logging.getLogger().handlers:
            self._handler = _above_bars(self._progress.console.print)
            self._logger.addHandler(self._handler)

    def update(self, runs: list[RunMetrics], final: bool) -> None:
        with self._lock:
            for r, run in enumerate(runs):
                if run.nested:
                    continue
                stages = run.stages
                stage_counts = " | ".join(f"{_short(s)} {s.items_out}" for s in stages[:-1])
                count = run.count
                rate = count / max(run.elapsed, 1e-9)
                counts = f"{stage_counts} | errors {sum(s.errors for s in stages)}"
                total = self._total if self._total is not None else run.total
                if r not in self._tasks:
                    self._tasks[r] = self._progress.add_task("pyper", total=total, rate=rate, stages=counts)
                self._progress.update(self._tasks[r], completed=run.done_before + count, total=total, rate=rate,
                                      stages=counts)
            self._progress.refresh()

    def close(self) -> None:
        with self._lock:
            self._progress.stop()
            if self._handler is not None:
                self._logger.removeHandler(self._handler)
                self._handler = None


def _above_bars(write: Any = None) -> Any:
    """A logging handler (INFO and up) that writes above the bars (``tqdm.write``, or
    ``write``: rich's console); its class is made here, on first use, so that ``import
    pyper`` does not import logging."""
    import logging

    class AboveBars(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                if write is None:
                    from tqdm import tqdm

                    tqdm.write(self.format(record))
                else:
                    write(self.format(record), markup=False, highlight=False, soft_wrap=True)
            except Exception:
                self.handleError(record)

    return AboveBars(level=logging.INFO)


def _short(stage: StageMetrics) -> str:
    return stage.name.rsplit(".", 1)[-1][:24]
