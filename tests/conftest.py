"""Shared fixtures: real managers with local workers on loopback, and leak checks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

import serverless
from serverless.manager.scheduler import EVENTS, Scheduler

# every manager the tests start checks its scheduler's invariants after every event
os.environ["SERVERLESS_VALIDATE"] = "1"


class ValidatingScheduler(Scheduler):
    """The scheduler, checking its invariants after every event (for the unit tests)."""


def _validated(name: str):
    event = getattr(Scheduler, name)

    def checked(self, *args, **kwargs):
        actions = event(self, *args, **kwargs)
        self.validate()
        return actions
    checked.__name__ = name
    return checked


for _name in EVENTS:
    setattr(ValidatingScheduler, _name, _validated(_name))

FAST = dict(heartbeat_interval=0.2, heartbeat_timeout=3.0, start_backoff=0.05)


def descendants() -> list[psutil.Process]:
    """Live processes started (directly or not) by this test process."""
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def tree_of(manager: serverless.Manager) -> list[psutil.Process]:
    """The manager's local workers and every process under them, now."""
    procs = []
    for pid in manager.local_worker_pids():
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return procs


def assert_all_exited(procs: list[psutil.Process], timeout: float = 10.0) -> None:
    """Each of ``procs`` has exited (waits for them to finish exiting)."""
    gone, alive = psutil.wait_procs(procs, timeout=timeout)
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"


def assert_no_descendants(timeout: float = 10.0) -> None:
    """Every process this test process started has exited."""
    assert_all_exited(descendants(), timeout)


@pytest.fixture
def manager(tmp_path) -> Iterator[serverless.Manager]:
    """A fresh manager with one local worker (2 cores), stopped after the test."""
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", **FAST) as m:
        yield m
        procs = tree_of(m)
    assert_all_exited(procs)


@pytest.fixture(scope="module")
def shared_manager(tmp_path_factory) -> Iterator[serverless.Manager]:
    """One manager for a whole module, for tests that only make calls."""
    m = serverless.Manager(local_cores=2, log_dir=tmp_path_factory.mktemp("logs"), **FAST)
    yield m
    m.shutdown()


def start_worker(address: str, *args: str, secret_file=None) -> subprocess.Popen:
    """A worker started with the command-line interface, as users do on other nodes
    (``secret_file``: the manager's, as ``--secret-file``)."""
    if secret_file is not None:
        args = (*args, "--secret-file", str(secret_file))
    return subprocess.Popen(
        [sys.executable, "-m", "serverless.worker", address, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ},
    )
