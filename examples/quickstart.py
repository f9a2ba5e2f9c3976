"""The README's first snippet: three stages, the slow one with 20 threads, and a consumer."""
import time

from pyper import task


def fetch_ids(count: int):
    """A generator: each id goes on to `download` as soon as it is yielded."""
    yield from range(count)


def download(item_id: int) -> dict:
    """Slow I/O, simulated: 20 of these run at once."""
    time.sleep(0.1)
    return {"id": item_id, "body": f"page {item_id}"}


def parse(page: dict) -> int:
    return len(page["body"])


def save(lengths) -> None:
    """The consumer gets the output stream of the pipeline."""
    print("saved", sum(lengths), "characters")


if __name__ == "__main__":
    run = task(fetch_ids) | task(download, workers=20) | task(parse, workers=2) > save
    run(100)  # ~0.5 s, instead of 10 s one by one
