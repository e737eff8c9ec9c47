"""Quick start: a library with setup state, served by local workers, then 20,000 calls.

Run it with ``python examples/quickstart.py [N]`` after ``pip install -e .`` (numpy is
installed with the ``bench`` or ``test`` extra; without it the numpy part is skipped).
"""

from __future__ import annotations

import importlib.util
import sys
import time

import serverless


def add(x, y):
    return x + y


def load_model():  # runs once per library instance
    import numpy

    return {"weights": numpy.ones(3)}


def predict(x):
    return float((serverless.state()["weights"] * x).sum())


def throughput(m: serverless.Manager, library: str, n: int) -> float:
    """Calls per second for ``n`` calls of ``add``, all submitted, then all awaited."""
    start = time.perf_counter()
    futures = [m.call(library, "add", i, 1) for i in range(n)]
    assert all(f.result() == i + 1 for i, f in enumerate(futures))
    return n / (time.perf_counter() - start)


def main(n: int = 20_000) -> None:
    has_numpy = importlib.util.find_spec("numpy") is not None
    with serverless.Manager() as m:  # no arguments: starts a local worker with this machine's cores
        if has_numpy:
            m.install(serverless.Library("math", [add, predict], imports=["numpy"],
                                         setup=load_model, mode="fork", slots=2))
            assert m.call("math", "add", 1, 2).result() == 3
            assert list(m.map("math", "add", [1, 2], [10, 20])) == [11, 22]
            assert m.call("math", "predict", 2).result() == 6.0
            print("math library: add, map and predict (with setup state) work")
        m.install(serverless.Library("fork", [add], mode="fork"))
        m.install(serverless.Library("direct", [add], mode="direct"))
        for library in ("fork", "direct"):
            m.call(library, "add", 0, 0).result()  # deploy and warm up before timing
            print(f"{n:,} calls, {library} mode: {throughput(m, library, n):,.0f} calls/s")
        print(f"what calls printed is in {m.log_dir}/worker-0/<library>-<instance>.log")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
