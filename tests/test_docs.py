"""The documentation cannot drift from the code: every Python block of the guide runs (each
page's blocks in order, as one program, with warnings as errors), every example is on the
examples page, and the progress screenshot is made by a script that runs here too."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
#: A fenced Python block; one that only includes a file (``--8<-- "examples/x.py"``) shows an
#: example, which tests/test_examples.py runs.
BLOCK = re.compile(r"^```python\n(.*?)^```\n", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
    return [code for code in BLOCK.findall(page.read_text()) if not code.lstrip().startswith("--8<--")]


def included(page: Path) -> list[str]:
    return re.findall(r'--8<-- "([^"]+)"', page.read_text())


def test_the_guide_has_its_pages_and_they_have_code() -> None:
    names = {page.relative_to(DOCS).as_posix() for page in PAGES}
    assert {"index.md", "guide/concepts.md", "guide/composing.md", "guide/executors.md", "guide/errors.md",
            "guide/real-work.md", "guide/observability.md", "guide/differences.md", "reference.md",
            "examples.md"} <= names, names
    assert sum(len(python_blocks(page)) for page in PAGES) >= 20


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.relative_to(DOCS).as_posix())
def test_every_python_block_of_the_page_runs(page: Path, tmp_path: Path) -> None:
    program = "\n\n".join(python_blocks(page))
    done = subprocess.run([sys.executable, "-W", "error", "-c", program], capture_output=True, text=True,
                          timeout=100, cwd=tmp_path)
    assert done.returncode == 0, f"{page.name}:\n{done.stderr}"


def test_every_included_file_exists_and_every_example_is_shown() -> None:
    for page in PAGES:
        for path in included(page):
            assert (ROOT / path).is_file(), f"{page.name} includes {path}, which is not there"
    shown = set(included(DOCS / "examples.md"))
    assert shown == {f"examples/{p.name}" for p in (ROOT / "examples").glob("*.py")}


def test_the_pictures_the_pages_show_are_there() -> None:
    for page in PAGES:
        for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / path).resolve().is_file(), f"{page.name} shows {path}, which is not there"


@pytest.mark.timeout(60)
def test_the_progress_screenshot_shows_a_finished_bar(tmp_path: Path) -> None:
    out = tmp_path / "progress.svg"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "progress_screenshot.py"), str(out)],
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    picture = out.read_text()
    assert picture.startswith("<svg") and "392/400" in picture and "parsed 392 pages" in picture
    assert picture.count("skipped item") == 8  # each skipped page logged once, above the bar
    committed = (DOCS / "img" / "progress.svg").read_text()
    assert "392/400" in committed and committed.count("skipped item") == 8
