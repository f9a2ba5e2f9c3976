"""Every example in examples/ that documents its output ("Prints:" in its docstring) runs
and prints exactly that: the README's sections point at them, so they cannot drift."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def uses_ray(path: Path) -> bool:
    return "\nimport ray\n" in path.read_text()

EXAMPLES = sorted(
    path for path in (ROOT / "examples").glob("*.py") if "\nPrints:\n" in (ast.get_docstring(ast.parse(path.read_text())) or "")
    and not uses_ray(path)  # run by tests/test_ray.py, where the ray extra is installed
)


def expected_output(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return textwrap.dedent(doc.split("\nPrints:\n", 1)[1]).strip() + "\n"


def test_the_option_examples_are_there() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"worker_setup.py", "retries.py", "on_error.py", "unpack.py", "timeout.py", "rate_limit.py",
            "batching.py", "gather.py"} <= names, names


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_prints_what_its_docstring_says(path: Path) -> None:
    done = subprocess.run([sys.executable, "-W", "error", str(path)], capture_output=True, text=True,
                          timeout=50, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected_output(path)
