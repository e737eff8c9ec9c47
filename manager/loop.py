"""The manager's I/O loop: one thread that owns the socket, the scheduler and the workers.

    user threads --commands (deque + wakeup pipe)--> loop --scheduler events--> actions
    workers      --Register/Results/...----------->  loop      |
                 <--Welcome/Deploy/Calls/...------  loop <-----+ (send messages,
                                                                  settle futures)

Commands from the API (submit calls, install, remove, cancel, stop) are queued on a deque;
the loop is woken through a pipe only when it sleeps and no wake-up byte is pending
already, so a burst of calls costs no syscall each. Every wake the loop drains the deque in one go (calls are batched per instance),
reads every waiting message, runs the scheduler and carries out its actions. A worker not
heard from for the heartbeat timeout is declared lost; what it held is retried elsewhere.
A message that cannot be decoded is logged and dropped; the loop goes on serving. With a
secret, only peers holding it get this far (CURVE and ZAP, in serverless.transport).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq

from serverless.errors import ManagerClosed, ProtocolError, ProtocolVersionError
from serverless.protocol import (
    PROTOCOL_VERSION,
    CallStatus,
    Cancel,
    Deploy,
    Gate,
    Goodbye,
    Heartbeat,
    ImportsLearned,
    InstanceFailed,
    InstanceReady,
    InstanceStopped,
    InstanceWarning,
    Message,
    Register,
    Reject,
    Results,
    Shutdown,
    StopInstance,
    Welcome,
    batch_entries,
    call_budget,
    calls_messages,
    decode,
    encode,
    safe_dumps,
)
from serverless.outcomes import outcome
from serverless.security import CurveKeys
from serverless.transport import bind_router, new_context
from serverless.worker_keys import AllowList

from .config import ManagerConfig
from .data import ManagerData
from .future import PENDING
from .learned import LearnedImports
from .local_workers import LocalWorkers
from .records import (
    Action,
    CallRecord,
    CallsFailed,
    CallsFinished,
    CancelCalls,
    DeployInstance,
    SendCalls,
    StopInstanceAction,
)
from .scheduler import Scheduler

__all__ = ["ManagerLoop", "WorkerInfo", "poll_milliseconds"]

log = logging.getLogger("serverless.manager")


@dataclass
class WorkerInfo:
    """What the manager knows of a connected worker (see ``Manager.workers()``)."""

    worker_id: str
    hostname: str
    pid: int
    cores: float
    memory_mb: int
    last_heard: float
    last_sent: float
    max_message_bytes: int  # the largest message it accepts (its Register)


class ManagerLoop:
    """Owns the ROUTER socket and the scheduler; run in its own thread by the Manager."""

    def __init__(self, config: ManagerConfig, scheduler: Scheduler,
                 local_workers: LocalWorkers | None = None, keys: CurveKeys | None = None) -> None:
        self.config = config
        self.local_workers = local_workers
        self.scheduler = scheduler
        self._context = new_context()
        try:
            allowed = AllowList(config.worker_keys) if config.worker_keys is not None else None
            self._sock, self.endpoint = bind_router(  # keys: CURVE + ZAP, see transport
                self._context, config.host, config.port, config.max_message_bytes, keys, allowed)
        except BaseException:  # e.g. the port is in use: leave no context (and thread) behind
            self._context.term()
            raise
        self.data = ManagerData(config.host, keys, config.upload_cap)  # files (manager.data)
        scheduler.data = self.data.directory  # locality: the bytes a worker lacks
        self._commands: deque[tuple[str, Any]] = deque()
        # held across "is the loop still taking commands?" and the append, so nothing is
        # queued after the loop has drained the deque for the last time
        self._commands_lock = threading.Lock()
        self._closed_reason: str | None = None  # set once the loop takes no more commands
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sleeping = False
        self._wake_pending = False  # a byte is in the wake-up pipe, the loop will see it
        self._workers: dict[bytes, WorkerInfo] = {}
        self.warnings: list[str] = []  # what instances said once (InstanceWarning); appended only
        self._told_to_stop: set[int] = set()  # pids of workers sent Shutdown
        self._stop_reason: str | None = None  # set by the "stop" command: the loop ends
        self._stopped = threading.Event()
        self._idle_waiters: list[threading.Event] = []  # set once no call is unfinished
        self.learned_imports = LearnedImports()
        self.thread = threading.Thread(target=self._run, name="serverless-manager", daemon=True)

    # --- called from other threads ----------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def command(self, kind: str, value: Any = None) -> None:
        """Queue a command for the loop; raise ManagerClosed if it has stopped taking them."""
        with self._commands_lock:
            if self._closed_reason is not None:
                raise ManagerClosed(self._closed_reason)
            self._commands.append((kind, value))
        if self._sleeping and not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"w")
            except BlockingIOError:
                pass  # the pipe is full: the loop is being woken anyway

    def workers(self) -> list[WorkerInfo]:
        return list(self._workers.values())

    @property
    def closed_reason(self) -> str | None:
        """Why the loop takes no more commands, or None while it does."""
        return self._closed_reason

    def stop(self, reason: str) -> None:
        """Ask the loop to fail what is unfinished, stop the local workers and end."""
        try:
            self.command("stop", reason)
        except ManagerClosed:
            pass  # stopping or stopped already

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the loop thread has ended; False if ``timeout`` passed first."""
        return self._stopped.wait(timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every call submitted so far has finished (or the loop stopped)."""
        idle = threading.Event()
        try:
            self.command("when_idle", idle)
        except ManagerClosed:
            return True
        end = None if timeout is None else time.monotonic() + timeout
        while not idle.wait(0.5 if end is None else max(0.0, min(0.5, end - time.monotonic()))):
            if self._stopped.is_set() or (end is not None and time.monotonic() >= end):
                return idle.is_set()
        return True

    # --- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        reason = "the manager shut down"
        try:
            self._serve()
            reason = self._stop_reason or reason
        except BaseException as exc:  # noqa: BLE001  # whatever ends the loop, fail every call
            log.critical("the manager loop failed; failing every call", exc_info=True)
            reason = f"the manager's loop failed ({type(exc).__name__}: {exc})"
        finally:
            try:
                self._close(reason)
            finally:
                self._stopped.set()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        tick_every = min(0.1, self.config.heartbeat_interval / 2)
        next_tick = time.monotonic()
        if self.local_workers is not None:  # from this thread: they die with it
            self.local_workers.start(str(self.endpoint))
        while self._stop_reason is None:
            self._sleeping = True
            timeout = 0 if self._commands else max(0.0, next_tick - time.monotonic())
            events = dict(poller.poll(poll_milliseconds(timeout)))
            self._sleeping = False
            if self._wake_r in events:
                self._drain_wake()
                self._wake_pending = False
            if self._sock in events:
                self._read_workers()
            if self._commands:
                self._run_commands()
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + tick_every
            if self._idle_waiters and not self._has_unfinished():
                self._release_idle_waiters()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_commands(self) -> None:
        commands = self._commands
        calls: list[CallRecord] = []
        while commands:
            kind, value = commands.popleft()
            if kind == "call":
                calls.append(value)
                continue
            if calls:
                self._perform(self.scheduler.submit(calls))
                calls = []
            if kind == "calls":
                self._perform(self.scheduler.submit(value))
            elif kind == "install":
                name, spec, blob = value
                self.learned_imports.forget(name)
                self._perform(self.scheduler.install(name, spec, blob))
            elif kind == "remove":
                self.learned_imports.forget(value)
                self._perform(self.scheduler.remove(value))
            elif kind == "cancel":
                self._perform(self.scheduler.cancel(value))
            elif kind == "when_idle":
                self._idle_waiters.append(value)
            elif kind == "barrier":  # the commands before it are carried out
                value.set()
            elif kind == "stop":
                self._shutdown(value)
                return
        if calls:
            self._perform(self.scheduler.submit(calls))

    def _has_unfinished(self) -> bool:
        """Whether any call the scheduler holds (queued or sent) has an unsettled future."""
        scheduler = self.scheduler
        for record in scheduler.libraries.values():
            if any(not call.future.done() for call in record.pending):
                return True
        for instance in scheduler.instances.values():
            if any(not call.future.done() for call in instance.outstanding.values()):
                return True
        return False

    def _release_idle_waiters(self) -> None:
        for event in self._idle_waiters:
            event.set()
        self._idle_waiters.clear()

    def _tick(self, now: float) -> None:
        self._perform(self.scheduler.tick(now))
        for worker_id, reply in self.data.directory.tick(now):
            self._send_to(worker_id, reply)
        timeout = self.config.heartbeat_timeout
        interval = self.config.heartbeat_interval
        for identity, worker in list(self._workers.items()):
            if now - worker.last_heard > timeout:
                log.warning("worker %s lost: nothing heard for %.1f s", worker.worker_id, timeout)
                self._drop_worker(identity, f"no heartbeat for {timeout:.1f} s")
            elif now - worker.last_sent >= interval:
                self._send(identity, Heartbeat())

    # --- from workers -----------------------------------------------------------------

    def _read_workers(self) -> None:
        sock = self._sock
        # bounded, so commands and ticks still get their turn; EVENTS ends the drain
        # without raising zmq.Again (building that exception cost more than a recv)
        for _ in range(10000):
            if not sock.get(zmq.EVENTS) & zmq.POLLIN:
                return
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:  # EVENTS said there was one; be safe anyway
                return
            identity, frames = parts[0], parts[1:]
            try:
                msg = decode(frames)
            except ProtocolVersionError as exc:
                log.warning("rejected a worker: %s", exc)
                self._send(identity, Reject(str(exc)))
                continue
            except ProtocolError as exc:
                log.warning("dropped a malformed message from %r: %s", identity[:64], exc)
                continue
            worker = self._workers.get(identity)
            if worker is None:
                self._from_stranger(identity, msg)
                continue
            worker.last_heard = time.monotonic()
            try:
                self._from_worker(identity, worker, msg)
            except ProtocolError as exc:
                log.warning("dropped a bad message from worker %s: %s", worker.worker_id, exc)

    def _from_stranger(self, identity: bytes, msg: Message) -> None:
        if isinstance(msg, Register):
            self._register(identity, msg)
        elif not isinstance(msg, Goodbye):
            # e.g. a worker declared lost that came back: it must not keep running calls
            self._send(identity, Reject("this worker is not registered (it may have been declared lost)"))

    def _register(self, identity: bytes, msg: Register) -> None:
        if msg.version != PROTOCOL_VERSION:
            log.warning("rejected worker %s: protocol %d, ours %d", msg.name, msg.version, PROTOCOL_VERSION)
            self._send(identity, Reject(f"protocol version {msg.version} is not {PROTOCOL_VERSION}"))
            return
        if msg.cores <= 0 or msg.memory_mb < 0:
            self._send(identity, Reject("a worker needs cores > 0 and memory >= 0"))
            return
        if msg.max_message_bytes < 65536:
            self._send(identity, Reject("a worker must accept messages of 64 KiB at least"))
            return
        now = time.monotonic()
        worker_id = identity.decode(errors="replace")
        self._workers[identity] = WorkerInfo(worker_id, msg.hostname, msg.pid, msg.cores,
                                             msg.memory_mb, now, now, msg.max_message_bytes)
        self._send(identity, Welcome(worker_id, self.config.heartbeat_interval,
                                     self.config.heartbeat_timeout, self.config.max_message_bytes))
        log.info("worker %s joined (%s, %.1f cores, %d MB)", worker_id, msg.hostname,
                 msg.cores, msg.memory_mb)
        self._perform(self.scheduler.worker_joined(worker_id, msg.cores, msg.memory_mb, msg.hostname))

    def _from_worker(self, identity: bytes, worker: WorkerInfo, msg: Message) -> None:
        scheduler = self.scheduler
        if isinstance(msg, Results):
            self._perform(scheduler.results(msg.instance_id, batch_entries(msg)))
        elif isinstance(msg, Heartbeat):
            pass
        elif (data := self.data.on_message(worker.worker_id, msg)) is not None:
            for worker_id, reply in data:
                self._send_to(worker_id, reply)
        elif isinstance(msg, InstanceReady):
            self._perform(scheduler.instance_ready(msg.instance_id))
        elif isinstance(msg, InstanceFailed):
            log.warning("instance %d on %s failed: %s", msg.instance_id, worker.worker_id, msg.reason)
            self._perform(scheduler.instance_failed(msg.instance_id, msg.reason, msg.traceback,
                                                    msg.during_start, msg.running))
        elif isinstance(msg, InstanceWarning):
            log.warning("instance %d on %s: %s", msg.instance_id, worker.worker_id, msg.text)
            self.warnings.append(f"instance {msg.instance_id} on {worker.worker_id}: {msg.text}")
        elif isinstance(msg, InstanceStopped):
            self._perform(scheduler.instance_stopped(msg.instance_id))
        elif isinstance(msg, ImportsLearned):
            instance = scheduler.instances.get(msg.instance_id)
            if instance is not None:
                self.learned_imports.report(instance.library, msg.instance_id, msg.learned,
                                            msg.rejected)
        elif isinstance(msg, Goodbye):
            log.info("worker %s left: %s", worker.worker_id, msg.reason)
            self._drop_worker(identity, f"it left ({msg.reason})", notify=False)
        elif isinstance(msg, Register):
            log.warning("worker %s registered twice; ignored", worker.worker_id)
        else:
            log.warning("unexpected %s from worker %s", msg.TAG, worker.worker_id)

    def _drop_worker(self, identity: bytes, reason: str, notify: bool = True) -> None:
        worker = self._workers.pop(identity, None)
        if worker is None:
            return
        if notify:  # if it is only frozen, it must stop when it wakes
            self._send(identity, Shutdown(f"declared lost: {reason}"))
        self._perform(self.scheduler.worker_lost(worker.worker_id, reason))
        for worker_id, reply in self.data.directory.worker_lost(worker.worker_id):
            self._send_to(worker_id, reply)

    # --- carrying out actions ---------------------------------------------------------

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendCalls):
                # CallRecord.entry(), inline: this runs once per call
                entries = [(c.call_id, c.function, c.args, c.timeout) for c in action.calls
                           if not c.files]
                if entries:
                    self._send_calls(action.worker_id, action.instance_id, entries)
                if len(entries) < len(action.calls):
                    self._send_gated(action)
            elif isinstance(action, CallsFinished):
                for call, status, payload, _duration in action.results:
                    resolve(call, status, payload)
            elif isinstance(action, CallsFailed):
                error = action.error
                for call in action.calls:
                    call.future._finish(error=copy.copy(error))
            elif isinstance(action, DeployInstance):
                self._deploy(action)
            elif isinstance(action, StopInstanceAction):
                self._send_to(action.worker_id, StopInstance(action.instance_id))
            elif isinstance(action, CancelCalls):
                self._send_to(action.worker_id, Cancel(action.instance_id, action.call_ids))

    def _deploy(self, action: DeployInstance) -> None:
        message = self._deploy_message(action)
        size, limit = len(message.payload), self._accepts(action.worker_id)
        if size > call_budget(limit):  # the library; the rest of the message is small
            reason = (f"library {message.library!r} pickles to {size:,} bytes, over the limit of "
                      f"{limit:,} of worker {action.worker_id} (its --max-message-bytes)")
            log.warning("cannot deploy: %s", reason)
            self._perform(self.scheduler.instance_failed(action.instance_id, reason, "", True))
            return
        self._send_to(action.worker_id, message)

    def _send_calls(self, worker_id: str, instance_id: int, entries: list[tuple]) -> None:
        """Send calls in batches that fit the worker; fail those too large to go alone."""
        limit = self._accepts(worker_id)
        messages, too_large = calls_messages(instance_id, entries, limit)
        for message in messages:
            self._send_to(worker_id, message)
        if too_large:
            status = int(CallStatus.ARGUMENTS_TOO_LARGE)
            self._perform(self.scheduler.results(instance_id, [
                (call_id, status, safe_dumps((size, limit)), 0.0) for call_id, size in too_large]))

    def _send_gated(self, action: SendCalls) -> None:
        """Each call with input files goes alone, after a Gate naming them: the worker
        holds it until they are in its cache, and only it (see worker.data.gates)."""
        for c in action.calls:
            if c.files:
                self._send_to(action.worker_id, Gate(action.instance_id, c.files))
                self._send_calls(action.worker_id, action.instance_id,
                                 [(c.call_id, c.function, c.args, c.timeout)])

    def _accepts(self, worker_id: str) -> int:
        """The largest message worker ``worker_id`` accepts."""
        worker = self._workers.get(worker_id.encode())
        return worker.max_message_bytes if worker is not None else self.config.max_message_bytes

    def _deploy_message(self, action: DeployInstance) -> Deploy:
        record = self.scheduler.libraries[action.library]
        spec = record.spec
        options = {"env": dict(spec.env)}
        if spec.python:
            options["python"] = spec.python
        if spec.environment is not None:
            options["environment"] = spec.environment.describe()
        learned = self.learned_imports.names(spec.name)
        if learned:  # what other instances learned: this one starts with it
            options["learned_imports"] = learned
        return Deploy(action.instance_id, spec.name, spec.mode, spec.slots, float(spec.cores),
                      int(spec.memory_mb), options, record.blob)

    def _send_to(self, worker_id: str, msg: Message) -> None:
        self._send(worker_id.encode(), msg)

    def _send(self, identity: bytes, msg: Message) -> None:
        frames = encode(msg)
        try:
            self._sock.send_multipart([identity, *frames], copy=len(frames[-1]) < 65536)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone
            if identity in self._workers:
                log.warning("cannot reach worker %r (%s)", identity, exc)
                self._drop_worker(identity, f"unreachable ({exc})", notify=False)
            return
        worker = self._workers.get(identity)
        if worker is not None:
            worker.last_sent = time.monotonic()

    # --- stopping ---------------------------------------------------------------------

    def _shutdown(self, reason: str) -> None:
        self._stop_reason = reason
        self._perform(self.scheduler.shutdown())
        self._tell_workers_to_stop(reason)
        self._workers.clear()

    def _tell_workers_to_stop(self, reason: str) -> None:
        for identity, worker in list(self._workers.items()):
            self._send(identity, Shutdown(reason))
            self._told_to_stop.add(worker.pid)

    def _close(self, reason: str) -> None:
        """End of the loop, however it came: fail every call, stop workers, free resources.

        Each step is guarded, so one failing (a socket error, a worker that will not stop)
        does not leave the futures of the next step pending.
        """
        with self._commands_lock:  # from here on, command() raises ManagerClosed
            self._closed_reason = reason
            leftovers = list(self._commands)
            self._commands.clear()
        closed = ManagerClosed(f"{reason} before the call finished")
        for step in (lambda: self._fail_everything(leftovers, closed),
                     self._stop_local_workers,
                     lambda: self._sock.close(linger=500),  # let Shutdown messages go out
                     self.data.close,
                     self._context.term,
                     lambda: os.close(self._wake_r),
                     lambda: os.close(self._wake_w),
                     self._release_idle_waiters):
            try:
                step()
            except BaseException:  # noqa: BLE001
                log.exception("while stopping the manager loop")

    def _fail_everything(self, leftovers: list[tuple[str, Any]], error: ManagerClosed) -> None:
        """Fail the calls still queued as commands and every call the scheduler holds."""
        calls = []
        for kind, value in leftovers:
            if kind == "call":
                calls.append(value)
            elif kind == "calls":
                calls += value
            elif kind == "when_idle":
                self._idle_waiters.append(value)
            elif kind == "barrier":  # the commands before it are carried out
                value.set()
        try:
            for action in self.scheduler.shutdown():
                if isinstance(action, CallsFailed):
                    calls += action.calls
        finally:  # even if the scheduler's state is broken, the queued calls end
            for call in calls:
                call.future._finish(error=copy.copy(error))

    def _stop_local_workers(self) -> None:
        if self.local_workers is not None:
            self._tell_workers_to_stop("the manager stopped")
            # the socket stays open while they stop; one never registered gets SIGTERM at once
            self.local_workers.stop(grace=5.0, told_to_stop=self._told_to_stop)


def poll_milliseconds(seconds: float) -> int:
    """A poll timeout in whole milliseconds that never wakes before ``seconds`` have passed.

    Rounded up: ``int()`` would turn the last millisecond before a tick into a timeout of
    0, and the loop would spin through it.
    """
    return max(0, math.ceil(seconds * 1000))


def resolve(call: CallRecord, status: int, payload: Any) -> None:
    """End a call's future from its result entry (see serverless.outcomes)."""
    future = call.future
    if future._state != PENDING:  # cancelled by the user meanwhile
        return
    value, error = outcome(status, payload, call.library, call.function)
    future._finish(value, error)
