"""What the stand-alone benchmarks (adaptive.py, ray_stages.py) share: their summary
statistics, their rows (ours and, with --vs, each engine's twin after it), and writing their
section of RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from _vs import Engine, legend, ratio

REPO = Path(__file__).resolve().parent.parent


def median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def fmt(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def header(section: str, command: str, about: str, load_before: tuple[float, ...], took: float,
           rounds: int, engines: Sequence[Engine] = (), more_is_better: str = "") -> list[str]:
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
        f"- pyper under test: {commit}{' + uncommitted changes in src/' if dirty else ''}"
        + "".join(f"; beside it {e.name}, the engine of `{e.rev}`" for e in engines) + "; "
        f"machine: nproc {os.cpu_count()}, {platform.platform()}",
        f"- load average before / after: {' '.join(f'{v:.2f}' for v in load_before)} / "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; run took {took:.0f} s",
        f"- rounds: {rounds}, interleaved (order rotated each round); median (min-max) over the rounds",
    ] + ([f"- {legend(list(engines), more_is_better)}"] if engines else [])


#: (case, contender, (median, min, max) or None if it has no values, unit, target, status,
#: the cells ours / ours@REV, one per --vs engine, on our rows; () on the others).
Stats = tuple[float, float, float] | None
Row = tuple[str, str, Stats, str, str, str, tuple[str, ...]]


def status_of(values: list[float], meets: Callable[[float], bool] | None, empty: str = "SKIP") -> str:
    if not values:
        return empty
    if meets is None:
        return "ref"
    return "PASS" if meets(statistics.median(values)) else "**MISS**"


def ref_row(case: str, who: str, values: list[float], unit: str, target: str = "",
            meets: Callable[[float], bool] | None = None) -> Row:
    """A row of one contender that has no twin (a baseline, a hand-written peer)."""
    return (case, who, median_range(values) if values else None, unit, target,
            status_of(values, meets), ())


def engine_rows(case: str, who: str, values: Mapping[str, list[float]], unit: str,
                engines: Sequence[Engine] = (), target: str = "",
                meets: Callable[[float], bool] | None = None,
                whos: Mapping[str, str] | None = None,
                empty: Mapping[str, str] | None = None) -> list[Row]:
    """Our row (``values["ours"]``) and after it one per --vs engine (``values[engine.name]``),
    labelled ``engine.label(who)`` unless ``whos`` names it; our row gets the cells ours /
    that engine (medians). A row without values shows ``empty[name]`` (default SKIP)."""
    ours = values.get("ours", [])
    med = statistics.median(ours) if ours else None
    ab = tuple(ratio(med, statistics.median(v) if (v := values.get(e.name)) else None) for e in engines)
    out: list[Row] = [(case, (whos or {}).get("ours", who), median_range(ours) if ours else None, unit,
                       target, status_of(ours, meets, (empty or {}).get("ours", "SKIP")), ab)]
    for e in engines:
        v = values.get(e.name, [])
        out.append(("", (whos or {}).get(e.name, e.label(who)), median_range(v) if v else None, unit,
                    target, status_of(v, meets, (empty or {}).get(e.name, "SKIP")), ()))
    return out


def _cells(stats: Stats) -> tuple[str, str]:
    """The median and the min-max, as shown."""
    if stats is None:
        return "-", "-"
    med, lo, hi = stats
    return fmt(med), f"{fmt(lo)}-{fmt(hi)}"


def table(rows: list[Row], engines: Sequence[Engine] = ()) -> list[str]:
    heads = ["case", "contender", "median", "min-max", *(e.column() for e in engines), "target", "status"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for case, who, stats, unit, target, status, ab in rows:
        ab = ab or ("",) * len(engines)
        med, spread = _cells(stats)
        lines.append(f"| {case} | {who} | {med}{f' {unit}' if stats else ''} | {spread} | "
                     + "".join(f"{c} | " for c in ab) + f"{target.replace('<', '&lt;')} | {status} |")
    return lines


def print_rows(rows: list[Row], engines: Sequence[Engine] = ()) -> None:
    width = max([len("contender"), *(len(who) for _, who, *_ in rows)])
    heads = "".join(f" {e.column():>13}" for e in engines)
    print(f"{'case':44} {'contender':{width}} {'median':>8} {'':8} {'min-max':12}{heads} {'target':10} status")
    for case, who, stats, unit, target, status, ab in rows:
        med, spread = _cells(stats)
        cells = "".join(f" {c:>13}" for c in ab or ("",) * len(engines))
        print(f"{case[:44]:44} {who:{width}} {med:>8} {unit if stats else '':8} {spread:12}{cells} "
              f"{target:10} {status}")


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
