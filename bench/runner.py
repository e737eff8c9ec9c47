"""Timing: each (workload, system) pair becomes one :class:`Run`.

    for each workload:                          (outer: a workload's systems run back to back)
        for each system:
            open  -> warm up (untimed)
            throughput: run_all(calls) repeated while under --repeat-budget seconds,
                        up to --repeats times; the median is reported
            latency:    one call in flight, each call timed; p50/p90/p99
            check every result against the expected values
            close

A system that fails records its error and the rest go on. The regular way runs a sample
of the calls; its time for the full count is extrapolated and flagged as such.
"""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.systems.base import System
from bench.workloads import Workload

__all__ = ["Run", "Settings", "run_all", "percentile"]


@dataclass
class Settings:
    """How much to run (from the command line)."""

    regular_sample: int = 500
    slow_n: int = 5000
    repeats: int = 3
    repeat_budget: float = 10.0


@dataclass
class Run:
    """The measurements of one system on one workload."""

    workload: str
    system: str
    kind: str
    n: int  # calls per repeat (throughput) or calls timed (latency)
    full_n: int  # the workload's N: what the regular way is extrapolated to
    repeats: list[float] = field(default_factory=list)  # seconds per repeat
    seconds: float | None = None  # median of repeats
    rate: float | None = None  # calls per second, from the median
    extrapolated: bool = False  # True: n < full_n, full_seconds comes from the rate
    full_seconds: float | None = None
    latency: dict[str, float] | None = None  # seconds: p50, p90, p99, mean, min, max
    correct: bool | None = None
    error: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def calls_for(system: System, workload: Workload, settings: Settings) -> int:
    n = workload.n
    if system.name == "regular" or getattr(system, "sampled", False):
        n = min(settings.regular_sample, n)
    if workload.kind == "latency":
        return n if system.latency_cap is None else min(system.latency_cap, n)
    if system.slow:
        return min(settings.slow_n, n)
    return n


def measure(system: System, workload: Workload, settings: Settings) -> Run:
    """Open, time and close one system on one workload."""
    n = calls_for(system, workload, settings)
    run = Run(workload.name, system.name, workload.kind, n, workload.n)
    arguments = workload.arguments(n)
    expected = workload.expected(arguments)
    try:
        system.open(workload)
        try:
            if workload.kind == "latency":
                _latency(system, run, arguments, expected)
            else:
                _throughput(system, run, arguments, expected, settings)
            run.facts = system.facts()
        finally:
            system.close()
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        run.facts["traceback"] = traceback.format_exc()
    return run


def _throughput(system: System, run: Run, arguments: list[tuple], expected: list[Any],
                settings: Settings) -> None:
    spent = 0.0
    correct = True
    while len(run.repeats) < max(1, settings.repeats):
        batch = system.run_all(arguments)
        correct = correct and batch.results == expected
        run.repeats.append(batch.seconds)
        spent += batch.seconds
        if spent + batch.seconds > settings.repeat_budget:
            break
    run.correct = correct
    run.seconds = statistics.median(run.repeats)
    run.rate = run.n / run.seconds
    run.extrapolated = run.n < run.full_n
    run.full_seconds = run.full_n / run.rate


def _latency(system: System, run: Run, arguments: list[tuple], expected: list[Any]) -> None:
    results, seconds = system.latency(arguments)
    run.correct = results == expected
    run.seconds = sum(seconds)
    run.rate = len(seconds) / run.seconds
    run.latency = {
        "p50": percentile(seconds, 50), "p90": percentile(seconds, 90),
        "p99": percentile(seconds, 99), "mean": statistics.fmean(seconds),
        "min": min(seconds), "max": max(seconds),
    }


class _NoBar:
    """Stands in for tqdm when it is absent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def update(self, count: int) -> None:
        pass

    def write(self, text: str) -> None:
        print(text)


def run_all(workloads: list[Workload], systems: list[System], settings: Settings,
            progress: bool = True, note: Callable[[str], None] = print,
            on_run: Callable[[Run], None] | None = None) -> list[Run]:
    """Every available system on every workload, with a progress bar on stderr."""
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a nicety: run without it
        if progress:
            note("no progress bar: tqdm is not installed")
        progress = False
        tqdm = _NoBar  # type: ignore[assignment,misc]

    plan = [(w, s) for w in workloads for s in systems]
    runs: list[Run] = []
    with tqdm(total=len(plan), disable=not progress, unit="run", dynamic_ncols=True) as bar:
        for workload, system in plan:
            bar.set_description(f"{workload.name}: {system.name}")
            started = time.perf_counter()
            run = measure(system, workload, settings)
            runs.append(run)
            wall = time.perf_counter() - started
            if run.error:
                (bar.write if progress else note)(
                    f"{system.name} on {workload.name} failed: {run.error}")
            elif not run.correct:
                (bar.write if progress else note)(
                    f"{system.name} on {workload.name}: WRONG RESULTS")
            run.facts["wall_seconds_with_setup"] = round(wall, 3)
            if on_run is not None:
                on_run(run)
            bar.update(1)
    return runs
