"""No blocking wait on the library's or the agent's loop: one instance (or one child)
that misbehaves does not stall the others on its node."""

from __future__ import annotations

import os
import sys
import time

import pytest

import serverless

from conftest import FAST


def echo(x):
    return x


def close_agent_socket_and_hang(marker):
    """Direct mode: the library's socket to its agent closes, the process lives on."""
    os.close(int(sys.argv[1]))  # library_runtime FD AGENT_PID JOURNAL_FD
    open(marker, "w").close()
    time.sleep(60)


def test_an_instance_slow_to_exit_does_not_stall_the_agent(tmp_path):
    with serverless.Manager(local_cores=2, log_dir=tmp_path / "logs", **FAST) as m:
        m.install(serverless.Library("stuck", [close_agent_socket_and_hang], mode="direct"))
        m.install(serverless.Library("fast", [echo], mode="direct"))
        assert m.call("fast", "echo", 0).result(timeout=60) == 0  # both deployed and warm
        marker = tmp_path / "closed"
        stuck = m.call("stuck", "close_agent_socket_and_hang", str(marker))
        deadline = time.monotonic() + 60
        while not marker.exists():  # the agent sees EOF now; the process does not exit
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        for i in range(20):
            assert m.call("fast", "echo", i).result(timeout=60) == i
        assert time.monotonic() - started < 1.0  # it used to wait 2 s for the other's exit
        # the agent killed it after its grace, without waiting: the call's own crash
        with pytest.raises(serverless.CallCrashed, match="SIGKILL"):
            stuck.result(timeout=60)


def close_fds_and_linger(marker, seconds):
    """Fork mode: the child closes its result pipe (every fd) and runs on."""
    os.closerange(3, 4096)
    open(marker, "w").close()
    time.sleep(seconds)
    return "never delivered"


def test_a_child_that_closes_its_pipe_early_does_not_stall_its_library(manager, tmp_path):
    manager.install(serverless.Library("pipes", [close_fds_and_linger, echo], slots=2))
    assert manager.call("pipes", "echo", 0).result(timeout=60) == 0
    marker = tmp_path / "closed"
    lingering = manager.call("pipes", "close_fds_and_linger", str(marker), 5.0)
    deadline = time.monotonic() + 60
    while not marker.exists():  # its library sees EOF now; the child runs on
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    for i in range(10):  # the other slot, the same library loop
        assert manager.call("pipes", "echo", i).result(timeout=60) == i
    assert time.monotonic() - started < 2.5  # it used to wait for the lingering child's exit
    with pytest.raises(serverless.CallCrashed, match="closed its result pipe"):
        lingering.result(timeout=60)
