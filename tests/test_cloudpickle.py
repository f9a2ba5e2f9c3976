"""Process stages with the optional cloudpickle: lambdas, closures and @task-decorated
functions run in worker processes. Collected only where cloudpickle is installed on
purpose (tests/run.sh installs it after the rest of the suite and the original's tests,
which expect a lambda to be refused): see conftest.py."""

from __future__ import annotations

from typing import Any

import cloudpickle  # noqa: F401  # the point of this file: fails loudly if missing
import pytest

from pyper import Pipeline, task


def count_to(n: int) -> Any:
    yield from range(n)


@task(multiprocess=True, workers=2)
def decorated_square(x: int) -> int:
    return x * x


@pytest.mark.timeout(60)
def test_lambda_and_closure_run_in_processes() -> None:
    offset = 100

    def add_offset(x: int) -> int:  # a closure over offset
        return x + offset

    p = task(count_to, branch=True) | task(lambda x: x * 3, multiprocess=True, workers=2) | task(
        add_offset, multiprocess=True
    )
    assert sorted(p(20)) == sorted(3 * x + 100 for x in range(20))


@pytest.mark.timeout(60)
def test_a_function_decorated_with_task_multiprocess_runs() -> None:
    assert isinstance(decorated_square, Pipeline)
    p = task(count_to, branch=True) | decorated_square
    assert sorted(p(10)) == [x * x for x in range(10)]
