"""The interface every system adapter implements, and the helpers they share.

A run of one system on one workload is::

    open(workload)        start pools / managers / processes and warm them (not timed)
    run_all(arguments)    submit every call, then wait for every result (timed by the runner,
                          unless the system times itself, as the floors do)
    latency(arguments)    one call in flight at a time; seconds per call
    close()               stop what open() started

Adapters never swallow errors: an exception ends that run and the runner records it.
"""

from __future__ import annotations

import importlib.util
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import funcs
from bench.workloads import Workload

__all__ = ["System", "Timed", "cores", "function_of", "timed", "missing_package"]


@dataclass
class Timed:
    """Results of a batch, and the seconds it took (from first submit to last result)."""

    results: list[Any]
    seconds: float


def cores() -> int:
    """Cores this process may use (what every system is given)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def function_of(workload: Workload) -> Callable[..., Any]:
    return getattr(funcs, workload.function)


def timed(run: Callable[[], list[Any]]) -> Timed:
    started = time.perf_counter()
    results = run()
    return Timed(results, time.perf_counter() - started)


def missing_package(*modules: str) -> str | None:
    """A note naming the first of ``modules`` that is not installed, or None."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"package {module!r} is not installed"
    return None


class System(ABC):
    """One way of running the calls."""

    #: the name used with --systems
    name: str = ""
    #: what the table says about it
    description: str = ""
    #: a peer: compared against, optional, may be slow
    peer: bool = False
    #: runs fewer calls (--slow-n) because it is slow
    slow: bool = False
    #: at most this many calls in the latency test (None: all)
    latency_cap: int | None = None

    def unavailable(self) -> str | None:
        """Why this system cannot run here (a missing package), or None."""
        return None

    @abstractmethod
    def open(self, workload: Workload) -> None:
        """Start and warm up for ``workload``; not timed."""

    @abstractmethod
    def run_all(self, arguments: list[tuple]) -> Timed:
        """Submit every call, then wait for every result."""

    def latency(self, arguments: list[tuple]) -> tuple[list[Any], list[float]]:
        """Results and seconds per call, one call in flight at a time."""
        results, seconds = [], []
        for args in arguments:
            started = time.perf_counter()
            results.append(self.call_one(args))
            seconds.append(time.perf_counter() - started)
        return results, seconds

    def call_one(self, args: tuple) -> Any:
        """One call, waited for (used by the default :meth:`latency`)."""
        raise NotImplementedError

    def facts(self) -> dict[str, Any]:
        """Anything worth recording about this run (instances, configuration)."""
        return {}

    @abstractmethod
    def close(self) -> None:
        """Stop everything :meth:`open` started."""
