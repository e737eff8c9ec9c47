"""Per-call limits: memory in fork mode (polling the children), time in direct mode (an alarm).

Fork mode's timeouts need nothing here: the fork executor kills a child past its deadline.

``Library(memory_mb=M, slots=S)`` reserves M MB for the instance on its worker; each call
may use ``M / S`` MB of memory of its own. A call's own memory is the anonymous resident
memory its child holds beyond the library process's (``resident - shared`` from
``/proc/PID/statm``): right after the fork the two are equal (the child maps the library's
pages copy-on-write), so the difference is what the call allocated and touched. Pages of
files (code, shared libraries) are not counted on either side.

    library loop turn --expire(now)--> MemoryLimit.over(children)   at most every
                                         read /proc/LIB/statm        CHECK_INTERVAL seconds,
                                         read /proc/CHILD/statm      only while calls run
                                       <-- children over their share: killed (SIGKILL),
                                           their calls end OUT_OF_MEMORY

Why polling and not ``setrlimit``: ``RLIMIT_AS`` and ``RLIMIT_DATA`` count address space,
not memory (a numpy/pandas library maps hundreds of MB it never touches), and a failed
allocation surfaces as a ``MemoryError`` the function may catch; ``RLIMIT_RSS`` is not
enforced by Linux, and cgroups need privileges workers rarely have. Polling is exact about
what it measures and cheap: every CHECK_INTERVAL, one ``pread`` of ``statm`` per running
child and one of the library's own (files kept open while their process runs), nothing at
all when no limit is set (no ``MemoryLimit`` exists).
Its limit is soft by what a call can allocate within one interval (about 20-40 MB for a
Python loop touching memory at 1-2 GB/s); the kernel's OOM killer remains the backstop.

Direct mode runs a call in the library process itself, so nothing can be killed: a call
with a timeout runs under ``setitimer`` and the alarm raises inside it, ending it with a
TIMEOUT entry; the instance serves on. Python code (``time.sleep``, loops, I/O) is
interrupted at once; C code that never returns to the interpreter is not (use fork mode).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from serverless.protocol import CallStatus, safe_dumps

from .call_runner import ResultEntry, run_call

__all__ = ["CHECK_INTERVAL", "MemoryLimit", "memory_limit", "own_memory_bytes", "run_with_alarm"]

CHECK_INTERVAL = 0.02  # seconds between two looks at the children's memory
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_LINUX = sys.platform.startswith("linux")


class _HasPid(Protocol):
    pid: int


Child = TypeVar("Child", bound=_HasPid)


def own_memory_bytes(pid: int) -> int | None:
    """Anonymous resident memory of ``pid`` in bytes (None if the process is gone)."""
    if _LINUX:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                return _anonymous(f.read())
        except OSError:
            return None
    try:  # elsewhere: psutil's view (RSS minus shared where it is known)
        import psutil

        info = psutil.Process(pid).memory_info()
    except Exception:
        return None
    return info.rss - getattr(info, "shared", 0)


def _anonymous(statm: bytes) -> int:
    fields = statm.split()
    return (int(fields[1]) - int(fields[2])) * _PAGE if len(fields) > 2 else 0


class _StatmReader:
    """Reads ``/proc/PID/statm`` through files kept open while their process is watched
    (a ``pread`` costs a few microseconds; an open-read-close ten times that)."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}

    def read(self, pids: list[int]) -> dict[int, int]:
        """Anonymous resident bytes of each of ``pids`` still there; forgets the others."""
        if not _LINUX:
            sizes = {pid: own_memory_bytes(pid) for pid in pids}
            return {pid: size for pid, size in sizes.items() if size is not None}
        fds, self._fds = self._fds, {}
        sizes = {}
        for pid in pids:
            fd = fds.pop(pid, None)
            try:
                if fd is None:
                    fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
                sizes[pid] = _anonymous(os.pread(fd, 256, 0))
            except OSError:
                if fd is not None:
                    os.close(fd)
                continue
            self._fds[pid] = fd
        for fd in fds.values():  # processes no longer watched
            os.close(fd)
        return sizes


class MemoryLimit:
    """Finds the children of this (library) process that use more than their share."""

    def __init__(self, memory_mb: float, slots: int, interval: float = CHECK_INTERVAL) -> None:
        if memory_mb <= 0 or slots < 1:
            raise ValueError("a memory limit needs memory_mb > 0 and slots >= 1")
        self.per_call_mb = memory_mb / slots
        self.interval = interval
        self._limit_bytes = int(self.per_call_mb * 2**20)
        self._library_pid = os.getpid()
        self._statm = _StatmReader()
        self.next_check = 0.0  # monotonic time of the next look

    def over(self, children: Iterable[Child], now: float) -> list[tuple[Child, int]]:
        """The children over their share, with the memory each holds of its own (bytes).

        Looks only when ``now`` has reached ``next_check``; returns ``[]`` otherwise.
        """
        if now < self.next_check:
            return []
        self.next_check = now + self.interval
        children = list(children)
        sizes = self._statm.read([self._library_pid] + [c.pid for c in children])
        base = sizes.get(self._library_pid, 0)
        offenders = []
        for child in children:
            used = sizes.get(child.pid)
            if used is not None and used - base > self._limit_bytes:
                offenders.append((child, used - base))
        return offenders

    def describe(self, used_bytes: int) -> tuple[float, str]:
        """The OUT_OF_MEMORY payload fields: the limit (MB) and what the call held."""
        limit = self.per_call_mb
        shown = int(limit) if limit == int(limit) else round(limit, 1)
        return (shown, f"the call held {used_bytes / 2**20:.0f} MB of its own")


def memory_limit(memory_mb: float, slots: int) -> MemoryLimit | None:
    """A :class:`MemoryLimit` for a library's ``memory_mb``, or None when it sets none."""
    return MemoryLimit(memory_mb, slots) if memory_mb and memory_mb > 0 else None


class _Expired(BaseException):
    """Raised by the alarm inside a direct-mode call that ran over its timeout."""


_TIMEOUT = int(CallStatus.TIMEOUT)


def run_with_alarm(functions: Mapping[str, Callable[..., Any]], entry: tuple) -> ResultEntry:
    """Run a direct-mode call that has a timeout (``entry[3]``); past it, stop it (TIMEOUT)."""
    timeout = float(entry[3])
    expired = False

    def on_alarm(signum: int, frame: object) -> None:
        nonlocal expired
        expired = True
        raise _Expired()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    result: ResultEntry | None = None
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            result = run_call(functions, entry)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Expired:  # it fired outside the function (arguments, result) or in between
        pass
    signal.signal(signal.SIGALRM, previous)
    if expired or result is None:
        return (entry[0], _TIMEOUT, safe_dumps((timeout, "")), timeout)
    return result
