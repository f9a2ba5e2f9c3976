"""unpack=True: a tuple item is the call's positional arguments, a dict its keywords.

    python examples/unpack.py

Prints:

    [11, 22, 33]
    ['alice is 31', 'bob is 42']
"""

from pyper import task


def add(a: int, b: int) -> int:
    return a + b


def describe(name: str, age: int) -> str:
    return f"{name} is {age}"


if __name__ == "__main__":
    pairs = task(lambda: zip([1, 2, 3], [10, 20, 30]), branch=True)
    print(list((pairs | task(add, unpack=True))()))  # add(1, 10), add(2, 20), ...

    people = task(lambda: [{"name": "alice", "age": 31}, {"name": "bob", "age": 42}], branch=True)
    print(list((people | task(describe, unpack=True))()))
