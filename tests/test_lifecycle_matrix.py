"""The lifecycle matrix: every way a run stops, for a stage on every executor, as the first
task and as a middle one (the cases and what they check: ``lifecycle_cases.py``).

- ``test_lifecycle``: executor (thread, asyncio, process, a ThreadPoolExecutor and a
  ProcessPoolExecutor of the test's) x position (first, middle) x path (error, break,
  close, Ctrl-C in the consumer's loop, cancel) x caller (a sync ``for``, an ``async for``).
  An async stage makes an AsyncPipeline, so asyncio runs with the async caller only. A sync
  caller's "cancel" is a nested run, cancelled by its enclosing run's error; an async
  caller's is ``task.cancel()`` on the task iterating it. A first task on a pool of the
  user's makes all its outputs in one call before any comes back, so the caller breaks,
  closes or raises Ctrl-C once that call is over (cancellation comes while it runs); what
  is checked there is the documented alternative (the call ran whole).
- ``test_ctrl_c_in_a_program``: a real SIGINT to a program iterating the pipeline (with
  ``asyncio.run`` for an asyncio stage), per executor and position.
- ``test_interpreter_exit``: a program that ends while the pipeline runs, iterated partly
  by its main thread or by a daemon thread, per executor and position.

Ray stages run the same cases in ``test_ray.py``, on its cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lifecycle_cases import PATHS, run_case, run_exit, run_sigint
from lifecycle_stages import EXECUTORS, POSITIONS, is_futures


def _cases() -> list[tuple[str, str, str, str]]:
    cases = []
    for kind in EXECUTORS:
        for position in POSITIONS:
            for path in PATHS:
                # an async function makes an AsyncPipeline: asyncio has async callers only
                for caller in ["async"] if kind == "asyncio" else ["sync", "async"]:
                    cases.append((kind, position, path, caller))
    return cases


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("kind", "position", "path", "caller"), _cases())
def test_lifecycle(kind: str, position: str, path: str, caller: str, tmp_path: Path) -> None:
    run_case(kind, position, path, caller, str(tmp_path))


@pytest.mark.timeout(40)
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("kind", EXECUTORS)
def test_ctrl_c_in_a_program(kind: str, position: str, tmp_path: Path) -> None:
    run_sigint(kind, position, str(tmp_path))


#: Interpreter exit with a middle stage on a pool of the user's: threading's exit hooks run
#: in reverse order of registration, pyper's cancels the abandoned runs and
#: concurrent.futures' shuts the pools down. With pyper imported first, the pool shut down
#: first and refused the relay's next batch: the run failed instead of being cancelled
#: ("its executor refused the call"). A pool stage now has pyper's hook run first
#: (``_state.exit_first``); the programs import pyper first.


def _exit_cases() -> list[Any]:
    cases = []
    for kind in EXECUTORS:
        for position in POSITIONS:
            for how in ["exit-partial", "exit-thread"]:
                cases.append(pytest.param(kind, position, how))
    return cases


@pytest.mark.timeout(40)
@pytest.mark.parametrize(("kind", "position", "how"), _exit_cases())
def test_interpreter_exit(kind: str, position: str, how: str, tmp_path: Path) -> None:
    run_exit(kind, position, how, str(tmp_path))
