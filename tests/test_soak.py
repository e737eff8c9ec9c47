"""Soak: many calls while workers, library processes and call children are killed or
frozen at random. Every future must resolve, with the right value or a typed error, and
nothing may leak: processes, zombies, file descriptors, the manager's memory.

Two sizes:

* ``test_soak_short`` runs in the normal suite: 5,500 calls, 10 faults, well under a minute.
* ``test_soak_full`` runs only when asked: ``pytest -m slow tests/test_soak.py -s`` or
  ``SERVERLESS_SOAK_CALLS=100000 pytest tests/test_soak.py -k full -s``;
  ``SERVERLESS_SOAK_SEED`` picks the random faults (the seed is printed, to replay a run).

The driver is single-threaded: it submits a wave of calls, injects one fault while they are
in flight, then waits (bounded) for the wave and checks every result.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import wait
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

import serverless
from faultkit import WOKEN_EXITS, assert_gone, libraries_of, start_node, tree, wait_until

FULL_CALLS = int(os.environ.get("SERVERLESS_SOAK_CALLS", "100000"))
SOAK_HEARTBEAT = dict(heartbeat_interval=0.2, heartbeat_timeout=2.0, start_backoff=0.05)


def square(x):
    if x % 101 == 0:
        raise ValueError(f"{x} is a multiple of 101")
    return x * x


FAULTS = ("kill_worker", "kill_library", "kill_call", "freeze_worker")


@dataclass
class Soak:
    """The workers of one soak run and what was done to them."""

    manager: serverless.Manager
    workdir: Path
    rng: random.Random
    workers: list[subprocess.Popen] = field(default_factory=list)
    frozen: subprocess.Popen | None = None
    faults: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    seen: list[psutil.Process] = field(default_factory=list)  # every process we saw
    started: int = 0

    def start_worker(self) -> None:
        self.started += 1
        self.workers.append(start_node(self.manager.address, f"w{self.started}",
                                       self.workdir / f"w{self.started}", cores=2,
                                       secret_file=self.manager.secret_file))

    def remember(self) -> None:
        for worker in self.workers:
            self.seen += tree(worker.pid)

    def inject(self, fault: str) -> None:
        """Do ``fault`` to a random worker, library or call child (if there is one)."""
        self.remember()
        registered = {w.pid for w in self.manager.workers()}
        # a worker frozen before it registers would simply register when thawed
        candidates = [w for w in self.workers if w.pid in registered]
        if not candidates:
            self.faults[f"{fault} (no registered worker)"] += 1
            return
        worker = self.rng.choice(candidates)
        if fault == "kill_worker":
            worker.kill()
            worker.wait()
            self.workers.remove(worker)
            self.start_worker()
        elif fault == "freeze_worker":  # thawed once written off (see thaw)
            worker.send_signal(signal.SIGSTOP)
            self.workers.remove(worker)
            self.frozen = worker
            self.start_worker()
        else:
            libraries = libraries_of(worker.pid)
            targets = libraries if fault == "kill_library" else [
                child for lib in libraries for child in _children(lib)]
            if not targets:
                self.faults[f"{fault} (nothing to hit)"] += 1
                return
            try:
                self.rng.choice(targets).send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                self.faults[f"{fault} (already gone)"] += 1
                return
        self.faults[fault] += 1

    def thaw(self) -> None:
        """Wake the frozen worker once the manager wrote it off; it must exit by itself."""
        frozen, self.frozen = self.frozen, None
        if frozen is None:
            return
        pids = lambda: {w.pid for w in self.manager.workers()}  # noqa: E731
        wait_until(lambda: frozen.pid not in pids(), timeout=30, what="the frozen worker written off")
        frozen.send_signal(signal.SIGCONT)
        assert frozen.wait(timeout=30) in WOKEN_EXITS, "a written-off worker must exit when it wakes"

    def check(self, futures: list, first: int) -> None:
        done, not_done = wait(futures, timeout=180)
        assert not not_done, f"{len(not_done)} futures never resolved"
        for x, future in enumerate(futures, first):
            error = future.exception()
            if error is None:
                assert future.result() == x * x
                self.outcomes["value"] += 1
            elif isinstance(error, ValueError):
                assert x % 101 == 0 and str(x) in str(error)
                self.outcomes["its own ValueError"] += 1
            elif isinstance(error, (serverless.CallCrashed, serverless.WorkerLost)):
                self.outcomes[type(error).__name__] += 1
            else:
                raise AssertionError(f"call {x}: unexpected {error!r}")


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children()
    except psutil.NoSuchProcess:
        return []


def run_soak(total: int, waves: int, tmp_path: Path, seed: int) -> dict:
    rng = random.Random(seed)
    me = psutil.Process()
    with serverless.Manager(local_workers=0, log_dir=tmp_path / "logs", max_retries=5,
                            **SOAK_HEARTBEAT) as m:
        m.install(serverless.Library("fork", [square], slots=1))
        m.install(serverless.Library("direct", [square], mode="direct"))
        soak = Soak(m, tmp_path, rng)
        for _ in range(2):
            soak.start_worker()
        wait_until(lambda: len(m.workers()) == 2, what="two workers")
        per_wave = total // waves
        started_at = time.monotonic()
        baseline: tuple[int, int] | None = None
        for wave in range(waves):
            first = wave * per_wave
            library = "fork" if wave % 2 == 0 else "direct"
            futures = [m.call(library, "square", x) for x in range(first, first + per_wave)]
            if wave >= 1:  # the first wave warms up (instances, caches) undisturbed
                wait_until(lambda: any(f.done() for f in futures), what="the wave running")
                # direct mode forks no call children to kill
                soak.inject(rng.choice(FAULTS if library == "fork" else FAULTS[:2] + FAULTS[3:]))
            soak.check(futures, first)
            soak.thaw()
            del futures
            if wave == 1:
                baseline = (me.memory_info().rss, me.num_fds())
        elapsed = time.monotonic() - started_at
        soak.remember()
        assert len(m.workers()) == 2
        for worker in soak.workers:  # nothing piles up in the survivors
            assert len(libraries_of(worker.pid)) <= 2
            assert psutil.Process(worker.pid).num_fds() < 64
        # a process orphaned by a kill is reaped by init, which may take a moment: only a
        # zombie that stays is a leak (its parent, ours or init, does not reap it)
        try:
            wait_until(lambda: not [p for p in soak.seen if _is_zombie(p)], timeout=15,
                       what="zombies to be reaped")
        except AssertionError:
            zombies = [(p.pid, _parent_pid(p)) for p in soak.seen if _is_zombie(p)]
            raise AssertionError(f"zombies (pid, parent pid) left: {zombies}") from None
        assert baseline is not None
        rss_growth_mb = (me.memory_info().rss - baseline[0]) / 2**20
        fd_growth = me.num_fds() - baseline[1]
        workers = list(soak.workers)
    for worker in workers:
        assert worker.wait(timeout=30) == 0
    assert_gone(soak.seen)
    figures = {
        "calls": waves * per_wave, "seconds": round(elapsed, 1),
        "calls_per_second": round(waves * per_wave / elapsed), "seed": seed,
        "faults": dict(soak.faults), "outcomes": dict(soak.outcomes),
        "workers_started": soak.started, "processes_seen": len({p.pid for p in soak.seen}),
        "manager_rss_growth_mb": round(rss_growth_mb, 1), "manager_fd_growth": fd_growth,
    }
    print("\nsoak:", json.dumps(figures))
    assert sum(soak.outcomes.values()) == waves * per_wave
    assert rss_growth_mb < 64, figures
    assert fd_growth <= 4, figures
    return figures


def _parent_pid(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except psutil.NoSuchProcess:
        return None


def _is_zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(240)
def test_soak_short(tmp_path):
    seed = int(os.environ.get("SERVERLESS_SOAK_SEED", "5"))
    figures = run_soak(5500, 11, tmp_path, seed)
    assert sum(figures["faults"].values()) == 10  # one per wave but the first


def _full_soak_requested(config: pytest.Config) -> bool:
    return "slow" in (config.getoption("markexpr") or "") or "SERVERLESS_SOAK_CALLS" in os.environ


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_soak_full(tmp_path, request):
    if not _full_soak_requested(request.config):
        pytest.skip("the full soak runs with -m slow or SERVERLESS_SOAK_CALLS=N")
    seed = int(os.environ.get("SERVERLESS_SOAK_SEED", str(random.randrange(1 << 30))))
    run_soak(FULL_CALLS, max(11, FULL_CALLS // 1000), tmp_path, seed)  # 1,000 calls a wave
