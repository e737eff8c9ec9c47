"""``ServerlessExecutor``: a Parsl executor whose workers are serverless workers.

::

    Parsl DFK --submit(func, resource_spec, *args)--> ServerlessExecutor
        resources.py: check the spec -> Request(mode, cores, memory)
        apps.py:      serverless: library for (func, request), installed on first use
                      regular:    the regular library for request, + func pickled once
        Manager.submit(library, function, args) -> future (given back to the DFK)
    Manager (loop thread, zmq ROUTER on address:port)
        <--tcp--> serverless-worker (one per block node, launched by the Parsl provider)
                      library instances: fork a child per call / fresh interpreter per call

Blocks: the DFK's strategy scales blocks out and in from :meth:`outstanding` and
:attr:`workers_per_node`; each block runs :meth:`_get_launch_command`, which starts one
worker per node pointing at the manager, with ``--secret-file`` naming the manager's secret.
Security is on by default here as everywhere: with a provider and no secret in
``manager_options``, a secret is generated into the run directory (which the nodes of a
cluster share with the submitting host), in a 0700 directory, removed at shutdown.
Without a provider, the manager starts its local worker itself (the engine's default).

Shutdown (``parsl.dfk().cleanup()``): the DFK cancels the blocks, then calls
:meth:`shutdown`, which stops the manager (its workers exit and take their library
processes with them) and waits for the provider to report every block ended.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

import psutil
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.jobs.states import TERMINAL_STATES
from parsl.providers.base import ExecutionProvider

from serverless.environment import Environment
from serverless.serialization import dumps_args

from .apps import APP_FUNCTION, REGULAR_FUNCTION, AppLibraries, strip_wrap_error
from .resources import EXEC_MODES, parse_resource_specification

__all__ = ["ServerlessExecutor"]

log = logging.getLogger("serverless.parsl")


class ServerlessExecutor(BlockProviderExecutor):
    """Run Parsl apps on serverless workers.

    Args:
        label: the executor's label in the Parsl config.
        function_exec_mode: ``"serverless"`` (each app installed once as a library function,
            its imports loaded up front, each call sends only its arguments) or
            ``"regular"`` (a fresh interpreter per app call). A call can override it with
            ``parsl_resource_specification={"exec_mode": ...}``.
        provider: a Parsl execution provider that starts one worker per block node; None:
            the manager starts one worker on this machine itself.
        address, port: where the manager listens for workers (port 0: a free one). Use an
            address the compute nodes reach (e.g. ``parsl.addresses.address_by_interface``).
        cores_per_node, memory_per_node: what each worker offers (None: all of its node's).
        cores_per_app, memory_per_app: what one app call reserves unless its resource
            specification says otherwise (``memory_per_app`` in MB, 0: no reservation).
        library_mode: how serverless-mode libraries run calls: ``"fork"`` (a forked child
            per call, isolation between calls) or ``"direct"`` (in the library process).
        imports: modules every app library imports up front, besides those found.
        worker_command: the command that starts a worker (default: this interpreter with
            ``-m serverless.worker``; use ``serverless-worker`` if it is on the nodes' PATH).
        worker_logdir_root: where workers write library logs (default: the run directory).
        manager_options: further :class:`serverless.ManagerConfig` options (e.g.
            ``secret_file`` on storage the nodes can read; by default a secret is generated
            under the run directory; ``insecure=True`` turns security off, loopback only).
        library_options: further :class:`serverless.Library` options for every app library
            (e.g. ``timeout``, ``max_instances``, ``env``).
        environment: a :class:`serverless.Environment` (or the path of a conda-pack or
            venv-pack archive, or of an environment directory) that every app runs in, in
            both modes: each worker gets the archive once and unpacks it once per node.
        shutdown_timeout: seconds to wait, at shutdown, for blocks to end.
        block_error_handler: Parsl's block error handling (True: the simple handler).
    """

    def __init__(
        self,
        label: str = "serverless",
        function_exec_mode: Literal["serverless", "regular"] = "serverless",
        provider: ExecutionProvider | None = None,
        address: str = "127.0.0.1",
        port: int = 0,
        cores_per_node: float | None = None,
        memory_per_node: int | None = None,
        cores_per_app: float = 1.0,
        memory_per_app: int = 0,
        library_mode: Literal["fork", "direct"] = "fork",
        imports: Sequence[str] = (),
        worker_command: str | None = None,
        worker_logdir_root: str | None = None,
        manager_options: dict[str, Any] | None = None,
        library_options: dict[str, Any] | None = None,
        environment: Environment | str | os.PathLike | None = None,
        shutdown_timeout: float = 30.0,
        block_error_handler: bool | Callable = True,
    ) -> None:
        super().__init__(provider=provider, block_error_handler=block_error_handler)
        if function_exec_mode not in EXEC_MODES:
            raise ValueError(f"function_exec_mode must be one of {EXEC_MODES}, "
                             f"not {function_exec_mode!r}")
        if library_mode not in ("fork", "direct"):
            raise ValueError(f"library_mode must be 'fork' or 'direct', not {library_mode!r}")
        if not cores_per_app > 0:
            raise ValueError("cores_per_app must be positive")
        if cores_per_node is not None and cores_per_node < cores_per_app:
            raise ValueError("cores_per_node must be at least cores_per_app")
        self.label = label
        self.function_exec_mode = function_exec_mode
        self.address = address
        self.port = port
        self.cores_per_node = cores_per_node
        self.memory_per_node = memory_per_node
        self.cores_per_app = float(cores_per_app)
        self.memory_per_app = int(memory_per_app)
        self.library_mode = library_mode
        self.imports = tuple(imports)
        self.worker_command = worker_command or f"{shlex.quote(sys.executable)} -m serverless.worker"
        self.worker_logdir_root = worker_logdir_root
        self.manager_options = dict(manager_options or {})
        self.library_options = dict(library_options or {})
        if environment is not None:  # hashed once here, not per app
            self.environment: Environment | None = (
                environment if isinstance(environment, Environment) else Environment(environment))
            self.library_options["environment"] = self.environment
        else:
            self.environment = self.library_options.get("environment")
        self.shutdown_timeout = shutdown_timeout
        self.manager: Any = None
        self._secret_file: Path | None = None  # generated by start(), removed by shutdown()
        self._apps: AppLibraries | None = None
        self._count_lock = threading.Lock()
        self._outstanding = 0

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        from serverless.manager.manager import Manager

        options = dict(self.manager_options)
        options.setdefault("log_dir", Path(self.run_dir) / self.label / "local-worker")
        if self.provider is None:
            local: dict[str, Any] = {"local_workers": None, "local_cores": self.cores_per_node,
                                     "local_memory_mb": self.memory_per_node}
        else:
            local = {"local_workers": 0}
            if not {"secret", "secret_file", "insecure"} & options.keys():
                # where the nodes can read it: Parsl's run directory is on the shared file system
                self._secret_file = Path(self.run_dir).resolve() / self.label / "secret" / "serverless.secret"
                options["secret_file"] = self._secret_file
        self.manager = Manager(host=self.address, port=self.port, **local, **options)
        self._apps = AppLibraries(self.manager, self.library_mode, self.imports,
                                  self.library_options)
        log.info("%s: manager listening on %s", self.label, self.manager.address)

    def shutdown(self) -> None:
        """Stop the manager (its workers exit with their library processes), then wait
        for the provider to report every block ended, and for the processes of workers on
        this machine to be gone."""
        if self.manager is not None:
            local = self._local_worker_trees()
            self.manager.shutdown(wait=False, cancel_futures=True)
            self._wait_for_blocks()
            _, alive = psutil.wait_procs(local, timeout=self.shutdown_timeout)
            for proc in alive:
                log.warning("%s: process %d of a worker outlived shutdown; killing it",
                            self.label, proc.pid)
                try:
                    proc.kill()
                except psutil.Error:
                    pass
        if self._secret_file is not None:
            self._secret_file.unlink(missing_ok=True)
        super().shutdown()

    def _local_worker_trees(self) -> list[psutil.Process]:
        """The processes of the workers running on this machine, and everything under them."""
        procs: list[psutil.Process] = []
        here = socket.gethostname()
        for info in self.manager.workers():
            if info.hostname != here:
                continue
            try:
                root = psutil.Process(info.pid)
                if root.cmdline()[:1] and root.cmdline()[0].startswith("serverless worker"):
                    procs += [root, *root.children(recursive=True)]
            except psutil.Error:
                pass
        return procs

    def _wait_for_blocks(self) -> None:
        if self.provider is None:
            return
        block_ids, job_ids = self._get_block_and_job_ids()
        if not job_ids:
            return
        deadline = time.monotonic() + self.shutdown_timeout
        while True:
            states = [s.state for s in self.provider.status(job_ids)]
            if all(state in TERMINAL_STATES for state in states):
                return
            if time.monotonic() > deadline:
                log.warning("%s: blocks still running after %.0f s; cancelling them",
                            self.label, self.shutdown_timeout)
                self.provider.cancel([j for j, s in zip(job_ids, states)
                                      if s not in TERMINAL_STATES])
                return
            time.sleep(0.1)  # polling an external system (the provider) for its state

    # --- calls --------------------------------------------------------------------------

    def submit(self, func: Callable, resource_specification: dict[str, Any],
               *args: Any, **kwargs: Any) -> Future:
        if self.bad_state_is_set:
            raise self.executor_exception
        if self.manager is None or self._apps is None:
            raise RuntimeError(f"executor {self.label!r} is not started")
        request = parse_resource_specification(resource_specification, self.function_exec_mode,
                                               self.cores_per_app, self.memory_per_app)
        func = strip_wrap_error(func)  # a plain python app runs without Parsl (see apps.py)
        if request.mode == "serverless":
            library = self._apps.serverless_library(func, request)
            future = self.manager.submit(library, APP_FUNCTION, args, kwargs)
        else:
            library = self._apps.regular_library(request)
            call_args = (self._apps.function_blob(func), dumps_args(args, kwargs))
            future = self.manager.submit(library, REGULAR_FUNCTION, call_args)
        future.parsl_executor_task_id = future.call_id
        with self._count_lock:
            self._outstanding += 1
            self._tasks[future.call_id] = future
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: Any) -> None:
        with self._count_lock:
            self._outstanding -= 1
            self._tasks.pop(future.call_id, None)

    # --- scaling ------------------------------------------------------------------------

    def outstanding(self) -> int:
        """Calls submitted and not finished (queued or running)."""
        return self._outstanding

    @property
    def workers_per_node(self) -> int | float:
        """App calls one node runs at once (its cores over the cores of one call)."""
        cores = self.cores_per_node or float(os.cpu_count() or 1)
        return max(1, math.floor(cores / self.cores_per_app))

    @property
    def connected_workers(self) -> int:
        return len(self.manager.workers()) if self.manager is not None else 0

    def libraries(self) -> list[str]:
        """The libraries this executor installed so far."""
        return self._apps.libraries() if self._apps is not None else []

    def _get_launch_command(self, block_id: str) -> str:
        """One worker per node: ``<worker_command> HOST:PORT --cores N ...``."""
        if self.manager is None:
            raise RuntimeError("start() the executor before launching blocks")
        root = Path(self.worker_logdir_root or self.run_dir) / self.label
        parts = [self.worker_command, shlex.quote(self.manager.address)]
        if self.cores_per_node is not None:
            parts += ["--cores", repr(float(self.cores_per_node))]
        if self.memory_per_node is not None:
            parts += ["--memory", str(int(self.memory_per_node))]
        parts += ["--name", f'"block-{block_id}-$(hostname)-$$"',
                  "--workdir", f'{shlex.quote(str(root))}/"block-{block_id}-$(hostname)-$$"']
        secret_file = getattr(self.manager, "secret_file", None)
        if secret_file is not None:
            parts += ["--secret-file", shlex.quote(str(secret_file))]
        else:  # the manager was started with insecure=True
            parts += ["--insecure"]
        return " ".join(parts)
