"""Dask distributed: a LocalCluster of one single-threaded worker process per core, on
127.0.0.1, no dashboard, its logs silenced (its workers complain on shutdown). Calls go in
with one ``Client.map`` (``pure=False``: every call runs) and come back with one
``Client.gather``. ``Client.run`` imports the workload's modules in every worker first.
"""

from __future__ import annotations

import logging
from typing import Any

from bench import funcs
from bench.workloads import Workload

from .base import System, Timed, cores, function_of, missing_package, timed

__all__ = ["DaskCluster"]


class DaskCluster(System):
    name = "dask"
    description = "Dask LocalCluster, cores workers x 1 thread, Client.map"
    peer = True
    slow = True

    def __init__(self) -> None:
        self._cluster: Any = None
        self._client: Any = None
        self._function: Any = None

    def unavailable(self) -> str | None:
        return missing_package("distributed")

    def open(self, workload: Workload) -> None:
        from distributed import Client, LocalCluster

        self._cluster = LocalCluster(n_workers=cores(), threads_per_worker=1, processes=True,
                                     host="127.0.0.1", dashboard_address=None,
                                     silence_logs=logging.CRITICAL)
        self._client = Client(self._cluster)
        self._client.run(funcs.import_modules, workload.imports)
        self._function = function_of(workload)
        self.run_all(workload.arguments(10 * cores()))

    def run_all(self, arguments: list[tuple]) -> Timed:
        client, function = self._client, self._function

        def run() -> list[Any]:
            xs, ys = zip(*arguments)
            return client.gather(client.map(function, xs, ys, pure=False))

        return timed(run)

    def call_one(self, args: tuple) -> Any:
        return self._client.submit(self._function, *args, pure=False).result()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
