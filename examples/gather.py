"""pyper.gather(f, g, h): one document sent to several prompts at once.

    python examples/gather.py

Prints:

    doc-0: ('summary of doc-0', 'DOC-0', 'label 4')
    doc-1: ('summary of doc-1', 'DOC-1', 'label 4')
    doc-2: ('summary of doc-2', 'DOC-2', 'label 4')
    3 documents x 3 calls of 0.2 s in under 0.5 s
"""

import asyncio
import time

from pyper import gather, task


async def summarize(doc: str) -> str:
    await asyncio.sleep(0.2)  # a call to a model, say
    return f"summary of {doc}"


async def translate(doc: str) -> str:
    await asyncio.sleep(0.2)
    return doc.upper()


async def classify(doc: str) -> str:
    await asyncio.sleep(0.2)
    return f"label {len(doc) - 1}"


async def main() -> None:
    docs = task(lambda n: [f"doc-{i}" for i in range(n)], branch=True)
    pipeline = docs | task(gather(summarize, translate, classify), workers=3, ordered=True)
    started = time.monotonic()
    async for result in pipeline(3):
        print(f"{result[1].lower()}: {result}")
    assert time.monotonic() - started < 0.5
    print("3 documents x 3 calls of 0.2 s in under 0.5 s")


if __name__ == "__main__":
    asyncio.run(main())
