"""worker/limits.py on its own: what counts as a call's memory, and no descriptor leaks."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from serverless.worker.limits import MemoryLimit, memory_limit

pytestmark = pytest.mark.timeout(30)


class Child:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def fork_holding(mb: int) -> tuple[Child, int]:
    """A child that touches ``mb`` MB, says so on a pipe, then waits to be killed."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            held = b"x" * (mb << 20)  # noqa: F841
            os.write(write_fd, b"1")
            signal.pause()
        finally:
            os._exit(0)
    os.close(write_fd)
    assert os.read(read_fd, 1) == b"1"
    os.close(read_fd)
    return Child(pid), pid


def test_only_what_a_call_adds_counts_and_files_are_closed_after():
    fds_before = psutil.Process().num_fds()
    small, small_pid = fork_holding(0)
    big, big_pid = fork_holding(64)
    try:
        limit = MemoryLimit(memory_mb=64, slots=2)  # 32 MB a call
        offenders = limit.over([small, big], now=0.0)
        assert [child for child, _ in offenders] == [big]
        assert 60 << 20 <= offenders[0][1] <= 70 << 20  # the 64 MB, not the parent's too
        assert limit.over([small, big], now=0.0) == []  # not before the next check
    finally:
        for pid in (small_pid, big_pid):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert limit.over([], now=1.0) == []  # children gone: their statm files are closed
    assert psutil.Process().num_fds() == fds_before + 1  # only the library's own stays open


def test_no_limit_means_no_watcher():
    assert memory_limit(0, 4) is None
    assert memory_limit(100, 4).per_call_mb == 25
