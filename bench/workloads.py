"""What is called: the function, its arguments, the library's imports, the expected results.

    trivial       add(i, i + 1), a library with no imports
    numpy_pandas  the same call, from a library that imports numpy and pandas (the seed's
                  "import tensorflow" case scaled to what installs here: 67 MB, 570 mappings)
    medium        burn(i, k): about 1 ms of pure-Python CPU work per call (k calibrated here)
    latency       add with the numpy+pandas library, one call in flight: p50 and p99
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench import funcs

__all__ = ["Workload", "WORKLOADS", "make_workloads", "calibrate_burn"]

WORKLOADS = ("trivial", "numpy_pandas", "latency", "medium")
NUMPY_PANDAS = ("numpy", "pandas")


@dataclass(frozen=True)
class Workload:
    """One workload: ``n`` calls of ``bench.funcs.<function>`` from a library with ``imports``."""

    name: str
    function: str
    imports: tuple[str, ...]
    kind: str  # "throughput" or "latency"
    n: int
    description: str
    iterations: int = 0  # burn's loop length (medium only)

    @property
    def library(self) -> str:
        """The serverless library name (one per workload, so imports never mix)."""
        return f"bench_{self.name}"

    def arguments(self, n: int | None = None) -> list[tuple]:
        count = self.n if n is None else n
        if self.function == "burn":
            return [(i, self.iterations) for i in range(count)]
        return [(i, i + 1) for i in range(count)]

    def expected(self, arguments: list[tuple]) -> list[int]:
        if self.function == "burn":
            base = funcs.burn(0, self.iterations)
            return [base + x for x, _ in arguments]
        return [x + y for x, y in arguments]


def calibrate_burn(milliseconds: float, rounds: int = 5) -> int:
    """The ``burn`` loop length that takes about ``milliseconds`` here (median of rounds)."""
    probe = 20_000
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        funcs.burn(0, probe)
        timings.append(time.perf_counter() - started)
    per_step = sorted(timings)[len(timings) // 2] / probe
    return max(1, round(milliseconds / 1000 / per_step))


def make_workloads(names: list[str], n: int, latency_n: int, medium_n: int,
                   medium_ms: float) -> list[Workload]:
    """The chosen workloads, in the order given."""
    made = []
    for name in names:
        if name == "trivial":
            made.append(Workload(name, "add", (), "throughput", n, "add(x, y), bare library"))
        elif name == "numpy_pandas":
            made.append(Workload(name, "add", NUMPY_PANDAS, "throughput", n,
                                 "add(x, y), library imports numpy+pandas"))
        elif name == "medium":
            iterations = calibrate_burn(medium_ms)
            made.append(Workload(name, "burn", (), "throughput", medium_n,
                                 f"~{medium_ms:g} ms of CPU per call (burn, {iterations} steps)",
                                 iterations))
        elif name == "latency":
            made.append(Workload(name, "add", NUMPY_PANDAS, "latency", latency_n,
                                 "one call in flight, numpy+pandas library"))
        else:
            raise ValueError(f"unknown workload {name!r} (choose from {', '.join(WORKLOADS)})")
    return made
