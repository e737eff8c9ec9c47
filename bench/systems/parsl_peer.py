"""Parsl's HighThroughputExecutor: one local block with one worker per core, on 127.0.0.1.

Encryption between the executor and its workers is off (serverless does not encrypt on
loopback either). The workload's modules are imported in the workers by warm-up tasks
before timing. Each call is one ``python_app`` invocation returning an AppFuture.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench import funcs
from bench.workloads import Workload

from .base import System, Timed, cores, function_of, missing_package, timed

__all__ = ["ParslSystem", "ParslHtex"]


class ParslSystem(System):
    """What every system run through a Parsl DataFlowKernel shares: one ``python_app``
    invocation per call, and the DFK and its run directory cleaned up at the end.
    ``open`` loads the DFK into ``_dfk``, the app into ``_app`` and makes ``_dir``."""

    def __init__(self) -> None:
        self._dfk: Any = None
        self._app: Any = None
        self._dir: Path | None = None

    def unavailable(self) -> str | None:
        return missing_package("parsl")

    def run_all(self, arguments: list[tuple]) -> Timed:
        app = self._app

        def run() -> list[Any]:
            futures = [app(*args) for args in arguments]
            return [f.result() for f in futures]

        return timed(run)

    def call_one(self, args: tuple) -> Any:
        return self._app(*args).result()

    def close(self) -> None:
        if self._dfk is not None:
            import parsl

            self._dfk.cleanup()
            parsl.clear()
            self._dfk = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class ParslHtex(ParslSystem):
    name = "parsl-htex"
    description = "Parsl HighThroughputExecutor, 1 node, cores workers"
    peer = True
    slow = True

    def open(self, workload: Workload) -> None:
        import parsl
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        self._dir = Path(tempfile.mkdtemp(prefix="bench-parsl-"))
        config = Config(
            executors=[HighThroughputExecutor(
                label="htex", address="127.0.0.1", loopback_address="127.0.0.1",
                max_workers_per_node=cores(), cores_per_worker=1, encrypted=False,
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
                worker_logdir_root=str(self._dir),
            )],
            run_dir=str(self._dir / "runinfo"),
            usage_tracking=0,
            initialize_logging=False,
        )
        self._dfk = parsl.load(config)
        self._app = parsl.python_app(function_of(workload), executors=["htex"])
        warm = parsl.python_app(funcs.import_modules, executors=["htex"])
        for future in [warm(workload.imports) for _ in range(4 * cores())]:
            future.result()
        for future in [self._app(*a) for a in workload.arguments(10 * cores())]:
            future.result()
