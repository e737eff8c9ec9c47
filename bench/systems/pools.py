"""The standard library's pools, one machine only: ``multiprocessing.Pool`` and
``concurrent.futures.ProcessPoolExecutor``, one worker process per core (fork start method),
each importing the workload's modules in its initializer. Calls run inside the workers
with no isolation between them.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench.funcs import import_modules
from bench.workloads import Workload

from .base import System, Timed, cores, function_of, timed

__all__ = ["MultiprocessingPool", "ProcessPool"]


def _initialize(modules: tuple[str, ...]) -> None:
    import_modules(modules)


class MultiprocessingPool(System):
    name = "mp-pool"
    description = "multiprocessing.Pool(cores).starmap, chunksize 1"
    peer = True

    def __init__(self) -> None:
        self._pool: Any = None
        self._function: Any = None

    def open(self, workload: Workload) -> None:
        self._function = function_of(workload)
        self._pool = multiprocessing.get_context("fork").Pool(
            cores(), initializer=_initialize, initargs=(workload.imports,))
        self._pool.starmap(self._function, workload.arguments(10 * cores()), chunksize=1)

    def run_all(self, arguments: list[tuple]) -> Timed:
        return timed(lambda: self._pool.starmap(self._function, arguments, chunksize=1))

    def call_one(self, args: tuple) -> Any:
        return self._pool.apply(self._function, args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


class ProcessPool(System):
    name = "process-pool"
    description = "concurrent.futures.ProcessPoolExecutor(cores), submit each call"
    peer = True

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._function: Any = None

    def open(self, workload: Workload) -> None:
        self._function = function_of(workload)
        self._pool = ProcessPoolExecutor(cores(), mp_context=multiprocessing.get_context("fork"),
                                         initializer=_initialize, initargs=(workload.imports,))
        list(self._pool.map(self._function, *zip(*workload.arguments(10 * cores()))))

    def run_all(self, arguments: list[tuple]) -> Timed:
        pool, function = self._pool, self._function
        assert pool is not None

        def run() -> list[Any]:
            futures = [pool.submit(function, *args) for args in arguments]
            return [f.result() for f in futures]

        return timed(run)

    def call_one(self, args: tuple) -> Any:
        assert self._pool is not None
        return self._pool.submit(self._function, *args).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
