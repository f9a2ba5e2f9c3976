"""Draw docs/img/progress.svg: what `pyper.progress()` shows in a real terminal.

    python scripts/progress_screenshot.py [OUT.svg]

Runs a small pipeline with a progress bar in a detached tmux session (110 x 12), waits for
it to end, captures the screen and writes it as an SVG of monospace text (the docs'
screenshot; tests/test_docs.py runs this too and checks the picture). Needs tmux, and tqdm
in the running Python.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS, ROWS = 110, 12

PROGRAM = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pyper import task, progress

def pages(n):
    yield from range(n)

def download(x):
    time.sleep(0.01)
    return x

def parse(x):
    if x % 50 == 7:
        raise ValueError(f"page {x} is not HTML")
    return x

if __name__ == "__main__":
    pipeline = task(pages) | task(download, workers=8) | task(parse, on_error="skip")
    with progress(total=400):
        done = sum(1 for _ in pipeline(400))
    print(f"parsed {done} pages")
"""


def capture() -> list[str]:
    tmux = shutil.which("tmux")
    if tmux is None:
        raise SystemExit("progress_screenshot: needs tmux")
    with tempfile.TemporaryDirectory() as tmp:
        script, done = Path(tmp) / "program.py", Path(tmp) / "done"
        script.write_text(PROGRAM)
        session = f"pyper-shot-{os.getpid()}"
        env = {**os.environ, "TMUX": ""}
        command = f"{sys.executable} {script} {ROOT / 'src'}; touch {done}; sleep 60"
        subprocess.run([tmux, "-L", session, "new-session", "-d", "-s", session, "-x", str(COLUMNS),
                        "-y", str(ROWS), command], check=True, env=env)
        try:
            deadline = time.monotonic() + 30
            while not done.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not done.exists():
                raise SystemExit("progress_screenshot: the program did not end")
            shown = subprocess.run([tmux, "-L", session, "capture-pane", "-p", "-t", session],
                                   check=True, capture_output=True, text=True, env=env).stdout
        finally:
            subprocess.run([tmux, "-L", session, "kill-server"], env=env, capture_output=True)
    return [line.rstrip() for line in shown.splitlines() if line.strip()]


def svg(lines: list[str]) -> str:
    width, line_height = COLUMNS * 8.4 + 24, 19
    height = line_height * len(lines) + 24
    rows = "\n".join(
        f'  <text x="12" y="{24 + i * line_height}" xml:space="preserve">{html.escape(line)}</text>'
        for i, line in enumerate(lines)
    )
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
            f'viewBox="0 0 {width:.0f} {height}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" '
            f'font-size="14">\n  <title>pyper.progress() in a terminal</title>\n'
            f'  <rect width="100%" height="100%" rx="6" fill="#1e1e1e"/>\n'
            f'  <g fill="#e0e0e0">\n{rows}\n  </g>\n</svg>\n')


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "img" / "progress.svg"
    lines = capture()
    out.write_text(svg(lines))
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
