"""dead_letters=: keep every skipped item with its error, and run them again once fixed.

    python examples/dead_letters.py

Prints:

    saved [1, 2, 4, 5, 7, 8, 9]; 2 dead letters: ValueError on 'x', ValueError on ''
    replayed: saved [1, 2, 4, 5, 7, 8, 9, 0, 0]
"""

import json
import logging
import os
import tempfile

import pyper
from pyper import task

RECORDS = ["1", "2", "x", "4", "5", "", "7", "8", "9"]
FIXED = False  # the cause, fixed below before the replay


def parse(text: str) -> int:
    if FIXED and not text.isdigit():
        return 0  # the fix: a record that is not a number counts as 0
    return int(text)


def records() -> list[str]:
    return RECORDS


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # each skip is one WARNING record on "pyper"
    saved: list[int] = []
    with tempfile.TemporaryDirectory() as folder:
        letters = os.path.join(folder, "dead.jsonl")
        pipeline = task(records, branch=True) | task(parse, on_error="skip", dead_letters=letters)
        saved.extend(pipeline())
        with open(letters) as file:
            dead = [json.loads(line) for line in file]
        shown = ", ".join(f"{d['type']} on {d['item']!r}" for d in dead)
        print(f"saved {saved}; {len(dead)} dead letters: {shown}")

        FIXED = True
        os.replace(letters, letters + ".1")  # the letters to replay, apart from any new ones
        saved.extend(pyper.replay(pipeline, letters + ".1"))
        print(f"replayed: saved {saved}")
