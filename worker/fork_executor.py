"""Fork mode: one child process per call, forked from the warm library process.

    queued calls --start()--> fork --> child: run_call, write result to its pipe, _exit
                                         |
    library loop <--result pipe readable-+   (the result is reported as soon as it is
                 <--SIGCHLD (wakeup fd)--+    complete, before the child's exit is reaped)

At most ``slots`` children run a call at once. A child counts as running until its result
has arrived, then only as "exiting" until it is reaped (its teardown costs about 1 ms of CPU
and needs no slot). A child that exits without a complete result becomes a CRASHED entry
naming its exit code or signal; one past its deadline is killed (TIMEOUT); a cancelled one
is killed (CANCELLED). Children are reaped by pid, never with ``waitpid(-1)``, so processes
that the library's own setup started are left alone.
"""

from __future__ import annotations

import errno
import faulthandler
import os
import pickle
import selectors
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from serverless.protocol import CallStatus, safe_dumps

from .call_runner import run_call
from .limits import memory_limit
from .processes import die_with_parent, set_title

__all__ = ["ForkExecutor"]

_LENGTH = struct.Struct("!Q")
_READ_SIZE = 1 << 20
_CRASHED = int(CallStatus.CRASHED)
_TIMEOUT = int(CallStatus.TIMEOUT)
_CANCELLED = int(CallStatus.CANCELLED)
_OUT_OF_MEMORY = int(CallStatus.OUT_OF_MEMORY)


class _Child:
    __slots__ = ("pid", "entry", "fd", "buffer", "deadline", "result", "end_status", "started")

    def __init__(self, pid: int, entry: tuple, fd: int, deadline: float | None) -> None:
        self.pid = pid
        self.entry = entry
        self.fd = fd
        self.buffer = bytearray()
        self.deadline = deadline
        self.result: tuple | None = None  # set when the result arrived (or the call ended)
        self.end_status: tuple | None = None  # (status, payload) forced by timeout/cancel
        self.started = time.perf_counter()


class ForkExecutor:
    """Forks a child per call; feeds results to ``emit`` as they arrive."""

    def __init__(
        self,
        functions: Mapping[str, Callable[..., Any]],
        slots: int,
        selector: selectors.BaseSelector,
        emit: Callable[[tuple], None],
        close_in_child: Callable[[], None],
        title: str,
        memory_mb: int = 0,
    ) -> None:
        self._functions = functions
        self._slots = slots
        self._selector = selector
        self._emit = emit
        self._close_in_child = close_in_child
        self._title = title
        self._queue: deque[tuple] = deque()
        self._running: dict[int, _Child] = {}  # pid -> child still owing a result
        self._exiting: dict[int, _Child] = {}  # pid -> child whose result is in, not reaped
        self._parent_pid = os.getpid()
        self._memory = memory_limit(memory_mb, slots)  # None: no limit, no polling

    # --- what the loop calls ----------------------------------------------------------

    def submit(self, entries: list[tuple]) -> None:
        self._queue.extend(entries)
        self._start_queued()

    def cancel(self, call_ids: set[int]) -> None:
        kept = deque(e for e in self._queue if e[0] not in call_ids)
        for entry in self._queue:
            if entry[0] in call_ids:
                self._emit((entry[0], _CANCELLED, b"", 0.0))
        self._queue = kept
        for child in list(self._running.values()):
            if child.entry[0] in call_ids:
                self._kill(child, _CANCELLED, b"")

    def on_readable(self, child: _Child) -> None:
        """The child's result pipe has data (or EOF)."""
        self._read_pipe(child, until_eof=False)
        self._start_queued()

    def reap(self) -> None:
        """SIGCHLD arrived: collect every child that has exited."""
        for pid, child in list(self._running.items()) + list(self._exiting.items()):
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped, status = pid, 0
            if reaped == 0:
                continue
            exit_code = os.waitstatus_to_exitcode(status)
            if child.result is None:
                self._read_pipe(child, until_eof=True)
            if child.result is None:  # it died owing its result
                status_code, payload = child.end_status or (
                    _CRASHED,
                    safe_dumps((exit_code, "")),
                )
                self._finish(child, (child.entry[0], status_code, payload, self._elapsed(child)))
            self._exiting.pop(pid, None)
            self._running.pop(pid, None)
            self._close_pipe(child)
        self._start_queued()

    def next_deadline(self) -> float | None:
        deadlines = [c.deadline for c in self._running.values() if c.deadline is not None]
        if self._memory is not None and self._running:
            deadlines.append(self._memory.next_check)
        return min(deadlines) if deadlines else None

    def expire(self, now: float) -> None:
        for child in list(self._running.values()):
            if child.deadline is not None and now >= child.deadline and child.result is None:
                timeout = child.entry[3]
                self._kill(child, _TIMEOUT, safe_dumps((float(timeout), "")))
        if self._memory is not None and self._running:
            for child, used in self._memory.over(list(self._running.values()), now):
                self._kill(child, _OUT_OF_MEMORY, safe_dumps(self._memory.describe(used)))

    def busy(self) -> bool:
        return bool(self._queue or self._running)

    def kill_all(self) -> None:
        """Kill every child (the instance is stopping) and reap them."""
        self._queue.clear()
        children = list(self._running.values()) + list(self._exiting.values())
        for child in children:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for child in children:
            try:
                os.waitpid(child.pid, 0)
            except ChildProcessError:
                pass
            self._close_pipe(child)
        self._running.clear()
        self._exiting.clear()

    # --- inside -----------------------------------------------------------------------

    def _start_queued(self) -> None:
        while self._queue and len(self._running) < self._slots:
            self._fork(self._queue.popleft())

    def _fork(self, entry: tuple) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            exit_code = 70
            try:
                os.close(read_fd)
                self._become_child(entry[1])
                result = run_call(self._functions, entry)
                self._write_all(write_fd, pickle.dumps(result, 5))
                exit_code = 0
            except BaseException:
                exit_code = 71
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(exit_code)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        timeout = entry[3]
        deadline = time.monotonic() + timeout if timeout else None
        child = _Child(pid, entry, read_fd, deadline)
        self._running[pid] = child
        self._selector.register(read_fd, selectors.EVENT_READ, child)

    def _become_child(self, function_name: str) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self._close_in_child()
        die_with_parent(self._parent_pid)
        faulthandler.enable()
        set_title(f"call {self._title}.{function_name}")

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(_LENGTH.pack(len(data)) + data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def _read_pipe(self, child: _Child, until_eof: bool) -> None:
        if child.fd < 0:
            return
        while True:
            try:
                chunk = os.read(child.fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return
            if not chunk:  # EOF: every writer is gone
                self._close_pipe(child)
                return
            child.buffer += chunk
            if child.result is None and len(child.buffer) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(child.buffer, 0)
                if len(child.buffer) >= _LENGTH.size + length:
                    entry = pickle.loads(memoryview(child.buffer)[_LENGTH.size:])
                    self._finish(child, entry)
                    self._close_pipe(child)
                    return
            if not until_eof:
                return

    def _finish(self, child: _Child, entry: tuple) -> None:
        if child.result is not None:
            return
        child.result = entry
        self._emit(entry)
        if self._running.pop(child.pid, None) is not None:
            self._exiting[child.pid] = child

    def _kill(self, child: _Child, status: int, payload: bytes) -> None:
        child.end_status = (status, payload)
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._finish(child, (child.entry[0], status, payload, self._elapsed(child)))
        self._close_pipe(child)

    def _close_pipe(self, child: _Child) -> None:
        if child.fd >= 0:
            try:
                self._selector.unregister(child.fd)
            except (KeyError, ValueError):
                pass
            os.close(child.fd)
            child.fd = -1

    @staticmethod
    def _elapsed(child: _Child) -> float:
        return time.perf_counter() - child.started
