"""Workers that size themselves: a task with ``workers=(lo, hi)``.

Such a stage starts ``lo`` workers. One sizer per run (a job on a pyper thread for a sync
run, a task on the run's loop for an async one) looks at each such stage every
``TICK_SECONDS``, reading only what the channels and workers count anyway:

- **grow** while the stage is the bottleneck: work waits on its input edge (items queued,
  or the stage above parked for room), none of its workers is idle, none is parked for
  room downstream (then the bottleneck is further down), and no worker it added is still
  starting, for ``PRESSURE_TICKS`` ticks in a row. It doubles (``lo`` to ``hi`` in a few
  ticks, so a short run is not spent ramping up) until it has retired a worker or a
  growth failed; from then on it adds a quarter per trial, and doubles again after a
  growth that paid nearly in full or once its calls got slower. Ramping takes growth on
  faith only for calls that wait: a stage of threads that computes (its threads together
  used at least ``COMPUTING`` of a core since the last look) doubles and waits for each
  growth's verdict before the next, since its calls may contend for the GIL (a stage of
  1 ms of pure Python was grown to 64 threads before the first verdict came). Its
  threads' share each is no guide: n threads that contend for the GIL each get 1/n.
- **judge each growth** (a *trial*): once the workers added have each had time for a few
  calls, the rate of the stage's outputs must have risen by at least ``GAIN`` of what the
  added workers would ideally give. If it did not (calls contend for the GIL, a lock, a
  server's capacity), the stage keeps only the workers the gain pays for (rate ratio
  times the size before; the size before, if there was no gain), and may not grow past
  that for ``COOL_SECONDS`` (doubled after each failure: no flapping), unless its rate falls
  well below what it made then (``SLOWER``: its calls got slower, and workers may pay again). A trial during
  which work stopped waiting proves nothing and is dropped.
- **retire** spare workers: if at least one worker was parked (for input that does not
  come, or for room downstream) at every tick for ``IDLE_SECONDS`` (longer for a stage
  that had to grow again soon after it last retired workers: no thrashing), three quarters of the
  fewest parked in that time leave (never below ``lo``). The next workers to ask for input (a
  parked one first) get the end of the stream (``Channel.retire``), and leave as any
  worker does at the end.

A worker is added by opening one more send end on the stage's output and one more receive
end on its input (``Channel.open_ends``, refused once the stage has ended) and starting it
on the stage's executor (``_executors.grow``): threads, asyncio tasks and processes alike.

Who owns what: a ``_Sized`` belongs to its run's sizer (one thread, or one task); it
reads the channels' counters without their locks (a stale read is one batch behind) and
writes ``Stage.size`` and ``Stage.started``, which metrics read.
"""

from __future__ import annotations

import threading
from collections import deque
from time import perf_counter
from typing import Callable

from ._run import Run, Stage

__all__ = ["TICK_SECONDS", "adaptive_stages", "run_sizer", "arun_sizer"]

#: How often the sizer looks at its stages.
TICK_SECONDS = 0.01
#: Ticks in a row a stage must be the bottleneck before it grows.
PRESSURE_TICKS = 1
#: How long at least one worker must have been idle at every tick before some retire (at
#: first: doubled, up to ``MAX_IDLE_SECONDS``, when the stage had to grow again soon after).
IDLE_SECONDS = 0.25
MAX_IDLE_SECONDS = 8.0
#: How long a failed growth's size stays a ceiling (doubled after each failure).
COOL_SECONDS = 1.0
#: A growth from ``n`` to ``m`` workers must raise the stage's rate by this share of the
#: ideal ``m / n`` (0.25: doubling must give at least 1.25x).
GAIN = 0.25
#: A ceiling set by a failed growth is lifted when the stage, under pressure, makes less
#: than this share of the rate it made then (its calls got slower: more workers may pay).
SLOWER = 0.6
#: The longest a trial waits for enough calls before it is judged on what it has.
TRIAL_SECONDS = 1.0
#: A stage whose threads together use at least this many cores computes: its growths
#: are judged one at a time, even while ramping.
COMPUTING = 0.5


class _Sized:
    """The sizer's view of one adaptive stage (owned by the sizer)."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.lo, self.hi = stage.task.workers, stage.task.most
        self.pressure = 0  # ticks in a row as the bottleneck
        self.idle_since = 0.0  # when the current run of ticks with an idle worker began (0: none)
        self.fewest_idle = 0  # the fewest idle workers seen in that run of ticks
        self.samples: deque[tuple[float, int]] = deque(maxlen=int(4 * TRIAL_SECONDS / TICK_SECONDS))
        self.samples.append((perf_counter(), stage.out.taken + stage.out.queued))
        # The growth being judged: (its start, size before it, rate before it or None if unknown),
        # and the ticks since its last step / of those, ticks with work waiting.
        self.trial: tuple[float, int, float | None] | None = None
        self.grown_at = 0.0
        self.trial_ticks = self.trial_pressed = 0
        self.ramping = True  # doubling: no retirement or failed growth yet
        self.ceiling, self.cool_until, self.cool = self.hi, 0.0, COOL_SECONDS
        self.ceiling_rate = 0.0  # the rate the stage made when its ceiling was set
        # How long spare workers wait before they retire, and when some last did: a stage
        # that had to grow again soon after retiring waits twice as long next time.
        self.idle_wait, self.retired_at = IDLE_SECONDS, 0.0
        self.ready = 0  # stage.workers[:ready] have all taken a first batch, or left
        # The workers the stage runs: those started, less those asked to retire (a request
        # no worker has taken yet is taken back before a growth: ``Channel.unretire``).
        self.live = stage.size
        # When the sizer last looked at the CPU seconds its threads had used, and those
        # (``computing``: a look on every tick under pressure).
        self.cpu_seen = (perf_counter(), 0.0)

    def starting(self) -> int:
        """Workers started that have not yet taken their first batch (looking only at those
        made since the last that had: a tick costs nothing for the workers of long ago)."""
        stage = self.stage
        workers = stage.workers
        count = len(workers)
        while self.ready < count and (workers[self.ready].size or workers[self.ready].gone):
            self.ready += 1
        unready = sum(1 for w in workers[self.ready:count] if not (w.size or w.gone))
        return stage.started - count + unready

    def computing(self, now: float) -> bool:
        """Whether the stage computes rather than waits: the cores its threads used since
        the last look (False for workers whose CPU is not measured: tasks on a loop,
        processes, Ray)."""
        total = 0.0
        for worker in self.stage.workers:
            seconds = worker.cpu_seconds()
            if seconds is None:
                return False
            total += seconds
        seen, self.cpu_seen = self.cpu_seen, (now, total)
        if now <= seen[0]:
            return False
        return total - seen[1] >= COMPUTING * (now - seen[0])

    def rate(self, since: float, now: float, done: int) -> float | None:
        """Outputs per second from ``since`` to now (``done`` made by now), from the samples."""
        for t, count in self.samples:
            if t >= since:
                return (done - count) / (now - t) if now - t >= TICK_SECONDS / 2 else None
        return None

    def tick(self, run: Run, now: float, grow: Callable[[Run, Stage, int], int]) -> bool:
        """Look at the stage once; False when it needs no more sizing (its input ended)."""
        stage = self.stage
        inp, out = stage.inp, stage.out
        queued = inp.queued
        if inp.closed and not queued:
            return False
        idle, upstream_parked = inp.parked
        blocked = out.parked[1]
        done = out.taken + out.queued  # outputs made: the stage's throughput
        live, starting = self.live, self.starting()
        backlog = queued > 0 or upstream_parked > 0
        self.pressure = self.pressure + 1 if backlog and not idle and not blocked else 0
        if self.trial is not None:
            self.trial_ticks += 1
            self.trial_pressed += backlog and not idle and not blocked
            live = self._judge(now, done, live)
        spare = blocked + (idle if not backlog else 0)  # parked for room, or for input
        if spare:
            if not self.idle_since:
                self.idle_since, self.fewest_idle = now, spare
            self.fewest_idle = min(self.fewest_idle, spare)
            if now - self.idle_since >= self.idle_wait and live > self.lo and self.trial is None:
                count = min(live - self.lo, max(1, 3 * self.fewest_idle // 4))
                inp.retire(count)
                self.ramping = False
                self.idle_since, self.retired_at = 0.0, now
                live -= count
        else:
            self.idle_since = 0.0
        if self.pressure and now < self.cool_until:
            rate = self.rate(now - 0.2, now, done)
            if rate is not None and rate < SLOWER * self.ceiling_rate:
                # Its calls got slower since: the ceiling no longer holds, and it ramps up again.
                self.cool_until, self.ramping = 0.0, True
        ceiling = self.ceiling if now < self.cool_until else self.hi
        # One step per trial once settled, or while ramping a stage whose calls compute;
        # and those double, rather than take on at once what waits.
        computes = self.pressure > 0 and self.computing(now)
        judging = self.trial is not None and (not self.ramping or computes)
        if self.pressure >= PRESSURE_TICKS and live < ceiling and starting <= idle and not judging:
            live += inp.unretire()  # first, keep the workers asked to retire that are still here
            if self.retired_at and now - self.retired_at < 3 * self.idle_wait:
                self.idle_wait = min(MAX_IDLE_SECONDS, 2 * self.idle_wait)  # retired too soon
            rate = self.rate(now - 0.1, now, done)
            # A new trial, or one whose rate before it is unknown (the first ticks) that can
            # now be measured: that one stands, and the next is judged against the rate.
            new_trial = self.trial is None or (self.trial[2] is None and rate is not None)
            unknown = rate is None if new_trial else self.trial is not None and self.trial[2] is None
            if not self.ramping:
                step = max(1, live // 4)
            elif unknown or computes:
                step = live  # double, until a rate tells whether workers pay
            else:
                step = max(live, queued)  # take on at once what waits (each worker takes an item)
            # Never more ends than hi: a worker asked to retire holds its own until it has left.
            count = min(ceiling - live, step, self.hi - inp.receivers)
            added = grow(run, stage, count) if count > 0 else 0
            if added:
                if new_trial:
                    self.trial = (now, live, rate)
                    self.trial_ticks = self.trial_pressed = 0
                self.grown_at = now
                live += added
            self.pressure = 0
        self.samples.append((now, done))
        self.live = stage.size = live
        return True

    def _judge(self, now: float, done: int, live: int) -> int:
        """Judge the growth under trial, once its workers have had time for a few calls:
        the workers the stage runs after it."""
        assert self.trial is not None
        start, before, rate_before = self.trial
        since = self.grown_at
        after = self.rate(since, now, done)
        unpressed = self.trial_ticks - self.trial_pressed
        if unpressed >= 5 and unpressed * 2 > self.trial_ticks:
            self.trial = None
            return live  # work stopped waiting meanwhile: the trial proves nothing
        enough = after is not None and after * (now - since) >= 2 * live
        if (not enough and now - since < TRIAL_SECONDS) or now - since < 5 * TICK_SECONDS:
            return live
        self.trial = None
        if rate_before is None or rate_before <= 0 or after is None:
            return live  # no rate before it (calls longer than the ticks so far): it stands
        if after < SLOWER * rate_before:
            # The rate fell, under pressure: more workers do not do that (contention only
            # stops the rise); its calls got slower meanwhile. No verdict, and ramp up again.
            self.ramping = True
            return live
        ideal = live / max(before, 1) - 1  # the rise the added workers would give, at best
        if after >= rate_before * (1 + GAIN * ideal):
            self.cool = COOL_SECONDS
            if after >= rate_before * (1 + 3 * GAIN * ideal):
                self.ramping = True  # it paid nearly in full: double again
            return live
        # It did not pay in full: keep the workers the gain it made pays for (back to the
        # size before it, if none), and no more for a while.
        keep = min(live, max(self.lo, before, round(before * after / rate_before)))
        self.ramping = False
        self.ceiling, self.cool_until, self.ceiling_rate = keep, now + self.cool, after
        self.cool *= 2
        if live > self.ceiling:
            self.stage.inp.retire(live - self.ceiling)
            return self.ceiling
        return live


def adaptive_stages(run: Run) -> list[Stage]:
    """The run's stages with ``workers=(lo, hi)`` (never the first: it is called once)."""
    return [stage for stage in run.stages[1:] if stage.task.adaptive]


def run_sizer(run: Run, grow: Callable[[Run, Stage, int], int]) -> None:
    """The sizer of a sync run: a job on a pyper thread, until the stages' inputs end or
    the run stops."""
    sized = [_Sized(stage) for stage in adaptive_stages(run)]
    woken = threading.Event()
    run.on_cancel(woken.set)
    try:
        while sized and not woken.wait(TICK_SECONDS):
            now = perf_counter()
            sized = [s for s in sized if s.tick(run, now, grow)]
    except BaseException as exc:  # a bug of the sizer's: the run says so, rather than run unsized
        run.fail(exc, sized[0].stage.task if sized else run.stages[-1].task)
    finally:
        run.off_cancel(woken.set)


async def arun_sizer(run: Run, grow: Callable[[Run, Stage, int], int]) -> None:
    """The sizer of an async run: a task on its loop (cancelled with the run's tasks)."""
    import asyncio

    sized = [_Sized(stage) for stage in adaptive_stages(run)]
    try:
        while sized:  # (the run's cancellation cancels this task: one of the run's tasks)
            await asyncio.sleep(TICK_SECONDS)
            now = perf_counter()
            sized = [s for s in sized if s.tick(run, now, grow)]
    except asyncio.CancelledError:
        pass
    except BaseException as exc:
        run.fail(exc, sized[0].stage.task if sized else run.stages[-1].task)
