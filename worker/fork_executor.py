"""Fork mode: one child process per call, forked from the warm library process.

    queued calls --start--> fork --> child: close inherited fds, run_call,
                                            write the result to its pipe, _exit
    library loop <--result pipe readable--+  the result is reported as soon as it is
                                             complete, before the child has exited
    library loop --reap()-- each pass ----+  children whose result is in are reaped with
                                             waitpid(pid, WNOHANG) while they tear down

A spare child waits for the next call while the instance is idle: forked ahead of time
(after the loop has sent its results, with nothing queued or running), it blocks reading
its call from a pipe, so a call that arrives finds a process ready and skips the fork (whose
parent side grows with the library's mappings: figures in docs/performance.md). A busy instance forks per call as above, since spares would only add a pipe hop;
arguments over :data:`SPARE_MAX_ARGS` bytes are never piped (they fork as above, the child
already holding them). A spare that died while it waited is reaped and the call forks.
The spare was forked from the same warm, unchanging library state, so a call sees exactly
what a child forked at its arrival would; it still runs alone in its own process.

At most ``slots`` children run a call at once. A child counts as running until its result
has arrived, then only as "exiting" until it is reaped (its teardown costs CPU
but needs no slot). A child that exits without a complete result (EOF on its pipe first)
becomes a CRASHED entry naming its exit code or signal, once it is reaped (``WNOHANG``: the
loop never waits for a child; one that closed its pipe and runs on is killed after
:data:`CLOSED_PIPE_GRACE`, its slot free meanwhile); one past its deadline is killed
(TIMEOUT); a cancelled one is killed (CANCELLED). Children are reaped by pid, never with
``waitpid(-1)``, so processes that the library's own setup started are left alone.

What runs between ``fork()`` and the call is kept to a few system calls, because every
Python object touched in the child (or in the parent while a child lives) costs a
copy-on-write page fault: close the inherited descriptors by number, ``prctl`` through a
ctypes function looked up once, check the parent. No SIGCHLD handler is needed (the pipe's
EOF tells a crash, ``reap()`` collects the rest), the child keeps the library's process
title, and faulthandler is already enabled in the library (the child inherits it).

``os.fork()`` also runs the at-fork hooks of imported modules. ``threading``'s child hook
rebuilds the threading module's state (new locks, a pass over every thread object), mostly
copy-on-write faults; :mod:`.fork_hooks` gives it a fast path when the library has a
single Python thread (tested on each supported Python).

Fork hygiene, as multiprocessing does it: stdout and stderr are flushed before every fork
(a block-buffered stream would otherwise be written again by each child: whatever imports
or ``setup()`` printed), and each child gets back the signal dispositions a fresh
interpreter has (the library blocks SIGINT; a call, and the programs it starts, must not).
"""

from __future__ import annotations

import errno
import os
import pickle
import signal
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from serverless.protocol import STREAM_READ_SIZE as _READ_SIZE
from serverless.protocol import CallStatus, arguments_size, safe_dumps

from .call_runner import run_call
from .fork_hooks import cheap_threading_fork_hook
from .journal import Journal
from .import_learning import ImportLearner
from .limits import memory_limit
from .processes import parent_death_signal

__all__ = ["ForkExecutor", "REAP_INTERVAL", "SPARE_MAX_ARGS", "CHILD_UNBLOCKED", "thread_count"]

_LENGTH = struct.Struct("!Q")
_READABLE = 0x001  # select.EPOLLIN == select.POLLIN
_CRASHED = int(CallStatus.CRASHED)
_TIMEOUT = int(CallStatus.TIMEOUT)
_CANCELLED = int(CallStatus.CANCELLED)
_OUT_OF_MEMORY = int(CallStatus.OUT_OF_MEMORY)
REAP_INTERVAL = 0.01  # seconds: how soon an idle loop comes back to reap exiting children
CLOSED_PIPE_GRACE = 1.0  # seconds a child that closed its result pipe has to exit, then killed
THREAD_CHECK_INTERVAL = 1.0  # seconds between looks at the library's thread count, at a fork
SPARE_MAX_ARGS = 32768  # bytes: a call with bigger arguments forks instead (a pipe holds 64 KiB)
# signals the library process blocks (its agent decides when it stops) and a call's child
# unblocks: the child then has a fresh interpreter's SIGINT (KeyboardInterrupt), and so do
# the programs it starts (a blocked or ignored signal stays so across exec). Blocking
# rather than ignoring makes this one cheap system call in the child, not a sigaction.
CHILD_UNBLOCKED = (signal.SIGINT,)


class Poller(Protocol):
    """What the executor needs of the loop's poller (``select.epoll`` or ``select.poll``)."""

    def register(self, fd: int, eventmask: int = ...) -> None: ...

    def unregister(self, fd: int) -> None: ...


class _Child:
    __slots__ = ("pid", "entry", "fd", "buffer", "body", "filled", "deadline", "result", "started")

    def __init__(self, pid: int, entry: tuple, fd: int, deadline: float | None) -> None:
        self.pid = pid
        self.entry = entry
        self.fd = fd
        self.buffer = b""  # the start of the result, until its length is known
        self.body: bytearray | None = None  # a large result, filled in place
        self.filled = 0
        self.deadline = deadline
        self.result: tuple | None = None  # set when the result arrived (or the call ended)
        self.started = time.perf_counter()


class _Spare:
    """A child forked ahead of its call, blocked reading the call from ``call_fd``."""

    __slots__ = ("pid", "call_fd", "result_fd")

    def __init__(self, pid: int, call_fd: int, result_fd: int) -> None:
        self.pid = pid
        self.call_fd = call_fd
        self.result_fd = result_fd


class ForkExecutor:
    """Forks a child per call; feeds results to ``emit`` as they arrive.

    ``poller`` is the loop's; the executor registers each child's result pipe on it and
    the loop hands readable descriptors to :meth:`on_readable`. ``inherited_fds`` are the
    loop's descriptors a child must not keep (the agent's socket, the poller).
    """

    def __init__(
        self,
        functions: Mapping[str, Callable[..., Any]],
        slots: int,
        poller: Poller,
        emit: Callable[[tuple], None],
        inherited_fds: Sequence[int] = (),
        memory_mb: int = 0,
        spares: bool = True,
        journal: Journal | None = None,
        on_threads: Callable[[int], None] | None = None,
        learner: ImportLearner | None = None,
    ) -> None:
        self._functions = functions
        self._learner = learner  # None: children do not report their imports
        self._slots = slots
        self._poller = poller
        self._emit = emit
        self._inherited_fds = tuple(inherited_fds)
        self._queue: deque[tuple] = deque()
        self._running: dict[int, _Child] = {}  # result pipe fd -> child still owing a result
        self._exiting: dict[int, _Child] = {}  # pid -> child whose result is in, not reaped
        self._ending: dict[int, _Child] = {}  # pid -> child that closed its pipe owing a result
        self._timed = 0  # running children that have a deadline
        self._parent_pid = os.getpid()
        self._set_death_signal = parent_death_signal()
        self._memory = memory_limit(memory_mb, slots)  # None: no limit, no polling
        self._use_spares = spares
        self._spare: _Spare | None = None
        self._journal = journal  # told which calls run: see .journal
        self._on_threads = on_threads  # told once if the library forks with other threads
        self._next_thread_check = 0.0  # inf once told
        cheap_threading_fork_hook()

    # --- what the loop calls ----------------------------------------------------------

    def submit(self, entries: list[tuple]) -> None:
        self._queue.extend(entries)
        self._start_queued()

    def cancel(self, call_ids: set[int]) -> None:
        kept: deque[tuple] = deque()
        for entry in self._queue:
            if entry[0] in call_ids:
                self._emit((entry[0], _CANCELLED, b"", 0.0))
            else:
                kept.append(entry)
        self._queue = kept
        for child in list(self._running.values()):
            if child.entry[0] in call_ids:
                self._kill(child, _CANCELLED, b"")
        self._start_queued()

    def on_readable(self, fd: int) -> bool:
        """A result pipe has data (or EOF); False if ``fd`` is not one of ours."""
        child = self._running.get(fd)
        if child is None:
            return False
        self._read_pipe(child)
        self._start_queued()
        return True

    def reap(self) -> None:
        """Collect the children whose result is in and that have exited since."""
        if self._ending:
            self._reap_ending()
        exiting = self._exiting
        if not exiting:
            return
        for pid in list(exiting):
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped = pid
            if reaped:
                del exiting[pid]

    def next_wakeup(self) -> float | None:
        """When the loop must come back even if nothing is readable (monotonic time)."""
        wakeup = None
        if self._timed:
            wakeup = min(c.deadline for c in self._running.values() if c.deadline is not None)
        if self._memory is not None and self._running:
            check = self._memory.next_check
            wakeup = check if wakeup is None else min(wakeup, check)
        if self._exiting or self._ending:
            reap_at = time.monotonic() + REAP_INTERVAL
            wakeup = reap_at if wakeup is None else min(wakeup, reap_at)
        return wakeup

    def expire(self, now: float) -> None:
        """Kill the children past their deadline (TIMEOUT) or over the memory limit."""
        killed = False
        if self._timed:  # else the common case: no running call has a timeout
            expired = [c for c in self._running.values()
                       if c.deadline is not None and now >= c.deadline]
            for child in expired:
                self._kill(child, _TIMEOUT, safe_dumps((float(child.entry[3]), "")))
            killed = bool(expired)
        if self._memory is not None and self._running:
            for child, used in self._memory.over(list(self._running.values()), now):
                self._kill(child, _OUT_OF_MEMORY, safe_dumps(self._memory.describe(used)))
                killed = True
        if killed:
            self._start_queued()

    def busy(self) -> bool:
        return bool(self._queue or self._running)

    @property
    def slots(self) -> int:
        return self._slots

    def queued(self) -> int:
        """Calls waiting for a slot."""
        return len(self._queue)

    def keep_spare(self) -> None:
        """Fork a spare child if the instance is idle and has none (the loop calls this
        after sending its results, so forking delays no result)."""
        if self._spare is None and self._use_spares and not self._queue and not self._running:
            self._fork_spare()

    def learn_imports(self) -> tuple[list[str], dict[str, str]] | None:
        """Import what children reported (see :mod:`.import_learning`); None: nothing new.
        The spare, forked before, is retired so that the next one starts with them."""
        if self._learner is None or not self._learner.pending():
            return None
        self._retire_spare()
        return self._learner.learn()

    def kill_all(self) -> None:
        """Kill every child (the instance is stopping) and reap them."""
        self._queue.clear()
        self._retire_spare()
        children = (list(self._running.values()) + list(self._exiting.values())
                    + list(self._ending.values()))
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
        self._ending.clear()
        self._timed = 0

    # --- inside -----------------------------------------------------------------------

    def _start_queued(self) -> None:
        while self._queue and len(self._running) < self._slots:
            entry = self._queue.popleft()
            if self._journal is not None:  # before the fork: the call may kill us at once
                self._journal.started(entry[0])
            if self._spare is None or not self._hand_to_spare(entry):
                self._fork(entry)

    def _fork(self, entry: tuple) -> None:
        read_fd, write_fd = os.pipe()
        self._check_threads()
        _flush_stdio()
        pid = os.fork()
        if pid == 0:  # the child
            self._child_main(entry, None, write_fd, (read_fd,))
        os.close(write_fd)
        self._track(pid, entry, read_fd)

    def _check_threads(self) -> None:
        """At most once a second, at a fork: does the library have other threads? Said once."""
        if self._on_threads is None:
            return
        now = time.monotonic()
        if now < self._next_thread_check:
            return
        self._next_thread_check = now + THREAD_CHECK_INTERVAL
        count = thread_count()
        if count > 1:
            self._next_thread_check = float("inf")
            self._on_threads(count)

    def _fork_spare(self) -> None:
        call_read, call_write = os.pipe()
        result_read, result_write = os.pipe()
        self._check_threads()
        _flush_stdio()
        pid = os.fork()
        if pid == 0:  # the spare: waits for its call, then runs it like any child
            self._child_main(None, call_read, result_write, (call_write, result_read))
        os.close(call_read)
        os.close(result_write)
        self._spare = _Spare(pid, call_write, result_read)

    def _hand_to_spare(self, entry: tuple) -> bool:
        """Give ``entry`` to the spare; False (the spare kept or gone) if it must fork instead."""
        spare = self._spare
        assert spare is not None
        if arguments_size(entry[2]) > SPARE_MAX_ARGS:
            return False  # the spare waits for a smaller call
        self._spare = None
        data = pickle.dumps(entry, 5)
        try:
            self._write_all(spare.call_fd, data)  # fits the empty pipe: never blocks
        except OSError:  # it died while it waited (killed from outside)
            self._discard_spare(spare)
            return False
        os.close(spare.call_fd)
        self._track(spare.pid, entry, spare.result_fd)
        return True

    def _retire_spare(self) -> None:
        if self._spare is not None:
            spare, self._spare = self._spare, None
            self._discard_spare(spare)

    @staticmethod
    def _discard_spare(spare: _Spare) -> None:
        try:
            os.kill(spare.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(spare.pid, 0)
        except ChildProcessError:
            pass
        os.close(spare.call_fd)
        os.close(spare.result_fd)

    def _track(self, pid: int, entry: tuple, read_fd: int) -> None:
        """``pid`` runs ``entry`` and writes its result to ``read_fd``'s pipe."""
        os.set_blocking(read_fd, False)
        timeout = entry[3]
        deadline = None
        if timeout:
            deadline = time.monotonic() + timeout
            self._timed += 1
        self._running[read_fd] = _Child(pid, entry, read_fd, deadline)
        self._poller.register(read_fd, _READABLE)

    def _child_main(self, entry: tuple | None, call_fd: int | None, result_fd: int,
                    parent_ends: tuple[int, ...]) -> None:
        """A forked child's whole life: its call (given, or read from ``call_fd``), its
        result written to ``result_fd``, then ``_exit``. Never returns."""
        exit_code = 70
        try:
            for fd in parent_ends:
                os.close(fd)
            self._become_child()
            if entry is None:
                entry = self._receive_call(call_fd)
                if entry is None:  # the library closed the pipe: no call for this spare
                    os._exit(0)
            result = run_call(self._functions, entry)
            if self._learner is not None:
                imported = self._learner.new_in_child()
                if imported:  # travels after the result entry; _result_in strips it
                    result = (*result, imported)
            self._write_all(result_fd, pickle.dumps(result, 5))
            exit_code = 0
        except BaseException:
            exit_code = 71
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(exit_code)

    @staticmethod
    def _receive_call(fd: int | None) -> tuple | None:
        """The entry written to a spare's call pipe (length, then pickle); None at EOF."""
        assert fd is not None
        data = b""
        wanted = _LENGTH.size
        while len(data) < wanted:
            chunk = os.read(fd, wanted - len(data))
            if not chunk:
                return None
            data += chunk
            if len(data) == _LENGTH.size and wanted == _LENGTH.size:
                wanted += _LENGTH.unpack(data)[0]
        return pickle.loads(memoryview(data)[_LENGTH.size:])

    def _become_child(self) -> None:
        """The child's set-up before its call: system calls only, no shared objects."""
        for fd in self._inherited_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._set_death_signal()
        if os.getppid() != self._parent_pid:  # the library died before the call began
            os._exit(1)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, CHILD_UNBLOCKED)

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        """Write ``data`` after its length (no concatenated copy of a large result)."""
        if len(data) < _READ_SIZE:
            views = [memoryview(_LENGTH.pack(len(data)) + data)]
        else:
            views = [memoryview(_LENGTH.pack(len(data))), memoryview(data)]
        while views:
            written = os.writev(fd, views)
            while written:
                if written >= len(views[0]):
                    written -= len(views.pop(0))
                else:
                    views[0] = views[0][written:]
                    written = 0

    def _read_pipe(self, child: _Child) -> None:
        """Read what the child's pipe holds: a small result comes in one read; a large one
        gets a buffer of its result's size, read into in place (no growing copies)."""
        while True:
            body = child.body
            try:
                if body is None:
                    chunk = os.read(child.fd, _READ_SIZE)
                    received = len(chunk)
                else:
                    received = os.readv(child.fd, [memoryview(body)[child.filled:]])
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                received = 0
            if not received:  # EOF with no complete result: the child died owing it
                self._crashed(child)
                return
            if body is None:
                data = child.buffer + chunk if child.buffer else chunk
                if len(data) >= _LENGTH.size:
                    (length,) = _LENGTH.unpack_from(data, 0)
                    if len(data) >= _LENGTH.size + length:
                        self._result_in(child, memoryview(data)[_LENGTH.size:])
                        return
                    child.body = bytearray(length)
                    child.body[:len(data) - _LENGTH.size] = memoryview(data)[_LENGTH.size:]
                    child.filled = len(data) - _LENGTH.size
                    data = b""
                child.buffer = data
            else:
                child.filled += received
                if child.filled == len(body):
                    self._result_in(child, body)
                    return
            if received < _READ_SIZE:
                return  # the pipe is empty: the rest comes with the next readable event

    def _result_in(self, child: _Child, pickled: bytes | bytearray | memoryview) -> None:
        entry = pickle.loads(pickled)
        if len(entry) > 4:  # the child imported modules its library lacks
            if self._learner is not None:
                self._learner.offer(entry[4])
            entry = entry[:4]
        self._close_pipe(child)
        self._finish(child, entry)

    def _crashed(self, child: _Child) -> None:
        """EOF on its pipe with no complete result: it is ending (or closed the pipe and
        runs on). Reported with its exit code once it has exited; never waited for here."""
        self._close_pipe(child)
        child.deadline = time.monotonic() + CLOSED_PIPE_GRACE  # then it is killed
        self._ending[child.pid] = child
        self._reap_ending()

    def _reap_ending(self) -> None:
        now = time.monotonic()
        for pid, child in list(self._ending.items()):
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
                exit_code = os.waitstatus_to_exitcode(status) if reaped else 0
            except ChildProcessError:
                reaped, exit_code = pid, -1
            if not reaped:
                if child.deadline is not None and now >= child.deadline:
                    child.deadline = None  # killed once; reaped at a later pass
                    os.kill(pid, signal.SIGKILL)
                continue
            del self._ending[pid]
            detail = "" if child.deadline is not None else (
                f"it closed its result pipe and had not exited {CLOSED_PIPE_GRACE:g} s later")
            child.result = (child.entry[0], _CRASHED, safe_dumps((exit_code, detail)),
                            self._elapsed(child))
            self._emit(child.result)

    def _finish(self, child: _Child, entry: tuple) -> None:
        child.result = entry
        self._emit(entry)
        self._exiting[child.pid] = child

    def _kill(self, child: _Child, status: int, payload: bytes) -> None:
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._close_pipe(child)
        self._finish(child, (child.entry[0], status, payload, self._elapsed(child)))

    def _close_pipe(self, child: _Child) -> None:
        fd = child.fd
        if fd >= 0:
            if self._running.pop(fd, None) is not None:
                if child.deadline is not None:
                    self._timed -= 1
                if self._journal is not None:
                    self._journal.ended(child.entry[0])
            try:
                self._poller.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
            os.close(fd)
            child.fd = -1

    @staticmethod
    def _elapsed(child: _Child) -> float:
        return time.perf_counter() - child.started


def _flush_stdio() -> None:
    """Write out what this process buffered, so that no child writes it again."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):  # None, closed, or a broken pipe
            pass


def thread_count() -> int:
    """Threads of this process, native ones included (BLAS pools, gRPC...): one stat()."""
    try:
        return os.stat("/proc/self/task").st_nlink - 2  # Linux: "." and ".." plus one per thread
    except OSError:
        return threading.active_count()
