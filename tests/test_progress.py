"""pyper.progress(): bars per stage (tqdm) seen in a real terminal (tmux), and log lines."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import acollect, run_async

from pyper import progress, task

ROOT = Path(__file__).resolve().parent.parent


def source(n: int) -> Any:
    yield from range(n)


def slow(x: int) -> int:
    time.sleep(0.005)
    return x


def spin(x: int) -> int:
    started = time.perf_counter()
    while time.perf_counter() - started < 0.002:
        pass
    return x


_PROGRAM = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pyper import task, progress

def source(n):
    yield from range(n)

def slow(x):
    time.sleep(0.005)
    return x

def every_seventh_fails(x):
    if x % 7 == 0:
        raise ValueError(x)
    return x

if __name__ == "__main__":
    p = task(source, branch=True) | task(slow, workers=4) | task(every_seventh_fails, on_error="skip")
    with progress(total=200, bars=sys.argv[3] if len(sys.argv) > 3 else None):
        if sys.argv[2] == "break":
            for i, _ in enumerate(p(200)):
                if i == 49:
                    break
            said = "broke out"
        else:
            said = f"done {sum(1 for _ in p(200))}"
    print(said)  # after the block: the bar is closed, the line is the program's
"""


def _screen(tmp_path: Path, mode: str, bars: str = "") -> list[str]:
    """Run the program in a real terminal (a detached tmux session, 100 x 20), and return
    its screen once the program has ended."""
    tmux = shutil.which("tmux")
    assert tmux, "this test looks at a terminal through tmux: install tmux"
    script = tmp_path / "progress_program.py"
    script.write_text(_PROGRAM)
    done = tmp_path / "done"
    session = f"pyper-progress-{os.getpid()}-{mode}"
    command = f"{sys.executable} {script} {ROOT / 'src'} {mode} {bars}; touch {done}; sleep 60"
    env = {**os.environ, "TMUX": ""}
    subprocess.run([tmux, "-L", session, "new-session", "-d", "-s", session, "-x", "100", "-y", "20", command],
                   check=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done.exists(), "the program did not end"
        shown = subprocess.run([tmux, "-L", session, "capture-pane", "-p", "-t", session],
                               check=True, capture_output=True, text=True, env=env).stdout
    finally:
        subprocess.run([tmux, "-L", session, "kill-server"], env=env, capture_output=True)
    return [line.rstrip() for line in shown.splitlines() if line.strip()]


@pytest.mark.timeout(60)
def test_a_bar_in_a_terminal_ends_whole_with_the_skips_above_it(tmp_path: Path) -> None:
    lines = _screen(tmp_path, "all")
    assert lines[-1] == "done 171", lines
    bar = lines[-2]
    assert bar.startswith("pyper:  86%|") and "171/200" in bar, lines  # 29 of 200 skipped
    assert "source 200 | slow 200 | errors 29" in bar, bar
    # the skipped items' records, each whole on a line of its own above the bar
    skipped = lines[:-2]
    assert skipped and all(line.startswith("pyper: task 'every_seventh_fails' skipped item ") for line in skipped), lines
    assert all(line.endswith(f"ValueError: {line.split()[5]}") for line in skipped), skipped


@pytest.mark.timeout(60)
def test_bars_close_cleanly_on_a_break(tmp_path: Path) -> None:
    lines = _screen(tmp_path, "break")
    assert lines[-1] == "broke out", lines
    bar = lines[-2]
    # 50 taken, and what the stages had made ahead of the consumer when it broke out
    made = re.match(r"pyper: +\d+%\|[^|]*\| (\d+)/200 \[", bar)
    assert made and 50 <= int(made.group(1)) < 150, lines
    assert all(line.startswith("pyper: task 'every_seventh_fails' skipped item ") for line in lines[:-2]), lines


@pytest.mark.timeout(30)
def test_without_bars_it_logs_a_line_per_stage(caplog: pytest.LogCaptureFixture) -> None:
    p = task(source, branch=True) | task(slow, workers=4)
    with caplog.at_level(logging.INFO, logger="pyper.progress"), progress(bars=False, interval=0.1) as seen:
        assert sorted(p(100)) == list(range(100))
    lines = [r.getMessage() for r in caplog.records if r.name == "pyper.progress"]
    assert lines[-2:] == [
        "pyper: run 1, source: 100 out (%.0f/s), 0 errors, 0/1 workers, done" % (100 / seen.last.elapsed),
        "pyper: run 1, slow: 100 out (%.0f/s), 0 errors, 0/4 workers, done" % (100 / seen.last.elapsed),
    ]
    assert len(lines) >= 4, lines  # lines while it ran (0.1 s apart), then the last ones


@pytest.mark.timeout(30)
def test_an_error_in_the_block_ends_the_progress_thread_and_propagates(caplog: pytest.LogCaptureFixture) -> None:
    p = task(source, branch=True) | task(slow)
    with caplog.at_level(logging.INFO, logger="pyper.progress"):
        with pytest.raises(KeyError), progress(bars=False, interval=0.05):
            for x in p(1000):
                if x == 20:
                    raise KeyError(x)
    # (the leak fixture checks that the progress thread is gone)
    assert any(r.getMessage().startswith("pyper: run 1, slow: ") for r in caplog.records)


@pytest.mark.timeout(60)
def test_progress_of_async_pipelines_and_process_stages(caplog: pytest.LogCaptureFixture) -> None:
    async def aslow(x: int) -> int:
        await asyncio.sleep(0.001)
        return x

    async def main() -> list[int]:
        with progress(bars=False, interval=0.05):
            return sorted(await acollect((task(source, branch=True) | task(aslow, workers=3))(50)))

    with caplog.at_level(logging.INFO, logger="pyper.progress"):
        assert run_async(main()) == list(range(50))
        p = task(source, branch=True) | task(spin, workers=2, multiprocess=True)
        with progress(bars=False, interval=0.05):
            assert sorted(p(200)) == list(range(200))
    lines = [r.getMessage() for r in caplog.records if r.name == "pyper.progress"]
    assert any(line.endswith("aslow: 50 out") or ("aslow: 50 out (" in line and line.endswith("done")) for line in lines)
    assert any("spin: 200 out (" in line and line.endswith("0/2 workers, done") for line in lines), lines


def test_bars_need_tqdm_or_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyper import _progress

    monkeypatch.setattr(_progress, "_have", lambda module: False)
    with pytest.raises(RuntimeError, match=r"tqdm or rich, and neither is installed: pip install 'python-pyper\[tqdm\]'"):
        with progress(bars=True):
            pass
    with pytest.raises(RuntimeError, match=r"draws with rich, which is not installed: pip install 'python-pyper\[rich\]'"):
        with progress(bars="rich"):
            pass
    with pytest.raises(TypeError, match=r"bars must be True, False, None, 'tqdm' or 'rich', got 'fancy'"):
        with progress(bars="fancy"):  # type: ignore[arg-type]
            pass


@pytest.mark.timeout(60)
def test_a_rich_bar_in_a_terminal_ends_whole_with_the_skips_above_it(tmp_path: Path) -> None:
    lines = _screen(tmp_path, "all", "rich")
    assert lines[-1] == "done 171", lines
    bar = lines[-2]
    assert bar.startswith("pyper ") and "171/200" in bar and "source 200 | slow 200 | errors 29" in bar, lines
    skipped = lines[:-2]  # the last of the 29 records, as many as the terminal's rows hold
    assert len(skipped) >= 10 and all(
        line.startswith("pyper: task 'every_seventh_fails' skipped item ") for line in skipped), lines
    assert [int(line.split()[5]) for line in skipped] == list(range(196, 0, -7))[:len(skipped)][::-1]


def load(rows: list[int]) -> int:
    time.sleep(0.002)
    return len(rows)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bars", ["tqdm", "rich", "lines"])
def test_a_batching_last_stage_is_counted_in_items(bars: str, capsys: pytest.CaptureFixture[str],
                                                   caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 20: the bar counted the pipeline's outputs, so a "load in batches" ending
    (batch=100) stopped at 10/1000 and showed lists per second."""
    import tqdm

    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)  # no monitor thread left behind
    monkeypatch.setenv("COLUMNS", "200")  # rich draws into the capture at this width
    p = task(source, branch=True) | task(slow, workers=4) | task(load, batch=100)
    with caplog.at_level(logging.INFO, logger="pyper.progress"):
        with progress(bars=False if bars == "lines" else bars, interval=0.05, total=1000) as seen:
            assert sum(p(1000)) == 1000
    if bars == "lines":
        lines = [r.getMessage() for r in caplog.records if r.name == "pyper.progress"]
        assert lines[-1] == "pyper: run 1: 1000/1000 items (%.0f/s), done" % (1000 / seen.last.elapsed), lines
        assert "pyper: run 1, load: 10 out" in lines[-2], lines
    else:
        shown = capsys.readouterr()
        drawn = shown.err + shown.out
        assert "1000/1000" in drawn, drawn
        assert " 10/1000" not in drawn.replace("100/1000", ""), drawn
    assert seen.last.count == 1000
    last = seen.last.stages[-1]
    assert (last.items_in, last.items_out, last.items_in_lists) == (10, 10, 1000)
    assert seen.last.stages[1].items_in_lists is None  # a stage that takes single items
