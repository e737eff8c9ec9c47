"""serverless itself: the full manager -> worker agent -> library path over TCP loopback.

Each workload gets its own ``serverless.Manager()`` (one local worker with every core) and
a library ``Library(workload.library, [function], imports=workload.imports, mode=...,
slots=1)``, so the manager deploys one instance per core once calls queue. Warm-up calls
bring the instances up before anything is timed.

``api="call"`` submits with ``Manager.call`` (one future per call, the general API);
``api="map"`` with ``Manager.map`` (one batch, like ``Pool.starmap``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.workloads import Workload

from .base import System, Timed, cores, function_of, timed

__all__ = ["ServerlessSystem"]


class ServerlessSystem(System):
    peer = False

    def __init__(self, mode: str, api: str = "call") -> None:
        self.mode = mode
        self.api = api
        self.name = f"serverless-{mode}"
        self.description = f"serverless {mode} mode, Manager.{api}, 1 worker, slots=1 per instance"
        self._manager: Any = None
        self._log_dir: Path | None = None
        self._workload: Workload | None = None

    def unavailable(self) -> str | None:
        try:
            import serverless  # noqa: F401
        except ImportError as exc:
            return f"serverless cannot be imported: {exc}"
        return None

    def open(self, workload: Workload) -> None:
        import serverless

        self._workload = workload
        self._log_dir = Path(tempfile.mkdtemp(prefix="bench-serverless-"))
        self._manager = serverless.Manager(log_dir=self._log_dir)
        function = function_of(workload)
        self._manager.install(serverless.Library(
            workload.library, {workload.function: function}, imports=workload.imports,
            mode=self.mode, slots=1,
        ))
        warm = workload.arguments(1 if workload.kind == "latency" else 50 * cores())
        warm_results = list(self._manager.map(workload.library, workload.function, *zip(*warm)))
        if warm_results != workload.expected(warm):
            raise AssertionError("wrong results during warm-up")

    def _target(self) -> tuple[str, str]:
        assert self._workload is not None, "open() first"
        return self._workload.library, self._workload.function

    def run_all(self, arguments: list[tuple]) -> Timed:
        manager = self._manager
        library, function = self._target()
        if self.api == "map":
            return timed(lambda: list(manager.map(library, function, *zip(*arguments))))

        def run() -> list[Any]:
            call = manager.call
            futures = [call(library, function, *args) for args in arguments]
            return [f.result() for f in futures]

        return timed(run)

    def call_one(self, args: tuple) -> Any:
        return self._manager.call(*self._target(), *args).result()

    def facts(self) -> dict[str, Any]:
        return {"api": self.api, "library_processes": self._library_processes()}

    def _library_processes(self) -> int:
        """Library instance processes running now (children of the local worker)."""
        import psutil

        count = 0
        for pid in self._manager.local_worker_pids():
            try:
                for child in psutil.Process(pid).children():
                    if child.cmdline()[:1] and child.cmdline()[0].startswith("serverless library"):
                        count += 1
            except psutil.NoSuchProcess:
                pass
        return count

    def close(self) -> None:
        if self._manager is not None:
            self._manager.shutdown()
            self._manager = None
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None
