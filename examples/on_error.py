"""on_error=: skip bad records, or hand them to a dead-letter list, and keep going.

    python examples/on_error.py

Prints:

    parsed 7, skipped 2
    parsed 7, dead letters ['x', '']
    [1, 2, -1, 4, 5, -1, 7, 8, 9]
"""

import logging

from pyper import Emit, task

RECORDS = ["1", "2", "x", "4", "5", "", "7", "8", "9"]


def parse(text: str) -> int:
    return int(text)  # ValueError on "x" and ""


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # each skip is one WARNING record on "pyper"

    skipping = task(lambda: RECORDS, branch=True) | task(parse, workers=2, on_error="skip")
    parsed = list(skipping())
    print(f"parsed {len(parsed)}, skipped {len(RECORDS) - len(parsed)}")

    dead: list[str] = []

    def dead_letter(record: str, exc: Exception) -> None:
        dead.append(record)  # called in the worker, for each failed item; the item is dropped

    lettered = task(lambda: RECORDS, branch=True) | task(parse, on_error=dead_letter)
    parsed = list(lettered())
    print(f"parsed {len(parsed)}, dead letters {dead}")

    def placeholder(record: str, exc: Exception) -> Emit[int]:
        return Emit(-1)  # emitted in place of the failed item's output

    replacing = task(lambda: RECORDS, branch=True) | task(parse, on_error=placeholder)
    print(list(replacing()))
