"""What the stand-alone benchmarks (adaptive.py, ray_stages.py) share: their summary
statistics, and writing their section of RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def fmt(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def header(section: str, command: str, about: str, load_before: tuple[float, ...], took: float,
           rounds: int) -> list[str]:
    """The section's heading and the lines that say how, where and when it was measured."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"],
                           capture_output=True, text=True).stdout.strip()
    return [
        section, "",
        f"- command: `{command}`",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Python: {platform.python_version()}{about}",
        f"- pyper under test: {commit}{' + uncommitted changes in src/' if dirty else ''}; "
        f"machine: nproc {os.cpu_count()}, {platform.platform()}",
        f"- load average before / after: {' '.join(f'{v:.2f}' for v in load_before)} / "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; run took {took:.0f} s",
        f"- rounds: {rounds}, interleaved (order rotated each round); median (min-max) over the rounds",
    ]


Row = tuple[str, str, tuple[float, float, float], str, str, str]


def table(rows: list[Row]) -> list[str]:
    lines = ["| case | contender | median | min-max | target | status |", "|---|---|---|---|---|---|"]
    for case, who, (med, lo, hi), unit, target, status in rows:
        lines.append(f"| {case} | {who} | {fmt(med)} {unit} | {fmt(lo)}-{fmt(hi)} | "
                     f"{target.replace('<', '&lt;')} | {status} |")
    return lines


def print_rows(rows: list[Row]) -> None:
    for case, who, (med, lo, hi), unit, target, status in rows:
        print(f"{case[:44]:44} {who[:52]:52} {fmt(med):>8} {unit:8} {fmt(lo)}-{fmt(hi):10} {target:10} {status}")


def write_section(path: Path, section: str, text_of_section: str) -> None:
    """Replace the section headed ``section`` in ``path`` (up to the next '## '), or append it."""
    text = path.read_text() if path.exists() else ""
    start = text.find(section)
    if start < 0:
        path.write_text(text.rstrip("\n") + ("\n\n" if text else "") + text_of_section)
        return
    end = text.find("\n## ", start + len(section))
    rest = text[end + 1:] if end >= 0 else ""
    path.write_text(text[:start] + text_of_section + ("\n" + rest if rest else ""))
