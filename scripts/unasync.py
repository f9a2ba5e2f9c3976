"""Generate the sync twins of pyper's async engine sources, or check they are current.

    python scripts/unasync.py           # rewrite the generated files
    python scripts/unasync.py --check   # exit 1 if a generated file is stale (the tests run this)

The async file is the source (as in httpcore's ``scripts/unasync.py``): ``async``
and ``await`` are dropped, the names below are replaced by their sync twins (whole
words only), and a line that ends in ``# sync: CODE`` becomes ``CODE`` (same
indentation) where the plain rewrite would be wrong or slow (``# sync: -``: the line
is left out). The module docstring
is copied as it is: it describes both files.

The loops and the per-call options have a third twin, *stepped* (``STEPPED``): the sync
one, but for the call of the task's function, which the loop does not make itself: it
yields the item to whoever drives it and gets the outcome back (``await call(x)``, and
``await worker.call(...)`` and ``await loop(worker)`` that lead to it, become ``yield
from``). ``timeout=`` on threads drives a worker so (``_timeouts``): the calls are made
in the worker's thread, and at a deadline another thread takes over the loop.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "pyper"

#: source -> generated, relative to the package
FILES = {
    "_engine/_async_loops.py": "_engine/_sync_loops.py",
    "_engine/_async_caller.py": "_engine/_sync_caller.py",
    "_engine/_async_calls.py": "_engine/_sync_calls.py",
    "_channel/_async_wait.py": "_channel/_sync_wait.py",
}

#: source -> stepped twin (see the module's docstring), relative to the package
STEPPED = {
    "_engine/_async_loops.py": "_engine/_stepped_loops.py",
    "_engine/_async_calls.py": "_engine/_stepped_calls.py",
}

#: In a stepped twin: an awaited call that leads to the task's function, made a ``yield from``.
_STEP = re.compile(r"\bawait ((?:worker\.)?call|loop)\(([^()]*)\)")

#: whole-word replacements, applied after async/await are dropped
NAMES = {
    "AsyncIterator": "Iterator",
    "Awaitable[None]": "None",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "StopAsyncIteration": "StopIteration",
    "aget": "get",
    "aget_seq": "get_seq",
    "aget_within": "get_within",
    "aput": "put",
    "aflush": "flush",
    "aflush_seq": "flush_seq",
    "aclose": "close",
    "aiter_result": "iter_result",
    "acall_inline": "call_inline",
    "acall_chain": "call_chain",
    "asettle": "settle",
    "_async_loops": "_sync_loops",
    "_async_caller": "_sync_caller",
    "_async_calls": "_sync_calls",
    "_async_wait": "_sync_wait",
    "AsyncExitStack": "ExitStack",
    "__aexit__": "__exit__",
}

_DIRECTIVE = re.compile(r"^(\s*)(.*?)\s+# sync: (.*)$")
_NAME = re.compile(r"(?<![\w.])(" + "|".join(re.escape(k) for k in sorted(NAMES, key=len, reverse=True)) + r")(?!\w)")
_ATTR = re.compile(r"(?<=\.)(" + "|".join(re.escape(k) for k in sorted(NAMES, key=len, reverse=True)) + r")(?!\w)")


def _line(line: str, stepped: bool = False) -> str | None:
    directive = _DIRECTIVE.match(line)
    if directive:
        code = directive.group(3).strip()
        return None if code == "-" else directive.group(1) + code
    if stepped:
        line = _STEP.sub(r"(yield from \1(\2))", line)
    line = re.sub(r"\basync (def|for|with)\b", r"\1", line)
    line = re.sub(r"\bawait ", "", line)
    line = _NAME.sub(lambda m: NAMES[m.group(1)], line)
    line = _ATTR.sub(lambda m: NAMES[m.group(1)], line)
    return line


def generate(source: str, name: str, stepped: bool = False) -> str:
    """The sync (or stepped) twin of ``source``; its module docstring, which speaks of
    all of them, is kept."""
    header = (
        f"# GENERATED from {name} by scripts/unasync.py{' (the stepped twin)' if stepped else ''}: "
        "edit that file, then run\n"
        "# `python scripts/unasync.py` (a test fails while this file is stale).\n"
    )
    lines = source.splitlines()
    end = next(i for i, line in enumerate(lines) if i and line.rstrip().endswith('"""'))
    kept, rest = lines[: end + 1], lines[end + 1 :]
    body = [converted for converted in (_line(line, stepped) for line in rest) if converted is not None]
    return header + "".join(line + "\n" for line in kept) + "".join(line + "\n" for line in body)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    sources = {src: (PACKAGE / src).read_text() for src in FILES}
    unused = [name for name in NAMES if not any(re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text)
                                                for text in sources.values())]
    if unused:  # a substitution that no longer matches anything: the list has drifted
        print(f"unasync: names replaced nowhere: {', '.join(unused)}: drop them from NAMES", file=sys.stderr)
        return 1
    jobs = [(src, dst, False) for src, dst in FILES.items()] + [(src, dst, True) for src, dst in STEPPED.items()]
    for src, dst, stepped in jobs:
        text = generate(sources[src], Path(src).name, stepped)
        target = PACKAGE / dst
        if target.exists() and target.read_text() == text:
            continue
        if check:
            stale.append(dst)
        else:
            target.write_text(text)
            print(f"wrote {target}")
    if stale:
        print(f"stale: {', '.join(stale)}: run `python scripts/unasync.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
