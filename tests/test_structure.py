"""The package's structure: generated files current, no import cycles, what importing costs."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import pyper

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "pyper"


@pytest.mark.timeout(30)
def test_generated_sync_loops_are_current() -> None:
    """The sync worker loops and caller are generated from the async sources."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync.py"), "--check"],
        capture_output=True, text=True, timeout=20,
    )
    assert done.returncode == 0, done.stderr


def _module_imports() -> dict[str, set[str]]:
    """pyper module -> the pyper modules it imports (anywhere but under TYPE_CHECKING)."""
    names = {
        ".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in SRC.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        tree = ast.parse(path.read_text())
        skip = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                for target in [mod] + [f"{mod}.{a.name}" for a in node.names]:
                    if target in names and target != name and not name.startswith(target + "."):
                        found.add(target)
        graph[name] = found
    return graph


def test_no_import_cycles_among_pyper_modules() -> None:
    graph = _module_imports()
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_task_data_imports_nothing_of_pyper() -> None:
    graph = _module_imports()
    assert graph["pyper._spec"] == set()
    assert graph["pyper._errors"] == set()


def test_every_module_says_what_it_is_for() -> None:
    for path in SRC.rglob("*.py"):
        if path.name == "__init__.py" and path.parent != SRC:
            continue
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no opening docstring"


@pytest.mark.timeout(30)
def test_sync_programs_never_import_asyncio() -> None:
    code = (
        "import sys, pyper\n"
        "assert 'asyncio' not in sys.modules, 'import pyper loaded asyncio'\n"
        "p = pyper.task(range, branch=True) | pyper.task(lambda x: x * 2, workers=3) | pyper.task(str)\n"
        "assert list(p(5)) == ['0', '2', '4', '6', '8']\n"
        "assert 'asyncio' not in sys.modules, 'a sync run loaded asyncio'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr


# Second review, issue 11: ``import pyper`` imported asyncio, even for sync-only programs. (Beside
# the test above: asyncio is not loaded before the import either, and ordered=, throttle=,
# join= and ``>`` run without it too.)

NO_ASYNCIO_CHILD = r"""
import sys
print("asyncio" in sys.modules)
import pyper
from pyper import task
print("asyncio" in sys.modules)

def produce(n):
    yield from range(n)

def fan(x):
    yield x
    yield -x

def total(items):
    return sum(items)

p = task(produce) | task(lambda x: x * 2, workers=3, ordered=True) | task(fan, workers=2, throttle=4)
print(sorted(p(10)))
print((task(produce) | task(lambda x: x + 1, branch=False) | task(total, join=True) > list)(10))
print("asyncio" in sys.modules)
"""


@pytest.mark.timeout(20)
def test_sync_program_never_imports_asyncio() -> None:
    proc = subprocess.run([sys.executable, "-c", NO_ASYNCIO_CHILD], capture_output=True, text=True,
                          timeout=10)
    assert proc.returncode == 0, proc.stderr
    expected_items = sorted([2 * x for x in range(10)] + [-2 * x for x in range(10)])
    assert proc.stdout.splitlines() == [
        "False",  # the interpreter itself does not load it
        "False",
        str(expected_items),
        "[55]",
        "False",
    ], proc.stderr


@pytest.mark.timeout(30)
def test_import_pyper_stays_light() -> None:
    """What ``import pyper`` costs, every program pays, and every worker process again."""
    heavy = ["asyncio", "inspect", "dataclasses", "logging", "pickle", "multiprocessing",
             "concurrent.futures", "cloudpickle", "ray", "tqdm", "rich"]
    code = f"import sys, pyper\nprint([m for m in {heavy!r} if m in sys.modules])\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.timeout(30)
def test_importing_pyper_loads_no_engine_until_a_pipeline_is_made() -> None:
    """``from pyper import task`` loads the front of pyper only (10 modules); the engine's
    channels, runs and threads come with the first pipeline (``task(...)`` is one: so that
    its first run does not wait for them), and no module an option needs comes before the
    option is used (``random``: retries' jitter)."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from pyper import task\n"
        "print(sorted(set(sys.modules) - before))\n"
        "p = task(range, branch=True) | task(abs, workers=4, retries=2) | task(str)\n"
        "print(sorted(p(3)))\n"
        "print('pyper._engine._run' in sys.modules, 'random' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    loaded, outputs, after = done.stdout.splitlines()
    assert {m for m in ast.literal_eval(loaded) if m.startswith("pyper")} == {
        "pyper", "pyper._engine", "pyper._engine._registry", "pyper._errors", "pyper._pickling",
        "pyper._pipeline", "pyper._policy", "pyper._spec", "pyper._task", "pyper._typing",
    }
    assert (outputs, after) == ("['0', '1', '2']", "True False")  # the pipeline loaded the engine, no retry ran


def test_version_is_the_distributions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "python-pyper"
    assert pyper.__version__ == project["version"]


def test_the_options_table_is_what_task_takes_and_what_the_stubs_say() -> None:
    """One table of per-call options (_policy.OPTIONS): task()'s keyword parameters are it
    and the shaping options, with the table's defaults; the type stubs' options name it."""
    import inspect

    from pyper._policy import OPTIONS, no_policy, where
    from pyper._task import SHAPE, _TaskFactory
    from pyper._typing import _Options

    params = {name: p for name, p in inspect.signature(_TaskFactory.__call__).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(params) == {*SHAPE, *OPTIONS}
    for name, row in OPTIONS.items():
        assert params[name].default == row.default, name
    assert set(OPTIONS) - {"setup"} <= set(_Options.__annotations__)  # (setup= has overloads of its own)
    fields = [f for row in OPTIONS.values() for f in row.fields]
    assert sorted(fields) == sorted(no_policy._fields)  # every Policy field belongs to one option
    # Where each option runs for a remote stage: each field on exactly one side.
    policy = no_policy._replace(retries=2, on_error="skip", unpack=True, timeout=1.0)
    call, relay = where(policy, timed=False)
    assert (call.retries, call.on_error, call.unpack, call.timeout) == (2, "raise", True, None)
    assert (relay.retries, relay.on_error, relay.unpack, relay.timeout) == (0, "skip", False, 1.0)
    call, relay = where(policy, timed=True)
    assert (call.retries, relay.retries) == (0, 2)


@pytest.mark.timeout(30)
def test_a_worker_process_imports_only_what_it_runs() -> None:
    """A worker process's loop, given a plain task and one with per-call options, loads the
    remote side (_child, _serve, _envelope, _pipes) and what the calls use, never the
    engine's channels, runs or threads (it loaded 26 modules, the whole engine, before)."""
    code = (
        "import pickle, sys\n"
        "import pyper._engine._child\n"
        "from pyper._engine._serve import open_worker\n"
        "from contextlib import ExitStack\n"
        "job = pickle.loads(sys.stdin.buffer.read())\n"
        "open_worker(job, ExitStack(), [])\n"
        "print(sorted(m for m in sys.modules if m.startswith('pyper')))\n"
    )
    plain = {"pyper", "pyper._engine", "pyper._engine._child", "pyper._engine._envelope", "pyper._engine._pipes",
             "pyper._engine._serve", "pyper._pickling", "pyper._spec"}
    from pyper import task

    for options, extra in (({}, set()), ({"retries": 2, "unpack": True},
                                          {"pyper._engine._sync_calls", "pyper._errors", "pyper._policy"})):
        t = task(abs, **options).tasks[0]  # type: ignore[call-overload]
        job = pickle.dumps((t._replace(policy=t.policy._replace(limiter=None, abandoned=None)), None, None, False))
        done = subprocess.run([sys.executable, "-c", code], input=job, capture_output=True, timeout=20)
        assert done.returncode == 0, done.stderr.decode()
        assert set(ast.literal_eval(done.stdout.decode())) == plain | extra
