"""Parsl with serverless.parsl.ServerlessExecutor: the same calls as ``parsl-htex``, through
the same DataFlowKernel, with workers started by the same LocalProvider (one block).

    parsl-serverless  function_exec_mode="serverless": the app is installed once as a
                      library function (fork mode, a child per call), each call sends its
                      arguments only
    parsl-serverless-direct  the same with library_mode="direct": calls run in the warm
                      library process, no child per call (no isolation between calls, as HTEX)
    parsl-regular     function_exec_mode="regular": a fresh interpreter per app call; only
                      a sample runs (``--regular-sample``), extrapolated like ``regular``

Each call is one ``python_app`` invocation returning an AppFuture, as in ``parsl-htex``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.workloads import Workload

from .base import cores, function_of
from .parsl_peer import ParslSystem

__all__ = ["ParslServerless"]


class ParslServerless(ParslSystem):
    peer = False

    def __init__(self, mode: str, library_mode: str = "fork") -> None:
        self.mode = mode
        self.library_mode = library_mode
        self.name = f"parsl-{mode}" + ("-direct" if library_mode == "direct" else "")
        self.description = (f"Parsl + ServerlessExecutor, function_exec_mode={mode!r}, "
                            f"library_mode={library_mode!r}, LocalProvider 1 block")
        #: the regular mode runs a sample (the runner extrapolates, as for ``regular``)
        self.sampled = mode == "regular"
        self.slow = mode == "regular"
        self.latency_cap = 20 if mode == "regular" else None
        super().__init__()

    def open(self, workload: Workload) -> None:
        import parsl
        from parsl.config import Config
        from parsl.providers import LocalProvider

        from serverless.parsl import ServerlessExecutor

        self._dir = Path(tempfile.mkdtemp(prefix=f"bench-parsl-{self.mode}-"))
        config = Config(
            executors=[ServerlessExecutor(
                label="serverless", function_exec_mode=self.mode, cores_per_node=cores(),
                imports=workload.imports, library_mode=self.library_mode,
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            )],
            run_dir=str(self._dir / "runinfo"),
            strategy_period=0.5,
            usage_tracking=0,
            initialize_logging=False,
        )
        self._dfk = parsl.load(config)
        self._app = parsl.python_app(function_of(workload), executors=["serverless"])
        warm = 2 * cores() if self.mode == "regular" else 50 * cores()
        for future in [self._app(*a) for a in workload.arguments(warm)]:
            future.result()

    def facts(self) -> dict[str, Any]:
        executor = self._dfk.executors["serverless"] if self._dfk is not None else None
        return {"libraries": executor.libraries() if executor is not None else []}


# --- serverless mode against TaskVine's way of doing it ---------------------------------
#
# TaskVineExecutor's serverless mode pickles the app's function with every call and
# unpickles it in the forked child, and imports none of the user's modules up front. The
# comparison below runs both ways through the same DFK, engine and LocalProvider block: an
# app that imports pandas in its body (as Parsl's docs advise), first as ServerlessExecutor
# does it (installed once, pandas imported by the library before any call), then the
# TaskVine way (function sent and unpickled per call, nothing hoisted). It favours the
# TaskVine way: no per-call files or task bookkeeping, only the function's travel.
#
#     .venv/bin/python -m bench.systems.parsl_serverless [N]


def uses_pandas(x: int) -> int:
    import pandas

    return int(pandas.Series([x, 1]).sum())


def run_pickled(function_blob: bytes, args: tuple, kwargs: dict) -> Any:
    """The TaskVine way, in the forked child: unpickle the function, then call it."""
    import cloudpickle

    return cloudpickle.loads(function_blob)(*args, **kwargs)


def _resend_executor_class() -> type:
    import cloudpickle

    import serverless
    from serverless.parsl import ServerlessExecutor

    class ResendEachCall(ServerlessExecutor):
        """ServerlessExecutor changed to send and unpickle the function on every call."""

        def submit(self, func: Any, resource_specification: dict, *args: Any,
                   **kwargs: Any) -> Any:
            if "resend" not in self.manager.libraries():
                self.manager.install(serverless.Library(
                    "resend", {"run": run_pickled}, mode="fork", discover=False))
            cloudpickle.register_pickle_by_value(__import__(__name__, fromlist=["x"]))
            try:
                blob = cloudpickle.dumps(func)
            finally:
                cloudpickle.unregister_pickle_by_value(__import__(__name__, fromlist=["x"]))
            future = self.manager.submit("resend", "run", (blob, args, kwargs))
            with self._count_lock:
                self._outstanding += 1
            future.add_done_callback(lambda _: self._count_done())
            return future

        def _count_done(self) -> None:
            with self._count_lock:
                self._outstanding -= 1

    return ResendEachCall


def compare_with_resending(n: int) -> dict[str, float]:
    """Calls/s of ``uses_pandas`` through Parsl: installed once vs resent each call."""
    import time

    import parsl
    from parsl.config import Config
    from parsl.providers import LocalProvider

    from serverless.parsl import ServerlessExecutor

    rates = {}
    for label, kind in [("installed once, imports hoisted (ServerlessExecutor)",
                         ServerlessExecutor),
                        ("resent and unpickled per call, nothing hoisted (TaskVine's way)",
                         _resend_executor_class())]:
        run_dir = Path(tempfile.mkdtemp(prefix="bench-parsl-resend-"))
        dfk = parsl.load(Config(
            executors=[kind(label="serverless", cores_per_node=cores(),
                            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))],
            run_dir=str(run_dir), strategy_period=0.5, usage_tracking=0,
            initialize_logging=False))
        try:
            app = parsl.python_app(uses_pandas, executors=["serverless"])
            for future in [app(i) for i in range(4 * cores())]:
                future.result()
            started = time.perf_counter()
            results = [f.result() for f in [app(i) for i in range(n)]]
            rates[label] = n / (time.perf_counter() - started)
            assert results == [i + 1 for i in range(n)]
        finally:
            dfk.cleanup()
            parsl.clear()
            shutil.rmtree(run_dir, ignore_errors=True)
    return rates


if __name__ == "__main__":
    import sys

    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for what, rate in compare_with_resending(calls).items():
        print(f"{rate:10.1f} calls/s  {what}")
