"""One run of the data benchmark: N worker agents, 2,000 calls that import from the
environment and read the dataset, served either the serverless way or from a shared FS.

    serverless  Library(environment=Environment(archive)), each call gets
                File(dataset.zip, unpack=True): the manager sends each byte to a first
                worker, the others fetch from peers; each worker unpacks once
    shared-fs   Library(environment=Environment(shared/env)) (a directory: every library
                process imports from it) and every call reads shared/data/data.npy

Each worker is a separate ``serverless-worker`` process with its own cache, ``--env-dir``
and "forever" directory, as separate nodes would have. What is measured: the time from
``install`` to the first result of each worker, the total time, the bytes the manager's
process sent and each worker received from peers (``ss``, the kernel's counts), and the
unpacks done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

import serverless

from . import sockets

__all__ = ["RunResult", "run", "work"]

WINDOW = 1 << 20  # bytes each call reads from the dataset


def work(data_dir: Any, index: int, modules: tuple[str, ...]) -> tuple[int, int]:
    """One call: use the environment's modules, read a window of the dataset; returns the
    worker agent's pid (the library process's parent) and the bytes read."""
    import importlib
    import os
    for name in modules:
        importlib.import_module(name)  # already imported by the library: a dict lookup
    path = os.path.join(str(data_dir), "data.npy")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), WINDOW, (index * 65536) % max(1, size - WINDOW))
    with open(f"/proc/{os.getppid()}/stat") as f:  # fork mode: the library is our parent
        agent = int(f.read().rsplit(")", 1)[1].split()[1])
    return agent, len(data)


def footprint() -> tuple[int, int]:
    """Bytes and number of the environment's files this library process loaded (modules
    and shared objects): what each library start reads from a shared FS in the baseline."""
    import os
    import sys
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith("/"):
                files.add(parts[5])
    mine = [f for f in files if f and f.startswith(sys.prefix + "/") and os.path.isfile(f)]
    return sum(os.path.getsize(f) for f in mine), len(mine)


@dataclass
class RunResult:
    system: str
    workers: int
    calls: int
    total_s: float
    first_result_s: list[float]  # per worker, from install()
    manager_sent: int  # bytes (kernel count) the manager's process sent
    peer_received: list[int]  # per worker: bytes received on connections to other workers
    worker_received: list[int]  # per worker: bytes received in all
    env_unpacks: int
    unpacked_files: int
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _start_workers(address: str, count: int, root: Path, cores: float,
                   shared_env_dir: Path | None, secret_file: Path) -> list[subprocess.Popen]:
    workers = []
    for i in range(count):
        home = root / f"worker-{i}"
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        command = [sys.executable, "-m", "serverless.worker", address, "--cores", str(cores),
                   "--name", f"w{i}", "--workdir", str(home / "work"),
                   "--env-dir", str(shared_env_dir or home / "envs"),
                   "--secret-file", str(secret_file)]
        if _worker_has_option("--cache-dir"):  # a node of its own: its caches too
            command += ["--cache-dir", str(home / "cache"), "--forever-dir", str(home / "forever")]
        with open(home / "worker.log", "ab") as log:
            workers.append(subprocess.Popen(command, stdout=log, stderr=log, env=env,
                                            stdin=subprocess.DEVNULL))
    return workers


_HELP: list[str] = []


def _worker_has_option(option: str) -> bool:
    if not _HELP:
        _HELP.append(subprocess.run([sys.executable, "-m", "serverless.worker", "--help"],
                                    capture_output=True, text=True).stdout)
    return option in _HELP[0]


def _wait_connected(manager: Any, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(manager.workers()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(manager.workers())} of {count} workers connected")
        time.sleep(0.05)  # waiting for outside processes to connect


def _unpacks(env_dirs: list[Path]) -> tuple[int, int]:
    count = files = 0
    for env_dir in env_dirs:
        log = env_dir / "unpack.log"
        if log.exists():
            for line in log.read_text().splitlines():
                count += 1
                files += json.loads(line)["files"]
    return count, files


def run(system: str, workers: int, calls: int, root: Path, environment: Path,
        dataset: Any, modules: tuple[str, ...], cores: float = 2.0,
        shared_env_dir: Path | None = None) -> RunResult:
    """``calls`` calls over ``workers`` fresh workers; ``dataset`` is what calls get (a
    File or a shared directory's path)."""
    root.mkdir(parents=True, exist_ok=True)
    lib = serverless.Library("data-bench", [work, footprint], environment=serverless.Environment(environment),
                             imports=list(modules), slots=int(cores), cores=cores)
    env_dirs = [shared_env_dir] if shared_env_dir else [root / f"worker-{i}" / "envs"
                                                         for i in range(workers)]
    unpacks_before, files_before = _unpacks(env_dirs)  # a kept directory: count only this run's
    done_at: dict[int, float] = {}
    lock = threading.Lock()
    with serverless.Manager(local_workers=0, log_dir=root / "manager", heartbeat_timeout=120.0,
                            max_start_failures=1) as m:
        procs = _start_workers(m.address, workers, root, cores, shared_env_dir, m.secret_file)
        try:
            _wait_connected(m, workers)
            me = os.getpid()
            sampler = sockets.Sampler({p.pid for p in procs} | {me}) if sockets.available() else None
            started = time.perf_counter()
            m.install(lib)

            def note(future: Any) -> None:
                try:
                    agent, _ = future.result()
                except BaseException:
                    return
                now = time.perf_counter() - started
                with lock:
                    done_at.setdefault(agent, now)

            futures = []
            for i in range(calls):
                future = m.call("data-bench", "work", dataset, i, modules)
                future.add_done_callback(note)
                futures.append(future)
            for future in futures:
                future.result(timeout=1800)
            total = time.perf_counter() - started
            loaded_bytes, loaded_files = m.call("data-bench", "footprint").result(timeout=60)
            data = getattr(m._loop, "data", None)  # the manager's chunk server's own count
            content_sent = data.bytes_sent if data is not None else 0
            listening = {c.laddr.port for c in psutil.Process(me).net_connections("tcp")
                         if c.status == psutil.CONN_LISTEN}
            snap = sampler.stop() if sampler is not None else []
        finally:
            m.shutdown()
            for p in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    manager_sent = sum(s.sent for s in snap if s.pid == me)
    peer_received, worker_received, firsts = [], [], []
    for p in procs:
        mine = [s for s in snap if s.pid == p.pid]
        worker_received.append(sum(s.received for s in mine))
        peer_received.append(sum(s.received for s in mine if s.peer_port not in listening))
        firsts.append(round(done_at.get(p.pid, float("nan")), 3))
    unpacks, files = _unpacks(env_dirs)
    return RunResult(system, workers, calls, round(total, 3), firsts, manager_sent,
                     peer_received, worker_received, unpacks - unpacks_before,
                     files - files_before,
                     {"manager_content_sent": content_sent,
                      "library_start_reads_bytes": loaded_bytes,
                      "library_start_reads_files": loaded_files})


def clean(root: Path) -> None:
    """Remove a run's directory, read-only cache entries included (plain rmtree cannot)."""
    from serverless.worker.data.cache import remove_tree

    try:
        remove_tree(root)
    except OSError:
        shutil.rmtree(root, ignore_errors=True)
