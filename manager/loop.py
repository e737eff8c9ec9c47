"""The manager's I/O loop: one thread that owns the socket, the scheduler and the workers.

    user threads --commands (deque + wakeup pipe)--> loop --scheduler events--> actions
    workers      --Register/Results/...----------->  loop      |
                 <--Welcome/Deploy/Calls/...------  loop <-----+ (send messages,
                                                                  settle futures)

Commands from the API (submit calls, install, remove, cancel, stop) are queued on a deque;
the loop is woken through a pipe only when it sleeps and no wake-up byte is pending
already, so a burst of calls costs no syscall each. Every wake the loop drains the deque
in one go (calls are batched per instance), reads every waiting message, feeds the
scheduler one event at a time and carries out the actions each returns. Carrying out an
action never calls back into the scheduler: what it learns (a library too large for the
worker chosen, calls too large to send, a worker found unreachable) is queued as the next
event (:meth:`ManagerLoop._handle`), as in Dask's worker state machine.

The loop survives what one peer sends: a message that cannot be decoded is logged and
dropped; one that raises while it is handled, or that reports on another worker's
instance, costs its sender its registration (it is told to stop, and its calls are
retried elsewhere). A worker not heard from for the heartbeat timeout is declared lost the
same way; an instance that holds calls but returns nothing past their timeout plus a grace
is written off by the scheduler (``tick``). With a secret, only peers holding it get this
far (CURVE and ZAP, in serverless.transport). If the loop itself ever ends, every call
fails with ManagerClosed and ``command()`` refuses new ones.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
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
    Output,
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
    WorkerRecord,
)
from .scheduler import InvariantViolation, Scheduler

__all__ = ["ManagerLoop", "poll_milliseconds", "MAX_CORES", "MAX_MEMORY_MB"]

log = logging.getLogger("serverless.manager")

# what a worker may claim at registration: more than any node has, less than nonsense
MAX_CORES = 4096
MAX_MEMORY_MB = 2**32  # 4 PiB


class _Refused(Exception):
    """A registered worker sent something it may not (it is dropped)."""


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
        self._workers = scheduler.workers  # the one registry: identity bytes -> WorkerRecord
        self.warnings: list[str] = []  # what instances said once (InstanceWarning); appended only
        self._told_to_stop: set[bytes] = set()  # identities of workers sent Shutdown
        self._events: deque[tuple[Callable[..., list[Action]], tuple]] = deque()
        self._handling = False  # _handle is feeding events: new ones wait their turn
        self._validate = os.environ.get("SERVERLESS_VALIDATE") == "1"  # set by the tests
        self._stop_reason: str | None = None  # set by the "stop" command: the loop ends
        self._stopped = threading.Event()
        self._idle_waiters: list[threading.Event] = []  # set once no call is unfinished
        self.learned_imports = LearnedImports()
        self._partial_output: dict[int, str] = {}  # instance -> the start of a line
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

    def workers(self) -> list[WorkerRecord]:
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
                self._handle(self.scheduler.submit, calls)
                calls = []
            if kind == "calls":
                self._handle(self.scheduler.submit, value)
            elif kind == "install":
                name, spec, blob = value
                self.learned_imports.forget(name)
                self._handle(self.scheduler.install, name, spec, blob)
            elif kind == "remove":
                self.learned_imports.forget(value)
                self._handle(self.scheduler.remove, value)
            elif kind == "cancel":
                self._handle(self.scheduler.cancel, value)
            elif kind == "when_idle":
                self._idle_waiters.append(value)
            elif kind == "barrier":  # the commands before it are carried out
                value.set()
            elif kind == "stop":
                self._shutdown(value)
                return
        if calls:
            self._handle(self.scheduler.submit, calls)

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
        self._handle(self.scheduler.tick, now)
        for worker_id, reply in self.data.directory.tick(now):
            self._send(worker_id, reply)
        timeout = self.config.heartbeat_timeout
        interval = self.config.heartbeat_interval
        for identity, worker in list(self._workers.items()):
            if now - worker.last_heard > timeout:
                log.warning("worker %s lost: nothing heard for %.1f s", worker.name, timeout)
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
            try:
                if worker is None:
                    self._from_stranger(identity, msg)
                    continue
                worker.last_heard = time.monotonic()
                self._from_worker(identity, worker, msg)
            except ProtocolError as exc:
                log.warning("dropped a bad message from %s: %s", _name(identity, worker), exc)
            except InvariantViolation:
                raise  # a bug in the scheduler, not in the peer: end loudly (tests)
            except Exception as exc:  # noqa: BLE001  # one peer must not stop the manager
                log.warning("dropping worker %s: its %s could not be handled (%s: %s)",
                            _name(identity, worker), msg.TAG, type(exc).__name__, exc,
                            exc_info=not isinstance(exc, _Refused))
                self._events.clear()  # follow-ups of the event that failed are void
                self._drop_worker(identity, f"its {msg.TAG} message was refused ({exc})")

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
        problem = _bad_claims(msg)
        if problem:
            log.warning("rejected worker %r: %s", identity[:64], problem)
            self._send(identity, Reject(problem))
            return
        now = time.monotonic()
        name = identity.decode(errors="replace")[:200]  # for people and logs only
        self._handle(functools.partial(
            self.scheduler.worker_joined, identity, float(msg.cores), int(msg.memory_mb),
            msg.hostname, pid=msg.pid, name=name, max_message_bytes=msg.max_message_bytes,
            last_heard=now, last_sent=now))
        self._send(identity, Welcome(name, self.config.heartbeat_interval,
                                     self.config.heartbeat_timeout, self.config.max_message_bytes))
        log.info("worker %s joined (%s, %.1f cores, %d MB)", name, msg.hostname,
                 msg.cores, msg.memory_mb)

    def _from_worker(self, identity: bytes, worker: WorkerRecord, msg: Message) -> None:
        scheduler = self.scheduler
        if isinstance(msg, Results):
            self._check_owner(worker, msg.instance_id)
            self._handle(scheduler.results, msg.instance_id, batch_entries(msg))
        elif isinstance(msg, Heartbeat):
            pass
        elif (data := self.data.on_message(worker.worker_id, msg)) is not None:
            for worker_id, reply in data:
                self._send(worker_id, reply)
        elif isinstance(msg, InstanceReady):
            self._check_owner(worker, msg.instance_id)
            self._handle(scheduler.instance_ready, msg.instance_id)
        elif isinstance(msg, InstanceFailed):
            self._check_owner(worker, msg.instance_id)
            log.warning("instance %d on %s failed: %s", msg.instance_id, worker.name, msg.reason)
            self._handle(scheduler.instance_failed, msg.instance_id, msg.reason, msg.traceback,
                         msg.during_start, msg.running)
        elif isinstance(msg, InstanceWarning):
            self._check_owner(worker, msg.instance_id)
            log.warning("instance %d on %s: %s", msg.instance_id, worker.name, msg.text)
            self.warnings.append(f"instance {msg.instance_id} on {worker.name}: {msg.text}")
        elif isinstance(msg, InstanceStopped):
            self._check_owner(worker, msg.instance_id)
            self._handle(scheduler.instance_stopped, msg.instance_id)
        elif isinstance(msg, Output):
            self._check_owner(worker, msg.instance_id)
            self._print_output(msg)
        elif isinstance(msg, ImportsLearned):
            self._check_owner(worker, msg.instance_id)
            instance = scheduler.instances.get(msg.instance_id)
            if instance is not None:
                self.learned_imports.report(instance.library, msg.instance_id, msg.learned,
                                            msg.rejected)
        elif isinstance(msg, Goodbye):
            log.info("worker %s left: %s", worker.name, msg.reason)
            self._drop_worker(identity, f"it left ({msg.reason})", notify=False)
        elif isinstance(msg, Register):
            log.warning("worker %s registered twice; ignored", worker.name)
        else:
            log.warning("unexpected %s from worker %s", msg.TAG, worker.name)

    def _check_owner(self, worker: WorkerRecord, instance_id: int) -> None:
        """A worker reports only on its own instances (an unknown one is stale: ignored)."""
        instance = self.scheduler.instances.get(instance_id)
        if instance is not None and instance.worker_id != worker.worker_id:
            raise _Refused(f"instance {instance_id} belongs to another worker")

    def _print_output(self, msg: Output) -> None:
        """Print a chunk of an instance's output, whole lines prefixed with who printed."""
        instance = self.scheduler.instances.get(msg.instance_id)
        label = f"({instance.library if instance else '?'}#{msg.instance_id}) "
        text = self._partial_output.pop(msg.instance_id, "") + msg.data.decode(errors="replace")
        lines = text.split("\n")
        if lines[-1]:  # an unfinished line waits for its end (bounded)
            if len(lines[-1]) < 65536:
                self._partial_output[msg.instance_id] = lines[-1]
            else:
                lines.append("")
        out = "".join(f"{label}{line}\n" for line in lines[:-1])
        if out:
            try:
                sys.stdout.write(out)
                sys.stdout.flush()
            except (OSError, ValueError):
                pass

    def _drop_worker(self, identity: bytes, reason: str, notify: bool = True) -> None:
        worker = self._workers.get(identity)
        if worker is None:
            return
        if notify:  # if it is only frozen, it must stop when it wakes
            self._send(identity, Shutdown(f"declared lost: {reason}"))
        self._handle(self.scheduler.worker_lost, identity, reason)
        for worker_id, reply in self.data.directory.worker_lost(identity):
            self._send(worker_id, reply)

    # --- carrying out actions ---------------------------------------------------------

    def _handle(self, event: Callable[..., list[Action]], *args: Any) -> None:
        """Feed one event to the scheduler and carry out the actions it returns.

        An event that arises while actions are carried out (``_perform`` found a library
        too large to deploy, calls too large to send, a worker unreachable) is queued and
        handled after them, never in the middle of another event's actions.
        """
        self._events.append((event, args))
        if self._handling:
            return
        self._handling = True
        try:
            events = self._events
            while events:
                event, args = events.popleft()
                actions = event(*args)
                if self._validate:
                    self.scheduler.validate()
                if actions:
                    self._perform(actions)
        finally:
            self._handling = False

    def _perform(self, actions: list[Action]) -> None:
        """Carry out the scheduler's actions: I/O and futures only, no scheduler calls."""
        for action in actions:
            if isinstance(action, SendCalls):
                # CallRecord fields inline: this runs once per call
                entries = [(c.call_id, c.function, c.args, c.timeout) for c in action.calls
                           if not c.files]
                if entries:
                    self._send_calls(action.worker_id, action.instance_id, entries)
                if len(entries) < len(action.calls):
                    self._send_gated(action)
            elif isinstance(action, CallsFinished):
                for call, status, payload, _duration in action.results:
                    call.args = b""  # done with: the caller may keep the future, not the arguments
                    resolve(call, status, payload)
            elif isinstance(action, CallsFailed):
                error = action.error
                for call in action.calls:
                    call.future._finish(error=copy.copy(error))
            elif isinstance(action, DeployInstance):
                self._deploy(action)
            elif isinstance(action, StopInstanceAction):
                self._send(action.worker_id, StopInstance(action.instance_id))
            elif isinstance(action, CancelCalls):
                self._send(action.worker_id, Cancel(action.instance_id, action.call_ids))

    def _deploy(self, action: DeployInstance) -> None:
        message = self._deploy_message(action)
        size, limit = len(message.payload), self._accepts(action.worker_id)
        if size > call_budget(limit):  # the library; the rest of the message is small
            reason = (f"library {message.library!r} pickles to {size:,} bytes, over the limit of "
                      f"{limit:,} of worker {_name(action.worker_id)} (its --max-message-bytes)")
            log.warning("cannot deploy: %s", reason)
            self._handle(self.scheduler.instance_failed, action.instance_id, reason, "", True)
            return
        self._send(action.worker_id, message)

    def _send_calls(self, worker_id: bytes, instance_id: int, entries: list[tuple]) -> None:
        """Send calls in batches that fit the worker; fail those too large to go alone."""
        limit = self._accepts(worker_id)
        messages, too_large = calls_messages(instance_id, entries, limit)
        for message in messages:
            self._send(worker_id, message)
        if too_large:
            status = int(CallStatus.ARGUMENTS_TOO_LARGE)
            self._handle(self.scheduler.results, instance_id, [
                (call_id, status, safe_dumps((size, limit)), 0.0) for call_id, size in too_large])

    def _send_gated(self, action: SendCalls) -> None:
        """Each call with input files goes alone, after a Gate naming them: the worker
        holds it until they are in its cache, and only it (see worker.data.gates)."""
        for c in action.calls:
            if c.files:
                self._send(action.worker_id, Gate(action.instance_id, c.files))
                self._send_calls(action.worker_id, action.instance_id,
                                 [(c.call_id, c.function, c.args, c.timeout)])

    def _accepts(self, worker_id: bytes) -> int:
        """The largest message worker ``worker_id`` accepts."""
        worker = self._workers.get(worker_id)
        return worker.max_message_bytes if worker is not None else self.config.max_message_bytes

    def _deploy_message(self, action: DeployInstance) -> Deploy:
        record = self.scheduler.libraries[action.library]
        spec = record.spec
        options = {"env": dict(spec.env)}
        if spec.python:
            options["python"] = spec.python
        if spec.environment is not None:
            options["environment"] = spec.environment.describe()
        if self.config.forward_output:
            options["forward_output"] = True
        learned = self.learned_imports.names(spec.name)
        if learned:  # what other instances learned: this one starts with it
            options["learned_imports"] = learned
        return Deploy(action.instance_id, spec.name, spec.mode, spec.slots, float(spec.cores),
                      int(spec.memory_mb), options, record.blob)

    def _send(self, identity: bytes, msg: Message) -> None:
        frames = encode(msg)
        try:
            self._sock.send_multipart([identity, *frames], copy=len(frames[-1]) < 65536)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone
            if identity in self._workers:
                log.warning("cannot reach worker %s (%s)", _name(identity), exc)
                self._drop_worker(identity, f"unreachable ({exc})", notify=False)
            return
        worker = self._workers.get(identity)
        if worker is not None:
            worker.last_sent = time.monotonic()

    # --- stopping ---------------------------------------------------------------------

    def _shutdown(self, reason: str) -> None:
        self._stop_reason = reason
        self._handle(self.scheduler.shutdown)
        self._tell_workers_to_stop(reason)

    def _tell_workers_to_stop(self, reason: str) -> None:
        for identity in list(self._workers):
            if identity not in self._told_to_stop:
                self._send(identity, Shutdown(reason))
                self._told_to_stop.add(identity)

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
            told = {w.pid for i, w in self._workers.items() if i in self._told_to_stop}
            self.local_workers.stop(grace=5.0, told_to_stop=told)


def poll_milliseconds(seconds: float) -> int:
    """A poll timeout in whole milliseconds that never wakes before ``seconds`` have passed.

    Rounded up: ``int()`` would turn the last millisecond before a tick into a timeout of
    0, and the loop would spin through it.
    """
    return max(0, math.ceil(seconds * 1000))


def _name(identity: bytes, worker: WorkerRecord | None = None) -> str:
    """A worker's name for logs (its identity, decoded for people only)."""
    if worker is not None and worker.name:
        return worker.name
    return repr(bytes(identity[:64]))


def _bad_claims(msg: Register) -> str | None:
    """What is wrong with a registering worker's claims, or None if they are sane."""
    cores, memory = msg.cores, msg.memory_mb
    if not isinstance(cores, (int, float)) or isinstance(cores, bool) or not math.isfinite(cores) \
            or not 0 < cores <= MAX_CORES:
        return f"a worker must offer 0 < cores <= {MAX_CORES}, not {cores!r}"
    if not isinstance(memory, int) or isinstance(memory, bool) or not 0 <= memory <= MAX_MEMORY_MB:
        return f"a worker must offer 0 <= memory_mb <= {MAX_MEMORY_MB}, not {memory!r}"
    size = msg.max_message_bytes
    if not isinstance(size, int) or isinstance(size, bool) or not 65536 <= size <= 2**62:
        return "a worker must accept messages of 64 KiB at least (and at most 2**62 bytes)"
    if not isinstance(msg.pid, int) or not isinstance(msg.hostname, str) or len(msg.hostname) > 1024:
        return "a worker's pid must be an int and its hostname a short string"
    return None


def resolve(call: CallRecord, status: int, payload: Any) -> None:
    """End a call's future from its result entry (see serverless.outcomes)."""
    future = call.future
    if future._state != PENDING:  # cancelled by the user meanwhile
        return
    value, error = outcome(status, payload, call.library, call.function)
    future._finish(value, error)
