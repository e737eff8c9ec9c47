"""Fork mode's spare child: forked while the instance is idle, it takes the next call.

Real manager, worker and library processes; the spare is found as the one child of the
library process when no call runs.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest

import serverless
from faultkit import libraries_of, wait_until

pytestmark = pytest.mark.timeout(120)


def whoami(payload: bytes = b"") -> tuple[int, int]:
    return os.getpid(), len(payload)


def _library(manager: serverless.Manager) -> psutil.Process:
    found = [lib for pid in manager.local_worker_pids() for lib in libraries_of(pid)]
    assert len(found) == 1, found
    return found[0]


def _spare_of(library: psutil.Process, *ran: int) -> int:
    """The pid of the library's spare: once its only live child is none of ``ran`` (the
    processes that ran calls, which may still be exiting)."""
    def only_child() -> int:
        live = []
        for child in library.children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    live.append(child.pid)
            except psutil.NoSuchProcess:  # reaped meanwhile
                pass
        return live[0] if len(live) == 1 and live[0] not in ran else 0
    return wait_until(only_child, timeout=20, what="one spare child of the idle library")


@pytest.fixture
def spare_manager(manager):
    manager.install(serverless.Library("spare", [whoami], mode="fork", slots=1, max_instances=1))
    return manager


def test_the_next_call_runs_in_the_spare_forked_before_it(spare_manager):
    first_pid, _ = spare_manager.call("spare", "whoami").result()
    library = _library(spare_manager)
    spare = _spare_of(library, first_pid)  # the first call's child exits; a new one waits
    pid, _ = spare_manager.call("spare", "whoami").result()
    assert pid == spare
    # each call still gets a process of its own: the next one runs in a new spare
    assert spare_manager.call("spare", "whoami").result()[0] not in (first_pid, spare)


def test_a_spare_killed_while_it_waits_costs_no_call(spare_manager):
    first_pid, _ = spare_manager.call("spare", "whoami").result()
    library = _library(spare_manager)
    spare = _spare_of(library, first_pid)
    os.kill(spare, signal.SIGKILL)
    killed = psutil.Process(spare)
    wait_until(lambda: killed.status() == psutil.STATUS_ZOMBIE, timeout=10,
               what="the killed spare to die (the library reaps it when it next needs it)")
    pid, _ = spare_manager.call("spare", "whoami").result(timeout=30)
    assert pid != spare
    assert _spare_of(library, pid) != spare  # and the library made a new one


def test_large_arguments_fork_and_leave_the_spare_waiting(spare_manager):
    first_pid, _ = spare_manager.call("spare", "whoami").result()
    library = _library(spare_manager)
    spare = _spare_of(library, first_pid)
    pid, size = spare_manager.call("spare", "whoami", b"x" * 200_000).result()
    assert size == 200_000 and pid != spare
    assert _spare_of(library, pid) == spare
    assert spare_manager.call("spare", "whoami", b"small").result() == (spare, 5)
