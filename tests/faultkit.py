"""Helpers for the fault tests: workers we can kill, bounded waits, process-tree checks.

Waits here poll a condition with a deadline; nothing sleeps a fixed time to synchronise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")

# fast failure detection for tests; still well above a loaded 2-core machine's hiccups
FAST_HEARTBEAT = dict(heartbeat_interval=0.2, heartbeat_timeout=2.0, start_backoff=0.05)
NODE_VARIABLE = "SERVERLESS_TEST_NODE"

# A worker woken after the manager wrote it off exits with its libraries: 0 when it reads
# the Shutdown the manager sent it then (the usual case: it reads what is waiting before
# concluding anything), 5 if that message had not reached it yet: both are right.
WOKEN_EXITS = (0, 5)


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, what: str = "") -> T:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.02)


def start_node(address: str, name: str, workdir: Path, cores: float = 1.0,
               connect_timeout: float = 10.0, secret_file: Path | None = None) -> subprocess.Popen:
    """A ``serverless-worker`` process; calls it runs see ``SERVERLESS_TEST_NODE=name``.
    ``secret_file``: the manager's (``Manager.secret_file``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "worker.log", "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "serverless.worker", address, "--cores", str(cores),
             "--memory", "4000", "--name", name, "--workdir", str(workdir),
             "--connect-timeout", str(connect_timeout),
             *(["--secret-file", str(secret_file)] if secret_file is not None else [])],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            env={**os.environ, NODE_VARIABLE: name},
        )
    finally:
        log.close()


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and every process under it, now."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def libraries_of(worker_pid: int) -> list[psutil.Process]:
    """The library processes a worker agent runs now."""
    found = []
    try:  # the agent's own children: forked calls, one level down, keep their library's title
        children = psutil.Process(worker_pid).children()
    except psutil.NoSuchProcess:
        children = []
    for proc in children:
        try:
            command = " ".join(proc.cmdline())  # set_title renames it "serverless library ..."
            if "library_runtime" in command or command.startswith("serverless library"):
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def assert_gone(procs: list[psutil.Process], timeout: float = 15.0) -> None:
    """Each process has exited and none is left a zombie (our own children get reaped)."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    described = []
    for proc in alive:
        try:
            described.append((proc.pid, proc.status(), " ".join(proc.cmdline())[:80]))
        except psutil.NoSuchProcess:
            continue
    assert not described, f"processes left behind: {described}"


_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper(on: bool = True) -> None:
    """Orphans under this process are re-parented to it (so a test can reap and see them)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def open_fds(pid: int) -> int:
    return psutil.Process(pid).num_fds()
