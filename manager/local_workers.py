"""The embedded default: worker processes the manager starts on its own machine.

``Manager()`` with no arguments starts one worker offering all of this machine's cores,
so the same program runs on a laptop and, with ``local_workers=0``, against remote
workers. Local workers are ordinary ``serverless-worker`` processes. They are started from
the manager's loop thread and die with it (PR_SET_PDEATHSIG), so they never outlive the
manager; a normal shutdown stops them with a Shutdown message, then SIGTERM, then SIGKILL.
Its workers learn only where the manager's secret file is (through SERVERLESS_SECRET_FILE
in their environment), never the secret on their command line; a manager started with
``insecure=True`` starts them with ``--insecure``. Their work directories are private (0700)
and their logs are opened with O_NOFOLLOW, mode 0600 (:mod:`serverless.safe_files`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import psutil

from serverless.safe_files import open_log, private_dir
from serverless.security import SECRET_FILE_ENV
from serverless.worker_keys import KEY_FILE_ENV

__all__ = ["LocalWorkers"]

log = logging.getLogger("serverless.manager")


class LocalWorkers:
    """Starts and stops the manager's local worker processes."""

    def __init__(self, count: int, cores: float | None, memory_mb: int | None, log_dir: Path,
                 connect_timeout: float, secret_file: Path | None = None) -> None:
        self.count = count
        total_cores = cores if cores is not None else float(os.cpu_count() or 1)
        total_memory = memory_mb if memory_mb is not None else psutil.virtual_memory().total // 2**20
        self.cores = total_cores / count if count else 0.0
        self.memory_mb = int(total_memory // count) if count else 0
        self.log_dir = log_dir
        self.connect_timeout = connect_timeout
        self.secret_file = secret_file
        self.processes: list[subprocess.Popen] = []

    def start(self, address: str) -> None:
        for index in range(self.count):
            workdir = private_dir(self.log_dir / f"worker-{index}", "a local worker's workdir")
            command = [
                sys.executable, "-m", "serverless.worker", address,
                "--cores", repr(self.cores),
                "--memory", str(self.memory_mb),
                "--name", f"local-{index}",
                "--workdir", str(workdir),
                "--connect-timeout", repr(self.connect_timeout),
                "--die-with-parent", str(os.getpid()),
            ]
            # the manager's secret only: not a secret or worker key file meant for others
            env = {k: v for k, v in os.environ.items() if k not in (SECRET_FILE_ENV, KEY_FILE_ENV)}
            if self.secret_file is not None:
                env[SECRET_FILE_ENV] = str(self.secret_file)
            else:
                command.append("--insecure")
            with open(open_log(workdir / "worker.log"), "ab", buffering=0) as out:
                self.processes.append(subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                    start_new_session=True,  # Ctrl-C reaches the manager, which stops us
                ))

    def stop(self, grace: float, told_to_stop: set[int] | frozenset[int] = frozenset()) -> None:
        """Stop the workers: those in ``told_to_stop`` (sent Shutdown) get ``grace`` seconds
        to exit; the others (never registered) get SIGTERM at once, which stops them
        cleanly too; any still running after that is killed."""
        for process in self.processes:
            if process.pid in told_to_stop:
                try:
                    process.wait(grace)
                    continue
                except subprocess.TimeoutExpired:
                    log.warning("local worker %d did not stop; terminating it", process.pid)
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("local worker %d ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait()

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]
