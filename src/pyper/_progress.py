"""Progress: a bar per run of a block (tqdm), or periodic log lines per stage.

    with pyper.progress():
        for item in pipeline(1000):
            ...

Built on ``observe()``: a thread of its own reads the runs' metrics every
``interval`` seconds and draws them, so the pipeline's workers do nothing more per item.
With tqdm installed (``pip install 'python-pyper[tqdm]'``) each run has a bar: the
items it made, their rate, what each stage has handed on and the errors (and a total,
when given); without it, or with ``bars=False``, it
logs one INFO line per stage on the ``pyper.progress`` logger every ``interval``
seconds (10 by default for lines). Leaving the block (normally, on a break, an error
or Ctrl-C) draws the last figures, closes the bars and ends the thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._metrics import Observer, RunMetrics, StageMetrics, observe

__all__ = ["progress"]


@contextmanager
def progress(
    *, bars: bool | None = None, interval: float | None = None, total: int | None = None,
) -> Iterator[Observer]:
    """Show the progress of every run started in this block.

    ``bars``: tqdm bars (``None``: if tqdm is installed), or log lines (``False``).
    ``interval``: seconds between updates (0.2 for bars, 10 for log lines).
    ``total``: how many items the pipeline makes, if known: the bars show it. (Without it,
    a first task that returns something with a length, a list or a range, gives it.)
    """
    if bars is None:
        bars = _have_tqdm()
    elif bars and not _have_tqdm():
        raise RuntimeError("pyper.progress(bars=True) draws with tqdm, which is not installed: "
                           "pip install 'python-pyper[tqdm]', or use bars=False for log lines")
    view: _View = _Bars(total) if bars else _Lines()
    seconds = interval if interval is not None else (0.2 if bars else 10.0)
    with observe() as seen:
        stop = threading.Event()
        drawer = threading.Thread(target=_draw, args=(seen, view, stop, seconds), name="pyper:progress",
                                  daemon=True)
        drawer.start()
        try:
            yield seen
        finally:
            stop.set()
            drawer.join()
            try:
                view.update(seen.runs, final=True)
            finally:
                view.close()


def _have_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def _draw(seen: Observer, view: _View, stop: threading.Event, seconds: float) -> None:
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
    """One log line per stage of each run still going (and, at the end, of every run)."""

    def __init__(self) -> None:
        import logging  # only here: import pyper stays light

        self._log = logging.getLogger("pyper.progress")
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
                bar.update(max(0, stages[-1].items_out - bar.n))  # (a cancelled run drops what was queued)
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


def _above_bars() -> Any:
    """A logging handler (INFO and up) that writes above the bars (``tqdm.write``); its
    class is made here, on first use, so that ``import pyper`` does not import logging."""
    import logging

    class AboveBars(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            from tqdm import tqdm

            try:
                tqdm.write(self.format(record))
            except Exception:
                self.handleError(record)

    return AboveBars(level=logging.INFO)


def _short(stage: StageMetrics) -> str:
    return stage.name.rsplit(".", 1)[-1][:24]
