"""max_failures=: skip bad records, but stop a run that fails far more than it should.

    python examples/error_budget.py

Prints:

    parsed 7 of 9 (2 skipped, within the budget of 2)
    stopped: task 'parse' failed on 3 of 9 items it took, past its budget (max_failures=2)
    failed on ['x', '', 'y']
"""

import logging

from pyper import TooManyFailures, task

GOOD = ["1", "2", "x", "4", "5", "", "7", "8", "9"]
WORSE = ["1", "2", "x", "4", "5", "", "7", "y", "9"]


def parse(text: str) -> int:
    return int(text)  # ValueError on "x", "y" and ""


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # each skip is one WARNING record on "pyper"

    def records(rows: list[str]) -> list[str]:
        return rows

    pipeline = task(records, branch=True) | task(parse, on_error="skip", max_failures=2)
    parsed = list(pipeline(GOOD))
    print(f"parsed {len(parsed)} of {len(GOOD)} ({len(GOOD) - len(parsed)} skipped, within the budget of 2)")

    try:
        list(pipeline(WORSE))
    except TooManyFailures as error:
        print(f"stopped: {error}")
        print(f"failed on {[letter.item for letter in error.failures]}")
