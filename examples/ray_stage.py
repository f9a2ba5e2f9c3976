"""executor="ray": the heavy stage runs on a Ray cluster, the rest of the pipeline stays local.

    pip install 'python-pyper[ray]'
    python examples/ray_stage.py

Without a ray.init(...) of the program's own, pyper starts a local Ray on first use
(here with ray.init(num_cpus=2), to keep the example small) and Ray stops it at exit.
Each of the two workers of `embed` is a Ray actor holding its own "model" (setup=),
loaded once and reused for every batch it is given.

Prints:

    embedded 100 texts on 2 models, 100 calls in all
"""

import ray

from pyper import task


class Model:
    """Stands for something expensive to load: made once per Ray worker."""

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, text: str) -> list[float]:
        self.calls += 1
        return [len(text), sum(map(ord, text)) % 97, self.calls]


def load_model() -> Model:
    return Model()


def texts(n: int):
    for i in range(n):
        yield f"document {i}"


def embed(model: Model, text: str) -> tuple[str, list[float]]:
    return text, model.embed(text)


def store(row: tuple[str, list[float]]) -> float:
    text, vector = row
    return vector[2]  # which call of its model this was


if __name__ == "__main__":
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    pipeline = (
        task(texts, branch=True)
        | task(embed, workers=2, executor="ray", setup=load_model, ray_options={"num_cpus": 1})
        | task(store, workers=4)
    )
    counts = list(pipeline(100))
    models = sum(1 for c in counts if c == 1)  # each model's first call
    print(f"embedded {len(counts)} texts on {models} models, {len(counts)} calls in all")
