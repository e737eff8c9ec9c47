"""The scheduler's records (calls, workers, instances, libraries) and the actions it returns.

Records are plain mutable objects owned by the scheduler; actions are what the manager
loop must carry out (send a message, resolve a future). None of them does I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from serverless.protocol import arguments_size

if TYPE_CHECKING:
    from serverless.serialization import Arguments

__all__ = [
    "CallRecord",
    "WorkerRecord",
    "InstanceRecord",
    "LibraryRecord",
    "STARTING",
    "READY",
    "STOPPING",
    "DRAINING",
    "Action",
    "DeployInstance",
    "SendCalls",
    "StopInstanceAction",
    "CancelCalls",
    "CallsFinished",
    "CallsFailed",
]

STARTING, READY, DRAINING, STOPPING = "starting", "ready", "draining", "stopping"


class CallRecord:
    """One call from submission to its end. ``future`` is opaque to the scheduler."""

    __slots__ = ("call_id", "library", "function", "args", "size", "timeout", "future",
                 "attempts", "instance_id", "cancelled", "files")

    def __init__(self, call_id: int, library: str, function: str, args: Arguments,
                 timeout: float | None, future: Any) -> None:
        self.call_id = call_id
        self.library = library
        self.function = function
        self.args = args
        self.size = len(args) if type(args) is bytes else arguments_size(args)  # on the wire
        self.timeout = timeout
        self.future = future
        self.attempts = 0  # times it may have been running when its instance was lost
        self.instance_id: int | None = None  # where it runs now, if dispatched
        self.cancelled = False
        self.files: tuple = ()  # FileSpecs of the serverless.File inputs (manager.data)



@dataclass(eq=False)
class WorkerRecord:
    """A connected worker: what it offers, what is placed on it, when it was last heard.

    This is the manager's one registry of workers: the scheduler places instances with
    it, the loop keeps its heartbeat times in it, and ``Manager.workers()`` lists it.
    ``worker_id`` is the worker's raw zmq identity (bytes) as the socket reports it; it
    is never decoded and encoded back. ``name`` is for logs and people only.
    """

    worker_id: Any  # bytes in a manager; any hashable key in scheduler tests
    cores: float
    memory_mb: int
    hostname: str = ""
    pid: int = 0
    name: str = ""
    max_message_bytes: int = 0  # the largest message it accepts (its Register)
    used_cores: float = 0.0
    used_memory_mb: int = 0
    instances: set[int] = field(default_factory=set)
    outstanding_bytes: int = 0  # arguments of the calls its instances hold
    byte_blocked: bool = False  # a dispatch stopped at its byte budget: reschedule on results
    last_heard: float = 0.0  # time.monotonic() of its last message (the loop sets it)
    last_sent: float = 0.0  # and of the last message sent to it

    def fits(self, cores: float, memory_mb: int) -> bool:
        return (self.used_cores + cores <= self.cores + 1e-9
                and self.used_memory_mb + memory_mb <= self.memory_mb)


@dataclass
class InstanceRecord:
    """A library instance on a worker, and the calls sent to it (``outstanding``, in the
    order sent, which is the order it runs them, ``slots`` at a time).

    Its *window* is how many calls it may hold at once: its slots (the calls it runs)
    plus enough queued behind them (from the library's measured call duration, see
    ``Scheduler._window``) that it never idles waiting for the manager's next batch.
    """

    instance_id: int
    library: str
    worker_id: Any
    cores: float
    memory_mb: int
    state: str = STARTING
    outstanding: dict[int, CallRecord] = field(default_factory=dict)
    window: int = 1  # how many calls it may hold: its slots plus the calls queued ahead
    outstanding_bytes: int = 0  # their arguments' size, bounded too (SchedulingPolicy)
    # scheduler time of its last result, or of the dispatch that ended an idle spell: if
    # nothing comes back for its running calls' timeout plus a grace, it is hung
    last_progress: float = 0.0

    def room(self) -> int:
        """Calls it may still be sent (by count; the scheduler also checks bytes)."""
        return self.window - len(self.outstanding) if self.state == READY else 0


@dataclass
class LibraryRecord:
    """An installed library: its spec, its queue of calls not yet sent, its instances."""

    name: str
    spec: Any  # serverless.Library
    blob: bytes
    pending: deque[CallRecord] = field(default_factory=deque)
    instances: set[int] = field(default_factory=set)
    start_failures: int = 0
    crash_streak: int = 0  # instances that died after starting, with no result in between
    failed: BaseException | None = None
    deploy_not_before: float = 0.0
    mean_duration: float | None = None  # moving average of a call's run time (seconds)


@dataclass(frozen=True, slots=True)
class Action:
    """Something the manager loop must do."""


@dataclass(frozen=True, slots=True)
class DeployInstance(Action):
    worker_id: str
    instance_id: int
    library: str


@dataclass(frozen=True, slots=True)
class SendCalls(Action):
    worker_id: str
    instance_id: int
    calls: list


@dataclass(frozen=True, slots=True)
class StopInstanceAction(Action):
    worker_id: str
    instance_id: int


@dataclass(frozen=True, slots=True)
class CancelCalls(Action):
    worker_id: str
    instance_id: int
    call_ids: tuple


@dataclass(frozen=True, slots=True)
class CallsFinished(Action):
    """Results arrived: ``results`` holds ``(call, status, payload, duration)``."""

    results: list


@dataclass(frozen=True, slots=True)
class CallsFailed(Action):
    """These calls end with ``error`` (an exception instance, shared)."""

    calls: list
    error: BaseException
