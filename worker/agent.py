"""The worker agent: one per node, between the manager and the library processes.

    manager --Welcome/Reject------------> registered (or exit)
            --Deploy--------------------> start a library process, forward the Deploy to it
            --Calls / Cancel------------> forward to the instance's process, payload untouched
            --StopInstance--------------> forward; once the process exits: InstanceStopped
            --Shutdown------------------> stop every instance, exit
    library --InstanceReady/Failed------> forward to the manager
            --InstanceWarning-----------> log it, forward to the manager
            --ImportsLearned, Output----> forward to the manager
            --Results-------------------> forward to the manager, payload untouched (a batch
                                          over the manager's max_message_bytes is split, a
                                          result too large alone fails its call:
                                          protocol.fit_results)
            --EOF (the process ended)---> once it has exited (its pidfd readable; never
                                          waited for): the results its crash journal held,
                                          then InstanceFailed naming the exit code or signal,
                                          the calls that were running and the tail of the
                                          instance's log. In direct mode the call running
                                          is the one that ended the process: it gets a
                                          CRASHED result instead (worker/journal.py)

The agent decodes only envelopes; call arguments and results pass through as opaque
frames. It sends a Heartbeat when it has sent nothing for an interval and takes the
manager for gone when it has heard nothing for the heartbeat timeout; then it stops its
libraries (whose forked children die with them) and exits. Before it concludes so, it
reads what is waiting: a worker frozen (SIGSTOP) long enough to be written off finds the
Shutdown the manager sent it then, and goes. It is single-threaded and never blocks on
one instance: a library slow to exit is watched through its pidfd and the tick, and
killed after ``stop_grace``.

Exit codes: 0 shut down by the manager or a signal; 4 rejected by the manager;
5 the manager was lost or never answered.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from serverless.data.file import worker_path
from serverless.errors import ProtocolError, describe_exit
from serverless.protocol import (
    MAX_MESSAGE_BYTES,
    MAX_STREAM_BYTES,
    PROTOCOL_VERSION,
    Calls,
    CallStatus,
    Cancel,
    Deploy,
    Fetch,
    Gate,
    Goodbye,
    Heartbeat,
    ImportsLearned,
    InstanceFailed,
    InstanceReady,
    InstanceStopped,
    InstanceWarning,
    Message,
    Output,
    Register,
    Reject,
    Results,
    Shutdown,
    StopInstance,
    Welcome,
    decode,
    encode,
    fit_results,
    results_messages,
    safe_dumps,
)
from serverless.safe_files import safe_name
from serverless.security import CurveKeys
from serverless.serialization import decode_exception
from serverless.transport import connect_dealer, new_context

from .env_launch import archive_needed, launch_spec
from .environments import default_env_dir
from .journal import without_results
from .data.gates import DataPlane
from .library_handle import LibraryHandle
from .processes import set_title

__all__ = ["WorkerConfig", "WorkerAgent", "EXIT_OK", "EXIT_REJECTED", "EXIT_MANAGER_LOST"]

log = logging.getLogger("serverless.worker")

EXIT_OK, EXIT_REJECTED, EXIT_MANAGER_LOST = 0, 4, 5
_CRASHED = int(CallStatus.CRASHED)
_DIRECT_CRASH = "in direct mode the call ran in its library instance and took it down with it"


@dataclass
class WorkerConfig:
    """How a worker agent runs."""

    manager: str
    cores: float
    memory_mb: int
    name: str | None = None
    workdir: Path = field(default_factory=lambda: Path.cwd() / "serverless-worker")
    connect_timeout: float = 60.0
    stop_grace: float = 3.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    curve_keys: CurveKeys | None = None  # from the secret: CURVE to the manager (transport)
    announce: bool = False  # say on stderr when registered (workers started by hand)
    env_dir: Path = field(default_factory=default_env_dir)  # environments, shared by the node
    cache_dir: Path | None = None  # input files (default: <workdir>/cache), see worker.data
    forever_dir: Path | None = None  # "forever" files (default: a per-user directory)
    disk_mb: int | None = None  # the cache's limit (None: no limit)
    transfer_timeout: float = 10.0  # seconds without progress before a source is given up


class _Terminate(BaseException):
    """SIGTERM or SIGINT: stop cleanly."""


class WorkerAgent:
    """Runs the loop described in the module docstring until told to stop."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._context = new_context()
        self._sock, self.identity = connect_dealer(
            self._context, config.manager, config.name, config.max_message_bytes, config.curve_keys
        )
        self._send_limit = config.max_message_bytes  # lowered to the manager's by Welcome
        self._handles: dict[int, LibraryHandle] = {}
        self._stopping: dict[int, tuple[LibraryHandle, float]] = {}
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._by_fd: dict[int, LibraryHandle] = {}  # zmq.Poller reports raw sockets by fd
        self._ending: dict[int, LibraryHandle] = {}  # EOF seen, the process not exited yet
        self._by_exit_fd: dict[int, LibraryHandle] = {}  # their pidfds
        self._registered = False
        self._heartbeat_interval = 1.0
        self._heartbeat_timeout = config.connect_timeout
        self._last_sent = self._last_heard = time.monotonic()
        self._exit_code: int | None = None
        self._data = DataPlane(self._context, config.manager, config.curve_keys,
                               config.cache_dir or config.workdir / "cache", config.forever_dir,
                               None if config.disk_mb is None else config.disk_mb * 2**20,
                               config.transfer_timeout)
        self._poller.register(self._data.sock, zmq.POLLIN)

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        set_title(f"worker {self.identity} -> {self.config.manager}")
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        reason = "worker stopped"
        try:
            self._send(Register(
                PROTOCOL_VERSION, self.identity, socket.gethostname(), os.getpid(),
                float(self.config.cores), int(self.config.memory_mb), sys.executable,
                int(self.config.max_message_bytes),
            ))
            while self._exit_code is None:
                self._turn()
        except _Terminate:
            reason = "worker terminated by a signal"
            self._exit_code = EXIT_OK
        finally:
            self._stop_all()
            if self._registered and self._exit_code != EXIT_MANAGER_LOST:
                self._send(Goodbye(reason))
            self._data.close()
            self._sock.close(linger=0)
            self._context.term()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._exit_code

    def _on_signal(self, signum: int, frame: object) -> None:
        raise _Terminate()

    def _turn(self) -> None:
        for handle in self._handles.values():
            if handle.wants_write():
                self._poller.register(handle.sock, zmq.POLLIN | zmq.POLLOUT)
        timeout_ms = int(min(self._heartbeat_interval, 0.25) * 1000)
        events = self._poller.poll(timeout_ms)
        for sock, event in events:
            if sock is self._sock:
                self._read_manager()
            elif sock in self._by_exit_fd:
                self._library_exited(self._by_exit_fd[sock])
            elif sock is self._data.sock:
                self._read_data()
            else:
                handle = self._by_fd.get(sock)
                if handle is None:
                    continue
                if event & zmq.POLLOUT:
                    handle.flush()
                    if not handle.wants_write():
                        self._poller.register(handle.sock, zmq.POLLIN)
                if event & zmq.POLLIN:
                    self._read_library(handle)
        self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        for instance_id, (handle, since) in list(self._stopping.items()):
            if handle.poll() is None:
                if now - since >= self.config.stop_grace:
                    handle.kill()  # reported at a later tick, once it has exited
                continue
            del self._stopping[instance_id]
            handle.release()
            self._send(InstanceStopped(instance_id))
        for handle in list(self._ending.values()):
            if handle.poll() is not None:
                self._library_exited(handle)
            elif now >= handle.kill_at:
                handle.kill()
        if now - self._last_heard > self._heartbeat_timeout:
            # woken after a freeze? what the manager sent meanwhile (a Shutdown) decides
            self._read_manager()
            heard_now = time.monotonic() - self._last_heard <= self._heartbeat_timeout
            if self._exit_code is not None or heard_now:
                return
            if self._registered:
                log.error("manager %s lost (heartbeats stopped); stopping", self.config.manager)
            else:
                log.error("could not reach the manager at %s within %.0f s (is the address "
                          "right, and the manager running?); giving up (--connect-timeout)",
                          self.config.manager, self._heartbeat_timeout)
            self._exit_code = EXIT_MANAGER_LOST
        elif self._registered and now - self._last_sent >= self._heartbeat_interval:
            self._send(Heartbeat())

    # --- from the manager -------------------------------------------------------------

    def _read_manager(self) -> None:
        sock = self._sock
        while sock.get(zmq.EVENTS) & zmq.POLLIN:  # no zmq.Again raised to end the drain
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._last_heard = time.monotonic()
            try:
                msg = decode(frames)
            except ProtocolError as exc:
                log.warning("dropped a malformed message from the manager: %s", exc)
                continue
            self._on_manager_message(msg, frames)
            if self._exit_code is not None:
                return

    def _on_manager_message(self, msg: Message, frames: list[bytes]) -> None:
        if isinstance(msg, (Calls, Cancel)):
            handle = self._handles.get(msg.instance_id)
            if isinstance(msg, Calls):  # held if a Gate came first: its files are not here yet
                frames, replies = self._data.hold(msg.instance_id, msg, frames)
            else:  # a cancelled call held for its files ends here
                replies = self._data.cancel(msg.instance_id, msg.call_ids)
            for reply in replies:
                self._send_frames(reply)
            if handle is not None and frames is not None:  # else it died; the manager retries
                handle.send(frames)
        elif isinstance(msg, (Gate, Fetch)):
            self._data.on_manager(msg)
        elif isinstance(msg, Deploy):
            self._deploy(msg, frames)
        elif isinstance(msg, StopInstance):
            self._stop_instance(msg.instance_id, frames)
        elif isinstance(msg, Welcome):
            self._registered = True
            self._heartbeat_interval = msg.heartbeat_interval
            self._heartbeat_timeout = msg.heartbeat_timeout
            self._send_limit = min(self._send_limit, msg.max_message_bytes)
            log.info("registered with %s as %s", self.config.manager, msg.worker_id)
            if self.config.announce:  # a worker started by hand says so at any log level
                print(f"serverless-worker: connected to the manager at {self.config.manager} "
                      f"as {msg.worker_id}", file=sys.stderr, flush=True)
        elif isinstance(msg, Reject):
            log.error("the manager rejected this worker: %s", msg.reason)
            self._exit_code = EXIT_REJECTED
        elif isinstance(msg, Shutdown):
            log.info("shutdown by the manager: %s", msg.reason)
            self._exit_code = EXIT_OK
        elif not isinstance(msg, Heartbeat):
            log.warning("unexpected %s from the manager", msg.TAG)

    def _deploy(self, msg: Deploy, frames: list[bytes], archive: Path | None = None) -> None:
        environment = msg.options.get("environment")
        if archive is None and (spec := archive_needed(environment, self.config.env_dir)):
            self._data.hold_deploy(msg.instance_id, spec, (msg, frames))  # fetch it first
            return
        # the name comes from the manager: never let it reach outside the workdir
        log_path = self.config.workdir / f"{safe_name(msg.library)}-{msg.instance_id}.log"
        try:
            handle = LibraryHandle(
                msg.instance_id, msg.library, msg.options.get("python"),
                dict(msg.options.get("env", {})), msg.cores, msg.slots, log_path,
                max(self.config.max_message_bytes, MAX_STREAM_BYTES),  # big results fail alone
                launch_spec(environment, self.config.env_dir, archive),
                msg.mode,
            )
        except Exception as exc:
            self._send(InstanceFailed(
                msg.instance_id, f"could not start library {msg.library!r}: {exc}", "", True
            ))
            return
        self._handles[msg.instance_id] = handle
        self._by_fd[handle.fileno()] = handle
        self._poller.register(handle.sock, zmq.POLLIN)
        handle.send(frames)

    def _stop_instance(self, instance_id: int, frames: list[bytes]) -> None:
        handle = self._handles.pop(instance_id, None)
        self._data.instance_gone(instance_id)
        if handle is None:
            self._send(InstanceStopped(instance_id))
            return
        handle.stopping = True
        handle.send(frames)
        self._forget(handle, close=False)
        self._stopping[instance_id] = (handle, time.monotonic())

    # --- from library processes -------------------------------------------------------

    def _read_library(self, handle: LibraryHandle) -> None:
        try:
            messages = handle.read()
        except ProtocolError as exc:
            log.error("library %s#%d sent garbage (%s); killing it", handle.library, handle.instance_id, exc)
            handle.kill()
            messages = None
        for frames in messages or ():
            try:
                msg = decode(frames)
                if isinstance(msg, Results):  # under the manager's size limit
                    self._data.on_results(handle.instance_id, msg)  # unpin its inputs
                    for part in fit_results(msg, frames, self._send_limit):
                        self._send_frames(part)
                    continue
            except ProtocolError as exc:
                log.error("library %s#%d: %s", handle.library, handle.instance_id, exc)
                continue
            if isinstance(msg, InstanceReady):
                handle.ready = True
                self._data.deploy_started(handle.instance_id)  # its environment is unpacked
            elif isinstance(msg, InstanceWarning):
                log.warning("library %s#%d: %s", handle.library, handle.instance_id, msg.text)
            elif isinstance(msg, InstanceFailed):
                handle.stopping = True  # its exit needs no second report
            elif not isinstance(msg, (ImportsLearned, Output)):
                log.warning("unexpected %s from a library", msg.TAG)
                continue
            self._send_frames(frames)
        if messages is None:
            self._library_ended(handle)

    def _read_data(self) -> None:
        forward, to_manager = self._data.on_events()
        for frames in to_manager:
            self._send_frames(frames)
        while self._data.deploys_done:  # environments fetched (or not) for held Deploys
            (deploy, deploy_frames), failure = self._data.deploys_done.pop(0)
            if failure is None:
                spec = deploy.options["environment"]["file"]
                self._deploy(deploy, deploy_frames, worker_path(spec[0], spec[2], ""))
            else:
                self._data.deploy_started(deploy.instance_id)
                self._send(InstanceFailed(deploy.instance_id, "environment: the archive could "
                                          f"not be fetched: {decode_exception(failure)}", "", True))
        for instance_id, frames in forward:
            handle = self._handles.get(instance_id)
            if handle is not None:
                handle.send(frames)

    def _library_ended(self, handle: LibraryHandle) -> None:
        """EOF from a library: report it once its process has exited, without waiting."""
        self._data.instance_gone(handle.instance_id)
        self._forget(handle, close=True)
        self._handles.pop(handle.instance_id, None)
        if handle.poll() is not None:
            self._library_exited(handle)
            return
        handle.kill_at = time.monotonic() + self.config.stop_grace
        self._ending[handle.instance_id] = handle
        if handle.exit_fd >= 0:
            self._by_exit_fd[handle.exit_fd] = handle
            self._poller.register(handle.exit_fd, zmq.POLLIN)

    def _library_exited(self, handle: LibraryHandle) -> None:
        exit_code = handle.poll()
        if exit_code is None:
            return  # a pidfd is readable only once it has exited; be safe anyway
        self._ending.pop(handle.instance_id, None)
        if self._by_exit_fd.pop(handle.exit_fd, None) is not None:
            self._poller.unregister(handle.exit_fd)
        try:
            if not handle.stopping:
                self._report_failure(handle, exit_code)
        finally:
            handle.release()

    def _report_failure(self, handle: LibraryHandle, exit_code: int) -> None:
        """What an instance that died leaves: its unsent results, the crash of the
        direct-mode call that took it down, the calls that were running (to charge)."""
        try:
            entries, running = handle.journal()
        except (ProtocolError, OSError, ValueError) as exc:
            log.error("library %s#%d: unreadable crash journal (%s)", handle.library,
                      handle.instance_id, exc)
            entries, running = [], None
        running = without_results(running, entries)
        if handle.mode == "direct" and running:
            detail = safe_dumps((exit_code, _DIRECT_CRASH))
            entries += [(call_id, _CRASHED, detail, 0.0) for call_id in running]
            running = ()
        for message in results_messages(handle.instance_id, entries) if entries else ():
            for part in fit_results(message, encode(message), self._send_limit):
                self._send_frames(part)
        reason = f"library {handle.library!r} instance {handle.instance_id} ended with {describe_exit(exit_code)}"
        log.warning("%s", reason)
        self._send(InstanceFailed(handle.instance_id, reason, _tail(handle.log_path),
                                  not handle.ready, running))

    def _forget(self, handle: LibraryHandle, close: bool) -> None:
        self._by_fd.pop(handle.fileno(), None)
        try:
            self._poller.unregister(handle.sock)
        except KeyError:
            pass
        if close:
            handle.close()

    def _stop_all(self) -> None:
        handles = (list(self._handles.values()) + [h for h, _ in self._stopping.values()]
                   + list(self._ending.values()))
        for handle in handles:
            handle.stopping = True
            handle.close()  # EOF: each library kills its children and exits
        for handle in handles:  # the agent is leaving: waiting here stalls nothing else
            handle.stop(self.config.stop_grace)
            handle.release()
        self._handles.clear()
        self._stopping.clear()
        self._ending.clear()
        self._by_exit_fd.clear()

    # --- sending ----------------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        self._send_frames(encode(msg))

    def _send_frames(self, frames: list) -> None:
        self._sock.send_multipart(frames, copy=len(frames[-1]) < 65536)
        self._last_sent = time.monotonic()


def _tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file (what the process said before it ended)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
