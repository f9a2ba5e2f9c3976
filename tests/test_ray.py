"""Stages on a Ray cluster (executor="ray"), against a real local cluster of two nodes.

Collected only where Ray is installed on purpose (tests/run.sh installs the ``ray`` extra
and sets PYPER_WITH_RAY=1): see conftest.py. One cluster is started for the whole file
(``ray.cluster_utils.Cluster``: a head node and a second node, one CPU each, on this
machine); every test checks, besides the usual leak fixture, that the cluster has all its
CPUs back afterwards: no task or actor of a finished run still holds one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray  # the point of this file: fails loudly if missing
from conftest import Leaks, acollect, elapsed, run_async
from lifecycle_cases import PATHS, run_case
from lifecycle_stages import POSITIONS
from ray.cluster_utils import Cluster

from pyper import task
from pyper._errors import RemoteTraceback, WorkerProcessDied

CPUS = 2.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1, resources={"second": 1})
    # The workers import this file's functions by reference, as they would a user's module.
    path = os.pathsep.join([os.path.dirname(__file__), os.path.join(os.path.dirname(__file__), "..", "src")])
    ray.init(address=c.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    c.wait_for_nodes()
    # Ray's own threads and connections, opened on first use, are not a test's leaks.
    ray.get([where.remote(i) for i in range(4)])
    probe = Probe.remote()
    ray.get(probe.ping.remote())
    ray.kill(probe)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@ray.remote
def where(x: int) -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote
class Probe:
    def ping(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def cluster_clean(cluster: Cluster, leaks: Leaks) -> Iterator[None]:
    """Every CPU of the cluster is free again shortly after the test: nothing of its runs
    is left running there. (Sockets are Ray's: its driver opens connections to the nodes'
    object stores as it first fetches from them, and keeps them; pyper opens none.)"""
    leaks.ignore_fds("socket:")
    yield
    # A cancelled call's worker is ended, then its CPU freed: on a loaded machine Ray has
    # taken over 15 s to count one back (CI: it was back by the next test's end).
    deadline = time.monotonic() + 40
    while (ray.available_resources().get("CPU", 0) < CPUS or _live_actors()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ray.available_resources().get("CPU", 0) == CPUS, f"still in use: {ray.available_resources()}"
    assert not _live_actors(), f"actors still alive: {_live_actors()}"


def _live_actors() -> list[str]:
    """The actors of this driver's job not dead (an actor holds no CPU while it waits)."""
    from ray._private.state import actors

    job = ray.get_runtime_context().get_job_id()
    return [f"{a['ActorClassName']} {a['State']}" for a in actors().values()
            if a["State"] != "DEAD" and a.get("JobID") == job]


class Boom(Exception):
    pass


def square(x: int) -> int:
    return x * x


def node_of(x: int) -> tuple[int, str]:
    time.sleep(1.0)
    return x, ray.get_runtime_context().get_node_id()


def count_to(n: int) -> Iterator[int]:
    yield from range(n)


def fan(x: int) -> Iterator[tuple[int, int]]:
    for k in range(x):
        yield (x, k)


def boom_on_3(x: int) -> int:
    if x == 3:
        raise Boom(f"no {x}")
    return x


def sleep_long(x: int) -> int:
    time.sleep(30)
    return x


def megabyte(x: int) -> bytes:
    return bytes([x % 256]) * (1 << 20)


def first_byte(b: bytes) -> int:
    return b[0]


class Model:
    """A resource made once per worker (an actor): counts the calls it served."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.calls = 0

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def load_model() -> Model:
    return Model()


def predict(model: Model, x: int) -> tuple[int, int, int]:
    model.calls += 1
    return x, model.pid, model.calls


@pytest.mark.timeout(120)
def test_map_on_ray_gives_every_output_in_batches() -> None:
    p = task(count_to, branch=True) | task(square, workers=4, executor="ray")
    assert sorted(p(500)) == [x * x for x in range(500)]


def where_am_i() -> int:
    return os.getpid()


def same(x: int) -> int:
    return x


@pytest.mark.timeout(120)
def test_the_first_task_runs_on_ray_not_in_the_caller() -> None:
    # The first task takes the pipeline's arguments: it runs where executor= says, like
    # any other (it once ran inline, in this process).
    p = task(where_am_i, executor="ray") | task(same)
    pids = list(p())
    assert len(pids) == 1 and pids[0] != os.getpid(), pids
    assert task(where_am_i, executor="ray").tasks[0].executor == "ray"


@pytest.mark.timeout(120)
def test_work_spreads_over_both_nodes() -> None:
    # SPREAD: Ray's default packs a node first, and a node's view of the other's free CPU
    # can lag by a report (~100 ms) right after other work: then both calls queued on one.
    spread = {"scheduling_strategy": "SPREAD"}
    p = task(count_to, branch=True) | task(node_of, workers=2, executor="ray", ray_options=spread)
    with elapsed() as t:
        out = sorted(p(4))
    assert [x for x, _ in out] == [0, 1, 2, 3]
    assert len({node for _, node in out}) == 2, out  # one CPU per node: both had to work
    assert t.elapsed < 3.5  # four 1 s calls two at a time (one after the other: 4 s)


@pytest.mark.timeout(120)
def test_a_generator_on_ray_fans_out_and_bind_applies() -> None:
    p = task(count_to, branch=True) | task(fan, workers=2, executor="ray")
    assert sorted(p(5)) == sorted((x, k) for x in range(5) for k in range(x))
    scaled = task(count_to, branch=True) | task(pow, executor="ray", bind=task.bind(2))
    assert sorted(scaled(6)) == [2**x for x in range(6)]


def slow_fan(x: int) -> Iterator[int]:
    for k in range(3):
        yield k
        time.sleep(2.0)


@pytest.mark.timeout(120)
def test_a_generator_on_ray_streams_its_outputs_as_it_makes_them() -> None:
    p = task(count_to, branch=True) | task(slow_fan, executor="ray")
    list(p(0))
    it = iter(p(1))
    with elapsed() as t:
        first = next(it)
    assert first == 0 and t.elapsed < 1.8, t.elapsed  # not after the generator's 6 s
    assert list(it) == [1, 2]


@pytest.mark.timeout(120)
def test_ordered_on_ray_keeps_the_input_order() -> None:
    p = task(count_to, branch=True) | task(square, workers=3, executor="ray", ordered=True)
    assert list(p(300)) == [x * x for x in range(300)]


@pytest.mark.timeout(120)
def test_an_error_on_ray_is_the_original_with_the_remote_traceback() -> None:
    p = task(count_to, branch=True) | task(boom_on_3, workers=2, executor="ray")
    with pytest.raises(Boom, match="no 3") as info:
        list(p(10))
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "boom_on_3" in info.value.__cause__.text
    assert any("boom_on_3" in n and "3" in n for n in info.value.__notes__), info.value.__notes__


_ELSEWHERE = """
def triple(x):
    return 3 * x
"""


@pytest.mark.timeout(120)
def test_a_function_ray_cannot_load_says_how_to_ship_its_module(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A module this program imports from a directory the cluster's workers do not have.
    (tmp_path / "pyper_elsewhere.py").write_text(_ELSEWHERE)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        from pyper_elsewhere import triple  # type: ignore[import-not-found]

        with pytest.raises(RuntimeError, match=r"task 'triple': Ray could not load its call") as info:
            list((task(count_to, branch=True) | task(triple, executor="ray"))(3))
        # What works: py_modules given to ray.init, which uploads a local directory; a
        # task's runtime_env takes only URIs there (Ray rejects a local path, below).
        message = str(info.value)
        assert "ray.init(runtime_env={'py_modules': [" in message, message
        assert "ray_options={'runtime_env': {'py_modules'" not in message, message
        local = {"runtime_env": {"py_modules": [str(tmp_path)]}}
        with pytest.raises(ValueError, match=r"only supported at the job level \(i\.e\., passed to `ray\.init`\)"):
            list((task(count_to, branch=True) | task(triple, executor="ray", ray_options=local))(3))
    finally:
        sys.modules.pop("pyper_elsewhere", None)


_SHIPS_ITS_MODULE = """
import sys
sys.path[:0] = [sys.argv[2], sys.argv[3]]
import ray
import pyper_elsewhere
from pyper import task

if __name__ == "__main__":
    ray.init(address=sys.argv[1], log_to_driver=False,
             runtime_env={"py_modules": [pyper_elsewhere], "env_vars": {"PYTHONPATH": sys.argv[3]}})
    p = task(range, branch=True) | task(pyper_elsewhere.triple, executor="ray")
    print(sorted(p(4)))
"""


@pytest.mark.timeout(120)
def test_py_modules_given_to_ray_init_ship_a_module_the_workers_lack(cluster: Cluster, tmp_path: Any) -> None:
    # What the error above advises, in a program of its own (a new job on this cluster):
    # the workers have no pyper_elsewhere but the copy ray.init uploads.
    code = tmp_path / "code"
    code.mkdir()
    (code / "pyper_elsewhere.py").write_text(_ELSEWHERE)
    script = tmp_path / "ships.py"
    script.write_text(_SHIPS_ITS_MODULE)
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    done = subprocess.run([sys.executable, str(script), cluster.address, str(code), src],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[0, 3, 6, 9]", done.stdout


@pytest.mark.timeout(120)
def test_retries_and_on_error_apply_on_ray() -> None:
    p = task(count_to, branch=True) | task(boom_on_3, executor="ray", on_error="skip")
    assert sorted(p(6)) == [0, 1, 2, 4, 5]
    flaky = task(count_to, branch=True) | task(boom_on_3, executor="ray", retries=2, backoff=0)
    with pytest.raises(Boom):
        list(flaky(6))


def slow_on_odd(x: int) -> int:
    if x % 2:
        time.sleep(30)
    return x


def predict_slow_on_odd(model: Model, x: int) -> int:
    return slow_on_odd(x)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("with_setup", [False, True])
def test_timeout_on_ray_gives_up_on_a_call_and_frees_its_worker(with_setup: bool) -> None:
    func = predict_slow_on_odd if with_setup else slow_on_odd
    options: dict[str, Any] = {"setup": load_model} if with_setup else {}
    p = task(count_to, branch=True) | task(func, workers=2, executor="ray", timeout=1.0, on_error="skip", **options)
    with elapsed() as t:
        assert sorted(p(6)) == [0, 2, 4]
    # Three 30 s calls given up at 1 s: one run to its end would take 30 s. What the rest
    # costs (an actor killed and made again, with its setup, per timeout) is Ray's: 3-16 s.
    assert t.elapsed < 28
    strict = task(count_to, branch=True) | task(func, executor="ray", timeout=1.0, **options)
    with pytest.raises(TimeoutError, match="longer than its timeout of 1 s"):
        list(strict(4))
    # cluster_clean checks that the cancelled calls gave their CPUs back


def slow_first(x: int) -> int:
    time.sleep(30 if x == 0 else 0.05)
    return x


@pytest.mark.timeout(120)
def test_a_calls_time_on_ray_counts_from_its_start() -> None:
    """After a timed-out call, the worker it ran on is gone: the next call waits for a new
    one, and that wait is no part of its time (it would time out too if it were)."""
    p = task(count_to, branch=True) | task(slow_first, executor="ray", timeout=0.5, on_error="skip", ordered=True)
    assert list(p(6)) == [1, 2, 3, 4, 5]


def total(items: Iterator[int]) -> int:
    return sum(items)


def running_totals(items: Iterator[int]) -> Iterator[int]:
    acc = 0
    for x in items:
        acc += x
        yield acc


def first_three(items: Iterator[int]) -> list[int]:
    return [next(items), next(items), next(items)]


def fails_after_two(items: Iterator[int]) -> int:
    next(items), next(items)
    raise Boom("joined two")


@pytest.mark.timeout(120)
def test_join_on_ray_reads_the_whole_stream_as_it_asks_for_it() -> None:
    assert list((task(count_to, branch=True) | task(total, join=True, executor="ray"))(1000)) == [sum(range(1000))]
    streamed = task(count_to, branch=True) | task(running_totals, join=True, executor="ray")
    assert list(streamed(100)) == [sum(range(k + 1)) for k in range(100)]
    early = task(count_forever, branch=True) | task(first_three, join=True, executor="ray")
    assert list(early()) == [[0, 1, 2]]  # an infinite input: the call returned, the run ended
    failing = task(count_to, branch=True) | task(fails_after_two, join=True, executor="ray")
    with pytest.raises(Boom, match="joined two") as info:
        list(failing(10))
    assert isinstance(info.value.__cause__, RemoteTraceback)


def count_forever() -> Iterator[int]:
    i = 0
    while True:
        yield i
        i += 1


@pytest.mark.timeout(120)
def test_rate_paces_the_calls_on_ray() -> None:
    p = task(count_to, branch=True) | task(square, workers=2, executor="ray", rate=10)
    list(p(1))
    with elapsed() as t:
        assert sorted(p(6)) == [x * x for x in range(6)]
    assert 0.45 <= t.elapsed < 3.0, t.elapsed  # six calls at ten a second: 0.5 s at least


@pytest.mark.timeout(120)
def test_setup_makes_one_actor_per_worker_reused_for_every_call() -> None:
    p = task(count_to, branch=True) | task(predict, workers=2, executor="ray", setup=load_model)
    out = sorted(p(40))
    assert [x for x, _, _ in out] == list(range(40))
    by_worker: dict[int, list[int]] = {}
    for _, pid, calls in out:
        by_worker.setdefault(pid, []).append(calls)
    assert len(by_worker) <= 2, by_worker  # two actors at most, each holding its model
    assert sorted(c for calls in by_worker.values() for c in calls) == sorted(
        c for calls in by_worker.values() for c in range(1, len(calls) + 1)
    )  # each model counted its own calls, 1..k: made once, reused


@pytest.mark.timeout(120)
def test_two_ray_stages_pass_references_not_data_through_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyper._engine import _ray

    fetched: list[Any] = []
    real_get = _ray._get

    def get(name: str, ref: Any, timeout: float | None = None) -> Any:
        value = real_get(name, ref, timeout)
        fetched.append(value)
        return value

    monkeypatch.setattr(_ray, "_get", get)
    p = (task(count_to, branch=True) | task(megabyte, workers=2, executor="ray")
         | task(first_byte, workers=2, executor="ray"))
    assert sorted(p(20)) == list(range(20))
    # The driver read statuses and the last stage's small outputs, never a megabyte.
    assert not any(isinstance(v, list) and any(isinstance(x, bytes) for x in v) for v in fetched)
    assert sum(len(repr(v)) for v in fetched) < 20_000


def plus_one(x: int) -> int:
    return x + 1


def odd_fails(x: int) -> int:
    if x % 2:
        raise ValueError(x)
    return x


def twice(x: int) -> list[int]:
    return [x, x + 1000]


@pytest.mark.timeout(180)
def test_a_journaled_run_through_ray_stages_resumes(tmp_path: Any) -> None:
    """Issue 22: two Ray stages after a journaled first task (a map that skips the odd items,
    then a fan-out): values go to Ray, each item's lineage stays in the driver; a run cut
    short is finished by the next, and a finished journal calls nothing."""
    import logging
    import sqlite3
    from contextlib import closing

    logging.getLogger("pyper").setLevel(logging.ERROR)
    path = tmp_path / "job.journal"
    p = (task(count_to, branch=True, journal=str(path))
         | task(odd_fails, workers=2, executor="ray", on_error="skip")
         | task(twice, workers=2, executor="ray", branch=True))
    first = []
    for y in p(60):
        first.append(y)
        if len(first) == 11:
            break
    second = list(p(60))
    oracle = {v for x in range(0, 60, 2) for v in twice(x)}
    assert set(first) | set(second) == oracle
    with closing(sqlite3.connect(path)) as db:  # (with alone would leave it open: 3.13 warns)
        assert db.execute("SELECT COUNT(*) FROM pyper_done").fetchone()[0] == 60
    assert list(p(60)) == []




@pytest.mark.timeout(120)
def test_metrics_between_two_ray_stages_count_items_not_references() -> None:
    import pyper

    p = (task(count_to, branch=True) | task(square, workers=2, executor="ray")
         | task(plus_one, workers=2, executor="ray"))
    with pyper.observe() as seen:
        assert sorted(p(300)) == sorted(x * x + 1 for x in range(300))
    counts = [(s.name, s.items_in, s.items_out, s.calls, s.queued) for s in seen.last.stages]
    assert counts == [("count_to", 1, 300, 1, 0), ("square", 300, 300, 300, 0), ("plus_one", 300, 300, 300, 0)]


def sleep_unless_zero(x: int) -> int:
    if x:
        time.sleep(30)
    return x


def sleep_unless_zero_with(model: Model, x: int) -> int:
    return sleep_unless_zero(x)


def _close_with_calls_running(p: Any) -> float:
    """Take the first output (item 0 returns at once), let the next calls run a while on
    the cluster, then close the stream: how long the close took."""
    it = p(4)
    assert next(it) == 0
    time.sleep(1.5)  # the calls on items 1 and 2 are running on the cluster by now
    with elapsed() as t:
        it.close()
    return t.elapsed


@pytest.mark.timeout(120)
def test_break_cancels_the_calls_in_flight_and_returns_promptly() -> None:
    p = task(count_to, branch=True) | task(sleep_unless_zero, workers=2, executor="ray")
    assert _close_with_calls_running(p) < 1.0
    # cluster_clean checks that both CPUs came back: the calls were cancelled, not waited out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("with_setup", [False, True])
def test_closing_a_timed_stage_cancels_its_calls_promptly(with_setup: bool) -> None:
    """timeout= calls in flight when the run stops are cancelled (an actor killed), not
    waited for, as any Ray call is."""
    func = sleep_unless_zero_with if with_setup else sleep_unless_zero
    options: dict[str, Any] = {"setup": load_model} if with_setup else {}
    p = task(count_to, branch=True) | task(func, workers=2, executor="ray", timeout=60, **options)
    assert _close_with_calls_running(p) < 1.0


def two_then_fail() -> Iterator[int]:
    yield 0
    yield 1
    time.sleep(1.0)  # both calls are running on the cluster by now
    raise Boom("the producer failed")


@pytest.mark.timeout(120)
def test_an_error_elsewhere_cancels_the_calls_on_ray() -> None:
    p = task(two_then_fail, branch=True) | task(sleep_long, workers=2, executor="ray")
    with elapsed() as t, pytest.raises(Boom, match="producer"):
        list(p())
    assert t.elapsed < 10  # not the 30 s calls
    # cluster_clean checks that both CPUs came back: the calls were cancelled


@pytest.mark.timeout(120)
def test_async_pipeline_with_a_ray_stage() -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    p = task(count_to, branch=True) | task(square, workers=2, executor="ray") | task(double)
    assert sorted(run_async(acollect(p(50)))) == sorted(2 * x * x for x in range(50))


def node_of_marked(x: int, marks: str) -> tuple[int, str]:
    """``node_of``, leaving a mark named after its node as the call starts."""
    node = ray.get_runtime_context().get_node_id()
    open(os.path.join(marks, f"{node}-{x}"), "w").close()
    time.sleep(1.0)
    return x, node


def _remove_once_a_call_runs_on(cluster: Cluster, node: Any, marks: str) -> threading.Thread:
    """Remove ``node`` as soon as a call has started on it (not on a timer: a node gone
    before its calls were placed would leave them waiting for its resources forever)."""

    def remove() -> None:
        deadline = time.monotonic() + 60
        while not any(name.startswith(node.node_id) for name in os.listdir(marks)):
            if time.monotonic() > deadline:
                raise AssertionError("no call started on the node to remove")
            time.sleep(0.01)
        cluster.remove_node(node)

    killer = threading.Thread(target=remove)
    killer.start()
    return killer


@pytest.mark.timeout(180)
def test_a_node_removed_mid_run_is_a_clear_error_or_retried(cluster: Cluster, tmp_path: Any) -> None:
    second = [n for n in cluster.worker_nodes][-1]
    p = task(count_to, branch=True) | task(
        node_of_marked, workers=2, executor="ray", bind=task.bind(marks=str(tmp_path)),
        ray_options={"resources": {"second": 0.5}},  # on the second node only
    )
    killer = _remove_once_a_call_runs_on(cluster, second, str(tmp_path))
    try:
        with pytest.raises(WorkerProcessDied, match="node_of_marked"):
            sorted(p(4))
    finally:
        killer.join()
        cluster.add_node(num_cpus=1, resources={"second": 1})
        cluster.wait_for_nodes()


@pytest.mark.timeout(180)
def test_with_retries_the_calls_of_a_removed_node_run_again_elsewhere(cluster: Cluster, tmp_path: Any) -> None:
    second = [n for n in cluster.worker_nodes][-1]
    spread = {"scheduling_strategy": "SPREAD"}  # (Ray's default may pack both on the head)
    p = task(count_to, branch=True) | task(
        node_of_marked, workers=2, executor="ray", retries=2, bind=task.bind(marks=str(tmp_path)),
        ray_options=spread,
    )
    killer = _remove_once_a_call_runs_on(cluster, second, str(tmp_path))
    try:
        out = sorted(p(6))
    finally:
        killer.join()
        cluster.add_node(num_cpus=1, resources={"second": 1})
        cluster.wait_for_nodes()
    assert [x for x, _ in out] == list(range(6))  # every item, once


@pytest.mark.timeout(240)
def test_the_ray_examples_print_what_they_say() -> None:
    from test_examples import ROOT, expected_output, uses_ray

    examples = [path for path in sorted((ROOT / "examples").glob("*.py")) if uses_ray(path)]
    assert examples, "no example uses Ray"
    env = {**os.environ, "RAY_ADDRESS": "local"}  # their own local Ray, not this file's cluster
    for path in examples:
        done = subprocess.run([sys.executable, "-W", "error", str(path)], capture_output=True,
                              text=True, timeout=120, cwd=ROOT, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout == expected_output(path)


_STARTS_ITS_OWN = """
import sys
sys.path.insert(0, sys.argv[1])
import ray
from pyper import task

def square(x):
    return x * x

if __name__ == "__main__":
    assert not ray.is_initialized()
    p = task(range, branch=True) | task(square, workers=2, executor="ray")
    assert sorted(p(10)) == [x * x for x in range(10)]
    from ray._private import worker
    print(worker._global_node.get_session_dir_path())
"""


@pytest.mark.timeout(180)
def test_without_ray_init_pyper_starts_a_local_ray_that_stops_at_exit(tmp_path: Any) -> None:
    script = tmp_path / "own_ray.py"
    script.write_text(_STARTS_ITS_OWN)
    # (RAY_ADDRESS=local: ray.init() would otherwise join this file's cluster, found running)
    env = {**os.environ, "RAY_ADDRESS": "local"}
    env["PYTHONPATH"] = os.path.join(os.path.dirname(__file__), "..", "src")
    done = subprocess.run([sys.executable, str(script), env["PYTHONPATH"]], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    session = done.stdout.strip().splitlines()[-1]
    assert os.path.basename(session).startswith("session_"), session
    # Its raylet, object store and workers are gone soon after the program exits.
    deadline = time.monotonic() + 20
    while _processes_of(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_of(session), _processes_of(session)


# Two programs that do the same work on a local Ray they start (two rounds, a pause
# between: longer than pyper's idle threads wait), then print when it is done on the
# system-wide monotonic clock: one that leaves ray.init to pyper, one of plain Ray.
_PYPER_STARTS_RAY = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pyper import task

def square(x):
    return x * x

if __name__ == "__main__":
    p = task(range, branch=True) | task(square, workers=2, executor="ray")
    for _ in range(2):
        assert sorted(p(10)) == [x * x for x in range(10)]
        time.sleep(1)
    print("done", time.monotonic(), flush=True)
"""

_PLAIN_RAY = """
import time
import ray

@ray.remote
def square(x):
    return x * x

if __name__ == "__main__":
    ray.init()
    for _ in range(2):
        assert sorted(ray.get([square.remote(x) for x in range(10)])) == [x * x for x in range(10)]
        time.sleep(1)
    print("done", time.monotonic(), flush=True)
"""


def _run_to_exit(tmp_path: Any, name: str, program: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``program`` on a local Ray of its own: how it ended, and the seconds from its
    "done" to its exit."""
    script = tmp_path / name
    script.write_text(program)
    env = {**os.environ, "RAY_ADDRESS": "local"}  # (not this file's cluster)
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    done = subprocess.run([sys.executable, str(script), src], capture_output=True, text=True,
                          timeout=100, env=env)
    exited = time.monotonic()
    assert done.returncode == 0, done.stderr[-3000:]
    return done, exited - float(done.stdout.split()[-1])


@pytest.fixture(scope="module")
def plain_ray_exit(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Seconds from "done" to exit of the plain Ray program (its own ray.init)."""
    return _run_to_exit(tmp_path_factory.mktemp("plain"), "plain.py", _PLAIN_RAY)[1]


@pytest.mark.timeout(240)
def test_pyper_starts_ray_on_the_main_thread_and_adds_nothing_to_the_exit(tmp_path: Any, plain_ray_exit: float) -> None:
    done, exit_seconds = _run_to_exit(tmp_path, "pyper_starts_ray.py", _PYPER_STARTS_RAY)
    # ray.init ran in the caller's thread, as the plain program's did: Ray set its
    # SIGTERM handler and did not warn.
    assert "not the main thread" not in done.stderr, done.stderr[-3000:]
    # The exit is Ray's own shutdown (it waits 0.5 s for logs, then stops its processes:
    # about 2 s here), the same in both; pyper's threads end at once, so a second more is
    # room for a loaded machine. (Before: a local Ray pyper started from a relay thread
    # lost its processes as that thread ended, and the exit waited ~5 s on them.)
    assert exit_seconds <= plain_ray_exit + 1.0, (exit_seconds, plain_ray_exit)


_RAY_FROM_OTHER_THREADS = """
import asyncio, sys, threading, time
sys.path.insert(0, sys.argv[1])
from pyper import task

def square(x):
    return x * x

async def collect(stream):
    return sorted([x async for x in stream])

if __name__ == "__main__":
    expected = [x * x for x in range(10)]
    # First use in an async run: its relays connect (the loop never waits on ray.init).
    p = task(range, branch=True) | task(square, workers=2, executor="ray")
    assert asyncio.run((p > collect)(10)) == expected
    time.sleep(1)  # pyper's idle threads have ended
    got = []
    runner = threading.Thread(target=lambda: got.append(sorted(p(10))))
    runner.start()
    runner.join()
    assert got == [expected], got
    time.sleep(1)
    assert sorted(p(10)) == expected
    print("done", time.monotonic(), flush=True)
"""


@pytest.mark.timeout(240)
def test_a_local_ray_pyper_starts_outlives_the_threads_that_ran_its_pipelines(
    tmp_path: Any, plain_ray_exit: float,
) -> None:
    # Linux ends the processes of a local Ray when the thread that started them ends (Ray
    # sets PR_SET_PDEATHSIG, which is per thread): started from a relay, or from a thread
    # of the program's that ends, the next run waited 60 s for a dead GCS and failed.
    # Connected off the main thread, on pyper's keeper thread, Ray's exit is its own too.
    done, exit_seconds = _run_to_exit(tmp_path, "threads.py", _RAY_FROM_OTHER_THREADS)
    assert exit_seconds <= plain_ray_exit + 1.0, (exit_seconds, plain_ray_exit)


def _processes_of(session: str) -> list[str]:
    """Command lines of the processes that name a Ray session directory."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if os.path.basename(session) in cmdline:
                found.append(f"{pid}: {cmdline[:120]}")
    return found


_CTRL_C_PROGRAM = """
import sys, time
sys.path.insert(0, sys.argv[2])
import ray
from pyper import task

def sleep_long(x):
    time.sleep(30)
    return x

def slowly():
    i = 0
    while True:
        yield i
        if i == 1:
            print("ready", flush=True)
        time.sleep(0.05)  # a producer call that ends soon: its thread does not hold the exit
        i += 1

if __name__ == "__main__":
    ray.init(address=sys.argv[1], log_to_driver=False)
    for _ in (task(slowly, branch=True) | task(sleep_long, workers=2, executor="ray"))():
        pass
"""


@pytest.mark.timeout(120)
def test_ctrl_c_with_a_ray_stage_shows_one_keyboard_interrupt_and_frees_the_cluster(
    cluster: Cluster, tmp_path: Any,
) -> None:
    script = tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C_PROGRAM)
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    proc = subprocess.Popen([sys.executable, str(script), cluster.address, src], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20  # both calls running on the cluster
        while ray.available_resources().get("CPU", 0) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ray.available_resources().get("CPU", 0) == 0, ray.available_resources()
        with elapsed() as t:
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
            code = proc.wait(20)
        err = proc.stderr.read()
        assert code != 0
        assert err.count("KeyboardInterrupt") == 1, err[-3000:]
        assert t.elapsed < 5, t.elapsed
        # cluster_clean checks that both CPUs came back: nothing of the run goes on
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]



def endless(x: int) -> Iterator[int]:
    i = 0
    while True:
        yield i
        i += 1


@pytest.mark.timeout(120)
def test_a_break_cancels_a_streaming_generator_on_ray() -> None:
    p = task(count_to, branch=True) | task(endless, executor="ray")
    it = iter(p(1))
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()  # type: ignore[attr-defined]
    # cluster_clean checks that its CPU came back: the generator was cancelled, not left
    # parked on its backpressure


@pytest.mark.timeout(120)
def test_a_ray_stage_before_a_ray_join_or_a_rate_hands_on_items_not_references() -> None:
    joined = task(count_to, branch=True) | task(square, executor="ray") | task(total, join=True, executor="ray")
    assert list(joined(100)) == [sum(x * x for x in range(100))]
    paced = task(count_to, branch=True) | task(square, executor="ray") | task(square, executor="ray", rate=10)
    list(paced(1))
    with elapsed() as t:
        assert sorted(paced(6)) == sorted(x**4 for x in range(6))
    assert t.elapsed >= 0.45, t.elapsed  # six calls at ten a second, not one call per batch


@pytest.mark.timeout(120)
def test_a_ray_stage_starts_with_the_batches_its_last_run_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch is a Ray round trip: a short run does not spend them growing from one item."""
    from pyper._engine import _ray as pyper_ray

    p = task(count_to, branch=True) | task(square, workers=2, executor="ray")
    assert sorted(p(2000)) == [x * x for x in range(2000)]
    again = task(square, workers=2, executor="ray").tasks[0]  # made again: same function, same options
    assert pyper_ray._remembered(again)[0] >= 64
    assert pyper_ray._remembered(task(square, workers=3, executor="ray").tasks[0]) == (1, 0.0)
    batches: list[int] = []
    real = pyper_ray._next_size
    monkeypatch.setattr(pyper_ray, "_next_size", lambda n, done, *rest: batches.append(done) or real(n, done, *rest))
    assert sorted(p(2000)) == [x * x for x in range(2000)]
    assert min(batches[:2]) >= 64 and len(batches) <= 12, batches


def nap_10ms(x: int) -> int:
    time.sleep(0.01)
    return x


@pytest.mark.timeout(120)
def test_a_short_runs_items_are_shared_out_between_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batches may have grown to the whole run (the last run's size: 12-16 calls of
    10 ms), and the input ends at once: the relays share its 16 items out, not 16 + 0."""
    from pyper._engine import _ray as pyper_ray, _remote

    p = task(count_to, branch=True) | task(nap_10ms, workers=2, executor="ray")
    assert sorted(p(200)) == list(range(200))  # batches grow to 125-250 ms of calls
    assert pyper_ray._remembered(p.tasks[1])[0] >= 12  # more than a share of 16
    taken = {0: 0, 1: 0}
    real = _remote.Tail.started

    def started(self: _remote.Tail, index: int, count: int) -> None:
        taken[index] += count
        real(self, index, count)

    monkeypatch.setattr(_remote.Tail, "started", started)
    assert sorted(p(16)) == list(range(16))
    assert sum(taken.values()) == 16 and min(taken.values()) >= 4, taken  # 8 each, give or take


def test_a_batch_cut_short_by_the_tail_grows_the_size_toward_the_target() -> None:
    from pyper._engine._ray import TARGET_SECONDS, _next_size

    assert TARGET_SECONDS == 0.25
    assert _next_size(7, 4, 0.104, 1000) == 8  # 26 ms a call, under half the target: twice 4 fit
    assert _next_size(7, 6, 0.104, 1000) == 12
    assert _next_size(2, 1, 0.0, 1000) == 2  # a trickle of single items leaves it be
    assert _next_size(7, 6, 0.104, 10) == 10  # and never past the limit
    assert _next_size(7, 4, 0.2, 1000) == 7  # half the target or more: kept
    assert _next_size(7, 2, 0.4, 1000) == 1  # over it: shrinks, as a full batch would
    assert _next_size(8, 8, 0.26, 1000) == 7  # a full batch: adapt's rule, unchanged
    assert _next_size(4, 4, 0.01, 1000) == 32  # and 8x while far below the target


def nap_20ms(x: int) -> int:
    time.sleep(0.02)
    return x


@pytest.mark.timeout(120)
def test_short_runs_whose_batches_the_tail_cuts_win_back_the_size() -> None:
    """A stage left at 7 (one batch a little over the target) runs 16 items of 20 ms on 4
    workers: each takes a share of 4 or so, a batch the tail cut short, of about 80 ms.
    The size grows back toward what fits the target (12 calls), not kept at 7 for good:
    within a few runs (the size kept is the last batch's, which may be a share of 3)."""
    from pyper._engine import _ray as pyper_ray

    p = task(count_to, branch=True) | task(nap_20ms, workers=4, executor="ray")
    pyper_ray._remember(p.tasks[1], 7, 0.02)
    sizes = []
    for _ in range(3):
        assert sorted(p(16)) == list(range(16))
        sizes.append(pyper_ray._remembered(p.tasks[1])[0])
    assert max(sizes) > 7, sizes


# --------------------------------------------------------------------------------------------
# The lifecycle matrix (test_lifecycle_matrix.py) on Ray: the cases of lifecycle_cases.py, with
# the stage under test on the cluster. (Ray cancels the calls of a stopped run with
# force=True, killing their worker: no generator's finally runs there, and the cases check
# none; cluster_clean checks that the cluster has its CPUs back: no call goes on.)


def _ray_lifecycle_cases() -> list[tuple[str, str, str]]:
    cases = []
    for position in POSITIONS:
        for path in PATHS:
            # a sync caller for every path but cancel (a nested run cancelled by its enclosing
            # run's error), an async one for every path
            for caller in (["async"] if path == "cancel" else ["sync", "async"]):
                cases.append((position, path, caller))
    return cases


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("position", "path", "caller"), _ray_lifecycle_cases())
def test_lifecycle_on_ray(position: str, path: str, caller: str, tmp_path: Any) -> None:
    run_case("ray", position, path, caller, str(tmp_path))
