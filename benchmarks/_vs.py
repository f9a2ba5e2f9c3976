"""`--vs REV`: the engine of another git revision, measured beside ours in the same run.

Every runner (`run.py`, `process.py`, `ray_stages.py`, `adaptive.py`) takes `--vs REV`
(repeatable). For each of our contenders ("ours: ...") it adds a twin, "ours@COMMIT: ...",
that runs the same case code (this checkout's `_cases.py`, `process_child.py`, ...) with the
engine of REV: only the engine differs. The twins run in the same interleaved rounds as
every other contender, and the report gives each pair the ratio ours / ours@COMMIT.

How the engine of REV gets there: `checkouts()` copies `src/` of each revision
(`git archive REV src | tar -x`) into one temporary directory, which nothing in git knows
of, and removes it when the run ends, on Ctrl-C and SIGTERM too. A twin's child process
runs with that copy's `src/` first on `PYTHONPATH` (or on `sys.path`, for the runners that
take samples in their own scripts). Both copies are compiled first (`compileall`) with the
interpreter the children use, so that no contender's first sample pays for compiling.
"""

from __future__ import annotations

import argparse
import compileall
import re
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"


@dataclass(frozen=True)
class Engine:
    """The engine of one revision: where its copy of `src/` is."""

    rev: str  # as given to --vs
    commit: str  # its short hash: the name in the report
    src: Path

    @property
    def name(self) -> str:
        return f"ours@{self.commit}"

    def label(self, ours: str) -> str:
        """The twin's label for one of our labels: "ours, cold" -> "ours@844bca5, cold";
        a label that does not say "ours" gets the name in front."""
        if re.search(r"\bours\b", ours):
            return re.sub(r"\bours\b", self.name, ours)
        return f"{self.name}: {ours}"

    def column(self) -> str:
        """The header of the column of ratios ours / this engine."""
        return f"ours/@{self.commit}"


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vs", metavar="REV", action="append", default=[],
        help="also run each of our contenders with the engine (src/) of git revision REV, "
             "as 'ours@REV: ...' in the same rounds, and show ours / ours@REV (repeatable)")


def resolve(rev: str) -> str:
    """The short hash of ``rev`` in this repository; ValueError (git's words) if none."""
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", "--short",
                           f"{rev}^{{commit}}"], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ValueError(f"--vs {rev}: not a commit of {REPO} {proc.stderr.strip()}".rstrip())
    return proc.stdout.strip()


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the `with`, which removes the copies


@contextmanager
def checkouts(revs: list[str]) -> Iterator[list[Engine]]:
    """The engines of ``revs`` (duplicates dropped), copied into a temporary directory that
    is removed when the block ends, however it ends. Raises ValueError for an unknown rev."""
    given: dict[str, str] = {}  # commit -> the first spelling of it; all before anything is made
    for rev in revs:
        given.setdefault(resolve(rev), rev)
    commits = list(given)
    if not commits:
        yield []
        return
    compileall.compile_dir(str(SRC), quiet=1)  # ours too: no first sample compiles
    old = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        with tempfile.TemporaryDirectory(prefix="pyper-vs-") as tmp:
            engines = []
            for commit in commits:
                dest = Path(tmp) / commit
                dest.mkdir()
                archive = subprocess.Popen(["git", "-C", str(REPO), "archive", commit, "src"],
                                           stdout=subprocess.PIPE)
                untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout,
                                       capture_output=True, text=True)
                assert archive.stdout is not None
                archive.stdout.close()
                if archive.wait() != 0 or untar.returncode != 0:
                    raise ValueError(f"--vs {given[commit]}: git archive {commit} src failed "
                                     f"{untar.stderr.strip()}".rstrip())
                compileall.compile_dir(str(dest / "src"), quiet=1)
                engines.append(Engine(given[commit], commit, dest / "src"))
            yield engines
    finally:
        signal.signal(signal.SIGTERM, old)


#: A twin child that fails with one of these lacks an API the case uses (the older engine):
#: its row shows SKIP with the message, not ERROR.
_LACKS = re.compile(
    r"^(ImportError|ModuleNotFoundError)\b"
    r"|^AttributeError: .*\b(pyper|module)\b"
    r"|^TypeError: .*(unexpected keyword argument|unknown option|takes \d+ positional)")


def lacks_api(last_line: str) -> bool:
    return bool(_LACKS.search(last_line))


def ratio(ours: float | None, twin: float | None) -> str:
    """The A/B cell: ours / ours@REV, or "-" if either is missing."""
    if ours is None or twin is None or twin == 0:
        return "-"
    return f"{ours / twin:.2f}x"


def legend(engines: list[Engine], more_is_better: str = "") -> str:
    """What the columns ours/@COMMIT mean; ``more_is_better`` names the rows (rates,
    speedups) where a higher value is the better one."""
    names = ", ".join(f"{e.name} (`--vs {e.rev}`)" for e in engines)
    text = (f"Beside ours: {names}, the same cases with that revision's engine (its `src/`, "
            "from `git archive`), in the same interleaved rounds. Column ours/@COMMIT, on our "
            "rows: our median / that engine's median; for a time, at most about 1.05 holds or "
            "improves")
    if more_is_better:
        text += f"; for {more_is_better}, where more is better, at least about 0.95"
    return text + "."
