"""Ray: a local cluster with as many CPUs as cores, on 127.0.0.1, no dashboard.

Each call is one remote task (``num_cpus=1``); results come back with one ``ray.get`` of
every ObjectRef. Warm-up tasks import the workload's modules in the workers first.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from bench import funcs
from bench.workloads import Workload

from .base import System, Timed, cores, function_of, missing_package, timed

__all__ = ["RayCluster"]


class RayCluster(System):
    name = "ray"
    description = "Ray local cluster, num_cpus=cores, one task per call"
    peer = True
    slow = True

    def __init__(self) -> None:
        self._remote: Any = None

    def unavailable(self) -> str | None:
        return missing_package("ray")

    def open(self, workload: Workload) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        ray.init(num_cpus=cores(), include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
        self._remote = ray.remote(num_cpus=1)(function_of(workload))
        warm = ray.remote(num_cpus=1)(funcs.import_modules)
        ray.get([warm.remote(workload.imports) for _ in range(4 * cores())])
        ray.get([self._remote.remote(*a) for a in workload.arguments(10 * cores())])

    def run_all(self, arguments: list[tuple]) -> Timed:
        import ray

        remote = self._remote
        return timed(lambda: ray.get([remote.remote(*args) for args in arguments]))

    def call_one(self, args: tuple) -> Any:
        import ray

        return ray.get(self._remote.remote(*args))

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
